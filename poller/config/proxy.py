"""HTTP proxies: the ``proxy`` key, else ``$HTTPS_PROXY``/``$HTTP_PROXY`` minus ``$NO_PROXY``.

Each URL poller talks to is fixed by the config, so its route is decided once, at load,
from the same environment the daemon runs in: ``check-config`` shows it, a bad variable is
a config error rather than a warning at every request, and no request waits on a thread
to read the environment (what aiohttp's ``trust_env`` does, which would also send
``~/.netrc`` credentials along).

The variables are read as curl and Python read them: the lower-case name first, then the
upper-case one; ``NO_PROXY`` holds comma-separated host names (a name matches itself and
its subdomains; a leading ``.`` or ``*.`` changes nothing), IP addresses, CIDR ranges
(``10.0.0.0/8``), each optionally with ``:port``, or ``*`` for every host.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from urllib.parse import unquote, urlsplit

from poller.config.messages import Loc, Source
from poller.config.model import DIRECT, Proxy, Route, Secret
from poller.config.values import host_problem, text_problem, url_origin

__all__ = ["proxy_problem", "route_for"]

_SHAPE = "expected http://host:port or http://user:password@host:port"


def proxy_problem(value: str) -> str | None:
    """Why ``value`` is not an http:// proxy URL, or None; never quotes the URL (userinfo)."""
    if any(c.isspace() or not c.isprintable() for c in value):
        return "must not contain whitespace or control characters"
    try:
        parts = urlsplit(value)
        port = parts.port  # raises ValueError for a port that is not a number in range
    except ValueError:
        return f"{_SHAPE}, with a valid port"
    scheme = parts.scheme.lower()
    if scheme != "http":
        got = f"got {scheme}://" if scheme else "got no scheme"
        return f"{_SHAPE}: only http:// proxies are supported, {got}"
    if not parts.hostname:
        return f"{_SHAPE}, got no host"
    if port == 0:
        return f"{_SHAPE}, with a valid port (1 to 65535)"
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        return f"{_SHAPE}, without a path, query or fragment"
    return host_problem(parts.hostname)


def _proxy(value: str, via: str) -> Proxy:
    parts = urlsplit(value)
    username = password = None
    if "@" in parts.netloc:
        userinfo = parts.netloc.rpartition("@")[0]
        user, sep, secret = userinfo.partition(":")
        username = unquote(user)
        password = Secret(unquote(secret)) if sep else None
    return Proxy(url=url_origin(value), via=via, username=username, password=password)


def route_for(src: Source, loc: Loc, url: str, proxy: str | None) -> Route:
    """The route to ``url`` for the table at ``loc``: its ``proxy`` key, else the environment."""
    if proxy is not None:
        return Route(_proxy(proxy, "proxy"))
    parts = urlsplit(url)
    scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
    found = _variable(src.environ, f"{scheme}_proxy")
    if found is None:
        return DIRECT
    name, value = found
    no_proxy = _variable(src.environ, "no_proxy")
    if no_proxy is not None and _bypassed(no_proxy[1], host, parts.port or _PORTS[scheme]):
        return Route(bypassed_by=f"${no_proxy[0]}")
    if "://" not in value:  # "proxy:3128", as curl and requests take it
        value = f"http://{value}"
    if found_problem := text_problem(value) or proxy_problem(value):
        problem = f"${name} (used because proxy is not set) is not usable: {found_problem}"
        raise src.error((*loc, "proxy"), problem)
    return Route(_proxy(value, f"${name}"))


_PORTS = {"http": 80, "https": 443}


def _variable(environ: Mapping[str, str], lower: str) -> tuple[str, str] | None:
    """The first of ``lower`` and its upper-case spelling that is set and not blank."""
    for name in (lower, lower.upper()):
        value = environ.get(name, "").strip()
        if value:
            return name, value
    return None


def _bypassed(no_proxy: str, host: str, port: int) -> bool:
    """Whether ``NO_PROXY``'s value sends ``host:port`` direct."""
    address = _address(host)
    for raw in no_proxy.replace(" ", ",").split(","):
        entry = raw.strip().lower()
        if not entry:
            continue
        if entry == "*":
            return True
        entry, entry_port = _split_port(entry)
        if entry_port is not None and entry_port != port:
            continue
        if address is not None:
            try:
                if address in ipaddress.ip_network(entry, strict=False):
                    return True
            except ValueError:
                pass
            continue
        name = entry.removeprefix("*").removeprefix(".").removesuffix(".")
        if name and (host.removesuffix(".") == name or host.endswith(f".{name}")):
            return True
    return False


def _split_port(entry: str) -> tuple[str, int | None]:
    """``host:port``, ``[v6]:port``, ``v6``, ``cidr``: the host part and the port, if any."""
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        port = rest.removeprefix(":")
        return host, int(port) if port.isdigit() else None
    if entry.count(":") == 1:
        host, _, port = entry.partition(":")
        if port.isdigit():
            return host, int(port)
    return entry, None


def _address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None
