"""
Tests for L{harbor.web.timeline}: the envelope and C{Received:} trace of
real-world messages read as hops.
"""

from __future__ import annotations

import io
import json
from email.utils import parsedate_to_datetime

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from harbor.address import parsePath
from harbor.delivery import PathAddress, Session
from harbor.routing import DomainConfig
from harbor.test._support import makeDeliverer
from harbor.test.test_delivery import user
from harbor.web.render import readMessage
from harbor.web.timeline import MAX_HOPS, Hop, Timeline, parseReceived, timelineOf

# Headers as these servers write them (unfolded, as MessageView gives them).
POSTFIX = (
    "from mail.example.org (mail.example.org [192.0.2.1]) "
    "(using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits) "
    "key-exchange X25519 server-signature RSA-PSS (2048 bits) server-digest SHA256) "
    "(No client certificate requested) "
    "by relay.example.net (Postfix) with ESMTPS id 4Q8x2k1ZzCz9sQp "
    "for <bob@example.com>; Wed,  2 Dec 2026 09:00:01 +0100 (CET)"
)
EXIM = (
    "from [198.51.100.3] (port=51234 helo=laptop.example.org) "
    "by mail.example.org with esmtpsa  (TLS1.3) tls TLS_AES_256_GCM_SHA384 "
    "(Exim 4.96) (envelope-from <ann@example.org>) id 1r2AbC-000xyz-1Q "
    "for bob@example.com; Wed, 02 Dec 2026 07:59:00 -0000"
)
EXIM_OLD = (
    "from mail.example.com ([203.0.113.5]) by mx.example.org with esmtps "
    "(TLS1.2:ECDHE-RSA-AES256-GCM-SHA384:256) (Exim 4.92) "
    "(envelope-from <x@example.com>) id 1abc-0001-AB for y@example.org; "
    "Mon, 01 Jan 2024 00:00:00 +0000"
)
GMAIL_IN = (
    "from mx.example.org (mx.example.org. [203.0.113.9]) by mx.google.com with ESMTPS "
    "id a1si1234567wmq.2026.12.02.00.00.03 for <x@gmail.com> "
    "(version=TLS1_3 cipher=TLS_AES_256_GCM_SHA384 bits=256/256); "
    "Wed, 02 Dec 2026 00:00:03 -0800 (PST)"
)
GMAIL_SUBMIT = (
    "from mail-sor-f41.google.com (mail-sor-f41.google.com. [209.85.220.41]) "
    "by mx.google.com with SMTPS id b12-20020a05600c4e0c00b0040e4sor1234567wmq.2 "
    "for <x@gmail.com> (Google Transport Security); Wed, 02 Dec 2026 00:00:04 -0800 (PST)"
)
GMAIL_INTERNAL = (
    "by 2002:a05:6a10:a0c8:b0:5a2:3c1d:9e4f with SMTP id y8csp1234567pxb; "
    "Wed, 2 Dec 2026 00:00:05 -0800 (PST)"
)
MICROSOFT = (
    "from AM6PR04MB1234.eurprd04.prod.outlook.com (2603:10a6:20b:f0::12) "
    "by AM6PR04MB5678.eurprd04.prod.outlook.com (2603:10a6:20b:f0::13) "
    "with Microsoft SMTP Server (version=TLS1_2, "
    "cipher=TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384) id 15.20.7633.17; "
    "Wed, 2 Dec 2026 08:00:00 +0000"
)
MICROSOFT_MAPI = (
    "from AM6PR04MB1234.eurprd04.prod.outlook.com ([fe80::1234:5678:9abc:def0]) "
    "by AM6PR04MB1234.eurprd04.prod.outlook.com ([fe80::1234:5678:9abc:def0%4]) "
    "with mapi id 15.20.7633.017; Wed, 2 Dec 2026 08:00:00 +0000"
)
QMAIL = "from unknown (HELO mail.example.com) (192.0.2.9) by qmail.example with SMTP; 2 Dec 2026 07:50:00 -0000"
SENDMAIL = (
    "from smtp.example.edu (smtp.example.edu [192.0.2.44]) "
    "by mail.example.edu (8.17.1/8.17.1) with ESMTPS id 4B2Aa1bC012345 "
    "(version=TLSv1.3 cipher=TLS_AES_256_GCM_SHA384 bits=256 verify=NOT) "
    "for <z@example.edu>; Wed, 2 Dec 2026 03:00:00 -0500"
)


def at(date: str) -> float:
    """
    The time of an RFC 5322 date.
    """
    return parsedate_to_datetime(date).timestamp()


