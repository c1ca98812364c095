"""Sharding: the hash, the ways a process learns its shard, and three shard processes end to end.

The end-to-end test is the issue's "done when": three ``margin-monitor run`` processes (shards 0/3,
1/3, 2/3) against one simulator holding 30 accounts and one Mosquitto. Every account is assessed by
exactly one shard, and its retained state is on the broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import signal
import sys
from collections import Counter
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import aiomqtt
import pytest
from monitor.cli import main
from monitor.config import ChannelConfig, load_config
from monitor.errors import UserInputError
from monitor.notify.factory import build_channels
from monitor.notify.mqtt import MqttChannel, account_slug, discovery_configs
from monitor.service.app import log_shard, run_daemon
from monitor.sharding import (
    MAX_SHARDS,
    SHARD_ENV,
    SHARDS_ENV,
    Shard,
    apply_shard,
    jump_hash,
    parse_shard,
    shard_from,
    shard_key,
    shard_of,
)
from monitor.sim import SimServer, bulk_accounts
from structlog.testing import capture_logs

if TYPE_CHECKING:
    from pathlib import Path

    from mosquitto import MosquittoBroker

pytest_plugins = ["mosquitto"]

PREFIX = "mm-shards"
ACCOUNTS = 30
SHARDS = 3


# --- the hash -------------------------------------------------------------------------------------


def test_jump_hash_matches_the_reference_vectors() -> None:
    """The published implementation's test vectors (Lamping and Veach; the Go port's tests)."""
    assert jump_hash(1, 1) == 0
    assert jump_hash(42, 57) == 43
    assert jump_hash(0xDEAD10CC, 666) == 361
    assert jump_hash(256, 1024) == 520
    with pytest.raises(ValueError, match="at least 1"):
        jump_hash(1, 0)


def test_shard_of_is_pinned() -> None:
    """Pinned values: a change here would move accounts between running shards on upgrade."""
    assert shard_key("main") == int.from_bytes(hashlib.sha256(b"main").digest()[:8], "big")
    pinned = {name: shard_of(name, 7) for name in ("main", "hedge", "sim-bulk-000000", "ünïcode")}
    assert pinned == {"main": 6, "hedge": 3, "sim-bulk-000000": 2, "ünïcode": 6}
    assert all(shard_of(name, 1) == 0 for name in pinned)


def test_growing_moves_few_accounts_and_only_to_the_new_shard() -> None:
    """From N to N+1 shards an account stays or moves to shard N; about 1/(N+1) of them move."""
    names = [f"account-{index}" for index in range(3000)]
    for count in (1, 2, 3, 5, 10):
        before = {name: shard_of(name, count) for name in names}
        after = {name: shard_of(name, count + 1) for name in names}
        moved = [name for name in names if before[name] != after[name]]
        assert all(after[name] == count for name in moved)
        assert abs(len(moved) / len(names) - 1 / (count + 1)) < 0.05
        spread = Counter(after.values())
        assert set(spread) == set(range(count + 1))
        assert min(spread.values()) > 0.7 * len(names) / (count + 1)


# --- which shard a process is -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"), [("0/3", (0, 3)), ("2/3", (2, 3)), (" 1 / 2 ", (1, 2)), ("0/1", (0, 1))]
)
def test_parse_shard_accepts_i_of_n(text: str, expected: tuple[int, int]) -> None:
    """``I/N`` with 0 <= I < N."""
    shard = parse_shard(text)
    assert (shard.index, shard.count) == expected
    assert str(shard) == f"{expected[0]}/{expected[1]}"


@pytest.mark.parametrize("text", ["3/3", "-1/3", "1/0", "1", "a/b", "1/3/4", "", "0/5000"])
def test_parse_shard_names_the_flag_and_the_value(text: str) -> None:
    """A bad ``--shard`` is one line that names the flag and quotes the value."""
    with pytest.raises(UserInputError) as caught:
        parse_shard(text)
    assert str(caught.value).startswith("--shard: ")
    assert repr(text) in str(caught.value)


def test_shard_rejects_impossible_values() -> None:
    """A ``Shard`` built in code is checked too."""
    with pytest.raises(ValueError, match="0 <= I < N"):
        Shard(3, 3)
    with pytest.raises(ValueError, match="0 <= I < N"):
        Shard(0, MAX_SHARDS + 1)


def test_flag_then_shard_variable_then_statefulset_ordinal() -> None:
    """The flag wins over ``MARGIN_MONITOR_SHARD``, which wins over ``MARGIN_MONITOR_SHARDS`` + host name."""
    environ = {SHARD_ENV: "1/4", SHARDS_ENV: "3", "HOSTNAME": "margin-monitor-2"}
    assert shard_from("0/2", environ) == Shard(0, 2, "--shard")
    assert shard_from(None, environ) == Shard(1, 4, SHARD_ENV)
    from_pod = shard_from(None, {SHARDS_ENV: "3", "HOSTNAME": "margin-monitor-2"})
    assert from_pod is not None
    assert (from_pod.index, from_pod.count) == (2, 3)
    assert "margin-monitor-2" in from_pod.origin
    assert shard_from(None, {SHARDS_ENV: "3"}, hostname="mm-0") == Shard(
        0, 3, f"{SHARDS_ENV} and host name mm-0"
    )
    assert shard_from(None, {}) is None
    assert shard_from(None, {SHARD_ENV: " ", SHARDS_ENV: ""}) is None


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({SHARD_ENV: "4/4"}, f"{SHARD_ENV}: expected I/N with 0 <= I < N, got '4/4'"),
        ({SHARDS_ENV: "three", "HOSTNAME": "mm-1"}, f"{SHARDS_ENV}: expected a number of shards"),
        ({SHARDS_ENV: "0", "HOSTNAME": "mm-1"}, f"{SHARDS_ENV}: expected a number of shards"),
        ({SHARDS_ENV: "3", "HOSTNAME": "laptop"}, "got host name 'laptop'"),
        (
            {SHARDS_ENV: "3", "HOSTNAME": "margin-monitor-3"},
            "gives shard 3, not below MARGIN_MONITOR_SHARDS=3",
        ),
    ],
)
def test_bad_shard_environment_is_one_clear_line(environ: dict[str, str], message: str) -> None:
    """Each mistake names the variable at fault."""
    with pytest.raises(UserInputError) as caught:
        shard_from(None, environ)
    assert message in str(caught.value)


def test_cli_reports_a_bad_shard_with_exit_code_2(capsys: pytest.CaptureFixture[str]) -> None:
    """``run --shard 3/3`` exits 2 with the issue's message, before reading the configuration."""
    assert main(["run", "--config", "/nonexistent.toml", "--shard", "3/3"]) == 2
    assert capsys.readouterr().err == (
        "margin-monitor: error: --shard: expected I/N with 0 <= I < N, got '3/3'\n"
    )


