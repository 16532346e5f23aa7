"""Our small seam over APScheduler 3: it says *when* to run; state lives in the store."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager

import structlog
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger
from structlog.typing import FilteringBoundLogger

from poller.aio import finish_or_cancel
from poller.tally import PeriodTally
from poller.timeutil import utcnow

Job = Callable[[], Awaitable[object]]
Gate = Callable[[], AbstractAsyncContextManager[None]]


class Lateness:
    """How much later than their schedule runs start; at most one warning per ``period``.

    Why not APScheduler's own reports: under overload it logged a warning for
    every skipped run (31,338 for 3,794 polls in one benchmark window), so the
    daemon spent its CPU saying it was behind. Those loggers are silenced (see
    poller.log) and this says it once per period, with numbers.
    """

    def __init__(self, period: float, *, logger: FilteringBoundLogger | None = None) -> None:
        self._tally = PeriodTally(period)
        self._log = logger or structlog.get_logger("poller.schedule")
        self._published = 0.0

    @property
    def seconds(self) -> float:
        """The largest lateness of the runs started in the last full period (and since)."""
        return max(self._published, self._tally.peak)

    def observe(self, lag: float, now: float) -> None:
        """Note one run that started ``lag`` seconds late (0 when on time)."""
        if lag > 0:
            self._tally.note(lag, now)
        if (summary := self._tally.close(now)) is None:
            return
        if summary.count:
            self._log.warning(
                "polls_late",
                late=summary.count,
                max_lag_s=round(summary.peak, 3),
                period_s=round(summary.span, 1),
            )
        self._published = summary.peak


class Scheduler:
    """Interval jobs that never overlap themselves and can be drained on shutdown."""

    def __init__(self, *, logger: FilteringBoundLogger | None = None) -> None:
        self._scheduler = AsyncIOScheduler(
            timezone=dt.UTC,
            job_defaults={"coalesce": True, "max_instances": 1},
        )
        self._running: set[asyncio.Task[object]] = set()
        self._queued: set[asyncio.Task[object]] = set()  # waiting at their gate
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
        lateness: Lateness | None = None,
        gate: Gate | None = None,
    ) -> None:
        """Run ``job`` every ``interval`` seconds, first after ``first_in``, each run bounded.

        With ``lateness``, each run reports how much later than ``interval`` (and its
        jitter) after the previous run it started: skipped or delayed runs show there.
        With ``gate``, each run first waits to enter it; that wait counts as lateness,
        not against ``timeout`` (the job has not begun), and ``stop`` cancels it at once.
        """
        previous: float | None = None

        async def bounded() -> None:
            nonlocal previous
            if lateness is not None:
                now = time.monotonic()
                if previous is not None:
                    lateness.observe(max(0.0, now - previous - interval - jitter), now)
                previous = now
            try:
                # A hung request must not block its room forever: APScheduler
                # would skip every later run while this one is "running".
                async with asyncio.timeout(timeout):
                    await job()
            except TimeoutError:
                self._log.warning("job_timeout", job=job_id, timeout_s=timeout)
            except Exception:
                self._log.exception("job_failed", job=job_id)

        async def run() -> None:
            task = asyncio.current_task()
            assert task is not None
            if gate is None:
                self._running.add(task)
                try:
                    await bounded()
                finally:
                    self._running.discard(task)
                return
            self._queued.add(task)
            admitted = False
            try:
                async with gate():
                    admitted = True
                    self._queued.discard(task)
                    self._running.add(task)
                    await bounded()
            except asyncio.CancelledError:
                if admitted:
                    raise
                # stop() dropped a run that never began: a normal end, not a failure.
            finally:
                self._queued.discard(task)
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

    def next_run(self, job_id: str) -> dt.datetime | None:
        """When ``job_id`` fires next (None: no such job, or the scheduler is paused)."""
        job = self._scheduler.get_job(job_id)
        when: dt.datetime | None = None if job is None else job.next_run_time
        return when

    def remove(self, job_id: str) -> bool:
        """Fire ``job_id`` no more (a run under way finishes); False if it was not there."""
        if self._scheduler.get_job(job_id) is None:
            return False
        self._scheduler.remove_job(job_id)
        return True

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
        # Runs still waiting at their gate have not begun: nothing to finish.
        queued = list(self._queued)
        for task in queued:
            task.cancel()
        await asyncio.gather(*queued, return_exceptions=True)
        interrupted = await finish_or_cancel(list(self._running), grace)
        if interrupted:
            self._log.warning("jobs_interrupted", count=interrupted)
        if self._scheduler.running:
            # Nothing is running any more, so shutdown() has nothing to cancel.
            self._scheduler.shutdown(wait=False)
            await asyncio.sleep(0)  # AsyncIOScheduler shuts down on the next loop turn
