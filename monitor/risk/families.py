"""Formula families: how each exchange turns its tier rows into a maintenance-margin table.

The quirks are data, one row an exchange family, so the engine itself never asks which exchange
it is looking at.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from monitor.errors import TierTableError
from monitor.risk.model import TierSpec, TierTable

if TYPE_CHECKING:
    from collections.abc import Iterable


class Exchange(StrEnum):
    """Exchange families whose margin formulas the engine knows (ccxt ids)."""

    BINANCEUSDM = "binanceusdm"
    BINANCECOINM = "binancecoinm"
    BYBIT = "bybit"
    OKX = "okx"
    HYPERLIQUID = "hyperliquid"


@dataclass(frozen=True, slots=True)
class FormulaFamily:
    """How one exchange family computes maintenance margin.

    ``inverse``: contracts are quoted in USD and margined in the coin. ``deduction``: brackets carry
    a maintenance amount (derived by the recurrence when missing); without it the bracket's rate
    applies to the whole notional. ``rate_from_leverage``: the rate is half the initial margin at
    the bracket's maximum leverage, ``1 / (2 * max_leverage)``, when no rate is given.
    """

    exchange: Exchange
    inverse: bool
    deduction: bool
    rate_from_leverage: bool
    exact: bool

    def tier_table(self, rows: Iterable[TierSpec | RawTier]) -> TierTable:
        """Validate ``rows`` into a table with this family's rules."""
        return TierTable.build(
            (self._spec(index, row) for index, row in enumerate(rows)), deduction=self.deduction
        )

    def _spec(self, index: int, row: TierSpec | RawTier) -> TierSpec:
        if isinstance(row, TierSpec):
            return row
        rate = row.rate
        if rate is None and self.rate_from_leverage and row.max_leverage:
            rate = 1.0 / (2.0 * row.max_leverage)
        if rate is None:
            what = "or max_leverage " if self.rate_from_leverage else ""
            raise TierTableError(
                index, "rate", f"missing: give the maintenance margin rate {what}of this tier"
            )
        return TierSpec(row.floor, row.cap, rate, row.amount, row.max_leverage)


@dataclass(frozen=True, slots=True)
class RawTier:
    """A tier row whose rate may be missing (Hyperliquid gives only the maximum leverage)."""

    floor: float
    cap: float
    rate: float | None
    amount: float | None = None
    max_leverage: float | None = None


FAMILIES: dict[Exchange, FormulaFamily] = {
    family.exchange: family
    for family in (
        FormulaFamily(
            Exchange.BINANCEUSDM,
            inverse=False,
            deduction=True,
            rate_from_leverage=False,
            exact=True,
        ),
        FormulaFamily(
            Exchange.BINANCECOINM,
            inverse=True,
            deduction=True,
            rate_from_leverage=False,
            exact=True,
        ),
        FormulaFamily(Exchange.BYBIT, inverse=False, deduction=True, rate_from_leverage=False, exact=False),
        FormulaFamily(Exchange.OKX, inverse=False, deduction=False, rate_from_leverage=False, exact=False),
        FormulaFamily(
            Exchange.HYPERLIQUID,
            inverse=False,
            deduction=True,
            rate_from_leverage=True,
            exact=False,
        ),
    )
}
