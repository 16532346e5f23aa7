"""The APScheduler wrapper: repeated runs, no overlap, bounded runs, draining stop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from structlog.testing import capture_logs

from poller.schedule import Lateness, Scheduler


async def test_jobs_repeat_and_never_overlap() -> None:
    scheduler = Scheduler()
    running = 0
    most = 0
    runs = 0
    enough = asyncio.Event()

    async def job() -> None:
        nonlocal running, most, runs
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.15)  # longer than the interval: runs would overlap
        running -= 1
        runs += 1
        if runs >= 3:
            enough.set()

    scheduler.every("j", 0.05, job, timeout=5)
    scheduler.start()
    try:
        await asyncio.wait_for(enough.wait(), 10)
    finally:
        await scheduler.stop(5)
    assert most == 1


async def test_a_hung_run_is_cut_off_and_the_next_run_happens() -> None:
    scheduler = Scheduler()
    calls = 0
    second = asyncio.Event()

    async def job() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            await asyncio.Event().wait()  # hangs for ever
        second.set()

    with capture_logs() as logs:
        scheduler.every("hung", 0.05, job, timeout=0.2)
        scheduler.start()
        try:
            await asyncio.wait_for(second.wait(), 10)
        finally:
            await scheduler.stop(5)
    assert any(e["event"] == "job_timeout" and e["job"] == "hung" for e in logs)


async def test_a_failing_job_is_logged_and_keeps_its_schedule() -> None:
    scheduler = Scheduler()
    calls = 0
    again = asyncio.Event()

    async def job() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("boom")
        again.set()

    with capture_logs() as logs:
        scheduler.every("flaky", 0.05, job, timeout=5)
        scheduler.start()
        try:
            await asyncio.wait_for(again.wait(), 10)
        finally:
            await scheduler.stop(5)
    assert any(e["event"] == "job_failed" for e in logs)


async def test_stop_lets_a_running_job_finish_within_the_grace() -> None:
    scheduler = Scheduler()
    started = asyncio.Event()
    release = asyncio.Event()
    finished = False

    async def job() -> None:
        nonlocal finished
        started.set()
        await release.wait()
        finished = True

    scheduler.every("slow", 60, job, timeout=60)
    scheduler.start()
    await asyncio.wait_for(started.wait(), 10)
    asyncio.get_running_loop().call_later(0.1, release.set)
    await scheduler.stop(grace=10)
    assert finished
    assert not scheduler.running


async def test_stop_cancels_a_job_that_outlives_the_grace() -> None:
    scheduler = Scheduler()
    started = asyncio.Event()
    cancelled = False

    async def job() -> None:
        nonlocal cancelled
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled = True
            raise

    scheduler.every("stuck", 60, job, timeout=60)
    scheduler.start()
    await asyncio.wait_for(started.wait(), 10)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await scheduler.stop(grace=0.2)
    assert cancelled
    assert loop.time() - t0 < 5


async def test_a_gate_wait_counts_as_lateness_not_against_the_timeout() -> None:
    scheduler = Scheduler()
    lateness = Lateness(0.01)
    gate_open = asyncio.Event()
    entries = 0
    runs = 0
    third = asyncio.Event()

    @contextlib.asynccontextmanager
    async def gate() -> AsyncIterator[None]:
        nonlocal entries
        entries += 1
        if entries == 2:  # the first run passes; the second is held
            await gate_open.wait()
        yield

    async def job() -> None:
        nonlocal runs
        runs += 1
        if runs == 3:
            third.set()

    with capture_logs() as logs:
        scheduler.every("gated", 0.05, job, timeout=0.1, lateness=lateness, gate=gate)
        scheduler.start()
        try:
            await asyncio.sleep(0.5)  # five timeouts' worth held at the gate
            assert runs == 1
            gate_open.set()
            await asyncio.wait_for(third.wait(), 10)
        finally:
            await scheduler.stop(5)
    assert not any(e["event"] == "job_timeout" for e in logs)
    assert lateness.seconds >= 0.3, "the held run started late, and says so"


async def test_stop_drops_runs_still_waiting_at_their_gate_at_once() -> None:
    scheduler = Scheduler()
    waiting = asyncio.Event()
    ran = False

    @contextlib.asynccontextmanager
    async def gate() -> AsyncIterator[None]:
        waiting.set()
        await asyncio.Event().wait()  # never opens
        yield

    async def job() -> None:
        nonlocal ran
        ran = True

    with capture_logs() as logs:
        scheduler.every("held", 0.05, job, timeout=5, gate=gate)
        scheduler.start()
        await asyncio.wait_for(waiting.wait(), 10)
        started = asyncio.get_running_loop().time()
        await scheduler.stop(30)
        took = asyncio.get_running_loop().time() - started
    assert not ran
    assert took < 5, "a run that never began must not use up the grace"
    assert not any(e["event"] in {"jobs_interrupted", "job_failed"} for e in logs)
