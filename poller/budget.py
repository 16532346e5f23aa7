"""One budget of requests per second for every request poller makes of the 100ms API.

The API documents no rate limit, so poller keeps its own (``hms.max_requests_per_second``):
every request start takes a turn of one ``Pacer``, so no second ever holds more than the
budget; and as it goes out it is counted again (``send``), so that a request that left
late does not share a second with those after it. A twentieth of a second's worth may
start at once (the polls a scheduler fires together), the rest at a steady pace that
keeps every second within the budget.

When the schedule asks for more, it is polls that wait, before they begin, in the order
they fell due (the most overdue first); a walk already under way takes its next
page's turn ahead of them, so a begun walk is never starved into its timeout. Nothing is
dropped: a poll waits for its turn, and ``polls_late`` and the metrics say so.
"""

from __future__ import annotations

import asyncio
import collections
import math
import time
from collections.abc import Callable
from contextvars import ContextVar, Token
from dataclasses import dataclass

import structlog
from structlog.typing import FilteringBoundLogger

from poller.limit import Pacer
from poller.tally import PeriodTally

__all__ = ["RequestBudget"]

BURST_SECONDS = 0.05  # of the budget that may start at once
# How much more than a second the starts a second may hold must span as they go out:
# the API counts arrivals, and each trip takes a little more or less than the last.
SEND_MARGIN = 0.01


@dataclass(slots=True)
class _Turn:
    """A poll's first request, paid for when the poll was let in."""

    at: float  # when it may start (clock time)
    used: bool = False


class RequestBudget:
    """At most ``rate`` request starts a second; ``async with budget.turn():`` around a poll,
    ``await budget.request()`` before each request."""

    def __init__(
        self,
        rate: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        period: float = 10.0,
        logger: FilteringBoundLogger | None = None,
    ) -> None:
        self._pacer = Pacer(rate, clock, burst=max(1, int(rate * BURST_SECONDS)))
        self._clock = clock
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._wakeup: asyncio.TimerHandle | None = None
        # The turn a poll was let in with: its task's context carries it to its first request.
        self._turn: ContextVar[_Turn | None] = ContextVar("poller_budget_turn", default=None)
        self.waited_seconds = 0.0  # time requests and polls waited for a turn (a counter)
        self._log = logger or structlog.get_logger("poller.budget")
        self._delayed = PeriodTally(period)
        self._delayed.start(clock())
        # When the latest requests went out, as many as a second may hold.
        self._sent: collections.deque[float] = collections.deque(maxlen=max(1, math.floor(rate)))

    @property
    def rate(self) -> float:
        return self._pacer.rate

    @property
    def waiting(self) -> int:
        """Polls waiting for a turn now."""
        return sum(1 for w in self._waiters if not w.done())

    def turn(self) -> _TurnGate:
        """Wait, in order, until a request may start now; that start is the poll's first
        request's (``request`` inside the body takes it without waiting again)."""
        return _TurnGate(self)

    async def _enter(self) -> Token[_Turn | None]:
        started = self._clock()
        waited = 0.0
        if self._waiters or self._pacer.ready_in() > 0:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            if self._wakeup is None:  # else a look is already due, in order
                self._schedule()
            try:
                await waiter
            except asyncio.CancelledError:
                self._schedule()  # the next in line may be due
                raise
            waited = self._clock() - started
        else:
            self._pacer.reserve()
        self._note_poll(waited)
        return self._turn.set(_Turn(self._clock()))

    async def request(self) -> None:
        """Wait for this request's turn (at once, for a poll's first request)."""
        turn = self._turn.get()
        if turn is not None and not turn.used:
            turn.used = True
            wait = turn.at - self._clock()
        else:
            wait = self._pacer.reserve()
        if wait > 0:
            self.waited_seconds += wait
            await asyncio.sleep(wait)

    async def send(self) -> None:
        """The last look as a request goes out (after ``request``, at the connection):
        wait while the latest starts a second may hold went out less than a second ago.

        Why: a turn is a time, and the request it was for may go out later (a busy loop
        runs its timer late, the connection limit holds it) while the next goes on time:
        turns a second apart then reach the API within one. Counting the starts as they
        happen keeps every second within the budget as the API sees it; when nothing is
        late, this never waits but for the margin.
        """
        sent = self._sent
        while len(sent) == sent.maxlen:
            wait = sent[0] + 1.0 + SEND_MARGIN - self._clock()
            if wait <= 0:
                break
            self.waited_seconds += wait
            await asyncio.sleep(wait)
        sent.append(self._clock())

    def _schedule(self) -> None:
        """Let the first waiters in while the pacer has a turn now, or look again then."""
        if self._wakeup is not None:
            self._wakeup.cancel()
            self._wakeup = None
        while self._waiters:
            if self._waiters[0].done():  # cancelled while waiting
                self._waiters.popleft()
                continue
            ahead = self._pacer.ready_in()
            if ahead > 0:
                loop = asyncio.get_running_loop()
                self._wakeup = loop.call_later(ahead, self._schedule)
                return
            self._pacer.reserve()
            self._waiters.popleft().set_result(None)

    def _note_poll(self, waited: float) -> None:
        now = self._clock()
        if waited > 0:
            self.waited_seconds += waited
            self._delayed.note(waited, now)
        # One line per period at most: never one per delayed poll.
        if (summary := self._delayed.close(now)) is None or not summary.count:
            return
        self._log.warning(
            "api_budget_exceeded",
            polls_delayed=summary.count,
            max_wait_s=round(summary.peak, 3),
            budget_per_s=self.rate,
            period_s=round(summary.span, 1),
        )


class _TurnGate:
    """``async with budget.turn():`` (a class, not a generator: one per poll, on the hot
    path)."""

    __slots__ = ("_budget", "_token")

    def __init__(self, budget: RequestBudget) -> None:
        self._budget = budget
        self._token: Token[_Turn | None] | None = None

    async def __aenter__(self) -> None:
        self._token = await self._budget._enter()

    async def __aexit__(self, *exc: object) -> None:
        if self._token is not None:
            self._budget._turn.reset(self._token)
