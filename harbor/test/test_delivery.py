"""
Tests for L{harbor.delivery}.
"""

import mailbox
import os
from typing import Any, cast

from zope.interface.verify import verifyObject

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, formatEvent, globalLogPublisher
from twisted.mail.interfaces import IMessageDelivery, IMessageDeliveryFactory
from twisted.mail.smtp import IMessage, SMTPBadRcpt, User
from twisted.trial.unittest import SynchronousTestCase

from harbor.address import parsePath
from harbor.delivery import (
    HarborMessage,
    IMessageStream,
    PathAddress,
    Session,
    applyFilters,
    headerSafe,
)
from harbor.filters import parseFilters
from harbor.routing import DomainConfig
from harbor.store.commits import CommitQueue
from harbor.store.fs import StorageError
from harbor.store.names import MaildirNamer
from harbor.store.writer import (
    MEMORY_THRESHOLD,
    Companion,
    MaildirStore,
    PendingDelivery,
    StoredMessage,
)
from harbor.test._support import DeferredThreads, RecordingFileSystem, makeDeliverer


def user(raw: bytes) -> User:
    """
    A Twisted User for C{raw}, built the way the protocol builds it.
    """
    return User(PathAddress(raw, parsePath(raw)), (b"client.example", b"192.0.2.7"), None, PathAddress(b"<s@x.org>", parsePath(b"<s@x.org>")))


class DeliveryTests(SynchronousTestCase):
    """
    Tests for L{HarborDelivery} and L{HarborMessage}.
    """

    def setUp(self) -> None:
        self.root = self.mktemp()
        self.clock = Clock()
        self.clock.advance(1700000000)
        self.deliverer, self.store = makeDeliverer(
            self.root,
            [DomainConfig("example.com"), DomainConfig("example.org", frozenset({"alice"}))],
            clock=self.clock,
        )
        self.session = Session("192.0.2.7", helo="client.example", esmtp=True)
        self.factory = self.deliverer.factoryFor(self.session)
        self.delivery = self.factory.getMessageDelivery()
        self.delivery.validateFrom(
            (b"client.example", b"192.0.2.7"), PathAddress(b"<s@x.org>", parsePath(b"<s@x.org>"))
        )

    def test_interfaces(self) -> None:
        """
        The factory, delivery and message provide Twisted's interfaces.
        """
        self.assertTrue(verifyObject(IMessageDeliveryFactory, self.factory))
        self.assertTrue(verifyObject(IMessageDelivery, self.delivery))
        self.delivery.validateTo(user(b"<a@example.com>"))
        message = self.delivery.message()
        self.assertTrue(verifyObject(IMessageStream, message))
        self.assertTrue(verifyObject(IMessage, message))
        message.connectionLost()

    def test_freshDeliveryPerTransaction(self) -> None:
        """
        Each transaction gets its own delivery: no recipients carry over.
        """
        self.delivery.validateTo(user(b"<a@example.com>"))
        self.assertEqual(self.factory.getMessageDelivery().recipients, [])

    def test_refusalCarriesEnhancedCode(self) -> None:
        """
        A refused recipient raises SMTPBadRcpt whose text starts with the
        enhanced status code.
        """
        error = self.assertRaises(SMTPBadRcpt, self.delivery.validateTo, user(b"<bob@example.org>"))
        self.assertEqual(error.code, 550)
        self.assertTrue(error.resp.startswith("5.1.1 "), error.resp)
        error = self.assertRaises(SMTPBadRcpt, self.delivery.validateTo, user(b"<x@other.org>"))
        self.assertTrue(error.resp.startswith("5.7.1 "), error.resp)

    def test_allRecipientsShareOneMessage(self) -> None:
        """
        Every accepted recipient's message factory returns the same object,
        so the body is streamed once.
        """
        first = self.delivery.validateTo(user(b"<a@example.com>"))
        second = self.delivery.validateTo(user(b"<alice@example.org>"))
        # Without a blocklist or policy hook the factory comes at once.
        assert not isinstance(first, Deferred) and not isinstance(second, Deferred)
        self.assertIs(first(), second())
        first().connectionLost()

    def test_oneCopyPerRecipient(self) -> None:
        """
        Each recipient gets its own file, in its domain's Maildir, starting
        with its own trace headers.
        """
        self.delivery.validateTo(user(b"<a@example.com>"))
        self.delivery.validateTo(user(b"<b@example.com>"))
        self.delivery.validateTo(user(b"<Alice@Example.ORG>"))
        message = self.delivery.message()
        message.dataReceived(b"Subject: s\n\nbody\n")
        stored = self.successResultOf(message.eomReceived())
        self.assertEqual(len(stored), 3)
        self.assertTrue(all(isinstance(s, StoredMessage) for s in stored))
        com = list(mailbox.Maildir(os.path.join(self.root, "example.com"), create=False))
        org = list(mailbox.Maildir(os.path.join(self.root, "example.org"), create=False))
        self.assertEqual(sorted(m["Delivered-To"] for m in com), ["a@example.com", "b@example.com"])
        self.assertEqual([m["Delivered-To"] for m in org], ["Alice@example.org"])
        self.assertEqual(org[0]["Return-Path"], "<s@x.org>")
        self.assertEqual(org[0]["Subject"], "s")

    def test_traceHeaders(self) -> None:
        """
        The trace headers name the sender, the recipient, the client, this
        server, the protocol, the id and the time, RFC 5321 style.
        """
        self.delivery.validateTo(user(b"<a@example.com>"))
        header = self.delivery.traceHeaders(self.delivery.recipients[0], "ID1", 1700000000)
        lines = header.decode("ascii").split("\n")
        self.assertEqual(lines[0], "Return-Path: <s@x.org>")
        self.assertEqual(lines[1], "Delivered-To: a@example.com")
        self.assertEqual(lines[2], "Received: from client.example ([192.0.2.7])")
        self.assertEqual(lines[3], "\tby mx.example.com (MailHarbor) with ESMTP id ID1")
        self.assertTrue(lines[4].startswith("\tfor <a@example.com>; "), lines[4])
        self.assertIn("2023", lines[4])
        self.assertEqual(lines[5], "")

    def test_nullSenderAndIPv6(self) -> None:
        """
        The null sender is C{<>} and an IPv6 client gets the IPv6: tag.
        """
        delivery = self.deliverer.factoryFor(Session("2001:db8::7")).getMessageDelivery()
        delivery.validateFrom((None, b"2001:db8::7"), PathAddress(b"<>", parsePath(b"<>", allowNull=True)))
        delivery.validateTo(user(b"<a@example.com>"))
        header = delivery.traceHeaders(delivery.recipients[0], "ID", 0).decode()
        self.assertIn("Return-Path: <>\n", header)
        self.assertIn("from unknown ([IPv6:2001:db8::7])", header)
        self.assertIn("with SMTP id", header)

    def test_heloCannotInjectHeaders(self) -> None:
        """
        A HELO name with line breaks or comment characters cannot add a
        header line or break out of the comment.
        """
        self.session.helo = "foo\nX-Injected: yes\r\n(evil)"
        self.delivery.validateTo(user(b"<a@example.com>"))
        header = self.delivery.traceHeaders(self.delivery.recipients[0], "ID", 0).decode()
        self.assertNotIn("\nX-Injected", header)
        self.assertEqual(len(header.split("\n")), 6)
        self.assertEqual(headerSafe("a(b)\\c\x00d e"), "a?b??c?d?e")

    def test_lineReceived(self) -> None:
        """
        Lines given the IMessage way are stored with LF endings.
        """
        self.delivery.validateTo(user(b"<a@example.com>"))
        message = self.delivery.message()
        self.assertIsInstance(message, HarborMessage)
        message.lineReceived(b"Subject: x")
        message.lineReceived(b"")
        message.lineReceived(b"body")
        [stored] = self.successResultOf(message.eomReceived())
        with open(stored.path, "rb") as f:
            self.assertTrue(f.read().endswith(b"\nSubject: x\n\nbody\n"))

    def test_connectionLostLeavesNothing(self) -> None:
        """
        A message abandoned mid-way leaves no file anywhere.
        """
        self.delivery.validateTo(user(b"<a@example.com>"))
        message = self.delivery.message()
        message.dataReceived(b"partial")
        message.connectionLost()
        for sub in ("tmp", "new"):
            self.assertEqual(os.listdir(os.path.join(self.root, "example.com", sub)), [])


