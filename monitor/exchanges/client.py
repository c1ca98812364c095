"""ccxt async clients, one per account, and the market cache they share.

ccxt is the transport here: signing, rate limits, URLs and error codes. A client is created inside the
running event loop (ccxt binds its aiohttp session to the loop it first sees), configured so that
loading markets touches only the public endpoint that lists them, and always closed. Markets are loaded
once per exchange (``MarketCache``), never once per account: an exchange's market list is the same for
every account on the same host, and Binance's is megabytes.
"""

from __future__ import annotations

import asyncio
import copy
import ssl
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import aiohttp
import ccxt.async_support as ccxt_async
import certifi

from monitor.errors import ConfigError, ExchangeError
from monitor.exchanges.errors import translate
from monitor.exchanges.urls import rewrite_hosts

if TYPE_CHECKING:
    from collections.abc import Awaitable, Mapping

#: Options per exchange so that ``load_markets`` reads only the public market list of the family we
#: monitor: no private currency endpoint (it would need keys, and it is another exchange's API on
#: Binance), no spot or option markets.
CLIENT_OPTIONS: dict[str, dict[str, Any]] = {
    "binanceusdm": {"fetchCurrencies": False, "fetchMarkets": {"types": ["linear"]}, "fetchMargins": False},
    "binancecoinm": {"fetchCurrencies": False, "fetchMarkets": {"types": ["inverse"]}, "fetchMargins": False},
    "bybit": {"fetchMarkets": {"types": ["linear"]}},
    "okx": {"fetchMarkets": {"types": ["swap"]}},
    "hyperliquid": {"fetchMarkets": {"types": ["swap"]}},
}

#: ``has`` entries switched off so ``load_markets`` does not call a currencies endpoint.
CLIENT_HAS: dict[str, dict[str, bool]] = {
    "binanceusdm": {"fetchCurrencies": False},
    "binancecoinm": {"fetchCurrencies": False},
    "bybit": {"fetchCurrencies": False},
    "okx": {"fetchCurrencies": False},
    "hyperliquid": {"fetchCurrencies": False},
}

DEFAULT_TIMEOUT_S = 10.0

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Credentials:
    """What an account signs with; ``repr`` never shows a value (it lands in logs and tracebacks)."""

    api_key: str | None = field(default=None, repr=False)
    secret: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)  # OKX's passphrase
    wallet_address: str | None = None  # Hyperliquid reads by address; an address is public


@dataclass(frozen=True, slots=True)
class ClientSettings:
    """How to reach one account's exchange.

    ``base_url`` replaces the scheme and host of every REST URL (a testnet, a proxy, the simulator);
    ``ws_url`` is kept for the websocket streams; ``sandbox`` switches ccxt to the exchange's own
    testnet (applied first, so an explicit ``base_url`` wins).
    """

    exchange_id: str
    credentials: Credentials = field(default_factory=Credentials)
    base_url: str | None = None
    ws_url: str | None = None
    sandbox: bool = False
    timeout_s: float = DEFAULT_TIMEOUT_S
    options: tuple[tuple[str, Any], ...] = ()

    @property
    def market_key(self) -> tuple[str, str | None, bool]:
        """Accounts with the same key share one market list."""
        return (self.exchange_id, self.base_url, self.sandbox)


class SharedSession:
    """One TLS context and two aiohttp sessions (REST, and long-lived streams) for many clients.

    A ccxt async client otherwise opens a session of its own, with a TLS context of its own, on first
    use: about 0.9 MB a client (measured here: 200 clients, 185 MB apart against 17 MB sharing), so a
    thousand accounts would spend most of a gigabyte on copies of the same CA bundle. Clients acquire
    a session when created and release it when closed; the last release of each closes it.

    REST requests share one pool of ``CONNECTION_LIMIT`` connections; websockets, which hold their
    connection for hours, get a pool of their own without a limit. In one pool, 256 user-data streams
    took every connection and the REST reads of every account waited forever behind them.
    """

    #: REST connections open at once across every client; more wait their turn rather than fail.
    CONNECTION_LIMIT = 256

    def __init__(self) -> None:
        self._sessions: dict[bool, aiohttp.ClientSession] = {}
        self._users: dict[bool, int] = {False: 0, True: 0}
        self._context: ssl.SSLContext | None = None

    @property
    def ssl_context(self) -> ssl.SSLContext:
        """The one TLS context (ccxt builds one per client even when given a session: 0.6 MB each)."""
        if self._context is None:
            self._context = ssl.create_default_context(cafile=certifi.where())
        return self._context

    def acquire(self, *, streams: bool = False) -> aiohttp.ClientSession:
        """The REST session, or with ``streams`` the websocket one, opened on first use (in the loop)."""
        session = self._sessions.get(streams)
        if session is None or session.closed:
            limit = 0 if streams else self.CONNECTION_LIMIT
            connector = aiohttp.TCPConnector(ssl=self.ssl_context, limit=limit)
            session = self._sessions[streams] = aiohttp.ClientSession(connector=connector, trust_env=False)
        self._users[streams] += 1
        return session

    async def release(self, *, streams: bool = False) -> None:
        """One user fewer of that session; close it after the last one."""
        self._users[streams] -= 1
        if self._users[streams] <= 0:
            self._users[streams] = 0
            session = self._sessions.pop(streams, None)
            if session is not None:
                await session.close()


