"""The daemon's HTTP server: Prometheus metrics, a health check and a read-only status page.

Routes (GET and HEAD only; nothing here changes any state):

- ``/metrics``: ``Metrics.registry`` in the Prometheus text format (OpenMetrics when asked for);
- ``/healthz``: 200 ``ok`` while every account has a fresh assessment, else 503 naming the ones
  that are blind, stale or never assessed (text, or JSON for ``Accept: application/json``);
- ``/api/status``: accounts, positions and recent alerts as JSON, for the page;
- ``/``: one self-contained HTML page (inline CSS and script, nothing fetched from elsewhere) that
  renders ``/api/status`` and refreshes itself.

Everything is read through ``metrics.runtime`` on each request, so a reload that replaces the
daemon is seen by the next one. Error texts pass through the log redactor; the page inserts every
value as text, never as markup.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import importlib.resources
import json
import math
import re
import time
from typing import TYPE_CHECKING, Any, Self

import structlog
from aiohttp import web
from prometheus_client.exposition import choose_encoder

from monitor.service.logs import REDACTOR

if TYPE_CHECKING:
    from types import TracebackType

    from monitor.alerts.model import Alert
    from monitor.notify.outbox import Outbox
    from monitor.service.daemon import AccountState, Daemon
    from monitor.service.metrics import Metrics

log = structlog.get_logger("margin_monitor.http")

#: The page lists alerts created this far back, newest first, at most ``RECENT_ALERTS`` of them.
HISTORY_S = 24 * 3600.0
RECENT_ALERTS = 20

#: How often the page asks for ``/api/status`` again (milliseconds, read by its script).
REFRESH_MS = 3000

_INLINE = re.compile(r"<(script|style)>(.*?)</\1>", re.DOTALL)


def _page() -> tuple[bytes, str]:
    """The status page, and a Content-Security-Policy allowing its own inline script and style only."""
    text = importlib.resources.files("monitor.data").joinpath("status.html").read_text(encoding="utf-8")
    text = text.replace("__REFRESH_MS__", str(REFRESH_MS))
    hashes: dict[str, list[str]] = {"script": [], "style": []}
    for tag, body in _INLINE.findall(text):
        digest = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
        hashes[tag].append(f"'sha256-{digest}'")
    policy = (
        f"default-src 'none'; script-src {' '.join(hashes['script'])}; "
        f"style-src {' '.join(hashes['style'])}; connect-src 'self'; base-uri 'none'; "
        "form-action 'none'; frame-ancestors 'none'"
    )
    return text.encode(), policy


class HttpServer:
    """Serves ``metrics`` on ``host:port`` (port 0: any free port; ``url`` tells which).

    ``async with HttpServer(...)`` binds (``OSError`` when it cannot) and, on exit, stops taking
    connections and lets requests in flight finish.
    """

    def __init__(self, metrics: Metrics, host: str, port: int) -> None:
        self.metrics = metrics
        self.host = host
        self.port = port
        self._page, self._policy = _page()
        app = web.Application()
        app.router.add_get("/", self.index)
        app.router.add_get("/metrics", self.exposition)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/api/status", self.status)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)

    @property
    def url(self) -> str:
        """Where the server listens, as a URL (with the port it got when asked for port 0)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    async def start(self) -> None:
        """Bind and serve; ``OSError`` when the address is taken or not ours."""
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        try:
            await site.start()
        except OSError:
            await self._runner.cleanup()
            raise
        if self.port == 0 and self._runner.addresses:
            self.port = int(self._runner.addresses[0][1])
        log.info("http.started", url=self.url, routes=["/", "/metrics", "/healthz", "/api/status"])

    async def close(self) -> None:
        """Stop serving."""
        await self._runner.cleanup()
        log.info("http.stopped", url=self.url)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        await self.close()

    # --- routes -----------------------------------------------------------------------------------

    async def index(self, request: web.Request) -> web.Response:
        """The status page."""
        del request
        return web.Response(
            body=self._page,
            content_type="text/html",
            charset="utf-8",
            headers={**_NO_STORE, "Content-Security-Policy": self._policy, "Referrer-Policy": "no-referrer"},
        )

    async def exposition(self, request: web.Request) -> web.Response:
        """The Prometheus text format (0.0.4), or OpenMetrics when the scraper asks for it."""
        encode, content_type = choose_encoder(request.headers.get("Accept", ""))
        self.metrics.refresh()
        body = await asyncio.to_thread(encode, self.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def healthz(self, request: web.Request) -> web.Response:
        """200 while every account is fresh; 503 naming those that are not."""
        daemon = self.metrics.runtime.daemon
        unfresh = {} if daemon is None else daemon.unfresh()
        accounts = 0 if daemon is None else len(daemon.accounts)
        status = 503 if daemon is None or unfresh else 200
        if "application/json" in request.headers.get("Accept", ""):
            document = {
                "ok": status == 200,
                "starting": daemon is None,
                "accounts": accounts,
                "unfresh": unfresh,
            }
            return web.json_response(document, status=status, headers=_NO_STORE)
        if daemon is None:
            text = "starting: no daemon yet\n"
        elif not unfresh:
            text = f"ok: {accounts} account{'s' if accounts != 1 else ''} fresh\n"
        else:
            lines = [f"{name}: {reason}" for name, reason in sorted(unfresh.items())]
            text = f"unhealthy: {len(unfresh)} of {accounts} not fresh\n" + "\n".join(lines) + "\n"
        return web.Response(text=text, status=status, headers=_NO_STORE)

    async def status(self, request: web.Request) -> web.Response:
        """The page's data."""
        del request
        runtime = self.metrics.runtime
        document = status_document(runtime.daemon, runtime.outbox, now=time.time())
        return web.json_response(document, headers=_NO_STORE, dumps=_dumps)


_NO_STORE = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


def _dumps(document: Any) -> str:  # noqa: ANN401 - any JSON document
    # NaN and infinity are not JSON: a ratio without maintenance margin is already None.
    return json.dumps(document, allow_nan=False)


def status_document(daemon: Daemon | None, outbox: Outbox | None, *, now: float) -> dict[str, Any]:
    """What ``/api/status`` answers: every account, its positions, and the recent alerts."""
    if daemon is None:
        return {"generated_at": now, "starting": True, "thresholds_pct": [], "accounts": [], "alerts": []}
    unfresh = daemon.unfresh()
    records = [] if outbox is None else outbox.history(now - HISTORY_S)
    return {
        "generated_at": now,
        "starting": False,
        "thresholds_pct": list(daemon.config.alerts.thresholds_pct),
        "accounts": [_account(daemon, state, unfresh.get(state.name)) for state in daemon.accounts.values()],
        "alerts": [
            _alert(record.alert, [(status.channel, status.state) for status in record.deliveries])
            for record in reversed(records[-RECENT_ALERTS:])
        ],
    }


def _account(daemon: Daemon, state: AccountState, unfresh: str | None) -> dict[str, Any]:
    assessment = state.assessment
    document: dict[str, Any] = {
        "account": state.name,
        "exchange": state.config.exchange,
        "level": state.level,
        "fresh": unfresh is None,
        "unfresh": unfresh,
        "age_s": daemon.age_s(state.name),
        "error": None if state.last_error is None else REDACTOR.redact_text(state.last_error),
        "margin_ratio": None,
        "margin_balance": None,
        "maintenance_margin": None,
        "drift": None,
        "positions": [],
    }
    if assessment is None:
        return document
    document.update(
        margin_ratio=_finite(assessment.margin_ratio),
        margin_balance=_finite(assessment.margin_balance),
        maintenance_margin=_finite(assessment.maintenance_margin),
        drift=_finite(state.drift),
        positions=[
            {
                "symbol": item.position.symbol,
                "side": item.position.side.value,
                "margin_mode": item.position.margin_mode.value,
                "contracts": _finite(item.position.contracts),
                "mark_price": _finite(item.position.mark_price),
                "liquidation_price": _finite(item.liquidation_price),
                "threshold_prices": {
                    f"{threshold * 100:g}": _finite(price)
                    for threshold, price in zip(assessment.thresholds, item.threshold_prices, strict=True)
                },
                "margin_ratio": _finite(item.margin_ratio),
                "level": None if item.level is None else item.level.value,
            }
            for item in assessment.positions
        ],
    )
    return document


def _alert(alert: Alert, deliveries: list[tuple[str, str]]) -> dict[str, Any]:
    return {
        "created_at": alert.created_at,
        "account": alert.account,
        "kind": alert.kind.value,
        "level": alert.level,
        "margin_ratio_pct": _finite(alert.margin_ratio_pct),
        "summary": REDACTOR.redact_text(alert.summary),
        "deliveries": [{"channel": channel, "state": state} for channel, state in deliveries],
    }


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None
