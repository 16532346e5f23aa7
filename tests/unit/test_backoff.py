"""The back-off shared by the API client and the sender."""

from __future__ import annotations

import random

import pytest

from poller.backoff import exponential, lengthen


def test_starts_at_the_base_grows_and_is_jittered() -> None:
    rng = random.Random(1)
    first = [exponential(1, base=0.5, maximum=30, rng=rng) for _ in range(200)]
    assert min(first) >= 0.5
    assert max(first) <= 0.75
    assert len(set(first)) > 100  # jittered, not a constant
    third = [exponential(3, base=0.5, maximum=30, rng=rng) for _ in range(200)]
    assert min(third) >= 2.0
    assert max(third) <= 3.0


def test_capped_and_finite_for_any_attempt() -> None:
    assert exponential(10_000, base=0.5, maximum=30) == 30
    assert exponential(40, base=0.5, maximum=30) <= 30


def test_attempts_start_at_one() -> None:
    with pytest.raises(ValueError, match="from 1"):
        exponential(0, base=0.5, maximum=30)


def test_retry_after_lengthens_never_shortens_and_is_capped() -> None:
    assert lengthen(2.0, None, 300) == 2.0
    assert lengthen(2.0, 0.0, 300) == 2.0
    assert lengthen(2.0, 10.0, 300) == 10.0
    assert lengthen(2.0, 10_000.0, 300) == 300
