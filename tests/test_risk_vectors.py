"""The risk engine against known figures: exchange worked examples, freqtrade's vectors, closed forms.

Every figure below is copied into this file as the project's own data, with a comment naming where it
comes from; nothing is read from outside the repository at run time.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
from monitor.brackets import bundled_tiers
from monitor.errors import PositionError
from monitor.risk import (
    DEFAULT_THRESHOLDS,
    AccountSnapshot,
    Level,
    MarginMode,
    Position,
    ReportedFigures,
    Side,
    TierSpec,
    TierTable,
    assess,
    isolated_ratio_at,
    level_for,
    ratio_at,
)
from monitor.risk.actions import account_margin_to_add, close_fraction
from monitor.risk.families import FAMILIES, Exchange, RawTier
from monitor.risk.pretrade import PlannedTrade, check_trade

INF = math.inf

# A tier as plain data for the closed forms computed here: (floor, cap, rate, maintenance amount).
Bracket = tuple[float, float, float, float]


def _table(exchange: Exchange, brackets: tuple[Bracket, ...]) -> TierTable:
    return FAMILIES[exchange].tier_table(TierSpec(*row) for row in brackets)


# --- Binance USDS-M FAQ worked example ("How to Calculate Liquidation Price of USDS-M Futures Contracts")

# Tier tables chosen so the FAQ's positions sit in a bracket with the FAQ's rate and cum: BTC in bracket 4
# (2.5%, cum 16,300), ETH in bracket 6 (10%, cum 135,365). The cums are left to the recurrence.
FAQ_BTC_TIERS: tuple[Bracket, ...] = (
    (0, 50_000, 0.004, 0.0),
    (50_000, 250_000, 0.005, 50.0),
    (250_000, 1_000_000, 0.01, 1_300.0),
    (1_000_000, 10_000_000, 0.025, 16_300.0),
    (10_000_000, 20_000_000, 0.05, 266_300.0),
)
FAQ_ETH_TIERS: tuple[Bracket, ...] = (
    (0, 10_000, 0.005, 0.0),
    (10_000, 100_000, 0.0065, 15.0),
    (100_000, 500_000, 0.01, 365.0),
    (500_000, 1_000_000, 0.02, 5_365.0),
    (1_000_000, 2_000_000, 0.05, 35_365.0),
    (2_000_000, 10_000_000, 0.10, 135_365.0),
    (10_000_000, 20_000_000, 0.125, 385_365.0),
)
FAQ_WALLET = 1_535_443.01
FAQ_BTC = ("BTCUSDT", 109.488, 32_481.98, 31_967.27)  # symbol, contracts, entry, mark
FAQ_ETH = ("ETHUSDT", 3_683.979, 1_456.84, 1_335.18)


def _faq_tiers(symbol: str) -> TierTable:
    rows = FAQ_BTC_TIERS if symbol == "BTCUSDT" else FAQ_ETH_TIERS
    return FAMILIES[Exchange.BINANCEUSDM].tier_table(
        TierSpec(floor, cap, rate) for floor, cap, rate, _ in rows
    )


def _faq_position(
    figures: tuple[str, float, float, float], mode: MarginMode = MarginMode.CROSS, wallet: float | None = None
) -> Position:
    symbol, contracts, entry, mark = figures
    return Position(
        symbol,
        Side.LONG,
        contracts,
        entry,
        mark,
        _faq_tiers(symbol),
        margin_mode=mode,
        isolated_wallet=wallet,
    )


def _faq_account() -> AccountSnapshot:
    return AccountSnapshot(FAQ_WALLET, (_faq_position(FAQ_BTC), _faq_position(FAQ_ETH)))


@pytest.mark.parametrize(
    ("symbol", "cum"),
    [("BTCUSDT", 16_300.0), ("ETHUSDT", 135_365.0)],
    ids=["btc-bracket4", "eth-bracket6"],
)
def test_faq_tier_tables_derive_the_faq_cum(symbol: str, cum: float) -> None:
    """The recurrence fills in the FAQ's cum for the bracket holding the FAQ position."""
    table = _faq_tiers(symbol)
    figures = FAQ_BTC if symbol == "BTCUSDT" else FAQ_ETH
    tier = table.tier_for(figures[1] * figures[3])
    assert tier.amount == pytest.approx(cum, abs=1e-6)
    assert table.continuous


@pytest.mark.parametrize(
    ("symbol", "liquidation_price"),
    [("BTCUSDT", 26_316.89), ("ETHUSDT", 1_153.26)],
    ids=["btc", "eth"],
)
def test_faq_cross_liquidation_prices_to_the_cent(symbol: str, liquidation_price: float) -> None:
    """Both FAQ positions in one cross account liquidate at the FAQ's prices, to the cent."""
    assessment = assess(_faq_account())
    (position,) = [p for p in assessment.positions if p.position.symbol == symbol]
    assert position.liquidation_price is not None
    assert round(position.liquidation_price, 2) == liquidation_price


@pytest.mark.parametrize(
    ("figures", "liquidation_price"),
    [(FAQ_ETH, 1_114.78), (FAQ_BTC, 18_778.73)],
    ids=["eth", "btc"],
)
def test_faq_isolated_liquidation_prices_to_the_cent(
    figures: tuple[str, float, float, float], liquidation_price: float
) -> None:
    """With the FAQ wallet as isolated wallet, the isolated formula's prices come out to the cent."""
    position = _faq_position(figures, MarginMode.ISOLATED, FAQ_WALLET)
    assessed = assess(AccountSnapshot(0.0, (position,))).positions[0]
    assert assessed.liquidation_price is not None
    assert round(assessed.liquidation_price, 2) == liquidation_price


