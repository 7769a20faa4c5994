# -*- test-case-name: harbor.test.test_tls -*-
"""
TLS for MailHarbor: the server's certificate, loaded from PEM files and
reloadable while running, so that a renewed certificate (from an ACME client,
say) is used by new connections without a restart.
"""

from __future__ import annotations

import re

from zope.interface import implementer

from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.internet.ssl import CertificateOptions, TLSVersion

from OpenSSL import SSL, crypto

_PEM_CERTIFICATE = re.compile(
    rb"-----BEGIN CERTIFICATE-----\r?\n.+?\r?\n-----END CERTIFICATE-----", re.DOTALL
)


class TLSConfigurationError(ValueError):
    """
    The certificate or key cannot be used; the message says why.
    """


def loadCertificateOptions(certificatePath: str, keyPath: str) -> CertificateOptions:
    """
    Build TLS options from a PEM certificate (the server's first, then any
    intermediate certificates) and its PEM private key.

    Only TLS 1.2 and newer are offered, with Twisted's default choice of
    modern ciphers (forward secrecy, AEAD first).

    @raise TLSConfigurationError: if a file is unreadable, not PEM, or the
        key does not belong to the certificate.
    """
    try:
        with open(certificatePath, "rb") as f:
            chainPEM = f.read()
        with open(keyPath, "rb") as f:
            keyPEM = f.read()
    except OSError as e:
        raise TLSConfigurationError(f"cannot read {e.filename}: {e.strerror}") from None
    blocks = _PEM_CERTIFICATE.findall(chainPEM)
    if not blocks:
        raise TLSConfigurationError(f"no PEM certificate in {certificatePath}")
    try:
        chain = [crypto.load_certificate(crypto.FILETYPE_PEM, block) for block in blocks]
    except crypto.Error:
        raise TLSConfigurationError(f"a certificate in {certificatePath} is not valid") from None
    try:
        key = crypto.load_privatekey(crypto.FILETYPE_PEM, keyPEM)
    except crypto.Error:
        raise TLSConfigurationError(f"no valid PEM private key in {keyPath}") from None
    options = CertificateOptions(
        privateKey=key,
        certificate=chain[0],
        extraCertChain=chain[1:],
        raiseMinimumTo=TLSVersion.TLSv1_2,
    )
    try:
        options.getContext()
    except SSL.Error:
        raise TLSConfigurationError(
            f"the key in {keyPath} does not belong to the certificate in {certificatePath}"
        ) from None
    return options


@implementer(IOpenSSLServerConnectionCreator)
class ReloadableTLS:
    """
    Server TLS whose certificate can be replaced while running: connections
    made after L{reload} use the new one, open ones keep theirs.
    """

    def __init__(self, certificatePath: str, keyPath: str) -> None:
        """
        @raise TLSConfigurationError: if the files cannot be used.
        """
        self.certificatePath = certificatePath
        self.keyPath = keyPath
        self._options = loadCertificateOptions(certificatePath, keyPath)

    def reload(self, certificatePath: str | None = None, keyPath: str | None = None) -> None:
        """
        Read the files again, or new ones.

        @raise TLSConfigurationError: if they cannot be used; the certificate
            in use stays as it was.
        """
        certificatePath = certificatePath or self.certificatePath
        keyPath = keyPath or self.keyPath
        self._options = loadCertificateOptions(certificatePath, keyPath)
        self.certificatePath, self.keyPath = certificatePath, keyPath

    def serverConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        return SSL.Connection(self._options.getContext(), None)


def describeConnection(connection: object) -> str | None:
    """
    Name the protocol and cipher of an established TLS connection, as
    Postfix's C{Received:} header does (C{TLSv1.3 with cipher X}).
    """
    try:
        version = connection.get_protocol_version_name()  # type: ignore[attr-defined]
        cipher = connection.get_cipher_name()  # type: ignore[attr-defined]
    except (AttributeError, SSL.Error):
        return None
    if not cipher:
        return None
    return f"{version} with cipher {cipher}"
