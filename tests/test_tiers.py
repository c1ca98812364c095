"""Tier tables: validated on construction, maintenance amounts derived, bracket lookup at the edges."""

from __future__ import annotations

import math

import pytest
from monitor.brackets import binance_symbol, bundled_symbols, bundled_tiers, parse_binance_brackets
from monitor.errors import TierTableError
from monitor.risk import TierSpec, TierTable
from monitor.risk.families import FAMILIES, Exchange, RawTier

# Binance USD-M BTCUSDT brackets as published around October 2024: (floor, cap, rate, cum).
BINANCE_BTC = [
    (0, 50_000, 0.004, 0.0),
    (50_000, 600_000, 0.005, 50.0),
    (600_000, 3_000_000, 0.0065, 950.0),
    (3_000_000, 12_000_000, 0.01, 11_450.0),
    (12_000_000, 70_000_000, 0.02, 131_450.0),
    (70_000_000, 100_000_000, 0.025, 481_450.0),
    (100_000_000, 230_000_000, 0.05, 2_981_450.0),
    (230_000_000, 480_000_000, 0.1, 14_481_450.0),
    (480_000_000, 600_000_000, 0.125, 26_481_450.0),
    (600_000_000, 800_000_000, 0.15, 41_481_450.0),
    (800_000_000, 1_200_000_000, 0.25, 121_481_450.0),
    (1_200_000_000, 1_800_000_000, 0.5, 421_481_450.0),
]


def test_missing_amounts_follow_the_recurrence() -> None:
    """Without ``cum``, the derived maintenance amounts equal the ones Binance publishes."""
    table = TierTable.build(TierSpec(floor, cap, rate) for floor, cap, rate, _ in BINANCE_BTC)
    assert [tier.amount for tier in table.tiers] == pytest.approx([cum for *_, cum in BINANCE_BTC], rel=1e-12)
    assert table.continuous


def test_given_amounts_are_kept_as_sent() -> None:
    """Amounts the exchange sends are used as they are, not recomputed."""
    table = TierTable.build(TierSpec(floor, cap, rate, cum) for floor, cap, rate, cum in BINANCE_BTC)
    assert [tier.amount for tier in table.tiers] == [cum for *_, cum in BINANCE_BTC]
    assert table.continuous


def test_inconsistent_amounts_are_flagged_discontinuous() -> None:
    """An amount off the recurrence is accepted (the exchange is the authority) but marks the table."""
    rows = [TierSpec(0, 10, 0.01, 0), TierSpec(10, 20, 0.02, 0.15)]
    assert not TierTable.build(rows).continuous


def test_an_amount_beyond_floor_times_rate_is_refused() -> None:
    """A deduction above floor x rate would make the maintenance margin negative: garbage, not a quirk."""
    rows = [TierSpec(0, 10, 0.01, 0), TierSpec(10, 20, 0.02, 0.5)]
    with pytest.raises(TierTableError, match=r"tiers\[1\]\.amount: must not exceed floor x rate 0\.2"):
        TierTable.build(rows)


def test_a_floor_belongs_to_its_own_bracket() -> None:
    """A notional exactly at a floor is charged at that bracket, as Binance's ``[floor, cap)`` says."""
    table = TierTable.build(TierSpec(floor, cap, rate, cum) for floor, cap, rate, cum in BINANCE_BTC)
    assert table.index_for(49_999.99) == 0
    assert table.index_for(50_000) == 1
    assert table.maintenance_margin(50_000) == pytest.approx(50_000 * 0.005 - 50)


def test_notional_beyond_the_last_cap_uses_the_last_bracket() -> None:
    """Past the last cap (a far price being solved for) the last bracket still charges."""
    table = TierTable.build(TierSpec(floor, cap, rate, cum) for floor, cap, rate, cum in BINANCE_BTC)
    assert table.tier_for(5e9).rate == 0.5


def test_maintenance_margin_is_continuous_at_each_edge() -> None:
    """With the maintenance amount, the margin just below an edge meets the margin at the edge."""
    table = TierTable.build(TierSpec(floor, cap, rate) for floor, cap, rate, _ in BINANCE_BTC)
    for tier in table.tiers[1:]:
        below = table.tiers[table.index_for(tier.floor) - 1].maintenance_margin(tier.floor)
        assert below == pytest.approx(table.maintenance_margin(tier.floor), rel=1e-12)


BAD_TABLES = [
    ("empty", [], 0, "floor", "at least one tier"),
    ("first-not-zero", [TierSpec(10, 20, 0.01)], 0, "floor", "must start at 0"),
    ("gap", [TierSpec(0, 10, 0.01), TierSpec(11, 20, 0.02)], 1, "floor", "previous tier's cap 10"),
    ("overlap", [TierSpec(0, 10, 0.01), TierSpec(5, 20, 0.02)], 1, "floor", "sorted and contiguous"),
    ("empty-range", [TierSpec(0, 0, 0.01)], 0, "cap", "must be above the floor"),
    ("zero-rate", [TierSpec(0, 10, 0)], 0, "rate", "between 0 and 1"),
    ("falling-rate", [TierSpec(0, 10, 0.02), TierSpec(10, 20, 0.01)], 1, "rate", "must not fall"),
    ("negative-floor", [TierSpec(-1, 10, 0.01)], 0, "floor", "finite number >= 0"),
    ("nan-rate", [TierSpec(0, 10, math.nan)], 0, "rate", "finite number"),
    ("first-amount", [TierSpec(0, 10, 0.01, 3)], 0, "amount", "must be 0 in the first tier"),
    ("negative-amount", [TierSpec(0, 10, 0.01), TierSpec(10, 20, 0.02, -1)], 1, "amount", "not be negative"),
    ("zero-leverage", [TierSpec(0, 10, 0.01, None, 0)], 0, "max_leverage", "must be positive"),
]


