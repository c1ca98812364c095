"""Fuzzed exchange payloads: an adapter returns a snapshot the engine can assess, or a ``PayloadError``.

Hypothesis starts from the project's recorded payloads (``tests/data/<exchange>/``, in the shapes each
adapter reads) and breaks them: fields removed, numbers replaced by NaN, infinities, huge, negative or
non-numeric values, lists emptied, objects turned into lists, symbols nobody listed. The invariant,
for every exchange family: normalising either gives an ``AccountSnapshot`` whose assessment is made of
finite numbers (a NaN margin ratio would read as "ok", the worst silent failure), or raises
``PayloadError`` whose ``field`` starts with the payload it blames. Never a ``KeyError``, ``TypeError``,
``OverflowError`` or ``ZeroDivisionError`` from the middle of an adapter.
"""

from __future__ import annotations

import asyncio
import copy
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from monitor.errors import MarginMonitorError, PayloadError
from monitor.exchanges import binancecoinm, binanceusdm, bybit, hyperliquid, okx
from monitor.exchanges.client import Credentials
from monitor.exchanges.payload import rows
from monitor.exchanges.source import Instrument
from monitor.risk.engine import assess
from monitor.service.app import build_sources, demo_config
from monitor.service.daemon import BLIND, Daemon
from monitor.sim import DEMO_API_KEY, DEMO_SECRET, SimServer
from structlog.testing import capture_logs

if TYPE_CHECKING:
    from collections.abc import Callable

    from monitor.risk.model import AccountSnapshot, Assessment

DATA = Path(__file__).parent / "data"
THRESHOLDS = (1.5, 1.3, 1.2)
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

#: A JSON path inside a document's ``payloads``: keys and list indexes from the top.
Path_ = tuple[str | int, ...]


def load(case: str) -> dict[str, Any]:
    """One recorded fixture document."""
    document: dict[str, Any] = json.loads((DATA / f"{case}.json").read_text(encoding="utf-8"))
    return document


def _instruments(document: dict[str, Any]) -> dict[str, Instrument]:
    return {key: Instrument(*value) for key, value in document.get("instruments", {}).items()}


# --- each family, the way its adapter reads the payloads --------------------------------------------

USDM_SYMBOLS = {"BTCUSDT": "BTC/USDT:USDT", "ETHUSDT": "ETH/USDT:USDT", "BTCUSDC": "BTC/USDC:USDC"}


def run_usdm(payloads: dict[str, Any], document: dict[str, Any]) -> AccountSnapshot:
    """Binance USDⓈ-M: brackets, marks, the symbols and margin assets the source checks, then normalise."""
    tiers = binanceusdm.parse_brackets(payloads["leverageBracket"])
    marks = binanceusdm.mark_rows(payloads["premiumIndex"])
    binanceusdm.open_symbols(payloads["positionRisk"])
    margin_asset = document.get("margin_asset", "USDT")
    binanceusdm.foreign_margin_assets(payloads["positionRisk"], margin_asset)
    return binanceusdm.normalise(
        payloads["account"],
        payloads["positionRisk"],
        marks,
        tiers,
        symbols=USDM_SYMBOLS,
        margin_asset=margin_asset,
        multi_assets=document.get("multi_assets", False),
    )


def run_coinm(payloads: dict[str, Any], document: dict[str, Any]) -> AccountSnapshot:
    """Binance COIN-M."""
    return binancecoinm.normalise(
        payloads["account"],
        payloads["positionRisk"],
        binanceusdm.mark_rows(payloads["premiumIndex"]),
        binancecoinm.parse_coinm_brackets(payloads["leverageBracket"]),
        _instruments(document),
    )


def run_bybit(payloads: dict[str, Any], document: dict[str, Any]) -> AccountSnapshot:
    """Bybit v5: risk limits per symbol, wallet-balance and position list."""
    tiers = {symbol: bybit.parse_risk_limits(rows, symbol) for symbol, rows in payloads["riskLimit"].items()}
    # The source pages through ``result.list``; the fixture keeps the rows it collects.
    positions = rows(payloads["positions"], bybit.POSITIONS)
    return bybit.normalise(payloads["wallet"], positions, tiers, _instruments(document))


def run_okx(payloads: dict[str, Any], document: dict[str, Any]) -> AccountSnapshot:
    """OKX: position tiers per family, balance and positions."""
    tiers = {family: okx.tier_rows(rows, family) for family, rows in payloads["tiers"].items()}
    return okx.normalise(payloads["balance"], payloads["positions"], tiers, _instruments(document))


def run_hyperliquid(payloads: dict[str, Any], document: dict[str, Any]) -> AccountSnapshot:
    """Hyperliquid: clearinghouseState and metaAndAssetCtxs."""
    return hyperliquid.normalise(
        payloads["state"], hyperliquid.parse_meta(payloads["meta"]), document["symbols"]
    )


