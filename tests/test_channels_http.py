"""The HTTP channels (Telegram, ntfy, Pushover, webhook) against local fakes that answer as the real ones."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import pytest
import pytest_asyncio
from monitor.alerts.engine import Observation, observe_key
from monitor.alerts.model import Alert, AlertKind, PositionAtRisk, SuggestedAction
from monitor.errors import ConfigError, DeliveryError, PermanentDeliveryError, TemporaryDeliveryError
from monitor.notify import ntfy as ntfy_module
from monitor.notify import pushover as pushover_module
from monitor.notify.base import wants
from monitor.notify.dispatcher import Dispatcher
from monitor.notify.format import price, render
from monitor.notify.http import parse_retry_after
from monitor.notify.log import LogChannel
from monitor.notify.ntfy import NtfyChannel, NtfySettings
from monitor.notify.outbox import Outbox
from monitor.notify.pushover import PushoverChannel, PushoverSettings
from monitor.notify.telegram import TelegramChannel, TelegramSettings
from monitor.notify.webhook import ZERO_TIME, WebhookChannel, WebhookSettings, alertmanager_payload
from structlog.testing import capture_logs

from fakes import FakeNtfy, FakePushover, FakeServer, FakeTelegram, FakeWebhook, parse_html

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable
    from pathlib import Path

    from monitor.notify.base import Channel

CHAT = 111
OTHER_CHAT = 222
STRANGER = 999
TOKEN = "123456:AAE-secret-token-xyz"  # noqa: S105 - the fake bot's token
TIMEOUT_S = 0.3


def make_alert(**changes: Any) -> Alert:  # noqa: ANN401 - any Alert field
    """A danger alert on account ``main`` with one position whose symbol needs escaping."""
    alert = Alert(
        id="01JD0Z8XQ0-main-danger",
        kind=AlertKind.FIRING,
        account="main",
        exchange="binanceusdm",
        key="main",
        level="danger",
        created_at=1_764_432_000.0,
        previous_level="warning",
        margin_ratio_pct=128.4,
        threshold_pct=130.0,
        margin_balance=10_234.5,
        maintenance_margin=7_970.8,
        positions=(
            PositionAtRisk(
                symbol="PEPE<&>/USDT:USDT",
                side="long",
                margin_mode="cross",
                mark_price=0.00001234,
                liquidation_price=0.00001050,
                liquidation_distance_pct=14.9,
                next_threshold_pct=120.0,
                next_threshold_price=0.00001190,
            ),
        ),
        action=SuggestedAction(target_ratio_pct=200.0, margin_to_add=5_706.9),
        summary="Ratio <130% & falling",
    )
    return replace(alert, **changes)


def key_alerts() -> tuple[Alert, Alert]:
    """The engine's ``key_unsafe`` alert for account ``main`` and the ``key_safe`` that ends it."""
    reading = Observation(key="main", account="main", exchange="binanceusdm", margin_ratio=None)
    unsafe = "the API key can withdraw (enableWithdrawals)"
    state, [fired] = observe_key(None, reading, unsafe, 1_764_432_000.0)
    _, [ended] = observe_key(state, reading, None, 1_764_435_600.0)
    return fired, ended


# --- fakes and channels ---------------------------------------------------------------------------


@pytest_asyncio.fixture
async def telegram() -> AsyncIterator[FakeTelegram]:
    """A fake Bot API for ``TOKEN`` that knows two chats."""
    async with FakeTelegram(token=TOKEN, chats={CHAT, OTHER_CHAT}) as fake:
        yield fake


@pytest_asyncio.fixture
async def ntfy() -> AsyncIterator[FakeNtfy]:
    """A fake ntfy server whose topics need ``tk_secret``."""
    async with FakeNtfy(token="tk_secret") as fake:  # noqa: S106 - a fake's token
        yield fake


@pytest_asyncio.fixture
async def pushover() -> AsyncIterator[FakePushover]:
    """A fake Pushover API."""
    async with FakePushover() as fake:
        yield fake


