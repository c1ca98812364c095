"""The daemon in stream mode end to end: real ccxt and ccxt.pro over loopback against the simulator.

Wired as ``monitor.service.app`` wires it: ``Daemon(config, build_sources(...))``, the alert engine
attached where a test needs it, ``streams_for(...)`` around ``daemon.run(stop)``. Nothing is mocked:
the simulator pushes mark prices and user-data events on its websockets, serves REST, and computes
its own figures to hold the daemon's against. REST traffic is read from the simulator's request
counts, which is how a test tells a stream-driven assessment from a polled one.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import pytest
from monitor.alerts.model import Alert, AlertKind
from monitor.exchanges.client import Credentials, MarketCache, SharedSession
from monitor.service.alerting import Alerting, policy_from
from monitor.service.app import build_sources, demo_config, streams_for
from monitor.service.daemon import BLIND, Daemon
from monitor.sim import DEMO_API_KEY, DEMO_SECRET, SimServer, bulk_accounts
from monitor.sim.accounts import SimPosition, level_of
from structlog.testing import capture_logs

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, MutableMapping
    from pathlib import Path

    from monitor.config import Config
    from monitor.service.streaming import Streaming

CREDENTIALS = {"demo": Credentials(api_key=DEMO_API_KEY, secret=DEMO_SECRET)}
LEVELS = ["ok", "warning", "danger", "critical", "liquidation"]
ACCOUNT_PATH = "/fapi/v3/account"
LISTEN_KEY_PATH = "/fapi/v1/listenKey"
#: ccxt.pro spreads the per-symbol mark subscriptions over these connections (MARK_CONNECTIONS = 4).
MARKET_WS_PATHS = tuple(f"/market/ws/{n}" for n in range(4))
PUSH_S = 0.05
SOL = "SOL/USDT:USDT"

Logs = list["MutableMapping[str, Any]"]


class Collector:
    """The alert engine's submitter: keeps every alert it is given."""

    def __init__(self) -> None:
        self.alerts: list[Alert] = []

    async def submit(self, alert: Alert) -> None:
        """Keep ``alert``."""
        self.alerts.append(alert)

    def kinds(self) -> list[tuple[str, str]]:
        """(kind, level) of every alert, in order."""
        return [(alert.kind.value, alert.level) for alert in self.alerts]


@dataclass(slots=True)
class Watched:
    """A running daemon with its streams, on one simulator."""

    sim: SimServer
    daemon: Daemon
    streaming: Streaming

    def level(self) -> str:
        """The demo account's level now."""
        return self.daemon.accounts["demo"].level

    def ratio_pct(self) -> float | None:
        """The demo account's margin ratio now, in percent."""
        assessment = self.daemon.accounts["demo"].assessment
        if assessment is None or assessment.margin_ratio is None:
            return None
        return assessment.margin_ratio * 100

    def rest_reads(self) -> int:
        """Account reads the simulator has served (every poll reads ``/fapi/v3/account`` once)."""
        return self.sim.request_count(ACCOUNT_PATH)

    def matches_sim(self) -> bool:
        """Whether the daemon's ratio is the simulator's, within 0.1 point."""
        truth = self.sim.figures().margin_ratio
        ours = self.ratio_pct()
        return truth is not None and ours is not None and abs(ours - truth * 100) <= 0.1


def stream_config(sim: SimServer, tmp_path: Path, *, poll_interval_s: float, reconcile_s: float) -> Config:
    """The demo account on ``sim`` in stream mode."""
    config = demo_config(sim.base_url, sim.ws_url, poll_interval_s=poll_interval_s, state_dir=tmp_path)
    accounts = tuple(replace(account, mode="stream") for account in config.accounts)
    return replace(config, accounts=accounts, daemon=replace(config.daemon, reconcile_s=reconcile_s))


