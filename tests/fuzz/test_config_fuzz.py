"""Any TOML document gives a valid Config or one clear ConfigError: never a traceback.

Three kinds of documents: a valid config with values mutated (wrong types, huge or
negative numbers, odd strings, unknown keys, bad durations and URLs, keys dropped),
the same with a raw TOML literal spliced in where ``tomli_w`` cannot write one (a
5000-digit integer, ``nan``, a date), and raw text or bytes.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import string
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import tomli_w
from hypothesis import event, example, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context

from poller.config import Config, describe, load_config
from poller.errors import ConfigError
from tests.fuzz.outcome import outcome

APP_SECRET = "fuzz-app-secret-Qm4Zt8Lw"
WEBHOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SECRETS = (APP_SECRET, WEBHOOK_SECRET, WEBHOOK_SECRET.removeprefix("whsec_"))
RAW = "@@raw-literal@@"
INDEX = re.compile(r"\[\d+\]")  # a string value replaced by a raw TOML literal after dumping


def base_config() -> dict[str, Any]:
    """A valid config touching every table, for mutations to start from."""
    return {
        "shutdown_grace": "5s",
        "instance_id": "fuzz-1",
        "hms": {
            "base_url": "http://127.0.0.1:9/v2",
            "access_key": "ak",
            "app_secret": APP_SECRET,
            "event_types": ["beam.recording.success"],
            "request_timeout": "10s",
        },
        "poll": {"interval": "30s", "page_size": 100, "backfill": True, "lease_ttl": 60},
        "store": {"url": "sqlite+aiosqlite:////tmp/poller-fuzz-never-opened.db"},
        "delivery": {"timeout": 0.5, "retry_schedule": ["1s", "5m"], "max_concurrency": 4},
        "server": {"listen": "127.0.0.1:9464"},
        "log": {"level": "info", "format": "json"},
        "rooms": [{"id": "room-a"}, {"id": "room-b"}],
        "webhooks": [
            {
                "name": "hook",
                "url": "https://example.com/hook",
                "secret": WEBHOOK_SECRET,
                "event_types": ["beam.recording.success"],
                "rooms": ["room-a"],
                "headers": {"X-Api-Key": "k"},
                "max_concurrency": 2,
            }
        ],
    }


def leaves(node: Any, path: tuple[str | int, ...] = ()) -> list[tuple[str | int, ...]]:
    """Every path to a value (tables and arrays included) in a config tree."""
    found: list[tuple[str | int, ...]] = [path] if path else []
    items = (
        node.items()
        if isinstance(node, dict)
        else enumerate(node)
        if isinstance(node, list)
        else ()
    )
    for key, child in items:
        found.extend(leaves(child, (*path, key)))
    return found


ODD_TEXT = st.sampled_from(
    [
        "",
        " ",
        "\t\n",
        "\x00",
        "a\x00b",
        "a\nb",
        "a\u2028b",
        "a\x85b",
        "\u202e",
        "é",
        "😀",
        "-1s",
        "1e3s",
        "1h-5m",
        "nan",
        "inf",
        "infs",
        "0",
        "0s",
        "1" * 400 + "h",
        "99999999999999999999999h",
        ".5ms",
        "5 m",
        "http://",
        "https://:99999/",
        "http://[::1/",
        "ftp://example.com/",
        "http://exa mple.com/",
        "https://example.com/?q=1#f",
        "sqlite://",
        "mysql://u:p@h/db",
        "postgresql+asyncpg://u:p@[::1/db",
        "whsec_",
        "whsec_!!!!",
        "whsec_c2hvcnQ=",
        "[::1]:99999",
        "::1:80",
        "host:",
        ":80",
        "DEBUG",
        "Verbose",
        "Webhook-Id",
        "content-type",
        "bad header",
        "room-b",
        "room-a",
        "hook",
        "HOOK",
        "a" * 5000,
        "${CREDENTIALS_DIRECTORY}/x",
        "$CREDENTIALS_DIRECTORY",
        "../../../../nonexistent",
        "/",
    ]
)
SCALARS = st.one_of(
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.sampled_from([0, -1, 1, 100, 101, 2**63 - 1, -(2**63), 10**30]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(st.characters(exclude_categories=["Cs"]), max_size=40),
    ODD_TEXT,
    st.datetimes(timezones=st.none() | st.just(dt.UTC)),
    st.dates(),
    st.times(),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.text(string.ascii_letters + "_-", min_size=1, max_size=8), inner, max_size=4
        )
    ),
    max_leaves=8,
)
RAW_LITERALS = st.sampled_from(
    [
        "9" * 5000,  # past Python's digit limit for int(): tomllib raises ValueError
        "-" + "9" * 400,
        "9" * 400,
        "1e400",
        "-1e400",
        "nan",
        "+inf",
        "-inf",
        "0x7fffffffffffffff",
        "0o777",
        "0b101",
        "1979-05-27T07:32:00Z",
        "1979-05-27",
        "07:32:00",
        "'''multi\nline'''",
        '"\\u0000"',
        '"a\\u0000b"',
        "{}",
        "[]",
        "[[], {}]",
        "{ a = { b = { c = 1 } } }",
    ]
)


DURATIONS = st.one_of(
    st.floats(min_value=0, max_value=1e6),
    st.integers(min_value=0, max_value=10**6),
    st.builds(
        lambda n, unit: f"{n:g}{unit}",
        st.floats(min_value=0, max_value=1e4, allow_nan=False),
        st.sampled_from(["ms", "s", "m", "h", "", "d", "S"]),
    ),
)


def plausible(original: Any) -> st.SearchStrategy[Any]:
    """Values of the original's kind: mostly valid, sometimes just out of range."""
    if isinstance(original, bool):
        return st.booleans()
    if isinstance(original, int):
        return st.integers(min_value=-2, max_value=200)
    if isinstance(original, float) or (
        isinstance(original, str) and original[-1:] in "sm" and original[:1].isdigit()
    ):
        return DURATIONS
    if isinstance(original, str):
        return st.text(st.characters(exclude_categories=["Cs"]), min_size=0, max_size=12) | ODD_TEXT
    if isinstance(original, list) and original and isinstance(original[0], str):
        return st.lists(plausible(original[0]), max_size=3)
    return VALUES


