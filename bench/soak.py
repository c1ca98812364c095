"""Soak: the real daemon against the simulator, 50 accounts, under a schedule of faults.

``.venv/bin/python bench/soak.py --minutes 3`` (CI) or ``--minutes 30`` (the long run). This process
hosts the simulated exchange (``SimServer``, 50 ``bulk_accounts``, the ``crash-recovery`` scenario
replayed in cycles), the fake Telegram Bot API, a Mosquitto broker and an MQTT subscriber; the daemon
is ``margin-monitor run`` in its own process, so it can be SIGKILLed and started again.

Each cycle of the scenario injects, at fixed offsets: REST 500/503 bursts, 429 and 418 with
``Retry-After``, malformed JSON and missing fields, timestamp errors (-1021), dropped websockets, an
SIGKILL of the daemon and its restart (first cycle only, so the last process lives long enough for its
memory to mean something), expired listen keys, stalled websockets, Telegram answering 429 and 5xx,
Mosquitto stopped and started again, and last a stall: every REST request hangs and the websockets
go quiet for longer than ``stale_after_polls`` intervals.

Checks (the exit code is 1 when one fails):

- **missed alerts**: from the simulator's own figures, sampled four times a second, each account's
  level as the alert engine defines it (a worse level at once; a better one only past the hysteresis)
  gives level episodes. An episode must be alerted when it differs from the level before it, lasted at
  least ``MIN_EPISODE_POLLS`` poll intervals with the daemon up and not stalled, and no reading in it
  sat within ``AMBIGUOUS_PCT`` of a boundary (the daemon and the simulator compute independently). It
  counts as alerted on a channel when an alert for that account with that level (firing, recovered,
  restored or repeat) reached the channel within the episode. A crash straight past several
  thresholds is one episode at the worst level: only that level is owed, as the README's "Alerts"
  says.
- **duplicates**: receivers drop repeated ids (at-least-once delivery repeats some after a SIGKILL;
  the table reports how many); after that, two alerts of one kind and level in a row for one key
  are a duplicate the ids did not catch.
- **blind**: every account is reported ``blind`` (``account.blind``) within 2 poll intervals after
  its data is ``stale_after_polls`` intervals old, for every stall.
- **tracebacks**: no exception or traceback in the daemon's output.
- **memory**: the last daemon process's RSS at its start (after a warm-up) and at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import re
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

# Run as a file: the project, and the broker and fakes the tests use, importable without installing.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import aiomqtt
from monitor.alerts.engine import AlertPolicy
from monitor.alerts.model import severity
from monitor.sim import SimServer
from monitor.sim.accounts import bulk_accounts
from monitor.sim.scenarios import ScenarioPlayer

from fakes.telegram import FakeTelegram
from mosquitto import MosquittoBroker

if TYPE_CHECKING:
    from collections.abc import Iterable

ACCOUNTS = 50
POLL_INTERVAL_S = 2.0
STALE_AFTER_POLLS = 3
TICK_S = 1.0
SCENARIO = "crash-recovery"
CHAT_ID = 4242
BOT_TOKEN = "777000:soak-token-never-logged"  # noqa: S105 - the fake's token
MQTT_PREFIX = "soak"
#: An episode shorter than this many poll intervals may pass between two reads: not owed.
MIN_EPISODE_POLLS = 2.5
#: Readings this close (in percentage points) to a level boundary are ambiguous between two engines.
AMBIGUOUS_PCT = 0.2
#: How long after an episode ends its alert may still arrive (outbox retries, a restart).
DELIVERY_SLACK_S = 20.0
#: Memory growth accepted between the last daemon's start and the end of the run.
RSS_GROWTH_LIMIT = 1.25
RSS_GROWTH_SLACK_MB = 25.0
RSS_WARMUP_S = 20.0
POLICY = AlertPolicy()
RATIO_KINDS = {"firing", "recovered", "restored", "repeat"}


@dataclass(frozen=True, slots=True)
class Window:
    """A stretch of time (Unix seconds) when the daemon could not see: a kill or a stall."""

    start: float
    end: float
    why: str


@dataclass(frozen=True, slots=True)
class Episode:
    """An account's level held from ``start`` to ``end`` in the simulator's truth."""

    account: str
    level: str
    start: float
    end: float
    ambiguous: bool


@dataclass
class Daemon:
    """The daemon process, restarted after each SIGKILL; its output parsed as it comes."""

    config: Path
    log_file: Path
    env: dict[str, str]
    process: asyncio.subprocess.Process | None = None
    started_at: float = 0.0
    lines: list[dict[str, Any]] = field(default_factory=list)
    tracebacks: list[str] = field(default_factory=list)
    unexpected_exits: list[int] = field(default_factory=list)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    _readers: list[asyncio.Task[None]] = field(default_factory=list)
    _killing: bool = False

    async def start(self) -> None:
        """Start ``margin-monitor run`` and read its stdout and stderr into the log."""
        self.ready = asyncio.Event()
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "monitor",
            "run",
            "--config",
            str(self.config),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=self.env,
        )
        self.started_at = time.time()
        stdout, stderr = self.process.stdout, self.process.stderr
        if stdout is None or stderr is None:  # pragma: no cover - both are pipes, as asked above
            raise RuntimeError("the daemon's output is not piped")
        self._readers = [
            asyncio.create_task(self._read(stdout, "stdout")),
            asyncio.create_task(self._read(stderr, "stderr")),
            asyncio.create_task(self._watch(self.process)),
        ]

    async def _read(self, stream: asyncio.StreamReader, name: str) -> None:
        with self.log_file.open("a", encoding="utf-8") as out:
            async for raw in stream:
                text = raw.decode("utf-8", "replace").rstrip("\n")
                out.write(f"{name}: {text}\n")
                try:
                    line = json.loads(text)
                except ValueError:
                    line = None
                if not isinstance(line, dict):
                    if "Traceback" in text or re.search(r"^\w+(Error|Exception)\b", text):
                        self.tracebacks.append(text)
                    continue
                self.lines.append(line)
                if "exception" in line or "exc_info" in line:
                    self.tracebacks.append(text[:300])
                if line.get("event") == "daemon.started":
                    self.ready.set()

    async def _watch(self, process: asyncio.subprocess.Process) -> None:
        code = await process.wait()
        if not self._killing:
            self.unexpected_exits.append(code)

    async def kill(self) -> None:
        """SIGKILL: no shutdown, no flush; the outbox and the alert state must carry over."""
        if self.process is None:
            return
        self._killing = True
        self.process.send_signal(signal.SIGKILL)
        await self.process.wait()
        await asyncio.gather(*self._readers, return_exceptions=True)
        self._killing = False

    async def stop(self) -> None:
        """SIGTERM, as systemd stops it."""
        if self.process is None or self.process.returncode is not None:
            return
        self._killing = True
        self.process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.process.wait(), 15)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()
        await asyncio.gather(*self._readers, return_exceptions=True)

    def rss_mb(self) -> float | None:
        """Resident memory of the running process, from /proc."""
        if self.process is None or self.process.returncode is not None:
            return None
        try:
            status = Path(f"/proc/{self.process.pid}/status").read_text(encoding="utf-8")
        except OSError:
            return None
        match = re.search(r"VmRSS:\s+(\d+) kB", status)
        return int(match[1]) / 1024 if match else None


@dataclass
class MqttReceiver:
    """Subscribes to every account's alert topic, reconnecting whenever the broker goes away."""

    port: int
    received: list[dict[str, Any]] = field(default_factory=list)
    connected: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        """Receive until cancelled."""
        while True:
            try:
                async with aiomqtt.Client(
                    "127.0.0.1", self.port, identifier="soak-receiver", clean_session=False
                ) as client:
                    await client.subscribe(f"{MQTT_PREFIX}/+/alert", qos=1)
                    self.connected.set()
                    async for message in client.messages:
                        payload = message.payload
                        if isinstance(payload, bytes | bytearray):
                            self.received.append(json.loads(payload))
            except aiomqtt.MqttError:
                self.connected.clear()
                await asyncio.sleep(0.1)


