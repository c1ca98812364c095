"""The alert state machine: previous state + what was observed + now -> new state + alerts.

Pure: no I/O, no clock (``now`` is an argument), no logging. Everything that decides whether a
notification goes out lives in this module; ``TRANSITIONS`` is the table of what a change of level
means.

Semantics (Prometheus Alertmanager's, where they fit):

- Each key (an account's cross margin, or one isolated position) has one level. Only that level
  notifies, so a key at ``critical`` does not also send ``warning`` and ``danger`` (inhibition).
- A worse level fires at once. A better level counts only once the ratio is above the threshold it
  left plus the hysteresis (default 5 points); then a "recovered to X" notice goes out.
- While a level holds, it repeats: critical and liquidation every 5 minutes, danger every 30,
  warning every 4 hours.
- A fast fall (default 30 points within 5 minutes) fires on its own, even above every threshold.
- Blind (no fresh data) fires once and repeats like critical. It never "recovers": the first fresh
  observation after it reports the true level (``restored``), whatever that level is.
- A muted account's alerts are suppressed; its state still moves, so when the mute ends a level
  that still holds is notified at its next observation.
- An account's API key found unsafe by a periodic re-check fires ``key_unsafe`` once and does not
  repeat; the first re-check that finds it fit again sends ``key_safe``. A mute holds the
  ``key_unsafe`` back until the first re-check after it ends.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_left
from dataclasses import dataclass, field, replace
from operator import itemgetter
from typing import TYPE_CHECKING, Any

from monitor.alerts.model import (
    KEY_UNSAFE_LEVEL,
    LEVEL_ORDER,
    Alert,
    AlertKind,
    PositionAtRisk,
    SuggestedAction,
    severity,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    #: What an alert says beyond the figures: the positions nearest liquidation, and what to do.
    Details = tuple[tuple[PositionAtRisk, ...], SuggestedAction | None]

MINUTE = 60.0
HOUR = 3600.0

#: The ratio history behind fast-fall detection keeps at most one reading a second: streams tick
#: several times a second, and a five-minute window needs no finer grain.
HISTORY_STEP_S = 1.0

#: How often a level that holds is repeated.
DEFAULT_REPEAT_S: Mapping[str, float] = {
    "warning": 4 * HOUR,
    "danger": 30 * MINUTE,
    "critical": 5 * MINUTE,
    "liquidation": 5 * MINUTE,
    "blind": 5 * MINUTE,
    "margin_call": 5 * MINUTE,
}

#: What a change of level means: (was blind, direction) -> the alert, or None for nothing.
#: ``direction`` compares the new level with the one in force: "worse", "better" or "same"
#: ("better" only once past the hysteresis). A "same" level may still repeat (see ``_repeat_due``).
TRANSITIONS: Mapping[tuple[bool, str], AlertKind | None] = {
    (False, "worse"): AlertKind.FIRING,
    (False, "better"): AlertKind.RECOVERED,
    (False, "same"): None,
    (True, "worse"): AlertKind.RESTORED,
    (True, "better"): AlertKind.RESTORED,
    (True, "same"): AlertKind.RESTORED,
}


@dataclass(frozen=True, slots=True)
class AlertPolicy:
    """The user's alerting choices; ratios as fractions (1.5 is 150%)."""

    thresholds: tuple[float, ...] = (1.5, 1.3, 1.2)
    hysteresis: float = 0.05
    repeat_s: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_REPEAT_S))
    fast_fall: float = 0.30
    fast_fall_window_s: float = 5 * MINUTE
    target_ratio: float = 2.0

    def level_of(self, ratio: float | None, *, shift: float = 0.0) -> str:
        """The level of ``ratio``, every boundary raised by ``shift`` (the hysteresis band)."""
        if ratio is None:
            return "ok"
        if ratio <= 1.0 + shift:
            return "liquidation"
        level = "ok"
        names = LEVEL_ORDER[1:4]
        for index, threshold in enumerate(self.thresholds):
            if ratio <= threshold + shift:
                level = names[min(index, len(names) - 1)]
        return level

    def threshold_of(self, level: str) -> float | None:
        """The ratio at or below which ``level`` starts (1.0 for liquidation)."""
        if level == "liquidation":
            return 1.0
        names = LEVEL_ORDER[1:4]
        if level not in names:
            return None
        index = names.index(level)
        if index >= len(self.thresholds):
            return None
        # "critical" covers the third threshold and any further ones: it starts at the third.
        return self.thresholds[index]

    def next_threshold(self, level: str) -> float | None:
        """The next ratio boundary below ``level`` (where the next alert would fire)."""
        order = [*self.thresholds, 1.0]
        current = self.threshold_of(level)
        if current is None:
            return order[0] if level == "ok" else None
        below = [value for value in order if value < current]
        return below[0] if below else None


