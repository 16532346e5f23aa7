"""A poll against an API that misbehaves: every answer ends in a bounded, recorded outcome.

Each case serves real HTTP from 127.0.0.1 to a RoomPoller with a real store
(SQLite and PostgreSQL); outcomes are read from the store, the poll log and the
metrics, never inferred from timing.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog
from aiohttp import web
from sqlalchemy import event

from poller import report
from poller.config import load_config
from poller.hms.client import HmsClient, WalkLimits
from poller.hms.token import StaticToken
from poller.metrics import Metrics
from poller.poll import BASELINE_AFTER_FAILED_WALKS, RoomPoller
from poller.store.repo import Store
from tests.conftest import ConfigWriter, make_secret
from tests.storeops import engine_of

ROOM = "room-1"
RECORDING = "beam.recording.success"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Hook:
    name = "hook"

    def matches(self, room_id: str, event_type: str) -> bool:
        return True


def good(i: int) -> str:
    """A well-formed event as JSON text."""
    return json.dumps(
        {
            "version": "2.0",
            "id": f"good-{i}",
            "timestamp": "2023-01-09T06:18:29.462240675Z",
            "type": RECORDING,
            "data": {"room_id": ROOM, "duration": 33, "size": 15316104},
        }
    )


def page(*entries: str, next_: str = "") -> bytes:
    """A page whose entries are JSON texts, served exactly as written."""
    events = ",".join(entries)
    return f'{{"limit":100,"total":9,"next":{json.dumps(next_)},"events":[{events}]}}'.encode()


def raw_entry(event_id: str, data: str, event_type: str = RECORDING) -> str:
    kind = json.dumps(event_type)
    return f'{{"version":"2.0","id":{event_id},"timestamp":"t","type":{kind},"data":{data}}}'


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], Awaitable[str]]]:
    runners: list[web.AppRunner] = []

    async def start(handler: Handler) -> str:
        app = web.Application()
        app.router.add_get("/analytics/events", handler)
        runner = web.AppRunner(app, shutdown_timeout=0.1)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        host, port = runner.addresses[0][:2]
        return f"http://{host}:{port}"

    yield start
    for runner in runners:
        await runner.cleanup()


def pages_handler(bodies: list[bytes], requests: list[str | None]) -> Handler:
    """Serve ``bodies`` in turn: the first without ``start``, then ``start=p1``, ``p2``..."""

    async def handler(request: web.Request) -> web.Response:
        start = request.query.get("start")
        requests.append(start)
        index = 0 if start is None else int(start.removeprefix("p"))
        return web.Response(body=bodies[index], content_type="application/json")

    return handler


def make_poller(
    session: aiohttp.ClientSession,
    url: str,
    store: Store,
    *,
    metrics: Metrics | None = None,
    backfill: bool = True,
    walk_timeout: float = 30.0,
    lease_ttl: float = 60.0,
    limits: WalkLimits | None = None,
) -> RoomPoller:
    client = HmsClient(
        session,
        url,
        StaticToken("token"),
        request_timeout=0.5,
        max_attempts=2,
        backoff_base=0.01,
        limits=limits,
    )
    return RoomPoller(
        client,
        store,
        [Hook()],
        event_types=[RECORDING],
        page_size=100,
        backfill=backfill,
        lease_ttl=lease_ttl,
        walk_timeout=walk_timeout,
        on_poll=metrics.observe_poll if metrics is not None else lambda _: None,
    )


async def stored_ids(store: Store) -> set[str]:
    return {row.event_id for row in await store.list_deliveries(limit=1000)}


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


HOSTILE_ENTRIES = {
    "lone surrogate": raw_entry('"bad"', '{"name":"\\ud800"}'),
    "NUL in id": raw_entry('"bad\\u0000"', "{}"),
    "over-long id": raw_entry(json.dumps("x" * 300), "{}"),
    "over-long type": raw_entry('"bad"', "{}", event_type="t" * 300),
    "NaN": raw_entry('"bad"', '{"duration":NaN}'),
    "Infinity": raw_entry('"bad"', '{"duration":-Infinity}'),
    "data not an object": raw_entry('"bad"', "[1,2]"),
    "id not a string": raw_entry("7", "{}"),
}


@pytest.mark.parametrize("entry", HOSTILE_ENTRIES.values(), ids=HOSTILE_ENTRIES.keys())
async def test_an_entry_the_store_cannot_hold_is_skipped_and_counted(
    serve: Callable[[Handler], Awaitable[str]],
    session: aiohttp.ClientSession,
    store: Store,
    entry: str,
) -> None:
    body = page(good(1), entry, good(2))
    url = await serve(pages_handler([body], []))
    metrics = Metrics(instance="test", version="0")
    poller = make_poller(session, url, store, metrics=metrics)

    with structlog.testing.capture_logs() as logs:
        result = await poller.poll(ROOM)
        again = await poller.poll(ROOM)

    assert (result.outcome, result.new, result.skipped) == ("ok", 2, 1)
    assert await stored_ids(store) == {"good-1", "good-2"}
    # It is skipped again at every poll, and said so every time.
    assert (again.outcome, again.new, again.skipped) == ("ok", 0, 1)
    skips = [log for log in logs if log["event"] == "events_skipped"]
    assert [s["count"] for s in skips] == [1, 1]
    assert sample(metrics, "poller_events_malformed_total") == 2
    assert sample(metrics, "poller_polls_total", outcome="ok") == 2


async def test_bad_utf8_spoils_only_its_entry(
    serve: Callable[[Handler], Awaitable[str]], session: aiohttp.ClientSession, store: Store
) -> None:
    bad = raw_entry('"bad"', '{"name":"caf\xe9"}').encode("latin-1")
    body = page(good(1), "@@", good(2)).replace(b"@@", bad)
    url = await serve(pages_handler([body], []))

    result = await make_poller(session, url, store).poll(ROOM)

    assert (result.outcome, result.new, result.skipped) == ("ok", 2, 1)


async def test_values_reach_the_store_as_the_api_wrote_them(
    serve: Callable[[Handler], Awaitable[str]], session: aiohttp.ClientSession, store: Store
) -> None:
    giant = "9" * 5000  # over Python's int() digit limit
    data = (
        '{"precise": 1.00000000000000001, "huge": 1e400, "trailing": 1.50, "zero": -0.0,'
        f' "giant": {giant}, "text": "caf\\u00e9 \\u0026 \\/ \\ud83d\\ude00", "nested": [1, {{}}]}}'
    )
    body = page(raw_entry('"exact"', data), good(1))
    url = await serve(pages_handler([body], []))

    result = await make_poller(session, url, store).poll(ROOM)

    assert (result.outcome, result.new, result.skipped) == ("ok", 2, 0)
    claims = {c.event_id: c for c in await store.claim("hook", 10, ttl=60, now=_now())}
    assert claims["exact"].body == (
        '{"version":"2.0","id":"exact","timestamp":"t","type":"beam.recording.success",'
        '"data":{"precise":1.00000000000000001,"huge":1e400,"trailing":1.50,"zero":-0.0,'
        f'"giant":{giant},"text":"café & / 😀","nested":[1,{{}}]}}}}'
    )


def _now() -> Any:
    from poller.timeutil import utcnow

    return utcnow()


async def test_a_poll_of_known_pages_writes_nothing_about_events(
    serve: Callable[[Handler], Awaitable[str]], session: aiohttp.ClientSession, store: Store
) -> None:
    first = page(*(good(i) for i in range(100)), next_="p1")
    second = page(*(good(i) for i in range(100, 150)))
    url = await serve(pages_handler([first, second], []))
    poller = make_poller(session, url, store)
    assert (await poller.poll(ROOM)).new == 150

    statements: list[str] = []

    def seen(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    event.listen(engine_of(store).sync_engine, "before_cursor_execute", seen)
    try:
        again = await poller.poll(ROOM)
    finally:
        event.remove(engine_of(store).sync_engine, "before_cursor_execute", seen)

    assert (again.outcome, again.pages, again.events, again.new) == ("ok", 2, 150, 0)
    # Only the room's lease and outcome: no read or write of events or the outbox.
    assert statements
    assert not [s for s in statements if "events" in s or "deliveries" in s], statements


async def test_a_repeated_cursor_ends_the_walk_as_an_error(
    serve: Callable[[Handler], Awaitable[str]],
    session: aiohttp.ClientSession,
    store: Store,
    write_config: ConfigWriter,
    tmp_path: Path,
    store_url: str,
) -> None:
    requests: list[str | None] = []
    loop_page = page(good(1), next_="p1")
    url = await serve(pages_handler([loop_page, page(good(2), next_="p1")], requests))
    metrics = Metrics(instance="test", version="0")

    with structlog.testing.capture_logs() as logs:
        result = await make_poller(session, url, store, metrics=metrics).poll(ROOM)

    assert result.outcome == "error"
    assert requests == [None, "p1"]  # stopped at the first repeat
    assert await stored_ids(store) == {"good-1", "good-2"}  # what it read is kept
    [poll_log] = [log for log in logs if log["event"] == "poll"]
    assert "repeated a cursor" in poll_log["error"]
    assert sample(metrics, "poller_polls_total", outcome="error") == 1
    text = await status_of(write_config, store_url)
    assert "repeated a cursor" in text
    assert "1 failed walks in a row" in text


async def status_of(write_config: ConfigWriter, store_url: str) -> str:
    path = write_config(
        hms={"management_token": "t", "base_url": "http://127.0.0.1:1"},
        store={"url": store_url},
        rooms=[{"id": ROOM}],
        webhooks=[{"name": "hook", "url": "http://127.0.0.1:1/h", "secret": make_secret()}],
    )
    return await report.status(load_config(path))


async def test_an_endless_walk_stops_at_max_pages(
    serve: Callable[[Handler], Awaitable[str]], session: aiohttp.ClientSession, store: Store
) -> None:
    requests: list[str | None] = []

    async def endless(request: web.Request) -> web.Response:
        start = request.query.get("start")
        requests.append(start)
        n = 0 if start is None else int(start.removeprefix("p"))
        return web.Response(body=page(good(n), next_=f"p{n + 1}"), content_type="application/json")

    url = await serve(endless)
    poller = make_poller(session, url, store, limits=WalkLimits(max_pages=5))

    result = await poller.poll(ROOM)

    assert result.outcome == "error"
    assert len(requests) == 5
    assert result.new == 5
    (state,) = await store.room_states()
    assert "more than 5 pages" in state["last_error"]


async def test_a_huge_response_is_refused_without_reading_it_whole(
    serve: Callable[[Handler], Awaitable[str]], session: aiohttp.ClientSession, store: Store
) -> None:
    huge = page(*[good(i) for i in range(2, 2000)])
    url = await serve(pages_handler([page(good(1), next_="p1"), huge], []))
    poller = make_poller(session, url, store, limits=WalkLimits(max_page_bytes=64 * 1024))

    result = await poller.poll(ROOM)

    assert result.outcome == "error"
    assert await stored_ids(store) == {"good-1"}
    (state,) = await store.room_states()
    assert "larger than 65536 bytes" in state["last_error"]


async def test_a_streamed_huge_response_is_cut_off(
    serve: Callable[[Handler], Awaitable[str]], session: aiohttp.ClientSession, store: Store
) -> None:
    sent = 0

    async def stream(request: web.Request) -> web.StreamResponse:
        nonlocal sent
        resp = web.StreamResponse()  # chunked: no Content-Length to refuse up front
        resp.content_type = "application/json"
        await resp.prepare(request)
        await resp.write(b'{"next":"","events":[')
        for i in range(10_000):  # about 1 GB if read whole
            await resp.write((good(i) + ",").encode() * 1000)
            sent += 1
        return resp

    url = await serve(stream)
    poller = make_poller(session, url, store, limits=WalkLimits(max_page_bytes=1024 * 1024))

    result = await poller.poll(ROOM)

    assert result.outcome == "error"
    assert sent < 100  # the client hung up long before the end
    (state,) = await store.room_states()
    assert "poll.max_page_bytes" in state["last_error"]


async def test_too_many_events_on_a_page(
    serve: Callable[[Handler], Awaitable[str]], session: aiohttp.ClientSession, store: Store
) -> None:
    url = await serve(pages_handler([page(*(good(i) for i in range(20)))], []))
    poller = make_poller(session, url, store, limits=WalkLimits(max_page_events=10))

    result = await poller.poll(ROOM)

    assert result.outcome == "error"
    (state,) = await store.room_states()
    assert "more than poll.max_page_events" in state["last_error"]


async def test_a_slow_drip_of_bytes_times_out_and_is_recorded(
    serve: Callable[[Handler], Awaitable[str]], session: aiohttp.ClientSession, store: Store
) -> None:
    async def drip(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.content_type = "application/json"
        await resp.prepare(request)
        for _ in range(600):  # a minute of one byte every 0.1 s, unless cut off
            await resp.write(b" ")
            await asyncio.sleep(0.1)
        return resp

    url = await serve(drip)
    poller = make_poller(session, url, store)

    result = await asyncio.wait_for(poller.poll(ROOM), 10)

    assert result.outcome == "error"  # two attempts of 0.5 s each, then given up
    (state,) = await store.room_states()
    assert "TimeoutError" in state["last_error"]


async def test_a_walk_over_its_timeout_is_recorded_as_an_error(
    serve: Callable[[Handler], Awaitable[str]], session: aiohttp.ClientSession, store: Store
) -> None:
    async def slow(request: web.Request) -> web.Response:
        start = request.query.get("start")
        n = 0 if start is None else int(start.removeprefix("p"))
        await asyncio.sleep(0.2)
        return web.Response(body=page(good(n), next_=f"p{n + 1}"), content_type="application/json")

    url = await serve(slow)
    poller = make_poller(session, url, store, walk_timeout=1.0)

    result = await asyncio.wait_for(poller.poll(ROOM), 10)

    assert result.outcome == "error"
    assert 1 <= result.new <= 6  # what it read before the deadline is kept
    (state,) = await store.room_states()
    assert state["last_error"] == "walk timed out after 1s"


async def test_without_backfill_a_room_that_never_completes_a_walk_still_delivers(
    serve: Callable[[Handler], Awaitable[str]], session: aiohttp.ClientSession, store: Store
) -> None:
    """The rule: after BASELINE_AFTER_FAILED_WALKS failed walks in its first-poll phase, what
    a room recorded is its baseline; events new after that are delivered."""
    entries = [good(1)]

    async def looping(request: web.Request) -> web.Response:
        # Never completes: the cursor comes back at once.
        return web.Response(body=page(*entries, next_="same"), content_type="application/json")

    url = await serve(looping)
    poller = make_poller(session, url, store, backfill=False)

    with structlog.testing.capture_logs() as logs:
        for _ in range(BASELINE_AFTER_FAILED_WALKS):
            assert (await poller.poll(ROOM)).outcome == "error"
        entries.append(good(2))
        late = await poller.poll(ROOM)

    assert late.outcome == "error"
    assert (late.new, late.deliveries) == (1, 1)  # delivered although no walk completed
    assert await stored_ids(store) == {"good-2"}
    polls = [log for log in logs if log["event"] == "poll"]
    # Loud from the third failure on, and the end of the baseline is said.
    assert [p["log_level"] for p in polls] == ["warning", "warning", "error", "error"]
    assert polls[2]["baseline_ended_incomplete"] is True
    assert [p.get("recorded_only") for p in polls] == [True, True, True, None]


def slow_pages(delay: float, count: int) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        start = request.query.get("start")
        n = 0 if start is None else int(start.removeprefix("p"))
        await asyncio.sleep(delay)
        next_ = f"p{n + 1}" if n + 1 < count else ""
        return web.Response(body=page(good(n), next_=next_), content_type="application/json")

    return handler


async def test_a_walk_longer_than_its_lease_renews_it(
    serve: Callable[[Handler], Awaitable[str]], session: aiohttp.ClientSession, store: Store
) -> None:
    url = await serve(slow_pages(0.15, 10))  # 1.5 s in all, the lease is 0.9 s
    poller = make_poller(session, url, store, lease_ttl=0.9)

    started = _now()
    result = await poller.poll(ROOM)

    assert (result.outcome, result.pages, result.new) == ("ok", 10, 10)
    (state,) = await store.room_states()
    # Renewed during the walk: the lease now ends well after the first one would have.
    assert (state["lease_until"] - started).total_seconds() > 1.2


async def test_a_page_slower_than_the_lease_stops_the_walk(
    serve: Callable[[Handler], Awaitable[str]], session: aiohttp.ClientSession, store: Store
) -> None:
    # One page (0.45 s, under the request timeout) takes longer than the whole lease.
    url = await serve(slow_pages(0.45, 10))
    poller = make_poller(session, url, store, lease_ttl=0.4)

    result = await asyncio.wait_for(poller.poll(ROOM), 10)

    assert result.outcome == "error"
    (state,) = await store.room_states()
    assert "lease ran out" in state["last_error"]
