"""PolledRooms' intervals: rooms that settle to an idle pace, and changing one room's
interval while the scheduler runs."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import time
from collections.abc import AsyncIterator

import pytest

from poller.rooms import Origin, PolledRooms
from poller.schedule import Scheduler
from poller.timeutil import utcnow


class Polls:
    """Records when each room was polled; waits for counts with a bound."""

    def __init__(self) -> None:
        self.times: dict[str, list[float]] = collections.defaultdict(list)
        self._changed = asyncio.Condition()

    async def __call__(self, room_id: str) -> None:
        self.times[room_id].append(time.monotonic())
        async with self._changed:
            self._changed.notify_all()

    async def wait(self, room_id: str, count: int, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: len(self.times[room_id]) >= count)


@pytest.fixture
async def scheduler() -> AsyncIterator[Scheduler]:
    scheduler = Scheduler()
    yield scheduler
    await scheduler.stop(2.0)


async def test_rooms_are_first_polled_within_the_interval_then_settle_to_their_pace(
    scheduler: Scheduler,
) -> None:
    polls = Polls()
    rooms = PolledRooms(scheduler, polls, interval=0.2, timeout=5.0, settle_to=30.0)
    started = time.monotonic()
    rooms.add_all(["a", "b"], Origin.CONFIG)
    scheduler.start()
    await polls.wait("a", 1)
    await polls.wait("b", 1)
    assert max(polls.times["a"][0], polls.times["b"][0]) - started < 1.0
    assert rooms.interval_of("a") == rooms.interval_of("b") == 30.0
    assert rooms.interval_of("nope") is None
    await asyncio.sleep(0.6)  # three fast intervals: a room at 30 s is not polled again
    assert (len(polls.times["a"]), len(polls.times["b"])) == (1, 1)


async def test_a_room_turned_fast_is_polled_at_once_then_every_interval(
    scheduler: Scheduler,
) -> None:
    polls = Polls()
    rooms = PolledRooms(scheduler, polls, interval=0.1, timeout=5.0, settle_to=30.0)
    rooms.add("a", Origin.CONFIG)
    rooms.add("b", Origin.CONFIG)
    scheduler.start()
    await polls.wait("a", 1)
    await polls.wait("b", 1)
    await asyncio.sleep(0.3)  # longer than the new interval since the last poll

    turned = time.monotonic()
    assert rooms.set_interval("a", 0.1)
    await polls.wait("a", 5)
    assert polls.times["a"][1] - turned < 0.5  # promptly, not at the idle pace
    assert len(polls.times["b"]) == 1  # the other room untouched

    assert not rooms.set_interval("a", 0.1)  # unchanged: nothing touched
    assert not rooms.set_interval("nope", 0.1)
    assert rooms.set_interval("a", 30.0)
    await asyncio.sleep(0.1)  # a poll the old job began may still record
    settled = len(polls.times["a"])
    await asyncio.sleep(0.5)
    assert len(polls.times["a"]) == settled


async def test_a_slower_interval_counts_from_the_latest_poll() -> None:
    scheduler = Scheduler()
    polls = Polls()
    rooms = PolledRooms(scheduler, polls, interval=0.05, timeout=5.0)
    rooms.add("a", Origin.CONFIG)
    scheduler.start()
    try:
        await polls.wait("a", 1)
        now = utcnow()
        assert rooms.set_interval("a", 60.0, now=now)
        next_run = scheduler.next_run("poll:a")
        assert next_run is not None
        # About a minute after the poll that began just now; never before it. (The
        # scheduler takes the start as a delay from its own clock, read a few µs after
        # ``now``: hence the slack above the minute.)
        assert dt.timedelta(seconds=55) < next_run - now <= dt.timedelta(seconds=60.1)
    finally:
        await scheduler.stop(2.0)


async def test_a_room_not_polled_yet_keeps_its_first_poll_slot() -> None:
    scheduler = Scheduler()  # not started: nothing fires
    rooms = PolledRooms(scheduler, Polls(), interval=100.0, timeout=5.0, settle_to=600.0)
    rooms.add_all(["a", "b"], Origin.CONFIG)
    before = scheduler.next_run("poll:b")
    assert before is not None
    assert rooms.set_interval("b", 100.0)
    after = scheduler.next_run("poll:b")
    assert after is not None
    assert abs((after - before).total_seconds()) < 0.5
    assert rooms.remove("b")
    assert rooms.interval_of("b") is None
    assert scheduler.next_run("poll:b") is None


class HeldGate:
    """A gate (the budget's, when the schedule asks for more) that holds every run until
    opened; counts the runs waiting at it."""

    def __init__(self) -> None:
        self.waiting = 0
        self._open = asyncio.Event()
        self._changed = asyncio.Condition()

    def open(self) -> None:
        self._open.set()

    async def wait_queued(self, count: int, timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: self.waiting >= count)

    @contextlib.asynccontextmanager
    async def __call__(self) -> AsyncIterator[None]:
        async with self._changed:
            self.waiting += 1
            self._changed.notify_all()
        await self._open.wait()
        self.waiting -= 1
        yield


async def test_a_room_turned_fast_while_its_first_poll_waits_at_the_gate_keeps_the_fast_pace(
    scheduler: Scheduler,
) -> None:
    # Its first poll has fired, so the job's next run is a whole idle interval away:
    # that is no slot to keep.
    polls = Polls()
    gate = HeldGate()
    rooms = PolledRooms(scheduler, polls, interval=0.1, timeout=5.0, settle_to=30.0, gate=gate)
    rooms.add_all(["a"], Origin.CONFIG)
    scheduler.start()
    await gate.wait_queued(1)
    turned = utcnow()
    assert rooms.set_interval("a", 0.1, now=turned)
    next_run = scheduler.next_run("poll:a")
    assert next_run is not None
    assert next_run - turned <= dt.timedelta(seconds=1.0)  # not settle_to (30 s) away
    gate.open()
    await polls.wait("a", 3, timeout=3.0)
