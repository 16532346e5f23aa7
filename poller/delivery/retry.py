"""When to try a failed delivery again."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from poller.backoff import lengthen

# A receiver's Retry-After may lengthen our delay, but not park a delivery for days.
RETRY_AFTER_MAX = 3600.0


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Delays after failed attempts; n delays allow n + 1 attempts."""

    schedule: tuple[float, ...]
    jitter: float = 0.1  # +-10 %: receivers recovering from an outage are not hit in lockstep
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def delay_after(self, attempt: int, retry_after: float | None = None) -> float | None:
        """Seconds until the next try after failed attempt number ``attempt`` (1-based).

        None means the schedule is exhausted and the delivery is dead.
        """
        if attempt < 1:
            raise ValueError(f"attempts are numbered from 1, got {attempt}")
        if attempt > len(self.schedule):
            return None
        delay = self.schedule[attempt - 1] * self.rng.uniform(1 - self.jitter, 1 + self.jitter)
        return lengthen(delay, retry_after, RETRY_AFTER_MAX)
