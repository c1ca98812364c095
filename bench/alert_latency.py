"""Benchmark: time from an assessment crossing a threshold to the alert at Mosquitto, and the parts of it.

Each sample starts a clock, hands one item to a *stage* (``MqttChannel.send``, ``MqttChannel.publish_state``,
or, as the baseline, a bare aiomqtt QoS 1 publish) and stops it when a subscriber on the same broker receives
that item. ``send`` is also timed to its return (the broker's PUBACK). Samples run one after another (the
paths take turns), after a warm-up; the table gives p50 / p99 / max in milliseconds and p50 against the
baseline's.

A stage is ``async (sample number) -> key``: it hands the item over and returns the key the subscriber will
find in the payload (the alert id, or the state's ``seq``).

The full path of issue 4 ("an assessment that crosses a threshold -> the alert at Mosquitto") takes its turn
with the others: the clock starts before ``assess()`` of an account at 125% (danger), then the daemon's own
steps run as ``Daemon`` runs them (``publish_state``, then ``Alerting.assessed``), with a real ``Dispatcher``
(``Outbox`` in a temporary state directory, ``run()`` as a task), the ``log`` channel every deployment has and
a real ``MqttChannel``; it stops when the subscriber has the alert on ``<prefix>/<account>/alert``. It is
broken down into stages, and run a second time without the log channel. Last, a burst of alerts through
``Dispatcher.submit`` gives the dispatcher's throughput to the subscriber.

Run ``.venv/bin/python bench/alert_latency.py`` (``--count 2000`` by default, ``--quick`` for 200).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

# Run as a file (``python bench/alert_latency.py``): make the project importable without installing it.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiomqtt
from monitor.alerts.engine import AlertPolicy
from monitor.alerts.model import Alert, AlertKind, PositionAtRisk, SuggestedAction
from monitor.brackets import bundled_tiers
from monitor.notify.dispatcher import Dispatcher
from monitor.notify.log import LogChannel
from monitor.notify.mqtt import MqttChannel, MqttSettings
from monitor.notify.mqtt import state_fields as mqtt_state_fields
from monitor.notify.outbox import Outbox
from monitor.risk import DEFAULT_THRESHOLDS, AccountSnapshot, Position, Side, assess
from monitor.service.alerting import Alerting
from monitor.service.logs import configure_logging

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

    from monitor.notify.base import Channel
    from monitor.risk import TierTable

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
HOST = "127.0.0.1"
PREFIX = "bench"
TARGET_P99_MS = 10.0
WARMUP = 100
RECEIVE_TIMEOUT_S = 5.0
#: The account whose assessments cross a threshold, and the margin ratio it is put at (danger: <= 130%).
ACCOUNT = "main"
EXCHANGE = "binanceusdm"
CROSSING_RATIO = 1.25

#: Hands sample ``i`` over and returns the key its payload carries (see the module docstring).
Stage: TypeAlias = "Callable[[int], Awaitable[str]]"


@dataclass
class Timings:
    """Nanosecond samples of one path."""

    name: str
    to_subscriber: list[int] = field(default_factory=list)
    to_return: list[int] = field(default_factory=list)


class Subscriber:
    """A subscriber that notes when each key arrives (``perf_counter_ns`` at receipt).

    A key may arrive before anyone expects it (the alert id of a crossing is known only once the engine
    made the alert, and by then the dispatcher may have sent it): arrivals are kept until expected.
    """

    def __init__(self, client: aiomqtt.Client) -> None:
        self.client = client
        self.waiting: dict[str, asyncio.Future[int]] = {}
        self.arrived: dict[str, int] = {}

    def expect(self, key: str) -> asyncio.Future[int]:
        """A future that resolves to the arrival time of ``key``."""
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        if key in self.arrived:
            future.set_result(self.arrived.pop(key))
        else:
            self.waiting[key] = future
        return future

    async def run(self) -> None:
        """Receive until cancelled."""
        async for message in self.client.messages:
            arrived = time.perf_counter_ns()
            document = json.loads(message.payload)
            found = document.get("id", document.get("seq"))
            if found is None:  # a state without a bench ``seq``: the pipeline's, not timed
                continue
            key = str(found)
            future = self.waiting.pop(key, None)
            if future is None:
                self.arrived[key] = arrived
            elif not future.done():
                future.set_result(arrived)


@dataclass(frozen=True, slots=True)
class Broker:
    """A private Mosquitto: anonymous, on a free 127.0.0.1 port (never the system one on 1883)."""

    host: str
    port: int


@contextlib.contextmanager
def mosquitto() -> Iterator[Broker]:
    """Start Mosquitto with a generated config in a temporary directory; stop it on the way out."""
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port = int(probe.getsockname()[1])
    with tempfile.TemporaryDirectory(prefix="bench-mosquitto-") as directory:
        config = Path(directory) / "mosquitto.conf"
        lines = [f"listener {port} {HOST}", "allow_anonymous true", "persistence false", "log_type error"]
        if os.geteuid() == 0:
            lines.append("user root")  # else it drops to "mosquitto", which cannot read the temp dir
        config.write_text("\n".join(lines) + "\n", encoding="utf-8")
        process = subprocess.Popen([MOSQUITTO, "-c", str(config)], stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 5.0
            while True:
                try:
                    socket.create_connection((HOST, port), timeout=0.2).close()
                    break
                except OSError:
                    if process.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"mosquitto did not start on port {port}") from None
                    time.sleep(0.01)
            yield Broker(HOST, port)
        finally:
            process.terminate()
            process.wait(5.0)


def make_alert(alert_id: str) -> Alert:
    """A realistic danger alert (one position, a suggested action)."""
    return Alert(
        id=alert_id,
        kind=AlertKind.FIRING,
        account=ACCOUNT,
        exchange=EXCHANGE,
        key=ACCOUNT,
        level="danger",
        created_at=time.time(),
        previous_level="warning",
        margin_ratio_pct=128.4,
        threshold_pct=130.0,
        margin_balance=12_840.0,
        maintenance_margin=10_000.0,
        positions=(
            PositionAtRisk("BTC/USDT:USDT", "long", "cross", 95_000.0, 88_000.0, 7.4, 120.0, 93_100.0),
        ),
        action=SuggestedAction(target_ratio_pct=200.0, margin_to_add=7_160.0),
        summary="main at 128.4% (danger <= 130%)",
    )


def stage_key(name: str, index: int) -> str:
    """The key sample ``index`` of path ``name`` carries."""
    return f"{name}-{index}"


def send_stage(channel: MqttChannel) -> Stage:
    """``channel.send`` of one alert; returns after PUBACK."""

    async def stage(index: int) -> str:
        alert = make_alert(stage_key("send", index))
        await channel.send(alert)
        return alert.id

    return stage


def state_stage(channel: MqttChannel) -> Stage:
    """``channel.publish_state`` of one assessment; returns at once (the channel publishes in its task)."""

    async def stage(index: int) -> str:
        key = stage_key("state", index)
        fields = {
            "margin_ratio_pct": 182.4,
            "level": "ok",
            "margin_balance": 1e4,
            "maintenance_margin": 5482.5,
        }
        channel.publish_state(ACCOUNT, EXCHANGE, {**fields, "seq": key})
        return key

    return stage


def baseline_stage(client: aiomqtt.Client) -> Stage:
    """A bare aiomqtt QoS 1 publish of the same alert JSON: the floor the channel adds to."""

    async def stage(index: int) -> str:
        key = stage_key("baseline", index)
        payload = json.dumps(make_alert(key).to_dict(), separators=(",", ":"))
        await client.publish(f"{PREFIX}/{ACCOUNT}/alert", payload, qos=1)
        return key

    return stage


async def sample(name: str, stage: Stage, index: int, subscriber: Subscriber) -> tuple[int, int]:
    """One sample of ``stage``: nanoseconds until it returned and until the subscriber had the item."""
    key = stage_key(name, index)
    arrival = subscriber.expect(key)
    started = time.perf_counter_ns()
    returned_key = await stage(index)
    returned = time.perf_counter_ns()
    if returned_key != key:
        raise RuntimeError(f"stage {name} returned key {returned_key!r}, expected {key!r}")
    async with asyncio.timeout(RECEIVE_TIMEOUT_S):
        arrived = await arrival
    return returned - started, arrived - started


def percentile(samples: list[int], fraction: float) -> float:
    """The ``fraction`` quantile in milliseconds (nearest rank)."""
    ordered = sorted(samples)
    rank = min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))
    return ordered[rank] / 1e6


@contextlib.asynccontextmanager
async def subscribed(broker: Broker) -> AsyncIterator[Subscriber]:
    """A subscriber on the alert and state topics, receiving in the background."""
    async with aiomqtt.Client(broker.host, broker.port, timeout=RECEIVE_TIMEOUT_S) as client:
        await client.subscribe(f"{PREFIX}/+/alert", qos=1)
        await client.subscribe(f"{PREFIX}/+/state", qos=1)
        subscriber = Subscriber(client)
        task = asyncio.create_task(subscriber.run(), name="bench-subscriber")
        try:
            yield subscriber
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


# --- the full path: assessment -> engine -> outbox -> dispatcher -> MqttChannel -> subscriber ----------


def crossing_account() -> AccountSnapshot:
    """BTC and ETH cross longs on the bundled Binance brackets, the wallet set for a 125% margin ratio."""
    btc, eth = bundled_tiers("BTC/USDT:USDT"), bundled_tiers("ETH/USDT:USDT")
    if btc is None or eth is None:
        raise RuntimeError("the bundled Binance brackets lack BTCUSDT or ETHUSDT")

    def long(symbol: str, tiers: TierTable, contracts: float, entry: float, mark: float) -> Position:
        return Position(symbol, Side.LONG, contracts, entry, mark, tiers)

    positions = (
        long("BTC/USDT:USDT", btc, 12.0, 97_000.0, 94_500.0),
        long("ETH/USDT:USDT", eth, 150.0, 3_400.0, 3_250.0),
    )
    flat = assess(AccountSnapshot(0.0, positions), DEFAULT_THRESHOLDS)
    # margin balance = wallet + unrealized PnL; choose the wallet that puts it at CROSSING_RATIO x MM.
    wallet = CROSSING_RATIO * flat.maintenance_margin - flat.margin_balance
    account = AccountSnapshot(wallet, positions)
    level = assess(account, DEFAULT_THRESHOLDS).level.value
    if level != "danger":
        raise RuntimeError(f"the crossing account assesses as {level}, expected danger")
    return account


class StrictlyLaterClock:
    """``time.time``, but at least 1 ms after its previous answer.

    Alert ids hash the key, kind, level and the time in milliseconds (``monitor.alerts.engine.alert_id``),
    and the outbox drops an id it already holds: two crossings of one account within a millisecond,
    which only a benchmark produces, would otherwise make one alert.
    """

    def __init__(self) -> None:
        self._last = 0.0

    def __call__(self) -> float:
        """Now, or 1 ms after the previous answer if that is later."""
        self._last = max(time.time(), self._last + 0.001)
        return self._last


@dataclass
class Probe:
    """``perf_counter_ns`` marks the timed submitter and channel leave, by alert id."""

    submitted: dict[str, int] = field(default_factory=dict)
    stored: dict[str, int] = field(default_factory=dict)
    send_started: dict[str, int] = field(default_factory=dict)
    acked: dict[str, asyncio.Future[int]] = field(default_factory=dict)
    #: Nanoseconds the engine's state file writes took since the last ``take_saving``.
    saving: int = 0

    def take_saving(self) -> int:
        """The state file time gathered so far, and start again from 0."""
        saving, self.saving = self.saving, 0
        return saving

    def acked_future(self, alert_id: str) -> asyncio.Future[int]:
        """Resolves to when ``MqttChannel.send`` of ``alert_id`` returned (PUBACK)."""
        if alert_id not in self.acked:
            self.acked[alert_id] = asyncio.get_running_loop().create_future()
        return self.acked[alert_id]

    def forget(self, alert_id: str) -> None:
        """Drop the marks of ``alert_id``."""
        for marks in (self.submitted, self.stored, self.send_started, self.acked):
            marks.pop(alert_id, None)


class TimedSubmitter:
    """``Dispatcher.submit``, marking when the engine handed the alert over and when it was stored."""

    def __init__(self, dispatcher: Dispatcher, probe: Probe) -> None:
        self.dispatcher = dispatcher
        self.probe = probe

    async def submit(self, alert: Alert) -> None:
        """Store ``alert`` in the outbox through the dispatcher, marking before and after."""
        self.probe.submitted[alert.id] = time.perf_counter_ns()
        await self.dispatcher.submit(alert)
        self.probe.stored[alert.id] = time.perf_counter_ns()


class TimedAlerting(Alerting):
    """The real ``Alerting``, timing its state file writes (JSON, fsync, rename) apart from the engine."""

    probe: Probe

    async def _save(self) -> None:
        started = time.perf_counter_ns()
        await super()._save()
        self.probe.saving += time.perf_counter_ns() - started


class TimedMqttChannel(MqttChannel):
    """The real ``MqttChannel``, marking when the dispatcher called ``send`` and when it returned."""

    probe: Probe

    async def send(self, alert: Alert) -> None:
        """``MqttChannel.send``, marked."""
        self.probe.send_started[alert.id] = time.perf_counter_ns()
        await super().send(alert)
        future = self.probe.acked_future(alert.id)
        if not future.done():
            future.set_result(time.perf_counter_ns())


@dataclass
class Pipeline:
    """The daemon's alerting as ``monitor.service.app.Alerts`` wires it, in a temporary state directory."""

    name: str
    alerting: TimedAlerting
    dispatcher: Dispatcher
    channel: TimedMqttChannel
    probe: Probe
    state_dir: Path


