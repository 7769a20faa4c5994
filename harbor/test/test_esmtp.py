"""
Tests for the ESMTP extensions and limits of L{harbor.smtp}, over
L{StringTransport}: one test per rule, exact replies, pipelined batches in
one write.
"""

import os
from typing import Any, ClassVar, cast

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, Logger
from twisted.trial.unittest import SynchronousTestCase

from harbor.limits import Limits
from harbor.routing import DomainConfig
from harbor.smtp._driver import CLOSE_GRACE
from harbor.smtp._factory import HarborSMTPFactory, ServerSettings
from harbor.smtp._framing import InputBuffer
from harbor.smtp._protocol import HarborESMTP
from harbor.test._support import (
    HOSTNAME,
    DeferredThreads,
    SMTPDriver,
    files,
    makeDeliverer,
    traceHeaders,
)

MESSAGE = b"Subject: test\r\n\r\nHello.\r\n"
ENVELOPE = b"MAIL FROM:<s@x.org>\r\nRCPT TO:<a@example.com>\r\n"


class ESMTPTestCase(SynchronousTestCase):
    """
    A Maildir root and a way to connect clients with given limits.
    """

    domains: ClassVar[list[DomainConfig]] = [DomainConfig("example.com"), DomainConfig("xn--bcher-kva.example")]
    limits = Limits()

    def setUp(self) -> None:
        self.root = self.mktemp()
        self.threads = DeferredThreads()
        self.clock = Clock()
        self.deliverer, self.store = makeDeliverer(
            self.root, self.domains, runInThread=self.threads, clock=self.clock
        )
        self.factory = HarborSMTPFactory(self.deliverer, ServerSettings(HOSTNAME, self.limits), self.clock)
        self.smtp = SMTPDriver(self.deliverer, self.clock, factory=self.factory, ehlo=b"client.example")

    def stored(self, domain: str = "example.com") -> list[bytes]:
        """
        The stored files' contents without MailHarbor's trace headers.
        """
        new = os.path.join(self.root, domain, "new")
        result = []
        for name in files(new):
            with open(os.path.join(new, name), "rb") as f:
                result.append(traceHeaders(f.read())[1])
        return result


class EnhancedStatusCodeTests(ESMTPTestCase):
    """
    RFC 2034: enhanced codes for EHLO clients only.
    """

    def test_heloClientsGetPlainCodes(self) -> None:
        """
        A client that greeted with HELO (or not at all) gets plain codes.
        """
        smtp = SMTPDriver(self.deliverer, self.clock, factory=self.factory)
        self.assertEqual(smtp.send(b"NOOP\r\n"), b"250 Ok\r\n")
        self.assertEqual(
            smtp.replies(b"HELO c\r\nMAIL FROM:<s@x.org>\r\nRCPT TO:<x@other.org>\r\n"),
            [b"250 mx.example.com", b"250 Ok", b"550 <x@other.org>: Relay access denied"],
        )

    def test_ehloClientsGetEnhancedCodes(self) -> None:
        """
        After EHLO every reply to a command carries its enhanced code.
        """
        self.assertEqual(
            self.smtp.replies(ENVELOPE + b"RCPT TO:<x@other.org>\r\nBOGUS\r\nDATA\r\n"),
            [
                b"250 2.1.0 Ok",
                b"250 2.1.5 Ok",
                b"550 5.7.1 <x@other.org>: Relay access denied",
                b"500 5.5.2 Error: command not recognized",
                b"354 End data with <CR><LF>.<CR><LF>",
            ],
        )


class SizeTests(ESMTPTestCase):
    """
    RFC 1870 SIZE.
    """

    limits = Limits(maxMessageSize=1000)

    def test_advertised(self) -> None:
        """
        EHLO advertises the configured limit.
        """
        self.assertIn(b"250-SIZE 1000\r\n", self.smtp.send(b"EHLO c\r\n"))

    def test_declaredTooLarge(self) -> None:
        """
        A declared size over the limit is refused at MAIL with 552 5.3.4; a
        malformed one is a syntax error.
        """
        self.assertEqual(
            self.smtp.replies(
                b"MAIL FROM:<s@x.org> SIZE=1001\r\nMAIL FROM:<s@x.org> SIZE=x\r\n"
                b"MAIL FROM:<s@x.org> SIZE=1000\r\n"
            ),
            [
                b"552 5.3.4 Error: message size exceeds fixed maximum message size",
                b"501 5.5.4 Error: bad SIZE parameter",
                b"250 2.1.0 Ok",
            ],
        )

    def test_tooLargeWhileStreaming(self) -> None:
        """
        A message that grows past the limit is dropped as it arrives, is
        answered 552 5.3.4 after the dot, and the connection stays usable.
        """
        self.smtp.send(ENVELOPE + b"DATA\r\n")
        self.smtp.send(b"x" * 600 + b"\r\n" + b"y" * 600 + b"\r\n")
        self.assertEqual(files(self.root, "example.com", "tmp"), [])
        self.assertEqual(
            self.smtp.send(b"z" * 5000 + b"\r\n.\r\n"),
            b"552 5.3.4 Error: message size exceeds fixed maximum message size\r\n",
        )
        self.smtp.send(ENVELOPE + b"DATA\r\n" + MESSAGE + b".\r\n")
        self.threads.runAll()
        self.assertEqual(self.stored(), [b"Subject: test\n\nHello.\n"])


class LargeSizeTests(ESMTPTestCase):
    """
    SIZE with a message big enough to be streaming to disk.
    """

    limits = Limits(maxMessageSize=100 * 1024)

    def test_spilledThenDropped(self) -> None:
        """
        A message already streaming into tmp/ is removed from disk the
        moment it passes the limit, not at the dot.
        """
        self.smtp.send(ENVELOPE + b"DATA\r\n" + (b"a" * 998 + b"\r\n") * 80)
        self.assertEqual(len(files(self.root, "example.com", "tmp")), 1)
        self.smtp.send((b"b" * 998 + b"\r\n") * 30)
        self.assertEqual(files(self.root, "example.com", "tmp"), [])
        self.assertEqual(
            self.smtp.send(b".\r\n"), b"552 5.3.4 Error: message size exceeds fixed maximum message size\r\n"
        )


