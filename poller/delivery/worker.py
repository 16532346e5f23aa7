"""The delivery loop: claim due outbox rows, send them, record the outcome."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import structlog
from structlog.typing import FilteringBoundLogger

from poller.aio import finish_or_cancel
from poller.batch import GroupCommit
from poller.delivery.guard import GONE, GuardStore, ReceiverGuard
from poller.delivery.retry import RetryPolicy
from poller.delivery.sender import Attempt, Sender, Target
from poller.errors import StoreError
from poller.states import AttemptOutcome
from poller.store.repo import AttemptRecord, Claim
from poller.timeutil import utcnow

# How often an idle worker looks for work it was not woken for: retries
# falling due, claims of a dead instance expiring, rows another instance wrote.
IDLE_WAIT = 1.0
# The config's defaults ([delivery] breaker_after, probe_interval), for a worker built
# without a guard of its own (tests).
DEFAULT_BREAKER_AFTER = 600.0
DEFAULT_PROBE_INTERVAL = 30.0


class OutboxStore(GuardStore, Protocol):
    """What the delivery loop needs of the store (``poller.store.repo.Store`` is the real one)."""

    async def claim(
        self, webhook: str, limit: int, *, ttl: float, now: dt.datetime
    ) -> list[Claim]: ...

    async def record_attempts(self, records: Sequence[AttemptRecord]) -> list[bool]: ...

    async def release_claims(self, claims: Sequence[Claim] | None = None) -> int: ...

    async def next_due(
        self, webhooks: Sequence[str], *, now: dt.datetime
    ) -> dt.datetime | None: ...


class DeliveryWorker:
    """Delivers owed events, each webhook within its own concurrency limit."""

    def __init__(
        self,
        store: OutboxStore,
        sender: Sender,
        targets: Sequence[Target],
        policy: RetryPolicy,
        *,
        claim_ttl: float,
        idle_wait: float = IDLE_WAIT,
        on_attempt: Callable[[Target, Claim, Attempt, AttemptOutcome], None] | None = None,
        guard: ReceiverGuard | None = None,
        logger: FilteringBoundLogger | None = None,
    ) -> None:
        self._store = store
        self._sender = sender
        self._targets = tuple(targets)
        self._policy = policy
        self._claim_ttl = claim_ttl
        self._idle_wait = idle_wait
        self._on_attempt = on_attempt
        self._log = logger or structlog.get_logger("poller.delivery")
        # Pause, 410 disable, circuit breaker, rate limit: see poller.delivery.guard.
        self._guard = guard or ReceiverGuard(
            store,
            self._targets,
            breaker_after=DEFAULT_BREAKER_AFTER,
            probe_interval=DEFAULT_PROBE_INTERVAL,
            logger=self._log,
        )
        self._inflight: dict[str, set[asyncio.Task[None]]] = {t.name: set() for t in self._targets}
        self._wake = asyncio.Event()
        # Why: one transaction records every attempt that finished meanwhile, rather
        # than one per delivery; see poller.batch.
        self._outcomes = GroupCommit(store.record_attempts)
        self._stopping = False
        self._loop_done = asyncio.Event()
        self._run_task: asyncio.Task[Any] | None = None
        self._cut_short = False
        self._paced: list[str] = []  # held back in the last turn (see _dispatch)
        # Webhooks whose latest claim came back full: more was due than there were free
        # slots. Kept until a claim comes back short, not for a while: a loop too busy to
        # claim often is when the signal matters most (poller.share).
        self._owed: set[str] = set()
        self.finished = 0  # attempts made so far, any outcome (a counter; poller.share)
        self.last_loop_at = time.monotonic()

    def wake(self) -> None:
        """Look for due deliveries now (new outbox rows were written)."""
        self._wake.set()

    def loop_age(self) -> float | None:
        """Seconds since the delivery loop last turned; None when it is not running."""
        task = self._run_task
        if task is None or task.done():
            return None
        return time.monotonic() - self.last_loop_at

    def backlogged(self) -> bool:
        """Whether more deliveries were due than free slots, in some webhook's latest claim."""
        return bool(self._owed)

    @property
    def in_flight(self) -> int:
        return sum(len(tasks) for tasks in self._inflight.values())

    async def run(self) -> None:
        """Claim and dispatch until stop() is called."""
        task = asyncio.current_task()
        assert task is not None
        self._run_task = task
        try:
            await self._loop()
        except asyncio.CancelledError:
            if not self._cut_short:
                raise
            # stop() ended a turn that outlived the grace: a normal end of run().
            task.uncancel()
        finally:
            self._loop_done.set()

    async def _loop(self) -> None:
        while not self._stopping:
            self.last_loop_at = time.monotonic()
            self._wake.clear()
            try:
                claimed, idle = await self._dispatch()
                if claimed:
                    continue  # more may be due right away
                timeout = await self._idle_timeout(idle)
            except StoreError as exc:
                # The store may be unavailable for a while; the loop must outlive it.
                # One line, no traceback: the store's fault record reports the spell.
                self._log.warning("delivery_loop_error", error=str(exc))
                timeout = self._idle_wait
            except Exception:
                self._log.exception("delivery_loop_error")
                timeout = self._idle_wait
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    async def _dispatch(self) -> tuple[int, list[str]]:
        """Claim for every webhook with free slots; return (claimed, webhooks with slots)."""
        claimed = 0
        idle: list[str] = []
        self._paced = []
        await self._guard.refresh()
        for target in self._targets:
            in_flight = len(self._inflight[target.name])
            free = target.max_concurrency - in_flight
            # Why: a claim is a transaction; refilling a wide webhook one slot per
            # finished delivery cost more than the deliveries (BENCHMARKS.md). So it
            # waits for a quarter of its slots free (any one, as before, up to 7 slots).
            if free < max(1, target.max_concurrency // 4):
                continue  # a finishing delivery wakes us
            admission = await self._guard.admit(target, free, in_flight)
            if admission.count == 0:
                self._owed.discard(target.name)
                # Held back (paused, disabled, breaker, rate limit): not "idle", whose
                # due deliveries would wake the loop at once, again and again.
                self._paced.append(target.name)
                continue
            claims = await self._store.claim(
                target.name, admission.count, ttl=self._claim_ttl, now=utcnow()
            )
            if self._stopping:
                # stop() began during the claim: these will not be attempted now.
                if claims:
                    await self._store.release_claims(claims)
                return claimed, idle
            for claim in claims:
                self._start(target, claim, probe=admission.probe)
            claimed += len(claims)
            if len(claims) < admission.count:
                idle.append(target.name)
            # Owed: more was due than free slots. Not when the receiver's own limits
            # (rate limit, breaker probe) held the claim back: polls giving way would not
            # send those sooner (poller.share).
            if len(claims) == admission.count == free:
                self._owed.add(target.name)
            else:
                self._owed.discard(target.name)
        return claimed, idle

    async def _idle_timeout(self, idle: list[str]) -> float:
        timeout = self._idle_wait
        if (paced := self._guard.ready_in(self._paced)) is not None:
            timeout = min(timeout, paced)
        due = await self._store.next_due(idle, now=utcnow())
        if due is None:
            return timeout
        return min(timeout, max(0.0, (due - utcnow()).total_seconds()))

    def _start(self, target: Target, claim: Claim, *, probe: bool = False) -> None:
        # The turn is taken now, in claim order: the rate limit spaces starts, not ends.
        delay = self._guard.wait_for_turn(target)
        task = asyncio.create_task(
            self._deliver(target, claim, delay=delay, probe=probe),
            name=f"deliver-{claim.delivery_id}",
        )
        tasks = self._inflight[target.name]
        tasks.add(task)

        def _done(t: asyncio.Task[None]) -> None:
            tasks.discard(t)
            self._wake.set()

        task.add_done_callback(_done)

    async def _deliver(self, target: Target, claim: Claim, *, delay: float, probe: bool) -> None:
        attempt_no = claim.attempts + 1
        log = self._log.bind(webhook=target.name, event_id=claim.event_id, attempt=attempt_no)
        try:
            if delay > 0:
                await asyncio.sleep(delay)
            attempt = await self._sender.send(target, claim.event_id, claim.body)
            self.finished += 1
            now = utcnow()
            counted = await self._observe(target, attempt, probe=probe, now=now)
            retry_at: dt.datetime | None = None
            if attempt.ok:
                outcome = AttemptOutcome.DELIVERED
            elif not counted:
                outcome = AttemptOutcome.HELD
            else:
                retry_at = self._policy.retry_at(now, attempt_no, attempt.retry_after)
                outcome = AttemptOutcome.DEAD if retry_at is None else AttemptOutcome.RETRY
            kept = await self._outcomes.submit(
                AttemptRecord(
                    claim,
                    now,
                    attempt.status,
                    attempt.error,
                    retry_at,
                    duration=attempt.duration,
                    response=attempt.response,
                    counted=counted,
                )
            )
        except Exception:
            # The attempt never raises, so the store failed to record it. Left claimed:
            # the claim expires and another attempt follows (handed back at once, an
            # outcome the store keeps refusing would be re-sent in a tight loop).
            log.exception("delivery_error")
            return
        if not kept:
            outcome = AttemptOutcome.CLAIM_LOST
        if self._on_attempt is not None:
            self._on_attempt(target, claim, attempt, outcome)
        event = log.info if attempt.ok else log.warning
        event(
            "delivery_attempt",
            outcome=outcome,
            status=attempt.status,
            error=attempt.error,
            duration_ms=round(attempt.duration * 1000, 1),
            **(
                {"retry_at": retry_at.isoformat()}
                if retry_at and outcome is AttemptOutcome.RETRY
                else {}
            ),
        )

    async def _observe(
        self, target: Target, attempt: Attempt, *, probe: bool, now: dt.datetime
    ) -> bool:
        """The guard's verdict on an attempt: whether it uses up a retry. A store failure
        while updating the webhook's state must not lose the attempt's own record."""
        try:
            return await self._guard.observe(target, attempt, probe=probe, now=now)
        except StoreError as exc:
            self._log.warning("webhook_state_error", webhook=target.name, error=str(exc))
            return not probe and attempt.status != GONE

    async def stop(self, grace: float) -> None:
        """Stop claiming, let in-flight attempts finish within ``grace``, hand back the rest."""
        self._stopping = True
        self._wake.set()
        deadline = asyncio.get_running_loop().time() + grace
        # A claim in progress may still start deliveries: let the loop finish its
        # turn, or cut it short (its transaction then rolls back). A run() not
        # started yet will see _stopping and claim nothing.
        if self._run_task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._loop_done.wait()), grace)
            except TimeoutError:
                self._cut_short = True
                self._run_task.cancel()
                await self._loop_done.wait()
        pending = [t for tasks in self._inflight.values() for t in tasks]
        remaining = deadline - asyncio.get_running_loop().time()
        interrupted = await finish_or_cancel(pending, remaining)
        if interrupted:
            self._log.warning("deliveries_interrupted", count=interrupted)
        await self._outcomes.drain()  # outcomes of interrupted attempts, if already sent
        await self._store.release_claims()
