"""The outbox: alerts stored before any attempt, idempotent, ordered, durable across a reopen.

Every test uses a real SQLite file under ``tmp_path`` (never ``:memory:``), because what matters is
what another connection, or the next process, finds in the file.
"""

from __future__ import annotations

import json
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from monitor.alerts.model import Alert, AlertKind, PositionAtRisk, SuggestedAction
from monitor.notify.outbox import FILENAME, SCHEMA_VERSION, Outbox

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

NOW = 1_800_000_000.0


class Clock:
    """A settable Unix clock."""

    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        """The time it is set to."""
        return self.now


def make_alert(
    number: int, *, account: str = "main", created_at: float = NOW, level: str = "danger"
) -> Alert:
    """A firing alert with every optional part filled in, so the JSON round trip is exercised."""
    return Alert(
        id=f"alert-{number}",
        kind=AlertKind.FIRING,
        account=account,
        exchange="binanceusdm",
        key=account,
        level=level,
        created_at=created_at,
        previous_level="warning",
        margin_ratio_pct=128.5,
        threshold_pct=130.0,
        margin_balance=10_234.5,
        maintenance_margin=7_965.0,
        positions=(
            PositionAtRisk("BTC/USDT:USDT", "long", "cross", 91_000.0, 80_100.0, 11.98, 120.0, 88_400.0),
        ),
        action=SuggestedAction(200.0, 5_695.5, "BTC/USDT:USDT", 0.36),
        summary="main: margin ratio 128.5% (danger)",
        details={"fast_fall_points": None},
    )


@pytest.fixture
def clock() -> Clock:
    """The outbox's clock, at ``NOW``."""
    return Clock()


@pytest.fixture
def outbox(tmp_path: Path, clock: Clock) -> Iterator[Outbox]:
    """An outbox in a fresh state directory."""
    with Outbox.for_state_dir(tmp_path, clock=clock) as opened:
        yield opened


def test_the_file_lives_in_the_state_directory_in_wal_mode(tmp_path: Path) -> None:
    """``for_state_dir`` puts ``outbox.sqlite3`` in the state directory, journaled by WAL."""
    with Outbox.for_state_dir(tmp_path / "state"):
        pass
    path = tmp_path / "state" / FILENAME
    assert path.exists()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_an_added_alert_is_in_the_file_before_any_attempt(outbox: Outbox, tmp_path: Path) -> None:
    """Another connection sees the alert and one pending delivery per channel as soon as add returns."""
    assert outbox.add(make_alert(1), ["log", "telegram"])
    with Outbox.for_state_dir(tmp_path) as other:
        assert other.pending_count() == 2
        due = other.due(NOW, 10)
    assert [(delivery.channel, delivery.attempts) for delivery in due] == [("log", 0), ("telegram", 0)]
    assert due[0].alert == make_alert(1)  # the JSON round trip is exact


def test_adding_the_same_id_twice_stores_nothing_new(outbox: Outbox) -> None:
    """Idempotent on the alert id, whatever the channels of the second add."""
    assert outbox.add(make_alert(1), ["log"])
    assert not outbox.add(make_alert(1), ["log", "telegram"])
    assert outbox.pending_count() == 1
    assert len(outbox.history(0)) == 1


def test_add_is_atomic(outbox: Outbox) -> None:
    """When one delivery row cannot be written, the alert is not stored either."""
    with pytest.raises(sqlite3.IntegrityError):
        outbox.add(make_alert(1), ["log", None])  # type: ignore[list-item] # a NULL channel breaks the insert
    assert outbox.history(0) == []
    assert outbox.pending_count() == 0
    assert outbox.add(make_alert(1), ["log"])  # and the id is still free


def test_due_is_oldest_first(outbox: Outbox) -> None:
    """Deliveries come out in the order they were stored, across channels."""
    for number in range(5):
        outbox.add(make_alert(number), ["log", "mqtt"])
    due = outbox.due(NOW, 100)
    assert [(d.alert.id, d.channel) for d in due] == [
        (f"alert-{number}", channel) for number in range(5) for channel in ("log", "mqtt")
    ]
    assert [d.alert.id for d in outbox.due(NOW, 3, channel="mqtt")] == ["alert-0", "alert-1", "alert-2"]


