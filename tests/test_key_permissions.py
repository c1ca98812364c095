"""The key permission check: what each exchange says a key may do, and what the daemon makes of it.

The parsers are held against payloads shaped as the exchanges document them; the check itself runs
real ccxt against the simulator, whose accounts carry configurable permissions (changed mid-run for
the periodic re-check), and the command line is run as a process against a simulator in a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import pytest_asyncio
from monitor.config import AccountConfig, AlertsConfig, Config, DaemonConfig, SecretRef, load_config
from monitor.errors import ConfigError, KeyPermissionError, PayloadError
from monitor.exchanges.client import Credentials, MarketCache
from monitor.exchanges.permissions import (
    KeyPermissions,
    binance_permissions,
    bybit_permissions,
    okx_permissions,
)
from monitor.notify.outbox import Outbox
from monitor.service.app import Runtime, build_sources, run_daemon
from monitor.service.keys import KeyGuard
from monitor.sim import (
    BYBIT_DEMO_API_KEY,
    BYBIT_DEMO_SECRET,
    DEMO_API_KEY,
    DEMO_SECRET,
    HYPERLIQUID_DEMO_ADDRESS,
    OKX_DEMO_API_KEY,
    OKX_DEMO_PASSPHRASE,
    OKX_DEMO_SECRET,
    ApiPermissions,
    SimServer,
    demo_account,
)
from structlog.testing import capture_logs

from simthread import ThreadedSim

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, MutableMapping

READ_ONLY = ApiPermissions()
FUTURES = ApiPermissions(enable_futures=True)
WITHDRAW = ApiPermissions(enable_futures=True, enable_withdrawals=True)
TRANSFER = ApiPermissions(enable_internal_transfer=True)
UNRESTRICTED = ApiPermissions(ip_restrict=False)
COINM_ONLY_KEY = "coinm-only-key"

# --- the exchanges' payloads ---------------------------------------------------------------------

BINANCE_READ_ONLY = {
    "ipRestrict": True,
    "createTime": 1698645219000,
    "enableReading": True,
    "enableWithdrawals": False,
    "enableInternalTransfer": False,
    "enableMargin": False,
    "enableFutures": False,
    "permitsUniversalTransfer": False,
    "enableVanillaOptions": False,
    "enableFixApiTrade": False,
    "enableFixReadOnly": True,
    "enableSpotAndMarginTrading": False,
    "enablePortfolioMarginTrading": False,
}


def bybit_payload(read_only: int, ips: list[str] | None = None, **areas: list[str]) -> dict[str, Any]:
    """A ``/v5/user/query-api`` answer."""
    permissions = {"ContractTrade": [], "Spot": [], "Wallet": [], "Exchange": ["ExchangeHistory"], **areas}
    return {
        "retCode": 0,
        "retMsg": "",
        "result": {"readOnly": read_only, "permissions": permissions, "ips": ips or ["10.0.0.1"]},
    }


def okx_payload(perm: str, ip: str = "10.0.0.1") -> dict[str, Any]:
    """An ``/api/v5/account/config`` answer."""
    return {"code": "0", "msg": "", "data": [{"uid": "1", "perm": perm, "ip": ip}]}


@pytest.mark.parametrize(
    ("permissions", "read_only", "refused", "refused_allowed"),
    [
        (binance_permissions(BINANCE_READ_ONLY), True, None, None),
        (
            binance_permissions({**BINANCE_READ_ONLY, "enableFutures": True}),
            False,
            "can trade (enableFutures)",
            None,
        ),
        (
            binance_permissions({**BINANCE_READ_ONLY, "enableFutures": True, "enableWithdrawals": True}),
            False,
            "can withdraw (enableWithdrawals)",
            "can withdraw (enableWithdrawals)",
        ),
        (
            binance_permissions({**BINANCE_READ_ONLY, "permitsUniversalTransfer": True}),
            False,
            "can move funds (permitsUniversalTransfer)",
            None,
        ),
        (
            binance_permissions({**BINANCE_READ_ONLY, "enableMargin": True, "enableInternalTransfer": True}),
            False,
            "can trade and move funds (enableMargin, enableInternalTransfer)",
            None,
        ),
        (bybit_permissions(bybit_payload(1)), True, None, None),
        (
            bybit_permissions(bybit_payload(0, ContractTrade=["Order", "Position"])),
            False,
            "can trade (ContractTrade.Order, ContractTrade.Position)",
            None,
        ),
        (
            bybit_permissions(bybit_payload(0, Wallet=["AccountTransfer", "Withdraw"])),
            False,
            "can withdraw (Wallet.Withdraw)",
            "can withdraw (Wallet.Withdraw)",
        ),
        (bybit_permissions(bybit_payload(0)), False, "can trade (readOnly=0)", None),
        (okx_permissions(okx_payload("read_only")), True, None, None),
        (okx_permissions(okx_payload("read_only,trade")), False, "can trade (perm=trade)", None),
        (
            okx_permissions(okx_payload("read_only,withdraw,trade")),
            False,
            "can withdraw (perm=withdraw)",
            "can withdraw (perm=withdraw)",
        ),
    ],
    ids=[
        "binance-read-only",
        "binance-futures",
        "binance-withdraw",
        "binance-universal-transfer",
        "binance-margin-and-transfer",
        "bybit-read-only",
        "bybit-contract-trade",
        "bybit-withdraw",
        "bybit-read-write-unlisted",
        "okx-read-only",
        "okx-trade",
        "okx-withdraw",
    ],
)
def test_refusal_names_the_exchange_flags(
    permissions: KeyPermissions, read_only: bool, refused: str | None, refused_allowed: str | None
) -> None:
    """Withdrawal is refused always; trading and transfers unless allowed; the flags are named."""
    assert permissions.read_only is read_only
    without = permissions.refusal(allow_trading=False)
    allowed = permissions.refusal(allow_trading=True)
    assert (without is None) is (refused is None)
    assert (allowed is None) is (refused_allowed is None)
    if refused is not None:
        assert refused in str(without)
    if refused_allowed is not None:
        assert refused_allowed in str(allowed)
        assert "whatever allow_trading_key says" in str(allowed)


@pytest.mark.parametrize(
    ("permissions", "restricted"),
    [
        (binance_permissions({**BINANCE_READ_ONLY, "ipRestrict": False}), False),
        (bybit_permissions(bybit_payload(1, ips=["*"])), False),
        (bybit_permissions(bybit_payload(1, ips=["192.0.2.7"])), True),
        (okx_permissions(okx_payload("read_only", ip="")), False),
        (okx_permissions(okx_payload("read_only", ip="192.0.2.7,192.0.2.8")), True),
    ],
    ids=["binance-open", "bybit-any", "bybit-one", "okx-any", "okx-two"],
)
def test_ip_restriction_is_read(permissions: KeyPermissions, restricted: bool) -> None:
    """Each exchange's way of saying "any IP address" reads as unrestricted."""
    assert permissions.ip_restricted is restricted


