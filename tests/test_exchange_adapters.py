"""COIN-M, Bybit, OKX, Hyperliquid and generic normalisation from raw payloads in tests/data/<exchange>/."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from monitor.errors import PayloadError
from monitor.exchanges import binancecoinm, bybit, generic, hyperliquid, okx
from monitor.exchanges.binanceusdm import mark_rows
from monitor.exchanges.source import Instrument, instrument_index

if TYPE_CHECKING:
    from collections.abc import Callable

    from monitor.risk import AccountSnapshot

DATA = Path(__file__).parent / "data"


def instruments(document: dict[str, Any]) -> dict[str, Instrument]:
    """The fixture's market id -> (symbol, contract size, settle, inverse) table."""
    return {key: Instrument(*value) for key, value in document.get("instruments", {}).items()}


def run_coinm(document: dict[str, Any]) -> AccountSnapshot:
    """COIN-M the way its adapter does it."""
    payloads = document["payloads"]
    return binancecoinm.normalise(
        payloads["account"],
        payloads["positionRisk"],
        mark_rows(payloads["premiumIndex"]),
        binancecoinm.parse_coinm_brackets(payloads["leverageBracket"]),
        instruments(document),
    )


def run_bybit(document: dict[str, Any]) -> AccountSnapshot:
    """Bybit the way its adapter does it."""
    payloads = document["payloads"]
    tiers = {symbol: bybit.parse_risk_limits(rows, symbol) for symbol, rows in payloads["riskLimit"].items()}
    return bybit.normalise(payloads["wallet"], payloads["positions"], tiers, instruments(document))


def run_okx(document: dict[str, Any]) -> AccountSnapshot:
    """OKX the way its adapter does it."""
    payloads = document["payloads"]
    tiers = {family: okx.tier_rows(rows, family) for family, rows in payloads["tiers"].items()}
    return okx.normalise(payloads["balance"], payloads["positions"], tiers, instruments(document))


def run_hyperliquid(document: dict[str, Any]) -> AccountSnapshot:
    """Hyperliquid the way its adapter does it."""
    payloads = document["payloads"]
    return hyperliquid.normalise(
        payloads["state"], hyperliquid.parse_meta(payloads["meta"]), document["symbols"]
    )


def run_generic(document: dict[str, Any]) -> AccountSnapshot:
    """The generic fallback on ccxt's unified fields."""
    payloads = document["payloads"]
    return generic.normalise(payloads["positions"], payloads["balance"], {}, instruments(document))


RUNNERS: dict[str, Callable[[dict[str, Any]], AccountSnapshot]] = {
    "binancecoinm": run_coinm,
    "bybit": run_bybit,
    "okx": run_okx,
    "hyperliquid": run_hyperliquid,
    "generic": run_generic,
}
CASES = sorted(f"{path.parent.name}/{path.stem}" for name in RUNNERS for path in (DATA / name).glob("*.json"))


def load(case: str) -> dict[str, Any]:
    """One fixture document."""
    document: dict[str, Any] = json.loads((DATA / f"{case}.json").read_text(encoding="utf-8"))
    return document


def run(case: str, document: dict[str, Any]) -> AccountSnapshot:
    """Normalise ``document`` with its exchange's runner."""
    return RUNNERS[case.split("/", 1)[0]](document)


@pytest.mark.parametrize("case", CASES, ids=CASES)
def test_fixture_normalises_to_expected_figures(case: str) -> None:
    """Wallet, reported cross totals and open positions match the fixture's expectations."""
    document = load(case)
    expected = document["expected"]
    snapshot = run(case, document)
    assert snapshot.wallet_balance == pytest.approx(expected["wallet_balance"], rel=1e-12)
    if expected["maintenance_margin"] is None:
        assert snapshot.reported is None
    else:
        assert snapshot.reported is not None
        assert snapshot.reported.maintenance_margin == pytest.approx(expected["maintenance_margin"], rel=1e-9)
        assert snapshot.reported.margin_balance == pytest.approx(expected["margin_balance"], rel=1e-9)
    assert len(snapshot.positions) == len(expected["positions"])
    for position, want in zip(snapshot.positions, expected["positions"], strict=True):
        assert [position.symbol, position.side.value, position.margin_mode.value] == [
            want[0],
            want[1],
            want[3],
        ]
        assert [position.contracts, position.mark_price] == pytest.approx([want[2], want[5]], rel=1e-12)
        assert position.isolated_wallet == (None if want[4] is None else pytest.approx(want[4], rel=1e-12))


