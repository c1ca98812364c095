"""The daemon's poll loop: canonical lines, failures that never escape, backoff, staleness, drift.

These tests drive the daemon with a scripted ``AccountSource`` (the project's own interface, not a
stand-in for ccxt) and an injected clock, so every timing is exact. The same daemon against ccxt
and the simulated exchange is in ``test_daemon_e2e.py``.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from typing import TYPE_CHECKING

import pytest
from monitor.config import load_config
from monitor.errors import ClockSkewError, PayloadError, RateLimitedError, TemporaryExchangeError
from monitor.exchanges.base import FetchedAccount
from monitor.risk import AccountSnapshot, Position, ReportedFigures, Side, TierSpec, TierTable
from monitor.service.daemon import BLIND, DRIFT_POLLS, UNKNOWN, Daemon
from structlog.testing import capture_logs

if TYPE_CHECKING:
    from pathlib import Path

    from monitor.config import Config

TIERS = TierTable.build([TierSpec(0, 1e6, 0.01), TierSpec(1e6, 1e9, 0.02)])


def snapshot(wallet: float, mark: float = 100.0, reported: ReportedFigures | None = None) -> AccountSnapshot:
    """One long of 1,000 units at entry 100: MM = 1,000 * mark * 1%."""
    position = Position("BTC/USDT:USDT", Side.LONG, 1_000, 100.0, mark, TIERS)
    return AccountSnapshot(wallet, (position,), reported)


class ScriptedSource:
    """An AccountSource that returns (or raises) what the test queued, and counts calls."""

    exchange_id = "binanceusdm"

    def __init__(self, name: str, *script: AccountSnapshot | Exception) -> None:
        self.name = name
        self.script: deque[AccountSnapshot | Exception] = deque(script)
        self.fetches = 0
        self.closed = 0
        self.tier_refreshes = 0
        self.resyncs = 0
        self.hang = False

    async def fetch(self) -> FetchedAccount:
        """The next scripted step; the last one repeats."""
        self.fetches += 1
        if self.hang:
            await asyncio.sleep(3600)
        step = self.script[0] if len(self.script) == 1 else self.script.popleft()
        if isinstance(step, Exception):
            raise step
        return FetchedAccount(step, requests=3)

    async def refresh_tiers(self) -> None:
        """Count the refresh."""
        self.tier_refreshes += 1

    async def resync_clock(self) -> None:
        """Count the resync."""
        self.resyncs += 1

    async def close(self) -> None:
        """Count the close."""
        self.closed += 1


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        """The current reading."""
        return self.now


def make_config(tmp_path: Path, *, poll_interval_s: float = 10, accounts: int = 1) -> Config:
    """A config of ``accounts`` Binance accounts (credentials are not resolved here)."""
    stanzas = "\n".join(
        f"""
