"""Websocket feeds: an exchange's public mark prices and one account's user-data stream.

Both feeds have the shape of every long-running loop here: ``run()`` is meant to be a named task, it
connects, delivers, and after any error, drop or silence reconnects with capped, jittered backoff;
each await on the network has a timeout; ``last_message_at`` is the heartbeat that ``is_stale`` reads,
and ``connected`` says whether a connection is delivering now. ``run()`` never raises (cancel it to
stop it); ``close()`` releases the clients and may be called twice.

``MarkFeed`` uses ccxt.pro: ``watch_mark_prices([symbol])`` where the exchange has it (Binance, OKX),
otherwise ``watch_tickers([symbol])`` and the ticker's ``markPrice`` (Bybit carries one; a ticker
without a mark is skipped, so such a feed goes stale and the daemon polls). One watch per symbol,
not one watch over the whole set, for two reasons found in ccxt.pro's Binance code: a watch over a
list resolves with the first symbol of a batch, and the other symbols of that batch are gone before
the next call; and every distinct list gets a new stream slot that counts towards a per-connection
subscription limit, so a set that changes often would eventually be refused. A per-symbol watch has a
stable subscription (adding a symbol is one ``SUBSCRIBE`` on an open connection, nothing else is
touched) and its own future, so no update is lost to another symbol's. The mark read is the latest
one ccxt holds for the symbol (``client.tickers``), so a tick that arrives while the loop is busy
is not lost either: the next one is newer. A removed symbol's watch is dropped and its updates
ignored; its subscription ends with the connection (ccxt's unsubscribe is not used: one more
request and one more bookkeeping path to trust, for a few bytes a second).

``UserFeed`` (Binance USDⓈ-M) does **not** use ccxt.pro. ccxt.pro's ``watch_*`` methods surface no
``MARGIN_CALL`` and no ``listenKeyExpired``; getting them means subclassing its Binance class and
extending ``handle_message``, whose dispatch table, authentication and keepalive scheduling are
generated internals that have changed shape across 4.x releases (listen tokens, WebSocket-API
subscriptions), and whose keepalive on failure only rejects futures and forgets the key. Instead:
ccxt's REST implicit methods (``fapiPrivatePostListenKey``/``fapiPrivatePutListenKey``: signing,
error mapping and timeouts as for every other call, through ``ClientHandle``) manage the key, our
own named task keeps it alive, and the stream itself is read with aiohttp, where every Binance event
is a plain JSON object. The URL comes from ccxt.pro's ``get_ws_url('linear', 'private')`` so it
follows Binance's hosts as ccxt does. The surface we depend on is Binance's documented protocol plus
two stable ccxt calls, not ccxt.pro's internals.

The listen key is a credential (it reads the account's stream): it is never logged, error texts are
redacted before logging, and the ``expired`` event's payload has it replaced.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import random
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import aiohttp
import ccxt.pro as ccxt_pro
import structlog

from monitor.errors import ConfigError, PayloadError
from monitor.exchanges.client import (
    CLIENT_HAS,
    ClientHandle,
    ClientSettings,
    Credentials,
    SharedSession,
    ccxt_config,
)
from monitor.exchanges.errors import redact
from monitor.exchanges.urls import rewrite_hosts

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping

    from monitor.exchanges.client import MarketCache

log = structlog.get_logger("margin_monitor.streams")

UserEventKind = Literal["account_update", "margin_call", "expired"]

#: Exchanges whose user-data stream ``UserFeed`` reads, and the ccxt.pro URL type of each.
USER_STREAMS: dict[str, str] = {"binanceusdm": "linear"}

#: Binance user-data event type -> ``UserEvent.kind``; other events only count as a heartbeat.
EVENT_KINDS: dict[str, UserEventKind] = {
    "ACCOUNT_UPDATE": "account_update",
    "MARGIN_CALL": "margin_call",
    "listenKeyExpired": "expired",
}

#: ccxt.pro spreads per-symbol subscriptions over this many connections (its default is 50 for
#: Binance futures: one connection per symbol for the first 50).
MARK_CONNECTIONS = 4

REDACTED = "***"


def supported(exchange_id: str) -> bool:
    """Whether ``UserFeed`` can read ``exchange_id``'s user-data stream."""
    return exchange_id in USER_STREAMS


@dataclass(frozen=True, slots=True)
class UserEvent:
    """One event from an account's user-data stream.

    ``account_update``: balances or positions changed (re-read the account); ``margin_call``: the
    exchange's own warning (Binance sends the cross wallet ``cw`` and per position ``mm``, ``up``,
    ``mp``; no ratio); ``expired``: the listen key expired (the feed renews it and reconnects by
    itself; the payload's ``listenKey`` is redacted). ``payload`` is the exchange's event as sent.
    """

    kind: UserEventKind
    received_at: float
    payload: Mapping[str, Any]


