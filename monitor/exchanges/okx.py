"""OKX, linear USDT swaps: raw payloads -> ``AccountSnapshot``.

Per poll: ``GET /api/v5/account/balance`` and ``GET /api/v5/account/positions?instType=SWAP``; tiers from
``GET /api/v5/public/position-tiers?instType=SWAP&tdMode=cross&instFamily=BTC-USDT`` once per family
(cached until ``refresh_tiers``). The client needs the API passphrase (``password``).

Quirks:

- OKX's ``mmr``/``imr`` in balance and position payloads are currency **amounts**, not rates; its
  ``mgnRatio`` is adjusted equity / (MM + liquidation fee), the same direction as our ratio.
- Position tiers are keyed by **contracts** (``minSz``/``maxSz``, unverified against OKX's docs in this
  project's reference), with no maintenance amount: the tier's ``mmr`` rate applies to the whole
  position. The engine's tables are keyed by notional, so each poll converts the bounds at the current
  mark (``contracts x ctVal x mark``); the tier edges therefore move with the price, and threshold prices
  that cross a tier edge are approximate. Floors are made contiguous (each floor is the previous cap).
- Account scope. Multi-currency / portfolio mode (``adjEq`` set): margin balance = ``adjEq`` (USD) and
  maintenance margin = the account ``mmr``. Single-currency mode (``adjEq`` empty): the settle coin's
  ``details`` row, ``eq - isoEq`` and its ``mmr``. The engine's wallet is that margin balance less the
  cross positions' ``upl``.
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
from monitor.exchanges.permissions import OKX, okx_permissions
from monitor.exchanges.source import RestSource
from monitor.risk.families import FAMILIES, Exchange
from monitor.risk.model import AccountSnapshot, MarginMode, Position, ReportedFigures, Side, TierSpec

if TYPE_CHECKING:
    from collections.abc import Mapping

    from monitor.exchanges.client import ClientSettings, MarketCache
    from monitor.exchanges.permissions import KeyPermissions
    from monitor.exchanges.source import Instrument
    from monitor.risk.model import TierTable

BALANCE = "balance"
POSITIONS = "positions"
TIERS = "position-tiers"
POSITION_FIELDS = {"entry_price": "avgPx", "mark_price": "markPx", "contracts": "pos"}
TIER_FIELDS = {"cap": "maxSz", "rate": "mmr", "max_leverage": "maxLever"}


def data(payload: object, where: str) -> list[Any]:
    """``data`` of a v5 response."""
    return rows(field(obj(payload, where), "data", where), path(where, None, "data"))


def inst_family(inst_id: str) -> str:
    """``BTC-USDT-SWAP`` -> ``BTC-USDT``."""
    return inst_id.rsplit("-", 1)[0] if inst_id.endswith("-SWAP") else inst_id


def tier_rows(payload: object, family: str) -> list[tuple[float, float, float | None]]:
    """``position-tiers`` rows of one family -> (max contracts, rate, max leverage), sorted."""
    where = f"{TIERS}[{family}]"
    parsed = []
    for index, raw in enumerate(data(payload, where)):
        row = obj(raw, where, index)
        parsed.append(
            (
                number(row, "maxSz", where, index),
                number(row, "mmr", where, index),
                optional_number(row, "maxLever", where, index),
            )
        )
    parsed.sort(key=lambda item: item[0])
    if not parsed:
        raise PayloadError(where, "no tiers")
    return parsed


def tiers_at(rows_: list[tuple[float, float, float | None]], units: float, family: str) -> TierTable:
    """A notional-keyed table from contract-keyed tiers, with ``units`` = contract value x mark."""
    specs = []
    floor = 0.0
    for max_size, rate, leverage in rows_:
        cap = max_size * units
        specs.append(TierSpec(floor, cap, rate, None, leverage))
        floor = cap
    return build_tiers(f"{TIERS}[{family}]", FAMILIES[Exchange.OKX], specs, TIER_FIELDS)


def normalise(
    balance: object,
    position_payload: object,
    tiers: Mapping[str, list[tuple[float, float, float | None]]],
    instruments: Mapping[str, Instrument],
    *,
    settle: str = "USDT",
) -> AccountSnapshot:
    """The cross account (or the settle coin's cross pool) and its swap positions as a snapshot."""
    margin_balance, maintenance = _pool(balance, settle)
    positions: list[Position] = []
    cross_pnl = 0.0
    for index, raw in enumerate(data(position_payload, POSITIONS)):
        row = obj(raw, POSITIONS, index)
        contracts = number(row, "pos", POSITIONS, index)
        if contracts == 0 or row.get("instType", "SWAP") != "SWAP":
            continue
        inst_id = text(row, "instId", POSITIONS, index)
        instrument = instruments.get(inst_id)
        if instrument is None:
            raise PayloadError(path(POSITIONS, index, "instId"), f"not a market ccxt loaded: {inst_id!r}")
        if instrument.inverse or (instrument.settle and instrument.settle != settle):
            continue
        hedge_side = row.get("posSide", "net")
        if hedge_side not in ("net", "long", "short"):  # a tuple: the value may be an unhashable list
            raise PayloadError(path(POSITIONS, index, "posSide"), f"not net, long or short: {hedge_side!r}")
        side = Side.LONG if hedge_side == "long" or (hedge_side == "net" and contracts > 0) else Side.SHORT
        isolated = row.get("mgnMode") == "isolated"
        mark = number(row, "markPx", POSITIONS, index)
        entry = number(row, "avgPx", POSITIONS, index)
        pnl = optional_number(row, "upl", POSITIONS, index) or 0.0
        wallet = number(row, "margin", POSITIONS, index) if isolated else None
        family = inst_family(inst_id)
        if family not in tiers:
            raise PayloadError(path(TIERS, family), "no tiers for a family with an open position")
        table = tiers_at(tiers[family], instrument.contract_size * mark, family)
        try:
            position = Position(
                symbol=instrument.symbol,
                side=side,
                contracts=abs(contracts),
                entry_price=entry,
                mark_price=mark,
                tiers=table,
                contract_size=instrument.contract_size,
                margin_mode=MarginMode.ISOLATED if isolated else MarginMode.CROSS,
                isolated_wallet=wallet,
            )
        except PositionError as exc:
            raise position_error(POSITIONS, index, exc, POSITION_FIELDS) from exc
        positions.append(position)
        if not isolated:
            cross_pnl += pnl
    reported = ReportedFigures(maintenance_margin=maintenance, margin_balance=margin_balance)
    return snapshot(margin_balance - cross_pnl, positions, reported, f"{BALANCE}.data[0]")


def _pool(balance: object, settle: str) -> tuple[float, float]:
    """(cross margin balance, maintenance margin): the account's in multi-currency mode, else the coin's."""
    accounts = data(balance, BALANCE)
    if not accounts:
        raise PayloadError(f"{BALANCE}.data", "empty")
    account = obj(accounts[0], f"{BALANCE}.data", 0)
    where = f"{BALANCE}.data[0]"
    adjusted = optional_number(account, "adjEq", where)
    if adjusted is not None:
        margin_balance = adjusted
        maintenance = number(account, "mmr", where)
    else:
        details_where = path(where, None, "details")
        for index, raw in enumerate(rows(field(account, "details", where), details_where)):
            row = obj(raw, details_where, index)
            if row.get("ccy") == settle:
                margin_balance = number(row, "eq", details_where, index) - (
                    optional_number(row, "isoEq", details_where, index) or 0.0
                )
                maintenance = optional_number(row, "mmr", details_where, index) or 0.0
                break
        else:
            raise PayloadError(details_where, f"no row for {settle}")
    return margin_balance, maintenance


class OkxSource(RestSource):
    """An OKX account's linear swap positions (``AccountSource``)."""

    def __init__(
        self, name: str, settings: ClientSettings, markets: MarketCache, *, settle: str = "USDT"
    ) -> None:
        super().__init__(name, settings, markets)
        self.settle = settle
        self._tiers: dict[str, list[tuple[float, float, float | None]]] = {}

    def _drop_tiers(self) -> None:
        self._tiers = {}

    async def key_permissions(self) -> KeyPermissions:
        """The key's permissions (see ``monitor.exchanges.permissions``)."""
        client = self.client
        return await self._read_permissions(OKX, client.privateGetAccountConfig(), okx_permissions)

    async def _read(self, instruments: dict[str, Instrument]) -> AccountSnapshot:
        client = self.client
        call = self._handle.call
        balance = await call(BALANCE, client.privateGetAccountBalance())
        positions = await call(POSITIONS, client.privateGetAccountPositions({"instType": "SWAP"}))
        for raw in data(positions, POSITIONS):
            inst_id = raw.get("instId") if isinstance(raw, dict) else None
            if not isinstance(inst_id, str):
                continue
            family = inst_family(inst_id)
            if family not in self._tiers:
                request = {"instType": "SWAP", "tdMode": "cross", "instFamily": family}
                self._tiers[family] = tier_rows(
                    await call(TIERS, client.publicGetPublicPositionTiers(request)), family
                )
        return normalise(balance, positions, self._tiers, instruments, settle=self.settle)
