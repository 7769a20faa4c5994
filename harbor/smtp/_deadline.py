# -*- test-case-name: harbor.test.test_deadline -*-
"""
How long a client has for what it is sending, without a clock of its own:
given the times and byte counts the driver reports, L{ClientDeadline} says
when the client has missed its deadline, and which rule it missed.

Restarting an idle timer on every byte (Twisted's C{TimeoutMixin}, and
MailHarbor before) lets a client that sends one byte every few seconds hold
a connection for ever.  The rules here are those of Postfix's
C{smtpd_per_request_deadline} and C{smtpd_min_data_rate} (RFC 5321 section
4.5.3.2 gives the timeouts):

 - a command line (or a SASL response) has C{command_timeout} from its
   first byte to its CRLF, and the client C{command_timeout} to start it
   once the reply to the one before is sent;
 - message data (a DATA body or one BDAT chunk) starts with a budget of
   C{data_timeout} seconds; time spent uses it up, and every byte received
   adds C{1 / min_data_rate} seconds back, but never more than
   C{data_timeout} in all.  Silence for C{data_timeout} ends it, and so does
   a lasting rate below C{min_data_rate}; a client at or above the rate
   never runs out, however long the message;
 - a message sent in BDAT chunks has such a budget of its own too, from
   its first chunk to its last, the commands between the chunks included:
   otherwise tiny chunks (C{BDAT 1}, each command just inside
   C{command_timeout}) would trickle a message for ever.

Only the client's time counts: while MailHarbor is busy with the request
(a reply that waits for a policy hook, a password check or storage), the
clock is stopped, and it carries on from where it was.

No I/O and no Twisted.
"""

from __future__ import annotations

from attrs import frozen

# The rules a client can miss, as logged.
IDLE = "idle"
COMMAND_DEADLINE = "command deadline"
DATA_IDLE = "data idle"
DATA_RATE = "data rate"

# The text of the 421 4.4.2 reply for each, after the host name.
REPLY_TEXTS = {
    IDLE: "Error: timeout exceeded",
    COMMAND_DEADLINE: "Error: command deadline exceeded",
    DATA_IDLE: "Error: timeout exceeded",
    DATA_RATE: "Error: data rate too low",
}

# A timer scheduled for a deadline may fire a rounding error before it.
_TOLERANCE = 1e-6


@frozen
class Missed:
    """
    Why a client's time is up.

    @ivar rule: L{IDLE}, L{COMMAND_DEADLINE}, L{DATA_IDLE} or L{DATA_RATE}.
    @ivar received: Bytes of the request received so far.
    @ivar elapsed: The client's seconds on the request: for
        L{COMMAND_DEADLINE} since the line's first byte, otherwise since
        the request started (the reply before it was sent).
    """

    rule: str
    received: int
    elapsed: float

    @property
    def text(self) -> str:
        """
        The reply text, after the host name.
        """
        return REPLY_TEXTS[self.rule]


