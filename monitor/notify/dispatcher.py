"""The dispatcher: takes alerts into the outbox and delivers them through their channels.

``submit`` stores an alert with one delivery per channel that wants it before anything is sent.
``run`` is the delivery loop: one worker task per channel (``deliver:<name>``), so channels run
concurrently with each other while each channel sends one alert at a time, oldest first; a channel
with ``max_in_flight`` > 1 (MQTT) sends up to that many at once, never two of one account. A channel's
rate limits are its own business, and concurrency never breaks them.

Each attempt is bounded by ``asyncio.timeout``. Its outcome decides the delivery's fate:

- the channel returned: marked delivered (only now; a kill before this line means a re-send);
- ``TemporaryDeliveryError``: retried after exactly ``retry_after`` seconds when the peer gave one
  (HTTP 429 ``Retry-After``, Telegram's ``retry_after``), else after a capped, jittered exponential
  backoff. The backoff grows with the delivery's ``failures``, which the waits the peer named do not
  count: a burst of 429s followed by a 5xx waits the base backoff, not a minute;
- ``PermanentDeliveryError`` (a 400, a wrong token): dead-lettered at once;
- a timeout or any other exception: logged and retried like a temporary error; the loop never dies;
- an alert older than ``max_age_s`` is dead-lettered instead of sent: a margin warning an hour
  late is noise, and the engine has newer news by then.

A channel's queue is strict FIFO per account: while its oldest delivery waits for a retry, the
younger ones wait behind it (a "recovered" notice must not overtake the alert it ends). With
several in flight, the alerts of other accounts in the same window may land before the one that
failed; one account's alerts are never in flight together, so their order holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import structlog

from monitor.errors import PermanentDeliveryError, TemporaryDeliveryError
from monitor.notify.base import in_flight, wants

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from monitor.alerts.model import Alert
    from monitor.notify.base import Channel
    from monitor.notify.outbox import Delivery, Outbox

log = structlog.get_logger("margin_monitor.dispatcher")

#: Longest a single send may take before it counts as a temporary failure.
DEFAULT_SEND_TIMEOUT_S = 20.0

#: How long ``stop`` lets an in-flight send finish before cancelling it (SIGTERM must end us in 5 s).
DEFAULT_STOP_TIMEOUT_S = 3.0

#: An idle worker reads its queue at least this often, whatever it expects: the wall clock may
#: jump, and another process (``margin-monitor test-alert``) may have written to the outbox.
IDLE_WAIT_S = 60.0

#: Pause after an unexpected error in the loop itself (a full disk), so it cannot spin.
ERROR_PAUSE_S = 1.0

#: Deliveries read from the outbox per query.
BATCH = 50

#: How often finished alerts past the outbox's retention are pruned.
PRUNE_EVERY_S = 3600.0

#: How often the outbox's WAL is checkpointed from a worker thread while the loop runs.
CHECKPOINT_EVERY_S = 1.0

#: The backoff exponent stops growing here: 2**62 already exceeds any cap, and floats overflow later.
_MAX_EXPONENT = 62

Result = Literal["delivered", "retry", "dead"]


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one attempt (or expiry) did to one delivery; ``test-alert`` prints these."""

    channel: str
    alert_id: str
    attempt: int
    result: Result
    error: str | None = None
    retry_in_s: float | None = None
    latency_ms: float | None = None


@dataclass(slots=True)
class ChannelCounters:
    """Per-channel counts since this dispatcher started (``expired`` dead letters are in ``dead`` too)."""

    delivered: int = 0
    failed: int = 0
    dead: int = 0
    expired: int = 0


