"""The dispatcher and the ``log`` channel: store before send, retries, dead letters, order, restarts.

The channels here are small classes implementing our own ``Channel`` protocol (a scripted one, one
that hangs), not stand-ins for a library. Timings are exact through an injected clock and rng;
the tests that run the real loop use the wall clock with millisecond backoffs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import os
import signal
import sys
import textwrap
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from monitor.alerts.model import Alert, AlertKind, PositionAtRisk, SuggestedAction
from monitor.errors import PermanentDeliveryError, TemporaryDeliveryError
from monitor.notify.dispatcher import Dispatcher
from monitor.notify.log import LogChannel
from monitor.notify.outbox import Outbox
from structlog.testing import capture_logs

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

NOW = 1_800_000_000.0
PROJECT = Path(__file__).resolve().parent.parent


class Clock:
    """A settable Unix clock."""

    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        """The time it is set to."""
        return self.now


class ScriptedChannel:
    """A channel that plays a script: each step is an exception to raise or None to deliver.

    The last step repeats. It records every attempt and every delivery, and the most sends it ever
    had in flight at once.
    """

    type = "scripted"

    def __init__(
        self,
        name: str,
        *script: Exception | None,
        min_level: str = "ok",
        accounts: frozenset[str] | None = None,
        delay_s: float = 0.0,
        held: frozenset[str] = frozenset(),
    ) -> None:
        self.name = name
        #: Alerts whose send waits until ``release`` is set (a slow acknowledgement).
        self.held = held
        self.release = asyncio.Event()
        self.min_level = min_level
        self.accounts = accounts
        self.script: deque[Exception | None] = deque(script or (None,))
        self.delay_s = delay_s
        self.attempts: list[str] = []
        self.sent: list[str] = []
        self.in_flight = 0
        self.most_in_flight = 0

    async def start(self) -> None:
        """Nothing to open."""

    async def close(self) -> None:
        """Nothing to release."""

    async def send(self, alert: Alert) -> None:
        """Play the next step of the script."""
        self.attempts.append(alert.id)
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            if alert.id in self.held:
                await self.release.wait()
            step = self.script[0] if len(self.script) == 1 else self.script.popleft()
            if step is not None:
                raise step
            self.sent.append(alert.id)
        finally:
            self.in_flight -= 1


class HangingChannel(ScriptedChannel):
    """A channel whose send never returns (a peer that accepts the connection and says nothing)."""

    def __init__(self, name: str = "telegram") -> None:
        super().__init__(name)
        self.entered = asyncio.Event()

    async def send(self, alert: Alert) -> None:
        """Hang until cancelled."""
        self.attempts.append(alert.id)
        self.entered.set()
        await asyncio.Event().wait()


def make_alert(
    number: int,
    *,
    level: str = "danger",
    kind: AlertKind = AlertKind.FIRING,
    account: str = "main",
    created_at: float = NOW,
    previous_level: str | None = "warning",
) -> Alert:
    """An alert about account ``account``."""
    return Alert(
        id=f"alert-{number}",
        kind=kind,
        account=account,
        exchange="binanceusdm",
        key=account,
        level=level,
        created_at=created_at,
        previous_level=previous_level,
        margin_ratio_pct=128.5,
        threshold_pct=130.0,
        margin_balance=10_234.5,
        maintenance_margin=7_965.0,
    )


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    """An outbox file in a fresh state directory."""
    with Outbox.for_state_dir(tmp_path) as opened:
        yield opened


def dispatcher(
    outbox: Outbox, *channels: ScriptedChannel | LogChannel, clock: Clock | None = None
) -> Dispatcher:
    """A dispatcher on the fake clock (at ``NOW``), with jitter pinned to the top of its range."""
    return Dispatcher(outbox, list(channels), clock=clock or Clock(), rng=lambda: 1.0)


async def until(predicate: Callable[[], bool], timeout: float = 3.0) -> None:  # noqa: ASYNC109 - a poll, not an await
    """Wait until ``predicate()`` holds."""
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110 - predicates read plain counters; an Event each would clutter the channels
            await asyncio.sleep(0.002)


# --- taking alerts in -----------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_an_alert_is_stored_before_its_channel_is_called(outbox: Outbox, tmp_path: Path) -> None:
    """When a channel is called, another connection already finds the alert pending for it."""
    seen: list[int] = []

    class Observing(ScriptedChannel):
        async def send(self, alert: Alert) -> None:
            with Outbox.for_state_dir(tmp_path) as other:
                seen.append(other.pending_count(self.name))
            await super().send(alert)

    channel = Observing("telegram")
    sender = dispatcher(outbox, channel)
    await sender.submit(make_alert(1))
    assert channel.attempts == []  # submit only stores
    assert outbox.pending_count() == 1
    await sender.deliver_once()
    assert seen == [1]
    assert channel.sent == ["alert-1"]
    assert outbox.pending_count() == 0


@pytest.mark.asyncio
async def test_alerts_submitted_together_are_stored_together_and_a_bad_one_fails_alone(
    outbox: Outbox,
) -> None:
    """Group commit: concurrent submits share a transaction, and a bad one fails alone.

    An alert that cannot be stored (a NaN the outbox refuses) fails its own submit only; its
    neighbours in the same turn of the loop are stored and delivered.
    """
    channel = ScriptedChannel("telegram")
    sender = dispatcher(outbox, channel)
    bad = dataclasses.replace(make_alert(2), margin_ratio_pct=math.nan)
    results = await asyncio.gather(
        sender.submit(make_alert(1)), sender.submit(bad), sender.submit(make_alert(3)), return_exceptions=True
    )
    assert results[0] is None
    assert isinstance(results[1], ValueError)
    assert results[2] is None
    assert outbox.pending_count("telegram") == 2
    with capture_logs():
        outcomes = await sender.deliver_once()
    assert [outcome.alert_id for outcome in outcomes] == ["alert-1", "alert-3"]


@pytest.mark.asyncio
async def test_submitting_an_id_twice_sends_it_once(outbox: Outbox) -> None:
    """The outbox is idempotent on the alert id, so a re-submitted alert is not sent again."""
    channel = ScriptedChannel("telegram")
    sender = dispatcher(outbox, channel)
    await sender.submit(make_alert(1))
    await sender.deliver_once()
    await sender.submit(make_alert(1))
    await sender.deliver_once()
    assert channel.attempts == ["alert-1"]


@pytest.mark.asyncio
async def test_each_channel_gets_what_it_wants_and_the_log_gets_everything(outbox: Outbox) -> None:
    """Minimum levels and account filters go through ``wants``; a log channel takes every alert."""
    log = LogChannel(min_level="critical")
    urgent = ScriptedChannel("urgent", min_level="danger")
    spare_only = ScriptedChannel("spare", accounts=frozenset({"spare"}))
    sender = dispatcher(outbox, log, urgent, spare_only)

    await sender.submit(make_alert(1, level="warning", previous_level="ok"))
    await sender.submit(make_alert(2, level="danger"))
    await sender.submit(make_alert(3, level="ok", kind=AlertKind.RECOVERED, previous_level="danger"))
    await sender.submit(make_alert(4, level="warning", account="spare", previous_level="ok"))
    with capture_logs():
        await sender.deliver_once()

    assert urgent.sent == ["alert-2", "alert-3"]  # the recovery goes where the danger alert went
    assert spare_only.sent == ["alert-4"]
    assert sender.counters()["log"].delivered == 4


# --- order and concurrency ------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_channel_sends_one_at_a_time_oldest_first(outbox: Outbox) -> None:
    """The running loop sends a channel's alerts in submission order, never two at once."""
    channel = ScriptedChannel("telegram", delay_s=0.005)
    sender = Dispatcher(outbox, [channel])
    task = asyncio.create_task(sender.run(), name="dispatcher")
    for number in range(8):
        await sender.submit(make_alert(number, created_at=time.time()))
    with capture_logs():
        await until(lambda: len(channel.sent) == 8)
        await sender.stop()
    await task
    assert channel.sent == [f"alert-{number}" for number in range(8)]
    assert channel.most_in_flight == 1


