"""The daemon's lifecycle: signals first, then start the parts in order; drain on a signal.

Every resource is entered on one AsyncExitStack, so each is closed on every exit
path, an error during start-up included, within ``shutdown_grace``.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Awaitable
from typing import Any, TypeVar

import structlog
import structlog.typing

from poller import __version__
from poller.config import Config
from poller.errors import ConfigError, InstanceIdInUse, UserError
from poller.parts import Parts, build, open_configured_store
from poller.sdnotify import Notifier
from poller.store.runlock import StoreInUse, run_lock, sqlite_file
from poller.timeutil import utcnow

__all__ = ["Daemon", "run"]

_T = TypeVar("_T")
_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Daemon:
    """Runs built parts: start in order, wait for the stop signal, drain within the grace."""

    def __init__(
        self, parts: Parts, notifier: Notifier, *, stopping: asyncio.Event | None = None
    ) -> None:
        self.parts = parts
        self.notifier = notifier
        self.stopping = stopping or asyncio.Event()
        self.log = structlog.get_logger("poller")

    async def run(self) -> None:
        """Start everything, run until ``stopping`` is set, then drain and close."""
        parts, config = self.parts, self.parts.config
        # Every log event of this daemon names its instance (several may share a store).
        structlog.contextvars.bind_contextvars(instance=parts.store.instance_id)
        async with contextlib.AsyncExitStack() as stack:
            stack.push_async_callback(self._close_sessions)
            # On SQLite the run lock (taken by ``run``) proves no other daemon is alive on
            # the file: whatever a killed run left, its instance row included, is ours at
            # once, and a restart under the same id (a container's pid 1) joins at once.
            await parts.coordination.take_over()
            # Then, before anything else: a second process under this id (PostgreSQL)
            # must touch nothing, nor fail on a listen address the first one holds.
            # Joining also comes before the first poll, so rooms are spread from the start.
            if await _unless_stopped(parts.coordination.join(), self.stopping, config) is None:
                return
            if parts.server is not None:
                await self._listen()
                stack.push_async_callback(parts.server.stop)
            displaced = asyncio.create_task(self._stop_when_displaced(), name="displaced")
            stack.callback(displaced.cancel)
            if parts.discovery is not None:
                # What earlier runs discovered is polled from the start, not after a walk.
                await parts.discovery.restore()
            worker_task = asyncio.create_task(parts.worker.run(), name="delivery")
            share = asyncio.create_task(parts.share.run(), name="share")
            stack.callback(share.cancel)
            parts.scheduler.start()
            watchdog = asyncio.create_task(self._watchdog(), name="watchdog")
            self.notifier.ready(
                f"polling {len(parts.rooms.ids)} rooms every {config.poll.interval:g}s, "
                f"{len(config.webhooks)} webhooks"
            )
            self.log.info(
                "started",
                version=__version__,
                instance=parts.store.instance_id,
                rooms=len(parts.rooms.ids),
                discovery=config.discovery.enabled,
                adaptive=config.poll.adaptive,
                webhooks=len(config.webhooks),
                store=config.store.masked_url(),
            )
            _warn_expired_certificates(self.log, config)
            await _until_done_or_stopped(worker_task, self.stopping)
            if worker_task.done() and not self.stopping.is_set():
                worker_task.result()  # the loop only ends on a bug: surface it
            await self._drain(worker_task, watchdog)
        if parts.coordination.displaced_by is not None:
            raise parts.coordination.displaced_by

    async def _stop_when_displaced(self) -> None:
        await self.parts.coordination.displaced.wait()
        self.stopping.set()

    async def _drain(self, worker_task: asyncio.Task[None], watchdog: asyncio.Task[None]) -> None:
        """Stop polling and delivering within ``shutdown_grace``, hand back what is left."""
        parts, grace = self.parts, self.parts.config.shutdown_grace
        started = time.monotonic()
        self.notifier.stopping()
        self.log.info("stopping", grace_s=grace)
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
    loop = asyncio.get_running_loop()
    # Before anything slow: a signal during start-up migrations ends the start cleanly.
    for signum in _SIGNALS:
        loop.add_signal_handler(signum, stopping.set)
    try:
        async with contextlib.AsyncExitStack() as stack:
            _lock_sqlite_file(stack, config)
            store = await _unless_stopped(
                stack.enter_async_context(open_configured_store(config)), stopping, config
            )
            if store is None:
                return
            daemon = Daemon(build(config, store), notifier or Notifier(), stopping=stopping)
            try:
                await daemon.run()
            except InstanceIdInUse as exc:
                # A deployment error, like a bad config: the fix is a distinct instance_id.
                raise ConfigError(
                    config.path, "instance_id", f"{exc}; give every instance its own instance_id"
                ) from None
    finally:
        for signum in _SIGNALS:
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
