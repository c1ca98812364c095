"""The simulated exchange server: one aiohttp app serving REST and websockets on one port.

    async with SimServer(scenario="crash", tick_s=0.02) as sim:
        client.urls["api"] = rewrite_hosts(client.urls["api"], sim.base_url)
        client.urls["api"]["ws"] = rewrite_hosts(client.urls["api"]["ws"], sim.ws_url)

Websocket paths follow what ccxt.pro binanceusdm dials after host rewriting: market streams on
``/ws``, ``/ws/<stream>``, ``/market/ws/<n>``, ``/public/ws/<n>``, ``/stream?streams=a/b`` (combined);
the user-data stream on ``/private/ws?listenKey=<key>`` and ``/ws/<listenKey>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import signal
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Self

from aiohttp import WSCloseCode, WSMsgType, web

from monitor.sim.accounts import (
    DEMO_API_KEY,
    DEMO_SECRET,
    AccountFigures,
    SimAccount,
    SimPosition,
    bulk_accounts,
    compute_figures,
    demo_account,
)
from monitor.sim.binance import DROP_FIELD, BinanceApi, BinanceError, money, quantity
from monitor.sim.bybit import BybitVenue
from monitor.sim.coinm import CoinmVenue
from monitor.sim.faults import Fault, FaultKind, Faults
from monitor.sim.hyperliquid import HyperliquidVenue
from monitor.sim.markets import catalog, markets
from monitor.sim.okx import OkxVenue
from monitor.sim.scenarios import ScenarioPlayer

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable, Mapping
    from types import TracebackType

    from monitor.sim.venues import Personality

    Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_REST_PREFIXES = ("/fapi/", "/sapi/", "/api/", "/v5/", "/dapi/", "/info")
_MARGIN_CALL_RATIO = 1.25  # Binance warns at a native ratio (MM / margin balance) of 80%, R = 1.25.


@dataclass(frozen=True, slots=True)
class _ListenKey:
    api_key: str
    expires_at: float


class ListenKeys:
    """Listen keys by account: one live key per account, valid ``ttl_s`` after its last keepalive."""

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._by_key: dict[str, _ListenKey] = {}
        self._by_account: dict[str, str] = {}

    def _live(self, key: str) -> _ListenKey | None:
        entry = self._by_key.get(key)
        if entry is None or entry.expires_at <= time.monotonic():
            return None
        return entry

    def open(self, api_key: str) -> str:
        """The account's live key, extended, or a new one (as Binance answers a second POST)."""
        key = self._by_account.get(api_key)
        if key is None or self._live(key) is None:
            key = secrets.token_hex(32)
            self._by_account[api_key] = key
        self._by_key[key] = _ListenKey(api_key, time.monotonic() + self.ttl_s)
        return key

    def keepalive(self, api_key: str) -> str | None:
        """Extend the account's live key; ``None`` when it has none (expired or never opened)."""
        key = self._by_account.get(api_key)
        if key is None or self._live(key) is None:
            return None
        self._by_key[key] = _ListenKey(api_key, time.monotonic() + self.ttl_s)
        return key

    def close(self, api_key: str) -> str | None:
        """Forget the account's key; returns it."""
        key = self._by_account.pop(api_key, None)
        if key is not None:
            self._by_key.pop(key, None)
        return key

    def account_of(self, key: str) -> str | None:
        """The API key owning live listen key ``key``."""
        entry = self._live(key)
        return None if entry is None else entry.api_key


@dataclass(slots=True)
class _MarketConnection:
    ws: web.WebSocketResponse
    streams: set[str]
    combined: bool


