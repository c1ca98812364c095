"""Fuzzed configurations: every malformed file is exit code 2 and one line naming the problem.

Hypothesis takes a valid configuration (every account kind, every channel type, secrets in variables
and files) and breaks it in exactly one way: an unknown key, a value of the wrong type, a value out
of range, a required key removed, a duplicate name, a TOML syntax error, a secret that cannot be
read. ``check-config`` runs in-process through ``monitor.cli.main`` (a subprocess per example would
take a second each); a few cases run the real command. The line must name the key path (or the
file's line) at fault: a person fixes the file from that line alone.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import io
import json
import math
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from monitor.cli import main

if TYPE_CHECKING:
    from pathlib import Path

FUZZ = settings(max_examples=200, deadline=None)

ENV = {
    "FUZZ_API_KEY": "fuzz-key",
    "FUZZ_SECRET": "fuzz-secret",
    "FUZZ_PASSPHRASE": "fuzz-passphrase",
    "FUZZ_BOT_TOKEN": "123:fuzz-token",
    "FUZZ_MQTT_PASSWORD": "fuzz-mqtt",
    "FUZZ_NTFY_TOKEN": "fuzz-ntfy",
    "FUZZ_PUSHOVER_TOKEN": "fuzz-pushover",
    "FUZZ_PUSHOVER_USER": "fuzz-user",
}

#: The valid document every example starts from (relative paths are taken from the file's directory).
BASE: dict[str, Any] = {
    "alerts": {
        "thresholds_pct": [150, 130, 120],
        "stale_after_polls": 3,
        "hysteresis_pct": 5.0,
        "repeat_critical_min": 5,
        "fast_fall_pct": 30,
        "target_ratio_pct": 200,
        "max_alert_age_s": 3600,
    },
    "daemon": {
        "state_dir": "state",
        "log_format": "json",
        "tier_refresh_h": 6,
        "market_refresh_h": 24,
        "reconcile_s": 60,
    },
    "accounts": [
        {
            "name": "main",
            "exchange": "binanceusdm",
            "api_key_env": "FUZZ_API_KEY",
            "secret_env": "FUZZ_SECRET",
            "poll_interval_s": 10,
            "drift_tolerance_pct": 0.5,
            "mode": "auto",
        },
        {
            "name": "okx-1",
            "exchange": "okx",
            "api_key_env": "FUZZ_API_KEY",
            "secret_env": "FUZZ_SECRET",
            "password_env": "FUZZ_PASSPHRASE",
        },
        {"name": "hl.vault", "exchange": "hyperliquid", "wallet_address": "0x" + "ab" * 20},
        {
            "name": "files",
            "exchange": "bybit",
            "api_key_file": "keys/api_key",
            "secret_file": "keys/secret",
            "poll_interval_s": 2.5,
        },
        {
            "name": "sim",
            "exchange": "binanceusdm",
            "api_key_env": "FUZZ_API_KEY",
            "secret_env": "FUZZ_SECRET",
            "base_url": "http://127.0.0.1:8765",
            "ws_url": "ws://127.0.0.1:8765",
            "mode": "poll",
        },
    ],
    "channels": [
        {"type": "telegram", "bot_token_env": "FUZZ_BOT_TOKEN", "chat_ids": [123456789, "@alerts"]},
        {
            "type": "mqtt",
            "name": "home",
            "host": "127.0.0.1",
            "port": 1883,
            "topic_prefix": "margin-monitor",
            "password_env": "FUZZ_MQTT_PASSWORD",
            "min_level": "ok",
            "accounts": ["main", "sim"],
        },
        {"type": "ntfy", "topic": "my-alerts", "token_env": "FUZZ_NTFY_TOKEN"},
        {
            "type": "pushover",
            "token_env": "FUZZ_PUSHOVER_TOKEN",
            "user_key_env": "FUZZ_PUSHOVER_USER",
            "min_level": "danger",
        },
        {"type": "webhook", "url": "https://alerts.example.com/margin"},
    ],
}

#: A JSON-like path into the document: table keys and array indexes.
Where = tuple[str | int, ...]


# --- writing TOML ----------------------------------------------------------------------------------


def toml_key(key: str) -> str:
    """A bare key where TOML allows one, else a quoted key."""
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def toml_value(value: object) -> str:
    """An inline TOML value (``json.dumps`` escapes strings the way TOML basic strings do)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, int | float | str):
        return json.dumps(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(value)  # pragma: no cover - the strategies make nothing else


def is_table_array(value: object) -> bool:
    """A non-empty list of tables: written as ``[[name]]`` sections."""
    return isinstance(value, list) and bool(value) and all(isinstance(item, dict) for item in value)


def to_toml(document: dict[str, Any]) -> str:
    """The document as TOML: scalars first, then ``[tables]``, then ``[[arrays of tables]]``."""
    lines = [
        f"{toml_key(k)} = {toml_value(v)}"
        for k, v in document.items()
        if not isinstance(v, dict) and not is_table_array(v)
    ]
    for key, value in document.items():
        if isinstance(value, dict):
            lines += [
                "",
                f"[{toml_key(key)}]",
                *(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items()),
            ]
    for key, value in document.items():
        if is_table_array(value):
            for table in value:
                lines += [
                    "",
                    f"[[{toml_key(key)}]]",
                    *(f"{toml_key(k)} = {toml_value(v)}" for k, v in table.items()),
                ]
    return "\n".join(lines) + "\n"


# --- mutations ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Broken:
    """One malformed configuration: its text (or bytes) and what the error line must name."""

    text: str | bytes
    names: str
    how: str
    #: Another acceptable name (a syntax error at the very end is reported at "end of file").
    or_names: str | None = None


def key_path(where: Where) -> str:
    """``("accounts", 1, "name")`` -> ``accounts[1].name``, the way the loader names keys."""
    text = ""
    for part in where:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def get(document: dict[str, Any], where: Where) -> Any:  # noqa: ANN401 - TOML values
    """The value at ``where``."""
    node: Any = document
    for part in where:
        node = node[part]
    return node


def put(document: dict[str, Any], where: Where, value: object) -> dict[str, Any]:
    """A copy of ``document`` with ``value`` at ``where``."""
    changed = copy.deepcopy(document)
    get(changed, where[:-1])[where[-1]] = value
    return changed


def drop(document: dict[str, Any], where: Where) -> dict[str, Any]:
    """A copy of ``document`` without the key at ``where``."""
    changed = copy.deepcopy(document)
    del get(changed, where[:-1])[where[-1]]
    return changed


def leaves(node: object, prefix: Where = ()) -> list[Where]:
    """Every key below ``node`` whose value is not a table (lists of tables are walked into)."""
    found: list[Where] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(value, dict) or is_table_array(value):
                found += leaves(value, (*prefix, key))
            else:
                found.append((*prefix, key))
    elif isinstance(node, list):
        for index, item in enumerate(node):
            found += leaves(item, (*prefix, index))
    return found


TABLES: list[Where] = [
    (),
    ("alerts",),
    ("daemon",),
    *((("accounts", i)) for i in range(len(BASE["accounts"]))),
    *((("channels", i)) for i in range(len(BASE["channels"]))),
]
LEAVES = leaves(BASE)
NOW = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)

