"""The delivery loop on both store backends against real receivers."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import random
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from sqlalchemy import select

from poller import __version__
from poller.config import Secret, WebhookConfig
from poller.delivery.retry import MAX_DELAY, RetryPolicy
from poller.delivery.sender import Attempt, Sender, Target
from poller.delivery.worker import DeliveryWorker
from poller.events import Event
from poller.metrics import Metrics
from poller.receiver import Receiver
from poller.store.models import deliveries
from poller.store.repo import Claim, Store
from poller.timeutil import utcnow
from tests.conftest import make_secret
from tests.storeops import elapse, engine_of, mark_delivered, sibling

ROOM = "639924066893d18d47c86935"
RECORDING = "beam.recording.success"
PEER_JOIN = "peer.join.success"
USER_AGENT = f"poller/{__version__}"
WAIT = 5.0  # bound on every wait for something that should happen promptly


def make_event(n: int, *, type: str = RECORDING) -> Event:
    event_id = f"00000000-0000-4000-8000-{n:012d}"
    timestamp = "2025-03-01T12:00:00.462240675Z"
    obj = {
        "version": "2.0",
        "id": event_id,
        "timestamp": timestamp,
        "type": type,
        "data": {"room_id": ROOM, "duration": 33, "n": n, "name": "Été ☀"},
    }
    body = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
    return Event(event_id, type, timestamp, ROOM, body)


def hook(
    name: str,
    url: str,
    secret: str | None = None,
    *,
    max_concurrency: int = 4,
    event_types: set[str] | None = None,
    headers: tuple[tuple[str, str], ...] = (),
) -> WebhookConfig:
    return WebhookConfig(
        name=name,
        url=url,
        secret=Secret(secret or make_secret()),
        event_types=None if event_types is None else frozenset(event_types),
        rooms=None,
        headers=headers,
        max_concurrency=max_concurrency,
    )


async def seed(store: Store, hooks: Sequence[WebhookConfig], n: int, start: int = 0) -> list[Event]:
    page = [make_event(i) for i in range(start, start + n)]
    outcome = await store.record_page(ROOM, page, hooks, deliver=True, now=utcnow())
    assert outcome.new == n
    return page


async def rows(store: Store) -> list[dict[str, Any]]:
    async with engine_of(store).connect() as conn:
        result = await conn.execute(select(deliveries).order_by(deliveries.c.id))
        return [dict(r._mapping) for r in result]


async def until(predicate: Callable[[], bool], timeout: float = WAIT) -> None:
    """Poll a condition that no event signals (e.g. the worker's own state), bounded."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


@dataclass(frozen=True)
class Outcome:
    webhook: str
    event_id: str
    attempt: Attempt
    outcome: str


class Outcomes:
    """The worker's on_attempt hook: every finished attempt, after its outcome is stored."""

    def __init__(self) -> None:
        self.items: list[Outcome] = []
        self._changed = asyncio.Event()

    def __call__(self, target: Target, claim: Claim, attempt: Attempt, outcome: str) -> None:
        self.items.append(Outcome(target.name, claim.event_id, attempt, outcome))
        self._changed.set()

    def of(self, webhook: str, outcome: str | None = None) -> list[Outcome]:
        return [
            o
            for o in self.items
            if o.webhook == webhook and (outcome is None or o.outcome == outcome)
        ]

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = WAIT) -> None:
        try:
            async with asyncio.timeout(timeout):
                while not predicate():
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(f"not reached in {timeout}s; outcomes: {self.items}") from None