@dataclass(frozen=True, slots=True)
class Family:
    """An exchange family: its fixture, how to normalise it, and the payload names its errors may blame."""

    case: str
    run: Callable[[dict[str, Any], dict[str, Any]], AccountSnapshot]
    payloads: frozenset[str]

    def document(self) -> dict[str, Any]:
        """The fixture, with the USDⓈ-M documents' four payloads moved under ``payloads``."""
        document = load(self.case)
        if "payloads" not in document:
            keys = ("account", "positionRisk", "premiumIndex", "leverageBracket")
            document["payloads"] = {key: document.pop(key) for key in keys}
        return document


FAMILIES = [
    Family(
        "binanceusdm/hedge_isolated",
        run_usdm,
        frozenset({"account", "positionRisk", "premiumIndex", "leverageBracket"}),
    ),
    Family(
        "binanceusdm/usdc_pool",
        run_usdm,
        frozenset({"account", "positionRisk", "premiumIndex", "leverageBracket"}),
    ),
    Family(
        "binancecoinm/recorded_short",
        run_coinm,
        frozenset({"account", "positionRisk", "premiumIndex", "leverageBracket"}),
    ),
    Family("bybit/recorded_unified", run_bybit, frozenset({"wallet-balance", "position-list", "risk-limit"})),
    Family("okx/recorded_multicurrency", run_okx, frozenset({"balance", "positions", "position-tiers"})),
    Family(
        "hyperliquid/cross_and_isolated",
        run_hyperliquid,
        frozenset({"clearinghouseState", "metaAndAssetCtxs"}),
    ),
]
IDS = [family.case for family in FAMILIES]


# --- mutations -------------------------------------------------------------------------------------

#: Values that replace a field: every kind of wrong an exchange (or a proxy in front of it) has sent.
BAD_VALUES: list[object] = [
    None,
    math.nan,
    math.inf,
    -math.inf,
    "NaN",
    "Infinity",
    "-inf",
    "1e309",
    1e308,
    -1e308,
    "1e308",
    10**400,
    -(10**30),
    "-123456789012345678901234567890",
    1e-320,
    0,
    0.0,
    -1,
    "-1",
    "0",
    "",
    " ",
    "abc",
    "0x10",
    True,
    False,
    [],
    {},
    [1, 2],
    {"nested": "1"},
    "UNKNOWNUSDT",
]


def paths(node: object, prefix: Path_ = ()) -> list[Path_]:
    """Every path below ``node`` (containers and leaves), in document order."""
    found: list[Path_] = []
    children: list[tuple[str | int, object]] = []
    if isinstance(node, dict):
        children = list(node.items())
    elif isinstance(node, list):
        children = list(enumerate(node))
    for key, child in children:
        found.append((*prefix, key))
        found.extend(paths(child, (*prefix, key)))
    return found


def parent_of(root: dict[str, Any], where: Path_) -> Any:  # noqa: ANN401 - JSON
    """The container holding ``where``'s last key."""
    node: Any = root
    for key in where[:-1]:
        node = node[key]
    return node


def mutate(root: dict[str, Any], where: Path_, action: str, value: object) -> None:
    """Apply one mutation at ``where`` in place."""
    parent = parent_of(root, where)
    key = where[-1]
    current = parent[key]
    if action == "delete" and len(where) == 1:
        parent[key] = None  # a whole payload cannot be missing; the body can be ``null``
    elif action == "delete":
        del parent[key]
    elif action == "empty":
        parent[key] = type(current)() if isinstance(current, list | dict) else ""
    elif action == "negate" and isinstance(current, str | int | float) and not isinstance(current, bool):
        parent[key] = f"-{current}" if isinstance(current, str) else -current
    elif action == "scale" and isinstance(current, str | int | float) and not isinstance(current, bool):
        try:
            parent[key] = str(float(current) * 1e300)
        except (ValueError, OverflowError):
            parent[key] = value
    elif action == "wrap":
        parent[key] = [current]
    else:
        parent[key] = value


CACHES = {("riskLimit",), ("tiers",)}
ACTIONS = ["delete", "replace", "replace", "replace", "empty", "negate", "scale", "wrap"]


@st.composite
def broken_payloads(draw: st.DrawFn, family: Family) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """The family's payloads with one to three mutations; returns (payloads, document, what was done)."""
    document = family.document()
    payloads = copy.deepcopy(document["payloads"])
    done: list[str] = []
    for _ in range(draw(st.integers(1, 3))):
        # ``riskLimit`` and ``tiers`` are the source's per-symbol caches of payloads, not payloads.
        candidates = [where for where in paths(payloads) if where not in CACHES]
        if not candidates:
            break
        where = draw(st.sampled_from(candidates))
        action = draw(st.sampled_from(ACTIONS))
        value = draw(st.sampled_from(BAD_VALUES))
        mutate(payloads, where, action, value)
        done.append(f"{action} {'.'.join(map(str, where))} ({value!r})")
    return payloads, document, done


