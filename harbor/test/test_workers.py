"""
Tests for L{harbor._workers}: the pre-fork worker processes.
"""

from __future__ import annotations

import signal
import socket
import sys
from typing import Any, cast

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.error import ProcessDone, ProcessExitedAlready
from twisted.logger import ILogObserver, Logger
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from harbor._workers import Workers, inheritedSockets


class FakePort:
    """
    A listening port with a file descriptor.
    """

    def __init__(self, fd: int, address: IPv4Address | IPv6Address) -> None:
        self._fd = fd
        self._address = address

    def fileno(self) -> int:
        return self._fd

    def getHost(self) -> IPv4Address | IPv6Address:
        return self._address


class FakeProcess:
    """
    A spawned process that records the signals it is sent.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.signals: list[int] = []
        self.ended = False

    def signalProcess(self, name: int) -> None:
        if self.ended:
            raise ProcessExitedAlready()
        self.signals.append(name)


class FakeProcessReactor:
    """
    Records the processes it is asked to spawn.
    """

    def __init__(self) -> None:
        self.spawned: list[tuple[Any, str, list[str], dict[int, Any]]] = []
        self.processes: list[FakeProcess] = []

    def spawnProcess(
        self, protocol: Any, executable: str, args: list[str], env: Any = None, childFDs: Any = None
    ) -> FakeProcess:
        self.spawned.append((protocol, executable, args, childFDs))
        process = FakeProcess(1000 + len(self.processes))
        self.processes.append(process)
        return process


def endProcess(reactor: FakeProcessReactor, index: int) -> None:
    """
    End a spawned process, as the reactor would tell its protocol.
    """
    reactor.processes[index].ended = True
    reactor.spawned[index][0].processEnded(Failure(ProcessDone(0)))


class InheritedSocketsTests(SynchronousTestCase):
    """
    Tests for L{inheritedSockets}.
    """

    def test_parse(self) -> None:
        """
        C{--inherit-fds} lists file descriptors and address families in the
        order of the listeners; without it there are none.
        """
        self.assertEqual(inheritedSockets("3:2,4:10"), [(3, 2), (4, 10)])
        self.assertEqual(inheritedSockets(None), [])
        self.assertEqual(inheritedSockets(""), [])


class WorkersTests(SynchronousTestCase):
    """
    Tests for L{Workers}.
    """

    def setUp(self) -> None:
        self.reactor = FakeProcessReactor()
        self.events: list[dict[str, Any]] = []
        self.workers = Workers(
            self.reactor, ["--port", "2525", "-d", "a.example"], Logger(observer=cast(ILogObserver, self.events.append))
        )
        self.ports: list[Any] = [
            FakePort(7, IPv4Address("TCP", "127.0.0.1", 2525)),
            FakePort(9, IPv6Address("TCP", "::1", 2526)),
        ]

    def test_start(self) -> None:
        """
        C{count - 1} workers run C{twistd mailharbor} with the same
        arguments, in the foreground and without a pidfile, each given the
        listening sockets from descriptor 3 on and told their families.
        """
        self.workers.start(3, self.ports)
        self.assertEqual(len(self.reactor.spawned), 2)
        _, executable, args, childFDs = self.reactor.spawned[0]
        self.assertEqual(executable, sys.executable)
        self.assertEqual(
            args[3:],
            [
                "-n",
                "--pidfile=",
                "mailharbor",
                "--port",
                "2525",
                "-d",
                "a.example",
                "--inherit-fds",
                f"3:{int(socket.AF_INET)},4:{int(socket.AF_INET6)}",
            ],
        )
        self.assertEqual(childFDs, {0: "w", 1: "r", 2: "r", 3: 7, 4: 9})
        self.assertEqual([p.number for p, _, _, _ in self.reactor.spawned], [1, 2])

    def test_oneProcess(self) -> None:
        """
        With one worker, this process is all there is.
        """
        self.workers.start(1, self.ports)
        self.assertEqual(self.reactor.spawned, [])
        self.assertEqual(self.successResultOf(self.workers.ended()), [])

    def test_outputLogged(self) -> None:
        """
        A worker's output is logged line by line, marked with its number;
        a partial line waits for its end.
        """
        self.workers.start(2, self.ports)
        protocol = self.reactor.spawned[0][0]
        protocol.outReceived(b"first\nsec")
        protocol.errReceived(b"ond\n")
        lines = [e["line"] for e in self.events if e.get("log_format") == "worker {number}: {line}"]
        self.assertEqual(lines, ["first", "second"])
        self.assertTrue(all(e["number"] == 1 for e in self.events if "line" in e))

    def test_signalAndEnd(self) -> None:
        """
        Signals go to every worker still running; L{Workers.ended} fires
        once all have ended.
        """
        self.workers.start(3, self.ports)
        ended = self.workers.ended()
        endProcess(self.reactor, 0)
        self.workers.signal("TERM")
        self.workers.signal("USR2")
        self.assertEqual([p.signals for p in self.reactor.processes], [[], [signal.SIGTERM, signal.SIGUSR2]])
        self.assertNoResult(ended)
        endProcess(self.reactor, 1)
        self.successResultOf(ended)
        self.assertIn("Worker {number} ended: {reason}", [e["log_format"] for e in self.events])