@dataclass(frozen=True, slots=True)
class Observation:
    """One fresh reading of a key: an account's cross margin or an isolated position."""

    key: str
    account: str
    exchange: str
    margin_ratio: float | None
    margin_balance: float | None = None
    maintenance_margin: float | None = None
    positions: tuple[PositionAtRisk, ...] = ()
    action: SuggestedAction | None = None
    #: Computes ``positions`` and ``action`` when an alert needs them, in their place: a stream
    #: observes every account every second, and nearly every observation raises nothing.
    details: Callable[[], Details] | None = field(default=None, compare=False, repr=False)

    def resolved(self) -> Details:
        """The positions at risk and the suggested action, computed now if they are deferred."""
        if self.details is not None:
            return self.details()
        return self.positions, self.action


@dataclass(frozen=True, slots=True)
class KeyState:
    """What the engine remembers of one key between observations (persisted as JSON)."""

    key: str
    account: str
    exchange: str
    level: str = "ok"
    since: float | None = None
    blind: bool = False
    notified_level: str | None = None
    last_notified_at: float | None = None
    last_ratio: float | None = None
    history: tuple[tuple[float, float], ...] = ()
    last_fast_fall_at: float | None = None
    last_margin_call_at: float | None = None
    #: A ``key_unsafe`` alert went out and no ``key_safe`` since (kept only on the account's own key).
    key_unsafe: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return {
            "key": self.key,
            "account": self.account,
            "exchange": self.exchange,
            "level": self.level,
            "since": self.since,
            "blind": self.blind,
            "notified_level": self.notified_level,
            "last_notified_at": self.last_notified_at,
            "last_ratio": self.last_ratio,
            "history": [list(item) for item in self.history],
            "last_fast_fall_at": self.last_fast_fall_at,
            "last_margin_call_at": self.last_margin_call_at,
            "key_unsafe": self.key_unsafe,
        }

    @classmethod
    def from_dict(cls, document: Mapping[str, Any]) -> KeyState:
        """The inverse of ``to_dict``."""
        data = dict(document)
        data["history"] = tuple((float(t), float(r)) for t, r in data.get("history", ()))
        return cls(**data)


def initial_state(key: str, account: str, exchange: str) -> KeyState:
    """A key never seen before: ok, nothing notified."""
    return KeyState(key=key, account=account, exchange=exchange)


def observe(
    state: KeyState | None,
    observation: Observation,
    now: float,
    policy: AlertPolicy,
    *,
    muted_until: float | None = None,
) -> tuple[KeyState, list[Alert]]:
    """Fold one fresh observation into ``state``; return the new state and the alerts to send."""
    if state is None:
        state = initial_state(observation.key, observation.account, observation.exchange)
    ratio = observation.margin_ratio
    current = state.level
    direction, level = _next_level(current, ratio, policy)

    sampled = state.history
    if ratio is not None and (not sampled or now - sampled[-1][0] >= HISTORY_STEP_S):
        sampled = (*sampled, (now, ratio))
    history = _trim(sampled, now, policy)
    kind = TRANSITIONS[(state.blind, direction)]
    if kind is AlertKind.RESTORED and level == "ok" and state.notified_level is None:
        kind = None  # blind before any alert went out about this key: nothing to restore
    new_state = replace(
        state,
        level=level,
        since=now if level != current or state.since is None else state.since,
        blind=False,
        last_ratio=ratio,
        history=history,
    )
    muted = muted_until is not None and now < muted_until
    alerts: list[Alert] = []
    if kind is None and level != "ok" and _repeat_due(new_state, level, now, policy):
        kind = AlertKind.REPEAT
    if kind is not None:
        previous = "blind" if state.blind else current
        alerts.append(_alert(kind, observation, level, previous, now, policy))
    fast = _fast_fall(history, ratio, policy)
    if fast is not None and _quiet_since(state.last_fast_fall_at, now, policy.fast_fall_window_s):
        new_state = replace(new_state, last_fast_fall_at=now)
        details = {"fell_points": round(fast * 100, 2), "window_s": policy.fast_fall_window_s}
        if alerts:
            # One notification, not two: an alert already goes out; say how fast the ratio fell.
            alerts[0] = replace(alerts[0], details=details)
        else:
            alert = _alert(AlertKind.FAST_FALL, observation, level, current, now, policy)
            alerts.append(replace(alert, details=details))
    if muted:
        return new_state, []
    if alerts:
        notified = alerts[0]
        new_state = replace(
            new_state, notified_level=None if notified.level == "ok" else level, last_notified_at=now
        )
    return new_state, alerts


