"""Bybit, OKX, Binance COIN-M and Hyperliquid personalities of the simulator, driven by real ccxt."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import ccxt.async_support as ccxt
import pytest
import pytest_asyncio
from monitor.exchanges.urls import rewrite_hosts
from monitor.sim import (
    BYBIT_DEMO_API_KEY,
    BYBIT_DEMO_SECRET,
    DEMO_API_KEY,
    DEMO_SECRET,
    HYPERLIQUID_DEMO_ADDRESS,
    OKX_DEMO_API_KEY,
    OKX_DEMO_PASSPHRASE,
    OKX_DEMO_SECRET,
    SimServer,
    VenueAccount,
    VenueFigures,
    VenuePosition,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    ClientFactory = Callable[..., Any]

OPTIONS: dict[str, dict[str, Any]] = {
    "bybit": {"fetchMarkets": {"types": ["linear"]}},
    "okx": {"fetchMarkets": {"types": ["swap"]}},
    "binancecoinm": {"fetchMarkets": {"types": ["inverse"]}},
    "hyperliquid": {"fetchMarkets": {"types": ["swap"]}},
}
CREDENTIALS: dict[str, dict[str, str]] = {
    "bybit": {"apiKey": BYBIT_DEMO_API_KEY, "secret": BYBIT_DEMO_SECRET},
    "okx": {"apiKey": OKX_DEMO_API_KEY, "secret": OKX_DEMO_SECRET, "password": OKX_DEMO_PASSPHRASE},
    "binancecoinm": {"apiKey": DEMO_API_KEY, "secret": DEMO_SECRET},
    "hyperliquid": {},
}
MONEY = 1e-8  # payload amounts are 8-decimal strings
OTHER_SECRET = "another-account-secret"  # noqa: S105 - a made-up test account's secret
WRONG = "wrong-secret"


@pytest_asyncio.fixture
async def sim() -> AsyncIterator[SimServer]:
    """A simulator with every demo account, marks held still (no scenario task)."""
    async with SimServer(scenario="crash", tick_s=0.02, autostart=False) as server:
        yield server


@pytest_asyncio.fixture
async def clients(sim: SimServer) -> AsyncIterator[ClientFactory]:
    """Makes real ccxt clients aimed at ``sim`` (demo credentials unless overridden); closes them all."""
    made: list[Any] = []

    def make(exchange: str, **overrides: str) -> Any:  # noqa: ANN401 - ccxt clients are untyped
        config: dict[str, Any] = {**CREDENTIALS[exchange], **overrides, "options": OPTIONS[exchange]}
        client = getattr(ccxt, exchange)(config)
        client.urls["api"] = rewrite_hosts(client.urls["api"], sim.base_url)
        made.append(client)
        return client

    yield make
    for client in made:
        await client.close()


def _number(value: object) -> float:
    assert isinstance(value, str)
    return float(value)


# --- Bybit ----------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_bybit_markets_load(clients: ClientFactory) -> None:
    """Load_markets (linear only, keyed: coin query-info too) lists the USDT perpetuals."""
    markets = await clients("bybit").load_markets()
    assert set(markets) == {"BTC/USDT:USDT", "ETH/USDT:USDT", "SOL/USDT:USDT"}
    assert markets["BTC/USDT:USDT"]["linear"] is True
    assert markets["BTC/USDT:USDT"]["swap"] is True


@pytest.mark.asyncio
async def test_bybit_wallet_balance_is_sim_figures(sim: SimServer, clients: ClientFactory) -> None:
    """The unified wallet's totals are the simulator's; accountMMRate is MM / margin balance to 4 places."""
    payload = await clients("bybit").privateGetV5AccountWalletBalance({"accountType": "UNIFIED"})
    row = payload["result"]["list"][0]
    figures = sim.bybit.figures()
    assert _number(row["totalMarginBalance"]) == pytest.approx(figures.margin_balance, abs=MONEY)
    assert _number(row["totalMaintenanceMargin"]) == pytest.approx(figures.maintenance_margin, abs=MONEY)
    assert row["accountMMRate"] == f"{figures.maintenance_margin / figures.margin_balance:.4f}".rstrip("0")
    assert row["coin"][0]["coin"] == "USDT"


@pytest.mark.asyncio
async def test_bybit_positions_follow_marks(sim: SimServer, clients: ClientFactory) -> None:
    """Position rows carry the simulator's MM, PnL and liquidation price at the marks it is set to."""
    sim.set_mark("BTCUSDT", 57_000.0)
    payload = await clients("bybit").privateGetV5PositionList({"category": "linear", "settleCoin": "USDT"})
    rows = {row["symbol"]: row for row in payload["result"]["list"]}
    btc = next(p for p in sim.bybit.figures().positions if p.position.symbol == "BTCUSDT")
    assert (rows["BTCUSDT"]["side"], rows["BTCUSDT"]["size"], rows["BTCUSDT"]["tradeMode"]) == (
        "Buy",
        "1.5",
        0,
    )
    assert (rows["ETHUSDT"]["side"], rows["ETHUSDT"]["size"]) == ("Sell", "25")
    assert _number(rows["BTCUSDT"]["markPrice"]) == 57_000.0
    assert _number(rows["BTCUSDT"]["positionMM"]) == pytest.approx(1.5 * 57_000.0 * 0.005, abs=MONEY)
    assert _number(rows["BTCUSDT"]["unrealisedPnl"]) == pytest.approx(1.5 * (57_000.0 - 59_500.0), abs=MONEY)
    assert btc.liquidation_price is not None
    assert _number(rows["BTCUSDT"]["liqPrice"]) == pytest.approx(btc.liquidation_price, rel=1e-8)


