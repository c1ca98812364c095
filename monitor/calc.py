"""``margin-monitor calc``: read an account description, assess it, and report.

This module is the edge between a person's JSON and the pure engine: every value is checked here,
once, and an error names the field at fault (``positions[1].tiers[2].min_notional``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from monitor.brackets import bundled_symbols, bundled_tiers
from monitor.errors import PositionError, TierTableError, UserInputError
from monitor.risk.actions import (
    DEFAULT_TARGET,
    account_margin_to_add,
    close_fraction,
    isolated_margin_to_add,
)
from monitor.risk.engine import assess
from monitor.risk.families import FAMILIES, Exchange, FormulaFamily, RawTier
from monitor.risk.model import (
    DEFAULT_THRESHOLDS,
    AccountSnapshot,
    MarginMode,
    Position,
    ReportedFigures,
    Side,
    TierTable,
    check_thresholds,
)
from monitor.risk.pretrade import PlannedTrade, PreTradeCheck, check_trade

if TYPE_CHECKING:
    from monitor.risk.model import Assessment, PositionAssessment

_TOP_KEYS = {
    "exchange",
    "wallet_balance",
    "thresholds_pct",
    "target_ratio_pct",
    "positions",
    "exchange_maintenance_margin",
    "exchange_margin_balance",
}
_POSITION_KEYS = {
    "symbol",
    "side",
    "contracts",
    "contract_size",
    "entry_price",
    "mark_price",
    "margin_mode",
    "isolated_wallet",
    "tiers",
}
_TIER_KEYS = {
    "min_notional",
    "max_notional",
    "maintenance_margin_rate",
    "maintenance_amount",
    "max_leverage",
}
_TIER_FIELD = {
    "floor": "min_notional",
    "cap": "max_notional",
    "rate": "maintenance_margin_rate",
    "amount": "maintenance_amount",
    "max_leverage": "max_leverage",
}


@dataclass(frozen=True, slots=True)
class CalcRequest:
    """A validated ``calc`` input."""

    family: FormulaFamily
    account: AccountSnapshot
    thresholds: tuple[float, ...]
    target: float


# --- reading ---------------------------------------------------------------------------------------


def parse_request(data: object, *, source: str | None = None) -> CalcRequest:
    """Validate a decoded ``calc`` document; raise ``UserInputError`` naming the first bad field."""
    try:
        return _parse_request(data)
    except UserInputError as exc:
        raise UserInputError(exc.field, exc.problem, source=source) from None


def _parse_request(data: object) -> CalcRequest:
    top = _object(data, "input")
    _no_unknown(top, _TOP_KEYS, "")
    family = FAMILIES[_exchange(top)]
    wallet = _number(top, "wallet_balance", "wallet_balance")
    thresholds = _thresholds(top)
    target = _number(
        top,
        "target_ratio_pct",
        "target_ratio_pct",
        default=DEFAULT_TARGET * 100,
        minimum=100,
        strict=True,
    )
    raw_positions = _array(top.get("positions"), "positions") if "positions" in top else _missing("positions")
    positions = tuple(
        _position(family, item, f"positions[{index}]") for index, item in enumerate(raw_positions)
    )
    _no_duplicates(positions)
    reported = None
    if "exchange_maintenance_margin" in top or "exchange_margin_balance" in top:
        reported = ReportedFigures(
            maintenance_margin=_number(
                top, "exchange_maintenance_margin", "exchange_maintenance_margin", default=None
            ),
            margin_balance=_number(top, "exchange_margin_balance", "exchange_margin_balance", default=None),
        )
    return CalcRequest(family, AccountSnapshot(wallet, positions, reported), thresholds, target / 100)


def _exchange(top: dict[str, Any]) -> Exchange:
    if "exchange" not in top:
        _missing("exchange")
    value = top["exchange"]
    try:
        return Exchange(value)
    except ValueError:
        known = ", ".join(exchange.value for exchange in Exchange)
        raise UserInputError("exchange", f"unknown exchange {value!r} (known: {known})") from None


def _thresholds(top: dict[str, Any]) -> tuple[float, ...]:
    if "thresholds_pct" not in top:
        return DEFAULT_THRESHOLDS
    values = _array(top["thresholds_pct"], "thresholds_pct")
    ratios = [_as_number(value, f"thresholds_pct[{index}]") / 100 for index, value in enumerate(values)]
    try:
        return check_thresholds(ratios)
    except ValueError as exc:
        field, _, problem = str(exc).partition(" ")
        raise UserInputError(
            field.replace("thresholds", "thresholds_pct"),
            problem.replace("thresholds[", "thresholds_pct["),
        ) from None


def _position(family: FormulaFamily, item: object, path: str) -> Position:
    obj = _object(item, path)
    _no_unknown(obj, _POSITION_KEYS, path)
    symbol = _string(obj, "symbol", f"{path}.symbol")
    side = _choice(obj, "side", f"{path}.side", Side)
    mode = _choice(obj, "margin_mode", f"{path}.margin_mode", MarginMode, default=MarginMode.CROSS)
    contracts = _number(obj, "contracts", f"{path}.contracts", minimum=0)
    contract_size = _number(
        obj, "contract_size", f"{path}.contract_size", default=1.0, minimum=0, strict=True
    )
    entry = _number(obj, "entry_price", f"{path}.entry_price", minimum=0, strict=True)
    mark = _number(obj, "mark_price", f"{path}.mark_price", minimum=0, strict=True)
    isolated_wallet = None
    if mode is MarginMode.ISOLATED:
        isolated_wallet = _number(obj, "isolated_wallet", f"{path}.isolated_wallet")
    elif "isolated_wallet" in obj:
        raise UserInputError(f"{path}.isolated_wallet", "only isolated positions have an isolated wallet")
    tiers = _tiers(family, obj, symbol, path)
    try:
        return Position(
            symbol=symbol,
            side=side,
            contracts=contracts,
            entry_price=entry,
            mark_price=mark,
            tiers=tiers,
            contract_size=contract_size,
            margin_mode=mode,
            isolated_wallet=isolated_wallet,
            inverse=family.inverse,
        )
    except PositionError as exc:
        raise UserInputError(f"{path}.{exc.field}", exc.problem) from None


def _tiers(family: FormulaFamily, obj: dict[str, Any], symbol: str, path: str) -> TierTable:
    if "tiers" not in obj:
        bundled = bundled_tiers(symbol) if family.exchange is Exchange.BINANCEUSDM else None
        if bundled is not None:
            return bundled
        if family.exchange is Exchange.BINANCEUSDM:
            covered = ", ".join(bundled_symbols())
            problem = f"missing, and the bundled Binance USD-M brackets cover only {covered}"
        else:
            problem = f"missing (bundled brackets exist only for binanceusdm, not {family.exchange})"
        raise UserInputError(f"{path}.tiers", problem)
    rows = _array(obj["tiers"], f"{path}.tiers")
    raw: list[RawTier] = []
    for index, item in enumerate(rows):
        where = f"{path}.tiers[{index}]"
        tier = _object(item, where)
        _no_unknown(tier, _TIER_KEYS, where)
        rate_required = not family.rate_from_leverage
        raw.append(
            RawTier(
                floor=_number(tier, "min_notional", f"{where}.min_notional", minimum=0),
                cap=_number(tier, "max_notional", f"{where}.max_notional", minimum=0, strict=True),
                rate=_number(
                    tier,
                    "maintenance_margin_rate",
                    f"{where}.maintenance_margin_rate",
                    default=_REQUIRED if rate_required else None,
                ),
                amount=_number(tier, "maintenance_amount", f"{where}.maintenance_amount", default=None),
                max_leverage=_number(
                    tier,
                    "max_leverage",
                    f"{where}.max_leverage",
                    default=None,
                    minimum=0,
                    strict=True,
                ),
            )
        )
    try:
        return family.tier_table(raw)
    except TierTableError as exc:
        field = _TIER_FIELD.get(exc.field, exc.field)
        raise UserInputError(f"{path}.tiers[{exc.tier}].{field}", exc.problem) from None


def _no_duplicates(positions: tuple[Position, ...]) -> None:
    seen: dict[tuple[str, Side], int] = {}
    for index, position in enumerate(positions):
        key = (position.symbol, position.side)
        if key in seen:
            raise UserInputError(
                f"positions[{index}]",
                f"a second {position.side} position in {position.symbol} (first at positions[{seen[key]}]);"
                " an account holds one position a side per symbol",
            )
        seen[key] = index
    modes: dict[str, MarginMode] = {}
    for index, position in enumerate(positions):
        mode = modes.setdefault(position.symbol, position.margin_mode)
        if mode is not position.margin_mode:
            raise UserInputError(
                f"positions[{index}].margin_mode",
                f"{position.symbol} is {mode} in another position; a symbol has one margin mode",
            )


# --- small typed readers ---------------------------------------------------------------------------


def _missing(path: str) -> Any:  # noqa: ANN401 - never returns; typed to sit in expressions
    raise UserInputError(path, "missing")


def _object(value: object, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise UserInputError(path, f"must be an object, got {_kind(value)}")
    return value


def _array(value: object, path: str) -> list[Any]:
    if not isinstance(value, list):
        raise UserInputError(path, f"must be a list, got {_kind(value)}")
    return value


def _string(obj: dict[str, Any], key: str, path: str) -> str:
    if key not in obj:
        _missing(path)
    value = obj[key]
    if not isinstance(value, str) or not value.strip():
        raise UserInputError(path, f"must be a non-empty string, got {_kind(value)}")
    return value


_E = TypeVar("_E", Side, MarginMode)


def _choice(obj: dict[str, Any], key: str, path: str, kind: type[_E], default: _E | None = None) -> _E:
    if key not in obj:
        if default is None:
            _missing(path)
        return default  # type: ignore[return-value]  # None was ruled out just above
    value = obj[key]
    try:
        return kind(value)
    except ValueError:
        allowed = " or ".join(repr(member.value) for member in kind)
        raise UserInputError(path, f"must be {allowed}, got {value!r}") from None


_REQUIRED: Any = object()


def _number(
    obj: dict[str, Any],
    key: str,
    path: str,
    *,
    default: Any = _REQUIRED,  # noqa: ANN401 - a float, None, or the "required" marker
    minimum: float | None = None,
    strict: bool = False,
) -> Any:  # noqa: ANN401 - float, or the default (None) when one is given
    if key not in obj or obj[key] is None:
        if default is _REQUIRED:
            _missing(path)
        return default
    value = _as_number(obj[key], path)
    if minimum is not None and (value <= minimum if strict else value < minimum):
        relation = ">" if strict else ">="
        raise UserInputError(path, f"must be {relation} {minimum:g}, got {value:g}")
    return value


def _as_number(value: object, path: str) -> float:
    """A JSON number, or a numeric string as exchanges send them; never a bool, NaN or infinity."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise UserInputError(path, f"must be a number, got {_kind(value)}")
    try:
        number = float(value)
    except ValueError:
        raise UserInputError(path, f"must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise UserInputError(path, f"must be a finite number, got {value!r}")
    return number


def _kind(value: object) -> str:
    names = {
        dict: "an object",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        type(None): "null",
    }
    return names.get(type(value), f"{type(value).__name__} {value!r}")


def _no_unknown(obj: dict[str, Any], known: set[str], path: str) -> None:
    for key in obj:
        if key not in known:
            where = f"{path}.{key}" if path else key
            raise UserInputError(where, f"unknown key (known: {', '.join(sorted(known))})")


# --- results ---------------------------------------------------------------------------------------


def run_calc(request: CalcRequest) -> dict[str, Any]:
    """Assess the request and return the JSON-ready result."""
    assessment = assess(request.account, request.thresholds)
    return result_document(request, assessment)


def result_document(request: CalcRequest, assessment: Assessment) -> dict[str, Any]:
    """The ``calc --json`` document of ``assessment``."""
    target = request.target
    ratio = assessment.margin_ratio
    document: dict[str, Any] = {
        "exchange": request.family.exchange.value,
        "margin_balance": assessment.margin_balance,
        "maintenance_margin": assessment.maintenance_margin,
        "margin_ratio_pct": None if ratio is None else ratio * 100,
        "level": assessment.level.value,
        "thresholds_pct": [_pct(value) for value in assessment.thresholds],
        "target_ratio_pct": target * 100,
        "margin_to_add": account_margin_to_add(assessment, target) if ratio is not None else None,
        "positions": [position_document(assessment, item, target) for item in assessment.positions],
    }
    if assessment.drift is not None:
        document["drift_pct"] = {
            "maintenance_margin": _scaled(assessment.drift.maintenance_margin),
            "margin_balance": _scaled(assessment.drift.margin_balance),
        }
    return document


def position_document(
    assessment: Assessment, item: PositionAssessment, target: float = DEFAULT_TARGET
) -> dict[str, Any]:
    """The JSON-ready figures of one assessed position (``calc --json``, ``status --json``)."""
    position = item.position
    liquidation = item.liquidation_price
    isolated = position.margin_mode is MarginMode.ISOLATED
    return {
        "symbol": position.symbol,
        "side": position.side.value,
        "margin_mode": position.margin_mode.value,
        "contracts": position.contracts,
        "mark_price": position.mark_price,
        "notional": item.notional,
        "tier": item.tier,
        "maintenance_margin_rate": item.maintenance_margin_rate,
        "maintenance_amount": item.maintenance_amount,
        "maintenance_margin": item.maintenance_margin,
        "unrealized_pnl": item.unrealized_pnl,
        "liquidation_price": liquidation,
        "liquidation_distance_pct": (
            None
            if liquidation is None
            else abs(position.mark_price - liquidation) / position.mark_price * 100
        ),
        "threshold_prices": {
            _pct(threshold): price
            for threshold, price in zip(assessment.thresholds, item.threshold_prices, strict=True)
        },
        "margin_ratio_pct": _scaled(item.margin_ratio) if isolated else None,
        "level": item.level.value if item.level is not None else None,
        "margin_to_add": isolated_margin_to_add(item, target)
        if isolated and item.margin_ratio is not None
        else None,
        "close_fraction": None if isolated else close_fraction(assessment, item, target),
    }


def pretrade_document(check: PreTradeCheck) -> dict[str, Any]:
    """The ``calc --json`` document of a pre-trade check."""
    trade = check.trade
    return {
        "symbol": trade.symbol,
        "side": trade.side.value,
        "margin_mode": trade.margin_mode.value,
        "entry_price": trade.entry_price,
        "contracts": trade.contracts,
        "leverage": trade.leverage,
        "stop_loss": trade.stop_loss,
        "notional": check.notional,
        "initial_margin": check.initial_margin,
        "tier": check.tier,
        "max_leverage": check.max_leverage,
        "leverage_allowed": check.leverage_allowed,
        "maintenance_margin": check.maintenance_margin,
        "liquidation_price": check.liquidation_price,
        "stop_before_liquidation": check.stop_before_liquidation,
        "buffer": check.buffer,
        "buffer_pct": check.buffer_pct,
        "loss_at_stop": check.loss_at_stop,
        "margin_ratio_at_stop_pct": _scaled(check.margin_ratio_at_stop),
    }


def planned_trade(
    *,
    exchange: str,
    symbol: str,
    side: str,
    entry: float,
    size: float,
    leverage: float,
    stop_loss: float,
    wallet: float | None,
    margin_mode: str | None,
) -> PlannedTrade:
    """Build a ``PlannedTrade`` from ``calc`` flags; ``UserInputError`` names the flag at fault."""
    try:
        family = FAMILIES[Exchange(exchange)]
    except ValueError:
        raise UserInputError("--exchange", f"unknown exchange {exchange!r}") from None
    tiers = bundled_tiers(symbol) if family.exchange is Exchange.BINANCEUSDM else None
    if tiers is None:
        covered = ", ".join(bundled_symbols())
        raise UserInputError(
            "--symbol", f"no bundled brackets for {symbol!r} (covered: {covered}); use --input"
        )
    checks = {"--entry": entry, "--size": size}
    for flag, value in checks.items():
        if not (math.isfinite(value) and value > 0):
            raise UserInputError(flag, f"must be a number > 0, got {value:g}")
    mode = (
        MarginMode(margin_mode)
        if margin_mode
        else (MarginMode.CROSS if wallet is not None else MarginMode.ISOLATED)
    )
    try:
        return PlannedTrade(
            symbol=symbol,
            side=Side(side),
            entry_price=entry,
            contracts=size,
            leverage=leverage,
            stop_loss=stop_loss,
            tiers=tiers,
            wallet=wallet,
            margin_mode=mode,
        )
    except PositionError as exc:
        raise UserInputError("--" + exc.field.replace("_", "-"), exc.problem) from None


def run_pretrade(trade: PlannedTrade) -> dict[str, Any]:
    """Check ``trade`` and return the JSON-ready result."""
    return pretrade_document(check_trade(trade))


def _pct(ratio: float) -> str:
    return f"{ratio * 100:.10g}"


def _scaled(value: float | None) -> float | None:
    return None if value is None else value * 100
