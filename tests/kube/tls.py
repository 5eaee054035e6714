"""The stand-in's PKI: a self-signed cluster CA and a serving certificate for the TLS listener.

Generated at start-up (ECDSA P-256, fast), like the ``ca.crt`` / ``apiserver.crt``
kubeadm writes: the CA is what every namespace's ``kube-root-ca.crt`` ConfigMap
carries, and the serving certificate is valid for the names in-cluster
clients use (``kubernetes.default.svc`` ...) and for ``127.0.0.1`` /
``localhost``, where the stand-in actually listens. Both pass Python's
``ssl.create_default_context(cafile=...)`` verification, including
``VERIFY_X509_STRICT`` (Python 3.13+ default).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SERVER_DNS_NAMES = ("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
                    "kubernetes.default.svc.cluster.local")
SERVER_IPS = ("127.0.0.1",)


@dataclass(frozen=True)
class Pki:
    """PEM files of the cluster CA and the API server's serving certificate."""

    ca_pem: str
    ca_file: Path
    cert_file: Path
    key_file: Path

    def server_context(self) -> ssl.SSLContext:
        """An SSL context for the API server's TLS listener."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(str(self.cert_file), str(self.key_file))
        return context


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _builder(subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey,
             not_before: dt.datetime, not_after: dt.datetime, *, ca: bool) -> x509.CertificateBuilder:
    """A certificate builder with a fresh serial, basic constraints and key usage for a CA or a leaf.

    A CA may sign certificates and CRLs; a leaf only signs (ECDSA's digital signature).
    """
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=ca,
                                     crl_sign=ca, encipher_only=False, decipher_only=False), critical=True)
    )


def generate(directory: Path) -> Pki:
    """Create a CA and a CA-signed serving certificate; write them as PEM files under ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc)
    not_before, not_after = now - dt.timedelta(hours=1), now + dt.timedelta(days=365)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        _builder(_name("kubernetes-standin-ca"), _name("kubernetes-standin-ca"), ca_key.public_key(),
                 not_before, not_after, ca=True)
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    key = ec.generate_private_key(ec.SECP256R1())
    san = x509.SubjectAlternativeName(
        [x509.DNSName(n) for n in SERVER_DNS_NAMES] + [x509.IPAddress(ipaddress.ip_address(a)) for a in SERVER_IPS])
    cert = (
        _builder(_name("kube-apiserver"), ca_cert.subject, key.public_key(), not_before, not_after, ca=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .add_extension(san, critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    ca_pem = ca_cert.public_bytes(serialization.Encoding.PEM).decode()
    ca_file, cert_file, key_file = directory / "ca.crt", directory / "apiserver.crt", directory / "apiserver.key"
    ca_file.write_text(ca_pem)
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_file.chmod(0o600)
    return Pki(ca_pem, ca_file, cert_file, key_file)
