"""A mark tick over many streamed accounts: who is handled first, and what is not computed.

These drive ``Streaming`` directly with the daemon, the alert engine and a recording submitter
(the project's own parts; no exchange is involved: the accounts come from a scripted source, and
marks are handed to ``on_marks`` as the mark feed hands them). The same path against ccxt and the
simulator's websocket is in ``test_streaming_e2e.py``.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import TYPE_CHECKING

import pytest
import pytest_asyncio
from monitor.alerts.engine import AlertPolicy
from monitor.config import load_config
from monitor.exchanges.base import FetchedAccount
from monitor.risk import AccountSnapshot, Position, Side, TierSpec, TierTable
from monitor.risk.model import DeferredAssessment
from monitor.service.alerting import Alerting
from monitor.service.daemon import Daemon
from monitor.service.streaming import Streaming
from structlog.testing import capture_logs

if TYPE_CHECKING:
    from pathlib import Path

    from monitor.alerts.model import Alert
    from monitor.risk import Assessment

SYMBOL = "BTC/USDT:USDT"
TIERS = TierTable.build([TierSpec(0, 1e6, 0.01), TierSpec(1e6, 1e9, 0.02)])
ACCOUNTS = 300
#: The one account near 150%: the last, so a tick in account order would reach it last.
NEAR = f"acct{ACCOUNTS - 1}"


def snapshot(wallet: float) -> AccountSnapshot:
    """A long of 100 BTC at 100: at a mark p the ratio is (wallet + 100 (p - 100)) / p."""
    return AccountSnapshot(wallet, (Position(SYMBOL, Side.LONG, 100.0, 100.0, 100.0, TIERS),))


class FixedSource:
    """An AccountSource that always answers the same snapshot."""

    exchange_id = "binanceusdm"

    def __init__(self, name: str, account: AccountSnapshot) -> None:
        self.name = name
        self.account = account

    async def fetch(self) -> FetchedAccount:
        """The snapshot."""
        return FetchedAccount(self.account, requests=1)

    async def refresh_tiers(self) -> None:
        """Nothing to refresh."""

    async def resync_clock(self) -> None:
        """Nothing to resync."""

    async def close(self) -> None:
        """Nothing to close."""


class Recorder:
    """The submitter: notes each alert in the order of events shared with the daemon's listener."""

    def __init__(self, order: list[str]) -> None:
        self.order = order

    async def submit(self, alert: Alert) -> None:
        """Note it as stored."""
        self.order.append(f"stored:{alert.account}:{alert.level}")


@pytest_asyncio.fixture
async def ticking(tmp_path: Path) -> tuple[Streaming, list[str]]:
    """Every account polled once (ok), then in the streaming's hands; the shared order of events."""
    stanzas = "\n".join(
        f'[[accounts]]\nname = "acct{i}"\nexchange = "binanceusdm"\napi_key_env = "K"\n'
        f'secret_env = "S"\nmode = "stream"\n'
        for i in range(ACCOUNTS)
    )
    path = tmp_path / "config.toml"
    path.write_text(f"[daemon]\nstate_dir = '{tmp_path}'\n{stanzas}", encoding="utf-8")
    config = load_config(path)
    order: list[str] = []
    alerting = Alerting(AlertPolicy(), Recorder(order), tmp_path)
    # 300% everywhere, but the last account: 152%, 2 points above the 150% threshold.
    sources = {
        f"acct{i}": FixedSource(f"acct{i}", snapshot(152.0 if f"acct{i}" == NEAR else 300.0))
        for i in range(ACCOUNTS)
    }
    daemon = Daemon(config, sources, alerting=alerting)
    streaming = Streaming(daemon, {})
    daemon.streaming = streaming
    with capture_logs():
        for name in sources:
            await daemon.poll(name)

    def handled(name: str, exchange: str, assessment: Assessment) -> None:
        del exchange, assessment
        order.append(f"handled:{name}")

    daemon.listeners.append(handled)
    return streaming, order


async def tick(streaming: Streaming, mark: float) -> None:
    """One mark for every account, as the feed hands it over; wait until the tick is done."""
    key = next(iter(streaming.index))
    streaming.on_marks(key, {SYMBOL: mark}, 0.0)
    async with asyncio.timeout(5):
        while streaming._pending_marks or streaming._applier is not None:  # noqa: ASYNC110, SLF001 - the tick's own state
            await asyncio.sleep(0.001)


