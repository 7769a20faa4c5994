# -*- test-case-name: harbor.test.test_smtp -*-
"""
The SMTP protocol: MailHarbor's answers to an SMTP session.

L{harbor.smtp._session.SMTPSession} holds the conversation and
L{harbor.smtp._driver.SessionDriver} runs it on the transport; this
protocol answers its events with Twisted's mail interfaces: an
L{IMessageDeliveryFactory} gives one L{IMessageDelivery} per transaction,
whose C{validateFrom} and C{validateTo} decide the envelope and whose
L{IMessage} factories take the message.  Around that it keeps what needs a
reactor or a transport:

 - admission (connection limits), the connect and HELO filters, the DNS
   blocklist lookup and the pregreet test;
 - STARTTLS on the transport, and AUTH through L{twisted.cred};
 - the client's deadlines (L{harbor.smtp._deadline}): one per command
   line, a minimum rate in a message, the clock stopped while MailHarbor
   works; a client that misses one gets 421 4.4.2;
 - a local failure (full disk, permissions) is a 4xx temporary failure,
   and the 250 reply to a message comes only once it is fsynced, naming the
   stored id;
 - a graceful shutdown;
 - one log line per transaction, and one per connection.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from zope.interface import implementer

from twisted.internet.defer import maybeDeferred
from twisted.internet.interfaces import (
    IHandshakeListener,
    IReactorTime,
    ISSLTransport,
    ITLSTransport,
)
from twisted.logger import Logger
from twisted.mail.smtp import IMessage, SMTPServerError, User
from twisted.python.failure import Failure

from attrs import evolve
from OpenSSL import SSL

from harbor._logging import PublishedLogger
from harbor.delivery import Deliverer, PathAddress, Session, applyFilters, refusalOf
from harbor.dnsbl import SharedResult
from harbor.filters import Filter
from harbor.limits import ConnectionCounter, FailureTracker, Limits
from harbor.smtp._auth import Authenticator, AuthTimeout
from harbor.smtp._deadline import Missed
from harbor.smtp._driver import SessionDriver
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
)
from harbor.smtp._replies import (
    AUTH_FAILED,
    AUTH_OK,
    AUTH_UNAVAILABLE,
    BYE,
    CANNOT_VERIFY,
    OK,
    PROCESSING_ERROR,
    RECIPIENT_OK,
    SENDER_OK,
    START_DATA,
    TALKED_TOO_SOON,
    TLS_READY,
    Reply,
    errorReply,
)
from harbor.smtp._session import SMTPSession
from harbor.smtp._transaction import (
    SESSION_LINE,
    Transaction,
    failureReply,
    logRendered,
    storedReply,
)
from harbor.tls import describeConnection

if TYPE_CHECKING:
    from harbor.smtp._factory import ServerSettings, SessionRegistry


@implementer(IHandshakeListener)
class HarborESMTP(SessionDriver):
    """
    One SMTP connection: MailHarbor's answers to the session's events.

    The class is longer than the usual limit because it is one method per
    event (each a few lines of mapping onto Twisted's mail interfaces) plus
    the connection's life cycle, all sharing one connection's state: the
    client's L{Session}, the transaction, the delivery factory.  What does
    not need that state is elsewhere: running the session on a transport
    (L{harbor.smtp._driver}), the transaction's streams and log line
    (L{harbor.smtp._transaction}), and checking logins
    (L{harbor.smtp._auth}).

    @ivar session: What is known of the client, shared with deliveries.
    @ivar deliveryFactory: Gives the delivery of each transaction; replaced
        by the user's once the client authenticates.
    @cvar timeout: The command timeout of the default L{Limits}; each
        listener's own limits set the one in effect.
    """

    _log: ClassVar[Logger] = PublishedLogger("harbor.smtp.HarborESMTP")
    timeout = Limits().commandTimeout

    # Commands the server acts on are smtp_VERB, as in Twisted's SMTP.
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
        registry: SessionRegistry,
    ) -> None:
        super().__init__(
            SMTPSession(
                settings.hostname,
                settings.limits,
                requireTLS=settings.listener.requireTLS,
                submission=settings.listener.submission,
                authentication=bool(settings.checkers),
                plaintextAuthentication=settings.allowPlaintextAuth,
            ),
            clock,
            settings.limits.commandTimeout,
            settings.limits.dataTimeout,
            settings.limits.minDataRate,
        )
        self._registry = registry
        self._shuttingDown = False
        self._draining = False
        # Draining, with its work done: the next command is its last.
        self._leaving = False
        self._storing = False
        self._transactions = 0
        self._started = clock.seconds()
        self._hostname = settings.hostname
        self._settings = settings
        self._deliverer = deliverer
        self._limits = settings.limits
        self._connections = connections
        self._logins = Authenticator(
            deliverer,
            settings.checkers,
            failures,
            clock,
            settings.throttle.perSession,
            settings.limits.authTimeout,
        )
        self._tx: Transaction | None = None
        self._greeting: Any = None
        self._admitted = False
        self.session = Session("unknown")
        self.deliveryFactory: Any = None
        # The HELO argument and the client's address, as
        # IMessageDelivery.validateFrom and receivedHeader take them.
        self._clientHelo: tuple[bytes | None, bytes] = (None, b"")
        # What the server found out about the client's address, for a
        # session restarted by STARTTLS; taken only where STARTTLS can come.
        self._connectionFacts: Session | None = None

    # Connection life cycle

    def connectionMade(self) -> None:
        peer = self.transport.getPeer()
        self.session = Session(str(getattr(peer, "host", peer)))
        refusal = self._connections.admit(self.session.clientAddress)
        if refusal is not None:
            self._log.info(
                "client={client} refused: {reason}",
                client=self.session.clientAddress,
                reason=refusal,
                verb="CONNECT",
                refusal="connection_limit",
                harbor_event="refusal",
            )
            self._send(Reply(421, "4.7.0", f"{self._hostname} Error: {refusal}"))
            self._close()
            return
        self._admitted = True
        self._smtp.tlsAvailable = self._settings.tls is not None and ITLSTransport.providedBy(self.transport)
        self._smtp.tlsActive = self._tlsActive()
        self._startSession(self.session)
        self._registry.add(self)
        self._startProducing()
        self._startClock()
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
            # banner, many spam bots do not.  The wait is ours: the client's
            # time starts with the banner.
            self._deadline.pause(self._clock.seconds())
            self._schedule()
            self._greeting = self.callLater(wait, self._greet)
        else:
            self._greet()

    def _greet(self) -> None:
        self._greeting = None
        self._deadline.resume(self._clock.seconds())
        self._schedule()
        self.transport.write(self._smtp.greet(Reply(220, None, f"{self._hostname} ESMTP MailHarbor")))

    def _filter(self, stage: str) -> Filter | None:
        """
        The first connect or HELO filter that refuses the client, if any.
        """
        matched = applyFilters(
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
            refusal = Reply(554, matched.enhanced, f"{self._hostname} {matched.text}")
            self.transport.write(self._smtp.greet(refusal))
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
        super().connectionLost(reason)
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
        logRendered(
            self._log,
            SESSION_LINE,
            harbor_event="session",
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

    def drain(self) -> None:
        """
        The server is draining.  An idle session is told 421 4.3.2 at
        once.  One in a transaction may finish it (more recipients, the
        message and its reply), one with a command being answered gets
        its reply; then the next command gets 421 4.3.2, unless it is
        QUIT, which gets its 221 as always.
        """
        self._draining = True
        if not self._closed and not self._busyDraining():
            self._goodbye()

    def _busyDraining(self) -> bool:
        return self._smtp.receivingBody or self._storing or self._tx is not None or self._waiting

    def _drainStep(self) -> None:
        """
        A command of a draining session has been answered: once its
        transaction is over, the next command is its last.
        """
        if not self._closed and not self._busyDraining():
            self._leaving = True

    def _goodbye(self) -> None:
        self._endTransaction("abandoned: server shutting down")
        self._send(Reply(421, "4.3.2", f"{self._hostname} Service shutting down, try again later"))
        self._close()

    def _finishShutdown(self) -> None:
        if not self._shuttingDown or self._closed:
            return
        if self._smtp.receivingBody or self._storing:
            return
        self._goodbye()

    def timedOut(self, missed: Missed) -> None:
        """
        The client missed its deadline: say so (421 4.4.2, as Postfix), log
        which rule, drop the message being received, and hang up.
        """
        self._log.info(
            "client={client} timed out: {rule} after {elapsed:.1f}s with {received} bytes (last command {verb})",
            client=self.session.clientAddress,
            rule=missed.rule,
            elapsed=missed.elapsed,
            received=missed.received,
            verb=self._smtp.verb,
        )
        self._send(Reply(421, "4.4.2", f"{self._hostname} {missed.text}"))
        self._endTransaction(f"timed out: {missed.rule}")
        self._close()

    # Input and output

    def dataReceived(self, data: bytes) -> None:
        if self._greeting is not None and not self._closed:
            self._greeting.cancel()
            self._greeting = None
            self._log.info(
                "client={client} talked before the greeting",
                client=self.session.clientAddress,
                verb="CONNECT",
                refusal="pregreet",
                harbor_event="refusal",
            )
            self._send(TALKED_TOO_SOON)
            self._close()
            return
        super().dataReceived(data)

    def _reply(self, reply: Reply, counted: bool = True, refusal: str | None = None) -> None:
        """
        Send a reply to a command, log it if a refusal, and hang up if the
        session says the client has made too many errors.

        @param refusal: Why, if a refusal whose reason the deliverer
            knows (see L{harbor.delivery.refusal}), for the metrics.
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
                refusal=refusal,
                harbor_event="refusal",
            )
        if self._smtp.errorLimitReached and not self._closed:
            self._endTransaction("too many errors")
            self._close()

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

    def _settled(self) -> None:
        self._finishShutdown()
        if self._draining:
            self._drainStep()

    def _dispatch(self, event: Any) -> None:
        if self._leaving and not isinstance(event, Quit):
            # Draining, and this session's work is done: QUIT gets its
            # 221, anything else the goodbye.
            self._goodbye()
            return
        super()._dispatch(event)
        if self._draining:
            self._drainStep()

    def _replyToFailure(self, failure: Failure) -> None:
        self._reply(failureReply(failure, self._log))

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

        def checked(deliveryFactory: Any) -> None:
            if deliveryFactory is None:
                self._loginRefused()
            else:
                self.deliveryFactory = deliveryFactory
                self._reply(AUTH_OK)

        def failed(failure: Failure) -> None:
            # Fail closed: no login, and 454 so the client may try later.
            # The password stays out of the log.
            if failure.check(AuthTimeout):
                self._log.warn(
                    "client={client} auth={mechanism} user={user} authentication error: {why}",
                    client=self.session.clientAddress,
                    mechanism=event.mechanism.decode(),
                    user=event.username.decode("utf-8", "replace"),
                    why=failure.getErrorMessage(),
                )
                self._reply(AUTH_UNAVAILABLE)
                return
            self._log.failure(
                "client={client} auth={mechanism} user={user} authentication error",
                failure,
                client=self.session.clientAddress,
                mechanism=event.mechanism.decode(),
                user=event.username.decode("utf-8", "replace"),
            )
            self._reply(AUTH_UNAVAILABLE)

        self._waitFor(self._logins.check(self.session, event, self._log), checked, failed)

    def _malformedLogin(self, event: MalformedLogin) -> None:
        self._logins.failed(self.session, event.mechanism, b"", self._log)
        self._loginRefused()

    def _loginRefused(self) -> None:
        """
        Answer a failed login; hang up on a client that keeps failing.
        """
        self._reply(AUTH_FAILED)
        if self._logins.exhausted and not self._closed:
            self._send(Reply(421, "4.7.0", f"{self._hostname} Error: too many failed logins"))
            self._close()

    # The envelope

    def smtp_MAIL(self, event: MailFrom) -> None:
        self.session.utf8 = event.utf8
        delivery = self.deliveryFactory.getMessageDelivery()
        origin = PathAddress(event.address, event.path)

        def accepted(ignored: object) -> None:
            self._tx = Transaction(delivery, origin, self._clock.seconds())
            self._transactions += 1
            self._reply(SENDER_OK)

        def refused(failure: Failure) -> None:
            self._reply(
                self._refusalReply(failure, "5.7.1", "Sender validation failed"),
                refusal=refusalOf(failure.value),
            )

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
            self._reply(
                self._refusalReply(failure, "5.1.1", "Recipient validation failed"),
                refusal=refusalOf(failure.value),
            )

        self._waitFor(maybeDeferred(tx.delivery.validateTo, user), accepted, refused)

    def _recipientRefused(self, event: RecipientRefused) -> None:
        assert self._tx is not None
        self._tx.rejected.append(event.address.decode("utf-8", "replace"))
        self._reply(event.reply)

    # The message

    def smtp_DATA(self, event: StartData) -> None:
        tx = self._tx
        assert tx is not None
        failure = tx.openMessages(self._clientHelo)
        if failure is not None:
            self._replyToFailure(failure)
            self._endTransaction(f"refused: {failure.getErrorMessage()}")
            return
        self._reply(START_DATA)

    def smtp_BDAT(self, event: ChunkStarted) -> None:
        if event.first:
            tx = self._tx
            assert tx is not None
            failure = tx.openMessages(self._clientHelo)
            if failure is not None:
                tx.failure = failureReply(failure, self._log)
                self._smtp.refuseChunk(tx.failure)

    def _bodyReceived(self, event: BodyReceived) -> None:
        tx = self._tx
        assert tx is not None
        if tx.failure is not None:
            return
        try:
            tx.write(event.data)
        except Exception:  # noqa: BLE001 -- a storage failure refuses the message
            tx.failure = failureReply(Failure(), self._log)
            self._smtp.refuseMessage(tx.failure)
            tx.abort(self._log)

    def _bodyRefused(self, event: BodyRefused) -> None:
        """
        The message broke a limit: drop what was written of it now.
        """
        tx = self._tx
        assert tx is not None
        if tx.failure is None:
            tx.failure = event.reply
            tx.abort(self._log)

    def _messageEnded(self, event: MessageEnded) -> None:
        tx = self._tx
        assert tx is not None
        self._endOfMessage(tx)
        self._finishShutdown()

    def _chunkEnded(self, event: ChunkEnded) -> None:
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

    def _endOfMessage(self, tx: Transaction) -> None:
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
        self._storing = True

        def stored(outcomes: list[tuple[bool, Any]]) -> None:
            self._storing = False
            for succeeded, outcome in outcomes:
                if not succeeded:
                    self._replyToFailure(outcome)
                    self._logTransaction(tx, f"failed: {outcome.getErrorMessage()}")
                    return
            reply, ids = storedReply(outcomes)
            self._reply(reply)
            self._logTransaction(tx, "stored" if ids else "accepted and discarded", ids)

        self._waitFor(tx.commit(), stored, self._replyToFailure)

    # Transactions and their log line

    def _endTransaction(self, result: str) -> None:
        """
        End the transaction in progress, if any, dropping any message it
        was receiving.
        """
        tx, self._tx = self._tx, None
        if tx is not None:
            tx.abort(self._log)
            self._logTransaction(tx, result)

    def _logTransaction(self, tx: Transaction, result: str, ids: Sequence[str] = ()) -> None:
        """
        Log C{tx} with what the session knows: the code of the reply sent
        last, and the message's size.
        """
        now = self._clock.seconds()
        tx.logLine(self._log, self.session, self._smtp.lastCode, self._smtp.messageSize, now, result, ids)
