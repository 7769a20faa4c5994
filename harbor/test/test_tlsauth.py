"""
Tests for STARTTLS and AUTH in L{harbor.smtp}, over a L{StringTransport}
that can pretend to start TLS.
"""

import base64
import os
from typing import Any, cast

from zope.interface import implementer

from twisted.cred.checkers import ICredentialsChecker
from twisted.internet.interfaces import ITLSTransport
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import ILogObserver, Logger, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from harbor.auth import UsersFileChecker, setPassword
from harbor.config import Listener
from harbor.limits import Limits, Throttle
from harbor.routing import DomainConfig
from harbor.smtp._factory import HarborSMTPFactory, ServerSettings
from harbor.smtp._protocol import HarborESMTP
from harbor.test._support import (
    HOSTNAME,
    DeferredThreads,
    SMTPDriver,
    files,
    makeDeliverer,
    runSynchronously,
)

MESSAGE = b"Subject: test\r\n\r\nHello.\r\n"


class _FakeConnection:
    def get_protocol_version_name(self) -> str:
        return "TLSv1.3"

    def get_cipher_name(self) -> str:
        return "TLS_AES_256_GCM_SHA384"


# A stand-in for the protocol's startTLS only; the TCP options a real
# transport also has are never called here.
@implementer(ITLSTransport)
class TLSStringTransport(StringTransport):  # type: ignore[misc]
    """
    A StringTransport on which STARTTLS can be started, and completed by
    the test.
    """

    tls: Any = None

    def startTLS(self, contextFactory: Any) -> None:
        self.tls = contextFactory

    def getHandle(self) -> Any:
        return _FakeConnection()


def plain(user: bytes, password: bytes) -> bytes:
    return base64.b64encode(b"\0" + user + b"\0" + password)


class SecurityTestCase(SynchronousTestCase):
    """
    A server with a (fake) certificate and a users file.
    """

    listener = Listener("tcp:25")
    allowPlaintextAuth = False

    def setUp(self) -> None:
        self.root = self.mktemp()
        self.clock = Clock()
        self.threads = DeferredThreads()
        self.deliverer, _ = makeDeliverer(
            self.root, [DomainConfig("example.com")], runInThread=self.threads, clock=self.clock
        )
        users = self.mktemp()
        setPassword(users, "alice", "right")
        self.tlsMarker = object()
        settings = ServerSettings(
            HOSTNAME,
            Limits(),
            self.listener,
            self.tlsMarker,  # type: ignore[arg-type]
            # mypy's attrs plugin reads the field's converter=tuple as
            # taking an iterable of nothing in particular.
            self.checkers(users),  # type: ignore[arg-type]
            self.allowPlaintextAuth,
            Throttle(delays=(0, 2, 5), perSession=3),
        )
        self.factory = HarborSMTPFactory(self.deliverer, settings, self.clock)
        self.events: list[dict[str, Any]] = []
        self.patch(HarborESMTP, "_log", Logger(observer=cast(ILogObserver, self.events.append)))
        self.smtp = SMTPDriver(self.deliverer, self.clock, factory=self.factory, transport=TLSStringTransport)

    def checkers(self, users: str) -> tuple[ICredentialsChecker, ...]:
        """
        The checkers AUTH uses: the users file at C{users} (alice, password
        right).
        """
        return (cast(ICredentialsChecker, UsersFileChecker(users, runSynchronously)),)

    def startTLS(self) -> bytes:
        reply = self.smtp.send(b"STARTTLS\r\n")
        self.smtp.protocol.handshakeCompleted()
        return reply

    def stored(self, mailbox: str) -> list[bytes]:
        new = os.path.join(self.root, mailbox, "new")
        result = []
        for name in files(new):
            with open(os.path.join(new, name), "rb") as f:
                result.append(f.read())
        return result


