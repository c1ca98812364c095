"""``create_source``: the adapter for an account's exchange, or the generic one on ccxt's unified fields."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import ccxt

from monitor.errors import ConfigError
from monitor.exchanges.binancecoinm import BinanceCoinmSource
from monitor.exchanges.binanceusdm import BinanceUsdmSource
from monitor.exchanges.bybit import BybitSource
from monitor.exchanges.generic import GenericSource
from monitor.exchanges.hyperliquid import HyperliquidSource
from monitor.exchanges.okx import OkxSource

if TYPE_CHECKING:
    from monitor.exchanges.base import AccountSource
    from monitor.exchanges.client import ClientSettings, MarketCache
    from monitor.exchanges.source import RestSource

#: ccxt id -> the adapter that reads that exchange's raw payloads.
ADAPTERS: dict[str, type[RestSource]] = {
    "binanceusdm": BinanceUsdmSource,
    "binancecoinm": BinanceCoinmSource,
    "bybit": BybitSource,
    "okx": OkxSource,
    "hyperliquid": HyperliquidSource,
}


def create_source(name: str, settings: ClientSettings, markets: MarketCache, **options: Any) -> AccountSource:  # noqa: ANN401 - adapter options
    """The ``AccountSource`` for account ``name``; call it inside the running loop (it creates the client).

    ``options`` go to the adapter (``margin_asset``, ``multi_assets`` for Binance...). An exchange
    without an adapter gets ``GenericSource`` if ccxt can fetch its positions; anything else is a
    ``ConfigError`` on the ``exchange`` key.
    """
    adapter = ADAPTERS.get(settings.exchange_id)
    if adapter is not None:
        return adapter(name, settings, markets, **options)
    klass = getattr(ccxt, settings.exchange_id, None)
    if klass is None or settings.exchange_id not in ccxt.exchanges:
        raise ConfigError("exchange", f"unknown ccxt exchange id {settings.exchange_id!r}")
    if not klass().has.get("fetchPositions"):
        raise ConfigError("exchange", f"{settings.exchange_id} cannot list positions through ccxt")
    return GenericSource(name, settings, markets, **options)