@pytest.mark.parametrize(
    ("parse", "payload", "field"),
    [
        (
            binance_permissions,
            {"enableReading": True, "ipRestrict": True},
            "apiRestrictions.enableWithdrawals",
        ),
        (binance_permissions, {**BINANCE_READ_ONLY, "enableFutures": "no"}, "apiRestrictions.enableFutures"),
        (binance_permissions, [], "apiRestrictions"),
        (bybit_permissions, {"retCode": 0, "result": {"permissions": {}}}, "query-api.result.readOnly"),
        (bybit_permissions, bybit_payload(2), "query-api.result.readOnly"),
        (bybit_permissions, bybit_payload(0, Wallet="Withdraw"), "query-api.result.permissions.Wallet"),  # type: ignore[arg-type]
        (okx_permissions, {"code": "0", "data": []}, "account-config.data"),
        (okx_permissions, okx_payload(""), "account-config.data[0].perm"),
    ],
    ids=[
        "binance-no-withdraw-flag",
        "binance-not-bool",
        "binance-not-object",
        "bybit-no-readonly",
        "bybit-readonly-2",
        "bybit-wallet-not-list",
        "okx-no-rows",
        "okx-empty-perm",
    ],
)
def test_an_unusable_answer_names_the_field(parse: Any, payload: object, field: str) -> None:  # noqa: ANN401 - one of three parsers
    """A permission payload that cannot be read is a ``PayloadError`` on its field, never a guess."""
    with pytest.raises(PayloadError) as raised:
        parse(payload)
    assert raised.value.field == field


