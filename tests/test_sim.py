"""The simulated exchange, driven by real ccxt (REST and ccxt.pro websockets) over 127.0.0.1."""

from __future__ import annotations

import asyncio
import itertools
import json
import signal
import subprocess
import sys
from typing import TYPE_CHECKING, Any

import aiohttp
import ccxt.async_support as ccxt
import ccxt.pro as ccxtpro
import pytest
import pytest_asyncio
from monitor.exchanges.urls import rewrite_hosts
from monitor.sim import (
    DEMO_API_KEY,
    DEMO_SECRET,
    Level,
    SimAccount,
    SimPosition,
    SimServer,
    bulk_accounts,
    bulk_secret,
    demo_account,
)
from monitor.sim.server import ListenKeys

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    ClientFactory = Callable[..., ccxt.binanceusdm]

LEVELS_IN_ORDER = [Level.OK, Level.WARNING, Level.DANGER, Level.CRITICAL, Level.LIQUIDATION]


def _rest_client(sim: SimServer, api_key: str = DEMO_API_KEY, secret: str = DEMO_SECRET) -> ccxt.binanceusdm:
    client = ccxt.binanceusdm(
        {"apiKey": api_key, "secret": secret, "options": {"fetchMarkets": {"types": ["linear"]}}}
    )
    client.urls["api"] = rewrite_hosts(client.urls["api"], sim.base_url)
    return client


def _pro_client(sim: SimServer) -> ccxtpro.binanceusdm:
    client = ccxtpro.binanceusdm(
        {"apiKey": DEMO_API_KEY, "secret": DEMO_SECRET, "options": {"fetchMarkets": {"types": ["linear"]}}}
    )
    client.urls["api"] = rewrite_hosts(client.urls["api"], sim.base_url)
    client.urls["api"]["ws"] = rewrite_hosts(client.urls["api"]["ws"], sim.ws_url)
    return client


@pytest_asyncio.fixture
async def sim() -> AsyncIterator[SimServer]:
    """A simulator with the demo account, marks held still (no scenario task)."""
    async with SimServer(scenario="flat", tick_s=0.02, mark_push_s=0.02, autostart=False) as server:
        yield server


@pytest_asyncio.fixture
async def clients(sim: SimServer) -> AsyncIterator[ClientFactory]:
    """Makes ccxt REST clients aimed at ``sim`` and closes every one of them."""
    made: list[ccxt.binanceusdm] = []

    def make(api_key: str = DEMO_API_KEY, secret: str = DEMO_SECRET) -> ccxt.binanceusdm:
        client = _rest_client(sim, api_key, secret)
        made.append(client)
        return client

    yield make
    for client in made:
        await client.close()


@pytest_asyncio.fixture
async def pro(sim: SimServer) -> AsyncIterator[ccxtpro.binanceusdm]:
    """A ccxt.pro client aimed at ``sim`` (REST and websockets), closed afterwards."""
    client = _pro_client(sim)
    yield client
    await client.close()


# --- REST -----------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_markets_load(clients: ClientFactory) -> None:
    """Load_markets (ccxt) reads exchangeInfo and lists the linear perpetuals."""
    markets = await clients().load_markets()
    assert set(markets) == {"BTC/USDT:USDT", "ETH/USDT:USDT", "SOL/USDT:USDT"}
    assert markets["BTC/USDT:USDT"]["linear"] is True
    assert markets["BTC/USDT:USDT"]["swap"] is True


@pytest.mark.asyncio
async def test_account_totals_match_sim_figures(sim: SimServer, clients: ClientFactory) -> None:
    """The signed /fapi/v3/account totals are the simulator's own figures, as 8-decimal strings."""
    account = await clients().fapiPrivateV3GetAccount()
    figures = sim.figures(DEMO_API_KEY)
    assert float(account["totalMaintMargin"]) == pytest.approx(figures.total_maintenance_margin, abs=1e-8)
    assert float(account["totalMarginBalance"]) == pytest.approx(figures.total_margin_balance, abs=1e-8)
    assert float(account["totalCrossWalletBalance"]) == pytest.approx(figures.cross_wallet, abs=1e-8)
    assert account["totalMaintMargin"] == f"{figures.total_maintenance_margin:.8f}"
    assert {p["symbol"] for p in account["positions"]} == {"BTCUSDT", "ETHUSDT"}


