"""Config inputs the Hypothesis fuzzing (tests/fuzz) found ending in a traceback or two lines.

Kept apart from test_config.py so that each finding reads as the regression it is.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from poller.config import format_duration, load_config, parse_duration
from poller.errors import ConfigError

VALID = """
[hms]
access_key = "ak"
{secret}

[[rooms]]
id = "r"

[[webhooks]]
name = "w"
url = "https://example.com/hook"
secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
"""


APP_SECRET_LINE = 'app_secret = "s"'


def config(top: str = "", *, secret: str = APP_SECRET_LINE, tail: str = "") -> str:
    """A valid config with ``top`` before its tables, ``tail`` after them."""
    return top + VALID.format(secret=secret) + tail


def error_of(tmp_path: Path, text: str) -> ConfigError:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    assert len(message.splitlines()) == 1, message
    return info.value


def test_an_integer_of_thousands_of_digits_is_a_config_error(tmp_path: Path) -> None:
    # tomllib's int() raised a plain ValueError past Python's digit limit.
    digits = sys.get_int_max_str_digits() + 1
    error = error_of(tmp_path, config(f"shutdown_grace = {'9' * digits}\n"))
    assert error.problem == f"invalid TOML: an integer of more than {digits - 1} digits"


def test_arrays_nested_too_deeply_are_a_config_error(tmp_path: Path) -> None:
    error = error_of(tmp_path, config("x = " + "[" * 5000 + "]" * 5000 + "\n"))
    assert error.problem == "invalid TOML: arrays or tables nested too deeply"


@pytest.mark.parametrize(
    ("text", "key"),
    [
        (config(f"shutdown_grace = {'9' * 400}\n"), "shutdown_grace"),
        (config(tail=f"[poll]\ninterval = {'9' * 400}\n"), "poll.interval"),
    ],
)
def test_a_duration_past_a_floats_range_is_a_config_error(
    tmp_path: Path, text: str, key: str
) -> None:
    # float() of such an integer raised OverflowError, which pydantic let through.
    error = error_of(tmp_path, text)
    assert (error.key, error.problem) == (key, "must be a finite duration")


def test_parse_duration_of_a_huge_integer_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="finite"):
        parse_duration(10**400)


def test_a_secret_file_name_with_nul_is_a_config_error(tmp_path: Path) -> None:
    # open() would raise ValueError ("embedded null byte"): no config string holds NUL.
    error = error_of(tmp_path, config(secret='app_secret_file = "a\\u0000b"'))
    assert (error.key, error.problem) == (
        "hms.app_secret_file",
        "must not contain NUL characters",
    )


def test_a_newline_in_a_quoted_name_stays_on_one_line(tmp_path: Path) -> None:
    error = error_of(tmp_path, config(secret='app_secret_file = "no\\nsuch"'))
    assert "no\\nsuch" in str(error)


def test_an_unknown_key_with_a_line_break_stays_on_one_line(tmp_path: Path) -> None:
    error = error_of(tmp_path, config('"a\\u2028b" = 1\n'))
    assert str(error).endswith('"a\\u2028b": unknown key')


@pytest.mark.parametrize("seconds", [1e-9, 1.5e-8, 5e-324])
def test_tiny_durations_format_without_an_exponent_and_parse_back(seconds: float) -> None:
    text = format_duration(seconds)
    assert "e" not in text.removesuffix("ms")
    assert parse_duration(text) == pytest.approx(seconds, rel=1e-5, abs=1e-300)
