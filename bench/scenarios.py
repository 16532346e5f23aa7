"""The benchmark scenarios; each returns one JSON-able row.

The daemon and the baseline are measured alike: CPU time (utime + stime) and
peak RSS (VmHWM) read from /proc/<pid> around the measured work, requests
counted at the fake API, deliveries counted at the sink.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.events import room_ids
from bench.harness import (
    MAX_BUDGET,
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
ON_TIME_MARGIN_S = 1.0  # a room is walked on time when its walks are <= interval + this apart


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


@dataclass(frozen=True, slots=True)
class Rig:
    """A fake API with ``rooms`` rooms, a sink with one webhook, and a daemon config for them."""

    api: str
    api_child: Child
    sink: str
    hooks: list[Hook]
    config: str


def _rig(
    ctx: Context,
    children: Children,
    name: str,
    rooms: int,
    api_args: list[str],
    *,
    interval: float,
    backfill: bool = True,
) -> Rig:
    hooks = new_hooks(1)
    api, api_child = _fake_api(children, "--rooms", str(rooms), *api_args)
    sink = _sink(children, hooks)
    config = daemon_config(
        api_url=api,
        sink_url=sink,
        store_url=_store(ctx, "sqlite", name),
        rooms=room_ids(rooms),
        hooks=hooks,
        interval=interval,
        backfill=backfill,
    )
    return Rig(api, api_child, sink, hooks, config)


def _wait(what: str, done: Callable[[], bool], timeout: float, step: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(step)


def _finish(spy: Child | None, *, now: bool = False) -> None:
    """Let a py-spy recorder write its output (it stops after its duration, or at once on
    SIGINT with ``now``: for windows that end when the work is done)."""
    if spy is not None:
        if now and spy.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                spy.proc.send_signal(signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            spy.proc.wait(30)


def _sink_has(sink: str, count: int, stats: dict[str, Any]) -> Callable[[], bool]:
    """A _wait() condition: the sink holds ``count`` distinct deliveries (``stats`` is
    updated with its latest /_stats on every check)."""

    def done() -> bool:
        stats.update(get_json(f"{sink}/_stats"))
        return int(stats["unique"]) >= count

    return done


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
    rig = _rig(ctx, children, name, rooms, ["--sparse", "100"], interval=interval)
    return rig.api, rig.api_child, rig.config


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
    cpu_per_poll = cpu / max(polls, 1)
    b_cpu_per_poll = b_cpu / max(b_polls, 1)
    return {
        "rooms": rooms,
        "interval_s": interval,
        "window_s": round(elapsed, 2),
        "polls_per_s": round(rate, 1),
        "cpu_ms_per_poll": round(1000 * cpu_per_poll, 3),
        "daemon_cpu_util": round(cpu / elapsed, 2),
        "peak_rss_mb": _mb(d1.hwm_kb),
        "startup_s": round(daemon.startup_s, 3),
        "exit_code": code,
        "api_cpu_util": round((a1.cpu_s - a0.cpu_s) / elapsed, 2),
        "baseline_polls_per_s": round(b_rate, 1),
        "baseline_cpu_ms_per_poll": round(1000 * b_cpu_per_poll, 3),
        "baseline_api_cpu_util": round((ba1.cpu_s - ba0.cpu_s) / b_elapsed, 2),
        "ratio": round(rate / b_rate, 2) if b_rate else None,
        # Throughput per CPU second against the baseline's: the ratio if each had a core.
        "cpu_ratio": round(b_cpu_per_poll / cpu_per_poll, 2) if cpu else None,
        # CPU per poll as a multiple of the raw GET's (the inverse of cpu_ratio).
        "cpu_vs_raw": round(cpu_per_poll / b_cpu_per_poll, 2) if b_cpu else None,
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
        _wait("the backlog to drain", _sink_has(sink, expected, stats), timeout)
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


# --- 2b. walking what the API holds: a backlog there, and known history re-read ---------

WALK_ROOMS = 50  # the backlog scenario's rooms
WALK_PER_ROOM = "68:148"  # events per room in the backlog: one or two pages of 100
HISTORY_PER_ROOM = 250  # known events per room in the history scenario: three pages
HISTORY_INTERVAL = 2.0
HISTORY_RATE = 4.0  # new events per second during the history window


def backlog_walk(ctx: Context, events: int, bound: float) -> Row:
    """Events already at the API, ``backfill = true``: spawn to the last delivery, against a
    raw loop that walks every room's pages and POSTs every event, from its own spawn."""
    interval = 1.0
    with Children(ctx.workdir) as children:
        api_args = ["--per-room", WALK_PER_ROOM, "--total", str(events)]
        rig = _rig(ctx, children, "backlog", WALK_ROOMS, api_args, interval=interval)
        api, sink = rig.api, rig.sink
        daemon = start_daemon(children, "daemon-backlog", rig.config)
        spy = profile(children, "backlog", daemon.child.pid, bound)
        stats: dict[str, Any] = {}
        left = bound - (time.monotonic() - daemon.spawned_at)
        # A slow walk is the finding: report how far it got within the bound.
        with contextlib.suppress(BenchError):
            _wait("every event to be delivered", _sink_has(sink, events, stats), left, 0.05)
        ended = time.monotonic()
        d1 = daemon.child.usage()
        pages = get_json(f"{api}/_stats")["requests"]
        _finish(spy, now=True)
        code = daemon.stop()
        delivered = min(int(stats["unique"]), events)
        complete = delivered >= events
        span = (float(stats["last"]) if complete else ended) - daemon.spawned_at
        daemon_stats = dict(stats)

        post(f"{sink}/_reset")
        r0 = get_json(f"{api}/_stats")["requests"]
        spawned = time.monotonic()
        args = ["walk-deliver", "--api", api, "--rooms", str(WALK_ROOMS), "--sink", sink]
        args += ["--hook", rig.hooks[0].spec]
        child, _ = _baseline(children, "baseline-backlog", args, bound)
        child.send_line("go")
        b_ok, _ = _baseline_done(child, bound)
        b1 = usage(child.pid)  # all of its CPU, from its start, like the daemon's
        b_stats = get_json(f"{sink}/_stats")
        b_pages = get_json(f"{api}/_stats")["requests"] - r0
        child.send_line("exit")

    rate = delivered / span
    b_span = float(b_stats["last"]) - spawned
    b_rate = b_ok / b_span
    return {
        "rooms": WALK_ROOMS,
        "events": events,
        "interval_s": interval,
        "bound_s": bound,
        "delivered": delivered,
        "complete": complete,
        "span_s": round(span, 2),
        "startup_s": round(daemon.startup_s, 3),
        "events_per_s": round(rate, 1),
        "cpu_s": round(d1.cpu_s, 2),
        "cpu_ms_per_event": round(1000 * d1.cpu_s / max(delivered, 1), 3),
        "pages": pages,
        "peak_rss_mb": _mb(d1.hwm_kb),
        "duplicates": daemon_stats["duplicates"],
        "signatures_invalid": daemon_stats["invalid"],
        "exit_code": code,
        "baseline_delivered": b_ok,
        "baseline_pages": b_pages,
        "baseline_span_s": round(b_span, 2),
        "baseline_events_per_s": round(b_rate, 1),
        "baseline_cpu_ms_per_event": round(1000 * b1.cpu_s / max(b_ok, 1), 3),
        "baseline_duplicates": b_stats["duplicates"],
        "ratio": round(rate / b_rate, 3) if b_rate else None,
    }


