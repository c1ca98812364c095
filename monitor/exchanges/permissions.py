"""What an API key may do, as the exchange reports it, and whether a monitor may hold it.

A monitor only reads. A key that can also withdraw, trade or move funds is a key that, stolen from
the machine the monitor runs on, can empty or liquidate the account. Where the exchange reports a
key's permissions the daemon reads them at start (``monitor.service.keys``):

- Binance (USDⓈ-M and COIN-M share keys): ``GET /sapi/v1/account/apiRestrictions``, one flag a
  permission (``enableWithdrawals``, ``enableFutures``, ``ipRestrict``...).
- Bybit: ``GET /v5/user/query-api``: ``readOnly`` (0 or 1), ``permissions`` (lists per area, a
  withdrawal is ``Wallet: ["Withdraw"]``) and ``ips`` (``["*"]``: any address).
- OKX: ``GET /api/v5/account/config``: ``perm`` (``read_only,trade,withdraw``) and ``ip`` (empty:
  any address).

The rule (``refusal``): a key that can withdraw is always refused; a key that can trade or transfer
between the owner's own accounts is refused unless the account sets ``allow_trading_key = true``.
Transfers count with trading, not with withdrawals: they cannot send funds to a stranger, but moving
the margin out of a futures wallet liquidates its positions as surely as a bad trade does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from monitor.errors import PayloadError
from monitor.exchanges.payload import field, obj, path, rows

if TYPE_CHECKING:
    from collections.abc import Mapping

BINANCE = "apiRestrictions"
BYBIT = "query-api"
OKX = "account-config"

#: Binance's flags by what they allow.
_BINANCE_WITHDRAW = ("enableWithdrawals",)
_BINANCE_TRANSFER = ("enableInternalTransfer", "permitsUniversalTransfer")
_BINANCE_TRADE = (
    "enableFutures",
    "enableSpotAndMarginTrading",
    "enableMargin",
    "enableVanillaOptions",
    "enablePortfolioMarginTrading",
    "enableFixApiTrade",
)
#: Bybit's permission areas that hold write permissions (``Exchange``, ``NFT``... hold reads).
_BYBIT_TRADE_AREAS = ("ContractTrade", "Spot", "Options", "Derivatives", "CopyTrading", "BlockTrade")
_BYBIT_TRANSFER = ("AccountTransfer", "SubMemberTransfer")


@dataclass(frozen=True, slots=True)
class KeyPermissions:
    """A key's powers beyond reading, each as the exchange's own names for the flags that grant it.

    ``ip_restricted`` is ``None`` when the exchange did not say.
    """

    exchange: str
    withdraw: tuple[str, ...] = ()
    transfer: tuple[str, ...] = ()
    trade: tuple[str, ...] = ()
    ip_restricted: bool | None = None

    @property
    def read_only(self) -> bool:
        """Whether the key can do nothing but read."""
        return not (self.withdraw or self.transfer or self.trade)

    def refusal(self, *, allow_trading: bool) -> str | None:
        """Why a monitor must not hold this key (``None``: it may), naming the exchange's flags."""
        if self.withdraw:
            return (
                f"the API key can withdraw ({', '.join(self.withdraw)}); "
                "give the monitor a read-only key (withdrawals are refused whatever allow_trading_key says)"
            )
        if allow_trading:
            return None
        writes = (*self.trade, *self.transfer)
        if writes:
            what = "trade" if self.trade and not self.transfer else "move funds"
            if self.trade and self.transfer:
                what = "trade and move funds"
            return (
                f"the API key can {what} ({', '.join(writes)}); give the monitor a read-only key, "
                "or set allow_trading_key = true on this account to accept it"
            )
        return None

    def fields(self) -> dict[str, Any]:
        """The permissions as log fields."""
        return {
            "withdraw": list(self.withdraw) or None,
            "transfer": list(self.transfer) or None,
            "trade": list(self.trade) or None,
            "ip_restricted": self.ip_restricted,
        }


