"""Real-time: mark-price ticks recompute the accounts that hold the symbol; user events refresh them.

The daemon keeps each account's last REST snapshot (positions, wallet, tiers). A mark price tick from
the exchange's public stream replaces the marks of that symbol in every snapshot that holds it and
runs the assessment again at once, through the same alert engine; an account-update event from the
user-data stream re-reads the account over REST; a margin call goes to the alert engine.

REST stays the ground truth: in stream mode each account is still read every ``reconcile_s``
(a difference between the live snapshot and REST is logged as ``account.resynced``), and while the
mark stream is down or stale (no mark for the account's poll interval), or its user-data stream is
down, the account falls back to polling at its own interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog

from monitor.exchanges.client import ClientHandle, ClientSettings, Credentials, MarketCache
from monitor.exchanges.streams import MarkFeed, UserEvent, UserFeed, supported
from monitor.risk.engine import Book
from monitor.service.daemon import spread

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from monitor.exchanges.client import Credentials as AccountCredentials
    from monitor.risk.model import AccountSnapshot, Assessment
    from monitor.service.daemon import AccountState, Daemon

log = structlog.get_logger("margin_monitor.streaming")

#: How often an account in stream mode is still read over REST to repair a missed event.
DEFAULT_RECONCILE_S = 60.0

#: A REST snapshot older than this many reconcile periods no longer vouches for the positions.
SNAPSHOT_TRUST_PERIODS = 2.0

FeedKey = tuple[str, str | None, str | None, bool]

#: How long closing every feed may take on shutdown.
CLOSE_TIMEOUT_S = 2.0

#: Mark updates arriving this close together are applied in one recompute per account: Binance
#: pushes each symbol's mark as its own message, and an account holding five symbols should be
#: assessed once a tick, not five times.
COALESCE_S = 0.002

#: Accounts whose figures are computed between two yields to the event loop (a few microseconds
#: each): a tick first computes every touched account's figures and handles at once those whose
#: level they change (their alerts are stored before anything else), then the rest. Small, so
#: the alerts being sent (a few turns of the loop each) are not held back by the sweep.
FIGURES_SLICE = 10

#: Accounts handed to the daemon (state, listeners, alert engine) between two yields in a tick's
#: second pass, so alerts being delivered and new marks are not held back by a thousand accounts.
HANDLE_SLICE = 10

#: The most accounts whose level changed a tick handles before it waits for their alerts to be
#: stored (a crash that takes a thousand accounts across a threshold commits them in batches).
URGENT_BATCH = 50

#: How long a tick waits for the alerts of the accounts it changed the level of to be stored
#: before it handles the rest (they are normally stored within milliseconds).
URGENT_WAIT_S = 0.5


@dataclass(slots=True)
class _Live:
    """One streamed account: its REST snapshot, when it was taken, and the marks it has seen since."""

    snapshot: AccountSnapshot
    taken_at: float
    #: When REST is to be read again to reconcile (the first time spread over the accounts).
    reconcile_at: float
    symbols: frozenset[str] = field(default_factory=frozenset)
    last_logged_at: float = 0.0
    #: The newest mark of each symbol the stream brought since the snapshot.
    marks: dict[str, float] = field(default_factory=dict)
    #: How far (in ratio) the last figures were from the nearest level boundary: a tick computes
    #: the nearest accounts first.
    nearness: float = 0.0
    book: Book = field(init=False)

    def __post_init__(self) -> None:
        self.book = Book(self.snapshot)


class Streaming:
    """Owns the feeds, the symbol index and the live snapshots of the accounts in stream mode."""

    def __init__(
        self,
        daemon: Daemon,
        credentials: Mapping[str, AccountCredentials],
        *,
        reconcile_s: float = DEFAULT_RECONCILE_S,
        clock: Callable[[], float] = time.monotonic,
        mark_stale_after_s: float = 5.0,
        markets: MarketCache | None = None,
    ) -> None:
        self.daemon = daemon
        self._markets = markets
        self.reconcile_s = reconcile_s
        self._clock = clock
        self._mark_stale_after_s = mark_stale_after_s
        self._credentials = credentials
        self.live: dict[str, _Live] = {}
        self.index: dict[FeedKey, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
        self.mark_feeds: dict[FeedKey, MarkFeed] = {}
        self.user_feeds: dict[str, UserFeed] = {}
        self.streamed = {name for name, state in daemon.accounts.items() if self._wants_stream(state)}
        ratios = (1.0, *daemon.thresholds)
        band = daemon.alerting.policy.hysteresis if daemon.alerting is not None else 0.0
        #: The ratios at which a level starts or (past the hysteresis) ends.
        self._boundaries = tuple(sorted({*ratios, *(ratio + band for ratio in ratios)}))
        self._phase = spread(self.streamed)
        self._tasks: list[asyncio.Task[None]] = []
        self._refreshing: set[str] = set()
        self._again: set[str] = set()
        #: Event-driven re-reads in flight (forgotten when done: one per ACCOUNT_UPDATE, for days).
        self._refreshes: set[asyncio.Task[None]] = set()
        self.ticks = 0
        self._pending_marks: dict[FeedKey, dict[str, float]] = {}
        #: Accounts whose figures a tick computed and whose handling waits for the second pass.
        self._later: dict[str, Assessment] = {}
        self._flush_handle: asyncio.TimerHandle | None = None
        self._applier: asyncio.Task[None] | None = None

    def _wants_stream(self, state: AccountState) -> bool:
        mode = state.config.mode
        return mode == "stream" or (mode == "auto" and supported(state.config.exchange))

    @staticmethod
    def feed_key(state: AccountState) -> FeedKey:
        """Accounts with the same key share one public mark feed."""
        config = state.config
        return (config.exchange, config.base_url, config.ws_url, config.sandbox)

    # --- lifecycle --------------------------------------------------------------------------------

    def start(self) -> None:
        """Create the feeds of every streamed account and run them as named tasks."""
        for name in sorted(self.streamed):
            state = self.daemon.accounts[name]
            key = self.feed_key(state)
            if key not in self.mark_feeds:
                public = ClientSettings(
                    exchange_id=state.config.exchange,
                    base_url=state.config.base_url,
                    ws_url=state.config.ws_url,
                    sandbox=state.config.sandbox,
                )
                feed = MarkFeed(
                    public,
                    self._mark_handler(key),
                    stale_after_s=self._mark_stale_after_s,
                    markets=self._markets,
                )
                self.mark_feeds[key] = feed
                self._tasks.append(asyncio.create_task(feed.run(), name=f"marks:{state.config.exchange}"))
            if not supported(state.config.exchange):
                continue  # marks stream; account changes wait for the REST reconciliation
            private = ClientSettings(
                exchange_id=state.config.exchange,
                credentials=self._credentials.get(name, Credentials()),
                base_url=state.config.base_url,
                ws_url=state.config.ws_url,
                sandbox=state.config.sandbox,
            )
            shared = None if self._markets is None else self._markets.session
            # The listen-key calls go through the account's own REST client where it has one.
            handle = getattr(state.source, "handle", None)
            user = UserFeed(
                name,
                private,
                self._user_handler(name),
                shared=shared,
                handle=handle if isinstance(handle, ClientHandle) else None,
            )
            self.user_feeds[name] = user
            self._tasks.append(asyncio.create_task(user.run(), name=f"user:{name}"))
        self.daemon.streaming = self
        log.info("streams.started", accounts=len(self.streamed), mark_feeds=len(self.mark_feeds))

    async def close(self) -> None:
        """Stop every feed and close its client."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        tasks = [*self._tasks, *self._refreshes, *([self._applier] if self._applier is not None else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        feeds: list[MarkFeed | UserFeed] = [*self.mark_feeds.values(), *self.user_feeds.values()]
        # Together and bounded: ccxt's close pauses a quarter of a second per client, and SIGTERM
        # must end the daemon within 5 s whatever the number of accounts.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await asyncio.gather(*(feed.close() for feed in feeds), return_exceptions=True)

    def _mark_handler(self, key: FeedKey) -> Callable[[Mapping[str, float], float], None]:
        def handle(marks: Mapping[str, float], received_at: float) -> None:
            self.on_marks(key, marks, received_at)

        return handle

    def _user_handler(self, name: str) -> Callable[[UserEvent], None]:
        def handle(event: UserEvent) -> None:
            self.on_user_event(name, event)

        return handle

    # --- the daemon's hooks -----------------------------------------------------------------------

    def healthy(self, name: str) -> bool:
        """Whether ``name`` is kept current by its streams (so REST may wait for reconciliation).

        The mark feed must be connected and have delivered within ``mark_stale_after_s`` or the
        account's poll interval, whichever is shorter: a stream silent for a whole poll interval
        does worse than polling, and handing over later would let the data age past the staleness
        bound (``stale_after_polls`` intervals) and turn the account blind while REST is fine. The
        account's user-data feed, where it has one, must be connected too, or a position opened
        meanwhile would wait for the reconciliation.
        """
        if name not in self.streamed:
            return False
        state = self.daemon.accounts[name]
        feed = self.mark_feeds.get(self.feed_key(state))
        if feed is None or not feed.connected or feed.last_message_at is None:
            return False
        bound = min(self._mark_stale_after_s, state.config.poll_interval_s)
        if self._clock() - feed.last_message_at > bound:
            return False
        user = self.user_feeds.get(name)
        return user is None or user.connected

    def poll_due(self, name: str) -> bool:
        """Whether the REST poll of ``name`` should run now (always, unless its streams are healthy)."""
        if not self.healthy(name):
            return True
        live = self.live.get(name)
        return live is None or self._clock() >= live.reconcile_at

    def on_snapshot(self, name: str, snapshot: AccountSnapshot, *, reconcile: bool = True) -> None:
        """A REST snapshot arrived: reconcile with the live one, re-index, re-subscribe.

        ``reconcile=False``: a re-read a user-data event asked for, which is expected to differ
        from the live snapshot; only a reconciliation that finds a difference is a resync.
        """
        if name not in self.streamed:
            return
        now = self._clock()
        previous = self.live.get(name)
        if previous is not None and reconcile:
            differences = _differences(previous.snapshot, snapshot)
            if differences:
                log.info("account.resynced", account=name, differences=differences)
        symbols = snapshot.symbols()
        key = self.feed_key(self.daemon.accounts[name])
        held = self.index[key]
        old = previous.symbols if previous is not None else frozenset()
        for symbol in old - symbols:
            held[symbol].discard(name)
            if not held[symbol]:
                del held[symbol]
        for symbol in symbols:
            held[symbol].add(name)
        if previous is None:
            # A thousand accounts read at start would otherwise reconcile together every period,
            # seconds of parsing with the loop held; the first comes after half to one period.
            reconcile_at = now + self.reconcile_s * (0.5 + 0.5 * self._phase.get(name, 1.0))
        else:
            reconcile_at = now + self.reconcile_s
        self.live[name] = _Live(
            snapshot, now, reconcile_at, symbols, previous.last_logged_at if previous else 0.0
        )
        self._later.pop(name, None)  # figures of the old snapshot must not follow the new one
        feed = self.mark_feeds.get(key)
        if feed is not None and symbols - old:
            feed.set_symbols(set(held))

    def on_marks(self, key: FeedKey, marks: Mapping[str, float], received_at: float) -> None:
        """A mark price tick: recompute, a moment later, every account that holds one of these symbols."""
        del received_at
        pending = self._pending_marks.setdefault(key, {})
        pending.update(marks)
        if self._flush_handle is None and self._applier is None:
            self._flush_handle = asyncio.get_running_loop().call_later(COALESCE_S, self._flush)

    def _flush(self) -> None:
        self._flush_handle = None
        self._applier = asyncio.get_running_loop().create_task(self._apply(), name="marks:apply")

    async def _apply(self) -> None:
        """Recompute the accounts the pending marks touch; those whose level they change first.

        One applier at a time, so an account never sees an older mark after a newer one. Each round
        takes the pending marks into the accounts' own, computes the figures of every account they
        touch (``Book``: microseconds, no prices solved), hands at once those whose level changes
        to the daemon and waits for their alerts to be stored, then hands over the rest in slices.
        Marks that arrive meanwhile start the next round at the next slice: an account still
        waiting is computed again with them, and a crossing waits for one slice, not a thousand.
        """
        try:
            remaining: list[str] = []
            while self._pending_marks or remaining or self._later:
                if self._pending_marks or remaining:
                    touched = dict.fromkeys([*remaining, *self._take_pending()])
                    remaining = await self._first_pass(list(touched))
                    continue
                for _ in range(HANDLE_SLICE):
                    if not self._later:
                        break
                    self._handle(*self._later.popitem())
                if self._later or self._pending_marks:
                    await asyncio.sleep(0)
        except Exception:  # a crashed applier is a bug; the next tick starts a new one
            log.exception("stream.apply_failed")
        finally:
            self._applier = None

    async def _first_pass(self, touched: list[str]) -> list[str]:
        """Figures for ``touched``, nearest a boundary first; those not reached when new marks came.

        The accounts a tick takes across a boundary are nearly always among the nearest, so their
        alerts are stored after a slice or two, not after a thousand accounts. Marks arriving
        meanwhile end the pass at the next slice: the accounts not yet computed join the next one.
        """
        touched.sort(key=self._nearness)
        alerting: list[asyncio.Task[Any]] = []
        calm = False  # whether the slice had an account whose level holds
        for count, name in enumerate(touched, 1):
            self._later.pop(name, None)  # figures from older marks: these replace them
            assessment = self._figures(name)
            if assessment is not None and self.daemon.moves(name, assessment):
                task = self._handle(name, assessment)
                if task is not None:
                    alerting.append(task)
            else:
                calm = True
                if assessment is not None:
                    self._later[name] = assessment
            last = count == len(touched)
            if count % FIGURES_SLICE and not last:
                continue
            if alerting and (calm or last or len(alerting) >= URGENT_BATCH or self._pending_marks):
                # Their alerts are stored before the rest: one commit for the whole run of them.
                await asyncio.wait(alerting, timeout=URGENT_WAIT_S)
                alerting.clear()
            elif not last:
                await asyncio.sleep(0)
            if self._pending_marks and not last:
                return touched[count:]
            calm = False
        return []

    def _nearness(self, name: str) -> float:
        live = self.live.get(name)
        return math.inf if live is None else live.nearness

    def _take_pending(self) -> list[str]:
        """Move the pending marks into the accounts that hold their symbols; those accounts."""
        batches, self._pending_marks = self._pending_marks, {}
        touched: dict[str, None] = {}
        for key, marks in batches.items():
            held = self.index.get(key)
            if not held:
                continue
            for symbol, price in marks.items():
                for name in held.get(symbol, ()):
                    live = self.live.get(name)
                    if live is not None:
                        live.marks[symbol] = price
                        touched[name] = None
        return list(touched)

    def _figures(self, name: str) -> Assessment | None:
        live = self.live.get(name)
        if live is None:
            return None
        self.ticks += 1
        try:
            assessment = live.book.assess(live.marks, self.daemon.thresholds)
        except Exception:  # one account's bad data must not stop the others' recomputes
            log.exception("stream.assess_failed", account=name)
            return None
        nearness = _distance(assessment.margin_ratio, self._boundaries)
        for figures in assessment.isolated():
            nearness = min(nearness, _distance(figures.margin_ratio, self._boundaries))
        live.nearness = nearness
        return assessment

    def _handle(self, name: str, assessment: Assessment) -> asyncio.Task[Any] | None:
        live = self.live.get(name)
        if live is None:
            return None
        try:
            now = self._clock()
            trusted = now - live.taken_at <= self.reconcile_s * SNAPSHOT_TRUST_PERIODS
            canonical = now - live.last_logged_at >= self.daemon.accounts[name].config.poll_interval_s
            if canonical:
                live.last_logged_at = now
            return self.daemon.stream_assessed(name, assessment, fresh=trusted, log_line=canonical)
        except Exception:  # one account's bad data must not stop the others' recomputes
            log.exception("stream.assess_failed", account=name)
            return None

    def on_user_event(self, name: str, event: UserEvent) -> None:
        """The user-data stream: re-read the account on an update, pass a margin call on."""
        self.daemon.fed(name, "user")
        if event.kind in {"account_update", "expired"}:
            if name in self._refreshing:
                # The read in flight may have left before this change: read once more after it.
                self._again.add(name)
            else:
                self._refreshing.add(name)
                task = asyncio.get_running_loop().create_task(self._refresh(name), name=f"refresh:{name}")
                self._refreshes.add(task)
                task.add_done_callback(self._refreshes.discard)
        elif event.kind == "margin_call":
            self.daemon.margin_call(name, _ratio_of(event.payload))

    async def _refresh(self, name: str) -> None:
        try:
            while True:
                self._again.discard(name)
                await self.daemon.poll(name, force=True)
                if name not in self._again:
                    break
        finally:
            self._refreshing.discard(name)
            self._again.discard(name)


