"""
Test helpers: a recording file system for the Maildir writer and an SMTP
driver over L{StringTransport}.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable
from typing import Any

from zope.interface import implementer

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from harbor.limits import Limits
from harbor.routing import DomainConfig
from harbor.delivery import Deliverer
from harbor.maildir import IFileSystem, MaildirNamer, MaildirStore, RealFileSystem
from harbor.routing import RecipientPolicy
from harbor.smtp._factory import HarborSMTPFactory, ServerSettings
from harbor.smtp._protocol import HarborESMTP

HOSTNAME = "mx.example.com"


async def pollUntil(condition: Callable[[], object], what: str, limit: float = 15.0) -> None:
    """
    Let the reactor run until C{condition()} is true; only for bounded
    waits on other processes.

    @raise AssertionError: naming C{what} if it is still false after
        C{limit} seconds.
    """
    from twisted.internet import reactor

    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {limit}s waiting until {what}")
        await deferLater(reactor, 0.02, lambda: None)


def processGone(pid: int) -> bool:
    """
    Whether process C{pid} has exited (and been reaped).
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def runSynchronously(f: Callable[[], Any]) -> Deferred[Any]:
    """
    A stand-in for a thread pool: run C{f} now.
    """
    return maybeDeferred(f)


class DeferredThreads:
    """
    A stand-in for a thread pool that runs nothing until told to, so tests
    can see what happens while blocking work is in progress.
    """

    def __init__(self) -> None:
        self.pending: list[tuple[Callable[[], Any], Deferred[Any]]] = []

    def __call__(self, f: Callable[[], Any]) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.pending.append((f, d))
        return d

    def runAll(self) -> None:
        while self.pending:
            f, d = self.pending.pop(0)
            try:
                result = f()
            except BaseException:
                d.errback(Failure())
            else:
                d.callback(result)


@implementer(IFileSystem)
class RecordingFileSystem:
    """
    The real file system, with a log of the calls that matter for
    durability and a way to make one of them fail.

    @ivar calls: C{(name, path)} in call order.
    @ivar failOn: Call name to fail, with L{failErrno}, or L{None}.
    """

    def __init__(self) -> None:
        self._real = RealFileSystem()
        self.calls: list[tuple[str, str]] = []
        self.failOn: str | None = None
        self.failErrno = errno.ENOSPC
        self.grouped = True

    def _record(self, name: str, path: str) -> None:
        self.calls.append((name, path))
        if self.failOn == name:
            raise OSError(self.failErrno, os.strerror(self.failErrno), path)

    def create(self, path: str) -> Any:
        self._record("create", path)
        return _WatchedFile(self._real.create(path), self, path)

    def fsync(self, f: Any) -> None:
        self._record("fsync", getattr(f, "path", ""))
        self._real.fsync(f)

    def groupSync(self, directories: Any) -> Any:
        """
        A group that covers every directory, as on a file system whose
        syncfs is trusted, recorded as C{groupSync} when made, C{syncfs}
        when synced and C{closeGroup} when closed; failing C{syncfs} fails every directory, as a failed
        C{syncfs} would.  Set C{grouped} to L{False} to have none.
        """
        if not self.grouped:
            return None
        self._record("groupSync", ",".join(dict.fromkeys(directories)))
        return _RecordingGroup(self, list(dict.fromkeys(directories)))

    def copyInto(self, source: str, offset: int, length: int, destination: Any) -> None:
        self._record("copyInto", getattr(destination, "path", ""))
        self._real.copyInto(source, offset, length, destination)

    def rename(self, source: str, destination: str) -> None:
        self._record("rename", destination)
        self._real.rename(source, destination)

    def unlink(self, path: str) -> None:
        self._record("unlink", path)
        self._real.unlink(path)

    def syncDirectory(self, path: str) -> None:
        self._record("syncDirectory", path)
        self._real.syncDirectory(path)

    def makeDirectories(self, path: str) -> None:
        self._record("makeDirectories", path)
        self._real.makeDirectories(path)


class _RecordingGroup:
    """
    The group of L{RecordingFileSystem.groupSync}: its sync is only
    recorded (the tests look at order, not at the disk).
    """

    def __init__(self, fs: RecordingFileSystem, directories: list[str]) -> None:
        self._fs = fs
        self._directories = directories

    def covers(self, directory: str) -> bool:
        return directory in self._directories

    def sync(self) -> dict[str, OSError]:
        try:
            self._fs._record("syncfs", ",".join(self._directories))
        except OSError as e:
            return {d: e for d in self._directories}
        return {}

    def close(self) -> None:
        self._fs._record("closeGroup", "")


class _WatchedFile:
    """
    A file whose writes fail, like on a full disk, while its file system's
    C{failOn} is C{"write"}.
    """

    def __init__(self, real: Any, fs: RecordingFileSystem, path: str) -> None:
        self._real = real
        self._fs = fs
        self.path = path

    def write(self, data: Any) -> int:
        if self._fs.failOn == "write":
            raise OSError(self._fs.failErrno, os.strerror(self._fs.failErrno))
        return self._real.write(data)  # type: ignore[no-any-return]

    def fileno(self) -> int:
        return self._real.fileno()  # type: ignore[no-any-return]

    def flush(self) -> None:
        self._real.flush()

    def close(self) -> None:
        self._real.close()


def makeDeliverer(
    root: str,
    domains: list[DomainConfig] | None = None,
    fs: IFileSystem | None = None,
    runInThread: Callable[[Callable[[], Any]], Deferred[Any]] = runSynchronously,
    clock: Clock | None = None,
) -> tuple[Deliverer, MaildirStore]:
    """
    A L{Deliverer} storing under C{root} for C{example.com} (catch-all) by
    default, with its Maildirs created.
    """
    clock = clock or Clock()
    if domains is None:
        domains = [DomainConfig("example.com")]
    store = MaildirStore(root, MaildirNamer(HOSTNAME, clock.seconds, pid=4242), fs)
    for domain in domains:
        store.create(domain.name)
    deliverer = Deliverer(RecipientPolicy(domains), store, HOSTNAME, runInThread, clock.seconds)
    return deliverer, store


class SMTPDriver:
    """
    One SMTP connection over a L{StringTransport}.
    """

    def __init__(
        self,
        deliverer: Deliverer,
        clock: Clock | None = None,
        peer: str = "192.0.2.7",
        limits: Limits | None = None,
        factory: HarborSMTPFactory | None = None,
    ) -> None:
        self.clock = clock or Clock()
        if factory is None:
            factory = HarborSMTPFactory(deliverer, ServerSettings(HOSTNAME, limits or Limits()), self.clock)
        self.protocol: HarborESMTP = factory.buildProtocol(IPv4Address("TCP", peer, 40000))
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", peer, 40000))
        self.protocol.makeConnection(self.transport)
        self.banner = self.take()

    def take(self) -> bytes:
        """
        Everything the server has written since last taken.
        """
        value = self.transport.value()
        self.transport.clear()
        return value

    def send(self, data: bytes) -> bytes:
        """
        Send C{data} in one piece and return the server's answer.
        """
        self.protocol.dataReceived(data)
        return self.take()

    def replies(self, data: bytes) -> list[bytes]:
        """
        Send C{data} and return the reply lines, without CRLF.
        """
        return self.send(data).split(b"\r\n")[:-1]

    def close(self) -> None:
        from twisted.internet.error import ConnectionDone

        self.protocol.connectionLost(Failure(ConnectionDone()))
