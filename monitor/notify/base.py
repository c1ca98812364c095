"""What every channel provides to the dispatcher."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from monitor.alerts.model import Alert


class Channel(Protocol):
    """A place alerts go: Telegram, MQTT, ntfy, Pushover, a webhook, the log.

    ``send`` delivers one alert or raises ``TemporaryDeliveryError`` (retry, after ``retry_after``
    when the peer said so) or ``PermanentDeliveryError`` (do not retry). It must carry
    ``alert.id`` in what it sends, so receivers can drop the duplicates at-least-once delivery
    allows. ``start``/``close`` open and release connections; both are safe to call twice.

    A channel may set ``max_in_flight`` (``in_flight`` reads it; 1 when absent): how many alerts of
    different accounts the dispatcher may have in ``send`` at once (MQTT pipelines its PUBACKs;
    rate-limited HTTP APIs keep one).
    """

    name: str
    type: str
    min_level: str
    accounts: frozenset[str] | None

    async def start(self) -> None:
        """Open connections (MQTT), or nothing."""
        ...

    async def send(self, alert: Alert) -> None:
        """Deliver ``alert`` or raise a ``DeliveryError``."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


def wants(channel: Channel, alert: Alert) -> bool:
    """Whether ``channel`` takes ``alert``: its account filter and minimum level.

    A recovery (or restored-data, or key-fit-again) notice goes wherever the alert it ends went, so
    it is judged by the level it left; test alerts go everywhere.
    """
    from monitor.alerts.model import AlertKind, severity  # noqa: PLC0415 - keep this module import-light

    if channel.accounts is not None and alert.account not in channel.accounts:
        return False
    if alert.kind is AlertKind.TEST:
        return True
    ending = alert.kind in (AlertKind.RECOVERED, AlertKind.RESTORED, AlertKind.KEY_SAFE)
    level = alert.previous_level if ending and alert.previous_level else alert.level
    return severity(level) >= severity(channel.min_level)


def in_flight(channel: Channel) -> int:
    """How many alerts ``channel`` may be sending at once (its ``max_in_flight``, at least 1)."""
    value = getattr(channel, "max_in_flight", 1)
    return value if isinstance(value, int) and value > 1 else 1
