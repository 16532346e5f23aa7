"""A webhook receiver that verifies Standard Webhooks signatures (for the demo and tests)."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from aiohttp import web

from poller.signing import InvalidSignature, SigningKey


@dataclass(frozen=True, slots=True)
class Received:
    """One request as the receiver saw it, and what it answered."""

    webhook: str
    msg_id: str
    body: bytes
    headers: Mapping[str, str]
    valid: bool
    status: int
    at: float  # when the answer was decided (after any hang)
    arrived: float  # when the request arrived

    @property
    def ok(self) -> bool:
        return self.valid and 200 <= self.status < 300


@dataclass(slots=True)
class _Fault:
    status: int
    remaining: int | None  # None: for ever
    retry_after: str | None = None
    hang: float = 0.0
    body: bytes = b""


@dataclass(slots=True)
class Receiver:
    """Serves ``/hooks/<name>`` for each webhook secret it knows; records every request."""

    secrets: Mapping[str, str]
    tolerance: float = 300.0
    on_request: Callable[[Received], None] | None = None
    received: list[Received] = field(default_factory=list)
    base_url: str = ""
    _keys: dict[str, SigningKey] = field(default_factory=dict)
    _faults: dict[str, list[_Fault]] = field(default_factory=dict)
    _runner: web.AppRunner | None = None
    _changed: asyncio.Condition | None = None
    _closing: asyncio.Event | None = None

    def __post_init__(self) -> None:
        self._keys = {name: SigningKey.from_secret(s) for name, s in self.secrets.items()}

    def app(self) -> web.Application:
        """The aiohttp application (for embedding in another server)."""
        app = web.Application()
        app.router.add_post("/hooks/{name}", self._handle)
        return app

    async def start(
        self, host: str = "127.0.0.1", port: int = 0, *, ssl_context: ssl.SSLContext | None = None
    ) -> str:
        """Listen on ``host:port`` (0: any free port); return the base URL. With
        ``ssl_context`` it serves HTTPS (its verify mode decides whether it wants client
        certificates)."""
        self._changed = asyncio.Condition()
        self._closing = asyncio.Event()
        self._runner = web.AppRunner(self.app(), access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, ssl_context=ssl_context)
        await site.start()
        server = site._server
        assert server is not None
        bound = server.sockets[0].getsockname()  # type: ignore[attr-defined]
        scheme = "https" if ssl_context is not None else "http"
        self.base_url = f"{scheme}://{host}:{bound[1]}"
        return self.base_url

    async def stop(self) -> None:
        """Stop listening (hanging requests are released first)."""
        if self._closing is not None:
            self._closing.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def url(self, name: str) -> str:
        """The URL to configure for webhook ``name``."""
        return f"{self.base_url}/hooks/{name}"

    def fail(
        self,
        name: str,
        *,
        times: int | None = 1,
        status: int = 500,
        retry_after: str | None = None,
        hang: float = 0.0,
        body: bytes = b"",
    ) -> None:
        """Answer the next ``times`` requests of ``name`` (None: all) with ``status``
        and ``body``.

        With ``hang`` the answer is held back that many seconds first.
        """
        self._faults.setdefault(name, []).append(_Fault(status, times, retry_after, hang, body))

    def heal(self, name: str) -> None:
        """Forget every fault of ``name``."""
        self._faults.pop(name, None)

    def delivered(self, name: str | None = None) -> list[Received]:
        """Requests answered 2xx with a valid signature (of one webhook, or all)."""
        return [r for r in self.received if r.ok and (name is None or r.webhook == name)]

    async def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait until ``predicate()`` holds after some request, at most ``timeout`` seconds."""
        assert self._changed is not None
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(predicate), timeout)
            except TimeoutError:
                return False
        return True

    def _fault(self, name: str) -> _Fault | None:
        faults = self._faults.get(name, [])
        while faults:
            fault = faults[0]
            if fault.remaining is None:
                return fault
            if fault.remaining > 0:
                fault.remaining -= 1
                return fault
            faults.pop(0)
        return None

    async def _handle(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        arrived = time.time()
        body = await request.read()
        key = self._keys.get(name)
        if key is None:
            return web.json_response({"error": "unknown webhook"}, status=404)
        try:
            msg_id = key.verify(request.headers, body, tolerance=self.tolerance)
            valid = True
        except InvalidSignature:
            msg_id, valid = request.headers.get("webhook-id", ""), False
        fault = self._fault(name) if valid else None
        if fault is not None and fault.hang and self._closing is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), fault.hang)
        status = 401 if not valid else fault.status if fault is not None else 204
        await self._record(
            Received(name, msg_id, body, dict(request.headers), valid, status, time.time(), arrived)
        )
        headers = {"Retry-After": fault.retry_after} if fault and fault.retry_after else None
        return web.Response(status=status, headers=headers, body=fault.body if fault else None)

    async def _record(self, item: Received) -> None:
        self.received.append(item)
        if self.on_request is not None:
            self.on_request(item)
        assert self._changed is not None
        async with self._changed:
            self._changed.notify_all()
