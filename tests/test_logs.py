"""Logging: JSON lines or console lines on one stream, third-party loggers included, secrets never."""

from __future__ import annotations

import io
import json
import logging
import re
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st
from monitor.service.logs import (
    REDACTOR,
    THIRD_PARTY_LOGGERS,
    Redactor,
    _trie_pattern,
    configure_logging,
    set_secrets,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

SECRET = "vmPUZE6mv9SD5VNHk4HlWFsOr6aKE2zvsw0MuIgwCIPy6utIco14y7Ju91duEh8A"  # noqa: S105 - a made-up key
PASSPHRASE = "correct horse 'battery' staple"  # noqa: S105 - quotes are escaped differently by JSON and repr


class FakeTTY(io.StringIO):
    """A StringIO that says it is a terminal."""

    def isatty(self) -> bool:
        """Claim to be a terminal, as stdout is in an interactive shell."""
        return True


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """Give every test a fresh structlog, root logger and redactor, and put them back afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    levels = {name: logging.getLogger(name).level for name in THIRD_PARTY_LOGGERS}
    yield
    structlog.reset_defaults()
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, saved in levels.items():
        logging.getLogger(name).setLevel(saved)
    REDACTOR.set_secrets(())


def lines(stream: io.StringIO) -> list[str]:
    """The non-empty lines written to ``stream``."""
    return [line for line in stream.getvalue().splitlines() if line]


def json_lines(stream: io.StringIO) -> list[dict[str, object]]:
    """Every line of ``stream`` parsed as one JSON object."""
    return [json.loads(line) for line in lines(stream)]


# --- formats --------------------------------------------------------------------------------------


def test_json_lines_carry_timestamp_level_logger_event() -> None:
    """Off a terminal, each event is one JSON object with an ISO UTC timestamp and its fields."""
    stream = io.StringIO()
    configure_logging("auto", stream)
    structlog.get_logger("monitor.service.daemon").info(
        "account.assessed", account="main", margin_ratio_pct=182.4
    )
    (line,) = json_lines(stream)
    assert line["event"] == "account.assessed"
    assert line["log_level"] == "info"
    assert line["logger"] == "monitor.service.daemon"
    assert (line["account"], line["margin_ratio_pct"]) == ("main", 182.4)
    timestamp = line["timestamp"]
    assert isinstance(timestamp, str)
    assert timestamp.endswith("Z")
    assert datetime.fromisoformat(timestamp).tzinfo == UTC


def test_json_is_forced_on_a_terminal() -> None:
    """log_format = "json" renders JSON even on a terminal (for people who pipe into jq)."""
    stream = FakeTTY()
    configure_logging("json", stream)
    structlog.get_logger("monitor").warning("account.blind", account="main")
    assert json_lines(stream)[0]["log_level"] == "warning"


def test_console_on_a_terminal() -> None:
    """On a terminal, "auto" renders readable coloured lines rather than JSON."""
    stream = FakeTTY()
    configure_logging("auto", stream)
    structlog.get_logger("monitor").info("account.assessed", account="main")
    (line,) = lines(stream)
    assert "account.assessed" in line
    assert "main" in line
    assert "\x1b[" in line  # ANSI colours
    with pytest.raises(json.JSONDecodeError):
        json.loads(line)


def test_console_off_a_terminal_has_no_colours() -> None:
    """log_format = "console" into a file or pipe: readable, without escape codes."""
    stream = io.StringIO()
    configure_logging("console", stream)
    structlog.get_logger("monitor").info("account.assessed", account="main")
    (line,) = lines(stream)
    assert "account.assessed" in line
    assert "\x1b[" not in line


def test_exception_text_is_logged() -> None:
    """log.exception puts the traceback, as text, in the ``exception`` field."""
    stream = io.StringIO()
    configure_logging("json", stream)
    try:
        raise RuntimeError("exchange said no")  # noqa: TRY301 - the traceback is what is tested
    except RuntimeError:
        structlog.get_logger("monitor").exception("account.poll_crashed")
    (line,) = json_lines(stream)
    assert "RuntimeError: exchange said no" in str(line["exception"])


def test_stream_without_isatty_gets_json() -> None:
    """A file-like object without isatty() is not a terminal."""

    class Sink:
        """Only what a StreamHandler needs."""

        def __init__(self) -> None:
            self.text = ""

        def write(self, text: str) -> None:
            """Collect."""
            self.text += text

        def flush(self) -> None:
            """Nothing to flush."""

    sink = Sink()
    configure_logging("auto", sink)  # type: ignore[arg-type]
    structlog.get_logger("monitor").info("plain")
    assert json.loads(sink.text)["event"] == "plain"


# --- stdlib loggers -------------------------------------------------------------------------------


def test_third_party_records_share_the_pipeline_at_warning() -> None:
    """ccxt, aiohttp and apscheduler records are JSON lines too, but only from WARNING up."""
    stream = io.StringIO()
    configure_logging("json", stream)
    for name in THIRD_PARTY_LOGGERS:
        logging.getLogger(f"{name}.sub").info("chatter")
        logging.getLogger(name).warning("%s is unhappy", name)
    assert [(line["logger"], line["event"], line["log_level"]) for line in json_lines(stream)] == [
        (name, f"{name} is unhappy", "warning") for name in THIRD_PARTY_LOGGERS
    ]


def test_our_info_lines_pass() -> None:
    """The daemon's own INFO lines (the canonical account.assessed) are not filtered."""
    stream = io.StringIO()
    configure_logging("json", stream)
    structlog.get_logger("monitor.service.daemon").debug("noise")
    structlog.get_logger("monitor.service.daemon").info("account.assessed")
    assert [line["event"] for line in json_lines(stream)] == ["account.assessed"]


def test_reconfiguring_replaces_the_handler() -> None:
    """A reload configures logging again: one line per event, on the new stream, in the new format."""
    first, second = io.StringIO(), io.StringIO()
    configure_logging("json", first)
    configure_logging("json", first)
    configure_logging("console", second)
    structlog.get_logger("monitor").info("daemon.reloaded")
    logging.getLogger("ccxt").warning("once")
    assert first.getvalue() == ""
    assert len(lines(second)) == 2
    assert sum(handler.get_name() == "margin-monitor" for handler in logging.getLogger().handlers) == 1


def test_capture_logs_sees_module_level_loggers() -> None:
    """Loggers are not cached, so structlog.testing.capture_logs works after configure_logging."""
    configure_logging("json", io.StringIO())
    log = structlog.get_logger("monitor.service.daemon")
    log.info("before")
    with structlog.testing.capture_logs() as captured:
        log.info("account.assessed", account="main")
    assert captured == [{"event": "account.assessed", "account": "main", "log_level": "info"}]


# --- secrets --------------------------------------------------------------------------------------


def output_with_secrets(log_format: str = "json") -> str:
    """Log a secret every way it can reach a log line and return everything written."""
    stream = io.StringIO()
    configure_logging("json" if log_format == "json" else "console", stream, secrets=[SECRET, PASSPHRASE])
    log = structlog.get_logger("monitor.exchanges")
    log.info("request", key=SECRET, nested={"headers": [SECRET, PASSPHRASE]}, text=f"key is {SECRET}!")
    log.warning("object", value=RuntimeError(f"bad key {SECRET} / {PASSPHRASE}"))
    try:
        raise PermissionError(f"invalid key {SECRET}, passphrase {PASSPHRASE}")  # noqa: TRY301 - tested
    except PermissionError:
        log.exception("account.poll_failed")
    ccxt = logging.getLogger("ccxt.base.exchange")
    ccxt.warning("GET https://fapi.binance.com/fapi/v3/account?apiKey=%s failed", SECRET)
    try:
        raise ValueError(f"auth {PASSPHRASE}")  # noqa: TRY301 - tested
    except ValueError:
        ccxt.exception("ccxt error")
    return stream.getvalue()


@pytest.mark.parametrize("log_format", ["json", "console"])
def test_secret_values_never_appear(log_format: str) -> None:
    """Secrets in fields, nested values, reprs, exception text and ccxt's records are all replaced."""
    output = output_with_secrets(log_format)
    assert SECRET not in output
    assert "battery" not in output
    assert output.count("***") >= 10
    assert "account.poll_failed" in output
    assert "ccxt error" in output


def test_secret_fields_are_redacted_in_place() -> None:
    """The structure of the event survives redaction; only the secret's characters are replaced."""
    first = json.loads(output_with_secrets().splitlines()[0])
    assert first["key"] == "***"
    assert first["nested"] == {"headers": ["***", "***"]}
    assert first["text"] == "key is ***!"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "GET /fapi/v3/account?timestamp=1&recvWindow=5000&signature=9f86d081884c7d65",
            "GET /fapi/v3/account?timestamp=1&recvWindow=5000&signature=***",
        ),
        ("url?signature=abc&x=1", "url?signature=***&x=1"),
        ("{'X-MBX-APIKEY': 'someKey123', 'Accept': 'json'}", "{'X-MBX-APIKEY': '***', 'Accept': 'json'}"),
        ('{"X-MBX-APIKEY": "someKey123"}', '{"X-MBX-APIKEY": "***"}'),
        ("X-MBX-APIKEY: someKey123\r\nHost: x", "X-MBX-APIKEY: ***\r\nHost: x"),
        ("x-mbx-apikey=someKey123", "x-mbx-apikey=***"),
        ("{'OK-ACCESS-PASSPHRASE': 'pass'}", "{'OK-ACCESS-PASSPHRASE': '***'}"),
        ("no secrets at all", "no secrets at all"),
    ],
    ids=[
        "signature-last",
        "signature-middle",
        "header-repr",
        "header-json",
        "header-http",
        "header-lower",
        "okx",
        "none",
    ],
)
def test_signatures_and_key_headers_are_redacted(text: str, expected: str) -> None:
    """A signed query string or an API-key header is redacted even when its value is not configured."""
    assert Redactor().redact_text(text) == expected


