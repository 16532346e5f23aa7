"""Discovery: poll the rooms the app has, as ``GET /rooms`` lists them ([discovery]).

Each walk lists the app's rooms, keeps those the config's filters want, and records the
listing in the store (``poller.store.discovered``): new rooms are polled from then on, a
room that left the listing is polled ``keep`` longer (its last recordings may still
arrive), then retired. Only a complete walk counts: a walk that fails changes nothing, so
an API outage never retires a room. Pending deliveries never depend on a room being
polled: a retired room's still finish.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from collections.abc import AsyncIterator, Callable, Collection
from typing import Protocol

import structlog
from structlog.typing import FilteringBoundLogger

from poller.config import DiscoveryConfig
from poller.errors import StoreError
from poller.hms.client import ApiError
from poller.hms.listing import RoomInfo
from poller.rooms import Origin, PolledRooms
from poller.store.repo import Listing
from poller.timeutil import utcnow

__all__ = ["Discovery", "DiscoveryOutcome"]


class RoomsSource(Protocol):
    """What discovery needs of the API (``poller.hms.client.HmsClient`` is the real one)."""

    def rooms(self, *, enabled: bool) -> AsyncIterator[RoomInfo]: ...


class ListingStore(Protocol):
    """What discovery needs of the store (``poller.store.repo.Store`` is the real one)."""

    async def discovered_rooms(self) -> list[str]: ...

    async def record_listing(
        self, listed: Collection[str], *, keep: float, now: dt.datetime
    ) -> Listing: ...


@dataclasses.dataclass(frozen=True, slots=True)
class DiscoveryOutcome:
    """How the latest walk went, for logs, metrics and status."""

    ok: bool
    at: dt.datetime
    listed: int = 0
    error: str | None = None


class Discovery:
    """Walks the listing and keeps ``PolledRooms`` in step with it."""

    def __init__(
        self,
        client: RoomsSource,
        store: ListingStore,
        config: DiscoveryConfig,
        polled: PolledRooms,
        *,
        configured: Collection[str],
        on_walk: Callable[[DiscoveryOutcome], None] | None = None,
        logger: FilteringBoundLogger | None = None,
    ) -> None:
        self._client = client
        self._store = store
        self._config = config
        self._polled = polled
        self._configured = frozenset(configured)
        self._on_walk = on_walk or (lambda _outcome: None)
        self._log = logger or structlog.get_logger("poller.discovery")
        self.last: DiscoveryOutcome | None = None

    async def restore(self) -> int:
        """Poll at once what earlier walks found (a restart must not wait for a walk)."""
        rooms = [r for r in await self._store.discovered_rooms() if r not in self._configured]
        return len(self._polled.add_all(rooms, Origin.DISCOVERY))

    async def walk(self) -> DiscoveryOutcome:
        """One walk of the listing; never raises for the API or the store: the outcome says."""
        started = time.perf_counter()
        try:
            listed = await self._listed()
            listing = await self._store.record_listing(listed, keep=self._config.keep, now=utcnow())
        except (ApiError, StoreError) as exc:
            outcome = DiscoveryOutcome(False, utcnow(), error=str(exc))
            self._log.warning("discovery_failed", error=outcome.error)
        else:
            self._apply(listing)
            outcome = DiscoveryOutcome(True, utcnow(), listed=len(listed))
            changed = listing.added or listing.left or listing.returned or listing.retired
            (self._log.info if changed else self._log.debug)(
                "rooms_discovered",
                listed=len(listed),
                added=len(listing.added),
                left=len(listing.left),
                returned=len(listing.returned),
                retired=len(listing.retired),
                polled=len(self._polled.ids),
                first_listing=listing.first,
                duration_ms=round((time.perf_counter() - started) * 1000, 1),
            )
        self.last = outcome
        self._on_walk(outcome)
        return outcome

    async def _listed(self) -> list[str]:
        wanted = self._config.wants
        # GET /rooms lists enabled rooms only unless asked for disabled ones.
        flags = (True, False) if self._config.include_disabled else (True,)
        listed: dict[str, None] = {}  # in listing order, once each
        for enabled in flags:
            async for room in self._client.rooms(enabled=enabled):
                if wanted(room.name, room.template_id):
                    listed[room.id] = None
        return list(listed)

    def _apply(self, listing: Listing) -> None:
        """Schedule what is to be polled now and drop the rest (retired here, or by
        another instance's walk)."""
        desired = [r for r in listing.polled if r not in self._configured]
        current = self._polled.of(Origin.DISCOVERY)
        for room_id in current - set(desired):
            self._polled.remove(room_id)
        for room_id in desired:
            self._polled.add(room_id, Origin.DISCOVERY)
