"""MQTT over TLS with a password, against a Mosquitto that demands both.

The broker's certificate is signed by a CA made for the test (``tests/mosquitto.py``); the channel is
built from a configuration file the way the daemon builds it (``ca_file``, ``username_env``,
``password_file``), so the test covers the keys a user writes as well as the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from dataclasses import replace
from typing import TYPE_CHECKING

import aiomqtt
import pytest
from monitor.alerts.model import Alert, AlertKind
from monitor.config import load_config
from monitor.errors import ConfigError, TemporaryDeliveryError
from monitor.notify.factory import build_channels
from monitor.notify.mqtt import MqttChannel
from structlog.testing import capture_logs

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from mosquitto import MosquittoBroker

pytest_plugins = ["mosquitto"]

WAIT_S = 5.0
WRONG_PASSWORD = "Wr0ng-But-Distinctive-Pw"  # noqa: S105 - the password the broker must refuse
# The plugin's credentials (tests/mosquitto.py; importing it here would pre-empt pytest's plugin load).
AUTH_USER = "monitor"
AUTH_PASSWORD = "s3cret-for-tests"  # noqa: S105 - the throwaway password of the plugin's brokers


def make_alert() -> Alert:
    """A danger alert for account ``main``."""
    return Alert(
        id="alert-0001",
        kind=AlertKind.FIRING,
        account="main",
        exchange="hyperliquid",
        key="main",
        level="danger",
        created_at=1_795_000_000.0,
        margin_ratio_pct=128.4,
        summary="main at 128.4%",
    )


def other_ca(directory: Path) -> Path:
    """A CA that did not sign the broker's certificate."""
    from mosquitto import make_ca  # noqa: PLC0415 - the plugin module, loaded by pytest

    directory.mkdir()
    return make_ca(directory, "not the broker's CA")


def channel_from_config(
    tmp_path: Path,
    broker: MosquittoBroker,
    password: str,
    ca_file: str,
    environ: dict[str, str] | None = None,
) -> MqttChannel:
    """The ``mqtt`` channel of a configuration file aimed at ``broker``, built as the daemon builds it."""
    secret = tmp_path / "mqtt-password"
    secret.write_text(password + "\n", encoding="utf-8")
    secret.chmod(0o600)
    config = tmp_path / "margin-monitor.toml"
    config.write_text(
        f"""
[[accounts]]
name = "main"
exchange = "hyperliquid"
wallet_address = "0x0000000000000000000000000000000000000001"

[[channels]]
type = "mqtt"
name = "home"
host = "{broker.host}"
port = {broker.port}
tls = true
ca_file = "{ca_file}"
topic_prefix = "mm-tls"
username_env = "MQTT_USER"
password_file = "{secret}"
""",
        encoding="utf-8",
    )
    env = {"MQTT_USER": AUTH_USER, **(environ or {})}
    channels, _ = build_channels(load_config(config, environ=env).channels, env)
    (channel,) = [item for item in channels if isinstance(item, MqttChannel)]
    # Tests need not wait for the production backoff between attempts.
    channel.settings = replace(
        channel.settings, reconnect_min_s=0.05, reconnect_max_s=0.2, connect_timeout_s=2.0
    )
    return channel


@contextlib.asynccontextmanager
async def started(channel: MqttChannel) -> AsyncIterator[MqttChannel]:
    """``channel`` started, closed on the way out."""
    await channel.start()
    try:
        yield channel
    finally:
        await channel.close()


@contextlib.asynccontextmanager
async def tls_subscriber(broker: MosquittoBroker, topic: str) -> AsyncIterator[aiomqtt.Client]:
    """A subscriber that trusts the broker's CA and knows the password."""
    context = ssl.create_default_context(cafile=str(broker.ca_file))
    async with aiomqtt.Client(
        broker.host,
        broker.port,
        username=AUTH_USER,
        password=AUTH_PASSWORD,
        tls_context=context,
        timeout=WAIT_S,
    ) as client:
        await client.subscribe(topic, qos=1)
        yield client


