"""Polls give way to backlogged deliveries only while the loop is saturated: metered by
the deliveries that finish, in order, opening again step by step."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator

from structlog.testing import capture_logs

from poller.share import (
    FLOOR,
    OPEN_AFTER,
    POLLS_PER_DELIVERY,
    SATURATED_BUSY,
    SPARE_BUSY,
    PollShare,
)

BUSY = (SATURATED_BUSY + 1.0) / 2  # a look at a saturated loop
IDLE = SPARE_BUSY / 2  # a look at a loop with room to spare


class Deliveries:
    """What the worker tells the share: whether it is owed more, and how many it finished."""

    def __init__(self, *, backlogged: bool = True) -> None:
        self.backlogged = backlogged
        self.finished = 0

    def share(self, **kwargs: float) -> PollShare:
        return PollShare(lambda: self.backlogged, lambda: self.finished, **kwargs)


class Polls:
    """Polls waiting for admission, one task each, noting the order they were let in."""

    def __init__(self, share: PollShare) -> None:
        self.share = share
        self.entered: list[int] = []
        self._tasks: dict[int, asyncio.Task[None]] = {}

    def start(self, *numbers: int) -> None:
        for n in numbers:
            self._tasks[n] = asyncio.create_task(self._poll(n))

    async def _poll(self, n: int) -> None:
        await self.share.admit()
        self.entered.append(n)

    async def settle(self) -> None:
        for _ in range(5):
            await asyncio.sleep(0)

    async def open_to(self, n: int) -> bool:
        """Whether ``n`` more polls go straight in, the gate left open."""
        before = len(self.entered)
        self.start(*range(before, before + n))
        await self.settle()
        return len(self.entered) == before + n and not self.share.metered

    def cancel(self, n: int) -> asyncio.Task[None]:
        self._tasks[n].cancel()
        return self._tasks[n]

    async def close(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)


@contextlib.asynccontextmanager
async def polls(share: PollShare) -> AsyncIterator[Polls]:
    p = Polls(share)
    try:
        yield p
    finally:
        await p.close()


async def test_the_gate_is_open_unless_deliveries_are_backlogged() -> None:
    deliveries = Deliveries(backlogged=False)
    share = deliveries.share()
    async with polls(share) as p:
        for _ in range(5):
            share.observe(0.2, 1.0)  # the loop is busy, but nothing is owed
        assert await p.open_to(50)
        assert share.waiting == 0


async def test_a_backlog_on_an_idle_loop_holds_nothing() -> None:
    share = Deliveries().share()  # a slow receiver: owed, but the loop idles
    async with polls(share) as p:
        for _ in range(10):
            share.observe(0.001, IDLE)
        assert await p.open_to(10)


async def test_saturated_and_backlogged_polls_begin_on_credits_from_deliveries() -> None:
    deliveries = Deliveries()
    share = deliveries.share()
    async with polls(share) as p:
        share.observe(0.0, BUSY)  # one busy look is enough to meter
        assert share.metered
        p.start(*range(40))
        await p.settle()
        assert p.entered == [0]  # the floor's one credit of that look
        deliveries.finished += 20  # twenty deliveries finish before the next look
        share.observe(0.0, BUSY)
        await p.settle()
        expected = 1 + int(FLOOR + 20 * POLLS_PER_DELIVERY)
        assert p.entered == list(range(expected))  # in the order they came
        assert share.waiting == 40 - expected


async def test_polls_never_stop_however_few_deliveries_finish() -> None:
    share = Deliveries().share()
    async with polls(share) as p:
        share.observe(0.0, BUSY)
        p.start(*range(20))
        for _ in range(5):  # no delivery finishes
            share.observe(0.0, BUSY)
        await p.settle()
        assert len(p.entered) == 6 * int(FLOOR)


async def test_room_to_spare_lets_more_in_step_by_step_then_opens() -> None:
    share = Deliveries().share()
    async with polls(share) as p:
        share.observe(0.0, BUSY)
        p.start(*range(1000))
        await p.settle()
        admitted = [len(p.entered)]
        for _ in range(4):
            share.observe(0.0, 0.0)
            await p.settle()
            admitted.append(len(p.entered))
        steps = [b - a for a, b in itertools.pairwise(admitted)]
        assert steps == sorted(steps)  # no flood: each look lets in a little more
        assert steps[-1] < 10
        looks = 0
        while share.metered:
            share.observe(0.0, 0.0)
            await p.settle()
            looks += 1
            assert looks < 10 * OPEN_AFTER
        assert len(p.entered) == 1000
        p.start(1000)
        await p.settle()
        assert p.entered[-1] == 1000  # open: at once


async def test_the_backlog_gone_opens_the_gate_at_once() -> None:
    deliveries = Deliveries()
    share = deliveries.share()
    async with polls(share) as p:
        share.observe(0.0, BUSY)
        p.start(*range(100))
        await p.settle()
        deliveries.backlogged = False  # a claim came back short: nothing more is owed
        share.observe(0.0, BUSY)
        await p.settle()
        assert len(p.entered) == 100
        assert await p.open_to(1)


async def test_a_cancelled_waiter_spends_no_credit() -> None:
    deliveries = Deliveries()
    share = deliveries.share()
    async with polls(share) as p:
        share.observe(0.0, BUSY)
        p.start(0)  # takes the floor's credit
        await p.settle()
        p.start(1, 2)
        await p.settle()
        cancelled = p.cancel(1)
        with contextlib.suppress(asyncio.CancelledError):
            await cancelled
        share.observe(0.0, BUSY)  # one more credit: for 2, not for the one that left
        await p.settle()
        assert p.entered == [0, 2]
        assert share.waiting == 0


async def test_held_time_is_counted_and_reported_once_a_period() -> None:
    share = Deliveries().share(period=0.0)
    with capture_logs() as logs:
        async with polls(share) as p:
            share.observe(0.0, BUSY)
            p.start(0, 1)
            await p.settle()
            await asyncio.sleep(0.05)
            share.observe(0.0, BUSY)
            await p.settle()
            share.observe(0.0, BUSY)
    assert p.entered == [0, 1]
    assert share.held_seconds >= 0.05
    held = [e for e in logs if e["event"] == "polls_held_for_deliveries"]
    assert len(held) == 1
    assert held[0]["polls"] == 1
    assert held[0]["max_wait_s"] >= 0.05
    assert held[0]["metered"] is True


async def test_run_sees_a_blocked_loop_as_busy_even_without_cpu() -> None:
    """Busy means "not waiting for I/O": a callback that blocks the loop without using
    the CPU (as on a loaded machine, where the loop gets few cycles) counts too."""
    share = Deliveries().share()
    runner = asyncio.create_task(share.run(tick=0.01))
    try:
        await asyncio.sleep(0.05)
        assert not share.metered
        assert share.busy < SATURATED_BUSY
        time.sleep(0.2)  # blocks the loop; the thread uses no CPU meanwhile
        await asyncio.sleep(0.015)
        assert share.metered
        assert share.lag > 0.03
    finally:
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner


async def test_the_loop_selector_is_left_as_it_was() -> None:
    loop = asyncio.get_running_loop()
    selector = loop._selector  # type: ignore[attr-defined]
    first, second = Deliveries().share(), Deliveries().share()
    old = asyncio.create_task(first.run(tick=0.01))
    await asyncio.sleep(0.02)
    new = asyncio.create_task(second.run(tick=0.01))  # a reload: the new one starts first
    await asyncio.sleep(0.02)
    old.cancel()
    await asyncio.gather(old, return_exceptions=True)
    await asyncio.sleep(0.05)
    assert second.busy < SATURATED_BUSY  # still measured, not read as always busy
    new.cancel()
    await asyncio.gather(new, return_exceptions=True)
    assert "select" not in vars(selector)


async def test_a_busy_look_halves_what_a_look_lets_in_instead_of_starting_over() -> None:
    """When deliveries wait on their receiver and polls alone fill the loop, each busy
    look must not throw polling back to the floor."""
    share = Deliveries().share()
    async with polls(share) as p:
        share.observe(0.0, BUSY)
        p.start(*range(500))
        for _ in range(8):
            share.observe(0.0, 0.0)  # room to spare: 2, 3, ... 9 a look
        await p.settle()
        before = len(p.entered)
        share.observe(0.0, BUSY)  # saturated again: half of the last look's 9
        await p.settle()
        assert len(p.entered) - before == int(9 * FLOOR / 2)