@pytest.mark.asyncio
async def test_bybit_mm_deduction_above_first_risk_limit(sim: SimServer, clients: ClientFactory) -> None:
    """40 BTC at 60,000 (2.4M, tier 2: 1%, mmDeduction 10,000) has MM 14,000 in the position and the tiers."""
    sim.bybit.add_account(
        VenueAccount("whale", OTHER_SECRET, "whale", 200_000.0, [VenuePosition("BTCUSDT", 40.0, 60_000.0)])
    )
    client = clients("bybit", apiKey="whale", secret=OTHER_SECRET)
    positions = await client.privateGetV5PositionList({"category": "linear", "symbol": "BTCUSDT"})
    limits = await client.publicGetV5MarketRiskLimit({"category": "linear", "symbol": "BTCUSDT"})
    row = positions["result"]["list"][0]
    tier = next(t for t in limits["result"]["list"] if t["riskLimitValue"] == row["riskLimitValue"])
    assert (row["riskId"], row["positionMM"]) == (2, "14000")
    assert (tier["maintenanceMargin"], tier["mmDeduction"]) == ("0.01", "10000")
    assert limits["result"]["list"][0]["mmDeduction"] == ""


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("overrides", "code"),
    [({"secret": WRONG}, "10004"), ({"apiKey": "nobody"}, "10003")],
    ids=["wrong-secret", "unknown-key"],
)
async def test_bybit_bad_credentials_are_authentication_errors(
    clients: ClientFactory, overrides: dict[str, str], code: str
) -> None:
    """A wrong secret (10004) or unknown key (10003) is ccxt's AuthenticationError."""
    with pytest.raises(ccxt.AuthenticationError, match=code):
        await clients("bybit", **overrides).privateGetV5AccountWalletBalance({"accountType": "UNIFIED"})


@pytest.mark.asyncio
async def test_bybit_clock_and_rate_limit(sim: SimServer, clients: ClientFactory) -> None:
    """A skewed clock answers 10002 (InvalidNonce); an injected rate limit answers 10006."""
    client = clients("bybit")
    sim.clock_offset_ms = 60_000
    with pytest.raises(ccxt.InvalidNonce):
        await client.privateGetV5AccountWalletBalance({"accountType": "UNIFIED"})
    sim.clock_offset_ms = 0
    sim.faults.inject("rate_limit", path="/v5/position/list")
    with pytest.raises(ccxt.RateLimitExceeded):
        await client.privateGetV5PositionList({"category": "linear", "settleCoin": "USDT"})


