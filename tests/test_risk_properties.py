"""Property tests of the risk engine: the invariants its solver and tier tables must keep.

Accounts are generated so that notionals span several brackets of the generated tier tables, and the
wallet is derived from a drawn margin ratio at the mark, so every level from liquidated to safe is
met. Ratios are compared with a relative tolerance of 1e-9, widened where the margin balance is a
small difference of large terms (``_tolerance`` says how).
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import TYPE_CHECKING

import pytest
from hypothesis import event, example, given, settings
from hypothesis import strategies as st
from monitor.errors import PositionError
from monitor.risk import (
    DEFAULT_THRESHOLDS,
    AccountSnapshot,
    MarginMode,
    Position,
    Side,
    TierSpec,
    TierTable,
    assess,
    isolated_ratio_at,
    ratio_at,
)
from monitor.risk.actions import account_margin_to_add, close_fraction, isolated_margin_to_add
from monitor.risk.engine import Book
from monitor.risk.model import DeferredAssessment

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from monitor.risk import Assessment

#: Binance USDⓈ-M BTCUSDT brackets (floor, cap, rate); the maintenance amounts are derived.
BINANCE_BTC_ROWS = (
    (0.0, 50_000.0, 0.004),
    (50_000.0, 600_000.0, 0.005),
    (600_000.0, 3_000_000.0, 0.0065),
    (3_000_000.0, 12_000_000.0, 0.01),
    (12_000_000.0, 70_000_000.0, 0.02),
    (70_000_000.0, 100_000_000.0, 0.025),
    (100_000_000.0, 230_000_000.0, 0.05),
)
#: The maintenance amounts (``cum``) Binance publishes for those brackets.
BINANCE_BTC_CUM = (0.0, 50.0, 950.0, 11_450.0, 131_450.0, 481_450.0, 2_981_450.0)
BINANCE_BTC = TierTable.build(TierSpec(floor, cap, rate) for floor, cap, rate in BINANCE_BTC_ROWS)

#: Every ratio assess() solves for: 100% (the liquidation price), then the default thresholds.
RATIOS = (1.0, *DEFAULT_THRESHOLDS)

#: Relative rounding of a sum of float64 terms after the solver's few dozen operations, with a wide
#: margin (float64 carries about 1e-16): the error of the margin balance is this times the sum of
#: the absolute values of its terms, however much they cancel.
ROUNDING = 1e-12

SETTINGS = settings(max_examples=150, deadline=None)


# --- strategies ------------------------------------------------------------------------------------


def _log_uniform(low_exponent: float, high_exponent: float) -> st.SearchStrategy[float]:
    return st.floats(low_exponent, high_exponent).map(lambda exponent: 10.0**exponent)


@st.composite
def random_tables(draw: st.DrawFn, *, min_tiers: int = 1) -> TierTable:
    """Contiguous brackets from 0 with non-decreasing rates; amounts derived by the recurrence."""
    count = draw(st.integers(min_tiers, 6))
    cap = draw(_log_uniform(2, 6))
    rate = draw(st.floats(0.001, 0.05))
    specs: list[TierSpec] = []
    floor = 0.0
    for _ in range(count):
        specs.append(TierSpec(floor, cap, rate))
        floor = cap
        cap *= draw(st.floats(1.5, 20.0))
        rate += draw(st.just(0.0) | st.floats(0.0, 0.03))
    return TierTable.build(specs)


tables = st.just(BINANCE_BTC) | random_tables()

#: Margin ratios at the mark, from liquidated to so safe (up to 10,000%) that the prices solved for
#: lie a long way off, in other brackets.
RATIOS_AT_MARK = st.floats(0.2, 8.0) | _log_uniform(0.9, 2)


@st.composite
def positions(
    draw: st.DrawFn,
    symbol: str,
    *,
    inverse: bool,
    side: Side | None = None,
    isolated: bool = False,
    table: TierTable | None = None,
    mark: float | None = None,
    ratios: st.SearchStrategy[float] | None = None,
) -> Position:
    """A position whose notional at the mark lies anywhere from 10 to three times the last cap.

    An isolated position gets a wallet that puts its own ratio at one drawn from ``ratios`` (by
    default ``RATIOS_AT_MARK``).
    """
    table = draw(tables) if table is None else table
    side = draw(st.sampled_from(Side)) if side is None else side
    mark = draw(_log_uniform(-3, 6)) if mark is None else mark
    entry = mark * draw(_log_uniform(-0.3, 0.3))
    notional = draw(_log_uniform(1, math.log10(table.tiers[-1].cap * 3)))
    contract_size = draw(st.sampled_from([10.0, 100.0])) if inverse else 1.0
    contracts = notional * mark / contract_size if inverse else notional / mark
    position = Position(symbol, side, contracts, entry, mark, table, contract_size, inverse=inverse)
    if not isolated:
        return position
    ratio = draw(RATIOS_AT_MARK if ratios is None else ratios)
    wallet = ratio * position.maintenance_margin() - position.unrealized_pnl()
    return replace(position, margin_mode=MarginMode.ISOLATED, isolated_wallet=wallet)


def _with_cross_ratio(wallet_ratio: float, held: Sequence[Position]) -> AccountSnapshot:
    """An account holding ``held`` whose cross wallet puts its ratio at ``wallet_ratio``."""
    cross = [position for position in held if position.margin_mode is MarginMode.CROSS]
    maintenance = sum(position.maintenance_margin() for position in cross)
    pnl = sum(position.unrealized_pnl() for position in cross)
    return AccountSnapshot(wallet_ratio * maintenance - pnl, tuple(held))


@st.composite
def accounts(
    draw: st.DrawFn,
    *,
    inverse: bool = False,
    isolated: bool = False,
    ratios: st.SearchStrategy[float] | None = None,
) -> AccountSnapshot:
    """One to four positions, one a symbol, cross (or, with ``isolated``, some isolated).

    The cross wallet, and an isolated position's own, put the ratio at one drawn from ``ratios``.
    """
    ratios = RATIOS_AT_MARK if ratios is None else ratios
    count = draw(st.integers(1, 4))
    held = [
        draw(positions(f"S{n}", inverse=inverse, isolated=isolated and draw(st.booleans()), ratios=ratios))
        for n in range(count)
    ]
    return _with_cross_ratio(draw(ratios), held)


@st.composite
def hedged_accounts(draw: st.DrawFn) -> AccountSnapshot:
    """A long and a short of one symbol (hedge mode, both cross), beside zero to two other positions."""
    inverse = draw(st.booleans())
    table = draw(tables)
    mark = draw(_log_uniform(-3, 6))
    pair = [
        draw(positions("HEDGE", inverse=inverse, side=side, table=table, mark=mark))
        for side in (Side.LONG, Side.SHORT)
    ]
    others = [draw(positions(f"S{n}", inverse=inverse)) for n in range(draw(st.integers(0, 2)))]
    return _with_cross_ratio(draw(RATIOS_AT_MARK), [*pair, *others])


# --- helpers ---------------------------------------------------------------------------------------


def _magnitude(position: Position, ratio: float) -> float:
    """Sum of the absolute terms of the position's share of ``MB - ratio * MM``, at its mark."""
    if position.inverse:
        pnl_terms = position.size / position.entry_price + position.size / position.mark_price
    else:
        pnl_terms = position.size * position.entry_price + position.size * position.mark_price
    notional = position.notional()
    tier = position.tiers.tier_for(notional)
    return pnl_terms + ratio * (tier.rate * notional + tier.amount)


