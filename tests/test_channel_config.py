"""The ``[[channels]]`` tables and the ``[alerts]`` policy keys: what loads, is refused, gets built."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import certifi
import pytest
from monitor.alerts.engine import AlertPolicy
from monitor.config import (
    AlertsConfig,
    ChannelConfig,
    SecretRef,
    check_config,
    load_config,
    resolve_channel_secrets,
)
from monitor.errors import ConfigError, UserInputError
from monitor.notify.factory import build_channels
from monitor.notify.log import LogChannel
from monitor.notify.mqtt import MqttChannel, MqttSettings
from monitor.notify.ntfy import NtfyChannel, NtfySettings
from monitor.notify.pushover import PushoverChannel, PushoverSettings
from monitor.notify.telegram import TelegramChannel, TelegramSettings
from monitor.notify.webhook import WebhookChannel, WebhookSettings
from monitor.service.alerting import policy_from

if TYPE_CHECKING:
    from monitor.notify.base import Channel

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config" / "margin-monitor.example.toml"

# Two accounts, so that a channel's ``accounts`` filter has something to choose from.
ACCOUNTS = """
[[accounts]]
name = "main"
exchange = "binanceusdm"
api_key_env = "K"
secret_env = "S"

[[accounts]]
name = "spare"
exchange = "binanceusdm"
api_key_env = "K"
secret_env = "S"
"""

BOT_TOKEN = "123456:AAE-made-up-bot-token"  # noqa: S105 - a made-up token
# Distinctive enough that finding it anywhere in a message is a leak, not a coincidence.
SECRET = "vmPUZE6mv9SD5VNHk4HlWFsOr6aKE2zvsw0MuIgwCIPy"  # noqa: S105 - a made-up secret
NTFY_TOKEN = "tk_made_up"  # noqa: S105 - a made-up token
PO_TOKEN = "po-app-token"  # noqa: S105 - a made-up token

TELEGRAM = '[[channels]]\ntype = "telegram"\nchat_ids = [123456789]\nbot_token_env = "TELEGRAM_BOT_TOKEN"\n'
PUSHOVER = '[[channels]]\ntype = "pushover"\ntoken_env = "PUSHOVER_TOKEN"\nuser_key_env = "PUSHOVER_USER"\n'


def write(tmp_path: Path, text: str, name: str = "margin-monitor.toml") -> Path:
    """Write a configuration file into ``tmp_path`` and return its path."""
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def secret_file(directory: Path, name: str, value: str = SECRET, mode: int = 0o600) -> Path:
    """Write a secret file ending in a newline, as ``echo`` would, with ``mode``."""
    path = directory / name
    path.write_text(value + "\n", encoding="utf-8")
    path.chmod(mode)
    return path


def load_channels(tmp_path: Path, stanzas: str) -> tuple[ChannelConfig, ...]:
    """The channels of a file holding the two accounts and ``stanzas``."""
    return load_config(write(tmp_path, ACCOUNTS + stanzas), environ={}).channels


def settings_of(channel: Channel) -> object:
    """The settings object a built channel was given (``None`` for the log channel, which has none)."""
    if isinstance(channel, TelegramChannel | MqttChannel | NtfyChannel | PushoverChannel | WebhookChannel):
        return channel.settings
    return None


# --- what loads -----------------------------------------------------------------------------------

LOADS: list[tuple[str, str, str, str, dict[str, object], dict[str, SecretRef]]] = [
    ("log", 'type = "log"', "log", "ok", {}, {}),
    (
        "telegram-defaults",
        'type = "telegram"\nchat_ids = [123456789]\nbot_token_env = "TELEGRAM_BOT_TOKEN"',
        "telegram",
        "warning",
        {
            "chat_ids": (123456789,),
            "api_url": "https://api.telegram.org",
            "commands": True,
            "min_interval_s": 1.0,
        },
        {"bot_token": SecretRef("bot_token", "env", "TELEGRAM_BOT_TOKEN")},
    ),
    (
        "telegram-every-key",
        (
            'type = "telegram"\nname = "ops"\nchat_ids = [-1001234567890, "@margin_alerts"]\n'
            'api_url = "http://127.0.0.1:8081/"\ncommands = false\nmin_interval_s = 0\n'
            'bot_token_file = "/etc/margin-monitor/telegram-token"'
        ),
        "ops",
        "warning",
        {
            "chat_ids": (-1001234567890, "@margin_alerts"),
            "api_url": "http://127.0.0.1:8081",
            "commands": False,
            "min_interval_s": 0.0,
        },
        {"bot_token": SecretRef("bot_token", "file", "/etc/margin-monitor/telegram-token")},
    ),
    (
        "mqtt-defaults",
        'type = "mqtt"\nhost = "broker.lan"',
        "mqtt",
        "ok",
        {
            "host": "broker.lan",
            "port": 1883,
            "topic_prefix": "margin-monitor",
            "tls": False,
            "ca_file": None,
            "client_id": None,
            "discovery": True,
            "discovery_prefix": "homeassistant",
        },
        {},
    ),
    (
        "mqtt-every-key",
        (
            'type = "mqtt"\nhost = "broker.lan"\nport = 8883\ntopic_prefix = "home/margin"\ntls = true\n'
            'ca_file = "/etc/ssl/broker-ca.pem"\nclient_id = "mm-1"\ndiscovery = false\n'
            'discovery_prefix = "ha"\nusername_env = "MQTT_USER"\npassword_file = "/run/creds/mqtt-password"'
        ),
        "mqtt",
        "ok",
        {
            "host": "broker.lan",
            "port": 8883,
            "topic_prefix": "home/margin",
            "tls": True,
            "ca_file": "/etc/ssl/broker-ca.pem",
            "client_id": "mm-1",
            "discovery": False,
            "discovery_prefix": "ha",
        },
        {
            "username": SecretRef("username", "env", "MQTT_USER"),
            "password": SecretRef("password", "file", "/run/creds/mqtt-password"),
        },
    ),
    (
        "ntfy-defaults",
        'type = "ntfy"\ntopic = "my-margin-alerts"',
        "ntfy",
        "warning",
        {"url": "https://ntfy.sh", "topic": "my-margin-alerts"},
        {},
    ),
    (
        "ntfy-every-key",
        'type = "ntfy"\nurl = "https://ntfy.example.com/"\ntopic = "margin"\ntoken_env = "NTFY_TOKEN"',
        "ntfy",
        "warning",
        {"url": "https://ntfy.example.com", "topic": "margin"},
        {"token": SecretRef("token", "env", "NTFY_TOKEN")},
    ),
    (
        "pushover-defaults",
        'type = "pushover"\ntoken_env = "PUSHOVER_TOKEN"\nuser_key_env = "PUSHOVER_USER"',
        "pushover",
        "warning",
        {"api_url": "https://api.pushover.net", "emergency_retry_s": 60, "emergency_expire_s": 3600},
        {
            "token": SecretRef("token", "env", "PUSHOVER_TOKEN"),
            "user_key": SecretRef("user_key", "env", "PUSHOVER_USER"),
        },
    ),
    (
        "pushover-every-key",
        (
            'type = "pushover"\napi_url = "http://127.0.0.1:9000"\nemergency_retry_s = 30\n'
            'emergency_expire_s = 10800\ntoken_file = "/run/creds/po-token"\nuser_key_env = "PUSHOVER_USER"'
        ),
        "pushover",
        "warning",
        {"api_url": "http://127.0.0.1:9000", "emergency_retry_s": 30, "emergency_expire_s": 10800},
        {
            "token": SecretRef("token", "file", "/run/creds/po-token"),
            "user_key": SecretRef("user_key", "env", "PUSHOVER_USER"),
        },
    ),
    (
        "webhook",
        'type = "webhook"\nurl = "https://alerts.example.com/margin"',
        "webhook",
        "warning",
        {"url": "https://alerts.example.com/margin"},
        {},
    ),
    (
        "webhook-bearer",
        'type = "webhook"\nurl = "https://alerts.example.com/margin"\nbearer_token_env = "HOOK_TOKEN"',
        "webhook",
        "warning",
        {"url": "https://alerts.example.com/margin"},
        {"bearer_token": SecretRef("bearer_token", "env", "HOOK_TOKEN")},
    ),
]


@pytest.mark.parametrize(
    ("stanza", "name", "min_level", "options", "secrets"), [c[1:] for c in LOADS], ids=[c[0] for c in LOADS]
)
def test_channel_loads_with_its_keys_and_defaults(
    tmp_path: Path,
    stanza: str,
    name: str,
    min_level: str,
    options: dict[str, object],
    secrets: dict[str, SecretRef],
) -> None:
    """Each channel type reads its own keys; what is left out takes the documented default."""
    (channel,) = load_channels(tmp_path, f"[[channels]]\n{stanza}\n")
    assert channel.type == stanza.split('"')[1]
    assert (channel.name, channel.min_level, channel.accounts) == (name, min_level, None)
    assert dict(channel.options) == options
    assert dict(channel.secrets) == secrets
    assert (channel.key_path, channel.source) == ("channels[0]", str(tmp_path / "margin-monitor.toml"))


def test_channels_are_optional(tmp_path: Path) -> None:
    """A file without ``[[channels]]`` loads with none (the log channel is added when building)."""
    assert load_channels(tmp_path, "") == ()


def test_min_level_and_accounts_filter_are_read(tmp_path: Path) -> None:
    """``min_level`` replaces the type's default and ``accounts`` limits the channel to those accounts."""
    (channel,) = load_channels(
        tmp_path, '[[channels]]\ntype = "mqtt"\nhost = "b"\nmin_level = "critical"\naccounts = ["spare"]\n'
    )
    assert channel.min_level == "critical"
    assert channel.accounts == frozenset({"spare"})


