"""
Tests for envelope filters, DNS blocklists and the pregreet test, pure and
through the protocol.
"""

import os
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.names import dns
from twisted.names.error import DNSNameError
from twisted.trial.unittest import SynchronousTestCase

from harbor._syntax import ConfigError
from harbor.config import Config
from harbor.limits import Limits
from harbor.routing import DomainConfig
from harbor.dnsbl import Blocklists, SharedResult, queryName
from harbor.filters import firstMatch, parseFilters
from harbor.policyhook import PolicyHook, PolicyRequest
from harbor.smtp._factory import HarborSMTPFactory, ServerSettings
from harbor.test._support import HOSTNAME, SMTPDriver, makeDeliverer

ENVELOPE = b"MAIL FROM:<s@x.org>\r\nRCPT TO:<a@example.com>\r\n"


class FilterParsingTests(SynchronousTestCase):
    """
    Tests for L{parseFilters}.
    """

    def test_stages(self) -> None:
        """
        A filter's stage is the latest of the fields it uses.
        """
        filters = parseFilters(
            [
                {"client": "192.0.2.0/24", "action": "reject"},
                {"client": "192.0.2.1", "helo": "*.example", "action": "accept"},
                {"sender": "*@spam.example", "action": "discard"},
                {"recipient": "abuse@*", "client": "10.0.0.0/8", "action": "tag", "header": "X-Tag: yes"},
            ]
        )
        self.assertEqual([f.stage for f in filters], ["connect", "helo", "mail", "rcpt"])
        self.assertEqual((filters[0].code, filters[0].enhanced), (550, "5.7.1"))

    def test_errors(self) -> None:
        """
        Bad filters are refused, naming the filter and key.
        """
        for table, setting in [
            ({"action": "reject"}, "filter[0]"),
            ({"client": "nonsense", "action": "reject"}, "filter[0].client"),
            ({"sender": "x", "action": "bounce"}, "filter[0].action"),
            ({"sender": "x", "action": "reject", "code": 450}, "filter[0].code"),
            ({"sender": "x", "action": "tempfail", "enhanced": "5.7.1"}, "filter[0].enhanced"),
            ({"sender": "x", "action": "tag", "header": "bad\nheader"}, "filter[0].header"),
            ({"sender": "x", "action": "reject", "colour": 1}, "filter[0].colour"),
            ({"recipient": "*@*.b\u00fccher.example", "action": "reject"}, "filter[0].recipient"),
            ({"sender": "a@b\u00fccher..example", "action": "reject"}, "filter[0].sender"),
        ]:
            error = self.assertRaises(ConfigError, Config.fromMapping, {"domain": "example.com", "filter": [table]})
            self.assertEqual(error.setting, setting, table)

    def test_clientMustBeNetworks(self) -> None:
        """
        A client that is a number, or a list holding one, is refused naming
        the key, as connection_limit_exceptions is, not read as an address
        or left to crash the server.
        """
        for client in [5, [5], ["192.0.2.0/24", 7]]:
            error = self.assertRaises(
                ConfigError,
                Config.fromMapping,
                {"domain": "example.com", "filter": [{"client": client, "action": "reject"}]},
            )
            self.assertEqual(error.setting, "filter[0].client", client)

    def test_matching(self) -> None:
        """
        Patterns ignore case; networks contain addresses; all fields must
        match.
        """
        [rule] = parseFilters([{"client": "192.0.2.0/24", "sender": "*@Spam.example", "action": "reject"}])
        self.assertTrue(rule.matches("192.0.2.9", None, "a@SPAM.example", None))
        self.assertFalse(rule.matches("198.51.100.1", None, "a@spam.example", None))
        self.assertFalse(rule.matches("192.0.2.9", None, "a@ham.example", None))
        self.assertIsNone(firstMatch([rule], "rcpt", "192.0.2.9", None, "a@spam.example"))