def _tolerance(wallet: float, held: Sequence[Position], ratio: float, maintenance: float) -> float:
    """Absolute tolerance on a margin ratio near ``ratio``: 1e-9 relative, or the rounding of its sums.

    The margin balance is a sum of terms (wallet, entry and mark values) that can be far larger than
    the balance itself; its rounding error is ``ROUNDING`` times their absolute sum, divided by the
    maintenance margin.
    """
    magnitude = abs(wallet) + sum(_magnitude(position, ratio) for position in held)
    return 1e-9 * abs(ratio) + ROUNDING * magnitude / maintenance


def _cross(account: AccountSnapshot) -> list[Position]:
    return [position for position in account.positions if position.margin_mode is MarginMode.CROSS]


def _cross_maintenance(account: AccountSnapshot) -> float:
    return sum(position.maintenance_margin() for position in _cross(account))


def _cross_balance(account: AccountSnapshot) -> float:
    return account.wallet_balance + sum(position.unrealized_pnl() for position in _cross(account))


def _assert_cross_ratio(account: AccountSnapshot, ratio: float) -> None:
    maintenance = _cross_maintenance(account)
    actual = ratio_at(account)
    assert actual is not None
    tolerance = _tolerance(account.wallet_balance, _cross(account), ratio, maintenance)
    assert actual == pytest.approx(ratio, rel=0, abs=tolerance)


