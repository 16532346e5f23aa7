"""The outbox: claiming due deliveries, recording attempts, and what operators ask of it."""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Interval,
    and_,
    bindparam,
    delete,
    exists,
    func,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from poller.store.base import (
    DEAD,
    DELIVERED,
    PENDING,
    StoreBase,
    StoreClock,
    aware,
    db_now,
    translated,
)
from poller.store.models import attempts, deliveries, events
from poller.store.models import webhooks as webhooks_table

__all__ = [
    "AttemptRecord",
    "AttemptRow",
    "Claim",
    "DeliveryFilter",
    "DeliveryRow",
    "EventFilter",
    "Outbox",
]


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
    (pending again at ``retry_at``, or dead when that is None).

    Both times are the caller's clock; on a store timed by the database's clock the
    retry keeps its delay (``retry_at - now``), counted from the database's "now".
    ``duration`` and ``response`` (the answer's first bytes) go to the attempt log.
    """

    claim: Claim
    now: dt.datetime  # when the attempt ended
    status: int | None
    error: str | None = None
    retry_at: dt.datetime | None = None
    duration: float = 0.0  # seconds
    response: bytes = b""
    # False: the attempt does not use up a retry (a breaker probe that failed, an answer
    # of 410 Gone): the delivery stays pending as it was, due when it was.
    counted: bool = True


@dataclass(frozen=True, slots=True)
class DeliveryRow:
    """One delivery as operators see it, with its event's room and type."""

    id: int
    event_id: str
    webhook: str
    state: str
    attempts: int
    created_at: dt.datetime
    next_attempt_at: dt.datetime
    delivered_at: dt.datetime | None
    last_attempt_at: dt.datetime | None
    last_status: int | None
    last_error: str | None
    room_id: str
    event_type: str


@dataclass(frozen=True, slots=True)
class EventFilter:
    """Which stored events a replay takes; None matches everything. ``since`` and
    ``until`` bound when poller saw the event (``until`` excluded)."""

    room_ids: frozenset[str] | None = None
    types: frozenset[str] | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None

    def where(self) -> list[ColumnElement[bool]]:
        """The conditions on ``events``."""
        cond: list[ColumnElement[bool]] = []
        if self.room_ids is not None:
            cond.append(events.c.room_id.in_(sorted(self.room_ids)))
        if self.types is not None:
            cond.append(events.c.type.in_(sorted(self.types)))
        if self.since is not None:
            cond.append(events.c.seen_at >= self.since)
        if self.until is not None:
            cond.append(events.c.seen_at < self.until)
        return cond


@dataclass(frozen=True, slots=True)
class DeliveryFilter:
    """Which deliveries an operator asks for; None matches everything. ``since`` and
    ``until`` bound when the delivery was created (``until`` excluded)."""

    state: str | None = None
    webhook: str | None = None
    room_id: str | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None

    def where(self) -> list[ColumnElement[bool]]:
        """The conditions, on ``deliveries`` joined with ``events``."""
        cond: list[ColumnElement[bool]] = []
        if self.state is not None:
            cond.append(deliveries.c.state == self.state)
        if self.webhook is not None:
            cond.append(deliveries.c.webhook == self.webhook)
        if self.room_id is not None:
            cond.append(events.c.room_id == self.room_id)
        if self.since is not None:
            cond.append(deliveries.c.created_at >= self.since)
        if self.until is not None:
            cond.append(deliveries.c.created_at < self.until)
        return cond


@dataclass(frozen=True, slots=True)
class AttemptRow:
    """One attempt as the attempt log kept it."""

    number: int
    attempted_at: dt.datetime  # when it ended
    duration_ms: float
    status: int | None
    error: str | None
    response: str | None
    counted: bool = True  # False: it did not use up a retry (see AttemptRecord)


class Outbox(StoreBase):
    """Deliveries owed, claimed, attempted, delivered or dead."""

    @translated
    async def claim(self, webhook: str, limit: int, *, ttl: float, now: dt.datetime) -> list[Claim]:
        """Claim up to ``limit`` due deliveries of one webhook for ``ttl`` seconds."""
        if limit <= 0:
            return []
        at = self._at(now)
        due = (
            select(deliveries.c.id)
            .where(
                _waiting(at),
                deliveries.c.webhook == webhook,
                deliveries.c.next_attempt_at <= at,
                self._holds_id(),
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
                    .values(claimed_by=self.instance_id, claimed_until=self._after(now, ttl))
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

    @translated
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
            shapes: dict[tuple[tuple[str, ...], bool], list[dict[str, Any]]] = {}
            log: list[dict[str, Any]] = []
            for record in records:
                delivery_id = record.claim.delivery_id
                kept.append(delivery_id in held)
                if delivery_id not in held:
                    continue
                held.discard(delivery_id)  # a repeat would find it no longer pending
                values = _attempt_values(record)
                params = self._attempt_params(record, values)
                shape = (tuple(values), record.counted)
                shapes.setdefault(shape, []).append({"p_id": delivery_id, **params})
                log.append(self._log_row(record))
            for (names, counted), rows in shapes.items():
                await conn.execute(
                    update(deliveries)
                    .where(deliveries.c.id == bindparam("p_id", type_=deliveries.c.id.type), ours)
                    .values(
                        {**self._attempt_columns(names), **(_COUNT_ATTEMPT if counted else {})}
                    ),
                    rows,
                )
            if log:
                # One multi-row INSERT for the whole batch (executemany is rendered as
                # VALUES lists), so the log costs one statement per batch, not per attempt.
                await conn.execute(self._insert_attempts, log)
        return kept

    @functools.cached_property
    def _insert_attempts(self) -> Any:
        if self.clock is StoreClock.DATABASE:
            # The same "now" as the delivery's last_attempt_at (see _attempt_columns).
            return attempts.insert().values(attempted_at=db_now())
        return attempts.insert()

    def _log_row(self, record: AttemptRecord) -> dict[str, Any]:
        """The attempt log's row of one record (``_insert_attempts`` sets the rest)."""
        row: dict[str, Any] = {
            "delivery_id": record.claim.delivery_id,
            "number": record.claim.attempts + 1,
            "duration_ms": round(record.duration * 1000, 3),
            "status": record.status,
            "error": record.error,
            "response": record.response.decode("utf-8", "replace") if record.response else None,
            "counted": record.counted,
        }
        if self.clock is not StoreClock.DATABASE:
            row["attempted_at"] = record.now
        return row

    def _attempt_params(self, record: AttemptRecord, values: dict[str, Any]) -> dict[str, Any]:
        """Bound parameters for ``_attempt_values``: on the database's clock the attempt's
        end is the transaction's "now" (no parameter), and a retry keeps its delay."""
        params: dict[str, Any] = {}
        for name, value in values.items():
            if self.clock is StoreClock.DATABASE:
                if name in _ATTEMPT_ENDED:
                    continue
                if name == "next_attempt_at":
                    value = value - record.now
            params[f"p_{name}"] = value
        return params

    def _attempt_columns(self, names: tuple[str, ...]) -> dict[str, Any]:
        """SET clauses for one shape of ``_attempt_values`` (see ``_attempt_params``)."""
        columns: dict[str, Any] = {}
        for name in names:
            if self.clock is StoreClock.DATABASE and name in _ATTEMPT_ENDED:
                columns[name] = db_now()  # one "now" for the whole batch: its transaction's
            elif self.clock is StoreClock.DATABASE and name == "next_attempt_at":
                columns[name] = db_now() + bindparam(f"p_{name}", type_=Interval())
            else:
                columns[name] = bindparam(f"p_{name}", type_=deliveries.c[name].type)
        return columns

    @translated
    async def release_claims(self, claims: Sequence[Claim] | None = None) -> int:
        """Hand back these claims (default: all of this instance's), to be retried at once."""
        mine = [
            deliveries.c.claimed_by == self.instance_id,
            deliveries.c.state == PENDING,
            self._holds_id(),
        ]
        if claims is not None:
            mine.append(deliveries.c.id.in_([c.delivery_id for c in claims]))
        async with self._engine.begin() as conn:
            result = await conn.execute(
                update(deliveries).where(*mine).values(claimed_by=None, claimed_until=None)
            )
        return int(result.rowcount)

    @translated
    async def next_due(self, webhooks: Sequence[str], *, now: dt.datetime) -> dt.datetime | None:
        """When the earliest claimable delivery of these webhooks falls due (``claim``'s rule),
        by the caller's clock: how long until then is the store's business, the time to
        wait for it the caller's (an instance whose clock is ahead must not spin)."""
        if not webhooks:
            return None
        at = self._at(now)
        async with self._engine.connect() as conn:
            due, store_now = (
                await conn.execute(
                    select(func.min(deliveries.c.next_attempt_at), at).where(
                        _waiting(at), deliveries.c.webhook.in_(webhooks)
                    )
                )
            ).one()
        due, store_now = aware(due), aware(store_now)
        if due is None or store_now is None:
            return None
        return now + (due - store_now)

    @translated
    async def outbox_counts(self) -> dict[tuple[str, str], int]:
        """Delivery counts by (webhook, state)."""
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                select(deliveries.c.webhook, deliveries.c.state, func.count()).group_by(
                    deliveries.c.webhook, deliveries.c.state
                )
            )
            return {(w, s): int(n) for w, s, n in rows}

    async def oldest_pending(self, webhooks: Sequence[str] | None = None) -> dt.datetime | None:
        """Creation time of the oldest delivery still owed (to one of ``webhooks``: an
        orphaned webhook's deliveries wait for it to return, they are not late)."""
        oldest = await self.oldest_pending_by_webhook()
        return min(
            (when for name, when in oldest.items() if webhooks is None or name in webhooks),
            default=None,
        )

    @translated
    async def oldest_pending_by_webhook(self) -> dict[str, dt.datetime]:
        """Creation time of each webhook's oldest delivery still owed (none: not listed)."""
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                select(deliveries.c.webhook, func.min(deliveries.c.created_at))
                .where(deliveries.c.state == PENDING)
                .group_by(deliveries.c.webhook)
            )
            oldest: dict[str, dt.datetime] = {}
            for webhook, value in rows:
                if (when := aware(value)) is not None:  # a group's min is never null
                    oldest[webhook] = when
            return oldest

    @translated
    async def purge_webhook(self, webhook: str, *, batch: int = 1000) -> int:
        """Drop every delivery of ``webhook``, its attempts and its state; how many.

        Deliberate only (``poller deliveries purge``). In batches, so that a large backlog
        never holds the store's write lock long while a daemon runs on it.
        """
        total = 0
        while True:
            async with self._engine.begin() as conn:
                ids = (
                    (
                        await conn.execute(
                            select(deliveries.c.id)
                            .where(deliveries.c.webhook == webhook)
                            .limit(batch)
                        )
                    )
                    .scalars()
                    .all()
                )
                if not ids:
                    await conn.execute(
                        delete(webhooks_table).where(webhooks_table.c.name == webhook)
                    )
                    return total
                # Explicit, where foreign keys are not enforced.
                await conn.execute(delete(attempts).where(attempts.c.delivery_id.in_(ids)))
                await conn.execute(delete(deliveries).where(deliveries.c.id.in_(ids)))
            total += len(ids)

    @translated
    async def list_deliveries(
        self, where: DeliveryFilter | None = None, *, limit: int = 50
    ) -> list[DeliveryRow]:
        """The most recent deliveries, newest first."""
        query = (
            _DELIVERY_ROWS.where(*(where or DeliveryFilter()).where())
            .order_by(deliveries.c.id.desc())
            .limit(limit)
        )
        async with self._engine.connect() as conn:
            return [DeliveryRow(**row._mapping) for row in await conn.execute(query)]

    @translated
    async def delivery(self, delivery_id: int) -> DeliveryRow | None:
        """One delivery, or None when there is no such id."""
        async with self._engine.connect() as conn:
            row = (await conn.execute(_DELIVERY_ROWS.where(deliveries.c.id == delivery_id))).first()
        return None if row is None else DeliveryRow(**row._mapping)

    @translated
    async def replay(
        self, webhook: str, which: EventFilter, *, now: dt.datetime, dry_run: bool = False
    ) -> int:
        """Owe ``webhook`` the stored events ``which`` selects once more; returns how many.

        Each event's delivery is made pending again with a fresh schedule (its attempt
        log keeps what went before), or created where there was none; one still
        pending is left as it is, already owed. ``dry_run`` only counts.
        """
        mine = and_(deliveries.c.event_id == events.c.id, deliveries.c.webhook == webhook)
        pending = exists().where(mine, deliveries.c.state == PENDING)
        selected = select(events.c.id).where(*which.where(), ~pending)
        async with self._engine.begin() as conn:
            if dry_run:
                return int(
                    await conn.scalar(select(func.count()).select_from(selected.subquery())) or 0
                )
            at = self._at(now)
            done = await conn.execute(
                update(deliveries)
                .where(
                    deliveries.c.webhook == webhook,
                    deliveries.c.state != PENDING,
                    # One delivery per (event, webhook): not pending means none is.
                    deliveries.c.event_id.in_(select(events.c.id).where(*which.where())),
                )
                .values(
                    state=PENDING,
                    attempts=0,
                    created_at=at,
                    next_attempt_at=at,
                    delivered_at=None,
                    last_error=None,
                    claimed_by=None,
                    claimed_until=None,
                )
            )
            missing = select(
                events.c.id, literal(webhook), literal(str(PENDING)), literal(0), at, at
            ).where(*which.where(), ~exists().where(mine))
            created = await conn.execute(
                deliveries.insert().from_select(
                    ["event_id", "webhook", "state", "attempts", "created_at", "next_attempt_at"],
                    missing,
                )
            )
        return int(done.rowcount) + int(created.rowcount)

    @translated
    async def attempts_of(self, delivery_id: int) -> list[AttemptRow]:
        """Every attempt of one delivery, oldest first."""
        query = (
            select(
                attempts.c.number,
                attempts.c.attempted_at,
                attempts.c.duration_ms,
                attempts.c.status,
                attempts.c.error,
                attempts.c.response,
                attempts.c.counted,
            )
            .where(attempts.c.delivery_id == delivery_id)
            .order_by(attempts.c.id)
        )
        async with self._engine.connect() as conn:
            return [AttemptRow(**row._mapping) for row in await conn.execute(query)]

    @translated
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
                .values(state=PENDING, attempts=0, next_attempt_at=self._at(now), last_error=None)
            )
        return int(result.rowcount)


