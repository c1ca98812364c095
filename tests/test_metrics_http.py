"""Metrics, /healthz and the status page, end to end: the daemon on the simulator, scraped over HTTP.

Wired as ``run_daemon`` wires them: ``Alerts`` around the daemon, ``http_for`` serving what they
hold on a free loopback port, ccxt talking to ``SimServer``. The page is rendered by a real headless
Chromium (Debian's ``chromium``; ``./dev test`` installs it), which runs the page's script.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest
from monitor.config import DaemonConfig, load_config, parse_listen
from monitor.errors import (
    ClockSkewError,
    ConfigError,
    ExchangeError,
    OperationalExchangeError,
    PayloadError,
    RateLimitedError,
    TemporaryExchangeError,
)
from monitor.exchanges.client import Credentials
from monitor.notify.log import LogChannel
from monitor.notify.webhook import WebhookChannel, WebhookSettings
from monitor.service.app import Alerts, build_sources, demo_config, http_for, make_test_alert, streams_for
from monitor.service.daemon import BLIND, Daemon, poll_result
from monitor.service.httpd import HttpServer
from monitor.service.metrics import ACCOUNT_LEVELS, REQUEST_RESULTS, Metrics
from monitor.sim import DEMO_API_KEY, DEMO_SECRET, SimServer
from prometheus_client.parser import text_string_to_metric_families

from fakes import FakeWebhook

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable
    from pathlib import Path

    from monitor.config import Config
    from monitor.notify.base import Channel

#: Every metric family the daemon exposes (the names other tools build on: keep them stable).
FAMILIES = {
    "margin_monitor_margin_ratio",
    "margin_monitor_account_level",
    "margin_monitor_margin_balance",
    "margin_monitor_maintenance_margin",
    "margin_monitor_drift_ratio",
    "margin_monitor_last_update_timestamp_seconds",
    "margin_monitor_poll_duration_seconds",
    "margin_monitor_exchange_requests",
    "margin_monitor_notifications_sent",
    "margin_monitor_notifications_failed",
    "margin_monitor_outbox_depth",
    "margin_monitor_build_info",
    "margin_monitor_accounts",
}
BULK = ("sim-bulk-000000", "sim-bulk-000001")
HOOK_SECRET = "hook-secret-4f1c9a"  # noqa: S105 - a test value, checked to stay out of every page
CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def credentials() -> dict[str, Credentials]:
    """The demo account's keys and the simulator's bulk accounts' (``sim-bulk-key-N``, sha256 of it)."""
    found = {"demo": Credentials(api_key=DEMO_API_KEY, secret=DEMO_SECRET)}
    for index, name in enumerate(BULK):
        key = f"sim-bulk-key-{index:06d}"
        found[name] = Credentials(api_key=key, secret=hashlib.sha256(key.encode()).hexdigest())
    return found


def make_config(
    sim: SimServer, tmp_path: Path, *, names: tuple[str, ...] = ("demo",), poll_s: float = 10.0
) -> Config:
    """Accounts ``names`` on ``sim``, polling every ``poll_s``, the HTTP server on a free port."""
    config = demo_config(sim.base_url, sim.ws_url, poll_interval_s=poll_s, state_dir=tmp_path)
    (template,) = config.accounts
    accounts = tuple(replace(template, name=name, mode="poll") for name in names)
    return replace(config, accounts=accounts, daemon=replace(config.daemon, http_listen="127.0.0.1:0"))


@contextlib.asynccontextmanager
async def serving(
    config: Config,
    channels: list[Channel] | None = None,
    **daemon_options: Any,  # noqa: ANN401 - Daemon's
) -> AsyncIterator[tuple[Daemon, Alerts, HttpServer]]:
    """The daemon, its alerting and the HTTP server, as ``run_daemon`` builds them (not yet polling)."""
    async with Alerts(config, channels or [LogChannel()]) as alerts:
        daemon = Daemon(config, build_sources(config, credentials()), **daemon_options)
        alerts.attach(daemon)
        try:
            async with http_for(config, alerts) as server:
                assert server is not None
                yield daemon, alerts, server
        finally:
            await daemon.shutdown()


