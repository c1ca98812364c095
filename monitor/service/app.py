"""Wiring for the commands that run the daemon: ``run``, ``status``, ``demo`` and ``sim``.

This is the one place that knows every part: configuration, credentials, ccxt clients, the
simulator and the daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import signal
import sys
import time
import uuid
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import structlog

from monitor.alerts.model import Alert, AlertKind
from monitor.config import (
    AccountConfig,
    AlertsConfig,
    Config,
    DaemonConfig,
    default_state_dir,
    load_config,
    resolve_credentials,
)
from monitor.durations import format_duration, parse_duration
from monitor.errors import ConfigError, UserInputError
from monitor.exchanges.client import ClientSettings, Credentials, MarketCache
from monitor.exchanges.factory import create_source
from monitor.notify.dispatcher import Dispatcher
from monitor.notify.factory import build_channels
from monitor.notify.mqtt import MqttChannel
from monitor.notify.mqtt import state_fields as mqtt_state_fields
from monitor.notify.outbox import Outbox
from monitor.notify.telegram import TelegramChannel
from monitor.render import percent, table
from monitor.service.alerting import Alerting, Mutes, policy_from
from monitor.service.daemon import Daemon
from monitor.service.httpd import HttpServer
from monitor.service.keys import KeyGuard
from monitor.service.logs import REDACTOR, configure_logging
from monitor.service.metrics import UNSHARDED, Metrics
from monitor.service.sdnotify import Notifier, Supervisor, supervised
from monitor.service.streaming import Streaming
from monitor.sharding import Shard, apply_shard, parse_shard, shard_from, shard_of

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Mapping
    from types import TracebackType

    from monitor.config import LogFormat
    from monitor.exchanges.base import AccountSource
    from monitor.notify.base import Channel
    from monitor.risk.model import Assessment

log = structlog.get_logger("margin_monitor.app")

#: The demo's simulated account polls this often (the crash holds each level for about 10 ticks).
DEMO_POLL_INTERVAL_S = 1.0
DEMO_FASTEST_POLL_S = 0.3


def load_with_credentials(
    path: str | Path, shard: Shard | None = None
) -> tuple[Config, dict[str, Credentials]]:
    """Load ``path`` and resolve every account's credentials (``ConfigError`` on the first problem).

    With ``shard``, only that shard's accounts are kept (and their credentials read): every part
    downstream sees the shard's configuration alone.
    """
    config = apply_shard(load_config(path), shard)
    credentials: dict[str, Credentials] = {}
    secrets: list[str] = []
    for account in config.accounts:
        resolved = resolve_credentials(account)
        secrets.extend(resolved.secrets())
        credentials[account.name] = Credentials(
            api_key=resolved.api_key,
            secret=resolved.secret,
            password=resolved.password,
            wallet_address=account.wallet_address,
        )
    add_secrets(secrets)
    return config, credentials


_SECRETS: set[str] = set()


def add_secrets(values: list[str] | tuple[str, ...]) -> None:
    """Add values to what every log line redacts (accounts' keys, then channels' tokens)."""
    _SECRETS.update(value for value in values if value)
    REDACTOR.set_secrets(_SECRETS)


def build_sources(
    config: Config, credentials: Mapping[str, Credentials], markets: MarketCache | None = None
) -> dict[str, AccountSource]:
    """One ``AccountSource`` per account, sharing one market cache; call inside the running loop."""
    markets = markets or MarketCache()
    return {
        account.name: create_source(
            account.name,
            ClientSettings(
                exchange_id=account.exchange,
                credentials=credentials[account.name],
                base_url=account.base_url,
                ws_url=account.ws_url,
                sandbox=account.sandbox,
            ),
            markets,
        )
        for account in config.accounts
    }


def quiet_closed_socket_races(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """The loop's exception handler: one known, harmless race logged in a line, the rest as usual.

    aiomqtt hands paho's socket to the loop with ``call_soon_threadsafe(loop.add_writer, fd, ...)``;
    when the broker goes away in between, the socket is closed before that callback runs and asyncio
    logs an error with a traceback (the 30-minute soak saw one at a Mosquitto stop). The channel
    reconnects on its own; the line says so without alarming anyone.
    """
    error = context.get("exception")
    callback = getattr(context.get("handle"), "_callback", None)
    if (
        isinstance(error, OSError)
        and error.errno == errno.EBADF
        and getattr(callback, "__name__", "") in {"add_writer", "add_reader"}
    ):
        log.info("loop.closed_socket", detail="a socket closed before the loop watched it (a reconnect)")
        return
    loop.default_exception_handler(context)


def _stop_on_signals(stop: asyncio.Event) -> None:
    """SIGTERM and SIGINT set ``stop``; the loop gets our exception handler too."""
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(quiet_closed_socket_races)
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)


class Alerts:
    """The alerting pipeline around a daemon: outbox, channels, dispatcher, engine, Telegram commands.

    ``async with Alerts(config, channels) as alerts`` opens the outbox in the state directory,
    starts every channel and the dispatcher's delivery loop (a named task that never dies), and on
    exit stops them in reverse, letting a send in flight finish.
    """

    def __init__(self, config: Config, channels: list[Channel], *, state_dir: Path | None = None) -> None:
        self.config = config
        self.state_dir = state_dir or config.daemon.state_dir
        self.channels = channels
        self.outbox: Outbox | None = None
        self.dispatcher: Dispatcher | None = None
        self.alerting: Alerting | None = None
        self.daemon: Daemon | None = None
        #: Set by ``http_for``: each daemon attached also feeds the metrics.
        self.metrics: Metrics | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Self:
        # 0700 when created: the outbox and alert state show positions and balances, if no secret.
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.outbox = Outbox.for_state_dir(self.state_dir)
        self.dispatcher = Dispatcher(self.outbox, self.channels, max_age_s=self.config.alerts.max_alert_age_s)
        self.alerting = Alerting(policy_from(self.config.alerts), self.dispatcher, self.state_dir)
        for channel in self.channels:
            await channel.start()
        pending = self.outbox.pending_count()
        if pending:
            log.info("alerts.resuming", pending=pending)
        self._tasks.append(asyncio.create_task(self.dispatcher.run(), name="dispatcher"))
        quiet = {
            channel.name
            for channel in self.config.channels
            if channel.type == "telegram" and channel.options.get("commands") is False
        }
        for channel in self.channels:
            if isinstance(channel, TelegramChannel) and channel.name not in quiet:
                self._tasks.append(
                    asyncio.create_task(
                        channel.poll_commands(self.command), name=f"telegram-commands:{channel.name}"
                    )
                )
        return self

    def attach(self, daemon: Daemon) -> None:
        """Give ``daemon`` the alert engine, and MQTT channels each assessment's state."""
        self.daemon = daemon
        daemon.alerting = self.alerting
        if self.metrics is not None:
            self.metrics.attach(daemon)
        for channel in self.channels:
            if isinstance(channel, MqttChannel):
                daemon.listeners.append(_state_publisher(channel))

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        for task in self._tasks[1:]:
            task.cancel()
        if self.alerting is not None:
            try:
                await self.alerting.flush()
            except Exception:
                log.exception("alerts.state_not_saved")
        if self.dispatcher is not None:
            await self.dispatcher.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for channel in self.channels:
            try:
                await channel.close()
            except Exception:
                log.exception("channel.close_failed", channel=channel.name)
        if self.outbox is not None:
            self.outbox.close()

    async def command(self, command: str, args: list[str], chat_id: int | str) -> str:
        """Answer a Telegram command from a configured chat."""
        del chat_id
        accounts = [account.name for account in self.config.accounts]
        mutes = self.alerting.mutes if self.alerting is not None else None
        if command == "status":
            return self._status_text()
        if command in ("mute", "unmute") and mutes is not None:
            if not args or args[0] not in accounts:
                usage = f"/{command} <account>" + (" <duration>" if command == "mute" else "")
                return f"usage: {usage}\naccounts: {', '.join(accounts)}"
            if command == "unmute":
                return f"{args[0]} unmuted" if mutes.unmute(args[0]) else f"{args[0]} was not muted"
            try:
                seconds = parse_duration(args[1] if len(args) > 1 else "1h")
            except ValueError as exc:
                return str(exc)
            mutes.mute(args[0], seconds)
            log.info("account.muted", account=args[0], seconds=seconds, by="telegram")
            return f"{args[0]} muted for {format_duration(seconds)}"
        return (
            "/status: every account's ratio and level\n"
            "/mute <account> <duration>: e.g. /mute main 2h\n"
            "/unmute <account>"
        )

    def _status_text(self) -> str:
        if self.daemon is None:
            return "starting"
        lines = []
        for name, state in self.daemon.accounts.items():
            assessment = state.assessment
            ratio = None if assessment is None else assessment.margin_ratio
            shown = "-" if ratio is None else f"{ratio * 100:.1f}%"
            lines.append(f"{name}: {shown} ({state.level})")
        return "\n".join(lines) or "no accounts"


