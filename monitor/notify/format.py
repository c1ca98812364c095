"""An alert in words: a title line and a body, as plain text and as Telegram HTML.

Every channel that shows an alert to a person uses these, so a trader reads the same thing on each:
the account, the ratio and its level against the threshold, the positions that matter (mark,
liquidation price and distance, the price at which the next threshold fires), the suggested
action, and last the alert id (so duplicates can be recognised).
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass

from monitor.alerts.model import Alert, AlertKind, PositionAtRisk, SuggestedAction

#: Positions listed at most; the rest are counted.
MAX_POSITIONS = 8

_LEVEL_MARK = {
    "ok": "✅",
    "warning": "⚠️",
    "danger": "🟠",
    "critical": "🔴",
    "liquidation": "💀",
    "blind": "🙈",
    "margin_call": "🚨",
    "key_unsafe": "🔓",
}


@dataclass(frozen=True, slots=True)
class AlertText:
    """An alert as text: ``headline`` (one line), ``lines`` (the body, one fact a line), ``footer`` (the id).

    ``mark`` is an emoji for the level; ``title`` is the mark and the headline (ntfy shows its own
    emoji from the tags, so it takes the bare headline).
    """

    mark: str
    headline: str
    lines: tuple[str, ...]
    footer: str

    @property
    def title(self) -> str:
        """The level's emoji and the headline."""
        return f"{self.mark} {self.headline}" if self.mark else self.headline

    @property
    def body(self) -> str:
        """The body and footer as one string."""
        return "\n".join((*self.lines, self.footer))

    def plain(self) -> str:
        """Title, body and footer as one plain-text message."""
        return f"{self.title}\n{self.body}"

    def html(self) -> str:
        """Title (bold), body and footer (italic) as Telegram HTML, every value escaped."""
        body = "\n".join(escape(line) for line in self.lines)
        return f"<b>{escape(self.title)}</b>\n{body}\n<i>{escape(self.footer)}</i>"


def escape(text: str) -> str:
    """``text`` safe inside Telegram HTML: ``&``, ``<`` and ``>`` become entities (quotes may stay)."""
    return html.escape(text, quote=False)


def render(alert: Alert) -> AlertText:
    """The words for ``alert``."""
    return AlertText(
        mark=_LEVEL_MARK.get(alert.level, ""),
        headline=headline(alert),
        lines=tuple(body_lines(alert)),
        footer=f"id: {alert.id}",
    )


def headline(alert: Alert) -> str:
    """One line: what happened, to which account, how bad."""
    ratio = "" if alert.margin_ratio_pct is None else f" margin ratio {pct(alert.margin_ratio_pct)}"
    where = f"{alert.account} ({alert.key})" if alert.key != alert.account else alert.account
    level = alert.level.upper().replace("_", " ")
    match alert.kind:
        case AlertKind.RECOVERED:
            text = f"{where} recovered to {alert.level}:{ratio}"
        case AlertKind.REPEAT:
            text = f"{level} still: {where}{ratio}"
        case AlertKind.FAST_FALL:
            text = f"FAST FALL: {where}{ratio}"
        case AlertKind.BLIND:
            text = f"BLIND: {where}: no fresh data"
        case AlertKind.MARGIN_CALL:
            text = f"MARGIN CALL from {alert.exchange}: {where}{ratio}"
        case AlertKind.KEY_UNSAFE:
            text = f"API KEY UNSAFE: {where}"
        case AlertKind.KEY_SAFE:
            text = f"{where}: API key fit again"
        case AlertKind.TEST:
            text = f"Test alert from margin-monitor: {where}"
        case _:
            text = f"{level}: {where}{ratio}"
    return text.rstrip(":")


def body_lines(alert: Alert) -> list[str]:
    """The facts, one a line, without the title and the id."""
    lines: list[str] = []
    if alert.summary:
        lines.append(alert.summary)
    if alert.margin_ratio_pct is not None:
        ratio = f"Margin ratio {pct(alert.margin_ratio_pct)}, level {alert.level}"
        if alert.threshold_pct is not None:
            ratio += f" (threshold {pct(alert.threshold_pct)})"
        if alert.previous_level:
            ratio += f", was {alert.previous_level}"
        lines.append(ratio)
    elif alert.previous_level:
        lines.append(f"Level {alert.level}, was {alert.previous_level}")
    if alert.margin_balance is not None and alert.maintenance_margin is not None:
        lines.append(
            f"Margin balance {money(alert.margin_balance)}, "
            f"maintenance margin {money(alert.maintenance_margin)}"
        )
    lines.extend(position_line(position) for position in alert.positions[:MAX_POSITIONS])
    if len(alert.positions) > MAX_POSITIONS:
        lines.append(f"… and {len(alert.positions) - MAX_POSITIONS} more positions")
    if alert.action is not None and (action := action_line(alert.action)):
        lines.append(action)
    lines.append(f"Account {alert.account} on {alert.exchange}")
    return lines


def position_line(position: PositionAtRisk) -> str:
    """``BTC/USDT:USDT long cross: mark 61,000, liquidation 55,000 (9.8% away); ratio 120.0% at 58,500``."""
    parts = [f"{position.symbol} {position.side} {position.margin_mode}: mark {price(position.mark_price)}"]
    if position.liquidation_price is None:
        parts.append("no liquidation price")
    else:
        liquidation = f"liquidation {price(position.liquidation_price)}"
        if position.liquidation_distance_pct is not None:
            liquidation += f" ({pct(position.liquidation_distance_pct)} away)"
        parts.append(liquidation)
    text = ", ".join(parts)
    if position.next_threshold_pct is not None and position.next_threshold_price is not None:
        text += f"; ratio {pct(position.next_threshold_pct)} at {price(position.next_threshold_price)}"
    return text


def action_line(action: SuggestedAction) -> str:
    """What to do to get back to the target ratio, or ``""`` when nothing is known."""
    target = pct(action.target_ratio_pct)
    options: list[str] = []
    if action.margin_to_add is not None and action.margin_to_add > 0:
        options.append(f"add {money(action.margin_to_add)} margin")
    if action.close_symbol is not None and action.close_fraction is not None:
        options.append(f"close {pct(action.close_fraction * 100)} of {action.close_symbol}")
    if not options:
        return ""
    return f"To return to {target}: {' or '.join(options)}"


def pct(value: float) -> str:
    """A percentage with one decimal: ``128.4%``."""
    return f"{value:.1f}%"


def money(value: float) -> str:
    """An amount with two decimals and thousands separators: ``10,234.50``."""
    return f"{value:,.2f}"


def price(value: float, significant: int = 8) -> str:
    """A price with ``significant`` digits, thousands separators, no exponent, no trailing zeros.

    ``95,000.12``, ``0.00001234``: coins are quoted from six figures down to a fraction of a cent.
    """
    if value == 0 or not math.isfinite(value):
        return f"{value:g}"
    magnitude = math.floor(math.log10(abs(value)))
    decimals = min(12, max(0, significant - 1 - magnitude))
    text = f"{value:,.{decimals}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text
