"""The daemon's lifecycle: open the store, start polling and delivery, drain on a signal."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import os
import signal
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import structlog
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from poller import __version__
from poller.config import Config
from poller.delivery.retry import RetryPolicy
from poller.delivery.sender import Sender, Target
from poller.delivery.worker import DeliveryWorker
from poller.errors import ConfigError
from poller.hms.client import HmsClient, WalkLimits
from poller.hms.token import MintedTokens, StaticToken, TokenProvider
from poller.limit import Limiter
from poller.membership import Membership
from poller.metrics import Metrics
from poller.poll import PollResult, RoomPoller
from poller.schedule import Lateness, Scheduler
from poller.sdnotify import Notifier
from poller.server import Check, HealthServer
from poller.states import PollOutcome
from poller.store.db import create_engine, migrate, schema_revisions
from poller.store.repo import Store
from poller.timeutil import utcnow

USER_AGENT = f"poller/{__version__}"
# The API keeps 30 days of events; a seen id may be forgotten once the API
# can no longer return it, with a margin for clock skew.
RETENTION = dt.timedelta(days=31)
PRUNE_INTERVAL = 3600.0
# The delivery loop turns at least every IDLE_WAIT; this long without a turn is a hang.
STALL_AFTER = 60.0


# Time a poll's outcome write may take after its walk ended, before the job is cut off.
BOOKKEEPING_MARGIN = 30.0


def walk_timeout(interval: float) -> float:
    """How long one walk of a room may take before it is recorded as failed."""
    return max(3 * interval, 60.0)


def claim_ttl(timeout: float) -> float:
    """How long a delivery stays with the instance that claimed it.

    Past one attempt's timeout, with room for a slow store write of the outcome;
    a delivery claimed by an instance that died is retried after this.
    """
    return 2 * timeout + 5.0


def instance_id(config: Config) -> str:
    """This process's name in leases, claims, logs and metrics."""
    return config.instance_id or f"{socket.gethostname()}:{os.getpid()}"


def secrets_of(config: Config) -> list[str]:
    """Every configured secret value, for log redaction."""
    values = [w.secret.reveal() for w in config.webhooks]
    values += [v for w in config.webhooks for _, v in w.headers]
    for secret in (config.hms.app_secret, config.hms.management_token):
        if secret is not None:
            values.append(secret.reveal())
    password = make_url(config.store.url.reveal()).password
    if password:
        values.append(str(password))
    return values


def _tokens(config: Config) -> TokenProvider:
    hms = config.hms
    if hms.management_token is not None:
        return StaticToken(hms.management_token.reveal())
    assert hms.access_key is not None
    assert hms.app_secret is not None
    return MintedTokens(hms.access_key, hms.app_secret.reveal())


@asynccontextmanager
async def open_store(config: Config, *, apply_migrations: bool = True) -> AsyncIterator[Store]:
    """Open (and migrate) the configured store; a failure is a ConfigError on store.url."""
    try:
        engine = create_engine(config.store.url.reveal())
    except (SQLAlchemyError, OSError, ValueError) as exc:
        raise _store_error(config, exc) from None
    try:
        try:
            if apply_migrations:
                await migrate(engine)
            else:
                async with engine.connect():
                    pass
        except (SQLAlchemyError, OSError) as exc:
            raise _store_error(config, exc) from None
        yield Store(engine, instance_id=instance_id(config))
    finally:
        await engine.dispose()


def _store_error(config: Config, exc: BaseException) -> ConfigError:
    reason = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    text = str(reason).strip().splitlines()[0] if str(reason).strip() else type(reason).__name__
    for secret in secrets_of(config):
        text = text.replace(secret, "***")
    return ConfigError(
        config.path, "store.url", f"cannot use the store {config.store.masked_url()}: {text}"
    )


