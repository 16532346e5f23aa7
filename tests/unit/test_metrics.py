"""Metrics fed by callbacks and read from the store at scrape time; labels stay bounded."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import cast

from prometheus_client.parser import text_string_to_metric_families

from poller.delivery.sender import Attempt, Target
from poller.hms.token import StaticToken
from poller.metrics import Metrics
from poller.poll import PollResult
from poller.share import PollShare
from poller.signing import SigningKey
from poller.states import AttemptOutcome, PollOutcome, WebhookMode
from poller.store.repo import Claim, Store, WebhookRow
from poller.timeutil import utcnow
from tests.conftest import make_secret


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def target(name: str = "hook") -> Target:
    key = SigningKey.from_secret(make_secret())
    return Target(name=name, url="http://127.0.0.1:1/h", key=key, headers={}, max_concurrency=4)


def test_polls_count_by_outcome_and_events_seen_and_skipped() -> None:
    m = Metrics(instance="i", version="1")
    m.observe_poll(PollResult("r", PollOutcome.OK, pages=2, events=150, new=3, skipped=1))
    m.observe_poll(PollResult("r", PollOutcome.ERROR, new=1))
    m.observe_poll(PollResult("r", PollOutcome.LEASED))

    s = samples(m)
    assert s[("poller_polls_total", (("outcome", "ok"),))] == 1
    assert s[("poller_polls_total", (("outcome", "error"),))] == 1
    assert s[("poller_polls_total", (("outcome", "leased"),))] == 1
    assert s[("poller_events_seen_total", ())] == 4
    assert s[("poller_events_malformed_total", ())] == 1
    assert s[("poller_poll_duration_seconds_count", ())] == 2  # leased polls walk nothing
    assert s[("poller_last_successful_poll_timestamp_seconds", ())] > 0
    assert s[("poller_info", (("instance", "i"), ("version", "1")))] == 1


def test_attempts_by_webhook_and_outcome_with_latency_of_deliveries_only() -> None:
    m = Metrics(instance="i", version="1")
    claim = Claim(1, "e", "hook", 0, "{}", utcnow() - dt.timedelta(seconds=3))
    ok = Attempt(status=204, error=None, retry_after=None, duration=0.01)
    failed = Attempt(status=500, error="HTTP 500", retry_after=None, duration=0.01)
    m.observe_attempt(target(), claim, ok, AttemptOutcome.DELIVERED)
    m.observe_attempt(target(), claim, failed, AttemptOutcome.RETRY)

    s = samples(m)
    labels = (("outcome", "delivered"), ("webhook", "hook"))
    assert s[("poller_delivery_attempts_total", labels)] == 1
    assert s[("poller_delivery_attempts_total", (("outcome", "retry"), ("webhook", "hook")))] == 1
    assert s[("poller_delivery_latency_seconds_count", (("webhook", "hook"),))] == 1
    assert s[("poller_delivery_latency_seconds_sum", (("webhook", "hook"),))] >= 3


def test_api_responses_tokens_and_lag() -> None:
    m = Metrics(instance="i", version="1")
    tokens = StaticToken("t")
    m.watch_tokens(tokens)
    lag = [0.0]
    m.watch_lateness(lambda: lag[0])
    m.observe_api("200", 0.01)
    m.observe_api("error", 1.0)
    lag[0] = 2.5

    s = samples(m)
    assert s[("poller_api_requests_total", (("status", "200"),))] == 1
    assert s[("poller_api_requests_total", (("status", "error"),))] == 1
    assert s[("poller_poll_lag_seconds", ())] == 2.5
    assert ("poller_token_renewals_total", ()) in s


def test_poll_share() -> None:
    m = Metrics(instance="i", version="1")
    share = PollShare(lambda: True, lambda: 0)
    m.watch_share(share)
    share.observe(0.5, 1.0)
    share.held_seconds = 1.5

    s = samples(m)
    assert s[("poller_polls_held", ())] == 0
    assert s[("poller_polls_held_seconds_total", ())] == 1.5
    assert s[("poller_loop_lag_seconds", ())] > 0.1
    assert s[("poller_loop_busy_ratio", ())] > 0.1
    assert s[("poller_polls_metered", ())] == 1.0


class FakeStore:
    async def outbox_counts(self) -> dict[tuple[str, str], int]:
        return {("hook", "pending"): 2, ("removed", "dead"): 1}

    async def failing_rooms(self, *, after: int) -> int:
        return 4

    async def oldest_pending(self, webhooks: Sequence[str] | None = None) -> dt.datetime | None:
        assert webhooks is not None  # an orphaned webhook's deliveries are not late
        assert "removed" not in webhooks
        return utcnow() - dt.timedelta(seconds=60)

    async def webhook_states(self) -> dict[str, WebhookRow]:
        return {"hook": WebhookRow("hook", mode=WebhookMode.PAUSED)}


async def test_refresh_reads_the_outbox_gauges_from_the_store() -> None:
    m = Metrics(instance="i", version="1")
    await m.refresh(cast(Store, FakeStore()), ["hook", "other"])

    s = samples(m)
    outbox = {k[1]: v for k, v in s.items() if k[0] == "poller_outbox_deliveries"}
    assert outbox[(("state", "pending"), ("webhook", "hook"))] == 2
    assert outbox[(("state", "delivered"), ("webhook", "other"))] == 0  # every state shown
    assert (
        outbox[(("state", "dead"), ("webhook", "removed"))] == 1
    )  # a webhook no longer configured
    assert s[("poller_rooms_failing", ())] == 4
    assert 59 <= s[("poller_oldest_pending_delivery_age_seconds", ())] <= 120
    state = {k[1]: v for k, v in s.items() if k[0] == "poller_webhook_state"}
    assert state[(("state", "paused"), ("webhook", "hook"))] == 1
    assert state[(("state", "active"), ("webhook", "hook"))] == 0
    assert state[(("state", "active"), ("webhook", "other"))] == 1  # no row yet: active


def test_no_label_holds_an_id_or_a_secret() -> None:
    m = Metrics(instance="i", version="1")
    m.observe_poll(PollResult("room-secret-id", PollOutcome.OK, new=1))
    assert b"room-secret-id" not in m.render()


async def test_adaptive_rooms_by_state_active_rooms_and_sessions_walks() -> None:
    from poller.activity import Activity
    from poller.hms.listing import SessionInfo
    from poller.rooms import Origin, PolledRooms
    from poller.schedule import Scheduler
    from tests.unit.test_activity import CONFIG, Sessions, no_poll

    api = Sessions()
    rooms = PolledRooms(Scheduler(), no_poll, interval=30.0, timeout=60.0, settle_to=600.0)
    rooms.add_all(["room-secret-1", "room-secret-2", "room-secret-3"], Origin.CONFIG)
    m = Metrics(instance="i", version="1")
    activity = Activity(api, rooms, CONFIG, on_walk=m.observe_sessions)
    m.watch_activity(activity)
    now = utcnow().isoformat(timespec="milliseconds").replace("+00:00", "Z")
    api.listed.append(SessionInfo("s1", "room-secret-1", True, now, now))
    api.listed.append(SessionInfo("s2", "not-polled-here", True, now, now))

    await activity.walk()
    api.failing = True
    await activity.walk()

    s = samples(m)
    assert s[("poller_rooms_by_state", (("state", "active"),))] == 1
    assert s[("poller_rooms_by_state", (("state", "idle"),))] == 2
    assert s[("poller_active_rooms", ())] == 2
    assert s[("poller_sessions_walks_total", (("outcome", "ok"),))] == 1
    assert s[("poller_sessions_walks_total", (("outcome", "error"),))] == 1
    assert b"room-secret" not in m.render()
