"""Config for internal receivers and corporate networks: ca_file, client_cert/client_key
and proxy, per webhook and for [hms]; the environment's proxies; what check-config shows."""

from __future__ import annotations

import datetime as dt
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from poller.config import Config, describe, load_config
from poller.config.model import Route
from poller.errors import ConfigError
from poller.redaction import redactor_of, secrets_of
from tests.pki import Pki

WEBHOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
PROXY_PASSWORD = "pr0xy-pass-Vq7Zt"
HEAD = """
[hms]
access_key = "ak-1"
app_secret = "app-secret-Zq8sT1vW"
{hms}

[[rooms]]
id = "room-a"
"""
HOOK = """
[[webhooks]]
name = "{name}"
url = "{url}"
secret = "{secret}"
{extra}
"""


def config_text(*hooks: str, hms: str = "") -> str:
    return HEAD.format(hms=hms) + "".join(hooks)


def hook(extra: str = "", *, name: str = "internal", url: str = "https://hooks.corp/in") -> str:
    return HOOK.format(name=name, url=url, secret=WEBHOOK_SECRET, extra=extra)


def load(directory: Path, text: str, environ: dict[str, str] | None = None) -> Config:
    path = directory / "config.toml"
    path.write_text(text, encoding="utf-8")
    return load_config(path, environ or {})


def load_error(directory: Path, text: str, environ: dict[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(directory, text, environ)
    return info.value


# --- TLS files ---------------------------------------------------------------------------


def test_ca_file_replaces_the_system_cas(tmp_path: Path, pki: Pki) -> None:
    config = load(tmp_path, config_text(hook(f'ca_file = "{pki.ca_file}"')))

    tls = config.webhooks[0].tls
    assert tls.ca_file == pki.ca_file
    assert tls.context is not None
    assert tls.client_ssl is tls.context
    assert tls.context.verify_mode == ssl.CERT_REQUIRED
    assert tls.context.check_hostname
    # Only the configured CA: a public CA would no longer vouch for this receiver.
    (only,) = tls.context.get_ca_certs()
    assert (("organizationName", "poller tests"),) in only["subject"]
    assert tls.ca_count == 1
    assert tls.ca_certificates[0].subject.endswith("O=poller tests")


def test_no_tls_keys_means_the_http_clients_default(tmp_path: Path) -> None:
    config = load(tmp_path, config_text(hook()))

    for tls in (config.hms.tls, config.webhooks[0].tls):
        assert tls.context is None
        assert tls.client_ssl is True


def test_paths_are_relative_to_the_config_file(tmp_path: Path, pki: Pki) -> None:
    text = config_text(hook('ca_file = "pki/ca.pem"\nclient_cert = "pki/client.pem"'))
    config = load(tmp_path, text)

    assert config.webhooks[0].tls.ca_file == tmp_path / "pki" / "ca.pem"
    assert config.webhooks[0].tls.client_cert == tmp_path / "pki" / "client.pem"


def test_client_key_may_come_from_the_credentials_directory(tmp_path: Path, pki: Pki) -> None:
    text = config_text(
        hook(
            f'client_cert = "{pki.client_cert}"\n'
            'client_key = "${CREDENTIALS_DIRECTORY}/client-key.pem"'
        )
    )
    config = load(tmp_path, text, {"CREDENTIALS_DIRECTORY": str(pki.directory)})

    tls = config.webhooks[0].tls
    assert tls.client_key == pki.client_key
    assert tls.certificate is not None
    expected = x509.load_pem_x509_certificate(pki.client_cert.read_bytes()).subject
    assert tls.certificate.subject == expected.rfc4514_string()


def test_a_certificate_file_holding_its_key_needs_no_client_key(tmp_path: Path, pki: Pki) -> None:
    config = load(tmp_path, config_text(hook(f'client_cert = "{pki.client_pem}"')))

    tls = config.webhooks[0].tls
    assert tls.client_key is None
    assert tls.certificate is not None
    assert tls.certificate.subject.startswith("CN=poller-client")
    # Without ca_file the system's CAs still verify the receiver.
    assert tls.context is not None
    assert tls.context.verify_mode == ssl.CERT_REQUIRED


def test_equal_settings_share_one_context(tmp_path: Path, pki: Pki) -> None:
    same = f'ca_file = "{pki.ca_file}"\nclient_cert = "{pki.client_pem}"'
    text = config_text(
        hook(same, name="a"),
        hook(same.replace(str(pki.directory), "pki"), name="b", url="https://hooks.corp/b"),
        hook(f'ca_file = "{pki.ca_file}"', name="c"),
        hms=f'ca_file = "{pki.ca_file}"',
    )
    a, b, c = load(tmp_path, text).webhooks

    assert a.tls.context is b.tls.context  # the same files, spelt differently
    assert a.tls.context is not c.tls.context
    assert a.tls == b.tls


def _encrypted_key(path: Path, *, traditional: bool) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    fmt = (
        serialization.PrivateFormat.TraditionalOpenSSL
        if traditional
        else serialization.PrivateFormat.PKCS8
    )
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, fmt, serialization.BestAvailableEncryption(b"passphrase")
        )
    )
    return path


