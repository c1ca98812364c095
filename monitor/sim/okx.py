"""The OKX v5 personality (linear USDT-margined perpetual swaps).

Routes: ``GET /api/v5/public/time``, ``/api/v5/public/instruments`` (``instType=SWAP``),
``/api/v5/public/position-tiers`` (``instType=SWAP``, ``tdMode``, ``instFamily`` or ``uly``), and,
signed, ``/api/v5/account/balance``, ``/api/v5/account/positions``, ``/api/v5/account/config`` (the
key's ``perm`` and ``ip``) and ``/api/v5/asset/currencies`` (ccxt's ``load_markets`` asks for it when it
holds keys). ccxt needs
``options={"fetchMarkets": {"types": ["swap"]}}`` and the passphrase as ``password``.

Auth as OKX checks it: ``OK-ACCESS-KEY`` (50111 when unknown), ``OK-ACCESS-PASSPHRASE`` (50105),
``OK-ACCESS-TIMESTAMP`` (ISO 8601, within 30 s of the server: else 50102), ``OK-ACCESS-SIGN`` = base64
HMAC-SHA256 of timestamp + method + request path with query + body (50113). Errors are
``{"code", "msg", "data": []}`` with OKX's HTTP statuses.

Figures: position tiers are keyed by contracts (a tier holds sizes in (``minSz``, ``maxSz``]) and the
tier's rate applies to the whole notional (no deduction); ``mmr``/``imr`` in the payloads are amounts.
Account scope is the cross positions: ``adjEq`` = wallet + cross PnL, ``mmr`` = cross MM, and
``mgnRatio`` = adjEq / mmr (the simulator charges no liquidation fee, which OKX adds to the divisor).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

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
    from aiohttp import web

    from monitor.sim.faults import Fault
    from monitor.sim.server import SimServer

OKX_DEMO_API_KEY = "margin-monitor-sim-okx-key"
"""The OKX demo account's API key: it opens nothing but the local simulator."""
OKX_DEMO_SECRET = "margin-monitor-sim-okx-secret"  # noqa: S105 - a published demo credential
"""The OKX demo account's HMAC secret."""
OKX_DEMO_PASSPHRASE = "margin-monitor-sim-okx-passphrase"  # noqa: S105 - a published demo credential
"""The OKX demo account's passphrase (ccxt's ``password``)."""
TIMESTAMP_TOLERANCE_MS = 30_000


@dataclass(frozen=True, slots=True)
class SwapSpec:
    """An OKX swap: its id, the Binance market whose mark drives it, its contract value in coin."""

    inst_id: str
    symbol: str
    base: str
    contract_value: float
    lot_size: str
    tiers: tuple[Tier, ...]

    @property
    def family(self) -> str:
        """``BTC-USDT``: OKX's ``instFamily`` (and ``uly``)."""
        return f"{self.base}-USDT"


# Made-up tiers shaped like OKX's: (maxSz in contracts, maintenance rate, max leverage).
SWAPS: dict[str, SwapSpec] = {
    spec.inst_id: spec
    for spec in (
        SwapSpec(
            "BTC-USDT-SWAP",
            "BTCUSDT",
            "BTC",
            0.01,
            "0.01",
            build_tiers(
                (
                    (1_000.0, 0.004, 125.0),
                    (5_000.0, 0.006, 75.0),
                    (10_000.0, 0.01, 50.0),
                    (20_000.0, 0.015, 33.0),
                    (40_000.0, 0.02, 25.0),
                    (100_000.0, 0.05, 10.0),
                ),
                deduct=False,
            ),
        ),
        SwapSpec(
            "ETH-USDT-SWAP",
            "ETHUSDT",
            "ETH",
            0.1,
            "0.01",
            build_tiers(
                (
                    (5_000.0, 0.005, 100.0),
                    (20_000.0, 0.008, 50.0),
                    (50_000.0, 0.015, 33.0),
                    (100_000.0, 0.02, 25.0),
                    (200_000.0, 0.05, 10.0),
                ),
                deduct=False,
            ),
        ),
        SwapSpec(
            "SOL-USDT-SWAP",
            "SOLUSDT",
            "SOL",
            1.0,
            "1",
            build_tiers(
                ((10_000.0, 0.01, 50.0), (50_000.0, 0.02, 25.0), (200_000.0, 0.05, 10.0)),
                deduct=False,
            ),
        ),
    )
}
SWAP_BY_SYMBOL = {spec.symbol: spec for spec in SWAPS.values()}


