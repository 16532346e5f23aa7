"""The store: the source of truth for what was seen and what is owed.

One class, ``Store``, made of one part per concern, each in its own module:
seen events (``seen``), rooms and instances (``leases``), the outbox (``outbox``),
webhooks' delivery states (``webhooks``), discovered rooms (``discovered``).
"""

from __future__ import annotations

from poller.store.base import store_error
from poller.store.discovered import DiscoveredRooms, Listing, Pace
from poller.store.leases import Leases, RoomLease
from poller.store.outbox import (
    AttemptRecord,
    AttemptRow,
    Claim,
    DeliveryFilter,
    DeliveryRow,
    EventFilter,
    Outbox,
)
from poller.store.seen import PageOutcome, SeenEvents, WebhookFilter
from poller.store.webhooks import WebhookRow, WebhookStates

__all__ = [
    "AttemptRecord",
    "AttemptRow",
    "Claim",
    "DeliveryFilter",
    "DeliveryRow",
    "EventFilter",
    "Listing",
    "Pace",
    "PageOutcome",
    "RoomLease",
    "Store",
    "WebhookFilter",
    "WebhookRow",
    "store_error",
]


class Store(SeenEvents, Leases, Outbox, WebhookStates, DiscoveredRooms):
    """Every operation the daemon and its commands make on the database."""
