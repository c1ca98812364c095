"""No secret leaves the daemon: the whole ``margin-monitor run`` process, through faults and alerts.

The daemon runs as a process with distinctive secrets (API keys, secrets, an OKX passphrase, a
Telegram bot token, an MQTT password, ntfy, Pushover and webhook tokens, a webhook URL with a token
in its path) against the simulated exchange, the fake HTTP peers and a Mosquitto with a password
file. Its own loggers and the third-party ones (ccxt's request and response lines, aiohttp,
APScheduler, paho/aiomqtt) run at DEBUG. The run goes through 5xx answers, malformed JSON, a
timestamp error (-1021), rejected keys (-2015, Bybit's bad signature whose message echoes the key,
an unknown key whose message echoes it cut short), dropped websockets, failing alert peers (500,
429) and a crash through every alert level. Then every output is searched for every secret in every
simple form (as is, URL-encoded, base64, JSON-escaped) and for every piece of 8 characters of each
(a truncated echo leaks as surely): stdout and stderr, every file in the state directory (outbox,
alert state), every request body the peers received, and every MQTT message.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import replace
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, quote, quote_plus, urlencode

import aiomqtt
import pytest
from monitor.service.logs import PIECE_MIN
from monitor.sim import DEMO_API_KEY, VenueAccount, demo_account
from monitor.sim.bybit import bybit_demo_account
from monitor.sim.okx import okx_demo_account

from fakes import FakeNtfy, FakePushover, FakeTelegram, FakeWebhook
from simthread import ThreadedSim

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from monitor.sim import SimServer

    from mosquitto import BrokerFactory, MosquittoBroker

pytest_plugins = ["mosquitto"]

# Distinctive values: nothing else in any output can contain them by chance.
BINANCE_KEY = "HygBinKey4Qz8Wm2Rt6Yp0Lk3Jh7Gf5Ds9Aq1Zx"
BINANCE_SECRET = "HygBinSec7Nb2Vc5Xz8Lk4Jh1Gf6Ds3Aq9Wm0Rt"  # noqa: S105 - test value
BYBIT_KEY = "HygBybKey3Tr8Ew1Qa6Sd4Fg9Hj2Kl5Zx7Cv0Bn"
BYBIT_SECRET = "HygBybSec5Mn0Bv7Cx2Za9Lk4Jh6Gf1Ds8Aq3Wp"  # noqa: S105 - test value
OKX_KEY = "HygOkxKey9Pl2Ok5Ij8Uh1Yg4Tf7Rd0Es3Wa6Qz"
OKX_SECRET = "HygOkxSec1Zq4Xw7Ce0Vr3Bt6Ny9Mu2Ki5Lo8Pa"  # noqa: S105 - test value
OKX_PASSPHRASE = "HygOkxPass/With+Odd=Chars&7Qw"  # noqa: S105 - URL-special characters on purpose
BOT_TOKEN = "7301946258:HygBotTok8Jd3Ks6La9Qp2Wo5Ei1Ru4Ty7Zm"  # noqa: S105 - test value
MQTT_USER = "hygiene-mqtt-user"
MQTT_PASSWORD = "HygMqttPw6Rf1Tg4Yh7Uj0Ik3Ol9Pm2Nb5Vc"  # noqa: S105 - test value
NTFY_TOKEN = "tk_hygntfy3x9c2v7b4n1m6q8w5e0r"  # noqa: S105 - test value
PUSHOVER_TOKEN = "aHygPush4Tok7Jd2Ks5La8Qp1Wo6Ei"  # noqa: S105 - test value
PUSHOVER_USER = "uHygPush9Usr3Xc6Vb1Nm4Qw7Er0Ty"
WEBHOOK_BEARER = "HygHookBearer2Wq5Er8Ty1Ui4Op7As0Df"
WEBHOOK_PATH_TOKEN = "HygHookPath6Zx9Cv3Bn0Mq4Wr7Ty1Ui"  # noqa: S105 - test value

SECRETS = {
    "binance api key": BINANCE_KEY,
    "binance secret": BINANCE_SECRET,
    "bybit api key": BYBIT_KEY,
    "bybit secret": BYBIT_SECRET,
    "okx api key": OKX_KEY,
    "okx secret": OKX_SECRET,
    "okx passphrase": OKX_PASSPHRASE,
    # The bot id before the colon is public (getMe shows it); the token is what follows it.
    "telegram bot token": BOT_TOKEN.split(":", 1)[1],
    "mqtt password": MQTT_PASSWORD,
    "ntfy token": NTFY_TOKEN,
    "pushover token": PUSHOVER_TOKEN,
    "pushover user key": PUSHOVER_USER,
    "webhook bearer token": WEBHOOK_BEARER,
    "webhook url token": WEBHOOK_PATH_TOKEN,
}
CHAT = 424242
ECHO_HEAD, ECHO_TAIL = 20, 12  # what the unknown key's error shows of it, at either end

#: ccxt, aiohttp, APScheduler and MQTT at DEBUG, then the daemon's own command line.
DEBUG_MAIN = """
import logging, sys
import monitor.service.app as app
from monitor.service import logs