@st.composite
def mutated_config(draw: st.DrawFn) -> str:
    """A valid config's TOML text after a few mutations."""
    doc = base_config()
    for _ in range(draw(st.integers(1, 3))):
        paths = leaves(doc)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        *parent_path, key = path
        parent: Any = doc
        for part in parent_path:
            parent = parent[part]
        action = draw(
            st.sampled_from(
                ["plausible", "plausible", "plausible", "any", "raw", "drop", "unknown"]
            )
        )
        if action == "drop":
            del parent[key]
        elif action == "unknown" and isinstance(parent, dict):
            parent[draw(st.text(string.ascii_lowercase + "_", min_size=1, max_size=12))] = draw(
                VALUES
            )
        elif action == "raw":
            parent[key] = RAW
        elif action == "plausible":
            parent[key] = draw(plausible(parent[key]))
        else:
            parent[key] = draw(VALUES)
    if draw(st.booleans()):
        # A secret read from a file instead, of any name: missing, a directory, NUL in it.
        webhooks = doc.get("webhooks")
        tables = [doc.get("hms"), *(webhooks if isinstance(webhooks, list) else [])]
        table = draw(st.sampled_from(tables))
        if isinstance(table, dict):
            name = "app_secret" if "access_key" in table else "secret"
            table.pop(name, None)
            table[f"{name}_file"] = draw(ODD_TEXT | st.text(max_size=20))
    try:
        text = tomli_w.dumps(doc)
    except (TypeError, ValueError):
        # Values TOML cannot hold (NaN in tomli_w's eyes is fine; a 5000-digit int or a
        # key mix it refuses is not): fall back to the unmutated document.
        text = tomli_w.dumps(base_config())
    return text.replace(f'"{RAW}"', draw(RAW_LITERALS))


def note(what: str) -> None:
    """Count an outcome in Hypothesis's statistics (``--hypothesis-show-statistics``)."""
    if currently_in_test_context():
        event(what)


def check(path: Path) -> Config | ConfigError:
    """Load ``path``; only a Config or a one-line ConfigError naming the file may come out."""
    result = outcome(lambda: load_config(path, environ={}), ConfigError)
    if isinstance(result, ConfigError):
        message = str(result)
        assert len(message.splitlines()) == 1, message
        assert message.startswith(f"{path}: "), message
        assert result.path == str(path)
        for secret in SECRETS:
            assert secret not in message, message
        if result.problem.startswith("unknown key"):
            note("ConfigError: unknown key")
        else:
            note("ConfigError at " + INDEX.sub("[i]", result.key or "the file"))
        return result
    assert isinstance(result, Config)
    summary = describe(result)  # check-config prints this: it must not fail, nor leak
    for secret in SECRETS:
        assert secret not in summary
    assert all(math.isfinite(d) and d >= 0 for d in result.delivery.retry_schedule)
    assert 0 < result.poll.interval < math.inf
    note("a valid Config")
    return result


@given(text=mutated_config())
@example(text=tomli_w.dumps(base_config()))
def test_mutated_configs_load_or_fail_with_one_clear_line(text: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.toml"
        path.write_text(text, encoding="utf-8")
        check(path)


def test_the_base_config_is_valid(tmp_path: Path) -> None:
    # Otherwise every mutation above would only ever test an error path.
    path = tmp_path / "config.toml"
    path.write_text(tomli_w.dumps(base_config()))
    assert isinstance(check(path), Config)


@given(text=st.text())
@example(text="a = 1\na = 2")
@example(text="[hms]\nbase_url = 'x'\n[hms]\n")
@example(text="x = " + "[" * 2000 + "]" * 2000)
@example(text="x = " + "[" * 150 + "]" * 150)
@example(text="[hms]\nevent_types = " + "[" * 150 + "]" * 150)
@example(text="x = " + "{a=" * 300 + "1" + "}" * 300)
def test_any_text_loads_or_fails_with_one_clear_line(text: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.toml"
        path.write_bytes(text.encode("utf-8", "surrogatepass"))
        check(path)


@given(data=st.binary())
@example(data=b"\xff\xfe")
@example(data=b'rooms = [{id = "\xc3"}]')
def test_any_bytes_load_or_fail_with_one_clear_line(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.toml"
        path.write_bytes(data)
        check(path)


# A subprocess costs about a second: a handful of documents, more in the long form.
@settings(max_examples=max(5, settings.default.max_examples // 200))
@given(text=mutated_config())
def test_check_config_exits_0_or_2_without_a_traceback(text: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.toml"
        path.write_text(text, encoding="utf-8")
        expected = check(path)
        proc = subprocess.run(
            [sys.executable, "-m", "poller", "check-config", "-c", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
            env={"PATH": "/usr/bin:/bin"},
        )
    assert "Traceback" not in proc.stderr, proc.stderr
    if isinstance(expected, ConfigError):
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.strip() == f"poller: error: {expected}", proc.stderr
    else:
        assert proc.returncode == 0, proc.stderr
    for secret in SECRETS:
        assert secret not in proc.stdout + proc.stderr
