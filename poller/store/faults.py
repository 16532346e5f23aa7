"""Which store operations are failing now: the one record that health, metrics and logs share.

Why one record: a store fault (a full disk, a read-only file system, a database restart, a
lock held by another process) shows up as a failure of whichever operation happens to run,
in the poll, the delivery loop or the heartbeat, each of which already copes with it. What
the operator needs besides is one answer to "is the store failing, since when, and doing
what": an error line when a spell of failures starts and a line when it ends (not a
traceback per retry), a counter by operation, and ``/readyz`` 503 while it lasts.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog

__all__ = ["Fault", "FaultListener", "Faults", "StoreFile"]


@dataclass(frozen=True, slots=True)
class Fault:
    """A store operation whose latest call failed."""

    operation: str
    error: str  # the driver's one line (parameters are hidden, see StoreError)
    since: float  # monotonic: the first failure of this spell
    last: float  # monotonic: the latest failure
    failures: int  # in this spell


# Called with the fault after each failure, and with ``first`` True when a spell begins.
FaultListener = Callable[[Fault, bool], None]


class Faults:
    """The failing store operations; an operation recovers at its next success."""

    def __init__(self) -> None:
        self._failing: dict[str, Fault] = {}
        self._listeners: list[FaultListener] = []
        self._log = structlog.get_logger("poller.store")

    def listen(self, listener: FaultListener) -> None:
        """Call ``listener`` after every failure (the metrics count them)."""
        self._listeners.append(listener)

    def failed(self, operation: str, error: str) -> None:
        """Note a failure of ``operation``."""
        now = time.monotonic()
        prior = self._failing.get(operation)
        fault = Fault(
            operation,
            error,
            since=now if prior is None else prior.since,
            last=now,
            failures=1 if prior is None else prior.failures + 1,
        )
        self._failing[operation] = fault
        if prior is None:
            self._log.error("store_failing", operation=operation, error=error)
        for listener in self._listeners:
            listener(fault, prior is None)

    def succeeded(self, operation: str) -> None:
        """Note a success of ``operation`` (on the hot path: a dict lookup when all is well)."""
        if not self._failing:
            return
        fault = self._failing.pop(operation, None)
        if fault is not None:
            self._log.info(
                "store_recovered",
                operation=operation,
                failures=fault.failures,
                failing_for_s=round(time.monotonic() - fault.since, 3),
            )

    def current(self, *, within: float) -> list[Fault]:
        """Operations still failing whose latest failure is at most ``within`` seconds old.

        Why the age limit: an operation that failed once and is not called again (a
        start-up step) would otherwise count as failing for ever.
        """
        now = time.monotonic()
        return [f for f in self._failing.values() if now - f.last <= within]


class StoreFile:
    """The SQLite file the store opened, to notice it being deleted or replaced.

    SQLite keeps writing to a file deleted under it (the open descriptor keeps its inode
    alive), so nothing fails until the next start finds an empty store and every pending
    delivery is gone. So the file's identity is checked from outside.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._identity = self._stat()

    def _stat(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_dev, st.st_ino

    def problem(self) -> str | None:
        """Why the path no longer names the file the store uses, or None."""
        now = self._stat()
        if now == self._identity:
            return None
        if now is None:
            return f"the store file {self.path} was deleted while in use"
        return f"the store file {self.path} was replaced while in use"

    def check(self, faults: Faults) -> None:
        """Record the file's state as the ``store_file`` operation in ``faults``."""
        problem = self.problem()
        if problem is None:
            faults.succeeded("store_file")
        else:
            faults.failed("store_file", problem)