def _state_publisher(channel: MqttChannel) -> Callable[[str, str, Assessment], None]:
    def publish(account: str, exchange: str, assessment: Assessment) -> None:
        channel.publish_state(account, exchange, mqtt_state_fields(assessment))

    return publish


async def run_daemon(
    config: Config,
    credentials: Mapping[str, Credentials],
    stop: asyncio.Event | None = None,
    *,
    runtime: Runtime | None = None,
    notifier: Notifier | None = None,
) -> None:
    """Run the daemon and its alerting until ``stop`` is set (or SIGTERM/SIGINT arrives).

    Under systemd (``$NOTIFY_SOCKET``) it reports ``READY=1`` after the first round of polls, feeds
    the watchdog from the scheduler's progress, keeps ``STATUS=`` current and says ``STOPPING=1``.
    SIGHUP reloads ``config.path`` (see ``Reloader``); ``runtime`` always holds what runs now.
    """
    stop = stop or asyncio.Event()
    _stop_on_signals(stop)
    runtime = runtime or Runtime(config)
    notifier = notifier or Notifier()
    supervisor = Supervisor(notifier, lambda: runtime.daemon)
    reloader = Reloader(runtime, supervisor)
    reloader.install()
    announce = asyncio.create_task(_announce_stop(stop, notifier), name="sdnotify:stopping")
    try:
        # The HTTP server first, once for the process: a port it cannot bind stops us before any
        # client opens, and /healthz answers "starting" meanwhile. It reads everything through
        # ``runtime``, which a reload re-points at the new daemon (``http_listen`` itself needs a restart).
        shard = config.shard or UNSHARDED
        async with supervised(supervisor), http_for(config, runtime, shard=shard) as server:
            runtime.http = server
            generation: Generation | None = Generation(config, credentials, None)
            while generation is not None and not stop.is_set():
                generation = await _run_generation(generation, stop, runtime, reloader, supervisor)
    finally:
        announce.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await announce
        reloader.uninstall()
        notifier.close()