class ParseReceivedTests(SynchronousTestCase):
    """
    Tests for L{parseReceived} on each server's form.
    """

    def fields(self, value: str) -> tuple[object, ...]:
        """
        What a hop says, but its raw text.
        """
        hop = parseReceived(value)
        return (hop.fromHost, hop.fromIP, hop.byHost, hop.protocol, hop.tlsVersion, hop.cipher, hop.forAddress, hop.id)

    def test_postfix(self) -> None:
        """
        Postfix: HELO name, address, protocol, TLS with nested comment,
        recipient, id and a date with a zone comment.
        """
        self.assertEqual(
            self.fields(POSTFIX),
            ("mail.example.org", "192.0.2.1", "relay.example.net", "ESMTPS", "TLSv1.3",
             "TLS_AES_256_GCM_SHA384", "bob@example.com", "4Q8x2k1ZzCz9sQp"),
        )
        self.assertEqual(parseReceived(POSTFIX).time, at("Wed, 2 Dec 2026 08:00:01 +0000"))

    def test_exim(self) -> None:
        """
        Exim 4.9x: an address literal with the HELO name in a comment,
        and its C{(TLS1.3) tls CIPHER} form; and its older
        C{(TLS1.2:CIPHER:256)} form.
        """
        self.assertEqual(
            self.fields(EXIM),
            ("laptop.example.org", "198.51.100.3", "mail.example.org", "esmtpsa", "TLSv1.3",
             "TLS_AES_256_GCM_SHA384", "bob@example.com", "1r2AbC-000xyz-1Q"),
        )
        self.assertEqual(parseReceived(EXIM).time, at("Wed, 02 Dec 2026 07:59:00 +0000"))
        self.assertEqual(
            self.fields(EXIM_OLD),
            ("mail.example.com", "203.0.113.5", "mx.example.org", "esmtps", "TLSv1.2",
             "ECDHE-RSA-AES256-GCM-SHA384", "y@example.org", "1abc-0001-AB"),
        )

    def test_google(self) -> None:
        """
        Google: the reverse name with its trailing dot, C{version=}
        and C{cipher=} in a comment after C{for}, and an internal hop
        with only C{by} an IPv6 address.
        """
        self.assertEqual(
            self.fields(GMAIL_IN),
            ("mx.example.org", "203.0.113.9", "mx.google.com", "ESMTPS", "TLSv1.3",
             "TLS_AES_256_GCM_SHA384", "x@gmail.com", "a1si1234567wmq.2026.12.02.00.00.03"),
        )
        self.assertEqual(
            self.fields(GMAIL_SUBMIT)[:6],
            ("mail-sor-f41.google.com", "209.85.220.41", "mx.google.com", "SMTPS", None, None),
        )
        self.assertEqual(
            self.fields(GMAIL_INTERNAL),
            (None, None, "2002:a05:6a10:a0c8:b0:5a2:3c1d:9e4f", "SMTP", None, None, None, "y8csp1234567pxb"),
        )

    def test_microsoft(self) -> None:
        """
        Microsoft: a bare IPv6 address in the comment, a protocol of
        several words, C{version=TLS1_2, cipher=...}; and its MAPI hop
        with bracketed link-local addresses.
        """
        self.assertEqual(
            self.fields(MICROSOFT),
            ("AM6PR04MB1234.eurprd04.prod.outlook.com", "2603:10a6:20b:f0::12",
             "AM6PR04MB5678.eurprd04.prod.outlook.com", "Microsoft SMTP Server", "TLSv1.2",
             "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384", None, "15.20.7633.17"),
        )
        self.assertEqual(self.fields(MICROSOFT_MAPI)[1:4], ("fe80::1234:5678:9abc:def0",
                         "AM6PR04MB1234.eurprd04.prod.outlook.com", "mapi"))

    def test_qmailAndSendmail(self) -> None:
        """
        qmail's bare address and HELO comment; Sendmail's
        C{version=TLSv1.3 cipher=...}.
        """
        self.assertEqual(self.fields(QMAIL)[:4], ("mail.example.com", "192.0.2.9", "qmail.example", "SMTP"))
        self.assertEqual(
            self.fields(SENDMAIL),
            ("smtp.example.edu", "192.0.2.44", "mail.example.edu", "ESMTPS", "TLSv1.3",
             "TLS_AES_256_GCM_SHA384", "z@example.edu", "4B2Aa1bC012345"),
        )

    def test_ours(self) -> None:
        """
        MailHarbor's own header, as the delivery writes it, over IPv4 and
        IPv6, with and without TLS.
        """
        clock = Clock()
        clock.advance(1796198400)
        deliverer, _ = makeDeliverer(self.mktemp(), [DomainConfig("example.com")], clock=clock)
        for client, tls, ip in (
            ("192.0.2.7", None, "192.0.2.7"),
            ("2001:db8::7", "TLSv1.3 with cipher TLS_AES_256_GCM_SHA384", "2001:db8::7"),
        ):
            session = Session(client, helo="client.example", esmtp=True, tls=tls)
            delivery = deliverer.factoryFor(session).getMessageDelivery()
            delivery.validateFrom((b"client.example", client.encode()), PathAddress(b"<s@x.org>", parsePath(b"<s@x.org>")))
            delivery.validateTo(user(b"<a@example.com>"))
            header = delivery.traceHeaders(delivery.recipients[0], "ID1", clock.seconds())
            view = readMessage(io.BytesIO(header + b"Subject: s\n\nbody\n"))
            timeline = timelineOf(view.headers)
            self.assertEqual((timeline.returnPath, timeline.deliveredTo), ("<s@x.org>", "a@example.com"))
            (hop,) = timeline.hops
            self.assertEqual(
                (hop.fromHost, hop.fromIP, hop.byHost, hop.protocol, hop.forAddress, hop.id, hop.time),
                ("client.example", ip, "mx.example.com", "ESMTPS" if tls else "ESMTP", "a@example.com", "ID1",
                 1796198400.0),
            )
            self.assertEqual((hop.tlsVersion, hop.cipher), ("TLSv1.3", "TLS_AES_256_GCM_SHA384") if tls else (None, None))

    def test_malformed(self) -> None:
        """
        Headers that follow no form give what they can and never raise:
        no date, a date that is not one, unclosed comments, junk.
        """
        for value in ("", ";", "junk", "from (((( by", "from x by y; not a date", "by ; Wed, 99 Foo 2026 99:99:99",
                      "from [999.1.1.1] (256.0.0.1) by y", "from x (using TLSv1.3 with cipher", "(" * 5000 + ";"):
            hop = parseReceived(value)
            self.assertIsInstance(hop, Hop)
            self.assertIsNone(hop.time, value)
        self.assertIsNone(parseReceived("from [999.1.1.1] (256.0.0.1) by y").fromIP)
        self.assertEqual(parseReceived("from x by y; not a date").byHost, "y")


