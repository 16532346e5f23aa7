"""Group commit (poller.batch) and the store's batched writes, on SQLite and PostgreSQL.

A batch must leave every row exactly as the same calls made one by one would.
"""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from poller.batch import GroupCommit
from poller.limit import Limiter
from poller.store.base import StoreClock
from poller.store.repo import AttemptRecord, RoomLease, Store
from tests.integration.test_store import NOW, TTL, all_rows, other, row, seconds, seed
from tests.storeops import acquire_room


@pytest.fixture
def store(engine: AsyncEngine) -> Store:
    """As in test_store: batches are compared under a clock the test drives."""
    return Store(engine, instance_id="test-instance", clock=StoreClock.CALLER)


# --- GroupCommit -------------------------------------------------------------------------


async def test_a_lone_item_is_flushed_at_once() -> None:
    calls: list[list[int]] = []

    async def flush(items: list[int]) -> list[int]:
        calls.append(items)
        return [i * 10 for i in items]

    batcher = GroupCommit(flush)
    assert await asyncio.wait_for(batcher.submit(1), 1.0) == 10
    assert calls == [[1]]


async def test_items_queued_during_a_flush_go_together_in_order() -> None:
    calls: list[list[int]] = []
    gate = asyncio.Event()

    async def flush(items: list[int]) -> list[int]:
        calls.append(items)
        if len(calls) == 1:
            await gate.wait()
        return [i * 10 for i in items]

    batcher = GroupCommit(flush)
    first = asyncio.create_task(batcher.submit(0))
    await asyncio.sleep(0.01)  # the first flush is running, held at the gate
    rest = [asyncio.create_task(batcher.submit(i)) for i in range(1, 6)]
    await asyncio.sleep(0)
    gate.set()
    assert await asyncio.gather(first, *rest) == [0, 10, 20, 30, 40, 50]
    assert calls == [[0], [1, 2, 3, 4, 5]]


async def test_max_batch_splits_flushes() -> None:
    calls: list[list[int]] = []

    async def flush(items: list[int]) -> list[int]:
        calls.append(items)
        return items

    batcher = GroupCommit(flush, max_batch=2)
    assert await asyncio.gather(*(batcher.submit(i) for i in range(5))) == [0, 1, 2, 3, 4]
    assert calls == [[0, 1], [2, 3], [4]]


async def test_a_window_gathers_a_trickle_into_few_flushes() -> None:
    calls: list[list[int]] = []

    async def flush(items: list[int]) -> list[int]:
        calls.append(items)
        await asyncio.sleep(0.002)  # a transaction takes a moment
        return items

    batcher = GroupCommit(flush, window=0.05)

    async def trickle(i: int) -> int:
        await asyncio.sleep(0.005 * i)
        return await batcher.submit(i)

    assert await asyncio.gather(*(trickle(i) for i in range(20))) == list(range(20))
    # About 100 ms of writes, at most one flush per 50 ms window (and never one per item).
    assert len(calls) <= 5
    assert [i for call in calls for i in call] == list(range(20))


async def test_a_failed_flush_fails_its_callers_only() -> None:
    async def flush(items: list[int]) -> list[int]:
        if 13 in items:
            raise RuntimeError("store down")
        return items

    batcher = GroupCommit(flush)
    with pytest.raises(RuntimeError, match="store down"):
        await batcher.submit(13)
    assert await batcher.submit(1) == 1  # the next flush is unaffected


async def test_a_cancelled_caller_does_not_stop_the_write() -> None:
    written: list[int] = []
    gate = asyncio.Event()

    async def flush(items: list[int]) -> list[int]:
        await gate.wait()
        written.extend(items)
        return items

    batcher = GroupCommit(flush)
    caller = asyncio.create_task(batcher.submit(7))
    await asyncio.sleep(0.01)
    caller.cancel()
    gate.set()
    await batcher.drain()
    assert written == [7]
    assert caller.cancelled()


# --- Store.update_rooms -------------------------------------------------------------------


async def test_update_rooms_equals_one_call_per_room(store: Store) -> None:
    rooms = [f"room-{i}" for i in range(6)]
    b = other(store)
    assert await acquire_room(b, rooms[5], ttl=TTL, now=NOW) is not None  # someone else's
    leases = await store.update_rooms(
        acquire=[(r, True) for r in rooms], ttl=TTL, cooldown=5.0, now=NOW
    )
    assert leases == {**{r: RoomLease(r, None) for r in rooms[:5]}, rooms[5]: None}

    later = NOW + seconds(1)
    leases = await store.update_rooms(
        finish=[(rooms[0], None), (rooms[1], "HTTP 500"), (rooms[2], None)],
        acquire=[(rooms[0], True), (rooms[3], False), (rooms[5], True)],
        ttl=TTL,
        cooldown=5.0,
        now=later,
    )
    # rooms[0] finished its first complete poll, so its lease now says so.
    assert leases == {rooms[0]: RoomLease(rooms[0], later), rooms[3]: None, rooms[5]: None}
    states = {s["id"]: s for s in await store.room_states()}
    assert states[rooms[0]]["last_success_at"] == later
    assert states[rooms[1]]["last_error"] == "HTTP 500"
    assert states[rooms[1]]["first_polled_at"] is None
    assert states[rooms[2]]["first_polled_at"] == later
    # Handed back with a cooldown: nobody may take it before it ends.
    assert states[rooms[3]]["lease_owner"] is None
    assert await acquire_room(b, rooms[3], ttl=TTL, now=later + seconds(4)) is None
    assert await acquire_room(b, rooms[3], ttl=TTL, now=later + seconds(6)) is not None
    assert states[rooms[5]]["lease_owner"] == "other"