class CommitQueueTests(SynchronousTestCase):
    """
    Tests for L{harbor.store.commits.CommitQueue} with one lane: messages that end while a
    commit is in the thread are committed together next.
    """

    def setUp(self) -> None:
        self.root = self.mktemp()
        self.threads = DeferredThreads()
        self.store = MaildirStore(self.root, MaildirNamer("h", Clock().seconds, pid=1), RecordingFileSystem())
        self.store.create("example.com")
        self.groups: list[int] = []

        def commitMany(deliveries: Any) -> list[Any]:
            self.groups.append(len(deliveries))
            return self.store.commitMany(deliveries)

        self.queue = CommitQueue(self.threads, commitMany, lanes=1)

    def pending(self, size: int = 10) -> PendingDelivery:
        pending = self.store.begin([("example.com", lambda id: b"H\n")])
        pending.write(b"x" * size)
        return pending

    def results(self, deferreds: list[Deferred[Any]]) -> list[Any]:
        return [self.successResultOf(d) for d in deferreds]

    def test_loneMessageAtOnce(self) -> None:
        """
        A message that ends while nothing is being committed goes to the
        thread at once, alone, and writes its companion there.
        """
        pending = self.pending()
        written: list[str] = []
        pending.accompany(Companion(lambda: written.append("jobs"), lambda: None, "recording"))
        d = self.queue.commit(pending, None)
        self.assertEqual((len(self.threads.pending), written), (1, []))
        self.assertNoResult(d)
        self.threads.runAll()
        stored = self.successResultOf(d)
        self.assertEqual((len(stored), written, self.groups), (1, ["jobs"], [1]))

    def test_waitersGoTogether(self) -> None:
        """
        Messages that end while a commit is in the thread wait for it, then
        go to the thread together, as one group.
        """
        first = self.queue.commit(self.pending(), None)
        later = [self.queue.commit(self.pending(), None) for _ in range(3)]
        self.assertEqual(len(self.threads.pending), 1)
        for d in later:
            self.assertNoResult(d)
        self.threads.runAll()
        self.assertEqual(self.groups, [1, 3])
        self.assertEqual(len(self.results([first] + later)), 4)
        self.assertEqual(len(os.listdir(os.path.join(self.root, "example.com", "new"))), 4)

    def test_largeMessageAlone(self) -> None:
        """
        A spilled message is committed at once, on its own, even while a
        group is in the thread.
        """
        small = self.queue.commit(self.pending(), None)
        large = self.queue.commit(self.pending(MEMORY_THRESHOLD + 1), None)
        self.assertEqual(len(self.threads.pending), 2)
        self.threads.runAll()
        self.assertEqual(self.groups, [1, 1])
        self.results([small, large])

    def test_ungrouped(self) -> None:
        """
        With batches of one (C{group_commit = "off"}), every message goes to
        a thread on its own, as many at once as there are lanes, the others
        one by one as lanes come free.
        """
        sizes: list[int] = []

        def commitMany(deliveries: Any) -> list[Any]:
            sizes.append(len(deliveries))
            return self.store.commitMany(deliveries)

        queue = CommitQueue(self.threads, commitMany, lanes=2, batch=1)
        deferreds = [queue.commit(self.pending(), None) for _ in range(5)]
        self.assertEqual(len(self.threads.pending), 2)
        self.threads.runAll()
        self.assertEqual(sizes, [1] * 5)
        self.results(deferreds)

    def test_failuresStayTheirOwn(self) -> None:
        """
        In a group, a message that cannot be stored and one whose companion
        cannot be written (or raises) fail alone, with L{StorageError}; the
        others are stored.
        """
        busy = self.queue.commit(self.pending(), None)
        gone = self.store.begin([("gone.example", lambda id: b"")])
        gone.write(b"x")

        def explode() -> None:
            raise RuntimeError("hook spool full")

        def full() -> None:
            raise StorageError("recording: no space", noSpace=True)

        raising, spoolFull = self.pending(), self.pending()
        raising.accompany(Companion(explode, lambda: None, "recording"))
        spoolFull.accompany(Companion(full, lambda: None, "recording"))
        failing = self.queue.commit(gone, None)
        raised = self.queue.commit(raising, None)
        noSpace = self.queue.commit(spoolFull, None)
        fine = self.queue.commit(self.pending(), None)
        self.threads.runAll()
        self.failureResultOf(failing, StorageError)
        self.assertIn("hook spool full", self.failureResultOf(raised, StorageError).getErrorMessage())
        self.assertTrue(self.failureResultOf(noSpace, StorageError).value.noSpace)
        self.assertEqual(len(self.successResultOf(fine)), 1)
        self.assertEqual(len(os.listdir(os.path.join(self.root, "example.com", "new"))), 2)
        self.results([busy])

    def test_unexpectedErrorFailsGroupAndGoesOn(self) -> None:
        """
        If committing a group raises, every message of the group fails with
        that error, and the next group is still committed.
        """
        calls = [0]

        def brokenOnce(deliveries: Any) -> list[Any]:
            calls[0] += 1
            if calls[0] == 2:
                raise ValueError("bug")
            return self.store.commitMany(deliveries)

        queue = CommitQueue(self.threads, brokenOnce, lanes=1)
        first = queue.commit(self.pending(), None)
        broken = [queue.commit(self.pending(), None) for _ in range(2)]
        self.threads.runAll()
        self.results([first])
        for d in broken:
            self.failureResultOf(d, ValueError)
        after = queue.commit(self.pending(), None)
        self.threads.runAll()
        self.results([after])


class FilterLogTests(SynchronousTestCase):
    """
    Tests for L{applyFilters}, through which the session and the
    transaction decide by filters.
    """

    def test_verdictLogged(self) -> None:
        """
        The filter that matched is logged once, under the filters'
        namespace, with the client, action and stage; a client no filter
        matches is not logged.
        """
        events: list[dict[str, Any]] = []
        observer = cast(ILogObserver, events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        filters = parseFilters([{"recipient": "closed@example.com", "action": "reject"}])
        scope = Session("192.0.2.7")
        self.assertIsNone(applyFilters(filters, "rcpt", scope, "192.0.2.7", recipient="open@example.com"))
        matched = applyFilters(filters, "rcpt", scope, "192.0.2.7", recipient="closed@example.com")
        self.assertIs(matched, filters[0])
        logged = [e for e in events if e.get("log_namespace") == "harbor.filters"]
        self.assertEqual(len(logged), 1)
        self.assertEqual(
            formatEvent(logged[0]), f"client=192.0.2.7 filter reject at rcpt: {filters[0]}"
        )