@pytest.mark.parametrize(
    ("field", "expected", "abs_tol"),
    [
        # TMM1 and UPNL1 of the FAQ (as recorded in freqtrade's test_liquidation_price_binance).
        ("margin_balance", FAQ_WALLET - 56_354.56848 - 448_192.88514, 1e-5),
        ("maintenance_margin", 71_200.811444 + 356_512.508122, 1e-5),
        (
            "margin_ratio",
            (FAQ_WALLET - 56_354.56848 - 448_192.88514) / (71_200.811444 + 356_512.508122),
            1e-9,
        ),
    ],
    ids=["margin-balance", "maintenance-margin-is-tmm", "margin-ratio"],
)
def test_faq_account_figures(field: str, expected: float, abs_tol: float) -> None:
    """The FAQ account's margin balance, total maintenance margin and ratio match the FAQ figures."""
    assessment = assess(_faq_account())
    assert getattr(assessment, field) == pytest.approx(expected, abs=abs_tol)


@pytest.mark.parametrize(
    ("index", "maintenance_margin", "unrealized_pnl", "tier"),
    [(0, 71_200.81, -56_354.57, 4), (1, 356_512.51, -448_192.89, 6)],
    ids=["btc", "eth"],
)
def test_faq_position_figures(
    index: int, maintenance_margin: float, unrealized_pnl: float, tier: int
) -> None:
    """Each FAQ position's maintenance margin and unrealized PnL match the FAQ, to the cent."""
    position = assess(_faq_account()).positions[index]
    assert round(position.maintenance_margin, 2) == maintenance_margin
    assert round(position.unrealized_pnl, 2) == unrealized_pnl
    assert position.tier == tier


@pytest.mark.parametrize("k", [1.5, 1.3, 1.2], ids=["150", "130", "120"])
def test_faq_threshold_prices_follow_the_closed_form(k: float) -> None:
    """The BTC threshold prices equal risk-math.md's P_k, with k multiplying the other position's MM."""
    assessment = assess(_faq_account())
    btc, eth = assessment.positions
    other_mm = eth.maintenance_margin
    other_pnl = eth.unrealized_pnl
    _, contracts, entry, _ = FAQ_BTC
    expected = _linear_root(FAQ_WALLET, other_pnl, other_mm, Side.LONG, contracts, entry, FAQ_BTC_TIERS, k)
    index = DEFAULT_THRESHOLDS.index(k)
    assert btc.threshold_prices[index] == pytest.approx(expected, rel=1e-12)


# --- independent closed forms ---------------------------------------------------------------------


def _linear_root(
    wallet: float,
    other_pnl: float,
    other_mm: float,
    side: Side,
    size: float,
    entry: float,
    brackets: tuple[Bracket, ...],
    k: float = 1.0,
) -> float:
    """P_k = (WB + UPNL1 - k*TMM1 + k*cum_b - s*Q*EP) / (k*Q*mmr_b - s*Q), in the bracket that holds it."""
    s = side.sign
    for floor, cap, rate, amount in brackets:
        price = (wallet + other_pnl - k * other_mm + k * amount - s * size * entry) / (
            k * size * rate - s * size
        )
        if floor <= size * price < cap:
            return price
    raise AssertionError("no bracket holds the root")


def _inverse_root(
    wallet: float,
    other_pnl: float,
    other_mm: float,
    side: Side,
    face: float,
    entry: float,
    brackets: tuple[Bracket, ...],
    k: float = 1.0,
) -> float:
    """COIN-M P_k = (k*Q*CS*mmr_b + s*Q*CS) / (WB + UPNL1 - k*TMM1 + k*cum_b + s*Q*CS/EP), in its bracket."""
    s = side.sign
    for floor, cap, rate, amount in brackets:
        price = (k * face * rate + s * face) / (
            wallet + other_pnl - k * other_mm + k * amount + s * face / entry
        )
        if price > 0 and floor <= face / price < cap:
            return price
    raise AssertionError("no bracket holds the root")


# --- freqtrade's generic isolated Binance vectors -------------------------------------------------

# freqtrade's tests/exchange/test_exchange.py::test_get_liquidation_price mocks mmr 0.01 and cum 0.01.
# Our tables allow no maintenance amount in the first tier, so the position sits in bracket 2 of a
# two-tier table whose bracket 1 (0 to 2 USDT at 0.5%) makes cum 0.01 the continuous amount:
# 2 * (0.01 - 0.005) = 0.01.
GENERIC_TIERS = (TierSpec(0, 2, 0.005, 0.0), TierSpec(2, INF, 0.01, 0.01))

# Rows: side, leverage, open rate, amount, liquidation price asserted by freqtrade.
# The isolated wallet is freqtrade's stake: amount * open rate / leverage.
FREQTRADE_GENERIC = [
    (Side.SHORT, 5.0, 10.0, 1.0, 11.89108910891089),
    (Side.SHORT, 3.0, 10.0, 1.0, 13.211221122079207),
    (Side.SHORT, 5.0, 8.0, 1.0, 9.514851485148514),
    (Side.SHORT, 5.0, 10.0, 0.6, 11.897689768976898),
    (Side.LONG, 5.0, 10.0, 1.0, 8.070707070707071),
    (Side.LONG, 5.0, 8.0, 1.0, 6.454545454545454),
    (Side.LONG, 3.0, 10.0, 1.0, 6.723905723905723),
    (Side.LONG, 5.0, 10.0, 0.6, 8.063973063973064),
]