configure = logs.configure_logging

def everything_at_debug(*args, **kwargs):
    configure(*args, **{**kwargs, "level": logging.DEBUG})
    for name in (*logs.THIRD_PARTY_LOGGERS, "mqtt", "aiomqtt", "paho", "asyncio"):
        logging.getLogger(name).setLevel(logging.DEBUG)

app.configure_logging = everything_at_debug
from monitor.cli import main
sys.exit(main(sys.argv[1:]))
"""


def forms(secret: str) -> dict[str, str]:
    """The simple transformations under which a secret would still be read."""
    raw = secret.encode()
    return {
        "as is": secret,
        "url-encoded": quote(secret, safe=""),
        "form-encoded": quote_plus(secret),
        "base64": base64.b64encode(raw).decode().rstrip("="),
        "base64url": base64.urlsafe_b64encode(raw).decode().rstrip("="),
        "json": json.dumps(secret)[1:-1],
        # A secret cut short gives as much away: any 8 characters of it are a piece the redactor cuts.
        **{
            f"chars {at} to {at + PIECE_MIN}": secret[at : at + PIECE_MIN]
            for at in range(len(secret) - PIECE_MIN + 1)
        },
    }


def find_leaks(outputs: dict[str, str]) -> list[str]:
    """``where: which secret (form) ...context...`` for every secret found in any output."""
    leaks = []
    for where, text in outputs.items():
        for name, secret in SECRETS.items():
            for form, value in forms(secret).items():
                at = text.find(value)
                if at >= 0:
                    context = text[max(0, at - 80) : at + len(value) + 40]
                    leaks.append(f"{where}: {name} ({form}) in ...{context!r}...")
    return leaks


def write_secret(directory: Path, name: str, value: str) -> Path:
    """A 0600 secret file."""
    path = directory / name
    path.write_text(value + "\n", encoding="utf-8")
    path.chmod(0o600)
    return path


class Peers:
    """The fake HTTP peers and an MQTT subscriber, on the simulator thread's loop."""

    def __init__(self, sim: ThreadedSim, broker: MosquittoBroker) -> None:
        self.sim = sim
        self.broker = broker
        self.telegram = FakeTelegram(token=BOT_TOKEN, chats={CHAT})
        self.ntfy = FakeNtfy(token=NTFY_TOKEN)
        self.pushover = FakePushover(token=PUSHOVER_TOKEN, users={PUSHOVER_USER})
        self.webhook = FakeWebhook(required_headers={"Authorization": f"Bearer {WEBHOOK_BEARER}"})
        self.mqtt: list[tuple[str, bytes]] = []
        self._subscriber: asyncio.Task[None] | None = None

    @property
    def fakes(self) -> tuple[FakeTelegram, FakeNtfy, FakePushover, FakeWebhook]:
        """The HTTP fakes."""
        return (self.telegram, self.ntfy, self.pushover, self.webhook)

    async def _subscribe(self, ready: asyncio.Event) -> None:
        async with aiomqtt.Client(
            self.broker.host, self.broker.port, username=MQTT_USER, password=MQTT_PASSWORD
        ) as client:
            await client.subscribe("#")
            ready.set()
            async for message in client.messages:
                self.mqtt.append((str(message.topic), message.payload))

    async def start(self) -> None:
        """Start the fakes and the subscriber."""
        for fake in self.fakes:
            await fake.start()
        ready = asyncio.Event()
        self._subscriber = asyncio.create_task(self._subscribe(ready), name="hygiene-mqtt")
        async with asyncio.timeout(5):
            await ready.wait()

    async def stop(self) -> None:
        """Stop them."""
        if self._subscriber is not None:
            self._subscriber.cancel()
            await asyncio.gather(self._subscriber, return_exceptions=True)
        for fake in self.fakes:
            await fake.close()

    async def outputs(self) -> dict[str, str]:
        """Every request body the fakes received, and every MQTT topic and payload.

        Pushover takes its credentials in the form body itself (``token``, ``user``): those two
        fields are where they must be, and are left out; everything else in the body is searched.
        """
        texts = {
            f"{type(fake).__name__} request bodies": "\n".join(
                item.body.decode("utf-8", "replace") for item in fake.received
            )
            for fake in self.fakes
            if fake is not self.pushover
        }
        texts["FakePushover request bodies"] = "\n".join(
            urlencode([(k, v) for k, v in parse_qsl(item.body.decode()) if k not in {"token", "user"}])
            for item in self.pushover.received
        )
        texts["MQTT messages"] = "\n".join(
            f"{topic} {payload.decode('utf-8', 'replace')}" for topic, payload in self.mqtt
        )
        return texts


