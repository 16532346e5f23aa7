"""The store's tables: seen events, per-room poll state, the delivery outbox and its attempts."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
    true,
)
from sqlalchemy.types import TypeDecorator

from poller.states import DeliveryState, WebhookMode

# A naming convention makes constraint names stable across SQLite batch
# migrations and PostgreSQL, so later migrations can address them by name.
metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite hands back naive ones)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store")
        value = value.astimezone(dt.UTC)
        # SQLite compares the stored text: keep one format by storing naive UTC.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        assert isinstance(value, dt.datetime)
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


Id = BigInteger().with_variant(Integer(), "sqlite")

STATES = tuple(state.value for state in DeliveryState)

events = Table(
    "events",
    metadata,
    Column("id", String(255), primary_key=True),  # the 100ms event id: what "seen" means
    Column("room_id", String(255), nullable=False),
    Column("type", String(255), nullable=False),
    Column("timestamp", String(64), nullable=False),  # as the API wrote it
    Column("seen_at", UTCDateTime(), nullable=False),
    Column("body", Text, nullable=False),  # the exact JSON every webhook receives
    Index(None, "seen_at"),
    Index(None, "room_id"),  # a poller loads the ids it holds per room
)

rooms = Table(
    "rooms",
    metadata,
    Column("id", String(255), primary_key=True),
    # Set by the first complete poll ever: decides whether poll.backfill applies.
    Column("first_polled_at", UTCDateTime(), nullable=True),
    Column("last_polled_at", UTCDateTime(), nullable=True),
    Column("last_success_at", UTCDateTime(), nullable=True),
    Column("last_error", Text, nullable=True),
    # Walks that failed in a row (0 after a complete one): bounds the first-poll
    # phase and makes a room that never completes a walk visible.
    Column("failed_walks", Integer, nullable=False, server_default="0"),
    Column("lease_owner", String(255), nullable=True),
    Column("lease_until", UTCDateTime(), nullable=True),
    # Discovery ([discovery]): set when GET /rooms first listed the room (None: a room
    # only of the config); when it left the listing (None: listed, or never discovered);
    # when it was retired, ``keep`` after leaving (no longer polled).
    Column("discovered_at", UTCDateTime(), nullable=True),
    Column("left_at", UTCDateTime(), nullable=True),
    Column("retired_at", UTCDateTime(), nullable=True),
    # True for a room discovered after discovery's first listing: it was created while
    # poller watched the app, so everything in it is new (delivered without poll.backfill).
    Column("backfill", Boolean, nullable=False, server_default=false()),
    # Session-aware polling ([poll] adaptive): the room's interval as its poller last set
    # it, why (live, ended, idle), and until when it stays active. None: not adaptive.
    Column("pace_interval", Float, nullable=True),
    Column("pace_reason", String(16), nullable=True),
    Column("active_until", UTCDateTime(), nullable=True),
)

# Live poller instances sharing this store; rooms are spread over them.
instances = Table(
    "instances",
    metadata,
    Column("id", String(255), primary_key=True),
    Column("started_at", UTCDateTime(), nullable=False),
    Column("heartbeat_at", UTCDateTime(), nullable=False),
    # A random token per process: tells a restart of this instance from another live
    # process started with the same id (NULL: a row written before 0004).
    Column("incarnation", String(32), nullable=True),
)

deliveries = Table(
    "deliveries",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("event_id", String(255), ForeignKey("events.id", ondelete="CASCADE"), nullable=False),
    Column("webhook", String(64), nullable=False),
    Column("state", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("next_attempt_at", UTCDateTime(), nullable=False),
    Column("delivered_at", UTCDateTime(), nullable=True),
    Column("last_attempt_at", UTCDateTime(), nullable=True),
    Column("last_status", Integer, nullable=True),
    Column("last_error", Text, nullable=True),
    # A claim is a lease on one delivery: an instance that dies mid-attempt
    # loses it when claimed_until passes, and the delivery is retried.
    Column("claimed_by", String(255), nullable=True),
    Column("claimed_until", UTCDateTime(), nullable=True),
    UniqueConstraint("event_id", "webhook"),
    CheckConstraint(f"state IN {STATES!r}", name="state"),
    Index(None, "state", "webhook", "next_attempt_at"),
)

# Every finished attempt of a delivery, for operators (``poller deliveries show``);
# written in the transaction that records the attempt on its delivery.
attempts = Table(
    "attempts",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("delivery_id", Id, ForeignKey("deliveries.id", ondelete="CASCADE"), nullable=False),
    Column("number", Integer, nullable=False),  # 1 for a delivery's first (or retried) try
    Column("attempted_at", UTCDateTime(), nullable=False),  # when the attempt ended
    Column("duration_ms", Float, nullable=False),
    Column("status", Integer, nullable=True),  # None: no HTTP answer
    Column("error", Text, nullable=True),  # None: delivered
    # The answer's first KiB (poller.delivery.sender), decoded as UTF-8 with invalid
    # bytes replaced: what a receiver said when it refused, enough to tell why.
    Column("response", Text, nullable=True),
    # False: the attempt did not use up a retry (a breaker probe, an answer of 410 Gone);
    # the delivery stayed pending as it was.
    Column("counted", Boolean, nullable=False, server_default=true()),
    Index(None, "delivery_id"),
)

MODES = tuple(mode.value for mode in WebhookMode)

# Each webhook's delivery state, shared by every instance on the store: the operator's
# pause, a 410's disable, and the circuit breaker (open since, next probe). A row per
# configured webhook, made at start; rows are only updated on a change of state.
webhooks = Table(
    "webhooks",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("mode", String(16), nullable=False, server_default=WebhookMode.ACTIVE.value),
    Column("mode_reason", Text, nullable=True),
    Column("mode_changed_at", UTCDateTime(), nullable=True),
    # The first failed attempt since the last success: when the breaker's clock started.
    Column("failing_since", UTCDateTime(), nullable=True),
    Column("breaker_opened_at", UTCDateTime(), nullable=True),
    Column("next_probe_at", UTCDateTime(), nullable=True),
    # The error that began the latest spell of failures, or of its breaker's probes.
    Column("last_error", Text, nullable=True),
    Column("last_error_at", UTCDateTime(), nullable=True),
    CheckConstraint(f"mode IN {MODES!r}", name="mode"),
)
