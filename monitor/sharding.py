"""Sharding: spread the accounts of one configuration over N processes, each account on exactly one.

Every shard reads the same configuration file and keeps the accounts whose name hashes to it
(``shard_of``). The hash is Lamping and Veach's jump consistent hash ("A Fast, Minimal Memory,
Consistent Hash Algorithm", 2014) keyed by the first 8 bytes of the SHA-256 of the name: the same in
every process, on every machine and Python version (``hash()`` is salted per process), and when N
grows to N+1 only about 1/(N+1) of the accounts move, all of them to the new shard.

Which shard a process is comes from, first to last:

- ``--shard I/N`` on the command line;
- ``MARGIN_MONITOR_SHARD=I/N`` in the environment;
- ``MARGIN_MONITOR_SHARDS=N`` with I the ordinal at the end of the host name (``$HOSTNAME``, as a
  Kubernetes StatefulSet names its pods: ``margin-monitor-2`` is shard 2).

A shard keeps its own state directory (``<state_dir>/shard-I-of-N``) and its own MQTT client id and
availability topic; the per-account MQTT topics do not change, so every shard's state meets on one
broker. Telegram commands are off (alerts are not): one bot cannot be polled by several processes.
"""

from __future__ import annotations

import hashlib
import re
import socket
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Final

from monitor.errors import UserInputError

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from monitor.config import ChannelConfig, Config

SHARD_ENV: Final = "MARGIN_MONITOR_SHARD"
SHARDS_ENV: Final = "MARGIN_MONITOR_SHARDS"
#: More shards than this is a typo (a StatefulSet of ten thousand pods is not a deployment we serve).
MAX_SHARDS: Final = 4096

_SPEC = re.compile(r"\s*(\d+)\s*/\s*(\d+)\s*")
_ORDINAL = re.compile(r"-(\d+)$")
_MASK64: Final = (1 << 64) - 1
_JUMP_MULTIPLIER: Final = 2862933555777941757


def jump_hash(key: int, buckets: int) -> int:
    """Lamping and Veach's jump consistent hash of the 64-bit ``key`` into ``range(buckets)``."""
    if buckets < 1:
        raise ValueError(f"buckets must be at least 1, got {buckets}")
    bucket, jump = -1, 0
    key &= _MASK64
    while jump < buckets:
        bucket = jump
        key = (key * _JUMP_MULTIPLIER + 1) & _MASK64
        jump = int((bucket + 1) * (float(1 << 31) / float((key >> 33) + 1)))
    return bucket


def shard_key(name: str) -> int:
    """The 64-bit key of an account name: the first 8 bytes of its UTF-8 SHA-256, big-endian."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big")


def shard_of(name: str, n: int) -> int:
    """The shard (``0 <= shard < n``) that watches the account called ``name``."""
    return jump_hash(shard_key(name), n)


@dataclass(frozen=True, slots=True)
class Shard:
    """Shard ``index`` of ``count``; ``origin`` says where it was read from (for log lines)."""

    index: int
    count: int
    origin: str = "--shard"

    def __post_init__(self) -> None:
        if not 1 <= self.count <= MAX_SHARDS or not 0 <= self.index < self.count:
            raise ValueError(f"shard {self.index}/{self.count} is not 0 <= I < N <= {MAX_SHARDS}")

    @property
    def label(self) -> str:
        """``shard-I-of-N``: the state subdirectory and the suffix of MQTT client ids."""
        return f"shard-{self.index}-of-{self.count}"

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def takes(self, name: str) -> bool:
        """Whether the account called ``name`` is this shard's."""
        return shard_of(name, self.count) == self.index

    def select(self, names: Iterable[str]) -> list[str]:
        """The names, in their order, that this shard takes."""
        return [name for name in names if self.takes(name)]


def parse_shard(text: str, *, source: str = "--shard") -> Shard:
    """``I/N`` as a ``Shard``; a ``UserInputError`` naming ``source`` otherwise."""
    match = _SPEC.fullmatch(text)
    index, count = (int(match[1]), int(match[2])) if match else (-1, 0)
    if not match or not 0 <= index < count:
        raise UserInputError(source, f"expected I/N with 0 <= I < N, got {text!r}")
    if count > MAX_SHARDS:
        raise UserInputError(source, f"at most {MAX_SHARDS} shards, got {text!r}")
    return Shard(index, count, source)


def shard_from(flag: str | None, environ: Mapping[str, str], hostname: str | None = None) -> Shard | None:
    """The shard this process is, from ``--shard`` then the environment (see the module); ``None``: all.

    ``hostname`` defaults to ``$HOSTNAME``, then the system's host name.
    """
    if flag is not None:
        return parse_shard(flag)
    spec = environ.get(SHARD_ENV, "").strip()
    if spec:
        return parse_shard(spec, source=SHARD_ENV)
    count_text = environ.get(SHARDS_ENV, "").strip()
    if not count_text:
        return None
    if not count_text.isdigit() or not 1 <= int(count_text) <= MAX_SHARDS:
        raise UserInputError(
            SHARDS_ENV, f"expected a number of shards from 1 to {MAX_SHARDS}, got {count_text!r}"
        )
    count = int(count_text)
    host = hostname or environ.get("HOSTNAME") or socket.gethostname()
    ordinal = _ORDINAL.search(host)
    if ordinal is None:
        raise UserInputError(
            SHARDS_ENV,
            f"the shard index comes from the host name ending in -<ordinal> (a StatefulSet pod such as "
            f"margin-monitor-2), got host name {host!r}; set {SHARD_ENV}=I/N instead",
        )
    index = int(ordinal[1])
    if index >= count:
        raise UserInputError(
            SHARDS_ENV,
            f"host name {host!r} gives shard {index}, not below {SHARDS_ENV}={count} "
            "(scale the StatefulSet and the variable together)",
        )
    return Shard(index, count, f"{SHARDS_ENV} and host name {host}")


def apply_shard(config: Config, shard: Shard | None) -> Config:
    """``config`` as shard ``shard`` runs it: its accounts only, its own state directory and MQTT identity.

    The one place where sharding changes a configuration; ``None`` (and a shard of one) leaves it as is.
    """
    if shard is None or shard.count == 1:
        return config
    return replace(
        config,
        shard=str(shard),
        accounts=tuple(account for account in config.accounts if shard.takes(account.name)),
        daemon=replace(config.daemon, state_dir=config.daemon.state_dir / shard.label),
        channels=tuple(_channel_for(channel, shard) for channel in config.channels),
    )


def _channel_for(channel: ChannelConfig, shard: Shard) -> ChannelConfig:
    if channel.type == "telegram":
        # Telegram answers a second getUpdates poller of one bot with 409 Conflict, and a shard's
        # /status would list its own accounts as if they were all: commands are off, alerts go out.
        return replace(channel, options={**channel.options, "commands": False})
    if channel.type != "mqtt":
        return channel
    # Two clients with one id throw each other off the broker, over and over: each shard has its own.
    client_id = channel.options.get("client_id") or "margin-monitor"
    options = {**channel.options, "client_id": f"{client_id}-{shard.label}", "instance": shard.label}
    return replace(channel, options=options)