# --- the check against the simulator -------------------------------------------------------------


@pytest_asyncio.fixture
async def sim() -> AsyncIterator[SimServer]:
    """The simulator with every demo account, and a COIN-M account whose key USDⓈ-M does not know."""
    async with SimServer(scenario="flat", autostart=False) as server:
        coinm = server.coinm.accounts[DEMO_API_KEY]
        server.coinm.accounts[COINM_ONLY_KEY] = replace(coinm, api_key=COINM_ONLY_KEY, name="coinm-only")
        yield server


def ref(name: str) -> SecretRef:
    """A secret reference (the check never reads it: credentials are given directly)."""
    return SecretRef(name, "env", f"SIM_{name.upper()}")


def account_for(exchange: str, sim: SimServer, *, allow_trading_key: bool = False) -> AccountConfig:
    """An account of ``exchange`` on ``sim``, keys referenced by environment variable names."""
    return AccountConfig(
        name=f"acct-{exchange}",
        exchange=exchange,
        api_key=ref("api_key"),
        secret=ref("secret"),
        password=ref("password") if exchange == "okx" else None,
        base_url=sim.base_url,
        allow_trading_key=allow_trading_key,
        source="keys.toml",
    )


CREDENTIALS = {
    "binanceusdm": Credentials(api_key=DEMO_API_KEY, secret=DEMO_SECRET),
    "binancecoinm": Credentials(api_key=COINM_ONLY_KEY, secret=DEMO_SECRET),
    "bybit": Credentials(api_key=BYBIT_DEMO_API_KEY, secret=BYBIT_DEMO_SECRET),
    "okx": Credentials(api_key=OKX_DEMO_API_KEY, secret=OKX_DEMO_SECRET, password=OKX_DEMO_PASSPHRASE),
}


def set_permissions(sim: SimServer, exchange: str, permissions: ApiPermissions) -> None:
    """Give the key ``CREDENTIALS[exchange]`` uses these permissions."""
    key = CREDENTIALS[exchange].api_key
    venues: dict[str, Any] = {
        "binanceusdm": sim.accounts,
        "binancecoinm": sim.coinm.accounts,
        "bybit": sim.bybit.accounts,
        "okx": sim.okx.accounts,
    }
    venues[exchange][key].permissions = permissions


def config_of(*accounts: AccountConfig) -> Config:
    """A configuration holding ``accounts``."""
    return Config(
        accounts=accounts,
        alerts=AlertsConfig(),
        daemon=DaemonConfig(state_dir=Path()),
        path=Path("keys.toml"),
    )


async def guard_for(config: Config, credentials: dict[str, Credentials], **options: float) -> KeyGuard:
    """A ``KeyGuard`` over real sources for ``config`` (closed by the caller through ``close``)."""
    sources = build_sources(config, credentials, MarketCache())
    return KeyGuard(config, sources, **options)


async def close(guard: KeyGuard) -> None:
    """Close the guard's sources."""
    await asyncio.gather(*(source.close() for source in guard.sources.values()))


EXCHANGES = ["binanceusdm", "binancecoinm", "bybit", "okx"]


@pytest.mark.asyncio
@pytest.mark.parametrize("exchange", EXCHANGES)
@pytest.mark.parametrize(
    ("permissions", "allow", "outcome"),
    [
        (READ_ONLY, False, "ok"),
        (FUTURES, False, "refused"),
        (FUTURES, True, "ok"),
        (WITHDRAW, True, "refused"),
        (TRANSFER, False, "refused"),
    ],
    ids=["read-only", "trading", "trading-allowed", "withdraw-even-allowed", "transfer"],
)
async def test_the_check_reads_each_exchange(
    sim: SimServer, exchange: str, permissions: ApiPermissions, allow: bool, outcome: str
) -> None:
    """Through real ccxt, each exchange's answer gives the verdict the rule says; refusals raise."""
    set_permissions(sim, exchange, permissions)
    account = account_for(exchange, sim, allow_trading_key=allow)
    guard = await guard_for(config_of(account), {account.name: CREDENTIALS[exchange]})
    try:
        with capture_logs() as logs:
            if outcome == "refused":
                with pytest.raises(KeyPermissionError) as raised:
                    await guard.start()
            else:
                await guard.start()
    finally:
        await close(guard)
    verdict = guard.verdicts[account.name]
    assert verdict.status == outcome
    events = [line["event"] for line in logs]
    if outcome == "ok":
        assert events == ["account.key_checked"]
        assert logs[0]["read_only"] is not allow
        return
    assert events == ["account.key_refused"]
    message = str(raised.value)
    assert message.startswith(f"keys.toml: accounts[0].api_key_env: account 'acct-{exchange}' ({exchange}): ")
    assert ("withdraw" in message) is (permissions is WITHDRAW)
    assert raised.value.account == account.name


