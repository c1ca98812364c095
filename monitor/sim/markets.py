"""The simulator's instruments: Binance USDⓈ-M perpetuals with their leverage brackets.

BTCUSDT and ETHUSDT use the real brackets bundled in ``monitor/data`` (read here directly, not through
``monitor.risk``, so the simulator stays an independent source of truth). SOLUSDT's brackets are made up
but shaped like Binance's: rates rise with notional and ``cum`` follows the continuity recurrence.

``markets()`` is what the simulator lists by default. ``catalog()`` adds BNBUSDT and XRPUSDT (made-up
brackets of the same shape), listed only by a simulator holding an account with a position in them
(``bulk_accounts(n, positions=5)``), so the default listing, and every test written against it, stays
at three symbols.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources


@dataclass(frozen=True, slots=True)
class Bracket:
    """One leverage bracket: positions whose |notional| lies in [floor, cap) use this rate and amount."""

    number: int
    initial_leverage: int
    floor: float
    cap: float
    mmr: float
    cum: float


@dataclass(frozen=True, slots=True)
class MarketSpec:
    """A linear USDT-margined perpetual as the simulator lists it in exchangeInfo."""

    symbol: str
    base: str
    price_precision: int
    quantity_precision: int
    tick_size: str
    step_size: str
    initial_mark: float
    brackets: tuple[Bracket, ...]


# Made-up SOLUSDT brackets: (cap, rate, initial leverage); floors are the previous caps.
_SOL_ROWS = (
    (5_000.0, 0.005, 75),
    (50_000.0, 0.01, 50),
    (250_000.0, 0.02, 25),
    (1_000_000.0, 0.05, 10),
    (5_000_000.0, 0.10, 5),
    (10_000_000.0, 0.125, 4),
    (20_000_000.0, 0.25, 2),
    (50_000_000.0, 0.50, 1),
)


def _sol_brackets(rows: tuple[tuple[float, float, int], ...] = _SOL_ROWS) -> tuple[Bracket, ...]:
    brackets: list[Bracket] = []
    floor, previous_rate, cum = 0.0, 0.0, 0.0
    for number, (cap, rate, leverage) in enumerate(rows, start=1):
        # cum_b = cum_{b-1} + floor_b * (mmr_b - mmr_{b-1}) keeps MM continuous at the bracket edges.
        cum += floor * (rate - previous_rate)
        brackets.append(Bracket(number, leverage, floor, cap, rate, round(cum, 8)))
        floor, previous_rate = cap, rate
    return tuple(brackets)


def _bundled(symbol: str) -> tuple[Bracket, ...]:
    text = resources.files("monitor.data").joinpath("binanceusdm-brackets.json").read_text(encoding="utf-8")
    for entry in json.loads(text)["brackets"]:
        if entry["symbol"] == symbol:
            return tuple(
                Bracket(
                    int(row["bracket"]),
                    int(row["initialLeverage"]),
                    float(row["notionalFloor"]),
                    float(row["notionalCap"]),
                    float(row["maintMarginRatio"]),
                    float(row["cum"]),
                )
                for row in entry["brackets"]
            )
    raise KeyError(symbol)


# Made-up brackets for the two extra symbols: the SOL shape with a larger first bracket.
_ALT_ROWS = ((10_000.0, 0.005, 75), *_SOL_ROWS[1:])


@cache
def markets() -> dict[str, MarketSpec]:
    """Every market the simulator lists by default, keyed by Binance symbol (``BTCUSDT``)."""
    specs = (
        MarketSpec("BTCUSDT", "BTC", 2, 3, "0.10", "0.001", 60_000.0, _bundled("BTCUSDT")),
        MarketSpec("ETHUSDT", "ETH", 2, 3, "0.01", "0.001", 3_000.0, _bundled("ETHUSDT")),
        MarketSpec("SOLUSDT", "SOL", 4, 0, "0.0100", "1", 150.0, _sol_brackets()),
    )
    return {spec.symbol: spec for spec in specs}


@cache
def catalog() -> dict[str, MarketSpec]:
    """Every market the simulator knows: the default ones, then BNBUSDT and XRPUSDT."""
    extra = (
        MarketSpec("BNBUSDT", "BNB", 3, 2, "0.010", "0.01", 600.0, _sol_brackets(_ALT_ROWS)),
        MarketSpec("XRPUSDT", "XRP", 4, 1, "0.0001", "0.1", 0.6, _sol_brackets(_ALT_ROWS)),
    )
    return {**markets(), **{spec.symbol: spec for spec in extra}}


def scaled_brackets(symbol: str, notional_coef: float = 1.0) -> tuple[Bracket, ...]:
    """The brackets of ``symbol`` for an account whose brackets Binance scaled by ``notionalCoef``.

    Floors and caps scale with the coefficient, and so does ``cum`` (it is a notional times a rate).
    """
    base = catalog()[symbol].brackets
    if notional_coef == 1.0:
        return base
    return tuple(
        Bracket(
            b.number,
            b.initial_leverage,
            b.floor * notional_coef,
            b.cap * notional_coef,
            b.mmr,
            b.cum * notional_coef,
        )
        for b in base
    )


def bracket_for(brackets: tuple[Bracket, ...], notional: float) -> Bracket:
    """The bracket whose [floor, cap) holds ``|notional|`` (the last one beyond every cap)."""
    size = abs(notional)
    for bracket in brackets:
        if bracket.floor <= size < bracket.cap:
            return bracket
    return brackets[-1]
