"""Point a ccxt client at another host (a testnet, a proxy, the simulator)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit


def rewrite_hosts(urls: Any, base_url: str) -> Any:  # noqa: ANN401 - ccxt's url tables are untyped nests
    """Return ``urls`` (a ccxt ``urls['api']`` value) with every scheme and host replaced by ``base_url``.

    Paths are kept, so ``https://fapi.binance.com/fapi/v1`` becomes ``http://127.0.0.1:8080/fapi/v1``.
    Nested dicts and lists are rewritten throughout; anything that is not a URL is left as it is.
    """
    if isinstance(urls, dict):
        return {key: rewrite_hosts(value, base_url) for key, value in urls.items()}
    if isinstance(urls, list):
        return [rewrite_hosts(value, base_url) for value in urls]
    if isinstance(urls, str) and "://" in urls:
        parts = urlsplit(urls)
        rest = parts.path + (f"?{parts.query}" if parts.query else "")
        return base_url.rstrip("/") + rest
    return urls
