"""Prometheus metrics of one daemon process, in a registry of their own.

Two kinds of figure, each taken where it is known:

- read at scrape time from whatever daemon and outbox ``runtime`` holds now (margin ratio, level,
  margin balance, maintenance margin, drift, accounts, outbox depth, notifications): a level that
  turns ``blind`` without any assessment shows at once, and a reload that removes an account
  removes its series;
- counted as things happen, from the daemon's hooks (exchange reads by result, poll durations, the
  last update of each account by feed): only the moment knows them.

Names follow Prometheus conventions: the ``margin_monitor_`` prefix, units in the name, ``_total``
counters, ratios as fractions (1.5 is 150%). Labels are account, exchange, channel and shard names
from the configuration, never a key, token or other secret.
"""

from __future__ import annotations

import platform
import time
from typing import TYPE_CHECKING, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from monitor import __version__
from monitor.config import LEVELS
from monitor.service.daemon import BLIND, UNKNOWN

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from prometheus_client import Metric

    from monitor.notify.dispatcher import Dispatcher
    from monitor.notify.outbox import Outbox
    from monitor.service.daemon import Daemon

#: Every value of ``margin_monitor_account_level``'s ``level`` label, most severe last but two.
ACCOUNT_LEVELS = (*LEVELS, BLIND, UNKNOWN)

#: Every value of ``margin_monitor_exchange_requests_total``'s ``result`` label.
REQUEST_RESULTS = (
    "ok",
    "temporary",
    "rate_limited",
    "clock_skew",
    "payload",
    "operational",
    "timeout",
    "crashed",
)

#: The feeds of ``margin_monitor_last_update_timestamp_seconds``.
FEEDS = ("rest", "marks", "user")

#: A REST read of an account takes 50-300 ms when all is well; a timeout is 5 s or two poll intervals.
POLL_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

#: The ``shard`` label of a process that watches every account.
UNSHARDED = "0/1"


class Runtime(Protocol):
    """What the metrics and the HTTP server read: ``monitor.service.app.Alerts`` is one.

    Read afresh on every scrape and request, so a reload that attaches a new daemon is seen at once.
    """

    @property
    def daemon(self) -> Daemon | None:
        """The running daemon (``None`` while starting)."""

    @property
    def outbox(self) -> Outbox | None:
        """The alerts' outbox (``None`` while starting)."""

    @property
    def dispatcher(self) -> Dispatcher | None:
        """The delivery loop, with its per-channel counters (``None`` while starting)."""


class Metrics:
    """The process's metrics: ``registry`` is what ``/metrics`` renders.

    ``runtime`` may be re-pointed (``metrics.runtime = other``); ``attach`` hooks a daemon's
    events (call it for each new daemon). ``shard`` is this process's share of the accounts as
    ``I/N``. ``clock`` gives Unix seconds (the last-update timestamps).
    """

    def __init__(
        self, runtime: Runtime, *, shard: str = UNSHARDED, clock: Callable[[], float] = time.time
    ) -> None:
        self.runtime = runtime
        self.shard = shard
        self._clock = clock
        # The client's default adds a ``_created`` gauge beside every counter and histogram: noise in
        # the text format that Prometheus stores as series of their own. Process-wide, as we are.
        disable_created_metrics()  # type: ignore[no-untyped-call]  # the client leaves it unannotated
        self.registry = CollectorRegistry(auto_describe=False)
        self.requests = Counter(
            "margin_monitor_exchange_requests",
            "REST reads of an account (one poll: a few HTTP requests), by result.",
            ["exchange", "result"],
            registry=self.registry,
        )
        self.poll_duration = Histogram(
            "margin_monitor_poll_duration_seconds",
            "How long one REST read of an account took, failed ones included.",
            ["exchange"],
            buckets=POLL_BUCKETS,
            registry=self.registry,
        )
        self.last_update = Gauge(
            "margin_monitor_last_update_timestamp_seconds",
            "When a feed last brought news of the account (rest: a good poll; marks: a recompute "
            "from a mark tick; user: a user-data event), as a Unix time.",
            ["account", "feed"],
            registry=self.registry,
        )
        build = Gauge(
            "margin_monitor_build_info",
            "Always 1; the labels say which margin-monitor and Python run.",
            ["version", "python"],
            registry=self.registry,
        )
        build.labels(__version__, platform.python_version()).set(1)
        self._updated: set[tuple[str, str]] = set()
        self._notifications: list[Metric] = []
        self.registry.register(_StateCollector(self))

    def refresh(self) -> None:
        """Read the outbox and the dispatcher's counters, on the event loop's thread, for the next collect.

        They belong to the loop (the outbox's SQLite connection is not shared between threads);
        the accounts' figures are read by the collect itself, which may then run on a worker
        thread: at 1,000 accounts collecting and encoding takes about 100 ms that the loop, busy
        with mark ticks and alerts, should not wait for.
        """
        runtime = self.runtime
        self._notifications = list(_notification_families(runtime.dispatcher, runtime.outbox))

    # --- the daemon's hooks -----------------------------------------------------------------------

    def attach(self, daemon: Daemon) -> None:
        """Count ``daemon``'s reads and updates; forget the last updates of accounts it no longer has."""
        if self.polled not in daemon.poll_listeners:
            daemon.poll_listeners.append(self.polled)
        if self.fed not in daemon.feed_listeners:
            daemon.feed_listeners.append(self.fed)
        # Every result of every exchange from zero, so rate() sees the first failure.
        for exchange in {state.config.exchange for state in daemon.accounts.values()}:
            for result in REQUEST_RESULTS:
                self.requests.labels(exchange, result)
        for account, feed in sorted(self._updated):
            if account not in daemon.accounts:
                self.last_update.remove(account, feed)
                self._updated.discard((account, feed))

    def polled(self, account: str, exchange: str, result: str, seconds: float) -> None:
        """One REST read of ``account`` ended with ``result`` after ``seconds``."""
        del account  # per exchange: an account label here would multiply series for little gain
        self.requests.labels(exchange, result).inc()
        self.poll_duration.labels(exchange).observe(seconds)

    def fed(self, account: str, feed: str) -> None:
        """``feed`` brought news of ``account`` now."""
        self.last_update.labels(account, feed).set(self._clock())
        self._updated.add((account, feed))