def test_empty_accounts_filter_is_kept_empty(tmp_path: Path) -> None:
    """``accounts = []`` is an empty filter (no account), not "every account"."""
    (channel,) = load_channels(tmp_path, '[[channels]]\ntype = "log"\naccounts = []\n')
    assert channel.accounts == frozenset()


def test_channels_keep_their_order_and_index(tmp_path: Path) -> None:
    """Channels come back in file order, each with its index, so errors can name ``channels[i]``."""
    channels = load_channels(
        tmp_path,
        TELEGRAM + '[[channels]]\ntype = "telegram"\nname = "second"\nchat_ids = [1]\n'
        'bot_token_env = "OTHER_TOKEN"\n',
    )
    assert [(c.name, c.index, c.key_path) for c in channels] == [
        ("telegram", 0, "channels[0]"),
        ("second", 1, "channels[1]"),
    ]


def test_relative_secret_and_ca_paths_are_taken_from_the_config_directory(tmp_path: Path) -> None:
    """``*_file`` and ``ca_file`` given relative resolve against the file's directory, not the cwd."""
    (channel,) = load_channels(
        tmp_path,
        '[[channels]]\ntype = "mqtt"\nhost = "b"\nca_file = "ca.pem"\npassword_file = "creds/mqtt"\n',
    )
    assert channel.options["ca_file"] == str(tmp_path.resolve() / "ca.pem")
    assert channel.secrets["password"] == SecretRef(
        "password", "file", str(tmp_path.resolve() / "creds/mqtt")
    )


def test_credentials_directory_is_kept_for_later(tmp_path: Path) -> None:
    """A ``$CREDENTIALS_DIRECTORY`` path stays a template until the secret is read."""
    (channel,) = load_channels(
        tmp_path,
        '[[channels]]\ntype = "telegram"\nchat_ids = [1]\nbot_token_file = "$CREDENTIALS_DIRECTORY/tg"\n',
    )
    assert channel.secrets["bot_token"].reference == "$CREDENTIALS_DIRECTORY/tg"


# --- what does not load ---------------------------------------------------------------------------

