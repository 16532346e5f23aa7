"""A FIFO concurrency limit whose cost does not grow with the number of waiters.

Why not asyncio.Semaphore: on Python 3.11 its ``acquire`` checks ``locked()``,
which scans every waiter. An overloaded daemon has a poll waiting per room, so
with 10,000 rooms that scan made each poll cost more the more rooms there were
(BENCHMARKS.md). This one hands a released slot straight to the oldest waiter.
"""

from __future__ import annotations

import asyncio
import collections
from types import TracebackType

__all__ = ["Limiter"]


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
