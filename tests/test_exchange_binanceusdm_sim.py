"""The Binance USDⓈ-M adapter driving real ccxt over loopback against the simulator (no mocks)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
import pytest_asyncio
from monitor.errors import (
    ClockSkewError,
    OperationalExchangeError,
    PayloadError,
    RateLimitedError,
    TemporaryExchangeError,
)
from monitor.exchanges.binanceusdm import BinanceUsdmSource
from monitor.exchanges.client import ClientSettings, Credentials, MarketCache
from monitor.exchanges.factory import create_source
from monitor.risk import assess
from monitor.sim import DEMO_API_KEY, DEMO_SECRET, SimServer

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

SECRET_PARTS = (DEMO_SECRET, "signature=")


@pytest_asyncio.fixture
async def sim() -> AsyncIterator[SimServer]:
    """A simulator with the demo account, marks held still."""
    async with SimServer(scenario="flat", tick_s=0.02, mark_push_s=0.02, autostart=False) as server:
        yield server


def settings(sim: SimServer, *, secret: str = DEMO_SECRET, timeout_s: float = 5.0) -> ClientSettings:
    """Client settings aimed at ``sim`` with the demo account's credentials."""
    return ClientSettings(
        "binanceusdm",
        Credentials(api_key=DEMO_API_KEY, secret=secret),
        base_url=sim.base_url,
        ws_url=sim.ws_url,
        timeout_s=timeout_s,
    )


@pytest_asyncio.fixture
async def source(sim: SimServer) -> AsyncIterator[BinanceUsdmSource]:
    """The demo account's source, closed afterwards."""
    made = BinanceUsdmSource("demo", settings(sim), MarketCache())
    yield made
    await made.close()


@pytest.mark.asyncio
async def test_fetch_matches_the_simulators_cross_figures(sim: SimServer, source: BinanceUsdmSource) -> None:
    """Reported and computed cross figures equal the simulator's own (0.1 percentage point on the ratio)."""
    fetched = await source.fetch()
    truth = sim.figures()
    reported = fetched.snapshot.reported
    assert reported is not None
    assert reported.maintenance_margin == pytest.approx(truth.maintenance_margin, rel=1e-6)
    assert reported.margin_balance == pytest.approx(truth.margin_balance, rel=1e-6)
    assert fetched.snapshot.wallet_balance == pytest.approx(truth.cross_wallet, rel=1e-9)
    assessment = assess(fetched.snapshot, (1.5, 1.3, 1.2))
    assert assessment.maintenance_margin == pytest.approx(truth.maintenance_margin, rel=1e-6)
    if truth.margin_ratio is not None:
        assert assessment.margin_ratio is not None
        assert assessment.margin_ratio * 100 == pytest.approx(truth.margin_ratio * 100, abs=0.1)
    assert not fetched.approximate


@pytest.mark.asyncio
async def test_brackets_are_cached_until_refresh(sim: SimServer, source: BinanceUsdmSource) -> None:
    """The second fetch skips leverageBracket; refresh_tiers makes the next one read it again."""
    first = await source.fetch()
    second = await source.fetch()
    assert second.requests == first.requests - 2  # no markets, no brackets
    await source.refresh_tiers()
    third = await source.fetch()
    assert third.requests == second.requests + 1
    assert sim.faults.requests["/fapi/v1/leverageBracket"] == 2


@pytest.mark.asyncio
async def test_markets_load_once_for_two_accounts(sim: SimServer) -> None:
    """Two accounts of one exchange share one exchangeInfo request through the MarketCache."""
    cache = MarketCache()
    first = create_source("one", settings(sim), cache)
    second = create_source("two", settings(sim), cache)
    try:
        await first.fetch()
        await second.fetch()
    finally:
        await first.close()
        await second.close()
        await first.close()  # idempotent
    assert cache.loads(settings(sim).market_key) == 1
    assert sim.faults.requests["/fapi/v1/exchangeInfo"] == 1


FAULTS = [
    ("rate limit", "rate_limit", RateLimitedError),
    ("ban", "ban", RateLimitedError),
    ("server error", "http_500", TemporaryExchangeError),
    ("unavailable", "http_503", TemporaryExchangeError),
    ("malformed json", "malformed_json", PayloadError),  # ccxt hands the text through: garbage, named
    ("clock", "timestamp", ClockSkewError),
]


@pytest.mark.parametrize(("kind", "error"), [case[1:] for case in FAULTS], ids=[case[0] for case in FAULTS])
@pytest.mark.asyncio
async def test_faults_become_our_errors(
    sim: SimServer, source: BinanceUsdmSource, kind: str, error: type[Exception]
) -> None:
    """Each injected fault surfaces as the error class that tells the caller what to do."""
    await source.fetch()
    sim.faults.inject(kind, path="/fapi/v3/account")
    with pytest.raises(error) as caught:
        await source.fetch()
    assert type(caught.value) is error
    for part in SECRET_PARTS:
        assert part not in str(caught.value)
    if isinstance(caught.value, RateLimitedError):
        assert caught.value.retry_after == 2.0
    await source.fetch()  # the next poll recovers


@pytest.mark.asyncio
async def test_missing_field_is_a_payload_error(sim: SimServer, source: BinanceUsdmSource) -> None:
    """A payload without totalCrossWalletBalance names the payload, the field, account and exchange."""
    sim.faults.inject("missing_field", path="/fapi/v3/account", field="totalCrossWalletBalance")
    with pytest.raises(PayloadError, match=r"^account\.totalCrossWalletBalance: missing") as caught:
        await source.fetch()
    assert (caught.value.account, caught.value.exchange) == ("demo", "binanceusdm")


@pytest.mark.asyncio
async def test_wrong_secret_needs_a_human(sim: SimServer) -> None:
    """A bad signature is operational, and the message carries neither secret nor signature."""
    wrong = "not-the-secret-at-all"
    bad = BinanceUsdmSource("demo", settings(sim, secret=wrong), MarketCache())
    try:
        with pytest.raises(OperationalExchangeError) as caught:
            await bad.fetch()
    finally:
        await bad.close()
    assert "not-the-secret-at-all" not in str(caught.value)
    assert "signature=" not in str(caught.value)
