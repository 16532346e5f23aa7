"""Several instances on one store: heartbeats, who is live, and what is handed over."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Collection

import structlog
from structlog.typing import FilteringBoundLogger

from poller.errors import InstanceIdInUse
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
        rooms: Collection[str],
        *,
        logger: FilteringBoundLogger | None = None,
    ) -> None:
        self._store = store
        self._timings = timings
        self._rooms = rooms  # a live view: discovery adds and retires rooms
        self.membership = Membership(store.instance_id)
        self.started_at: dt.datetime = utcnow()
        self._log = logger or structlog.get_logger("poller")
        # Set when another process took this instance's id while it ran (see heartbeat).
        self.displaced = asyncio.Event()
        self.displaced_by: InstanceIdInUse | None = None

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

    async def join(self) -> tuple[str, ...]:
        """Join the live instances under this id, or raise InstanceIdInUse.

        Another process holds the id while its heartbeat is younger than the TTL. A
        crashed earlier run of this instance (same id, say from a shared config or a
        restart by systemd) holds it too, until its heartbeat goes stale: so a holder
        is watched, and refused as alive only once its heartbeat is seen to move on.
        A restart after kill -9 therefore waits at most ``instance_ttl``; a graceful
        stop deregisters, and its restart joins at once. Returns the live instances.
        """
        ttl, period = self._timings.instance_ttl, self._timings.heartbeat
        loop = asyncio.get_running_loop()
        # Past this the holder would have gone stale unless it beats; bounds the wait.
        deadline = loop.time() + ttl + 2 * period
        first: InstanceIdInUse | None = None
        while True:
            try:
                await self._beat()
                return self.membership.live
            except InstanceIdInUse as taken:
                if first is None:
                    first = taken
                    self._log.warning(
                        "instance_id_held",
                        instance=self._store.instance_id,
                        heartbeat_age_s=round(taken.age, 3),
                        waiting_up_to_s=round(max(0.0, ttl - taken.age), 3),
                    )
                elif taken.heartbeat_at != first.heartbeat_at or loop.time() >= deadline:
                    raise taken from None  # it beats: another live process
                # Look again after at most half a heartbeat period, and right when the
                # holder's heartbeat goes stale.
                await asyncio.sleep(max(0.01, min(period / 2, ttl - taken.age + 0.01)))

    async def heartbeat(self) -> None:
        """Tell the store we live and learn who else does; rooms follow the live set.

        When another process took this id meanwhile (this one was silent past the
        TTL), ``displaced`` is set: the daemon stops, and hands back nothing.
        """
        try:
            await self._beat()
        except InstanceIdInUse as taken:
            self.displaced_by = taken
            self.displaced.set()
            self._log.error("instance_id_taken", instance=self._store.instance_id)

    async def _beat(self) -> None:
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
