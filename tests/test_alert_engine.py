"""The alert state machine on scripted timelines: input at t, expected notifications at t.

Like Alertmanager's acceptance tests, each case is a timeline of what the engine observes and the
notifications it must produce, with the clock injected, so every time is exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from monitor.alerts.engine import (
    MINUTE,
    TRANSITIONS,
    AlertPolicy,
    KeyState,
    Observation,
    observe,
    observe_blind,
    observe_key,
    observe_margin_call,
)
from monitor.alerts.model import Alert, AlertKind
from monitor.alerts.observe import observations
from monitor.risk import AccountSnapshot, MarginMode, Position, Side, TierSpec, TierTable, assess

POLICY = AlertPolicy()
HOUR = 60 * MINUTE

# A timeline step: (seconds, ratio) for a fresh reading; (seconds, "blind") when data is stale;
# (seconds, "margin_call") for the exchange's own warning.
Step = tuple[float, float | str]


@dataclass
class Run:
    """The engine fed one timeline; ``notified`` is (t, kind, level) for every alert."""

    state: KeyState | None = None
    muted_until: float | None = None

    def feed(self, timeline: list[Step]) -> list[tuple[float, str, str]]:
        """Feed the steps in order; return the notifications."""
        notified: list[tuple[float, str, str]] = []
        for at, value in timeline:
            alerts: list[Alert]
            if value == "blind":
                self.state, alerts = observe_blind(
                    self.state, "acct", "acct", "binanceusdm", at, POLICY, muted_until=self.muted_until
                )
            elif value == "margin_call":
                self.state, alerts = observe_margin_call(
                    self.state, reading(None), at, POLICY, muted_until=self.muted_until
                )
            else:
                assert isinstance(value, float)
                self.state, alerts = observe(
                    self.state, reading(value), at, POLICY, muted_until=self.muted_until
                )
            notified.extend((at, alert.kind.value, alert.level) for alert in alerts)
        return notified


def reading(ratio: float | None) -> Observation:
    """A fresh reading of the account key at ``ratio``."""
    return Observation(key="acct", account="acct", exchange="binanceusdm", margin_ratio=ratio)


def test_a_crash_fires_each_worse_level_once() -> None:
    """Falling through 150, 130, 120 and 100% fires warning, danger, critical and liquidation, in order."""
    timeline: list[Step] = [(0, 2.0), (10, 1.45), (20, 1.25), (30, 1.15), (40, 0.95)]
    assert Run().feed(timeline) == [
        (10, "firing", "warning"),
        (20, "firing", "danger"),
        (30, "firing", "critical"),
        (40, "firing", "liquidation"),
    ]


def test_levels_are_inclusive_at_their_threshold() -> None:
    """Exactly 150% is warning, exactly 100% is liquidation."""
    assert Run().feed([(0, 1.5)]) == [(0, "firing", "warning")]
    assert Run().feed([(0, 1.0)]) == [(0, "firing", "liquidation")]


def test_only_the_most_severe_level_notifies() -> None:
    """A jump from 200% to 115% fires critical alone, not warning and danger on the way (inhibition)."""
    assert Run().feed([(0, 2.0), (10, 1.15)]) == [(10, "firing", "critical")]


@pytest.mark.parametrize(
    ("ratio", "expected"),
    [
        (1.22, []),
        (1.25, []),  # exactly the threshold plus the hysteresis: not yet past it
        (1.2501, [(70, "recovered", "danger")]),
        (1.36, [(70, "recovered", "warning")]),
        (1.56, [(70, "recovered", "ok")]),
    ],
    ids=["inside-band", "band-edge", "past-band", "two-levels-up", "all-clear"],
)
def test_recovery_needs_the_hysteresis(ratio: float, expected: list[tuple[float, str, str]]) -> None:
    """From critical (120%), a level is left only above its threshold plus 5 points."""
    run = Run()
    run.feed([(0, 2.0), (60, 1.15)])
    assert run.feed([(70, ratio)]) == expected


def test_hovering_at_a_threshold_does_not_flap() -> None:
    """A ratio oscillating around 130% fires danger once and does not recover while inside the band."""
    timeline: list[Step] = [(0, 1.6), (10, 1.29), (20, 1.31), (30, 1.29), (40, 1.33), (50, 1.28)]
    assert Run().feed(timeline) == [(10, "firing", "danger")]


@pytest.mark.parametrize(
    ("ratio", "level", "interval"),
    [(1.15, "critical", 5 * MINUTE), (1.25, "danger", 30 * MINUTE), (1.45, "warning", 4 * HOUR)],
    ids=["critical-5min", "danger-30min", "warning-4h"],
)
def test_a_level_that_holds_repeats_at_its_interval(ratio: float, level: str, interval: float) -> None:
    """Held for 2.5 intervals, observed every minute: the first alert, then two repeats on schedule."""
    timeline: list[Step] = [(float(t), ratio) for t in range(0, int(interval * 2.5) + 1, 60)]
    assert Run().feed(timeline) == [
        (0, "firing", level),
        (interval, "repeat", level),
        (2 * interval, "repeat", level),
    ]


def test_a_fast_fall_fires_above_every_threshold() -> None:
    """Falling 35 points within 5 minutes fires on its own, though the account is still at 265%."""
    assert Run().feed([(0, 3.0), (60, 2.8), (120, 2.65), (180, 2.6)]) == [(120, "fast_fall", "ok")]


def test_a_slow_fall_of_the_same_size_is_quiet() -> None:
    """The same 35 points over 10 minutes is no fast fall."""
    timeline: list[Step] = [(float(t * 60), 3.0 - 0.035 * t) for t in range(11)]
    assert Run().feed(timeline) == []


def test_the_fall_window_keeps_only_its_last_five_minutes() -> None:
    """A gap drops every reading older than the window at once; a high ratio long ago is no fall."""
    run = Run()
    assert run.feed([(float(t), 3.0) for t in range(0, 240, 10)]) == []
    assert run.feed([(600.0, 2.6), (610.0, 2.55)]) == []  # 3.0 was 6 minutes ago
    assert run.state is not None
    assert [at for at, _ in run.state.history] == [600.0, 610.0]
    assert run.feed([(700.0, 2.2)]) == [(700.0, "fast_fall", "ok")]  # 40 points since 600


def test_a_fast_fall_into_a_level_is_one_notification() -> None:
    """A fast fall that also crosses a threshold sends the level's alert, marked with the fall."""
    run = Run()
    run.state, _ = observe(None, reading(1.8), 0, POLICY)
    state, alerts = observe(run.state, reading(1.45), 60, POLICY)
    assert [(alert.kind, alert.level) for alert in alerts] == [(AlertKind.FIRING, "warning")]
    assert alerts[0].details["fell_points"] == pytest.approx(35)
    assert state.last_fast_fall_at == 60