class TimelineTests(SynchronousTestCase):
    """
    Tests for L{timelineOf}.
    """

    def test_order(self) -> None:
        """
        Hops are oldest first, from the bottom header up, with the delay
        since the hop before; the envelope is the topmost Return-Path and
        Delivered-To, every Delivered-To kept.
        """
        headers = [
            ("Return-Path", "<ann@example.org>"),
            ("Delivered-To", "bob@example.com"),
            ("Received", ("from relay.example.net ([192.0.2.50]) by mx.example.com (MailHarbor) with ESMTPS id X "
                         "for <bob@example.com>; Wed, 02 Dec 2026 08:00:05 +0000")),
            ("Delivered-To", "bob@example.net"),
            ("Received", POSTFIX),
            ("Subject", "s"),
            ("Received", EXIM),
            ("Return-Path", "<forged@example.com>"),
        ]
        timeline = timelineOf(headers)
        self.assertIsInstance(timeline, Timeline)
        self.assertEqual(timeline.returnPath, "<ann@example.org>")
        self.assertEqual(timeline.deliveredTo, "bob@example.com")
        self.assertEqual(timeline.deliveredToAll, ("bob@example.com", "bob@example.net"))
        self.assertEqual([hop.byHost for hop in timeline.hops], ["mail.example.org", "relay.example.net", "mx.example.com"])
        self.assertEqual([hop.delay for hop in timeline.hops], [None, 61.0, 4.0])

    def test_unknownAndNegativeDelays(self) -> None:
        """
        A hop without a date has no delay, nor has the one after it; a
        clock that runs behind gives a negative delay, shown as it is.
        """
        headers = [
            ("Received", "by c; Wed, 02 Dec 2026 08:00:00 +0000"),
            ("Received", "by b; Wed, 02 Dec 2026 08:10:00 +0000"),
            ("Received", "by a2"),
            ("Received", "by a1; Wed, 02 Dec 2026 07:00:00 +0000"),
        ]
        self.assertEqual([hop.delay for hop in timelineOf(headers).hops], [None, None, None, -600.0])

    def test_empty(self) -> None:
        """
        A message without trace headers has an empty timeline.
        """
        self.assertEqual(timelineOf([("Subject", "s")]), Timeline(None, None, ()))

    def test_bounded(self) -> None:
        """
        No more than L{MAX_HOPS} Received headers are read.
        """
        headers = [("Received", f"by h{n}; Wed, 02 Dec 2026 08:00:00 +0000") for n in range(MAX_HOPS + 50)]
        hops = timelineOf(headers).hops
        self.assertEqual(len(hops), MAX_HOPS)
        self.assertEqual(hops[-1].byHost, "h0")

    def test_asJSON(self) -> None:
        """
        The timeline's JSON form has every hop, oldest first, with what
        the page shows.
        """
        described = timelineOf([("Return-Path", "<a@b>"), ("Received", POSTFIX), ("Received", EXIM)]).asJSON()
        self.assertEqual(json.loads(json.dumps(described)), described)
        self.assertEqual(described["returnPath"], "<a@b>")
        self.assertEqual([hop["byHost"] for hop in described["hops"]], ["mail.example.org", "relay.example.net"])
        self.assertEqual(described["hops"][1]["cipher"], "TLS_AES_256_GCM_SHA384")
        self.assertEqual(described["hops"][1]["delay"], 61.0)
