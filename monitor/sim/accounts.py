"""Simulated accounts and the simulator's own, deliberately plain, computation of their figures.

This code is written independently of ``monitor.risk`` so tests can hold the daemon's figures against it:

    MM(position)  = |notional at mark| * mmr_b - cum_b   (b: the bracket whose [floor, cap) holds |notional|)
    margin balance (cross) = cross wallet + unrealized PnL of the cross positions
    margin ratio  R = margin balance / maintenance margin   (1.0 = 100% = liquidation)
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal

from monitor.sim.markets import Bracket, bracket_for, catalog, markets, scaled_brackets

PositionSide = Literal["BOTH", "LONG", "SHORT"]

DEMO_API_KEY = "margin-monitor-sim-demo-key"
"""The demo account's API key. Not a secret in any sense: it only opens the local simulator."""
DEMO_SECRET = "margin-monitor-sim-demo-secret"  # noqa: S105 - a published demo credential for the simulator
"""The demo account's HMAC secret, published for the same reason."""


class Level(StrEnum):
    """Alert levels on the project's convention (default thresholds 150/130/120%)."""

    OK = "ok"
    WARNING = "warning"
    DANGER = "danger"
    CRITICAL = "critical"
    LIQUIDATION = "liquidation"


def level_of(ratio: float | None) -> Level:
    """The level of a margin ratio R (``None``: no maintenance margin, nothing at risk)."""
    if ratio is None or ratio > 1.5:
        return Level.OK
    if ratio > 1.3:
        return Level.WARNING
    if ratio > 1.2:
        return Level.DANGER
    if ratio > 1.0:
        return Level.CRITICAL
    return Level.LIQUIDATION


@dataclass(frozen=True, slots=True)
class SimPosition:
    """A position as Binance holds it: ``amount`` signed like ``positionAmt`` (negative is short).

    ``isolated_wallet`` is ``None`` for a cross position. ``side`` is ``BOTH`` in one-way mode and
    ``LONG``/``SHORT`` in hedge mode (``dualSidePosition``).
    """

    symbol: str
    amount: float
    entry_price: float
    side: PositionSide = "BOTH"
    isolated_wallet: float | None = None
    leverage: int = 20

    @property
    def isolated(self) -> bool:
        """Whether the position is isolated (its own wallet) rather than cross."""
        return self.isolated_wallet is not None


@dataclass(frozen=True, slots=True)
class ApiPermissions:
    """What an API key may do, as Binance's ``/sapi/v1/account/apiRestrictions`` flags.

    The default is the key a monitor should hold: read-only, restricted to an IP. Every personality
    reports the same flags in its own shape (Bybit's ``/v5/user/query-api``, OKX's ``perm``).
    """

    enable_reading: bool = True
    enable_futures: bool = False
    enable_withdrawals: bool = False
    enable_spot_and_margin_trading: bool = False
    enable_margin: bool = False
    enable_internal_transfer: bool = False
    ip_restrict: bool = True

    @property
    def can_trade(self) -> bool:
        """Whether any trading flag is on."""
        return self.enable_futures or self.enable_spot_and_margin_trading or self.enable_margin


@dataclass(slots=True)
class SimAccount:
    """One account of the simulated exchange, keyed by its API key. Mutable: tests move its money.

    ``notional_coef`` scales every bracket of the account (Binance's per-account ``notionalCoef``).
    """

    api_key: str
    secret: str
    name: str
    cross_wallet: float
    positions: list[SimPosition] = field(default_factory=list)
    dual_side_position: bool = False
    multi_assets: bool = False
    notional_coef: float = 1.0
    permissions: ApiPermissions = field(default_factory=ApiPermissions)


@dataclass(frozen=True, slots=True)
class PositionFigures:
    """The simulator's figures for one position at the current marks."""

    position: SimPosition
    mark_price: float
    notional: float
    bracket: Bracket
    maintenance_margin: float
    unrealized_pnl: float
    liquidation_price: float | None


