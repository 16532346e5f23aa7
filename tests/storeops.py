"""One-room, one-delivery forms of the store's batch operations, for readable tests.

They call exactly what the daemon calls (``update_rooms``, ``record_attempts``):
tests pin the store's real API, these only spare them building lists.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from poller.store.models import deliveries, instances, rooms
from poller.store.repo import AttemptRecord, Claim, RoomLease, Store


async def acquire_room(
    store: Store,
    room_id: str,
    *,
    ttl: float,
    now: dt.datetime,
    preferred: bool = True,
    cooldown: float = 0.0,
) -> RoomLease | None:
    """Take or renew one room's lease, as a poll does before walking it."""
    leases = await store.update_rooms(
        acquire=[(room_id, preferred)], ttl=ttl, cooldown=cooldown, now=now
    )
    return leases[room_id]


async def finish_poll(store: Store, room_id: str, *, error: str | None, now: dt.datetime) -> None:
    """Record one poll's outcome."""
    await store.update_rooms(finish=[(room_id, error)], now=now)


async def mark_delivered(store: Store, claim: Claim, *, status: int, now: dt.datetime) -> bool:
    """Record one successful attempt."""
    (kept,) = await store.record_attempts([AttemptRecord(claim, now, status)])
    return kept


async def mark_failed(
    store: Store,
    claim: Claim,
    *,
    status: int | None,
    error: str,
    retry_at: dt.datetime | None,
    now: dt.datetime,
) -> bool:
    """Record one failed attempt: pending again at ``retry_at``, or dead when it is None."""
    (kept,) = await store.record_attempts([AttemptRecord(claim, now, status, error, retry_at)])
    return kept


def engine_of(store: Store) -> AsyncEngine:
    """The engine under a store: tests read the tables and start other instances on it."""
    return store._engine


def sibling(store: Store, instance_id: str) -> Store:
    """Another instance (another process) on the same database, timed by the same clock."""
    return Store(engine_of(store), instance_id=instance_id, clock=store.clock)


async def elapse(engine: AsyncEngine, seconds: float) -> None:
    """Let ``seconds`` pass in the store: every stored instant moves back by that much.

    Why not a clock passed ahead: on PostgreSQL the store times leases, claims and
    heartbeats by the database's clock, whatever the caller's says.
    """
    delta = dt.timedelta(seconds=seconds)
    columns = {
        rooms: ("lease_until", "last_polled_at", "discovered_at", "left_at", "retired_at"),
        deliveries: ("claimed_until", "next_attempt_at", "created_at"),
        instances: ("heartbeat_at", "started_at"),
    }
    async with engine.begin() as conn:
        for table, names in columns.items():
            rows = (await conn.execute(select(table.c.id, *(table.c[n] for n in names)))).all()
            for row in rows:
                values = {n: row._mapping[n] - delta for n in names if row._mapping[n]}
                if values:
                    await conn.execute(update(table).where(table.c.id == row.id).values(values))


REJECTED = "event rejected by a test trigger"


async def reject_events_containing(engine: AsyncEngine, marker: str) -> None:
    """Make the database refuse to insert an event whose body holds ``marker``.

    A failed statement the store cannot avoid, on each backend; on PostgreSQL the
    error's DETAIL quotes the refused body, as a constraint's DETAIL quotes a row.
    """
    assert marker.isalnum()  # spliced into the SQL below
    async with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            await conn.exec_driver_sql(
                "CREATE TRIGGER reject_marked BEFORE INSERT ON events "
                f"WHEN instr(NEW.body, '{marker}') > 0 "
                f"BEGIN SELECT RAISE(ABORT, '{REJECTED}'); END"
            )
            return
        await conn.exec_driver_sql(
            "CREATE FUNCTION reject_marked() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            f"IF position('{marker}' in NEW.body) > 0 THEN "
            f"RAISE EXCEPTION '{REJECTED}' USING DETAIL = NEW.body; END IF; "
            "RETURN NEW; END $$"
        )
        await conn.exec_driver_sql(
            "CREATE TRIGGER reject_marked BEFORE INSERT ON events "
            "FOR EACH ROW EXECUTE FUNCTION reject_marked()"
        )