# --- running under systemd: readiness, reloads ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Generation:
    """A configuration to run, with its credentials and (when a reload built them) its channels."""

    config: Config
    credentials: Mapping[str, Credentials]
    channels: list[Channel] | None


class Runtime:
    """What outlives a reload: the configuration, alerting pipeline and daemon running now.

    SIGHUP may replace all three while the process keeps running. Whatever reads daemon state from
    outside (metrics, the status page) reads ``runtime.daemon`` each time, or registers a callback
    in ``on_switch``, called with the runtime after each switch; it never keeps a Daemon of its own.
    """

    def __init__(self, config: Config) -> None:
        self.config = config
        self.alerts: Alerts | None = None
        self.daemon: Daemon | None = None
        self.reloads = 0
        self.on_switch: list[Callable[[Runtime], None]] = []
        #: Set by ``http_for``: every generation's daemon feeds these metrics.
        self.metrics: Metrics | None = None
        #: The metrics, health and status server (``None`` when ``http_listen`` is off).
        self.http: HttpServer | None = None

    @property
    def outbox(self) -> Outbox | None:
        """The running generation's outbox (``None`` while starting)."""
        return None if self.alerts is None else self.alerts.outbox

    @property
    def dispatcher(self) -> Dispatcher | None:
        """The running generation's delivery loop (``None`` while starting)."""
        return None if self.alerts is None else self.alerts.dispatcher

    def switch(self, config: Config, alerts: Alerts, daemon: Daemon) -> None:
        """Point at a new generation and tell the watchers."""
        self.config, self.alerts, self.daemon = config, alerts, daemon
        for callback in self.on_switch:
            try:
                callback(self)
            except Exception:
                log.exception("runtime.switch_callback_failed")