#: Values of other types than the one a key holds.
OTHER_TYPES: dict[type, list[object]] = {
    str: [1, 2.5, True, [], ["a"], {"a": 1}, NOW, math.nan],
    int: ["10", True, [], [10], {"v": 10}, NOW, dt.date(2026, 1, 1)],
    float: ["0.5", False, [], {"v": 0.5}, NOW],
    bool: ["true", 1, 0.0, [], {"v": True}],
    list: ["150, 130", 150, {"a": 150}, True, NOW],
}

#: Values out of range or of the wrong form, by key (the loader's documented limits).
BAD_VALUES: dict[str, list[object]] = {
    "poll_interval_s": [0, -1, 3601, math.nan, math.inf, -math.inf, 10**400, 1e400],
    "drift_tolerance_pct": [-0.1, 100.5, math.nan, 10**30],
    "stale_after_polls": [0, -3, 1001, 2.5, 10**40],
    "thresholds_pct": [
        [],
        [100],
        [99, 98],
        [150, 150],
        [120, 130],
        [150, math.nan],
        [math.inf],
        [150, "130"],
        [150, 10**400],
        [[150]],
    ],
    "hysteresis_pct": [-1, 101, math.inf],
    "repeat_critical_min": [0, -5, 1e9],
    "fast_fall_pct": [0, 10_001],
    "target_ratio_pct": [100, 50, 1e6],
    "max_alert_age_s": [0, 1e12],
    "state_dir": ["", "   "],
    "log_format": ["xml", "", "JSON"],
    "tier_refresh_h": [0, 169, -1],
    "market_refresh_h": [0, 1e9],
    "reconcile_s": [0, 3601],
    "mode": ["fast", "", "Poll"],
    "name": ["", "two words", "tab\there", "new\nline", "é", "a/b"],
    "exchange": ["", "binance-usdm", "nope\nline", "ftx\r\nx", "BINANCEUSDM"],
    "wallet_address": ["0x12", "ab" * 21, "0x" + "g" * 40],
    "api_key_env": ["lower_case", "", "1ABC", "MY-KEY", "sk-live-123"],
    "secret_env": ["has space"],
    "password_env": ["x"],
    "api_key_file": ["", "$HOME/key", "${SECRETS}/key"],
    "secret_file": ["   "],
    "base_url": [
        "ftp://example.com",
        "http://user:pw@example.com",
        "http://example.com?a=1",
        "localhost",
        "",
    ],
    "ws_url": ["http://127.0.0.1:8765", "ws://", "ws://host:99999"],
    "port": [0, 65536, -1],
    "topic_prefix": ["a/#", "+", "/leading"],
    "min_level": ["loud", "", "OK"],
    "accounts": [["nobody"], [1], "main"],
    "chat_ids": [[], [1.5], [True], [[1]]],
    "topic": [""],
    "url": ["ftp://x", "https://u:p@example.com/x", "", "not a url"],
    "bot_token_env": ["lower"],
    "token_env": ["UNSET_FUZZ_VARIABLE"],
    "user_key_env": ["ALSO_UNSET_FUZZ"],
    "host": [""],
}

