"""A lean fake of ``GET /analytics/events`` for benchmarks, run in its own process.

``python -m bench.fakeapi --rooms N [--sparse K] [--backlog E --backlog-rooms R]
[--per-room LOW[:HIGH] [--total T]]`` prints ``PORT <n>`` on stdout once it
listens on 127.0.0.1. It accepts any Bearer token, serves pre-serialised events
with snapshot paging (``next`` is ``offset:total``), counts requests and notes
when each room's walks (queries) start and end. ``--per-room`` preloads every
room with LOW to HIGH events (``--total`` in all). Control and stats endpoints:

- ``GET /_stats``: ``{"requests", "walks", "walked_min", "injected", "inject_done"}``:
  requests are pages served, walks the queries begun (first pages), walked_min
  the fewest walks any room has completed (its last page served)
- ``GET /_walks``: ``{room id: [monotonic time each walk began]}``
- ``GET /_visible``: ``{event id: monotonic time it became visible}``
- ``GET /_peak?since=T0&until=T1``: ``{"requests", "max_per_s", "at"}``: of the API
  requests (events and sessions) that arrived within [T0, T1] (monotonic), how many, and
  the most that any half-open 1-second window holds (the budget's own measure), from
  ``at``
- ``POST /_inject?rate=R&count=C&rooms=N``: append C events at R per second,
  round-robin over the first N rooms, recording when each became visible.
- ``GET /sessions``: the sessions listing (``active``, default true: live only;
  ``after``: created after; ``limit``/``start`` paging, ``last`` the next start),
  served from the model that ``POST /_sessions`` starts (see ``SessionModel``):
  rooms hold sessions and each session's recording appears a while after its end,
  recorded in ``/_visible``. ``/_stats`` then also counts ``sessions_requests``.
- ``GET /_sessions``: every session of the model so far, with its room, start and end
  and its recording's event id and due time (monotonic), to tell why a recording was
  late.

``time.monotonic()`` is CLOCK_MONOTONIC, shared by every process on the host,
so these times compare directly with the sink's.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import bisect
import dataclasses
import datetime as dt
import itertools
import json
import random
import sys
import time
from collections.abc import Sequence
from typing import Any

from aiohttp import web

from bench.events import backlog, compact, make_event, preloaded, room_counts, room_ids
from bench.procs import serve_until_signalled

_JSON = "application/json"


@dataclasses.dataclass(frozen=True, slots=True)
class SessionModel:
    """Sessions at a fast clock: every duration is the modelled one divided by ``speed``.

    Each modelled hour ``share`` of the rooms start a session (at random rooms, evenly
    spaced), each lasting ``minutes``; its recording appears ``recording`` (low, high)
    minutes after its end. ``history`` modelled minutes of such sessions are laid out
    before the start, so the walks meet a steady state at once (their recordings that
    are already due are in the rooms' history, not measured).
    """

    speed: float
    share: float = 0.02
    minutes: float = 30.0
    recording: tuple[float, float] = (1.0, 5.0)
    history: float = 180.0

    def seconds(self, minutes: float) -> float:
        """Real seconds of so many modelled minutes."""
        return minutes * 60.0 / self.speed


@dataclasses.dataclass(slots=True)
class _Session:
    id: str
    room_id: str
    start: float  # wall time, seconds
    end: float
    created_at: str
    updated_at: str
    body_live: bytes
    body_ended: bytes


def _stamp(wall: float) -> str:
    when = dt.datetime.fromtimestamp(wall, dt.UTC)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class FakeApi:
    """Rooms of pre-serialised events and the counters the benchmark reads."""

    def __init__(self, rooms: dict[str, list[bytes]], seed: int) -> None:
        self.rooms = rooms
        self.order = list(rooms)
        self.requests = 0
        self.injected = 0
        self.inject_done = False
        self.visible: dict[str, float] = {}
        self._rng = random.Random(seed)
        self._inject_task: asyncio.Task[None] | None = None
        self._empty: dict[int, bytes] = {}
        self.walk_starts: dict[str, list[float]] = {room: [] for room in rooms}
        self.walked: dict[str, int] = dict.fromkeys(rooms, 0)
        self.sessions_requests = 0
        # Monotonic arrival of every API request, in order (doubles: a long run has many).
        self.arrivals = array.array("d")
        self._sessions: list[_Session] = []  # by start (and so by created_at)
        self._recordings: dict[str, tuple[str, float]] = {}  # session id: event id, when due
        self._session_task: asyncio.Task[None] | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/analytics/events", self.events)
        app.router.add_get("/_stats", self.stats)
        app.router.add_get("/_visible", self.visible_times)
        app.router.add_get("/_walks", self.walk_times)
        app.router.add_get("/_peak", self.peak)
        app.router.add_post("/_inject", self.inject)
        app.router.add_get("/sessions", self.sessions)
        app.router.add_post("/_sessions", self.start_sessions)
        app.router.add_get("/_sessions", self.session_times)
        return app

    async def sessions(self, request: web.Request) -> web.Response:
        self.arrivals.append(time.monotonic())
        self.sessions_requests += 1
        if not request.headers.get("Authorization", "").startswith("Bearer "):
            return web.Response(status=401, body=b'{"code":401,"message":"no token"}')
        query = request.query
        live_only = query.get("active", "true") == "true"
        after = query.get("after")
        limit = min(100, int(query.get("limit", "10")))
        offset = int(query.get("start") or 0)
        now = time.time()
        first = 0
        if after is not None:
            first = bisect.bisect_right([s.created_at for s in self._sessions], after)
        matched = [
            s for s in self._sessions[first:] if s.start <= now and (not live_only or s.end > now)
        ]
        page = matched[offset : offset + limit]
        last = str(offset + limit) if offset + limit < len(matched) else ""
        items = b",".join(s.body_live if s.end > now else s.body_ended for s in page)
        body = b'{"limit":%d,"data":[%s],"last":"%s"}' % (limit, items, last.encode())
        return web.Response(body=body, content_type=_JSON)

    async def session_times(self, _request: web.Request) -> web.Response:
        """Every session so far, its start and end as monotonic times (for diagnosis)."""
        shift = time.monotonic() - time.time()
        return web.json_response(
            [
                {
                    "id": s.id,
                    "room_id": s.room_id,
                    "start": s.start + shift,
                    "end": s.end + shift,
                    "recording": self._recordings[s.id][0],
                    "recording_due": self._recordings[s.id][1] + shift,
                }
                for s in self._sessions
            ]
        )

    async def start_sessions(self, request: web.Request) -> web.Response:
        if self._session_task is not None:
            return web.Response(status=409)
        model = SessionModel(
            speed=float(request.query["speed"]),
            share=float(request.query.get("share", "0.02")),
            minutes=float(request.query.get("minutes", "30")),
            history=float(request.query.get("history", "180")),
        )
        self._session_task = asyncio.create_task(self._run_sessions(model))
        return web.Response(status=202)

    async def _run_sessions(self, model: SessionModel) -> None:
        """Lay out the history, then start sessions as the model says, and publish each
        recording when it is due."""
        hour = model.seconds(60.0)
        gap = hour / max(1e-9, model.share * len(self.order))  # between two session starts
        wall0 = time.time()
        loop = asyncio.get_running_loop()
        for n in itertools.count():
            start = wall0 - model.seconds(model.history) + n * gap
            now = time.time()
            if start > now:
                await asyncio.sleep(start - now)
            room = self._rng.choice(self.order)
            end = start + model.seconds(model.minutes)
            low, high = model.recording
            ready = end + model.seconds(self._rng.uniform(low, high))
            self._add_session(n, room, start, end)
            event = make_event(self._rng, room, int(ready * 1e9))
            self._recordings[self._sessions[-1].id] = (str(event["id"]), ready)
            if ready <= wall0:
                self.rooms[room].append(compact(event).encode())  # history: not measured
            else:
                loop.call_later(ready - time.time(), self._publish, room, event)

    def _publish(self, room: str, event: dict[str, Any]) -> None:
        self.rooms[room].append(compact(event).encode())
        self.visible[str(event["id"])] = time.monotonic()
        self.injected += 1

    def _add_session(self, n: int, room: str, start: float, end: float) -> None:
        sid = f"s{n:08d}"
        created, ended = _stamp(start), _stamp(end)

        def body(active: bool) -> bytes:
            updated = created if active else ended
            return json.dumps(
                {
                    "id": sid,
                    "room_id": room,
                    "active": active,
                    "created_at": created,
                    "updated_at": updated,
                },
                separators=(",", ":"),
            ).encode()

        self._sessions.append(
            _Session(sid, room, start, end, created, ended, body(True), body(False))
        )

    async def events(self, request: web.Request) -> web.Response:
        self.arrivals.append(time.monotonic())
        self.requests += 1
        if not request.headers.get("Authorization", "").startswith("Bearer "):
            return web.Response(status=401, body=b'{"code":401,"message":"no token"}')
        query = request.query
        room = query.get("room_id", "")
        limit = int(query.get("limit", "10"))
        events = self.rooms.get(room)
        start = query.get("start")
        if not start and room in self.walk_starts:
            self.walk_starts[room].append(time.monotonic())
        if not events:
            if room in self.walked:
                self.walked[room] += 1
            body = self._empty.get(limit)
            if body is None:
                body = b'{"limit":%d,"total":0,"next":"","events":[]}' % limit
                self._empty[limit] = body
            return web.Response(body=body, content_type=_JSON)
        if start:
            offset_s, _, total_s = start.partition(":")
            offset, total = int(offset_s), int(total_s)
        else:
            offset, total = 0, len(events)  # the snapshot: events appended later wait
        end = min(offset + limit, total)
        nxt = b"%d:%d" % (end, total) if end < total else b""
        if not nxt and room in self.walked:
            self.walked[room] += 1
        body = b'{"limit":%d,"total":%d,"next":"%s","events":[%s]}' % (
            limit,
            total,
            nxt,
            b",".join(events[offset:end]),
        )
        return web.Response(body=body, content_type=_JSON)

    async def stats(self, _request: web.Request) -> web.Response:
        return web.json_response(
            {
                "requests": self.requests,
                "walks": sum(len(t) for t in self.walk_starts.values()),
                "walked_min": min(self.walked.values(), default=0),
                "injected": self.injected,
                "inject_done": self.inject_done,
                "sessions_requests": self.sessions_requests,
            }
        )

    async def peak(self, request: web.Request) -> web.Response:
        since = float(request.query.get("since", "-inf"))
        until = float(request.query.get("until", "inf"))
        lo = bisect.bisect_left(self.arrivals, since)
        hi = bisect.bisect_right(self.arrivals, until)
        count, at = busiest_second(self.arrivals[lo:hi])
        return web.json_response({"requests": hi - lo, "max_per_s": count, "at": at})

    async def visible_times(self, _request: web.Request) -> web.Response:
        return web.json_response(self.visible)

    async def walk_times(self, _request: web.Request) -> web.Response:
        return web.json_response(self.walk_starts)

    async def inject(self, request: web.Request) -> web.Response:
        if self._inject_task is not None:
            return web.Response(status=409)
        rate = float(request.query["rate"])
        count = int(request.query["count"])
        rooms = self.order[: int(request.query["rooms"])]
        self._inject_task = asyncio.create_task(self._inject(rate, count, rooms))
        return web.Response(status=202)

    async def _inject(self, rate: float, count: int, rooms: list[str]) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        for i in range(count):
            delay = started + i / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            room = rooms[i % len(rooms)]
            event = make_event(self._rng, room)
            self.rooms[room].append(compact(event).encode())
            # Visible from this instant: the next query of the room returns it.
            self.visible[event["id"]] = time.monotonic()
            self.injected += 1
        self.inject_done = True


def busiest_second(times: Sequence[float]) -> tuple[int, float | None]:
    """The most of ``times`` (ascending) in any half-open window of one second, and where
    the first such window begins (None: no times)."""
    best, at, first = 0, None, 0
    # The busiest window can be taken to begin at a time of the list: slide its start.
    for last, t in enumerate(times):
        while times[first] <= t - 1.0:
            first += 1
        if last - first + 1 > best:
            best, at = last - first + 1, times[first]
    return best, at


def build_rooms(
    count: int,
    sparse: int,
    backlog_events: int,
    backlog_rooms: int,
    seed: int,
    per_room: list[int] | None = None,
) -> dict[str, list[bytes]]:
    """``count`` rooms, every ``sparse``-th holding one event, plus a backlog on the first
    rooms, plus ``per_room[i]`` events in room i."""
    ids = room_ids(count)
    rooms: dict[str, list[bytes]] = {r: [] for r in ids}
    if per_room:
        for room, event in preloaded(ids, per_room, seed + 3):
            rooms[room].append(compact(event).encode())
    if sparse > 0:
        rng = random.Random(seed + 7)
        for i in range(0, count, sparse):
            rooms[ids[i]].append(compact(make_event(rng, ids[i])).encode())
    if backlog_events:
        for room, event in backlog(ids[:backlog_rooms], backlog_events, seed):
            rooms[room].append(compact(event).encode())
    return rooms


async def serve(api: FakeApi, port: int) -> None:
    await serve_until_signalled(api.app(), port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fakeapi")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--rooms", type=int, required=True)
    parser.add_argument("--sparse", type=int, default=0, help="one event in every K-th room")
    parser.add_argument("--backlog", type=int, default=0, help="events preloaded")
    parser.add_argument("--backlog-rooms", type=int, default=100)
    parser.add_argument("--per-room", help="LOW[:HIGH] events preloaded in every room")
    parser.add_argument("--total", type=int, help="with --per-room: events in all rooms")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    per_room = None
    if args.per_room:
        low, _, high = args.per_room.partition(":")
        per_room = room_counts(args.rooms, int(low), int(high or low), args.total, args.seed)
    rooms = build_rooms(
        args.rooms, args.sparse, args.backlog, args.backlog_rooms, args.seed, per_room
    )
    asyncio.run(serve(FakeApi(rooms, args.seed), args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["FakeApi", "SessionModel", "build_rooms", "busiest_second", "main"]