class Reloader:
    """SIGHUP: read the configuration file again; run it if valid, keep the old one if not.

    The new file is loaded and its secrets and channels resolved while the old daemon runs on, so a
    bad file costs nothing but one ``config.reload_refused`` line naming the problem. A good one
    ends the running generation (its polls finish, its alerts are stored, its channels close) and
    the next starts with it. Alert state (``alerts-state.json``), mutes and the outbox live in the
    state directory: the new generation reads them back, and pending deliveries go out from there.
    """

    def __init__(self, runtime: Runtime, supervisor: Supervisor) -> None:
        self.runtime = runtime
        self.supervisor = supervisor
        self.pending: Generation | None = None
        #: Set when a valid new configuration is waiting: the running generation ends.
        self.requested = asyncio.Event()

    def install(self) -> None:
        """Handle SIGHUP on the running loop."""
        with contextlib.suppress(NotImplementedError, RuntimeError):
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self.request)

    def uninstall(self) -> None:
        """Stop handling SIGHUP; one arriving while the process winds down is ignored, not fatal."""
        with contextlib.suppress(NotImplementedError, RuntimeError):
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        with contextlib.suppress(ValueError):  # not the main thread
            signal.signal(signal.SIGHUP, signal.SIG_IGN)

    def request(self) -> None:
        """The SIGHUP handler: check the file now (a few milliseconds); never raises."""
        try:
            self.check()
        except Exception:
            log.exception("config.reload_failed", hint="the old configuration runs on")
            self._back_to_ready()

    def check(self) -> None:
        """Load the file again; queue it for the next generation, or refuse it with one line."""
        path = self.runtime.config.path
        self.supervisor.notifier.reloading()
        log.info("config.reloading", path=str(path))
        try:
            # The same shard of the new file (its accounts, state directory and MQTT identity).
            shard = parse_shard(self.runtime.config.shard) if self.runtime.config.shard else None
            config, credentials = load_with_credentials(path, shard)
            channels, secrets = build_channels(config.channels)
        except UserInputError as exc:
            log.error(  # noqa: TRY400 - one line naming the problem; a traceback would only bury it
                "config.reload_refused", path=str(path), error=str(exc), hint="the old one runs on"
            )
            self._back_to_ready()
            return
        add_secrets(secrets)
        if config.daemon.log_format != self.runtime.config.daemon.log_format:
            configure_logging(config.daemon.log_format, secrets=sorted(_SECRETS))
        self.pending = Generation(config, credentials, channels)
        self.requested.set()

    def _back_to_ready(self) -> None:
        # Out of RELOADING=1 with the old configuration (systemd heeds it only once we were ready).
        daemon = self.runtime.daemon
        if daemon is not None and daemon.scheduling:
            self.supervisor.ready(daemon)


async def _run_generation(
    generation: Generation,
    stop: asyncio.Event,
    runtime: Runtime,
    reloader: Reloader,
    supervisor: Supervisor,
) -> Generation | None:
    """Run one configuration until ``stop``, or until a reload brings the next (returned)."""
    config, credentials = generation.config, generation.credentials
    channels = generation.channels
    if channels is None:
        channels, secrets = build_channels(config.channels)
        add_secrets(secrets)
    reloading = runtime.daemon is not None
    ends = asyncio.Event()
    relay = asyncio.create_task(_first_of(ends, stop, reloader.requested), name="generation-end")
    try:
        async with Alerts(config, channels) as alerts:
            markets = MarketCache()
            sources = build_sources(config, credentials, markets)
            # The keys first: one that may do more than read stops us here (and on a reload too).
            keys = await checked_keys(config, sources)
            daemon = Daemon(config, sources)
            daemon.heartbeat_s = _heartbeat_s(supervisor.notifier)
            alerts.metrics = runtime.metrics
            alerts.attach(daemon)
            runtime.switch(config, alerts, daemon)

            def ready() -> None:
                supervisor.ready(daemon)
                if reloading:
                    runtime.reloads += 1
                    log.info("config.reloaded", path=str(config.path), accounts=len(daemon.accounts))

            async with (
                streams_for(daemon, credentials, config, markets),
                _rechecking(keys, ends, alerts.alerting, config.daemon.key_recheck_h * 3600),
            ):
                await daemon.run(ends, on_ready=ready)
    finally:
        relay.cancel()
    if keys.refused is not None:
        raise keys.refused
    if stop.is_set() or not reloader.requested.is_set():
        return None
    reloader.requested.clear()
    pending, reloader.pending = reloader.pending, None
    return pending