def _walk_gaps(walks: dict[str, list[float]], t0: float, t1: float, end: float) -> list[float]:
    """Per room, the longest time between two walk starts that spans part of [t0, t1]
    (from the last start before t0; a walk still awaited at ``end`` counts up to ``end``)."""
    longest = []
    for starts in walks.values():
        before = [t for t in starts if t <= t0]
        points = (before[-1:] or [t0]) + [t for t in starts if t > t0]
        gaps = [b - a for a, b in zip(points, [*points[1:], end], strict=True) if a <= t1]
        longest.append(max(gaps))
    return longest


def history(ctx: Context, rooms: int, window: float, settle_bound: float) -> Row:
    """Every room holds three pages of known events, walked every 2 s; a few new events a
    second. CPU per page against a raw loop walking the same pages at the same pace,
    whether each room was walked on time, and the new events' latency."""
    interval = HISTORY_INTERVAL
    count = int(HISTORY_RATE * window)
    with Children(ctx.workdir) as children:
        api_args = ["--per-room", str(HISTORY_PER_ROOM)]
        rig = _rig(
            ctx, children, f"history{rooms}", rooms, api_args, interval=interval, backfill=False
        )
        api, sink = rig.api, rig.sink
        daemon = start_daemon(children, f"daemon-history{rooms}", rig.config)
        # Without backfill a room's first complete poll records its events as seen; once
        # the API has served every room's walk to the end twice, all of it is known.
        api_stats: dict[str, Any] = {}

        def settled() -> bool:
            api_stats.update(get_json(f"{api}/_stats"))
            return int(api_stats["walked_min"]) >= 2

        with contextlib.suppress(BenchError):  # measured anyway; the row says so
            _wait("every room to be walked twice", settled, settle_bound, 0.25)
        settle_s = time.monotonic() - daemon.ready_at
        d0, r0, t0 = daemon.child.usage(), get_json(f"{api}/_stats")["requests"], time.monotonic()
        post(f"{api}/_inject?rate={HISTORY_RATE}&count={count}&rooms={rooms}")
        spy = profile(children, f"history{rooms}", daemon.child.pid, window)
        time.sleep(window)
        d1, r1, t1 = daemon.child.usage(), get_json(f"{api}/_stats")["requests"], time.monotonic()
        _finish(spy)
        stats: dict[str, Any] = {}
        with contextlib.suppress(BenchError):  # a missing event is reported, not waited for
            _wait("the new events to arrive", _sink_has(sink, count, stats), 2 * interval + 5)
        lat = _latencies(api, sink)
        walks: dict[str, list[float]] = get_json(f"{api}/_walks")
        gaps = _walk_gaps(walks, t0, t1, time.monotonic())
        code = daemon.stop()

        args = ["walk", "--api", api, "--rooms", str(rooms), "--duration", str(window)]
        child, b0 = _baseline(
            children, f"baseline-history{rooms}", [*args, "--interval", str(interval)], window
        )
        br0 = get_json(f"{api}/_stats")["requests"]
        child.send_line("go")
        _, b_elapsed = _baseline_done(child, window + 60)
        b1 = usage(child.pid)
        b_pages = get_json(f"{api}/_stats")["requests"] - br0
        child.send_line("exit")

    pages = r1 - r0
    cpu_per_page = (d1.cpu_s - d0.cpu_s) / max(pages, 1)
    b_cpu_per_page = (b1.cpu_s - b0.cpu_s) / max(b_pages, 1)
    late = interval + ON_TIME_MARGIN_S
    return {
        "rooms": rooms,
        "events_per_room": HISTORY_PER_ROOM,
        "interval_s": interval,
        "window_s": round(t1 - t0, 2),
        "settled": int(api_stats["walked_min"]) >= 2,
        "settle_s": round(settle_s, 1),
        "pages": pages,
        "pages_per_s": round(pages / (t1 - t0), 1),
        "cpu_ms_per_page": round(1000 * cpu_per_page, 3),
        "daemon_cpu_util": round((d1.cpu_s - d0.cpu_s) / (t1 - t0), 2),
        "peak_rss_mb": _mb(d1.hwm_kb),
        "max_gap_s": round(max(gaps), 2),
        "late_rooms": sum(1 for g in gaps if g > late),
        "new_events": count,
        **lat,
        "signatures_invalid": stats.get("invalid"),
        "exit_code": code,
        "baseline_pages": b_pages,
        "baseline_pages_per_s": round(b_pages / b_elapsed, 1),
        "baseline_cpu_ms_per_page": round(1000 * b_cpu_per_page, 3),
        "cpu_vs_raw": round(cpu_per_page / b_cpu_per_page, 2) if b_cpu_per_page else None,
    }