@pytest.mark.asyncio
async def test_maintenance_margin_uses_bracket_cum(sim: SimServer, clients: ClientFactory) -> None:
    """BTC 1.5 at 60,000 (90,000 notional, bracket 2: 0.5%, cum 50) has MM 400 in positionRisk."""
    rows = await clients().fapiPrivateV3GetPositionRisk({"symbol": "BTCUSDT"})
    assert len(rows) == 1
    assert rows[0]["maintMargin"] == "400.00000000"
    assert rows[0]["positionAmt"] == "1.500"
    assert "marginType" not in rows[0]  # v3 drops it, as Binance does
    assert sim.figures().positions[0].maintenance_margin == pytest.approx(400.0)


@pytest.mark.asyncio
async def test_hedge_and_isolated_positions(sim: SimServer, clients: ClientFactory) -> None:
    """Hedge-mode sides and isolated margin show in positionRisk v2; isolated stays out of cross MM."""
    sim.add_account(
        SimAccount(
            "hedge-key",
            "hedge-secret",
            "hedge",
            1_000.0,
            [
                SimPosition("ETHUSDT", 2.0, 3_000.0, side="LONG"),
                SimPosition("ETHUSDT", -1.0, 3_000.0, side="SHORT", isolated_wallet=200.0),
            ],
            dual_side_position=True,
        )
    )
    client = clients("hedge-key", "hedge-secret")
    rows = await client.fapiPrivateV2GetPositionRisk()
    assert [(r["positionSide"], r["marginType"]) for r in rows] == [("LONG", "cross"), ("SHORT", "isolated")]
    assert rows[1]["isolatedWallet"] == "200.00000000"
    assert (await client.fapiPrivateGetPositionSideDual())["dualSidePosition"] is True
    figures = sim.figures("hedge-key")
    assert figures.maintenance_margin == pytest.approx(6_000.0 * 0.004)
    assert figures.total_maintenance_margin == pytest.approx(9_000.0 * 0.004)


@pytest.mark.asyncio
async def test_leverage_brackets_scale_with_notional_coef(sim: SimServer, clients: ClientFactory) -> None:
    """An account with notionalCoef 1.5 gets caps and cum scaled by 1.5, and notionalCoef in the entry."""
    account = demo_account()
    account.api_key, account.secret, account.notional_coef = "coef-key", "coef-secret", 1.5
    sim.add_account(account)
    scaled = await clients("coef-key", "coef-secret").fapiPrivateGetLeverageBracket({"symbol": "BTCUSDT"})
    default = await clients().fapiPrivateGetLeverageBracket()
    assert scaled["notionalCoef"] == 1.5
    assert scaled["brackets"][0]["notionalCap"] == pytest.approx(75_000.0)
    assert scaled["brackets"][1]["cum"] == pytest.approx(75.0)
    assert "notionalCoef" not in default[0]
    # 90,000 now sits in bracket 2 (75,000..900,000): 0.5% less cum 75.
    assert sim.figures("coef-key").positions[0].maintenance_margin == pytest.approx(450.0 - 75.0)


@pytest.mark.asyncio
async def test_premium_index_one_and_all(sim: SimServer, clients: ClientFactory) -> None:
    """The premiumIndex endpoint answers one object for a symbol and a list for all, following set_mark."""
    sim.set_mark("ETHUSDT", 3_210.5)
    client = clients()
    one = await client.fapiPublicGetPremiumIndex({"symbol": "ETHUSDT"})
    every = await client.fapiPublicGetPremiumIndex()
    assert one["markPrice"] == "3210.50000000"
    assert [row["symbol"] for row in every] == ["BTCUSDT", "ETHUSDT", "SOLUSDT"]


