"""What every exchange adapter provides to the daemon."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from monitor.risk.model import AccountSnapshot


@dataclass(frozen=True, slots=True)
class FetchedAccount:
    """One account read from its exchange.

    ``snapshot.reported`` carries the exchange's own cross totals (maintenance margin, margin
    balance) in the engine's scope, for the drift check. ``approximate`` is true when the figures
    come from ccxt's unified fields (the generic fallback) rather than the raw payloads.
    ``requests`` counts the REST calls the fetch made (for the request-weight figures).
    """

    snapshot: AccountSnapshot
    approximate: bool = False
    requests: int = 0


class AccountSource(Protocol):
    """An account on an exchange: fetch it, refresh its tiers, close its client."""

    name: str
    exchange_id: str

    async def fetch(self) -> FetchedAccount:
        """Read balances, positions, mark prices (and tiers when not cached); raise ExchangeError."""
        ...

    async def refresh_tiers(self) -> None:
        """Drop cached tier tables so the next fetch reads them again."""
        ...

    async def close(self) -> None:
        """Close the underlying client; safe to call twice."""
        ...