async def fetch(url: str, *, accept: str = "*/*") -> tuple[int, str, dict[str, str]]:
    """GET ``url``: status, text and headers."""
    async with aiohttp.ClientSession() as session, session.get(url, headers={"Accept": accept}) as response:
        return response.status, await response.text(), dict(response.headers)


async def scrape(server: HttpServer) -> tuple[set[str], Samples]:
    """``/metrics`` parsed: the family names and every sample by (name, labels)."""
    status, text, headers = await fetch(server.url + "metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    families = list(text_string_to_metric_families(text))
    samples = {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in families
        for sample in family.samples
    }
    return {family.name for family in families}, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sample ``name{labels}`` (KeyError when absent)."""
    return samples[name, frozenset(labels.items())]


async def until(predicate: Callable[[], object], timeout_s: float = 5.0) -> None:
    """Wait until ``predicate()`` holds, checking every 20 ms."""
    async with asyncio.timeout(timeout_s):
        while not predicate():  # noqa: ASYNC110 - the daemon exposes state, not events
            await asyncio.sleep(0.02)


# --- /metrics ---------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_metrics_after_real_polls_match_the_assessment_and_count_a_failure(tmp_path: Path) -> None:
    """A good poll and a failed one: every family is there, figures are the assessment's, counters move."""
    async with SimServer(scenario="flat", autostart=False) as sim:
        config = make_config(sim, tmp_path)
        async with serving(config, jitter=lambda low, _high: low) as (daemon, _, server):
            before = time.time()
            assessment = await daemon.poll("demo")
            assert assessment is not None
            assert assessment.margin_ratio is not None
            sim.faults.inject("http_500", count=1, path="/fapi/v3/account")
            assert await daemon.poll("demo") is None
            names, samples = await scrape(server)
            openmetrics = await fetch(
                server.url + "metrics", accept="application/openmetrics-text; version=1.0.0"
            )
    assert names == FAMILIES
    pair = {"account": "demo", "exchange": "binanceusdm"}
    assert value(samples, "margin_monitor_margin_ratio", **pair) == pytest.approx(assessment.margin_ratio)
    truth = sim.figures().margin_ratio
    assert truth is not None
    assert value(samples, "margin_monitor_margin_ratio", **pair) == pytest.approx(truth, abs=1e-3)
    assert value(samples, "margin_monitor_margin_balance", **pair) == pytest.approx(assessment.margin_balance)
    assert value(samples, "margin_monitor_maintenance_margin", **pair) == pytest.approx(
        assessment.maintenance_margin
    )
    assert value(samples, "margin_monitor_drift_ratio", **pair) == pytest.approx(0, abs=1e-6)
    levels = {
        level: value(samples, "margin_monitor_account_level", **pair, level=level) for level in ACCOUNT_LEVELS
    }
    assert levels == {level: 1.0 if level == "ok" else 0.0 for level in ACCOUNT_LEVELS}
    requests = {
        result: value(
            samples, "margin_monitor_exchange_requests_total", exchange="binanceusdm", result=result
        )
        for result in REQUEST_RESULTS
    }
    assert requests == {result: 1.0 if result in {"ok", "temporary"} else 0.0 for result in REQUEST_RESULTS}
    assert value(samples, "margin_monitor_poll_duration_seconds_count", exchange="binanceusdm") == 2
    assert 0 < value(samples, "margin_monitor_poll_duration_seconds_sum", exchange="binanceusdm") < 10
    updated = value(samples, "margin_monitor_last_update_timestamp_seconds", account="demo", feed="rest")
    assert before <= updated <= time.time()
    assert value(samples, "margin_monitor_accounts", shard="0/1") == 1
    build = [labels for name, labels in samples if name == "margin_monitor_build_info"]
    assert len(build) == 1
    assert dict(build[0])["version"] == "0.1.0"
    assert value(samples, "margin_monitor_notifications_sent_total", channel="log") == 0
    assert value(samples, "margin_monitor_outbox_depth", channel="log") == 0
    # The client's _created gauges are off: they would be series of their own.
    assert not [name for name, _ in samples if name.endswith("_created")]
    assert openmetrics[0] == 200
    assert openmetrics[2]["Content-Type"].startswith("application/openmetrics-text; version=1.0.0")
    assert openmetrics[1].endswith("# EOF\n")


@pytest.mark.asyncio
async def test_notification_counters_and_outbox_depth_follow_the_channel(tmp_path: Path) -> None:
    """A delivered alert counts as sent; a 500 from the webhook counts as failed and stays in the outbox."""
    async with (
        SimServer(scenario="flat", autostart=False) as sim,
        FakeWebhook(required_headers={"Authorization": f"Bearer {HOOK_SECRET}"}) as hook,
    ):
        settings = WebhookSettings(
            url=f"{hook.url}/alerts", headers={"Authorization": f"Bearer {HOOK_SECRET}"}, timeout_s=2.0
        )
        channel = WebhookChannel(settings, name="am")
        async with serving(make_config(sim, tmp_path), [channel]) as (daemon, alerts, server):
            assert alerts.dispatcher is not None
            await daemon.poll("demo")
            await alerts.dispatcher.submit(make_test_alert("demo"))
            await until(lambda: hook.documents)
            await until(
                lambda: alerts.dispatcher is not None and alerts.dispatcher.counters()["am"].delivered
            )
            hook.fail_next(500, times=5)
            await alerts.dispatcher.submit(make_test_alert("demo"))
            await until(lambda: alerts.dispatcher is not None and alerts.dispatcher.counters()["am"].failed)
            _, samples = await scrape(server)
            pages = [(await fetch(server.url + path))[1] for path in ("", "api/status", "healthz", "metrics")]
    assert value(samples, "margin_monitor_notifications_sent_total", channel="am") == 1
    assert value(samples, "margin_monitor_notifications_failed_total", channel="am") >= 1
    assert value(samples, "margin_monitor_outbox_depth", channel="am") == 1
    for text in pages:
        for secret in (HOOK_SECRET, DEMO_SECRET, DEMO_API_KEY, hook.url):
            assert secret not in text


# --- /healthz and /api/status -----------------------------------------------------------------------


@pytest.mark.asyncio
async def test_healthz_is_ok_then_names_the_account_that_went_blind(tmp_path: Path) -> None:
    """200 while the account is fresh; 503 naming it once the exchange stops answering; secrets absent."""
    async with SimServer(scenario="flat", autostart=False) as sim:
        config = make_config(sim, tmp_path, poll_s=0.2)
        async with serving(config, poll_timeout_s=0.3) as (daemon, _, server):
            status, text, _ = await fetch(server.url + "healthz")
            assert (status, text) == (503, "unhealthy: 1 of 1 not fresh\ndemo: never assessed\n")
            stop = asyncio.Event()
            task = asyncio.create_task(daemon.run(stop))
            try:
                await until(lambda: daemon.accounts["demo"].last_good is not None)
                fresh = await fetch(server.url + "healthz")
                sim.faults.inject("timeout", count=10_000, hang_s=5)
                # Blind comes from the data's age, the error from a poll timing out: on a slow
                # machine the first can come before the second, so wait for both.
                demo = daemon.accounts["demo"]
                await until(lambda: demo.level == BLIND and demo.last_error is not None)
                status, text, _ = await fetch(server.url + "healthz")
                json_status, document, _ = await fetch(server.url + "healthz", accept="application/json")
                _, api, _ = await fetch(server.url + "api/status")
            finally:
                stop.set()
                await asyncio.wait_for(task, 10)
    assert fresh[:2] == (200, "ok: 1 account fresh\n")
    assert status == 503
    assert text == "unhealthy: 1 of 1 not fresh\ndemo: blind\n"
    assert json_status == 503
    assert json.loads(document) == {
        "ok": False,
        "starting": False,
        "accounts": 1,
        "unfresh": {"demo": "blind"},
    }
    (account,) = json.loads(api)["accounts"]
    assert (account["account"], account["level"], account["fresh"], account["unfresh"]) == (
        "demo",
        "blind",
        False,
        "blind",
    )
    assert account["error"] == "timeout"
    for secret in (DEMO_SECRET, DEMO_API_KEY):
        assert secret not in text + document + api


@pytest.mark.asyncio
async def test_a_reload_that_attaches_a_new_daemon_is_seen_at_once(tmp_path: Path) -> None:
    """``alerts.attach(new)``: /api/status and /metrics show the new accounts, the removed one is gone."""
    async with SimServer(scenario="flat", autostart=False, bulk=2) as sim:
        first = make_config(sim, tmp_path, names=("demo",))
        async with serving(first) as (daemon, alerts, server):
            await daemon.poll("demo")
            second = make_config(sim, tmp_path, names=BULK)
            replacement = Daemon(second, build_sources(second, credentials()))
            try:
                alerts.attach(replacement)
                await replacement.poll_all()
                _, samples = await scrape(server)
                _, api, _ = await fetch(server.url + "api/status")
            finally:
                await replacement.shutdown()
    assert [account["account"] for account in json.loads(api)["accounts"]] == list(BULK)
    accounts = {dict(labels).get("account") for name, labels in samples if name.startswith("margin_monitor_")}
    assert accounts - {None} == set(BULK)
    assert value(samples, "margin_monitor_accounts", shard="0/1") == 2


@pytest.mark.asyncio
async def test_user_and_mark_events_stamp_their_feeds(tmp_path: Path) -> None:
    """In stream mode a mark tick stamps ``feed="marks"`` and an account update ``feed="user"``."""
    async with SimServer(scenario="flat", autostart=True, tick_s=0.05) as sim:
        config = make_config(sim, tmp_path, poll_s=1.0)
        config = replace(config, accounts=tuple(replace(a, mode="stream") for a in config.accounts))
        async with (
            serving(config) as (daemon, alerts, server),
            streams_for(daemon, credentials(), config) as streams,
        ):
            assert streams is not None
            assert alerts.metrics is not None
            stop = asyncio.Event()
            task = asyncio.create_task(daemon.run(stop))
            try:
                await until(lambda: streams.ticks > 0 and streams.user_feeds["demo"].connected, timeout_s=10)
                await sim.set_wallet(DEMO_API_KEY, 6_500.0)
                user = (
                    "margin_monitor_last_update_timestamp_seconds",
                    frozenset({("account", "demo"), ("feed", "user")}),
                )
                async with asyncio.timeout(5):
                    while user not in (samples := (await scrape(server))[1]):  # noqa: ASYNC110 - scraped
                        await asyncio.sleep(0.05)
            finally:
                stop.set()
                await asyncio.wait_for(task, 10)
    for feed in ("rest", "marks", "user"):
        assert value(samples, "margin_monitor_last_update_timestamp_seconds", account="demo", feed=feed) > 0


# --- the status page, in a real browser -------------------------------------------------------------


async def render(url: str, profile: Path) -> str:
    """The page's DOM after its script ran, as headless Chromium serializes it."""
    assert shutil.which(CHROMIUM), (
        f"{CHROMIUM} not found: ./dev test installs Debian's chromium (apt-get install chromium)"
    )
    process = await asyncio.create_subprocess_exec(
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=5000",
        "--dump-dom",
        url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "HOME": str(profile)},
    )
    try:
        async with asyncio.timeout(30):
            out, err = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, err.decode(errors="replace")[-2000:]
    return out.decode()


