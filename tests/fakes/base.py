"""What the fakes share: a real aiohttp server on 127.0.0.1:0, a record of every request, scripted faults.

A test scripts the next answers with ``fail_next`` (an HTTP status, with ``retry_after`` where the
real peer sends one) or ``hang_next`` (no answer until the client gives up); each fake renders the
fault's body the way its real peer does. Faults are consumed in order, one per matching request.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Self

from aiohttp import web

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import TracebackType

    from aiohttp.typedefs import Handler


@dataclass(frozen=True, slots=True)
class Received:
    """One request as the fake saw it; ``at`` is ``time.monotonic()`` when it arrived."""

    method: str
    path: str
    route: str
    headers: dict[str, str]
    body: bytes
    at: float

    def json(self) -> Any:  # noqa: ANN401 - whatever the client sent
        """The body as JSON."""
        return json.loads(self.body)


@dataclass(frozen=True, slots=True)
class Fault:
    """A scripted answer: an HTTP ``status``, or no answer at all when ``hang`` is set.

    ``retry_after`` goes where the real peer puts it (Telegram: the body; others: ``Retry-After``),
    as an HTTP date when ``retry_after_http_date``. ``route`` limits the fault to one route.
    """

    status: int = 500
    retry_after: int | None = None
    retry_after_http_date: bool = False
    hang: bool = False
    route: str | None = None
    description: str | None = None


@dataclass
class FakeServer:
    """Base of the fakes: subclasses add routes and render faults as their real peer does."""

    host: str = "127.0.0.1"
    received: list[Received] = field(default_factory=list)
    url: str = ""
    _faults: list[Fault] = field(default_factory=list)
    _runner: web.AppRunner | None = None
    _closing: asyncio.Event = field(default_factory=asyncio.Event)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    # --- lifecycle ----------------------------------------------------------------------------------

    async def start(self) -> Self:
        """Bind a free port; ``url`` is ``http://127.0.0.1:PORT``."""
        app = web.Application(middlewares=[self._middleware])
        self.add_routes(app)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0)
        await site.start()
        server = site._server  # noqa: SLF001 - aiohttp exposes the bound port only here
        assert isinstance(server, asyncio.Server)
        port = int(server.sockets[0].getsockname()[1])
        self.url = f"http://{self.host}:{port}"
        return self

    async def close(self) -> None:
        """Release hanging requests, unbind."""
        self._closing.set()
        self.changed()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # --- scripting ----------------------------------------------------------------------------------

    def fail_next(
        self,
        status: int,
        *,
        retry_after: int | None = None,
        retry_after_http_date: bool = False,
        route: str | None = None,
        description: str | None = None,
        times: int = 1,
    ) -> None:
        """Answer the next ``times`` requests (to ``route``, if given) with ``status``."""
        fault = Fault(status, retry_after, retry_after_http_date, route=route, description=description)
        self._faults.extend([fault] * times)

    def hang_next(self, *, route: str | None = None, times: int = 1) -> None:
        """Do not answer the next ``times`` requests until the server closes (a timeout, client side)."""
        self._faults.extend([Fault(hang=True, route=route)] * times)

    def changed(self) -> None:
        """Wake every ``wait_until`` (and long poll): something was received or queued."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_until(self, predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
        """Return once ``predicate()`` holds (checked after each change), or raise ``TimeoutError``."""
        async with asyncio.timeout(timeout_s):
            while not predicate():
                await self._changed.wait()

    def requests(self, route: str | None = None) -> list[Received]:
        """What was received (to ``route``, if given), oldest first."""
        return [item for item in self.received if route is None or item.route == route]

    # --- for subclasses -----------------------------------------------------------------------------

    def add_routes(self, app: web.Application) -> None:
        """Add the peer's routes."""
        raise NotImplementedError

    def route_of(self, request: web.Request) -> str:
        """The name faults and ``requests`` match on (default: the path)."""
        return request.path

    def fault_response(self, fault: Fault) -> web.StreamResponse:
        """``fault`` as the real peer answers it."""
        raise NotImplementedError

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        body = await request.read()
        route = self.route_of(request)
        self.received.append(
            Received(request.method, request.path, route, dict(request.headers), body, time.monotonic())
        )
        self.changed()
        fault = self._take_fault(route)
        if fault is None:
            return await handler(request)
        if fault.hang:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), 30.0)
            return web.Response(status=504, text="gateway timeout")
        return self.fault_response(fault)

    def _take_fault(self, route: str) -> Fault | None:
        for index, fault in enumerate(self._faults):
            if fault.route is None or fault.route == route:
                return self._faults.pop(index)
        return None


def retry_after_header(fault: Fault) -> dict[str, str]:
    """The ``Retry-After`` header for ``fault``: seconds, or an HTTP date that many seconds ahead."""
    if fault.retry_after is None:
        return {}
    if fault.retry_after_http_date:
        from email.utils import formatdate  # noqa: PLC0415 - only this path needs it

        return {"Retry-After": formatdate(time.time() + fault.retry_after, usegmt=True)}
    return {"Retry-After": str(fault.retry_after)}
