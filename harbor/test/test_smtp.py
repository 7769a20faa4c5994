"""
Tests for L{harbor.smtp} over L{StringTransport}: exact replies, in order.
"""

import errno
import mailbox
import os
from typing import Any, ClassVar, cast

from zope.interface import implementer
from zope.interface.verify import verifyObject

from twisted.cred.portal import IRealm
from twisted.internet.defer import fail, succeed
from twisted.internet.interfaces import IHandshakeListener, IPushProducer
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, Logger, formatEvent
from twisted.mail.smtp import IMessage, SMTPBadRcpt
from twisted.trial.unittest import SynchronousTestCase

from harbor.delivery import IMessageStream
from harbor.hooks.runner import HookRunner
from harbor.hooks.spool import spoolFor
from harbor.routing import DomainConfig, FolderRule
from harbor.smtp._auth import _SessionRealm
from harbor.smtp._protocol import HarborESMTP
from harbor.smtp._transaction import _LineMessage
from harbor.store.commits import CommitQueue
from harbor.store.writer import MEMORY_THRESHOLD
from harbor.test._hooksupport import WAIT, FakeHook
from harbor.test._support import (
    DeferredThreads,
    RecordingFileSystem,
    SMTPDriver,
    files,
    makeDeliverer,
)

MESSAGE = b"Subject: test\r\n\r\nHello.\r\n"


class SMTPTestCase(SynchronousTestCase):
    """
    A Maildir root and a connected SMTP driver for each test.
    """

    domains: ClassVar[list[DomainConfig]] = [DomainConfig("example.com"), DomainConfig("example.org", frozenset({"alice"}))]

    def setUp(self) -> None:
        self.root = self.mktemp()
        self.fs = RecordingFileSystem()
        self.threads = DeferredThreads()
        self.clock = Clock()
        self.deliverer, self.store = makeDeliverer(
            self.root, self.domains, fs=self.fs, runInThread=self.threads, clock=self.clock
        )
        self.events: list[dict[str, Any]] = []
        self.patch(HarborESMTP, "_log", Logger(observer=cast(ILogObserver, self.events.append)))
        self.smtp = SMTPDriver(self.deliverer, self.clock)
        self.ehloReply = self.smtp.send(b"EHLO client.example\r\n")

    def maildir(self, domain: str = "example.com") -> list[mailbox.MaildirMessage]:
        return list(mailbox.Maildir(os.path.join(self.root, domain), create=False))

    def transactionLogs(self) -> list[dict[str, Any]]:
        return [e for e in self.events if "result" in e]

    def startData(self) -> bytes:
        return self.smtp.send(b"MAIL FROM:<s@x.org>\r\nRCPT TO:<a@example.com>\r\nDATA\r\n")

    def assertNothingStored(self) -> None:
        self.assertEqual((files(self.root, "example.com", "tmp"), files(self.root, "example.com", "new")), ([], []))


class InterfaceTests(SMTPTestCase):
    """
    What the protocol says it provides.
    """

    def test_interfaces(self) -> None:
        """
        The protocol is the push producer of its replies and hears when a
        TLS handshake completes.
        """
        self.assertTrue(verifyObject(IPushProducer, self.smtp.protocol))
        self.assertTrue(verifyObject(IHandshakeListener, self.smtp.protocol))

    def test_helpers(self) -> None:
        """
        The AUTH realm is a realm, and the adapter of line-by-line messages
        a message stream.
        """
        self.assertTrue(verifyObject(IRealm, _SessionRealm(self.deliverer, self.smtp.protocol.session)))
        self.assertTrue(verifyObject(IMessageStream, _LineMessage(_FailingMessage())))