def test_generic_table_puts_cum_in_bracket_two() -> None:
    """The two-tier table used for freqtrade's vectors is continuous and charges 1% less 0.01 above 2 USDT."""
    table = FAMILIES[Exchange.BINANCEUSDM].tier_table(GENERIC_TIERS)
    assert table.continuous
    assert table.tier_for(6.0) == table.tiers[1]
    assert table.maintenance_margin(6.0) == pytest.approx(0.05, rel=1e-12)


@pytest.mark.parametrize(
    ("side", "leverage", "open_rate", "amount", "expected"),
    FREQTRADE_GENERIC,
    ids=[f"{s}-lev{lev:g}-open{o:g}-amount{a:g}" for s, lev, o, a, _ in FREQTRADE_GENERIC],
)
def test_freqtrade_generic_isolated_binance(
    side: Side, leverage: float, open_rate: float, amount: float, expected: float
) -> None:
    """The Binance isolated liquidation prices freqtrade asserts (rel 1e-6, as in its test)."""
    position = Position(
        "ETH/USDT:USDT",
        side,
        amount,
        open_rate,
        open_rate,
        FAMILIES[Exchange.BINANCEUSDM].tier_table(GENERIC_TIERS),
        margin_mode=MarginMode.ISOLATED,
        isolated_wallet=amount * open_rate / leverage,
    )
    assessed = assess(AccountSnapshot(0.0, (position,))).positions[0]
    assert assessed.tier == 2
    assert assessed.liquidation_price == pytest.approx(expected, rel=1e-6)


# --- Hyperliquid ----------------------------------------------------------------------------------

# Liquidation prices reported by Hyperliquid (ccxt fetch_positions, pnl 0), recorded in freqtrade's
# tests/exchange/test_hyperliquid.py::test_hyperliquid_dry_run_liquidation_price (tolerance rel 1e-4 there).
# Rows: symbol, max leverage, side, entry, contracts, collateral, reported liquidation price.
HYPERLIQUID_REPORTED = [
    ("ETH/USDC:USDC", 50, Side.LONG, 2458.5, 0.015, 36.864593, 0.86915825),
    ("BTC/USDC:USDC", 50, Side.LONG, 63287.0, 0.00039, 24.673292, 22.37166537),
    ("SOL/USDC:USDC", 20, Side.LONG, 145.83, 0.33, 24.045107, 74.83696193),
    ("ETH/USDC:USDC", 50, Side.LONG, 2459.5, 0.0199, 24.454895, 1243.0411908),
    ("BTC/USDC:USDC", 50, Side.LONG, 62739.0, 0.00077, 24.137992, 31708.03843631),
    ("DOGE/USDC:USDC", 20, Side.LONG, 0.11586, 437.0, 25.29769, 0.05945697),
    ("ETH/USDC:USDC", 50, Side.SHORT, 2642.8, 0.019, 25.091876, 3924.18322043),
    ("SOL/USDC:USDC", 20, Side.SHORT, 155.89, 0.32, 24.924941, 228.07847866),
    ("DOGE/USDC:USDC", 20, Side.SHORT, 0.14333, 351.0, 25.136807, 0.20970228),
    ("BTC/USDC:USDC", 50, Side.SHORT, 68595.0, 0.00069, 23.64871, 101849.99354283),
    ("BTC/USDC:USDC", 50, Side.SHORT, 65536.0, 0.00099, 21.604172, 86493.46174617),
    ("SOL/USDC:USDC", 20, Side.LONG, 173.06, 0.6, 20.735658, 142.05186667),
    ("ETH/USDC:USDC", 50, Side.SHORT, 2552.0, 0.0327, 20.833393, 3157.53150453),
    ("BTC/USDC:USDC", 50, Side.LONG, 66930.0, 0.0015, 20.043862, 54108.51043771),
    ("SOL/USDC:USDC", 20, Side.SHORT, 178.29, 0.11, 19.605036, 347.82205322),
    ("ETH/USDC:USDC", 50, Side.SHORT, 2518.4, 0.007, 17.62263, 4986.05799151),
    ("XYZ-AAPL/USDC:USDC", 10, Side.LONG, 250.0, 0.5, 25.0, 210.5263157894737),
    ("XYZ-GOOGL/USDC:USDC", 10, Side.SHORT, 190.0, 0.5, 9.5, 199.04761904761904),
]


@pytest.mark.parametrize(
    ("symbol", "max_leverage", "side", "entry", "contracts", "collateral", "reported"),
    HYPERLIQUID_REPORTED,
    ids=[f"{row[0].split('/')[0]}-{row[2]}-{row[3]:g}" for row in HYPERLIQUID_REPORTED],
)
def test_hyperliquid_reported_liquidation_prices(
    symbol: str,
    max_leverage: float,
    side: Side,
    entry: float,
    contracts: float,
    collateral: float,
    reported: float,
) -> None:
    """An isolated position (MM = notional / maxLeverage / 2) liquidates where Hyperliquid says."""
    table = FAMILIES[Exchange.HYPERLIQUID].tier_table([RawTier(0, INF, None, None, max_leverage)])
    position = Position(
        symbol,
        side,
        contracts,
        entry,
        entry,
        table,
        margin_mode=MarginMode.ISOLATED,
        isolated_wallet=collateral,
    )
    assessed = assess(AccountSnapshot(0.0, (position,))).positions[0]
    assert assessed.maintenance_margin_rate == pytest.approx(1 / (2 * max_leverage), rel=1e-15)
    assert assessed.liquidation_price == pytest.approx(reported, rel=1e-4)


# --- Bybit ----------------------------------------------------------------------------------------