@contextlib.asynccontextmanager
async def pipeline(name: str, broker: Broker, state_root: Path, *, with_log: bool) -> AsyncIterator[Pipeline]:
    """Outbox, channels (the log channel first, as ``build_channels`` puts it), dispatcher task, engine.

    On the way out: the dispatcher stops (``run`` returns), the MQTT channel closes, the outbox closes and
    the state directory goes.
    """
    state_dir = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=state_root))
    probe = Probe()
    channel = TimedMqttChannel(MqttSettings(broker.host, broker.port, topic_prefix=PREFIX), name="mqtt")
    channel.probe = probe
    channels: list[Channel] = [LogChannel(), channel] if with_log else [channel]
    outbox = Outbox.for_state_dir(state_dir)
    try:
        dispatcher = Dispatcher(outbox, channels)
        alerting = TimedAlerting(
            AlertPolicy(), TimedSubmitter(dispatcher, probe), state_dir, clock=StrictlyLaterClock()
        )
        alerting.probe = probe
        await channel.start()
        task = asyncio.create_task(dispatcher.run(), name=f"dispatcher[{name}]")
        try:
            async with asyncio.timeout(RECEIVE_TIMEOUT_S):
                await channel.wait_connected()
            yield Pipeline(name, alerting, dispatcher, channel, probe, state_dir)
        finally:
            await dispatcher.stop()
            async with asyncio.timeout(RECEIVE_TIMEOUT_S):
                await task
            await channel.close()
    finally:
        outbox.close()
        shutil.rmtree(state_dir, ignore_errors=True)