@pytest.mark.asyncio
@pytest.mark.parametrize("exchange", EXCHANGES)
async def test_a_key_usable_from_any_address_is_accepted_with_a_warning(
    sim: SimServer, exchange: str
) -> None:
    """No IP allowlist: accepted (a read-only key is what matters) but said, once."""
    set_permissions(sim, exchange, UNRESTRICTED)
    account = account_for(exchange, sim)
    guard = await guard_for(config_of(account), {account.name: CREDENTIALS[exchange]})
    try:
        with capture_logs() as logs:
            await guard.start()
    finally:
        await close(guard)
    assert [line["event"] for line in logs] == ["account.key_checked", "account.key_not_ip_restricted"]
    assert logs[1]["log_level"] == "warning"


@pytest.mark.asyncio
async def test_keyless_and_testnet_accounts_are_logged_unchecked(sim: SimServer) -> None:
    """Hyperliquid has no key and a testnet reports nothing: one info line each, no request."""
    hyperliquid = AccountConfig(
        name="hl", exchange="hyperliquid", wallet_address=HYPERLIQUID_DEMO_ADDRESS, base_url=sim.base_url
    )
    testnet = replace(account_for("binanceusdm", sim), name="testnet", base_url=None, sandbox=True)
    credentials = {
        "hl": Credentials(wallet_address=HYPERLIQUID_DEMO_ADDRESS),
        "testnet": CREDENTIALS["binanceusdm"],
    }
    guard = await guard_for(config_of(hyperliquid, testnet), credentials)
    try:
        with capture_logs() as logs:
            await guard.start()
    finally:
        await close(guard)
    assert [(line["event"], line["account"]) for line in logs] == [
        ("account.permissions_unchecked", "hl"),
        ("account.permissions_unchecked", "testnet"),
    ]
    assert "wallet address" in logs[0]["reason"]
    assert "testnet" in logs[1]["reason"]
    assert sim.faults.count("/sapi/v1/account/apiRestrictions") == 0


@pytest.mark.asyncio
async def test_every_refused_account_is_logged_and_the_first_raised(sim: SimServer) -> None:
    """Two unfit keys: two ``account.key_refused`` lines, the error names the first in the file."""
    set_permissions(sim, "bybit", WITHDRAW)
    set_permissions(sim, "okx", FUTURES)
    accounts = (account_for("okx", sim), account_for("bybit", sim))
    guard = await guard_for(
        config_of(*accounts), {account.name: CREDENTIALS[account.exchange] for account in accounts}
    )
    try:
        with capture_logs() as logs, pytest.raises(KeyPermissionError, match="'acct-okx'"):
            await guard.start()
    finally:
        await close(guard)
    refused = sorted(line["account"] for line in logs if line["event"] == "account.key_refused")
    assert refused == ["acct-bybit", "acct-okx"]


@pytest.mark.asyncio
async def test_an_unanswered_check_starts_and_a_later_refusal_stops_the_daemon(sim: SimServer) -> None:
    """Exchange down at start: a warning, the daemon runs; the re-check finds a withdraw key and stops it."""
    path = "/sapi/v1/account/apiRestrictions"
    sim.faults.inject("http_503", 3, path=path)
    set_permissions(sim, "binanceusdm", WITHDRAW)
    account = account_for("binanceusdm", sim)
    guard = await guard_for(
        config_of(account), {account.name: CREDENTIALS["binanceusdm"]}, recheck_min_s=0.05, recheck_max_s=0.1
    )
    stop = asyncio.Event()
    try:
        with capture_logs() as logs:
            await guard.start(retry_s=0.01)
            assert guard.unverified == [account.name]
            sim.faults.inject("http_503", 1, path=path)  # the first re-check fails too
            async with asyncio.timeout(10):
                await guard.recheck(stop)
    finally:
        await close(guard)
    assert stop.is_set()
    assert isinstance(guard.refused, KeyPermissionError)
    assert "enableWithdrawals" in str(guard.refused)
    events = [line["event"] for line in logs]
    assert events == [
        "account.permissions_unverified",
        "account.permissions_still_unverified",
        "account.key_refused",
        "daemon.stopping",
    ]
    assert sim.faults.count(path) == 5


