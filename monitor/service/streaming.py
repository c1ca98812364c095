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
from monitor.risk.engine import assess
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

#: Accounts recomputed between two yields to the event loop within one tick, those whose threshold
#: prices the tick passes first: the alerts of those already done are stored (and new messages
#: read) before the rest are computed, so a crossing account waits for a few dozen others, not for
#: a thousand.
RECOMPUTE_SLICE = 8

#: Accounts a tick takes across a threshold are recomputed together, up to this many between two
#: yields, so their alerts are stored in one commit and sent in one window.
URGENT_SLICE = 32

#: How long a tick waits for the alerts of the accounts it took across a threshold to be stored
#: before it recomputes the rest (they are normally stored within milliseconds).
URGENT_WAIT_S = 0.5


@dataclass(slots=True)
class _Live:
    """One streamed account: its REST snapshot and when it was taken."""

    snapshot: AccountSnapshot
    taken_at: float
    #: When REST is to be read again to reconcile (the first time spread over the accounts).
    reconcile_at: float
    symbols: frozenset[str] = field(default_factory=frozenset)
    last_logged_at: float = 0.0
    #: Symbol -> the nearest marks below and above the current one at which the account (or an
    #: isolated position) reaches a threshold or 100%, the other marks held, from the last
    #: assessment (``None`` before the first).
    edges: dict[str, tuple[float, float]] | None = None

    def crosses(self, marks: Mapping[str, float]) -> bool:
        """Whether these marks pass one of the account's threshold prices (or it was never assessed).

        Two comparisons a symbol, so a tick can put its crossing accounts first among a thousand.
        """
        if self.edges is None:
            return True
        for symbol, mark in marks.items():
            edges = self.edges.get(symbol)
            if edges is not None and not edges[0] < mark < edges[1]:
                return True
        return False


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
        self._phase = spread(self.streamed)
        self._tasks: list[asyncio.Task[None]] = []
        self._refreshing: set[str] = set()
        self._again: set[str] = set()
        #: Event-driven re-reads in flight (forgotten when done: one per ACCOUNT_UPDATE, for days).
        self._refreshes: set[asyncio.Task[None]] = set()
        self.ticks = 0
        self._pending_marks: dict[FeedKey, dict[str, float]] = {}
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
        """Recompute the accounts the pending marks touch, those they take across a threshold first.

        One applier at a time, so an account never sees an older mark after a newer one. Marks that
        arrive while it works join the work at the next slice: an account not yet recomputed takes
        the newer marks with the older, and the order is drawn again, so a crossing that arrives
        during a tick of a thousand accounts waits for one slice, not for the rest of the tick.
        """
        try:
            work: dict[str, dict[str, float]] = {}
            order: list[str] = []
            urgent: set[str] = set()
            alerting: list[asyncio.Task[Any]] = []
            while self._pending_marks or order:
                if self._pending_marks:
                    self._take_pending(work)
                    urgent = {name for name in work if self.live[name].crosses(work[name])}
                    order = [*urgent, *(name for name in work if name not in urgent)]
                size = _leading(order, urgent, URGENT_SLICE) or RECOMPUTE_SLICE
                for name in order[:size]:
                    task = self._recompute(name, work.pop(name))
                    if name in urgent and task is not None:
                        alerting.append(task)
                del order[:size]
                if alerting and not (order and order[0] in urgent):
                    # The crossing accounts are done: their alerts are stored before the rest.
                    await asyncio.wait(alerting, timeout=URGENT_WAIT_S)
                    alerting.clear()
                elif order or self._pending_marks:
                    await asyncio.sleep(0)
        except Exception:  # a crashed applier is a bug; the next tick starts a new one
            log.exception("stream.apply_failed")
        finally:
            self._applier = None

    def _take_pending(self, work: dict[str, dict[str, float]]) -> None:
        """Move the pending marks into ``work``: per affected account, the marks of its symbols."""
        batches, self._pending_marks = self._pending_marks, {}
        for key, marks in batches.items():
            held = self.index.get(key)
            if not held:
                continue
            for symbol, price in marks.items():
                for name in held.get(symbol, ()):
                    if name in self.live:
                        work.setdefault(name, {})[symbol] = price

    def _recompute(self, name: str, marks: Mapping[str, float]) -> asyncio.Task[Any] | None:
        live = self.live.get(name)
        if live is None:
            return None
        try:
            now = self._clock()
            live.snapshot = live.snapshot.with_marks({s: p for s, p in marks.items() if s in live.symbols})
            self.ticks += 1
            assessment = assess(live.snapshot, self.daemon.thresholds)
            live.edges = _edges(assessment)
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


def _leading(order: list[str], members: set[str], most: int) -> int:
    """How many of the first ``most`` names of ``order`` are in ``members`` before the first that is not."""
    count = 0
    for name in order[:most]:
        if name not in members:
            break
        count += 1
    return count


def _edges(assessment: Assessment) -> dict[str, tuple[float, float]]:
    """Per symbol, the nearest threshold prices below and above its mark (``_Live.crosses``)."""
    edges: dict[str, tuple[float, float]] = {}
    for item in assessment.positions:
        mark = item.position.mark_price
        below, above = edges.get(item.position.symbol, (-math.inf, math.inf))
        for price in (item.liquidation_price, *item.threshold_prices):
            if price is None or price <= 0:
                continue
            if price <= mark:
                below = max(below, price)
            else:
                above = min(above, price)
        edges[item.position.symbol] = (below, above)
    return edges


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