class HoldingServer:
    """An HTTP receiver that holds every request until opened; counts what it holds."""

    def __init__(self) -> None:
        self.arrived: list[str] = []  # webhook-id of every request, in arrival order
        self.active = 0
        self.max_active = 0
        self.released = asyncio.Event()
        self._changed = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/{name}", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.base_url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def stop(self) -> None:
        self.released.set()
        if self._runner is not None:
            await self._runner.cleanup()

    def url(self, name: str) -> str:
        return f"{self.base_url}/{name}"

    def open(self) -> None:
        """Answer every held and future request with 204."""
        self.released.set()

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = WAIT) -> None:
        try:
            async with asyncio.timeout(timeout):
                while not predicate():
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(
                f"not reached in {timeout}s: active={self.active} arrived={len(self.arrived)}"
            ) from None

    async def _handle(self, request: web.Request) -> web.Response:
        await request.read()
        self.arrived.append(request.headers.get("webhook-id", ""))
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        self._changed.set()
        try:
            await self.released.wait()
        finally:
            self.active -= 1
            self._changed.set()
        return web.Response(status=204)


class ObservedStore(Store):
    """The real store, announcing when the worker has computed its idle wait."""

    def __init__(self, store: Store) -> None:
        super().__init__(engine_of(store), instance_id=store.instance_id)
        self.idle = asyncio.Event()

    async def next_due(self, webhooks: Sequence[str], *, now: dt.datetime) -> dt.datetime | None:
        due = await super().next_due(webhooks, now=now)
        self.idle.set()  # the worker goes to sleep right after this returns
        return due


class GatedStore(Store):
    """The real store, whose next claim can be held at a gate by the test."""

    def __init__(self, store: Store) -> None:
        super().__init__(engine_of(store), instance_id=store.instance_id)
        self.armed = False
        self.entered = asyncio.Event()
        self.gate = asyncio.Event()

    async def claim(self, webhook: str, limit: int, *, ttl: float, now: dt.datetime) -> list[Claim]:
        if self.armed:
            self.armed = False
            self.entered.set()
            await self.gate.wait()
        return await super().claim(webhook, limit, ttl=ttl, now=now)


@pytest.fixture
async def holding() -> AsyncIterator[HoldingServer]:
    server = HoldingServer()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def peers() -> AsyncIterator[Receiver]:
    """A verifying receiver for webhooks named a and b."""
    rcv = Receiver({"a": make_secret(), "b": make_secret()})
    await rcv.start()
    yield rcv
    await rcv.stop()


MakeWorker = Callable[..., DeliveryWorker]


@pytest.fixture
def outcomes() -> Outcomes:
    return Outcomes()


@pytest.fixture
def make_worker(store: Store, session: aiohttp.ClientSession, outcomes: Outcomes) -> MakeWorker:
    def make(
        hooks: Sequence[WebhookConfig],
        *,
        schedule: tuple[float, ...] = (0.05, 0.05, 0.05),
        idle_wait: float = 30.0,
        timeout: float = 5.0,
        claim_ttl: float = 30.0,
        on_store: Store | None = None,
        on_attempt: Callable[[Target, Claim, Attempt, Any], None] | None = None,
    ) -> DeliveryWorker:
        return DeliveryWorker(
            on_store or store,
            Sender(session, timeout=timeout, user_agent=USER_AGENT),
            [Target.from_config(h) for h in hooks],
            RetryPolicy(schedule, rng=random.Random(0)),
            claim_ttl=claim_ttl,
            idle_wait=idle_wait,
            on_attempt=on_attempt or outcomes,
        )

    return make


@asynccontextmanager
async def running(worker: DeliveryWorker, grace: float = 0.5) -> AsyncIterator[asyncio.Task[None]]:
    """Run the worker as a task; always stop it."""
    task = asyncio.create_task(worker.run(), name="test-delivery-worker")
    try:
        yield task
    finally:
        await worker.stop(grace)
        await asyncio.wait_for(task, WAIT)


async def nudge(worker: DeliveryWorker, turns: int = 3) -> None:
    """Make the loop turn a few times (each turn claims whatever it may)."""
    for _ in range(turns):
        before = worker.last_loop_at
        worker.wake()
        await until(lambda: worker.last_loop_at != before)  # noqa: B023 - awaited at once


# --- delivering ----------------------------------------------------------------------