class STARTTLSTests(SecurityTestCase):
    """
    RFC 3207.
    """

    def test_advertisedUntilActive(self) -> None:
        """
        STARTTLS is offered until TLS is active; AUTH only once it is.
        """
        before = self.smtp.send(b"EHLO c\r\n")
        self.assertIn(b"250 STARTTLS\r\n", before)
        self.assertNotIn(b"AUTH", before)
        self.startTLS()
        after = self.smtp.send(b"EHLO c\r\n")
        self.assertNotIn(b"STARTTLS", after)
        self.assertIn(b"250 AUTH PLAIN LOGIN\r\n", after)

    def test_refusedGreetingOutlivesTLS(self) -> None:
        """
        A greeting a HELO filter refused still holds MAIL back after
        STARTTLS, until a greeting passes.
        """
        from harbor.filters import parseFilters

        self.deliverer.filters = parseFilters([{"helo": "*.bad.example", "action": "reject", "text": "Bad HELO"}])
        self.smtp = SMTPDriver(self.deliverer, self.clock, factory=self.factory, transport=TLSStringTransport)
        self.assertEqual(self.smtp.send(b"EHLO mx.bad.example\r\n"), b"550 5.7.1 Bad HELO\r\n")
        self.startTLS()
        self.assertEqual(self.smtp.send(b"MAIL FROM:<s@x.org>\r\n"), b"550 Bad HELO\r\n")
        self.smtp.send(b"EHLO good.example\r\n")
        self.assertEqual(self.smtp.send(b"MAIL FROM:<s@x.org>\r\n"), b"250 2.1.0 Ok\r\n")

    def test_addressFactsOutliveTLS(self) -> None:
        """
        What the server found out about the client's address before
        STARTTLS (a blocklist listing, a connect filter's tag) still holds
        after it; what the client said (HELO) does not.
        """
        from twisted.internet.defer import succeed

        from harbor.filters import parseFilters

        class Listed:
            def lookup(self, client: str) -> Any:
                return succeed("bl.example")

        self.deliverer.blocklists = Listed()  # type: ignore[assignment]
        self.deliverer.filters = parseFilters(
            [{"client": "192.0.2.0/24", "action": "tag", "header": "X-Net: doc"}]
        )
        self.smtp = SMTPDriver(self.deliverer, self.clock, factory=self.factory, transport=TLSStringTransport)
        self.smtp.send(b"EHLO before.example\r\n")
        self.startTLS()
        self.assertIsNone(self.smtp.protocol.session.helo)
        self.assertEqual(self.smtp.protocol.session.tags, ["X-Net: doc"])
        self.smtp.send(b"EHLO after.example\r\n")
        self.assertEqual(
            self.smtp.send(b"MAIL FROM:<s@x.org>\r\nRCPT TO:<a@example.com>\r\n"),
            b"250 2.1.0 Ok\r\n554 5.7.1 Service unavailable; client [192.0.2.7] blocked using bl.example\r\n",
        )

    def test_startsTLS(self) -> None:
        """
        STARTTLS answers 220 and starts TLS with the server's certificate.
        """
        self.smtp.send(b"EHLO c\r\n")
        self.assertEqual(self.startTLS(), b"220 2.0.0 Ready to start TLS\r\n")
        self.assertIs(cast(TLSStringTransport, self.smtp.transport).tls, self.tlsMarker)

    def test_pipelinedCommandsDiscarded(self) -> None:
        """
        Commands sent in the same write as STARTTLS are discarded, not run
        inside TLS (CVE-2011-0411), and the discarding is logged.
        """
        self.smtp.send(b"EHLO c\r\n")
        self.assertEqual(
            self.smtp.send(b"STARTTLS\r\nRSET\r\nMAIL FROM:<evil@x.org>\r\n"),
            b"220 2.0.0 Ready to start TLS\r\n",
        )
        self.smtp.protocol.handshakeCompleted()
        self.assertEqual(
            self.smtp.replies(b"EHLO c\r\nRCPT TO:<a@example.com>\r\n")[-1],
            b"503 5.5.1 Error: need MAIL command",
        )
        self.assertTrue(any("after STARTTLS" in e["log_format"] for e in self.events))

    def test_sessionStartsOver(self) -> None:
        """
        After STARTTLS nothing is carried over: a transaction begun before
        is gone and the client must say EHLO again for enhanced codes.
        """
        self.smtp.send(b"EHLO c\r\nMAIL FROM:<s@x.org>\r\n")
        self.startTLS()
        self.assertEqual(self.smtp.send(b"RCPT TO:<a@example.com>\r\n"), b"503 Error: need MAIL command\r\n")
        self.assertIsNone(self.smtp.protocol.session.helo)

    def test_refusals(self) -> None:
        """
        STARTTLS with an argument, twice, or where it is not offered is
        refused.
        """
        self.smtp.send(b"EHLO c\r\n")
        self.assertEqual(self.smtp.send(b"STARTTLS now\r\n"), b"501 5.5.4 Syntax: STARTTLS\r\n")
        self.startTLS()
        self.smtp.send(b"EHLO c\r\n")
        self.assertEqual(self.smtp.send(b"STARTTLS\r\n"), b"503 5.5.1 Error: TLS already active\r\n")
        plain = SMTPDriver(self.deliverer, self.clock)
        plain.send(b"EHLO c\r\n")
        self.assertEqual(plain.send(b"STARTTLS\r\n"), b"454 4.7.0 Error: TLS not available\r\n")

    def test_receivedHeaderNamesTLS(self) -> None:
        """
        Mail received over TLS says ESMTPS and the protocol and cipher.
        """
        self.startTLS()
        self.smtp.send(b"EHLO c\r\nMAIL FROM:<s@x.org>\r\nRCPT TO:<a@example.com>\r\nDATA\r\n" + MESSAGE + b".\r\n")
        self.threads.runAll()
        [data] = self.stored("example.com")
        self.assertIn(b"\n\t(using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384)\n", data)
        self.assertIn(b" with ESMTPS id ", data)