BAD_CHANNELS = [
    ("not-an-array", '[channels]\ntype = "log"\n', "channels", "must be an array of tables ([[channels]])"),
    ("missing-type", '[[channels]]\nname = "x"\n', "channels[0].type", "missing"),
    (
        "unknown-type",
        '[[channels]]\ntype = "slack"\n',
        "channels[0].type",
        "unknown channel type 'slack' (one of log, telegram, mqtt, ntfy, pushover, webhook)",
    ),
    (
        "unknown-key-did-you-mean",
        TELEGRAM.replace("chat_ids", "chat_id"),
        "channels[0].chat_id",
        "unknown key; did you mean 'chat_ids'?",
    ),
    (
        "key-of-another-type",
        '[[channels]]\ntype = "ntfy"\ntopic = "t"\nhost = "broker"\n',
        "channels[0].host",
        "unknown key",
    ),
    (
        "bad-name",
        '[[channels]]\ntype = "log"\nname = "my log"\n',
        "channels[0].name",
        "may only hold letters",
    ),
    (
        "duplicate-default-name",
        TELEGRAM + TELEGRAM,
        "channels[1].name",
        "duplicate channel name 'telegram' (also channels[0])",
    ),
    (
        "duplicate-name-across-types",
        (
            '[[channels]]\ntype = "log"\nname = "alerts"\n'
            '[[channels]]\ntype = "ntfy"\nname = "alerts"\ntopic = "t"\n'
        ),
        "channels[1].name",
        "duplicate channel name 'alerts' (also channels[0])",
    ),
    (
        "telegram-missing-bot-token",
        '[[channels]]\ntype = "telegram"\nchat_ids = [1]\n',
        "channels[0].bot_token_env",
        "missing: a telegram channel needs bot_token_env or bot_token_file",
    ),
    (
        "pushover-missing-token",
        PUSHOVER.replace('token_env = "PUSHOVER_TOKEN"\n', ""),
        "channels[0].token_env",
        "missing: a pushover channel needs token_env or token_file",
    ),
    (
        "pushover-missing-user-key",
        PUSHOVER.replace('user_key_env = "PUSHOVER_USER"\n', ""),
        "channels[0].user_key_env",
        "missing: a pushover channel needs user_key_env or user_key_file",
    ),
    (
        "telegram-env-and-file",
        TELEGRAM + 'bot_token_file = "/run/creds/tg"\n',
        "channels[0].bot_token_file",
        "set either bot_token_env or bot_token_file, not both",
    ),
    (
        "mqtt-password-env-and-file",
        '[[channels]]\ntype = "mqtt"\nhost = "b"\npassword_env = "P"\npassword_file = "p"\n',
        "channels[0].password_file",
        "set either password_env or password_file, not both",
    ),
    (
        "env-name-lower-case",
        TELEGRAM.replace('"TELEGRAM_BOT_TOKEN"', '"telegram_bot_token"'),
        "channels[0].bot_token_env",
        "must name an environment variable in upper case",
    ),
    (
        "secret-path-with-other-variable",
        '[[channels]]\ntype = "telegram"\nchat_ids = [1]\nbot_token_file = "$HOME/tg"\n',
        "channels[0].bot_token_file",
        "the only variable a path may use is $CREDENTIALS_DIRECTORY",
    ),
    (
        "inline-bot-token",
        f'[[channels]]\ntype = "telegram"\nchat_ids = [1]\nbot_token = "{BOT_TOKEN}"\n',
        "channels[0].bot_token",
        "unknown key; secrets are not written in this file: use bot_token_env or bot_token_file",
    ),
    (
        "inline-pushover-token",
        PUSHOVER.replace('token_env = "PUSHOVER_TOKEN"', f'token = "{SECRET}"'),
        "channels[0].token",
        "unknown key; secrets are not written in this file: use token_env or token_file",
    ),
    (
        "inline-pushover-user-key",
        PUSHOVER.replace('user_key_env = "PUSHOVER_USER"', f'user_key = "{SECRET}"'),
        "channels[0].user_key",
        "unknown key; secrets are not written in this file: use user_key_env or user_key_file",
    ),
    (
        "inline-ntfy-token",
        f'[[channels]]\ntype = "ntfy"\ntopic = "t"\ntoken = "{SECRET}"\n',
        "channels[0].token",
        "unknown key; secrets are not written in this file: use token_env or token_file",
    ),
    (
        "inline-webhook-bearer-token",
        f'[[channels]]\ntype = "webhook"\nurl = "https://h.example"\nbearer_token = "{SECRET}"\n',
        "channels[0].bearer_token",
        "unknown key; secrets are not written in this file: use bearer_token_env or bearer_token_file",
    ),
    (
        "inline-mqtt-password",
        f'[[channels]]\ntype = "mqtt"\nhost = "b"\npassword = "{SECRET}"\n',
        "channels[0].password",
        "secrets are not written in this file: use password_env or password_file",
    ),
    (
        "chat-ids-missing",
        '[[channels]]\ntype = "telegram"\nbot_token_env = "T"\n',
        "channels[0].chat_ids",
        "must be a non-empty list of chat ids",
    ),
    ("chat-ids-empty", TELEGRAM.replace("[123456789]", "[]"), "channels[0].chat_ids", "non-empty list"),
    ("chat-ids-not-a-list", TELEGRAM.replace("[123456789]", "123456789"), "channels[0].chat_ids", "list"),
    ("chat-ids-boolean", TELEGRAM.replace("[123456789]", "[true]"), "channels[0].chat_ids", "chat ids"),
    ("chat-ids-float", TELEGRAM.replace("[123456789]", "[1.5]"), "channels[0].chat_ids", "chat ids"),
    (
        "telegram-api-url-scheme",
        TELEGRAM + 'api_url = "ftp://api.telegram.org"\n',
        "channels[0].api_url",
        "must be a http:// or https:// URL with a host",
    ),
    (
        "ntfy-url-without-scheme",
        '[[channels]]\ntype = "ntfy"\ntopic = "t"\nurl = "ntfy.sh"\n',
        "channels[0].url",
        "must be a http:// or https:// URL with a host",
    ),
    (
        "pushover-url-with-password",
        PUSHOVER + 'api_url = "https://user:pw@api.pushover.net"\n',
        "channels[0].api_url",
        "must not contain a user name or password",
    ),
    (
        "webhook-url-scheme",
        '[[channels]]\ntype = "webhook"\nurl = "ws://alerts.example.com"\n',
        "channels[0].url",
        "must be a http:// or https:// URL with a host",
    ),
    ("webhook-url-missing", '[[channels]]\ntype = "webhook"\n', "channels[0].url", "missing"),
    (
        "webhook-url-bad-port",
        '[[channels]]\ntype = "webhook"\nurl = "https://alerts.example.com:99999/"\n',
        "channels[0].url",
        "is not a valid URL",
    ),
    (
        "telegram-commands-not-boolean",
        TELEGRAM + 'commands = "yes"\n',
        "channels[0].commands",
        "true or false",
    ),
    (
        "telegram-min-interval-negative",
        TELEGRAM + "min_interval_s = -1\n",
        "channels[0].min_interval_s",
        "must be at least 0, got -1",
    ),
    ("mqtt-host-missing", '[[channels]]\ntype = "mqtt"\n', "channels[0].host", "missing"),
    (
        "mqtt-topic-prefix-hash",
        '[[channels]]\ntype = "mqtt"\nhost = "b"\ntopic_prefix = "margin/#"\n',
        "channels[0].topic_prefix",
        "must not hold + or # nor start with /",
    ),
    (
        "mqtt-topic-prefix-plus",
        '[[channels]]\ntype = "mqtt"\nhost = "b"\ntopic_prefix = "margin/+/x"\n',
        "channels[0].topic_prefix",
        "must not hold + or # nor start with /",
    ),
    (
        "mqtt-topic-prefix-leading-slash",
        '[[channels]]\ntype = "mqtt"\nhost = "b"\ntopic_prefix = "/margin"\n',
        "channels[0].topic_prefix",
        "must not hold + or # nor start with /",
    ),
    (
        "mqtt-port-zero",
        '[[channels]]\ntype = "mqtt"\nhost = "b"\nport = 0\n',
        "channels[0].port",
        "must be between 1 and 65535, got 0",
    ),
    (
        "mqtt-port-too-high",
        '[[channels]]\ntype = "mqtt"\nhost = "b"\nport = 65536\n',
        "channels[0].port",
        "must be between 1 and 65535, got 65536",
    ),
    (
        "mqtt-port-string",
        '[[channels]]\ntype = "mqtt"\nhost = "b"\nport = "1883"\n',
        "channels[0].port",
        "must be a whole number, got a string",
    ),
    (
        "mqtt-tls-not-boolean",
        '[[channels]]\ntype = "mqtt"\nhost = "b"\ntls = 1\n',
        "channels[0].tls",
        "must be true or false, got an integer",
    ),
    ("ntfy-topic-missing", '[[channels]]\ntype = "ntfy"\n', "channels[0].topic", "missing"),
    (
        "min-level-unknown",
        '[[channels]]\ntype = "log"\nmin_level = "info"\n',
        "channels[0].min_level",
        "must be one of ok, warning, danger, critical, liquidation; got 'info'",
    ),
    (
        "accounts-unknown",
        '[[channels]]\ntype = "log"\naccounts = ["main", "nobody"]\n',
        "channels[0].accounts",
        "no account named nobody",
    ),
    (
        "accounts-not-a-list",
        '[[channels]]\ntype = "log"\naccounts = "main"\n',
        "channels[0].accounts",
        "must be a list of account names",
    ),
    (
        "pushover-retry-below-30",
        PUSHOVER + "emergency_retry_s = 29\n",
        "channels[0].emergency_retry_s",
        "must be between 30 and 10800, got 29",
    ),
    (
        "pushover-expire-above-10800",
        PUSHOVER + "emergency_expire_s = 10801\n",
        "channels[0].emergency_expire_s",
        "must be between 30 and 10800, got 10801",
    ),
    (
        "second-channel-is-named",
        '[[channels]]\ntype = "log"\n[[channels]]\ntype = "ntfy"\n',
        "channels[1].topic",
        "missing",
    ),
]


