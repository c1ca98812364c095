"""The mark-price and user-data feeds, with real ccxt.pro and aiohttp against the simulator on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING, Any

import pytest
import pytest_asyncio
from monitor.errors import ConfigError
from monitor.exchanges.client import ClientSettings, Credentials, MarketCache
from monitor.exchanges.streams import MarkFeed, UserEvent, UserFeed, supported
from monitor.sim import DEMO_API_KEY, DEMO_SECRET, SimServer
from monitor.sim.scenarios import ScenarioPlayer
from structlog.testing import capture_logs

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Mapping, MutableMapping

BTC = "BTC/USDT:USDT"
ETH = "ETH/USDT:USDT"
SOL = "SOL/USDT:USDT"
PUSH_S = 0.05


class Marks:
    """Collects ``on_marks`` calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[dict[str, float], float]] = []
        self.latest: dict[str, float] = {}

    def __call__(self, marks: Mapping[str, float], received_at: float) -> None:
        """Record one update."""
        self.calls.append((dict(marks), received_at))
        self.latest.update(marks)

    def seen(self) -> set[str]:
        """Every symbol delivered so far."""
        return {symbol for marks, _ in self.calls for symbol in marks}


async def until(predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Wait until ``predicate()`` holds (checked every 5 ms)."""
    async with asyncio.timeout(timeout_s):
        while not predicate():  # noqa: ASYNC110 - the feeds expose state, not events, by design
            await asyncio.sleep(0.005)


async def until_mark(marks: Marks, symbol: str, price: float) -> None:
    """Wait until ``symbol``'s latest delivered mark is ``price``."""
    await until(lambda: marks.latest.get(symbol) == pytest.approx(price))


@contextlib.asynccontextmanager
async def running(feed: MarkFeed | UserFeed) -> AsyncIterator[asyncio.Task[None]]:
    """Run ``feed`` as a named task; cancel it and close the feed afterwards."""
    task = asyncio.create_task(feed.run(), name="feed-under-test")
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await feed.close()
        await feed.close()  # a second close does nothing


@pytest_asyncio.fixture
async def sim() -> AsyncIterator[SimServer]:
    """A simulator pushing marks every 50 ms, the scenario moved only by ``step()``."""
    async with SimServer(scenario="flat", tick_s=PUSH_S, mark_push_s=PUSH_S, autostart=False) as server:
        yield server


def public(sim: SimServer) -> ClientSettings:
    """The simulator as a public (credential-free) exchange."""
    return ClientSettings("binanceusdm", base_url=sim.base_url, ws_url=sim.ws_url)


def private(sim: SimServer) -> ClientSettings:
    """The simulator's demo account."""
    return ClientSettings(
        "binanceusdm",
        credentials=Credentials(api_key=DEMO_API_KEY, secret=DEMO_SECRET),
        base_url=sim.base_url,
        ws_url=sim.ws_url,
    )


def events_named(logs: list[MutableMapping[str, Any]], event: str) -> list[MutableMapping[str, Any]]:
    """The captured log entries of ``event``."""
    return [entry for entry in logs if entry["event"] == event]


# --- marks ----------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_marks_arrive_for_subscribed_symbols_and_follow_the_sim(sim: SimServer) -> None:
    """Only the subscribed symbols arrive, at the simulator's marks, and follow set_mark."""
    marks = Marks()
    feed = MarkFeed(public(sim), marks)
    feed.set_symbols({BTC, ETH})
    with capture_logs() as logs:
        async with running(feed):
            await until(lambda: marks.seen() == {BTC, ETH})
            assert marks.latest[BTC] == pytest.approx(60_000.0)
            assert feed.connected
            assert not feed.is_stale(time.monotonic())
            sim.set_mark("BTCUSDT", 58_000.0)
            await until_mark(marks, BTC, 58_000.0)
    assert marks.seen() == {BTC, ETH}
    assert all(at > 0 for _, at in marks.calls)
    connected = events_named(logs, "stream.connected")
    assert len(connected) == 1
    assert connected[0]["feed"] == "marks"
    assert connected[0]["exchange"] == "binanceusdm"


@pytest.mark.asyncio
async def test_set_symbols_adds_a_symbol_on_the_running_feed(sim: SimServer) -> None:
    """A symbol added at run time starts arriving without a reconnect; a removed one stops."""
    marks = Marks()
    feed = MarkFeed(public(sim), marks)
    async with running(feed):
        await asyncio.sleep(2 * PUSH_S)
        assert marks.calls == []  # nothing to watch yet
        assert not feed.is_stale(time.monotonic() + 60)  # and so nothing is late
        feed.set_symbols({BTC})
        await until(lambda: BTC in marks.seen())
        feed.set_symbols({BTC, SOL})
        await until(lambda: SOL in marks.seen())
        feed.set_symbols({SOL})
        await asyncio.sleep(2 * PUSH_S)
        marks.calls.clear()
        await until(lambda: len(marks.calls) >= 3)
        assert marks.seen() == {SOL}
        assert feed.connects == 1


@pytest.mark.asyncio
async def test_crash_moves_arrive_within_one_push_interval() -> None:
    """Every tick of the crash scenario reaches on_marks within one mark push (plus scheduling slack)."""
    async with SimServer(scenario="crash", tick_s=PUSH_S, mark_push_s=PUSH_S, autostart=False) as crash:
        marks = Marks()
        feed = MarkFeed(public(crash), marks)
        feed.set_symbols({BTC, ETH})
        async with running(feed):
            await until(lambda: marks.seen() == {BTC, ETH})
            latencies = []
            for _ in range(10):
                crash.step()
                stepped = time.monotonic()
                await until_mark(marks, BTC, crash.marks["BTCUSDT"])
                latencies.append(time.monotonic() - stepped)
        assert crash.marks["BTCUSDT"] < 60_000.0
        # One push interval at most, plus a generous allowance for a loaded test machine.
        assert max(latencies) < PUSH_S + 0.25, latencies


@pytest.mark.asyncio
async def test_dropped_stream_is_noticed_and_the_feed_recovers(sim: SimServer) -> None:
    """A server-side drop: connected goes False, stream.dropped is logged, the feed reconnects by itself."""
    marks = Marks()
    cache = MarketCache()
    feed = MarkFeed(public(sim), marks, markets=cache, backoff_initial_s=0.4, backoff_cap_s=0.4)
    feed.set_symbols({ETH})
    with capture_logs() as logs:
        async with running(feed):
            await until(lambda: feed.connected)
            assert await sim.drop_websockets("market") >= 1
            await until(lambda: not feed.connected)
            sim.set_mark("ETHUSDT", 2_500.0)
            await until(lambda: feed.connected and marks.latest[ETH] == pytest.approx(2_500.0))
            assert sim.market_streams() >= 1
    assert feed.connects == 2
    assert cache.loads(public(sim).market_key) == 1  # the reconnect reused the shared markets
    assert sim.request_count("/fapi/v1/exchangeInfo") == 1
    dropped = events_named(logs, "stream.dropped")
    assert len(dropped) == 1
    assert dropped[0]["feed"] == "marks"
    assert "reason" in dropped[0]
    assert len(events_named(logs, "stream.reconnecting")) == 1
    assert 0.2 <= events_named(logs, "stream.reconnecting")[0]["delay_s"] <= 0.4
    assert len(events_named(logs, "stream.connected")) == 2


@pytest.mark.asyncio
async def test_stalled_stream_turns_stale_and_back(sim: SimServer) -> None:
    """Pushes stop with the connection open: stale after stale_after_s; fresh again once they resume."""
    marks = Marks()
    feed = MarkFeed(public(sim), marks, stale_after_s=0.3, idle_timeout_s=10.0)
    feed.set_symbols({BTC})
    async with running(feed):
        await until(lambda: feed.connected)
        sim.stall_websockets("market")
        stalled_at = time.monotonic()
        await until(lambda: feed.is_stale(time.monotonic()))
        assert time.monotonic() - stalled_at >= 0.3 - PUSH_S
        sim.unstall_websockets("market")
        await until(lambda: not feed.is_stale(time.monotonic()))
        assert feed.connected
        assert feed.connects == 1


@pytest.mark.asyncio
async def test_silent_connection_is_dropped_after_the_idle_timeout(sim: SimServer) -> None:
    """A connection that stays silent past idle_timeout_s is dropped and dialled again."""
    marks = Marks()
    feed = MarkFeed(public(sim), marks, stale_after_s=0.1, backoff_initial_s=0.05, backoff_cap_s=0.05)
    feed.set_symbols({BTC})
    with capture_logs() as logs:
        async with running(feed):
            await until(lambda: feed.connected)
            sim.stall_websockets("market")
            await until(lambda: not feed.connected)
            sim.unstall_websockets("market")
            await until(lambda: feed.connected and not feed.is_stale(time.monotonic()))
    assert feed.idle_timeout_s == pytest.approx(0.3)
    assert events_named(logs, "stream.dropped")[0]["reason"] == "no update for 0.3s"
    assert feed.connects == 2


# --- user data ------------------------------------------------------------------------------------


class Events:
    """Collects ``on_event`` calls."""

    def __init__(self) -> None:
        self.events: list[UserEvent] = []

    def __call__(self, event: UserEvent) -> None:
        """Record one event."""
        self.events.append(event)

    def kinds(self) -> list[str]:
        """The kinds received, in order."""
        return [event.kind for event in self.events]

    def of(self, kind: str) -> list[UserEvent]:
        """The events of ``kind``."""
        return [event for event in self.events if event.kind == kind]


def test_user_streams_are_supported_for_binance_usdm_only() -> None:
    """UserFeed reads Binance USDⓈ-M; another exchange is a configuration error."""
    assert supported("binanceusdm")
    assert not supported("bybit")
    with pytest.raises(ConfigError):
        UserFeed("bybit-acct", ClientSettings("bybit"), Events())


@pytest.mark.asyncio
async def test_wallet_and_position_changes_arrive_as_account_updates(sim: SimServer) -> None:
    """set_wallet and set_positions each produce an account_update with the raw ACCOUNT_UPDATE."""
    events = Events()
    feed = UserFeed("demo", private(sim), events)
    async with running(feed):
        await until(lambda: feed.connected and sim.user_streams(DEMO_API_KEY) > 0)
        await sim.set_wallet(DEMO_API_KEY, 7_500.0)
        await until(lambda: len(events.of("account_update")) == 1)
        await sim.set_positions(DEMO_API_KEY, sim.accounts[DEMO_API_KEY].positions[:1])
        await until(lambda: len(events.of("account_update")) == 2)
    first, second = events.of("account_update")
    assert first.payload["e"] == "ACCOUNT_UPDATE"
    assert first.payload["a"]["B"][0]["cw"] == "7500.00000000"
    assert len(second.payload["a"]["P"]) == 1
    assert not feed.is_stale(first.received_at)


@pytest.mark.asyncio
async def test_margin_call_arrives_when_the_ratio_falls(sim: SimServer) -> None:
    """Driving the demo account below the margin-call ratio produces a margin_call with its figures."""
    events = Events()
    feed = UserFeed("demo", private(sim), events)
    sim.player = ScenarioPlayer("crash", sim.accounts[DEMO_API_KEY], sim.marks)
    async with running(feed):
        await until(lambda: sim.user_streams(DEMO_API_KEY) > 0)
        for _ in range(40):
            sim.step()
        await until(lambda: len(events.of("margin_call")) == 1)
    payload = events.of("margin_call")[0].payload
    assert payload["e"] == "MARGIN_CALL"
    assert float(payload["cw"]) > 0
    assert {row["s"] for row in payload["p"]} == {"BTCUSDT", "ETHUSDT"}
    assert all(float(row["mm"]) > 0 for row in payload["p"])


@pytest.mark.asyncio
async def test_listen_key_expiry_is_renewed_and_no_secret_is_logged(sim: SimServer) -> None:
    """listenKeyExpired: an expired event, a new key, a new connection, later events still arrive.

    Neither listen key, the API key nor the secret appears in any log line.
    """
    events = Events()
    feed = UserFeed("demo", private(sim), events, backoff_initial_s=0.05)
    with capture_logs() as logs:
        async with running(feed):
            await until(lambda: feed.connected and sim.user_streams(DEMO_API_KEY) > 0)
            old_key = sim.listen_keys.open(DEMO_API_KEY)  # the live key, as Binance answers a second POST
            await sim.expire_listen_key(DEMO_API_KEY)
            await until(lambda: events.kinds() == ["expired"])
            await until(lambda: feed.connects == 2 and sim.user_streams(DEMO_API_KEY) > 0)
            new_key = sim.listen_keys.open(DEMO_API_KEY)
            await sim.set_wallet(DEMO_API_KEY, 9_000.0)
            await until(lambda: events.kinds() == ["expired", "account_update"])
            await sim.drop_websockets("user")  # a drop that is not an expiry: backoff, then back
            await until(lambda: feed.connects == 3)
    assert old_key != new_key
    assert feed.renewals == 1
    assert events.events[0].payload["e"] == "listenKeyExpired"
    assert events.events[0].payload["listenKey"] == "***"
    reconnecting = events_named(logs, "stream.reconnecting")
    assert [entry["renew_key"] for entry in reconnecting] == [True, False]
    assert reconnecting[0]["delay_s"] == 0.0
    assert {entry["account"] for entry in logs if entry.get("feed") == "user"} == {"demo"}
    text = repr(logs)
    for secret in (old_key, new_key, DEMO_API_KEY, DEMO_SECRET):
        assert secret not in text


@pytest.mark.asyncio
async def test_quiet_user_stream_stays_fresh_on_pongs(sim: SimServer) -> None:
    """An account with no events is not stale: the feed's pings are answered and count as a heartbeat."""
    feed = UserFeed("demo", private(sim), Events(), ping_interval_s=0.05, stale_after_s=0.3)
    async with running(feed):
        await until(lambda: feed.connected)
        started = time.monotonic()
        await asyncio.sleep(0.5)
        assert not feed.is_stale(time.monotonic())
        assert feed.last_message_at is not None
        assert feed.last_message_at > started
