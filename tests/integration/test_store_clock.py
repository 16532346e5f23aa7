"""Whose clock decides: on PostgreSQL the database's, so an instance whose own clock is
off takes no live lease or claim and makes no live instance look dead; one id, one
live process.

Instances are Stores on one real database, each with its own (injected) clock: the
``now`` it passes. Time passing in the store is ``elapse``: every stored instant moves
back, which is what the store's clock moving on looks like to every rule.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from poller.errors import InstanceIdInUse
from poller.events import Event
from poller.store.base import StoreClock
from poller.store.db import create_engine, migrate
from poller.store.models import deliveries, instances, rooms
from poller.store.repo import AttemptRecord, Store
from poller.timeutil import utcnow
from tests.storeops import acquire_room, elapse, engine_of, mark_failed, sibling

ROOM = "639924066893d18d47c86935"
LEASE_TTL = 60.0
CLAIM_TTL = 25.0
INSTANCE_TTL = 10.0
# Ahead of the others: past a claim's TTL, then past a lease's (the findings).
SKEWS = [30.0, 100.0]


class Hook:
    name = "h"

    def matches(self, room_id: str, event_type: str) -> bool:
        return True


def event(n: int) -> Event:
    event_id = f"00000000-0000-4000-8000-{n:012d}"
    body = f'{{"id":"{event_id}","type":"beam.recording.success"}}'
    return Event(id=event_id, type="beam.recording.success", timestamp="t", room_id=ROOM, body=body)


def clock(skew: float = 0.0) -> dt.datetime:
    """An instance's clock, ``skew`` seconds off the true time."""
    return utcnow() + dt.timedelta(seconds=skew)


