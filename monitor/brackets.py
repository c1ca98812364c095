"""Binance leverage brackets: parsing ``/fapi/v1/leverageBracket`` rows, and the bundled snapshot.

The bundled snapshot serves ``margin-monitor calc`` when a position gives no tiers of its own; the
daemon always fetches live brackets, which differ per account (``notionalCoef``).
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

from monitor.errors import TierTableError
from monitor.risk.families import FAMILIES, Exchange
from monitor.risk.model import TierSpec, TierTable

_SNAPSHOT = "binanceusdm-brackets.json"


def binance_symbol(symbol: str) -> str:
    """``BTC/USDT:USDT`` (ccxt) or ``BTCUSDT`` (Binance) -> ``BTCUSDT``."""
    if "/" not in symbol:
        return symbol.upper()
    base, _, rest = symbol.partition("/")
    quote = rest.split(":", 1)[0]
    return f"{base}{quote}".upper()


def parse_binance_brackets(
    rows: list[dict[str, Any]], exchange: Exchange = Exchange.BINANCEUSDM
) -> TierTable:
    """Turn Binance ``brackets`` rows into a validated table (``cum`` kept as the exchange sent it).

    COIN-M rows carry ``qtyFloor``/``qtyCap`` (coin) where USD-M rows carry ``notionalFloor``/``notionalCap``.
    """
    specs: list[TierSpec] = []
    for index, row in enumerate(rows):
        try:
            floor = float(row["notionalFloor"] if "notionalFloor" in row else row["qtyFloor"])
            cap = float(row["notionalCap"] if "notionalCap" in row else row["qtyCap"])
            rate = float(row["maintMarginRatio"])
            cum = float(row["cum"]) if row.get("cum") is not None else None
            leverage = float(row["initialLeverage"]) if row.get("initialLeverage") is not None else None
        except KeyError as exc:
            raise TierTableError(index, str(exc.args[0]), "missing from the bracket") from exc
        except (TypeError, ValueError) as exc:
            raise TierTableError(index, "bracket", f"not a number: {exc}") from exc
        specs.append(TierSpec(floor, cap, rate, cum, leverage))
    return FAMILIES[exchange].tier_table(specs)


@cache
def _snapshot() -> dict[str, list[dict[str, Any]]]:
    text = resources.files("monitor.data").joinpath(_SNAPSHOT).read_text(encoding="utf-8")
    document = json.loads(text)
    return {entry["symbol"]: entry["brackets"] for entry in document["brackets"]}


def bundled_symbols() -> list[str]:
    """Binance symbols (``BTCUSDT``) the bundled snapshot covers."""
    return sorted(_snapshot())


def bundled_tiers(symbol: str) -> TierTable | None:
    """The bundled Binance USD-M brackets of ``symbol``, or ``None`` when the snapshot lacks it."""
    rows = _snapshot().get(binance_symbol(symbol))
    return None if rows is None else parse_binance_brackets(rows)
