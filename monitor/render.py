"""Plain-text tables for people at a terminal (``calc``; later ``status``)."""

from __future__ import annotations

from typing import Any


def number(value: float | None, *, digits: int = 2) -> str:
    """A figure with thousands separators (small coin amounts keep six decimals); ``-`` for none."""
    if value is None:
        return "-"
    if 0 < abs(value) < 1:
        digits = max(digits, 6)
    return f"{value:,.{digits}f}"


def price(value: float | None) -> str:
    """A price with as many decimals as its size needs (BTC 2, DOGE 6); ``-`` for none."""
    if value is None:
        return "-"
    magnitude = abs(value)
    digits = 2 if magnitude >= 1000 else 4 if magnitude >= 1 else 6 if magnitude >= 0.001 else 10
    return f"{value:,.{digits}f}"


def percent(value: float | None) -> str:
    """A percentage with one decimal; ``-`` for none."""
    return "-" if value is None else f"{value:,.1f}%"


def table(header: list[str], rows: list[list[str]]) -> str:
    """Columns padded to their widest cell, text left and figures right."""
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]
    numeric = [all(_numeric(row[i]) for row in rows) and bool(rows) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        parts = [
            cell.rjust(width) if right else cell.ljust(width)
            for cell, width, right in zip(cells, widths, numeric, strict=True)
        ]
        return "  ".join(parts).rstrip()

    return "\n".join([line(header), line(["-" * width for width in widths]), *(line(row) for row in rows)])


def _numeric(cell: str) -> bool:
    stripped = cell.replace(",", "").replace("%", "").replace(".", "").replace("-", "").replace("x", "")
    return stripped.isdigit() or cell == "-"


def calc_report(document: dict[str, Any]) -> str:
    """The human form of a ``calc`` result document."""
    ratio = document["margin_ratio_pct"]
    lines = [
        f"exchange            {document['exchange']}",
        f"margin balance      {number(document['margin_balance'])}",
        f"maintenance margin  {number(document['maintenance_margin'])}",
        f"margin ratio        {percent(ratio)}  ({document['level']})"
        + ("" if ratio is not None else "  no cross maintenance margin"),
    ]
    if document.get("margin_to_add"):
        lines.append(
            f"to reach {document['target_ratio_pct']:g}%      add {number(document['margin_to_add'])} margin,"
            " or close the fraction shown per position"
        )
    drift = document.get("drift_pct")
    if drift:
        lines.append(
            f"drift vs exchange   maintenance margin {percent(drift['maintenance_margin'])},"
            f" margin balance {percent(drift['margin_balance'])}"
        )
    thresholds = document["thresholds_pct"]
    header = [
        "symbol",
        "side",
        "mode",
        "notional",
        "tier",
        "mmr",
        "maint. margin",
        "uPnL",
        "mark",
        "liq. price",
    ]
    header += [f"@{value}%" for value in thresholds]
    header += ["own ratio", "close"]
    rows = []
    for item in document["positions"]:
        close = item["close_fraction"]
        rows.append(
            [
                item["symbol"],
                item["side"],
                item["margin_mode"],
                number(item["notional"]),
                str(item["tier"]),
                f"{item['maintenance_margin_rate'] * 100:.2f}%",
                number(item["maintenance_margin"]),
                number(item["unrealized_pnl"]),
                price(item["mark_price"]),
                price(item["liquidation_price"]),
                *(price(item["threshold_prices"][value]) for value in thresholds),
                percent(item["margin_ratio_pct"]),
                "-" if close is None else f"{close * 100:.1f}%",
            ]
        )
    return "\n".join([*lines, "", table(header, rows)])


def pretrade_report(document: dict[str, Any]) -> str:
    """The human form of a pre-trade check."""
    liquidation = document["liquidation_price"]
    buffer = document["buffer"]
    if liquidation is None:
        verdict = "no liquidation price: the stop triggers first whatever happens"
    elif document["stop_before_liquidation"]:
        verdict = (
            f"OK: the stop triggers {price(buffer)} ({document['buffer_pct']:.2f}% of entry)"
            " before liquidation"
        )
    else:
        verdict = (
            f"DANGER: liquidation comes {price(-buffer)} ({-document['buffer_pct']:.2f}% of entry)"
            " before the stop; the stop would never fill"
        )
    leverage = f"{document['leverage']:g}x"
    if not document["leverage_allowed"]:
        leverage += f" (above the bracket's maximum {document['max_leverage']:g}x)"
    lines = [
        (
            f"{document['symbol']} {document['side']} {document['margin_mode']},"
            f" {document['contracts']:g} @ {price(document['entry_price'])}, {leverage}"
        ),
        f"notional            {number(document['notional'])} (tier {document['tier']})",
        f"initial margin      {number(document['initial_margin'])}",
        f"maintenance margin  {number(document['maintenance_margin'])}",
        f"liquidation price   {price(liquidation)}",
        (
            f"stop-loss           {price(document['stop_loss'])}: loses {number(document['loss_at_stop'])},"
            f" ratio then {percent(document['margin_ratio_at_stop_pct'])}"
        ),
        verdict,
    ]
    return "\n".join(lines)


def status_report(accounts: list[dict[str, Any]]) -> str:
    """The human form of ``margin-monitor status``: an account table, then each account's positions."""
    header = ["account", "exchange", "ratio", "level", "margin balance", "maint. margin", "positions", "note"]
    rows = [
        [
            item["account"],
            item["exchange"],
            percent(item["margin_ratio_pct"]),
            item["level"],
            number(item["margin_balance"]),
            number(item["maintenance_margin"]),
            str(len(item["positions"])) if item["positions"] is not None else "-",
            item.get("error") or "",
        ]
        for item in accounts
    ]
    parts = [table(header, rows)]
    for item in accounts:
        if not item["positions"]:
            continue
        thresholds = item["thresholds_pct"]
        pos_header = ["symbol", "side", "mode", "notional", "mark", "liq. price", "distance"]
        pos_header += [f"@{value}%" for value in thresholds]
        pos_rows = [
            [
                pos["symbol"],
                pos["side"],
                pos["margin_mode"],
                number(pos["notional"]),
                price(pos["mark_price"]),
                price(pos["liquidation_price"]),
                percent(pos["liquidation_distance_pct"]),
                *(price(pos["threshold_prices"][value]) for value in thresholds),
            ]
            for pos in item["positions"]
        ]
        parts.append(f"\n{item['account']}\n" + table(pos_header, pos_rows))
    return "\n".join(parts)
