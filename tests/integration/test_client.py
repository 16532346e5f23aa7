"""The 100ms API client against the simulator: paging, bodies, retries, limits, hygiene."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
import structlog.testing
from aiohttp import web

from poller.budget import RequestBudget
from poller.events import Event
from poller.hms.client import ApiError, HmsClient, Page
from poller.hms.token import MintedTokens, StaticToken
from poller.redaction import Redactor
from poller.simulator import Simulator

ACCESS_KEY = "63bbb0c5e1a4d8a2b1c3d4e5"
APP_SECRET = "app-secret-" + "0123456789abcdef" * 4
ROOM = "639924066893d18d47c86935"
RECORDING = "beam.recording.success"

MakeClient = Callable[..., HmsClient]
Serve = Callable[[web.Application], Awaitable[str]]


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    simulator = Simulator(access_key=ACCESS_KEY, app_secret=APP_SECRET)
    await simulator.start()
    yield simulator
    await simulator.stop()


@pytest.fixture
def tokens() -> MintedTokens:
    return MintedTokens(ACCESS_KEY, APP_SECRET)


@pytest.fixture
def make_client(session: aiohttp.ClientSession, sim: Simulator, tokens: MintedTokens) -> MakeClient:
    """Build a client for the simulator with test-sized timeouts and backoff."""

    def make(**overrides: Any) -> HmsClient:
        options: dict[str, Any] = {
            "base_url": sim.base_url,
            "tokens": tokens,
            "request_timeout": 2.0,
            "backoff_base": 0.001,
            "backoff_max": 0.01,
        }
        options.update(overrides)
        return HmsClient(session, **options)

    return make


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Run a hand-written aiohttp app, for responses the simulator does not make."""
    runners: list[web.AppRunner] = []

    async def start(app: web.Application) -> str:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        runners.append(runner)
        host, port = runner.addresses[0][:2]
        return f"http://{host}:{port}"

    yield start
    for runner in runners:
        await runner.cleanup()


async def collect(client: HmsClient, room_id: str = ROOM, **kwargs: Any) -> list[Page]:
    kwargs.setdefault("event_types", [RECORDING])
    return [page async for page in client.pages(room_id, **kwargs)]


def page_events(page: Page, room_id: str = ROOM) -> list[Event]:
    """Every usable event of a page, bodies built (the poller asks only for new ids)."""
    events, _ = page.events(room_id, frozenset(page.ids))
    return events


def events_of(pages: list[Page]) -> list[Event]:
    return [event for page in pages for event in page_events(page)]


def statuses(sim: Simulator) -> list[int]:
    return [r["status"] for r in sim.requests]


# -- paging --------------------------------------------------------------------------


async def test_walks_every_page_repeating_the_query(
    sim: Simulator, make_client: MakeClient
) -> None:
    added = {sim.add_event(ROOM)["id"] for _ in range(250)}

    pages = await collect(make_client(), page_size=100)

    assert [len(page_events(p)) for p in pages] == [100, 100, 50]
    assert {e.id for e in events_of(pages)} == added
    assert [p.next is None for p in pages] == [False, False, True]
    queries = [r["query"] for r in sim.requests]
    assert len(queries) == 3
    base = [("room_id", ROOM), ("type", RECORDING), ("limit", "100")]
    assert queries[0] == base
    assert queries[1] == [*base, ("start", pages[0].next)]
    assert queries[2] == [*base, ("start", pages[1].next)]


async def test_empty_room_is_one_empty_page(sim: Simulator, make_client: MakeClient) -> None:
    pages = await collect(make_client())

    assert [(p.ids, p.skipped, p.next) for p in pages] == [((), (), None)]


async def test_each_event_type_is_a_repeated_type_param(
    sim: Simulator, make_client: MakeClient
) -> None:
    wanted = {
        sim.add_event(ROOM)["id"],
        sim.add_event(ROOM, type="session.close.success")["id"],
    }
    sim.add_event(ROOM, type="peer.join.success")

    pages = await collect(make_client(), event_types=[RECORDING, "session.close.success"])

    assert {e.id for e in events_of(pages)} == wanted
    assert sim.requests[0]["query"][:3] == [
        ("room_id", ROOM),
        ("type", RECORDING),
        ("type", "session.close.success"),
    ]


async def test_filters_are_passed_on_every_page(sim: Simulator, make_client: MakeClient) -> None:
    wanted = {sim.add_event(ROOM, session_id="s1")["id"] for _ in range(3)}
    sim.add_event(ROOM, session_id="s2")

    pages = await collect(make_client(), page_size=2, filters={"session_id": "s1"})

    assert {e.id for e in events_of(pages)} == wanted
    assert len(sim.requests) == 2
    assert all(("session_id", "s1") in r["query"] for r in sim.requests)


