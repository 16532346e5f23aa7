"""Read-only views of the store for operators: ``poller status`` and ``poller deliveries``."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from poller.config import Config
from poller.parts import open_configured_store
from poller.states import DeliveryState
from poller.timeutil import utcnow


def _ago(when: dt.datetime | None, now: dt.datetime) -> str:
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


async def status(config: Config) -> str:
    """Schema revision, each room's last poll, and the outbox by webhook and state."""
    now = utcnow()
    async with open_configured_store(config, apply_migrations=False) as store:
        current, head = await store.schema_revisions()
        if current != head:
            return f"store schema is at {current}, this version needs {head}: run `poller migrate`"
        rooms = {row["id"]: row for row in await store.room_states()}
        instances = await store.instance_states()
        counts = await store.outbox_counts()
        oldest = await store.oldest_pending()
    lines = [f"store: {config.store.masked_url()} (schema {current})", "instances:"]
    for inst in instances:
        lines.append(
            f"  {inst['id']}: started {_ago(inst['started_at'], now)}, "
            f"last heartbeat {_ago(inst['heartbeat_at'], now)}"
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
            f"  {room.id}: last success {_ago(row['last_success_at'], now)}, "
            f"last poll {_ago(row['last_polled_at'], now)}{owner}{failing}{baseline}{error}"
        )
    lines.append("deliveries (pending / delivered / dead):")
    for name in sorted({w.name for w in config.webhooks} | {w for w, _ in counts}):
        p, d, x = (counts.get((name, s), 0) for s in DeliveryState)
        lines.append(f"  {name}: {p} / {d} / {x}")
    lines.append(f"oldest pending delivery: {_ago(oldest, now) if oldest else 'none'}")
    return "\n".join(lines)


async def deliveries(config: Config, *, state: str | None, webhook: str | None, limit: int) -> str:
    """The most recent deliveries as a table."""
    now = utcnow()
    async with open_configured_store(config, apply_migrations=False) as store:
        rows = await store.list_deliveries(state=state, webhook=webhook, limit=limit)
    if not rows:
        return "no deliveries"
    lines = [f"{'id':>8}  {'webhook':<16} {'state':<9} {'tries':>5}  {'event':<36}  last"]
    for r in rows:
        last = f"{r.last_status or '-'} {r.last_error or ''}".strip()
        when = _ago(r.next_attempt_at, now) if r.state == DeliveryState.PENDING else ""
        lines.append(
            f"{r.id:>8}  {r.webhook:<16} {r.state:<9} {r.attempts:>5}  {r.event_id:<36}  "
            f"{last}{'  next ' + when if when else ''}"
        )
    return "\n".join(lines)


async def retry(config: Config, *, ids: Sequence[int], webhook: str | None) -> str:
    """Make dead deliveries pending again; the running daemon picks them up."""
    async with open_configured_store(config, apply_migrations=False) as store:
        count = await store.retry(ids=ids, webhook=webhook, now=utcnow())
    return f"{count} dead deliveries scheduled for a new attempt"