@pytest.mark.asyncio
async def test_a_pipelining_channel_has_several_in_flight_but_never_two_of_one_account(
    outbox: Outbox,
) -> None:
    """``max_in_flight = 4``: windows of up to 4 alerts of distinct accounts; each account in order."""
    channel = ScriptedChannel("mqtt", delay_s=0.01)
    channel.max_in_flight = 4  # type: ignore[attr-defined]
    sender = Dispatcher(outbox, [channel])
    accounts = ["a", "b", "c", "a", "d", "e", "f", "g", "a"]
    for number, account in enumerate(accounts):
        await sender.submit(make_alert(number, account=account, created_at=time.time()))
    with capture_logs():
        outcomes = await sender.deliver_once()
    assert [outcome.result for outcome in outcomes] == ["delivered"] * len(accounts)
    assert channel.most_in_flight == 4
    # The windows: a b c | a d e f | g a. Per account, the submission order holds.
    assert channel.sent[:3] == ["alert-0", "alert-1", "alert-2"]
    for account in set(accounts):
        ids = [f"alert-{n}" for n, name in enumerate(accounts) if name == account]
        assert [sent for sent in channel.sent if sent in ids] == ids


@pytest.mark.asyncio
async def test_a_slow_acknowledgement_holds_only_its_own_slot(outbox: Outbox) -> None:
    """A freed slot takes the next alert at once, also one stored while the others are in flight.

    With a window of 2 and account a's alert unacknowledged, b, c and d go out one after another
    through the other slot, and so does e, submitted meanwhile; a's next alert waits behind a's first.
    """
    channel = ScriptedChannel("mqtt", held=frozenset({"alert-0"}))
    channel.max_in_flight = 2  # type: ignore[attr-defined]
    sender = Dispatcher(outbox, [channel])
    task = asyncio.create_task(sender.run(), name="dispatcher")
    with capture_logs():
        for number, account in enumerate(["a", "b", "c", "d"]):
            await sender.submit(make_alert(number, account=account, created_at=time.time()))
        await until(lambda: channel.sent == ["alert-1", "alert-2", "alert-3"])
        await sender.submit(make_alert(4, account="e", created_at=time.time()))
        await sender.submit(make_alert(5, account="a", created_at=time.time()))
        await until(lambda: len(channel.sent) == 4)
        assert channel.sent[3] == "alert-4"
        assert channel.attempts.count("alert-5") == 0  # a's second waits for a's first
        assert outbox.pending_count("mqtt") == 2
        channel.release.set()
        await until(lambda: len(channel.sent) == 6)
        await sender.stop()
    await task
    assert channel.sent[4:] == ["alert-0", "alert-5"]
    assert channel.most_in_flight == 2
    assert outbox.pending_count("mqtt") == 0


