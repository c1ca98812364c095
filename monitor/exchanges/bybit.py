"""Bybit v5 unified trading account, linear USDT contracts: raw payloads -> ``AccountSnapshot``.

Per poll: ``GET /v5/account/wallet-balance?accountType=UNIFIED`` (``totalMarginBalance``,
``totalMaintenanceMargin``; ``accountMMRate`` is their ratio, the inverse of ours) and
``GET /v5/position/list?category=linear&settleCoin=USDT`` (every page; the mark is in each row).
Tiers: ``GET /v5/market/risk-limit?category=linear&symbol=...`` once per symbol with a position
(``riskLimitValue`` is the cap, ``maintenanceMargin`` the rate, ``mmDeduction`` the maintenance amount),
cached until ``refresh_tiers``.

Scope: the unified account's margin is in USD across collateral coins (after haircuts), so the engine's
wallet is ``totalMarginBalance`` less the cross positions' ``unrealisedPnl``: at the payload's marks our
margin balance equals Bybit's. Reported: ``totalMarginBalance`` and ``totalMaintenanceMargin`` less the
isolated positions' ``positionMM``. Bybit adds the estimated fee to close to its maintenance margin;
the engine does not, so a small drift is expected.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from monitor.errors import PayloadError, PositionError
from monitor.exchanges.payload import (
    build_tiers,
    field,
    number,
    obj,
    optional_number,
    path,
    position_error,
    rows,
    snapshot,
    text,
)
from monitor.exchanges.permissions import BYBIT, bybit_permissions
from monitor.exchanges.source import RestSource
from monitor.risk.families import FAMILIES, Exchange
from monitor.risk.model import AccountSnapshot, MarginMode, Position, ReportedFigures, Side, TierSpec

if TYPE_CHECKING:
    from collections.abc import Mapping

    from monitor.exchanges.client import ClientSettings, MarketCache
    from monitor.exchanges.permissions import KeyPermissions
    from monitor.exchanges.source import Instrument
    from monitor.risk.model import TierTable

WALLET = "wallet-balance"
POSITIONS = "position-list"
RISK_LIMIT = "risk-limit"
SIDES = {"Buy": Side.LONG, "Sell": Side.SHORT}
POSITION_FIELDS = {"entry_price": "avgPrice", "mark_price": "markPrice", "contracts": "size"}
TIER_FIELDS = {
    "cap": "riskLimitValue",
    "rate": "maintenanceMargin",
    "amount": "mmDeduction",
    "max_leverage": "maxLeverage",
}
PAGE_LIMIT = 200
MAX_PAGES = 20


def result_list(payload: object, where: str) -> list[Any]:
    """``result.list`` of a v5 response."""
    result = obj(field(obj(payload, where), "result", where), path(where, None, "result"))
    return rows(field(result, "list", path(where, None, "result")), path(where, None, "result.list"))


def parse_risk_limits(payload: object, symbol: str) -> TierTable:
    """One symbol's risk-limit rows -> tier table (sorted by cap; each floor is the previous cap)."""
    where = f"{RISK_LIMIT}[{symbol}]"
    parsed = []
    for index, raw in enumerate(result_list(payload, where)):
        row = obj(raw, where, index)
        if row.get("symbol", symbol) != symbol:
            continue
        parsed.append(
            (
                number(row, "riskLimitValue", where, index),
                number(row, "maintenanceMargin", where, index),
                optional_number(row, "mmDeduction", where, index),
                optional_number(row, "maxLeverage", where, index),
            )
        )
    parsed.sort(key=lambda item: item[0])
    specs = []
    floor = 0.0
    for cap, rate, amount, leverage in parsed:
        specs.append(TierSpec(floor, cap, rate, amount, leverage))
        floor = cap
    return build_tiers(where, FAMILIES[Exchange.BYBIT], specs, TIER_FIELDS)


