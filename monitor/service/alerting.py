"""The daemon's side of alerting: engine state, mutes, persistence, and hand-off to the dispatcher.

The engine is pure (``monitor.alerts.engine``); this keeps its state per key, writes it to the state
directory whenever something that matters changes (a level, a notification, blind), reads mutes the
CLI or Telegram wrote, and submits every alert to the dispatcher, which stores it before sending.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from monitor.alerts.engine import (
    MINUTE,
    AlertPolicy,
    KeyState,
    Observation,
    moves,
    observe,
    observe_blind,
    observe_key,
    observe_margin_call,
)
from monitor.alerts.observe import isolated_key, observations

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from monitor.alerts.model import Alert
    from monitor.config import AlertsConfig
    from monitor.risk.model import Assessment

log = structlog.get_logger("margin_monitor.alerting")

STATE_FILE = "alerts-state.json"
MUTES_FILE = "mutes.json"

#: The alert state file is written at most this often (a burst's changes wait and go in one write).
SAVE_EVERY_S = 0.5

#: How often the mutes file is looked at for changes another process (the CLI) made.
MUTES_RELOAD_S = 1.0


class Submitter(Protocol):
    """Where alerts go next: the dispatcher (stores, then delivers)."""

    async def submit(self, alert: Alert) -> None:
        """Accept ``alert`` for delivery."""
        ...


def policy_from(config: AlertsConfig) -> AlertPolicy:
    """The engine's policy from the ``[alerts]`` table."""
    critical = config.repeat_critical_min * MINUTE
    return AlertPolicy(
        thresholds=config.thresholds,
        hysteresis=config.hysteresis_pct / 100,
        repeat_s={
            "warning": config.repeat_warning_min * MINUTE,
            "danger": config.repeat_danger_min * MINUTE,
            "critical": critical,
            "liquidation": critical,
            "blind": critical,
            "margin_call": critical,
        },
        fast_fall=config.fast_fall_pct / 100,
        fast_fall_window_s=config.fast_fall_window_s,
        target_ratio=config.target_ratio_pct / 100,
    )


