"""The daemon's TOML configuration: schema, loader and credential resolution.

``load_config`` parses and validates a file once, at the edge, and returns frozen dataclasses; every
problem is a ``ConfigError`` that names the key path (``accounts[1].exchange``) and the file, so
``margin-monitor`` can print it as one line and exit 2. Unknown keys are errors: a misspelt
``poll_intervall_s`` silently falling back to a default is how a monitor ends up polling the wrong
account at the wrong pace.

Secrets never live in the file. An account names environment variables (``secret_env``) or files
(``secret_file``, which may start with ``$CREDENTIALS_DIRECTORY`` for systemd's ``LoadCredential=``).
``load_config`` only checks the names; ``resolve_credentials`` reads the values when the daemon needs
them, so a configuration can be checked (and its errors reported) on a machine without the keys.
"""

from __future__ import annotations

import difflib
import importlib
import math
import os
import re
import stat
import tomllib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, TypeVar, cast
from urllib.parse import urlsplit

from monitor.errors import ConfigError
from monitor.risk.model import check_thresholds

if TYPE_CHECKING:
    from collections.abc import Mapping

#: Exchanges whose risk figures the engine computes with the exchange's own formula (README table).
#: Any other ccxt exchange id is accepted and read through the generic, approximate fallback.
EXACT_EXCHANGES = frozenset({"binanceusdm", "binancecoinm", "bybit", "okx", "hyperliquid"})

#: Exchanges read by a public wallet address rather than an API key.
ADDRESS_EXCHANGES = frozenset({"hyperliquid"})

#: Exchanges whose API keys come with a passphrase (ccxt's ``password``).
PASSPHRASE_EXCHANGES = frozenset({"okx"})

DEFAULT_POLL_INTERVAL_S = 10.0
#: Beyond an hour between polls a margin monitor no longer warns "before" anything.
MAX_POLL_INTERVAL_S = 3600.0
DEFAULT_DRIFT_TOLERANCE_PCT = 0.5
DEFAULT_THRESHOLDS_PCT = (150.0, 130.0, 120.0)
DEFAULT_STALE_AFTER_POLLS = 3
DEFAULT_TIER_REFRESH_H = 6.0
DEFAULT_MARKET_REFRESH_H = 24.0
DEFAULT_KEY_RECHECK_H = 6.0
#: A week: tiers and markets older than that are no longer the exchange's.
MAX_REFRESH_H = 168.0
#: Metrics, /healthz and the status page: loopback only unless the operator says otherwise.
DEFAULT_HTTP_LISTEN = "127.0.0.1:9778"

Mode = Literal["auto", "stream", "poll"]
LogFormat = Literal["auto", "json", "console"]
SecretName = Literal["api_key", "secret", "password"]
SecretKind = Literal["env", "file"]

_Choice = TypeVar("_Choice", bound=str)

_MODES: tuple[Mode, ...] = ("auto", "stream", "poll")
_LOG_FORMATS: tuple[LogFormat, ...] = ("auto", "json", "console")
_SECRET_NAMES: tuple[SecretName, ...] = ("api_key", "secret", "password")

_ACCOUNT_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_WALLET_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
# Upper case only: a mixed-case or lower-case "name" is far more often an API key pasted into the
# wrong key, and an error message must never echo a key.
_ENV_NAME = re.compile(r"[A-Z_][A-Z0-9_]*")
_CREDENTIALS_VAR = re.compile(r"\$\{CREDENTIALS_DIRECTORY\}|\$CREDENTIALS_DIRECTORY(?![A-Za-z0-9_])")
_TOML_POSITION = re.compile(r"\s*\(at (?:line (\d+), column (\d+)|end of document)\)$")
_THRESHOLD_INDEX = re.compile(r"thresholds\[(\d+)\] (.*)")

_ACCOUNT_KEYS = (
    "name",
    "exchange",
    "api_key_env",
    "api_key_file",
    "secret_env",
    "secret_file",
    "password_env",
    "password_file",
    "base_url",
    "ws_url",
    "sandbox",
    "poll_interval_s",
    "wallet_address",
    "drift_tolerance_pct",
    "mode",
    "allow_trading_key",
)
_ALERTS_KEYS = (
    "thresholds_pct",
    "stale_after_polls",
    "hysteresis_pct",
    "repeat_warning_min",
    "repeat_danger_min",
    "repeat_critical_min",
    "fast_fall_pct",
    "fast_fall_window_s",
    "target_ratio_pct",
    "max_alert_age_s",
)
_DAEMON_KEYS = (
    "state_dir",
    "log_format",
    "tier_refresh_h",
    "market_refresh_h",
    "reconcile_s",
    "http_listen",
    "key_recheck_h",
)
_TOP_KEYS = ("accounts", "alerts", "daemon", "channels")