@pytest.mark.asyncio
async def test_an_alert_is_delivered_over_tls_with_the_password(
    tmp_path: Path, mosquitto_tls_auth: MosquittoBroker
) -> None:
    """Right CA, right password: the alert reaches a subscriber, over TLS, at QoS 1."""
    broker = mosquitto_tls_auth
    channel = channel_from_config(tmp_path, broker, AUTH_PASSWORD, str(broker.ca_file))
    async with tls_subscriber(broker, "mm-tls/+/alert") as client, started(channel):
        async with asyncio.timeout(WAIT_S):
            await channel.wait_connected()
        await channel.send(make_alert())
        async with asyncio.timeout(WAIT_S):
            message = await anext(client.messages)
    assert str(message.topic) == "mm-tls/main/alert"
    assert isinstance(message.payload, bytes)
    assert json.loads(message.payload)["id"] == "alert-0001"


@pytest.mark.asyncio
async def test_a_wrong_password_fails_naming_the_channel_not_the_password(
    tmp_path: Path, mosquitto_tls_auth: MosquittoBroker
) -> None:
    """The broker refuses the login: the log names the channel and broker; no line holds the password."""
    broker = mosquitto_tls_auth
    channel = channel_from_config(tmp_path, broker, WRONG_PASSWORD, str(broker.ca_file))
    with capture_logs() as logs:
        async with started(channel):
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(1.0):
                    await channel.wait_connected()
            with pytest.raises(TemporaryDeliveryError) as raised:
                await channel.send(make_alert())
    refused = [line for line in logs if line["event"] == "mqtt.connect_refused"]
    assert refused
    assert refused[0]["channel"] == "home"
    assert refused[0]["broker"] == f"{broker.host}:{broker.port}"
    assert "not authorized" in refused[0]["error"].lower()
    assert raised.value.channel == "home"
    assert "not authorized" in str(raised.value).lower()
    everything = json.dumps(logs, default=str) + str(raised.value) + repr(channel.settings)
    assert WRONG_PASSWORD not in everything


@pytest.mark.asyncio
async def test_a_server_certificate_from_another_ca_is_refused(
    tmp_path: Path, mosquitto_tls_auth: MosquittoBroker
) -> None:
    """Trusting another CA, the channel never connects (nor sends the password): a verify failure."""
    broker = mosquitto_tls_auth
    channel = channel_from_config(tmp_path, broker, AUTH_PASSWORD, str(other_ca(tmp_path / "other-ca")))
    with capture_logs() as logs:
        async with started(channel):
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(1.0):
                    await channel.wait_connected()
    failed = [line for line in logs if line["event"] == "mqtt.connect_failed"]
    assert failed
    assert "CERTIFICATE_VERIFY_FAILED" in failed[0]["error"]
    assert channel.connections == 0
    # The client hung up in the handshake, before any MQTT packet (and so before the password) was sent.
    assert "alert unknown ca" in broker.log_tail(50)


def test_ca_file_problems_are_config_errors_on_the_key(
    tmp_path: Path, mosquitto_tls_auth: MosquittoBroker
) -> None:
    """A missing or non-PEM ``ca_file``, or an unset ``$CREDENTIALS_DIRECTORY``, names the key."""
    broker = mosquitto_tls_auth
    with pytest.raises(ConfigError, match=r"channels\[0\]\.ca_file: .*missing\.pem does not exist"):
        channel_from_config(tmp_path, broker, AUTH_PASSWORD, str(tmp_path / "missing.pem"))
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"channels\[0\]\.ca_file: .*junk\.pem holds no PEM CA certificate"):
        channel_from_config(tmp_path, broker, AUTH_PASSWORD, str(junk))
    with pytest.raises(
        ConfigError, match=r"channels\[0\]\.ca_file: .*CREDENTIALS_DIRECTORY, which is not set"
    ):
        channel_from_config(tmp_path, broker, AUTH_PASSWORD, "$CREDENTIALS_DIRECTORY/ca.crt")
    # Under systemd's LoadCredential= the CA comes from the credentials directory.
    channel = channel_from_config(
        tmp_path,
        broker,
        AUTH_PASSWORD,
        "$CREDENTIALS_DIRECTORY/ca.crt",
        environ={"CREDENTIALS_DIRECTORY": str(broker.ca_file.parent)},
    )
    assert channel.settings.ca_file == str(broker.ca_file)
