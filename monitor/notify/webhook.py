"""Webhook: alerts as Prometheus Alertmanager's webhook payload (version 4), one alert per request.

Receivers written for Alertmanager (``webhook_config``) take these as they are. Each request also
carries ``Idempotency-Key: <alert id>``, and the annotations carry ``alert_id``, so a receiver can
drop the duplicates at-least-once delivery allows.

Semantics, as Alertmanager users know them: the ``fingerprint`` is derived from the alert name and
key (the account, or the isolated position), so every notice about one key updates one alert on
the receiver's side; a recovery to ``ok`` is ``resolved`` (with ``endsAt``), a recovery to a milder
level that still holds is ``firing`` at that level (the account is still at risk). An API key found
unsafe fires ``ApiKeyUnsafe``; the notice that it is fit again resolves it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from monitor.alerts.model import AlertKind
from monitor.notify.format import pct, render
from monitor.notify.http import HttpPeer, check_positive, check_url

if TYPE_CHECKING:
    from collections.abc import Mapping

    from monitor.alerts.model import Alert

#: Alertmanager's "zero time": a firing alert with no known end.
ZERO_TIME = "0001-01-01T00:00:00Z"

#: The ``severity`` label for each level (PagerDuty's four words, which most routing trees use).
SEVERITY_BY_LEVEL = {
    "ok": "info",
    "warning": "warning",
    "danger": "error",
    "critical": "critical",
    "liquidation": "critical",
    "blind": "critical",
    "margin_call": "critical",
    "key_unsafe": "critical",
}

ALERTNAME_BY_KIND = {
    AlertKind.FAST_FALL: "MarginRatioFastFall",
    AlertKind.BLIND: "MonitoringBlind",
    AlertKind.MARGIN_CALL: "MarginCall",
    AlertKind.KEY_UNSAFE: "ApiKeyUnsafe",
    AlertKind.KEY_SAFE: "ApiKeyUnsafe",
    AlertKind.TEST: "MarginMonitorTest",
}

#: The alert name for firing, repeat and recovered alerts.
MARGIN_RATIO = "MarginRatio"


@dataclass(frozen=True, slots=True)
class WebhookSettings:
    """One webhook channel's settings.

    ``url``: where to POST (secret-ish: many hook URLs carry a token, so it is kept out of repr and
    errors). ``headers``: extra headers, such as ``Authorization`` (values are secrets; default
    none). ``external_url``: Alertmanager's ``externalURL`` field, e.g. a dashboard (default "").
    ``generator_url``: each alert's ``generatorURL`` (default ""). ``timeout_s``: the limit on each
    request (default 10).
    """

    url: str = field(repr=False)
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    external_url: str = ""
    generator_url: str = ""
    timeout_s: float = 10.0

    def __post_init__(self) -> None:
        check_url(self.url, "url")
        check_positive(self.timeout_s, "timeout_s")


def alertname(alert: Alert) -> str:
    """The ``alertname`` label: ``MarginRatio``, ``MonitoringBlind``, ``MarginCall``..."""
    return ALERTNAME_BY_KIND.get(alert.kind, MARGIN_RATIO)


def fingerprint(alert: Alert) -> str:
    """16 hex digits, like Alertmanager's, stable for one alert name and key."""
    return hashlib.sha256(f"{alertname(alert)}\x00{alert.key}".encode()).hexdigest()[:16]


def rfc3339(unix_time: float) -> str:
    """``2026-11-29T16:00:00.123Z``."""
    moment = datetime.fromtimestamp(unix_time, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def alertmanager_payload(
    alert: Alert, *, receiver: str, external_url: str = "", generator_url: str = ""
) -> dict[str, Any]:
    """The Alertmanager webhook (version 4) document for ``alert`` alone."""
    resolved = (alert.kind is AlertKind.RECOVERED and alert.level == "ok") or alert.kind is AlertKind.KEY_SAFE
    status = "resolved" if resolved else "firing"
    labels = {
        "alertname": alertname(alert),
        "account": alert.account,
        "exchange": alert.exchange,
        "key": alert.key,
        "level": alert.level,
        "severity": SEVERITY_BY_LEVEL.get(alert.level, "warning"),
    }
    text = render(alert)
    annotations = {
        "summary": text.headline,
        "description": "\n".join(text.lines),
        "alert_id": alert.id,
        "kind": alert.kind.value,
    }
    figures = {
        "margin_ratio_pct": alert.margin_ratio_pct,
        "threshold_pct": alert.threshold_pct,
        "margin_balance": alert.margin_balance,
        "maintenance_margin": alert.maintenance_margin,
    }
    annotations.update({name: repr(value) for name, value in figures.items() if value is not None})
    if alert.previous_level:
        annotations["previous_level"] = alert.previous_level
    if alert.action is not None:
        annotations["target_ratio_pct"] = pct(alert.action.target_ratio_pct).removesuffix("%")
        if alert.action.margin_to_add is not None:
            annotations["margin_to_add"] = repr(alert.action.margin_to_add)
        if alert.action.close_symbol is not None and alert.action.close_fraction is not None:
            annotations["close_symbol"] = alert.action.close_symbol
            annotations["close_fraction"] = repr(alert.action.close_fraction)
    item = {
        "status": status,
        "labels": labels,
        "annotations": annotations,
        "startsAt": rfc3339(alert.created_at),
        "endsAt": rfc3339(alert.created_at) if resolved else ZERO_TIME,
        "generatorURL": generator_url,
        "fingerprint": fingerprint(alert),
    }
    group_labels = {"account": alert.account, "alertname": labels["alertname"]}
    group = ", ".join(f'{name}="{_label_escape(value)}"' for name, value in sorted(group_labels.items()))
    return {
        "version": "4",
        "groupKey": f"{{}}:{{{group}}}",
        "truncatedAlerts": 0,
        "status": status,
        "receiver": receiver,
        "groupLabels": group_labels,
        "commonLabels": dict(labels),
        "commonAnnotations": dict(annotations),
        "externalURL": external_url,
        "alerts": [item],
    }


def _label_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class WebhookChannel:
    """POSTs each alert to one URL in Alertmanager's webhook shape."""

    type = "webhook"

    def __init__(
        self,
        settings: WebhookSettings,
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
        """Values to redact from logs: the extra headers' values."""
        return tuple(value for value in self.settings.headers.values() if value)

    async def start(self) -> None:
        """Open the HTTP session."""
        await self._http.start()

    async def close(self) -> None:
        """Close the HTTP session."""
        await self._http.close()

    def payload(self, alert: Alert) -> dict[str, Any]:
        """The JSON document sent for ``alert``."""
        return alertmanager_payload(
            alert,
            receiver=self.name,
            external_url=self.settings.external_url,
            generator_url=self.settings.generator_url,
        )

    async def send(self, alert: Alert) -> None:
        """POST ``alert``; raise a ``DeliveryError`` on failure."""
        headers = {**self.settings.headers, "Idempotency-Key": alert.id}
        reply = await self._http.request(
            "POST", self.settings.url, what="POST", json_body=self.payload(alert), headers=headers
        )
        if not reply.ok:
            raise self._http.error(reply, what="POST", detail=reply.text())
