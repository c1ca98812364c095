"""The event loop's exception handler: a closed-socket race is one line, the rest as asyncio logs it."""

from __future__ import annotations

import asyncio
import logging
import socket

import pytest
from monitor.service.app import quiet_closed_socket_races
from structlog.testing import capture_logs


@pytest.mark.asyncio
async def test_a_socket_closed_before_the_loop_watches_it_is_one_info_line() -> None:
    """What aiomqtt does at a broker stop: ``add_writer`` scheduled for a socket closed meanwhile."""
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(quiet_closed_socket_races)
    closed, other = socket.socketpair()
    try:
        fd = closed.fileno()
        closed.close()
        with capture_logs() as logs:
            loop.call_soon(loop.add_writer, fd, lambda: None)
            await asyncio.sleep(0.01)
        assert [entry["event"] for entry in logs] == ["loop.closed_socket"]
        assert logs[0]["log_level"] == "info"
    finally:
        loop.set_exception_handler(None)
        other.close()


@pytest.mark.asyncio
async def test_any_other_error_still_reaches_asyncios_own_handler(caplog: pytest.LogCaptureFixture) -> None:
    """Only that race is quietened: a failing callback is logged by asyncio, with its traceback."""
    loop = asyncio.get_running_loop()

    def broken() -> None:
        raise ValueError("a bug in a callback")

    loop.set_exception_handler(quiet_closed_socket_races)
    try:
        with caplog.at_level(logging.ERROR, logger="asyncio"):
            loop.call_soon(broken)
            await asyncio.sleep(0.01)
    finally:
        loop.set_exception_handler(None)
    assert any(
        "a bug in a callback" in (record.exc_text or str(record.exc_info)) for record in caplog.records
    )
