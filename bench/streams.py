"""Detection latency and cost of the daemon in stream mode and in poll mode, for 1, 100 and 1,000 accounts.

Run ``.venv/bin/python bench/streams.py`` (about 6 minutes) or ``--quick`` (1 and 100 accounts, under a
minute). Every configuration (accounts x mode) gets a fresh simulator process and a fresh daemon process:

- the simulator (``--role sim``) serves ``bulk_accounts(n, positions=5)`` (BTC, ETH, SOL, BNB, XRP in
  every account, 250-260% margin ratio) and pushes every mark each second; between pushes it nudges the
  marks by 1e-5 so every push carries new prices. It takes commands on stdin: publish new marks now
  (it answers with ``time.time()`` taken just before the push), and its request counts by path.
- the daemon (``--role daemon``) is wired as ``monitor.service.app.run_daemon`` wires it: ``Alerts`` with
  the ``log`` channel (logging to ``os.devnull``) and an MQTT channel on this script's own Mosquitto,
  ``Daemon`` over ``build_sources``, ``streams_for``; accounts in ``mode="stream"`` (default poll
  interval) or ``mode="poll"`` every 5 s; ``reconcile_s=60``. Its one addition is a submitter in front
  of ``Dispatcher.submit`` that notes ``time.time()`` when each alert is stored.
- this process holds the Mosquitto broker (a free port, never 1883) and a subscriber on
  ``bench/+/alert``, and drives the crossings: one BTC move takes every account from ``ok`` through 150%
  (a ``firing`` warning), the move back takes it above 155% (``recovered``). Each phase waits until
  every account's alert has arrived. Both directions are samples.

Latency is measured from the simulator's publish time to the alert's ``created_at`` (the engine), to
its store in the outbox, and to its arrival at the subscriber, all on ``time.time()`` of one machine.
Cost is read from ``/proc/<daemon pid>`` (CPU time over wall time, VmRSS, VmHWM) over a window after
the crossings, and REST weight from the simulator's per-path counts over the whole run after start-up.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import hashlib
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

# Run as a file (``python bench/streams.py``): make the project and the sibling bench scripts importable.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiomqtt
from monitor.config import AccountConfig, AlertsConfig, ChannelConfig, Config, DaemonConfig
from monitor.exchanges.client import Credentials, MarketCache
from monitor.notify.factory import build_channels
from monitor.notify.mqtt import MqttChannel
from monitor.service.app import Alerts, build_sources, streams_for
from monitor.service.daemon import Daemon
from monitor.service.logs import configure_logging
from monitor.sim import SimServer, bulk_accounts, compute_figures

from alert_latency import MOSQUITTO, Broker, mosquitto

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence

    from monitor.alerts.model import Alert
    from monitor.service.alerting import Submitter
    from monitor.service.streaming import Streaming
    from monitor.sim.accounts import SimAccount

HOST = "127.0.0.1"
PREFIX = "bench"
POSITIONS = 5
PUSH_S = 1.0
WIGGLE = 1e-5
POLL_S = 5.0
RECONCILE_S = 60.0
#: The daemon's default poll interval: in stream mode the scheduler checks this often if a reconcile is due.
STREAM_POLL_S = 10.0
#: The crossing move puts the highest account (260%) here; the lowest (250%) lands about 10 points lower.
CROSSED_RATIO = 1.45
WARNING_BAND = (1.30, 1.50)
OK_ABOVE = 1.55
PHASE_TIMEOUT_S = 60.0
#: How long the daemon may take to stop once asked (its own promise for SIGTERM is 5 s) before it is killed.
STOP_TIMEOUT_S = 30.0
READY_TIMEOUT_S = 180.0
#: Set to a file name, the daemon child profiles its phases there (``python -m pstats FILE``).
PROFILE_ENV = "MARGIN_MONITOR_BENCH_PROFILE"
#: A daemon whose memory passes this is stopped (and its row says so): a backlog can grow without bound.
MEMORY_CAP_MB = 4096.0
TARGET_P99_MS = 50.0
FAST_FALL_OFF_PCT = 10_000.0
#: The two crowds of a crossing: every account at once, or the few nearest the threshold (one in a
#: hundred: the bulk accounts repeat every 100) while every account is recomputed on the same tick.
CROWDS = ("all", "few")
TARGET_CPU = 0.5
TARGET_RSS_MB = 1024.0
#: Binance USDⓈ-M request weights; paths not listed count 1 (and are named under the table).
WEIGHTS: Mapping[str, int] = {
    "/fapi/v3/account": 5,
    "/fapi/v3/positionRisk": 5,
    "/fapi/v1/premiumIndex": 10,
    "/fapi/v1/leverageBracket": 1,
    "/fapi/v1/listenKey": 1,
    "/fapi/v1/exchangeInfo": 1,
}
WEBSOCKET_PREFIXES = ("/ws", "/stream", "/market/", "/public/", "/private/")


def _credentials(index: int) -> Credentials:
    key = f"sim-bulk-key-{index:06d}"
    return Credentials(api_key=key, secret=hashlib.sha256(key.encode()).hexdigest())


def _account_name(index: int) -> str:
    return f"bulk-{index:06d}"


def _emit(document: Mapping[str, Any]) -> None:
    sys.stdout.write(json.dumps(document) + "\n")
    sys.stdout.flush()


async def _stdin_reader() -> asyncio.StreamReader:
    reader = asyncio.StreamReader(limit=2**26)
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


# --- the simulator process ------------------------------------------------------------------------


async def _wiggle(sim: SimServer, base: dict[str, float]) -> None:
    sign = 1.0
    while True:
        await asyncio.sleep(PUSH_S)
        sign = -sign
        for symbol, price in base.items():
            sim.marks[symbol] = price * (1.0 + sign * WIGGLE)


async def sim_role(accounts: int) -> None:
    """Serve ``accounts`` bulk accounts; answer commands on stdin until it closes."""
    reader = await _stdin_reader()
    async with SimServer(
        accounts=bulk_accounts(accounts, positions=POSITIONS), autostart=False, mark_push_s=PUSH_S
    ) as sim:
        base = dict(sim.marks)
        wiggle = asyncio.create_task(_wiggle(sim, base), name="bench-wiggle")
        _emit({"url": sim.base_url, "ws": sim.ws_url, "marks": base})
        try:
            while line := await reader.readline():
                command = json.loads(line)
                if command["op"] == "publish":
                    marks = {str(s): float(p) for s, p in command["marks"].items()}
                    base.update(marks)
                    _emit({"t": await sim.publish_marks(marks)})
                elif command["op"] == "counts":
                    _emit({"requests": dict(sim.faults.requests)})
        finally:
            wiggle.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await wiggle


# --- the daemon process ---------------------------------------------------------------------------


class StoreClock:
    """In front of ``Dispatcher.submit``: notes when each alert is in the outbox."""

    def __init__(self, inner: Submitter) -> None:
        self.inner = inner
        self.stored: list[tuple[str, str, str, float, float]] = []

    async def submit(self, alert: Alert) -> None:
        """Store ``alert`` through the dispatcher, then note the time."""
        await self.inner.submit(alert)
        self.stored.append((alert.id, alert.account, alert.kind.value, alert.created_at, time.time()))


def daemon_config(url: str, ws: str, mode: str, accounts: int, broker_port: int, state_dir: Path) -> Config:
    """The daemon's configuration, in memory: bulk accounts on the simulator, log + MQTT channels."""
    timing: dict[str, Any] = {"poll_interval_s": POLL_S} if mode == "poll" else {}
    mqtt = ChannelConfig(
        name="mqtt",
        type="mqtt",
        min_level="ok",
        options={
            "host": HOST,
            "port": broker_port,
            "topic_prefix": PREFIX,
            "tls": False,
            "discovery": True,
            "discovery_prefix": "homeassistant",
        },
    )
    return Config(
        accounts=tuple(
            AccountConfig(
                name=_account_name(index),
                exchange="binanceusdm",
                base_url=url,
                ws_url=ws,
                mode="stream" if mode == "stream" else "poll",
                **timing,
            )
            for index in range(accounts)
        ),
        # Fast-fall alerts off: each phase's alerts are then exactly its threshold crossings (a
        # 100-point move would otherwise also raise one for every account that stays above 150%).
        alerts=AlertsConfig(fast_fall_pct=FAST_FALL_OFF_PCT),
        daemon=DaemonConfig(state_dir=state_dir, reconcile_s=RECONCILE_S),
        channels=(mqtt,),
        path=Path("<bench>"),
    )


