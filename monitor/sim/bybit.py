"""The Bybit v5 personality (unified trading account, linear USDT perpetuals).

Routes: ``GET /v5/market/time``, ``/v5/market/instruments-info`` (``category=linear``),
``/v5/market/risk-limit``, and, signed, ``/v5/account/wallet-balance`` (``accountType=UNIFIED``),
``/v5/position/list`` (``category=linear``), ``/v5/asset/coin/query-info`` (ccxt's ``load_markets``
asks for it when it holds keys) and ``/v5/user/query-api`` (the key's permissions). ccxt needs
``options={"fetchMarkets": {"types": ["linear"]}}``.

Auth as Bybit checks it: ``X-BAPI-API-KEY``, ``X-BAPI-TIMESTAMP`` (within ``X-BAPI-RECV-WINDOW`` ms
behind the server, at most 1 s ahead), ``X-BAPI-SIGN`` = hex HMAC-SHA256 of timestamp + key + recv
window + query string. Errors are Bybit envelopes: ``retCode`` 10003 (invalid key), 10004 (bad sign),
10002 (timestamp), 10001 (parameters).

Figures: MM = |notional| x rate - ``mmDeduction`` in the risk-limit tier whose ``riskLimitValue`` holds
the notional (the risk limits below are made up, shaped like Bybit's, deductions continuous). The
account totals cover the cross positions (isolated ones carry their own ``positionBalance``);
``accountMMRate`` is totalMaintenanceMargin / totalMarginBalance rounded to 4 decimals, as Bybit sends it.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import TYPE_CHECKING, Any

from aiohttp import web

from monitor.sim.faults import FaultKind
from monitor.sim.markets import markets
from monitor.sim.venues import (
    Evaluation,
    Tier,
    VenueAccount,
    VenueError,
    VenueFigures,
    VenuePosition,
    build_tiers,
    compute_venue_figures,
    decimal,
    guarded,
    reply,
    tier_for,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from monitor.sim.faults import Fault
    from monitor.sim.server import SimServer

BYBIT_DEMO_API_KEY = "margin-monitor-sim-bybit-key"
"""The Bybit demo account's API key: it opens nothing but the local simulator."""
BYBIT_DEMO_SECRET = "margin-monitor-sim-bybit-secret"  # noqa: S105 - a published demo credential
"""The Bybit demo account's HMAC secret, published for the same reason."""
DEFAULT_RECV_WINDOW_MS = 5000

# Made-up risk limits shaped like Bybit's: (riskLimitValue, maintenance rate, max leverage).
RISK_LIMITS: dict[str, tuple[Tier, ...]] = {
    "BTCUSDT": build_tiers(
        (
            (2_000_000.0, 0.005, 100.0),
            (4_000_000.0, 0.01, 50.0),
            (8_000_000.0, 0.02, 25.0),
            (20_000_000.0, 0.05, 10.0),
            (50_000_000.0, 0.1, 5.0),
        ),
        deduct=True,
    ),
    "ETHUSDT": build_tiers(
        (
            (1_000_000.0, 0.005, 100.0),
            (2_000_000.0, 0.01, 50.0),
            (5_000_000.0, 0.02, 25.0),
            (10_000_000.0, 0.05, 10.0),
            (30_000_000.0, 0.1, 5.0),
        ),
        deduct=True,
    ),
    "SOLUSDT": build_tiers(
        (
            (200_000.0, 0.01, 50.0),
            (400_000.0, 0.015, 33.33),
            (1_000_000.0, 0.025, 20.0),
            (3_000_000.0, 0.05, 10.0),
        ),
        deduct=True,
    ),
}


class BybitModel:
    """Linear contracts sized in coin; tiers by notional with Bybit's ``mmDeduction``."""

    def evaluate(self, position: VenuePosition, price: float) -> Evaluation:
        """The position's figures at ``price``."""
        notional = position.size * price
        tier = tier_for(RISK_LIMITS[position.symbol], notional)
        return Evaluation(
            notional=notional,
            tier=tier,
            maintenance_margin=abs(notional) * tier.mmr - tier.deduction,
            initial_margin=abs(notional) / position.leverage,
            unrealized_pnl=position.size * (price - position.entry_price),
        )


