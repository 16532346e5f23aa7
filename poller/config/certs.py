"""What an X.509 certificate says about itself: its subject and when it expires.

Only for ``check-config`` and the start-up warning about an expired client certificate;
trust is OpenSSL's business (``poller.config.tls``). The standard library's ``ssl`` module
decodes certificates only for a live connection's peer or a CA store, so the few DER
fields needed here are read directly: a certificate is ``SEQUENCE { tbsCertificate
SEQUENCE { [0] version, serial, signature, issuer, validity, subject, ... }, ... }``.
Anything unexpected yields None: OpenSSL already accepted the file, so a certificate that
this reader cannot follow is still used, only not described.
"""

from __future__ import annotations

import datetime as dt
import re
import ssl

from poller.config.model import CertificateInfo

__all__ = ["certificate_info", "pem_certificates"]

_PEM_CERTIFICATE = re.compile(
    r"-----BEGIN CERTIFICATE-----\s+.*?-----END CERTIFICATE-----", re.DOTALL
)
_SEQUENCE, _SET, _OID, _VERSION = 0x30, 0x31, 0x06, 0xA0
_UTC_TIME, _GENERALIZED_TIME = 0x17, 0x18
_BMP_STRING, _UNIVERSAL_STRING = 0x1E, 0x1C
# The attribute types a subject usually holds, by the names RFC 4514 gives them.
_ATTRIBUTE_NAMES = {
    "2.5.4.3": "CN",
    "2.5.4.6": "C",
    "2.5.4.7": "L",
    "2.5.4.8": "ST",
    "2.5.4.10": "O",
    "2.5.4.11": "OU",
    "0.9.2342.19200300.100.1.1": "UID",
    "0.9.2342.19200300.100.1.25": "DC",
}
_MAX_SUBJECT = 200  # characters shown


class _Malformed(ValueError):
    """DER that does not have the shape this reader follows."""


def pem_certificates(text: str) -> list[bytes]:
    """The DER bytes of every ``CERTIFICATE`` block in PEM ``text``, in order."""
    found: list[bytes] = []
    for block in _PEM_CERTIFICATE.findall(text):
        try:
            found.append(ssl.PEM_cert_to_DER_cert(block))
        except ValueError:  # not base64: OpenSSL decides whether the file is usable
            continue
    return found


def certificate_info(der: bytes) -> CertificateInfo | None:
    """The subject (RFC 4514 order) and expiry of one DER certificate, or None."""
    try:
        tag, start, end = _element(der, 0)
        _expect(tag, _SEQUENCE)
        tag, start, end = _element(der, start)  # tbsCertificate
        _expect(tag, _SEQUENCE)
        fields = _children(der, start, end)
        if fields and fields[0][0] == _VERSION:
            fields = fields[1:]
        if len(fields) < 5:
            raise _Malformed("too few fields")
        validity, subject = fields[3], fields[4]
        _expect(validity[0], _SEQUENCE)
        times = _children(der, validity[1], validity[2])
        if len(times) != 2:
            raise _Malformed("validity")
        not_after = _time(times[1][0], der[times[1][1] : times[1][2]])
        return CertificateInfo(subject=_name(der, subject), not_after=not_after)
    except (_Malformed, IndexError, ValueError):
        return None


def _element(data: bytes, pos: int) -> tuple[int, int, int]:
    """The tag, content start and content end of the DER element at ``pos``."""
    tag = data[pos]
    length = data[pos + 1]
    pos += 2
    if length & 0x80:
        size = length & 0x7F
        if not 1 <= size <= 4:
            raise _Malformed("length")
        length = int.from_bytes(data[pos : pos + size], "big")
        pos += size
    end = pos + length
    if end > len(data):
        raise _Malformed("truncated")
    return tag, pos, end


def _children(data: bytes, start: int, end: int) -> list[tuple[int, int, int]]:
    found: list[tuple[int, int, int]] = []
    pos = start
    while pos < end:
        element = _element(data, pos)
        found.append(element)
        pos = element[2]
    return found


def _expect(tag: int, wanted: int) -> None:
    if tag != wanted:
        raise _Malformed(f"tag {tag:#x}, expected {wanted:#x}")


def _time(tag: int, raw: bytes) -> dt.datetime:
    text = raw.decode("ascii")
    if tag == _UTC_TIME:  # YYMMDDHHMMSSZ; RFC 5280: 50-99 are the 1900s
        parsed = dt.datetime.strptime(text, "%y%m%d%H%M%SZ")
        if parsed.year >= 2050:
            parsed = parsed.replace(year=parsed.year - 100)
    elif tag == _GENERALIZED_TIME:
        parsed = dt.datetime.strptime(text, "%Y%m%d%H%M%SZ")
    else:
        raise _Malformed("time")
    return parsed.replace(tzinfo=dt.UTC)


def _name(data: bytes, name: tuple[int, int, int]) -> str:
    """A Name as RFC 4514 writes it: the most specific attribute first (``CN=..,O=..``)."""
    _expect(name[0], _SEQUENCE)
    parts: list[str] = []
    for rdn in _children(data, name[1], name[2]):
        _expect(rdn[0], _SET)
        attributes: list[str] = []
        for attribute in _children(data, rdn[1], rdn[2]):
            _expect(attribute[0], _SEQUENCE)
            oid, value = _children(data, attribute[1], attribute[2])[:2]
            _expect(oid[0], _OID)
            dotted = _oid(data[oid[1] : oid[2]])
            text = _string(value[0], data[value[1] : value[2]])
            attributes.append(f"{_ATTRIBUTE_NAMES.get(dotted, dotted)}={text}")
        parts.append("+".join(attributes))
    shown = ",".join(reversed(parts))
    # A subject is the certificate owner's text: printable, and short on one line.
    shown = "".join(c if c.isprintable() else "?" for c in shown)
    return shown if len(shown) <= _MAX_SUBJECT else shown[: _MAX_SUBJECT - 3] + "..."


def _oid(raw: bytes) -> str:
    if not raw:
        raise _Malformed("empty OID")
    numbers: list[int] = []
    value = 0
    for byte in raw:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            numbers.append(value)
            value = 0
    first = numbers[0]
    head = [min(first // 40, 2), first - 40 * min(first // 40, 2)]
    return ".".join(str(n) for n in [*head, *numbers[1:]])


def _string(tag: int, raw: bytes) -> str:
    if tag == _BMP_STRING:
        return raw.decode("utf-16-be", "replace")
    if tag == _UNIVERSAL_STRING:
        return raw.decode("utf-32-be", "replace")
    return raw.decode("utf-8", "replace")
