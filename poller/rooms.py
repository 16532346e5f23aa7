"""The rooms this daemon polls, each an interval job: those of the config, and those
discovery finds (``poller.discovery``), added and retired while it runs."""

from __future__ import annotations

import enum
import functools
import hashlib
from collections.abc import Awaitable, Callable, Collection, Sequence

from poller.schedule import Gate, Lateness, Scheduler

__all__ = ["Origin", "PolledRooms"]


class Origin(enum.StrEnum):
    """Why a room is polled."""

    CONFIG = "config"  # a [[rooms]] entry: polled for as long as it is there
    DISCOVERY = "discovery"  # listed by GET /rooms: polled until retired


class PolledRooms:
    """Schedules one poll job per room; rooms may come and go while the scheduler runs."""

    def __init__(
        self,
        scheduler: Scheduler,
        poll: Callable[[str], Awaitable[object]],
        *,
        interval: float,
        timeout: float,
        lateness: Lateness | None = None,
        gate: Gate | None = None,
    ) -> None:
        self._scheduler = scheduler
        self._poll = poll
        self._interval = interval
        self._timeout = timeout
        self._lateness = lateness
        self._gate = gate
        self._origins: dict[str, Origin] = {}

    @property
    def ids(self) -> Collection[str]:
        """Every room polled now (a live view)."""
        return self._origins.keys()

    def origin(self, room_id: str) -> Origin | None:
        return self._origins.get(room_id)

    def count(self, origin: Origin) -> int:
        return sum(1 for o in self._origins.values() if o is origin)

    def of(self, origin: Origin) -> set[str]:
        return {r for r, o in self._origins.items() if o is origin}

    def add_all(self, room_ids: Sequence[str], origin: Origin) -> list[str]:
        """Poll these rooms, spread evenly over one interval (a burst of first polls would
        ask the API for every room at once); returns those that were new."""
        new = [r for r in room_ids if r not in self._origins]
        for i, room_id in enumerate(new):
            self._schedule(room_id, origin, first_in=self._interval * i / len(new))
        return new

    def add(self, room_id: str, origin: Origin) -> bool:
        """Poll one more room, first within an interval at a point set by its id (a new room
        of a busy app must not wait for a slot a restart would give it elsewhere)."""
        if room_id in self._origins:
            return False
        digest = hashlib.blake2b(room_id.encode(), digest_size=4).digest()
        self._schedule(room_id, origin, first_in=self._interval * int.from_bytes(digest) / 2**32)
        return True

    def remove(self, room_id: str) -> bool:
        """Poll the room no more (a poll under way finishes)."""
        if self._origins.pop(room_id, None) is None:
            return False
        self._scheduler.remove(_job_id(room_id))
        return True

    def _schedule(self, room_id: str, origin: Origin, *, first_in: float) -> None:
        self._origins[room_id] = origin
        self._scheduler.every(
            _job_id(room_id),
            self._interval,
            functools.partial(self._poll, room_id),
            first_in=first_in,
            jitter=min(self._interval * 0.1, 5.0),
            timeout=self._timeout,
            lateness=self._lateness,
            gate=self._gate,
        )


def _job_id(room_id: str) -> str:
    return f"poll:{room_id}"
