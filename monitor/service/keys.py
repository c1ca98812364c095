"""The key permission check: at start, each account's API key must be fit for a monitor.

``KeyGuard.start`` asks every account's exchange what its key may do (where the exchange says:
``monitor.exchanges.permissions``) and decides:

- ``ok``: read-only, or trading/transfer allowed by ``allow_trading_key``. A key the exchange reports
  as usable from any IP address is still accepted, with an ``account.key_not_ip_restricted`` warning.
- ``refused``: it can withdraw, or trade or transfer without ``allow_trading_key``. The commands that
  use keys (``run``, ``status``) stop with exit code 2 and one line naming the account and the
  exchange's permission flags; a monitor must not hold the power to empty the account it watches.
- ``unchecked``: the exchange reports nothing (Hyperliquid is read by address; the generic ccxt
  fallback; an exchange's testnet), logged once as ``account.permissions_unchecked``.
- ``unverified``: the exchange could not answer (down, rate-limited, a key it rejects). Monitoring
  must not wait on a permission endpoint, so the daemon starts, warns, and checks again in the
  background with backoff (``KeyGuard.recheck``); a key found unfit then stops the daemon (exit 2)
  as it would have at start.

While the daemon runs, ``KeyGuard.watch`` asks again every ``[daemon] key_recheck_h`` for each key
found fit. One that has become unfit (its owner, or a thief, added withdrawals) does not stop the
daemon: stopping would blind the user, and a supervisor restarting it would only meet the refusal
at start. Instead one ``account.key_unsafe`` error line names the account and the exchange's flags,
and a ``key_unsafe`` alert goes to the account's channels (once; ``key_safe`` when it is fit again).
An exchange that does not answer then is a warning, asked again at the next period.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import structlog

from monitor.errors import ExchangeError, KeyPermissionError, RateLimitedError, TemporaryExchangeError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping

    from monitor.config import AccountConfig, Config
    from monitor.exchanges.base import AccountSource
    from monitor.exchanges.permissions import KeyPermissions
    from monitor.service.alerting import Alerting

log = structlog.get_logger("margin_monitor.keys")

Status = Literal["ok", "refused", "unchecked", "unverified"]

#: Attempts at start for an answer that may come on retry (5xx, timeout, rate limit, clock).
START_ATTEMPTS = 3
START_RETRY_S = 1.0
#: The longest wait at start for a rate limit's Retry-After: start-up is not to hang on it.
START_RETRY_CAP_S = 10.0
#: Background re-checks of unverified keys: from this, doubling, capped.
RECHECK_MIN_S = 30.0
RECHECK_MAX_S = 600.0
#: The verdicts the periodic re-check keeps current: fit at start, or found unfit by it since.
WATCHED = ("ok", "refused")


@dataclass(frozen=True, slots=True)
class KeyVerdict:
    """What the check made of one account's key; ``reason`` says why for every status but ok."""

    account: str
    status: Status
    permissions: KeyPermissions | None = None
    reason: str | None = None


def unchecked_reason(account: AccountConfig, source: AccountSource) -> str | None:
    """Why this account's key cannot be checked, or ``None`` when it can."""
    if account.api_key is None:
        return "read by wallet address: there is no key"
    if account.sandbox:
        return "the exchange's testnet does not report key permissions"
    if getattr(source, "key_permissions", None) is None:
        return f"{account.exchange} does not report a key's permissions"
    return None


