"""The project's one exception hierarchy.

The names say whose fault an error is and what the caller must do about it: a ``UserInputError``
means the person who wrote a file or flag must fix it; a ``TierTableError`` raised while reading an
exchange payload means the exchange (or our adapter) sent something we cannot use.
"""

from __future__ import annotations


class MarginMonitorError(Exception):
    """Base of every error this project raises on purpose."""


class UserInputError(MarginMonitorError):
    """Input written by a person (a file, a flag, a config key) is wrong.

    ``field`` is the path of the offending value, such as ``positions[1].tiers[0].min_notional``,
    so the message can point at it; ``source`` names the file or flag set it came from.
    """

    def __init__(self, field: str, problem: str, *, source: str | None = None) -> None:
        self.field = field
        self.problem = problem
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(f"{where}{field}: {problem}")


class TierTableError(MarginMonitorError):
    """A maintenance-margin tier table is unusable (unsorted, gapped, non-positive rates...).

    ``tier`` is the index of the first bad tier and ``field`` the tier's key at fault, so callers
    that read the table from a file or payload can re-raise it with the full path.
    """

    def __init__(self, tier: int, field: str, problem: str) -> None:
        self.tier = tier
        self.field = field
        self.problem = problem
        super().__init__(f"tiers[{tier}].{field}: {problem}")


class PositionError(MarginMonitorError):
    """A position's figures are unusable (negative size, non-positive price, missing wallet...)."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}")


# --- exchanges ------------------------------------------------------------------------------------
# Named after what the caller must do: retry (temporary), wait (rate limited), resync the clock,
# or stop and tell a human (operational). Every ccxt exception maps to exactly one of these
# (monitor/exchanges/errors.py holds the table).


class ExchangeError(MarginMonitorError):
    """Talking to an exchange failed; ``account`` and ``exchange`` say where (never a secret)."""

    def __init__(self, message: str, *, account: str | None = None, exchange: str | None = None) -> None:
        self.account = account
        self.exchange = exchange
        super().__init__(message)


class TemporaryExchangeError(ExchangeError):
    """The exchange or the network failed in passing (timeout, 5xx, dropped connection): retry."""


class RateLimitedError(TemporaryExchangeError):
    """The exchange asked us to slow down (HTTP 429, or 418 when banned): wait ``retry_after`` s."""

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        account: str | None = None,
        exchange: str | None = None,
    ) -> None:
        self.retry_after = retry_after
        super().__init__(message, account=account, exchange=exchange)


class ClockSkewError(TemporaryExchangeError):
    """Our timestamp is outside the exchange's receive window (Binance -1021): resync, then retry."""


class OperationalExchangeError(ExchangeError):
    """A human must act: bad or revoked key, missing permission, unknown symbol, account closed."""


class PayloadError(ExchangeError):
    """The exchange sent something we cannot use; ``field`` names the payload and field at fault."""

    def __init__(
        self, field: str, problem: str, *, account: str | None = None, exchange: str | None = None
    ) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}", account=account, exchange=exchange)


class ConfigError(UserInputError):
    """The configuration file is wrong; ``field`` is the key (``accounts[1].secret_file``)."""


class KeyPermissionError(UserInputError):
    """An account's API key may do more than a monitor should (withdraw; trade, unless allowed).

    ``field`` is the account's key setting (``accounts[0].api_key_env``) and ``account`` its name;
    the message names the exchange's permission flags, never the key.
    """

    def __init__(self, field: str, problem: str, *, account: str, source: str | None = None) -> None:
        self.account = account
        super().__init__(field, problem, source=source)


# --- delivery ------------------------------------------------------------------------------------


class DeliveryError(MarginMonitorError):
    """A channel could not deliver an alert; ``channel`` names it (never its token)."""

    def __init__(self, message: str, *, channel: str | None = None) -> None:
        self.channel = channel
        super().__init__(message)


class TemporaryDeliveryError(DeliveryError):
    """Try again later: timeout, 5xx, broker down, or 429 (then ``retry_after`` seconds, if given)."""

    def __init__(self, message: str, *, channel: str | None = None, retry_after: float | None = None) -> None:
        self.retry_after = retry_after
        super().__init__(message, channel=channel)


class PermanentDeliveryError(DeliveryError):
    """Retrying cannot help (HTTP 400, 401, 403, 404: a wrong chat id, token or URL); a human must act."""
