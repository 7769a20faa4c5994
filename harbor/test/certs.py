"""
Throwaway certificates for tests: a CA made at test time and server
certificates it signs, so that nothing secret is committed and real TLS
handshakes can be verified by real clients.
"""

from __future__ import annotations

import datetime
import ipaddress
import os

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


class TestCA:
    """
    A certificate authority that lives in a directory for one test.

    @ivar certificatePath: The CA certificate, for clients to trust.
    """

    def __init__(self, directory: str) -> None:
        directory = os.path.abspath(directory)
        os.makedirs(directory, exist_ok=True)
        self._directory = directory
        self._key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "MailHarbor test CA")])
        now = datetime.datetime.now(datetime.UTC)
        self._name = name
        self._certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self._key, hashes.SHA256())
        )
        self.certificatePath = os.path.join(directory, "ca.pem")
        with open(self.certificatePath, "wb") as f:
            f.write(self._certificate.public_bytes(serialization.Encoding.PEM))

    def issue(self, name: str = "server", hostname: str = "localhost") -> tuple[str, str]:
        """
        Make a server certificate for C{hostname} and 127.0.0.1.

        @return: the paths of the certificate (followed by the CA's, as a
            chain file) and of its key.
        """
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)]))
            .issuer_name(self._name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName(hostname), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
            .sign(self._key, hashes.SHA256())
        )
        certificatePath = os.path.join(self._directory, f"{name}.pem")
        keyPath = os.path.join(self._directory, f"{name}.key")
        with open(certificatePath, "wb") as f:
            f.write(certificate.public_bytes(serialization.Encoding.PEM))
            f.write(self._certificate.public_bytes(serialization.Encoding.PEM))
        with open(keyPath, "wb") as f:
            f.write(
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )
        return certificatePath, keyPath


def fingerprint(certificatePath: str) -> bytes:
    """
    The SHA-256 fingerprint of the first certificate in a PEM file.
    """
    with open(certificatePath, "rb") as f:
        certificate = x509.load_pem_x509_certificate(f.read())
    return certificate.fingerprint(hashes.SHA256())
