"""Composition: every running part of one instance, built from a config, with no I/O.

Starting and stopping them is ``poller.app``'s job; building them here keeps
that module about order and time, and lets tests build the same parts.
"""

from __future__ import annotations

import datetime as dt
import functools
import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import aiohttp
import structlog

from poller import __version__
from poller.activity import Activity
from poller.budget import RequestBudget
from poller.config import Config
from poller.coordination import Coordination
from poller.delivery.guard import ReceiverGuard
from poller.delivery.retry import RetryPolicy
from poller.delivery.sender import Sender, Target
from poller.delivery.worker import DeliveryWorker
from poller.discovery import Discovery
from poller.errors import ConfigError, StoreError
from poller.health import Health
from poller.hms.client import HmsClient, WalkLimits
from poller.hms.token import MintedTokens, StaticToken, TokenProvider
from poller.limit import Limiter
from poller.metrics import Metrics
from poller.poll import PollResult, RoomPoller
from poller.redaction import redactor_of
from poller.rooms import Origin, PolledRooms
from poller.schedule import Lateness, Scheduler
from poller.server import HealthServer
from poller.share import PollShare
from poller.snapshot import Snapshot, snapshot
from poller.status_page import DELIVERIES
from poller.store.connect import open_store
from poller.store.repo import Store
from poller.timeutil import utcnow
from poller.timings import Timings

__all__ = [
    "USER_AGENT",
    "Parts",
    "build",
    "instance_id",
    "open_configured_store",
]

USER_AGENT = f"poller/{__version__}"
# The API keeps 30 days of events; a seen id may be forgotten once the API
# can no longer return it, with a margin for clock skew.
RETENTION = dt.timedelta(days=31)
PRUNE_INTERVAL = 3600.0


def instance_id(config: Config) -> str:
    """This process's name in leases, claims, logs and metrics."""
    return config.instance_id or f"{socket.gethostname()}:{os.getpid()}"


def tokens_for(config: Config) -> TokenProvider:
    """Minted tokens from the access key and app secret, or the one fixed token."""
    hms = config.hms
    if hms.management_token is not None:
        return StaticToken(hms.management_token.reveal())
    assert hms.access_key is not None
    assert hms.app_secret is not None
    return MintedTokens(hms.access_key, hms.app_secret.reveal())


@asynccontextmanager
async def open_configured_store(
    config: Config, *, apply_migrations: bool = True
) -> AsyncIterator[Store]:
    """The configured store (migrated); a failure is a ConfigError naming ``store.url``."""
    try:
        async with open_store(
            config.store.url.reveal(),
            instance_id=instance_id(config),
            apply_migrations=apply_migrations,
            # What is left of the grace after the drain, which takes 80 % of it.
            close_timeout=max(0.5, config.shutdown_grace * 0.15),
        ) as store:
            yield store
    except StoreError as exc:
        text = redactor_of(config)(str(exc))
        raise ConfigError(
            config.path, "store.url", f"cannot use the store {config.store.masked_url()}: {text}"
        ) from None


@dataclass(frozen=True, slots=True)
class Parts:
    """One instance's parts, wired together and not started."""

    config: Config
    store: Store
    metrics: Metrics
    poller: RoomPoller
    worker: DeliveryWorker
    scheduler: Scheduler
    share: PollShare
    rooms: PolledRooms
    discovery: Discovery | None
    activity: Activity | None
    coordination: Coordination
    health: Health
    server: HealthServer | None
    sessions: tuple[aiohttp.ClientSession, ...]


async def prune(store: Store, poller: RoomPoller) -> None:
    """Forget seen events the API can no longer return."""
    removed = await store.prune(seen_before=utcnow() - RETENTION)
    if removed:
        poller.forget_known()
        structlog.get_logger("poller").info("pruned", events=removed)


class _Admitted:
    """A poll begins once deliveries leave it room (share) and the API budget a turn.

    A class, not ``asynccontextmanager``: one is made per poll, on the hot path.
    """

    __slots__ = ("_share", "_turn")

    def __init__(self, share: PollShare, budget: RequestBudget) -> None:
        self._share = share
        self._turn = budget.turn()

    async def __aenter__(self) -> None:
        await self._share.admit()
        await self._turn.__aenter__()

    async def __aexit__(self, *exc: object) -> None:
        await self._turn.__aexit__(*exc)