@pytest.fixture
def hygiene_sim() -> Iterator[ThreadedSim]:
    """The simulator with a crash to play, holding the three accounts under their distinctive keys."""
    binance = replace(demo_account(), api_key=BINANCE_KEY, secret=BINANCE_SECRET, name="hyg-binance")
    with ThreadedSim(accounts=[binance], scenario="crash", tick_s=0.12, mark_push_s=0.1) as sim:

        def add(server: SimServer) -> None:
            server.bybit.add_account(
                replace(bybit_demo_account(), api_key=BYBIT_KEY, secret=BYBIT_SECRET, name="hyg-bybit")
            )
            okx: VenueAccount = replace(
                okx_demo_account(), api_key=OKX_KEY, secret=OKX_SECRET, passphrase=OKX_PASSPHRASE
            )
            server.okx.add_account(okx)
            # The published demo key is not in play: the Binance account is ours alone.
            server.accounts.pop(DEMO_API_KEY, None)

        sim.call(add)
        yield sim


def free_port() -> int:
    """A TCP port on 127.0.0.1 nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def fetch_pages(port: int) -> dict[str, str]:
    """The status page, its JSON, the health check and the metrics, as served."""
    pages = {}
    for path in ("/", "/api/status", "/healthz", "/metrics"):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
                pages[f"http {path}"] = response.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as error:  # /healthz may answer 503 while an account is blind
            pages[f"http {path}"] = error.read().decode("utf-8", "replace")
    return pages


def write_config(tmp_path: Path, sim: ThreadedSim, peers: Peers, secrets_dir: Path, http_port: int) -> Path:
    """Three accounts and five channels, secrets in files and environment variables."""
    config = tmp_path / "margin-monitor.toml"
    config.write_text(
        f"""
[daemon]
state_dir = "{tmp_path / "state"}"
log_format = "json"
reconcile_s = 0.5
http_listen = "127.0.0.1:{http_port}"

[alerts]
repeat_critical_min = 0.02

[[accounts]]
name = "binance"
exchange = "binanceusdm"
api_key_env = "HYG_BINANCE_KEY"
secret_env = "HYG_BINANCE_SECRET"
base_url = "{sim.base_url}"
ws_url = "{sim.ws_url}"
poll_interval_s = 0.4

[[accounts]]
name = "bybit"
exchange = "bybit"
api_key_file = "{write_secret(secrets_dir, "bybit-key", BYBIT_KEY)}"
secret_file = "{write_secret(secrets_dir, "bybit-secret", BYBIT_SECRET)}"
base_url = "{sim.base_url}"
poll_interval_s = 0.4