def _distance(ratio: float | None, boundaries: tuple[float, ...]) -> float:
    """How far ``ratio`` is from the nearest of ``boundaries`` (infinite without a ratio)."""
    if ratio is None:
        return math.inf
    return min(abs(ratio - boundary) for boundary in boundaries)


def _differences(live: AccountSnapshot, rest: AccountSnapshot) -> dict[str, Any]:
    """What REST says differently from the live snapshot (positions and wallet; marks move anyway)."""

    def sizes(snapshot: AccountSnapshot) -> dict[str, float]:
        return {f"{p.symbol}/{p.side.value}": p.contracts for p in snapshot.positions if p.contracts}

    found: dict[str, Any] = {}
    if abs(live.wallet_balance - rest.wallet_balance) > 1e-9 * max(1.0, abs(rest.wallet_balance)):
        found["wallet_balance"] = [live.wallet_balance, rest.wallet_balance]
    before, after = sizes(live), sizes(rest)
    if before != after:
        found["positions"] = {
            key: [before.get(key), after.get(key)]
            for key in sorted(before.keys() | after.keys())
            if before.get(key) != after.get(key)
        }
    return found


def _ratio_of(payload: Mapping[str, Any]) -> float | None:
    """Binance's MARGIN_CALL carries positions and the cross wallet, not our ratio; leave it to the engine."""
    del payload
    return None
