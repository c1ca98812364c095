"""The durable outbox: every alert and its per-channel deliveries, in SQLite, before any attempt.

An alert is written with one delivery row per channel in a single transaction before anything is
sent; a delivery is marked ``delivered`` only after its channel returned. A process killed at any
point (SIGKILL, OOM, a crash) therefore loses nothing: on restart the pending rows are still there
and go out again. Delivery is at-least-once; the alert id travels with every payload so receivers
drop the duplicates a kill between "sent" and "marked" can cause.

Schema (``PRAGMA user_version`` = 2)::

    alerts(id TEXT PK, account, kind, level, created_at REAL, body TEXT)     -- body: Alert.to_dict JSON
    deliveries(seq INTEGER PK, alert_id -> alerts, channel, state, attempts, failures,
               next_attempt_at REAL, last_error, finished_at REAL, UNIQUE(alert_id, channel))
    dead_letters(seq INTEGER PK, delivery_seq -> deliveries, alert_id, channel, attempts, reason, dead_at)

``state`` is ``pending``, ``delivered`` or ``dead``. ``attempts`` counts every attempt (users see
it); ``failures`` only the failed ones whose wait was ours to choose, not the peer's (a 429's
``retry_after``): it drives the exponential backoff, which a burst of rate limiting must not grow.
Version 1 had no ``failures``; opening such a file adds it in place.

``seq`` is insertion order: per channel, deliveries go out by ascending ``seq``, and a pending
delivery waiting for its retry holds back the younger ones of the same channel (a "recovered"
notice must never overtake the alert it ends, and a channel's rate limit applies to its whole
queue). Partial indexes cover only the pending rows, so the queries the dispatcher runs stay cheap
however much history is kept.

Durability settings: WAL journal with ``synchronous=NORMAL``. In WAL mode a commit is complete once
it is written to the WAL file, which the OS holds even if the process is killed the next
instant, so NORMAL is durable against every process death. What it does not survive is a power loss
or kernel crash in the second before the OS flushes, which ``FULL`` (an fsync per commit) would.
A monitor is down during a power loss anyway, and the alert engine re-evaluates the account
when it is back; an fsync per write would instead cost several times the throughput (see
``bench/outbox.py``) and put disk-latency stalls on the event loop. ``synchronous`` is a
parameter for whoever runs on hardware where that trade is wrong.

Calls are synchronous and meant to be made inline on the event loop, not through
``asyncio.to_thread``: each is one small transaction (about 0.1-0.3 ms without an fsync), less than
the thread hop costs (``bench/outbox.py`` measures both), and one connection used from one thread
needs no lock. The only fsyncs left are WAL checkpoints (about 5 ms here, every ~90 alerts when
SQLite runs them inside a commit). ``checkpoint`` runs one on a connection of its own and is safe to
call from another thread; while the dispatcher runs, it turns SQLite's automatic checkpoints off
(``autocheckpoint``) and checkpoints from a worker thread every second instead, so the event loop
never waits for the disk.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Self

from monitor.alerts.model import Alert

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from types import TracebackType

#: The name of the outbox file inside the state directory.
FILENAME = "outbox.sqlite3"

#: The schema version written to ``PRAGMA user_version``.
SCHEMA_VERSION = 2

#: Finished alerts are kept this long for ``margin-monitor alerts --since``, then pruned.
DEFAULT_RETENTION_S = 30 * 86_400.0

#: How long a write waits for another process (``margin-monitor alerts`` reading) before failing.
BUSY_TIMEOUT_MS = 5_000

#: The WAL file is truncated back to this size after a checkpoint (a burst may have grown it).
JOURNAL_SIZE_LIMIT = 64 * 1024 * 1024

#: SQLite's own automatic checkpoint threshold, in pages (its default).
AUTOCHECKPOINT_PAGES = 1000

#: Error texts stored in the table are cut to this length: an HTML error page is not a reason.
MAX_ERROR_CHARS = 500

Synchronous = Literal["NORMAL", "FULL"]
State = Literal["pending", "delivered", "dead"]

_SCHEMA = """
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
    failures INTEGER NOT NULL DEFAULT 0,
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
"""

# Per channel, oldest first, stopping at the first pending delivery that is not due yet: the
# NOT EXISTS keeps a younger delivery behind an older one of its channel that waits for a retry.
_DUE = """
SELECT d.seq, d.channel, d.attempts, d.next_attempt_at, d.last_error, d.failures, a.id, a.body
FROM deliveries AS d JOIN alerts AS a ON a.id = d.alert_id
WHERE d.state = 'pending' AND d.next_attempt_at <= :now {channel}
  AND NOT EXISTS (
    SELECT 1 FROM deliveries AS o
    WHERE o.state = 'pending' AND o.channel = d.channel AND o.seq < d.seq AND o.next_attempt_at > :now
  )
