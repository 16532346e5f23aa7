"""Rooms found by discovery (``GET /rooms``): when each was listed, left, and retired;
and each room's polling pace (session-aware polling), for ``poller status``.

Every instance walks the listing and records it here; the records agree because each
change is decided from the stored rows in one transaction (a room two instances both
find new is inserted once).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection
from dataclasses import dataclass, field

from sqlalchemy import and_, bindparam, select, update

from poller.store.base import StoreBase, translated
from poller.store.models import rooms

__all__ = ["DiscoveredRooms", "Listing", "Pace"]


@dataclass(frozen=True, slots=True)
class Listing:
    """What one complete walk of ``GET /rooms`` changed, and what is to be polled now."""

    polled: tuple[str, ...]  # discovered, not retired: polled (those that left, for ``keep``)
    added: tuple[str, ...] = ()  # listed for the first time
    left: tuple[str, ...] = ()  # no longer listed (still polled for ``keep``)
    returned: tuple[str, ...] = ()  # listed again after leaving (or after retirement)
    retired: tuple[str, ...] = ()  # left ``keep`` ago: no longer polled
    first: bool = field(default=False)  # the first listing this store records


@dataclass(frozen=True, slots=True)
class Pace:
    """A room's polling pace, for ``poller status`` (session-aware polling)."""

    room_id: str
    interval: float | None
    reason: str
    active_until: dt.datetime | None = None


class DiscoveredRooms(StoreBase):
    """Record the app's listing of rooms, and which discovered rooms are polled."""

    @translated
    async def discovered_rooms(self) -> list[str]:
        """Rooms discovery found and has not retired, in the order they were found."""
        async with self._engine.connect() as conn:
            result = await conn.execute(
                select(rooms.c.id)
                .where(rooms.c.discovered_at.is_not(None), rooms.c.retired_at.is_(None))
                .order_by(rooms.c.discovered_at, rooms.c.id)
            )
            return list(result.scalars())

    @translated
    async def record_listing(
        self, listed: Collection[str], *, keep: float, now: dt.datetime
    ) -> Listing:
        """Record one complete walk of the listing: new rooms, rooms that left it (kept
        ``keep`` seconds), rooms that came back, rooms retired. A room first listed after
        the store's first listing was created while poller watched the app: everything
        in it is new, so its events are delivered whatever ``poll.backfill`` says."""
        wanted = set(listed)
        async with self._engine.begin() as conn:
            rows = {
                row.id: row
                for row in await conn.execute(
                    select(rooms.c.id, rooms.c.discovered_at, rooms.c.left_at, rooms.c.retired_at)
                )
            }
            first = not any(row.discovered_at is not None for row in rows.values())
            added = [r for r in listed if r not in rows or rows[r].discovered_at is None]
            new = [r for r in added if r not in rows]
            if new:
                await conn.execute(
                    self._insert(rooms).on_conflict_do_nothing(index_elements=["id"]),
                    [{"id": r, "discovered_at": now, "backfill": not first} for r in new],
                )
            # Known to the store already (a room of the config, polled before): listed now.
            known = [r for r in added if r in rows]
            if known:
                await conn.execute(
                    update(rooms)
                    .where(rooms.c.id.in_(known), rooms.c.discovered_at.is_(None))
                    .values(discovered_at=now)
                )
            returned = [
                r
                for r in wanted
                if r in rows and (rows[r].left_at is not None or rows[r].retired_at is not None)
            ]
            if returned:
                await conn.execute(
                    update(rooms)
                    .where(rooms.c.id.in_(returned))
                    .values(left_at=None, retired_at=None)
                )
            discovered = {
                r: row
                for r, row in rows.items()
                if row.discovered_at is not None and row.retired_at is None and r not in wanted
            }
            left = [r for r, row in discovered.items() if row.left_at is None]
            if left:
                await conn.execute(
                    update(rooms)
                    .where(rooms.c.id.in_(left), rooms.c.left_at.is_(None))
                    .values(left_at=now)
                )
            horizon = now - dt.timedelta(seconds=keep)
            retired = [
                r
                for r, row in discovered.items()
                if row.left_at is not None and row.left_at <= horizon
            ]
            if retired:
                await conn.execute(
                    update(rooms)
                    .where(and_(rooms.c.id.in_(retired), rooms.c.retired_at.is_(None)))
                    .values(retired_at=now)
                )
            polled = await conn.execute(
                select(rooms.c.id)
                .where(rooms.c.discovered_at.is_not(None), rooms.c.retired_at.is_(None))
                .order_by(rooms.c.discovered_at, rooms.c.id)
            )
            return Listing(
                polled=tuple(polled.scalars()),
                added=tuple(added),
                left=tuple(left),
                returned=tuple(sorted(returned)),
                retired=tuple(sorted(retired)),
                first=first,
            )

    @translated
    async def record_paces(self, paces: Collection[Pace]) -> None:
        """Keep each room's pace (rooms without a row yet get one)."""
        if not paces:
            return
        async with self._engine.begin() as conn:
            await conn.execute(
                self._insert(rooms).on_conflict_do_nothing(index_elements=["id"]),
                [{"id": p.room_id} for p in paces],
            )
            await conn.execute(
                update(rooms)
                .where(rooms.c.id == bindparam("room"))
                .values(
                    pace_interval=bindparam("interval"),
                    pace_reason=bindparam("reason"),
                    active_until=bindparam("until"),
                ),
                [
                    {
                        "room": p.room_id,
                        "interval": p.interval,
                        "reason": p.reason,
                        "until": p.active_until,
                    }
                    for p in paces
                ],
            )
