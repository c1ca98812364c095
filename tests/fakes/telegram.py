"""A fake Telegram Bot API: ``sendMessage`` and ``getUpdates`` answered as api.telegram.org answers them.

Paths are ``/bot<token>/<method>``; a wrong token gets 401 ``Unauthorized``, an unknown chat 400
``Bad Request: chat not found``, and HTML that Telegram would not parse (an unescaped ``<`` or
``&``, an unsupported tag) 400 ``Bad Request: can't parse entities: ...``. Faults answer
``{"ok": false, "error_code": N, "description": ..., "parameters": {"retry_after": N}}`` (the
parameters only for 429). ``push_message`` queues an incoming message for ``getUpdates``.
"""

from __future__ import annotations

import contextlib
import html
import re
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from .base import FakeServer, Fault, retry_after_header

DESCRIPTIONS = {
    400: "Bad Request: chat not found",
    401: "Unauthorized",
    403: "Forbidden: bot was blocked by the user",
    404: "Not Found",
    409: "Conflict: terminated by other getUpdates request",
    429: "Too Many Requests: retry after {retry_after}",
    500: "Internal Server Error",
    502: "Bad Gateway",
}

#: Tags Telegram's HTML parse mode accepts.
ALLOWED_TAGS = frozenset(
    {"b", "strong", "i", "em", "u", "ins", "s", "strike", "del", "span", "tg-spoiler", "a", "code", "pre"}
    | {"blockquote", "tg-emoji"}
)
_TAG = re.compile(r"</?([a-zA-Z][a-zA-Z0-9-]*)(?:\s[^<>]*)?>")
_ENTITY = re.compile(r"&(?:lt|gt|amp|quot|#\d+|#x[0-9a-fA-F]+);")


def parse_html(text: str) -> str:
    """The plain text of Telegram HTML, or ``ValueError`` with Telegram's own complaint."""
    plain: list[str] = []
    index = 0
    while index < len(text):
        char = text[index]
        if char == "<":
            match = _TAG.match(text, index)
            if match is None:
                raise ValueError(f"Unexpected end tag at byte offset {index}")
            if match.group(1).lower() not in ALLOWED_TAGS:
                raise ValueError(f'Unsupported start tag "{match.group(1)}" at byte offset {index}')
            index = match.end()
        elif char == "&":
            match = _ENTITY.match(text, index)
            if match is None:
                raise ValueError(f"Character entity expected at byte offset {index}")
            plain.append(html.unescape(match.group(0)))
            index = match.end()
        elif char == ">":
            raise ValueError(f"Unexpected character '>' at byte offset {index}")
        else:
            plain.append(char)
            index += 1
    return "".join(plain)


