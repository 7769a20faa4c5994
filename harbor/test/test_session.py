"""
Tests for L{harbor.smtp._session}: the SMTP conversation alone, bytes in,
events and reply bytes out, with no Twisted, no transport and no reactor.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import unittest
from collections.abc import Callable

import harbor
from harbor.limits import Limits
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
    BARE_NEWLINE,
    BYE,
    CANNOT_VERIFY,
    LOCAL_ERROR,
    OK,
    RECIPIENT_OK,
    SENDER_OK,
    SIZE_EXCEEDED,
    START_DATA,
    TLS_READY,
    Reply,
)
from harbor.smtp._session import SMTPSession

HOSTNAME = "mx.example.com"
STORED = Reply(250, "2.0.0", "Ok: stored")
Responder = Callable[[SMTPSession, Event], "Reply | None"]
GREETING = Reply(220, None, f"{HOSTNAME} ESMTP MailHarbor")


class Application:
    """
    An application that takes everything: the reply it sends to each
    event, or L{None} for the events that need none.  A message the session
    refused gets that refusal at its end, as L{HarborESMTP} answers.
    """

    def __init__(self) -> None:
        self.failure: Reply | None = None

    def __call__(self, session: SMTPSession, event: Event) -> Reply | None:
        if isinstance(event, (Answer, RecipientRefused, TooManyErrors)):
            return event.reply
        if isinstance(event, Greeted):
            return session.helloReply(event.esmtp)
        if isinstance(event, BodyRefused):
            self.failure = event.reply
            return None
        if isinstance(event, ChunkEnded):
            if event.refusal is not None:
                return event.refusal
            if self.failure is None and not event.last:
                return Reply(250, "2.0.0", f"Ok: {session.messageSize} octets received")
        if isinstance(event, (MessageEnded, ChunkEnded)):
            failure, self.failure = self.failure, None
            return failure or STORED
        return _REPLIES.get(type(event))


_REPLIES: dict[type, Reply] = {
    MailFrom: SENDER_OK,
    RcptTo: RECIPIENT_OK,
    StartData: START_DATA,
    StartTLSRequested: TLS_READY,
    Login: AUTH_OK,
    MalformedLogin: AUTH_FAILED,
    Verify: CANNOT_VERIFY,
    Reset: OK,
    Quit: BYE,
}


def application(**overrides: Callable[[SMTPSession, Event], Reply | None]) -> Responder:
    """
    An L{Application} whose answer to the events named (by class name) is
    the given function's instead.
    """
    default = Application()

    def respond(session: SMTPSession, event: Event) -> Reply | None:
        override = overrides.get(type(event).__name__)
        return (override or default)(session, event)

    return respond


class Conversation:
    """
    A session and an application answering it, recording what passes.

    @ivar events: Every event, consecutive L{BodyReceived} merged (how the
        body is cut depends on how the bytes arrived).
    @ivar output: Every byte written to the client.
    """

    def __init__(
        self,
        respond: Responder | None = None,
        limits: Limits | None = None,
        greeting: Reply = GREETING,
        **rules: bool,
    ) -> None:
        self.session = SMTPSession(HOSTNAME, limits or Limits(), **rules)
        self.respond = respond or Application()
        self.events: list[Event] = []
        self.output = self.session.greet(greeting)

    def receive(self, data: bytes) -> bytes:
        """
        Give the session C{data}, answer every event, and return what was
        written meanwhile.
        """
        before = len(self.output)
        self.session.receiveData(data)
        self.drain()
        return self.output[before:]

    def drain(self) -> Wait:
        """
        Answer events until there are none.

        @return: why there are no more.
        """
        while True:
            event = self.session.nextEvent()
            if isinstance(event, Wait):
                return event
            if isinstance(event, BodyReceived) and self.events and isinstance(self.events[-1], BodyReceived):
                self.events[-1] = BodyReceived(self.events[-1].data + event.data)
            else:
                self.events.append(event)
            reply = self.respond(self.session, event)
            if reply is not None:
                counted = not isinstance(event, TooManyErrors) and getattr(event, "counted", True)
                self.output += self.session.send(reply, counted)

    def replies(self, data: bytes) -> list[bytes]:
        """
        The reply lines written for C{data}, without CRLF.
        """
        return self.receive(data).split(b"\r\n")[:-1]


def plain(user: bytes, password: bytes) -> bytes:
    return base64.b64encode(b"\0" + user + b"\0" + password)


ENVELOPE = b"EHLO client.example\r\nMAIL FROM:<s@x.org>\r\nRCPT TO:<a@example.com>\r\n"
PIPELINE = (
    ENVELOPE
    + b"DATA\r\nSubject: x\r\n\r\n..dot\r\nbody\r\n.\r\nBDAT 6 LAST\r\nQUIT\r\nMAIL FROM:<t@x.org>\r\nQUIT\r\n"
)


class FramingTests(unittest.TestCase):
    """
    Bytes in, events out, however the bytes arrive.
    """

    def test_everySplitGivesTheSameEvents(self) -> None:
        """
        A pipelined EHLO, MAIL, RCPT, DATA, body, BDAT and QUIT cut in two
        at every byte gives the same events and the same reply bytes as in
        one piece.
        """
        whole = Conversation()
        whole.receive(PIPELINE)
        for cut in range(1, len(PIPELINE)):
            split = Conversation()
            split.receive(PIPELINE[:cut])
            split.receive(PIPELINE[cut:])
            self.assertEqual((split.events, split.output), (whole.events, whole.output), cut)

    def test_byteAtATime(self) -> None:
        """
        The same pipeline fed one byte at a time gives the same events and
        replies too.
        """
        whole = Conversation()
        whole.receive(PIPELINE)
        trickle = Conversation()
        for i in range(len(PIPELINE)):
            trickle.receive(PIPELINE[i : i + 1])
        self.assertEqual((trickle.events, trickle.output), (whole.events, whole.output))

    def test_pipelineEvents(self) -> None:
        """
        The pipeline's events, in order: the body undotted with LF line
        ends, and a chunk outside a transaction read (its QUIT is data, not
        a command) and refused.
        """
        conversation = Conversation()
        conversation.receive(PIPELINE)
        events = conversation.events
        self.assertEqual(
            [type(e) for e in events],
            [Greeted, MailFrom, RcptTo, StartData, BodyReceived, MessageEnded, ChunkStarted, ChunkEnded,
             MailFrom, Quit],
        )
        self.assertEqual(events[4], BodyReceived(b"Subject: x\n\n.dot\nbody\n"))
        self.assertEqual(events[7], ChunkEnded(True, Reply(503, "5.5.1", "Error: need MAIL command")))

    def test_waitsForEachReply(self) -> None:
        """
        An event that needs a reply holds the session: no further event,
        however much is buffered, until it is answered.
        """
        session = SMTPSession(HOSTNAME, Limits())
        session.receiveData(b"MAIL FROM:<s@x.org>\r\nNOOP\r\n")
        self.assertIsInstance(session.nextEvent(), MailFrom)
        self.assertIs(session.nextEvent(), PAUSED)
        self.assertEqual(session.send(SENDER_OK), b"250 Ok\r\n")
        self.assertEqual(session.nextEvent(), Answer(OK))
        self.assertEqual(session.send(OK), b"250 Ok\r\n")
        self.assertIs(session.nextEvent(), NEED_DATA)

    def test_linesRead(self) -> None:
        """
        The session counts the command lines it has read, so the driver
        knows when the next is due: message data and a partial line are
        not counted.
        """
        conversation = Conversation()
        conversation.receive(ENVELOPE + b"DATA\r\nab\r\ncd\r\n.\r\nNOOP\r\nNO")
        self.assertEqual(conversation.session.linesRead, 5)

    def test_messageSize(self) -> None:
        """
        The size counts the message as sent: each line end two octets
        (RFC 1870), dot-stuffing removed.
        """
        conversation = Conversation()
        conversation.receive(ENVELOPE + b"DATA\r\nab\r\n..c\r\n.\r\n")
        self.assertEqual(conversation.session.messageSize, len(b"ab\r\n.c\r\n"))

    def test_commandLineTooLong(self) -> None:
        """
        A command over 512 octets gets 500 5.5.2, and MAIL may be longer by
        what its parameters add.
        """
        conversation = Conversation()
        conversation.receive(b"EHLO c\r\n")
        self.assertEqual(
            conversation.replies(b"NOOP " + b"x" * 505 + b"\r\nNOOP " + b"x" * 506 + b"\r\n"),
            [b"250 2.0.0 Ok", b"500 5.5.2 Error: line too long"],
        )
        mail = b"MAIL FROM:<s@x.org> SIZE=10 AUTH=<" + b"a" * 700 + b"@x.org>\r\n"
        self.assertEqual(conversation.replies(mail), [b"250 2.1.0 Ok"])

    def test_unboundedLine(self) -> None:
        """
        A line longer than any command may be is refused once, skipped to
        its end however long it is, and what follows is read again.
        """
        conversation = Conversation()
        before = len(conversation.output)
        for _ in range(10):
            conversation.receive(b"x" * 4096)
            self.assertLess(conversation.session.buffered, 12290)
        conversation.receive(b"x\r\nNOOP\r\n")
        self.assertEqual(conversation.output[before:], b"500 Error: line too long\r\n250 Ok\r\n")

    def test_bodyInHand(self) -> None:
        """
        Message data that arrives with nothing buffered before it is held as
        it came, and says so until its events are taken.
        """
        conversation = Conversation()
        session = conversation.session
        conversation.receive(ENVELOPE + b"DATA\r\n")
        session.receiveData(b"body\r\n")
        self.assertTrue(session.bodyInHand)
        self.assertEqual(session.nextEvent(), BodyReceived(b"body\n"))
        self.assertIs(session.nextEvent(), NEED_DATA)
        self.assertFalse(session.bodyInHand)


class GreetingTests(unittest.TestCase):
    """
    The greeting, HELO and EHLO, and the replies' enhanced codes.
    """

    def test_enhancedCodesAfterEHLO(self) -> None:
        """
        Replies carry RFC 3463 enhanced codes only once the client greeted
        with EHLO (RFC 2034).
        """
        conversation = Conversation()
        self.assertEqual(conversation.replies(b"NOOP\r\n"), [b"250 Ok"])
        conversation.receive(b"EHLO c\r\n")
        self.assertEqual(conversation.replies(b"NOOP\r\n"), [b"250 2.0.0 Ok"])
        conversation.receive(b"HELO c\r\n")
        self.assertEqual(conversation.replies(b"NOOP\r\n"), [b"250 Ok"])

    def test_helloReply(self) -> None:
        """
        The EHLO reply names the server and the extensions this session
        offers now: STARTTLS while it can start, AUTH where it is offered.
        """
        session = SMTPSession(HOSTNAME, Limits(maxMessageSize=1000), tlsAvailable=True, authentication=True)
        self.assertEqual(
            session.helloReply(True).text.split("\n"),
            [HOSTNAME, "PIPELINING", "SIZE 1000", "8BITMIME", "SMTPUTF8", "CHUNKING", "ENHANCEDSTATUSCODES",
             "STARTTLS"],
        )
        session.tlsActive = True
        self.assertEqual(session.helloReply(True).text.split("\n")[-1], "AUTH PLAIN LOGIN")
        self.assertEqual(session.helloReply(False), Reply(250, None, HOSTNAME))

    def test_helloSyntax(self) -> None:
        """
        HELO and EHLO need a name without spaces or controls.
        """
        conversation = Conversation()
        self.assertEqual(
            conversation.replies(b"EHLO\r\nHELO a b\r\nEHLO a\x01\r\n"),
            [b"501 Syntax: EHLO hostname", b"501 Syntax: HELO hostname", b"501 Syntax: EHLO hostname"],
        )

    def test_refusedGreetingRepeatedAtMail(self) -> None:
        """
        A greeting the application refused is the answer to MAIL until a
        greeting passes; EHLO's refusal carries enhanced codes, MAIL's then
        does not, the session being as it was.
        """

        def refuseBad(session: SMTPSession, event: Event) -> Reply | None:
            assert isinstance(event, Greeted)
            if event.name.startswith(b"bad"):
                return Reply(550, "5.7.1", "Bad HELO")
            return session.helloReply(event.esmtp)

        conversation = Conversation(application(Greeted=refuseBad))
        self.assertEqual(
            conversation.replies(b"EHLO bad.example\r\nMAIL FROM:<s@x.org>\r\nRCPT TO:<a@example.com>\r\n"),
            [b"550 5.7.1 Bad HELO", b"550 Bad HELO", b"503 Error: need MAIL command"],
        )
        conversation.receive(b"EHLO good.example\r\n")
        self.assertEqual(conversation.replies(b"MAIL FROM:<s@x.org>\r\n"), [b"250 2.1.0 Ok"])

    def test_refusedService(self) -> None:
        """
        After a 554 greeting, every command but QUIT gets 503 (RFC 5321
        section 3.1).
        """
        conversation = Conversation(greeting=Reply(554, "5.7.1", "go away"))
        self.assertEqual(conversation.output, b"554 go away\r\n")
        self.assertEqual(
            conversation.replies(b"EHLO c\r\nMAIL FROM:<s@x.org>\r\nQUIT\r\n"),
            [b"503 Error: no SMTP service here"] * 2 + [b"221 Bye"],
        )


class SequenceTests(unittest.TestCase):
    """
    Commands out of order (RFC 5321 section 4.1.4, RFC 3030).
    """

    def assertReplies(self, data: bytes, expected: list[bytes], conversation: Conversation | None = None) -> None:
        conversation = conversation or Conversation()
        self.assertEqual(conversation.replies(data), expected)

    def test_rcptNeedsMail(self) -> None:
        """
        RCPT and DATA without MAIL get 503 5.5.1.
        """
        conversation = Conversation()
        conversation.receive(b"EHLO c\r\n")
        self.assertReplies(
            b"RCPT TO:<a@example.com>\r\nDATA\r\n",
            [b"503 5.5.1 Error: need MAIL command"] * 2,
            conversation,
        )

    def test_nestedMail(self) -> None:
        """
        MAIL inside a transaction gets 503 5.5.1.
        """
        self.assertReplies(b"MAIL FROM:<t@x.org>\r\n", [b"503 5.5.1 Error: nested MAIL command"], _afterEnvelope())

    def test_dataNeedsRecipients(self) -> None:
        """
        DATA after recipients that were all refused gets 554 5.5.1, and what
        follows is read as commands.
        """

        conversation = Conversation(application(RcptTo=lambda session, event: Reply(550, "5.7.1", "Relay access denied")))
        self.assertEqual(
            conversation.replies(ENVELOPE + b"DATA\r\nNOOP\r\n")[-3:],
            [b"550 5.7.1 Relay access denied", b"554 5.5.1 Error: no valid recipients", b"250 2.0.0 Ok"],
        )

    def test_resetEndsTransaction(self) -> None:
        """
        After RSET, RCPT needs MAIL again.
        """
        self.assertReplies(b"RSET\r\nRCPT TO:<b@example.com>\r\n",
                           [b"250 2.0.0 Ok", b"503 5.5.1 Error: need MAIL command"], _afterEnvelope())

    def test_noDataAfterBdat(self) -> None:
        """
        DATA and RCPT after the first BDAT of a transaction get 503.
        """
        self.assertReplies(
            b"BDAT 1\r\nxDATA\r\nRCPT TO:<b@example.com>\r\n",
            [b"250 2.0.0 Ok: 1 octets received", b"503 5.5.1 Error: DATA not allowed after BDAT",
             b"503 5.5.1 Error: RCPT not allowed after BDAT"],
            _afterEnvelope(),
        )

    def test_failedMessageEndsTransaction(self) -> None:
        """
        A reply other than 354 to DATA (the message could not be opened)
        ends the transaction.
        """

        conversation = Conversation(application(StartData=lambda session, event: LOCAL_ERROR))
        self.assertEqual(
            conversation.replies(ENVELOPE + b"DATA\r\nRCPT TO:<b@example.com>\r\n")[-2:],
            [b"451 4.3.0 Error: local error in processing, try again later",
             b"503 5.5.1 Error: need MAIL command"],
        )


class ParameterTests(unittest.TestCase):
    """
    MAIL and RCPT arguments and their ESMTP parameters.
    """

    def test_mailParameters(self) -> None:
        """
        SIZE, BODY, SMTPUTF8 and AUTH are taken, in any case, and given to
        the application.
        """
        conversation = Conversation()
        conversation.receive(b"EHLO c\r\nMAIL FROM:<s@x.org> size=10 BODY=8bitmime SMTPUTF8 AUTH=<>\r\n")
        event = conversation.events[-1]
        assert isinstance(event, MailFrom)
        self.assertEqual(
            (event.address, event.parameters, event.utf8),
            (b"<s@x.org>", ((b"SIZE", b"10"), (b"BODY", b"8bitmime"), (b"SMTPUTF8", b""), (b"AUTH", b"<>")), True),
        )

    def test_refusedParameters(self) -> None:
        """
        A declared size over the limit gets 552 5.3.4; a malformed SIZE,
        an unknown BODY, a valued SMTPUTF8 or a repeated keyword 501 5.5.4;
        any other parameter 555 5.5.4, on MAIL and RCPT alike.
        """
        conversation = Conversation(limits=Limits(maxMessageSize=1000))
        conversation.receive(b"EHLO c\r\n")
        self.assertEqual(
            conversation.replies(
                b"MAIL FROM:<s@x.org> SIZE=1001\r\nMAIL FROM:<s@x.org> SIZE=x\r\n"
                b"MAIL FROM:<s@x.org> BODY=BINARYMIME\r\nMAIL FROM:<s@x.org> SMTPUTF8=yes\r\n"
                b"MAIL FROM:<s@x.org> BODY=7BIT BODY=7BIT\r\nMAIL FROM:<s@x.org> RET=HDRS\r\n"
                b"MAIL FROM:<s@x.org>\r\nRCPT TO:<a@example.com> NOTIFY=NEVER\r\n"
            ),
            [
                b"552 5.3.4 Error: message size exceeds fixed maximum message size",
                b"501 5.5.4 Error: bad SIZE parameter",
                b"501 5.5.4 Error: BODY must be 7BIT or 8BITMIME",
                b"501 5.5.4 Error: SMTPUTF8 takes no value",
                b"501 5.5.4 Error: duplicate BODY parameter",
                b"555 5.5.4 Error: unsupported MAIL parameter",
                b"250 2.1.0 Ok",
                b"555 5.5.4 Error: unsupported RCPT parameter",
            ],
        )

    def test_addresses(self) -> None:
        """
        A non-ASCII address without SMTPUTF8 gets 553 5.6.7; a malformed
        recipient is handed over as refused, for the transaction's log.
        """
        conversation = Conversation()
        conversation.receive(b"EHLO c\r\n")
        self.assertEqual(
            conversation.replies("MAIL FROM:<j\u00f6rg@x.org>\r\nMAIL FROM:<s@x.org>\r\n".encode()),
            [b"553 5.6.7 Error: non-ASCII address requires SMTPUTF8", b"250 2.1.0 Ok"],
        )
        conversation.receive(b"RCPT TO:<a@@example.com>\r\n")
        event = conversation.events[-1]
        assert isinstance(event, RecipientRefused)
        self.assertEqual((event.address, event.reply.code, event.reply.enhanced), (b"<a@@example.com>", 501, "5.1.3"))

    def test_syntax(self) -> None:
        """
        MAIL, RCPT, DATA, BDAT, VRFY and STARTTLS with a malformed argument
        get 501 5.5.4.
        """
        conversation = _afterEnvelope()
        self.assertEqual(
            conversation.replies(b"RCPT <a@example.com>\r\nDATA now\r\nBDAT -1\r\nVRFY\r\nSTARTTLS x\r\n"),
            [b"501 5.5.4 Syntax: RCPT TO:<address>", b"501 5.5.4 Syntax: DATA",
             b"501 5.5.4 Syntax: BDAT count [LAST]", b"501 5.5.4 Syntax: VRFY address",
             b"501 5.5.4 Syntax: STARTTLS"],
        )

    def test_recipientOvershoot(self) -> None:
        """
        RCPTs past the recipient limit get 452 4.5.3; as many again are not
        counted as the client's errors, the ones beyond are.
        """
        conversation = Conversation(limits=Limits(maxRecipients=2))
        conversation.receive(b"EHLO c\r\nMAIL FROM:<s@x.org>\r\n" + b"RCPT TO:<a@example.com>\r\n" * 5)
        refusals = [e for e in conversation.events if isinstance(e, Answer)]
        self.assertEqual([e.counted for e in refusals], [False, False, True])
        self.assertEqual(conversation.session.errors, 1)


class ErrorLimitTests(unittest.TestCase):
    """
    Postfix's hard error limit and junk command limit.
    """

    def test_hangUp(self) -> None:
        """
        The reply that is one error too many is followed by 421 4.7.0, the
        session says so, and it gives no more events.
        """
        conversation = Conversation(limits=Limits(maxErrors=2))
        self.assertEqual(
            conversation.replies(b"FOO\r\nBAR\r\nNOOP\r\n"),
            [b"500 Error: command not recognized", b"500 Error: command not recognized",
             b"421 mx.example.com Error: too many errors"],
        )
        self.assertTrue(conversation.session.errorLimitReached)
        self.assertIs(conversation.session.nextEvent(), PAUSED)

    def test_uncountedRefusal(self) -> None:
        """
        A refusal sent as not counted is no error.
        """
        session = SMTPSession(HOSTNAME, Limits(maxErrors=1))
        session.send(Reply(421, None, "bye"), counted=False)
        self.assertEqual((session.errors, session.errorLimitReached), (0, False))

    def test_junkLimit(self) -> None:
        """
        Past the junk limit each NOOP, RSET, VRFY or HELP is also an error,
        and the last one allowed ends the session with 421 instead of its
        reply.
        """
        conversation = Conversation(limits=Limits(maxErrors=2, maxJunkCommands=2))
        self.assertEqual(
            conversation.replies(b"NOOP\r\nHELP\r\nRSET\r\nVRFY x\r\n"),
            [b"250 Ok", b"214 Commands: HELO EHLO STARTTLS AUTH MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP",
             b"250 Ok", b"421 mx.example.com Error: too many errors"],
        )
        self.assertIsInstance(conversation.events[-1], TooManyErrors)

    def test_forgivenAfterDelivery(self) -> None:
        """
        A message stored (a 2xx to its end) forgives the errors so far.
        """
        conversation = Conversation(limits=Limits(maxErrors=3))
        conversation.receive(b"FOO\r\nBAR\r\n" + ENVELOPE + b"DATA\r\nx\r\n.\r\n")
        self.assertEqual(conversation.replies(b"FOO\r\nBAR\r\n"), [b"500 5.5.2 Error: command not recognized"] * 2)
        self.assertEqual(conversation.session.errors, 4)


class BodyTests(unittest.TestCase):
    """
    DATA and BDAT bodies.
    """

    def test_sizeLimit(self) -> None:
        """
        A message that grows past the limit is refused as it arrives, read
        to its end, and answered then.
        """
        conversation = Conversation(limits=Limits(maxMessageSize=10))
        conversation.receive(ENVELOPE + b"DATA\r\n" + b"x" * 20 + b"\r\n.\r\n")
        self.assertEqual(conversation.events[-2:], [BodyRefused(SIZE_EXCEEDED), MessageEnded()])

    def test_refusedMessageReadToItsEnd(self) -> None:
        """
        Once the application says it cannot store the message, the rest of
        its data is read without events, and its end still comes.
        """
        conversation = _afterEnvelope()
        conversation.receive(b"DATA\r\nfirst\r\n")
        self.assertEqual(conversation.events[-1], BodyReceived(b"first\n"))
        conversation.session.refuseMessage(SIZE_EXCEEDED)
        conversation.receive(b"second\r\n.\r\n")
        self.assertEqual(conversation.events[-2:], [BodyReceived(b"first\n"), MessageEnded()])

    def test_bareNewlineRefused(self) -> None:
        """
        With bare LFs refused, one in DATA or BDAT refuses the message.
        """
        conversation = Conversation(limits=Limits(bareNewline="reject"))
        conversation.receive(ENVELOPE + b"DATA\r\na\nb\r\n.\r\n")
        self.assertEqual(conversation.events[-2:], [BodyRefused(BARE_NEWLINE), MessageEnded()])
        conversation.receive(b"MAIL FROM:<s@x.org>\r\nRCPT TO:<a@example.com>\r\nBDAT 3 LAST\r\na\nb")
        self.assertEqual(conversation.events[-2:], [BodyRefused(BARE_NEWLINE), ChunkEnded(True)])

    def test_chunks(self) -> None:
        """
        BDAT chunks are read byte-exact, CRLF split across two chunks
        becoming LF, the first one opening the message.
        """
        conversation = _afterEnvelope()
        conversation.receive(b"BDAT 2\r\na\rBDAT 0\r\nBDAT 2 LAST\r\n\nb")
        self.assertEqual(
            conversation.events[-8:],
            [ChunkStarted(2, False, True), BodyReceived(b"a"), ChunkEnded(False),
             ChunkStarted(0, False, False), ChunkEnded(False), ChunkStarted(2, True, False),
             BodyReceived(b"\nb"), ChunkEnded(True)],
        )
        self.assertEqual(conversation.session.messageSize, 4)

    def test_chunkWithoutTransaction(self) -> None:
        """
        A chunk without a transaction is read (not taken as commands) and
        refused once read.
        """
        conversation = Conversation()
        self.assertEqual(
            conversation.replies(b"BDAT 6\r\nNOOP\r\nNOOP\r\n"),
            [b"503 Error: need MAIL command", b"250 Ok"],
        )

    def test_chunksAfterRefusalAreJunk(self) -> None:
        """
        Chunks pipelined behind a refused one are refused as out of
        sequence, but count as junk, not as the client's errors.
        """
        conversation = Conversation(limits=Limits(maxMessageSize=5))
        conversation.receive(ENVELOPE + b"BDAT 6\r\nxxxxxx" + b"BDAT 1\r\ny" * 3 + b"BDAT 1 LAST\r\nz")
        ends = [e for e in conversation.events if isinstance(e, ChunkEnded)]
        self.assertEqual([e.counted for e in ends], [True, False, False, False, False])
        self.assertEqual(conversation.session.errors, 1)

    def test_refusedChunk(self) -> None:
        """
        A first chunk the application cannot take is read but neither
        stored nor counted in the size, and its refusal ends the
        transaction.
        """

        def cannotOpen(session: SMTPSession, event: Event) -> None:
            assert isinstance(event, ChunkStarted)
            if event.first:
                session.refuseChunk(LOCAL_ERROR)

        conversation = Conversation(application(ChunkStarted=cannotOpen))
        conversation.receive(ENVELOPE + b"BDAT 3\r\nabcRCPT TO:<b@example.com>\r\n")
        self.assertEqual(conversation.events[-2], ChunkEnded(False, LOCAL_ERROR))
        self.assertNotIn(BodyReceived(b"abc"), conversation.events)
        self.assertEqual(conversation.session.messageSize, 0)
        self.assertEqual(conversation.events[-1], Answer(Reply(503, "5.5.1", "Error: need MAIL command")))


class AuthTests(unittest.TestCase):
    """
    The SASL exchanges of AUTH (RFC 4954).
    """

    def conversation(self) -> Conversation:
        conversation = Conversation(authentication=True, plaintextAuthentication=True)
        conversation.receive(b"EHLO c\r\n")
        return conversation

    def test_plainInitialResponse(self) -> None:
        """
        PLAIN with an initial response gives the user name and password.
        """
        conversation = self.conversation()
        conversation.receive(b"AUTH PLAIN " + plain(b"alice", b"secret") + b"\r\n")
        self.assertEqual(conversation.events[-1], Login(b"PLAIN", b"alice", b"secret"))

    def test_plainChallenge(self) -> None:
        """
        PLAIN without an initial response gets an empty challenge.
        """
        conversation = self.conversation()
        self.assertEqual(conversation.replies(b"AUTH plain\r\n"), [b"334 "])
        conversation.receive(plain(b"alice", b"secret") + b"\r\n")
        self.assertEqual(conversation.events[-1], Login(b"PLAIN", b"alice", b"secret"))

    def test_login(self) -> None:
        """
        LOGIN asks for the user name, then the password, in base64.
        """
        conversation = self.conversation()
        self.assertEqual(
            conversation.replies(b"AUTH LOGIN\r\n" + base64.b64encode(b"alice") + b"\r\n"),
            [b"334 VXNlcm5hbWU6", b"334 UGFzc3dvcmQ6"],
        )
        conversation.receive(base64.b64encode(b"secret") + b"\r\n")
        self.assertEqual(conversation.events[-1], Login(b"LOGIN", b"alice", b"secret"))

    def test_passwordNotInRepr(self) -> None:
        """
        A login's password is left out of its repr, and so of any log.
        """
        self.assertNotIn("secret", repr(Login(b"PLAIN", b"alice", b"secret")))

    def test_malformed(self) -> None:
        """
        A cancelled exchange gets 501 5.0.0, bad base64 501 5.5.2, and a
        PLAIN response that is not a user name and password is a failed
        login; each ends the exchange.
        """
        conversation = self.conversation()
        self.assertEqual(
            conversation.replies(b"AUTH PLAIN\r\n*\r\nAUTH PLAIN !!\r\n"),
            [b"334 ", b"501 5.0.0 Error: authentication cancelled", b"501 5.5.2 Error: invalid base64 data"],
        )
        conversation.receive(b"AUTH PLAIN " + base64.b64encode(b"nonsense") + b"\r\n")
        self.assertEqual(conversation.events[-1], MalformedLogin(b"PLAIN"))
        self.assertEqual(conversation.replies(b"NOOP\r\n"), [b"250 2.0.0 Ok"])

    def test_rules(self) -> None:
        """
        AUTH needs EHLO, is refused once authenticated or in a transaction,
        and a submission listener refuses MAIL until it succeeds.
        """
        conversation = Conversation(authentication=True, plaintextAuthentication=True, submission=True)
        login = b"AUTH PLAIN " + plain(b"alice", b"secret") + b"\r\n"
        self.assertEqual(conversation.replies(login), [b"503 Error: send EHLO first"])
        conversation.receive(b"EHLO c\r\n")
        self.assertEqual(
            conversation.replies(b"MAIL FROM:<s@x.org>\r\n" + login + login + b"MAIL FROM:<s@x.org>\r\n" + login),
            [b"530 5.7.0 Error: authentication required", b"235 2.7.0 Authentication successful",
             b"503 5.5.1 Error: already authenticated", b"250 2.1.0 Ok",
             b"503 5.5.1 Error: already authenticated"],
        )

    def test_needsTLS(self) -> None:
        """
        Without TLS, AUTH is refused with 538 unless plaintext logins are
        allowed; it is refused with 503 where there are no logins at all.
        """
        conversation = Conversation(authentication=True)
        conversation.receive(b"EHLO c\r\n")
        self.assertEqual(
            conversation.replies(b"AUTH PLAIN\r\n"),
            [b"538 5.7.11 Error: authentication requires TLS (STARTTLS first)"],
        )
        conversation.session.tlsActive = True
        self.assertEqual(conversation.replies(b"AUTH PLAIN\r\n"), [b"334 "])
        self.assertEqual(
            _afterEnvelope().replies(b"AUTH PLAIN\r\n"), [b"503 5.5.1 Error: authentication not enabled"]
        )


class StartTLSTests(unittest.TestCase):
    """
    STARTTLS (RFC 3207).
    """

    def test_discardsPipelinedInput(self) -> None:
        """
        What the client sent after STARTTLS is thrown away unread
        (CVE-2011-0411), and the event says how much.
        """
        conversation = Conversation(tlsAvailable=True)
        conversation.receive(b"EHLO c\r\nSTARTTLS\r\nRSET\r\nMAIL FROM:<evil@x.org>\r\n")
        self.assertEqual(conversation.events[-1], StartTLSRequested(len(b"RSET\r\nMAIL FROM:<evil@x.org>\r\n")))
        self.assertEqual(conversation.session.buffered, 0)

    def test_forgetsTheClient(self) -> None:
        """
        After the 220, the client must greet again (AUTH wants EHLO) and
        any transaction is gone.
        """
        conversation = Conversation(tlsAvailable=True, authentication=True)
        conversation.receive(b"EHLO c\r\nSTARTTLS\r\n")
        conversation.session.tlsActive = True
        self.assertEqual(
            conversation.replies(b"AUTH PLAIN\r\nSTARTTLS\r\nRCPT TO:<a@example.com>\r\n"),
            [b"503 Error: send EHLO first", b"503 Error: TLS already active", b"503 Error: need MAIL command"],
        )

    def test_unavailable(self) -> None:
        """
        Where TLS cannot start, STARTTLS gets 454 4.7.0.
        """
        self.assertEqual(_afterEnvelope().replies(b"STARTTLS\r\n"), [b"454 4.7.0 Error: TLS not available"])


class PurityTests(unittest.TestCase):
    """
    The session needs no Twisted.
    """

    def test_noTwisted(self) -> None:
        """
        Importing the session, its events, parsing, SASL, framing and
        replies imports no Twisted module at all.
        """
        parent = os.path.dirname(os.path.dirname(os.path.abspath(harbor.__file__)))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [parent, env.get("PYTHONPATH")]))
        code = (
            "import sys; import harbor.smtp._session; "
            "assert harbor.smtp._session.__file__.startswith(sys.argv[1]); "
            "twisted = sorted(m for m in sys.modules if m == 'twisted' or m.startswith('twisted.')); "
            "assert not twisted, twisted"
        )
        result = subprocess.run(
            [sys.executable, "-c", code, parent], env=env, capture_output=True, text=True, check=False
        )
        self.assertEqual((result.returncode, result.stderr), (0, ""))


def _afterEnvelope() -> Conversation:
    """
    A conversation with a transaction open for one recipient.
    """
    conversation = Conversation()
    conversation.receive(ENVELOPE)
    return conversation