class Daemon:
    """All the running parts of one poller instance, wired together."""

    def __init__(self, config: Config, store: Store, notifier: Notifier) -> None:
        self.config = config
        self.store = store
        self.notifier = notifier
        self.log = structlog.get_logger("poller")
        self.stopping = asyncio.Event()
        self.started_at = time.monotonic()
        self.started_at_utc = utcnow()
        self.last_poll_at: float | None = None  # monotonic, any poll that did its job
        self.metrics = Metrics(instance=store.instance_id, version=__version__)
        tokens = _tokens(config)
        self.metrics.watch_tokens(tokens)
        self._api_session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=config.poll.max_concurrency * 2),
            headers={"User-Agent": USER_AGENT},
        )
        # A separate pool: receivers holding connections never starve the API.
        self._hook_session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=sum(w.max_concurrency for w in config.webhooks) + 4
            ),
        )
        self.client = HmsClient(
            self._api_session,
            config.hms.base_url,
            tokens,
            request_timeout=config.hms.request_timeout,
            limiter=Limiter(config.poll.max_concurrency),
            limits=WalkLimits(
                max_pages=config.poll.max_pages,
                max_page_bytes=config.poll.max_page_bytes,
                max_page_events=config.poll.max_page_events,
            ),
            on_response=self.metrics.observe_api,
        )
        self.worker = DeliveryWorker(
            store,
            Sender(self._hook_session, timeout=config.delivery.timeout, user_agent=USER_AGENT),
            [Target.from_config(w) for w in config.webhooks],
            RetryPolicy(config.delivery.retry_schedule),
            claim_ttl=claim_ttl(config.delivery.timeout),
            on_attempt=self.metrics.observe_attempt,
        )
        interval = config.poll.interval
        self.membership = Membership(store.instance_id)
        self.poller = RoomPoller(
            self.client,
            store,
            config.webhooks,
            event_types=config.hms.event_types,
            page_size=config.poll.page_size,
            backfill=config.poll.backfill,
            lease_ttl=config.poll.lease_ttl,
            interval=interval,
            walk_timeout=walk_timeout(interval),
            is_mine=self.membership.is_mine,
            on_new_deliveries=self.worker.wake,
            on_poll=self._polled,
        )
        self.scheduler = Scheduler()
        # One warning per interval at most (10 s at least) when polls fall behind.
        self.lateness = Lateness(max(interval, 10.0))
        self.metrics.watch_lateness(lambda: self.lateness.seconds)
        rooms = config.rooms
        for i, room in enumerate(rooms):
            self.scheduler.every(
                f"poll:{room.id}",
                interval,
                functools.partial(self.poller.poll, room.id),
                # Spread the rooms over one interval instead of a burst per interval.
                first_in=interval * i / len(rooms),
                jitter=min(interval * 0.1, 5.0),
                # The walk bounds itself and records its outcome; this only catches a
                # poll whose bookkeeping hangs (a store that stopped answering).
                timeout=walk_timeout(interval) + BOOKKEEPING_MARGIN,
                lateness=self.lateness,
            )
        self.scheduler.every(
            "heartbeat",
            self.heartbeat_interval,
            self.heartbeat,
            first_in=self.heartbeat_interval,
            timeout=config.poll.lease_ttl,
        )
        self.scheduler.every("prune", PRUNE_INTERVAL, self.prune, first_in=60.0, timeout=600.0)
        self.server = (
            None
            if config.server is None
            else HealthServer(
                config.server.host,
                config.server.port,
                metrics=self.metrics,
                refresh_metrics=lambda: self.metrics.refresh(
                    store, [w.name for w in config.webhooks]
                ),
                live=self.live_checks,
                ready=self.ready_checks,
            )
        )
        self._worker_task: asyncio.Task[None] | None = None

    def _polled(self, result: PollResult) -> None:
        self.metrics.observe_poll(result)
        if result.outcome is not PollOutcome.ERROR:
            self.last_poll_at = time.monotonic()

    def live_checks(self) -> list[Check]:
        """Is the process doing anything at all? (/healthz)"""
        worker = self._worker_task
        loop_age = time.monotonic() - self.worker.last_loop_at
        return [
            Check("scheduler", self.scheduler.running),
            Check(
                "delivery_loop",
                worker is not None and not worker.done() and loop_age < STALL_AFTER,
                f"last turn {loop_age:.1f}s ago",
            ),
        ]

    async def ready_checks(self) -> list[Check]:
        """Is it doing its job: store usable, schema current, polls succeeding? (/readyz)"""
        checks = self.live_checks()
        try:
            current, head = await schema_revisions(self.store.engine)
            checks.append(Check("store", True))
            checks.append(Check("schema", current == head, f"at {current}, expected {head}"))
        except (SQLAlchemyError, OSError) as exc:
            checks.append(Check("store", False, type(exc).__name__))
        window = max(3 * self.config.poll.interval, 60.0)
        now = time.monotonic()
        last = self.last_poll_at
        recent = (last is not None and now - last <= window) or now - self.started_at <= window
        detail = "none yet" if last is None else f"{now - last:.1f}s ago"
        checks.append(Check("polls", recent, f"last successful poll {detail}"))
        return checks

    @property
    def heartbeat_interval(self) -> float:
        return min(5.0, self.config.poll.lease_ttl / 3)

    async def heartbeat(self) -> None:
        """Tell the store we live and learn who else does; rooms follow the live set."""
        live = await self.store.heartbeat(
            ttl=self.config.poll.lease_ttl, now=utcnow(), started_at=self.started_at_utc
        )
        if self.membership.update(live):
            mine = sum(self.membership.is_mine(r.id) for r in self.config.rooms)
            self.log.info("instances_changed", instances=list(self.membership.live), rooms=mine)

    async def prune(self) -> None:
        """Forget seen events the API can no longer return."""
        removed = await self.store.prune(seen_before=utcnow() - RETENTION)
        if removed:
            self.poller.forget_known()
            self.log.info("pruned", events=removed)

    async def run(self) -> None:
        """Run until ``stopping`` is set, then drain within the shutdown grace."""
        # Every log event of this daemon names its instance (several may share a store).
        structlog.contextvars.bind_contextvars(instance=self.store.instance_id)
        if self.store.engine.dialect.name == "sqlite":
            # One instance per SQLite file: what a killed run held is ours now.
            claims, leases = await self.store.take_over()
            if claims or leases:
                self.log.info("took_over", claims=claims, leases=leases)
        await self._start_server()
        # Join before the first poll, so rooms are spread from the start.
        await self.heartbeat()
        worker_task = asyncio.create_task(self.worker.run(), name="delivery")
        self._worker_task = worker_task
        self.scheduler.start()
        watchdog = asyncio.create_task(self._watchdog(worker_task), name="watchdog")
        status = (
            f"polling {len(self.config.rooms)} rooms every {self.config.poll.interval:g}s, "
            f"{len(self.config.webhooks)} webhooks"
        )
        self.notifier.ready(status)
        self.log.info(
            "started",
            version=__version__,
            instance=self.store.instance_id,
            rooms=len(self.config.rooms),
            webhooks=len(self.config.webhooks),
            store=self.config.store.masked_url(),
        )
        stop_wait = asyncio.create_task(self.stopping.wait())
        await asyncio.wait({stop_wait, worker_task}, return_when=asyncio.FIRST_COMPLETED)
        if worker_task.done() and not self.stopping.is_set():
            worker_task.result()  # the loop only ends on a bug: surface it
        await self.shutdown(worker_task, watchdog)

    async def shutdown(self, worker_task: asyncio.Task[None], watchdog: asyncio.Task[None]) -> None:
        """Stop polling and delivering within ``shutdown_grace``, hand back what is left."""
        started = time.monotonic()
        self.notifier.stopping()
        self.log.info("stopping", grace_s=self.config.shutdown_grace)
        # Leave a little of the grace for closing the store and the sessions.
        drain = max(0.0, self.config.shutdown_grace * 0.8 - 0.2)
        try:
            # Both stops bound their own waits; this bounds a store that hangs under them.
            async with asyncio.timeout(drain + 1.0):
                await asyncio.gather(self.scheduler.stop(drain), self.worker.stop(drain))
                await worker_task
                # Writes of interrupted polls land before the leases are handed back.
                await self.poller.drain()
        except TimeoutError:
            self.log.warning("drain_timed_out", grace_s=self.config.shutdown_grace)
        watchdog.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watchdog
        # A store that stopped answering must not hold the exit past the grace:
        # unreleased leases and claims simply expire.
        left = max(0.5, self.config.shutdown_grace - (time.monotonic() - started))
        with contextlib.suppress(SQLAlchemyError, OSError, TimeoutError):
            async with asyncio.timeout(left):
                # The rooms move on after one interval: this instance may have just
                # polled them.
                await self.store.release_rooms(now=utcnow(), cooldown=self.config.poll.interval)
                await self.store.deregister()
        await self._close()
        self.log.info("stopped", duration_ms=round((time.monotonic() - started) * 1000, 1))

    async def _start_server(self) -> None:
        if self.server is None:
            return
        try:
            await self.server.start()
        except OSError as exc:
            await self._close()
            raise ConfigError(
                self.config.path, "server.listen", f"cannot listen: {exc.strerror or exc}"
            ) from None

    async def _close(self) -> None:
        await self._api_session.close()
        await self._hook_session.close()
        if self.server is not None:
            await self.server.stop()

    async def _watchdog(self, worker_task: asyncio.Task[None]) -> None:
        interval = self.notifier.watchdog_interval
        if interval is None:
            return
        while True:
            await asyncio.sleep(interval)
            # Ping only while both halves live; systemd restarts us otherwise.
            if all(check.ok for check in self.live_checks()):
                self.notifier.watchdog()


async def run(
    config: Config,
    *,
    notifier: Notifier | None = None,
    stopping: asyncio.Event | None = None,
) -> None:
    """``poller run``: migrate, then poll and deliver until SIGTERM, SIGINT or ``stopping``."""
    async with open_store(config) as store:
        daemon = Daemon(config, store, notifier or Notifier())
        if stopping is not None:
            daemon.stopping = stopping
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, daemon.stopping.set)
        try:
            await daemon.run()
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)
