"""Every exchange adapter driving real ccxt over loopback against the simulator's personalities (no mocks).

Each dedicated adapter (Binance COIN-M, Bybit, OKX, Hyperliquid) is held against the simulator's own
figures for its demo account while the ``crash`` scenario moves the marks; the generic fallback is read
through ccxt's unified API on the simulator's Binance USDⓈ-M personality. Faults are injected on the
paths each personality serves and must surface as the error class that tells the daemon what to do.

Tolerances follow from what the payloads carry (the simulator computes in float64, then writes strings):

- Amounts: Bybit and OKX write 8 decimals (USDT), COIN-M 8 decimals of a coin, so a sum over two positions
  is off by at most a few 1e-8; Hyperliquid writes marks with 6 decimals, which the engine multiplies by
  up to 26.5 coins (1.3e-5 USDC). ``Venue.money`` states each bound with room to spare.
- The margin ratio: within 0.1 percentage point, the project's bar for "the same figure".
- Liquidation prices: the simulator bisects to 1e-15 relative, the engine solves in closed form from the
  rounded payload; 1e-7 relative is 0.006 USD at 60,000, far below a price tick.
- Drift: Bybit's ``accountMMRate`` is rounded to 4 decimals, but the adapter reads the unrounded
  ``totalMaintenanceMargin``; the loosest reported figure is COIN-M's ``maintMargin`` of about 0.004 BTC
  at 8 decimals (half a unit: 1.25e-6 relative), so drift must stay under 1e-5.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import ccxt.async_support as ccxt_async
import pytest
import pytest_asyncio
from monitor.errors import ConfigError, OperationalExchangeError, PayloadError, RateLimitedError
from monitor.exchanges.client import ClientSettings, Credentials, MarketCache
from monitor.exchanges.factory import create_source
from monitor.exchanges.generic import GenericSource
from monitor.exchanges.hyperliquid import HyperliquidSource
from monitor.exchanges.source import RestSource
from monitor.risk import Side, assess
from monitor.sim import (
    BYBIT_DEMO_API_KEY,
    BYBIT_DEMO_SECRET,
    DEMO_API_KEY,
    DEMO_SECRET,
    HYPERLIQUID_DEMO_ADDRESS,
    OKX_DEMO_API_KEY,
    OKX_DEMO_PASSPHRASE,
    OKX_DEMO_SECRET,
    SimServer,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator

    from monitor.exchanges.base import AccountSource
    from monitor.sim import VenueFigures

WRONG_SECRET = "not-the-secret-at-all"  # noqa: S105 - a made-up wrong secret
RATIO_PP = 0.1  # percentage points
MARK_REL = 1e-9  # Hyperliquid writes marks with 6 decimals: 5e-7 at 3,000 is 1.7e-10
LIQUIDATION_REL = 1e-7
DRIFT_MAX = 1e-5
#: Scenario ticks at which the figures are compared: the initial marks, then the crash's ramps and holds
#: through 140%, 125%, 110% and 95% of the Binance demo account (the other venues' accounts follow).
CHECKPOINTS = (0, 8, 24, 37, 52)


@dataclass(frozen=True, slots=True)
class Venue:
    """A dedicated adapter, its demo account on the simulator, and what to expect of it."""

    exchange_id: str
    credentials: Credentials
    figures: Callable[[SimServer], VenueFigures]
    quote: str  # unified symbol of a Binance market's base: "{base}/{quote}"
    money: float  # absolute tolerance on amounts, in the account's settle currency (see the module)


VENUES = {
    "binancecoinm": Venue(
        "binancecoinm",
        Credentials(api_key=DEMO_API_KEY, secret=DEMO_SECRET),
        lambda sim: sim.coinm.figures(asset="BTC"),
        "USD:{base}",
        5e-8,
    ),
    "bybit": Venue(
        "bybit",
        Credentials(api_key=BYBIT_DEMO_API_KEY, secret=BYBIT_DEMO_SECRET),
        lambda sim: sim.bybit.figures(),
        "USDT:USDT",
        1e-6,
    ),
    "okx": Venue(
        "okx",
        Credentials(api_key=OKX_DEMO_API_KEY, secret=OKX_DEMO_SECRET, password=OKX_DEMO_PASSPHRASE),
        lambda sim: sim.okx.figures(),
        "USDT:USDT",
        1e-6,
    ),
    "hyperliquid": Venue(
        "hyperliquid",
        Credentials(wallet_address=HYPERLIQUID_DEMO_ADDRESS),
        lambda sim: sim.hyperliquid.figures(),
        "USDC:USDC",
        1e-4,
    ),
}
#: The generic fallback reads the simulator's Binance USDⓈ-M personality (the factory would route
#: ``binanceusdm`` to its dedicated adapter, so the tests construct ``GenericSource`` directly).
GENERIC = "generic"
BINANCE_CREDENTIALS = Credentials(api_key=DEMO_API_KEY, secret=DEMO_SECRET)


def unified(venue: Venue, sim_symbol: str) -> str:
    """The ccxt symbol of the simulator's Binance market ``sim_symbol`` on ``venue`` (``BTCUSDT`` ->)."""
    base = sim_symbol.removesuffix("USDT")
    return f"{base}/{venue.quote.format(base=base)}"


