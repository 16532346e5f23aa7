"""A fake 100ms API that follows CONTRACT.md, for tests, ``poller demo`` and benchmarks.

It serves ``GET /analytics/events`` (snapshot paging, auth, the documented
errors), ``GET /rooms`` and ``GET /sessions``, and can be told to misbehave with
``inject()``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import hmac
import random
import signal
import ssl
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import jwt
from aiohttp import web

from poller.sample_events import object_id, recording_event, rfc3339

__all__ = ["Fault", "Simulator", "main"]

Fault = Literal["500", "429", "bad_json", "bad_shape", "bad_event", "401", "hang"]
FILTERS = ("session_id", "peer_id", "user_id", "beam_id")
DEFAULT_LIMIT = 10  # what a query without ``limit`` gets


@dataclass(slots=True)
class _Snapshot:
    """The events one query matched at its first page, in the order it serves them."""

    key: tuple[Any, ...]  # what every follow-up page must repeat
    events: list[dict[str, Any]]


@dataclass(slots=True)
class _Cursor:
    """Where a ``next`` token points; reusable until it expires, as a retry may need it."""

    snapshot: _Snapshot
    offset: int
    created: float


class Simulator:
    """An in-memory 100ms API on a real aiohttp server."""

    def __init__(
        self,
        *,
        access_key: str | None = None,
        app_secret: str | None = None,
        management_token: str | None = None,
        seed: int = 0,
        next_ttl: float = 86400.0,
    ) -> None:
        if app_secret is None and management_token is None:
            raise ValueError("give app_secret (with access_key) or management_token")
        if (access_key is None) != (app_secret is None):
            raise ValueError("access_key and app_secret go together")
        self._access_key = access_key
        self._app_secret = app_secret
        self._management_token = management_token
        # Separate streams, so event ids do not depend on how the API was polled.
        self._ids = random.Random(seed)
        self._order = random.Random(seed + 1)
        self.next_ttl = next_ttl
        self.latency = 0.0  # seconds each events request takes, to make overlap observable
        self.events: dict[str, list[dict[str, Any]]] = {}
        self.requests: list[dict[str, Any]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.base_url = ""
        self._rooms: dict[str, dict[str, Any]] = {}
        self._room_order: list[str] = []
        self.sessions: list[dict[str, Any]] = []  # in creation order
        self.listing_requests: list[dict[str, Any]] = []  # GET /rooms and /sessions
        self._templates: dict[str, str] = {}
        self._faults: collections.deque[tuple[Fault, float | None]] = collections.deque()
        self._cursors: collections.OrderedDict[str, _Cursor] = collections.OrderedDict()
        self._stopping = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.app = web.Application(middlewares=[_json_errors])
        self.app.router.add_get("/analytics/events", self._handle_events)
        self.app.router.add_get("/rooms", self._handle_rooms)
        self.app.router.add_get("/sessions", self._handle_sessions)

    # -- lifecycle ---------------------------------------------------------------

    async def start(
        self, host: str = "127.0.0.1", port: int = 0, *, ssl_context: ssl.SSLContext | None = None
    ) -> str:
        """Serve on host:port (0 picks a free port) and return the base URL; HTTPS with
        ``ssl_context``."""
        self._stopping.clear()
        self._runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port, ssl_context=ssl_context).start()
        bound_host, bound_port = self._runner.addresses[0][:2]
        if ":" in bound_host:
            bound_host = f"[{bound_host}]"
        scheme = "https" if ssl_context is not None else "http"
        self.base_url = f"{scheme}://{bound_host}:{bound_port}"
        return self.base_url

    async def stop(self) -> None:
        """Release hung requests and shut the server down."""
        self._stopping.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- test controls -------------------------------------------------------------

    def add_room(
        self,
        room_id: str,
        *,
        name: str | None = None,
        enabled: bool = True,
        template_id: str | None = None,
    ) -> None:
        """Make a room exist (listed by GET /rooms) even before it has events."""
        if room_id in self._rooms:
            return
        self._templates[room_id] = template_id or self._object_id()
        self._rooms[room_id] = {
            "id": room_id,
            "name": name or f"room-{len(self._room_order) + 1}",
            "enabled": enabled,
            "description": "",
            "template_id": self._templates[room_id],
            "region": "in",
            "created_at": rfc3339(time.time_ns(), digits=3),
        }
        self._room_order.append(room_id)
        self.events.setdefault(room_id, [])

    def set_room(
        self, room_id: str, *, name: str | None = None, enabled: bool | None = None
    ) -> None:
        """Rename, disable or enable a room (it then leaves or joins filtered listings)."""
        room = self._rooms[room_id]
        if name is not None:
            room["name"] = name
        if enabled is not None:
            room["enabled"] = enabled

    def start_session(self, room_id: str) -> str:
        """A peer joins ``room_id``: a live session begins; returns its id."""
        self.add_room(room_id)
        now = rfc3339(time.time_ns(), digits=3)
        session = {
            "id": self._object_id(),
            "room_id": room_id,
            "active": True,
            "created_at": now,
            "updated_at": now,
            "peers": {},
        }
        self.sessions.append(session)
        return str(session["id"])

    def end_session(self, session_id: str) -> dict[str, Any]:
        """The session's last peer leaves: it ends (its recording may follow later)."""
        (session,) = [s for s in self.sessions if s["id"] == session_id]
        session["active"] = False
        session["updated_at"] = rfc3339(time.time_ns(), digits=3)
        return session

    def add_event(
        self, room_id: str, type: str = "beam.recording.success", **data_overrides: Any
    ) -> dict[str, Any]:
        """Append a realistic event to a room and return it; ``data_overrides`` patch its data."""
        self.add_room(room_id)
        event = recording_event(
            self._ids, room_id, template_id=self._templates[room_id], type=type, **data_overrides
        )
        self.events[room_id].append(event)
        return event

    def inject(self, fault: Fault, times: int = 1, *, retry_after: float | None = None) -> None:
        """Make the next ``times`` events requests fail with ``fault``."""
        if fault not in get_args(Fault):
            raise ValueError(f"unknown fault {fault!r}")
        self._faults.extend([(fault, retry_after)] * times)

    # -- handlers ------------------------------------------------------------------

    async def _handle_events(self, request: web.Request) -> web.StreamResponse:
        record: dict[str, Any] = {
            "query": list(request.query.items()),
            "authorized": self._authorized(request),
            "status": 0,  # stays 0 for a request that hangs until the server stops
            "at": time.monotonic(),
        }
        self.requests.append(record)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.latency:
                await asyncio.sleep(self.latency)
            fault, retry_after = self._faults.popleft() if self._faults else (None, None)
            if fault == "hang":
                await self._stopping.wait()
                return web.Response(status=503)
            resp = self._fault_response(fault, retry_after) or self._events_response(
                request, record["authorized"], bad_event=fault == "bad_event"
            )
            record["status"] = resp.status
            return resp
        finally:
            self.in_flight -= 1

    def _fault_response(
        self, fault: Fault | None, retry_after: float | None
    ) -> web.Response | None:
        if fault == "500":
            return _error(500, "internal server error")
        if fault == "429":
            headers = {} if retry_after is None else {"Retry-After": _seconds(retry_after)}
            return _error(429, "too many requests", headers)
        if fault == "401":
            return _error(401, "token expired")
        if fault == "bad_json":
            return web.Response(text="not json{", content_type="application/json")
        if fault == "bad_shape":
            return web.json_response({"limit": 100, "total": 1, "next": "", "events": "oops"})
        return None

    def _events_response(
        self, request: web.Request, authorized: bool, *, bad_event: bool
    ) -> web.Response:
        if not authorized:
            return _error(401, "invalid or expired management token")
        query = request.query
        room_id = query.get("room_id")
        if not room_id:
            return _error(400, "room_id is required")
        limit = _limit(query.get("limit"))
        if limit is None:
            return _error(400, "limit must be an integer between 1 and 100")
        types = tuple(sorted(query.getall("type", [])))
        filters = tuple((k, query[k]) for k in FILTERS if k in query)
        key = (room_id, types, limit, filters)

        start = query.get("start")
        if start is None:
            snapshot = _Snapshot(key, self._match(room_id, types, filters))
            offset = 0
        else:
            cursor = self._cursor(start)
            if cursor is None:
                return _error(400, "invalid or expired start")
            if cursor.snapshot.key != key:
                return _error(400, "start does not belong to this query")
            snapshot, offset = cursor.snapshot, cursor.offset

        page = snapshot.events[offset : offset + limit]
        next_token = ""
        if offset + limit < len(snapshot.events):
            next_token = f"{self._order.getrandbits(128):032x}"
            self._forget_expired_cursors()
            self._cursors[next_token] = _Cursor(snapshot, offset + limit, time.monotonic())
        if bad_event:
            # Everything but the id, so only the id check can reject it.
            broken = {
                "version": "2.0",
                "timestamp": rfc3339(time.time_ns()),
                "type": "beam.recording.success",
                "data": {"room_id": room_id},
            }
            page = [broken, *page]
        body = {"limit": limit, "total": len(snapshot.events), "next": next_token, "events": page}
        return web.json_response(body)

    async def _handle_rooms(self, request: web.Request) -> web.Response:
        self.listing_requests.append({"path": "/rooms", "query": list(request.query.items())})
        if not self._authorized(request):
            return _error(401, "invalid or expired management token")
        query = request.query
        enabled = query.get("enabled", "true")  # the API lists enabled rooms by default
        if enabled not in ("true", "false"):
            return _error(400, "enabled must be true or false")
        rooms = [
            room
            for room in (self._rooms[r] for r in self._room_order)
            if room["enabled"] == (enabled == "true")
            and query.get("name", room["name"]) == room["name"]
            and query.get("template_id", room["template_id"]) == room["template_id"]
        ]
        return _listing(request, rooms)

    async def _handle_sessions(self, request: web.Request) -> web.Response:
        self.listing_requests.append({"path": "/sessions", "query": list(request.query.items())})
        if not self._authorized(request):
            return _error(401, "invalid or expired management token")
        query = request.query
        active = query.get("active", "true")  # only live sessions unless active=false
        if active not in ("true", "false"):
            return _error(400, "active must be true or false")
        after = query.get("after")
        sessions = [
            s
            for s in self.sessions
            if (active == "false" or s["active"])
            and query.get("room_id", s["room_id"]) == s["room_id"]
            and (after is None or s["created_at"] > after)
        ]
        return _listing(request, sessions)

    # -- helpers -------------------------------------------------------------------

    def _authorized(self, request: web.Request) -> bool:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return False
        if self._management_token is not None and hmac.compare_digest(
            token.encode(), self._management_token.encode()
        ):
            return True
        if self._app_secret is None:
            return False
        try:
            claims = jwt.decode(
                token,
                self._app_secret,
                algorithms=["HS256"],
                options={"require": ["exp", "nbf", "iat", "jti"]},
            )
        except jwt.InvalidTokenError:
            return False
        return (
            claims.get("access_key") == self._access_key
            and claims.get("type") == "management"
            and claims.get("version") == 2
            and isinstance(claims.get("jti"), str)
            and bool(claims["jti"])
        )

    def _match(
        self, room_id: str, types: tuple[str, ...], filters: tuple[tuple[str, str], ...]
    ) -> list[dict[str, Any]]:
        """Snapshot a room's matching events, shuffled: the API promises no order."""
        matched = [
            e
            for e in self.events.get(room_id, ())
            if (not types or e["type"] in types) and all(e["data"].get(k) == v for k, v in filters)
        ]
        self._order.shuffle(matched)
        return matched

    def _cursor(self, token: str) -> _Cursor | None:
        """Look up a ``next`` token that has not expired."""
        self._forget_expired_cursors()
        return self._cursors.get(token)

    def _forget_expired_cursors(self) -> None:
        # Cursors are kept in creation order, so expired ones are all at the front.
        horizon = time.monotonic() - self.next_ttl
        while self._cursors:
            oldest = next(iter(self._cursors.values()))
            if oldest.created >= horizon:
                break
            self._cursors.popitem(last=False)

    def _object_id(self) -> str:
        return object_id(self._ids)

    def _uuid(self) -> uuid.UUID:
        return uuid.UUID(int=self._ids.getrandbits(128), version=4)


