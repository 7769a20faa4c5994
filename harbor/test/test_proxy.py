"""
Tests for L{harbor.smtp._proxy}: C{haproxy:} listeners over
L{StringTransport}, with the SMTP session behind them.
"""

from __future__ import annotations

import base64
import mailbox
import os
from typing import Any, cast

from zope.interface.verify import verifyObject

from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import ILogObserver, Logger, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from harbor.auth import TextOrBytes
from harbor.filters import parseFilters
from harbor.limits import Limits
from harbor.policyhook import PolicyHook, PolicyRequest
from harbor.routing import DomainConfig
from harbor.smtp._factory import HarborSMTPFactory, ServerSettings
from harbor.smtp._protocol import HarborESMTP
from harbor.smtp._proxy import ProxyHeaderFactory, ProxyHeaderReceiver, splitProxy
from harbor.test._support import HOSTNAME, makeDeliverer
from harbor.test.test_proxyheader import v2

BANNER = b"220 mx.example.com ESMTP MailHarbor\r\n"
ENVELOPE = b"EHLO client.example\r\nMAIL FROM:<s@remote.example>\r\nRCPT TO:<a@example.com>\r\nDATA\r\n"


def v1(client: str, proxy: str = "198.51.100.1") -> bytes:
    """
    A version 1 header for a TCP4 client.
    """
    return f"PROXY TCP4 {client} {proxy} 40000 25\r\n".encode()


class ProxiedConnection:
    """
    One connection from a balancer at C{proxy} to a C{haproxy:} listener.
    """

    def __init__(self, factory: ProxyHeaderFactory, proxy: str = "127.0.0.1") -> None:
        address = IPv6Address("TCP", proxy, 40000) if ":" in proxy else IPv4Address("TCP", proxy, 40000)
        self.wrapper = cast(ProxyHeaderReceiver, factory.buildProtocol(address))
        self.transport = StringTransport(peerAddress=address)
        self.wrapper.makeConnection(self.transport)

    @property
    def smtp(self) -> HarborESMTP:
        return cast(HarborESMTP, self.wrapper.wrappedProtocol)

    def send(self, data: bytes) -> bytes:
        """
        Send C{data} and return what the server wrote since last asked.
        """
        self.wrapper.dataReceived(data)
        value: bytes = self.transport.value()
        self.transport.clear()
        return value

    def close(self) -> None:
        self.wrapper.connectionLost(Failure(ConnectionDone()))


class ProxyTestCase(SynchronousTestCase):
    """
    A deliverer, the SMTP factory of one listener and its PROXY wrapper,
    with both loggers captured.
    """

    trusted = ("127.0.0.0/8", "::1/128")

    def setUp(self) -> None:
        self.root = self.mktemp()
        self.clock = Clock()
        self.deliverer, _ = makeDeliverer(self.root, [DomainConfig("example.com")], clock=self.clock)
        self.events: list[dict[str, Any]] = []
        self.proxyEvents: list[dict[str, Any]] = []
        self.patch(HarborESMTP, "_log", Logger(observer=cast(ILogObserver, self.events.append)))
        self.patch(ProxyHeaderReceiver, "_log", Logger(observer=cast(ILogObserver, self.proxyEvents.append)))
        self.useLimits(Limits())

    def useLimits(self, limits: Limits) -> None:
        smtp = HarborSMTPFactory(self.deliverer, ServerSettings(HOSTNAME, limits), self.clock)
        self.factory = ProxyHeaderFactory(smtp, self.trusted, limits.commandTimeout, self.clock)

    def connect(self, proxy: str = "127.0.0.1") -> ProxiedConnection:
        return ProxiedConnection(self.factory, proxy)

    def proxyLog(self) -> list[str]:
        return [formatEvent(e) for e in self.proxyEvents]

    def log(self) -> list[str]:
        return [formatEvent(e) for e in self.events]

    def stored(self) -> list[mailbox.MaildirMessage]:
        return list(mailbox.Maildir(os.path.join(self.root, "example.com"), create=False))