@dataclass(frozen=True, slots=True)
class AccountFigures:
    """The simulator's truth for an account.

    ``margin_balance``, ``maintenance_margin``, ``margin_ratio`` and ``level`` cover the cross
    positions (the scope of cross liquidation); ``total_*`` cover every position, as Binance's
    ``totalMaintMargin``/``totalMarginBalance`` do.
    """

    cross_wallet: float
    cross_unrealized_pnl: float
    margin_balance: float
    maintenance_margin: float
    margin_ratio: float | None
    level: Level
    total_wallet_balance: float
    total_unrealized_pnl: float
    total_margin_balance: float
    total_maintenance_margin: float
    positions: tuple[PositionFigures, ...]


def position_maintenance_margin(brackets: tuple[Bracket, ...], notional: float) -> tuple[Bracket, float]:
    """The bracket holding ``notional`` and the position's maintenance margin in it."""
    bracket = bracket_for(brackets, notional)
    return bracket, abs(notional) * bracket.mmr - bracket.cum


def _liquidation_price(
    position: SimPosition, brackets: tuple[Bracket, ...], wallet: float, other_mm: float, other_upnl: float
) -> float | None:
    # Binance's one-way formula, solved per bracket and kept where Q*LP falls inside that bracket.
    s = 1.0 if position.amount > 0 else -1.0
    q = abs(position.amount)
    for bracket in brackets:
        denominator = q * bracket.mmr - s * q
        if denominator == 0.0:
            continue
        price = (wallet - other_mm + other_upnl + bracket.cum - s * q * position.entry_price) / denominator
        if price > 0.0 and bracket.floor <= q * price < bracket.cap:
            return price
    return None


def compute_figures(account: SimAccount, marks: dict[str, float]) -> AccountFigures:
    """Every figure of ``account`` at ``marks`` (Binance symbol -> mark price)."""
    partial: list[tuple[SimPosition, float, float, Bracket, float, float]] = []
    for position in account.positions:
        mark = marks[position.symbol]
        notional = position.amount * mark
        bracket, mm = position_maintenance_margin(
            scaled_brackets(position.symbol, account.notional_coef), notional
        )
        upnl = position.amount * (mark - position.entry_price)
        partial.append((position, mark, notional, bracket, mm, upnl))

    cross_mm = sum(p[4] for p in partial if not p[0].isolated)
    cross_upnl = sum(p[5] for p in partial if not p[0].isolated)
    positions: list[PositionFigures] = []
    for position, mark, notional, bracket, mm, upnl in partial:
        brackets = scaled_brackets(position.symbol, account.notional_coef)
        if position.isolated_wallet is not None:
            liquidation = _liquidation_price(position, brackets, position.isolated_wallet, 0.0, 0.0)
        else:
            liquidation = _liquidation_price(
                position, brackets, account.cross_wallet, cross_mm - mm, cross_upnl - upnl
            )
        positions.append(PositionFigures(position, mark, notional, bracket, mm, upnl, liquidation))

    margin_balance = account.cross_wallet + cross_upnl
    ratio = margin_balance / cross_mm if cross_mm > 0.0 else None
    isolated_wallets = sum(p.isolated_wallet or 0.0 for p in account.positions)
    total_upnl = sum(p.unrealized_pnl for p in positions)
    total_wallet = account.cross_wallet + isolated_wallets
    return AccountFigures(
        cross_wallet=account.cross_wallet,
        cross_unrealized_pnl=cross_upnl,
        margin_balance=margin_balance,
        maintenance_margin=cross_mm,
        margin_ratio=ratio,
        level=level_of(ratio),
        total_wallet_balance=total_wallet,
        total_unrealized_pnl=total_upnl,
        total_margin_balance=total_wallet + total_upnl,
        total_maintenance_margin=sum(p.maintenance_margin for p in positions),
        positions=tuple(positions),
    )


def demo_account() -> SimAccount:
    """The demo account: 6,000 USDT cross wallet, a BTC long and an ETH short, one-way mode.

    At the initial marks (BTC 60,000, ETH 3,000) its ratio is about 8.7 (870%); the ``crash`` scenario
    moves both marks against it until it passes every level.
    """
    return SimAccount(
        api_key=DEMO_API_KEY,
        secret=DEMO_SECRET,
        name="demo",
        cross_wallet=6_000.0,
        positions=[
            SimPosition("BTCUSDT", 1.5, 59_500.0, leverage=20),
            SimPosition("ETHUSDT", -25.0, 3_020.0, leverage=20),
        ],
    )


