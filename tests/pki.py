"""Throwaway certificates for the TLS tests: a CA, server and client certificates as files."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import trustme

__all__ = ["Pki"]


@dataclass
class Pki:
    """A test CA in ``directory`` with a server certificate for 127.0.0.1 and a client one.

    Files: ``ca.pem``; ``client.pem`` (certificate and key), ``client-cert.pem`` and
    ``client-key.pem`` (apart); ``other-ca.pem`` and ``stranger.pem``, a client certificate
    of another CA.
    """

    directory: Path

    def __post_init__(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.ca = trustme.CA(organization_name="poller tests")
        self.other_ca = trustme.CA(organization_name="someone else")
        self.server = self.ca.issue_cert("127.0.0.1", "localhost")
        self.client = self.ca.issue_cert("poller-client@example.com", common_name="poller-client")
        self.stranger = self.other_ca.issue_cert("stranger@example.com", common_name="stranger")
        self.ca_file = self._write("ca.pem", self.ca.cert_pem)
        self.other_ca_file = self._write("other-ca.pem", self.other_ca.cert_pem)
        self.client_pem = self._write("client.pem", self.client.private_key_and_cert_chain_pem)
        self.client_cert = self._write("client-cert.pem", self.client.cert_chain_pems[0])
        self.client_key = self._write("client-key.pem", self.client.private_key_pem)
        stranger = self.stranger.private_key_and_cert_chain_pem
        self.stranger_pem = self._write("stranger.pem", stranger)

    def _write(self, name: str, blob: trustme.Blob) -> Path:
        path = self.directory / name
        blob.write_to_path(str(path))
        return path

    def server_context(
        self, *, require_client_cert: bool = True, names: tuple[str, ...] | None = None
    ) -> ssl.SSLContext:
        """A server context with a certificate for 127.0.0.1 (or ``names``); with
        ``require_client_cert`` it wants a client certificate signed by this CA."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert = self.server if names is None else self.ca.issue_cert(*names)
        cert.configure_cert(context)
        if require_client_cert:
            self.ca.configure_trust(context)
            context.verify_mode = ssl.CERT_REQUIRED
        return context
