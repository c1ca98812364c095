"""systemd's notify protocol, in a few lines of our own: readiness, status, watchdog, reload, stop.

A unit of ``Type=notify`` hands the service ``$NOTIFY_SOCKET``: a datagram socket, named by a path
or, when the name starts with ``@``, in Linux's abstract namespace. Each message is a datagram of
``KEY=value`` lines (sd_notify(3)). Outside systemd the variable is unset and every call is a no-op.
A failure to send is logged once and never raised: supervision must not take the monitor down.

The watchdog (``WatchdogSec=`` sets ``$WATCHDOG_USEC``) is fed from the daemon's progress, not from
a timer of its own: ``Supervisor`` pings every half period only if the daemon's scheduler has run its
staleness job since the last ping (``Daemon.beats``). A blocked event loop sends nothing, because the
supervisor runs on that loop; a scheduler that stopped firing jobs stops the pings too, and systemd
restarts the service.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from typing import TYPE_CHECKING

import structlog

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Mapping

    from monitor.service.daemon import Daemon

log = structlog.get_logger("margin_monitor.sdnotify")

#: ``STATUS=`` changes at most this often (systemctl status shows it; nobody reads it faster).
STATUS_EVERY_S = 5.0


class Notifier:
    """Sends sd_notify datagrams to ``$NOTIFY_SOCKET``; does nothing when it is unset.

    ``WATCHDOG_USEC`` gives the watchdog period; ``WATCHDOG_PID``, when set, names the process it is
    meant for (another one, such as a child that inherited the environment, must not ping).
    """

    def __init__(self, environ: Mapping[str, str] = os.environ) -> None:
        name = environ.get("NOTIFY_SOCKET", "")
        self.address: str | None = None
        if name.startswith("@"):
            self.address = "\0" + name[1:]
        elif name.startswith("/"):
            self.address = name
        elif name:
            # systemd 253 added vsock:CID:PORT for virtual machines; we speak only AF_UNIX.
            log.warning("sdnotify.unsupported_socket", notify_socket=name)
        self.watchdog_usec = _watchdog_usec(environ)
        self._socket: socket.socket | None = None
        self._failed = False

    @property
    def enabled(self) -> bool:
        """Whether a supervisor listens (``$NOTIFY_SOCKET`` names a socket we can use)."""
        return self.address is not None

    @property
    def watchdog_interval_s(self) -> float | None:
        """How often to ping: half of ``WATCHDOG_USEC`` (sd_watchdog_enabled(3)), or None if off."""
        if not self.enabled or self.watchdog_usec is None:
            return None
        return self.watchdog_usec / 2 / 1_000_000

    def send(self, *lines: str) -> bool:
        """Send one datagram of ``lines``; whether it went out. Never raises; logs the first failure."""
        if self.address is None:
            return False
        try:
            if self._socket is None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                # A full receive queue must not block the event loop: the message is dropped instead.
                sock.setblocking(False)  # noqa: FBT003 - the socket API's own positional flag
                self._socket = sock
            self._socket.sendto("\n".join(lines).encode(), self.address)
        except OSError as exc:
            if not self._failed:
                self._failed = True
                shown = "@" + self.address[1:] if self.address.startswith("\0") else self.address
                log.warning("sdnotify.send_failed", notify_socket=shown, error=str(exc))
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """``READY=1``: start-up (or a reload) is complete."""
        return self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def reloading(self) -> bool:
        """``RELOADING=1`` with the monotonic time systemd 253+ wants for ``Type=notify-reload``."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send("RELOADING=1", f"MONOTONIC_USEC={usec}", "STATUS=reloading the configuration")

    def stopping(self) -> bool:
        """``STOPPING=1``: shutting down."""
        return self.send("STOPPING=1", "STATUS=stopping")

    def status(self, text: str) -> bool:
        """``STATUS=``: one line for ``systemctl status``."""
        return self.send(f"STATUS={text}")

    def watchdog(self) -> bool:
        """``WATCHDOG=1``: the service is alive and making progress."""
        return self.send("WATCHDOG=1")

    def close(self) -> None:
        """Close the socket (a later send opens it again)."""
        sock, self._socket = self._socket, None
        if sock is not None:
            sock.close()