def test_a_delivery_waiting_for_its_retry_holds_back_its_channel_only(outbox: Outbox) -> None:
    """Strict FIFO per channel: younger deliveries wait behind the retry; other channels do not."""
    outbox.add(make_alert(1), ["telegram", "mqtt"])
    outbox.add(make_alert(2), ["telegram", "mqtt"])
    first = outbox.due(NOW, 1, channel="telegram")[0]
    outbox.failed(first, "TemporaryDeliveryError: 502", NOW + 10)

    assert [(d.alert.id, d.channel) for d in outbox.due(NOW + 5, 10)] == [
        ("alert-1", "mqtt"),
        ("alert-2", "mqtt"),
    ]
    assert outbox.next_attempt_at("telegram") == NOW + 10
    retried = outbox.due(NOW + 10, 10, channel="telegram")
    assert [(d.alert.id, d.attempts, d.last_error) for d in retried] == [
        ("alert-1", 1, "TemporaryDeliveryError: 502"),
        ("alert-2", 0, None),
    ]


def test_a_rate_limited_attempt_counts_as_an_attempt_not_a_failure(outbox: Outbox) -> None:
    """``failures`` (the backoff's exponent) skips the attempts whose wait the peer named."""
    outbox.add(make_alert(1), ["telegram"])
    for rate_limited in (True, True, False, True):
        (delivery,) = outbox.due(NOW, 1)
        outbox.failed(delivery, "TemporaryDeliveryError: 429", NOW, rate_limited=rate_limited)
    (delivery,) = outbox.due(NOW, 1)
    assert (delivery.attempts, delivery.failures, delivery.attempt) == (4, 1, 5)
    assert outbox.history(0)[0].deliveries[0].attempts == 4


def test_delivered_deliveries_leave_the_queue_once(outbox: Outbox, clock: Clock) -> None:
    """A delivered row is no longer due; marking it twice changes nothing."""
    outbox.add(make_alert(1), ["log"])
    (delivery,) = outbox.due(NOW, 10)
    clock.now = NOW + 1
    assert outbox.delivered(delivery)
    assert not outbox.delivered(delivery)
    assert outbox.due(NOW + 100, 10) == []
    assert outbox.pending_count() == 0
    (status,) = outbox.history(0)[0].deliveries
    assert (status.state, status.attempts, status.finished_at) == ("delivered", 1, NOW + 1)


def test_a_dead_delivery_is_filed_with_its_reason(outbox: Outbox, clock: Clock) -> None:
    """``dead`` moves the delivery to the dead-letter table, with the reason and the attempt count."""
    outbox.add(make_alert(1), ["telegram", "log"])
    telegram = outbox.due(NOW, 10, channel="telegram")[0]
    outbox.failed(telegram, "TemporaryDeliveryError: 503", NOW)
    telegram = outbox.due(NOW, 10, channel="telegram")[0]
    clock.now = NOW + 2
    assert outbox.dead(telegram, "PermanentDeliveryError: 400 chat not found", attempted=True)
    assert not outbox.dead(telegram, "again")

    (letter,) = outbox.dead_letters()
    assert (letter.alert_id, letter.channel, letter.attempts, letter.reason, letter.dead_at) == (
        "alert-1",
        "telegram",
        2,
        "PermanentDeliveryError: 400 chat not found",
        NOW + 2,
    )
    assert outbox.pending_count() == 1
    assert outbox.pending_count("telegram") == 0
    assert outbox.counts() == {
        "log": {"pending": 1, "delivered": 0, "dead": 0},
        "telegram": {"pending": 0, "delivered": 0, "dead": 1},
    }


