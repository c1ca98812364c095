"""The Binance USDⓈ-M personality: REST routes, payload shapes, request signing checks.

Numbers are strings where Binance sends strings (balances, prices, amounts) and JSON numbers where it
sends numbers (leverage brackets, times). Error bodies are ``{"code": ..., "msg": ...}`` with Binance's
HTTP statuses so ccxt raises the same exception classes it raises against the real API.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from aiohttp import web

from monitor.sim.markets import catalog, scaled_brackets

if TYPE_CHECKING:
    from monitor.sim.accounts import AccountFigures, ApiPermissions, SimAccount
    from monitor.sim.server import SimServer

DEFAULT_RECV_WINDOW_MS = 5000
DROP_FIELD = web.RequestKey("sim_drop_field", str)
"""Set by a ``missing_field`` fault on the request it hits: the payload key to leave out."""
FUNDING_INTERVAL_MS = 8 * 3600 * 1000


class BinanceError(Exception):
    """An error answer: HTTP ``status`` and Binance's ``{"code", "msg"}`` body."""

    def __init__(self, status: int, code: int, msg: str) -> None:
        super().__init__(msg)
        self.status = status
        self.code = code
        self.msg = msg

    def response(self) -> web.Response:
        """The error as Binance sends it."""
        return web.json_response({"code": self.code, "msg": self.msg}, status=self.status)


INVALID_KEY = (401, -2015, "Invalid API-key, IP, or permissions for action.")
BAD_KEY_FORMAT = (401, -2014, "API-key format invalid.")
BAD_SIGNATURE = (400, -1022, "Signature for this request is not valid.")
RECV_WINDOW = (400, -1021, "Timestamp for this request is outside of the recvWindow.")
AHEAD = (400, -1021, "Timestamp for this request was 1000ms ahead of the server's time.")
NO_LISTEN_KEY = (400, -1125, "This listenKey does not exist.")
INVALID_SYMBOL = (400, -1121, "Invalid symbol.")


def _error(spec: tuple[int, int, str]) -> BinanceError:
    return BinanceError(*spec)


def _mandatory(name: str) -> BinanceError:
    return BinanceError(
        400, -1102, f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed."
    )


def money(value: float) -> str:
    """Binance's 8-decimal string for balances and PnL."""
    return f"{value:.8f}"


def quantity(symbol: str, amount: float) -> str:
    """A position amount with the market's quantity precision (``"1.500"``)."""
    return f"{amount:.{catalog()[symbol].quantity_precision}f}"


def _without_signature(raw: str) -> tuple[str, str | None]:
    """``raw`` (a query string or form body) without its ``signature`` parameter, and that signature."""
    kept: list[str] = []
    signature: str | None = None
    for part in raw.split("&") if raw else []:
        if part.startswith("signature="):
            signature = part.removeprefix("signature=")
        else:
            kept.append(part)
    return "&".join(kept), signature