async def _first_of(target: asyncio.Event, *sources: asyncio.Event) -> None:
    """Set ``target`` when any of ``sources`` is set."""
    waits = [asyncio.create_task(source.wait()) for source in sources]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        target.set()
    finally:
        for wait in waits:
            wait.cancel()


def _heartbeat_s(notifier: Notifier) -> float | None:
    # The scheduler beats at least twice per watchdog ping, so one late job does not miss a ping.
    interval = notifier.watchdog_interval_s
    return None if interval is None else interval / 2


async def _announce_stop(stop: asyncio.Event, notifier: Notifier) -> None:
    await stop.wait()
    notifier.stopping()
    log.info("daemon.stopping")


# --- key permissions (monitor/service/keys.py) ------------------------------------------------------


async def checked_keys(config: Config, sources: Mapping[str, AccountSource]) -> KeyGuard:
    """Check every account's key (``KeyGuard.start``); on a refusal close the sources and raise."""
    keys = KeyGuard(config, sources)
    try:
        await keys.start()
    except BaseException:
        await asyncio.gather(*(source.close() for source in sources.values()), return_exceptions=True)
        raise
    return keys


@contextlib.asynccontextmanager
async def _rechecking(
    keys: KeyGuard, stop: asyncio.Event, alerting: Alerting | None, period_s: float
) -> AsyncIterator[None]:
    """Re-check the keys while the daemon runs (``KeyGuard.recheck`` and ``KeyGuard.watch``).

    Those the exchange did not answer for at start until it does (a refusal stops the daemon); the
    others every ``period_s``, 0 for never (an unfit one raises an alert).
    """
    tasks: list[asyncio.Task[None]] = []
    if keys.unverified:
        tasks.append(asyncio.create_task(keys.recheck(stop), name="key-recheck"))
    if period_s > 0:
        tasks.append(asyncio.create_task(keys.watch(period_s, alerting), name="key-watch"))
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@contextlib.asynccontextmanager
async def http_for(
    config: Config, alerts: Alerts | Runtime, *, shard: str = UNSHARDED, fallback: bool = False
) -> AsyncIterator[HttpServer | None]:
    """The metrics, health and status page server on ``[daemon] http_listen`` (``None`` when off).

    It reads everything through ``alerts`` (``run_daemon`` gives it the ``Runtime``, which follows
    reloads), and the daemons attached to it from now on feed its metrics. An address that cannot be
    bound is a ``ConfigError`` naming the key (a second instance on the same port would otherwise
    answer health checks for this one), unless ``fallback`` (the demo): then any free port.
    """
    address = config.daemon.http_address
    if address is None:
        yield None
        return
    metrics = Metrics(alerts, shard=shard)
    alerts.metrics = metrics
    if alerts.daemon is not None:
        metrics.attach(alerts.daemon)
    server = HttpServer(metrics, *address)
    try:
        await server.start()
    except OSError as exc:
        if not fallback:
            problem = f"cannot listen on {config.daemon.http_listen}: {exc.strerror or exc}"
            raise ConfigError("daemon.http_listen", problem, source=str(config.path)) from None
        server = HttpServer(metrics, address[0], 0)
        await server.start()
    try:
        yield server
    finally:
        await server.close()


@contextlib.asynccontextmanager
async def streams_for(
    daemon: Daemon, credentials: Mapping[str, Credentials], config: Config, markets: MarketCache | None = None
) -> AsyncIterator[Streaming | None]:
    """Websocket feeds for the accounts that stream (mode auto on a supported exchange, or stream).

    ``markets``: the cache the daemon's sources use, so the feeds share its markets and HTTP session.
    """
    streaming = Streaming(daemon, credentials, reconcile_s=config.daemon.reconcile_s, markets=markets)
    if not streaming.streamed:
        yield None
        return
    streaming.start()
    try:
        yield streaming
    finally:
        await streaming.close()


