"""Reading a page: ids the fast way, odd entries one by one, bodies exactly as written."""

from __future__ import annotations

import json

import pytest

from poller.hms.page import MalformedPage, Page, parse_page


def entry(event_id: str = "e1", data: str = '{"n":1}', **extra: str) -> str:
    fields = {"version": '"2.0"', "id": json.dumps(event_id), "timestamp": '"t"'}
    fields |= {"type": '"beam.recording.success"', "data": data, **extra}
    return "{" + ",".join(f'"{k}":{v}' for k, v in fields.items()) + "}"


def page(*entries: str, next_: str = "null") -> bytes:
    return ('{"limit":100,"next":' + next_ + ',"events":[' + ",".join(entries) + "]}").encode()


def events(p: Page) -> list[str]:
    found, _ = p.events("room", frozenset(p.ids))
    return [e.body for e in found]


def test_a_well_formed_page_is_read_the_fast_way() -> None:
    p = parse_page(page(entry("a"), entry("b"), next_='"cursor"'), max_events=10)
    assert (p.ids, p.skipped, p.next, p.raws) == (("a", "b"), (), "cursor", None)
    assert p.size == 2


def test_only_wanted_events_get_bodies() -> None:
    p = parse_page(page(entry("a"), entry("b")), max_events=10)
    found, skipped = p.events("room", frozenset({"b"}))
    assert [e.id for e in found] == ["b"]
    assert skipped == []
    assert found[0].room_id == "room"


def test_bodies_are_compact_with_literals_kept_and_text_as_utf8() -> None:
    data = '{ "a" : 1.50 , "b" : 1e400, "c" : -0.0, "s" : "caf\\u00e9 \\ud83d\\ude00" }'
    p = parse_page(page(entry("a", data)), max_events=10)
    assert events(p) == [
        '{"version":"2.0","id":"a","timestamp":"t","type":"beam.recording.success",'
        '"data":{"a":1.50,"b":1e400,"c":-0.0,"s":"café 😀"}}'
    ]


@pytest.mark.parametrize(
    ("entry_text", "reason"),
    [
        ('"just a string"', "not an object"),
        (entry("", "{}"), "missing or invalid id"),
        (entry("x" * 256), "id longer than 255 characters"),
        (entry("a\x00b"), "NUL character in id or type"),
        (entry("a", "[]"), "data is not an object"),
        (entry("a", '{"n":NaN}'), "NaN or Infinity is not JSON"),
        (entry("a", '{"s":"\\udc00"}'), "not valid Unicode (bad UTF-8 or a lone surrogate)"),
    ],
)
def test_an_odd_entry_is_skipped_with_its_reason_and_the_rest_kept(
    entry_text: str, reason: str
) -> None:
    p = parse_page(page(entry("good"), entry_text), max_events=10)
    found, unusable = p.events("room", frozenset(p.ids))
    assert [e.id for e in found] == ["good"]
    assert [s.reason for s in [*p.skipped, *unusable]] == [reason]


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"not json", "not JSON"),
        (b"[]", "not an object"),
        (b'{"next":null}', "no 'events'"),
        (b'{"events":{}}', "'events' is not a list"),
        (b'{"events":[],"next":7}', "'next' is not a string"),
    ],
)
def test_a_body_that_is_not_a_page(body: bytes, problem: str) -> None:
    with pytest.raises(MalformedPage, match=problem):
        parse_page(body, max_events=10)


def test_null_events_and_an_empty_cursor_are_an_empty_last_page() -> None:
    p = parse_page(b'{"events":null,"next":""}', max_events=10)
    assert (p.ids, p.next) == ((), None)


def test_too_many_events() -> None:
    with pytest.raises(MalformedPage, match="max_page_events"):
        parse_page(page(entry("a"), entry("b"), entry("c")), max_events=2)


# Found by tests/fuzz/test_page_fuzz.py: msgspec raises RecursionError, not DecodeError,
# for JSON nested a few thousand levels deep, and it escaped the parser.
@pytest.mark.parametrize(
    "body",
    [
        page("[" * 100_000 + "]" * 100_000),
        page(entry("a", '{"x":' + "[" * 3000 + "]" * 3000 + "}")),
    ],
)
def test_json_nested_too_deeply_is_a_malformed_page(body: bytes) -> None:
    with pytest.raises(MalformedPage, match="not JSON"):
        parse_page(body, max_events=10)


@pytest.mark.parametrize("timestamp", ["1e400", "9" * 5000, "[1]", "null"])
def test_an_event_with_an_odd_timestamp_is_delivered_with_it_in_the_body(timestamp: str) -> None:
    # Found by the fuzzing: read as Any, 1e400 made the whole entry unusable.
    p = parse_page(page(entry("a", timestamp=timestamp)), max_events=10)
    found, unusable = p.events("room", frozenset(p.ids))
    assert unusable == []
    assert [e.timestamp for e in found] == [""]
    assert f'"timestamp":{timestamp},' in found[0].body