@pytest_asyncio.fixture
async def webhook() -> AsyncIterator[FakeWebhook]:
    """A fake Alertmanager receiver that wants a bearer token."""
    async with FakeWebhook(required_headers={"Authorization": "Bearer hook-secret"}) as fake:
        yield fake


def telegram_channel(fake: FakeTelegram, **changes: Any) -> TelegramChannel:  # noqa: ANN401 - settings
    """A Telegram channel aimed at ``fake``, fast timeouts and pacing."""
    settings = TelegramSettings(
        bot_token=TOKEN,
        chat_ids=(CHAT,),
        api_url=fake.url,
        timeout_s=TIMEOUT_S,
        min_interval_s=0.4,
        poll_timeout_s=1.0,
    )
    return TelegramChannel(replace(settings, **changes), name="tg")


def ntfy_channel(fake: FakeNtfy) -> NtfyChannel:
    """An ntfy channel aimed at ``fake``."""
    settings = NtfySettings(topic="margin-alerts", url=fake.url, token="tk_secret", timeout_s=TIMEOUT_S)  # noqa: S106
    return NtfyChannel(settings, name="phone")


def pushover_channel(fake: FakePushover) -> PushoverChannel:
    """A Pushover channel aimed at ``fake``."""
    user = next(iter(fake.users))
    settings = PushoverSettings(token=fake.token, user_key=user, api_url=fake.url, timeout_s=TIMEOUT_S)
    return PushoverChannel(settings, name="pushover")


def webhook_channel(fake: FakeWebhook) -> WebhookChannel:
    """A webhook channel aimed at ``fake``, with its bearer token."""
    settings = WebhookSettings(
        url=f"{fake.url}/alerts", headers={"Authorization": "Bearer hook-secret"}, timeout_s=TIMEOUT_S
    )
    return WebhookChannel(settings, name="am")


@dataclass(frozen=True)
class Peer:
    """One channel type under test: its fake and channel, and the route faults aim at."""

    fake: FakeServer
    channel: Channel  # each class satisfies the protocol the dispatcher uses (checked by mypy)
    route: str


async def _open_peer(kind: str) -> Peer:
    if kind == "telegram":
        tg = await FakeTelegram(token=TOKEN, chats={CHAT}).start()
        return Peer(tg, telegram_channel(tg), "sendMessage")
    if kind == "ntfy":
        nt = await FakeNtfy(token="tk_secret").start()  # noqa: S106 - a fake's token
        return Peer(nt, ntfy_channel(nt), "/")
    if kind == "pushover":
        po = await FakePushover().start()
        return Peer(po, pushover_channel(po), "/1/messages.json")
    wh = await FakeWebhook(required_headers={"Authorization": "Bearer hook-secret"}).start()
    return Peer(wh, webhook_channel(wh), "/alerts")


@pytest_asyncio.fixture(params=["telegram", "ntfy", "pushover", "webhook"])
async def peer(request: pytest.FixtureRequest) -> AsyncIterator[Peer]:
    """Each HTTP channel with its fake, closed afterwards."""
    opened = await _open_peer(str(request.param))
    try:
        yield opened
    finally:
        await opened.channel.close()
        await opened.fake.close()


async def raised(coroutine: Awaitable[None]) -> DeliveryError:
    """The ``DeliveryError`` that ``coroutine`` raises (fails the test if it returns)."""
    with pytest.raises(DeliveryError) as caught:
        await coroutine
    return caught.value


# --- every channel: status mapping ----------------------------------------------------------------


@pytest.mark.asyncio
async def test_each_channel_delivers_with_the_alert_id(peer: Peer) -> None:
    """A healthy peer takes the alert, and what it received carries the alert id."""
    alert = make_alert()
    await peer.channel.send(alert)
    received = peer.fake.requests(peer.route)
    assert len(received) == 1
    assert alert.id in received[0].body.decode()


