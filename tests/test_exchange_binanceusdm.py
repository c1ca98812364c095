"""Binance USDⓈ-M normalisation: raw v3 payloads in tests/data/binanceusdm -> AccountSnapshot."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from monitor.errors import PayloadError
from monitor.exchanges.binanceusdm import (
    foreign_margin_assets,
    mark_rows,
    normalise,
    open_symbols,
    parse_brackets,
)
from monitor.risk import AccountSnapshot, assess

DATA = Path(__file__).parent / "data" / "binanceusdm"
CASES = sorted(path.stem for path in DATA.glob("*.json"))
SYMBOLS = {"BTCUSDT": "BTC/USDT:USDT", "ETHUSDT": "ETH/USDT:USDT", "BTCUSDC": "BTC/USDC:USDC"}


def load(name: str) -> dict[str, Any]:
    """One fixture: the four payloads, the options and the expected figures."""
    document: dict[str, Any] = json.loads((DATA / f"{name}.json").read_text(encoding="utf-8"))
    return document


def run(document: dict[str, Any]) -> AccountSnapshot:
    """Normalise a fixture the way the adapter does."""
    return normalise(
        document["account"],
        document["positionRisk"],
        mark_rows(document["premiumIndex"]),
        parse_brackets(document["leverageBracket"]),
        symbols=SYMBOLS,
        margin_asset=document.get("margin_asset", "USDT"),
        multi_assets=document.get("multi_assets", False),
    )


@pytest.mark.parametrize("name", CASES, ids=CASES)
def test_fixture_normalises_to_expected_figures(name: str) -> None:
    """Wallet, the reported cross totals and every open position match the fixture's expectations."""
    document = load(name)
    expected = document["expected"]
    snapshot = run(document)
    assert snapshot.wallet_balance == pytest.approx(expected["wallet_balance"], rel=1e-12)
    assert snapshot.reported is not None
    assert snapshot.reported.maintenance_margin == pytest.approx(expected["maintenance_margin"], rel=1e-9)
    assert snapshot.reported.margin_balance == pytest.approx(expected["margin_balance"], rel=1e-9)
    got = [
        [p.symbol, p.side.value, p.contracts, p.margin_mode.value, p.isolated_wallet, p.mark_price]
        for p in snapshot.positions
    ]
    assert len(got) == len(expected["positions"])
    for row, want in zip(got, expected["positions"], strict=True):
        symbol, side, contracts, mode, isolated_wallet, mark = row
        assert [symbol, side, mode] == [want[0], want[1], want[3]]
        assert [contracts, mark] == pytest.approx([want[2], want[5]], rel=1e-12)
        assert isolated_wallet == (None if want[4] is None else pytest.approx(want[4], rel=1e-12))


def test_faq_example_gives_the_faq_liquidation_prices() -> None:
    """Payloads of Binance's worked example, through the engine, give the FAQ's prices to the cent."""
    document = load("faq_cross_oneway")
    assessment = assess(run(document), (1.5, 1.3, 1.2))
    prices = [p.liquidation_price for p in assessment.positions]
    assert prices == pytest.approx(document["expected"]["liquidation_prices"], abs=0.01)


def test_engine_agrees_with_reported_totals() -> None:
    """At the payload's marks our cross maintenance margin and balance equal Binance's (no drift)."""
    snapshot = run(load("hedge_isolated"))
    moved = snapshot
    for position in snapshot.positions:
        moved = moved.with_mark(position.symbol, 60000.0 if position.symbol.startswith("BTC") else 3000.0)
    assessment = assess(moved, (1.5,))
    assert moved.reported is not None
    assert assessment.maintenance_margin == pytest.approx(moved.reported.maintenance_margin, rel=1e-9)
    assert assessment.margin_balance == pytest.approx(moved.reported.margin_balance, rel=1e-9)


def test_brackets_keep_cum_and_account_coefficient() -> None:
    """``cum`` is taken as sent; an account's own brackets (notionalCoef) parse like the default ones."""
    tables = parse_brackets(load("multi_assets")["leverageBracket"])
    assert tables["BTCUSDT"].tiers[3].amount == 16300.0
    assert tables["BTCUSDC"].tiers[0].max_leverage == 125.0