async def test_event_body_is_the_api_object_unchanged(
    sim: Simulator, make_client: MakeClient
) -> None:
    added = sim.add_event(ROOM, duration=33, recording_path="s3://bucket/Zoë/会议.mp4")

    [event] = events_of(await collect(make_client()))

    assert event.id == added["id"]
    assert event.type == RECORDING
    assert event.timestamp == added["timestamp"]
    assert event.room_id == ROOM
    assert event.body == json.dumps(added, separators=(",", ":"), ensure_ascii=False)
    assert '"duration":33,' in event.body
    assert "Zoë/会议" in event.body  # raw UTF-8, though the simulator sent \u escapes
    assert "\\u" not in event.body
    assert list(json.loads(event.body)) == ["version", "id", "timestamp", "type", "data"]


# -- retries -------------------------------------------------------------------------


async def test_server_error_is_retried_and_logged(sim: Simulator, make_client: MakeClient) -> None:
    sim.add_event(ROOM)
    sim.inject("500")

    with structlog.testing.capture_logs() as logs:
        pages = await collect(make_client())

    assert len(events_of(pages)) == 1
    assert statuses(sim) == [500, 200]
    [retry] = [log for log in logs if log["event"] == "hms.retry"]
    assert retry["log_level"] == "warning"
    assert retry["room_id"] == ROOM
    assert retry["status"] == 500
    assert retry["attempt"] == 1
    assert 0 <= retry["delay"] <= 0.001


async def test_server_errors_give_up_after_max_attempts(
    sim: Simulator, make_client: MakeClient
) -> None:
    sim.inject("500", times=3)

    with pytest.raises(ApiError, match="after 3 attempts") as caught:
        await collect(make_client(max_attempts=3))

    assert caught.value.status == 500
    assert "internal server error" in str(caught.value)
    assert statuses(sim) == [500, 500, 500]


async def test_429_honours_retry_after(sim: Simulator, make_client: MakeClient) -> None:
    sim.add_event(ROOM)
    sim.inject("429", retry_after=0.05)
    loop = asyncio.get_running_loop()

    started = loop.time()
    pages = await collect(make_client())

    assert loop.time() - started >= 0.05
    assert len(events_of(pages)) == 1
    assert statuses(sim) == [429, 200]


async def test_retry_after_is_capped(sim: Simulator, make_client: MakeClient) -> None:
    sim.inject("429", retry_after=3600)

    with structlog.testing.capture_logs() as logs:
        await collect(make_client(retry_after_max=0.01))

    assert [log["delay"] for log in logs if log["event"] == "hms.retry"] == [0.01]


async def test_429_without_retry_after_backs_off(sim: Simulator, make_client: MakeClient) -> None:
    sim.inject("429", times=2)

    await collect(make_client())

    assert statuses(sim) == [429, 429, 200]


