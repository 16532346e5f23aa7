"""Rendering the status page: every text field of a snapshot is escaped and masked."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import enum
import hashlib
import html
from typing import Any

import pytest

from poller.redaction import Redactor
from poller.snapshot import InstanceView, RoomView, Snapshot, WebhookView
from poller.states import WebhookState
from poller.status_page import HEADERS, STYLE, render, unavailable
from poller.store.repo import DeliveryRow

NOW = dt.datetime(2026, 12, 3, 12, 0, tzinfo=dt.UTC)
SECRET = "a-configured-secret-42"


def hostile(name: str) -> str:
    """A string that would be markup if it were not escaped, naming its field."""
    return f"<i data-field=\"{name}\">'{name}'&amp;</i>"


def everything_hostile(value: Any, prefix: str) -> Any:
    """``value`` with every string field replaced by ``hostile(field)``."""
    changes: dict[str, Any] = {}
    for field in dataclasses.fields(value):
        current = getattr(value, field.name)
        if isinstance(current, str) and not isinstance(current, enum.Enum):
            changes[field.name] = hostile(f"{prefix}.{field.name}")
    return dataclasses.replace(value, **changes)


def when(seconds: float) -> dt.datetime:
    return NOW - dt.timedelta(seconds=seconds)


def delivery(state: str) -> DeliveryRow:
    return DeliveryRow(
        id=7,
        event_id="00000000-0000-4000-8000-000000000001",
        webhook="all",
        state=state,
        attempts=3,
        created_at=when(60),
        next_attempt_at=when(-30),
        delivered_at=None,
        last_attempt_at=when(5),
        last_status=503,
        last_error="HTTP 503",
        room_id="room-a",
        event_type="beam.recording.success",
    )


def webhook(state: WebhookState) -> WebhookView:
    return WebhookView(
        name="all",
        configured=True,
        url="https://example.com:443",
        state=state,
        reason="paused by hand at 2026-12-03T11:00:00Z",
        state_changed_at=when(3600),
        failing_since=when(120),
        breaker_opened_at=when(60),
        next_probe_at=when(-20),
        last_error="HTTP 503",
        last_error_at=when(10),
        rate_limit=None,
        max_concurrency=4,
        pending=1,
        delivered=2,
        dead=3,
        oldest_pending_at=when(90),
    )


def snap(**changes: Any) -> Snapshot:
    room = RoomView("room-a", True, when(600), when(2), when(2), None, 0, "vm:1", 5)
    base = Snapshot(
        taken_at=NOW,
        version="0.1.0",
        instance="vm:1",
        store="sqlite+aiosqlite:////var/lib/poller/poller.db",
        schema="0006",
        instances=(InstanceView("vm:1", when(600), when(1)),),
        rooms=(room,),
        webhooks=tuple(webhook(s) for s in WebhookState),
        oldest_pending_at=when(90),
        latest=(delivery("pending"), delivery("dead")),
        dead=(delivery("dead"),),
    )
    return dataclasses.replace(base, **changes)


def test_every_text_field_is_escaped() -> None:
    s = snap()
    s = snap(
        version=hostile("version"),
        instance=hostile("instance"),
        store=hostile("store"),
        schema=hostile("schema"),
        instances=tuple(everything_hostile(i, "instance") for i in s.instances),
        rooms=tuple(
            everything_hostile(dataclasses.replace(r, last_error="x"), "room") for r in s.rooms
        ),
        webhooks=tuple(everything_hostile(w, f"webhook-{w.state}") for w in s.webhooks),
        latest=tuple(everything_hostile(d, "latest") for d in s.latest),
        dead=tuple(everything_hostile(d, "dead") for d in s.dead),
    )
    page = render(s, str)

    assert "<i " not in page
    assert "data-field=" not in page.replace("data-field=&quot;", "")
    shown = [
        "version",
        "instance",
        "store",
        "schema",
        "instance.id",
        "room.id",
        "room.last_error",
        "room.lease_owner",
        "webhook-active.name",
        "webhook-active.url",
        "webhook-paused.reason",
        "webhook-breaker_open.last_error",
        "latest.webhook",
        "latest.room_id",
        "latest.event_type",
        "latest.last_error",
        "dead.event_type",
    ]
    for name in shown:
        assert html.escape(hostile(name)) in page, name


def test_every_value_is_masked_before_it_is_escaped() -> None:
    # A secret holding markup characters: masked in its raw spelling, before escaping
    # would change it into one the redactor does not know.
    secret = f"<{SECRET}&>"
    room = dataclasses.replace(snap().rooms[0], last_error=f"echo {secret}")
    page = render(snap(rooms=(room,)), Redactor([secret]))
    assert SECRET not in page
    assert "echo ***" in page


def test_the_policy_allows_exactly_the_inline_style() -> None:
    digest = base64.b64encode(hashlib.sha256(STYLE.encode()).digest()).decode()
    policy = HEADERS["Content-Security-Policy"]
    assert f"style-src 'sha256-{digest}'" in policy
    assert "unsafe-inline" not in policy
    assert policy.startswith("default-src 'none';")
    for page in (render(snap(), str), unavailable("no answer", NOW, str)):
        assert page.count("<style>") == 1
        assert f"<style>{STYLE}</style>" in page
        assert "<script" not in page
        assert "http://" not in page.replace("http-equiv", "")  # no external asset
        assert "https://" not in page.replace("https://example.com:443", "")


@pytest.mark.parametrize(
    ("state", "shown"),
    [
        (WebhookState.ACTIVE, "active"),
        (WebhookState.PAUSED, "paused by hand at 2026-12-03T11:00:00Z"),
        (WebhookState.BREAKER_OPEN, "since 60s ago, next probe in 20s"),
        (WebhookState.DISABLED, "disabled"),
    ],
)
def test_webhook_states_read_as_in_the_cli(state: WebhookState, shown: str) -> None:
    page = render(snap(webhooks=(webhook(state),)), str)
    assert shown in page


def test_a_webhook_no_longer_in_the_config_is_orphaned() -> None:
    removed = dataclasses.replace(webhook(WebhookState.ACTIVE), configured=False, url=None)
    page = render(snap(webhooks=(removed,)), str)
    assert '<span class="badge none">orphaned</span>' in page
    assert "not configured" in page
    assert "or `poller deliveries purge --webhook all`" in page


def test_times_carry_their_instant() -> None:
    page = render(snap(), str)
    assert '<time datetime="2026-12-03T11:58:30.000Z" title="2026-12-03T11:58:30.000Z">' in page
    assert ">90s ago</time>" in page  # the oldest pending delivery
    assert "due " not in page  # the pending one is due in 30 s
    assert "next <time" in page