def test_missing_mark_falls_back_to_position_risk() -> None:
    """A symbol absent from premiumIndex is marked with positionRisk's own markPrice."""
    document = load("faq_cross_oneway")
    document["premiumIndex"] = []
    assert run(document).positions[0].mark_price == 31967.27


def test_open_symbols_and_foreign_assets() -> None:
    """Flat rows are not open; the USDC position is foreign to a USDT pool."""
    document = load("usdc_pool")
    assert open_symbols(document["positionRisk"]) == {"BTCUSDT", "BTCUSDC"}
    assert foreign_margin_assets(document["positionRisk"], "USDT") == {"USDC"}
    assert open_symbols(load("faq_cross_oneway")["positionRisk"]) == {"BTCUSDT", "ETHUSDT"}


def _set(document: dict[str, Any], where: list[str | int], value: object) -> dict[str, Any]:
    changed = copy.deepcopy(document)
    target: Any = changed
    for key in where[:-1]:
        target = target[key]
    if value is _DELETE:
        del target[where[-1]]
    else:
        target[where[-1]] = value
    return changed


_DELETE = object()

BAD_PAYLOADS: list[tuple[str, list[str | int], object, str]] = [
    ("empty mark", ["premiumIndex", 0, "markPrice"], "", "premiumIndex[BTCUSDT].markPrice: not a number: ''"),
    ("missing amount", ["positionRisk", 2, "positionAmt"], _DELETE, "positionRisk[2].positionAmt: missing"),
    (
        "text amount",
        ["positionRisk", 0, "positionAmt"],
        "abc",
        "positionRisk[0].positionAmt: not a number: 'abc'",
    ),
    ("null entry", ["positionRisk", 0, "entryPrice"], None, "positionRisk[0].entryPrice: not a number: None"),
    (
        "zero entry",
        ["positionRisk", 0, "entryPrice"],
        "0",
        "positionRisk[0].entryPrice: must be a finite number > 0",
    ),
    (
        "nan wallet",
        ["account", "totalCrossWalletBalance"],
        "NaN",
        "account.totalCrossWalletBalance: not a number",
    ),
    ("row not object", ["positionRisk", 1], "BTCUSDT", "positionRisk[1]: not an object: 'BTCUSDT'"),
    ("account not object", ["account"], [], "account: not an object: []"),
    ("positions not list", ["positionRisk"], {"code": -1}, "positionRisk: not a list"),
    ("bad side", ["positionRisk", 0, "positionSide"], "MIDDLE", "positionRisk[0].positionSide: not BOTH"),
    ("no symbol", ["positionRisk", 0, "symbol"], "", "positionRisk[0].symbol: not a non-empty string"),
    (
        "gap in brackets",
        ["leverageBracket", 0, "brackets", 1, "notionalFloor"],
        60000,
        "leverageBracket[0].brackets[1].notionalFloor: must equal the previous tier's cap",
    ),
    (
        "bracket rate text",
        ["leverageBracket", 1, "brackets", 0, "maintMarginRatio"],
        "x",
        "leverageBracket[1]",
    ),
    ("no brackets", ["leverageBracket", 1, "symbol"], "ETHBUSD", "leverageBracket[ETHUSDT]: no brackets"),
]


@pytest.mark.parametrize(
    ("where", "value", "message"),
    [case[1:] for case in BAD_PAYLOADS],
    ids=[case[0] for case in BAD_PAYLOADS],
)
def test_bad_payload_raises_payload_error_naming_the_field(
    where: list[str | int], value: object, message: str
) -> None:
    """Garbage from the exchange is a PayloadError naming payload and field, never KeyError or TypeError."""
    document = _set(load("faq_cross_oneway"), where, value)
    with pytest.raises(PayloadError) as caught:
        run(document)
    assert str(caught.value).startswith(message)


def test_missing_asset_row_for_another_pool() -> None:
    """Watching a margin asset the account has no row for names the assets list."""
    document = load("usdc_pool")
    document["margin_asset"] = "FDUSD"
    with pytest.raises(PayloadError, match=r"^account\.assets: no row for the margin asset FDUSD"):
        run(document)
