"""Benchmark of ``monitor.risk.assess``: assessments per second for cross accounts of 1, 10 and 100 positions.

Each assessment computes the account's margin ratio and, per position, the liquidation price and the
threshold prices for 150%, 130% and 120%. The baseline, timed in the same process, computes the same
prices by brute force: it brackets each root by doubling the distance from the mark, then bisects
60 times on the sign of the margin ratio less the target ratio. Both are checked to agree (rel 1e-6)
before anything is timed.

Run ``python bench/assess.py`` (``--quick`` for a smoke run, ``--profile`` for where the time goes).
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import math
import os
import platform
import pstats
import random
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

# Run as a file (``python bench/assess.py``): make the project importable without installing it.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from monitor.brackets import bundled_tiers
from monitor.risk import (
    DEFAULT_THRESHOLDS,
    AccountSnapshot,
    MarginMode,
    Position,
    Side,
    TierSpec,
    TierTable,
    assess,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from monitor.risk import Assessment

SEED = 20241001
SIZES = (1, 10, 100)
TARGET_POSITIONS = 10
TARGET_US = 100.0
BISECTION_STEPS = 60
#: Doublings (or halvings) of the distance from the mark before a price counts as unreachable.
EXPANSION_STEPS = 64
AGREEMENT_REL = 1e-6

#: Prices of a linear position: the baseline's answer for one position, liquidation first.
Prices = tuple[float | None, ...]


# --- data --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Market:
    """A symbol with its brackets and a mark price."""

    symbol: str
    tiers: TierTable
    mark: float


def _synthetic_table(rng: random.Random) -> TierTable:
    """6-10 brackets, caps growing 2.5-6x, rates growing to at most 50% (amounts derived)."""
    count = rng.randint(6, 10)
    cap = rng.choice((5_000.0, 10_000.0, 25_000.0, 50_000.0))
    rate = rng.choice((0.004, 0.005, 0.01, 0.015, 0.02))
    floor = 0.0
    specs: list[TierSpec] = []
    for _ in range(count):
        specs.append(TierSpec(floor, cap, rate, None, max(1.0, math.floor(1 / (2 * rate)))))
        floor, cap = cap, cap * rng.uniform(2.5, 6.0)
        rate = min(0.5, rate * rng.uniform(1.3, 2.2))
    return TierTable.build(specs)


def _markets(rng: random.Random, count: int) -> list[Market]:
    btc = bundled_tiers("BTCUSDT")
    eth = bundled_tiers("ETHUSDT")
    if btc is None or eth is None:
        raise SystemExit("the bundled Binance brackets lack BTCUSDT or ETHUSDT")
    markets = [Market("BTCUSDT", btc, 67_312.4), Market("ETHUSDT", eth, 2_641.87)]
    for n in range(count):
        mark = round(10 ** rng.uniform(-2, 3), 6)
        markets.append(Market(f"SYN{n:03d}USDT", _synthetic_table(rng), mark))
    return markets


def _notional(rng: random.Random, tiers: TierTable, side: Side) -> float:
    """A notional near a bracket edge in 40% of draws (so solutions cross it), else log-uniform."""
    if rng.random() < 0.4 and len(tiers.tiers) > 2:
        index = rng.randrange(1, min(len(tiers.tiers) - 1, 5))
        tier = tiers.tiers[index]
        # Longs lose as the price falls, towards the floor; shorts as it rises, towards the cap.
        if side is Side.LONG:
            return tier.floor * rng.uniform(1.02, 1.3)
        return tier.cap * rng.uniform(0.75, 0.98)
    return 10 ** rng.uniform(3, 6.3)


def _position(
    rng: random.Random,
    market: Market,
    side: Side,
    notional: float,
    *,
    isolated_leverage: float | None = None,
) -> Position:
    mark = market.mark
    entry = mark * (1 + rng.gauss(0, 0.03))
    contracts = notional / mark
    if isolated_leverage is None:
        return Position(market.symbol, side, contracts, entry, mark, market.tiers)
    return Position(
        market.symbol,
        side,
        contracts,
        entry,
        mark,
        market.tiers,
        margin_mode=MarginMode.ISOLATED,
        isolated_wallet=notional / isolated_leverage,
    )


def build_account(size: int, rng: random.Random) -> AccountSnapshot:
    """A cross account of ``size`` positions with a hedge pair (size >= 10) and isolated ones (100)."""
    markets = _markets(rng, size)
    positions: list[Position] = []
    if size == 1:
        positions.append(_position(rng, markets[0], Side.LONG, 51_500.0))
    else:
        btc = markets[0]
        positions.append(_position(rng, btc, Side.LONG, 2_400_000.0))
        positions.append(_position(rng, btc, Side.SHORT, 700_000.0))
        isolated = 5 if size >= 100 else 0
        for n, market in enumerate(markets[1 : size - 1]):
            side = Side.LONG if rng.random() < 0.55 else Side.SHORT
            leverage = rng.uniform(5, 40) if n < isolated else None
            notional = _notional(rng, market.tiers, side)
            positions.append(_position(rng, market, side, notional, isolated_leverage=leverage))
    cross = [p for p in positions if p.margin_mode is MarginMode.CROSS]
    exposure = sum(p.notional() for p in cross)
    pnl = sum(p.unrealized_pnl() for p in cross)
    # Equity (wallet + PnL) is exposure over an effective leverage of 12-25x.
    wallet = exposure / rng.uniform(12, 25) - pnl
    return AccountSnapshot(wallet, tuple(positions))


# --- baseline ----------------------------------------------------------------------------------------


def _excess(moving: Sequence[Position], rest_balance: float, rest_mm: float, k: float, price: float) -> float:
    """Margin balance less ``k`` times maintenance margin: its sign is that of (ratio - k)."""
    balance = rest_balance
    maintenance = rest_mm
    for position in moving:
        balance += position.unrealized_pnl(price)
        maintenance += position.maintenance_margin(price)
    return balance - k * maintenance


def _bisect_price(
    moving: Sequence[Position], rest_balance: float, rest_mm: float, k: float, mark: float
) -> float | None:
    """The first price from ``mark`` at which the ratio reaches ``k``, by expansion and bisection."""
    at_mark = _excess(moving, rest_balance, rest_mm, k, mark)
    if at_mark == 0:
        return mark
    nudged = _excess(moving, rest_balance, rest_mm, k, mark * (1 + 1e-7))
    # Walk the way the excess moves towards zero: down while above k, up while below it.
    up = (nudged < at_mark) if at_mark > 0 else (nudged > at_mark)
    near = mark
    far = mark
    for _ in range(EXPANSION_STEPS):
        far = far * 2 if up else far / 2
        if (_excess(moving, rest_balance, rest_mm, k, far) > 0) != (at_mark > 0):
            break
        near = far
    else:
        return None
    for _ in range(BISECTION_STEPS):
        middle = (near + far) / 2
        if (_excess(moving, rest_balance, rest_mm, k, middle) > 0) == (at_mark > 0):
            near = middle
        else:
            far = middle
    return (near + far) / 2


def bisection_assess(
    account: AccountSnapshot, thresholds: Sequence[float] = DEFAULT_THRESHOLDS
) -> tuple[float | None, list[Prices]]:
    """The account's cross ratio and every position's prices, by brute-force bisection.

    Uses the model's own ``Position.unrealized_pnl`` and ``Position.maintenance_margin``; the
    positions that do not move are summed once per assessment, not once per step.
    """
    ratios = (1.0, *thresholds)
    cross_pnl = 0.0
    cross_mm = 0.0
    groups: dict[str, list[Position]] = {}
    for position in account.positions:
        if position.margin_mode is MarginMode.CROSS:
            cross_pnl += position.unrealized_pnl()
            cross_mm += position.maintenance_margin()
            groups.setdefault(position.symbol, []).append(position)
    balance = account.wallet_balance + cross_pnl
    ratio = balance / cross_mm if cross_mm > 0 else None
    solved: dict[str, Prices] = {}
    for symbol, moving in groups.items():
        rest_balance = balance - sum(p.unrealized_pnl() for p in moving)
        rest_mm = cross_mm - sum(p.maintenance_margin() for p in moving)
        mark = moving[0].mark_price
        solved[symbol] = tuple(_bisect_price(moving, rest_balance, rest_mm, k, mark) for k in ratios)
    prices: list[Prices] = []
    for position in account.positions:
        if position.margin_mode is MarginMode.CROSS:
            prices.append(solved[position.symbol])
        else:
            wallet = position.isolated_wallet or 0.0
            mark = position.mark_price
            prices.append(tuple(_bisect_price((position,), wallet, 0.0, k, mark) for k in ratios))
    return ratio, prices


# --- agreement -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Agreement:
    """How the engine's prices compare with the baseline's on one account."""

    compared: int
    unreachable: int
    crossing: int
    worst: float


def _engine_prices(result: Assessment) -> list[Prices]:
    return [(p.liquidation_price, *p.threshold_prices) for p in result.positions]


def check_agreement(account: AccountSnapshot) -> Agreement:
    """Compare engine and baseline prices; exit with the first disagreement."""
    result = assess(account, DEFAULT_THRESHOLDS)
    ratio, baseline = bisection_assess(account, DEFAULT_THRESHOLDS)
    if (ratio is None) != (result.margin_ratio is None) or (
        ratio is not None
        and result.margin_ratio is not None
        and not math.isclose(ratio, result.margin_ratio, rel_tol=AGREEMENT_REL)
    ):
        raise SystemExit(f"margin ratios disagree: engine {result.margin_ratio}, bisection {ratio}")
    compared = unreachable = crossing = 0
    worst = 0.0
    for position, ours, theirs in zip(account.positions, _engine_prices(result), baseline, strict=True):
        at_mark = position.tiers.index_for(position.notional())
        for k, mine, other in zip((1.0, *DEFAULT_THRESHOLDS), ours, theirs, strict=True):
            compared += 1
            if mine is None or other is None:
                if mine is not other:
                    raise SystemExit(f"{position.symbol} at {k:.0%}: engine {mine}, bisection {other}")
                unreachable += 1
                continue
            error = abs(mine - other) / abs(other)
            if error > AGREEMENT_REL:
                raise SystemExit(f"{position.symbol} at {k:.0%}: engine {mine!r}, bisection {other!r}")
            worst = max(worst, error)
            crossing += position.tiers.index_for(position.notional(mine)) != at_mark
    return Agreement(compared, unreachable, crossing, worst)


# --- timing ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Timing:
    """Nanoseconds per call over each repeat, and the calibrated number of calls per repeat."""

    loops: int
    per_call_ns: tuple[float, ...]

    @property
    def median_us(self) -> float:
        """Median microseconds per call."""
        return statistics.median(self.per_call_ns) / 1000


def _run(
    func: Callable[[AccountSnapshot, Sequence[float]], object], account: AccountSnapshot, loops: int
) -> int:
    thresholds = DEFAULT_THRESHOLDS
    start = time.perf_counter_ns()
    for _ in range(loops):
        func(account, thresholds)
    return time.perf_counter_ns() - start


def measure(
    func: Callable[[AccountSnapshot, Sequence[float]], object],
    account: AccountSnapshot,
    *,
    target_ns: int,
    repeats: int,
) -> Timing:
    """Calibrate loops (1, 2, 5, 10, ...) to take ``target_ns``, then time ``repeats`` runs of them."""
    loops = 1
    steps = (1, 2, 5)
    power = 1
    while True:
        for step in steps:
            loops = step * power
            if _run(func, account, loops) >= target_ns:
                break
        else:
            power *= 10
            continue
        break
    enabled = gc.isenabled()
    gc.disable()
    try:
        per_call = tuple(_run(func, account, loops) / loops for _ in range(repeats))
    finally:
        if enabled:
            gc.enable()
    return Timing(loops, per_call)


def _pin(cpu: int | None) -> str:
    if not hasattr(os, "sched_setaffinity"):
        return "not pinned (os.sched_setaffinity is unavailable on this platform)"
    allowed = sorted(os.sched_getaffinity(0))
    chosen = allowed[-1] if cpu is None else cpu
    try:
        os.sched_setaffinity(0, {chosen})
    except OSError as exc:
        return f"not pinned ({exc})"
    return f"pinned to CPU {chosen} of {len(allowed)} allowed"


def _profile(account: AccountSnapshot, loops: int) -> None:
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(loops):
        assess(account, DEFAULT_THRESHOLDS)
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(15)
    print(f"\ncProfile of {loops} assessments of the {len(account.positions)}-position account (tottime):")
    print(out.getvalue().rstrip())


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print its table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="short runs and fewer repeats (smoke test)")
    parser.add_argument("--repeats", type=int, help="timed repeats per case (default 7, quick 3)")
    parser.add_argument("--cpu", type=int, help="CPU to pin to (default: the last one allowed)")
    parser.add_argument("--profile", action="store_true", help="also cProfile the 10-position account")
    args = parser.parse_args(argv)
    repeats: int = args.repeats or (3 if args.quick else 7)
    target_ns = 20_000_000 if args.quick else 200_000_000

    pinning = _pin(args.cpu)
    rng = random.Random(SEED)
    accounts = {size: build_account(size, rng) for size in SIZES}

    print(f"margin-monitor bench/assess.py  python {platform.python_version()}  {platform.machine()}")
    print(f"{pinning}; gc disabled while timing; seed {SEED}; {repeats} repeats of >= {target_ns / 1e6:g} ms")
    print(
        "each assessment: margin ratio + liquidation price and 150/130/120% threshold prices per position;"
        f" baseline: doubling + {BISECTION_STEPS}-step bisection per price"
    )
    for size, account in accounts.items():
        agreement = check_agreement(account)
        isolated = sum(p.margin_mode is MarginMode.ISOLATED for p in account.positions)
        print(
            f"  {size:>3} positions ({isolated} isolated): {agreement.compared} prices agree"
            f" (max rel diff {agreement.worst:.1e}; {agreement.unreachable} unreachable in both;"
            f" {agreement.crossing} in another bracket than the mark's)"
        )

    print()
    header = (
        f"{'positions':>9}  {'loops':>6}  {'µs/assessment min / median / max':>34}  "
        f"{'assess/s':>10}  {'µs/position':>11}  {'bisection µs':>12}  {'speedup vs bisection':>20}"
    )
    print(header)
    print("-" * len(header))
    medians: dict[int, float] = {}
    minimums: dict[int, float] = {}
    for size, account in accounts.items():
        engine = measure(assess, account, target_ns=target_ns, repeats=repeats)
        baseline = measure(bisection_assess, account, target_ns=target_ns, repeats=repeats)
        low = min(engine.per_call_ns) / 1000
        high = max(engine.per_call_ns) / 1000
        median = engine.median_us
        medians[size] = median
        minimums[size] = low
        spread = f"{low:9.2f} / {median:9.2f} / {high:9.2f}"
        print(
            f"{size:>9}  {engine.loops:>6}  {spread:>34}  {1e6 / median:>10,.0f}  {median / size:>11.2f}"
            f"  {baseline.median_us:>12,.1f}  {baseline.median_us / median:>19.1f}x"
        )
    print()
    verdict = "PASS" if medians[TARGET_POSITIONS] < TARGET_US else "MISS"
    print(
        f"target: {TARGET_POSITIONS}-position cross account < {TARGET_US:g} µs on one core: {verdict}"
        f" (by the median, {medians[TARGET_POSITIONS]:.1f} µs; min {minimums[TARGET_POSITIONS]:.1f} µs)"
    )
    if args.profile:
        _profile(accounts[TARGET_POSITIONS], 2_000 if args.quick else 20_000)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
