"""The MQTT channel: alerts, retained account state and Home Assistant discovery on an MQTT broker.

Topics, with ``<prefix>`` the configured ``topic_prefix`` (default ``margin-monitor``) and
``<account>`` the account's name made topic-safe (``account_slug``):

- ``<prefix>/status``: ``online`` / ``offline``, retained; ``offline`` is also the last will, so a
  killed daemon shows as offline. A shard (``instance`` set, ``monitor/sharding.py``) has its own,
  ``<prefix>/status/<instance>``: its accounts show as offline when it dies, the other shards' do not.
- ``<prefix>/<account>/alert``: one JSON document per alert (``Alert.to_dict()``, with its ``id``),
  QoS 1, not retained. ``send`` returns once the broker acknowledged it (PUBACK).
- ``<prefix>/<account>/state``: the account's latest figures as JSON, retained, at most once per
  ``state_interval_s`` per account (the latest value wins and is published at the end of the interval),
  and only when something moved: the level, or the ratio by ``state_min_change_pct`` points, or
  ``state_heartbeat_s`` passed. Mark streams recompute every account every second; a thousand
  retained messages a second that say the same thing would queue the alerts behind them.
- ``<discovery_prefix>/{sensor,binary_sensor}/<node_id>/<object>/config``: Home Assistant discovery,
  retained: a device per account with a margin ratio sensor, a risk level sensor and an at-risk
  binary sensor, available while ``<prefix>/status`` is ``online``.

One named task keeps the connection: it connects (last will set), publishes ``online``, the
discovery configs and the states it holds, then waits; when the broker goes away it reconnects
with capped, jittered backoff. Every network wait runs under ``asyncio.timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import math
import random
import re
import ssl
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

import aiomqtt
import structlog
from aiomqtt.exceptions import MqttConnectError

from monitor import __version__
from monitor.alerts.model import LEVEL_ORDER, SPECIAL_LEVELS, severity
from monitor.errors import ConfigError, TemporaryDeliveryError

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from monitor.alerts.model import Alert
    from monitor.risk.model import Assessment

log = structlog.get_logger("margin_monitor.mqtt")

STATUS_ONLINE: Final = "online"
STATUS_OFFLINE: Final = "offline"
#: The level from which the at-risk binary sensor is on (blind and margin_call rank above it).
AT_RISK_FROM: Final = "danger"
#: Levels the Home Assistant level sensor offers (an enum sensor must list them).
LEVEL_OPTIONS: Final = (*LEVEL_ORDER, *SPECIAL_LEVELS)

_SAFE_SEGMENT = re.compile(r"[^A-Za-z0-9_-]+")
_TOPIC_WILDCARDS = frozenset("+#\0")


#: State messages published together (awaiting their PUBACKs) before the next ones go out.
STATE_CHUNK = 20


@dataclass(frozen=True, slots=True)
class MqttSettings:
    """How to reach the broker and what to publish there.

    ``tls`` uses the system's trusted CAs, or ``ca_file`` when given (a ``ca_file`` alone turns TLS
    on). ``state_interval_s`` is the shortest time between two state messages of one account;
    ``state_min_change_pct`` the ratio move (in points) and ``state_heartbeat_s`` the age that make a
    state with the same level worth sending again.
    ``reconnect_min_s``/``reconnect_max_s`` bound the jittered backoff between connection
    attempts; ``connect_timeout_s`` and ``publish_timeout_s`` bound every wait on the network.
    ``instance`` names one of several processes sharing the broker (a shard's ``shard-I-of-N``).
    """

    host: str
    port: int = 1883
    topic_prefix: str = "margin-monitor"
    username: str | None = None
    password: str | None = field(default=None, repr=False)  # repr lands in tracebacks and logs
    tls: bool = False
    ca_file: str | None = None
    client_id: str | None = None
    discovery: bool = True
    discovery_prefix: str = "homeassistant"
    keepalive_s: int = 30
    state_interval_s: float = 1.0
    state_min_change_pct: float = 0.1
    state_heartbeat_s: float = 60.0
    connect_timeout_s: float = 10.0
    publish_timeout_s: float = 5.0
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 30.0
    instance: str | None = None

    @property
    def status_topic(self) -> str:
        """The retained online/offline topic (the last will): one per instance."""
        base = f"{self.topic_prefix}/status"
        return base if self.instance is None else f"{base}/{self.instance}"

    def __post_init__(self) -> None:
        if not self.host:
            raise ConfigError("host", "the broker's host name is required")
        if not 0 < self.port < 65536:
            raise ConfigError("port", f"must be a TCP port (1-65535), got {self.port}")
        for name in ("topic_prefix", "discovery_prefix"):
            value: str = getattr(self, name)
            if not value or value.startswith("/") or value.endswith("/") or _TOPIC_WILDCARDS & set(value):
                raise ConfigError(
                    name, f"must be a topic without wildcards (+ #) or leading/trailing '/', got {value!r}"
                )
        if not self.state_min_change_pct >= 0:
            raise ConfigError("state_min_change_pct", f"must be 0 or more, got {self.state_min_change_pct!r}")
        for name in (
            "state_interval_s",
            "state_heartbeat_s",
            "connect_timeout_s",
            "publish_timeout_s",
            "reconnect_min_s",
        ):
            if not getattr(self, name) > 0:
                raise ConfigError(name, f"must be positive, got {getattr(self, name)!r}")
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ConfigError("reconnect_max_s", "must not be below reconnect_min_s")
        if self.instance is not None and (not self.instance or _SAFE_SEGMENT.search(self.instance)):
            raise ConfigError("instance", f"must be letters, digits, '_' and '-', got {self.instance!r}")
        if self.keepalive_s < 5:
            raise ConfigError("keepalive_s", f"must be at least 5 seconds, got {self.keepalive_s}")


class _ClosingSSLSocket(ssl.SSLSocket):
    """An ``SSLSocket`` that closes itself when its handshake fails.

    paho leaves the socket open when ``do_handshake`` raises (a certificate from an unknown CA, a
    name mismatch): every reconnect attempt would leak a file descriptor until garbage collection.
    """

    def do_handshake(self, block: bool = False) -> None:
        """Shake hands; on failure close the socket, then raise."""
        try:
            super().do_handshake(block)
        except BaseException:
            self.close()
            raise


def account_slug(account: str) -> str:
    """``account`` as one topic level and Home Assistant id: letters, digits, ``_`` and ``-`` only.

    A name that needed changing gets a short hash of the original, so ``a/b`` and ``a_b`` never
    share a topic.
    """
    slug = _SAFE_SEGMENT.sub("_", account).strip("_")
    if slug == account:
        return slug
    digest = hashlib.sha256(account.encode()).hexdigest()[:6]
    return f"{slug}-{digest}" if slug else f"account-{digest}"


def is_at_risk(level: str) -> bool:
    """Whether the at-risk binary sensor is on: danger or worse, blind, margin call."""
    return severity(level) >= severity(AT_RISK_FROM)


def state_fields(assessment: Assessment) -> dict[str, Any]:
    """The figures of ``assessment`` that ``publish_state`` takes."""
    ratio = assessment.margin_ratio
    return {
        "margin_ratio_pct": None if ratio is None else ratio * 100.0,
        "level": assessment.level.value,
        "margin_balance": assessment.margin_balance,
        "maintenance_margin": assessment.maintenance_margin,
    }


def discovery_configs(
    settings: MqttSettings, account: str, exchange: str
) -> list[tuple[str, dict[str, Any]]]:
    """Home Assistant discovery messages (topic, config) for ``account``: one device, three entities."""
    slug = account_slug(account)
    node_id = f"{account_slug(settings.topic_prefix.replace('/', '_'))}_{slug}"
    state_topic = f"{settings.topic_prefix}/{slug}/state"
    common: dict[str, Any] = {
        "state_topic": state_topic,
        "availability_topic": settings.status_topic,
        "payload_available": STATUS_ONLINE,
        "payload_not_available": STATUS_OFFLINE,
        "device": {
            "identifiers": [node_id],
            "name": f"margin-monitor {account}",
            "manufacturer": "margin-monitor",
            "model": exchange,
            "sw_version": __version__,
        },
        "origin": {"name": "margin-monitor", "sw_version": __version__},
    }
    entities: list[tuple[str, str, dict[str, Any]]] = [
        (
            "sensor",
            "margin_ratio",
            {
                "name": "Margin ratio",
                "value_template": "{{ value_json.margin_ratio_pct }}",
                "unit_of_measurement": "%",
                "state_class": "measurement",
                "suggested_display_precision": 1,
                "icon": "mdi:scale-balance",
                "json_attributes_topic": state_topic,
            },
        ),
        (
            "sensor",
            "level",
            {
                "name": "Risk level",
                "value_template": "{{ value_json.level }}",
                "device_class": "enum",
                "options": list(LEVEL_OPTIONS),
                "icon": "mdi:alert-decagram",
            },
        ),
        (
            "binary_sensor",
            "at_risk",
            {
                "name": "At risk",
                "value_template": "{{ 'ON' if value_json.at_risk else 'OFF' }}",
                "payload_on": "ON",
                "payload_off": "OFF",
                "device_class": "problem",
            },
        ),
    ]
    return [
        (
            f"{settings.discovery_prefix}/{component}/{node_id}/{object_id}/config",
            {**entity, "unique_id": f"{node_id}_{object_id}", **common},
        )
        for component, object_id, entity in entities
    ]


def _json_safe(value: Any) -> Any:  # noqa: ANN401 - JSON documents are untyped trees
    """``value`` with non-finite floats as ``None`` (JSON has no NaN or infinity)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(key): _json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(item) for item in value]
    return value


