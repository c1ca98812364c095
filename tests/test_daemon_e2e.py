"""The daemon end to end: real ccxt, over loopback, against the simulated exchange.

No part is replaced: the configuration is the daemon's own, the adapter talks to the simulator
through ccxt's signed HTTP, and the simulator computes its own figures to compare against.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any

import pytest
from monitor.exchanges.client import Credentials
from monitor.service.app import build_sources, demo_config, status_once
from monitor.service.daemon import BLIND, Daemon
from monitor.sim import DEMO_API_KEY, DEMO_SECRET, SimServer
from structlog.testing import capture_logs

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from monitor.config import Config

CREDENTIALS = {"demo": Credentials(api_key=DEMO_API_KEY, secret=DEMO_SECRET)}
LEVELS = ["ok", "warning", "danger", "critical", "liquidation"]


def sim_config(sim: SimServer, tmp_path: Path, *, poll_interval_s: float = 10.0) -> Config:
    """The demo account on ``sim``."""
    return demo_config(sim.base_url, sim.ws_url, poll_interval_s=poll_interval_s, state_dir=tmp_path)


def collapse(levels: list[str]) -> list[str]:
    """``levels`` with repeats removed: the order in which they were visited."""
    return [level for i, level in enumerate(levels) if i == 0 or levels[i - 1] != level]


@pytest.mark.asyncio
async def test_crash_goes_through_every_level_matching_the_exchange(tmp_path: Path) -> None:
    """Step by step through the crash, the daemon's ratio is the simulator's (within 0.1 point), in order."""
    async with SimServer(scenario="crash", autostart=False) as sim:
        config = sim_config(sim, tmp_path)
        daemon = Daemon(config, build_sources(config, CREDENTIALS))
        levels: list[str] = []
        try:
            with capture_logs() as logs:
                while True:
                    assessment = await daemon.poll("demo")
                    assert assessment is not None
                    assert assessment.margin_ratio is not None
                    truth = sim.figures()
                    assert truth.margin_ratio is not None
                    assert assessment.margin_ratio * 100 == pytest.approx(truth.margin_ratio * 100, abs=0.1)
                    assert assessment.maintenance_margin == pytest.approx(truth.maintenance_margin, rel=1e-9)
                    levels.append(daemon.accounts["demo"].level)
                    if not sim.step():
                        break
        finally:
            await daemon.shutdown()
    assert collapse(levels) == LEVELS
    assessed = [line for line in logs if line["event"] == "account.assessed"]
    assert collapse([line["level"] for line in assessed]) == LEVELS
    assert {
        "account",
        "exchange",
        "margin_ratio_pct",
        "level",
        "margin_balance",
        "maintenance_margin",
    } <= set(assessed[0])
    assert {"drift_pct", "positions", "latency_ms"} <= set(assessed[0])
    assert all(line["drift_pct"] == pytest.approx(0, abs=1e-6) for line in assessed)


FAULTS = [
    ("http_500", "TemporaryExchangeError"),
    ("http_503", "TemporaryExchangeError"),
    ("rate_limit", "RateLimitedError"),
    ("ban", "RateLimitedError"),
    ("malformed_json", "PayloadError"),
    ("timestamp", "ClockSkewError"),
]


@pytest.mark.asyncio
@pytest.mark.parametrize(("fault", "error"), FAULTS, ids=[fault for fault, _ in FAULTS])
async def test_faults_surface_as_log_lines_and_polling_resumes(
    tmp_path: Path, fault: str, error: str
) -> None:
    """A fault on the exchange is one ``account.poll_failed`` line naming the error; the next poll works."""
    async with SimServer(scenario="flat", autostart=False) as sim:
        config = sim_config(sim, tmp_path)
        daemon = Daemon(config, build_sources(config, CREDENTIALS), jitter=lambda low, _high: low)
        try:
            assert await daemon.poll("demo") is not None
            sim.faults.inject(fault, count=1, path="/fapi/v3/account", retry_after_s=0)
            with capture_logs() as logs:
                assert await daemon.poll("demo") is None
                daemon.accounts["demo"].backoff_until = 0  # the test does not wait out Retry-After
                assert await daemon.poll("demo") is not None
        finally:
            await daemon.shutdown()
    failed = [line for line in logs if line["event"] == "account.poll_failed"]
    assert len(failed) == 1
    assert failed[0]["error"] == error
    assert DEMO_SECRET not in json.dumps(logs, default=str)
    assert logs[-1]["event"] == "account.assessed"


@pytest.mark.asyncio
async def test_a_missing_field_is_named(tmp_path: Path) -> None:
    """A payload without ``totalMaintMargin`` fails the poll with a line naming that field."""
    async with SimServer(scenario="flat", autostart=False) as sim:
        config = sim_config(sim, tmp_path)
        daemon = Daemon(config, build_sources(config, CREDENTIALS))
        try:
            sim.faults.inject("missing_field", count=1, path="/fapi/v3/account", field="totalMaintMargin")
            with capture_logs() as logs:
                assert await daemon.poll("demo") is None
        finally:
            await daemon.shutdown()
    assert logs[0]["error"] == "PayloadError"
    assert "totalMaintMargin" in logs[0]["field"]


@pytest.mark.asyncio
async def test_a_stopped_feed_turns_the_account_blind(tmp_path: Path) -> None:
    """When the exchange stops answering, the running daemon says the account is blind within 3 polls."""
    async with SimServer(scenario="flat", autostart=False) as sim:
        config = sim_config(sim, tmp_path, poll_interval_s=0.2)
        daemon = Daemon(config, build_sources(config, CREDENTIALS), poll_timeout_s=0.3)
        stop = asyncio.Event()
        with capture_logs() as logs:
            task = asyncio.create_task(daemon.run(stop))
            started = time.monotonic()
            while daemon.accounts["demo"].level != "ok" and time.monotonic() - started < 5:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            assert daemon.accounts["demo"].level == "ok"
            sim.faults.inject("timeout", count=10_000, hang_s=5)
            stopped_at = time.monotonic()
            # The daemon has no event to wait on: sample its state as an operator's dashboard would.
            while daemon.accounts["demo"].level != BLIND and time.monotonic() - stopped_at < 5:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            blind_after = time.monotonic() - stopped_at
            stop.set()
            await asyncio.wait_for(task, 10)
    assert daemon.accounts["demo"].level == BLIND
    assert blind_after < 0.2 * 3 + 0.2 * 2  # the bound, plus at most one staleness period and a poll
    blind = [line for line in logs if line["event"] == "account.blind"]
    assert len(blind) == 1
    assert blind[0]["last_error"] == "timeout"


@pytest.mark.asyncio
async def test_status_polls_once_and_reports_positions(tmp_path: Path) -> None:
    """``status`` reads each account once and gives its ratio, level and every position's prices."""
    async with SimServer(scenario="flat", autostart=False) as sim:
        documents = await status_once(sim_config(sim, tmp_path), CREDENTIALS)
        truth = sim.figures()
    (document,) = documents
    assert truth.margin_ratio is not None
    assert document["margin_ratio_pct"] == pytest.approx(truth.margin_ratio * 100, abs=0.1)
    assert document["level"] == "ok"
    symbols = {position["symbol"] for position in document["positions"]}
    assert symbols == {"BTC/USDT:USDT", "ETH/USDT:USDT"}
    for position in document["positions"]:
        assert set(position["threshold_prices"]) == {"150", "130", "120"}
        assert position["liquidation_price"] is not None