class GreetingTests(SMTPTestCase):
    """
    Banner, HELO and EHLO.
    """

    def test_banner(self) -> None:
        """
        The banner names the host and says ESMTP.
        """
        self.assertEqual(self.smtp.banner, b"220 mx.example.com ESMTP MailHarbor\r\n")

    def test_ehloExtensions(self) -> None:
        """
        EHLO lists the extensions MailHarbor honours.
        """
        self.assertEqual(
            self.smtp.send(b"EHLO client.example\r\n"),
            b"250-mx.example.com\r\n250-PIPELINING\r\n250-SIZE 26214400\r\n250-8BITMIME\r\n"
            b"250-SMTPUTF8\r\n250-CHUNKING\r\n250 ENHANCEDSTATUSCODES\r\n",
        )

    def test_helo(self) -> None:
        """
        HELO gets a one-line 250.
        """
        self.assertEqual(self.smtp.send(b"HELO client.example\r\n"), b"250 mx.example.com\r\n")

    def test_greetingNeedsName(self) -> None:
        """
        HELO or EHLO without a name is a syntax error (501 5.5.4).
        """
        self.assertEqual(self.smtp.send(b"EHLO\r\n"), b"501 5.5.4 Syntax: EHLO hostname\r\n")
        self.assertEqual(self.smtp.send(b"HELO  \r\n"), b"501 5.5.4 Syntax: HELO hostname\r\n")

    def test_simpleCommands(self) -> None:
        """
        NOOP, RSET, VRFY, EXPN and HELP get the RFC 5321 answers; VRFY never
        tells whether an address exists.
        """
        self.assertEqual(
            self.smtp.replies(b"NOOP\r\nRSET\r\nVRFY alice\r\nEXPN list\r\nHELP\r\n"),
            [
                b"250 2.0.0 Ok",
                b"250 2.0.0 Ok",
                b"252 2.0.0 Send some mail, I will try my best",
                b"502 5.5.1 Error: EXPN is not supported",
                b"214 2.0.0 Commands: HELO EHLO STARTTLS AUTH MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP",
            ],
        )

    def test_quit(self) -> None:
        """
        QUIT says goodbye and closes; later input is ignored.
        """
        self.assertEqual(self.smtp.send(b"QUIT\r\nNOOP\r\n"), b"221 2.0.0 Bye\r\n")
        self.assertTrue(self.smtp.transport.disconnecting)

    def test_unknownAndGarbage(self) -> None:
        """
        Unknown commands, NUL bytes and non-ASCII verbs get 500 5.5.2, and
        the connection stays usable.
        """
        self.assertEqual(
            self.smtp.replies(b"FOO\r\n\x00\x01\r\n\xff\xfe bar\r\n\r\nNOOP\r\n"),
            [b"500 5.5.2 Error: command not recognized"] * 4 + [b"250 2.0.0 Ok"],
        )

    def test_lineTooLong(self) -> None:
        """
        An over-long command line gets 500 5.5.2; the next command works.
        """
        self.assertEqual(
            self.smtp.replies(b"NOOP " + b"x" * 5000 + b"\r\nNOOP\r\n"),
            [b"500 5.5.2 Error: line too long", b"250 2.0.0 Ok"],
        )

    def test_handlerBug(self) -> None:
        """
        A bug in a command handler is logged and answered 451 4.3.0, and the
        session goes on.
        """

        def broken(argument: bytes) -> None:
            raise ZeroDivisionError()

        self.patch(self.smtp.protocol, "smtp_VRFY", broken)
        self.assertEqual(
            self.smtp.replies(b"VRFY x\r\nNOOP\r\n"),
            [b"451 4.3.0 Error: local error in processing", b"250 2.0.0 Ok"],
        )
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 0)
        self.assertTrue(any(e.get("log_failure") for e in self.events))

    def test_timeout(self) -> None:
        """
        An idle client gets 421 4.4.2 and is disconnected.
        """
        self.clock.advance(HarborESMTP.timeout)
        self.assertEqual(
            self.smtp.take(), b"421 4.4.2 mx.example.com Error: timeout exceeded\r\n"
        )
        self.assertTrue(self.smtp.transport.disconnecting)