#: The stages of one crossing, in order; they add up to ``total``.
CROSSING_STAGES = ("assess", "engine", "store", "pickup", "to_subscriber", "state_file")


async def crossing(pipe: Pipeline, account: AccountSnapshot, subscriber: Subscriber) -> dict[str, int]:
    """One assessment crossing into danger, timed from before ``assess`` to the alert at the subscriber.

    The engine's state of the account is dropped first (untimed), so every sample is a fresh crossing
    from ok; the crossing then changes the level, and the engine's state file is written as in production.
    """
    pipe.alerting.states.pop(ACCOUNT, None)
    pipe.probe.take_saving()
    started = time.perf_counter_ns()
    assessment = assess(account, DEFAULT_THRESHOLDS)
    assessed = time.perf_counter_ns()
    # As Daemon._after_assessment: the MQTT state listener first (at most one state a second), then alerts.
    pipe.channel.publish_state(ACCOUNT, EXCHANGE, mqtt_state_fields(assessment))
    alerts = await pipe.alerting.assessed(ACCOUNT, EXCHANGE, assessment)
    if len(alerts) != 1 or alerts[0].kind is not AlertKind.FIRING:
        raise RuntimeError(f"expected one firing alert, the engine raised {[a.kind.value for a in alerts]}")
    alert_id = alerts[0].id
    async with asyncio.timeout(RECEIVE_TIMEOUT_S):
        arrived = await subscriber.expect(alert_id)
        # The MQTT worker is idle again before the next sample (its PUBACK, the outbox update, its log line).
        acked = await pipe.probe.acked_future(alert_id)
    probe = pipe.probe
    submitted, stored = probe.submitted[alert_id], probe.stored[alert_id]
    send_started = probe.send_started[alert_id]
    saving = probe.take_saving()
    probe.forget(alert_id)
    return {
        "assess": assessed - started,
        "engine": submitted - assessed,
        "state_file": saving,
        "store": stored - submitted,
        "pickup": send_started - stored,
        "to_subscriber": arrived - send_started,
        "total": arrived - started,
        "puback": acked - send_started,
    }