@contextlib.asynccontextmanager
async def watching(
    sim: SimServer,
    tmp_path: Path,
    *,
    poll_interval_s: float,
    reconcile_s: float,
    alerting: Collector | None = None,
) -> AsyncIterator[Watched]:
    """Run the daemon with its streams as ``run_daemon`` does; yield once the mark stream delivers.

    On exit: stop the daemon, wait for it, then close the streams (the simulator closes last).
    """
    config = stream_config(sim, tmp_path, poll_interval_s=poll_interval_s, reconcile_s=reconcile_s)
    engine = None if alerting is None else Alerting(policy_from(config.alerts), alerting, tmp_path)
    daemon = Daemon(config, build_sources(config, CREDENTIALS), alerting=engine)
    stop = asyncio.Event()
    async with streams_for(daemon, CREDENTIALS, config) as streaming:
        assert streaming is not None
        task = asyncio.create_task(daemon.run(stop), name="daemon")
        try:
            watched = Watched(sim, daemon, streaming)
            await until(lambda: streaming.healthy("demo") and streaming.ticks > 0, timeout_s=10)
            yield watched
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)


async def until(predicate: Callable[[], bool], timeout_s: float = 5.0) -> float:
    """Wait until ``predicate()`` holds (checked every 5 ms); return the seconds it took."""
    started = time.monotonic()
    async with asyncio.timeout(timeout_s):
        while not predicate():  # noqa: ASYNC110 - the daemon exposes state, not events, by design
            await asyncio.sleep(0.005)
    return time.monotonic() - started


def events_named(logs: Logs, event: str) -> Logs:
    """The captured log entries of ``event``."""
    return [entry for entry in logs if entry["event"] == event]


def collapse(levels: list[str]) -> list[str]:
    """``levels`` with repeats removed: the order in which they were visited."""
    return [level for i, level in enumerate(levels) if i == 0 or levels[i - 1] != level]


# --- 1. a crash, detected from the mark stream ----------------------------------------------------


@pytest.mark.asyncio
async def test_crash_is_detected_within_one_mark_tick_without_rest(tmp_path: Path) -> None:
    """Tick by tick through the crash, the level follows the marks from the stream alone.

    Polling every 30 s and reconciling every 30 s, the daemon would see nothing of a 4-second
    crash over REST. Each ``sim.step()`` moves the marks; the simulator pushes them every 50 ms.
    After every tick the daemon's ratio is the simulator's (within 0.1 point) and its level the
    simulator's level, so it visits ok -> warning -> danger -> critical -> liquidation in order;
    a level change shows up within one push interval plus scheduling slack of the simulator
    changing the mark (measured per change; generously bounded, the figure is the point), and
    ``/fapi/v3/account`` is not read once meanwhile: it was the stream.
    """
    async with SimServer(scenario="crash", tick_s=PUSH_S, mark_push_s=PUSH_S, autostart=False) as sim:
        with capture_logs() as logs:
            async with watching(sim, tmp_path, poll_interval_s=30.0, reconcile_s=30.0) as watched:
                assert watched.level() == "ok"
                rest_before = watched.rest_reads()
                levels = [watched.level()]
                latencies: list[float] = []
                while sim.step():
                    truth = sim.figures()
                    assert truth.margin_ratio is not None
                    expected = level_of(truth.margin_ratio).value
                    changes = expected != watched.level()
                    took = await until(watched.matches_sim, timeout_s=2.0)
                    if changes:
                        latencies.append(took)
                    assert watched.level() == expected
                    levels.append(watched.level())
                rest_after = watched.rest_reads()
    assert collapse(levels) == LEVELS
    assert rest_after == rest_before, "REST was read during the crash: the stream did not carry it"
    assert len(latencies) == len(LEVELS) - 1
    # One push interval plus scheduling; bounded far below the 30 s poll so a loaded machine passes.
    assert statistics.median(latencies) < PUSH_S + 0.25
    assert max(latencies) < 1.0
    streamed = [line for line in events_named(logs, "account.assessed") if line.get("feed") == "marks"]
    assert collapse([line["level"] for line in streamed]) == LEVELS
    assert not events_named(logs, "account.blind")


