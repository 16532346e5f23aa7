"""Read-only views of the store for operators: ``poller status`` and ``poller deliveries``."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Sequence
from typing import Any

from poller.config import Config, WebhookConfig
from poller.errors import UserError
from poller.parts import open_configured_store
from poller.snapshot import (
    SchemaBehind,
    Snapshot,
    WebhookView,
    ago,
    describe_state,
    last_answer,
    pace_text,
    rfc3339,
    snapshot,
)
from poller.states import DeliveryState
from poller.store.repo import AttemptRow, DeliveryFilter, DeliveryRow, EventFilter
from poller.timeutil import utcnow

PENDING, DEAD = DeliveryState.PENDING, DeliveryState.DEAD


async def status(config: Config, *, as_json: bool = False) -> str:
    """Schema revision, instances, each room's last poll, and the outbox by webhook and
    state: a table, or JSON with the keys documented in the README (``status_json``)."""
    async with open_configured_store(config, apply_migrations=False) as store:
        try:
            snap = await snapshot(store, config, utcnow())
        except SchemaBehind as exc:
            if as_json:
                raise
            return str(exc)
    return dumps(status_json(snap)) if as_json else status_text(snap)


def status_text(snap: Snapshot) -> str:
    """``poller status``: one line per instance, room and webhook."""
    now = snap.taken_at
    lines = [f"store: {snap.store} (schema {snap.schema})", "instances:"]
    for inst in snap.instances:
        lines.append(
            f"  {inst.id}: started {ago(inst.started_at, now)}, "
            f"last heartbeat {ago(inst.heartbeat_at, now)}"
        )
    if not snap.instances:
        lines.append("  none running")
    lines.append("rooms:")
    for room in snap.rooms:
        found = ""
        if room.origin == "discovery":
            found = f" (discovered {ago(room.discovered_at, now)}"
            found += f", left the listing {ago(room.left_at, now)})" if room.left_at else ")"
        if not room.polled:
            lines.append(f"  {room.id}{found}: not polled yet")
            continue
        error = f", last error: {room.last_error}" if room.last_error else ""
        failed = room.failed_walks
        failing = f", {failed} failed walks in a row" if failed else ""
        baseline = "" if room.first_polled_at else ", no complete walk yet"
        owner = f", leased by {room.lease_owner}" if room.lease_owner else ""
        if (pace := pace_text(room, now)) is not None:
            owner += f", {pace}"
        lines.append(
            f"  {room.id}{found}: last success {ago(room.last_success_at, now)}, "
            f"last poll {ago(room.last_polled_at, now)}{owner}{failing}{baseline}{error}"
        )
    if snap.retired_rooms:
        lines.append(f"  ({snap.retired_rooms} retired rooms: left the listing, no longer polled)")
    lines.append("webhooks (pending / delivered / dead, state):")
    for hook in snap.webhooks:
        p, d, x = (hook.count(s) for s in DeliveryState)
        lines.append(f"  {hook.name}: {p} / {d} / {x}, {describe_state(hook, now)}")
    oldest = snap.oldest_pending_at
    lines.append(f"oldest pending delivery: {ago(oldest, now) if oldest else 'none'}")
    return "\n".join(lines)


def status_json(snap: Snapshot) -> dict[str, Any]:
    """``poller status --json``: stable keys, times as RFC 3339 UTC, null when unknown."""
    return {
        "store": snap.store,
        "schema": snap.schema,
        "instances": [
            {
                "id": i.id,
                "started_at": rfc3339(i.started_at),
                "heartbeat_at": rfc3339(i.heartbeat_at),
            }
            for i in snap.instances
        ],
        "rooms": [
            {
                "id": r.id,
                "polled": r.polled,
                "first_polled_at": rfc3339(r.first_polled_at),
                "last_polled_at": rfc3339(r.last_polled_at),
                "last_success_at": rfc3339(r.last_success_at),
                "last_error": r.last_error,
                "failed_walks": r.failed_walks,
                "lease_owner": r.lease_owner,
                "origin": r.origin,
                "discovered_at": rfc3339(r.discovered_at),
                "left_at": rfc3339(r.left_at),
                "interval_s": r.interval_s,
                "pace": r.pace_reason,
                "active_until": rfc3339(r.active_until),
            }
            for r in snap.rooms
        ],
        "retired_rooms": snap.retired_rooms,
        "webhooks": [webhook_json(w) for w in snap.webhooks],
        "oldest_pending_at": rfc3339(snap.oldest_pending_at),
    }


def _known_webhook(config: Config, name: str | None, stored: Iterable[str] = ()) -> None:
    """Refuse a webhook name that is neither configured nor in ``stored``, listing them."""
    if name is not None and name not in {w.name for w in config.webhooks} and name not in stored:
        raise _unknown_webhook(config, name)


def _unknown_webhook(config: Config, name: str) -> UserError:
    listed = ", ".join(sorted(w.name for w in config.webhooks)) or "none"
    return UserError(f"unknown webhook {name!r} (configured: {listed})")


def _delivery_json(row: DeliveryRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "webhook": row.webhook,
        "state": row.state,
        "event_id": row.event_id,
        "event_type": row.event_type,
        "room_id": row.room_id,
        "attempts": row.attempts,
        "created_at": rfc3339(row.created_at),
        "next_attempt_at": rfc3339(row.next_attempt_at) if row.state == PENDING else None,
        "delivered_at": rfc3339(row.delivered_at),
        "last_attempt_at": rfc3339(row.last_attempt_at),
        "last_status": row.last_status,
        "last_error": row.last_error,
    }


def _attempt_json(row: AttemptRow) -> dict[str, Any]:
    return {
        "number": row.number,
        "at": rfc3339(row.attempted_at),
        "duration_ms": round(row.duration_ms, 1),
        "status": row.status,
        "error": row.error,
        "response": row.response,
        "counted": row.counted,
    }


def dumps(value: Any) -> str:
    """JSON for --json output: indented, non-ASCII kept as it is."""
    return json.dumps(value, indent=2, ensure_ascii=False)


async def deliveries(
    config: Config, where: DeliveryFilter, *, limit: int, as_json: bool = False
) -> str:
    """The most recent deliveries matching ``where``, as a table or JSON."""
    now = utcnow()
    async with open_configured_store(config, apply_migrations=False) as store:
        if where.webhook is not None and where.webhook not in {w.name for w in config.webhooks}:
            _known_webhook(config, where.webhook, {w for w, _ in await store.outbox_counts()})
        rows = await store.list_deliveries(where, limit=limit)
    if as_json:
        return dumps([_delivery_json(r) for r in rows])
    if not rows:
        return "no deliveries"
    lines = [f"{'id':>8}  {'webhook':<16} {'state':<9} {'tries':>5}  {'event':<36}  last"]
    for r in rows:
        last = last_answer(r)
        when = ago(r.next_attempt_at, now) if r.state == PENDING else ""
        lines.append(
            f"{r.id:>8}  {r.webhook:<16} {r.state:<9} {r.attempts:>5}  {r.event_id:<36}  "
            f"{last}{'  next ' + when if when else ''}"
        )
    return "\n".join(lines)


async def show(config: Config, delivery_id: int, *, as_json: bool = False) -> str:
    """One delivery and every attempt the attempt log holds for it."""
    async with open_configured_store(config, apply_migrations=False) as store:
        row = await store.delivery(delivery_id)
        if row is None:
            raise UserError(f"no delivery {delivery_id}")
        tries = await store.attempts_of(delivery_id)
    if as_json:
        return dumps({**_delivery_json(row), "attempt_log": [_attempt_json(a) for a in tries]})
    fields = _delivery_json(row)
    lines = [f"delivery {row.id}"]
    lines += [f"  {key}: {'-' if value is None else value}" for key, value in fields.items()][1:]
    lines.append(f"attempts ({len(tries)}):" if tries else "attempts: none yet")
    for a in tries:
        answer = f"{a.status}" if a.status is not None else "no answer"
        error = f" {a.error}" if a.error and a.error != f"HTTP {a.status}" else ""
        held = "" if a.counted else " (used up no retry: a breaker probe, or 410)"
        lines.append(
            f"  #{a.number} {rfc3339(a.attempted_at)} {answer}{error} {a.duration_ms:.0f}ms{held}"
        )
        if a.response:
            lines.append(f"      {a.response!r}"[:200])
    return "\n".join(lines)


async def retry(config: Config, *, ids: Sequence[int], webhook: str | None, all_dead: bool) -> str:
    """Make dead deliveries pending again with a fresh schedule; the daemon picks them up.

    Either ``ids`` or ``all_dead`` (every dead one, of ``webhook`` if given).
    """
    if not ids and not all_dead:
        raise UserError("deliveries retry needs delivery ids or --dead")
    if ids and all_dead:
        raise UserError("deliveries retry takes delivery ids or --dead, not both")
    _known_webhook(config, webhook)
    skipped: list[str] = []
    async with open_configured_store(config, apply_migrations=False) as store:
        for delivery_id in dict.fromkeys(ids):
            row = await store.delivery(delivery_id)
            if row is None:
                raise UserError(f"no delivery {delivery_id}")
            if row.state != DEAD:
                skipped.append(f"delivery {delivery_id} is {row.state}, not dead")
        count = await store.retry(ids=ids, webhook=webhook, now=utcnow())
    lines = [f"{count} dead deliveries scheduled for a new attempt"]
    if skipped:
        lines.append("left as they are: " + "; ".join(skipped) + " (see poller replay)")
    return "\n".join(lines)


def configured_webhook(config: Config, name: str) -> WebhookConfig:
    """The configured webhook ``name``; a UserError listing the configured ones if none."""
    for webhook in config.webhooks:
        if webhook.name == name:
            return webhook
    raise _unknown_webhook(config, name)


def replay_filter(
    webhook: WebhookConfig,
    *,
    room_id: str | None = None,
    event_type: str | None = None,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
) -> EventFilter:
    """The stored events a replay to ``webhook`` takes: what its own filters let through,
    narrowed by the operator's."""

    def narrowed(own: frozenset[str] | None, asked: str | None) -> frozenset[str] | None:
        if asked is None:
            return own
        return frozenset({asked}) & own if own is not None else frozenset({asked})

    return EventFilter(
        room_ids=narrowed(webhook.rooms, room_id),
        types=narrowed(webhook.event_types, event_type),
        since=since,
        until=until,
    )


