"""Suggested actions: the margin to add, or the part of a position to close, to restore a ratio.

Both ignore trading fees and slippage: closing costs a taker fee, so round the fraction up.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from monitor.risk.model import MarginMode

if TYPE_CHECKING:
    from monitor.risk.model import Assessment, PositionAssessment

#: The ratio an action restores unless the user sets another (200%).
DEFAULT_TARGET = 2.0


def margin_to_add(margin_balance: float, maintenance_margin: float, target: float = DEFAULT_TARGET) -> float:
    """Margin to transfer in so that ``margin_balance / maintenance_margin`` reaches ``target``.

    Adding margin leaves the maintenance margin unchanged, so this is exact; 0 when already there.
    """
    return max(0.0, target * maintenance_margin - margin_balance)


def account_margin_to_add(assessment: Assessment, target: float = DEFAULT_TARGET) -> float:
    """Margin to add to the cross wallet to bring the account's ratio to ``target``."""
    return margin_to_add(assessment.margin_balance, assessment.maintenance_margin, target)


def isolated_margin_to_add(position: PositionAssessment, target: float = DEFAULT_TARGET) -> float | None:
    """Margin to add to an isolated position to bring its own ratio to ``target``."""
    if position.margin_balance is None:
        return None
    return margin_to_add(position.margin_balance, position.maintenance_margin, target)


def close_fraction(
    assessment: Assessment, position: PositionAssessment, target: float = DEFAULT_TARGET
) -> float | None:
    """Fraction (0 to 1) of a cross position to close, at its mark, to bring the account to ``target``.

    Closing realizes the PnL into the wallet, so the margin balance stays put while the position's
    maintenance margin falls, bracket by bracket. ``None`` when even closing all of it falls short,
    and for isolated positions: closing part of one releases its margin in proportion, which
    leaves its ratio nearly where it was (add margin instead).
    """
    if position.position.margin_mode is MarginMode.ISOLATED:
        return None
    balance = assessment.margin_balance
    others = assessment.maintenance_margin - position.maintenance_margin
    if balance <= 0:
        return None
    allowed = balance / target - others
    if allowed >= position.maintenance_margin:
        return 0.0
    if allowed < 0:
        return None
    notional = position.notional
    tiers = position.position.tiers.tiers
    last = len(tiers) - 1
    for index in range(position.tier - 1, -1, -1):
        tier = tiers[index]
        kept = (allowed + tier.amount) / tier.rate
        if kept >= tier.floor:
            # Past a cap only where the margin jumps at the edge (no maintenance amount): keep up to it.
            ceiling = notional if index == last else min(tier.cap, notional)
            return 1.0 - min(kept, ceiling) / notional
    return 1.0
