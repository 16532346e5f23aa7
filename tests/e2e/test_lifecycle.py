"""Start-up under a stuck store: SIGTERM still ends ``poller run`` with exit 0 in the grace."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from poller.receiver import Receiver
from poller.simulator import Simulator
from poller.store.db import _MIGRATION_LOCK_KEY
from tests.conftest import ConfigWriter, daemon_config

pytestmark = pytest.mark.e2e
WAITING_FOR_ADVISORY_LOCK = text(
    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
)


def spawn(config: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "poller", "run", "-c", str(config)], stdout=out, stderr=out
        )


async def exit_code(proc: subprocess.Popen[bytes], timeout: float) -> int:
    async with asyncio.timeout(timeout):
        while proc.poll() is None:
            await asyncio.sleep(0.02)
    return proc.returncode


async def wait_for(condition: Callable[[], object], timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.05)


@pytest.mark.postgres
async def test_sigterm_while_migrations_wait_for_their_lock(
    simulator: Simulator,
    receiver: Receiver,
    write_config: ConfigWriter,
    pg_url: str,
    tmp_path: Path,
) -> None:
    config = write_config(**daemon_config(simulator, receiver, pg_url, rooms=["r"]))
    holder = create_async_engine(pg_url)
    async with holder.connect() as conn, conn.begin():
        # Another instance migrating: ours waits on the advisory lock.
        await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK_KEY})
        proc = spawn(config, tmp_path / "daemon.log")
        try:
            async with holder.connect() as probe:

                async def waiting() -> bool:
                    rows = await probe.execute(WAITING_FOR_ADVISORY_LOCK)
                    return bool(rows.scalar())

                async with asyncio.timeout(20):
                    while not await waiting():
                        await asyncio.sleep(0.05)
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            code = await exit_code(proc, 10)
        finally:
            if proc.poll() is None:
                proc.kill()
    await holder.dispose()
    assert code == 0, (tmp_path / "daemon.log").read_text()
    assert time.monotonic() - started < 5 + 1  # shutdown_grace is 5 s
    assert "Traceback" not in (tmp_path / "daemon.log").read_text()


async def test_sigterm_while_the_sqlite_file_is_locked_at_start(
    simulator: Simulator, receiver: Receiver, write_config: ConfigWriter, tmp_path: Path
) -> None:
    db = tmp_path / "poller.db"
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("CREATE TABLE other (x)")
    holder.execute("BEGIN EXCLUSIVE")  # another process writing, for longer than our grace
    config = write_config(
        **daemon_config(simulator, receiver, f"sqlite+aiosqlite:///{db}", rooms=["r"])
    )
    log = tmp_path / "daemon.log"
    proc = spawn(config, log)
    try:
        await asyncio.sleep(1.5)  # well into start-up: imports done, the store busy-waiting
        assert proc.poll() is None, log.read_text()
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = await exit_code(proc, 15)
    finally:
        if proc.poll() is None:
            proc.kill()
        holder.close()
    assert code == 0, log.read_text()
    assert time.monotonic() - started < 5 + 1
    assert "Traceback" not in log.read_text()