LEVELS = ("ok", "warning", "danger", "critical", "liquidation")
CHANNEL_TYPES = ("log", "telegram", "mqtt", "ntfy", "pushover", "webhook")
#: Per channel type: its own keys (beyond type, name, min_level, accounts), the secrets it reads
#: (each as NAME_env or NAME_file), which of those are required, and its default minimum level.
_CHANNEL_KEYS: Mapping[str, tuple[str, ...]] = {
    "log": (),
    "telegram": ("chat_ids", "api_url", "commands", "min_interval_s"),
    "mqtt": (
        "host",
        "port",
        "topic_prefix",
        "tls",
        "ca_file",
        "client_id",
        "discovery",
        "discovery_prefix",
    ),
    "ntfy": ("url", "topic"),
    "pushover": ("api_url", "emergency_retry_s", "emergency_expire_s"),
    "webhook": ("url",),
}
_CHANNEL_SECRETS: Mapping[str, tuple[str, ...]] = {
    "log": (),
    "telegram": ("bot_token",),
    "mqtt": ("username", "password"),
    "ntfy": ("token",),
    "pushover": ("token", "user_key"),
    "webhook": ("bearer_token",),
}
_CHANNEL_REQUIRED_SECRETS: Mapping[str, tuple[str, ...]] = {
    "telegram": ("bot_token",),
    "pushover": ("token", "user_key"),
}
_CHANNEL_DEFAULT_LEVEL: Mapping[str, str] = {"log": "ok", "mqtt": "ok"}


# --- the schema -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SecretRef:
    """Where one secret of an account comes from: an environment variable or a file.

    ``reference`` is the variable's name, or the file's path as a template in which
    ``$CREDENTIALS_DIRECTORY`` is substituted when the secret is read (relative paths were already
    made absolute against the configuration file's directory).
    """

    name: str
    kind: SecretKind
    reference: str

    @property
    def key(self) -> str:
        """The configuration key this came from, such as ``secret_env``."""
        return f"{self.name}_{self.kind}"


@dataclass(frozen=True, slots=True)
class AccountConfig:
    """One ``[[accounts]]`` table, validated.

    ``index`` and ``source`` (its position and file) only serve error messages; they take no part in
    equality, so a reload can tell an account whose settings changed from one that merely moved.
    """

    name: str
    exchange: str
    api_key: SecretRef | None = None
    secret: SecretRef | None = None
    password: SecretRef | None = None
    base_url: str | None = None
    ws_url: str | None = None
    sandbox: bool = False
    poll_interval_s: float = DEFAULT_POLL_INTERVAL_S
    wallet_address: str | None = None
    drift_tolerance_pct: float = DEFAULT_DRIFT_TOLERANCE_PCT
    mode: Mode = "auto"
    #: Accept a key that can trade or move funds (never one that can withdraw); see monitor.service.keys.
    allow_trading_key: bool = False
    index: int = field(default=0, compare=False)
    source: str | None = field(default=None, compare=False)

    @property
    def key_path(self) -> str:
        """``accounts[i]``, the prefix of every error about this account."""
        return f"accounts[{self.index}]"

    @property
    def approximate(self) -> bool:
        """True when the exchange has no exact formula family and is read through ccxt's unified fields."""
        return self.exchange not in EXACT_EXCHANGES

    def secret_refs(self) -> tuple[SecretRef, ...]:
        """The account's configured secrets, api key first."""
        return tuple(ref for ref in (self.api_key, self.secret, self.password) if ref is not None)


@dataclass(frozen=True, slots=True)
class AlertsConfig:
    """The ``[alerts]`` table: thresholds in percent, descending, and the staleness bound."""

    thresholds_pct: tuple[float, ...] = DEFAULT_THRESHOLDS_PCT
    stale_after_polls: int = DEFAULT_STALE_AFTER_POLLS
    hysteresis_pct: float = 5.0
    repeat_warning_min: float = 240.0
    repeat_danger_min: float = 30.0
    repeat_critical_min: float = 5.0
    fast_fall_pct: float = 30.0
    fast_fall_window_s: float = 300.0
    target_ratio_pct: float = 200.0
    max_alert_age_s: float = 3600.0

    @property
    def thresholds(self) -> tuple[float, ...]:
        """The thresholds as the risk engine takes them: ratios, 1.5 for 150%."""
        return tuple(pct / 100.0 for pct in self.thresholds_pct)


@dataclass(frozen=True, slots=True)
class DaemonConfig:
    """The ``[daemon]`` table."""

    state_dir: Path
    log_format: LogFormat = "auto"
    tier_refresh_h: float = DEFAULT_TIER_REFRESH_H
    market_refresh_h: float = DEFAULT_MARKET_REFRESH_H
    reconcile_s: float = 60.0
    #: ``host:port`` of the metrics, health and status page server; ``""`` turns it off.
    http_listen: str = DEFAULT_HTTP_LISTEN
    #: Hours between re-checks of each API key's permissions while the daemon runs; 0 turns them off.
    key_recheck_h: float = DEFAULT_KEY_RECHECK_H

    @property
    def http_address(self) -> tuple[str, int] | None:
        """``http_listen`` as (host, port), or ``None`` when the server is off."""
        return parse_listen(self.http_listen) if self.http_listen else None


@dataclass(frozen=True, slots=True)
class ChannelConfig:
    """One ``[[channels]]`` table: where alerts go.

    ``options`` holds the type's own keys as validated values; ``secrets`` maps a secret's name
    (``bot_token``, ``password``...) to where it is read from (``resolve_channel_secrets``).
    ``accounts`` limits the channel to those accounts (``None``: all).
    """

    name: str
    type: str
    min_level: str
    accounts: frozenset[str] | None = None
    options: Mapping[str, object] = field(default_factory=dict)
    secrets: Mapping[str, SecretRef] = field(default_factory=dict)
    index: int = field(default=0, compare=False)
    source: str | None = field(default=None, compare=False)

    @property
    def key_path(self) -> str:
        """``channels[i]``, the prefix of every error about this channel."""
        return f"channels[{self.index}]"