async def replay_count(config: Config, webhook: str, which: EventFilter) -> int:
    """How many stored events a replay would owe ``webhook`` again."""
    async with open_configured_store(config, apply_migrations=False) as store:
        return await store.replay(webhook, which, now=utcnow(), dry_run=True)


def replay_preview(webhook: str, count: int) -> str:
    """What a replay is about to do, shown before it asks."""
    if not count:
        return f"no stored events to replay to {webhook}"
    return (
        f"{count} stored events will be delivered again to {webhook} "
        "(same webhook-id: receivers can drop what they already processed)"
    )


async def replay(config: Config, webhook: str, which: EventFilter) -> str:
    """Owe ``webhook`` the selected stored events once more; the daemon delivers them."""
    async with open_configured_store(config, apply_migrations=False) as store:
        count = await store.replay(webhook, which, now=utcnow())
    return f"{count} deliveries to {webhook} scheduled"


def webhook_json(webhook: WebhookView) -> dict[str, Any]:
    """One webhook's state and outbox counts: the keys of ``webhooks list --json`` and of
    the webhook entries of ``status --json`` (README)."""
    return {
        "name": webhook.name,
        "configured": webhook.configured,
        # In the store but no longer in the config: not delivered to, never dropped.
        "orphaned": not webhook.configured,
        "url": webhook.url,
        "state": webhook.state.value,
        "reason": webhook.reason,
        "state_changed_at": rfc3339(webhook.state_changed_at),
        "failing_since": rfc3339(webhook.failing_since),
        "breaker_opened_at": rfc3339(webhook.breaker_opened_at),
        "next_probe_at": rfc3339(webhook.next_probe_at),
        "last_error": webhook.last_error,
        "last_error_at": rfc3339(webhook.last_error_at),
        "rate_limit": webhook.rate_limit,
        "max_concurrency": webhook.max_concurrency,
        **{str(state): webhook.count(state) for state in DeliveryState},
    }
