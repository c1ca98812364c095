"""Benchmark of the outbox: alerts a second through ``add`` and through a full add -> due -> delivered cycle.

Each row runs a fresh SQLite file on the real disk (``--dir``, default the system temp directory)
with ``synchronous=NORMAL`` (what the daemon uses) and with ``synchronous=FULL`` (an fsync per commit,
the baseline: the price of surviving a power loss too). The ratio column is NORMAL's throughput over
FULL's, measured in the same process. Then the latency of one ``add`` as the event loop sees it (p50,
p99, max): inline with SQLite's automatic checkpoints, inline with checkpoints on a worker thread (the
dispatcher's way), and every call on a dedicated database thread; these are the figures behind
calling the outbox inline. Last, the dispatcher's own cycle (submit + deliver_once, no-op channels).

Run ``python bench/outbox.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Literal

# Run as a file (``python bench/outbox.py``): make the project importable without installing it.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import structlog
from monitor.alerts.model import Alert, AlertKind, PositionAtRisk, SuggestedAction
from monitor.notify.dispatcher import Dispatcher
from monitor.notify.outbox import Outbox, Synchronous

if TYPE_CHECKING:
    from collections.abc import Callable

TARGET_PER_S = 1_000.0
CHANNELS_1 = ["log"]
CHANNELS_3 = ["log", "telegram", "mqtt"]


def alert(number: int) -> Alert:
    """A realistic alert: two positions at risk and a suggested action (about 900 bytes of JSON)."""
    positions = tuple(
        PositionAtRisk(symbol, "long", "cross", 90_000.0 + number, 80_100.5, 11.0, 120.0, 88_400.25)
        for symbol in ("BTC/USDT:USDT", "ETH/USDT:USDT")
    )
    return Alert(
        id=f"bench-{number:08d}",
        kind=AlertKind.FIRING,
        account=f"account-{number % 50}",
        exchange="binanceusdm",
        key=f"account-{number % 50}",
        level="danger",
        created_at=time.time(),
        previous_level="warning",
        margin_ratio_pct=128.5,
        threshold_pct=130.0,
        margin_balance=10_234.5,
        maintenance_margin=7_965.0,
        positions=positions,
        action=SuggestedAction(200.0, 5_695.5, "BTC/USDT:USDT", 0.36),
        summary="account: margin ratio 128.5% (danger)",
    )


def run_add(outbox: Outbox, alerts: list[Alert], channels: list[str]) -> None:
    """Store every alert, nothing delivered."""
    for item in alerts:
        outbox.add(item, channels)


def run_cycle(outbox: Outbox, alerts: list[Alert], channels: list[str]) -> None:
    """Per alert what the dispatcher does: add, read what is due, mark each delivered."""
    for item in alerts:
        outbox.add(item, channels)
        for delivery in outbox.due(time.time(), 100):
            outbox.delivered(delivery)


def rate(
    work: Callable[[Outbox, list[Alert], list[str]], None],
    channels: list[str],
    synchronous: Synchronous,
    count: int,
    repeats: int,
    directory: str,
) -> float:
    """Median alerts a second over ``repeats`` runs, each on a fresh file."""
    rates = []
    for repeat in range(repeats):
        alerts = [alert(number) for number in range(count)]
        with (
            tempfile.TemporaryDirectory(dir=directory) as state,
            Outbox.for_state_dir(state, synchronous=synchronous) as outbox,
        ):
            start = time.perf_counter()
            work(outbox, alerts, channels)
            elapsed = time.perf_counter() - start
            if repeat == 0 and work is run_cycle and outbox.pending_count() != 0:
                raise SystemExit("the cycle left deliveries pending")
        rates.append(count / elapsed)
    return statistics.median(rates)


Mode = Literal["autocheckpoint", "checkpoint thread", "database thread"]


def latencies(count: int, directory: str, mode: Mode) -> list[float]:
    """Microseconds per ``add`` (3 channels) as the event loop waits for it.

    ``autocheckpoint``: inline, SQLite checkpointing inside some commits (its default).
    ``checkpoint thread``: inline, automatic checkpoints off and a task checkpointing back to back
    on a worker thread (what ``Dispatcher.run`` does once a second: this is the harsher case).
    ``database thread``: every call on one dedicated thread (which opened the connection, as
    sqlite3 requires), the design the daemon would use if it did not call inline.
    """

    async def measure(state: str) -> list[float]:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()

        async def checkpoints(outbox: Outbox) -> None:
            while not stop.is_set():
                await asyncio.to_thread(outbox.checkpoint)

        with ThreadPoolExecutor(max_workers=1) as pool:
            threaded = mode == "database thread"
            if threaded:
                outbox = await loop.run_in_executor(pool, Outbox.for_state_dir, state)
            else:
                outbox = Outbox.for_state_dir(state)
            background = None
            if mode == "checkpoint thread":
                outbox.autocheckpoint = False
                background = asyncio.create_task(checkpoints(outbox), name="checkpoints")
            samples = []
            for number in range(count):
                item = alert(number)
                start = time.perf_counter()
                if threaded:
                    await loop.run_in_executor(pool, outbox.add, item, CHANNELS_3)
                else:
                    outbox.add(item, CHANNELS_3)
                samples.append((time.perf_counter() - start) * 1e6)
                await asyncio.sleep(0)  # let the checkpoint task run, as the daemon's other tasks do
            stop.set()
            if background is not None:
                await background
            if threaded:
                await loop.run_in_executor(pool, outbox.close)
            else:
                outbox.close()
        return samples

    with tempfile.TemporaryDirectory(dir=directory) as state:
        return asyncio.run(measure(state))


class NullChannel:
    """A channel that delivers instantly, so the dispatcher's own cost shows."""

    type = "null"
    min_level = "ok"
    accounts: frozenset[str] | None = None

    def __init__(self, name: str) -> None:
        self.name = name

    async def start(self) -> None:
        """Nothing to open."""

    async def close(self) -> None:
        """Nothing to release."""

    async def send(self, alert: Alert) -> None:
        """Deliver nothing."""


