"""Several instances on one store: heartbeats, who is live, and what is handed over."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import structlog
from structlog.typing import FilteringBoundLogger

from poller.membership import Membership
from poller.store.repo import Store
from poller.timeutil import utcnow
from poller.timings import Timings

__all__ = ["Coordination"]


class Coordination:
    """This instance's place among the live instances, kept up to date through the store."""

    def __init__(
        self,
        store: Store,
        timings: Timings,
        rooms: Sequence[str],
        *,
        logger: FilteringBoundLogger | None = None,
    ) -> None:
        self._store = store
        self._timings = timings
        self._rooms = tuple(rooms)
        self.membership = Membership(store.instance_id)
        self.started_at: dt.datetime = utcnow()
        self._log = logger or structlog.get_logger("poller")

    def is_mine(self, room_id: str) -> bool:
        """Whether this instance should poll the room (rendezvous hashing over the live set)."""
        return self.membership.is_mine(room_id)

    async def take_over(self) -> None:
        """On SQLite (one instance per file), claim back what a killed run left at once."""
        if not self._store.single_instance:
            return
        claims, leases = await self._store.take_over()
        if claims or leases:
            self._log.info("took_over", claims=claims, leases=leases)

    async def heartbeat(self) -> None:
        """Tell the store we live and learn who else does; rooms follow the live set."""
        live = await self._store.heartbeat(
            ttl=self._timings.instance_ttl, now=utcnow(), started_at=self.started_at
        )
        if self.membership.update(live):
            mine = sum(self.membership.is_mine(room) for room in self._rooms)
            self._log.info("instances_changed", instances=list(self.membership.live), rooms=mine)

    async def leave(self) -> None:
        """A graceful stop: hand the rooms back (after a cooldown) and leave the live set."""
        await self._store.release_rooms(now=utcnow(), cooldown=self._timings.cooldown)
        await self._store.deregister()
