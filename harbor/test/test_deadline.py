"""
Tests for L{harbor.smtp._deadline}: the client's deadlines, from times and
byte counts alone, with no reactor.
"""

from twisted.trial.unittest import SynchronousTestCase

from harbor.smtp._deadline import (
    COMMAND_DEADLINE,
    DATA_IDLE,
    DATA_RATE,
    IDLE,
    ClientDeadline,
    Missed,
)


def trickle(deadline: ClientDeadline, start: float, every: float, count: int, size: int = 1) -> float:
    """
    Feed C{count} reads of C{size} bytes, one every C{every} seconds after
    C{start}, stopping at the first that comes after the deadline.

    @return: the time of the last read fed.
    """
    now = start
    for _ in range(count):
        now += every
        if deadline.missed(now) is not None:
            break
        deadline.received(now, size)
    return now


class CommandDeadlineTests(SynchronousTestCase):
    """
    A command line has C{commandTimeout} from its first byte, and the
    client as long again to start it.
    """

    def test_idle(self) -> None:
        """
        With nothing sent, the deadline is C{commandTimeout} after the
        command became due, and missing it is the idle rule.
        """
        deadline = ClientDeadline(30, 20, 500, now=100)
        self.assertEqual(deadline.expiry(), 130)
        self.assertIsNone(deadline.missed(129.9))
        self.assertEqual(deadline.missed(130), Missed(IDLE, 0, 30))

    def test_lineFromItsFirstByte(self) -> None:
        """
        The first byte of a line moves the deadline to C{commandTimeout}
        after it; later bytes do not move it at all.
        """
        deadline = ClientDeadline(30, 20, 500, now=0)
        deadline.received(10, 1)
        self.assertEqual(deadline.expiry(), 40)
        deadline.received(39, 100)
        self.assertEqual(deadline.expiry(), 40)
        self.assertEqual(deadline.missed(40), Missed(COMMAND_DEADLINE, 101, 30))

    def test_trickleCutOff(self) -> None:
        """
        A byte every 20 s never finishes a line in time: it is cut off
        C{commandTimeout} after its first byte, not restarted per byte.
        """
        deadline = ClientDeadline(300, 180, 500, now=0)
        last = trickle(deadline, 0, 20, 1000)
        self.assertEqual(last, 320)
        self.assertEqual(deadline.missed(last), Missed(COMMAND_DEADLINE, 15, 300))

    def test_nextCommand(self) -> None:
        """
        Once the reply is sent, the next line has its own deadline, from
        the reply (and then from its own first byte).
        """
        deadline = ClientDeadline(30, 20, 500, now=0)
        deadline.received(25, 6)
        deadline.startCommand(25, 0)
        self.assertEqual(deadline.expiry(), 55)
        deadline.received(50, 1)
        self.assertEqual(deadline.expiry(), 80)

    def test_pipelinedLineStartsWithTheReply(self) -> None:
        """
        A line already buffered when the reply before it is sent counts as
        started then.
        """
        deadline = ClientDeadline(30, 20, 500, now=0)
        deadline.received(5, 10)
        deadline.startCommand(12, 4)
        self.assertEqual(deadline.expiry(), 42)
        deadline.received(20, 1)
        self.assertEqual(deadline.expiry(), 42)
        self.assertEqual(deadline.missed(42), Missed(COMMAND_DEADLINE, 5, 30))

    def test_ourWaitIsNotTheClients(self) -> None:
        """
        While MailHarbor is busy there is no deadline, and afterwards the
        client has what it had left when the wait began, bytes that came
        meanwhile included.
        """
        deadline = ClientDeadline(30, 20, 500, now=0)
        deadline.received(10, 5)
        deadline.pause(10)
        self.assertIsNone(deadline.expiry())
        self.assertIsNone(deadline.missed(1000))
        deadline.received(500, 3)
        deadline.resume(1010)
        self.assertEqual(deadline.expiry(), 1040)
        self.assertEqual(deadline.missed(1040), Missed(COMMAND_DEADLINE, 8, 30))

    def test_pauseTwice(self) -> None:
        """
        A second pause before the resume does not restart the wait.
        """
        deadline = ClientDeadline(30, 20, 500, now=0)
        deadline.pause(5)
        deadline.pause(8)
        deadline.resume(15)
        deadline.resume(99)
        self.assertEqual(deadline.expiry(), 40)