def run_command(config_path: str, shard_flag: str | None = None) -> int:
    """``margin-monitor run``: configure logging, then poll until stopped.

    ``shard_flag`` is ``--shard I/N``; without it the environment may name a shard (``shard_from``).
    """
    shard = shard_from(shard_flag, os.environ)
    config, credentials = load_with_credentials(config_path, shard)
    configure_logging(config.daemon.log_format, secrets=sorted(_SECRETS))
    if shard is not None:
        log_shard(config, shard)
    asyncio.run(run_daemon(config, credentials))
    return 0


def log_shard(config: Config, shard: Shard) -> None:
    """Say which shard this process is and how many accounts it took (zero is allowed, and said)."""
    count = len(config.accounts)
    log.info(
        "daemon.shard",
        index=shard.index,
        count=shard.count,
        accounts=count,
        origin=shard.origin,
        state_dir=str(config.daemon.state_dir),
    )
    if count == 0:
        log.warning(
            "daemon.shard_empty",
            index=shard.index,
            count=shard.count,
            hint="no account of the configuration hashes to this shard; it runs and waits",
        )


async def status_once(config: Config, credentials: Mapping[str, Credentials]) -> list[dict[str, Any]]:
    """Poll every account once and return one status document per account."""
    sources = build_sources(config, credentials)
    await checked_keys(config, sources)
    daemon = Daemon(config, sources)
    try:
        await daemon.poll_all()
    finally:
        await daemon.shutdown()
    return [_status_document(daemon, name) for name in daemon.accounts]


def _status_document(daemon: Daemon, name: str) -> dict[str, Any]:
    from monitor.calc import position_document  # noqa: PLC0415 - calc pulls in the bundled data

    state = daemon.accounts[name]
    assessment: Assessment | None = state.assessment
    ratio = None if assessment is None or assessment.margin_ratio is None else assessment.margin_ratio * 100
    return {
        "account": name,
        "exchange": state.config.exchange,
        "level": state.level,
        "margin_ratio_pct": ratio,
        "margin_balance": None if assessment is None else assessment.margin_balance,
        "maintenance_margin": None if assessment is None else assessment.maintenance_margin,
        "thresholds_pct": [f"{value:g}" for value in daemon.config.alerts.thresholds_pct],
        "positions": None
        if assessment is None
        else [position_document(assessment, item) for item in assessment.positions],
        "error": state.last_error,
    }


# --- the demo and the standalone simulator ---------------------------------------------------------


def demo_config(base_url: str, ws_url: str, *, poll_interval_s: float, state_dir: Path) -> Config:
    """A configuration of one account on the simulator, held in memory (the demo writes no files)."""
    account = AccountConfig(
        name="demo",
        exchange="binanceusdm",
        base_url=base_url,
        ws_url=ws_url,
        poll_interval_s=poll_interval_s,
    )
    return Config(
        accounts=(account,),
        alerts=AlertsConfig(),
        daemon=DaemonConfig(state_dir=state_dir),
        path=Path("<demo>"),
    )


