"""The simulated exchange: a Binance USDⓈ-M-compatible REST and websocket server for tests and the demo.

ccxt talks to it over loopback as it would to Binance (signing, error mapping, websockets); the
simulator computes every account's figures on its own so tests can compare the daemon's with them.
The demo account's credentials (``DEMO_API_KEY``/``DEMO_SECRET``) are published: they open nothing
but a local simulator. The same server answers as Bybit v5 (``monitor.sim.bybit``), OKX v5
(``monitor.sim.okx``), Binance COIN-M (``monitor.sim.coinm``) and Hyperliquid (``monitor.sim.hyperliquid``),
each with a demo account of its own, all driven by the same marks.
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
from monitor.sim.bybit import BYBIT_DEMO_API_KEY, BYBIT_DEMO_SECRET
from monitor.sim.faults import Fault, FaultKind, Faults
from monitor.sim.hyperliquid import HYPERLIQUID_DEMO_ADDRESS
from monitor.sim.okx import OKX_DEMO_API_KEY, OKX_DEMO_PASSPHRASE, OKX_DEMO_SECRET
from monitor.sim.scenarios import SCENARIOS, scenario_names
from monitor.sim.server import SimServer, config_stanza, run_standalone, serve_forever
from monitor.sim.venues import VenueAccount, VenueFigures, VenuePosition

__all__ = [
    "BYBIT_DEMO_API_KEY",
    "BYBIT_DEMO_SECRET",
    "DEMO_API_KEY",
    "DEMO_SECRET",
    "HYPERLIQUID_DEMO_ADDRESS",
    "OKX_DEMO_API_KEY",
    "OKX_DEMO_PASSPHRASE",
    "OKX_DEMO_SECRET",
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
    "VenueAccount",
    "VenueFigures",
    "VenuePosition",
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
