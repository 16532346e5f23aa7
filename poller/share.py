"""Polls give way to deliveries when both want the whole event loop.

Why: polling and delivery share one event loop. When the schedule asks for more polls
than one core can do, every ready poll callback queues in front of every delivery
callback, and a backlog that drains in 5 s alone took 35 s (BENCHMARKS.md, issue 8).
A queue of due polls is harmless (they are only late, and ``polls_late`` says so); a
queue of owed deliveries is what users wait for.

So while deliveries are owed *and* the loop is saturated (busy, not waiting for I/O,
nearly all the time), polls are *metered*: a poll may begin only on a credit, and credits
come from deliveries finishing, about one poll for every seven (``POLLS_PER_DELIVERY``),
plus a floor of one a look so that polls never stop. A poll and a delivery cost about
the same, but APScheduler's firing of the held rooms' jobs goes on regardless; at this
rate deliveries kept at least half their rate alone in every measured run (BENCHMARKS.md),
at one poll per four about half the runs did. Why credits and not a cap on polls at
once: a poll mostly waits on the API, so even one walking at a time ran hundreds a
second and kept the core busy.

Once the loop has room to spare, what a look lets in grows by the floor each look until
it passes ``OPEN_AFTER`` with no poll held, and the gate is open again (no limit at all),
so the polls held back do not all start in one instant; a busy look halves it; a claim
that comes back short (nothing more owed) opens the gate at once. A slow receiver with a
backlog leaves the loop idle, so polls are not held for it; deliveries alone at full
speed saturate the loop, but then no poll is waiting and nothing is held.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable
from typing import Any

import structlog
from structlog.typing import FilteringBoundLogger

from poller.tally import PeriodTally

__all__ = ["PollShare"]

TICK = 0.05  # seconds between two looks at the loop
# The loop busy (not waiting for I/O) this much of the time, smoothed, means it has more
# ready work than it can run. Why not how late a timer fires: the loop runs every ready
# callback before the next timer, so a loop busy with many short ones (polls,
# deliveries) left timers a few ms late, and only the garbage collector's pauses showed
# as "saturated".
SATURATED_BUSY = 0.85
SPARE_BUSY = 0.7  # below this the loop has room to spare: let more polls in
_SMOOTHING = 0.3  # weight of the newest lag sample
POLLS_PER_DELIVERY = 0.15  # while metered: a poll may begin per seven deliveries finished
FLOOR = 1.0  # credits a tick however few deliveries finish: 20 polls/s at least
CREDIT_CAP = 64.0  # credits never bank beyond this: no burst after a quiet spell
OPEN_AFTER = 200.0  # an allowance this large a tick, with nothing held: the gate opens


class PollShare:
    """Whether polls may begin now; ``await share.admit()`` before each poll.

    ``backlogged`` says whether deliveries are owed faster than they are being sent
    (the worker claimed a full batch just now); ``finished`` counts the deliveries
    finished so far (any outcome). ``run()`` must run for the gate to move (it starts
    open).
    """

    def __init__(
        self,
        backlogged: Callable[[], bool],
        finished: Callable[[], int],
        *,
        period: float = 10.0,
        logger: FilteringBoundLogger | None = None,
    ) -> None:
        self._backlogged = backlogged
        self._finished = finished
        self._seen = finished()
        self._metered = False
        self._credits = 0.0
        self._allowance = FLOOR  # credits a tick while recovering from saturation
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._lag = 0.0
        self._busy = 0.0
        self._log = logger or structlog.get_logger("poller.share")
        self.held_seconds = 0.0  # total time polls waited here (a counter)
        self._held = PeriodTally(period)
        self._held.start(time.monotonic())

    @property
    def metered(self) -> bool:
        """Whether polls begin only on credits now (False: the gate is open)."""
        return self._metered

    @property
    def waiting(self) -> int:
        """Polls held at the gate now."""
        return sum(1 for w in self._waiters if not w.done())

    @property
    def lag(self) -> float:
        """The smoothed lateness of the loop's timers, seconds."""
        return self._lag

    @property
    def busy(self) -> float:
        """The smoothed share of the time the loop's thread was running (0 to 1)."""
        return self._busy

    async def admit(self) -> None:
        """Return when a poll may begin: at once when the gate is open, else on a credit,
        in the order polls came."""
        if not self._metered:
            return
        if not self._waiters and self._credits >= 1.0:
            self._credits -= 1.0
            return
        await self._wait()

    def observe(self, lag: float, busy: float) -> None:
        """One look at the loop: its timer fired ``lag`` seconds late and its thread was
        running ``busy`` of the time since the last look; meter or open."""
        self._lag += _SMOOTHING * (lag - self._lag)
        self._busy += _SMOOTHING * (busy - self._busy)
        finished = self._finished()
        delivered, self._seen = finished - self._seen, finished
        if not self._backlogged():
            self._metered = False  # nothing owed: the held polls may all go
        elif busy > SATURATED_BUSY:
            # In at once (one busy look): a poll let in is a poll's work that cannot be
            # taken back, and at start-up the first polls of every room come in one
            # flood. Halved, not reset, while it lasts: when deliveries are held by their
            # receiver, not the loop, polls alone saturate it, and a reset to the floor
            # each time would halve polling for no delivery's gain.
            self._allowance = max(FLOOR, self._allowance / 2) if self._metered else FLOOR
            self._metered = True
        elif self._metered and self._busy < SPARE_BUSY:
            # Room to spare: let more in, additively (doubling let the held polls out in
            # a flood that saturated the loop again at once).
            self._allowance += FLOOR
            if self._allowance >= OPEN_AFTER and not self.waiting:
                self._metered = False
        earned = self._allowance + delivered * POLLS_PER_DELIVERY if self._metered else 0.0
        self._credits = min(max(CREDIT_CAP, earned), self._credits + earned)
        self._admit()
        self._report(time.monotonic())

    async def run(self, tick: float = TICK) -> None:
        """Look at the loop every ``tick`` seconds until cancelled."""
        loop = asyncio.get_running_loop()
        with _IdleMeter(loop) as idle:
            while True:
                started, waited = loop.time(), idle.seconds()
                await asyncio.sleep(tick)
                wall = loop.time() - started
                busy = 1.0 - (idle.seconds() - waited) / wall if wall > 0 else 0.0
                self.observe(max(0.0, wall - tick), min(1.0, max(0.0, busy)))

    async def _wait(self) -> None:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        started = time.monotonic()
        try:
            await waiter
        finally:
            # A waiter let in and then cancelled spends its credit: a poll's worth of
            # the loop that was not taken is no loss.
            now = time.monotonic()
            self.held_seconds += now - started
            self._held.note(now - started, now)

    def _admit(self) -> None:
        while self._waiters and (not self._metered or self._credits >= 1.0):
            waiter = self._waiters.popleft()
            if not waiter.done():  # skip those cancelled while waiting
                if self._metered:
                    self._credits -= 1.0
                waiter.set_result(None)
        if not self._metered:
            self._credits = 0.0

    def _report(self, now: float) -> None:
        # One line per period at most, like polls_late: never a line per held poll.
        if (summary := self._held.close(now)) is None or not summary.count:
            return
        self._log.info(
            "polls_held_for_deliveries",
            polls=summary.count,
            max_wait_s=round(summary.peak, 3),
            metered=self._metered,
            loop_lag_ms=round(self._lag * 1000, 1),
            loop_busy=round(self._busy, 2),
            period_s=round(summary.span, 1),
        )


