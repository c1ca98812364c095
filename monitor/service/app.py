"""Wiring for the commands that run the daemon: ``run``, ``status``, ``demo`` and ``sim``.

This is the one place that knows every part: configuration, credentials, ccxt clients, the
simulator and the daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from monitor.config import (
    AccountConfig,
    AlertsConfig,
    Config,
    DaemonConfig,
    load_config,
    resolve_credentials,
)
from monitor.exchanges.client import ClientSettings, Credentials, MarketCache
from monitor.exchanges.factory import create_source
from monitor.service.daemon import Daemon
from monitor.service.logs import configure_logging, set_secrets

if TYPE_CHECKING:
    from collections.abc import Mapping

    from monitor.config import LogFormat
    from monitor.exchanges.base import AccountSource
    from monitor.risk.model import Assessment

log = structlog.get_logger("margin_monitor.app")

#: The demo's simulated account polls this often (the crash holds each level for about 10 ticks).
DEMO_POLL_INTERVAL_S = 1.0


def load_with_credentials(path: str | Path) -> tuple[Config, dict[str, Credentials]]:
    """Load ``path`` and resolve every account's credentials (``ConfigError`` on the first problem)."""
    config = load_config(path)
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
    set_secrets(secrets)
    return config, credentials


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


def _stop_on_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)


async def run_daemon(
    config: Config, credentials: Mapping[str, Credentials], stop: asyncio.Event | None = None
) -> None:
    """Run the daemon until ``stop`` is set (or SIGTERM/SIGINT arrives)."""
    stop = stop or asyncio.Event()
    _stop_on_signals(stop)
    daemon = Daemon(config, build_sources(config, credentials))
    await daemon.run(stop)


def run_command(config_path: str) -> int:
    """``margin-monitor run``: configure logging, then poll until stopped."""
    config, credentials = load_with_credentials(config_path)
    configure_logging(
        config.daemon.log_format, secrets=[s for c in credentials.values() for s in _secrets(c)]
    )
    asyncio.run(run_daemon(config, credentials))
    return 0


def _secrets(credentials: Credentials) -> list[str]:
    return [value for value in (credentials.api_key, credentials.secret, credentials.password) if value]


async def status_once(config: Config, credentials: Mapping[str, Credentials]) -> list[dict[str, Any]]:
    """Poll every account once and return one status document per account."""
    daemon = Daemon(config, build_sources(config, credentials))
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
    *, tick_s: float = 1.0, poll_interval_s: float = DEMO_POLL_INTERVAL_S, linger_s: float = 3.0
) -> None:
    """Start the simulator with the crash scenario and the daemon against it; stop when the crash is over."""
    from monitor.sim import DEMO_API_KEY, DEMO_SECRET, SimServer  # noqa: PLC0415 - only the demo needs the simulator

    async with SimServer(scenario="crash", tick_s=tick_s) as sim:
        config = demo_config(sim.base_url, sim.ws_url, poll_interval_s=poll_interval_s, state_dir=Path.cwd())
        credentials = {"demo": Credentials(api_key=DEMO_API_KEY, secret=DEMO_SECRET)}
        log.info(
            "demo.started",
            simulator=sim.base_url,
            scenario="crash",
            ticks=sim.player.length,
            tick_s=tick_s,
            hint="the demo account's ratio falls through 150%, 130%, 120% and 100%; Ctrl-C stops it",
        )
        stop = asyncio.Event()
        _stop_on_signals(stop)
        daemon = Daemon(config, build_sources(config, credentials))
        task = asyncio.create_task(daemon.run(stop), name="daemon")
        finished = asyncio.create_task(_crash_over(sim, linger_s), name="demo-timer")
        stopped = asyncio.create_task(stop.wait(), name="demo-stop")
        await asyncio.wait({task, finished, stopped}, return_when=asyncio.FIRST_COMPLETED)
        stop.set()
        for pending in (finished, stopped):
            pending.cancel()
        await task
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
    asyncio.run(run_demo(tick_s=tick_s, poll_interval_s=max(min(DEMO_POLL_INTERVAL_S, tick_s), 0.01)))
    return 0


def with_poll_interval(config: Config, seconds: float) -> Config:
    """``config`` with every account polling every ``seconds`` (tests and the demo)."""
    return replace(config, accounts=tuple(replace(a, poll_interval_s=seconds) for a in config.accounts))
