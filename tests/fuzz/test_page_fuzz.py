"""The page parser: any bytes give events or a counted skip; valid events stay byte-exact.

Structured pages are built from a tree whose numbers are literals (``Lit``), so the test
knows the exact text each one must keep, and rendered twice: as the API might send it
(blanks anywhere, escapes or raw UTF-8) and as the compact body the contract promises.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from hypothesis import event, example, given
from hypothesis import strategies as st

from poller.hms.page import MAX_ID_LENGTH, MalformedPage, Page, parse_page
from tests.fuzz.outcome import outcome

MAX_EVENTS = 50


@dataclass(frozen=True)
class Lit:
    """A JSON number, or a NaN/Infinity literal, exactly as written."""

    text: str

    @property
    def is_json(self) -> bool:
        return self.text not in ("NaN", "Infinity", "-Infinity")


def strict_json(text: str) -> Any:
    """Parse JSON, refusing NaN and Infinity; numbers stay text (no digit limit)."""

    def refuse(name: str) -> Any:
        raise AssertionError(f"{name} in a body")

    return json.loads(text, parse_int=Lit, parse_float=Lit, parse_constant=refuse)


def read(body: bytes) -> Page | None:
    """Parse ``body``; only a Page or MalformedPage may come out, and events() must not fail."""
    page = outcome(lambda: parse_page(body, max_events=MAX_EVENTS), MalformedPage)
    if isinstance(page, MalformedPage):
        assert str(page)
        event(f"malformed: {str(page)[:30]}")
        return None
    found, skipped = page.events("room", frozenset(page.ids))
    for e in found:
        assert e.id in page.ids
        assert e.room_id == "room"
        strict_json(e.body)  # a body is JSON, whatever the page held
    event(
        f"page: {min(len(found), 3)}+ events, {min(len(skipped) + len(page.skipped), 3)}+ skipped"
    )
    return page


@given(body=st.binary(max_size=2000))
@example(body=b"")
@example(body=b"null")
@example(body=b'{"events":null}')
@example(body=b'{"events":[{"id":"a","type":"t","data":{}}],"next":"\\ud800"}')
@example(body=b'{"events":[' + b"[" * 100_000 + b"]" * 100_000 + b"]}")
@example(body=b'{"events":[{"id":"a","type":"t","data":{"x":' + b"[" * 3000 + b"]" * 3000 + b"}}]}")
@example(body=b'{"events":[{"id":"a","type":"t","data":{"n":' + b"9" * 10_000 + b"}}]}")
def test_any_bytes_give_a_page_or_malformed(body: bytes) -> None:
    read(body)


JSON_TEXT = st.text(st.characters(codec="utf-8"), max_size=30)
# JSON's grammar for numbers, plus the literals Python's parser takes and JSON does not.
NUMBERS = st.one_of(
    st.from_regex(r"-?(0|[1-9][0-9]{0,30})(\.[0-9]{1,30})?([eE][+-]?[0-9]{1,4})?", fullmatch=True),
    st.sampled_from(["9" * 400, "-0", "-0.0", "1.00000000000000001", "1e400", "5e-324", "33"]),
).map(Lit)
HOSTILE_NUMBERS = st.sampled_from(["NaN", "Infinity", "-Infinity"]).map(Lit)
HOSTILE_TEXT = st.sampled_from(["\ud800", "a\udc00b", "\udfff\ud800"])  # lone surrogates
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, JSON_TEXT, st.just("\x00"))
VALID_VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(JSON_TEXT, inner, max_size=3),
    max_leaves=12,
)
HOSTILE_VALUES = st.recursive(
    st.one_of(SCALARS, HOSTILE_NUMBERS, HOSTILE_TEXT),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(JSON_TEXT, inner, max_size=3),
    max_leaves=12,
)


def nested(value: Any, depth: int) -> Any:
    for _ in range(depth):
        value = [value]
    return value


@dataclass(frozen=True)
class Entry:
    tree: Any  # what the page holds at this position

    @property
    def valid(self) -> bool:
        """Whether poller must deliver it: an id and type the store can key, JSON throughout."""
        tree = self.tree
        if not (isinstance(tree, dict) and isinstance(tree.get("data"), dict)):
            return False
        event_id, event_type = tree.get("id"), tree.get("type")
        return (
            isinstance(event_id, str)
            and isinstance(event_type, str)
            and 0 < len(event_id) <= MAX_ID_LENGTH
            and 0 < len(event_type) <= MAX_ID_LENGTH
            and "\x00" not in event_id + event_type
            and json_safe(tree)
        )


def json_safe(tree: Any) -> bool:
    if isinstance(tree, Lit):
        return tree.is_json
    if isinstance(tree, str):
        return not any(0xD800 <= ord(c) <= 0xDFFF for c in tree)
    if isinstance(tree, list):
        return all(json_safe(v) for v in tree)
    if isinstance(tree, dict):
        return all(json_safe(k) and json_safe(v) for k, v in tree.items())
    return True


def render(tree: Any, *, blank: str = "", ascii_only: bool = False) -> str:
    """JSON text of ``tree``: numbers as their literals, ``blank`` between tokens."""
    if isinstance(tree, Lit):
        return tree.text
    if isinstance(tree, str) or tree is None or isinstance(tree, bool):
        return json.dumps(tree, ensure_ascii=ascii_only)
    comma, colon = f"{blank},{blank}", f"{blank}:{blank}"
    if isinstance(tree, list):
        return (
            "["
            + blank
            + comma.join(render(v, blank=blank, ascii_only=ascii_only) for v in tree)
            + blank
            + "]"
        )
    items = (
        render(k, ascii_only=ascii_only) + colon + render(v, blank=blank, ascii_only=ascii_only)
        for k, v in tree.items()
    )
    return "{" + blank + comma.join(items) + blank + "}"


@st.composite
def entries(draw: st.DrawFn, index: int) -> Entry:
    event_id = draw(
        st.one_of(
            st.just(f"event-{index}"),
            st.just(f"événement-{index}-😀"),
            st.just(f"e{index}-" + "x" * MAX_ID_LENGTH),  # too long
            st.just(f"e{index}\x00"),
            st.just(f"e{index}\ud800"),
            st.just(""),
            st.integers().map(lambda n: Lit(str(n))),
            st.none(),
        )
    )
    fields: dict[str, Any] = {
        "version": "2.0",
        "id": event_id,
        "timestamp": draw(st.one_of(st.just("2023-01-09T06:18:29.462240675Z"), VALID_VALUES)),
        "type": draw(
            st.sampled_from(["beam.recording.success", "", "t" * 300, "a\x00"]) | JSON_TEXT
        ),
        "data": draw(
            st.one_of(
                st.dictionaries(JSON_TEXT, VALID_VALUES, max_size=5),
                st.dictionaries(JSON_TEXT, HOSTILE_VALUES, max_size=5),
                st.builds(lambda v, d: {"deep": nested(v, d)}, VALID_VALUES, st.integers(1, 60)),
                VALID_VALUES,
            )
        ),
    }
    for key in draw(st.lists(st.sampled_from(sorted(fields)), max_size=1)):
        del fields[key]  # a missing field
    tree = draw(st.one_of(st.just(fields), st.just(fields), VALID_VALUES))
    return Entry(tree)


@st.composite
def pages(draw: st.DrawFn) -> tuple[bytes, list[Entry]]:
    count = draw(st.integers(0, 8))
    items = [draw(entries(i)) for i in range(count)]
    blank = draw(st.sampled_from(["", " ", "\n  ", "\t"]))
    ascii_only = draw(st.booleans())
    events = ("," + blank).join(render(e.tree, blank=blank, ascii_only=ascii_only) for e in items)
    text = (
        "{"
        + blank
        + f'"limit":{blank}100,{blank}"total":{count},{blank}"next":{blank}'
        + draw(st.sampled_from(['""', "null", '"cursor"']))
        + f',{blank}"events":{blank}[{events}]{blank}}}'
    )
    # Lone surrogates written raw become bytes that are not UTF-8: bad input, too.
    return text.encode("utf-8", "surrogatepass"), items


@given(page_and_entries=pages())
def test_valid_events_survive_byte_exact_and_the_rest_is_counted(
    page_and_entries: tuple[bytes, list[Entry]],
) -> None:
    body, items = page_and_entries
    page = read(body)
    assert page is not None, body
    found, skipped = page.events("room", frozenset(page.ids))
    by_id = {e.id: e.body for e in found}
    expected = {e.tree["id"]: render(e.tree) for e in items if e.valid}
    # Every valid event comes out exactly as the compact rendering of what was sent.
    assert by_id == expected
    # Every entry is either an event or counted as skipped (ids are distinct per entry,
    # but invalid entries may share one, such as "" or a missing id).
    assert len(found) + len(skipped) + len(page.skipped) == len(items)
    assert page.size == len(items)