# Illustrative Bybit risk-limit rows (riskLimitValue as cap, maintenanceMargin, mmDeduction), continuous.
BYBIT_TIERS: tuple[Bracket, ...] = (
    (0, 2_000_000, 0.005, 0.0),
    (2_000_000, 4_000_000, 0.01, 10_000.0),
    (4_000_000, 6_000_000, 0.015, 30_000.0),
)

# Rows: side, contracts, entry = mark, isolated wallet, bracket of the liquidation price.
BYBIT_ISOLATED = [
    (Side.LONG, 50.0, 60_000.0, 300_000.0, 2),
    (Side.SHORT, 50.0, 60_000.0, 300_000.0, 2),
    (Side.SHORT, 60.0, 60_000.0, 600_000.0, 3),
]


@pytest.mark.parametrize(
    ("side", "contracts", "entry", "wallet", "bracket"),
    BYBIT_ISOLATED,
    ids=["long", "short", "short-into-bracket-3"],
)
def test_bybit_isolated_follows_the_deduction_formula(
    side: Side, contracts: float, entry: float, wallet: float, bracket: int
) -> None:
    """Bybit's mmDeduction plays Binance's cum: the isolated price is the same closed form."""
    position = Position(
        "BTCUSDT",
        side,
        contracts,
        entry,
        entry,
        _table(Exchange.BYBIT, BYBIT_TIERS),
        margin_mode=MarginMode.ISOLATED,
        isolated_wallet=wallet,
    )
    price = assess(AccountSnapshot(0.0, (position,))).positions[0].liquidation_price
    expected = _linear_root(wallet, 0.0, 0.0, side, contracts, entry, BYBIT_TIERS)
    assert price == pytest.approx(expected, rel=1e-12)
    assert position.tiers.index_for(contracts * expected) + 1 == bracket


# --- OKX ------------------------------------------------------------------------------------------

# After freqtrade's OKX ETH tier fixture (test_get_maintenance_ratio_and_amt_okx), made contiguous;
# OKX has no deduction.
OKX_TIERS = (TierSpec(0, 2_000, 0.01), TierSpec(2_000, 4_000, 0.015), TierSpec(4_000, INF, 0.02))


def _okx_short() -> Position:
    # Below 2,000 the ratio is (2025 - P) / (0.01 P), 1.25 at the edge; from the edge on it is
    # (2025 - P) / (0.015 P), 0.83 there.
    return Position(
        "ETH-USDT-SWAP",
        Side.SHORT,
        1.0,
        1_000.0,
        1_000.0,
        FAMILIES[Exchange.OKX].tier_table(OKX_TIERS),
        margin_mode=MarginMode.ISOLATED,
        isolated_wallet=1_025.0,
    )


@pytest.mark.parametrize(
    ("notional", "maintenance_margin"),
    [(1_000.0, 10.0), (3_000.0, 45.0), (5_000.0, 100.0)],
    ids=["bracket1", "bracket2", "bracket3"],
)
def test_okx_rate_applies_to_the_whole_notional(notional: float, maintenance_margin: float) -> None:
    """Without a deduction the bracket's rate charges the whole notional, so MM jumps at each edge."""
    table = FAMILIES[Exchange.OKX].tier_table(OKX_TIERS)
    assert not table.continuous
    assert table.maintenance_margin(notional) == pytest.approx(maintenance_margin, rel=1e-12)


def test_okx_short_liquidates_at_the_bracket_edge_where_the_ratio_jumps() -> None:
    """The ratio jumps from 125% to 83% at 2,000 and never equals 100%: the edge is the liquidation price."""
    position = _okx_short()
    assessed = assess(AccountSnapshot(0.0, (position,))).positions[0]
    assert assessed.liquidation_price == 2_000.0
    below = isolated_ratio_at(replace(position, mark_price=2_000.0 * (1 - 1e-9)))
    at_edge = isolated_ratio_at(replace(position, mark_price=2_000.0))
    assert below is not None
    assert at_edge is not None
    assert below > 1.0 > at_edge


@pytest.mark.parametrize(
    ("index", "expected"),
    [(0, 2_025.0 / 1.015), (1, 2_025.0 / 1.013), (2, 2_000.0)],
    ids=["150-inside-bracket1", "130-inside-bracket1", "120-at-the-edge"],
)
def test_okx_short_threshold_prices(index: int, expected: float) -> None:
    """Thresholds reached inside bracket 1 solve there; 120%, jumped over at 2,000, gives the edge."""
    assessed = assess(AccountSnapshot(0.0, (_okx_short(),))).positions[0]
    assert assessed.threshold_prices[index] == pytest.approx(expected, rel=1e-12)


# --- Binance COIN-M (inverse) ---------------------------------------------------------------------

# Illustrative BTCUSD brackets in BTC (qtyFloor, qtyCap, maintMarginRatio, cum); cum follows the recurrence.
COINM_TIERS: tuple[Bracket, ...] = (
    (0, 5, 0.004, 0.0),
    (5, 10, 0.005, 0.005),
    (10, 20, 0.01, 0.055),
    (20, 50, 0.025, 0.355),
    (50, INF, 0.05, 1.605),
)
COINM_CONTRACT = 100.0  # USD a BTCUSD contract

# Rows: side, contracts, entry, mark, cross or isolated wallet in BTC.
COINM_CASES = [
    (Side.LONG, 5_000.0, 40_000.0, 38_000.0, 4.0),
    (Side.SHORT, 5_000.0, 40_000.0, 41_000.0, 4.0),
    (Side.LONG, 2_000.0, 30_000.0, 29_000.0, 1.5),
    (Side.SHORT, 2_000.0, 30_000.0, 31_000.0, 1.5),
]
COINM_IDS = ["long-bracket3", "short-bracket3-to-2", "long-bracket2", "short-bracket2-to-1"]


