"""Which event ids the store holds, per room: an exact copy in memory.

Why: the API has no "since" filter, so every poll re-reads a room's whole
history. Asking the store about every id of every page cost more than the
HTTP work (BENCHMARKS.md); a set lookup costs nothing.

Why it is exact and can only lag behind the store: an id is added once a
transaction that stored it (or found it stored) has committed, and a room's
set is loaded from the store itself. So "known" never claims an id the store
does not hold; a false "known" would lose a recording, which is also why this
is never a probabilistic filter. An id the copy misses (another instance
stored it) costs one write that finds it there.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence

from poller.batch import GroupCommit

__all__ = ["KnownIds"]


class KnownIds:
    """Per room, the ids stored; loaded from the store the first time a room asks."""

    def __init__(self, load: Callable[[Sequence[str]], Awaitable[dict[str, set[str]]]]) -> None:
        # Why batched: at start every room asks once; one query per room, queued on
        # SQLite's single connection, halved the polls a second at 5,000 rooms.
        self._loads = GroupCommit(self._load_batch)
        self._load = load
        self._rooms: dict[str, set[str]] = {}

    async def unknown(self, room_id: str, ids: Iterable[str]) -> list[str]:
        """The ids (each once, in order) not known to be stored for this room."""
        known = self._rooms.get(room_id)
        if known is None:
            known = self._rooms[room_id] = await self._loads.submit(room_id)
        return [i for i in dict.fromkeys(ids) if i not in known]

    async def _load_batch(self, rooms: list[str]) -> list[set[str]]:
        loaded = await self._load(sorted(set(rooms)))
        return [loaded.get(room, set()) for room in rooms]

    def add(self, room_id: str, ids: Iterable[str]) -> None:
        """Note ids that a committed transaction left in the store."""
        known = self._rooms.get(room_id)
        if known is not None:
            known.update(ids)

    def forget(self, room_id: str) -> None:
        """Drop a room's copy (its lease went to another instance, which will add ids)."""
        self._rooms.pop(room_id, None)

    def clear(self) -> None:
        """Drop every copy (events were pruned); rooms reload on their next poll."""
        self._rooms.clear()

    def __len__(self) -> int:
        return sum(len(ids) for ids in self._rooms.values())