def moves(state: KeyState | None, ratio: float | None, policy: AlertPolicy) -> bool:
    """Whether observing ``ratio`` would change the key's level (or end its blindness, or start it).

    Cheap and exact: a stream asks this of every account on every tick, and handles first those
    for which it holds (their alerts); a repeat or a fast fall may still come from the others.
    """
    return state is None or state.blind or _next_level(state.level, ratio, policy)[1] != state.level


def _next_level(current: str, ratio: float | None, policy: AlertPolicy) -> tuple[str, str]:
    """(direction, level) after observing ``ratio`` at level ``current``: see ``TRANSITIONS``."""
    raw = policy.level_of(ratio)
    if severity(raw) > severity(current):
        return "worse", raw
    if severity(raw) < severity(current):
        # Improving: a level is left only once the ratio clears its boundary by the hysteresis.
        sticky = policy.level_of(ratio, shift=policy.hysteresis)
        level = sticky if severity(sticky) < severity(current) else current
        return ("better" if level != current else "same"), level
    return "same", current


def observe_blind(
    state: KeyState | None,
    key: str,
    account: str,
    exchange: str,
    now: float,
    policy: AlertPolicy,
    *,
    seconds_since_data: float | None = None,
    muted_until: float | None = None,
) -> tuple[KeyState, list[Alert]]:
    """No fresh data for ``key``: fire ``blind`` once, then repeat it like critical."""
    if state is None:
        state = initial_state(key, account, exchange)
    if state.blind and not _repeat_due(state, "blind", now, policy):
        return state, []
    kind = AlertKind.REPEAT if state.blind else AlertKind.BLIND
    new_state = replace(state, blind=True)
    observation = Observation(key=key, account=account, exchange=exchange, margin_ratio=state.last_ratio)
    alert = _alert(kind, observation, "blind", state.level, now, policy)
    alert = replace(alert, details={"seconds_since_data": seconds_since_data, "last_level": state.level})
    if muted_until is not None and now < muted_until:
        return new_state, []
    return replace(new_state, last_notified_at=now, notified_level="blind"), [alert]


def observe_margin_call(
    state: KeyState | None,
    observation: Observation,
    now: float,
    policy: AlertPolicy,
    *,
    muted_until: float | None = None,
) -> tuple[KeyState, list[Alert]]:
    """The exchange's own margin call for ``observation.key``: notify, at most once a repeat interval."""
    if state is None:
        state = initial_state(observation.key, observation.account, observation.exchange)
    if not _quiet_since(state.last_margin_call_at, now, policy.repeat_s.get("margin_call", 5 * MINUTE)):
        return state, []
    new_state = replace(state, last_margin_call_at=now)
    if muted_until is not None and now < muted_until:
        return new_state, []
    return new_state, [_alert(AlertKind.MARGIN_CALL, observation, "margin_call", state.level, now, policy)]


def observe_key(
    state: KeyState | None,
    observation: Observation,
    unsafe: str | None,
    now: float,
    *,
    muted_until: float | None = None,
) -> tuple[KeyState, list[Alert]]:
    """A re-check of the account's API key: ``unsafe`` says why it may do more than read (``None``: fit).

    ``key_unsafe`` once per episode, ``key_safe`` when it ends; nothing while the key stays as it was.
    """
    if state is None:
        state = initial_state(observation.key, observation.account, observation.exchange)
    muted = muted_until is not None and now < muted_until
    if unsafe is not None:
        if state.key_unsafe or muted:
            return state, []
        summary = (
            f"{observation.account}: {unsafe}. Monitoring goes on; the daemon will not start with this key"
        )
        alert = _key_alert(AlertKind.KEY_UNSAFE, observation, KEY_UNSAFE_LEVEL, None, now, summary)
        return replace(state, key_unsafe=True), [alert]
    if not state.key_unsafe:
        return state, []
    new_state = replace(state, key_unsafe=False)
    if muted:
        return new_state, []
    summary = f"{observation.account}: the API key is fit for a monitor again"
    return new_state, [_key_alert(AlertKind.KEY_SAFE, observation, "ok", KEY_UNSAFE_LEVEL, now, summary)]


