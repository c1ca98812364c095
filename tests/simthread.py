"""The simulated exchange in a thread of its own, for tests that run ``margin-monitor`` as a process.

``margin-monitor sim`` serves the demo accounts only; a test that needs its own accounts (other keys,
other permissions) or faults armed while the daemon runs starts ``SimServer`` here instead:

    with ThreadedSim(accounts=[...]) as sim:
        sim.call(lambda server: server.faults.inject("http_500", 3))
        subprocess.run([... "run", "--config", ...])
"""

from __future__ import annotations

import asyncio
import threading
from typing import TYPE_CHECKING, Any, Self, TypeVar

from monitor.sim import SimServer

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine
    from types import TracebackType

T = TypeVar("T")

START_TIMEOUT_S = 10.0


class ThreadedSim:
    """A ``SimServer`` on its own event loop in a daemon thread; ``call`` runs code on that loop."""

    def __init__(self, **options: Any) -> None:  # noqa: ANN401 - SimServer's keyword arguments
        self._options = options
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="sim", daemon=True)
        self.server: SimServer | None = None

    @property
    def base_url(self) -> str:
        """The simulator's ``http://127.0.0.1:PORT``."""
        assert self.server is not None
        return self.server.base_url

    @property
    def ws_url(self) -> str:
        """The simulator's ``ws://127.0.0.1:PORT``."""
        assert self.server is not None
        return self.server.ws_url

    def run(self, work: Coroutine[Any, Any, T], timeout_s: float = START_TIMEOUT_S) -> T:
        """Await ``work`` on the simulator's loop (fakes and clients that share the thread); its result."""
        return asyncio.run_coroutine_threadsafe(work, self._loop).result(timeout_s)

    def call(self, work: Callable[[SimServer], T]) -> T:
        """``work(server)`` on the simulator's loop (its state is not thread-safe); its result."""

        async def run() -> T:
            assert self.server is not None
            return work(self.server)

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(START_TIMEOUT_S)

    def __enter__(self) -> Self:
        self._thread.start()

        async def start() -> SimServer:
            server = SimServer(**self._options)
            await server.start()
            return server

        self.server = asyncio.run_coroutine_threadsafe(start(), self._loop).result(START_TIMEOUT_S)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if self.server is not None:
            asyncio.run_coroutine_threadsafe(self.server.close(), self._loop).result(START_TIMEOUT_S)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(START_TIMEOUT_S)
        self._loop.close()
