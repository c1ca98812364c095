"""Benchmark: time from the MQTT channel to a subscriber on the same Mosquitto, for alerts and states.

Each sample starts a clock, hands one item to a *stage* (``MqttChannel.send``, ``MqttChannel.publish_state``,
or, as the baseline, a bare aiomqtt QoS 1 publish) and stops it when a subscriber on the same broker receives
that item. ``send`` is also timed to its return (the broker's PUBACK). Samples run one after another (the
paths take turns), after a warm-up; the table gives p50 / p99 / max in milliseconds and p50 against the
baseline's.

A stage is ``async (sample number) -> key``: it hands the item over and returns the key the subscriber will
find in the payload (the alert id, or the state's ``seq``). To time a longer path, prepend a stage: for
example, one that feeds an assessment crossing a threshold to the alert engine and hands the alert it
returns to ``channel.send`` measures "assessment -> alert at Mosquitto" with the same harness.

Run ``.venv/bin/python bench/alert_latency.py`` (``--count 2000`` by default, ``--quick`` for 200).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
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
import structlog
from monitor.alerts.model import Alert, AlertKind, PositionAtRisk, SuggestedAction
from monitor.notify.mqtt import MqttChannel, MqttSettings

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
HOST = "127.0.0.1"
PREFIX = "bench"
TARGET_P99_MS = 10.0
WARMUP = 100
RECEIVE_TIMEOUT_S = 5.0

#: Hands sample ``i`` over and returns the key its payload carries (see the module docstring).
Stage: TypeAlias = "Callable[[int], Awaitable[str]]"


@dataclass
class Timings:
    """Nanosecond samples of one path."""

    name: str
    to_subscriber: list[int] = field(default_factory=list)
    to_return: list[int] = field(default_factory=list)


class Subscriber:
    """A subscriber that notes when each key arrives (``perf_counter_ns`` at receipt)."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self.client = client
        self.waiting: dict[str, asyncio.Future[int]] = {}

    def expect(self, key: str) -> asyncio.Future[int]:
        """A future that resolves to the arrival time of ``key``."""
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.waiting[key] = future
        return future

    async def run(self) -> None:
        """Receive until cancelled."""
        async for message in self.client.messages:
            arrived = time.perf_counter_ns()
            document = json.loads(message.payload)
            key = str(document.get("id", document.get("seq")))
            future = self.waiting.pop(key, None)
            if future is not None and not future.done():
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
        account="main",
        exchange="binanceusdm",
        key="main",
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
        channel.publish_state("main", "binanceusdm", {**fields, "seq": key})
        return key

    return stage


def baseline_stage(client: aiomqtt.Client) -> Stage:
    """A bare aiomqtt QoS 1 publish of the same alert JSON: the floor the channel adds to."""

    async def stage(index: int) -> str:
        key = stage_key("baseline", index)
        payload = json.dumps(make_alert(key).to_dict(), separators=(",", ":"))
        await client.publish(f"{PREFIX}/main/alert", payload, qos=1)
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


async def run(broker: Broker, count: int) -> list[tuple[str, list[int]]]:
    """Every path's samples, baseline first; the paths take turns, so drift hits them alike."""
    # The state path is timed per state: the rate limit (1 s in production) is set out of the way.
    settings = MqttSettings(broker.host, broker.port, topic_prefix=PREFIX, state_interval_s=1e-4)
    channel = MqttChannel(settings, name="bench")
    timings = {name: Timings(name) for name in ("baseline", "send", "state")}
    async with (
        subscribed(broker) as subscriber,
        aiomqtt.Client(broker.host, broker.port, timeout=RECEIVE_TIMEOUT_S) as raw,
    ):
        await channel.start()
        try:
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
        finally:
            await channel.close()
    return [
        ("baseline: aiomqtt publish QoS 1 -> subscriber", timings["baseline"].to_subscriber),
        ("MqttChannel.send() -> PUBACK (send returns)", timings["send"].to_return),
        ("MqttChannel.send() -> subscriber", timings["send"].to_subscriber),
        ("MqttChannel.publish_state() -> subscriber", timings["state"].to_subscriber),
    ]


def report(rows: list[tuple[str, list[int]]], count: int) -> None:
    """Print the table and the target line."""
    mosquitto_version = subprocess.run(
        [MOSQUITTO, "-h"], capture_output=True, text=True, check=False
    ).stdout.splitlines()[0]
    print(f"alert latency to Mosquitto on 127.0.0.1: {count} samples a path after {WARMUP} warm-up")
    print(f"python {platform.python_version()}, aiomqtt {aiomqtt.__version__}, {mosquitto_version}")
    print(f"{platform.platform()}, {platform.processor() or platform.machine()}")
    print()
    baseline_p50 = percentile(rows[0][1], 0.50)
    header = f"{'path':<48} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'p50 / baseline':>15}"
    print(header)
    print("-" * len(header))
    for name, samples in rows:
        p50, p99 = percentile(samples, 0.50), percentile(samples, 0.99)
        print(f"{name:<48} {p50:>8.3f} {p99:>8.3f} {max(samples) / 1e6:>8.3f} {p50 / baseline_p50:>14.2f}x")
    print()
    p99 = percentile(rows[2][1], 0.99)
    verdict = "PASS" if p99 < TARGET_P99_MS else "MISS"
    print(f"target: send() -> subscriber p99 < {TARGET_P99_MS:g} ms: {verdict} (p99 {p99:.3f} ms)")


def main(argv: list[str] | None = None) -> None:
    """Parse the arguments, start a private Mosquitto, measure, print."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--count", type=int, default=2000, help="timed samples per path (default 2000)")
    parser.add_argument("--quick", action="store_true", help="200 samples per path")
    arguments = parser.parse_args(argv)
    count = 200 if arguments.quick else arguments.count
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    with mosquitto() as broker:
        rows = asyncio.run(run(broker, count))
    report(rows, count)


if __name__ == "__main__":
    main()