# --- a shard's configuration ------------------------------------------------------------------------


def write_config(
    tmp_path: Path,
    names: list[str],
    *,
    base_url: str = "http://127.0.0.1:9",
    mqtt_port: int = 1,
    poll_interval_s: float = 10.0,
    client_id: str | None = None,
) -> Path:
    """``names`` as Binance USDⓈ-M accounts on ``base_url`` with key files, and one MQTT channel."""
    keys = tmp_path / "keys"
    keys.mkdir(exist_ok=True)
    sim = {account.name: account for account in bulk_accounts(len(names))}
    tables = []
    for name in names:
        account = sim.get(name)
        for kind, value in (
            ("key", account.api_key if account else "k"),
            ("secret", account.secret if account else "s"),
        ):
            path = keys / f"{name}.{kind}"
            path.write_text(value + "\n", encoding="utf-8")
            path.chmod(0o600)
        tables.append(
            f'[[accounts]]\nname = "{name}"\nexchange = "binanceusdm"\nmode = "poll"\n'
            f'api_key_file = "keys/{name}.key"\nsecret_file = "keys/{name}.secret"\n'
            f'base_url = "{base_url}"\npoll_interval_s = {poll_interval_s}\n'
        )
    client = f'client_id = "{client_id}"\n' if client_id else ""
    path = tmp_path / "margin-monitor.toml"
    path.write_text(
        '[daemon]\nstate_dir = "state"\nlog_format = "json"\n'
        # Shards on one host need a port each (0: any free one), as the README says.
        'http_listen = "127.0.0.1:0"\n\n'
        + "\n".join(tables)
        + f'\n[[channels]]\ntype = "mqtt"\nhost = "127.0.0.1"\nport = {mqtt_port}\n'
        f'topic_prefix = "{PREFIX}"\ndiscovery = false\n{client}',
        encoding="utf-8",
    )
    return path


def mqtt_channel(configs: tuple[ChannelConfig, ...]) -> MqttChannel:
    """The one MQTT channel built from ``configs``."""
    (channel,) = [channel for channel in build_channels(configs)[0] if isinstance(channel, MqttChannel)]
    return channel