def _waiting(now: ColumnElement[dt.datetime]) -> ColumnElement[bool]:
    """Owed and not held by a live claim at ``now`` (the store's): what ``claim`` may take
    once it is due.

    Why one expression: ``claim`` and ``next_due`` each wrote their own and differed
    (an expired claim was claimable but never "due").
    """
    unclaimed = or_(deliveries.c.claimed_until.is_(None), deliveries.c.claimed_until < now)
    return and_(deliveries.c.state == PENDING, unclaimed)


async def _bodies(conn: AsyncConnection, ids: set[str]) -> dict[str, str]:
    rows = await conn.execute(select(events.c.id, events.c.body).where(events.c.id.in_(ids)))
    return {row.id: row.body for row in rows}


_DELIVERY_ROWS = select(
    deliveries.c.id,
    deliveries.c.event_id,
    deliveries.c.webhook,
    deliveries.c.state,
    deliveries.c.attempts,
    deliveries.c.created_at,
    deliveries.c.next_attempt_at,
    deliveries.c.delivered_at,
    deliveries.c.last_attempt_at,
    deliveries.c.last_status,
    deliveries.c.last_error,
    events.c.room_id,
    events.c.type.label("event_type"),
).join(events, events.c.id == deliveries.c.event_id)

_COUNT_ATTEMPT = {"attempts": deliveries.c.attempts + 1}
# Columns an attempt sets to when it ended.
_ATTEMPT_ENDED = frozenset({"last_attempt_at", "delivered_at"})


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
    elif not record.counted:
        pass  # pending, due as before
    elif record.retry_at is None:
        values["state"] = DEAD
    else:
        values["next_attempt_at"] = record.retry_at
    return values