class ClientDeadline:
    """
    The deadline of the request a client is sending: see the module
    docstring.

    Times are the driver's clock (seconds); the client's own time is that
    clock less the time MailHarbor was busy (L{pause} to L{resume}).
    """

    def __init__(self, commandTimeout: float, dataTimeout: float, minDataRate: float, now: float) -> None:
        """
        Start with the client's first command due.

        @param minDataRate: Bytes per second; 0 leaves only the silence
            bound, C{dataTimeout}, in message data.
        """
        self._commandTimeout = commandTimeout
        self._dataTimeout = dataTimeout
        self._secondsPerByte = 1 / minDataRate if minDataRate > 0 else None
        # Time MailHarbor was busy, and since when it is, if it is.
        self._busy = 0.0
        self._busySince: float | None = None
        self._data = False
        self._started = 0.0
        self._firstByte: float | None = None
        self._lastByte = 0.0
        self._received = 0
        # In message data: the seconds left as of client time _budgetAt.
        self._budget = 0.0
        self._budgetAt = 0.0
        # A chunked message's own budget: (seconds left, as of client
        # time, bytes of it credited so far), and when its first chunk came.
        self._message: tuple[float, float, int] | None = None
        self._messageStarted = 0.0
        self.startCommand(now, 0)

    def _clientTime(self, now: float) -> float:
        if self._busySince is not None:
            now = self._busySince
        return now - self._busy

    @property
    def inData(self) -> bool:
        """
        Whether the request is message data rather than a command line.
        """
        return self._data

    def startCommand(self, now: float, buffered: int) -> None:
        """
        The reply to the last request is sent: a command line is due.

        @param buffered: Bytes received and not yet read, pipelined ahead;
            a line they start counts as started now.
        """
        self._start(now, data=False, buffered=buffered)
        if buffered:
            self._firstByte = self._started

    def startData(self, now: float, buffered: int) -> None:
        """
        Message data is due: the 354 reply to DATA is sent, or a BDAT
        command has been read.

        @param buffered: Bytes received and not yet read; they were
            received before the data was due, so they earn no time.
        """
        self._start(now, data=True, buffered=buffered)
        self._budget = self._dataTimeout
        self._budgetAt = self._started

    def _start(self, now: float, data: bool, buffered: int) -> None:
        self._data = data
        self._started = self._lastByte = self._clientTime(now)
        self._firstByte = None
        self._received = buffered

    def received(self, now: float, count: int) -> None:
        """
        C{count} bytes have arrived (the driver need not know what they
        are: the first after a reply starts the next line).
        """
        if not count:
            return
        client = self._clientTime(now)
        self._received += count
        self._lastByte = client
        if not self._data:
            if self._firstByte is None:
                self._firstByte = client
            return
        self._budget = self._earn(self._budget, self._budgetAt, client, count)
        self._budgetAt = client
        if self._message is not None:
            budget, at, credited = self._message
            self._message = (self._earn(budget, at, client, count), client, credited + count)

    def _earn(self, budget: float, at: float, client: float, count: int) -> float:
        """
        A data budget of C{budget} seconds as of client time C{at}, spent
        until C{client} and earned back by C{count} bytes then: Postfix's
        smtpd_min_data_rate.  The bytes earn time only while some is left,
        and never more than the silence bound (a fast start buys no later
        trickle).
        """
        left = budget - (client - at)
        if self._secondsPerByte is None:
            return self._dataTimeout if count else left
        if left > 0:
            return min(self._dataTimeout, left + count * self._secondsPerByte)
        return left

    def chunkedMessage(self, now: float, size: int | None) -> None:
        """
        Between commands: the size so far of the message being sent in
        BDAT chunks, or L{None} when there is none (its last chunk came,
        or it was reset).  The message's budget is spent by the client's
        time since its first chunk and earned by its bytes as they come
        (L{received}), as in message data.
        """
        if size is None:
            self._message = None
            return
        client = self._clientTime(now)
        if self._message is None:
            self._message = (self._dataTimeout, client, size)
            self._messageStarted = client
            return
        budget, at, credited = self._message
        self._message = (self._earn(budget, at, client, max(0, size - credited)), client, max(credited, size))

    def pause(self, now: float) -> None:
        """
        MailHarbor is busy with the client's request: its clock stops.
        """
        if self._busySince is None:
            self._busySince = now

    def resume(self, now: float) -> None:
        """
        MailHarbor is done: the client's clock carries on where it stopped.
        """
        if self._busySince is not None:
            self._busy += now - self._busySince
            self._busySince = None

    def _clientDeadline(self) -> float:
        if self._data:
            deadline = self._budgetAt + self._budget
        else:
            start = self._started if self._firstByte is None else self._firstByte
            deadline = start + self._commandTimeout
        if self._message is not None:
            budget, at, _ = self._message
            deadline = min(deadline, at + budget)
        return deadline

    def expiry(self) -> float | None:
        """
        When, on the driver's clock, the client will have missed its
        deadline unless something changes; L{None} while MailHarbor is
        busy.
        """
        if self._busySince is not None:
            return None
        return self._clientDeadline() + self._busy

    def missed(self, now: float) -> Missed | None:
        """
        Whether the client has missed its deadline by C{now}, and why.
        """
        expiry = self.expiry()
        if expiry is None or now + _TOLERANCE < expiry:
            return None
        client = self._clientTime(now)
        if self._data and client + _TOLERANCE >= self._budgetAt + self._budget:
            silent = client - self._lastByte + _TOLERANCE >= self._dataTimeout
            return Missed(DATA_IDLE if silent else DATA_RATE, self._received, client - self._started)
        if self._message is not None and client + _TOLERANCE >= self._message[0] + self._message[1]:
            return Missed(DATA_RATE, self._message[2], client - self._messageStarted)
        if self._data:
            return Missed(DATA_RATE, self._received, client - self._started)
        if self._firstByte is None:
            return Missed(IDLE, self._received, client - self._started)
        return Missed(COMMAND_DEADLINE, self._received, client - self._firstByte)
