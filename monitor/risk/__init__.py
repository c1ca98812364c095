"""Pure risk math: tiered maintenance margin, margin ratio, liquidation and threshold prices.

Nothing here performs I/O, logs or reads the clock: frozen dataclasses in, frozen dataclasses out.
"""

from monitor.risk.engine import assess, isolated_ratio_at, ratio_at
from monitor.risk.model import (
    DEFAULT_THRESHOLDS,
    AccountSnapshot,
    Assessment,
    Drift,
    Level,
    MarginMode,
    Position,
    PositionAssessment,
    ReportedFigures,
    Side,
    Tier,
    TierSpec,
    TierTable,
    check_thresholds,
    level_for,
)

__all__ = [
    "DEFAULT_THRESHOLDS",
    "AccountSnapshot",
    "Assessment",
    "Drift",
    "Level",
    "MarginMode",
    "Position",
    "PositionAssessment",
    "ReportedFigures",
    "Side",
    "Tier",
    "TierSpec",
    "TierTable",
    "assess",
    "check_thresholds",
    "isolated_ratio_at",
    "level_for",
    "ratio_at",
]