class PipeliningTests(ESMTPTestCase):
    """
    RFC 2920 PIPELINING, also when validation is asynchronous.
    """

    def test_asynchronousValidatorsKeepOrder(self) -> None:
        """
        While a validator's answer is pending no later command is answered,
        so replies come in order (Twisted ticket 8126).
        """
        pending: list[Deferred[Any]] = []

        class SlowDelivery:
            def receivedHeader(self, *args: Any) -> None:
                return None

            def validateFrom(self, helo: Any, origin: Any) -> Deferred[Any]:
                d: Deferred[Any] = Deferred()
                pending.append(d)
                return d.addCallback(lambda _: origin)

            def validateTo(self, user: Any) -> Deferred[Any]:
                d: Deferred[Any] = Deferred()
                pending.append(d)
                return d.addCallback(lambda _: lambda: None)

        delivery = SlowDelivery()
        self.smtp.protocol.deliveryFactory = type("F", (), {"getMessageDelivery": lambda s: delivery})()
        self.assertEqual(self.smtp.send(ENVELOPE + b"RCPT TO:<b@example.com>\r\nNOOP\r\n"), b"")
        replies = []
        while pending:
            pending.pop(0).callback(None)
            replies.append(self.smtp.take())
        self.assertEqual(
            replies,
            [b"250 2.1.0 Ok\r\n", b"250 2.1.5 Ok\r\n", b"250 2.1.5 Ok\r\n250 2.0.0 Ok\r\n"],
        )

    def test_noValidRecipientsThenData(self) -> None:
        """
        In a pipelined batch whose recipients were all refused, DATA gets
        554 5.5.1 and the body that follows is read as commands.
        """
        replies = self.smtp.replies(
            b"MAIL FROM:<s@x.org>\r\nRCPT TO:<x@other.org>\r\nDATA\r\nNOOP\r\n"
        )
        self.assertEqual(replies[2:], [b"554 5.5.1 Error: no valid recipients", b"250 2.0.0 Ok"])


class SMTPUTF8Tests(ESMTPTestCase):
    """
    RFC 6531 SMTPUTF8 and internationalised domains.
    """

    def test_utf8Addresses(self) -> None:
        """
        With SMTPUTF8, UTF-8 local parts and a U-label domain are accepted;
        the domain matches its configured A-label form.
        """
        self.smtp.send(
            "MAIL FROM:<j\u00f6rg@x.org> SMTPUTF8\r\nRCPT TO:<\u00fcser@b\u00fccher.example>\r\n"
            "DATA\r\n".encode()
            + MESSAGE
            + b".\r\n"
        )
        self.threads.runAll()
        [name] = files(self.root, "xn--bcher-kva.example", "new")
        with open(os.path.join(self.root, "xn--bcher-kva.example", "new", name), "rb") as f:
            data = f.read().decode("utf-8")
        self.assertIn("Return-Path: <j\u00f6rg@x.org>\n", data)
        self.assertIn("Delivered-To: \u00fcser@xn--bcher-kva.example\n", data)
        self.assertIn(" with UTF8SMTP id ", data)

    def test_aLabelRecipient(self) -> None:
        """
        An A-label recipient domain matches too, without SMTPUTF8.
        """
        self.assertEqual(
            self.smtp.replies(b"MAIL FROM:<s@x.org>\r\nRCPT TO:<a@XN--BCHER-KVA.example>\r\n")[1],
            b"250 2.1.5 Ok",
        )

    def test_utf8WithoutSMTPUTF8(self) -> None:
        """
        Without the SMTPUTF8 parameter, non-ASCII addresses get 553 5.6.7.
        """
        self.assertEqual(
            self.smtp.replies(
                "MAIL FROM:<j\u00f6rg@x.org>\r\nMAIL FROM:<s@x.org>\r\nRCPT TO:<\u00fc@example.com>\r\n".encode()
            ),
            [
                b"553 5.6.7 Error: non-ASCII address requires SMTPUTF8",
                b"250 2.1.0 Ok",
                b"553 5.6.7 Error: non-ASCII address requires SMTPUTF8",
            ],
        )

    def test_badUTF8(self) -> None:
        """
        Bytes that are not UTF-8, and Unicode line separators, are syntax
        errors even with SMTPUTF8.
        """
        replies = self.smtp.replies(
            b"MAIL FROM:<s@x.org> SMTPUTF8\r\nRCPT TO:<\xff@example.com>\r\n"
            + "RCPT TO:<a\u2028b@example.com>\r\n".encode()
        )
        self.assertEqual([r[:9] for r in replies[1:]], [b"501 5.1.3"] * 2)


