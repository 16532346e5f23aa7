"""The APScheduler wrapper: repeated runs, no overlap, bounded runs, draining stop."""

from __future__ import annotations

import asyncio

from structlog.testing import capture_logs

from poller.schedule import Scheduler


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
