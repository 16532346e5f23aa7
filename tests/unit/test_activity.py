"""Adaptive polling's bookkeeping, on a fake clock and a fake sessions listing: which rooms
are fast, why, until when, and what a failed walk leaves alone."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Collection

import pytest
from structlog.testing import capture_logs

from poller.activity import Activity, Reason, State
from poller.config import PollConfig
from poller.errors import StoreError
from poller.hms.client import ApiError
from poller.hms.listing import SessionInfo
from poller.rooms import Origin, PolledRooms
from poller.schedule import Scheduler
from poller.store.repo import Pace

T0 = dt.datetime(2026, 12, 1, 8, 0, tzinfo=dt.UTC)
FAST, IDLE = 30.0, 600.0
WINDOW = dt.timedelta(hours=2)
CONFIG = PollConfig(
    interval=FAST,
    page_size=100,
    backfill=True,
    max_concurrency=8,
    lease_ttl=90.0,
    max_pages=100,
    max_page_bytes=1 << 20,
    max_page_events=1000,
    adaptive=True,
    idle_interval=IDLE,
    active_window=WINDOW.total_seconds(),
    sessions_interval=30.0,
)


def stamp(when: dt.datetime) -> str:
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)


class Sessions:
    """GET /sessions as the contract says: live only unless active=false; after filters
    created_at."""

    def __init__(self) -> None:
        self.listed: list[SessionInfo] = []
        self.calls: list[tuple[bool, str | None]] = []
        self.failing = False
        self.failing_recent = False  # only the second listing of a walk fails

    def start(self, session_id: str, room_id: str, at: dt.datetime) -> None:
        self.listed.append(SessionInfo(session_id, room_id, True, stamp(at), stamp(at)))

    def end(self, session_id: str, at: dt.datetime, *, updated_at: str | None = None) -> None:
        (old,) = [s for s in self.listed if s.id == session_id]
        self.listed.remove(old)
        end = stamp(at) if updated_at is None else updated_at
        self.listed.append(SessionInfo(old.id, old.room_id, False, old.created_at, end))

    async def sessions(
        self, *, active: bool, after: str | None = None
    ) -> AsyncIterator[SessionInfo]:
        self.calls.append((active, after))
        if self.failing or (self.failing_recent and not active):
            raise ApiError("GET /sessions: HTTP 503")
        for s in list(self.listed):
            if (not active or s.active) and (after is None or s.created_at > after):
                yield s


async def no_poll(_room_id: str) -> None:
    """The jobs never fire: the scheduler is not started."""


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def api() -> Sessions:
    return Sessions()


@pytest.fixture
def polled() -> PolledRooms:
    rooms = PolledRooms(Scheduler(), no_poll, interval=FAST, timeout=60.0, settle_to=IDLE)
    rooms.add_all(["r1", "r2", "r3"], Origin.CONFIG)
    return rooms


@pytest.fixture
def activity(api: Sessions, polled: PolledRooms, clock: Clock) -> Activity:
    return Activity(api, polled, CONFIG, clock=clock)


def intervals(polled: PolledRooms) -> dict[str, float | None]:
    return {r: polled.interval_of(r) for r in sorted(polled.ids)}


async def test_rooms_start_idle_and_a_live_session_makes_its_room_fast(
    api: Sessions, polled: PolledRooms, activity: Activity, clock: Clock
) -> None:
    assert intervals(polled) == {"r1": IDLE, "r2": IDLE, "r3": IDLE}
    assert activity.state("r1").reason is Reason.IDLE
    api.start("s1", "r1", T0 - dt.timedelta(days=3))  # live, however old

    outcome = await activity.walk()

    assert (outcome.ok, outcome.live, outcome.active, outcome.changed) == (True, 1, 1, 1)
    assert intervals(polled) == {"r1": FAST, "r2": IDLE, "r3": IDLE}
    pace = activity.state("r1")
    assert (pace.interval, pace.reason, pace.until, pace.state) == (
        FAST,
        Reason.LIVE,
        T0 + WINDOW,
        State.ACTIVE,
    )
    assert activity.state("r2").state is State.IDLE
    assert activity.by_state() == {State.ACTIVE: 1, State.IDLE: 2}


async def test_each_walk_lists_live_sessions_and_those_created_since_before_the_last_walk(
    api: Sessions, activity: Activity, clock: Clock
) -> None:
    await activity.walk()
    clock.advance(30)
    await activity.walk()

    assert api.calls[0] == (True, None)
    assert api.calls[1] == (False, stamp(T0 - WINDOW - dt.timedelta(seconds=30)))
    assert api.calls[2] == (True, None)
    # The second walk reaches back a window (the previous walk was more recent than that).
    assert api.calls[3] == (
        False,
        stamp(T0 + dt.timedelta(seconds=30) - WINDOW - dt.timedelta(seconds=30)),
    )


async def test_a_session_that_started_and_ended_between_walks_makes_its_room_active(
    api: Sessions, polled: PolledRooms, activity: Activity, clock: Clock
) -> None:
    await activity.walk()
    api.start("s1", "r2", T0 + dt.timedelta(seconds=5))
    api.end("s1", T0 + dt.timedelta(seconds=20))
    clock.advance(30)

    outcome = await activity.walk()

    assert (outcome.live, outcome.recent, outcome.changed) == (0, 1, 1)
    pace = activity.state("r2")
    assert (pace.interval, pace.reason) == (FAST, Reason.ENDED)
    assert pace.until == T0 + dt.timedelta(seconds=20) + WINDOW  # its end, not the walk


async def test_a_room_stays_active_for_the_window_after_its_session_then_turns_idle(
    api: Sessions, polled: PolledRooms, activity: Activity, clock: Clock
) -> None:
    # A long session: created before any `after` the walks use, so once it ends only
    # the sighting while live keeps its room active.
    api.start("s1", "r1", T0 - dt.timedelta(hours=5))
    await activity.walk()
    api.end("s1", T0 + dt.timedelta(seconds=10))
    clock.advance(30)
    await activity.walk()
    assert (activity.state("r1").reason, polled.interval_of("r1")) == (Reason.ENDED, FAST)
    assert activity.state("r1").until == T0 + WINDOW

    clock.now = T0 + WINDOW - dt.timedelta(seconds=1)
    assert (await activity.walk()).changed == 0
    assert polled.interval_of("r1") == FAST

    clock.now = T0 + WINDOW + dt.timedelta(seconds=1)
    outcome = await activity.walk()
    assert (outcome.changed, outcome.active) == (1, 0)
    assert activity.state("r1").reason is Reason.IDLE
    assert polled.interval_of("r1") == IDLE
    assert activity.by_state() == {State.ACTIVE: 0, State.IDLE: 3}


async def test_only_rooms_whose_pace_changes_are_touched(
    api: Sessions, polled: PolledRooms, activity: Activity, clock: Clock
) -> None:
    api.start("s1", "r1", T0)
    api.start("s2", "r1", T0)  # two sessions, one room
    assert (await activity.walk()).changed == 1
    clock.advance(30)
    assert (await activity.walk()).changed == 0
    api.start("s3", "r3", clock.now)
    clock.advance(30)
    assert (await activity.walk()).changed == 1
    assert intervals(polled) == {"r1": FAST, "r2": IDLE, "r3": FAST}


async def test_a_failed_walk_changes_nothing(
    api: Sessions, polled: PolledRooms, activity: Activity, clock: Clock
) -> None:
    api.start("s1", "r1", T0)
    await activity.walk()
    api.failing = True
    clock.now = T0 + WINDOW + dt.timedelta(hours=1)  # past the window: a success would idle r1

    with capture_logs() as logs:
        outcome = await activity.walk()

    assert not outcome.ok
    assert outcome.error == "GET /sessions: HTTP 503"
    assert activity.last == outcome
    assert polled.interval_of("r1") == FAST
    assert activity.state("r1").reason is Reason.LIVE
    assert [e["event"] for e in logs] == ["sessions_walk_failed"]
    assert logs[0]["log_level"] == "warning"


async def test_a_walk_whose_second_listing_fails_changes_nothing(
    api: Sessions, polled: PolledRooms, activity: Activity, clock: Clock
) -> None:
    api.start("s1", "r1", T0)
    await activity.walk()
    api.end("s1", T0)
    api.start("s2", "r2", T0)
    api.failing_recent = True
    clock.now = T0 + WINDOW + dt.timedelta(seconds=1)

    outcome = await activity.walk()

    assert not outcome.ok
    assert intervals(polled) == {"r1": FAST, "r2": IDLE, "r3": IDLE}
    assert activity.state("r1").reason is Reason.LIVE


async def test_after_a_failed_walk_the_next_reaches_back_to_the_last_good_one(
    api: Sessions, polled: PolledRooms, activity: Activity, clock: Clock
) -> None:
    await activity.walk()
    api.failing = True
    clock.advance(3 * 3600)
    await activity.walk()
    api.failing = False
    # Started and ended during the outage, more than a window ago when the API is back.
    api.start("s1", "r3", T0 + dt.timedelta(minutes=50))
    api.end("s1", T0 + dt.timedelta(minutes=70))
    clock.advance(1)
    api.calls.clear()

    await activity.walk()

    assert polled.interval_of("r3") == FAST
    # But no further back than a window and an idle interval.
    reach = clock.now - WINDOW - dt.timedelta(seconds=IDLE + 30)
    assert api.calls[1] == (False, stamp(reach))


async def test_a_session_in_a_room_not_polled_counts_but_touches_nothing_until_it_is(
    api: Sessions, polled: PolledRooms, activity: Activity, clock: Clock
) -> None:
    api.start("s1", "elsewhere", T0)
    outcome = await activity.walk()
    assert (outcome.active, outcome.changed, activity.active_rooms) == (1, 0, 1)
    assert activity.state("elsewhere").interval is None
    assert activity.by_state() == {State.ACTIVE: 0, State.IDLE: 3}

    polled.add("elsewhere", Origin.DISCOVERY)  # found by discovery
    assert polled.interval_of("elsewhere") == IDLE
    clock.advance(30)
    assert (await activity.walk()).changed == 1
    assert polled.interval_of("elsewhere") == FAST


async def test_a_room_retired_and_found_again_is_made_fast_again(
    api: Sessions, polled: PolledRooms, activity: Activity, clock: Clock
) -> None:
    api.start("s1", "r1", T0)
    await activity.walk()
    polled.remove("r1")
    assert activity.by_state() == {State.ACTIVE: 0, State.IDLE: 2}
    polled.add("r1", Origin.DISCOVERY)
    clock.advance(30)
    await activity.walk()
    assert polled.interval_of("r1") == FAST


@pytest.mark.parametrize("updated_at", ["", "yesterday", "2026-12-01T07:00:00"])
async def test_an_end_the_api_does_not_say_counts_as_now(
    api: Sessions, activity: Activity, clock: Clock, updated_at: str
) -> None:
    api.start("s1", "r1", T0 - dt.timedelta(seconds=10))
    api.end("s1", T0, updated_at=updated_at)
    clock.advance(5)
    await activity.walk()
    assert activity.state("r1").until == clock.now + WINDOW


async def test_an_end_in_the_future_counts_as_now(
    api: Sessions, activity: Activity, clock: Clock
) -> None:
    api.start("s1", "r1", T0 - dt.timedelta(seconds=10))
    api.end("s1", T0 + dt.timedelta(days=30))  # a skewed clock must not pin the room fast
    await activity.walk()
    assert activity.state("r1").until == T0 + WINDOW


async def test_a_session_without_a_room_is_ignored(
    api: Sessions, activity: Activity, clock: Clock
) -> None:
    api.listed.append(SessionInfo("s1", "", True, stamp(T0), stamp(T0)))
    outcome = await activity.walk()
    assert (outcome.ok, outcome.live, outcome.active) == (True, 1, 0)


class Paces:
    """The store's side of paces: what each write carried."""

    def __init__(self) -> None:
        self.writes: list[dict[str, Pace]] = []
        self.failing = False

    async def record_paces(self, paces: Collection[Pace]) -> None:
        if self.failing:
            raise StoreError("database is locked")
        self.writes.append({p.room_id: p for p in paces})


async def test_paces_are_written_for_status_all_first_then_only_changes(
    api: Sessions, polled: PolledRooms, clock: Clock
) -> None:
    paces = Paces()
    activity = Activity(api, polled, CONFIG, clock=clock, store=paces)
    api.start("s1", "r1", T0)

    await activity.walk()
    (first,) = paces.writes
    assert first == {
        "r1": Pace("r1", FAST, "live", T0 + WINDOW),
        "r2": Pace("r2", IDLE, "idle"),
        "r3": Pace("r3", IDLE, "idle"),
    }
    await activity.walk()  # nothing changed
    assert paces.writes[-1] == {}

    paces.failing = True
    api.start("s2", "r2", T0)
    with capture_logs() as logs:
        outcome = await activity.walk()
    assert outcome.ok  # the walk stands; its paces wait for the next write
    assert any(e["event"] == "pace_write_failed" for e in logs)
    paces.failing = False
    await activity.walk()
    assert set(paces.writes[-1]) == {"r2"}
    assert paces.writes[-1]["r2"].reason == "live"