@pytest.mark.asyncio
async def test_a_rejected_key_is_unverified_without_retrying(sim: SimServer) -> None:
    """-2015 (a key the exchange rejects) is for a human: one request, a warning, the polls say the rest."""
    account = account_for("binanceusdm", sim)
    wrong = Credentials(api_key="no-such-key", secret=DEMO_SECRET)
    guard = await guard_for(config_of(account), {account.name: wrong})
    try:
        with capture_logs() as logs:
            await guard.start(retry_s=0.01)
    finally:
        await close(guard)
    assert [line["event"] for line in logs] == ["account.permissions_unverified"]
    assert "OperationalExchangeError" in logs[0]["error"]
    assert "no-such-key" not in json.dumps(logs, default=str)
    assert sim.faults.count("/sapi/v1/account/apiRestrictions") == 1


# --- the periodic re-check while the daemon runs -------------------------------------------------


async def until(predicate: Callable[[], object]) -> None:
    """Wait (10 s at most) until ``predicate`` holds."""
    async with asyncio.timeout(10):
        while not predicate():  # noqa: ASYNC110 - captured logs and the simulator's counters, not events
            await asyncio.sleep(0.02)


def lines(
    logs: list[MutableMapping[str, Any]], event: str, kind: str | None = None
) -> list[MutableMapping[str, Any]]:
    """The captured lines of ``event`` (the log channel's ``alert`` lines of ``kind``, if given)."""
    return [line for line in logs if line["event"] == event and kind in (None, line.get("kind"))]


def recheck_config(sim: SimServer, state_dir: Path, key_recheck_h: float) -> Config:
    """One Binance account on ``sim`` polled every 0.2 s, its key re-checked every ``key_recheck_h``."""
    account = replace(account_for("binanceusdm", sim), mode="poll", poll_interval_s=0.2)
    daemon = DaemonConfig(state_dir=state_dir, http_listen="", key_recheck_h=key_recheck_h)
    return replace(config_of(account), daemon=daemon)


@contextlib.asynccontextmanager
async def running(config: Config, runtime: Runtime | None = None) -> AsyncIterator[asyncio.Task[None]]:
    """The daemon running ``config`` in a task until the block ends."""
    stop = asyncio.Event()
    credentials = {config.accounts[0].name: CREDENTIALS["binanceusdm"]}
    task = asyncio.create_task(run_daemon(config, credentials, stop, runtime=runtime))
    try:
        yield task
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


def delivered(state_dir: Path, account: str) -> list[tuple[str, list[str]]]:
    """Each stored alert of ``account``: its kind and each channel's delivery state."""
    outbox = Outbox(state_dir / "outbox.sqlite3")
    try:
        records = outbox.history(0, account)
    finally:
        outbox.close()
    return [(record.alert.kind.value, [status.state for status in record.deliveries]) for record in records]


