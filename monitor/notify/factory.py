"""Channels from the configuration: one ``[[channels]]`` table -> one channel, secrets resolved."""

from __future__ import annotations

import os
import ssl
from dataclasses import replace
from typing import TYPE_CHECKING

from monitor.config import ChannelConfig, expand_credentials_directory, resolve_channel_secrets
from monitor.errors import ConfigError
from monitor.notify.log import LogChannel
from monitor.notify.mqtt import MqttChannel, MqttSettings
from monitor.notify.ntfy import NtfyChannel, NtfySettings
from monitor.notify.pushover import PushoverChannel, PushoverSettings
from monitor.notify.telegram import TelegramChannel, TelegramSettings
from monitor.notify.webhook import WebhookChannel, WebhookSettings

if TYPE_CHECKING:
    from collections.abc import Mapping

    from monitor.notify.base import Channel


def build_channels(
    configs: tuple[ChannelConfig, ...], environ: Mapping[str, str] = os.environ
) -> tuple[list[Channel], list[str]]:
    """The configured channels (a ``log`` channel always among them) and every secret they hold.

    A setting a channel refuses is re-raised as a ``ConfigError`` on that channel's key.
    """
    channels: list[Channel] = []
    secrets: list[str] = []
    for config in configs:
        values = resolve_channel_secrets(config, environ)
        secrets.extend(value for value in values.values() if value)
        try:
            resolved = config
            if config.type == "mqtt":
                resolved = replace(config, options={**config.options, "ca_file": _ca_file(config, environ)})
            channels.append(_build(resolved, values))
        except ConfigError as exc:
            raise ConfigError(f"{config.key_path}.{exc.field}", exc.problem, source=config.source) from None
    # The log is always on: every alert reaches it, whatever filters a configured log channel has.
    unfiltered = any(
        config.type == "log" and config.accounts is None and config.min_level == "ok" for config in configs
    )
    if not unfiltered:
        taken = {channel.name for channel in channels}
        channels.insert(0, LogChannel(name="log" if "log" not in taken else "log-all"))
    return channels, secrets


def _build(config: ChannelConfig, secrets: Mapping[str, str]) -> Channel:
    options = config.options
    name, min_level, accounts = config.name, config.min_level, config.accounts
    if config.type == "log":
        return LogChannel(name=name, min_level=min_level, accounts=accounts)
    if config.type == "telegram":
        return TelegramChannel(
            TelegramSettings(
                bot_token=secrets["bot_token"],
                chat_ids=_tuple(options["chat_ids"]),
                api_url=str(options["api_url"]),
                min_interval_s=_float(options["min_interval_s"]),
            ),
            name=name,
            min_level=min_level,
            accounts=accounts,
        )
    if config.type == "mqtt":
        return MqttChannel(
            MqttSettings(
                host=str(options["host"]),
                port=_int(options["port"]),
                topic_prefix=str(options["topic_prefix"]),
                username=secrets.get("username"),
                password=secrets.get("password"),
                tls=bool(options["tls"]),
                ca_file=_optional_str(options.get("ca_file")),
                client_id=_optional_str(options.get("client_id")),
                discovery=bool(options["discovery"]),
                discovery_prefix=str(options["discovery_prefix"]),
                instance=_optional_str(options.get("instance")),  # set by sharding, not by the file
            ),
            name=name,
            min_level=min_level,
            accounts=accounts,
        )
    if config.type == "ntfy":
        return NtfyChannel(
            NtfySettings(topic=str(options["topic"]), url=str(options["url"]), token=secrets.get("token")),
            name=name,
            min_level=min_level,
            accounts=accounts,
        )
    if config.type == "pushover":
        return PushoverChannel(
            PushoverSettings(
                token=secrets["token"],
                user_key=secrets["user_key"],
                api_url=str(options["api_url"]),
                retry=_int(options["emergency_retry_s"]),
                expire=_int(options["emergency_expire_s"]),
            ),
            name=name,
            min_level=min_level,
            accounts=accounts,
        )
    if config.type == "webhook":
        headers = {}
        if "bearer_token" in secrets:
            headers["Authorization"] = f"Bearer {secrets['bearer_token']}"
        return WebhookChannel(
            WebhookSettings(url=str(options["url"]), headers=headers),
            name=name,
            min_level=min_level,
            accounts=accounts,
        )
    raise ConfigError(
        "type", f"unknown channel type {config.type!r}"
    )  # pragma: no cover - the loader refuses it


def _ca_file(config: ChannelConfig, environ: Mapping[str, str]) -> str | None:
    """The MQTT channel's ``ca_file``, ``$CREDENTIALS_DIRECTORY`` expanded, checked to load as PEM.

    Checked here so that ``check-config`` and the start refuse it, rather than every reconnect failing.
    """
    template = config.options.get("ca_file")
    if template is None:
        return None
    try:
        path = expand_credentials_directory(str(template), environ)
    except ValueError as exc:
        raise ConfigError("ca_file", str(exc)) from None
    try:
        ssl.create_default_context(cafile=path)
    except FileNotFoundError:
        raise ConfigError("ca_file", f"{path} does not exist") from None
    except ssl.SSLError as exc:
        raise ConfigError("ca_file", f"{path} holds no PEM CA certificate ({exc.reason})") from None
    except OSError as exc:
        raise ConfigError("ca_file", f"cannot read {path}: {exc.strerror}") from None
    return path


def _tuple(value: object) -> tuple[int | str, ...]:
    return tuple(value) if isinstance(value, tuple | list) else ()


def _float(value: object) -> float:
    return float(value) if isinstance(value, int | float) else 0.0


def _int(value: object) -> int:
    return int(value) if isinstance(value, int | float) else 0


def _optional_str(value: object) -> str | None:
    return None if value is None else str(value)
