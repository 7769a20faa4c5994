"""
Tests for L{harbor.dnsbl}: the names looked up, what a blocklist's answer,
silence or failure means, and one result shared by several waiters.

No real DNS: a table-driven resolver answers, and a L{Clock} runs the
timeouts.
"""

from __future__ import annotations

from typing import Any, cast

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, Logger, formatEvent
from twisted.names import dns
from twisted.names.error import (
    AuthoritativeDomainError,
    DNSNameError,
    DNSServerError,
    ResolverError,
)
from twisted.trial.unittest import SynchronousTestCase

from harbor.dnsbl import Blocklists, SharedResult, queryName

# 2001:db8::1 as a blocklist's name for it: 32 nibbles, last first.
IPV6_NAME = "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.bl.example"


def addressRecord(name: str, address: str) -> dns.RRHeader:
    """
    An A record, as a blocklist answers.
    """
    return dns.RRHeader(name, dns.A, payload=dns.Record_A(address))


class FakeResolver:
    """
    A resolver answering C{lookupAddress} from a table.

    @ivar answers: By name: an address (one A record), a list of records
        (the answer section), a L{Deferred} (fired by the test) or an
        exception (the lookup fails with it).  A name not in it does not
        exist.
    @ivar queries: C{(name, timeout)} of each lookup, in order.
    """

    def __init__(self, answers: dict[str, Any]) -> None:
        self.answers = answers
        self.queries: list[tuple[str, Any]] = []

    def lookupAddress(self, name: str, timeout: Any = None) -> Deferred[Any]:
        self.queries.append((name, timeout))
        answer = self.answers.get(name)
        if isinstance(answer, Deferred):
            return answer
        if answer is None:
            return fail(DNSNameError(name))
        if isinstance(answer, Exception):
            return fail(answer)
        records = [addressRecord(name, answer)] if isinstance(answer, str) else answer
        return succeed((records, [], []))


class QueryNameTests(SynchronousTestCase):
    """
    Tests for L{queryName}.
    """

    def test_queryNames(self) -> None:
        """
        Addresses are reversed into the zone; mapped IPv4 counts as IPv4.
        """
        self.assertEqual(queryName("192.0.2.1", "bl.example"), "1.2.0.192.bl.example")
        self.assertEqual(queryName("::ffff:192.0.2.1", "bl.example"), "1.2.0.192.bl.example")
        name = queryName("2001:db8::1", "bl.example")
        assert name is not None
        self.assertTrue(name.endswith(".8.b.d.0.1.0.0.2.bl.example"))
        self.assertIsNone(queryName("unknown", "bl.example"))

    def test_ipv4(self) -> None:
        """
        An IPv4 address is its four octets, last first, then the zone.
        """
        self.assertEqual(queryName("203.0.113.45", "zen.example.org"), "45.113.0.203.zen.example.org")

    def test_ipv6(self) -> None:
        """
        An IPv6 address is its 32 nibbles, expanded and last first, then
        the zone, with nothing of C{ip6.arpa} left.
        """
        self.assertEqual(queryName("2001:db8::1", "bl.example"), IPV6_NAME)

    def test_mappedIPv4(self) -> None:
        """
        An IPv4 client seen on an IPv6 socket is looked up as IPv4, as
        blocklists list it.
        """
        self.assertEqual(queryName("::ffff:203.0.113.45", "bl.example"), "45.113.0.203.bl.example")

    def test_notAnAddress(self) -> None:
        """
        What is not an IP address (a UNIX socket peer, a bad octet, an
        address in brackets) has no name to look up.
        """
        for client in ("unknown", "", "192.0.2.256", "192.0.2", "[2001:db8::1]"):
            self.assertIsNone(queryName(client, "bl.example"), client)


