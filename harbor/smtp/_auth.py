# -*- test-case-name: harbor.test.test_tlsauth -*-
"""
AUTH's side of L{twisted.cred}: the credentials a SASL exchange gave are
checked through a portal whose realm gives the session its user's
delivery factory; failed logins are slowed down, counted and logged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from zope.interface import implementer

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.mail.interfaces import IMessageDeliveryFactory
from twisted.python.failure import Failure

from harbor.auth import ClientCredentials, FirstOf
from harbor.delivery import Deliverer, Session
from harbor.limits import FailureTracker
from harbor.smtp._events import Login


@implementer(IRealm)
class _SessionRealm:
    """
    Gives an authenticated session its delivery factory, which then stores
    its mail as the user's submissions.
    """

    def __init__(self, deliverer: Deliverer, session: Session) -> None:
        self._deliverer = deliverer
        self._session = session

    def requestAvatar(self, avatarId: Any, mind: object, *interfaces: Any) -> tuple[Any, Any, Callable[[], None]]:
        if IMessageDeliveryFactory not in interfaces:
            raise NotImplementedError("MailHarbor's realm only gives IMessageDeliveryFactory")
        name = avatarId.decode("utf-8", "replace") if isinstance(avatarId, bytes) else str(avatarId)
        self._session.user = name
        return IMessageDeliveryFactory, self._deliverer.factoryFor(self._session), lambda: None


class AuthTimeout(Exception):
    """
    No checker decided a login in time: it fails closed, as any error does.
    """


def login(
    deliverer: Deliverer,
    session: Session,
    checkers: Sequence[ICredentialsChecker],
    failures: FailureTracker,
    clock: IReactorTime,
    username: bytes,
    password: bytes,
    timeout: float,
) -> Deferred[Any]:
    """
    Check a user name and password, from the session's client, with each
    checker in turn (see L{FirstOf}).

    @return: a L{Deferred} that fires with the user's
        L{IMessageDeliveryFactory}, C{session.user} then being set; or that
        fails with L{UnauthorizedLogin}, counted against the client and
        only after the delay L{FailureTracker} gives it; or with whatever
        else went wrong: L{AuthTimeout} when no checker has decided
        within C{timeout} seconds (the throttling delay after a wrong
        password is not counted).
    """
    portal = Portal(_SessionRealm(deliverer, session), [FirstOf(checkers)])
    credentials = ClientCredentials(username, password, session.clientAddress)
    result = portal.login(credentials, None, IMessageDeliveryFactory)

    def tooLong(outcome: Any, timeout: float) -> Any:
        raise AuthTimeout(f"no decision on the login within {timeout:g} seconds")

    result.addTimeout(timeout, clock, onTimeoutCancel=tooLong)

    def slowDown(failure: Failure) -> Deferred[Any]:
        if not failure.check(UnauthorizedLogin):
            return failure  # type: ignore[return-value]
        delay = failures.failed(session.clientAddress)
        if delay <= 0:
            return failure  # type: ignore[return-value]
        return deferLater(clock, delay, lambda: failure)

    return result.addCallback(lambda outcome: outcome[1]).addErrback(slowDown)


class Authenticator:
    """
    The logins of one connection.  Log lines go to the protocol's logger;
    the password never reaches them.
    """

    def __init__(
        self,
        deliverer: Deliverer,
        checkers: Sequence[ICredentialsChecker],
        failures: FailureTracker,
        clock: IReactorTime,
        perSession: int,
        timeout: float,
    ) -> None:
        """
        @param failures: The failed logins of all connections, by client.
        @param perSession: How many failed logins end a connection.
        @param timeout: Seconds a login may take to be decided.
        """
        self._timeout = timeout
        self._deliverer = deliverer
        self._checkers = checkers
        self._failures = failures
        self._clock = clock
        self._perSession = perSession
        self._failed = 0

    @property
    def exhausted(self) -> bool:
        """
        Whether the connection has failed to log in too often.
        """
        return self._failed >= self._perSession

    def check(self, session: Session, attempt: Login, log: Logger) -> Deferred[Any]:
        """
        Check a SASL exchange's credentials.

        @return: a L{Deferred} that fires with the user's
            L{IMessageDeliveryFactory}, or with L{None} for a wrong user
            name or password (see L{failed}), or fails on any other error.
        """
        result = login(
            self._deliverer,
            session,
            self._checkers,
            self._failures,
            self._clock,
            attempt.username,
            attempt.password,
            self._timeout,
        )

        def succeeded(deliveryFactory: Any) -> Any:
            self._failures.succeeded(session.clientAddress)
            log.info(
                "client={client} auth={mechanism} user={user} result=ok",
                client=session.clientAddress,
                mechanism=attempt.mechanism.decode(),
                user=session.user,
            )
            return deliveryFactory

        def refused(failure: Failure) -> None:
            failure.trap(UnauthorizedLogin)
            self.failed(session, attempt.mechanism, attempt.username, log, delayed=True)

        return result.addCallbacks(succeeded, refused)

    def failed(
        self, session: Session, mechanism: bytes, username: bytes, log: Logger, delayed: bool = False
    ) -> None:
        """
        Count and log a failed login.

        @param delayed: Whether L{login} has already counted it against the
            client (and slowed it down).
        """
        if not delayed:
            self._failures.failed(session.clientAddress)
        self._failed += 1
        log.info(
            "client={client} auth={mechanism} user={user} result=failed",
            client=session.clientAddress,
            mechanism=mechanism.decode(),
            user=username.decode("utf-8", "replace"),
        )