class ChunkingTests(ESMTPTestCase):
    """
    RFC 3030 CHUNKING: BDAT.
    """

    limits = Limits(maxMessageSize=100)

    def test_chunksStoredExactly(self) -> None:
        """
        Pipelined chunks are stored byte for byte, without dot-unstuffing,
        CRLF becoming LF even when split across chunks.
        """
        body1 = b"Subject: x\r\n\r\n..not stuffed\r"
        body2 = b"\n.\r\nend"
        replies = self.smtp.replies(
            ENVELOPE
            + b"BDAT %d\r\n" % len(body1)
            + body1
            + b"BDAT %d LAST\r\n" % len(body2)
            + body2
        )
        self.assertEqual(replies[2], b"250 2.0.0 Ok: %d octets received" % len(body1))
        self.threads.runAll()
        self.assertTrue(self.smtp.take().startswith(b"250 2.0.0 Ok: stored as "))
        self.assertEqual(self.stored(), [b"Subject: x\n\n..not stuffed\n.\nend"])

    def test_pipelinedChunksCopiedOnce(self) -> None:
        """
        Many chunks pipelined in one segment are each taken from the input
        once: what follows a chunk is not copied out and back for every
        chunk (which would make a long pipeline cost its square).
        """
        copied: list[int] = []
        for name in ("take", "takeAll"):
            real = getattr(InputBuffer, name)

            def counting(self: InputBuffer, *args: Any, real: Any = real) -> bytes:
                data: bytes = real(self, *args)
                copied.append(len(data))
                return data

            self.patch(InputBuffer, name, counting)
        chunks = b"".join(b"BDAT 1\r\nx" for _ in range(90)) + b"BDAT 1 LAST\r\ny"
        self.smtp.send(ENVELOPE + chunks)
        self.threads.runAll()
        self.assertEqual(self.stored(), [b"x" * 90 + b"y"])
        self.assertEqual(sum(copied), 91)

    def test_rcptBetweenChunks(self) -> None:
        """
        RCPT after the first BDAT is refused with 503 (RFC 3030: recipients
        come first), not accepted for a message that would never reach it.
        """
        replies = self.smtp.replies(
            ENVELOPE + b"BDAT 3\r\nabcRCPT TO:<b@example.com>\r\nBDAT 1 LAST\r\nd"
        )
        self.assertEqual(replies[3], b"503 5.5.1 Error: RCPT not allowed after BDAT")
        self.threads.runAll()
        self.assertEqual(self.stored(), [b"abcd"])

    def test_emptyLastChunk(self) -> None:
        """
        C{BDAT 0 LAST} ends the message.
        """
        self.smtp.send(ENVELOPE + b"BDAT 3\r\nabcBDAT 0 LAST\r\n")
        self.threads.runAll()
        self.assertEqual(self.stored(), [b"abc"])

    def test_withoutTransaction(self) -> None:
        """
        BDAT without MAIL, or without a valid recipient, gets an error only
        after its data has been read, so the data is not taken as commands.
        """
        self.assertEqual(
            self.smtp.replies(
                b"BDAT 6\r\nNOOP\r\nMAIL FROM:<s@x.org>\r\nRCPT TO:<x@other.org>\r\nBDAT 6 LAST\r\nRSET\r\n"
            ),
            [
                b"503 5.5.1 Error: need MAIL command",
                b"250 2.1.0 Ok",
                b"550 5.7.1 <x@other.org>: Relay access denied",
                b"554 5.5.1 Error: no valid recipients",
            ],
        )

    def test_dataAfterBdat(self) -> None:
        """
        DATA in a transaction that used BDAT is a sequence error.
        """
        self.assertEqual(
            self.smtp.replies(ENVELOPE + b"BDAT 1\r\nxDATA\r\n")[3],
            b"503 5.5.1 Error: DATA not allowed after BDAT",
        )

    def test_sizeLimitAcrossChunks(self) -> None:
        """
        Chunks that together pass the limit get 552 5.3.4, nothing is
        stored, and later chunks of the transaction are refused.
        """
        replies = self.smtp.replies(
            ENVELOPE + b"BDAT 60\r\n" + b"a" * 60 + b"BDAT 60\r\n" + b"b" * 60 + b"BDAT 1 LAST\r\nc"
        )
        self.assertEqual(
            replies[2:],
            [
                b"250 2.0.0 Ok: 60 octets received",
                b"552 5.3.4 Error: message size exceeds fixed maximum message size",
                b"503 5.5.1 Error: need MAIL command",
            ],
        )
        self.assertEqual((files(self.root, "example.com", "tmp"), files(self.root, "example.com", "new")), ([], []))

    def test_pipelinedChunksAfterARefusalDoNotHangUp(self) -> None:
        """
        Chunks a client had pipelined behind a refused one are read and
        answered, but not counted as its errors: the connection stays up
        and usable.
        """
        chunks = b"".join(b"BDAT 60\r\n" + b"z" * 60 for _ in range(15))
        replies = self.smtp.replies(ENVELOPE + b"BDAT 60\r\n" + b"a" * 60 + chunks + b"BDAT 1 LAST\r\nc" + b"NOOP\r\n")
        self.assertEqual(replies[3], b"552 5.3.4 Error: message size exceeds fixed maximum message size")
        self.assertEqual(replies[4:-1], [b"503 5.5.1 Error: need MAIL command"] * 15)
        self.assertEqual(replies[-1], b"250 2.0.0 Ok")
        self.assertFalse(self.smtp.transport.disconnecting)

    def test_endlessChunksAfterARefusalAreJunk(self) -> None:
        """
        Chunks thrown away after a refused one count as junk: past the
        junk limit they become errors, and an endless stream of them ends
        with 421.
        """
        chunks = b"".join(b"BDAT 1\r\nz" for _ in range(200))
        replies = self.smtp.replies(ENVELOPE + b"BDAT 200\r\n" + b"a" * 200 + chunks)
        self.assertEqual(replies[-1], b"421 4.7.0 mx.example.com Error: too many errors")
        # MAIL, RCPT, the 552 (one error), 100 junk chunks, 9 more (errors), 421.
        self.assertEqual(len(replies), 3 + 100 + 9 + 1)
        self.assertTrue(self.smtp.transport.disconnecting)

    def test_badSyntax(self) -> None:
        """
        A BDAT without a valid size is a syntax error.
        """
        self.assertEqual(
            self.smtp.replies(b"BDAT\r\nBDAT x\r\nBDAT -1\r\n"),
            [b"501 5.5.4 Syntax: BDAT count [LAST]"] * 3,
        )

    def test_resetMidway(self) -> None:
        """
        RSET between chunks drops the message.
        """
        self.smtp.send(ENVELOPE + b"BDAT 3\r\nabcRSET\r\n")
        self.assertEqual((files(self.root, "example.com", "tmp"), files(self.root, "example.com", "new")), ([], []))

    def test_disconnectMidChunk(self) -> None:
        """
        A client that leaves inside a chunk leaves nothing behind.
        """
        self.smtp.send(ENVELOPE + b"BDAT 50\r\nabc")
        self.smtp.close()
        self.assertEqual((files(self.root, "example.com", "tmp"), files(self.root, "example.com", "new")), ([], []))