@dataclass(slots=True)
class Backoff:
    """Capped exponential delays jittered into their upper half; ``reset`` after a healthy connection."""

    initial_s: float = 0.5
    cap_s: float = 30.0
    attempt: int = 0

    def next_delay(self) -> float:
        """The delay before the next attempt (and count it)."""
        ceiling = min(self.cap_s, self.initial_s * 2.0 ** min(self.attempt, 32))
        self.attempt += 1
        return ceiling * random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not cryptography

    def reset(self) -> None:
        """Start again from ``initial_s``."""
        self.attempt = 0


def create_pro_client(settings: ClientSettings) -> Any:  # noqa: ANN401 - ccxt clients are untyped
    """A ccxt.pro client configured like ``create_client``, websockets pointed at ``settings.ws_url``.

    REST URLs go to ``base_url`` and websocket URLs to ``ws_url`` (each only when given); call it
    inside the running loop.
    """
    asyncio.get_running_loop()
    klass = getattr(ccxt_pro, settings.exchange_id, None)
    if klass is None or not isinstance(klass, type):
        raise ConfigError("exchange", f"no ccxt.pro websocket client for {settings.exchange_id!r}")
    config = ccxt_config(settings, {"streamLimits": dict.fromkeys(("linear", "inverse"), MARK_CONNECTIONS)})
    client = klass(config)
    client.has = {**client.has, **CLIENT_HAS.get(settings.exchange_id, {})}
    if settings.sandbox:
        client.set_sandbox_mode(True)
    api = client.urls["api"]
    ws = api.get("ws") if isinstance(api, dict) else None
    if settings.base_url is not None:
        api = rewrite_hosts(api, settings.base_url)
        if ws is not None:
            api["ws"] = ws  # websockets keep their own host unless ws_url says otherwise
    if settings.ws_url is not None and ws is not None:
        api["ws"] = rewrite_hosts(ws, settings.ws_url)
    client.urls["api"] = api
    return client