def encode_json(document: Mapping[str, Any]) -> bytes:
    """``document`` as compact, strict JSON (non-finite figures as ``null``)."""
    try:
        # Nearly every document is finite: encode it as it is, and walk it only when it is not.
        text = json.dumps(document, separators=(",", ":"), default=str, allow_nan=False)
    except (ValueError, TypeError):  # NaN or infinity; a key JSON has no form for
        text = json.dumps(_json_safe(dict(document)), separators=(",", ":"), default=str)
    return text.encode()


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class _SessionLostError(Exception):
    """The broker connection ended while a publish waited for its acknowledgement."""


@dataclass(slots=True)
class _Session:
    """One live connection: the client and a future that completes when the connection is gone."""

    client: aiomqtt.Client
    lost: asyncio.Future[None]


class MqttChannel:
    """Alerts, retained state and Home Assistant discovery on an MQTT broker (see the module docstring).

    ``send`` is the ``Channel`` contract; ``publish_state`` is called by the daemon after each
    assessment and never blocks it. ``connected`` and ``last_error`` say how the connection is.
    """

    type = "mqtt"
    #: Alerts of different accounts published before the first PUBACK returns (paho's in-flight
    #: window is 20): one at a time, a burst of a thousand alerts took a second on loopback.
    max_in_flight = 20

    def __init__(
        self,
        settings: MqttSettings,
        *,
        name: str,
        min_level: str = "ok",
        accounts: frozenset[str] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.name = name
        self.min_level = min_level
        self.accounts = accounts
        self.last_error: str | None = None
        #: Connections made so far (a reconnect makes it 2).
        self.connections = 0
        self._clock = clock
        self._prefix = settings.topic_prefix
        self._status_topic = settings.status_topic
        self._task: asyncio.Task[None] | None = None
        self._session: _Session | None = None
        self._closed = False
        self._connected_event = asyncio.Event()
        self._wake = asyncio.Event()
        #: slug -> (account, exchange) of every account seen, for discovery.
        self._known: dict[str, tuple[str, str]] = {}
        #: slugs whose discovery configs went out on the current connection.
        self._discovered: set[str] = set()
        #: slug -> the latest state not yet published (latest wins).
        self._pending: dict[str, bytes] = {}
        #: slug -> (level, ratio, monotonic time) of the last state queued (the deadband's reference).
        self._last_state: dict[str, tuple[str, float | None, float]] = {}
        #: slug -> the last state published, sent again after a reconnect.
        self._published: dict[str, bytes] = {}
        #: slug -> monotonic time of the last state published.
        self._last_state_at: dict[str, float] = {}

    # --- Channel ---------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """Whether a connection to the broker is up right now."""
        return self._session is not None

    async def start(self) -> None:
        """Start the connection task; it connects in the background (see ``wait_connected``)."""
        if self._task is not None or self._closed:
            return
        self._task = asyncio.create_task(self._run(), name=f"mqtt-connection[{self.name}]")
        self._task.add_done_callback(self._task_ended)

    def _task_ended(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and (error := task.exception()) is not None:
            # Unreachable by design (the loop catches every Exception); if it happens, say so loudly.
            log.critical("mqtt.connection_task_died", channel=self.name, exc_info=error)

    async def wait_connected(self) -> None:
        """Wait until the channel is connected (bound the wait with ``asyncio.timeout``)."""
        await self._connected_event.wait()

    async def send(self, alert: Alert) -> None:
        """Publish ``alert`` to ``<prefix>/<account>/alert`` at QoS 1; return once the broker acked it."""
        self._remember(alert.account, alert.exchange)
        topic = f"{self._prefix}/{account_slug(alert.account)}/alert"
        try:
            await self._publish_acked(topic, encode_json(alert.to_dict()), retain=False)
        except _SessionLostError as exc:
            raise TemporaryDeliveryError(
                f"mqtt {self._where}: connection lost before the broker acknowledged alert {alert.id}",
                channel=self.name,
            ) from exc
        except TimeoutError as exc:
            raise TemporaryDeliveryError(
                f"mqtt {self._where}: no acknowledgement for alert {alert.id}"
                f" within {self.settings.publish_timeout_s:g} s",
                channel=self.name,
            ) from exc
        except aiomqtt.MqttError as exc:
            raise TemporaryDeliveryError(
                f"mqtt {self._where}: publishing alert {alert.id} failed: {exc}", channel=self.name
            ) from exc

    async def close(self) -> None:
        """Publish ``offline`` (retained), disconnect cleanly and stop the connection task."""
        if self._closed:
            return
        self._closed = True
        if self._session is not None:
            try:
                await self._publish_acked(self._status_topic, STATUS_OFFLINE.encode(), retain=True)
            except (_SessionLostError, TimeoutError, aiomqtt.MqttError) as exc:
                log.warning("mqtt.offline_not_published", channel=self.name, error=str(exc))
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            # The cancelled task disconnects (DISCONNECT, so no last will) within the client's timeout.
            await asyncio.wait({task}, timeout=self.settings.connect_timeout_s + 1.0)
        log.info("mqtt.closed", channel=self.name)

    # --- state -----------------------------------------------------------------------------------

    def publish_state(self, account: str, exchange: str, assessment_fields: Mapping[str, Any]) -> None:
        """Queue ``account``'s latest figures for ``<prefix>/<account>/state`` (retained); never blocks.

        ``assessment_fields`` holds at least ``margin_ratio_pct`` and ``level`` (see ``state_fields``);
        every other JSON-ready field is passed on. ``account``, ``exchange``, ``at_risk`` and
        ``updated_at`` (ISO 8601, UTC, the time of this call unless given) are added. The newest
        state of an account replaces one still waiting for its interval.
        """
        if self._closed:
            return
        slug = self._remember(account, exchange)
        level = str(assessment_fields.get("level", "ok"))
        ratio = assessment_fields.get("margin_ratio_pct")
        now = time.monotonic()
        if self._unchanged(slug, level, ratio, now):
            return
        self._last_state[slug] = (level, ratio if isinstance(ratio, int | float) else None, now)
        document: dict[str, Any] = {
            "account": account,
            "exchange": exchange,
            **assessment_fields,
            "level": level,
            "at_risk": is_at_risk(level),
        }
        document.setdefault("updated_at", _iso(self._clock()))
        self._pending[slug] = encode_json(document)
        self._wake.set()

    def _unchanged(self, slug: str, level: str, ratio: object, now: float) -> bool:
        """Whether the last state queued for ``slug`` says this already (same level, ratio in the band)."""
        last = self._last_state.get(slug)
        if last is None or not isinstance(ratio, int | float):
            return False
        last_level, last_ratio, at = last
        return (
            last_level == level
            and last_ratio is not None
            and abs(ratio - last_ratio) < self.settings.state_min_change_pct
            and now - at < self.settings.state_heartbeat_s
        )

    def _remember(self, account: str, exchange: str) -> str:
        slug = account_slug(account)
        if self._known.get(slug) != (account, exchange):
            self._known[slug] = (account, exchange)
            self._discovered.discard(slug)
            self._wake.set()
        return slug

    # --- connection ------------------------------------------------------------------------------

    @property
    def _where(self) -> str:
        return f"{self.settings.host}:{self.settings.port}"

    def _client(self) -> aiomqtt.Client:
        settings = self.settings
        tls_context = None
        if settings.tls or settings.ca_file:
            tls_context = ssl.create_default_context(cafile=settings.ca_file)
            tls_context.sslsocket_class = _ClosingSSLSocket
        client = aiomqtt.Client(
            settings.host,
            settings.port,
            username=settings.username,
            password=settings.password,
            identifier=settings.client_id,
            will=aiomqtt.Will(self._status_topic, STATUS_OFFLINE, qos=1, retain=True),
            keepalive=settings.keepalive_s,
            timeout=settings.connect_timeout_s,
            tls_context=tls_context,
        )
        # Alerts and states may be in flight by the hundred; that is not worth a warning per publish.
        client.pending_calls_threshold = 10_000
        return client

    async def _run(self) -> None:
        """Connect, serve, and reconnect with capped jittered backoff until cancelled by ``close``."""
        attempt = 0
        while True:
            connections = self.connections
            try:
                await self._serve()
            except* MqttConnectError as group:
                self._failed("mqtt.connect_refused", group.exceptions[0], attempt)
            except* (
                aiomqtt.MqttError,
                _SessionLostError,
                TemporaryDeliveryError,
                OSError,
                TimeoutError,
            ) as group:
                lost = self.connections > connections
                self._failed(
                    "mqtt.connection_lost" if lost else "mqtt.connect_failed", group.exceptions[0], attempt
                )
            except* Exception:  # a bug must not stop the channel for good
                log.exception("mqtt.loop_error", channel=self.name)
            if self.connections > connections:
                attempt = 0
            delay = min(self.settings.reconnect_max_s, self.settings.reconnect_min_s * 2.0**attempt)
            attempt = min(attempt + 1, 32)
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))  # noqa: S311 - jitter, not secrecy

    def _failed(self, event: str, error: BaseException, attempt: int) -> None:
        self.last_error = f"{type(error).__name__}: {error}"
        log.warning(event, channel=self.name, broker=self._where, error=self.last_error, attempt=attempt + 1)

    async def _serve(self) -> None:
        """One connection, from connect to its loss (an exception) or ``close`` (cancellation)."""
        client = self._client()
        async with contextlib.AsyncExitStack() as stack:
            async with asyncio.timeout(self.settings.connect_timeout_s):
                await stack.enter_async_context(client)
            session = _Session(client, asyncio.get_running_loop().create_future())
            stack.callback(self._end, session)
            self._discovered.clear()
            async with asyncio.timeout(self.settings.publish_timeout_s):
                await client.publish(self._status_topic, STATUS_ONLINE, qos=1, retain=True)
            # Republish the last states: a restarted broker may have lost its retained messages.
            for slug, payload in self._published.items():
                self._pending.setdefault(slug, payload)
            self._session = session
            self.connections += 1
            self._connected_event.set()
            self.last_error = None
            log.info("mqtt.connected", channel=self.name, broker=self._where, connections=self.connections)
            async with asyncio.TaskGroup() as group:
                group.create_task(self._flush(), name=f"mqtt-states[{self.name}]")
                await self._until_lost(client)

    def _end(self, session: _Session) -> None:
        if self._session is session:
            self._session = None
            self._connected_event.clear()
        if not session.lost.done():
            session.lost.set_result(None)

    async def _until_lost(self, client: aiomqtt.Client) -> None:
        """Iterate the (empty) message stream: it raises ``MqttError`` when the connection drops."""
        async for _ in client.messages:
            pass
        raise _SessionLostError("the message stream ended")

    async def _publish_acked(self, topic: str, payload: bytes, *, retain: bool) -> None:
        """Publish at QoS 1 on the current connection and wait for PUBACK, or the connection's end."""
        session = self._session
        if session is None:
            raise TemporaryDeliveryError(
                f"mqtt {self._where}: not connected"
                + (f" (last error: {self.last_error})" if self.last_error else ""),
                channel=self.name,
            )
        publish = asyncio.ensure_future(
            session.client.publish(topic, payload, qos=1, retain=retain, timeout=math.inf)
        )
        try:
            async with asyncio.timeout(self.settings.publish_timeout_s):
                await asyncio.wait({publish, session.lost}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not publish.done():
                publish.cancel()
                with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                    await publish
            elif not publish.cancelled():
                # Read it even when we leave by cancellation (the connection task ending): a failed
                # publish nobody looked at is logged by asyncio as "never retrieved", with a traceback.
                publish.exception()
        if publish.cancelled():
            raise _SessionLostError(topic)
        publish.result()

    async def _flush(self) -> None:
        """Publish discovery configs and due states on ``session``; sleep until the next is due."""
        interval = self.settings.state_interval_s
        while True:
            self._wake.clear()
            await self._publish_discovery()
            now = time.monotonic()
            due: list[tuple[str, bytes]] = []
            next_due = math.inf
            for slug in list(self._pending):
                due_at = self._last_state_at.get(slug, -math.inf) + interval
                if due_at <= now:
                    due.append((slug, self._pending.pop(slug)))
                    self._last_state_at[slug] = now
                else:
                    next_due = min(next_due, due_at)
            if due:
                await self._publish_states(due)
            if not self._wake.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(None if next_due == math.inf else next_due - now):
                        await self._wake.wait()

    async def _publish_states(self, due: list[tuple[str, bytes]]) -> None:
        # A chunk at a time: an alert published meanwhile queues behind one chunk, not behind a
        # thousand states (paho sends in the order it is given).
        for start in range(0, len(due), STATE_CHUNK):
            try:
                await self._publish_chunk(due[start : start + STATE_CHUNK])
            except BaseException:
                # The chunks not yet tried go out after the reconnect, like the failed ones.
                for slug, payload in due[start + STATE_CHUNK :]:
                    self._pending.setdefault(slug, payload)
                raise

    async def _publish_chunk(self, due: list[tuple[str, bytes]]) -> None:
        results = await asyncio.gather(
            *(
                self._publish_acked(f"{self._prefix}/{slug}/state", payload, retain=True)
                for slug, payload in due
            ),
            return_exceptions=True,
        )
        for (slug, payload), result in zip(due, results, strict=True):
            if isinstance(result, BaseException):
                # Not lost: it goes out after the reconnect, unless a newer state replaced it.
                self._pending.setdefault(slug, payload)
            else:
                self._published[slug] = payload
        errors = [result for result in results if isinstance(result, BaseException)]
        if errors:
            raise errors[0]

    async def _publish_discovery(self) -> None:
        if not self.settings.discovery:
            return
        for slug, (account, exchange) in list(self._known.items()):
            if slug in self._discovered:
                continue
            for topic, config in discovery_configs(self.settings, account, exchange):
                await self._publish_acked(topic, encode_json(config), retain=True)
            self._discovered.add(slug)
            log.info("mqtt.discovery_published", channel=self.name, account=account)