def _listing(request: web.Request, items: Sequence[dict[str, Any]]) -> web.Response:
    """One page of a listing: ``limit`` items after ``start`` (the previous page's ``last``)."""
    limit = _limit(request.query.get("limit"))
    if limit is None:
        return _error(400, "limit must be an integer between 1 and 100")
    position = 0
    start = request.query.get("start")
    if start is not None:
        ids = [item["id"] for item in items]
        if start not in ids:
            return _error(400, "invalid start")
        position = ids.index(start) + 1
    data = list(items[position : position + limit])
    # ``last`` names the final item of this page; an empty page ends the listing.
    return web.json_response({"limit": limit, "data": data, "last": data[-1]["id"] if data else ""})


@web.middleware
async def _json_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """Answer unknown paths and methods with the API's JSON error shape."""
    try:
        resp: web.StreamResponse = await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _error(exc.status, exc.reason)
    return resp


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(
        {"code": status, "message": message, "details": []}, status=status, headers=headers
    )


def _limit(value: str | None) -> int | None:
    """Parse ``limit``: absent means the default, anything outside 1..100 is None."""
    if value is None:
        return DEFAULT_LIMIT
    try:
        limit = int(value)
    except ValueError:
        return None
    return limit if 1 <= limit <= 100 else None


def _seconds(value: float) -> str:
    return str(int(value)) if value == int(value) else repr(value)