#: Keys whose removal must fail: (where, the key path the error names).
REQUIRED: list[tuple[Where, str]] = [
    (("accounts",), "accounts"),
    (("accounts", 0, "name"), "accounts[0].name"),
    (("accounts", 0, "exchange"), "accounts[0].exchange"),
    (("accounts", 0, "api_key_env"), "accounts[0].api_key_"),
    (("accounts", 0, "secret_env"), "accounts[0].secret_"),
    (("accounts", 1, "password_env"), "accounts[1].password_"),
    (("accounts", 2, "wallet_address"), "accounts[2].wallet_address"),
    (("accounts", 3, "secret_file"), "accounts[3].secret_"),
    (("channels", 0, "type"), "channels[0].type"),
    (("channels", 0, "bot_token_env"), "channels[0].bot_token_"),
    (("channels", 0, "chat_ids"), "channels[0].chat_ids"),
    (("channels", 1, "host"), "channels[1].host"),
    (("channels", 2, "topic"), "channels[2].topic"),
    (("channels", 3, "token_env"), "channels[3].token_"),
    (("channels", 3, "user_key_env"), "channels[3].user_key_"),
    (("channels", 4, "url"), "channels[4].url"),
]

#: Lines that are invalid TOML wherever they are inserted.
BAD_LINES = [
    "= 1",
    'name = "unterminated',
    "[[accounts]",
    "[alerts",
    "x = [1, 2",
    "a = 1 2",
    "poll_interval_s = ",
    "key = 'single\nline'",
    "]]]",
    "x = {a = 1,}",
    "x = 1__0",
    "x = 0x",
    "x = 1979-13-45",
]


@st.composite
def unknown_key(draw: st.DrawFn) -> Broken:
    """A key no table knows, or a close misspelling of one it does."""
    table = draw(st.sampled_from(TABLES))
    key = draw(
        st.sampled_from(
            ["colour", "pol_interval_s", "threshold_pct", "api_key", "secret", "password", "Name"]
        )
        | st.from_regex(r"x_[a-z0-9_]{1,10}", fullmatch=True)
    )
    document = copy.deepcopy(BASE)
    target = get(document, table)
    if key in target:  # pragma: no cover - only "Name" could collide, and no table has it
        key = f"x_{key}"
    target[key] = draw(st.sampled_from(["1", 1, True]))
    return Broken(to_toml(document), key_path((*table, key)), f"unknown key {key_path((*table, key))}")


