"""Reading raw exchange payloads: numbers, strings and lists that fail as ``PayloadError``, never KeyError.

Adapters parse JSON the exchange sent (through ccxt's implicit API methods, which return it as decoded)
and must name the payload and field at fault when it is unusable, such as
``positionRisk[3].markPrice: not a number: ''``. The paths are built only when something fails, so the
happy path costs a dict lookup and a ``float()`` a field.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from monitor.errors import PayloadError, PositionError, TierTableError
from monitor.risk.model import AccountSnapshot

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from monitor.risk.families import FormulaFamily, RawTier
    from monitor.risk.model import Position, ReportedFigures, TierSpec, TierTable


def path(where: str, index: int | str | None = None, key: str | None = None) -> str:
    """``where[index].key``, leaving out the parts that are ``None``."""
    text = where if index is None else f"{where}[{index}]"
    return text if key is None else f"{text}.{key}"


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


def obj(value: object, where: str, index: int | str | None = None) -> Mapping[str, Any]:
    """``value`` as a JSON object, or ``PayloadError``."""
    if not isinstance(value, dict):
        raise PayloadError(path(where, index), f"not an object: {_short(value)}")
    return value


def rows(value: object, where: str) -> list[Any]:
    """``value`` as a JSON array, or ``PayloadError``."""
    if not isinstance(value, list):
        raise PayloadError(where, f"not a list: {_short(value)}")
    return value


def field(row: Mapping[str, Any], key: str, where: str, index: int | str | None = None) -> Any:  # noqa: ANN401 - JSON
    """``row[key]``, or ``PayloadError`` naming the missing field."""
    try:
        return row[key]
    except KeyError:
        raise PayloadError(path(where, index, key), "missing") from None
    except TypeError:
        raise PayloadError(path(where, index), f"not an object: {_short(row)}") from None


def number(row: Mapping[str, Any], key: str, where: str, index: int | str | None = None) -> float:
    """``row[key]`` as a finite float (exchanges send numbers as strings), or ``PayloadError``."""
    value = field(row, key, where, index)
    try:
        result = float(value)
    except (TypeError, ValueError):
        raise PayloadError(path(where, index, key), f"not a number: {_short(value)}") from None
    except OverflowError:  # an integer beyond float's range (JSON allows any number of digits)
        raise PayloadError(path(where, index, key), f"out of range: {_short(value)}") from None
    if not math.isfinite(result) or isinstance(value, bool):
        raise PayloadError(path(where, index, key), f"not a number: {_short(value)}")
    return result


def optional_number(
    row: Mapping[str, Any], key: str, where: str, index: int | str | None = None
) -> float | None:
    """``row[key]`` as a float; ``None`` when missing, null or ``""`` (OKX and Bybit send empty strings)."""
    value = row.get(key)
    if value is None or value == "":
        return None
    return number(row, key, where, index)


def text(row: Mapping[str, Any], key: str, where: str, index: int | str | None = None) -> str:
    """``row[key]`` as a non-empty string, or ``PayloadError``."""
    value = field(row, key, where, index)
    if not isinstance(value, str) or not value:
        raise PayloadError(path(where, index, key), f"not a non-empty string: {_short(value)}")
    return value


def position_error(
    where: str, index: int | str, exc: PositionError, names: Mapping[str, str] | None = None
) -> PayloadError:
    """The model's ``PositionError`` as a ``PayloadError`` at ``where[index]``; raise it ``from exc``.

    ``names`` maps the model's field names to the payload's (``entry_price`` -> ``entryPrice``).
    """
    key = (names or {}).get(exc.field, exc.field)
    return PayloadError(path(where, index, key), exc.problem)


def snapshot(
    wallet_balance: float,
    positions: Iterable[Position],
    reported: ReportedFigures | None,
    where: str,
) -> AccountSnapshot:
    """An ``AccountSnapshot``; a wallet the model refuses becomes a ``PayloadError`` at ``where``.

    ``where`` names the payload field(s) the wallet was computed from.
    """
    try:
        return AccountSnapshot(wallet_balance=wallet_balance, positions=tuple(positions), reported=reported)
    except PositionError as exc:
        raise PayloadError(where, exc.problem) from exc


def build_tiers(
    where: str,
    family: FormulaFamily,
    specs: Iterable[TierSpec | RawTier],
    names: Mapping[str, str] | None = None,
) -> TierTable:
    """Validate tier rows with ``family``'s rules; a ``TierTableError`` becomes a ``PayloadError``.

    ``names`` maps the model's tier fields (``floor``, ``cap``, ``rate``, ``amount``, ``max_leverage``)
    to the payload's keys.
    """
    try:
        return family.tier_table(specs)
    except TierTableError as exc:
        key = (names or {}).get(exc.field, exc.field)
        raise PayloadError(path(where, exc.tier, key), exc.problem) from exc


def with_context(exc: PayloadError, *, account: str, exchange: str) -> PayloadError:
    """The same ``PayloadError`` naming the account and exchange it came from."""
    return PayloadError(exc.field, exc.problem, account=account, exchange=exchange)
