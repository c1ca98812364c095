"""Pre-trade check: whether a planned stop-loss triggers before the position would be liquidated.

A stop that lies beyond the liquidation price never fills: the exchange closes the position first,
at a worse price and with a liquidation fee. Stops usually trigger on the last price and
liquidation on the mark price, which can differ by a fraction of a percent in a fast market, so the
buffer between them is worth more than zero.
"""

from __future__ import annotations

from dataclasses import dataclass

from monitor.errors import PositionError
from monitor.risk.engine import assess
from monitor.risk.model import AccountSnapshot, MarginMode, Position, Side, TierTable


@dataclass(frozen=True, slots=True)
class PlannedTrade:
    """A position not yet opened.

    With ``wallet`` left out the position is isolated with the initial margin
    ``entry * size / leverage``; with ``wallet`` given and ``margin_mode`` cross, that wallet is
    the cross wallet of an account holding only this position.
    """

    symbol: str
    side: Side
    entry_price: float
    contracts: float
    leverage: float
    stop_loss: float
    tiers: TierTable
    wallet: float | None = None
    margin_mode: MarginMode = MarginMode.ISOLATED
    contract_size: float = 1.0
    inverse: bool = False

    def __post_init__(self) -> None:
        if not self.leverage > 0:
            raise PositionError("leverage", f"must be > 0, got {self.leverage!r}")
        if not self.stop_loss > 0:
            raise PositionError("stop_loss", f"must be > 0, got {self.stop_loss!r}")
        wrong_side = (
            self.stop_loss >= self.entry_price
            if self.side is Side.LONG
            else self.stop_loss <= self.entry_price
        )
        if wrong_side:
            where = "below" if self.side is Side.LONG else "above"
            raise PositionError(
                "stop_loss", f"a {self.side} stop must lie {where} the entry {self.entry_price:g}"
            )
        if self.margin_mode is MarginMode.CROSS and self.wallet is None:
            raise PositionError("wallet", "a cross position needs the cross wallet balance")


@dataclass(frozen=True, slots=True)
class PreTradeCheck:
    """The verdict on a ``PlannedTrade``.

    ``buffer`` is how far (in price) the stop triggers before liquidation, positive when it does
    and negative when liquidation comes first; ``buffer_pct`` is that distance as a percentage of
    the entry price. ``margin_ratio_at_stop`` is the ratio the position has when the stop fires.
    """

    trade: PlannedTrade
    notional: float
    initial_margin: float
    tier: int
    maintenance_margin: float
    max_leverage: float | None
    liquidation_price: float | None
    stop_before_liquidation: bool
    buffer: float | None
    buffer_pct: float | None
    loss_at_stop: float
    margin_ratio_at_stop: float | None

    @property
    def leverage_allowed(self) -> bool:
        """Whether the bracket of this notional allows the planned leverage."""
        return self.max_leverage is None or self.trade.leverage <= self.max_leverage


def check_trade(trade: PlannedTrade) -> PreTradeCheck:
    """Check ``trade``: its liquidation price and whether its stop triggers before it."""
    size = trade.contracts * trade.contract_size
    notional = size / trade.entry_price if trade.inverse else size * trade.entry_price
    initial_margin = notional / trade.leverage
    isolated = trade.margin_mode is MarginMode.ISOLATED
    position = Position(
        symbol=trade.symbol,
        side=trade.side,
        contracts=trade.contracts,
        entry_price=trade.entry_price,
        mark_price=trade.entry_price,
        tiers=trade.tiers,
        contract_size=trade.contract_size,
        margin_mode=trade.margin_mode,
        isolated_wallet=initial_margin if isolated else None,
        inverse=trade.inverse,
    )
    account = AccountSnapshot(0.0 if isolated else (trade.wallet or 0.0), (position,))
    at_entry = assess(account, ()).positions[0]
    at_stop = assess(account.with_mark(trade.symbol, trade.stop_loss), ())
    stopped = at_stop.positions[0]
    liquidation = at_entry.liquidation_price
    if liquidation is None:
        buffer = None
        before = True
    else:
        buffer = trade.side.sign * (trade.stop_loss - liquidation)
        before = buffer > 0
    return PreTradeCheck(
        trade=trade,
        notional=notional,
        initial_margin=initial_margin,
        tier=at_entry.tier,
        maintenance_margin=at_entry.maintenance_margin,
        max_leverage=trade.tiers.tiers[at_entry.tier - 1].max_leverage,
        liquidation_price=liquidation,
        stop_before_liquidation=before,
        buffer=buffer,
        buffer_pct=None if buffer is None else buffer / trade.entry_price * 100.0,
        loss_at_stop=-stopped.unrealized_pnl,
        margin_ratio_at_stop=stopped.margin_ratio if isolated else at_stop.margin_ratio,
    )
