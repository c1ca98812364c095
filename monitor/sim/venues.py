"""What the simulator's other exchange personalities share: accounts, tiers, figures, replies.

Each personality (``bybit``, ``okx``, ``coinm``, ``hyperliquid``) holds its own accounts of
``VenueAccount`` and computes their figures here, on its own ``Model`` of a position, at the marks of the
Binance markets (``BTCUSDT`` drives Bybit ``BTCUSDT``, OKX ``BTC-USDT-SWAP``, COIN-M ``BTCUSD_PERP`` and
Hyperliquid ``BTC``), so the scenarios move every venue's accounts together:

    margin balance = wallet + unrealized PnL of the cross positions
    margin ratio R = margin balance / maintenance margin of the cross positions   (1.0 = liquidation)

Like ``accounts.py`` this is written independently of ``monitor.risk`` so tests can hold the daemon
against it. Liquidation prices are found by bisection on "margin balance = maintenance margin" with the
account's other positions held at their marks, which works for every venue's margin rule alike.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from aiohttp import web

from monitor.sim.accounts import ApiPermissions, Level, level_of
from monitor.sim.binance import DROP_FIELD

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence

    from monitor.sim.faults import Fault

    VenueHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]

HedgeSide = Literal["long", "short"]


@dataclass(frozen=True, slots=True)
class Tier:
    """One maintenance-margin tier: sizes in (``floor``, ``cap``] use ``mmr`` and ``deduction``.

    The size is what the venue keys its tiers by: notional in USDT (Bybit), contracts (OKX), notional in
    coin (Binance COIN-M). ``deduction`` is Bybit's ``mmDeduction`` / Binance's ``cum`` (0 on OKX).
    """

    number: int
    floor: float
    cap: float
    mmr: float
    imr: float
    max_leverage: float
    deduction: float = 0.0


def build_tiers(rows: Sequence[tuple[float, float, float]], *, deduct: bool) -> tuple[Tier, ...]:
    """Tiers from ``(cap, maintenance rate, max leverage)`` rows; floors are the previous caps.

    With ``deduct`` the deduction follows ``d_b = d_{b-1} + floor_b * (mmr_b - mmr_{b-1})`` so the
    maintenance margin is continuous at the edges; without it the rate applies to the whole size.
    """
    tiers: list[Tier] = []
    floor, previous_rate, deduction = 0.0, 0.0, 0.0
    for number, (cap, rate, leverage) in enumerate(rows, start=1):
        if deduct:
            deduction += floor * (rate - previous_rate)
        tiers.append(Tier(number, floor, cap, rate, 1.0 / leverage, leverage, round(deduction, 8)))
        floor, previous_rate = cap, rate
    return tuple(tiers)


def tier_for(tiers: Sequence[Tier], size: float) -> Tier:
    """The tier holding ``|size|`` (its cap included, as a risk limit is "up to"); the last beyond all."""
    magnitude = abs(size)
    for tier in tiers:
        if magnitude <= tier.cap:
            return tier
    return tiers[-1]


@dataclass(frozen=True, slots=True)
class VenuePosition:
    """A position on one of the personality venues.

    ``symbol`` is the Binance USDⓈ-M symbol whose mark drives it (``BTCUSDT``); each personality shows
    it under its own instrument id. ``size`` is signed (negative: short) in the venue's own unit: coin
    on Bybit and Hyperliquid, contracts on OKX and COIN-M. ``isolated_margin`` is ``None`` for a cross
    position. ``hedge_side`` is ``None`` in one-way mode.
    """

    symbol: str
    size: float
    entry_price: float
    isolated_margin: float | None = None
    leverage: float = 10.0
    hedge_side: HedgeSide | None = None

    @property
    def isolated(self) -> bool:
        """Whether the position is isolated (its own margin) rather than cross."""
        return self.isolated_margin is not None


@dataclass(slots=True)
class VenueAccount:
    """An account of a personality venue. Mutable: tests move its money.

    ``api_key`` is the wallet address on Hyperliquid (read without keys). ``wallet`` is the cross wallet
    in the settle currency (USDT; USDC on Hyperliquid). COIN-M margins each coin separately: ``wallets``
    holds its cross wallet per margin coin (``{"BTC": 1.0}``) and ``wallet`` is unused. ``permissions``:
    what the key may do, reported in the venue's own shape (read-only and IP-restricted by default).
    """

    api_key: str
    secret: str
    name: str
    wallet: float
    positions: list[VenuePosition] = field(default_factory=list)
    passphrase: str = ""
    wallets: dict[str, float] = field(default_factory=dict)
    permissions: ApiPermissions = field(default_factory=ApiPermissions)


@dataclass(frozen=True, slots=True)
class Evaluation:
    """A position at one price: signed notional (settle currency), tier, MM, IM and unrealized PnL."""

    notional: float
    tier: Tier
    maintenance_margin: float
    initial_margin: float
    unrealized_pnl: float


class Model(Protocol):
    """How a venue values a position at a price (linear, inverse, tiered by notional or contracts)."""

    def evaluate(self, position: VenuePosition, price: float) -> Evaluation:
        """The position's figures at ``price``."""
        ...


