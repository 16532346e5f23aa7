"""One poll of one room: walk the API's pages, store what is new, wake delivery."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import structlog
from structlog.typing import FilteringBoundLogger

from poller.batch import GroupCommit
from poller.hms.client import ApiError, HmsClient
from poller.store.repo import RoomLease, Store, WebhookFilter
from poller.timeutil import utcnow


@dataclass(frozen=True, slots=True)
class PollResult:
    room_id: str
    outcome: str  # "ok", "error" or "leased" (the room is another instance's)
    pages: int = 0
    events: int = 0
    new: int = 0
    deliveries: int = 0
    skipped: int = 0
    duration: float = 0.0


BOOKKEEPING_WINDOW = 0.02  # seconds a lease or outcome write waits for company
_LOG_LEVEL = {"ok": "info", "error": "warning"}  # "leased" polls are only debug


@dataclass(frozen=True, slots=True)
class _RoomWrite:
    """A poll's lease request (``acquire_room``) or its outcome (``finish_poll``)."""

    room_id: str
    preferred: bool = True
    finished: bool = False
    error: str | None = None


class RoomPoller:
    """Polls rooms; what is new is decided by the store, never by page position."""

    def __init__(
        self,
        client: HmsClient,
        store: Store,
        webhooks: Sequence[WebhookFilter],
        *,
        event_types: Sequence[str],
        page_size: int,
        backfill: bool,
        lease_ttl: float,
        interval: float = 0.0,
        is_mine: Callable[[str], bool] = lambda _room_id: True,
        on_new_deliveries: Callable[[], None] = lambda: None,
        on_poll: Callable[[PollResult], None] = lambda _: None,
        logger: FilteringBoundLogger | None = None,
    ) -> None:
        self._client = client
        self._store = store
        self._webhooks = tuple(webhooks)
        self._event_types = tuple(event_types)
        self._page_size = page_size
        self._backfill = backfill
        self._lease_ttl = lease_ttl
        self._interval = interval
        self._is_mine = is_mine
        self._held: set[str] = set()  # rooms whose lease this instance took
        # Why: one transaction for the leases and outcomes of every poll in flight
        # rather than two per poll; see poller.batch. Polls are spread over the
        # interval, so each write waits a moment for others (a poll takes 20 ms
        # longer; writes per second drop several-fold, BENCHMARKS.md).
        self._bookkeeping = GroupCommit(
            self._write_rooms, window=min(BOOKKEEPING_WINDOW, interval / 20)
        )
        self._on_new_deliveries = on_new_deliveries
        self._on_poll = on_poll
        self._log = logger or structlog.get_logger("poller.poll")

    async def poll(self, room_id: str) -> PollResult:
        """Poll one room once; API failures are logged and recorded, not raised."""
        started = time.perf_counter()
        mine = self._is_mine(room_id)
        if not mine and room_id not in self._held:
            # Another instance's room that we do not hold: nothing to write.
            return self._done(PollResult(room_id, "leased"), started)
        lease = await self._bookkeeping.submit(_RoomWrite(room_id, preferred=mine))
        if lease is None:
            self._held.discard(room_id)
            return self._done(PollResult(room_id, "leased"), started)
        self._held.add(room_id)
        # Until the room's first complete poll, what the API holds was there
        # before us: delivered only with backfill.
        deliver = self._backfill or lease.first_polled_at is not None
        pages = events = new = deliveries = skipped = 0
        error: str | None = None
        try:
            async for page in self._client.pages(
                room_id, self._event_types, page_size=self._page_size
            ):
                outcome = await self._store.record_page(
                    room_id, page.events, self._webhooks, deliver=deliver, now=utcnow()
                )
                pages += 1
                events += len(page.events)
                skipped += page.skipped
                new += outcome.new
                deliveries += outcome.deliveries
                if outcome.deliveries:
                    self._on_new_deliveries()
        except ApiError as exc:
            error = str(exc)
        await self._bookkeeping.submit(_RoomWrite(room_id, finished=True, error=error))
        result = PollResult(
            room_id,
            "error" if error else "ok",
            pages,
            events,
            new,
            deliveries,
            skipped,
        )
        return self._done(result, started, error=error, backfill=not deliver)

    async def drain(self) -> None:
        """Wait for the store writes of polls that were cancelled (shutdown)."""
        await self._bookkeeping.drain()

    async def _write_rooms(self, writes: list[_RoomWrite]) -> list[RoomLease | None]:
        """Exactly ``finish_poll`` or ``acquire_room`` per write, in one transaction."""
        leases = await self._store.update_rooms(
            finish=[(w.room_id, w.error) for w in writes if w.finished],
            acquire=[(w.room_id, w.preferred) for w in writes if not w.finished],
            ttl=self._lease_ttl,
            cooldown=self._interval,
            now=utcnow(),
        )
        return [None if w.finished else leases[w.room_id] for w in writes]

    def _done(self, result: PollResult, started: float, **extra: object) -> PollResult:
        result = dataclasses.replace(result, duration=time.perf_counter() - started)
        self._on_poll(result)
        # Why: each attribute of a lazy structlog logger builds a bound logger, so
        # pick the level by name and fetch only that method.
        log = getattr(self._log, _LOG_LEVEL.get(result.outcome, "debug"))
        log(
            "poll",
            room_id=result.room_id,
            outcome=result.outcome,
            pages=result.pages,
            events=result.events,
            new=result.new,
            deliveries=result.deliveries,
            skipped=result.skipped,
            duration_ms=round(result.duration * 1000, 1),
            **{k: v for k, v in extra.items() if v},
        )
        return result