class RequireTLSTests(SecurityTestCase):
    """
    A listener that requires TLS.
    """

    listener = Listener("tcp:25", requireTLS=True)

    def test_mailNeedsTLS(self) -> None:
        """
        MAIL before STARTTLS gets 530 5.7.0; after it, mail flows.
        """
        self.assertEqual(
            self.smtp.replies(b"EHLO c\r\nMAIL FROM:<s@x.org>\r\n")[-1],
            b"530 5.7.0 Must issue a STARTTLS command first",
        )
        self.startTLS()
        self.assertEqual(self.smtp.replies(b"EHLO c\r\nMAIL FROM:<s@x.org>\r\n")[-1], b"250 2.1.0 Ok")


class AuthTests(SecurityTestCase):
    """
    RFC 4954 AUTH, under TLS.
    """

    def setUp(self) -> None:
        super().setUp()
        self.startTLS()
        self.smtp.send(b"EHLO c\r\n")

    def test_plainInitialResponse(self) -> None:
        """
        AUTH PLAIN with an initial response logs in; mail then says ESMTPSA.
        """
        self.assertEqual(
            self.smtp.send(b"AUTH PLAIN " + plain(b"alice", b"right") + b"\r\n"),
            b"235 2.7.0 Authentication successful\r\n",
        )
        self.assertEqual(self.smtp.protocol.session.user, "alice")
        self.assertEqual(self.smtp.protocol.session.protocolName, "ESMTPSA")

    def test_plainChallenge(self) -> None:
        """
        AUTH PLAIN without a response gets an empty challenge first.
        """
        self.assertEqual(self.smtp.send(b"AUTH PLAIN\r\n"), b"334 \r\n")
        self.assertEqual(
            self.smtp.send(plain(b"alice", b"right") + b"\r\n"), b"235 2.7.0 Authentication successful\r\n"
        )

    def test_login(self) -> None:
        """
        AUTH LOGIN asks for the user name and password in turn.
        """
        self.assertEqual(self.smtp.send(b"AUTH LOGIN\r\n"), b"334 VXNlcm5hbWU6\r\n")
        self.assertEqual(self.smtp.send(base64.b64encode(b"alice") + b"\r\n"), b"334 UGFzc3dvcmQ6\r\n")
        self.assertEqual(
            self.smtp.send(base64.b64encode(b"right") + b"\r\n"), b"235 2.7.0 Authentication successful\r\n"
        )

    def test_slowResponseCutOff(self) -> None:
        """
        A SASL response is a command line with its own deadline: sent a
        byte every 100 s, it is cut off 300 s (the command timeout) after
        its first byte with 421 4.4.2.
        """
        self.assertEqual(self.smtp.send(b"AUTH LOGIN\r\n"), b"334 VXNlcm5hbWU6\r\n")
        written = b""
        for byte in base64.b64encode(b"alice") + b"\r\n":
            self.clock.advance(100)
            written += self.smtp.take()
            if self.smtp.transport.disconnecting:
                break
            written += self.smtp.send(bytes([byte]))
        self.assertEqual(written, b"421 4.4.2 mx.example.com Error: command deadline exceeded\r\n")
        [event] = [e for e in self.events if "rule" in e]
        self.assertEqual((event["rule"], event["received"], event["verb"]), ("command deadline", 3, "AUTH"))

    def test_loginInitialResponse(self) -> None:
        """
        AUTH LOGIN may carry the user name.
        """
        self.assertEqual(
            self.smtp.send(b"AUTH LOGIN " + base64.b64encode(b"alice") + b"\r\n"), b"334 UGFzc3dvcmQ6\r\n"
        )

    def test_malformed(self) -> None:
        """
        A bare AUTH, an unknown mechanism, bad base64, a cancelled exchange
        and an empty PLAIN response each get a reply and the session goes on.
        """
        self.assertEqual(
            self.smtp.replies(
                b"AUTH\r\nAUTH CRAM-MD5\r\nAUTH PLAIN !!!\r\nAUTH LOGIN\r\n*\r\nAUTH PLAIN =\r\nNOOP\r\n"
            ),
            [
                b"501 5.5.4 Syntax: AUTH mechanism [initial-response]",
                b"504 5.5.4 Error: unsupported authentication mechanism",
                b"501 5.5.2 Error: invalid base64 data",
                b"334 VXNlcm5hbWU6",
                b"501 5.0.0 Error: authentication cancelled",
                b"535 5.7.8 Error: authentication failed",
                b"250 2.0.0 Ok",
            ],
        )

    def test_wrongPasswordSlowsDownThenDisconnects(self) -> None:
        """
        Wrong passwords get 535 5.7.8 after a delay that grows; the third
        failure in a session disconnects; the password is never logged.
        """
        wrong = b"AUTH PLAIN " + plain(b"alice", b"guess-one") + b"\r\n"
        self.assertEqual(self.smtp.send(wrong), b"535 5.7.8 Error: authentication failed\r\n")
        self.assertEqual(self.smtp.send(wrong), b"")
        self.clock.advance(2)
        self.assertEqual(self.smtp.take(), b"535 5.7.8 Error: authentication failed\r\n")
        self.smtp.send(wrong)
        self.clock.advance(5)
        self.assertEqual(
            self.smtp.take(),
            b"535 5.7.8 Error: authentication failed\r\n421 4.7.0 mx.example.com Error: too many failed logins\r\n",
        )
        self.assertTrue(self.smtp.transport.disconnecting)
        logged = " ".join(formatEvent(e) for e in self.events)
        self.assertIn("result=failed", logged)
        self.assertNotIn("guess-one", logged)

    def test_sequence(self) -> None:
        """
        AUTH twice, or during a transaction, is a sequence error.
        """
        self.smtp.send(b"AUTH PLAIN " + plain(b"alice", b"right") + b"\r\n")
        self.assertEqual(
            self.smtp.send(b"AUTH PLAIN " + plain(b"alice", b"right") + b"\r\n"),
            b"503 5.5.1 Error: already authenticated\r\n",
        )

    def test_authenticatedMayAddressAnyone(self) -> None:
        """
        An authenticated client's mail to any address is stored in its own
        mailbox, never relayed; MAIL's AUTH= parameter is accepted.
        """
        self.smtp.send(
            b"AUTH PLAIN " + plain(b"alice", b"right") + b"\r\n"
            b"MAIL FROM:<alice@example.com> AUTH=<>\r\nRCPT TO:<x@other.org>\r\nDATA\r\n" + MESSAGE + b".\r\n"
        )
        self.threads.runAll()
        self.assertTrue(self.smtp.take().endswith(b"\r\n"))
        [data] = self.stored(".submitted/alice")
        self.assertIn(b"\nDelivered-To: x@other.org\n", data)
        self.assertIn(b" with ESMTPSA id ", data)


