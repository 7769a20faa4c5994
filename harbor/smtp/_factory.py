# -*- test-case-name: harbor.test.test_esmtp -*-
"""
What the SMTP connections of a server share: the factory of each listener,
the settings of its sessions, and the registry of open connections that a
shutdown drains.
"""

from __future__ import annotations

from twisted.cred.checkers import ICredentialsChecker
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import (
    IAddress,
    IOpenSSLServerConnectionCreator,
    IReactorTime,
)
from twisted.internet.protocol import ServerFactory

from attrs import field, frozen

from harbor.config import Listener
from harbor.delivery import Deliverer
from harbor.limits import ConnectionCounter, FailureTracker, Limits, Throttle
from harbor.smtp._protocol import HarborESMTP


@frozen
class ServerSettings:
    """
    What the sessions of one listener need besides the deliverer.

    @ivar hostname: This server's name.
    @ivar limits: The limits on clients.
    @ivar listener: The listener's own rules (TLS required, submission).
    @ivar tls: The server's TLS, for STARTTLS and implicit TLS, or L{None}.
    @ivar checkers: The L{twisted.cred} checkers AUTH uses; none means no
        AUTH.
    @ivar allowPlaintextAuth: Whether AUTH is offered without TLS.
    @ivar throttle: How failed logins are slowed down.
    """

    hostname: str
    limits: Limits = field(factory=Limits)
    listener: Listener = field(factory=lambda: Listener(""))
    tls: IOpenSSLServerConnectionCreator | None = None
    checkers: tuple[ICredentialsChecker, ...] = field(default=(), converter=tuple)
    allowPlaintextAuth: bool = False
    throttle: Throttle = field(factory=Throttle)


class SessionRegistry:
    """
    The open SMTP connections of all listeners, so that a shutdown can let
    messages being received finish and tell everyone else to come back.
    """

    def __init__(self) -> None:
        self._sessions: set[HarborESMTP] = set()
        self._waiters: list[Deferred[None]] = []
        # Connections ever admitted, for the metrics.
        self.opened = 0

    def __len__(self) -> int:
        return len(self._sessions)

    def add(self, session: HarborESMTP) -> None:
        self._sessions.add(session)
        self.opened += 1

    def drain(self) -> None:
        """
        Ask every session to end once its transaction, if any, is over
        (L{HarborESMTP.drain}).
        """
        for session in list(self._sessions):
            session.drain()

    def whenEmpty(self) -> Deferred[None]:
        """
        A L{Deferred} that fires once no session is open.
        """
        if not self._sessions:
            return succeed(None)
        done: Deferred[None] = Deferred()
        self._waiters.append(done)
        return done

    def remove(self, session: HarborESMTP) -> None:
        self._sessions.discard(session)
        if not self._sessions:
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                waiter.callback(None)

    def shutdown(self, grace: float, clock: IReactorTime) -> Deferred[None]:
        """
        Ask every session to end: idle ones at once with 421 4.3.2, ones
        receiving or storing a message once it is stored and answered.
        Those still open after C{grace} seconds are cut off: a message
        still being received is discarded, and its sender will retry; one
        whose commit is already under way is stored all the same, without
        its 250, so its sender's retry makes a duplicate (the window of
        RFC 1047, which Postfix has too).

        @return: a L{Deferred} that fires when all are closed.
        """
        for session in list(self._sessions):
            session.shutdown()
        if not self._sessions:
            return succeed(None)
        done: Deferred[None] = Deferred()
        self._waiters.append(done)

        def cutOff() -> None:
            for session in list(self._sessions):
                session.transport.abortConnection()

        timer = clock.callLater(grace, cutOff)

        def cancelTimer(result: None) -> None:
            if timer.active():
                timer.cancel()

        return done.addCallback(cancelTimer)


class HarborSMTPFactory(ServerFactory):
    """
    Builds a L{HarborESMTP} for each connection to one listener, counting
    them against the connection limits, which all listeners share.

    @ivar deliverer: The deliverer new connections use; replaced when the
        configuration is reloaded, while open connections keep theirs.
    @ivar settings: Likewise, the listener's L{ServerSettings}.
    """

    noisy = False

    def __init__(
        self,
        deliverer: Deliverer,
        settings: ServerSettings,
        clock: IReactorTime | None = None,
        connections: ConnectionCounter | None = None,
        failures: FailureTracker | None = None,
        registry: SessionRegistry | None = None,
    ) -> None:
        if clock is None:
            from twisted.internet import reactor as clock
        assert clock is not None
        limits = settings.limits
        self.deliverer = deliverer
        self.settings = settings
        self._clock = clock
        self.registry = SessionRegistry() if registry is None else registry
        self.connections = connections if connections is not None else ConnectionCounter(
            limits.maxConnections,
            limits.maxConnectionsPerClient,
            limits.connectionLimitExceptions,
        )
        self.failures = failures if failures is not None else FailureTracker(settings.throttle, clock.seconds)

    def buildProtocol(self, addr: IAddress | None) -> HarborESMTP:
        protocol = HarborESMTP(
            self.deliverer, self.settings, self.connections, self.failures, self._clock, self.registry
        )
        protocol.factory = self
        return protocol