@pytest.mark.asyncio
async def test_the_account_a_tick_takes_across_a_threshold_is_stored_before_the_others_are_handled(
    ticking: tuple[Streaming, list[str]],
) -> None:
    """A fall to 99.97 takes the last of 300 accounts below 150%: its alert is stored first of all.

    Then every other account is handled, each once; none of them solved its prices.
    """
    streaming, order = ticking
    with capture_logs():
        await tick(streaming, 99.97)  # the near one: (152 - 3) / 99.97 = 149.0%; the others 297%
    assert order[:2] == [f"handled:{NEAR}", f"stored:{NEAR}:warning"]
    assert sorted(order[2:]) == sorted(f"handled:acct{i}" for i in range(ACCOUNTS - 1))
    states = streaming.daemon.accounts
    assert states[NEAR].level == "warning"
    others = [states[f"acct{i}"].assessment for i in range(ACCOUNTS - 1)]
    assert all(isinstance(a, DeferredAssessment) and not a.solved for a in others)


@pytest.mark.asyncio
async def test_the_way_back_past_the_hysteresis_goes_first_too(ticking: tuple[Streaming, list[str]]) -> None:
    """Back above 150% the warning holds (the 5-point band); past 155% the recovery is stored first."""
    streaming, order = ticking
    with capture_logs():
        await tick(streaming, 99.97)
        order.clear()
        await tick(streaming, 100.0)  # 152%: in the band
        assert not any(event.startswith("stored:") for event in order)
        assert streaming.daemon.accounts[NEAR].level == "ok"  # the account's own level is the raw one
        order.clear()
        await tick(streaming, 100.04)  # (152 + 4) / 100.04 = 155.9%
    assert order[:2] == [f"handled:{NEAR}", f"stored:{NEAR}:ok"]


@pytest.mark.asyncio
async def test_a_deferred_assessment_gives_the_prices_when_asked(
    ticking: tuple[Streaming, list[str]],
) -> None:
    """The status page, metrics or an alert read the positions: they are solved then, at the tick's marks."""
    streaming, _ = ticking
    with capture_logs():
        await tick(streaming, 99.97)
    assessment = streaming.daemon.accounts["acct0"].assessment
    assert isinstance(assessment, DeferredAssessment)
    assert not assessment.solved
    (position,) = assessment.positions
    assert position.position.mark_price == 99.97
    # At ratio 1: 300 + 100 (p - 100) = p, so p = 9,700 / 99.
    assert position.liquidation_price == pytest.approx(9_700 / 99, rel=1e-12)


@pytest.mark.asyncio
async def test_a_mark_arriving_mid_tick_is_taken_at_the_next_slice(
    ticking: tuple[Streaming, list[str]],
) -> None:
    """A crossing mark that comes while a tick computes 300 accounts ends that pass at once.

    The accounts not reached yet join the next pass with the new marks, the near account first;
    each account is handled once, at the newest marks.
    """
    streaming, order = ticking
    key = next(iter(streaming.index))
    before = streaming.ticks
    with capture_logs():
        streaming.on_marks(key, {SYMBOL: 100.01}, 0.0)  # nobody crosses
        async with asyncio.timeout(5):
            while streaming.ticks == before:  # noqa: ASYNC110 - the first slice of the pass
                await asyncio.sleep(0)
        streaming.on_marks(key, {SYMBOL: 99.97}, 0.0)
        await tick(streaming, 99.97)
    assert streaming.ticks - before < 2 * ACCOUNTS  # the first pass was cut short
    assert order[:2] == [f"handled:{NEAR}", f"stored:{NEAR}:warning"]
    assert sorted(order[2:]) == sorted(f"handled:acct{i}" for i in range(ACCOUNTS - 1))
    others = [state.assessment for name, state in streaming.daemon.accounts.items() if name != NEAR]
    assert [a.margin_ratio if a else None for a in others] == [pytest.approx(2.97089)] * (ACCOUNTS - 1)


def test_first_reconciliations_are_spread_over_half_a_period(ticking: tuple[Streaming, list[str]]) -> None:
    """Read at start together, 300 accounts come due for REST between half and one period later, evenly.

    Due together, their answers would be parsed back to back every period, with the loop held.
    """
    streaming, _ = ticking
    period = streaming.reconcile_s
    offsets = sorted(live.reconcile_at - live.taken_at for live in streaming.live.values())
    assert offsets[0] >= period / 2
    assert offsets[-1] <= period
    gaps = [later - earlier for earlier, later in itertools.pairwise(offsets)]
    assert max(gaps) < 3 * period / (2 * ACCOUNTS)