def _assert_isolated_ratio(position: Position, ratio: float) -> None:
    actual = isolated_ratio_at(position)
    assert actual is not None
    wallet = position.isolated_wallet or 0.0
    tolerance = _tolerance(wallet, [position], ratio, position.maintenance_margin())
    assert actual == pytest.approx(ratio, rel=0, abs=tolerance)


def _note_bracket(position: Position, price: float) -> None:
    moved = position.tiers.index_for(position.notional(price))
    if moved != position.tiers.index_for(position.notional()):
        event("solved in another bracket than the mark's")


def _check_prices_round_trip(account: AccountSnapshot) -> None:
    """Every price assess() returns, fed back as the mark, gives the ratio it was solved for."""
    assessment = assess(account)
    for assessed in assessment.positions:
        position = assessed.position
        prices = (assessed.liquidation_price, *assessed.threshold_prices)
        for ratio, price in zip(RATIOS, prices, strict=True):
            if price is None:
                continue
            assert math.isfinite(price)
            assert price > 0
            _note_bracket(position, price)
            if position.margin_mode is MarginMode.ISOLATED:
                event("isolated")
                _assert_isolated_ratio(replace(position, mark_price=price), ratio)
            else:
                _assert_cross_ratio(account.with_mark(position.symbol, price), ratio)


# --- 1. the price solved for a ratio gives that ratio ------------------------------------------------


@SETTINGS
@given(accounts(isolated=True))
def test_linear_prices_round_trip(account: AccountSnapshot) -> None:
    """At the price returned for ratio k (100% for the liquidation price), the margin ratio is k.

    Linear (USDⓈ-M) accounts of one to four positions; an isolated position's own ratio is k.
    """
    _check_prices_round_trip(account)


@SETTINGS
@given(accounts(inverse=True, isolated=True))
def test_inverse_prices_round_trip(account: AccountSnapshot) -> None:
    """At the price returned for ratio k, an inverse (COIN-M) account's margin ratio is k."""
    _check_prices_round_trip(account)


@SETTINGS
@given(hedged_accounts())
def test_hedge_mode_prices_round_trip(account: AccountSnapshot) -> None:
    """At the price returned for ratio k, with a long and a short of one symbol moving together, it is k."""
    _check_prices_round_trip(account)


