"""RetryPolicy: how many attempts, how long between them, and what Retry-After may change."""

from __future__ import annotations

import datetime as dt
import math
import random

import pytest

from poller.delivery.retry import MAX_DELAY, RETRY_AFTER_MAX, RetryPolicy


def attempts_until_dead(policy: RetryPolicy) -> int:
    """How many attempts a delivery that always fails gets."""
    attempt = 1
    while policy.delay_after(attempt) is not None:
        attempt += 1
        assert attempt < 1000
    return attempt


@pytest.mark.parametrize("n", [0, 1, 2, 7])
def test_n_delays_allow_n_plus_one_attempts(n: int) -> None:
    policy = RetryPolicy(tuple(float(i + 1) for i in range(n)), jitter=0.0)
    assert attempts_until_dead(policy) == n + 1


def test_delays_follow_the_schedule_in_order() -> None:
    policy = RetryPolicy((5.0, 300.0, 1800.0), jitter=0.0)
    assert [policy.delay_after(a) for a in (1, 2, 3, 4, 5)] == [5.0, 300.0, 1800.0, None, None]


def test_empty_schedule_is_dead_after_the_first_attempt() -> None:
    policy = RetryPolicy(())
    assert policy.delay_after(1) is None
    assert policy.delay_after(1, retry_after=5.0) is None


def test_exhausted_schedule_ignores_retry_after() -> None:
    policy = RetryPolicy((1.0,), jitter=0.0)
    assert policy.delay_after(2, retry_after=10.0) is None


def test_default_jitter_is_ten_percent() -> None:
    policy = RetryPolicy((100.0,), rng=random.Random(1))
    delays = [policy.delay_after(1) for _ in range(500)]
    assert all(d is not None and 90.0 <= d <= 110.0 for d in delays)


@pytest.mark.parametrize("jitter", [0.1, 0.25, 0.5])
def test_jitter_bounds(jitter: float) -> None:
    schedule = (1.0, 60.0, 3600.0)
    policy = RetryPolicy(schedule, jitter=jitter, rng=random.Random(1234))
    for attempt, base in enumerate(schedule, start=1):
        delays = [policy.delay_after(attempt) for _ in range(300)]
        values = [d for d in delays if d is not None]
        assert len(values) == len(delays)
        assert all(base * (1 - jitter) <= d <= base * (1 + jitter) for d in values)
        # Spread over the band, not stuck at one value, and on both sides of the base.
        assert min(values) < base < max(values)
        assert max(values) - min(values) > base * jitter


def test_jitter_is_reproducible_with_a_seeded_rng() -> None:
    one = RetryPolicy((10.0, 20.0), rng=random.Random(7))
    two = RetryPolicy((10.0, 20.0), rng=random.Random(7))
    assert [one.delay_after(a) for a in (1, 2, 1, 2)] == [two.delay_after(a) for a in (1, 2, 1, 2)]


def test_zero_jitter_is_exact() -> None:
    policy = RetryPolicy((0.25, 2.0), jitter=0.0, rng=random.Random(3))
    assert {policy.delay_after(1) for _ in range(20)} == {0.25}


def test_retry_after_lengthens_a_delay() -> None:
    policy = RetryPolicy((5.0,), jitter=0.0)
    assert policy.delay_after(1, retry_after=60.0) == 60.0


@pytest.mark.parametrize("retry_after", [0.0, 1.0, 4.99])
def test_retry_after_never_shortens_a_delay(retry_after: float) -> None:
    policy = RetryPolicy((5.0,), jitter=0.0)
    assert policy.delay_after(1, retry_after=retry_after) == 5.0


def test_retry_after_with_jitter_is_at_least_both() -> None:
    policy = RetryPolicy((10.0,), jitter=0.1, rng=random.Random(5))
    for _ in range(100):
        delay = policy.delay_after(1, retry_after=10.5)
        assert delay is not None
        assert 10.5 <= delay <= 11.0


def test_retry_after_is_capped() -> None:
    policy = RetryPolicy((5.0,), jitter=0.0)
    assert policy.delay_after(1, retry_after=RETRY_AFTER_MAX * 100) == RETRY_AFTER_MAX
    assert RETRY_AFTER_MAX == 3600.0


def test_cap_does_not_shorten_a_long_scheduled_delay() -> None:
    ten_hours = 36000.0
    policy = RetryPolicy((ten_hours,), jitter=0.0)
    assert policy.delay_after(1, retry_after=10**9) == ten_hours


def test_policy_is_a_frozen_value() -> None:
    policy = RetryPolicy((1.0,))
    with pytest.raises(AttributeError):
        policy.schedule = (2.0,)  # type: ignore[misc]
    # The rng is not part of the value.
    assert RetryPolicy((1.0,), rng=random.Random(1)) == RetryPolicy((1.0,), rng=random.Random(2))


@pytest.mark.parametrize("entry", [MAX_DELAY * 10, 100_000_000 * 3600.0, math.inf, math.nan])
def test_a_delay_past_the_maximum_is_capped(entry: float) -> None:
    policy = RetryPolicy((entry,), jitter=0.0)
    assert policy.delay_after(1) == MAX_DELAY


def test_a_negative_delay_is_no_delay() -> None:
    assert RetryPolicy((-5.0,), jitter=0.0).delay_after(1) == 0.0


def test_retry_at_is_now_plus_the_delay() -> None:
    now = dt.datetime(2025, 3, 1, tzinfo=dt.UTC)
    policy = RetryPolicy((30.0,), jitter=0.0)
    assert policy.retry_at(now, 1) == now + dt.timedelta(seconds=30)
    assert policy.retry_at(now, 2) is None


def test_retry_at_never_raises_at_the_end_of_the_calendar() -> None:
    near_the_end = dt.datetime.max.replace(tzinfo=dt.UTC) - dt.timedelta(days=1)
    policy = RetryPolicy((MAX_DELAY,), jitter=0.0)
    assert policy.retry_at(near_the_end, 1) == dt.datetime.max.replace(tzinfo=dt.UTC)
