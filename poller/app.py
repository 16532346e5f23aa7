"""The daemon's lifecycle: signals first, then start the parts in order; drain on a signal.

Every resource is entered on one AsyncExitStack, so each is closed on every exit
path, an error during start-up included, within ``shutdown_grace``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import time
from collections.abc import Awaitable
from typing import Any, TypeVar

import structlog
import structlog.typing

from poller import __version__
from poller.config import Config, load_config
from poller.errors import ConfigError, InstanceIdInUse, UserError
from poller.log import configure_logs
from poller.parts import Parts, build, open_configured_store
from poller.reload import Reload, plan
from poller.sdnotify import Notifier
from poller.store.runlock import StoreInUse, run_lock, sqlite_file
from poller.timeutil import utcnow

__all__ = ["Daemon", "run"]

_T = TypeVar("_T")
_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Daemon:
    """Runs built parts: start in order, wait for the stop signal, drain within the grace.

    A reload (``reloading`` set, on SIGHUP) re-reads the config file: an invalid one is
    logged and the running parts go on; a valid one replaces the parts, rebuilt on the
    same store, after the running ones finished what they had in flight.
    """

    def __init__(
        self,
        parts: Parts,
        notifier: Notifier,
        *,
        stopping: asyncio.Event | None = None,
        reloading: asyncio.Event | None = None,
    ) -> None:
        self.parts = parts
        self.notifier = notifier
        self.stopping = stopping or asyncio.Event()
        self.reloading = reloading or asyncio.Event()
        self.log = structlog.get_logger("poller")
        self._tasks: list[asyncio.Task[Any]] = []  # of the running parts, cancelled with them

    async def run(self) -> None:
        """Start everything, run until ``stopping`` is set, then drain and close."""
        parts, config = self.parts, self.parts.config
        # Every log event of this daemon names its instance (several may share a store).
        structlog.contextvars.bind_contextvars(instance=parts.store.instance_id)
        async with contextlib.AsyncExitStack() as stack:
            stack.push_async_callback(self._close_sessions)
            stack.push_async_callback(self._stop_server)
            stack.callback(self._cancel_tasks)
            # On SQLite the run lock (taken by ``run``) proves no other daemon is alive on
            # the file: whatever a killed run left, its instance row included, is ours at
            # once, and a restart under the same id (a container's pid 1) joins at once.
            await parts.coordination.take_over()
            # Then, before anything else: a second process under this id (PostgreSQL)
            # must touch nothing, nor fail on a listen address the first one holds.
            # Joining also comes before the first poll, so rooms are spread from the start.
            if await _unless_stopped(parts.coordination.join(), self.stopping, config) is None:
                return
            watchdog = asyncio.create_task(self._watchdog(), name="watchdog")
            while True:
                worker_task = await self._start()
                # What start-up built (modules, the store's engine, a job per room) lives
                # as long as the daemon: out of the collector's sight, so that each full
                # collection does not walk it again (they took 100-200 ms at 5,000 rooms).
                gc.freeze()
                self.log.info(
                    "started",
                    version=__version__,
                    instance=self.parts.store.instance_id,
                    rooms=len(self.parts.rooms.ids),
                    discovery=self.parts.config.discovery.enabled,
                    adaptive=self.parts.config.poll.adaptive,
                    webhooks=len(self.parts.config.webhooks),
                    store=self.parts.config.store.masked_url(),
                )
                _warn_expired_certificates(self.log, self.parts.config)
                reload = await self._until_stop_or_reload(worker_task)
                if reload is None:
                    break
                # The parts being replaced were frozen with the rest of start-up: back in
                # the collector's sight, or their reference cycles would outlive them.
                gc.unfreeze()
                await self._replace(worker_task, reload)
            if worker_task.done() and not self.stopping.is_set():
                worker_task.result()  # the loop only ends on a bug: surface it
            await self._drain(worker_task, watchdog)
        if self.parts.coordination.displaced_by is not None:
            raise self.parts.coordination.displaced_by

    async def _start(self) -> asyncio.Task[None]:
        """Start the parts: listener, delivery loop, poll gate, scheduler; READY."""
        parts, config = self.parts, self.parts.config
        if parts.server is not None:
            await self._listen()
        self._tasks = [asyncio.create_task(self._stop_when_displaced(), name="displaced")]
        if parts.discovery is not None:
            # What earlier runs discovered is polled from the start, not after a walk.
            await parts.discovery.restore()
        worker_task = asyncio.create_task(parts.worker.run(), name="delivery")
        self._tasks.append(asyncio.create_task(parts.share.run(), name="share"))
        parts.scheduler.start()
        self.notifier.ready(
            f"polling {len(parts.rooms.ids)} rooms every {config.poll.interval:g}s, "
            f"{len(config.webhooks)} webhooks"
        )
        return worker_task

    async def _until_stop_or_reload(self, worker_task: asyncio.Task[None]) -> Reload | None:
        """Wait for a stop (None) or a reload whose config is valid and changes something."""
        while True:
            reload_wait = asyncio.create_task(self.reloading.wait())
            stop_wait = asyncio.create_task(self.stopping.wait())
            await asyncio.wait(
                {worker_task, stop_wait, reload_wait}, return_when=asyncio.FIRST_COMPLETED
            )
            reload_wait.cancel()
            stop_wait.cancel()
            if self.stopping.is_set() or worker_task.done():
                return None
            self.reloading.clear()
            if (reload := await self._reread()) is not None:
                return reload

    async def _reread(self) -> Reload | None:
        """The re-read config's plan, or None when it is invalid or changes nothing."""
        running = self.parts.config
        self.notifier.reloading()
        self.log.info("reloading", config=str(running.path))
        try:
            loaded = await asyncio.to_thread(load_config, running.path)
        except ConfigError as exc:
            # The running config stays: a typo must not take the daemon down.
            self.log.error("reload_failed", error=str(exc))
            self.notifier.ready("reload failed: the running config stays")
            return None
        reload = plan(running, loaded)
        if reload.needs_restart:
            self.log.warning("reload_needs_restart", keys=list(reload.needs_restart))
        configure_logs(reload.config)
        if not reload.changed:
            self.log.info("reloaded", **reload.summary())
            self.notifier.ready("reloaded: nothing changed")
            return None
        return reload

    async def _replace(self, worker_task: asyncio.Task[None], reload: Reload) -> None:
        """Let the running parts finish what they have in flight, then rebuild them from
        the reloaded config on the same store (same instance: its leases carry over)."""
        old = self.parts
        started = time.monotonic()
        await self._finish_in_flight(worker_task)
        self._cancel_tasks()
        await self._stop_server()
        await self._close_sessions()
        self.parts = build(reload.config, old.store)
        # Readiness is about the daemon, not its parts: a reload is no new start.
        self.parts.health.last_poll_at = old.health.last_poll_at
        # The same id and incarnation on the same store: joins at once.
        await self.parts.coordination.join()
        self.log.info(
            "reloaded",
            duration_ms=round((time.monotonic() - started) * 1000, 1),
            **reload.summary(),
        )

    def _cancel_tasks(self) -> None:
        for task in self._tasks:
            task.cancel()
        self._tasks = []

    async def _stop_server(self) -> None:
        if self.parts.server is not None:
            await self.parts.server.stop()

    async def _stop_when_displaced(self) -> None:
        await self.parts.coordination.displaced.wait()
        self.stopping.set()

    async def _finish_in_flight(self, worker_task: asyncio.Task[None]) -> None:
        """Stop firing polls and claiming deliveries; let what runs finish within most of
        ``shutdown_grace`` (the rest is handed back to the store)."""
        parts, grace = self.parts, self.parts.config.shutdown_grace
        # Leave a little of the grace for closing the store and the sessions.
        drain = max(0.0, grace * 0.8 - 0.2)
        try:
            # Both stops bound their own waits; this bounds a store that hangs under them.
            async with asyncio.timeout(drain + 1.0):
                await asyncio.gather(parts.scheduler.stop(drain), parts.worker.stop(drain))
                await worker_task
                # Writes of interrupted polls land before the leases are handed back.
                await parts.poller.drain()
        except TimeoutError:
            self.log.warning("drain_timed_out", grace_s=grace)

    async def _drain(self, worker_task: asyncio.Task[None], watchdog: asyncio.Task[None]) -> None:
        """Stop polling and delivering within ``shutdown_grace``, hand back what is left."""
        parts, grace = self.parts, self.parts.config.shutdown_grace
        started = time.monotonic()
        self.notifier.stopping()
        self.log.info("stopping", grace_s=grace)
        await self._finish_in_flight(worker_task)
        watchdog.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watchdog
        # A store that stopped answering must not hold the exit past the grace:
        # unreleased leases and claims simply expire.
        left = max(0.5, grace - (time.monotonic() - started))
        with contextlib.suppress(Exception):
            async with asyncio.timeout(left):
                await parts.coordination.leave()
        self.log.info("stopped", duration_ms=round((time.monotonic() - started) * 1000, 1))

    async def _listen(self) -> None:
        server = self.parts.server
        assert server is not None
        try:
            await server.start()
        except OSError as exc:
            raise ConfigError(
                self.parts.config.path, "server.listen", f"cannot listen: {exc.strerror or exc}"
            ) from None

    async def _close_sessions(self) -> None:
        for session in self.parts.sessions:
            await session.close()

    async def _watchdog(self) -> None:
        interval = self.notifier.watchdog_interval
        if interval is None:
            return
        while True:
            await asyncio.sleep(interval)
            # Ping only while both halves live; systemd restarts us otherwise.
            if all(check.ok for check in self.parts.health.live()):
                self.notifier.watchdog()