class TransactionTests(SMTPTestCase):
    """
    MAIL, RCPT and DATA.
    """

    def test_delivered(self) -> None:
        """
        A message is stored in the domain's Maildir and only then is 250
        sent, naming the stored id.
        """
        self.smtp.send(b"EHLO c\r\nMAIL FROM:<s@x.org>\r\nRCPT TO:<a@example.com>\r\nDATA\r\n")
        self.assertEqual(self.smtp.send(MESSAGE + b".\r\n"), b"")
        self.assertEqual(files(self.root, "example.com", "new"), [])
        self.threads.runAll()
        [name] = files(self.root, "example.com", "new")
        self.assertEqual(self.smtp.take(), f"250 2.0.0 Ok: stored as {name.split(',')[0]}\r\n".encode())
        [message] = self.maildir()
        self.assertEqual(message["Delivered-To"], "a@example.com")
        self.assertEqual(message.get_payload(), "Hello.\n")

    def test_pipelinedReplies(self) -> None:
        """
        A pipelined batch gets one reply per command, in order, with a bad
        recipient among them.
        """
        replies = self.smtp.replies(
            b"MAIL FROM:<s@x.org>\r\nRCPT TO:<a@example.com>\r\n"
            b"RCPT TO:<x@other.org>\r\nRCPT TO:<bob@example.org>\r\nDATA\r\n"
        )
        self.assertEqual(
            replies,
            [
                b"250 2.1.0 Ok",
                b"250 2.1.5 Ok",
                b"550 5.7.1 <x@other.org>: Relay access denied",
                b"550 5.1.1 <bob@example.org>: Recipient address rejected: User unknown",
                b"354 End data with <CR><LF>.<CR><LF>",
            ],
        )

    def test_commandsWaitForStorage(self) -> None:
        """
        Commands pipelined after the final dot are answered only after the
        250 for the message: replies never overtake each other.
        """
        self.smtp.send(b"MAIL FROM:<s@x.org>\r\nRCPT TO:<a@example.com>\r\nDATA\r\n")
        self.assertEqual(self.smtp.send(MESSAGE + b".\r\nMAIL FROM:<t@x.org>\r\nNOOP\r\n"), b"")
        self.threads.runAll()
        replies = self.smtp.take().split(b"\r\n")
        self.assertTrue(replies[0].startswith(b"250 2.0.0 Ok: stored as "))
        self.assertEqual(replies[1:], [b"250 2.1.0 Ok", b"250 2.0.0 Ok", b""])

    def test_severalMessagesOneConnection(self) -> None:
        """
        Transactions follow each other on one connection.
        """
        for i in range(3):
            self.smtp.send(b"MAIL FROM:<s@x.org>\r\nRCPT TO:<a@example.com>\r\nDATA\r\n" + MESSAGE + b".\r\n")
            self.threads.runAll()
        self.assertEqual(len(self.maildir()), 3)
        self.assertEqual([e["result"] for e in self.transactionLogs()], ["stored"] * 3)

    def test_severalRecipients(self) -> None:
        """
        Each recipient gets its own copy; the reply names the first id and
        counts the others.
        """
        self.smtp.send(
            b"MAIL FROM:<s@x.org>\r\nRCPT TO:<a@example.com>\r\nRCPT TO:<b@example.com>\r\n"
            b"RCPT TO:<alice@example.org>\r\nDATA\r\n" + MESSAGE + b".\r\n"
        )
        self.threads.runAll()
        self.assertIn(b"(+2 more copies)", self.smtp.take())
        self.assertEqual(len(self.maildir()), 2)
        self.assertEqual(len(self.maildir("example.org")), 1)
        self.assertEqual(len(self.transactionLogs()[0]["ids"].split(",")), 3)

    def test_dataWithoutRecipients(self) -> None:
        """
        DATA when no recipient was accepted gets 554 5.5.1; DATA without
        MAIL gets 503.
        """
        self.assertEqual(self.smtp.send(b"DATA\r\n"), b"503 5.5.1 Error: need MAIL command\r\n")
        self.assertEqual(
            self.smtp.replies(b"MAIL FROM:<s@x.org>\r\nRCPT TO:<x@other.org>\r\nDATA\r\n")[2],
            b"554 5.5.1 Error: no valid recipients",
        )

    def test_sequenceErrors(self) -> None:
        """
        RCPT before MAIL and a second MAIL get 503 5.5.1.
        """
        self.assertEqual(
            self.smtp.replies(b"RCPT TO:<a@example.com>\r\nMAIL FROM:<s@x.org>\r\nMAIL FROM:<s@x.org>\r\n"),
            [b"503 5.5.1 Error: need MAIL command", b"250 2.1.0 Ok", b"503 5.5.1 Error: nested MAIL command"],
        )

    def test_rsetEndsTransaction(self) -> None:
        """
        After RSET, RCPT needs a new MAIL.
        """
        self.assertEqual(
            self.smtp.replies(b"MAIL FROM:<s@x.org>\r\nRSET\r\nRCPT TO:<a@example.com>\r\n")[2],
            b"503 5.5.1 Error: need MAIL command",
        )

    def test_syntaxErrors(self) -> None:
        """
        Malformed MAIL and RCPT arguments and addresses get 501 with the
        matching enhanced code.
        """
        self.assertEqual(
            self.smtp.replies(
                b"MAIL TO:<s@x.org>\r\nMAIL FROM:<s@@x.org>\r\nMAIL FROM:<s@x.org>\r\n"
                b"RCPT <a@example.com>\r\nRCPT TO:<a b@example.com>\r\n"
            ),
            [
                b"501 5.5.4 Syntax: MAIL FROM:<address>",
                b"501 5.1.7 Bad sender address syntax: bad domain",
                b"250 2.1.0 Ok",
                b"501 5.5.4 Syntax: RCPT TO:<address>",
                b"501 5.1.3 Bad recipient address syntax: bad local part",
            ],
        )

    def test_immediateAnswersKeepTheTimeout(self) -> None:
        """
        MAIL and RCPT answered at once reuse the connection's one timeout
        call instead of cancelling it and scheduling a new one each time.
        """
        [before] = self.clock.getDelayedCalls()
        self.smtp.send(b"MAIL FROM:<s@x.org>\r\nRCPT TO:<a@example.com>\r\nRCPT TO:<b@example.com>\r\n")
        [after] = self.clock.getDelayedCalls()
        self.assertIs(after, before)

    def test_addressesParsedOnce(self) -> None:
        """
        The delivery is given the paths the protocol parsed: it does not
        parse MAIL's and RCPT's addresses a second time.
        """
        import harbor.delivery

        def again(*args: object, **kwargs: object) -> None:
            raise AssertionError("parsed twice")

        self.patch(harbor.delivery, "parsePath", again)
        self.assertEqual(
            self.smtp.replies(b"MAIL FROM:<s@x.org>\r\nRCPT TO:<a@example.com>\r\n"),
            [b"250 2.1.0 Ok", b"250 2.1.5 Ok"],
        )

    def test_labelTooLong(self) -> None:
        """
        A recipient domain with a label over 63 octets is bad syntax (501
        5.1.3), not a local failure (451).
        """
        self.smtp.send(b"MAIL FROM:<s@x.org>\r\n")
        self.assertEqual(
            self.smtp.send(b"RCPT TO:<a@" + b"x" * 64 + b".example.com>\r\n"),
            b"501 5.1.3 Bad recipient address syntax: bad domain\r\n",
        )

    def test_mailParameters(self) -> None:
        """
        BODY and SIZE are understood; other MAIL or RCPT parameters get
        555 5.5.4.
        """
        self.assertEqual(
            self.smtp.replies(
                b"MAIL FROM:<s@x.org> BODY=FOO\r\nMAIL FROM:<s@x.org> XYZ=1\r\n"
                b"MAIL FROM:<s@x.org> BODY=8BITMIME SIZE=100\r\nRCPT TO:<a@example.com> NOTIFY=NEVER\r\n"
            ),
            [
                b"501 5.5.4 Error: BODY must be 7BIT or 8BITMIME",
                b"555 5.5.4 Error: unsupported MAIL parameter",
                b"250 2.1.0 Ok",
                b"555 5.5.4 Error: unsupported RCPT parameter",
            ],
        )

    def test_nullSender(self) -> None:
        """
        Bounces, from the null sender, are accepted and stored.
        """
        self.smtp.send(b"MAIL FROM:<>\r\nRCPT TO:<a@example.com>\r\nDATA\r\n" + MESSAGE + b".\r\n")
        self.threads.runAll()
        self.assertEqual(self.maildir()[0]["Return-Path"], "<>")

    def test_eightBitAndDotStuffing(self) -> None:
        """
        8-bit bytes are stored verbatim and dot-stuffing is undone.
        """
        self.smtp.send(
            b"MAIL FROM:<s@x.org> BODY=8BITMIME\r\nRCPT TO:<a@example.com>\r\nDATA\r\n"
            b"Subject: x\r\n\r\n\xc3\xa9t\xe9\r\n..hidden dot\r\n.\r\n"
        )
        self.threads.runAll()
        [name] = files(self.root, "example.com", "new")
        with open(os.path.join(self.root, "example.com", "new", name), "rb") as f:
            self.assertTrue(f.read().endswith(b"\n\n\xc3\xa9t\xe9\n.hidden dot\n"))

    def test_disconnectDuringData(self) -> None:
        """
        A client that goes away mid-DATA leaves no file, whether the message
        was still in memory or already streaming into tmp/, and the
        transaction is logged as such.
        """
        self.smtp.send(b"MAIL FROM:<s@x.org>\r\nRCPT TO:<a@example.com>\r\nDATA\r\nSubject: x\r\n")
        self.assertEqual(files(self.root, "example.com", "tmp"), [])
        self.smtp.send(b"x" * MEMORY_THRESHOLD + b"\r\n")
        self.assertEqual(len(files(self.root, "example.com", "tmp")), 1)
        self.smtp.close()
        self.assertEqual((files(self.root, "example.com", "tmp"), files(self.root, "example.com", "new")), ([], []))
        self.assertEqual(self.transactionLogs()[0]["result"], "disconnected while receiving the message")
    def test_refusalsLogged(self) -> None:
        """
        Every refusal is logged with the command and the reply sent.
        """
        self.smtp.send(b"MAIL FROM:<s@x.org>\r\nRCPT TO:<x@other.org>\r\n")
        [event] = [e for e in self.events if "reason" in e]
        self.assertEqual(
            (event["verb"], event["code"], event["enhanced"], event["reason"]),
            ("RCPT", 550, "5.7.1", "<x@other.org>: Relay access denied"),
        )

    def test_transactionLogLine(self) -> None:
        """
        One log line per transaction carries client, HELO, sender,
        recipients, rejections, size, result and id.
        """
        self.smtp.send(
            b"HELO c.example\r\nMAIL FROM:<s@x.org>\r\nRCPT TO:<a@example.com>\r\n"
            b"RCPT TO:<x@other.org>\r\nDATA\r\n" + MESSAGE + b".\r\n"
        )
        self.threads.runAll()
        [event] = self.transactionLogs()
        self.assertEqual(
            {k: event[k] for k in ("client", "helo", "sender", "recipients", "rejected", "size", "result")},
            {
                "client": "192.0.2.7",
                "helo": "c.example",
                "sender": "s@x.org",
                "recipients": "a@example.com",
                "rejected": "x@other.org",
                "size": len(MESSAGE),
                "result": "stored",
            },
        )
        self.assertEqual(event["ids"], files(self.root, "example.com", "new")[0].split(",")[0])
        self.assertEqual(
            formatEvent(event),
            f"client=192.0.2.7 helo=c.example tls=- user=- from=<s@x.org> to=a@example.com "
            f"rejected=x@other.org size={len(MESSAGE)} code=250 result=stored id={event['ids']} "
            f"duration={event['duration']:.3f}",
        )

    def test_sessionLogLine(self) -> None:
        """
        A closed connection logs one line with its HELO, transaction and
        error counts, with the same fields structured.
        """
        self.smtp.send(b"HELO c.example\r\nNOOP\r\nBOGUS\r\nQUIT\r\n")
        self.smtp.protocol.connectionLost(None)
        [event] = [e for e in self.events if "transactions" in formatEvent(e)]
        self.assertEqual((event["helo"], event["count"], event["errors"]), ("c.example", 0, 1))
        self.assertEqual(
            formatEvent(event),
            f"client=192.0.2.7 helo=c.example tls=- user=- transactions=0 errors=1 "
            f"duration={event['duration']:.3f} disconnected",
        )


