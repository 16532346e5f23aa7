"""The attempt log on SQLite and PostgreSQL: written with each attempt, pruned with its event."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from sqlalchemy import event, func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from poller.store.base import StoreClock
from poller.store.models import attempts, deliveries
from poller.store.repo import AttemptRecord, AttemptRow, Store
from tests.integration.test_store import NOW, TTL, H, Hook, seconds, seed
from tests.storeops import engine_of


@pytest.fixture(params=[StoreClock.CALLER, None], ids=["caller-clock", "default-clock"])
def store(engine: AsyncEngine, request: pytest.FixtureRequest) -> Store:
    """The store under the caller's clock, and under its backend's default (PostgreSQL's
    own clock there), since the log's time follows the store's clock."""
    return Store(engine, instance_id="test-instance", clock=request.param)


async def log_rows(store: Store) -> int:
    async with engine_of(store).connect() as conn:
        return int(await conn.scalar(select(func.count()).select_from(attempts)) or 0)


async def test_each_kept_attempt_is_logged_in_the_batch_that_records_it(store: Store) -> None:
    await seed(store, 4)
    a, b, c, d = await store.claim("h", 4, ttl=TTL, now=NOW)
    # d's claim is taken over by another instance once it expired: its record is lost.
    other = Store(engine_of(store), instance_id="other", clock=store.clock)
    async with engine_of(store).begin() as conn:
        await conn.execute(
            deliveries.update().where(deliveries.c.id == d.delivery_id).values(claimed_by="other")
        )
    ended = NOW + seconds(1)
    records = [
        AttemptRecord(a, ended, 204, duration=0.0125, response=b""),
        AttemptRecord(b, ended, 500, "HTTP 500", NOW + seconds(60), 0.25, b"oops \xff"),
        AttemptRecord(c, ended, None, "timed out after 2s", None, 2.0),
        AttemptRecord(d, ended, 204, duration=0.01, response=b"mine"),
    ]
    assert await store.record_attempts(records) == [True, True, True, False]
    assert await other.attempts_of(d.delivery_id) == []

    (ok,) = await store.attempts_of(a.delivery_id)
    assert (ok.number, ok.status, ok.error, ok.response) == (1, 204, None, None)
    assert ok.duration_ms == pytest.approx(12.5)
    (failed,) = await store.attempts_of(b.delivery_id)
    # Invalid UTF-8 in an answer is kept readable, not refused.
    assert (failed.status, failed.error, failed.response) == (500, "HTTP 500", "oops \ufffd")
    assert failed.duration_ms == pytest.approx(250.0)
    (timed_out,) = await store.attempts_of(c.delivery_id)
    assert (timed_out.status, timed_out.error) == (None, "timed out after 2s")

    # The log's time is the delivery's last_attempt_at, whichever clock times the store.
    async with engine_of(store).connect() as conn:
        last = dict(
            (
                await conn.execute(
                    select(deliveries.c.id, deliveries.c.last_attempt_at).where(
                        deliveries.c.id.in_([a.delivery_id, b.delivery_id, c.delivery_id])
                    )
                )
            ).all()
        )
    assert ok.attempted_at == last[a.delivery_id]
    assert failed.attempted_at == last[b.delivery_id]
    if store.clock is StoreClock.CALLER:
        assert ok.attempted_at == ended


async def test_attempts_accumulate_and_a_retry_starts_counting_again(store: Store) -> None:
    await seed(store, 1)
    at = NOW
    for _ in range(2):
        (claim,) = await store.claim("h", 1, ttl=TTL, now=at)
        # Due again at once (on PostgreSQL's clock a delay would be a real one).
        retry_at = at if claim.attempts == 0 else None
        await store.record_attempts([AttemptRecord(claim, at, 503, "HTTP 503", retry_at)])
        at += seconds(2)
    assert await store.retry(webhook="h", now=at) == 1
    (claim,) = await store.claim("h", 1, ttl=TTL, now=at)
    await store.record_attempts([AttemptRecord(claim, at, 200)])
    log = await store.attempts_of(claim.delivery_id)
    assert [(r.number, r.status) for r in log] == [(1, 503), (2, 503), (1, 200)]
    assert all(isinstance(r, AttemptRow) for r in log)
    assert await store.attempts_of(claim.delivery_id + 1000) == []


async def test_one_insert_statement_logs_a_whole_batch(store: Store) -> None:
    """The log is on the delivery hot path: one statement per batch, not per attempt."""
    await seed(store, 5, hooks=[H, Hook("g")])
    claims = await store.claim("h", 5, ttl=TTL, now=NOW)
    statements: list[str] = []

    def seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    sync_engine = engine_of(store).sync_engine
    event.listen(sync_engine, "before_cursor_execute", seen)
    try:
        records = [
            AttemptRecord(claim, NOW, 200 if i % 2 else 500, None if i % 2 else "HTTP 500")
            for i, claim in enumerate(claims)
        ]
        assert await store.record_attempts(records) == [True] * 5
    finally:
        event.remove(sync_engine, "before_cursor_execute", seen)
    inserts = [s for s in statements if s.lstrip().upper().startswith("INSERT INTO ATTEMPTS")]
    assert len(inserts) == 1, statements
    assert await log_rows(store) == 5


async def test_prune_forgets_the_attempts_of_the_events_it_forgets(store: Store) -> None:
    old = NOW - dt.timedelta(days=40)
    gone, kept = await seed(store, 2, now=old)
    claims = {c.event_id: c for c in await store.claim("h", 2, ttl=TTL, now=NOW)}
    await store.record_attempts(
        [
            AttemptRecord(claims[gone.id], NOW, 200),
            AttemptRecord(claims[kept.id], NOW, 500, "HTTP 500", None),  # dead: kept
        ]
    )
    assert await log_rows(store) == 2
    assert await store.prune(seen_before=NOW - dt.timedelta(days=31)) == 1
    assert await store.attempts_of(claims[gone.id].delivery_id) == []
    assert len(await store.attempts_of(claims[kept.id].delivery_id)) == 1
