"""One read of the store for people: instances, rooms, webhooks and deliveries, as plain data.

``poller status`` (text and ``--json``), ``poller webhooks list`` and the status page
(``GET /``, ``poller.status_page``) are renderings of what this module reads; it holds the
wording they share (``ago``, ``rfc3339``, ``describe_state``, ``last_answer``), so that a
time, a state or an answer reads the same wherever it is shown.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from poller import __version__
from poller.config import Config, WebhookConfig
from poller.config.durations import format_duration
from poller.config.values import url_origin
from poller.errors import UserError
from poller.states import DeliveryState, PollOutcome, WebhookMode, WebhookState
from poller.store.repo import DeliveryFilter, DeliveryRow, Store, WebhookRow

__all__ = [
    "InstanceView",
    "RoomView",
    "SchemaBehind",
    "Snapshot",
    "WebhookView",
    "ago",
    "describe_state",
    "last_answer",
    "rfc3339",
    "snapshot",
    "state_name",
    "state_reason",
    "webhook_views",
]

PENDING, DEAD = DeliveryState.PENDING, DeliveryState.DEAD


class SchemaBehind(UserError):
    """The store's schema is not the one this version reads: nothing else is read."""

    def __init__(self, current: str | None, head: str | None) -> None:
        self.current, self.head = current, head
        super().__init__(
            f"store schema is at {current}, this version needs {head}: run `poller migrate`"
        )


@dataclass(frozen=True, slots=True)
class InstanceView:
    """An instance on the store, as its heartbeats tell."""

    id: str
    started_at: dt.datetime
    heartbeat_at: dt.datetime


@dataclass(frozen=True, slots=True)
class RoomView:
    """A configured room: how its polls went and who holds it."""

    id: str
    polled: bool  # False: no instance has polled it yet (no poll has started)
    first_polled_at: dt.datetime | None
    last_polled_at: dt.datetime | None  # when the latest poll started
    last_success_at: dt.datetime | None
    last_error: str | None  # the latest walk's error; None once a walk succeeds
    failed_walks: int  # in a row
    lease_owner: str | None
    events_seen: int  # events the store holds for it (31 days are kept)
    origin: str = "config"  # config ([[rooms]]) or discovery (GET /rooms)
    discovered_at: dt.datetime | None = None  # first listed by GET /rooms
    left_at: dt.datetime | None = None  # no longer listed: polled for [discovery] keep
    # Session-aware polling: the interval its poller set, why (live, ended, idle), and
    # until when it stays fast. None: adaptive is off (every room at poll.interval).
    interval_s: float | None = None
    pace_reason: str | None = None
    active_until: dt.datetime | None = None

    @property
    def origin_text(self) -> str:
        """Where the room comes from, in words (for a discovered one, since when)."""
        if self.origin != "discovery":
            return "config"
        if self.left_at is not None:
            return "discovery, left the listing"
        return "discovery"

    @property
    def outcome(self) -> PollOutcome | None:
        """How the latest finished walk ended; None before any did."""
        if self.last_error is not None:
            return PollOutcome.ERROR
        return PollOutcome.OK if self.last_success_at is not None else None


