"""
Tests for draining (L{harbor.drain}): the sessions' part over
L{StringTransport}, the state machine with a L{Clock}, and
C{mailharbor drain}.
"""

from __future__ import annotations

import argparse
import io
import os
import signal
from typing import ClassVar, cast

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from harbor.cli.commands import CommandError
from harbor.cli.main import main
from harbor.cli.signals import drainCommand, readPidfile
from harbor.drain import DRAIN_SIGNAL, Drain
from harbor.health import Readiness, State
from harbor.limits import Limits
from harbor.routing import DomainConfig
from harbor.smtp._factory import HarborSMTPFactory, ServerSettings, SessionRegistry
from harbor.test._support import (
    HOSTNAME,
    DeferredThreads,
    SMTPDriver,
    files,
    makeDeliverer,
)

ENVELOPE = b"MAIL FROM:<s@x.org>\r\nRCPT TO:<a@example.com>\r\n"
GOODBYE = b"421 4.3.2 mx.example.com Service shutting down, try again later\r\n"


class SessionDrainTests(SynchronousTestCase):
    """
    What a draining session does: its transaction finishes, then 421 4.3.2.
    """

    domains: ClassVar[list[DomainConfig]] = [DomainConfig("example.com")]

    def setUp(self) -> None:
        self.root = self.mktemp()
        self.threads = DeferredThreads()
        self.clock = Clock()
        self.deliverer, _ = makeDeliverer(self.root, self.domains, runInThread=self.threads, clock=self.clock)
        self.factory = HarborSMTPFactory(self.deliverer, ServerSettings(HOSTNAME, Limits()), self.clock)
        self.registry = self.factory.registry

    def connect(self) -> SMTPDriver:
        return SMTPDriver(self.deliverer, self.clock, factory=self.factory, ehlo=b"client.example")

    def test_idleSessionToldAtOnce(self) -> None:
        """
        A session with no transaction gets 421 4.3.2 at once and is closed;
        whenEmpty fires once it has gone.
        """
        smtp = self.connect()
        empty = self.registry.whenEmpty()
        self.registry.drain()
        self.assertEqual(smtp.take(), GOODBYE)
        self.assertTrue(smtp.transport.disconnecting)
        self.assertNoResult(empty)
        smtp.close()
        self.successResultOf(empty)

    def test_transactionBeforeDataFinishes(self) -> None:
        """
        A session between MAIL and DATA may carry on: more recipients, the
        message and its 250; its next command gets 421 4.3.2.  The message
        is stored.
        """
        smtp = self.connect()
        smtp.send(ENVELOPE)
        self.registry.drain()
        self.assertEqual(smtp.take(), b"")
        self.assertEqual(smtp.send(b"RCPT TO:<b@example.com>\r\n"), b"250 2.1.5 Ok\r\n")
        self.assertEqual(smtp.send(b"DATA\r\n")[:3], b"354")
        smtp.send(b"Subject: x\r\n\r\nbody\r\n.\r\n")
        self.threads.runAll()
        self.assertTrue(smtp.take().startswith(b"250 2.0.0 Ok: stored as "))
        self.assertFalse(smtp.transport.disconnecting)
        self.assertEqual(smtp.send(b"MAIL FROM:<s@x.org>\r\n"), GOODBYE)
        self.assertTrue(smtp.transport.disconnecting)
        # One copy per recipient.
        self.assertEqual(len(files(self.root, "example.com", "new")), 2)
        smtp.close()

    def test_quitAfterTransaction(self) -> None:
        """
        A draining session's QUIT after its message gets 221 as always, so
        a client that sent its mail sees nothing amiss.
        """
        smtp = self.connect()
        smtp.send(ENVELOPE + b"DATA\r\n")
        self.registry.drain()
        smtp.send(b"Subject: x\r\n\r\nbody\r\n.\r\nQUIT\r\n")
        self.threads.runAll()
        replies = smtp.take().split(b"\r\n")
        self.assertTrue(replies[0].startswith(b"250 2.0.0 Ok: stored as "), replies)
        self.assertEqual(replies[1], b"221 2.0.0 Bye")
        smtp.close()

    def test_resetEndsTransaction(self) -> None:
        """
        A draining session whose client resets its transaction gets the
        RSET's 250, then 421 4.3.2 to its next command.
        """
        smtp = self.connect()
        smtp.send(ENVELOPE)
        self.registry.drain()
        self.assertEqual(smtp.send(b"RSET\r\nNOOP\r\n"), b"250 2.0.0 Ok\r\n" + GOODBYE)
        smtp.close()

    def test_commandBeingAnswered(self) -> None:
        """
        A session whose command waits for its answer (a slow delivery
        check) when the drain comes gets that answer first.
        """
        from twisted.internet.defer import Deferred

        smtp = self.connect()
        waiting: Deferred[object] = Deferred()
        delivery = self.deliverer.factoryFor(smtp.protocol.session).getMessageDelivery()
        self.patch(type(delivery), "validateFrom", lambda self, helo, origin: waiting.addCallback(lambda _: origin))
        smtp.send(b"MAIL FROM:<s@x.org>\r\n")
        self.registry.drain()
        self.assertEqual(smtp.take(), b"")
        waiting.callback(None)
        self.assertEqual(smtp.take(), b"250 2.1.0 Ok\r\n")
        self.assertEqual(smtp.send(b"RSET\r\nNOOP\r\n"), b"250 2.0.0 Ok\r\n" + GOODBYE)
        smtp.close()

    def test_shutdownEndsLeavingSession(self) -> None:
        """
        A session waiting for its last command when the server stops is
        told 421 4.3.2 then.
        """
        smtp = self.connect()
        smtp.send(ENVELOPE)
        self.registry.drain()
        smtp.send(b"RSET\r\n")
        self.registry.shutdown(30, self.clock)
        self.assertEqual(smtp.take(), GOODBYE)
        smtp.close()

    def test_notDrainingServesOn(self) -> None:
        """
        Without a drain, a session's commands after a message are answered
        as usual (the goodbye comes only from a drain).
        """
        smtp = self.connect()
        smtp.send(ENVELOPE + b"DATA\r\nSubject: x\r\n\r\nbody\r\n.\r\n")
        self.threads.runAll()
        self.assertTrue(smtp.take().startswith(b"250 2.0.0 Ok: stored as "))
        self.assertEqual(smtp.send(b"NOOP\r\n"), b"250 2.0.0 Ok\r\n")
        smtp.close()

    def test_transactionLogKeepsItsCode(self) -> None:
        """
        The transaction line of a message stored while draining names the
        code of its own reply, 250, not the goodbye that followed.
        """
        from twisted.logger import ILogObserver, Logger

        from harbor.smtp._protocol import HarborESMTP

        events: list[dict[str, object]] = []
        self.patch(HarborESMTP, "_log", Logger(observer=cast(ILogObserver, events.append)))
        smtp = self.connect()
        smtp.send(ENVELOPE)
        self.registry.drain()
        smtp.send(b"DATA\r\nSubject: x\r\n\r\nbody\r\n.\r\n")
        self.threads.runAll()
        lines = [e for e in events if e.get("harbor_event") == "transaction"]
        self.assertEqual([(e["code"], e["result"]) for e in lines], [(250, "stored")])
        smtp.close()


