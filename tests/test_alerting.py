"""The daemon's alerting state: persisted across restarts, mutes shared through the state directory."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from monitor.alerts.model import Alert, AlertKind
from monitor.config import AlertsConfig
from monitor.risk import AccountSnapshot, Assessment, Position, Side, TierSpec, TierTable, assess
from monitor.service.alerting import STATE_FILE, Alerting, Mutes, policy_from

if TYPE_CHECKING:
    from pathlib import Path

TIERS = TierTable.build([TierSpec(0, 1e9, 0.01)])
POLICY = policy_from(AlertsConfig())


def at_ratio(ratio: float) -> Assessment:
    """An account of one long whose margin ratio is ``ratio`` (MM 1,000)."""
    position = Position("BTC/USDT:USDT", Side.LONG, 1_000, 100.0, 100.0, TIERS)
    return assess(AccountSnapshot(1_000.0 * ratio, (position,)), POLICY.thresholds)


class Collector:
    """A submitter that keeps what it is given."""

    def __init__(self) -> None:
        self.alerts: list[Alert] = []

    async def submit(self, alert: Alert) -> None:
        """Keep ``alert``."""
        self.alerts.append(alert)


class Clock:
    """A wall clock the test moves."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        """The current time."""
        return self.now


@pytest.mark.asyncio
async def test_a_restart_neither_forgets_nor_resends(tmp_path: Path) -> None:
    """After a restart the active level is remembered: no second 'firing', and repeats keep their time."""
    clock = Clock()
    first = Alerting(POLICY, Collector(), tmp_path, clock=clock)
    raised = await first.assessed("main", "binanceusdm", at_ratio(1.15))
    assert [(a.kind, a.level) for a in raised] == [(AlertKind.FIRING, "critical")]
    await first.flush()  # the daemon's shutdown does this; a crash loses at most SAVE_EVERY_S of it
    assert (tmp_path / STATE_FILE).exists()

    clock.now += 60
    second = Alerting(POLICY, Collector(), tmp_path, clock=clock)
    assert await second.assessed("main", "binanceusdm", at_ratio(1.15)) == []
    clock.now += 5 * 60
    again = await second.assessed("main", "binanceusdm", at_ratio(1.15))
    assert [(a.kind, a.level) for a in again] == [(AlertKind.REPEAT, "critical")]


@pytest.mark.asyncio
async def test_blind_covers_every_key_of_the_account(tmp_path: Path) -> None:
    """A blind account reports each key it has, once; its first fresh reading restores it."""
    clock = Clock()
    collector = Collector()
    alerting = Alerting(POLICY, collector, tmp_path, clock=clock)
    await alerting.assessed("main", "binanceusdm", at_ratio(1.45))
    clock.now += 60
    blind = await alerting.blind("main", "binanceusdm", seconds_since_data=45.0)
    assert [(a.kind, a.key) for a in blind] == [(AlertKind.BLIND, "main")]
    assert blind[0].details["seconds_since_data"] == 45.0
    clock.now += 10
    assert await alerting.blind("main", "binanceusdm", seconds_since_data=55.0) == []
    restored = await alerting.assessed("main", "binanceusdm", at_ratio(1.45))
    assert [(a.kind, a.level) for a in restored] == [(AlertKind.RESTORED, "warning")]
    assert [a.kind for a in collector.alerts] == [AlertKind.FIRING, AlertKind.BLIND, AlertKind.RESTORED]


@pytest.mark.asyncio
async def test_a_mute_written_by_another_process_is_honoured(tmp_path: Path) -> None:
    """Mutes are a file: one written by the CLI silences the running daemon, and unmuting lifts it."""
    clock = Clock()
    alerting = Alerting(POLICY, Collector(), tmp_path, clock=clock)
    Mutes(tmp_path, clock=clock).mute("main", 3600)
    assert await alerting.assessed("main", "binanceusdm", at_ratio(1.15)) == []
    Mutes(tmp_path, clock=clock).unmute("main")
    clock.now += 1
    raised = await alerting.assessed("main", "binanceusdm", at_ratio(1.15))
    assert [a.level for a in raised] == ["critical"]


@pytest.mark.asyncio
async def test_a_damaged_state_file_starts_afresh(tmp_path: Path) -> None:
    """A state file that is not JSON is logged and ignored: the monitor keeps working."""
    (tmp_path / STATE_FILE).write_text("{not json", encoding="utf-8")
    alerting = Alerting(POLICY, Collector(), tmp_path, clock=Clock())
    assert alerting.states == {}
    assert [a.level for a in await alerting.assessed("main", "x", at_ratio(1.45))] == ["warning"]


def test_policy_from_config() -> None:
    """The [alerts] table in percent and minutes becomes the engine's ratios and seconds."""
    policy = policy_from(
        AlertsConfig(hysteresis_pct=3, repeat_danger_min=10, fast_fall_pct=20, target_ratio_pct=250)
    )
    assert policy.hysteresis == pytest.approx(0.03)
    assert policy.repeat_s["danger"] == 600
    assert policy.fast_fall == pytest.approx(0.2)
    assert policy.target_ratio == pytest.approx(2.5)
    assert policy.thresholds == (1.5, 1.3, 1.2)
