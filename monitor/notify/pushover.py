"""Pushover: alerts through ``POST /1/messages.json``.

Critical and liquidation alerts (and the exchange's own margin call) go as emergency priority 2:
Pushover repeats them every ``retry`` seconds until acknowledged or ``expire`` seconds pass. The
alert id ends the message. Pushover answers a refusal with HTTP 4xx and ``{"status": 0, "errors":
[...]}``; 429 means the application's monthly quota is spent, until ``X-Limit-App-Reset``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from monitor.alerts.model import AlertKind
from monitor.errors import ConfigError, PermanentDeliveryError
from monitor.notify.format import render
from monitor.notify.http import HttpPeer, check_positive, check_url, header

if TYPE_CHECKING:
    from monitor.alerts.model import Alert

#: Pushover priority (-2 silent .. 2 emergency) for each level.
PRIORITY_BY_LEVEL = {
    "ok": -1,
    "warning": 0,
    "danger": 1,
    "critical": 2,
    "liquidation": 2,
    "blind": 1,
    "margin_call": 2,
    "key_unsafe": 1,
}

EMERGENCY = 2

#: Pushover's limits, in characters.
MAX_MESSAGE = 1024
MAX_TITLE = 250

#: Pushover's bounds on emergency repeats.
MIN_RETRY_S = 30
MAX_EXPIRE_S = 10800


@dataclass(frozen=True, slots=True)
class PushoverSettings:
    """One Pushover channel's settings.

    ``token``: the application's API token (secret). ``user_key``: the user or group key (secret).
    ``api_url``: default ``https://api.pushover.net``. ``retry``: seconds between repeats of an
    emergency alert (default 60, at least 30). ``expire``: seconds an emergency alert keeps being
    repeated (default 3600, at most 10800). ``device``: send to this device only (default all).
    ``sound``: a sound name (default the user's choice). ``timeout_s``: the limit on each request
    (default 10).
    """

    token: str = field(repr=False)
    user_key: str = field(repr=False)
    api_url: str = "https://api.pushover.net"
    retry: int = 60
    expire: int = 3600
    device: str | None = None
    sound: str | None = None
    timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if not self.token:
            raise ConfigError("token", "must be the application's API token")
        if not self.user_key:
            raise ConfigError("user_key", "must be the user or group key")
        check_url(self.api_url, "api_url")
        if self.retry < MIN_RETRY_S:
            raise ConfigError("retry", f"must be at least {MIN_RETRY_S} seconds, got {self.retry}")
        if not 0 < self.expire <= MAX_EXPIRE_S:
            raise ConfigError("expire", f"must be between 1 and {MAX_EXPIRE_S} seconds, got {self.expire}")
        check_positive(self.timeout_s, "timeout_s")


def priority(alert: Alert) -> int:
    """The Pushover priority of ``alert``: recoveries, keys fit again and tests 0, otherwise by level."""
    if alert.kind in {AlertKind.RECOVERED, AlertKind.KEY_SAFE, AlertKind.TEST}:
        return 0
    return PRIORITY_BY_LEVEL.get(alert.level, 0)


class PushoverChannel:
    """Sends each alert as one Pushover message."""

    type = "pushover"

    def __init__(
        self,
        settings: PushoverSettings,
        *,
        name: str,
        min_level: str = "warning",
        accounts: frozenset[str] | None = None,
    ) -> None:
        self.settings = settings
        self.name = name
        self.min_level = min_level
        self.accounts = accounts
        self._http = HttpPeer(channel=name, timeout_s=settings.timeout_s, secrets=self.secrets)

    @property
    def secrets(self) -> tuple[str, ...]:
        """Values to redact from logs."""
        return (self.settings.token, self.settings.user_key)

    async def start(self) -> None:
        """Open the HTTP session."""
        await self._http.start()

    async def close(self) -> None:
        """Close the HTTP session."""
        await self._http.close()

    def form(self, alert: Alert) -> dict[str, str]:
        """The form fields sent for ``alert``."""
        text = render(alert)
        message = "\n".join(text.lines)
        room = MAX_MESSAGE - len(text.footer) - 1
        if len(message) > room:  # keep the id, cut the body
            message = message[: room - 1] + "…"
        fields = {
            "token": self.settings.token,
            "user": self.settings.user_key,
            "title": text.title[:MAX_TITLE],
            "message": f"{message}\n{text.footer}",
            "priority": str(priority(alert)),
            "timestamp": str(int(alert.created_at)),
        }
        if priority(alert) == EMERGENCY:
            fields["retry"] = str(self.settings.retry)
            fields["expire"] = str(self.settings.expire)
        if self.settings.device:
            fields["device"] = self.settings.device
        if self.settings.sound:
            fields["sound"] = self.settings.sound
        return fields

    async def send(self, alert: Alert) -> None:
        """Send ``alert``; raise a ``DeliveryError`` on failure."""
        url = self.settings.api_url.rstrip("/") + "/1/messages.json"
        reply = await self._http.request("POST", url, what="messages.json", form=self.form(alert))
        document = reply.json()
        status = document.get("status") if isinstance(document, dict) else None
        if reply.ok and status == 1:
            return
        detail = reply.text()
        if isinstance(document, dict) and isinstance(document.get("errors"), list):
            detail = "; ".join(str(error) for error in document["errors"])
        if reply.ok:  # 200 without status 1 is not in the API; take it as a refusal
            raise PermanentDeliveryError(
                f"{self.name}: messages.json refused: {self._http.scrub(detail)}", channel=self.name
            )
        retry_after = None
        if reply.status == 429 and header(reply.headers, "Retry-After") is None:
            reset = header(reply.headers, "X-Limit-App-Reset")
            if reset is not None and reset.isdigit():
                retry_after = max(0.0, int(reset) - time.time())
        raise self._http.error(reply, what="messages.json", detail=detail, retry_after=retry_after)