class DNSBLTests(SynchronousTestCase):
    """
    Tests for L{Blocklists}.
    """

    def test_queryNames(self) -> None:
        """
        Addresses are reversed into the zone; mapped IPv4 counts as IPv4.
        """
        self.assertEqual(queryName("192.0.2.1", "bl.example"), "1.2.0.192.bl.example")
        self.assertEqual(queryName("::ffff:192.0.2.1", "bl.example"), "1.2.0.192.bl.example")
        self.assertTrue(queryName("2001:db8::1", "bl.example").endswith(".8.b.d.0.1.0.0.2.bl.example"))  # type: ignore[union-attr]
        self.assertIsNone(queryName("unknown", "bl.example"))

    def resolver(self, answers: dict[str, Any]) -> Any:
        class Resolver:
            def lookupAddress(self, name: str, timeout: Any = None) -> Deferred[Any]:
                answer = answers.get(name)
                if isinstance(answer, Deferred):
                    return answer
                if answer is None:
                    return fail(DNSNameError(name))
                record = dns.RRHeader(name, dns.A, payload=dns.Record_A(answer))
                return succeed(([record], [], []))

        return Resolver()

    def test_listedAndNot(self) -> None:
        """
        The first zone listing the client (with a 127/8 answer) is named;
        NXDOMAIN everywhere is not listed.
        """
        clock = Clock()
        lists = Blocklists(
            ["one.example", "two.example"],
            self.resolver({"1.2.0.192.two.example": "127.0.0.2", "1.2.0.192.one.example": "10.0.0.1"}),
            clock,
            5,
        )
        self.assertEqual(self.successResultOf(lists.lookup("192.0.2.1")), "two.example")
        self.assertIsNone(self.successResultOf(lists.lookup("192.0.2.2")))

    def test_timeoutIsNotListed(self) -> None:
        """
        A zone that does not answer in time counts as not listing.
        """
        clock = Clock()
        lists = Blocklists(["slow.example"], self.resolver({"1.2.0.192.slow.example": Deferred()}), clock, 5)
        result = lists.lookup("192.0.2.1")
        self.assertNoResult(result)
        clock.advance(5)
        self.assertIsNone(self.successResultOf(result))

    def test_sharedResult(self) -> None:
        """
        Several waiters each get the result, before and after it fires.
        """
        d: Deferred[Any] = Deferred()
        shared = SharedResult(d)
        early = shared.wait()
        d.callback("zone")
        self.assertEqual((self.successResultOf(early), self.successResultOf(shared.wait())), ("zone", "zone"))