@pytest_asyncio.fixture
async def sim() -> AsyncIterator[SimServer]:
    """A simulator on the crash scenario whose marks move only on ``step()``."""
    async with SimServer(scenario="crash", autostart=False) as server:
        yield server


def settings(sim: SimServer, exchange_id: str, credentials: Credentials) -> ClientSettings:
    """Client settings aimed at ``sim``."""
    return ClientSettings(exchange_id, credentials, base_url=sim.base_url, timeout_s=5.0)


def make_source(sim: SimServer, name: str, credentials: Credentials | None = None) -> AccountSource:
    """The source for venue ``name`` (or the generic one), with its demo credentials unless given."""
    if name == GENERIC:
        return GenericSource(
            "acct", settings(sim, "binanceusdm", credentials or BINANCE_CREDENTIALS), MarketCache()
        )
    venue = VENUES[name]
    return create_source(
        "acct", settings(sim, venue.exchange_id, credentials or venue.credentials), MarketCache()
    )


@pytest_asyncio.fixture
async def opened(sim: SimServer) -> AsyncIterator[Callable[..., AccountSource]]:
    """Makes sources with ``make_source`` and closes every one of them afterwards."""
    made: list[AccountSource] = []

    def make(name: str, credentials: Credentials | None = None) -> AccountSource:
        source = make_source(sim, name, credentials)
        assert isinstance(source, RestSource)
        made.append(source)
        # ccxt's client-side throttle spaces requests by the venue's weights (COIN-M's account call costs
        # 250 ms); the simulator answers its own rate-limit faults, so the sleeps only slow the file down.
        source.client.enableRateLimit = False
        return source

    yield make
    for source in made:
        await source.close()


def crash(sim: SimServer) -> Iterator[int]:
    """Step ``sim`` to each of ``CHECKPOINTS`` in turn, yielding the tick reached."""
    for target in CHECKPOINTS:
        while sim.tick < target:
            sim.step()
        yield sim.tick


# --- the dedicated adapters against the simulator's figures ---------------------------------------


@pytest.mark.parametrize("name", list(VENUES), ids=list(VENUES))
@pytest.mark.asyncio
async def test_cross_figures_follow_the_crash(
    sim: SimServer, opened: Callable[..., AccountSource], name: str
) -> None:
    """Ratio (0.1 pp), maintenance margin and margin balance equal the simulator's at every checkpoint."""
    venue = VENUES[name]
    source = opened(name)
    ratios: list[float] = []
    for tick in crash(sim):
        assessment = assess((await source.fetch()).snapshot)
        truth = venue.figures(sim)
        assert truth.margin_ratio is not None
        assert assessment.margin_ratio is not None, tick
        assert abs(assessment.margin_ratio * 100 - truth.margin_ratio * 100) <= RATIO_PP, tick
        assert assessment.maintenance_margin == pytest.approx(truth.maintenance_margin, abs=venue.money), tick
        assert assessment.margin_balance == pytest.approx(truth.margin_balance, abs=venue.money), tick
        ratios.append(assessment.margin_ratio)
    assert ratios == sorted(ratios, reverse=True)  # the crash hurts every demo account
    assert ratios[-1] < ratios[0]


@pytest.mark.parametrize("name", list(VENUES), ids=list(VENUES))
@pytest.mark.asyncio
async def test_positions_match_the_simulator(
    sim: SimServer, opened: Callable[..., AccountSource], name: str
) -> None:
    """Symbols, sides, sizes (in the venue's unit) and marks are the simulator's positions."""
    venue = VENUES[name]
    source = opened(name)
    for tick in crash(sim):
        snapshot = (await source.fetch()).snapshot
        got = {(p.symbol, p.side, p.contracts, p.margin_mode.value) for p in snapshot.positions}
        want = {
            (
                unified(venue, f.position.symbol),
                Side.LONG if f.position.size > 0 else Side.SHORT,
                abs(f.position.size),
                "cross",
            )
            for f in venue.figures(sim).positions
        }
        assert got == want, tick
        marks = {p.symbol: p.mark_price for p in snapshot.positions}
        for symbol, mark in marks.items():
            sim_symbol = next(s for s in sim.marks if unified(venue, s) == symbol)
            assert mark == pytest.approx(sim.marks[sim_symbol], rel=MARK_REL), (tick, symbol)


