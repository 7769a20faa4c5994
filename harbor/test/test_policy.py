"""
Tests for L{harbor.address} and L{harbor.routing}: address parsing and recipient decisions.
"""

from twisted.trial.unittest import SynchronousTestCase

from harbor._syntax import asciiDomain
from harbor.address import (
    AddressSyntaxError,
    NeedsSMTPUTF8,
    Path,
    canonicalLocalPart,
    clientGroup,
    parsePath,
)
from harbor.limits import ConnectionCounter
from harbor.routing import Accept, DomainConfig, RecipientPolicy, Reject


class ParsePathTests(SynchronousTestCase):
    """
    Tests for L{parsePath}.
    """

    def test_angleBrackets(self) -> None:
        """
        A bracketed address splits into local part and domain.
        """
        self.assertEqual(parsePath(b"<alice@example.com>"), Path("alice", "example.com"))

    def test_bareAddress(self) -> None:
        """
        An address without brackets is accepted, as Postfix does.
        """
        self.assertEqual(parsePath("alice@example.com"), Path("alice", "example.com"))

    def test_nullPathOnlyWhenAllowed(self) -> None:
        """
        C{<>} is the null sender where allowed and a syntax error elsewhere.
        """
        self.assertTrue(parsePath(b"<>", allowNull=True).isNull)
        self.assertRaises(AddressSyntaxError, parsePath, b"<>")

    def test_sourceRouteKept(self) -> None:
        """
        A source route is parsed and kept, so policy can refuse it.
        """
        path = parsePath(b"<@relay.example,@b.example:x@example.com>")
        self.assertEqual(path, Path("x", "example.com", "@relay.example,@b.example:"))

    def test_addressLiteral(self) -> None:
        """
        An address literal is syntactically valid and flagged as such.
        """
        self.assertTrue(parsePath(b"<x@[192.0.2.1]>").isLiteral)
        self.assertTrue(parsePath(b"<x@[IPv6:2001:db8::1]>").isLiteral)

    def test_quotedLocalPart(self) -> None:
        """
        A quoted local part keeps its quotes.
        """
        self.assertEqual(parsePath(b'<"a b"@example.com>').local, '"a b"')

    def test_postmasterWithoutDomain(self) -> None:
        """
        C{<postmaster>} alone is valid (RFC 5321 section 4.1.1.3); any other
        local part needs a domain.
        """
        self.assertEqual(parsePath(b"<Postmaster>"), Path("Postmaster", ""))
        self.assertRaises(AddressSyntaxError, parsePath, b"<alice>")

    def test_controlCharactersRefused(self) -> None:
        """
        No control character, CR and LF included, gets through, even quoted:
        addresses end up in headers.
        """
        for raw in [
            b'<"a\nX-Evil: 1"@example.com>',
            b'<"a\r"@example.com>',
            b"<a\x00b@example.com>",
            b"<a@exam\nple.com>",
        ]:
            self.assertRaises(AddressSyntaxError, parsePath, raw)

    def test_malformed(self) -> None:
        """
        Malformed paths are refused with a reason.
        """
        for raw in [
            b"<alice@example.com",
            b"alice@@example.com",
            b"<a..b@example.com>",
            b"<.a@example.com>",
            b"<alice@-example.com>",
            b"<alice@example..com>",
            b"<alice@>",
            b"<@example.com>",
            "<al\u00efce@example.com>".encode(),
            b"<" + b"a" * 300 + b"@example.com>",
        ]:
            self.assertRaises(AddressSyntaxError, parsePath, raw)

    def test_canonicalLocalPart(self) -> None:
        """
        Lookups ignore case and quoting.
        """
        self.assertEqual(canonicalLocalPart('"Alice"'), "alice")
        self.assertEqual(canonicalLocalPart('"a\\"b"'), 'a"b')
        self.assertEqual(canonicalLocalPart("BOB"), "bob")


