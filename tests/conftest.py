"""Shared fixtures: real stores (SQLite files, PostgreSQL), a fake 100ms API, a receiver,
config files, and the real daemon as a subprocess."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog
import tomli_w
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from poller.receiver import Receiver
from poller.simulator import Simulator
from poller.store.db import create_engine, migrate
from poller.store.repo import Store
from tests.forward_proxy import ForwardProxy
from tests.pki import Pki

PG_ADMIN_URL = os.environ.get(
    "POLLER_TEST_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)
# In CI a skipped PostgreSQL test is a failure: the backend must be proven there.
PG_REQUIRED = os.environ.get("POLLER_REQUIRE_PG") == "1"

ACCESS_KEY = "test-access-key"
APP_SECRET = "test-app-secret-0123456789abcdef"


def make_secret() -> str:
    """A fresh Standard Webhooks secret."""
    return "whsec_" + base64.b64encode(os.urandom(24)).decode()


# --- PostgreSQL: one fresh database per test session ---------------------------------


async def _pg_admin(sql: str) -> None:
    engine = create_async_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.execute(text(sql))
    finally:
        await engine.dispose()


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """The URL of a PostgreSQL database created for this test run (skips if unreachable)."""
    name = f"poller_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    try:
        asyncio.run(_pg_admin(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # any failure means "no PostgreSQL here"
        reason = f"PostgreSQL not reachable at {PG_ADMIN_URL}: {type(exc).__name__}: {exc}"
        if PG_REQUIRED:
            pytest.fail(reason)
        pytest.skip(reason)
    base, _, _ = PG_ADMIN_URL.rpartition("/")
    yield f"{base}/{name}"
    asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def _reset_pg(url: str) -> None:
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(text("DROP SCHEMA public CASCADE"))
            await conn.execute(text("CREATE SCHEMA public"))
    finally:
        await engine.dispose()


@pytest.fixture
def pg_url(pg_database: str) -> str:
    """The session's PostgreSQL database, emptied for this test."""
    asyncio.run(_reset_pg(pg_database))
    return pg_database


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty store URL: a fresh SQLite file, or the session's PostgreSQL database wiped."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'poller.db'}"
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
async def engine(store_url: str) -> AsyncIterator[AsyncEngine]:
    """A migrated store's engine on each backend, for tests that look at the tables."""
    engine = create_engine(store_url)
    await migrate(engine)
    yield engine
    await engine.dispose()


@pytest.fixture
def store(engine: AsyncEngine) -> Store:
    """A migrated store on each backend."""
    return Store(engine, instance_id="test-instance")


# --- logging ---------------------------------------------------------------------------


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """Undo what ``poller.log.configure`` sets process-wide: root handlers, hooks, structlog."""
    root = logging.getLogger()
    handlers, level, hook = root.handlers[:], root.level, sys.excepthook
    yield
    root.handlers, root.level, sys.excepthook = handlers, level, hook
    logging.captureWarnings(False)
    structlog.reset_defaults()


# --- HTTP peers ---------------------------------------------------------------------