@pytest.mark.asyncio
async def test_each_channel_sends_a_key_alert_and_its_end(peer: Peer) -> None:
    """``key_unsafe`` names the exchange's flag; ``key_safe`` follows it; each carries its id."""
    fired, ended = key_alerts()
    await peer.channel.send(fired)
    await peer.channel.send(ended)
    first, second = (request.body.decode() for request in peer.fake.requests(peer.route))
    assert fired.id in first
    assert "enableWithdrawals" in first
    assert ended.id in second


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (500, TemporaryDeliveryError),
        (502, TemporaryDeliveryError),
        (503, TemporaryDeliveryError),
        (400, PermanentDeliveryError),
        (401, PermanentDeliveryError),
        (403, PermanentDeliveryError),
        (404, PermanentDeliveryError),
    ],
    ids=["500", "502", "503", "400", "401", "403", "404"],
)
@pytest.mark.asyncio
async def test_status_maps_to_the_error_that_says_what_to_do(
    peer: Peer, status: int, error: type[DeliveryError]
) -> None:
    """5xx is worth a retry; any other 4xx is not: a human must fix a token, chat or URL."""
    peer.fake.fail_next(status, route=peer.route)
    failure = await raised(peer.channel.send(make_alert()))
    assert type(failure) is error
    assert f"HTTP {status}" in str(failure)
    assert failure.channel == peer.channel.name


@pytest.mark.asyncio
async def test_429_is_temporary_with_the_peer_s_retry_after(peer: Peer) -> None:
    """Telegram's ``parameters.retry_after``, or the ``Retry-After`` header, comes back exactly."""
    peer.fake.fail_next(429, retry_after=7, route=peer.route)
    failure = await raised(peer.channel.send(make_alert()))
    assert isinstance(failure, TemporaryDeliveryError)
    assert failure.retry_after == 7


@pytest.mark.asyncio
async def test_a_hang_is_temporary_within_the_timeout(peer: Peer) -> None:
    """A peer that never answers costs one timeout, then a retryable error."""
    peer.fake.hang_next(route=peer.route)
    started = time.monotonic()
    failure = await raised(peer.channel.send(make_alert()))
    assert isinstance(failure, TemporaryDeliveryError)
    assert "timed out" in str(failure)
    assert time.monotonic() - started < TIMEOUT_S + 1.0


