"""The Binance COIN-M personality (``/dapi``: inverse perpetuals margined and settled in coin).

Routes: ``GET /dapi/v1/ping``, ``/dapi/v1/time``, ``/dapi/v1/exchangeInfo``, ``/dapi/v1/premiumIndex``
and, signed as on Binance (``X-MBX-APIKEY``, ``timestamp``, hex HMAC-SHA256 ``signature``),
``/dapi/v1/account``, ``/dapi/v1/positionRisk``, ``/dapi/v1/leverageBracket`` (by ``pair``) and
``/dapi/v2/leverageBracket`` (by ``symbol``). ccxt's ``binancecoinm`` needs
``options={"fetchMarkets": {"types": ["inverse"]}}``; its ``load_markets`` also asks the USDⓈ-M
personality's ``/sapi/v1/capital/config/getall`` when keyed, which a COIN-M account passes when its key is
also a USDⓈ-M account (the demo's is: one Binance key serves both), else set ``fetchCurrencies: False``.

Contracts: ``BTCUSD_PERP`` (100 USD a contract) and ``ETHUSD_PERP`` (10 USD), marked at the Binance
``BTCUSDT``/``ETHUSDT`` marks. Every amount is in the margin coin:

    notional = contracts x contract size / mark          (coin)
    MM       = |notional| x mmr_b - cum_b                 (b: the bracket whose [qtyFloor, qtyCap] holds it)
    uPnL     = contracts x contract size x (1/entry - 1/mark)

Each margin coin is its own cross account (``VenueAccount.wallets``); the brackets are made up, shaped
like Binance's, ``cum`` continuous.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from monitor.sim.accounts import DEMO_API_KEY, DEMO_SECRET
from monitor.sim.binance import (
    AHEAD,
    BAD_KEY_FORMAT,
    BAD_SIGNATURE,
    DEFAULT_RECV_WINDOW_MS,
    FUNDING_INTERVAL_MS,
    INVALID_KEY,
    INVALID_SYMBOL,
    RECV_WINDOW,
    BinanceError,
)
from monitor.sim.venues import (
    Evaluation,
    Tier,
    VenueAccount,
    VenueFigures,
    VenuePosition,
    build_tiers,
    compute_venue_figures,
    reply,
    tier_for,
)

if TYPE_CHECKING:
    from aiohttp import web

    from monitor.sim.faults import Fault
    from monitor.sim.server import SimServer


@dataclass(frozen=True, slots=True)
class InverseSpec:
    """A COIN-M perpetual: its id, the Binance market whose mark drives it, contract size in USD."""

    symbol: str
    mark_symbol: str
    base: str
    contract_size: float
    tick_size: str
    price_precision: int
    brackets: tuple[Tier, ...]

    @property
    def pair(self) -> str:
        """``BTCUSD``."""
        return f"{self.base}USD"


# Made-up brackets shaped like Binance COIN-M's: (qtyCap in coin, maintenance rate, initial leverage).
INVERSE: dict[str, InverseSpec] = {
    spec.symbol: spec
    for spec in (
        InverseSpec(
            "BTCUSD_PERP",
            "BTCUSDT",
            "BTC",
            100.0,
            "0.1",
            1,
            build_tiers(
                (
                    (5.0, 0.004, 125.0),
                    (10.0, 0.005, 100.0),
                    (20.0, 0.01, 50.0),
                    (50.0, 0.025, 20.0),
                    (100.0, 0.05, 10.0),
                    (200.0, 0.1, 5.0),
                    (400.0, 0.125, 4.0),
                    (1_000.0, 0.25, 2.0),
                    (1_500.0, 0.5, 1.0),
                ),
                deduct=True,
            ),
        ),
        InverseSpec(
            "ETHUSD_PERP",
            "ETHUSDT",
            "ETH",
            10.0,
            "0.01",
            2,
            build_tiers(
                (
                    (250.0, 0.005, 75.0),
                    (1_000.0, 0.01, 50.0),
                    (5_000.0, 0.02, 25.0),
                    (20_000.0, 0.05, 10.0),
                    (50_000.0, 0.1, 5.0),
                    (100_000.0, 0.125, 4.0),
                    (200_000.0, 0.5, 1.0),
                ),
                deduct=True,
            ),
        ),
    )
}
INVERSE_BY_MARK = {spec.mark_symbol: spec for spec in INVERSE.values()}


class CoinmModel:
    """Inverse contracts: notional, MM and PnL in coin; brackets by notional in coin."""

    def evaluate(self, position: VenuePosition, price: float) -> Evaluation:
        """The position's figures at ``price`` (in the margin coin)."""
        spec = INVERSE_BY_MARK[position.symbol]
        usd = position.size * spec.contract_size
        notional = usd / price
        tier = tier_for(spec.brackets, notional)
        return Evaluation(
            notional=notional,
            tier=tier,
            maintenance_margin=abs(notional) * tier.mmr - tier.deduction,
            initial_margin=abs(notional) / position.leverage,
            unrealized_pnl=usd * (1.0 / position.entry_price - 1.0 / price),
        )