@dataclass(frozen=True, slots=True)
class VenuePositionFigures:
    """The simulator's figures for one position at the current marks (amounts in the settle currency)."""

    position: VenuePosition
    mark_price: float
    notional: float
    tier: Tier
    maintenance_margin: float
    initial_margin: float
    unrealized_pnl: float
    liquidation_price: float | None


@dataclass(frozen=True, slots=True)
class VenueFigures:
    """The simulator's truth for an account (or, on COIN-M, for one margin coin of it).

    ``margin_balance``, ``maintenance_margin``, ``margin_ratio`` and ``level`` cover the cross positions;
    ``equity`` adds the isolated margins and their PnL; ``total_maintenance_margin`` every position.
    """

    asset: str
    wallet: float
    unrealized_pnl: float
    margin_balance: float
    maintenance_margin: float
    initial_margin: float
    margin_ratio: float | None
    level: Level
    equity: float
    total_maintenance_margin: float
    total_initial_margin: float
    positions: tuple[VenuePositionFigures, ...]


def _surplus(model: Model, position: VenuePosition, price: float, base: float, other_mm: float) -> float:
    evaluation = model.evaluate(position, price)
    return base + evaluation.unrealized_pnl - other_mm - evaluation.maintenance_margin


def liquidation_price(
    model: Model, position: VenuePosition, mark: float, base: float, other_mm: float
) -> float | None:
    """The price at which margin balance equals maintenance margin, the other positions held fixed.

    ``base`` is the wallet plus the other positions' PnL (the isolated margin alone for an isolated
    position). ``None`` when no positive price liquidates the position.
    """
    if position.size == 0.0:
        return None
    long = position.size > 0.0
    low, high = mark * 1e-9, mark

    def solvent(price: float) -> bool:
        return _surplus(model, position, price, base, other_mm) > 0.0

    if long:
        if solvent(low):
            return None
        for _ in range(80):  # the liquidation price may lie above the mark when the account is under water
            if solvent(high):
                break
            high *= 2.0
        else:
            return None
    else:
        if not solvent(low):
            return None
        for _ in range(80):
            if not solvent(high):
                break
            high *= 2.0
        else:
            return None
    for _ in range(200):
        middle = (low + high) / 2.0
        if solvent(middle) == long:
            high = middle
        else:
            low = middle
        if high - low <= high * 1e-15:
            break
    return (low + high) / 2.0