async def check_account(
    account: AccountConfig,
    source: AccountSource,
    *,
    attempts: int = START_ATTEMPTS,
    retry_s: float = START_RETRY_S,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> KeyVerdict:
    """Ask the exchange what ``account``'s key may do and judge it; logs nothing."""
    reason = unchecked_reason(account, source)
    if reason is not None:
        return KeyVerdict(account.name, "unchecked", reason=reason)
    read: Callable[[], Awaitable[KeyPermissions | None]] = getattr(source, "key_permissions")  # noqa: B009 - checked above
    for attempt in range(1, attempts + 1):
        try:
            permissions = await read()
        except TemporaryExchangeError as exc:
            if attempt == attempts:
                return KeyVerdict(account.name, "unverified", reason=_describe(exc))
            delay = retry_s * 2 ** (attempt - 1)
            if isinstance(exc, RateLimitedError) and exc.retry_after is not None:
                delay = max(delay, min(exc.retry_after, START_RETRY_CAP_S))
            await sleep(delay)
            continue
        except ExchangeError as exc:  # a human must act (a key the exchange rejects); retrying now won't help
            return KeyVerdict(account.name, "unverified", reason=_describe(exc))
        if permissions is None:
            return KeyVerdict(account.name, "unchecked", reason=f"{account.exchange} reported nothing")
        refusal = permissions.refusal(allow_trading=account.allow_trading_key)
        if refusal is not None:
            return KeyVerdict(account.name, "refused", permissions, refusal)
        return KeyVerdict(account.name, "ok", permissions)
    raise AssertionError("unreachable: the last attempt returns")  # pragma: no cover


def _describe(exc: ExchangeError) -> str:
    return f"{type(exc).__name__}: {exc}"


def refusal_error(account: AccountConfig, verdict: KeyVerdict) -> KeyPermissionError:
    """The one-line error for a refused key, on the account's key setting."""
    key = account.api_key.key if account.api_key is not None else "api_key_env"
    return KeyPermissionError(
        f"{account.key_path}.{key}",
        f"account '{account.name}' ({account.exchange}): {verdict.reason}",
        account=account.name,
        source=account.source,
    )


def report(account: AccountConfig, verdict: KeyVerdict) -> None:
    """Log ``verdict`` once, as the line its status calls for."""
    fields = {"account": account.name, "exchange": account.exchange}
    permissions = verdict.permissions
    if verdict.status == "unchecked":
        log.info("account.permissions_unchecked", **fields, reason=verdict.reason)
        return
    if verdict.status == "unverified":
        log.warning(
            "account.permissions_unverified",
            **fields,
            error=verdict.reason,
            hint="the exchange did not say what the key may do; the daemon checks again in the background",
        )
        return
    if permissions is None:  # pragma: no cover - ok and refused verdicts carry what the exchange said
        return
    if verdict.status == "refused":
        log.error("account.key_refused", **fields, reason=verdict.reason, **permissions.fields())
        return
    log.info("account.key_checked", **fields, read_only=permissions.read_only, **permissions.fields())
    if permissions.ip_restricted is False:
        log.warning(
            "account.key_not_ip_restricted",
            **fields,
            hint="the exchange accepts this key from any IP address; restrict it to this machine's",
        )


class KeyGuard:
    """Checks every account's key at start and keeps re-checking those the exchange did not answer for."""

    def __init__(
        self,
        config: Config,
        sources: Mapping[str, AccountSource],
        *,
        recheck_min_s: float = RECHECK_MIN_S,
        recheck_max_s: float = RECHECK_MAX_S,
    ) -> None:
        self.config = config
        self.sources = sources
        self.recheck_min_s = recheck_min_s
        self.recheck_max_s = recheck_max_s
        self.verdicts: dict[str, KeyVerdict] = {}
        #: Set when a background re-check refused a key; the daemon was told to stop.
        self.refused: KeyPermissionError | None = None

    @property
    def unverified(self) -> list[str]:
        """Accounts whose key is still to be checked."""
        return [name for name, verdict in self.verdicts.items() if verdict.status == "unverified"]

    async def start(self, *, attempts: int = START_ATTEMPTS, retry_s: float = START_RETRY_S) -> None:
        """Check every account at once; raise ``KeyPermissionError`` for the first refused (config order).

        Every verdict is logged first, so each refused account has its own ``account.key_refused`` line.
        """
        accounts = [account for account in self.config.accounts if account.name in self.sources]
        verdicts = await asyncio.gather(
            *(
                check_account(account, self.sources[account.name], attempts=attempts, retry_s=retry_s)
                for account in accounts
            )
        )
        for account, verdict in zip(accounts, verdicts, strict=True):
            self.verdicts[account.name] = verdict
            report(account, verdict)
        for account, verdict in zip(accounts, verdicts, strict=True):
            if verdict.status == "refused":
                raise refusal_error(account, verdict)

    async def recheck(self, stop: asyncio.Event) -> None:
        """Check the unverified keys again, with capped jittered backoff, until none is left.

        A refused key sets ``refused`` and ``stop``. Never raises (a crashed loop is a bug); runs as
        a named task beside the daemon.
        """
        delay = self.recheck_min_s
        while self.unverified and not stop.is_set():
            await asyncio.sleep(delay * random.uniform(0.8, 1.0))  # noqa: S311 - jitter, not secrecy
            delay = min(self.recheck_max_s, delay * 2)
            for name in self.unverified:
                try:
                    await self._recheck_one(name, stop)
                except Exception:
                    log.exception("account.permissions_recheck_failed", account=name)

    async def _recheck_one(self, name: str, stop: asyncio.Event) -> None:
        account = self.config.account(name)
        verdict = await check_account(account, self.sources[name], attempts=1)
        if verdict.status == "unverified":
            log.info("account.permissions_still_unverified", account=name, error=verdict.reason)
            return
        self.verdicts[name] = verdict
        report(account, verdict)
        if verdict.status == "refused" and self.refused is None:
            self.refused = refusal_error(account, verdict)
            log.error("daemon.stopping", reason="an account's key may do more than read", account=name)
            stop.set()

    async def watch(self, period_s: float, alerting: Alerting | None) -> None:
        """Every ``period_s``, check again each key that was fit (or unfit mid-run); never stops the daemon.

        First the verdicts of the start go to ``alerting``: a key reported unsafe before a restart
        and fit now ends its episode. The accounts are asked one after the other, which spreads the
        requests sharing an exchange's per-IP limit. Never raises; runs as a named task.
        """
        for name, verdict in list(self.verdicts.items()):
            if verdict.status == "ok":
                await self._alert(name, verdict, alerting)
        while True:
            await asyncio.sleep(period_s)
            for name in [name for name, verdict in self.verdicts.items() if verdict.status in WATCHED]:
                try:
                    await self._watch_one(name, alerting)
                except Exception:
                    log.exception("account.permissions_recheck_failed", account=name)

    async def _watch_one(self, name: str, alerting: Alerting | None) -> None:
        account = self.config.account(name)
        fields = {"account": name, "exchange": account.exchange}
        verdict = await check_account(account, self.sources[name], attempts=1)
        if verdict.status not in WATCHED:
            log.warning(
                "account.permissions_recheck_unanswered",
                **fields,
                error=verdict.reason,
                hint="the key is checked again at the next period",
            )
            return
        previous, self.verdicts[name] = self.verdicts[name], verdict
        permissions = verdict.permissions
        if verdict.status == "refused" and permissions is not None:
            log.error(
                "account.key_unsafe",
                **fields,
                reason=verdict.reason,
                **permissions.fields(),
                hint="monitoring goes on; the daemon will not start with this key",
            )
        elif previous.status == "refused":
            log.info("account.key_safe_again", **fields)
        was_open = previous.permissions is not None and previous.permissions.ip_restricted is False
        if permissions is not None and permissions.ip_restricted is False and not was_open:
            log.warning(
                "account.key_not_ip_restricted",
                **fields,
                hint="the exchange accepts this key from any IP address; restrict it to this machine's",
            )
        await self._alert(name, verdict, alerting)

    async def _alert(self, name: str, verdict: KeyVerdict, alerting: Alerting | None) -> None:
        if alerting is None:
            return
        unsafe = verdict.reason if verdict.status == "refused" else None
        try:
            await alerting.key_checked(name, self.config.account(name).exchange, unsafe)
        except Exception:
            log.exception("account.key_alert_failed", account=name)