@pytest.mark.asyncio
async def test_the_status_page_renders_every_account_in_chromium(tmp_path: Path) -> None:
    """Each account's name, ratio and a bar coloured by its level, as the browser built them from JSON.

    One account is brought down to about 140% (warning); another's last poll failed on an HTML
    error page: its text shows, escaped, never as markup.
    """
    async with SimServer(scenario="flat", autostart=False, bulk=2) as sim:
        key = "sim-bulk-key-000000"
        figures = sim.figures(key)
        await sim.set_wallet(key, 1.4 * figures.maintenance_margin - figures.cross_unrealized_pnl)
        config = make_config(sim, tmp_path, names=("demo", *BULK))
        async with serving(config) as (daemon, _, server):
            await daemon.poll_all()
            assert daemon.accounts[BULK[0]].level == "warning"
            sim.faults.inject("http_500", count=1, path="/fapi/v3/account")
            assert await daemon.poll(BULK[1]) is None
            error = daemon.accounts[BULK[1]].last_error
            dom = await render(server.url, tmp_path / "chromium")
            states = {name: (state.level, state.assessment) for name, state in daemon.accounts.items()}
    assert error is not None
    assert "<" in error, "the simulator's 500 is an HTML page, and the error quotes it"
    cards = dict(
        re.findall(r'<article class="account" data-account="([^"]+)">(.*?)</article>', dom, re.DOTALL)
    )
    assert set(cards) == {"demo", *BULK}
    for name, (level, assessment) in states.items():
        assert assessment is not None
        assert assessment.margin_ratio is not None
        card = cards[name]
        assert f'<span class="account-name">{name}</span>' in card
        assert f'<span class="ratio">{assessment.margin_ratio * 100:.1f}%</span>' in card
        assert re.search(
            rf'<div class="bar level-{level}" data-level="{level}"[^>]* style="width: [0-9.]+%;"', card
        )
        assert card.count("<tr>") == 1 + len(assessment.positions)
    assert "last error: " in cards[BULK[1]]
    assert "<html" not in cards[BULK[1]].lower()
    assert "&lt;" in cards[BULK[1]]
    for secret in (DEMO_SECRET, DEMO_API_KEY, *(c.secret or "" for c in credentials().values())):
        assert secret not in dom