class GroupCommitTests(SMTPTestCase):
    """
    Messages of several connections that end while their lane is busy are
    committed together in its next batch, and each is answered only after.
    """

    def test_messagesEndingTogether(self) -> None:
        """
        With one lane and each file fsynced (the default C{"fsync"} mode),
        two messages that end while a third is in the lane are committed
        next in one batch: each file fsynced, then renamed, their new/
        fsynced once, and only then does each connection get its 250.
        """
        self.fs.grouped = False
        self.deliverer.commits = CommitQueue(self.threads, self.store.commitMany, lanes=1)
        others = [SMTPDriver(self.deliverer, self.clock) for _ in range(2)]
        for driver in [self.smtp] + others:
            driver.send(b"EHLO client.example\r\n")
            driver.send(b"MAIL FROM:<s@x.org>\r\nRCPT TO:<a@example.com>\r\nDATA\r\n")
        self.assertEqual(self.smtp.send(MESSAGE + b".\r\n"), b"")
        self.assertEqual([d.send(MESSAGE + b".\r\n") for d in others], [b"", b""])
        self.assertEqual(len(self.threads.pending), 1)
        self.fs.calls.clear()
        self.threads.runAll()
        names = [name for name, _ in self.fs.calls]
        self.assertEqual(
            names,
            ["create", "fsync", "renameNoReplace", "syncDirectory"]
            + ["create", "fsync", "create", "fsync", "renameNoReplace", "renameNoReplace", "syncDirectory"],
        )
        for driver in [self.smtp] + others:
            self.assertTrue(driver.take().startswith(b"250 2.0.0 Ok: stored as "))
        self.assertEqual(len(self.maildir()), 3)