# --- 2. a dropped stream: fallback to polling, then back ------------------------------------------


async def quiet_reads(watched: Watched, *, quiet_s: float, timeout_s: float = 10.0) -> int:
    """The REST read count once ``quiet_s`` passed without a read (``timeout_s`` at most)."""
    async with asyncio.timeout(timeout_s):
        while True:
            reads = watched.rest_reads()
            await asyncio.sleep(quiet_s)
            if watched.rest_reads() == reads:
                return reads


@pytest.mark.asyncio
@pytest.mark.parametrize("which", ["market", "user"])
async def test_a_dropped_stream_falls_back_to_polling_and_recovers(tmp_path: Path, which: str) -> None:
    """While a stream is down REST is read every poll interval; once it is back, only to reconcile.

    The simulator drops the stream's websockets and refuses to let it back in: a 503 on the
    market websocket handshakes (``market``), or on the listen-key request the user-data stream
    must make before it reconnects (``user``). ``Streaming.healthy`` turns false at once, and the
    account's polls (every 0.4 s) read REST again: several reads in 1.2 s, where the healthy
    stream read none (reconciliation every 30 s). The account is never blind meanwhile. With the
    faults cleared the feed reconnects by itself and REST falls back to the reconcile pace.
    """
    async with SimServer(scenario="flat", tick_s=PUSH_S, mark_push_s=PUSH_S, autostart=False) as sim:
        with capture_logs() as logs:
            async with watching(sim, tmp_path, poll_interval_s=0.4, reconcile_s=30.0) as watched:
                streaming = watched.streaming
                await until(lambda: sim.user_streams() == 1 and streaming.healthy("demo"))
                # The polls before the streams were healthy, and the user stream's first read, done:
                before = await quiet_reads(watched, quiet_s=0.6)
                await asyncio.sleep(1.2)
                assert watched.rest_reads() == before  # healthy streams: REST waits for reconciliation

                paths = MARKET_WS_PATHS if which == "market" else (LISTEN_KEY_PATH,)
                for path in paths:
                    sim.faults.inject("http_503", count=100_000, path=path)
                assert await sim.drop_websockets(which) >= 1
                await until(lambda: not streaming.healthy("demo"))
                down = watched.rest_reads()
                await asyncio.sleep(1.2)
                assert watched.rest_reads() - down >= 2  # polling at the poll interval again
                assert not streaming.healthy("demo")
                assert watched.level() == "ok"

                sim.faults.clear()
                await until(lambda: streaming.healthy("demo"), timeout_s=15)
                # A poll already scheduled may still run, and a user stream back re-reads the
                # account once for what it missed: wait for a quiet poll interval, however slow
                # the machine (polling would read every 0.4 s and never be quiet this long).
                back = await quiet_reads(watched, quiet_s=0.6)
                await asyncio.sleep(1.2)
                assert watched.rest_reads() == back  # the reconcile pace again
                assert watched.level() == "ok"
    feed = "marks" if which == "market" else "user"
    assert [line for line in events_named(logs, "stream.dropped") if line["feed"] == feed]
    assert [line for line in events_named(logs, "stream.connect_failed") if line["feed"] == feed]
    assert len([line for line in events_named(logs, "stream.connected") if line["feed"] == feed]) == 2
    assert not events_named(logs, "account.blind")


# --- 3. a stalled stream: polling takes over, or, with REST down too, blind and back ---------------


