"""Benchmark of one stream tick's work per account, in one process, without the network.

A mark tick moves the five symbols of 1,000 accounts of 5 cross positions each (Binance USDⓈ-M
bundled brackets); for each account the daemon then does what ``Streaming`` does before its
alerts go out: the account's figures at the new marks (``Book.assess``: the margin ratios, prices
left unsolved), whether they move an alert key (``Alerting.moves``), and the alert engine's
evaluation (``Alerting.evaluate``). The baseline, timed in the same run, is the full assessment a
poll makes: the new marks into the snapshot (``with_marks``), ``assess`` (ratio, liquidation and
threshold prices) and the same evaluation. The ticks wiggle the marks by 0.1% so no alert fires:
the steady state of a stream. CPU time (``time.process_time``) per account per tick; min and
median over the ticks; and the objects a tick leaves to the garbage collector's youngest
generation (what a collection during the next tick must scan).

This is the floor under ``bench/streams.py``'s cost and latency figures, without its noise (the
simulator, websockets, MQTT and the log). Run ``python bench/tick.py`` (``--profile`` for where
the time goes).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
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
from monitor.risk.engine import Book
from monitor.service.alerting import Alerting

if TYPE_CHECKING:
    from monitor.alerts.model import Alert
    from monitor.risk import Assessment, TierTable

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


async def run(count: int, ticks: int, *, full: bool) -> tuple[list[float], int]:
    """Microseconds of CPU per account for each tick, and the young objects the last tick left.

    ``full``: the baseline (``with_marks`` + ``assess``); else a stream's tick (``Book.assess``).
    """
    snapshots = accounts(count)
    books = [Book(snapshot) for snapshot in snapshots]
    names = [f"acct-{index:06d}" for index in range(count)]
    per_account: list[float] = []
    young = 0
    with tempfile.TemporaryDirectory() as state_dir:
        alerting = Alerting(AlertPolicy(thresholds=THRESHOLDS), _Discard(), Path(state_dir))
        kept: list[Assessment] = [assess(snapshot, THRESHOLDS) for snapshot in snapshots]
        for tick in range(ticks):
            factor = 1.0 + (WIGGLE if tick % 2 else -WIGGLE)
            marks = {symbol: price * factor for symbol, price in MARKS.items()}
            gc.collect()
            gc.disable()
            started = time.process_time()
            for index, name in enumerate(names):
                if full:
                    moved = snapshots[index].with_marks(marks)
                    assessment = assess(moved, THRESHOLDS)
                    snapshots[index] = moved
                else:
                    assessment = books[index].assess(marks, THRESHOLDS)
                    alerting.moves(name, assessment)
                if alerting.evaluate(name, "binanceusdm", assessment):
                    raise RuntimeError("an alert fired in the steady state: the wiggle is too wide")
                kept[index] = assessment  # the daemon keeps each account's latest
            per_account.append((time.process_time() - started) / count * 1e6)
            young = len(gc.get_objects(0))
            gc.enable()
    return per_account, young


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
    stream, stream_young = asyncio.run(run(args.accounts, args.ticks, full=False))
    if profile is not None:
        profile.disable()
        out = io.StringIO()
        pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(20)
        print(out.getvalue())
    full, full_young = asyncio.run(run(args.accounts, args.ticks, full=True))
    print(f"one tick, {args.accounts:,} accounts x {len(MARKS)} positions, CPU per account (min / median):")
    for label, times, young in (
        ("stream tick (Book.assess, moves, evaluate)", stream, stream_young),
        ("full assessment (with_marks, assess, evaluate)", full, full_young),
    ):
        print(
            f"  {label:<48} {min(times):6.1f} / {statistics.median(times):6.1f} us"
            f"  {min(times) * args.accounts / 1000:6.1f} ms a tick"
            f"  {young:>7,} young objects left"
        )
    print(f"  ratio: the stream tick costs {min(stream) / min(full):.2f}x the full assessment")


if __name__ == "__main__":
    main()
