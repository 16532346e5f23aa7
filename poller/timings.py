"""Every duration derived from the config, in one table, with the rules that tie them.

Why one place: these were derived in four modules and disagreed (a poll's job
timeout was longer than its room's lease at intervals of 10 s or less, and
nothing renewed a lease mid-walk). README's "Timings" table mirrors this.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

__all__ = ["Timings"]

# A poll's outcome write may take this long after its walk ended before the job is cut off.
BOOKKEEPING_MARGIN = 30.0
# The delivery loop turns at least every second; this long without a turn is a hang.
STALL_AFTER = 60.0


@dataclass(frozen=True, slots=True)
class Timings:
    """Derived durations, in seconds. Build with ``derive``; the rules hold by construction."""

    interval: float  # poll.interval
    walk_timeout: float  # one walk of a room; past it the poll is recorded as an error
    job_timeout: float  # bounds a poll whose bookkeeping hangs (the store stopped answering)
    lease_ttl: float  # poll.lease_ttl: a room stays with an instance that stopped renewing
    lease_renewal: float  # a walk renews its room's lease once this old
    cooldown: float  # a room handed over is not polled by anyone for this long
    heartbeat: float  # how often an instance says it lives
    instance_ttl: float  # an instance silent this long is no longer live
    claim_ttl: float  # a delivery stays with the instance that claimed it
    ready_window: float  # /readyz wants a successful poll at most this old
    store_fault_window: float  # a store operation that failed this recently is failing
    stall_after: float  # /healthz: the delivery loop not turning this long is a hang

    @classmethod
    def derive(
        cls,
        *,
        interval: float,
        lease_ttl: float,
        delivery_timeout: float,
        idle_interval: float | None = None,
    ) -> Timings:
        """The table for ``poll.interval``, ``poll.lease_ttl`` and ``delivery.timeout``
        (and ``poll.idle_interval`` with adaptive polling)."""
        walk_timeout = max(3 * interval, 60.0)
        # With adaptive polling a room may wait an idle interval between polls: a daemon
        # whose rooms are all idle is still doing its job.
        slowest = interval if idle_interval is None else max(interval, idle_interval)
        timings = cls(
            interval=interval,
            walk_timeout=walk_timeout,
            job_timeout=walk_timeout + BOOKKEEPING_MARGIN,
            lease_ttl=lease_ttl,
            # A third: a renewal may be late by one page and still land in time.
            lease_renewal=lease_ttl / 3,
            # The instance that handed a room over may have just polled it.
            cooldown=interval,
            heartbeat=min(5.0, lease_ttl / 3),
            instance_ttl=lease_ttl,
            # Past one attempt's timeout, with room for a slow store write of the outcome;
            # a delivery claimed by an instance that died is retried after this.
            claim_ttl=2 * delivery_timeout + 5.0,
            ready_window=walk_timeout if slowest == interval else slowest + walk_timeout,
            # Long enough that a fault which lasts is seen again by a periodic operation
            # (the heartbeat, the delivery loop's claims), short enough that a one-off
            # operation's failure (a metrics scrape) does not keep /readyz at 503.
            store_fault_window=max(3 * min(5.0, lease_ttl / 3), 2.0),
            stall_after=STALL_AFTER,
        )
        timings._check(delivery_timeout)
        return timings

    def _check(self, delivery_timeout: float) -> None:
        # The rules every other module relies on; a failure here is a bug in derive().
        # A poll never outlives its lease: the walk renews at lease_renewal and stops
        # at the lease's end if a renewal could not be made (poller.poll).
        assert self.lease_renewal < self.lease_ttl
        assert self.heartbeat < self.instance_ttl  # a live instance never looks dead
        assert self.job_timeout > self.walk_timeout  # the walk records its own timeout
        assert self.claim_ttl > delivery_timeout  # a claim outlives one attempt

    def rows(self) -> list[tuple[str, float]]:
        """(name, seconds) for check-config and the README."""
        return [(f.name, getattr(self, f.name)) for f in dataclasses.fields(self)]