@pytest.mark.asyncio
async def test_a_failure_in_a_window_stops_the_round_after_that_window(outbox: Outbox) -> None:
    """The window's other accounts are delivered; the failed one and everything after it wait."""
    channel = ScriptedChannel("mqtt", None, TemporaryDeliveryError("broker gone", channel="mqtt"), None)
    channel.max_in_flight = 3  # type: ignore[attr-defined]
    sender = dispatcher(outbox, channel)
    for number, account in enumerate(["a", "b", "c", "d", "e"]):
        await sender.submit(make_alert(number, account=account))
    with capture_logs():
        outcomes = await sender.deliver_once()
    assert [(o.alert_id, o.result) for o in outcomes] == [
        ("alert-0", "delivered"),
        ("alert-1", "retry"),
        ("alert-2", "delivered"),
    ]
    assert outbox.pending_count("mqtt") == 3


@pytest.mark.asyncio
async def test_channels_send_concurrently(outbox: Outbox) -> None:
    """One channel's slow send does not hold back another channel."""
    slow = HangingChannel("slow")
    fast = ScriptedChannel("fast")
    sender = Dispatcher(outbox, [slow, fast], stop_timeout_s=0.05)
    task = asyncio.create_task(sender.run(), name="dispatcher")
    with capture_logs():
        await sender.submit(make_alert(1, created_at=time.time()))
        await until(lambda: fast.sent == ["alert-1"] and slow.entered.is_set())
        await sender.stop()
    await task
    assert outbox.pending_count("slow") == 1