@pytest.mark.asyncio
async def test_a_stalled_stream_alone_hands_over_to_rest_and_never_goes_blind(tmp_path: Path) -> None:
    """A mark stream that stays open but sends nothing: REST takes over before the data is stale.

    ``stall_websockets("market")`` keeps the connection open (so ``connected`` stays true) and stops
    the pushes. The feed counts as stale once no mark came for the account's poll interval (0.8 s;
    5 s when polling is slower): the account is polled again by its next scheduled poll, so its
    data is at most about two intervals old and the staleness bound (3 polls, 2.4 s) is never
    crossed. Once the pushes resume, REST goes back to the reconcile pace.
    """
    async with SimServer(scenario="flat", tick_s=PUSH_S, mark_push_s=PUSH_S, autostart=False) as sim:
        with capture_logs() as logs:
            async with watching(sim, tmp_path, poll_interval_s=0.8, reconcile_s=30.0) as watched:
                streaming = watched.streaming
                sim.stall_websockets("market")
                stalled = watched.rest_reads()
                await until(lambda: not streaming.healthy("demo"), timeout_s=3)
                await asyncio.sleep(2.4)
                assert watched.rest_reads() - stalled >= 2
                assert watched.level() == "ok"
                sim.unstall_websockets("market")
                await until(lambda: streaming.healthy("demo"), timeout_s=5)
                back = await quiet_reads(watched, quiet_s=1.0)  # a poll already scheduled may still run
                await asyncio.sleep(1.2)
                assert watched.rest_reads() == back
    assert not events_named(logs, "account.blind")
    assert watched.level() == "ok"


@pytest.mark.asyncio
async def test_a_stalled_stream_with_rest_down_turns_the_account_blind_and_back(tmp_path: Path) -> None:
    """Marks stalled and REST failing: blind within the staleness bound; the stream brings it back.

    The combination: ``stall_websockets("market")`` (the connection stays open, no marks arrive)
    and a 503 on every REST request (``faults.inject("http_503")`` without a path hits REST only,
    not the websocket handshakes). A stalled stream alone is not enough, REST would take over (the
    test above); REST down alone is not enough, the marks keep the account current. With both, no
    good reading arrives, and the staleness check turns the account ``blind`` once its last one is
    older than 3 polls (1.2 s), plus at most one staleness period (0.2 s). Then the pushes resume
    while REST still fails: the next mark tick recomputes from the live snapshot (its positions
    are recent enough to trust, ``reconcile_s`` being 30 s) and ``account.data_restored`` comes
    from the marks.
    """
    async with SimServer(scenario="flat", tick_s=PUSH_S, mark_push_s=PUSH_S, autostart=False) as sim:
        with capture_logs() as logs:
            async with watching(sim, tmp_path, poll_interval_s=0.4, reconcile_s=30.0) as watched:
                sim.faults.inject("http_503", count=100_000)
                sim.stall_websockets("market")
                stalled_at = time.monotonic()
                blind_after = await until(lambda: watched.level() == BLIND, timeout_s=5)
                assert time.monotonic() - stalled_at >= 1.2 - PUSH_S
                await asyncio.sleep(0.5)
                assert watched.level() == BLIND
                sim.unstall_websockets("market")
                restored_after = await until(lambda: watched.level() == "ok", timeout_s=5)
                assert sim.faults.armed  # REST is still down: the stream restored it
    assert blind_after < 1.2 + 0.2 + 0.5
    assert restored_after < 1.0
    (blind,) = events_named(logs, "account.blind")
    assert blind["last_error"] is not None
    failed = events_named(logs, "account.poll_failed")
    assert failed
    assert {line["error"] for line in failed} == {"TemporaryExchangeError"}
    (restored,) = events_named(logs, "account.data_restored")
    assert restored["feed"] == "marks"
    assert restored["level"] == "ok"


# --- 4. reconciliation repairs a missed event ------------------------------------------------------


