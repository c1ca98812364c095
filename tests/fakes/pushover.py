"""A fake Pushover API: ``POST /1/messages.json`` checked and answered as api.pushover.net does.

Refusals are HTTP 400 with ``{"<field>": "invalid", "errors": [...], "status": 0, "request": ...}``;
success ``{"status": 1, "request": ...}`` (plus ``receipt`` for emergency priority). Every answer
carries the ``X-Limit-App-*`` headers; 429 is the monthly quota spent.
"""

from __future__ import annotations

import secrets
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from .base import FakeServer, Fault, retry_after_header

DESCRIPTIONS = {
    400: "message cannot be blank",
    401: "application token is invalid",
    403: "application is disabled",
    429: "application has exceeded its monthly message limit",
    500: "internal server error",
}


@dataclass
class FakePushover(FakeServer):
    """Pushover for one application ``token`` and the ``users`` it may notify."""

    token: str = "azGDORePK8gMaC0QOYAMyEEuzJnyUi"  # noqa: S105 - a fake application token
    users: set[str] = field(default_factory=lambda: {"uQiRzpo4DXghDmr9QzzfQu27cmVRsG"})
    messages: list[dict[str, str]] = field(default_factory=list)
    monthly_limit: int = 10000

    def add_routes(self, app: web.Application) -> None:
        """``POST /1/messages.json``."""
        app.router.add_post("/1/messages.json", self._messages)

    def _limit_headers(self) -> dict[str, str]:
        reset = int(time.time()) + 86400 * 30
        remaining = max(0, self.monthly_limit - len(self.messages))
        return {
            "X-Limit-App-Limit": str(self.monthly_limit),
            "X-Limit-App-Remaining": str(remaining),
            "X-Limit-App-Reset": str(reset),
        }

    def fault_response(self, fault: Fault) -> web.StreamResponse:
        """Pushover's error JSON with its limit headers; ``Retry-After`` only when scripted."""
        if fault.status >= 500:
            return web.Response(
                status=fault.status, text="<html><body>Server Error</body></html>", content_type="text/html"
            )
        document = {
            "errors": [fault.description or DESCRIPTIONS.get(fault.status, "invalid request")],
            "status": 0,
            "request": str(uuid.uuid4()),
        }
        headers = {**self._limit_headers(), **retry_after_header(fault)}
        return web.json_response(document, status=fault.status, headers=headers)

    def _refuse(self, field_name: str | None, error: str) -> web.Response:
        document: dict[str, Any] = {"errors": [error], "status": 0, "request": str(uuid.uuid4())}
        if field_name:
            document[field_name] = "invalid"
        return web.json_response(document, status=400, headers=self._limit_headers())

    async def _messages(self, request: web.Request) -> web.Response:  # noqa: PLR0911 - one answer a rule
        if request.content_type == "application/json":
            raw = await request.json()
            form = {str(key): str(value) for key, value in raw.items()} if isinstance(raw, dict) else {}
        else:
            form = {key: str(value) for key, value in (await request.post()).items()}
        if form.get("token") != self.token:
            return self._refuse("token", "application token is invalid")
        if form.get("user") not in self.users:
            return self._refuse("user", "user identifier is not a valid user, group, or subscribed user key")
        if not form.get("message", "").strip():
            return self._refuse("message", "message cannot be blank")
        if len(form["message"]) > 1024:
            return self._refuse("message", "message is too long, maximum is 1024 characters")
        if len(form.get("title", "")) > 250:
            return self._refuse("title", "title is too long, maximum is 250 characters")
        priority = int(form.get("priority", "0"))
        if not -2 <= priority <= 2:
            return self._refuse("priority", "priority is invalid")
        answer: dict[str, Any] = {"status": 1, "request": str(uuid.uuid4())}
        if priority == 2:
            if "retry" not in form:
                return self._refuse("retry", "retry must be supplied with priority=2")
            if "expire" not in form:
                return self._refuse("expire", "expire must be supplied with priority=2")
            if int(form["retry"]) < 30:
                return self._refuse("retry", "retry is too small, minimum is 30")
            if int(form["expire"]) > 10800:
                return self._refuse("expire", "expire is too large, maximum is 10800")
            answer["receipt"] = secrets.token_hex(15)
        self.messages.append(form)
        return web.json_response(answer, headers=self._limit_headers())
