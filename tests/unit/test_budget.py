"""The API request budget: turns spaced by 1/rate, polls in order, begun walks first."""

from __future__ import annotations

import asyncio
import contextlib
import time

from structlog.testing import capture_logs

from poller.budget import RequestBudget

RATE = 20.0  # a turn every 50 ms
GAP = 1 / RATE
SLACK = 0.002  # timer resolution: a turn is never early by more


class Log:
    def __init__(self) -> None:
        self.begun = time.monotonic()  # before the first turn was taken
        self.starts: list[tuple[str, float]] = []

    def note(self, name: str) -> None:
        self.starts.append((name, time.monotonic()))

    @property
    def names(self) -> list[str]:
        return [n for n, _ in self.starts]

    def paced(self) -> bool:
        """Whether the k-th start came no sooner than k turns after the log began.

        Why not the gaps between starts: a start seen late (a loaded machine runs its
        callback late) makes the next gap look short though the turns were kept.
        """
        times = sorted(t for _, t in self.starts)
        return all(t >= self.begun + k * GAP - SLACK for k, t in enumerate(times))


async def poll(budget: RequestBudget, log: Log, name: str, pages: int = 1) -> None:
    async with budget.turn():
        for page in range(pages):
            await budget.request()
            log.note(f"{name}{page + 1}")


async def test_request_starts_are_spaced_and_polls_go_in_order() -> None:
    budget = RequestBudget(RATE)
    log = Log()
    polls = [asyncio.create_task(poll(budget, log, f"p{n}-")) for n in range(8)]
    await asyncio.wait_for(asyncio.gather(*polls), 5)
    assert log.names == [f"p{n}-1" for n in range(8)]
    assert log.paced()  # never more than RATE in any second


async def test_a_begun_walk_takes_its_next_pages_ahead_of_waiting_polls() -> None:
    budget = RequestBudget(RATE)
    log = Log()
    walk = asyncio.create_task(poll(budget, log, "a", pages=3))
    await asyncio.sleep(0)  # a is let in first
    waiting = [asyncio.create_task(poll(budget, log, name)) for name in ("b", "c")]
    await asyncio.wait_for(asyncio.gather(walk, *waiting), 5)
    assert log.names == ["a1", "a2", "a3", "b1", "c1"]
    assert log.paced()


async def test_a_poll_that_stops_waiting_holds_no_one_up() -> None:
    budget = RequestBudget(RATE)
    log = Log()
    first = asyncio.create_task(poll(budget, log, "a"))
    await asyncio.sleep(0)
    quitter = asyncio.create_task(poll(budget, log, "q"))
    last = asyncio.create_task(poll(budget, log, "z"))
    await asyncio.sleep(0)
    assert budget.waiting == 2
    quitter.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await quitter
    await asyncio.wait_for(asyncio.gather(first, last), 5)
    assert log.names == ["a1", "z1"]
    assert budget.waiting == 0


async def test_waits_are_counted_and_said_once_a_period() -> None:
    budget = RequestBudget(RATE, period=0.0)
    log = Log()
    with capture_logs() as logs:
        await asyncio.wait_for(asyncio.gather(*(poll(budget, log, f"p{n}") for n in range(4))), 5)
    assert budget.waited_seconds >= 3 * GAP * 0.9
    said = [e for e in logs if e["event"] == "api_budget_exceeded"]
    assert said
    assert all(e["budget_per_s"] == RATE for e in said)
    assert sum(e["polls_delayed"] for e in said) == 3  # the first had a turn at once


async def test_requests_outside_a_poll_take_turns_too() -> None:
    budget = RequestBudget(RATE)
    log = Log()
    for n in range(4):  # a rooms or sessions walk: no poll, still budgeted
        await budget.request()
        log.note(f"r{n}")
    assert log.paced()


async def test_a_request_that_goes_out_late_shares_no_second_with_the_rate_after_it() -> None:
    """Turns 50 ms apart, the first request held 30 ms past its turn (a busy loop, the
    connection limit): the 21st, on time, would reach the API 0.97 s after it."""
    budget = RequestBudget(RATE)
    sent: list[float] = []

    async def one(late: float) -> None:
        await budget.request()
        await asyncio.sleep(late)
        await budget.send()
        sent.append(time.monotonic())

    requests = [one(0.03 if n == 0 else 0.0) for n in range(int(RATE) + 1)]
    await asyncio.wait_for(asyncio.gather(*requests), 5)
    sent.sort()
    assert sent[-1] - sent[0] >= 1.0
