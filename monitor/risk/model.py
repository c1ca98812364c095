"""Core types of the risk engine: tier tables, positions, account snapshots and assessments.

Every type is a frozen, slotted dataclass that validates in its constructor, so the engine never
meets a negative size or an unsorted tier table. Amounts are floats taken from payloads as parsed,
never re-rounded (see the README's note on precision).
"""

from __future__ import annotations

import math
from bisect import bisect_right
from dataclasses import dataclass, field, fields, replace
from enum import StrEnum
from typing import TYPE_CHECKING

from monitor.errors import PositionError, TierTableError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping, Sequence

#: Relative tolerance within which given maintenance amounts count as following the recurrence.
CUM_TOLERANCE = 1e-9

#: The largest wallet or notional a snapshot may hold, in the margin asset: far beyond any account
#: (all the money in the world is about 1e15 USD), and far enough below float's range (1.8e308) that
#: the engine's sums and products stay finite. A payload past it is garbage; taken as is, it could
#: overflow to inf and then NaN, and a NaN margin ratio reads as ``ok``.
MAX_AMOUNT = 1e18


class Side(StrEnum):
    """Direction of a position; ``sign`` is +1 for long and -1 for short."""

    LONG = "long"
    SHORT = "short"

    @property
    def sign(self) -> int:
        """+1 for a long, -1 for a short."""
        return 1 if self is Side.LONG else -1


class MarginMode(StrEnum):
    """Cross positions share the account's wallet; an isolated position has its own."""

    CROSS = "cross"
    ISOLATED = "isolated"


class Level(StrEnum):
    """How close a margin ratio is to liquidation, from harmless to liquidated."""

    OK = "ok"
    WARNING = "warning"
    DANGER = "danger"
    CRITICAL = "critical"
    LIQUIDATION = "liquidation"


#: Level names given to thresholds in descending order; further thresholds are all critical.
THRESHOLD_LEVELS = (Level.WARNING, Level.DANGER, Level.CRITICAL)

#: The default alarm thresholds as ratios (150%, 130%, 120%).
DEFAULT_THRESHOLDS = (1.5, 1.3, 1.2)


def level_for(margin_ratio: float | None, thresholds: Sequence[float]) -> Level:
    """Return the level of ``margin_ratio`` against descending ``thresholds`` (ratios, 1.0 = 100%).

    A ratio at or below 1.0 is ``liquidation``; at or below the i-th threshold, the i-th name of
    ``THRESHOLD_LEVELS`` (the last one for every further threshold). No ratio (no maintenance
    margin) cannot be liquidated and is ``ok``.
    """
    if margin_ratio is None:
        return Level.OK
    if margin_ratio <= 1.0:
        return Level.LIQUIDATION
    level = Level.OK
    for index, threshold in enumerate(thresholds):
        if margin_ratio <= threshold:
            level = THRESHOLD_LEVELS[min(index, len(THRESHOLD_LEVELS) - 1)]
    return level


def check_thresholds(thresholds: Sequence[float]) -> tuple[float, ...]:
    """Validate alarm thresholds (ratios): each above 1.0 and strictly descending."""
    checked = tuple(float(value) for value in thresholds)
    for index, value in enumerate(checked):
        if not math.isfinite(value) or value <= 1.0:
            raise ValueError(f"thresholds[{index}] must be above 100%, got {value * 100:g}%")
        if index and value >= checked[index - 1]:
            raise ValueError(f"thresholds[{index}] must be below thresholds[{index - 1}] (descending order)")
    return checked


@dataclass(frozen=True, slots=True)
class Tier:
    """One maintenance-margin bracket: notional in ``[floor, cap)`` pays ``rate`` less ``amount``.

    ``amount`` is the maintenance amount (Binance ``cum``, Bybit ``mmDeduction``), which keeps the
    maintenance margin continuous from one bracket to the next.
    """

    floor: float
    cap: float
    rate: float
    amount: float
    max_leverage: float | None = None

    def maintenance_margin(self, notional: float) -> float:
        """Maintenance margin of ``notional`` (absolute) charged at this bracket."""
        return notional * self.rate - self.amount


@dataclass(frozen=True, slots=True)
class TierSpec:
    """A bracket as read from a file or payload, before validation; ``amount`` may be missing."""

    floor: float
    cap: float
    rate: float
    amount: float | None = None
    max_leverage: float | None = None


