"""Scripted mark-price scenarios.

A scenario is a script of margin ratios for the demo account: each segment ramps linearly to a target
ratio over ``ramp_ticks`` and holds it for ``hold_ticks``. Each tick the player solves for the single
adverse move ``f`` that gives the demo account that ratio (bisection: the ratio falls as ``f`` grows)
and moves every mark by it: ``mark = initial * (1 + direction * f)``, BTC and SOL down, ETH up (the demo
account is long BTC and short ETH, so both moves hurt it). Scripting ratios rather than prices is what
guarantees every alert level is visited, in order, for several ticks. Other accounts follow the same
marks. The simulator does not liquidate: positions stay open below 100% so monitors see that level.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from monitor.sim.accounts import SimAccount, compute_figures

if TYPE_CHECKING:
    from collections.abc import Mapping

DIRECTIONS = {"BTCUSDT": -1.0, "ETHUSDT": 1.0, "SOLUSDT": -1.0}
"""Which way each mark moves in an adverse move (+1 up, -1 down)."""

_F_RANGE = (-0.6, 0.6)


@dataclass(frozen=True, slots=True)
class Segment:
    """Ramp to ``ratio`` (``None``: back to the initial marks) over ``ramp_ticks``, then hold it."""

    ratio: float | None
    ramp_ticks: int
    hold_ticks: int


SCENARIOS: dict[str, tuple[Segment, ...]] = {
    # ok -> warning (140%) -> danger (125%) -> critical (110%) -> liquidation (95%), each held 10 ticks.
    "crash": (
        Segment(None, 0, 6),
        Segment(1.40, 4, 10),
        Segment(1.25, 3, 10),
        Segment(1.10, 3, 10),
        Segment(0.95, 3, 10),
    ),
    # critical -> danger -> warning -> ok, then back to the initial marks.
    "recovery": (
        Segment(1.10, 0, 10),
        Segment(1.25, 3, 10),
        Segment(1.40, 3, 10),
        Segment(2.00, 4, 10),
        Segment(None, 4, 6),
    ),
    # The demo's story: the crash, then a recovery past each threshold plus the 5-point hysteresis
    # (critical 112%, danger 127%, warning 142%, ok 200%), then back to the initial marks.
    "crash-recovery": (
        Segment(None, 0, 6),
        Segment(1.40, 4, 10),
        Segment(1.25, 3, 10),
        Segment(1.10, 3, 10),
        Segment(0.95, 3, 10),
        Segment(1.12, 3, 8),
        Segment(1.27, 3, 8),
        Segment(1.42, 3, 8),
        Segment(2.00, 4, 8),
        Segment(None, 4, 6),
    ),
    # A slow slide from the initial marks to 105% over 600 ticks (10 minutes at tick_s=1).
    "bleed": (Segment(None, 0, 1), Segment(1.05, 600, 10)),
    "flat": (Segment(None, 0, 1),),
}


def scenario_names() -> tuple[str, ...]:
    """The names ``SimServer(scenario=...)`` accepts."""
    return tuple(SCENARIOS)


def moved_marks(initial: Mapping[str, float], f: float) -> dict[str, float]:
    """``initial`` marks after an adverse move of ``f`` (0.1 = 10%)."""
    return {symbol: price * (1.0 + DIRECTIONS.get(symbol, 0.0) * f) for symbol, price in initial.items()}


class ScenarioPlayer:
    """Turns a scenario into marks, one tick at a time; holds the last marks when the script ends."""

    def __init__(self, name: str, account: SimAccount, initial: Mapping[str, float]) -> None:
        if name not in SCENARIOS:
            raise ValueError(f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)}")
        self.name = name
        self._account = account
        self._initial = dict(initial)
        self._targets = self._expand(SCENARIOS[name])
        self.tick = 0

    @property
    def length(self) -> int:
        """Ticks in the script."""
        return len(self._targets)

    @property
    def finished(self) -> bool:
        """Whether every tick of the script has been played."""
        return self.tick >= len(self._targets)

    def _ratio(self, f: float) -> float:
        figures = compute_figures(self._account, moved_marks(self._initial, f))
        return figures.margin_ratio if figures.margin_ratio is not None else float("inf")

    def _expand(self, segments: tuple[Segment, ...]) -> list[float | None]:
        targets: list[float | None] = []
        initial_ratio = self._ratio(0.0)
        previous = initial_ratio
        for segment in segments:
            goal = initial_ratio if segment.ratio is None else segment.ratio
            targets.extend(
                previous + (goal - previous) * step / (segment.ramp_ticks + 1)
                for step in range(1, segment.ramp_ticks + 1)
            )
            targets.extend([segment.ratio] * segment.hold_ticks)
            previous = goal
        return targets

    def solve(self, ratio: float) -> float:
        """The adverse move ``f`` at which the demo account's ratio is ``ratio`` (clamped to ±60%)."""
        low, high = _F_RANGE
        if ratio >= self._ratio(low):
            return low
        if ratio <= self._ratio(high):
            return high
        for _ in range(60):
            middle = (low + high) / 2.0
            if self._ratio(middle) > ratio:
                low = middle
            else:
                high = middle
        return (low + high) / 2.0

    def step(self) -> dict[str, float] | None:
        """The marks of the next tick, or ``None`` once the script is over (marks stay as they are)."""
        if self.finished:
            return None
        target = self._targets[self.tick]
        self.tick += 1
        return moved_marks(self._initial, 0.0 if target is None else self.solve(target))
