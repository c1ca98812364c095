"""The Hyperliquid personality: ``POST /info``, read by wallet address (no keys).

Request ``type``s served: ``meta`` (universe with ``maxLeverage`` and ``marginTableId``, and
``marginTables``), ``metaAndAssetCtxs`` (meta plus each asset's ``markPx``; ccxt's ``fetch_markets``),
``spotMeta`` (ccxt's ``fetch_currencies``: USDC only, no spot pairs), ``perpDexs``, ``allMids`` and
``clearinghouseState`` with ``user`` (any well-formed address: an unknown one has nothing; a malformed
one gets 422 as Hyperliquid answers). ccxt's ``hyperliquid`` needs
``options={"fetchMarkets": {"types": ["swap"]}}``.

Figures: MM = |notional at mark| / maxLeverage / 2 (one margin tier an asset); account value
= USDC wallet + isolated margins + every PnL; ``crossMaintenanceMarginUsed`` and
``crossMarginSummary.accountValue`` cover the cross positions, whose ratio is the account's R.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web

from monitor.sim.faults import FaultKind
from monitor.sim.venues import (
    Evaluation,
    Tier,
    VenueAccount,
    VenueError,
    VenueFigures,
    VenuePosition,
    compute_venue_figures,
    decimal,
    guarded,
    reply,
)

if TYPE_CHECKING:
    from monitor.sim.faults import Fault
    from monitor.sim.server import SimServer

HYPERLIQUID_DEMO_ADDRESS = "0xfeedface000000000000000000000000000000d0"
"""The Hyperliquid demo account's wallet address (Hyperliquid accounts are read by address alone)."""
_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
_UNPARSABLE = "Failed to deserialize the JSON body into the target type"


@dataclass(frozen=True, slots=True)
class PerpSpec:
    """A Hyperliquid perpetual: coin name, the Binance market whose mark drives it, limits."""

    coin: str
    symbol: str
    sz_decimals: int
    max_leverage: int

    @property
    def tier(self) -> Tier:
        """The asset's one margin tier: MM rate is half the initial rate at max leverage."""
        leverage = float(self.max_leverage)
        return Tier(1, 0.0, float("inf"), 1.0 / leverage / 2.0, 1.0 / leverage, leverage)


PERPS: tuple[PerpSpec, ...] = (
    PerpSpec("BTC", "BTCUSDT", 5, 40),
    PerpSpec("ETH", "ETHUSDT", 4, 25),
    PerpSpec("SOL", "SOLUSDT", 2, 20),
)
PERP_BY_SYMBOL = {spec.symbol: spec for spec in PERPS}


class HyperliquidModel:
    """Linear perps sized in coin; MM = notional / max leverage / 2."""

    def evaluate(self, position: VenuePosition, price: float) -> Evaluation:
        """The position's figures at ``price``."""
        tier = PERP_BY_SYMBOL[position.symbol].tier
        notional = position.size * price
        return Evaluation(
            notional=notional,
            tier=tier,
            maintenance_margin=abs(notional) * tier.mmr,
            initial_margin=abs(notional) / position.leverage,
            unrealized_pnl=position.size * (price - position.entry_price),
        )


def hyperliquid_demo_account() -> VenueAccount:
    """The Hyperliquid demo account: 6,000 USDC, long 1.5 BTC @ 59,500 and short 25 ETH @ 3,020, cross."""
    return VenueAccount(
        api_key=HYPERLIQUID_DEMO_ADDRESS,
        secret="",
        name="hyperliquid-demo",
        wallet=6_000.0,
        positions=[
            VenuePosition("BTCUSDT", 1.5, 59_500.0, leverage=25.0),
            VenuePosition("ETHUSDT", -25.0, 3_020.0, leverage=25.0),
        ],
    )


def _px(value: float) -> str:
    return decimal(value, 6)


