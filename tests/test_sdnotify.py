"""systemd supervision for real: a notify socket bound here, and the daemon reporting to it.

The daemon runs in-process or as a process, against the simulator; SIGHUP reloads it, and its
watchdog pings stop when its progress does. The socket is read by a thread, so what the daemon
sent is recorded with its arrival time even while a test blocks the daemon's event loop on purpose.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest
from monitor.notify.outbox import Outbox
from monitor.service.app import Runtime, load_with_credentials, run_daemon
from monitor.service.sdnotify import Notifier, Supervisor, status_line
from monitor.sharding import Shard
from monitor.sim import DEMO_API_KEY, DEMO_SECRET, SimServer
from structlog.testing import capture_logs

from fakes import FakeWebhook

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from monitor.service.daemon import Daemon

ENV = {"SIM_KEY": DEMO_API_KEY, "SIM_SECRET": DEMO_SECRET}
STATUS = re.compile(r"^(\d+) accounts?, worst \d+% \((\w+)\)")

Message = dict[str, str]


class NotifySocket:
    """An ``AF_UNIX`` datagram socket standing in for systemd: records every message with its time."""

    def __init__(self, *, abstract: bool) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        if abstract:
            name = f"margin-monitor-test-{uuid.uuid4().hex}"
            self.sock.bind("\0" + name)
            self.address = "@" + name
        else:
            # A short path: sun_path holds 108 bytes, and pytest's tmp_path can be longer.
            self._dir = tempfile.TemporaryDirectory(prefix="mm-")
            self.address = str(Path(self._dir.name) / "notify")
            self.sock.bind(self.address)
        self.sock.settimeout(0.05)
        self.messages: list[tuple[float, Message]] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._receive, name="notify-socket", daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._closed.is_set():
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            with self._lock:
                self.messages.append((time.monotonic(), fields))

    def close(self) -> None:
        """Stop the reader and remove the socket."""
        self._closed.set()
        self._thread.join(2)
        self.sock.close()
        if self._dir is not None:
            self._dir.cleanup()

    def snapshot(self) -> list[tuple[float, Message]]:
        """Every message so far, with its arrival time."""
        with self._lock:
            return list(self.messages)

    def with_key(self, key: str, since: int = 0) -> list[tuple[float, Message]]:
        """The messages carrying ``key``, from index ``since`` on."""
        return [(at, fields) for at, fields in self.snapshot()[since:] if key in fields]

    async def wait_for(
        self, predicate: Callable[[Message], bool], *, since: int = 0, timeout_s: float = 30.0
    ) -> tuple[int, Message]:
        """The first message from index ``since`` on that matches; its index and fields."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for index, (_, fields) in enumerate(self.snapshot()[since:], start=since):
                if predicate(fields):
                    return index, fields
            await asyncio.sleep(0.02)
        pytest.fail(f"no matching notify message within {timeout_s} s; got {self.snapshot()[since:]}")

    async def pings_after(self, count: int, since: int) -> None:
        """Wait until ``count`` WATCHDOG=1 arrived from index ``since`` on."""
        await eventually(lambda: len(self.with_key("WATCHDOG", since)) >= count)


async def eventually(predicate: Callable[[], bool], timeout_s: float = 15.0) -> None:
    """Wait until ``predicate()`` holds (``TimeoutError`` after ``timeout_s``)."""
    async with asyncio.timeout(timeout_s):
        while not predicate():  # noqa: ASYNC110 - files, sockets and fakes offer state, not events
            await asyncio.sleep(0.02)


@pytest.fixture(params=[True, False], ids=["abstract", "path"])
def notify_socket(request: pytest.FixtureRequest) -> Iterator[NotifySocket]:
    """A listening notify socket, in the abstract namespace or on a path."""
    listener = NotifySocket(abstract=request.param)
    try:
        yield listener
    finally:
        listener.close()