@pytest.mark.parametrize(
    ("text", "key", "problem"), [case[1:] for case in BAD_CHANNELS], ids=[c[0] for c in BAD_CHANNELS]
)
def test_bad_channel_names_key_and_file(tmp_path: Path, text: str, key: str, problem: str) -> None:
    """Each channel mistake is one ConfigError whose message starts with the file, then the key at fault."""
    path = write(tmp_path, ACCOUNTS + text)
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    message = str(caught.value)
    assert message.startswith(f"{path}: {key}: "), message
    assert problem in message, message
    assert isinstance(caught.value, UserInputError)
    assert (caught.value.field, caught.value.source) == (key, str(path))


@pytest.mark.parametrize(
    "text",
    [c[1] for c in BAD_CHANNELS if c[0].startswith(("inline-", "env-name"))],
    ids=[c[0] for c in BAD_CHANNELS if c[0].startswith(("inline-", "env-name"))],
)
def test_refused_secret_is_not_echoed(tmp_path: Path, text: str) -> None:
    """A secret written into the file (or into a ``*_env`` name) is refused without repeating it."""
    text = text.replace('"telegram_bot_token"', f'"{SECRET.lower()}"')
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, ACCOUNTS + text), environ={})
    message = str(caught.value)
    assert SECRET not in message
    assert SECRET.lower() not in message
    assert BOT_TOKEN not in message


def test_inline_secret_advice_names_a_key_the_channel_accepts(tmp_path: Path) -> None:
    """Refusing an inline secret must not advise a key the same channel would refuse in turn.

    ``password`` on a telegram channel is one of the *account* secret names, so the loader says
    "use password_env or password_file" -- keys a telegram channel does not have.
    """
    text = TELEGRAM + 'password = "hunter2"\n'
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, ACCOUNTS + text), environ={})
    message = str(caught.value)
    assert message.startswith(f"{tmp_path / 'margin-monitor.toml'}: channels[0].password: unknown key")
    assert "password_env" not in message, message


# --- [alerts] policy keys -------------------------------------------------------------------------

ALERT_KEYS = """
[alerts]
thresholds_pct = [160, 140, 125, 110]
hysteresis_pct = 10
repeat_warning_min = 60
repeat_danger_min = 10
repeat_critical_min = 2
fast_fall_pct = 25
fast_fall_window_s = 120
target_ratio_pct = 180
max_alert_age_s = 900
"""