class _StateCollector(Collector):
    """The accounts' figures, read from the daemon at scrape time; the notifications, as refreshed."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        # Safe off the loop: a daemon's account table never changes size, and each state's
        # assessment is a frozen object replaced whole.
        yield from _account_families(self.metrics.runtime.daemon, self.metrics.shard)
        yield from self.metrics._notifications  # noqa: SLF001 - the snapshot ``refresh`` took


def _account_families(daemon: Daemon | None, shard: str) -> Iterator[Metric]:
    pair = ["account", "exchange"]
    accounts = GaugeMetricFamily(
        "margin_monitor_accounts", "Accounts this process watches.", labels=["shard"]
    )
    ratio = GaugeMetricFamily(
        "margin_monitor_margin_ratio",
        "Margin balance over maintenance margin, as a fraction (1.5 is 150%); absent while no "
        "position needs maintenance margin.",
        labels=pair,
    )
    level = GaugeMetricFamily(
        "margin_monitor_account_level",
        "1 for the account's current level, 0 for the others.",
        labels=[*pair, "level"],
    )
    balance = GaugeMetricFamily(
        "margin_monitor_margin_balance",
        "Margin balance of the cross positions, in the account's settlement currency.",
        labels=pair,
    )
    maintenance = GaugeMetricFamily(
        "margin_monitor_maintenance_margin",
        "Maintenance margin of the cross positions, in the account's settlement currency.",
        labels=pair,
    )
    drift = GaugeMetricFamily(
        "margin_monitor_drift_ratio",
        "Largest relative difference between our maintenance margin or margin balance and the "
        "exchange's own figure, as a fraction (0.005 is 0.5%).",
        labels=pair,
    )
    states = () if daemon is None else daemon.accounts.values()
    accounts.add_metric([shard], len(states))
    for state in states:
        labels = [state.name, state.config.exchange]
        for name in ACCOUNT_LEVELS:
            level.add_metric([*labels, name], 1.0 if state.level == name else 0.0)
        assessment = state.assessment
        if assessment is None:
            continue
        if assessment.margin_ratio is not None:
            ratio.add_metric(labels, assessment.margin_ratio)
        balance.add_metric(labels, assessment.margin_balance)
        maintenance.add_metric(labels, assessment.maintenance_margin)
        if state.drift is not None:
            drift.add_metric(labels, state.drift)
    yield from (accounts, ratio, level, balance, maintenance, drift)


def _notification_families(dispatcher: Dispatcher | None, outbox: Outbox | None) -> Iterator[Metric]:
    sent = CounterMetricFamily(
        "margin_monitor_notifications_sent",
        "Alerts a channel delivered (since the dispatcher started).",
        labels=["channel"],
    )
    failed = CounterMetricFamily(
        "margin_monitor_notifications_failed",
        "Delivery attempts that failed, to be retried or given up on (since the dispatcher started).",
        labels=["channel"],
    )
    depth = GaugeMetricFamily(
        "margin_monitor_outbox_depth", "Deliveries waiting in the outbox, per channel.", labels=["channel"]
    )
    channels: list[str] = []
    if dispatcher is not None:
        channels = list(dispatcher.channels)
        for name, counters in dispatcher.counters().items():
            sent.add_metric([name], counters.delivered)
            # Expired alerts were never attempted: they are dead letters, not failed sends.
            failed.add_metric([name], counters.failed + counters.dead - counters.expired)
    if outbox is not None:
        for name in channels:
            # An indexed count of the pending rows alone: cheap at every scrape.
            depth.add_metric([name], outbox.pending_count(name))
    yield from (sent, failed, depth)
