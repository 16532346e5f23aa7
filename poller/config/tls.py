"""``ca_file``, ``client_cert`` and ``client_key``: PEM files read at load, one SSLContext each.

Every problem OpenSSL would meet at the first request (a missing file, a DER file, a key
that is not the certificate's, a passphrase) is a config error naming the file and the key
instead, and the context the daemon uses is the one that was checked.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from pathlib import Path

from poller.config.certs import certificate_info, pem_certificates
from poller.config.messages import Loc, Source
from poller.config.model import CertificateInfo, TlsConfig
from poller.config.secrets import config_file_path
from poller.errors import openssl_reason

__all__ = ["TlsFiles", "TlsLoader"]

_BEGIN_CERTIFICATE = "-----BEGIN CERTIFICATE-----"
_ENCRYPTED_MARKERS = ("-----BEGIN ENCRYPTED PRIVATE KEY-----", "Proc-Type: 4,ENCRYPTED")
_DER_SEQUENCE = 0x30  # how a binary (DER) certificate or key starts
# OpenSSL's reasons for a certificate chain it cannot use, in our words.
_CHAIN_PROBLEMS = {
    "KEY_VALUES_MISMATCH": "is not the private key of {cert}",
    "NO_START_LINE": "holds no PEM private key",
    "BAD_DECRYPT": "is encrypted",
}


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """The TLS keys of one table as written (paths not resolved yet)."""

    ca_file: str | None = None
    client_cert: str | None = None
    client_key: str | None = None

    def given(self) -> list[str]:
        """The keys that are set, in the order the table declares them."""
        names = ("ca_file", "client_cert", "client_key")
        return [name for name in names if getattr(self, name) is not None]


class _Passphrase(Exception):
    """OpenSSL asked for a key's passphrase: there is none to give."""


def _no_passphrase() -> str:
    # Without a callback OpenSSL would prompt on the terminal and block the daemon.
    raise _Passphrase


