"""Telegram: alerts through the Bot API's ``sendMessage``, and commands through ``getUpdates``.

Plain aiohttp, not a Telegram library: the channel needs two methods, and owning the transport keeps
the token (which the Bot API puts in the URL path) out of every exception and log line, and lets
the channel honour ``retry_after`` itself.

Pacing: Telegram allows about one message a second per chat; each chat has its own limiter, and a
429's ``parameters.retry_after`` holds that chat back for as long as Telegram asked.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeAlias

import structlog

from monitor.alerts.model import AlertKind
from monitor.errors import (
    ConfigError,
    DeliveryError,
    MarginMonitorError,
    PermanentDeliveryError,
    TemporaryDeliveryError,
)
from monitor.notify.format import escape, render
from monitor.notify.http import HttpPeer, HttpReply, check_positive, check_url

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from monitor.alerts.model import Alert

log = structlog.get_logger("margin_monitor.notify.telegram")

#: The commands handed to the command handler (without their slash).
COMMANDS = frozenset({"status", "mute", "unmute", "help"})

HELP = "Commands: /status, /mute <account> <duration> (e.g. /mute main 2h), /unmute <account>, /help"

#: ``handler(command, args, chat_id)`` returns the reply text (plain text, sent without parse mode).
CommandHandler: TypeAlias = "Callable[[str, list[str], int | str], Awaitable[str]]"

#: Alerts whose per-chat progress is remembered (a retry skips the chats already served).
_PROGRESS_KEPT = 512

#: Telegram's limit for one message, in characters after entity parsing.
MAX_TEXT = 4096


@dataclass(frozen=True, slots=True)
class TelegramSettings:
    """One Telegram channel's settings.

    ``bot_token``: the bot's token from @BotFather (secret: kept out of repr, errors and logs).
    ``chat_ids``: the chats alerts go to and the only ones whose commands are obeyed: numeric ids
    (``123456789``, ``-1001234567890``; numeric strings are accepted) or ``@channelusername``.
    ``api_url``: the Bot API server (default ``https://api.telegram.org``; a local Bot API server or
    the tests' fake). ``timeout_s``: the limit on each sendMessage (default 10).
    ``min_interval_s``: the least time between two messages to one chat (default 1.0, Telegram's
    guidance). ``poll_timeout_s``: how long one getUpdates long poll waits (default 30).
    ``command_max_age_s``: commands older than this are dropped, not obeyed (default 300: a /mute
    sent while the daemon was down an hour ago should not act now).
    """

    bot_token: str = field(repr=False)
    chat_ids: tuple[int | str, ...]
    api_url: str = "https://api.telegram.org"
    timeout_s: float = 10.0
    min_interval_s: float = 1.0
    poll_timeout_s: float = 30.0
    command_max_age_s: float = 300.0

    def __post_init__(self) -> None:
        if not self.bot_token or any(char.isspace() or char == "/" for char in self.bot_token):
            raise ConfigError("bot_token", "must be a bot token (digits:letters), without spaces or '/'")
        if not self.chat_ids:
            raise ConfigError("chat_ids", "must name at least one chat")
        check_url(self.api_url, "api_url")
        check_positive(self.timeout_s, "timeout_s")
        check_positive(self.poll_timeout_s, "poll_timeout_s")
        check_positive(self.command_max_age_s, "command_max_age_s")
        if self.min_interval_s < 0:
            raise ConfigError("min_interval_s", f"must be 0 or more, got {self.min_interval_s}")


def _chat_key(chat_id: int | str) -> str:
    text = str(chat_id).strip()
    return text.lower() if text.startswith("@") else str(int(text)) if _is_int(text) else text


def _is_int(text: str) -> bool:
    return text.removeprefix("-").isdigit()


class TelegramChannel:
    """Sends each alert to every configured chat, once each, paced per chat.

    A retry after a partial failure sends only to the chats that did not get the alert yet (kept in
    memory: after a restart, a chat may see an alert twice; the ``id:`` footer tells them apart).
    """

    type = "telegram"

    def __init__(
        self,
        settings: TelegramSettings,
        *,
        name: str,
        min_level: str = "warning",
        accounts: frozenset[str] | None = None,
    ) -> None:
        self.settings = settings
        self.name = name
        self.min_level = min_level
        self.accounts = accounts
        self._http = HttpPeer(channel=name, timeout_s=settings.timeout_s, secrets=(settings.bot_token,))
        self._chats = {_chat_key(chat): chat for chat in settings.chat_ids}
        self._locks: dict[str, asyncio.Lock] = {}
        self._next_allowed: dict[str, float] = {}
        self._progress: OrderedDict[str, dict[str, bool]] = OrderedDict()

    @property
    def secrets(self) -> tuple[str, ...]:
        """Values to redact from logs (give them to ``monitor.service.logs.set_secrets``)."""
        return (self.settings.bot_token,)

    async def start(self) -> None:
        """Open the HTTP session."""
        await self._http.start()

    async def close(self) -> None:
        """Close the HTTP session."""
        await self._http.close()

    # --- alerts -------------------------------------------------------------------------------------

    async def send(self, alert: Alert) -> None:
        """Send ``alert`` to every chat that has not had it; raise if any chat is still owed it."""
        text = render(alert).html()
        if len(text) > MAX_TEXT:  # pragma: no cover - MAX_POSITIONS keeps alerts far below it
            text = escape(render(alert).plain()[:MAX_TEXT])  # the limit counts characters after parsing
        silent = alert.kind in {AlertKind.RECOVERED, AlertKind.KEY_SAFE}
        done = self._progress.setdefault(alert.id, {})
        self._progress.move_to_end(alert.id)
        while len(self._progress) > _PROGRESS_KEPT:
            self._progress.popitem(last=False)
        pending = [key for key in self._chats if key not in done]
        results = await asyncio.gather(
            *(self._send_alert(key, text, silent=silent) for key in pending), return_exceptions=True
        )
        temporary: list[TemporaryDeliveryError] = []
        permanent: list[PermanentDeliveryError] = []
        for key, result in zip(pending, results, strict=True):
            if isinstance(result, TemporaryDeliveryError):
                temporary.append(result)
            elif isinstance(result, PermanentDeliveryError):
                done[key] = False
                permanent.append(result)
            elif isinstance(result, BaseException):
                raise result
            else:
                done[key] = True
        if temporary:
            waits = [error.retry_after for error in temporary if error.retry_after is not None]
            raise TemporaryDeliveryError(
                "; ".join(str(error) for error in temporary),
                channel=self.name,
                retry_after=max(waits) if waits else None,
            )
        self._progress.pop(alert.id, None)
        if permanent or not all(done.values()):
            failed = [self._chats[key] for key, sent in done.items() if not sent]
            reason = "; ".join(str(error) for error in permanent) or "refused earlier"
            raise PermanentDeliveryError(
                f"{self.name}: not delivered to chat(s) {failed}: {reason}", channel=self.name
            )

    async def _send_alert(self, key: str, text: str, *, silent: bool) -> None:
        payload: dict[str, Any] = {
            "chat_id": self._chats[key],
            "text": text,
            "parse_mode": "HTML",
            "link_preview_options": {"is_disabled": True},
        }
        if silent:
            payload["disable_notification"] = True
        await self._send_message(key, payload)

    async def _send_message(self, key: str, payload: dict[str, Any]) -> None:
        """SendMessage to one chat, at most one message per ``min_interval_s`` to it."""
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            wait = self._next_allowed.get(key, 0.0) - time.monotonic()
            if wait > self.settings.min_interval_s:
                # Telegram asked this chat to wait (a 429): do not hold the dispatcher meanwhile.
                raise TemporaryDeliveryError(
                    f"{self.name}: chat {payload['chat_id']} is rate limited for {wait:.1f} s more",
                    channel=self.name,
                    retry_after=wait,
                )
            if wait > 0:
                await asyncio.sleep(wait)
            self._next_allowed[key] = time.monotonic() + self.settings.min_interval_s
            try:
                await self._call("sendMessage", payload, what=f"sendMessage to chat {payload['chat_id']}")
            except TemporaryDeliveryError as error:
                if error.retry_after is not None:
                    self._next_allowed[key] = time.monotonic() + error.retry_after
                raise
            finally:
                # Counted from the answer as well: Telegram counts arrivals, and a request slow to
                # arrive must not bring the next one closer to it than the interval.
                self._next_allowed[key] = max(
                    self._next_allowed[key], time.monotonic() + self.settings.min_interval_s
                )

    async def _call(
        self, method: str, payload: dict[str, Any], *, what: str, timeout_s: float | None = None
    ) -> Any:  # noqa: ANN401 - the method's ``result``, shaped by the method
        url = f"{self.settings.api_url.rstrip('/')}/bot{self.settings.bot_token}/{method}"
        reply = await self._http.request("POST", url, what=what, json_body=payload, timeout_s=timeout_s)
        document = reply.json()
        if reply.ok and isinstance(document, dict) and document.get("ok") is True:
            return document.get("result")
        raise self._error(reply, document, what=what)

    def _error(self, reply: HttpReply, document: object, *, what: str) -> DeliveryError:
        if not isinstance(document, dict):
            return self._http.error(reply, what=what, detail=reply.text())
        detail = str(document.get("description", ""))
        parameters = document.get("parameters")
        retry_after: float | None = None
        if isinstance(parameters, dict):
            value = parameters.get("retry_after")
            if isinstance(value, int | float) and not isinstance(value, bool):
                retry_after = float(value)
            if "migrate_to_chat_id" in parameters:
                detail += f" (the group is now chat {parameters['migrate_to_chat_id']}: update chat_ids)"
        if reply.ok:  # 200 with ok: false is not in the Bot API; take it as a refusal
            return PermanentDeliveryError(
                f"{self.name}: {what}: {self._http.scrub(detail)}", channel=self.name
            )
        return self._http.error(reply, what=what, detail=detail, retry_after=retry_after)

    # --- commands -----------------------------------------------------------------------------------

    async def poll_commands(self, handler: CommandHandler) -> None:
        """Long-poll ``getUpdates`` forever, obeying commands from the configured chats only.

        ``handler(command, args, chat_id)`` is called for ``status``, ``mute``, ``unmute`` and
        ``help`` (the command without its slash or ``@botname``, lower case; ``args`` the words
        after it) and returns the reply, sent as plain text. Other commands get the help text;
        messages from other chats are ignored and logged without their content. Errors are logged
        and retried with capped, jittered backoff (a 429's ``retry_after`` honoured); only
        cancellation ends the loop.
        """
        offset: int | None = None
        failures = 0
        while True:
            payload: dict[str, Any] = {
                "timeout": max(1, round(self.settings.poll_timeout_s)),
                "allowed_updates": ["message"],
            }
            if offset is not None:
                payload["offset"] = offset
            try:
                updates = await self._call(
                    "getUpdates",
                    payload,
                    what="getUpdates",
                    timeout_s=self.settings.poll_timeout_s + self.settings.timeout_s,
                )
            except DeliveryError as error:
                failures += 1
                delay = _backoff(failures, error)
                # A permanent failure (a revoked token, another poller: 409) needs a human; keep
                # trying, loudly, so the commands come back once it is fixed.
                report = log.error if isinstance(error, PermanentDeliveryError) else log.warning
                report(
                    "telegram.poll_failed",
                    channel=self.name,
                    error=str(error),
                    error_class=type(error).__name__,
                    retry_in_s=round(delay, 2),
                )
                await asyncio.sleep(delay)
                continue
            failures = 0
            for update in updates if isinstance(updates, list) else ():
                if not isinstance(update, dict) or not isinstance(update.get("update_id"), int):
                    continue
                offset = max(offset or 0, update["update_id"] + 1)
                await self._on_update(update, handler)

    async def _on_update(self, update: dict[str, Any], handler: CommandHandler) -> None:
        message = update.get("message")
        if not isinstance(message, dict) or not isinstance(message.get("chat"), dict):
            return
        chat = message["chat"]
        key = self._allowed_chat(chat)
        if key is None:
            log.warning(
                "telegram.update_ignored",
                channel=self.name,
                chat_id=chat.get("id"),
                reason="chat not configured",
            )
            return
        text = message.get("text")
        if not isinstance(text, str) or not text.startswith("/"):
            return
        date = message.get("date")
        if isinstance(date, int | float) and time.time() - date > self.settings.command_max_age_s:
            log.info(
                "telegram.command_expired",
                channel=self.name,
                chat_id=chat.get("id"),
                age_s=round(time.time() - date),
            )
            return
        command, args = _parse_command(text)
        if command in COMMANDS:
            log.info(
                "telegram.command", channel=self.name, chat_id=chat.get("id"), command=command, args=args
            )
            try:
                reply = await handler(command, args, chat.get("id", self._chats[key]))
            except MarginMonitorError as error:
                reply = f"/{command} failed: {error}"
            except Exception as error:
                log.exception("telegram.command_failed", channel=self.name, command=command)
                reply = f"/{command} failed ({type(error).__name__}); see the daemon's log"
        else:
            reply = f"Unknown command /{command}. {HELP}"
        try:
            await self._send_message(
                key, {"chat_id": chat.get("id", self._chats[key]), "text": reply[:MAX_TEXT]}
            )
        except DeliveryError as error:
            log.warning("telegram.reply_failed", channel=self.name, command=command, error=str(error))

    def _allowed_chat(self, chat: dict[str, Any]) -> str | None:
        chat_id = chat.get("id")
        if isinstance(chat_id, int) and str(chat_id) in self._chats:
            return str(chat_id)
        username = chat.get("username")
        if isinstance(username, str) and f"@{username.lower()}" in self._chats:
            return f"@{username.lower()}"
        return None


def _parse_command(text: str) -> tuple[str, list[str]]:
    """``/Mute@MarginBot main 2h`` -> (``mute``, [``main``, ``2h``])."""
    words = text.split()
    command = words[0].removeprefix("/").split("@", 1)[0].lower()
    return command, words[1:]


def _backoff(failures: int, error: DeliveryError, cap_s: float = 60.0) -> float:
    if isinstance(error, TemporaryDeliveryError) and error.retry_after is not None:
        return error.retry_after
    base = min(cap_s, 0.5 * 2.0 ** min(failures, 10))
    return base * random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not cryptography
