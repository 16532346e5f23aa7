"""One summary per period: how many, the largest, over how long."""

from __future__ import annotations

from poller.tally import PeriodTally, Summary


def test_a_period_is_summed_up_once_it_is_over_and_the_next_begins() -> None:
    tally = PeriodTally(10.0)
    tally.note(0.5, now=100.0)
    tally.note(2.0, now=104.0)
    assert tally.close(now=109.9) is None
    assert tally.peak == 2.0
    assert tally.close(now=110.0) == Summary(count=2, peak=2.0, span=10.0)
    assert tally.peak == 0.0
    assert tally.close(now=119.0) is None
    assert tally.close(now=120.0) == Summary(count=0, peak=0.0, span=10.0)


def test_the_first_period_begins_at_the_first_look() -> None:
    tally = PeriodTally(5.0)
    assert tally.close(now=50.0) is None  # begins here, not at 0
    tally.note(1.0, now=52.0)
    assert tally.close(now=55.0) == Summary(count=1, peak=1.0, span=5.0)