@dataclass(frozen=True, slots=True)
class Burst:
    """Alerts a second through a burst: stored (``submit`` returned) and at the subscriber."""

    stored_per_s: float
    delivered_per_s: float


async def dispatcher_burst(pipe: Pipeline, subscriber: Subscriber, count: int) -> Burst:
    """``count`` alerts submitted back to back, then delivered by the running dispatcher to the subscriber."""
    alerts = [make_alert(f"burst-{pipe.name}-{index}") for index in range(count)]
    arrivals = [subscriber.expect(alert.id) for alert in alerts]
    started = time.perf_counter_ns()
    for alert in alerts:
        await pipe.dispatcher.submit(alert)
    stored = time.perf_counter_ns()
    async with asyncio.timeout(RECEIVE_TIMEOUT_S + count / 100):
        last = max(await asyncio.gather(*arrivals))
    for alert in alerts:
        pipe.probe.forget(alert.id)
    return Burst(count / ((stored - started) / 1e9), count / ((last - started) / 1e9))


async def baseline_burst(client: aiomqtt.Client, subscriber: Subscriber, count: int) -> Burst:
    """The same alerts published by a bare aiomqtt client, one QoS 1 publish after another."""
    payloads = {
        f"burst-baseline-{index}": json.dumps(make_alert(f"burst-baseline-{index}").to_dict())
        for index in range(count)
    }
    arrivals = [subscriber.expect(key) for key in payloads]
    started = time.perf_counter_ns()
    for payload in payloads.values():
        await client.publish(f"{PREFIX}/{ACCOUNT}/alert", payload, qos=1)
    published = time.perf_counter_ns()
    async with asyncio.timeout(RECEIVE_TIMEOUT_S + count / 100):
        last = max(await asyncio.gather(*arrivals))
    return Burst(count / ((published - started) / 1e9), count / ((last - started) / 1e9))