@pytest.mark.parametrize(
    ("retry_after", "low", "high"),
    [
        # A server's wish lengthens the back-off, never shortens it.
        pytest.param("Wed, 21 Oct 2015 07:28:00 GMT", 0.001, 0.002, id="date-in-the-past"),
        pytest.param("Fri, 31 Dec 9999 23:59:59 GMT", 0.02, 0.02, id="far-date-capped"),
        pytest.param("soon", 0.001, 0.002, id="garbage-means-backoff"),
    ],
)
async def test_retry_after_forms(
    serve: Serve, session: aiohttp.ClientSession, retry_after: str, low: float, high: float
) -> None:
    calls = 0

    async def handler(request: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            return web.json_response({}, status=429, headers={"Retry-After": retry_after})
        return web.json_response({"limit": 100, "total": 0, "next": "", "events": []})

    app = web.Application()
    app.router.add_get("/analytics/events", handler)
    client = HmsClient(
        session, await serve(app), StaticToken("t"), backoff_base=0.001, retry_after_max=0.02
    )

    with structlog.testing.capture_logs() as logs:
        await collect(client)

    [delay] = [log["delay"] for log in logs if log["event"] == "hms.retry"]
    assert low <= delay <= high


async def test_401_mints_a_fresh_token_and_retries_once(
    sim: Simulator, make_client: MakeClient, tokens: MintedTokens
) -> None:
    sim.add_event(ROOM)
    sim.inject("401")

    with structlog.testing.capture_logs() as logs:
        pages = await collect(make_client())

    assert len(events_of(pages)) == 1
    assert statuses(sim) == [401, 200]
    assert tokens.renewals == 2
    assert [log["event"] for log in logs] == ["hms.reauthorize"]


async def test_persistent_401_is_an_api_error(
    sim: Simulator, session: aiohttp.ClientSession
) -> None:
    wrong = MintedTokens(ACCESS_KEY, APP_SECRET + "-rotated")
    client = HmsClient(session, sim.base_url, wrong, backoff_base=0.001)

    with pytest.raises(ApiError) as caught:
        await collect(client)

    assert caught.value.status == 401
    assert "401" in str(caught.value)
    assert statuses(sim) == [401, 401]
    assert wrong.renewals == 2


async def test_static_token_rejected_is_an_api_error(
    sim: Simulator, session: aiohttp.ClientSession
) -> None:
    client = HmsClient(session, sim.base_url, StaticToken("revoked"), backoff_base=0.001)

    with pytest.raises(ApiError):
        await collect(client)

    assert statuses(sim) == [401, 401]


async def test_bad_request_is_not_retried(sim: Simulator, make_client: MakeClient) -> None:
    with pytest.raises(ApiError) as caught:
        await collect(make_client(), page_size=0)

    assert caught.value.status == 400
    assert "code 400" in str(caught.value)
    assert "limit must be" in str(caught.value)
    assert statuses(sim) == [400]


async def test_not_found_is_not_retried(sim: Simulator, make_client: MakeClient) -> None:
    with structlog.testing.capture_logs() as logs, pytest.raises(ApiError) as caught:
        await collect(make_client(base_url=sim.base_url + "/v9"))

    assert caught.value.status == 404
    assert "Not Found" in str(caught.value)
    assert logs == []
    assert sim.requests == []


@pytest.mark.parametrize("fault", ["bad_json", "bad_shape"])
async def test_malformed_page_once_is_recovered(
    sim: Simulator, make_client: MakeClient, fault: Any
) -> None:
    sim.add_event(ROOM)
    sim.inject(fault)

    with structlog.testing.capture_logs() as logs:
        pages = await collect(make_client())

    assert len(events_of(pages)) == 1
    assert statuses(sim) == [200, 200]
    [retry] = [log for log in logs if log["event"] == "hms.retry"]
    assert "malformed page" in retry["reason"]


async def test_malformed_page_every_time_is_an_api_error(
    sim: Simulator, make_client: MakeClient
) -> None:
    sim.inject("bad_json", times=4)

    with pytest.raises(ApiError, match="malformed page"):
        await collect(make_client(max_attempts=4))

    assert len(sim.requests) == 4


async def test_malformed_event_is_skipped_and_the_rest_kept(
    sim: Simulator, make_client: MakeClient
) -> None:
    added = {sim.add_event(ROOM)["id"] for _ in range(3)}
    sim.inject("bad_event")

    pages = await collect(make_client())

    assert [len(p.skipped) for p in pages] == [1]
    assert {e.id for e in events_of(pages)} == added
    [skipped] = pages[0].skipped
    assert skipped.event_id is None


async def test_each_kind_of_malformed_event_is_skipped(
    serve: Serve, session: aiohttp.ClientSession
) -> None:
    good = {"version": "2.0", "id": "e1", "timestamp": "t", "type": RECORDING, "data": {}}
    bad: list[Any] = [
        "not an object",
        None,
        {**good, "id": ""},
        {**good, "id": 7},
        {k: v for k, v in good.items() if k != "id"},
        {**good, "id": "e2", "type": None},
        {**good, "id": "e3", "data": []},
        {k: v for k, v in good.items() if k != "data"} | {"id": "e4"},
    ]

    async def handler(request: web.Request) -> web.Response:
        return web.json_response({"next": None, "events": [*bad, good]})

    app = web.Application()
    app.router.add_get("/analytics/events", handler)
    client = HmsClient(session, await serve(app), StaticToken("t"))

    [page] = await collect(client)
    events, unusable = page.events(ROOM, frozenset(page.ids))

    assert [e.id for e in events] == ["e1"]
    skipped = [*page.skipped, *unusable]
    assert len(skipped) == len(bad)
    assert sorted(s.event_id or "" for s in skipped) == ["", "", "", "", "", "e2", "e3", "e4"]


async def test_null_events_is_an_empty_page(serve: Serve, session: aiohttp.ClientSession) -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.json_response({"limit": 100, "total": 0, "next": "", "events": None})

    app = web.Application()
    app.router.add_get("/analytics/events", handler)
    client = HmsClient(session, await serve(app), StaticToken("t"))

    pages = await collect(client)
    assert [(p.ids, p.skipped, p.next) for p in pages] == [((), (), None)]


async def test_hung_request_times_out_and_is_retried(
    sim: Simulator, make_client: MakeClient
) -> None:
    sim.add_event(ROOM)
    sim.inject("hang")

    pages = await collect(make_client(request_timeout=0.2))

    assert len(events_of(pages)) == 1
    assert statuses(sim) == [0, 200]


async def test_unreachable_api_gives_up_after_max_attempts(
    session: aiohttp.ClientSession, tokens: MintedTokens
) -> None:
    gone = Simulator(management_token="t")
    base_url = await gone.start()
    await gone.stop()
    client = HmsClient(session, base_url, tokens, max_attempts=2, backoff_base=0.001)

    with pytest.raises(ApiError, match="network error") as caught:
        await collect(client)

    assert caught.value.status is None


async def test_cancelling_during_backoff_stops_at_once(
    sim: Simulator, make_client: MakeClient
) -> None:
    sim.inject("429", retry_after=60)
    task = asyncio.create_task(collect(make_client()))
    while not sim.requests or sim.requests[-1]["status"] == 0:
        await asyncio.sleep(0.001)

    task.cancel()

    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 1.0)
    assert len(sim.requests) == 1


