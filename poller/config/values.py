"""Checks and renderings of single config values: type names, URLs, listen addresses."""

from __future__ import annotations

import datetime
import ipaddress
import re
from urllib.parse import urlsplit, urlunsplit

__all__ = [
    "HEADER_NAME",
    "STORE_DRIVERS",
    "STORE_URL_PATTERN",
    "http_url_problem",
    "mask_url",
    "parse_listen",
    "store_url",
    "toml_key",
    "type_name",
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


def http_url_problem(value: str) -> str | None:
    """Why ``value`` is not a usable http(s) URL, or None; never quotes the URL itself."""
    expected = "expected an http:// or https:// URL with a host"
    if any(c.isspace() or not c.isprintable() for c in value):
        return "must not contain whitespace or control characters"
    try:
        parts = urlsplit(value)
        _ = parts.port  # raises ValueError for a port that is not a number in range
    except ValueError:
        return f"{expected} and a valid port"
    if parts.scheme.lower() not in ("http", "https"):
        return f"{expected}, got scheme {parts.scheme!r}" if parts.scheme else expected
    if not parts.hostname:
        return f"{expected}, got no host"
    return None


def mask_url(url: str) -> str:
    """``url`` with any userinfo shown as ``***@`` and any query/fragment as ``?***``/``#***``."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rpartition("@")[2]
    query = "***" if parts.query else ""
    fragment = "***" if parts.fragment else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, fragment))


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
