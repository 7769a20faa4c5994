"""
Tests for L{harbor.health}: the readiness states and the C{/healthz} and
C{/readyz} resources, over a L{StringTransport}.
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import Site

from harbor.health import QuietSite, Readiness, State, operationsSite


def get(site: Site, path: bytes, method: bytes = b"GET") -> tuple[int, dict[bytes, bytes], bytes]:
    """
    Ask C{site} for C{path} over a L{StringTransport}, as a client would.

    @return: the status code, the headers (lower-case names) and the body.
    """
    protocol = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
    protocol.makeConnection(transport)
    protocol.dataReceived(method + b" " + path + b" HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    head, _, body = transport.value().partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b": ")
        headers[name.lower()] = value
    protocol.connectionLost(None)
    return int(lines[0].split()[1]), headers, body


class ReadinessTests(SynchronousTestCase):
    """
    L{Readiness}: starting, ready, draining, stopping.
    """

    def test_lifeCycle(self) -> None:
        """
        Not ready before listening; ready once listening; a drain or a stop
        ends readiness for good.
        """
        readiness = Readiness()
        self.assertEqual((readiness.state, readiness.ready), (State.STARTING, False))
        readiness.listening()
        self.assertTrue(readiness.ready)
        readiness.draining()
        self.assertEqual((readiness.state, readiness.ready), (State.DRAINING, False))
        readiness.listening()
        self.assertEqual(readiness.state, State.DRAINING)
        readiness.stopping()
        readiness.draining()
        self.assertEqual(readiness.state, State.STOPPING)


class HealthResourceTests(SynchronousTestCase):
    """
    C{/healthz} and C{/readyz} on the metrics listener's site.
    """

    def setUp(self) -> None:
        self.readiness = Readiness()
        self.site = operationsSite(self.readiness)

    def test_healthz(self) -> None:
        """
        C{/healthz} is 200 whatever the readiness, as plain text, not cached.
        """
        for change in (lambda: None, self.readiness.listening, self.readiness.draining):
            change()
            status, headers, body = get(self.site, b"/healthz")
            self.assertEqual((status, body), (200, b"ok\n"))
            self.assertEqual(headers[b"cache-control"], b"no-store")

    def test_readyz(self) -> None:
        """
        C{/readyz} is 503 before listening, 200 while ready, 503 while
        draining and stopping; the body names the state.
        """
        self.assertEqual(get(self.site, b"/readyz")[::2], (503, b"starting\n"))
        self.readiness.listening()
        self.assertEqual(get(self.site, b"/readyz")[::2], (200, b"ready\n"))
        self.assertEqual(get(self.site, b"/readyz", b"HEAD")[0], 200)
        self.readiness.draining()
        self.assertEqual(get(self.site, b"/readyz")[::2], (503, b"draining\n"))
        self.readiness.stopping()
        self.assertEqual(get(self.site, b"/readyz")[::2], (503, b"stopping\n"))

    def test_metricsMountedOnlyIfGiven(self) -> None:
        """
        Without a metrics resource, C{/metrics} is not found; with one, it
        is served.
        """
        self.assertEqual(get(self.site, b"/metrics")[0], 404)
        leaf = Resource()
        leaf.isLeaf = True
        leaf.render_GET = lambda request: b"m"  # type: ignore[attr-defined]
        self.assertEqual(get(operationsSite(self.readiness, leaf), b"/metrics")[::2], (200, b"m"))

    def test_requestsNotLogged(self) -> None:
        """
        The site logs no request: health checks would drown the mail log.
        """
        self.assertIsInstance(self.site, QuietSite)
        written: list[bytes] = []
        self.site._logFile = type("F", (), {"write": lambda self, line: written.append(line)})()
        get(self.site, b"/healthz")
        self.assertEqual(written, [])
        self.assertFalse(self.site.noisy)
