# -*- test-case-name: harbor.test.test_workers -*-
"""
Pre-fork workers: more processes serving the sockets the first one
listens on (C{workers = N}).

Each worker is C{twistd mailharbor} again, with the same command line, run
as the user the first process has become; it adopts the listening sockets
it is handed instead of binding, and its log lines come back through the
first process.  Signals reach the first process only (systemd's
C{KillMode=mixed}), which passes SIGHUP and SIGTERM on.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

# What a worker runs: twistd, under the name twistd, whatever the
# executable that runs this one is called.
_TWISTD = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"


def inheritedSockets(description: str | None) -> list[tuple[int, int]]:
    """
    Read C{--inherit-fds}: the listening sockets handed to a worker, as
    C{FD:FAMILY,...}.

    @return: Each socket's file descriptor and address family, in the
        order of the listeners.
    """
    return [
        (int(fd), int(family))
        for fd, family in (item.split(":") for item in (description or "").split(",") if item)
    ]


class Workers:
    """
    The worker processes of one server: started once it listens, told
    about reloads, and stopped with it.
    """

    def __init__(self, reactor: Any, arguments: Sequence[str], log: Logger) -> None:
        """
        @param reactor: Spawns the processes.
        @param arguments: The C{twistd mailharbor} arguments of this
            server, for each worker to run the same.
        @param log: Where the workers' output lines and ends are logged.
        """
        self._reactor = reactor
        self._arguments = list(arguments)
        self._log = log
        self._workers: list[_Worker] = []

    def start(self, count: int, ports: Sequence[IListeningPort]) -> None:
        """
        Start workers 1 to C{count - 1} (this process is the first) on the
        sockets of C{ports}, which are listening.
        """
        for number in range(1, count):
            self._start(number, ports)

    def _start(self, number: int, ports: Sequence[IListeningPort]) -> None:
        childFDs: dict[int, Any] = {0: "w", 1: "r", 2: "r"}
        inherit = []
        for index, port in enumerate(ports):
            target = 3 + index
            childFDs[target] = port.fileno()  # type: ignore[attr-defined]
            host = str(getattr(port.getHost(), "host", ""))
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            inherit.append(f"{target}:{int(family)}")
        arguments = [
            sys.executable,
            "-c",
            _TWISTD,
            "-n",
            "--pidfile=",
            "mailharbor",
            *self._arguments,
            "--inherit-fds",
            ",".join(inherit),
        ]
        worker = _Worker(number, self._log)
        worker.transport = self._reactor.spawnProcess(
            worker, sys.executable, arguments, env=os.environ.copy(), childFDs=childFDs
        )
        self._workers.append(worker)
        self._log.info("Started worker {number} (pid {pid})", number=number, pid=worker.transport.pid)

    def signal(self, name: str) -> None:
        """
        Send every worker still running the signal C{name} (C{"HUP"},
        C{"TERM"}, C{"USR2"}).
        """
        for worker in self._workers:
            worker.signal(name)

    def ended(self) -> Deferred[Any]:
        """
        Fire when every worker started has ended.
        """
        return DeferredList([worker.ended for worker in self._workers])


class _Worker(ProcessProtocol):
    """
    A worker process: its output lines are logged, marked with its number.
    """

    def __init__(self, number: int, log: Logger) -> None:
        self.number = number
        self._log = log
        self._partial = b""
        self.ended: Deferred[None] = Deferred()
        self.transport: Any = None

    def outReceived(self, data: bytes) -> None:
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            self._log.info("worker {number}: {line}", number=self.number, line=line.decode("utf-8", "replace"))

    errReceived = outReceived

    def signal(self, name: str) -> None:
        try:
            # By number: Twisted knows only a few signals by name, and not
            # SIGUSR2, the drain's.
            self.transport.signalProcess(getattr(signal, f"SIG{name}"))
        except ProcessExitedAlready:
            pass

    def processEnded(self, reason: Failure) -> None:
        self._log.info("Worker {number} ended: {reason}", number=self.number, reason=reason.getErrorMessage())
        self.ended.callback(None)
