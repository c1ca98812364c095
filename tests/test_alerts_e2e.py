"""Alerting end to end: the daemon as a process, the simulator, fake channel peers, the outbox on disk.

The restart test is the promise "no lost alerts": the daemon is killed with SIGKILL while its webhook
receiver is down, and after a restart with the receiver back every pending alert arrives once.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from typing import TYPE_CHECKING

import pytest
import pytest_asyncio
from monitor.alerts.model import Alert, AlertKind
from monitor.notify.outbox import Outbox
from monitor.service.alerting import Mutes
from monitor.sim import DEMO_API_KEY, DEMO_SECRET

from fakes import FakeNtfy, FakeTelegram, FakeWebhook

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

pytestmark = pytest.mark.asyncio

ENV = {
    **os.environ,
    "SIM_KEY": DEMO_API_KEY,
    "SIM_SECRET": DEMO_SECRET,
    "TG_TOKEN": "123456:TEST-token-never-logged",
}


async def run_cli(*args: str, timeout_s: float = 60) -> tuple[int, str, str]:
    """Run ``margin-monitor ARGS`` as a process; return its exit code, stdout and stderr."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "monitor",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=ENV,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout_s)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


@pytest_asyncio.fixture
async def simulator() -> AsyncIterator[str]:
    """``margin-monitor sim`` with a fast crash, as a separate process; yields its base URL."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "monitor",
        "sim",
        "--port",
        "0",
        "--scenario",
        "crash",
        "--tick",
        "0.2",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert process.stdout is not None
    url = None
    async with asyncio.timeout(30):
        while url is None:
            line = (await process.stdout.readline()).decode()
            if "http://127.0.0.1:" in line:
                url = "http://" + line.split("http://", 1)[1].split()[0].rstrip(",;")
    try:
        yield url
    finally:
        process.terminate()
        await process.wait()


def write_config(tmp_path: Path, base_url: str, channels: str) -> Path:
    """The simulator's demo account and the given ``[[channels]]`` tables."""
    path = tmp_path / "margin-monitor.toml"
    path.write_text(
        f"""
[daemon]
state_dir = "{tmp_path / "state"}"
log_format = "json"
http_listen = "127.0.0.1:0"  # any free port: tests run side by side

[alerts]
max_alert_age_s = 600

[[accounts]]
name = "demo"
exchange = "binanceusdm"
api_key_env = "SIM_KEY"
secret_env = "SIM_SECRET"
base_url = "{base_url}"
poll_interval_s = 0.4

{channels}
""",
        encoding="utf-8",
    )
    return path


def webhook_stanza(url: str) -> str:
    """A webhook channel for every level."""
    return f'[[channels]]\ntype = "webhook"\nname = "hook"\nurl = "{url}/alerts"\nmin_level = "warning"\n'


async def test_sigkill_while_a_channel_is_down_loses_nothing(tmp_path: Path, simulator: str) -> None:
    """Killed (SIGKILL) with deliveries pending on a down receiver, then restarted: each arrives once."""
    async with FakeWebhook() as hook:
        hook.fail_next(503, times=10_000)  # the receiver is down
        config = write_config(tmp_path, simulator, webhook_stanza(hook.url))
        first = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "monitor", "run", "--config", str(config),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL, env=ENV,
        )  # fmt: skip
        try:
            # Wait until the crash has stored two alerts for the webhook (the first refused at least
            # once; the second waits behind it, as each channel delivers in order).
            await hook.wait_until(lambda: bool(hook.received), 60)
            async with asyncio.timeout(60):
                while _pending(tmp_path) < 2:  # noqa: ASYNC110 - the outbox is in another process
                    await asyncio.sleep(0.1)
        finally:
            first.send_signal(signal.SIGKILL)
            await first.wait()
        outbox = Outbox.for_state_dir(tmp_path / "state")
        pending_ids = {
            record.alert.id
            for record in outbox.history(0)
            if any(d.state == "pending" for d in record.deliveries)
        }
        outbox.close()
        assert len(pending_ids) >= 2
        assert not hook.documents  # nothing got through while it was down

        hook._faults.clear()  # noqa: SLF001 - the receiver comes back
        second = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "monitor", "run", "--config", str(config),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL, env=ENV,
        )  # fmt: skip
        try:
            await hook.wait_until(lambda: pending_ids <= set(_accepted(hook)), 30)
        finally:
            second.send_signal(signal.SIGTERM)
            await asyncio.wait_for(second.wait(), 10)
    accepted = _accepted(hook)
    assert pending_ids <= set(accepted)
    assert len(accepted) == len(set(accepted)), "an alert was delivered twice"
    assert second.returncode == 0