# --- the protocol -------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_notifier_speaks_the_protocol_to_a_real_socket(notify_socket: NotifySocket) -> None:
    """Each call is one datagram of KEY=value lines; RELOADING carries the monotonic clock."""
    notifier = Notifier({"NOTIFY_SOCKET": notify_socket.address, "WATCHDOG_USEC": "3000000"})
    assert notifier.enabled
    assert notifier.watchdog_interval_s == pytest.approx(1.5)
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert notifier.ready("1 account, worst 182% (main)")
    assert notifier.reloading()
    assert notifier.watchdog()
    assert notifier.stopping()
    notifier.close()
    await notify_socket.wait_for(lambda fields: "STOPPING" in fields)
    messages = [fields for _, fields in notify_socket.snapshot()]
    assert messages[0] == {"READY": "1", "STATUS": "1 account, worst 182% (main)"}
    assert messages[1]["RELOADING"] == "1"
    assert before <= int(messages[1]["MONOTONIC_USEC"]) <= time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert messages[2:] == [{"WATCHDOG": "1"}, {"STOPPING": "1", "STATUS": "stopping"}]


def test_notifier_is_a_no_op_outside_systemd() -> None:
    """No NOTIFY_SOCKET: nothing is sent, no watchdog, nothing raised."""
    notifier = Notifier({"WATCHDOG_USEC": "1000000"})
    assert not notifier.enabled
    assert notifier.watchdog_interval_s is None
    assert not notifier.ready()
    assert not notifier.watchdog()


def test_a_dead_socket_is_logged_once_and_never_raises(tmp_path: Path) -> None:
    """A socket nobody listens on: sends fail quietly after one warning."""
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody")})
    with capture_logs() as logs:
        assert not notifier.ready()
        assert not notifier.watchdog()
        assert not notifier.stopping()
    notifier.close()
    failures = [line for line in logs if line["event"] == "sdnotify.send_failed"]
    assert len(failures) == 1
    assert failures[0]["notify_socket"] == str(tmp_path / "nobody")
    assert failures[0]["log_level"] == "warning"