@dataclass(frozen=True, slots=True)
class WebhookView:
    """A webhook (configured, or with deliveries in the store): its state and its outbox."""

    name: str
    configured: bool
    url: str | None  # scheme://host:port only: paths, queries and userinfo are credentials
    state: WebhookState
    reason: str | None  # why it is paused or disabled
    state_changed_at: dt.datetime | None
    failing_since: dt.datetime | None
    breaker_opened_at: dt.datetime | None
    next_probe_at: dt.datetime | None  # only while the breaker is open
    last_error: str | None
    last_error_at: dt.datetime | None
    rate_limit: float | None
    max_concurrency: int | None
    pending: int
    delivered: int
    dead: int
    oldest_pending_at: dt.datetime | None

    @classmethod
    def of(
        cls,
        name: str,
        webhook: WebhookConfig | None,
        row: WebhookRow | None,
        counts: Mapping[tuple[str, str], int],
        oldest_pending_at: dt.datetime | None,
    ) -> WebhookView:
        """The view of ``name`` from its config (if any), stored state and outbox counts."""
        row = row or WebhookRow(name)
        return cls(
            name=name,
            configured=webhook is not None,
            url=url_origin(webhook.url) if webhook else None,
            state=row.state,
            reason=row.mode_reason if row.mode is not WebhookMode.ACTIVE else None,
            state_changed_at=row.mode_changed_at,
            failing_since=row.failing_since,
            breaker_opened_at=row.breaker_opened_at,
            next_probe_at=row.next_probe_at if row.breaker_opened_at else None,
            last_error=row.last_error,
            last_error_at=row.last_error_at,
            rate_limit=webhook.rate_limit if webhook else None,
            max_concurrency=webhook.max_concurrency if webhook else None,
            pending=counts.get((name, PENDING), 0),
            delivered=counts.get((name, DeliveryState.DELIVERED), 0),
            dead=counts.get((name, DEAD), 0),
            oldest_pending_at=oldest_pending_at,
        )

    def count(self, state: DeliveryState) -> int:
        """Its deliveries in ``state``."""
        counts = {PENDING: self.pending, DeliveryState.DELIVERED: self.delivered, DEAD: self.dead}
        return counts[state]


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What the store said at ``taken_at``, as the instance ``instance`` read it."""

    taken_at: dt.datetime
    version: str  # of the process that took it
    instance: str
    store: str  # the URL, password masked
    schema: str | None
    instances: tuple[InstanceView, ...]
    rooms: tuple[RoomView, ...]  # the config's in its order, then discovered ones by id
    webhooks: tuple[WebhookView, ...]  # by name
    oldest_pending_at: dt.datetime | None  # of the configured webhooks
    latest: tuple[DeliveryRow, ...]  # newest first
    dead: tuple[DeliveryRow, ...]  # newest first
    retired_rooms: int = 0  # discovered, left the listing and retired: no longer polled


async def webhook_views(store: Store, config: Config) -> list[WebhookView]:
    """Every webhook, configured or with deliveries in the store, by name."""
    states = await store.webhook_states()
    counts = await store.outbox_counts()
    oldest = await store.oldest_pending_by_webhook()
    configured = {w.name: w for w in config.webhooks}
    names = sorted(configured.keys() | {w for w, _ in counts})
    return [
        WebhookView.of(n, configured.get(n), states.get(n), counts, oldest.get(n)) for n in names
    ]


async def snapshot(
    store: Store, config: Config, now: dt.datetime, *, deliveries: int = 0
) -> Snapshot:
    """Read everything people are shown about ``config``'s rooms and webhooks, with the
    ``deliveries`` latest deliveries and as many of the latest dead ones (0: none).

    A store whose schema is not this version's raises SchemaBehind before anything else
    is read (its tables may not have the columns asked for).
    """
    current, head = await store.schema_revisions()
    if current != head:
        raise SchemaBehind(current, head)
    stored = {row["id"]: row for row in await store.room_states()}
    configured = {r.id for r in config.rooms}
    seen = await store.event_counts()
    instances = await store.instance_states()
    hooks = await webhook_views(store, config)
    # An orphaned webhook's deliveries wait for it to return: they are not late.
    owed = [w.oldest_pending_at for w in hooks if w.configured and w.oldest_pending_at]
    latest = await store.list_deliveries(limit=deliveries) if deliveries else []
    dead = (
        await store.list_deliveries(DeliveryFilter(state=DEAD), limit=deliveries)
        if deliveries
        else []
    )
    return Snapshot(
        taken_at=now,
        version=__version__,
        instance=store.instance_id,
        store=config.store.masked_url(),
        schema=current,
        instances=tuple(
            InstanceView(i["id"], i["started_at"], i["heartbeat_at"]) for i in instances
        ),
        rooms=tuple(
            _room(r, stored.get(r), seen.get(r, 0), configured=r in configured)
            for r in _room_ids(config, stored)
        ),
        retired_rooms=sum(
            1 for r in stored.values() if r.get("retired_at") and r["id"] not in configured
        ),
        webhooks=tuple(hooks),
        oldest_pending_at=min(owed, default=None),
        latest=tuple(latest),
        dead=tuple(dead),
    )


def _room_ids(config: Config, stored: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The config's rooms, then those discovery found and has not retired."""
    configured = [r.id for r in config.rooms]
    known = set(configured)
    found = sorted(
        r
        for r, row in stored.items()
        if row.get("discovered_at") and not row.get("retired_at") and r not in known
    )
    return [*configured, *found]