@pytest.mark.asyncio
async def test_api_restrictions(clients: ClientFactory) -> None:
    """The demo key is what a monitor should hold: it may read, from one IP, and nothing else."""
    flags = await clients().sapiGetAccountApiRestrictions()
    assert flags["enableReading"] is True
    assert flags["ipRestrict"] is True
    assert flags["enableFutures"] is False
    assert flags["enableWithdrawals"] is False


@pytest.mark.asyncio
async def test_wrong_secret_is_authentication_error(clients: ClientFactory) -> None:
    """A bad signature (-1022) becomes ccxt's AuthenticationError."""
    with pytest.raises(ccxt.AuthenticationError, match="-1022"):
        await clients(DEMO_API_KEY, "not-the-secret").fapiPrivateV3GetAccount()


@pytest.mark.asyncio
async def test_unknown_key_is_authentication_error(clients: ClientFactory) -> None:
    """An unknown API key (HTTP 401, -2015) becomes ccxt's AuthenticationError."""
    with pytest.raises(ccxt.AuthenticationError, match="-2015"):
        await clients("nobody", "nothing").fapiPrivateV3GetAccount()


@pytest.mark.asyncio
async def test_stale_timestamp_is_invalid_nonce(sim: SimServer, clients: ClientFactory) -> None:
    """A client clock 60 s behind the server's (-1021) becomes ccxt's InvalidNonce."""
    sim.clock_offset_ms = 60_000
    with pytest.raises(ccxt.InvalidNonce, match="-1021"):
        await clients().fapiPrivateV3GetAccount()


@pytest.mark.asyncio
async def test_injected_timestamp_fault(sim: SimServer, clients: ClientFactory) -> None:
    """An injected timestamp fault answers -1021 once, then the account reads normally."""
    sim.faults.inject("timestamp", path="/fapi/v3/account")
    client = clients()
    with pytest.raises(ccxt.InvalidNonce):
        await client.fapiPrivateV3GetAccount()
    assert "totalMaintMargin" in await client.fapiPrivateV3GetAccount()


@pytest.mark.asyncio
@pytest.mark.parametrize(("kind", "status"), [("rate_limit", "429"), ("ban", "418")], ids=["429", "418"])
async def test_rate_limits_carry_retry_after(
    sim: SimServer, clients: ClientFactory, kind: str, status: str
) -> None:
    """429 and 418 become ccxt's DDoSProtection, with Retry-After readable in the response headers."""
    sim.faults.inject(kind, path="/fapi/v3/account", retry_after_s=7)
    client = clients()
    with pytest.raises(ccxt.DDoSProtection, match=status):
        await client.fapiPrivateV3GetAccount()
    assert client.last_response_headers["Retry-After"] == "7"


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", ["http_500", "http_503"])
async def test_server_errors_are_exchange_not_available(
    sim: SimServer, clients: ClientFactory, kind: str
) -> None:
    """5xx answers become ccxt's ExchangeNotAvailable, for the next N requests only."""
    sim.faults.inject(kind, count=2)
    client = clients()
    for _ in range(2):
        with pytest.raises(ccxt.ExchangeNotAvailable):
            await client.fapiPublicGetPremiumIndex()
    assert isinstance(await client.fapiPublicGetPremiumIndex(), list)


@pytest.mark.asyncio
async def test_hang_is_request_timeout(sim: SimServer, clients: ClientFactory) -> None:
    """A request that hangs past the client's timeout becomes ccxt's RequestTimeout."""
    sim.faults.inject("timeout", path="/fapi/v1/time", hang_s=10.0)
    client = clients()
    client.timeout = 300
    with pytest.raises(ccxt.RequestTimeout):
        await client.fapiPublicGetTime()


