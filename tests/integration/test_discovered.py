"""What the store records of discovery's walks of GET /rooms, on both backends."""

from __future__ import annotations

import datetime as dt

from poller.store.repo import Pace, Store
from tests.storeops import sibling

NOW = dt.datetime(2026, 12, 3, 12, 0, tzinfo=dt.UTC)
KEEP = 3600.0


def later(seconds: float) -> dt.datetime:
    return NOW + dt.timedelta(seconds=seconds)


async def lease(store: Store, room_id: str, now: dt.datetime = NOW) -> bool:
    """Whether the room's first poll delivers what is already there (its lease says)."""
    granted = await store.update_rooms(acquire=[(room_id, True)], ttl=30, now=now)
    found = granted[room_id]
    assert found is not None
    return found.backfill


async def test_the_first_listing_is_history_later_rooms_are_new(store: Store) -> None:
    first = await store.record_listing(["a", "b"], keep=KEEP, now=NOW)
    assert first.first
    assert (first.added, first.polled) == (("a", "b"), ("a", "b"))

    second = await store.record_listing(["a", "b", "c"], keep=KEEP, now=later(60))
    assert not second.first
    assert second.added == ("c",)
    assert second.polled == ("a", "b", "c")
    # a and b were there before poller looked: poll.backfill decides. c is new to the app.
    assert await lease(store, "a") is False
    assert await lease(store, "c") is True


async def test_a_room_that_leaves_is_polled_for_keep_then_retired(store: Store) -> None:
    await store.record_listing(["a", "b"], keep=KEEP, now=NOW)

    gone = await store.record_listing(["a"], keep=KEEP, now=later(60))
    assert gone.left == ("b",)
    assert gone.polled == ("a", "b")  # still polled: its last recordings may come
    again = await store.record_listing(["a"], keep=KEEP, now=later(60 + KEEP - 1))
    assert (again.left, again.retired, again.polled) == ((), (), ("a", "b"))
    retired = await store.record_listing(["a"], keep=KEEP, now=later(60 + KEEP))
    assert retired.retired == ("b",)
    assert retired.polled == ("a",)
    assert await store.discovered_rooms() == ["a"]

    back = await store.record_listing(["a", "b"], keep=KEEP, now=later(2 * KEEP))
    assert back.returned == ("b",)
    assert back.polled == ("a", "b")
    assert await store.discovered_rooms() == ["a", "b"]


async def test_a_room_that_returns_within_keep_is_not_retired(store: Store) -> None:
    await store.record_listing(["a"], keep=KEEP, now=NOW)
    await store.record_listing([], keep=KEEP, now=later(10))
    back = await store.record_listing(["a"], keep=KEEP, now=later(20))
    assert back.returned == ("a",)
    much_later = await store.record_listing(["a"], keep=KEEP, now=later(20 + 2 * KEEP))
    assert (much_later.retired, much_later.polled) == ((), ("a",))


async def test_a_polled_room_of_the_config_that_gets_listed_keeps_its_history(
    store: Store,
) -> None:
    await lease(store, "cfg")  # polled as a [[rooms]] entry before discovery was turned on
    listing = await store.record_listing(["cfg", "x"], keep=KEEP, now=NOW)
    assert listing.added == ("cfg", "x")
    assert listing.first
    assert await lease(store, "cfg") is False


async def test_two_instances_recording_the_same_listing_agree(store: Store) -> None:
    other_store = sibling(store, "other-instance")
    await store.record_listing(["a"], keep=KEEP, now=NOW)
    mine = await store.record_listing(["a", "new"], keep=KEEP, now=later(5))
    theirs = await other_store.record_listing(["a", "new"], keep=KEEP, now=later(6))
    assert mine.added == ("new",)
    assert theirs.added == ()
    assert mine.polled == theirs.polled == ("a", "new")


async def test_paces_are_kept_for_status_rooms_polled_or_not(store: Store) -> None:
    await lease(store, "polled")
    until = later(7200)
    await store.record_paces([Pace("polled", 30.0, "live", until), Pace("new", 600.0, "idle")])
    rows = {row["id"]: row for row in await store.room_states()}
    assert (rows["polled"]["pace_interval"], rows["polled"]["pace_reason"]) == (30.0, "live")
    assert rows["polled"]["active_until"] == until
    assert (rows["new"]["pace_interval"], rows["new"]["pace_reason"]) == (600.0, "idle")
    assert rows["new"]["active_until"] is None
    await store.record_paces([Pace("polled", 600.0, "idle")])
    rows = {row["id"]: row for row in await store.room_states()}
    assert (rows["polled"]["pace_reason"], rows["polled"]["active_until"]) == ("idle", None)