def _room(
    room_id: str, row: Mapping[str, Any] | None, events_seen: int, *, configured: bool
) -> RoomView:
    row = row or {}
    return RoomView(
        id=room_id,
        polled=row.get("last_polled_at") is not None,  # a row may come from discovery first
        first_polled_at=row.get("first_polled_at"),
        last_polled_at=row.get("last_polled_at"),
        last_success_at=row.get("last_success_at"),
        last_error=row.get("last_error"),
        failed_walks=row.get("failed_walks", 0),
        lease_owner=row.get("lease_owner"),
        events_seen=events_seen,
        origin="config" if configured else "discovery",
        discovered_at=row.get("discovered_at"),
        left_at=row.get("left_at"),
        interval_s=row.get("pace_interval"),
        pace_reason=row.get("pace_reason"),
        active_until=row.get("active_until"),
    )


# --- the wording every rendering shares --------------------------------------------------


def ago(when: dt.datetime | None, now: dt.datetime) -> str:
    """``when`` relative to ``now``, for people: "12s ago", "3m ago", "in 5s", "never"."""
    if when is None:
        return "never"
    seconds = (now - when).total_seconds()
    if seconds < 0:
        return f"in {-seconds:.0f}s"
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.1f}h ago"


_PACE_REASONS = {"live": "a session is live", "ended": "a session ended", "idle": "idle"}


def pace_text(room: RoomView, now: dt.datetime) -> str | None:
    """A room's polling pace in words ("every 30s, a session is live, fast until in 2h"),
    or None when adaptive polling did not set one."""
    if room.pace_reason is None:
        return None
    parts = []
    if room.interval_s is not None:
        parts.append(f"every {format_duration(room.interval_s)}")
    parts.append(_PACE_REASONS.get(room.pace_reason, room.pace_reason))
    if room.active_until is not None and room.pace_reason != "idle":
        parts.append(f"fast until {ago(room.active_until, now)}")
    return ", ".join(parts)


def rfc3339(when: dt.datetime | None) -> str | None:
    """RFC 3339 in UTC, to the millisecond: what --json, ``show`` and the page's
    ``datetime`` attributes carry."""
    if when is None:
        return None
    return when.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def state_name(state: WebhookState) -> str:
    """A webhook state as people read it: "breaker open"."""
    return state.value.replace("_", " ")


def state_reason(webhook: WebhookView, now: dt.datetime) -> str | None:
    """Why a webhook is in its state: orphaned, the breaker's times, or why it is paused
    or disabled."""
    if not webhook.configured:
        return (
            "not in the config; its deliveries are kept for when it returns, "
            f"or `poller deliveries purge --webhook {webhook.name}`"
        )
    if webhook.state is WebhookState.BREAKER_OPEN:
        return (
            f"since {ago(webhook.breaker_opened_at, now)}, "
            f"next probe {ago(webhook.next_probe_at, now)}"
        )
    return webhook.reason


def describe_state(webhook: WebhookView, now: dt.datetime) -> str:
    """A webhook's state as one line of text: the state, why, and a spell of failures."""
    if not webhook.configured:
        return f"orphaned: {state_reason(webhook, now)}"
    parts = [state_name(webhook.state)]
    if reason := state_reason(webhook, now):
        parts.append(reason)
    if webhook.failing_since:
        parts.append(f"failing since {ago(webhook.failing_since, now)}")
        if webhook.last_error:
            parts.append(f"last error: {webhook.last_error}")
    return ", ".join(parts)


def last_answer(row: DeliveryRow) -> str:
    """A delivery's latest answer: "204", "503 HTTP 503", "- timeout", "-" before any."""
    return f"{row.last_status or '-'} {row.last_error or ''}".strip()