def ccxt_config(settings: ClientSettings, options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The constructor arguments of a ccxt client (REST or pro) for ``settings``.

    Our per-exchange ``CLIENT_OPTIONS``, then ``options``, then the settings' own; rate limiting on,
    the timeout, and whichever credentials are set.
    """
    merged: dict[str, Any] = copy.deepcopy(CLIENT_OPTIONS.get(settings.exchange_id, {}))
    merged.update(options or {})
    merged.update(dict(settings.options))
    creds = settings.credentials
    config: dict[str, Any] = {
        "enableRateLimit": True,
        "timeout": int(settings.timeout_s * 1000),
        "options": merged,
    }
    config.update(
        {
            key: value
            for key, value in (
                ("apiKey", creds.api_key),
                ("secret", creds.secret),
                ("password", creds.password),
                ("walletAddress", creds.wallet_address),
            )
            if value is not None
        }
    )
    return config


def create_client(settings: ClientSettings, session: aiohttp.ClientSession | None = None) -> Any:  # noqa: ANN401 - ccxt clients are untyped
    """A configured ccxt async client; call it inside the running loop (raises ``RuntimeError`` otherwise)."""
    asyncio.get_running_loop()  # ccxt binds its session to the loop; creating one outside is a bug
    klass = getattr(ccxt_async, settings.exchange_id, None)
    if klass is None or not isinstance(klass, type):
        raise ConfigError("exchange", f"unknown ccxt exchange id {settings.exchange_id!r}")
    config = ccxt_config(settings)
    if session is not None:
        config["session"] = session
    client = klass(config)
    client.has = {**client.has, **CLIENT_HAS.get(settings.exchange_id, {})}
    if settings.sandbox:
        client.set_sandbox_mode(True)
    if settings.base_url is not None:
        client.urls["api"] = rewrite_hosts(client.urls["api"], settings.base_url)
    return client


@dataclass(slots=True)
class _Markets:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    markets: dict[str, Any] | None = None
    currencies: dict[str, Any] | None = None
    loads: int = 0


class MarketCache:
    """Markets loaded once per (exchange id, base URL, sandbox) and handed to every client of that key.

    The first client to ask loads them under a lock; the others wait for it and get
    ``client.set_markets(...)`` from the cache. ``refresh`` reloads through one client (the daily
    market refresh); clients attached later get the new list.
    """

    def __init__(self) -> None:
        self._entries: dict[tuple[str, str | None, bool], _Markets] = {}
        #: The HTTP session every client attached to this cache shares.
        self.session = SharedSession()

    def loads(self, key: tuple[str, str | None, bool]) -> int:
        """How many times markets were fetched from the exchange for ``key``."""
        entry = self._entries.get(key)
        return 0 if entry is None else entry.loads

    async def attach(self, handle: ClientHandle) -> None:
        """Give ``handle``'s client the markets of its key, loading them if nobody has yet."""
        entry = self._entries.setdefault(handle.settings.market_key, _Markets())
        async with entry.lock:
            if entry.markets is None:
                await self._load(handle, entry, reload=False)
            elif handle.client.markets is not entry.markets:
                handle.client.set_markets(entry.markets, entry.currencies)

    async def refresh(self, handle: ClientHandle) -> None:
        """Reload the markets of ``handle``'s key through its client."""
        entry = self._entries.setdefault(handle.settings.market_key, _Markets())
        async with entry.lock:
            await self._load(handle, entry, reload=True)

    @staticmethod
    async def _load(handle: ClientHandle, entry: _Markets, *, reload: bool) -> None:
        markets = await handle.call("markets", handle.client.load_markets(reload))
        entry.markets = markets
        entry.currencies = handle.client.currencies
        entry.loads += 1


class ClientHandle:
    """One account's ccxt client: calls with a timeout and our exceptions, and a close that is safe twice."""

    def __init__(
        self, settings: ClientSettings, *, account: str, shared: SharedSession | None = None
    ) -> None:
        self.settings = settings
        self.account = account
        self.ws_url = settings.ws_url
        self._shared = shared
        self.client: Any = create_client(settings, None if shared is None else shared.acquire())
        if shared is not None:
            self.client.ssl_context = shared.ssl_context
        self.requests = 0
        self._closed = False

    @property
    def closed(self) -> bool:
        """Whether ``close`` ran."""
        return self._closed

    async def call(self, what: str, request: Awaitable[T]) -> T:
        """Await ``request`` (one REST call named ``what``) under a timeout; failures become ours.

        The timeout is a little above ccxt's own so ccxt reports its timeout first; ours catches what
        ccxt's does not cover (the rate limiter's sleep, a stuck DNS lookup).
        """
        self.requests += 1
        try:
            async with asyncio.timeout(self.settings.timeout_s * 1.5 + 1.0):
                return await request
        except ExchangeError:
            raise
        except Exception as exc:
            error = translate(
                exc, client=self.client, account=self.account, exchange=self.settings.exchange_id
            )
            error.add_note(f"during {what}")
            raise error from exc

    async def resync_clock(self) -> None:
        """Measure the exchange's clock and sign with it from now on (after a ``ClockSkewError``)."""
        if not hasattr(self.client, "load_time_difference"):
            return
        self.client.options["adjustForTimeDifference"] = True
        await self.call("time", self.client.load_time_difference())

    async def close(self) -> None:
        """Close the client's sessions; a second call does nothing."""
        if self._closed:
            return
        self._closed = True
        try:
            await self.client.close()
        finally:
            if self._shared is not None:
                await self._shared.release()
