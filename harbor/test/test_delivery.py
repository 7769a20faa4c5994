"""
Tests for L{harbor.delivery}.
"""

import mailbox
import os

from zope.interface.verify import verifyObject

from twisted.internet.task import Clock
from twisted.mail.interfaces import IMessageDelivery, IMessageDeliveryFactory
from twisted.mail.smtp import IMessage, SMTPBadRcpt, User
from twisted.trial.unittest import SynchronousTestCase

from harbor.config import DomainConfig
from harbor.delivery import HarborMessage, IMessageStream, Session, headerSafe
from harbor.maildir import StoredMessage
from harbor.smtp import _address
from harbor.policy import parsePath
from harbor.test._support import makeDeliverer


def user(raw: bytes) -> User:
    """
    A Twisted User for C{raw}, built the way the protocol builds it.
    """
    return User(_address(raw, parsePath(raw)), (b"client.example", b"192.0.2.7"), None, _address(b"<s@x.org>", parsePath(b"<s@x.org>")))


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
            (b"client.example", b"192.0.2.7"), _address(b"<s@x.org>", parsePath(b"<s@x.org>"))
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
        delivery.validateFrom((None, b"2001:db8::7"), _address(b"<>", parsePath(b"<>", allowNull=True)))
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
