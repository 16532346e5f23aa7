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


class Recorded:
    """A flush that refuses some items (the whole batch fails), recording every call."""

    def __init__(self, refused: set[int]) -> None:
        self.refused = refused
        self.calls: list[list[int]] = []

    async def __call__(self, items: list[int]) -> list[int]:
        self.calls.append(items)
        bad = [i for i in items if i in self.refused]
        if bad:
            raise ValueError(f"refused {bad}")
        return [i * 10 for i in items]


async def settle(batcher: GroupCommit[int, int], items: range) -> list[int | BaseException]:
    """Submit ``items`` while no flush runs, so that they go in one batch."""
    return await asyncio.gather(*(batcher.submit(i) for i in items), return_exceptions=True)


async def test_a_failed_batch_is_retried_item_by_item() -> None:
    flush = Recorded(refused={2})
    results = await settle(GroupCommit(flush), range(5))
    assert results[:2] == [0, 10]
    assert results[3:] == [30, 40]
    assert isinstance(results[2], ValueError)
    assert str(results[2]) == "refused [2]"  # its own write's error, not the batch's
    assert flush.calls == [[0, 1, 2, 3, 4], [0], [1], [2], [3], [4]]


async def test_a_bad_first_item_fails_only_itself() -> None:
    flush = Recorded(refused={0})
    results = await settle(GroupCommit(flush), range(4))
    assert isinstance(results[0], ValueError)
    assert results[1:] == [10, 20, 30]


async def test_a_failing_store_costs_a_few_retries_not_one_per_item() -> None:
    flush = Recorded(refused=set(range(100)))
    results = await settle(GroupCommit(flush), range(100))
    assert all(isinstance(r, ValueError) for r in results)
    assert [len(call) for call in flush.calls] == [100, 1, 1]  # two probes, then given up
    assert [str(r) for r in results[:2]] == ["refused [0]", "refused [1]"]
    assert str(results[50]) == f"refused {list(range(100))}"  # the batch's own error


async def test_a_lone_failed_item_is_not_retried() -> None:
    flush = Recorded(refused={7})
    with pytest.raises(ValueError, match=r"refused \[7\]"):
        await GroupCommit(flush).submit(7)
    assert flush.calls == [[7]]


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


def refused_room_ids(store: Store) -> list[str]:
    """Room ids the store's backend refuses (past the config's checks, which refuse them)."""
    ids = ["room-\ud800"]  # no driver can encode a lone surrogate
    if store.single_instance:
        return ids
    return [*ids, "r" * 300, "room-\x00"]  # PostgreSQL: varchar(255), no NUL in text


async def test_a_room_the_store_refuses_fails_only_its_own_poll(store: Store) -> None:
    calls: list[list[str]] = []

    async def acquire(room_ids: list[str]) -> list[RoomLease | None]:
        # As the poller's bookkeeping does: one update_rooms for every poll in flight.
        calls.append(room_ids)
        leases = await store.update_rooms(
            acquire=[(r, True) for r in room_ids], ttl=TTL, cooldown=0.0, now=NOW
        )
        return [leases[r] for r in room_ids]

    bad = refused_room_ids(store)
    good = [f"room-{i}" for i in range(4)]
    batcher = GroupCommit(acquire)
    submitted = [good[0], *bad[:1], good[1], *bad[1:], *good[2:]]
    results = await asyncio.gather(*(batcher.submit(r) for r in submitted), return_exceptions=True)
    assert calls[0] == submitted  # one batch, then each room alone
    outcome = dict(zip(submitted, results, strict=True))
    assert all(isinstance(outcome[r], Exception) for r in bad)
    assert all(outcome[r] == RoomLease(r, None) for r in good)
    states = {s["id"]: s for s in await store.room_states()}
    assert sorted(states) == sorted(good)
    assert all(states[r]["lease_owner"] == store.instance_id for r in good)


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


async def test_an_outcome_the_store_refuses_fails_only_its_own_delivery(store: Store) -> None:
    await seed(store, 4)
    claims = await store.claim("h", 4, ttl=TTL, now=NOW)
    done = NOW + seconds(1)
    # As the delivery worker does: one record_attempts for every outcome meanwhile. The
    # sender makes every error storable; this one is injected past it.
    refused = "HTTP 500 \ud800" if store.single_instance else "HTTP 500 \x00"
    records = [
        AttemptRecord(claims[0], done, 204),
        AttemptRecord(claims[1], done, 500, refused, None),
        AttemptRecord(claims[2], done, 500, "HTTP 500", None),
        AttemptRecord(claims[3], done, 204),
    ]
    batcher = GroupCommit(store.record_attempts)
    results = await asyncio.gather(*(batcher.submit(r) for r in records), return_exceptions=True)
    assert [results[0], results[2], results[3]] == [True, True, True]
    assert isinstance(results[1], Exception)
    r0, r1, r2, r3 = [await row(store, c.delivery_id) for c in claims]
    assert (r0["state"], r2["state"], r3["state"]) == ("delivered", "dead", "delivered")
    assert (r1["state"], r1["attempts"], r1["claimed_by"]) == ("pending", 0, "test-instance")


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