class Mutes:
    """Per-account mutes with an expiry, kept in ``mutes.json`` so the CLI and the daemon share them."""

    def __init__(self, state_dir: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.path = state_dir / MUTES_FILE
        self._clock = clock
        self._until: dict[str, float] = {}
        self._mtime: float | None = None
        self._checked_at = -math.inf

    def until(self, account: str) -> float | None:
        """When ``account``'s mute ends (Unix time), or ``None`` if it is not muted."""
        self._reload()
        until = self._until.get(account)
        return until if until is not None and until > self._clock() else None

    def mute(self, account: str, seconds: float) -> float:
        """Mute ``account`` for ``seconds``; return when it ends."""
        self._reload()
        until = self._clock() + seconds
        self._until[account] = until
        self._save()
        return until

    def unmute(self, account: str) -> bool:
        """End ``account``'s mute; whether there was one."""
        self._reload()
        found = self._until.pop(account, None) is not None
        self._save()
        return found

    def active(self) -> dict[str, float]:
        """Every mute still running."""
        self._reload()
        now = self._clock()
        return {account: until for account, until in self._until.items() if until > now}

    def _reload(self) -> None:
        # Every assessment asks; a stat per ask cost more than the assessment on a busy disk.
        now = self._clock()
        if now - self._checked_at < MUTES_RELOAD_S:
            return
        self._checked_at = now
        try:
            mtime = self.path.stat().st_mtime
        except FileNotFoundError:
            self._until, self._mtime = {}, None
            return
        if mtime == self._mtime:
            return
        try:
            document = json.loads(self.path.read_text(encoding="utf-8"))
            self._until = {str(k): float(v) for k, v in document.items()}
        except (OSError, ValueError, AttributeError) as exc:
            log.warning("mutes.unreadable", path=str(self.path), error=str(exc))
            self._until = {}
        self._mtime = mtime

    def _save(self) -> None:
        now = self._clock()
        _write_json(self.path, {k: v for k, v in self._until.items() if v > now})
        with contextlib.suppress(FileNotFoundError):
            self._mtime = self.path.stat().st_mtime


class Alerting:
    """Runs every assessment and staleness signal through the engine and submits the alerts."""

    def __init__(
        self,
        policy: AlertPolicy,
        submitter: Submitter,
        state_dir: Path,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.policy = policy
        self.submitter = submitter
        self.state_dir = state_dir
        self.mutes = Mutes(state_dir, clock=clock)
        self._clock = clock
        self._path = state_dir / STATE_FILE
        self.states: dict[str, KeyState] = self._load()
        #: Each key's state as the file holds it, rebuilt only when the key's durable part changes:
        #: a save then copies a dict, however many keys there are.
        self._documents = {key: _document(state) for key, state in self.states.items()}
        self._dirty = False
        self._save_lock = asyncio.Lock()
        self._saved_at = -math.inf
        self._saver: asyncio.Task[None] | None = None

    def _load(self) -> dict[str, KeyState]:
        try:
            document = json.loads(self._path.read_text(encoding="utf-8"))
            states = {key: KeyState.from_dict(value) for key, value in document.items()}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, TypeError, KeyError) as exc:
            # A damaged state file must not stop the monitor; it starts from "nothing notified".
            log.warning("alerts.state_unreadable", path=str(self._path), error=str(exc))
            return {}
        log.info("alerts.state_loaded", keys=len(states), path=str(self._path))
        return states

    async def assessed(self, account: str, exchange: str, assessment: Assessment) -> list[Alert]:
        """Fold a fresh assessment in; submit and return the alerts it raised."""
        raised = self.evaluate(account, exchange, assessment)
        await self.submit(raised)
        return raised

    def evaluate(self, account: str, exchange: str, assessment: Assessment) -> list[Alert]:
        """Fold a fresh assessment in; the alerts it raised, for ``submit``.

        Synchronous, so a stream's tick need not start a task for each of the accounts it
        recomputes; nearly all of them raise nothing.
        """
        now = self._clock()
        muted = self.mutes.until(account)
        raised: list[Alert] = []
        for observation in observations(account, exchange, assessment, self.policy):
            raised += self._apply(
                observation.key,
                observe(self.states.get(observation.key), observation, now, self.policy, muted_until=muted),
            )
        return raised

    def moves(self, account: str, assessment: Assessment) -> bool:
        """Whether ``assessment`` changes the level of one of the account's keys (``engine.moves``)."""
        states = self.states
        if moves(states.get(account), assessment.margin_ratio, self.policy):
            return True
        return any(
            figures.margin_ratio is not None
            and moves(states.get(isolated_key(account, figures)), figures.margin_ratio, self.policy)
            for figures in assessment.isolated()
        )

    async def blind(self, account: str, exchange: str, seconds_since_data: float | None) -> list[Alert]:
        """The account has no fresh data: every key of it goes blind."""
        now = self._clock()
        muted = self.mutes.until(account)
        keys = [key for key, state in self.states.items() if state.account == account] or [account]
        raised: list[Alert] = []
        for key in keys:
            result = observe_blind(
                self.states.get(key),
                key,
                account,
                exchange,
                now,
                self.policy,
                seconds_since_data=seconds_since_data,
                muted_until=muted,
            )
            raised += self._apply(key, result)
        await self.submit(raised)
        return raised

    async def margin_call(self, account: str, exchange: str, margin_ratio: float | None) -> list[Alert]:
        """The exchange's own margin call for ``account``."""
        observation = Observation(key=account, account=account, exchange=exchange, margin_ratio=margin_ratio)
        result = observe_margin_call(
            self.states.get(account),
            observation,
            self._clock(),
            self.policy,
            muted_until=self.mutes.until(account),
        )
        raised = self._apply(account, result)
        await self.submit(raised)
        return raised

    async def key_checked(self, account: str, exchange: str, unsafe: str | None) -> list[Alert]:
        """A periodic re-check of ``account``'s API key: ``unsafe`` says why it may do more than read."""
        observation = Observation(key=account, account=account, exchange=exchange, margin_ratio=None)
        now = self._clock()
        result = observe_key(
            self.states.get(account), observation, unsafe, now, muted_until=self.mutes.until(account)
        )
        raised = self._apply(account, result)
        await self.submit(raised)
        return raised

    def _apply(self, key: str, result: tuple[KeyState, list[Alert]]) -> list[Alert]:
        state, alerts = result
        previous = self.states.get(key)
        self.states[key] = state
        if previous is None or _durable(previous) != _durable(state):
            self._documents[key] = _document(state)
            self._dirty = True
        return alerts

    async def submit(self, alerts: list[Alert]) -> None:
        """Hand ``alerts`` to the dispatcher (which stores them), then save the state in the background."""
        # The outbox first, the state file after: a crash in between re-sends an alert on restart
        # (receivers drop it by id or see it twice), where the other order could lose it.
        for alert in alerts:
            await self.submitter.submit(alert)
        self.save_soon()

    def save_soon(self) -> None:
        """Write the state file in the background if something durable changed (``SAVE_EVERY_S``)."""
        if self._dirty and (self._saver is None or self._saver.done()):
            # In the background: the caller (a mark tick's recompute) need not wait for the disk.
            self._saver = asyncio.get_running_loop().create_task(self._save(), name="alerts:save")

    async def flush(self) -> None:
        """Write the state file now if anything changed (shutdown; tests), after a save in flight."""
        if self._saver is not None:
            await asyncio.gather(self._saver, return_exceptions=True)
        if self._dirty:
            self._saved_at = -math.inf
            await self._save()

    async def _save(self) -> None:
        # One writer at a time; a change made while it writes is picked up by its next round, at
        # most every SAVE_EVERY_S, so a burst of changes (a crash crossing a thousand accounts) costs
        # a few writes, not a thousand, and the writer thread does not hold the GIL against the loop
        # the whole burst long. The alerts themselves are in the outbox already.
        if self._save_lock.locked():
            return
        async with self._save_lock:
            while self._dirty:
                wait = self._saved_at + SAVE_EVERY_S - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                self._saved_at = time.monotonic()
                self._dirty = False
                document = dict(self._documents)
                try:
                    # fsync takes milliseconds now and then: off the event loop.
                    await asyncio.to_thread(_write_json, self._path, document)
                except OSError as exc:
                    log.warning("alerts.state_not_saved", path=str(self._path), error=str(exc))
                    self._dirty = True  # the next change tries again
                    return


def _durable(state: KeyState) -> tuple[object, ...]:
    # The ratio history only serves the fast-fall window: not worth a write on every poll.
    return (
        state.level,
        state.since,
        state.blind,
        state.notified_level,
        state.last_notified_at,
        state.last_fast_fall_at,
        state.last_margin_call_at,
        state.key_unsafe,
    )


def _document(state: KeyState) -> dict[str, Any]:
    # Without the fast-fall history: it is short-lived, and the file stays small.
    return replace(state, history=()).to_dict()


def _write_json(path: Path, document: Any) -> None:  # noqa: ANN401 - any JSON document
    """Write atomically: a crash leaves the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(path.suffix + ".tmp")
    with temporary.open("w", encoding="utf-8") as handle:
        json.dump(document, handle)
        handle.flush()
        os.fsync(handle.fileno())
    temporary.replace(path)