async def test_delivers_every_pending_row(
    store: Store, receiver: Receiver, make_worker: MakeWorker, outcomes: Outcomes
) -> None:
    hooks = [
        hook("all", receiver.url("all"), receiver.secrets["all"]),
        hook(
            "filtered",
            receiver.url("filtered"),
            receiver.secrets["filtered"],
            event_types={PEER_JOIN},
        ),
    ]
    recordings = [make_event(i) for i in range(4)]
    joins = [make_event(i, type=PEER_JOIN) for i in range(4, 6)]
    await store.record_page(ROOM, recordings + joins, hooks, deliver=True, now=utcnow())
    worker = make_worker(hooks)
    async with running(worker):
        await outcomes.wait_for(lambda: len(outcomes.items) == 8)
    assert {o.outcome for o in outcomes.items} == {"delivered"}
    everything = recordings + joins
    assert sorted((r.msg_id, r.body) for r in receiver.delivered("all")) == sorted(
        (e.id, e.body.encode()) for e in everything
    )
    assert sorted(r.msg_id for r in receiver.delivered("filtered")) == [e.id for e in joins]
    assert all(r.valid for r in receiver.received)
    assert len(receiver.received) == 8  # each exactly once
    for row in await rows(store):
        assert row["state"] == "delivered"
        assert row["attempts"] == 1
        assert row["last_status"] == 204
        assert row["claimed_by"] is None
    assert await store.outbox_counts() == {("all", "delivered"): 6, ("filtered", "delivered"): 2}


async def test_retries_with_the_same_webhook_id_until_delivered(
    store: Store, receiver: Receiver, make_worker: MakeWorker, outcomes: Outcomes
) -> None:
    hooks = [hook("all", receiver.url("all"), receiver.secrets["all"])]
    (event,) = await seed(store, hooks, 1)
    receiver.fail("all", times=2, status=500)
    # A long idle wait: retries must be woken by their due time, not by polling.
    worker = make_worker(hooks, schedule=(0.05, 0.05, 0.05), idle_wait=30.0)
    async with running(worker):
        await outcomes.wait_for(lambda: bool(outcomes.of("all", "delivered")))
    assert [o.outcome for o in outcomes.items] == ["retry", "retry", "delivered"]
    got = receiver.received
    assert [r.status for r in got] == [500, 500, 204]
    assert {r.msg_id for r in got} == {event.id}
    assert {r.headers["webhook-id"] for r in got} == {event.id}
    assert {r.body for r in got} == {event.body.encode()}
    assert all(r.valid for r in got)
    # Spaced by the schedule (0.05 s minus 10 % jitter at least).
    assert got[1].at - got[0].at >= 0.045
    assert got[2].at - got[1].at >= 0.045
    (row,) = await rows(store)
    assert row["state"] == "delivered"
    assert row["attempts"] == 3
    assert row["last_status"] == 204
    assert row["last_error"] is None


async def test_dead_after_the_schedule_is_exhausted(
    store: Store, receiver: Receiver, make_worker: MakeWorker, outcomes: Outcomes
) -> None:
    hooks = [hook("all", receiver.url("all"), receiver.secrets["all"])]
    (event,) = await seed(store, hooks, 1)
    receiver.fail("all", times=None, status=503)
    schedule = (0.02, 0.02, 0.02)
    worker = make_worker(hooks, schedule=schedule)
    async with running(worker):
        await outcomes.wait_for(lambda: bool(outcomes.of("all", "dead")))
        await nudge(worker)  # a dead delivery is never attempted again
    assert [o.outcome for o in outcomes.items] == ["retry"] * len(schedule) + ["dead"]
    assert len(receiver.received) == len(schedule) + 1
    assert {r.msg_id for r in receiver.received} == {event.id}
    (row,) = await rows(store)
    assert row["state"] == "dead"
    assert row["attempts"] == len(schedule) + 1
    assert row["last_status"] == 503
    assert row["last_error"] == "HTTP 503"
    assert row["claimed_by"] is None


