"""ccxt's exceptions, each mapped to one of ours by what the caller must do about it.

``ERROR_TABLE`` holds every class in ``ccxt.base.errors`` (a test walks the module and fails on a new
one): retry soon (``TemporaryExchangeError``), wait ``Retry-After`` (``RateLimitedError``), resync the
clock (``ClockSkewError``) or stop and tell a human (``OperationalExchangeError``). The rule for a class
that could go either way: if retrying the same read can succeed without anyone touching anything, it is
temporary (a monitor that keeps failing turns the account "blind" anyway, which a person sees).

``translate`` is used as ``raise translate(exc, client=..., account=..., exchange=...) from exc``; its
message never carries a secret: ccxt messages can hold the signed URL, so query strings, signatures and
the client's own credentials are cut out.
"""

from __future__ import annotations

import asyncio
import email.utils
import math
import re
import time
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import aiohttp
from ccxt.base import errors as ccxt_errors

from monitor.errors import (
    ClockSkewError,
    ExchangeError,
    OperationalExchangeError,
    RateLimitedError,
    TemporaryExchangeError,
)

if TYPE_CHECKING:
    from collections.abc import Mapping


class Action(StrEnum):
    """What the caller must do after an exchange call failed."""

    RETRY = "retry"
    BACK_OFF = "back off"
    RESYNC_CLOCK = "resync clock"
    OPERATOR = "operator"


_ACTION_ERRORS: dict[Action, type[ExchangeError]] = {
    Action.RETRY: TemporaryExchangeError,
    Action.BACK_OFF: RateLimitedError,
    Action.RESYNC_CLOCK: ClockSkewError,
    Action.OPERATOR: OperationalExchangeError,
}

E = ccxt_errors
#: Every ccxt exception class and what it means for a monitor that only reads.
ERROR_TABLE: dict[type[BaseException], Action] = {
    # Roots. ccxt raises its bare ExchangeError for exchange codes it does not know and for aiohttp
    # client errors it cannot classify: nothing says a human is needed, so retry.
    E.BaseError: Action.RETRY,
    E.ExchangeError: Action.RETRY,
    E.OperationFailed: Action.RETRY,
    E.UnsubscribeError: Action.RETRY,  # websocket bookkeeping; a new subscription fixes it
    # Network and exchange availability.
    E.NetworkError: Action.RETRY,
    E.RequestTimeout: Action.RETRY,
    E.ExchangeNotAvailable: Action.RETRY,
    E.OnMaintenance: Action.RETRY,
    E.BadResponse: Action.RETRY,  # garbled body (a proxy's HTML page, a cut-off JSON)
    E.NullResponse: Action.RETRY,
    E.CancelPending: Action.RETRY,
    E.ChecksumError: Action.RETRY,  # an order-book checksum, not a clock, despite subclassing InvalidNonce
    E.MarketClosed: Action.RETRY,  # trading halts end by themselves
    E.NoChange: Action.RETRY,  # a no-op the exchange reports as an error; nothing to fix
    E.MarginModeAlreadySet: Action.RETRY,
    # Shutting down closes clients under in-flight calls; the next poll uses a new client.
    E.ExchangeClosedByUser: Action.RETRY,
    # Slow down: 429, Binance's 418 ban, and ccxt's DDoS-protection pages.
    E.DDoSProtection: Action.BACK_OFF,
    E.RateLimitExceeded: Action.BACK_OFF,
    # Our timestamp or nonce is outside the exchange's window (Binance -1021 off the main hosts).
    E.InvalidNonce: Action.RESYNC_CLOCK,
    # A human must act: credentials, permissions, account state, configuration, or our own bug.
    E.AuthenticationError: Action.OPERATOR,
    E.PermissionDenied: Action.OPERATOR,
    E.AccountNotEnabled: Action.OPERATOR,
    E.AccountSuspended: Action.OPERATOR,
    E.ArgumentsRequired: Action.OPERATOR,
    E.BadRequest: Action.OPERATOR,
    E.BadSymbol: Action.OPERATOR,
    E.NotSupported: Action.OPERATOR,
    E.InvalidProxySettings: Action.OPERATOR,
    E.OperationRejected: Action.OPERATOR,
    E.ManualInteractionNeeded: Action.OPERATOR,
    E.RestrictedLocation: Action.OPERATOR,
    E.InsufficientFunds: Action.OPERATOR,
    E.InvalidAddress: Action.OPERATOR,
    E.AddressPending: Action.OPERATOR,
    # Order errors: the monitor never trades, so seeing one means a bug or a misrouted request.
    E.InvalidOrder: Action.OPERATOR,
    E.OrderNotFound: Action.OPERATOR,
    E.OrderNotCached: Action.OPERATOR,
    E.OrderImmediatelyFillable: Action.OPERATOR,
    E.OrderNotFillable: Action.OPERATOR,
    E.DuplicateOrderId: Action.OPERATOR,
    E.ContractUnavailable: Action.OPERATOR,
}