def dispatcher_rate(count: int, directory: str, channels: int) -> float:
    """Alerts a second through ``submit`` + ``deliver_once``, logging off."""

    async def measure(outbox: Outbox) -> float:
        dispatcher = Dispatcher(outbox, [NullChannel(f"c{index}") for index in range(channels)])
        alerts = [alert(number) for number in range(count)]
        start = time.perf_counter()
        for item in alerts:
            await dispatcher.submit(item)
            await dispatcher.deliver_once()
        return count / (time.perf_counter() - start)

    with tempfile.TemporaryDirectory(dir=directory) as state, Outbox.for_state_dir(state) as outbox:
        return asyncio.run(measure(outbox))


def percentile(samples: list[float], fraction: float) -> float:
    """The ``fraction`` quantile of ``samples`` (nearest rank)."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def main() -> None:
    """Print the throughput table, the latency table and the target line."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a smoke run")
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="where the database files go")
    args = parser.parse_args()
    count, repeats = (200, 3) if args.quick else (2_000, 5)
    # The dispatcher logs a line per delivery; the bench measures storage, not the console.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(50))

    print(
        f"Python {platform.python_version()}, SQLite {__import__('sqlite3').sqlite_version}, "
        f"{count} alerts a run, median of {repeats} runs, files in {args.dir}"
    )
    print()
    print(f"{'operation':<30} | {'NORMAL alerts/s':>15} | {'FULL alerts/s':>13} | {'NORMAL / FULL':>13}")
    print("-" * 81)
    verdict_rate = 0.0
    rows = (
        ("add, 1 channel", run_add, CHANNELS_1),
        ("add, 3 channels", run_add, CHANNELS_3),
        ("add -> deliver, 1 channel", run_cycle, CHANNELS_1),
        ("add -> deliver, 3 channels", run_cycle, CHANNELS_3),
    )
    for label, work, channels in rows:
        normal = rate(work, channels, "NORMAL", count, repeats, args.dir)
        full = rate(work, channels, "FULL", max(count // 10, 20), repeats, args.dir)
        print(f"{label:<30} | {normal:>15,.0f} | {full:>13,.0f} | {normal / full:>12.1f}x")
        if label == "add -> deliver, 3 channels":
            verdict_rate = normal
    print()
    print(f"{'one add (3 channels), µs':<30} | {'p50':>8} | {'p99':>8} | {'max':>8}")
    print("-" * 63)
    modes: tuple[Mode, ...] = ("autocheckpoint", "checkpoint thread", "database thread")
    for mode in modes:
        samples = latencies(count, args.dir, mode)
        label = {
            "autocheckpoint": "inline, SQLite autocheckpoint",
            "checkpoint thread": "inline, checkpoint thread",
        }.get(mode, "on one database thread")
        p50, p99 = percentile(samples, 0.5), percentile(samples, 0.99)
        print(f"{label:<30} | {p50:>8.0f} | {p99:>8.0f} | {max(samples):>8.0f}")
    print()
    for width in (1, 3):
        through = dispatcher_rate(count, args.dir, width)
        print(f"dispatcher submit + deliver_once, {width} no-op channel(s): {through:,.0f} alerts/s")
    verdict = "PASS" if verdict_rate > TARGET_PER_S else "MISS"
    print(
        f"target: > {TARGET_PER_S:,.0f} alerts/s add -> deliver with 3 channels (NORMAL): "
        f"{verdict} ({verdict_rate:,.0f})"
    )


if __name__ == "__main__":
    main()