@st.composite
def wrong_type(draw: st.DrawFn) -> Broken:
    """A value of another type than the key's (tables too: ``alerts = 3``)."""
    where = draw(st.sampled_from([*LEAVES, ("alerts",), ("daemon",)]))
    current = get(BASE, where)
    kind = dict if isinstance(current, dict) else type(current)
    if kind is dict:
        value = draw(st.sampled_from([3, "x", True, [1]]))
    else:
        value = draw(st.sampled_from(OTHER_TYPES[kind]))
    name = key_path(where)
    if where[-1] == "chat_ids" and isinstance(value, str):
        value = 1  # a bare chat id in place of the list: still the wrong type, and not a name
    return Broken(to_toml(put(BASE, where, value)), name, f"{name} = {value!r}")


@st.composite
def bad_value(draw: st.DrawFn) -> Broken:
    """A value of the right type out of range or of the wrong form."""
    where = draw(st.sampled_from([where for where in LEAVES if where[-1] in BAD_VALUES]))
    value = draw(st.sampled_from(BAD_VALUES[str(where[-1])]))
    name = key_path(where)
    return Broken(to_toml(put(BASE, where, value)), name, f"{name} = {value!r}")


@st.composite
def missing(draw: st.DrawFn) -> Broken:
    """A required key removed."""
    where, names = draw(st.sampled_from(REQUIRED))
    return Broken(to_toml(drop(BASE, where)), names, f"without {key_path(where)}")


@st.composite
def duplicate(draw: st.DrawFn) -> Broken:
    """Two accounts or two channels with one name."""
    section = draw(st.sampled_from(["accounts", "channels"]))
    count = len(BASE[section])
    first = draw(st.integers(0, count - 2))
    second = draw(st.integers(first + 1, count - 1))
    document = copy.deepcopy(BASE)
    rows = document[section]
    name = rows[first].get("name") or rows[first]["type"]
    rows[second]["name"] = name
    if section == "channels":
        rows[first]["name"] = name
    return Broken(to_toml(document), f"{section}[{second}].name", f"{section}[{second}] named {name}")


@st.composite
def broken_syntax(draw: st.DrawFn) -> Broken:
    """An invalid line inserted anywhere, or bytes that are not UTF-8."""
    lines = to_toml(BASE).splitlines()
    at = draw(st.integers(0, len(lines)))
    if draw(st.booleans()):
        bad = draw(st.sampled_from(BAD_LINES))
        text = "\n".join([*lines[:at], bad, *lines[at:]]) + "\n"
        return Broken(text, "line ", f"{bad!r} at line {at + 1}", or_names="end of file: ")
    data = "\n".join(lines[:at]).encode() + b"\n# \xff\xfe broken\n" + "\n".join(lines[at:]).encode()
    return Broken(data, "file: cannot read: not UTF-8 text", "not UTF-8")


@st.composite
def unreadable_secret(draw: st.DrawFn) -> Broken:
    """A secret variable that is not set, or a secret file missing, empty or readable by others."""
    choice = draw(
        st.sampled_from(
            [
                (("accounts", 0, "api_key_env"), "FUZZ_NOT_SET"),
                (("accounts", 1, "password_env"), "FUZZ_EMPTY"),
                (("channels", 0, "bot_token_env"), "FUZZ_NOT_SET"),
                (("channels", 1, "password_env"), "FUZZ_EMPTY"),
                (("accounts", 3, "api_key_file"), "keys/missing"),
                (("accounts", 3, "secret_file"), "keys/loose"),
                (("accounts", 3, "secret_file"), "keys/empty"),
                (("accounts", 3, "secret_file"), "keys"),
                (("accounts", 3, "api_key_file"), "$CREDENTIALS_DIRECTORY/key"),
            ]
        )
    )
    where, value = choice
    return Broken(to_toml(put(BASE, where, value)), key_path(where), f"{key_path(where)} = {value!r}")


MALFORMED = st.one_of(
    unknown_key(), wrong_type(), bad_value(), missing(), duplicate(), broken_syntax(), unreadable_secret()
)


# --- running check-config ---------------------------------------------------------------------------