# --- retries and dead letters ---------------------------------------------------------------------


@pytest.mark.asyncio
async def test_temporary_failures_back_off_exponentially_up_to_the_cap(outbox: Outbox) -> None:
    """Without a retry_after, the waits are base * 2**(n-1), capped, jittered by the injected rng."""
    clock = Clock()
    channel = ScriptedChannel("telegram", TemporaryDeliveryError("502 Bad Gateway"))
    sender = Dispatcher(
        outbox, [channel], clock=clock, backoff_base_s=1, backoff_cap_s=8, rng=lambda: 0.5, max_age_s=1e9
    )
    await sender.submit(make_alert(1))
    waits: list[float | None] = []
    with capture_logs() as logs:
        for _ in range(6):
            (outcome,) = await sender.deliver_once()
            assert outcome.result == "retry"
            assert outcome.retry_in_s is not None
            assert outbox.next_attempt_at("telegram") == pytest.approx(clock.now + outcome.retry_in_s)
            assert await sender.deliver_once() == []  # not due before its time
            waits.append(outcome.retry_in_s)
            clock.now += outcome.retry_in_s
    # rng 0.5 puts each wait at 3/4 of its ceiling: ceilings 1, 2, 4, 8, 8, 8.
    assert waits == [0.75, 1.5, 3.0, 6.0, 6.0, 6.0]
    assert [line["attempt"] for line in logs if line["event"] == "alert.delivery_failed"] == [
        1,
        2,
        3,
        4,
        5,
        6,
    ]
    assert sender.counters()["telegram"].failed == 6


def test_jitter_stays_in_the_upper_half_of_the_ceiling(outbox: Outbox) -> None:
    """An rng of 0 gives half the ceiling, rng near 1 nearly all of it; huge attempt counts stay capped."""
    low = Dispatcher(outbox, [], backoff_base_s=2, backoff_cap_s=300, rng=lambda: 0.0)
    high = Dispatcher(outbox, [], backoff_base_s=2, backoff_cap_s=300, rng=lambda: 0.999)
    assert low.backoff(3) == 4.0
    assert high.backoff(3) == pytest.approx(7.996)
    assert low.backoff(10_000) == 150.0


@pytest.mark.asyncio
async def test_retry_after_is_honoured_exactly(outbox: Outbox) -> None:
    """A 429's retry_after replaces the backoff: not a moment sooner, and no jitter added."""
    clock = Clock()
    channel = ScriptedChannel(
        "telegram", TemporaryDeliveryError("429 Too Many Requests", retry_after=7.5), None
    )
    sender = dispatcher(outbox, channel, clock=clock)
    await sender.submit(make_alert(1))
    with capture_logs() as logs:
        (outcome,) = await sender.deliver_once()
        clock.now = NOW + 7.49
        early = await sender.deliver_once()
        clock.now = NOW + 7.5
        (retried,) = await sender.deliver_once()
    assert (outcome.result, outcome.retry_in_s) == ("retry", 7.5)
    assert early == []
    assert (retried.result, retried.attempt) == ("delivered", 2)
    (failed,) = [line for line in logs if line["event"] == "alert.delivery_failed"]
    assert failed["retry_in_s"] == 7.5
    assert failed["error"] == "TemporaryDeliveryError: 429 Too Many Requests"
    assert failed["log_level"] == "warning"


