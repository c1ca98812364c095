"""Binance COIN-M (inverse) futures: raw payloads -> ``AccountSnapshot`` of one margin coin.

Per poll: ``GET /dapi/v1/account`` (per-asset cross wallet, cross PnL, maintenance margin, and each
position's ``maintMargin``), ``GET /dapi/v1/positionRisk`` and ``GET /dapi/v1/premiumIndex``. Brackets
from ``GET /dapi/v2/leverageBracket`` (per symbol, bounded by ``qtyFloor``/``qtyCap``: notional in coin),
cached per account until ``refresh_tiers``.

COIN-M margins each coin separately: BTCUSD_PERP and BTCUSD_250627 share the BTC pool, ETHUSD_PERP has
its own. The engine takes one wallet, so a source watches **one margin coin**: ``margin_asset`` when
configured, otherwise the coin of the first open position in ``positionRisk`` order (the first asset row
when nothing is open). An account with positions in two coins needs one configured source a coin.

Contracts are USD face value (BTC: 100 USD, others 10 USD), read from the loaded market's
``contractSize``; the engine's inverse formulas take it from there. Reported figures, cross scope:
margin balance = the coin's ``crossWalletBalance + crossUnPnl``; maintenance margin = the coin's
``maintMargin`` less its isolated positions' ``maintMargin`` (from the account payload's positions;
COIN-M ``positionRisk`` has no ``maintMargin``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from monitor.errors import PayloadError, PositionError
from monitor.exchanges.binanceusdm import BracketKeys, mark_rows, parse_brackets
from monitor.exchanges.payload import field, number, obj, path, position_error, rows, snapshot, text
from monitor.exchanges.permissions import BINANCE, binance_permissions
from monitor.exchanges.source import RestSource
from monitor.risk.families import Exchange
from monitor.risk.model import AccountSnapshot, MarginMode, Position, ReportedFigures, Side

if TYPE_CHECKING:
    from collections.abc import Mapping

    from monitor.exchanges.client import ClientSettings, MarketCache
    from monitor.exchanges.permissions import KeyPermissions
    from monitor.exchanges.source import Instrument
    from monitor.risk.model import TierTable

POSITIONS = "positionRisk"
ACCOUNT = "account"
MARKS = "premiumIndex"
BRACKETS = "leverageBracket"
COINM_BRACKET_KEYS = BracketKeys("qtyFloor", "qtyCap")
POSITION_FIELDS = {"entry_price": "entryPrice", "mark_price": "markPrice", "contracts": "positionAmt"}


def parse_coinm_brackets(payload: object) -> dict[str, TierTable]:
    """``/dapi/v2/leverageBracket`` rows -> tier table (bounds in coin) by symbol."""
    return parse_brackets(payload, exchange=Exchange.BINANCECOINM, keys=COINM_BRACKET_KEYS)


def margin_coin(symbol: str, instruments: Mapping[str, Instrument]) -> str:
    """The coin that margins ``symbol``: the market's settle asset, else the pair less ``USD``."""
    instrument = instruments.get(symbol)
    if instrument is not None and instrument.settle:
        return instrument.settle
    pair = symbol.split("_", 1)[0]
    return pair.removesuffix("USD")


def normalise(
    account: object,
    position_risk: object,
    marks: Mapping[str, Mapping[str, Any]],
    tiers: Mapping[str, TierTable],
    instruments: Mapping[str, Instrument],
    *,
    margin_asset: str | None = None,
) -> AccountSnapshot:
    """The cross pool of ``margin_asset`` (or the first open position's coin) as a snapshot."""
    account_row = obj(account, ACCOUNT)
    risk_rows = rows(position_risk, POSITIONS)
    open_rows: list[tuple[int, Mapping[str, Any], float, str]] = []
    for index, raw in enumerate(risk_rows):
        row = obj(raw, POSITIONS, index)
        amount = number(row, "positionAmt", POSITIONS, index)
        if amount:
            market_id = text(row, "symbol", POSITIONS, index)
            open_rows.append((index, row, amount, market_id))
    assets_where = path(ACCOUNT, None, "assets")
    assets = [
        obj(raw, assets_where, i)
        for i, raw in enumerate(rows(field(account_row, "assets", ACCOUNT), assets_where))
    ]
    if margin_asset is None:
        if open_rows:
            margin_asset = margin_coin(open_rows[0][3], instruments)
        elif assets:
            margin_asset = text(assets[0], "asset", assets_where, 0)
        else:
            return AccountSnapshot(wallet_balance=0.0, positions=(), reported=None)
    isolated_mm = _isolated_maintenance(account_row)
    positions: list[Position] = []
    isolated_total = 0.0
    for index, row, amount, market_id in open_rows:
        if margin_coin(market_id, instruments) != margin_asset:
            continue
        position = _position(row, index, amount, market_id, marks, tiers, instruments)
        positions.append(position)
        if position.margin_mode is MarginMode.ISOLATED:
            key = (market_id, str(row.get("positionSide", "BOTH")))
            if key not in isolated_mm:
                raise PayloadError(
                    path(ACCOUNT, None, "positions"), f"no maintMargin for isolated {market_id}"
                )
            isolated_total += isolated_mm[key]
    for index, asset in enumerate(assets):
        if asset.get("asset") == margin_asset:
            wallet = number(asset, "crossWalletBalance", assets_where, index)
            unrealized = number(asset, "crossUnPnl", assets_where, index)
            maintenance = number(asset, "maintMargin", assets_where, index)
            break
    else:
        raise PayloadError(assets_where, f"no row for the margin asset {margin_asset}")
    reported = ReportedFigures(
        maintenance_margin=maintenance - isolated_total, margin_balance=wallet + unrealized
    )
    return snapshot(wallet, positions, reported, assets_where)


