"""The polling daemon: one scheduled poll per account, the risk engine, canonical log lines, staleness.

Every account is polled by an APScheduler interval job (jittered, never overlapping, coalesced when
late). A poll fetches the account through its ``AccountSource``, assesses it with the pure engine,
and logs one canonical ``account.assessed`` line. A poll that fails logs ``account.poll_failed``
and backs off (capped and jittered, or as long as the exchange's ``Retry-After`` says); it never
raises into the scheduler. A staleness check, run on its own schedule, turns an account whose last
good assessment is too old ``blind`` and says so; the next good poll clears it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import random
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import structlog
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from monitor.errors import (
    ClockSkewError,
    ExchangeError,
    OperationalExchangeError,
    PayloadError,
    RateLimitedError,
    TemporaryExchangeError,
)
from monitor.risk.engine import assess

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine, Iterable, Mapping

    from monitor.alerts.model import Alert
    from monitor.config import AccountConfig, Config
    from monitor.exchanges.base import AccountSource, FetchedAccount
    from monitor.risk.model import Assessment
    from monitor.service.alerting import Alerting
    from monitor.service.streaming import Streaming

#: The level an account has before its first assessment, and while its data is too old to trust.
UNKNOWN = "unknown"
BLIND = "blind"

#: Backoff after consecutive failures: base * 2**n seconds, capped, with full jitter on top half.
BACKOFF_BASE_S = 1.0
BACKOFF_CAP_S = 60.0

#: Polls in a row with a drift above tolerance before it is reported. REST reads of totals, positions
#: and marks are a few milliseconds apart, and a mark that moves between them is not a formula drift.
DRIFT_POLLS = 3

#: How long closing every client may take on shutdown (SIGTERM must end the process within 5 s).
CLOSE_TIMEOUT_S = 3.0

log = structlog.get_logger("margin_monitor.daemon")


@dataclass(slots=True)
class AccountState:
    """What the daemon knows of one account between polls (mutable; owned by the daemon)."""

    config: AccountConfig
    source: AccountSource
    last_good: float | None = None
    assessment: Assessment | None = None
    level: str = UNKNOWN
    blind: bool = False
    failures: int = 0
    backoff_until: float = 0.0
    drift_warned: bool = False
    #: The last REST read's drift (stream recomputes move the marks, not the exchange's own figures).
    drift: float | None = None
    drifting: int = 0
    polls: int = 0
    errors: int = 0
    last_error: str | None = None
    started: float = field(default_factory=time.monotonic)

    @property
    def name(self) -> str:
        """The account's configured name."""
        return self.config.name