@pytest.mark.asyncio
async def test_bybit_missing_field_fault_reaches_nested_rows(sim: SimServer, clients: ClientFactory) -> None:
    """A missing_field fault drops the field inside Bybit's result envelope."""
    sim.faults.inject("missing_field", path="/v5/account/wallet-balance", field="totalMaintenanceMargin")
    payload = await clients("bybit").privateGetV5AccountWalletBalance({"accountType": "UNIFIED"})
    assert "totalMaintenanceMargin" not in payload["result"]["list"][0]
    assert "totalMarginBalance" in payload["result"]["list"][0]


# --- OKX ------------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_okx_markets_load(clients: ClientFactory) -> None:
    """Load_markets (swap only, keyed: asset currencies too) lists the swaps with their contract values."""
    markets = await clients("okx").load_markets()
    assert set(markets) == {"BTC/USDT:USDT", "ETH/USDT:USDT", "SOL/USDT:USDT"}
    assert markets["BTC/USDT:USDT"]["contractSize"] == 0.01
    assert markets["BTC/USDT:USDT"]["id"] == "BTC-USDT-SWAP"


@pytest.mark.asyncio
async def test_okx_balance_is_sim_figures(sim: SimServer, clients: ClientFactory) -> None:
    """AdjEq, mmr (an amount) and mgnRatio are the simulator's margin balance, MM and ratio."""
    payload = await clients("okx").privateGetAccountBalance()
    row = payload["data"][0]
    figures = sim.okx.figures()
    assert figures.margin_ratio is not None
    assert _number(row["adjEq"]) == pytest.approx(figures.margin_balance, abs=MONEY)
    assert _number(row["mmr"]) == pytest.approx(figures.maintenance_margin, abs=MONEY)
    assert _number(row["mgnRatio"]) == pytest.approx(figures.margin_ratio, rel=1e-8)


@pytest.mark.asyncio
async def test_okx_tier_by_contracts_applies_to_whole_notional(
    sim: SimServer, clients: ClientFactory
) -> None:
    """1,500 BTC-USDT-SWAP (tier 2 by contracts, 0.6%) at 60,000 has mmr 15 x 60,000 x 0.6% = 5,400."""
    sim.okx.add_account(
        VenueAccount(
            "big",
            OTHER_SECRET,
            "big",
            100_000.0,
            [VenuePosition("BTCUSDT", 1_500.0, 60_000.0)],
            passphrase=OTHER_SECRET,
        )
    )
    client = clients("okx", apiKey="big", secret=OTHER_SECRET, password=OTHER_SECRET)
    positions = await client.privateGetAccountPositions({"instType": "SWAP"})
    tiers = await client.publicGetPublicPositionTiers(
        {"instType": "SWAP", "tdMode": "cross", "instFamily": "BTC-USDT"}
    )
    row = positions["data"][0]
    assert (row["instId"], row["pos"], row["posSide"], row["mgnMode"]) == (
        "BTC-USDT-SWAP",
        "1500",
        "net",
        "cross",
    )
    assert _number(row["mmr"]) == pytest.approx(5_400.0, abs=MONEY)
    assert _number(row["notionalUsd"]) == pytest.approx(900_000.0, abs=MONEY)
    assert [(t["tier"], t["minSz"], t["maxSz"], t["mmr"]) for t in tiers["data"][:2]] == [
        ("1", "0", "1000", "0.004"),
        ("2", "1000", "5000", "0.006"),
    ]


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("overrides", "code"),
    [({"secret": WRONG}, "50113"), ({"password": WRONG}, "50105"), ({"apiKey": "nobody"}, "50111")],
    ids=["wrong-secret", "wrong-passphrase", "unknown-key"],
)
async def test_okx_bad_credentials_are_authentication_errors(
    clients: ClientFactory, overrides: dict[str, str], code: str
) -> None:
    """A wrong secret, passphrase or key is ccxt's AuthenticationError, with OKX's code."""
    with pytest.raises(ccxt.AuthenticationError, match=code):
        await clients("okx", **overrides).privateGetAccountBalance()