@pytest.mark.asyncio
async def test_a_key_turned_unsafe_mid_run_alerts_once_and_monitoring_goes_on(
    sim: SimServer, tmp_path: Path
) -> None:
    """Withdrawals added mid-run: an error line a re-check, one alert, polls go on; fit again: its end."""
    config = recheck_config(sim, tmp_path, key_recheck_h=0.2 / 3600)  # every 0.2 s
    name = config.accounts[0].name
    runtime = Runtime(config)
    with capture_logs() as logs:
        async with running(config, runtime) as task:
            await until(lambda: lines(logs, "daemon.started"))
            set_permissions(sim, "binanceusdm", WITHDRAW)
            await until(lambda: len(lines(logs, "account.key_unsafe")) >= 3)
            assert runtime.daemon is not None
            polls = runtime.daemon.accounts[name].polls
            set_permissions(sim, "binanceusdm", READ_ONLY)
            await until(lambda: lines(logs, "alert", "key_safe"))
            assert not task.done()
            assert runtime.daemon.accounts[name].polls > polls
    for line in lines(logs, "account.key_unsafe"):
        assert line["log_level"] == "error"
        assert (line["account"], line["exchange"]) == (name, "binanceusdm")
        assert line["withdraw"] == ["enableWithdrawals"]
        assert "can withdraw (enableWithdrawals)" in line["reason"]
    [alert] = lines(logs, "alert", "key_unsafe")
    assert alert["level"] == "key_unsafe"
    assert "can withdraw (enableWithdrawals)" in alert["summary"]
    assert len(lines(logs, "account.key_safe_again")) == 1
    text = json.dumps(logs, default=str)
    assert DEMO_API_KEY not in text
    assert DEMO_SECRET not in text
    assert delivered(tmp_path, name) == [("key_unsafe", ["delivered"]), ("key_safe", ["delivered"])]


@pytest.mark.asyncio
async def test_a_key_fixed_while_the_daemon_was_stopped_ends_its_episode_at_start(
    sim: SimServer, tmp_path: Path
) -> None:
    """The alert state remembers the unsafe key: fit at the next start, ``key_safe`` goes out then."""
    config = recheck_config(sim, tmp_path, key_recheck_h=0.2 / 3600)
    with capture_logs() as logs:
        async with running(config):
            await until(lambda: lines(logs, "daemon.started"))
            set_permissions(sim, "binanceusdm", WITHDRAW)
            await until(lambda: lines(logs, "alert", "key_unsafe"))
        set_permissions(sim, "binanceusdm", READ_ONLY)
        async with running(replace(config, daemon=replace(config.daemon, key_recheck_h=6.0))):
            await until(lambda: lines(logs, "alert", "key_safe"))
    assert [kind for kind, _ in delivered(tmp_path, config.accounts[0].name)] == ["key_unsafe", "key_safe"]


async def watched(guard: KeyGuard, done: Callable[[], object]) -> list[MutableMapping[str, Any]]:
    """The lines ``guard.watch`` (every 0.05 s, no alerting) logs until ``done()`` holds."""
    with capture_logs() as logs:
        watch = asyncio.create_task(guard.watch(0.05, None))
        try:
            await until(done)
        finally:
            watch.cancel()
            await asyncio.gather(watch, return_exceptions=True)
    return logs


@pytest.mark.asyncio
async def test_an_unanswered_periodic_recheck_is_a_warning_and_tried_again(sim: SimServer) -> None:
    """A 503 at re-check time: one warning, the verdict kept, the next period asks again."""
    path = "/sapi/v1/account/apiRestrictions"
    account = account_for("binanceusdm", sim)
    guard = await guard_for(config_of(account), {account.name: CREDENTIALS["binanceusdm"]})
    try:
        await guard.start()
        sim.faults.inject("http_503", 1, path=path)
        logs = await watched(guard, lambda: sim.faults.count(path) >= 3)
    finally:
        await close(guard)
    assert [line["event"] for line in logs] == ["account.permissions_recheck_unanswered"]
    assert logs[0]["log_level"] == "warning"
    assert "503" in logs[0]["error"]
    assert guard.verdicts[account.name].status == "ok"
    assert guard.refused is None


@pytest.mark.asyncio
async def test_a_key_opened_to_any_address_mid_run_is_warned_about_once(sim: SimServer) -> None:
    """The IP allowlist removed: the start's warning, once, at the first re-check; no alert, no stop."""
    path = "/sapi/v1/account/apiRestrictions"
    account = account_for("binanceusdm", sim)
    guard = await guard_for(config_of(account), {account.name: CREDENTIALS["binanceusdm"]})
    try:
        await guard.start()
        set_permissions(sim, "binanceusdm", UNRESTRICTED)
        logs = await watched(guard, lambda: sim.faults.count(path) >= 4)
    finally:
        await close(guard)
    assert [(line["event"], line["log_level"]) for line in logs] == [
        ("account.key_not_ip_restricted", "warning")
    ]
    assert guard.verdicts[account.name].status == "ok"