def _file_cases(pki: Pki, tmp: Path) -> list[tuple[str, str, str]]:
    """(extra webhook keys, key named, problem) for every TLS file problem."""
    (tmp / "notes.txt").write_text("just some text\n")
    (tmp / "empty.pem").write_text("")
    der = tmp / "ca.der"
    der.write_bytes(ssl.PEM_cert_to_DER_cert(pki.ca_file.read_text()))
    broken = tmp / "broken.pem"
    broken.write_text("-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n")
    key_der = tmp / "key.der"
    key_der.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    pkcs8 = _encrypted_key(tmp / "enc-pkcs8.pem", traditional=False)
    legacy = _encrypted_key(tmp / "enc-legacy.pem", traditional=True)
    cert = pki.client_cert
    return [
        (
            f'ca_file = "{tmp}/missing.pem"',
            "ca_file",
            f"cannot read {tmp}/missing.pem: No such file or directory",
        ),
        (f'ca_file = "{tmp}"', "ca_file", f"cannot read {tmp}: Is a directory"),
        (f'ca_file = "{tmp}/empty.pem"', "ca_file", f"{tmp}/empty.pem is empty"),
        (
            f'ca_file = "{tmp}/notes.txt"',
            "ca_file",
            f"{tmp}/notes.txt is not a PEM file of CA certificates "
            "(no -----BEGIN CERTIFICATE----- line)",
        ),
        (
            f'ca_file = "{der}"',
            "ca_file",
            f"{der} is binary (DER); poller reads PEM: convert it with "
            "`openssl x509 -inform der -in FILE`",
        ),
        (
            f'ca_file = "{broken}"',
            "ca_file",
            f"{broken} holds a certificate OpenSSL cannot use (",
        ),
        (
            f'client_cert = "{tmp}/notes.txt"',
            "client_cert",
            f"{tmp}/notes.txt is not a PEM file of a certificate",
        ),
        (
            f'client_cert = "{cert}"',
            "client_cert",
            f"{cert} holds no private key; give client_key (the key's file)",
        ),
        (
            f'client_cert = "{cert}"\nclient_key = "{tmp}/missing.key"',
            "client_key",
            f"cannot read {tmp}/missing.key: No such file or directory",
        ),
        (
            f'client_cert = "{cert}"\nclient_key = "{key_der}"',
            "client_key",
            f"{key_der} is binary (DER); poller reads PEM: convert it with "
            "`openssl pkey -inform der -in FILE`",
        ),
        (
            f'client_cert = "{cert}"\nclient_key = "{cert}"',
            "client_key",
            f"{cert} is not a PEM file of a private key (no -----BEGIN PRIVATE KEY----- line)",
        ),
        (
            f'client_cert = "{cert}"\nclient_key = "{pki.stranger_pem}"',
            "client_key",
            f"{pki.stranger_pem} is not the private key of {cert}",
        ),
        (
            f'client_cert = "{pki.stranger_pem}"\nclient_key = "{pki.client_key}"',
            "client_key",
            f"{pki.client_key} is not the private key of {pki.stranger_pem}",
        ),
        (
            f'client_cert = "{cert}"\nclient_key = "{pkcs8}"',
            "client_key",
            f"{pkcs8} is encrypted with a passphrase, which poller cannot be given",
        ),
        (
            f'client_cert = "{cert}"\nclient_key = "{legacy}"',
            "client_key",
            f"{legacy} is encrypted with a passphrase",
        ),
    ]