[[accounts]]
name = "okx"
exchange = "okx"
api_key_env = "HYG_OKX_KEY"
secret_env = "HYG_OKX_SECRET"
password_file = "{write_secret(secrets_dir, "okx-passphrase", OKX_PASSPHRASE)}"
base_url = "{sim.base_url}"
poll_interval_s = 0.4

[[channels]]
type = "telegram"
chat_ids = [{CHAT}]
api_url = "{peers.telegram.url}"
bot_token_file = "{write_secret(secrets_dir, "bot-token", BOT_TOKEN)}"
min_interval_s = 0

[[channels]]
type = "mqtt"
host = "{peers.broker.host}"
port = {peers.broker.port}
username_env = "HYG_MQTT_USER"
password_file = "{write_secret(secrets_dir, "mqtt-password", MQTT_PASSWORD)}"

[[channels]]
type = "ntfy"
url = "{peers.ntfy.url}"
topic = "margin"
token_env = "HYG_NTFY_TOKEN"

[[channels]]
type = "pushover"
api_url = "{peers.pushover.url}"
token_env = "HYG_PUSHOVER_TOKEN"
user_key_env = "HYG_PUSHOVER_USER"

[[channels]]
type = "webhook"
url = "{peers.webhook.url}/hooks/{WEBHOOK_PATH_TOKEN}"
bearer_token_env = "HYG_WEBHOOK_BEARER"
""",
        encoding="utf-8",
    )
    return config


def environment() -> dict[str, str]:
    """The process environment with the secrets that are passed as variables."""
    return {
        **os.environ,
        "HYG_BINANCE_KEY": BINANCE_KEY,
        "HYG_BINANCE_SECRET": BINANCE_SECRET,
        "HYG_OKX_KEY": OKX_KEY,
        "HYG_OKX_SECRET": OKX_SECRET,
        "HYG_MQTT_USER": MQTT_USER,
        "HYG_NTFY_TOKEN": NTFY_TOKEN,
        "HYG_PUSHOVER_TOKEN": PUSHOVER_TOKEN,
        "HYG_PUSHOVER_USER": PUSHOVER_USER,
        "HYG_WEBHOOK_BEARER": WEBHOOK_BEARER,
    }


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll ``predicate`` until it holds; fail naming ``what``."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def disrupt(sim: ThreadedSim, peers: Peers) -> None:
    """Every kind of error the run must go through, spread over a few seconds."""
    sim.call(lambda server: server.faults.inject("http_500", 2, path="/fapi/v3/account"))
    sim.call(lambda server: server.faults.inject("malformed_json", 1, path="/fapi/v3/positionRisk"))
    sim.call(lambda server: server.faults.inject("timestamp", 1, path="/fapi/v3/account"))
    sim.call(lambda server: server.faults.inject("http_503", 2, path="/api/v5/account/balance"))
    peers.telegram.fail_next(500, route="sendMessage")
    peers.telegram.fail_next(429, retry_after=1, route="sendMessage")
    peers.ntfy.fail_next(500)
    peers.webhook.fail_next(503)
    # Rejected keys: Binance -2015, OKX 50111, Bybit 10003; and Bybit's bad signature, whose error
    # message echoes the API key inside its "origin_string".
    sim.call(lambda server: server.faults.inject("auth", 1, path="/fapi/v3/account"))
    sim.call(lambda server: server.faults.inject("auth", 1, path="/api/v5/account/positions"))
    sim.call(lambda server: server.faults.inject("auth", 1, path="/v5/account/wallet-balance"))

    def bybit_secret(server: SimServer, secret: str) -> None:
        server.bybit.accounts[BYBIT_KEY].secret = secret

    sim.call(lambda server: bybit_secret(server, "not-the-secret"))
    time.sleep(1.0)
    sim.call(lambda server: bybit_secret(server, BYBIT_SECRET))
    # An unknown key, whose 10003 echoes it cut short at both ends as some venues do: the message
    # holds pieces of the key and no whole secret.
    echoed: list[str] = []

    def echo_cut_short(key: str) -> str:
        echoed.append(key)
        return f"invalid api key {key[:ECHO_HEAD]}... (...{key[-ECHO_TAIL:]})"

    def forget_bybit_key(server: SimServer) -> VenueAccount:
        server.bybit.invalid_key_message = echo_cut_short
        return server.bybit.accounts.pop(BYBIT_KEY)

    bybit = sim.call(forget_bybit_key)
    wait_for(lambda: BYBIT_KEY in echoed, 20, "Bybit's 10003 echoing the key cut short")
    sim.call(lambda server: server.bybit.add_account(bybit))
    sim.call(lambda server: server.faults.inject("malformed_json", 1, path="/v5/position/list"))
    sim.run(sim.call(lambda server: server.drop_websockets()))


def test_no_secret_in_any_output(
    tmp_path: Path, hygiene_sim: ThreadedSim, mosquitto_factory: BrokerFactory
) -> None:
    """Through faults, rejected keys and a crash's alerts, no output holds any secret in any form."""
    broker = mosquitto_factory(users={MQTT_USER: MQTT_PASSWORD})
    peers = Peers(hygiene_sim, broker)
    hygiene_sim.run(peers.start())
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir(mode=0o700)
    http_port = free_port()
    config = write_config(tmp_path, hygiene_sim, peers, secrets_dir, http_port)
    pages: dict[str, str] = {}
    stdout_path, stderr_path = tmp_path / "stdout.log", tmp_path / "stderr.log"
    with stdout_path.open("wb") as out, stderr_path.open("wb") as err:
        process = subprocess.Popen(
            [sys.executable, "-c", DEBUG_MAIN, "run", "--config", str(config)],
            stdout=out,
            stderr=err,
            env=environment(),
        )
    try:
        wait_for(lambda: b'"account.assessed"' in stdout_path.read_bytes(), 30, "a first assessment")
        disrupt(hygiene_sim, peers)
        telegram = peers.telegram

        def liquidation_alerted() -> bool:
            return any("LIQUIDATION" in message["plain"].upper() for message in telegram.messages())

        wait_for(liquidation_alerted, 45, "the liquidation alert on Telegram")
        wait_for(lambda: not hygiene_sim.call(lambda server: server.faults.armed), 20, "every fault to hit")
        pages = fetch_pages(http_port)
        process.send_signal(signal.SIGTERM)
        process.wait(15)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)
        hygiene_sim.run(peers.stop())
    stdout = stdout_path.read_text(encoding="utf-8", errors="replace")
    stderr = stderr_path.read_text(encoding="utf-8", errors="replace")
    assert process.returncode == 0, stderr[-2000:]

    # The run went where it was meant to: errors of every kind, third-party DEBUG lines, alerts everywhere.
    lines = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    failures = {
        (line.get("account"), line.get("error")) for line in lines if line["event"] == "account.poll_failed"
    }
    for expected in [
        ("binance", "TemporaryExchangeError"),
        ("binance", "ClockSkewError"),
        ("binance", "OperationalExchangeError"),
        ("bybit", "OperationalExchangeError"),
        ("okx", "OperationalExchangeError"),
        ("okx", "TemporaryExchangeError"),
    ]:
        assert expected in failures, sorted(failures, key=str)
    # The key cut short reached the log, as pieces cut out.
    echo = "invalid api key ***... (...***)"
    assert any(echo in str(line.get("detail")) for line in lines if line.get("account") == "bybit")
    loggers = {line.get("logger") for line in lines}
    assert {"ccxt.base.exchange", "margin_monitor.daemon"} <= loggers, sorted(map(str, loggers))
    assert peers.ntfy.published
    assert peers.pushover.messages
    assert peers.webhook.documents
    assert any(topic.endswith("/alert") for topic, _ in peers.mqtt)

    assert "margin_monitor_margin_ratio" in pages["http /metrics"]
    outputs = {"stdout": stdout, "stderr": stderr, **pages}
    for path in sorted((tmp_path / "state").rglob("*")):
        if path.is_file():
            outputs[f"state file {path.name}"] = path.read_bytes().decode("utf-8", "replace")
    outputs.update(hygiene_sim.run(peers.outputs()))
    assert "outbox.sqlite3" in " ".join(outputs)
    leaks = find_leaks(outputs)
    assert not leaks, "\n".join(leaks[:20])
