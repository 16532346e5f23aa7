"""Polls give way to deliveries when both want the whole event loop.

Why: polling and delivery share one event loop. When the schedule asks for more polls
than one core can do, every ready poll callback queues in front of every delivery
callback, and a backlog that drains in 5 s alone took 35 s (BENCHMARKS.md, issue 8).
A queue of due polls is harmless (they are only late, and ``polls_late`` says so); a
queue of owed deliveries is what users wait for.

So while deliveries are backlogged *and* the loop is saturated (a timer fires late),
the number of polls walking at once is cut, multiplicatively, down to one; once either
stops being true it grows back one poll a tick, and at the ceiling the gate is open
(no limit at all). A slow receiver with a backlog leaves the loop idle, so polls are
not held for it; deliveries alone at full speed saturate the loop, but then no poll is
waiting and nothing is held.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable

import structlog
from structlog.typing import FilteringBoundLogger

from poller.tally import PeriodTally

__all__ = ["PollShare"]

TICK = 0.05  # seconds between two looks at the loop
# A timer this late (smoothed) means the loop has more ready work than it can run.
SATURATED_LAG = 0.02
_SMOOTHING = 0.3  # weight of the newest lag sample


class PollShare:
    """How many polls may walk at once; ``async with share.slot():`` around each poll.

    ``backlogged`` says whether deliveries are owed faster than they are being sent
    (the worker claimed a full batch just now). ``ceiling`` is the number of polls from
    which the gate is open. ``run()`` must run for the limit to move (it starts open).
    """

    def __init__(
        self,
        backlogged: Callable[[], bool],
        *,
        ceiling: int,
        period: float = 10.0,
        logger: FilteringBoundLogger | None = None,
    ) -> None:
        if ceiling < 1:
            raise ValueError("ceiling must be at least 1")
        self._backlogged = backlogged
        self._ceiling = ceiling
        self._limit = ceiling
        self._walking = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._lag = 0.0
        self._log = logger or structlog.get_logger("poller.share")
        self.held_seconds = 0.0  # total time polls waited here (a counter)
        self._held = PeriodTally(period)
        self._held.start(time.monotonic())

    @property
    def limit(self) -> int | None:
        """Polls allowed to walk at once now; None when the gate is open."""
        return None if self._limit >= self._ceiling else self._limit

    @property
    def waiting(self) -> int:
        """Polls held at the gate now."""
        return sum(1 for w in self._waiters if not w.done())

    @property
    def lag(self) -> float:
        """The smoothed lateness of the loop's timers, seconds."""
        return self._lag

    def slot(self) -> _Slot:
        """Hold one of the walking slots for the body; wait for one while they are cut."""
        return _Slot(self)

    async def _enter(self) -> None:
        if self._waiters or not self._admissible():
            await self._wait()
        else:
            self._walking += 1

    def _leave(self) -> None:
        self._walking -= 1
        if self._waiters:
            self._admit()

    def observe(self, lag: float) -> None:
        """One look at the loop: its timer fired ``lag`` seconds late; move the limit."""
        self._lag += _SMOOTHING * (lag - self._lag)
        if self._lag > SATURATED_LAG and self._backlogged():
            self._limit = max(1, min(self._limit, self._walking) // 2)
        elif self._limit < self._ceiling:
            self._limit += 1
        self._admit()
        self._report(time.monotonic())

    async def run(self, tick: float = TICK) -> None:
        """Look at the loop every ``tick`` seconds until cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            await asyncio.sleep(tick)
            self.observe(max(0.0, loop.time() - started - tick))

    def _admissible(self) -> bool:
        return self._limit >= self._ceiling or self._walking < self._limit

    async def _wait(self) -> None:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        started = time.monotonic()
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._walking -= 1  # handed a slot, then cancelled: give it back
                self._admit()
            raise
        finally:
            now = time.monotonic()
            self.held_seconds += now - started
            self._held.note(now - started, now)

    def _admit(self) -> None:
        while self._waiters and self._admissible():
            waiter = self._waiters.popleft()
            if not waiter.done():  # skip those cancelled while waiting
                self._walking += 1
                waiter.set_result(None)

    def _report(self, now: float) -> None:
        # One line per period at most, like polls_late: never a line per held poll.
        if (summary := self._held.close(now)) is None or not summary.count:
            return
        self._log.info(
            "polls_held_for_deliveries",
            polls=summary.count,
            max_wait_s=round(summary.peak, 3),
            limit=self.limit,
            loop_lag_ms=round(self._lag * 1000, 1),
            period_s=round(summary.span, 1),
        )


class _Slot:
    """``async with share.slot():`` (a class, not a generator: one per poll, on the hot
    path)."""

    __slots__ = ("_share",)

    def __init__(self, share: PollShare) -> None:
        self._share = share

    async def __aenter__(self) -> None:
        await self._share._enter()

    async def __aexit__(self, *exc: object) -> None:
        self._share._leave()
