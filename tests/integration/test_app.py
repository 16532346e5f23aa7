"""The lifecycle: a failure while starting closes everything that was opened."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest

from poller.app import Daemon
from poller.config import load_config
from poller.errors import StoreError
from poller.parts import build, open_configured_store
from poller.receiver import Receiver
from poller.sdnotify import Notifier
from poller.simulator import Simulator
from tests.conftest import ConfigWriter, daemon_config


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

        async def failing_take_over() -> None:
            started.set()
            raise StoreError("OperationalError: disk I/O error")

        # The first store call once the listener is open.
        parts.coordination.take_over = failing_take_over  # type: ignore[method-assign]
        with pytest.raises(StoreError, match="disk I/O error"):
            await Daemon(parts, Notifier({})).run()

    assert started.is_set()
    assert all(session.closed for session in parts.sessions)
    assert parts.server is not None
    assert parts.server.port != 0
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientConnectionError):
            await session.get(f"http://127.0.0.1:{parts.server.port}/healthz")
    assert not parts.scheduler.running