class PlaintextAuthTests(SecurityTestCase):
    """
    AUTH without TLS.
    """

    def test_refusedWithoutTLS(self) -> None:
        """
        Without TLS, AUTH is not offered and is refused with 538 5.7.11.
        """
        self.assertNotIn(b"AUTH", self.smtp.send(b"EHLO c\r\n"))
        self.assertEqual(
            self.smtp.send(b"AUTH PLAIN " + plain(b"alice", b"right") + b"\r\n"),
            b"538 5.7.11 Error: authentication requires TLS (STARTTLS first)\r\n",
        )


class AllowedPlaintextAuthTests(SecurityTestCase):
    """
    C{allow_plaintext_auth}.
    """

    allowPlaintextAuth = True

    def test_allowed(self) -> None:
        """
        With the setting, AUTH works without TLS.
        """
        self.assertIn(b"AUTH PLAIN LOGIN", self.smtp.send(b"EHLO c\r\n"))
        self.assertEqual(
            self.smtp.send(b"AUTH PLAIN " + plain(b"alice", b"right") + b"\r\n"),
            b"235 2.7.0 Authentication successful\r\n",
        )


class SubmissionTests(SecurityTestCase):
    """
    A submission listener.
    """

    listener = Listener("tcp:587", requireTLS=True, submission=True)

    def test_authRequired(self) -> None:
        """
        On a submission listener MAIL needs TLS, then AUTH.
        """
        self.assertEqual(
            self.smtp.replies(b"EHLO c\r\nMAIL FROM:<s@x.org>\r\n")[-1],
            b"530 5.7.0 Must issue a STARTTLS command first",
        )
        self.startTLS()
        self.assertEqual(
            self.smtp.replies(b"EHLO c\r\nMAIL FROM:<s@x.org>\r\n")[-1],
            b"530 5.7.0 Error: authentication required",
        )
        self.assertEqual(
            self.smtp.replies(b"AUTH PLAIN " + plain(b"alice", b"right") + b"\r\nMAIL FROM:<s@x.org>\r\n"),
            [b"235 2.7.0 Authentication successful", b"250 2.1.0 Ok"],
        )


