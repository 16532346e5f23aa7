"""The benchmark scenarios; each returns one JSON-able row.

The daemon and the baseline are measured alike: CPU time (utime + stime) and
peak RSS (VmHWM) read from /proc/<pid> around the measured work, requests
counted at the fake API, deliveries counted at the sink.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.events import room_ids
from bench.harness import (
    Hook,
    PgDatabases,
    daemon_config,
    new_hooks,
    profile,
    seed_backlog,
    sqlite_url,
    start_daemon,
)
from bench.procs import BenchError, Child, Children, get_json, port_of, post, usage

Row = dict[str, Any]
BACKLOG_ROOMS = 100
OFFERED_POLLS = 5000  # polls/s asked of the daemon in the capacity scenario
MEMORY_POLLS = 2000  # polls/s in the memory scenario (busy, but not overloaded)


@dataclass(frozen=True, slots=True)
class Context:
    workdir: Path
    quick: bool
    pg: PgDatabases | None


def _store(ctx: Context, kind: str, name: str) -> str:
    if kind == "sqlite":
        return sqlite_url(ctx.workdir, name)
    assert ctx.pg is not None
    return ctx.pg.create()


def _fake_api(children: Children, *args: str) -> tuple[str, Child]:
    child = children.spawn("fakeapi", ["-m", "bench.fakeapi", *args])
    return f"http://127.0.0.1:{port_of(child)}", child


def _sink(children: Children, hooks: list[Hook]) -> str:
    args = ["-m", "bench.sink"]
    for hook in hooks:
        args += ["--hook", hook.spec]
    return f"http://127.0.0.1:{port_of(children.spawn('sink', args))}"


def _wait(what: str, done: Callable[[], bool], timeout: float, step: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(step)


def _finish(spy: Child | None) -> None:
    """Let a py-spy recorder write its output (it stops after its duration)."""
    if spy is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            spy.proc.wait(30)


def _mb(kb: int) -> float:
    return round(kb / 1024, 1)


def _baseline(children: Children, name: str, args: list[str], timeout: float) -> tuple[Child, Any]:
    child = children.spawn(name, ["-m", "bench.baseline", *args], stdin=True)
    line = child.read_line(120)
    if line != "READY":
        raise BenchError(f"{name}: expected READY, got {line!r}")
    return child, usage(child.pid)


def _baseline_done(child: Child, timeout: float) -> tuple[int, float]:
    line = child.read_line(timeout)
    word, count, seconds = line.split()
    if word != "DONE":
        raise BenchError(f"{child.name}: expected DONE, got {line!r}")
    return int(count), float(seconds)


# --- 1. poll capacity ------------------------------------------------------------------


def _polling(
    ctx: Context, children: Children, rooms: int, interval: float, name: str
) -> tuple[str, Child, str]:
    """The fake API (one event in every 100th room: mostly empty, as most rooms are
    most of the time), a sink, and a daemon config polling every room."""
    hooks = new_hooks(1)
    api, api_child = _fake_api(children, "--rooms", str(rooms), "--sparse", "100")
    sink = _sink(children, hooks)
    config = daemon_config(
        api_url=api,
        sink_url=sink,
        store_url=_store(ctx, "sqlite", name),
        rooms=room_ids(rooms),
        hooks=hooks,
        interval=interval,
        poll_concurrency=32,
    )
    return api, api_child, config


def poll_capacity(ctx: Context, rooms: int, window: float) -> Row:
    """Saturated polling of mostly empty rooms: polls/s, CPU per poll, peak RSS.

    Every room is due ``OFFERED_POLLS`` times a second in all, more than one core
    can do, so what is achieved is the capacity.
    """
    interval = rooms / OFFERED_POLLS
    with Children(ctx.workdir) as children:
        api, api_child, config = _polling(ctx, children, rooms, interval, f"poll{rooms}")
        api_pid = api_child.pid
        daemon = start_daemon(children, f"daemon-poll{rooms}", config)
        # Every room's first poll (its row inserted, its backfill) happens in the first interval.
        time.sleep(interval + 2.0)
        d0, a0 = daemon.child.usage(), usage(api_pid)
        r0, t0 = get_json(f"{api}/_stats")["requests"], time.monotonic()
        spy = profile(children, f"poll{rooms}", daemon.child.pid, window)
        time.sleep(window)
        d1, a1 = daemon.child.usage(), usage(api_pid)
        r1, t1 = get_json(f"{api}/_stats")["requests"], time.monotonic()
        _finish(spy)
        code = daemon.stop()
        polls = r1 - r0
        elapsed = t1 - t0

        child, b0 = _baseline(
            children,
            f"baseline-poll{rooms}",
            ["poll", "--api", api, "--rooms", str(rooms), "--duration", str(window)],
            window,
        )
        ba0, br0 = usage(api_pid), get_json(f"{api}/_stats")["requests"]
        child.send_line("go")
        _, b_elapsed = _baseline_done(child, window + 60)
        b1, ba1 = usage(child.pid), usage(api_pid)
        b_polls = get_json(f"{api}/_stats")["requests"] - br0
        child.send_line("exit")

    rate = polls / elapsed
    b_rate = b_polls / b_elapsed
    cpu = d1.cpu_s - d0.cpu_s
    b_cpu = b1.cpu_s - b0.cpu_s
    return {
        "rooms": rooms,
        "interval_s": interval,
        "window_s": round(elapsed, 2),
        "polls_per_s": round(rate, 1),
        "cpu_ms_per_poll": round(1000 * cpu / max(polls, 1), 3),
        "daemon_cpu_util": round(cpu / elapsed, 2),
        "peak_rss_mb": _mb(d1.hwm_kb),
        "startup_s": round(daemon.startup_s, 3),
        "exit_code": code,
        "api_cpu_util": round((a1.cpu_s - a0.cpu_s) / elapsed, 2),
        "baseline_polls_per_s": round(b_rate, 1),
        "baseline_cpu_ms_per_poll": round(1000 * b_cpu / max(b_polls, 1), 3),
        "baseline_api_cpu_util": round((ba1.cpu_s - ba0.cpu_s) / b_elapsed, 2),
        "ratio": round(rate / b_rate, 2) if b_rate else None,
        # Throughput per CPU second against the baseline's: the ratio if each had a core.
        "cpu_ratio": round((b_cpu / max(b_polls, 1)) / (cpu / max(polls, 1)), 2) if cpu else None,
    }


def steady(ctx: Context, rooms: int, interval: float, window: float) -> Row:
    """A production-like load: many rooms at a long interval (polls spread evenly)."""
    with Children(ctx.workdir) as children:
        api, _, config = _polling(ctx, children, rooms, interval, f"steady{rooms}")
        daemon = start_daemon(children, f"daemon-steady{rooms}", config)
        time.sleep(2.0)  # the first polls are spread over the interval already
        d0, r0, t0 = daemon.child.usage(), get_json(f"{api}/_stats")["requests"], time.monotonic()
        spy = profile(children, f"steady{rooms}", daemon.child.pid, window)
        time.sleep(window)
        d1, r1, t1 = daemon.child.usage(), get_json(f"{api}/_stats")["requests"], time.monotonic()
        _finish(spy)
        code = daemon.stop()
    polls = r1 - r0
    cpu = d1.cpu_s - d0.cpu_s
    return {
        "rooms": rooms,
        "interval_s": interval,
        "polls_per_s": round(polls / (t1 - t0), 1),
        "cpu_ms_per_poll": round(1000 * cpu / max(polls, 1), 3),
        "daemon_cpu_util": round(cpu / (t1 - t0), 2),
        "peak_rss_mb": _mb(d1.hwm_kb),
        "exit_code": code,
    }


# --- 2. delivery throughput ------------------------------------------------------------


def delivery(ctx: Context, store: str, hook_count: int, events: int) -> Row:
    """Drain a backlog seeded with poller's own record_page: deliveries/s, CPU per delivery."""
    hooks = new_hooks(hook_count)
    rooms = room_ids(BACKLOG_ROOMS)
    expected = events * hook_count
    timeout = 60 + expected / 200
    url = _store(ctx, store, f"deliver{store}{hook_count}")
    seeded = time.monotonic()
    seed_backlog(url, rooms, events, hooks)
    seed_s = time.monotonic() - seeded
    with Children(ctx.workdir) as children:
        api, _ = _fake_api(children, "--rooms", str(BACKLOG_ROOMS))  # nothing new to poll
        sink = _sink(children, hooks)
        config = daemon_config(
            api_url=api,
            sink_url=sink,
            store_url=url,
            rooms=rooms,
            hooks=hooks,
            interval=60.0,
            poll_concurrency=8,
            delivery_concurrency=64,
        )
        daemon = start_daemon(children, f"daemon-deliver-{store}-{hook_count}", config)
        d0 = daemon.child.usage()
        spy = profile(children, f"deliver-{store}-{hook_count}", daemon.child.pid, 5)
        stats: dict[str, Any] = {}

        def drained() -> bool:
            stats.update(get_json(f"{sink}/_stats"))
            return int(stats["unique"]) >= expected

        _wait("the backlog to drain", drained, timeout)
        d1 = daemon.child.usage()
        _finish(spy)
        code = daemon.stop()
        first, last = float(stats["first"]), float(stats["last"])
        daemon_stats = dict(stats)

        post(f"{sink}/_reset")
        args = ["deliver", "--sink", sink, "--events", str(events), "--concurrency", "64"]
        for hook in hooks:
            args += ["--hook", hook.spec]
        child, b0 = _baseline(children, f"baseline-deliver-{hook_count}", args, timeout)
        child.send_line("go")
        b_ok, _ = _baseline_done(child, timeout)
        b1 = usage(child.pid)
        b_stats = get_json(f"{sink}/_stats")
        child.send_line("exit")

    rate = expected / max(last - first, 1e-9)
    b_rate = b_ok / max(float(b_stats["last"]) - float(b_stats["first"]), 1e-9)
    cpu = d1.cpu_s - d0.cpu_s
    return {
        "store": store,
        "webhooks": hook_count,
        "events": events,
        "deliveries": expected,
        "seed_s": round(seed_s, 2),
        "deliveries_per_s": round(rate, 1),
        "cpu_ms_per_delivery": round(1000 * cpu / expected, 3),
        "daemon_cpu_util": round(cpu / max(last - first, 1e-9), 2),
        "peak_rss_mb": _mb(d1.hwm_kb),
        "duplicates": daemon_stats["duplicates"],
        "signatures_verified": daemon_stats["verified"],
        "signatures_invalid": daemon_stats["invalid"],
        "exit_code": code,
        "baseline_deliveries_per_s": round(b_rate, 1),
        "baseline_cpu_ms_per_delivery": round(1000 * (b1.cpu_s - b0.cpu_s) / max(b_ok, 1), 3),
        "ratio": round(rate / b_rate, 2) if b_rate else None,
        "cpu_ratio": round(((b1.cpu_s - b0.cpu_s) / max(b_ok, 1)) / (cpu / expected), 2)
        if cpu
        else None,
    }


