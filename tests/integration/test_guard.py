"""Receiver protection on both store backends, observed at a real receiver: pause, 410
disable, the circuit breaker and the rate limit (arrival times, not internals)."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import random
import time
from collections.abc import Sequence

import aiohttp

from poller.config import WebhookConfig
from poller.delivery.guard import ReceiverGuard
from poller.delivery.retry import RetryPolicy
from poller.delivery.sender import Sender, Target
from poller.delivery.worker import DeliveryWorker
from poller.metrics import Metrics
from poller.receiver import Receiver
from poller.states import WebhookMode, WebhookState
from poller.store.repo import Store
from poller.timeutil import utcnow
from tests.integration.test_worker import (
    USER_AGENT,
    WAIT,
    Outcomes,
    hook,
    rows,
    running,
    seed,
)
from tests.storeops import sibling


def make(
    store: Store,
    session: aiohttp.ClientSession,
    hooks: Sequence[WebhookConfig],
    outcomes: Outcomes,
    *,
    breaker_after: float = 600.0,
    probe_interval: float = 30.0,
    schedule: tuple[float, ...] = (0.05,) * 3,
    metrics: Metrics | None = None,
) -> DeliveryWorker:
    targets = [Target.from_config(h) for h in hooks]
    return DeliveryWorker(
        store,
        Sender(session, timeout=5.0, user_agent=USER_AGENT),
        targets,
        RetryPolicy(schedule, rng=random.Random(0)),
        claim_ttl=30.0,
        idle_wait=0.05,
        on_attempt=outcomes,
        guard=ReceiverGuard(
            store,
            targets,
            breaker_after=breaker_after,
            probe_interval=probe_interval,
            observer=metrics,
        ),
    )


# --- pause and resume ------------------------------------------------------------------


async def test_a_paused_webhook_gets_nothing_and_keeps_its_deliveries(
    store: Store, receiver: Receiver, session: aiohttp.ClientSession
) -> None:
    hooks = [hook("all", receiver.url("all"), receiver.secrets["all"])]
    await store.set_webhook_mode(
        "all", WebhookMode.PAUSED, reason="by hand", now=utcnow(), only_from=None
    )
    await seed(store, hooks, 5)
    outcomes = Outcomes()
    worker = make(store, session, hooks, outcomes)
    async with running(worker):
        # Ten turns of the loop at least: none of them may send.
        for _ in range(10):
            await asyncio.sleep(0.06)
        assert receiver.received == []
        assert {r["state"] for r in await rows(store)} == {"pending"}
        assert {r["attempts"] for r in await rows(store)} == {0}
        # Resumed from elsewhere (the CLI): the worker follows within its refresh.
        assert await store.set_webhook_mode(
            "all", WebhookMode.ACTIVE, reason=None, now=utcnow(), only_from=[WebhookMode.PAUSED]
        )
        assert await receiver.wait_for(lambda: len(receiver.delivered("all")) == 5, WAIT)
    assert {r["state"] for r in await rows(store)} == {"delivered"}


# --- 410 Gone --------------------------------------------------------------------------


async def test_410_disables_the_webhook_until_enabled_and_loses_nothing(
    store: Store, receiver: Receiver, session: aiohttp.ClientSession
) -> None:
    hooks = [hook("all", receiver.url("all"), receiver.secrets["all"], max_concurrency=1)]
    await seed(store, hooks, 4)
    receiver.fail("all", times=1, status=410)
    outcomes = Outcomes()
    worker = make(store, session, hooks, outcomes)
    async with running(worker):
        assert await receiver.wait_for(lambda: len(receiver.received) == 1, WAIT)
        await outcomes.wait_for(lambda: len(outcomes.items) == 1)
        assert outcomes.items[0].outcome == "held"
        states = await store.webhook_states()
        assert states["all"].state is WebhookState.DISABLED
        assert "410 Gone" in (states["all"].mode_reason or "")
        for _ in range(10):
            await asyncio.sleep(0.06)
        assert len(receiver.received) == 1  # nothing more was sent
        pending = await rows(store)
        assert {r["state"] for r in pending} == {"pending"}
        assert {r["attempts"] for r in pending} == {0}  # the 410 used up no retry
        assert await store.set_webhook_mode(
            "all", WebhookMode.ACTIVE, reason=None, now=utcnow(), only_from=[WebhookMode.DISABLED]
        )
        assert await receiver.wait_for(lambda: len(receiver.delivered("all")) == 4, WAIT)
    attempt_log = await store.attempts_of(pending[0]["id"])
    assert (attempt_log[0].status, attempt_log[0].counted) == (410, False)


# --- the circuit breaker ---------------------------------------------------------------


async def test_the_breaker_opens_probes_at_its_interval_and_closes_on_a_2xx(
    store: Store, receiver: Receiver, session: aiohttp.ClientSession
) -> None:
    hooks = [hook("all", receiver.url("all"), receiver.secrets["all"], max_concurrency=2)]
    await seed(store, hooks, 6)
    receiver.fail("all", times=None, status=503)
    outcomes = Outcomes()
    metrics = Metrics(instance="i", version="1")
    probe_interval = 0.4
    # A long schedule: without the breaker every delivery would die within it.
    worker = make(
        store,
        session,
        hooks,
        outcomes,
        breaker_after=0.3,
        probe_interval=probe_interval,
        schedule=(0.05,) * 40,
        metrics=metrics,
    )
    async with running(worker):
        await eventually(store, "all", WebhookState.BREAKER_OPEN)
        opened = time.time()
        # Attempts begun before it opened may still end; every later request is a probe.
        await asyncio.sleep(0.1)
        before = sum(r["attempts"] for r in await rows(store))
        await asyncio.sleep(5 * probe_interval)
        probes = [r.arrived for r in receiver.received if r.arrived > opened + 0.1]
        assert 3 <= len(probes) <= 6, probes
        gaps = [b - a for a, b in itertools.pairwise(probes)]
        assert min(gaps) >= probe_interval * 0.9, gaps
        after = await rows(store)
        assert sum(r["attempts"] for r in after) == before  # probes use up no retry
        assert {r["state"] for r in after} == {"pending"}  # nothing went dead meanwhile
        states = await store.webhook_states()
        assert states["all"].failing_since is not None
        assert states["all"].last_error == "HTTP 503"
        receiver.heal("all")
        healed = time.time()
        assert await receiver.wait_for(lambda: len(receiver.delivered("all")) == 6, WAIT)
        first_ok = min(r.arrived for r in receiver.delivered("all"))
        assert first_ok - healed <= probe_interval + 1.5  # the next probe, then everything
        await eventually(store, "all", WebhookState.ACTIVE)
    states = await store.webhook_states()
    assert states["all"].failing_since is None
    assert metrics.probes.labels(webhook="all", outcome="failed")._value.get() >= 3
    assert metrics.probes.labels(webhook="all", outcome="ok")._value.get() == 1


async def test_one_probe_per_interval_across_instances(store: Store) -> None:
    """Two instances on one store: each due probe goes to exactly one of them."""
    other = sibling(store, "other-instance")
    await store.ensure_webhooks(["all"])
    now = utcnow()
    assert await store.webhook_failing("all", error="HTTP 500", now=now)
    assert await store.open_breaker("all", error="HTTP 500", probe_after=0.0, now=now)
    assert not await other.open_breaker("all", error="HTTP 500", probe_after=0.0, now=now)
    taken = [await s.take_probe("all", interval=60.0, now=utcnow()) for s in (store, other, store)]
    assert taken == [True, False, False]
    assert await other.webhook_recovered("all")
    assert not await store.take_probe("all", interval=60.0, now=utcnow())  # closed
    assert (await store.webhook_states())["all"].state is WebhookState.ACTIVE


async def test_set_mode_only_from_the_modes_it_applies_to(store: Store) -> None:
    now = utcnow()
    assert await store.set_webhook_mode(
        "new", WebhookMode.PAUSED, reason="r", now=now, only_from=[WebhookMode.ACTIVE]
    )  # a webhook without a row yet gets one
    assert not await store.set_webhook_mode(
        "new", WebhookMode.ACTIVE, reason=None, now=now, only_from=[WebhookMode.DISABLED]
    )
    row = (await store.webhook_states())["new"]
    assert (row.mode, row.mode_reason) == (WebhookMode.PAUSED, "r")
    # Enabling after a 410 starts the breaker's clock afresh.
    await store.webhook_failing("new", error="HTTP 500", now=now)
    await store.set_webhook_mode("new", WebhookMode.DISABLED, reason="gone", now=now)
    assert await store.set_webhook_mode(
        "new", WebhookMode.ACTIVE, reason=None, now=now, only_from=[WebhookMode.DISABLED]
    )
    row = (await store.webhook_states())["new"]
    assert (row.state, row.failing_since) == (WebhookState.ACTIVE, None)


# --- the rate limit --------------------------------------------------------------------


async def test_the_rate_limit_is_never_exceeded(
    store: Store, receiver: Receiver, session: aiohttp.ClientSession
) -> None:
    rate = 20.0
    limited = dataclasses.replace(
        hook("all", receiver.url("all"), receiver.secrets["all"], max_concurrency=8),
        rate_limit=rate,
    )
    await seed(store, [limited], 30)
    metrics = Metrics(instance="i", version="1")
    worker = make(store, session, [limited], Outcomes(), metrics=metrics)
    started = time.time()
    async with running(worker):
        assert await receiver.wait_for(lambda: len(receiver.delivered("all")) == 30, WAIT)
    arrivals = sorted(r.arrived for r in receiver.received)
    # In any one second, at most `rate` requests (a little slack for the receiver's clock).
    for i, first in enumerate(arrivals):
        in_window = [a for a in arrivals[i:] if a < first + 1.0]
        assert len(in_window) <= rate + 1, (i, len(in_window))
    # And not slower than asked: 30 at 20/s take about 1.5 s, not seconds more.
    assert arrivals[-1] - started < 30 / rate + 1.5
    assert metrics.paced.labels(webhook="all")._value.get() > 0


async def eventually(store: Store, name: str, state: WebhookState) -> None:
    """Wait until webhook ``name``'s stored state is ``state``, bounded."""
    deadline = time.monotonic() + WAIT
    while (row := (await store.webhook_states()).get(name)) is None or row.state is not state:
        assert time.monotonic() < deadline, "state not reached in time"
        await asyncio.sleep(0.02)