def test_blind_fires_once_then_repeats_like_critical() -> None:
    """Stale data fires blind, stays quiet for 5 minutes, then repeats."""
    timeline: list[Step] = [(0, 1.45), (100, "blind"), (160, "blind"), (399, "blind"), (400, "blind")]
    assert Run().feed(timeline) == [
        (0, "firing", "warning"),
        (100, "blind", "blind"),
        (400, "repeat", "blind"),
    ]


@pytest.mark.parametrize(
    ("ratio", "level"), [(1.45, "warning"), (1.9, "ok"), (1.1, "critical")], ids=["same", "better", "worse"]
)
def test_blind_never_recovers_it_reports_the_true_level(ratio: float, level: str) -> None:
    """The first fresh reading after blind is a ``restored`` notice with the true level, never 'recovered'."""
    run = Run()
    run.feed([(0, 1.45), (100, "blind")])
    assert run.feed([(200, ratio)]) == [(200, "restored", level)]
    assert run.state is not None
    assert not run.state.blind


def test_blind_before_any_data_is_reported() -> None:
    """An account that never answered is reported blind too, and its first reading restores it."""
    assert Run().feed([(30, "blind"), (90, 2.0)]) == [(30, "blind", "blind"), (90, "restored", "ok")]


def test_a_mute_suppresses_alerts_until_it_expires() -> None:
    """Muted for 10 minutes: the crash is silent; once the mute ends, the level that holds is notified."""
    run = Run(muted_until=600)
    assert run.feed([(0, 2.0), (60, 1.15), (120, 1.1), (599, 1.1)]) == []
    assert run.feed([(600, 1.1), (660, 1.1)]) == [(600, "repeat", "critical")]


def test_a_mute_does_not_freeze_the_state() -> None:
    """A recovery during a mute is tracked: after it, no stale alert about the old level goes out."""
    run = Run(muted_until=600)
    run.feed([(0, 1.15), (300, 2.0)])
    assert run.state is not None
    assert run.state.level == "ok"
    assert run.feed([(700, 2.0)]) == []


def test_margin_call_notifies_at_most_every_five_minutes() -> None:
    """The exchange's margin call is passed on, then rate-limited to the repeat interval."""
    timeline: list[Step] = [(0, "margin_call"), (60, "margin_call"), (300, "margin_call")]
    assert Run().feed(timeline) == [(0, "margin_call", "margin_call"), (300, "margin_call", "margin_call")]


UNSAFE = "the API key can withdraw (enableWithdrawals)"


def test_an_unsafe_key_fires_once_per_episode_and_its_end_once() -> None:
    """Unsafe at every re-check: one ``key_unsafe``; fit again: one ``key_safe``, to where it went."""
    state: KeyState | None = None
    notified: list[tuple[float, str, str, str | None]] = []
    for at, unsafe in [
        (0, None),
        (6 * HOUR, UNSAFE),
        (12 * HOUR, UNSAFE),
        (18 * HOUR, None),
        (24 * HOUR, None),
    ]:
        state, alerts = observe_key(state, reading(None), unsafe, at)
        notified.extend((at, alert.kind.value, alert.level, alert.previous_level) for alert in alerts)
    assert notified == [
        (6 * HOUR, "key_unsafe", "key_unsafe", None),
        (18 * HOUR, "key_safe", "ok", "key_unsafe"),
    ]
    _, [alert] = observe_key(None, reading(None), UNSAFE, 0)
    assert alert.summary.startswith(f"acct: {UNSAFE}. Monitoring goes on")


