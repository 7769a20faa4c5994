"""
Tests for L{harbor.tls}.
"""

from zope.interface.verify import verifyObject

from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.trial.unittest import SynchronousTestCase

from OpenSSL import SSL

from harbor.test.certs import TestCA
from harbor.tls import (
    ReloadableTLS,
    TLSConfigurationError,
    describeConnection,
    loadCertificateOptions,
)


class LoadTests(SynchronousTestCase):
    """
    Tests for L{loadCertificateOptions}.
    """

    def setUp(self) -> None:
        self.ca = TestCA(self.mktemp())
        self.certificate, self.key = self.ca.issue()

    def test_chainAndMinimumVersion(self) -> None:
        """
        A certificate chain and key load (TLS before 1.2 being refused is
        proven by a real handshake in tests/test_tls.py).
        """
        options = loadCertificateOptions(self.certificate, self.key)
        self.assertEqual(len(options.extraCertChain), 1)
        self.assertIsInstance(options.getContext(), SSL.Context)

    def test_problems(self) -> None:
        """
        Missing files, non-PEM files and a key of another certificate are
        refused with a message naming the file.
        """
        _, otherKey = self.ca.issue("other")
        for certificate, key, fragment in [
            (self.mktemp(), self.key, "cannot read"),
            (self.key, self.key, "no PEM certificate"),
            (self.certificate, self.certificate, "no valid PEM private key"),
            (self.certificate, otherKey, "does not belong"),
        ]:
            error = self.assertRaises(TLSConfigurationError, loadCertificateOptions, certificate, key)
            self.assertIn(fragment, str(error))


class ReloadableTests(SynchronousTestCase):
    """
    Tests for L{ReloadableTLS}.
    """

    def test_interface(self) -> None:
        """
        It is a server connection creator, as TLSMemoryBIOFactory and
        startTLS expect.
        """
        ca = TestCA(self.mktemp())
        tls = ReloadableTLS(*ca.issue())
        self.assertTrue(verifyObject(IOpenSSLServerConnectionCreator, tls))
        self.assertIsInstance(tls.serverConnectionForTLS(None), SSL.Connection)

    def test_reloadKeepsOldOnError(self) -> None:
        """
        A reload picks up new files; if they are broken the old certificate
        stays in use.
        """
        ca = TestCA(self.mktemp())
        certificate, key = ca.issue()
        tls = ReloadableTLS(certificate, key)
        before = tls.serverConnectionForTLS(None).get_context()
        ca.issue()  # same paths, new certificate
        tls.reload()
        after = tls.serverConnectionForTLS(None).get_context()
        self.assertIsNot(before, after)
        with open(key, "w") as f:
            f.write("garbage")
        self.assertRaises(TLSConfigurationError, tls.reload)
        self.assertIs(tls.serverConnectionForTLS(None).get_context(), after)

    def test_describeWithoutTLS(self) -> None:
        """
        Something that is not a TLS connection is described as None.
        """
        self.assertIsNone(describeConnection(object()))
