"""Every query poller makes: seen events and outbox in one transaction, leases, claims."""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Callable, Collection, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ParamSpec, Protocol, TypeVar

from sqlalchemy import Update, and_, bindparam, delete, exists, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from poller.errors import StoreError
from poller.events import Event
from poller.states import DeliveryState
from poller.store.db import schema_revisions
from poller.store.models import deliveries, events, instances, rooms

_MAX_ERROR = 300  # characters of a driver's message kept

PENDING, DELIVERED, DEAD = DeliveryState.PENDING, DeliveryState.DELIVERED, DeliveryState.DEAD

__all__ = [
    "AttemptRecord",
    "Claim",
    "DeliveryRow",
    "PageOutcome",
    "RoomLease",
    "Store",
    "WebhookFilter",
]


class WebhookFilter(Protocol):
    """What the store needs to know of a webhook to fan an event out to it."""

    @property
    def name(self) -> str: ...

    def matches(self, room_id: str, event_type: str) -> bool: ...


@dataclass(frozen=True, slots=True)
class PageOutcome:
    new: int  # events not seen before
    deliveries: int  # outbox rows created


@dataclass(frozen=True, slots=True)
class RoomLease:
    room_id: str
    first_polled_at: dt.datetime | None  # None: the room is in its first-poll phase
    failed_walks: int = 0  # walks that failed in a row before this one


@dataclass(frozen=True, slots=True)
class Claim:
    """One delivery this instance now owns until its claim expires."""

    delivery_id: int
    event_id: str
    webhook: str
    attempts: int  # attempts made before this one
    body: str
    created_at: dt.datetime


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    """One finished attempt to record: delivered when ``error`` is None, else failed
    (pending again at ``retry_at``, or dead when that is None)."""

    claim: Claim
    now: dt.datetime  # when the attempt ended
    status: int | None
    error: str | None = None
    retry_at: dt.datetime | None = None