@pytest.mark.asyncio
async def test_a_refused_connection_is_temporary() -> None:
    """Nothing listening (the peer is down) is worth a retry."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = WebhookSettings(url=f"http://127.0.0.1:{port}/hook", timeout_s=TIMEOUT_S)
    channel = WebhookChannel(settings, name="am")
    try:
        failure = await raised(channel.send(make_alert()))
    finally:
        await channel.close()
    assert isinstance(failure, TemporaryDeliveryError)


def test_retry_after_reads_seconds_and_http_dates() -> None:
    """``Retry-After`` is delay-seconds or an HTTP date; garbage is ignored."""
    assert parse_retry_after("12") == 12
    assert parse_retry_after("Sun, 29 Nov 2026 16:00:30 GMT", now=1_795_968_000.0) == 30
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


# --- Telegram -------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_telegram_escapes_every_value_in_html(telegram: FakeTelegram) -> None:
    """A symbol and summary holding ``<&>`` reach the chat as text; Telegram would refuse them unescaped."""
    channel = telegram_channel(telegram)
    alert = make_alert()
    try:
        await channel.send(alert)
    finally:
        await channel.close()
    [message] = telegram.messages(CHAT)
    assert message["parse_mode"] == "HTML"
    assert "PEPE&lt;&amp;&gt;/USDT:USDT" in message["text"]
    plain = message["plain"]
    assert "PEPE<&>/USDT:USDT long cross: mark 0.00001234" in plain
    assert "Ratio <130% & falling" in plain
    assert "Margin ratio 128.4%, level danger (threshold 130.0%), was warning" in plain
    assert "liquidation 0.0000105 (14.9% away); ratio 120.0% at 0.0000119" in plain
    assert "To return to 200.0%: add 5,706.90 margin" in plain
    assert plain.endswith(f"id: {alert.id}")


def test_the_fake_refuses_html_telegram_cannot_parse() -> None:
    """The fake is as strict as Telegram, so the escaping test means something."""
    assert parse_html("<b>1 &lt; 2</b> &amp; <i>ok</i>") == "1 < 2 & ok"
    for bad in ("1 < 2", "R&D", "<blink>x</blink>", "a > b"):
        with pytest.raises(ValueError, match=r"byte offset"):
            parse_html(bad)


@pytest.mark.asyncio
async def test_telegram_paces_messages_to_one_chat(telegram: FakeTelegram) -> None:
    """Two alerts to one chat arrive at least ``min_interval_s`` apart (Telegram: about 1 a second)."""
    channel = telegram_channel(telegram, min_interval_s=0.4)
    try:
        await asyncio.gather(channel.send(make_alert(id="a")), channel.send(make_alert(id="b")))
    finally:
        await channel.close()
    first, second = telegram.requests("sendMessage")
    assert second.at - first.at >= 0.4 * 0.95


@pytest.mark.asyncio
async def test_telegram_chats_are_paced_separately(telegram: FakeTelegram) -> None:
    """One alert to two chats is not held back by the per-chat limit."""
    channel = telegram_channel(telegram, chat_ids=(CHAT, OTHER_CHAT), min_interval_s=5.0)
    started = time.monotonic()
    try:
        await channel.send(make_alert())
    finally:
        await channel.close()
    assert {message["chat_id"] for message in telegram.messages()} == {CHAT, OTHER_CHAT}
    assert time.monotonic() - started < 1.0


@pytest.mark.asyncio
async def test_telegram_holds_a_chat_back_for_retry_after(telegram: FakeTelegram) -> None:
    """After a 429, the chat's next send fails at once with the time left, without asking Telegram."""
    channel = telegram_channel(telegram)
    telegram.fail_next(429, retry_after=30, route="sendMessage")
    try:
        await raised(channel.send(make_alert()))
        failure = await raised(channel.send(make_alert()))
    finally:
        await channel.close()
    assert isinstance(failure, TemporaryDeliveryError)
    assert failure.retry_after is not None
    assert 28 < failure.retry_after <= 30
    assert len(telegram.requests("sendMessage")) == 1


@pytest.mark.asyncio
async def test_telegram_retry_skips_chats_already_served(telegram: FakeTelegram) -> None:
    """When one chat of two fails, the retry sends only to that chat: no duplicate in the other."""
    channel = telegram_channel(telegram, chat_ids=(CHAT, OTHER_CHAT), min_interval_s=0.0)
    alert = make_alert()
    telegram.fail_next(500, route="sendMessage")
    try:
        await raised(channel.send(alert))
        await channel.send(alert)
    finally:
        await channel.close()
    assert sorted(message["chat_id"] for message in telegram.messages()) == [CHAT, OTHER_CHAT]


@pytest.mark.asyncio
async def test_telegram_outage_after_rate_limits_retries_at_the_base_backoff(
    telegram: FakeTelegram, tmp_path: Path
) -> None:
    """Through the dispatcher: three 429s then a 500; the retry after the 500 waits the base backoff.

    The 429s' ``retry_after`` (1 s, then 0) is honoured and does not grow the backoff, which would
    otherwise be ``base * 2**3`` = 2.4 s.
    """
    base_s = 0.3
    channel = telegram_channel(telegram, min_interval_s=0.0)
    telegram.fail_next(429, retry_after=1, route="sendMessage")
    telegram.fail_next(429, retry_after=0, route="sendMessage", times=2)
    telegram.fail_next(500, route="sendMessage")
    with Outbox.for_state_dir(tmp_path) as outbox:
        sender = Dispatcher(outbox, [channel], backoff_base_s=base_s, rng=lambda: 1.0)
        try:
            with capture_logs():
                await sender.submit(make_alert(created_at=time.time()))
                outcomes = await sender.drain(timeout=5.0)
        finally:
            await channel.close()
        assert outbox.history(0)[0].deliveries[0].attempts == 5
    assert [(o.result, o.retry_in_s) for o in outcomes] == [
        ("retry", 1.0),
        ("retry", 0.0),
        ("retry", 0.0),
        ("retry", base_s),
        ("delivered", None),
    ]
    sent = [request.at for request in telegram.requests("sendMessage")]
    assert len(sent) == 5
    assert sent[1] - sent[0] >= 1.0
    assert base_s <= sent[4] - sent[3] < 2 * base_s
    assert len(telegram.messages()) == 1