def _warn_expired_certificates(log: structlog.typing.FilteringBoundLogger, config: Config) -> None:
    """One warning per expired CA or client certificate in use: every TLS handshake that
    relies on it fails, and the attempt log only says what the peer made of that."""
    now = utcnow()
    peers = [("hms", config.hms.tls), *((f"webhook {w.name}", w.tls) for w in config.webhooks)]
    for peer, tls in peers:
        found = [("client_cert", tls.client_cert, tls.certificate)]
        found.extend(("ca_file", tls.ca_file, info) for info in tls.ca_certificates)
        for key, path, info in found:
            if info is not None and path is not None and info.expired(now):
                log.warning(
                    "tls_certificate_expired",
                    peer=peer,
                    key=key,
                    file=str(path),
                    subject=info.subject,
                    expired_at=info.not_after.strftime("%Y-%m-%dT%H:%M:%SZ"),
                )


async def run(
    config: Config,
    *,
    notifier: Notifier | None = None,
    stopping: asyncio.Event | None = None,
) -> None:
    """``poller run``: migrate, then poll and deliver until SIGTERM, SIGINT or ``stopping``."""
    stopping = stopping or asyncio.Event()
    reloading = asyncio.Event()
    loop = asyncio.get_running_loop()
    # Before anything slow: a signal during start-up migrations ends the start cleanly.
    for signum in _SIGNALS:
        loop.add_signal_handler(signum, stopping.set)
    # SIGHUP's default would end the process: a reload asked for during start-up is made
    # once the daemon runs.
    loop.add_signal_handler(signal.SIGHUP, reloading.set)
    try:
        async with contextlib.AsyncExitStack() as stack:
            _lock_sqlite_file(stack, config)
            store = await _unless_stopped(
                stack.enter_async_context(open_configured_store(config)), stopping, config
            )
            if store is None:
                return
            daemon = Daemon(
                build(config, store),
                notifier or Notifier(),
                stopping=stopping,
                reloading=reloading,
            )
            try:
                await daemon.run()
            except InstanceIdInUse as exc:
                # A deployment error, like a bad config: the fix is a distinct instance_id.
                raise ConfigError(
                    config.path, "instance_id", f"{exc}; give every instance its own instance_id"
                ) from None
    finally:
        for signum in (*_SIGNALS, signal.SIGHUP):
            loop.remove_signal_handler(signum)


