"""Binance USDⓈ-M futures: raw payloads -> ``AccountSnapshot``.

Per poll: ``GET /fapi/v3/account`` (cross wallet, cross unrealized PnL, total maintenance margin),
``GET /fapi/v3/positionRisk`` (every position: size, side, entry, isolated wallet, maintenance margin)
and ``GET /fapi/v1/premiumIndex`` without a symbol (every mark price in one call, weight 10). Brackets
come from ``GET /fapi/v1/leverageBracket`` once per account (``notionalCoef`` means an account can have
its own brackets) and stay cached until ``refresh_tiers``.

Scope of the figures, as the engine's: the **cross** pool of one margin asset.

- ``wallet_balance`` is the cross wallet: ``totalCrossWalletBalance``.
- ``reported.margin_balance`` = ``totalCrossWalletBalance + totalCrossUnPnl`` (``totalMarginBalance``
  also counts isolated positions' wallets and PnL).
- ``reported.maintenance_margin`` = ``totalMaintMargin`` less each isolated position's ``maintMargin``
  (Binance's total counts every position).

Binance's docs (Account Information V3): in single-asset mode the ``total*`` fields count the USDT asset
only; in multi-assets mode they are the USD value of every asset. So the totals are the right pool for
USDT in both modes. For another margin asset in single-asset mode (a USDC pool), the same figures come
from that asset's row (``crossWalletBalance``, ``crossUnPnl``, ``maintMargin``). In multi-assets mode
every position shares the pool; the engine adds USDT and USDC PnL at par (no collateral haircuts).
The v3 account payload does not say which mode the account is in; the adapter asks
``GET /fapi/v1/multiAssetsMargin`` only when a position in another margin asset is open (cached with
the brackets), or takes ``multi_assets`` from the configuration.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
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
from monitor.exchanges.permissions import BINANCE, binance_permissions
from monitor.exchanges.source import Instrument, RestSource
from monitor.risk.families import FAMILIES, Exchange
from monitor.risk.model import AccountSnapshot, MarginMode, Position, ReportedFigures, Side, TierSpec

if TYPE_CHECKING:
    from collections.abc import Mapping

    from monitor.exchanges.client import ClientSettings, MarketCache
    from monitor.exchanges.permissions import KeyPermissions
    from monitor.risk.model import TierTable

POSITIONS = "positionRisk"
ACCOUNT = "account"
MARKS = "premiumIndex"
BRACKETS = "leverageBracket"

#: Model field -> payload key, so a rejected figure is named as the exchange sent it.
POSITION_FIELDS = {"entry_price": "entryPrice", "mark_price": "markPrice", "contracts": "positionAmt"}

#: The asset whose pool Binance's ``total*`` account fields describe in single-asset mode.
TOTALS_ASSET = "USDT"


@dataclass(frozen=True, slots=True)
class BracketKeys:
    """Where a Binance bracket row keeps its bounds: notional (USDⓈ-M) or quantity in coin (COIN-M)."""

    floor: str
    cap: str

    @property
    def names(self) -> dict[str, str]:
        """Tier model field -> payload key."""
        return {
            "floor": self.floor,
            "cap": self.cap,
            "rate": "maintMarginRatio",
            "amount": "cum",
            "max_leverage": "initialLeverage",
        }


USDM_BRACKET_KEYS = BracketKeys("notionalFloor", "notionalCap")


def parse_brackets(
    payload: object, *, exchange: Exchange = Exchange.BINANCEUSDM, keys: BracketKeys = USDM_BRACKET_KEYS
) -> dict[str, TierTable]:
    """``leverageBracket`` rows -> tier table by Binance symbol (``cum`` kept as sent)."""
    family = FAMILIES[exchange]
    tables: dict[str, TierTable] = {}
    for index, raw in enumerate(rows(payload, BRACKETS)):
        entry = obj(raw, BRACKETS, index)
        symbol = text(entry, "symbol", BRACKETS, index)
        where = path(BRACKETS, index, "brackets")
        specs = []
        for tier_index, raw_tier in enumerate(rows(field(entry, "brackets", BRACKETS, index), where)):
            tier = obj(raw_tier, where, tier_index)
            specs.append(
                TierSpec(
                    floor=number(tier, keys.floor, where, tier_index),
                    cap=number(tier, keys.cap, where, tier_index),
                    rate=number(tier, "maintMarginRatio", where, tier_index),
                    amount=optional_number(tier, "cum", where, tier_index),
                    max_leverage=optional_number(tier, "initialLeverage", where, tier_index),
                )
            )
        tables[symbol] = build_tiers(where, family, specs, keys.names)
    return tables


def mark_rows(payload: object) -> dict[str, Mapping[str, Any]]:
    """``premiumIndex`` rows by symbol; prices are parsed only for symbols with a position."""
    marks: dict[str, Mapping[str, Any]] = {}
    for index, raw in enumerate(rows(payload, MARKS)):
        row = obj(raw, MARKS, index)
        marks[text(row, "symbol", MARKS, index)] = row
    return marks


def open_symbols(position_risk: object, where: str = POSITIONS) -> set[str]:
    """Symbols with a non-zero ``positionAmt``."""
    found: set[str] = set()
    for index, raw in enumerate(rows(position_risk, where)):
        row = obj(raw, where, index)
        if number(row, "positionAmt", where, index):
            found.add(text(row, "symbol", where, index))
    return found


def foreign_margin_assets(position_risk: object, margin_asset: str) -> set[str]:
    """Margin assets other than ``margin_asset`` that hold an open position (decides if the mode matters)."""
    found: set[str] = set()
    for index, raw in enumerate(rows(position_risk, POSITIONS)):
        row = obj(raw, POSITIONS, index)
        asset = row.get("marginAsset")
        if isinstance(asset, str) and asset != margin_asset and number(row, "positionAmt", POSITIONS, index):
            found.add(asset)
    return found


def normalise(
    account: object,
    position_risk: object,
    marks: Mapping[str, Mapping[str, Any]],
    tiers: Mapping[str, TierTable],
    *,
    symbols: Mapping[str, str] | None = None,
    margin_asset: str = TOTALS_ASSET,
    multi_assets: bool = False,
) -> AccountSnapshot:
    """The account's cross pool of ``margin_asset`` (every asset in multi-assets mode) as a snapshot.

    ``symbols`` maps Binance ids to ccxt symbols (``BTCUSDT`` -> ``BTC/USDT:USDT``); ids it lacks are
    kept as they are. Positions with ``positionAmt`` 0 are skipped, and so are positions margined in
    another asset unless ``multi_assets``.
    """
    symbols = symbols or {}
    positions: list[Position] = []
    isolated_maintenance = 0.0
    for index, raw in enumerate(rows(position_risk, POSITIONS)):
        row = obj(raw, POSITIONS, index)
        amount = number(row, "positionAmt", POSITIONS, index)
        if amount == 0:
            continue
        if not multi_assets and row.get("marginAsset", margin_asset) != margin_asset:
            continue
        position, maintenance = _position(row, index, amount, marks, tiers, symbols)
        positions.append(position)
        if position.margin_mode is MarginMode.ISOLATED:
            isolated_maintenance += maintenance
    wallet, unrealized, maintenance_total = _pool(
        obj(account, ACCOUNT), margin_asset, multi_assets=multi_assets
    )
    reported = ReportedFigures(
        maintenance_margin=maintenance_total - isolated_maintenance,
        margin_balance=wallet + unrealized,
    )
    wallet_field = "totalCrossWalletBalance" if multi_assets or margin_asset == TOTALS_ASSET else "assets"
    return snapshot(wallet, positions, reported, path(ACCOUNT, None, wallet_field))


def _position(
    row: Mapping[str, Any],
    index: int,
    amount: float,
    marks: Mapping[str, Mapping[str, Any]],
    tiers: Mapping[str, TierTable],
    symbols: Mapping[str, str],
) -> tuple[Position, float]:
    market_id = text(row, "symbol", POSITIONS, index)
    hedge_side = row.get("positionSide", "BOTH")
    if hedge_side == "LONG":
        side = Side.LONG
    elif hedge_side == "SHORT":
        side = Side.SHORT
    elif hedge_side == "BOTH":
        side = Side.LONG if amount > 0 else Side.SHORT
    else:
        raise PayloadError(path(POSITIONS, index, "positionSide"), f"not BOTH, LONG or SHORT: {hedge_side!r}")
    margin_type = row.get("marginType")  # v2 sends it; v3 leaves it out, and a cross position's wallet is 0
    isolated_wallet = number(row, "isolatedWallet", POSITIONS, index)
    isolated = margin_type == "isolated" if isinstance(margin_type, str) else isolated_wallet != 0
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
    maintenance = number(row, "maintMargin", POSITIONS, index) if isolated else 0.0
    try:
        position = Position(
            symbol=symbols.get(market_id, market_id),
            side=side,
            contracts=abs(amount),
            entry_price=entry,
            mark_price=mark,
            tiers=table,
            margin_mode=MarginMode.ISOLATED if isolated else MarginMode.CROSS,
            isolated_wallet=isolated_wallet if isolated else None,
        )
    except PositionError as exc:
        raise position_error(POSITIONS, index, exc, POSITION_FIELDS) from exc
    return position, maintenance


def _pool(account: Mapping[str, Any], margin_asset: str, *, multi_assets: bool) -> tuple[float, float, float]:
    """(cross wallet, cross unrealized PnL, maintenance margin of every position) of the pool we watch."""
    if multi_assets or margin_asset == TOTALS_ASSET:
        return (
            number(account, "totalCrossWalletBalance", ACCOUNT),
            number(account, "totalCrossUnPnl", ACCOUNT),
            number(account, "totalMaintMargin", ACCOUNT),
        )
    where = path(ACCOUNT, None, "assets")
    for index, raw in enumerate(rows(field(account, "assets", ACCOUNT), where)):
        asset = obj(raw, where, index)
        if asset.get("asset") == margin_asset:
            return (
                number(asset, "crossWalletBalance", where, index),
                number(asset, "crossUnPnl", where, index),
                number(asset, "maintMargin", where, index),
            )
    raise PayloadError(where, f"no row for the margin asset {margin_asset}")


class BinanceUsdmSource(RestSource):
    """A Binance USDⓈ-M account (``AccountSource``): four raw endpoints, brackets cached per account."""

    def __init__(
        self,
        name: str,
        settings: ClientSettings,
        markets: MarketCache,
        *,
        margin_asset: str = TOTALS_ASSET,
        multi_assets: bool | None = None,
    ) -> None:
        super().__init__(name, settings, markets)
        self.margin_asset = margin_asset
        self._configured_mode = multi_assets
        self._multi_assets = multi_assets
        self._tiers: dict[str, TierTable] | None = None
        self._symbol_names: dict[str, str] | None = None

    def _drop_tiers(self) -> None:
        self._tiers = None
        self._multi_assets = self._configured_mode

    async def key_permissions(self) -> KeyPermissions:
        """The key's permissions (see ``monitor.exchanges.permissions``)."""
        client = self.client
        return await self._read_permissions(
            BINANCE,
            client.sapiGetAccountApiRestrictions(),
            lambda payload: binance_permissions(payload, self.exchange_id),
        )

    async def _read(self, instruments: dict[str, Instrument]) -> AccountSnapshot:
        if self._symbol_names is None or len(self._symbol_names) != len(instruments):
            self._symbol_names = {market_id: item.symbol for market_id, item in instruments.items()}
        symbols = self._symbol_names
        client = self.client
        call = self._handle.call
        if self._tiers is None:
            self._tiers = parse_brackets(await call(BRACKETS, client.fapiPrivateGetLeverageBracket()))
        # Together, so the totals, the positions and the marks describe as nearly one moment as the
        # REST API allows (the drift check compares figures read from all three).
        account, position_risk, premium = await asyncio.gather(
            call(ACCOUNT, client.fapiPrivateV3GetAccount()),
            call(POSITIONS, client.fapiPrivateV3GetPositionRisk()),
            call(MARKS, client.fapiPublicGetPremiumIndex()),
        )
        marks = mark_rows(premium)
        if open_symbols(position_risk) - self._tiers.keys():
            # A symbol listed after the brackets were cached: read them again rather than fail the poll.
            self._tiers = parse_brackets(await call(BRACKETS, client.fapiPrivateGetLeverageBracket()))
        multi_assets = self._multi_assets
        if multi_assets is None:
            flag = account.get("multiAssetsMargin") if isinstance(account, dict) else None
            if isinstance(flag, bool):
                multi_assets = flag
            elif foreign_margin_assets(position_risk, self.margin_asset):
                mode = obj(
                    await call("multiAssetsMargin", client.fapiPrivateGetMultiAssetsMargin()),
                    "multiAssetsMargin",
                )
                multi_assets = bool(field(mode, "multiAssetsMargin", "multiAssetsMargin"))
                self._multi_assets = multi_assets
            else:
                multi_assets = False  # nothing in another asset is open: both modes give the same figures
        return normalise(
            account,
            position_risk,
            marks,
            self._tiers,
            symbols=symbols,
            margin_asset=self.margin_asset,
            multi_assets=multi_assets,
        )
