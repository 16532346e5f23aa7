"""Receiver protection: which deliveries a webhook may take now, and what an attempt says of it.

Four things hold a webhook back, each without dropping anything (its deliveries stay
pending, due as they were):

- a pause by hand (``poller webhooks pause``) and a disable by the receiver (410 Gone,
  until ``poller webhooks enable``): no attempts;
- its circuit breaker, opened once every attempt failed for ``breaker_after``: one probe
  attempt every ``probe_interval``, which uses up no retry; a 2xx closes it;
- its ``rate_limit``: attempts start at least 1/rate_limit seconds apart.

The mode and the breaker live in the store (``poller.store.webhooks``), shared by every
instance and re-read every ``REFRESH`` seconds, so a pause from the CLI or a breaker
another instance opened holds here within that; this module writes only changes.
"""

from __future__ import annotations

import datetime as dt
import math
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

import structlog
from structlog.typing import FilteringBoundLogger

from poller.delivery.sender import Attempt, Target
from poller.limit import Pacer
from poller.states import WebhookMode, WebhookState
from poller.store.webhooks import WebhookRow
from poller.timeutil import utcnow

__all__ = ["Admission", "GuardObserver", "GuardStore", "ReceiverGuard"]

# How stale this instance's view of the stored states may be: a pause takes effect
# (and a breaker another instance opened is seen) within this.
REFRESH = 1.0
# A rate-limited webhook claims only the deliveries that can start within this many
# seconds (Pacer.available): a claim must not wait out its TTL for its turn.
# 410 Gone: the receiver says the endpoint no longer exists (RFC 9110 15.5.11).
GONE = 410


class GuardStore(Protocol):
    """What the guard needs of the store (``poller.store.repo.Store`` is the real one)."""

    async def ensure_webhooks(self, names: Collection[str]) -> None: ...

    async def webhook_states(self) -> dict[str, WebhookRow]: ...

    async def set_webhook_mode(
        self,
        name: str,
        mode: WebhookMode,
        *,
        reason: str | None,
        now: dt.datetime,
        only_from: Collection[WebhookMode] | None = None,
    ) -> bool: ...

    async def webhook_failing(
        self, name: str, *, error: str, now: dt.datetime
    ) -> dt.datetime | None: ...

    async def open_breaker(
        self, name: str, *, error: str, probe_after: float, now: dt.datetime
    ) -> bool: ...

    async def probe_failed(self, name: str, *, error: str, now: dt.datetime) -> None: ...

    async def take_probe(self, name: str, *, interval: float, now: dt.datetime) -> bool: ...

    async def webhook_recovered(self, name: str) -> bool: ...


class GuardObserver(Protocol):
    """Where the guard reports what it did (``poller.metrics.Metrics`` is the real one)."""

    def observe_pacing(self, webhook: str, seconds: float) -> None: ...

    def observe_probe(self, webhook: str, ok: bool) -> None: ...


@dataclass(frozen=True, slots=True)
class Admission:
    """What a webhook may claim now: ``count`` deliveries, as a breaker ``probe`` or not."""

    count: int
    probe: bool = False