def _watchdog_usec(environ: Mapping[str, str]) -> int | None:
    text = environ.get("WATCHDOG_USEC", "")
    pid = environ.get("WATCHDOG_PID", "")
    if not text:
        return None
    if pid and pid != str(os.getpid()):
        return None
    try:
        usec = int(text)
    except ValueError:
        log.warning("sdnotify.bad_watchdog_usec", watchdog_usec=text)
        return None
    return usec if usec > 0 else None


def status_line(daemon: Daemon) -> str:
    """``3 accounts, worst 182% (main)``: the account count and the lowest margin ratio, and blind ones."""
    count = len(daemon.accounts)
    parts = [f"{count} account" + ("" if count == 1 else "s")]
    ratios = [
        (state.assessment.margin_ratio, name)
        for name, state in daemon.accounts.items()
        if state.assessment is not None and state.assessment.margin_ratio is not None
    ]
    if ratios:
        ratio, name = min(ratios)
        parts.append(f"worst {ratio * 100:.0f}% ({name})")
    elif count:
        parts.append("none assessed yet")
    blind = sum(1 for state in daemon.accounts.values() if state.blind)
    if blind:
        parts.append(f"{blind} blind")
    return ", ".join(parts)


class Supervisor:
    """Feeds systemd's watchdog from the daemon's progress and keeps ``STATUS=`` current.

    ``current`` returns the daemon running now (a reload replaces it). While it has not yet started
    its scheduler (start-up, a reload's first polls), the loop running this task is the only progress
    there is to check; systemd's watchdog is armed only after ``READY=1`` anyway.
    """

    def __init__(
        self,
        notifier: Notifier,
        current: Callable[[], Daemon | None],
        *,
        status_every_s: float = STATUS_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.notifier = notifier
        self._current = current
        self.status_every_s = status_every_s
        self._clock = clock
        self._seen: tuple[int, int] | None = None
        self._stalled = False
        self._status: str | None = None
        self._status_at = -float("inf")
        self.pings = 0

    @property
    def tick_s(self) -> float:
        """How often ``run`` wakes: the watchdog's half period, and at most the status period."""
        interval = self.notifier.watchdog_interval_s
        return self.status_every_s if interval is None else min(interval, self.status_every_s)

    async def run(self) -> None:
        """Ping and update the status until cancelled. Never raises otherwise."""
        if not self.notifier.enabled:
            return
        while True:
            await asyncio.sleep(self.tick_s)
            try:
                self.tick()
            except Exception:
                log.exception("sdnotify.tick_failed")

    def tick(self) -> None:
        """One round: a watchdog ping if the daemon progressed, and the status if due and changed."""
        daemon = self._current()
        if self.notifier.watchdog_interval_s is not None:
            self._watchdog(daemon)
        now = self._clock()
        if daemon is not None and now - self._status_at >= self.status_every_s:
            self.update_status(daemon)

    def ready(self, daemon: Daemon | None) -> None:
        """``READY=1`` with the current status (start-up done, or a reload done or refused)."""
        text = None if daemon is None else status_line(daemon)
        self.notifier.ready(text)
        self._status, self._status_at = text, self._clock()

    def update_status(self, daemon: Daemon) -> None:
        """Send ``STATUS=`` now if it changed."""
        self._status_at = self._clock()
        text = status_line(daemon)
        if text != self._status:
            self._status = text
            self.notifier.status(text)

    def _watchdog(self, daemon: Daemon | None) -> None:
        if daemon is None or not daemon.scheduling:
            progressed = True
        else:
            mark = (id(daemon), daemon.beats)
            progressed = mark != self._seen
            self._seen = mark
        if progressed:
            if self._stalled:
                self._stalled = False
                log.info("watchdog.progress_resumed")
            self.notifier.watchdog()
            self.pings += 1
        elif not self._stalled:
            self._stalled = True
            log.warning(
                "watchdog.no_progress",
                hint="the scheduler ran no job since the last ping; systemd will restart the service",
            )


@contextlib.asynccontextmanager
async def supervised(supervisor: Supervisor) -> AsyncIterator[None]:
    """Run ``supervisor`` for the duration of the block."""
    task = asyncio.create_task(supervisor.run(), name="sdnotify")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