def test_liquidation_price_in_a_lower_bracket_than_the_mark() -> None:
    """A long whose liquidation price lies in a lower bracket is solved with that bracket's rate.

    100 BTC long at 60,000 (6M, 1% bracket); the wallet puts the liquidation at 25,000 (2.5M, 0.65%).
    """
    position = Position("BTC/USDT:USDT", Side.LONG, 100.0, 60_000.0, 60_000.0, BINANCE_BTC)
    wallet = (100 * 25_000 * 0.0065 - 950) - 100 * (25_000 - 60_000)
    account = AccountSnapshot(wallet, (position,))
    assessed = assess(account).positions[0]
    assert assessed.liquidation_price == pytest.approx(25_000, rel=1e-12)
    assert BINANCE_BTC.index_for(position.notional(assessed.liquidation_price)) == 2
    assert assessed.tier == 4
    for ratio, price in zip(RATIOS, (assessed.liquidation_price, *assessed.threshold_prices), strict=True):
        assert price is not None
        assert ratio_at(account.with_mark(position.symbol, price)) == pytest.approx(ratio, rel=1e-9)


def test_short_liquidation_price_in_a_higher_bracket_than_the_mark() -> None:
    """A short whose liquidation price lies in a higher bracket is solved with that bracket's rate.

    100 BTC short at 20,000 (2M, 0.65% bracket); the wallet puts the liquidation at 40,000 (4M, 1%).
    """
    position = Position("BTC/USDT:USDT", Side.SHORT, 100.0, 20_000.0, 20_000.0, BINANCE_BTC)
    wallet = (100 * 40_000 * 0.01 - 11_450) + 100 * (40_000 - 20_000)
    account = AccountSnapshot(wallet, (position,))
    assessed = assess(account).positions[0]
    assert assessed.liquidation_price == pytest.approx(40_000, rel=1e-12)
    assert BINANCE_BTC.index_for(position.notional(assessed.liquidation_price)) == 3
    assert assessed.tier == 3


@SETTINGS
@given(st.data())
def test_liquidation_price_on_a_bracket_edge_is_found(data: st.DataObject) -> None:
    """When the account reaches 100% exactly where the notional crosses a bracket edge, that is the price.

    The root lies on the edge up to rounding: one of the two brackets meeting there must accept it.
    """
    table = data.draw(random_tables(min_tiers=2) | st.just(BINANCE_BTC))
    edge = table.tiers[data.draw(st.integers(1, len(table.tiers) - 1))].floor
    inverse = data.draw(st.booleans())
    position = data.draw(positions("EDGE", inverse=inverse, table=table))
    others = [data.draw(positions(f"S{n}", inverse=inverse)) for n in range(data.draw(st.integers(0, 2)))]
    edge_price = position.size / edge if inverse else edge / position.size
    # The wallet that makes the ratio exactly 100% at the edge price, marked on the safe side of it.
    wallet = _with_cross_ratio(1.0, [replace(position, mark_price=edge_price), *others]).wallet_balance
    away = data.draw(st.floats(1.01, 20.0))
    mark = edge_price * away if position.side is Side.LONG else edge_price / away
    account = AccountSnapshot(wallet, (replace(position, mark_price=mark), *others))
    liquidation = assess(account).positions[0].liquidation_price
    # Float64 can place the root no closer than the cancellation allows: when the other positions
    # and the wallet dwarf this one (Hypothesis found 1e10 contracts beside it), the sums the solver
    # takes differences of are that many times larger than this position's own term.
    scale = abs(wallet) + sum(abs(p.notional(p.mark_price)) for p in account.positions)
    conditioning = scale / abs(position.notional(edge_price))
    assert liquidation == pytest.approx(edge_price, rel=max(1e-9, 1e-13 * conditioning))


# --- 2. maintenance margin is continuous at bracket edges ---------------------------------------------


@SETTINGS
@given(tables)
def test_maintenance_margin_is_continuous_at_bracket_edges(table: TierTable) -> None:
    """With derived maintenance amounts, MM just below every bracket edge equals MM at the edge."""
    assert table.continuous
    for below, above in zip(table.tiers, table.tiers[1:], strict=False):
        edge = above.floor
        just_below = math.nextafter(edge, 0.0)
        assert table.index_for(just_below) == table.index_for(edge) - 1
        assert table.maintenance_margin(just_below) == pytest.approx(
            table.maintenance_margin(edge), rel=1e-12
        )
        assert below.maintenance_margin(edge) == pytest.approx(above.maintenance_margin(edge), rel=1e-12)