def check_assessment(assessment: Assessment) -> None:
    """No figure is NaN, and every amount is finite.

    A ratio may be infinite: a maintenance margin that underflows to a subnormal number (a size of
    1e-320 contracts) divides a positive balance into +inf, which is rightly ``ok``.
    """
    amounts = [assessment.margin_balance, assessment.maintenance_margin]
    ratios = [assessment.margin_ratio]
    for position in assessment.positions:
        amounts += [position.notional, position.maintenance_margin, position.unrealized_pnl]
        ratios += [position.margin_ratio, position.liquidation_price, *position.threshold_prices]
    bad = [value for value in amounts if not math.isfinite(value)]
    bad += [value for value in ratios if value is not None and math.isnan(value)]
    assert not bad, f"figures {bad} in {assessment}"


def outcome(family: Family, payloads: dict[str, Any], document: dict[str, Any]) -> PayloadError | None:
    """Normalise and assess; return the ``PayloadError``, or ``None`` when both succeeded."""
    try:
        snapshot = family.run(payloads, document)
    except PayloadError as exc:
        return exc
    try:
        assessment = assess(snapshot, THRESHOLDS)
    except MarginMonitorError as exc:  # pragma: no cover - a failure message, should it ever happen
        pytest.fail(f"the engine refused a snapshot the adapter accepted: {exc!r}")
    check_assessment(assessment)
    return None


# --- properties ------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES, ids=IDS)
def test_unbroken_fixture_assesses(family: Family) -> None:
    """The seeds themselves normalise and assess: the fuzzing starts from good payloads."""
    document = family.document()
    assert outcome(family, copy.deepcopy(document["payloads"]), document) is None


@pytest.mark.parametrize("family", FAMILIES, ids=IDS)
def test_broken_payload_is_a_payload_error_or_a_sound_snapshot(family: Family) -> None:
    """Any mutation gives a ``PayloadError`` naming a payload of this exchange, or finite figures."""

    @FUZZ
    @given(broken_payloads(family))
    def check(case: tuple[dict[str, Any], dict[str, Any], list[str]]) -> None:
        payloads, document, done = case
        try:
            error = outcome(family, payloads, document)
        except AssertionError as exc:
            pytest.fail(f"{exc} after {done}")
        except Exception as exc:  # noqa: BLE001 - the property: nothing but PayloadError escapes
            pytest.fail(f"{type(exc).__name__}: {exc} after {done}")
        if error is not None:
            head = error.field.split(".", 1)[0].split("[", 1)[0]
            assert head in family.payloads, f"{error.field!r} names no payload of {family.case} ({done})"
            assert error.problem, error

    check()


# --- end to end: the daemon against the simulator's broken payloads -------------------------------


async def until(predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Sample the daemon's state, as an operator's dashboard would, until ``predicate`` holds."""
    async with asyncio.timeout(timeout_s):
        while not predicate():  # noqa: ASYNC110 - the daemon has no event to wait on
            await asyncio.sleep(0.02)


@pytest.mark.asyncio
async def test_bad_payloads_keep_the_last_good_assessment_then_blind_and_the_loop_survives(
    tmp_path: Path,
) -> None:
    """Broken reads keep the last good assessment, turn blind when they persist, and the loop lives on.

    Malformed JSON, then a missing field, on every account read: once the bad payloads outlast
    ``stale_after_polls`` the account is blind; when they stop it is assessed again.
    """
    async with SimServer(scenario="flat", autostart=False) as sim:
        config = demo_config(sim.base_url, sim.ws_url, poll_interval_s=0.2, state_dir=tmp_path)
        daemon = Daemon(
            config,
            build_sources(config, {"demo": Credentials(api_key=DEMO_API_KEY, secret=DEMO_SECRET)}),
            jitter=lambda low, _high: low,
            poll_timeout_s=1.0,
        )
        state = daemon.accounts["demo"]
        stop = asyncio.Event()
        with capture_logs() as logs:
            task = asyncio.create_task(daemon.run(stop))
            await until(lambda: state.level == "ok")
            good = state.assessment
            sim.faults.inject("malformed_json", count=2, path="/fapi/v3/account")
            sim.faults.inject(
                "missing_field", count=10_000, path="/fapi/v3/account", field="totalMaintMargin"
            )
            await until(lambda: state.level == BLIND and "totalMaintMargin" in (state.last_error or ""))
            assert state.assessment is good  # the last good reading is kept, never a half-read one
            assert not task.done()
            sim.faults.clear()
            state.backoff_until = 0  # the test does not wait out the backoff the failures earned
            await until(lambda: state.level == "ok")
            stop.set()
            await asyncio.wait_for(task, 10)
    failed = [line for line in logs if line["event"] == "account.poll_failed"]
    assert {line["error"] for line in failed} == {"PayloadError"}
    fields = {line["field"] for line in failed}
    assert "account.totalMaintMargin" in fields
    assert [
        line["event"] for line in logs if line["event"] in {"account.blind", "account.data_restored"}
    ] == [
        "account.blind",
        "account.data_restored",
    ]
    assert not [line for line in logs if line["log_level"] in {"error", "critical"}]