def compute_venue_figures(
    model: Model, asset: str, wallet: float, positions: Iterable[VenuePosition], marks: Mapping[str, float]
) -> VenueFigures:
    """Every figure of a wallet and its positions at ``marks`` (Binance symbol -> mark price)."""
    held = list(positions)
    evaluated = [(p, marks[p.symbol], model.evaluate(p, marks[p.symbol])) for p in held]
    cross = [(p, e) for p, _, e in evaluated if not p.isolated]
    cross_mm = sum(e.maintenance_margin for _, e in cross)
    cross_upnl = sum(e.unrealized_pnl for _, e in cross)
    figures: list[VenuePositionFigures] = []
    for position, mark, evaluation in evaluated:
        if position.isolated_margin is not None:
            liquidation = liquidation_price(model, position, mark, position.isolated_margin, 0.0)
        else:
            base = wallet + cross_upnl - evaluation.unrealized_pnl
            liquidation = liquidation_price(
                model, position, mark, base, cross_mm - evaluation.maintenance_margin
            )
        figures.append(
            VenuePositionFigures(
                position,
                mark,
                evaluation.notional,
                evaluation.tier,
                evaluation.maintenance_margin,
                evaluation.initial_margin,
                evaluation.unrealized_pnl,
                liquidation,
            )
        )
    margin_balance = wallet + cross_upnl
    ratio = margin_balance / cross_mm if cross_mm > 0.0 else None
    isolated_equity = sum(
        (p.isolated_margin or 0.0) + e.unrealized_pnl for p, _, e in evaluated if p.isolated
    )
    return VenueFigures(
        asset=asset,
        wallet=wallet,
        unrealized_pnl=cross_upnl,
        margin_balance=margin_balance,
        maintenance_margin=cross_mm,
        initial_margin=sum(e.initial_margin for _, e in cross),
        margin_ratio=ratio,
        level=level_of(ratio),
        equity=margin_balance + isolated_equity,
        total_maintenance_margin=sum(f.maintenance_margin for f in figures),
        total_initial_margin=sum(f.initial_margin for f in figures),
        positions=tuple(figures),
    )


# --- HTTP helpers -----------------------------------------------------------------------------------


class VenueError(Exception):
    """An error answer in a venue's own shape: HTTP ``status`` and a JSON ``body``."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(str(body))
        self.status = status
        self.body = body

    def response(self) -> web.Response:
        """The error as the venue sends it."""
        return web.json_response(self.body, status=self.status)


def guarded(handler: VenueHandler) -> VenueHandler:
    """``handler`` with ``VenueError`` turned into its response."""

    @functools.wraps(handler)
    async def wrapper(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except VenueError as error:
            return error.response()

    return wrapper


def _drop(data: Any, name: str) -> Any:  # noqa: ANN401 - any JSON value
    if isinstance(data, dict):
        return {k: _drop(v, name) for k, v in data.items() if k != name}
    if isinstance(data, list):
        return [_drop(item, name) for item in data]
    return data


def reply(request: web.Request, data: Any) -> web.Response:  # noqa: ANN401 - any JSON value
    """``data`` as JSON, minus the field a ``missing_field`` fault drops (at any depth)."""
    drop = request.get(DROP_FIELD)
    return web.json_response(data if drop is None else _drop(data, drop))


def decimal(value: float, places: int = 8) -> str:
    """A fixed-point string with trailing zeros trimmed (``"0.5"``, ``"60000"``)."""
    text = f"{value:.{places}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in {"-0", ""} else text


class Personality(Protocol):
    """What ``SimServer`` asks of a personality: its routes, its path prefixes, its fault answers."""

    prefixes: tuple[str, ...]
    """Request paths that belong to this venue (faults there are answered in its shape)."""

    def add_routes(self, app: web.Application) -> None:
        """Register the venue's routes on ``app``."""
        ...

    def fault_response(self, fault: Fault) -> web.Response | None:
        """The venue's own answer to ``fault`` (rate limits, bans, clock errors), or ``None``.

        ``None`` leaves the fault to the server's generic answer (5xx, hangs) or to the handler
        (malformed JSON, missing fields).
        """
        ...
