"""What a failed HTTP request means, in words for the attempt log and poll errors.

TLS and proxy failures reach aiohttp's caller as a handful of exception types whose text
is OpenSSL's or the connection key's (which names the SSL context, not the reason). These
functions say which side refused what, and what to check, and never quote a URL's path,
a header or a proxy's credentials: only host names, statuses and OpenSSL's reason codes.
"""

from __future__ import annotations

import errno
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field

import aiohttp

from poller.config.model import Route
from poller.errors import openssl_reason

__all__ = ["ProxyOptions", "connection_failure", "proxy_options", "proxy_refusal"]

# TLS alerts the peer sends about our client certificate, and what they mean to an operator.
_ALERTS = {
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "requires a client certificate (client_cert)",
    "SSLV3_ALERT_HANDSHAKE_FAILURE": "refused the handshake (does it require a client "
    "certificate, or a TLS version or cipher poller does not offer?)",
    "TLSV1_ALERT_UNKNOWN_CA": "does not trust the client certificate's CA",
    "SSLV3_ALERT_BAD_CERTIFICATE": "refused the client certificate",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": "refused the client certificate",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": "refused the client certificate as expired",
    "SSLV3_ALERT_CERTIFICATE_REVOKED": "refused the client certificate as revoked",
    "TLSV1_ALERT_ACCESS_DENIED": "denied access to the client certificate",
    "WRONG_VERSION_NUMBER": "did not answer in TLS (is it an http:// server?)",
}


@dataclass(frozen=True, slots=True)
class ProxyOptions:
    """What aiohttp is given for one route: ``proxy``, ``proxy_headers``, and the headers to
    add to the request itself."""

    proxy: str | None = None
    proxy_headers: Mapping[str, str] | None = None
    headers: Mapping[str, str] = field(default_factory=dict)


def proxy_options(route: Route, *, https: bool) -> ProxyOptions:
    """aiohttp's arguments for ``route`` to an ``https`` (tunnelled) or plain-HTTP URL.

    Why the request's own headers: aiohttp sends ``proxy_headers`` with a CONNECT only; a
    plain-HTTP request goes to the proxy as it is, so the credentials must ride on it. Never
    on a tunnelled request, which the proxy cannot read and the receiver would.
    """
    proxy = route.proxy
    if proxy is None:
        return ProxyOptions()
    credentials = proxy.headers()
    if https:
        return ProxyOptions(proxy.url, credentials or None)
    return ProxyOptions(proxy.url, None, credentials)


def proxy_refusal(status: int, route: Route) -> str | None:
    """Words for ``status`` when it is the proxy's 407 to a plain-HTTP request, else None."""
    if status != 407 or route.proxy is None:
        return None
    return f"HTTP 407 from the proxy {route.proxy.url} ({_credentials(route)})"


def _credentials(route: Route) -> str:
    wrong = route.proxy is not None and route.proxy.username is not None
    return f"proxy authentication required: its credentials are {'wrong' if wrong else 'missing'}"


def connection_failure(
    exc: aiohttp.ClientError,
    *,
    peer: str,
    route: Route,
    https: bool,
    client_cert: bool | None = None,
) -> str | None:
    """Words for a TLS or proxy failure of a request to ``peer`` ("the receiver", "the
    API"), or None when ``exc`` is neither (the caller's own wording then applies).

    ``client_cert`` says whether one is configured, for the hint on a dropped connection
    (None: the peer takes none, no hint).
    """
    proxy = route.proxy
    if isinstance(exc, aiohttp.ClientProxyConnectionError):
        reason = exc.os_error.strerror or type(exc.os_error).__name__
        where = f"the proxy {proxy.url}" if proxy is not None else "the proxy"
        return f"cannot connect to {where}: {reason}"
    if isinstance(exc, aiohttp.ClientHttpProxyError):
        where = f"the proxy {proxy.url}" if proxy is not None else "the proxy"
        text = f"{where} refused the tunnel to {peer}: HTTP {exc.status}"
        return f"{text} ({_credentials(route)})" if exc.status == 407 else text
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        error = exc.certificate_error
        detail = getattr(error, "verify_message", None) or openssl_reason(error)
        return f"TLS: {peer}'s certificate is not trusted: {detail}"
    found = _ssl_error(exc)
    if found is not None:
        meaning = _ALERTS.get(getattr(found, "reason", None) or "")
        if meaning is not None:
            return f"TLS: {peer} {meaning} [{openssl_reason(found)}]"
        return f"TLS failed: {openssl_reason(found)}"
    if https and client_cert is not None:
        # An asyncio or Go server drops a TLS 1.3 client it refuses without an alert: the
        # handshake has completed on our side, and the request then meets a reset or EOF.
        hint = (
            "does it trust the client certificate?"
            if client_cert
            else "does it require a client certificate? none is configured"
        )
        if isinstance(exc, aiohttp.ClientOSError) and _reset(exc):
            return f"connection reset by {peer} without an answer ({hint})"
        if isinstance(exc, aiohttp.ServerDisconnectedError):
            return f"{peer} closed the connection without an answer ({hint})"
    return None


def _ssl_error(exc: BaseException) -> ssl.SSLError | None:
    """The OpenSSL error behind ``exc``: itself, its ``os_error`` or its cause."""
    # aiohttp's own SSL errors subclass ssl.SSLError without OpenSSL's fields: the error
    # they wrap comes first.
    for candidate in (getattr(exc, "os_error", None), exc.__cause__, exc.__context__, exc):
        if isinstance(candidate, ssl.SSLError):
            return candidate
    return None


def _reset(exc: aiohttp.ClientOSError) -> bool:
    errors = (exc, getattr(exc, "os_error", None), exc.__cause__)
    return any(
        isinstance(e, ConnectionResetError) or getattr(e, "errno", None) == errno.ECONNRESET
        for e in errors
    )