ORDER BY d.seq
LIMIT :limit
"""


_HISTORY = """
SELECT a.id, a.body, d.channel, d.state, d.attempts, d.next_attempt_at, d.last_error, d.finished_at
FROM alerts AS a LEFT JOIN deliveries AS d ON d.alert_id = a.id
WHERE a.created_at >= ? ORDER BY a.created_at, a.rowid, d.seq
"""
_HISTORY_OF_ACCOUNT = _HISTORY.replace("WHERE a.created_at >= ?", "WHERE a.created_at >= ? AND a.account = ?")


@dataclass(frozen=True, slots=True)
class Delivery:
    """One alert on its way to one channel, as read by ``Outbox.due``.

    ``seq`` identifies the row and orders deliveries (insertion order); ``attempts`` counts the
    attempts already made, so the one about to be made is ``attempt``; ``failures`` counts those of
    them that failed without the peer naming a wait (the backoff's exponent).
    """

    seq: int
    alert: Alert
    channel: str
    attempts: int
    next_attempt_at: float
    last_error: str | None = None
    failures: int = 0

    @property
    def attempt(self) -> int:
        """The number of the attempt about to be made (1 for the first)."""
        return self.attempts + 1


@dataclass(frozen=True, slots=True)
class DeliveryStatus:
    """Where one channel's delivery of an alert stands (for ``history``)."""

    channel: str
    state: State
    attempts: int
    next_attempt_at: float
    last_error: str | None
    finished_at: float | None


@dataclass(frozen=True, slots=True)
class AlertRecord:
    """An alert as the history shows it: the alert and each channel's delivery."""

    alert: Alert
    deliveries: tuple[DeliveryStatus, ...]


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A delivery given up on, and why."""

    alert_id: str
    channel: str
    attempts: int
    reason: str
    dead_at: float


class Outbox:
    """Alerts and their per-channel deliveries in one SQLite file (see the module docstring).

    ``path`` is the database file (``<state_dir>/outbox.sqlite3``; ``for_state_dir`` builds it) or
    ``":memory:"``. ``clock`` gives Unix seconds for the times the outbox stamps itself. Not safe
    to share between threads: use it from the event loop's thread only.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        clock: Callable[[], float] = time.time,
        synchronous: Synchronous = "NORMAL",
        retention_s: float = DEFAULT_RETENTION_S,
    ) -> None:
        if synchronous not in ("NORMAL", "FULL"):
            raise ValueError(f"synchronous must be NORMAL or FULL, got {synchronous!r}")
        self.path = path
        self._clock = clock
        self.retention_s = retention_s
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # Autocommit mode (isolation_level=None): every write below opens its own explicit
        # transaction, so nothing is ever left half-committed by the module's implicit BEGINs.
        self._db = sqlite3.connect(path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute(f"PRAGMA synchronous = {synchronous}")
        self._db.execute("PRAGMA foreign_keys = ON")
        self._db.execute(f"PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT}")
        self._autocheckpoint = True
        self._checkpointer: sqlite3.Connection | None = None
        self._checkpoint_lock = threading.Lock()
        self._create_schema()

    @classmethod
    def for_state_dir(cls, state_dir: str | Path, **options: Any) -> Outbox:  # noqa: ANN401 - passed on
        """The outbox of a state directory: ``<state_dir>/outbox.sqlite3``."""
        return cls(Path(state_dir) / FILENAME, **options)

    def _create_schema(self) -> None:
        (version,) = self._db.execute("PRAGMA user_version").fetchone()
        if version > SCHEMA_VERSION:
            raise RuntimeError(
                f"{self.path}: outbox schema version {version} is newer than this program's "
                f"{SCHEMA_VERSION}; run the newer version or move the file aside"
            )
        # executescript commits on its own; the statements are idempotent (IF NOT EXISTS).
        self._db.executescript(_SCHEMA)
        if version < SCHEMA_VERSION:
            self._upgrade()

    def _upgrade(self) -> None:
        """Bring a version 1 file (or a new one) to ``SCHEMA_VERSION``, in one transaction."""
        with self._transaction():
            # Read inside the transaction: another process may have upgraded the file meanwhile.
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(deliveries)")}
            if "failures" not in columns:
                self._db.execute("ALTER TABLE deliveries ADD COLUMN failures INTEGER NOT NULL DEFAULT 0")
                # Version 1 counted rate-limited attempts as failures too. Taking its count as is
                # means an upgraded delivery never retries sooner than it would have before.
                self._db.execute("UPDATE deliveries SET failures = attempts WHERE state = 'pending'")
            self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    # --- writing --------------------------------------------------------------------------------

    def add(self, alert: Alert, channels: Iterable[str]) -> bool:
        """Store ``alert`` and one pending delivery per channel, atomically; False if already stored.

        Idempotent on ``alert.id``: a second add of the same id stores nothing, whatever its channels,
        so an engine that re-emits an alert after a restart cannot have it sent twice.
        """
        return self.add_many([(alert, channels)])[0]

    def add_many(self, items: Iterable[tuple[Alert, Iterable[str]]]) -> list[bool]:
        """``add`` for several alerts in one transaction (one commit: a burst of alerts is one write).

        All or nothing: if any fails to store, none is stored and the error is raised.
        """
        now = self._clock()
        rows = [
            (alert, json.dumps(alert.to_dict(), separators=(",", ":"), allow_nan=False), channels)
            for alert, channels in items
        ]
        added: list[bool] = []
        with self._transaction():
            for alert, body, channels in rows:
                cursor = self._db.execute(
                    "INSERT OR IGNORE INTO alerts (id, account, kind, level, created_at, body) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (alert.id, alert.account, alert.kind.value, alert.level, alert.created_at, body),
                )
                added.append(cursor.rowcount == 1)
                if cursor.rowcount == 1:
                    self._db.executemany(
                        "INSERT INTO deliveries (alert_id, channel, next_attempt_at) VALUES (?, ?, ?)",
                        [(alert.id, channel, now) for channel in dict.fromkeys(channels)],
                    )
        return added

    def delivered(self, delivery: Delivery) -> bool:
        """Mark ``delivery`` done (its channel returned); False if it was no longer pending."""
        return self.delivered_many([delivery])[0]

    def delivered_many(self, deliveries: Iterable[Delivery]) -> list[bool]:
        """``delivered`` for several deliveries in one transaction (a window a channel sent together)."""
        now = self._clock()
        marked: list[bool] = []
        with self._transaction():
            for delivery in deliveries:
                cursor = self._db.execute(
                    "UPDATE deliveries SET state = 'delivered', attempts = attempts + 1, finished_at = ? "
                    "WHERE seq = ? AND state = 'pending'",
                    (now, delivery.seq),
                )
                marked.append(cursor.rowcount == 1)
        return marked

    def failed(
        self, delivery: Delivery, error: str, next_attempt_at: float, *, rate_limited: bool = False
    ) -> bool:
        """Record a failed attempt and when to try again; False if it was no longer pending.

        ``rate_limited``: the peer named the wait (a 429's ``retry_after``), so the attempt counts
        in ``attempts`` but not in ``failures``.
        """
        with self._transaction():
            cursor = self._db.execute(
                "UPDATE deliveries SET attempts = attempts + 1, failures = failures + ?, last_error = ?, "
                "next_attempt_at = ? WHERE seq = ? AND state = 'pending'",
                (int(not rate_limited), error[:MAX_ERROR_CHARS], next_attempt_at, delivery.seq),
            )
        return cursor.rowcount == 1

    def dead(self, delivery: Delivery, reason: str, *, attempted: bool = False) -> bool:
        """Give up on ``delivery``: mark it dead and file it in ``dead_letters`` with ``reason``.

        ``attempted`` says whether an attempt was just made (a permanent error) or not (too old to
        send). False if it was no longer pending.
        """
        now = self._clock()
        reason = reason[:MAX_ERROR_CHARS]
        with self._transaction():
            cursor = self._db.execute(
                "UPDATE deliveries SET state = 'dead', attempts = attempts + ?, last_error = ?, "
                "finished_at = ? WHERE seq = ? AND state = 'pending' RETURNING attempts",
                (int(attempted), reason, now, delivery.seq),
            )
            row = cursor.fetchone()
            if row is None:
                return False
            self._db.execute(
                "INSERT INTO dead_letters (delivery_seq, alert_id, channel, attempts, reason, dead_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (delivery.seq, delivery.alert.id, delivery.channel, row[0], reason, now),
            )
        return True

    def prune(self, before: float | None = None) -> int:
        """Delete alerts created before ``before`` (default: now less the retention) with nothing pending.

        Returns how many alerts went. Their deliveries and dead letters go with them.
        """
        cutoff = self._clock() - self.retention_s if before is None else before
        with self._transaction():
            cursor = self._db.execute(
                "DELETE FROM alerts WHERE created_at < ? AND NOT EXISTS "
                "(SELECT 1 FROM deliveries AS d WHERE d.alert_id = alerts.id AND d.state = 'pending')",
                (cutoff,),
            )
        return cursor.rowcount

    # --- reading --------------------------------------------------------------------------------

    def due(self, now: float, limit: int = 100, *, channel: str | None = None) -> list[Delivery]:
        """Pending deliveries whose next attempt time has come, oldest first.

        Per channel the queue is strict: a delivery is due only if no older pending delivery of its
        channel is still waiting for its retry time. ``channel`` restricts the answer to one channel.
        """
        sql = _DUE.format(channel="AND d.channel = :channel" if channel is not None else "")
        rows = self._db.execute(sql, {"now": now, "limit": limit, "channel": channel}).fetchall()
        alerts: dict[str, Alert] = {}
        deliveries: list[Delivery] = []
        for seq, channel_name, attempts, next_attempt_at, last_error, failures, alert_id, body in rows:
            alert = alerts.get(alert_id)
            if alert is None:
                alert = alerts[alert_id] = Alert.from_dict(json.loads(body))
            deliveries.append(
                Delivery(seq, alert, channel_name, attempts, next_attempt_at, last_error, failures)
            )
        return deliveries

    def next_attempt_at(self, channel: str) -> float | None:
        """When the oldest pending delivery of ``channel`` is due (None when nothing is pending)."""
        row = self._db.execute(
            "SELECT next_attempt_at FROM deliveries WHERE state = 'pending' AND channel = ? "
            "ORDER BY seq LIMIT 1",
            (channel,),
        ).fetchone()
        return None if row is None else float(row[0])

    def pending_count(self, channel: str | None = None) -> int:
        """How many deliveries are still pending (of ``channel``, or of every channel)."""
        if channel is None:
            row = self._db.execute("SELECT count(*) FROM deliveries WHERE state = 'pending'").fetchone()
        else:
            row = self._db.execute(
                "SELECT count(*) FROM deliveries WHERE state = 'pending' AND channel = ?", (channel,)
            ).fetchone()
        return int(row[0])

    def counts(self) -> dict[str, dict[State, int]]:
        """Deliveries per channel and state, over the retained history (the durable counters)."""
        result: dict[str, dict[State, int]] = {}
        for channel, state, count in self._db.execute(
            "SELECT channel, state, count(*) FROM deliveries GROUP BY channel, state ORDER BY channel"
        ):
            result.setdefault(channel, {"pending": 0, "delivered": 0, "dead": 0})[state] = count
        return result

    def history(self, since: float, account: str | None = None) -> list[AlertRecord]:
        """Alerts created at or after ``since`` (Unix seconds), oldest first, with their deliveries."""
        sql = _HISTORY if account is None else _HISTORY_OF_ACCOUNT
        parameters: tuple[Any, ...] = (since,) if account is None else (since, account)
        records: dict[str, tuple[Alert, list[DeliveryStatus]]] = {}
        for alert_id, body, channel, state, attempts, next_at, error, finished in self._db.execute(
            sql, parameters
        ):
            if alert_id not in records:
                records[alert_id] = (Alert.from_dict(json.loads(body)), [])
            if channel is not None:
                records[alert_id][1].append(
                    DeliveryStatus(channel, state, attempts, next_at, error, finished)
                )
        return [AlertRecord(alert, tuple(statuses)) for alert, statuses in records.values()]

    def dead_letters(self, since: float = 0.0) -> list[DeadLetter]:
        """Deliveries given up on at or after ``since``, oldest first."""
        return [
            DeadLetter(*row)
            for row in self._db.execute(
                "SELECT alert_id, channel, attempts, reason, dead_at FROM dead_letters "
                "WHERE dead_at >= ? ORDER BY seq",
                (since,),
            )
        ]

    # --- checkpoints ----------------------------------------------------------------------------

    @property
    def autocheckpoint(self) -> bool:
        """Whether SQLite checkpoints the WAL itself, inside a commit (the default)."""
        return self._autocheckpoint

    @autocheckpoint.setter
    def autocheckpoint(self, enabled: bool) -> None:
        # Off only while someone calls ``checkpoint`` regularly, or the WAL grows without bound.
        self._db.execute(f"PRAGMA wal_autocheckpoint = {AUTOCHECKPOINT_PAGES if enabled else 0}")
        self._autocheckpoint = enabled

    def checkpoint(self) -> int:
        """Copy the WAL into the database file; returns the pages copied. Safe from any one thread.

        PASSIVE: it neither waits for nor blocks the writer; what it cannot copy now, the next call
        does. It uses a connection of its own, so a worker thread can run it while the event loop's
        thread keeps writing.
        """
        if str(self.path) == ":memory:":
            return 0
        with self._checkpoint_lock:
            if self._checkpointer is None:
                self._checkpointer = sqlite3.connect(
                    self.path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False
                )
            _busy, _frames, copied = self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        return max(int(copied), 0)

    # --- plumbing -------------------------------------------------------------------------------

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)

    def close(self) -> None:
        """Close the database (pending deliveries stay in the file for the next start)."""
        with self._checkpoint_lock:
            if self._checkpointer is not None:
                self._checkpointer.close()
                self._checkpointer = None
        self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``, or ``ROLLBACK`` on any exception.

    IMMEDIATE takes the write lock up front, so a concurrent writer makes us wait (busy timeout)
    at BEGIN instead of failing halfway through with SQLITE_BUSY.
    """

    __slots__ = ("_db",)

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self._db.execute("COMMIT")
        else:
            self._db.execute("ROLLBACK")
