"""Any ccxt exchange with ``fetchPositions``: ccxt's unified fields -> an approximate ``AccountSnapshot``.

This is the one adapter that reads ccxt's unified parse (risk-math.md says why the others do not):
``fetch_positions`` and ``fetch_balance``, and ``fetch_leverage_tiers`` where the exchange has it
(maintenance amounts derived by the recurrence, as ccxt keeps them only in ``info``); without tiers a
position's ``maintenanceMarginPercentage`` is used as a single tier. The wallet comes from the settle
currency's ``total`` balance, whose meaning differs between exchanges: ccxt fills it with equity
(wallet plus unrealized PnL) on most of them (Binance's ``marginBalance``, OKX, Bitget), so the cross
positions' PnL is taken off it, and with the wallet alone on those in ``TOTAL_IS_WALLET``. Every
figure is therefore marked approximate (``FetchedAccount.approximate``), and no reported figures are
given: ccxt's unified maintenance margin is exactly what the drift check must not trust.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from monitor.errors import PayloadError, PositionError
from monitor.exchanges.payload import (
    build_tiers,
    number,
    obj,
    optional_number,
    path,
    position_error,
    rows,
    snapshot,
    text,
)
from monitor.exchanges.source import RestSource
from monitor.risk.families import FAMILIES, Exchange
from monitor.risk.model import AccountSnapshot, MarginMode, Position, Side, TierSpec

if TYPE_CHECKING:
    from collections.abc import Mapping

    from monitor.exchanges.client import ClientSettings, MarketCache
    from monitor.exchanges.source import Instrument
    from monitor.risk.model import TierTable

POSITIONS = "fetchPositions"
BALANCE = "fetchBalance"
TIERS = "fetchLeverageTiers"
#: Generic tiers follow the Binance shape: a rate per bracket, amounts derived by the recurrence.
FAMILY = FAMILIES[Exchange.BINANCEUSDM]


def parse_unified_tiers(tiers: object, symbol: str) -> TierTable:
    """Ccxt unified leverage tiers of ``symbol`` -> table."""
    where = f"{TIERS}[{symbol}]"
    specs = []
    for index, raw in enumerate(rows(tiers, where)):
        row = obj(raw, where, index)
        cap = optional_number(row, "maxNotional", where, index)
        specs.append(
            TierSpec(
                floor=number(row, "minNotional", where, index),
                cap=math.inf if cap is None else cap,
                rate=number(row, "maintenanceMarginRate", where, index),
                max_leverage=optional_number(row, "maxLeverage", where, index),
            )
        )
    return build_tiers(where, FAMILY, specs)


#: Exchanges whose unified ``total`` balance is the wallet without unrealized PnL (ccxt's Bybit reads
#: ``walletBalance``; Gate documents ``total`` as the wallet). Elsewhere ``total`` is equity.
TOTAL_IS_WALLET = frozenset({"bybit", "gate", "gateio"})


def normalise(
    positions: object,
    balance: object,
    tiers: Mapping[str, TierTable],
    instruments: Mapping[str, Instrument],
    *,
    settle: str | None = None,
    total_is_equity: bool = True,
) -> AccountSnapshot:
    """Unified positions and balance as a snapshot (approximate)."""
    parsed: list[Position] = []
    settles: list[str] = []
    by_symbol = {item.symbol: item for item in instruments.values()}
    for index, raw in enumerate(rows(positions, POSITIONS)):
        row = obj(raw, POSITIONS, index)
        contracts = optional_number(row, "contracts", POSITIONS, index) or 0.0
        if contracts == 0:
            continue
        symbol = text(row, "symbol", POSITIONS, index)
        side_text = row.get("side")
        if side_text not in ("long", "short"):  # a tuple: the value may be an unhashable list
            raise PayloadError(path(POSITIONS, index, "side"), f"not long or short: {side_text!r}")
        instrument = by_symbol.get(symbol)
        size = optional_number(row, "contractSize", POSITIONS, index) or (
            instrument.contract_size if instrument else 1.0
        )
        table = tiers.get(symbol)
        if table is None:
            rate = optional_number(row, "maintenanceMarginPercentage", POSITIONS, index)
            if rate is None:
                raise PayloadError(
                    path(POSITIONS, index, "maintenanceMarginPercentage"), "missing, and no tiers"
                )
            table = build_tiers(path(POSITIONS, index), FAMILY, [TierSpec(0.0, math.inf, rate)])
        isolated = row.get("marginMode") == "isolated"
        wallet = optional_number(row, "collateral", POSITIONS, index) if isolated else None
        entry = number(row, "entryPrice", POSITIONS, index)
        mark = number(row, "markPrice", POSITIONS, index)
        try:
            position = Position(
                symbol=symbol,
                side=Side(side_text),
                contracts=abs(contracts),
                entry_price=entry,
                mark_price=mark,
                tiers=table,
                contract_size=size,
                margin_mode=MarginMode.ISOLATED if isolated else MarginMode.CROSS,
                isolated_wallet=wallet,
                inverse=bool(instrument and instrument.inverse),
            )
        except PositionError as exc:
            raise position_error(POSITIONS, index, exc, None) from exc
        parsed.append(position)
        if instrument and instrument.settle:
            settles.append(instrument.settle)
    currency = settle or (settles[0] if settles else "USDT")
    totals = obj(obj(balance, BALANCE).get("total") or {}, BALANCE, "total")
    wallet_balance = number(totals, currency, path(BALANCE, None, "total")) if currency in totals else 0.0
    if total_is_equity:
        # Equity counts the cross positions' unrealized PnL, which the engine adds itself.
        wallet_balance -= sum(p.unrealized_pnl() for p in parsed if p.margin_mode is MarginMode.CROSS)
    return snapshot(wallet_balance, parsed, None, path(BALANCE, None, "total"))


class GenericSource(RestSource):
    """Any ccxt exchange that lists positions, through the unified API (``AccountSource``, approximate)."""

    approximate = True

    def __init__(
        self, name: str, settings: ClientSettings, markets: MarketCache, *, settle: str | None = None
    ) -> None:
        super().__init__(name, settings, markets)
        self.settle = settle
        self._tiers: dict[str, TierTable] = {}

    def _drop_tiers(self) -> None:
        self._tiers = {}

    async def _read(self, instruments: dict[str, Instrument]) -> AccountSnapshot:
        client = self.client
        call = self._handle.call
        positions: Any = await call(POSITIONS, client.fetch_positions())
        balance: Any = await call(BALANCE, client.fetch_balance())
        wanted = {
            row["symbol"]
            for row in positions
            if isinstance(row, dict) and isinstance(row.get("symbol"), str) and row.get("contracts")
        } - self._tiers.keys()
        if wanted and client.has.get("fetchLeverageTiers"):
            fetched = await call(TIERS, client.fetch_leverage_tiers(sorted(wanted)))
            for symbol, tiers in (fetched or {}).items():
                if symbol in wanted:
                    self._tiers[symbol] = parse_unified_tiers(tiers, symbol)
        return normalise(
            positions,
            balance,
            self._tiers,
            instruments,
            settle=self.settle,
            total_is_equity=self.settings.exchange_id not in TOTAL_IS_WALLET,
        )