def test_every_tls_file_problem_names_the_file_key_and_problem(tmp_path: Path, pki: Pki) -> None:
    files = tmp_path / "files"
    files.mkdir()
    for extra, key, problem in _file_cases(pki, files):
        error = load_error(tmp_path, config_text(hook(extra)))

        assert (error.key, error.path) == (f"webhooks[0].{key}", str(tmp_path / "config.toml"))
        assert error.problem.startswith(problem), (extra, error.problem)
        assert "PRIVATE KEY-----\n" not in str(error)  # never a file's contents


def test_hms_ca_file_problems_name_hms(tmp_path: Path) -> None:
    error = load_error(tmp_path, config_text(hook(), hms='ca_file = "nowhere.pem"'))

    assert error.key == "hms.ca_file"
    assert error.problem == f"cannot read {tmp_path}/nowhere.pem: No such file or directory"


def test_a_bad_file_fails_check_config_with_exit_2_and_one_line(tmp_path: Path, pki: Pki) -> None:
    path = tmp_path / "config.toml"
    extra = f'client_cert = "{pki.client_cert}"\nclient_key = "{pki.stranger_pem}"'
    path.write_text(config_text(hook(extra)))

    done = subprocess.run(
        [sys.executable, "-m", "poller", "check-config", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"poller: error: {path}: webhooks[0].client_key: "
        f"{pki.stranger_pem} is not the private key of {pki.client_cert}"
    ]


# --- proxies -----------------------------------------------------------------------------


def test_proxy_key_with_credentials(tmp_path: Path) -> None:
    url = f"http://svc%40corp:{PROXY_PASSWORD.replace('-', '%2D')}@proxy.corp:3128/"
    config = load(tmp_path, config_text(hook(f'proxy = "{url}"')))

    proxy = config.webhooks[0].route.proxy
    assert proxy is not None
    assert (proxy.url, proxy.via, proxy.username) == ("http://proxy.corp:3128", "proxy", "svc@corp")
    assert proxy.password is not None
    assert proxy.password.reveal() == PROXY_PASSWORD
    assert proxy.headers() == {"Proxy-Authorization": "Basic c3ZjQGNvcnA6cHIweHktcGFzcy1WcTdadA=="}
    assert PROXY_PASSWORD not in repr(config)


def test_proxy_without_credentials_sends_no_header(tmp_path: Path) -> None:
    config = load(tmp_path, config_text(hook(), hms='proxy = "http://proxy.corp"'))

    proxy = config.hms.route.proxy
    assert proxy is not None
    assert proxy.url == "http://proxy.corp:80"
    assert proxy.headers() == {}
    assert config.webhooks[0].route == Route()


ENV_CASES = [
    # (url, environment, expected proxy url or None, bypassed_by)
    ("https://hooks.corp/x", {"HTTPS_PROXY": "http://p:1"}, "http://p:1", None),
    (
        "https://hooks.corp/x",
        {"https_proxy": "http://low:1", "HTTPS_PROXY": "http://up:1"},
        "http://low:1",
        None,
    ),
    (
        "https://hooks.corp/x",
        {"https_proxy": " ", "HTTPS_PROXY": "http://up:1"},
        "http://up:1",
        None,
    ),
    ("https://hooks.corp/x", {"HTTP_PROXY": "http://p:1"}, None, None),
    (
        "http://hooks.corp/x",
        {"HTTP_PROXY": "http://p:1", "HTTPS_PROXY": "http://q:2"},
        "http://p:1",
        None,
    ),
    ("https://hooks.corp/x", {"HTTPS_PROXY": "p:3128"}, "http://p:3128", None),
    ("https://hooks.corp/x", {"HTTPS_PROXY": "http://p:1", "NO_PROXY": "corp"}, None, "$NO_PROXY"),
    ("https://hooks.corp/x", {"HTTPS_PROXY": "http://p:1", "no_proxy": ".corp"}, None, "$no_proxy"),
    (
        "https://hooks.corp/x",
        {"HTTPS_PROXY": "http://p:1", "NO_PROXY": "*.corp"},
        None,
        "$NO_PROXY",
    ),
    (
        "https://hooks.corp/x",
        {"HTTPS_PROXY": "http://p:1", "NO_PROXY": "a.b, hooks.corp"},
        None,
        "$NO_PROXY",
    ),
    ("https://hooks.corp/x", {"HTTPS_PROXY": "http://p:1", "NO_PROXY": "*"}, None, "$NO_PROXY"),
    (
        "https://hooks.corp/x",
        {"HTTPS_PROXY": "http://p:1", "NO_PROXY": "ooks.corp"},
        "http://p:1",
        None,
    ),
    (
        "https://hooks.corp/x",
        {"HTTPS_PROXY": "http://p:1", "NO_PROXY": "hooks.corp:8443"},
        "http://p:1",
        None,
    ),
    (
        "https://hooks.corp:8443/x",
        {"HTTPS_PROXY": "http://p:1", "NO_PROXY": "hooks.corp:8443"},
        None,
        "$NO_PROXY",
    ),
    (
        "https://10.1.2.3/x",
        {"HTTPS_PROXY": "http://p:1", "NO_PROXY": "10.0.0.0/8"},
        None,
        "$NO_PROXY",
    ),
    (
        "https://10.1.2.3/x",
        {"HTTPS_PROXY": "http://p:1", "NO_PROXY": "10.1.2.3"},
        None,
        "$NO_PROXY",
    ),
    (
        "https://11.1.2.3/x",
        {"HTTPS_PROXY": "http://p:1", "NO_PROXY": "10.0.0.0/8"},
        "http://p:1",
        None,
    ),
    (
        "https://[fd00::5]/x",
        {"HTTPS_PROXY": "http://p:1", "NO_PROXY": "fd00::/8"},
        None,
        "$NO_PROXY",
    ),
    (
        "https://[fd00::5]:444/x",
        {"HTTPS_PROXY": "http://p:1", "NO_PROXY": "[fd00::5]:444"},
        None,
        "$NO_PROXY",
    ),
    (
        "https://HOOKS.Corp/x",
        {"HTTPS_PROXY": "http://p:1", "NO_PROXY": "hooks.CORP"},
        None,
        "$NO_PROXY",
    ),
]


@pytest.mark.parametrize(("url", "environ", "proxy", "bypassed_by"), ENV_CASES)
def test_environment_proxies_and_no_proxy(
    tmp_path: Path, url: str, environ: dict[str, str], proxy: str | None, bypassed_by: str | None
) -> None:
    config = load(tmp_path, config_text(hook(url=url)), environ)

    route = config.webhooks[0].route
    assert (route.proxy.url if route.proxy else None, route.bypassed_by) == (proxy, bypassed_by)
    if route.proxy is not None:
        assert route.proxy.via.lower() in {f"${k.lower()}" for k in environ}


def test_the_proxy_key_wins_over_the_environment(tmp_path: Path) -> None:
    environ = {"HTTPS_PROXY": "http://env:1", "NO_PROXY": "*"}
    text = config_text(hook('proxy = "http://mine:2"'), hms='proxy = "http://api-proxy:3"')
    config = load(tmp_path, text, environ)

    assert config.webhooks[0].route.proxy is not None
    assert config.webhooks[0].route.proxy.url == "http://mine:2"
    assert config.hms.route.proxy is not None
    assert config.hms.route.proxy.url == "http://api-proxy:3"


def test_the_api_honours_the_environment_too(tmp_path: Path) -> None:
    environ = {"HTTPS_PROXY": f"http://u:{PROXY_PASSWORD}@env-proxy:8080"}
    config = load(tmp_path, config_text(hook()), environ)

    proxy = config.hms.route.proxy
    assert proxy is not None
    assert (proxy.url, proxy.via, proxy.username) == ("http://env-proxy:8080", "$HTTPS_PROXY", "u")


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("https://p:1", "only http:// proxies are supported, got https://"),
        ("socks5://p:1", "only http:// proxies are supported, got socks5://"),
        ("http://p:1/path", "without a path, query or fragment"),
        ("http://:1", "got no host"),
    ],
)
def test_an_unusable_environment_proxy_is_a_config_error(
    tmp_path: Path, value: str, problem: str
) -> None:
    error = load_error(tmp_path, config_text(hook()), {"HTTPS_PROXY": value})

    # The API is the first to use it; the key named is where to override it.
    assert error.key == "hms.proxy"
    assert error.problem.startswith("$HTTPS_PROXY (used because proxy is not set) is not usable")
    assert problem in error.problem