# --- running and reporting ---------------------------------------------------------------------------


#: Pipeline variants: (name, with the log channel, row label).
PIPELINES = (
    ("deployed", True, "log + mqtt channels, as deployed"),
    ("mqtt-only", False, "mqtt channel only (no log channel)"),
)

Rows: TypeAlias = list[tuple[str, list[int]]]


@dataclass
class Results:
    """What ``run`` measured."""

    channel_rows: Rows
    pipeline_rows: dict[str, Rows]
    bursts: list[tuple[str, Burst]]


def crossing_rows(samples: dict[str, list[int]]) -> Rows:
    """The rows of one pipeline variant: each stage, the total, and the PUBACK aside."""
    labels = {
        "assess": "1 assess() (2 positions)",
        "engine": "2 + publish_state, alert engine",
        "store": "3 + outbox store (Dispatcher.submit)",
        "pickup": "4 + dispatcher picks up, calls send()",
        "to_subscriber": "5 + MqttChannel.send() -> subscriber",
        "total": "assessment -> subscriber (1-5)",
        "puback": "  (MqttChannel.send() -> PUBACK, beside 5)",
        "state_file": "  (alert state file after the store: JSON, fsync, rename, in a thread)",
    }
    return [(label, samples[key]) for key, label in labels.items()]