class LimitTests(ESMTPTestCase):
    """
    Recipients, line lengths, timeouts, errors and connections.
    """

    limits = Limits(
        maxRecipients=100,
        commandTimeout=30,
        dataTimeout=20,
        maxErrors=3,
        maxConnections=3,
        maxConnectionsPerClient=2,
    )

    def test_recipientLimit(self) -> None:
        """
        100 recipients are accepted, the 101st gets 452 4.5.3.
        """
        replies = self.smtp.replies(
            b"MAIL FROM:<s@x.org>\r\n" + b"".join(b"RCPT TO:<r%d@example.com>\r\n" % i for i in range(101))
        )
        self.assertEqual(replies[1:101], [b"250 2.1.5 Ok"] * 100)
        self.assertEqual(replies[101], b"452 4.5.3 Error: too many recipients")

    def test_recipientOvershoot(self) -> None:
        """
        As many RCPTs again past the limit are refused without counting as
        errors (a pipelining client keeps its transaction); beyond those,
        each is an error.
        """
        replies = self.smtp.replies(
            b"MAIL FROM:<s@x.org>\r\n" + b"".join(b"RCPT TO:<r%d@example.com>\r\n" % i for i in range(200))
        )
        self.assertEqual(replies[101:], [b"452 4.5.3 Error: too many recipients"] * 100)
        self.assertFalse(self.smtp.transport.disconnecting)
        replies = self.smtp.replies(b"RCPT TO:<x@example.com>\r\n" * 3)
        self.assertEqual(replies[-1], b"421 4.7.0 mx.example.com Error: too many errors")

    def test_commandLineLength(self) -> None:
        """
        A command over 512 octets gets 500 5.5.2; MAIL may be longer by what
        its parameters add.
        """
        self.assertEqual(
            self.smtp.replies(b"NOOP " + b"x" * 505 + b"\r\nNOOP " + b"x" * 506 + b"\r\n"),
            [b"250 2.0.0 Ok", b"500 5.5.2 Error: line too long"],
        )
        local = b"a" * 60
        domain = b".".join([b"d" * 60] * 3) + b".example"
        mail = b"MAIL FROM:<" + local + b"@" + domain + b"> SIZE=100 BODY=8BITMIME SMTPUTF8\r\n"
        self.assertEqual(self.smtp.send(mail), b"250 2.1.0 Ok\r\n")

    def test_longDataLines(self) -> None:
        """
        Text lines far over 998 octets in DATA are stored byte-exact and do
        not drop the connection or end the message: the commands in the
        body after a 20 KiB line stay content (no resynchronisation).
        """
        smtp = SMTPDriver(self.deliverer, self.clock, factory=self.factory, ehlo=b"client.example")
        long = b"L" * 20000
        body = long + b"\r\nRSET\r\nMAIL FROM:<evil@x.org>\r\nRCPT TO:<b@example.com>\r\nDATA\r\nsmuggled\r\n"
        self.assertEqual(smtp.replies(ENVELOPE + b"DATA\r\n" + body + b".\r\n")[3:], [])
        self.threads.runAll()
        self.assertTrue(smtp.take().startswith(b"250 2.0.0 Ok: stored as "))
        self.assertEqual(self.stored(), [body.replace(b"\r\n", b"\n")])

    def test_commandTimeout(self) -> None:
        """
        A client silent for the command timeout gets 421 4.4.2.
        """
        self.clock.advance(29)
        self.assertEqual(self.smtp.send(b"NOOP\r\n"), b"250 2.0.0 Ok\r\n")
        self.clock.advance(30)
        self.assertEqual(self.smtp.take(), b"421 4.4.2 mx.example.com Error: timeout exceeded\r\n")
        self.assertTrue(self.smtp.transport.disconnecting)

    def test_dataTimeout(self) -> None:
        """
        A client silent mid-DATA for the data timeout is dropped, and its
        message with it.
        """
        self.smtp.send(ENVELOPE + b"DATA\r\npartial\r\n")
        self.clock.advance(20)
        self.assertEqual(self.smtp.take(), b"421 4.4.2 mx.example.com Error: timeout exceeded\r\n")
        self.smtp.close()
        self.assertEqual(files(self.root, "example.com", "tmp"), [])

    def test_ownSlownessIsNotTheClients(self) -> None:
        """
        While MailHarbor is storing a message the client's timer is stopped.
        """
        self.smtp.send(ENVELOPE + b"DATA\r\n" + MESSAGE + b".\r\n")
        self.clock.advance(100)
        self.threads.runAll()
        self.assertTrue(self.smtp.take().startswith(b"250 2.0.0 Ok: stored"))
        self.assertFalse(self.smtp.transport.disconnecting)

    def test_errorLimit(self) -> None:
        """
        After the configured number of error replies the client gets
        421 4.7.0 and is disconnected.
        """
        self.assertEqual(
            self.smtp.replies(b"FOO\r\nNOOP\r\nBAR\r\nRCPT TO:<a@b.c>\r\nNOOP\r\n"),
            [
                b"500 5.5.2 Error: command not recognized",
                b"250 2.0.0 Ok",
                b"500 5.5.2 Error: command not recognized",
                b"503 5.5.1 Error: need MAIL command",
                b"421 4.7.0 mx.example.com Error: too many errors",
            ],
        )
        self.assertTrue(self.smtp.transport.disconnecting)

    def test_temporaryErrorsCount(self) -> None:
        """
        4xx replies count towards the error limit too, as Postfix counts
        them: a client cannot collect refusals for ever.
        """
        self.assertEqual(
            self.smtp.replies(b"STARTTLS\r\nSTARTTLS\r\nSTARTTLS\r\n")[-1],
            b"421 4.7.0 mx.example.com Error: too many errors",
        )
        self.assertTrue(self.smtp.transport.disconnecting)

    def test_errorsForgivenAfterDelivery(self) -> None:
        """
        The error limit counts errors since the last message stored.
        """
        smtp = self.smtp
        smtp.send(b"FOO\r\nBAR\r\n" + ENVELOPE + b"DATA\r\n" + MESSAGE + b".\r\n")
        self.threads.runAll()
        self.assertTrue(smtp.take().startswith(b"250 2.0.0 Ok: stored as "))
        self.assertEqual(smtp.replies(b"FOO\r\nBAR\r\n"), [b"500 5.5.2 Error: command not recognized"] * 2)
        self.assertFalse(smtp.transport.disconnecting)

    def test_junkCommandLimit(self) -> None:
        """
        Past the junk limit each NOOP, RSET, VRFY or HELP is also an error,
        so a client cannot hold the connection with them for ever.
        """
        factory = HarborSMTPFactory(
            self.deliverer, ServerSettings(HOSTNAME, Limits(maxErrors=3, maxJunkCommands=4)), self.clock
        )
        smtp = SMTPDriver(self.deliverer, self.clock, factory=factory)
        replies = smtp.replies(b"NOOP\r\nRSET\r\nVRFY x\r\nHELP\r\n" + b"NOOP\r\n" * 3)
        self.assertEqual(replies[4:], [b"250 Ok", b"250 Ok", b"421 mx.example.com Error: too many errors"])
        self.assertTrue(smtp.transport.disconnecting)

    def test_connectionLimits(self) -> None:
        """
        Past the per-client limit a client gets 421 4.7.0 at once; loopback
        clients are exempt from it but not from the total; a closed
        connection frees its place.
        """
        second = SMTPDriver(self.deliverer, self.clock, factory=self.factory)
        third = SMTPDriver(self.deliverer, self.clock, factory=self.factory)
        self.assertEqual(
            third.banner, b"421 mx.example.com Error: too many connections from your address\r\n"
        )
        self.assertTrue(third.transport.disconnecting)
        third.close()
        local = SMTPDriver(self.deliverer, self.clock, "127.0.0.1", factory=self.factory)
        self.assertTrue(local.banner.startswith(b"220 "))
        full = SMTPDriver(self.deliverer, self.clock, "127.0.0.1", factory=self.factory)
        self.assertEqual(full.banner, b"421 mx.example.com Error: too many connections\r\n")
        full.close()
        second.close()
        self.assertTrue(SMTPDriver(self.deliverer, self.clock, factory=self.factory).banner.startswith(b"220 "))