async def test_timeouts_are_recorded_without_a_status(
    store: Store, holding: HoldingServer, make_worker: MakeWorker, outcomes: Outcomes
) -> None:
    hooks = [hook("slow", holding.url("slow"))]
    await seed(store, hooks, 1)
    worker = make_worker(hooks, schedule=(), timeout=0.2)
    async with running(worker):
        await outcomes.wait_for(lambda: bool(outcomes.of("slow", "dead")))
    (row,) = await rows(store)
    assert row["state"] == "dead"
    assert row["attempts"] == 1
    assert row["last_status"] is None
    assert row["last_error"] == "timed out after 0.2s"


async def test_retry_after_lengthens_the_next_delay(
    store: Store, receiver: Receiver, make_worker: MakeWorker, outcomes: Outcomes
) -> None:
    hooks = [hook("all", receiver.url("all"), receiver.secrets["all"])]
    await seed(store, hooks, 1)
    receiver.fail("all", times=1, status=429, retry_after="120")
    worker = make_worker(hooks, schedule=(0.01,))
    async with running(worker):
        await outcomes.wait_for(lambda: bool(outcomes.of("all", "retry")))
    (row,) = await rows(store)
    assert row["state"] == "pending"
    assert row["last_status"] == 429
    wait = (row["next_attempt_at"] - row["last_attempt_at"]).total_seconds()
    assert 119.9 <= wait <= 120.1


# --- concurrency and isolation --------------------------------------------------------


async def test_per_webhook_concurrency_limit(
    store: Store, holding: HoldingServer, make_worker: MakeWorker, outcomes: Outcomes
) -> None:
    hooks = [hook("slow", holding.url("slow"), max_concurrency=2)]
    await seed(store, hooks, 6)
    worker = make_worker(hooks)
    async with running(worker):
        await holding.wait_for(lambda: holding.active == 2)
        await nudge(worker)
        assert worker.in_flight == 2
        assert holding.active == 2
        assert len(holding.arrived) == 2
        holding.open()
        await outcomes.wait_for(lambda: len(outcomes.of("slow", "delivered")) == 6)
    assert holding.max_active == 2
    assert len(holding.arrived) == 6
    assert all(r["state"] == "delivered" for r in await rows(store))


async def test_backlogged_while_more_is_due_than_there_are_slots(
    store: Store, holding: HoldingServer, make_worker: MakeWorker, outcomes: Outcomes
) -> None:
    hooks = [hook("slow", holding.url("slow"), max_concurrency=2)]
    await seed(store, hooks, 2)  # exactly the slots: nothing left waiting
    worker = make_worker(hooks)
    async with running(worker):
        await holding.wait_for(lambda: holding.active == 2)
        assert worker.backlogged()  # the claim came back full: more may be due
        holding.open()
        await outcomes.wait_for(lambda: len(outcomes.of("slow", "delivered")) == 2)
        await nudge(worker)  # a claim that finds less than it asked for
        await until(lambda: not worker.backlogged())
    assert not worker.backlogged()


async def test_not_backlogged_while_the_receivers_rate_limit_holds_deliveries_back(
    store: Store, receiver: Receiver, make_worker: MakeWorker, outcomes: Outcomes
) -> None:
    """Polls giving way would not send these sooner: the limit, not the loop, holds them."""
    paced = dataclasses.replace(
        hook("all", receiver.url("all"), receiver.secrets["all"], max_concurrency=4),
        rate_limit=2.0,
    )
    await seed(store, [paced], 10)
    worker = make_worker([paced])
    async with running(worker):
        await outcomes.wait_for(lambda: len(outcomes.of("all", "delivered")) >= 2)
        assert not worker.backlogged()
    assert len(outcomes.of("all", "delivered")) < 10  # more was still due all along