@pytest.mark.asyncio
async def test_telegram_unknown_chat_is_permanent(telegram: FakeTelegram) -> None:
    """A chat the bot cannot write to is a configuration error, named by Telegram's words."""
    channel = telegram_channel(telegram, chat_ids=(STRANGER,))
    try:
        failure = await raised(channel.send(make_alert()))
    finally:
        await channel.close()
    assert isinstance(failure, PermanentDeliveryError)
    assert "chat not found" in str(failure)


def _chain(error: BaseException | None) -> str:
    text = ""
    while error is not None:
        text += f"{error!s} {error!r} "
        error = error.__cause__ or error.__context__
    return text


@pytest.mark.asyncio
async def test_telegram_token_never_in_errors_or_logs(telegram: FakeTelegram) -> None:
    """The token sits in the URL path; no error, cause or log line may show it."""
    channel = telegram_channel(telegram, min_interval_s=0.0)
    texts: list[str] = []
    with capture_logs() as logs:
        for status in (429, 500, 502, 400, 401, 403, 404):
            telegram.fail_next(status, retry_after=0, route="sendMessage")
            texts.append(_chain(await raised(channel.send(make_alert(id=f"s{status}")))))
        telegram.hang_next(route="sendMessage")
        texts.append(_chain(await raised(channel.send(make_alert(id="hang")))))
        telegram.fail_next(401, route="getUpdates")
        poller = asyncio.create_task(channel.poll_commands(_never_called))
        while not any(entry["event"] == "telegram.poll_failed" for entry in logs):  # noqa: ASYNC110 - a log list has no event
            await asyncio.sleep(0.01)
        poller.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await poller
        await channel.close()
        await telegram.close()  # the peer is down: connection refused
        texts.append(_chain(await raised(channel.send(make_alert(id="down")))))
        await channel.close()
    texts.extend(repr(entry) for entry in logs)
    texts.append(repr(channel.settings))
    secret_part = TOKEN.split(":", 1)[1]
    assert not [text for text in texts if secret_part in text]


async def _never_called(command: str, args: list[str], chat_id: int | str) -> str:
    raise AssertionError((command, args, chat_id))


@dataclass
class Handler:
    """A command handler that records its calls."""

    calls: list[tuple[str, list[str], int | str]]

    async def __call__(self, command: str, args: list[str], chat_id: int | str) -> str:
        """Record the call; answer ``/mute`` with what was muted."""
        self.calls.append((command, args, chat_id))
        return f"muted {args[0]} for {args[1]}" if command == "mute" else "ok"


async def _polling(channel: TelegramChannel, handler: Callable[..., Awaitable[str]]) -> asyncio.Task[None]:
    return asyncio.create_task(channel.poll_commands(handler), name="telegram-commands")


async def _stop(task: asyncio.Task[None], channel: TelegramChannel) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await channel.close()


@pytest.mark.asyncio
async def test_telegram_command_from_a_configured_chat_is_answered(telegram: FakeTelegram) -> None:
    """``/mute@bot main 2h`` from a configured chat reaches the handler, and its reply reaches the chat."""
    channel = telegram_channel(telegram)
    handler = Handler([])
    task = await _polling(channel, handler)
    try:
        update_id = telegram.push_message(CHAT, "/mute@margin_bot main 2h")
        [reply] = await telegram.wait_for_messages(1)
        # The next poll confirms the update, so Telegram does not deliver it again.
        await telegram.wait_until(
            lambda: any(r.json().get("offset") == update_id + 1 for r in telegram.requests("getUpdates"))
        )
    finally:
        await _stop(task, channel)
    assert handler.calls == [("mute", ["main", "2h"], CHAT)]
    assert reply["chat_id"] == CHAT
    assert reply["plain"] == "muted main for 2h"