def test_binance_published_amounts_follow_the_recurrence() -> None:
    """Binance's published ``cum`` figures are the derived amounts, so its table counts as continuous."""
    given_amounts = TierTable.build(
        TierSpec(floor, cap, rate, cum)
        for (floor, cap, rate), cum in zip(BINANCE_BTC_ROWS, BINANCE_BTC_CUM, strict=True)
    )
    assert given_amounts.continuous
    assert [tier.amount for tier in BINANCE_BTC.tiers] == pytest.approx(BINANCE_BTC_CUM, rel=1e-12)


# --- 3. the ratio falls monotonically as the price moves against a position -----------------------


@SETTINGS
@given(
    accounts(inverse=False, ratios=st.floats(-1.0, 30.0))
    | accounts(inverse=True, ratios=st.floats(-1.0, 30.0))
)
def test_ratio_falls_as_price_moves_against_the_position(account: AccountSnapshot) -> None:
    """The cross ratio never rises while the first position's price moves against it, where it must hold.

    dR/dP = Q * (s*MM - rate*MB) / MM**2 in the linear price (u = 1/P for inverse contracts), so a
    linear long or inverse short falls with the adverse move while R <= 1/rate (checked against the
    table's highest rate), and a linear short or inverse long while the margin balance stays positive.
    Adverse moves span three decades of price, so they cross brackets.
    """
    moving = account.positions[0]
    rate_bound = 1.0 / max(tier.rate for tier in moving.tiers.tiers)
    adverse = -1.0 if moving.side is Side.LONG else 1.0
    by_ratio = (moving.side is Side.LONG) != moving.inverse
    previous = account
    previous_ratio = ratio_at(account)
    assert previous_ratio is not None
    for step in range(1, 33):
        current = account.with_mark(moving.symbol, moving.mark_price * 10.0 ** (adverse * 3.0 * step / 32))
        current_ratio = ratio_at(current)
        assert current_ratio is not None
        in_domain = previous_ratio <= rate_bound if by_ratio else _cross_balance(current) > 0
        if in_domain:
            maintenance = min(_cross_maintenance(previous), _cross_maintenance(current))
            tolerance = _tolerance(
                previous.wallet_balance, [*_cross(previous), *_cross(current)], 1.0, maintenance
            )
            assert current_ratio <= previous_ratio + tolerance
        previous, previous_ratio = current, current_ratio


# --- 4. the liquidation price lies on the adverse side of the mark ---------------------------------


def _adverse(position: Position, price: float) -> bool:
    return price < position.mark_price if position.side is Side.LONG else price > position.mark_price


@SETTINGS
@given(
    accounts(isolated=True, ratios=st.floats(1.0001, 8.0))
    | accounts(inverse=True, isolated=True, ratios=st.floats(1.0001, 8.0))
)
def test_liquidation_price_is_beyond_the_mark(account: AccountSnapshot) -> None:
    """Above 100%, a long's liquidation price lies below its mark and a short's above; it is never <= 0.

    No liquidation price means none exists: far on the adverse side the ratio is still above 100%.
    """
    for assessed in assess(account).positions:
        position = assessed.position
        price = assessed.liquidation_price
        if position.margin_mode is MarginMode.ISOLATED:
            ratio = isolated_ratio_at(position)
            assert ratio is not None
            if ratio <= 1.0:
                continue
        if price is not None:
            assert price > 0
            assert _adverse(position, price)
            continue
        event("no liquidation price")
        far = position.mark_price * (1e-9 if position.side is Side.LONG else 1e9)
        if position.margin_mode is MarginMode.ISOLATED:
            far_ratio = isolated_ratio_at(replace(position, mark_price=far))
        else:
            far_ratio = ratio_at(account.with_mark(position.symbol, far))
        assert far_ratio is None or far_ratio > 1.0