async def test_a_hanging_webhook_does_not_hold_up_another(
    store: Store,
    holding: HoldingServer,
    peers: Receiver,
    make_worker: MakeWorker,
    outcomes: Outcomes,
) -> None:
    hooks = [
        hook("a", holding.url("a"), max_concurrency=2),
        hook("b", peers.url("b"), peers.secrets["b"], max_concurrency=2),
    ]
    await seed(store, hooks, 10)
    worker = make_worker(hooks)
    async with running(worker, grace=0.1):
        await holding.wait_for(lambda: holding.active == 2)
        await outcomes.wait_for(lambda: len(outcomes.of("b", "delivered")) == 10)
        # B is done while A's first two requests are still held, and A got no further.
        assert holding.active == 2
        assert len(holding.arrived) == 2
        assert outcomes.of("a") == []
        assert not holding.released.is_set()
    assert len(peers.delivered("b")) == 10
    counts = await store.outbox_counts()
    assert counts == {("a", "pending"): 10, ("b", "delivered"): 10}


# --- stopping -------------------------------------------------------------------------


async def test_stop_returns_within_grace_and_releases_claims(
    store: Store, holding: HoldingServer, make_worker: MakeWorker, outcomes: Outcomes
) -> None:
    hooks = [hook("slow", holding.url("slow"), max_concurrency=4)]
    await seed(store, hooks, 4)
    worker = make_worker(hooks)
    task = asyncio.create_task(worker.run())
    try:
        await holding.wait_for(lambda: holding.active == 4)
        started = time.monotonic()
        await worker.stop(0.3)
        elapsed = time.monotonic() - started
        await asyncio.wait_for(task, WAIT)
    finally:
        if not task.done():
            task.cancel()
    assert 0.29 <= elapsed < 0.3 + 1.0
    assert worker.in_flight == 0
    assert outcomes.items == []
    for row in await rows(store):
        assert row["state"] == "pending"
        assert row["attempts"] == 0  # an interrupted attempt is not counted
        assert row["claimed_by"] is None
        assert row["claimed_until"] is None
    # Another instance can take them over at once.
    assert len(await sibling(store, "next").claim("slow", 10, ttl=5, now=utcnow())) == 4


async def test_stop_before_run_returns_and_run_then_claims_nothing(
    store: Store, receiver: Receiver, make_worker: MakeWorker, outcomes: Outcomes
) -> None:
    hooks = [hook("all", receiver.url("all"), receiver.secrets["all"])]
    await seed(store, hooks, 2)
    worker = make_worker(hooks)
    await asyncio.wait_for(worker.stop(5.0), WAIT)
    await asyncio.wait_for(worker.run(), WAIT)
    assert outcomes.items == []
    assert all(r["state"] == "pending" and r["claimed_by"] is None for r in await rows(store))


async def test_stop_lets_in_flight_attempts_finish(
    store: Store, holding: HoldingServer, make_worker: MakeWorker, outcomes: Outcomes
) -> None:
    hooks = [hook("slow", holding.url("slow"), max_concurrency=2)]
    await seed(store, hooks, 2)
    worker = make_worker(hooks)
    task = asyncio.create_task(worker.run())
    try:
        await holding.wait_for(lambda: holding.active == 2)
        started = time.monotonic()
        stopping = asyncio.create_task(worker.stop(5.0))
        await asyncio.sleep(0)  # let stop() begin waiting on the in-flight attempts
        assert not stopping.done()
        holding.open()
        await asyncio.wait_for(stopping, WAIT)
        assert time.monotonic() - started < 3.0
        await asyncio.wait_for(task, WAIT)
    finally:
        if not task.done():
            task.cancel()
    assert [o.outcome for o in outcomes.items] == ["delivered", "delivered"]
    assert all(r["state"] == "delivered" for r in await rows(store))