@dataclass(frozen=True, slots=True)
class Config:
    """A whole configuration file, validated; ``path`` is the file it was read from."""

    accounts: tuple[AccountConfig, ...]
    alerts: AlertsConfig
    daemon: DaemonConfig
    path: Path
    channels: tuple[ChannelConfig, ...] = ()
    #: ``I/N`` when this process runs one shard of the file (``monitor.sharding.apply_shard``), else "".
    shard: str = ""

    def account(self, name: str) -> AccountConfig:
        """The account called ``name``; ``KeyError`` when there is none."""
        for account in self.accounts:
            if account.name == name:
                return account
        raise KeyError(name)


@dataclass(frozen=True, slots=True, repr=False)
class Credentials:
    """An account's secrets, read from the environment or files.

    ``repr`` and ``str`` show which secrets are present, never their values, so a Credentials
    object that ends up in a log line, a traceback's locals or an f-string gives nothing away.
    """

    api_key: str | None = None
    secret: str | None = None
    password: str | None = None

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{name}={'None' if value is None else repr('***')}"
            for name, value in (
                ("api_key", self.api_key),
                ("secret", self.secret),
                ("password", self.password),
            )
        )
        return f"Credentials({shown})"

    __str__ = __repr__

    def secrets(self) -> tuple[str, ...]:
        """The values themselves, for the log redactor (``configure_logging(secrets=...)``)."""
        return tuple(value for value in (self.api_key, self.secret, self.password) if value)

    def ccxt_options(self) -> dict[str, str]:
        """The secrets under ccxt's constructor keys (``apiKey``, ``secret``, ``password``)."""
        pairs = (("apiKey", self.api_key), ("secret", self.secret), ("password", self.password))
        return {key: value for key, value in pairs if value is not None}


# --- loading --------------------------------------------------------------------------------------