def _is_ready(daemon: Daemon, streaming: Streaming | None, mqtt: MqttChannel) -> bool:
    if not mqtt.connected:
        return False
    if not all(state.assessment is not None and state.level == "ok" for state in daemon.accounts.values()):
        return False
    if streaming is None:
        return True
    feeds_up = all(
        feed.connected and len(feed.symbols) == POSITIONS for feed in streaming.mark_feeds.values()
    )
    users_up = all(feed.connected for feed in streaming.user_feeds.values())
    return feeds_up and users_up and len(streaming.live) == len(daemon.accounts)


async def daemon_role(args: argparse.Namespace, started: float, sink: TextIO) -> None:
    """Run the daemon as ``run_daemon`` does until stdin closes; report the stored alerts."""
    reader = await _stdin_reader()
    count: int = args.accounts
    config = daemon_config(args.url, args.ws, args.mode, count, args.broker_port, Path(args.state_dir))
    credentials = {_account_name(index): _credentials(index) for index in range(count)}
    channels, _ = build_channels(config.channels)
    mqtt = next(channel for channel in channels if isinstance(channel, MqttChannel))
    clock: StoreClock | None = None
    extra: dict[str, Any] = {}
    configure_logging("json", stream=sink)
    async with Alerts(config, channels) as alerts:
        if alerts.alerting is not None:
            clock = StoreClock(alerts.alerting.submitter)
            alerts.alerting.submitter = clock
        markets = MarketCache()
        daemon = Daemon(config, build_sources(config, credentials, markets))
        alerts.attach(daemon)
        stop = asyncio.Event()
        async with streams_for(daemon, credentials, config, markets) as streaming:
            task = asyncio.create_task(daemon.run(stop), name="daemon")
            try:
                assessed_at = await _wait_ready(daemon, streaming, mqtt, task)
                _emit({"ready": time.time(), "assessed_at": assessed_at, "startup_s": time.time() - started})
                with _profiled(os.environ.get(PROFILE_ENV)):
                    await reader.read()  # until the parent closes our stdin
                if alerts.alerting is not None:
                    histories = [len(state.history) for state in alerts.alerting.states.values()]
                    extra["history_max"] = max(histories, default=0)
                extra["ticks"] = streaming.ticks if streaming is not None else 0
                extra["polls"] = sum(state.polls for state in daemon.accounts.values())
                # Reported before the shutdown, which the parent times (and cuts short if it drags on).
                _emit({"stored": clock.stored if clock is not None else [], **extra})
            finally:
                stop.set()
                await task


@contextlib.contextmanager
def _profiled(path: str | None) -> Iterator[None]:
    """Profile the daemon's phases into ``path`` (cProfile's format) when it is set."""
    if not path:
        yield
        return
    profile = cProfile.Profile()
    profile.enable()
    try:
        yield
    finally:
        profile.disable()
        profile.dump_stats(path)