def test_alert_policy_keys_are_read(tmp_path: Path) -> None:
    """Every ``[alerts]`` policy key reaches ``AlertsConfig`` as written (percent, minutes, seconds)."""
    alerts = load_config(write(tmp_path, ACCOUNTS + ALERT_KEYS), environ={}).alerts
    assert alerts == AlertsConfig(
        thresholds_pct=(160.0, 140.0, 125.0, 110.0),
        hysteresis_pct=10.0,
        repeat_warning_min=60.0,
        repeat_danger_min=10.0,
        repeat_critical_min=2.0,
        fast_fall_pct=25.0,
        fast_fall_window_s=120.0,
        target_ratio_pct=180.0,
        max_alert_age_s=900.0,
    )


def test_alert_policy_keys_default(tmp_path: Path) -> None:
    """Left out, the policy keys take the documented defaults."""
    alerts = load_config(write(tmp_path, ACCOUNTS), environ={}).alerts
    assert (alerts.hysteresis_pct, alerts.fast_fall_pct, alerts.fast_fall_window_s) == (5.0, 30.0, 300.0)
    assert (alerts.repeat_warning_min, alerts.repeat_danger_min, alerts.repeat_critical_min) == (
        240.0,
        30.0,
        5.0,
    )
    assert (alerts.target_ratio_pct, alerts.max_alert_age_s) == (200.0, 3600.0)


def test_policy_from_converts_percent_and_minutes(tmp_path: Path) -> None:
    """``policy_from`` gives the engine ratios (0.1 for 10%) and seconds; critical's repeat covers worse."""
    policy = policy_from(load_config(write(tmp_path, ACCOUNTS + ALERT_KEYS), environ={}).alerts)
    assert policy.thresholds == pytest.approx((1.6, 1.4, 1.25, 1.1))
    assert policy.hysteresis == pytest.approx(0.10)
    assert dict(policy.repeat_s) == {
        "warning": 3600.0,
        "danger": 600.0,
        "critical": 120.0,
        "liquidation": 120.0,
        "blind": 120.0,
        "margin_call": 120.0,
    }
    assert policy.fast_fall == pytest.approx(0.25)
    assert policy.fast_fall_window_s == 120.0
    assert policy.target_ratio == pytest.approx(1.8)


def test_policy_from_defaults_is_the_engines_default() -> None:
    """The default ``[alerts]`` table and the engine's default policy are the same policy."""
    policy = policy_from(AlertsConfig())
    default = AlertPolicy()
    assert policy.thresholds == pytest.approx(default.thresholds)
    assert policy.hysteresis == pytest.approx(default.hysteresis)
    assert dict(policy.repeat_s) == pytest.approx(dict(default.repeat_s))
    assert (policy.fast_fall, policy.fast_fall_window_s) == pytest.approx(
        (default.fast_fall, default.fast_fall_window_s)
    )
    assert policy.target_ratio == pytest.approx(default.target_ratio)


BAD_ALERTS = [
    ("hysteresis-above-100", "hysteresis_pct = 101", "alerts.hysteresis_pct", "must be at most 100"),
    ("hysteresis-negative", "hysteresis_pct = -1", "alerts.hysteresis_pct", "must be at least 0"),
    ("repeat-zero", "repeat_warning_min = 0", "alerts.repeat_warning_min", "must be above 0"),
    ("repeat-above-a-day", "repeat_danger_min = 1441", "alerts.repeat_danger_min", "must be at most 1440"),
    ("repeat-critical-string", 'repeat_critical_min = "5"', "alerts.repeat_critical_min", "must be a number"),
    ("fast-fall-zero", "fast_fall_pct = 0", "alerts.fast_fall_pct", "must be above 0"),
    ("fast-fall-window-zero", "fast_fall_window_s = 0", "alerts.fast_fall_window_s", "must be above 0"),
    ("target-at-100", "target_ratio_pct = 100", "alerts.target_ratio_pct", "must be above 100"),
    ("max-age-nan", "max_alert_age_s = nan", "alerts.max_alert_age_s", "must be a finite number"),
    ("max-age-zero", "max_alert_age_s = 0", "alerts.max_alert_age_s", "must be above 0"),
    ("key-typo", "repeat_warn_min = 5", "alerts.repeat_warn_min", "did you mean 'repeat_warning_min'?"),
]