class SlowClientTests(ESMTPTestCase):
    """
    Clients that send slowly (RFC 5321 section 4.5.3.2; Postfix's
    C{smtpd_per_request_deadline} and C{smtpd_min_data_rate}): a deadline
    per command line, a minimum rate in message data, and only the client's
    own time counted.
    """

    limits = Limits(commandTimeout=30, dataTimeout=20, minDataRate=500)

    def setUp(self) -> None:
        super().setUp()
        self.events: list[dict[str, Any]] = []
        self.patch(HarborESMTP, "_log", Logger(observer=cast(ILogObserver, self.events.append)))

    def trickle(self, data: bytes, every: float) -> bytes:
        """
        Send C{data} a byte at a time, one every C{every} seconds, until it
        is all sent or the connection is closing.

        @return: what the server wrote meanwhile.
        """
        written = b""
        for i in range(len(data)):
            self.clock.advance(every)
            written += self.smtp.take()
            if self.smtp.transport.disconnecting:
                break
            written += self.smtp.send(data[i : i + 1])
        return written

    def timedOut(self) -> dict[str, Any]:
        """
        The one log line of the timeout.
        """
        [event] = [e for e in self.events if "rule" in e]
        return event

    def test_tricklingCommandCutOff(self) -> None:
        """
        A command sent a byte every 10 s, each well within the timeout, is
        cut off 30 s after its first byte with 421 4.4.2, and the log says
        which rule and how far the client got.
        """
        written = self.trickle(b"MAIL FROM:<s@x.org>\r\n", 10)
        self.assertEqual(written, b"421 4.4.2 mx.example.com Error: command deadline exceeded\r\n")
        self.assertTrue(self.smtp.transport.disconnecting)
        event = self.timedOut()
        self.assertEqual(
            (event["client"], event["rule"], event["received"], event["elapsed"], event["verb"]),
            ("192.0.2.7", "command deadline", 3, 30, "EHLO"),
        )

    def test_slowLineWithinTheDeadline(self) -> None:
        """
        A line whose bytes come slowly but end within 30 s of its first is
        answered, and the next line has its own 30 s.
        """
        self.assertEqual(self.trickle(b"NOOP\r\n", 5), b"250 2.0.0 Ok\r\n")
        self.assertEqual(self.trickle(b"NOOP\r\n", 5), b"250 2.0.0 Ok\r\n")
        self.assertFalse(self.smtp.transport.disconnecting)

    def test_idleThenSlowLine(self) -> None:
        """
        The client may be silent for up to 30 s after a reply and then take
        up to 30 s over the line: the two bounds are separate.
        """
        self.clock.advance(29)
        self.assertEqual(self.smtp.send(b"NO"), b"")
        self.clock.advance(29)
        self.assertEqual(self.smtp.send(b"OP\r\n"), b"250 2.0.0 Ok\r\n")

    def test_idleTimeout(self) -> None:
        """
        A client silent for 30 s after a reply still gets the plain timeout
        reply, logged as the idle rule.
        """
        self.smtp.send(b"NOOP\r\n")
        self.clock.advance(29.9)
        self.assertEqual(self.smtp.take(), b"")
        self.clock.advance(0.1)
        self.assertEqual(self.smtp.take(), b"421 4.4.2 mx.example.com Error: timeout exceeded\r\n")
        self.assertEqual(self.timedOut()["rule"], "idle")

    def test_pregreetWaitNotCounted(self) -> None:
        """
        The pregreet wait is ours: the client's 30 s start with the banner.
        """
        factory = HarborSMTPFactory(
            self.deliverer, ServerSettings(HOSTNAME, Limits(commandTimeout=30, pregreetWait=6)), self.clock
        )
        smtp = SMTPDriver(self.deliverer, self.clock, factory=factory)
        self.clock.advance(6)
        self.assertEqual(smtp.take(), b"220 mx.example.com ESMTP MailHarbor\r\n")
        self.clock.advance(29.9)
        self.assertEqual(smtp.take(), b"")
        self.clock.advance(0.1)
        self.assertEqual(smtp.take(), b"421 mx.example.com Error: timeout exceeded\r\n")

    def test_pipelinedPartialLine(self) -> None:
        """
        A partial line sent behind a complete one has 30 s from the reply
        to the complete one.
        """
        self.assertEqual(self.smtp.send(b"NOOP\r\nNO"), b"250 2.0.0 Ok\r\n")
        self.clock.advance(25)
        self.smtp.send(b"O")
        self.clock.advance(5)
        self.assertEqual(self.smtp.take(), b"421 4.4.2 mx.example.com Error: command deadline exceeded\r\n")

    def test_dataTrickleCutOff(self) -> None:
        """
        Message data sent a byte every 5 s, never silent for the 20 s data
        timeout but far below 500 bytes/s, is cut off with 421 4.4.2 once
        its 20 s in hand are used up; the message is dropped.
        """
        self.assertEqual(self.smtp.replies(ENVELOPE + b"DATA\r\n")[-1], b"354 End data with <CR><LF>.<CR><LF>")
        written = self.trickle(b"Subject: slow\r\n\r\n" * 10, 5)
        self.assertEqual(written, b"421 4.4.2 mx.example.com Error: data rate too low\r\n")
        event = self.timedOut()
        self.assertEqual((event["rule"], event["received"], event["verb"]), ("data rate", 4, "DATA"))
        self.assertTrue(20 < event["elapsed"] <= 25, event)
        [line] = [e for e in self.events if "result" in e]
        self.assertEqual(line["result"], "timed out: data rate")
        self.smtp.close()
        self.assertEqual((files(self.root, "example.com", "tmp"), files(self.root, "example.com", "new")), ([], []))

    def test_chunkTrickleCutOff(self) -> None:
        """
        A BDAT chunk sent below the rate is cut off as DATA is.
        """
        self.smtp.replies(ENVELOPE + b"BDAT 1000 LAST\r\n")
        written = self.trickle(b"x" * 1000, 5)
        self.assertEqual(written, b"421 4.4.2 mx.example.com Error: data rate too low\r\n")

    def test_tinyChunksCutOff(self) -> None:
        """
        One-byte BDAT chunks, each command well inside its deadline, share
        the message's data rate: the client is cut off once the chunks have
        fallen the data timeout behind it, not let trickle for ever.
        """
        self.smtp.replies(ENVELOPE)
        written = b""
        for _ in range(5):
            self.clock.advance(15)
            written += self.smtp.take() + self.smtp.send(b"BDAT 1\r\nx")
            if self.smtp.transport.disconnecting:
                break
        self.assertEqual(
            written,
            b"250 2.0.0 Ok: 1 octets received\r\n"
            b"250 2.0.0 Ok: 2 octets received\r\n"
            b"421 4.4.2 mx.example.com Error: data rate too low\r\n",
        )

    def test_chunksAboveTheRate(self) -> None:
        """
        A message sent in 100 chunks of 10 KB, one a second, is stored:
        the chunks together keep above the rate.
        """
        self.smtp.replies(ENVELOPE)
        chunk = b"x" * 9998 + b"\r\n"
        for sent in range(10000, 1000001, 10000):
            self.clock.advance(1)
            reply = self.smtp.send(b"BDAT 10000\r\n" + chunk)
            self.assertEqual(reply, b"250 2.0.0 Ok: %d octets received\r\n" % sent)
        self.clock.advance(1)
        self.smtp.send(b"BDAT 0 LAST\r\n")
        self.threads.runAll()
        self.assertTrue(self.smtp.take().startswith(b"250 2.0.0 Ok: stored as "))

    def test_slowChunksAboveTheRate(self) -> None:
        """
        Chunks that each take longer than the data timeout, their bytes
        coming above the rate, are stored: the message's budget earns as
        the bytes come, not only once a chunk is over.
        """
        self.smtp.replies(ENVELOPE)
        line = b"x" * 998 + b"\r\n"
        for sent in range(30000, 90001, 30000):
            self.assertEqual(self.smtp.send(b"BDAT 30000\r\n"), b"")
            for _ in range(30):
                self.clock.advance(1)
                written = self.smtp.send(line)
            self.assertEqual(written, b"250 2.0.0 Ok: %d octets received\r\n" % sent)
        self.smtp.send(b"BDAT 0 LAST\r\n")
        self.threads.runAll()
        self.assertTrue(self.smtp.take().startswith(b"250 2.0.0 Ok: stored as "))

    def test_slowButAboveTheRate(self) -> None:
        """
        A 400 KB message at 1 KB/s takes 400 s, twenty times the data
        timeout, and is stored.
        """
        self.smtp.replies(ENVELOPE + b"DATA\r\n")
        line = b"x" * 998 + b"\r\n"
        for _ in range(400):
            self.clock.advance(1)
            self.assertEqual(self.smtp.send(line), b"")
        self.smtp.send(b".\r\n")
        self.threads.runAll()
        self.assertTrue(self.smtp.take().startswith(b"250 2.0.0 Ok: stored as "))
        self.assertEqual(self.stored(), [line.replace(b"\r\n", b"\n") * 400])

    def test_silenceAfterFastData(self) -> None:
        """
        Bytes earn no more than the data timeout: after a fast burst, 20 s
        of silence still ends the message, as the idle rule of data.
        """
        self.smtp.replies(ENVELOPE + b"DATA\r\n")
        self.smtp.send(b"x" * 1000000)
        self.clock.advance(20)
        self.assertEqual(self.smtp.take(), b"421 4.4.2 mx.example.com Error: timeout exceeded\r\n")
        self.assertEqual(self.timedOut()["rule"], "data idle")

    def test_ownStorageNotCounted(self) -> None:
        """
        Time spent storing the message is not the client's: a partial line
        pipelined behind the message has 30 s from the reply, however long
        the storage took.
        """
        self.smtp.send(ENVELOPE + b"DATA\r\n")
        self.smtp.send(MESSAGE + b".\r\nNO")
        self.clock.advance(1000)
        self.threads.runAll()
        self.assertTrue(self.smtp.take().startswith(b"250 2.0.0 Ok: stored"))
        self.clock.advance(29)
        self.assertEqual(self.smtp.send(b"OP\r\n"), b"250 2.0.0 Ok\r\n")
        self.clock.advance(29.9)
        self.assertEqual(self.smtp.take(), b"")
        self.clock.advance(0.1)
        self.assertEqual(self.smtp.take(), b"421 4.4.2 mx.example.com Error: timeout exceeded\r\n")

    def test_ownValidationNotCounted(self) -> None:
        """
        Time waiting for a slow validator (a policy hook, say) is not the
        client's: the line it had started before the wait keeps the time it
        had left, no more and no less.
        """
        pending: list[Deferred[Any]] = []

        class SlowDelivery:
            def validateFrom(self, helo: Any, origin: Any) -> Deferred[Any]:
                d: Deferred[Any] = Deferred()
                pending.append(d)
                return d.addCallback(lambda _: origin)

        delivery = SlowDelivery()
        self.smtp.protocol.deliveryFactory = type("F", (), {"getMessageDelivery": lambda s: delivery})()
        self.assertEqual(self.smtp.send(b"MAIL FROM:<s@x.org>\r\nNO"), b"")
        self.clock.advance(500)
        self.assertEqual(self.smtp.take(), b"")
        pending.pop().callback(None)
        self.assertEqual(self.smtp.take(), b"250 2.1.0 Ok\r\n")
        self.clock.advance(29.9)
        self.assertEqual(self.smtp.take(), b"")
        self.clock.advance(0.1)
        self.assertEqual(self.smtp.take(), b"421 4.4.2 mx.example.com Error: command deadline exceeded\r\n")

    def test_notReadingWhileStoringNotCounted(self) -> None:
        """
        While the client is not read from because it sent far ahead of a
        message being stored, its clock is stopped too.
        """
        self.smtp.send(ENVELOPE + b"DATA\r\n" + MESSAGE + b".\r\n")
        self.smtp.send(b"NOOP\r\n" * 50 + b"x" * 300000)
        self.assertEqual(self.smtp.transport.producerState, "paused")
        self.clock.advance(1000)
        self.threads.runAll()
        self.assertEqual(self.smtp.transport.producerState, "producing")
        self.assertFalse(self.smtp.transport.disconnecting)
        self.assertEqual(self.smtp.take().count(b"250 2.0.0 Ok\r\n"), 50)

    def test_notReadingRepliesCounted(self) -> None:
        """
        A client that does not read our replies has its clock running: it
        cannot hold the connection by never reading.
        """
        self.smtp.protocol.pauseProducing()
        self.smtp.send(b"NOOP\r\n" * 100000)
        self.assertEqual(self.smtp.transport.producerState, "paused")
        self.clock.advance(30)
        self.assertTrue(self.smtp.transport.disconnecting)

    def test_unreadGoodbyeAborted(self) -> None:
        """
        A client that does not read the 421 cannot keep its connection:
        it is aborted C{CLOSE_GRACE} seconds after the close began, and
        not before.
        """
        self.smtp.protocol.pauseProducing()
        self.smtp.send(b"NOOP\r\n" * 100000)
        self.clock.advance(30)
        self.assertTrue(self.smtp.transport.disconnecting)
        self.clock.advance(CLOSE_GRACE - 0.5)
        self.assertFalse(self.smtp.transport.disconnected)
        self.clock.advance(0.5)
        self.assertTrue(self.smtp.transport.disconnected)

    def test_closedInTimeNotAborted(self) -> None:
        """
        A connection that closes within the grace leaves no abort behind.
        """
        self.smtp.send(b"QUIT\r\n")
        self.assertTrue(self.smtp.transport.disconnecting)
        self.smtp.close()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_timerMovedNotReplaced(self) -> None:
        """
        Bytes and replies move the one timer; they do not pile up calls.
        """
        self.smtp.send(ENVELOPE + b"DATA\r\n")
        for _ in range(10):
            self.smtp.send(b"x\r\n")
            self.assertEqual(len(self.clock.getDelayedCalls()), 1)


