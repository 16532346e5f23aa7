"""Back-off shared by the API client and the webhook sender."""

from __future__ import annotations

import random

__all__ = ["exponential", "lengthen"]


def exponential(
    attempt: int, *, base: float, maximum: float, rng: random.Random | None = None
) -> float:
    """Seconds to wait after failed attempt ``attempt`` (1-based): ``base`` doubling, jittered.

    Why never below ``base``: "full jitter" (0 to the ceiling) sent the API a
    retry 68 ms after a 500; a struggling server deserves a real pause. The
    jitter (up to +50 %) still spreads the rooms that failed together.
    """
    if attempt < 1:
        raise ValueError(f"attempts are numbered from 1, got {attempt}")
    # Capping the exponent keeps 2**n finite however many attempts are configured.
    ceiling = min(maximum, base * 2.0 ** min(attempt - 1, 32))
    jitter = rng.uniform(1.0, 1.5) if rng is not None else random.uniform(1.0, 1.5)
    return min(maximum, ceiling * jitter)


def lengthen(delay: float, retry_after: float | None, cap: float) -> float:
    """``delay``, or longer when the server asked for it with ``Retry-After`` (up to ``cap``).

    A server's wish may lengthen our pause, never shorten it, and never park the
    work for longer than ``cap``.
    """
    if retry_after is None:
        return delay
    return max(delay, min(retry_after, cap))