def load_config(path: str | os.PathLike[str], *, environ: Mapping[str, str] | None = None) -> Config:
    """Read and validate the configuration file at ``path``.

    Raises ``ConfigError`` for the first problem found, naming its key path and the file. Secrets
    are not read (``resolve_credentials`` does that); ``environ`` (default ``os.environ``) is only
    consulted for the default ``state_dir`` (``$STATE_DIRECTORY``, set by systemd's
    ``StateDirectory=``, then ``$XDG_STATE_HOME``).
    """
    env = os.environ if environ is None else environ
    file = Path(path)
    source = str(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("file", "not found", source=source) from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError("file", f"cannot read: {reason}", source=source) from None
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        position = _TOML_POSITION.search(message)
        where = "file"
        if position:
            where = f"line {position[1]}, column {position[2]}" if position[1] else "end of file"
        raise ConfigError(where, f"invalid TOML: {_TOML_POSITION.sub('', message)}", source=source) from None
    return _Parser(source, file.resolve().parent, env).config(document, file)


def resolve_credentials(account: AccountConfig, environ: Mapping[str, str] = os.environ) -> Credentials:
    """Read ``account``'s secrets from the environment variables and files it names.

    Raises ``ConfigError`` naming the account's key and the variable or file when a variable is
    unset or empty, a file is missing, unreadable or empty, or a file is readable by group or others
    (a key on a shared machine is a key shared). Surrounding whitespace is stripped: files written
    by ``echo`` end in a newline that is no part of the key.
    """
    values: dict[str, str] = {}
    for ref in account.secret_refs():
        read = _read_env if ref.kind == "env" else _read_file
        values[ref.name] = read(account, ref, environ)
    return Credentials(**values)


def resolve_channel_secrets(
    channel: ChannelConfig, environ: Mapping[str, str] = os.environ
) -> dict[str, str]:
    """Read a channel's secrets (bot token, passwords...) as ``resolve_credentials`` reads an account's."""
    values: dict[str, str] = {}
    for name, ref in channel.secrets.items():
        read = _read_env if ref.kind == "env" else _read_file
        values[name] = read(channel, ref, environ)
    return values


def check_config(path: str | os.PathLike[str], *, environ: Mapping[str, str] | None = None) -> str:
    """Load ``path``, resolve every account's credentials, and return a one-line summary.

    For ``margin-monitor check-config``: it raises the same ``ConfigError`` the daemon would, and
    since it reads the secrets it also catches an unset variable or a loose file mode.
    """
    env = os.environ if environ is None else environ
    config = load_config(path, environ=env)
    for account in config.accounts:
        resolve_credentials(account, env)
    if config.channels:
        # Build them (never started): their settings classes refuse what the loader cannot see,
        # and check-config must refuse whatever the daemon would.
        from monitor.notify.factory import build_channels  # noqa: PLC0415 - the factory imports this module

        build_channels(config.channels, env)
    per_exchange = Counter(account.exchange for account in config.accounts)
    exchanges = ", ".join(f"{count} {exchange}" for exchange, count in sorted(per_exchange.items()))
    count = len(config.accounts)
    summary = (
        f"{path}: ok: {count} account{'s' if count != 1 else ''} ({exchanges}), "
        f"thresholds {'/'.join(f'{pct:g}' for pct in config.alerts.thresholds_pct)}%, "
        f"state in {config.daemon.state_dir}"
    )
    if config.channels:
        summary += f"; channels: {', '.join(f'{c.name} ({c.type})' for c in config.channels)}"
    approximate = sorted({account.exchange for account in config.accounts if account.approximate})
    if approximate:
        summary += f"; approximate figures (generic ccxt fields) for {', '.join(approximate)}"
    return summary


def default_state_dir(environ: Mapping[str, str]) -> Path:
    """Where state lives when ``[daemon] state_dir`` is not set.

    systemd's ``StateDirectory=`` sets ``$STATE_DIRECTORY`` (colon-separated when it names several;
    the first is ours); otherwise the XDG state directory of the user running the daemon.
    """
    systemd = environ.get("STATE_DIRECTORY", "").split(":")[0]
    if systemd:
        return Path(systemd)
    xdg = environ.get("XDG_STATE_HOME", "")
    base = Path(xdg) if xdg else Path(environ.get("HOME") or Path.home()) / ".local" / "state"
    return base / "margin-monitor"


_LISTEN = re.compile(r"(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9.-]+)):(?P<port>[0-9]{1,5})")


def parse_listen(value: str) -> tuple[str, int]:
    """``host:port`` (``[::1]:9778`` for IPv6) as (host, port); ``ValueError`` saying what is wrong.

    Port 0 asks the system for a free port (tests); the server logs the one it got.
    """
    match = _LISTEN.fullmatch(value)
    if match is None:
        raise ValueError(f"must be host:port (such as 127.0.0.1:9778, or [::1]:9778), got {value!r}")
    port = int(match["port"])
    if port > 65535:
        raise ValueError(f"port must be 0 to 65535, got {port}")
    return match["v6"] or match["host"], port


# --- validation -----------------------------------------------------------------------------------


class _Parser:
    """Validates a parsed TOML document; every error carries the file name as its source."""

    def __init__(self, source: str, base: Path, environ: Mapping[str, str]) -> None:
        self.source = source
        self.base = base
        self.environ = environ

    def error(self, key: str, problem: str) -> ConfigError:
        return ConfigError(key, problem, source=self.source)

    def config(self, document: dict[str, object], file: Path) -> Config:
        self.reject_unknown(document, "", _TOP_KEYS)
        accounts = self.accounts(document.get("accounts"))
        alerts = self.alerts(self.table(document, "alerts"))
        daemon = self.daemon(self.table(document, "daemon"))
        channels = self.channels(document.get("channels"), {account.name for account in accounts})
        return Config(accounts=accounts, alerts=alerts, daemon=daemon, path=file, channels=channels)

    def channels(self, value: object, account_names: set[str]) -> tuple[ChannelConfig, ...]:
        if value is None:
            return ()
        if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
            raise self.error("channels", "must be an array of tables ([[channels]])")
        channels: list[ChannelConfig] = []
        seen: dict[str, int] = {}
        for index, table in enumerate(cast("list[dict[str, object]]", value)):
            channel = self.channel(index, table, account_names)
            if channel.name in seen:
                raise self.error(
                    f"channels[{index}].name",
                    f"duplicate channel name '{channel.name}' (also channels[{seen[channel.name]}])",
                )
            seen[channel.name] = index
            channels.append(channel)
        return tuple(channels)

    def channel(self, index: int, table: dict[str, object], account_names: set[str]) -> ChannelConfig:
        prefix = f"channels[{index}]."
        read = _Reader(self, table, prefix)
        kind = read.required_string("type")
        if kind not in CHANNEL_TYPES:
            raise self.error(
                prefix + "type", f"unknown channel type '{kind}' (one of {', '.join(CHANNEL_TYPES)})"
            )
        secret_names = _CHANNEL_SECRETS[kind]
        own = _CHANNEL_KEYS[kind]
        known = ("type", "name", "min_level", "accounts", *own)
        known += tuple(f"{name}_{how}" for name in secret_names for how in ("env", "file"))
        self.reject_unknown(table, prefix, known, secret_names)
        name = read.optional_string("name")
        name = kind if name is None else name  # name = "" is a mistake, not "use the default"
        if not _ACCOUNT_NAME.fullmatch(name):
            raise self.error(prefix + "name", f"'{name}' may only hold letters, digits, '_', '.' and '-'")
        min_level = read.choice("min_level", LEVELS, default=_CHANNEL_DEFAULT_LEVEL.get(kind, "warning"))
        accounts: frozenset[str] | None = None
        if "accounts" in table:
            listed = table["accounts"]
            if not isinstance(listed, list) or not all(isinstance(item, str) for item in listed):
                raise self.error(prefix + "accounts", "must be a list of account names")
            unknown = sorted(set(cast("list[str]", listed)) - account_names)
            if unknown:
                raise self.error(prefix + "accounts", f"no account named {', '.join(unknown)}")
            accounts = frozenset(cast("list[str]", listed))
        secrets: dict[str, SecretRef] = {}
        for secret in secret_names:
            ref = self.secret_ref(read, secret)
            if ref is not None:
                secrets[secret] = ref
        for secret in _CHANNEL_REQUIRED_SECRETS.get(kind, ()):
            if secret not in secrets:
                raise self.error(
                    f"{prefix}{secret}_env", f"missing: a {kind} channel needs {secret}_env or {secret}_file"
                )
        options = self.channel_options(kind, read, prefix)
        return ChannelConfig(
            name=name,
            type=kind,
            min_level=min_level,
            accounts=accounts,
            options=options,
            secrets=secrets,
            index=index,
            source=self.source,
        )

    def channel_options(self, kind: str, read: _Reader, prefix: str) -> dict[str, object]:
        table = read.table
        options: dict[str, object] = {}
        if kind == "telegram":
            ids = table.get("chat_ids")
            if (
                not isinstance(ids, list)
                or not ids
                or not all(isinstance(i, int | str) and not isinstance(i, bool) for i in ids)
            ):
                raise self.error(
                    prefix + "chat_ids", "must be a non-empty list of chat ids (numbers or @channel names)"
                )
            options["chat_ids"] = tuple(cast("list[int | str]", ids))
            options["api_url"] = self.url_option(read, "api_url", "https://api.telegram.org")
            options["commands"] = read.boolean("commands", default=True)
            options["min_interval_s"] = read.number("min_interval_s", default=1.0, at_least=0.0, at_most=60.0)
        elif kind == "mqtt":
            options["host"] = read.required_string("host")
            options["port"] = read.integer("port", default=1883, at_least=1, at_most=65535)
            prefix_value = read.optional_string("topic_prefix") or "margin-monitor"
            if any(char in prefix_value for char in "+#") or prefix_value.startswith("/"):
                raise self.error(prefix + "topic_prefix", "must not hold + or # nor start with /")
            options["topic_prefix"] = prefix_value
            options["tls"] = read.boolean("tls", default=False)
            ca_file = read.optional_string("ca_file")
            options["ca_file"] = None if ca_file is None else self.secret_path(prefix + "ca_file", ca_file)
            options["client_id"] = read.optional_string("client_id")
            options["discovery"] = read.boolean("discovery", default=True)
            options["discovery_prefix"] = read.optional_string("discovery_prefix") or "homeassistant"
        elif kind == "ntfy":
            options["url"] = self.url_option(read, "url", "https://ntfy.sh")
            options["topic"] = read.required_string("topic")
        elif kind == "pushover":
            options["api_url"] = self.url_option(read, "api_url", "https://api.pushover.net")
            options["emergency_retry_s"] = read.integer(
                "emergency_retry_s", default=60, at_least=30, at_most=10800
            )
            options["emergency_expire_s"] = read.integer(
                "emergency_expire_s", default=3600, at_least=30, at_most=10800
            )
        elif kind == "webhook":
            options["url"] = self.url_option(read, "url", None)
        return options

    def url_option(self, read: _Reader, key: str, default: str | None) -> str:
        value = read.optional_string(key)
        if value is None:
            if default is None:
                raise self.error(read.prefix + key, "missing")
            return default
        _check_url(self, read.prefix + key, value, ("http", "https"))
        return value.rstrip("/")

    # -- tables --

    def table(self, document: dict[str, object], key: str) -> dict[str, object]:
        value = document.get(key, {})
        if not isinstance(value, dict):
            raise self.error(key, f"must be a table ([{key}]), got {_type_name(value)}")
        return cast("dict[str, object]", value)

    def reject_unknown(
        self,
        table: dict[str, object],
        prefix: str,
        known: tuple[str, ...],
        secrets: tuple[str, ...] = _SECRET_NAMES,
    ) -> None:
        for key in table:
            if key in known:
                continue
            problem = "unknown key"
            if key in secrets:
                problem += f"; secrets are not written in this file: use {key}_env or {key}_file"
            else:
                close = difflib.get_close_matches(key, known, n=1)
                if close:
                    problem += f"; did you mean '{close[0]}'?"
            raise self.error(f"{prefix}{key}", problem)

    def accounts(self, value: object) -> tuple[AccountConfig, ...]:
        if value is None:
            raise self.error("accounts", "missing: add at least one [[accounts]] table")
        if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
            raise self.error("accounts", "must be an array of tables ([[accounts]]), not a single [accounts]")
        if not value:
            raise self.error("accounts", "empty: add at least one [[accounts]] table")
        accounts: list[AccountConfig] = []
        seen: dict[str, int] = {}
        for index, table in enumerate(cast("list[dict[str, object]]", value)):
            account = self.account(index, table)
            if account.name in seen:
                raise self.error(
                    f"accounts[{index}].name",
                    f"duplicate account name '{account.name}' (also accounts[{seen[account.name]}])",
                )
            seen[account.name] = index
            accounts.append(account)
        return tuple(accounts)

    def account(self, index: int, table: dict[str, object]) -> AccountConfig:
        prefix = f"accounts[{index}]."
        self.reject_unknown(table, prefix, _ACCOUNT_KEYS)
        read = _Reader(self, table, prefix)
        name = read.required_string("name")
        if not _ACCOUNT_NAME.fullmatch(name):
            raise self.error(
                prefix + "name",
                f"'{name}' may only hold letters, digits, '_', '.' and '-' (it names logs and metrics)",
            )
        exchange = self.exchange(prefix + "exchange", read.required_string("exchange"))
        secrets = {secret: self.secret_ref(read, secret) for secret in _SECRET_NAMES}
        wallet_address = read.optional_string("wallet_address")
        self.check_access(prefix, exchange, secrets, wallet_address)
        base_url = read.optional_string("base_url")
        sandbox = read.boolean("sandbox", default=False)
        if base_url is not None:
            _check_url(self, prefix + "base_url", base_url, ("http", "https"))
            if sandbox:
                raise self.error(
                    prefix + "sandbox", "set either sandbox (the exchange's testnet) or base_url, not both"
                )
        ws_url = read.optional_string("ws_url")
        if ws_url is not None:
            _check_url(self, prefix + "ws_url", ws_url, ("ws", "wss"))
        allow_trading_key = read.boolean("allow_trading_key", default=False)
        if allow_trading_key and exchange in ADDRESS_EXCHANGES:
            raise self.error(
                prefix + "allow_trading_key", f"a {exchange} account is read by wallet address and has no key"
            )
        return AccountConfig(
            name=name,
            exchange=exchange,
            api_key=secrets["api_key"],
            secret=secrets["secret"],
            password=secrets["password"],
            base_url=base_url,
            ws_url=ws_url,
            sandbox=sandbox,
            poll_interval_s=read.number(
                "poll_interval_s", default=DEFAULT_POLL_INTERVAL_S, above=0.0, at_most=MAX_POLL_INTERVAL_S
            ),
            wallet_address=wallet_address,
            drift_tolerance_pct=read.number(
                "drift_tolerance_pct", default=DEFAULT_DRIFT_TOLERANCE_PCT, at_least=0.0, at_most=100.0
            ),
            mode=read.choice("mode", _MODES, default="auto"),
            allow_trading_key=allow_trading_key,
            index=index,
            source=self.source,
        )

    def exchange(self, key: str, exchange: str) -> str:
        # ccxt takes most of a second to import: only a config load pays for it (the daemon needs
        # ccxt anyway), not every command that merely imports this module. Imported by name because
        # ccxt ships no type information.
        known = cast("list[str]", importlib.import_module("ccxt").exchanges)
        if exchange in known:
            return exchange
        problem = f"unknown exchange '{exchange}' (not a ccxt exchange id)"
        # A high cutoff: suggesting 'htx' for 'ftx' would send someone to a different exchange.
        close = difflib.get_close_matches(exchange, known, n=1, cutoff=0.8)
        if close:
            problem += f"; did you mean '{close[0]}'?"
        raise self.error(key, problem)

    def secret_ref(self, read: _Reader, secret: str) -> SecretRef | None:
        env_key, file_key = f"{secret}_env", f"{secret}_file"
        env = read.optional_string(env_key)
        file = read.optional_string(file_key)
        if env is not None and file is not None:
            raise self.error(read.prefix + file_key, f"set either {env_key} or {file_key}, not both")
        if env is not None:
            if not _ENV_NAME.fullmatch(env):
                # Never echo the value: it may be the key itself, pasted into the wrong place.
                raise self.error(
                    read.prefix + env_key,
                    "must name an environment variable in upper case (such as BINANCE_API_KEY); "
                    "the secret itself belongs in the environment, not in this file",
                )
            return SecretRef(secret, "env", env)
        if file is not None:
            return SecretRef(secret, "file", self.secret_path(read.prefix + file_key, file))
        return None

    def secret_path(self, key: str, template: str) -> str:
        if not template.strip():
            raise self.error(key, "empty path")
        if "$" in _CREDENTIALS_VAR.sub("", template):
            raise self.error(key, "the only variable a path may use is $CREDENTIALS_DIRECTORY")
        if _CREDENTIALS_VAR.search(template):
            return template
        path = Path(template).expanduser()
        # Relative to the configuration file, not to whatever directory the daemon was started in.
        return str(path if path.is_absolute() else self.base / path)

    def check_access(
        self,
        prefix: str,
        exchange: str,
        secrets: dict[SecretName, SecretRef | None],
        wallet_address: str | None,
    ) -> None:
        if exchange in ADDRESS_EXCHANGES:
            if wallet_address is None:
                raise self.error(
                    prefix + "wallet_address", f"missing: a {exchange} account is read by its wallet address"
                )
            if not _WALLET_ADDRESS.fullmatch(wallet_address):
                raise self.error(
                    prefix + "wallet_address", f"'{wallet_address}' is not 0x followed by 40 hex digits"
                )
            for ref in secrets.values():
                if ref is not None:
                    raise self.error(
                        prefix + ref.key,
                        f"a {exchange} account is read by wallet_address alone; give a monitor no keys",
                    )
            return
        if wallet_address is not None:
            raise self.error(
                prefix + "wallet_address",
                f"only {', '.join(sorted(ADDRESS_EXCHANGES))} accounts are read by address; "
                f"{exchange} needs an API key",
            )
        needed: tuple[SecretName, ...] = ("api_key", "secret")
        if exchange in PASSPHRASE_EXCHANGES:
            needed = (*needed, "password")
        for secret in needed:
            if secrets[secret] is None:
                raise self.error(
                    f"{prefix}{secret}_env",
                    f"missing: set {secret}_env or {secret}_file ({exchange} needs a read-only API {secret})",
                )

    def alerts(self, table: dict[str, object]) -> AlertsConfig:
        self.reject_unknown(table, "alerts.", _ALERTS_KEYS)
        read = _Reader(self, table, "alerts.")
        thresholds_pct: tuple[float, ...] = DEFAULT_THRESHOLDS_PCT
        if "thresholds_pct" in table:
            thresholds_pct = self.thresholds(table["thresholds_pct"])
        stale = read.integer("stale_after_polls", default=DEFAULT_STALE_AFTER_POLLS, at_least=1, at_most=1000)
        day = 24 * 60.0
        return AlertsConfig(
            thresholds_pct=thresholds_pct,
            stale_after_polls=stale,
            hysteresis_pct=read.number("hysteresis_pct", default=5.0, at_least=0.0, at_most=100.0),
            repeat_warning_min=read.number("repeat_warning_min", default=240.0, above=0.0, at_most=day),
            repeat_danger_min=read.number("repeat_danger_min", default=30.0, above=0.0, at_most=day),
            repeat_critical_min=read.number("repeat_critical_min", default=5.0, above=0.0, at_most=day),
            fast_fall_pct=read.number("fast_fall_pct", default=30.0, above=0.0, at_most=10_000.0),
            fast_fall_window_s=read.number("fast_fall_window_s", default=300.0, above=0.0, at_most=day * 60),
            target_ratio_pct=read.number("target_ratio_pct", default=200.0, above=100.0, at_most=100_000.0),
            max_alert_age_s=read.number("max_alert_age_s", default=3600.0, above=0.0, at_most=7 * day * 60),
        )

    def thresholds(self, value: object) -> tuple[float, ...]:
        key = "alerts.thresholds_pct"
        if not isinstance(value, list):
            raise self.error(
                key, f"must be a list of percentages such as [150, 130, 120], got {_type_name(value)}"
            )
        if not value:
            raise self.error(key, "empty: give at least one threshold, such as [150, 130, 120]")
        for index, item in enumerate(value):
            if not _is_number(item):
                raise self.error(f"{key}[{index}]", f"must be a number, got {_type_name(item)}")
        pcts = tuple(_to_float(item) for item in value)
        try:
            check_thresholds([pct / 100.0 for pct in pcts])
        except ValueError as exc:
            # The risk model's message reads "thresholds[i] must ..."; re-anchor it on the config key.
            match = _THRESHOLD_INDEX.match(str(exc))
            if match is None:  # pragma: no cover - check_thresholds always names the index
                raise self.error(key, str(exc)) from None
            raise self.error(f"{key}[{match[1]}]", f"{match[2]}; got {list(value)}") from None
        return pcts

    def daemon(self, table: dict[str, object]) -> DaemonConfig:
        self.reject_unknown(table, "daemon.", _DAEMON_KEYS)
        read = _Reader(self, table, "daemon.")
        state_dir = read.optional_string("state_dir")
        if state_dir is not None and not state_dir.strip():
            raise self.error("daemon.state_dir", "empty path")
        if state_dir is None:
            state_path = default_state_dir(self.environ)
        else:
            state_path = Path(state_dir).expanduser()
            state_path = state_path if state_path.is_absolute() else self.base / state_path
        return DaemonConfig(
            state_dir=state_path,
            log_format=read.choice("log_format", _LOG_FORMATS, default="auto"),
            tier_refresh_h=read.number(
                "tier_refresh_h", default=DEFAULT_TIER_REFRESH_H, above=0.0, at_most=MAX_REFRESH_H
            ),
            market_refresh_h=read.number(
                "market_refresh_h", default=DEFAULT_MARKET_REFRESH_H, above=0.0, at_most=MAX_REFRESH_H
            ),
            reconcile_s=read.number("reconcile_s", default=60.0, above=0.0, at_most=3600.0),
            http_listen=self.http_listen(read),
            key_recheck_h=read.number(
                "key_recheck_h", default=DEFAULT_KEY_RECHECK_H, at_least=0.0, at_most=MAX_REFRESH_H
            ),
        )

    def http_listen(self, read: _Reader) -> str:
        value = read.optional_string("http_listen")
        if value is None:
            return DEFAULT_HTTP_LISTEN
        if not value:
            return ""  # the documented way to turn the server off
        try:
            parse_listen(value)
        except ValueError as exc:
            raise read.error("http_listen", str(exc)) from None
        return value


class _Reader:
    """Typed access to one table's values; errors name ``prefix + key``."""

    def __init__(self, parser: _Parser, table: dict[str, object], prefix: str) -> None:
        self.parser = parser
        self.table = table
        self.prefix = prefix

    def error(self, key: str, problem: str) -> ConfigError:
        return self.parser.error(self.prefix + key, problem)

    def optional_string(self, key: str) -> str | None:
        value = self.table.get(key)
        if value is None:
            return None
        if not isinstance(value, str):
            raise self.error(key, f"must be a string, got {_type_name(value)}")
        return value

    def required_string(self, key: str) -> str:
        value = self.optional_string(key)
        if not value:
            raise self.error(key, "missing" if value is None else "empty")
        return value

    def boolean(self, key: str, *, default: bool) -> bool:
        value = self.table.get(key, default)
        if not isinstance(value, bool):
            raise self.error(key, f"must be true or false, got {_type_name(value)}")
        return value

    def number(
        self,
        key: str,
        *,
        default: float,
        above: float | None = None,
        at_least: float | None = None,
        at_most: float,
    ) -> float:
        value = self.table.get(key, default)
        if not _is_number(value):
            raise self.error(key, f"must be a number, got {_type_name(value)}")
        number = _to_float(cast("float", value))
        if not math.isfinite(number):
            raise self.error(key, f"must be a finite number, got {number}")
        if above is not None and number <= above:
            raise self.error(key, f"must be above {above:g}, got {number:g}")
        if at_least is not None and number < at_least:
            raise self.error(key, f"must be at least {at_least:g}, got {number:g}")
        if number > at_most:
            raise self.error(key, f"must be at most {at_most:g}, got {number:g}")
        return number

    def integer(self, key: str, *, default: int, at_least: int, at_most: int) -> int:
        value = self.table.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(key, f"must be a whole number, got {_type_name(value)}")
        if not at_least <= value <= at_most:
            raise self.error(key, f"must be between {at_least} and {at_most}, got {value}")
        return value

    def choice(self, key: str, choices: tuple[_Choice, ...], *, default: _Choice) -> _Choice:
        value = self.table.get(key, default)
        if not isinstance(value, str):
            raise self.error(key, f"must be a string, got {_type_name(value)}")
        for choice in choices:
            if value == choice:
                return choice
        raise self.error(key, f"must be one of {', '.join(choices)}; got '{value}'")


# --- helpers --------------------------------------------------------------------------------------


def _is_number(value: object) -> bool:
    # TOML booleans are Python bools, which are ints: "poll_interval_s = true" is a type error.
    return isinstance(value, int | float) and not isinstance(value, bool)


def _to_float(value: float) -> float:
    # TOML integers have any number of digits; one beyond float's range is simply too large.
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def _type_name(value: object) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a float", str: "a string", list: "an array"}
    if isinstance(value, dict):
        return "a table"
    return names.get(type(value), type(value).__name__)


def _check_url(parser: _Parser, key: str, url: str, schemes: tuple[str, ...]) -> None:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise parser.error(key, f"'{url}' is not a valid URL ({exc})") from None
    if parts.scheme not in schemes or not parts.hostname:
        raise parser.error(
            key, f"'{url}' must be a {' or '.join(f'{s}://' for s in schemes)} URL with a host"
        )
    if parts.username is not None or parts.password is not None:
        # The URL is logged with every connection error; credentials in it would be too.
        raise parser.error(key, "must not contain a user name or password")
    if parts.query or parts.fragment:
        raise parser.error(key, "must not have a query string or fragment (request paths are appended to it)")
    del port  # read only for its validation (urlsplit raises on a port out of range)


def expand_credentials_directory(template: str, environ: Mapping[str, str]) -> str:
    """``template`` with ``$CREDENTIALS_DIRECTORY`` substituted; ``ValueError`` when it is used but unset."""
    if not _CREDENTIALS_VAR.search(template):
        return template
    directory = environ.get("CREDENTIALS_DIRECTORY", "")
    if not directory:
        raise ValueError(
            f"{template} uses $CREDENTIALS_DIRECTORY, which is not set "
            "(systemd sets it for a unit with LoadCredential=)"
        )
    return _CREDENTIALS_VAR.sub(lambda _: directory, template)


def _read_env(account: AccountConfig | ChannelConfig, ref: SecretRef, environ: Mapping[str, str]) -> str:
    value = environ.get(ref.reference)
    if value is None:
        raise ConfigError(
            f"{account.key_path}.{ref.key}",
            f"environment variable {ref.reference} is not set",
            source=account.source,
        )
    value = value.strip()
    if not value:
        raise ConfigError(
            f"{account.key_path}.{ref.key}",
            f"environment variable {ref.reference} is empty",
            source=account.source,
        )
    return value


def _read_file(account: AccountConfig | ChannelConfig, ref: SecretRef, environ: Mapping[str, str]) -> str:
    key = f"{account.key_path}.{ref.key}"

    def fail(problem: str) -> ConfigError:
        return ConfigError(key, problem, source=account.source)

    credentials_dir: Path | None = None
    path_text = ref.reference
    if _CREDENTIALS_VAR.search(path_text):
        directory = environ.get("CREDENTIALS_DIRECTORY", "")
        if not directory:
            raise fail(
                f"{path_text} uses $CREDENTIALS_DIRECTORY, which is not set "
                "(systemd sets it for a unit with LoadCredential=)"
            )
        credentials_dir = Path(directory)
        path_text = _CREDENTIALS_VAR.sub(lambda _: directory, path_text)
    path = Path(path_text)
    try:
        info = path.stat()
    except FileNotFoundError:
        raise fail(f"{path} does not exist") from None
    except OSError as exc:
        raise fail(f"cannot read {path}: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise fail(f"{path} is not a regular file")
    # systemd shows LoadCredential= files as 0440 under DynamicUser= or User= (the group bit carries
    # the service's ACL); its per-unit directory is closed to everyone else, so group bits are
    # harmless there. Anywhere else a group- or world-readable key is a key shared.
    loose = 0o007 if credentials_dir is not None and path.parent == credentials_dir else 0o077
    if info.st_mode & loose:
        who = "others" if loose == 0o007 else "group or others"
        access = "readable" if info.st_mode & loose & 0o444 else "writable"
        raise fail(f"{path} is {access} by {who} (mode {stat.S_IMODE(info.st_mode):04o}); chmod 600 it")
    try:
        value = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise fail(f"cannot read {path}: {reason}") from None
    if not value:
        raise fail(f"{path} is empty")
    return value