@pytest.mark.asyncio
async def test_rate_limits_do_not_grow_the_backoff(outbox: Outbox) -> None:
    """A burst of 429s then a 502 waits the base backoff: only failures without a named wait count.

    Every attempt still counts in ``attempts`` (the log lines, the history, the delivered outcome).
    """
    clock = Clock()
    rate_limited = TemporaryDeliveryError("429 Too Many Requests", retry_after=0.5)
    bad_gateway = TemporaryDeliveryError("502 Bad Gateway")
    channel = ScriptedChannel(
        "telegram", rate_limited, rate_limited, rate_limited, bad_gateway, rate_limited, bad_gateway, None
    )
    sender = Dispatcher(
        outbox, [channel], clock=clock, backoff_base_s=1, backoff_cap_s=300, rng=lambda: 0.5, max_age_s=1e9
    )
    await sender.submit(make_alert(1))
    waits: list[float | None] = []
    with capture_logs() as logs:
        while (outcome := (await sender.deliver_once())[0]).result == "retry":
            assert outcome.retry_in_s is not None
            waits.append(outcome.retry_in_s)
            clock.now += outcome.retry_in_s
    # rng 0.5 puts a backoff at 3/4 of its ceiling: the first 502 gets base 1 (not 2**3), the second 2.
    assert waits == [0.5, 0.5, 0.5, 0.75, 0.5, 1.5]
    assert (outcome.result, outcome.attempt) == ("delivered", 7)
    assert [line["attempt"] for line in logs if line["event"] == "alert.delivery_failed"] == [
        1,
        2,
        3,
        4,
        5,
        6,
    ]
    assert outbox.history(0)[0].deliveries[0].attempts == 7
    assert sender.counters()["telegram"].failed == 6


@pytest.mark.asyncio
async def test_a_permanent_error_is_dead_lettered_at_once(outbox: Outbox) -> None:
    """A 400-style error is never retried; the next alert of the channel goes out behind it."""
    clock = Clock()
    channel = ScriptedChannel("telegram", PermanentDeliveryError("400 Bad Request: chat not found"), None)
    sender = dispatcher(outbox, channel, clock=clock)
    await sender.submit(make_alert(1))
    await sender.submit(make_alert(2))
    with capture_logs() as logs:
        outcomes = await sender.deliver_once()
        clock.now += 3000
        assert await sender.deliver_once() == []
    assert [(o.alert_id, o.result) for o in outcomes] == [("alert-1", "dead"), ("alert-2", "delivered")]
    assert channel.attempts == ["alert-1", "alert-2"]
    (letter,) = outbox.dead_letters()
    assert (letter.alert_id, letter.attempts) == ("alert-1", 1)
    assert "chat not found" in letter.reason
    (line,) = [line for line in logs if line["event"] == "alert.dead_letter"]
    assert (line["reason"], line["channel"], line["log_level"]) == ("permanent", "telegram", "error")
    assert sender.counters()["telegram"].dead == 1


@pytest.mark.asyncio
async def test_an_alert_past_its_max_age_is_dead_lettered_not_sent(outbox: Outbox) -> None:
    """An hour-old alert goes to the dead letters with a log line and a counter; the channel never sees it."""
    clock = Clock()
    channel = ScriptedChannel("telegram", TemporaryDeliveryError("broker down"))
    sender = dispatcher(outbox, channel, clock=clock)
    await sender.submit(make_alert(1, created_at=NOW - 3601))
    await sender.submit(make_alert(2, created_at=NOW - 3500))
    with capture_logs() as logs:
        first = await sender.deliver_once()
        clock.now = NOW + 101  # alert-2 is past its hour when its retry comes due
        second = await sender.deliver_once()
    assert [(o.alert_id, o.result) for o in first] == [("alert-1", "dead"), ("alert-2", "retry")]
    assert [(o.alert_id, o.result) for o in second] == [("alert-2", "dead")]
    assert channel.attempts == ["alert-2"]
    assert [letter.alert_id for letter in outbox.dead_letters()] == ["alert-1", "alert-2"]
    assert all(letter.reason.startswith("expired") for letter in outbox.dead_letters())
    assert [line["reason"] for line in logs if line["event"] == "alert.dead_letter"] == ["expired", "expired"]
    counters = sender.counters()["telegram"]
    assert (counters.dead, counters.expired) == (2, 2)