async def test_stop_while_claiming_leaves_nothing_claimed_or_in_flight(
    store: Store, holding: HoldingServer, make_worker: MakeWorker
) -> None:
    """stop() called while the loop is inside store.claim(): after stop() and run() return,
    no delivery may still be in flight or claimed by this instance."""
    hooks = [hook("slow", holding.url("slow"), max_concurrency=2)]
    await seed(store, hooks, 2)
    gated = GatedStore(store)
    gated.armed = True
    worker = make_worker(hooks, on_store=gated)
    task = asyncio.create_task(worker.run())
    try:
        await asyncio.wait_for(gated.entered.wait(), WAIT)
        stopping = asyncio.create_task(worker.stop(0.5))
        # Either stop() waits for the loop (then it cannot finish while the claim is
        # held) or it returns at once; both are allowed, so bound the wait and go on.
        await asyncio.wait({stopping}, timeout=1.0)
        gated.gate.set()
        await asyncio.wait_for(stopping, WAIT)
        await asyncio.wait_for(task, WAIT)
        in_flight = worker.in_flight
        claimed = [r["id"] for r in await rows(store) if r["claimed_by"] is not None]
        assert in_flight == 0, f"{in_flight} deliveries still running after stop() and run()"
        assert claimed == [], f"deliveries {claimed} still claimed after stop()"
    finally:
        holding.open()
        await until(lambda: worker.in_flight == 0)
        if not task.done():
            task.cancel()


# --- waking ---------------------------------------------------------------------------


async def test_wake_picks_up_new_rows_at_once(
    store: Store, receiver: Receiver, make_worker: MakeWorker, outcomes: Outcomes
) -> None:
    hooks = [hook("all", receiver.url("all"), receiver.secrets["all"])]
    observed = ObservedStore(store)
    worker = make_worker(hooks, idle_wait=30.0, on_store=observed)
    async with running(worker):
        # The worker found nothing and went to sleep for idle_wait (30 s).
        await asyncio.wait_for(observed.idle.wait(), WAIT)
        await seed(store, hooks, 3)
        worker.wake()
        await outcomes.wait_for(lambda: len(outcomes.of("all", "delivered")) == 3, timeout=WAIT)
    assert len(receiver.delivered("all")) == 3


async def test_idle_worker_finds_rows_it_was_not_woken_for(
    store: Store, receiver: Receiver, make_worker: MakeWorker, outcomes: Outcomes
) -> None:
    # Rows written by another instance: nobody calls wake(); idle_wait bounds the delay.
    hooks = [hook("all", receiver.url("all"), receiver.secrets["all"])]
    observed = ObservedStore(store)
    worker = make_worker(hooks, idle_wait=0.1, on_store=observed)
    async with running(worker):
        await asyncio.wait_for(observed.idle.wait(), WAIT)
        await seed(store, hooks, 2)
        await outcomes.wait_for(lambda: len(outcomes.of("all", "delivered")) == 2)


async def test_lost_claim_is_reported_and_not_overwritten(
    store: Store, holding: HoldingServer, make_worker: MakeWorker, outcomes: Outcomes
) -> None:
    hooks = [hook("slow", holding.url("slow"))]
    await seed(store, hooks, 1)
    worker = make_worker(hooks, claim_ttl=1.0)
    async with running(worker):
        await holding.wait_for(lambda: holding.active == 1)
        # The attempt outlives its claim; another instance takes the delivery over.
        other = sibling(store, "other")
        await elapse(engine_of(store), 2)  # by the store's clock, the claim is over
        (claim,) = await other.claim("slow", 1, ttl=30, now=utcnow())
        assert await mark_delivered(other, claim, status=200, now=utcnow())
        holding.open()
        await outcomes.wait_for(lambda: bool(outcomes.items))
    assert [o.outcome for o in outcomes.items] == ["claim_lost"]
    (row,) = await rows(store)
    assert (row["state"], row["attempts"], row["last_status"]) == ("delivered", 1, 200)


# --- every attempt ends: values the loader refuses, injected past it -----------------------


