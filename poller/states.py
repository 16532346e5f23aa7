"""Names for states and outcomes, defined once: the store, logs, metrics and CLI use these."""

from __future__ import annotations

import enum

__all__ = ["AttemptOutcome", "DeliveryState", "PollOutcome", "WebhookMode", "WebhookState"]


class PollOutcome(enum.StrEnum):
    """How one poll of a room ended."""

    OK = "ok"  # the walk completed
    ERROR = "error"  # the walk failed; the room's last_error says why
    LEASED = "leased"  # the room is another instance's: not polled here


class DeliveryState(enum.StrEnum):
    """Where a delivery (one event for one webhook) stands in the outbox."""

    PENDING = "pending"  # owed: due at next_attempt_at
    DELIVERED = "delivered"
    DEAD = "dead"  # its retry schedule is exhausted; kept for inspection and retry


class AttemptOutcome(enum.StrEnum):
    """What one delivery attempt led to."""

    DELIVERED = "delivered"
    RETRY = "retry"  # failed, pending again at its next retry time
    DEAD = "dead"  # failed, and it was the last attempt of the schedule
    CLAIM_LOST = "claim_lost"  # another instance owned it by the time the outcome was written
    # Failed, but used up no retry: a breaker's probe, or 410 Gone (the webhook is now
    # disabled). Pending again, due as it was.
    HELD = "held"


class WebhookMode(enum.StrEnum):
    """What the operator (or the receiver, with 410 Gone) set for a webhook; stored."""

    ACTIVE = "active"
    PAUSED = "paused"  # by hand: ``poller webhooks pause``, until ``resume``
    DISABLED = "disabled"  # the receiver answered 410 Gone, until ``webhooks enable``


class WebhookState(enum.StrEnum):
    """How a webhook stands for delivery: its mode, or its circuit breaker when active."""

    ACTIVE = "active"
    PAUSED = "paused"
    BREAKER_OPEN = "breaker_open"  # every attempt failed for [delivery] breaker_after
    DISABLED = "disabled"