def _isolated_maintenance(account: Mapping[str, Any]) -> dict[tuple[str, str], float]:
    where = path(ACCOUNT, None, "positions")
    found: dict[tuple[str, str], float] = {}
    for index, raw in enumerate(rows(account.get("positions", []), where)):
        row = obj(raw, where, index)
        if row.get("isolated") is True:
            key = (text(row, "symbol", where, index), str(row.get("positionSide", "BOTH")))
            found[key] = number(row, "maintMargin", where, index)
    return found


def _position(
    row: Mapping[str, Any],
    index: int,
    amount: float,
    market_id: str,
    marks: Mapping[str, Mapping[str, Any]],
    tiers: Mapping[str, TierTable],
    instruments: Mapping[str, Instrument],
) -> Position:
    hedge_side = row.get("positionSide", "BOTH")
    if hedge_side not in ("BOTH", "LONG", "SHORT"):  # a tuple: the value may be an unhashable list
        raise PayloadError(path(POSITIONS, index, "positionSide"), f"not BOTH, LONG or SHORT: {hedge_side!r}")
    side = Side.LONG if hedge_side == "LONG" or (hedge_side == "BOTH" and amount > 0) else Side.SHORT
    isolated = row.get("marginType") == "isolated"
    isolated_wallet = number(row, "isolatedWallet", POSITIONS, index) if isolated else None
    instrument = instruments.get(market_id)
    if instrument is None:
        raise PayloadError(path(POSITIONS, index, "symbol"), f"not a market ccxt loaded: {market_id!r}")
    table = tiers.get(market_id)
    if table is None:
        raise PayloadError(path(BRACKETS, market_id), "no brackets for a symbol with an open position")
    mark_row = marks.get(market_id)
    mark = (
        number(mark_row, "markPrice", MARKS, market_id)
        if mark_row is not None
        else number(row, "markPrice", POSITIONS, index)
    )
    entry = number(row, "entryPrice", POSITIONS, index)
    try:
        return Position(
            symbol=instrument.symbol,
            side=side,
            contracts=abs(amount),
            entry_price=entry,
            mark_price=mark,
            tiers=table,
            contract_size=instrument.contract_size,
            margin_mode=MarginMode.ISOLATED if isolated else MarginMode.CROSS,
            isolated_wallet=isolated_wallet,
            inverse=True,
        )
    except PositionError as exc:
        raise position_error(POSITIONS, index, exc, POSITION_FIELDS) from exc


class BinanceCoinmSource(RestSource):
    """A Binance COIN-M account, one margin coin (``AccountSource``)."""

    def __init__(
        self, name: str, settings: ClientSettings, markets: MarketCache, *, margin_asset: str | None = None
    ) -> None:
        super().__init__(name, settings, markets)
        self.margin_asset = margin_asset
        self._tiers: dict[str, TierTable] | None = None

    def _drop_tiers(self) -> None:
        self._tiers = None

    async def key_permissions(self) -> KeyPermissions:
        """The key's permissions (see ``monitor.exchanges.permissions``)."""
        client = self.client
        return await self._read_permissions(
            BINANCE,
            client.sapiGetAccountApiRestrictions(),
            lambda payload: binance_permissions(payload, self.exchange_id),
        )

    async def _read(self, instruments: dict[str, Instrument]) -> AccountSnapshot:
        client = self.client
        call = self._handle.call
        account = await call(ACCOUNT, client.dapiPrivateGetAccount())
        position_risk = await call(POSITIONS, client.dapiPrivateGetPositionRisk())
        marks = mark_rows(await call(MARKS, client.dapiPublicGetPremiumIndex()))
        open_ids = {
            str(row.get("symbol"))
            for row in rows(position_risk, POSITIONS)
            if isinstance(row, dict) and row.get("positionAmt") not in (None, "0", "0.0", 0)
        }
        if self._tiers is None or open_ids - self._tiers.keys():
            self._tiers = parse_coinm_brackets(await call(BRACKETS, client.dapiPrivateV2GetLeverageBracket()))
        return normalise(
            account, position_risk, marks, self._tiers, instruments, margin_asset=self.margin_asset
        )
