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
    """Request starts paced so that no window of one second ever holds more than ``rate``.

    With ``burst=1`` (the default) starts are at least ``1 / rate`` apart (a fractional
    rate of one or more counts as the whole number below it: a second holds whole
    starts). With a larger ``burst``, up to ``burst`` may start at once after a quiet
    spell, and the steady pace is lowered to ``rate - burst + 1`` a second so that a
    burst plus what follows it in the same second still fits ``rate`` (a plain token
    bucket would allow ``rate + burst``). Why a burst at all: a scheduler fires the polls
    due at one instant together, and spacing them 0.1 ms apart cost a timer per poll for
    no one's benefit. Turns are handed out in the order they are asked for, so whoever
    has waited longest goes first.
    """

    def __init__(
        self,
        rate: float,
        clock: Callable[[], float] = time.monotonic,
        *,
        horizon: float = 1.0,
        burst: int = 1,
    ) -> None:
        if not 1 <= burst <= max(1.0, rate):
            raise ValueError("burst must be between 1 and the rate")
        self._rate = rate
        # A second holds whole starts: at 35.5 a second, 1/35.5 apart would fit a 36th
        # in 0.986 s after the first, so the pace is that of the 35 a second may hold.
        whole = math.floor(rate) if rate >= 1 else rate
        self._gap = 1.0 / (whole - burst + 1)  # the steady spacing
        self._slack = (burst - 1) * self._gap  # how far ahead of the pace a start may be
        self._clock = clock
        self._horizon = horizon
        self._due = -math.inf  # when the next start is due at the steady pace

    @property
    def rate(self) -> float:
        return self._rate

    def available(self) -> int:
        """How many starts could happen within ``horizon`` seconds from now."""
        now = self._clock()
        due = max(self._due, now)
        # Less a hair: a turn that falls exactly on the horizon is outside it.
        turns = (now + self._horizon + self._slack - due) / self._gap - 1e-9
        return max(0, math.ceil(turns))

    def reserve(self) -> float:
        """Take the next start time; return the seconds to wait for it."""
        now = self._clock()
        start = max(now, self._due - self._slack)
        self._due = max(self._due, now) + self._gap
        return start - now

    def ready_in(self) -> float:
        """Seconds until a start could happen (0: now)."""
        return max(0.0, self._due - self._slack - self._clock())