# --- the command line, as separate processes -----------------------------------------------------


@pytest.fixture
def sim_process() -> Iterator[str]:
    """``margin-monitor sim`` on a free port; yields its base URL."""
    process = subprocess.Popen(
        [sys.executable, "-m", "monitor", "sim", "--port", "0", "--scenario", "flat"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert process.stdout is not None
        url = None
        deadline = time.monotonic() + 20
        while url is None and time.monotonic() < deadline:
            line = process.stdout.readline()
            if "http://127.0.0.1:" in line:
                url = "http://" + line.split("http://", 1)[1].split()[0].rstrip(",;")
        assert url is not None, "the simulator did not print its URL"
        yield url
    finally:
        process.terminate()
        process.wait(10)
        if process.stdout is not None:
            process.stdout.close()


def write_config(tmp_path: Path, base_url: str, **extra: Any) -> Path:  # noqa: ANN401 - TOML values
    """A config of the demo account on ``base_url``, secrets in env vars SIM_KEY/SIM_SECRET."""
    lines = [f"{key} = {json.dumps(value)}" for key, value in extra.items()]
    path = tmp_path / "margin-monitor.toml"
    path.write_text(
        f"""
[daemon]
state_dir = "{tmp_path}"
log_format = "json"
http_listen = "127.0.0.1:0"  # any free port: tests run side by side

[[accounts]]
name = "demo"
exchange = "binanceusdm"
api_key_env = "SIM_KEY"
secret_env = "SIM_SECRET"
base_url = "{base_url}"
poll_interval_s = 0.5
{chr(10).join(lines)}
""",
        encoding="utf-8",
    )
    return path


def cli_env() -> dict[str, str]:
    """The environment with the demo account's key and secret."""
    return {**os.environ, "SIM_KEY": DEMO_API_KEY, "SIM_SECRET": DEMO_SECRET}


def test_run_stops_cleanly_on_sigterm(tmp_path: Path, sim_process: str) -> None:
    """``run`` logs JSON lines, then exits 0 within 5 s of SIGTERM, closing its clients; no secret logged."""
    config = write_config(tmp_path, sim_process)
    process = subprocess.Popen(
        [sys.executable, "-m", "monitor", "run", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(),
    )
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + 30
        first = None
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if '"account.assessed"' in line:
                first = json.loads(line)
                break
        assert first is not None, "no account.assessed line"
        sent = time.monotonic()
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=10)
        took = time.monotonic() - sent
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, err
    assert took < 5
    assert first["level"] == "ok"
    assert first["log_level"] == "info"
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    events = [line["event"] for line in lines]
    assert "daemon.stopped" in events  # (the lines before the first assessment were read above)
    # Alerts in flight were given their chance, then the dispatcher stopped; the HTTP server, which
    # outlives reloads, closes last.
    assert events[-2:] == ["dispatcher.stopped", "http.stopped"]
    assert DEMO_SECRET not in out + err


def test_status_command_prints_json(tmp_path: Path, sim_process: str) -> None:
    """``status --json`` prints one document per account on stdout."""
    config = write_config(tmp_path, sim_process)
    done = subprocess.run(
        [sys.executable, "-m", "monitor", "status", "--config", str(config), "--json"],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    (document,) = json.loads(done.stdout)
    assert document["account"] == "demo"
    assert document["level"] == "ok"


def test_check_config_reads_the_secrets(tmp_path: Path) -> None:
    """``check-config`` prints one line for a good file and exits 0."""
    config = write_config(tmp_path, "http://127.0.0.1:9")
    done = subprocess.run(
        [sys.executable, "-m", "monitor", "check-config", "--config", str(config)],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == 1
    assert "ok" in done.stdout


BAD_CONFIGS = [
    ("missing-key", 'name = "x"\n', "accounts[0].exchange"),
    ("unknown-exchange", 'name = "x"\nexchange = "ftx"\napi_key_env = "K"\nsecret_env = "S"\n', "ftx"),
    (
        "unset-env-var",
        'name = "x"\nexchange = "binanceusdm"\napi_key_env = "UNSET_KEY_VAR"\nsecret_env = "SIM_SECRET"\n',
        "UNSET_KEY_VAR",
    ),
]


@pytest.mark.parametrize(
    ("body", "names"), [case[1:] for case in BAD_CONFIGS], ids=[c[0] for c in BAD_CONFIGS]
)
@pytest.mark.parametrize("command", ["check-config", "run", "status"])
def test_bad_config_exits_2_with_one_line(tmp_path: Path, command: str, body: str, names: str) -> None:
    """Every command that reads a config refuses a bad one with exit 2 and one line naming the problem."""
    path = tmp_path / "bad.toml"
    path.write_text(f"[[accounts]]\n{body}", encoding="utf-8")
    env = {key: value for key, value in cli_env().items() if key != "UNSET_KEY_VAR"}
    done = subprocess.run(
        [sys.executable, "-m", "monitor", command, "--config", str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert done.stdout == ""
    (line,) = done.stderr.splitlines()
    assert str(path) in line
    assert names in line


def test_world_readable_secret_file_is_refused(tmp_path: Path) -> None:
    """A secret file others can read stops ``run`` before it starts, naming the file."""
    secret = tmp_path / "secret"
    secret.write_text(DEMO_SECRET, encoding="utf-8")
    secret.chmod(0o644)
    path = tmp_path / "bad.toml"
    path.write_text(
        '[[accounts]]\nname = "x"\nexchange = "binanceusdm"\n'
        f'api_key_env = "SIM_KEY"\nsecret_file = "{secret}"\n',
        encoding="utf-8",
    )
    done = subprocess.run(
        [sys.executable, "-m", "monitor", "run", "--config", str(path)],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    (line,) = done.stderr.splitlines()
    assert "secret_file" in line
    assert "chmod 600" in line
    assert DEMO_SECRET not in done.stderr


def test_demo_runs_the_crash_end_to_end(tmp_path: Path) -> None:
    """``demo``: no keys, no files; levels fall to liquidation and recover; each change is one alert."""
    done = subprocess.run(
        [sys.executable, "-m", "monitor", "demo", "--tick", "0.1", "--log-format", "json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    levels = [line["level"] for line in lines if line["event"] == "account.assessed"]
    assert collapse(levels) == [*LEVELS, *reversed(LEVELS[:-1])]
    # Fast falls, and the exchange's own margin calls from the user-data stream, come on top.
    extra = {"fast_fall", "margin_call"}
    alerts = [
        (line["kind"], line["level"])
        for line in lines
        if line["event"] == "alert" and line["kind"] not in extra
    ]
    assert ("margin_call", "margin_call") in [
        (line["kind"], line["level"]) for line in lines if line["event"] == "alert"
    ]
    assert alerts == [
        ("firing", "warning"),
        ("firing", "danger"),
        ("firing", "critical"),
        ("firing", "liquidation"),
        ("recovered", "critical"),
        ("recovered", "danger"),
        ("recovered", "warning"),
        ("recovered", "ok"),
    ]
    # The demo's one channel is the log: its alert lines are its deliveries, with no line about them.
    assert not [line for line in lines if line["event"] == "alert.delivered"]
    assert lines[-1]["event"] == "demo.finished"
    assert not [line for line in lines if line.get("log_level") == "error"]
    assert list(tmp_path.iterdir()) == []
