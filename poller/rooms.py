"""The rooms this daemon polls, each an interval job: those of the config, and those
discovery finds (``poller.discovery``), added and retired while it runs. With adaptive
polling (``poller.activity``) each room's interval changes while it runs, too."""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
from collections.abc import Awaitable, Callable, Collection, Sequence

from poller.schedule import Gate, Lateness, Scheduler
from poller.timeutil import utcnow

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
        settle_to: float | None = None,
    ) -> None:
        """Each room is first polled within one ``interval`` (spread), then every
        ``settle_to`` if given (adaptive: rooms start idle), else every ``interval``."""
        self._scheduler = scheduler
        self._poll = poll
        self._interval = interval
        self._settle_to = interval if settle_to is None else settle_to
        self._timeout = timeout
        self._lateness = lateness
        self._gate = gate
        self._origins: dict[str, Origin] = {}
        self._intervals: dict[str, float] = {}
        self._began: dict[str, dt.datetime] = {}  # when each room's latest poll began

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
        self._intervals.pop(room_id, None)
        self._began.pop(room_id, None)
        self._scheduler.remove(_job_id(room_id))
        return True

    def interval_of(self, room_id: str) -> float | None:
        """The seconds between this room's polls now (None: not polled)."""
        return self._intervals.get(room_id)

    def set_interval(
        self, room_id: str, interval: float, *, now: dt.datetime | None = None
    ) -> bool:
        """Poll this room every ``interval`` from now on; False when it is not polled, or
        already at that interval (then nothing is touched).

        The next poll comes ``interval`` after the latest one began, or now if that is
        past: a room that turns fast is polled at once when it has waited that long. A
        room not polled yet keeps its first poll (startup spreads those over an interval)
        if that is at most ``interval`` away; one whose first poll has fired but not begun
        (waiting for the budget) is polled ``interval`` from now at the latest.
        """
        current = self._intervals.get(room_id)
        if current is None or current == interval:
            return False
        now = now or utcnow()
        began = self._began.get(room_id)
        if began is not None:
            first = began + dt.timedelta(seconds=interval)
        else:
            # First slots lie within one interval of the room's start; a next run further
            # off means the first run has fired and waits at the gate (the budget), and
            # the job's next run is then a whole old interval after it.
            slot = self._scheduler.next_run(_job_id(room_id)) or now
            first = min(slot, now + dt.timedelta(seconds=interval))
        # A run under way finishes; the job starts anew with the new interval.
        self._scheduler.remove(_job_id(room_id))
        self._start(room_id, interval, first_in=max(0.0, (first - now).total_seconds()))
        return True

    def _schedule(self, room_id: str, origin: Origin, *, first_in: float) -> None:
        self._origins[room_id] = origin
        self._start(room_id, self._settle_to, first_in=first_in)

    def _start(self, room_id: str, interval: float, *, first_in: float) -> None:
        self._intervals[room_id] = interval

        async def poll() -> None:
            if room_id in self._origins:  # not a run that waited past its room's removal
                self._began[room_id] = utcnow()
            await self._poll(room_id)

        self._scheduler.every(
            _job_id(room_id),
            interval,
            poll,
            first_in=first_in,
            jitter=min(interval * 0.1, 5.0),
            timeout=self._timeout,
            lateness=self._lateness,
            gate=self._gate,
        )


def _job_id(room_id: str) -> str:
    return f"poll:{room_id}"