async def run(broker: Broker, count: int, state_root: Path) -> Results:
    """Every path's samples, baseline first; the paths take turns, so drift hits them alike."""
    # The state path is timed per state: the rate limit (1 s in production) is set out of the way.
    settings = MqttSettings(broker.host, broker.port, topic_prefix=PREFIX, state_interval_s=1e-4)
    channel = MqttChannel(settings, name="bench")
    timings = {name: Timings(name) for name in ("baseline", "send", "state")}
    crossings: dict[str, dict[str, list[int]]] = {
        name: {stage: [] for stage in (*CROSSING_STAGES, "total", "puback")} for name, _, _ in PIPELINES
    }
    account = crossing_account()
    async with contextlib.AsyncExitStack() as stack:
        subscriber = await stack.enter_async_context(subscribed(broker))
        raw = await stack.enter_async_context(
            aiomqtt.Client(broker.host, broker.port, timeout=RECEIVE_TIMEOUT_S)
        )
        pipes = [
            await stack.enter_async_context(pipeline(name, broker, state_root, with_log=with_log))
            for name, with_log, _ in PIPELINES
        ]
        await channel.start()
        stack.push_async_callback(channel.close)
        async with asyncio.timeout(RECEIVE_TIMEOUT_S):
            await channel.wait_connected()
        stages = {
            "baseline": baseline_stage(raw),
            "send": send_stage(channel),
            "state": state_stage(channel),
        }
        for index in range(-WARMUP, count):
            for name, stage in stages.items():
                to_return, to_subscriber = await sample(name, stage, index, subscriber)
                if index >= 0:
                    timings[name].to_return.append(to_return)
                    timings[name].to_subscriber.append(to_subscriber)
            for pipe in pipes:
                stages_ns = await crossing(pipe, account, subscriber)
                if index >= 0:
                    for stage_name, value in stages_ns.items():
                        crossings[pipe.name][stage_name].append(value)
        bursts = [
            (
                "baseline: aiomqtt, one QoS 1 publish after another",
                await baseline_burst(raw, subscriber, count),
            )
        ]
        for pipe, (_, _, label) in zip(pipes, PIPELINES, strict=True):
            bursts.append(
                (f"Dispatcher.submit x {count}, {label}", await dispatcher_burst(pipe, subscriber, count))
            )
    return Results(
        channel_rows=[
            ("baseline: aiomqtt publish QoS 1 -> subscriber", timings["baseline"].to_subscriber),
            ("MqttChannel.send() -> PUBACK (send returns)", timings["send"].to_return),
            ("MqttChannel.send() -> subscriber", timings["send"].to_subscriber),
            ("MqttChannel.publish_state() -> subscriber", timings["state"].to_subscriber),
        ],
        pipeline_rows={name: crossing_rows(crossings[name]) for name, _, _ in PIPELINES},
        bursts=bursts,
    )


