"""The fake 100ms API: auth, snapshot paging, validation, faults, room listing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import jwt
import pytest

from poller.hms.token import MintedTokens
from poller.simulator import Simulator

ACCESS_KEY = "63bbb0c5e1a4d8a2b1c3d4e5"
APP_SECRET = "app-secret-" + "0123456789abcdef" * 4  # long enough for HS512 too
MANAGEMENT_TOKEN = "static-management-token"
ROOM = "639924066893d18d47c86935"


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    simulator = Simulator(
        access_key=ACCESS_KEY, app_secret=APP_SECRET, management_token=MANAGEMENT_TOKEN
    )
    await simulator.start()
    yield simulator
    await simulator.stop()


Query = list[tuple[str, str]]


async def get(
    session: aiohttp.ClientSession,
    sim: Simulator,
    params: Query,
    token: str | None = MANAGEMENT_TOKEN,
    path: str = "/analytics/events",
) -> tuple[int, Any]:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    async with session.get(sim.base_url + path, params=params, headers=headers) as resp:
        return resp.status, await resp.json(content_type=None)


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {
        "access_key": ACCESS_KEY,
        "type": "management",
        "version": 2,
        "jti": "5f0b6c1e-9d4a-4c7e-8f7a-2b1d0c9e8a7f",
        "iat": now,
        "nbf": now,
        "exp": now + 600,
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


# -- auth ----------------------------------------------------------------------------


async def test_minted_and_static_tokens_are_accepted(
    sim: Simulator, session: aiohttp.ClientSession
) -> None:
    minted = MintedTokens(ACCESS_KEY, APP_SECRET).token()

    assert (await get(session, sim, [("room_id", ROOM)], minted))[0] == 200
    assert (await get(session, sim, [("room_id", ROOM)], MANAGEMENT_TOKEN))[0] == 200
    assert [r["authorized"] for r in sim.requests] == [True, True]


@pytest.mark.parametrize(
    "token",
    [
        pytest.param(None, id="no-token"),
        pytest.param("not-a-jwt", id="garbage"),
        pytest.param(MintedTokens(ACCESS_KEY, APP_SECRET + "x").token(), id="wrong-secret"),
        pytest.param(
            MintedTokens(ACCESS_KEY, APP_SECRET, clock=lambda: time.time() - 2 * 86400).token(),
            id="expired",
        ),
        pytest.param(jwt.encode(claims(access_key="other"), APP_SECRET), id="wrong-access-key"),
        pytest.param(jwt.encode(claims(type="app"), APP_SECRET), id="wrong-type"),
        pytest.param(jwt.encode(claims(version=1), APP_SECRET), id="wrong-version"),
        pytest.param(jwt.encode(claims(jti=None), APP_SECRET), id="no-jti"),
        pytest.param(jwt.encode(claims(nbf=int(time.time()) + 600), APP_SECRET), id="not-yet"),
        pytest.param(jwt.encode(claims(), APP_SECRET, algorithm="HS512"), id="wrong-alg"),
    ],
)
async def test_bad_credentials_get_401(
    sim: Simulator, session: aiohttp.ClientSession, token: str | None
) -> None:
    status, body = await get(session, sim, [("room_id", ROOM)], token)

    assert status == 401
    assert body["code"] == 401
    assert set(body) == {"code", "message", "details"}
    (record,) = sim.requests
    assert {k: v for k, v in record.items() if k != "at"} == {
        "query": [("room_id", ROOM)],
        "authorized": False,
        "status": 401,
    }


async def test_rooms_need_auth_too(sim: Simulator, session: aiohttp.ClientSession) -> None:
    assert (await get(session, sim, [], token=None, path="/rooms"))[0] == 401


def test_simulator_needs_some_credential() -> None:
    with pytest.raises(ValueError, match="app_secret"):
        Simulator()
    with pytest.raises(ValueError, match="together"):
        Simulator(app_secret=APP_SECRET)


# -- events and paging ---------------------------------------------------------------


async def test_event_has_the_documented_shape(sim: Simulator) -> None:
    event = sim.add_event(ROOM, duration=33)

    assert list(event) == ["version", "id", "timestamp", "type", "data"]
    assert event["version"] == "2.0"
    assert event["type"] == "beam.recording.success"
    assert len(event["timestamp"]) == len("2023-01-09T06:18:29.462240675Z")
    data = event["data"]
    assert data["room_id"] == ROOM
    assert data["duration"] == 33
    assert isinstance(data["size"], int)
    assert data["rtmp"][0]["url"]
    assert all(s.isascii() for s in data.values() if isinstance(s, str))
    assert sim.events[ROOM] == [event]


async def test_pages_walk_a_snapshot_taken_at_the_first_page(
    sim: Simulator, session: aiohttp.ClientSession
) -> None:
    original = {sim.add_event(ROOM)["id"] for _ in range(5)}
    query: Query = [("room_id", ROOM), ("type", "beam.recording.success"), ("limit", "2")]

    status, first = await get(session, sim, query)
    late = sim.add_event(ROOM)["id"]
    pages = [first]
    while pages[-1]["next"]:
        status, page = await get(session, sim, [*query, ("start", pages[-1]["next"])])
        assert status == 200
        pages.append(page)

    seen = [e["id"] for p in pages for e in p["events"]]
    assert sorted(seen) == sorted(original)
    assert [len(p["events"]) for p in pages] == [2, 2, 1]
    assert all(p["total"] == 5 and p["limit"] == 2 for p in pages)
    assert pages[-1]["next"] == ""
    # A fresh query is a new snapshot and sees the late event.
    _, fresh = await get(session, sim, [*query[:2], ("limit", "100")])
    assert late in {e["id"] for e in fresh["events"]}


async def test_order_is_deterministic_but_not_chronological(
    session: aiohttp.ClientSession,
) -> None:
    orders = []
    for _ in range(2):
        sim = Simulator(management_token=MANAGEMENT_TOKEN, seed=7)
        await sim.start()
        try:
            added = [sim.add_event(ROOM)["id"] for _ in range(20)]
            _, body = await get(session, sim, [("room_id", ROOM), ("limit", "100")])
        finally:
            await sim.stop()
        served = [e["id"] for e in body["events"]]
        assert sorted(served) == sorted(added)
        assert served != added
        orders.append(served)
    assert orders[0] == orders[1]


async def test_types_and_filters_select_events(
    sim: Simulator, session: aiohttp.ClientSession
) -> None:
    a = sim.add_event(ROOM, session_id="s1")["id"]
    b = sim.add_event(ROOM, type="session.close.success", session_id="s1")["id"]
    sim.add_event(ROOM, type="peer.join.success", session_id="s1")
    sim.add_event(ROOM, session_id="s2")
    sim.add_event("another-room", session_id="s1")
    query: Query = [
        ("room_id", ROOM),
        ("type", "beam.recording.success"),
        ("type", "session.close.success"),
        ("session_id", "s1"),
    ]

    _, body = await get(session, sim, query)

    assert sorted(e["id"] for e in body["events"]) == sorted([a, b])


async def test_a_next_token_can_be_replayed(sim: Simulator, session: aiohttp.ClientSession) -> None:
    for _ in range(3):
        sim.add_event(ROOM)
    query: Query = [("room_id", ROOM), ("limit", "1")]
    _, first = await get(session, sim, query)

    # A client retrying after a lost response sends the same start again.
    _, again = await get(session, sim, [*query, ("start", first["next"])])
    _, replay = await get(session, sim, [*query, ("start", first["next"])])

    assert again["events"] == replay["events"]


async def test_next_tokens_expire(sim: Simulator, session: aiohttp.ClientSession) -> None:
    for _ in range(3):
        sim.add_event(ROOM)
    sim.next_ttl = 0.0
    query: Query = [("room_id", ROOM), ("limit", "1")]
    _, first = await get(session, sim, query)

    status, _ = await get(session, sim, [*query, ("start", first["next"])])

    assert status == 400


@pytest.mark.parametrize(
    "query",
    [
        pytest.param([("limit", "10")], id="no-room"),
        pytest.param([("room_id", ROOM), ("limit", "0")], id="limit-0"),
        pytest.param([("room_id", ROOM), ("limit", "101")], id="limit-101"),
        pytest.param([("room_id", ROOM), ("limit", "ten")], id="limit-nan"),
        pytest.param([("room_id", ROOM), ("start", "feedface")], id="unknown-start"),
    ],
)
async def test_bad_queries_get_400(
    sim: Simulator, session: aiohttp.ClientSession, query: Query
) -> None:
    status, body = await get(session, sim, query)

    assert status == 400
    assert body["code"] == 400
    assert body["message"]


@pytest.mark.parametrize(
    "change",
    [
        pytest.param([("room_id", "other-room"), ("limit", "1")], id="room"),
        pytest.param([("room_id", ROOM), ("limit", "2")], id="limit"),
        pytest.param([("room_id", ROOM), ("limit", "1"), ("type", "x")], id="type"),
        pytest.param([("room_id", ROOM), ("limit", "1"), ("peer_id", "p")], id="filter"),
    ],
)
async def test_later_pages_must_repeat_the_query(
    sim: Simulator, session: aiohttp.ClientSession, change: Query
) -> None:
    for _ in range(3):
        sim.add_event(ROOM)
    _, first = await get(session, sim, [("room_id", ROOM), ("limit", "1")])

    status, _ = await get(session, sim, [*change, ("start", first["next"])])

    assert status == 400


async def test_unknown_paths_answer_in_the_api_error_shape(
    sim: Simulator, session: aiohttp.ClientSession
) -> None:
    status, body = await get(session, sim, [], path="/v9/analytics/events")

    assert status == 404
    assert body == {"code": 404, "message": "Not Found", "details": []}


# -- faults --------------------------------------------------------------------------


async def test_faults_hit_the_next_requests_then_stop(
    sim: Simulator, session: aiohttp.ClientSession
) -> None:
    sim.add_event(ROOM)
    sim.inject("500", times=2)
    sim.inject("429", retry_after=0.25)
    sim.inject("401")
    query: Query = [("room_id", ROOM)]

    results = [await get(session, sim, query) for _ in range(5)]

    assert [status for status, _ in results] == [500, 500, 429, 401, 200]
    assert results[0][1] == {"code": 500, "message": "internal server error", "details": []}
    assert [r["status"] for r in sim.requests] == [500, 500, 429, 401, 200]


async def test_429_carries_retry_after(sim: Simulator, session: aiohttp.ClientSession) -> None:
    sim.inject("429", retry_after=2)
    sim.inject("429")
    url = sim.base_url + "/analytics/events"
    headers = {"Authorization": f"Bearer {MANAGEMENT_TOKEN}"}

    async with session.get(url, params={"room_id": ROOM}, headers=headers) as resp:
        assert resp.headers["Retry-After"] == "2"
    async with session.get(url, params={"room_id": ROOM}, headers=headers) as resp:
        assert "Retry-After" not in resp.headers


async def test_broken_bodies(sim: Simulator, session: aiohttp.ClientSession) -> None:
    sim.add_event(ROOM)
    sim.inject("bad_json")
    sim.inject("bad_shape")
    sim.inject("bad_event")
    url = sim.base_url + "/analytics/events"
    headers = {"Authorization": f"Bearer {MANAGEMENT_TOKEN}"}

    async with session.get(url, params={"room_id": ROOM}, headers=headers) as resp:
        assert await resp.text() == "not json{"
    async with session.get(url, params={"room_id": ROOM}, headers=headers) as resp:
        assert (await resp.json())["events"] == "oops"
    async with session.get(url, params={"room_id": ROOM}, headers=headers) as resp:
        events = (await resp.json())["events"]
    assert len(events) == 2
    assert ["id" in e for e in events].count(False) == 1


async def test_hang_holds_until_the_client_gives_up_and_stop_still_works(
    sim: Simulator, session: aiohttp.ClientSession
) -> None:
    sim.inject("hang")

    with pytest.raises(TimeoutError):
        await asyncio.wait_for(get(session, sim, [("room_id", ROOM)]), 0.1)

    assert sim.requests[0]["status"] == 0
    assert sim.in_flight == 1
    started = time.monotonic()
    await sim.stop()
    assert time.monotonic() - started < 1.5


def test_inject_rejects_unknown_faults() -> None:
    sim = Simulator(management_token=MANAGEMENT_TOKEN)
    with pytest.raises(ValueError, match="unknown fault"):
        sim.inject("teapot")  # type: ignore[arg-type]


# -- rooms ---------------------------------------------------------------------------


async def test_rooms_are_listed_page_by_page(
    sim: Simulator, session: aiohttp.ClientSession
) -> None:
    sim.add_room("r1")
    sim.add_event("r2")
    sim.add_room("r3")
    sim.add_room("r1")  # already there
    base: Query = [("enabled", "true"), ("limit", "2")]

    _, first = await get(session, sim, base, path="/rooms")
    _, second = await get(session, sim, [*base, ("start", first["last"])], path="/rooms")
    _, third = await get(session, sim, [*base, ("start", second["last"])], path="/rooms")

    assert [r["id"] for r in first["data"]] == ["r1", "r2"]
    assert first["last"] == "r2"
    assert [r["id"] for r in second["data"]] == ["r3"]
    assert third == {"limit": 2, "data": [], "last": ""}
    assert all(r["enabled"] for r in first["data"])
    status, _ = await get(session, sim, [*base, ("start", "nope")], path="/rooms")
    assert status == 400


async def test_rooms_are_enabled_by_default_and_filter_by_name_and_template(
    sim: Simulator, session: aiohttp.ClientSession
) -> None:
    sim.add_room("on", name="class-1", template_id="t1")
    sim.add_room("off", name="class-2", enabled=False)
    sim.add_room("other", name="class-3", template_id="t2")

    _, listed = await get(session, sim, [], path="/rooms")
    assert [r["id"] for r in listed["data"]] == ["on", "other"]
    _, disabled = await get(session, sim, [("enabled", "false")], path="/rooms")
    assert [r["id"] for r in disabled["data"]] == ["off"]
    _, named = await get(session, sim, [("name", "class-3")], path="/rooms")
    assert [r["id"] for r in named["data"]] == ["other"]
    _, of_t1 = await get(session, sim, [("template_id", "t1")], path="/rooms")
    assert [r["id"] for r in of_t1["data"]] == ["on"]
    sim.set_room("on", enabled=False)
    _, listed = await get(session, sim, [], path="/rooms")
    assert [r["id"] for r in listed["data"]] == ["other"]


async def test_sessions_are_live_by_default_and_all_with_active_false(
    sim: Simulator, session: aiohttp.ClientSession
) -> None:
    ended = sim.start_session("r1")
    live = sim.start_session("r2")
    sim.end_session(ended)

    _, only_live = await get(session, sim, [], path="/sessions")
    assert [(s["id"], s["active"]) for s in only_live["data"]] == [(live, True)]
    _, every = await get(session, sim, [("active", "false"), ("limit", "1")], path="/sessions")
    assert [s["id"] for s in every["data"]] == [ended]
    _, rest = await get(
        session,
        sim,
        [("active", "false"), ("limit", "1"), ("start", every["last"])],
        path="/sessions",
    )
    assert [s["id"] for s in rest["data"]] == [live]
    _, of_r2 = await get(session, sim, [("active", "false"), ("room_id", "r2")], path="/sessions")
    assert [s["room_id"] for s in of_r2["data"]] == ["r2"]
    sim.sessions[0]["created_at"] = "2026-01-01T00:00:00.000Z"  # long before the other
    created = "2026-01-01T00:00:00.000Z"
    _, later = await get(session, sim, [("active", "false"), ("after", created)], path="/sessions")
    assert [s["id"] for s in later["data"]] == [live]