@pytest.mark.asyncio
async def test_a_hanging_send_times_out_and_is_retried(outbox: Outbox) -> None:
    """Every send is bounded by the send timeout; running out of it counts as a temporary failure."""
    channel = HangingChannel()
    sender = Dispatcher(outbox, [channel], clock=Clock(), send_timeout_s=0.02, rng=lambda: 0.0)
    await sender.submit(make_alert(1))
    with capture_logs():
        (outcome,) = await sender.deliver_once()
    assert (outcome.result, outcome.error, outcome.retry_in_s) == ("retry", "timeout after 0.02 s", 0.5)
    assert outbox.pending_count() == 1


@pytest.mark.asyncio
async def test_a_channel_that_crashes_does_not_kill_the_loop(outbox: Outbox) -> None:
    """An unexpected exception is logged with its traceback and retried; the loop keeps running."""
    channel = ScriptedChannel("webhook", RuntimeError("a bug in the channel"), KeyError("x"), None)
    sender = Dispatcher(outbox, [channel], backoff_base_s=0.001)
    task = asyncio.create_task(sender.run(), name="dispatcher")
    with capture_logs() as logs:
        await sender.submit(make_alert(1, created_at=time.time()))
        await until(lambda: channel.sent == ["alert-1"])
        assert not task.done()
        await sender.submit(make_alert(2, created_at=time.time()))
        await until(lambda: channel.sent == ["alert-1", "alert-2"])
        await sender.stop()
    await task
    crashes = [line for line in logs if line["event"] == "alert.channel_crashed"]
    assert len(crashes) == 2
    assert all("exc_info" in line for line in crashes)
    errors = [line["error"] for line in logs if line["event"] == "alert.delivery_failed"]
    assert errors == ["RuntimeError: a bug in the channel", "KeyError: 'x'"]


@pytest.mark.asyncio
async def test_the_loop_survives_a_broken_outbox(outbox: Outbox) -> None:
    """An error from the database itself is logged and the worker tries again after a pause."""
    channel = ScriptedChannel("telegram")
    sender = Dispatcher(outbox, [channel])
    real_due = outbox.due
    calls = 0

    def flaky_due(now: float, limit: int = 100, *, channel: str | None = None) -> list[object]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OSError("disk I/O error")
        return real_due(now, limit, channel=channel)  # type: ignore[return-value] # narrowed for the test

    outbox.due = flaky_due  # type: ignore[method-assign,assignment] # our own object, one failing call
    await sender.submit(make_alert(1, created_at=time.time()))
    with capture_logs() as logs:
        task = asyncio.create_task(sender.run(), name="dispatcher")
        await until(lambda: channel.sent == ["alert-1"])
        await sender.stop()
    await task
    assert [line["event"] for line in logs if line["log_level"] == "error"] == ["dispatcher.error"]


# --- stopping and restarting ----------------------------------------------------------------------


@pytest.mark.asyncio
async def test_stop_lets_the_send_in_flight_finish(outbox: Outbox) -> None:
    """``stop`` waits for a send already under way, which is then marked delivered."""
    channel = ScriptedChannel("telegram", delay_s=0.05)
    sender = Dispatcher(outbox, [channel])
    task = asyncio.create_task(sender.run(), name="dispatcher")
    with capture_logs():
        await sender.submit(make_alert(1, created_at=time.time()))
        await sender.submit(make_alert(2, created_at=time.time()))
        await until(lambda: channel.in_flight == 1)
        assert not outbox.autocheckpoint  # the loop checkpoints on a worker thread meanwhile
        await sender.stop()
    await task
    assert channel.sent == ["alert-1"]
    assert outbox.pending_count() == 1  # alert-2 waits for the next start
    assert outbox.autocheckpoint  # handed back to SQLite once the loop's checkpoint thread is gone


@pytest.mark.asyncio
async def test_stop_is_bounded_when_a_send_hangs(outbox: Outbox) -> None:
    """A hanging send is cancelled after ``stop_timeout_s`` and stays pending."""
    channel = HangingChannel()
    sender = Dispatcher(outbox, [channel], stop_timeout_s=0.05)
    task = asyncio.create_task(sender.run(), name="dispatcher")
    with capture_logs() as logs:
        await sender.submit(make_alert(1, created_at=time.time()))
        await channel.entered.wait()
        started = time.monotonic()
        await sender.stop()
    await task
    assert time.monotonic() - started < 1.0
    assert outbox.pending_count() == 1
    assert "dispatcher.stop_timeout" in [line["event"] for line in logs]