def test_an_environment_proxy_that_no_url_uses_is_no_error(tmp_path: Path) -> None:
    text = config_text(hook(url="http://hooks.corp/x"), hms='base_url = "http://api.corp/v2"')
    config = load(tmp_path, text, {"HTTPS_PROXY": "socks5://p:1"})

    assert config.hms.route.proxy is None


# --- check-config and secrets ------------------------------------------------------------


def _expired_client(pki: Pki) -> Path:
    cert = pki.ca.issue_cert(
        "old@example.com",
        common_name="old-client",
        not_after=dt.datetime(2020, 1, 2, tzinfo=dt.UTC),
        not_before=dt.datetime(2019, 1, 1, tzinfo=dt.UTC),
    )
    path = pki.directory / "expired.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(path))
    return path


def test_check_config_shows_paths_certificates_and_proxies_not_secrets(
    tmp_path: Path, pki: Pki
) -> None:
    expired = _expired_client(pki)
    text = config_text(
        hook(
            f'ca_file = "{pki.ca_file}"\n'
            f'client_cert = "{pki.client_cert}"\nclient_key = "{pki.client_key}"\n'
            f'proxy = "http://svc:{PROXY_PASSWORD}@proxy.corp:3128"',
            name="internal",
        ),
        hook(f'client_cert = "{expired}"', name="old", url="https://old.corp/in"),
        hook(name="public", url="https://hooks.example.com/x"),
        hook(name="direct", url="https://direct.corp/x"),
        hms=f'ca_file = "{pki.ca_file}"',
    )
    environ = {
        "HTTPS_PROXY": f"http://env:{PROXY_PASSWORD}@env-proxy:8080",
        "NO_PROXY": "direct.corp",
    }
    config = load(tmp_path, text, environ)

    shown = describe(config, now=dt.datetime(2025, 1, 1, tzinfo=dt.UTC))

    ca_subject = config.hms.tls.ca_certificates[0].subject
    client_subject = config.webhooks[0].tls.certificate.subject  # type: ignore[union-attr]
    lines = shown.splitlines()
    assert (
        f"api network: tls CAs of {pki.ca_file} only (1 certificate: {ca_subject}, "
        "expires 3000-01-01); proxy http://env-proxy:8080 (from $HTTPS_PROXY, with credentials)"
    ) in lines
    assert (
        f"    tls: CAs of {pki.ca_file} only (1 certificate: {ca_subject}, expires 3000-01-01); "
        f"client certificate {pki.client_cert} ({client_subject}, expires 3000-01-01), "
        f"key {pki.client_key}"
    ) in lines
    assert "    proxy: http://proxy.corp:3128 (from proxy key, with credentials)" in lines
    assert any(
        line.startswith(f"    tls: system CAs; client certificate {expired} (CN=old-client,")
        and line.endswith(", EXPIRED 2020-01-02)")
        for line in lines
    ), shown
    assert "    proxy: http://env-proxy:8080 (from $HTTPS_PROXY, with credentials)" in lines
    assert "    proxy: none ($NO_PROXY matches)" in lines
    assert PROXY_PASSWORD not in shown
    assert "svc" not in shown
    assert "env:" not in shown
    assert "PRIVATE KEY" not in shown
    assert "BEGIN" not in shown