def normalise(
    wallet_balance: object,
    position_rows: list[Any],
    tiers: Mapping[str, TierTable],
    instruments: Mapping[str, Instrument],
) -> AccountSnapshot:
    """A unified account's linear positions and cross totals as a snapshot."""
    accounts = result_list(wallet_balance, WALLET)
    if not accounts:
        raise PayloadError(f"{WALLET}.result.list", "empty: no unified account")
    account = obj(accounts[0], f"{WALLET}.result.list", 0)
    where_account = f"{WALLET}.result.list[0]"
    margin_balance = number(account, "totalMarginBalance", where_account)
    maintenance = number(account, "totalMaintenanceMargin", where_account)
    positions: list[Position] = []
    cross_pnl = 0.0
    isolated_mm = 0.0
    for index, raw in enumerate(position_rows):
        row = obj(raw, POSITIONS, index)
        size = number(row, "size", POSITIONS, index)
        if size == 0:
            continue
        market_id = text(row, "symbol", POSITIONS, index)
        raw_side = row.get("side")
        side = SIDES.get(raw_side) if isinstance(raw_side, str) else None
        if side is None:
            raise PayloadError(path(POSITIONS, index, "side"), f"not Buy or Sell: {row.get('side')!r}")
        isolated = str(row.get("tradeMode", "0")) == "1"
        table = tiers.get(market_id)
        if table is None:
            raise PayloadError(
                path(RISK_LIMIT, market_id), "no risk limits for a symbol with an open position"
            )
        entry = number(row, "avgPrice", POSITIONS, index)
        mark = number(row, "markPrice", POSITIONS, index)
        pnl = optional_number(row, "unrealisedPnl", POSITIONS, index) or 0.0
        wallet = number(row, "positionBalance", POSITIONS, index) if isolated else None
        instrument = instruments.get(market_id)
        try:
            position = Position(
                symbol=instrument.symbol if instrument else market_id,
                side=side,
                contracts=size,
                entry_price=entry,
                mark_price=mark,
                tiers=table,
                margin_mode=MarginMode.ISOLATED if isolated else MarginMode.CROSS,
                isolated_wallet=wallet,
            )
        except PositionError as exc:
            raise position_error(POSITIONS, index, exc, POSITION_FIELDS) from exc
        positions.append(position)
        if isolated:
            isolated_mm += number(row, "positionMM", POSITIONS, index)
        else:
            cross_pnl += pnl
    reported = ReportedFigures(maintenance_margin=maintenance - isolated_mm, margin_balance=margin_balance)
    return snapshot(margin_balance - cross_pnl, positions, reported, f"{where_account}.totalMarginBalance")


class BybitSource(RestSource):
    """A Bybit unified account's linear positions (``AccountSource``)."""

    def __init__(
        self, name: str, settings: ClientSettings, markets: MarketCache, *, settle_coin: str = "USDT"
    ) -> None:
        super().__init__(name, settings, markets)
        self.settle_coin = settle_coin
        self._tiers: dict[str, TierTable] = {}

    def _drop_tiers(self) -> None:
        self._tiers = {}

    async def key_permissions(self) -> KeyPermissions:
        """The key's permissions (see ``monitor.exchanges.permissions``)."""
        client = self.client
        return await self._read_permissions(BYBIT, client.privateGetV5UserQueryApi(), bybit_permissions)

    async def _read(self, instruments: dict[str, Instrument]) -> AccountSnapshot:
        client = self.client
        call = self._handle.call
        wallet = await call(WALLET, client.privateGetV5AccountWalletBalance({"accountType": "UNIFIED"}))
        position_rows: list[Any] = []
        cursor = ""
        for _ in range(MAX_PAGES):
            request = {"category": "linear", "settleCoin": self.settle_coin, "limit": PAGE_LIMIT}
            if cursor:
                request["cursor"] = cursor
            page = await call(POSITIONS, client.privateGetV5PositionList(request))
            position_rows.extend(result_list(page, POSITIONS))
            result = obj(page, POSITIONS).get("result") or {}
            next_cursor = result.get("nextPageCursor") if isinstance(result, dict) else None
            if not next_cursor or next_cursor == cursor or len(position_rows) % PAGE_LIMIT:
                break
            cursor = str(next_cursor)
        for index, raw in enumerate(position_rows):
            row = obj(raw, POSITIONS, index)
            market_id = row.get("symbol")
            if (
                isinstance(market_id, str)
                and market_id not in self._tiers
                and row.get("size") not in ("0", "", None)
            ):
                payload = await call(
                    RISK_LIMIT, client.publicGetV5MarketRiskLimit({"category": "linear", "symbol": market_id})
                )
                self._tiers[market_id] = parse_risk_limits(payload, market_id)
        return normalise(wallet, position_rows, self._tiers, instruments)
