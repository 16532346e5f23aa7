"""How often something happened in a period, and its largest value: said once a period.

Why: under overload, a line per late poll (or per held one, or per wait for the API
budget) costs more than the work it reports. The parts that report such things count
here and log one summary line per period instead.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PeriodTally", "Summary"]


@dataclass(frozen=True, slots=True)
class Summary:
    """What a period held: ``count`` occurrences, the largest ``peak``, over ``span`` s."""

    count: int
    peak: float
    span: float


class PeriodTally:
    """Occurrences and their largest value, per period of ``period`` seconds."""

    def __init__(self, period: float) -> None:
        self._period = period
        self._start: float | None = None
        self._count = 0
        self._peak = 0.0

    @property
    def peak(self) -> float:
        """The largest value noted in the period under way."""
        return self._peak

    def note(self, value: float, now: float) -> None:
        """One occurrence of ``value`` at ``now`` (a clock in seconds)."""
        self.start(now)
        self._count += 1
        self._peak = max(self._peak, value)

    def start(self, now: float) -> None:
        """Begin the first period at ``now`` unless one is under way."""
        if self._start is None:
            self._start = now

    def close(self, now: float) -> Summary | None:
        """The period's summary once it is over (and a new one begins), else None."""
        self.start(now)
        assert self._start is not None
        if now - self._start < self._period:
            return None
        summary = Summary(self._count, self._peak, now - self._start)
        self._start, self._count, self._peak = now, 0, 0.0
        return summary