def test_apply_shard_keeps_its_accounts_and_separates_state_and_mqtt_identity(tmp_path: Path) -> None:
    """The shard's accounts only; state in ``shard-I-of-N``; its own MQTT client id and status topic."""
    names = [f"acct-{index}" for index in range(12)]
    config = load_config(write_config(tmp_path, names, client_id="desk"))
    shards = [apply_shard(config, Shard(index, 3)) for index in range(3)]
    taken = [[account.name for account in shard.accounts] for shard in shards]
    assert sorted(name for names_ in taken for name in names_) == sorted(names)
    assert all(name in taken[shard_of(name, 3)] for name in names)
    assert [shard.daemon.state_dir for shard in shards] == [
        tmp_path / "state" / f"shard-{index}-of-3" for index in range(3)
    ]
    assert [shard.shard for shard in shards] == ["0/3", "1/3", "2/3"]
    settings = [mqtt_channel(shard.channels).settings for shard in shards]
    assert [s.client_id for s in settings] == [f"desk-shard-{index}-of-3" for index in range(3)]
    assert [s.status_topic for s in settings] == [f"{PREFIX}/status/shard-{index}-of-3" for index in range(3)]
    # Discovery points each account's availability at its own shard's status topic.
    assert discovery_configs(settings[1], "acct-0", "binanceusdm")[0][1]["availability_topic"] == (
        f"{PREFIX}/status/shard-1-of-3"
    )
    # Telegram: every shard sends alerts, none polls for commands (one bot, one poller).
    telegram = ChannelConfig(name="tg", type="telegram", min_level="warning", options={"commands": True})
    sharded = apply_shard(replace(config, channels=(telegram,)), Shard(0, 3))
    assert [channel.options["commands"] for channel in sharded.channels] == [False]
    # No shard, or a shard of one: the configuration as written.
    assert apply_shard(config, None) is config
    assert apply_shard(config, Shard(0, 1)) is config
    assert mqtt_channel(config.channels).settings.status_topic == f"{PREFIX}/status"


def test_check_config_lists_a_shards_accounts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``check-config --shard`` checks every account, then names the ones the shard takes."""
    names = [f"acct-{index}" for index in range(6)]
    path = write_config(tmp_path, names)
    assert main(["check-config", "--config", str(path), "--shard", "1/2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{path}: ok: 6 accounts")
    taken = [name for name in names if shard_of(name, 2) == 1]
    assert out[1] == f"shard 1/2 takes {len(taken)} of 6 accounts: {', '.join(taken)}"


def test_mute_goes_to_the_shard_that_watches_the_account(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``mute --shard`` writes into the shard's state directory, and refuses another shard's account."""
    names = [f"acct-{index}" for index in range(6)]
    path = write_config(tmp_path, names)
    mine = next(name for name in names if shard_of(name, 2) == 0)
    theirs = next(name for name in names if shard_of(name, 2) == 1)
    assert main(["mute", mine, "--for", "1h", "--config", str(path), "--shard", "0/2"]) == 0
    assert (tmp_path / "state" / "shard-0-of-2").is_dir()
    assert main(["mute", theirs, "--config", str(path), "--shard", "0/2"]) == 2
    assert f"{theirs!r} is watched by shard 1/2, not 0/2" in capsys.readouterr().err
    assert main(["alerts", "--config", str(path), "--shard", "0/2"]) == 0


@pytest.mark.asyncio
async def test_a_shard_without_accounts_runs_and_says_so(tmp_path: Path) -> None:
    """Zero accounts is a valid shard: it logs so, starts, and stops cleanly."""
    names = ["only-one"]
    config = load_config(write_config(tmp_path, names))
    empty = Shard(1 - shard_of("only-one", 2), 2)
    sharded = apply_shard(config, empty)
    assert sharded.accounts == ()
    stop = asyncio.Event()
    with capture_logs() as logs:
        log_shard(sharded, empty)
        task = asyncio.create_task(run_daemon(sharded, {}, stop))
        await asyncio.sleep(0.3)
        stop.set()
        await asyncio.wait_for(task, 10)
    events = {entry["event"]: entry for entry in logs}
    assert events["daemon.shard"]["accounts"] == 0
    assert events["daemon.shard"]["index"] == empty.index
    assert events["daemon.shard_empty"]["log_level"] == "warning"
    assert events["daemon.started"]["accounts"] == 0
    assert "daemon.stopped" in events


# --- three shard processes, one simulator, one broker ------------------------------------------------