@dataclass(slots=True)
class TlsLoader:
    """Builds TlsConfig values for one config file; equal settings share one SSLContext."""

    src: Source
    _built: dict[tuple[Path | None, Path | None, Path | None], TlsConfig] = field(
        default_factory=dict
    )

    def load(self, loc: Loc, files: TlsFiles, *, url: str, url_key: str) -> TlsConfig:
        """The TLS settings of the table at ``loc`` for requests to ``url``."""
        given = files.given()
        if not given:
            return TlsConfig()
        if files.client_key is not None and files.client_cert is None:
            raise self.src.error(
                (*loc, "client_key"), "is only used with client_cert; give client_cert too"
            )
        if not url.lower().startswith("https://"):
            problem = (
                f"{url_key} is not an https:// URL, so no TLS is used to reach it; "
                f"remove {given[0]} or use https://"
            )
            raise self.src.error((*loc, given[0]), problem)
        ca = self._path(loc, "ca_file", files.ca_file)
        cert = self._path(loc, "client_cert", files.client_cert)
        key = self._path(loc, "client_key", files.client_key)
        if (ca, cert, key) not in self._built:
            self._built[(ca, cert, key)] = self._build(loc, ca, cert, key)
        return self._built[(ca, cert, key)]

    def _path(self, loc: Loc, name: str, raw: str | None) -> Path | None:
        return None if raw is None else config_file_path(self.src, (*loc, name), raw)

    def _build(self, loc: Loc, ca: Path | None, cert: Path | None, key: Path | None) -> TlsConfig:
        authorities: tuple[CertificateInfo, ...] = ()
        ca_count = 0
        if ca is None:
            context = ssl.create_default_context()
        else:
            text = self._ca_text(loc, ca)
            try:
                # cadata alone: these CAs replace the system's, they are not added to them.
                context = ssl.create_default_context(cadata=text)
            except ssl.SSLError as e:
                problem = f"{ca} holds a certificate OpenSSL cannot use ({openssl_reason(e)})"
                raise self.src.error((*loc, "ca_file"), problem) from None
            ders = pem_certificates(text)
            ca_count = len(ders)
            authorities = tuple(i for i in map(certificate_info, ders) if i is not None)
        certificate = None
        if cert is not None:
            certificate = self._load_chain(loc, context, cert, key)
        return TlsConfig(
            ca_file=ca,
            client_cert=cert,
            client_key=key,
            ca_certificates=authorities,
            ca_count=ca_count,
            certificate=certificate,
            context=context,
        )

    def _ca_text(self, loc: Loc, path: Path) -> str:
        where = (*loc, "ca_file")
        text = self._read(where, path)
        if _BEGIN_CERTIFICATE not in text:
            raise self.src.error(where, f"{path} {_not_pem(text, 'CA certificates')}")
        return text

    def _load_chain(
        self, loc: Loc, context: ssl.SSLContext, cert: Path, key: Path | None
    ) -> CertificateInfo | None:
        cert_loc, key_loc = (*loc, "client_cert"), (*loc, "client_key")
        cert_text = self._read(cert_loc, cert)
        if _BEGIN_CERTIFICATE not in cert_text:
            raise self.src.error(cert_loc, f"{cert} {_not_pem(cert_text, 'a certificate')}")
        # The key is in its own file, or after the certificate in the same one.
        key_path, key_where = (cert, cert_loc) if key is None else (key, key_loc)
        key_text = cert_text if key is None else self._read(key_loc, key)
        if "PRIVATE KEY-----" not in key_text:
            if key is None:
                problem = f"{cert} holds no private key; give client_key (the key's file)"
            else:
                problem = f"{key} {_not_pem(key_text, 'a private key')}"
            raise self.src.error(key_where, problem)
        if any(marker in key_text for marker in _ENCRYPTED_MARKERS):
            raise self.src.error(key_where, _encrypted(key_path))
        try:
            context.load_cert_chain(cert, key, password=_no_passphrase)
        except _Passphrase:
            raise self.src.error(key_where, _encrypted(key_path)) from None
        except ssl.SSLError as e:
            template = _CHAIN_PROBLEMS.get(e.reason or "")
            if template is None:
                problem = f"{cert} cannot be used as a client certificate ({openssl_reason(e)})"
                raise self.src.error(cert_loc, problem) from None
            raise self.src.error(key_where, f"{key_path} {template.format(cert=cert)}") from None
        except OSError as e:  # the file went away since it was read
            raise self.src.error(cert_loc, f"cannot read {cert}: {e.strerror or e}") from None
        ders = pem_certificates(cert_text)
        return certificate_info(ders[0]) if ders else None

    def _read(self, loc: Loc, path: Path) -> str:
        try:
            data = path.read_bytes()
        except OSError as e:
            raise self.src.error(loc, f"cannot read {path}: {e.strerror or e}") from None
        except ValueError:  # open() refuses a path with NUL in it before asking the OS
            raise self.src.error(loc, "a file name may not contain NUL characters") from None
        if not data.strip():
            raise self.src.error(loc, f"{path} is empty")
        return data.decode("utf-8", "replace")


def _not_pem(text: str, what: str) -> str:
    key = "key" in what
    if text[:1] == chr(_DER_SEQUENCE):
        tool = "openssl pkey -inform der" if key else "openssl x509 -inform der"
        return f"is binary (DER); poller reads PEM: convert it with `{tool} -in FILE`"
    marker = "-----BEGIN PRIVATE KEY-----" if key else _BEGIN_CERTIFICATE
    return f"is not a PEM file of {what} (no {marker} line)"


def _encrypted(path: Path) -> str:
    return (
        f"{path} is encrypted with a passphrase, which poller cannot be given; "
        "decrypt it (`openssl pkey -in KEY -out KEY.plain`) and protect the file instead"
    )