@pytest.mark.asyncio
async def test_the_page_is_self_contained_and_locked_down(tmp_path: Path) -> None:
    """No external resource; a CSP that allows only the page's own inline script and style; read-only."""
    async with (
        SimServer(scenario="flat", autostart=False) as sim,
        serving(make_config(sim, tmp_path)) as (_, _, server),
    ):
        status, page, headers = await fetch(server.url)
        async with (
            aiohttp.ClientSession() as session,
            session.post(server.url + "api/status") as response,
        ):
            post = response.status
    assert status == 200
    assert not re.search(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", page)
    policy = headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy
    assert re.search(r"script-src 'sha256-[A-Za-z0-9+/=]+';", policy)
    assert post == 405


# --- configuration and binding ----------------------------------------------------------------------


LISTEN = [
    ("127.0.0.1:9778", ("127.0.0.1", 9778)),
    ("0.0.0.0:80", ("0.0.0.0", 80)),  # noqa: S104 - parsing, not binding
    ("localhost:0", ("localhost", 0)),
    ("[::1]:9778", ("::1", 9778)),
]


@pytest.mark.parametrize(("text", "address"), LISTEN, ids=[text for text, _ in LISTEN])
def test_http_listen_parses_host_and_port(text: str, address: tuple[str, int]) -> None:
    """``host:port``, IPv6 in brackets."""
    assert parse_listen(text) == address


BAD_LISTEN = [
    ("no-port", '"127.0.0.1"', "must be host:port"),
    ("port-too-big", '"127.0.0.1:70000"', "port must be 0 to 65535"),
    ("bare-ipv6", '"::1:9778"', "must be host:port"),
    ("spaces", '"127.0.0.1 :9778"', "must be host:port"),
    ("not-a-string", "9778", "must be a string"),
]


@pytest.mark.parametrize(
    ("toml", "problem"), [case[1:] for case in BAD_LISTEN], ids=[case[0] for case in BAD_LISTEN]
)
def test_a_bad_http_listen_is_a_config_error_naming_the_key(tmp_path: Path, toml: str, problem: str) -> None:
    """The error names ``daemon.http_listen`` and the file, and says what is wrong."""
    path = tmp_path / "config.toml"
    path.write_text(
        f'[daemon]\nhttp_listen = {toml}\n[[accounts]]\nname = "a"\nexchange = "binanceusdm"\n'
        'api_key_env = "A_KEY"\nsecret_env = "A_SECRET"\n',
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.field == "daemon.http_listen"
    assert problem in str(caught.value)
    assert str(path) in str(caught.value)


def test_http_listen_defaults_to_loopback_and_empty_turns_it_off(tmp_path: Path) -> None:
    """No key: 127.0.0.1:9778. ``""``: no server."""
    account = '[[accounts]]\nname = "a"\nexchange = "binanceusdm"\napi_key_env = "K"\nsecret_env = "S"\n'
    default = tmp_path / "default.toml"
    default.write_text(account, encoding="utf-8")
    off = tmp_path / "off.toml"
    off.write_text('[daemon]\nhttp_listen = ""\n' + account, encoding="utf-8")
    assert load_config(default).daemon.http_address == ("127.0.0.1", 9778)
    assert load_config(off).daemon.http_address is None
    assert DaemonConfig(state_dir=tmp_path).http_listen == "127.0.0.1:9778"


@pytest.mark.asyncio
async def test_a_taken_port_is_a_config_error_but_the_demo_takes_another(tmp_path: Path) -> None:
    """Two servers on one address: the second is refused naming the key; with ``fallback`` it moves."""
    async with SimServer(scenario="flat", autostart=False) as sim:
        config = make_config(sim, tmp_path)
        async with Alerts(config, [LogChannel()]) as alerts, http_for(config, alerts) as first:
            assert first is not None
            taken = replace(config, daemon=replace(config.daemon, http_listen=f"127.0.0.1:{first.port}"))
            with pytest.raises(ConfigError) as caught:
                async with http_for(taken, alerts):
                    pass
            async with http_for(taken, alerts, fallback=True) as second:
                assert second is not None
                assert second.port not in {0, first.port}
                assert (await fetch(second.url + "healthz"))[0] == 503
            off = replace(config, daemon=replace(config.daemon, http_listen=""))
            async with http_for(off, alerts) as none:
                assert none is None
    assert caught.value.field == "daemon.http_listen"
    assert f"127.0.0.1:{first.port}" in str(caught.value)


def test_run_on_a_taken_port_exits_2_with_one_line_naming_the_key(tmp_path: Path) -> None:
    """``margin-monitor run`` whose port another process holds: exit 2, one line, no secret."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        path = tmp_path / "config.toml"
        path.write_text(
            f'[daemon]\nstate_dir = "{tmp_path}"\nhttp_listen = "127.0.0.1:{port}"\n'
            '[[accounts]]\nname = "demo"\nexchange = "binanceusdm"\nbase_url = "http://127.0.0.1:9"\n'
            'api_key_env = "SIM_KEY"\nsecret_env = "SIM_SECRET"\n',
            encoding="utf-8",
        )
        done = subprocess.run(
            [sys.executable, "-m", "monitor", "run", "--config", str(path)],
            capture_output=True,
            text=True,
            env={**os.environ, "SIM_KEY": DEMO_API_KEY, "SIM_SECRET": DEMO_SECRET},
            timeout=60,
            check=False,
        )
    assert done.returncode == 2
    (line,) = done.stderr.splitlines()
    assert f"{path}: daemon.http_listen: cannot listen on 127.0.0.1:{port}" in line
    assert DEMO_SECRET not in done.stdout + done.stderr


@pytest.mark.asyncio
async def test_before_a_daemon_is_attached_the_server_says_starting() -> None:
    """No daemon yet: /healthz 503 ``starting``, /api/status ``starting``, no accounts in /metrics."""
    async with HttpServer(Metrics(_Nothing()), "127.0.0.1", 0) as server:
        health = await fetch(server.url + "healthz")
        _, api, _ = await fetch(server.url + "api/status")
        _, samples = await scrape(server)
    assert health[:2] == (503, "starting: no daemon yet\n")
    assert json.loads(api)["starting"] is True
    assert value(samples, "margin_monitor_accounts", shard="0/1") == 0


class _Nothing:
    """A runtime before anything started."""

    daemon = None
    outbox = None
    dispatcher = None


FAILURES: list[tuple[ExchangeError, str]] = [
    (RateLimitedError("429"), "rate_limited"),
    (ClockSkewError("-1021"), "clock_skew"),
    (TemporaryExchangeError("503"), "temporary"),
    (PayloadError("account.totalMaintMargin", "missing"), "payload"),
    (OperationalExchangeError("bad key"), "operational"),
    (ExchangeError("unexplained"), "operational"),
]


@pytest.mark.parametrize(
    ("error", "result"), FAILURES, ids=[result + ":" + type(e).__name__ for e, result in FAILURES]
)
def test_each_exchange_error_counts_under_one_result(error: ExchangeError, result: str) -> None:
    """The ``result`` label says what the caller must do, as the error's class does."""
    assert poll_result(error) == result
    assert result in REQUEST_RESULTS
