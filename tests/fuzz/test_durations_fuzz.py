"""Durations: any value gives seconds in range or one clear error; format/parse round trip."""

from __future__ import annotations

import math

from hypothesis import example, given
from hypothesis import strategies as st

from poller.config.durations import DURATION_PATTERN, format_duration, parse_duration
from tests.fuzz.outcome import outcome

DURATION_TEXT = st.from_regex(DURATION_PATTERN, fullmatch=True)
ANY_VALUE = st.one_of(
    st.text(),
    st.text(alphabet="0123456789.mshd -+e_", max_size=30),
    DURATION_TEXT,
    st.integers(),
    st.floats(),
    st.booleans(),
    st.none(),
    st.lists(st.integers(), max_size=2),
)


@given(value=ANY_VALUE)
@example(value=10**400)
@example(value=-(10**400))
@example(value="9" * 400 + "h")
@example(value="1e3s")
@example(value="-0s")
@example(value=float("nan"))
def test_any_value_is_seconds_in_range_or_one_clear_error(value: object) -> None:
    seconds = outcome(lambda: parse_duration(value), ValueError)
    if isinstance(seconds, ValueError):
        assert len(str(seconds).splitlines()) == 1, seconds
        return
    assert isinstance(seconds, float)
    assert math.isfinite(seconds)
    assert seconds >= 0


@given(text=DURATION_TEXT)
def test_every_string_the_schema_allows_parses_or_is_too_large(text: str) -> None:
    # The JSON Schema's pattern is what editors accept: the loader must not disagree,
    # except for values past a float's range.
    seconds = outcome(lambda: parse_duration(text), ValueError)
    if isinstance(seconds, ValueError):
        assert "finite" in str(seconds), (text, seconds)
    else:
        assert seconds >= 0


@given(seconds=st.floats(min_value=0, max_value=1e9, allow_nan=False))
@example(seconds=1e-9)
@example(seconds=5e-324)
@example(seconds=0.9999999)
@example(seconds=59.9996)
def test_format_then_parse_is_the_same_duration(seconds: float) -> None:
    text = format_duration(seconds)
    back = parse_duration(text)
    # Below a second six significant digits are shown; from a second on, milliseconds.
    assert math.isclose(back, seconds, rel_tol=1e-5, abs_tol=0.0005), (seconds, text, back)
    # One more turn changes nothing (0.9999999 shows as "1000ms", then as "1s").
    assert format_duration(parse_duration(format_duration(back))) == format_duration(back)


@given(millis=st.integers(min_value=0, max_value=10**12))
def test_whole_milliseconds_round_trip_exactly(millis: int) -> None:
    seconds = millis / 1000
    assert math.isclose(parse_duration(format_duration(seconds)), seconds, abs_tol=1e-9)