def coinm_demo_account() -> VenueAccount:
    """The COIN-M demo account, on the USDⓈ-M demo's key: 0.1 BTC and 2 ETH of cross wallets.

    Long 600 BTCUSD_PERP (60,000 USD) @ 59,500 and short 3,000 ETHUSD_PERP (30,000 USD) @ 3,020.
    """
    return VenueAccount(
        api_key=DEMO_API_KEY,
        secret=DEMO_SECRET,
        name="coinm-demo",
        wallet=0.0,
        wallets={"BTC": 0.1, "ETH": 2.0},
        positions=[
            VenuePosition("BTCUSDT", 600.0, 59_500.0, leverage=20.0),
            VenuePosition("ETHUSDT", -3_000.0, 3_020.0, leverage=20.0),
        ],
    )


def _mandatory(name: str) -> BinanceError:
    return BinanceError(
        400, -1102, f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed."
    )


def _money(value: float) -> str:
    return f"{value:.8f}"


class CoinmVenue:
    """The COIN-M personality over a ``SimServer``'s marks: accounts, routes, figures."""

    prefixes: tuple[str, ...] = ("/dapi/",)

    def __init__(self, sim: SimServer) -> None:
        self.sim = sim
        self.model = CoinmModel()
        self.accounts: dict[str, VenueAccount] = {}
        self.add_account(coinm_demo_account())

    def add_account(self, account: VenueAccount) -> None:
        """Hold ``account`` (replacing any with the same API key)."""
        self.accounts[account.api_key] = account

    def figures(self, api_key: str = DEMO_API_KEY, asset: str = "BTC") -> VenueFigures:
        """The simulator's own figures for one margin coin of an account, at the current marks (in coin)."""
        account = self.accounts[api_key]
        positions = [p for p in account.positions if INVERSE_BY_MARK[p.symbol].base == asset]
        return compute_venue_figures(
            self.model, asset, account.wallets.get(asset, 0.0), positions, self.sim.marks
        )

    def assets(self, api_key: str = DEMO_API_KEY) -> list[str]:
        """The account's margin coins: those with a wallet or a position."""
        account = self.accounts[api_key]
        held = set(account.wallets) | {INVERSE_BY_MARK[p.symbol].base for p in account.positions}
        return sorted(held)

    def add_routes(self, app: web.Application) -> None:
        """Register every ``/dapi`` path on ``app``."""
        app.router.add_get("/dapi/v1/ping", self.ping)
        app.router.add_get("/dapi/v1/time", self.time)
        app.router.add_get("/dapi/v1/exchangeInfo", self.exchange_info)
        app.router.add_get("/dapi/v1/premiumIndex", self.premium_index)
        app.router.add_get("/dapi/v1/account", self.account)
        app.router.add_get("/dapi/v1/positionRisk", self.position_risk)
        app.router.add_get("/dapi/v1/leverageBracket", self.leverage_bracket_v1)
        app.router.add_get("/dapi/v2/leverageBracket", self.leverage_bracket_v2)

    def fault_response(self, fault: Fault) -> web.Response | None:  # noqa: ARG002 - the protocol's shape
        """``None``: the server's generic answers are Binance's, which COIN-M shares."""
        return None

    # --- auth ---------------------------------------------------------------------------------------

    async def signed(self, request: web.Request) -> VenueAccount:
        """The account of a signed request (``/sapi`` asks it for keys only COIN-M knows)."""
        return await self._signed(request)

    async def _signed(self, request: web.Request) -> VenueAccount:
        """The account of a signed request, checked as Binance checks it: key, timestamp, signature."""
        key = request.headers.get("X-MBX-APIKEY")
        if not key:
            raise BinanceError(*BAD_KEY_FORMAT)
        account = self.accounts.get(key)
        if account is None:
            raise BinanceError(*INVALID_KEY)
        raw = request.query_string
        kept = [part for part in raw.split("&") if part and not part.startswith("signature=")]
        signature = request.query.get("signature")
        params = dict(parse_qsl("&".join(kept)))
        try:
            timestamp = int(params["timestamp"])
            recv_window = int(params.get("recvWindow", DEFAULT_RECV_WINDOW_MS))
        except (KeyError, ValueError) as exc:
            raise _mandatory("timestamp") from exc
        now = self.sim.server_time_ms()
        if timestamp >= now + 1000:
            raise BinanceError(*AHEAD)
        if now - timestamp > recv_window:
            raise BinanceError(*RECV_WINDOW)
        if signature is None:
            raise _mandatory("signature")
        expected = hmac.new(account.secret.encode(), "&".join(kept).encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, signature.lower()):
            raise BinanceError(*BAD_SIGNATURE)
        return account

    # --- public -------------------------------------------------------------------------------------

    async def ping(self, request: web.Request) -> web.Response:
        """``GET /dapi/v1/ping``."""
        return reply(request, {})

    async def time(self, request: web.Request) -> web.Response:
        """``GET /dapi/v1/time``."""
        return reply(request, {"serverTime": self.sim.server_time_ms()})

    async def exchange_info(self, request: web.Request) -> web.Response:
        """``GET /dapi/v1/exchangeInfo``: the inverse perpetuals."""
        symbols = [
            {
                "symbol": spec.symbol,
                "pair": spec.pair,
                "contractType": "PERPETUAL",
                "deliveryDate": 4133404800000,
                "onboardDate": 1596006000000,
                "contractStatus": "TRADING",
                "contractSize": int(spec.contract_size),
                "marginAsset": spec.base,
                "maintMarginPercent": "2.5000",
                "requiredMarginPercent": "5.0000",
                "baseAsset": spec.base,
                "quoteAsset": "USD",
                "pricePrecision": spec.price_precision,
                "quantityPrecision": 0,
                "baseAssetPrecision": 8,
                "quotePrecision": 8,
                "equalQtyPrecision": 4,
                "maxMoveOrderLimit": 10000,
                "triggerProtect": "0.0500",
                "underlyingType": "COIN",
                "underlyingSubType": [],
                "liquidationFee": "0.015000",
                "marketTakeBound": "0.05",
                "filters": [
                    {
                        "minPrice": spec.tick_size,
                        "maxPrice": "4520958",
                        "filterType": "PRICE_FILTER",
                        "tickSize": spec.tick_size,
                    },
                    {"stepSize": "1", "filterType": "LOT_SIZE", "maxQty": "1000000", "minQty": "1"},
                    {"stepSize": "1", "filterType": "MARKET_LOT_SIZE", "maxQty": "60000", "minQty": "1"},
                    {"limit": 200, "filterType": "MAX_NUM_ORDERS"},
                    {
                        "multiplierDown": "0.9500",
                        "multiplierUp": "1.0500",
                        "multiplierDecimal": "4",
                        "filterType": "PERCENT_PRICE",
                    },
                ],
                "orderTypes": ["LIMIT", "MARKET", "STOP", "STOP_MARKET", "TAKE_PROFIT", "TAKE_PROFIT_MARKET"],
                "timeInForce": ["GTC", "IOC", "FOK", "GTX"],
            }
            for spec in INVERSE.values()
        ]
        return reply(
            request,
            {
                "timezone": "UTC",
                "serverTime": self.sim.server_time_ms(),
                "rateLimits": [
                    {
                        "rateLimitType": "REQUEST_WEIGHT",
                        "interval": "MINUTE",
                        "intervalNum": 1,
                        "limit": 2400,
                    },
                    {"rateLimitType": "ORDERS", "interval": "MINUTE", "intervalNum": 1, "limit": 1200},
                ],
                "exchangeFilters": [],
                "symbols": symbols,
            },
        )

    def _premium_row(self, spec: InverseSpec) -> dict[str, Any]:
        mark = self.sim.marks[spec.mark_symbol]
        now = self.sim.server_time_ms()
        return {
            "symbol": spec.symbol,
            "pair": spec.pair,
            "markPrice": f"{mark:.8f}",
            "indexPrice": f"{mark * 0.9999:.8f}",
            "estimatedSettlePrice": f"{mark * 0.9999:.8f}",
            "lastFundingRate": "0.00010000",
            "interestRate": "0.00010000",
            "nextFundingTime": (now // FUNDING_INTERVAL_MS + 1) * FUNDING_INTERVAL_MS,
            "time": now,
        }

    def _specs(self, request: web.Request) -> list[InverseSpec]:
        symbol, pair = request.query.get("symbol"), request.query.get("pair")
        if symbol is not None and symbol not in INVERSE:
            raise BinanceError(*INVALID_SYMBOL)
        return [
            spec
            for spec in INVERSE.values()
            if (symbol is None or spec.symbol == symbol) and (pair is None or spec.pair == pair)
        ]

    async def premium_index(self, request: web.Request) -> web.Response:
        """``GET /dapi/v1/premiumIndex[?symbol=|pair=]``: always a list, as COIN-M answers."""
        return reply(request, [self._premium_row(spec) for spec in self._specs(request)])

    # --- account ------------------------------------------------------------------------------------

    async def account(self, request: web.Request) -> web.Response:
        """``GET /dapi/v1/account``: one asset row per margin coin (totals) and every position."""
        account = await self._signed(request)
        now = self.sim.server_time_ms()
        assets: list[dict[str, Any]] = []
        positions: list[dict[str, Any]] = []
        for asset in self.assets(account.api_key):
            figures = self.figures(account.api_key, asset)
            isolated = sum(p.position.isolated_margin or 0.0 for p in figures.positions)
            upnl = sum(p.unrealized_pnl for p in figures.positions)
            available = max(0.0, figures.margin_balance - figures.initial_margin)
            assets.append(
                {
                    "asset": asset,
                    "walletBalance": _money(figures.wallet + isolated),
                    "unrealizedProfit": _money(upnl),
                    "marginBalance": _money(figures.wallet + isolated + upnl),
                    "maintMargin": _money(figures.total_maintenance_margin),
                    "initialMargin": _money(figures.total_initial_margin),
                    "positionInitialMargin": _money(figures.total_initial_margin),
                    "openOrderInitialMargin": _money(0.0),
                    "maxWithdrawAmount": _money(available),
                    "crossWalletBalance": _money(figures.wallet),
                    "crossUnPnl": _money(figures.unrealized_pnl),
                    "availableBalance": _money(available),
                    "updateTime": now,
                }
            )
            for p in figures.positions:
                spec = INVERSE_BY_MARK[p.position.symbol]
                positions.append(
                    {
                        "symbol": spec.symbol,
                        "positionAmt": f"{p.position.size:.0f}",
                        "initialMargin": _money(p.initial_margin),
                        "maintMargin": _money(p.maintenance_margin),
                        "unrealizedProfit": _money(p.unrealized_pnl),
                        "positionInitialMargin": _money(p.initial_margin),
                        "openOrderInitialMargin": "0",
                        "leverage": f"{p.position.leverage:.0f}",
                        "isolated": p.position.isolated,
                        "positionSide": _side(p.position),
                        "entryPrice": f"{p.position.entry_price:.8f}",
                        "breakEvenPrice": f"{p.position.entry_price:.8f}",
                        "maxQty": f"{p.tier.cap:.0f}",
                        "notionalValue": _money(p.notional),
                        "isolatedWallet": _money(p.position.isolated_margin or 0.0),
                        "updateTime": now,
                    }
                )
        return reply(
            request,
            {
                "assets": assets,
                "positions": positions,
                "canDeposit": True,
                "canTrade": True,
                "canWithdraw": True,
                "feeTier": 0,
                "updateTime": 0,
            },
        )

    async def position_risk(self, request: web.Request) -> web.Response:
        """``GET /dapi/v1/positionRisk[?marginAsset=|pair=]``: the open positions."""
        account = await self._signed(request)
        margin_asset, pair = request.query.get("marginAsset"), request.query.get("pair")
        now = self.sim.server_time_ms()
        rows: list[dict[str, Any]] = []
        for asset in self.assets(account.api_key):
            if margin_asset is not None and asset != margin_asset:
                continue
            for p in self.figures(account.api_key, asset).positions:
                spec = INVERSE_BY_MARK[p.position.symbol]
                if pair is not None and spec.pair != pair:
                    continue
                wallet = p.position.isolated_margin
                rows.append(
                    {
                        "symbol": spec.symbol,
                        "positionAmt": f"{p.position.size:.0f}",
                        "entryPrice": f"{p.position.entry_price:.8f}",
                        "breakEvenPrice": f"{p.position.entry_price:.8f}",
                        "markPrice": f"{p.mark_price:.8f}",
                        "unRealizedProfit": _money(p.unrealized_pnl),
                        "liquidationPrice": f"{p.liquidation_price or 0.0:.8f}",
                        "leverage": f"{p.position.leverage:.0f}",
                        "maxQty": f"{p.tier.cap:.0f}",
                        "marginType": "isolated" if wallet is not None else "cross",
                        "isolatedMargin": _money(wallet + p.unrealized_pnl if wallet is not None else 0.0),
                        "isAutoAddMargin": "false",
                        "positionSide": _side(p.position),
                        "notionalValue": _money(p.notional),
                        "isolatedWallet": _money(wallet or 0.0),
                        "updateTime": now,
                    }
                )
        return reply(request, rows)

    @staticmethod
    def _brackets(spec: InverseSpec) -> list[dict[str, Any]]:
        return [
            {
                "bracket": tier.number,
                "initialLeverage": int(tier.max_leverage),
                "qtyCap": tier.cap,
                "qtyFloor": tier.floor,
                "maintMarginRatio": tier.mmr,
                "cum": tier.deduction,
            }
            for tier in spec.brackets
        ]

    async def leverage_bracket_v1(self, request: web.Request) -> web.Response:
        """``GET /dapi/v1/leverageBracket[?pair=]``: brackets by pair, quantities in coin."""
        await self._signed(request)
        return reply(
            request, [{"pair": spec.pair, "brackets": self._brackets(spec)} for spec in self._specs(request)]
        )

    async def leverage_bracket_v2(self, request: web.Request) -> web.Response:
        """``GET /dapi/v2/leverageBracket[?symbol=]``: brackets by symbol, quantities in coin."""
        await self._signed(request)
        return reply(
            request,
            [{"symbol": spec.symbol, "brackets": self._brackets(spec)} for spec in self._specs(request)],
        )


def _side(position: VenuePosition) -> str:
    return {None: "BOTH", "long": "LONG", "short": "SHORT"}[position.hedge_side]