def _pending(tmp_path: Path) -> int:
    """Webhook deliveries still pending in the daemon's outbox (read while it runs: WAL allows it)."""
    path = tmp_path / "state"
    if not (path / "outbox.sqlite3").exists():
        return 0
    outbox = Outbox.for_state_dir(path)
    try:
        return outbox.pending_count("hook")
    finally:
        outbox.close()


def _accepted(hook: FakeWebhook) -> list[str]:
    """The ids of the alerts the receiver accepted, in order (repeats included)."""
    return [str(document["alerts"][0]["annotations"]["alert_id"]) for document in hook.documents]


async def test_test_alert_reports_each_channel(tmp_path: Path) -> None:
    """``test-alert``: one line per channel, ok or FAIL with the reason; exit 1 when any failed; no token."""
    async with FakeTelegram(chats={42}) as telegram, FakeNtfy() as ntfy, FakeWebhook() as hook:
        ntfy.fail_next(400, description="topic invalid")
        channels = (
            '[[channels]]\ntype = "telegram"\nbot_token_env = "TG_TOKEN"\nchat_ids = [42]\n'
            f'api_url = "{telegram.url}"\n\n'
            f'[[channels]]\ntype = "ntfy"\ntopic = "alerts"\nurl = "{ntfy.url}"\n\n'
            f"{webhook_stanza(hook.url)}"
        )
        config = write_config(tmp_path, "http://127.0.0.1:9", channels)
        code, out, err = await run_cli("test-alert", "--config", str(config))
    lines = out.splitlines()
    assert code == 1
    assert [line.split()[0] for line in lines] == ["ok", "ok", "FAIL", "ok"]  # log, telegram, ntfy, webhook
    assert "ntfy (ntfy)" in lines[2]
    assert "topic invalid" in lines[2] or "400" in lines[2]
    assert len(telegram.sent) == 1
    assert "test alert" in telegram.sent[0]["text"]
    assert "TEST-token-never-logged" not in out + err


async def test_mute_from_the_cli_silences_the_daemon(tmp_path: Path) -> None:
    """``mute demo --for 2h`` writes the shared mutes file the daemon reads; ``unmute`` ends it."""
    config = write_config(tmp_path, "http://127.0.0.1:9", "")
    code, out, _ = await run_cli("mute", "demo", "--for", "2h", "--config", str(config))
    assert code == 0
    assert "demo muted for 2h" in out
    until = Mutes(tmp_path / "state").until("demo")
    assert until is not None
    assert 7_190 < until - time.time() <= 7_200
    code, out, _ = await run_cli("unmute", "demo", "--config", str(config))
    assert (code, out.strip()) == (0, "demo unmuted")
    assert Mutes(tmp_path / "state").until("demo") is None


async def test_mute_refuses_an_unknown_account_and_a_bad_duration(tmp_path: Path) -> None:
    """A wrong account or duration exits 2 with one line naming it."""
    config = write_config(tmp_path, "http://127.0.0.1:9", "")
    code, _, err = await run_cli("mute", "nobody", "--config", str(config))
    assert code == 2
    assert "no account named 'nobody'" in err
    code, _, err = await run_cli("mute", "demo", "--for", "soon", "--config", str(config))
    assert code == 2
    assert "--for: not a duration" in err


async def test_alerts_lists_the_history(tmp_path: Path) -> None:
    """``alerts --since 1h`` lists stored alerts with each channel's delivery state."""
    config = write_config(tmp_path, "http://127.0.0.1:9", "")
    outbox = Outbox.for_state_dir(tmp_path / "state")
    now = time.time()
    for index, level in enumerate(("warning", "danger")):
        alert = Alert(
            id=f"a{index}", kind=AlertKind.FIRING, account="demo", exchange="binanceusdm", key="demo",
            level=level, created_at=now - 60 + index, margin_ratio_pct=140.0 - 10 * index,
        )  # fmt: skip
        outbox.add(alert, ["log", "hook"])
    old = Alert(
        id="old",
        kind=AlertKind.FIRING,
        account="demo",
        exchange="x",
        key="demo",
        level="warning",
        created_at=now - 7200,
    )
    outbox.add(old, ["log"])
    outbox.close()
    code, out, _ = await run_cli("alerts", "--config", str(config), "--since", "1h")
    assert code == 0
    rows = out.splitlines()[2:]
    assert [row.split()[4] for row in rows] == ["warning", "danger"]
    assert all("log:pending" in row and "hook:pending" in row for row in rows)
    code, out, _ = await run_cli("alerts", "--config", str(config), "--since", "3h", "--json")
    assert [item["id"] for item in json.loads(out)] == ["old", "a0", "a1"]