class CallbackAuthTests(SecurityTestCase):
    """
    AUTH decided by an embedding program's C{authenticate} callback
    (L{harbor.auth.CallbackChecker}), beside the users file.
    """

    def checkers(self, users: str) -> tuple[ICredentialsChecker, ...]:
        from harbor.auth import CallbackChecker

        self.calls: list[tuple[str, str, str]] = []
        self.answer: Any = True
        return (*super().checkers(users), CallbackChecker(self.authenticate))

    def authenticate(self, user: str, password: str, client: str) -> Any:
        self.calls.append((user, password, client))
        if callable(self.answer):
            return self.answer()
        return self.answer if password == "secret" else False

    def login(self, user: bytes = b"bob", password: bytes = b"secret") -> bytes:
        return self.smtp.send(b"AUTH PLAIN " + plain(user, password) + b"\r\n")

    def test_tlsOnly(self) -> None:
        """
        As with the users file, AUTH is offered only under TLS, and the
        callback is not asked before.
        """
        self.assertNotIn(b"AUTH", self.smtp.send(b"EHLO c\r\n"))
        self.assertEqual(self.login(), b"538 5.7.11 Error: authentication requires TLS (STARTTLS first)\r\n")
        self.assertEqual(self.calls, [])
        self.startTLS()
        self.assertIn(b"250 AUTH PLAIN LOGIN\r\n", self.smtp.send(b"EHLO c\r\n"))

    def test_loggedIn(self) -> None:
        """
        C{True} logs in with 235: the callback got the user name, the
        password and the client's IP address, and the session's mail is
        the user's.
        """
        self.startTLS()
        self.smtp.send(b"EHLO c\r\n")
        self.assertEqual(self.login(), b"235 2.7.0 Authentication successful\r\n")
        self.assertEqual(self.calls, [("bob", "secret", "192.0.2.7")])
        self.assertEqual(self.smtp.protocol.session.user, "bob")

    def test_usersFileFirst(self) -> None:
        """
        A user of the users file logs in without the callback being asked.
        """
        self.startTLS()
        self.smtp.send(b"EHLO c\r\n")
        self.assertEqual(self.login(b"alice", b"right"), b"235 2.7.0 Authentication successful\r\n")
        self.assertEqual(self.calls, [])

    def test_wrongPasswordThrottled(self) -> None:
        """
        C{False} is a wrong password: 535 5.7.8, slowed down as the users
        file's are, and the third in a session disconnects.
        """
        self.startTLS()
        self.smtp.send(b"EHLO c\r\n")
        self.assertEqual(self.login(b"bob", b"guess"), b"535 5.7.8 Error: authentication failed\r\n")
        self.assertEqual(self.login(b"bob", b"guess"), b"")
        self.clock.advance(2)
        self.assertEqual(self.smtp.take(), b"535 5.7.8 Error: authentication failed\r\n")
        self.login(b"bob", b"guess")
        self.clock.advance(5)
        self.assertEqual(
            self.smtp.take(),
            b"535 5.7.8 Error: authentication failed\r\n421 4.7.0 mx.example.com Error: too many failed logins\r\n",
        )
        self.assertTrue(self.smtp.transport.disconnecting)

    def test_raisingFailsClosed(self) -> None:
        """
        A callback that raises logs no one in: 454 4.7.0, a logged failure
        naming the user and not the password, and the session goes on.
        """

        def broken() -> bool:
            raise ConnectionError("directory down")

        self.answer = broken
        self.startTLS()
        self.smtp.send(b"EHLO c\r\n")
        self.assertEqual(self.login(), b"454 4.7.0 Error: temporary authentication failure\r\n")
        self.assertIsNone(self.smtp.protocol.session.user)
        [failure] = [e for e in self.events if "log_failure" in e]
        self.assertTrue(failure["log_failure"].check(ConnectionError))
        self.assertEqual(formatEvent(failure), "client=192.0.2.7 auth=PLAIN user=bob authentication error")
        self.assertNotIn("secret", " ".join(formatEvent(e) for e in self.events))
        self.assertEqual(self.smtp.send(b"NOOP\r\n"), b"250 2.0.0 Ok\r\n")

    def test_failedCoroutineFailsClosed(self) -> None:
        """
        A coroutine that fails, or an answer that is not a bool, is 454
        4.7.0 too.
        """

        async def broken() -> bool:
            raise LookupError("no such table")

        self.startTLS()
        self.smtp.send(b"EHLO c\r\n")
        for answer in (broken, lambda: "yes"):
            self.answer = answer
            self.assertEqual(self.login(), b"454 4.7.0 Error: temporary authentication failure\r\n")

    def test_pending(self) -> None:
        """
        The reply waits for a L{Deferred} answer.
        """
        from twisted.internet.defer import Deferred

        pending: Deferred[bool] = Deferred()
        self.answer = lambda: pending
        self.startTLS()
        self.smtp.send(b"EHLO c\r\n")
        self.assertEqual(self.login(), b"")
        pending.callback(True)
        self.assertEqual(self.smtp.take(), b"235 2.7.0 Authentication successful\r\n")


    def test_undecidedLoginTimesOut(self) -> None:
        """
        A login nobody decides within C{auth_timeout} (30 s) fails closed
        with 454 4.7.0, logged as such, and the pending answer is
        cancelled; not a moment before.
        """
        from twisted.internet.defer import CancelledError, Deferred

        pending: Deferred[bool] = Deferred()
        cancelled: list[object] = []
        pending.addErrback(lambda f: cancelled.append(f.check(CancelledError)))
        self.answer = lambda: pending
        self.startTLS()
        self.smtp.send(b"EHLO c\r\n")
        self.assertEqual(self.login(), b"")
        self.clock.advance(29.9)
        self.assertEqual(self.smtp.take(), b"")
        self.clock.advance(0.1)
        self.assertEqual(self.smtp.take(), b"454 4.7.0 Error: temporary authentication failure\r\n")
        self.assertEqual(cancelled, [CancelledError])
        [event] = [e for e in self.events if "why" in e]
        self.assertEqual((event["user"], event["why"]), ("bob", "no decision on the login within 30 seconds"))

class CombinedCheckersTests(SecurityTestCase):
    """
    A twistd C{--auth} checker beside the users file.
    """

    def checkers(self, users: str) -> tuple[ICredentialsChecker, ...]:
        from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse

        from harbor.auth import TextOrBytes

        other = InMemoryUsernamePasswordDatabaseDontUse(bob=b"other")
        return (cast(ICredentialsChecker, TextOrBytes(other)), *super().checkers(users))

    def test_eitherLogsIn(self) -> None:
        """
        A user of either the C{--auth} checker or the users file logs in
        (a portal alone would ask only one of them).
        """
        for user, password in ((b"bob", b"other"), (b"alice", b"right")):
            self.smtp = SMTPDriver(self.deliverer, self.clock, factory=self.factory, transport=TLSStringTransport)
            self.startTLS()
            self.smtp.send(b"EHLO c\r\n")
            self.assertEqual(
                self.smtp.send(b"AUTH PLAIN " + plain(user, password) + b"\r\n"),
                b"235 2.7.0 Authentication successful\r\n",
                user,
            )