@pytest.mark.asyncio
async def test_telegram_command_from_another_chat_is_ignored(telegram: FakeTelegram) -> None:
    """A stranger's command is dropped, and the log line names the chat but not what it said."""
    channel = telegram_channel(telegram)
    handler = Handler([])
    with capture_logs() as logs:
        task = await _polling(channel, handler)
        try:
            telegram.push_message(STRANGER, "/unmute main secret-words")
            telegram.push_message(CHAT, "/status")
            await telegram.wait_for_messages(1)
        finally:
            await _stop(task, channel)
    assert handler.calls == [("status", [], CHAT)]
    assert [message["chat_id"] for message in telegram.messages()] == [CHAT]
    ignored = [entry for entry in logs if entry["event"] == "telegram.update_ignored"]
    assert [entry["chat_id"] for entry in ignored] == [STRANGER]
    assert "secret-words" not in repr(logs)


@pytest.mark.asyncio
async def test_telegram_unknown_and_stale_commands(telegram: FakeTelegram) -> None:
    """An unknown command gets the help text; one older than ``command_max_age_s`` is not obeyed."""
    channel = telegram_channel(telegram, command_max_age_s=60.0)
    handler = Handler([])
    task = await _polling(channel, handler)
    try:
        telegram.push_message(CHAT, "/status", date=time.time() - 3600)
        telegram.push_message(CHAT, "/liquidate everything")
        [reply] = await telegram.wait_for_messages(1)
    finally:
        await _stop(task, channel)
    assert handler.calls == []
    assert reply["plain"].startswith("Unknown command /liquidate.")


def test_telegram_settings_are_checked() -> None:
    """A bad setting names its field; the token never shows in the settings' repr."""
    with pytest.raises(ConfigError, match="chat_ids"):
        TelegramSettings(bot_token=TOKEN, chat_ids=())
    with pytest.raises(ConfigError, match="api_url"):
        TelegramSettings(bot_token=TOKEN, chat_ids=(CHAT,), api_url="api.telegram.org")
    assert TOKEN not in repr(TelegramSettings(bot_token=TOKEN, chat_ids=(CHAT,)))


# --- ntfy -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("level", "kind", "priority", "emoji"),
    [
        ("warning", AlertKind.FIRING, 3, "warning"),
        ("danger", AlertKind.FIRING, 4, "rotating_light"),
        ("critical", AlertKind.REPEAT, 5, "repeat"),
        ("liquidation", AlertKind.FIRING, 5, "skull"),
        ("blind", AlertKind.BLIND, 5, "see_no_evil"),
        ("ok", AlertKind.RECOVERED, 2, "white_check_mark"),
    ],
    ids=["warning", "danger", "critical-repeat", "liquidation", "blind", "recovered"],
)
@pytest.mark.asyncio
async def test_ntfy_priority_and_tags_follow_the_level(
    ntfy: FakeNtfy, level: str, kind: AlertKind, priority: int, emoji: str
) -> None:
    """Priority 5 wakes the phone for the worst levels; the first tag is the emoji."""
    channel = ntfy_channel(ntfy)
    alert = make_alert(level=level, kind=kind)
    try:
        await channel.send(alert)
    finally:
        await channel.close()
    [published] = ntfy.published
    assert published["topic"] == "margin-alerts"
    assert published["priority"] == priority
    assert published["tags"][0] == emoji
    assert level in published["tags"]
    assert published["message"].endswith(f"id: {alert.id}")
    assert ntfy.requests("/")[0].headers["Authorization"] == "Bearer tk_secret"


