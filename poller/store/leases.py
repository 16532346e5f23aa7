"""Rooms and instances: leases, poll outcomes, heartbeats, and taking over a dead run."""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Update, case, delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from poller.errors import InstanceIdInUse
from poller.store.base import PENDING, StoreBase, aware, translated
from poller.store.models import deliveries, instances, rooms

__all__ = ["Leases", "RoomLease"]


@dataclass(frozen=True, slots=True)
class RoomLease:
    room_id: str
    first_polled_at: dt.datetime | None  # None: the room is in its first-poll phase
    failed_walks: int = 0  # walks that failed in a row before this one
    backfill: bool = False  # everything in it is new (discovered after discovery began)


class Leases(StoreBase):
    """Who polls which room, how its polls went, and which instances live."""

    @translated
    async def update_rooms(
        self,
        *,
        finish: Sequence[tuple[str, str | None]] = (),
        acquire: Sequence[tuple[str, bool]] = (),
        ttl: float = 0.0,
        cooldown: float = 0.0,
        baseline: Collection[str] = (),
        now: dt.datetime,
    ) -> dict[str, RoomLease | None]:
        """``finish_poll`` for each (room, error), then ``acquire_room`` for each
        (room, preferred), all in one transaction; returns the lease (or None) per room
        of ``acquire``. A failed walk of a room in ``baseline`` still ends its
        first-poll phase (a complete walk always does).

        Why: the bookkeeping of a poll is two small writes. Done for many rooms at
        once (see poller.batch) it is one transaction for dozens of polls instead of
        two per poll, the cost that bounded polling (BENCHMARKS.md); each room gets
        exactly the conditional update it would get alone.
        """
        # The last word per room wins, as it would one call after another.
        at = self._at(now)
        finished = dict(finish)
        wanted = dict(acquire)
        leases: dict[str, RoomLease | None] = {}
        async with self._engine.begin() as conn:
            ok = sorted(room for room, error in finished.items() if error is None)
            if ok:
                await conn.execute(
                    update(rooms)
                    .where(rooms.c.id.in_(ok))
                    .values(
                        last_error=None,
                        last_success_at=at,
                        failed_walks=0,
                        first_polled_at=func.coalesce(rooms.c.first_polled_at, at),
                    )
                )
            failed: dict[tuple[str, bool], list[str]] = {}
            for room, error in finished.items():
                if error is not None:
                    failed.setdefault((error, room in baseline), []).append(room)
            for (error, ends_baseline), ids in failed.items():
                values: dict[str, Any] = {
                    "last_error": error,
                    "failed_walks": rooms.c.failed_walks + 1,
                }
                if ends_baseline:
                    values["first_polled_at"] = func.coalesce(rooms.c.first_polled_at, at)
                await conn.execute(update(rooms).where(rooms.c.id.in_(sorted(ids))).values(values))
            handed_back = sorted(room for room, preferred in wanted.items() if not preferred)
            if handed_back:
                await conn.execute(self._release(now, cooldown).where(rooms.c.id.in_(handed_back)))
            take = sorted(room for room, preferred in wanted.items() if preferred)
            granted = await self._take_rooms(conn, take, ttl, now) if take else {}
            # Rooms polled for the first time have no row yet (inserting only then
            # spares the common case a statement).
            missing = [room for room in take if room not in granted]
            if missing:
                # executemany: one compiled statement whatever the number of rooms.
                await conn.execute(
                    self._insert(rooms).on_conflict_do_nothing(index_elements=["id"]),
                    [{"id": room} for room in missing],
                )
                granted |= await self._take_rooms(conn, missing, ttl, now)
        for room in wanted:
            leases[room] = granted.get(room)
        return leases

    async def _take_rooms(
        self, conn: AsyncConnection, ids: list[str], ttl: float, now: dt.datetime
    ) -> dict[str, RoomLease | None]:
        result = await conn.execute(
            update(rooms)
            .where(
                rooms.c.id.in_(ids),
                or_(
                    rooms.c.lease_owner == self.instance_id,
                    rooms.c.lease_until.is_(None),
                    rooms.c.lease_until < self._at(now),
                ),
                self._holds_id(),
            )
            .values(
                lease_owner=self.instance_id,
                lease_until=self._after(now, ttl),
                last_polled_at=self._at(now),
            )
            .returning(rooms.c.id, rooms.c.first_polled_at, rooms.c.failed_walks, rooms.c.backfill)
        )
        return {
            row.id: RoomLease(row.id, row.first_polled_at, row.failed_walks, bool(row.backfill))
            for row in result
        }

    def _release(self, now: dt.datetime, cooldown: float) -> Update:
        return (
            update(rooms)
            .where(rooms.c.lease_owner == self.instance_id, self._holds_id())
            .values(lease_owner=None, lease_until=self._after(now, cooldown))
        )

    @translated
    async def heartbeat(
        self, *, ttl: float, now: dt.datetime, started_at: dt.datetime
    ) -> list[str]:
        """Say this instance is alive; return every live instance's id, sorted.

        Raises InstanceIdInUse, writing nothing, while another process (another
        ``incarnation``) holds this id with a heartbeat younger than ``ttl``: two
        processes under one id would take each other's rooms and claims for their own.
        A crashed earlier run of this one holds it until its heartbeat goes stale.
        """
        async with self._engine.begin() as conn:
            stmt = self._insert(instances).values(
                id=self.instance_id,
                incarnation=self.incarnation,
                started_at=self._at(started_at),
                heartbeat_at=self._at(now),
            )
            ours = instances.c.incarnation == stmt.excluded.incarnation
            # One statement, so that two processes starting at once cannot both win.
            upsert = stmt.on_conflict_do_update(
                index_elements=["id"],
                set_={
                    "heartbeat_at": stmt.excluded.heartbeat_at,
                    "incarnation": stmt.excluded.incarnation,
                    "started_at": case(
                        (ours, instances.c.started_at), else_=stmt.excluded.started_at
                    ),
                },
                where=or_(ours, instances.c.heartbeat_at < self._after(now, -ttl)),
            ).returning(instances.c.id)
            holder = select(instances.c.heartbeat_at, self._at(now)).where(
                instances.c.id == self.instance_id
            )
            # Twice at most: the holder may leave between the two statements.
            for _ in range(2):
                if (await conn.execute(upsert)).first() is not None:
                    break
                held = (await conn.execute(holder)).first()
                if held is None:
                    continue
                beat, store_now = aware(held[0]), aware(held[1])
                assert beat is not None
                assert store_now is not None
                raise InstanceIdInUse(
                    self.instance_id, heartbeat_at=beat, age=(store_now - beat).total_seconds()
                )
            # Instances silent for long are gone for good (a pid never comes back).
            await conn.execute(
                delete(instances).where(instances.c.heartbeat_at < self._after(now, -10 * ttl))
            )
            live = await conn.execute(
                select(instances.c.id)
                .where(instances.c.heartbeat_at >= self._after(now, -ttl))
                .order_by(instances.c.id)
            )
            return list(live.scalars())

    @translated
    async def deregister(self) -> None:
        """Leave the set of live instances (a graceful stop), so others rebalance at once."""
        async with self._engine.begin() as conn:
            await conn.execute(
                delete(instances).where(
                    instances.c.id == self.instance_id,
                    # Another process's row under this id is not ours to delete.
                    instances.c.incarnation == self.incarnation,
                )
            )

    @translated
    async def instance_states(self) -> list[dict[str, Any]]:
        """Every known instance with its last heartbeat, for `poller status`."""
        async with self._engine.connect() as conn:
            rows = await conn.execute(select(instances).order_by(instances.c.id))
            return [dict(row._mapping) for row in rows]

    @translated
    async def release_rooms(self, *, now: dt.datetime, cooldown: float = 0.0) -> None:
        """Give up this instance's room leases; others may take them after ``cooldown``."""
        async with self._engine.begin() as conn:
            await conn.execute(self._release(now, cooldown))

    @translated
    async def take_over(self) -> tuple[int, int]:
        """Claim back everything another run left: for a lone instance (SQLite) starting.

        A run killed with -9 leaves claimed deliveries, room leases and an
        instance row behind; waiting for them to expire would only delay this
        run. Only safe while the run lock proves no other daemon lives on the
        store (poller.store.runlock). Returns (claims, leases) released.
        """
        async with self._engine.begin() as conn:
            claims = await conn.execute(
                update(deliveries)
                .where(deliveries.c.claimed_by.is_not(None), deliveries.c.state == PENDING)
                .values(claimed_by=None, claimed_until=None)
            )
            leases = await conn.execute(
                update(rooms)
                .where(rooms.c.lease_owner.is_not(None))
                .values(lease_owner=None, lease_until=None)
            )
            # Our own id's row too: it is a dead run's (a restart under the same id).
            await conn.execute(delete(instances))
        return int(claims.rowcount), int(leases.rowcount)

    @translated
    async def failing_rooms(self, *, after: int) -> int:
        """How many rooms have failed ``after`` or more walks in a row."""
        async with self._engine.connect() as conn:
            value = await conn.scalar(
                select(func.count()).select_from(rooms).where(rooms.c.failed_walks >= after)
            )
        return int(value or 0)

    @translated
    async def room_states(self) -> list[dict[str, Any]]:
        """Every room's poll state, for `poller status`."""
        async with self._engine.connect() as conn:
            rows = await conn.execute(select(rooms).order_by(rooms.c.id))
            return [dict(row._mapping) for row in rows]
