"""RoomPoller against the fake 100ms API and a real store (SQLite and PostgreSQL)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import pytest

from poller.hms.client import HmsClient
from poller.hms.token import MintedTokens
from poller.poll import PollResult, RoomPoller
from poller.simulator import Simulator
from poller.store.repo import Store
from tests.conftest import ACCESS_KEY, APP_SECRET
from tests.storeops import acquire_room, sibling


@dataclass(frozen=True)
class Hook:
    name: str
    types: frozenset[str] | None = None

    def matches(self, room_id: str, event_type: str) -> bool:
        return self.types is None or event_type in self.types


@pytest.fixture
async def client(simulator: Simulator) -> AsyncIterator[HmsClient]:
    async with aiohttp.ClientSession() as session:
        yield HmsClient(
            session,
            simulator.base_url,
            MintedTokens(ACCESS_KEY, APP_SECRET),
            request_timeout=2.0,
            max_attempts=2,
            backoff_base=0.001,
        )


def make_poller(
    client: HmsClient,
    store: Store,
    *,
    backfill: bool = True,
    hooks: tuple[Hook, ...] = (Hook("a"),),
    results: list[PollResult] | None = None,
) -> RoomPoller:
    return RoomPoller(
        client,
        store,
        hooks,
        event_types=["beam.recording.success", "recording.failed"],
        page_size=3,
        backfill=backfill,
        lease_ttl=30.0,
        on_poll=(results.append if results is not None else lambda _: None),
    )


async def test_first_poll_walks_every_page_and_fans_out(
    client: HmsClient, store: Store, simulator: Simulator
) -> None:
    for _ in range(7):
        simulator.add_event("r1")
    simulator.add_event("r1", type="recording.failed")
    hooks = (Hook("all"), Hook("failures", frozenset({"recording.failed"})))
    woken: list[int] = []
    poller = RoomPoller(
        client,
        store,
        hooks,
        event_types=["beam.recording.success", "recording.failed"],
        page_size=3,
        backfill=True,
        lease_ttl=30.0,
        on_new_deliveries=lambda: woken.append(1),
    )

    result = await poller.poll("r1")

    assert (result.outcome, result.pages, result.events, result.new) == ("ok", 3, 8, 8)
    assert result.deliveries == 8 + 1
    assert woken  # delivery is told as soon as a page brought new rows
    counts = await store.outbox_counts()
    assert counts == {("all", "pending"): 8, ("failures", "pending"): 1}
    # The next poll sees the same events: nothing is new, nothing owed twice.
    again = await poller.poll("r1")
    assert (again.new, again.deliveries) == (0, 0)


async def test_without_backfill_existing_events_are_seen_not_delivered(
    client: HmsClient, store: Store, simulator: Simulator
) -> None:
    simulator.add_event("r1")
    simulator.add_event("r1")
    poller = make_poller(client, store, backfill=False)

    first = await poller.poll("r1")
    assert (first.new, first.deliveries) == (2, 0)

    late = simulator.add_event("r1")
    second = await poller.poll("r1")
    assert (second.new, second.deliveries) == (1, 1)
    rows = await store.list_deliveries()
    assert [r.event_id for r in rows] == [late["id"]]


async def test_a_failed_first_poll_keeps_the_room_in_its_backfill_phase(
    client: HmsClient, store: Store, simulator: Simulator
) -> None:
    simulator.add_event("r1")
    poller = make_poller(client, store, backfill=False)
    simulator.inject("500", times=2)  # both attempts of the first page

    failed = await poller.poll("r1")
    assert failed.outcome == "error"
    assert (await store.room_states())[0]["first_polled_at"] is None
    assert "500" in (await store.room_states())[0]["last_error"]

    simulator.add_event("r1")
    ok = await poller.poll("r1")
    # Still the first complete poll: everything present is "already there".
    assert (ok.outcome, ok.new, ok.deliveries) == ("ok", 2, 0)
    state = (await store.room_states())[0]
    assert state["first_polled_at"] is not None
    assert state["last_error"] is None


async def test_a_room_leased_by_another_instance_is_not_polled(
    client: HmsClient, store: Store, simulator: Simulator
) -> None:
    simulator.add_event("r1")
    other = sibling(store, "other-instance")
    from poller.timeutil import utcnow

    assert await acquire_room(other, "r1", ttl=60, now=utcnow()) is not None
    before = len(simulator.requests)
    results: list[PollResult] = []

    result = await make_poller(client, store, results=results).poll("r1")

    assert result.outcome == "leased"
    assert len(simulator.requests) == before
    assert results == [result]


async def test_malformed_events_are_skipped_and_the_rest_kept(
    client: HmsClient, store: Store, simulator: Simulator
) -> None:
    for _ in range(2):
        simulator.add_event("r1")
    simulator.inject("bad_event")

    result = await make_poller(client, store).poll("r1")

    assert (result.outcome, result.skipped, result.new) == ("ok", 1, 2)
