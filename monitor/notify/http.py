"""What the HTTP channels (Telegram, ntfy, Pushover, webhook) share: one session, timeouts, error mapping.

Every failure becomes one of our delivery errors at this boundary, named after what the dispatcher must
do: ``TemporaryDeliveryError`` (retry; after ``retry_after`` seconds when the peer said so) for timeouts,
dropped connections, 5xx, 408/425/429; ``PermanentDeliveryError`` for every other 4xx, a redirect (a
wrong URL) or an unusable URL.

Secrets never reach an exception message: a Telegram token sits in the URL path, and aiohttp's own
exception texts can quote the URL, so messages are written here, peer text is cut and scrubbed of
every secret the channel declared, and a low-level exception is chained as the cause only when its
text is free of them.
"""

from __future__ import annotations

import email.utils
import json
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp
from yarl import URL

from monitor import __version__
from monitor.errors import ConfigError, DeliveryError, PermanentDeliveryError, TemporaryDeliveryError

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

#: Statuses that say "later" rather than "never" (besides every 5xx).
TEMPORARY_STATUSES = frozenset({408, 425, 429})

#: How much of a peer's error text goes into an exception message.
DETAIL_CHARS = 200

USER_AGENT = f"margin-monitor/{__version__}"


def check_url(value: str, field: str) -> str:
    """``value`` if it is an absolute http(s) URL with a host, else a ``ConfigError`` naming ``field``."""
    try:
        url = URL(value)
    except (TypeError, ValueError):
        raise ConfigError(field, "must be an http:// or https:// URL") from None
    if url.scheme not in {"http", "https"} or not url.host:
        raise ConfigError(field, "must be an http:// or https:// URL with a host")
    return value


def check_positive(value: float, field: str) -> float:
    """``value`` if it is a positive number, else a ``ConfigError`` naming ``field``."""
    if not value > 0:
        raise ConfigError(field, f"must be positive, got {value}")
    return value


@dataclass(frozen=True, slots=True)
class HttpReply:
    """A peer's answer, whatever its status."""

    status: int
    headers: Mapping[str, str]
    body: bytes

    @property
    def ok(self) -> bool:
        """Whether the status is 2xx."""
        return 200 <= self.status < 300

    def json(self) -> Any:  # noqa: ANN401 - a peer's JSON document, checked by the caller
        """The body as JSON, or ``None`` when it is not JSON."""
        try:
            return json.loads(self.body)
        except (ValueError, UnicodeDecodeError):
            return None

    def text(self) -> str:
        """The body as text (undecodable bytes replaced)."""
        return self.body.decode("utf-8", errors="replace")


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delay-seconds or an HTTP date; ``None`` if unusable."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # an HTTP date is GMT by definition
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    return max(0.0, seconds) if math.isfinite(seconds) else None


class HttpPeer:
    """One aiohttp session for one channel, opened on first use, closed by ``close`` (safe twice).

    ``channel`` names the channel in every error (never its token); ``secrets`` are values that
    must never appear in an error message (tokens, keys, secret headers).
    """

    def __init__(self, *, channel: str, timeout_s: float, secrets: Iterable[str] = ()) -> None:
        self.channel = channel
        self.timeout_s = timeout_s
        self._secrets = tuple(secret for secret in secrets if secret)
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        """Open the session (it is otherwise opened by the first request)."""
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout_s),
                headers={"User-Agent": USER_AGENT},
                raise_for_status=False,
            )

    async def close(self) -> None:
        """Close the session and its connections."""
        session, self._session = self._session, None
        if session is not None and not session.closed:
            await session.close()

    def scrub(self, text: str) -> str:
        """``text`` without any of the channel's secrets, cut to ``DETAIL_CHARS``."""
        for secret in self._secrets:
            text = text.replace(secret, "***")
        text = " ".join(text.split())
        return text if len(text) <= DETAIL_CHARS else text[: DETAIL_CHARS - 1] + "…"

    async def request(
        self,
        method: str,
        url: str,
        *,
        what: str,
        json_body: object = None,
        form: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        timeout_s: float | None = None,
    ) -> HttpReply:
        """Send one request and read the whole answer, whatever its status.

        ``what`` names the request in errors (``sendMessage``, ``publish``). Network failures and
        timeouts raise ``TemporaryDeliveryError``; an unusable URL ``PermanentDeliveryError``.
        """
        await self.start()
        assert self._session is not None  # noqa: S101 - start() just opened it
        timeout = aiohttp.ClientTimeout(total=self.timeout_s if timeout_s is None else timeout_s)
        try:
            async with self._session.request(
                method,
                url,
                json=json_body,
                data=form,
                headers=headers,
                timeout=timeout,
                allow_redirects=False,
            ) as response:
                body = await response.read()
                return HttpReply(response.status, dict(response.headers), body)
        except TimeoutError:
            raise TemporaryDeliveryError(
                f"{self.channel}: {what} timed out after {timeout.total:g} s", channel=self.channel
            ) from None
        except aiohttp.InvalidURL:
            # Its text is the URL itself, which may hold a token.
            raise PermanentDeliveryError(
                f"{self.channel}: {what}: invalid URL", channel=self.channel
            ) from None
        except aiohttp.ClientError as exc:
            detail = self.scrub(str(exc)) or type(exc).__name__
            raise TemporaryDeliveryError(
                f"{self.channel}: {what} failed: {type(exc).__name__}: {detail}", channel=self.channel
            ) from self._safe_cause(exc)

    def error(
        self, reply: HttpReply, *, what: str, detail: str, retry_after: float | None = None
    ) -> DeliveryError:
        """The delivery error for a non-2xx ``reply``; ``detail`` is the peer's own words.

        ``retry_after`` (from the body, as Telegram sends it) wins over the ``Retry-After`` header.
        """
        if retry_after is None:
            retry_after = parse_retry_after(header(reply.headers, "Retry-After"))
        message = f"{self.channel}: {what} answered HTTP {reply.status}"
        if detail := self.scrub(detail):
            message += f": {detail}"
        if reply.status in TEMPORARY_STATUSES or reply.status >= 500:
            return TemporaryDeliveryError(message, channel=self.channel, retry_after=retry_after)
        if 300 <= reply.status < 400:
            message += " (a redirect: check the URL)"
        return PermanentDeliveryError(message, channel=self.channel)

    def _safe_cause(self, exc: BaseException) -> BaseException | None:
        text = f"{exc!s} {exc!r}"
        return None if any(secret in text for secret in self._secrets) else exc


def header(headers: Mapping[str, str], name: str) -> str | None:
    """The value of header ``name`` (case-insensitive), or ``None``."""
    wanted = name.lower()
    for key, value in headers.items():
        if key.lower() == wanted:
            return value
    return None
