# -*- test-case-name: harbor.test.test_esmtp -*-
"""
Running an L{SMTPSession} on a Twisted transport: what any server built on
the session needs, whatever it answers.

The session decides nothing about time or sockets.  L{SessionDriver} feeds
it the bytes the transport delivers and hands each event to a method of the
subclass, in order.  An answer that takes a L{Deferred} holds the session
(and stops the client's clock) until it is sent, so pipelined commands are
answered in order (RFC 2920).  Replies are produced for the transport
(L{IPushProducer}): while the client does not read them, no more are
made, and once it has sent far ahead, it is no longer read from.

The client's deadlines are L{ClientDeadline}'s (one per command line, a
minimum rate in message data); the driver tells it what happened, when, on
the injected clock, and keeps one timer at the deadline it gives.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from zope.interface import implementer

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from harbor.smtp._deadline import ClientDeadline, Missed
from harbor.smtp._events import Wait
from harbor.smtp._replies import PROCESSING_ERROR, Reply
from harbor.smtp._session import SMTPSession

# Input a client may send ahead of our replies before we stop reading.
MAX_BUFFERED_INPUT = 256 * 1024

# Seconds a closing connection may take to hand over its last reply before
# it is aborted: a client that does not read would otherwise hold it open.
CLOSE_GRACE = 10.0


@implementer(IPushProducer)
class SessionDriver(Protocol):
    """
    An L{SMTPSession} on a transport.

    Subclasses name the method that handles each event in C{_handlers}, by
    name so that a test can replace one on an instance, and answer with
    L{_reply} (or L{_send}), through L{_waitFor} when the answer is a
    L{Deferred}.
    """

    _log: ClassVar[Logger]
    _handlers: ClassVar[dict[type, str]]
    # A TCP or TLS transport: ITCPTransport, ITLSTransport, IProducer and,
    # once TLS is up, ISSLTransport.
    transport: Any

    def __init__(
        self,
        session: SMTPSession,
        clock: IReactorTime,
        commandTimeout: float,
        dataTimeout: float,
        minDataRate: float,
    ) -> None:
        """
        @param commandTimeout: The client's seconds for each command line,
            and to start it once the reply before it is sent.
        @param dataTimeout: The longest silence in message data, and the
            most time the data rate can earn.
        @param minDataRate: Bytes per second a client must keep up in
            message data; 0 for no such rule.
        """
        self._smtp = session
        self._clock = clock
        self._deadline = ClientDeadline(commandTimeout, dataTimeout, minDataRate, clock.seconds())
        self._timer: IDelayedCall | None = None
        self._timing = False
        self._waiting = False
        # The request the deadline is for: whether message data, and the
        # session's count of lines read.
        self._request = (False, 0)
        self._processing = False
        self._inputBacklogged = False
        self._outputBlocked = False
        self._reading = True
        self._closed = False
        self._producing = False
        self._abort: IDelayedCall | None = None

    def callLater(self, period: float, func: Callable[[], object]) -> IDelayedCall:
        """
        Run C{func} later on the injected clock.
        """
        return self._clock.callLater(period, func)

    # The client's clock

    def _startClock(self) -> None:
        """
        The connection is up: the client's first command is due now.
        """
        self._deadline.startCommand(self._clock.seconds(), 0)
        self._request = (False, self._smtp.linesRead)
        self._timing = True
        self._schedule()

    def _track(self) -> None:
        """
        Start the deadline of the next request once the session is ready
        for it: a command line once the last one is answered, message data
        once the 354 reply is sent or a BDAT command read.  Nothing starts
        while a reply waits on our side.
        """
        if self._closed or self._waiting or not self._timing:
            return
        request = (self._smtp.receivingBody, self._smtp.linesRead)
        now = self._clock.seconds()
        if request != self._request:
            self._request = request
            if request[0]:
                self._deadline.startData(now, self._smtp.buffered)
            else:
                self._deadline.startCommand(now, self._smtp.buffered)
        if not request[0]:
            self._deadline.chunkedMessage(now, self._smtp.chunkedSize)
        self._schedule()

    def _schedule(self) -> None:
        """
        Keep the one timer at the client's deadline (moved, not replaced,
        as the deadline moves), or none while we are busy.
        """
        expiry = None if self._closed or not self._timing else self._deadline.expiry()
        timer = self._timer
        if expiry is None:
            if timer is not None and timer.active():
                timer.cancel()
            self._timer = None
            return
        delay = max(0.0, expiry - self._clock.seconds())
        if timer is not None and timer.active():
            timer.reset(delay)
        else:
            self._timer = self._clock.callLater(delay, self._deadlineReached)

    def _deadlineReached(self) -> None:
        self._timer = None
        if self._closed:
            return
        missed = self._deadline.missed(self._clock.seconds())
        if missed is None:
            self._schedule()
            return
        self.timedOut(missed)

    def timedOut(self, missed: Missed) -> None:
        """
        The client has missed its deadline: close the connection.
        Subclasses say goodbye and log why first.
        """
        self._close()

    def _startProducing(self) -> None:
        """
        Produce replies for the transport: when the client stops reading
        them, the transport pauses us and no more commands are answered.
        """
        self.transport.registerProducer(self, True)
        self._producing = True

    def _close(self) -> None:
        self._closed = True
        self._schedule()
        self._smtp.close()
        # A transport with a producer registered would wait for it to be
        # unregistered before closing.
        if self._producing:
            self._producing = False
            self.transport.unregisterProducer()
        self.transport.loseConnection()
        # loseConnection waits for the client to read what is still to be
        # written; one that never reads must not keep its slot.
        if self._abort is None:
            self._abort = self._clock.callLater(CLOSE_GRACE, self.transport.abortConnection)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._closed = True
        self._smtp.close()
        self._schedule()
        if self._abort is not None and self._abort.active():
            self._abort.cancel()

    # Input

    def dataReceived(self, data: bytes) -> None:
        if self._closed:
            return
        self._deadline.received(self._clock.seconds(), len(data))
        self._smtp.receiveData(data)
        self._processInput()

    def _processInput(self) -> None:
        """
        Act on the session's events until it needs more input or waits for
        a reply, or the client stops reading replies.  Message data that
        came with nothing buffered before it is taken all the same: it
        only goes to storage.  Then start the client's clock for what it
        is to send next: no time passes while the events are acted on, so
        only where the session stands at the end matters.
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
                    self._dispatch(event)
                except Exception:  # noqa: BLE001 -- a bug must not leave the client without a reply
                    self._log.failure("Error handling {verb} command", verb=self._smtp.verb)
                    self._reply(PROCESSING_ERROR)
        finally:
            self._processing = False
        self._track()
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

    # Output

    def _send(self, reply: Reply) -> None:
        """
        Write a reply that is not one of the client's errors: a greeting,
        a 421, a SASL challenge.
        """
        self.transport.write(self._smtp.send(reply, counted=False))

    def _reply(self, reply: Reply, counted: bool = True) -> None:
        """
        Send a reply to a command.

        @param counted: Whether a 4xx or 5xx is one of the client's errors.
        """
        self.transport.write(self._smtp.send(reply, counted))

    def _waitFor(
        self,
        result: Deferred[Any],
        onSuccess: Callable[[Any], None],
        onFailure: Callable[[Failure], None],
    ) -> None:
        """
        Stop the client's clock until C{result} fires and its reply is
        sent: our slowness is not the client's.  The session reads nothing
        more until then.

        A result that is already there (the usual MAIL and RCPT) is answered
        at once, with no timer to cancel and set again.
        """
        outcomes: list[object] = []
        result.addBoth(outcomes.append)
        if outcomes:
            self._settle(outcomes[0], onSuccess, onFailure)
            return
        self._waiting = True
        self._deadline.pause(self._clock.seconds())
        self._schedule()

        def resume(ignored: None) -> None:
            self._waiting = False
            self._deadline.resume(self._clock.seconds())
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
            self._settled()

    def _dispatch(self, event: Any) -> None:
        """
        Act on one of the session's events.
        """
        getattr(self, self._handlers[type(event)])(event)

    def _settled(self) -> None:
        """
        A reply that had to wait has been sent (or failed to be).
        """