@pytest.mark.asyncio
async def test_a_new_process_delivers_what_the_last_one_left_pending_once(tmp_path: Path) -> None:
    """Deliveries pending when the outbox closed go out after a reopen, each exactly once."""
    clock = Clock()
    with Outbox.for_state_dir(tmp_path) as first:
        down = ScriptedChannel("telegram", TemporaryDeliveryError("connection refused"))
        before = dispatcher(first, down, ScriptedChannel("mqtt"), clock=clock)
        for number in range(4):
            await before.submit(make_alert(number))
        with capture_logs():
            await before.deliver_once()
        assert first.pending_count() == 4

    clock.now += 2
    with Outbox.for_state_dir(tmp_path) as second:
        back = ScriptedChannel("telegram")
        mqtt = ScriptedChannel("mqtt")
        after = dispatcher(second, back, mqtt, clock=clock)
        with capture_logs():
            await after.drain(timeout=2)
            await after.drain(timeout=0.1)
        assert back.sent == [f"alert-{number}" for number in range(4)]
        assert mqtt.sent == []  # delivered by the first process already
        assert second.pending_count() == 0


CHILD = textwrap.dedent(
    """
    import asyncio, sys, time
    from monitor.alerts.model import Alert, AlertKind
    from monitor.notify.dispatcher import Dispatcher
    from monitor.notify.outbox import Outbox

    class Recording:
        type, min_level, accounts = "recording", "ok", None
        def __init__(self, name, journal):
            self.name, self.journal = name, open(journal, "a", buffering=1)
        async def start(self): pass
        async def close(self): pass
        async def send(self, alert):
            self.journal.write(alert.id + "\\n")  # reaches the OS before send returns

    class Hanging(Recording):
        async def send(self, alert):
            print("hanging", alert.id, flush=True)
            await asyncio.Event().wait()

    async def main(path, journal, count):
        outbox = Outbox(path)
        dispatcher = Dispatcher(outbox, [Recording("fast", journal), Hanging("telegram", journal)])
        for number in range(count):
            await dispatcher.submit(Alert(f"alert-{number}", AlertKind.FIRING, "main", "binanceusdm",
                                          "main", "critical", time.time()))
        await dispatcher.run()

    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
    """
)


@pytest.mark.asyncio
async def test_sigkill_mid_delivery_loses_nothing_and_marks_nothing_falsely(tmp_path: Path) -> None:
    """A process killed while a channel hangs leaves every undelivered alert pending, none lost.

    The child stores 20 alerts for a fast channel (which journals each send to a file) and a
    hanging one, and is killed with SIGKILL once the hanging send has begun. Every delivery the
    file marks delivered must be in the journal; every other one must still be pending. A new
    dispatcher on the same file then delivers each pending alert exactly once.
    """
    count = 20
    database = tmp_path / "outbox.sqlite3"
    journal = tmp_path / "sent.txt"
    journal.touch()
    env = {**os.environ, "PYTHONPATH": str(PROJECT)}
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CHILD,
        str(database),
        str(journal),
        str(count),
        stdout=asyncio.subprocess.PIPE,
        env=env,
        cwd=PROJECT,
    )
    try:
        assert child.stdout is not None
        async with asyncio.timeout(10):
            # The child's log lines (its structlog defaults print to stdout) come first.
            while (line := await child.stdout.readline()) and not line.startswith(b"hanging"):
                pass
        assert line.split() == [b"hanging", b"alert-0"]
        child.send_signal(signal.SIGKILL)
    finally:
        if child.returncode is None:
            child.kill()
        await child.wait()
    assert child.returncode == -signal.SIGKILL

    journaled = journal.read_text().split()
    with Outbox(database) as outbox:
        history = outbox.history(0)
        assert [record.alert.id for record in history] == [f"alert-{number}" for number in range(count)]
        states = {(record.alert.id, d.channel): d.state for record in history for d in record.deliveries}
        assert {state for (_, channel), state in states.items() if channel == "telegram"} == {"pending"}
        marked = [alert_id for (alert_id, channel), state in states.items() if state == "delivered"]
        assert set(marked) <= set(journaled)  # never marked delivered without the channel returning
        assert outbox.pending_count("telegram") == count

        telegram = ScriptedChannel("telegram")
        fast = ScriptedChannel("fast")
        restarted = Dispatcher(outbox, [fast, telegram])
        with capture_logs():
            await restarted.drain(timeout=5)
        assert telegram.sent == [f"alert-{number}" for number in range(count)]
        assert sorted(set(fast.sent) | set(marked)) == sorted(f"alert-{number}" for number in range(count))
        assert not set(fast.sent) & set(marked)
        assert outbox.pending_count() == 0