def test_coinm_positions_are_inverse_with_the_market_contract_size() -> None:
    """COIN-M positions carry the contract size from the market and the inverse flag."""
    position = run_coinm(load("binancecoinm/recorded_short")).positions[0]
    assert (position.contract_size, position.inverse) == (100.0, True)
    assert position.tiers.tiers[1].floor == 5.0  # qtyFloor, in BTC


def test_okx_tiers_are_converted_at_the_mark() -> None:
    """OKX tier bounds in contracts become notional at contract value x mark, with no deduction."""
    table = run_okx(load("okx/recorded_multicurrency")).positions[0].tiers
    assert table.tiers[0].cap == pytest.approx(20000 * 101.33)
    assert [tier.amount for tier in table.tiers] == [0.0, 0.0]


def test_hyperliquid_rate_is_half_the_max_leverage_margin() -> None:
    """Hyperliquid's maintenance rate is 1 / (2 x max leverage)."""
    eth = run_hyperliquid(load("hyperliquid/cross_and_isolated")).positions[0]
    assert eth.tiers.tiers[0].rate == pytest.approx(1 / 100)


def test_bybit_deduction_kept() -> None:
    """Bybit's mmDeduction is the maintenance amount."""
    table = bybit.parse_risk_limits(
        load("bybit/recorded_unified")["payloads"]["riskLimit"]["LTCUSDT"], "LTCUSDT"
    )
    assert [tier.amount for tier in table.tiers] == [0.0, 1000.0, 3000.0]
    assert table.tiers[1].floor == 200000.0


def _mutate(document: dict[str, Any], where: list[str | int], value: object) -> dict[str, Any]:
    changed = copy.deepcopy(document)
    target: Any = changed["payloads"]
    for key in where[:-1]:
        target = target[key]
    target[where[-1]] = value
    return changed


BAD: list[tuple[str, str, list[str | int], object, str]] = [
    (
        "coinm mark",
        "binancecoinm/recorded_short",
        ["premiumIndex", 0, "markPrice"],
        "",
        "premiumIndex[BTCUSD_PERP].markPrice: not a number: ''",
    ),
    (
        "coinm side",
        "binancecoinm/recorded_short",
        ["positionRisk", 0, "positionSide"],
        "UP",
        "positionRisk[0].positionSide",
    ),
    (
        "bybit size",
        "bybit/recorded_unified",
        ["positions", 0, "size"],
        "",
        "position-list[0].size: not a number: ''",
    ),
    (
        "bybit side",
        "bybit/recorded_unified",
        ["positions", 0, "side"],
        "Hold",
        "position-list[0].side: not Buy or Sell",
    ),
    (
        "bybit margin",
        "bybit/recorded_unified",
        ["wallet", "result", "list", 0, "totalMarginBalance"],
        None,
        "wallet-balance.result.list[0].totalMarginBalance: not a number: None",
    ),
    (
        "okx mark",
        "okx/recorded_multicurrency",
        ["positions", "data", 0, "markPx"],
        "",
        "positions[0].markPx: not a number",
    ),
    ("okx data", "okx/recorded_multicurrency", ["balance", "data"], {}, "balance.data: not a list"),
    (
        "hyperliquid size",
        "hyperliquid/cross_and_isolated",
        ["state", "assetPositions", 0, "position", "szi"],
        "x",
        "clearinghouseState.assetPositions[0].position.szi: not a number: 'x'",
    ),
    (
        "hyperliquid meta",
        "hyperliquid/cross_and_isolated",
        ["meta"],
        [],
        "metaAndAssetCtxs: expected [meta, assetCtxs]",
    ),
    (
        "generic side",
        "generic/recorded_unified",
        ["positions", 0, "side"],
        None,
        "fetchPositions[0].side: not long or short",
    ),
]


@pytest.mark.parametrize(
    ("case", "where", "value", "message"), [item[1:] for item in BAD], ids=[item[0] for item in BAD]
)
def test_bad_payload_names_the_field(case: str, where: list[str | int], value: object, message: str) -> None:
    """Garbage becomes a PayloadError naming payload and field, never KeyError or TypeError."""
    with pytest.raises(PayloadError) as caught:
        run(case, _mutate(load(case), where, value))
    assert str(caught.value).startswith(message)


def test_instrument_index_from_ccxt_markets() -> None:
    """Ccxt's markets_by_id (lists of markets) become instruments keyed by exchange id."""
    index = instrument_index(
        {"BTCUSD_PERP": [{"symbol": "BTC/USD:BTC", "contractSize": 100, "settle": "BTC", "inverse": True}]}
    )
    assert index == {"BTCUSD_PERP": Instrument("BTC/USD:BTC", 100.0, "BTC", inverse=True)}