# --- the configuration key -----------------------------------------------------------------------


def test_allow_trading_key_is_a_validated_boolean(tmp_path: Path) -> None:
    """``allow_trading_key`` takes true or false, and no address-read account takes it at all."""
    base = '[[accounts]]\nname = "a"\nexchange = "binanceusdm"\napi_key_env = "K"\nsecret_env = "S"\n'
    path = tmp_path / "c.toml"
    path.write_text(base + "allow_trading_key = true\n", encoding="utf-8")
    assert load_config(path, environ={}).accounts[0].allow_trading_key is True
    path.write_text(base + 'allow_trading_key = "yes"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"accounts\[0\]\.allow_trading_key: must be true or false"):
        load_config(path, environ={})
    path.write_text(
        '[[accounts]]\nname = "h"\nexchange = "hyperliquid"\n'
        f'wallet_address = "{HYPERLIQUID_DEMO_ADDRESS}"\nallow_trading_key = true\n',
        encoding="utf-8",
    )
    with pytest.raises(ConfigError, match=r"allow_trading_key: a hyperliquid account is read by wallet"):
        load_config(path, environ={})


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", 6.0),
        ("key_recheck_h = 0", 0.0),
        ("key_recheck_h = 0.5", 0.5),
        ("key_recheck_h = -1", "must be at least 0, got -1"),
        ("key_recheck_h = 200", "must be at most 168, got 200"),
        ('key_recheck_h = "6h"', "must be a number, got a string"),
    ],
    ids=["default", "off", "half-hour", "negative", "beyond-a-week", "string"],
)
def test_key_recheck_h_is_validated(tmp_path: Path, value: str, expected: float | str) -> None:
    """``[daemon] key_recheck_h``: hours, 0 turns the re-check off; a bad value names the key."""
    path = tmp_path / "c.toml"
    account = '[[accounts]]\nname = "a"\nexchange = "binanceusdm"\napi_key_env = "K"\nsecret_env = "S"\n'
    path.write_text(f"[daemon]\n{value}\n\n{account}", encoding="utf-8")
    if isinstance(expected, float):
        assert load_config(path, environ={}).daemon.key_recheck_h == expected
        return
    with pytest.raises(ConfigError, match=rf"daemon\.key_recheck_h: {expected}"):
        load_config(path, environ={})


# --- the command line ----------------------------------------------------------------------------


@pytest.fixture
def withdraw_sim() -> Any:  # noqa: ANN401 - a context-managed ThreadedSim
    """A simulator in a thread whose demo key can trade and withdraw."""
    with ThreadedSim(accounts=[replace(demo_account(), permissions=WITHDRAW)], autostart=False) as sim:
        yield sim


@pytest.mark.parametrize("command", ["run", "status"])
def test_the_commands_refuse_a_withdraw_key_with_exit_2(
    tmp_path: Path, withdraw_sim: ThreadedSim, command: str
) -> None:
    """``run`` and ``status`` stop before monitoring: exit 2, one line naming the account and flag."""
    config = tmp_path / "margin-monitor.toml"
    config.write_text(
        f"""
[daemon]
state_dir = "{tmp_path}"
log_format = "json"
http_listen = ""

[[accounts]]
name = "main"
exchange = "binanceusdm"
api_key_env = "SIM_KEY"
secret_env = "SIM_SECRET"
base_url = "{withdraw_sim.base_url}"
allow_trading_key = true
""",
        encoding="utf-8",
    )
    env = {**os.environ, "SIM_KEY": DEMO_API_KEY, "SIM_SECRET": DEMO_SECRET}
    done = subprocess.run(
        [sys.executable, "-m", "monitor", command, "--config", str(config)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    # status logs to stderr, run to stdout: the error is the one line that is not a JSON log line.
    (line,) = [text for text in done.stderr.splitlines() if text[:1] != "{"]
    assert line.startswith(f"margin-monitor: error: {config}: accounts[0].api_key_env: account 'main'")
    assert "can withdraw (enableWithdrawals)" in line
    assert DEMO_SECRET not in done.stdout + done.stderr
    logged = [
        json.loads(text) for text in done.stdout.splitlines() + done.stderr.splitlines() if text[:1] == "{"
    ]
    assert "account.assessed" not in [entry["event"] for entry in logged]
