"""A small forward HTTP proxy for the tests: CONNECT tunnels and plain-HTTP forwarding.

It records every request it is asked to carry (method, target, credentials), refuses
wrong credentials with 407 as a corporate proxy does, and only ever connects to loopback
addresses. Written here rather than taken from PyPI: the tests need to see each request's
``Proxy-Authorization`` in-process and to be sure nothing leaves the machine.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
from dataclasses import dataclass, field
from urllib.parse import urlsplit

__all__ = ["ForwardProxy", "ProxiedRequest"]

_HEAD_LIMIT = 64 * 1024
# Hop-by-hop headers a proxy consumes instead of forwarding.
_HOP = {b"proxy-authorization", b"proxy-connection", b"connection", b"keep-alive"}


@dataclass(frozen=True, slots=True)
class ProxiedRequest:
    """One request the proxy was asked to carry."""

    method: str  # CONNECT for a tunnel, else the HTTP method of a forwarded request
    target: str  # host:port for CONNECT, the absolute URL otherwise
    authorization: str | None  # the Proxy-Authorization header as received
    allowed: bool  # False: refused with 407

    @property
    def credentials(self) -> tuple[str, str] | None:
        """The Basic credentials sent, decoded."""
        if self.authorization is None or not self.authorization.startswith("Basic "):
            return None
        user, _, password = base64.b64decode(self.authorization[6:]).decode().partition(":")
        return user, password


@dataclass
class ForwardProxy:
    """A forward proxy on 127.0.0.1; ``credentials`` set: Basic auth is required."""

    credentials: tuple[str, str] | None = None
    requests: list[ProxiedRequest] = field(default_factory=list)
    port: int = 0
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def url(self) -> str:
        """The proxy's URL, without credentials."""
        return f"http://127.0.0.1:{self.port}"

    def url_with(self, user: str, password: str) -> str:
        """The proxy's URL with userinfo."""
        return f"http://{user}:{password}@127.0.0.1:{self.port}"

    async def start(self) -> ForwardProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[ProxiedRequest]:
        """Wait until at least ``count`` requests were seen."""
        async with asyncio.timeout(timeout):
            while len(self.requests) < count:
                await asyncio.sleep(0.01)
        return list(self.requests)

    # -- serving ------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._handle(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        if len(head) > _HEAD_LIMIT:
            return
        request_line, *header_lines = head[:-4].split(b"\r\n")
        method, target, version = request_line.decode("latin-1").split(" ", 2)
        headers = [line.split(b":", 1) for line in header_lines if b":" in line]
        found = [v for k, v in headers if k.strip().lower() == b"proxy-authorization"]
        authorization = found[0].strip().decode("latin-1") if found else None
        allowed = self._allowed(authorization)
        self.requests.append(ProxiedRequest(method, target, authorization, allowed))
        if not allowed:
            writer.write(
                b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                b'Proxy-Authenticate: Basic realm="tests"\r\n'
                b"Content-Length: 0\r\nConnection: close\r\n\r\n"
            )
            await writer.drain()
            return
        if method == "CONNECT":
            host, _, port = target.rpartition(":")
            await self._tunnel(reader, writer, host, int(port))
            return
        parts = urlsplit(target)
        if parts.hostname is None:
            writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            return
        # One request per connection, so every request of the client passes through here.
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        forwarded = [f"{method} {path} {version}".encode("latin-1")]
        forwarded += [b":".join((k, v)) for k, v in headers if k.lower().strip() not in _HOP]
        forwarded.append(b"Connection: close")
        upstream = b"\r\n".join(forwarded) + b"\r\n\r\n"
        await self._relay(reader, writer, parts.hostname, parts.port or 80, upstream, b"")

    def _allowed(self, authorization: str | None) -> bool:
        if self.credentials is None:
            return True
        expected = base64.b64encode(":".join(self.credentials).encode()).decode()
        return authorization == f"Basic {expected}"

    async def _tunnel(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str, port: int
    ) -> None:
        await self._relay(
            reader, writer, host, port, b"", b"HTTP/1.1 200 Connection established\r\n\r\n"
        )

    async def _relay(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        host: str,
        port: int,
        first_up: bytes,
        first_down: bytes,
    ) -> None:
        if not _loopback(host):
            # The tests' traffic never leaves the machine.
            writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(host, port)
        except OSError:
            writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
            return
        try:
            if first_down:
                writer.write(first_down)
                await writer.drain()
            if first_up:
                up_writer.write(first_up)
                await up_writer.drain()
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            up_writer.close()
            with contextlib.suppress(Exception):
                await up_writer.wait_closed()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        with contextlib.suppress(Exception):
            if writer.can_write_eof():
                writer.write_eof()


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
