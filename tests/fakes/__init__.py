"""Local fake peers for the HTTP channels: real aiohttp servers on 127.0.0.1 that answer like the real ones.

Each records what it received (``received``, and a per-peer list of accepted payloads) and takes
scripted faults: ``fail_next(status, retry_after=..., retry_after_http_date=..., route=..., times=...)``
and ``hang_next(route=..., times=...)``.
"""

from .base import FakeServer, Fault, Received
from .ntfy import FakeNtfy
from .pushover import FakePushover
from .telegram import FakeTelegram, parse_html
from .webhook import FakeWebhook

__all__ = [
    "FakeNtfy",
    "FakePushover",
    "FakeServer",
    "FakeTelegram",
    "FakeWebhook",
    "Fault",
    "Received",
    "parse_html",
]
