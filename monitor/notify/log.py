"""The ``log`` channel: every alert as one ``event="alert"`` line in the daemon's own log.

Always on. It is the record of what the daemon decided to tell people, whatever became of the other
channels, and under systemd it lands in the journal with everything else.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import structlog

from monitor.alerts.model import AlertKind, severity

if TYPE_CHECKING:
    from monitor.alerts.model import Alert

log = structlog.get_logger("margin_monitor.alerts")

#: Kinds that report trouble arriving; at ``WARNING_FROM`` or worse their line is a warning.
URGENT_KINDS = frozenset(
    {AlertKind.FIRING, AlertKind.FAST_FALL, AlertKind.BLIND, AlertKind.MARGIN_CALL, AlertKind.KEY_UNSAFE}
)
WARNING_FROM = "danger"


class LogChannel:
    """Logs each alert as one structured line; it never fails.

    The line carries the alert's fields flattened: ``alert_id`` (named as in the dispatcher's
    ``alert.delivered`` lines, so one ``jq`` filter follows an alert through both), ``kind``,
    ``account``, ``exchange``, ``key`` (when it is a position rather than the account), ``level``,
    ``previous_level``, the figures, ``summary``, ``positions`` (a list of dicts) and ``action``
    (a dict). Fields without a value are left out. ``log_level`` is ``warning`` for a firing,
    fast-fall, blind, margin-call or key-unsafe alert at ``danger`` or worse, ``info`` otherwise.
    """

    type = "log"
    #: A burst's lines are written in order either way; a window of them is marked delivered in one
    #: outbox commit instead of one commit a line (a thousand accounts crossing at once).
    max_in_flight = 50

    def __init__(
        self, name: str = "log", min_level: str = "ok", accounts: frozenset[str] | None = None
    ) -> None:
        self.name = name
        self.min_level = min_level
        self.accounts = accounts

    async def start(self) -> None:
        """Nothing to open."""

    async def close(self) -> None:
        """Nothing to release."""

    async def send(self, alert: Alert) -> None:
        """Log ``alert`` as one line."""
        # Let the other channels' workers run first: a log line can wait a moment, a push should not.
        await asyncio.sleep(0)
        fields = alert_fields(alert)
        if alert.kind in URGENT_KINDS and alert.severity >= severity(WARNING_FROM):
            log.warning("alert", **fields)
        else:
            log.info("alert", **fields)


def alert_fields(alert: Alert) -> dict[str, Any]:
    """The alert's fields as one flat log line holds them (see ``LogChannel``)."""
    fields: dict[str, Any] = {
        "alert_id": alert.id,
        "kind": alert.kind.value,
        "account": alert.account,
        "exchange": alert.exchange,
        "level": alert.level,
    }
    if alert.key != alert.account:
        fields["key"] = alert.key
    optional = {
        "previous_level": alert.previous_level,
        "margin_ratio_pct": alert.margin_ratio_pct,
        "threshold_pct": alert.threshold_pct,
        "margin_balance": alert.margin_balance,
        "maintenance_margin": alert.maintenance_margin,
        "summary": alert.summary or None,
        "positions": [position.to_dict() for position in alert.positions] or None,
        "action": None if alert.action is None else alert.action.to_dict(),
        "details": alert.details or None,
    }
    fields.update((name, value) for name, value in optional.items() if value is not None)
    fields["created_at"] = alert.created_at
    return fields