#: ``bulk_accounts(n, positions=k)`` with k > 1: the symbols, in order, each position's share of the
#: account's notional and its sign (BTC long, ETH short, SOL long, BNB long, XRP short).
BULK_BOOK: tuple[tuple[str, float, float], ...] = (
    ("BTCUSDT", 0.40, 1.0),
    ("ETHUSDT", 0.20, -1.0),
    ("SOLUSDT", 0.15, 1.0),
    ("BNBUSDT", 0.15, 1.0),
    ("XRPUSDT", 0.10, -1.0),
)
#: Margin ratio of a multi-position bulk account at the initial marks: 250% to 260% (``ok``).
BULK_RATIO = 2.5
BULK_RATIO_SPREAD = 0.1


def bulk_accounts(count: int, prefix: str = "sim-bulk", positions: int = 1) -> list[SimAccount]:
    """``count`` small accounts with deterministic keys ``{prefix}-key-000000`` and derived secrets.

    Cheap to build (for memory benchmarks). With ``positions=1`` each holds one cross position,
    alternating BTC long, ETH short and SOL long, sized by its index so the accounts do not all sit
    at the same ratio. With ``positions`` from 2 to 5, each holds that many cross positions from
    ``BULK_BOOK`` (BTC first, then ETH, SOL, BNB, XRP: a simulator holding these accounts lists the
    extra symbols), 10,000 to 19,900 USDT of notional opened at the initial marks (every position in
    its first bracket), and a cross wallet that puts the account at ``BULK_RATIO`` plus up to
    ``BULK_RATIO_SPREAD`` by index. Every account holds BTC, so one BTC move reaches all of them.
    """
    if not 1 <= positions <= len(BULK_BOOK):
        raise ValueError(f"positions must be 1 to {len(BULK_BOOK)}, got {positions}")
    if positions > 1:
        return [_bulk_book_account(index, prefix, positions) for index in range(count)]
    symbols = tuple(markets())
    accounts: list[SimAccount] = []
    for index in range(count):
        key = f"{prefix}-key-{index:06d}"
        secret = hashlib.sha256(key.encode()).hexdigest()
        symbol = symbols[index % len(symbols)]
        spec = markets()[symbol]
        mark = spec.initial_mark
        notional = 5_000.0 + 50.0 * (index % 100)
        amount = round(notional / mark, spec.quantity_precision) * (-1.0 if symbol == "ETHUSDT" else 1.0)
        accounts.append(
            SimAccount(
                api_key=key,
                secret=secret,
                name=f"{prefix}-{index:06d}",
                cross_wallet=500.0 + 10.0 * (index % 50),
                positions=[SimPosition(symbol, amount, mark)],
            )
        )
    return accounts


def _bulk_book_account(index: int, prefix: str, positions: int) -> SimAccount:
    key = f"{prefix}-key-{index:06d}"
    notional = 10_000.0 + 100.0 * (index % 100)
    book: list[SimPosition] = []
    for symbol, share, sign in BULK_BOOK[:positions]:
        spec = catalog()[symbol]
        amount = round(notional * share / spec.initial_mark, spec.quantity_precision)
        book.append(SimPosition(symbol, sign * amount, spec.initial_mark, leverage=75))
    account = SimAccount(
        api_key=key,
        secret=hashlib.sha256(key.encode()).hexdigest(),
        name=f"{prefix}-{index:06d}",
        cross_wallet=0.0,
        positions=book,
    )
    # At the initial marks unrealized PnL is nil, so the ratio is the wallet over the maintenance margin.
    marks = {position.symbol: catalog()[position.symbol].initial_mark for position in book}
    ratio = BULK_RATIO + BULK_RATIO_SPREAD * (index % 50) / 50
    account.cross_wallet = round(ratio * compute_figures(account, marks).maintenance_margin, 2)
    return account


def bulk_secret(api_key: str) -> str:
    """The secret ``bulk_accounts`` gives the account with ``api_key``."""
    return hashlib.sha256(api_key.encode()).hexdigest()