def _coinm(side: Side, contracts: float, entry: float, mark: float, **kwargs: object) -> Position:
    return Position(
        "BTCUSD_PERP",
        side,
        contracts,
        entry,
        mark,
        _table(Exchange.BINANCECOINM, COINM_TIERS),
        COINM_CONTRACT,
        inverse=True,
        **kwargs,  # type: ignore[arg-type]
    )


def test_coinm_notional_is_in_coin() -> None:
    """A COIN-M position's notional is contracts * 100 / price in BTC, charged at its coin bracket."""
    position = _coinm(Side.LONG, 5_000.0, 40_000.0, 38_000.0)
    assessed = assess(AccountSnapshot(4.0, (position,))).positions[0]
    assert assessed.notional == pytest.approx(500_000.0 / 38_000.0, rel=1e-15)
    assert assessed.tier == 3
    assert assessed.maintenance_margin == pytest.approx(500_000.0 / 38_000.0 * 0.01 - 0.055, rel=1e-12)
    assert assessed.unrealized_pnl == pytest.approx(500_000.0 * (1 / 40_000.0 - 1 / 38_000.0), rel=1e-12)


@pytest.mark.parametrize(("side", "contracts", "entry", "mark", "wallet"), COINM_CASES, ids=COINM_IDS)
def test_coinm_isolated_matches_the_closed_form(
    side: Side, contracts: float, entry: float, mark: float, wallet: float
) -> None:
    """An isolated COIN-M position liquidates at the inverse closed form of risk-math.md."""
    position = _coinm(side, contracts, entry, mark, margin_mode=MarginMode.ISOLATED, isolated_wallet=wallet)
    price = assess(AccountSnapshot(0.0, (position,))).positions[0].liquidation_price
    expected = _inverse_root(wallet, 0.0, 0.0, side, contracts * COINM_CONTRACT, entry, COINM_TIERS)
    assert price == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(("side", "contracts", "entry", "mark", "wallet"), COINM_CASES, ids=COINM_IDS)
def test_coinm_cross_matches_the_closed_form(
    side: Side, contracts: float, entry: float, mark: float, wallet: float
) -> None:
    """Cross, beside a BTC-margined quarterly, the perpetual follows the closed form with TMM1 and UPNL1."""
    quarterly = replace(
        _coinm(Side.LONG, 300.0, 41_000.0, 38_500.0),
        symbol="BTCUSD_QUARTER",
    )
    other_face = 300.0 * COINM_CONTRACT
    other_pnl = other_face * (1 / 41_000.0 - 1 / 38_500.0)
    other_mm = other_face / 38_500.0 * 0.004  # 0.78 BTC: bracket 1
    position = _coinm(side, contracts, entry, mark)
    price = assess(AccountSnapshot(wallet + 1.0, (position, quarterly))).positions[0].liquidation_price
    expected = _inverse_root(
        wallet + 1.0, other_pnl, other_mm, side, contracts * COINM_CONTRACT, entry, COINM_TIERS
    )
    assert price == pytest.approx(expected, rel=1e-12)


# --- re-solving across brackets, checked by bisection ---------------------------------------------


def _bisect_ratio(account: AccountSnapshot, symbol: str, low: float, high: float, k: float = 1.0) -> float:
    """The price in [low, high] at which ``ratio_at`` crosses ``k``, by plain bisection."""

    def excess(price: float) -> float:
        ratio = ratio_at(account.with_mark(symbol, price))
        assert ratio is not None
        return ratio - k

    below = excess(low)
    assert below * excess(high) < 0
    for _ in range(200):
        middle = (low + high) / 2
        if (excess(middle) < 0) == (below < 0):
            low = middle
        else:
            high = middle
    return (low + high) / 2


# Rows: side, contracts, entry = mark, cross wallet, bracket at the mark, bracket at the liquidation price.
BRACKET_CHANGES = [
    (Side.LONG, 10.0, 50_000.0, 300_000.0, 3, 2),
    (Side.SHORT, 10.0, 20_000.0, 101_700.0, 2, 3),
    (Side.LONG, 100.0, 40_000.0, 3_500_000.0, 4, 3),
]


@pytest.mark.parametrize(
    ("side", "contracts", "entry", "wallet", "at_mark", "at_liquidation"),
    BRACKET_CHANGES,
    ids=["long-3-to-2", "short-2-to-3", "long-4-to-3"],
)
def test_liquidation_price_in_another_bracket_than_the_mark(
    side: Side, contracts: float, entry: float, wallet: float, at_mark: int, at_liquidation: int
) -> None:
    """When the liquidation price lies in another bracket, the engine finds the root bisection finds."""
    table = _faq_tiers("BTCUSDT")
    account = AccountSnapshot(wallet, (Position("BTCUSDT", side, contracts, entry, entry, table),))
    assessed = assess(account).positions[0]
    assert assessed.tier == at_mark
    price = assessed.liquidation_price
    assert price is not None
    assert table.index_for(contracts * price) + 1 == at_liquidation
    low, high = (entry / 1000, entry) if side is Side.LONG else (entry, entry * 1000)
    assert price == pytest.approx(_bisect_ratio(account, "BTCUSDT", low, high), rel=1e-9)