@pytest.mark.parametrize(
    ("line", "key", "problem"), [case[1:] for case in BAD_ALERTS], ids=[c[0] for c in BAD_ALERTS]
)
def test_bad_alert_policy_names_key_and_file(tmp_path: Path, line: str, key: str, problem: str) -> None:
    """Each out-of-range policy key is one ConfigError naming the file and ``alerts.<key>``."""
    path = write(tmp_path, ACCOUNTS + f"[alerts]\n{line}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    assert str(caught.value).startswith(f"{path}: {key}: "), str(caught.value)
    assert problem in str(caught.value)


# --- building channels ----------------------------------------------------------------------------

#: A real bundle of PEM CA certificates (certifi ships one with the project's dependencies).
CA_FILE = certifi.where()

BUILDS: list[tuple[str, str, type[object], object]] = [
    (
        "telegram",
        (
            '[[channels]]\ntype = "telegram"\nchat_ids = [123, "@alerts"]\napi_url = "http://127.0.0.1:8081/"\n'
            'min_interval_s = 0.25\nbot_token_env = "TELEGRAM_BOT_TOKEN"\n'
        ),
        TelegramChannel,
        TelegramSettings(
            bot_token=BOT_TOKEN,
            chat_ids=(123, "@alerts"),
            api_url="http://127.0.0.1:8081",
            min_interval_s=0.25,
        ),
    ),
    (
        "mqtt",
        (
            '[[channels]]\ntype = "mqtt"\nhost = "broker.lan"\nport = 8883\ntopic_prefix = "home/mm"\n'
            "tls = true\n"
            f'ca_file = "{CA_FILE}"\nclient_id = "mm-1"\ndiscovery = false\ndiscovery_prefix = "ha"\n'
            'username_env = "MQTT_USER"\npassword_env = "MQTT_PASSWORD"\n'
        ),
        MqttChannel,
        MqttSettings(
            host="broker.lan",
            port=8883,
            topic_prefix="home/mm",
            username="monitor",
            password=SECRET,
            tls=True,
            ca_file=CA_FILE,
            client_id="mm-1",
            discovery=False,
            discovery_prefix="ha",
        ),
    ),
    (
        "mqtt-anonymous",
        '[[channels]]\ntype = "mqtt"\nhost = "broker.lan"\n',
        MqttChannel,
        MqttSettings(host="broker.lan"),
    ),
    (
        "ntfy",
        (
            '[[channels]]\ntype = "ntfy"\nurl = "https://ntfy.example.com"\ntopic = "margin"\n'
            'token_env = "NTFY_TOKEN"\n'
        ),
        NtfyChannel,
        NtfySettings(topic="margin", url="https://ntfy.example.com", token=NTFY_TOKEN),
    ),
    (
        "ntfy-without-token",
        '[[channels]]\ntype = "ntfy"\ntopic = "margin"\n',
        NtfyChannel,
        NtfySettings(topic="margin"),
    ),
    (
        "pushover",
        (
            '[[channels]]\ntype = "pushover"\napi_url = "http://127.0.0.1:9000"\nemergency_retry_s = 45\n'
            'emergency_expire_s = 600\ntoken_env = "PUSHOVER_TOKEN"\nuser_key_env = "PUSHOVER_USER"\n'
        ),
        PushoverChannel,
        PushoverSettings(
            token=PO_TOKEN,
            user_key="po-user-key",
            api_url="http://127.0.0.1:9000",
            retry=45,
            expire=600,
        ),
    ),
    (
        "webhook-bearer",
        (
            '[[channels]]\ntype = "webhook"\nurl = "https://alerts.example.com/margin"\n'
            'bearer_token_env = "HOOK_TOKEN"\n'
        ),
        WebhookChannel,
        WebhookSettings(
            url="https://alerts.example.com/margin", headers={"Authorization": f"Bearer {SECRET}"}
        ),
    ),
    (
        "webhook-plain",
        '[[channels]]\ntype = "webhook"\nurl = "https://alerts.example.com/margin"\n',
        WebhookChannel,
        WebhookSettings(url="https://alerts.example.com/margin"),
    ),
]

BUILD_ENV = {
    "TELEGRAM_BOT_TOKEN": BOT_TOKEN,
    "MQTT_USER": "monitor",
    "MQTT_PASSWORD": SECRET,
    "NTFY_TOKEN": NTFY_TOKEN,
    "PUSHOVER_TOKEN": PO_TOKEN,
    "PUSHOVER_USER": "po-user-key",
    "HOOK_TOKEN": SECRET,
}


@pytest.fixture
def build_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every variable the build table's channels name, set in the process environment."""
    for name, value in BUILD_ENV.items():
        monkeypatch.setenv(name, value)


@pytest.mark.usefixtures("build_env")
@pytest.mark.parametrize(("stanza", "cls", "settings"), [c[1:] for c in BUILDS], ids=[c[0] for c in BUILDS])
def test_build_channels_makes_the_configured_class_with_its_settings(
    tmp_path: Path, stanza: str, cls: type[object], settings: object
) -> None:
    """Each channel type becomes its class, its settings taken from the options and resolved secrets."""
    channels, _ = build_channels(load_channels(tmp_path, stanza))
    log, built = channels
    assert isinstance(log, LogChannel)
    assert isinstance(built, cls)
    assert settings_of(built) == settings


@pytest.mark.usefixtures("build_env")
def test_build_channels_passes_name_level_and_accounts(tmp_path: Path) -> None:
    """The channel object carries the configured name, minimum level and account filter."""
    stanza = (
        '[[channels]]\ntype = "ntfy"\nname = "phone"\ntopic = "t"\nmin_level = "danger"\n'
        'accounts = ["main"]\n'
    )
    _, built = build_channels(load_channels(tmp_path, stanza))[0]
    assert (built.type, built.name, built.min_level, built.accounts) == (
        "ntfy",
        "phone",
        "danger",
        frozenset({"main"}),
    )


@pytest.mark.usefixtures("build_env")
@pytest.mark.parametrize(
    ("stanza", "level"),
    [
        (TELEGRAM, "warning"),
        ('[[channels]]\ntype = "mqtt"\nhost = "b"\n', "ok"),
        ('[[channels]]\ntype = "ntfy"\ntopic = "t"\n', "warning"),
        (PUSHOVER, "warning"),
        ('[[channels]]\ntype = "webhook"\nurl = "https://h.example"\n', "warning"),
    ],
    ids=["telegram", "mqtt", "ntfy", "pushover", "webhook"],
)
def test_built_channel_keeps_the_default_min_level(tmp_path: Path, stanza: str, level: str) -> None:
    """A channel without ``min_level`` is built with its type's default (ok for mqtt, else warning)."""
    _, built = build_channels(load_channels(tmp_path, stanza))[0]
    assert built.min_level == level


def test_build_channels_without_config_gives_the_log_channel() -> None:
    """No channels configured: alerts still go somewhere, the log, at every level and for every account."""
    channels, secrets = build_channels(())
    (log,) = channels
    assert isinstance(log, LogChannel)
    assert (log.name, log.min_level, log.accounts) == ("log", "ok", None)
    assert secrets == []


@pytest.mark.usefixtures("build_env")
def test_log_channel_is_added_first_to_configured_channels(tmp_path: Path) -> None:
    """Other channels configured but no log channel: a default log channel is added, once, first."""
    channels, _ = build_channels(load_channels(tmp_path, TELEGRAM + PUSHOVER))
    assert [(c.type, c.name) for c in channels] == [
        ("log", "log"),
        ("telegram", "telegram"),
        ("pushover", "pushover"),
    ]


@pytest.mark.usefixtures("build_env")
def test_a_filtered_log_channel_keeps_the_log_complete(tmp_path: Path) -> None:
    """A log channel with a higher minimum level gets the default beside it: every alert reaches the log."""
    stanzas = TELEGRAM + '[[channels]]\ntype = "log"\nname = "audit"\nmin_level = "danger"\n'
    channels, _ = build_channels(load_channels(tmp_path, stanzas))
    assert [(c.name, c.min_level) for c in channels if isinstance(c, LogChannel)] == [
        ("log", "ok"),
        ("audit", "danger"),
    ]
    assert [c.name for c in channels] == ["log", "telegram", "audit"]


@pytest.mark.usefixtures("build_env")
def test_an_unfiltered_log_channel_is_not_doubled(tmp_path: Path) -> None:
    """A configured log channel that takes everything is the one log channel."""
    stanzas = TELEGRAM + '[[channels]]\ntype = "log"\nname = "audit"\n'
    channels, _ = build_channels(load_channels(tmp_path, stanzas))
    assert [c.name for c in channels] == ["telegram", "audit"]


def test_build_channels_returns_every_secret_for_redaction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each resolved secret, from the environment or a mode-600 file, is returned (stripped) for redaction."""
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", f"  {BOT_TOKEN}\n")
    monkeypatch.setenv("PUSHOVER_TOKEN", PO_TOKEN)
    secret_file(tmp_path, "po-user", "po-user-key")
    stanzas = TELEGRAM + PUSHOVER.replace('user_key_env = "PUSHOVER_USER"', 'user_key_file = "po-user"')
    channels, secrets = build_channels(load_channels(tmp_path, stanzas))
    assert sorted(secrets) == sorted([BOT_TOKEN, PO_TOKEN, "po-user-key"])
    assert settings_of(channels[2]) == PushoverSettings(token=PO_TOKEN, user_key="po-user-key")


def test_build_channels_reads_credentials_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A ``$CREDENTIALS_DIRECTORY`` secret is read from the directory systemd names at build time."""
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    secret_file(credentials, "tg", BOT_TOKEN)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    stanza = '[[channels]]\ntype = "telegram"\nchat_ids = [1]\nbot_token_file = "$CREDENTIALS_DIRECTORY/tg"\n'
    channels, secrets = build_channels(load_channels(tmp_path, stanza))
    assert secrets == [BOT_TOKEN]
    assert isinstance(channels[1], TelegramChannel)
    assert channels[1].settings.bot_token == BOT_TOKEN


def test_build_channels_names_an_unset_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A channel whose variable is unset fails to build with an error on its ``*_env`` key and the file."""
    monkeypatch.delenv("TELEGRAM_BOT_TOKEN", raising=False)
    path = write(tmp_path, ACCOUNTS + '[[channels]]\ntype = "log"\n' + TELEGRAM)
    with pytest.raises(ConfigError) as caught:
        build_channels(load_config(path, environ={}).channels)
    assert str(caught.value) == (
        f"{path}: channels[1].bot_token_env: environment variable TELEGRAM_BOT_TOKEN is not set"
    )


def test_build_channels_refuses_a_loose_secret_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A channel secret file readable by others is refused, naming the channel's ``*_file`` key."""
    monkeypatch.setenv("PUSHOVER_TOKEN", PO_TOKEN)
    secret_file(tmp_path, "po-user", "po-user-key", mode=0o644)
    path = write(
        tmp_path, ACCOUNTS + PUSHOVER.replace('user_key_env = "PUSHOVER_USER"', 'user_key_file = "po-user"')
    )
    with pytest.raises(ConfigError) as caught:
        build_channels(load_config(path, environ={}).channels)
    message = str(caught.value)
    assert message.startswith(f"{path}: channels[0].user_key_file: ")
    assert "readable by group or others (mode 0644); chmod 600 it" in message
    assert "po-user-key" not in message


# The loader lets these through; the channel's own settings refuse them when it is built.
REFUSED_BY_SETTINGS = [
    (
        "mqtt-topic-prefix-trailing-slash",
        '[[channels]]\ntype = "mqtt"\nhost = "b"\ntopic_prefix = "margin/"\n',
        "channels[1].topic_prefix",
        "must be a topic without wildcards",
    ),
    (
        "mqtt-discovery-prefix-wildcard",
        '[[channels]]\ntype = "mqtt"\nhost = "b"\ndiscovery_prefix = "ha/#"\n',
        "channels[1].discovery_prefix",
        "must be a topic without wildcards",
    ),
    (
        "ntfy-topic-with-slash",
        '[[channels]]\ntype = "ntfy"\ntopic = "margin/alerts"\n',
        "channels[1].topic",
        "must be a topic name, without spaces or '/'",
    ),
    (
        "ntfy-topic-with-space",
        '[[channels]]\ntype = "ntfy"\ntopic = "margin alerts"\n',
        "channels[1].topic",
        "must be a topic name, without spaces or '/'",
    ),
    (
        "telegram-token-with-slash",
        TELEGRAM.replace("TELEGRAM_BOT_TOKEN", "SLASHED_TOKEN"),
        "channels[1].bot_token",
        "must be a bot token (digits:letters), without spaces or '/'",
    ),
]


@pytest.mark.parametrize(
    ("stanza", "key", "problem"),
    [c[1:] for c in REFUSED_BY_SETTINGS],
    ids=[c[0] for c in REFUSED_BY_SETTINGS],
)
def test_settings_refusal_is_reraised_on_the_channel_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stanza: str, key: str, problem: str
) -> None:
    """A value the channel's settings refuse becomes a ConfigError on ``channels[i].<field>`` and the file."""
    monkeypatch.setenv("SLASHED_TOKEN", "123/456")
    path = write(tmp_path, ACCOUNTS + '[[channels]]\ntype = "log"\n' + stanza)
    configs = load_config(path, environ={}).channels
    with pytest.raises(ConfigError) as caught:
        build_channels(configs)
    message = str(caught.value)
    assert message.startswith(f"{path}: {key}: "), message
    assert problem in message
    assert (caught.value.field, caught.value.source) == (key, str(path))
    assert "123/456" not in message