@dataclass(frozen=True, slots=True)
class TierTable:
    """Brackets sorted by notional, contiguous from 0, with non-decreasing positive rates.

    Build one with ``TierTable.build``, which validates and fills in missing maintenance amounts.
    Notionals above the last cap are charged at the last bracket (the exchange would refuse such a
    position; the engine still needs a figure when it solves for far prices).
    """

    tiers: tuple[Tier, ...]
    floors: tuple[float, ...] = field(repr=False, compare=False)
    continuous: bool = field(compare=False)

    @classmethod
    def build(cls, specs: Iterable[TierSpec], *, deduction: bool = True) -> TierTable:
        """Validate ``specs`` and return the table.

        With ``deduction`` (Binance, Bybit, Hyperliquid) a missing maintenance amount is derived by
        the recurrence ``amount_b = amount_{b-1} + floor_b * (rate_b - rate_{b-1})``; without it (OKX)
        every amount is 0 and the bracket's rate applies to the whole notional.
        Raises ``TierTableError`` naming the first bad bracket.
        """
        rows = tuple(specs)
        if not rows:
            raise TierTableError(0, "floor", "a tier table needs at least one tier")
        tiers: list[Tier] = []
        continuous = True
        for index, spec in enumerate(rows):
            _check_finite(index, spec)
            previous = tiers[-1] if tiers else None
            if previous is None and spec.floor != 0:
                raise TierTableError(index, "floor", f"the first tier must start at 0, not {spec.floor:g}")
            if previous is not None and spec.floor != previous.cap:
                raise TierTableError(
                    index,
                    "floor",
                    f"must equal the previous tier's cap {previous.cap:g} (tiers sorted and contiguous),"
                    f" got {spec.floor:g}",
                )
            if spec.cap <= spec.floor:
                raise TierTableError(
                    index, "cap", f"must be above the floor {spec.floor:g}, got {spec.cap:g}"
                )
            if not 0 < spec.rate < 1:
                raise TierTableError(index, "rate", f"must be between 0 and 1, got {spec.rate:g}")
            if previous is not None and spec.rate < previous.rate:
                raise TierTableError(
                    index,
                    "rate",
                    f"must not fall below the previous tier's {previous.rate:g}, got {spec.rate:g}",
                )
            if spec.max_leverage is not None and spec.max_leverage <= 0:
                raise TierTableError(index, "max_leverage", f"must be positive, got {spec.max_leverage:g}")
            derived = 0.0 if previous is None else previous.amount + spec.floor * (spec.rate - previous.rate)
            if not deduction:
                if spec.amount not in (None, 0):
                    raise TierTableError(
                        index, "amount", "this exchange has no maintenance amount; leave it out"
                    )
                amount = 0.0
                continuous = continuous and (previous is None or spec.rate == previous.rate)
            elif spec.amount is None:
                amount = derived
            else:
                amount = spec.amount
                if index == 0 and amount != 0:
                    raise TierTableError(index, "amount", f"must be 0 in the first tier, got {amount:g}")
                if amount < 0:
                    raise TierTableError(index, "amount", f"must not be negative, got {amount:g}")
                if amount > spec.floor * spec.rate * (1 + CUM_TOLERANCE) + 1e-9:
                    # A larger deduction makes the maintenance margin negative at the floor: no risk at all.
                    raise TierTableError(
                        index,
                        "amount",
                        f"must not exceed floor x rate {spec.floor * spec.rate:g}, got {amount:g}",
                    )
                continuous = continuous and math.isclose(amount, derived, rel_tol=CUM_TOLERANCE, abs_tol=1e-9)
            tiers.append(Tier(spec.floor, spec.cap, spec.rate, amount, spec.max_leverage))
        return cls(tuple(tiers), tuple(tier.floor for tier in tiers), continuous)

    def index_for(self, notional: float) -> int:
        """Index of the bracket holding ``notional`` (absolute); a floor belongs to its own bracket."""
        index = bisect_right(self.floors, notional) - 1
        return max(index, 0)

    def tier_for(self, notional: float) -> Tier:
        """The bracket holding ``notional``."""
        return self.tiers[self.index_for(notional)]

    def maintenance_margin(self, notional: float) -> float:
        """Maintenance margin of ``notional`` (absolute), with the maintenance amount."""
        return self.tier_for(notional).maintenance_margin(notional)