class HyperliquidVenue:
    """The Hyperliquid personality over a ``SimServer``'s marks: accounts by address, one route."""

    prefixes: tuple[str, ...] = ("/info",)

    def __init__(self, sim: SimServer) -> None:
        self.sim = sim
        self.model = HyperliquidModel()
        self.accounts: dict[str, VenueAccount] = {}
        self.add_account(hyperliquid_demo_account())

    def add_account(self, account: VenueAccount) -> None:
        """Hold ``account`` under its wallet address (``api_key``), case-insensitively."""
        self.accounts[account.api_key.lower()] = account

    def figures(self, address: str = HYPERLIQUID_DEMO_ADDRESS) -> VenueFigures:
        """The simulator's own figures for an account at the current marks."""
        account = self.accounts[address.lower()]
        return compute_venue_figures(self.model, "USDC", account.wallet, account.positions, self.sim.marks)

    def add_routes(self, app: web.Application) -> None:
        """Register ``POST /info``."""
        app.router.add_post("/info", guarded(self.info))

    def fault_response(self, fault: Fault) -> web.Response | None:
        """429 with an empty body for rate limits and bans, as Hyperliquid answers; nothing else."""
        if fault.kind in {FaultKind.RATE_LIMIT, FaultKind.BAN}:
            return web.Response(status=429, text="", headers={"Retry-After": str(fault.retry_after_s)})
        return None

    # --- payloads -----------------------------------------------------------------------------------

    def meta(self) -> dict[str, Any]:
        """``{"type": "meta"}``: the universe and its margin tables."""
        return {
            "universe": [
                {
                    "name": spec.coin,
                    "szDecimals": spec.sz_decimals,
                    "maxLeverage": spec.max_leverage,
                    "marginTableId": spec.max_leverage,
                }
                for spec in PERPS
            ],
            "marginTables": [
                [
                    leverage,
                    {
                        "description": "",
                        "marginTiers": [{"lowerBound": "0.0", "maxLeverage": leverage}],
                    },
                ]
                for leverage in sorted({spec.max_leverage for spec in PERPS})
            ],
            "collateralToken": 0,
        }

    def _asset_context(self, spec: PerpSpec) -> dict[str, Any]:
        mark = self.sim.marks[spec.symbol]
        return {
            "funding": "0.0000125",
            "openInterest": "10000.0",
            "prevDayPx": _px(mark),
            "dayNtlVlm": "1000000000.0",
            "premium": "0.0",
            "oraclePx": _px(mark * 0.9999),
            "markPx": _px(mark),
            "midPx": _px(mark),
            "impactPxs": [_px(mark * 0.9999), _px(mark * 1.0001)],
            "dayBaseVlm": "10000.0",
        }

    def clearinghouse_state(self, address: str) -> dict[str, Any]:
        """``{"type": "clearinghouseState", "user": address}``: margin summaries and positions."""
        now = self.sim.server_time_ms()
        figures = self.figures(address) if address.lower() in self.accounts else None
        positions = [] if figures is None else list(figures.positions)
        total_ntl = sum(abs(p.notional) for p in positions)
        cross_ntl = sum(abs(p.notional) for p in positions if not p.position.isolated)
        signed_ntl = sum(p.notional for p in positions)
        cross_signed = sum(p.notional for p in positions if not p.position.isolated)
        equity = 0.0 if figures is None else figures.equity
        cross_value = 0.0 if figures is None else figures.margin_balance
        cross_used = 0.0 if figures is None else figures.initial_margin
        rows = []
        used = 0.0
        for p in positions:
            spec = PERP_BY_SYMBOL[p.position.symbol]
            leverage: dict[str, Any] = {"type": "cross", "value": int(p.position.leverage)}
            if p.position.isolated_margin is not None:
                leverage = {
                    "type": "isolated",
                    "value": int(p.position.leverage),
                    "rawUsd": decimal(p.position.isolated_margin - p.notional),
                }
            margin_used = (
                p.initial_margin
                if p.position.isolated_margin is None
                else p.position.isolated_margin + p.unrealized_pnl
            )
            used += margin_used
            rows.append(
                {
                    "type": "oneWay",
                    "position": {
                        "coin": spec.coin,
                        "szi": decimal(p.position.size, spec.sz_decimals),
                        "leverage": leverage,
                        "entryPx": _px(p.position.entry_price),
                        "positionValue": decimal(abs(p.notional)),
                        "unrealizedPnl": decimal(p.unrealized_pnl),
                        "returnOnEquity": decimal(
                            p.unrealized_pnl / p.initial_margin if p.initial_margin else 0.0
                        ),
                        "liquidationPx": None if p.liquidation_price is None else _px(p.liquidation_price),
                        "marginUsed": decimal(margin_used),
                        "maxLeverage": spec.max_leverage,
                        "cumFunding": {"allTime": "0.0", "sinceOpen": "0.0", "sinceChange": "0.0"},
                    },
                }
            )
        return {
            "marginSummary": {
                "accountValue": decimal(equity),
                "totalNtlPos": decimal(total_ntl),
                "totalRawUsd": decimal(equity - signed_ntl),
                "totalMarginUsed": decimal(used),
            },
            "crossMarginSummary": {
                "accountValue": decimal(cross_value),
                "totalNtlPos": decimal(cross_ntl),
                "totalRawUsd": decimal(cross_value - cross_signed),
                "totalMarginUsed": decimal(cross_used),
            },
            "crossMaintenanceMarginUsed": decimal(0.0 if figures is None else figures.maintenance_margin),
            "withdrawable": decimal(max(0.0, cross_value - cross_used)),
            "assetPositions": rows,
            "time": now,
        }

    # --- route --------------------------------------------------------------------------------------

    async def info(self, request: web.Request) -> web.Response:
        """``POST /info`` with a JSON body naming the ``type``."""
        try:
            body = json.loads(await request.text())
            kind = body["type"]
        except (ValueError, KeyError, TypeError) as exc:
            raise VenueError(422, {"error": _UNPARSABLE}) from exc
        match kind:
            case "meta":
                return reply(request, self.meta())
            case "metaAndAssetCtxs":
                return reply(request, [self.meta(), [self._asset_context(spec) for spec in PERPS]])
            case "spotMeta":
                token = {
                    "name": "USDC",
                    "szDecimals": 8,
                    "weiDecimals": 8,
                    "index": 0,
                    "tokenId": "0x6d1e7cde53ba9467b783cb7c530ce054",
                    "isCanonical": True,
                    "evmContract": None,
                    "fullName": None,
                }
                return reply(request, {"universe": [], "tokens": [token]})
            case "perpDexs":
                return reply(request, [None])
            case "allMids":
                return reply(request, {spec.coin: _px(self.sim.marks[spec.symbol]) for spec in PERPS})
            case "clearinghouseState":
                user = body.get("user")
                if not isinstance(user, str) or _ADDRESS.fullmatch(user) is None:
                    raise VenueError(422, {"error": _UNPARSABLE})
                return reply(request, self.clearinghouse_state(user))
            case _:
                raise VenueError(422, {"error": _UNPARSABLE})