#: Exchange error codes that mean "your clock is off", whatever class ccxt gives them. On Binance's own
#: futures hosts ccxt maps -1021 to BadRequest (a human), elsewhere (a rewritten host) to InvalidNonce.
CLOCK_SKEW_MARKERS: dict[str, re.Pattern[str]] = {
    exchange_id: re.compile(r'"code"\s*:\s*-1021\b')
    for exchange_id in ("binance", "binanceusdm", "binancecoinm")
}

#: Errors outside ccxt that reach us from its transport (it wraps most, not all).
_TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (
    TimeoutError,
    asyncio.TimeoutError,
    aiohttp.ClientError,
    OSError,
)

_QUERY = re.compile(r"\?[^\s\"'<>]*")
_SECRET_PAIRS = re.compile(
    r"(?i)(signature|sign|api[-_]?key|apikey|secret|passphrase|password|x-mbx-apikey|ok-access-key"
    r"|ok-access-sign|x-bapi-api-key|x-bapi-sign)([\"']?\s*[=:]\s*[\"']?)[^\s\"'&,}]+"
)
_MAX_MESSAGE = 300


def action_for(exc: BaseException) -> Action:
    """The action for ``exc``'s class, found through its ancestry (a future ccxt subclass inherits)."""
    for klass in type(exc).__mro__:
        action = ERROR_TABLE.get(klass)
        if action is not None:
            return action
    return Action.RETRY


def redact(message: str, secrets: tuple[str | None, ...] = ()) -> str:
    """``message`` without query strings, signature or key fields, or any of ``secrets``."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            message = message.replace(secret, "***")
    message = _QUERY.sub("?…", message)
    message = _SECRET_PAIRS.sub(r"\1\2***", message)
    return message if len(message) <= _MAX_MESSAGE else f"{message[: _MAX_MESSAGE - 1]}…"


def retry_after(headers: Mapping[str, Any] | None, *, now: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta seconds or an HTTP date), or ``None``."""
    if not headers:
        return None
    value = next((v for k, v in headers.items() if str(k).lower() == "retry-after"), None)
    if value is None:
        return None
    raw = str(value).strip()
    try:
        seconds = float(raw)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(raw)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if not math.isfinite(seconds):
        return None
    return max(seconds, 0.0)


def translate(exc: BaseException, *, client: Any, account: str, exchange: str) -> ExchangeError:  # noqa: ANN401 - a ccxt client
    """Our exception for ``exc`` raised by ``client``; raise it ``from exc``.

    ``client`` supplies the credentials to cut out of the message and, for rate limits, the last
    response's headers (``Retry-After``).
    """
    secrets = tuple(
        getattr(client, name, None)
        for name in ("apiKey", "secret", "password", "privateKey", "walletAddress")
    )
    if isinstance(exc, ccxt_errors.BaseError):
        action = action_for(exc)
    elif isinstance(exc, _TRANSPORT_ERRORS):
        action = Action.RETRY
    else:
        action = Action.OPERATOR
    detail = redact(str(exc) or type(exc).__name__, secrets)
    marker = CLOCK_SKEW_MARKERS.get(exchange)
    if marker is not None and marker.search(str(exc)):
        action = Action.RESYNC_CLOCK
    message = f"{exchange} {account}: {type(exc).__name__} ({action}): {detail}"
    if action is Action.BACK_OFF:
        headers = getattr(client, "last_response_headers", None)
        return RateLimitedError(
            message,
            retry_after=retry_after(headers if isinstance(headers, dict) else None),
            account=account,
            exchange=exchange,
        )
    return _ACTION_ERRORS[action](message, account=account, exchange=exchange)