class LocalFailureTests(SMTPTestCase):
    """
    Local trouble is a temporary failure (4xx) and leaves nothing behind.
    """

    def test_cannotCreateFile(self) -> None:
        """
        A Maildir we may not write into gets 451 4.3.0 after the dot (a
        small message touches the disk only then), and nothing is left.
        """
        self.fs.failOn = "create"
        self.fs.failErrno = errno.EACCES
        self.assertTrue(self.startData().endswith(b"354 End data with <CR><LF>.<CR><LF>\r\n"))
        self.smtp.send(MESSAGE + b".\r\n")
        self.threads.runAll()
        self.assertEqual(self.smtp.take(), b"451 4.3.0 Error: local error in processing, try again later\r\n")
        self.assertNothingStored()
        self.assertEqual(self.smtp.send(b"NOOP\r\n"), b"250 2.0.0 Ok\r\n")
    def test_diskFullWhileStreaming(self) -> None:
        """
        A full disk mid-message is answered 452 4.3.1 after the dot; the
        connection stays usable.
        """
        self.startData()
        self.fs.failOn = "write"
        self.smtp.send(MESSAGE * 1000 + b".\r\n")
        self.threads.runAll()
        self.assertEqual(self.smtp.take(), b"452 4.3.1 Error: insufficient system storage\r\n")
        self.assertNothingStored()
        self.assertEqual(self.smtp.send(b"NOOP\r\n"), b"250 2.0.0 Ok\r\n")

    def test_fsyncFails(self) -> None:
        """
        An I/O error at fsync is 451 4.3.0, never Twisted's 550.
        """
        self.startData()
        self.fs.failOn = "fsync"
        self.fs.failErrno = errno.EIO
        self.smtp.send(MESSAGE + b".\r\n")
        self.threads.runAll()
        self.assertEqual(self.smtp.take(), b"451 4.3.0 Error: local error in processing, try again later\r\n")
        self.assertNothingStored()
        self.assertEqual(self.transactionLogs()[0]["result"], "failed: syncing the message to disk: Input/output error")

    def test_maildirGone(self) -> None:
        """
        A Maildir removed under the server is a temporary failure.
        """
        import shutil

        shutil.rmtree(os.path.join(self.root, "example.com"))
        self.startData()
        self.smtp.send(MESSAGE + b".\r\n")
        self.threads.runAll()
        self.assertEqual(self.smtp.take(), b"451 4.3.0 Error: local error in processing, try again later\r\n")

    def test_malformedHeaderWithFolderRules(self) -> None:
        """
        A header the parser chokes on (C{From: <}) does not make a message
        with header folder rules undeliverable: the rule reads it as sent.
        """
        self.deliverer, _ = makeDeliverer(
            self.root,
            [DomainConfig("example.com", rules=(FolderRule("header", "From", "<", "Odd"),))],
            fs=self.fs,
            runInThread=self.threads,
            clock=self.clock,
        )
        self.smtp = SMTPDriver(self.deliverer, self.clock)
        self.smtp.send(b"EHLO client.example\r\n")
        self.startData()
        self.smtp.send(b"From: <\r\nTo: a@b, \"\r\n\r\nbody\r\n.\r\n")
        self.threads.runAll()
        self.assertTrue(self.smtp.take().startswith(b"250 2.0.0 Ok: stored as "))
        self.assertEqual(len(os.listdir(os.path.join(self.root, "example.com", ".Odd", "new"))), 1)

    def test_unexpectedErrorAtEndLeavesNothing(self) -> None:
        """
        A bug at the end of a spilled message is a 451 that leaves nothing
        in tmp/ (no file, no open descriptor), not a leak per attempt.
        """
        from harbor.delivery import HarborDelivery

        def broken(self: Any, rules: Any, headers: Any) -> None:
            raise IndexError("bug")

        self.patch(HarborDelivery, "folders", broken)
        self.startData()
        reply = self.smtp.send(b"Subject: big\r\n\r\n" + (b"x" * 998 + b"\r\n") * (MEMORY_THRESHOLD // 500) + b".\r\n")
        self.threads.runAll()
        reply += self.smtp.take()
        self.assertEqual(reply, b"451 4.3.0 Error: local error in processing, try again later\r\n")
        self.assertNothingStored()
        self.flushLoggedErrors(IndexError)


class HookJobTests(SMTPTestCase):
    """
    The hooks' jobs of a message: durable before its copies are renamed
    into C{new/}, removed again if the delivery fails after that, never
    run before the 250, and refused with 451 once a hook's backlog is full.
    """

    def setUp(self) -> None:
        super().setUp()
        self.hook = FakeHook("notify", outcomes=[WAIT] * 5, maxPending=1)
        self.spool = spoolFor(self.root)
        self.runner = HookRunner(self.spool, [self.hook], self.clock, self.threads, fs=self.fs)
        self.addCleanup(self.runner.stop)
        self.deliverer.hooks = self.runner
        self.runnerEvents: list[dict[str, Any]] = []
        self.patch(HookRunner, "_log", Logger(observer=cast(ILogObserver, self.runnerEvents.append)))

    def pendingJobs(self) -> list[str]:
        """
        The job files waiting to run, or claimed by the runner (written so
        by a delivery, and while running).
        """
        claimed = self.runner.spool.claims.directory
        return sorted(files(self.spool, "pending") + (os.listdir(claimed) if os.path.isdir(claimed) else []))

    def send(self) -> bytes:
        """
        Send one message, let the commit's thread run, and return the reply.
        """
        self.startData()
        reply = self.smtp.send(MESSAGE + b".\r\n")
        self.threads.runAll()
        return reply + self.smtp.take()

    def test_jobsDurableBeforeRename(self) -> None:
        """
        The job file is written, fsynced, renamed into the runner's claim
        directory in the spool (where no other instance looks) and that
        directory fsynced, all before the copy is renamed into C{new/};
        the hook is called only after the 250.
        """
        self.fs.calls.clear()
        self.assertTrue(self.send().startswith(b"250 2.0.0 Ok: stored as "))
        pending = self.runner.spool.claims.directory
        new = os.path.join(self.root, "example.com", "new")
        calls = [(name, path) for name, path in self.fs.calls if name != "makeDirectories"]
        job = next(i for i, (name, path) in enumerate(calls) if path.startswith(os.path.join(self.spool, "tmp")))
        spoolSynced = calls.index(("syncDirectory", pending))
        renamed = next(i for i, (name, path) in enumerate(calls) if name == "renameNoReplace" and path.startswith(new))
        self.assertEqual(
            [name for name, _ in calls[job : spoolSynced + 1]], ["create", "fsync", "rename", "syncDirectory"]
        )
        self.assertLess(spoolSynced, renamed)
        self.assertEqual(calls[renamed + 1], ("syncDirectory", new))
        self.assertEqual(self.hook.calls, [], "not before the reply is sent")
        self.clock.advance(0)
        self.threads.runAll()
        self.assertEqual([event.path for event in self.hook.calls], [os.path.join(new, files(self.root, "example.com", "new")[0])])

    def test_recordingFailsNothingRenamed(self) -> None:
        """
        A full spool is 452 4.3.1 before any copy reaches C{new/}: nothing
        is renamed, nothing stored, no job left or counted.
        """
        self.fs.failOn = "syncDirectory"
        self.fs.failUnder = self.runner.spool.claims.directory
        self.fs.calls.clear()
        self.assertEqual(self.send(), b"452 4.3.1 Error: insufficient system storage\r\n")
        self.assertNothingStored()
        new = os.path.join(self.root, "example.com", "new")
        self.assertEqual([p for name, p in self.fs.calls if name == "renameNoReplace" and p.startswith(new)], [])
        self.assertEqual((self.pendingJobs(), self.runner.pendingCounts), ([], {"notify": 0}))

    def test_failedRenameRemovesJobs(self) -> None:
        """
        If the copy cannot be renamed into C{new/}, or C{new/} cannot be
        fsynced, the delivery is a 4xx and its job files are removed: the
        hook is never called, and the job is no longer counted.
        """
        new = os.path.join(self.root, "example.com", "new")
        for failing in ("renameNoReplace", "syncDirectory"):
            self.fs.failOn = failing
            self.fs.failUnder = new
            self.fs.failErrno = errno.EIO
            self.assertEqual(self.send(), b"451 4.3.0 Error: local error in processing, try again later\r\n")
            self.assertNothingStored()
            self.assertEqual((self.pendingJobs(), self.runner.pendingCounts), ([], {"notify": 0}))
        self.clock.advance(100)
        self.threads.runAll()
        self.assertEqual(self.hook.calls, [])

    def test_backlogFullRefusedAtRcpt(self) -> None:
        """
        Once the hook has C{max_pending} pending jobs, a recipient gets 451
        4.3.0 (so no body is sent for nothing), logged with the hook's
        name; once the backlog has drained, mail is taken again.
        """
        self.assertTrue(self.send().startswith(b"250 "))
        self.clock.advance(0)
        self.threads.runAll()
        self.assertEqual(len(self.hook.waiting), 1)
        replies = self.smtp.replies(b"RSET\r\nMAIL FROM:<s@x.org>\r\nRCPT TO:<a@example.com>\r\n")
        self.assertEqual(replies[-1], b"451 4.3.0 Too many messages waiting to be processed; try again later")
        self.assertEqual([e["hook"] for e in self.runnerEvents if "max_pending" in e["log_format"]], ["notify"])
        self.smtp.send(b"RSET\r\n")
        self.hook.waiting[0].callback(None)
        self.threads.runAll()
        self.assertEqual(self.runner.pendingCounts, {"notify": 0})
        self.assertTrue(self.send().startswith(b"250 "))
        self.assertEqual(len(files(self.root, "example.com", "new")), 2)

    def test_backlogFullRefusedAtEndOfData(self) -> None:
        """
        A message whose recipients were taken while the backlog had room,
        but that ends once it is full, gets 451 4.3.0 at the end of the
        data and is not stored; nothing is left in tmp/ or the spool.
        """
        other = SMTPDriver(self.deliverer, self.clock)
        other.send(b"EHLO client.example\r\n")
        for driver in (self.smtp, other):
            driver.send(b"MAIL FROM:<s@x.org>\r\nRCPT TO:<a@example.com>\r\nDATA\r\n")
        self.smtp.send(MESSAGE + b".\r\n")
        self.threads.runAll()
        self.assertTrue(self.smtp.take().startswith(b"250 "))
        self.assertEqual(
            other.send(MESSAGE + b".\r\n"),
            b"451 4.3.0 Too many messages waiting to be processed; try again later\r\n",
        )
        self.threads.runAll()
        self.assertEqual(len(files(self.root, "example.com", "new")), 1)
        self.assertEqual(files(self.root, "example.com", "tmp"), [])
        self.assertEqual((len(self.pendingJobs()), self.runner.pendingCounts), (1, {"notify": 1}))
        self.assertEqual([e["hook"] for e in self.runnerEvents if "max_pending" in e["log_format"]], ["notify"])


@implementer(IMessage)
class _FailingMessage:
    """
    A plain IMessage whose end of message fails with a surprise.
    """

    def __init__(self) -> None:
        self.lines: list[bytes] = []

    def lineReceived(self, line: bytes) -> None:
        self.lines.append(line)

    def eomReceived(self) -> Any:
        return fail(RuntimeError("surprise"))

    def connectionLost(self) -> None:
        pass


class ForeignDelivery:
    """
    An IMessageDelivery of someone else's, to check the protocol holds to
    the interface and avoids Twisted's reply traps.
    """

    def __init__(self, message: Any) -> None:
        self.message = message

    def receivedHeader(self, helo: Any, origin: Any, recipients: Any) -> bytes:
        return b"Received: by test"

    def validateFrom(self, helo: Any, origin: Any) -> Any:
        return succeed(origin)

    def validateTo(self, user: Any) -> Any:
        if user.dest.local == b"bytes":
            raise SMTPBadRcpt(user, 550, b"no such user (bytes)")
        if user.dest.local == b"str":
            raise SMTPBadRcpt(user, 551, "no such user (str)")
        return lambda: self.message


class TwistedTrapTests(SMTPTestCase):
    """
    Twisted's own SMTP server turns these into wrong replies or none.
    """

    def setUp(self) -> None:
        super().setUp()
        self.message = _FailingMessage()
        delivery = ForeignDelivery(self.message)
        self.smtp.protocol.deliveryFactory = type(
            "F", (), {"getMessageDelivery": lambda self: delivery}
        )()

    def test_responseTypes(self) -> None:
        """
        A refusal whose text is bytes or str is answered either way, with a
        default enhanced code added.
        """
        self.assertEqual(
            self.smtp.replies(b"MAIL FROM:<s@x.org>\r\nRCPT TO:<bytes@example.com>\r\nRCPT TO:<str@example.com>\r\n")[1:],
            [b"550 5.1.1 no such user (bytes)", b"551 5.1.1 no such user (str)"],
        )

    def test_endOfDataFailureIsTemporary(self) -> None:
        """
        An unexpected failure at the end of data is 451 4.3.0, not 550, and
        a plain IMessage gets the received header and the lines.
        """
        self.smtp.send(b"MAIL FROM:<s@x.org>\r\nRCPT TO:<a@example.com>\r\nDATA\r\n")
        self.assertEqual(
            self.smtp.send(b"Subject: x\r\n\r\nbody\r\n.\r\n"),
            b"451 4.3.0 Error: local error in processing, try again later\r\n",
        )
        self.assertEqual(self.message.lines, [b"Received: by test", b"Subject: x", b"", b"body"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 0)

    def test_lineAdapterFlushesPartialLine(self) -> None:
        """
        The line adapter hands over a last line without a line end.
        """
        adapter = _LineMessage(self.message)
        adapter.dataReceived(b"a\nb")
        self.failureResultOf(adapter.eomReceived(), RuntimeError)
        self.assertEqual(self.message.lines, [b"a", b"b"])
