"""One page of the events API: its ids cheaply, its events exactly as the API wrote them.

Why two steps: a poll re-reads a room's whole history (the API has no "since"
filter), so nearly every event on a page is already known. The ids are read
with a typed msgspec decode that skips every other value; only the events
whose ids are new are validated and turned into bodies.

Why numbers are copied as the API wrote them: decoding them to floats
changed values (``1.00000000000000001`` became ``1.0``, ``1e400`` became
``Infinity``). A body is the event decoded with every number kept as its
literal (``msgspec.Raw``) and encoded again compactly, so strings come out as
raw UTF-8 (the contract) and numbers digit for digit.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from poller.events import Event

__all__ = ["MAX_ID_LENGTH", "MalformedPage", "Page", "Skipped", "parse_page"]

# The store's columns: PostgreSQL refuses longer values, and one refused value
# would fail the whole page's transaction.
MAX_ID_LENGTH = 255
MAX_TYPE_LENGTH = 255
MAX_TIMESTAMP_LENGTH = 64
_MAX_LOGGED_ID = 64  # a malformed event's "id" may be anything; keep logs bounded


class MalformedPage(Exception):
    """A 2xx response whose body is not a page of events."""


@dataclass(frozen=True, slots=True)
class Skipped:
    """An entry of a page that is not a usable event, and why."""

    event_id: str | None
    reason: str


class _Head(msgspec.Struct):
    id: str
    type: str


class _HeadPage(msgspec.Struct):
    events: list[_Head] | None  # required; a Go backend renders an empty slice as null
    next: str | None = None


class _RawPage(msgspec.Struct):
    events: list[msgspec.Raw] | None
    next: str | None = None


class _Entry(msgspec.Struct):
    id: str
    type: str
    data: dict[str, msgspec.Raw]
    # Kept in the store only when it is a short string. Raw: read as Any, a number past
    # a float's range (1e400) failed the whole entry, and the event was never delivered.
    timestamp: msgspec.Raw = msgspec.Raw(b"null")


# msgspec raises RecursionError, not DecodeError, for JSON nested too deeply for it
# (a few thousand levels): such a body is unreadable the same way.
_UNREADABLE = (msgspec.DecodeError, RecursionError)

_HEAD = msgspec.json.Decoder(_Head)
_HEAD_PAGE = msgspec.json.Decoder(_HeadPage)
_RAW_PAGE = msgspec.json.Decoder(_RawPage)
_ENTRY = msgspec.json.Decoder(_Entry)
_TEXT = msgspec.json.Decoder(str)
_ENCODER = msgspec.json.Encoder()

# An entry of a slowly parsed page: its JSON bytes, or why it is unusable.
_Raw = bytes | msgspec.Raw | Skipped


@dataclass(frozen=True, slots=True)
class Page:
    """One page: the ids of its usable-looking events, what was skipped, the next cursor."""

    ids: tuple[str, ...]  # in page order, repeats kept
    skipped: tuple[Skipped, ...]
    next: str | None
    body: bytes
    # Set when the page needed the slow parse; else decoded again from ``body`` on demand.
    raws: tuple[_Raw, ...] | None = None

    @property
    def size(self) -> int:
        """Entries on the page, usable or not."""
        return len(self.ids) + len(self.skipped)

    def events(self, room_id: str, wanted: Collection[str]) -> tuple[list[Event], list[Skipped]]:
        """The events whose ids are in ``wanted``, bodies exact; and those found unusable."""
        # Decoding again cannot fail: the same bytes were read as a page of ids.
        raws: Sequence[_Raw] = (
            self.raws if self.raws is not None else _RAW_PAGE.decode(self.body).events or ()
        )
        events: list[Event] = []
        skipped: list[Skipped] = []
        for raw in raws:
            if isinstance(raw, Skipped):
                continue  # counted when the page was read
            try:
                entry = _ENTRY.decode(raw)
            except msgspec.ValidationError as exc:
                # Only on a page read the fast way: its id and type were fine, the rest is not.
                head = _HEAD.decode(raw)
                if head.id in wanted:
                    skipped.append(Skipped(_loggable(head.id), _validation_reason(exc)))
                continue
            if entry.id not in wanted:
                continue
            event = _to_event(entry, raw, room_id)
            if isinstance(event, Skipped):
                skipped.append(event)
            else:
                events.append(event)
        return events, skipped


def parse_page(body: bytes, *, max_events: int) -> Page:
    """Read a page's ids and cursor; raise MalformedPage when the body is not a page."""
    try:
        doc = _HEAD_PAGE.decode(body)
    except _UNREADABLE:
        # Some entry is odd (or the JSON is: NaN, a lone surrogate): per entry, slowly.
        return _parse_slowly(body, max_events)
    heads = doc.events or []
    _check_count(len(heads), max_events)
    ids: list[str] = []
    skipped: list[Skipped] = []
    for head in heads:
        problem = _head_problem(head.id, head.type)
        if problem is None:
            ids.append(head.id)
        else:
            skipped.append(Skipped(_loggable(head.id), problem))
    return Page(tuple(ids), tuple(skipped), doc.next or None, body)


def _parse_slowly(body: bytes, max_events: int) -> Page:
    try:
        doc = _RAW_PAGE.decode(body)
    except _UNREADABLE:
        raws, next_ = _parse_with_stdlib(body)
    else:
        raws, next_ = list(doc.events or ()), doc.next
    _check_count(len(raws), max_events)
    ids: list[str] = []
    entries: list[_Raw] = []
    for raw in raws:
        entry = raw if isinstance(raw, Skipped) else _head_of(raw)
        if isinstance(entry, Skipped):
            entries.append(entry)
        else:
            ids.append(entry)
            entries.append(raw)
    skipped = tuple(e for e in entries if isinstance(e, Skipped))
    return Page(tuple(ids), skipped, next_ or None, body, tuple(entries))