@dataclass
class Counted:
    """Workers whose attempts the test observes and metrics count, as in the daemon."""

    make_worker: MakeWorker
    outcomes: Outcomes
    metrics: Metrics

    def worker(
        self, hooks: Sequence[WebhookConfig], *, schedule: tuple[float, ...]
    ) -> DeliveryWorker:
        def on_attempt(target: Target, claim: Claim, attempt: Attempt, outcome: Any) -> None:
            self.metrics.observe_attempt(target, claim, attempt, outcome)
            self.outcomes(target, claim, attempt, outcome)

        return self.make_worker(hooks, schedule=schedule, on_attempt=on_attempt)

    def count(self, webhook: str, outcome: str) -> float:
        """poller_delivery_attempts_total for this webhook and outcome."""
        value = self.metrics.registry.get_sample_value(
            "poller_delivery_attempts_total", {"webhook": webhook, "outcome": outcome}
        )
        return value or 0.0


@pytest.fixture
def counted(make_worker: MakeWorker, outcomes: Outcomes) -> Counted:
    return Counted(make_worker, outcomes, Metrics(instance="test", version=__version__))


@pytest.mark.parametrize(
    ("case", "expected_error"),
    [
        ("header-control-character", "ValueError: Forbidden control character"),
        ("host-label-over-63", "label empty or too long"),
    ],
)
async def test_an_attempt_that_cannot_be_sent_fails_and_goes_dead(
    case: str, expected_error: str, store: Store, receiver: Receiver, counted: Counted
) -> None:
    headers: tuple[tuple[str, str], ...] = ()
    url = receiver.url("all") + "?token=tok-S3CR3T"
    if case == "header-control-character":
        headers = (("X-Api-Key", "key-S3CR3T\x01"),)
    else:
        port = url.rsplit(":", 1)[1]
        url = f"http://{'a' * 64}.localhost:{port}"
    hooks = [hook("all", url, receiver.secrets["all"], headers=headers)]
    await seed(store, hooks, 1)
    schedule = (0.02, 0.02)
    worker, outcomes = counted.worker(hooks, schedule=schedule), counted.outcomes
    async with running(worker):
        await outcomes.wait_for(lambda: bool(outcomes.of("all", "dead")))
    assert [o.outcome for o in outcomes.items] == ["retry"] * len(schedule) + ["dead"]
    assert receiver.received == []  # nothing was sent: the request could not be built
    (row,) = await rows(store)
    assert (row["state"], row["attempts"], row["claimed_by"]) == ("dead", 3, None)
    assert row["last_status"] is None
    assert expected_error in row["last_error"]
    assert "\n" not in row["last_error"]
    assert "S3CR3T" not in row["last_error"]
    assert counted.count("all", "retry") == len(schedule)
    assert counted.count("all", "dead") == 1


async def test_a_retry_delay_past_the_calendar_is_capped_and_the_delivery_still_dies(
    store: Store, receiver: Receiver, counted: Counted
) -> None:
    hooks = [hook("all", receiver.url("all"), receiver.secrets["all"])]
    await seed(store, hooks, 1)
    receiver.fail("all", times=None, status=503)
    # "100000000h": now + that overflowed the date and left the row claimed forever.
    worker, outcomes = counted.worker(hooks, schedule=(100_000_000 * 3600.0,)), counted.outcomes
    async with running(worker):
        await outcomes.wait_for(lambda: bool(outcomes.of("all", "retry")))
        (row,) = await rows(store)
        assert (row["state"], row["attempts"], row["claimed_by"]) == ("pending", 1, None)
        wait = (row["next_attempt_at"] - row["last_attempt_at"]).total_seconds()
        assert MAX_DELAY * 0.9 <= wait <= MAX_DELAY * 1.1
        await elapse(engine_of(store), MAX_DELAY * 1.2)  # the capped retry falls due
        worker.wake()
        await outcomes.wait_for(lambda: bool(outcomes.of("all", "dead")))
    assert [o.outcome for o in outcomes.items] == ["retry", "dead"]
    assert len(receiver.received) == 2
    (row,) = await rows(store)
    assert (row["state"], row["attempts"], row["last_error"]) == ("dead", 2, "HTTP 503")
    assert counted.count("all", "retry") == 1
    assert counted.count("all", "dead") == 1
