"""Limits on how much happens at once (``Limiter``) and how often (``Pacer``).

``Limiter`` is a FIFO concurrency limit whose cost does not grow with the number of
waiters. Why not asyncio.Semaphore: on Python 3.11 its ``acquire`` checks ``locked()``,
which scans every waiter. An overloaded daemon has a poll waiting per room, so
with 10,000 rooms that scan made each poll cost more the more rooms there were
(BENCHMARKS.md). This one hands a released slot straight to the oldest waiter.
"""

from __future__ import annotations

import asyncio
import collections
import math
import time
from collections.abc import Callable
from types import TracebackType

__all__ = ["Limiter", "Pacer"]


class Limiter:
    """At most ``limit`` holders at once (``async with limiter:``), waiters served in order."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self._free = limit
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    async def __aenter__(self) -> None:
        if self._free > 0:
            self._free -= 1  # no one waits while a slot is free
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release()  # handed a slot, then cancelled: pass it on
            raise

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._release()

    def _release(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():  # skip those cancelled while waiting
                waiter.set_result(None)
                return
        self._free += 1


class Pacer:
    """Starts at least ``1 / rate`` seconds apart, so no window of one second ever holds more
    than ``rate`` of them (a token bucket allows bursts). Turns are handed out in the order
    they are asked for, so whoever has waited longest goes first."""

    def __init__(
        self, rate: float, clock: Callable[[], float] = time.monotonic, *, horizon: float = 1.0
    ) -> None:
        self._gap = 1.0 / rate
        self._clock = clock
        self._horizon = horizon
        self._next = -math.inf  # when the next start may be

    @property
    def rate(self) -> float:
        return 1.0 / self._gap

    def available(self) -> int:
        """How many starts could happen within ``horizon`` seconds from now."""
        ahead = max(0.0, self._next - self._clock())  # until the first free turn
        if ahead >= self._horizon:
            return 0
        return math.ceil((self._horizon - ahead) / self._gap)

    def reserve(self) -> float:
        """Take the next start time; return the seconds to wait for it."""
        now = self._clock()
        start = max(self._next, now)
        self._next = start + self._gap
        return start - now

    def ready_in(self) -> float:
        """Seconds until a start could happen (0: now)."""
        return max(0.0, self._next - self._clock())