# --- helpers ---------------------------------------------------------------------------------------


def _repeat_due(state: KeyState, level: str, now: float, policy: AlertPolicy) -> bool:
    interval = policy.repeat_s.get(level)
    if interval is None:
        return False
    return state.last_notified_at is None or now - state.last_notified_at >= interval


def _quiet_since(last: float | None, now: float, interval: float) -> bool:
    return last is None or now - last >= interval


def _trim(
    history: tuple[tuple[float, float], ...], now: float, policy: AlertPolicy
) -> tuple[tuple[float, float], ...]:
    # Oldest first: usually nothing or one reading has left the window (a tuple of 300 rebuilt on
    # every tick of every account was a tenth of a stream's work).
    horizon = now - policy.fast_fall_window_s
    if not history or history[0][0] >= horizon:
        return history
    return history[bisect_left(history, horizon, key=itemgetter(0)) :]


def _fast_fall(
    history: tuple[tuple[float, float], ...], ratio: float | None, policy: AlertPolicy
) -> float | None:
    """How far the ratio fell within the window down to ``ratio``, if at least ``policy.fast_fall``."""
    if ratio is None or not history:
        return None
    fell = max(ratio, max(history, key=itemgetter(1))[1]) - ratio
    return fell if fell >= policy.fast_fall else None


def alert_id(key: str, kind: AlertKind, level: str, now: float) -> str:
    """A stable idempotency key: the same event replayed after a restart gets the same id."""
    digest = hashlib.sha256(f"{key}|{kind.value}|{level}|{round(now * 1000)}".encode()).hexdigest()
    return digest[:20]


def _alert(
    kind: AlertKind,
    observation: Observation,
    level: str,
    previous: str | None,
    now: float,
    policy: AlertPolicy,
) -> Alert:
    ratio = observation.margin_ratio
    threshold = policy.threshold_of(level)
    ratio_text = "unknown" if ratio is None else f"{ratio * 100:.1f}%"
    summaries = {
        AlertKind.FIRING: f"margin ratio {ratio_text}, at or below {_pct(threshold)}: {level}",
        AlertKind.REPEAT: f"still {level}: margin ratio {ratio_text}",
        AlertKind.RECOVERED: f"recovered to {level}: margin ratio {ratio_text}",
        AlertKind.RESTORED: f"data flowing again: margin ratio {ratio_text} ({level})",
        AlertKind.FAST_FALL: f"margin ratio falling fast: {ratio_text}",
        AlertKind.BLIND: "monitoring blind: no fresh data",
        AlertKind.MARGIN_CALL: f"the exchange sent a margin call: margin ratio {ratio_text}",
        AlertKind.TEST: "test alert",
    }
    summary = f"{observation.account}: {summaries[kind]}"
    if kind is AlertKind.REPEAT and level == "blind":
        summary = f"{observation.account}: still blind: no fresh data"
    positions, action = observation.resolved()
    return Alert(
        id=alert_id(observation.key, kind, level, now),
        kind=kind,
        account=observation.account,
        exchange=observation.exchange,
        key=observation.key,
        level=level,
        created_at=now,
        previous_level=previous,
        margin_ratio_pct=None if ratio is None else ratio * 100,
        threshold_pct=None if threshold is None else threshold * 100,
        margin_balance=observation.margin_balance,
        maintenance_margin=observation.maintenance_margin,
        positions=positions,
        action=action,
        summary=summary,
    )


def _key_alert(
    kind: AlertKind, observation: Observation, level: str, previous: str | None, now: float, summary: str
) -> Alert:
    # Not ``_alert``: a key's alert is about no ratio, threshold or position.
    return Alert(
        id=alert_id(observation.key, kind, level, now),
        kind=kind,
        account=observation.account,
        exchange=observation.exchange,
        key=observation.key,
        level=level,
        created_at=now,
        previous_level=previous,
        summary=summary,
    )


def _pct(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio * 100:g}%"