@pytest.fixture
async def pg_engine(pg_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(pg_url)
    await migrate(engine)
    yield engine
    await engine.dispose()


async def db_now(engine: AsyncEngine) -> dt.datetime:
    async with engine.connect() as conn:
        value = (await conn.execute(text("SELECT now()"))).scalar_one()
    assert isinstance(value, dt.datetime)
    return value


async def room_row(engine: AsyncEngine) -> dict[str, Any]:
    async with engine.connect() as conn:
        return dict((await conn.execute(select(rooms).where(rooms.c.id == ROOM))).one()._mapping)


async def delivery_rows(engine: AsyncEngine) -> list[dict[str, Any]]:
    async with engine.connect() as conn:
        result = await conn.execute(select(deliveries).order_by(deliveries.c.id))
        return [dict(r._mapping) for r in result]


def near(value: dt.datetime, lo: dt.datetime, hi: dt.datetime, plus: float) -> bool:
    """``value`` is ``plus`` seconds after some instant between ``lo`` and ``hi``."""
    offset = dt.timedelta(seconds=plus)
    return lo + offset <= value <= hi + offset


# --- PostgreSQL: the database's clock ------------------------------------------------

pg = pytest.mark.postgres


@pg
async def test_the_database_clock_is_the_default_on_postgresql(pg_engine: AsyncEngine) -> None:
    assert Store(pg_engine, instance_id="a").clock is StoreClock.DATABASE


@pg
@pytest.mark.parametrize("skew", SKEWS)
async def test_an_instance_ahead_takes_no_live_lease(pg_engine: AsyncEngine, skew: float) -> None:
    a = Store(pg_engine, instance_id="a")
    ahead = sibling(a, "ahead")
    before = await db_now(pg_engine)
    assert await acquire_room(a, ROOM, ttl=LEASE_TTL, now=clock()) is not None
    after = await db_now(pg_engine)

    assert await acquire_room(ahead, ROOM, ttl=LEASE_TTL, now=clock(skew)) is None
    row = await room_row(pg_engine)
    assert row["lease_owner"] == "a"
    assert near(row["lease_until"], before, after, LEASE_TTL)
    # Once the lease really expired, the instance ahead takes it, timed by the store.
    await elapse(pg_engine, LEASE_TTL + 1)
    before = await db_now(pg_engine)
    assert await acquire_room(ahead, ROOM, ttl=LEASE_TTL, now=clock(skew)) is not None
    after = await db_now(pg_engine)
    row = await room_row(pg_engine)
    assert row["lease_owner"] == "ahead"
    assert near(row["lease_until"], before, after, LEASE_TTL)
    assert await acquire_room(a, ROOM, ttl=LEASE_TTL, now=clock()) is None


@pg
async def test_an_instance_behind_writes_no_lease_that_is_already_over(
    pg_engine: AsyncEngine,
) -> None:
    behind = Store(pg_engine, instance_id="behind")
    before = await db_now(pg_engine)
    assert await acquire_room(behind, ROOM, ttl=LEASE_TTL, now=clock(-3600)) is not None
    after = await db_now(pg_engine)
    assert near((await room_row(pg_engine))["lease_until"], before, after, LEASE_TTL)
    assert await acquire_room(sibling(behind, "b"), ROOM, ttl=LEASE_TTL, now=clock()) is None


@pg
async def test_a_cooldown_is_timed_by_the_store(pg_engine: AsyncEngine) -> None:
    a = Store(pg_engine, instance_id="a")
    ahead = sibling(a, "ahead")
    await acquire_room(a, ROOM, ttl=LEASE_TTL, now=clock())
    await a.release_rooms(now=clock(-3600), cooldown=20)
    assert await acquire_room(ahead, ROOM, ttl=LEASE_TTL, now=clock(100)) is None
    await elapse(pg_engine, 21)
    assert await acquire_room(ahead, ROOM, ttl=LEASE_TTL, now=clock(100)) is not None


@pg
@pytest.mark.parametrize("skew", SKEWS)
async def test_an_instance_ahead_takes_no_live_claim(pg_engine: AsyncEngine, skew: float) -> None:
    a = Store(pg_engine, instance_id="a")
    ahead = sibling(a, "ahead")
    await a.record_page(ROOM, [event(i) for i in range(3)], [Hook()], deliver=True, now=clock())
    before = await db_now(pg_engine)
    assert len(await a.claim("h", 10, ttl=CLAIM_TTL, now=clock())) == 3
    after = await db_now(pg_engine)

    assert await ahead.claim("h", 10, ttl=CLAIM_TTL, now=clock(skew)) == []
    assert await ahead.next_due(["h"], now=clock(skew)) is None  # nothing it may take
    rows = await delivery_rows(pg_engine)
    assert {r["claimed_by"] for r in rows} == {"a"}
    assert all(near(r["claimed_until"], before, after, CLAIM_TTL) for r in rows)
    await elapse(pg_engine, CLAIM_TTL + 1)
    assert len(await ahead.claim("h", 10, ttl=CLAIM_TTL, now=clock(skew))) == 3
    assert {r["claimed_by"] for r in await delivery_rows(pg_engine)} == {"ahead"}


@pg
@pytest.mark.parametrize("skew", [-100.0, 100.0])
async def test_new_deliveries_are_due_by_the_store_clock_whoever_wrote_them(
    pg_engine: AsyncEngine, skew: float
) -> None:
    skewed = Store(pg_engine, instance_id="skewed")
    before = await db_now(pg_engine)
    await skewed.record_page(ROOM, [event(1)], [Hook()], deliver=True, now=clock(skew))
    after = await db_now(pg_engine)
    (row,) = await delivery_rows(pg_engine)
    assert near(row["next_attempt_at"], before, after, 0)
    assert near(row["created_at"], before, after, 0)
    # Written by a clock 100 s ahead, still claimable at once by a correct one.
    assert len(await sibling(skewed, "b").claim("h", 10, ttl=CLAIM_TTL, now=clock())) == 1


@pg
@pytest.mark.parametrize("skew", [-100.0, 100.0])
async def test_a_retry_keeps_its_delay_and_next_due_speaks_the_callers_clock(
    pg_engine: AsyncEngine, skew: float
) -> None:
    skewed = Store(pg_engine, instance_id="skewed")
    await skewed.record_page(ROOM, [event(1)], [Hook()], deliver=True, now=clock())
    (claim,) = await skewed.claim("h", 1, ttl=CLAIM_TTL, now=clock(skew))
    ended = clock(skew)
    before = await db_now(pg_engine)
    retry_at = ended + dt.timedelta(seconds=50)
    assert await mark_failed(
        skewed, claim, status=500, error="HTTP 500", retry_at=retry_at, now=ended
    )
    after = await db_now(pg_engine)
    (row,) = await delivery_rows(pg_engine)
    assert near(row["next_attempt_at"], before, after, 50)
    assert near(row["last_attempt_at"], before, after, 0)
    # Not due for anyone yet, whatever their clock says.
    assert await skewed.claim("h", 1, ttl=CLAIM_TTL, now=clock(skew)) == []
    assert await sibling(skewed, "b").claim("h", 1, ttl=CLAIM_TTL, now=clock(-skew)) == []
    # Due in about 50 s by the caller's own clock: a worker ahead waits, it does not spin.
    asked = clock(skew)
    due = await skewed.next_due(["h"], now=asked)
    assert due is not None
    assert dt.timedelta(seconds=49) < due - asked <= dt.timedelta(seconds=50)
    await elapse(pg_engine, 51)
    assert len(await skewed.claim("h", 1, ttl=CLAIM_TTL, now=clock(skew))) == 1


@pg
async def test_delivered_at_comes_from_the_store_clock(pg_engine: AsyncEngine) -> None:
    skewed = Store(pg_engine, instance_id="skewed")
    await skewed.record_page(ROOM, [event(1), event(2)], [Hook()], deliver=True, now=clock())
    first, second = await skewed.claim("h", 2, ttl=CLAIM_TTL, now=clock(100))
    before = await db_now(pg_engine)
    ended = clock(100)
    kept = await skewed.record_attempts(
        [AttemptRecord(first, ended, 204), AttemptRecord(second, ended, 410, "HTTP 410")]
    )
    after = await db_now(pg_engine)
    assert kept == [True, True]
    delivered, dead = await delivery_rows(pg_engine)
    assert (delivered["state"], dead["state"]) == ("delivered", "dead")
    assert near(delivered["delivered_at"], before, after, 0)
    assert dead["delivered_at"] is None
    assert all(near(r["last_attempt_at"], before, after, 0) for r in (delivered, dead))


@pg
@pytest.mark.parametrize("skew", [-100.0, 100.0])
async def test_a_skewed_instance_makes_no_live_instance_look_dead(
    pg_engine: AsyncEngine, skew: float
) -> None:
    a = Store(pg_engine, instance_id="a")
    skewed = sibling(a, "skewed")
    assert await a.heartbeat(ttl=INSTANCE_TTL, now=clock(), started_at=clock()) == ["a"]
    live = await skewed.heartbeat(ttl=INSTANCE_TTL, now=clock(skew), started_at=clock(skew))
    assert live == ["a", "skewed"]
    assert await a.heartbeat(ttl=INSTANCE_TTL, now=clock(), started_at=clock()) == ["a", "skewed"]
    # Only real silence, by the store's clock, ends an instance's life.
    await elapse(pg_engine, INSTANCE_TTL + 1)
    assert await a.heartbeat(ttl=INSTANCE_TTL, now=clock(), started_at=clock()) == ["a"]


# --- one id, one live process (both backends) ----------------------------------------


@pytest.fixture
async def real_time_store(engine: AsyncEngine) -> Store:
    """A store each backend times by its default clock; callers pass the true time."""
    return Store(engine, instance_id="x")


async def instance_row(store: Store) -> dict[str, Any]:
    async with engine_of(store).connect() as conn:
        rows = await conn.execute(select(instances).where(instances.c.id == store.instance_id))
        return dict(rows.one()._mapping)


async def test_a_second_process_under_a_live_id_is_refused_and_touches_nothing(
    real_time_store: Store, engine: AsyncEngine
) -> None:
    first = real_time_store
    second = Store(engine, instance_id=first.instance_id)
    assert await first.heartbeat(ttl=INSTANCE_TTL, now=clock(), started_at=clock()) == ["x"]
    await first.record_page(ROOM, [event(1)], [Hook()], deliver=True, now=clock())
    assert len(await first.claim("h", 1, ttl=CLAIM_TTL, now=clock())) == 1
    assert await acquire_room(first, ROOM, ttl=LEASE_TTL, now=clock()) is not None
    row = await instance_row(first)

    with pytest.raises(InstanceIdInUse, match="'x' is in use by another running process") as info:
        await second.heartbeat(ttl=INSTANCE_TTL, now=clock(), started_at=clock())
    assert 0 <= info.value.age < INSTANCE_TTL
    assert await instance_row(first) == row  # the holder's row is left as it was
    # What the second one might do on its way out hands back none of the first's work.
    assert await second.release_claims() == 0
    await second.release_rooms(now=clock())
    await second.deregister()
    assert await instance_row(first) == row
    assert [r["claimed_by"] for r in await delivery_rows(engine)] == ["x"]
    assert (await room_row(engine))["lease_owner"] == "x"
    # Nor does it take work under the shared id.
    await first.record_page(ROOM, [event(2)], [Hook()], deliver=True, now=clock())
    assert await second.claim("h", 10, ttl=CLAIM_TTL, now=clock()) == []
    assert await first.heartbeat(ttl=INSTANCE_TTL, now=clock(), started_at=clock()) == ["x"]


async def test_a_stale_holder_is_taken_over_and_learns_it(
    real_time_store: Store, engine: AsyncEngine
) -> None:
    crashed = real_time_store
    await crashed.heartbeat(ttl=INSTANCE_TTL, now=clock(), started_at=clock())
    await crashed.record_page(ROOM, [event(1)], [Hook()], deliver=True, now=clock())
    restarted = Store(engine, instance_id=crashed.instance_id)
    await elapse(engine, INSTANCE_TTL + 1)

    assert await restarted.heartbeat(ttl=INSTANCE_TTL, now=clock(), started_at=clock()) == ["x"]
    assert (await instance_row(restarted))["incarnation"] == restarted.incarnation
    assert len(await restarted.claim("h", 1, ttl=CLAIM_TTL, now=clock())) == 1
    # The earlier process, were it only paused, finds its id taken at its next beat.
    with pytest.raises(InstanceIdInUse):
        await crashed.heartbeat(ttl=INSTANCE_TTL, now=clock(), started_at=clock())
    assert await crashed.release_claims() == 0
    assert [r["claimed_by"] for r in await delivery_rows(engine)] == ["x"]


async def test_a_graceful_stop_frees_the_id_at_once(
    real_time_store: Store, engine: AsyncEngine
) -> None:
    await real_time_store.heartbeat(ttl=INSTANCE_TTL, now=clock(), started_at=clock())
    await real_time_store.deregister()
    again = Store(engine, instance_id=real_time_store.instance_id)
    assert await again.heartbeat(ttl=INSTANCE_TTL, now=clock(), started_at=clock()) == ["x"]


@pg
async def test_two_processes_starting_at_once_under_one_id_have_one_winner(pg_url: str) -> None:
    engines = [create_engine(pg_url) for _ in range(4)]
    try:
        await migrate(engines[0])
        stores = [Store(e, instance_id="x") for e in engines]
        results = await asyncio.gather(
            *(s.heartbeat(ttl=INSTANCE_TTL, now=clock(), started_at=clock()) for s in stores),
            return_exceptions=True,
        )
        winners = [s for s, r in zip(stores, results, strict=True) if r == ["x"]]
        assert len(winners) == 1, results
        assert sum(isinstance(r, InstanceIdInUse) for r in results) == 3
        assert (await instance_row(winners[0]))["incarnation"] == winners[0].incarnation
    finally:
        for e in engines:
            await e.dispose()