@pytest.mark.asyncio
async def test_malformed_json_comes_back_as_text(sim: SimServer, clients: ClientFactory) -> None:
    """A truncated 200 body raises nothing in ccxt: the implicit method returns the raw text (no hang).

    Adapters must therefore check the payload is a dict before reading it.
    """
    sim.faults.inject("malformed_json", path="/fapi/v3/account")
    payload = await clients().fapiPrivateV3GetAccount()
    assert isinstance(payload, str)
    with pytest.raises(json.JSONDecodeError):
        json.loads(payload)


@pytest.mark.asyncio
async def test_missing_field(sim: SimServer, clients: ClientFactory) -> None:
    """A missing_field fault drops the named key from the next payload only."""
    sim.faults.inject("missing_field", path="/fapi/v3/account", field="totalMaintMargin")
    client = clients()
    assert "totalMaintMargin" not in await client.fapiPrivateV3GetAccount()
    assert "totalMaintMargin" in await client.fapiPrivateV3GetAccount()


@pytest.mark.asyncio
async def test_requests_are_counted_by_path(sim: SimServer, clients: ClientFactory) -> None:
    """Every request is counted under its path."""
    client = clients()
    for _ in range(3):
        await client.fapiPublicGetPremiumIndex()
    assert sim.request_count("/fapi/v1/premiumIndex") == 3
    assert sim.request_count() >= 3


@pytest.mark.asyncio
async def test_listen_key_lifecycle(sim: SimServer, clients: ClientFactory) -> None:
    """POST returns the account's key twice over, PUT extends it, and after expiry PUT fails (-1125)."""
    client = clients()
    first = (await client.fapiPrivatePostListenKey())["listenKey"]
    assert (await client.fapiPrivatePostListenKey())["listenKey"] == first
    assert (await client.fapiPrivatePutListenKey())["listenKey"] == first
    await sim.expire_listen_key(DEMO_API_KEY)
    with pytest.raises(ccxt.AuthenticationError, match="-1125"):
        await client.fapiPrivatePutListenKey()


def test_listen_keys_expire_after_ttl() -> None:
    """A listen key not kept alive within its validity is gone."""
    keys = ListenKeys(ttl_s=0.0)
    key = keys.open("a")
    assert keys.account_of(key) is None
    assert keys.keepalive("a") is None


@pytest.mark.asyncio
async def test_bulk_accounts_sign_and_differ() -> None:
    """1,000 bulk accounts get deterministic keys and secrets, and each answers signed calls."""
    accounts = bulk_accounts(1000)
    assert accounts[7].api_key == "sim-bulk-key-000007"
    assert accounts[7].secret == bulk_secret("sim-bulk-key-000007")
    async with SimServer(bulk=1000, autostart=False) as server:
        assert len(server.accounts) == 1001
        client = _rest_client(server, accounts[999].api_key, accounts[999].secret)
        try:
            account = await client.fapiPrivateV3GetAccount()
        finally:
            await client.close()
        figures = server.figures(accounts[999].api_key)
        assert float(account["totalMaintMargin"]) == pytest.approx(figures.total_maintenance_margin, abs=1e-8)


# --- scenarios ------------------------------------------------------------------------------------


def _levels(sim: SimServer) -> list[Level]:
    levels = [sim.figures().level]
    while sim.step():
        levels.append(sim.figures().level)
    return levels


def _runs(levels: list[Level]) -> list[tuple[Level, int]]:
    runs: list[tuple[Level, int]] = []
    for level in levels:
        if runs and runs[-1][0] == level:
            runs[-1] = (level, runs[-1][1] + 1)
        else:
            runs.append((level, 1))
    return runs