# --- 3. end-to-end latency -------------------------------------------------------------


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def _latencies(api: str, sink: str) -> Row:
    """From visible at the fake API to the sink's first receipt, for every injected event."""
    visible: dict[str, float] = get_json(f"{api}/_visible")
    receipts: dict[str, float] = get_json(f"{sink}/_receipts")
    lat = [receipts[i] - t for i, t in visible.items() if i in receipts]
    if not lat:
        return {"received": 0, "p50_ms": None, "p90_ms": None, "p99_ms": None, "max_ms": None}
    return {
        "received": len(lat),
        **{f"p{q}_ms": round(1000 * _percentile(lat, q / 100), 1) for q in (50, 90, 99)},
        "max_ms": round(1000 * max(lat), 1),
    }


def latency(ctx: Context, duration: float, rate: float = 20.0, rooms: int = 50) -> Row:
    """Events appear at a steady rate; from visible at the API to the sink's 2xx."""
    interval = 1.0
    count = int(rate * duration)
    with Children(ctx.workdir) as children:
        rig = _rig(ctx, children, "latency", rooms, [], interval=interval)
        api, sink = rig.api, rig.sink
        daemon = start_daemon(children, "daemon-latency", rig.config)
        time.sleep(interval + 1.0)  # every room polled once: no backfill left
        post(f"{api}/_inject?rate={rate}&count={count}&rooms={rooms}")
        spy = profile(children, "latency", daemon.child.pid, duration)
        stats: dict[str, Any] = {}
        _wait("every injected event to arrive", _sink_has(sink, count, stats), duration + 30, 0.25)
        lat = _latencies(api, sink)
        peak = daemon.child.usage().hwm_kb
        _finish(spy)
        code = daemon.stop()
    return {
        "rooms": rooms,
        "rate_per_s": rate,
        "poll_interval_s": interval,
        "events": count,
        **lat,
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


@dataclass(frozen=True, slots=True)
class _Drain:
    peak_kb: int
    delivered: int
    drain_s: float | None
    exit_code: int


def _drain_while_polling(
    ctx: Context, name: str, rooms: int, events: int, interval: float, bound: float, *, spy: bool
) -> _Drain:
    """A backlog of ``events`` in a new store drained while ``rooms`` are polled every
    ``interval``: from the sink's first receipt to its last."""
    hooks = new_hooks(1)
    ids = room_ids(rooms)
    url = _store(ctx, "sqlite", name)
    seed_backlog(url, ids[:BACKLOG_ROOMS], events, hooks)
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
        daemon = start_daemon(children, f"daemon-{name}", config)
        started = time.monotonic()
        stats: dict[str, Any] = {}
        recorder = profile(children, name, daemon.child.pid, bound) if spy else None
        # A starved backlog is a finding: report how far it got.
        with contextlib.suppress(BenchError):
            _wait("the backlog to drain", _sink_has(sink, events, stats), bound)
        _finish(recorder, now=True)  # the drain is what is profiled, not what follows
        # At least one full round of polls of every room (when they are polled at all).
        if interval < bound:
            time.sleep(max(0.0, interval + 1.0 - (time.monotonic() - started)))
        peak = daemon.child.usage().hwm_kb
        code = daemon.stop()
    delivered = min(int(stats["unique"]), events)
    drained = float(stats["last"]) - float(stats["first"]) if delivered >= events else None
    return _Drain(peak, delivered, drained, code)


def memory(ctx: Context, rooms: int, events: int) -> Row:
    """Peak RSS while polling ``rooms`` rooms flat out and draining a backlog of ``events``;
    and that drain against the same drain with (almost) no polling: delivery must not
    starve while polls saturate the loop (issue 8)."""
    bound = 30 + events / 250
    busy = _drain_while_polling(
        ctx, f"memory{rooms}", rooms, events, rooms / MEMORY_POLLS, bound, spy=True
    )
    # The same rooms, each polled once an hour: the drain alone.
    alone = _drain_while_polling(
        ctx, f"memory{rooms}-alone", rooms, events, 3600.0, bound, spy=False
    )
    share = (
        round(alone.drain_s / busy.drain_s, 2)
        if busy.drain_s and alone.drain_s is not None
        else None
    )
    return {
        "rooms": rooms,
        "backlog": events,
        "peak_rss_mb": _mb(busy.peak_kb),
        "delivered": busy.delivered,
        "drain_s": None if busy.drain_s is None else round(busy.drain_s, 2),
        "alone_drain_s": None if alone.drain_s is None else round(alone.drain_s, 2),
        "share": share,
        "bound_s": bound,
        "exit_code": busy.exit_code,
    }


# --- 8. adaptive polling: fewer requests for the same recordings -------------------------

# The modelled durations (seconds), all divided by the scenario's speed.
_MODEL_INTERVAL = 30.0
_MODEL_IDLE = 600.0
_MODEL_WINDOW = 7200.0
_MODEL_SESSIONS = 30.0
# The budget-bound run's hms.max_requests_per_second, as a share of what adaptive asked.
BUDGET_SHARE = 0.6


def _adaptive_run(
    ctx: Context,
    rooms: int,
    speed: float,
    window: float,
    adaptive: bool,
    *,
    share: float = 0.02,
    budget: float | None = None,
) -> Row:
    """One mode: the fake API's session model from the start, the measured window after a
    warm-up of two intervals (every room's first poll, the first sessions walk).

    With ``budget`` (hms.max_requests_per_second) the warm-up lasts until every room has
    had its first poll too (the budget spreads those out; with backfill off, a recording
    a room's first poll finds is recorded, not delivered). Without, the budget is the
    maximum: what the mode *asks* is measured, not a cap.
    """
    mode = ("adaptive" if adaptive else "fixed") + ("" if budget is None else "-budget")
    interval = _MODEL_INTERVAL / speed
    idle = _MODEL_IDLE / speed
    extra = [
        f"adaptive = {'true' if adaptive else 'false'}",
        f"idle_interval = {idle!r}",
        f"active_window = {_MODEL_WINDOW / speed!r}",
        f"sessions_interval = {_MODEL_SESSIONS / speed!r}",
    ]
    with Children(ctx.workdir) as children:
        hooks = new_hooks(1)
        api, _ = _fake_api(children, "--rooms", str(rooms))
        sink = _sink(children, hooks)
        config = daemon_config(
            api_url=api,
            sink_url=sink,
            store_url=_store(ctx, "sqlite", f"adaptive-{mode}"),
            rooms=room_ids(rooms),
            hooks=hooks,
            interval=interval,
            # Recordings already there at a room's first poll are history, not measured.
            backfill=False,
            poll_extra=extra,
            max_requests_per_second=MAX_BUDGET if budget is None else budget,
        )
        daemon = start_daemon(children, f"daemon-adaptive-{mode}", config)
        # 3 modelled hours of sessions before now: the walks meet a steady state at once.
        post(f"{api}/_sessions?speed={speed!r}&history=180&share={share!r}")
        time.sleep(max(2 * interval, 3.0))
        if budget is not None:
            first_polls = rooms / budget + 30.0

            def all_polled() -> bool:
                return int(get_json(f"{api}/_stats")["walked_min"]) >= 1

            _wait("every room's first poll", all_polled, first_polls, 0.25)
        s0, d0, t0 = get_json(f"{api}/_stats"), daemon.child.usage(), time.monotonic()
        time.sleep(window)
        s1, d1, t1 = get_json(f"{api}/_stats"), daemon.child.usage(), time.monotonic()
        visible: dict[str, float] = get_json(f"{api}/_visible")
        measured = {i: t for i, t in visible.items() if t0 <= t <= t1}
        receipts: dict[str, float] = {}

        def arrived() -> bool:
            receipts.update(get_json(f"{sink}/_receipts"))
            return all(i in receipts for i in measured)

        # A recording in an idle room waits an idle interval at most (the catch-all); a
        # budget that binds may stretch every room's round to rooms / budget seconds.
        drain = max(idle, 0.0 if budget is None else rooms / budget) + 30.0
        with contextlib.suppress(BenchError):
            _wait("the window's recordings to arrive", arrived, drain, 0.25)
        in_window = get_json(f"{api}/_peak?since={t0!r}&until={t1!r}")
        whole = get_json(f"{api}/_peak")  # start-up's first polls included
        code = daemon.stop()
        assert daemon.child.log is not None
        delayed = _budget_waits(daemon.child.log)
    lat = [receipts[i] - t for i, t in measured.items() if i in receipts]
    requests = (s1["requests"] - s0["requests"]) + (
        s1["sessions_requests"] - s0["sessions_requests"]
    )
    model_hours = (t1 - t0) * speed / 3600.0
    cpu = d1.cpu_s - d0.cpu_s
    return {
        "mode": mode,
        "budget_per_s": MAX_BUDGET if budget is None else budget,
        "requests_per_model_hour": round(requests / model_hours),
        "requests_per_s": round(requests / (t1 - t0), 1),
        "sessions_requests_per_model_hour": round(
            (s1["sessions_requests"] - s0["sessions_requests"]) / model_hours
        ),
        "max_requests_in_1s": in_window["max_per_s"],
        "max_requests_in_1s_whole_run": whole["max_per_s"],
        **delayed,
        "recordings": len(measured),
        "received": len(lat),
        "p50_ms": round(1000 * _percentile(lat, 0.5), 1) if lat else None,
        "p99_ms": round(1000 * _percentile(lat, 0.99), 1) if lat else None,
        "max_ms": round(1000 * max(lat), 1) if lat else None,
        "daemon_cpu_util": round(cpu / (t1 - t0), 3),
        "exit_code": code,
    }


def _budget_waits(log: Path) -> Row:
    """What the daemon's log says of polls that waited: for the budget (its
    ``api_budget_exceeded`` lines, one per period with delays) and behind their schedule
    (``polls_late``)."""
    delayed, max_wait, max_lag = 0, 0.0, 0.0
    with log.open() as lines:
        for line in lines:
            if '"api_budget_exceeded"' not in line and '"polls_late"' not in line:
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("event") == "api_budget_exceeded":
                delayed += int(entry.get("polls_delayed", 0))
                max_wait = max(max_wait, float(entry.get("max_wait_s", 0.0)))
            elif entry.get("event") == "polls_late":
                max_lag = max(max_lag, float(entry.get("max_lag_s", 0.0)))
    return {
        "polls_delayed_by_budget": delayed,
        "max_budget_wait_s": round(max_wait, 3),
        "max_poll_lag_s": round(max_lag, 3),
    }


def adaptive(ctx: Context, rooms: int, speed: float, window: float, budget_window: float) -> Row:
    """``rooms`` rooms, 2 % of which hold a 30-minute session each hour, each recording
    1-5 minutes after its session's end, at a clock ``speed`` times fast (every duration
    divided by it), measured for ``window`` real seconds: fixed poll.interval against
    adaptive polling (the defaults: 30 s, idle 10 m, window 2 h, sessions walk 30 s).
    Requests are per modelled hour; latencies are real, from visible at the API to the
    sink (each mode's bound: one interval, interval / speed, plus 5 s). Both runs have
    the maximum budget; a third, adaptive, for ``budget_window`` seconds, has one below
    what adaptive asked, and shows what arrives at the API then: never more requests in
    a second than the budget, and every recording (late, as polls wait for turns)."""
    fixed = _adaptive_run(ctx, rooms, speed, window, adaptive=False)
    adapted = _adaptive_run(ctx, rooms, speed, window, adaptive=True)
    ratio = fixed["requests_per_model_hour"] / max(1, adapted["requests_per_model_hour"])
    # Then a budget that binds: below what adaptive asked, so that polls wait for turns.
    budget = max(1.0, round(BUDGET_SHARE * adapted["requests_per_s"], 1))
    bound = _adaptive_run(ctx, rooms, speed, budget_window, adaptive=True, budget=budget)
    return {
        "rooms": rooms,
        "speed": speed,
        "interval_s": _MODEL_INTERVAL / speed,
        "window_s": window,
        "fixed": fixed,
        "adaptive": adapted,
        "requests_ratio": round(ratio, 2),
        "budget_bound": bound,
    }