@pytest.fixture
def config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory with the secret files the base configuration reads, and its variables set."""
    keys = tmp_path / "keys"
    keys.mkdir()
    for name, text, mode in [
        ("api_key", "fuzz-key\n", 0o600),
        ("secret", "fuzz-secret\n", 0o600),
        ("loose", "fuzz-loose\n", 0o644),
        ("empty", "\n", 0o600),
    ]:
        (keys / name).write_text(text, encoding="utf-8")
        (keys / name).chmod(mode)
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("FUZZ_EMPTY", "  ")
    monkeypatch.delenv("FUZZ_NOT_SET", raising=False)
    monkeypatch.delenv("UNSET_FUZZ_VARIABLE", raising=False)
    monkeypatch.delenv("ALSO_UNSET_FUZZ", raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    return tmp_path


def check_config(path: Path) -> tuple[int, str, str]:
    """``margin-monitor check-config --config path`` in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["check-config", "--config", str(path)])
    return code, out.getvalue(), err.getvalue()


def write(path: Path, text: str | bytes) -> None:
    """The configuration file, as text or raw bytes."""
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")


def assert_one_line(path: Path, broken: Broken, code: int, out: str, err: str) -> None:
    """Exit code 2, nothing on stdout, one line on stderr naming the file and the key at fault."""
    assert code == 2, f"{broken.how}: exit {code}, stdout {out!r}"
    assert not out, broken.how
    assert err.endswith("\n"), f"{broken.how}: {err!r}"
    assert err.count("\n") == 1, f"{broken.how}: more than one line: {err!r}"
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f\x85\u2028\u2029]", err), f"{broken.how}: {err!r}"
    assert err.startswith(f"margin-monitor: error: {path}: "), f"{broken.how}: {err!r}"
    named = broken.names in err or (broken.or_names is not None and broken.or_names in err)
    assert named, f"{broken.how}: {err!r} does not name {broken.names!r}"
    assert "Traceback" not in err


def test_the_base_configuration_is_valid(config_dir: Path) -> None:
    """The document the fuzzing breaks passes as it is: every failure below is the mutation's."""
    path = config_dir / "margin-monitor.toml"
    write(path, to_toml(BASE))
    code, out, err = check_config(path)
    assert (code, err) == (0, ""), err
    assert out.startswith(f"{path}: ok: 5 accounts")
    assert "channels: telegram (telegram), home (mqtt), ntfy (ntfy), pushover (pushover), webhook" in out


def test_malformed_configuration_is_exit_2_and_one_line(config_dir: Path) -> None:
    """Any one defect: exit code 2 and one stderr line naming the file and the key path (or line)."""
    path = config_dir / "margin-monitor.toml"

    @FUZZ
    @given(MALFORMED)
    def check(broken: Broken) -> None:
        write(path, broken.text)
        code, out, err = check_config(path)
        assert_one_line(path, broken, code, out, err)

    check()


@pytest.mark.parametrize(
    ("where", "value"),
    [(("missing.toml",), None), (("keys",), None)],
    ids=["no-such-file", "a-directory"],
)
def test_a_path_that_is_no_file_is_named(config_dir: Path, where: tuple[str], value: None) -> None:
    """A missing file, or a directory given as the file: one line naming ``file``."""
    del value
    path = config_dir / where[0]
    code, out, err = check_config(path)
    assert_one_line(path, Broken("", f"{path}: file: ", where[0]), code, out, err)


SUBPROCESS_CASES = [
    Broken(to_toml(BASE).replace("[alerts]", "[alerts"), "line 2, column", "broken table header"),
    Broken(
        to_toml(put(BASE, ("accounts", 0, "poll_interval_s"), 10**400)), "accounts[0].poll_interval_s", "big"
    ),
    Broken(to_toml(put(BASE, ("accounts", 0, "exchange"), "two\nlines")), "accounts[0].exchange", "newline"),
]


@pytest.mark.parametrize("broken", SUBPROCESS_CASES, ids=[case.how for case in SUBPROCESS_CASES])
def test_the_real_command_prints_one_line(config_dir: Path, broken: Broken) -> None:
    """The installed entry point, in its own process: exit code 2, one line, no traceback."""
    path = config_dir / "margin-monitor.toml"
    write(path, broken.text)
    done = subprocess.run(
        [sys.executable, "-m", "monitor", "check-config", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=dict(os.environ),
    )
    assert_one_line(path, broken, done.returncode, done.stdout, done.stderr)
