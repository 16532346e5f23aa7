"""The store on SQLite and PostgreSQL: seen events, outbox fan-out, leases, claims, upkeep."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncEngine

from poller.config import Secret, WebhookConfig
from poller.events import Event
from poller.store.base import StoreClock
from poller.store.db import create_engine, migrate
from poller.store.models import deliveries, events
from poller.store.repo import Claim, DeliveryFilter, DeliveryRow, EventFilter, RoomLease, Store
from tests.storeops import (
    acquire_room,
    engine_of,
    finish_poll,
    mark_delivered,
    mark_failed,
    sibling,
)

ROOM = "639924066893d18d47c86935"
OTHER_ROOM = "63992406aaaaaaaaaaaaaaaa"
RECORDING = "beam.recording.success"
PEER_JOIN = "peer.join.success"
NOW = dt.datetime(2025, 3, 1, 12, 0, 0, 123456, tzinfo=dt.UTC)
TTL = 30.0


def seconds(value: float) -> dt.timedelta:
    return dt.timedelta(seconds=value)


def make_event(n: int, *, type: str = RECORDING, room: str = ROOM) -> Event:
    """A realistic event whose body is compact UTF-8 JSON, as the client builds it."""
    event_id = f"00000000-0000-4000-8000-{n:012d}"
    timestamp = f"2025-03-01T12:00:{n % 60:02d}.462240675Z"
    obj = {
        "version": "2.0",
        "id": event_id,
        "timestamp": timestamp,
        "type": type,
        "data": {"room_id": room, "duration": 33, "room_name": "Salle Été ☀"},
    }
    body = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
    return Event(id=event_id, type=type, timestamp=timestamp, room_id=room, body=body)


@dataclass(frozen=True)
class Hook:
    """A minimal WebhookFilter."""

    name: str
    types: frozenset[str] | None = None
    room_ids: frozenset[str] | None = None

    def matches(self, room_id: str, event_type: str) -> bool:
        return (self.types is None or event_type in self.types) and (
            self.room_ids is None or room_id in self.room_ids
        )


H = Hook("h")


@pytest.fixture
def store(engine: AsyncEngine) -> Store:
    """The store's rules under a clock the test drives: the ``now`` each call passes,
    on both backends. The database's own clock (PostgreSQL's default) is pinned by
    test_store_clock.py."""
    return Store(engine, instance_id="test-instance", clock=StoreClock.CALLER)


def other(store: Store, instance_id: str = "other") -> Store:
    """A second instance on the same database."""
    return sibling(store, instance_id)


async def seed(
    store: Store,
    n: int,
    *,
    start: int = 0,
    hooks: Sequence[Hook] = (H,),
    now: dt.datetime = NOW,
    room: str = ROOM,
) -> list[Event]:
    page = [make_event(i, room=room) for i in range(start, start + n)]
    outcome = await store.record_page(room, page, hooks, deliver=True, now=now)
    assert outcome.new == n
    return page


async def row(store: Store, delivery_id: int) -> dict[str, Any]:
    async with engine_of(store).connect() as conn:
        result = await conn.execute(select(deliveries).where(deliveries.c.id == delivery_id))
        return dict(result.one()._mapping)


async def all_rows(store: Store) -> list[dict[str, Any]]:
    async with engine_of(store).connect() as conn:
        result = await conn.execute(select(deliveries).order_by(deliveries.c.id))
        return [dict(r._mapping) for r in result]


async def event_ids(store: Store) -> set[str]:
    async with engine_of(store).connect() as conn:
        return set((await conn.execute(select(events.c.id))).scalars())


async def claim_one(store: Store, *, now: dt.datetime = NOW, webhook: str = "h") -> Claim:
    claims = await store.claim(webhook, 1, ttl=TTL, now=now)
    assert len(claims) == 1
    return claims[0]


# --- record_page --------------------------------------------------------------------


async def test_record_page_inserts_new_events_once(store: Store) -> None:
    page = [make_event(i) for i in range(3)]
    first = await store.record_page(ROOM, page, [H], deliver=True, now=NOW)
    assert (first.new, first.deliveries) == (3, 3)
    second = await store.record_page(ROOM, page, [H], deliver=True, now=NOW + seconds(30))
    assert (second.new, second.deliveries) == (0, 0)
    # A page mixing seen and unseen events: only the unseen count.
    mixed = [*page[1:], make_event(3)]
    third = await store.record_page(ROOM, mixed, [H], deliver=True, now=NOW + seconds(60))
    assert (third.new, third.deliveries) == (1, 1)
    assert await event_ids(store) == {e.id for e in [*page, make_event(3)]}
    rows = await all_rows(store)
    assert len(rows) == 4
    assert len({r["event_id"] for r in rows}) == 4


async def test_record_page_stores_the_event_as_given(store: Store) -> None:
    event = make_event(7)
    await store.record_page(ROOM, [event], [H], deliver=True, now=NOW)
    async with engine_of(store).connect() as conn:
        stored = (await conn.execute(select(events))).one()._mapping
    assert stored["id"] == event.id
    assert stored["room_id"] == ROOM
    assert stored["type"] == RECORDING
    assert stored["timestamp"] == event.timestamp  # nanoseconds kept, as the API wrote it
    assert stored["body"] == event.body  # byte for byte, non-ASCII included
    assert stored["seen_at"] == NOW
    (delivery,) = await all_rows(store)
    assert delivery["state"] == "pending"
    assert delivery["attempts"] == 0
    assert delivery["created_at"] == NOW
    assert delivery["next_attempt_at"] == NOW
    assert delivery["claimed_by"] is None


async def test_duplicate_ids_within_one_page_count_once(store: Store) -> None:
    event = make_event(1)
    page = [event, make_event(2), event, event]
    outcome = await store.record_page(ROOM, page, [H, Hook("g")], deliver=True, now=NOW)
    assert (outcome.new, outcome.deliveries) == (2, 4)
    assert len(await all_rows(store)) == 4


async def test_empty_page(store: Store) -> None:
    outcome = await store.record_page(ROOM, [], [H], deliver=True, now=NOW)
    assert (outcome.new, outcome.deliveries) == (0, 0)


async def test_fan_out_to_matching_webhooks_only(store: Store) -> None:
    hooks = [
        Hook("all"),
        Hook("recordings", types=frozenset({RECORDING})),
        Hook("joins", types=frozenset({PEER_JOIN})),
        Hook("other-room", room_ids=frozenset({OTHER_ROOM})),
        Hook("this-room-recordings", types=frozenset({RECORDING}), room_ids=frozenset({ROOM})),
    ]
    page = [make_event(1, type=RECORDING), make_event(2, type=PEER_JOIN)]
    outcome = await store.record_page(ROOM, page, hooks, deliver=True, now=NOW)
    assert (outcome.new, outcome.deliveries) == (2, 5)
    pairs = {(r["event_id"], r["webhook"]) for r in await all_rows(store)}
    assert pairs == {
        (page[0].id, "all"),
        (page[1].id, "all"),
        (page[0].id, "recordings"),
        (page[1].id, "joins"),
        (page[0].id, "this-room-recordings"),
    }


async def test_fan_out_with_real_webhook_configs(store: Store) -> None:
    def config(name: str, types: set[str] | None, room_ids: set[str] | None) -> WebhookConfig:
        return WebhookConfig(
            name=name,
            url=f"http://127.0.0.1:9/hooks/{name}",
            secret=Secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
            event_types=None if types is None else frozenset(types),
            rooms=None if room_ids is None else frozenset(room_ids),
            headers=(),
            max_concurrency=4,
        )

    hooks = [config("all", None, None), config("joins", {PEER_JOIN}, {OTHER_ROOM})]
    page = [make_event(1, room=OTHER_ROOM), make_event(2, type=PEER_JOIN, room=OTHER_ROOM)]
    outcome = await store.record_page(OTHER_ROOM, page, hooks, deliver=True, now=NOW)
    assert (outcome.new, outcome.deliveries) == (2, 3)
    outcome = await store.record_page(
        ROOM, [make_event(3, type=PEER_JOIN)], hooks, deliver=True, now=NOW
    )
    assert (outcome.new, outcome.deliveries) == (1, 1)
    assert await store.outbox_counts() == {("all", "pending"): 3, ("joins", "pending"): 1}


async def test_purge_webhook_drops_only_its_deliveries_in_batches(store: Store) -> None:
    page = [make_event(n) for n in range(5)]
    await store.record_page(ROOM, page, [Hook("gone"), Hook("kept")], deliver=True, now=NOW)
    await store.ensure_webhooks(["gone", "kept"])
    await store.webhook_failing("gone", error="503", now=NOW)
    assert "gone" in await store.webhook_states()

    assert await store.purge_webhook("gone", batch=2) == 5
    assert await store.outbox_counts() == {("kept", "pending"): 5}
    assert "gone" not in await store.webhook_states()
    assert await store.purge_webhook("gone") == 0


async def test_oldest_pending_of_some_webhooks(store: Store) -> None:
    await store.record_page(ROOM, [make_event(1)], [Hook("orphan")], deliver=True, now=NOW)
    later = NOW + dt.timedelta(minutes=5)
    await store.record_page(ROOM, [make_event(2)], [Hook("kept")], deliver=True, now=later)

    assert await store.oldest_pending() == NOW
    assert await store.oldest_pending(["kept"]) == later
    assert await store.oldest_pending([]) is None


async def test_deliver_false_records_seen_ids_without_outbox_rows(store: Store) -> None:
    page = [make_event(i) for i in range(3)]
    outcome = await store.record_page(ROOM, page, [H], deliver=False, now=NOW)
    assert (outcome.new, outcome.deliveries) == (3, 0)
    assert await event_ids(store) == {e.id for e in page}
    assert await all_rows(store) == []
    # Once seen, never delivered later either: the id, not the page, decides "new".
    again = await store.record_page(ROOM, page, [H], deliver=True, now=NOW + seconds(30))
    assert (again.new, again.deliveries) == (0, 0)
    assert await all_rows(store) == []


async def test_record_page_with_no_webhooks(store: Store) -> None:
    outcome = await store.record_page(ROOM, [make_event(1)], [], deliver=True, now=NOW)
    assert (outcome.new, outcome.deliveries) == (1, 0)


async def test_two_instances_racing_on_one_page_insert_it_once(store: Store) -> None:
    page = [make_event(i) for i in range(20)]
    a, b = store, other(store)
    one, two = await asyncio.gather(
        a.record_page(ROOM, page, [H], deliver=True, now=NOW),
        b.record_page(ROOM, page, [H], deliver=True, now=NOW),
    )
    assert one.new + two.new == 20
    assert one.deliveries + two.deliveries == 20
    assert len(await all_rows(store)) == 20


async def test_deleting_an_event_cascades_to_its_deliveries(store: Store) -> None:
    # The foreign key is enforced on both backends (SQLite: PRAGMA foreign_keys=ON).
    event, keep = await seed(store, 2)
    async with engine_of(store).begin() as conn:
        await conn.execute(delete(events).where(events.c.id == event.id))
    assert [r["event_id"] for r in await all_rows(store)] == [keep.id]


# --- room leases and poll state ----------------------------------------------------


async def test_acquire_room_lease(store: Store) -> None:
    b = other(store)
    assert await acquire_room(store, ROOM, ttl=TTL, now=NOW) == RoomLease(ROOM, None)
    # Held: another instance is refused until the lease expires.
    assert await acquire_room(b, ROOM, ttl=TTL, now=NOW + seconds(1)) is None
    assert await acquire_room(b, ROOM, ttl=TTL, now=NOW + seconds(TTL - 1)) is None
    # The owner renews.
    assert await acquire_room(store, ROOM, ttl=TTL, now=NOW + seconds(10)) == RoomLease(ROOM, None)
    assert await acquire_room(b, ROOM, ttl=TTL, now=NOW + seconds(TTL + 1)) is None
    # Expired: the other instance takes it over, and now the first one is refused.
    later = NOW + seconds(10 + TTL + 1)
    assert await acquire_room(b, ROOM, ttl=TTL, now=later) == RoomLease(ROOM, None)
    assert await acquire_room(store, ROOM, ttl=TTL, now=later + seconds(1)) is None
    (state,) = await store.room_states()
    assert state["lease_owner"] == "other"
    assert state["lease_until"] == later + seconds(TTL)
    assert state["last_polled_at"] == later


async def test_leases_are_per_room(store: Store) -> None:
    b = other(store)
    assert await acquire_room(store, ROOM, ttl=TTL, now=NOW) is not None
    assert await acquire_room(b, OTHER_ROOM, ttl=TTL, now=NOW) is not None
    assert await acquire_room(store, OTHER_ROOM, ttl=TTL, now=NOW) is None
    assert await acquire_room(b, ROOM, ttl=TTL, now=NOW) is None


async def test_release_rooms_frees_only_own_leases(store: Store) -> None:
    b, c = other(store), other(store, "third")
    await acquire_room(store, ROOM, ttl=TTL, now=NOW)
    await acquire_room(b, OTHER_ROOM, ttl=TTL, now=NOW)
    await store.release_rooms(now=NOW + seconds(1))
    states = {s["id"]: s for s in await store.room_states()}
    assert states[ROOM]["lease_owner"] is None
    assert states[OTHER_ROOM]["lease_owner"] == "other"
    # Free from the moment of release on (no cooldown by default).
    assert await acquire_room(c, ROOM, ttl=TTL, now=NOW + seconds(1.001)) is not None
    assert await acquire_room(c, OTHER_ROOM, ttl=TTL, now=NOW + seconds(2)) is None


async def test_release_rooms_with_cooldown(store: Store) -> None:
    b = other(store)
    await acquire_room(store, ROOM, ttl=TTL, now=NOW)
    await store.release_rooms(now=NOW + seconds(1), cooldown=10)
    (state,) = await store.room_states()
    assert state["lease_owner"] is None
    assert state["lease_until"] == NOW + seconds(11)
    # Nobody, the previous owner included, takes it during the cooldown.
    assert await acquire_room(b, ROOM, ttl=TTL, now=NOW + seconds(10)) is None
    assert await acquire_room(store, ROOM, ttl=TTL, now=NOW + seconds(10)) is None
    assert await acquire_room(b, ROOM, ttl=TTL, now=NOW + seconds(12)) == RoomLease(ROOM, None)


async def test_not_preferred_hands_the_room_back(store: Store) -> None:
    b = other(store)
    assert await acquire_room(store, ROOM, ttl=TTL, now=NOW) is not None
    # Not ours any more (the instance set changed): handed back, with a cooldown.
    assert await acquire_room(store, ROOM, ttl=TTL, now=NOW + seconds(1), preferred=False) is None
    (state,) = await store.room_states()
    assert state["lease_owner"] is None
    assert await acquire_room(b, ROOM, ttl=TTL, now=NOW + seconds(2)) == RoomLease(ROOM, None)
    # A non-preferred instance never takes a room, even a free one...
    assert await acquire_room(store, OTHER_ROOM, ttl=TTL, now=NOW, preferred=False) is None
    assert await acquire_room(b, OTHER_ROOM, ttl=TTL, now=NOW) is not None
    # ...and never releases someone else's.
    assert await acquire_room(store, OTHER_ROOM, ttl=TTL, now=NOW, preferred=False) is None
    assert await acquire_room(store, OTHER_ROOM, ttl=TTL, now=NOW + seconds(1)) is None
    states = {s["id"]: s for s in await store.room_states()}
    assert states[OTHER_ROOM]["lease_owner"] == "other"


async def test_not_preferred_with_cooldown(store: Store) -> None:
    b = other(store)
    await acquire_room(store, ROOM, ttl=TTL, now=NOW)
    released = NOW + seconds(1)
    await acquire_room(store, ROOM, ttl=TTL, now=released, preferred=False, cooldown=5)
    assert await acquire_room(b, ROOM, ttl=TTL, now=released + seconds(5)) is None
    assert await acquire_room(b, ROOM, ttl=TTL, now=released + seconds(6)) is not None


# --- instances ----------------------------------------------------------------------


async def test_heartbeat_lists_live_instances(store: Store) -> None:
    a, b = other(store, "a"), other(store, "b")
    assert await b.heartbeat(ttl=10, now=NOW, started_at=NOW) == ["b"]
    assert await a.heartbeat(ttl=10, now=NOW + seconds(1), started_at=NOW) == ["a", "b"]
    # b goes silent: no longer live after ttl, but still known for a while.
    assert await a.heartbeat(ttl=10, now=NOW + seconds(11), started_at=NOW) == ["a"]
    states = {s["id"]: s for s in await store.instance_states()}
    assert set(states) == {"a", "b"}
    assert states["a"]["started_at"] == NOW  # a heartbeat does not restart it
    assert states["a"]["heartbeat_at"] == NOW + seconds(11)
    assert states["b"]["heartbeat_at"] == NOW
    # Silent for ten ttls: forgotten.
    assert await a.heartbeat(ttl=10, now=NOW + seconds(101), started_at=NOW) == ["a"]
    assert [s["id"] for s in await store.instance_states()] == ["a"]
    # It may come back.
    assert await b.heartbeat(ttl=10, now=NOW + seconds(102), started_at=NOW) == ["a", "b"]


async def test_deregister(store: Store) -> None:
    a, b = other(store, "a"), other(store, "b")
    await a.heartbeat(ttl=10, now=NOW, started_at=NOW)
    await b.heartbeat(ttl=10, now=NOW, started_at=NOW)
    await a.deregister()
    assert [s["id"] for s in await store.instance_states()] == ["b"]
    assert await b.heartbeat(ttl=10, now=NOW + seconds(1), started_at=NOW) == ["b"]
    await a.deregister()  # twice is harmless


async def test_first_polled_at_is_set_by_the_first_successful_poll(store: Store) -> None:
    assert await acquire_room(store, ROOM, ttl=TTL, now=NOW) == RoomLease(ROOM, None)
    await finish_poll(store, ROOM, error="HTTP 500 from the API", now=NOW + seconds(1))
    lease = await acquire_room(store, ROOM, ttl=TTL, now=NOW + seconds(2))
    # A failed poll is not a complete poll; it is counted.
    assert lease == RoomLease(ROOM, None, failed_walks=1)
    (state,) = await store.room_states()
    assert state["last_error"] == "HTTP 500 from the API"
    assert state["last_success_at"] is None

    done = NOW + seconds(3)
    await finish_poll(store, ROOM, error=None, now=done)
    assert await acquire_room(store, ROOM, ttl=TTL, now=NOW + seconds(4)) == RoomLease(ROOM, done)
    (state,) = await store.room_states()
    assert state["last_error"] is None
    assert state["last_success_at"] == done

    # Later polls, failed or not, never move it.
    await finish_poll(store, ROOM, error="boom", now=NOW + seconds(5))
    await finish_poll(store, ROOM, error=None, now=NOW + seconds(6))
    lease = await acquire_room(other(store), ROOM, ttl=TTL, now=NOW + seconds(100))
    assert lease == RoomLease(ROOM, done)
    (state,) = await store.room_states()
    assert state["last_success_at"] == NOW + seconds(6)


async def test_failed_walks_count_in_a_row_and_a_baseline_can_end_without_success(
    store: Store,
) -> None:
    await acquire_room(store, ROOM, ttl=TTL, now=NOW)
    for i in range(2):
        await store.update_rooms(finish=[(ROOM, "capped")], now=NOW + seconds(i))
    lease = await acquire_room(store, ROOM, ttl=TTL, now=NOW + seconds(3))
    assert lease == RoomLease(ROOM, None, failed_walks=2)

    ended = NOW + seconds(4)
    await store.update_rooms(finish=[(ROOM, "capped")], baseline={ROOM}, now=ended)
    lease = await acquire_room(store, ROOM, ttl=TTL, now=NOW + seconds(5))
    assert lease == RoomLease(ROOM, ended, failed_walks=3)
    (state,) = await store.room_states()
    assert (state["last_success_at"], state["last_error"]) == (None, "capped")

    await store.update_rooms(finish=[(ROOM, None)], now=NOW + seconds(6))
    lease = await acquire_room(store, ROOM, ttl=TTL, now=NOW + seconds(7))
    assert lease == RoomLease(ROOM, ended, failed_walks=0)


# --- claims -------------------------------------------------------------------------


async def test_claim_only_due_pending_unclaimed_rows(store: Store) -> None:
    page = await seed(store, 4)
    assert await store.claim("h", 10, ttl=TTL, now=NOW - seconds(1)) == []  # not due yet
    assert await store.claim("nobody", 10, ttl=TTL, now=NOW) == []  # another webhook's
    first = await claim_one(store)
    delivered = await claim_one(store)
    await mark_delivered(store, delivered, status=204, now=NOW)
    dead = await claim_one(store)
    await mark_failed(store, dead, status=410, error="HTTP 410", retry_at=None, now=NOW)
    rest = await store.claim("h", 10, ttl=TTL, now=NOW + seconds(1))
    assert [c.event_id for c in rest] == [page[3].id]
    assert first.event_id == page[0].id
    # Nothing left for anyone until the claims expire.
    assert await other(store).claim("h", 10, ttl=TTL, now=NOW + seconds(2)) == []


async def test_claim_returns_what_a_sender_needs(store: Store) -> None:
    (event,) = await seed(store, 1)
    (claim,) = await store.claim("h", 5, ttl=TTL, now=NOW + seconds(1))
    assert claim.event_id == event.id
    assert claim.webhook == "h"
    assert claim.attempts == 0
    assert claim.body == event.body
    assert claim.created_at == NOW
    stored = await row(store, claim.delivery_id)
    assert stored["claimed_by"] == "test-instance"
    assert stored["claimed_until"] == NOW + seconds(1 + TTL)


async def test_claim_respects_limit(store: Store) -> None:
    await seed(store, 5)
    assert await store.claim("h", 0, ttl=TTL, now=NOW) == []
    two = await store.claim("h", 2, ttl=TTL, now=NOW)
    three = await store.claim("h", 10, ttl=TTL, now=NOW)
    assert len(two) == 2
    assert len(three) == 3
    ids = [c.delivery_id for c in two + three]
    assert len(set(ids)) == 5
    assert ids == sorted(ids)  # equal due times: oldest row first


async def test_claim_orders_by_next_attempt_at(store: Store) -> None:
    await seed(store, 3)
    claims = await store.claim("h", 3, ttl=TTL, now=NOW)
    # Reschedule in the reverse of their creation order.
    for claim, delay in zip(claims, (30, 20, 10), strict=True):
        assert await mark_failed(
            store, claim, status=500, error="HTTP 500", retry_at=NOW + seconds(delay), now=NOW
        )
    later = NOW + seconds(60)
    order = [(await claim_one(store, now=later)).delivery_id for _ in range(3)]
    assert order == [c.delivery_id for c in reversed(claims)]


async def test_claim_expires_and_can_be_taken_by_another_instance(store: Store) -> None:
    await seed(store, 3)
    mine = await store.claim("h", 10, ttl=TTL, now=NOW)
    assert len(mine) == 3
    b = other(store)
    assert await b.claim("h", 10, ttl=TTL, now=NOW + seconds(TTL - 1)) == []
    assert await store.claim("h", 10, ttl=TTL, now=NOW + seconds(TTL - 1)) == []
    theirs = await b.claim("h", 10, ttl=TTL, now=NOW + seconds(TTL + 1))
    assert sorted(c.delivery_id for c in theirs) == sorted(c.delivery_id for c in mine)
    assert all(c.attempts == 0 for c in theirs)
    for c in theirs:
        assert (await row(store, c.delivery_id))["claimed_by"] == "other"


async def test_mark_delivered(store: Store) -> None:
    await seed(store, 1)
    claim = await claim_one(store)
    done = NOW + seconds(2)
    assert await mark_delivered(store, claim, status=204, now=done) is True
    stored = await row(store, claim.delivery_id)
    assert stored["state"] == "delivered"
    assert stored["attempts"] == 1
    assert stored["last_status"] == 204
    assert stored["last_error"] is None
    assert stored["delivered_at"] == done
    assert stored["last_attempt_at"] == done
    assert stored["claimed_by"] is None
    assert stored["claimed_until"] is None
    # Finishing the same claim twice is refused.
    assert await mark_delivered(store, claim, status=204, now=done) is False
    assert await mark_failed(store, claim, status=500, error="x", retry_at=None, now=done) is False
    assert (await row(store, claim.delivery_id))["attempts"] == 1


async def test_mark_failed_reschedules(store: Store) -> None:
    await seed(store, 1)
    claim = await claim_one(store)
    retry_at = NOW + seconds(5)
    assert await mark_failed(
        store, claim, status=500, error="HTTP 500", retry_at=retry_at, now=NOW + seconds(1)
    )
    stored = await row(store, claim.delivery_id)
    assert stored["state"] == "pending"
    assert stored["attempts"] == 1
    assert stored["next_attempt_at"] == retry_at
    assert stored["last_attempt_at"] == NOW + seconds(1)
    assert stored["last_status"] == 500
    assert stored["last_error"] == "HTTP 500"
    assert stored["delivered_at"] is None
    assert stored["claimed_by"] is None
    assert stored["claimed_until"] is None
    # Not due before retry_at, due at it, and the attempt count travels with the claim.
    assert await store.claim("h", 1, ttl=TTL, now=retry_at - seconds(0.001)) == []
    again = await claim_one(store, now=retry_at)
    assert again.attempts == 1
    assert await mark_failed(
        store,
        again,
        status=None,
        error="timed out after 10s",
        retry_at=NOW + seconds(60),
        now=retry_at,
    )
    stored = await row(store, claim.delivery_id)
    assert stored["attempts"] == 2
    assert stored["last_status"] is None
    assert stored["last_error"] == "timed out after 10s"


async def test_mark_failed_without_retry_is_dead(store: Store) -> None:
    await seed(store, 1)
    claim = await claim_one(store)
    assert await mark_failed(
        store, claim, status=503, error="HTTP 503", retry_at=None, now=NOW + seconds(1)
    )
    stored = await row(store, claim.delivery_id)
    assert stored["state"] == "dead"
    assert stored["attempts"] == 1
    assert stored["last_status"] == 503
    assert stored["last_error"] == "HTTP 503"
    assert stored["claimed_by"] is None
    assert await store.claim("h", 10, ttl=TTL, now=NOW + seconds(3600)) == []


async def test_lost_claim_does_not_overwrite(store: Store) -> None:
    await seed(store, 1)
    stale = await claim_one(store)
    b = other(store)
    # The claim expires (this instance hung); another instance takes the delivery over.
    fresh = await claim_one(b, now=NOW + seconds(TTL + 1))
    assert await mark_delivered(store, stale, status=200, now=NOW + seconds(TTL + 2)) is False
    assert (
        await mark_failed(
            store, stale, status=500, error="HTTP 500", retry_at=None, now=NOW + seconds(TTL + 2)
        )
        is False
    )
    stored = await row(store, stale.delivery_id)
    assert stored["state"] == "pending"
    assert stored["attempts"] == 0
    assert stored["claimed_by"] == "other"
    # The new owner finishes it; the stale one still cannot touch it afterwards.
    assert await mark_failed(
        b, fresh, status=502, error="HTTP 502", retry_at=None, now=NOW + seconds(TTL + 3)
    )
    assert await mark_delivered(store, stale, status=200, now=NOW + seconds(TTL + 4)) is False
    stored = await row(store, stale.delivery_id)
    assert (stored["state"], stored["attempts"], stored["last_status"]) == ("dead", 1, 502)


async def test_release_claims_frees_only_own_claims(store: Store) -> None:
    await seed(store, 5)
    b = other(store)
    mine = await store.claim("h", 2, ttl=TTL, now=NOW)
    theirs = await b.claim("h", 2, ttl=TTL, now=NOW)
    finished = await store.claim("h", 1, ttl=TTL, now=NOW)
    await mark_delivered(store, finished[0], status=200, now=NOW)
    assert await store.release_claims() == 2
    rows = {r["id"]: r for r in await all_rows(store)}
    assert all(rows[c.delivery_id]["claimed_by"] is None for c in mine)
    assert all(rows[c.delivery_id]["claimed_until"] is None for c in mine)
    assert all(rows[c.delivery_id]["claimed_by"] == "other" for c in theirs)
    assert rows[finished[0].delivery_id]["state"] == "delivered"
    # Released rows are claimable at once by anyone, attempts unchanged.
    again = await other(store, "third").claim("h", 10, ttl=TTL, now=NOW + seconds(1))
    assert sorted(c.delivery_id for c in again) == sorted(c.delivery_id for c in mine)
    assert all(c.attempts == 0 for c in again)
    assert await store.release_claims() == 0


async def test_take_over_releases_what_a_killed_run_left(store: Store) -> None:
    await seed(store, 4)
    dead_run = other(store, "host:111")
    await dead_run.heartbeat(ttl=10, now=NOW, started_at=NOW)
    await acquire_room(dead_run, ROOM, ttl=TTL, now=NOW)
    await acquire_room(dead_run, OTHER_ROOM, ttl=TTL, now=NOW)
    claimed = await dead_run.claim("h", 3, ttl=TTL, now=NOW)
    await mark_delivered(dead_run, claimed[0], status=200, now=NOW)
    await dead_run.claim("h", 1, ttl=TTL, now=NOW)
    await store.heartbeat(ttl=10, now=NOW, started_at=NOW)

    assert await store.take_over() == (3, 2)
    rows = await all_rows(store)
    assert all(r["claimed_by"] is None and r["claimed_until"] is None for r in rows)
    assert sum(r["state"] == "delivered" for r in rows) == 1
    assert all(s["lease_owner"] is None for s in await store.room_states())
    # Every row, its own id's too: a restart under the same id must not wait on itself.
    assert await store.instance_states() == []
    # Everything is available to this run right away.
    assert len(await store.claim("h", 10, ttl=TTL, now=NOW + seconds(1))) == 3
    assert await acquire_room(store, ROOM, ttl=TTL, now=NOW + seconds(1)) is not None


# --- inspection ---------------------------------------------------------------------


async def test_next_due(store: Store) -> None:
    assert await store.next_due(["h"], now=NOW) is None
    assert await store.next_due([], now=NOW) is None
    await seed(store, 2, hooks=[H, Hook("g")])
    assert await store.next_due(["h"], now=NOW) == NOW
    assert await store.next_due(["nobody"], now=NOW) is None
    one, two = await store.claim("h", 2, ttl=TTL, now=NOW)
    assert await store.next_due(["h"], now=NOW) is None  # claimed rows are not "due"
    assert await store.next_due(["h", "g"], now=NOW) == NOW
    # ...until their claim expires: then claim() takes them, so they are due as it says.
    assert await store.next_due(["h"], now=NOW + seconds(TTL + 1)) == NOW
    await mark_failed(store, one, status=500, error="x", retry_at=NOW + seconds(9), now=NOW)
    await mark_failed(store, two, status=500, error="x", retry_at=NOW + seconds(5), now=NOW)
    due = await store.next_due(["h"], now=NOW)
    assert due == NOW + seconds(5)
    assert due is not None
    assert due.tzinfo is not None
    await mark_failed(
        store,
        await claim_one(store, now=NOW + seconds(6)),
        status=500,
        error="x",
        retry_at=None,
        now=NOW,
    )
    assert await store.next_due(["h"], now=NOW) == NOW + seconds(9)  # dead rows are never due


async def test_outbox_counts(store: Store) -> None:
    assert await store.outbox_counts() == {}
    await seed(store, 4, hooks=[H, Hook("g", types=frozenset({PEER_JOIN}))])
    await seed(store, 1, start=10, hooks=[Hook("g")])
    delivered, dead = await store.claim("h", 2, ttl=TTL, now=NOW)
    await mark_delivered(store, delivered, status=200, now=NOW)
    await mark_failed(store, dead, status=500, error="x", retry_at=None, now=NOW)
    assert await store.outbox_counts() == {
        ("h", "pending"): 2,
        ("h", "delivered"): 1,
        ("h", "dead"): 1,
        ("g", "pending"): 1,
    }


async def test_oldest_pending(store: Store) -> None:
    assert await store.oldest_pending() is None
    await seed(store, 1, now=NOW)
    await seed(store, 1, start=1, now=NOW + seconds(10))
    assert await store.oldest_pending() == NOW
    first = await claim_one(store, now=NOW + seconds(20))
    assert first.created_at == NOW
    await mark_delivered(store, first, status=200, now=NOW + seconds(20))
    oldest = await store.oldest_pending()
    assert oldest == NOW + seconds(10)
    assert oldest is not None
    assert oldest.tzinfo is not None
    await mark_failed(
        store,
        await claim_one(store, now=NOW + seconds(20)),
        status=500,
        error="x",
        retry_at=None,
        now=NOW,
    )
    assert await store.oldest_pending() is None


async def test_list_deliveries_filters(store: Store) -> None:
    page = await seed(store, 3, hooks=[H, Hook("g")])
    a, b = await store.claim("h", 2, ttl=TTL, now=NOW)
    await mark_delivered(store, a, status=200, now=NOW)
    await mark_failed(store, b, status=500, error="HTTP 500", retry_at=None, now=NOW)

    everything = await store.list_deliveries()
    assert len(everything) == 6
    assert all(isinstance(d, DeliveryRow) for d in everything)
    assert [d.id for d in everything] == sorted((d.id for d in everything), reverse=True)
    assert {(d.room_id, d.event_type) for d in everything} == {(ROOM, RECORDING)}

    dead = await store.list_deliveries(DeliveryFilter(state="dead"))
    assert [(d.id, d.event_id, d.webhook) for d in dead] == [(b.delivery_id, b.event_id, "h")]
    assert (dead[0].attempts, dead[0].last_status, dead[0].last_error) == (1, 500, "HTTP 500")
    assert dead[0].created_at == NOW
    assert dead[0].last_attempt_at == NOW
    assert dead[0].delivered_at is None
    assert await store.delivery(a.delivery_id) == next(
        d for d in everything if d.id == a.delivery_id
    )
    assert (await store.delivery(a.delivery_id)).delivered_at == NOW  # type: ignore[union-attr]
    assert await store.delivery(10**9) is None

    g_rows = await store.list_deliveries(DeliveryFilter(webhook="g"))
    assert {d.event_id for d in g_rows} == {e.id for e in page}
    assert all(d.state == "pending" for d in g_rows)
    pending_h = await store.list_deliveries(DeliveryFilter(webhook="h", state="pending"))
    assert [d.event_id for d in pending_h] == [page[2].id]
    newest_two = await store.list_deliveries(limit=2)
    assert [d.id for d in newest_two] == [d.id for d in everything[:2]]
    assert await store.list_deliveries(DeliveryFilter(webhook="nobody")) == []


async def test_list_deliveries_by_room_and_creation_time(store: Store) -> None:
    early = await seed(store, 2, now=NOW)
    late = await seed(store, 1, start=2, now=NOW + seconds(3600), room=OTHER_ROOM)

    def ids(rows: Sequence[DeliveryRow]) -> set[str]:
        return {r.event_id for r in rows}

    assert ids(await store.list_deliveries(DeliveryFilter(room_id=OTHER_ROOM))) == {late[0].id}
    assert ids(await store.list_deliveries(DeliveryFilter(room_id=ROOM))) == {e.id for e in early}
    later = DeliveryFilter(since=NOW + seconds(1))
    assert ids(await store.list_deliveries(later)) == {late[0].id}
    # ``since`` includes its instant, ``until`` excludes its own.
    assert len(await store.list_deliveries(DeliveryFilter(since=NOW))) == 3
    assert ids(await store.list_deliveries(DeliveryFilter(until=NOW + seconds(3600)))) == {
        e.id for e in early
    }
    assert await store.list_deliveries(DeliveryFilter(room_id=ROOM, since=NOW + seconds(1))) == []


async def test_retry_dead_deliveries(store: Store) -> None:
    await seed(store, 4, hooks=[H, Hook("g")])
    claims = await store.claim("h", 3, ttl=TTL, now=NOW) + await store.claim(
        "g", 1, ttl=TTL, now=NOW
    )
    for claim in claims[1:]:
        await mark_failed(store, claim, status=500, error="HTTP 500", retry_at=None, now=NOW)
    await mark_delivered(store, claims[0], status=200, now=NOW)
    dead_h = [c.delivery_id for c in claims[1:3]]
    dead_g = claims[3].delivery_id

    later = NOW + seconds(3600)
    assert await store.retry(ids=[dead_h[0], claims[0].delivery_id], now=later) == 1
    stored = await row(store, dead_h[0])
    assert (stored["state"], stored["attempts"], stored["last_error"]) == ("pending", 0, None)
    assert stored["next_attempt_at"] == later
    assert (await row(store, claims[0].delivery_id))["state"] == "delivered"  # untouched

    assert await store.retry(webhook="g", now=later) == 1
    assert (await row(store, dead_g))["state"] == "pending"
    assert (await row(store, dead_h[1]))["state"] == "dead"
    assert await store.retry(now=later) == 1  # all remaining dead ones
    assert await store.retry(now=later) == 0
    assert await store.outbox_counts() == {
        ("h", "delivered"): 1,
        ("h", "pending"): 3,
        ("g", "pending"): 4,
    }
    # Retried rows are due and claimable at once, with a fresh attempt count.
    again = await store.claim("h", 10, ttl=TTL, now=later)
    assert {c.delivery_id for c in again} >= set(dead_h)
    assert all(c.attempts == 0 for c in again)


async def test_prune_forgets_only_old_fully_delivered_events(store: Store) -> None:
    old = NOW - dt.timedelta(days=40)
    g = Hook("g")
    done, half, dead = await seed(store, 3, hooks=[H, g], now=old)
    quiet = make_event(3)  # seen without deliveries (backfill off)
    await store.record_page(ROOM, [quiet], [H, g], deliver=False, now=old)
    (recent,) = await seed(store, 1, start=4, hooks=[H, g], now=NOW)

    async def finish(event: Event, webhook: str, *, ok: bool) -> None:
        for claim in await store.claim(webhook, 10, ttl=TTL, now=NOW):
            if claim.event_id == event.id:
                if ok:
                    assert await mark_delivered(store, claim, status=200, now=NOW)
                else:
                    assert await mark_failed(
                        store, claim, status=500, error="x", retry_at=None, now=NOW
                    )
        await store.release_claims()

    for hook in ("h", "g"):
        await finish(done, hook, ok=True)
        await finish(recent, hook, ok=True)
    await finish(half, "h", ok=True)  # "g" still pending
    await finish(dead, "h", ok=True)
    await finish(dead, "g", ok=False)

    cutoff = NOW - dt.timedelta(days=31)
    assert await store.prune(seen_before=cutoff, batch=1) == 2
    assert await event_ids(store) == {half.id, dead.id, recent.id}
    remaining = {(r["event_id"], r["webhook"]) for r in await all_rows(store)}
    assert remaining == {
        (half.id, "h"),
        (half.id, "g"),
        (dead.id, "h"),
        (dead.id, "g"),
        (recent.id, "h"),
        (recent.id, "g"),
    }
    assert await store.prune(seen_before=cutoff) == 0
    # A pruned id is new again (the API no longer returns it, so this is moot in practice).
    outcome = await store.record_page(ROOM, [done], [H], deliver=True, now=NOW)
    assert outcome.new == 1


async def test_prune_in_batches(store: Store) -> None:
    old = NOW - dt.timedelta(days=40)
    page = [make_event(i) for i in range(7)]
    await store.record_page(ROOM, page, [H], deliver=False, now=old)
    assert await store.prune(seen_before=NOW, batch=3) == 7
    assert await event_ids(store) == set()


# --- several instances on PostgreSQL --------------------------------------------------


@pytest.mark.postgres
async def test_concurrent_claims_never_overlap_on_postgresql(pg_url: str) -> None:
    engines = [create_engine(pg_url), create_engine(pg_url)]
    try:
        await migrate(engines[0])
        a = Store(engines[0], instance_id="a", clock=StoreClock.CALLER)
        b = Store(engines[1], instance_id="b", clock=StoreClock.CALLER)
        total = 200
        page = [make_event(i) for i in range(total)]
        await a.record_page(ROOM, page, [H], deliver=True, now=NOW)

        seen: dict[int, str] = {}
        rounds = 0
        while len(seen) < total:
            rounds += 1
            assert rounds < 100, "claims stopped making progress"
            # Several claims in flight at once from each instance (each engine has a pool).
            batches = await asyncio.gather(
                *(s.claim("h", 7, ttl=TTL, now=NOW) for s in (a, b, a, b, a, b))
            )
            for s, claims in zip((a, b, a, b, a, b), batches, strict=True):
                for c in claims:
                    assert c.delivery_id not in seen, f"claimed twice: {c.delivery_id}"
                    seen[c.delivery_id] = s.instance_id
        assert len(seen) == total
        assert set(seen.values()) == {"a", "b"}
        rows = await all_rows(a)
        assert {r["id"]: r["claimed_by"] for r in rows} == seen
        assert await a.claim("h", 10, ttl=TTL, now=NOW) == []
    finally:
        for engine in engines:
            await engine.dispose()


@pytest.mark.postgres
async def test_concurrent_mark_after_expiry_has_one_winner_on_postgresql(pg_url: str) -> None:
    engines = [create_engine(pg_url), create_engine(pg_url)]
    try:
        await migrate(engines[0])
        a = Store(engines[0], instance_id="a", clock=StoreClock.CALLER)
        b = Store(engines[1], instance_id="b", clock=StoreClock.CALLER)
        await seed(a, 20)
        stale = await a.claim("h", 20, ttl=TTL, now=NOW)
        fresh = await b.claim("h", 20, ttl=TTL, now=NOW + seconds(TTL + 1))
        results = await asyncio.gather(
            *(mark_delivered(a, c, status=200, now=NOW + seconds(TTL + 2)) for c in stale),
            *(mark_delivered(b, c, status=200, now=NOW + seconds(TTL + 2)) for c in fresh),
        )
        assert results == [False] * 20 + [True] * 20
        assert all(r["attempts"] == 1 for r in await all_rows(a))
    finally:
        for engine in engines:
            await engine.dispose()


# --- replay ---------------------------------------------------------------------------


async def test_replay_owes_stored_events_again_and_leaves_pending_ones(store: Store) -> None:
    a_events = await seed(store, 3, hooks=[H])
    (b_event,) = await seed(store, 1, start=3, hooks=[], room=OTHER_ROOM, now=NOW + seconds(60))
    first, second, third = await store.claim("h", 3, ttl=TTL, now=NOW)
    await mark_delivered(store, first, status=200, now=NOW)
    await mark_failed(store, second, status=500, error="HTTP 500", retry_at=None, now=NOW)
    await store.release_claims([third])  # still pending

    everything = EventFilter()
    assert await store.replay("h", everything, now=NOW, dry_run=True) == 3
    assert (
        await store.replay("h", EventFilter(room_ids=frozenset({ROOM})), now=NOW, dry_run=True) == 2
    )
    assert await store.replay("h", EventFilter(since=NOW + seconds(1)), now=NOW, dry_run=True) == 1
    assert await store.replay("h", EventFilter(types=frozenset({PEER_JOIN})), now=NOW) == 0

    later = NOW + seconds(3600)
    assert await store.replay("h", everything, now=later) == 3
    rows = {r["event_id"]: r for r in await all_rows(store)}
    assert len(rows) == 4  # one delivery per event and webhook, as before
    for event in (a_events[0], a_events[1], b_event):
        row_ = rows[event.id]
        assert (row_["state"], row_["attempts"], row_["next_attempt_at"]) == ("pending", 0, later)
        assert (row_["created_at"], row_["delivered_at"], row_["last_error"]) == (later, None, None)
    assert rows[a_events[2].id]["created_at"] == NOW  # left as it was
    # Everything is owed now: nothing more to replay until it is delivered.
    assert await store.replay("h", everything, now=later, dry_run=True) == 0
    claims = await store.claim("h", 10, ttl=TTL, now=later)
    assert {c.event_id for c in claims} == {e.id for e in [*a_events, b_event]}
