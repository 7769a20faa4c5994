# -*- test-case-name: harbor.test.test_smtp -*-
"""
The SMTP protocol: MailHarbor's subclass of Twisted's L{ESMTP}.

It keeps Twisted's shape (an L{IMessageDeliveryFactory} gives one
L{IMessageDelivery} per transaction, whose C{validateTo} returns the
L{IMessage} factories) and replaces what a receiver cannot live with:

 - input is framed by L{harbor.smtp._framing}: bounded, and paused while a reply
   is pending, so pipelined commands are answered in order (RFC 2920);
 - DATA is decoded in large pieces, not line by line, and only
   C{<CRLF>.<CRLF>} ends it; BDAT chunks (RFC 3030) are read byte-exact;
 - every reply to an EHLO client carries an RFC 3463 enhanced status code;
 - SIZE, 8BITMIME and SMTPUTF8 parameters are honoured, others refused;
 - a local failure (full disk, permissions) is a 4xx temporary failure,
   never Twisted's C{550 Could not send e-mail}, and the 250 reply to the
   message comes only once it is fsynced, naming the stored id;
 - limits on size, recipients, time, errors and connections;
 - one log line per transaction.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from zope.interface import implementer

from OpenSSL import SSL
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred, succeed
from twisted.internet.interfaces import (
    IAddress,
    IHandshakeListener,
    IOpenSSLServerConnectionCreator,
    IReactorTime,
    ISSLTransport,
    ITLSTransport,
)
from twisted.internet.protocol import ServerFactory
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.mail.interfaces import IMessageDeliveryFactory
from twisted.mail.smtp import ESMTP, IMessage, SMTPServerError, User
from twisted.python.failure import Failure

from attrs import evolve, field, frozen

from harbor.auth import AuthenticationError, decodeBase64, decodePlain
from harbor.limits import FailureTracker, Throttle
from harbor.config import Listener
from harbor.limits import Limits
from harbor.delivery import Deliverer, IMessageStream, PathAddress, Session
from harbor.dnsbl import SharedResult
from harbor.filters import applyFirst
from harbor.smtp._framing import ChunkDecoder, DataDecoder, InputBuffer, LineTooLong
from harbor.smtp._replies import (
    AUTH_FAILED,
    BARE_NEWLINE,
    LOCAL_ERROR,
    SIZE_EXCEEDED,
    Reply,
    errorReply,
    render,
    storageReply,
)
from harbor.maildir import StorageError, StoredMessage
from harbor.address import AddressSyntaxError, NeedsSMTPUTF8, Path, parsePath
from harbor.limits import ConnectionCounter
from harbor.tls import describeConnection

# RFC 5321 section 4.5.3.1.4, raised for MAIL by the parameters we take:
# SIZE (RFC 1870: 26), BODY=8BITMIME (14), SMTPUTF8 (RFC 6531: 10).
MAX_COMMAND_LINE = 512
# AUTH= (RFC 4954: 500) too; an AUTH command line may be 12288 octets.
_LINE_LIMITS = {b"MAIL": MAX_COMMAND_LINE + 26 + 14 + 10 + 500, b"AUTH": 12288 + 2}
# Nothing longer is ever buffered as one command line.
_MAX_BUFFERED_LINE = 12288 + 2
MAX_BUFFERED_INPUT = 256 * 1024

_MAIL = re.compile(rb"^FROM:\s*(<[^>]*>|[^\s<>]+)(?:\s+(.*))?$", re.IGNORECASE | re.DOTALL)
_RCPT = re.compile(rb"^TO:\s*(<[^>]*>|[^\s<>]+)(?:\s+(.*))?$", re.IGNORECASE | re.DOTALL)
_BDAT = re.compile(rb"^(\d{1,15})(?:\s+(LAST))?\s*$", re.IGNORECASE)
_VERB = re.compile(rb"^[A-Za-z]{1,16}$")
# Commands that move no mail, counted against the junk limit.
_JUNK = frozenset({b"NOOP", b"RSET", b"VRFY", b"HELP"})
# A host name or address literal: printable, no spaces or controls.
_HELO = re.compile(rb"^[\x21-\x7e\x80-\xff]{1,255}$")
_BODY_TYPES = frozenset({b"7BIT", b"8BITMIME"})


_MECHANISMS = (b"PLAIN", b"LOGIN")


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
    @ivar chunks: The BDAT decoder, if the transaction uses BDAT.
    @ivar overshoot: RCPTs refused for going over the recipient limit.
    @ivar failure: Why the message being received will be refused, the
        L{Reply} it will get; the rest of it is read and discarded.
    """

    def __init__(self, delivery: Any, origin: PathAddress, started: float = 0.0) -> None:
        self.delivery = delivery
        self.origin = origin
        self.started = started
        self.recipients: list[tuple[User, Callable[[], IMessage]]] = []
        self.rejected: list[str] = []
        self.size = 0
        self.messages: list[IMessageStream] = []
        self.chunks: ChunkDecoder | None = None
        self.failure: Reply | None = None
        self.overshoot = 0

    @property
    def sender(self) -> Path:
        """
        The sender's parsed path.
        """
        return self.origin.path  # type: ignore[no-any-return]


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