# --- 5. further invariants ---------------------------------------------------------------------------


@SETTINGS
@given(
    accounts(isolated=True, ratios=st.floats(1.51, 8.0))
    | accounts(inverse=True, isolated=True, ratios=st.floats(1.51, 8.0))
)
def test_threshold_prices_lie_in_order_between_mark_and_liquidation(account: AccountSnapshot) -> None:
    """Above every threshold, a long's prices fall mark > p150 > p130 > p120 > liquidation (a short's rise).

    A threshold no price reaches leaves every lower one unreached too.
    """
    for assessed in assess(account).positions:
        position = assessed.position
        if position.margin_mode is MarginMode.ISOLATED:
            ratio = isolated_ratio_at(position)
            assert ratio is not None
            if ratio <= DEFAULT_THRESHOLDS[0]:
                continue
        prices = [*assessed.threshold_prices, assessed.liquidation_price]
        reached = [price for price in prices if price is not None]
        assert prices == [*reached, *[None] * (len(prices) - len(reached))]
        sequence = [position.mark_price, *reached]
        ordered = sorted(sequence, reverse=position.side is Side.LONG)
        assert sequence == ordered
        assert len(set(sequence)) == len(sequence)


@SETTINGS
@given(accounts(isolated=True) | accounts(inverse=True, isolated=True) | hedged_accounts())
def test_threshold_price_is_the_first_crossing(account: AccountSnapshot) -> None:
    """Between the mark and the price returned for ratio k, the ratio stays on the mark's side of k."""
    assessment = assess(account)
    for assessed in assessment.positions:
        position = assessed.position
        isolated = position.margin_mode is MarginMode.ISOLATED
        for ratio, price in zip(
            RATIOS, (assessed.liquidation_price, *assessed.threshold_prices), strict=True
        ):
            if price is None:
                continue
            start = _excess(account, position, ratio, position.mark_price, isolated=isolated)
            for step in range(1, 16):
                between = position.mark_price + (price - position.mark_price) * step / 16
                excess, tolerance = _excess_with_tolerance(
                    account, position, ratio, between, isolated=isolated
                )
                assert excess * math.copysign(1.0, start) >= -tolerance


def _excess(
    account: AccountSnapshot, position: Position, ratio: float, price: float, *, isolated: bool
) -> float:
    return _excess_with_tolerance(account, position, ratio, price, isolated=isolated)[0]


def _excess_with_tolerance(
    account: AccountSnapshot, position: Position, ratio: float, price: float, *, isolated: bool
) -> tuple[float, float]:
    """The margin excess ``MB - ratio * MM`` at ``price`` and its rounding bound."""
    if isolated:
        moved = replace(position, mark_price=price)
        wallet = moved.isolated_wallet or 0.0
        excess = wallet + moved.unrealized_pnl() - ratio * moved.maintenance_margin()
        return excess, ROUNDING * (abs(wallet) + _magnitude(moved, ratio))
    moved_account = account.with_mark(position.symbol, price)
    held = _cross(moved_account)
    excess = _cross_balance(moved_account) - ratio * _cross_maintenance(moved_account)
    magnitude = abs(moved_account.wallet_balance) + sum(_magnitude(each, ratio) for each in held)
    return excess, ROUNDING * magnitude