async def _wait_ready(
    daemon: Daemon, streaming: Streaming | None, mqtt: MqttChannel, task: asyncio.Task[None]
) -> float:
    """Wait until every account is assessed (and streaming), MQTT connected; return when all were assessed."""
    assessed_at: float | None = None
    async with asyncio.timeout(READY_TIMEOUT_S):
        while not _is_ready(daemon, streaming, mqtt):
            if task.done():
                raise RuntimeError("the daemon stopped during start-up")
            if assessed_at is None and all(s.assessment is not None for s in daemon.accounts.values()):
                assessed_at = time.time()
            await asyncio.sleep(0.05)
    await asyncio.sleep(2 * PUSH_S)  # let the feeds settle into their steady rhythm
    return assessed_at if assessed_at is not None else time.time()


# --- this process: the broker, the subscriber, the children ---------------------------------------


@dataclass(slots=True)
class Arrival:
    """One alert at the subscriber."""

    account: str
    kind: str
    created_at: float
    at: float


class Subscriber:
    """Notes every alert arriving on ``bench/+/alert`` with ``time.time()``."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self.client = client
        self.arrivals: list[Arrival] = []
        self.changed = asyncio.Event()

    async def run(self) -> None:
        """Receive until cancelled."""
        async for message in self.client.messages:
            at = time.time()
            document = json.loads(message.payload)
            self.arrivals.append(
                Arrival(str(document["account"]), str(document["kind"]), float(document["created_at"]), at)
            )
            self.changed.set()

    async def wait_for(self, predicate: Callable[[], bool], timeout_s: float) -> bool:
        """Wait until ``predicate()`` holds, re-checked at each arrival; ``False`` after ``timeout_s``."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                while not predicate():
                    self.changed.clear()
                    await self.changed.wait()
                return True
        return predicate()


@contextlib.asynccontextmanager
async def subscribed(broker: Broker) -> AsyncIterator[Subscriber]:
    """A subscriber on the alert topics, receiving in the background."""
    async with aiomqtt.Client(broker.host, broker.port, identifier="bench-streams-subscriber") as client:
        await client.subscribe(f"{PREFIX}/+/alert", qos=1)
        subscriber = Subscriber(client)
        task = asyncio.create_task(subscriber.run(), name="bench-subscriber")
        try:
            yield subscriber
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