class BinanceApi:
    """Route handlers over a ``SimServer``'s state."""

    def __init__(self, sim: SimServer) -> None:
        self.sim = sim

    def add_routes(self, app: web.Application) -> None:
        """Register every Binance path on ``app``."""
        app.router.add_get("/fapi/v1/ping", self.ping)
        app.router.add_get("/fapi/v1/time", self.time)
        app.router.add_get("/fapi/v1/exchangeInfo", self.exchange_info)
        app.router.add_get("/fapi/v1/premiumIndex", self.premium_index)
        app.router.add_get("/fapi/v3/account", self.account_v3)
        app.router.add_get("/fapi/v2/account", self.account_v3)
        app.router.add_get("/fapi/v3/positionRisk", self.position_risk_v3)
        app.router.add_get("/fapi/v2/positionRisk", self.position_risk_v2)
        app.router.add_get("/fapi/v1/leverageBracket", self.leverage_bracket)
        app.router.add_get("/fapi/v1/positionSide/dual", self.position_side_dual)
        app.router.add_get("/fapi/v1/multiAssetsMargin", self.multi_assets_margin)
        app.router.add_post("/fapi/v1/listenKey", self.listen_key_create)
        app.router.add_put("/fapi/v1/listenKey", self.listen_key_keepalive)
        app.router.add_delete("/fapi/v1/listenKey", self.listen_key_delete)
        app.router.add_get("/sapi/v1/account/apiRestrictions", self.api_restrictions)
        app.router.add_get("/sapi/v1/capital/config/getall", self.capital_config)
        app.router.add_get("/sapi/v1/margin/allPairs", self.margin_pairs)

    # --- auth ---------------------------------------------------------------------------------------

    def _keyed(self, request: web.Request) -> SimAccount:
        key = request.headers.get("X-MBX-APIKEY")
        if not key:
            raise _error(BAD_KEY_FORMAT)
        account = self.sim.accounts.get(key)
        if account is None:
            raise _error(INVALID_KEY)
        return account

    async def _signed(self, request: web.Request) -> SimAccount:
        """The account of a signed request, checked as Binance checks it: key, timestamp, signature."""
        account = self._keyed(request)
        query, query_signature = _without_signature(request.query_string)
        body_raw = await request.text() if request.can_read_body else ""
        body, body_signature = _without_signature(body_raw)
        params = dict(parse_qsl(query)) | dict(parse_qsl(body))
        if "timestamp" not in params:
            raise _mandatory("timestamp")
        try:
            timestamp = int(params["timestamp"])
            recv_window = int(params.get("recvWindow", DEFAULT_RECV_WINDOW_MS))
        except ValueError as exc:
            raise _mandatory("timestamp") from exc
        now = self.sim.server_time_ms()
        if timestamp >= now + 1000:
            raise _error(AHEAD)
        if now - timestamp > recv_window:
            raise _error(RECV_WINDOW)
        signature = query_signature or body_signature
        if signature is None:
            raise _mandatory("signature")
        # Binance signs the query string concatenated with the body ("totalParams").
        expected = hmac.new(account.secret.encode(), (query + body).encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, signature.lower()):
            raise _error(BAD_SIGNATURE)
        return account

    def reply(self, request: web.Request, data: Any) -> web.Response:  # noqa: ANN401 - any JSON value
        """``data`` as JSON, minus the field a ``missing_field`` fault drops."""
        drop = request.get(DROP_FIELD)
        if drop is not None:
            if isinstance(data, dict):
                data = {k: v for k, v in data.items() if k != drop}
            elif isinstance(data, list):
                data = [
                    {k: v for k, v in item.items() if k != drop} if isinstance(item, dict) else item
                    for item in data
                ]
        return web.json_response(data)

    # --- public -------------------------------------------------------------------------------------

    async def ping(self, request: web.Request) -> web.Response:
        """``GET /fapi/v1/ping``."""
        return self.reply(request, {})

    async def time(self, request: web.Request) -> web.Response:
        """``GET /fapi/v1/time``."""
        return self.reply(request, {"serverTime": self.sim.server_time_ms()})

    async def exchange_info(self, request: web.Request) -> web.Response:
        """``GET /fapi/v1/exchangeInfo``: enough of it for ccxt's ``load_markets``."""
        symbols = [
            {
                "symbol": spec.symbol,
                "pair": spec.symbol,
                "contractType": "PERPETUAL",
                "deliveryDate": 4133404800000,
                "onboardDate": 1569398400000,
                "status": "TRADING",
                "maintMarginPercent": "2.5000",
                "requiredMarginPercent": "5.0000",
                "baseAsset": spec.base,
                "quoteAsset": "USDT",
                "marginAsset": "USDT",
                "pricePrecision": spec.price_precision,
                "quantityPrecision": spec.quantity_precision,
                "baseAssetPrecision": 8,
                "quotePrecision": 8,
                "underlyingType": "COIN",
                "underlyingSubType": [],
                "settlePlan": 0,
                "triggerProtect": "0.0500",
                "liquidationFee": "0.012500",
                "marketTakeBound": "0.05",
                "maxMoveOrderLimit": 10000,
                "filters": [
                    {
                        "filterType": "PRICE_FILTER",
                        "minPrice": spec.tick_size,
                        "maxPrice": "4529764",
                        "tickSize": spec.tick_size,
                    },
                    {
                        "filterType": "LOT_SIZE",
                        "minQty": spec.step_size,
                        "maxQty": "1000",
                        "stepSize": spec.step_size,
                    },
                    {
                        "filterType": "MARKET_LOT_SIZE",
                        "minQty": spec.step_size,
                        "maxQty": "120",
                        "stepSize": spec.step_size,
                    },
                    {"filterType": "MAX_NUM_ORDERS", "limit": 200},
                    {"filterType": "MAX_NUM_ALGO_ORDERS", "limit": 10},
                    {"filterType": "MIN_NOTIONAL", "notional": "5"},
                    {
                        "filterType": "PERCENT_PRICE",
                        "multiplierUp": "1.0500",
                        "multiplierDown": "0.9500",
                        "multiplierDecimal": "4",
                    },
                ],
                "orderTypes": [
                    "LIMIT",
                    "MARKET",
                    "STOP",
                    "STOP_MARKET",
                    "TAKE_PROFIT",
                    "TAKE_PROFIT_MARKET",
                    "TRAILING_STOP_MARKET",
                ],
                "timeInForce": ["GTC", "IOC", "FOK", "GTX", "GTD"],
                "permissionSets": ["GRID", "COPY"],
            }
            for spec in (catalog()[symbol] for symbol in self.sim.marks)
        ]
        return self.reply(
            request,
            {
                "timezone": "UTC",
                "serverTime": self.sim.server_time_ms(),
                "futuresType": "U_MARGINED",
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
                "assets": [{"asset": "USDT", "marginAvailable": True, "autoAssetExchange": "-10000"}],
                "symbols": symbols,
            },
        )

    def premium_row(self, symbol: str) -> dict[str, Any]:
        """One ``premiumIndex`` row (the index sits a hair under the mark, funding at 0.01%)."""
        mark = self.sim.marks[symbol]
        now = self.sim.server_time_ms()
        return {
            "symbol": symbol,
            "markPrice": f"{mark:.8f}",
            "indexPrice": f"{mark * 0.9999:.8f}",
            "estimatedSettlePrice": f"{mark * 0.9999:.8f}",
            "lastFundingRate": "0.00010000",
            "interestRate": "0.00010000",
            "nextFundingTime": (now // FUNDING_INTERVAL_MS + 1) * FUNDING_INTERVAL_MS,
            "time": now,
        }

    async def premium_index(self, request: web.Request) -> web.Response:
        """``GET /fapi/v1/premiumIndex``: one object with ``symbol``, else a list of every symbol."""
        symbol = request.query.get("symbol")
        if symbol is None:
            return self.reply(request, [self.premium_row(s) for s in sorted(self.sim.marks)])
        if symbol not in self.sim.marks:
            raise _error(INVALID_SYMBOL)
        return self.reply(request, self.premium_row(symbol))

    # --- account ------------------------------------------------------------------------------------

    def _symbol_filter(self, request: web.Request) -> str | None:
        symbol = request.query.get("symbol")
        if symbol is not None and symbol not in self.sim.marks:
            raise _error(INVALID_SYMBOL)
        return symbol

    @staticmethod
    def _initial_margin(figures: AccountFigures) -> float:
        return sum(abs(p.notional) / p.position.leverage for p in figures.positions)

    async def account_v3(self, request: web.Request) -> web.Response:
        """``GET /fapi/v3/account`` (and v2, the same totals): account totals, assets, open positions."""
        account = await self._signed(request)
        figures = self.sim.figures(account.api_key)
        now = self.sim.server_time_ms()
        initial = self._initial_margin(figures)
        cross_initial = sum(
            abs(p.notional) / p.position.leverage for p in figures.positions if not p.position.isolated
        )
        available = max(0.0, figures.margin_balance - cross_initial)
        positions = [
            {
                "symbol": p.position.symbol,
                "positionSide": p.position.side,
                "positionAmt": quantity(p.position.symbol, p.position.amount),
                "unrealizedProfit": money(p.unrealized_pnl),
                "isolatedMargin": money(
                    (p.position.isolated_wallet + p.unrealized_pnl)
                    if p.position.isolated_wallet is not None
                    else 0.0
                ),
                "notional": money(p.notional),
                "isolatedWallet": money(p.position.isolated_wallet or 0.0),
                "initialMargin": money(abs(p.notional) / p.position.leverage),
                "maintMargin": money(p.maintenance_margin),
                "updateTime": now,
            }
            for p in figures.positions
        ]
        asset = {
            "asset": "USDT",
            "walletBalance": money(figures.total_wallet_balance),
            "unrealizedProfit": money(figures.total_unrealized_pnl),
            "marginBalance": money(figures.total_margin_balance),
            "maintMargin": money(figures.total_maintenance_margin),
            "initialMargin": money(initial),
            "positionInitialMargin": money(initial),
            "openOrderInitialMargin": money(0.0),
            "crossWalletBalance": money(figures.cross_wallet),
            "crossUnPnl": money(figures.cross_unrealized_pnl),
            "availableBalance": money(available),
            "maxWithdrawAmount": money(available),
            "updateTime": now,
        }
        if account.multi_assets:
            asset["marginAvailable"] = True
        return self.reply(
            request,
            {
                "totalInitialMargin": money(initial),
                "totalMaintMargin": money(figures.total_maintenance_margin),
                "totalWalletBalance": money(figures.total_wallet_balance),
                "totalUnrealizedProfit": money(figures.total_unrealized_pnl),
                "totalMarginBalance": money(figures.total_margin_balance),
                "totalPositionInitialMargin": money(initial),
                "totalOpenOrderInitialMargin": money(0.0),
                "totalCrossWalletBalance": money(figures.cross_wallet),
                "totalCrossUnPnl": money(figures.cross_unrealized_pnl),
                "availableBalance": money(available),
                "maxWithdrawAmount": money(available),
                "assets": [asset],
                "positions": positions,
            },
        )

    def _position_rows(self, account: SimAccount, symbol: str | None) -> list[dict[str, Any]]:
        figures = self.sim.figures(account.api_key)
        now = self.sim.server_time_ms()
        rows: list[dict[str, Any]] = []
        for p in figures.positions:
            if symbol is not None and p.position.symbol != symbol:
                continue
            wallet = p.position.isolated_wallet
            initial = abs(p.notional) / p.position.leverage
            rows.append(
                {
                    "symbol": p.position.symbol,
                    "positionSide": p.position.side,
                    "positionAmt": quantity(p.position.symbol, p.position.amount),
                    "entryPrice": f"{p.position.entry_price:.8f}",
                    "breakEvenPrice": f"{p.position.entry_price:.8f}",
                    "markPrice": f"{p.mark_price:.8f}",
                    "unRealizedProfit": money(p.unrealized_pnl),
                    "liquidationPrice": f"{p.liquidation_price or 0.0:.8f}",
                    "isolatedMargin": money(wallet + p.unrealized_pnl if wallet is not None else 0.0),
                    "notional": money(p.notional),
                    "marginAsset": "USDT",
                    "isolatedWallet": money(wallet or 0.0),
                    "initialMargin": money(initial),
                    "maintMargin": money(p.maintenance_margin),
                    "positionInitialMargin": money(initial),
                    "openOrderInitialMargin": "0",
                    "adl": 2,
                    "bidNotional": "0",
                    "askNotional": "0",
                    "updateTime": now,
                    # v2-only fields, removed by the v3 handler.
                    "leverage": str(p.position.leverage),
                    "maxNotionalValue": f"{p.bracket.cap:.0f}",
                    "marginType": "isolated" if p.position.isolated else "cross",
                    "isAutoAddMargin": "false",
                }
            )
        return rows

    _V2_ONLY = ("leverage", "maxNotionalValue", "marginType", "isAutoAddMargin")

    async def position_risk_v3(self, request: web.Request) -> web.Response:
        """``GET /fapi/v3/positionRisk``: open positions only; no ``marginType``/``leverage`` (as Binance)."""
        account = await self._signed(request)
        rows = self._position_rows(account, self._symbol_filter(request))
        return self.reply(request, [{k: v for k, v in row.items() if k not in self._V2_ONLY} for row in rows])

    async def position_risk_v2(self, request: web.Request) -> web.Response:
        """``GET /fapi/v2/positionRisk``: with ``marginType`` (cross/isolated) and ``leverage``."""
        account = await self._signed(request)
        return self.reply(request, self._position_rows(account, self._symbol_filter(request)))

    def bracket_entry(self, account: SimAccount, symbol: str) -> dict[str, Any]:
        """One symbol's ``leverageBracket`` entry for ``account`` (``notionalCoef`` when not 1)."""
        entry: dict[str, Any] = {"symbol": symbol}
        if account.notional_coef != 1.0:
            entry["notionalCoef"] = account.notional_coef
        entry["brackets"] = [
            {
                "bracket": b.number,
                "initialLeverage": b.initial_leverage,
                "notionalCap": b.cap,
                "notionalFloor": b.floor,
                "maintMarginRatio": b.mmr,
                "cum": b.cum,
            }
            for b in scaled_brackets(symbol, account.notional_coef)
        ]
        return entry

    async def leverage_bracket(self, request: web.Request) -> web.Response:
        """``GET /fapi/v1/leverageBracket``: per account; one object with ``symbol``, else a list."""
        account = await self._signed(request)
        symbol = self._symbol_filter(request)
        if symbol is not None:
            return self.reply(request, self.bracket_entry(account, symbol))
        return self.reply(request, [self.bracket_entry(account, s) for s in self.sim.marks])

    async def position_side_dual(self, request: web.Request) -> web.Response:
        """``GET /fapi/v1/positionSide/dual``: hedge mode flag."""
        account = await self._signed(request)
        return self.reply(request, {"dualSidePosition": account.dual_side_position})

    async def multi_assets_margin(self, request: web.Request) -> web.Response:
        """``GET /fapi/v1/multiAssetsMargin``: multi-assets mode flag."""
        account = await self._signed(request)
        return self.reply(request, {"multiAssetsMargin": account.multi_assets})

    async def api_restrictions(self, request: web.Request) -> web.Response:
        """``GET /sapi/v1/account/apiRestrictions``: the key's permission flags."""
        flags = await self._key_permissions(request)
        return self.reply(
            request,
            {
                "ipRestrict": flags.ip_restrict,
                "createTime": 1698645219000,
                "enableReading": flags.enable_reading,
                "enableWithdrawals": flags.enable_withdrawals,
                "enableInternalTransfer": flags.enable_internal_transfer,
                "enableMargin": flags.enable_margin,
                "enableFutures": flags.enable_futures,
                "permitsUniversalTransfer": flags.enable_internal_transfer,
                "enableVanillaOptions": False,
                "enableFixApiTrade": False,
                "enableFixReadOnly": False,
                "enableSpotAndMarginTrading": flags.enable_spot_and_margin_trading,
                "enablePortfolioMarginTrading": False,
            },
        )

    async def _key_permissions(self, request: web.Request) -> ApiPermissions:
        # One Binance key serves both futures APIs: a key known only to the COIN-M personality is
        # still a Binance key, and /sapi answers for it.
        key = request.headers.get("X-MBX-APIKEY", "")
        if key not in self.sim.accounts and key in self.sim.coinm.accounts:
            return (await self.sim.coinm.signed(request)).permissions
        return (await self._signed(request)).permissions

    async def capital_config(self, request: web.Request) -> web.Response:
        """``GET /sapi/v1/capital/config/getall``: ccxt's ``load_markets`` asks for it when keyed."""
        await self._signed(request)
        coins = [("USDT", "TetherUS"), ("BTC", "Bitcoin"), ("ETH", "Ethereum"), ("SOL", "Solana")]
        return self.reply(
            request,
            [
                {
                    "coin": coin,
                    "name": name,
                    "depositAllEnable": True,
                    "withdrawAllEnable": True,
                    "trading": True,
                    "isLegalMoney": False,
                    "free": "0",
                    "locked": "0",
                    "freeze": "0",
                    "withdrawing": "0",
                    "ipoing": "0",
                    "ipoable": "0",
                    "storage": "0",
                    "networkList": [
                        {
                            "network": coin if coin != "USDT" else "ETH",
                            "coin": coin,
                            "name": name,
                            "isDefault": True,
                            "depositEnable": True,
                            "withdrawEnable": True,
                            "withdrawFee": "0.0005",
                            "withdrawMin": "0.001",
                            "withdrawMax": "9999999",
                            "withdrawIntegerMultiple": "0.00000001",
                            "minConfirm": 12,
                            "unLockConfirm": 0,
                        }
                    ],
                }
                for coin, name in coins
            ],
        )

    async def margin_pairs(self, request: web.Request) -> web.Response:
        """``GET /sapi/v1/margin/allPairs``: asked by ccxt's ``load_markets``; no spot margin here."""
        await self._signed(request)
        return self.reply(request, [])

    # --- listen keys (API key header only, no signature) --------------------------------------------

    async def listen_key_create(self, request: web.Request) -> web.Response:
        """``POST /fapi/v1/listenKey``: the account's active key (extended), or a new one."""
        account = self._keyed(request)
        return self.reply(request, {"listenKey": self.sim.listen_keys.open(account.api_key)})

    async def listen_key_keepalive(self, request: web.Request) -> web.Response:
        """``PUT /fapi/v1/listenKey``: extend the account's key; -1125 when it has expired."""
        account = self._keyed(request)
        key = self.sim.listen_keys.keepalive(account.api_key)
        if key is None:
            raise _error(NO_LISTEN_KEY)
        return self.reply(request, {"listenKey": key})

    async def listen_key_delete(self, request: web.Request) -> web.Response:
        """``DELETE /fapi/v1/listenKey``: close the account's key."""
        account = self._keyed(request)
        self.sim.listen_keys.close(account.api_key)
        return self.reply(request, {})
