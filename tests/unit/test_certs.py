"""Reading a certificate's subject and expiry, checked against the cryptography package."""

from __future__ import annotations

import datetime as dt
import ssl

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from poller.config.certs import certificate_info, pem_certificates


def _self_signed(name: x509.Name, not_after: dt.datetime) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(dt.datetime(1990, 1, 1, tzinfo=dt.UTC))
        .not_valid_after(not_after)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(Encoding.DER)


@pytest.mark.parametrize(
    "not_after",
    [
        dt.datetime(2031, 5, 6, 7, 8, 9, tzinfo=dt.UTC),  # UTCTime
        dt.datetime(1999, 12, 31, 23, 59, 59, tzinfo=dt.UTC),  # UTCTime, last century
        dt.datetime(2051, 1, 1, tzinfo=dt.UTC),  # GeneralizedTime
    ],
)
def test_expiry_in_both_time_encodings(not_after: dt.datetime) -> None:
    der = _self_signed(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]), not_after)

    info = certificate_info(der)

    assert info is not None
    assert info.not_after == not_after
    assert info.expired(not_after)
    assert not info.expired(not_after - dt.timedelta(seconds=1))


def test_subject_in_rfc_4514_order_as_cryptography_writes_it() -> None:
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "DE"),
            x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, "Berlin"),
            x509.NameAttribute(NameOID.LOCALITY_NAME, "Berlin"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example GmbH"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "Platform"),
            x509.NameAttribute(NameOID.DOMAIN_COMPONENT, "corp"),
            x509.NameAttribute(NameOID.COMMON_NAME, "poller.corp"),
        ]
    )
    der = _self_signed(name, dt.datetime(2030, 1, 1, tzinfo=dt.UTC))

    info = certificate_info(der)

    assert info is not None
    assert info.subject == name.rfc4514_string()
    assert (
        info.subject == "CN=poller.corp,DC=corp,OU=Platform,O=Example GmbH,L=Berlin,ST=Berlin,C=DE"
    )


def test_unknown_attributes_are_shown_by_oid_and_text_is_made_printable() -> None:
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.SERIAL_NUMBER, "1234"),
            x509.NameAttribute(NameOID.COMMON_NAME, "zwölf\nzeilen"),
        ]
    )
    info = certificate_info(_self_signed(name, dt.datetime(2030, 1, 1, tzinfo=dt.UTC)))

    assert info is not None
    assert info.subject == "CN=zwölf?zeilen,2.5.4.5=1234"


def test_trustme_certificates_and_a_bundle() -> None:
    ca = trustme.CA(organization_name="bundle test")
    leaf = ca.issue_cert("a.example", common_name="a.example")
    text = leaf.private_key_and_cert_chain_pem.bytes().decode() + ca.cert_pem.bytes().decode()

    ders = pem_certificates(text)

    assert len(ders) == 2  # the leaf and the CA appended after it; the key is skipped
    for der in ders:
        expected = x509.load_der_x509_certificate(der)
        info = certificate_info(der)
        assert info is not None
        assert info.subject == expected.subject.rfc4514_string()
        assert info.not_after == expected.not_valid_after_utc


@pytest.mark.parametrize(
    "der",
    [
        b"",
        b"\x30",
        b"\x30\x84\xff\xff\xff\xff",
        b"\x30\x03\x02\x01\x01",  # a SEQUENCE holding one INTEGER
        b"\x04\x02hi",
    ],
)
def test_anything_else_is_not_described(der: bytes) -> None:
    assert certificate_info(der) is None


def test_a_truncated_certificate_is_not_described() -> None:
    der = ssl.PEM_cert_to_DER_cert(trustme.CA().cert_pem.bytes().decode())

    assert certificate_info(der[: len(der) // 2]) is None