def _head_of(raw: bytes | msgspec.Raw) -> str | Skipped:
    """The entry's id, or why it has no usable one."""
    try:
        head = _ENTRY.decode(raw)
    except msgspec.ValidationError as exc:
        return Skipped(_raw_id(raw), _validation_reason(exc))
    except _UNREADABLE:
        return Skipped(None, "not JSON")
    problem = _head_problem(head.id, head.type)
    return head.id if problem is None else Skipped(_loggable(head.id), problem)


class _NotJson:
    """Stands for NaN or Infinity, which the stdlib parser accepts and JSON does not."""


def _loads(data: bytes) -> Any:
    """Decode JSON leaving every number as its literal; NaN and Infinity as ``_NotJson``.

    surrogateescape: bad UTF-8 then spoils only the strings that hold it, which
    cannot be encoded again (so only the entry that holds them is skipped).
    """
    return json.loads(
        data.decode("utf-8", "surrogateescape"),
        parse_constant=lambda _name: _NotJson(),
        parse_float=_literal,
        parse_int=_literal,
    )


def _literal(text: str) -> msgspec.Raw:
    # Encoded back verbatim by msgspec; also spares Python's int() its limit on digits.
    return msgspec.Raw(text.encode())


def _encode(obj: object) -> bytes | str:
    """Compact JSON of a ``_loads`` result, or why it cannot be written."""
    try:
        return _ENCODER.encode(obj)
    except TypeError:
        return "NaN or Infinity is not JSON"
    except (UnicodeEncodeError, ValueError, RecursionError):
        return "not valid Unicode (bad UTF-8 or a lone surrogate)"


def _parse_with_stdlib(body: bytes) -> tuple[list[_Raw], str | None]:
    """The tolerant parse: the page as a whole is readable, some entries may not be."""
    try:
        doc = _loads(body)
    except (ValueError, RecursionError):
        raise MalformedPage("not JSON") from None
    if not isinstance(doc, dict):
        raise MalformedPage("not an object")
    if "events" not in doc:
        raise MalformedPage("no 'events'")
    raw_events = doc["events"] if doc["events"] is not None else []
    if not isinstance(raw_events, list):
        raise MalformedPage("'events' is not a list")
    next_ = doc.get("next")
    if next_ is not None and not isinstance(next_, str):
        raise MalformedPage("'next' is not a string")
    if next_ is not None and _unencodable(next_):
        raise MalformedPage("'next' is not valid Unicode")
    raws: list[_Raw] = []
    for obj in raw_events:
        encoded = _encode(obj)
        raws.append(encoded if isinstance(encoded, bytes) else Skipped(_obj_id(obj), encoded))
    return raws, next_


def _check_count(count: int, max_events: int) -> None:
    if count > max_events:
        raise MalformedPage(f"{count} events on one page, more than poll.max_page_events")


def _head_problem(event_id: str, event_type: str) -> str | None:
    """What makes an id or type unusable as a key in the store, or None."""
    if not event_id:
        return "missing or invalid id"
    if not event_type:
        return "missing or invalid type"
    if len(event_id) > MAX_ID_LENGTH:
        return f"id longer than {MAX_ID_LENGTH} characters"
    if len(event_type) > MAX_TYPE_LENGTH:
        return f"type longer than {MAX_TYPE_LENGTH} characters"
    if "\x00" in event_id or "\x00" in event_type:
        return "NUL character in id or type"
    return None


def _to_event(entry: _Entry, raw: bytes | msgspec.Raw, room_id: str) -> Event | Skipped:
    try:
        encoded = _encode(_loads(bytes(raw)))
    except (ValueError, RecursionError):
        encoded = "not JSON"
    if isinstance(encoded, str):
        return Skipped(_loggable(entry.id), encoded)
    return Event(
        id=entry.id,
        type=entry.type,
        timestamp=_timestamp(entry.timestamp),
        room_id=room_id,
        body=encoded.decode("utf-8"),
    )


def _timestamp(raw: msgspec.Raw) -> str:
    """The event's timestamp for the store's column; odd ones are kept only in the body."""
    try:
        value = _TEXT.decode(raw)
    except _UNREADABLE:  # not a string
        return ""
    return value if len(value) <= MAX_TIMESTAMP_LENGTH and "\x00" not in value else ""


def _validation_reason(exc: msgspec.ValidationError) -> str:
    text = str(exc)
    if "`$.id`" in text or "field `id`" in text:
        return "missing or invalid id"
    if "`$.type`" in text or "field `type`" in text:
        return "missing or invalid type"
    if "`$.data`" in text or "field `data`" in text:
        return "data is not an object"
    return "not an object"


def _raw_id(raw: bytes | msgspec.Raw) -> str | None:
    try:
        obj: Any = msgspec.json.decode(raw)
    except _UNREADABLE:
        return None
    return _obj_id(obj)


def _obj_id(obj: object) -> str | None:
    event_id = obj.get("id") if isinstance(obj, dict) else None
    return _loggable(event_id) if isinstance(event_id, str) else None


def _loggable(event_id: str) -> str:
    text = event_id[:_MAX_LOGGED_ID]
    return text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")


def _unencodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False
