"""Checks and renderings of single config values: type names, URLs, listen addresses."""

from __future__ import annotations

import datetime
import functools
import ipaddress
import re
from urllib.parse import parse_qsl, unquote, urlsplit

import idna
import yarl

__all__ = [
    "HEADER_NAME",
    "STORE_DRIVERS",
    "STORE_URL_PATTERN",
    "header_value_problem",
    "host_problem",
    "http_url_problem",
    "identifier_hint",
    "parse_listen",
    "store_url",
    "stored_length",
    "text_problem",
    "toml_key",
    "type_name",
    "url_origin",
    "url_secrets",
]

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_STORE_DRIVER_ALIASES = {
    "sqlite": "sqlite+aiosqlite",
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
}
STORE_DRIVERS = ("sqlite+aiosqlite", "postgresql+asyncpg")
# For editors (the JSON Schema): the URL schemes store_url() accepts.
STORE_URL_PATTERN = "^({})://".format(
    "|".join(re.escape(d) for d in sorted({*_STORE_DRIVER_ALIASES, *STORE_DRIVERS}))
)
HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 token
# An ASCII host name label as resolvers take it; '_' for names such as Docker services.
_HOST_LABEL = re.compile(r"[A-Za-z0-9_-]+")
_MAX_LABEL = 63  # octets, RFC 1035
_MAX_HOST = 253  # octets, written without the trailing dot


