"""One poll of one room: walk the API's pages, store what is new, wake delivery."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import datetime as dt
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import structlog
from structlog.typing import FilteringBoundLogger

from poller.batch import GroupCommit
from poller.errors import StoreError, one_line
from poller.events import Event
from poller.hms.client import ApiError, HmsClient
from poller.hms.page import Skipped
from poller.states import PollOutcome
from poller.store.known import KnownIds
from poller.store.repo import PageOutcome, RoomLease, WebhookFilter
from poller.timeutil import utcnow


class PollStore(Protocol):
    """What a poll needs of the store (``poller.store.repo.Store`` is the real one)."""

    async def known_ids(self, room_ids: Sequence[str]) -> dict[str, set[str]]: ...

    async def record_page(
        self,
        room_id: str,
        page: Sequence[Event],
        webhooks: Iterable[WebhookFilter],
        *,
        deliver: bool,
        now: dt.datetime,
    ) -> PageOutcome: ...

    async def update_rooms(
        self,
        *,
        finish: Sequence[tuple[str, str | None]] = (),
        acquire: Sequence[tuple[str, bool]] = (),
        ttl: float = 0.0,
        cooldown: float = 0.0,
        baseline: Collection[str] = (),
        now: dt.datetime,
    ) -> dict[str, RoomLease | None]: ...


@dataclass(frozen=True, slots=True)
class PollResult:
    room_id: str
    outcome: PollOutcome
    pages: int = 0
    events: int = 0
    new: int = 0
    deliveries: int = 0
    skipped: int = 0
    duration: float = 0.0


BOOKKEEPING_WINDOW = 0.02  # seconds a lease or outcome write waits for company
# A room in its first-poll phase whose walks keep failing takes what it recorded
# so far as its baseline after this many; from then on new events are delivered.
BASELINE_AFTER_FAILED_WALKS = 3
# From this many failed walks in a row a room's poll is logged as an error.
FAILING_AFTER = 3
_LOG_LEVEL = {PollOutcome.OK: "info", PollOutcome.ERROR: "warning"}  # leased: only debug
_LOGGED_SKIPS = 5  # event ids named in one events_skipped line


@dataclass(frozen=True, slots=True)
class _RoomWrite:
    """A poll's lease request (``acquire_room``) or its outcome (``finish_poll``)."""

    room_id: str
    preferred: bool = True
    finished: bool = False
    error: str | None = None
    ends_baseline: bool = False


@dataclass(slots=True)
class _Deadlines:
    """When a walk must end: its own deadline, or its lease's (moved on by renewals)."""

    scope: asyncio.Timeout
    walk: float  # loop time
    leased_at: float  # loop time the current lease was asked for


@dataclass(slots=True)
class _Walk:
    """What one walk of a room found so far."""

    room_id: str
    deliver: bool
    pages: int = 0
    events: int = 0
    new: int = 0
    deliveries: int = 0
    skipped: int = 0

    def result(self, outcome: PollOutcome) -> PollResult:
        return PollResult(
            self.room_id, outcome, self.pages, self.events, self.new, self.deliveries, self.skipped
        )