def test_settings_refusal_of_a_port_is_reraised_on_the_channel_key() -> None:
    """MqttSettings refusing a port is re-raised on ``channels[i].port``.

    The loader already bounds ``port`` to 1-65535, the same range MqttSettings accepts, so a file
    cannot reach this refusal; a ChannelConfig built by hand shows the re-raise all the same.
    """
    options: dict[str, object] = {
        "host": "b",
        "port": 70000,
        "topic_prefix": "margin-monitor",
        "tls": False,
        "ca_file": None,
        "client_id": None,
        "discovery": True,
        "discovery_prefix": "homeassistant",
    }
    config = ChannelConfig(
        name="mqtt", type="mqtt", min_level="ok", options=options, index=3, source="mm.toml"
    )
    with pytest.raises(
        ConfigError, match=re.escape("mm.toml: channels[3].port: must be a TCP port (1-65535), got 70000")
    ):
        build_channels((config,), environ={})


# --- check-config ---------------------------------------------------------------------------------


def test_check_config_lists_the_channels(tmp_path: Path) -> None:
    """The check-config summary names each channel with its type."""
    stanzas = TELEGRAM.replace('type = "telegram"', 'type = "telegram"\nname = "ops"') + (
        '[[channels]]\ntype = "mqtt"\nhost = "b"\n'
    )
    path = write(tmp_path, ACCOUNTS + stanzas)
    summary = check_config(path, environ={"K": "k", "S": "s", "TELEGRAM_BOT_TOKEN": BOT_TOKEN})
    assert summary.startswith(f"{path}: ok: 2 accounts (2 binanceusdm)")
    assert "; channels: ops (telegram), mqtt (mqtt)" in summary
    assert BOT_TOKEN not in summary