class ReceiverGuard:
    """Decides, per webhook, how many deliveries may be claimed, and keeps its stored state
    (failing since, breaker, 410 disable) in step with the attempts' outcomes."""

    def __init__(
        self,
        store: GuardStore,
        targets: Sequence[Target],
        *,
        breaker_after: float,
        probe_interval: float,
        observer: GuardObserver | None = None,
        logger: FilteringBoundLogger | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._breaker_after = dt.timedelta(seconds=breaker_after)
        self._probe_interval = probe_interval
        self._observer = observer
        self._log = logger or structlog.get_logger("poller.delivery")
        self._clock = clock
        self._rows = {t.name: WebhookRow(t.name) for t in targets}
        self._pacers = {t.name: Pacer(t.rate_limit, clock) for t in targets if t.rate_limit}
        self._read_at = -math.inf
        self._probe_asked: dict[str, float] = {}

    def state(self, webhook: str) -> WebhookState:
        """The webhook's state as this instance last saw it."""
        return self._rows[webhook].state

    async def refresh(self) -> None:
        """Re-read the stored states, at most every ``REFRESH`` seconds."""
        if self._clock() - self._read_at < REFRESH:
            return
        first = self._read_at == -math.inf
        if first:
            # The rows the breaker's updates need (they never insert).
            await self._store.ensure_webhooks(self._rows)
        stored = await self._store.webhook_states()
        self._read_at = self._clock()
        for name, row in stored.items():
            if name in self._rows:
                self._note(self._rows[name], row, first=first)

    async def admit(self, target: Target, free: int, in_flight: int) -> Admission:
        """How many of its due deliveries ``target`` may claim now, given ``free`` slots."""
        row = self._rows[target.name]
        state = row.state
        if state in (WebhookState.PAUSED, WebhookState.DISABLED):
            return Admission(0)
        if state is WebhookState.BREAKER_OPEN:
            return (
                Admission(1, probe=True)
                if await self._probe_due(target, in_flight)
                else Admission(0)
            )
        pacer = self._pacers.get(target.name)
        return Admission(free if pacer is None else min(free, pacer.available()))

    def wait_for_turn(self, target: Target) -> float:
        """Seconds a just-claimed delivery waits before its attempt (its rate limit)."""
        pacer = self._pacers.get(target.name)
        if pacer is None:
            return 0.0
        delay = pacer.reserve()
        if delay > 0 and self._observer is not None:
            self._observer.observe_pacing(target.name, delay)
        return delay

    def ready_in(self, webhooks: Sequence[str]) -> float | None:
        """Seconds until the first of ``webhooks`` held by its rate limit could go again."""
        # Only a pacer with a turn ahead: 0 would wake the loop for nothing, at once.
        waits = [w for name, p in self._pacers.items() if name in webhooks and (w := p.ready_in())]
        return min(waits) if waits else None

    async def observe(
        self, target: Target, attempt: Attempt, *, probe: bool, now: dt.datetime
    ) -> bool:
        """Bring the webhook's state up to date with this attempt's outcome; return whether
        the attempt uses up a retry (a failed probe and a 410 do not)."""
        name = target.name
        row = self._rows[name]
        if attempt.status == GONE:
            await self._disable(target, now)
            return False
        if attempt.ok:
            if probe and self._observer is not None:
                self._observer.observe_probe(name, True)
            # Either one: a breaker opened by hand (or by an older version) has no spell.
            spell = row.failing_since is not None or row.breaker_opened_at is not None
            if spell and await self._store.webhook_recovered(name):
                was_open = row.breaker_opened_at is not None
                self._rows[name] = replace(
                    self._rows[name], failing_since=None, breaker_opened_at=None, next_probe_at=None
                )
                event = "breaker_closed" if was_open else "webhook_recovered"
                since = row.failing_since or row.breaker_opened_at
                assert since is not None
                self._log.info(event, webhook=name, failing_since=since.isoformat())
            return True
        error = attempt.error or "failed"
        if probe:
            if self._observer is not None:
                self._observer.observe_probe(name, False)
            await self._store.probe_failed(name, error=error, now=now)
            self._log.warning(
                "breaker_probe_failed",
                webhook=name,
                error=attempt.error,
                next_probe_in_s=self._probe_interval,
            )
            return False
        if row.failing_since is None:
            since = await self._store.webhook_failing(name, error=error, now=now)
            self._rows[name] = replace(self._rows[name], failing_since=since)
        elif row.breaker_opened_at is None and now - row.failing_since >= self._breaker_after:
            opened = await self._store.open_breaker(
                name, error=error, probe_after=self._probe_interval, now=now
            )
            self._rows[name] = replace(self._rows[name], breaker_opened_at=now)
            if opened:
                self._log.warning(
                    "breaker_opened",
                    webhook=name,
                    failing_since=row.failing_since.isoformat(),
                    error=attempt.error,
                    probe_interval_s=self._probe_interval,
                )
        return True

    async def _probe_due(self, target: Target, in_flight: int) -> bool:
        """Whether this instance takes the breaker's next probe (it asks the store at most
        every second, or twice per interval; the store hands each probe to one instance)."""
        if in_flight:
            return False  # the probe is still out, or attempts begun before it opened
        asked = self._probe_asked.get(target.name, -math.inf)
        if self._clock() - asked < min(REFRESH, self._probe_interval / 2):
            return False
        self._probe_asked[target.name] = self._clock()
        return await self._store.take_probe(
            target.name, interval=self._probe_interval, now=utcnow()
        )

    async def _disable(self, target: Target, now: dt.datetime) -> None:
        reason = f"the receiver answered 410 Gone at {now.astimezone(dt.UTC):%Y-%m-%dT%H:%M:%SZ}"
        changed = await self._store.set_webhook_mode(
            target.name,
            WebhookMode.DISABLED,
            reason=reason,
            now=now,
            only_from=(WebhookMode.ACTIVE, WebhookMode.PAUSED),
        )
        self._rows[target.name] = replace(
            self._rows[target.name], mode=WebhookMode.DISABLED, mode_reason=reason
        )
        if changed:
            self._log.error(
                "webhook_disabled",
                webhook=target.name,
                reason=reason,
                hint=f"deliveries are kept; `poller webhooks enable {target.name}` resumes them",
            )

    def _note(self, old: WebhookRow, new: WebhookRow, *, first: bool) -> None:
        """Take the stored row, logging what holds the webhook back at start, and a change
        of mode made elsewhere (the CLI, another instance) later."""
        if first and new.state is not WebhookState.ACTIVE:
            self._log.warning(
                "webhook_held", webhook=new.name, state=new.state, reason=new.mode_reason
            )
        elif not first and old.mode is not new.mode:
            self._log.info(
                "webhook_mode_changed",
                webhook=new.name,
                mode=new.mode,
                was=old.mode,
                reason=new.mode_reason,
            )
        self._rows[new.name] = new