class OkxModel:
    """Linear swaps sized in contracts of ``ctVal`` coin; tiers by contracts, rate on the whole notional."""

    def evaluate(self, position: VenuePosition, price: float) -> Evaluation:
        """The position's figures at ``price``."""
        spec = SWAP_BY_SYMBOL[position.symbol]
        coins = position.size * spec.contract_value
        notional = coins * price
        tier = tier_for(spec.tiers, position.size)
        return Evaluation(
            notional=notional,
            tier=tier,
            maintenance_margin=abs(notional) * tier.mmr,
            initial_margin=abs(notional) / position.leverage,
            unrealized_pnl=coins * (price - position.entry_price),
        )


def okx_demo_account() -> VenueAccount:
    """The OKX demo account: 6,000 USDT, long 1.5 BTC and short 25 ETH in contracts, cross.

    150 BTC-USDT-SWAP @ 59,500 and -250 ETH-USDT-SWAP @ 3,020.
    """
    return VenueAccount(
        api_key=OKX_DEMO_API_KEY,
        secret=OKX_DEMO_SECRET,
        passphrase=OKX_DEMO_PASSPHRASE,
        name="okx-demo",
        wallet=6_000.0,
        positions=[
            VenuePosition("BTCUSDT", 150.0, 59_500.0, leverage=25.0),
            VenuePosition("ETHUSDT", -250.0, 3_020.0, leverage=25.0),
        ],
    )


def _error(status: int, code: str, message: str) -> VenueError:
    return VenueError(status, {"code": code, "msg": message, "data": []})


def _position_id(*parts: str | None) -> str:
    digest = hashlib.sha256("/".join(p or "" for p in parts).encode()).digest()
    return str(int.from_bytes(digest[:7], "big"))