@SETTINGS
@given(
    accounts(isolated=True, ratios=st.floats(-1.0, 3.0))
    | accounts(inverse=True, isolated=True, ratios=st.floats(-1.0, 3.0))
)
def test_margin_to_add_restores_the_target(account: AccountSnapshot) -> None:
    """After adding the suggested margin, the account's (or isolated position's) ratio is the 200% target."""
    assessment = assess(account)
    added = account_margin_to_add(assessment, 2.0)
    assert added >= 0
    restored = account.with_wallet(account.wallet_balance + added)
    ratio = ratio_at(restored)
    if added:
        _assert_cross_ratio(restored, 2.0)
    elif ratio is not None:
        tolerance = _tolerance(account.wallet_balance, _cross(account), 2.0, _cross_maintenance(account))
        assert ratio >= 2.0 - tolerance
    for assessed in assessment.positions:
        isolated_added = isolated_margin_to_add(assessed, 2.0)
        position = assessed.position
        if position.margin_mode is MarginMode.CROSS:
            assert isolated_added is None
            continue
        assert isolated_added is not None
        wallet = (position.isolated_wallet or 0.0) + isolated_added
        if isolated_added:
            _assert_isolated_ratio(replace(position, isolated_wallet=wallet), 2.0)
        else:
            own = isolated_ratio_at(position)
            assert own is not None
            wallet = position.isolated_wallet or 0.0
            assert own >= 2.0 - _tolerance(wallet, [position], 2.0, position.maintenance_margin())


#: 5,000 BTC long at 60,000: 300M of notional, above the last cap (230M), at 150%.
BEYOND_LAST_CAP = _with_cross_ratio(
    1.5, [Position("BTC/USDT:USDT", Side.LONG, 5_000.0, 60_000.0, 60_000.0, BINANCE_BTC)]
)


@SETTINGS
@example(BEYOND_LAST_CAP)
@given(accounts(ratios=st.floats(-0.5, 3.0)) | accounts(inverse=True, ratios=st.floats(-0.5, 3.0)))
def test_close_fraction_restores_the_target(account: AccountSnapshot) -> None:
    """Closing the suggested fraction of a position at its mark brings the account to the 200% target.

    Closing realizes that part of the PnL into the wallet and scales the contracts down; no fraction
    means that even closing all of it leaves the account below the target.
    """
    assessment = assess(account)
    slack = _tolerance(account.wallet_balance, _cross(account), 2.0, _cross_maintenance(account))
    for index, assessed in enumerate(assessment.positions):
        fraction = close_fraction(assessment, assessed, 2.0)
        if fraction is None:
            event("closing falls short")
            closed_ratio = ratio_at(_closed(account, index, 1.0))
            assert assessment.margin_balance <= 0 or (closed_ratio is not None and closed_ratio < 2.0 + slack)
            continue
        assert 0.0 <= fraction <= 1.0
        if fraction == 0:
            before = ratio_at(account)
            assert before is not None
            assert before >= 2.0 - slack
            continue
        closed = _closed(account, index, fraction)
        if _cross_maintenance(closed) == 0:
            event("closes everything (the balance is all but zero)")
            continue
        event("partial close")
        tolerance = _tolerance(account.wallet_balance, _cross(account), 2.0, _cross_maintenance(closed))
        assert ratio_at(closed) == pytest.approx(2.0, rel=0, abs=tolerance)


def test_close_fraction_above_the_last_cap() -> None:
    """Closing the suggested fraction of a position above the last cap brings the account to 200%.

    A long's notional grows past the last bracket's cap as the price rises; the tier table charges
    it at the last bracket's rate, so the fraction to close must use that rate beyond the cap too.
    5,000 BTC long at 60,000 (300M, above the 230M cap) at 150%: keeping 239,907,250 of notional
    gives 200%, a fraction of 0.2003.
    """
    account = BEYOND_LAST_CAP
    assessment = assess(account)
    fraction = close_fraction(assessment, assessment.positions[0], 2.0)
    assert fraction is not None
    assert fraction == pytest.approx(1 - 239_907_250 / 300_000_000, rel=1e-9)
    assert ratio_at(_closed(account, 0, fraction)) == pytest.approx(2.0, rel=1e-9)