def _check_finite(index: int, spec: TierSpec) -> None:
    for name in ("floor", "rate"):
        value = getattr(spec, name)
        if not math.isfinite(value) or value < 0:
            raise TierTableError(index, name, f"must be a finite number >= 0, got {value!r}")
    if math.isnan(spec.cap):
        raise TierTableError(index, "cap", "must be a number, got nan")
    for name in ("amount", "max_leverage"):
        value = getattr(spec, name)
        if value is not None and not math.isfinite(value):
            raise TierTableError(index, name, f"must be a finite number, got {value!r}")


@dataclass(frozen=True, slots=True)
class Position:
    """One open position, with everything its maintenance margin and PnL depend on.

    ``contracts`` counts contracts (never negative: the side says the direction) and
    ``contract_size`` converts them to the base asset (linear) or to the quote face value
    (inverse: Binance COIN-M BTCUSD is 100 USD a contract). ``inverse`` positions are margined and
    bracketed in the coin; their notional is ``size / price``.
    """

    symbol: str
    side: Side
    contracts: float
    entry_price: float
    mark_price: float
    tiers: TierTable
    contract_size: float = 1.0
    margin_mode: MarginMode = MarginMode.CROSS
    isolated_wallet: float | None = None
    inverse: bool = False

    def __post_init__(self) -> None:
        if not math.isfinite(self.contracts) or self.contracts < 0:
            raise PositionError("contracts", f"must be a finite number >= 0, got {self.contracts!r}")
        for name in ("entry_price", "mark_price", "contract_size"):
            value = getattr(self, name)
            if not math.isfinite(value) or value <= 0:
                raise PositionError(name, f"must be a finite number > 0, got {value!r}")
        for price in (self.entry_price, self.mark_price):
            self._check_notional(price)
        if self.margin_mode is MarginMode.ISOLATED:
            if self.isolated_wallet is None:
                raise PositionError("isolated_wallet", "an isolated position needs its isolated wallet")
            if not abs(self.isolated_wallet) <= MAX_AMOUNT:  # NaN fails too
                raise PositionError(
                    "isolated_wallet",
                    f"must be finite and within {MAX_AMOUNT:g}, got {self.isolated_wallet!r}",
                )

    def _check_notional(self, price: float) -> None:
        if self.notional(price) > MAX_AMOUNT:
            raise PositionError(
                "contracts",
                f"a notional of {self.notional(price):g} is beyond any account (> {MAX_AMOUNT:g})",
            )

    @property
    def size(self) -> float:
        """Contracts times contract size: base units (linear) or quote face value (inverse)."""
        return self.contracts * self.contract_size

    def notional(self, price: float | None = None) -> float:
        """Absolute notional at ``price`` (the mark by default), in the margin asset."""
        price = self.mark_price if price is None else price
        return self.size / price if self.inverse else self.size * price

    def unrealized_pnl(self, price: float | None = None) -> float:
        """Unrealized PnL at ``price`` (the mark by default), in the margin asset."""
        price = self.mark_price if price is None else price
        if self.inverse:
            return self.side.sign * self.size * (1.0 / self.entry_price - 1.0 / price)
        return self.side.sign * self.size * (price - self.entry_price)

    def maintenance_margin(self, price: float | None = None) -> float:
        """Tiered maintenance margin at ``price`` (the mark by default)."""
        return self.tiers.maintenance_margin(self.notional(price))

    def at_mark(self, price: float) -> Position:
        """This position marked at ``price``, which alone is validated (``replace`` checks all, 5x slower)."""
        if not math.isfinite(price) or price <= 0:
            raise PositionError("mark_price", f"must be a finite number > 0, got {price!r}")
        self._check_notional(price)
        moved = object.__new__(Position)
        for slot in _POSITION_SLOTS:
            slot.__set__(moved, slot.__get__(self))
        _POSITION_MARK.__set__(moved, price)
        return moved


@dataclass(frozen=True, slots=True)
class ReportedFigures:
    """The exchange's own account totals, kept to cross-check ours."""

    maintenance_margin: float | None = None
    margin_balance: float | None = None