def _lock_sqlite_file(
    stack: contextlib.ExitStack | contextlib.AsyncExitStack, config: Config
) -> None:
    """Hold the run lock of a SQLite store for the daemon's life (see poller.store.runlock)."""
    database = sqlite_file(config.store.url.reveal())
    if database is None:
        return
    try:
        stack.enter_context(run_lock(database))
    except StoreInUse as exc:
        raise ConfigError(
            config.path,
            "store.url",
            f"{exc}; a SQLite store serves one daemon: stop the other, or use PostgreSQL "
            "for several instances",
        ) from None
    except UserError as exc:
        raise ConfigError(config.path, "store.url", str(exc)) from None


async def _unless_stopped(
    step: Awaitable[_T], stopping: asyncio.Event, config: Config
) -> _T | None:
    """Run a start-up step, or abandon it (within the grace) when a stop is asked for."""
    task: asyncio.Task[_T] = asyncio.ensure_future(step)
    await _until_done_or_stopped(task, stopping)
    if task.done():
        return task.result()
    # Cancelled, the step's transaction (a migration) rolls back.
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, TimeoutError, Exception):
        async with asyncio.timeout(config.shutdown_grace * 0.8):
            await task
    structlog.get_logger("poller").info("stopped_during_startup")
    return None


async def _until_done_or_stopped(task: asyncio.Future[Any], stopping: asyncio.Event) -> None:
    """Wait until ``task`` ends or a stop is asked for, whichever is first."""
    stop_wait = asyncio.create_task(stopping.wait())
    await asyncio.wait({task, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
    stop_wait.cancel()