class ProtocolFilterTests(SynchronousTestCase):
    """
    Filters, blocklists and pregreet over the protocol.
    """

    filters = [
        {"client": "203.0.113.0/24", "action": "reject", "text": "Your network is not welcome"},
        {"client": "198.51.100.7", "action": "tempfail"},
        {"client": "192.0.2.99", "action": "accept"},
        {"helo": "*.bad.example", "action": "reject", "code": 550, "enhanced": "5.7.1", "text": "Bad HELO"},
        {"sender": "*@spam.example", "action": "reject", "code": 553, "enhanced": "5.7.1", "text": "No spam"},
        {"sender": "*@quiet.example", "action": "discard"},
        {"recipient": "closed@example.com", "action": "reject", "text": "Mailbox closed"},
        {"recipient": "trap@example.com", "action": "discard"},
        {"sender": "*@lists.example", "action": "tag", "header": "X-Harbor-Tag: list"},
    ]

    def setUp(self) -> None:
        self.root = self.mktemp()
        self.clock = Clock()
        self.listed: dict[str, str] = {"192.0.2.66": "bl.example"}
        self.lookups: list[str] = []
        self.deliverer, _ = makeDeliverer(self.root, [DomainConfig("example.com")], clock=self.clock)
        self.deliverer.filters = parseFilters(self.filters)
        outer = self

        class FakeBlocklists:
            def lookup(self, client: str) -> Deferred[Any]:
                outer.lookups.append(client)
                return succeed(outer.listed.get(client))

        self.deliverer.blocklists = FakeBlocklists()  # type: ignore[assignment]

    def connect(self, peer: str = "192.0.2.7", limits: Limits = Limits()) -> SMTPDriver:
        factory = HarborSMTPFactory(self.deliverer, ServerSettings(HOSTNAME, limits), self.clock)
        smtp = SMTPDriver(self.deliverer, self.clock, peer=peer, factory=factory)
        return smtp

    def files(self) -> list[str]:
        return os.listdir(os.path.join(self.root, "example.com", "new"))

    def test_connectReject(self) -> None:
        """
        A rejected network gets a 554 greeting (whatever the filter's code)
        and 503 to everything but QUIT (RFC 5321 section 3.1).
        """
        smtp = self.connect("203.0.113.5")
        self.assertEqual(smtp.banner, b"554 mx.example.com Your network is not welcome\r\n")
        self.assertEqual(
            smtp.replies(b"EHLO c\r\nMAIL FROM:<s@x.org>\r\nQUIT\r\n"),
            [b"503 Error: no SMTP service here"] * 2 + [b"221 Bye"],
        )

    def test_connectRejectMappedIPv4(self) -> None:
        """
        An IPv4 client reaching a dual-stack IPv6 listener, seen as
        C{::ffff:203.0.113.5}, is refused by an IPv4 network filter too.
        """
        smtp = self.connect("::ffff:203.0.113.5")
        self.assertEqual(smtp.banner, b"554 mx.example.com Your network is not welcome\r\n")

    def test_connectTempfail(self) -> None:
        """
        A tempfailed client gets 421 and is disconnected.
        """
        smtp = self.connect("198.51.100.7")
        self.assertEqual(smtp.banner, b"421 mx.example.com Try again later\r\n")
        self.assertTrue(smtp.transport.disconnecting)

    def test_heloReject(self) -> None:
        """
        A HELO filter refuses the greeting.
        """
        smtp = self.connect()
        self.assertEqual(smtp.send(b"EHLO mx.bad.example\r\n"), b"550 5.7.1 Bad HELO\r\n")

    def test_heloRejectNotIgnored(self) -> None:
        """
        A client that carries on after its greeting was refused gets the
        refusal again at MAIL, and nothing is stored, until a greeting
        passes; the refused name is not in the stored message's trace.
        """
        smtp = self.connect()
        self.assertEqual(
            smtp.replies(
                b"EHLO mx.bad.example\r\nMAIL FROM:<s@x.org>\r\nRCPT TO:<a@example.com>\r\nDATA\r\n"
            ),
            [b"550 5.7.1 Bad HELO", b"550 Bad HELO", b"503 Error: need MAIL command",
             b"503 Error: need MAIL command"],
        )
        self.assertEqual(self.files(), [])
        smtp.send(b"EHLO good.example\r\n")
        self.assertEqual(
            smtp.replies(b"MAIL FROM:<s@x.org>\r\nRCPT TO:<a@example.com>\r\nDATA\r\nHi\r\n.\r\n")[0],
            b"250 2.1.0 Ok",
        )
        [stored] = self.files()
        with open(os.path.join(self.root, "example.com", "new", stored), "rb") as f:
            trace = f.read()
        self.assertIn(b"Received: from good.example", trace)
        self.assertNotIn(b"bad.example", trace)

    def test_tagDoesNotSkipBlocklist(self) -> None:
        """
        A recipient tag filter adds its header but, unlike accept, leaves a
        listed client refused.
        """
        self.deliverer.filters = parseFilters([{"recipient": "*@example.com", "action": "tag", "header": "X-Tag: yes"}])
        smtp = self.connect("192.0.2.66")
        smtp.send(b"EHLO c\r\n")
        self.assertEqual(
            smtp.replies(b"MAIL FROM:<s@x.org>\r\nRCPT TO:<a@example.com>\r\n")[1],
            b"554 5.7.1 Service unavailable; client [192.0.2.66] blocked using bl.example",
        )

    def test_addressFormsCannotDodge(self) -> None:
        """
        Filters match addresses as routing reads them: quoting, case, an
        escaped character, an internationalised domain or a sub-address tag
        do not get a recipient or a sender past them.
        """
        self.deliverer.filters = parseFilters(
            self.filters + [{"sender": "bad@x.org", "action": "reject", "text": "Not you"}]
        )
        smtp = self.connect()
        smtp.send(b"EHLO c\r\nMAIL FROM:<s@x.org>\r\n")
        for recipient in [
            b"closed@example.com",
            b'"closed"@example.com',
            b'"clo\\sed"@example.com',
            b"CLOSED@Example.COM",
            b"closed+x@example.com",
        ]:
            self.assertEqual(
                smtp.replies(b"RCPT TO:<" + recipient + b">\r\n"), [b"550 5.7.1 Mailbox closed"], recipient
            )
        smtp.send(b"RSET\r\n")
        self.assertEqual(
            smtp.replies(b"MAIL FROM:<closed@\xef\xbc\xa5\xef\xbc\xb8ample.com> SMTPUTF8\r\n"
                         b"RCPT TO:<closed@\xef\xbc\xa5\xef\xbc\xb8ample.com>\r\n"),
            [b"250 2.1.0 Ok", b"550 5.7.1 Mailbox closed"],
        )
        smtp.send(b"RSET\r\n")
        for sender in [b'"bad"@x.org', b"BAD@X.ORG", b"bad+list@x.org"]:
            self.assertEqual(smtp.replies(b"MAIL FROM:<" + sender + b">\r\n"), [b"550 5.7.1 Not you"], sender)
        self.assertEqual(self.files(), [])

    def test_patternsReadLikeAddresses(self) -> None:
        """
        A pattern with a quoted local part or an internationalised domain
        matches what clients send for that address.
        """
        self.deliverer.filters = parseFilters(
            [
                {"recipient": '"John Smith"@example.com', "action": "reject", "text": "Gone"},
                {"sender": "*@b\u00fccher.example", "action": "reject", "text": "No books"},
            ]
        )
        smtp = self.connect()
        smtp.send(b"EHLO c\r\n")
        self.assertEqual(
            smtp.replies(
                b"MAIL FROM:<me@B\xc3\x9cCHER.example> SMTPUTF8\r\nMAIL FROM:<me@xn--bcher-kva.example>\r\n"
                b'MAIL FROM:<s@x.org>\r\nRCPT TO:<"john smith"@example.com>\r\n'
            ),
            [b"550 5.7.1 No books", b"550 5.7.1 No books", b"250 2.1.0 Ok", b"550 5.7.1 Gone"],
        )

    def test_policyHookSeesCanonicalAddresses(self) -> None:
        """
        A policy hook is asked with addresses in the form routing reads
        them (unquoted, lower case, A-label domain), tags kept.
        """
        asked: list[PolicyRequest] = []

        def policy(request: PolicyRequest) -> None:
            asked.append(request)

        self.deliverer.filters = ()
        self.deliverer.policyHook = PolicyHook(policy, self.clock)
        smtp = self.connect("192.0.2.8")
        smtp.send(
            b'EHLO c\r\nMAIL FROM:<"Me"@X.Org>\r\nRCPT TO:<"NoReply"@Example.COM>\r\n'
            b"RCPT TO:<Tagged+News@example.com>\r\nRCPT TO:<postmaster>\r\n"
            b"DATA\r\nSubject: x\r\n\r\nhi\r\n.\r\n"
        )
        self.assertEqual(
            [(r.stage, r.sender, r.recipients) for r in asked],
            [
                ("rcpt", "me@x.org", ("noreply@example.com",)),
                ("rcpt", "me@x.org", ("tagged+news@example.com",)),
                ("rcpt", "me@x.org", ("postmaster",)),
                ("data", "me@x.org", ("noreply@example.com", "tagged+news@example.com", "postmaster@example.com")),
            ],
        )

    def test_refusedSecondGreetingKeepsTheFirst(self) -> None:
        """
        A greeting refused after one that passed leaves the session as it
        was (RFC 5321 section 4.1.4): the transaction, the first name and
        the enhanced status codes stay, and mail goes on.
        """
        smtp = self.connect()
        self.assertEqual(
            smtp.replies(b"EHLO good.example\r\nMAIL FROM:<s@x.org>\r\nEHLO mx.bad.example\r\n")[-2:],
            [b"250 2.1.0 Ok", b"550 5.7.1 Bad HELO"],
        )
        self.assertEqual(
            smtp.replies(b"RCPT TO:<a@example.com>\r\nDATA\r\nHi\r\n.\r\n")[:2],
            [b"250 2.1.5 Ok", b"354 End data with <CR><LF>.<CR><LF>"],
        )
        [stored] = self.files()
        with open(os.path.join(self.root, "example.com", "new", stored), "rb") as f:
            self.assertIn(b"Received: from good.example", f.read())

    def test_heloTempfailStaysTemporary(self) -> None:
        """
        After a greeting a tempfail filter refused, MAIL gets that 4xx
        again, never a permanent refusal that would bounce the mail.
        """
        self.deliverer.filters = parseFilters([{"helo": "*.slow.example", "action": "tempfail"}])
        smtp = self.connect()
        self.assertEqual(
            smtp.replies(b"EHLO mx.slow.example\r\nMAIL FROM:<s@x.org>\r\n"),
            [b"450 4.7.1 Try again later", b"450 Try again later"],
        )

    def test_neverGreetedMayMail(self) -> None:
        """
        A client that never greets may still send mail (as Postfix's
        default, smtpd_helo_required = no): only a refused greeting holds
        MAIL back.
        """
        smtp = self.connect()
        self.assertEqual(smtp.replies(b"MAIL FROM:<s@x.org>\r\n"), [b"250 Ok"])

    def test_senderAndRecipientRejects(self) -> None:
        """
        Sender filters act at MAIL, recipient filters at RCPT, with their
        own codes.
        """
        smtp = self.connect()
        smtp.send(b"EHLO c\r\n")
        self.assertEqual(
            smtp.replies(
                b"MAIL FROM:<a@spam.example>\r\nMAIL FROM:<s@x.org>\r\nRCPT TO:<closed@example.com>\r\n"
                b"RCPT TO:<open@example.com>\r\n"
            ),
            [b"553 5.7.1 No spam", b"250 2.1.0 Ok", b"550 5.7.1 Mailbox closed", b"250 2.1.5 Ok"],
        )

    def test_discardAndTag(self) -> None:
        """
        Discarded mail is accepted and not stored; tagged mail carries the
        filter's header.
        """
        smtp = self.connect()
        reply = smtp.send(b"EHLO c\r\nMAIL FROM:<a@quiet.example>\r\nRCPT TO:<a@example.com>\r\nDATA\r\nx\r\n.\r\n")
        self.assertTrue(reply.endswith(b"354 End data with <CR><LF>.<CR><LF>\r\n250 2.0.0 Ok: message accepted\r\n"))
        smtp.send(b"MAIL FROM:<s@x.org>\r\nRCPT TO:<trap@example.com>\r\nDATA\r\nx\r\n.\r\n")
        self.assertEqual(self.files(), [])
        smtp.send(b"MAIL FROM:<a@lists.example>\r\nRCPT TO:<a@example.com>\r\nDATA\r\nx\r\n.\r\n")
        [name] = self.files()
        with open(os.path.join(self.root, "example.com", "new", name), "rb") as f:
            self.assertIn(b"\nX-Harbor-Tag: list\n", f.read())

    def test_blocklist(self) -> None:
        """
        A listed client is refused at RCPT with 554 5.7.1 naming the list; an
        accepted client is not looked up at all.
        """
        smtp = self.connect("192.0.2.66")
        smtp.send(b"EHLO c\r\n")
        self.assertEqual(
            smtp.replies(ENVELOPE)[1],
            b"554 5.7.1 Service unavailable; client [192.0.2.66] blocked using bl.example",
        )
        self.connect("192.0.2.99")
        self.assertEqual(self.lookups, ["192.0.2.66"])
        clean = self.connect("192.0.2.8")
        clean.send(b"EHLO c\r\n")
        self.assertEqual(clean.replies(ENVELOPE)[1], b"250 2.1.5 Ok")

    def test_pregreet(self) -> None:
        """
        With pregreet_wait, a client talking before the banner is refused;
        a patient one gets the banner.
        """
        limits = Limits(pregreetWait=2)
        early = self.connect(limits=limits)
        self.assertEqual(early.banner, b"")
        self.assertEqual(early.send(b"EHLO spambot\r\n"), b"554 Error: talking before the greeting\r\n")
        self.assertTrue(early.transport.disconnecting)
        patient = self.connect(limits=limits)
        self.clock.advance(2)
        self.assertEqual(patient.take(), b"220 mx.example.com ESMTP MailHarbor\r\n")
        trusted = self.connect("192.0.2.99", limits=limits)
        self.assertEqual(trusted.banner, b"220 mx.example.com ESMTP MailHarbor\r\n")