@dataclass(frozen=True, slots=True)
class AccountSnapshot:
    """A wallet and its positions at one moment; ``wallet_balance`` is the cross wallet."""

    wallet_balance: float
    positions: tuple[Position, ...]
    reported: ReportedFigures | None = None

    def __post_init__(self) -> None:
        if not abs(self.wallet_balance) <= MAX_AMOUNT:  # NaN fails too
            raise PositionError(
                "wallet_balance", f"must be finite and within {MAX_AMOUNT:g}, got {self.wallet_balance!r}"
            )

    def with_mark(self, symbol: str, price: float) -> AccountSnapshot:
        """The same account with every position in ``symbol`` marked at ``price``."""
        return self.with_marks({symbol: price})

    def with_marks(self, marks: Mapping[str, float]) -> AccountSnapshot:
        """The same account with the positions in ``marks``' symbols marked at those prices.

        A stream calls this for every account on every tick: only the new marks are checked, and
        nothing else is validated again.
        """
        moved = tuple(
            position.at_mark(marks[position.symbol]) if position.symbol in marks else position
            for position in self.positions
        )
        snapshot = object.__new__(AccountSnapshot)
        for slot in _SNAPSHOT_SLOTS:
            slot.__set__(snapshot, slot.__get__(self))
        _SNAPSHOT_POSITIONS.__set__(snapshot, moved)
        return snapshot

    def symbols(self) -> frozenset[str]:
        """The symbols this account holds positions in."""
        return frozenset(position.symbol for position in self.positions if position.contracts)

    def with_wallet(self, wallet_balance: float) -> AccountSnapshot:
        """The same account with another cross wallet balance."""
        return replace(self, wallet_balance=wallet_balance)


#: The slot descriptors of the frozen classes a tick copies: setting a slot through its descriptor
#: bypasses the frozen ``__setattr__`` (only while the new object is being built).
_POSITION_SLOTS = tuple(getattr(Position, f.name) for f in fields(Position))
_SNAPSHOT_SLOTS = tuple(getattr(AccountSnapshot, f.name) for f in fields(AccountSnapshot))
_POSITION_MARK = getattr(Position, "mark_price")  # noqa: B009 - the descriptor, not an instance's value
_SNAPSHOT_POSITIONS = getattr(AccountSnapshot, "positions")  # noqa: B009 - likewise


@dataclass(frozen=True, slots=True)
class PositionAssessment:
    """Risk figures of one position at its mark.

    ``threshold_prices[i]`` is the mark at which the account (cross) or the position (isolated)
    reaches ``Assessment.thresholds[i]``, the other positions' marks held; ``None`` where no
    price reaches it. ``margin_ratio`` and ``level`` are the position's own for isolated positions
    and ``None`` for cross ones, whose ratio is the account's.
    """

    position: Position
    notional: float
    tier: int
    maintenance_margin_rate: float
    maintenance_amount: float
    maintenance_margin: float
    unrealized_pnl: float
    liquidation_price: float | None
    threshold_prices: tuple[float | None, ...]
    margin_balance: float | None = None
    margin_ratio: float | None = None
    level: Level | None = None


@dataclass(frozen=True, slots=True)
class Drift:
    """Our figures against the exchange's own, as (ours - theirs) / theirs; ``None`` when unknown."""

    maintenance_margin: float | None
    margin_balance: float | None

    @property
    def worst(self) -> float | None:
        """The larger absolute relative drift of the two, or ``None`` if neither is known."""
        known = [abs(value) for value in (self.maintenance_margin, self.margin_balance) if value is not None]
        return max(known) if known else None


@dataclass(frozen=True, slots=True)
class Assessment:
    """The account's cross-margin figures and every position's risk figures.

    ``margin_balance``, ``maintenance_margin`` and ``margin_ratio`` cover the cross positions, on
    which cross liquidation depends; ``margin_ratio`` is ``None`` when they need no maintenance
    margin. Isolated positions carry their own ratio in ``positions``.
    """

    margin_balance: float
    maintenance_margin: float
    margin_ratio: float | None
    level: Level
    thresholds: tuple[float, ...]
    positions: tuple[PositionAssessment, ...]
    drift: Drift | None = None

    @property
    def worst_level(self) -> Level:
        """The most severe level of the account and of its isolated positions."""
        return worst_of(self.level, (item.level for item in self.isolated()))

    @property
    def position_count(self) -> int:
        """How many positions ``positions`` holds."""
        return len(self.positions)

    def isolated(self) -> tuple[IsolatedFigures, ...]:
        """Each isolated position's own margin figures, which its alert key follows."""
        return tuple(
            IsolatedFigures(
                index,
                item.position.symbol,
                item.position.side,
                item.margin_balance,
                item.maintenance_margin,
                item.margin_ratio,
                item.level,
            )
            for index, item in enumerate(self.positions)
            if item.level is not None and item.margin_balance is not None
        )