class BlocklistsTests(SynchronousTestCase):
    """
    Tests for L{Blocklists}.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.events: list[dict[str, Any]] = []
        self.patch(Blocklists, "_log", Logger(observer=cast(ILogObserver, self.events.append)))

    def test_listedAndNot(self) -> None:
        """
        The first zone listing the client (with a 127/8 answer) is named;
        NXDOMAIN everywhere is not listed.
        """
        clock = Clock()
        lists = Blocklists(
            ["one.example", "two.example"],
            FakeResolver({"1.2.0.192.two.example": "127.0.0.2", "1.2.0.192.one.example": "10.0.0.1"}),
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
        lists = Blocklists(["slow.example"], FakeResolver({"1.2.0.192.slow.example": Deferred()}), clock, 5)
        result = lists.lookup("192.0.2.1")
        self.assertNoResult(result)
        clock.advance(5)
        self.assertIsNone(self.successResultOf(result))

    def test_asksEveryZoneAtOnce(self) -> None:
        """
        Every zone is asked at once, for the client's name in it, with the
        timeout given to the resolver too.
        """
        resolver = FakeResolver({})
        lists = Blocklists(["one.example", "two.example"], resolver, self.clock, 3)
        lists.lookup("192.0.2.1")
        self.assertEqual(
            resolver.queries, [("1.2.0.192.one.example", (3,)), ("1.2.0.192.two.example", (3,))]
        )

    def test_configuredOrderWins(self) -> None:
        """
        When several zones list the client, the one configured first is
        named, whichever answers first.
        """
        first: Deferred[Any] = Deferred()
        second: Deferred[Any] = Deferred()
        resolver = FakeResolver({"1.2.0.192.one.example": first, "1.2.0.192.two.example": second})
        result = Blocklists(["one.example", "two.example"], resolver, self.clock, 5).lookup("192.0.2.1")
        second.callback(([addressRecord("1.2.0.192.two.example", "127.0.0.2")], [], []))
        self.assertNoResult(result)
        first.callback(([addressRecord("1.2.0.192.one.example", "127.0.0.3")], [], []))
        self.assertEqual(self.successResultOf(result), "one.example")

    def test_notAnAddressNotLookedUp(self) -> None:
        """
        A client that is not an IP address is not listed, and no zone is
        asked about it.
        """
        resolver = FakeResolver({})
        result = Blocklists(["one.example"], resolver, self.clock, 5).lookup("unknown")
        self.assertIsNone(self.successResultOf(result))
        self.assertEqual(resolver.queries, [])

    def test_noZones(self) -> None:
        """
        With no zones, nobody is listed.
        """
        self.assertIsNone(self.successResultOf(Blocklists([], FakeResolver({}), self.clock, 5).lookup("192.0.2.1")))

    def test_anyLoopbackRecordLists(self) -> None:
        """
        Any A record in 127/8 of the answer lists the client, after other
        records (a CNAME, an address outside 127/8).
        """
        name = "1.2.0.192.bl.example"
        chain = [dns.RRHeader(name, dns.CNAME, payload=dns.Record_CNAME(b"listed.bl.example"))]
        for records in (
            chain + [addressRecord("listed.bl.example", "127.0.0.2")],
            [addressRecord(name, "10.0.0.1"), addressRecord(name, "127.0.0.4")],
        ):
            lists = Blocklists(["bl.example"], FakeResolver({name: records}), self.clock, 5)
            self.assertEqual(self.successResultOf(lists.lookup("192.0.2.1")), "bl.example", records)

    def test_otherAnswersDoNotList(self) -> None:
        """
        An empty answer, a CNAME alone, or addresses outside 127/8 (a
        blocklist's way of saying it refuses the query) do not list the
        client.
        """
        name = "1.2.0.192.bl.example"
        for records in (
            [],
            [dns.RRHeader(name, dns.CNAME, payload=dns.Record_CNAME(b"elsewhere.example"))],
            [addressRecord(name, "10.0.0.1"), addressRecord(name, "128.0.0.1")],
        ):
            lists = Blocklists(["bl.example"], FakeResolver({name: records}), self.clock, 5)
            self.assertIsNone(self.successResultOf(lists.lookup("192.0.2.1")), records)
        self.assertEqual(self.events, [])

    def test_timeoutLogged(self) -> None:
        """
        A zone that does not answer in time is logged as timing out, and
        its lookup is cancelled.
        """
        cancelled: list[Deferred[Any]] = []
        pending: Deferred[Any] = Deferred(cancelled.append)
        lists = Blocklists(["slow.example"], FakeResolver({"1.2.0.192.slow.example": pending}), self.clock, 5)
        result = lists.lookup("192.0.2.1")
        self.clock.advance(4.9)
        self.assertNoResult(result)
        self.assertEqual(self.events, [])
        self.clock.advance(0.1)
        self.assertIsNone(self.successResultOf(result))
        self.assertEqual(cancelled, [pending])
        self.assertEqual(
            [formatEvent(e) for e in self.events],
            ["DNSBL slow.example did not answer for 1.2.0.192.slow.example: timeout"],
        )

    def test_errorAnswersNotLogged(self) -> None:
        """
        An error answer from the DNS (NXDOMAIN, the usual "not listed", but
        also SERVFAIL and the other error codes, or an authoritative "no
        such name") counts as not listing and is not logged.
        """
        name = "1.2.0.192.bl.example"
        for error in (DNSNameError(name), DNSServerError(name), AuthoritativeDomainError(name)):
            lists = Blocklists(["bl.example"], FakeResolver({name: error}), self.clock, 5)
            self.assertIsNone(self.successResultOf(lists.lookup("192.0.2.1")), error)
            self.assertEqual(self.events, [], error)

    def test_otherFailuresLogged(self) -> None:
        """
        A lookup that fails without an answer from the DNS counts as not
        listing, and is logged with the zone, the name and the error.
        """
        name = "1.2.0.192.bl.example"
        lists = Blocklists(["bl.example"], FakeResolver({name: ResolverError("no nameservers")}), self.clock, 5)
        self.assertIsNone(self.successResultOf(lists.lookup("192.0.2.1")))
        self.assertEqual(
            [formatEvent(e) for e in self.events],
            ["DNSBL bl.example did not answer for 1.2.0.192.bl.example: no nameservers"],
        )

    def test_failingZoneDoesNotHideAListing(self) -> None:
        """
        A zone that fails or times out does not keep another zone's
        listing from being found.
        """
        resolver = FakeResolver(
            {
                "1.2.0.192.broken.example": DNSServerError("SERVFAIL"),
                "1.2.0.192.slow.example": Deferred(),
                "1.2.0.192.good.example": "127.0.0.2",
            }
        )
        lists = Blocklists(["broken.example", "slow.example", "good.example"], resolver, self.clock, 5)
        result = lists.lookup("192.0.2.1")
        self.clock.advance(5)
        self.assertEqual(self.successResultOf(result), "good.example")


class SharedResultTests(SynchronousTestCase):
    """
    Tests for L{SharedResult}.
    """

    def test_sharedResult(self) -> None:
        """
        Several waiters each get the result, before and after it fires.
        """
        d: Deferred[Any] = Deferred()
        shared = SharedResult(d)
        early = shared.wait()
        d.callback("zone")
        self.assertEqual((self.successResultOf(early), self.successResultOf(shared.wait())), ("zone", "zone"))

    def test_noResultUntilFired(self) -> None:
        """
        Waiters wait until the lookup has its result.
        """
        shared = SharedResult(Deferred())
        self.assertNoResult(shared.wait())

    def test_waitersIndependent(self) -> None:
        """
        Each waiter gets a L{Deferred} of its own: what one waiter's
        callbacks do does not change what the others get.
        """
        d: Deferred[Any] = Deferred()
        shared = SharedResult(d)
        first, second = shared.wait(), shared.wait()
        self.assertIsNot(first, second)
        first.addCallback(lambda zone: "changed")
        d.callback("zone")
        self.assertEqual(
            (self.successResultOf(first), self.successResultOf(second), self.successResultOf(shared.wait())),
            ("changed", "zone", "zone"),
        )

    def test_failureIsNotListed(self) -> None:
        """
        A failed lookup gives every waiter L{None} (not listed), and the
        failure is consumed, not left unhandled.
        """
        d: Deferred[Any] = Deferred()
        shared = SharedResult(d)
        early = shared.wait()
        d.errback(RuntimeError("resolver broke"))
        self.assertEqual((self.successResultOf(early), self.successResultOf(shared.wait())), (None, None))
        self.assertIsNone(self.successResultOf(d))
