"""The operator's HTTP endpoints: /healthz (alive), /readyz (doing its job), /metrics."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

from aiohttp import web

from poller.health import Check
from poller.metrics import CONTENT_TYPE, Metrics

LiveChecks = Callable[[], Sequence[Check]]
ReadyChecks = Callable[[], Awaitable[Sequence[Check]]]
# A readiness probe must answer even when the store hangs.
READY_TIMEOUT = 5.0


class HealthServer:
    """Serves the three endpoints on ``host:port``."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        metrics: Metrics,
        refresh_metrics: Callable[[], Awaitable[None]],
        live: LiveChecks,
        ready: ReadyChecks,
    ) -> None:
        self.host, self.port = host, port
        self._metrics = metrics
        self._refresh = refresh_metrics
        self._live = live
        self._ready = ready
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics_view)
        return app

    async def start(self) -> None:
        """Listen; the bound port is in ``self.port`` (useful with port 0)."""
        self._runner = web.AppRunner(self.app(), access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _healthz(self, _request: web.Request) -> web.Response:
        return _report(self._live())

    async def _readyz(self, _request: web.Request) -> web.Response:
        try:
            checks = await asyncio.wait_for(self._ready(), READY_TIMEOUT)
        except TimeoutError:
            checks = [Check("store", False, f"no answer within {READY_TIMEOUT:g}s")]
        return _report(checks)

    async def _metrics_view(self, _request: web.Request) -> web.Response:
        try:
            await asyncio.wait_for(self._refresh(), READY_TIMEOUT)
        except Exception:  # the process metrics are still worth serving
            self._metrics.scrape_errors.inc()
        return web.Response(body=self._metrics.render(), headers={"Content-Type": CONTENT_TYPE})


def _report(checks: Sequence[Check]) -> web.Response:
    ok = all(c.ok for c in checks)
    body = {
        "status": "ok" if ok else "fail",
        "checks": {c.name: {"ok": c.ok, "detail": c.detail} for c in checks},
    }
    return web.json_response(body, status=200 if ok else 503)
