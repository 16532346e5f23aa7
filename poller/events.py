"""Domain values shared by the source, the store and delivery."""

from __future__ import annotations

from dataclasses import dataclass

# Every event type the 100ms analytics events API serves (its documentation, 2026). A type
# it adds later is accepted once named in hms.extra_event_types.
KNOWN_EVENT_TYPES: tuple[str, ...] = (
    "beam.recording.success",
    "track.add.success",
    "track.update.success",
    "track.remove.success",
    "client.publish.failed",
    "client.subscribe.failed",
    "client.join.failed",
    "client.disconnected",
    "client.connect.failed",
)


@dataclass(frozen=True, slots=True)
class Event:
    """One 100ms event, with its body kept exactly as the API sent it.

    ``body`` is the event object re-serialised as compact UTF-8 JSON (values
    and their JSON types unchanged); it is what every webhook receives.
    """

    id: str
    type: str
    timestamp: str
    room_id: str
    body: str