@pytest.mark.asyncio
async def test_reconciliation_repairs_a_snapshot_that_missed_an_event(tmp_path: Path) -> None:
    """A position opened while the user stream lost its event is found by the next reconciliation.

    The user-data stream is stalled (open, silent) when the simulator's account opens a SOL long:
    its ``ACCOUNT_UPDATE`` is lost, and the marks keep recomputing the old two positions. The next
    REST reconciliation (``reconcile_s`` 1 s) logs ``account.resynced`` naming the new position,
    the live snapshot takes it, SOL joins the symbol index and the mark feed, and a SOL mark from
    the stream now moves the account's ratio, matching the simulator's, with no REST read.
    """
    async with SimServer(scenario="flat", tick_s=PUSH_S, mark_push_s=PUSH_S, autostart=False) as sim:
        with capture_logs() as logs:
            async with watching(sim, tmp_path, poll_interval_s=0.25, reconcile_s=1.0) as watched:
                streaming = watched.streaming
                await until(lambda: sim.user_streams() == 1)
                sim.stall_websockets("user")
                account = sim.accounts[DEMO_API_KEY]
                await sim.set_positions(
                    DEMO_API_KEY, [*account.positions, SimPosition("SOLUSDT", 200, 150.0)]
                )
                assert len(streaming.live["demo"].snapshot.positions) == 2  # the event was lost
                await until(lambda: bool(events_named(logs, "account.resynced")), timeout_s=5)
                live = streaming.live["demo"]
                assert SOL in live.symbols
                assert streaming.index[streaming.feed_key(watched.daemon.accounts["demo"])][SOL] == {"demo"}
                feed = next(iter(streaming.mark_feeds.values()))
                assert SOL in feed.symbols
                await until(watched.matches_sim)
                streaming.reconcile_s = 30.0  # repaired: no REST read from here on, only marks
                await asyncio.sleep(0.3)  # a poll already past its due check may still finish
                rest = watched.rest_reads()
                sim.set_mark("SOLUSDT", 100.0)
                await until(watched.matches_sim)
                assert watched.rest_reads() == rest
                assessment = watched.daemon.accounts["demo"].assessment
                assert assessment is not None
                assert len(assessment.positions) == 3
                sim.unstall_websockets("user")
    assert not [line for line in events_named(logs, "stream.event") if line["kind"] == "account_update"]
    (resynced,) = events_named(logs, "account.resynced")
    assert resynced["differences"] == {"positions": {f"{SOL}/long": [None, 200.0]}}


# --- 5. user-data events: an immediate re-read, and the exchange's margin call ----------------------