def type_name(value: object) -> str:
    """The TOML name of a value's type, for "expected X, got Y" messages."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, datetime.date | datetime.time):
        return "a date/time"
    return type(value).__name__


def toml_key(name: str) -> str:
    """``name`` as it would be written as one part of a dotted TOML key."""
    if _BARE_KEY.fullmatch(name):
        return name
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def text_problem(value: str) -> str | None:
    """Why no store or driver could hold ``value``, or None: NUL or a lone surrogate.

    PostgreSQL refuses NUL in text, and a lone surrogate (undecodable bytes in an
    environment variable) has no UTF-8 encoding. Never quotes the value.
    """
    if "\0" in value:
        return "must not contain NUL characters"
    if any(0xD800 <= ord(c) <= 0xDFFF for c in value):
        return (
            "must be valid Unicode text (it holds a lone surrogate, from bytes that are not UTF-8)"
        )
    return None


def header_value_problem(value: str) -> str | None:
    """Why ``value`` is not an RFC 9110 field value, or None; never quotes the value.

    Visible characters, with spaces and tabs inside but not around it (a receiver
    would strip them: the value would not be the one configured). Non-ASCII text is
    RFC 9110's obs-text and is sent as UTF-8; controls and invisible format
    characters are refused, the HTTP client would refuse the former at send time.
    """
    if found := text_problem(value):
        return found
    if value[:1] in (" ", "\t") or value[-1:] in (" ", "\t"):
        return "must not begin or end with a space or tab"
    for position, char in enumerate(value):
        if char != "\t" and not char.isprintable():
            return (
                f"must hold only visible characters, spaces and tabs (RFC 9110 field value); "
                f"U+{ord(char):04X} at position {position} is not one"
            )
    return None


def host_problem(host: str) -> str | None:
    """Why ``host`` (from a URL) cannot be resolved as written, or None.

    An IP address, or a name whose labels encode as IDNA A-labels of at most 63
    octets, 253 in all: the checks the resolver would otherwise make at the first
    delivery, as an exception rather than a config error.
    """
    try:
        ipaddress.ip_address(host)
        return None
    except ValueError:
        pass
    name = host.removesuffix(".")  # a fully qualified name's root
    if not name.isascii():
        try:
            name = _idna_encode(name)
        except UnicodeError as e:
            return f"host is not a valid internationalized domain name (IDNA: {e})"
    if len(name) > _MAX_HOST:
        return f"host name is {len(name)} characters long in ASCII; at most {_MAX_HOST} are allowed"
    for index, label in enumerate(name.split(".")):
        if not label:
            return "host name has an empty label (a leading dot or two dots in a row)"
        if len(label) > _MAX_LABEL:
            return (
                f"host name label {index + 1} is {len(label)} characters long in ASCII; "
                f"at most {_MAX_LABEL} are allowed"
            )
        if not _HOST_LABEL.fullmatch(label):
            return f"host name label {index + 1} may only hold letters, digits, '-' and '_'"
    return None


def _idna_encode(name: str) -> str:
    """A non-ASCII host name as the HTTP client sends and resolves it (yarl's rule).

    IDNA 2008 with UTS 46 mapping; what it refuses (a symbol such as U+2603, an
    ASCII label with '_' beside a non-ASCII one), IDNA 2003 may still encode.
    """
    try:
        return idna.encode(name, uts46=True).decode("ascii")
    except UnicodeError as first:
        try:
            return name.encode("idna").decode("ascii")
        except UnicodeError:
            raise first from None


def http_url_problem(value: str) -> str | None:
    """Why ``value`` is not a usable http(s) URL, or None; never quotes the URL itself."""
    expected = "expected an http:// or https:// URL with a host"
    if any(c.isspace() or not c.isprintable() for c in value):
        return "must not contain whitespace or control characters"
    try:
        parts = urlsplit(value)
        port = parts.port  # raises ValueError for a port that is not a number in range
    except ValueError:
        return f"{expected} and a valid port"
    if parts.scheme.lower() not in ("http", "https"):
        return f"{expected}, got scheme {parts.scheme!r}" if parts.scheme else expected
    if not parts.hostname:
        return f"{expected}, got no host"
    if port == 0:
        return f"{expected} and a valid port (1 to 65535)"
    return host_problem(parts.hostname)


@functools.cache
def stored_length(*columns: str) -> int:
    """The longest string (in characters) every one of these store columns can hold.

    ``columns`` are ``"table.column"`` names of ``poller.store.models``, the one source
    of these lengths. Why imported here, not at the top: the CLI imports the config
    package for every command, and SQLAlchemy takes a fifth of a second to import.
    """
    from poller.store.models import metadata

    lengths: list[int] = []
    for name in columns:
        table, _, column = name.partition(".")
        length = getattr(metadata.tables[table].c[column].type, "length", None)
        if not isinstance(length, int):
            raise TypeError(f"{name} is not a column of bounded length")
        lengths.append(length)
    return min(lengths)


_DEFAULT_PORTS = {"http": 80, "https": 443}
# A path segment made of lower-case letters and punctuation only is a word of the
# route ("api", "webhooks", "hooks"), not a token: masking it would blot out that
# word wherever it appears in a log line (a "webhooks" key, say).
_ROUTE_WORD = re.compile(r"[a-z._~-]*")
_HINT_LENGTH = 4


def url_origin(url: str) -> str:
    """``scheme://host:port`` of ``url``: the only part of a webhook or API URL shown to people.

    Paths (``/api/webhooks/1234/<token>``), query strings, fragments and userinfo
    often are the credential, so they never appear in summaries, logs or errors.
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "<invalid URL>"
    scheme = parts.scheme.lower()
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if port is None:
        port = _DEFAULT_PORTS.get(scheme)
    return f"{scheme}://{host}" + (f":{port}" if port is not None else "")


def url_secrets(url: str) -> set[str]:
    """The secret-bearing parts of ``url`` in every spelling a log line may show them.

    Userinfo, path segments that are not route words, query values and the fragment,
    each as written, percent-decoded, and as yarl (aiohttp's URL type, which is how a
    URL reaches an exception's message) encodes it. For the log redactor.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return set()
    raw: set[str] = set()
    netloc = parts.netloc
    if "@" in netloc:
        userinfo = netloc.rpartition("@")[0]
        raw.add(userinfo)
        raw.update(userinfo.split(":", 1))
    raw.update(segment for segment in parts.path.split("/") if not _ROUTE_WORD.fullmatch(segment))
    raw.update(value for _, value in parse_qsl(parts.query, keep_blank_values=True))
    raw.update(value for value in parts.query.split("&") if "=" not in value)
    raw.add(parts.fragment)
    found: set[str] = set()
    for value in raw:
        for spelling in (value, unquote(value)):
            found.add(spelling)
            found.update(_yarl_spellings(spelling))
    found.discard("")
    return found


def _yarl_spellings(value: str) -> tuple[str, ...]:
    """How yarl encodes ``value`` as a path segment and as a query value."""
    try:
        as_path = yarl.URL.build(path="/" + value).raw_path[1:]
        as_query = str(yarl.URL.build(query={"q": value}))[len("?q=") :]
    except (TypeError, ValueError):
        return ()
    return as_path, as_query


def identifier_hint(value: str) -> str:
    """Enough of an identifier (an access key) to tell which one it is: ``63bb***``.

    At most four characters, and never more than half of a short value.
    """
    return value[: min(_HINT_LENGTH, len(value) // 2)] + "***"


def parse_listen(value: str) -> tuple[str, int]:
    """``(host, port)`` from ``host:port`` or ``[v6-address]:port``."""
    hint = "expected host:port, like 127.0.0.1:9464 or [::1]:9464"
    if value.startswith("["):
        host, sep, port = value[1:].partition("]:")
        if not sep:
            raise ValueError(hint)
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address") from None
    else:
        host, sep, port = value.rpartition(":")
        if not sep or not host or any(c.isspace() for c in host):
            raise ValueError(hint)
        if ":" in host:
            raise ValueError("put an IPv6 address in brackets, like [::1]:9464")
    if not (port.isascii() and port.isdigit()) or int(port) > 65535:
        raise ValueError(f"port must be a number from 0 to 65535, got {port!r}")
    return host, int(port)


def store_url(value: str) -> str:
    """``value`` as a SQLAlchemy URL with poller's async driver; ValueError never quotes it."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        url = make_url(value)
    except (ArgumentError, ValueError):
        # The parser's message quotes the URL, which may carry a database password.
        raise ValueError(
            "not a valid SQLAlchemy URL (like sqlite+aiosqlite:////var/lib/poller/poller.db)"
        ) from None
    driver = _STORE_DRIVER_ALIASES.get(url.drivername, url.drivername)
    if driver not in STORE_DRIVERS:
        raise ValueError(f"unsupported driver {url.drivername!r}; use {' or '.join(STORE_DRIVERS)}")
    if driver == url.drivername:
        return value
    return url.set(drivername=driver).render_as_string(hide_password=False)
