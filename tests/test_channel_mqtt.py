"""The MQTT channel against a real Mosquitto (started per test by the ``mosquitto`` plugin)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import sys
import textwrap
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiomqtt
import pytest
from monitor.alerts.model import Alert, AlertKind, PositionAtRisk, SuggestedAction
from monitor.errors import ConfigError, TemporaryDeliveryError
from monitor.notify.mqtt import (
    MqttChannel,
    MqttSettings,
    account_slug,
    discovery_configs,
    encode_json,
    is_at_risk,
)
from structlog.testing import capture_logs

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from mosquitto import MosquittoBroker

pytest_plugins = ["mosquitto"]

PREFIX = "mm-test"
WAIT_S = 5.0
ROOT = Path(__file__).resolve().parent.parent


def make_alert(account: str = "main", alert_id: str = "alert-0001", level: str = "danger") -> Alert:
    """A danger alert with one position and a suggested action."""
    return Alert(
        id=alert_id,
        kind=AlertKind.FIRING,
        account=account,
        exchange="binanceusdm",
        key=account,
        level=level,
        created_at=1_795_000_000.0,
        previous_level="warning",
        margin_ratio_pct=128.4,
        threshold_pct=130.0,
        margin_balance=12_840.0,
        maintenance_margin=10_000.0,
        positions=(
            PositionAtRisk("BTC/USDT:USDT", "long", "cross", 95_000.0, 88_000.0, 7.4, 120.0, 93_100.0),
        ),
        action=SuggestedAction(target_ratio_pct=200.0, margin_to_add=7_160.0),
        summary="main at 128.4%",
    )


def settings_for(broker: MosquittoBroker, **overrides: Any) -> MqttSettings:  # noqa: ANN401 - settings keys
    """Settings aimed at ``broker`` with a fast reconnect, so tests need not wait."""
    options: dict[str, Any] = {
        "topic_prefix": PREFIX,
        "reconnect_min_s": 0.05,
        "reconnect_max_s": 0.2,
        "connect_timeout_s": 2.0,
        "publish_timeout_s": 2.0,
        "state_interval_s": 0.05,
    }
    options.update(overrides)
    return MqttSettings(broker.host, broker.port, **options)


@contextlib.asynccontextmanager
async def running(settings: MqttSettings, *, connect: bool = True) -> AsyncIterator[MqttChannel]:
    """A started channel (connected, unless ``connect`` is false), closed on the way out."""
    channel = MqttChannel(settings, name="mqtt-test")
    await channel.start()
    try:
        if connect:
            async with asyncio.timeout(WAIT_S):
                await channel.wait_connected()
        yield channel
    finally:
        await channel.close()


@contextlib.asynccontextmanager
async def subscriber(broker: MosquittoBroker, *topics: str) -> AsyncIterator[aiomqtt.Client]:
    """An aiomqtt client subscribed to ``topics`` at QoS 1."""
    async with aiomqtt.Client(broker.host, broker.port, timeout=WAIT_S) as client:
        for topic in topics:
            await client.subscribe(topic, qos=1)
        yield client


async def receive(client: aiomqtt.Client, within: float = WAIT_S) -> aiomqtt.Message:
    """The next message within ``within`` seconds, or ``TimeoutError``."""
    async with asyncio.timeout(within):
        return await anext(client.messages)


async def receive_all(client: aiomqtt.Client, quiet: float = 0.3) -> list[aiomqtt.Message]:
    """Every message until none has come for ``quiet`` seconds."""
    messages: list[aiomqtt.Message] = []
    with contextlib.suppress(TimeoutError):
        while True:
            messages.append(await receive(client, quiet))
    return messages


def text(message: aiomqtt.Message) -> str:
    """The payload as text."""
    assert isinstance(message.payload, bytes)
    return message.payload.decode()


def document(message: aiomqtt.Message) -> dict[str, Any]:
    """The payload as a JSON object."""
    loaded = json.loads(text(message))
    assert isinstance(loaded, dict)
    return loaded


async def wait_until_disconnected(channel: MqttChannel) -> None:
    """Wait until the channel has noticed the broker is gone."""
    async with asyncio.timeout(WAIT_S):
        while channel.connected:  # noqa: ASYNC110 - the channel offers no event for the loss; poll it
            await asyncio.sleep(0.01)


# --- status and last will ------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_status_is_online_retained_then_offline_on_close(mosquitto: MosquittoBroker) -> None:
    """A connected channel leaves ``online`` retained on ``<prefix>/status``; close turns it ``offline``."""
    async with running(settings_for(mosquitto)) as channel:
        async with subscriber(mosquitto, f"{PREFIX}/status") as client:
            online = await receive(client)
            assert (text(online), online.retain) == ("online", True)
            await channel.close()
            assert text(await receive(client)) == "offline"
        async with subscriber(mosquitto, f"{PREFIX}/status") as late:
            offline = await receive(late)
            assert (text(offline), offline.retain) == ("offline", True)


@pytest.mark.asyncio
async def test_close_is_safe_twice_and_before_start(mosquitto: MosquittoBroker) -> None:
    """``close`` twice, ``close`` before ``start`` and ``start`` after ``close`` all do nothing harmful."""
    never_started = MqttChannel(settings_for(mosquitto), name="idle")
    await never_started.close()
    await never_started.close()
    await never_started.start()
    assert not never_started.connected
    async with running(settings_for(mosquitto)) as channel:
        await channel.start()  # a second start keeps the one connection
        await channel.close()
        await channel.close()
        assert not channel.connected
        assert channel.connections == 1


CHILD = """
import asyncio
from monitor.notify.mqtt import MqttChannel, MqttSettings