class _Sessions:
    """
    Open sessions, for the state machine.
    """

    def __init__(self, count: int) -> None:
        self.count = count
        self.drained = 0
        self.empty: Deferred[None] = Deferred()

    def __len__(self) -> int:
        return self.count

    def drain(self) -> None:
        self.drained += 1

    def whenEmpty(self) -> Deferred[None]:
        return self.empty


class DrainStateTests(SynchronousTestCase):
    """
    L{Drain}: readiness at once, the ports after the delay, the stop once
    the sessions are done or the grace is over.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.readiness = Readiness()
        self.readiness.listening()
        self.sessions = _Sessions(2)
        self.closed: list[float] = []
        self.stopped: list[float] = []
        self.others: Deferred[None] = Deferred()

        def stopListening() -> Deferred[None]:
            self.closed.append(self.clock.seconds())
            return succeed(None)

        self.drain = Drain(
            self.readiness,
            self.clock,
            self.sessions,
            stopListening,
            lambda: self.stopped.append(self.clock.seconds()),
            delay=5,
            grace=30,
            others=lambda: self.others,
        )

    def test_readinessFailsAtOnce(self) -> None:
        """
        Starting a drain makes the process not ready before anything else
        happens; the ports still listen until the delay is over.
        """
        self.assertTrue(self.readiness.ready)
        self.drain.start()
        self.assertEqual(self.readiness.state, State.DRAINING)
        self.assertEqual((self.closed, self.sessions.drained), ([], 0))
        self.clock.advance(4.9)
        self.assertEqual(self.closed, [])
        self.clock.advance(0.1)
        self.assertEqual((self.closed, self.sessions.drained), ([5], 1))

    def test_stopsWhenSessionsAndWorkersEnd(self) -> None:
        """
        The process stops once the sessions and the other processes have
        ended, not before.
        """
        self.drain.start()
        self.clock.advance(5)
        self.sessions.empty.callback(None)
        self.assertEqual(self.stopped, [])
        self.clock.advance(3)
        self.others.callback(None)
        self.assertEqual(self.stopped, [8])
        self.successResultOf(self.drain.done)
        self.assertFalse(self.clock.getDelayedCalls())

    def test_graceOver(self) -> None:
        """
        Sessions still open C{grace} seconds after the ports closed do not
        hold the process: it stops (and, stopping, cuts them off).
        """
        self.drain.start()
        self.clock.advance(5)
        self.clock.advance(29)
        self.assertEqual(self.stopped, [])
        self.clock.advance(1)
        self.assertEqual(self.stopped, [35])
        self.sessions.empty.callback(None)
        self.others.callback(None)
        self.assertEqual(self.stopped, [35])

    def test_secondStartIgnored(self) -> None:
        """
        A second drain request does not restart the delay.
        """
        self.drain.start()
        self.clock.advance(3)
        self.drain.start()
        self.clock.advance(2)
        self.assertEqual(self.closed, [5])

    def test_cancel(self) -> None:
        """
        A service stopping by other means cancels the drain's timer.
        """
        self.drain.start()
        self.drain.cancel()
        self.assertFalse(self.clock.getDelayedCalls())
        self.assertEqual(self.closed, [])

    def test_realRegistry(self) -> None:
        """
        With no session open, the real registry's whenEmpty has fired, and
        the drain ends with the ports.
        """
        drain = Drain(
            self.readiness, self.clock, SessionRegistry(), lambda: succeed(None),
            lambda: self.stopped.append(self.clock.seconds()), delay=1, grace=30,
        )
        drain.start()
        self.clock.advance(1)
        self.assertEqual(self.stopped, [1])


class DrainCommandTests(SynchronousTestCase):
    """
    C{mailharbor drain}: the pidfile, the signal, the wait.
    """

    def pidfile(self, text: str) -> str:
        path: str = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_signalsThePidfilesProcess(self) -> None:
        """
        The drain signal (SIGUSR2, not twistd's SIGUSR1) goes to the pid in
        the pidfile.
        """
        sent: list[tuple[int, int]] = []
        out = io.StringIO()
        arguments = argparse.Namespace(pidfile=self.pidfile("4242\n"), wait=None)
        status = drainCommand(arguments, out, io.StringIO(), 0, kill=lambda pid, sig: sent.append((pid, sig)))
        self.assertEqual((status, sent), (0, [(4242, signal.SIGUSR2)]))
        self.assertEqual(DRAIN_SIGNAL, signal.SIGUSR2)
        self.assertIn("pid 4242", out.getvalue())

    def test_waitUntilGone(self) -> None:
        """
        With C{--wait}, the command returns once the process is gone, or
        fails with status 3 after the time given.
        """
        alive = [True, True, False]
        arguments = argparse.Namespace(pidfile=self.pidfile("4242"), wait=10.0)
        status = drainCommand(
            arguments, io.StringIO(), io.StringIO(), 0, kill=lambda pid, sig: None,
            isAlive=lambda pid: alive.pop(0), sleep=lambda s: None, clock=lambda: 0.0,
        )
        self.assertEqual(status, 0)
        times = iter([0.0, 5.0, 11.0])
        e = self.assertRaises(
            CommandError, drainCommand, arguments, io.StringIO(), io.StringIO(), 0,
            kill=lambda pid, sig: None, isAlive=lambda pid: True, sleep=lambda s: None,
            clock=lambda: next(times),
        )
        self.assertEqual(e.status, 3)

    def test_clearErrors(self) -> None:
        """
        A missing pidfile, one that holds no pid, and a pid with no process
        are each a one-line error with status 1, not a traceback.
        """
        err = io.StringIO()
        missing = os.path.abspath(self.mktemp())
        self.assertEqual(main(["drain", "--pidfile", missing], io.StringIO(), err), 1)
        self.assertIn("no such pidfile", err.getvalue())
        self.assertRaises(CommandError, readPidfile, self.pidfile("garbage"))

        def gone(pid: int, sig: int) -> None:
            raise ProcessLookupError()

        e = self.assertRaises(
            CommandError, drainCommand, argparse.Namespace(pidfile=self.pidfile("999999"), wait=None),
            io.StringIO(), io.StringIO(), 0, kill=gone,
        )
        self.assertIn("not running", str(e))
