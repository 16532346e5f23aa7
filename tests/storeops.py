"""One-room, one-delivery forms of the store's batch operations, for readable tests.

They call exactly what the daemon calls (``update_rooms``, ``record_attempts``):
tests pin the store's real API, these only spare them building lists.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy.ext.asyncio import AsyncEngine

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
    """Another instance on the same database."""
    return Store(engine_of(store), instance_id=instance_id)
