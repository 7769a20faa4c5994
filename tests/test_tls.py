"""
End-to-end TLS and AUTH over loopback with real handshakes: smtplib's
starttls() and login(), implicit TLS with SMTP_SSL, the STARTTLS injection
attack on a raw socket, the submission listener, and a certificate swapped
on SIGHUP under a real twistd.
"""

from __future__ import annotations

import re
import smtplib
import socket
import ssl

from twisted.trial.unittest import TestCase

from harbor.auth import setPassword
from harbor.test._support import traceHeaders
from harbor.test.certs import TestCA, fingerprint
from tests._e2e import (
    DOMAIN,
    HOSTNAME,
    LOOPBACK_PORT,
    RunningServer,
    inThread,
    pollUntil,
    runTwistd,
    startServer,
)

MESSAGE = b"Subject: secure\r\n\r\nHello.\r\n"
_LISTENING = re.compile(rb"MailHarbor listening on (\S+) \(127\.0\.0\.1 port (\d+)\)")


class TLSEndToEndTests(TestCase):
    """
    TLS and AUTH against the real service.
    """

    timeout = 120

    def setUp(self) -> None:
        self.ca = TestCA(self.mktemp())
        self.certificate, self.key = self.ca.issue()
        self.users = self.mktemp()
        setPassword(self.users, "alice", "correct horse")
        self.context = ssl.create_default_context(cafile=self.ca.certificatePath)

    async def start(self, *extra: str) -> RunningServer:
        return await startServer(
            self,
            "--tls-cert", self.certificate, "--tls-key", self.key, "--users-file", self.users,
            *extra,
        )

    async def test_starttlsAndLogin(self) -> None:
        """
        smtplib verifies the certificate after STARTTLS, logs in and sends;
        the stored copy records TLS and authentication.
        """
        server = await self.start()

        def send() -> tuple[bool, bool]:
            with server.connect() as client:
                client.ehlo("client.example")
                offeredBefore = client.has_extn("auth")
                client.starttls(context=self.context)
                client.ehlo("client.example")
                offeredAfter = client.has_extn("auth")
                client.login("alice", "correct horse")
                client.sendmail("alice@example.com", ["bob@elsewhere.example"], MESSAGE)
                return offeredBefore, offeredAfter

        self.assertEqual(await inThread(send), (False, True))
        import os

        submitted = os.path.join(server.root, ".submitted", "alice", "new")
        [name] = os.listdir(submitted)
        with open(os.path.join(submitted, name), "rb") as f:  # noqa: ASYNC230 (a small local file)
            trace, _ = traceHeaders(f.read())
        self.assertIn(b"Delivered-To: bob@elsewhere.example\n", trace)
        self.assertRegex(trace, rb"\(using TLSv1\.[23] with cipher \S+\)")
        self.assertIn(b" with ESMTPSA id ", trace)

    async def test_implicitTLS(self) -> None:
        """
        A tls_port listener speaks TLS at once (SMTP_SSL) and does not offer
        STARTTLS.
        """
        server = await self.start("--tls-port", LOOPBACK_PORT)
        tlsPort = server.ports[1]

        def send() -> bool:
            with smtplib.SMTP_SSL("127.0.0.1", tlsPort, context=self.context) as client:
                client.ehlo("c")
                offered = client.has_extn("starttls")
                client.sendmail("s@x.org", ["a@example.com"], MESSAGE)
                return offered

        self.assertFalse(await inThread(send))
        [stored] = server.storedFiles().values()
        self.assertIn(b" with ESMTPS id ", stored)

    async def test_starttlsInjection(self) -> None:
        """
        Commands written in the same packet as STARTTLS are not executed
        inside the TLS session (CVE-2011-0411).
        """
        server = await self.start()

        def session() -> tuple[bytes, bytes]:
            raw = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            try:
                reader = raw.makefile("rb")
                reader.readline()
                raw.sendall(b"EHLO c\r\n")
                while not reader.readline().startswith(b"250 "):
                    pass
                raw.sendall(b"STARTTLS\r\nRSET\r\nMAIL FROM:<evil@x.org>\r\n")
                starttls = reader.readline()
                with self.context.wrap_socket(raw, server_hostname="localhost") as secure:
                    secure.sendall(b"RCPT TO:<a@example.com>\r\nQUIT\r\n")
                    answer = b""
                    while True:
                        chunk = secure.recv(4096)
                        if not chunk:
                            break
                        answer += chunk
                return starttls, answer
            finally:
                raw.close()

        starttls, answer = await inThread(session)
        self.assertEqual(starttls, b"220 2.0.0 Ready to start TLS\r\n")
        self.assertEqual(answer, b"503 Error: need MAIL command\r\n221 Bye\r\n")

    async def test_authRefusedBeforeTLSAndWrongPassword(self) -> None:
        """
        AUTH is not offered in plaintext and refused with 538; a wrong
        password gets 535 5.7.8.
        """
        server = await self.start()

        def session() -> tuple[tuple[int, bytes], int]:
            raw = server.rawSocket()
            try:
                raw.command(b"EHLO c")
                plaintext = raw.command(b"AUTH PLAIN AGFsaWNlAHdyb25n")
            finally:
                raw.close()
            with server.connect() as client:
                client.starttls(context=self.context)
                try:
                    client.login("alice", "wrong")
                except smtplib.SMTPAuthenticationError as e:
                    return plaintext, e.smtp_code
            return plaintext, 0

        plaintext, code = await inThread(session)
        self.assertEqual(plaintext[0], 538)
        self.assertEqual(code, 535)

    async def test_oldTLSRefused(self) -> None:
        """
        A client limited to TLS 1.1 cannot connect; the server goes on
        serving others.
        """
        server = await self.start("--tls-port", LOOPBACK_PORT)
        tlsPort = server.ports[1]

        def attempt() -> str:
            old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            old.load_verify_locations(self.ca.certificatePath)
            old.minimum_version = ssl.TLSVersion.TLSv1
            old.maximum_version = ssl.TLSVersion.TLSv1_1
            raw = socket.create_connection(("127.0.0.1", tlsPort), timeout=10)
            secure = old.wrap_socket(raw, server_hostname="localhost", do_handshake_on_connect=False)
            try:
                secure.do_handshake()
                return "connected"
            except (ssl.SSLError, OSError) as e:
                return type(e).__name__
            finally:
                secure.close()

        self.assertNotEqual(await inThread(attempt), "connected")

        def modern() -> None:
            with smtplib.SMTP_SSL("127.0.0.1", tlsPort, context=self.context) as c:
                c.noop()

        await inThread(modern)

    async def test_submissionListener(self) -> None:
        """
        A submission listener wants STARTTLS, then AUTH, before MAIL.
        """
        server = await self.start("--submission-port", LOOPBACK_PORT)
        submissionPort = server.ports[1]

        def session() -> list[int]:
            codes = []
            with smtplib.SMTP("127.0.0.1", submissionPort) as client:
                client.ehlo("c")
                codes.append(client.mail("s@x.org")[0])
                client.starttls(context=self.context)
                client.ehlo("c")
                codes.append(client.mail("s@x.org")[0])
                client.rset()
                client.login("alice", "correct horse")
                codes.append(client.mail("alice@example.com")[0])
                codes.append(client.rcpt("anyone@anywhere.example")[0])
            return codes

        self.assertEqual(await inThread(session), [530, 530, 250, 250])


