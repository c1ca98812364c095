"""A fake ntfy server: publishing as JSON (``POST /``) or plain (``POST /<topic>``), answered as ntfy.sh does.

Errors are ntfy's JSON (``{"code": 40301, "http": 403, "error": "forbidden", "link": ...}``). With
``token`` set, the topic is protected: no ``Authorization`` gets 403, a wrong Bearer token 401.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from .base import FakeServer, Fault, retry_after_header

ERRORS = {
    400: (40001, "invalid request"),
    401: (40101, "unauthorized"),
    403: (40301, "forbidden"),
    404: (40401, "page not found"),
    413: (41301, "request entity too large"),
    429: (42901, "limit reached: too many requests"),
    500: (50001, "internal server error"),
    507: (50701, "insufficient storage"),
}


def error_response(
    status: int, *, code: int | None = None, error: str | None = None, headers: dict[str, str] | None = None
) -> web.Response:
    """Ntfy's error document."""
    default_code, default_error = ERRORS.get(status, (status * 100 + 1, "error"))
    document = {
        "code": code or default_code,
        "http": status,
        "error": error or default_error,
        "link": "https://ntfy.sh/docs/publish/",
    }
    return web.json_response(document, status=status, headers=headers)


@dataclass
class FakeNtfy(FakeServer):
    """ntfy with one optional access ``token`` guarding every topic."""

    token: str | None = None
    published: list[dict[str, Any]] = field(default_factory=list)

    def add_routes(self, app: web.Application) -> None:
        """``POST /`` (JSON) and ``POST|PUT /{topic}`` (body is the message)."""
        app.router.add_post("/", self._publish_json)
        app.router.add_route("POST", "/{topic}", self._publish_plain)
        app.router.add_route("PUT", "/{topic}", self._publish_plain)

    def fault_response(self, fault: Fault) -> web.StreamResponse:
        """Ntfy's error JSON; ``Retry-After`` when scripted."""
        return error_response(fault.status, error=fault.description, headers=retry_after_header(fault))

    def _denied(self, request: web.Request) -> web.Response | None:
        if self.token is None:
            return None
        authorization = request.headers.get("Authorization")
        if authorization is None:
            return error_response(403)
        if authorization != f"Bearer {self.token}":
            return error_response(401)
        return None

    async def _publish_json(self, request: web.Request) -> web.Response:
        if (denied := self._denied(request)) is not None:
            return denied
        try:
            document = await request.json()
        except ValueError:
            return error_response(400, code=40017, error="invalid request: request body must be message JSON")
        if not isinstance(document, dict) or not isinstance(document.get("topic"), str):
            return error_response(400, code=40017, error="invalid request: request body must be message JSON")
        return self._accept(document)

    async def _publish_plain(self, request: web.Request) -> web.Response:
        if (denied := self._denied(request)) is not None:
            return denied
        document: dict[str, Any] = {"topic": request.match_info["topic"], "message": await request.text()}
        if title := request.headers.get("Title") or request.headers.get("X-Title"):
            document["title"] = title
        if priority := request.headers.get("Priority") or request.headers.get("X-Priority"):
            document["priority"] = int(priority) if priority.isdigit() else priority
        if tags := request.headers.get("Tags") or request.headers.get("X-Tags"):
            document["tags"] = [tag.strip() for tag in tags.split(",")]
        return self._accept(document)

    def _accept(self, document: dict[str, Any]) -> web.Response:
        priority = document.get("priority", 3)
        if not isinstance(priority, int) or isinstance(priority, bool) or not 1 <= priority <= 5:
            return error_response(400, code=40007, error="invalid priority")
        tags = document.get("tags", [])
        if not isinstance(tags, list) or not all(isinstance(tag, str) for tag in tags):
            return error_response(400, code=40017, error="invalid request: request body must be message JSON")
        now = int(time.time())
        message = {
            "id": secrets.token_urlsafe(9)[:12],
            "time": now,
            "expires": now + 43200,
            "event": "message",
            "topic": document["topic"],
            "message": document.get("message") or "triggered",
        }
        for key in ("title", "priority", "tags"):
            if key in document:
                message[key] = document[key]
        self.published.append(message)
        return web.json_response(message)
