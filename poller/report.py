"""Read-only views of the store for operators: ``poller status`` and ``poller deliveries``."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from poller.config import Config, WebhookConfig
from poller.config.values import url_origin
from poller.errors import UserError
from poller.parts import open_configured_store
from poller.states import DeliveryState, WebhookMode, WebhookState
from poller.store.repo import AttemptRow, DeliveryFilter, DeliveryRow, EventFilter, WebhookRow
from poller.timeutil import utcnow

PENDING, DEAD = DeliveryState.PENDING, DeliveryState.DEAD


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


async def status(config: Config, *, as_json: bool = False) -> str:
    """Schema revision, instances, each room's last poll, and the outbox by webhook and
    state: a table, or JSON with the keys documented in the README (``status_json``)."""
    now = utcnow()
    async with open_configured_store(config, apply_migrations=False) as store:
        current, head = await store.schema_revisions()
        if current != head:
            problem = (
                f"store schema is at {current}, this version needs {head}: run `poller migrate`"
            )
            if as_json:
                raise UserError(problem)
            return problem
        rooms = {row["id"]: row for row in await store.room_states()}
        instances = await store.instance_states()
        counts = await store.outbox_counts()
        oldest = await store.oldest_pending([w.name for w in config.webhooks])
        states = await store.webhook_states()
    names = sorted({w.name for w in config.webhooks} | {w for w, _ in counts})
    configured = {w.name: w for w in config.webhooks}
    hooks = [webhook_json(n, configured.get(n), states.get(n), counts) for n in names]
    if as_json:
        return dumps(status_json(config, current, instances, rooms, hooks, oldest))
    lines = [f"store: {config.store.masked_url()} (schema {current})", "instances:"]
    for inst in instances:
        lines.append(
            f"  {inst['id']}: started {ago(inst['started_at'], now)}, "
            f"last heartbeat {ago(inst['heartbeat_at'], now)}"
        )
    if not instances:
        lines.append("  none running")
    lines.append("rooms:")
    for room in config.rooms:
        row = rooms.get(room.id)
        if row is None:
            lines.append(f"  {room.id}: not polled yet")
            continue
        error = f", last error: {row['last_error']}" if row["last_error"] else ""
        failed = row["failed_walks"]
        failing = f", {failed} failed walks in a row" if failed else ""
        baseline = "" if row["first_polled_at"] else ", no complete walk yet"
        owner = f", leased by {row['lease_owner']}" if row["lease_owner"] else ""
        lines.append(
            f"  {room.id}: last success {ago(row['last_success_at'], now)}, "
            f"last poll {ago(row['last_polled_at'], now)}{owner}{failing}{baseline}{error}"
        )
    lines.append("webhooks (pending / delivered / dead, state):")
    for hook in hooks:
        p, d, x = (hook[s] for s in DeliveryState)
        lines.append(f"  {hook['name']}: {p} / {d} / {x}, {describe_state(hook, now)}")
    lines.append(f"oldest pending delivery: {ago(oldest, now) if oldest else 'none'}")
    return "\n".join(lines)


def status_json(
    config: Config,
    schema: str | None,
    instances: Sequence[Mapping[str, Any]],
    rooms: Mapping[str, Mapping[str, Any]],
    webhooks: Sequence[Mapping[str, Any]],
    oldest: dt.datetime | None,
) -> dict[str, Any]:
    """``poller status --json``: stable keys, times as RFC 3339 UTC, null when unknown."""

    def room(room_id: str) -> dict[str, Any]:
        row = rooms.get(room_id, {})
        return {
            "id": room_id,
            "polled": bool(row),
            "first_polled_at": rfc3339(row.get("first_polled_at")),
            "last_polled_at": rfc3339(row.get("last_polled_at")),
            "last_success_at": rfc3339(row.get("last_success_at")),
            "last_error": row.get("last_error"),
            "failed_walks": row.get("failed_walks", 0),
            "lease_owner": row.get("lease_owner"),
        }

    return {
        "store": config.store.masked_url(),
        "schema": schema,
        "instances": [
            {
                "id": i["id"],
                "started_at": rfc3339(i["started_at"]),
                "heartbeat_at": rfc3339(i["heartbeat_at"]),
            }
            for i in instances
        ],
        "rooms": [room(r.id) for r in config.rooms],
        "webhooks": list(webhooks),
        "oldest_pending_at": rfc3339(oldest),
    }


def _known_webhook(config: Config, name: str | None, stored: Iterable[str] = ()) -> None:
    """Refuse a webhook name that is neither configured nor in ``stored``, listing them."""
    if name is not None and name not in {w.name for w in config.webhooks} and name not in stored:
        raise _unknown_webhook(config, name)


def _unknown_webhook(config: Config, name: str) -> UserError:
    listed = ", ".join(sorted(w.name for w in config.webhooks)) or "none"
    return UserError(f"unknown webhook {name!r} (configured: {listed})")


def rfc3339(when: dt.datetime | None) -> str | None:
    """RFC 3339 in UTC, to the millisecond: what --json and ``show`` print."""
    if when is None:
        return None
    return when.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


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
        last = f"{r.last_status or '-'} {r.last_error or ''}".strip()
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


def webhook_json(
    name: str,
    webhook: WebhookConfig | None,
    row: WebhookRow | None,
    counts: Mapping[tuple[str, str], int],
) -> dict[str, Any]:
    """One webhook's state and outbox counts: the keys of ``webhooks list --json`` and of
    the webhook entries of ``status --json`` (README)."""
    row = row or WebhookRow(name)
    return {
        "name": name,
        "configured": webhook is not None,
        # In the store but no longer in the config: not delivered to, never dropped.
        "orphaned": webhook is None,
        "url": url_origin(webhook.url) if webhook else None,
        "state": row.state.value,
        "reason": row.mode_reason if row.mode is not WebhookMode.ACTIVE else None,
        "state_changed_at": rfc3339(row.mode_changed_at),
        "failing_since": rfc3339(row.failing_since),
        "breaker_opened_at": rfc3339(row.breaker_opened_at),
        "next_probe_at": rfc3339(row.next_probe_at) if row.breaker_opened_at else None,
        "last_error": row.last_error,
        "last_error_at": rfc3339(row.last_error_at),
        "rate_limit": webhook.rate_limit if webhook else None,
        "max_concurrency": webhook.max_concurrency if webhook else None,
        **{str(state): counts.get((name, state), 0) for state in DeliveryState},
    }


def describe_state(entry: Mapping[str, Any], now: dt.datetime) -> str:
    """A webhook entry (``webhook_json``) as one line of text: state and why."""
    if entry["orphaned"]:
        return (
            "orphaned: not in the config; its deliveries are kept for when it returns, "
            f"or `poller deliveries purge --webhook {entry['name']}`"
        )
    state = WebhookState(entry["state"])
    parts = [state.value.replace("_", " ")]
    if state is WebhookState.BREAKER_OPEN:
        parts.append(f"since {_ago(entry['breaker_opened_at'], now)}")
        parts.append(f"next probe {_ago(entry['next_probe_at'], now)}")
    elif entry["reason"]:
        parts.append(entry["reason"])
    if entry["failing_since"]:
        parts.append(f"failing since {_ago(entry['failing_since'], now)}")
    if entry["last_error"] and entry["failing_since"]:
        parts.append(f"last error: {entry['last_error']}")
    return ", ".join(parts)


def _ago(when: str | None, now: dt.datetime) -> str:
    return ago(dt.datetime.fromisoformat(when) if when else None, now)