class SimServer:
    """A Binance USDⓈ-M-compatible exchange on 127.0.0.1 for tests, benchmarks and the demo.

    ``accounts`` defaults to the demo account alone (``DEMO_API_KEY``/``DEMO_SECRET``); ``bulk`` adds
    that many ``bulk_accounts``. ``scenario`` (``crash``, ``recovery``, ``bleed``, ``flat``) moves the
    marks every ``tick_s`` seconds once started (``autostart=False``: only ``step()`` moves them).
    Mark-price streams push every ``mark_push_s`` (default ``min(tick_s, 1.0)``).
    """

    def __init__(
        self,
        *,
        scenario: str = "flat",
        tick_s: float = 1.0,
        host: str = "127.0.0.1",
        port: int = 0,
        accounts: Iterable[SimAccount] | None = None,
        bulk: int = 0,
        mark_push_s: float | None = None,
        listen_key_ttl_s: float = 3600.0,
        margin_call_ratio: float = _MARGIN_CALL_RATIO,
        autostart: bool = True,
    ) -> None:
        self.host = host
        self.port = port
        self.tick_s = tick_s
        self.mark_push_s = mark_push_s if mark_push_s is not None else min(tick_s, 1.0)
        self.margin_call_ratio = margin_call_ratio
        self.autostart = autostart
        self.marks: dict[str, float] = {s: spec.initial_mark for s, spec in markets().items()}
        self.accounts: dict[str, SimAccount] = {}
        for account in [demo_account()] if accounts is None else accounts:
            self.add_account(account)
        for account in bulk_accounts(bulk):
            self.add_account(account)
        self.faults = Faults()
        self.listen_keys = ListenKeys(listen_key_ttl_s)
        self.clock_offset_ms = 0
        """Added to the server's clock: skew it to provoke -1021 from honest clients."""
        driver = self.accounts.get(DEMO_API_KEY) or next(iter(self.accounts.values()), None)
        if driver is None:
            raise ValueError("the simulator needs at least one account")
        self.player = ScenarioPlayer(scenario, driver, self.marks)
        self._paused = False
        self._api = BinanceApi(self)
        self.bybit = BybitVenue(self)
        """The Bybit v5 personality: its accounts (``sim.bybit.accounts``) and ``sim.bybit.figures()``."""
        self.okx = OkxVenue(self)
        """The OKX v5 personality."""
        self.coinm = CoinmVenue(self)
        """The Binance COIN-M (``/dapi``) personality."""
        self.hyperliquid = HyperliquidVenue(self)
        """The Hyperliquid personality (``POST /info``)."""
        self.personalities: tuple[Personality, ...] = (self.bybit, self.okx, self.coinm, self.hyperliquid)
        self._runner: web.AppRunner | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._sends: set[asyncio.Task[None]] = set()
        self._closing = asyncio.Event()
        self._market_connections: list[_MarketConnection] = []
        self._user_connections: dict[str, set[web.WebSocketResponse]] = {}
        self._margin_called: set[str] = set()
        self._stalled: set[str] = set()
        self._changed = asyncio.Event()
        self.base_url = ""
        """``http://127.0.0.1:PORT`` once started: give it to ``rewrite_hosts`` for REST."""
        self.ws_url = ""
        """``ws://127.0.0.1:PORT`` once started: give it to ``rewrite_hosts`` for ``urls['api']['ws']``."""

    # --- lifecycle ----------------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind (port 0: a free port), then start the scenario and the mark-price pusher."""
        app = web.Application(middlewares=[self._middleware])
        self._api.add_routes(app)
        for personality in self.personalities:
            personality.add_routes(app)
        for path in (
            "/ws",
            "/ws/{tail}",
            "/market/ws",
            "/market/ws/{tail}",
            "/public/ws",
            "/public/ws/{tail}",
            "/private/ws",
            "/private/ws/{tail}",
            "/stream",
        ):
            app.router.add_get(path, self._websocket)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        server = site._server  # noqa: SLF001 - aiohttp exposes the bound port only here
        if isinstance(server, asyncio.Server) and server.sockets:
            self.port = int(server.sockets[0].getsockname()[1])
        self.base_url = f"http://{self.host}:{self.port}"
        self.ws_url = f"ws://{self.host}:{self.port}"
        self._tasks.append(asyncio.create_task(self._push_loop(), name="sim-mark-push"))
        if self.autostart:
            self._tasks.append(asyncio.create_task(self._tick_loop(), name="sim-scenario"))

    async def close(self) -> None:
        """Stop the loops, close every websocket, release hanging requests, unbind."""
        self._closing.set()
        tasks = [*self._tasks, *self._sends]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        await self.drop_websockets()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # --- state and control --------------------------------------------------------------------------

    def add_account(self, account: SimAccount) -> None:
        """Hold ``account`` (replacing any with the same API key).

        A position in a symbol the simulator does not list yet (one of ``catalog()``'s extras) lists
        it from now on, at its initial mark.
        """
        self.accounts[account.api_key] = account
        self._list_symbols(account.positions)

    def _list_symbols(self, positions: Iterable[SimPosition]) -> None:
        for position in positions:
            if position.symbol not in self.marks:
                self.marks[position.symbol] = catalog()[position.symbol].initial_mark

    def server_time_ms(self) -> int:
        """The exchange's clock in epoch milliseconds."""
        return int(time.time() * 1000) + self.clock_offset_ms

    def figures(self, api_key: str = DEMO_API_KEY) -> AccountFigures:
        """The simulator's own figures for an account at the current marks (cross scope + totals)."""
        return compute_figures(self.accounts[api_key], self.marks)

    def set_mark(self, symbol: str, price: float) -> None:
        """Set a mark price now. A running scenario overwrites it on its next tick: ``pause()`` first."""
        if symbol not in self.marks:
            raise KeyError(symbol)
        self.marks[symbol] = price

    def pause(self) -> None:
        """Stop the scenario from moving marks (the loops keep running)."""
        self._paused = True

    def resume(self) -> None:
        """Let the scenario move marks again."""
        self._paused = False

    @property
    def paused(self) -> bool:
        """Whether the scenario is paused."""
        return self._paused

    @property
    def tick(self) -> int:
        """Scenario ticks played so far."""
        return self.player.tick

    def step(self) -> bool:
        """Play one scenario tick now; ``False`` once the script is over (the marks then stay)."""
        marks = self.player.step()
        if marks is not None:
            self.marks.update(marks)
        self._check_margin_calls()
        self._notify()
        return marks is not None

    def _notify(self) -> None:
        # Wake every wait_for(): set the current event and start a fresh one for the next change.
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_for(self, predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
        """Wait until ``predicate()`` holds, re-checked at every tick and websocket (dis)connection.

        Raises ``TimeoutError`` after ``timeout_s``.
        """
        async with asyncio.timeout(timeout_s):
            while not predicate():
                await self._changed.wait()

    def user_streams(self, api_key: str = DEMO_API_KEY) -> int:
        """User-data websockets open for the account."""
        return len(self._user_connections.get(api_key, ()))

    def market_streams(self) -> int:
        """Market-data websockets open."""
        return len(self._market_connections)

    async def set_wallet(self, api_key: str, cross_wallet: float) -> None:
        """Change an account's cross wallet and push ``ACCOUNT_UPDATE`` (reason ``DEPOSIT``)."""
        self.accounts[api_key].cross_wallet = cross_wallet
        await self.push_account_update(api_key, "DEPOSIT")

    async def set_positions(self, api_key: str, positions: Iterable[SimPosition]) -> None:
        """Replace an account's positions and push ``ACCOUNT_UPDATE`` (reason ``ORDER``)."""
        self.accounts[api_key].positions = list(positions)
        self._list_symbols(self.accounts[api_key].positions)
        await self.push_account_update(api_key, "ORDER")

    async def publish_marks(self, marks: Mapping[str, float]) -> float:
        """Set ``marks`` and push every mark-price stream now, off the ``mark_push_s`` schedule.

        Returns ``time.time()`` taken just before the first websocket send (benchmarks time detection
        from it; REST answers with the new marks from that moment too). Margin calls are not checked.
        """
        for symbol, price in marks.items():
            self.set_mark(symbol, price)
        published = time.time()
        if "market" not in self._stalled:
            await self._push_marks()
        return published

    def request_count(self, path: str | None = None) -> int:
        """Requests received to ``path`` (every path when ``None``)."""
        return self.faults.count(path)

    # --- HTTP plumbing ------------------------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        self.faults.requests[path] += 1
        is_rest = path.startswith(_REST_PREFIXES)
        fault = self.faults.take(path, rest=is_rest)
        if fault is not None:
            venue = next((p for p in self.personalities if path.startswith(p.prefixes)), None)
            early = venue.fault_response(fault) if venue is not None else None
            if early is None:
                early = await self._fault_response(fault)
            if early is not None:
                return early
            if fault.kind is FaultKind.MISSING_FIELD and fault.field is not None:
                request[DROP_FIELD] = fault.field
        try:
            response = await handler(request)
        except BinanceError as error:
            response = error.response()
        if (
            fault is not None
            and fault.kind is FaultKind.MALFORMED_JSON
            and isinstance(response, web.Response)
        ):
            body = response.body if isinstance(response.body, bytes) else b"{}"
            return web.Response(body=body[: max(1, len(body) // 2)], content_type="application/json")
        if is_rest:
            response.headers["X-MBX-USED-WEIGHT-1M"] = str(self.faults.count())
        return response

    async def _fault_response(self, fault: Fault) -> web.Response | None:  # noqa: PLR0911 - one answer a kind
        retry = {"Retry-After": str(fault.retry_after_s)}
        match fault.kind:
            case FaultKind.HTTP_500:
                return web.Response(
                    status=500,
                    text="<html><body><h1>500 Internal Server Error</h1></body></html>",
                    content_type="text/html",
                )
            case FaultKind.HTTP_503:
                return web.Response(
                    status=503,
                    text="<html><body><h1>503 Service Unavailable</h1></body></html>",
                    content_type="text/html",
                )
            case FaultKind.TIMEOUT:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closing.wait(), fault.hang_s)
                return web.Response(status=503, text="timed out", content_type="text/plain")
            case FaultKind.RATE_LIMIT:
                body = {
                    "code": -1003,
                    "msg": "Too many requests; current limit of IP(127.0.0.1) is 2400 requests "
                    "per minute. Please use the websocket for live updates to avoid polling the API.",
                }
                return web.json_response(body, status=429, headers=retry)
            case FaultKind.BAN:
                until = self.server_time_ms() + fault.retry_after_s * 1000
                body = {
                    "code": -1003,
                    "msg": f"Way too many requests; IP(127.0.0.1) banned until {until}. "
                    "Please use the websocket for live updates to avoid bans.",
                }
                return web.json_response(body, status=418, headers=retry)
            case FaultKind.TIMESTAMP:
                return web.json_response(
                    {"code": -1021, "msg": "Timestamp for this request is outside of the recvWindow."},
                    status=400,
                )
            case FaultKind.AUTH:
                return web.json_response(
                    {"code": -2015, "msg": "Invalid API-key, IP, or permissions for action."}, status=401
                )
            case _:
                return None

    # --- websockets ---------------------------------------------------------------------------------

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        tail = request.match_info.get("tail", "")
        listen_key = request.query.get("listenKey") or (tail if self.listen_keys.account_of(tail) else None)
        if request.path.startswith("/private/") and listen_key is None:
            listen_key = tail or ""
        ws = web.WebSocketResponse(autoping=True)
        if listen_key is not None:
            api_key = self.listen_keys.account_of(listen_key)
            if api_key is None:
                return web.json_response({"code": -1125, "msg": "This listenKey does not exist."}, status=400)
            await ws.prepare(request)
            await self._serve_user(ws, api_key)
            return ws
        await ws.prepare(request)
        streams = {s for s in request.query.get("streams", "").split("/") if s}
        if "@" in tail:
            streams.add(tail)
        connection = _MarketConnection(ws, streams, combined=request.path == "/stream")
        self._market_connections.append(connection)
        self._notify()
        try:
            async for message in ws:
                if message.type is WSMsgType.TEXT:
                    await self._on_market_message(connection, message.data)
        finally:
            with contextlib.suppress(ValueError):
                self._market_connections.remove(connection)
            self._notify()
        return ws

    async def _on_market_message(self, connection: _MarketConnection, text: str) -> None:
        try:
            request = json.loads(text)
            method, request_id = request["method"], request.get("id")
            params = [str(p) for p in request.get("params", [])]
        except (ValueError, KeyError, TypeError):
            await connection.ws.send_json({"error": {"code": 3, "msg": "Invalid JSON: expected a method"}})
            return
        result: Any = None
        if method == "SUBSCRIBE":
            connection.streams.update(params)
        elif method == "UNSUBSCRIBE":
            connection.streams.difference_update(params)
        elif method == "LIST_SUBSCRIPTIONS":
            result = sorted(connection.streams)
        else:
            await connection.ws.send_json(
                {"error": {"code": 2, "msg": f"Invalid request: unknown method {method}"}, "id": request_id}
            )
            return
        await connection.ws.send_json({"result": result, "id": request_id})

    async def _serve_user(self, ws: web.WebSocketResponse, api_key: str) -> None:
        self._user_connections.setdefault(api_key, set()).add(ws)
        self._notify()
        try:
            async for _ in ws:
                pass  # the user-data stream takes no requests; pings are answered by aiohttp
        finally:
            self._user_connections.get(api_key, set()).discard(ws)
            self._notify()

    def _mark_event(self, symbol: str) -> dict[str, Any]:
        row = self._api.premium_row(symbol)
        return {
            "e": "markPriceUpdate",
            "E": row["time"],
            "s": symbol,
            "p": row["markPrice"],
            "i": row["indexPrice"],
            "P": row["estimatedSettlePrice"],
            "r": row["lastFundingRate"],
            "T": row["nextFundingTime"],
        }

    def _stream_payload(self, stream: str) -> Any:  # noqa: ANN401 - a JSON event or list of events
        name, _, kind = stream.partition("@")
        if name.startswith("!markPrice") or (name == "!markprice"):
            return [self._mark_event(s) for s in sorted(self.marks)]
        if kind.lower().startswith("markprice") and name.upper() in self.marks:
            return self._mark_event(name.upper())
        return None

    async def _push_marks(self) -> None:
        for connection in list(self._market_connections):
            for stream in sorted(connection.streams):
                payload = self._stream_payload(stream)
                if payload is None:
                    continue
                if connection.combined:
                    payload = {"stream": stream, "data": payload}
                try:
                    await connection.ws.send_json(payload)
                except ConnectionError:
                    break

    async def _push_loop(self) -> None:
        while True:
            await asyncio.sleep(self.mark_push_s)
            if "market" not in self._stalled:
                await self._push_marks()

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(self.tick_s)
            if not self._paused:
                self.step()

    async def _send_user(self, api_key: str, event: dict[str, Any]) -> int:
        if "user" in self._stalled:
            return 0
        sent = 0
        for ws in list(self._user_connections.get(api_key, ())):
            try:
                await ws.send_json(event)
                sent += 1
            except ConnectionError:
                continue
        return sent

    async def push_account_update(self, api_key: str, reason: str = "ORDER") -> int:
        """Send ``ACCOUNT_UPDATE`` (balance and every position) to the account's user streams."""
        figures = self.figures(api_key)
        now = self.server_time_ms()
        event = {
            "e": "ACCOUNT_UPDATE",
            "E": now,
            "T": now,
            "a": {
                "m": reason,
                "B": [
                    {
                        "a": "USDT",
                        "wb": money(figures.total_wallet_balance),
                        "cw": money(figures.cross_wallet),
                        "bc": "0",
                    }
                ],
                "P": [
                    {
                        "s": p.position.symbol,
                        "pa": quantity(p.position.symbol, p.position.amount),
                        "ep": f"{p.position.entry_price:.8f}",
                        "bep": f"{p.position.entry_price:.8f}",
                        "cr": "0",
                        "up": money(p.unrealized_pnl),
                        "mt": "isolated" if p.position.isolated else "cross",
                        "iw": money(p.position.isolated_wallet or 0.0),
                        "ps": p.position.side,
                        "ma": "USDT",
                    }
                    for p in figures.positions
                ],
            },
        }
        return await self._send_user(api_key, event)

    def _margin_call_event(self, figures: AccountFigures) -> dict[str, Any]:
        return {
            "e": "MARGIN_CALL",
            "E": self.server_time_ms(),
            "cw": money(figures.cross_wallet),
            "p": [
                {
                    "s": p.position.symbol,
                    "ps": p.position.side,
                    "pa": quantity(p.position.symbol, p.position.amount),
                    "mt": "CROSSED",
                    "iw": "0",
                    "mp": f"{p.mark_price:.8f}",
                    "up": money(p.unrealized_pnl),
                    "mm": money(p.maintenance_margin),
                }
                for p in figures.positions
                if not p.position.isolated
            ],
        }

    async def _send_margin_call(self, api_key: str, figures: AccountFigures) -> None:
        await self._send_user(api_key, self._margin_call_event(figures))

    def _check_margin_calls(self) -> None:
        # Only accounts with a user stream open can hear a margin call: skip the rest (1,000 accounts).
        for api_key, connections in list(self._user_connections.items()):
            if not connections:
                continue
            figures = self.figures(api_key)
            low = figures.margin_ratio is not None and figures.margin_ratio <= self.margin_call_ratio
            if low and api_key not in self._margin_called:
                self._margin_called.add(api_key)
                task = asyncio.get_running_loop().create_task(
                    self._send_margin_call(api_key, figures), name="sim-margin-call"
                )
                # Kept until done so it is not garbage-collected mid-send, and cancelled on close.
                self._sends.add(task)
                task.add_done_callback(self._sends.discard)
            elif not low:
                self._margin_called.discard(api_key)

    async def drop_websockets(self, which: str = "all") -> int:
        """Close websockets (``all``, ``market`` or ``user``) from the server side; returns how many."""
        targets: list[web.WebSocketResponse] = []
        if which in {"all", "market"}:
            targets += [c.ws for c in self._market_connections]
        if which in {"all", "user"}:
            targets += [ws for group in self._user_connections.values() for ws in group]
        for ws in targets:
            await ws.close(code=WSCloseCode.GOING_AWAY, message=b"simulated drop")
        return len(targets)

    def stall_websockets(self, which: str = "all") -> None:
        """Stop sending on websockets (``all``, ``market`` or ``user``) but keep them open.

        A stalled market stream pushes no mark prices (subscriptions are still answered); a stalled
        user stream loses its events, as a half-dead connection would. ``unstall_websockets`` ends it.
        """
        self._stalled |= {"market", "user"} if which == "all" else {which}

    def unstall_websockets(self, which: str = "all") -> None:
        """Send on the websockets ``stall_websockets`` stopped again."""
        self._stalled -= {"market", "user"} if which == "all" else {which}

    async def expire_listen_key(self, api_key: str = DEMO_API_KEY) -> None:
        """Expire the account's listen key now: ``listenKeyExpired`` on its streams, which then close."""
        key = self.listen_keys.close(api_key)
        if key is None:
            return
        await self._send_user(
            api_key, {"e": "listenKeyExpired", "E": self.server_time_ms(), "listenKey": key}
        )
        for ws in list(self._user_connections.get(api_key, ())):
            await ws.close(code=WSCloseCode.GOING_AWAY, message=b"listenKey expired")


def config_stanza(base_url: str, ws_url: str) -> str:
    """A margin-monitor config aimed at every demo account the simulator holds, one per personality."""
    from monitor.sim.bybit import BYBIT_DEMO_API_KEY, BYBIT_DEMO_SECRET  # noqa: PLC0415 - avoids a cycle
    from monitor.sim.hyperliquid import HYPERLIQUID_DEMO_ADDRESS  # noqa: PLC0415
    from monitor.sim.okx import OKX_DEMO_API_KEY, OKX_DEMO_PASSPHRASE, OKX_DEMO_SECRET  # noqa: PLC0415

    exports = {
        "SIM_API_KEY": DEMO_API_KEY,
        "SIM_SECRET": DEMO_SECRET,
        "SIM_BYBIT_KEY": BYBIT_DEMO_API_KEY,
        "SIM_BYBIT_SECRET": BYBIT_DEMO_SECRET,
        "SIM_OKX_KEY": OKX_DEMO_API_KEY,
        "SIM_OKX_SECRET": OKX_DEMO_SECRET,
        "SIM_OKX_PASSPHRASE": OKX_DEMO_PASSPHRASE,
    }
    accounts = [
        ("sim-demo", "binanceusdm", 'api_key_env = "SIM_API_KEY"\nsecret_env = "SIM_SECRET"\n', True),
        ("sim-coinm", "binancecoinm", 'api_key_env = "SIM_API_KEY"\nsecret_env = "SIM_SECRET"\n', False),
        ("sim-bybit", "bybit", 'api_key_env = "SIM_BYBIT_KEY"\nsecret_env = "SIM_BYBIT_SECRET"\n', False),
        (
            "sim-okx",
            "okx",
            (
                'api_key_env = "SIM_OKX_KEY"\nsecret_env = "SIM_OKX_SECRET"\n'
                'password_env = "SIM_OKX_PASSPHRASE"\n'
            ),
            False,
        ),
        ("sim-hyperliquid", "hyperliquid", f'wallet_address = "{HYPERLIQUID_DEMO_ADDRESS}"\n', False),
    ]
    lines = ["# export " + " ".join(f"{name}={value}" for name, value in exports.items()), ""]
    for name, exchange, keys, with_ws in accounts:
        lines.append(
            f'[[accounts]]\nname = "{name}"\nexchange = "{exchange}"\n{keys}base_url = "{base_url}"\n'
            + (f'ws_url = "{ws_url}"\n' if with_ws else "")
            + "poll_interval_s = 2\n"
        )
    return "\n".join(lines)


async def serve_forever(host: str, port: int, scenario: str, tick_s: float, bulk: int = 0) -> None:
    """Run a simulator until SIGINT/SIGTERM, printing where it listens and how to aim a config at it."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with SimServer(host=host, port=port, scenario=scenario, tick_s=tick_s, bulk=bulk) as sim:
        sys.stdout.write(
            f"margin-monitor simulated exchange (Binance USDⓈ-M) on {sim.base_url}\n"
            f"  scenario: {scenario}, tick {tick_s}s, {len(sim.accounts)} account(s)\n"
            f"  demo API key: {DEMO_API_KEY}\n  demo secret:  {DEMO_SECRET}\n\n"
            f"{config_stanza(sim.base_url, sim.ws_url)}\n"
        )
        sys.stdout.flush()
        await stop.wait()


def run_standalone(
    host: str = "127.0.0.1", port: int = 8080, scenario: str = "crash", tick_s: float = 1.0, bulk: int = 0
) -> None:
    """Blocking: serve the simulator (for ``margin-monitor sim``) until interrupted."""
    asyncio.run(serve_forever(host, port, scenario, tick_s, bulk))