class OkxVenue:
    """The OKX personality over a ``SimServer``'s marks: accounts, routes, figures."""

    prefixes: tuple[str, ...] = ("/api/v5/",)

    def __init__(self, sim: SimServer) -> None:
        self.sim = sim
        self.model = OkxModel()
        self.accounts: dict[str, VenueAccount] = {}
        self.add_account(okx_demo_account())

    def add_account(self, account: VenueAccount) -> None:
        """Hold ``account`` (replacing any with the same API key)."""
        self.accounts[account.api_key] = account

    def figures(self, api_key: str = OKX_DEMO_API_KEY) -> VenueFigures:
        """The simulator's own figures for an account at the current marks."""
        account = self.accounts[api_key]
        return compute_venue_figures(self.model, "USDT", account.wallet, account.positions, self.sim.marks)

    def add_routes(self, app: web.Application) -> None:
        """Register every OKX path on ``app``."""
        app.router.add_get("/api/v5/public/time", guarded(self.time))
        app.router.add_get("/api/v5/public/instruments", guarded(self.instruments))
        app.router.add_get("/api/v5/public/position-tiers", guarded(self.position_tiers))
        app.router.add_get("/api/v5/account/balance", guarded(self.balance))
        app.router.add_get("/api/v5/account/positions", guarded(self.positions))
        app.router.add_get("/api/v5/asset/currencies", guarded(self.currencies))
        app.router.add_get("/api/v5/account/config", guarded(self.account_config))

    def fault_response(self, fault: Fault) -> web.Response | None:
        """OKX's answers: 429 code 50011 for rate limits and bans, 401 50102 for the clock, 50111 for keys."""
        match fault.kind:
            case FaultKind.RATE_LIMIT | FaultKind.BAN:
                response = _error(429, "50011", "Too Many Requests").response()
                response.headers["Retry-After"] = str(fault.retry_after_s)
                return response
            case FaultKind.TIMESTAMP:
                return _error(401, "50102", "Timestamp request expired").response()
            case FaultKind.AUTH:
                return _error(401, "50111", "Invalid OK-ACCESS-KEY.").response()
            case _:
                return None

    # --- plumbing -----------------------------------------------------------------------------------

    @staticmethod
    def _data(request: web.Request, rows: list[dict[str, Any]]) -> web.Response:
        return reply(request, {"code": "0", "msg": "", "data": rows})

    async def _signed(self, request: web.Request) -> VenueAccount:
        """The account of a signed request, checked as OKX checks it."""
        headers = request.headers
        key = headers.get("OK-ACCESS-KEY")
        if not key:
            raise _error(401, "50103", 'Request header "OK-ACCESS-KEY" cannot be empty.')
        account = self.accounts.get(key)
        if account is None:
            raise _error(401, "50111", "Invalid OK-ACCESS-KEY.")
        stamp = headers.get("OK-ACCESS-TIMESTAMP", "")
        try:
            sent = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%f%z")
        except ValueError as exc:
            raise _error(401, "50112", "Invalid OK-ACCESS-TIMESTAMP.") from exc
        if abs(sent.timestamp() * 1000 - self.sim.server_time_ms()) > TIMESTAMP_TOLERANCE_MS:
            raise _error(401, "50102", "Timestamp request expired.")
        if headers.get("OK-ACCESS-PASSPHRASE") != account.passphrase:
            raise _error(401, "50105", "Your APIKey and passphrase do not match.")
        body = await request.text() if request.can_read_body else ""
        origin = f"{stamp}{request.method}{request.raw_path}{body}"
        digest = hmac.new(account.secret.encode(), origin.encode(), hashlib.sha256).digest()
        if not hmac.compare_digest(base64.b64encode(digest).decode(), headers.get("OK-ACCESS-SIGN", "")):
            raise _error(401, "50113", "Invalid Sign.")
        return account

    @staticmethod
    def _swap_only(request: web.Request) -> None:
        inst_type = request.query.get("instType")
        if inst_type is None:
            raise _error(400, "50014", "Parameter instType can not be empty.")
        if inst_type not in {"SWAP", "ANY"}:
            raise _error(
                400, "51000", f"Parameter instType error: {inst_type} is not served by the simulator"
            )

    # --- public -------------------------------------------------------------------------------------

    async def time(self, request: web.Request) -> web.Response:
        """``GET /api/v5/public/time``."""
        return self._data(request, [{"ts": str(self.sim.server_time_ms())}])

    async def instruments(self, request: web.Request) -> web.Response:
        """``GET /api/v5/public/instruments?instType=SWAP``."""
        self._swap_only(request)
        wanted = request.query.get("instId")
        rows = []
        for spec in SWAPS.values():
            if wanted is not None and wanted != spec.inst_id:
                continue
            market = markets()[spec.symbol]
            rows.append(
                {
                    "alias": "",
                    "auctionEndTime": "",
                    "baseCcy": "",
                    "category": "1",
                    "ctMult": "1",
                    "ctType": "linear",
                    "ctVal": decimal(spec.contract_value),
                    "ctValCcy": spec.base,
                    "expTime": "",
                    "instFamily": spec.family,
                    "instId": spec.inst_id,
                    "instType": "SWAP",
                    "lever": decimal(spec.tiers[0].max_leverage),
                    "listTime": "1611916828000",
                    "lotSz": spec.lot_size,
                    "maxIcebergSz": "100000000",
                    "maxLmtAmt": "20000000",
                    "maxLmtSz": "100000000",
                    "maxMktAmt": "",
                    "maxMktSz": "12000",
                    "maxStopSz": "12000",
                    "maxTriggerSz": "100000000",
                    "maxTwapSz": "100000000",
                    "minSz": spec.lot_size,
                    "optType": "",
                    "quoteCcy": "",
                    "ruleType": "normal",
                    "settleCcy": "USDT",
                    "state": "live",
                    "stk": "",
                    "tickSz": market.tick_size,
                    "uly": spec.family,
                }
            )
        return self._data(request, rows)

    async def position_tiers(self, request: web.Request) -> web.Response:
        """``GET /api/v5/public/position-tiers?instType=SWAP&tdMode=cross&instFamily=BTC-USDT``."""
        self._swap_only(request)
        query = request.query
        mode = query.get("tdMode")
        if mode not in {"cross", "isolated"}:
            raise _error(400, "50014", "Parameter tdMode can not be empty.")
        families = {f for f in query.get("instFamily", query.get("uly", "")).split(",") if f}
        if not families:
            raise _error(400, "50014", "Parameter instFamily can not be empty.")
        known = {spec.family: spec for spec in SWAPS.values()}
        unknown = families - set(known)
        if unknown:
            raise _error(400, "51001", "Instrument ID does not exist.")
        rows = [
            {
                "baseMaxLoan": "",
                "imr": decimal(tier.imr),
                "instId": "",
                "instFamily": family,
                "maxLever": decimal(tier.max_leverage),
                "maxSz": decimal(tier.cap),
                "minSz": decimal(tier.floor),
                "mmr": decimal(tier.mmr),
                "optMgnFactor": "0",
                "quoteMaxLoan": "",
                "tier": str(tier.number),
                "uly": family,
            }
            for family in sorted(families)
            for tier in known[family].tiers
        ]
        return self._data(request, rows)

    # --- account ------------------------------------------------------------------------------------

    async def balance(self, request: web.Request) -> web.Response:
        """``GET /api/v5/account/balance``: account equity, ``adjEq``, ``mgnRatio``, ``mmr`` (an amount)."""
        account = await self._signed(request)
        figures = self.figures(account.api_key)
        now = str(self.sim.server_time_ms())
        ratio = "" if figures.margin_ratio is None else decimal(figures.margin_ratio)
        isolated_equity = figures.equity - figures.margin_balance
        isolated_upnl = sum(p.unrealized_pnl for p in figures.positions if p.position.isolated)
        available = max(0.0, figures.margin_balance - figures.initial_margin)
        notional = sum(abs(p.notional) for p in figures.positions)
        detail = {
            "ccy": "USDT",
            "eq": decimal(figures.equity),
            "eqUsd": decimal(figures.equity),
            "cashBal": decimal(figures.wallet + isolated_equity - isolated_upnl),
            "availBal": decimal(available),
            "availEq": decimal(available),
            "disEq": decimal(figures.equity),
            "frozenBal": decimal(figures.total_initial_margin),
            "ordFrozen": "0",
            "isoEq": decimal(isolated_equity),
            "isoUpl": decimal(isolated_upnl),
            "upl": decimal(figures.unrealized_pnl + isolated_upnl),
            "imr": "",
            "mmr": "",
            "mgnRatio": "",
            "notionalLever": "",
            "liab": "0",
            "crossLiab": "0",
            "isoLiab": "0",
            "interest": "0",
            "uTime": now,
        }
        row = {
            "adjEq": decimal(figures.margin_balance),
            "availEq": decimal(available),
            "borrowFroz": "0",
            "details": [detail],
            "imr": decimal(figures.initial_margin),
            "isoEq": decimal(isolated_equity),
            "mgnRatio": ratio,
            "mmr": decimal(figures.maintenance_margin),
            "notionalUsd": decimal(notional),
            "notionalUsdForSwap": decimal(notional),
            "ordFroz": "0",
            "totalEq": decimal(figures.equity),
            "uTime": now,
            "upl": decimal(figures.unrealized_pnl + isolated_upnl),
        }
        return self._data(request, [row])

    async def positions(self, request: web.Request) -> web.Response:
        """``GET /api/v5/account/positions[?instType=SWAP][&instId=]``: open positions."""
        account = await self._signed(request)
        inst_type, inst_id = request.query.get("instType"), request.query.get("instId")
        if inst_type not in {None, "SWAP"}:
            return self._data(request, [])
        now = str(self.sim.server_time_ms())
        rows: list[dict[str, Any]] = []
        for p in self.figures(account.api_key).positions:
            position = p.position
            spec = SWAP_BY_SYMBOL[position.symbol]
            if inst_id is not None and inst_id != spec.inst_id:
                continue
            isolated = position.isolated_margin
            rows.append(
                {
                    "adl": "1",
                    "availPos": decimal(abs(position.size)),
                    "avgPx": decimal(position.entry_price),
                    "bePx": decimal(position.entry_price),
                    "cTime": "1700000000000",
                    "ccy": "USDT",
                    "idxPx": decimal(p.mark_price * 0.9999),
                    "imr": "" if isolated is not None else decimal(p.initial_margin),
                    "instId": spec.inst_id,
                    "instType": "SWAP",
                    "last": decimal(p.mark_price),
                    "lever": decimal(position.leverage),
                    "liqPx": "" if p.liquidation_price is None else decimal(p.liquidation_price),
                    "margin": "" if isolated is None else decimal(isolated),
                    "markPx": decimal(p.mark_price),
                    "mgnMode": "cross" if isolated is None else "isolated",
                    "mgnRatio": "",
                    "mmr": decimal(p.maintenance_margin),
                    "notionalUsd": decimal(abs(p.notional)),
                    "pos": decimal(position.size if position.hedge_side is None else abs(position.size)),
                    "posCcy": "",
                    "posId": _position_id(account.api_key, spec.inst_id, position.hedge_side),
                    "posSide": position.hedge_side or "net",
                    "realizedPnl": "0",
                    "uTime": now,
                    "upl": decimal(p.unrealized_pnl),
                    "uplRatio": decimal(p.unrealized_pnl / p.initial_margin if p.initial_margin else 0.0),
                }
            )
        return self._data(request, rows)

    async def account_config(self, request: web.Request) -> web.Response:
        """``GET /api/v5/account/config``: the account's settings and the key's ``perm`` and ``ip``."""
        account = await self._signed(request)
        flags = account.permissions
        perm = ["read_only"]
        if flags.can_trade or flags.enable_internal_transfer:
            perm.append("trade")
        if flags.enable_withdrawals:
            perm.append("withdraw")
        return self._data(
            request,
            [
                {
                    "uid": "44705892343619584",
                    "mainUid": "44705892343619584",
                    "acctLv": "2",
                    "posMode": "net_mode",
                    "autoLoan": False,
                    "greeksType": "PA",
                    "level": "Lv1",
                    "levelTmp": "",
                    "ctIsoMode": "automatic",
                    "mgnIsoMode": "automatic",
                    "label": account.name,
                    "roleType": "0",
                    "perm": ",".join(perm),
                    "ip": "127.0.0.1" if flags.ip_restrict else "",
                }
            ],
        )

    async def currencies(self, request: web.Request) -> web.Response:
        """``GET /api/v5/asset/currencies``: ccxt's ``fetch_currencies`` (part of ``load_markets``)."""
        await self._signed(request)
        names = {"USDT": "Tether", "BTC": "Bitcoin", "ETH": "Ethereum", "SOL": "Solana"}
        rows = [
            {
                "ccy": ccy,
                "chain": f"{ccy}-{ccy}",
                "name": name,
                "canDep": True,
                "canWd": True,
                "canInternal": True,
                "minDep": "0.00000001",
                "minWd": "0.001",
                "maxWd": "1000000",
                "minFee": "0.0001",
                "maxFee": "0.0002",
                "mainNet": True,
                "wdTickSz": "8",
                "logoLink": "",
            }
            for ccy, name in names.items()
        ]
        return self._data(request, rows)
