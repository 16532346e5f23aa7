"""When to try a failed delivery again."""

from __future__ import annotations

import datetime as dt
import math
import random
from dataclasses import dataclass, field

from poller.backoff import lengthen

__all__ = ["MAX_DELAY", "RETRY_AFTER_MAX", "RetryPolicy"]

# A receiver's Retry-After may lengthen our delay, but not park a delivery for days.
RETRY_AFTER_MAX = 3600.0
# The longest delay of a retry schedule (the config refuses longer ones); a longer
# entry, however it got here, waits this long rather than overflow a date.
MAX_DELAY = 30 * 86400.0


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Delays after failed attempts; n delays allow n + 1 attempts."""

    schedule: tuple[float, ...]
    jitter: float = 0.1  # +-10 %: receivers recovering from an outage are not hit in lockstep
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def delay_after(self, attempt: int, retry_after: float | None = None) -> float | None:
        """Seconds until the next try after failed attempt number ``attempt`` (1-based).

        None means the schedule is exhausted and the delivery is dead. The delay is
        never negative nor longer than ``MAX_DELAY`` (plus jitter).
        """
        if attempt < 1:
            raise ValueError(f"attempts are numbered from 1, got {attempt}")
        if attempt > len(self.schedule):
            return None
        entry = self.schedule[attempt - 1]
        base = min(entry, MAX_DELAY) if math.isfinite(entry) else MAX_DELAY
        delay = max(0.0, base) * self.rng.uniform(1 - self.jitter, 1 + self.jitter)
        return lengthen(delay, retry_after, RETRY_AFTER_MAX)

    def retry_at(
        self, now: dt.datetime, attempt: int, retry_after: float | None = None
    ) -> dt.datetime | None:
        """When to try again after failed attempt ``attempt``, or None when it was the last.

        Never raises for any delay: a date past the calendar's end is capped at its end.
        """
        delay = self.delay_after(attempt, retry_after)
        if delay is None:
            return None
        try:
            return now + dt.timedelta(seconds=delay)
        except OverflowError:
            return dt.datetime.max.replace(tzinfo=dt.UTC)