@dataclass(frozen=True, slots=True)
class DeliveryRow:
    id: int
    event_id: str
    webhook: str
    state: str
    attempts: int
    created_at: dt.datetime
    next_attempt_at: dt.datetime
    last_attempt_at: dt.datetime | None
    last_status: int | None
    last_error: str | None


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _translated(
    method: Callable[_P, Coroutine[Any, Any, _R]],
) -> Callable[_P, Coroutine[Any, Any, _R]]:
    """Turn the driver's failures into StoreError, so callers need not know SQLAlchemy.

    The message is the driver's own first line: engines hide SQL parameters, which
    hold event bodies (presigned URLs are credentials).
    """

    @functools.wraps(method)
    async def translated(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return await method(*args, **kwargs)
        except (SQLAlchemyError, OSError) as exc:
            raise StoreError(describe_store_error(exc)) from exc

    return translated


def describe_store_error(exc: BaseException) -> str:
    """One bounded line naming a store failure: the driver's words, not the statement."""
    reason: BaseException = exc
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        reason = exc.orig
    lines = str(reason).strip().splitlines()
    text = f"{type(reason).__name__}: {lines[0]}" if lines else type(reason).__name__
    return text[:_MAX_ERROR]


class Store:
    """The store: the source of truth for what was seen and what is owed.

    Every method is one transaction (or one read); failures raise StoreError.
    """

    def __init__(self, engine: AsyncEngine, *, instance_id: str) -> None:
        self._engine = engine
        self.instance_id = instance_id
        self._dialect = engine.dialect.name
        # Why built once: executed with a list of rows (executemany), each is compiled
        # once and then taken from SQLAlchemy's cache, whatever the number of rows; a
        # multi-row VALUES compiled anew for every page was 40 % of a poll's CPU.
        self._insert_events = (
            self._insert(events)
            .on_conflict_do_nothing(index_elements=["id"])
            .returning(events.c.id)
        )
        self._insert_deliveries = deliveries.insert()
        self._room_ids = select(events.c.id).where(events.c.room_id == bindparam("room_id"))

    @property
    def single_instance(self) -> bool:
        """SQLite: one instance per file, so what another run left is ours to take over."""
        return self._dialect == "sqlite"

    @_translated
    async def schema_revisions(self) -> tuple[str | None, str | None]:
        """(current revision in the store, head revision shipped with this version)."""
        return await schema_revisions(self._engine)

    async def close(self) -> None:
        """Close every connection of the engine."""
        await self._engine.dispose()

    def _insert(self, table: Any) -> Any:
        # ON CONFLICT DO NOTHING lives in the dialects' own insert constructs.
        if self._dialect == "postgresql":
            return postgresql.insert(table)
        return sqlite.insert(table)

    @_translated
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
                    "created_at": now,
                    "next_attempt_at": now,
                }
                for event_id in new_ids
                for w in targets
                if w.matches(room_id, unique[event_id].type)
            ]
            if outbox:
                await conn.execute(self._insert_deliveries, outbox)
        return PageOutcome(len(new_ids), len(outbox))

    @_translated
    async def known_ids(self, room_id: str) -> set[str]:
        """Every event id stored for one room."""
        async with self._engine.connect() as conn:
            result = await conn.execute(self._room_ids, {"room_id": room_id})
            return set(result.scalars())

    @_translated
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
                        last_success_at=now,
                        failed_walks=0,
                        first_polled_at=func.coalesce(rooms.c.first_polled_at, now),
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
                    values["first_polled_at"] = func.coalesce(rooms.c.first_polled_at, now)
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
                    rooms.c.lease_until < now,
                ),
            )
            .values(
                lease_owner=self.instance_id,
                lease_until=now + dt.timedelta(seconds=ttl),
                last_polled_at=now,
            )
            .returning(rooms.c.id, rooms.c.first_polled_at, rooms.c.failed_walks)
        )
        return {row.id: RoomLease(row.id, row.first_polled_at, row.failed_walks) for row in result}

    def _release(self, now: dt.datetime, cooldown: float) -> Update:
        return (
            update(rooms)
            .where(rooms.c.lease_owner == self.instance_id)
            .values(lease_owner=None, lease_until=now + dt.timedelta(seconds=cooldown))
        )

    @_translated
    async def heartbeat(
        self, *, ttl: float, now: dt.datetime, started_at: dt.datetime
    ) -> list[str]:
        """Say this instance is alive; return every live instance's id, sorted."""
        async with self._engine.begin() as conn:
            stmt = self._insert(instances).values(
                id=self.instance_id, started_at=started_at, heartbeat_at=now
            )
            await conn.execute(
                stmt.on_conflict_do_update(index_elements=["id"], set_={"heartbeat_at": now})
            )
            # Instances silent for long are gone for good (a pid never comes back).
            await conn.execute(
                delete(instances).where(
                    instances.c.heartbeat_at < now - dt.timedelta(seconds=10 * ttl)
                )
            )
            live = await conn.execute(
                select(instances.c.id)
                .where(instances.c.heartbeat_at >= now - dt.timedelta(seconds=ttl))
                .order_by(instances.c.id)
            )
            return list(live.scalars())

    @_translated
    async def deregister(self) -> None:
        """Leave the set of live instances (a graceful stop), so others rebalance at once."""
        async with self._engine.begin() as conn:
            await conn.execute(delete(instances).where(instances.c.id == self.instance_id))

    @_translated
    async def instance_states(self) -> list[dict[str, Any]]:
        """Every known instance with its last heartbeat, for `poller status`."""
        async with self._engine.connect() as conn:
            rows = await conn.execute(select(instances).order_by(instances.c.id))
            return [dict(row._mapping) for row in rows]

    @_translated
    async def release_rooms(self, *, now: dt.datetime, cooldown: float = 0.0) -> None:
        """Give up this instance's room leases; others may take them after ``cooldown``."""
        async with self._engine.begin() as conn:
            await conn.execute(self._release(now, cooldown))

    @_translated
    async def claim(self, webhook: str, limit: int, *, ttl: float, now: dt.datetime) -> list[Claim]:
        """Claim up to ``limit`` due deliveries of one webhook for ``ttl`` seconds."""
        if limit <= 0:
            return []
        due = (
            select(deliveries.c.id)
            .where(
                deliveries.c.state == PENDING,
                deliveries.c.webhook == webhook,
                deliveries.c.next_attempt_at <= now,
                or_(deliveries.c.claimed_until.is_(None), deliveries.c.claimed_until < now),
            )
            .order_by(deliveries.c.next_attempt_at, deliveries.c.id)
            .limit(limit)
            # Several instances on PostgreSQL skip each other's rows instead of
            # queueing on them; SQLite renders nothing (one writer anyway).
            .with_for_update(skip_locked=True)
        )
        async with self._engine.begin() as conn:
            claimed = (
                await conn.execute(
                    update(deliveries)
                    .where(deliveries.c.id.in_(due.scalar_subquery()))
                    .values(
                        claimed_by=self.instance_id,
                        claimed_until=now + dt.timedelta(seconds=ttl),
                    )
                    .returning(
                        deliveries.c.id,
                        deliveries.c.event_id,
                        deliveries.c.attempts,
                        deliveries.c.created_at,
                    )
                )
            ).all()
            if not claimed:
                return []
            bodies = await _bodies(conn, {row.event_id for row in claimed})
        return sorted(
            (
                Claim(
                    row.id,
                    row.event_id,
                    webhook,
                    row.attempts,
                    bodies[row.event_id],
                    row.created_at,
                )
                for row in claimed
            ),
            key=lambda c: c.delivery_id,
        )

    @_translated
    async def record_attempts(self, records: Sequence[AttemptRecord]) -> list[bool]:
        """Record finished attempts in one transaction; per record, False when its claim
        had been lost meanwhile (that row is left as it is).

        Why: a transaction per delivery bounded delivery throughput (BENCHMARKS.md);
        the delivery worker hands in every outcome that finished while the previous
        write ran (see poller.batch).
        """
        if not records:
            return []
        ours = and_(deliveries.c.claimed_by == self.instance_id, deliveries.c.state == PENDING)
        ids = [r.claim.delivery_id for r in records]
        async with self._engine.begin() as conn:
            # Locked (on PostgreSQL) until the commit, so what is still ours stays ours.
            held = set(
                (
                    await conn.execute(
                        select(deliveries.c.id)
                        .where(deliveries.c.id.in_(ids), ours)
                        .with_for_update()
                    )
                ).scalars()
            )
            kept: list[bool] = []
            shapes: dict[tuple[str, ...], list[dict[str, Any]]] = {}
            for record in records:
                delivery_id = record.claim.delivery_id
                kept.append(delivery_id in held)
                if delivery_id not in held:
                    continue
                held.discard(delivery_id)  # a repeat would find it no longer pending
                values = _attempt_values(record)
                params = {f"p_{name}": value for name, value in values.items()}
                shapes.setdefault(tuple(values), []).append({"p_id": delivery_id, **params})
            for names, rows in shapes.items():
                await conn.execute(
                    update(deliveries)
                    .where(deliveries.c.id == bindparam("p_id", type_=deliveries.c.id.type), ours)
                    .values(
                        {
                            **{
                                name: bindparam(f"p_{name}", type_=deliveries.c[name].type)
                                for name in names
                            },
                            **_COUNT_ATTEMPT,
                        }
                    ),
                    rows,
                )
        return kept

    @_translated
    async def release_claims(self, claims: Sequence[Claim] | None = None) -> int:
        """Hand back these claims (default: all of this instance's), to be retried at once."""
        mine = [deliveries.c.claimed_by == self.instance_id, deliveries.c.state == PENDING]
        if claims is not None:
            mine.append(deliveries.c.id.in_([c.delivery_id for c in claims]))
        async with self._engine.begin() as conn:
            result = await conn.execute(
                update(deliveries).where(*mine).values(claimed_by=None, claimed_until=None)
            )
        return int(result.rowcount)

    @_translated
    async def take_over(self) -> tuple[int, int]:
        """Claim back everything another run left: for a lone instance (SQLite) starting.

        A run killed with -9 leaves claimed deliveries, room leases and an
        instance row behind under its old pid; waiting for them to expire
        would only delay this run. Returns (claims, leases) released.
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
            await conn.execute(delete(instances).where(instances.c.id != self.instance_id))
        return int(claims.rowcount), int(leases.rowcount)

    @_translated
    async def next_due(self, webhooks: Sequence[str]) -> dt.datetime | None:
        """When the earliest unclaimed pending delivery of these webhooks falls due."""
        if not webhooks:
            return None
        async with self._engine.connect() as conn:
            value = await conn.scalar(
                select(func.min(deliveries.c.next_attempt_at)).where(
                    deliveries.c.state == PENDING,
                    deliveries.c.webhook.in_(webhooks),
                    deliveries.c.claimed_until.is_(None),
                )
            )
        return _aware(value)

    @_translated
    async def outbox_counts(self) -> dict[tuple[str, str], int]:
        """Delivery counts by (webhook, state)."""
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                select(deliveries.c.webhook, deliveries.c.state, func.count()).group_by(
                    deliveries.c.webhook, deliveries.c.state
                )
            )
            return {(w, s): int(n) for w, s, n in rows}

    @_translated
    async def oldest_pending(self) -> dt.datetime | None:
        """Creation time of the oldest delivery still owed."""
        async with self._engine.connect() as conn:
            value = await conn.scalar(
                select(func.min(deliveries.c.created_at)).where(deliveries.c.state == PENDING)
            )
        return _aware(value)

    @_translated
    async def failing_rooms(self, *, after: int) -> int:
        """How many rooms have failed ``after`` or more walks in a row."""
        async with self._engine.connect() as conn:
            value = await conn.scalar(
                select(func.count()).select_from(rooms).where(rooms.c.failed_walks >= after)
            )
        return int(value or 0)

    @_translated
    async def room_states(self) -> list[dict[str, Any]]:
        """Every room's poll state, for `poller status`."""
        async with self._engine.connect() as conn:
            rows = await conn.execute(select(rooms).order_by(rooms.c.id))
            return [dict(row._mapping) for row in rows]

    @_translated
    async def list_deliveries(
        self, *, state: str | None = None, webhook: str | None = None, limit: int = 50
    ) -> list[DeliveryRow]:
        """The most recent deliveries, newest first, optionally filtered."""
        query = select(
            deliveries.c.id,
            deliveries.c.event_id,
            deliveries.c.webhook,
            deliveries.c.state,
            deliveries.c.attempts,
            deliveries.c.created_at,
            deliveries.c.next_attempt_at,
            deliveries.c.last_attempt_at,
            deliveries.c.last_status,
            deliveries.c.last_error,
        )
        if state is not None:
            query = query.where(deliveries.c.state == state)
        if webhook is not None:
            query = query.where(deliveries.c.webhook == webhook)
        async with self._engine.connect() as conn:
            rows = await conn.execute(query.order_by(deliveries.c.id.desc()).limit(limit))
            return [DeliveryRow(**row._mapping) for row in rows]

    @_translated
    async def retry(
        self, *, ids: Sequence[int] = (), webhook: str | None = None, now: dt.datetime
    ) -> int:
        """Make dead deliveries pending again with a fresh schedule; returns how many."""
        cond = [deliveries.c.state == DEAD]
        if ids:
            cond.append(deliveries.c.id.in_(ids))
        if webhook is not None:
            cond.append(deliveries.c.webhook == webhook)
        async with self._engine.begin() as conn:
            result = await conn.execute(
                update(deliveries)
                .where(and_(*cond))
                .values(state=PENDING, attempts=0, next_attempt_at=now, last_error=None)
            )
        return int(result.rowcount)

    @_translated
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
                await conn.execute(delete(deliveries).where(deliveries.c.event_id.in_(ids)))
                await conn.execute(delete(events).where(events.c.id.in_(ids)))
            total += len(ids)


async def _bodies(conn: AsyncConnection, ids: set[str]) -> dict[str, str]:
    rows = await conn.execute(select(events.c.id, events.c.body).where(events.c.id.in_(ids)))
    return {row.id: row.body for row in rows}


def _aware(value: Any) -> dt.datetime | None:
    # Aggregates bypass the column type, so SQLite hands back a naive value or text.
    if value is None:
        return None
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    assert isinstance(value, dt.datetime)
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value


_COUNT_ATTEMPT = {"attempts": deliveries.c.attempts + 1}


def _attempt_values(record: AttemptRecord) -> dict[str, Any]:
    """The values one finished attempt sets, besides counting it (``_COUNT_ATTEMPT``);
    its claim is released either way."""
    values: dict[str, Any] = {
        "last_attempt_at": record.now,
        "claimed_by": None,
        "claimed_until": None,
        "last_status": record.status,
        "last_error": record.error,
    }
    if record.error is None:
        values |= {"state": DELIVERED, "delivered_at": record.now}
    elif record.retry_at is None:
        values["state"] = DEAD
    else:
        values["next_attempt_at"] = record.retry_at
    return values