def test_a_mute_holds_an_unsafe_key_back_until_it_ends() -> None:
    """Muted: nothing; the first re-check after the mute still finding the key unsafe notifies."""
    state, alerts = observe_key(None, reading(None), UNSAFE, 0, muted_until=HOUR)
    assert alerts == []
    state, alerts = observe_key(state, reading(None), UNSAFE, 2 * HOUR, muted_until=HOUR)
    assert [alert.kind for alert in alerts] == [AlertKind.KEY_UNSAFE]
    restored = KeyState.from_dict(state.to_dict())
    assert restored.key_unsafe
    _, alerts = observe_key(restored, reading(None), None, 3 * HOUR)
    assert [alert.kind for alert in alerts] == [AlertKind.KEY_SAFE]


def test_transition_table_is_total() -> None:
    """Every (blind, direction) pair has an entry, and a blind key always reports ``restored``."""
    for blind in (False, True):
        for direction in ("worse", "better", "same"):
            assert (blind, direction) in TRANSITIONS
    assert {TRANSITIONS[(True, d)] for d in ("worse", "better", "same")} == {AlertKind.RESTORED}


def test_state_survives_a_json_round_trip() -> None:
    """A state written as JSON and read back behaves the same: no repeat before its time."""
    run = Run()
    run.feed([(0, 2.0), (60, 1.15)])
    assert run.state is not None
    restored = KeyState.from_dict(run.state.to_dict())
    assert restored == run.state
    again = Run(state=restored)
    assert again.feed([(120, 1.15), (360, 1.15)]) == [(360, "repeat", "critical")]


def test_alert_ids_are_stable_and_distinct() -> None:
    """The same event gets the same id (safe replays); different events get different ids."""
    _, first = observe(None, reading(1.15), 100, POLICY)
    _, replay = observe(None, reading(1.15), 100, POLICY)
    _, later = observe(None, reading(1.15), 101, POLICY)
    assert first[0].id == replay[0].id
    assert first[0].id != later[0].id
    assert Alert.from_dict(first[0].to_dict()) == first[0]


def test_custom_thresholds_and_policy() -> None:
    """Four thresholds: the fourth is critical too; the alert names the threshold it crossed."""
    policy = AlertPolicy(thresholds=(2.0, 1.6, 1.4, 1.25))
    _, alerts = observe(None, reading(1.3), 0, policy)
    assert alerts[0].level == "critical"
    assert alerts[0].threshold_pct == pytest.approx(140)


def test_observations_carry_positions_and_actions() -> None:
    """From an assessment: the account key, positions nearest liquidation first, then each isolated one."""
    tiers = TierTable.build([TierSpec(0, 1e6, 0.01), TierSpec(1e6, 1e9, 0.02)])
    account = AccountSnapshot(
        8_000.0,
        (
            Position("BTC/USDT:USDT", Side.LONG, 1.0, 60_000.0, 58_000.0, tiers),
            Position("ETH/USDT:USDT", Side.SHORT, 10.0, 3_000.0, 3_050.0, tiers),
            Position(
                "SOL/USDT:USDT",
                Side.LONG,
                100.0,
                150.0,
                140.0,
                tiers,
                margin_mode=MarginMode.ISOLATED,
                isolated_wallet=4_000.0,
            ),
        ),
    )
    assessment = assess(account)
    found = observations("main", "binanceusdm", assessment, POLICY)
    assert [item.key for item in found] == ["main", "main/SOL/USDT:USDT/long"]
    cross = found[0]
    assert cross.margin_ratio == assessment.margin_ratio
    assert cross.positions == ()  # computed only when an alert needs them
    positions, action = cross.resolved()
    distances = [p.liquidation_distance_pct for p in positions]
    assert distances == sorted(d for d in distances if d is not None)
    assert action is not None
    assert assessment.margin_ratio is not None
    assert assessment.margin_ratio > 2.0
    assert action.margin_to_add == 0  # already above the 200% target
    assert POLICY.level_of(assessment.margin_ratio) == "ok"
    btc = next(p for p in positions if p.symbol == "BTC/USDT:USDT")
    assert btc.next_threshold_pct == pytest.approx(150)  # from ok, the next alert is the warning at 150%
    assert btc.next_threshold_price == assessment.positions[0].threshold_prices[0]
    isolated_positions, isolated_action = found[1].resolved()
    assert [p.symbol for p in isolated_positions] == ["SOL/USDT:USDT"]
    assert isolated_action is not None
    assert isolated_action.close_fraction is None  # an isolated position is only topped up