@dataclass(frozen=True, slots=True)
class IsolatedFigures:
    """An isolated position's own margin figures, without its prices (``Assessment.isolated``).

    ``index`` is the position's place in ``Assessment.positions``.
    """

    index: int
    symbol: str
    side: Side
    margin_balance: float
    maintenance_margin: float
    margin_ratio: float | None
    level: Level


_LEVEL_ORDER = {level: rank for rank, level in enumerate(Level)}


def worst_of(level: Level, others: Iterable[Level]) -> Level:
    """The most severe of ``level`` and ``others``."""
    for other in others:
        if _LEVEL_ORDER[other] > _LEVEL_ORDER[level]:
            level = other
    return level


class DeferredAssessment(Assessment):
    """An assessment whose positions (their liquidation and threshold prices) are solved when read.

    ``monitor.risk.engine.Book`` builds these on a stream's ticks: the account's figures, its
    isolated positions' and its worst level are known at once; ``positions`` calls ``solve`` the
    first time it is read and keeps the result. Every figure equals ``assess``'s for the same marks.
    """

    __slots__ = ("_count", "_isolated", "_solve", "_worst")

    _count: int
    _isolated: tuple[IsolatedFigures, ...]
    _solve: Callable[[], tuple[PositionAssessment, ...]]
    _worst: Level

    @classmethod
    def of(
        cls,
        *,
        margin_balance: float,
        maintenance_margin: float,
        margin_ratio: float | None,
        level: Level,
        thresholds: tuple[float, ...],
        drift: Drift | None,
        isolated: tuple[IsolatedFigures, ...],
        count: int,
        solve: Callable[[], tuple[PositionAssessment, ...]],
    ) -> DeferredAssessment:
        """Build one without solving: ``solve`` gives the positions when they are first read."""
        deferred = object.__new__(cls)
        for name, value in (
            ("margin_balance", margin_balance),
            ("maintenance_margin", maintenance_margin),
            ("margin_ratio", margin_ratio),
            ("level", level),
            ("thresholds", thresholds),
            ("drift", drift),
        ):
            _ASSESSMENT_SLOTS[name].__set__(deferred, value)
        object.__setattr__(deferred, "_isolated", isolated)
        object.__setattr__(deferred, "_count", count)
        object.__setattr__(deferred, "_solve", solve)
        object.__setattr__(deferred, "_worst", worst_of(level, (item.level for item in isolated)))
        return deferred

    @property
    def positions(self) -> tuple[PositionAssessment, ...]:
        """Every position's figures and prices, solved the first time they are asked for."""
        try:
            solved: tuple[PositionAssessment, ...] = _ASSESSMENT_SLOTS["positions"].__get__(self)
        except AttributeError:
            solved = self._solve()
            _ASSESSMENT_SLOTS["positions"].__set__(self, solved)
        return solved

    @property
    def worst_level(self) -> Level:
        """The most severe level of the account and of its isolated positions (known without solving)."""
        return self._worst

    def isolated(self) -> tuple[IsolatedFigures, ...]:
        """Each isolated position's own margin figures (known without solving)."""
        return self._isolated

    @property
    def position_count(self) -> int:
        """How many positions ``positions`` holds (known without solving)."""
        return self._count

    @property
    def solved(self) -> bool:
        """Whether ``positions`` has been read (for tests and benchmarks)."""
        try:
            _ASSESSMENT_SLOTS["positions"].__get__(self)
        except AttributeError:
            return False
        return True


#: Assessment's slot descriptors: DeferredAssessment fills them without the frozen ``__setattr__``.
_ASSESSMENT_SLOTS = {f.name: Assessment.__dict__[f.name] for f in fields(Assessment)}