[[accounts]]
name = "acct{i}"
exchange = "binanceusdm"
api_key_env = "KEY"
secret_env = "SECRET"
poll_interval_s = {poll_interval_s}
drift_tolerance_pct = 0.5
"""
        for i in range(accounts)
    )
    path = tmp_path / "config.toml"
    path.write_text(f"[daemon]\nstate_dir = '{tmp_path}'\n{stanzas}", encoding="utf-8")
    return load_config(path)


def no_jitter(low: float, high: float) -> float:
    """Always the longest delay, so backoff times are exact."""
    del low
    return high


@pytest.mark.asyncio
async def test_a_good_poll_logs_one_canonical_line(tmp_path: Path) -> None:
    """A poll logs one ``account.assessed`` line with the ratio, level and figures."""
    source = ScriptedSource("acct0", snapshot(wallet=1_500.0))
    daemon = Daemon(make_config(tmp_path), {"acct0": source})
    with capture_logs() as logs:
        assessment = await daemon.poll("acct0")
    assert assessment is not None
    (line,) = logs
    assert line["event"] == "account.assessed"
    assert line["account"] == "acct0"
    assert line["exchange"] == "binanceusdm"
    assert line["margin_ratio_pct"] == pytest.approx(150.0)
    assert line["level"] == "warning"
    assert line["maintenance_margin"] == pytest.approx(1_000.0)
    assert line["positions"] == 1
    assert line["latency_ms"] >= 0
    assert daemon.accounts["acct0"].level == "warning"


@pytest.mark.asyncio
async def test_failures_are_logged_and_never_raised(tmp_path: Path) -> None:
    """Exchange errors, garbage payloads and adapter bugs each end in a log line, not an exception."""
    source = ScriptedSource(
        "acct0",
        TemporaryExchangeError("503 Service Unavailable"),
        PayloadError("positionRisk[0].markPrice", "not a number: ''"),
        ZeroDivisionError("adapter bug"),
        snapshot(wallet=2_000.0),
    )
    clock = Clock()
    daemon = Daemon(make_config(tmp_path), {"acct0": source}, clock=clock, jitter=no_jitter)
    with capture_logs() as logs:
        for _ in range(4):
            await daemon.poll("acct0")
            clock.now += 100  # past any backoff
    events = [line["event"] for line in logs]
    assert events == [
        "account.poll_failed",
        "account.poll_failed",
        "account.poll_crashed",
        "account.poll_failed",
        "account.assessed",
    ]
    assert logs[1]["field"] == "positionRisk[0].markPrice"
    assert source.tier_refreshes == 1  # a payload error re-reads the brackets
    assert logs[3]["error"] == "ZeroDivisionError"
    assert daemon.accounts["acct0"].failures == 0


@pytest.mark.asyncio
async def test_consecutive_failures_back_off(tmp_path: Path) -> None:
    """After the second failure in a row, polls are skipped for a growing, capped delay."""
    source = ScriptedSource("acct0", TemporaryExchangeError("timeout"))
    clock = Clock()
    daemon = Daemon(make_config(tmp_path), {"acct0": source}, clock=clock, jitter=no_jitter)
    with capture_logs() as logs:
        await daemon.poll("acct0")  # first failure: no backoff, the next poll may retry at once
        await daemon.poll("acct0")  # second: back off 2 s
        await daemon.poll("acct0")  # skipped
        clock.now += 2.01
        await daemon.poll("acct0")  # third: back off 4 s
    assert source.fetches == 3
    assert [line.get("backoff_s") for line in logs] == [None, 2.0, 4.0]


@pytest.mark.asyncio
async def test_rate_limit_waits_as_long_as_the_exchange_asks(tmp_path: Path) -> None:
    """A 429 with Retry-After: 30 keeps the account from polling for 30 s."""
    source = ScriptedSource("acct0", RateLimitedError("429", retry_after=30.0), snapshot(wallet=2_000.0))
    clock = Clock()
    daemon = Daemon(make_config(tmp_path), {"acct0": source}, clock=clock, jitter=no_jitter)
    with capture_logs() as logs:
        await daemon.poll("acct0")
        clock.now += 29
        await daemon.poll("acct0")
        clock.now += 1.5
        await daemon.poll("acct0")
    assert source.fetches == 2
    assert logs[0]["retry_after_s"] == 30.0
    assert logs[-1]["event"] == "account.assessed"


@pytest.mark.asyncio
async def test_clock_skew_resyncs_the_source(tmp_path: Path) -> None:
    """A timestamp error (Binance -1021) makes the source resync its clock."""
    source = ScriptedSource("acct0", ClockSkewError("-1021"), snapshot(wallet=2_000.0))
    daemon = Daemon(make_config(tmp_path), {"acct0": source})
    with capture_logs() as logs:
        await daemon.poll("acct0")
    assert source.resyncs == 1
    assert [line["event"] for line in logs] == ["account.clock_resynced", "account.poll_failed"]


@pytest.mark.asyncio
async def test_a_hanging_fetch_times_out(tmp_path: Path) -> None:
    """A fetch that never answers ends as a failed poll, within the poll's timeout."""
    source = ScriptedSource("acct0", snapshot(wallet=2_000.0))
    source.hang = True
    daemon = Daemon(make_config(tmp_path, poll_interval_s=0.05), {"acct0": source}, poll_timeout_s=0.05)
    with capture_logs() as logs:
        assert await daemon.poll("acct0") is None
    assert logs[0]["error"] == "timeout"


