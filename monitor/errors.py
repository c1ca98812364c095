"""The project's one exception hierarchy.

The names say whose fault an error is and what the caller must do about it: a ``UserInputError``
means the person who wrote a file or flag must fix it; a ``TierTableError`` raised while reading an
exchange payload means the exchange (or our adapter) sent something we cannot use.
"""

from __future__ import annotations


class MarginMonitorError(Exception):
    """Base of every error this project raises on purpose."""


class UserInputError(MarginMonitorError):
    """Input written by a person (a file, a flag, a config key) is wrong.

    ``field`` is the path of the offending value, such as ``positions[1].tiers[0].min_notional``,
    so the message can point at it; ``source`` names the file or flag set it came from.
    """

    def __init__(self, field: str, problem: str, *, source: str | None = None) -> None:
        self.field = field
        self.problem = problem
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(f"{where}{field}: {problem}")


class TierTableError(MarginMonitorError):
    """A maintenance-margin tier table is unusable (unsorted, gapped, non-positive rates...).

    ``tier`` is the index of the first bad tier and ``field`` the tier's key at fault, so callers
    that read the table from a file or payload can re-raise it with the full path.
    """

    def __init__(self, tier: int, field: str, problem: str) -> None:
        self.tier = tier
        self.field = field
        self.problem = problem
        super().__init__(f"tiers[{tier}].{field}: {problem}")


class PositionError(MarginMonitorError):
    """A position's figures are unusable (negative size, non-positive price, missing wallet...)."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}")
