"""Hyperliquid perpetuals, read by wallet address (no key): raw payloads -> ``AccountSnapshot``.

Per poll, two ``POST /info`` calls: ``{"type": "clearinghouseState", "user": address}`` (account value,
cross maintenance margin used, positions) and ``{"type": "metaAndAssetCtxs"}`` (each asset's
``maxLeverage`` and its mark, in universe order).

Hyperliquid's maintenance margin is half the initial margin at the asset's maximum leverage:
``notional / maxLeverage / 2`` (one tier; assets with margin tables have more, not modelled yet). The
engine's wallet is the cross ``accountValue`` less the cross positions' ``unrealizedPnl``; reported:
``crossMarginSummary.accountValue`` and ``crossMaintenanceMarginUsed``. An isolated position's wallet is
its ``marginUsed`` less its ``unrealizedPnl`` (Hyperliquid counts PnL in the margin used).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from monitor.errors import ConfigError, PayloadError, PositionError
from monitor.exchanges.payload import (
    build_tiers,
    field,
    number,
    obj,
    path,
    position_error,
    rows,
    snapshot,
    text,
)
from monitor.exchanges.source import RestSource
from monitor.risk.families import FAMILIES, Exchange, RawTier
from monitor.risk.model import AccountSnapshot, MarginMode, Position, ReportedFigures, Side

if TYPE_CHECKING:
    from collections.abc import Mapping

    from monitor.exchanges.client import ClientSettings, MarketCache
    from monitor.exchanges.source import Instrument
    from monitor.risk.model import TierTable

STATE = "clearinghouseState"
META = "metaAndAssetCtxs"
POSITIONS = f"{STATE}.assetPositions"
POSITION_FIELDS = {"entry_price": "entryPx", "contracts": "szi"}


def parse_meta(payload: object) -> dict[str, tuple[float, float]]:
    """``metaAndAssetCtxs`` -> coin: (max leverage, mark price)."""
    pair = rows(payload, META)
    if len(pair) != 2:
        raise PayloadError(META, f"expected [meta, assetCtxs], got {len(pair)} items")
    universe = rows(field(obj(pair[0], META, 0), "universe", META, 0), f"{META}[0].universe")
    contexts = rows(pair[1], f"{META}[1]")
    found: dict[str, tuple[float, float]] = {}
    for index, raw in enumerate(universe):
        asset = obj(raw, f"{META}[0].universe", index)
        if index >= len(contexts):
            break
        context = obj(contexts[index], f"{META}[1]", index)
        coin = text(asset, "name", f"{META}[0].universe", index)
        found[coin] = (
            number(asset, "maxLeverage", f"{META}[0].universe", index),
            number(context, "markPx", f"{META}[1]", index),
        )
    return found


def tier_table(max_leverage: float, coin: str) -> TierTable:
    """One tier, rate ``1 / (2 x max leverage)``."""
    return build_tiers(
        f"{META}[{coin}]", FAMILIES[Exchange.HYPERLIQUID], [RawTier(0.0, math.inf, None, None, max_leverage)]
    )


def normalise(
    state: object, meta: Mapping[str, tuple[float, float]], symbols: Mapping[str, str]
) -> AccountSnapshot:
    """The cross account and its positions as a snapshot."""
    account = obj(state, STATE)
    cross = obj(field(account, "crossMarginSummary", STATE), f"{STATE}.crossMarginSummary")
    account_value = number(cross, "accountValue", f"{STATE}.crossMarginSummary")
    maintenance = number(account, "crossMaintenanceMarginUsed", STATE)
    positions: list[Position] = []
    cross_pnl = 0.0
    for index, raw in enumerate(rows(field(account, "assetPositions", STATE), POSITIONS)):
        where = f"{POSITIONS}[{index}].position"
        row = obj(field(obj(raw, POSITIONS, index), "position", POSITIONS, index), where)
        size = number(row, "szi", where)
        if size == 0:
            continue
        coin = text(row, "coin", where)
        if coin not in meta:
            raise PayloadError(path(META, coin), "no asset context for a coin with an open position")
        max_leverage, mark = meta[coin]
        leverage = obj(field(row, "leverage", where), f"{where}.leverage")
        isolated = leverage.get("type") == "isolated"
        pnl = number(row, "unrealizedPnl", where)
        entry = number(row, "entryPx", where)
        wallet = number(row, "marginUsed", where) - pnl if isolated else None
        table = tier_table(max_leverage, coin)
        try:
            position = Position(
                symbol=symbols.get(coin, f"{coin}/USDC:USDC"),
                side=Side.LONG if size > 0 else Side.SHORT,
                contracts=abs(size),
                entry_price=entry,
                mark_price=mark,
                tiers=table,
                margin_mode=MarginMode.ISOLATED if isolated else MarginMode.CROSS,
                isolated_wallet=wallet,
            )
        except PositionError as exc:
            raise position_error(POSITIONS, index, exc, POSITION_FIELDS) from exc
        positions.append(position)
        if not isolated:
            cross_pnl += pnl
    reported = ReportedFigures(maintenance_margin=maintenance, margin_balance=account_value)
    return snapshot(
        account_value - cross_pnl, positions, reported, f"{STATE}.crossMarginSummary.accountValue"
    )


class HyperliquidSource(RestSource):
    """A Hyperliquid account read by wallet address (``AccountSource``)."""

    def __init__(self, name: str, settings: ClientSettings, markets: MarketCache) -> None:
        if not settings.credentials.wallet_address:
            raise ConfigError("wallet_address", "Hyperliquid accounts are read by wallet address; set it")
        super().__init__(name, settings, markets)
        self.wallet_address = settings.credentials.wallet_address
        self._coins: dict[str, str] | None = None

    async def _read(self, instruments: dict[str, Instrument]) -> AccountSnapshot:  # noqa: ARG002 - coins map to symbols through the markets' info
        if self._coins is None:
            self._coins = {}
            for market in (self.client.markets or {}).values():
                info = market.get("info") or {}
                if market.get("swap") and isinstance(info, dict) and isinstance(info.get("name"), str):
                    self._coins.setdefault(info["name"], market["symbol"])
        call = self._handle.call
        state = await call(STATE, self.client.publicPostInfo({"type": STATE, "user": self.wallet_address}))
        meta = parse_meta(await call(META, self.client.publicPostInfo({"type": META})))
        return normalise(state, meta, self._coins)