def write_config(directory: Path, sim: SimServer, telegram_url: str, mqtt_port: int) -> dict[str, str]:
    """The daemon's configuration file; returns the environment holding the keys it names."""
    env = {"SOAK_BOT_TOKEN": BOT_TOKEN}
    lines = [
        "[alerts]",
        f"stale_after_polls = {STALE_AFTER_POLLS}",
        "",
        "[daemon]",
        f'state_dir = "{directory / "state"}"',
        'log_format = "json"',
        "reconcile_s = 10",
        # Any free port: a soak beside a running daemon (or CI beside another) must not collide on 9778.
        'http_listen = "127.0.0.1:0"',
    ]
    for index, account in enumerate(sorted(sim.accounts.values(), key=lambda a: a.name)):
        env[f"SOAK_KEY_{index}"] = account.api_key
        env[f"SOAK_SECRET_{index}"] = account.secret
        lines += [
            "",
            "[[accounts]]",
            f'name = "{account.name}"',
            'exchange = "binanceusdm"',
            f'api_key_env = "SOAK_KEY_{index}"',
            f'secret_env = "SOAK_SECRET_{index}"',
            f'base_url = "{sim.base_url}"',
            f'ws_url = "{sim.ws_url}"',
            f"poll_interval_s = {POLL_INTERVAL_S}",
        ]
    lines += [
        "",
        "[[channels]]",
        'type = "telegram"',
        'bot_token_env = "SOAK_BOT_TOKEN"',
        f"chat_ids = [{CHAT_ID}]",
        f'api_url = "{telegram_url}"',
        'min_level = "ok"',
        "min_interval_s = 0.02",
        "commands = false",
        "",
        "[[channels]]",
        'type = "mqtt"',
        'host = "127.0.0.1"',
        f"port = {mqtt_port}",
        f'topic_prefix = "{MQTT_PREFIX}"',
        "discovery = false",
    ]
    (directory / "soak.toml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return env


class Truth:
    """Each account's level from the simulator's own figures, with the alert engine's hysteresis."""

    def __init__(self, sim: SimServer) -> None:
        self.sim = sim
        self.samples: dict[str, list[tuple[float, str, bool]]] = {a.name: [] for a in sim.accounts.values()}
        self._level: dict[str, str] = dict.fromkeys(self.samples, "ok")

    def sample(self) -> None:
        """Read every account's ratio now."""
        now = time.time()
        for account in self.sim.accounts.values():
            ratio = self.sim.figures(account.api_key).margin_ratio
            current = self._level[account.name]
            raw = POLICY.level_of(ratio)
            if severity(raw) > severity(current):
                current = raw
            elif severity(raw) < severity(current):
                sticky = POLICY.level_of(ratio, shift=POLICY.hysteresis)
                if severity(sticky) < severity(current):
                    current = sticky
            self._level[account.name] = current
            self.samples[account.name].append((now, current, _ambiguous(ratio)))

    def episodes(self) -> list[Episode]:
        """Level episodes of every account, in time order."""
        found: list[Episode] = []
        for name, samples in self.samples.items():
            start = 0
            for index in range(1, len(samples) + 1):
                if index == len(samples) or samples[index][1] != samples[start][1]:
                    end = samples[index][0] if index < len(samples) else samples[-1][0]
                    ambiguous = any(item[2] for item in samples[start:index])
                    found.append(Episode(name, samples[start][1], samples[start][0], end, ambiguous))
                    start = index
        return found


def _ambiguous(ratio: float | None) -> bool:
    if ratio is None:
        return False
    bounds = [1.0, *POLICY.thresholds]
    bounds += [bound + POLICY.hysteresis for bound in bounds]
    return any(abs(ratio - bound) * 100 < AMBIGUOUS_PCT for bound in bounds)


def owed(episodes: list[Episode], blackouts: list[Window]) -> list[Episode]:
    """The episodes an alert is owed for (see the module docstring)."""
    result: list[Episode] = []
    previous: dict[str, str] = {}
    for episode in episodes:
        before = previous.get(episode.account)
        previous[episode.account] = episode.level
        if before is None or before == episode.level or episode.ambiguous:
            continue
        visible = episode.end - episode.start
        for window in blackouts:
            visible -= max(0.0, min(episode.end, window.end) - max(episode.start, window.start))
        if visible >= MIN_EPISODE_POLLS * POLL_INTERVAL_S:
            result.append(episode)
    return result


def timestamp(line: dict[str, Any]) -> float:
    """A log line's time as Unix seconds."""
    text = str(line.get("timestamp", ""))
    try:
        return dt.datetime.fromisoformat(text).timestamp()
    except ValueError:
        return 0.0


@dataclass
class Deliveries:
    """What one channel's receiver saw: every delivery's id, and the alerts behind the distinct ones."""

    name: str
    ids: list[str]

    @property
    def repeated(self) -> int:
        """Deliveries dropped as repeats of an id already seen."""
        return len(self.ids) - len(set(self.ids))


def semantic_duplicates(ids: Iterable[str], index: dict[str, dict[str, Any]]) -> int:
    """Alerts of one kind and level in a row for one key, after dropping repeated ids."""
    last: dict[str, tuple[str, str]] = {}
    found = 0
    for alert_id in sorted(set(ids), key=lambda i: index.get(i, {}).get("created_at", 0.0)):
        alert = index.get(alert_id)
        if alert is None or alert.get("kind") not in {"firing", "recovered", "restored", "blind"}:
            continue
        key = str(alert.get("key") or alert.get("account"))
        mark = (str(alert["kind"]), str(alert.get("level")))
        if last.get(key) == mark and mark[0] != "blind":
            found += 1
        last[key] = mark
    return found


def missed(episodes: list[Episode], ids: Iterable[str], index: dict[str, dict[str, Any]]) -> list[Episode]:
    """Owed episodes no alert on this channel answers."""
    by_account: dict[str, list[dict[str, Any]]] = {}
    for alert_id in set(ids):
        alert = index.get(alert_id)
        if alert is not None and alert.get("kind") in RATIO_KINDS and not alert.get("key_is_position"):
            by_account.setdefault(str(alert.get("account")), []).append(alert)
    result = []
    for episode in episodes:
        alerts = by_account.get(episode.account, [])
        if not any(
            alert.get("level") == episode.level
            and episode.start - 2.0 <= float(alert["created_at"]) <= episode.end + DELIVERY_SLACK_S
            for alert in alerts
        ):
            result.append(episode)
    return result


class Soak:
    """The run: set-up, the fault schedule, the checks."""

    def __init__(self, minutes: float, directory: Path) -> None:
        self.minutes = minutes
        self.directory = directory
        self.blackouts: list[Window] = []
        self.stalls: list[Window] = []
        self.faults_done: list[str] = []
        self.rss: list[tuple[int, float, float]] = []

    async def run(self) -> int:
        """Everything; returns the exit code."""
        broker = MosquittoBroker(self.directory / "mosquitto")
        broker.directory.mkdir()
        await asyncio.to_thread(broker.start)
        receiver = MqttReceiver(broker.port)
        receiving = asyncio.create_task(receiver.run())
        try:
            async with (
                SimServer(
                    scenario="flat", accounts=bulk_accounts(ACCOUNTS, positions=2), tick_s=TICK_S
                ) as sim,
                FakeTelegram(chats={CHAT_ID}, token=BOT_TOKEN) as telegram,
            ):
                return await self._run(sim, telegram, broker, receiver)
        finally:
            receiving.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await receiving
            await asyncio.to_thread(broker.stop)

    async def _run(
        self, sim: SimServer, telegram: FakeTelegram, broker: MosquittoBroker, receiver: MqttReceiver
    ) -> int:
        env = write_config(self.directory, sim, telegram.url, broker.port)
        daemon = Daemon(self.directory / "soak.toml", self.directory / "daemon.log", {**os.environ, **env})
        truth = Truth(sim)
        await asyncio.wait_for(receiver.connected.wait(), 10)
        await daemon.start()
        await asyncio.wait_for(daemon.ready.wait(), 60)
        await asyncio.sleep(3 * POLL_INTERVAL_S)  # every account read once, streams subscribed
        started = time.time()
        initial = dict(sim.marks)
        driver = next(iter(sim.accounts.values()))
        cycle_s = ScenarioPlayer(SCENARIO, driver, initial).length * TICK_S
        cycles = max(1, int((self.minutes * 60 - 75) // cycle_s))
        print(f"soak: {len(sim.accounts)} accounts, {cycles} cycle(s) of {cycle_s:.0f} s", flush=True)
        sampler = asyncio.create_task(self._sample(truth, daemon))
        try:
            for cycle in range(cycles):
                sim.player = ScenarioPlayer(SCENARIO, driver, initial)
                await self._cycle(cycle, sim, telegram, broker, daemon, time.time())
            await self._drain(daemon, telegram, receiver)
        finally:
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
            await daemon.stop()
        return self.report(truth, daemon, telegram, receiver, time.time() - started)

    async def _sample(self, truth: Truth, daemon: Daemon) -> None:
        next_rss = 0.0
        while True:
            truth.sample()
            if time.monotonic() >= next_rss:
                rss = daemon.rss_mb()
                if rss is not None and daemon.process is not None:
                    self.rss.append((daemon.process.pid, time.time() - daemon.started_at, rss))
                next_rss = time.monotonic() + 5
            await asyncio.sleep(0.25)

    async def _at(self, start: float, offset: float) -> None:
        await asyncio.sleep(max(0.0, start + offset - time.time()))

    async def _cycle(
        self,
        cycle: int,
        sim: SimServer,
        telegram: FakeTelegram,
        broker: MosquittoBroker,
        daemon: Daemon,
        start: float,
    ) -> None:
        faults = sim.faults
        await self._at(start, 5)
        faults.inject("http_500", 40)
        faults.inject("http_503", 20)
        await self._at(start, 12)
        faults.inject("rate_limit", 10, retry_after_s=2)
        faults.inject("ban", 5, retry_after_s=2)
        await self._at(start, 18)
        faults.inject("malformed_json", 15, path="/fapi/v3/account")
        faults.inject("missing_field", 15, path="/fapi/v3/account", field="totalMaintMargin")
        faults.inject("missing_field", 10, path="/fapi/v3/positionRisk", field="entryPrice")
        await self._at(start, 24)
        faults.inject("timestamp", 10)
        await self._at(start, 30)
        await sim.drop_websockets()
        await self._at(start, 36)
        # Kept short: the dispatcher's backoff counts every failed attempt of an alert, the 429s too,
        # and a channel delivers oldest first; a longer burst only delays the rest of the run.
        telegram.fail_next(429, retry_after=1, route="sendMessage", times=2)
        telegram.fail_next(500, route="sendMessage", times=2)
        telegram.fail_next(502, route="sendMessage", times=1)
        if cycle == 0:
            await self._at(start, 40)
            killed = time.time()
            await daemon.kill()
            await daemon.start()
            await asyncio.wait_for(daemon.ready.wait(), 60)
            self.blackouts.append(Window(killed, time.time() + POLL_INTERVAL_S, "sigkill"))
        await self._at(start, 50)
        for account in list(sim.accounts.values())[:10]:
            await sim.expire_listen_key(account.api_key)
        await self._at(start, 56)
        sim.stall_websockets()
        await self._at(start, 64)
        sim.unstall_websockets()
        await asyncio.to_thread(broker.stop)
        await self._at(start, 72)
        await asyncio.to_thread(broker.start)
        await self._at(start, 92)
        await self._stall(sim)
        self.faults_done.append(f"cycle {cycle}")

    async def _stall(self, sim: SimServer) -> None:
        """Every REST request hangs and the websockets go quiet: every account must turn blind."""
        hold = (STALE_AFTER_POLLS + 3) * POLL_INTERVAL_S
        began = time.time()
        sim.faults.inject("timeout", 1_000_000, hang_s=hold)
        sim.stall_websockets()
        await asyncio.sleep(hold)
        sim.faults.clear()
        sim.unstall_websockets()
        self.stalls.append(Window(began, time.time(), "stall"))
        self.blackouts.append(Window(began, time.time() + 3 * POLL_INTERVAL_S, "stall"))
        # Requests already hanging answer only after hold_s: let every account read again.
        await asyncio.sleep(hold)

    async def _drain(self, daemon: Daemon, telegram: FakeTelegram, receiver: MqttReceiver) -> None:
        """Wait until Telegram and MQTT have every alert the log has (at most a minute)."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            logged = {str(line["alert_id"]) for line in daemon.lines if line.get("event") == "alert"}
            if logged <= set(telegram_ids(telegram)) and logged <= {
                str(m.get("id")) for m in receiver.received
            }:
                return
            await asyncio.sleep(1)

    def report(
        self, truth: Truth, daemon: Daemon, telegram: FakeTelegram, receiver: MqttReceiver, seconds: float
    ) -> int:
        """Print the table; return 0 when every check passed."""
        index: dict[str, dict[str, Any]] = {}
        for message in receiver.received:
            index[str(message.get("id"))] = {
                **message,
                "key_is_position": message.get("key") != message.get("account"),
            }
        logged_ids: list[str] = []
        for line in daemon.lines:
            if line.get("event") == "alert":
                alert_id = str(line["alert_id"])
                logged_ids.append(alert_id)
                index.setdefault(alert_id, {**line, "id": alert_id, "key_is_position": bool(line.get("key"))})
        channels = [
            Deliveries("log", logged_ids),
            Deliveries("telegram", telegram_ids(telegram)),
            Deliveries("mqtt", [str(m.get("id")) for m in receiver.received]),
        ]
        episodes = truth.episodes()
        must = owed(episodes, self.blackouts)
        crossings = [e for e in episodes if e.level != "ok"]
        failures: list[str] = []

        print()
        cycles = len(self.faults_done)
        print(f"soak: {seconds / 60:.1f} min, {len(truth.samples)} accounts, {cycles} fault cycle(s)")
        print(
            f"threshold crossings in the truth (levels entered): {len(crossings)}; alerts owed: {len(must)}"
        )
        print()
        header = ("owed", "missed", "delivered", "distinct", "repeats dropped", "duplicates")
        print(f"{'channel':<10}" + "".join(f" {name:>{max(len(name), 7)}}" for name in header))
        for channel in channels:
            lost = missed(must, channel.ids, index)
            duplicates = semantic_duplicates(channel.ids, index)
            row = (
                len(must),
                len(lost),
                len(channel.ids),
                len(set(channel.ids)),
                channel.repeated,
                duplicates,
            )
            cells = zip(header, row, strict=True)
            print(f"{channel.name:<10}" + "".join(f" {value:>{max(len(name), 7)}}" for name, value in cells))
            if lost:
                failures.append(f"{channel.name}: {len(lost)} missed, e.g. {lost[0]}")
            if duplicates:
                failures.append(f"{channel.name}: {duplicates} duplicates after dropping repeated ids")

        blind_late = self._blind_check(daemon, list(truth.samples))
        print()
        print(f"stalls injected: {len(self.stalls)}; accounts not reported blind in time: {len(blind_late)}")
        failures += blind_late[:5]
        print(f"tracebacks / exceptions in the daemon's output: {len(daemon.tracebacks)}")
        if daemon.tracebacks:
            failures.append(f"tracebacks: {daemon.tracebacks[0][:200]}")
        if daemon.unexpected_exits:
            failures.append(f"the daemon exited by itself: {daemon.unexpected_exits}")
        failures += self._memory()
        print()
        for failure in failures:
            print(f"FAIL {failure}")
        print(
            "soak: ok" if not failures else f"soak: {len(failures)} check(s) failed (log: {daemon.log_file})"
        )
        return 0 if not failures else 1

    def _blind_check(self, daemon: Daemon, accounts: list[str]) -> list[str]:
        late: list[str] = []
        bound = (STALE_AFTER_POLLS + 2) * POLL_INTERVAL_S
        blind = [
            (str(line.get("account")), timestamp(line))
            for line in daemon.lines
            if line.get("event") == "account.blind"
        ]
        for stall in self.stalls:
            for name in accounts:
                times = [
                    at for account, at in blind if account == name and stall.start <= at <= stall.end + 1
                ]
                if not times or min(times) - stall.start > bound:
                    got = f"{min(times) - stall.start:.1f} s" if times else "never"
                    late.append(f"{name} blind {got} after the stall began (bound {bound:.0f} s)")
        return late

    def _memory(self) -> list[str]:
        """RSS of the last daemon process: after its warm-up, and at the end."""
        last = self.rss[-1][0] if self.rss else None
        settled = [rss for pid, age, rss in self.rss if pid == last and age >= RSS_WARMUP_S]
        if len(settled) < 2:
            print("resident memory: the last daemon process lived too briefly to measure")
            return []
        first, end = settled[0], settled[-1]
        print(
            f"resident memory of the last daemon process: {first:.1f} MB after warm-up, {end:.1f} MB at end"
        )
        if end > first * RSS_GROWTH_LIMIT + RSS_GROWTH_SLACK_MB:
            return [f"memory grew from {first:.1f} MB to {end:.1f} MB"]
        return []


def telegram_ids(telegram: FakeTelegram) -> list[str]:
    """The alert ids in the messages the fake Telegram accepted (the footer says ``id: ...``)."""
    ids = []
    for message in telegram.sent:
        match = re.search(r"id: (\S+)", str(message.get("plain", "")))
        if match:
            ids.append(match[1])
    return ids


def main() -> int:
    """Parse the options and run the soak."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--minutes", type=float, default=3.0, help="length of the run (default 3)")
    parser.add_argument("--keep", action="store_true", help="keep the working directory (logs, state)")
    args = parser.parse_args()
    directory = Path(tempfile.mkdtemp(prefix="margin-monitor-soak-"))
    code = asyncio.run(Soak(args.minutes, directory).run())
    if not args.keep and code == 0:
        import shutil  # noqa: PLC0415 - only at the end

        shutil.rmtree(directory, ignore_errors=True)
    elif code:
        print(f"soak: kept {directory}")
    return code


if __name__ == "__main__":
    sys.exit(main())
