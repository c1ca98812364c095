"""ntfy: alerts published as JSON to an ntfy server (ntfy.sh or self-hosted).

One ``POST`` to the server's root with ``{"topic", "title", "message", "priority", "tags"}``; the
priority follows the level (5 wakes a phone, 2 is quiet) and the tags render as emoji. ntfy has no
field for a client's message id, so the alert id ends the message (``id: ...``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from monitor.alerts.model import AlertKind
from monitor.errors import ConfigError
from monitor.notify.format import render
from monitor.notify.http import HttpPeer, check_positive, check_url

if TYPE_CHECKING:
    from monitor.alerts.model import Alert

#: ntfy priority (1 min .. 5 max) for each level.
PRIORITY_BY_LEVEL = {
    "ok": 2,
    "warning": 3,
    "danger": 4,
    "critical": 5,
    "liquidation": 5,
    "blind": 5,
    "margin_call": 5,
    "key_unsafe": 5,
}

#: ntfy tags (emoji short codes) for each level.
TAGS_BY_LEVEL = {
    "ok": "white_check_mark",
    "warning": "warning",
    "danger": "rotating_light",
    "critical": "rotating_light",
    "liquidation": "skull",
    "blind": "see_no_evil",
    "margin_call": "rotating_light",
    "key_unsafe": "unlock",
}

#: Extra tags for the kinds of alert that are not a level change.
TAGS_BY_KIND = {
    AlertKind.RECOVERED: "white_check_mark",
    AlertKind.KEY_SAFE: "lock",
    AlertKind.FAST_FALL: "chart_with_downwards_trend",
    AlertKind.REPEAT: "repeat",
    AlertKind.TEST: "test_tube",
}


@dataclass(frozen=True, slots=True)
class NtfySettings:
    """One ntfy channel's settings.

    ``topic``: the topic to publish to (on ntfy.sh a topic is a password: pick a long random one).
    ``url``: the server (default ``https://ntfy.sh``). ``token``: an access token (``tk_...``) sent as
    ``Authorization: Bearer``, for protected topics (default none; secret). ``timeout_s``: the limit
    on each publish (default 10).
    """

    topic: str
    url: str = "https://ntfy.sh"
    token: str | None = field(default=None, repr=False)
    timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if not self.topic or "/" in self.topic or any(char.isspace() for char in self.topic):
            raise ConfigError("topic", "must be a topic name, without spaces or '/'")
        check_url(self.url, "url")
        check_positive(self.timeout_s, "timeout_s")


def priority(alert: Alert) -> int:
    """The ntfy priority of ``alert``: recoveries and key-fit-again notices 2, tests 3, otherwise by level."""
    if alert.kind in {AlertKind.RECOVERED, AlertKind.KEY_SAFE}:
        return 2
    if alert.kind is AlertKind.TEST:
        return 3
    return PRIORITY_BY_LEVEL.get(alert.level, 3)


def tags(alert: Alert) -> list[str]:
    """Emoji tags first (they show in the title), then the level and account as plain tags."""
    found = [
        TAGS_BY_KIND.get(alert.kind) or TAGS_BY_LEVEL.get(alert.level, "bell"),
        alert.level,
        alert.account,
    ]
    return list(dict.fromkeys(found))


class NtfyChannel:
    """Publishes each alert to one ntfy topic."""

    type = "ntfy"

    def __init__(
        self,
        settings: NtfySettings,
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
        return (self.settings.token,) if self.settings.token else ()

    async def start(self) -> None:
        """Open the HTTP session."""
        await self._http.start()

    async def close(self) -> None:
        """Close the HTTP session."""
        await self._http.close()

    def payload(self, alert: Alert) -> dict[str, Any]:
        """The JSON document published for ``alert``."""
        text = render(alert)
        return {
            "topic": self.settings.topic,
            "title": text.headline,
            "message": text.body,
            "priority": priority(alert),
            "tags": tags(alert),
        }

    async def send(self, alert: Alert) -> None:
        """Publish ``alert``; raise a ``DeliveryError`` on failure."""
        headers = {"Authorization": f"Bearer {self.settings.token}"} if self.settings.token else None
        url = self.settings.url.rstrip("/") + "/"
        reply = await self._http.request(
            "POST", url, what="publish", json_body=self.payload(alert), headers=headers
        )
        if reply.ok:
            return
        document = reply.json()
        detail = reply.text()
        if isinstance(document, dict) and "error" in document:
            detail = f"{document['error']} (code {document.get('code')})"
        raise self._http.error(reply, what="publish", detail=detail)