# --- shorts, hedge mode ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "wallet"),
    [(MarginMode.CROSS, 250_000.0), (MarginMode.ISOLATED, 250_000.0)],
    ids=["cross", "isolated"],
)
def test_short_beside_a_long_matches_the_closed_form(mode: MarginMode, wallet: float) -> None:
    """A BTC short beside the FAQ ETH long: cross counts the ETH figures, isolated ignores them."""
    short = Position(
        "BTCUSDT",
        Side.SHORT,
        40.0,
        30_000.0,
        30_500.0,
        _faq_tiers("BTCUSDT"),
        margin_mode=mode,
        isolated_wallet=wallet if mode is MarginMode.ISOLATED else None,
    )
    eth = _faq_position(FAQ_ETH)
    account = AccountSnapshot(FAQ_WALLET if mode is MarginMode.CROSS else 1_000_000.0, (short, eth))
    price = assess(account).positions[0].liquidation_price
    if mode is MarginMode.CROSS:
        other_pnl = 3_683.979 * (1_335.18 - 1_456.84)
        other_mm = 3_683.979 * 1_335.18 * 0.10 - 135_365.0
        expected = _linear_root(FAQ_WALLET, other_pnl, other_mm, Side.SHORT, 40.0, 30_000.0, FAQ_BTC_TIERS)
    else:
        expected = _linear_root(wallet, 0.0, 0.0, Side.SHORT, 40.0, 30_000.0, FAQ_BTC_TIERS)
    assert price == pytest.approx(expected, rel=1e-12)


def _hedged_account() -> AccountSnapshot:
    table = _faq_tiers("BTCUSDT")
    return AccountSnapshot(
        30_000.0,
        (
            Position("BTCUSDT", Side.LONG, 20.0, 60_000.0, 61_000.0, table),
            Position("BTCUSDT", Side.SHORT, 8.0, 62_000.0, 61_000.0, table),
            _faq_position(("ETHUSDT", 100.0, 3_000.0, 3_100.0)),
        ),
    )


def test_hedge_mode_legs_share_one_liquidation_price() -> None:
    """A long and a short in one symbol (cross) liquidate together, at one price."""
    long, short, _ = assess(_hedged_account()).positions
    assert long.liquidation_price is not None
    assert long.liquidation_price == short.liquidation_price


def test_hedge_mode_ratio_is_one_at_the_liquidation_price() -> None:
    """At the hedged pair's liquidation price the account's ratio is 100%, as bisection agrees."""
    account = _hedged_account()
    price = assess(account).positions[0].liquidation_price
    assert price is not None
    assert ratio_at(account.with_mark("BTCUSDT", price)) == pytest.approx(1.0, rel=1e-9)
    assert price == pytest.approx(_bisect_ratio(account, "BTCUSDT", 1_000.0, 61_000.0), rel=1e-9)


# --- zero figures and missing liquidation prices --------------------------------------------------


def test_position_with_no_contracts_contributes_nothing() -> None:
    """A zero-size position adds no MM or PnL to the account and has no liquidation price."""
    empty = Position("SOLUSDT", Side.LONG, 0.0, 150.0, 120.0, _faq_tiers("ETHUSDT"))
    base = assess(_faq_account())
    with_empty = assess(replace(_faq_account(), positions=(*_faq_account().positions, empty)))
    assessed = with_empty.positions[-1]
    assert assessed.maintenance_margin == 0.0
    assert assessed.unrealized_pnl == 0.0
    assert assessed.liquidation_price is None
    assert assessed.threshold_prices == (None, None, None)
    assert with_empty.margin_ratio == base.margin_ratio
    assert [p.liquidation_price for p in with_empty.positions[:2]] == [
        p.liquidation_price for p in base.positions
    ]


@pytest.mark.parametrize("wallet", [0.0, 1_000.0], ids=["wallet-0", "wallet-1000"])
def test_account_without_positions_is_ok(wallet: float) -> None:
    """With no positions there is no maintenance margin: no ratio, level ok, balance = wallet."""
    assessment = assess(AccountSnapshot(wallet, ()))
    assert assessment.margin_ratio is None
    assert assessment.level is Level.OK
    assert assessment.margin_balance == wallet
    assert assessment.maintenance_margin == 0.0


def test_wallet_zero_at_entry_is_liquidation() -> None:
    """With an empty cross wallet and no PnL the ratio is 0, and the long's 100% price lies above its mark."""
    position = Position("BTCUSDT", Side.LONG, 1.0, 30_000.0, 30_000.0, _faq_tiers("BTCUSDT"))
    assessment = assess(AccountSnapshot(0.0, (position,)))
    assert assessment.margin_ratio == 0.0
    assert assessment.level is Level.LIQUIDATION
    expected = _linear_root(0.0, 0.0, 0.0, Side.LONG, 1.0, 30_000.0, FAQ_BTC_TIERS)
    assert assessment.positions[0].liquidation_price == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(
    ("mode", "wallet"),
    [(MarginMode.ISOLATED, 30_000.0), (MarginMode.ISOLATED, 40_000.0), (MarginMode.CROSS, 30_000.0)],
    ids=["isolated-1x", "isolated-over-1x", "cross-1x"],
)
def test_over_collateralized_long_has_no_liquidation_price(mode: MarginMode, wallet: float) -> None:
    """A long whose margin covers its whole notional cannot be liquidated: None, never a negative price."""
    position = Position(
        "BTCUSDT",
        Side.LONG,
        1.0,
        30_000.0,
        30_000.0,
        _faq_tiers("BTCUSDT"),
        margin_mode=mode,
        isolated_wallet=wallet if mode is MarginMode.ISOLATED else None,
    )
    account = AccountSnapshot(wallet if mode is MarginMode.CROSS else 0.0, (position,))
    assessed = assess(account).positions[0]
    assert assessed.liquidation_price is None
    assert assessed.threshold_prices == (None, None, None)