class RoomPoller:
    """Polls rooms; what is new is decided by the store, never by page position."""

    def __init__(
        self,
        client: HmsClient,
        store: PollStore,
        webhooks: Sequence[WebhookFilter],
        *,
        event_types: Sequence[str],
        page_size: int,
        backfill: bool,
        lease_ttl: float,
        interval: float = 0.0,
        walk_timeout: float = 60.0,
        lease_renewal: float | None = None,
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
        self._walk_timeout = walk_timeout
        self._lease_renewal = lease_ttl / 3 if lease_renewal is None else lease_renewal
        self._known = KnownIds(store.known_ids)
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
        """Poll one room once; every failure becomes the poll's recorded outcome, never raised."""
        started = time.perf_counter()
        mine = self._is_mine(room_id)
        if not mine and room_id not in self._held:
            # Another instance's room that we do not hold: nothing to write.
            return self._done(PollResult(room_id, PollOutcome.LEASED), started)
        loop = asyncio.get_running_loop()
        # Taken before asking: the lease the store grants ends no earlier than this + TTL.
        leased_at = loop.time()
        try:
            lease = await self._bookkeeping.submit(_RoomWrite(room_id, preferred=mine))
        except StoreError as exc:
            # No lease, so nothing to record in the store; the log and metrics say it.
            return self._done(
                PollResult(room_id, PollOutcome.ERROR), started, error=f"store: {exc}"
            )
        if lease is None:
            self._held.discard(room_id)
            self._known.forget(room_id)  # the new holder adds ids this copy would miss
            return self._done(PollResult(room_id, PollOutcome.LEASED), started)
        self._held.add(room_id)
        # Until the room's first complete poll, what the API holds was there
        # before us: delivered only with backfill (or when the room is new to the app).
        first = lease.first_polled_at is None
        walk = _Walk(room_id, deliver=self._backfill or lease.backfill or not first)
        error: str | None = None
        walk_deadline = loop.time() + self._walk_timeout
        try:
            # The walk ends at its own deadline or its lease's, whichever is first: a
            # poll never outlives its lease (renewals move that deadline on).
            async with asyncio.timeout_at(min(walk_deadline, leased_at + self._lease_ttl)) as cm:
                await self._walk(walk, _Deadlines(cm, walk_deadline, leased_at))
        except TimeoutError:
            if loop.time() >= walk_deadline:
                error = f"walk timed out after {self._walk_timeout:g}s"
            else:
                error = "the walk stopped: its lease ran out before it could be renewed"
        except (ApiError, _LeaseLost) as exc:
            error = str(exc)
        except StoreError as exc:
            # The driver's words already, without SQL parameters; no traceback: the
            # store's fault record reports the spell (poller.store.faults).
            error = f"store: {exc}"
        except Exception as exc:
            # A bug: the room's outcome says so, and the next poll retries.
            error = one_line(exc)
            self._log.exception("poll_failed", room_id=room_id)
        failed_walks = 0 if error is None else lease.failed_walks + 1
        # A room that never completes a walk must not stay in its first-poll phase
        # (with backfill off, every new event would be recorded and never delivered):
        # after a few failed walks what was recorded so far is the baseline.
        ends_baseline = first and failed_walks >= BASELINE_AFTER_FAILED_WALKS
        await self._bookkeeping.submit(
            _RoomWrite(room_id, finished=True, error=error, ends_baseline=ends_baseline)
        )
        result = walk.result(PollOutcome.ERROR if error else PollOutcome.OK)
        return self._done(
            result,
            started,
            error=error,
            failed_walks=failed_walks,
            first_poll=first,
            recorded_only=not walk.deliver,  # its new events were seen, not delivered
            baseline_ended_incomplete=ends_baseline,
        )

    async def _walk(self, walk: _Walk, deadlines: _Deadlines) -> None:
        async for page in self._client.pages(
            walk.room_id, self._event_types, page_size=self._page_size
        ):
            walk.pages += 1
            walk.events += page.size
            skipped = list(page.skipped)
            unknown = await self._known.unknown(walk.room_id, page.ids)
            if unknown:
                events, unusable = page.events(walk.room_id, frozenset(unknown))
                skipped += unusable
                skipped += await self._save(walk, events)
            if skipped:
                walk.skipped += len(skipped)
                self._log_skipped(walk.room_id, skipped)
            await self._renew(walk.room_id, deadlines)

    async def _renew(self, room_id: str, deadlines: _Deadlines) -> None:
        """Renew a long walk's lease, or another instance would take the room mid-walk."""
        loop = asyncio.get_running_loop()
        if loop.time() - deadlines.leased_at < self._lease_renewal:
            return
        asked_at = loop.time()
        if await self._bookkeeping.submit(_RoomWrite(room_id)) is None:
            self._held.discard(room_id)
            self._known.forget(room_id)
            raise _LeaseLost("the room's lease was lost during the walk")
        deadlines.leased_at = asked_at
        deadlines.scope.reschedule(min(deadlines.walk, asked_at + self._lease_ttl))

    async def _save(self, walk: _Walk, events: list[Event]) -> list[Skipped]:
        """Store a page's new events; one the store refuses is skipped, not the page."""
        if not events:
            return []
        try:
            self._stored(walk, events, await self._record(walk, events))
            return []
        except Exception:
            if len(events) == 1:
                raise
        # Alone, each event either goes in or is the one the store refuses; if every
        # one fails, the store itself is failing and the poll says so.
        refused: list[Skipped] = []
        error: Exception | None = None
        for event in events:
            try:
                self._stored(walk, [event], await self._record(walk, [event]))
            except Exception as exc:
                error = error or exc
                refused.append(Skipped(event.id, f"refused by the store ({type(exc).__name__})"))
        if len(refused) == len(events) and error is not None:
            raise error
        return refused

    async def _record(self, walk: _Walk, events: list[Event]) -> PageOutcome:
        return await self._store.record_page(
            walk.room_id, events, self._webhooks, deliver=walk.deliver, now=utcnow()
        )

    def _stored(self, walk: _Walk, events: list[Event], outcome: PageOutcome) -> None:
        # Committed: every one of these ids is in the store now, ours or not.
        self._known.add(walk.room_id, (e.id for e in events))
        walk.new += outcome.new
        walk.deliveries += outcome.deliveries
        if outcome.deliveries:
            self._on_new_deliveries()

    def _log_skipped(self, room_id: str, skipped: list[Skipped]) -> None:
        reasons = collections.Counter(s.reason for s in skipped)
        self._log.warning(
            "events_skipped",
            room_id=room_id,
            count=len(skipped),
            reasons=dict(reasons),
            event_ids=[s.event_id for s in skipped[:_LOGGED_SKIPS]],
        )

    def forget_known(self) -> None:
        """Reload known ids from the store (events were pruned)."""
        self._known.clear()

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
            baseline={w.room_id for w in writes if w.ends_baseline},
            now=utcnow(),
        )
        return [None if w.finished else leases[w.room_id] for w in writes]

    def _done(self, result: PollResult, started: float, **extra: object) -> PollResult:
        result = dataclasses.replace(result, duration=time.perf_counter() - started)
        self._on_poll(result)
        # Why: each attribute of a lazy structlog logger builds a bound logger, so
        # pick the level by name and fetch only that method.
        level = _LOG_LEVEL.get(result.outcome, "debug")
        failing = extra.get("failed_walks", 0)
        if isinstance(failing, int) and failing >= FAILING_AFTER:
            level = "error"  # a room that cannot complete a walk must not go unnoticed
        log = getattr(self._log, level)
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


class _LeaseLost(Exception):
    """Another instance took the room while this one walked it."""