async def run_demo(
    *,
    tick_s: float = 1.0,
    poll_interval_s: float = DEMO_POLL_INTERVAL_S,
    linger_s: float = 3.0,
    scenario: str = "crash-recovery",
) -> None:
    """The simulator's crash and recovery, the daemon watching it, alerts on the console; stops at the end.

    Nothing is written where the user runs it: the alert state and outbox live in a temporary
    directory removed on exit.
    """
    import tempfile  # noqa: PLC0415 - only the demo needs it

    from monitor.notify.log import LogChannel  # noqa: PLC0415
    from monitor.sim import DEMO_API_KEY, DEMO_SECRET, SimServer  # noqa: PLC0415 - only the demo needs the simulator

    with tempfile.TemporaryDirectory(prefix="margin-monitor-demo-") as state:
        async with SimServer(scenario=scenario, tick_s=tick_s) as sim:
            config = demo_config(
                sim.base_url, sim.ws_url, poll_interval_s=poll_interval_s, state_dir=Path(state)
            )
            credentials = {"demo": Credentials(api_key=DEMO_API_KEY, secret=DEMO_SECRET)}
            stop = asyncio.Event()
            _stop_on_signals(stop)
            async with Alerts(config, [LogChannel()]) as alerts, contextlib.AsyncExitStack() as stack:
                markets = MarketCache()
                daemon = Daemon(config, build_sources(config, credentials, markets))
                alerts.attach(daemon)
                server = await stack.enter_async_context(http_for(config, alerts, fallback=True))
                log.info(
                    "demo.started",
                    simulator=sim.base_url,
                    status_page=None if server is None else server.url,
                    scenario=scenario,
                    ticks=sim.player.length,
                    tick_s=tick_s,
                    hint="the demo account falls through 150, 130, 120 and 100%, then recovers; Ctrl-C stops",
                )
                await stack.enter_async_context(streams_for(daemon, credentials, config, markets))
                task = asyncio.create_task(daemon.run(stop), name="daemon")
                finished = asyncio.create_task(_crash_over(sim, linger_s), name="demo-timer")
                stopped = asyncio.create_task(stop.wait(), name="demo-stop")
                await asyncio.wait({task, finished, stopped}, return_when=asyncio.FIRST_COMPLETED)
                stop.set()
                for pending in (finished, stopped):
                    pending.cancel()
                await task
                if alerts.dispatcher is not None:
                    await alerts.dispatcher.drain(5.0)
            log.info("demo.finished", final_level=daemon.accounts["demo"].level, truth=_truth(sim))


async def _crash_over(sim: Any, linger_s: float) -> None:  # noqa: ANN401 - the simulator, imported lazily
    await sim.wait_for(lambda: sim.player.finished, timeout_s=24 * 3600)
    await asyncio.sleep(linger_s)


def _truth(sim: Any) -> float | None:  # noqa: ANN401 - the simulator, imported lazily
    figures = sim.figures()
    return None if figures.margin_ratio is None else round(figures.margin_ratio * 100, 2)


def demo_command(*, tick_s: float, log_format: LogFormat) -> int:
    """``margin-monitor demo``."""
    configure_logging(log_format)
    # A poll takes about 0.15 s (ccxt paces its requests even to the local simulator): polling faster
    # than that would only make the account look blind.
    poll_interval_s = min(DEMO_POLL_INTERVAL_S, max(tick_s, DEMO_FASTEST_POLL_S))
    asyncio.run(run_demo(tick_s=tick_s, poll_interval_s=poll_interval_s))
    return 0


def with_poll_interval(config: Config, seconds: float) -> Config:
    """``config`` with every account polling every ``seconds`` (tests and the demo)."""
    return replace(config, accounts=tuple(replace(a, poll_interval_s=seconds) for a in config.accounts))


# --- alert commands ----------------------------------------------------------------------------------


def make_test_alert(account: str = "test") -> Alert:
    """The alert ``test-alert`` sends: marked as a test, with its own id."""
    now = time.time()
    return Alert(
        id=f"test-{uuid.uuid4().hex[:16]}",
        kind=AlertKind.TEST,
        account=account,
        exchange="-",
        key=account,
        level="warning",
        created_at=now,
        summary="margin-monitor test alert: if you can read this, the channel works",
    )


async def send_test_alerts(
    channels: list[Channel], *, timeout_s: float = 20.0
) -> list[tuple[Channel, str | None, float]]:
    """Send one test alert through each channel; (channel, error or None, seconds) for each."""
    results: list[tuple[Channel, str | None, float]] = []
    for channel in channels:
        started = time.perf_counter()
        error: str | None = None
        try:
            async with asyncio.timeout(timeout_s):
                await channel.start()
                if isinstance(channel, MqttChannel):
                    await channel.wait_connected()
                await channel.send(make_test_alert())
        except TimeoutError:
            error = f"no answer within {timeout_s:g} s" + (
                f" ({channel.last_error})" if isinstance(channel, MqttChannel) and channel.last_error else ""
            )
        except Exception as exc:  # noqa: BLE001 - every failure is reported as a line, not a traceback
            error = f"{type(exc).__name__}: {exc}"
        finally:
            with contextlib.suppress(Exception):
                await channel.close()
        results.append((channel, error, time.perf_counter() - started))
    return results