@pytest.mark.asyncio
async def test_account_update_rereads_at_once_and_margin_call_reaches_the_alert_engine(
    tmp_path: Path,
) -> None:
    """``ACCOUNT_UPDATE`` re-reads REST at once; ``MARGIN_CALL`` and streamed levels become alerts.

    Polling and reconciling every 30 s, a deposit (``set_wallet`` pushes ``ACCOUNT_UPDATE``) is
    read over REST well under a second later; a second change that lands while that read is in
    flight is read again after it, so the live snapshot ends with the last wallet. An event-driven
    re-read is expected to differ from the live snapshot, so it is not logged as a resync.
    Then the crash runs tick by tick: the levels the mark stream computes fire alerts through the
    engine, and when the simulator's ratio falls to 125% it sends ``MARGIN_CALL``, which reaches
    the engine as a ``margin_call`` alert (and the log as ``account.margin_call``), all without
    another REST read.
    """
    collector = Collector()
    async with SimServer(scenario="crash", tick_s=PUSH_S, mark_push_s=PUSH_S, autostart=False) as sim:
        with capture_logs() as logs:
            async with watching(
                sim, tmp_path, poll_interval_s=30.0, reconcile_s=30.0, alerting=collector
            ) as watched:
                await until(lambda: sim.user_streams() == 1)
                before = watched.rest_reads()
                await sim.set_wallet(DEMO_API_KEY, 5_500.0)
                reread_after = await until(lambda: watched.rest_reads() > before, timeout_s=2)
                # A second change while that re-read is in flight (its account read is served; its
                # position and mark reads are paced behind it) is read once more, not dropped.
                await sim.set_wallet(DEMO_API_KEY, 5_000.0)
                live = watched.streaming.live
                await until(
                    lambda: live["demo"].snapshot.wallet_balance == pytest.approx(5_000.0), timeout_s=2
                )
                await until(watched.matches_sim, timeout_s=2)
                assessment = watched.daemon.accounts["demo"].assessment
                assert assessment is not None
                assert assessment.margin_balance == pytest.approx(sim.figures().margin_balance, abs=0.5)
                rest = watched.rest_reads()
                while (ratio := sim.figures().margin_ratio) is not None and ratio > 1.2:
                    sim.step()
                    await until(watched.matches_sim, timeout_s=2)
                await until(lambda: AlertKind.MARGIN_CALL in {a.kind for a in collector.alerts}, timeout_s=2)
                assert watched.rest_reads() == rest
    assert reread_after < 1.0  # where the reconciliation would have waited 30 s
    assert not events_named(logs, "account.resynced")
    assert ("firing", "warning") in collector.kinds()
    assert ("firing", "danger") in collector.kinds()
    assert collector.kinds().index(("firing", "warning")) < collector.kinds().index(("firing", "danger"))
    (call,) = [alert for alert in collector.alerts if alert.kind is AlertKind.MARGIN_CALL]
    assert call.account == "demo"
    assert call.margin_ratio_pct is not None
    assert call.margin_ratio_pct < 130.0  # the ratio the stream had when the call came in
    (line,) = events_named(logs, "account.margin_call")
    assert line["account"] == "demo"
    kinds = [line["kind"] for line in events_named(logs, "stream.event")]
    assert kinds == ["account_update", "account_update", "margin_call"]


# --- 7. many user streams never starve REST of connections ------------------------------------------


@pytest.mark.asyncio
async def test_user_streams_do_not_take_the_rest_connection_pool(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """More streamed accounts than REST connections: every account is still read and assessed.

    Each user-data stream holds its websocket for hours. When they came from the same pool as the
    REST requests, 256 streams took every connection and no account was ever read (found by the
    1,000-account benchmark). Here the pool is 2 connections and 5 accounts stream: all 5 are
    assessed, with one ccxt client an account (the feed borrows the account's).
    """
    monkeypatch.setattr(SharedSession, "CONNECTION_LIMIT", 2)
    accounts = bulk_accounts(5, positions=2)
    credentials = {a.name: Credentials(api_key=a.api_key, secret=a.secret) for a in accounts}
    async with SimServer(accounts=accounts, autostart=False, mark_push_s=PUSH_S) as sim:
        base = demo_config(sim.base_url, sim.ws_url, poll_interval_s=30.0, state_dir=tmp_path)
        template = replace(base.accounts[0], mode="stream")
        config = replace(base, accounts=tuple(replace(template, name=a.name) for a in accounts))
        markets = MarketCache()
        daemon = Daemon(config, build_sources(config, credentials, markets))
        stop = asyncio.Event()
        async with streams_for(daemon, credentials, config, markets) as streaming:
            assert streaming is not None
            task = asyncio.create_task(daemon.run(stop), name="daemon")
            try:
                await until(
                    lambda: (
                        all(state.assessment is not None for state in daemon.accounts.values())
                        and all(feed.connected for feed in streaming.user_feeds.values())
                    ),
                    timeout_s=15.0,
                )
                borrowed = [
                    feed._handle is daemon.accounts[name].source.handle  # type: ignore[attr-defined]  # noqa: SLF001
                    for name, feed in streaming.user_feeds.items()
                ]
            finally:
                stop.set()
                await asyncio.wait_for(task, 10)
    assert len(streaming.user_feeds) == len(accounts)
    assert all(borrowed)
    assert sim.request_count(LISTEN_KEY_PATH) >= len(accounts)