def print_rows(rows: Rows, baseline_p50: float) -> None:
    """One table row a path: p50, p99, max and p50 against the baseline's."""
    for name, samples in rows:
        p50, p99 = percentile(samples, 0.50), percentile(samples, 0.99)
        print(f"{name:<52} {p50:>8.3f} {p99:>8.3f} {max(samples) / 1e6:>8.3f} {p50 / baseline_p50:>14.2f}x")


def report(results: Results, count: int, state_root: Path) -> None:
    """Print the tables and the target lines."""
    mosquitto_version = subprocess.run(
        [MOSQUITTO, "-h"], capture_output=True, text=True, check=False
    ).stdout.splitlines()[0]
    print(f"alert latency to Mosquitto on 127.0.0.1: {count} samples a path after {WARMUP} warm-up")
    print(f"python {platform.python_version()}, aiomqtt {aiomqtt.__version__}, {mosquitto_version}")
    print(f"{platform.platform()}, {platform.processor() or platform.machine()}")
    print(f"state directories (outbox, alert state file) under {state_root}")
    print("logging: the daemon's JSON pipeline (configure_logging) at INFO, written to os.devnull")
    print()
    baseline_p50 = percentile(results.channel_rows[0][1], 0.50)
    header = f"{'path':<52} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'p50 / baseline':>15}"
    print(header)
    print("-" * len(header))
    print_rows(results.channel_rows, baseline_p50)
    for name, _, label in PIPELINES:
        print(f"assessment crossing into danger -> subscriber, {label}:")
        print_rows(results.pipeline_rows[name], baseline_p50)
    print()
    print("stages 2-5 start where the previous one ended; each p99 is its own, so p99s do not add up")
    print()
    title = f"burst of {count} alerts"
    burst_header = f"{title:<68} {'stored/s':>9} {'at subscriber/s':>16} {'/ baseline':>11}"
    print(burst_header)
    print("-" * len(burst_header))
    baseline_rate = results.bursts[0][1].delivered_per_s
    for name, burst in results.bursts:
        print(
            f"{name:<68} {burst.stored_per_s:>9,.0f} {burst.delivered_per_s:>16,.0f}"
            f" {burst.delivered_per_s / baseline_rate:>10.2f}x"
        )
    print("(the outbox alone, add -> deliver with no network: bench/outbox.py)")
    print()
    p99 = percentile(results.channel_rows[2][1], 0.99)
    verdict = "PASS" if p99 < TARGET_P99_MS else "MISS"
    print(f"target: send() -> subscriber p99 < {TARGET_P99_MS:g} ms: {verdict} (p99 {p99:.3f} ms)")
    deployed = dict(results.pipeline_rows[PIPELINES[0][0]])
    p99 = percentile(deployed["assessment -> subscriber (1-5)"], 0.99)
    verdict = "PASS" if p99 < TARGET_P99_MS else "MISS"
    print(
        f"target: assessment -> Mosquitto p99 < {TARGET_P99_MS:g} ms: {verdict}"
        f" (p99 {p99:.3f} ms, as deployed)"
    )


def main(argv: list[str] | None = None) -> None:
    """Parse the arguments, start a private Mosquitto, measure, print."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--count", type=int, default=2000, help="timed samples per path (default 2000)")
    parser.add_argument("--quick", action="store_true", help="200 samples per path")
    parser.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="where the temporary state directories go (default: the temp dir)",
    )
    arguments = parser.parse_args(argv)
    count = 200 if arguments.quick else arguments.count
    # The log channel writes a line per alert, as in production; rendered, then thrown away.
    with open(os.devnull, "w", encoding="utf-8") as devnull:  # noqa: PTH123 - a stream for the log handler
        configure_logging("json", stream=devnull)
        with (
            tempfile.TemporaryDirectory(prefix="bench-alert-latency-", dir=arguments.dir) as state_root,
            mosquitto() as broker,
        ):
            results = asyncio.run(run(broker, count, Path(state_root)))
            report(results, count, Path(state_root))


if __name__ == "__main__":
    main()
