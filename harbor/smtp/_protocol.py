# -*- test-case-name: harbor.test.test_smtp -*-
"""
The SMTP protocol: the Twisted side of an SMTP connection.

L{harbor.smtp._session.SMTPSession} holds the conversation; this protocol
feeds it the bytes the transport delivers, writes the replies, and answers
its events with Twisted's mail interfaces: an L{IMessageDeliveryFactory}
gives one L{IMessageDelivery} per transaction, whose C{validateFrom} and
C{validateTo} decide the envelope and whose L{IMessage} factories take the
message.  Around that it keeps what needs a reactor or a transport:

 - admission (connection limits) and the connect and HELO filters;
 - timeouts, and the client's clock stopped while MailHarbor works;
 - flow control: replies are produced for the transport (L{IPushProducer})
   and input stops being read when the client runs too far ahead;
 - waiting for L{Deferred} outcomes, so replies stay in order;
 - STARTTLS on the transport, and AUTH through L{twisted.cred};
 - a local failure (full disk, permissions) is a 4xx temporary failure,
   and the 250 reply to a message comes only once it is fsynced, naming the
   stored id;
 - one log line per transaction, and one per connection.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from zope.interface import implementer

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred, succeed
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IHandshakeListener,
    IOpenSSLServerConnectionCreator,
    IPushProducer,
    IReactorTime,
    ISSLTransport,
    ITLSTransport,
)
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.mail.interfaces import IMessageDeliveryFactory
from twisted.mail.smtp import IMessage, SMTPServerError, User
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure

from attrs import evolve, field, frozen
from OpenSSL import SSL

from harbor.address import Path
from harbor.config import Listener
from harbor.delivery import Deliverer, IMessageStream, PathAddress, Session
from harbor.dnsbl import SharedResult
from harbor.filters import Filter, applyFirst
from harbor.limits import ConnectionCounter, FailureTracker, Limits, Throttle
from harbor.maildir import StorageError, StoredMessage
from harbor.smtp._events import (
    Answer,
    BodyReceived,
    BodyRefused,
    ChunkEnded,
    ChunkStarted,
    Greeted,
    Login,
    MailFrom,
    MalformedLogin,
    MessageEnded,
    Quit,
    RcptTo,
    RecipientRefused,
    Reset,
    StartData,
    StartTLSRequested,
    TooManyErrors,
    Verify,
    Wait,
)
from harbor.smtp._replies import (
    AUTH_FAILED,
    AUTH_OK,
    AUTH_UNAVAILABLE,
    BYE,
    CANNOT_VERIFY,
    LOCAL_ERROR,
    OK,
    PROCESSING_ERROR,
    RECIPIENT_OK,
    SENDER_OK,
    START_DATA,
    TALKED_TOO_SOON,
    TLS_READY,
    Reply,
    errorReply,
    storageReply,
)
from harbor.smtp._session import SMTPSession
from harbor.tls import describeConnection

# Input a client may send ahead of our replies before we stop reading.
MAX_BUFFERED_INPUT = 256 * 1024


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
    limits: Limits = Limits()
    listener: Listener = Listener("")
    tls: IOpenSSLServerConnectionCreator | None = None
    checkers: tuple[ICredentialsChecker, ...] = field(default=(), converter=tuple)
    allowPlaintextAuth: bool = False
    throttle: Throttle = Throttle()


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


class _Transaction:
    """
    What one MAIL transaction has gathered, for its replies and its log line.

    @ivar origin: The sender, as given to the delivery and its users.
    @ivar started: When MAIL was accepted.
    @ivar messages: The message streams, once DATA or the first BDAT has
        opened them.
    @ivar failure: Why the message being received will be refused, the
        L{Reply} it will get; the rest of it is read and discarded.
    """

    def __init__(self, delivery: Any, origin: PathAddress, started: float = 0.0) -> None:
        self.delivery = delivery
        self.origin = origin
        self.started = started
        self.recipients: list[tuple[User, Callable[[], IMessage]]] = []
        self.rejected: list[str] = []
        self.messages: list[IMessageStream] = []
        self.failure: Reply | None = None

    @property
    def sender(self) -> Path:
        """
        The sender's parsed path.
        """
        return self.origin.path


@implementer(IMessageStream)
class _LineMessage:
    """
    Adapts a plain line-by-line L{IMessage} to L{IMessageStream}.
    """

    def __init__(self, message: IMessage) -> None:
        self._message = message
        self._partial = b""

    def dataReceived(self, data: bytes) -> None:
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            self._message.lineReceived(line)

    def lineReceived(self, line: bytes) -> None:
        self._message.lineReceived(line)

    def eomReceived(self) -> Deferred[Any]:
        if self._partial:
            self._message.lineReceived(self._partial)
            self._partial = b""
        return self._message.eomReceived()  # type: ignore[no-any-return]

    def connectionLost(self) -> None:
        self._message.connectionLost()


class SessionRegistry:
    """
    The open SMTP connections of all listeners, so that a shutdown can let
    messages being received finish and tell everyone else to come back.
    """

    def __init__(self) -> None:
        self._sessions: set[HarborESMTP] = set()
        self._waiters: list[Deferred[None]] = []

    def __len__(self) -> int:
        return len(self._sessions)

    def add(self, session: HarborESMTP) -> None:
        self._sessions.add(session)

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


class _PublishedLogger(Logger):
    """
    A class's logger whose namespace is fixed rather than the defining
    module's: the protocol's events keep the C{harbor.smtp.HarborESMTP}
    namespace that operators' log filters know, wherever in the package the
    class is defined.
    """

    def __get__(self, instance: object, owner: type | None = None) -> Logger:
        return Logger(self.namespace, owner if instance is None else instance, observer=self.observer)


@implementer(IHandshakeListener, IPushProducer)
class HarborESMTP(TimeoutMixin, Protocol):
    """
    One SMTP connection.

    @ivar session: What is known of the client, shared with deliveries.
    @ivar deliveryFactory: Gives the delivery of each transaction; replaced
        by the user's once the client authenticates.
    @cvar timeout: The command timeout of the default L{Limits}; each
        listener's own limits set the one in effect.
    """

    _log: Logger = _PublishedLogger("harbor.smtp.HarborESMTP")
    timeout = Limits().commandTimeout
    # A TCP or TLS transport: ITCPTransport, ITLSTransport, IProducer and,
    # once TLS is up, ISSLTransport.
    transport: Any

    # The method that handles each event, by name so that a test can
    # replace one on an instance.  Commands the server acts on are
    # smtp_VERB, as in Twisted's SMTP.
    _handlers: ClassVar[dict[type, str]] = {
        Answer: "_answerDecided",
        TooManyErrors: "_tooManyErrors",
        Greeted: "smtp_HELO",
        MailFrom: "smtp_MAIL",
        RcptTo: "smtp_RCPT",
        RecipientRefused: "_recipientRefused",
        StartData: "smtp_DATA",
        ChunkStarted: "smtp_BDAT",
        BodyReceived: "_bodyReceived",
        BodyRefused: "_bodyRefused",
        MessageEnded: "_messageEnded",
        ChunkEnded: "_chunkEnded",
        StartTLSRequested: "smtp_STARTTLS",
        Login: "smtp_AUTH",
        MalformedLogin: "_malformedLogin",
        Verify: "smtp_VRFY",
        Reset: "smtp_RSET",
        Quit: "smtp_QUIT",
    }

    def __init__(
        self,
        deliverer: Deliverer,
        settings: ServerSettings,
        connections: ConnectionCounter,
        failures: FailureTracker,
        clock: IReactorTime,
        registry: SessionRegistry | None = None,
    ) -> None:
        self._registry = SessionRegistry() if registry is None else registry
        self._shuttingDown = False
        self._storing = False
        self._transactions = 0
        self._started = clock.seconds()
        self._hostname = settings.hostname
        self._settings = settings
        self._deliverer = deliverer
        self._limits = settings.limits
        self._connections = connections
        self._failures = failures
        self._clock = clock
        self._smtp = SMTPSession(
            settings.hostname,
            settings.limits,
            requireTLS=settings.listener.requireTLS,
            submission=settings.listener.submission,
            authentication=bool(settings.checkers),
            plaintextAuthentication=settings.allowPlaintextAuth,
        )
        self._authFailures = 0
        self._tx: _Transaction | None = None
        self._greeting: Any = None
        self._processing = False
        self._inputBacklogged = False
        self._outputBlocked = False
        self._reading = True
        self._closed = False
        self._producing = False
        self._admitted = False
        self.session = Session("unknown")
        self.deliveryFactory: Any = None
        # The HELO argument and the client's address, as
        # IMessageDelivery.validateFrom and receivedHeader take them.
        self._clientHelo: tuple[bytes | None, bytes] = (None, b"")
        # What the server found out about the client's address, for a
        # session restarted by STARTTLS; taken only where STARTTLS can come.
        self._connectionFacts: Session | None = None

    def callLater(self, period: float, func: Callable[[], object]) -> IDelayedCall:
        """
        Timeouts run on the injected clock (L{TimeoutMixin} would use the
        global reactor).
        """
        return self._clock.callLater(period, func)

    # Connection life cycle

    def connectionMade(self) -> None:
        peer = self.transport.getPeer()
        self.session = Session(str(getattr(peer, "host", peer)))
        self._smtp.tlsAvailable = self._settings.tls is not None and ITLSTransport.providedBy(self.transport)
        self._smtp.tlsActive = self._tlsActive()
        refusal = self._connections.admit(self.session.clientAddress)
        if refusal is not None:
            self._log.info(
                "client={client} refused: {reason}",
                client=self.session.clientAddress,
                reason=refusal,
            )
            self._send(Reply(421, "4.7.0", f"{self._hostname} Error: {refusal}"))
            self._close()
            return
        self._admitted = True
        self._startSession(self.session)
        self._registry.add(self)
        # Our replies are produced for the transport: when the client stops
        # reading them, the transport pauses us and we stop reading commands.
        self.transport.registerProducer(self, True)
        self._producing = True
        self.setTimeout(self._limits.commandTimeout)
        if self._connectFilter():
            return
        blocklists = self._deliverer.blocklists
        if blocklists is not None and not self.session.trusted:
            self.session.blocklist = SharedResult(blocklists.lookup(self.session.clientAddress))
        if self._smtp.canStartTLS:
            # What the server found out about the client's address (not
            # what the client said) outlives STARTTLS.
            self._connectionFacts = evolve(self.session, tags=list(self.session.tags))
        wait = self._limits.pregreetWait
        if wait > 0 and not self.session.trusted:
            # Postfix postscreen's pregreet test: a real MTA waits for the
            # banner, many spam bots do not.
            self._greeting = self.callLater(wait, self._greet)
        else:
            self._greet()

    def _greet(self) -> None:
        self._greeting = None
        self.transport.write(self._smtp.greet(Reply(220, None, f"{self._hostname} ESMTP MailHarbor")))

    def _filter(self, stage: str) -> Filter | None:
        """
        The first connect or HELO filter that refuses the client, if any.
        """
        matched = applyFirst(
            self._deliverer.filters, stage, self.session, self.session.clientAddress, self.session.helo
        )
        if matched is None or matched.action not in ("reject", "tempfail"):
            return None
        return matched

    def _connectFilter(self) -> bool:
        """
        Apply the connect filters.

        @return: whether one refused the connection.
        """
        matched = self._filter("connect")
        if matched is None:
            return False
        if matched.action == "tempfail":
            self._send(Reply(421, matched.enhanced, f"{self._hostname} {matched.text}"))
            self._close()
        else:
            # RFC 5321 section 3.1: a 554 greeting (the one refusal code a
            # greeting may carry), then 503 to everything but QUIT.
            self.transport.write(self._smtp.greet(Reply(554, matched.enhanced, f"{self._hostname} {matched.text}")))
        return True

    def _startSession(self, session: Session) -> None:
        """
        Start C{session}: at connection, one that knows nothing but the
        client's address; after STARTTLS, one that has forgotten everything
        the client said (RFC 3207 section 4.2) but keeps what the connect
        filters and the blocklist lookup found about its address.
        """
        self.session = session
        self.deliveryFactory = self._deliverer.factoryFor(self.session)
        self._clientHelo = (None, self.session.clientAddress.encode("ascii", "replace"))

    def _tlsActive(self) -> bool:
        return self.session.tls is not None or ISSLTransport.providedBy(self.transport)

    def handshakeCompleted(self) -> None:
        """
        TLS is up (after STARTTLS, or at once on an implicit TLS listener):
        remember its protocol and cipher for the log and Received: header.
        """
        self.session.tls = describeConnection(self.transport.getHandle()) or "TLS"
        self._smtp.tlsActive = True
        self._log.info(
            "client={client} tls={tls} TLS established",
            client=self.session.clientAddress,
            tls=self.session.tls,
        )

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._closed = True
        self._smtp.close()
        self.setTimeout(None)
        if reason is not None and reason.check(SSL.Error):
            self._log.info(
                "client={client} TLS failed: {error}",
                client=self.session.clientAddress,
                error=reason.getErrorMessage(),
            )
        if not self._admitted:
            return
        self._admitted = False
        self._connections.release(self.session.clientAddress)
        self._registry.remove(self)
        if self._smtp.receivingBody:
            self._endTransaction("disconnected while receiving the message")
        else:
            self._endTransaction("disconnected")
        _logRendered(
            self._log,
            _SESSION_LINE,
            client=self.session.clientAddress,
            helo=self.session.helo or "-",
            tls=self.session.tls or "-",
            user=self.session.user or "-",
            count=self._transactions,
            errors=self._smtp.errors,
            duration=self._clock.seconds() - self._started,
        )

    def shutdown(self) -> None:
        """
        The server is stopping: finish the message being received, if any,
        then say goodbye with 421 4.3.2 (RFC 3463: system not accepting
        messages), so the client retries later.
        """
        self._shuttingDown = True
        self._finishShutdown()

    def _finishShutdown(self) -> None:
        if not self._shuttingDown or self._closed:
            return
        if self._smtp.receivingBody or self._storing:
            return
        self._endTransaction("abandoned: server shutting down")
        self._send(Reply(421, "4.3.2", f"{self._hostname} Service shutting down, try again later"))
        self._close()

    def timeoutConnection(self) -> None:
        self._send(Reply(421, "4.4.2", f"{self._hostname} Error: timeout exceeded"))
        self._close()

    def _close(self) -> None:
        self._closed = True
        self._smtp.close()
        # A transport with a producer registered would wait for it to be
        # unregistered before closing.
        if self._producing:
            self._producing = False
            self.transport.unregisterProducer()
        self.transport.loseConnection()

    # Input

    def dataReceived(self, data: bytes) -> None:
        if self._closed:
            return
        if self._greeting is not None:
            self._greeting.cancel()
            self._greeting = None
            self._log.info("client={client} talked before the greeting", client=self.session.clientAddress)
            self._send(TALKED_TOO_SOON)
            self._close()
            return
        self.resetTimeout()
        self._smtp.receiveData(data)
        self._processInput()

    def _processInput(self) -> None:
        """
        Act on the session's events until it needs more input or waits for
        a reply, or the client stops reading replies.  Message data that
        came with nothing buffered before it is taken all the same: it
        only goes to storage.
        """
        if self._processing:
            return
        self._processing = True
        try:
            while not self._closed and (not self._outputBlocked or self._smtp.bodyInHand):
                try:
                    event = self._smtp.nextEvent()
                    if isinstance(event, Wait):
                        break
                    getattr(self, self._handlers[type(event)])(event)
                except Exception:  # noqa: BLE001 -- a bug must not leave the client without a reply
                    self._log.failure("Error handling {verb} command", verb=self._smtp.verb)
                    self._reply(PROCESSING_ERROR)
        finally:
            self._processing = False
        self._throttle()

    def _throttle(self) -> None:
        """
        Stop reading from a client that sends far ahead of our replies, so
        the buffer stays bounded; read again when it drains.
        """
        buffered = self._smtp.buffered
        if buffered > MAX_BUFFERED_INPUT:
            self._inputBacklogged = True
        elif buffered <= MAX_BUFFERED_INPUT // 2:
            self._inputBacklogged = False
        self._updateReading()

    def _updateReading(self) -> None:
        if self._closed:
            return
        reading = not self._inputBacklogged
        if reading != self._reading:
            self._reading = reading
            if reading:
                self.transport.resumeProducing()
            else:
                self.transport.pauseProducing()

    # IPushProducer, for the transport our replies go to

    def pauseProducing(self) -> None:
        """
        The client is not reading our replies: stop answering until it does.
        What it sends meanwhile is buffered, and reading stops once that
        buffer is full (L{_throttle}).  Reading itself is not stopped here:
        a TLS transport pauses us until its handshake is done, and it must
        still read the handshake.
        """
        self._outputBlocked = True

    def resumeProducing(self) -> None:
        """
        The client has read our replies: carry on.
        """
        self._outputBlocked = False
        self._processInput()

    def stopProducing(self) -> None:
        """
        The connection is going away; L{connectionLost} cleans up.
        """

    def _waitFor(
        self,
        result: Deferred[Any],
        onSuccess: Callable[[Any], None],
        onFailure: Callable[[Failure], None],
    ) -> None:
        """
        Hold the client's timeout until C{result} fires and its reply is
        sent; the session reads nothing more until then.

        A result that is already there (the usual MAIL and RCPT) is answered
        at once, with no timeout to cancel and set again.
        """
        outcomes: list[object] = []
        result.addBoth(outcomes.append)
        if outcomes:
            self._settle(outcomes[0], onSuccess, onFailure)
            return
        self.setTimeout(None)

        def resume(ignored: None) -> None:
            if not self._closed:
                self.setTimeout(self._limits.commandTimeout)
            self._settle(outcomes[0], onSuccess, onFailure)
            self._processInput()

        result.addCallback(resume).addErrback(
            lambda f: self._log.failure("Unexpected error reading the next command", f)
        )

    def _settle(
        self,
        outcome: object,
        onSuccess: Callable[[Any], None],
        onFailure: Callable[[Failure], None],
    ) -> None:
        try:
            if isinstance(outcome, Failure):
                onFailure(outcome)
            else:
                onSuccess(outcome)
        except Exception:  # noqa: BLE001 -- logged; the connection carries on
            self._log.failure("Unexpected error sending a reply")
        finally:
            self._finishShutdown()

    # Replies

    def _send(self, reply: Reply) -> None:
        """
        Write a reply that is not one of the client's errors: a greeting,
        a 421, a SASL challenge.
        """
        self.transport.write(self._smtp.send(reply, counted=False))

    def _reply(self, reply: Reply, counted: bool = True) -> None:
        """
        Send a reply to a command, log it if a refusal, and hang up if the
        session says the client has made too many errors.

        @param counted: Whether a 4xx or 5xx is one of the client's errors.
        """
        self.transport.write(self._smtp.send(reply, counted))
        if reply.code >= 400:
            self._log.info(
                "client={client} {verb} refused: {code} {enhanced} {reason}",
                client=self.session.clientAddress,
                verb=self._smtp.verb,
                code=reply.code,
                enhanced=reply.enhanced or "",
                reason=reply.text,
            )
        if self._smtp.errorLimitReached and not self._closed:
            self._endTransaction("too many errors")
            self._close()

    def _failureReply(self, failure: Failure) -> Reply:
        """
        The answer to a message that could not be stored, logged: a local
        storage problem is temporary (452 for a full disk, otherwise 451)
        so the sender retries; an SMTP error keeps its own code; anything
        else is a bug, logged, and also answered 451 so no mail is lost.
        """
        error = failure.value
        if isinstance(error, StorageError):
            self._log.error("Storage failure: {error}", error=failure.getErrorMessage())
            return storageReply(error.noSpace)
        if isinstance(error, SMTPServerError):
            return errorReply(error.code, error.resp, "5.3.0")
        self._log.failure("Delivery failed", failure)
        return LOCAL_ERROR

    def _refusalReply(self, failure: Failure, default: str, what: str) -> Reply:
        """
        The answer to a sender or recipient the delivery did not accept:
        its SMTP error's own code and text, or, for anything else (a bug,
        logged as C{what}), 451.
        """
        error = failure.value
        if isinstance(error, SMTPServerError):
            return errorReply(error.code, error.resp, default)
        self._log.failure(what, failure)
        return PROCESSING_ERROR

    def _replyToFailure(self, failure: Failure) -> None:
        self._reply(self._failureReply(failure))

    def _answerDecided(self, event: Answer) -> None:
        self._reply(event.reply, event.counted)

    def _tooManyErrors(self, event: TooManyErrors) -> None:
        self._send(event.reply)
        self._endTransaction("too many errors")
        self._close()

    # Greeting and simple commands

    def smtp_HELO(self, event: Greeted) -> None:
        """
        HELO or EHLO: the HELO filters may refuse the name.
        """
        previous = (self.session.helo, self.session.esmtp)
        # The filter looks at this name; its refusal answers this command.
        self.session.helo = event.name.decode("utf-8", "replace")
        self.session.esmtp = event.esmtp
        matched = self._filter("helo")
        if matched is not None:
            self._reply(Reply(matched.code, matched.enhanced, matched.text))
            # RFC 5321 section 4.1.4: a refused greeting leaves the session
            # as it was.
            self.session.helo, self.session.esmtp = previous
            return
        self._endTransaction("abandoned: new greeting")
        self._clientHelo = (event.name, self.session.clientAddress.encode("ascii", "replace"))
        self._reply(self._smtp.helloReply(event.esmtp))

    def smtp_RSET(self, event: Reset) -> None:
        self._endTransaction("abandoned: reset")
        self._reply(OK)

    def smtp_VRFY(self, event: Verify) -> None:
        """
        Whether a mailbox exists is not told (RFC 5321 section 3.5.3).
        """
        self._reply(CANNOT_VERIFY)

    def smtp_QUIT(self, event: Quit) -> None:
        self._endTransaction("abandoned: quit")
        self._send(BYE)
        self._close()

    # TLS and authentication

    def smtp_STARTTLS(self, event: StartTLSRequested) -> None:
        if event.discarded:
            self._log.warn(
                "client={client} sent {count} bytes after STARTTLS; discarded",
                client=self.session.clientAddress,
                count=event.discarded,
            )
        self._send(TLS_READY)
        self._endTransaction("abandoned: STARTTLS")
        # Taken at connection, since STARTTLS could come; it comes once.
        assert self._connectionFacts is not None
        self._startSession(self._connectionFacts)
        self.transport.startTLS(self._settings.tls)
        self._smtp.tlsActive = self._tlsActive()

    def smtp_AUTH(self, event: Login) -> None:
        """
        The SASL exchange is complete: check the password.
        """
        mechanism, username = event.mechanism, event.username
        portal = Portal(_SessionRealm(self._deliverer, self.session), self._settings.checkers)
        result = portal.login(UsernamePassword(username, event.password), None, IMessageDeliveryFactory)

        def succeeded(outcome: tuple[Any, Any, Any]) -> None:
            self.deliveryFactory = outcome[1]
            self._failures.succeeded(self.session.clientAddress)
            self._log.info(
                "client={client} auth={mechanism} user={user} result=ok",
                client=self.session.clientAddress,
                mechanism=mechanism.decode(),
                user=self.session.user,
            )
            self._reply(AUTH_OK)

        def failed(failure: Failure) -> None:
            if failure.check(UnauthorizedLogin):
                self._loginFailed(mechanism, username, delayed=True)
            else:
                self._log.failure("Authentication error", failure)
                self._reply(AUTH_UNAVAILABLE)

        def slowDown(failure: Failure) -> Deferred[Any]:
            if not failure.check(UnauthorizedLogin):
                return failure  # type: ignore[return-value]
            delay = self._failures.failed(self.session.clientAddress)
            if delay <= 0:
                return failure  # type: ignore[return-value]
            return deferLater(self._clock, delay, lambda: failure)

        self._waitFor(result.addErrback(slowDown), succeeded, failed)

    def _malformedLogin(self, event: MalformedLogin) -> None:
        self._loginFailed(event.mechanism, b"")

    def _loginFailed(self, mechanism: bytes, username: bytes, delayed: bool = False) -> None:
        """
        Answer a failed login; hang up on a client that keeps failing.  The
        password never reaches the log.
        """
        if not delayed:
            self._failures.failed(self.session.clientAddress)
        self._authFailures += 1
        self._log.info(
            "client={client} auth={mechanism} user={user} result=failed",
            client=self.session.clientAddress,
            mechanism=mechanism.decode(),
            user=username.decode("utf-8", "replace"),
        )
        self._reply(AUTH_FAILED)
        if self._authFailures >= self._settings.throttle.perSession and not self._closed:
            self._send(Reply(421, "4.7.0", f"{self._hostname} Error: too many failed logins"))
            self._close()

    # The envelope

    def smtp_MAIL(self, event: MailFrom) -> None:
        self.session.utf8 = event.utf8
        delivery = self.deliveryFactory.getMessageDelivery()
        origin = PathAddress(event.address, event.path)

        def accepted(ignored: object) -> None:
            self._tx = _Transaction(delivery, origin, self._clock.seconds())
            self._transactions += 1
            self._reply(SENDER_OK)

        def refused(failure: Failure) -> None:
            self._reply(self._refusalReply(failure, "5.7.1", "Sender validation failed"))

        self._waitFor(maybeDeferred(delivery.validateFrom, self._clientHelo, origin), accepted, refused)

    def smtp_RCPT(self, event: RcptTo) -> None:
        tx = self._tx
        assert tx is not None
        user = User(PathAddress(event.address, event.path), self._clientHelo, self, tx.origin)

        def accepted(messageFactory: Callable[[], IMessage]) -> None:
            tx.recipients.append((user, messageFactory))
            self._reply(RECIPIENT_OK)

        def refused(failure: Failure) -> None:
            tx.rejected.append(event.path.mailbox)
            self._reply(self._refusalReply(failure, "5.1.1", "Recipient validation failed"))

        self._waitFor(maybeDeferred(tx.delivery.validateTo, user), accepted, refused)

    def _recipientRefused(self, event: RecipientRefused) -> None:
        assert self._tx is not None
        self._tx.rejected.append(event.address.decode("utf-8", "replace"))
        self._reply(event.reply)

    # The message

    def smtp_DATA(self, event: StartData) -> None:
        tx = self._tx
        assert tx is not None
        failure = self._openMessages(tx)
        if failure is not None:
            self._replyToFailure(failure)
            self._endTransaction(f"refused: {failure.getErrorMessage()}")
            return
        self.setTimeout(self._limits.dataTimeout)
        self._reply(START_DATA)

    def smtp_BDAT(self, event: ChunkStarted) -> None:
        if event.first:
            tx = self._tx
            assert tx is not None
            failure = self._openMessages(tx)
            if failure is not None:
                tx.failure = self._failureReply(failure)
                self._smtp.refuseChunk(tx.failure)
        self.setTimeout(self._limits.dataTimeout)

    def _openMessages(self, tx: _Transaction) -> Failure | None:
        """
        Call each recipient's message factory; recipients that share a
        message object (as all of MailHarbor's do) share its stream.

        @return: why that failed, if it did.
        """
        unique: dict[int, IMessageStream] = {}
        try:
            for user, messageFactory in tx.recipients:
                message = messageFactory()
                if id(message) not in unique:
                    stream = message if IMessageStream.providedBy(message) else _LineMessage(message)
                    unique[id(message)] = stream
                    header = tx.delivery.receivedHeader(
                        self._clientHelo, tx.origin, [u for u, _ in tx.recipients]
                    )
                    if header:
                        stream.lineReceived(header)
        except Exception:  # noqa: BLE001 -- whatever the delivery raises refuses the message
            failure = Failure()
            for stream in unique.values():
                stream.connectionLost()
            return failure
        tx.messages = list(unique.values())
        return None

    def _bodyReceived(self, event: BodyReceived) -> None:
        tx = self._tx
        assert tx is not None
        if tx.failure is not None:
            return
        try:
            for message in tx.messages:
                message.dataReceived(event.data)
        except Exception:  # noqa: BLE001 -- a storage failure refuses the message
            tx.failure = self._failureReply(Failure())
            self._abortMessages(tx)

    def _bodyRefused(self, event: BodyRefused) -> None:
        """
        The message broke a limit: drop what was written of it now.
        """
        tx = self._tx
        assert tx is not None
        if tx.failure is None:
            tx.failure = event.reply
            self._abortMessages(tx)

    def _messageEnded(self, event: MessageEnded) -> None:
        tx = self._tx
        assert tx is not None
        self.setTimeout(self._limits.commandTimeout)
        self._endOfMessage(tx)
        self._finishShutdown()

    def _chunkEnded(self, event: ChunkEnded) -> None:
        self.setTimeout(self._limits.commandTimeout)
        tx = self._tx
        if event.refusal is not None:
            self._reply(event.refusal, event.counted)
            if event.counted and tx is not None and tx.failure is not None:
                # The message could not be opened.
                self._endTransaction(f"failed: {event.refusal.code} {event.refusal.text}")
        elif tx is not None and (tx.failure is not None or event.last):
            self._endOfMessage(tx)
        elif tx is not None:
            self._reply(Reply(250, "2.0.0", f"Ok: {self._smtp.messageSize} octets received"))
        self._finishShutdown()

    def _endOfMessage(self, tx: _Transaction) -> None:
        """
        The whole message is in: make it durable, then answer.
        """
        # The transaction is over for the protocol: the next MAIL may come.
        # It is logged once the outcome of storing it is known.
        self._tx = None
        if tx.failure is not None:
            self._reply(tx.failure)
            self._logTransaction(tx, f"failed: {tx.failure.text}")
            return
        messages, tx.messages = tx.messages, []
        self._storing = True
        results = DeferredList([maybeDeferred(m.eomReceived) for m in messages], consumeErrors=True)

        def stored(outcomes: list[tuple[bool, Any]]) -> None:
            self._storing = False
            for succeeded, outcome in outcomes:
                if not succeeded:
                    self._replyToFailure(outcome)
                    self._logTransaction(tx, f"failed: {outcome.getErrorMessage()}")
                    return
            ids = [
                m.id
                for _, outcome in outcomes
                if isinstance(outcome, list)
                for m in outcome
                if isinstance(m, StoredMessage)
            ]
            if not ids:
                text = "Ok: message accepted"
            elif len(ids) == 1:
                text = f"Ok: stored as {ids[0]}"
            else:
                text = f"Ok: stored as {ids[0]} (+{len(ids) - 1} more copies)"
            self._reply(Reply(250, "2.0.0", text))
            self._logTransaction(tx, "stored" if ids else "accepted and discarded", ids)

        self._waitFor(results, stored, self._replyToFailure)

    def _abortMessages(self, tx: _Transaction) -> None:
        messages, tx.messages = tx.messages, []
        for message in messages:
            try:
                message.connectionLost()
            except Exception:  # noqa: BLE001 -- logged; the others are still dropped
                self._log.failure("Error discarding a message")

    # Transactions and their log line

    def _endTransaction(self, result: str) -> None:
        """
        End the transaction in progress, if any, dropping any message it
        was receiving.
        """
        tx, self._tx = self._tx, None
        if tx is not None:
            self._abortMessages(tx)
            self._logTransaction(tx, result)

    def _logTransaction(self, tx: _Transaction, result: str, ids: Sequence[str] = ()) -> None:
        """
        The one line an operator greps for: who sent what to whom, over
        what, and what became of it (the reply code sent last).
        """
        _logRendered(
            self._log,
            _TRANSACTION_LINE,
            client=self.session.clientAddress,
            helo=self.session.helo or "",
            tls=self.session.tls or "-",
            user=self.session.user or "-",
            code=self._smtp.lastCode,
            duration=self._clock.seconds() - tx.started,
            sender=tx.sender.mailbox,
            recipients=",".join(bytes(user.dest).decode("utf-8", "replace") for user, _ in tx.recipients)
            or "-",
            rejected=",".join(tx.rejected) or "-",
            size=self._smtp.messageSize,
            result=result,
            ids=",".join(ids) or "-",
        )


_TRANSACTION_LINE = (
    "client={client} helo={helo} tls={tls} user={user} from=<{sender}> to={recipients} "
    "rejected={rejected} size={size} code={code} result={result} id={ids} duration={duration:.3f}"
)
_SESSION_LINE = (
    "client={client} helo={helo} tls={tls} user={user} transactions={count} "
    "errors={errors} duration={duration:.3f} disconnected"
)


def _logRendered(log: Logger, template: str, **fields: object) -> None:
    """
    Log a line of every transaction or session: the fields stay the
    event's structured fields, and the text is rendered here by C{str.format}
    and handed over as C{{line}}, because C{twisted.logger} would render
    the template with the pure-Python C{string.Formatter}, field by field,
    for every message (a quarter of the CPU a message costs).
    """
    log.info("{line}", line=template.format(**fields), **fields)


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