class Daemon:
    """Polls every configured account and logs what the risk engine makes of it."""

    def __init__(
        self,
        config: Config,
        sources: Mapping[str, AccountSource],
        *,
        clock: Callable[[], float] = time.monotonic,
        jitter: Callable[[float, float], float] = random.uniform,
        poll_timeout_s: float | None = None,
        alerting: Alerting | None = None,
    ) -> None:
        self.config = config
        self.thresholds = tuple(value / 100 for value in config.alerts.thresholds_pct)
        self.accounts = {
            account.name: AccountState(account, sources[account.name], started=clock())
            for account in config.accounts
        }
        self._clock = clock
        self._jitter = jitter
        self._poll_timeout_s = poll_timeout_s
        self._in_flight: set[asyncio.Task[Any]] = set()
        self.alerting = alerting
        #: Called with (account, exchange, assessment) after each good poll (the MQTT state topic).
        self.listeners: list[Callable[[str, str, Assessment], None]] = []
        #: Called with (account, exchange, result, seconds) after each REST read, good or not; result
        #: is ``poll_result``'s (the metrics count reads by result and time them).
        self.poll_listeners: list[Callable[[str, str, str, float], None]] = []
        #: Called with (account, feed) when a feed brought news of the account: "rest" (a good poll),
        #: "marks" (a recompute from a mark tick) or "user" (a user-data event).
        self.feed_listeners: list[Callable[[str, str], None]] = []
        #: Set by ``Streaming.start``: mark ticks recompute accounts between their REST reads.
        self.streaming: Streaming | None = None
        self._scheduler: AsyncIOScheduler | None = None
        self._pending: set[asyncio.Task[None]] = set()
        #: Completed staleness checks (the systemd watchdog pings only when this moved).
        self.beats = 0
        #: The longest gap allowed between two beats (half the watchdog's ping period), or None.
        self.heartbeat_s: float | None = None
        self._stopping = False

    # --- one poll -------------------------------------------------------------------------------

    async def poll(self, name: str, *, force: bool = False) -> Assessment | None:  # noqa: PLR0911 - one return a way a poll ends
        """Fetch and assess one account; log the result. Never raises (a crashed loop is a bug).

        An account kept current by healthy streams is read only when reconciliation is due, unless
        ``force`` (a user-data event said it changed).
        """
        state = self.accounts[name]
        now = self._clock()
        if now < state.backoff_until:
            return None
        if not force and self.streaming is not None and not self.streaming.poll_due(name):
            return None
        started = time.perf_counter()
        state.polls += 1
        current = asyncio.current_task()
        if current is not None:
            # Shutdown waits for polls in flight before closing their clients under them.
            self._in_flight.add(current)
            current.add_done_callback(self._in_flight.discard)
        try:
            async with asyncio.timeout(self._poll_timeout(state)):
                fetched = await state.source.fetch()
            assessment = assess(fetched.snapshot, self.thresholds)
        except ExchangeError as exc:
            self._polled(state, poll_result(exc), started)
            await self._failed(state, exc)
            return None
        except TimeoutError:
            self._polled(state, "timeout", started)
            await self._failed(state, None, reason="timeout")
            return None
        except asyncio.CancelledError:
            if not self._stopping:
                raise
            # Shutdown abandons a poll still waiting on a hung exchange after CLOSE_TIMEOUT_S: the
            # scheduler would log the cancellation as a crash, with a traceback. Nothing to retry.
            log.info("account.poll_abandoned", account=name, reason="shutdown")
            return None
        except Exception as exc:
            log.exception("account.poll_crashed", account=name, exchange=state.config.exchange)
            self._polled(state, "crashed", started)
            await self._failed(state, None, reason=type(exc).__name__)
            return None
        self._polled(state, "ok", started)
        self.fed(name, "rest")
        self._assessed(state, fetched, assessment, latency_ms=(time.perf_counter() - started) * 1000)
        if self.streaming is not None:
            self.streaming.on_snapshot(name, fetched.snapshot, reconcile=not force)
        await self._after_assessment(state, assessment)
        return assessment

    def moves(self, name: str, assessment: Assessment) -> bool:
        """Whether ``assessment`` changes ``name``'s level or an alert key's: a tick handles these first."""
        state = self.accounts[name]
        if state.blind or assessment.worst_level.value != state.level:
            return True
        return self.alerting is not None and self.alerting.moves(name, assessment)

    def stream_assessed(
        self, name: str, assessment: Assessment, *, fresh: bool, log_line: bool
    ) -> asyncio.Task[Any] | None:
        """An assessment recomputed from a mark tick; alerts go out through the same engine.

        Returns the task that stores the alerts it raised, if any (a tick awaits those of the
        accounts it took across a threshold before recomputing the rest).

        ``fresh``: the positions behind it are recent enough to count as a good reading (staleness).
        ``log_line``: write the canonical line (streams tick every second; the log need not).
        """
        state = self.accounts[name]
        previous = state.level
        state.assessment = assessment
        self.fed(name, "marks")
        if fresh:
            was_blind = state.blind
            state.last_good = self._clock()
            state.blind = False
            if was_blind:
                log.info(
                    "account.data_restored", account=name, level=assessment.worst_level.value, feed="marks"
                )
        if not state.blind:
            state.level = assessment.worst_level.value
        if log_line or state.level != previous:
            ratio = assessment.margin_ratio
            log.info(
                "account.assessed",
                account=name,
                exchange=state.config.exchange,
                margin_ratio_pct=None if ratio is None else round(ratio * 100, 4),
                level=state.level,
                margin_balance=assessment.margin_balance,
                maintenance_margin=assessment.maintenance_margin,
                drift_pct=None,
                positions=assessment.position_count,
                feed="marks",
            )
        self._tell_listeners(state, assessment)
        if self.alerting is None:
            return None
        try:
            raised = self.alerting.evaluate(name, state.config.exchange, assessment)
        except Exception:
            log.exception("alerts.failed", account=name)
            return None
        if not raised:
            self.alerting.save_soon()
            return None
        return self._spawn(self._submit(self.alerting, name, raised), f"alerts:{name}")

    def margin_call(self, name: str, margin_ratio: float | None) -> None:
        """The exchange's own margin call for ``name`` (from its user-data stream)."""
        state = self.accounts[name]
        log.warning("account.margin_call", account=name, exchange=state.config.exchange)
        if self.alerting is not None:
            ratio = (
                margin_ratio
                if margin_ratio is not None
                else (state.assessment.margin_ratio if state.assessment else None)
            )
            self._spawn(self.alerting.margin_call(name, state.config.exchange, ratio), f"margin-call:{name}")

    def fed(self, name: str, feed: str) -> None:
        """Tell the feed listeners that ``feed`` brought news of ``name`` (they must not raise)."""
        for listener in self.feed_listeners:
            try:
                listener(name, feed)
            except Exception:
                log.exception("daemon.listener_failed", account=name)

    def _polled(self, state: AccountState, result: str, started: float) -> None:
        seconds = time.perf_counter() - started
        for listener in self.poll_listeners:
            try:
                listener(state.name, state.config.exchange, result, seconds)
            except Exception:
                log.exception("daemon.listener_failed", account=state.name)

    def _spawn(self, work: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        # Kept until done so the task is not garbage-collected mid-flight; failures are logged inside.
        task = asyncio.get_running_loop().create_task(work, name=name)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        return task

    async def _after_assessment(self, state: AccountState, assessment: Assessment) -> None:
        self._tell_listeners(state, assessment)
        if self.alerting is not None:
            try:
                await self.alerting.assessed(state.name, state.config.exchange, assessment)
            except Exception:
                log.exception("alerts.failed", account=state.name)

    def _tell_listeners(self, state: AccountState, assessment: Assessment) -> None:
        for listener in self.listeners:
            try:
                listener(state.name, state.config.exchange, assessment)
            except Exception:
                log.exception("daemon.listener_failed", account=state.name)

    @staticmethod
    async def _submit(alerting: Alerting, name: str, alerts: list[Alert]) -> None:
        try:
            await alerting.submit(alerts)
        except Exception:
            log.exception("alerts.failed", account=name)

    def _poll_timeout(self, state: AccountState) -> float:
        # A poll must end, or the account would go blind without a word on why.
        if self._poll_timeout_s is not None:
            return self._poll_timeout_s
        return max(5.0, state.config.poll_interval_s * 2)

    def _assessed(
        self, state: AccountState, fetched: FetchedAccount, assessment: Assessment, *, latency_ms: float
    ) -> None:
        was_blind = state.blind
        state.last_good = self._clock()
        state.assessment = assessment
        state.blind = False
        state.failures = 0
        state.backoff_until = 0.0
        state.last_error = None
        state.level = assessment.worst_level.value
        drift = assessment.drift.worst if assessment.drift is not None else None
        state.drift = drift
        ratio = assessment.margin_ratio
        log.info(
            "account.assessed",
            account=state.name,
            exchange=state.config.exchange,
            margin_ratio_pct=None if ratio is None else round(ratio * 100, 4),
            level=state.level,
            margin_balance=assessment.margin_balance,
            maintenance_margin=assessment.maintenance_margin,
            drift_pct=None if drift is None else round(drift * 100, 4),
            positions=assessment.position_count,
            approximate=fetched.approximate or None,
            latency_ms=round(latency_ms, 2),
        )
        if was_blind:
            log.info("account.data_restored", account=state.name, level=state.level)
        self._check_drift(state, drift)

    def _check_drift(self, state: AccountState, drift: float | None) -> None:
        tolerance = state.config.drift_tolerance_pct / 100
        if drift is not None and drift > tolerance:
            state.drifting += 1
            if not state.drift_warned and state.drifting >= DRIFT_POLLS:
                state.drift_warned = True
                log.warning(
                    "account.drift",
                    account=state.name,
                    drift_pct=round(drift * 100, 4),
                    tolerance_pct=state.config.drift_tolerance_pct,
                    polls=state.drifting,
                    hint="our maintenance margin or margin balance differs from the exchange's own figure",
                )
        else:
            state.drifting = 0
            if state.drift_warned:
                state.drift_warned = False
                log.info("account.drift_cleared", account=state.name)

    async def _failed(
        self, state: AccountState, exc: ExchangeError | None, *, reason: str | None = None
    ) -> None:
        state.errors += 1
        state.failures += 1
        delay = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** (state.failures - 1))
        delay = self._jitter(delay / 2, delay)
        fields: dict[str, Any] = {"account": state.name, "exchange": state.config.exchange}
        if exc is not None:
            fields["error"] = type(exc).__name__
            fields["detail"] = str(exc)
            if isinstance(exc, PayloadError):
                fields["field"] = exc.field
                # Cached brackets may no longer fit what the exchange sends: read them again.
                await state.source.refresh_tiers()
            if isinstance(exc, RateLimitedError) and exc.retry_after is not None:
                delay = max(delay, exc.retry_after)
                fields["retry_after_s"] = exc.retry_after
            if isinstance(exc, ClockSkewError):
                await self._resync_clock(state)
        else:
            fields["error"] = reason
        state.last_error = str(fields.get("detail") or fields["error"])
        # Back off only after the first failure: a single blip should not delay the next poll.
        if state.failures > 1 or (isinstance(exc, RateLimitedError)):
            state.backoff_until = self._clock() + delay
            fields["backoff_s"] = round(delay, 3)
        log.warning("account.poll_failed", failures=state.failures, **fields)

    async def _resync_clock(self, state: AccountState) -> None:
        resync = getattr(state.source, "resync_clock", None)
        if resync is None:
            return
        try:
            await resync()
        except Exception as exc:  # noqa: BLE001 - the next poll retries; the failure is logged
            log.warning("account.clock_resync_failed", account=state.name, error=type(exc).__name__)
        else:
            log.info("account.clock_resynced", account=state.name)

    # --- staleness ------------------------------------------------------------------------------

    def stale_after_s(self, state: AccountState) -> float:
        """Age beyond which an account's data no longer counts (``stale_after_polls`` intervals)."""
        return self.config.alerts.stale_after_polls * state.config.poll_interval_s

    def check_staleness(self) -> list[str]:
        """Turn accounts without a fresh assessment ``blind`` (logging once); return the blind ones."""
        now = self._clock()
        blind: list[str] = []
        for state in self.accounts.values():
            since = state.last_good if state.last_good is not None else state.started
            age = now - since
            if age > self.stale_after_s(state):
                blind.append(state.name)
                if not state.blind:
                    state.blind = True
                    state.level = BLIND
                    log.warning(
                        "account.blind",
                        account=state.name,
                        exchange=state.config.exchange,
                        level=BLIND,
                        seconds_since_last_good=round(age, 3),
                        last_error=state.last_error,
                        never_assessed=state.last_good is None or None,
                    )
        return blind

    def unfresh(self) -> dict[str, str]:
        """The accounts without a fresh assessment now, and why: "blind", "stale" or "never assessed".

        Reads state only (the staleness job is what turns accounts blind and says so): for /healthz.
        """
        now = self._clock()
        found: dict[str, str] = {}
        for state in self.accounts.values():
            if state.blind:
                found[state.name] = BLIND
            elif state.last_good is None:
                found[state.name] = "never assessed"
            elif now - state.last_good > self.stale_after_s(state):
                found[state.name] = "stale"
        return found

    def age_s(self, name: str) -> float | None:
        """Seconds since ``name``'s last good assessment (``None`` before the first)."""
        last_good = self.accounts[name].last_good
        return None if last_good is None else max(0.0, self._clock() - last_good)

    async def staleness_job(self) -> None:
        """The scheduled staleness check: blind accounts also go through the alert engine.

        Each completed run counts a beat (``beats``): the watchdog's proof that the scheduler works.
        """
        blind = self.check_staleness()
        if self.alerting is not None:
            now = self._clock()
            for name in blind:
                state = self.accounts[name]
                since = state.last_good if state.last_good is not None else state.started
                try:
                    await self.alerting.blind(name, state.config.exchange, round(now - since, 3))
                except Exception:
                    log.exception("alerts.failed", account=name)
        self.beats += 1

    # --- running --------------------------------------------------------------------------------

    async def refresh_tiers(self) -> None:
        """Ask every source to read its tier tables again on its next fetch."""
        for state in self.accounts.values():
            await state.source.refresh_tiers()
        log.info("tiers.refresh_scheduled", accounts=len(self.accounts))

    async def refresh_markets(self) -> None:
        """Reload each exchange's market list (new and delisted contracts); failures are logged."""
        for state in self.accounts.values():
            refresh = getattr(state.source, "refresh_markets", None)
            if refresh is None:
                continue
            try:
                await refresh()
            except ExchangeError as exc:
                log.warning(
                    "markets.refresh_failed", account=state.name, error=type(exc).__name__, detail=str(exc)
                )
        log.info("markets.refreshed", accounts=len(self.accounts))

    async def poll_all(self) -> None:
        """One poll of every account, concurrently (start-up, ``status``)."""
        async with asyncio.TaskGroup() as group:
            for name in self.accounts:
                group.create_task(self.poll(name), name=f"poll:{name}")

    def start(self) -> AsyncIOScheduler:
        """Schedule the poll, staleness and refresh jobs on the running loop."""
        scheduler = AsyncIOScheduler(event_loop=asyncio.get_running_loop())
        # Spread over the interval: a thousand accounts polled together hold the loop for seconds
        # while their answers are parsed, and every alert found meanwhile waits.
        phases = spread(self.accounts)
        started = datetime.now(UTC)
        for state in self.accounts.values():
            interval = state.config.poll_interval_s
            scheduler.add_job(
                self.poll,
                "interval",
                args=[state.name],
                id=f"poll:{state.name}",
                seconds=interval,
                jitter=interval * 0.1,
                max_instances=1,
                coalesce=True,
                misfire_grace_time=max(1, int(interval)),
                next_run_time=started + timedelta(seconds=interval * phases[state.name]),
            )
        fastest = min((state.config.poll_interval_s for state in self.accounts.values()), default=10.0)
        every = fastest / 2 if self.heartbeat_s is None else min(fastest / 2, self.heartbeat_s)
        scheduler.add_job(
            self.staleness_job,
            "interval",
            id="staleness",
            seconds=max(every, 0.01),
            max_instances=1,
            coalesce=True,
        )
        daemon = self.config.daemon
        scheduler.add_job(
            self.refresh_tiers,
            "interval",
            id="tiers",
            hours=daemon.tier_refresh_h,
            max_instances=1,
            coalesce=True,
        )
        scheduler.add_job(
            self.refresh_markets,
            "interval",
            id="markets",
            hours=daemon.market_refresh_h,
            max_instances=1,
            coalesce=True,
        )
        scheduler.start()
        self._scheduler = scheduler
        return scheduler

    @property
    def scheduling(self) -> bool:
        """Whether the scheduler is running (after the first round of polls, until shutdown)."""
        return self._scheduler is not None

    async def run(self, stop: asyncio.Event, on_ready: Callable[[], None] | None = None) -> None:
        """Poll until ``stop`` is set, then shut the scheduler down and close every client.

        ``on_ready`` is called once every account has had its first poll and the scheduler runs
        (systemd's ``READY=1``).
        """
        log.info(
            "daemon.started",
            accounts=len(self.accounts),
            thresholds_pct=list(self.config.alerts.thresholds_pct),
        )
        try:
            await self.poll_all()
            self.start()
            _freeze_long_lived()
            if on_ready is not None:
                on_ready()
            await stop.wait()
        finally:
            gc.unfreeze()  # what this run built may now be collected like anything else
            await self.shutdown()

    async def shutdown(self) -> None:
        """Stop scheduling and close every source, within ``CLOSE_TIMEOUT_S``."""
        scheduler, self._scheduler = self._scheduler, None
        self._stopping = True
        if scheduler is not None:
            # Pause first: shutting APScheduler's asyncio executor down cancels the jobs it runs,
            # and a poll cancelled mid-request logs a traceback for nothing. Let them finish.
            scheduler.pause()
        in_flight = (self._in_flight | self._pending) - {asyncio.current_task()}
        if in_flight:
            await asyncio.wait(in_flight, timeout=CLOSE_TIMEOUT_S)
        if scheduler is not None:
            scheduler.shutdown(wait=False)
        if self.streaming is not None:
            # The feeds first: a user-data feed borrows its account's REST client.
            await self.streaming.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await asyncio.gather(
                    *(state.source.close() for state in self.accounts.values()), return_exceptions=True
                )
        log.info("daemon.stopped", accounts=len(self.accounts))


def spread(names: Iterable[str]) -> dict[str, float]:
    """Each name's place in (0, 1], evenly spaced in sorted order: when its periodic work first falls due."""
    ordered = sorted(names)
    return {name: (index + 1) / len(ordered) for index, name in enumerate(ordered)}


def _freeze_long_lived() -> None:
    """Move what start-up built (ccxt clients, markets, tiers) out of the garbage collector's sight.

    A full collection scans every tracked object: with a thousand accounts' clients that was 400 ms
    with the event loop stopped, now and then, which is a late alert. These objects live as long as
    the run; frozen, a full collection scans only what came after.
    """
    gc.collect()
    gc.freeze()


def poll_result(exc: ExchangeError) -> str:
    """A failed read's kind, for the metrics: what the caller must do about it, as the errors say."""
    if isinstance(exc, RateLimitedError):
        return "rate_limited"
    if isinstance(exc, ClockSkewError):
        return "clock_skew"
    if isinstance(exc, TemporaryExchangeError):
        return "temporary"
    if isinstance(exc, PayloadError):
        return "payload"
    if isinstance(exc, OperationalExchangeError):
        return "operational"
    # A bare ExchangeError names no remedy: a human should look, as for an operational one.
    return "operational"