@pytest.mark.parametrize("name", list(VENUES), ids=list(VENUES))
@pytest.mark.asyncio
async def test_liquidation_prices_follow_the_crash(
    sim: SimServer, opened: Callable[..., AccountSource], name: str
) -> None:
    """Each position's liquidation price equals the simulator's bisection within 1e-7, mark by mark."""
    venue = VENUES[name]
    source = opened(name)
    for tick in crash(sim):
        assessment = assess((await source.fetch()).snapshot)
        ours = {(p.position.symbol, p.position.side): p.liquidation_price for p in assessment.positions}
        theirs = {
            (unified(venue, f.position.symbol), Side.LONG if f.position.size > 0 else Side.SHORT): (
                f.liquidation_price
            )
            for f in venue.figures(sim).positions
        }
        assert ours.keys() == theirs.keys()
        for key, price in theirs.items():
            assert price is not None
            assert ours[key] == pytest.approx(price, rel=LIQUIDATION_REL), (tick, key)


@pytest.mark.parametrize("name", list(VENUES), ids=list(VENUES))
@pytest.mark.asyncio
async def test_reported_figures_drift_little(
    sim: SimServer, opened: Callable[..., AccountSource], name: str
) -> None:
    """The adapter is exact (not approximate), fills ReportedFigures, and our figures drift under 1e-5."""
    source = opened(name)
    for tick in crash(sim):
        fetched = await source.fetch()
        assert fetched.approximate is False
        assert fetched.snapshot.reported is not None
        drift = assess(fetched.snapshot).drift
        assert drift is not None
        assert drift.maintenance_margin is not None
        assert drift.margin_balance is not None
        assert drift.worst is not None
        assert drift.worst < DRIFT_MAX, tick


# --- the generic fallback ---------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_generic_is_approximate_without_reported_figures(
    opened: Callable[..., AccountSource],
) -> None:
    """GenericSource marks its figures approximate and reports none of the exchange's (no drift)."""
    fetched = await opened(GENERIC).fetch()
    assert fetched.approximate is True
    assert fetched.snapshot.reported is None
    assert assess(fetched.snapshot).drift is None


@pytest.mark.asyncio
async def test_generic_positions_and_maintenance_margin_follow_the_crash(
    sim: SimServer, opened: Callable[..., AccountSource]
) -> None:
    """Unified positions (symbol, side, size, mark) and the MM from unified tiers equal the simulator's."""
    source = opened(GENERIC)
    for tick in crash(sim):
        snapshot = (await source.fetch()).snapshot
        truth = sim.figures()
        got = {(p.symbol, p.side, p.contracts) for p in snapshot.positions}
        want = {
            (
                f"{f.position.symbol.removesuffix('USDT')}/USDT:USDT",
                Side.LONG if f.position.amount > 0 else Side.SHORT,
                abs(f.position.amount),
            )
            for f in truth.positions
        }
        assert got == want, tick
        for position in snapshot.positions:
            sim_symbol = position.symbol.split("/")[0] + "USDT"
            assert position.mark_price == pytest.approx(sim.marks[sim_symbol], rel=MARK_REL), tick
        assessment = assess(snapshot)
        assert assessment.maintenance_margin == pytest.approx(truth.maintenance_margin, abs=1e-6), tick


@pytest.mark.asyncio
async def test_generic_margin_balance_matches_the_simulator(
    sim: SimServer, opened: Callable[..., AccountSource]
) -> None:
    """The generic margin balance and ratio are the simulator's (0.1 pp) through the crash."""
    source = opened(GENERIC)
    for tick in crash(sim):
        assessment = assess((await source.fetch()).snapshot)
        truth = sim.figures()
        assert assessment.margin_balance == pytest.approx(truth.margin_balance, rel=0.01), tick
        assert truth.margin_ratio is not None
        assert assessment.margin_ratio is not None
        assert abs(assessment.margin_ratio * 100 - truth.margin_ratio * 100) <= RATIO_PP, tick


@pytest.mark.asyncio
async def test_factory_falls_back_to_generic_for_an_exchange_without_adapter() -> None:
    """create_source gives an exchange with fetchPositions and no adapter of its own the GenericSource."""
    assert "bitget" in ccxt_async.exchanges
    source = create_source("acct", ClientSettings("bitget"), MarketCache())
    try:
        assert isinstance(source, GenericSource)
    finally:
        await source.close()


# --- errors -------------------------------------------------------------------------------------------


WRONG_SECRETS = {
    "binancecoinm": Credentials(api_key=DEMO_API_KEY, secret=WRONG_SECRET),
    "bybit": Credentials(api_key=BYBIT_DEMO_API_KEY, secret=WRONG_SECRET),
    "okx": Credentials(api_key=OKX_DEMO_API_KEY, secret=WRONG_SECRET, password=OKX_DEMO_PASSPHRASE),
    GENERIC: Credentials(api_key=DEMO_API_KEY, secret=WRONG_SECRET),
}