@pytest.mark.asyncio
async def test_ntfy_wrong_token_is_permanent(ntfy: FakeNtfy) -> None:
    """Ntfy's own 401 for a wrong token is not retried, and the message quotes ntfy's error."""
    settings = NtfySettings(topic="margin-alerts", url=ntfy.url, token="tk_wrong", timeout_s=TIMEOUT_S)  # noqa: S106
    channel = NtfyChannel(settings, name="phone")
    try:
        failure = await raised(channel.send(make_alert()))
    finally:
        await channel.close()
    assert isinstance(failure, PermanentDeliveryError)
    assert "unauthorized (code 40101)" in str(failure)
    assert "tk_wrong" not in str(failure)


# --- Pushover -------------------------------------------------------------------------------------


@pytest.mark.parametrize("level", ["critical", "liquidation"])
@pytest.mark.asyncio
async def test_pushover_emergency_for_critical_and_liquidation(pushover: FakePushover, level: str) -> None:
    """Priority 2 with ``retry`` and ``expire``, which Pushover demands for it."""
    channel = pushover_channel(pushover)
    alert = make_alert(level=level)
    try:
        await channel.send(alert)
    finally:
        await channel.close()
    [message] = pushover.messages
    assert (message["priority"], message["retry"], message["expire"]) == ("2", "60", "3600")
    assert message["message"].endswith(f"id: {alert.id}")
    assert message["title"].startswith(("🔴 CRITICAL: main", "💀 LIQUIDATION: main"))


@pytest.mark.asyncio
async def test_pushover_lower_levels_are_not_emergencies(pushover: FakePushover) -> None:
    """A warning goes at normal priority, without retry or expire."""
    channel = pushover_channel(pushover)
    try:
        await channel.send(make_alert(level="warning"))
    finally:
        await channel.close()
    [message] = pushover.messages
    assert message["priority"] == "0"
    assert "retry" not in message
    assert "expire" not in message


@pytest.mark.asyncio
async def test_pushover_refusal_quotes_its_errors(pushover: FakePushover) -> None:
    """A wrong user key: HTTP 400 with status 0, not retried, Pushover's words in the message."""
    settings = PushoverSettings(token=pushover.token, user_key="uWrong", api_url=pushover.url)
    channel = PushoverChannel(settings, name="pushover")
    try:
        failure = await raised(channel.send(make_alert()))
    finally:
        await channel.close()
    assert isinstance(failure, PermanentDeliveryError)
    assert "user identifier is not a valid user" in str(failure)
    assert pushover.token not in str(failure)


def test_pushover_settings_keep_emergency_bounds() -> None:
    """Pushover refuses ``retry`` under 30 s and ``expire`` over 3 h; so does the config."""
    with pytest.raises(ConfigError, match="retry"):
        PushoverSettings(token="t", user_key="u", retry=10)  # noqa: S106
    with pytest.raises(ConfigError, match="expire"):
        PushoverSettings(token="t", user_key="u", expire=20_000)  # noqa: S106


# --- webhook --------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_webhook_sends_alertmanager_v4(webhook: FakeWebhook) -> None:
    """The document has Alertmanager's fields, one alert, string annotations, and the id twice."""
    channel = webhook_channel(webhook)
    alert = make_alert()
    try:
        await channel.send(alert)
    finally:
        await channel.close()
    [document] = webhook.documents
    assert set(document) == {
        "version",
        "groupKey",
        "truncatedAlerts",
        "status",
        "receiver",
        "groupLabels",
        "commonLabels",
        "commonAnnotations",
        "externalURL",
        "alerts",
    }
    assert (document["version"], document["status"], document["receiver"]) == ("4", "firing", "am")
    assert document["groupKey"] == '{}:{account="main", alertname="MarginRatio"}'
    [item] = document["alerts"]
    assert set(item) == {
        "status",
        "labels",
        "annotations",
        "startsAt",
        "endsAt",
        "generatorURL",
        "fingerprint",
    }
    assert item["labels"] == {
        "alertname": "MarginRatio",
        "account": "main",
        "exchange": "binanceusdm",
        "key": "main",
        "level": "danger",
        "severity": "error",
    }
    annotations = item["annotations"]
    assert all(isinstance(value, str) for value in annotations.values())
    assert annotations["margin_ratio_pct"] == "128.4"
    assert annotations["alert_id"] == alert.id
    assert "PEPE<&>/USDT:USDT" in annotations["description"]
    assert item["startsAt"] == "2025-11-29T16:00:00.000Z"
    assert item["endsAt"] == ZERO_TIME
    assert re.fullmatch(r"[0-9a-f]{16}", item["fingerprint"])
    assert webhook.requests("/alerts")[0].headers["Idempotency-Key"] == alert.id