# -- the shared limiter --------------------------------------------------------------


async def test_limiter_bounds_concurrent_requests(sim: Simulator, make_client: MakeClient) -> None:
    rooms = [f"room-{i}" for i in range(4)]
    for room in rooms:
        for _ in range(3):
            sim.add_event(room)
    sim.latency = 0.01  # so overlapping requests would be seen overlapping
    client = make_client(limiter=asyncio.Semaphore(1))

    results = await asyncio.gather(*(collect(client, room, page_size=2) for room in rooms))

    assert [len(events_of(pages)) for pages in results] == [3, 3, 3, 3]
    assert len(sim.requests) == 8
    assert sim.max_in_flight == 1


async def test_without_limiter_requests_overlap(sim: Simulator, make_client: MakeClient) -> None:
    # The control for the test above: the simulator does see overlap when it happens.
    sim.latency = 0.05
    client = make_client()

    await asyncio.gather(*(collect(client, f"room-{i}") for i in range(3)))

    assert sim.max_in_flight >= 2


async def test_limiter_is_free_while_the_caller_holds_a_page(
    sim: Simulator, make_client: MakeClient
) -> None:
    for _ in range(2):
        sim.add_event(ROOM)
    sim.add_event("other-room")
    client = make_client(limiter=asyncio.Semaphore(1))
    slow = client.pages(ROOM, [RECORDING], page_size=1)

    first = await anext(slow)  # the caller is now "processing" page 1
    async with asyncio.timeout(2):
        other = await collect(client, "other-room")
    rest = [page async for page in slow]

    assert len(events_of([first, *rest])) == 2
    assert len(events_of(other)) == 1


# -- secrets -------------------------------------------------------------------------


async def test_errors_and_logs_never_carry_credentials(
    serve: Serve, session: aiohttp.ClientSession, tokens: MintedTokens
) -> None:
    calls = 0

    async def echo_auth(request: web.Request) -> web.Response:
        # A careless server that quotes the credential back in its errors.
        nonlocal calls
        calls += 1
        auth = request.headers["Authorization"]
        status = (401, 503, 400)[min(calls, 3) - 1]
        return web.json_response({"code": status, "message": f"rejected {auth}"}, status=status)

    app = web.Application()
    app.router.add_get("/analytics/events", echo_auth)
    client = HmsClient(session, await serve(app), tokens, backoff_base=0.001)

    with structlog.testing.capture_logs() as logs, pytest.raises(ApiError) as caught:
        await collect(client)

    token = tokens.token()
    text = f"{caught.value} {caught.value!r} {logs!r}"
    assert caught.value.status == 400
    assert "rejected Bearer ***" in str(caught.value)
    assert token not in text
    assert APP_SECRET not in text
    assert [log["event"] for log in logs] == ["hms.reauthorize", "hms.retry"]