def _reason(exc: BaseException, secrets: tuple[str | None, ...] = ()) -> str:
    """A loggable one-line cause: the innermost error of a group, its type and redacted message."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    text = str(exc)
    return f"{type(exc).__name__}: {redact(text, secrets)}" if text else type(exc).__name__


def _network_timeout(settings: ClientSettings) -> float:
    return settings.timeout_s * 1.5 + 1.0


# --- mark prices ----------------------------------------------------------------------------------


class MarkFeed:
    """Live mark prices of a changing set of symbols on one exchange (public, no credentials).

    ``on_marks({symbol: mark}, received_at)`` is called for every update with the symbols it carries
    (``received_at`` from ``clock``). ``markets``: take the market list from the daemon's shared
    cache instead of loading it once here. ``idle_timeout_s`` (default three ``stale_after_s``): a
    connection that delivers nothing for that long is dropped and dialled again.
    """

    def __init__(
        self,
        settings: ClientSettings,
        on_marks: Callable[[Mapping[str, float], float], None],
        *,
        stale_after_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        markets: MarketCache | None = None,
        idle_timeout_s: float | None = None,
        backoff_initial_s: float = 0.5,
        backoff_cap_s: float = 30.0,
    ) -> None:
        self.settings = dataclasses.replace(settings, credentials=Credentials())
        self.exchange = settings.exchange_id
        self.on_marks = on_marks
        self.stale_after_s = stale_after_s
        self.idle_timeout_s = idle_timeout_s if idle_timeout_s is not None else 3.0 * stale_after_s
        self._clock = clock
        self._market_cache = markets
        self._backoff = Backoff(backoff_initial_s, backoff_cap_s)
        self.last_message_at: float | None = None
        """``clock()`` at the last update delivered (the heartbeat)."""
        self.connected = False
        """Whether a connection is open and has delivered since it opened."""
        self.connects = 0
        """Connections that delivered, counting the first (``connects - 1`` reconnects)."""
        self._symbols: frozenset[str] = frozenset()
        self._watching_since = clock()
        self._changed = asyncio.Event()
        self._client: Any = None
        self._markets: tuple[Any, Any] | None = None
        self._closed = False

    @property
    def symbols(self) -> frozenset[str]:
        """The unified symbols watched (``BTC/USDT:USDT``)."""
        return self._symbols

    def set_symbols(self, symbols: Iterable[str]) -> None:
        """Watch exactly ``symbols`` from now on; new ones are subscribed on the open connection."""
        wanted = frozenset(symbols)
        if wanted == self._symbols:
            return
        if not self._symbols:
            self._watching_since = self._clock()
        self._symbols = wanted
        self._changed.set()

    def is_stale(self, now: float) -> bool:
        """Whether no update arrived for ``stale_after_s`` while there was something to watch."""
        if not self._symbols:
            return False
        last = self._watching_since
        if self.last_message_at is not None:
            last = max(last, self.last_message_at)
        return now - last > self.stale_after_s

    def _fields(self) -> dict[str, Any]:
        return {"feed": "marks", "exchange": self.exchange}

    async def run(self) -> None:
        """Deliver marks until cancelled, reconnecting after every error, drop or silence."""
        try:
            while not self._closed:
                if not self._symbols:
                    self._changed.clear()
                    await self._changed.wait()
                    continue
                try:
                    await self._session()
                    reason = f"no update for {self.idle_timeout_s:g}s"
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - any failure means: reconnect
                    reason = _reason(exc)
                self._ended(reason)
                await self._discard_client()
                delay = self._backoff.next_delay()
                log.info("stream.reconnecting", **self._fields(), delay_s=round(delay, 3))
                await asyncio.sleep(delay)
        finally:
            self.connected = False

    def _ended(self, reason: str) -> None:
        if self.connected:
            self.connected = False
            log.warning("stream.dropped", **self._fields(), reason=reason)
        else:
            log.warning("stream.connect_failed", **self._fields(), reason=reason)

    async def _open(self) -> Any:  # noqa: ANN401 - a ccxt.pro client
        client = create_pro_client(self.settings)
        self._client = client
        if self._markets is None:
            if self._market_cache is not None:
                handle = ClientHandle(self.settings, account=f"marks:{self.exchange}")
                try:
                    await self._market_cache.attach(handle)
                    self._markets = (handle.client.markets, handle.client.currencies)
                finally:
                    await handle.close()
            else:
                async with asyncio.timeout(_network_timeout(self.settings)):
                    await client.load_markets()
                self._markets = (client.markets, client.currencies)
        if client.markets is None:
            client.set_markets(*self._markets)
        return client

    async def _watch(self, client: Any, symbol: str) -> None:  # noqa: ANN401 - a ccxt.pro client
        if client.has.get("watchMarkPrices"):
            await client.watch_mark_prices([symbol])
        else:
            await client.watch_tickers([symbol])

    async def _session(self) -> None:
        """One connection: returns after ``idle_timeout_s`` of silence, raises on any error."""
        client = await self._open()
        watches: dict[str, asyncio.Task[None]] = {}
        changed: asyncio.Task[bool] | None = None
        try:
            while True:
                wanted = self._symbols
                for symbol in watches.keys() - wanted:
                    watches.pop(symbol).cancel()
                for symbol in wanted - watches.keys():
                    watches[symbol] = asyncio.create_task(
                        self._watch(client, symbol), name=f"marks:{self.exchange}:{symbol}"
                    )
                if changed is None or changed.done():
                    self._changed.clear()
                    changed = asyncio.create_task(self._changed.wait(), name=f"marks:{self.exchange}:symbols")
                done, _ = await asyncio.wait(
                    [*watches.values(), changed],
                    timeout=self.idle_timeout_s,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if not done:
                    return
                self._deliver(client, watches)
        finally:
            pending = [*watches.values(), *([changed] if changed is not None else [])]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    def _deliver(self, client: Any, watches: dict[str, asyncio.Task[None]]) -> None:  # noqa: ANN401
        marks: dict[str, float] = {}
        failure: BaseException | None = None
        for symbol, task in list(watches.items()):
            if not task.done():
                continue
            del watches[symbol]
            if task.cancelled():  # ccxt cancelled the future under the watch: treat as a drop
                failure = failure or ConnectionError(f"watch of {symbol} cancelled")
                continue
            error = task.exception()
            if error is not None:
                failure = failure or error
                continue
            ticker = client.tickers.get(symbol)
            mark = ticker.get("markPrice") if isinstance(ticker, dict) else None
            if isinstance(mark, int | float) and not isinstance(mark, bool):
                marks[symbol] = float(mark)
        if marks:
            now = self._clock()
            self.last_message_at = now
            if not self.connected:
                self.connected = True
                self.connects += 1
                self._backoff.reset()
                log.info("stream.connected", **self._fields(), symbols=len(self._symbols))
            try:
                self.on_marks(marks, now)
            except Exception:
                log.exception("stream.callback_failed", **self._fields())
        if failure is not None:
            raise failure

    async def _discard_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(_network_timeout(self.settings)):
                    await client.close()

    async def close(self) -> None:
        """Close the ccxt.pro client; a second call does nothing."""
        if self._closed:
            return
        self._closed = True
        self.connected = False
        await self._discard_client()


# --- user data ------------------------------------------------------------------------------------

_WS_BASES: dict[tuple[str, str | None, bool, str], str] = {}


def private_ws_base(settings: ClientSettings) -> str:
    """The user-data websocket URL without its listen key, as ccxt.pro dials it (cached per host)."""
    url_type = USER_STREAMS[settings.exchange_id]
    key = (settings.exchange_id, settings.ws_url, settings.sandbox, url_type)
    base = _WS_BASES.get(key)
    if base is None:
        probe = create_pro_client(dataclasses.replace(settings, credentials=Credentials(), base_url=None))
        base = str(probe.get_ws_url(url_type, "private"))
        _WS_BASES[key] = base
    return base


class UserFeed:
    """One account's user-data stream (Binance USDⓈ-M): account updates, margin calls, key expiry.

    ``on_event`` gets a ``UserEvent`` for each. The listen key is created on every (re)connect
    (Binance returns the live key extended, or a new one), kept alive every ``keepalive_s``, and
    renewed at once when the stream says it expired. A quiet stream is still a live one: the feed
    pings every ``ping_interval_s`` and a pong counts as a heartbeat; nothing at all for two intervals
    drops the connection. ``shared``: the daemon's shared HTTP session (released, not closed, here);
    else one of its own. ``handle``: the account's REST client, lent for the listen-key calls (not
    closed here); else the feed makes its own.
    Raises ``ConfigError`` for an exchange ``supported`` says no to.
    """

    def __init__(  # noqa: PLR0913 - every knob past on_event is a keyword with a default
        self,
        name: str,
        settings: ClientSettings,
        on_event: Callable[[UserEvent], None],
        *,
        stale_after_s: float = 60.0,
        ping_interval_s: float = 20.0,
        keepalive_s: float = 1800.0,
        clock: Callable[[], float] = time.monotonic,
        backoff_initial_s: float = 0.5,
        backoff_cap_s: float = 30.0,
        shared: SharedSession | None = None,
        handle: ClientHandle | None = None,
    ) -> None:
        if not supported(settings.exchange_id):
            raise ConfigError("mode", f"no user-data stream for {settings.exchange_id!r}; use mode = 'poll'")
        self.name = name
        self.settings = settings
        self.exchange = settings.exchange_id
        self.on_event = on_event
        self.stale_after_s = stale_after_s
        self.ping_interval_s = ping_interval_s
        self.keepalive_s = keepalive_s
        self._clock = clock
        # With the daemon's shared HTTP session (and TLS context) a thousand user feeds cost what one
        # does in TLS state; the listen-key calls go through the same session.
        self._shared = shared
        self._shared_session = None if shared is None else shared.acquire(streams=True)
        self._session: aiohttp.ClientSession | None = None
        # The account's REST client when the daemon lends it (one ccxt instance an account, not two);
        # borrowed, so never closed here.
        self._borrowed = handle
        self._handle: ClientHandle | None = handle
        self._backoff = Backoff(backoff_initial_s, backoff_cap_s)
        self._listen_key: str | None = None
        self._started_at = clock()
        self.last_message_at: float | None = None
        """``clock()`` at the last event or pong (the heartbeat)."""
        self.connected = False
        """Whether the stream is open now."""
        self.connects = 0
        """Connections opened, counting the first."""
        self.renewals = 0
        """Listen keys renewed after the exchange said the old one expired."""
        self._closed = False

    def is_stale(self, now: float) -> bool:
        """Whether neither an event nor a pong arrived for ``stale_after_s``."""
        last = self.last_message_at if self.last_message_at is not None else self._started_at
        return now - last > self.stale_after_s

    def _fields(self) -> dict[str, Any]:
        return {"feed": "user", "account": self.name, "exchange": self.exchange}

    def _secrets(self) -> tuple[str | None, ...]:
        creds = self.settings.credentials
        return (self._listen_key, creds.api_key, creds.secret, creds.password)

    async def run(self) -> None:
        """Deliver events until cancelled, reconnecting after every error or drop."""
        try:
            while not self._closed:
                try:
                    expired = await self._connection()
                    reason = "listen key expired" if expired else "closed by the exchange"
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - any failure means: reconnect
                    expired = False
                    reason = _reason(exc, self._secrets())
                if self.connected:
                    self.connected = False
                    log.warning("stream.dropped", **self._fields(), reason=reason)
                else:
                    log.warning("stream.connect_failed", **self._fields(), reason=reason)
                self._listen_key = None
                delay = 0.0 if expired else self._backoff.next_delay()
                log.info("stream.reconnecting", **self._fields(), delay_s=round(delay, 3), renew_key=expired)
                await asyncio.sleep(delay)
        finally:
            self.connected = False

    async def _call(self, what: str, request: Any) -> Any:  # noqa: ANN401 - ccxt's untyped answers
        if self._handle is None:
            self._handle = ClientHandle(self.settings, account=self.name, shared=self._shared)
        return await self._handle.call(what, request)

    async def _connection(self) -> bool:
        """One connection; ``True`` when it ended because the listen key expired."""
        if self._handle is None:
            self._handle = ClientHandle(self.settings, account=self.name, shared=self._shared)
        answer = await self._call("listenKey", self._handle.client.fapiPrivatePostListenKey())
        key = answer.get("listenKey") if isinstance(answer, dict) else None
        if not isinstance(key, str) or not key:
            raise PayloadError("listenKey", "no listen key in the answer")
        self._listen_key = key
        url = f"{private_ws_base(self.settings)}?listenKey={key}"
        if self._session is None:
            self._session = self._shared_session or aiohttp.ClientSession()
        async with asyncio.timeout(_network_timeout(self.settings)):
            ws = await self._session.ws_connect(url, autoping=False, autoclose=True)
        try:
            self.connected = True
            self.connects += 1
            self.last_message_at = self._clock()
            self._backoff.reset()
            log.info("stream.connected", **self._fields())
            async with asyncio.TaskGroup() as tasks:
                keepalive = tasks.create_task(self._keepalive(), name=f"user:{self.name}:keepalive")
                pinger = tasks.create_task(self._ping(ws), name=f"user:{self.name}:ping")
                expired = await self._read(ws)
                keepalive.cancel()
                pinger.cancel()
            return expired
        finally:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(_network_timeout(self.settings)):
                    await ws.close()

    async def _keepalive(self) -> None:
        while True:
            await asyncio.sleep(self.keepalive_s)
            assert self._handle is not None  # noqa: S101 - set before the connection opened
            await self._call("listenKey keepalive", self._handle.client.fapiPrivatePutListenKey())

    async def _ping(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        while True:
            await asyncio.sleep(self.ping_interval_s)
            async with asyncio.timeout(_network_timeout(self.settings)):
                await ws.ping()

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> bool:
        while True:
            async with asyncio.timeout(2.0 * self.ping_interval_s):
                message = await ws.receive()
            match message.type:
                case aiohttp.WSMsgType.TEXT:
                    if self._on_text(message.data):
                        return True
                case aiohttp.WSMsgType.PING:
                    self.last_message_at = self._clock()
                    await ws.pong(message.data)
                case aiohttp.WSMsgType.PONG:
                    self.last_message_at = self._clock()
                case aiohttp.WSMsgType.CLOSE | aiohttp.WSMsgType.CLOSING | aiohttp.WSMsgType.CLOSED:
                    return False
                case aiohttp.WSMsgType.ERROR:
                    raise ConnectionError(f"user stream error: {_reason(ws.exception() or Exception())}")
                case _:
                    pass

    def _on_text(self, text: str) -> bool:
        """Handle one event; ``True`` when it says the listen key expired."""
        now = self._clock()
        self.last_message_at = now
        try:
            event = json.loads(text)
        except ValueError:
            log.warning("stream.bad_message", **self._fields(), length=len(text))
            return False
        if isinstance(event, dict) and isinstance(event.get("data"), dict) and "stream" in event:
            event = event["data"]  # the combined-stream wrapper
        if not isinstance(event, dict):
            return False
        kind = EVENT_KINDS.get(str(event.get("e")))
        if kind is None:
            return False
        if kind == "expired":
            event = {**event, "listenKey": REDACTED}
            self.renewals += 1
        log.info("stream.event", **self._fields(), kind=kind)
        try:
            self.on_event(UserEvent(kind, now, event))
        except Exception:
            log.exception("stream.callback_failed", **self._fields(), kind=kind)
        return kind == "expired"

    async def close(self) -> None:
        """Close the REST client and this feed's own HTTP session; a second call does nothing."""
        if self._closed:
            return
        self._closed = True
        self.connected = False
        handle, self._handle = self._handle, None
        if handle is not None and handle is not self._borrowed:
            with contextlib.suppress(Exception):
                await handle.close()
        session, self._session = self._session, None
        if session is not None and session is not self._shared_session:
            await session.close()
        if self._shared is not None and self._shared_session is not None:
            self._shared_session = None
            await self._shared.release(streams=True)