def test_history_filters_by_time_and_account(outbox: Outbox) -> None:
    """``history`` returns alerts from ``since`` on, oldest first, optionally of one account."""
    outbox.add(make_alert(1, created_at=NOW - 90_000), ["log"])
    outbox.add(make_alert(2, created_at=NOW - 60, account="main"), ["log", "telegram"])
    outbox.add(make_alert(3, created_at=NOW - 30, account="spare"), [])

    recent = outbox.history(NOW - 86_400)
    assert [record.alert.id for record in recent] == ["alert-2", "alert-3"]
    assert [status.channel for status in recent[0].deliveries] == ["log", "telegram"]
    assert recent[1].deliveries == ()
    assert [record.alert.id for record in outbox.history(NOW - 86_400, account="spare")] == ["alert-3"]


def test_pruning_keeps_what_is_still_pending(outbox: Outbox) -> None:
    """Old finished alerts go; an old alert with a pending delivery stays until it is done."""
    outbox.add(make_alert(1, created_at=NOW - 40 * 86_400), ["log"])
    outbox.add(make_alert(2, created_at=NOW - 40 * 86_400), ["log"])
    outbox.add(make_alert(3, created_at=NOW - 60), ["log"])
    outbox.delivered(outbox.due(NOW, 1)[0])

    assert outbox.prune() == 1
    assert [record.alert.id for record in outbox.history(0)] == ["alert-2", "alert-3"]
    assert outbox.pending_count() == 2


def test_a_reopened_outbox_resumes_where_the_last_one_stopped(tmp_path: Path) -> None:
    """Pending deliveries, attempt counts and retry times survive closing and reopening the file."""
    with Outbox.for_state_dir(tmp_path) as first:
        for number in range(3):
            first.add(make_alert(number), ["telegram"])
        done, retrying, _ = first.due(NOW, 10)
        first.delivered(done)
        first.failed(retrying, "TemporaryDeliveryError: timeout", NOW + 30)

    with Outbox.for_state_dir(tmp_path) as second:
        assert second.pending_count() == 2
        assert second.due(NOW, 10) == []  # alert-1 waits for its retry and holds alert-2 behind it
        resumed = second.due(NOW + 30, 10)
        assert [(d.alert.id, d.attempts) for d in resumed] == [("alert-1", 1), ("alert-2", 0)]


# The schema of version 1, as it shipped: ``deliveries`` had no ``failures`` column.
V1_SCHEMA = """
CREATE TABLE IF NOT EXISTS alerts (
    id TEXT PRIMARY KEY,
    account TEXT NOT NULL,
    kind TEXT NOT NULL,
    level TEXT NOT NULL,
    created_at REAL NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS alerts_created ON alerts (created_at);
CREATE TABLE IF NOT EXISTS deliveries (
    seq INTEGER PRIMARY KEY,
    alert_id TEXT NOT NULL REFERENCES alerts (id) ON DELETE CASCADE,
    channel TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'dead')),
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    last_error TEXT,
    finished_at REAL,
    UNIQUE (alert_id, channel)
);
CREATE INDEX IF NOT EXISTS deliveries_pending ON deliveries (seq) WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS deliveries_pending_channel ON deliveries (channel, seq) WHERE state = 'pending';
CREATE TABLE IF NOT EXISTS dead_letters (
    seq INTEGER PRIMARY KEY,
    delivery_seq INTEGER NOT NULL UNIQUE REFERENCES deliveries (seq) ON DELETE CASCADE,
    alert_id TEXT NOT NULL,
    channel TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    reason TEXT NOT NULL,
    dead_at REAL NOT NULL
);
PRAGMA user_version = 1;
"""