# --- the log channel ------------------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("kind", "level", "log_level"),
    [
        (AlertKind.FIRING, "danger", "warning"),
        (AlertKind.FIRING, "liquidation", "warning"),
        (AlertKind.FIRING, "warning", "info"),
        (AlertKind.FAST_FALL, "critical", "warning"),
        (AlertKind.BLIND, "blind", "warning"),
        (AlertKind.MARGIN_CALL, "margin_call", "warning"),
        (AlertKind.REPEAT, "critical", "info"),
        (AlertKind.RECOVERED, "ok", "info"),
        (AlertKind.TEST, "ok", "info"),
    ],
    ids=str,
)
async def test_the_log_channel_picks_the_line_severity(kind: AlertKind, level: str, log_level: str) -> None:
    """Trouble arriving at danger or worse is a warning line; repeats, recoveries and the rest are info."""
    with capture_logs() as logs:
        await LogChannel().send(make_alert(1, kind=kind, level=level))
    (line,) = logs
    assert (line["event"], line["log_level"], line["level"]) == ("alert", log_level, level)


@pytest.mark.asyncio
async def test_the_log_channel_flattens_the_alert_into_one_line() -> None:
    """The line carries the alert's fields, positions and action as plain JSON values, no empty ones."""
    alert = Alert(
        id="a1",
        kind=AlertKind.FIRING,
        account="main",
        exchange="binanceusdm",
        key="main/BTC/USDT:USDT/long",
        level="critical",
        created_at=NOW,
        previous_level="danger",
        margin_ratio_pct=118.2,
        threshold_pct=120.0,
        margin_balance=9_000.0,
        maintenance_margin=7_614.2,
        positions=(
            PositionAtRisk("BTC/USDT:USDT", "long", "isolated", 90_000.0, 84_000.0, 6.67, 100.0, 84_000.0),
        ),
        action=SuggestedAction(200.0, 6_228.4),
        summary="main BTC long: 118.2% (critical)",
    )
    with capture_logs() as logs:
        await LogChannel().send(alert)
    (line,) = logs
    assert line == {
        "event": "alert",
        "log_level": "warning",
        "alert_id": "a1",
        "kind": "firing",
        "account": "main",
        "exchange": "binanceusdm",
        "key": "main/BTC/USDT:USDT/long",
        "level": "critical",
        "previous_level": "danger",
        "margin_ratio_pct": 118.2,
        "threshold_pct": 120.0,
        "margin_balance": 9_000.0,
        "maintenance_margin": 7_614.2,
        "summary": "main BTC long: 118.2% (critical)",
        "positions": [
            {
                "symbol": "BTC/USDT:USDT",
                "side": "long",
                "margin_mode": "isolated",
                "mark_price": 90_000.0,
                "liquidation_price": 84_000.0,
                "liquidation_distance_pct": 6.67,
                "next_threshold_pct": 100.0,
                "next_threshold_price": 84_000.0,
            }
        ],
        "action": {
            "target_ratio_pct": 200.0,
            "margin_to_add": 6_228.4,
            "close_symbol": None,
            "close_fraction": None,
        },
        "created_at": NOW,
    }