def build(config: Config, store: Store) -> Parts:
    """Wire every part for ``config`` on ``store``; nothing is started, nothing is read."""
    timings = Timings.derive(
        interval=config.poll.interval,
        lease_ttl=config.poll.lease_ttl,
        delivery_timeout=config.delivery.timeout,
        idle_interval=config.poll.idle_interval if config.poll.adaptive else None,
    )
    metrics = Metrics(instance=store.instance_id, version=__version__)
    tokens = tokens_for(config)
    metrics.watch_tokens(tokens)
    # No trust_env: each request's proxy (the key, or $HTTPS_PROXY/$HTTP_PROXY less
    # $NO_PROXY) and TLS context were decided at load, where check-config shows them.
    api_session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=config.poll.max_concurrency * 2),
        headers={"User-Agent": USER_AGENT},
    )
    # A separate pool: receivers holding connections never starve the API.
    hook_session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=sum(w.max_concurrency for w in config.webhooks) + 4),
    )
    budget = RequestBudget(config.hms.max_requests_per_second)
    metrics.watch_budget(budget)
    client = HmsClient(
        api_session,
        config.hms.base_url,
        tokens,
        request_timeout=config.hms.request_timeout,
        limiter=Limiter(config.poll.max_concurrency),
        budget=budget,
        limits=WalkLimits(
            max_pages=config.poll.max_pages,
            max_page_bytes=config.poll.max_page_bytes,
            max_page_events=config.poll.max_page_events,
        ),
        on_response=metrics.observe_api,
        redact=redactor_of(config),
        ssl_context=config.hms.tls.client_ssl,
        route=config.hms.route,
    )
    targets = [Target.from_config(w) for w in config.webhooks]
    worker = DeliveryWorker(
        store,
        Sender(hook_session, timeout=config.delivery.timeout, user_agent=USER_AGENT),
        targets,
        RetryPolicy(config.delivery.retry_schedule),
        claim_ttl=timings.claim_ttl,
        on_attempt=metrics.observe_attempt,
        guard=ReceiverGuard(
            store,
            targets,
            breaker_after=config.delivery.breaker_after,
            probe_interval=config.delivery.probe_interval,
            observer=metrics,
        ),
    )
    scheduler = Scheduler()
    # Polls give way while deliveries are backlogged and the loop saturated (see
    # poller.share): a poll then begins per seven deliveries finished.
    share = PollShare(worker.backlogged, lambda: worker.finished)
    metrics.watch_share(share)
    # One warning per interval at most (10 s at least) when polls fall behind.
    lateness = Lateness(max(timings.interval, 10.0))
    metrics.watch_lateness(lambda: lateness.seconds)
    rooms = PolledRooms(
        scheduler,
        lambda room_id: poller.poll(room_id),  # the poller needs coordination, built below
        interval=timings.interval,
        timeout=timings.job_timeout,
        lateness=lateness,
        gate=functools.partial(_Admitted, share, budget),
        # Adaptive: rooms start idle (after a first poll within one interval, as ever);
        # the sessions walks make the active ones fast.
        settle_to=config.poll.idle_interval if config.poll.adaptive else None,
    )
    metrics.watch_rooms(rooms)
    coordination = Coordination(store, timings, rooms.ids)
    health = Health(
        timings,
        scheduler_running=lambda: scheduler.running,
        delivery_loop_age=worker.loop_age,
        schema=store.schema_revisions,
        store_faults=store.faults,
    )
    metrics.watch_store(store.faults, within=timings.store_fault_window)

    def polled(result: PollResult) -> None:
        metrics.observe_poll(result)
        health.polled(result)

    poller = RoomPoller(
        client,
        store,
        config.webhooks,
        event_types=config.hms.event_types,
        page_size=config.poll.page_size,
        backfill=config.poll.backfill,
        lease_ttl=timings.lease_ttl,
        interval=timings.cooldown,
        walk_timeout=timings.walk_timeout,
        lease_renewal=timings.lease_renewal,
        is_mine=coordination.is_mine,
        on_new_deliveries=worker.wake,
        on_poll=polled,
    )
    rooms.add_all([room.id for room in config.rooms], Origin.CONFIG)
    discovery: Discovery | None = None
    if config.discovery.enabled:
        discovery = Discovery(
            client,
            store,
            config.discovery,
            rooms,
            configured=[room.id for room in config.rooms],
            on_walk=metrics.observe_discovery,
        )
        scheduler.every(
            "discovery",
            config.discovery.interval,
            discovery.walk,
            timeout=max(60.0, config.discovery.interval),
        )
    activity: Activity | None = None
    if config.poll.adaptive:
        activity = Activity(
            client, rooms, config.poll, on_walk=metrics.observe_sessions, store=store
        )
        metrics.watch_activity(activity)
        # The first walk at once: after a (re)start, the active rooms are fast from the start.
        scheduler.every(
            "sessions",
            config.poll.sessions_interval,
            activity.walk,
            timeout=max(60.0, config.poll.sessions_interval),
        )
    scheduler.every(
        "heartbeat",
        timings.heartbeat,
        coordination.heartbeat,
        first_in=timings.heartbeat,
        timeout=timings.instance_ttl,
    )
    if store.file is not None:
        store_file = store.file

        async def check_store_file() -> None:
            store_file.check(store.faults)

        scheduler.every(
            "store_file",
            timings.heartbeat,
            check_store_file,
            first_in=timings.heartbeat,
            timeout=timings.instance_ttl,
        )
    scheduler.every(
        "prune",
        PRUNE_INTERVAL,
        functools.partial(prune, store, poller),
        first_in=60.0,
        timeout=600.0,
    )
    server = None
    if config.server is not None:

        async def status() -> Snapshot:
            return await snapshot(store, config, utcnow(), deliveries=DELIVERIES)

        server = HealthServer(
            config.server.host,
            config.server.port,
            metrics=metrics,
            refresh_metrics=lambda: metrics.refresh(store, [w.name for w in config.webhooks]),
            live=health.live,
            ready=health.ready,
            status=status if config.server.status_page else None,
            redact=redactor_of(config),
        )
    return Parts(
        config=config,
        store=store,
        metrics=metrics,
        poller=poller,
        worker=worker,
        scheduler=scheduler,
        share=share,
        rooms=rooms,
        discovery=discovery,
        activity=activity,
        coordination=coordination,
        health=health,
        server=server,
        sessions=(api_session, hook_session),
    )
