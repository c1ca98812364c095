"""Benchmark of the Binance USDⓈ-M normaliser against ccxt's unified position parser, per position.

Both read the same ``/fapi/v3/positionRisk`` rows (the row recorded in ccxt's static tests, copied for
BTCUSDT and ETHUSDT). Ours: ``monitor.exchanges.binanceusdm.normalise`` (raw rows -> ``Position`` with
its tier table, plus the account's cross totals). Baseline, timed in the same process: ccxt's
``parse_position_risk`` on each row (Binance's ``parse_position`` for positionRisk rows), which is what
``fetch_positions`` spends per position.

Run ``python bench/normalise.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

# Run as a file (``python bench/normalise.py``): make the project importable without installing it.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import ccxt
from monitor.exchanges.binanceusdm import mark_rows, normalise, parse_brackets

if TYPE_CHECKING:
    from collections.abc import Callable

SIZES = (10, 100, 1000)
TARGET_US = 10.0
ROW = {
    "symbol": "BTCUSDT",
    "positionSide": "BOTH",
    "positionAmt": "0.009",
    "entryPrice": "67445.9",
    "breakEvenPrice": "67479.62295",
    "markPrice": "67502.68519858",
    "unRealizedProfit": "0.51106678",
    "liquidationPrice": "64846.98753790",
    "isolatedMargin": "0",
    "notional": "607.52416678",
    "marginAsset": "USDT",
    "isolatedWallet": "0",
    "initialMargin": "7.59405208",
    "maintMargin": "2.43009666",
    "positionInitialMargin": "7.59405208",
    "openOrderInitialMargin": "0",
    "adl": "2",
    "bidNotional": "0",
    "askNotional": "0",
    "updateTime": "1722161166529",
}
ACCOUNT = {
    "totalCrossWalletBalance": "25.72610060",
    "totalCrossUnPnl": "0.54230362",
    "totalMaintMargin": "2.43034303",
}
BRACKETS = [
    (0, 50_000, 0.004, 0.0),
    (50_000, 600_000, 0.005, 50.0),
    (600_000, 3_000_000, 0.0065, 950.0),
    (3_000_000, 12_000_000, 0.01, 11_450.0),
]
SYMBOLS = {"BTCUSDT": "BTC/USDT:USDT", "ETHUSDT": "ETH/USDT:USDT"}


def rows(count: int) -> list[dict[str, Any]]:
    """``count`` positionRisk rows, BTCUSDT and ETHUSDT alternating."""
    return [{**ROW, "symbol": "BTCUSDT" if index % 2 else "ETHUSDT"} for index in range(count)]


def bracket_payload() -> list[dict[str, Any]]:
    """LeverageBracket rows for both symbols."""
    brackets = [
        {
            "bracket": i + 1,
            "initialLeverage": 125,
            "notionalFloor": f,
            "notionalCap": c,
            "maintMarginRatio": r,
            "cum": m,
        }
        for i, (f, c, r, m) in enumerate(BRACKETS)
    ]
    return [{"symbol": symbol, "brackets": brackets} for symbol in SYMBOLS]


def ccxt_client() -> Any:  # noqa: ANN401 - ccxt clients are untyped
    """A sync ccxt binanceusdm client with the two markets set (no network)."""
    client = ccxt.binanceusdm()
    markets = []
    for market_id, symbol in SYMBOLS.items():
        base = symbol.split("/", 1)[0]
        markets.append(
            client.safe_market_structure(
                {
                    "id": market_id,
                    "symbol": symbol,
                    "base": base,
                    "quote": "USDT",
                    "settle": "USDT",
                    "baseId": base,
                    "quoteId": "USDT",
                    "settleId": "USDT",
                    "type": "swap",
                    "swap": True,
                    "contract": True,
                    "linear": True,
                    "inverse": False,
                    "contractSize": 1,
                    "precision": {"amount": 0.001, "price": 0.1, "base": 1e-8, "quote": 1e-8},
                    "info": {},
                }
            )
        )
    client.set_markets(markets)
    client.options["leverageBrackets"] = {
        symbol: [[str(f), str(r)] for f, _c, r, _m in BRACKETS] for symbol in SYMBOLS.values()
    }
    return client


def time_per_call(function: Callable[[], object], repeats: int, min_s: float) -> list[float]:
    """Seconds per call over ``repeats`` timed runs, each calibrated to last at least ``min_s``."""
    loops = 1
    while True:
        start = time.perf_counter_ns()
        for _ in range(loops):
            function()
        if (time.perf_counter_ns() - start) / 1e9 >= min_s:
            break
        loops *= 2
    results = []
    gc.disable()
    try:
        for _ in range(repeats):
            start = time.perf_counter_ns()
            for _ in range(loops):
                function()
            results.append((time.perf_counter_ns() - start) / 1e9 / loops)
    finally:
        gc.enable()
    return results


def main() -> None:
    """Print µs per position for ours and ccxt's, and the ratio."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a smoke run")
    args = parser.parse_args()
    repeats, min_s = (3, 0.02) if args.quick else (7, 0.2)
    tiers = parse_brackets(bracket_payload())
    client = ccxt_client()
    markets = {market_id: client.market(symbol) for market_id, symbol in SYMBOLS.items()}
    marks = mark_rows([{"symbol": symbol, "markPrice": "67502.68519858"} for symbol in SYMBOLS])
    print(f"ccxt {ccxt.__version__}, Python {sys.version.split()[0]}; median of {repeats} repeats")
    print(f"{'positions':>9} | {'ours µs/pos':>11} | {'ccxt µs/pos':>11} | {'ccxt / ours':>11}")
    verdict = ""
    for size in SIZES:
        payload = rows(size)

        def ours(payload: list[dict[str, Any]] = payload) -> object:
            return normalise(ACCOUNT, payload, marks, tiers, symbols=SYMBOLS)

        def theirs(payload: list[dict[str, Any]] = payload) -> object:
            return [client.parse_position_risk(row, markets[row["symbol"]]) for row in payload]

        assert len(normalise(ACCOUNT, payload, marks, tiers, symbols=SYMBOLS).positions) == size  # noqa: S101
        ours_us = statistics.median(time_per_call(ours, repeats, min_s)) / size * 1e6
        theirs_us = statistics.median(time_per_call(theirs, repeats, min_s)) / size * 1e6
        print(f"{size:>9} | {ours_us:>11.2f} | {theirs_us:>11.2f} | {theirs_us / ours_us:>10.1f}x")
        if size == 100:
            verdict = "PASS" if ours_us < TARGET_US else "MISS"
            verdict = f"target: < {TARGET_US:g} µs a position (100 positions): {verdict} ({ours_us:.2f} µs)"
    print(verdict)


if __name__ == "__main__":
    main()