def test_a_version_1_file_is_upgraded_in_place_and_keeps_its_deliveries(tmp_path: Path) -> None:
    """An outbox written before ``failures`` existed gains the column and resumes where it stood.

    The old count of attempts becomes the failure count of what is pending, so an upgraded
    delivery never retries sooner than the old program would have.
    """
    with sqlite3.connect(tmp_path / FILENAME) as db:
        db.executescript(V1_SCHEMA)
        db.executemany(
            "INSERT INTO alerts (id, account, kind, level, created_at, body) VALUES (?, ?, ?, ?, ?, ?)",
            [
                (a.id, a.account, a.kind.value, a.level, a.created_at, json.dumps(a.to_dict()))
                for a in map(make_alert, range(3))
            ],
        )
        db.executemany(
            "INSERT INTO deliveries (alert_id, channel, state, attempts, next_attempt_at, last_error, "
            "finished_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                ("alert-0", "telegram", "delivered", 1, NOW - 60, None, NOW - 59),
                ("alert-1", "telegram", "pending", 3, NOW + 30, "TemporaryDeliveryError: 502", None),
                ("alert-2", "telegram", "pending", 0, NOW - 10, None, None),
            ],
        )
    db.close()

    with Outbox.for_state_dir(tmp_path) as upgraded:
        assert upgraded.pending_count() == 2
        assert upgraded.due(NOW, 10) == []  # alert-1 still waits for its retry, alert-2 behind it
        resumed = upgraded.due(NOW + 30, 10)
        assert [(d.alert, d.attempts, d.failures, d.last_error) for d in resumed] == [
            (make_alert(1), 3, 3, "TemporaryDeliveryError: 502"),
            (make_alert(2), 0, 0, None),
        ]
        assert upgraded.failed(resumed[0], "TemporaryDeliveryError: 429", NOW + 31, rate_limited=True)
        assert upgraded.delivered(resumed[1])
        (done,) = upgraded.history(0)[0].deliveries
        assert (done.state, done.attempts) == ("delivered", 1)

    with Outbox.for_state_dir(tmp_path) as reopened:  # a second open finds nothing left to upgrade
        (delivery,) = reopened.due(NOW + 31, 10)
        assert (delivery.alert.id, delivery.attempts, delivery.failures) == ("alert-1", 4, 3)
    with sqlite3.connect(tmp_path / FILENAME) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    db.close()


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    """A file written by a newer version is not silently reused by an older one."""
    Outbox.for_state_dir(tmp_path).close()
    with sqlite3.connect(tmp_path / FILENAME) as db:
        db.execute("PRAGMA user_version = 99")
    with pytest.raises(RuntimeError, match="newer"):
        Outbox.for_state_dir(tmp_path)


@settings(max_examples=40, deadline=None)
@given(
    script=st.lists(
        st.tuples(st.sampled_from(["log", "telegram", "mqtt"]), st.sampled_from(["ok", "retry", "dead"])),
        max_size=30,
    )
)
def test_every_delivery_ends_exactly_once_in_order(script: list[tuple[str, str]]) -> None:
    """Invariant: whatever the outcomes, each channel's deliveries finish in the order they were added.

    Each step adds an alert for every channel, then the first due delivery of the step's channel
    gets the step's outcome. Finally every retry comes due and everything is delivered.
    """
    outbox = Outbox(":memory:", clock=Clock())
    finished: dict[str, list[str]] = {"log": [], "telegram": [], "mqtt": []}
    now = NOW
    for number, (channel, outcome) in enumerate(script):
        outbox.add(make_alert(number), ["log", "telegram", "mqtt"])
        due = outbox.due(now, 1, channel=channel)
        if not due:
            continue
        if outcome == "ok":
            outbox.delivered(due[0])
            finished[channel].append(due[0].alert.id)
        elif outcome == "dead":
            outbox.dead(due[0], "gone")
            finished[channel].append(due[0].alert.id)
        else:
            outbox.failed(due[0], "later", now + 1)
        now += 0.5
    while due := outbox.due(now + 3600, 100):
        for delivery in due:
            outbox.delivered(delivery)
            finished[delivery.channel].append(delivery.alert.id)
    expected = [f"alert-{number}" for number in range(len(script))]
    assert finished == {"log": expected, "telegram": expected, "mqtt": expected}
    assert outbox.pending_count() == 0


def test_a_checkpoint_from_another_thread_copies_the_wal(outbox: Outbox) -> None:
    """With automatic checkpoints off, ``checkpoint`` (on its own connection) moves the WAL's pages."""
    outbox.autocheckpoint = False
    for number in range(20):
        outbox.add(make_alert(number), ["log", "telegram"])
    with ThreadPoolExecutor(max_workers=1) as pool:
        copied = pool.submit(outbox.checkpoint).result()
    assert copied > 0
    assert outbox.pending_count() == 40
    with Outbox(":memory:") as memory:
        assert memory.checkpoint() == 0
