"""Adaptive polling against the simulator's GET /sessions: which rooms turn fast, and a
walk that fails leaves them as they were."""

from __future__ import annotations

import dataclasses

import aiohttp
import pytest
from structlog.testing import capture_logs

from poller.activity import Activity, Reason, SessionsOutcome, State
from poller.hms.client import HmsClient
from poller.hms.token import MintedTokens
from poller.rooms import Origin, PolledRooms
from poller.schedule import Scheduler
from poller.simulator import Simulator
from tests.conftest import ACCESS_KEY, APP_SECRET
from tests.unit.test_activity import CONFIG, FAST, IDLE, no_poll
from tests.unit.test_rooms import HeldGate


@dataclasses.dataclass
class Setup:
    activity: Activity
    polled: PolledRooms
    outcomes: list[SessionsOutcome]


@pytest.fixture
async def setup(simulator: Simulator, session: aiohttp.ClientSession) -> Setup:
    client = HmsClient(
        session, simulator.base_url, MintedTokens(ACCESS_KEY, APP_SECRET), max_attempts=1
    )
    polled = PolledRooms(Scheduler(), no_poll, interval=FAST, timeout=60.0, settle_to=IDLE)
    polled.add_all(["a", "b", "c"], Origin.CONFIG)
    outcomes: list[SessionsOutcome] = []
    return Setup(Activity(client, polled, CONFIG, on_walk=outcomes.append), polled, outcomes)


def sessions_queries(simulator: Simulator) -> list[dict[str, str]]:
    return [
        {k: v for k, v in r["query"] if k in ("active", "after")}
        for r in simulator.listing_requests
        if r["path"] == "/sessions"
    ]


async def test_live_and_short_sessions_between_walks_make_their_rooms_fast(
    simulator: Simulator, setup: Setup
) -> None:
    for room in ("a", "b", "c"):
        simulator.add_room(room)
    await setup.activity.walk()
    assert {r: setup.polled.interval_of(r) for r in "abc"} == {"a": IDLE, "b": IDLE, "c": IDLE}

    simulator.start_session("a")  # live at the next walk
    short = simulator.start_session("b")  # starts and ends between two walks
    simulator.end_session(short)
    outcome = await setup.activity.walk()

    assert (outcome.ok, outcome.live, outcome.changed) == (True, 1, 2)
    assert {r: setup.polled.interval_of(r) for r in "abc"} == {"a": FAST, "b": FAST, "c": IDLE}
    assert setup.activity.state("a").reason is Reason.LIVE
    assert setup.activity.state("b").reason is Reason.ENDED
    assert setup.activity.state("c").reason is Reason.IDLE
    assert setup.activity.by_state() == {State.ACTIVE: 2, State.IDLE: 1}
    # The API's own default is live only: both listings say what they want.
    queries = sessions_queries(simulator)
    assert {q["active"] for q in queries} == {"true", "false"}
    assert all(("after" in q) == (q["active"] == "false") for q in queries)


async def test_a_failed_walk_changes_nothing(simulator: Simulator, setup: Setup) -> None:
    simulator.start_session("a")
    await setup.activity.walk()
    await simulator.stop()  # the API goes away: no room is made idle for that

    with capture_logs() as logs:
        outcome = await setup.activity.walk()

    assert not outcome.ok
    assert outcome.error is not None
    assert "GET /sessions" in outcome.error
    assert setup.polled.interval_of("a") == FAST
    assert setup.activity.state("a").reason is Reason.LIVE
    assert [o.ok for o in setup.outcomes] == [True, False]
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == ["sessions_walk_failed"]


async def test_a_room_made_fast_while_its_first_poll_waits_its_turn_is_polled_within_an_interval(
    simulator: Simulator, session: aiohttp.ClientSession
) -> None:
    """The first walk runs at start, while first polls wait for the budget (the default
    50/s is below a startup's spread of first polls with some thousands of rooms): a
    room it makes fast must not wait for the idle run after the one that waits."""
    client = HmsClient(
        session, simulator.base_url, MintedTokens(ACCESS_KEY, APP_SECRET), max_attempts=1
    )
    scheduler = Scheduler()
    gate = HeldGate()  # the budget's gate, with no turn free yet
    polled = PolledRooms(scheduler, no_poll, interval=FAST, timeout=60.0, settle_to=IDLE, gate=gate)
    polled.add_all(["a"], Origin.CONFIG)
    activity = Activity(client, polled, CONFIG)
    simulator.add_room("a")
    simulator.start_session("a")
    scheduler.start()
    try:
        await gate.wait_queued(1)  # a's first poll has fired: the job's next run is idle
        outcome = await activity.walk()
        assert (outcome.ok, outcome.changed) == (True, 1)
        next_run = scheduler.next_run("poll:a")
        assert next_run is not None
        assert (next_run - outcome.at).total_seconds() <= FAST + 1.0
    finally:
        await scheduler.stop(1.0)
