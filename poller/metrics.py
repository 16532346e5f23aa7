"""Prometheus metrics, on a registry of our own; labels are bounded (no ids, no secrets)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from poller.activity import Activity, SessionsOutcome, State
from poller.budget import RequestBudget
from poller.delivery.sender import Attempt, Target
from poller.discovery import DiscoveryOutcome
from poller.hms.token import TokenProvider
from poller.poll import FAILING_AFTER, PollResult
from poller.rooms import Origin, PolledRooms
from poller.share import PollShare
from poller.states import AttemptOutcome, DeliveryState, PollOutcome, WebhookState
from poller.store.faults import Faults
from poller.store.repo import Claim, Store
from poller.timeutil import utcnow

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 7200, 36000)


class _TokenRenewals(Collector):
    def __init__(self, tokens: TokenProvider) -> None:
        self._tokens = tokens

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(
            "poller_token_renewals",
            "Management tokens minted (the first one included).",
            value=self._tokens.renewals,
        )


class _PollShare(Collector):
    def __init__(self, share: PollShare) -> None:
        self._share = share

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "poller_polls_held",
            "Due polls held back now so that backlogged deliveries get the event loop.",
            value=self._share.waiting,
        )
        yield CounterMetricFamily(
            "poller_polls_held_seconds",
            "Time polls spent held back for backlogged deliveries, summed.",
            value=self._share.held_seconds,
        )
        yield GaugeMetricFamily(
            "poller_loop_lag_seconds",
            "How late the event loop runs a timer, smoothed.",
            value=self._share.lag,
        )
        yield GaugeMetricFamily(
            "poller_loop_busy_ratio",
            "Share of the time the event loop is busy, not waiting for I/O, smoothed "
            "(above 0.85: saturated).",
            value=self._share.busy,
        )
        yield GaugeMetricFamily(
            "poller_polls_metered",
            "1 while polls begin only as backlogged deliveries finish, else 0.",
            value=float(self._share.metered),
        )


class _Budget(Collector):
    def __init__(self, budget: RequestBudget) -> None:
        self._budget = budget

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "poller_api_budget_requests_per_second",
            "hms.max_requests_per_second: the budget every API request shares.",
            value=self._budget.rate,
        )
        yield GaugeMetricFamily(
            "poller_api_budget_waiting_polls",
            "Due polls waiting for a turn of the API request budget now.",
            value=self._budget.waiting,
        )
        yield CounterMetricFamily(
            "poller_api_budget_wait_seconds",
            "Time polls and requests waited for a turn of the API request budget, summed.",
            value=self._budget.waited_seconds,
        )


class _Rooms(Collector):
    def __init__(self, rooms: PolledRooms) -> None:
        self._rooms = rooms

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "poller_rooms",
            "Rooms this instance schedules polls for, by origin (config, discovery).",
            labels=["origin"],
        )
        for origin in Origin:
            family.add_metric([origin.value], self._rooms.count(origin))
        yield family


class _Activity(Collector):
    def __init__(self, activity: Activity) -> None:
        self._activity = activity

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "poller_rooms_by_state",
            "Rooms this instance polls, by pace: active (a session live or ended within "
            "poll.active_window: every poll.interval) or idle (every poll.idle_interval).",
            labels=["state"],
        )
        counts = self._activity.by_state()
        for state in State:
            family.add_metric([state.value], counts[state])
        yield family
        yield GaugeMetricFamily(
            "poller_active_rooms",
            "Rooms of the app with a session live or ended within poll.active_window, as of "
            "the latest complete GET /sessions walk (polled by this instance or not).",
            value=self._activity.active_rooms,
        )


class Metrics:
    """Every metric poller exports, updated by callbacks from the poller and the worker."""

    def __init__(self, *, instance: str, version: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        info = Gauge(
            "poller_info",
            "Version and instance of this poller.",
            ["version", "instance"],
            registry=r,
        )
        info.labels(version=version, instance=instance).set(1)
        self.polls = Counter(
            "poller_polls", "Room polls by outcome (ok, error, leased).", ["outcome"], registry=r
        )
        self.poll_duration = Histogram(
            "poller_poll_duration_seconds", "Time to walk every page of one room.", registry=r
        )
        self.last_poll_success = Gauge(
            "poller_last_successful_poll_timestamp_seconds",
            "Unix time of the latest poll that completed without error.",
            registry=r,
        )
        self.api_requests = Counter(
            "poller_api_requests",
            "100ms API responses by HTTP status ('error': no response).",
            ["status"],
            registry=r,
        )
        self.api_latency = Histogram(
            "poller_api_request_duration_seconds", "100ms API request latency.", registry=r
        )
        self.events_seen = Counter(
            "poller_events_seen", "Events stored for the first time.", registry=r
        )
        self.events_skipped = Counter(
            "poller_events_malformed", "Malformed events skipped in API pages.", registry=r
        )
        self.deliveries = Counter(
            "poller_delivery_attempts",
            "Delivery attempts by webhook and outcome (delivered, retry, dead, held, claim_lost).",
            ["webhook", "outcome"],
            registry=r,
        )
        self.delivery_latency = Histogram(
            "poller_delivery_latency_seconds",
            "From an event being seen to its webhook answering 2xx.",
            ["webhook"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.outbox = Gauge(
            "poller_outbox_deliveries",
            "Deliveries in the store by webhook and state.",
            ["webhook", "state"],
            registry=r,
        )
        self.scrape_errors = Counter(
            "poller_metrics_refresh_errors", "Scrapes whose store read failed.", registry=r
        )
        self.failing_rooms = Gauge(
            "poller_rooms_failing",
            f"Rooms whose last {FAILING_AFTER} or more walks failed in a row (see poller status).",
            registry=r,
        )
        self.oldest_pending = Gauge(
            "poller_oldest_pending_delivery_age_seconds",
            "Age of the oldest delivery still owed to a configured webhook (0 when none).",
            registry=r,
        )
        self.webhook_state = Gauge(
            "poller_webhook_state",
            "1 for each webhook's current state (active, paused, breaker_open, disabled).",
            ["webhook", "state"],
            registry=r,
        )
        self.probes = Counter(
            "poller_breaker_probes",
            "Probe attempts of webhooks whose circuit breaker is open, by outcome (ok, failed).",
            ["webhook", "outcome"],
            registry=r,
        )
        self._discovery_walks = Counter(
            "poller_discovery_walks",
            "Walks of GET /rooms by discovery, by outcome (ok, error).",
            ["outcome"],
            registry=r,
        )
        self._discovery_listed = Gauge(
            "poller_discovery_listed_rooms",
            "Rooms the latest complete walk of GET /rooms listed (after the filters).",
            registry=r,
        )
        self._sessions_walks = Counter(
            "poller_sessions_walks",
            "Walks of GET /sessions by adaptive polling, by outcome (ok, error).",
            ["outcome"],
            registry=r,
        )
        self.paced = Counter(
            "poller_rate_limit_wait_seconds",
            "Time deliveries waited for their turn under the webhook's rate_limit.",
            ["webhook"],
            registry=r,
        )

    def watch_store(self, faults: Faults, *, within: float) -> None:
        """Count store failures by operation, and export how many operations fail now."""
        errors = Counter(
            "poller_store_errors",
            "Store operations that failed, by operation (a full disk, a read-only or "
            "deleted file, a lock held elsewhere, a database restart).",
            ["operation"],
            registry=self.registry,
        )
        faults.listen(lambda fault, _first: errors.labels(operation=fault.operation).inc())
        Gauge(
            "poller_store_failing_operations",
            "Store operations whose latest call failed (0: the store is well).",
            registry=self.registry,
        ).set_function(lambda: len(faults.current(within=within)))

    def watch_lateness(self, seconds: Callable[[], float]) -> None:
        """Export how late polls start against their interval (read at scrape time)."""
        Gauge(
            "poller_poll_lag_seconds",
            "How much later than their interval polls started, at most, over the last "
            "interval (0: on time; rises when rooms are due faster than they can be polled).",
            registry=self.registry,
        ).set_function(seconds)

    def watch_rooms(self, rooms: PolledRooms) -> None:
        """Export how many rooms are polled, by origin."""
        self.registry.register(_Rooms(rooms))

    def observe_discovery(self, outcome: DiscoveryOutcome) -> None:
        """Count one discovery walk."""
        self._discovery_walks.labels(outcome="ok" if outcome.ok else "error").inc()
        if outcome.ok:
            self._discovery_listed.set(outcome.listed)

    def watch_activity(self, activity: Activity) -> None:
        """Export how many rooms are polled at each pace (adaptive polling)."""
        self.registry.register(_Activity(activity))

    def observe_sessions(self, outcome: SessionsOutcome) -> None:
        """Count one walk of GET /sessions."""
        self._sessions_walks.labels(outcome="ok" if outcome.ok else "error").inc()

    def watch_budget(self, budget: RequestBudget) -> None:
        """Export the API request budget and the waits for it (see poller.budget)."""
        self.registry.register(_Budget(budget))

    def watch_share(self, share: PollShare) -> None:
        """Export how polls give way to deliveries (see poller.share)."""
        self.registry.register(_PollShare(share))

    def watch_tokens(self, tokens: TokenProvider) -> None:
        """Export the token provider's renewal count."""
        self.registry.register(_TokenRenewals(tokens))

    def observe_poll(self, result: PollResult) -> None:
        self.polls.labels(outcome=result.outcome).inc()
        if result.outcome is PollOutcome.LEASED:
            return
        self.poll_duration.observe(result.duration)
        self.events_seen.inc(result.new)
        self.events_skipped.inc(result.skipped)
        if result.outcome is PollOutcome.OK:
            self.last_poll_success.set(time.time())

    def observe_api(self, status: str, seconds: float) -> None:
        self.api_requests.labels(status=status).inc()
        self.api_latency.observe(seconds)

    def observe_attempt(
        self, target: Target, claim: Claim, attempt: Attempt, outcome: AttemptOutcome
    ) -> None:
        self.deliveries.labels(webhook=target.name, outcome=outcome).inc()
        if outcome is AttemptOutcome.DELIVERED:
            seen_for = (utcnow() - claim.created_at).total_seconds()
            self.delivery_latency.labels(webhook=target.name).observe(max(0.0, seen_for))

    def observe_probe(self, webhook: str, ok: bool) -> None:
        self.probes.labels(webhook=webhook, outcome="ok" if ok else "failed").inc()

    def observe_pacing(self, webhook: str, seconds: float) -> None:
        self.paced.labels(webhook=webhook).inc(seconds)

    async def refresh(self, store: Store, webhooks: list[str]) -> None:
        """Read the outbox gauges from the store (at scrape time: they are the store's truth)."""
        stored = await store.webhook_states()
        for name in webhooks:
            current = stored[name].state if name in stored else WebhookState.ACTIVE
            for webhook_state in WebhookState:
                held = webhook_state is current
                self.webhook_state.labels(webhook=name, state=webhook_state).set(held)
        counts = await store.outbox_counts()
        for name in sorted(set(webhooks) | {w for w, _ in counts}):
            for state in DeliveryState:
                self.outbox.labels(webhook=name, state=state).set(counts.get((name, state), 0))
        self.failing_rooms.set(await store.failing_rooms(after=FAILING_AFTER))
        oldest = await store.oldest_pending(webhooks)
        self.oldest_pending.set(0 if oldest is None else (utcnow() - oldest).total_seconds())

    def render(self) -> bytes:
        """The Prometheus text exposition."""
        return generate_latest(self.registry)