def free_port() -> int:
    """A local TCP port nothing listens on now, for a daemon's ``[server] listen``."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """A client session for talking to the test servers."""
    async with aiohttp.ClientSession() as client_session:
        yield client_session


@pytest.fixture
async def simulator() -> AsyncIterator[Simulator]:
    """A running fake 100ms API that accepts tokens minted from ACCESS_KEY/APP_SECRET."""
    sim = Simulator(access_key=ACCESS_KEY, app_secret=APP_SECRET)
    await sim.start()
    yield sim
    await sim.stop()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    """A running receiver with webhooks ``all`` and ``filtered`` (fresh secrets)."""
    rcv = Receiver({"all": make_secret(), "filtered": make_secret()})
    await rcv.start()
    yield rcv
    await rcv.stop()


# --- config files -------------------------------------------------------------------


ConfigWriter = Callable[..., Path]


@pytest.fixture
def write_config(tmp_path: Path) -> ConfigWriter:
    """Write a TOML config from keyword tables (``hms={...}``, ``webhooks=[...]``)."""

    def write(name: str = "config.toml", **tables: Any) -> Path:
        path = tmp_path / name
        path.write_text(tomli_w.dumps(tables))
        return path

    return write


def daemon_config(
    simulator: Simulator,
    receiver: Receiver,
    store_url: str,
    *,
    rooms: list[str],
    webhooks: list[dict[str, Any]] | None = None,
    **sections: dict[str, Any],
) -> dict[str, Any]:
    """A complete config for the daemon against the test peers; sections override."""
    if webhooks is None:
        webhooks = [{"name": "all"}]
    tables: dict[str, Any] = {
        "shutdown_grace": "5s",
        "hms": {"base_url": simulator.base_url, "access_key": ACCESS_KEY, "app_secret": APP_SECRET},
        # A short lease: a restart after kill -9 on PostgreSQL (a new instance id)
        # waits for the dead instance's leases to expire.
        "poll": {"interval": "300ms", "page_size": 10, "lease_ttl": "2s"},
        "store": {"url": store_url},
        "delivery": {"timeout": "2s", "retry_schedule": ["100ms", "200ms", "300ms"]},
        "log": {"level": "info", "format": "json"},
        "rooms": [{"id": r} for r in rooms],
        "webhooks": [
            {"url": receiver.url(w["name"]), "secret": receiver.secrets[w["name"]], **w}
            for w in webhooks
        ],
    }
    for key, value in sections.items():
        tables[key] = {**tables.get(key, {}), **value}
    return tables


# --- the daemon as a real process ---------------------------------------------------


def delivered(receiver: Receiver, event_id: str) -> bool:
    """Whether ``event_id`` reached the receiver (any webhook)."""
    return any(r.msg_id == event_id for r in receiver.delivered())


async def refused_start(config: Path) -> tuple[Path, str]:
    """Run ``poller run`` expecting it to refuse to start: exit 2, no traceback.

    Returns the config and the last stderr line (the one-line error)."""
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "poller", "run", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    return config, done.stderr.strip().splitlines()[-1]


class DaemonProcess:
    """``poller run`` in a subprocess, with a real NOTIFY_SOCKET to know when it is ready."""

    def __init__(self, config: Path, workdir: Path, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.log_path = workdir / f"daemon-{uuid.uuid4().hex[:6]}.log"
        self.env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        # AF_UNIX paths are limited to ~108 bytes: pytest's tmp_path can be longer.
        self._sockdir = tempfile.mkdtemp(prefix="poller-notify-")
        self._sock: socket.socket | None = None
        self.notifications: list[str] = []

    async def start(self, *, ready_timeout: float = 20.0) -> DaemonProcess:
        """Start the daemon and wait for READY=1."""
        sock_path = os.path.join(self._sockdir, "notify")
        if os.path.exists(sock_path):
            os.unlink(sock_path)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(sock_path)
        self._sock.setblocking(False)
        env = {**os.environ, **self.env, "NOTIFY_SOCKET": sock_path}
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "poller", "run", "-c", str(self.config)],
            stdout=self._log,
            stderr=self._log,
            env=env,
        )
        await self.wait_notification("READY=1", ready_timeout)
        return self

    async def wait_notification(self, needle: str, timeout: float) -> str:
        """Wait for a notify datagram containing ``needle``."""
        assert self._sock is not None
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout):
            while True:
                # Datagrams sent before an exit are still queued: read them first.
                code = None if self.proc is None else self.proc.poll()
                try:
                    data = await asyncio.wait_for(loop.sock_recv(self._sock, 4096), 0.2)
                except TimeoutError:
                    if code is not None:
                        raise AssertionError(f"daemon exited {code}:\n{self.output()}") from None
                    continue
                message = data.decode()
                self.notifications.append(message)
                if needle in message:
                    return message

    def send(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    async def stop(self, signum: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        """Send ``signum`` and wait for the exit status."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signum)
        async with asyncio.timeout(timeout):
            while self.proc.poll() is None:
                await asyncio.sleep(0.02)
        self._log.close()
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        return self.proc.returncode

    async def kill(self) -> None:
        """kill -9."""
        await self.stop(signal.SIGKILL)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def events(self) -> list[dict[str, Any]]:
        """The daemon's JSON log events."""
        out = []
        for line in self.output().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self._sock is not None:
            self._sock.close()
        shutil.rmtree(self._sockdir, ignore_errors=True)


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[Callable[..., DaemonProcess]]:
    """Factory for daemon processes; every one is killed at the end of the test."""
    made: list[DaemonProcess] = []

    def make(config: Path, env: dict[str, str] | None = None) -> DaemonProcess:
        d = DaemonProcess(config, tmp_path, env)
        made.append(d)
        return d

    yield make
    for d in made:
        d.cleanup()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test with its kind, from its folder: ``-m unit`` runs the fast part."""
    for item in items:
        for kind in ("unit", "integration", "e2e", "fuzz", "chaos"):
            if f"/tests/{kind}/" in str(item.path).replace("\\", "/"):
                item.add_marker(kind)


# --- TLS -------------------------------------------------------------------------------


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    """A throwaway CA with server and client certificates written under ``tmp_path/pki``."""
    return Pki(tmp_path / "pki")


@pytest.fixture
async def forward_proxy() -> AsyncIterator[ForwardProxy]:
    """A forward proxy on 127.0.0.1 that records what it carries (no credentials needed)."""
    proxy = await ForwardProxy().start()
    yield proxy
    await proxy.stop()
