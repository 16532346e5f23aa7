"""Joining the live instances: one live process per instance id, a crashed run waited out."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from poller.coordination import Coordination
from poller.errors import InstanceIdInUse
from poller.store.models import instances
from poller.store.repo import Store
from poller.timeutil import utcnow
from poller.timings import Timings
from tests.storeops import elapse

# instance_ttl 1 s, a heartbeat every 1/3 s.
TIMINGS = Timings.derive(interval=0.3, lease_ttl=1.0, delivery_timeout=1.0)
WAIT = 15.0


async def holder_of(engine: AsyncEngine, instance_id: str) -> str | None:
    async with engine.connect() as conn:
        query = select(instances.c.incarnation).where(instances.c.id == instance_id)
        return (await conn.execute(query)).scalar_one_or_none()


async def test_a_crashed_run_under_the_same_id_is_waited_out(engine: AsyncEngine) -> None:
    crashed = Store(engine, instance_id="x")
    # Its last heartbeat, then nothing: kill -9 leaves the row behind.
    await crashed.heartbeat(ttl=TIMINGS.instance_ttl, now=utcnow(), started_at=utcnow())
    restarted = Store(engine, instance_id="x")
    async with asyncio.timeout(WAIT):
        assert await Coordination(restarted, TIMINGS, ["r"]).join() == ("x",)
    assert await holder_of(engine, "x") == restarted.incarnation


async def test_a_live_process_under_the_same_id_is_refused(engine: AsyncEngine) -> None:
    live = Coordination(Store(engine, instance_id="x"), TIMINGS, ["r"])
    await live.join()

    async def keep_beating() -> None:
        while True:
            await live.heartbeat()
            await asyncio.sleep(TIMINGS.heartbeat)

    beating = asyncio.create_task(keep_beating())
    try:
        second = Store(engine, instance_id="x")
        async with asyncio.timeout(WAIT):
            with pytest.raises(InstanceIdInUse, match="in use by another running process"):
                await Coordination(second, TIMINGS, ["r"]).join()
        assert await holder_of(engine, "x") == live._store.incarnation
        assert not live.displaced.is_set()
    finally:
        beating.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beating


async def test_a_process_whose_id_was_taken_is_told_to_stop(engine: AsyncEngine) -> None:
    paused = Coordination(Store(engine, instance_id="x"), TIMINGS, ["r"])
    await paused.join()
    await elapse(engine, TIMINGS.instance_ttl + 1)  # silent past its TTL
    successor = Coordination(Store(engine, instance_id="x"), TIMINGS, ["r"])
    async with asyncio.timeout(WAIT):
        await successor.join()
    await paused.heartbeat()
    assert paused.displaced.is_set()
    assert isinstance(paused.displaced_by, InstanceIdInUse)
    # Its graceful stop hands back none of the successor's work, nor its row.
    await paused.leave()
    assert await holder_of(engine, "x") == successor._store.incarnation