@pytest.mark.asyncio
async def test_crash_passes_every_level_in_order() -> None:
    """The crash scenario takes the demo account ok -> warning -> danger -> critical -> liquidation.

    Each level is held for at least 8 ticks, and the ratio ends below 100%.
    """
    async with SimServer(scenario="crash", autostart=False) as server:
        runs = _runs(_levels(server))
        figures = server.figures()
    assert [level for level, _ in runs] == LEVELS_IN_ORDER
    assert min(count for _, count in runs) >= 8
    assert figures.margin_ratio is not None
    assert figures.margin_ratio == pytest.approx(0.95, abs=1e-6)


@pytest.mark.asyncio
async def test_recovery_climbs_back_through_every_level() -> None:
    """The recovery scenario visits critical -> danger -> warning -> ok, each for several ticks."""
    async with SimServer(scenario="recovery", autostart=False) as server:
        runs = _runs(_levels(server)[1:])  # the first sample is before the first tick
    assert [level for level, _ in runs] == [Level.CRITICAL, Level.DANGER, Level.WARNING, Level.OK]
    assert min(count for _, count in runs) >= 8


@pytest.mark.asyncio
async def test_bleed_only_ever_worsens() -> None:
    """The bleed scenario lowers the ratio tick after tick, slowly, down to 105%."""
    async with SimServer(scenario="bleed", autostart=False) as server:
        ratios = [server.figures().margin_ratio]
        while server.step():
            ratios.append(server.figures().margin_ratio)
    values = [r for r in ratios if r is not None]
    assert len(values) > 600
    assert all(b <= a + 1e-9 for a, b in itertools.pairwise(values))
    assert values[-1] == pytest.approx(1.05, abs=1e-6)


@pytest.mark.asyncio
async def test_scenario_task_ticks_and_pauses() -> None:
    """With autostart the scenario advances on its own every tick_s; pause() holds the marks."""
    async with SimServer(scenario="crash", tick_s=0.01) as server:
        await server.wait_for(lambda: server.tick >= 5)
        server.pause()
        await asyncio.sleep(0.03)
        held, marks = server.tick, dict(server.marks)
        await asyncio.sleep(0.05)
        assert (server.tick, server.marks) == (held, marks)
        server.resume()
        await server.wait_for(lambda: server.tick > held)


@pytest.mark.asyncio
async def test_daemon_view_follows_crash(clients: ClientFactory, sim: SimServer) -> None:
    """Mid-crash, the exchange's own totals (as ccxt reads them) give the simulator's ratio."""
    sim.player = type(sim.player)("crash", sim.accounts[DEMO_API_KEY], sim.marks)
    for _ in range(30):
        sim.step()
    account = await clients().fapiPrivateV3GetAccount()
    ratio = float(account["totalMarginBalance"]) / float(account["totalMaintMargin"])
    assert sim.figures().margin_ratio == pytest.approx(ratio, rel=1e-6)
    assert sim.figures().level is Level.DANGER


# --- websockets -----------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_mark_price_stream(sim: SimServer, pro: ccxtpro.binanceusdm) -> None:
    """watch_mark_price receives markPriceUpdate events that follow the simulator's marks."""
    first = await asyncio.wait_for(pro.watch_mark_price("BTC/USDT:USDT"), 5)
    assert first["markPrice"] == pytest.approx(60_000.0)
    sim.set_mark("BTCUSDT", 58_000.0)
    async with asyncio.timeout(5):
        while (await pro.watch_mark_price("BTC/USDT:USDT"))["markPrice"] != pytest.approx(58_000.0):
            pass


@pytest.mark.asyncio
async def test_all_mark_prices_stream(pro: ccxtpro.binanceusdm) -> None:
    """watch_mark_prices with no symbols uses !markPrice@arr@1s and gets every market."""
    tickers = await asyncio.wait_for(pro.watch_mark_prices(), 5)
    assert set(tickers) == {"BTC/USDT:USDT", "ETH/USDT:USDT", "SOL/USDT:USDT"}