class RecipientPolicyTests(SynchronousTestCase):
    """
    Tests for L{RecipientPolicy}.
    """

    def setUp(self) -> None:
        self.policy = RecipientPolicy(
            [
                DomainConfig("example.com"),
                DomainConfig("example.org", frozenset({"alice"})),
            ]
        )

    def decide(self, raw: bytes) -> tuple[Accept, ...] | Reject:
        return self.policy.decide(parsePath(raw))

    def test_catchAll(self) -> None:
        """
        Any local part of a catch-all domain goes to that domain's Maildir.
        """
        self.assertEqual(
            self.decide(b"<anything@example.com>"),
            (Accept("example.com", "anything@example.com"),),
        )

    def test_domainCaseInsensitive(self) -> None:
        """
        Domains match whatever their case, and the configured spelling is
        what the mailbox and Delivered-To use.
        """
        self.assertEqual(
            self.decide(b"<Bob@EXAMPLE.Com>"), (Accept("example.com", "Bob@example.com"),)
        )

    def test_listedAddress(self) -> None:
        """
        A listed address is accepted, case-insensitively.
        """
        decision = self.decide(b"<ALICE@example.org>")
        assert isinstance(decision, tuple), decision
        self.assertEqual(decision[0].mailbox, "example.org")

    def test_unlistedAddress(self) -> None:
        """
        An address a domain does not list is refused with 550 5.1.1.
        """
        decision = self.decide(b"<bob@example.org>")
        self.assertIsInstance(decision, Reject)
        assert isinstance(decision, Reject)
        self.assertEqual((decision.code, decision.enhanced), (550, "5.1.1"))
        self.assertIn("<bob@example.org>", decision.text)

    def test_otherDomainIsRelaying(self) -> None:
        """
        Another domain is refused as relaying, 550 5.7.1.
        """
        decision = self.decide(b"<x@other.org>")
        self.assertEqual(decision, Reject(550, "5.7.1", "<x@other.org>: Relay access denied"))

    def test_subdomainIsNotOurs(self) -> None:
        """
        A subdomain of a configured domain is another domain.
        """
        self.assertIsInstance(self.decide(b"<x@mail.example.com>"), Reject)

    def test_routingRefused(self) -> None:
        """
        Source routes, percent hacks, bang paths and address literals are all
        refused as relaying, even when they end in one of our domains.
        """
        for raw in [
            b"<@relay.example:x@example.com>",
            b"<x%other.org@example.com>",
            b'<"x%other.org"@example.com>',
            b"<other.org!x@example.com>",
            b"<x@[127.0.0.1]>",
        ]:
            decision = self.decide(raw)
            self.assertIsInstance(decision, Reject, raw)
            assert isinstance(decision, Reject)
            self.assertEqual(decision.enhanced, "5.7.1")

    def test_postmasterAlwaysAccepted(self) -> None:
        """
        The postmaster of every domain is accepted even when not listed, and
        C{<postmaster>} alone goes to the first domain's.
        """
        self.assertEqual(
            self.decide(b"<PostMaster@example.org>"),
            (Accept("example.org", "PostMaster@example.org"),),
        )
        self.assertEqual(self.decide(b"<postmaster>"), (Accept("example.com", "postmaster@example.com"),))

    def test_mailboxNeverFromAddress(self) -> None:
        """
        A local part that looks like a path still maps to the configured
        domain's Maildir, and one that climbs out is not even an address.
        """
        decision = self.decide(b"<etc/passwd@example.com>")
        assert isinstance(decision, tuple), decision
        self.assertEqual(decision[0].mailbox, "example.com")
        self.assertRaises(AddressSyntaxError, parsePath, b"<../../etc/passwd@example.com>")


class InternationalisedTests(SynchronousTestCase):
    """
    SMTPUTF8 addresses (RFC 6531) and internationalised domains.
    """

    def test_utf8Path(self) -> None:
        """
        With utf8, UTF-8 local parts and U-label domains parse.
        """
        self.assertEqual(
            parsePath("<j\u00f6rg@b\u00fccher.example>".encode(), utf8=True),
            Path("j\u00f6rg", "b\u00fccher.example"),
        )

    def test_needsSMTPUTF8(self) -> None:
        """
        Without utf8, a non-ASCII path raises NeedsSMTPUTF8.
        """
        self.assertRaises(NeedsSMTPUTF8, parsePath, "<j\u00f6rg@x.org>".encode())

    def test_separatorsAndControlsRefused(self) -> None:
        """
        Unicode line separators, C1 controls and format characters are
        refused even with utf8.
        """
        for text in ["a\u2028b@x.org", "a\x85b@x.org", "a\u200eb@x.org"]:
            self.assertRaises(AddressSyntaxError, parsePath, f"<{text}>".encode(), utf8=True)

    def test_labelForms(self) -> None:
        """
        A domain configured as an A-label matches its U-label and the other
        way round.
        """
        self.assertEqual(asciiDomain("B\u00fccher.Example."), "xn--bcher-kva.example")
        policy = RecipientPolicy([DomainConfig("xn--bcher-kva.example")])
        for domain in ["b\u00fccher.example", "XN--BCHER-KVA.example"]:
            decision = policy.decide(parsePath(f"<a@{domain}>".encode(), utf8=True))
            self.assertEqual(decision, (Accept("xn--bcher-kva.example", "a@xn--bcher-kva.example"),))

    def test_idna2008(self) -> None:
        """
        Internationalised names map as IDNA 2008 does: straße.de is
        xn--strae-oqa.de, a domain of its own, not strasse.de.
        """
        self.assertEqual(asciiDomain("stra\u00dfe.de"), "xn--strae-oqa.de")
        policy = RecipientPolicy([DomainConfig("xn--strae-oqa.de")])
        decision = policy.decide(parsePath("<a@stra\u00dfe.de>".encode(), utf8=True))
        assert isinstance(decision, tuple), decision
        self.assertIsInstance(decision[0], Accept)
        self.assertIsInstance(policy.decide(parsePath(b"<a@strasse.de>")), Reject)

    def test_labelTooLong(self) -> None:
        """
        A label over 63 octets, or a name over 253, is bad syntax, found by
        the parser (and so never a local failure later).
        """
        for domain in ["a" * 64 + ".example", ("a" * 60 + ".") * 5 + "example", "a..example"]:
            self.assertRaises(AddressSyntaxError, parsePath, f"<x@{domain}>".encode())
        self.assertEqual(parsePath(f"<x@{'a' * 63}.example>".encode()).domain, "a" * 63 + ".example")

    def test_duplicateKey(self) -> None:
        """
        Accepting the same mailbox in another case gives the same key.
        """
        self.assertEqual(
            Accept("example.com", '"Alice"@example.com').key, Accept("example.com", "alice@example.com").key
        )


