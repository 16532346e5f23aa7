"""Seen events: a page's new events and the outbox rows they owe, in one transaction."""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import bindparam, delete, exists, func, select

from poller.events import Event
from poller.store.base import DELIVERED, PENDING, StoreBase, translated
from poller.store.models import attempts, deliveries, events

__all__ = ["PageOutcome", "SeenEvents", "WebhookFilter"]

_ROOMS_PER_QUERY = 500


class WebhookFilter(Protocol):
    """What the store needs to know of a webhook to fan an event out to it."""

    @property
    def name(self) -> str: ...

    def matches(self, room_id: str, event_type: str) -> bool: ...


@dataclass(frozen=True, slots=True)
class PageOutcome:
    new: int  # events not seen before
    deliveries: int  # outbox rows created


class SeenEvents(StoreBase):
    """Which events were seen, and what each owes to which webhook."""

    # Why built once: executed with a list of rows (executemany), each is compiled once
    # and then taken from SQLAlchemy's cache, whatever the number of rows; a multi-row
    # VALUES compiled anew for every page was 40 % of a poll's CPU (BENCHMARKS.md).
    @functools.cached_property
    def _insert_events(self) -> Any:
        return (
            self._insert(events)
            .on_conflict_do_nothing(index_elements=["id"])
            .returning(events.c.id)
        )

    _room_ids = select(events.c.room_id, events.c.id).where(
        events.c.room_id.in_(bindparam("room_ids", expanding=True))
    )

    @translated
    async def record_page(
        self,
        room_id: str,
        page: Sequence[Event],
        webhooks: Iterable[WebhookFilter],
        *,
        deliver: bool,
        now: dt.datetime,
    ) -> PageOutcome:
        """Store one page's new events and their outbox rows in one transaction.

        The caller passes only events it does not know to be stored (see
        ``KnownIds``); any that are stored already are left as they are.
        """
        unique = {e.id: e for e in page}
        if not unique:
            return PageOutcome(0, 0)
        rows = [
            {
                "id": e.id,
                "room_id": room_id,
                "type": e.type,
                "timestamp": e.timestamp,
                "seen_at": now,
                "body": e.body,
            }
            for e in unique.values()
        ]
        targets = list(webhooks) if deliver else []
        async with self._engine.begin() as conn:
            # The unique key, not the page position, decides "new"; two
            # instances racing on one event still insert it once.
            new_ids = (await conn.execute(self._insert_events, rows)).scalars().all()
            outbox = [
                {
                    "event_id": event_id,
                    "webhook": w.name,
                    "state": PENDING,
                    "attempts": 0,
                }
                for event_id in new_ids
                for w in targets
                if w.matches(room_id, unique[event_id].type)
            ]
            if outbox:
                # Owed from the store's "now": by the caller's clock, an instance whose
                # clock is ahead would hold back every delivery it found.
                at = self._at(now)
                await conn.execute(
                    deliveries.insert().values(created_at=at, next_attempt_at=at), outbox
                )
        return PageOutcome(len(new_ids), len(outbox))

    @translated
    async def known_ids(self, room_ids: Sequence[str]) -> dict[str, set[str]]:
        """Every event id stored for each of these rooms."""
        known: dict[str, set[str]] = {room: set() for room in room_ids}
        async with self._engine.connect() as conn:
            # Chunks keep the statement within every driver's parameter limit.
            for start in range(0, len(room_ids), _ROOMS_PER_QUERY):
                chunk = list(room_ids[start : start + _ROOMS_PER_QUERY])
                result = await conn.execute(self._room_ids, {"room_ids": chunk})
                for room_id, event_id in result:
                    known[room_id].add(event_id)
        return known

    @translated
    async def event_counts(self) -> dict[str, int]:
        """How many events the store holds per room (seen within the retention)."""
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                select(events.c.room_id, func.count()).group_by(events.c.room_id)
            )
            return {room: int(n) for room, n in rows}

    @translated
    async def prune(self, *, seen_before: dt.datetime, batch: int = 1000) -> int:
        """Forget events seen before ``seen_before`` whose deliveries are all done."""
        owed = exists().where(deliveries.c.event_id == events.c.id, deliveries.c.state != DELIVERED)
        total = 0
        while True:
            victims = select(events.c.id).where(events.c.seen_at < seen_before, ~owed).limit(batch)
            async with self._engine.begin() as conn:
                # Deleting the outbox rows explicitly keeps this correct even
                # where foreign keys are not enforced.
                ids = (await conn.execute(victims)).scalars().all()
                if not ids:
                    return total
                owed_by = select(deliveries.c.id).where(deliveries.c.event_id.in_(ids))
                await conn.execute(delete(attempts).where(attempts.c.delivery_id.in_(owed_by)))
                await conn.execute(delete(deliveries).where(deliveries.c.event_id.in_(ids)))
                await conn.execute(delete(events).where(events.c.id.in_(ids)))
            total += len(ids)