@pytest.mark.asyncio
async def test_stale_data_turns_the_account_blind_once(tmp_path: Path) -> None:
    """Past 3 poll intervals without a good reading the account is blind (said once); good data clears it."""
    source = ScriptedSource("acct0", snapshot(wallet=2_000.0), TemporaryExchangeError("down"))
    clock = Clock()
    daemon = Daemon(make_config(tmp_path), {"acct0": source}, clock=clock, jitter=no_jitter)
    with capture_logs() as logs:
        await daemon.poll("acct0")
        clock.now += 29
        assert daemon.check_staleness() == []
        clock.now += 2
        assert daemon.check_staleness() == ["acct0"]
        assert daemon.check_staleness() == ["acct0"]
    blind = [line for line in logs if line["event"] == "account.blind"]
    assert len(blind) == 1
    assert blind[0]["level"] == BLIND
    assert daemon.accounts["acct0"].level == BLIND
    source.script = deque([snapshot(wallet=2_000.0)])
    clock.now += 1_000
    with capture_logs() as logs:
        await daemon.poll("acct0")
        assert daemon.check_staleness() == []
    assert [line["event"] for line in logs] == ["account.assessed", "account.data_restored"]
    assert daemon.accounts["acct0"].level == "ok"


@pytest.mark.asyncio
async def test_an_account_never_assessed_goes_blind(tmp_path: Path) -> None:
    """An account that never answers is reported blind, not silently unknown forever."""
    source = ScriptedSource("acct0", TemporaryExchangeError("down"))
    clock = Clock()
    daemon = Daemon(make_config(tmp_path), {"acct0": source}, clock=clock)
    assert daemon.accounts["acct0"].level == UNKNOWN
    clock.now += 31
    with capture_logs() as logs:
        daemon.check_staleness()
    assert logs[0]["event"] == "account.blind"
    assert logs[0]["never_assessed"] is True


@pytest.mark.asyncio
async def test_drift_warns_once_until_it_clears(tmp_path: Path) -> None:
    """A drift above the tolerance warns once, and says when it clears."""
    off = ReportedFigures(maintenance_margin=990.0)  # ours is 1,000: 1.01% drift
    on = ReportedFigures(maintenance_margin=1_000.0)
    source = ScriptedSource("acct0", snapshot(2_000.0, reported=off))
    daemon = Daemon(make_config(tmp_path), {"acct0": source})
    with capture_logs() as logs:
        for _ in range(DRIFT_POLLS + 2):
            await daemon.poll("acct0")
        source.script = deque([snapshot(2_000.0, reported=on)])
        await daemon.poll("acct0")
    events = [line["event"] for line in logs]
    assert events.count("account.drift") == 1
    assert events.index("account.drift") == DRIFT_POLLS  # after the DRIFT_POLLS-th assessed line
    assert events[-1] == "account.drift_cleared"
    assert logs[0]["drift_pct"] == pytest.approx(1.0101, rel=1e-3)


@pytest.mark.asyncio
async def test_a_passing_drift_is_not_reported(tmp_path: Path) -> None:
    """A drift that lasts fewer than DRIFT_POLLS polls (a mark moving mid-read) stays quiet."""
    off = ReportedFigures(maintenance_margin=990.0)
    on = ReportedFigures(maintenance_margin=1_000.0)
    steps = [snapshot(2_000.0, reported=off)] * (DRIFT_POLLS - 1) + [snapshot(2_000.0, reported=on)]
    source = ScriptedSource("acct0", *steps, *steps)
    daemon = Daemon(make_config(tmp_path), {"acct0": source})
    with capture_logs() as logs:
        for _ in range(2 * DRIFT_POLLS):
            await daemon.poll("acct0")
    assert {line["event"] for line in logs} == {"account.assessed"}


@pytest.mark.asyncio
async def test_run_polls_on_schedule_and_closes_every_source(tmp_path: Path) -> None:
    """``run`` polls each account at start and on its interval, and closes every source when stopped."""
    sources = {f"acct{i}": ScriptedSource(f"acct{i}", snapshot(wallet=2_000.0)) for i in range(2)}
    daemon = Daemon(make_config(tmp_path, poll_interval_s=0.05, accounts=2), sources)
    stop = asyncio.Event()
    with capture_logs() as logs:
        task = asyncio.create_task(daemon.run(stop))
        await asyncio.sleep(0.4)
        stop.set()
        await asyncio.wait_for(task, 5)
    assert all(source.fetches >= 3 for source in sources.values())
    assert all(source.closed == 1 for source in sources.values())
    assert logs[0]["event"] == "daemon.started"
    assert logs[-1]["event"] == "daemon.stopped"


