"""Every ccxt exception maps to exactly one of ours; messages never carry secrets."""

from __future__ import annotations

import inspect

import aiohttp
import pytest
from ccxt.base import errors as ccxt_errors
from monitor.errors import (
    ClockSkewError,
    ExchangeError,
    OperationalExchangeError,
    RateLimitedError,
    TemporaryExchangeError,
)
from monitor.exchanges.errors import ERROR_TABLE, Action, action_for, redact, retry_after, translate

CCXT_CLASSES = sorted(
    (
        klass
        for klass in vars(ccxt_errors).values()
        if inspect.isclass(klass)
        and issubclass(klass, BaseException)
        and klass.__module__ == ccxt_errors.__name__
    ),
    key=lambda klass: klass.__name__,
)


class FakeClient:
    """Stands in for a ccxt client's attributes that ``translate`` reads (no ccxt behaviour is faked)."""

    apiKey = "KEY-abcdef123456"  # noqa: N815 - ccxt's attribute name
    secret = "SECRET-zyxwvu987654"  # noqa: S105 - a made-up secret the test looks for in messages
    password = None
    walletAddress = None  # noqa: N815 - ccxt's attribute name

    def __init__(self, headers: dict[str, str] | None = None) -> None:
        self.last_response_headers = headers


def test_every_ccxt_error_class_is_in_the_table() -> None:
    """Walking ccxt.base.errors finds no class without an entry (a new ccxt release fails here)."""
    missing = [klass.__name__ for klass in CCXT_CLASSES if klass not in ERROR_TABLE]
    assert missing == []
    assert len(CCXT_CLASSES) >= 40


def test_table_holds_only_ccxt_classes() -> None:
    """No stale entries: every key is a class ccxt still defines."""
    assert set(ERROR_TABLE) == set(CCXT_CLASSES)


MAPPING: list[tuple[type[BaseException], Action, type[ExchangeError]]] = [
    (ccxt_errors.RequestTimeout, Action.RETRY, TemporaryExchangeError),
    (ccxt_errors.ExchangeNotAvailable, Action.RETRY, TemporaryExchangeError),
    (ccxt_errors.OnMaintenance, Action.RETRY, TemporaryExchangeError),
    (ccxt_errors.NetworkError, Action.RETRY, TemporaryExchangeError),
    (ccxt_errors.BadResponse, Action.RETRY, TemporaryExchangeError),
    (ccxt_errors.NullResponse, Action.RETRY, TemporaryExchangeError),
    (ccxt_errors.ExchangeError, Action.RETRY, TemporaryExchangeError),
    (ccxt_errors.ChecksumError, Action.RETRY, TemporaryExchangeError),
    (ccxt_errors.ExchangeClosedByUser, Action.RETRY, TemporaryExchangeError),
    (ccxt_errors.RateLimitExceeded, Action.BACK_OFF, RateLimitedError),
    (ccxt_errors.DDoSProtection, Action.BACK_OFF, RateLimitedError),
    (ccxt_errors.InvalidNonce, Action.RESYNC_CLOCK, ClockSkewError),
    (ccxt_errors.AuthenticationError, Action.OPERATOR, OperationalExchangeError),
    (ccxt_errors.PermissionDenied, Action.OPERATOR, OperationalExchangeError),
    (ccxt_errors.AccountNotEnabled, Action.OPERATOR, OperationalExchangeError),
    (ccxt_errors.AccountSuspended, Action.OPERATOR, OperationalExchangeError),
    (ccxt_errors.BadSymbol, Action.OPERATOR, OperationalExchangeError),
    (ccxt_errors.BadRequest, Action.OPERATOR, OperationalExchangeError),
    (ccxt_errors.NotSupported, Action.OPERATOR, OperationalExchangeError),
    (ccxt_errors.ArgumentsRequired, Action.OPERATOR, OperationalExchangeError),
    (ccxt_errors.InvalidProxySettings, Action.OPERATOR, OperationalExchangeError),
    (ccxt_errors.RestrictedLocation, Action.OPERATOR, OperationalExchangeError),
    (ccxt_errors.InvalidOrder, Action.OPERATOR, OperationalExchangeError),
]


@pytest.mark.parametrize(
    ("ccxt_class", "action", "ours"),
    MAPPING,
    ids=[case[0].__name__ for case in MAPPING],
)
def test_mapping(ccxt_class: type[BaseException], action: Action, ours: type[ExchangeError]) -> None:
    """A ccxt error becomes our class for what the caller must do, with account and exchange named."""
    error = translate(ccxt_class("binanceusdm boom"), client=FakeClient(), account="main", exchange="okx")
    assert action_for(ccxt_class("x")) is action
    assert type(error) is ours
    assert (error.account, error.exchange) == ("main", "okx")
    assert "main" in str(error)


@pytest.mark.parametrize("ccxt_class", CCXT_CLASSES, ids=[klass.__name__ for klass in CCXT_CLASSES])
def test_every_class_translates_to_one_of_ours(ccxt_class: type[BaseException]) -> None:
    """Whatever ccxt raises, the caller gets exactly one ExchangeError subclass back."""
    error = translate(ccxt_class("x"), client=FakeClient(), account="a", exchange="bybit")
    assert isinstance(error, ExchangeError)
    assert type(error) in {TemporaryExchangeError, RateLimitedError, ClockSkewError, OperationalExchangeError}


