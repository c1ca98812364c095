"""The risk engine: margin ratio, liquidation price and threshold prices of an account.

Pure: an ``AccountSnapshot`` in, an ``Assessment`` out, no I/O and no clock.

The solver works in a variable ``u`` in which a position's notional is linear: ``u`` is the price
for linear contracts and ``1 / price`` for inverse ones. Then a position's unrealized PnL is
``a + b*u`` and its maintenance margin in bracket ``t`` is ``t.rate*c*u - t.amount``, so the
margin excess at ratio ``k``,

    f(u) = wallet + PnL_others + sum(a + b*u) - k * (MM_others + sum(rate*c*u - amount)),

is piecewise linear in ``u`` with a break at every bracket edge. Its root in one bracket is

    u = (wallet + PnL_others + a - k*MM_others + k*amount) / (k*rate*c - b)

which for a linear one-way position is the exchange's own formula
``P_k = (WB + UPNL1 - k*TMM1 + k*cum - s*Q*EP) / (k*Q*mmr - s*Q)``. When the root falls outside the
bracket it was solved in, the solver walks bracket by bracket from the mark in the direction in
which the excess shrinks (towards the threshold) or grows (back to it, when the account is already
past it), and returns the first root that lies in its own bracket: the first price at which the
ratio reaches ``k``. At a bracket edge where the excess jumps across zero (tables without a
maintenance amount, such as OKX's) the edge itself is that price.
"""

from __future__ import annotations

from bisect import bisect_right
from functools import partial
from typing import TYPE_CHECKING, Any

from monitor.risk.model import (
    DEFAULT_THRESHOLDS,
    MAX_AMOUNT,
    AccountSnapshot,
    Assessment,
    DeferredAssessment,
    Drift,
    IsolatedFigures,
    MarginMode,
    PositionAssessment,
    level_for,
)

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from monitor.risk.model import Position, ReportedFigures, Tier

#: A root this close (relatively) outside its bracket still counts as inside: at a bracket edge the
#: two neighbouring brackets give the same root up to rounding, and one of them must accept it.
EDGE_TOLERANCE = 1e-12

_INF = float("inf")

# A leg is one position that moves with the price being solved for (a one-way position, or one
# side of a hedge-mode pair): (tiers, bracket index at the mark, c, a, b, continuous, u at the mark).
_Leg = tuple["tuple[Tier, ...]", int, float, float, float, bool, float]