@pytest.mark.parametrize(
    ("environ", "interval"),
    [
        ({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}, 1.0),
        ({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"}, None),  # meant for another process
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({}, None),
    ],
)
def test_the_watchdog_period_follows_the_environment(environ: dict[str, str], interval: float | None) -> None:
    """Half of WATCHDOG_USEC, only for the process WATCHDOG_PID names, only when it is a number."""
    notifier = Notifier({"NOTIFY_SOCKET": "@anything", **environ})
    assert notifier.watchdog_interval_s == interval


def test_an_unsupported_socket_kind_is_named_and_ignored() -> None:
    """A vsock address (systemd 253, virtual machines) is not ours to speak: one warning, then a no-op."""
    with capture_logs() as logs:
        notifier = Notifier({"NOTIFY_SOCKET": "vsock:2:1234"})
    assert not notifier.enabled
    assert [line["event"] for line in logs] == ["sdnotify.unsupported_socket"]


# --- in-process: readiness, status, a stalled loop, a stalled scheduler --------------------------------


def write_config(
    path: Path, base_url: str, *, accounts: tuple[str, ...] = ("demo",), extra: str = ""
) -> Path:
    """A configuration of ``accounts`` on the simulator (all read with the demo key)."""
    tables = "".join(
        f'[[accounts]]\nname = "{name}"\nexchange = "binanceusdm"\napi_key_env = "SIM_KEY"\n'
        f'secret_env = "SIM_SECRET"\nbase_url = "{base_url}"\npoll_interval_s = 0.5\nmode = "poll"\n\n'
        for name in accounts
    )
    path.write_text(
        f'[daemon]\nstate_dir = "{path.parent / "state"}"\nlog_format = "json"\n'
        f'http_listen = "127.0.0.1:0"  # any free port: tests run side by side\n\n{tables}{extra}',
        encoding="utf-8",
    )
    return path


@contextlib.asynccontextmanager
async def daemon_in_process(
    config_path: Path,
    notifier: Notifier,
    monkeypatch: pytest.MonkeyPatch,
    watchers: tuple[Callable[[Runtime], None], ...] = (),
    shard: Shard | None = None,
) -> Any:  # noqa: ANN401 - yields (runtime, stop)
    """``run_daemon`` on ``config_path`` (as ``shard``) in this process; stopped (and awaited) on exit."""
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    config, credentials = load_with_credentials(config_path, shard)
    runtime = Runtime(config)
    runtime.on_switch.extend(watchers)
    stop = asyncio.Event()
    task = asyncio.create_task(run_daemon(config, credentials, stop, runtime=runtime, notifier=notifier))
    try:
        yield runtime, stop
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)


def scheduler_of(daemon: Daemon) -> Any:  # noqa: ANN401 - APScheduler is untyped
    """The daemon's running APScheduler (to stall it on purpose)."""
    scheduler = daemon._scheduler  # noqa: SLF001 - the test stalls the scheduler the watchdog watches
    assert scheduler is not None
    return scheduler


@pytest.mark.asyncio
async def test_watchdog_pings_follow_progress_and_stop_when_it_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """READY after the first poll, STATUS, pings every half period; none while loop or scheduler stall."""
    listener = NotifySocket(abstract=True)
    notifier = Notifier({"NOTIFY_SOCKET": listener.address, "WATCHDOG_USEC": "200000"})  # ping every 0.1 s
    try:
        async with SimServer(scenario="flat") as sim:
            config = write_config(tmp_path / "margin-monitor.toml", sim.base_url)
            async with daemon_in_process(config, notifier, monkeypatch) as (runtime, _):
                _, ready = await listener.wait_for(lambda fields: "READY" in fields)
                status = STATUS.match(ready["STATUS"])
                assert status is not None, ready
                assert status.groups() == ("1", "demo")
                daemon = runtime.daemon
                assert daemon is not None
                assert ready["STATUS"] == status_line(daemon)
                assert daemon.accounts["demo"].polls >= 1  # the first assessment came before READY
                await listener.pings_after(3, since=0)

                # A blocked event loop: no ping at all until it runs again.
                stalled_at = time.monotonic()
                time.sleep(0.8)  # noqa: ASYNC251 - blocking the loop is the point
                resumed_at = time.monotonic()
                mark = len(listener.snapshot())
                await listener.pings_after(1, since=mark)
                during = [
                    at for at, _ in listener.with_key("WATCHDOG") if stalled_at + 0.05 < at < resumed_at
                ]
                assert during == []

                # A loop that runs but a scheduler that stopped firing jobs: the pings stop too.
                with capture_logs() as logs:
                    scheduler_of(daemon).pause()
                    paused_at = time.monotonic()
                    await asyncio.sleep(0.8)
                    scheduler_of(daemon).resume()
                    resumed_at = time.monotonic()
                    mark = len(listener.snapshot())
                    await listener.pings_after(1, since=mark)
                pings = [at for at, _ in listener.with_key("WATCHDOG") if paused_at + 0.25 < at < resumed_at]
                assert pings == []
                events = [line["event"] for line in logs]
                assert events.count("watchdog.no_progress") == 1
                assert "watchdog.progress_resumed" in events
            _, stopping = await listener.wait_for(lambda fields: "STOPPING" in fields)
            assert stopping["STOPPING"] == "1"
    finally:
        listener.close()


def test_status_names_the_worst_account_and_the_blind() -> None:
    """The status line counts accounts, names the lowest ratio, and counts blind ones."""

    class State:
        def __init__(self, ratio: float | None, *, blind: bool = False) -> None:
            self.assessment = None if ratio is None else type("A", (), {"margin_ratio": ratio})()
            self.blind = blind

    daemon: Any = type("D", (), {})()
    daemon.accounts = {"main": State(1.824), "alt": State(3.1), "new": State(None, blind=True)}
    assert status_line(daemon) == "3 accounts, worst 182% (main), 1 blind"
    daemon.accounts = {"main": State(None)}
    assert status_line(daemon) == "1 account, none assessed yet"
    daemon.accounts = {}
    assert status_line(daemon) == "0 accounts"


def test_the_supervisor_survives_a_failing_round() -> None:
    """A tick that raises is logged; the task goes on (a crashed loop is a bug)."""

    def broken() -> Daemon | None:
        raise RuntimeError("boom")

    notifier = Notifier({"NOTIFY_SOCKET": "@nobody-listens", "WATCHDOG_USEC": "20000"})
    supervisor = Supervisor(notifier, broken)

    async def run_briefly() -> None:
        task = asyncio.create_task(supervisor.run())
        await asyncio.sleep(0.05)
        assert not task.done()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    with capture_logs() as logs:
        asyncio.run(run_briefly())
    notifier.close()
    assert "sdnotify.tick_failed" in [line["event"] for line in logs]


# --- in-process: a reload keeps alert state and the outbox ---------------------------------------------


def free_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def webhook(url: str) -> str:
    """A webhook channel named ``hook``."""
    return f'[[channels]]\ntype = "webhook"\nname = "hook"\nurl = "{url}"\n'


@pytest.mark.asyncio
async def test_sighup_reload_keeps_alert_state_and_pending_deliveries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGHUP keeps alert state and the outbox: nothing is lost, nothing sent twice.

    The demo account at warning alerts once with its webhook down; SIGHUP brings a second account
    and the webhook back: the pending alert is delivered once, no new one for demo, one for the newcomer.
    """
    listener = NotifySocket(abstract=True)
    notifier = Notifier({"NOTIFY_SOCKET": listener.address})
    try:
        async with SimServer(scenario="crash", autostart=False) as sim, FakeWebhook() as hook:
            while (sim.figures().margin_ratio or 10) > 1.45:  # into the warning band (150% .. 130%)
                sim.step()
            path = tmp_path / "margin-monitor.toml"
            write_config(path, sim.base_url, extra=webhook(f"http://127.0.0.1:{free_port()}/down"))
            async with daemon_in_process(path, notifier, monkeypatch) as (runtime, _):
                await listener.wait_for(lambda fields: "READY" in fields)
                state_dir = runtime.config.daemon.state_dir
                await eventually((state_dir / "alerts-state.json").exists)
                first = runtime.daemon
                write_config(path, sim.base_url, accounts=("demo", "second"), extra=webhook(f"{hook.url}/up"))
                mark = len(listener.snapshot())
                with capture_logs() as logs:
                    os.kill(os.getpid(), signal.SIGHUP)
                    _, reloading = await listener.wait_for(lambda fields: "RELOADING" in fields, since=mark)
                    _, ready = await listener.wait_for(lambda fields: "READY" in fields, since=mark)
                    await eventually(lambda: len(hook.documents) >= 2)
                assert int(reloading["MONOTONIC_USEC"]) > 0
                assert STATUS.match(ready["STATUS"]) is not None
                assert ready["STATUS"].startswith("2 accounts")
                assert runtime.daemon is not first
                assert runtime.reloads == 1
                assert "config.reloaded" in [line["event"] for line in logs]
                assert [line for line in logs if line["event"] == "alerts.resuming"]  # the pending one
            accounts = sorted(alert["labels"]["account"] for alert in _alerts(hook.documents))
            assert accounts == ["demo", "second"]
            outbox = Outbox(state_dir / "outbox.sqlite3")
            try:
                history = outbox.history(0)
            finally:
                outbox.close()
            assert sorted(record.alert.account for record in history) == ["demo", "second"]
            assert outbox_pending(state_dir) == 0
    finally:
        listener.close()


@pytest.mark.asyncio
async def test_a_bad_file_is_refused_and_watchers_follow_the_running_daemon(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refused reload keeps the daemon and says READY again; ``on_switch`` sees every new daemon.

    This is how a reader from outside (metrics, a status page) keeps up with reloads; one that
    raises is logged and does not stop the others or the reload.
    """
    listener = NotifySocket(abstract=True)
    notifier = Notifier({"NOTIFY_SOCKET": listener.address})
    seen: list[Daemon | None] = []

    def broken(_runtime: Runtime) -> None:
        raise RuntimeError("a watcher's bug")

    try:
        async with SimServer(scenario="flat") as sim:
            path = write_config(tmp_path / "margin-monitor.toml", sim.base_url)
            watchers = (broken, lambda runtime: seen.append(runtime.daemon))
            with capture_logs() as logs:
                async with daemon_in_process(path, notifier, monkeypatch, watchers) as (runtime, _):
                    await listener.wait_for(lambda fields: "READY" in fields)
                    assert seen == [runtime.daemon]
                    good = path.read_text(encoding="utf-8")
                    path.write_text(good.replace('exchange = "binanceusdm"', 'exchange = "binanceusdmm"'))
                    mark = len(listener.snapshot())
                    os.kill(os.getpid(), signal.SIGHUP)
                    index, _ = await listener.wait_for(lambda fields: "RELOADING" in fields, since=mark)
                    _, ready = await listener.wait_for(lambda fields: "READY" in fields, since=index)
                    assert ready["STATUS"].startswith("1 account, worst ")
                    assert seen == [runtime.daemon]  # the same daemon runs on
                    assert runtime.http is not None
                    server = runtime.http
                    assert [item["account"] for item in (await api_status(server.url))["accounts"]] == [
                        "demo"
                    ]
                    write_config(path, sim.base_url, accounts=("demo", "second"))
                    mark = len(listener.snapshot())
                    os.kill(os.getpid(), signal.SIGHUP)
                    await listener.wait_for(lambda fields: "READY" in fields, since=mark + 1)
                    assert len(seen) == 2
                    assert seen[1] is runtime.daemon
                    # The HTTP server kept running, and now shows the new daemon.
                    assert runtime.http is server
                    document = await api_status(server.url)
                    assert [item["account"] for item in document["accounts"]] == ["demo", "second"]
    finally:
        listener.close()
    (refused,) = [line for line in logs if line["event"] == "config.reload_refused"]
    assert "accounts[0].exchange" in refused["error"]
    assert str(path) in refused["error"]
    assert refused["log_level"] == "error"
    assert [line["event"] for line in logs].count("runtime.switch_callback_failed") == 2


@pytest.mark.asyncio
async def test_a_shard_reloads_as_the_same_shard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A reload keeps the process's shard: the new file's accounts of that shard, the same state dir."""
    listener = NotifySocket(abstract=True)
    notifier = Notifier({"NOTIFY_SOCKET": listener.address})
    shard = Shard(1, 2)
    before = [f"acct{i}" for i in range(6)]
    after = [f"acct{i}" for i in range(12)]
    try:
        async with SimServer(scenario="flat") as sim:
            path = write_config(tmp_path / "margin-monitor.toml", sim.base_url, accounts=tuple(before))
            async with daemon_in_process(path, notifier, monkeypatch, shard=shard) as (runtime, _):
                await listener.wait_for(lambda fields: "READY" in fields)
                assert runtime.daemon is not None
                assert list(runtime.daemon.accounts) == shard.select(before)
                state_dir = runtime.config.daemon.state_dir
                assert state_dir.name == shard.label
                write_config(path, sim.base_url, accounts=tuple(after))
                mark = len(listener.snapshot())
                os.kill(os.getpid(), signal.SIGHUP)
                await listener.wait_for(lambda fields: "READY" in fields, since=mark + 1)
                assert list(runtime.daemon.accounts) == shard.select(after)
                assert runtime.config.daemon.state_dir == state_dir
                assert runtime.config.shard == "1/2"
    finally:
        listener.close()


async def api_status(url: str) -> dict[str, Any]:
    """``GET /api/status`` of the daemon's HTTP server."""
    async with aiohttp.ClientSession() as session, session.get(f"{url}api/status") as response:
        assert response.status == 200
        document: dict[str, Any] = await response.json()
    return document


def _alerts(documents: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The Alertmanager-style alerts inside webhook documents."""
    return [alert for document in documents for alert in document["alerts"]]


def outbox_pending(state_dir: Path) -> int:
    """Deliveries not yet done in the outbox on disk."""
    outbox = Outbox(state_dir / "outbox.sqlite3")
    try:
        return outbox.pending_count()
    finally:
        outbox.close()


# --- the real process under a notify socket -----------------------------------------------------------


@pytest.mark.asyncio
async def test_run_under_a_notify_socket_with_reloads(tmp_path: Path, notify_socket: NotifySocket) -> None:
    """``margin-monitor run`` as systemd runs it, with a good and a bad reload.

    READY, STATUS, WATCHDOG, SIGHUP reloads (a good file, then a bad one refused), STOPPING on
    SIGTERM; its stdout is the journal, so every line carries its priority.
    """
    async with SimServer(scenario="flat") as sim:
        path = write_config(tmp_path / "margin-monitor.toml", sim.base_url)
        log_path = tmp_path / "journal.log"
        with log_path.open("wb") as journal:
            info = os.fstat(journal.fileno())
            env = {
                **os.environ,
                **ENV,
                "NOTIFY_SOCKET": notify_socket.address,
                "WATCHDOG_USEC": "1000000",
                "JOURNAL_STREAM": f"{info.st_dev}:{info.st_ino}",
            }
            env.pop("MARGIN_MONITOR_LOG_PRIORITY", None)
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "monitor", "run", "--config", str(path), stdout=journal, env=env
            )
        try:
            _, ready = await notify_socket.wait_for(lambda fields: "READY" in fields)
            assert ready["STATUS"].startswith("1 account, worst ")
            await notify_socket.pings_after(2, since=0)

            # A good file: one more account and other thresholds.
            write_config(
                path,
                sim.base_url,
                accounts=("demo", "second"),
                extra="[alerts]\nthresholds_pct = [160, 140, 120]\n",
            )
            mark = len(notify_socket.snapshot())
            process.send_signal(signal.SIGHUP)
            index, _ = await notify_socket.wait_for(lambda fields: "RELOADING" in fields, since=mark)
            _, ready = await notify_socket.wait_for(lambda fields: "READY" in fields, since=index)
            assert ready["STATUS"].startswith("2 accounts, worst ")

            # A bad file: refused in one line naming the key and the file; the old one runs on.
            path.write_text(
                path.read_text(encoding="utf-8").replace("poll_interval_s", "poll_intervall_s", 1)
            )
            mark = len(notify_socket.snapshot())
            process.send_signal(signal.SIGHUP)
            index, _ = await notify_socket.wait_for(lambda fields: "RELOADING" in fields, since=mark)
            _, ready = await notify_socket.wait_for(lambda fields: "READY" in fields, since=index)
            assert ready["STATUS"].startswith("2 accounts, worst ")
            await notify_socket.pings_after(2, since=index)
            assert process.returncode is None

            mark = len(notify_socket.snapshot())
            process.send_signal(signal.SIGTERM)
            await notify_socket.wait_for(lambda fields: "STOPPING" in fields, since=mark)
            assert await asyncio.wait_for(process.wait(), 10) == 0
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()

    check_journal(log_path, path)


def check_journal(log_path: Path, path: Path) -> None:
    """The process's stdout: prefixed JSON lines, the refused reload named, both generations' starts."""
    lines = log_path.read_text(encoding="utf-8").splitlines()
    assert lines
    parsed = []
    for line in lines:
        match = re.match(r"<(\d)>(\{.*\})$", line)
        assert match is not None, line  # every line carries its priority, journald style
        parsed.append((int(match[1]), json.loads(match[2])))
    priorities = {"debug": 7, "info": 6, "warning": 4, "error": 3, "critical": 2}
    assert all(priority == priorities[doc["log_level"]] for priority, doc in parsed)
    refused = [doc for _, doc in parsed if doc["event"] == "config.reload_refused"]
    assert len(refused) == 1
    assert "accounts[0].poll_intervall_s" in refused[0]["error"]
    assert str(path) in refused[0]["error"]
    assert refused[0]["log_level"] == "error"
    started = [doc["thresholds_pct"] for _, doc in parsed if doc["event"] == "daemon.started"]
    assert started == [[150.0, 130.0, 120.0], [160.0, 140.0, 120.0]]
    assert [doc["accounts"] for _, doc in parsed if doc["event"] == "config.reloaded"] == [2]
    assert DEMO_SECRET not in "\n".join(lines)