TRANSPORT: list[tuple[str, BaseException]] = [
    ("asyncio timeout", TimeoutError()),
    ("builtin timeout", TimeoutError("read")),
    ("aiohttp connection", aiohttp.ClientConnectionError("reset")),
    ("aiohttp payload", aiohttp.ClientPayloadError("cut")),
    ("os error", ConnectionResetError(104, "reset")),
]


@pytest.mark.parametrize("exc", [case[1] for case in TRANSPORT], ids=[case[0] for case in TRANSPORT])
def test_transport_errors_are_temporary(exc: BaseException) -> None:
    """Timeouts and aiohttp errors that escape ccxt's own wrapping are retried."""
    assert type(translate(exc, client=FakeClient(), account="a", exchange="okx")) is TemporaryExchangeError


def test_binance_1021_is_clock_skew_whatever_ccxt_called_it() -> None:
    """On Binance's own hosts ccxt raises BadRequest for -1021; it still means: resync the clock."""
    body = 'binanceusdm {"code":-1021,"msg":"Timestamp for this request is outside of the recvWindow."}'
    error = translate(ccxt_errors.BadRequest(body), client=FakeClient(), account="a", exchange="binanceusdm")
    assert type(error) is ClockSkewError


def test_1021_elsewhere_is_not_clock_skew() -> None:
    """The marker is a Binance quirk: another exchange's -1021 keeps ccxt's class."""
    body = 'bybit {"code":-1021}'
    error = translate(ccxt_errors.BadRequest(body), client=FakeClient(), account="a", exchange="bybit")
    assert type(error) is OperationalExchangeError


RETRY_AFTER: list[tuple[str, dict[str, str] | None, float | None]] = [
    ("seconds", {"Retry-After": "17"}, 17.0),
    ("lower case", {"retry-after": "2.5"}, 2.5),
    ("http date", {"Retry-After": "Thu, 01 Jan 1970 00:01:40 GMT"}, 40.0),
    ("date in the past", {"Retry-After": "Thu, 01 Jan 1970 00:00:01 GMT"}, 0.0),
    ("garbage", {"Retry-After": "soon"}, None),
    ("absent", {"Content-Type": "application/json"}, None),
    ("no headers", None, None),
]


@pytest.mark.parametrize(
    ("headers", "seconds"), [case[1:] for case in RETRY_AFTER], ids=[case[0] for case in RETRY_AFTER]
)
def test_retry_after_header(headers: dict[str, str] | None, seconds: float | None) -> None:
    """Retry-After is read as delta seconds or an HTTP date (relative to ``now``)."""
    assert retry_after(headers, now=60.0) == seconds


@pytest.mark.parametrize("status", ["429", "418"])
def test_rate_limit_carries_retry_after(status: str) -> None:
    """429 and 418 become RateLimitedError with the server's Retry-After."""
    client = FakeClient({"Retry-After": "30"})
    klass = ccxt_errors.RateLimitExceeded if status == "429" else ccxt_errors.DDoSProtection
    error = translate(klass(f"binanceusdm {status} "), client=client, account="a", exchange="binanceusdm")
    assert isinstance(error, RateLimitedError)
    assert error.retry_after == 30.0


def test_message_never_carries_secrets() -> None:
    """Signed URLs, key headers and the client's own credentials are cut out of the message."""
    message = (
        "binanceusdm GET https://fapi.binance.com/fapi/v3/account?timestamp=1&signature=deadbeef 500 "
        'Internal {"X-MBX-APIKEY": "KEY-abcdef123456"} SECRET-zyxwvu987654 apiKey=KEY-abcdef123456'
    )
    error = translate(
        ccxt_errors.ExchangeNotAvailable(message), client=FakeClient(), account="a", exchange="x"
    )
    text = str(error)
    for secret in ("deadbeef", "KEY-abcdef123456", "SECRET-zyxwvu987654", "signature=", "timestamp=1"):
        assert secret not in text
    assert "/fapi/v3/account" in text


REDACTIONS: list[tuple[str, str, str]] = [
    ("query string", "GET https://h/x?a=1&signature=abc ok", "GET https://h/x?… ok"),
    ("signature pair", "sign=abcdef rest", "sign=*** rest"),
    ("json key", '{"apiKey": "k123"}', '{"apiKey": "***"}'),
    ("passphrase", "passphrase: hunter2", "passphrase: ***"),
]


@pytest.mark.parametrize(
    ("raw", "clean"), [case[1:] for case in REDACTIONS], ids=[case[0] for case in REDACTIONS]
)
def test_redact(raw: str, clean: str) -> None:
    """Each secret-bearing pattern is replaced, the rest of the message kept."""
    assert redact(raw) == clean


def test_unknown_exception_needs_a_human() -> None:
    """A non-ccxt, non-transport exception is our bug: operational, so someone looks at it."""
    error = translate(KeyError("x"), client=FakeClient(), account="a", exchange="okx")
    assert type(error) is OperationalExchangeError