def assess(account: AccountSnapshot, thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> Assessment:
    """Assess ``account`` at its positions' marks against ``thresholds`` (ratios, descending).

    ``thresholds`` are trusted to be validated (``check_thresholds``) where they were read.
    """
    ratios = (1.0, *thresholds)
    wallet = account.wallet_balance
    legs: list[_Leg] = []
    figures: list[tuple[float, int, float, float]] = []
    cross_pnl = 0.0
    cross_mm = 0.0
    groups: dict[str, list[int]] = {}
    for index, position in enumerate(account.positions):
        size, a, b = _coefficients(position)
        u0 = 1.0 / position.mark_price if position.inverse else position.mark_price
        notional = size * u0
        table = position.tiers
        bracket = table.index_for(notional)
        tier = table.tiers[bracket]
        maintenance_margin = notional * tier.rate - tier.amount if size else 0.0
        pnl = a + b * u0
        legs.append((table.tiers, bracket, size, a, b, table.continuous, u0))
        figures.append((notional, bracket, maintenance_margin, pnl))
        if position.margin_mode is MarginMode.CROSS:
            cross_pnl += pnl
            cross_mm += maintenance_margin
            groups.setdefault(position.symbol, []).append(index)

    margin_balance = wallet + cross_pnl
    margin_ratio = margin_balance / cross_mm if cross_mm > 0 else None

    prices: list[tuple[float | None, ...]] = [()] * len(legs)
    for members in groups.values():
        group_pnl = sum(figures[i][3] for i in members)
        group_mm = sum(figures[i][2] for i in members)
        solved = _solve_group(
            [legs[i] for i in members if legs[i][2]],
            inverse=account.positions[members[0]].inverse,
            base=margin_balance - group_pnl,
            other_mm=cross_mm - group_mm,
            margin_balance=margin_balance,
            maintenance_margin=cross_mm,
            ratios=ratios,
        )
        for i in members:
            prices[i] = solved

    assessed: list[PositionAssessment] = []
    for index, position in enumerate(account.positions):
        notional, bracket, maintenance_margin, pnl = figures[index]
        tier = position.tiers.tiers[bracket]
        own_balance: float | None = None
        own_ratio: float | None = None
        own_level = None
        if position.margin_mode is MarginMode.ISOLATED:
            own_balance = (position.isolated_wallet or 0.0) + pnl
            own_ratio = own_balance / maintenance_margin if maintenance_margin > 0 else None
            own_level = level_for(own_ratio, thresholds)
            prices[index] = _solve_group(
                [legs[index]] if legs[index][2] else [],
                inverse=position.inverse,
                base=position.isolated_wallet or 0.0,
                other_mm=0.0,
                margin_balance=own_balance,
                maintenance_margin=maintenance_margin,
                ratios=ratios,
            )
        solved = prices[index]
        assessed.append(
            PositionAssessment(
                position=position,
                notional=notional,
                tier=bracket + 1,
                maintenance_margin_rate=tier.rate,
                maintenance_amount=tier.amount,
                maintenance_margin=maintenance_margin,
                unrealized_pnl=pnl,
                liquidation_price=solved[0],
                threshold_prices=solved[1:],
                margin_balance=own_balance,
                margin_ratio=own_ratio,
                level=own_level,
            )
        )

    return Assessment(
        margin_balance=margin_balance,
        maintenance_margin=cross_mm,
        margin_ratio=margin_ratio,
        level=level_for(margin_ratio, thresholds),
        thresholds=tuple(thresholds),
        positions=tuple(assessed),
        drift=_drift(account.reported, maintenance_margin=cross_mm, margin_balance=margin_balance),
    )


class Book:
    """An account's positions reduced to what its margin figures need at new marks (a stream's tick).

    A stream recomputes every account that holds a symbol on each of its mark ticks, a thousand
    accounts a second, and nearly always only the ratios matter. ``assess(marks)`` gives exactly
    the figures ``assess(snapshot.with_marks(marks))`` gives, bit for bit (the same operations in
    the same order, and the same errors for a bad mark), and leaves the liquidation and threshold
    prices to be solved when they are read (``DeferredAssessment``). It builds no position: a tick
    leaves the garbage collector little to scan (a sweep's worth of positions and assessments cost
    a 20-30 ms collection with the loop held now and then).
    """

    __slots__ = ("_legs", "snapshot")

    def __init__(self, snapshot: AccountSnapshot) -> None:
        self.snapshot = snapshot
        legs: list[list[Any]] = []
        for position in snapshot.positions:
            size, a, b = _coefficients(position)
            table = position.tiers
            bracket = table.index_for(position.notional())
            legs.append([position, size, a, b, table.floors, table.tiers, len(table.floors) - 1, bracket])
        self._legs = legs

    def assess(
        self, marks: Mapping[str, float], thresholds: Sequence[float] = DEFAULT_THRESHOLDS
    ) -> DeferredAssessment:
        """The account at ``marks`` (a position whose symbol is missing keeps its mark), prices deferred."""
        cross_pnl = 0.0
        cross_mm = 0.0
        isolated: list[IsolatedFigures] = []
        moved: list[float] = []
        for index, leg in enumerate(self._legs):
            position, size, a, b, floors, tiers, last, bracket = leg
            mark = marks.get(position.symbol, position.mark_price)
            if not 0.0 < mark < _INF or position.notional(mark) > MAX_AMOUNT:
                position.at_mark(mark)  # raises the error with_marks would
            moved.append(mark)
            u0 = 1.0 / mark if position.inverse else mark
            notional = size * u0
            if not (floors[bracket] <= notional and (bracket == last or notional < floors[bracket + 1])):
                bracket = leg[7] = max(bisect_right(floors, notional) - 1, 0)
            tier = tiers[bracket]
            maintenance_margin = notional * tier.rate - tier.amount if size else 0.0
            pnl = a + b * u0
            if position.margin_mode is MarginMode.CROSS:
                cross_pnl += pnl
                cross_mm += maintenance_margin
            else:
                own_balance = (position.isolated_wallet or 0.0) + pnl
                own_ratio = own_balance / maintenance_margin if maintenance_margin > 0 else None
                isolated.append(
                    IsolatedFigures(
                        index,
                        position.symbol,
                        position.side,
                        own_balance,
                        maintenance_margin,
                        own_ratio,
                        level_for(own_ratio, thresholds),
                    )
                )
        snapshot = self.snapshot
        margin_balance = snapshot.wallet_balance + cross_pnl
        margin_ratio = margin_balance / cross_mm if cross_mm > 0 else None
        return DeferredAssessment.of(
            margin_balance=margin_balance,
            maintenance_margin=cross_mm,
            margin_ratio=margin_ratio,
            level=level_for(margin_ratio, thresholds),
            thresholds=tuple(thresholds),
            drift=_drift(snapshot.reported, maintenance_margin=cross_mm, margin_balance=margin_balance),
            isolated=tuple(isolated),
            count=len(moved),
            solve=partial(_solve_at, snapshot, tuple(moved), tuple(thresholds)),
        )


def _coefficients(position: Position) -> tuple[float, float, float]:
    """(size, a, b): the position's unrealized PnL is ``a + b*u`` (``u`` the mark, or 1/mark if inverse).

    ``assess`` and ``Book`` both take them from here, so their figures stay equal bit for bit.
    """
    size = position.contracts * position.contract_size
    sign = 1.0 if position.side == "long" else -1.0
    if position.inverse:
        return size, sign * size / position.entry_price, -sign * size
    return size, -sign * size * position.entry_price, sign * size


def _solve_at(
    snapshot: AccountSnapshot, marks: tuple[float, ...], thresholds: tuple[float, ...]
) -> tuple[PositionAssessment, ...]:
    """The positions' figures and prices of ``snapshot`` at ``marks`` (one a position, in order)."""
    moved = AccountSnapshot(
        snapshot.wallet_balance,
        tuple(position.at_mark(mark) for position, mark in zip(snapshot.positions, marks, strict=True)),
        snapshot.reported,
    )
    return assess(moved, thresholds).positions


def ratio_at(account: AccountSnapshot) -> float | None:
    """The cross margin ratio of ``account`` at its marks (``None`` without maintenance margin)."""
    balance = account.wallet_balance
    maintenance = 0.0
    for position in account.positions:
        if position.margin_mode is MarginMode.CROSS:
            balance += position.unrealized_pnl()
            maintenance += position.maintenance_margin()
    return balance / maintenance if maintenance > 0 else None


def isolated_ratio_at(position: Position) -> float | None:
    """An isolated position's own margin ratio at its mark (``None`` without maintenance margin)."""
    maintenance = position.maintenance_margin()
    if maintenance <= 0:
        return None
    return ((position.isolated_wallet or 0.0) + position.unrealized_pnl()) / maintenance


def _drift(
    reported: ReportedFigures | None, *, maintenance_margin: float, margin_balance: float
) -> Drift | None:
    if reported is None:
        return None
    return Drift(
        maintenance_margin=_relative(maintenance_margin, reported.maintenance_margin),
        margin_balance=_relative(margin_balance, reported.margin_balance),
    )


def _relative(ours: float, theirs: float | None) -> float | None:
    if theirs is None:
        return None
    if theirs == 0:
        return 0.0 if ours == 0 else None
    return (ours - theirs) / abs(theirs)


def _solve_group(
    legs: list[_Leg],
    *,
    inverse: bool,
    base: float,
    other_mm: float,
    margin_balance: float,
    maintenance_margin: float,
    ratios: Sequence[float],
) -> tuple[float | None, ...]:
    """Prices (for ``ratios``, in order) at which the legs' shared mark takes the ratio there."""
    if not legs:
        return (None,) * len(ratios)
    solve = _solve_one if len(legs) == 1 else _solve_many
    solved = [solve(legs, base, other_mm, k, margin_balance - k * maintenance_margin) for k in ratios]
    if inverse:
        return tuple(None if u is None else 1.0 / u for u in solved)
    return tuple(solved)


def _solve_one(legs: list[_Leg], base: float, other_mm: float, k: float, excess: float) -> float | None:
    """Root of the margin excess at ratio ``k`` for one leg; ``excess`` is its value at the mark."""
    tiers, index, c, a, b, continuous, u0 = legs[0]
    if excess == 0:
        return u0
    last = len(tiers) - 1
    tier = tiers[index]
    slope = b - k * tier.rate * c
    step = _direction(excess, slope, b)
    fixed = base + a - k * other_mm
    while True:
        if slope:
            u = -(fixed + k * tier.amount) / slope
            if (
                u > 0
                and u * c >= tier.floor * (1 - EDGE_TOLERANCE)
                and (index == last or u * c < tier.cap * (1 + EDGE_TOLERANCE))
            ):
                return u
        if step > 0:
            if index == last:
                return None
            edge = tier.cap / c
            index += 1
        else:
            if index == 0:
                return None
            edge = tier.floor / c
            index -= 1
        tier = tiers[index]
        slope = b - k * tier.rate * c
        if not continuous and _jumps_across(excess, fixed + k * tier.amount + slope * edge):
            return edge


def _solve_many(legs: list[_Leg], base: float, other_mm: float, k: float, excess: float) -> float | None:
    """Root of the margin excess at ratio ``k`` for several legs sharing one mark (hedge mode)."""
    if excess == 0:
        return legs[0][6]
    indexes = [leg[1] for leg in legs]
    fixed = base + sum(leg[3] for leg in legs) - k * other_mm
    b_total = sum(leg[4] for leg in legs)
    continuous = all(leg[5] for leg in legs)

    def line() -> tuple[float, float, float, float]:
        const = fixed
        slope = b_total
        low = 0.0
        high = _INF
        for (tiers, _, c, *_rest), i in zip(legs, indexes, strict=True):
            tier = tiers[i]
            const += k * tier.amount
            slope -= k * tier.rate * c
            low = max(low, tier.floor / c)
            if i < len(tiers) - 1:
                high = min(high, tier.cap / c)
        return const, slope, low, high

    const, slope, low, high = line()
    step = _direction(excess, slope, b_total)
    while True:
        if slope:
            u = -const / slope
            if u > 0 and low * (1 - EDGE_TOLERANCE) <= u < high * (1 + EDGE_TOLERANCE):
                return u
        if step > 0:
            if high == _INF:
                return None
            edge = high
            for n, (tiers, _, c, *_rest) in enumerate(legs):
                if indexes[n] < len(tiers) - 1 and tiers[indexes[n]].cap / c == high:
                    indexes[n] += 1
        else:
            if low == 0:
                return None
            edge = low
            for n, (tiers, _, c, *_rest) in enumerate(legs):
                if indexes[n] > 0 and tiers[indexes[n]].floor / c == low:
                    indexes[n] -= 1
        const, slope, low, high = line()
        if not continuous and _jumps_across(excess, const + slope * edge):
            return edge


def _direction(excess: float, slope: float, b: float) -> int:
    """+1 to walk towards higher ``u``, -1 towards lower, to bring the excess to zero."""
    if slope == 0:
        # A flat bracket says nothing; walk the way the position loses (or, below k, gains).
        slope = b
    shrinking = -1 if slope > 0 else 1
    return shrinking if excess > 0 else -shrinking


def _jumps_across(excess: float, after: float) -> bool:
    """Whether the excess, entering a bracket at its edge, is already across zero from ``excess``.

    Only tables without a maintenance amount jump at an edge; had the excess crossed zero inside
    the bracket before, the solver would have returned that root.
    """
    return after <= 0 if excess > 0 else after >= 0