# --- Store.record_attempts ---------------------------------------------------------------


async def test_record_attempts_equals_one_call_per_attempt(store: Store) -> None:
    await seed(store, 5)
    claims = await store.claim("h", 5, ttl=TTL, now=NOW)
    assert len(claims) == 5
    # The claims expire and another instance takes the first one over meanwhile.
    (stolen,) = await other(store).claim("h", 1, ttl=TTL, now=NOW + seconds(TTL + 1))
    assert stolen.delivery_id == claims[0].delivery_id
    t = [NOW + seconds(TTL + 2 + i) for i in range(5)]
    records = [
        AttemptRecord(claims[0], t[0], 204),  # lost: left to its new owner
        AttemptRecord(claims[1], t[1], 204),
        AttemptRecord(claims[2], t[2], 500, "HTTP 500", NOW + seconds(600)),
        AttemptRecord(claims[3], t[3], None, "timed out after 10s", None),
        AttemptRecord(claims[4], t[4], 200),
    ]
    assert await store.record_attempts(records) == [False, True, True, True, True]
    assert await store.record_attempts([AttemptRecord(claims[1], t[1], 204)]) == [False]

    r0, r1, r2, r3, r4 = [await row(store, c.delivery_id) for c in claims]
    assert (r0["state"], r0["attempts"], r0["claimed_by"]) == ("pending", 0, "other")
    assert (r1["state"], r1["attempts"], r1["last_status"]) == ("delivered", 1, 204)
    assert (r1["delivered_at"], r1["last_attempt_at"], r1["claimed_by"]) == (t[1], t[1], None)
    assert (r2["state"], r2["attempts"], r2["last_error"]) == ("pending", 1, "HTTP 500")
    assert (r2["next_attempt_at"], r2["claimed_until"]) == (NOW + seconds(600), None)
    assert (r3["state"], r3["last_status"], r3["last_error"]) == (
        "dead",
        None,
        "timed out after 10s",
    )
    assert r3["delivered_at"] is None
    assert (r4["state"], r4["delivered_at"]) == ("delivered", t[4])


async def test_record_attempts_twice_in_one_batch_counts_once(store: Store) -> None:
    await seed(store, 1)
    (claim,) = await store.claim("h", 1, ttl=TTL, now=NOW)
    done = NOW + seconds(1)
    kept = await store.record_attempts(
        [AttemptRecord(claim, done, 204), AttemptRecord(claim, done, 204)]
    )
    assert kept == [True, False]
    (stored,) = await all_rows(store)
    assert (stored["state"], stored["attempts"]) == ("delivered", 1)


async def test_record_attempts_of_nothing(store: Store) -> None:
    assert await store.record_attempts([]) == []


# --- Limiter ------------------------------------------------------------------------------


async def test_limiter_bounds_holders_and_serves_waiters_in_order() -> None:
    limiter = Limiter(2)
    holding = 0
    most = 0
    order: list[int] = []

    async def hold(n: int) -> None:
        nonlocal holding, most
        async with limiter:
            order.append(n)
            holding += 1
            most = max(most, holding)
            await asyncio.sleep(0.01)
            holding -= 1

    await asyncio.gather(*(hold(n) for n in range(7)))
    assert most == 2
    assert order == list(range(7))


async def test_limiter_survives_cancelled_waiters() -> None:
    limiter = Limiter(1)
    release = asyncio.Event()

    async def holder() -> None:
        async with limiter:
            await release.wait()

    first = asyncio.create_task(holder())
    await asyncio.sleep(0)
    waiting = [asyncio.create_task(holder()) for _ in range(3)]
    await asyncio.sleep(0)
    waiting[0].cancel()  # cancelled while waiting
    await asyncio.sleep(0)
    release.set()
    waiting[1].cancel()  # may be cancelled after being handed the slot
    await asyncio.gather(first, *waiting, return_exceptions=True)
    # Every slot came back: a new holder gets in at once.
    await asyncio.wait_for(holder(), 1.0)