def _closed(account: AccountSnapshot, index: int, fraction: float) -> AccountSnapshot:
    """``account`` after closing ``fraction`` of its ``index``-th position at the mark."""
    position = account.positions[index]
    kept = replace(position, contracts=position.contracts * (1.0 - fraction))
    held = (*account.positions[:index], kept, *account.positions[index + 1 :])
    return AccountSnapshot(account.wallet_balance + fraction * position.unrealized_pnl(), held)


def _ratio_of(assessment: Assessment) -> float:
    assert assessment.margin_ratio is not None
    return assessment.margin_ratio


@SETTINGS
@given(accounts(isolated=True) | accounts(inverse=True, isolated=True) | hedged_accounts())
def test_assessed_ratio_matches_ratio_at(account: AccountSnapshot) -> None:
    """assess() reports the same cross ratio as ratio_at() and the drawn wallet's ratio at the mark."""
    expected = ratio_at(account)
    if expected is None:
        assert assess(account).margin_ratio is None
    else:
        assert _ratio_of(assess(account)) == pytest.approx(expected, rel=1e-12)


# --- a stream's tick: the Book gives assess()'s figures without building positions -----------------


def _marks_moved(data: st.DataObject, account: AccountSnapshot) -> dict[str, float]:
    """New marks for the account's symbols: each moved by up to 2x either way, so brackets change."""
    return {
        position.symbol: position.mark_price * data.draw(_log_uniform(-0.3, 0.3))
        for position in account.positions
    }


def _outcome(call: Callable[..., Assessment], *args: object) -> Assessment | PositionError:
    try:
        return call(*args)
    except PositionError as error:
        return error


@SETTINGS
@given(
    accounts(isolated=True) | accounts(inverse=True, isolated=True) | hedged_accounts(),
    st.data(),
)
def test_a_book_gives_the_figures_of_assess_bit_for_bit(
    account: AccountSnapshot, data: st.DataObject
) -> None:
    """``Book.assess`` equals ``assess(with_marks)`` exactly, tick after tick; prices wait until read.

    A stream decides the alert level from these figures; a difference of one ulp at a threshold
    would be a different alert from the one a poll gives.
    """
    book = Book(account)
    for _ in range(3):  # the bracket each position was in carries over from tick to tick
        marks = _marks_moved(data, account)
        expected = _outcome(lambda: assess(account.with_marks(marks)))  # noqa: B023 - called at once
        deferred = _outcome(book.assess, marks)
        if not isinstance(deferred, DeferredAssessment) or isinstance(expected, PositionError):
            assert str(deferred) == str(expected)  # the same error, or a test that cannot pass
            continue
        assert (deferred.margin_balance, deferred.maintenance_margin, deferred.margin_ratio) == (
            expected.margin_balance,
            expected.maintenance_margin,
            expected.margin_ratio,
        )
        assert (deferred.level, deferred.worst_level, deferred.thresholds, deferred.drift) == (
            expected.level,
            expected.worst_level,
            expected.thresholds,
            expected.drift,
        )
        assert deferred.isolated() == expected.isolated()
        assert deferred.position_count == len(expected.positions)
        assert not deferred.solved
        assert deferred.positions == expected.positions
        assert deferred.solved


@pytest.mark.parametrize("mark", [math.nan, math.inf, 0.0, -5.0])
def test_a_book_refuses_a_bad_mark_as_with_marks_does(mark: float) -> None:
    """The field and the message name the mark, as ``Position.at_mark`` does."""
    account = AccountSnapshot(1_000.0, (Position("BTC", Side.LONG, 1.0, 100.0, 100.0, BINANCE_BTC),))
    with pytest.raises(PositionError) as expected:
        account.with_marks({"BTC": mark})
    with pytest.raises(PositionError) as raised:
        Book(account).assess({"BTC": mark})
    assert (raised.value.field, str(raised.value)) == (expected.value.field, str(expected.value))