def test_proxy_credentials_are_redacted_everywhere(tmp_path: Path) -> None:
    text = config_text(hook(f'proxy = "http://svc-user:{PROXY_PASSWORD}@proxy.corp:3128"'))
    config = load(tmp_path, text, {"HTTPS_PROXY": "http://env-user:env-pass-Q9x@p:1"})
    redact = redactor_of(config)
    header = config.webhooks[0].route.proxy.headers()["Proxy-Authorization"]  # type: ignore[union-attr]

    assert PROXY_PASSWORD in secrets_of(config)
    assert "env-pass-Q9x" in secrets_of(config)
    line = f"error {PROXY_PASSWORD} {header} env-pass-Q9x svc-user"
    assert redact(line) == "error *** Basic *** *** ***"


def test_error_about_a_proxy_key_never_shows_its_credentials(tmp_path: Path) -> None:
    text = config_text(hook(f'proxy = "https://svc:{PROXY_PASSWORD}@proxy.corp:3128"'))
    error = load_error(tmp_path, text)

    assert error.key == "webhooks[0].proxy"
    assert PROXY_PASSWORD not in str(error)


def test_certificates_for_another_ca_are_described_too(tmp_path: Path) -> None:
    ca = trustme.CA(organization_name="bundle")
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(ca.cert_pem.bytes() + trustme.CA().cert_pem.bytes())
    config = load(tmp_path, config_text(hook(f'ca_file = "{bundle}"')))

    assert config.webhooks[0].tls.ca_count == 2
    assert "only (2 certificates)" in describe(config)
