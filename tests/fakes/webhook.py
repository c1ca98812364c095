"""A fake webhook receiver, as an Alertmanager receiver behind a reverse proxy answers.

It takes JSON on any path and answers 200 with an empty body; with ``required_headers`` it answers
401 when one is missing or wrong. Faults answer plain text (a proxy's words) with ``Retry-After``
when scripted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from .base import FakeServer, Fault, retry_after_header


@dataclass
class FakeWebhook(FakeServer):
    """A receiver that records each JSON document it accepts in ``documents``."""

    required_headers: dict[str, str] = field(default_factory=dict)
    documents: list[dict[str, Any]] = field(default_factory=list)

    def add_routes(self, app: web.Application) -> None:
        """``POST`` on any path."""
        app.router.add_post("/{tail:.*}", self._receive)

    def fault_response(self, fault: Fault) -> web.StreamResponse:
        """A plain-text status line."""
        reason = fault.description or f"{fault.status} error"
        return web.Response(status=fault.status, text=str(reason), headers=retry_after_header(fault))

    async def _receive(self, request: web.Request) -> web.Response:
        for name, value in self.required_headers.items():
            if request.headers.get(name) != value:
                return web.Response(status=401, text="401 Unauthorized")
        if request.content_type != "application/json":
            return web.Response(status=415, text="415 Unsupported Media Type")
        try:
            document = await request.json()
        except ValueError:
            return web.Response(status=400, text="400 Bad Request: invalid JSON")
        self.documents.append(document)
        return web.Response(status=200)
