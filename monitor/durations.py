"""Durations as people write them: ``90s``, ``30m``, ``2h``, ``1d``, ``1h30m``."""

from __future__ import annotations

import re

_PART = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def parse_duration(text: str) -> float:
    """Seconds in ``text``; ``ValueError`` naming the text when it is not a duration."""
    cleaned = text.strip().lower().replace(" ", "")
    if cleaned and re.fullmatch(r"\d+(?:\.\d+)?", cleaned):
        cleaned += "s"
    parts = _PART.findall(cleaned)
    if not cleaned or "".join(f"{number}{unit}" for number, unit in parts) != cleaned:
        raise ValueError(f"not a duration: {text!r} (write 90s, 30m, 2h, 1d or 1h30m)")
    seconds = sum(float(number) * _UNITS[unit] for number, unit in parts)
    if seconds <= 0:
        raise ValueError(f"not a positive duration: {text!r}")
    return seconds


def format_duration(seconds: float) -> str:
    """``5400`` -> ``1h30m``: the largest units, down to seconds."""
    remaining = round(seconds)
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, remaining = divmod(remaining, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0s"