def test_check_config_reads_channel_secrets(tmp_path: Path) -> None:
    """check-config resolves channel secrets too: an unset variable is an error on ``channels[i].*_env``."""
    path = write(tmp_path, ACCOUNTS + '[[channels]]\ntype = "log"\n' + TELEGRAM)
    with pytest.raises(ConfigError) as caught:
        check_config(path, environ={"K": "k", "S": "s"})
    assert str(caught.value) == (
        f"{path}: channels[1].bot_token_env: environment variable TELEGRAM_BOT_TOKEN is not set"
    )


def test_check_config_refuses_what_the_daemon_refuses(tmp_path: Path) -> None:
    """check-config "raises the same ConfigError the daemon would": a channel its settings refuse included.

    Today check_config only loads and resolves secrets; it never builds the channels, so an ntfy
    topic with a '/' passes check-config and then stops ``margin-monitor run`` at start-up.
    """
    path = write(tmp_path, ACCOUNTS + '[[channels]]\ntype = "ntfy"\ntopic = "margin/alerts"\n')
    with pytest.raises(ConfigError, match=re.escape("channels[0].topic: must be a topic name")):
        check_config(path, environ={"K": "k", "S": "s"})


def test_resolve_channel_secrets_reads_env_and_file(tmp_path: Path) -> None:
    """``resolve_channel_secrets`` maps each secret's name to its value, from a variable or a file."""
    secret_file(tmp_path, "mqtt-password")
    (channel,) = load_channels(
        tmp_path,
        '[[channels]]\ntype = "mqtt"\nhost = "b"\nusername_env = "MQTT_USER"\n'
        'password_file = "mqtt-password"\n',
    )
    assert resolve_channel_secrets(channel, {"MQTT_USER": " monitor "}) == {
        "username": "monitor",
        "password": SECRET,
    }


# --- the shipped example --------------------------------------------------------------------------


def uncommented_example(tmp_path: Path) -> Path:
    """A copy of the example, its ``# [[channels]]`` stanzas uncommented (``# # `` lines stay comments)."""
    out: list[str] = []
    in_stanza = False
    for line in EXAMPLE.read_text(encoding="utf-8").splitlines():
        if line == "# [[channels]]":
            in_stanza = True
        elif not line.startswith("#"):
            in_stanza = False
        out.append(line.removeprefix("# ") if in_stanza else line)
    return write(tmp_path, "\n".join(out) + "\n", name="example.toml")


EXAMPLE_ENV = {
    "TELEGRAM_BOT_TOKEN": BOT_TOKEN,
    "PUSHOVER_APP_TOKEN": PO_TOKEN,
    "PUSHOVER_USER_KEY": "po-user-key",
}


def test_example_channels_load_uncommented(tmp_path: Path) -> None:
    """The example's channel stanzas, uncommented, are valid: one channel of each documented type."""
    channels = load_config(uncommented_example(tmp_path), environ={}).channels
    assert [(c.name, c.type, c.min_level) for c in channels] == [
        ("telegram", "telegram", "warning"),
        ("mqtt", "mqtt", "ok"),
        ("ntfy", "ntfy", "warning"),
        ("pushover", "pushover", "danger"),
        ("webhook", "webhook", "warning"),
    ]


def test_example_channels_build_with_their_variables(tmp_path: Path) -> None:
    """With the variables the example names set, every uncommented channel builds, after the log channel."""
    configs = load_config(uncommented_example(tmp_path), environ={}).channels
    channels, secrets = build_channels(configs, environ=EXAMPLE_ENV)
    assert [type(c) for c in channels] == [
        LogChannel,
        TelegramChannel,
        MqttChannel,
        NtfyChannel,
        PushoverChannel,
        WebhookChannel,
    ]
    assert sorted(secrets) == sorted(EXAMPLE_ENV.values())


def test_example_with_channels_passes_check_config(tmp_path: Path) -> None:
    """check-config accepts the uncommented example once its account and channel secrets are in place."""
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    for name in ("binance-hedge-key", "binance-hedge-secret"):
        secret_file(credentials, name)
    environ = {
        **EXAMPLE_ENV,
        "BINANCE_API_KEY": "key",
        "BINANCE_SECRET": SECRET,
        "SIM_API_KEY": "sim-key",
        "SIM_SECRET": "sim-secret",
        "CREDENTIALS_DIRECTORY": str(credentials),
        "STATE_DIRECTORY": str(tmp_path / "state"),
    }
    summary = check_config(uncommented_example(tmp_path), environ=environ)
    assert (
        "; channels: telegram (telegram), mqtt (mqtt), ntfy (ntfy), pushover (pushover), webhook (webhook)"
        in (summary)
    )