@pytest.mark.asyncio
async def test_webhook_recovery_resolves_the_same_alert(webhook: FakeWebhook) -> None:
    """Recovered to ok is ``resolved`` with an end time and the firing alert's fingerprint."""
    channel = webhook_channel(webhook)
    try:
        await channel.send(make_alert())
        await channel.send(make_alert(id="r", kind=AlertKind.RECOVERED, level="ok", previous_level="danger"))
    finally:
        await channel.close()
    firing, resolved = (document["alerts"][0] for document in webhook.documents)
    assert resolved["status"] == "resolved"
    assert resolved["endsAt"] != ZERO_TIME
    assert resolved["fingerprint"] == firing["fingerprint"]


@pytest.mark.asyncio
async def test_webhook_retry_after_as_http_date(webhook: FakeWebhook) -> None:
    """A ``Retry-After`` given as an HTTP date becomes the seconds until then."""
    channel = webhook_channel(webhook)
    webhook.fail_next(503, retry_after=20, retry_after_http_date=True, route="/alerts")
    try:
        failure = await raised(channel.send(make_alert()))
    finally:
        await channel.close()
    assert isinstance(failure, TemporaryDeliveryError)
    assert failure.retry_after == pytest.approx(20, abs=1.5)


# --- format ---------------------------------------------------------------------------------------


def test_prices_keep_their_significant_digits() -> None:
    """Prices from six figures down to a fraction of a cent, without exponents."""
    assert price(95_000.12) == "95,000.12"
    assert price(0.00001234) == "0.00001234"
    assert price(2.5) == "2.5"


def test_the_title_says_what_happened() -> None:
    """Each kind of alert has its own first line."""
    assert render(make_alert()).title == "🟠 DANGER: main margin ratio 128.4%"
    recovered = make_alert(kind=AlertKind.RECOVERED, level="ok", margin_ratio_pct=160.0)
    assert render(recovered).title == "✅ main recovered to ok: margin ratio 160.0%"
    assert render(make_alert(kind=AlertKind.BLIND, level="blind")).title == "🙈 BLIND: main: no fresh data"


def test_key_alerts_in_each_channel_s_terms() -> None:
    """Loud and critical when a key turns unsafe; quiet, routed where it went, and resolving when it ends."""
    fired, ended = key_alerts()
    assert render(fired).title == "🔓 API KEY UNSAFE: main"
    assert render(ended).title == "✅ main: API key fit again"
    assert (ntfy_module.priority(fired), ntfy_module.tags(fired)[0]) == (5, "unlock")
    assert (ntfy_module.priority(ended), ntfy_module.tags(ended)[0]) == (2, "lock")
    assert (pushover_module.priority(fired), pushover_module.priority(ended)) == (1, 0)
    firing, resolved = (alertmanager_payload(alert, receiver="am")["alerts"][0] for alert in (fired, ended))
    assert (firing["status"], firing["labels"]["alertname"], firing["labels"]["severity"]) == (
        "firing",
        "ApiKeyUnsafe",
        "critical",
    )
    assert resolved["status"] == "resolved"
    assert resolved["fingerprint"] == firing["fingerprint"]
    critical_only = LogChannel(name="pager", min_level="critical")
    assert wants(critical_only, fired)
    assert wants(critical_only, ended)
    assert not wants(LogChannel(name="other", accounts=frozenset({"other"})), fired)
