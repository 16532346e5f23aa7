"""The lifecycle: a failure while starting closes everything that was opened."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest
from sqlalchemy import select, update

from poller.app import Daemon
from poller.config import load_config
from poller.errors import InstanceIdInUse, StoreError
from poller.parts import build, open_configured_store
from poller.receiver import Receiver
from poller.sdnotify import Notifier
from poller.simulator import Simulator
from poller.store.models import instances
from poller.timeutil import utcnow
from tests.conftest import ConfigWriter, daemon_config
from tests.storeops import engine_of


async def test_a_store_error_during_start_closes_the_listener_and_sessions(
    simulator: Simulator, receiver: Receiver, write_config: ConfigWriter, tmp_path: Path
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'poller.db'}"
    config = load_config(
        write_config(
            **daemon_config(simulator, receiver, url, rooms=["r"], server={"listen": "127.0.0.1:0"})
        )
    )
    async with open_configured_store(config) as store:
        parts = build(config, store)
        started = asyncio.Event()

        async def failing_worker() -> None:
            started.set()
            raise StoreError("OperationalError: disk I/O error")

        # The delivery loop's store calls come once the listener is open.
        parts.worker.run = failing_worker  # type: ignore[method-assign]
        with pytest.raises(StoreError, match="disk I/O error"):
            await Daemon(parts, Notifier({})).run()

    assert started.is_set()
    assert all(session.closed for session in parts.sessions)
    assert parts.server is not None
    assert parts.server.port != 0
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientConnectionError):
            await session.get(f"http://127.0.0.1:{parts.server.port}/healthz")


async def test_a_daemon_whose_id_another_process_took_stops_and_says_so(
    simulator: Simulator, receiver: Receiver, write_config: ConfigWriter, tmp_path: Path
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'poller.db'}"
    config = load_config(write_config(**daemon_config(simulator, receiver, url, rooms=["r"])))
    async with open_configured_store(config) as store:
        parts = build(config, store)
        ready = asyncio.Event()
        notifier = Notifier({})
        notifier.ready = lambda status="": ready.set()  # type: ignore[method-assign]
        run = asyncio.create_task(Daemon(parts, notifier).run())
        async with asyncio.timeout(20):
            await ready.wait()
        # Another process took the id over (this one looked silent past its TTL).
        async with engine_of(store).begin() as conn:
            await conn.execute(
                update(instances)
                .where(instances.c.id == store.instance_id)
                .values(incarnation="another-process", heartbeat_at=utcnow())
            )
        async with asyncio.timeout(20):
            with pytest.raises(InstanceIdInUse):
                await run
        async with engine_of(store).connect() as conn:
            holder = (await conn.execute(select(instances.c.incarnation))).scalar_one()
    assert holder == "another-process"  # its stop left the other's row alone
    assert not parts.scheduler.running