def test_over_collateralized_short_still_has_a_liquidation_price() -> None:
    """A short's loss is unbounded: even a 1x short has a liquidation price, above its entry."""
    position = Position(
        "BTCUSDT",
        Side.SHORT,
        1.0,
        30_000.0,
        30_000.0,
        _faq_tiers("BTCUSDT"),
        margin_mode=MarginMode.ISOLATED,
        isolated_wallet=30_000.0,
    )
    price = assess(AccountSnapshot(0.0, (position,))).positions[0].liquidation_price
    expected = _linear_root(30_000.0, 0.0, 0.0, Side.SHORT, 1.0, 30_000.0, FAQ_BTC_TIERS)
    assert expected == pytest.approx(60_050.0 / 1.005, rel=1e-15)
    assert price == pytest.approx(expected, rel=1e-12)


# --- drift against the exchange's own figures -----------------------------------------------------

FAQ_MB = FAQ_WALLET - 56_354.56848 - 448_192.88514
FAQ_TMM = 71_200.811444 + 356_512.508122


@pytest.mark.parametrize(
    ("reported", "maintenance_drift", "balance_drift"),
    [
        (ReportedFigures(FAQ_TMM, FAQ_MB), 0.0, 0.0),
        (ReportedFigures(FAQ_TMM * 1.01, FAQ_MB), 1 / 1.01 - 1, 0.0),
        (ReportedFigures(None, FAQ_MB * 0.98), None, 1 / 0.98 - 1),
        (ReportedFigures(None, None), None, None),
    ],
    ids=["exact", "mm-1pct-high", "mm-unknown", "both-unknown"],
)
def test_drift_is_relative_to_the_reported_figure(
    reported: ReportedFigures, maintenance_drift: float | None, balance_drift: float | None
) -> None:
    """Drift is (ours - theirs) / theirs, and None where the exchange reported nothing."""
    drift = assess(replace(_faq_account(), reported=reported)).drift
    assert drift is not None
    assert drift.maintenance_margin == pytest.approx(maintenance_drift, abs=1e-9)
    assert drift.margin_balance == pytest.approx(balance_drift, abs=1e-9)


def test_no_reported_figures_means_no_drift() -> None:
    """Without the exchange's figures there is no drift to report."""
    assert assess(_faq_account()).drift is None


def test_zero_reported_against_zero_ours_is_no_drift() -> None:
    """An empty account the exchange also reports as zero has drift 0, not a division by zero."""
    drift = assess(AccountSnapshot(0.0, (), ReportedFigures(0.0, 0.0))).drift
    assert drift is not None
    assert drift.maintenance_margin == 0.0
    assert drift.margin_balance == 0.0
    assert drift.worst == 0.0


# --- levels ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ratio", "level"),
    [
        (None, Level.OK),
        (1.5000001, Level.OK),
        (1.5, Level.WARNING),
        (1.3000001, Level.WARNING),
        (1.3, Level.DANGER),
        (1.2, Level.CRITICAL),
        (1.0000001, Level.CRITICAL),
        (1.0, Level.LIQUIDATION),
        (0.0, Level.LIQUIDATION),
        (-0.5, Level.LIQUIDATION),
    ],
    ids=[
        "none",
        "above-150",
        "at-150",
        "above-130",
        "at-130",
        "at-120",
        "above-100",
        "at-100",
        "zero",
        "negative",
    ],
)
def test_level_for_default_thresholds(ratio: float | None, level: Level) -> None:
    """A ratio at a threshold takes that threshold's level; 100% and below is liquidation."""
    assert level_for(ratio, DEFAULT_THRESHOLDS) is level


CUSTOM_THRESHOLDS = (3.0, 2.0, 1.5, 1.1)


@pytest.mark.parametrize(
    ("ratio", "level"),
    [
        (3.01, Level.OK),
        (3.0, Level.WARNING),
        (2.0, Level.DANGER),
        (1.5, Level.CRITICAL),
        (1.1, Level.CRITICAL),
        (1.05, Level.CRITICAL),
        (1.0, Level.LIQUIDATION),
    ],
    ids=["above-300", "at-300", "at-200", "at-150", "fourth-is-critical", "below-last", "at-100"],
)
def test_level_for_custom_thresholds(ratio: float, level: Level) -> None:
    """Custom thresholds name warning, danger, critical in order; further ones are critical too."""
    assert level_for(ratio, CUSTOM_THRESHOLDS) is level


# --- pre-trade check with the bundled BTC brackets ------------------------------------------------


def _btc_bundled() -> TierTable:
    table = bundled_tiers("BTCUSDT")
    assert table is not None
    return table


# Rows: side, leverage, entry, contracts, stop, liquidation price by the closed form in bracket 1 (0.4%,
# cum 0), whether the stop fires first.
PRETRADE = [
    (Side.LONG, 20.0, 60_000.0, 0.1, 58_000.0, (300.0 - 6_000.0) / (0.1 * 0.004 - 0.1), True),
    (Side.LONG, 50.0, 60_000.0, 0.1, 58_000.0, (120.0 - 6_000.0) / (0.1 * 0.004 - 0.1), False),
    (Side.SHORT, 20.0, 60_000.0, 0.1, 62_000.0, (300.0 + 6_000.0) / (0.1 * 0.004 + 0.1), True),
    (Side.SHORT, 50.0, 60_000.0, 0.1, 62_000.0, (120.0 + 6_000.0) / (0.1 * 0.004 + 0.1), False),
]