async def test_a_secret_the_api_quotes_is_masked_before_the_message_is_cut(
    serve: Serve, session: aiohttp.ClientSession
) -> None:
    secret = "configured-secret-9Qw2Lk7Zp4"

    async def quote_it(request: web.Request) -> web.Response:
        # The secret straddles the cut at 200 characters: cut first, its head would stay.
        message = "x" * 190 + secret
        return web.json_response({"code": 400, "message": message}, status=400)

    app = web.Application()
    app.router.add_get("/analytics/events", quote_it)
    client = HmsClient(session, await serve(app), StaticToken("t0ken"), redact=Redactor([secret]))

    with pytest.raises(ApiError) as caught:
        await collect(client)

    assert str(caught.value).endswith("x" * 190 + "***")
    assert secret[:6] not in str(caught.value)


async def test_client_repr_has_no_secrets(session: aiohttp.ClientSession) -> None:
    client = HmsClient(session, "http://api", MintedTokens(ACCESS_KEY, APP_SECRET))
    assert APP_SECRET not in repr(client)


# -- the request budget ------------------------------------------------------------------


async def test_every_request_and_retry_takes_a_turn_of_the_budget(
    sim: Simulator, make_client: MakeClient
) -> None:
    rate = 20.0
    for _ in range(3):
        sim.add_event(ROOM)
    sim.inject("500")  # its retry takes a turn too
    budget = RequestBudget(rate)
    client = make_client(budget=budget)

    async def walk() -> list[Page]:
        async with budget.turn():
            return await collect(client, page_size=1)

    first = asyncio.create_task(walk())
    await asyncio.sleep(0)
    second = asyncio.create_task(walk())
    walks = await asyncio.wait_for(asyncio.gather(first, second), 10)
    assert [len(events_of(pages)) for pages in walks] == [3, 3]
    arrivals = [r["at"] for r in sim.requests]
    assert len(arrivals) == 2 * 3 + 1
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    # Spaced by the budget (unbudgeted, they come a millisecond apart), give or take the
    # jitter of a local connection.
    assert min(gaps) >= 1 / rate - 0.01


# -- listings: rooms and sessions ---------------------------------------------------------


async def test_rooms_walks_every_page_of_the_listing(
    sim: Simulator, make_client: MakeClient
) -> None:
    for n in range(250):
        sim.add_room(f"room-{n:03}", enabled=n % 50 != 0)
    client = make_client()

    enabled = [room async for room in client.rooms(enabled=True)]
    disabled = [room async for room in client.rooms(enabled=False)]

    assert len(enabled) == 245
    assert [r.id for r in disabled] == [f"room-{n:03}" for n in range(0, 250, 50)]
    assert not any(r.enabled for r in disabled)
    # 100 a page, until a page comes back empty.
    walks = [dict(r["query"]) for r in sim.listing_requests if r["path"] == "/rooms"]
    assert [(q["enabled"], q.get("start")) for q in walks] == [
        ("true", None),
        ("true", enabled[99].id),
        ("true", enabled[199].id),
        ("true", enabled[244].id),
        ("false", None),
        ("false", disabled[-1].id),
    ]
    assert all(q["limit"] == "100" for q in walks)


async def test_sessions_lists_live_or_recent_ones(sim: Simulator, make_client: MakeClient) -> None:
    ended = sim.start_session("r1")
    live = sim.start_session("r2")
    sim.end_session(ended)
    client = make_client()

    assert [s.id async for s in client.sessions(active=True)] == [live]
    every = [s async for s in client.sessions(active=False, after="2000-01-01T00:00:00Z")]
    assert [(s.id, s.room_id, s.active) for s in every] == [
        (ended, "r1", False),
        (live, "r2", True),
    ]
    assert ("after", "2000-01-01T00:00:00Z") in sim.listing_requests[-1]["query"]


async def test_a_listing_that_repeats_its_cursor_is_an_error(
    serve: Serve, make_client: MakeClient
) -> None:
    async def rooms(_request: web.Request) -> web.Response:
        return web.json_response({"limit": 100, "data": [{"id": "a"}], "last": "a"})

    app = web.Application()
    app.router.add_get("/rooms", rooms)
    client = make_client(base_url=await serve(app))
    with pytest.raises(ApiError, match="repeated a cursor"):
        _ = [room async for room in client.rooms(enabled=True)]


async def test_a_listing_page_that_is_no_listing_is_retried_then_an_error(
    serve: Serve, make_client: MakeClient
) -> None:
    async def rooms(_request: web.Request) -> web.Response:
        return web.json_response({"limit": 100, "data": "oops", "last": ""})

    app = web.Application()
    app.router.add_get("/rooms", rooms)
    client = make_client(base_url=await serve(app), max_attempts=2)
    with pytest.raises(ApiError, match=r"GET /rooms failed after 2 attempts: malformed page"):
        _ = [room async for room in client.rooms(enabled=True)]
