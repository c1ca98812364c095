"""Faults the simulator injects on demand, and the request counts tests and benchmarks read."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from enum import StrEnum


class FaultKind(StrEnum):
    """What an injected fault does to the request it hits."""

    HTTP_500 = "http_500"
    """500 with an HTML body, as a CDN in front of the exchange sends it (ccxt: ExchangeNotAvailable)."""
    HTTP_503 = "http_503"
    """503 with an HTML body (ccxt: ExchangeNotAvailable)."""
    TIMEOUT = "timeout"
    """Hang for ``hang_s`` (longer than any sane client timeout), then 503; released when the server stops."""
    RATE_LIMIT = "rate_limit"
    """429, ``Retry-After`` and code -1003 (ccxt: DDoSProtection)."""
    BAN = "ban"
    """418 (IP banned), ``Retry-After`` and code -1003 (ccxt: DDoSProtection)."""
    MALFORMED_JSON = "malformed_json"
    """200 with a truncated JSON body."""
    MISSING_FIELD = "missing_field"
    """The normal payload with ``field`` removed (from the object, or from each element of a list)."""
    TIMESTAMP = "timestamp"
    """400 code -1021 whatever the request's timestamp (ccxt: InvalidNonce)."""
    AUTH = "auth"
    """401 code -2015, the key rejected whatever it is (ccxt: AuthenticationError); each venue's own code."""


@dataclass(frozen=True, slots=True)
class Fault:
    """One armed fault: hits up to ``remaining`` requests to ``path`` (``None``: any REST path)."""

    kind: FaultKind
    remaining: int
    path: str | None = None
    field: str | None = None
    retry_after_s: int = 2
    hang_s: float = 30.0


class Faults:
    """The armed faults of a simulator, consumed first-armed first, and per-path request counts."""

    def __init__(self) -> None:
        self._armed: list[Fault] = []
        self.requests: Counter[str] = Counter()
        """Requests received, by path (``/fapi/v3/account``); websocket handshakes included."""

    def inject(
        self,
        kind: FaultKind | str,
        count: int = 1,
        *,
        path: str | None = None,
        field: str | None = None,
        retry_after_s: int = 2,
        hang_s: float = 30.0,
    ) -> None:
        """Arm ``kind`` for the next ``count`` requests to ``path`` (any REST path when ``None``).

        ``field`` names the field ``missing_field`` drops (e.g. ``totalMaintMargin``).
        """
        fault_kind = FaultKind(kind)
        if fault_kind is FaultKind.MISSING_FIELD and field is None:
            raise ValueError("missing_field needs field=, the payload key to drop")
        if count < 1:
            raise ValueError(f"count must be at least 1, got {count}")
        self._armed.append(Fault(fault_kind, count, path, field, retry_after_s, hang_s))

    def clear(self) -> None:
        """Disarm every fault."""
        self._armed.clear()

    @property
    def armed(self) -> tuple[Fault, ...]:
        """The faults still armed, in the order they will hit."""
        return tuple(self._armed)

    def take(self, path: str, *, rest: bool) -> Fault | None:
        """The fault that hits this request to ``path``, if any, counting it down.

        Faults armed without a path hit REST requests only, so a catch-all fault does not also break
        every websocket handshake; a fault armed with a websocket path hits that handshake.
        """
        for index, fault in enumerate(self._armed):
            if fault.path == path or (fault.path is None and rest):
                if fault.remaining <= 1:
                    del self._armed[index]
                else:
                    self._armed[index] = Fault(
                        fault.kind,
                        fault.remaining - 1,
                        fault.path,
                        fault.field,
                        fault.retry_after_s,
                        fault.hang_s,
                    )
                return fault
        return None

    def count(self, path: str | None = None) -> int:
        """Requests received to ``path``, or to every path when ``None``."""
        return sum(self.requests.values()) if path is None else self.requests[path]
