"""Store faults under a running daemon: a full disk, a read-only file system, a deleted
file, a lock held by another process, a PostgreSQL restart.

Each is real: a small tmpfs filled up or remounted read-only, the file unlinked, a
``sqlite3`` process holding the write lock, a private PostgreSQL cluster (never the
shared one) stopped and started. Each must be reported (an error log line, ``/readyz``
503, ``poller_store_errors_total``), lose and corrupt nothing, and clear by itself when
the fault does.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import pytest

from poller.receiver import Receiver
from poller.simulator import Simulator
from tests.conftest import ConfigWriter, DaemonProcess, daemon_config, free_port, refused_start

pytestmark = pytest.mark.e2e

ROOMS = ["room-1", "room-2"]


async def until(predicate: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    """Wait for ``predicate`` to hold, checking every 100 ms, at most ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.1)


@dataclass
class Watched:
    """A running daemon with its health endpoints."""

    daemon: DaemonProcess
    port: int
    session: aiohttp.ClientSession

    async def ready(self) -> tuple[int, str]:
        async with self.session.get(f"http://127.0.0.1:{self.port}/readyz") as resp:
            return resp.status, await resp.text()

    async def metric(self, name: str) -> float:
        """The sum of a metric's samples (0 when absent)."""
        async with self.session.get(f"http://127.0.0.1:{self.port}/metrics") as resp:
            text = await resp.text()
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name) and line[len(name)] in " {":
                total += float(line.rsplit(" ", 1)[1])
        return total

    async def wait_unready(self, needle: str, timeout: float = 30) -> str:
        body = ""

        async def unready() -> bool:
            nonlocal body
            status, body = await self.ready()
            return status == 503 and needle in body

        await until(unready, timeout, f"/readyz 503 mentioning {needle!r}")
        return body

    async def wait_ready(self, timeout: float = 30) -> None:
        async def ready() -> bool:
            return (await self.ready())[0] == 200

        await until(ready, timeout, "/readyz 200")

    def logged(self, event: str) -> list[dict[str, Any]]:
        return [e for e in self.daemon.events() if e.get("event") == event]


class Starter(Protocol):
    def __call__(
        self, store_url: str, *, poll: dict[str, Any] | None = None
    ) -> Awaitable[Watched]: ...


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as session:
        yield session


@pytest.fixture
def start(
    simulator: Simulator,
    receiver: Receiver,
    write_config: ConfigWriter,
    daemons: Callable[..., DaemonProcess],
    http: aiohttp.ClientSession,
) -> Starter:
    async def start(store_url: str, *, poll: dict[str, Any] | None = None) -> Watched:
        port = free_port()
        tables = daemon_config(
            simulator,
            receiver,
            store_url,
            rooms=ROOMS,
            server={"listen": f"127.0.0.1:{port}"},
            poll=poll or {},
        )
        daemon = await daemons(write_config(**tables)).start()
        watched = Watched(daemon, port, http)
        await watched.wait_ready()
        return watched

    return start


def delivered_ids(receiver: Receiver) -> set[str]:
    return {r.msg_id for r in receiver.delivered()}


async def publish_and_expect(
    simulator: Simulator, receiver: Receiver, count: int, **data: Any
) -> set[str]:
    return {simulator.add_event(ROOMS[i % len(ROOMS)], **data)["id"] for i in range(count)}


async def all_delivered(receiver: Receiver, ids: set[str], timeout: float = 60) -> None:
    assert await receiver.wait_for(lambda: ids <= delivered_ids(receiver), timeout), (
        f"{len(ids - delivered_ids(receiver))} of {len(ids)} never delivered"
    )


def integrity_ok(database: Path) -> None:
    with contextlib.closing(sqlite3.connect(database)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)


# --- a small file system of our own ---------------------------------------------------


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs, mounted for this test alone."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(mount: Path) -> Path:
    """Use up every free byte of ``mount``; returns the filler to delete."""
    filler = mount / "filler"
    subprocess.run(
        ["dd", "if=/dev/zero", f"of={filler}", "bs=64k"], capture_output=True, check=False
    )
    assert shutil.disk_usage(mount).free < 64 * 1024
    return filler


async def test_a_full_disk_is_reported_and_everything_is_delivered_once_space_returns(
    start: Starter,
    simulator: Simulator,
    receiver: Receiver,
    tmpfs: Path,
) -> None:
    database = tmpfs / "poller.db"
    watched = await start(f"sqlite+aiosqlite:///{database}")
    before = await publish_and_expect(simulator, receiver, 4)
    await all_delivered(receiver, before)

    filler = fill(tmpfs)
    # Big events: the store must grow to hold them, which a full disk refuses.
    during = await publish_and_expect(simulator, receiver, 20, blob="x" * 200_000)
    body = await watched.wait_unready("failing")
    assert "full" in body, body
    assert await watched.metric("poller_store_errors_total") > 0
    assert await watched.metric("poller_store_failing_operations") > 0
    failing = watched.logged("store_failing")
    assert failing
    assert failing[0]["level"] == "error"
    assert not delivered_ids(receiver) & during

    filler.unlink()
    await all_delivered(receiver, during)
    await watched.wait_ready()
    assert watched.logged("store_recovered")
    assert await watched.metric("poller_store_failing_operations") == 0
    assert await watched.daemon.stop() == 0
    integrity_ok(database)


