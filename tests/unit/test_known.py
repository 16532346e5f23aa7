"""The in-memory copy of stored ids: exact, loaded per room, batched, forgettable."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from poller.store.known import KnownIds


class FakeStore:
    def __init__(self, stored: dict[str, set[str]]) -> None:
        self.stored = stored
        self.loads: list[list[str]] = []

    async def known_ids(self, rooms: Sequence[str]) -> dict[str, set[str]]:
        self.loads.append(list(rooms))
        await asyncio.sleep(0)
        return {room: set(self.stored.get(room, ())) for room in rooms}


async def test_unknown_ids_once_each_in_order_and_loaded_once_per_room() -> None:
    store = FakeStore({"r": {"a", "b"}})
    known = KnownIds(store.known_ids)

    assert await known.unknown("r", ["c", "a", "d", "c", "b"]) == ["c", "d"]
    assert await known.unknown("r", ["a"]) == []
    assert store.loads == [["r"]]


async def test_only_added_ids_become_known() -> None:
    known = KnownIds(FakeStore({}).known_ids)
    assert await known.unknown("r", ["x", "y"]) == ["x", "y"]
    known.add("r", ["x"])
    assert await known.unknown("r", ["x", "y"]) == ["y"]
    known.add("not-loaded", ["z"])  # a room never loaded keeps loading from the store
    assert len(known) == 1


async def test_first_loads_of_many_rooms_share_one_query() -> None:
    store = FakeStore({f"r{i}": {f"e{i}"} for i in range(50)})
    known = KnownIds(store.known_ids)

    results = await asyncio.gather(*(known.unknown(f"r{i}", [f"e{i}", "new"]) for i in range(50)))

    assert all(r == ["new"] for r in results)
    assert sum(len(batch) for batch in store.loads) == 50
    assert len(store.loads) <= 2  # the first room alone, then everyone who queued meanwhile


async def test_forget_and_clear_reload_from_the_store() -> None:
    store = FakeStore({"r": {"a"}})
    known = KnownIds(store.known_ids)
    await known.unknown("r", ["a"])
    store.stored["r"].add("b")  # another instance stored it

    assert await known.unknown("r", ["b"]) == ["b"]  # the copy lags, never claims
    known.forget("r")
    assert await known.unknown("r", ["b"]) == []
    store.stored["r"].add("c")
    known.clear()
    assert await known.unknown("r", ["c"]) == []
    assert len(store.loads) == 3
