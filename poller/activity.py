"""Adaptive polling: rooms with a recent session are polled fast, the others rarely.

A room is *active* while a session in it is live, and for ``poll.active_window`` after
it ended (its recording arrives after the end); an active room is polled every
``poll.interval``, every other room every ``poll.idle_interval``. Each walk of
``GET /sessions`` (every ``poll.sessions_interval``, one for the whole app) lists

- every live session, however old (``active=true``), and
- every session created since shortly before the previous walk (``active=false``
  lists ended ones too), so one that started and ended between two walks still
  makes its room active.

A session seen live at ``t`` keeps its room active until ``t + active_window``; one
seen ended, until its end (``updated_at``) ``+ active_window``. The idle interval is
the catch-all: every room is still polled at least that often, so what is delivered
never depends on the sessions API, only how soon. A walk that fails changes nothing:
rooms keep their intervals until one succeeds. Nothing is stored: after a restart
the first walk (at once) finds the rooms that are active again.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import time
from collections.abc import AsyncIterator, Callable, Collection, Iterable
from typing import Protocol

import structlog
from structlog.typing import FilteringBoundLogger

from poller.config import PollConfig
from poller.errors import StoreError
from poller.hms.client import ApiError
from poller.hms.listing import SessionInfo
from poller.rooms import PolledRooms
from poller.store.repo import Pace
from poller.timeutil import utcnow

__all__ = ["Activity", "Reason", "RoomPace", "SessionsOutcome", "State"]


class SessionsSource(Protocol):
    """What the walk needs of the API (``poller.hms.client.HmsClient`` is the real one)."""

    def sessions(self, *, active: bool, after: str | None = None) -> AsyncIterator[SessionInfo]: ...


class PaceStore(Protocol):
    """Where paces are kept for ``poller status`` (``poller.store.repo.Store``)."""

    async def record_paces(self, paces: Collection[Pace]) -> None: ...


class State(enum.StrEnum):
    """The two paces a room is polled at (the ``state`` label of the metrics)."""

    ACTIVE = "active"
    IDLE = "idle"


class Reason(enum.StrEnum):
    """Why a room is polled at its pace."""

    LIVE = "live"  # a session in it was live at the latest walk
    ENDED = "ended"  # its session ended (or was last seen live) within active_window
    IDLE = "idle"  # no session within active_window: the full walk's pace


@dataclasses.dataclass(frozen=True, slots=True)
class RoomPace:
    """One room's pace, for status: its interval now, why, and until when if active."""

    interval: float | None  # seconds between its polls; None when this instance does not poll it
    reason: Reason
    until: dt.datetime | None = None  # active until then (a later session may extend it)

    @property
    def state(self) -> State:
        return State.IDLE if self.reason is Reason.IDLE else State.ACTIVE


@dataclasses.dataclass(frozen=True, slots=True)
class SessionsOutcome:
    """How the latest sessions walk went, for logs and metrics."""

    ok: bool
    at: dt.datetime
    live: int = 0  # live sessions listed
    recent: int = 0  # sessions created since shortly before the previous walk
    active: int = 0  # rooms active after the walk (polled here or not)
    changed: int = 0  # polled rooms whose interval this walk changed
    error: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class _Seen:
    until: dt.datetime
    live: bool


