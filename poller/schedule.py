"""Our small seam over APScheduler 3: it says *when* to run; state lives in the store."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable

import structlog
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger
from structlog.typing import FilteringBoundLogger

from poller.aio import finish_or_cancel
from poller.timeutil import utcnow

Job = Callable[[], Awaitable[object]]


class Scheduler:
    """Interval jobs that never overlap themselves and can be drained on shutdown."""

    def __init__(self, *, logger: FilteringBoundLogger | None = None) -> None:
        self._scheduler = AsyncIOScheduler(
            timezone=dt.UTC,
            job_defaults={"coalesce": True, "max_instances": 1},
        )
        self._running: set[asyncio.Task[object]] = set()
        self._log = logger or structlog.get_logger("poller.schedule")

    def every(
        self,
        job_id: str,
        interval: float,
        job: Job,
        *,
        first_in: float = 0.0,
        jitter: float = 0.0,
        timeout: float,
    ) -> None:
        """Run ``job`` every ``interval`` seconds, first after ``first_in``, each run bounded."""

        async def run() -> None:
            task = asyncio.current_task()
            assert task is not None
            self._running.add(task)
            try:
                # A hung request must not block its room forever: APScheduler
                # would skip every later run while this one is "running".
                async with asyncio.timeout(timeout):
                    await job()
            except TimeoutError:
                self._log.warning("job_timeout", job=job_id, timeout_s=timeout)
            except Exception:
                self._log.exception("job_failed", job=job_id)
            finally:
                self._running.discard(task)

        # The first run is also the trigger's start, so later runs keep whole
        # intervals from it (with only next_run_time, the second run could follow
        # the first almost at once).
        first = utcnow() + dt.timedelta(seconds=first_in)
        self._scheduler.add_job(
            run,
            IntervalTrigger(
                seconds=interval, start_date=first, jitter=jitter or None, timezone=dt.UTC
            ),
            id=job_id,
            name=job_id,
            next_run_time=first,
            misfire_grace_time=max(1, int(interval)),
        )

    def start(self) -> None:
        """Start firing jobs (needs a running event loop)."""
        self._scheduler.start()

    @property
    def running(self) -> bool:
        return bool(self._scheduler.running)

    async def stop(self, grace: float) -> None:
        """Fire no more jobs; give running ones ``grace`` seconds, then cancel them."""
        if self._scheduler.running:
            self._scheduler.pause()
        interrupted = await finish_or_cancel(list(self._running), grace)
        if interrupted:
            self._log.warning("jobs_interrupted", count=interrupted)
        if self._scheduler.running:
            # Nothing is running any more, so shutdown() has nothing to cancel.
            self._scheduler.shutdown(wait=False)
            await asyncio.sleep(0)  # AsyncIOScheduler shuts down on the next loop turn