class DataRateDisabledTests(ESMTPTestCase):
    """
    C{min_data_rate = 0}.
    """

    limits = Limits(commandTimeout=30, dataTimeout=20, minDataRate=0)

    def test_trickleAllowed(self) -> None:
        """
        Without a minimum rate, data sent a byte every 15 s is taken for as
        long as it lasts, and stored; silence for the data timeout still
        ends it.
        """
        self.smtp.replies(ENVELOPE + b"DATA\r\n")
        for byte in MESSAGE:
            self.clock.advance(15)
            self.assertEqual(self.smtp.send(bytes([byte])), b"")
        self.assertFalse(self.smtp.transport.disconnecting)
        self.smtp.send(b".\r\n")
        self.threads.runAll()
        self.assertTrue(self.smtp.take().startswith(b"250 2.0.0 Ok: stored as "))
        self.smtp.replies(ENVELOPE + b"DATA\r\n")
        self.clock.advance(20)
        self.assertEqual(self.smtp.take(), b"421 4.4.2 mx.example.com Error: timeout exceeded\r\n")


class SmugglingTests(ESMTPTestCase):
    """
    Only <CRLF>.<CRLF> ends DATA (CVE-2023-51764 class).
    """

    def test_oneMessageOnly(self) -> None:
        """
        Bodies with LF.LF, CR.CRLF, LF.CRLF and CR.CR followed by a second
        transaction store exactly one message holding all of it.
        """
        hidden = b"MAIL FROM:<evil@x.org>\r\nRCPT TO:<b@example.com>\r\nDATA\r\nsmuggled\r\n"
        for separator in [b"\n.\n", b"\r.\r\n", b"\n.\r\n", b"\r.\r"]:
            body = b"Subject: s\r\n\r\nbody" + separator + hidden
            self.smtp.send(ENVELOPE + b"DATA\r\n" + body + b".\r\n")
            self.threads.runAll()
            self.assertTrue(self.smtp.take().startswith(b"250 2.0.0 Ok: stored as "), separator)
        self.assertEqual(len(files(self.root, "example.com", "new")), 4)
        for data in self.stored():
            self.assertIn(b"smuggled", data)

    def test_bareNewlineNormalized(self) -> None:
        """
        By default a bare LF is stored as a line end.
        """
        self.smtp.send(ENVELOPE + b"DATA\r\na\nb\r\n.\r\n")
        self.threads.runAll()
        self.assertEqual(self.stored(), [b"a\nb\n"])


