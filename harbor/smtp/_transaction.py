# -*- test-case-name: harbor.test.test_smtp -*-
"""
One MAIL transaction on the Twisted side: the L{IMessageDelivery} that
decides it, the recipients it took and refused, the L{IMessage} streams its
message goes to, what became of the message, and the log line.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from zope.interface import implementer

from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.logger import Logger
from twisted.mail.smtp import IMessage, SMTPServerError, User
from twisted.python.failure import Failure

from harbor.address import Path
from harbor.delivery import IMessageStream, PathAddress, Session
from harbor.smtp._replies import LOCAL_ERROR, Reply, errorReply, storageReply
from harbor.store.fs import StorageError
from harbor.store.writer import StoredMessage

TRANSACTION_LINE = (
    "client={client} helo={helo} tls={tls} user={user} from=<{sender}> to={recipients} "
    "rejected={rejected} size={size} code={code} result={result} id={ids} duration={duration:.3f}"
)
SESSION_LINE = (
    "client={client} helo={helo} tls={tls} user={user} transactions={count} "
    "errors={errors} duration={duration:.3f} disconnected"
)


class Transaction:
    """
    What one MAIL transaction has gathered, for its replies and its log line.

    @ivar delivery: The L{IMessageDelivery} of the transaction.
    @ivar origin: The sender, as given to the delivery and its users.
    @ivar started: When MAIL was accepted.
    @ivar recipients: The accepted recipients and their message factories.
    @ivar rejected: The addresses refused, for the log line.
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

    def openMessages(self, helo: tuple[bytes | None, bytes]) -> Failure | None:
        """
        Call each recipient's message factory; recipients that share a
        message object (as all of MailHarbor's do) share its stream.

        @param helo: The HELO argument and client address, for the
            delivery's C{Received:} header.
        @return: why that failed, if it did.
        """
        unique: dict[int, IMessageStream] = {}
        try:
            for user, messageFactory in self.recipients:
                message = messageFactory()
                if id(message) not in unique:
                    stream = message if IMessageStream.providedBy(message) else _LineMessage(message)
                    unique[id(message)] = stream
                    header = self.delivery.receivedHeader(helo, self.origin, [u for u, _ in self.recipients])
                    if header:
                        stream.lineReceived(header)
        except Exception:  # noqa: BLE001 -- whatever the delivery raises refuses the message
            failure = Failure()
            for stream in unique.values():
                stream.connectionLost()
            return failure
        self.messages = list(unique.values())
        return None

    def write(self, data: bytes) -> None:
        """
        Pass the next bytes of the message to every stream.
        """
        for message in self.messages:
            message.dataReceived(data)

    def abort(self, log: Logger) -> None:
        """
        Drop the message streams and what they wrote.
        """
        messages, self.messages = self.messages, []
        for message in messages:
            try:
                message.connectionLost()
            except Exception:  # noqa: BLE001 -- logged; the others are still dropped
                log.failure("Error discarding a message")

    def commit(self) -> Deferred[list[tuple[bool, Any]]]:
        """
        The whole message is in: make every stream durable.

        @return: each stream's outcome, as L{DeferredList} gives them.
        """
        messages, self.messages = self.messages, []
        return DeferredList([maybeDeferred(m.eomReceived) for m in messages], consumeErrors=True)

    def logLine(
        self,
        log: Logger,
        session: Session,
        code: int,
        size: int,
        now: float,
        result: str,
        ids: Sequence[str] = (),
    ) -> None:
        """
        The one line an operator greps for: who sent what to whom, over
        what, and what became of it (the reply code sent last).
        """
        logRendered(
            log,
            TRANSACTION_LINE,
            harbor_event="transaction",
            client=session.clientAddress,
            helo=session.helo or "",
            tls=session.tls or "-",
            user=session.user or "-",
            code=code,
            duration=now - self.started,
            sender=self.sender.mailbox,
            recipients=",".join(bytes(user.dest).decode("utf-8", "replace") for user, _ in self.recipients)
            or "-",
            rejected=",".join(self.rejected) or "-",
            size=size,
            result=result,
            ids=",".join(ids) or "-",
        )


def storedReply(outcomes: list[tuple[bool, Any]]) -> tuple[Reply, list[str]]:
    """
    The 250 reply to a message all of whose streams were committed, naming
    the stored copies, and their ids.
    """
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
    return Reply(250, "2.0.0", text), ids


def failureReply(failure: Failure, log: Logger) -> Reply:
    """
    The answer to a message that could not be stored, logged: a local
    storage problem is temporary (452 for a full disk, otherwise 451) so
    the sender retries; an SMTP error keeps its own code; anything else is
    a bug, logged, and also answered 451 so no mail is lost.
    """
    error = failure.value
    if isinstance(error, StorageError):
        log.error("Storage failure: {error}", error=failure.getErrorMessage())
        return storageReply(error.noSpace)
    if isinstance(error, SMTPServerError):
        return errorReply(error.code, error.resp, "5.3.0")
    log.failure("Delivery failed", failure)
    return LOCAL_ERROR


def logRendered(log: Logger, template: str, **fields: object) -> None:
    """
    Log a line of every transaction or session: the fields stay the
    event's structured fields, and the text is rendered here by C{str.format}
    and handed over as C{{line}}, because C{twisted.logger} would render
    the template with the pure-Python C{string.Formatter}, field by field,
    for every message (a quarter of the CPU a message costs).
    """
    log.info("{line}", line=template.format(**fields), **fields)


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
