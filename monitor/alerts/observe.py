"""From an assessment to the alert engine's observations (pure)."""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

from monitor.alerts.engine import Observation
from monitor.alerts.model import PositionAtRisk, SuggestedAction
from monitor.risk.actions import account_margin_to_add, close_fraction, isolated_margin_to_add
from monitor.risk.model import MarginMode

if TYPE_CHECKING:
    from monitor.alerts.engine import AlertPolicy, Details
    from monitor.risk.model import Assessment, IsolatedFigures, PositionAssessment


def isolated_key(account: str, figures: IsolatedFigures) -> str:
    """The alert key of an isolated position: ``account/SYMBOL/side``."""
    return f"{account}/{figures.symbol}/{figures.side.value}"


def observations(
    account: str, exchange: str, assessment: Assessment, policy: AlertPolicy
) -> list[Observation]:
    """The account's cross margin, then each isolated position with a ratio of its own.

    The positions at risk and the suggested action are computed only for an observation that
    raises an alert (``Observation.details``): until then the assessment's positions are not read,
    and a stream's assessment need not solve their prices.
    """

    def cross_details() -> Details:
        cross = [item for item in assessment.positions if item.position.margin_mode is MarginMode.CROSS]
        level = policy.level_of(assessment.margin_ratio)
        return _at_risk(cross, assessment.thresholds, level, policy), _cross_action(assessment, cross, policy)

    found = [
        Observation(
            key=account,
            account=account,
            exchange=exchange,
            margin_ratio=assessment.margin_ratio,
            margin_balance=assessment.margin_balance,
            maintenance_margin=assessment.maintenance_margin,
            details=cross_details,
        )
    ]
    for figures in assessment.isolated():
        if figures.margin_ratio is None:
            continue
        found.append(
            Observation(
                key=isolated_key(account, figures),
                account=account,
                exchange=exchange,
                margin_ratio=figures.margin_ratio,
                margin_balance=figures.margin_balance,
                maintenance_margin=figures.maintenance_margin,
                details=partial(_isolated_details, assessment, figures.index, policy),
            )
        )
    return found


def _cross_action(
    assessment: Assessment, cross: list[PositionAssessment], policy: AlertPolicy
) -> SuggestedAction | None:
    if assessment.margin_ratio is None:
        return None
    fractions = [
        (fraction, item.position.symbol)
        for item in cross
        if (fraction := close_fraction(assessment, item, policy.target_ratio))
    ]
    smallest = min(fractions) if fractions else None
    return SuggestedAction(
        target_ratio_pct=policy.target_ratio * 100,
        margin_to_add=account_margin_to_add(assessment, policy.target_ratio),
        close_symbol=None if smallest is None else smallest[1],
        close_fraction=None if smallest is None else smallest[0],
    )


def _isolated_details(assessment: Assessment, index: int, policy: AlertPolicy) -> Details:
    item = assessment.positions[index]
    own = policy.level_of(item.margin_ratio)
    action = SuggestedAction(
        target_ratio_pct=policy.target_ratio * 100,
        margin_to_add=isolated_margin_to_add(item, policy.target_ratio),
    )
    return _at_risk([item], assessment.thresholds, own, policy), action


def _at_risk(
    items: list[PositionAssessment], thresholds: tuple[float, ...], level: str, policy: AlertPolicy
) -> tuple[PositionAtRisk, ...]:
    upcoming = policy.next_threshold(level)
    at_risk = []
    for item in items:
        position = item.position
        liquidation = item.liquidation_price
        next_price = None
        if upcoming is not None:
            if upcoming == 1.0:
                next_price = liquidation
            elif upcoming in thresholds:
                next_price = item.threshold_prices[thresholds.index(upcoming)]
        at_risk.append(
            PositionAtRisk(
                symbol=position.symbol,
                side=position.side.value,
                margin_mode=position.margin_mode.value,
                mark_price=position.mark_price,
                liquidation_price=liquidation,
                liquidation_distance_pct=None
                if liquidation is None
                else abs(position.mark_price - liquidation) / position.mark_price * 100,
                next_threshold_pct=None if upcoming is None else upcoming * 100,
                next_threshold_price=next_price,
            )
        )
    # Nearest to liquidation first: that is the position the trader must look at.
    at_risk.sort(
        key=lambda p: float("inf") if p.liquidation_distance_pct is None else p.liquidation_distance_pct
    )
    return tuple(at_risk)
