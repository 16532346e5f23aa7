"""The operator's HTTP endpoints: /healthz (alive), /readyz (doing its job), /metrics, and
the read-only status page at /."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

from aiohttp import web

from poller import status_page
from poller.errors import UserError
from poller.health import Check
from poller.metrics import CONTENT_TYPE, Metrics
from poller.snapshot import Snapshot
from poller.timeutil import utcnow

LiveChecks = Callable[[], Sequence[Check]]
ReadyChecks = Callable[[], Awaitable[Sequence[Check]]]
TakeSnapshot = Callable[[], Awaitable[Snapshot]]
# A readiness probe, and the status page, must answer even when the store hangs.
READY_TIMEOUT = 5.0


class HealthServer:
    """Serves the endpoints on ``host:port``; the status page only given ``status``, a
    snapshot of the store (see ``poller.snapshot``), and masked with ``redact``."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        metrics: Metrics,
        refresh_metrics: Callable[[], Awaitable[None]],
        live: LiveChecks,
        ready: ReadyChecks,
        status: TakeSnapshot | None = None,
        redact: status_page.Redact = str,
        page_timeout: float = READY_TIMEOUT,
    ) -> None:
        self.host, self.port = host, port
        self._metrics = metrics
        self._refresh = refresh_metrics
        self._live = live
        self._ready = ready
        self._status = status
        self._redact = redact
        self._page_timeout = page_timeout
        self._reading: asyncio.Future[Snapshot] | None = None  # the status page's store read
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics_view)
        if self._status is not None:
            # add_get answers HEAD too; other methods get 405.
            app.router.add_get("/", self._status_page)
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
        if self._reading is not None:
            self._reading.cancel()

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

    async def _snapshot(self) -> Snapshot:
        """The store's snapshot, or TimeoutError after ``page_timeout``.

        Why not ``wait_for``: a read cancelled while the driver waits on a lock (SQLite's
        busy_timeout) is only cancelled once the driver's thread comes back, seconds later.
        The read goes on by itself instead, and requests meanwhile wait on the same one:
        a hung store holds at most one read of the page, however often it is asked for.
        """
        assert self._status is not None
        if self._reading is None or self._reading.done():
            self._reading = asyncio.ensure_future(self._status())
            # Retrieved even when nobody waits any more, so its failure is not logged.
            self._reading.add_done_callback(lambda f: f.cancelled() or f.exception())
        reading = self._reading
        done, _ = await asyncio.wait({reading}, timeout=self._page_timeout)
        if not done:
            raise TimeoutError
        return reading.result()

    async def _status_page(self, _request: web.Request) -> web.Response:
        try:
            snap = await self._snapshot()
        except TimeoutError:
            problem = f"The store did not answer within {self._page_timeout:g}s."
        except UserError as exc:  # the store failed (StoreError), or its schema is behind
            problem = f"The store could not be read: {exc}"
        else:
            return _html(status_page.render(snap, self._redact), 200)
        return _html(status_page.unavailable(problem, utcnow(), self._redact), 503)


def _html(body: str, status: int) -> web.Response:
    return web.Response(
        text=body,
        status=status,
        headers={**status_page.HEADERS, "Content-Type": status_page.CONTENT_TYPE},
    )


def _report(checks: Sequence[Check]) -> web.Response:
    ok = all(c.ok for c in checks)
    body = {
        "status": "ok" if ok else "fail",
        "checks": {c.name: {"ok": c.ok, "detail": c.detail} for c in checks},
    }
    return web.json_response(body, status=200 if ok else 503)
