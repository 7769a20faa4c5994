# -*- test-case-name: harbor.test.test_smtp -*-
"""
The SMTP protocol: MailHarbor's subclass of Twisted's L{ESMTP}.

It keeps Twisted's shape (an L{IMessageDeliveryFactory} gives one
L{IMessageDelivery} per transaction, whose C{validateTo} returns the
L{IMessage} factories) and replaces what a receiver cannot live with:

 - input is framed by L{harbor.framing}: bounded, and paused while a reply
   is pending, so pipelined commands are answered in order;
 - DATA is decoded in large pieces, not line by line, and only
   C{<CRLF>.<CRLF>} ends it;
 - every reply carries an RFC 3463 enhanced status code;
 - a local failure (full disk, permissions) is a 4xx temporary failure,
   never Twisted's C{550 Could not send e-mail}, and the 250 reply to DATA
   comes only once the message is fsynced, naming the stored id;
 - one log line per transaction.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from zope.interface import implementer

from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.interfaces import IAddress, IReactorTime
from twisted.internet.protocol import ServerFactory
from twisted.logger import Logger
from twisted.mail.smtp import ESMTP, Address, IMessage, SMTPBadSender, SMTPServerError, User
from twisted.python.failure import Failure

from harbor.delivery import Deliverer, IMessageStream, Session
from harbor.framing import DataDecoder, InputBuffer, LineTooLong
from harbor.maildir import StorageError, StoredMessage
from harbor.policy import AddressSyntaxError, Path, parsePath

MAX_COMMAND_LINE = 2048
MAX_BUFFERED_INPUT = 256 * 1024
COMMAND_TIMEOUT = 300

_MAIL = re.compile(rb"^FROM:\s*(<[^>]*>|[^\s<>]+)(?:\s+(.*))?$", re.IGNORECASE | re.DOTALL)
_RCPT = re.compile(rb"^TO:\s*(<[^>]*>|[^\s<>]+)(?:\s+(.*))?$", re.IGNORECASE | re.DOTALL)
_ENHANCED = re.compile(r"^[245]\.\d{1,3}\.\d{1,3} ")
_VERB = re.compile(rb"^[A-Za-z]{1,16}$")
_BODY_TYPES = frozenset({b"7BIT", b"8BITMIME"})


def _address(raw: bytes, path: Path) -> Address:
    """
    Build the Twisted L{Address} that L{IMessageDelivery} expects, from a
    path our own parser accepted.  Twisted's parser would silently drop a
    source route and refuse address literals; C{addrstr} keeps what the
    client sent so the delivery can judge it.
    """
    address = Address.__new__(Address)
    address.addrstr = raw
    address.local = path.local.encode("ascii")
    address.domain = path.domain.encode("ascii")
    return address


class _Transaction:
    """
    What one MAIL transaction has gathered, for its replies and its log line.
    """

    def __init__(self, delivery: Any, sender: Path) -> None:
        self.delivery = delivery
        self.sender = sender
        self.recipients: list[tuple[User, Callable[[], IMessage]]] = []
        self.rejected: list[str] = []
        self.size = 0


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


class HarborESMTP(ESMTP):  # type: ignore[misc]
    """
    One SMTP connection.

    @ivar session: What is known of the client, shared with deliveries.
    """

    _log = Logger()
    timeout = COMMAND_TIMEOUT

    def __init__(self, deliverer: Deliverer, hostname: str, clock: IReactorTime | None = None) -> None:
        super().__init__()
        self.host = hostname
        self._hostname = hostname
        self._deliverer = deliverer
        if clock is not None:
            self.callLater = clock.callLater
        self._input = InputBuffer(MAX_COMMAND_LINE)
        self._decoder: DataDecoder | None = None
        self._messages: list[IMessageStream] = []
        self._dataFailure: Failure | None = None
        self._tx: _Transaction | None = None
        self._paused = False
        self._processing = False
        self._producerPaused = False
        self._closed = False
        self.session = Session("unknown")

    # Connection life cycle

    def connectionMade(self) -> None:
        peer = self.transport.getPeer()
        self.session = Session(str(getattr(peer, "host", peer)))
        self.deliveryFactory = self._deliverer.factoryFor(self.session)
        self._helo = (None, self.session.clientAddress.encode("ascii", "replace"))
        self._reply(220, None, f"{self._hostname} ESMTP MailHarbor")
        self.setTimeout(self.timeout)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._closed = True
        self.setTimeout(None)
        if self._decoder is not None:
            self._abortMessages()
            self._endTransaction("disconnected during DATA")
        elif self._tx is not None:
            self._endTransaction("disconnected")

    def timeoutConnection(self) -> None:
        self._reply(421, "4.4.2", f"{self._hostname} Error: timeout exceeded")
        self.transport.loseConnection()

    # Input

    def dataReceived(self, data: bytes) -> None:
        if self._closed:
            return
        self.resetTimeout()
        if self._decoder is not None and not self._paused and not len(self._input):
            self._bodyReceived(data)
        else:
            self._input.feed(data)
        self._processInput()

    def _processInput(self) -> None:
        """
        Consume buffered input until it runs out or a reply is pending.
        """
        if self._processing:
            return
        self._processing = True
        try:
            while not self._paused and not self._closed:
                if self._decoder is not None:
                    if not len(self._input):
                        break
                    self._bodyReceived(self._input.takeAll())
                    continue
                line = self._input.nextLine()
                if line is None:
                    break
                if isinstance(line, LineTooLong):
                    self._reply(500, "5.5.2", "Error: line too long")
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
        if not self._producerPaused and buffered > MAX_BUFFERED_INPUT:
            self._producerPaused = True
            self.transport.pauseProducing()
        elif self._producerPaused and buffered <= MAX_BUFFERED_INPUT // 2:
            self._producerPaused = False
            self.transport.resumeProducing()

    def _waitFor(
        self,
        result: Deferred[Any],
        onSuccess: Callable[[Any], None],
        onFailure: Callable[[Failure], None],
    ) -> None:
        """
        Hold further input until C{result} fires and its reply is sent.
        """
        self._paused = True

        def resume(outcome: object) -> None:
            self._paused = False
            try:
                if isinstance(outcome, Failure):
                    onFailure(outcome)
                else:
                    onSuccess(outcome)
            finally:
                self._processInput()

        result.addBoth(resume).addErrback(
            lambda f: self._log.failure("Unexpected error sending a reply", f)
        )

    def _commandReceived(self, line: bytes) -> None:
        parts = line.strip().split(None, 1)
        verb = parts[0] if parts else b""
        argument = parts[1] if len(parts) == 2 else b""
        handler = None
        if _VERB.match(verb):
            handler = getattr(self, "smtp_" + verb.decode("ascii").upper(), None)
        if handler is None:
            self._reply(500, "5.5.2", "Error: command not recognized")
            return
        try:
            handler(argument)
        except Exception:
            self._log.failure("Error handling {verb} command", verb=verb.decode("ascii"))
            self._reply(451, "4.3.0", "Error: local error in processing")

    # Replies

    def _reply(self, code: int, enhanced: str | None, text: str) -> None:
        """
        Send a reply; each line of a multi-line one carries the code and,
        when given, the enhanced status code.
        """
        lines = text.split("\n")
        extra = f"{enhanced} " if enhanced else ""
        last = len(lines) - 1
        self.transport.write(
            "".join(
                f"{code}{'-' if i < last else ' '}{extra}{line}\r\n"
                for i, line in enumerate(lines)
            ).encode("utf-8", "replace")
        )

    def _replyFromError(self, code: int, resp: str | bytes, default: str) -> None:
        """
        Reply with an exception's code and text, whichever type Twisted's
        callers put in C{resp}, adding an enhanced code if it has none.
        """
        text = resp.decode("utf-8", "replace") if isinstance(resp, bytes) else str(resp)
        text = text.replace("\r", " ").replace("\n", " ")
        if _ENHANCED.match(text):
            enhanced, text = text.split(" ", 1)
        else:
            enhanced = default
        self._reply(code, enhanced, text)

    # Commands

    def smtp_HELO(self, argument: bytes) -> None:
        self._greeted(argument, esmtp=False)

    def smtp_EHLO(self, argument: bytes) -> None:
        self._greeted(argument, esmtp=True)

    def _greeted(self, argument: bytes, esmtp: bool) -> None:
        verb = "EHLO" if esmtp else "HELO"
        name = argument.strip()
        if not name:
            self._reply(501, "5.5.4", f"Syntax: {verb} hostname")
            return
        self._resetTransaction("new greeting")
        self.session.helo = name.decode("ascii", "replace")
        self.session.esmtp = esmtp
        self._helo = (name, self.session.clientAddress.encode("ascii", "replace"))
        if esmtp:
            self._reply(250, None, "\n".join([self._hostname] + self.esmtpExtensions()))
        else:
            self._reply(250, None, self._hostname)

    def esmtpExtensions(self) -> list[str]:
        """
        The service extensions advertised in the EHLO reply.
        """
        return ["PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES"]

    def smtp_MAIL(self, argument: bytes) -> None:
        if self._tx is not None:
            self._reply(503, "5.5.1", "Error: nested MAIL command")
            return
        match = _MAIL.match(argument)
        if match is None:
            self._reply(501, "5.5.4", "Syntax: MAIL FROM:<address>")
            return
        rawPath, parameters = match.group(1), match.group(2) or b""
        problem = self._checkMailParameters(parameters)
        if problem is not None:
            self._reply(*problem)
            return
        try:
            path = parsePath(rawPath, allowNull=True)
        except AddressSyntaxError as e:
            self._reply(501, "5.1.7", f"Bad sender address syntax: {e}")
            return
        delivery = self.deliveryFactory.getMessageDelivery()
        origin = _address(rawPath, path)

        def accepted(ignored: object) -> None:
            self._tx = _Transaction(delivery, path)
            self._reply(250, "2.1.0", "Ok")

        def refused(failure: Failure) -> None:
            if failure.check(SMTPServerError):
                self._replyFromError(failure.value.code, failure.value.resp, "5.7.1")
            else:
                self._log.failure("Sender validation failed", failure)
                self._reply(451, "4.3.0", "Error: local error in processing")

        self._waitFor(maybeDeferred(delivery.validateFrom, self._helo, origin), accepted, refused)

    def _checkMailParameters(self, parameters: bytes) -> tuple[int, str, str] | None:
        """
        Check the ESMTP parameters of MAIL FROM.

        @return: the reply refusing them, or L{None} if all are understood.
        """
        for parameter in parameters.split():
            keyword, _, value = parameter.partition(b"=")
            keyword = keyword.upper()
            if keyword == b"BODY" and value.upper() in _BODY_TYPES:
                continue
            if keyword == b"SIZE" and value.isdigit():
                continue
            return (555, "5.5.4", "Error: unsupported MAIL parameter")
        return None

    def smtp_RCPT(self, argument: bytes) -> None:
        tx = self._tx
        if tx is None:
            self._reply(503, "5.5.1", "Error: need MAIL command")
            return
        match = _RCPT.match(argument)
        if match is None:
            self._reply(501, "5.5.4", "Syntax: RCPT TO:<address>")
            return
        rawPath, parameters = match.group(1), match.group(2) or b""
        if parameters.strip():
            self._reply(555, "5.5.4", "Error: unsupported RCPT parameter")
            return
        try:
            path = parsePath(rawPath)
        except AddressSyntaxError as e:
            tx.rejected.append(rawPath.decode("ascii", "replace"))
            self._reply(501, "5.1.3", f"Bad recipient address syntax: {e}")
            return
        user = User(_address(rawPath, path), self._helo, self, _address(b"", tx.sender))

        def accepted(messageFactory: Callable[[], IMessage]) -> None:
            tx.recipients.append((user, messageFactory))
            self._reply(250, "2.1.5", "Ok")

        def refused(failure: Failure) -> None:
            tx.rejected.append(path.mailbox)
            if failure.check(SMTPServerError):
                self._replyFromError(failure.value.code, failure.value.resp, "5.1.1")
            else:
                self._log.failure("Recipient validation failed", failure)
                self._reply(451, "4.3.0", "Error: local error in processing")

        self._waitFor(maybeDeferred(tx.delivery.validateTo, user), accepted, refused)

    def smtp_DATA(self, argument: bytes) -> None:
        tx = self._tx
        if tx is None:
            self._reply(503, "5.5.1", "Error: need RCPT command")
            return
        if not tx.recipients:
            self._reply(554, "5.5.1", "Error: no valid recipients")
            return
        if argument.strip():
            self._reply(501, "5.5.4", "Syntax: DATA")
            return
        try:
            messages = self._openMessages(tx)
        except Exception:
            failure = Failure()
            self._replyToFailure(failure)
            self._endTransaction(f"DATA refused: {failure.getErrorMessage()}")
            return
        self._messages = messages
        self._dataFailure = None
        self._decoder = DataDecoder()
        self._reply(354, None, "End data with <CR><LF>.<CR><LF>")

    def _openMessages(self, tx: _Transaction) -> list[IMessageStream]:
        """
        Call each recipient's message factory; recipients that share a
        message object (as all of MailHarbor's do) share its stream.
        """
        unique: dict[int, IMessageStream] = {}
        try:
            for user, messageFactory in tx.recipients:
                message = messageFactory()
                if id(message) not in unique:
                    stream = message if IMessageStream.providedBy(message) else _LineMessage(message)
                    unique[id(message)] = stream
                    header = tx.delivery.receivedHeader(
                        self._helo, _address(b"", tx.sender), [u for u, _ in tx.recipients]
                    )
                    if header:
                        stream.lineReceived(header)
        except BaseException:
            for stream in unique.values():
                stream.connectionLost()
            raise
        return list(unique.values())

    def _bodyReceived(self, data: bytes) -> None:
        assert self._decoder is not None
        body, rest = self._decoder.feed(data)
        tx = self._tx
        assert tx is not None
        tx.size += len(body)
        if body and self._dataFailure is None:
            try:
                for message in self._messages:
                    message.dataReceived(body)
            except Exception:
                self._dataFailure = Failure()
                self._abortMessages()
        if self._decoder.done:
            self._decoder = None
            self._input.feed(rest)
            self._endOfData(tx)

    def _endOfData(self, tx: _Transaction) -> None:
        # The transaction is over for the protocol: the next MAIL may come.
        # It is logged once the outcome of storing it is known.
        self._tx = None
        if self._dataFailure is not None:
            failure = self._dataFailure
            self._dataFailure = None
            self._replyToFailure(failure)
            self._logTransaction(tx, f"failed: {failure.getErrorMessage()}")
            return
        messages, self._messages = self._messages, []
        results = DeferredList(
            [maybeDeferred(m.eomReceived) for m in messages], consumeErrors=True
        )

        def stored(outcomes: list[tuple[bool, Any]]) -> None:
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
                self._reply(250, "2.0.0", "Ok: message accepted")
            elif len(ids) == 1:
                self._reply(250, "2.0.0", f"Ok: stored as {ids[0]}")
            else:
                self._reply(250, "2.0.0", f"Ok: stored as {ids[0]} (+{len(ids) - 1} more copies)")
            self._logTransaction(tx, "stored", ids)

        self._waitFor(results, stored, self._replyToFailure)

    def _replyToFailure(self, failure: Failure) -> None:
        """
        Answer a failed delivery: a local storage problem is temporary
        (452 for a full disk, otherwise 451) so the sender retries; an SMTP
        error keeps its own code; anything else is a bug, logged, and also
        answered 451 so no mail is lost.
        """
        if failure.check(StorageError):
            self._log.error("Storage failure: {error}", error=failure.getErrorMessage())
            if failure.value.noSpace:
                self._reply(452, "4.3.1", "Error: insufficient system storage")
            else:
                self._reply(451, "4.3.0", "Error: local error in processing, try again later")
        elif failure.check(SMTPServerError):
            self._replyFromError(failure.value.code, failure.value.resp, "4.3.0" if failure.value.code < 500 else "5.3.0")
        else:
            self._log.failure("Delivery failed", failure)
            self._reply(451, "4.3.0", "Error: local error in processing, try again later")

    def _abortMessages(self) -> None:
        messages, self._messages = self._messages, []
        for message in messages:
            try:
                message.connectionLost()
            except Exception:
                self._log.failure("Error discarding a message")

    def smtp_RSET(self, argument: bytes) -> None:
        self._resetTransaction("reset")
        self._reply(250, "2.0.0", "Ok")

    def smtp_NOOP(self, argument: bytes) -> None:
        self._reply(250, "2.0.0", "Ok")

    def smtp_VRFY(self, argument: bytes) -> None:
        self._reply(252, "2.0.0", "Send some mail, I will try my best")

    def smtp_EXPN(self, argument: bytes) -> None:
        self._reply(502, "5.5.1", "Error: EXPN is not supported")

    def smtp_HELP(self, argument: bytes) -> None:
        self._reply(
            214, "2.0.0", "Commands: HELO EHLO MAIL RCPT DATA RSET NOOP QUIT VRFY HELP"
        )

    def smtp_QUIT(self, argument: bytes) -> None:
        self._resetTransaction("quit")
        self._reply(221, "2.0.0", "Bye")
        self._closed = True
        self.transport.loseConnection()

    # Transactions and their log line

    def _resetTransaction(self, why: str) -> None:
        if self._tx is not None:
            self._endTransaction(f"abandoned: {why}")

    def _endTransaction(self, result: str) -> None:
        tx, self._tx = self._tx, None
        if tx is not None:
            self._logTransaction(tx, result)

    def _logTransaction(self, tx: _Transaction, result: str, ids: Sequence[str] = ()) -> None:
        """
        The one line an operator greps for: who sent what to whom, and
        what became of it.
        """
        self._log.info(
            "client={client} helo={helo} from=<{sender}> to={recipients} "
            "rejected={rejected} size={size} result={result} id={ids}",
            client=self.session.clientAddress,
            helo=self.session.helo or "",
            sender=tx.sender.mailbox,
            recipients=",".join(str(user) for user, _ in tx.recipients) or "-",
            rejected=",".join(tx.rejected) or "-",
            size=tx.size,
            result=result,
            ids=",".join(ids) or "-",
        )


class HarborSMTPFactory(ServerFactory):
    """
    Builds a L{HarborESMTP} for each connection.
    """

    noisy = False

    def __init__(self, deliverer: Deliverer, hostname: str, clock: IReactorTime | None = None) -> None:
        self._deliverer = deliverer
        self._hostname = hostname
        self._clock = clock

    def buildProtocol(self, addr: IAddress) -> HarborESMTP:
        protocol = HarborESMTP(self._deliverer, self._hostname, self._clock)
        protocol.factory = self
        return protocol
