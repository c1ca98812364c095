"""What every REST adapter shares: its client, the market cache, error context and the request count."""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from monitor.errors import ClockSkewError, ExchangeError, PayloadError
from monitor.exchanges.base import FetchedAccount
from monitor.exchanges.client import ClientHandle, ClientSettings, MarketCache
from monitor.exchanges.payload import with_context

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping

    from monitor.exchanges.permissions import KeyPermissions
    from monitor.risk.model import AccountSnapshot


@dataclass(frozen=True, slots=True)
class Instrument:
    """What the adapters need of a ccxt market: its unified symbol, contract size and settle asset."""

    symbol: str
    contract_size: float = 1.0
    settle: str | None = None
    inverse: bool = False


def instrument_index(markets_by_id: Mapping[str, Any] | None) -> dict[str, Instrument]:
    """Exchange market id -> ``Instrument``, from a loaded ccxt client's ``markets_by_id``."""
    index: dict[str, Instrument] = {}
    for market_id, markets in (markets_by_id or {}).items():
        entries = markets if isinstance(markets, list) else [markets]
        if not entries:
            continue
        market = entries[0]
        size = market.get("contractSize")
        index[market_id] = Instrument(
            symbol=market["symbol"],
            contract_size=float(size) if size else 1.0,
            settle=market.get("settle"),
            inverse=bool(market.get("inverse")),
        )
    return index


class RestSource(ABC):
    """An account read by REST polling through one ccxt client (implements ``AccountSource``).

    Subclasses implement ``_read`` (the requests and the normalisation) and may keep tier tables,
    which ``refresh_tiers`` drops through ``_drop_tiers``.
    """

    #: True when the figures come from ccxt's unified fields rather than the raw payloads.
    approximate = False

    def __init__(self, name: str, settings: ClientSettings, markets: MarketCache) -> None:
        self.name = name
        self.exchange_id = settings.exchange_id
        self.settings = settings
        self._handle = ClientHandle(settings, account=name, shared=markets.session)
        self._markets = markets
        self._symbols: dict[str, Instrument] | None = None

    @property
    def client(self) -> Any:  # noqa: ANN401 - ccxt clients are untyped
        """The ccxt client (transport only)."""
        return self._handle.client

    @property
    def handle(self) -> ClientHandle:
        """The account's ccxt client with our timeouts and errors (a user-data feed borrows it)."""
        return self._handle

    @property
    def ws_url(self) -> str | None:
        """The websocket URL configured for this account, if any."""
        return self._handle.ws_url

    async def fetch(self) -> FetchedAccount:
        """Read the account; raise ``ExchangeError`` (a ``PayloadError`` names the account and field)."""
        before = self._handle.requests
        try:
            if self._symbols is None:
                await self._markets.attach(self._handle)
                self._symbols = self._symbol_index()
            snapshot = await self._read(self._symbols)
        except PayloadError as exc:
            raise with_context(exc, account=self.name, exchange=self.exchange_id) from exc
        except ClockSkewError:
            # Resync now so the caller's retry is signed with the exchange's time; if the resync itself
            # fails, the original error still says what happened.
            with contextlib.suppress(ExchangeError):
                await self._handle.resync_clock()
            raise
        return FetchedAccount(snapshot, approximate=self.approximate, requests=self._handle.requests - before)

    async def refresh_tiers(self) -> None:
        """Drop cached tier tables so the next fetch reads them again."""
        self._drop_tiers()

    async def refresh_markets(self) -> None:
        """Reload the exchange's markets (shared by every account of this exchange)."""
        await self._markets.refresh(self._handle)
        self._symbols = self._symbol_index()

    async def close(self) -> None:
        """Close the client; safe to call twice."""
        await self._handle.close()

    async def key_permissions(self) -> KeyPermissions | None:
        """What the account's key may do, as the exchange reports it; ``None`` where it reports nothing.

        Raises ``ExchangeError`` (a ``PayloadError`` names the field) when the exchange could not say.
        A ``ClockSkewError`` resyncs the clock first, so the caller's retry is signed right.
        """
        return None

    async def _read_permissions(
        self, what: str, request: Awaitable[object], parse: Callable[[object], KeyPermissions]
    ) -> KeyPermissions:
        try:
            return parse(await self._handle.call(what, request))
        except PayloadError as exc:
            raise with_context(exc, account=self.name, exchange=self.exchange_id) from exc
        except ClockSkewError:
            with contextlib.suppress(ExchangeError):
                await self._handle.resync_clock()
            raise

    def _symbol_index(self) -> dict[str, Instrument]:
        """Exchange market id -> instrument, for the markets this adapter reads."""
        return instrument_index(self.client.markets_by_id)

    @abstractmethod
    async def _read(self, instruments: dict[str, Instrument]) -> AccountSnapshot:
        """Request the payloads and turn them into a snapshot."""

    def _drop_tiers(self) -> None:  # noqa: B027 - most adapters cache tiers; those that do not need no override
        """Forget cached tier tables (override when the adapter caches any)."""