def _flag(row: Mapping[str, Any], key: str, where: str, *, required: bool = False) -> bool:
    if key not in row and not required:
        return False
    value = field(row, key, where)
    if not isinstance(value, bool):
        raise PayloadError(path(where, None, key), f"not true or false: {value!r}")
    return value


def binance_permissions(payload: object, exchange: str = "binance") -> KeyPermissions:
    """``/sapi/v1/account/apiRestrictions`` -> ``KeyPermissions``.

    ``enableWithdrawals`` and ``ipRestrict`` must be there; the other flags count as off when absent
    (Binance adds flags as it adds products, and older keys lack the newer ones).
    """
    row = obj(payload, BINANCE)

    def granted(names: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(name for name in names if _flag(row, name, BINANCE))

    withdraw = tuple(name for name in _BINANCE_WITHDRAW if _flag(row, name, BINANCE, required=True))
    return KeyPermissions(
        exchange=exchange,
        withdraw=withdraw,
        transfer=granted(_BINANCE_TRANSFER),
        trade=granted(_BINANCE_TRADE),
        ip_restricted=_flag(row, "ipRestrict", BINANCE, required=True),
    )


def _names(areas: Mapping[str, Any], area: str, where: str) -> list[str]:
    value = areas.get(area)
    if value is None:
        return []
    items = rows(value, path(where, None, area))
    return [item for item in items if isinstance(item, str)]


def bybit_permissions(payload: object) -> KeyPermissions:
    """``/v5/user/query-api`` -> ``KeyPermissions``; ``readOnly`` is the authority on writes."""
    where = BYBIT
    result = obj(field(obj(payload, where), "result", where), path(where, None, "result"))
    where = path(where, None, "result")
    read_only = field(result, "readOnly", where)
    if read_only not in (0, 1) or isinstance(read_only, bool):
        raise PayloadError(path(where, None, "readOnly"), f"not 0 or 1: {read_only!r}")
    areas = obj(field(result, "permissions", where), path(where, None, "permissions"))
    where_areas = path(where, None, "permissions")
    wallet = _names(areas, "Wallet", where_areas)
    withdraw = tuple(f"Wallet.{name}" for name in wallet if name == "Withdraw")
    transfer = tuple(f"Wallet.{name}" for name in wallet if name in _BYBIT_TRANSFER)
    trade = tuple(
        f"{area}.{name}" for area in _BYBIT_TRADE_AREAS for name in _names(areas, area, where_areas)
    )
    if read_only == 0 and not (withdraw or transfer or trade):
        # A key Bybit calls read-write with no write we recognise: trust the flag, not our list.
        trade = ("readOnly=0",)
    ips = result.get("ips")
    restricted = None
    if isinstance(ips, list):
        restricted = bool(ips) and "*" not in ips
    return KeyPermissions(
        exchange="bybit", withdraw=withdraw, transfer=transfer, trade=trade, ip_restricted=restricted
    )


def okx_permissions(payload: object) -> KeyPermissions:
    """``/api/v5/account/config`` -> ``KeyPermissions`` from ``perm`` (``read_only,trade,withdraw``)."""
    where = OKX
    data = rows(field(obj(payload, where), "data", where), path(where, None, "data"))
    if not data:
        raise PayloadError(path(where, None, "data"), "empty")
    where = path(where, None, "data")
    row = obj(data[0], where, 0)
    where = path(where, 0)
    perm = field(row, "perm", where)
    if not isinstance(perm, str) or not perm:
        raise PayloadError(path(where, None, "perm"), f"not a permission list: {perm!r}")
    granted = {item.strip() for item in perm.split(",")}
    ip = row.get("ip")
    return KeyPermissions(
        exchange="okx",
        withdraw=("perm=withdraw",) if "withdraw" in granted else (),
        trade=("perm=trade",) if "trade" in granted else (),
        ip_restricted=None if not isinstance(ip, str) else bool(ip.strip()),
    )