@implementer(IHandshakeListener)
class HarborESMTP(ESMTP):  # type: ignore[misc]
    """
    One SMTP connection.

    @ivar session: What is known of the client, shared with deliveries.
    """

    _log: Logger = _PublishedLogger("harbor.smtp.HarborESMTP")

    def __init__(
        self,
        deliverer: Deliverer,
        settings: ServerSettings,
        connections: ConnectionCounter,
        failures: FailureTracker,
        clock: IReactorTime,
        registry: SessionRegistry | None = None,
    ) -> None:
        super().__init__()
        self._registry = SessionRegistry() if registry is None else registry
        self._shuttingDown = False
        self._storing = False
        self._transactions = 0
        self._started = clock.seconds()
        self.host = settings.hostname
        self._hostname = settings.hostname
        self._settings = settings
        self._deliverer = deliverer
        self._limits = settings.limits
        self._connections = connections
        self._failures = failures
        self._clock = clock
        self.callLater = clock.callLater
        self._auth: tuple[bytes, bytes | None] | None = None
        self._authFailures = 0
        self._input = InputBuffer(_MAX_BUFFERED_LINE)
        self._decoder: DataDecoder | None = None
        self._chunkRemaining: int | None = None
        self._chunkLast = False
        # Whether a BDAT transaction was refused before its LAST chunk, so
        # the chunks the client had pipelined behind it are expected.
        self._afterRefusedChunk = False
        # Whether the current chunk's refusal counts as the client's error.
        self._chunkCounted = True
        self._tx: _Transaction | None = None
        self._errors = 0
        self._errorsSinceDelivery = 0
        self._junk = 0
        self._lastCode = 0
        self._verb = "-"
        self._refused = False
        # A HELO filter's refusal of the last greeting, repeated to MAIL
        # until a greeting passes: the server's verdict, not something the
        # client said, so STARTTLS keeps it.
        self._greetingRefusal: Reply | None = None
        self._greeting: Any = None
        self._paused = False
        self._processing = False
        self._inputBacklogged = False
        self._outputBlocked = False
        self._reading = True
        self._closed = False
        self._producing = False
        self._admitted = False
        self.session = Session("unknown")
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
        if self._applyFilter("connect"):
            return
        blocklists = self._deliverer.blocklists
        if blocklists is not None and not self.session.trusted:
            self.session.blocklist = SharedResult(blocklists.lookup(self.session.clientAddress))
        if self._canStartTLS():
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
        self._send(Reply(220, None, f"{self._hostname} ESMTP MailHarbor"))

    def _applyFilter(self, stage: str) -> Reply | None:
        """
        Apply the first matching connect or HELO filter.

        @return: the refusal sent, if it refused the connection or the
            greeting.
        """
        matched = applyFirst(
            self._deliverer.filters, stage, self.session, self.session.clientAddress, self.session.helo
        )
        if matched is None or matched.action not in ("reject", "tempfail"):
            return None
        if stage == "connect" and matched.action == "tempfail":
            refusal = Reply(421, matched.enhanced, f"{self._hostname} {matched.text}")
            self._send(refusal)
            self._close()
        elif stage == "connect":
            # RFC 5321 section 3.1: a 554 greeting (the one refusal code a
            # greeting may carry), then 503 to everything but QUIT.
            self._refused = True
            refusal = Reply(554, matched.enhanced, f"{self._hostname} {matched.text}")
            self._send(refusal)
        else:
            refusal = Reply(matched.code, matched.enhanced, matched.text)
            self._reply(refusal)
        return refusal

    def _startSession(self, session: Session) -> None:
        """
        Start C{session}: at connection, one that knows nothing but the
        client's address; after STARTTLS, one that has forgotten everything
        the client said (RFC 3207 section 4.2) but keeps what the connect
        filters and the blocklist lookup found about its address.
        """
        self.session = session
        self.deliveryFactory = self._deliverer.factoryFor(self.session)
        self._helo = (None, self.session.clientAddress.encode("ascii", "replace"))
        self._auth = None

    def _tlsActive(self) -> bool:
        return self.session.tls is not None or ISSLTransport.providedBy(self.transport)

    def handshakeCompleted(self) -> None:
        """
        TLS is up (after STARTTLS, or at once on an implicit TLS listener):
        remember its protocol and cipher for the log and Received: header.
        """
        self.session.tls = describeConnection(self.transport.getHandle()) or "TLS"
        self._log.info(
            "client={client} tls={tls} TLS established",
            client=self.session.clientAddress,
            tls=self.session.tls,
        )

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._closed = True
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
        if self._decoder is not None or self._chunkRemaining is not None:
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
            errors=self._errors,
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
        if self._receivingBody() or self._storing:
            return
        self._endTransaction("abandoned: server shutting down")
        self._send(Reply(421, "4.3.2", f"{self._hostname} Service shutting down, try again later"))
        self._close()

    def timeoutConnection(self) -> None:
        self._send(Reply(421, "4.4.2", f"{self._hostname} Error: timeout exceeded"))
        self._close()

    def _close(self) -> None:
        self._closed = True
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
            self._send(Reply(554, "5.5.1", "Error: talking before the greeting"))
            self._close()
            return
        self.resetTimeout()
        if self._receivingBody() and not self._paused and not len(self._input):
            data = self._bodyReceived(data)
        self._input.feed(data)
        self._processInput()

    def _receivingBody(self) -> bool:
        return self._decoder is not None or self._chunkRemaining is not None

    def _processInput(self) -> None:
        """
        Consume buffered input until it runs out or a reply is pending.
        """
        if self._processing:
            return
        self._processing = True
        try:
            while not (self._paused or self._outputBlocked or self._closed):
                if self._receivingBody():
                    if not len(self._input) and self._chunkRemaining != 0:
                        break
                    if self._chunkRemaining is not None:
                        # Only this chunk: the pipelined commands and chunks
                        # after it stay where they are, not copied out and
                        # back for every chunk.
                        self._bodyReceived(self._input.take(self._chunkRemaining))
                    else:
                        self._input.feed(self._bodyReceived(self._input.takeAll()))
                    continue
                line = self._input.nextLine()
                if line is None:
                    break
                if isinstance(line, LineTooLong):
                    self._reply(Reply(500, "5.5.2", "Error: line too long"))
                    continue
                self._commandReceived(line)
        finally:
            self._processing = False
        self._throttle()

    def _throttle(self) -> None:
        """
        Stop reading from a client that sends far ahead of our replies, so
        the buffer stays bounded; read again when it drains.
        """
        buffered = len(self._input)
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
        Hold further input, and the client's timeout, until C{result} fires
        and its reply is sent.

        A result that is already there (the usual MAIL and RCPT) is answered
        at once, with no pause and no timeout to cancel and set again.
        """
        outcomes: list[object] = []
        result.addBoth(outcomes.append)
        if outcomes:
            self._answer(outcomes[0], onSuccess, onFailure)
            return
        self._paused = True
        self.setTimeout(None)

        def resume(ignored: None) -> None:
            self._paused = False
            if not self._closed:
                self.setTimeout(self._limits.commandTimeout)
            self._answer(outcomes[0], onSuccess, onFailure)
            self._processInput()

        result.addCallback(resume).addErrback(
            lambda f: self._log.failure("Unexpected error reading the next command", f)
        )

    def _answer(
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
        except Exception:
            self._log.failure("Unexpected error sending a reply")
        finally:
            self._finishShutdown()

    def _commandReceived(self, line: bytes) -> None:
        if self._auth is not None:
            self._authResponse(line)
            return
        parts = line.strip().split(None, 1)
        verb = parts[0].upper() if parts else b""
        argument = parts[1] if len(parts) == 2 else b""
        self._verb = verb[:16].decode("ascii", "replace") or "-"
        if verb != b"BDAT":
            self._afterRefusedChunk = False
        if len(line) + 2 > _LINE_LIMITS.get(verb, MAX_COMMAND_LINE):
            self._reply(Reply(500, "5.5.2", "Error: line too long"))
            return
        handler = None
        if self._refused and verb != b"QUIT":
            self._reply(Reply(503, "5.5.1", "Error: no SMTP service here"))
            return
        if verb in _JUNK:
            self._countJunk()
            if self._closed:
                return
        if _VERB.match(verb):
            handler = getattr(self, "smtp_" + verb.decode("ascii"), None)
        if handler is None:
            self._reply(Reply(500, "5.5.2", "Error: command not recognized"))
            return
        try:
            handler(argument)
        except Exception:
            self._log.failure("Error handling {verb} command", verb=verb.decode("ascii"))
            self._reply(Reply(451, "4.3.0", "Error: local error in processing"))

    # Replies

    def _send(self, reply: Reply) -> None:
        """
        Write a reply; each line of a multi-line one carries the code and,
        for EHLO clients (RFC 2034), the enhanced status code.
        """
        self._lastCode = reply.code
        self.transport.write(render(reply, self.session.esmtp))

    def _reply(self, reply: Reply, counted: bool = True) -> None:
        """
        Send a reply to a command, and hang up on a client that has made
        too many errors, as Postfix's hard error limit does.

        @param counted: Whether a 4xx or 5xx is one of the client's errors.
        """
        self._send(reply)
        if reply.code >= 400:
            self._log.info(
                "client={client} {verb} refused: {code} {enhanced} {reason}",
                client=self.session.clientAddress,
                verb=self._verb,
                code=reply.code,
                enhanced=reply.enhanced or "",
                reason=reply.text,
            )
            if counted:
                self._countError()

    def _countError(self) -> None:
        """
        Count one error (a 4xx or 5xx reply, or junk past its limit), and
        hang up once there are too many since the last message stored, as
        Postfix's hard error limit does: a client gets no endless supply of
        refusals, and no endless log lines.
        """
        self._errors += 1
        self._errorsSinceDelivery += 1
        if self._errorsSinceDelivery >= self._limits.maxErrors and not self._closed:
            self._send(Reply(421, "4.7.0", f"{self._hostname} Error: too many errors"))
            self._endTransaction("too many errors")
            self._close()

    def _countJunk(self) -> None:
        """
        Count a command that moves no mail; past the junk limit, each is
        also an error (Postfix's C{smtpd_junk_command_limit}), so a client
        cannot hold a connection with NOOPs forever.
        """
        self._junk += 1
        if self._junk > self._limits.maxJunkCommands:
            self._countError()

    def _replyFromError(self, error: SMTPServerError, default: str) -> None:
        """
        Reply with an exception's code and text (see L{errorReply}).
        """
        self._reply(errorReply(error.code, error.resp, default))

    def _failureReply(self, failure: Failure) -> Reply:
        """
        The answer to a message that could not be stored, logged: a local
        storage problem is temporary (452 for a full disk, otherwise 451)
        so the sender retries; an SMTP error keeps its own code; anything
        else is a bug, logged, and also answered 451 so no mail is lost.
        """
        if failure.check(StorageError):
            self._log.error("Storage failure: {error}", error=failure.getErrorMessage())
            return storageReply(failure.value.noSpace)
        if failure.check(SMTPServerError):
            return errorReply(failure.value.code, failure.value.resp, "5.3.0")
        self._log.failure("Delivery failed", failure)
        return LOCAL_ERROR

    def _replyToFailure(self, failure: Failure) -> None:
        self._reply(self._failureReply(failure))

    # Greeting and simple commands

    def smtp_HELO(self, argument: bytes) -> None:
        self._greeted(argument, esmtp=False)

    def smtp_EHLO(self, argument: bytes) -> None:
        self._greeted(argument, esmtp=True)

    def _greeted(self, argument: bytes, esmtp: bool) -> None:
        verb = "EHLO" if esmtp else "HELO"
        name = argument.strip()
        if not name or not _HELO.match(name):
            self._reply(Reply(501, "5.5.4", f"Syntax: {verb} hostname"))
            return
        previous = (self.session.helo, self.session.esmtp)
        # The filter looks at this name; its refusal answers this command.
        self.session.helo = name.decode("utf-8", "replace")
        self.session.esmtp = esmtp
        refusal = self._applyFilter("helo")
        if refusal is not None:
            # RFC 5321 section 4.1.4: a refused greeting leaves the session
            # as it was.  A client not yet greeted is refused again at MAIL
            # until a greeting passes, or ignoring the refusal would be
            # enough to get past the filter.
            self.session.helo, self.session.esmtp = previous
            if previous[0] is None:
                self._greetingRefusal = refusal
            return
        self._endTransaction("abandoned: new greeting")
        self._greetingRefusal = None
        self._helo = (name, self.session.clientAddress.encode("ascii", "replace"))
        lines = [self._hostname] + (self.esmtpExtensions() if esmtp else [])
        self._reply(Reply(250, None, "\n".join(lines)))

    def esmtpExtensions(self) -> list[str]:
        """
        The service extensions advertised in the EHLO reply.
        """
        extensions = [
            "PIPELINING",
            f"SIZE {self._limits.maxMessageSize}",
            "8BITMIME",
            "SMTPUTF8",
            "CHUNKING",
            "ENHANCEDSTATUSCODES",
        ]
        if self._canStartTLS():
            extensions.append("STARTTLS")
        if self._authOffered():
            extensions.append("AUTH " + " ".join(m.decode() for m in _MECHANISMS))
        return extensions

    def _canStartTLS(self) -> bool:
        return (
            self._settings.tls is not None
            and not self._tlsActive()
            and ITLSTransport.providedBy(self.transport)
        )

    def _authOffered(self) -> bool:
        return bool(self._settings.checkers) and (
            self._tlsActive() or self._settings.allowPlaintextAuth
        )

    def smtp_RSET(self, argument: bytes) -> None:
        self._endTransaction("abandoned: reset")
        self._reply(Reply(250, "2.0.0", "Ok"))

    def smtp_NOOP(self, argument: bytes) -> None:
        self._reply(Reply(250, "2.0.0", "Ok"))

    def smtp_VRFY(self, argument: bytes) -> None:
        if not argument.strip():
            self._reply(Reply(501, "5.5.4", "Syntax: VRFY address"))
            return
        self._reply(Reply(252, "2.0.0", "Send some mail, I will try my best"))

    def smtp_EXPN(self, argument: bytes) -> None:
        self._reply(Reply(502, "5.5.1", "Error: EXPN is not supported"))

    def smtp_HELP(self, argument: bytes) -> None:
        self._reply(
            Reply(
                214,
                "2.0.0",
                "Commands: HELO EHLO STARTTLS AUTH MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP",
            )
        )

    def smtp_QUIT(self, argument: bytes) -> None:
        self._endTransaction("abandoned: quit")
        self._send(Reply(221, "2.0.0", "Bye"))
        self._close()

    # TLS and authentication

    def smtp_STARTTLS(self, argument: bytes) -> None:
        if argument.strip():
            self._reply(Reply(501, "5.5.4", "Syntax: STARTTLS"))
            return
        if self._tlsActive():
            self._reply(Reply(503, "5.5.1", "Error: TLS already active"))
            return
        if not self._canStartTLS():
            self._reply(Reply(454, "4.7.0", "Error: TLS not available"))
            return
        # CVE-2011-0411: whatever came with the command in plaintext must
        # not be executed inside TLS.
        discarded = self._input.discard()
        if discarded:
            self._log.warn(
                "client={client} sent {count} bytes after STARTTLS; discarded",
                client=self.session.clientAddress,
                count=discarded,
            )
        self._send(Reply(220, "2.0.0", "Ready to start TLS"))
        self._endTransaction("abandoned: STARTTLS")
        # Taken at connection, since STARTTLS could come; it comes once.
        assert self._connectionFacts is not None
        self._startSession(self._connectionFacts)
        self.transport.startTLS(self._settings.tls)

    def smtp_AUTH(self, argument: bytes) -> None:
        if not self._settings.checkers:
            self._reply(Reply(503, "5.5.1", "Error: authentication not enabled"))
            return
        if not self._authOffered():
            self._reply(Reply(538, "5.7.11", "Error: authentication requires TLS (STARTTLS first)"))
            return
        if not self.session.esmtp:
            self._reply(Reply(503, "5.5.1", "Error: send EHLO first"))
            return
        if self.session.user is not None:
            self._reply(Reply(503, "5.5.1", "Error: already authenticated"))
            return
        if self._tx is not None:
            self._reply(Reply(503, "5.5.1", "Error: MAIL transaction in progress"))
            return
        parts = argument.split()
        if not parts or len(parts) > 2:
            self._reply(Reply(501, "5.5.4", "Syntax: AUTH mechanism [initial-response]"))
            return
        mechanism = parts[0].upper()
        if mechanism not in _MECHANISMS:
            self._reply(Reply(504, "5.5.4", "Error: unsupported authentication mechanism"))
            return
        if len(parts) == 1:
            self._auth = (mechanism, None)
            self._send(Reply(334, None, "" if mechanism == b"PLAIN" else "VXNlcm5hbWU6"))
            return
        self._auth = (mechanism, None)
        self._authResponse(parts[1])

    def _authResponse(self, line: bytes) -> None:
        """
        The client's answer to a SASL challenge (or its initial response).
        """
        assert self._auth is not None
        mechanism, username = self._auth
        if line.strip() == b"*":
            self._auth = None
            self._reply(Reply(501, "5.0.0", "Error: authentication cancelled"))
            return
        try:
            response = decodeBase64(line)
            if mechanism == b"PLAIN":
                self._auth = None
                username, password = decodePlain(response)
            elif username is None:
                self._auth = (mechanism, response)
                self._send(Reply(334, None, "UGFzc3dvcmQ6"))
                return
            else:
                self._auth = None
                password = response
        except AuthenticationError as e:
            self._auth = None
            if e.code == 535:
                self._loginFailed(mechanism, b"")
            else:
                self._reply(Reply(e.code, e.enhanced, e.text))
            return
        self._login(mechanism, username, password)

    def _login(self, mechanism: bytes, username: bytes, password: bytes) -> None:
        portal = Portal(_SessionRealm(self._deliverer, self.session), self._settings.checkers)
        result = portal.login(UsernamePassword(username, password), None, IMessageDeliveryFactory)

        def succeeded(outcome: tuple[Any, Any, Any]) -> None:
            self.deliveryFactory = outcome[1]
            self._failures.succeeded(self.session.clientAddress)
            self._log.info(
                "client={client} auth={mechanism} user={user} result=ok",
                client=self.session.clientAddress,
                mechanism=mechanism.decode(),
                user=self.session.user,
            )
            self._reply(Reply(235, "2.7.0", "Authentication successful"))

        def failed(failure: Failure) -> None:
            if failure.check(UnauthorizedLogin):
                self._loginFailed(mechanism, username, delayed=True)
            else:
                self._log.failure("Authentication error", failure)
                self._reply(Reply(454, "4.7.0", "Error: temporary authentication failure"))

        def slowDown(failure: Failure) -> Deferred[Any]:
            if not failure.check(UnauthorizedLogin):
                return failure  # type: ignore[return-value]
            delay = self._failures.failed(self.session.clientAddress)
            if delay <= 0:
                return failure  # type: ignore[return-value]
            return deferLater(self._clock, delay, lambda: failure)

        self._waitFor(result.addErrback(slowDown), succeeded, failed)

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

    def smtp_MAIL(self, argument: bytes) -> None:
        if self._tx is not None:
            self._reply(Reply(503, "5.5.1", "Error: nested MAIL command"))
            return
        if self._greetingRefusal is not None:
            # As Postfix's delayed HELO restrictions: the greeting's own
            # refusal, a 4xx (try again later) or a 5xx.
            self._reply(self._greetingRefusal)
            return
        if self._settings.listener.requireTLS and not self._tlsActive():
            self._reply(Reply(530, "5.7.0", "Must issue a STARTTLS command first"))
            return
        if self._settings.listener.submission and self.session.user is None:
            self._reply(Reply(530, "5.7.0", "Error: authentication required"))
            return
        match = _MAIL.match(argument)
        if match is None:
            self._reply(Reply(501, "5.5.4", "Syntax: MAIL FROM:<address>"))
            return
        rawPath = match.group(1)
        parameters = self._mailParameters(match.group(2) or b"")
        if isinstance(parameters, Reply):
            self._reply(parameters)
            return
        utf8 = b"SMTPUTF8" in parameters
        try:
            path = parsePath(rawPath, allowNull=True, utf8=utf8)
        except NeedsSMTPUTF8:
            self._reply(Reply(553, "5.6.7", "Error: non-ASCII address requires SMTPUTF8"))
            return
        except AddressSyntaxError as e:
            self._reply(Reply(501, "5.1.7", f"Bad sender address syntax: {e}"))
            return
        self.session.utf8 = utf8
        delivery = self.deliveryFactory.getMessageDelivery()
        origin = PathAddress(rawPath, path)

        def accepted(ignored: object) -> None:
            self._tx = _Transaction(delivery, origin, self._clock.seconds())
            self._transactions += 1
            self._reply(Reply(250, "2.1.0", "Ok"))

        def refused(failure: Failure) -> None:
            if failure.check(SMTPServerError):
                self._replyFromError(failure.value, "5.7.1")
            else:
                self._log.failure("Sender validation failed", failure)
                self._reply(Reply(451, "4.3.0", "Error: local error in processing"))

        self._waitFor(maybeDeferred(delivery.validateFrom, self._helo, origin), accepted, refused)

    def _mailParameters(self, text: bytes) -> dict[bytes, bytes] | Reply:
        """
        Parse and check the ESMTP parameters of MAIL FROM.

        @return: the parameters by upper-case keyword, or the reply that
            refuses them.
        """
        parameters: dict[bytes, bytes] = {}
        for parameter in text.split():
            keyword, _, value = parameter.partition(b"=")
            keyword = keyword.upper()
            if keyword in parameters:
                return Reply(501, "5.5.4", f"Error: duplicate {keyword.decode('ascii', 'replace')} parameter")
            if keyword == b"BODY":
                if value.upper() not in _BODY_TYPES:
                    return Reply(501, "5.5.4", "Error: BODY must be 7BIT or 8BITMIME")
            elif keyword == b"SIZE":
                if not value.isdigit() or len(value) > 20:
                    return Reply(501, "5.5.4", "Error: bad SIZE parameter")
                limit = self._limits.maxMessageSize
                if limit and int(value) > limit:
                    return SIZE_EXCEEDED
            elif keyword == b"AUTH":
                # RFC 4954 section 5: accepted, and not trusted for anything.
                pass
            elif keyword == b"SMTPUTF8":
                if value or b"=" in parameter:
                    return Reply(501, "5.5.4", "Error: SMTPUTF8 takes no value")
            else:
                return Reply(555, "5.5.4", "Error: unsupported MAIL parameter")
            parameters[keyword] = value
        return parameters

    def smtp_RCPT(self, argument: bytes) -> None:
        tx = self._tx
        if tx is None:
            self._reply(Reply(503, "5.5.1", "Error: need MAIL command"))
            return
        if tx.chunks is not None:
            # RFC 3030: every RCPT comes before the first BDAT; the message
            # is already being stored for the recipients accepted so far.
            self._reply(Reply(503, "5.5.1", "Error: RCPT not allowed after BDAT"))
            return
        match = _RCPT.match(argument)
        if match is None:
            self._reply(Reply(501, "5.5.4", "Syntax: RCPT TO:<address>"))
            return
        rawPath, parameters = match.group(1), match.group(2) or b""
        if parameters.strip():
            self._reply(Reply(555, "5.5.4", "Error: unsupported RCPT parameter"))
            return
        if len(tx.recipients) >= self._limits.maxRecipients:
            # A pipelining client may send many more before it reads this:
            # as many again are not its errors (Postfix's
            # smtpd_recipient_overshoot_limit), or it would be hung up on
            # with the recipients it already has.
            tx.overshoot += 1
            self._reply(Reply(452, "4.5.3", "Error: too many recipients"), tx.overshoot > self._limits.maxRecipients)
            return
        try:
            path = parsePath(rawPath, utf8=self.session.utf8)
        except NeedsSMTPUTF8:
            tx.rejected.append(rawPath.decode("utf-8", "replace"))
            self._reply(Reply(553, "5.6.7", "Error: non-ASCII address requires SMTPUTF8"))
            return
        except AddressSyntaxError as e:
            tx.rejected.append(rawPath.decode("utf-8", "replace"))
            self._reply(Reply(501, "5.1.3", f"Bad recipient address syntax: {e}"))
            return
        user = User(PathAddress(rawPath, path), self._helo, self, tx.origin)

        def accepted(messageFactory: Callable[[], IMessage]) -> None:
            tx.recipients.append((user, messageFactory))
            self._reply(Reply(250, "2.1.5", "Ok"))

        def refused(failure: Failure) -> None:
            tx.rejected.append(path.mailbox)
            if failure.check(SMTPServerError):
                self._replyFromError(failure.value, "5.1.1")
            else:
                self._log.failure("Recipient validation failed", failure)
                self._reply(Reply(451, "4.3.0", "Error: local error in processing"))

        self._waitFor(maybeDeferred(tx.delivery.validateTo, user), accepted, refused)

    # The message

    def _checkReadyForMessage(self, tx: _Transaction | None) -> Reply | None:
        if tx is None:
            return Reply(503, "5.5.1", "Error: need MAIL command")
        if not tx.recipients:
            return Reply(554, "5.5.1", "Error: no valid recipients")
        return None

    def smtp_DATA(self, argument: bytes) -> None:
        tx = self._tx
        problem = self._checkReadyForMessage(tx)
        if problem is not None:
            self._reply(problem)
            return
        assert tx is not None
        if tx.chunks is not None:
            self._reply(Reply(503, "5.5.1", "Error: DATA not allowed after BDAT"))
            return
        if argument.strip():
            self._reply(Reply(501, "5.5.4", "Syntax: DATA"))
            return
        if not self._openMessages(tx):
            return
        self._decoder = DataDecoder(self._limits.bareNewline == "reject")
        self.setTimeout(self._limits.dataTimeout)
        self._reply(Reply(354, None, "End data with <CR><LF>.<CR><LF>"))

    def smtp_BDAT(self, argument: bytes) -> None:
        match = _BDAT.match(argument)
        if match is None:
            self._reply(Reply(501, "5.5.4", "Syntax: BDAT count [LAST]"))
            return
        tx = self._tx
        problem = self._checkReadyForMessage(tx)
        # RFC 3030: chunks the client had already pipelined behind a refused
        # one are read and thrown away.  They are answered as out of
        # sequence, but are junk rather than the client's errors.
        self._chunkCounted = not (tx is None and self._afterRefusedChunk)
        if problem is None and tx is not None and tx.chunks is None:
            tx.chunks = ChunkDecoder(self._limits.bareNewline == "reject")
            if not self._openMessages(tx, answer=False):
                problem = tx.failure
        self._chunkRemaining = int(match.group(1))
        self._chunkLast = match.group(2) is not None
        self._chunkProblem = problem
        self.setTimeout(self._limits.dataTimeout)

    def _openMessages(self, tx: _Transaction, answer: bool = True) -> bool:
        """
        Call each recipient's message factory; recipients that share a
        message object (as all of MailHarbor's do) share its stream.

        @param answer: Whether to reply now if that fails (DATA), rather
            than after the chunk (BDAT), which leaves the failure in the
            transaction.
        @return: whether the messages are open.
        """
        unique: dict[int, IMessageStream] = {}
        try:
            for user, messageFactory in tx.recipients:
                message = messageFactory()
                if id(message) not in unique:
                    stream = message if IMessageStream.providedBy(message) else _LineMessage(message)
                    unique[id(message)] = stream
                    header = tx.delivery.receivedHeader(
                        self._helo, tx.origin, [u for u, _ in tx.recipients]
                    )
                    if header:
                        stream.lineReceived(header)
        except Exception:
            failure = Failure()
            for stream in unique.values():
                stream.connectionLost()
            if answer:
                self._replyToFailure(failure)
                self._endTransaction(f"refused: {failure.getErrorMessage()}")
            else:
                tx.failure = self._failureReply(failure)
            return False
        tx.messages = list(unique.values())
        return True

    def _bodyReceived(self, data: bytes) -> bytes:
        """
        Take message data; return what follows it (the next commands).
        """
        tx = self._tx
        if self._decoder is not None:
            assert tx is not None
            body, rest = self._decoder.feed(data)
            # The size as sent, counting each line end as CRLF (RFC 1870).
            tx.size += len(body) + body.count(b"\n")
            self._store(tx, body, self._decoder.bareNewline)
            if self._decoder.done:
                self._decoder = None
                self.setTimeout(self._limits.commandTimeout)
                self._endOfMessage(tx)
                self._finishShutdown()
            return rest
        assert self._chunkRemaining is not None
        count = min(self._chunkRemaining, len(data))
        chunk, rest = data[:count], data[count:]
        self._chunkRemaining -= count
        if tx is not None and self._chunkProblem is None and tx.chunks is not None:
            tx.size += count
            self._store(tx, tx.chunks.feed(chunk), tx.chunks.bareNewline)
            if self._chunkRemaining == 0 and self._chunkLast:
                self._store(tx, tx.chunks.finish(), tx.chunks.bareNewline)
        if self._chunkRemaining == 0:
            self._chunkRemaining = None
            self.setTimeout(self._limits.commandTimeout)
            self._endOfChunk(tx)
            self._finishShutdown()
        return rest

    def _store(self, tx: _Transaction, body: bytes, bareNewline: bool) -> None:
        """
        Pass message data on, unless the message is already refused; refuse
        it (and drop what was written) once it breaks a limit.
        """
        if tx.failure is not None:
            return
        limit = self._limits.maxMessageSize
        if limit and tx.size > limit:
            tx.failure = SIZE_EXCEEDED
        elif bareNewline:
            tx.failure = BARE_NEWLINE
        elif body:
            try:
                for message in tx.messages:
                    message.dataReceived(body)
            except Exception:
                tx.failure = self._failureReply(Failure())
        if tx.failure is not None:
            self._abortMessages(tx)

    def _endOfChunk(self, tx: _Transaction | None) -> None:
        problem, self._chunkProblem = self._chunkProblem, None
        if problem is not None:
            self._reply(problem, self._chunkCounted)
            if not self._chunkCounted:
                self._countJunk()
                self._afterRefusedChunk = not self._chunkLast
            elif tx is not None and tx.chunks is not None:
                self._endTransaction(f"failed: {problem.code} {problem.text}")
                self._afterRefusedChunk = not self._chunkLast
        elif tx is None:
            return
        elif tx.failure is not None:
            self._afterRefusedChunk = not self._chunkLast
            self._endOfMessage(tx)
        elif self._chunkLast:
            self._endOfMessage(tx)
        else:
            self._reply(Reply(250, "2.0.0", f"Ok: {tx.size} octets received"))

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
            # As Postfix: the error and junk limits count "without
            # delivering mail".
            self._errorsSinceDelivery = self._junk = 0
            self._reply(Reply(250, "2.0.0", text))
            self._logTransaction(tx, "stored" if ids else "accepted and discarded", ids)

        self._waitFor(results, stored, self._replyToFailure)

    def _abortMessages(self, tx: _Transaction) -> None:
        messages, tx.messages = tx.messages, []
        for message in messages:
            try:
                message.connectionLost()
            except Exception:
                self._log.failure("Error discarding a message")

    # Transactions and their log line

    def _endTransaction(self, result: str) -> None:
        """
        End the transaction in progress, if any, dropping any message it
        was receiving.
        """
        tx, self._tx = self._tx, None
        self._decoder = None
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
            code=self._lastCode,
            duration=self._clock.seconds() - tx.started,
            sender=tx.sender.mailbox,
            recipients=",".join(bytes(user.dest).decode("utf-8", "replace") for user, _ in tx.recipients)
            or "-",
            rejected=",".join(tx.rejected) or "-",
            size=tx.size,
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
            from twisted.internet import reactor as clock  # type: ignore[assignment]
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

    def buildProtocol(self, addr: IAddress) -> HarborESMTP:
        protocol = HarborESMTP(
            self.deliverer, self.settings, self.connections, self.failures, self._clock, self.registry
        )
        protocol.factory = self
        return protocol
