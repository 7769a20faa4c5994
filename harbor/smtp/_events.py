# -*- test-case-name: harbor.test.test_session -*-
"""
What L{harbor.smtp._session.SMTPSession.nextEvent} hands the application.

Most events stand for a command, or the end of a message, and need a reply:
the session gives no further event until the application has passed one to
L{SMTPSession.send}.  That is what keeps the replies to pipelined commands in
order (RFC 2920).  The events of a message body being read (L{ChunkStarted},
L{BodyReceived}, L{BodyRefused}) need none.

No I/O and no Twisted, like the session.
"""

from __future__ import annotations

import enum
from typing import TypeAlias

from attrs import field, frozen

from harbor.address import Path
from harbor.smtp._replies import Reply


class Wait(enum.Enum):
    """
    Why L{SMTPSession.nextEvent} has no event to give.
    """

    NEED_DATA = "NEED_DATA"
    """
    Everything received is consumed: more bytes are needed.
    """

    PAUSED = "PAUSED"
    """
    An event is waiting for its reply, or the session is closed.
    """


NEED_DATA = Wait.NEED_DATA
PAUSED = Wait.PAUSED


@frozen
class Answer:
    """
    A command the session answered itself: a syntax error, a command out
    of sequence, a refused parameter, a line too long, or one that needs
    nothing from the application (NOOP, HELP, a SASL challenge).

    @ivar reply: The reply to send.
    @ivar counted: Whether, if a refusal, it counts as one of the client's
        errors (see L{SMTPSession.send}).
    """

    reply: Reply
    counted: bool = True


@frozen
class TooManyErrors:
    """
    A command past the junk limit was the client's last error allowed: the
    session is closed, and the application sends C{reply} and hangs up.
    """

    reply: Reply


@frozen
class Greeted:
    """
    HELO or EHLO with a well-formed name; the application accepts it with
    L{SMTPSession.helloReply} or refuses it.

    @ivar name: The name the client gave.
    @ivar esmtp: Whether it was EHLO.
    """

    name: bytes
    esmtp: bool


@frozen
class MailFrom:
    """
    MAIL FROM with a valid path and acceptable parameters; a 2xx reply
    starts the transaction.

    @ivar address: The path as the client sent it, brackets included.
    @ivar path: The parsed path (the null path has no mailbox).
    @ivar parameters: The ESMTP parameters, upper-case keyword and value,
        in the order given.
    @ivar utf8: Whether the transaction uses SMTPUTF8 (RFC 6531).
    """

    address: bytes
    path: Path
    parameters: tuple[tuple[bytes, bytes], ...] = ()
    utf8: bool = False


@frozen
class RcptTo:
    """
    RCPT TO with a valid path, within the recipient limit; a 2xx reply
    adds the recipient.

    @ivar address: The path as the client sent it.
    @ivar path: The parsed path.
    """

    address: bytes
    path: Path


@frozen
class RecipientRefused:
    """
    RCPT TO whose address the session refused; the application keeps it
    for the transaction's log line and sends C{reply}.

    @ivar address: The path as the client sent it.
    """

    address: bytes
    reply: Reply


@frozen
class StartData:
    """
    DATA in a transaction with recipients; a 354 reply starts the body,
    anything else ends the transaction.
    """


@frozen
class ChunkStarted:
    """
    BDAT: C{size} bytes of message follow, whatever the reply will be.

    @ivar first: Whether this chunk starts the transaction's message: the
        application opens its message now, or, if it cannot, calls
        L{SMTPSession.refuseChunk}.
    """

    size: int
    last: bool
    first: bool


@frozen
class BodyReceived:
    """
    The next bytes of the message: LF line ends, no dot-stuffing.
    """

    data: bytes = field(repr=lambda data: f"<{len(data)} bytes>")


@frozen
class BodyRefused:
    """
    The message broke a limit (its size, or a bare LF where they are
    refused): what was stored of it can go, the rest is read and discarded,
    and C{reply} answers it at its end.
    """

    reply: Reply


@frozen
class MessageEnded:
    """
    The DATA body is complete; the transaction is over whatever the reply.
    """


@frozen
class ChunkEnded:
    """
    A BDAT chunk is read.

    @ivar refusal: The session's refusal of the chunk (BDAT without a
        transaction or recipients), to send as the reply; if L{None}, the
        application answers: C{250} for a chunk taken, or the message's
        outcome after the last one.  Any reply of 400 or more ends the
        transaction.
    @ivar counted: Whether C{refusal} is one of the client's errors.
    """

    last: bool
    refusal: Reply | None = None
    counted: bool = True


@frozen
class StartTLSRequested:
    """
    STARTTLS, when TLS can be started: a 220 reply starts a new session
    (RFC 3207 section 4.2).

    @ivar discarded: How many bytes the client had sent after the command,
        thrown away unread (CVE-2011-0411).
    """

    discarded: int


@frozen
class Login:
    """
    A complete SASL exchange; a 235 reply authenticates the session.
    """

    mechanism: bytes
    username: bytes
    password: bytes = field(repr=False)


@frozen
class MalformedLogin:
    """
    A SASL response that is not a user name and password: a failed login.
    """

    mechanism: bytes


@frozen
class Verify:
    """
    VRFY with an argument.
    """

    argument: bytes


@frozen
class Reset:
    """
    RSET: the transaction, if any, is over.
    """


@frozen
class Quit:
    """
    QUIT.
    """


Event: TypeAlias = (
      Answer
    | TooManyErrors
    | Greeted
    | MailFrom
    | RcptTo
    | RecipientRefused
    | StartData
    | ChunkStarted
    | BodyReceived
    | BodyRefused
    | MessageEnded
    | ChunkEnded
    | StartTLSRequested
    | Login
    | MalformedLogin
    | Verify
    | Reset
    | Quit
)
