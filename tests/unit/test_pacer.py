"""The rate limit's pacing: starts spaced 1/rate apart, claims bounded by the horizon."""

from __future__ import annotations

import pytest

from poller.limit import Pacer


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_starts_are_spaced_one_over_rate_apart() -> None:
    clock = Clock()
    pacer = Pacer(4.0, clock)
    delays = [pacer.reserve() for _ in range(5)]
    assert delays == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])
    starts = [clock.now + d for d in delays]
    # No window of one second (half-open) holds more than the rate.
    for first in starts:
        assert sum(1 for s in starts if first <= s < first + 1.0) <= 4


def test_an_idle_pacer_does_not_bank_turns() -> None:
    """After a quiet spell the next start is at once, and the one after still waits:
    unlike a token bucket, no burst."""
    clock = Clock()
    pacer = Pacer(2.0, clock)
    pacer.reserve()
    clock.now += 60
    assert pacer.reserve() == 0.0
    assert pacer.reserve() == pytest.approx(0.5)


def test_available_counts_the_turns_within_the_horizon() -> None:
    clock = Clock()
    pacer = Pacer(4.0, clock)  # a turn every 0.25 s
    assert pacer.available() == 4  # at 0, 0.25, 0.5 and 0.75 s
    pacer.reserve()
    pacer.reserve()
    assert pacer.available() == 2  # the next free turn is 0.5 s away
    pacer.reserve()
    pacer.reserve()
    assert pacer.available() == 0  # a second's turns are taken
    assert pacer.ready_in() == pytest.approx(1.0)
    clock.now += 0.5
    assert pacer.available() == 2


def test_a_slow_rate_claims_one_at_a_time() -> None:
    clock = Clock()
    pacer = Pacer(0.5, clock)  # a turn every two seconds
    assert pacer.available() == 1
    assert pacer.reserve() == 0.0
    assert pacer.available() == 0
    assert pacer.ready_in() == pytest.approx(2.0)
    clock.now += 1.5
    assert pacer.available() == 1  # its turn is within the horizon now
    assert pacer.reserve() == pytest.approx(0.5)


def test_a_burst_starts_at_once_and_the_second_still_holds_the_rate() -> None:
    clock = Clock()
    pacer = Pacer(10.0, clock, burst=4)  # steady pace 7 a second
    delays = [pacer.reserve() for _ in range(6)]
    assert delays[:4] == [0.0] * 4
    assert delays[4:] == pytest.approx([1 / 7, 2 / 7])
    assert pacer.available() == 10 - 6


@pytest.mark.parametrize("burst", [1, 3, 50])
def test_no_second_ever_holds_more_than_the_rate(burst: int) -> None:
    """Whatever the arrivals (bursts, quiet spells, a steady flood), every half-open
    window of one second holds at most ``rate`` starts."""
    import random

    rate = 100.0
    rng = random.Random(burst)
    clock = Clock()
    pacer = Pacer(rate, clock, burst=burst)
    starts: list[float] = []
    for _ in range(3000):
        clock.now += rng.choice([0.0, 0.0, 0.001, 0.004, 0.02, 0.3, 1.5])
        start = clock.now + pacer.reserve()
        starts.append(start)
        clock.now = max(clock.now, start - rng.random() * 0.01)  # asked ahead, sometimes
    starts.sort()
    ahead = 0
    for first, at in enumerate(starts):
        while ahead < len(starts) and starts[ahead] < at + 1.0 - 1e-9:
            ahead += 1
        assert ahead - first <= rate


@pytest.mark.parametrize(("rate", "burst"), [(35.5, 1), (2.5, 1), (100.7, 5), (1.2, 1)])
def test_a_fractional_rate_never_lets_one_more_start_into_a_second(rate: float, burst: int) -> None:
    """A second holds whole starts: 35.5 a second is at most 35 in any one (spaced
    1/35.5 apart, 36 would start within 0.986 s)."""
    clock = Clock()
    pacer = Pacer(rate, clock, burst=burst)
    starts = [clock.now + pacer.reserve() for _ in range(int(rate * 5))]
    ahead = 0
    for first, at in enumerate(starts):
        while ahead < len(starts) and starts[ahead] < at + 1.0 - 1e-9:
            ahead += 1
        assert ahead - first <= rate