def test_signature_in_a_stdlib_record_is_redacted() -> None:
    """In verbose mode ccxt logs signed URLs; the signature never reaches the stream."""
    stream = io.StringIO()
    configure_logging("json", stream)
    logging.getLogger("ccxt").warning("GET /fapi/v3/account?timestamp=1&signature=deadbeef01")
    assert "deadbeef01" not in stream.getvalue()


def test_set_secrets_replaces_the_set() -> None:
    """After credentials are resolved (or reloaded), set_secrets decides what is redacted."""
    stream = io.StringIO()
    configure_logging("json", stream, secrets=["old-secret-1"])
    set_secrets(["new-secret-2"])
    structlog.get_logger("monitor").info("x", a="old-secret-1", b="new-secret-2")
    (line,) = json_lines(stream)
    assert (line["a"], line["b"]) == ("old-secret-1", "***")


def test_longest_secret_wins() -> None:
    """When one secret is a prefix of another, the longer is replaced whole, leaving no tail."""
    redactor = Redactor()
    redactor.set_secrets(["abcd", "abcdefgh", ""])
    assert redactor.redact_text("abcdefgh abcdxyz") == "*** ***xyz"


@given(
    secrets=st.lists(st.text(alphabet="abcXYZ0129'\"\\-", min_size=1, max_size=12), min_size=1, max_size=20),
    text=st.text(alphabet="abcXYZ0129'\"\\- ", max_size=60),
)
def test_trie_matches_like_longest_first_alternation(secrets: list[str], text: str) -> None:
    """The trie pattern replaces exactly what an alternation of the secrets, longest first, replaces."""
    trie = re.compile(_trie_pattern(secrets))
    plain = re.compile("|".join(re.escape(secret) for secret in sorted(secrets, key=len, reverse=True)))
    assert trie.sub("*", text) == plain.sub("*", text)