@pytest.mark.parametrize("name", list(WRONG_SECRETS), ids=list(WRONG_SECRETS))
@pytest.mark.asyncio
async def test_wrong_secret_needs_a_human(opened: Callable[..., AccountSource], name: str) -> None:
    """A bad signature is ccxt's AuthenticationError, which maps to OperationalExchangeError, secret cut."""
    with pytest.raises(OperationalExchangeError) as caught:
        await opened(name, WRONG_SECRETS[name]).fetch()
    assert type(caught.value) is OperationalExchangeError
    assert WRONG_SECRET not in str(caught.value)
    assert caught.value.account == "acct"


@pytest.mark.asyncio
async def test_hyperliquid_without_address_is_a_config_error(sim: SimServer) -> None:
    """Hyperliquid has no secret; an account without a wallet address is refused on the config key."""
    with pytest.raises(ConfigError, match="wallet_address"):
        HyperliquidSource("acct", settings(sim, "hyperliquid", Credentials()), MarketCache())


@pytest.mark.asyncio
async def test_hyperliquid_unknown_address_reads_an_empty_account(
    opened: Callable[..., AccountSource],
) -> None:
    """A well-formed address without an account reads as empty (Hyperliquid answers, it does not refuse)."""
    fetched = await opened("hyperliquid", Credentials(wallet_address="0x" + "ab" * 20)).fetch()
    assert fetched.snapshot.positions == ()
    assert assess(fetched.snapshot).margin_ratio is None


@dataclass(frozen=True, slots=True)
class FaultCase:
    """Where to inject a fault on a venue and what it must become."""

    path: str
    retry_after: float | None = None


RATE_LIMITS = {
    "binancecoinm": FaultCase("/dapi/v1/account", 2.0),  # 429 -1003 with Retry-After, as Binance
    "bybit": FaultCase("/v5/account/wallet-balance", None),  # retCode 10006 in a 200, no Retry-After
    "okx": FaultCase("/api/v5/account/balance", 2.0),  # 429 code 50011
    "hyperliquid": FaultCase("/info", 2.0),  # 429 with an empty body
    GENERIC: FaultCase("/fapi/v3/positionRisk", 2.0),
}


@pytest.mark.parametrize("name", list(RATE_LIMITS), ids=list(RATE_LIMITS))
@pytest.mark.asyncio
async def test_rate_limit_backs_off(sim: SimServer, opened: Callable[..., AccountSource], name: str) -> None:
    """A rate limit in the venue's shape is RateLimitedError with its Retry-After; the next poll works."""
    case = RATE_LIMITS[name]
    source = opened(name)
    await source.fetch()  # markets loaded: the next request to the path is the poll's
    sim.faults.inject("rate_limit", path=case.path)
    with pytest.raises(RateLimitedError) as caught:
        await source.fetch()
    assert caught.value.retry_after == case.retry_after
    assert caught.value.exchange == ("binanceusdm" if name == GENERIC else name)
    await source.fetch()


MISSING_FIELDS = {
    "binancecoinm": ("/dapi/v1/account", "crossWalletBalance", "account.assets[0].crossWalletBalance"),
    "bybit": (
        "/v5/account/wallet-balance",
        "totalMaintenanceMargin",
        "wallet-balance.result.list[0].totalMaintenanceMargin",
    ),
    "okx": ("/api/v5/account/positions", "markPx", "positions[0].markPx"),
    "hyperliquid": ("/info", "crossMaintenanceMarginUsed", "clearinghouseState.crossMaintenanceMarginUsed"),
    GENERIC: ("/fapi/v3/positionRisk", "markPrice", "fetchPositions[0].markPrice"),
}


@pytest.mark.parametrize(
    ("name", "path", "dropped", "named"),
    [(name, *case) for name, case in MISSING_FIELDS.items()],
    ids=list(MISSING_FIELDS),
)
@pytest.mark.asyncio
async def test_missing_field_is_a_payload_error(
    sim: SimServer, opened: Callable[..., AccountSource], name: str, path: str, dropped: str, named: str
) -> None:
    """A payload without a field it needs is a PayloadError naming payload, field, account and exchange."""
    source = opened(name)
    await source.fetch()
    sim.faults.inject("missing_field", path=path, field=dropped)
    with pytest.raises(PayloadError) as caught:
        await source.fetch()
    assert caught.value.field == named
    assert (caught.value.account, caught.value.exchange) == (
        "acct",
        "binanceusdm" if name == GENERIC else name,
    )
    await source.fetch()
