"""The table of derived durations and the rules that tie them."""

from __future__ import annotations

import pytest

from poller.timings import Timings


@pytest.mark.parametrize("interval", [0.5, 1, 10, 30, 600, 86400])
@pytest.mark.parametrize("delivery_timeout", [0.1, 10, 120])
def test_rules_hold_for_any_config(interval: float, delivery_timeout: float) -> None:
    lease_ttl = max(3 * interval, 30.0)  # the config's default
    t = Timings.derive(interval=interval, lease_ttl=lease_ttl, delivery_timeout=delivery_timeout)
    assert t.lease_renewal < t.lease_ttl
    assert t.heartbeat < t.instance_ttl
    assert t.job_timeout > t.walk_timeout
    assert t.claim_ttl > delivery_timeout
    assert t.cooldown == interval
    assert t.ready_window == t.walk_timeout


def test_defaults_at_thirty_seconds() -> None:
    t = Timings.derive(interval=30, lease_ttl=90, delivery_timeout=10)
    assert dict(t.rows()) == {
        "interval": 30,
        "walk_timeout": 90,
        "job_timeout": 120,
        "lease_ttl": 90,
        "lease_renewal": 30,
        "cooldown": 30,
        "heartbeat": 5,
        "instance_ttl": 90,
        "claim_ttl": 25,
        "ready_window": 90,
        "store_fault_window": 15,
        "stall_after": 60,
    }


def test_adaptive_polling_widens_the_ready_window_to_the_idle_pace() -> None:
    t = Timings.derive(interval=30, lease_ttl=90, delivery_timeout=10, idle_interval=600)
    # Every room idle: a poll every 10 m is the daemon doing its job, plus a walk's length.
    assert t.ready_window == 690
    assert (t.walk_timeout, t.cooldown, t.lease_ttl) == (90, 30, 90)
    same = Timings.derive(interval=30, lease_ttl=90, delivery_timeout=10, idle_interval=30)
    assert same.ready_window == 90