class DataRateTests(SynchronousTestCase):
    """
    Message data starts with C{dataTimeout} in hand; time uses it up, bytes
    earn it back at C{minDataRate}, never beyond C{dataTimeout}.
    """

    def test_silence(self) -> None:
        """
        Silent data is cut off after C{dataTimeout}, as the idle rule of
        message data.
        """
        deadline = ClientDeadline(30, 20, 500, now=0)
        deadline.startData(7, 0)
        self.assertEqual(deadline.expiry(), 27)
        self.assertEqual(deadline.missed(27), Missed(DATA_IDLE, 0, 20))

    def test_trickleBelowTheRate(self) -> None:
        """
        A byte every 5 s (each earning 2 ms at 500 bytes/s) never goes
        silent for C{dataTimeout}, yet is cut off when the time in hand is
        gone, just after C{dataTimeout}, as the rate rule.
        """
        deadline = ClientDeadline(300, 180, 500, now=0)
        deadline.startData(0, 0)
        last = trickle(deadline, 0, 5, 1000)
        expiry = deadline.expiry()
        assert expiry is not None
        self.assertTrue(180 < expiry < 181, expiry)
        self.assertEqual(deadline.missed(last), Missed(DATA_RATE, 36, last))

    def test_honestSlowLink(self) -> None:
        """
        25 MiB at 1 KB/s (over seven hours) never runs out of time.
        """
        deadline = ClientDeadline(300, 180, 500, now=0)
        deadline.startData(0, 0)
        last = trickle(deadline, 0, 1, 25 * 1024 + 1, size=1024)
        self.assertEqual(last, 25 * 1024 + 1)
        self.assertIsNone(deadline.missed(last))

    def test_atTheRate(self) -> None:
        """
        A client at exactly the rate keeps what it had in hand.
        """
        deadline = ClientDeadline(300, 180, 500, now=0)
        deadline.startData(0, 0)
        deadline.received(50, 500 * 50)
        self.assertEqual(deadline.expiry(), 50 + 180)

    def test_fastStartBuysNoTrickle(self) -> None:
        """
        Bytes earn no more than C{dataTimeout} in all: a fast first megabyte
        does not let the rest trickle for hours.
        """
        deadline = ClientDeadline(300, 180, 500, now=0)
        deadline.startData(0, 0)
        deadline.received(1, 1024 * 1024)
        self.assertEqual(deadline.expiry(), 181)

    def test_belowTheRateRunsOut(self) -> None:
        """
        At 400 bytes/s the time in hand shrinks by a fifth of a second each
        second: it is gone after 900 s.
        """
        deadline = ClientDeadline(300, 180, 500, now=0)
        deadline.startData(0, 0)
        last = trickle(deadline, 0, 1, 2000, size=400)
        self.assertTrue(895 <= last <= 901, last)
        missed = deadline.missed(last)
        assert missed is not None
        self.assertEqual(missed.rule, DATA_RATE)

    def test_bufferedBytesEarnNothing(self) -> None:
        """
        Bytes already buffered when the data becomes due (a BDAT chunk sent
        with its command) count for the log, not for time.
        """
        deadline = ClientDeadline(300, 20, 500, now=0)
        deadline.startData(0, 1000000)
        self.assertEqual(deadline.expiry(), 20)
        self.assertEqual(deadline.missed(20), Missed(DATA_IDLE, 1000000, 20))

    def test_lateBytesEarnNothing(self) -> None:
        """
        Bytes that come once the time in hand is gone do not revive it.
        """
        deadline = ClientDeadline(300, 20, 500, now=0)
        deadline.startData(0, 0)
        deadline.received(25, 100000)
        self.assertIsNotNone(deadline.missed(25))

    def test_rateZeroDisabled(self) -> None:
        """
        With C{minDataRate} 0 only silence counts: each byte gives the
        client C{dataTimeout} again, and a slow trickle lasts for ever.
        """
        deadline = ClientDeadline(300, 180, 0, now=0)
        deadline.startData(0, 0)
        last = trickle(deadline, 0, 20, 1000)
        self.assertEqual(last, 20000)
        self.assertIsNone(deadline.missed(last))
        self.assertEqual(deadline.missed(last + 180), Missed(DATA_IDLE, 1000, 20180))

    def test_ourWaitIsNotTheClients(self) -> None:
        """
        A pause in message data stops the budget from running down.
        """
        deadline = ClientDeadline(300, 20, 500, now=0)
        deadline.startData(0, 0)
        deadline.pause(10)
        deadline.resume(110)
        self.assertEqual(deadline.expiry(), 120)

    def test_backToCommands(self) -> None:
        """
        After the data, the next command has C{commandTimeout} again.
        """
        deadline = ClientDeadline(300, 20, 500, now=0)
        deadline.startData(0, 0)
        self.assertTrue(deadline.inData)
        deadline.startCommand(15, 0)
        self.assertFalse(deadline.inData)
        self.assertEqual(deadline.expiry(), 315)

    def test_chunkedMessageRunsOut(self) -> None:
        """
        A message sent in tiny BDAT chunks spends one budget across them,
        the commands between included: once it is spent, the next command
        is due at once and missing it is the data rate rule.
        """
        deadline = ClientDeadline(300, 20, 500, now=0)
        deadline.chunkedMessage(0, 1)
        deadline.startCommand(15, 0)
        deadline.chunkedMessage(15, 2)
        self.assertAlmostEqual(deadline.expiry() or 0, 20.002)
        self.assertIsNone(deadline.missed(20))
        self.assertEqual(deadline.missed(20.01), Missed(DATA_RATE, 2, 20.01))

    def test_chunkedMessageAtTheRate(self) -> None:
        """
        Chunks that keep the message above the rate leave the command
        deadline alone, however many.
        """
        deadline = ClientDeadline(300, 20, 500, now=0)
        for second in range(1000):
            deadline.startCommand(second, 0)
            deadline.chunkedMessage(second, second * 1000)
        self.assertEqual(deadline.expiry(), 999 + 20)
        self.assertIsNone(deadline.missed(1000))

    def test_longChunksAboveTheRate(self) -> None:
        """
        A chunked message whose chunks each take ten times the data
        timeout, at 600 bytes/s against a minimum of 500, never runs out:
        its bytes earn the message's time as they come.
        """
        deadline = ClientDeadline(300, 20, 500, now=0)
        now = 0.0
        for chunk in range(5):
            deadline.startData(now, 0)
            for _ in range(200):
                now += 1
                self.assertIsNone(deadline.missed(now))
                deadline.received(now, 600)
            deadline.startCommand(now, 0)
            deadline.chunkedMessage(now, (chunk + 1) * 120000)
            self.assertIsNone(deadline.missed(now + 1))

    def test_chunkedMessageOver(self) -> None:
        """
        Once the chunked message is over, only the command deadline is left.
        """
        deadline = ClientDeadline(300, 20, 500, now=0)
        deadline.chunkedMessage(0, 1)
        deadline.chunkedMessage(5, None)
        self.assertEqual(deadline.expiry(), 300)

    def test_texts(self) -> None:
        """
        Each rule has the text of its 421 reply; the idle ones keep the
        text MailHarbor always sent.
        """
        self.assertEqual(
            [Missed(rule, 0, 0).text for rule in (IDLE, COMMAND_DEADLINE, DATA_IDLE, DATA_RATE)],
            [
                "Error: timeout exceeded",
                "Error: command deadline exceeded",
                "Error: timeout exceeded",
                "Error: data rate too low",
            ],
        )