# -- standalone ------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> None:
    """Run the simulator standalone, seeded with rooms and events, until Ctrl-C."""
    parser = argparse.ArgumentParser(
        prog="python -m poller.simulator", description="A fake 100ms analytics events API."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--rooms", type=int, default=3)
    parser.add_argument("--events-per-room", type=int, default=3)
    parser.add_argument(
        "--add-every",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="add one event to a random room this often (0: never)",
    )
    parser.add_argument("--management-token")
    parser.add_argument("--access-key")
    parser.add_argument("--app-secret")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.management_token is None and args.app_secret is None:
        parser.error("give --management-token or --access-key and --app-secret")
    if (args.access_key is None) != (args.app_secret is None):
        parser.error("--access-key and --app-secret go together")
    asyncio.run(_serve(args))


async def _serve(args: argparse.Namespace) -> None:
    sim = Simulator(
        access_key=args.access_key,
        app_secret=args.app_secret,
        management_token=args.management_token,
        seed=args.seed,
    )
    room_ids = random.Random(args.seed + 2)
    rooms = [object_id(room_ids) for _ in range(args.rooms)]
    for room_id in rooms:
        sim.add_room(room_id)
        for _ in range(args.events_per_room):
            sim.add_event(room_id)
    base_url = await sim.start(args.host, args.port)
    print(f"100ms API simulator on {base_url}", flush=True)
    for room_id in rooms:
        print(f"  room {room_id}", flush=True)

    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, done.set)
    try:
        while not done.is_set():
            if args.add_every > 0 and rooms:
                try:
                    await asyncio.wait_for(done.wait(), args.add_every)
                except TimeoutError:
                    event = sim.add_event(random.choice(rooms))
                    print(f"  + {event['id']} in room {event['data']['room_id']}", flush=True)
            else:
                await done.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await sim.stop()


if __name__ == "__main__":
    main()
