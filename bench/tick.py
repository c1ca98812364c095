"""Benchmark of one stream tick's work per account, in one process, without the network.

A mark tick moves the five symbols of 1,000 accounts of 5 cross positions each (Binance USDⓈ-M
bundled brackets); for each account the daemon then does what ``Streaming._recompute`` does before
its alerts go out: the new marks into the snapshot (``with_marks``), the assessment (ratio,
liquidation and threshold prices), the threshold prices nearest the mark (the next tick's
ordering), and the alert engine's evaluation (``Alerting.evaluate``). The ticks wiggle the marks
by 0.1% so no alert fires: the steady state of a stream. CPU time (``time.process_time``) per
account per tick; min and median over the ticks.

This is the floor under ``bench/streams.py``'s cost and latency figures, without its noise (the
simulator, websockets, MQTT and the log). Run ``python bench/tick.py`` (``--profile`` for where
the time goes).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

# Run as a file (``python bench/tick.py``): make the project importable without installing it.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from monitor.alerts.engine import AlertPolicy
from monitor.brackets import bundled_tiers
from monitor.risk import AccountSnapshot, Position, Side, assess
from monitor.service.alerting import Alerting
from monitor.service.streaming import _edges

if TYPE_CHECKING:
    from monitor.alerts.model import Alert
    from monitor.risk import TierTable

ACCOUNTS = 1000
TICKS = 60
WIGGLE = 0.001
MARKS = {"BTCUSDT": 60_000.0, "ETHUSDT": 3_000.0, "SOLUSDT": 150.0, "BNBUSDT": 600.0, "XRPUSDT": 0.6}
THRESHOLDS = (1.5, 1.3, 1.2)


class _Discard:
    """A submitter that accepts and forgets (no alert fires in the steady state anyway)."""

    async def submit(self, alert: Alert) -> None:
        """Forget ``alert``."""
        del alert


def _tiers(symbol: str) -> TierTable:
    # The snapshot bundles BTC and ETH: the other symbols borrow ETH's brackets.
    table = bundled_tiers(symbol if symbol in {"BTCUSDT", "ETHUSDT"} else "ETHUSDT")
    if table is None:  # pragma: no cover - the bundled snapshot always has both
        raise RuntimeError(f"no bundled brackets for {symbol}")
    return table


def accounts(count: int) -> list[AccountSnapshot]:
    """``count`` accounts of 5 cross positions, 10,000 to 20,000 USDT each, alternately long and short."""
    tables = {symbol: _tiers(symbol) for symbol in MARKS}
    built = []
    for index in range(count):
        notional = 10_000.0 + 10.0 * index
        positions = tuple(
            Position(
                symbol,
                Side.LONG if n % 2 == 0 else Side.SHORT,
                notional / price,
                price,
                price,
                tables[symbol],
            )
            for n, (symbol, price) in enumerate(MARKS.items())
        )
        built.append(AccountSnapshot(2_000.0 + index, positions))
    return built


async def run(count: int, ticks: int) -> list[float]:
    """Microseconds of CPU per account for each tick."""
    snapshots = accounts(count)
    names = [f"acct-{index:06d}" for index in range(count)]
    per_account: list[float] = []
    with tempfile.TemporaryDirectory() as state_dir:
        alerting = Alerting(AlertPolicy(thresholds=THRESHOLDS), _Discard(), Path(state_dir))
        for tick in range(ticks):
            factor = 1.0 + (WIGGLE if tick % 2 else -WIGGLE)
            marks = {symbol: price * factor for symbol, price in MARKS.items()}
            started = time.process_time()
            for index, snapshot in enumerate(snapshots):
                moved = snapshot.with_marks(marks)
                assessment = assess(moved, THRESHOLDS)
                _edges(assessment)
                if alerting.evaluate(names[index], "binanceusdm", assessment):
                    raise RuntimeError("an alert fired in the steady state: the wiggle is too wide")
                snapshots[index] = moved
            per_account.append((time.process_time() - started) / count * 1e6)
    return per_account


def main() -> None:
    """Print the per-account cost of a tick."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--accounts", type=int, default=ACCOUNTS)
    parser.add_argument("--ticks", type=int, default=TICKS)
    parser.add_argument("--profile", action="store_true", help="print where the time goes")
    args = parser.parse_args()
    profile = cProfile.Profile() if args.profile else None
    if profile is not None:
        profile.enable()
    times = asyncio.run(run(args.accounts, args.ticks))
    if profile is not None:
        profile.disable()
        out = io.StringIO()
        pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(20)
        print(out.getvalue())
    print(
        f"one tick, {args.accounts:,} accounts x {len(MARKS)} positions: "
        f"{min(times):.1f} us an account (min), {statistics.median(times):.1f} (median)"
        f" over {args.ticks} ticks; "
        f"{min(times) * args.accounts / 1000:.1f} ms a tick"
    )


if __name__ == "__main__":
    main()