async def read_lines(stream: asyncio.StreamReader, into: list[dict[str, Any]]) -> None:
    """Append every JSON line of ``stream`` to ``into`` until it ends."""
    while line := await stream.readline():
        with contextlib.suppress(ValueError):
            document = json.loads(line)
            if isinstance(document, dict):
                into.append(document)


async def retained_states(broker: MosquittoBroker, wanted: set[str], within: float) -> dict[str, Any]:
    """The retained ``<prefix>/<slug>/state`` documents, once every slug in ``wanted`` has one."""
    states: dict[str, Any] = {}
    async with aiomqtt.Client(broker.host, broker.port, timeout=5) as client:
        await client.subscribe(f"{PREFIX}/+/state", qos=1)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                async for message in client.messages:
                    assert isinstance(message.payload, bytes)
                    states[str(message.topic).split("/")[1]] = json.loads(message.payload)
                    if wanted <= set(states):
                        break
    return states


@pytest.mark.asyncio
async def test_three_shards_share_thirty_accounts_and_one_broker(
    tmp_path: Path, mosquitto: MosquittoBroker
) -> None:
    """Each of 30 accounts is assessed by exactly one of three shard processes; all 30 states meet on MQTT."""
    sim_accounts = bulk_accounts(ACCOUNTS)
    names = [account.name for account in sim_accounts]
    async with SimServer(scenario="flat", accounts=sim_accounts) as sim:
        config = write_config(
            tmp_path, names, base_url=sim.base_url, mqtt_port=mosquitto.port, poll_interval_s=2.0
        )
        environ = {key: value for key, value in os.environ.items() if not key.startswith("MARGIN_MONITOR_")}
        processes = [
            await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "monitor",
                "run",
                "--config",
                str(config),
                "--shard",
                f"{index}/{SHARDS}",
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=environ,
            )
            for index in range(SHARDS)
        ]
        logs: list[list[dict[str, Any]]] = [[] for _ in processes]
        readers = [
            asyncio.create_task(read_lines(process.stdout, into))
            for process, into in zip(processes, logs, strict=True)
            if process.stdout is not None
        ]
        try:
            wanted = {account_slug(name) for name in names}
            states = await retained_states(mosquitto, wanted, within=30.0)
            status = await retained_states_of(mosquitto, f"{PREFIX}/status/+", SHARDS)
        finally:
            for process in processes:
                if process.returncode is None:
                    process.send_signal(signal.SIGTERM)
            codes = await asyncio.wait_for(asyncio.gather(*(process.wait() for process in processes)), 15)
            await asyncio.wait_for(asyncio.gather(*readers), 5)
            errors = [await process.stderr.read() if process.stderr else b"" for process in processes]
    assert codes == [0] * SHARDS, errors
    assessed = [{line["account"] for line in lines if line["event"] == "account.assessed"} for lines in logs]
    for index, accounts in enumerate(assessed):
        assert accounts == {name for name in names if shard_of(name, SHARDS) == index}
        (shard_line,) = [line for line in logs[index] if line["event"] == "daemon.shard"]
        assert (shard_line["index"], shard_line["count"], shard_line["accounts"]) == (
            index,
            SHARDS,
            len(accounts),
        )
        assert shard_line["state_dir"] == str(tmp_path / "state" / f"shard-{index}-of-{SHARDS}")
    owners = Counter(name for accounts in assessed for name in accounts)
    assert owners == dict.fromkeys(names, 1)  # every account, each by exactly one shard
    assert set(states) == wanted
    assert all(state["level"] == "ok" and state["margin_ratio_pct"] > 100 for state in states.values())
    assert status == {f"shard-{index}-of-{SHARDS}": "online" for index in range(SHARDS)}
    assert [
        (tmp_path / "state" / f"shard-{index}-of-{SHARDS}" / "outbox.sqlite3").exists()
        for index in range(SHARDS)
    ] == [True] * SHARDS


async def retained_states_of(broker: MosquittoBroker, topic: str, count: int) -> dict[str, str]:
    """The retained text payloads under ``topic`` (one wildcard level), keyed by that level."""
    found: dict[str, str] = {}
    async with aiomqtt.Client(broker.host, broker.port, timeout=5) as client:
        await client.subscribe(topic, qos=1)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                async for message in client.messages:
                    assert isinstance(message.payload, bytes)
                    found[str(message.topic).rsplit("/", 1)[1]] = message.payload.decode()
                    if len(found) >= count:
                        break
    return found