class RealAddressTests(ProxyTestCase):
    """
    The client's address from the header is the session's.
    """

    def test_interfaces(self) -> None:
        """
        The wrapper passes on the end of a TLS handshake (STARTTLS wraps it).
        """
        connection = self.connect()
        self.assertTrue(verifyObject(IHandshakeListener, connection.wrapper))

    def test_bannerWaitsForHeader(self) -> None:
        """
        Nothing is sent until the header has come; then the banner.
        """
        connection = self.connect()
        self.assertEqual(connection.transport.value(), b"")
        self.assertEqual(connection.send(b"PROXY TCP4 192.0.2."), b"")
        self.assertEqual(connection.send(b"7 198.51.100.1 40000 25\r\n"), BANNER)

    def test_v1Address(self) -> None:
        """
        A v1 header's source is the client in the session, the log line and
        the stored message's C{Received:} header.
        """
        connection = self.connect()
        connection.send(v1("192.0.2.7"))
        self.assertEqual(connection.smtp.session.clientAddress, "192.0.2.7")
        self.assertEqual(connection.wrapper.getPeer(), IPv4Address("TCP", "192.0.2.7", 40000))
        self.assertEqual(connection.wrapper.getHost(), IPv4Address("TCP", "198.51.100.1", 25))
        replies = connection.send(ENVELOPE + b"Subject: hi\r\n\r\nHello.\r\n.\r\nQUIT\r\n")
        self.assertIn(b"250 2.0.0 Ok: stored as", replies)
        (message,) = self.stored()
        self.assertIn("[192.0.2.7]", message["Received"])
        self.assertNotIn("127.0.0.1", message["Received"])
        connection.close()
        self.assertTrue(any(line.startswith("client=192.0.2.7 ") for line in self.log()), self.log())
        self.assertFalse([line for line in self.log() if "127.0.0.1" in line])

    def test_v2Address(self) -> None:
        """
        A v2 header's source is the client, and the client's first command
        in the same segment as the header is answered after the banner.
        """
        connection = self.connect()
        self.assertEqual(
            connection.send(v2() + b"HELO client.example\r\n"), BANNER + b"250 mx.example.com\r\n"
        )
        self.assertEqual(connection.smtp.session.clientAddress, "192.0.2.7")

    def test_localHeader(self) -> None:
        """
        A header without an address (a v2 LOCAL health check) leaves the
        proxy's own address.
        """
        connection = self.connect()
        self.assertEqual(connection.send(v2(command=0, family=0, addresses=b"")), BANNER)
        self.assertEqual(connection.smtp.session.clientAddress, "127.0.0.1")

    def test_perClientLimit(self) -> None:
        """
        Clients behind one balancer on loopback are counted each on its own
        address, not exempt as the balancer would be: with one connection
        per client, a second from the same client is refused, while another
        client is let in.
        """
        self.useLimits(Limits(maxConnectionsPerClient=1))
        first = self.connect()
        self.assertEqual(first.send(v1("192.0.2.7")), BANNER)
        second = self.connect()
        self.assertEqual(
            second.send(v1("192.0.2.7")),
            b"421 mx.example.com Error: too many connections from your address\r\n",
        )
        other = self.connect()
        self.assertEqual(other.send(v1("192.0.2.8")), BANNER)
        self.assertIn("client=192.0.2.7 refused: too many connections from your address", self.log())

    def test_loopbackClientExempt(self) -> None:
        """
        The loopback exemption applies to a real client on loopback.
        """
        self.useLimits(Limits(maxConnectionsPerClient=1))
        for ignored in range(2):
            self.assertEqual(self.connect().send(v1("127.0.0.2")), BANNER)

    def test_filterAndBlocklist(self) -> None:
        """
        Connect filters and the DNS blocklist look at the client's address.
        """
        self.deliverer.filters = parseFilters([{"client": "192.0.2.9", "action": "reject", "text": "Go away"}])
        lookups: list[str] = []

        class Blocklists:
            def lookup(self, client: str) -> Deferred[Any]:
                lookups.append(client)
                return succeed(None)

        self.deliverer.blocklists = Blocklists()  # type: ignore[assignment]
        self.assertEqual(self.connect().send(v1("192.0.2.9")), b"554 mx.example.com Go away\r\n")
        self.assertEqual(self.connect().send(v1("192.0.2.10")), BANNER)
        self.assertEqual(lookups, ["192.0.2.10"])

    def test_policyHook(self) -> None:
        """
        The policy hook is asked about the header's client.
        """
        asked: list[str] = []

        def hook(request: PolicyRequest) -> None:
            asked.append(request.client)

        self.deliverer.policyHook = PolicyHook(hook, self.clock)
        connection = self.connect()
        connection.send(v1("192.0.2.7"))
        self.assertIn(b"250 2.1.5 Ok", connection.send(ENVELOPE))
        self.assertEqual(asked, ["192.0.2.7"])

    def test_authThrottle(self) -> None:
        """
        Failed logins are counted against the header's client, not the
        balancer: another client behind it is not slowed down.
        """
        checker = InMemoryUsernamePasswordDatabaseDontUse(alice=b"right")
        smtp = HarborSMTPFactory(
            self.deliverer,
            ServerSettings(
                HOSTNAME,
                Limits(),
                checkers=(TextOrBytes(checker),),  # type: ignore[arg-type]
                allowPlaintextAuth=True,
            ),
            self.clock,
        )
        self.factory = ProxyHeaderFactory(smtp, self.trusted, 300, self.clock)
        wrong = b"AUTH PLAIN " + base64.b64encode(b"\0alice\0wrong") + b"\r\n"
        guesser = self.connect()
        guesser.send(v1("192.0.2.66") + b"EHLO x\r\n")
        self.assertTrue(guesser.send(wrong).startswith(b"535 "))
        # The second failure in a row from 192.0.2.66 waits a second.
        self.assertEqual(guesser.send(wrong), b"")
        self.clock.advance(1)
        self.assertTrue(guesser.transport.value().startswith(b"535 "))
        other = self.connect()
        other.send(v1("192.0.2.8") + b"EHLO x\r\n")
        self.assertTrue(other.send(wrong).startswith(b"535 "))

    def test_pregreet(self) -> None:
        """
        The pregreet wait starts once the header is in: a client talking
        before the banner is caught; one that waits is greeted.
        """
        self.useLimits(Limits(pregreetWait=2))
        early = self.connect()
        self.assertEqual(
            early.send(v1("192.0.2.7") + b"EHLO bot\r\n"), b"554 Error: talking before the greeting\r\n"
        )
        self.assertIn("client=192.0.2.7 talked before the greeting", self.log())
        patient = self.connect()
        self.clock.advance(5)
        self.assertEqual(patient.send(v1("192.0.2.8")), b"")
        self.clock.advance(2)
        self.assertEqual(patient.transport.value(), BANNER)