@pytest.mark.asyncio
async def test_okx_faults_speak_okx(sim: SimServer, clients: ClientFactory) -> None:
    """Injected clock and rate-limit faults answer 50102 (InvalidNonce) and 50011 (RateLimitExceeded)."""
    client = clients("okx")
    sim.faults.inject("timestamp", path="/api/v5/account/balance")
    with pytest.raises(ccxt.InvalidNonce):
        await client.privateGetAccountBalance()
    sim.faults.inject("rate_limit", path="/api/v5/account/positions")
    with pytest.raises(ccxt.RateLimitExceeded):
        await client.privateGetAccountPositions({"instType": "SWAP"})


# --- Binance COIN-M -------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_coinm_markets_load(clients: ClientFactory) -> None:
    """Load_markets (inverse only) lists the coin-margined perpetuals with their USD contract sizes."""
    markets = await clients("binancecoinm").load_markets()
    assert set(markets) == {"BTC/USD:BTC", "ETH/USD:ETH"}
    assert markets["BTC/USD:BTC"]["inverse"] is True
    assert (markets["BTC/USD:BTC"]["contractSize"], markets["ETH/USD:ETH"]["contractSize"]) == (100, 10)


@pytest.mark.asyncio
async def test_coinm_account_in_coin(sim: SimServer, clients: ClientFactory) -> None:
    """Each margin coin's maintMargin and marginBalance are the simulator's, in coin (inverse math)."""
    client = clients("binancecoinm")
    account = await client.dapiPrivateGetAccount()
    rows = await client.dapiPrivateGetPositionRisk({"pair": "BTCUSD"})
    assets = {row["asset"]: row for row in account["assets"]}
    for coin in ("BTC", "ETH"):
        figures = sim.coinm.figures(asset=coin)
        assert _number(assets[coin]["maintMargin"]) == pytest.approx(figures.maintenance_margin, abs=MONEY)
        assert _number(assets[coin]["marginBalance"]) == pytest.approx(figures.margin_balance, abs=MONEY)
    assert (rows[0]["symbol"], rows[0]["positionAmt"]) == ("BTCUSD_PERP", "600")
    assert _number(rows[0]["notionalValue"]) == pytest.approx(600 * 100 / 60_000.0, abs=MONEY)
    assert _number(rows[0]["unRealizedProfit"]) == pytest.approx(
        60_000 * (1 / 59_500 - 1 / 60_000), abs=MONEY
    )


@pytest.mark.asyncio
async def test_coinm_brackets_by_quantity_in_coin(clients: ClientFactory) -> None:
    """V2 brackets (by symbol) and v1 (by pair) carry qtyFloor/qtyCap in coin and a continuous cum."""
    client = clients("binancecoinm")
    by_symbol = await client.dapiPrivateV2GetLeverageBracket({"symbol": "BTCUSD_PERP"})
    by_pair = await client.dapiPrivateGetLeverageBracket({"pair": "BTCUSD"})
    second = by_symbol[0]["brackets"][1]
    assert (by_symbol[0]["symbol"], by_pair[0]["pair"]) == ("BTCUSD_PERP", "BTCUSD")
    assert (second["qtyFloor"], second["qtyCap"], second["maintMarginRatio"]) == (5.0, 10.0, 0.005)
    assert second["cum"] == pytest.approx(5.0 * (0.005 - 0.004))
    assert by_pair[0]["brackets"] == by_symbol[0]["brackets"]


@pytest.mark.asyncio
async def test_coinm_wrong_secret_is_authentication_error(clients: ClientFactory) -> None:
    """A wrong secret on /dapi is -1022, which ccxt raises as AuthenticationError."""
    client = clients("binancecoinm", secret=WRONG)
    with pytest.raises(ccxt.AuthenticationError):
        await client.dapiPrivateGetAccount()


