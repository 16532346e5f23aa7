"""Peers for the TLS and proxy tests: configs with real files, and a TLS server that speaks
its mind (OpenSSL's alerts) where an asyncio server only resets the connection."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from pathlib import Path
from typing import Any

import tomli_w

from poller.config import Config, load_config
from tests.conftest import ACCESS_KEY, APP_SECRET

__all__ = ["AlertingTlsServer", "load_with"]


def load_with(
    directory: Path,
    *,
    webhooks: list[dict[str, Any]],
    hms: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
) -> Config:
    """Load a config file with these webhooks (and [hms] keys), as the daemon would."""
    tables = {
        "hms": {"access_key": ACCESS_KEY, "app_secret": APP_SECRET, **(hms or {})},
        "rooms": [{"id": "room-1"}],
        "webhooks": webhooks,
    }
    path = directory / "config.toml"
    path.write_text(tomli_w.dumps(tables))
    return load_config(path, environ or {})


class AlertingTlsServer:
    """A blocking TLS server on 127.0.0.1 in a thread, answering 204 to every request.

    OpenSSL on a blocking socket writes its alert (``certificate required``, ``unknown
    ca``) before the handshake fails, as nginx or any OpenSSL-based server does; asyncio's
    TLS server drops the connection without it.
    """

    def __init__(self, context: ssl.SSLContext) -> None:
        self._context = context
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.port: int = self._listener.getsockname()[1]
        self.handshake_errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="tls-server", daemon=True)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}/hook"

    def __enter__(self) -> AlertingTlsServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._listener.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            with contextlib.closing(conn):
                conn.settimeout(5)
                try:
                    with self._context.wrap_socket(conn, server_side=True) as tls:
                        self._answer(tls)
                except (ssl.SSLError, OSError) as e:
                    self.handshake_errors.append(str(e))

    @staticmethod
    def _answer(tls: ssl.SSLSocket) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = tls.recv(65536)
            if not chunk:
                return
            data += chunk
        tls.sendall(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