class RefusalTests(ProxyTestCase):
    """
    Connections that are closed before any SMTP, each with one log line.
    """

    def assertRefused(self, connection: ProxiedConnection, line: str) -> None:
        self.assertTrue(connection.transport.disconnecting)
        self.assertIsNone(connection.wrapper.header)
        self.assertEqual(connection.transport.value(), b"")
        connection.close()
        self.assertEqual(self.proxyLog(), [line])
        self.assertEqual(self.events, [])

    def test_untrusted(self) -> None:
        """
        A peer outside trusted_proxies is cut off at once, and a header it
        sends is never read.
        """
        connection = self.connect("203.0.113.5")
        self.assertTrue(connection.transport.disconnecting)
        connection.send(v1("192.0.2.7"))
        self.assertRefused(connection, "proxy=203.0.113.5 refused: not in trusted_proxies")

    def test_untrustedIPv6(self) -> None:
        """
        The same for an IPv6 peer; ::1 is trusted by default.
        """
        self.assertRefused(self.connect("2001:db8::5"), "proxy=2001:db8::5 refused: not in trusted_proxies")
        self.assertEqual(self.connect("::1").send(v1("192.0.2.7")), BANNER)

    def test_noHeader(self) -> None:
        """
        A client speaking SMTP straight to the port is refused, with what
        it sent.
        """
        connection = self.connect()
        connection.send(b"EHLO client.example\r\n")
        self.assertRefused(
            connection, "proxy=127.0.0.1 refused: invalid PROXY header: no PROXY header: the stream starts "
            "b'EHLO client.exam'"
        )

    def test_garbage(self) -> None:
        """
        A malformed header is refused, saying what is wrong.
        """
        connection = self.connect()
        connection.send(b"PROXY TCP4 999.0.2.7 198.51.100.1 1 25\r\n")
        self.assertRefused(connection, "proxy=127.0.0.1 refused: invalid PROXY header: bad address b'999.0.2.7'")

    def test_timeout(self) -> None:
        """
        A proxy that sends no header within the command timeout is cut off.
        """
        self.useLimits(Limits(commandTimeout=30))
        connection = self.connect()
        self.clock.advance(29)
        self.assertFalse(connection.transport.disconnecting)
        self.clock.advance(1)
        self.assertRefused(connection, "proxy=127.0.0.1 refused: no PROXY header within 30s")

    def test_closedFirst(self) -> None:
        """
        A connection closed before its header is complete is logged once,
        and its timer stopped.
        """
        connection = self.connect()
        connection.send(b"PROXY TCP4 192.0.2.7")
        connection.close()
        self.assertEqual(self.proxyLog(), ["proxy=127.0.0.1 refused: closed before sending a PROXY header"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stopWaiting(self) -> None:
        """
        A stopping server closes the connections still waiting for their
        header, and leaves those with a session to the session registry.
        """
        waiting = self.connect()
        talking = self.connect()
        talking.send(v1("192.0.2.7"))
        self.factory.stopWaiting()
        self.assertRefused(waiting, "proxy=127.0.0.1 refused: server shutting down")
        self.assertFalse(talking.transport.disconnecting)

    def test_reconfigured(self) -> None:
        """
        A reload's trusted_proxies apply to new connections.
        """
        self.factory.configure(["203.0.113.0/24"], 300)
        self.assertEqual(self.connect("203.0.113.5").send(v1("192.0.2.7")), BANNER)
        self.assertTrue(self.connect().transport.disconnecting)


class SplitProxyTests(SynchronousTestCase):
    """
    The C{haproxy:} prefix of a listener's description.
    """

    def test_split(self) -> None:
        """
        The prefix is taken off, leaving the endpoint listened on.
        """
        self.assertEqual(splitProxy("haproxy:tcp:25:interface=127.0.0.1"), (True, "tcp:25:interface=127.0.0.1"))
        self.assertEqual(splitProxy("tcp:25"), (False, "tcp:25"))