# --- 3. end-to-end latency -------------------------------------------------------------


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def latency(ctx: Context, duration: float, rate: float = 20.0, rooms: int = 50) -> Row:
    """Events appear at a steady rate; from visible at the API to the sink's 2xx."""
    interval = 1.0
    count = int(rate * duration)
    hooks = new_hooks(1)
    with Children(ctx.workdir) as children:
        api, _ = _fake_api(children, "--rooms", str(rooms))
        sink = _sink(children, hooks)
        config = daemon_config(
            api_url=api,
            sink_url=sink,
            store_url=_store(ctx, "sqlite", "latency"),
            rooms=room_ids(rooms),
            hooks=hooks,
            interval=interval,
        )
        daemon = start_daemon(children, "daemon-latency", config)
        time.sleep(interval + 1.0)  # every room polled once: no backfill left
        post(f"{api}/_inject?rate={rate}&count={count}&rooms={rooms}")
        spy = profile(children, "latency", daemon.child.pid, duration)
        stats: dict[str, Any] = {}

        def delivered() -> bool:
            stats.update(get_json(f"{sink}/_stats"))
            return int(stats["unique"]) >= count

        _wait("every injected event to arrive", delivered, duration + 30, step=0.25)
        visible: dict[str, float] = get_json(f"{api}/_visible")
        receipts: dict[str, float] = get_json(f"{sink}/_receipts")
        peak = daemon.child.usage().hwm_kb
        _finish(spy)
        code = daemon.stop()
    lat = [receipts[i] - t for i, t in visible.items() if i in receipts]
    return {
        "rooms": rooms,
        "rate_per_s": rate,
        "poll_interval_s": interval,
        "events": count,
        "received": len(lat),
        "p50_ms": round(1000 * _percentile(lat, 0.50), 1),
        "p90_ms": round(1000 * _percentile(lat, 0.90), 1),
        "p99_ms": round(1000 * _percentile(lat, 0.99), 1),
        "max_ms": round(1000 * max(lat), 1),
        "peak_rss_mb": _mb(peak),
        "signatures_invalid": stats["invalid"],
        "exit_code": code,
    }