async def test_a_read_only_file_system_stops_a_start_with_one_line_until_it_is_writable(
    start: Starter,
    simulator: Simulator,
    receiver: Receiver,
    write_config: ConfigWriter,
    tmpfs: Path,
) -> None:
    # A file system cannot go read-only under open files (the kernel refuses, "busy"),
    # so this is the start on one: systemd's Restart= tries again until it is writable.
    database = tmpfs / "poller.db"
    url = f"sqlite+aiosqlite:///{database}"
    watched = await start(url)
    assert await watched.daemon.stop() == 0
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    try:
        during = await publish_and_expect(simulator, receiver, 6)
        config, last = await refused_start(
            write_config(**daemon_config(simulator, receiver, url, rooms=ROOMS))
        )
        assert last.startswith(f"poller: error: {config}: store.url: "), last
        assert "Read-only file system" in last
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(tmpfs)], check=True)
    watched = await start(url)
    await all_delivered(receiver, during)
    assert await watched.daemon.stop() == 0
    integrity_ok(database)


# --- the file itself --------------------------------------------------------------------


async def test_a_deleted_store_file_makes_the_daemon_unready_loudly_while_it_keeps_delivering(
    start: Starter,
    simulator: Simulator,
    receiver: Receiver,
    tmp_path: Path,
) -> None:
    database = tmp_path / "poller.db"
    watched = await start(f"sqlite+aiosqlite:///{database}")
    for suffix in ("", "-wal", "-shm"):
        Path(f"{database}{suffix}").unlink(missing_ok=True)

    body = await watched.wait_unready("deleted")
    assert f"the store file {database} was deleted while in use" in body
    (failing,) = watched.logged("store_failing")
    assert failing["operation"] == "store_file"
    assert failing["level"] == "error"
    assert await watched.metric("poller_store_errors_total") > 0
    # What it still holds (in the unlinked file) is still delivered: nothing is dropped
    # on purpose, and the operator has been told.
    after = await publish_and_expect(simulator, receiver, 3)
    await all_delivered(receiver, after)
    assert await watched.daemon.stop() == 0


async def test_a_store_locked_by_another_process_is_reported_then_resumed(
    start: Starter,
    simulator: Simulator,
    receiver: Receiver,
    tmp_path: Path,
) -> None:
    database = tmp_path / "poller.db"
    # The default lease TTL (30 s), not the tests' 2 s: a heartbeat then outlasts SQLite's
    # busy timeout and fails as a production one would, instead of being cut short.
    watched = await start(f"sqlite+aiosqlite:///{database}", poll={"lease_ttl": "30s"})
    hold = float(os.environ.get("POLLER_FAULT_LOCK_SECONDS", "15"))
    # Longer than SQLite's busy timeout (10 s): the daemon's writes give up, and retry.
    locker = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sqlite3, sys, time\n"
            "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
            "c.execute('BEGIN EXCLUSIVE')\n"
            "print('locked', flush=True)\n"
            "time.sleep(float(sys.argv[2]))\n"
            "c.execute('COMMIT')\n",
            str(database),
            str(hold),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert locker.stdout is not None
        assert await asyncio.to_thread(locker.stdout.readline) == "locked\n"
        during = await publish_and_expect(simulator, receiver, 6)
        # Its probe of the store is bounded: /readyz answers while the store does not.
        await watched.wait_unready("no answer within 2s", timeout=hold + 15)
        assert await watched.metric("poller_store_errors_total") > 0
        assert watched.logged("store_failing")
    finally:
        await asyncio.to_thread(locker.wait, hold + 30)
    await all_delivered(receiver, during)
    await watched.wait_ready()
    assert watched.logged("store_recovered")
    assert await watched.daemon.stop() == 0
    integrity_ok(database)


# --- PostgreSQL, restarted ---------------------------------------------------------------


def _pg_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    return found[-1].parent if found else None


@dataclass
class Cluster:
    """A PostgreSQL cluster of this test's own, run as the postgres user."""

    bin: Path
    data: Path
    port: int

    def ctl(self, *args: str) -> None:
        # The server's output goes to a log file: a pipe would be inherited by the
        # server and never reach EOF.
        subprocess.run(
            [
                "runuser",
                "-u",
                "postgres",
                "--",
                str(self.bin / "pg_ctl"),
                "-D",
                str(self.data),
                "-l",
                str(self.data / "server.log"),
                "-w",
                "-t",
                "60",
                *args,
            ],
            check=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def start(self) -> None:
        self.ctl("-o", f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1", "start")

    def stop(self) -> None:
        self.ctl("-m", "fast", "stop")

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"


@pytest.fixture
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    pg_bin = _pg_bin()
    if pg_bin is None or shutil.which("runuser") is None:
        pytest.skip("needs PostgreSQL's server binaries and runuser")
    # Outside pytest's tmp tree: the postgres user must reach it.
    base = Path(
        subprocess.run(["mktemp", "-d"], capture_output=True, text=True, check=True).stdout.strip()
    )
    base.chmod(0o755)
    data = base / "data"
    data.mkdir()
    shutil.chown(data, "postgres", "postgres")
    subprocess.run(
        [
            "runuser",
            "-u",
            "postgres",
            "--",
            str(pg_bin / "initdb"),
            "-D",
            str(data),
            "-A",
            "trust",
            "-U",
            "postgres",
        ],
        check=True,
        capture_output=True,
    )
    pg = Cluster(pg_bin, data, free_port())
    pg.start()
    try:
        yield pg
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            pg.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.postgres
async def test_a_postgresql_restart_under_a_running_daemon_is_survived(
    start: Starter,
    simulator: Simulator,
    receiver: Receiver,
    cluster: Cluster,
) -> None:
    watched = await start(cluster.url)
    before = await publish_and_expect(simulator, receiver, 4)
    await all_delivered(receiver, before)

    cluster.stop()
    during = await publish_and_expect(simulator, receiver, 6)
    await watched.wait_unready("failing")
    assert watched.logged("store_failing")
    assert await watched.metric("poller_store_errors_total") > 0
    cluster.start()

    await all_delivered(receiver, during)
    await watched.wait_ready()
    assert await watched.daemon.stop() == 0
