"""Polls give way to backlogged deliveries only while the loop is saturated."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

from structlog.testing import capture_logs

from poller.share import SATURATED_LAG, PollShare

SATURATED = SATURATED_LAG * 10


class Walks:
    """Polls holding a slot until released, one task each."""

    def __init__(self, share: PollShare) -> None:
        self.share = share
        self.entered: list[int] = []
        self._release: dict[int, asyncio.Event] = {}
        self._tasks: dict[int, asyncio.Task[None]] = {}

    def start(self, n: int) -> None:
        self._release[n] = asyncio.Event()
        self._tasks[n] = asyncio.create_task(self._walk(n))

    async def _walk(self, n: int) -> None:
        async with self.share.slot():
            self.entered.append(n)
            await self._release[n].wait()

    async def settle(self) -> None:
        for _ in range(5):
            await asyncio.sleep(0)

    async def finish(self, n: int) -> None:
        self._release[n].set()
        await self._tasks[n]
        await self.settle()

    def cancel(self, n: int) -> asyncio.Task[None]:
        self._tasks[n].cancel()
        return self._tasks[n]

    async def close(self) -> None:
        for event in self._release.values():
            event.set()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)


@contextlib.asynccontextmanager
async def walks(share: PollShare) -> AsyncIterator[Walks]:
    w = Walks(share)
    try:
        yield w
    finally:
        await w.close()


def saturate(share: PollShare, times: int = 10) -> None:
    for _ in range(times):
        share.observe(SATURATED)


async def test_the_gate_is_open_unless_deliveries_are_backlogged() -> None:
    share = PollShare(lambda: False, ceiling=4)
    async with walks(share) as w:
        for n in range(10):
            w.start(n)
        await w.settle()
        saturate(share)  # the loop is busy, but nothing is owed
        for n in range(10, 20):
            w.start(n)
        await w.settle()
        assert len(w.entered) == 20  # the ceiling does not bound an open gate
        assert share.limit is None
        assert share.waiting == 0


async def test_a_backlog_on_an_idle_loop_holds_nothing() -> None:
    share = PollShare(lambda: True, ceiling=4)  # a slow receiver: owed, but the loop idles
    async with walks(share) as w:
        for _ in range(10):
            share.observe(0.001)
        for n in range(10):
            w.start(n)
        await w.settle()
        assert len(w.entered) == 10
        assert share.limit is None


async def test_backlog_and_saturation_cut_polls_to_one_then_fifo() -> None:
    share = PollShare(lambda: True, ceiling=8)
    async with walks(share) as w:
        for n in range(8):
            w.start(n)
        await w.settle()
        saturate(share)
        assert share.limit == 1
        for n in range(8, 12):
            w.start(n)
        await w.settle()
        assert w.entered == list(range(8))
        assert share.waiting == 4
        for n in range(8):  # the walking ones end: only one may follow
            await w.finish(n)
        assert w.entered == [*range(8), 8]
        await w.finish(8)
        assert w.entered == [*range(8), 8, 9]  # the oldest waiter first


async def test_the_limit_grows_back_one_a_tick_and_opens_at_the_ceiling() -> None:
    backlogged = True
    share = PollShare(lambda: backlogged, ceiling=4)
    async with walks(share) as w:
        w.start(0)
        await w.settle()
        saturate(share)
        for n in range(1, 8):
            w.start(n)
        await w.settle()
        assert len(w.entered) == 1
        backlogged = False
        share.observe(SATURATED)
        await w.settle()
        assert share.limit == 2
        assert len(w.entered) == 2
        share.observe(SATURATED)
        await w.settle()
        assert share.limit == 3
        assert len(w.entered) == 3
        share.observe(SATURATED)
        await w.settle()
        assert share.limit is None
        assert len(w.entered) == 8


async def test_a_cancelled_waiter_keeps_no_slot() -> None:
    share = PollShare(lambda: True, ceiling=4)
    async with walks(share) as w:
        w.start(0)
        await w.settle()
        saturate(share)
        w.start(1)
        w.start(2)
        await w.settle()
        cancelled = w.cancel(1)
        with contextlib.suppress(asyncio.CancelledError):
            await cancelled
        await w.finish(0)
        assert w.entered == [0, 2]
        assert share.waiting == 0


async def test_held_time_is_counted_and_reported_once_a_period() -> None:
    share = PollShare(lambda: True, ceiling=2, period=0.0)
    with capture_logs() as logs:
        async with walks(share) as w:
            w.start(0)
            await w.settle()
            saturate(share)
            w.start(1)
            await w.settle()
            await asyncio.sleep(0.05)
            await w.finish(0)
            share.observe(SATURATED)
    assert share.held_seconds >= 0.05
    held = [e for e in logs if e["event"] == "polls_held_for_deliveries"]
    assert len(held) == 1
    assert held[0]["polls"] == 1
    assert held[0]["max_wait_s"] >= 0.05


async def test_run_sees_a_blocked_loop() -> None:
    share = PollShare(lambda: True, ceiling=2)
    runner = asyncio.create_task(share.run(tick=0.01))
    try:
        await asyncio.sleep(0.05)
        assert share.lag < SATURATED_LAG
        time.sleep(0.2)  # a callback that hogs the loop, as a burst of polls does
        await asyncio.sleep(0.03)
        assert share.lag > SATURATED_LAG
        assert share.limit == 1
    finally:
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