# --- 5. start-up, and peak memory with many rooms and a backlog --------------------------


def startup(ctx: Context, rooms: int) -> Row:
    """Spawn to READY=1 with ``rooms`` rooms: on a fresh store, then on the same store again."""
    hooks = new_hooks(1)
    url = _store(ctx, "sqlite", f"startup{rooms}")
    with Children(ctx.workdir) as children:
        api, _ = _fake_api(children, "--rooms", str(rooms))
        sink = _sink(children, hooks)
        config = daemon_config(
            api_url=api, sink_url=sink, store_url=url, rooms=room_ids(rooms), hooks=hooks,
            interval=30.0,
        )  # fmt: skip
        cold = start_daemon(children, "daemon-startup-cold", config)
        time.sleep(2.0)
        cold_code = cold.stop()
        warm = start_daemon(children, "daemon-startup-warm", config)
        time.sleep(0.5)
        warm_rss = warm.child.usage().hwm_kb
        warm_code = warm.stop()
    return {
        "rooms": rooms,
        "cold_s": round(cold.startup_s, 3),
        "warm_s": round(warm.startup_s, 3),
        "rss_at_ready_mb": _mb(warm_rss),
        "exit_codes": [cold_code, warm_code],
    }


def memory(ctx: Context, rooms: int, events: int) -> Row:
    """Peak RSS while polling ``rooms`` rooms flat out and draining a backlog of ``events``."""
    hooks = new_hooks(1)
    ids = room_ids(rooms)
    url = _store(ctx, "sqlite", f"memory{rooms}")
    seed_backlog(url, ids[:BACKLOG_ROOMS], events, hooks)
    interval = rooms / MEMORY_POLLS
    with Children(ctx.workdir) as children:
        api, _ = _fake_api(children, "--rooms", str(rooms), "--sparse", "100")
        sink = _sink(children, hooks)
        config = daemon_config(
            api_url=api,
            sink_url=sink,
            store_url=url,
            rooms=ids,
            hooks=hooks,
            interval=interval,
        )
        daemon = start_daemon(children, "daemon-memory", config)
        started = time.monotonic()
        stats: dict[str, Any] = {}

        def drained() -> bool:
            stats.update(get_json(f"{sink}/_stats"))
            return int(stats["unique"]) >= events

        bound = 30 + events / 250
        # A starved backlog is a finding: report how far it got.
        with contextlib.suppress(BenchError):
            _wait("the backlog to drain", drained, bound)
        # At least one full round of polls of every room.
        time.sleep(max(0.0, interval + 1.0 - (time.monotonic() - started)))
        peak = daemon.child.usage().hwm_kb
        code = daemon.stop()
    delivered = min(int(stats["unique"]), events)
    return {
        "rooms": rooms,
        "backlog": events,
        "peak_rss_mb": _mb(peak),
        "delivered": delivered,
        "drain_s": round(float(stats["last"]) - float(stats["first"]), 2)
        if delivered >= events
        else None,
        "bound_s": bound,
        "exit_code": code,
    }