def test_trie_handles_very_long_secrets() -> None:
    """A PEM-sized secret (some exchanges sign with RSA keys) compiles without deep recursion."""
    long_secret = "k" * 5000
    redactor = Redactor()
    redactor.set_secrets([long_secret, long_secret[:4000] + "x"])
    assert redactor.redact_text(f"<{long_secret}>") == "<***>"


def test_a_remembered_redaction_does_not_outlive_the_secrets_it_was_made_under() -> None:
    """Short strings are cached with their redacted form; new secrets start a new cache."""
    redactor = Redactor()
    assert redactor.redact_text("key=AKIA-distinct-0001") == "key=AKIA-distinct-0001"
    redactor.set_secrets(["AKIA-distinct-0001"])
    assert redactor.redact_text("key=AKIA-distinct-0001") == "key=***"
    assert redactor.redact_text("key=AKIA-distinct-0001") == "key=***"  # from the cache
    redactor.set_secrets([])
    assert redactor.redact_text("key=AKIA-distinct-0001") == "key=AKIA-distinct-0001"
    long_line = "x" * (Redactor.CACHE_MAX_LEN + 1) + "AKIA-distinct-0001"
    redactor.set_secrets(["AKIA-distinct-0001"])
    assert redactor.redact_text(long_line).endswith("***")