@pytest.mark.asyncio
async def test_account_update_reaches_watch_balance(sim: SimServer, pro: ccxtpro.binanceusdm) -> None:
    """A wallet change pushes ACCOUNT_UPDATE on the listen-key stream; ccxt's watch_balance sees it."""
    watching = asyncio.ensure_future(pro.watch_balance())
    await sim.wait_for(lambda: sim.user_streams(DEMO_API_KEY) > 0)
    await sim.set_wallet(DEMO_API_KEY, 7_500.0)
    balance: dict[str, Any] = await asyncio.wait_for(watching, 5)
    assert balance["USDT"]["total"] == pytest.approx(7_500.0)
    assert balance["info"]["e"] == "ACCOUNT_UPDATE"


@pytest.mark.asyncio
async def test_dropped_websocket_is_noticed(sim: SimServer, pro: ccxtpro.binanceusdm) -> None:
    """A websocket the simulator drops fails ccxt's pending watch with NetworkError."""
    await asyncio.wait_for(pro.watch_mark_price("ETH/USDT:USDT"), 5)
    pending = asyncio.ensure_future(pro.watch_mark_price("ETH/USDT:USDT"))
    await asyncio.sleep(0)
    assert await sim.drop_websockets("market") >= 1
    with pytest.raises(ccxt.NetworkError):
        await asyncio.wait_for(pending, 5)


async def _user_events(sim: SimServer, count: int, action: Callable[[], Any]) -> list[dict[str, Any]]:
    """Open the demo account's user-data stream with a plain client, run ``action``, collect events."""
    client = _rest_client(sim)
    try:
        key = (await client.fapiPrivatePostListenKey())["listenKey"]
    finally:
        await client.close()
    events: list[dict[str, Any]] = []
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(f"{sim.ws_url}/private/ws?listenKey={key}") as ws,
    ):
        await sim.wait_for(lambda: sim.user_streams(DEMO_API_KEY) > 0)
        result = action()
        if asyncio.iscoroutine(result):
            await result
        async with asyncio.timeout(5):
            async for message in ws:
                if message.type is aiohttp.WSMsgType.TEXT:
                    events.append(json.loads(message.data))
                if len(events) >= count:
                    break
    return events


@pytest.mark.asyncio
async def test_margin_call_when_ratio_falls(sim: SimServer) -> None:
    """MARGIN_CALL arrives once the demo account's ratio falls to 125%, with its cross positions."""
    sim.player = type(sim.player)("crash", sim.accounts[DEMO_API_KEY], sim.marks)

    def crash_to_critical() -> None:
        for _ in range(40):
            sim.step()

    events = await _user_events(sim, 1, crash_to_critical)
    assert events[0]["e"] == "MARGIN_CALL"
    assert {p["s"] for p in events[0]["p"]} == {"BTCUSDT", "ETHUSDT"}
    assert events[0]["p"][0]["mt"] == "CROSSED"


@pytest.mark.asyncio
async def test_listen_key_expired_event(sim: SimServer) -> None:
    """Expiring the listen key sends listenKeyExpired on the stream before it closes."""
    events = await _user_events(sim, 1, lambda: sim.expire_listen_key(DEMO_API_KEY))
    assert events[0]["e"] == "listenKeyExpired"


def test_standalone_prints_url_and_credentials_and_stops_on_sigterm() -> None:
    """run_standalone prints its URL, the demo credentials and a config stanza, and exits on SIGTERM."""
    code = "from monitor.sim import run_standalone; run_standalone(port=0, scenario='crash', tick_s=0.05)"
    with subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as process:
        assert process.stdout is not None
        lines = [process.stdout.readline()]
        while lines[-1] and not lines[-1].startswith("poll_interval_s"):
            lines.append(process.stdout.readline())
        process.send_signal(signal.SIGTERM)
        _, errors = process.communicate(timeout=10)
    text = "".join(lines)
    assert process.returncode == 0, errors
    assert "http://127.0.0.1:" in lines[0]
    assert DEMO_API_KEY in text
    assert DEMO_SECRET in text
    assert 'exchange = "binanceusdm"' in text
