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
- ``POST /_inject?rate=R&count=C&rooms=N``: append C events at R per second,
  round-robin over the first N rooms, recording when each became visible.

``time.monotonic()`` is CLOCK_MONOTONIC, shared by every process on the host,
so these times compare directly with the sink's.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time

from aiohttp import web

from bench.events import backlog, compact, make_event, preloaded, room_counts, room_ids
from bench.procs import serve_until_signalled

_JSON = "application/json"


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

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/analytics/events", self.events)
        app.router.add_get("/_stats", self.stats)
        app.router.add_get("/_visible", self.visible_times)
        app.router.add_get("/_walks", self.walk_times)
        app.router.add_post("/_inject", self.inject)
        return app

    async def events(self, request: web.Request) -> web.Response:
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
            }
        )

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


__all__ = ["FakeApi", "build_rooms", "main"]