@pytest.mark.asyncio
async def test_polls_are_spread_over_the_interval(tmp_path: Path) -> None:
    """Ten accounts' first scheduled polls fall a tenth of the interval apart, the last one interval in.

    Polled together, a thousand accounts' answers are parsed back to back with the loop held, and
    an alert found meanwhile waits for all of them.
    """
    sources = {f"acct{i}": ScriptedSource(f"acct{i}", snapshot(wallet=2_000.0)) for i in range(10)}
    daemon = Daemon(make_config(tmp_path, poll_interval_s=20.0, accounts=10), sources)
    scheduler = daemon.start()
    try:
        firsts = sorted(
            job.next_run_time.timestamp() for job in scheduler.get_jobs() if job.id.startswith("poll:")
        )
    finally:
        scheduler.shutdown(wait=False)
    gaps = [later - earlier for earlier, later in itertools.pairwise(firsts)]
    assert gaps == pytest.approx([2.0] * 9, abs=0.01)
    assert firsts[-1] - time.time() == pytest.approx(20.0, abs=0.5)


# --- the hooks the metrics read, and freshness for /healthz ---------------------------------------


@pytest.mark.asyncio
async def test_unfresh_names_each_account_and_why_without_changing_state(tmp_path: Path) -> None:
    """Never assessed, then fresh, then stale (before the staleness job runs), then blind; age follows."""
    clock = Clock()
    source = ScriptedSource("acct0", snapshot(wallet=1_500.0))
    daemon = Daemon(make_config(tmp_path, poll_interval_s=10), {"acct0": source}, clock=clock)
    assert daemon.unfresh() == {"acct0": "never assessed"}
    assert daemon.age_s("acct0") is None
    await daemon.poll("acct0")
    clock.now += 5
    assert daemon.unfresh() == {}
    assert daemon.age_s("acct0") == pytest.approx(5)
    clock.now += 30
    assert daemon.unfresh() == {"acct0": "stale"}
    assert daemon.accounts["acct0"].level == "warning"  # reading never turns an account blind
    daemon.check_staleness()
    assert daemon.unfresh() == {"acct0": BLIND}


@pytest.mark.asyncio
async def test_poll_and_feed_listeners_hear_every_read_and_a_broken_one_is_logged(tmp_path: Path) -> None:
    """Each read reports its result and duration, a good one stamps ``rest``; a raising listener is logged."""
    source = ScriptedSource(
        "acct0", snapshot(wallet=1_500.0), RateLimitedError("429"), RuntimeError("bug"), snapshot(1_500.0)
    )
    daemon = Daemon(make_config(tmp_path), {"acct0": source}, jitter=lambda low, _high: low)
    polls: list[tuple[str, str, str]] = []
    feeds: list[tuple[str, str]] = []

    def polled(account: str, exchange: str, result: str, seconds: float) -> None:
        assert seconds >= 0
        polls.append((account, exchange, result))

    daemon.poll_listeners.append(polled)
    daemon.feed_listeners.append(lambda account, feed: feeds.append((account, feed)))

    def broken(*_: object) -> None:
        raise ValueError

    daemon.poll_listeners.append(broken)
    daemon.feed_listeners.append(broken)
    with capture_logs() as logs:
        for _ in range(3):
            await daemon.poll("acct0")
            daemon.accounts["acct0"].backoff_until = 0
    assert polls == [
        ("acct0", "binanceusdm", "ok"),
        ("acct0", "binanceusdm", "rate_limited"),
        ("acct0", "binanceusdm", "crashed"),
    ]
    assert feeds == [("acct0", "rest")]
    assert len([line for line in logs if line["event"] == "daemon.listener_failed"]) == 4
    assert daemon.accounts["acct0"].drift is None  # the scripted snapshot reports no exchange figures


@pytest.mark.asyncio
async def test_shutdown_abandons_a_hung_poll_without_a_traceback(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A poll still hanging after ``CLOSE_TIMEOUT_S`` is abandoned with one line, not a scheduler error."""
    source = ScriptedSource("acct0", snapshot(wallet=2_000.0))
    daemon = Daemon(make_config(tmp_path, poll_interval_s=0.05), {"acct0": source}, poll_timeout_s=60)
    stop = asyncio.Event()
    with capture_logs() as logs:
        task = asyncio.create_task(daemon.run(stop))
        await asyncio.sleep(0.2)
        source.hang = True  # the next scheduled poll waits on an exchange that never answers
        await asyncio.sleep(0.2)
        stop.set()
        await asyncio.wait_for(task, 10)
    assert "account.poll_abandoned" in [line["event"] for line in logs]
    assert logs[-1]["event"] == "daemon.stopped"
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]