# --- Hyperliquid ----------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_hyperliquid_markets_load(clients: ClientFactory) -> None:
    """Load_markets (swap only; spotMeta for currencies) lists the USDC perpetuals."""
    markets = await clients("hyperliquid").load_markets()
    assert set(markets) == {"BTC/USDC:USDC", "ETH/USDC:USDC", "SOL/USDC:USDC"}
    assert markets["BTC/USDC:USDC"]["limits"]["leverage"]["max"] == 40


@pytest.mark.asyncio
async def test_hyperliquid_clearinghouse_state_is_sim_figures(sim: SimServer, clients: ClientFactory) -> None:
    """Cross account value and cross MM (notional / max leverage / 2) are the simulator's, by address."""
    state = await clients("hyperliquid").publicPostInfo(
        {"type": "clearinghouseState", "user": HYPERLIQUID_DEMO_ADDRESS}
    )
    figures = sim.hyperliquid.figures()
    assert _number(state["crossMarginSummary"]["accountValue"]) == pytest.approx(
        figures.margin_balance, abs=MONEY
    )
    assert _number(state["crossMaintenanceMarginUsed"]) == pytest.approx(
        90_000.0 / 40 / 2 + 75_000.0 / 25 / 2, abs=MONEY
    )
    assert [p["position"]["coin"] for p in state["assetPositions"]] == ["BTC", "ETH"]


@pytest.mark.asyncio
async def test_hyperliquid_mids_follow_marks_and_unknown_user_is_empty(
    sim: SimServer, clients: ClientFactory
) -> None:
    """AllMids follows the simulator's marks; a well-formed unknown address holds nothing."""
    client = clients("hyperliquid")
    sim.set_mark("ETHUSDT", 3_333.0)
    mids = await client.publicPostInfo({"type": "allMids"})
    empty = await client.publicPostInfo({"type": "clearinghouseState", "user": "0x" + "ab" * 20})
    assert mids["ETH"] == "3333"
    assert (empty["assetPositions"], empty["crossMaintenanceMarginUsed"]) == ([], "0")


@pytest.mark.asyncio
async def test_hyperliquid_malformed_address_is_rejected(clients: ClientFactory) -> None:
    """A malformed address is refused (422), which ccxt raises as an ExchangeError."""
    with pytest.raises(ccxt.ExchangeError):
        await clients("hyperliquid").publicPostInfo({"type": "clearinghouseState", "user": "0x123"})


# --- every venue ----------------------------------------------------------------------------------


def _venue_figures(sim: SimServer) -> dict[str, VenueFigures]:
    return {
        "bybit": sim.bybit.figures(),
        "okx": sim.okx.figures(),
        "coinm-btc": sim.coinm.figures(asset="BTC"),
        "coinm-eth": sim.coinm.figures(asset="ETH"),
        "hyperliquid": sim.hyperliquid.figures(),
    }


@pytest.mark.asyncio
async def test_crash_scenario_drives_every_venue(sim: SimServer) -> None:
    """Every demo account's ratio falls as the crash scenario moves the shared marks."""
    before = _venue_figures(sim)
    for _ in range(30):
        sim.step()
    after = _venue_figures(sim)
    for name, figures in after.items():
        ratio, earlier = figures.margin_ratio, before[name].margin_ratio
        assert ratio is not None
        assert earlier is not None
        assert ratio < earlier, name


@pytest.mark.asyncio
async def test_liquidation_price_gives_ratio_one(sim: SimServer) -> None:
    """At each position's liquidation price (other marks held), the account's ratio is 100%."""
    for name, figures in _venue_figures(sim).items():
        for position in figures.positions:
            assert position.liquidation_price is not None
            original = sim.marks[position.position.symbol]
            sim.set_mark(position.position.symbol, position.liquidation_price)
            ratio = _venue_figures(sim)[name].margin_ratio
            sim.set_mark(position.position.symbol, original)
            assert ratio == pytest.approx(1.0, rel=1e-9), (name, position.position.symbol)
