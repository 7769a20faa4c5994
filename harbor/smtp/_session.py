# -*- test-case-name: harbor.test.test_session -*-
"""
The SMTP conversation without I/O, as h11 is for HTTP: bytes in, events
out; replies in, bytes out.

    session = SMTPSession("mx.example.com", Limits())
    transport.write(session.greet(Reply(220, None, "mx.example.com ESMTP")))
    session.receiveData(data)
    while not isinstance(event := session.nextEvent(), Wait):
        ...
        transport.write(session.send(reply))

L{SMTPSession} owns everything about the conversation that needs neither a
clock nor a socket nor a mailbox: framing command lines and message bodies,
line-length limits, which verbs exist, the order commands may come in,
parsing MAIL, RCPT and BDAT and their ESMTP parameters, the SASL exchange,
counting message sizes and the client's errors, and writing replies.  What
it cannot decide (whether a sender, recipient or greeting is welcome,
whether a password is right, whether a message was stored) it hands over as
an event (L{harbor.smtp._events}), and learns the outcome from the reply the
application sends: a 2xx to L{MailFrom} starts a transaction, a 354 to
L{StartData} starts the body, a 235 to L{Login} authenticates, and so on.

Until an event that needs a reply has had it, the session gives no further
event and reads nothing more: that is what keeps the replies to pipelined
commands in order (RFC 2920).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from harbor.limits import Limits
from harbor.smtp._errors import JUNK_VERBS, ClientErrors
from harbor.smtp._events import (
    NEED_DATA,
    PAUSED,
    Answer,
    BodyReceived,
    BodyRefused,
    ChunkEnded,
    ChunkStarted,
    Event,
    Greeted,
    Login,
    MailFrom,
    MessageEnded,
    Quit,
    RcptTo,
    Reset,
    StartData,
    StartTLSRequested,
    TooManyErrors,
    Verify,
    Wait,
)
from harbor.smtp._framing import (
    LINE_LIMITS,
    MAX_BUFFERED_LINE,
    MAX_COMMAND_LINE,
    ChunkDecoder,
    DataDecoder,
    InputBuffer,
    LineTooLong,
)
from harbor.smtp._parse import chunkSize, heloName, mailFrom, rcptAddress, rcptTo
from harbor.smtp._replies import (
    ALREADY_AUTHENTICATED,
    AUTH_IN_TRANSACTION,
    AUTH_NEEDS_TLS,
    AUTH_NOT_ENABLED,
    AUTH_REQUIRED,
    AUTH_SYNTAX,
    BARE_NEWLINE,
    BDAT_SYNTAX,
    DATA_AFTER_BDAT,
    DATA_SYNTAX,
    EHLO_FIRST,
    EXPN_UNSUPPORTED,
    HELP,
    LINE_TOO_LONG,
    NEED_MAIL,
    NESTED_MAIL,
    NO_SERVICE,
    NO_VALID_RECIPIENTS,
    OK,
    RCPT_AFTER_BDAT,
    SIZE_EXCEEDED,
    STARTTLS_SYNTAX,
    TLS_ACTIVE,
    TLS_REQUIRED,
    TLS_UNAVAILABLE,
    TOO_MANY_RECIPIENTS,
    UNRECOGNIZED,
    UNSUPPORTED_MECHANISM,
    VRFY_SYNTAX,
    Reply,
    render,
)
from harbor.smtp._sasl import MECHANISMS, SASLExchange

# The events that need no reply: the session carries on reading after them.
_UNANSWERED = frozenset({ChunkStarted, BodyReceived, BodyRefused})


class SMTPSession:
    """
    The server's side of one SMTP conversation: see the module docstring.

    The class is longer than the usual limit because it is one state
    machine: the checks of each command read the state the replies to the
    others left, and splitting them apart would spread one rule over
    several classes.  What needs none of that state is in its own module:
    framing (L{harbor.smtp._framing}), argument parsing
    (L{harbor.smtp._parse}), the SASL exchange (L{harbor.smtp._sasl}) and
    the events (L{harbor.smtp._events}).

    @ivar verb: The verb of the last command line, for log lines (C{"-"}
        before any).
    @ivar linesRead: How many command lines (SASL responses and lines too
        long among them) have been read, so the application can tell when
        the next one is due.
    @ivar lastCode: The code of the last reply sent.
    @ivar clientErrors: The client's errors (L{ClientErrors}).
    @ivar messageSize: The size of the current transaction's message so far
        (or of the last transaction's, until the next MAIL), as sent: a line
        end counts two octets (RFC 1870).  A chunk refused unread does not
        count.
    @ivar tlsActive: Whether TLS is up; the application says so.
    @ivar tlsAvailable: Whether STARTTLS is possible on this connection
        (the server has a certificate, the transport can start TLS).
    @ivar errorLimitReached: Whether the session has hung up on the client
        for its errors: the application ends the connection.
    """

    def __init__(
        self,
        hostname: str,
        limits: Limits,
        *,
        tlsAvailable: bool = False,
        tlsActive: bool = False,
        requireTLS: bool = False,
        submission: bool = False,
        authentication: bool = False,
        plaintextAuthentication: bool = False,
    ) -> None:
        """
        @param hostname: The server's name, for the EHLO reply and 421s.
        @param limits: Sizes, recipients, errors, bare LF handling.
        @param requireTLS: Whether MAIL needs TLS first (RFC 3207).
        @param submission: Whether MAIL needs AUTH first (RFC 6409).
        @param authentication: Whether AUTH is enabled at all.
        @param plaintextAuthentication: Whether AUTH is offered without TLS.
        """
        self._hostname = hostname
        self._limits = limits
        self._detectBareNewline = limits.bareNewline == "reject"
        self._requireTLS = requireTLS
        self._submission = submission
        self._authentication = authentication
        self._plaintextAuthentication = plaintextAuthentication
        self.tlsAvailable = tlsAvailable
        self.tlsActive = tlsActive

        self._input = InputBuffer(MAX_BUFFERED_LINE)
        # Message data received with nothing buffered before it, kept as it
        # came: decoded without a copy into the buffer and out again.
        self._unread: bytes | None = None
        # Whether the queued events came from such data (see bodyInHand).
        self._inHand = False
        self._events: deque[Event] = deque()
        # The event whose reply the session is waiting for.
        self._awaiting: Event | None = None
        self._closed = False
        # A 554 greeting: nothing but QUIT (RFC 5321 section 3.1).
        self._refused = False

        self.verb = "-"
        self.linesRead = 0
        self.lastCode = 0
        self.clientErrors = ClientErrors(limits)
        self.errorLimitReached = False

        # What the client has said, which STARTTLS forgets (RFC 3207).
        self._greeted = False
        self._esmtp = False
        self._authenticated = False
        self._sasl: SASLExchange | None = None
        # The server's refusal of the last greeting, repeated to MAIL until
        # a greeting passes: its verdict, not something the client said, so
        # STARTTLS keeps it.
        self._greetingRefusal: Reply | None = None

        # The transaction.
        self._inTransaction = False
        self._utf8 = False
        self._recipients = 0
        # RCPTs refused for going over the recipient limit.
        self._overshoot = 0
        # The BDAT decoder, once the transaction's first chunk has come.
        self._chunks: ChunkDecoder | None = None
        self.messageSize = 0
        # Why the message being received will be refused; the rest of it is
        # read and thrown away.
        self._failure: Reply | None = None

        # The body being read: DATA's decoder, or the BDAT chunk's state.
        self._decoder: DataDecoder | None = None
        self._chunkRemaining: int | None = None
        self._chunkLast = False
        # Whether the chunk's bytes go into the message.
        self._chunkStored = False
        self._chunkRefusal: Reply | None = None
        # Whether the chunk's refusal counts as the client's error.
        self._chunkCounted = True
        # Whether the refusal is the application's, which ends the
        # transaction.
        self._chunkEndsTransaction = False
        # Whether a BDAT transaction was refused before its LAST chunk, so
        # the chunks the client had pipelined behind it are expected.
        self._afterRefusedChunk = False

    # What the application asks

    @property
    def errors(self) -> int:
        """How many errors the client has made in all."""
        return self.clientErrors.total

    @property
    def chunkedSize(self) -> int | None:
        """
        The size so far of a message being sent in BDAT chunks, from its
        first chunk until its last; L{None} outside such a message.  The
        client's data rate is the message's, across its chunks.
        """
        return None if self._chunks is None else self.messageSize

    @property
    def receivingBody(self) -> bool:
        """
        Whether a DATA body or a BDAT chunk is being read.
        """
        return self._decoder is not None or self._chunkRemaining is not None

    @property
    def buffered(self) -> int:
        """
        How many bytes received are not consumed yet.
        """
        return len(self._input) + (0 if self._unread is None else len(self._unread))

    @property
    def bodyInHand(self) -> bool:
        """
        Whether the session holds message data that arrived with nothing
        buffered before it, or the events from it.  Such data is only
        stored, answered at most once at its end, so the application may
        take it even while the client is not reading replies; anything
        behind it waits.
        """
        return self._unread is not None or self._inHand

    @property
    def canStartTLS(self) -> bool:
        """
        Whether STARTTLS would be accepted now.
        """
        return self.tlsAvailable and not self.tlsActive

    def helloReply(self, esmtp: bool) -> Reply:
        """
        The 250 reply accepting a greeting: this server's name and, for
        EHLO, the extensions this session offers now.
        """
        lines = [self._hostname]
        if esmtp:
            lines += [
                "PIPELINING",
                f"SIZE {self._limits.maxMessageSize}",
                "8BITMIME",
                "SMTPUTF8",
                "CHUNKING",
                "ENHANCEDSTATUSCODES",
            ]
            if self.canStartTLS:
                lines.append("STARTTLS")
            if self._authOffered():
                lines.append("AUTH " + " ".join(m.decode() for m in MECHANISMS))
        return Reply(250, None, "\n".join(lines))

    # What the application tells

    def greet(self, reply: Reply) -> bytes:
        """
        The server's greeting.  A 554 one refuses the service: every command
        but QUIT gets 503 (RFC 5321 section 3.1).
        """
        if reply.code == 554:
            self._refused = True
        return self.send(reply, counted=False)

    def receiveData(self, data: bytes) -> None:
        """
        Take bytes from the client.
        """
        if self._closed:
            return
        if self._unread is not None:
            self._input.feed(self._unread)
            self._unread = None
        receivingBody = self._decoder is not None or self._chunkRemaining is not None
        if receivingBody and self._awaiting is None and not self._events and not len(self._input):
            self._unread = data
        else:
            self._input.feed(data)

    def refuseMessage(self, reply: Reply) -> None:
        """
        The application could not store the message being received (its
        storage failed): the rest of its data is read and not passed on,
        rather than decoded into events the application would drop.
        """
        if self._failure is None:
            self._failure = reply

    def refuseChunk(self, reply: Reply) -> None:
        """
        The application cannot take the message a L{ChunkStarted} starts
        (its message could not be opened): the chunk is read and thrown
        away, its L{ChunkEnded} carries C{reply}, and that ends the
        transaction.
        """
        self._chunkStored = False
        self._chunkRefusal = reply
        self._chunkEndsTransaction = True

    def close(self) -> None:
        """
        The connection is closing: read nothing more, give no more events,
        and hang up on no one.
        """
        self._closed = True

    def send(self, reply: Reply, counted: bool = True) -> bytes:
        """
        The bytes of a reply to the event waiting for one, or of one the
        server sends unasked (a greeting, a 421).

        A reply of 400 or more is one of the client's errors, unless not
        C{counted}.  Once there are too many since the last message stored,
        as Postfix's hard error limit does, the bytes end with a 421 and
        L{errorLimitReached} is set: a client gets no endless supply of
        refusals, and no endless log lines.
        """
        event, self._awaiting = self._awaiting, None
        # A greeting is answered as it asked: EHLO's refusal already carries
        # enhanced codes, whatever the client said before.
        esmtp = event.esmtp if type(event) is Greeted else self._esmtp
        data = render(reply, esmtp)
        self.lastCode = reply.code
        hangUp = reply.code >= 400 and counted and self._countError()
        answered = None if event is None else _ANSWERED.get(type(event))
        if answered is not None:
            hangUp = answered(self, event, reply) or hangUp
        if hangUp:
            farewell = Reply(421, "4.7.0", f"{self._hostname} Error: too many errors")
            data += render(farewell, esmtp)
            self.lastCode = farewell.code
        return data

    def nextEvent(self) -> Event | Wait:
        """
        The next thing the client did that the application must act on.

        @return: an event; or L{NEED_DATA} once everything received is
            consumed; or L{PAUSED} while an event waits for its reply, or
            once the session is closed.
        """
        events = self._events
        while not events:
            if self._awaiting is not None or self._closed:
                return PAUSED
            if self._decoder is not None or self._chunkRemaining is not None:
                if not self._readBody():
                    return NEED_DATA
                continue
            if self._unread is not None:
                self._input.feed(self._unread)
                self._unread = None
            line = self._input.nextLine()
            if line is None:
                return NEED_DATA
            self.linesRead += 1
            # One line, one event: no need to queue it.
            event = self._command(line)
            break
        else:
            # Events are queued (by reading a body): the oldest first.
            event = events.popleft()
            if not events:
                self._inHand = False
        if type(event) not in _UNANSWERED:
            self._awaiting = event
        return event

    # Replies

    # What the application's replies say.  Each returns whether the reply
    # used up the client's errors.

    def _greetingAnswered(self, event: Greeted, reply: Reply) -> bool:
        if reply.code < 400:
            self._greeted = True
            self._esmtp = event.esmtp
            self._greetingRefusal = None
            self._endTransaction()
        elif not self._greeted:
            # RFC 5321 section 4.1.4: a refused greeting leaves the session
            # as it was; a client not yet greeted is refused again at MAIL
            # until a greeting passes, or ignoring the refusal would be
            # enough to get past it.
            self._greetingRefusal = reply
        return False

    def _mailAnswered(self, event: MailFrom, reply: Reply) -> bool:
        if reply.code < 400:
            self._startTransaction(event.utf8)
        return False

    def _rcptAnswered(self, event: RcptTo, reply: Reply) -> bool:
        if reply.code < 400:
            self._recipients += 1
        return False

    def _dataAnswered(self, event: StartData, reply: Reply) -> bool:
        if reply.code == 354:
            self._decoder = DataDecoder(self._detectBareNewline)
        else:
            # The message could not be opened.
            self._endTransaction()
        return False

    def _messageAnswered(self, event: MessageEnded, reply: Reply) -> bool:
        if reply.code < 400:
            self.clientErrors.delivered()
        return False

    def _startTLSAnswered(self, event: StartTLSRequested, reply: Reply) -> bool:
        if reply.code == 220:
            self._restart()
        return False

    def _loginAnswered(self, event: Login, reply: Reply) -> bool:
        if reply.code == 235:
            self._authenticated = True
        return False

    def _chunkAnswered(self, event: ChunkEnded, reply: Reply) -> bool:
        """
        Learn from the reply to a chunk.  RFC 3030: chunks the client had
        already pipelined behind a refused one are read and thrown away;
        they are answered as out of sequence, but are junk rather than the
        client's errors.
        """
        hangUp = False
        if event.refusal is not None:
            if not event.counted:
                hangUp = self._countJunk()
                self._afterRefusedChunk = not event.last
            elif self._chunkEndsTransaction:
                self._endTransaction()
                self._afterRefusedChunk = not event.last
        elif reply.code >= 400:
            self._endTransaction()
            self._afterRefusedChunk = not event.last
        elif event.last:
            self._endTransaction()
            self.clientErrors.delivered()
        return hangUp

    def _countError(self) -> bool:
        """
        Count one error (a 4xx or 5xx reply, or junk past its limit).

        @return: whether it was one too many since the last message stored.
        """
        if self.clientErrors.error() and not self._closed:
            self._closed = True
            self.errorLimitReached = True
            return True
        return False

    def _countJunk(self) -> bool:
        """
        Count a command that moves no mail (L{ClientErrors.junk}).

        @return: whether that was the client's last error allowed.
        """
        return self.clientErrors.junk() and self._countError()

    # The state a transaction leaves

    def _startTransaction(self, utf8: bool) -> None:
        self._inTransaction = True
        self._utf8 = utf8
        self._recipients = 0
        self._overshoot = 0
        self._chunks = None
        self._failure = None
        self.messageSize = 0

    def _endTransaction(self) -> None:
        self._inTransaction = False
        self._recipients = 0
        self._chunks = None
        self._decoder = None

    def _restart(self) -> None:
        """
        TLS is starting: forget everything the client said (RFC 3207
        section 4.2).
        """
        self._greeted = self._esmtp = self._authenticated = False
        self._sasl = None
        self._endTransaction()

    def _authOffered(self) -> bool:
        return self._authentication and (self.tlsActive or self._plaintextAuthentication)

    # Commands

    def _command(self, line: bytes | LineTooLong) -> Event:
        """
        The event for one command line (or SASL response).
        """
        if isinstance(line, LineTooLong):
            return Answer(LINE_TOO_LONG)
        if self._sasl is not None:
            event = self._sasl.respond(line)
            if self._sasl.done:
                self._sasl = None
            return event
        parts = line.strip().split(None, 1)
        verb = parts[0].upper() if parts else b""
        argument = parts[1] if len(parts) == 2 else b""
        self.verb = verb[:16].decode("ascii", "replace") or "-"
        if verb != b"BDAT":
            self._afterRefusedChunk = False
        if len(line) + 2 > LINE_LIMITS.get(verb, MAX_COMMAND_LINE):
            return Answer(LINE_TOO_LONG)
        if self._refused and verb != b"QUIT":
            return Answer(NO_SERVICE)
        if verb in JUNK_VERBS and self._countJunk():
            return TooManyErrors(Reply(421, "4.7.0", f"{self._hostname} Error: too many errors"))
        command = _COMMANDS.get(verb)
        if command is None:
            return Answer(UNRECOGNIZED)
        return command(self, argument)

    def _hello(self, argument: bytes, esmtp: bool) -> Event:
        name = heloName(argument)
        if name is None:
            return Answer(Reply(501, "5.5.4", f"Syntax: {'EHLO' if esmtp else 'HELO'} hostname"))
        return Greeted(name, esmtp)

    def _vrfy(self, argument: bytes) -> Event:
        if not argument.strip():
            return Answer(VRFY_SYNTAX)
        return Verify(argument)

    def _rset(self, argument: bytes) -> Event:
        self._endTransaction()
        return Reset()

    def _starttls(self, argument: bytes) -> Event:
        if argument.strip():
            return Answer(STARTTLS_SYNTAX)
        if self.tlsActive:
            return Answer(TLS_ACTIVE)
        if not self.canStartTLS:
            return Answer(TLS_UNAVAILABLE)
        # CVE-2011-0411: whatever came with the command in plaintext must
        # not be executed inside TLS.
        return StartTLSRequested(self._input.discard())

    def _auth(self, argument: bytes) -> Event:
        if not self._authentication:
            return Answer(AUTH_NOT_ENABLED)
        if not self._authOffered():
            return Answer(AUTH_NEEDS_TLS)
        if not self._esmtp:
            return Answer(EHLO_FIRST)
        if self._authenticated:
            return Answer(ALREADY_AUTHENTICATED)
        if self._inTransaction:
            return Answer(AUTH_IN_TRANSACTION)
        parts = argument.split()
        if not parts or len(parts) > 2:
            return Answer(AUTH_SYNTAX)
        mechanism = parts[0].upper()
        if mechanism not in MECHANISMS:
            return Answer(UNSUPPORTED_MECHANISM)
        exchange = SASLExchange(mechanism)
        event = exchange.challenge() if len(parts) == 1 else exchange.respond(parts[1])
        if not exchange.done:
            self._sasl = exchange
        return event

    def _mail(self, argument: bytes) -> Event:
        if self._inTransaction:
            return Answer(NESTED_MAIL)
        if self._greetingRefusal is not None:
            # As Postfix's delayed HELO restrictions: the greeting's own
            # refusal, a 4xx (try again later) or a 5xx.
            return Answer(self._greetingRefusal)
        if self._requireTLS and not self.tlsActive:
            return Answer(TLS_REQUIRED)
        if self._submission and not self._authenticated:
            return Answer(AUTH_REQUIRED)
        event = mailFrom(argument, self._limits.maxMessageSize)
        return Answer(event) if isinstance(event, Reply) else event

    def _rcpt(self, argument: bytes) -> Event:
        if not self._inTransaction:
            return Answer(NEED_MAIL)
        if self._chunks is not None:
            # RFC 3030: every RCPT comes before the first BDAT; the message
            # is already being stored for the recipients accepted so far.
            return Answer(RCPT_AFTER_BDAT)
        address = rcptAddress(argument)
        if isinstance(address, Reply):
            return Answer(address)
        if self._recipients >= self._limits.maxRecipients:
            # A pipelining client may send many more before it reads this:
            # as many again are not its errors (Postfix's
            # smtpd_recipient_overshoot_limit), or it would be hung up on
            # with the recipients it already has.
            self._overshoot += 1
            return Answer(TOO_MANY_RECIPIENTS, self._overshoot > self._limits.maxRecipients)
        return rcptTo(address, self._utf8)

    def _messageProblem(self) -> Reply | None:
        """
        Why a message cannot start now, if it cannot.
        """
        if not self._inTransaction:
            return NEED_MAIL
        if not self._recipients:
            return NO_VALID_RECIPIENTS
        return None

    def _data(self, argument: bytes) -> Event:
        problem = self._messageProblem()
        if problem is not None:
            return Answer(problem)
        if self._chunks is not None:
            return Answer(DATA_AFTER_BDAT)
        if argument.strip():
            return Answer(DATA_SYNTAX)
        return StartData()

    def _bdat(self, argument: bytes) -> Event:
        chunk = chunkSize(argument)
        if chunk is None:
            return Answer(BDAT_SYNTAX)
        problem = self._messageProblem()
        self._chunkCounted = not (not self._inTransaction and self._afterRefusedChunk)
        first = problem is None and self._chunks is None
        if first:
            self._chunks = ChunkDecoder(self._detectBareNewline)
        self._chunkRemaining, self._chunkLast = size, last = chunk
        self._chunkRefusal = problem
        self._chunkStored = problem is None
        self._chunkEndsTransaction = False
        return ChunkStarted(size, last, first)

    # Message bodies

    def _readBody(self) -> bool:
        """
        Decode the body data at hand into events.

        @return: whether there was any to decode (a zero-size chunk always
            has its end).
        """
        data = self._unread
        inHand = data is not None
        if data is not None:
            self._unread = None
        elif self._chunkRemaining is not None:
            if self._chunkRemaining and not len(self._input):
                return False
            # Only this chunk: the pipelined commands and chunks after it
            # stay where they are, not copied out and back for every chunk.
            self._chunkReceived(self._input.take(self._chunkRemaining))
            return True
        elif len(self._input):
            data = self._input.takeAll()
        else:
            return False
        if self._chunkRemaining is not None:
            rest = self._chunkReceived(data)
        else:
            rest = self._dataReceived(data)
        if rest:
            self._input.feed(rest)
        self._inHand = inHand and bool(self._events)
        return True

    def _dataReceived(self, data: bytes) -> bytes:
        """
        Decode DATA body bytes.

        @return: what follows the body (the next commands).
        """
        decoder = self._decoder
        assert decoder is not None
        body, rest = decoder.feed(data)
        self.messageSize += len(body) + body.count(b"\n")
        self._store(body, decoder.bareNewline)
        if decoder.done:
            self._endTransaction()
            self._events.append(MessageEnded())
        return rest

    def _chunkReceived(self, data: bytes) -> bytes:
        """
        Take BDAT chunk bytes.

        @return: what follows the chunk.
        """
        assert self._chunkRemaining is not None
        count = min(self._chunkRemaining, len(data))
        chunk, rest = data[:count], data[count:]
        self._chunkRemaining -= count
        if self._chunkStored:
            chunks = self._chunks
            assert chunks is not None
            self.messageSize += count
            self._store(chunks.feed(chunk), chunks.bareNewline)
            if self._chunkRemaining == 0 and self._chunkLast:
                self._store(chunks.finish(), chunks.bareNewline)
        if self._chunkRemaining == 0:
            self._chunkRemaining = None
            self._events.append(ChunkEnded(self._chunkLast, self._chunkRefusal, self._chunkCounted))
        return rest

    def _store(self, body: bytes, bareNewline: bool) -> None:
        """
        Pass message data on, unless the message is already refused; refuse
        it once it breaks a limit.
        """
        if self._failure is not None:
            return
        limit = self._limits.maxMessageSize
        if limit and self.messageSize > limit:
            self._failure = SIZE_EXCEEDED
        elif bareNewline:
            self._failure = BARE_NEWLINE
        elif body:
            self._events.append(BodyReceived(body))
            return
        else:
            return
        self._events.append(BodyRefused(self._failure))


# The event for each command, given the session and the argument.
_COMMANDS: dict[bytes, Callable[[SMTPSession, bytes], Event]] = {
    b"HELO": lambda session, argument: session._hello(argument, esmtp=False),
    b"EHLO": lambda session, argument: session._hello(argument, esmtp=True),
    b"NOOP": lambda session, argument: Answer(OK),
    b"HELP": lambda session, argument: Answer(HELP),
    b"EXPN": lambda session, argument: Answer(EXPN_UNSUPPORTED),
    b"VRFY": SMTPSession._vrfy,
    b"RSET": SMTPSession._rset,
    b"QUIT": lambda session, argument: Quit(),
    b"STARTTLS": SMTPSession._starttls,
    b"AUTH": SMTPSession._auth,
    b"MAIL": SMTPSession._mail,
    b"RCPT": SMTPSession._rcpt,
    b"DATA": SMTPSession._data,
    b"BDAT": SMTPSession._bdat,
}

# What the reply to each kind of event tells the session.
_ANSWERED: dict[type, Callable[[SMTPSession, Any, Reply], bool]] = {
    Greeted: SMTPSession._greetingAnswered,
    MailFrom: SMTPSession._mailAnswered,
    RcptTo: SMTPSession._rcptAnswered,
    StartData: SMTPSession._dataAnswered,
    MessageEnded: SMTPSession._messageAnswered,
    ChunkEnded: SMTPSession._chunkAnswered,
    StartTLSRequested: SMTPSession._startTLSAnswered,
    Login: SMTPSession._loginAnswered,
}
