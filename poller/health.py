"""The health rules: alive (/healthz, the systemd watchdog) and ready (/readyz)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from sqlalchemy.exc import SQLAlchemyError

from poller.errors import StoreError
from poller.poll import PollResult
from poller.states import PollOutcome
from poller.store.faults import Faults
from poller.timings import Timings

__all__ = ["Check", "Health"]

STORE_CHECK_TIMEOUT = 2.0  # seconds /readyz waits for the store


@dataclass(frozen=True, slots=True)
class Check:
    """One named health check and what it found."""

    name: str
    ok: bool
    detail: str = ""


class Health:
    """Alive: the scheduler runs and the delivery loop turns. Ready: the store answers,
    its schema is current, and a poll did its job recently.

    Why "a poll succeeded", not "no poll failed yet": with a wrong app secret every
    request fails, and a rolling update must not pass its readiness gate. A room
    that is merely slow does not make the instance unready: any poll that did its
    job counts (one handed to another instance too).
    """

    def __init__(
        self,
        timings: Timings,
        *,
        scheduler_running: Callable[[], bool],
        delivery_loop_age: Callable[[], float | None],
        schema: Callable[[], Awaitable[tuple[str | None, str | None]]],
        store_faults: Faults | None = None,
    ) -> None:
        self._timings = timings
        self._faults = store_faults or Faults()
        self._scheduler_running = scheduler_running
        self._loop_age = delivery_loop_age
        self._schema = schema
        self.last_poll_at: float | None = None  # monotonic: the latest poll that did its job

    def polled(self, result: PollResult) -> None:
        """Note a finished poll (the poller's ``on_poll``)."""
        if result.outcome is not PollOutcome.ERROR:
            self.last_poll_at = time.monotonic()

    def live(self) -> list[Check]:
        """Is the process doing anything at all?"""
        age = self._loop_age()
        turning = age is not None and age < self._timings.stall_after
        detail = "not running" if age is None else f"last turn {age:.1f}s ago"
        return [
            Check("scheduler", self._scheduler_running()),
            Check("delivery_loop", turning, detail),
        ]

    async def ready(self) -> list[Check]:
        """Is it doing its job?"""
        checks = self.live()
        schema: Check | None = None
        failed = ""
        try:
            # A store that waits on a lock held elsewhere would hang the probe itself.
            async with asyncio.timeout(STORE_CHECK_TIMEOUT):
                current, head = await self._schema()
        except TimeoutError:
            # Held up (a lock held by another process): a fault like any failure, so the
            # metrics and the log say so too. The next answer clears it.
            self._faults.failed("answer", f"no answer within {STORE_CHECK_TIMEOUT:g}s")
        except (StoreError, SQLAlchemyError, OSError) as exc:
            failed = type(exc).__name__  # a store's own failure is in the record already
        else:
            self._faults.succeeded("answer")
            schema = Check("schema", current == head, f"at {current}, expected {head}")
        # A read answering is not enough: a full disk or a read-only file fails only
        # writes, and a deleted file nothing at all (see poller.store.faults).
        now = time.monotonic()
        problems = [
            f"{f.operation} failing for {now - f.since:.1f}s: {f.error}"
            for f in self._faults.current(within=self._timings.store_fault_window)
        ] or ([failed] if failed else [])
        checks.append(Check("store", schema is not None and not problems, "; ".join(problems)))
        if schema is not None:
            checks.append(schema)
        last = self.last_poll_at
        if last is None:
            checks.append(Check("polls", False, "no successful poll yet"))
        else:
            age = time.monotonic() - last
            recent = age <= self._timings.ready_window
            checks.append(Check("polls", recent, f"last successful poll {age:.1f}s ago"))
        return checks