class ConnectionCounterTests(SynchronousTestCase):
    """
    Tests for L{ConnectionCounter}.
    """

    def test_limits(self) -> None:
        """
        Connections are refused past the total and per-client limits and
        admitted again once released; exempt networks skip the per-client
        limit.
        """
        counter = ConnectionCounter(3, 1, ["127.0.0.0/8"])
        self.assertIsNone(counter.admit("192.0.2.1"))
        self.assertEqual(counter.admit("192.0.2.1"), "too many connections from your address")
        self.assertIsNone(counter.admit("127.0.0.1"))
        self.assertIsNone(counter.admit("127.0.0.1"))
        self.assertEqual(counter.admit("192.0.2.2"), "too many connections")
        counter.release("192.0.2.1")
        self.assertIsNone(counter.admit("192.0.2.1"))

    def test_clientsGrouped(self) -> None:
        """
        IPv6 clients in one /84 share the per-client limit (rotating
        through a /64 does not dodge it), one in another /84 does not; an
        IPv4 client counts as itself whether it comes as C{a.b.c.d} or as
        C{::ffff:a.b.c.d}; releasing frees the group's slot.
        """
        counter = ConnectionCounter(100, 1)
        self.assertIsNone(counter.admit("2001:db8::1"))
        self.assertEqual(counter.admit("2001:db8::ffff:2"), "too many connections from your address")
        self.assertIsNone(counter.admit("2001:db8:0:0:1000::1"))
        self.assertIsNone(counter.admit("192.0.2.1"))
        self.assertEqual(counter.admit("::ffff:192.0.2.1"), "too many connections from your address")
        counter.release("2001:db8::1")
        self.assertIsNone(counter.admit("2001:db8::7"))
        self.assertEqual(
            [clientGroup(c) for c in ("192.0.2.1", "::ffff:192.0.2.1", "2001:db8::1", "unknown")],
            ["192.0.2.1", "192.0.2.1", "2001:db8::/84", "unknown"],
        )

    def test_exemptHostDoesNotFillItsNetwork(self) -> None:
        """
        An exempt IPv6 host counts towards the total only, not against the
        other hosts of its network; its connections are released as they
        were counted even after the exemptions change.
        """
        counter = ConnectionCounter(100, 1, ["2001:db8::10/128"])
        for _ in range(5):
            self.assertIsNone(counter.admit("2001:db8::10"))
        self.assertIsNone(counter.admit("2001:db8::11"))
        self.assertIsNotNone(counter.admit("2001:db8::12"))
        counter.setLimits(100, 1, [])
        for _ in range(5):
            counter.release("2001:db8::10")
        counter.release("2001:db8::11")
        self.assertIsNone(counter.admit("2001:db8::12"))
        self.assertIsNotNone(counter.admit("2001:db8::10"))

    def test_nonIPClient(self) -> None:
        """
        A client without an IP address (a UNIX socket) is never exempt.
        """
        counter = ConnectionCounter(10, 1, ["127.0.0.0/8"])
        self.assertIsNone(counter.admit("unknown"))
        self.assertIsNotNone(counter.admit("unknown"))