@pytest.mark.parametrize(
    ("rows", "tier", "field", "problem"),
    [case[1:] for case in BAD_TABLES],
    ids=[case[0] for case in BAD_TABLES],
)
def test_bad_tables_name_the_tier_at_fault(rows: list[TierSpec], tier: int, field: str, problem: str) -> None:
    """A bad table is refused with the index and field of its first bad tier."""
    with pytest.raises(TierTableError) as excinfo:
        TierTable.build(rows)
    assert (excinfo.value.tier, excinfo.value.field) == (tier, field)
    assert problem in str(excinfo.value)
    assert str(excinfo.value).startswith(f"tiers[{tier}].{field}: ")


def test_okx_tables_have_no_deduction() -> None:
    """OKX applies the tier's rate to the whole notional: amounts are 0 and the table jumps at edges."""
    okx = FAMILIES[Exchange.OKX]
    table = okx.tier_table([RawTier(0, 2000, 0.01), RawTier(2000, 4000, 0.015)])
    assert [tier.amount for tier in table.tiers] == [0, 0]
    assert not table.continuous
    assert table.maintenance_margin(2000) == pytest.approx(30)


def test_okx_refuses_a_maintenance_amount() -> None:
    """A maintenance amount given for OKX is a mistake in the input, not something to apply."""
    with pytest.raises(TierTableError, match=r"tiers\[1\]\.amount"):
        FAMILIES[Exchange.OKX].tier_table([RawTier(0, 2000, 0.01), RawTier(2000, 4000, 0.015, 10)])


def test_hyperliquid_rate_is_half_the_initial_margin_at_max_leverage() -> None:
    """Hyperliquid: rate = 1 / (2 * max leverage), with the deduction derived between tiers."""
    table = FAMILIES[Exchange.HYPERLIQUID].tier_table(
        [RawTier(0, 150e6, None, None, 40), RawTier(150e6, 1e12, None, None, 20)]
    )
    assert [tier.rate for tier in table.tiers] == [1 / 80, 1 / 40]
    assert table.tiers[1].amount == pytest.approx(150e6 * (1 / 40 - 1 / 80))


def test_a_missing_rate_is_named() -> None:
    """A tier without a rate (and, for Hyperliquid, without a maximum leverage) is refused."""
    with pytest.raises(TierTableError, match=r"tiers\[0\]\.rate: missing"):
        FAMILIES[Exchange.BYBIT].tier_table([RawTier(0, 10, None)])
    with pytest.raises(TierTableError, match="or max_leverage"):
        FAMILIES[Exchange.HYPERLIQUID].tier_table([RawTier(0, 10, None)])


def test_binance_bracket_rows_parse_as_sent() -> None:
    """Rows shaped like ``/fapi/v1/leverageBracket`` (strings included) become a table."""
    rows = [
        {"bracket": 1, "initialLeverage": 125, "notionalCap": "50000", "notionalFloor": "0",
         "maintMarginRatio": "0.004", "cum": "0.0"},
        {"bracket": 2, "initialLeverage": 100, "notionalCap": "600000", "notionalFloor": "50000",
         "maintMarginRatio": "0.005", "cum": "50.0"},
    ]  # fmt: skip
    table = parse_binance_brackets(rows)
    assert table.tiers[1].amount == 50.0
    assert table.tiers[0].max_leverage == 125


def test_coinm_bracket_rows_use_quantities() -> None:
    """COIN-M rows bracket by ``qtyFloor``/``qtyCap`` in coin."""
    rows = [
        {
            "bracket": 1,
            "initialLeverage": 125,
            "qtyCap": 5,
            "qtyFloor": 0,
            "maintMarginRatio": 0.004,
            "cum": 0,
        },
        {"bracket": 2, "initialLeverage": 100, "qtyCap": 10, "qtyFloor": 5, "maintMarginRatio": 0.005},
    ]
    table = parse_binance_brackets(rows, Exchange.BINANCECOINM)
    assert table.tiers[1].amount == pytest.approx(0.005)


def test_a_bracket_row_missing_a_field_is_named() -> None:
    """A bracket without its rate is refused naming the bracket and the missing key."""
    with pytest.raises(TierTableError, match=r"tiers\[0\]\.maintMarginRatio: missing"):
        parse_binance_brackets([{"notionalFloor": 0, "notionalCap": 10}])


def test_bundled_snapshot_covers_btc_and_eth() -> None:
    """The bundled snapshot serves BTC and ETH under either spelling, and nothing it lacks."""
    assert {"BTCUSDT", "ETHUSDT"} <= set(bundled_symbols())
    btc = bundled_tiers("BTC/USDT:USDT")
    assert btc is not None
    assert btc.tiers[0].rate == 0.004
    assert btc.continuous
    assert bundled_tiers("NOPEUSDT") is None


@pytest.mark.parametrize(
    ("symbol", "expected"),
    [("BTC/USDT:USDT", "BTCUSDT"), ("btcusdt", "BTCUSDT"), ("ETH/USDC:USDC", "ETHUSDC")],
    ids=["ccxt", "lowercase", "usdc"],
)
def test_binance_symbol(symbol: str, expected: str) -> None:
    """Ccxt and Binance spellings of a symbol meet in Binance's."""
    assert binance_symbol(symbol) == expected