class Dispatcher:
    """Delivers the outbox's alerts through ``channels`` (see the module docstring).

    ``clock`` gives Unix seconds (alert ages and retry times are compared with it); ``rng`` gives
    floats in [0, 1) for the jitter. The dispatcher does not start or close the channels: their owner
    does, once, around ``run``.
    """

    def __init__(
        self,
        outbox: Outbox,
        channels: Iterable[Channel],
        *,
        clock: Callable[[], float] = time.time,
        max_age_s: float = 3600.0,
        backoff_base_s: float = 1.0,
        backoff_cap_s: float = 300.0,
        rng: Callable[[], float] = random.random,
        send_timeout_s: float = DEFAULT_SEND_TIMEOUT_S,
        stop_timeout_s: float = DEFAULT_STOP_TIMEOUT_S,
    ) -> None:
        self.outbox = outbox
        self.channels: dict[str, Channel] = {}
        for channel in channels:
            if channel.name in self.channels:
                raise ValueError(f"two channels are named {channel.name!r}")
            self.channels[channel.name] = channel
        self._clock = clock
        self._rng = rng
        self.max_age_s = max_age_s
        self.backoff_base_s = backoff_base_s
        self.backoff_cap_s = backoff_cap_s
        self.send_timeout_s = send_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self._counters = {name: ChannelCounters() for name in self.channels}
        self._wake = {name: asyncio.Event() for name in self.channels}
        # One send at a time per channel, also when a test or test-alert calls deliver_once while
        # run() is going.
        self._busy = {name: asyncio.Lock() for name in self.channels}
        self._stopping = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        #: Alerts submitted this turn of the loop, stored together by ``_commit``.
        self._incoming: list[tuple[Alert, list[str], asyncio.Future[None]]] = []

    # --- taking alerts in -----------------------------------------------------------------------

    async def submit(self, alert: Alert) -> None:
        """Store ``alert`` for every channel that wants it (``log`` channels always) and wake them.

        Returns once the alert is durable; delivery happens in ``run``. Submitting an id already
        stored does nothing (the outbox is idempotent on ``alert.id``). Alerts submitted in the same
        turn of the event loop are stored in one transaction (group commit): when a mark tick takes
        a thousand accounts across a threshold, that is a few commits rather than a thousand.
        """
        targets = [
            name for name, channel in self.channels.items() if channel.type == "log" or wants(channel, alert)
        ]
        loop = asyncio.get_running_loop()
        stored: asyncio.Future[None] = loop.create_future()
        self._incoming.append((alert, targets, stored))
        if len(self._incoming) == 1:
            loop.call_soon(self._commit)
        await stored

    def _commit(self) -> None:
        batch, self._incoming = self._incoming, []
        try:
            added: list[bool | BaseException] = [
                *self.outbox.add_many((alert, targets) for alert, targets, _ in batch)
            ]
        except Exception:  # noqa: BLE001 - one at a time, so one bad alert fails only its own submit
            added = [self._add_one(alert, targets) for alert, targets, _ in batch]
        for (alert, targets, stored), fresh in zip(batch, added, strict=True):
            if isinstance(fresh, BaseException):
                if not stored.done():
                    stored.set_exception(fresh)
                continue
            if fresh:
                for name in targets:
                    self._wake[name].set()
            else:
                log.debug("alert.duplicate", alert_id=alert.id)
            if not stored.done():
                stored.set_result(None)

    def _add_one(self, alert: Alert, targets: list[str]) -> bool | BaseException:
        try:
            return self.outbox.add(alert, targets)
        except Exception as exc:  # noqa: BLE001 - handed to that alert's submitter
            return exc

    # --- the loop -------------------------------------------------------------------------------

    async def run(self) -> None:
        """Deliver until ``stop``: one worker per channel, plus the outbox's pruning. Never raises.

        Pending deliveries left by a previous process go out first (they are the oldest).
        """
        log.info("dispatcher.started", channels=list(self.channels), pending=self.outbox.pending_count())
        async with asyncio.TaskGroup() as group:
            for name in self.channels:
                self._tasks.add(group.create_task(self._worker(name), name=f"deliver:{name}"))
            self._tasks.add(group.create_task(self._housekeeping(), name="outbox:housekeeping"))
        log.info("dispatcher.stopped", pending=self.outbox.pending_count())

    async def stop(self) -> None:
        """Let each in-flight send finish (up to ``stop_timeout_s``, then cancel it) and end ``run``.

        A send cut short stays pending and goes out after the next start.
        """
        self._stopping.set()
        for event in self._wake.values():
            event.set()
        running = [task for task in self._tasks if not task.done()]
        if not running:
            return
        _, late = await asyncio.wait(running, timeout=self.stop_timeout_s)
        if late:
            log.warning("dispatcher.stop_timeout", tasks=sorted(task.get_name() for task in late))
            for task in late:
                task.cancel()
            await asyncio.wait(late, timeout=1.0)

    async def _worker(self, name: str) -> None:
        wake = self._wake[name]
        while not self._stopping.is_set():
            # Cleared before reading the queue: a submit after the read sets it again, so no wakeup
            # between the read and the wait is lost.
            wake.clear()
            try:
                outcomes = await self._deliver_channel(name)
                delay = 0.0 if outcomes else self._idle_delay(name)
            except Exception:  # the loop must outlive a broken disk or a bug: log, pause, go on
                log.exception("dispatcher.error", channel=name)
                delay = ERROR_PAUSE_S
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await wake.wait()

    def _idle_delay(self, name: str) -> float:
        next_at = self.outbox.next_attempt_at(name)
        if next_at is None:
            return IDLE_WAIT_S
        return min(max(next_at - self._clock(), 0.001), IDLE_WAIT_S)

    async def _housekeeping(self) -> None:
        # Checkpoints are the outbox's only fsyncs: run them on a worker thread, never in a commit
        # on the event loop (see monitor/notify/outbox.py). Pruning is rare and quick: inline.
        self.outbox.autocheckpoint = False
        pruned_at = float("-inf")
        try:
            while not self._stopping.is_set():
                try:
                    await asyncio.to_thread(self.outbox.checkpoint)
                    if time.monotonic() - pruned_at >= PRUNE_EVERY_S:
                        pruned_at = time.monotonic()
                        if pruned := self.outbox.prune():
                            log.info("outbox.pruned", alerts=pruned)
                except Exception:  # housekeeping: log it and try next time
                    log.exception("outbox.housekeeping_failed")
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(CHECKPOINT_EVERY_S):
                        await self._stopping.wait()
        finally:
            self.outbox.autocheckpoint = True

    # --- delivering -----------------------------------------------------------------------------

    async def deliver_once(self) -> list[Outcome]:
        """Attempt every delivery due now, channels concurrently, each channel in order; no waiting.

        A channel stops at its first retry (strict FIFO). For tests and ``test-alert``.
        """
        results = await asyncio.gather(*(self._deliver_channel(name) for name in self.channels))
        return [outcome for outcomes in results for outcome in outcomes]

    async def drain(self, timeout: float) -> list[Outcome]:  # noqa: ASYNC109 - bounds the waits between rounds; asyncio.timeout would cut a send mid-flight
        """Deliver until nothing is pending or ``timeout`` seconds have passed, waiting out retries.

        Returns every outcome; ``outbox.pending_count()`` tells what is left.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        outcomes: list[Outcome] = []
        while True:
            outcomes.extend(await self.deliver_once())
            remaining = deadline - loop.time()
            waits = [at for name in self.channels if (at := self.outbox.next_attempt_at(name)) is not None]
            if not waits or remaining <= 0:
                return outcomes
            await asyncio.sleep(min(max(min(waits) - self._clock(), 0.001), remaining))

    async def _deliver_channel(self, name: str) -> list[Outcome]:
        channel = self.channels[name]
        window = in_flight(channel)
        async with self._busy[name]:
            if window == 1:
                return await self._deliver_serially(channel)
            return await self._deliver_pipelined(channel, window)

    async def _deliver_serially(self, channel: Channel) -> list[Outcome]:
        outcomes: list[Outcome] = []
        for delivery in self.outbox.due(self._clock(), BATCH, channel=channel.name):
            outcome = await self._attempt(channel, delivery)
            outcomes.append(outcome)
            if outcome.result == "retry" or self._stopping.is_set():
                break
        return outcomes

    async def _deliver_pipelined(self, channel: Channel, window: int) -> list[Outcome]:
        """Up to ``window`` sends at once, one per account, each slot refilled as soon as it frees.

        Deliveries stored while these are in flight join without waiting for the slowest
        acknowledgement; those that finish together are marked in one commit. The first retry stops
        new sends (strict FIFO): those in flight finish.
        """
        name = channel.name
        outcomes: list[Outcome] = []
        queue = deque(self.outbox.due(self._clock(), BATCH, channel=name))
        seen = {delivery.seq for delivery in queue}
        running: dict[asyncio.Task[Outcome], Delivery] = {}
        busy_accounts: set[str] = set()
        halted = False
        try:
            while True:
                while not halted and queue and len(running) < window:
                    if queue[0].alert.account in busy_accounts:
                        break  # one account's alerts never in flight together: their order holds
                    delivery = queue.popleft()
                    busy_accounts.add(delivery.alert.account)
                    task = asyncio.ensure_future(self._attempt(channel, delivery, mark=False))
                    running[task] = delivery
                if not running:
                    return outcomes
                wake = self._wake[name]
                # With a slot free and nothing left to start, a delivery stored meanwhile need not
                # wait for an acknowledgement. (With the queue's head held back by its account's
                # send in flight, nothing could start before that send ends: waiting on the wake
                # too would spin while it stays set.)
                waiter = (
                    asyncio.ensure_future(wake.wait())
                    if not halted and not queue and len(running) < window
                    else None
                )
                awaited: set[asyncio.Future[Any]] = set(running)
                if waiter is not None:
                    awaited.add(waiter)
                await asyncio.wait(awaited, return_when=asyncio.FIRST_COMPLETED)
                if waiter is not None:
                    waiter.cancel()
                sent: list[Delivery] = []
                for task in sorted((t for t in running if t.done()), key=lambda t: running[t].seq):
                    delivery = running.pop(task)
                    busy_accounts.discard(delivery.alert.account)
                    outcome = task.result()
                    outcomes.append(outcome)
                    if outcome.result == "delivered":
                        sent.append(delivery)
                    elif outcome.result == "retry":
                        halted = True
                if sent:
                    self._counters[name].delivered += sum(self.outbox.delivered_many(sent))
                halted = halted or self._stopping.is_set()
                if not halted and not queue and wake.is_set():
                    # Stored since the read: cleared before reading again, as the worker does.
                    wake.clear()
                    fresh = self.outbox.due(self._clock(), BATCH, channel=name)
                    queue.extend(delivery for delivery in fresh if delivery.seq not in seen)
                    seen.update(delivery.seq for delivery in fresh)
        finally:
            for task in running:
                task.cancel()

    async def _attempt(self, channel: Channel, delivery: Delivery, *, mark: bool = True) -> Outcome:
        """One send (or expiry) of ``delivery``; ``mark=False`` leaves marking it delivered to the caller."""
        alert = delivery.alert
        counters = self._counters[channel.name]
        age = self._clock() - alert.created_at
        if age > self.max_age_s:
            reason = f"expired: {age:.0f} s old, older than max_age_s {self.max_age_s:g}"
            if self.outbox.dead(delivery, reason):
                counters.dead += 1
                counters.expired += 1
            log.error(
                "alert.dead_letter",
                channel=channel.name,
                alert_id=alert.id,
                account=alert.account,
                attempts=delivery.attempts,
                reason="expired",
                age_s=round(age, 3),
            )
            return Outcome(channel.name, alert.id, delivery.attempts, "dead", reason)

        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.send_timeout_s):
                await channel.send(alert)
        except PermanentDeliveryError as exc:
            return self._dead_letter(channel.name, delivery, _describe(exc))
        except TemporaryDeliveryError as exc:
            return self._retry(channel.name, delivery, _describe(exc), exc.retry_after)
        except TimeoutError:
            return self._retry(channel.name, delivery, f"timeout after {self.send_timeout_s:g} s", None)
        except Exception as exc:  # a channel's bug must cost a retry, never the loop
            log.exception("alert.channel_crashed", channel=channel.name, alert_id=alert.id)
            return self._retry(channel.name, delivery, _describe(exc), None)

        latency_ms = round((time.perf_counter() - started) * 1000, 3)
        if mark and self.outbox.delivered(delivery):
            counters.delivered += 1
        if channel.type != "log":  # the log channel's own line is the record of its delivery
            log.info(
                "alert.delivered",
                channel=channel.name,
                alert_id=alert.id,
                attempt=delivery.attempt,
                latency_ms=latency_ms,
            )
        return Outcome(channel.name, alert.id, delivery.attempt, "delivered", latency_ms=latency_ms)

    def _dead_letter(self, name: str, delivery: Delivery, error: str) -> Outcome:
        if self.outbox.dead(delivery, error, attempted=True):
            self._counters[name].dead += 1
        log.error(
            "alert.dead_letter",
            channel=name,
            alert_id=delivery.alert.id,
            account=delivery.alert.account,
            attempts=delivery.attempt,
            reason="permanent",
            error=error,
        )
        return Outcome(name, delivery.alert.id, delivery.attempt, "dead", error)

    def _retry(self, name: str, delivery: Delivery, error: str, retry_after: float | None) -> Outcome:
        # The peer's own figure wins over our guess: sending earlier earns another 429 and, on
        # Telegram, a longer ban.
        delay = max(retry_after, 0.0) if retry_after is not None else self.backoff(delivery.failures + 1)
        # A wait the peer named is not ours to grow: such an attempt leaves ``failures`` as it is.
        rate_limited = retry_after is not None
        if self.outbox.failed(delivery, error, self._clock() + delay, rate_limited=rate_limited):
            self._counters[name].failed += 1
        log.warning(
            "alert.delivery_failed",
            channel=name,
            alert_id=delivery.alert.id,
            attempt=delivery.attempt,
            error=error,
            retry_in_s=round(delay, 3),
        )
        return Outcome(name, delivery.alert.id, delivery.attempt, "retry", error, retry_in_s=delay)

    def backoff(self, failure: int) -> float:
        """Seconds to wait after a delivery's ``failure``-th failure (1-based) that named no wait.

        ``base * 2**(failure-1)`` capped at ``backoff_cap_s``, then jittered into its upper half
        ([ceiling/2, ceiling)), so channels that failed together do not retry in lockstep yet
        never retry sooner than half the schedule.
        """
        ceiling = min(self.backoff_cap_s, self.backoff_base_s * 2.0 ** min(failure - 1, _MAX_EXPONENT))
        return ceiling * (0.5 + 0.5 * self._rng())

    def counters(self) -> dict[str, ChannelCounters]:
        """A copy of each channel's counters since this dispatcher started."""
        return {name: dataclasses.replace(counters) for name, counters in self._counters.items()}


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