class BareNewlineRejectTests(ESMTPTestCase):
    """
    C{bare_newline = "reject"}.
    """

    limits = Limits(bareNewline="reject")

    def test_rejected(self) -> None:
        """
        A message with a bare LF is refused with 550 5.5.2 after the dot and
        nothing is stored; a clean one still is.
        """
        self.assertEqual(
            self.smtp.send(ENVELOPE + b"DATA\r\na\nb\r\n.\r\n").split(b"\r\n")[-2],
            b"550 5.5.2 Error: bare <LF> received",
        )
        self.assertEqual((files(self.root, "example.com", "tmp"), files(self.root, "example.com", "new")), ([], []))
        self.assertEqual(
            self.smtp.send(ENVELOPE + b"BDAT 4 LAST\r\na\nb\n").split(b"\r\n")[-2],
            b"550 5.5.2 Error: bare <LF> received",
        )
        self.smtp.send(ENVELOPE + b"DATA\r\n" + MESSAGE + b".\r\n")
        self.threads.runAll()
        self.assertEqual(len(files(self.root, "example.com", "new")), 1)


class MinimumCommandsTests(ESMTPTestCase):
    """
    RFC 5321 section 4.5.1.
    """

    def test_postmasterWithoutDomain(self) -> None:
        """
        C{RCPT TO:<Postmaster>} is accepted and delivered to the first
        domain's postmaster.
        """
        self.smtp.send(b"MAIL FROM:<s@x.org>\r\nRCPT TO:<Postmaster>\r\nDATA\r\n" + MESSAGE + b".\r\n")
        self.threads.runAll()
        [name] = files(self.root, "example.com", "new")
        with open(os.path.join(self.root, "example.com", "new", name), "rb") as f:
            self.assertIn(b"\nDelivered-To: postmaster@example.com\n", f.read())

    def test_vrfyNeedsArgument(self) -> None:
        """
        VRFY without an argument is a syntax error.
        """
        self.assertEqual(self.smtp.send(b"VRFY\r\n"), b"501 5.5.4 Syntax: VRFY address\r\n")