class Child:
    """A child process of this script that speaks JSON lines on stdin and stdout."""

    def __init__(self, process: asyncio.subprocess.Process, log: Path) -> None:
        self.process = process
        self.log = log

    @classmethod
    async def start(cls, log: Path, *args: str) -> Child:
        """Start ``python bench/streams.py ARGS``, its stderr going to ``log``."""
        with log.open("w", encoding="utf-8") as errors:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                __file__,
                *args,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=errors,
                limit=2**26,
            )
        return cls(process, log)

    @property
    def pid(self) -> int:
        """The child's process id."""
        return self.process.pid

    async def receive(self, timeout_s: float) -> dict[str, Any]:
        """The next JSON line; a ``RuntimeError`` with the child's stderr if there is none."""
        assert self.process.stdout is not None  # noqa: S101 - a pipe, set by start()
        async with asyncio.timeout(timeout_s):
            line = await self.process.stdout.readline()
        if not line:
            # asyncio (3.11) reports the exit only once every pipe is closed, stdin included.
            if self.process.stdin is not None and not self.process.stdin.is_closing():
                self.process.stdin.close()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5.0):
                    await self.process.wait()
            tail = self.log.read_text(encoding="utf-8", errors="replace")[-3000:]
            raise RuntimeError(f"child {self.pid} ended (exit {self.process.returncode}):\n{tail}")
        document: dict[str, Any] = json.loads(line)
        return document

    async def ask(self, command: Mapping[str, Any], timeout_s: float = 30.0) -> dict[str, Any]:
        """Send one command, return its answer."""
        assert self.process.stdin is not None  # noqa: S101 - a pipe, set by start()
        self.process.stdin.write((json.dumps(command) + "\n").encode())
        await self.process.stdin.drain()
        return await self.receive(timeout_s)

    async def finish(self, timeout_s: float = 30.0) -> tuple[dict[str, Any] | None, float, bool]:
        """Close stdin (the child's signal to stop).

        Returns its last line if any, the seconds from that line until it exited, and whether it
        had to be killed after ``timeout_s``.
        """
        result: dict[str, Any] | None = None
        killed = False
        stopping = time.monotonic()
        try:
            if self.process.stdin is not None and not self.process.stdin.is_closing():
                self.process.stdin.close()
            with contextlib.suppress(RuntimeError, TimeoutError, json.JSONDecodeError):
                result = await self.receive(timeout_s)
            stopping = time.monotonic()
            async with asyncio.timeout(timeout_s):
                await self.process.wait()
        except TimeoutError:
            killed = True
        finally:
            if self.process.returncode is None:
                self.process.kill()
                await self.process.wait()
        return result, time.monotonic() - stopping, killed


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` so far (every thread)."""
    fields = Path(f"/proc/{pid}/stat").read_text(encoding="ascii").rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_memory_mb(pid: int) -> tuple[float, float]:
    """VmRSS and VmHWM of ``pid`` in MiB."""
    found: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
        key, _, value = line.partition(":")
        if key in {"VmRSS", "VmHWM"}:
            found[key] = int(value.split()[0]) / 1024
    return found.get("VmRSS", math.nan), found.get("VmHWM", math.nan)


def crossing_price(accounts: int, marks: Mapping[str, float]) -> tuple[float, float, float]:
    """The BTC mark that puts every account in the warning band; (price, lowest ratio, highest ratio)."""
    sample = bulk_accounts(min(accounts, 100), positions=POSITIONS)  # indexes repeat every 100

    def ratios(btc: float) -> list[float]:
        moved = {**marks, "BTCUSDT": btc}
        return [compute_figures(account, moved).margin_ratio or math.inf for account in sample]

    low, high = marks["BTCUSDT"] * 0.5, marks["BTCUSDT"]
    for _ in range(60):
        middle = (low + high) / 2
        if max(ratios(middle)) > CROSSED_RATIO:
            high = middle
        else:
            low = middle
    crossed, initial = ratios(low), ratios(marks["BTCUSDT"])
    if not (WARNING_BAND[0] < min(crossed) and max(crossed) <= WARNING_BAND[1] and min(initial) > OK_ABOVE):
        raise RuntimeError(
            f"the crossing does not put every account in warning: {min(crossed):.3f}-{max(crossed):.3f}"
        )
    return low, min(crossed), max(crossed)


def few_crossing_price(accounts: int, marks: Mapping[str, float]) -> tuple[float, int]:
    """The BTC mark that takes only the accounts nearest 150% into warning; (price, how many)."""
    sample = bulk_accounts(min(accounts, 100), positions=POSITIONS)

    def crossing(account: SimAccount) -> float:
        low, high = marks["BTCUSDT"] * 0.5, marks["BTCUSDT"]
        for _ in range(60):
            middle = (low + high) / 2
            ratio = compute_figures(account, {**marks, "BTCUSDT": middle}).margin_ratio or math.inf
            low, high = (low, middle) if ratio > WARNING_BAND[1] else (middle, high)
        return low

    prices = sorted((crossing(account) for account in sample), reverse=True)
    first = prices[0]
    second = next((price for price in prices[1:] if price < first * (1 - 1e-6)), first * 0.99)
    price = (first + second) / 2

    def ratio_at(index: int) -> float:
        return compute_figures(sample[index % 100], {**marks, "BTCUSDT": price}).margin_ratio or math.inf

    crossed = [index for index in range(accounts) if ratio_at(index) <= WARNING_BAND[1]]
    if not crossed or len(crossed) > max(1, accounts // 50):
        raise RuntimeError(f"the few-crossing price takes {len(crossed)} of {accounts} accounts")
    return price, len(crossed)


@dataclass(slots=True)
class Phase:
    """One publish of a crossing mark and the alerts it raised."""

    kind: str
    published: float
    expected: int
    arrivals: list[Arrival] = field(default_factory=list)
    crowd: str = "all"


@dataclass(slots=True)
class Plan:
    """What one configuration runs."""

    accounts: int
    mode: str
    rounds: int
    window_s: float
    cover_reconcile: bool
    stop_timeout_s: float = 30.0


@dataclass(slots=True)
class Result:
    """What one configuration measured."""

    plan: Plan
    phases: list[Phase]
    stored: list[tuple[str, str, str, float, float]]
    startup_s: float
    window_s: float
    cpu_share: float
    rss_mb: float
    peak_mb: float
    rest_window_s: float
    requests: dict[str, int]
    sim_cpu_share: float
    history_max: int
    reconcile_covered: bool
    failed: str = ""
    """Why the configuration measured nothing but its start-up (empty when it ran)."""


async def run_phases(
    sim: Child,
    subscriber: Subscriber,
    plan: Plan,
    crowds: Mapping[str, tuple[float, int]],
    base: float,
    phases: list[Phase],
) -> None:
    """Per crowd, ``plan.rounds`` times: the BTC move that crosses its accounts, then the move back."""
    gap_s = 0.2 if plan.mode == "stream" else 0.0
    rounds = [(crowd, *crowds[crowd]) for crowd in CROWDS for _ in range(plan.rounds)]
    for crowd, crossed, expected in rounds:
        for kind, price in (("firing", crossed), ("recovered", base)):
            start = len(subscriber.arrivals)
            published = float((await sim.ask({"op": "publish", "marks": {"BTCUSDT": price}}))["t"])
            phase = Phase(kind, published, expected, crowd=crowd)

            def complete(phase: Phase = phase, start: int = start) -> bool:
                phase.arrivals = [a for a in subscriber.arrivals[start:] if a.kind == phase.kind]
                return len(phase.arrivals) >= phase.expected

            await subscriber.wait_for(complete, PHASE_TIMEOUT_S)
            phases.append(phase)
            await asyncio.sleep(gap_s)


async def guarded(work: Awaitable[None], pid: int) -> str:
    """Await ``work`` while watching ``pid``'s memory: ``""``, or why ``work`` was cancelled."""
    task = asyncio.ensure_future(work)
    while True:
        done, _ = await asyncio.wait({task}, timeout=1.0)
        if done:
            task.result()
            return ""
        rss, _ = proc_memory_mb(pid)
        if rss > MEMORY_CAP_MB:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            return f"RSS {rss:,.0f} MB passed the cap ({MEMORY_CAP_MB:,.0f} MB)"


async def await_ready(daemon: Child) -> tuple[dict[str, Any] | None, str]:
    """The daemon's ready line, or ``None`` and why: too slow, or its memory past ``MEMORY_CAP_MB``."""
    began = time.monotonic()
    while True:
        with contextlib.suppress(TimeoutError):
            return await daemon.receive(1.0), ""
        elapsed = time.monotonic() - began
        rss, _ = proc_memory_mb(daemon.pid)
        cpu = proc_cpu_s(daemon.pid) / elapsed
        if rss > MEMORY_CAP_MB:
            return None, (
                f"stopped during start-up: RSS {rss:,.0f} MB after {elapsed:.0f} s"
                f" (cap {MEMORY_CAP_MB:,.0f} MB), {cpu * 100:.0f}% of a core"
            )
        if elapsed > READY_TIMEOUT_S:
            return None, f"not ready after {elapsed:.0f} s: RSS {rss:,.0f} MB, {cpu * 100:.0f}% of a core"


def stopped(
    plan: Plan, phases: list[Phase], startup_s: float, since: float, cpu_share: float, pid: int, failed: str
) -> Result:
    """The result of a configuration stopped early: what it measured until then, memory at the stop."""
    rss, peak = proc_memory_mb(pid)
    return Result(
        plan=plan,
        phases=phases,
        stored=[],
        startup_s=startup_s,
        window_s=since,
        cpu_share=cpu_share,
        rss_mb=rss,
        peak_mb=peak,
        rest_window_s=0.0,
        requests={},
        sim_cpu_share=0.0,
        history_max=0,
        reconcile_covered=True,
        failed=failed,
    )


async def run_config(  # noqa: PLR0915 - one configuration's steps, in the order they run
    plan: Plan, broker: Broker, subscriber: Subscriber, workdir: Path
) -> Result:
    """One configuration: a fresh simulator and daemon; crossings, then the cost window."""
    tag = f"{plan.mode}-{plan.accounts}"
    sim = await Child.start(workdir / f"sim-{tag}.log", "--role", "sim", "--accounts", str(plan.accounts))
    daemon: Child | None = None
    try:
        hello = await sim.receive(60.0)
        base_marks = {str(s): float(p) for s, p in hello["marks"].items()}
        crossed, _, _ = crossing_price(plan.accounts, base_marks)
        crowds = {"all": (crossed, plan.accounts), "few": few_crossing_price(plan.accounts, base_marks)}
        state_dir = workdir / f"state-{tag}"
        spawned = time.monotonic()
        daemon = await Child.start(
            workdir / f"daemon-{tag}.log",
            "--role",
            "daemon",
            "--accounts",
            str(plan.accounts),
            "--mode",
            plan.mode,
            "--url",
            str(hello["url"]),
            "--ws",
            str(hello["ws"]),
            "--broker-port",
            str(broker.port),
            "--state-dir",
            str(state_dir),
        )
        ready, failed = await await_ready(daemon)
        if ready is None:
            print(f"  {plan.accounts:>5} accounts {plan.mode:<6}: {failed}", flush=True)
            since = time.monotonic() - spawned
            return stopped(plan, [], math.nan, since, proc_cpu_s(daemon.pid) / since, daemon.pid, failed)
        rest_from = time.time()
        marks = {"start": time.monotonic()}
        cpu_ready = proc_cpu_s(daemon.pid)
        counts_before = (await sim.ask({"op": "counts"}))["requests"]
        phases: list[Phase] = []
        crossings = run_phases(sim, subscriber, plan, crowds, base_marks["BTCUSDT"], phases)
        failed = await guarded(crossings, daemon.pid)
        marks["crossings"] = time.monotonic()
        await asyncio.sleep(1.0)
        window_from = time.time()
        cpu_before, sim_cpu_before = proc_cpu_s(daemon.pid), proc_cpu_s(sim.pid)
        until = window_from + plan.window_s
        reconcile_at = float(ready["assessed_at"]) + RECONCILE_S + STREAM_POLL_S + 3.0
        if plan.cover_reconcile and plan.mode == "stream":
            until = max(until, reconcile_at)
        if not failed:
            failed = await guarded(asyncio.sleep(until - time.time()), daemon.pid)
        if failed:
            since = time.monotonic() - marks["start"]
            failed = f"stopped after {len(phases)} crossing phases and {since:.0f} s: {failed}"
            print(f"  {plan.accounts:>5} accounts {plan.mode:<6}: {failed}", flush=True)
            cpu = (proc_cpu_s(daemon.pid) - cpu_ready) / since
            return stopped(plan, phases, float(ready["startup_s"]), since, cpu, daemon.pid, failed)
        window_to = time.time()
        cpu_after, sim_cpu_after = proc_cpu_s(daemon.pid), proc_cpu_s(sim.pid)
        rss, peak = proc_memory_mb(daemon.pid)
        counts_after = (await sim.ask({"op": "counts"}))["requests"]
        rest_to = time.time()
        marks["window"] = time.monotonic()
        final, stop_s, killed = await daemon.finish(plan.stop_timeout_s)
        daemon = None
    finally:
        if daemon is not None:
            await daemon.finish(5.0)
        await sim.finish(5.0)
    if final is None or "stored" not in final:
        raise RuntimeError(f"{tag}: the daemon did not report its alerts")
    window = window_to - window_from
    steps = list(marks.items())
    print(
        f"  {plan.accounts:>5} accounts {plan.mode:<6}: start-up {float(ready['startup_s']):.0f} s, "
        + ", ".join(f"{name} {at - steps[i][1]:.0f} s" for i, (name, at) in enumerate(steps[1:]))
        + f", shutdown {stop_s:.1f} s"
        + (f" (killed after {plan.stop_timeout_s:g} s)" if killed else ""),
        flush=True,
    )
    return Result(
        plan=plan,
        phases=phases,
        stored=[(str(a), str(b), str(c), float(d), float(e)) for a, b, c, d, e in final["stored"]],
        startup_s=float(ready["startup_s"]),
        window_s=window,
        cpu_share=(cpu_after - cpu_before) / window,
        rss_mb=rss,
        peak_mb=peak,
        rest_window_s=rest_to - rest_from,
        requests={
            path: int(counts_after.get(path, 0)) - int(counts_before.get(path, 0))
            for path in counts_after
            if int(counts_after.get(path, 0)) - int(counts_before.get(path, 0)) > 0
        },
        sim_cpu_share=(sim_cpu_after - sim_cpu_before) / window,
        history_max=int(final.get("history_max", 0)),
        reconcile_covered=plan.mode == "poll" or rest_to >= reconcile_at,
    )


# --- figures and the table ------------------------------------------------------------------------


def nearest_rank(samples: Sequence[float], percent: float) -> float:
    """The nearest-rank percentile (``nan`` for no samples)."""
    if not samples:
        return math.nan
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(percent / 100 * len(ordered)) - 1)]


@dataclass(slots=True)
class Latencies:
    """Milliseconds from the publish, per stage, over every phase of a configuration."""

    engine: list[float] = field(default_factory=list)
    stored: list[float] = field(default_factory=list)
    broker: list[float] = field(default_factory=list)
    per_phase_broker_p99: list[float] = field(default_factory=list)
    missing: int = 0


def latencies(result: Result, crowd: str) -> Latencies:
    """Match the crowd's phases' alerts (arrivals, and stores by kind after the publish)."""
    found = Latencies()
    ordered = sorted(result.phases, key=lambda phase: phase.published)
    for phase in ordered:
        if phase.crowd != crowd:
            continue
        found.missing += max(0, phase.expected - len(phase.arrivals))
        broker = [(arrival.at - phase.published) * 1000 for arrival in phase.arrivals]
        found.broker += broker
        found.per_phase_broker_p99.append(nearest_rank(broker, 99))
        found.engine += [(arrival.created_at - phase.published) * 1000 for arrival in phase.arrivals]
    for _, _, kind, created_at, stored_at in result.stored:
        for index, phase in enumerate(ordered):
            ends = ordered[index + 1].published if index + 1 < len(ordered) else math.inf
            if phase.kind == kind and phase.published <= created_at < ends:
                if phase.crowd == crowd:
                    found.stored.append((stored_at - phase.published) * 1000)
                break
    return found


def rest_weight(result: Result) -> tuple[float, list[str]]:
    """REST weight per account-hour over the run after start-up; the unweighted paths seen."""
    total = 0
    unknown: list[str] = []
    for path, count in result.requests.items():
        if path.startswith(WEBSOCKET_PREFIXES):
            continue
        if path not in WEIGHTS:
            unknown.append(path)
        total += WEIGHTS.get(path, 1) * count
    hours = result.rest_window_s / 3600
    if hours <= 0:
        return math.nan, unknown
    return total / (result.plan.accounts * hours), unknown


def _ms(value: float) -> str:
    if math.isnan(value):
        return "-"
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def _versions() -> str:
    found = []
    for name in ("ccxt", "aiomqtt", "aiohttp"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            found.append(f"{name} {metadata.version(name)}")
    broker = subprocess.run([MOSQUITTO, "-h"], capture_output=True, text=True, check=False).stdout
    found.append(broker.splitlines()[0] if broker else "mosquitto ?")
    return ", ".join(found)


def print_report(results: list[Result]) -> None:
    """Every table, then the targets."""
    counts = sorted({r.plan.accounts for r in results})
    for crowd in CROWDS:
        found = {(r.plan.accounts, r.plan.mode): (r, latencies(r, crowd)) for r in results}
        _print_latency(found, counts, crowd)
        _print_noise(found, counts)
    _print_cost(found, counts)
    for crowd in CROWDS:
        found = {(r.plan.accounts, r.plan.mode): (r, latencies(r, crowd)) for r in results}
        _print_targets(found, counts, crowd)


def _print_latency(
    found: dict[tuple[int, str], tuple[Result, Latencies]], counts: list[int], crowd: str
) -> None:
    print()
    who = (
        "every account crosses at once"
        if crowd == "all"
        else "the 1 in 100 accounts nearest 150% cross; every account is recomputed on the tick"
    )
    print(f"detection latency ({crowd}: {who}), ms from the simulator's publish (nearest rank)")
    header = (
        f"{'accounts':>8} {'mode':<6} {'samples':>7} {'missing':>7}  {'engine p50':>10} {'p99':>7}"
        f"  {'stored p50':>10} {'p99':>7}  {'Mosquitto p50':>13} {'p99':>7}"
    )
    print(header)
    print("-" * len(header))
    for count in counts:
        for mode in ("stream", "poll"):
            if (count, mode) not in found:
                continue
            result, lat = found[(count, mode)]
            if result.failed and not lat.broker:
                print(f"{count:>8} {mode:<6} {result.failed}")
                continue
            print(
                f"{count:>8} {mode:<6} {len(lat.broker):>7} {lat.missing:>7}"
                f"  {_ms(nearest_rank(lat.engine, 50)):>10} {_ms(nearest_rank(lat.engine, 99)):>7}"
                f"  {_ms(nearest_rank(lat.stored, 50)):>10} {_ms(nearest_rank(lat.stored, 99)):>7}"
                f"  {_ms(nearest_rank(lat.broker, 50)):>13} {_ms(nearest_rank(lat.broker, 99)):>7}"
            )
            if result.failed:
                print(f"{'':>15} {result.failed}")
        if (count, "stream") in found and (count, "poll") in found:
            stream, poll = found[(count, "stream")][1], found[(count, "poll")][1]

            def ratio(a: list[float], b: list[float], p: float) -> str:
                value = nearest_rank(a, p) / nearest_rank(b, p)
                return "-" if math.isnan(value) else f"{value:.3f}x"

            print(
                f"{count:>8} {'s/p':<6} {'':>7} {'':>7}  {ratio(stream.engine, poll.engine, 50):>10}"
                f" {ratio(stream.engine, poll.engine, 99):>7}  {ratio(stream.stored, poll.stored, 50):>10}"
                f" {ratio(stream.stored, poll.stored, 99):>7}  {ratio(stream.broker, poll.broker, 50):>13}"
                f" {ratio(stream.broker, poll.broker, 99):>7}"
            )
    print("  s/p: stream / poll. engine: the alert's created_at; stored: Dispatcher.submit returned;")
    print("  Mosquitto: the subscriber has it. Both directions (firing, recovered) are samples.")


def _print_noise(found: dict[tuple[int, str], tuple[Result, Latencies]], counts: list[int]) -> None:
    print()
    print("noise: Mosquitto p99 of each crossing phase, ms (min / median / max over phases)")
    for count in counts:
        for mode in ("stream", "poll"):
            if (count, mode) in found:
                per = [v for v in found[(count, mode)][1].per_phase_broker_p99 if not math.isnan(v)]
                if per:
                    print(
                        f"{count:>8} {mode:<6} {len(per):>3} phases  {_ms(min(per)):>7} /"
                        f" {_ms(statistics.median(per)):>7} / {_ms(max(per)):>7}"
                    )


def _print_cost(found: dict[tuple[int, str], tuple[Result, Latencies]], counts: list[int]) -> None:
    results = [result for result, _ in found.values()]
    print()
    print(f"cost, marks every {PUSH_S:g} s (CPU over the window after the crossings; REST over the run)")
    header = (
        f"{'accounts':>8} {'mode':<6} {'start s':>7} {'window s':>8} {'CPU core':>8} {'RSS MB':>7}"
        f" {'peak MB':>7} {'MB/acct':>7} {'REST w/acct-h':>13} {'sim CPU':>7} {'history':>7}"
    )
    print(header)
    print("-" * len(header))
    unknown_paths: set[str] = set()
    for count in counts:
        for mode in ("stream", "poll"):
            if (count, mode) not in found:
                continue
            result, _ = found[(count, mode)]
            weight, unknown = rest_weight(result)
            unknown_paths.update(unknown)
            mark = "" if result.reconcile_covered else "*"
            rest = "-" if math.isnan(weight) else f"{weight:,.0f}"
            sim_cpu = "-" if result.failed else f"{result.sim_cpu_share * 100:.1f}%"
            history = "-" if result.failed else str(result.history_max)
            print(
                f"{count:>8} {mode:<6} {result.startup_s:>7.1f} {result.window_s:>8.1f}"
                f" {result.cpu_share * 100:>7.1f}% {result.rss_mb:>7.1f} {result.peak_mb:>7.1f}"
                f" {result.rss_mb / count:>7.2f} {rest:>12}{mark:1} {sim_cpu:>7} {history:>7}"
            )
    print("  CPU core: daemon CPU time / wall time (1.0 = 100% of one core). history: longest fast-fall")
    print("  history an alert key holds at the end. REST weight: account v3 5, positionRisk v3 5,")
    print("  premiumIndex 10, leverageBracket 1, listenKey 1, exchangeInfo 1; websocket handshakes excluded.")
    if any(not r.reconcile_covered for r in results):
        print(f"  *: the run after start-up was shorter than a reconcile ({RECONCILE_S:g} s): none counted")
    if any(r.failed for r in results):
        print("  a stopped row: CPU and memory from ready (or from its start) to the stop; no REST figure")
    if unknown_paths:
        print(f"  counted at weight 1: {', '.join(sorted(unknown_paths))}")
    print()
    print("requests by path over the run after start-up, per account")
    for result in results:
        parts = ", ".join(
            f"{path.rsplit('/', 1)[-1]} {count / result.plan.accounts:.2f}"
            for path, count in sorted(result.requests.items())
        )
        print(f"{result.plan.accounts:>8} {result.plan.mode:<6} {result.rest_window_s:>5.0f} s  {parts}")


def _print_targets(
    found: dict[tuple[int, str], tuple[Result, Latencies]], counts: list[int], crowd: str
) -> None:
    top = max(counts)
    if (top, "stream") in found:
        result, lat = found[(top, "stream")]
        if crowd == "all":
            _print_burst(result, lat, top)
            return
        for stage, samples in (("stored", lat.stored), ("Mosquitto", lat.broker)):
            p99 = nearest_rank(samples, 99)
            verdict = "PASS" if p99 < TARGET_P99_MS and lat.missing == 0 else "MISS"
            why = f"p99 {_ms(p99)} ms over {len(samples):,} alerts"
            if result.failed:
                why += f", then {result.failed}"
            print(
                f"target: stream p99 < {TARGET_P99_MS:g} ms at {top:,} accounts, {crowd} cross,"
                f" to {stage}: {verdict} ({why})"
            )
        if crowd != CROWDS[-1]:
            return
        verdict = "PASS" if result.cpu_share < TARGET_CPU else "MISS"
        print(
            f"target: < half a core at {top:,} accounts: {verdict} ({result.cpu_share * 100:.1f}% of a core)"
        )
        verdict = "PASS" if max(result.rss_mb, result.peak_mb) < TARGET_RSS_MB else "MISS"
        print(
            f"target: < 1 GiB at {top:,} accounts: {verdict}"
            f" (RSS {result.rss_mb:.0f} MB, peak {result.peak_mb:.0f} MB)"
        )


def _print_burst(result: Result, lat: Latencies, accounts: int) -> None:
    """The all crowd is a burst, not a detection: how long the whole of it took, and its rate."""
    phases = [p for p in result.phases if p.crowd == "all" and p.arrivals]
    if not phases:
        return
    spans = [max(a.at for a in p.arrivals) - p.published for p in phases]
    rates = [len(p.arrivals) / span for p, span in zip(phases, spans, strict=True) if span > 0]
    print(
        f"burst: {accounts:,} accounts across 150% in one tick (throughput, not the latency target):"
        f" p99 stored {_ms(nearest_rank(lat.stored, 99))} ms,"
        f" Mosquitto {_ms(nearest_rank(lat.broker, 99))} ms;"
        f" the last alert at Mosquitto after {_ms(statistics.median(spans) * 1000)} ms"
        f" (median of {len(spans)} phases), {statistics.median(rates):,.0f} alerts/s"
    )


def print_repeats(results: list[Result]) -> None:
    """One configuration run several times: each run's p99s, then min / median / max, then the targets."""
    rows: list[tuple[float, float, float, float, float]] = []
    for result in results:
        few, burst = latencies(result, "few"), latencies(result, "all")
        rows.append(
            (
                nearest_rank(few.stored, 99),
                nearest_rank(few.broker, 99),
                nearest_rank(burst.stored, 99),
                nearest_rank(burst.broker, 99),
                result.cpu_share * 100,
            )
        )
    plan = results[0].plan
    print()
    print(f"repeats: {plan.accounts:,} accounts {plan.mode}, {len(results)} runs, p99 ms from the publish")
    header = (
        f"{'run':>6}  {'few stored':>10} {'few Mosquitto':>13}  {'burst stored':>12}"
        f" {'burst Mosquitto':>15}  {'CPU core':>8}"
    )
    print(header)
    print("-" * len(header))

    def line(label: str, values: tuple[float, ...]) -> str:
        return (
            f"{label:>6}  {_ms(values[0]):>10} {_ms(values[1]):>13}  {_ms(values[2]):>12}"
            f" {_ms(values[3]):>15}  {values[4]:>7.1f}%"
        )

    for index, row in enumerate(rows, 1):
        print(line(str(index), row))
    columns = list(zip(*rows, strict=True))
    for label, pick in (("min", min), ("median", statistics.median), ("max", max)):
        print(line(label, tuple(float(pick(column)) for column in columns)))
    if plan.mode != "stream":
        return
    for stage, column in (("stored", 0), ("Mosquitto", 1)):
        passed = sum(1 for row in rows if row[column] < TARGET_P99_MS)
        verdict = "PASS" if passed == len(rows) else "MISS"
        print(
            f"target: stream p99 < {TARGET_P99_MS:g} ms at {plan.accounts:,} accounts, few cross, to {stage}:"
            f" {verdict} in {passed} of {len(rows)} runs (max {_ms(max(r[column] for r in rows))} ms)"
        )


async def parent(quick: bool, only: tuple[int, str | None] | None = None, repeat: int = 1) -> None:
    """Every configuration (or ``only`` one count, in one or both modes), one after another; the tables."""
    counts = (1, 100) if quick else (1, 100, 1_000)
    stream_rounds = {1: 10, 100: 2} if quick else {1: 50, 100: 5, 1_000: 3}
    poll_rounds = {1: 1, 100: 1} if quick else {1: 3, 100: 2, 1_000: 2}
    window_s = 5.0 if quick else 20.0
    stop_timeout_s = 3.0 if quick else STOP_TIMEOUT_S
    plans = [
        Plan(
            count,
            mode,
            (stream_rounds if mode == "stream" else poll_rounds)[count],
            window_s,
            cover_reconcile=not quick,
            stop_timeout_s=stop_timeout_s,
        )
        for count in counts
        for mode in ("stream", "poll")
        if only is None or (only[0] == count and only[1] in (None, mode))
        for _ in range(repeat)
    ]
    print(f"margin-monitor bench/streams.py{' --quick' if quick else ''}")
    print(f"python {platform.python_version()}, {_versions()}")
    print(f"{platform.platform()}, {os.cpu_count()} CPUs")
    print(
        f"{POSITIONS} positions an account (BTC ETH SOL BNB XRP), marks pushed every {PUSH_S:g} s;"
        f" poll mode every {POLL_S:g} s; stream mode reconciles every {RECONCILE_S:g} s"
    )
    with mosquitto() as broker, tempfile.TemporaryDirectory(prefix="bench-streams-") as directory:
        async with subscribed(broker) as subscriber:
            results = [await run_config(plan, broker, subscriber, Path(directory)) for plan in plans]
    if repeat > 1:
        print_repeats(results)
    else:
        print_report(results)


def main() -> None:
    """Dispatch on ``--role``: the parent prints the table; the children serve it."""
    started = time.time()
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="1 and 100 accounts, fewer crossings")
    parser.add_argument(
        "--only",
        metavar="COUNT[:MODE]",
        help="one configuration of the full run, e.g. 1000:stream (or 1000 for both modes)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        metavar="N",
        help="with --only COUNT:MODE, run it N times and print each run's p99s with min/median/max",
    )
    parser.add_argument(
        "--role", choices=("parent", "sim", "daemon"), default="parent", help=argparse.SUPPRESS
    )
    parser.add_argument("--accounts", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=("stream", "poll"), default="stream", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--ws", help=argparse.SUPPRESS)
    parser.add_argument("--broker-port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--state-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "sim":
        asyncio.run(sim_role(args.accounts))
    elif args.role == "daemon":
        with Path(os.devnull).open("w", encoding="utf-8") as sink:
            asyncio.run(daemon_role(args, started, sink))
    else:
        only = None
        if args.only:
            count, _, mode = str(args.only).partition(":")
            if not count.isdigit() or mode not in ("", "stream", "poll"):
                parser.error(f"--only: expected COUNT[:stream|poll], got {args.only!r}")
            only = (int(count), mode or None)
        if args.repeat < 1 or (args.repeat > 1 and (only is None or only[1] is None)):
            parser.error("--repeat N: N >= 1, and more than 1 only with --only COUNT:MODE")
        asyncio.run(parent(args.quick, only, args.repeat))


if __name__ == "__main__":
    main()