@pytest.mark.parametrize(
    ("side", "leverage", "entry", "contracts", "stop", "liquidation", "before"),
    PRETRADE,
    ids=[
        "long-20x-stop-first",
        "long-50x-liquidated-first",
        "short-20x-stop-first",
        "short-50x-liquidated-first",
    ],
)
def test_pretrade_stop_against_liquidation(
    side: Side, leverage: float, entry: float, contracts: float, stop: float, liquidation: float, before: bool
) -> None:
    """The buffer is the signed stop-to-liquidation distance, positive when the stop fires first."""
    check = check_trade(PlannedTrade("BTCUSDT", side, entry, contracts, leverage, stop, _btc_bundled()))
    assert check.tier == 1
    assert check.initial_margin == pytest.approx(entry * contracts / leverage, rel=1e-12)
    assert check.liquidation_price == pytest.approx(liquidation, rel=1e-12)
    assert check.stop_before_liquidation is before
    assert check.buffer == pytest.approx(side.sign * (stop - liquidation), rel=1e-12)
    assert check.leverage_allowed


@pytest.mark.parametrize(
    ("side", "stop"),
    [(Side.LONG, 61_000.0), (Side.LONG, 60_000.0), (Side.SHORT, 59_000.0)],
    ids=["long-stop-above", "long-stop-at-entry", "short-stop-below"],
)
def test_pretrade_stop_on_the_wrong_side_is_refused(side: Side, stop: float) -> None:
    """A stop that would not limit the loss is the user's error, naming stop_loss."""
    with pytest.raises(PositionError) as caught:
        PlannedTrade("BTCUSDT", side, 60_000.0, 0.1, 20.0, stop, _btc_bundled())
    assert caught.value.field == "stop_loss"


# --- suggested actions ----------------------------------------------------------------------------


@pytest.mark.parametrize("target", [2.5, 3.0, 5.0], ids=["250", "300", "500"])
def test_margin_to_add_reaches_the_target(target: float) -> None:
    """Adding the suggested margin to the cross wallet brings the FAQ account to the target ratio."""
    account = _faq_account()
    add = account_margin_to_add(assess(account), target)
    assert add > 0
    assert ratio_at(account.with_wallet(account.wallet_balance + add)) == pytest.approx(target, rel=1e-12)


def test_margin_to_add_is_zero_above_the_target() -> None:
    """The FAQ account (ratio 241%) needs no margin to reach 200%."""
    assert account_margin_to_add(assess(_faq_account()), 2.0) == 0.0


def _closed(account: AccountSnapshot, index: int, fraction: float) -> AccountSnapshot:
    """``account`` after closing ``fraction`` of position ``index`` at its mark, the PnL realized."""
    position = account.positions[index]
    kept = replace(position, contracts=position.contracts * (1 - fraction))
    positions = tuple(kept if i == index else p for i, p in enumerate(account.positions))
    realized = fraction * position.unrealized_pnl()
    return replace(account, wallet_balance=account.wallet_balance + realized, positions=positions)


@pytest.mark.parametrize(
    ("index", "target", "bracket_after"),
    [(1, 3.0, 6), (1, 6.0, 6), (1, 8.0, 5), (0, 2.6, 4)],
    ids=["eth-300", "eth-600", "eth-800-drops-a-bracket", "btc-260"],
)
def test_close_fraction_reaches_the_target(index: int, target: float, bracket_after: int) -> None:
    """Closing the suggested fraction of a FAQ position at its mark brings the account to the target ratio."""
    account = _faq_account()
    assessment = assess(account)
    fraction = close_fraction(assessment, assessment.positions[index], target)
    assert fraction is not None
    assert 0 < fraction < 1
    after = _closed(account, index, fraction)
    assert ratio_at(after) == pytest.approx(target, rel=1e-9)
    assert assess(after).positions[index].tier == bracket_after


def test_close_fraction_is_zero_when_already_above_target() -> None:
    """An account already above the target needs nothing closed."""
    assessment = assess(_faq_account())
    assert close_fraction(assessment, assessment.positions[0], 2.0) == 0.0


@pytest.mark.parametrize(("index", "target"), [(1, 20.0), (0, 3.0)], ids=["eth-2000", "btc-300"])
def test_close_fraction_is_none_when_closing_everything_falls_short(index: int, target: float) -> None:
    """When the other positions alone hold the ratio below the target, no fraction suffices."""
    account = _faq_account()
    assessment = assess(account)
    others = assessment.maintenance_margin - assessment.positions[index].maintenance_margin
    assert assessment.margin_balance / others < target
    assert close_fraction(assessment, assessment.positions[index], target) is None


# --- moving marks (every stream tick) -------------------------------------------------------------


def test_with_marks_equals_a_validated_rebuild() -> None:
    """The tick's fast copy is the same account ``replace`` would build, the other symbols untouched."""
    account = _faq_account()
    moved = account.with_marks({"BTCUSDT": 25_000.0})
    expected = replace(
        account,
        positions=tuple(
            replace(p, mark_price=25_000.0) if p.symbol == "BTCUSDT" else p for p in account.positions
        ),
    )
    assert moved == expected
    assert moved.positions[1] is account.positions[1]
    assert account.positions[0].mark_price != 25_000.0  # the original is left as it was


@pytest.mark.parametrize("price", [math.nan, math.inf, 0.0, -1.0, 1e30])
def test_with_marks_refuses_a_bad_mark(price: float) -> None:
    """A mark no position could have names the field, as the constructor's checks do."""
    with pytest.raises(PositionError) as caught:
        _faq_account().with_marks({"BTCUSDT": price})
    assert caught.value.field == ("contracts" if price == 1e30 else "mark_price")