class BackPressureTests(ESMTPTestCase):
    """
    Neither input nor output is buffered without bound.
    """

    # Tens of thousands of NOOPs, which the junk limit would otherwise end.
    limits = Limits(maxJunkCommands=10**6)

    def test_clientNotReadingReplies(self) -> None:
        """
        When the transport says our replies back up, commands are no longer
        processed, and once the unprocessed input is large the client is no
        longer read from, until the replies drain.
        """
        self.smtp.protocol.pauseProducing()
        self.assertEqual(self.smtp.send(b"NOOP\r\nNOOP\r\n"), b"")
        self.assertEqual(self.smtp.transport.producerState, "producing")
        self.smtp.send(b"NOOP\r\n" * 50000)
        self.assertEqual(self.smtp.transport.producerState, "paused")
        self.smtp.protocol.resumeProducing()
        self.assertEqual(self.smtp.transport.producerState, "producing")
        self.assertEqual(self.smtp.take().count(b"250 2.0.0 Ok\r\n"), 50002)

    def test_clientSendingAhead(self) -> None:
        """
        A client that sends far ahead while a reply is pending is no longer
        read from until its backlog is processed.
        """
        self.smtp.send(ENVELOPE + b"DATA\r\n" + MESSAGE + b".\r\n")
        self.smtp.send(b"NOOP\r\n" * 50000)
        self.assertEqual(self.smtp.transport.producerState, "paused")
        self.threads.runAll()
        self.assertEqual(self.smtp.transport.producerState, "producing")
        self.assertEqual(self.smtp.take().count(b"250 2.0.0 Ok\r\n"), 50000)


class ShutdownTests(ESMTPTestCase):
    """
    Graceful shutdown through the L{SessionRegistry}.
    """

    def test_idleSessionsTold421(self) -> None:
        """
        An idle session, or one between MAIL and DATA, gets 421 4.3.2 at
        once and is closed; the shutdown completes when all are gone.
        """
        other = SMTPDriver(self.deliverer, self.clock, factory=self.factory, ehlo=b"client.example")
        other.send(ENVELOPE)
        done = self.factory.registry.shutdown(30, self.clock)
        expected = b"421 4.3.2 mx.example.com Service shutting down, try again later\r\n"
        self.assertEqual(self.smtp.take(), expected)
        self.assertEqual(other.take(), expected)
        self.assertNoResult(done)
        self.smtp.close()
        other.close()
        self.successResultOf(done)

    def test_messageInFlightFinishes(self) -> None:
        """
        A session receiving a message may finish it: it is stored and
        answered 250, then told 421 4.3.2.
        """
        self.smtp.send(ENVELOPE + b"DATA\r\nSubject: x\r\n")
        done = self.factory.registry.shutdown(30, self.clock)
        self.assertEqual(self.smtp.take(), b"")
        self.smtp.send(b"\r\nbody\r\n.\r\nNOOP\r\n")
        self.assertEqual(self.smtp.take(), b"")
        self.threads.runAll()
        replies = self.smtp.take().split(b"\r\n")
        self.assertTrue(replies[0].startswith(b"250 2.0.0 Ok: stored as "))
        self.assertTrue(replies[1].startswith(b"421 4.3.2 "))
        self.assertTrue(self.smtp.transport.disconnecting)
        self.smtp.close()
        self.successResultOf(done)
        self.assertEqual(len(files(self.root, "example.com", "new")), 1)

    def test_graceRunsOut(self) -> None:
        """
        A message not finished within the grace period is cut off and
        leaves nothing behind.
        """
        self.smtp.send(ENVELOPE + b"DATA\r\nSubject: x\r\n")
        done = self.factory.registry.shutdown(30, self.clock)
        self.clock.advance(30)
        self.assertTrue(self.smtp.transport.disconnecting or self.smtp.transport.disconnected)
        self.smtp.close()
        self.successResultOf(done)
        self.assertEqual((files(self.root, "example.com", "tmp"), files(self.root, "example.com", "new")), ([], []))

    def test_connectionLogLine(self) -> None:
        """
        Each connection ends with one log line: client, HELO, TLS, counts
        and duration.
        """
        from twisted.logger import Logger

        from harbor.smtp._protocol import HarborESMTP

        events: list[dict[str, Any]] = []
        self.patch(HarborESMTP, "_log", Logger(observer=cast(ILogObserver, events.append)))
        self.smtp.send(ENVELOPE + b"RSET\r\nBOGUS\r\n")
        self.clock.advance(2)
        self.smtp.close()
        [line] = [e for e in events if "count" in e]
        self.assertEqual(
            (line["client"], line["helo"], line["tls"], line["count"], line["errors"], line["duration"]),
            ("192.0.2.7", "client.example", "-", 1, 1, 2.0),
        )
