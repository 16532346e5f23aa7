"""Each webhook's stored state: the operator's pause, a 410's disable, the circuit breaker.

Shared by every instance on the store, so a pause by ``poller webhooks pause`` or a
breaker one instance opened holds for all. Rows change only when a state does (a spell
of failures starts or ends, the breaker opens or probes, a mode is set): never per
attempt.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection
from dataclasses import dataclass

from sqlalchemy import ColumnElement, or_, select, update

from poller.states import WebhookMode, WebhookState
from poller.store.base import StoreBase, translated
from poller.store.models import webhooks

__all__ = ["WebhookRow", "WebhookStates"]


@dataclass(frozen=True, slots=True)
class WebhookRow:
    """One webhook's stored state."""

    name: str
    mode: WebhookMode = WebhookMode.ACTIVE
    mode_reason: str | None = None
    mode_changed_at: dt.datetime | None = None
    failing_since: dt.datetime | None = None  # first failure since the last success
    breaker_opened_at: dt.datetime | None = None
    next_probe_at: dt.datetime | None = None
    last_error: str | None = None  # began the latest spell of failures (or probe failed)
    last_error_at: dt.datetime | None = None

    @property
    def state(self) -> WebhookState:
        """The mode, or the breaker while active: what ``status`` shows."""
        if self.mode is WebhookMode.PAUSED:
            return WebhookState.PAUSED
        if self.mode is WebhookMode.DISABLED:
            return WebhookState.DISABLED
        if self.breaker_opened_at is not None:
            return WebhookState.BREAKER_OPEN
        return WebhookState.ACTIVE


class WebhookStates(StoreBase):
    """Read and change the stored state of webhooks."""

    @translated
    async def ensure_webhooks(self, names: Collection[str]) -> None:
        """Give each of ``names`` a row (active) unless it has one."""
        if not names:
            return
        async with self._engine.begin() as conn:
            await conn.execute(
                self._insert(webhooks).on_conflict_do_nothing(index_elements=["name"]),
                [{"name": name} for name in sorted(names)],
            )

    @translated
    async def webhook_states(self) -> dict[str, WebhookRow]:
        """Every stored webhook's state, by name."""
        async with self._engine.connect() as conn:
            rows = (await conn.execute(select(webhooks))).mappings().all()
        return {
            row["name"]: WebhookRow(**{**row, "mode": WebhookMode(row["mode"])}) for row in rows
        }

    @translated
    async def set_webhook_mode(
        self,
        name: str,
        mode: WebhookMode,
        *,
        reason: str | None,
        now: dt.datetime,
        only_from: Collection[WebhookMode] | None = None,
    ) -> bool:
        """Set ``name``'s mode (creating its row) unless it is in none of ``only_from``;
        False when it was not changed. Leaving DISABLED starts the breaker afresh: the
        receiver was fixed, its old failures say nothing of it now."""
        async with self._engine.begin() as conn:
            await conn.execute(
                self._insert(webhooks).on_conflict_do_nothing(index_elements=["name"]),
                [{"name": name}],
            )
            values: dict[str, object] = {
                "mode": mode.value,
                "mode_reason": reason,
                "mode_changed_at": self._at(now),
            }
            if mode is WebhookMode.ACTIVE and (
                only_from is None or WebhookMode.DISABLED in only_from
            ):
                values |= {"failing_since": None, "breaker_opened_at": None, "next_probe_at": None}
            statement = update(webhooks).where(webhooks.c.name == name).values(values)
            if only_from is not None:
                statement = statement.where(webhooks.c.mode.in_([m.value for m in only_from]))
            result = await conn.execute(statement)
        return bool(result.rowcount)

    @translated
    async def webhook_failing(
        self, name: str, *, error: str, now: dt.datetime
    ) -> dt.datetime | None:
        """Start ``name``'s spell of failures at ``now`` with ``error`` unless one runs;
        return its start."""
        async with self._engine.begin() as conn:
            await conn.execute(
                update(webhooks)
                .where(webhooks.c.name == name, webhooks.c.failing_since.is_(None))
                .values(failing_since=self._at(now), last_error=error, last_error_at=self._at(now))
            )
            since = await conn.scalar(
                select(webhooks.c.failing_since).where(webhooks.c.name == name)
            )
        return since if isinstance(since, dt.datetime) else None

    @translated
    async def open_breaker(
        self, name: str, *, error: str, probe_after: float, now: dt.datetime
    ) -> bool:
        """Open ``name``'s breaker after ``error``, first probe ``probe_after`` seconds on;
        False when it was open already (another instance opened it)."""
        async with self._engine.begin() as conn:
            result = await conn.execute(
                update(webhooks)
                .where(webhooks.c.name == name, webhooks.c.breaker_opened_at.is_(None))
                .values(
                    breaker_opened_at=self._at(now),
                    next_probe_at=self._after(now, probe_after),
                    last_error=error,
                    last_error_at=self._at(now),
                )
            )
        return bool(result.rowcount)

    @translated
    async def probe_failed(self, name: str, *, error: str, now: dt.datetime) -> None:
        """Keep a failed probe's error as ``name``'s last."""
        async with self._engine.begin() as conn:
            await conn.execute(
                update(webhooks)
                .where(webhooks.c.name == name)
                .values(last_error=error, last_error_at=self._at(now))
            )

    @translated
    async def probe_now(self, name: str, *, now: dt.datetime) -> bool:
        """Make ``name``'s next breaker probe due at once (``poller webhooks resume`` on an
        open breaker); False when its breaker is not open."""
        async with self._engine.begin() as conn:
            result = await conn.execute(
                update(webhooks).where(*_breaker_open(name)).values(next_probe_at=self._at(now))
            )
        return bool(result.rowcount)

    @translated
    async def take_probe(self, name: str, *, interval: float, now: dt.datetime) -> bool:
        """Take the breaker's probe that is due, if any, and set the next one ``interval``
        seconds on: True for exactly one instance per probe."""
        async with self._engine.begin() as conn:
            result = await conn.execute(
                update(webhooks)
                .where(*_breaker_open(name), webhooks.c.next_probe_at <= self._at(now))
                .values(next_probe_at=self._after(now, interval))
            )
        return bool(result.rowcount)

    @translated
    async def webhook_recovered(self, name: str) -> bool:
        """End ``name``'s spell of failures and close its breaker; False when neither ran."""
        async with self._engine.begin() as conn:
            result = await conn.execute(
                update(webhooks)
                .where(
                    webhooks.c.name == name,
                    or_(
                        webhooks.c.failing_since.is_not(None),
                        webhooks.c.breaker_opened_at.is_not(None),
                    ),
                )
                .values(failing_since=None, breaker_opened_at=None, next_probe_at=None)
            )
        return bool(result.rowcount)


def _breaker_open(name: str) -> tuple[ColumnElement[bool], ...]:
    """``name`` is active (not paused or disabled) with its breaker open."""
    return (
        webhooks.c.name == name,
        webhooks.c.mode == WebhookMode.ACTIVE.value,
        webhooks.c.breaker_opened_at.is_not(None),
    )
