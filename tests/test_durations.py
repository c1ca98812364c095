"""Durations as people write them."""

from __future__ import annotations

import pytest
from monitor.durations import format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("30m", 1800), ("2h", 7200), ("1d", 86400), ("1h30m", 5400), ("45", 45), ("1.5h", 5400)],
    ids=["seconds", "minutes", "hours", "days", "combined", "bare-number", "fraction"],
)
def test_parse(text: str, seconds: float) -> None:
    """Each unit, combined units and a bare number of seconds."""
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "2x", "h", "-5m", "0s", "2h junk"], ids=str)
def test_bad_durations_are_refused(text: str) -> None:
    """Anything else is a ValueError that quotes the text."""
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_format_round_trips() -> None:
    """Formatting gives back what parses to the same seconds."""
    for seconds in (59, 3600, 5400, 90061):
        assert parse_duration(format_duration(seconds)) == seconds
