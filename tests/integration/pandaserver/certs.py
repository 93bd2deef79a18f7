"""Throw-away X.509 material for the loopback panda-server.

A private CA signs:
  * a server certificate for 127.0.0.1 / localhost (the TLS front presents it),
  * a client certificate whose DN the server is configured to trust as production/pilot
    (``production_dns`` / ``pilot_owners``),
  * a second client certificate whose DN is NOT trusted (gets the "no role" answer).

DNs are also rendered in Apache's legacy slash format (``/C=../O=../CN=..``), which is what
``SSL_CLIENT_S_DN`` carries with ``SSLOptions +LegacyDNStringFormat`` and what the server compares.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# Note: the server matches production DNs by substring (v1) or regex search (legacy), so the
# not-allowed DN must not contain the allowed one, and neither may contain regex metacharacters.
ALLOWED_SUBJECT = (("C", "CH"), ("O", "PandaPilotCI"), ("OU", "robots"), ("CN", "pilot production robot"))
DENIED_SUBJECT = (("C", "CH"), ("O", "PandaPilotCI"), ("OU", "users"), ("CN", "ordinary user"))
CA_SUBJECT = (("C", "CH"), ("O", "PandaPilotCI"), ("CN", "PandaPilotCI throw-away CA"))
SERVER_SUBJECT = (("C", "CH"), ("O", "PandaPilotCI"), ("CN", "localhost"))

_OIDS = {
    "C": NameOID.COUNTRY_NAME,
    "O": NameOID.ORGANIZATION_NAME,
    "OU": NameOID.ORGANIZATIONAL_UNIT_NAME,
    "CN": NameOID.COMMON_NAME,
}


def legacy_dn(subject: tuple[tuple[str, str], ...]) -> str:
    """Apache LegacyDNStringFormat rendering: ``/C=CH/O=.../CN=...`` in certificate order."""
    return "".join(f"/{key}={value}" for key, value in subject)


def _name(subject: tuple[tuple[str, str], ...]) -> x509.Name:
    return x509.Name([x509.NameAttribute(_OIDS[key], value) for key, value in subject])


@dataclass(frozen=True)
class CertSet:
    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    proxy_file: Path
    bad_client_cert: Path
    bad_client_key: Path
    client_dn: str
    bad_client_dn: str


def _key() -> rsa.RSAPrivateKey:
    # RSA: what grid tooling (openssl x509, voms-proxy-*, M2Crypto) handles everywhere
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _write_key(path: Path, key: rsa.RSAPrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
        )
    )
    path.chmod(0o600)


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def make_certs(directory: Path) -> CertSet:
    """Create the CA, server and client certificates under ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    not_before = now - datetime.timedelta(hours=1)
    not_after = now + datetime.timedelta(days=7)

    ca_key = _key()
    ca_name = _name(CA_SUBJECT)
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )  # keyCertSign, cRLSign
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    def issue(subject: tuple[tuple[str, str], ...], server: bool) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
        key = _key()
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(subject))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(True, False, True, False, False, False, False, False, False), critical=True
            )  # digitalSignature, keyEncipherment
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
        return builder.sign(ca_key, hashes.SHA256()), key

    paths = CertSet(
        ca_cert=directory / "ca.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server.key",
        client_cert=directory / "client.pem",
        client_key=directory / "client.key",
        proxy_file=directory / "proxy.pem",
        bad_client_cert=directory / "bad_client.pem",
        bad_client_key=directory / "bad_client.key",
        client_dn=legacy_dn(ALLOWED_SUBJECT),
        bad_client_dn=legacy_dn(DENIED_SUBJECT),
    )
    paths.ca_cert.write_bytes(_pem(ca_cert))
    server_cert, server_key = issue(SERVER_SUBJECT, server=True)
    paths.server_cert.write_bytes(_pem(server_cert))
    _write_key(paths.server_key, server_key)
    client_cert, client_key = issue(ALLOWED_SUBJECT, server=False)
    paths.client_cert.write_bytes(_pem(client_cert))
    _write_key(paths.client_key, client_key)
    # X509_USER_PROXY style: certificate and key in one PEM file
    paths.proxy_file.write_bytes(
        _pem(client_cert)
        + client_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
        )
    )
    paths.proxy_file.chmod(0o600)
    bad_cert, bad_key = issue(DENIED_SUBJECT, server=False)
    paths.bad_client_cert.write_bytes(_pem(bad_cert))
    _write_key(paths.bad_client_key, bad_key)
    return paths