def bybit_demo_account() -> VenueAccount:
    """The Bybit demo account: 6,000 USDT, long 1.5 BTC @ 59,500 and short 25 ETH @ 3,020, cross."""
    return VenueAccount(
        api_key=BYBIT_DEMO_API_KEY,
        secret=BYBIT_DEMO_SECRET,
        name="bybit-demo",
        wallet=6_000.0,
        positions=[
            VenuePosition("BTCUSDT", 1.5, 59_500.0, leverage=25.0),
            VenuePosition("ETHUSDT", -25.0, 3_020.0, leverage=25.0),
        ],
    )


def _error(code: int, message: str, status: int = 200) -> VenueError:
    return VenueError(status, {"retCode": code, "retMsg": message, "result": {}, "retExtInfo": {}})


class BybitVenue:
    """The Bybit personality over a ``SimServer``'s marks: accounts, routes, figures."""

    prefixes: tuple[str, ...] = ("/v5/",)

    def __init__(self, sim: SimServer) -> None:
        self.sim = sim
        self.model = BybitModel()
        self.accounts: dict[str, VenueAccount] = {}
        self.add_account(bybit_demo_account())
        self.invalid_key_message: Callable[[str], str] = lambda _key: "API key is invalid."
        """retCode 10003's message for an unknown key, given the key sent. Some venues echo the key,
        often cut short (``lambda key: f"invalid api key {key[:12]}..."``): tests of the redactor."""

    def add_account(self, account: VenueAccount) -> None:
        """Hold ``account`` (replacing any with the same API key)."""
        self.accounts[account.api_key] = account

    def figures(self, api_key: str = BYBIT_DEMO_API_KEY) -> VenueFigures:
        """The simulator's own figures for an account at the current marks."""
        account = self.accounts[api_key]
        return compute_venue_figures(self.model, "USDT", account.wallet, account.positions, self.sim.marks)

    def add_routes(self, app: web.Application) -> None:
        """Register every Bybit path on ``app``."""
        app.router.add_get("/v5/market/time", guarded(self.time))
        app.router.add_get("/v5/market/instruments-info", guarded(self.instruments))
        app.router.add_get("/v5/market/risk-limit", guarded(self.risk_limit))
        app.router.add_get("/v5/account/wallet-balance", guarded(self.wallet_balance))
        app.router.add_get("/v5/position/list", guarded(self.position_list))
        app.router.add_get("/v5/asset/coin/query-info", guarded(self.coin_info))
        app.router.add_get("/v5/user/query-api", guarded(self.query_api))

    def fault_response(self, fault: Fault) -> web.Response | None:
        """Bybit's answers: 10006 for a rate limit, 403 for an IP ban, 10002 for the clock, 10003 for keys."""
        retry = {"Retry-After": str(fault.retry_after_s)}
        match fault.kind:
            case FaultKind.RATE_LIMIT:
                return _error(10006, "Too many visits!").response()
            case FaultKind.BAN:
                return web.Response(status=403, text="access too frequent", headers=retry)
            case FaultKind.TIMESTAMP:
                return _error(
                    10002, "invalid request, please check your server timestamp or recv_window param"
                ).response()
            case FaultKind.AUTH:
                return _error(10003, "API key is invalid.", status=401).response()
            case _:
                return None

    # --- plumbing -----------------------------------------------------------------------------------

    def _envelope(self, request: web.Request, result: Any) -> web.Response:  # noqa: ANN401 - JSON
        return reply(
            request,
            {
                "retCode": 0,
                "retMsg": "OK",
                "result": result,
                "retExtInfo": {},
                "time": self.sim.server_time_ms(),
            },
        )

    def _signed(self, request: web.Request) -> VenueAccount:
        """The account of a signed request, checked as Bybit checks it: key, timestamp, signature."""
        key = request.headers.get("X-BAPI-API-KEY", "")
        account = self.accounts.get(key)
        if account is None:
            raise _error(10003, self.invalid_key_message(key), status=401)
        try:
            timestamp = int(request.headers.get("X-BAPI-TIMESTAMP", ""))
            recv_window = int(request.headers.get("X-BAPI-RECV-WINDOW", DEFAULT_RECV_WINDOW_MS))
        except ValueError as exc:
            raise _error(10001, "invalid X-BAPI-TIMESTAMP or X-BAPI-RECV-WINDOW") from exc
        now = self.sim.server_time_ms()
        if not now - recv_window <= timestamp < now + 1000:
            raise _error(
                10002,
                "invalid request, please check your server timestamp or recv_window param. "
                f"req_timestamp[{timestamp}],server_timestamp[{now}],recv_window[{recv_window}]",
            )
        origin = f"{timestamp}{key}{recv_window}{request.query_string}"
        expected = hmac.new(account.secret.encode(), origin.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, request.headers.get("X-BAPI-SIGN", "").lower()):
            raise _error(10004, f"error sign! origin_string[{origin}]", status=401)
        return account

    @staticmethod
    def _linear(request: web.Request) -> None:
        category = request.query.get("category")
        if category is None:
            raise _error(10001, "params error: category is required")
        if category != "linear":
            raise _error(10001, f"params error: category {category} is not served by the simulator")

    @staticmethod
    def _symbols(request: web.Request) -> list[str]:
        symbol = request.query.get("symbol")
        if symbol is None:
            return list(markets())
        if symbol not in markets():
            raise _error(10001, "params error: symbol invalid")
        return [symbol]

    # --- public -------------------------------------------------------------------------------------

    async def time(self, request: web.Request) -> web.Response:
        """``GET /v5/market/time``."""
        now = self.sim.server_time_ms()
        return self._envelope(request, {"timeSecond": str(now // 1000), "timeNano": str(now * 1_000_000)})

    async def instruments(self, request: web.Request) -> web.Response:
        """``GET /v5/market/instruments-info?category=linear`` (``status=PreLaunch``: none)."""
        self._linear(request)
        rows: list[dict[str, Any]] = []
        if request.query.get("status", "Trading") == "Trading":
            for symbol in self._symbols(request):
                spec = markets()[symbol]
                rows.append(
                    {
                        "symbol": symbol,
                        "contractType": "LinearPerpetual",
                        "status": "Trading",
                        "baseCoin": spec.base,
                        "quoteCoin": "USDT",
                        "launchTime": "1585526400000",
                        "deliveryTime": "0",
                        "deliveryFeeRate": "",
                        "priceScale": str(spec.price_precision),
                        "leverageFilter": {
                            "minLeverage": "1",
                            "maxLeverage": f"{RISK_LIMITS[symbol][0].max_leverage:.2f}",
                            "leverageStep": "0.01",
                        },
                        "priceFilter": {
                            "minPrice": spec.tick_size,
                            "maxPrice": "1999999.80",
                            "tickSize": spec.tick_size,
                        },
                        "lotSizeFilter": {
                            "maxOrderQty": "1190.000",
                            "minOrderQty": spec.step_size,
                            "qtyStep": spec.step_size,
                            "postOnlyMaxOrderQty": "1190.000",
                            "maxMktOrderQty": "500.000",
                            "minNotionalValue": "5",
                        },
                        "unifiedMarginTrade": True,
                        "fundingInterval": 480,
                        "settleCoin": "USDT",
                        "copyTrading": "both",
                        "upperFundingRate": "0.005",
                        "lowerFundingRate": "-0.005",
                        "isPreListing": False,
                        "preListingInfo": None,
                    }
                )
        return self._envelope(request, {"category": "linear", "list": rows, "nextPageCursor": ""})

    async def risk_limit(self, request: web.Request) -> web.Response:
        """``GET /v5/market/risk-limit?category=linear[&symbol=]``: tiers with ``mmDeduction``."""
        self._linear(request)
        rows = [
            {
                "id": tier.number,
                "symbol": symbol,
                "riskLimitValue": decimal(tier.cap),
                "maintenanceMargin": decimal(tier.mmr),
                "initialMargin": decimal(tier.imr, 4),
                "isLowestRisk": 1 if tier.number == 1 else 0,
                "maxLeverage": f"{tier.max_leverage:.2f}",
                "mmDeduction": "" if tier.number == 1 else decimal(tier.deduction),
            }
            for symbol in self._symbols(request)
            for tier in RISK_LIMITS[symbol]
        ]
        return self._envelope(request, {"category": "linear", "list": rows, "nextPageCursor": ""})

    # --- account ------------------------------------------------------------------------------------

    async def query_api(self, request: web.Request) -> web.Response:
        """``GET /v5/user/query-api``: the key's permissions, ``readOnly`` and IP allowlist."""
        account = self._signed(request)
        flags = account.permissions
        wallet = [
            name
            for name, granted in (
                ("AccountTransfer", flags.enable_internal_transfer),
                ("SubMemberTransfer", flags.enable_internal_transfer),
                ("Withdraw", flags.enable_withdrawals),
            )
            if granted
        ]
        permissions = {
            "ContractTrade": ["Order", "Position"] if flags.enable_futures else [],
            "Spot": ["SpotTrade"] if flags.enable_spot_and_margin_trading else [],
            "Wallet": wallet,
            "Options": [],
            "Derivatives": [],
            "CopyTrading": [],
            "BlockTrade": [],
            "Exchange": ["ExchangeHistory"],
            "NFT": [],
            "Affiliate": [],
        }
        writes = flags.can_trade or flags.enable_withdrawals or flags.enable_internal_transfer
        return self._envelope(
            request,
            {
                "id": "13770661",
                "note": account.name,
                "apiKey": account.api_key,
                "readOnly": 0 if writes else 1,
                "secret": "",
                "permissions": permissions,
                "ips": ["127.0.0.1"] if flags.ip_restrict else ["*"],
                "type": 1,
                "deadlineDay": -1 if flags.ip_restrict else 89,
                "expiredAt": "",
                "createdAt": "2024-10-16T02:24:40Z",
                "uta": 1,
                "userID": 24617703,
                "isMaster": True,
                "parentUid": "0",
            },
        )

    async def wallet_balance(self, request: web.Request) -> web.Response:
        """``GET /v5/account/wallet-balance?accountType=UNIFIED``: account totals and the USDT row."""
        account = self._signed(request)
        account_type = request.query.get("accountType")
        if account_type != "UNIFIED":
            raise _error(10001, "accountType only support UNIFIED.")
        figures = self.figures(account.api_key)
        isolated = sum(p.position.isolated_margin or 0.0 for p in figures.positions)
        total_upnl = sum(p.unrealized_pnl for p in figures.positions)
        wallet_total = figures.wallet + isolated
        equity = wallet_total + total_upnl
        mm_rate = (
            round(figures.maintenance_margin / figures.margin_balance, 4) if figures.margin_balance > 0 else 0
        )
        im_rate = (
            round(figures.initial_margin / figures.margin_balance, 4) if figures.margin_balance > 0 else 0
        )
        available = max(0.0, figures.margin_balance - figures.initial_margin)
        coin = {
            "coin": "USDT",
            "equity": decimal(equity),
            "usdValue": decimal(equity),
            "walletBalance": decimal(wallet_total),
            "unrealisedPnl": decimal(total_upnl),
            "cumRealisedPnl": "0",
            "totalPositionMM": decimal(figures.total_maintenance_margin),
            "totalPositionIM": decimal(figures.total_initial_margin),
            "totalOrderIM": "0",
            "locked": "0",
            "bonus": "0",
            "borrowAmount": "0.000000000000000000",
            "accruedInterest": "0",
            "availableToWithdraw": "",
            "availableToBorrow": "",
            "spotHedgingQty": "0",
            "collateralSwitch": True,
            "marginCollateral": True,
        }
        if request.query.get("coin") not in {None, "USDT"}:
            coins: list[dict[str, Any]] = []
        else:
            coins = [coin]
        row = {
            "accountType": "UNIFIED",
            "totalEquity": decimal(equity),
            "totalWalletBalance": decimal(wallet_total),
            "totalMarginBalance": decimal(figures.margin_balance),
            "totalAvailableBalance": decimal(available),
            "totalPerpUPL": decimal(total_upnl),
            "totalInitialMargin": decimal(figures.initial_margin),
            "totalMaintenanceMargin": decimal(figures.maintenance_margin),
            "accountIMRate": decimal(im_rate, 4),
            "accountMMRate": decimal(mm_rate, 4),
            "accountLTV": "0",
            "coin": coins,
        }
        return self._envelope(request, {"list": [row]})

    async def position_list(self, request: web.Request) -> web.Response:
        """``GET /v5/position/list?category=linear&(symbol=|settleCoin=USDT)``: open positions."""
        account = self._signed(request)
        self._linear(request)
        symbol, settle = request.query.get("symbol"), request.query.get("settleCoin")
        if symbol is None and settle is None:
            raise _error(10001, "params error: symbol or settleCoin is required")
        if symbol is not None:
            self._symbols(request)
        now = str(self.sim.server_time_ms())
        rows: list[dict[str, Any]] = []
        for p in self.figures(account.api_key).positions:
            position = p.position
            if (symbol is not None and position.symbol != symbol) or settle not in {None, "USDT"}:
                continue
            index = {None: 0, "long": 1, "short": 2}[position.hedge_side]
            balance = position.isolated_margin if position.isolated_margin is not None else p.initial_margin
            rows.append(
                {
                    "positionIdx": index,
                    "riskId": p.tier.number,
                    "riskLimitValue": decimal(p.tier.cap),
                    "symbol": position.symbol,
                    "side": "Buy" if position.size > 0 else "Sell",
                    "size": decimal(abs(position.size)),
                    "avgPrice": decimal(position.entry_price),
                    "positionValue": decimal(abs(p.notional)),
                    "tradeMode": 1 if position.isolated else 0,
                    "autoAddMargin": 0,
                    "positionStatus": "Normal",
                    "leverage": decimal(position.leverage),
                    "markPrice": decimal(p.mark_price),
                    "liqPrice": "" if p.liquidation_price is None else decimal(p.liquidation_price),
                    "bustPrice": "",
                    "positionIM": decimal(p.initial_margin),
                    "positionMM": decimal(p.maintenance_margin),
                    "positionBalance": decimal(balance),
                    "takeProfit": "0.00",
                    "stopLoss": "0.00",
                    "trailingStop": "0.00",
                    "sessionAvgPrice": "",
                    "unrealisedPnl": decimal(p.unrealized_pnl),
                    "curRealisedPnl": "0",
                    "cumRealisedPnl": "0",
                    "adlRankIndicator": 2,
                    "isReduceOnly": False,
                    "mmrSysUpdatedTime": "",
                    "leverageSysUpdatedTime": "",
                    "tpslMode": "Full",
                    "createdTime": "1700000000000",
                    "updatedTime": now,
                    "seq": 1,
                }
            )
        return self._envelope(request, {"category": "linear", "list": rows, "nextPageCursor": ""})

    async def coin_info(self, request: web.Request) -> web.Response:
        """``GET /v5/asset/coin/query-info``: ccxt's ``fetch_currencies`` (part of ``load_markets``)."""
        self._signed(request)
        names = {"USDT": "Tether", "BTC": "Bitcoin", "ETH": "Ether", "SOL": "Solana"}
        rows = [
            {
                "name": name,
                "coin": coin,
                "remainAmount": "1000000",
                "chains": [
                    {
                        "chainType": coin,
                        "confirmation": "12",
                        "withdrawFee": "0.0005",
                        "depositMin": "0",
                        "withdrawMin": "0.001",
                        "chain": coin,
                        "chainDeposit": "1",
                        "chainWithdraw": "1",
                        "minAccuracy": "8",
                        "withdrawPercentageFee": "0",
                    }
                ],
            }
            for coin, name in names.items()
        ]
        return self._envelope(request, {"rows": rows})
