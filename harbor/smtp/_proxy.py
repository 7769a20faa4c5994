# -*- test-case-name: harbor.test.test_proxy -*-
"""
C{haproxy:} listeners: the PROXY protocol header, read before the SMTP
session starts, from trusted proxies only.

Twisted's own C{haproxy:} endpoint starts the wrapped protocol as soon as
the TCP connection is up, so an SMTP server built on it records the
balancer's address, greets before the header has come, and believes a
header from anyone.  Here the SMTP protocol is connected only once the
header has been read: its C{connectionMade} sees the client's real
address from C{getPeer()}, and so do the log, the C{Received:} header,
the filters, the connection limits (and their loopback exemption), the
DNS blocklist, AUTH throttling, the policy hook and the pregreet test,
which all take the address from there.

A connection is closed, with one log line naming the peer and why, when
the peer is not in C{trusted_proxies}, when its header is not a valid one,
when none has come within the command timeout, or when it closes first.
Nothing the connection sent is acted on.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any, cast

from zope.interface import directlyProvides, implementer, providedBy

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IHandshakeListener,
    IProtocol,
    IReactorTime,
    ITransport,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure

from harbor._logging import PublishedLogger
from harbor.address import inNetworks
from harbor.proxyheader import InvalidProxyHeader, ProxyHeader, ProxyHeaderParser

# Where the PROXY header is put first in a listener's description.
PROXY_PREFIX = "haproxy:"


def splitProxy(description: str) -> tuple[bool, str]:
    """
    Whether a listener's endpoint description asks for the PROXY protocol
    (C{haproxy:tcp:25}), and the endpoint it is read on (C{tcp:25}), which
    is listened on, given its backlog and adopted by workers as any other.
    """
    if description.startswith(PROXY_PREFIX):
        return True, description[len(PROXY_PREFIX) :]
    return False, description


def _address(host: str, port: int) -> IAddress:
    if ":" in host:
        return IPv6Address("TCP", host, port)
    return IPv4Address("TCP", host, port)


@implementer(IHandshakeListener)
class ProxyHeaderReceiver(ProtocolWrapper):
    """
    One connection to a C{haproxy:} listener: reads the PROXY header, then
    runs the wrapped protocol with the client's address as the peer.

    @ivar header: The header once read, else L{None}.
    """

    factory: ProxyHeaderFactory
    # The TCP (or UNIX) transport, which the wrapped protocol reaches
    # through this one.
    transport: Any
    _log = PublishedLogger("harbor.smtp.proxy")

    def __init__(self, factory: ProxyHeaderFactory, wrappedProtocol: IProtocol) -> None:
        super().__init__(factory, wrappedProtocol)  # type: ignore[arg-type]
        self._parser = ProxyHeaderParser()
        self.header: ProxyHeader | None = None
        self._peer: IAddress | None = None
        self._host: IAddress | None = None
        self._deadline: IDelayedCall | None = None
        # Set once the connection is refused or the wrapped protocol runs:
        # whichever comes first decides what happens to it, once.
        self._decided = False

    def makeConnection(self, transport: Any) -> None:
        """
        The TCP connection is up: refuse an untrusted peer at once, else
        wait for its header (the wrapped protocol is not connected yet, so
        no banner is sent).
        """
        directlyProvides(self, providedBy(transport))
        Protocol.makeConnection(self, transport)
        self.factory.registerProtocol(self)
        peer = self._proxyAddress()
        if peer is not None and not inNetworks(peer, self.factory.trusted):
            self._refuse("not in trusted_proxies")
            return
        timeout = self.factory.timeout
        self._deadline = self.factory.clock.callLater(
            timeout, self._refuse, f"no PROXY header within {timeout:g}s"
        )

    def _proxyAddress(self) -> str | None:
        """
        The balancer's own address, or L{None} on a UNIX socket (whose file
        permissions say who may connect).
        """
        host = getattr(self.transport.getPeer(), "host", None)
        return None if host is None else str(host)

    def abortWaiting(self) -> None:
        """
        The server is stopping: a connection still waiting for its header
        is closed now (one with a session is the registry's to end).
        """
        if self.header is None:
            self._refuse("server shutting down")

    def _refuse(self, reason: str) -> None:
        if self._decided:
            return
        self._decided = True
        self._cancelDeadline()
        self._log.info(
            "proxy={proxy} refused: {reason}",
            proxy=self._proxyAddress() or "unix",
            reason=reason,
        )
        self.transport.abortConnection()

    def _cancelDeadline(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def dataReceived(self, data: bytes) -> None:
        if self.header is not None:
            self.wrappedProtocol.dataReceived(data)
            return
        if self._decided:
            return
        try:
            parsed = self._parser.feed(data)
        except InvalidProxyHeader as e:
            self._refuse(f"invalid PROXY header: {e}")
            return
        if parsed is None:
            return
        header, rest = parsed
        self._decided = True
        self._cancelDeadline()
        self.header = header
        if header.source is not None:
            self._peer = _address(*header.source)
        if header.destination is not None:
            self._host = _address(*header.destination)
        self.wrappedProtocol.makeConnection(cast(ITransport, self))
        if rest and self.connected and not self.disconnecting:
            self.wrappedProtocol.dataReceived(rest)

    def getPeer(self) -> IAddress:
        """
        The client's address from the header, or the proxy's own for a
        header without one (a health check) and before the header.
        """
        return self._peer or self.transport.getPeer()

    def getHost(self) -> IAddress:
        return self._host or self.transport.getHost()

    def handshakeCompleted(self) -> None:
        """
        Pass on the end of a TLS handshake (STARTTLS wraps this protocol).
        """
        if IHandshakeListener.providedBy(self.wrappedProtocol):
            self.wrappedProtocol.handshakeCompleted()

    def connectionLost(self, reason: Failure | None = None) -> None:
        if self.header is not None:
            super().connectionLost(reason)
            return
        self._refuse("closed before sending a PROXY header")
        self.factory.unregisterProtocol(self)
        self.wrappedProtocol = None  # type: ignore[assignment]


class ProxyHeaderFactory(WrappingFactory):
    """
    Wraps a listener's factory so that each connection starts with a PROXY
    header from a trusted proxy.

    @ivar trusted: The networks allowed to send headers
        (C{trusted_proxies}); replaced on a reload.
    @ivar timeout: Seconds a proxy has to send its header; likewise.
    @ivar clock: Times the header.
    """

    protocol = ProxyHeaderReceiver
    noisy = False

    def __init__(
        self,
        wrappedFactory: Factory,
        trusted: Iterable[str],
        timeout: float,
        clock: IReactorTime,
    ) -> None:
        super().__init__(wrappedFactory)
        self.clock = clock
        self.configure(trusted, timeout)

    def configure(self, trusted: Iterable[str], timeout: float) -> None:
        """
        Set which proxies are trusted and how long their header may take,
        for connections from now on.
        """
        self.trusted = [ipaddress.ip_network(network) for network in trusted]
        self.timeout = timeout

    def stopWaiting(self) -> None:
        """
        Close the connections still waiting for their header: the server
        is stopping.
        """
        for protocol in list(self.protocols):
            protocol.abortWaiting()