class _IdleMeter:
    """The time the loop has spent waiting for I/O (in its selector's ``select``), summed.

    Why the selector: a loop that always has a callback ready never waits there, however
    few CPU cycles a loaded machine or a container's quota leaves it, and the garbage
    collector's pauses count as busy, as they are. A loop without a selector (another
    implementation) falls back to its thread's CPU time, which under-reads on a loaded
    machine.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        selector = getattr(loop, "_selector", None)
        self._selector: object | None = (
            selector if callable(getattr(selector, "select", None)) else None
        )
        self._waited = 0.0
        self._started = time.monotonic()
        self._cpu = time.thread_time()
        self._previous: Any = None
        self._wrapper: Callable[..., Any] | None = None
        self._retired = False

    def seconds(self) -> float:
        """Seconds waited for I/O since the meter was made."""
        if self._wrapper is not None:
            return self._waited
        return (time.monotonic() - self._started) - (time.thread_time() - self._cpu)

    def __enter__(self) -> _IdleMeter:
        selector = self._selector
        if selector is None or not hasattr(selector, "__dict__"):
            return self
        self._previous = selector.__dict__.get("select")  # another meter's, say
        original = selector.select  # type: ignore[attr-defined]

        def select(timeout: float | None = None) -> Any:
            began = time.perf_counter()
            try:
                return original(timeout)
            finally:
                self._waited += time.perf_counter() - began

        select.meter = self  # type: ignore[attr-defined]
        self._wrapper = select
        selector.select = select  # type: ignore[attr-defined]
        return self

    def __exit__(self, *exc: object) -> None:
        selector = self._selector
        if selector is None or self._wrapper is None:
            return
        self._retired = True
        if selector.__dict__.get("select") is self._wrapper:
            # Skip meters that ended while wrapped by this one: their wrappers only count.
            previous = self._previous
            while isinstance(meter := getattr(previous, "meter", None), _IdleMeter) and (
                meter._retired
            ):
                previous = meter._previous
            if previous is None:
                del selector.select  # type: ignore[attr-defined]  # the class's again
            else:
                selector.select = previous  # type: ignore[attr-defined]
        # Else another meter wrapped this one since (a reload starts the new share before
        # the old one stops): it unwinds this one when it ends.
        self._wrapper = None
