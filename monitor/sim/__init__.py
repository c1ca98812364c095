"""The simulated exchange: a Binance USDⓈ-M-compatible REST and websocket server for tests and the demo.

ccxt talks to it over loopback as it would to Binance (signing, error mapping, websockets); the
simulator computes every account's figures on its own so tests can compare the daemon's with them.
The demo account's credentials (``DEMO_API_KEY``/``DEMO_SECRET``) are published: they open nothing
but a local simulator.
"""

from monitor.sim.accounts import (
    DEMO_API_KEY,
    DEMO_SECRET,
    AccountFigures,
    ApiPermissions,
    Level,
    PositionFigures,
    SimAccount,
    SimPosition,
    bulk_accounts,
    bulk_secret,
    compute_figures,
    demo_account,
    level_of,
)
from monitor.sim.faults import Fault, FaultKind, Faults
from monitor.sim.scenarios import SCENARIOS, scenario_names
from monitor.sim.server import SimServer, config_stanza, run_standalone, serve_forever

__all__ = [
    "DEMO_API_KEY",
    "DEMO_SECRET",
    "SCENARIOS",
    "AccountFigures",
    "ApiPermissions",
    "Fault",
    "FaultKind",
    "Faults",
    "Level",
    "PositionFigures",
    "SimAccount",
    "SimPosition",
    "SimServer",
    "bulk_accounts",
    "bulk_secret",
    "compute_figures",
    "config_stanza",
    "demo_account",
    "level_of",
    "run_standalone",
    "scenario_names",
    "serve_forever",
]