async def main() -> None:
    settings = MqttSettings("{host}", {port}, topic_prefix="{prefix}", keepalive_s=5)
    channel = MqttChannel(settings, name="doomed")
    await channel.start()
    await asyncio.wait_for(channel.wait_connected(), 5)
    print("connected", flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


@pytest.mark.asyncio
async def test_last_will_reports_offline_when_the_process_is_killed(mosquitto: MosquittoBroker) -> None:
    """SIGKILL gives no chance to say goodbye: the broker publishes the last will, ``offline``."""
    script = textwrap.dedent(CHILD).format(host=mosquitto.host, port=mosquitto.port, prefix=PREFIX)
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, cwd=ROOT, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert child.stdout is not None
        async with asyncio.timeout(10):
            while (line := await child.stdout.readline()) != b"connected\n":
                assert line, "the child exited before it connected"
        async with subscriber(mosquitto, f"{PREFIX}/status") as client:
            assert text(await receive(client)) == "online"
            child.kill()
            will = await receive(client)
            assert text(will) == "offline"
        async with subscriber(mosquitto, f"{PREFIX}/status") as late:
            assert (text(retained := await receive(late)), retained.retain) == ("offline", True)
    finally:
        if child.returncode is None:
            child.kill()
        await child.wait()


# --- alerts --------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_send_publishes_the_alert_at_qos_1_with_its_id(mosquitto: MosquittoBroker) -> None:
    """The alert arrives on ``<prefix>/<account>/alert``, QoS 1, not retained, whole and with its id."""
    alert = make_alert()
    async with (
        subscriber(mosquitto, f"{PREFIX}/+/alert") as client,
        running(settings_for(mosquitto)) as channel,
    ):
        await channel.send(alert)
        message = await receive(client)
    assert message.topic.value == f"{PREFIX}/main/alert"
    assert message.qos == 1
    assert not message.retain
    payload = document(message)
    assert payload["id"] == "alert-0001"
    assert Alert.from_dict(payload) == alert


@pytest.mark.asyncio
async def test_send_without_a_connection_raises_temporary(mosquitto: MosquittoBroker) -> None:
    """Before the channel is connected, ``send`` fails at once with a retryable error."""
    channel = MqttChannel(settings_for(mosquitto), name="not-started")
    with pytest.raises(TemporaryDeliveryError, match="not connected") as raised:
        await channel.send(make_alert())
    assert raised.value.channel == "not-started"


@pytest.mark.asyncio
async def test_send_raises_temporary_while_the_broker_is_down(mosquitto: MosquittoBroker) -> None:
    """With the broker stopped, ``send`` raises ``TemporaryDeliveryError`` (the dispatcher retries)."""
    async with running(settings_for(mosquitto)) as channel:
        mosquitto.stop()
        await wait_until_disconnected(channel)
        with pytest.raises(TemporaryDeliveryError):
            await channel.send(make_alert())


@pytest.mark.asyncio
async def test_after_a_broker_restart_the_channel_reconnects_and_republishes(
    mosquitto: MosquittoBroker,
) -> None:
    """A restarted broker (retained messages lost) gets ``online``, discovery and state again; send works."""
    async with running(settings_for(mosquitto)) as channel:
        channel.publish_state("main", "binanceusdm", {"margin_ratio_pct": 182.4, "level": "ok"})
        async with subscriber(mosquitto, f"{PREFIX}/main/state") as client:
            await receive(client)
        mosquitto.restart()
        async with asyncio.timeout(WAIT_S):
            while channel.connections < 2:  # noqa: ASYNC110 - a test polls the public counter
                await asyncio.sleep(0.01)
        topics = (f"{PREFIX}/status", f"{PREFIX}/main/state", "homeassistant/#", f"{PREFIX}/+/alert")
        async with subscriber(mosquitto, *topics) as client:
            await channel.send(make_alert(alert_id="after-restart"))
            messages = await receive_all(client)
    # The republish may land just before the subscription (delivered as retained) or just after it
    # (delivered live, with the retain flag cleared): either way the broker has it again.
    latest = {message.topic.value: text(message) for message in messages}
    assert latest[f"{PREFIX}/status"] == "online"
    assert json.loads(latest[f"{PREFIX}/main/state"])["margin_ratio_pct"] == 182.4
    assert sum(topic.startswith("homeassistant/") for topic in latest) == 3
    alerts = [document(message) for message in messages if message.topic.matches(f"{PREFIX}/+/alert")]
    assert [alert["id"] for alert in alerts] == ["after-restart"]


# --- state ---------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_state_is_retained_json_with_the_figures(mosquitto: MosquittoBroker) -> None:
    """``publish_state`` leaves the account's figures retained on ``<prefix>/<account>/state``."""
    fields = {
        "margin_ratio_pct": 128.4,
        "level": "danger",
        "margin_balance": 12_840.0,
        "maintenance_margin": 1e4,
    }
    async with running(settings_for(mosquitto)) as channel:
        channel.publish_state("main", "binanceusdm", fields)
        async with subscriber(mosquitto, f"{PREFIX}/main/state") as client:
            first = await receive(client)
        async with subscriber(mosquitto, f"{PREFIX}/main/state") as late:
            retained = await receive(late)
    assert retained.retain
    state = document(retained)
    assert state == document(first)
    assert {key: state[key] for key in fields} == fields
    assert state["account"] == "main"
    assert state["exchange"] == "binanceusdm"
    assert state["at_risk"] is True
    assert state["updated_at"].endswith("Z")


@pytest.mark.asyncio
async def test_state_is_rate_limited_and_the_latest_value_wins(mosquitto: MosquittoBroker) -> None:
    """Five states inside one interval: the first goes out at once, the last at the interval's end."""
    interval = 0.4
    async with (
        subscriber(mosquitto, f"{PREFIX}/+/state") as client,
        running(settings_for(mosquitto, state_interval_s=interval)) as channel,
    ):
        channel.publish_state("main", "binanceusdm", {"margin_ratio_pct": 200.0, "level": "ok"})
        first = await receive(client)
        first_at = time.monotonic()
        # Within the interval that started with the first: only the last of these goes out, at its end.
        for ratio in (190.0, 180.0, 170.0, 160.0):
            channel.publish_state("main", "binanceusdm", {"margin_ratio_pct": ratio, "level": "ok"})
            await asyncio.sleep(0.01)
        last = await receive(client)
        gap = time.monotonic() - first_at
        assert await receive_all(client, quiet=interval + 0.1) == []
    assert [document(first)["margin_ratio_pct"], document(last)["margin_ratio_pct"]] == [200.0, 160.0]
    assert gap >= interval * 0.8  # tolerance for the subscriber's own delivery


@pytest.mark.asyncio
async def test_a_state_that_says_nothing_new_is_not_published_again(mosquitto: MosquittoBroker) -> None:
    """Within the deadband (same level, ratio within 0.1 point) nothing goes out until the heartbeat.

    A level change, or a move of the ratio past the band, goes out as usual.
    """
    async with (
        subscriber(mosquitto, f"{PREFIX}/+/state") as client,
        running(settings_for(mosquitto, state_interval_s=0.01, state_heartbeat_s=0.6)) as channel,
    ):
        sent = [
            (200.0, "ok"),
            (200.04, "ok"),  # inside the band: dropped
            (199.95, "ok"),  # 0.05 from the last sent: dropped
            (199.8, "ok"),  # 0.2 away: sent
            (149.85, "warning"),
            (149.85, "warning"),  # the same again: dropped
            (149.86, "danger"),  # a level change: sent whatever the ratio
        ]
        for ratio, level in sent:
            channel.publish_state("main", "binanceusdm", {"margin_ratio_pct": ratio, "level": level})
            await asyncio.sleep(0.05)
        burst = await receive_all(client, quiet=0.3)
        await asyncio.sleep(0.4)  # past the heartbeat: the unchanged state is worth a message again
        channel.publish_state("main", "binanceusdm", {"margin_ratio_pct": 149.86, "level": "danger"})
        heartbeat = await receive_all(client, quiet=0.3)
    assert [(document(m)["margin_ratio_pct"], document(m)["level"]) for m in burst] == [
        (200.0, "ok"),
        (199.8, "ok"),
        (149.85, "warning"),
        (149.86, "danger"),
    ]
    assert [document(m)["margin_ratio_pct"] for m in heartbeat] == [149.86]


@pytest.mark.asyncio
async def test_states_published_before_the_connection_arrive_once_connected(
    mosquitto: MosquittoBroker,
) -> None:
    """A state handed over while disconnected is kept (latest wins) and published on connection."""
    channel = MqttChannel(settings_for(mosquitto), name="late")
    channel.publish_state("main", "binanceusdm", {"margin_ratio_pct": 300.0, "level": "ok"})
    channel.publish_state("main", "binanceusdm", {"margin_ratio_pct": 290.0, "level": "ok"})
    async with subscriber(mosquitto, f"{PREFIX}/main/state") as client:
        await channel.start()
        try:
            messages = await receive_all(client, quiet=0.5)
        finally:
            await channel.close()
    assert [document(message)["margin_ratio_pct"] for message in messages] == [290.0]


# --- Home Assistant discovery ---------------------------------------------------------------------


@pytest.mark.asyncio
async def test_discovery_gives_each_account_a_device_with_three_entities(mosquitto: MosquittoBroker) -> None:
    """Retained discovery configs: valid JSON, unique ids, one device per account, the right state topic."""
    accounts = {"main": "binanceusdm", "sub/acct #2": "bybit"}
    async with running(settings_for(mosquitto)) as channel:
        for account, exchange in accounts.items():
            channel.publish_state(account, exchange, {"margin_ratio_pct": 125.0, "level": "critical"})
        await asyncio.sleep(0.3)
        async with subscriber(mosquitto, "homeassistant/#", f"{PREFIX}/+/state") as client:
            messages = await receive_all(client)
    configs = {m.topic.value: document(m) for m in messages if m.topic.matches("homeassistant/#")}
    states = {m.topic.value: document(m) for m in messages if m.topic.matches(f"{PREFIX}/+/state")}
    assert all(message.retain for message in messages)
    assert len(configs) == 6
    assert len({config["unique_id"] for config in configs.values()}) == 6
    for account, exchange in accounts.items():
        slug = account_slug(account)
        mine = {topic: config for topic, config in configs.items() if topic.split("/")[2].endswith(slug)}
        assert sorted(topic.split("/")[1] for topic in mine) == ["binary_sensor", "sensor", "sensor"]
        assert len({json.dumps(config["device"], sort_keys=True) for config in mine.values()}) == 1
        for config in mine.values():
            assert config["state_topic"] == f"{PREFIX}/{slug}/state"
            assert config["state_topic"] in states
            assert config["availability_topic"] == f"{PREFIX}/status"
            assert (config["payload_available"], config["payload_not_available"]) == ("online", "offline")
            assert config["device"]["model"] == exchange
        assert states[f"{PREFIX}/{slug}/state"]["account"] == account
    ratio = configs[f"homeassistant/sensor/{PREFIX}_main/margin_ratio/config"]
    assert (ratio["unit_of_measurement"], ratio["state_class"]) == ("%", "measurement")
    level = configs[f"homeassistant/sensor/{PREFIX}_main/level/config"]
    assert level["device_class"] == "enum"
    assert "critical" in level["options"]
    at_risk = configs[f"homeassistant/binary_sensor/{PREFIX}_main/at_risk/config"]
    assert at_risk["device_class"] == "problem"


def test_payloads_are_strict_json() -> None:
    """A figure JSON cannot hold (NaN, infinity) becomes null; other payloads are encoded as they are."""
    assert json.loads(encode_json({"a": 1.5, "b": [2.0, {"c": None}]})) == {"a": 1.5, "b": [2.0, {"c": None}]}
    odd: dict[Any, Any] = {"ratio": math.nan, "nested": [{"price": math.inf}], 7: -math.inf}
    assert json.loads(encode_json(odd)) == {"ratio": None, "nested": [{"price": None}], "7": None}


def test_discovery_can_be_turned_off_and_uses_the_prefix() -> None:
    """Discovery topics sit under ``discovery_prefix``; node ids carry the topic prefix and the slug."""
    settings = MqttSettings("broker", topic_prefix="home/margin", discovery_prefix="ha")
    topics = [topic for topic, _ in discovery_configs(settings, "main", "okx")]
    assert topics == [
        "ha/sensor/home_margin_main/margin_ratio/config",
        "ha/sensor/home_margin_main/level/config",
        "ha/binary_sensor/home_margin_main/at_risk/config",
    ]


@pytest.mark.parametrize(
    ("account", "expected"),
    [("main", "main"), ("sub-1_x", "sub-1_x"), ("a/b", "a_b-"), ("a+b#c", "a_b_c-"), ("////", "account-")],
    ids=["plain", "dash-underscore", "slash", "wildcards", "nothing-left"],
)
def test_account_names_become_safe_topic_levels(account: str, expected: str) -> None:
    """Slugs hold no ``+``, ``#`` or ``/``; a changed name carries a hash of the original."""
    slug = account_slug(account)
    assert slug.startswith(expected)
    assert not set("+#/ ") & set(slug)
    assert account_slug("a/b") != account_slug("a_b")


@pytest.mark.parametrize(
    ("level", "at_risk"),
    [("ok", False), ("warning", False), ("danger", True), ("critical", True), ("liquidation", True),
     ("blind", True), ("margin_call", True)],
)  # fmt: skip
def test_at_risk_is_danger_or_worse(level: str, at_risk: bool) -> None:
    """The binary sensor is on from danger on, and when the monitor is blind."""
    assert is_at_risk(level) is at_risk


@pytest.mark.parametrize(
    "overrides",
    [
        {"topic_prefix": "a/+/b"},
        {"topic_prefix": "a/#"},
        {"topic_prefix": ""},
        {"port": 0},
        {"state_interval_s": 0},
    ],
    ids=["plus", "hash", "empty", "port", "interval"],
)
def test_bad_settings_name_the_key(overrides: dict[str, Any]) -> None:
    """Settings that cannot work are refused with the key at fault."""
    with pytest.raises(ConfigError) as raised:
        MqttSettings("broker", **overrides)
    assert raised.value.field == next(iter(overrides))


# --- authentication and TLS -----------------------------------------------------------------------


@pytest.mark.asyncio
async def test_username_and_password_let_the_channel_in(mosquitto_auth: MosquittoBroker) -> None:
    """With the right credentials the channel connects to a broker that refuses anonymous clients."""
    from mosquitto import AUTH_PASSWORD, AUTH_USER  # noqa: PLC0415 - the plugin module, loaded by pytest

    settings = settings_for(mosquitto_auth, username=AUTH_USER, password=AUTH_PASSWORD)
    async with running(settings) as channel:
        await channel.send(make_alert())


@pytest.mark.asyncio
async def test_a_wrong_password_is_logged_and_send_raises_temporary(mosquitto_auth: MosquittoBroker) -> None:
    """A refused connection is logged with the broker's reason; ``send`` raises a retryable error."""
    from mosquitto import AUTH_USER  # noqa: PLC0415 - the plugin module, loaded by pytest

    settings = settings_for(mosquitto_auth, username=AUTH_USER, password="wrong")  # noqa: S106 - test value
    with capture_logs() as logs:
        async with running(settings, connect=False) as channel:
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.5):
                    await channel.wait_connected()
            with pytest.raises(TemporaryDeliveryError, match="not connected") as raised:
                await channel.send(make_alert())
    refused = [line for line in logs if line["event"] == "mqtt.connect_refused"]
    assert refused
    assert "wrong" not in json.dumps(refused, default=str)
    assert channel.last_error is not None
    assert channel.last_error in str(raised.value)


@pytest.mark.asyncio
async def test_tls_with_a_ca_file(mosquitto_tls: MosquittoBroker) -> None:
    """The channel speaks TLS to a broker whose certificate it trusts through ``ca_file``."""
    settings = settings_for(mosquitto_tls, tls=True, ca_file=str(mosquitto_tls.ca_file))
    async with running(settings) as channel:
        await channel.send(make_alert())