def run_test_alert(config_path: str, channel_name: str | None) -> int:
    """``margin-monitor test-alert``: a success or failure line per channel; exit 1 if any failed."""
    config = load_config(config_path)
    configure_logging(config.daemon.log_format, stream=sys.stderr)
    channels, secrets = build_channels(config.channels)
    add_secrets(secrets)
    if channel_name is not None:
        channels = [channel for channel in channels if channel.name == channel_name]
        if not channels:
            names = ", ".join(c.name for c in build_channels(config.channels)[0])
            raise UserInputError("--channel", f"no channel named {channel_name!r} (channels: {names})")
    results = asyncio.run(send_test_alerts(channels))
    for channel, error, seconds in results:
        where = f"{channel.name} ({channel.type})"
        if error is None:
            print(f"ok    {where}: delivered in {seconds * 1000:.0f} ms")
        else:
            print(f"FAIL  {where}: {REDACTOR.redact_text(error)}")
    return 0 if all(error is None for _, error, _ in results) else 1


def _state_dir(config_path: str | None, shard: Shard | None) -> tuple[Path, list[str] | None]:
    if config_path is None:
        state_dir = default_state_dir(os.environ)
        return (state_dir / shard.label if shard is not None and shard.count > 1 else state_dir), None
    config = load_config(config_path)
    return apply_shard(config, shard).daemon.state_dir, [account.name for account in config.accounts]


def mute_command(
    account: str,
    duration: str | None,
    config_path: str | None,
    *,
    unmute: bool,
    shard_flag: str | None = None,
) -> int:
    """``margin-monitor mute|unmute ACCOUNT``: shared with the running daemon through the state dir.

    A sharded daemon (``--shard`` or the environment, as for ``run``) keeps its mutes in its shard's
    state directory; an account another shard watches is refused, naming that shard.
    """
    shard = shard_from(shard_flag, os.environ)
    state_dir, accounts = _state_dir(config_path, shard)
    if accounts is not None and account not in accounts:
        raise UserInputError("ACCOUNT", f"no account named {account!r} (accounts: {', '.join(accounts)})")
    if shard is not None and not shard.takes(account):
        owner = shard_of(account, shard.count)
        raise UserInputError(
            "ACCOUNT", f"{account!r} is watched by shard {owner}/{shard.count}, not {shard}: mute it there"
        )
    mutes = Mutes(state_dir)
    if unmute:
        print(f"{account} unmuted" if mutes.unmute(account) else f"{account} was not muted")
        return 0
    try:
        seconds = parse_duration(duration or "1h")
    except ValueError as exc:
        raise UserInputError("--for", str(exc)) from None
    until = mutes.mute(account, seconds)
    stamp = datetime.fromtimestamp(until, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    print(f"{account} muted for {format_duration(seconds)}, until {stamp}")
    return 0


def alerts_command(
    config_path: str, since: str, account: str | None, *, as_json: bool, shard_flag: str | None = None
) -> int:
    """``margin-monitor alerts``: what was raised since then, and where each delivery stands (of a shard)."""
    config = apply_shard(load_config(config_path), shard_from(shard_flag, os.environ))
    try:
        window = parse_duration(since)
    except ValueError as exc:
        raise UserInputError("--since", str(exc)) from None
    path = config.daemon.state_dir / "outbox.sqlite3"
    if not path.exists():
        print(json.dumps([]) if as_json else f"no alerts yet ({path} does not exist)")
        return 0
    outbox = Outbox(path)
    try:
        records = outbox.history(time.time() - window, account)
    finally:
        outbox.close()
    if as_json:
        documents = [
            {**record.alert.to_dict(), "deliveries": [asdict(status) for status in record.deliveries]}
            for record in records
        ]
        print(json.dumps(documents, indent=2))
        return 0
    rows = [
        [
            datetime.fromtimestamp(record.alert.created_at, tz=UTC).strftime("%Y-%m-%d %H:%M:%S"),
            record.alert.account,
            record.alert.kind.value,
            record.alert.level,
            percent(record.alert.margin_ratio_pct),
            " ".join(f"{status.channel}:{status.state}" for status in record.deliveries),
        ]
        for record in records
    ]
    print(
        table(["time (UTC)", "account", "kind", "level", "ratio", "deliveries"], rows)
        if rows
        else "no alerts"
    )
    return 0