@dataclass
class FakeTelegram(FakeServer):
    """The Bot API for one bot (``token``) that can write to ``chats``."""

    token: str = "123456:TEST-token-never-logged"  # noqa: S105 - a fake bot token
    chats: set[int | str] = field(default_factory=set)
    updates: list[dict[str, Any]] = field(default_factory=list)
    sent: list[dict[str, Any]] = field(default_factory=list)
    _next_update_id: int = 1000
    _next_message_id: int = 1

    def add_routes(self, app: web.Application) -> None:
        """``/bot{token}/{method}``, GET or POST."""
        app.router.add_route("*", "/bot{token}/{method}", self._method)

    def route_of(self, request: web.Request) -> str:
        """The Bot API method name (``sendMessage``), so faults can aim at one method."""
        return request.match_info.get("method", request.path)

    def fault_response(self, fault: Fault) -> web.StreamResponse:
        """Telegram's error document; 429 carries ``parameters.retry_after`` (and no header)."""
        description = fault.description or DESCRIPTIONS.get(fault.status, "Internal Server Error")
        document: dict[str, Any] = {
            "ok": False,
            "error_code": fault.status,
            "description": description.format(retry_after=fault.retry_after),
        }
        headers: dict[str, str] = {}
        if fault.status == 429 and fault.retry_after is not None:
            document["parameters"] = {"retry_after": fault.retry_after}
        elif fault.retry_after is not None:
            headers = retry_after_header(fault)
        if fault.status in {502, 503, 504}:  # a proxy in front of the Bot API answers these, in HTML
            return web.Response(
                status=fault.status, text="<html><body>Bad Gateway</body></html>", content_type="text/html"
            )
        return web.json_response(document, status=fault.status, headers=headers)

    def push_message(
        self, chat_id: int, text: str, *, date: float | None = None, username: str | None = None
    ) -> int:
        """Queue a message from ``chat_id`` for ``getUpdates``; returns its ``update_id``."""
        update_id = self._next_update_id
        self._next_update_id += 1
        chat: dict[str, Any] = {"id": chat_id, "type": "private" if chat_id > 0 else "supergroup"}
        if username:
            chat["username"] = username
        self.changed()
        self.updates.append(
            {
                "update_id": update_id,
                "message": {
                    "message_id": update_id,
                    "from": {"id": abs(chat_id), "is_bot": False, "first_name": "Trader"},
                    "chat": chat,
                    "date": int(time.time() if date is None else date),
                    "text": text,
                },
            }
        )
        return update_id

    def messages(self, chat_id: int | str | None = None) -> list[dict[str, Any]]:
        """The messages sendMessage accepted (to ``chat_id``, if given): their parameters plus ``plain``."""
        return [item for item in self.sent if chat_id is None or item["chat_id"] == chat_id]

    async def wait_for_messages(self, count: int, timeout_s: float = 5.0) -> list[dict[str, Any]]:
        """Wait until ``count`` messages were accepted."""
        await self.wait_until(lambda: len(self.sent) >= count, timeout_s)
        return self.sent

    @staticmethod
    def _error(status: int, description: str, **parameters: Any) -> web.Response:  # noqa: ANN401
        document: dict[str, Any] = {"ok": False, "error_code": status, "description": description}
        if parameters:
            document["parameters"] = parameters
        return web.json_response(document, status=status)

    async def _params(self, request: web.Request) -> dict[str, Any]:
        params: dict[str, Any] = dict(request.query)
        if request.content_type == "application/json":
            body = await request.json()
            if not isinstance(body, dict):
                raise web.HTTPBadRequest
            params.update(body)
        elif request.can_read_body:
            params.update(await request.post())
        return params

    async def _method(self, request: web.Request) -> web.StreamResponse:
        if request.match_info["token"] != self.token:
            return self._error(401, "Unauthorized")
        params = await self._params(request)
        match request.match_info["method"]:
            case "sendMessage":
                return self._send_message(params)
            case "getUpdates":
                return await self._get_updates(params)
            case "getMe":
                return web.json_response({"ok": True, "result": self._bot()})
            case _:
                return self._error(404, "Not Found")

    def _bot(self) -> dict[str, Any]:
        return {
            "id": int(self.token.split(":", 1)[0]),
            "is_bot": True,
            "first_name": "Margin",
            "username": "margin_bot",
        }

    def _send_message(self, params: dict[str, Any]) -> web.Response:
        chat_id = params.get("chat_id")
        if chat_id is None:
            return self._error(400, "Bad Request: chat_id is empty")
        with contextlib.suppress(ValueError, TypeError):
            chat_id = int(chat_id)
        if chat_id not in self.chats:
            return self._error(400, "Bad Request: chat not found")
        text = str(params.get("text", ""))
        if not text.strip():
            return self._error(400, "Bad Request: message text is empty")
        plain = text
        if params.get("parse_mode") == "HTML":
            try:
                plain = parse_html(text)
            except ValueError as error:
                return self._error(400, f"Bad Request: can't parse entities: {error}")
        if len(plain) > 4096:
            return self._error(400, "Bad Request: message is too long")
        message_id = self._next_message_id
        self._next_message_id += 1
        self.sent.append({**params, "chat_id": chat_id, "plain": plain, "at": time.monotonic()})
        self.changed()
        result = {
            "message_id": message_id,
            "from": self._bot(),
            "chat": {"id": chat_id, "type": "private"},
            "date": int(time.time()),
            "text": plain,
        }
        return web.json_response({"ok": True, "result": result})

    async def _get_updates(self, params: dict[str, Any]) -> web.Response:
        offset = int(params.get("offset", 0))
        timeout = float(params.get("timeout", 0))
        self.updates = [update for update in self.updates if update["update_id"] >= offset]
        with contextlib.suppress(TimeoutError):
            await self.wait_until(lambda: bool(self.updates) or self._closing.is_set(), timeout)
        return web.json_response({"ok": True, "result": list(self.updates[:100])})