class ReloadTests(TestCase):
    """
    A renewed certificate is used after SIGHUP, without a restart.
    """

    timeout = 120

    async def test_sighupSwapsCertificate(self) -> None:
        """
        After the files change and twistd gets SIGHUP, a new client sees the
        new certificate while a connection made before keeps working.
        """
        ca = TestCA(self.mktemp())
        certificate, key = ca.issue()
        first = fingerprint(certificate)
        root = self.mktemp()
        process = await runTwistd(
            self,
            [
                "--port", LOOPBACK_PORT, "--tls-port", LOOPBACK_PORT, "--domain", DOMAIN,
                "--maildir", root, "--hostname", HOSTNAME,
                "--tls-cert", certificate, "--tls-key", key,
            ],
        )
        ports: dict[int, int] = {}

        def listening() -> bool:
            found = [int(m.group(2)) for m in _LISTENING.finditer(process.output)]
            ports.update(enumerate(found))
            return len(found) == 2

        await pollUntil(listening, "twistd listens on both ports", 30)
        tlsPort = ports[1]
        context = ssl.create_default_context(cafile=ca.certificatePath)

        def seen() -> bytes:
            with (
                socket.create_connection(("127.0.0.1", tlsPort), timeout=10) as raw,
                context.wrap_socket(raw, server_hostname="localhost") as secure,
            ):
                der = secure.getpeercert(binary_form=True)
            assert der is not None
            from cryptography import x509
            from cryptography.hazmat.primitives import hashes

            return x509.load_der_x509_certificate(der).fingerprint(hashes.SHA256())

        self.assertEqual(await inThread(seen), first)
        old = await inThread(
            smtplib.SMTP_SSL, "127.0.0.1", tlsPort, context=context
        )
        self.addCleanup(old.close)
        ca.issue()
        second = fingerprint(certificate)
        self.assertNotEqual(first, second)
        process.transport.signalProcess("HUP")
        await pollUntil(lambda: b"Reloaded the TLS certificate" in process.output, "twistd reloads", 30)
        self.assertEqual(await inThread(seen), second)
        self.assertEqual((await inThread(old.noop))[0], 250)


class CredCheckerTests(TestCase):
    """
    Any twisted.cred checker, through twistd's --auth.
    """

    timeout = 60

    async def test_strcredChecker(self) -> None:
        """
        A checker from --auth (here memory:) authenticates AUTH; a wrong
        password is refused.
        """
        server = await startServer(self, "--auth", "memory:bob:s3cret", "--allow-plaintext-auth")

        def session() -> tuple[int, int]:
            with server.connect() as client:
                try:
                    client.login("bob", "wrong")
                except smtplib.SMTPAuthenticationError as e:
                    refused = e.smtp_code
            with server.connect() as client:
                accepted = client.login("bob", "s3cret")[0]
            return refused, accepted

        self.assertEqual(await inThread(session), (535, 235))
