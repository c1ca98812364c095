"""Client creation, host rewriting, sandbox, the factory's choices and idempotent close (no network)."""

from __future__ import annotations

import pytest
from monitor.errors import ConfigError
from monitor.exchanges.client import ClientHandle, ClientSettings, Credentials, MarketCache, create_client
from monitor.exchanges.factory import ADAPTERS, create_source
from monitor.exchanges.generic import GenericSource

ADAPTER_IDS = sorted(ADAPTERS)


@pytest.mark.parametrize("exchange_id", ADAPTER_IDS, ids=ADAPTER_IDS)
@pytest.mark.asyncio
async def test_factory_picks_the_adapter_and_closes_twice(exchange_id: str) -> None:
    """Each family gets its own adapter; close() twice is harmless."""
    credentials = Credentials(api_key="k", secret="s", password="p", wallet_address="0x" + "1" * 40)  # noqa: S106 - dummies
    source = create_source("acct", ClientSettings(exchange_id, credentials), MarketCache())
    assert isinstance(source, ADAPTERS[exchange_id])
    assert (source.name, source.exchange_id) == ("acct", exchange_id)
    await source.close()
    await source.close()


@pytest.mark.asyncio
async def test_generic_fallback_is_approximate() -> None:
    """An exchange without an adapter but with fetchPositions gets the approximate generic source."""
    source = create_source("acct", ClientSettings("kucoinfutures"), MarketCache())
    try:
        assert isinstance(source, GenericSource)
        assert source.approximate
    finally:
        await source.close()


@pytest.mark.parametrize(
    ("exchange_id", "message"),
    [("nosuchexchange", "unknown ccxt exchange id"), ("bitstamp", "cannot list positions")],
    ids=["unknown", "no positions"],
)
def test_factory_refuses(exchange_id: str, message: str) -> None:
    """Unknown ids and exchanges without fetchPositions are configuration errors on the exchange key."""
    with pytest.raises(ConfigError, match=message) as caught:
        create_source("acct", ClientSettings(exchange_id), MarketCache())
    assert caught.value.field == "exchange"


@pytest.mark.asyncio
async def test_hyperliquid_needs_a_wallet_address() -> None:
    """Hyperliquid is read by address: without one the account is misconfigured."""
    with pytest.raises(ConfigError, match="wallet_address"):
        create_source("acct", ClientSettings("hyperliquid"), MarketCache())


@pytest.mark.asyncio
async def test_base_url_rewrites_every_rest_host_and_keeps_ws_url() -> None:
    """Every REST URL points at base_url, paths kept; ws_url is stored for the streams."""
    settings = ClientSettings("binanceusdm", base_url="http://127.0.0.1:9", ws_url="ws://127.0.0.1:9/ws")
    handle = ClientHandle(settings, account="a")
    try:
        api = handle.client.urls["api"]
        assert api["fapiPublic"] == "http://127.0.0.1:9/fapi/v1"
        assert api["fapiPrivateV3"] == "http://127.0.0.1:9/fapi/v3"
        assert handle.ws_url == "ws://127.0.0.1:9/ws"
        assert handle.client.options["fetchMarkets"]["types"] == ["linear"]
        assert handle.client.options["fetchCurrencies"] is False
        assert handle.client.enableRateLimit is True
    finally:
        await handle.close()
        await handle.close()
    assert handle.closed


@pytest.mark.asyncio
async def test_sandbox_switches_to_the_testnet() -> None:
    """sandbox=True uses ccxt's test URLs."""
    client = create_client(ClientSettings("binanceusdm", sandbox=True))
    try:
        assert (
            "binance.com" not in client.urls["api"]["fapiPublic"]
            or "test" in client.urls["api"]["fapiPublic"]
        )
    finally:
        await client.close()


def test_client_outside_a_loop_is_refused() -> None:
    """Ccxt binds its session to the running loop: creating a client outside one is a bug."""
    with pytest.raises(RuntimeError):
        create_client(ClientSettings("binanceusdm"))


def test_credentials_repr_hides_secrets() -> None:
    """Credentials never show their values in logs or tracebacks."""
    text = repr(Credentials(api_key="KEY123", secret="SEC456", password="PW789"))  # noqa: S106 - dummies
    assert "KEY123" not in text
    assert "SEC456" not in text
    assert "PW789" not in text