class Activity:
    """Walks the sessions listing and sets each polled room's interval from it."""

    def __init__(
        self,
        client: SessionsSource,
        polled: PolledRooms,
        config: PollConfig,
        *,
        clock: Callable[[], dt.datetime] = utcnow,
        on_walk: Callable[[SessionsOutcome], None] | None = None,
        store: PaceStore | None = None,
        logger: FilteringBoundLogger | None = None,
    ) -> None:
        self._client = client
        self._store = store
        self._written: dict[str, Pace] = {}  # as the store has them, from this instance
        self._polled = polled
        self._interval = config.interval
        self._idle_interval = config.idle_interval
        self._window = dt.timedelta(seconds=config.active_window)
        self._walk_every = dt.timedelta(seconds=config.sessions_interval)
        self._clock = clock
        self._on_walk = on_walk or (lambda _outcome: None)
        self._log = logger or structlog.get_logger("poller.activity")
        self._seen: dict[str, _Seen] = {}  # rooms active as of the latest complete walk
        self._fast: set[str] = set()  # polled rooms this set to the fast interval
        self._last_ok: dt.datetime | None = None
        self.last: SessionsOutcome | None = None

    def state(self, room_id: str) -> RoomPace:
        """This room's pace as the latest complete walk set it."""
        interval = self._polled.interval_of(room_id)
        seen = self._seen.get(room_id)
        if seen is None:
            return RoomPace(interval, Reason.IDLE)
        return RoomPace(interval, Reason.LIVE if seen.live else Reason.ENDED, seen.until)

    def by_state(self) -> dict[State, int]:
        """How many polled rooms are at each pace (bounded: for the metrics)."""
        polled = self._polled.ids
        active = sum(1 for room_id in self._fast if room_id in polled)
        return {State.ACTIVE: active, State.IDLE: len(polled) - active}

    @property
    def active_rooms(self) -> int:
        """Rooms of the app active as of the latest complete walk, polled here or not."""
        return len(self._seen)

    async def walk(self) -> SessionsOutcome:
        """One walk of the sessions listing; never raises for the API: the outcome says."""
        started = time.perf_counter()
        now = self._clock()
        try:
            live = [s async for s in self._client.sessions(active=True)]
            recent = [s async for s in self._client.sessions(active=False, after=self._after(now))]
        except ApiError as exc:
            outcome = SessionsOutcome(False, now, error=str(exc))
            self._log.warning("sessions_walk_failed", error=outcome.error)
        else:
            self._note(live, recent, now)
            changed = self._apply(now)
            self._last_ok = now
            await self._record()
            outcome = SessionsOutcome(
                True,
                now,
                live=len(live),
                recent=len(recent),
                active=len(self._seen),
                changed=changed,
            )
            (self._log.info if changed else self._log.debug)(
                "sessions_walked",
                live=len(live),
                recent=len(recent),
                active_rooms=len(self._seen),
                fast=len(self._fast),
                changed=changed,
                duration_ms=round((time.perf_counter() - started) * 1000, 1),
            )
        self.last = outcome
        self._on_walk(outcome)
        return outcome

    async def _record(self) -> None:
        """Keep the paces that changed since the last write in the store (for status); a
        store failure is retried at the next walk, and never fails this one."""
        if self._store is None:
            return
        paces: dict[str, Pace] = {}
        for room_id in self._polled.ids:
            pace = self.state(room_id)
            paces[room_id] = Pace(room_id, pace.interval, pace.reason.value, pace.until)
        changed = [p for r, p in paces.items() if self._written.get(r) != p]
        try:
            await self._store.record_paces(changed)
        except StoreError as exc:
            self._log.warning("pace_write_failed", error=str(exc))
            return
        self._written = paces

    def _after(self, now: dt.datetime) -> str:
        """Sessions created after this may have ended within the window without being
        seen live (or were missed while walks failed; within one idle interval, beyond
        which every room has had its full walk anyway)."""
        since = now - self._window
        if self._last_ok is not None:
            reach = now - self._window - dt.timedelta(seconds=self._idle_interval)
            since = max(min(since, self._last_ok), reach)
        return _rfc3339(since - self._walk_every)

    def _note(
        self, live: Iterable[SessionInfo], recent: Iterable[SessionInfo], now: dt.datetime
    ) -> None:
        """Fold one walk into each room's ``active_until``."""
        # Earlier sightings still count until they run out, but only this walk says "live".
        seen = {r: _Seen(s.until, False) for r, s in self._seen.items() if s.until > now}
        for session in [*live, *recent]:
            if not session.room_id:
                continue
            if session.active:
                sighting = _Seen(now + self._window, True)
            else:
                sighting = _Seen(_ended_at(session, now) + self._window, False)
            if sighting.until <= now:
                continue
            before = seen.get(session.room_id)
            if before is not None:
                sighting = _Seen(max(before.until, sighting.until), before.live or sighting.live)
            seen[session.room_id] = sighting
        self._seen = seen

    def _apply(self, now: dt.datetime) -> int:
        """Set the interval of the polled rooms whose pace changed; returns how many."""
        polled = self._polled.ids
        fast = {room_id for room_id in self._seen if room_id in polled}
        changed = 0
        # Every fast room, not only new ones: a room re-added since (discovery) starts idle.
        for room_id in fast:
            changed += self._polled.set_interval(room_id, self._interval, now=now)
        for room_id in self._fast - fast:
            changed += self._polled.set_interval(room_id, self._idle_interval, now=now)
        self._fast = fast
        return changed


def _ended_at(session: SessionInfo, now: dt.datetime) -> dt.datetime:
    """When an ended session ended; an end the API did not say is taken as now (a room
    kept fast too long costs requests, one made idle too soon costs latency)."""
    try:
        when = dt.datetime.fromisoformat(session.updated_at)
    except ValueError:
        return now
    if when.tzinfo is None:
        return now
    return min(when.astimezone(dt.UTC), now)


def _rfc3339(when: dt.datetime) -> str:
    """The API's form of a time (``2026-12-01T08:00:00.000Z``)."""
    return when.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
