# -*- test-case-name: harbor.test.test_support -*-
"""
Test helpers shared by the unit tests here and the end-to-end tests in the
top-level C{tests/}: a recording file system for the Maildir writer, an
SMTP driver over L{StringTransport}, the stored files of a Maildir and the
trace block MailHarbor writes at the top of each copy.

The end-to-end tests import this module too: it ships in the wheel with
C{harbor.test}, imports nothing from C{tests/}, and what it imports (the
SMTP server, hence L{twisted.mail.smtp} and the global reactor) those
tests load anyway.
"""

from __future__ import annotations

import email.utils
import errno
import os
from collections.abc import Callable, Sequence
from typing import Any

from zope.interface import implementer

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from harbor.access import Identity
from harbor.delivery import Deliverer
from harbor.limits import Limits
from harbor.routing import DomainConfig, RecipientPolicy
from harbor.smtp._factory import HarborSMTPFactory, ServerSettings
from harbor.smtp._protocol import HarborESMTP
from harbor.store.fs import IFileSystem, MessageFile, RealFileSystem
from harbor.store.names import MaildirNamer
from harbor.store.writer import MaildirStore

HOSTNAME = "mx.example.com"
PEER = "192.0.2.7"


def files(root: str, *path: str) -> list[str]:
    """
    Every file below C{os.path.join(root, *path)} (a Maildir's C{new}, a
    whole store), by path relative to it, sorted; none if it does not
    exist, as before a Maildir is made on first delivery.
    """
    directory = os.path.join(root, *path)
    return sorted(
        os.path.relpath(os.path.join(parent, name), directory)
        for parent, _, names in os.walk(directory)
        for name in names
    )


def stranger() -> Identity:
    """
    A user in the password database that is neither root nor this
    process's user, with its own group: one for whom this test's private
    directories are the others', whoever runs the tests (nobody included).
    """
    import pwd

    mine = {os.getuid(), os.getgid(), *os.getgroups()}
    for entry in sorted(pwd.getpwall(), key=lambda entry: -entry.pw_uid):
        if entry.pw_uid not in (0, os.getuid()) and entry.pw_gid not in mine:
            return Identity(entry.pw_name, entry.pw_uid, entry.pw_gid, frozenset({entry.pw_gid}))
    raise AssertionError("no user but root and this one in the password database")


def _endsWithDate(line: bytes) -> bool:
    """
    Whether C{line} ends as a C{Received:} field does (RFC 5321 section
    4.4): a semicolon, then an RFC 5322 date-time.
    """
    _, semicolon, date = line.rpartition(b";")
    if not semicolon:
        return False
    try:
        email.utils.parsedate_to_datetime(date.decode("ascii").strip())
    except (ValueError, TypeError, UnicodeDecodeError):
        return False
    return True


def traceHeaders(stored: bytes, tags: Sequence[bytes] = ()) -> tuple[bytes, bytes]:
    """
    Split a stored copy into the trace block MailHarbor wrote at its top
    and what the client sent.

    The block is parsed, not cut at a line count: a C{Return-Path:} line, a
    C{Delivered-To:} line, then the C{Received:} field with however many
    continuation lines it has (TLS adds one), up to the line that ends it
    with C{; date-time}, then the filter tag lines C{tags}, in order.  The
    field's end is found by its date rather than by the next line not
    starting with white space, so a message whose own first line does is
    not taken into the block.

    @param tags: The header lines the session's tag filters added.
    @return: the block and the rest, both as stored.
    @raise AssertionError: if the copy does not start with such a block.
    """
    lines = stored.split(b"\n")
    if len(lines) < 4 or not (
        lines[0].startswith(b"Return-Path: <")
        and lines[1].startswith(b"Delivered-To: ")
        and lines[2].startswith(b"Received: ")
    ):
        raise AssertionError(f"no trace block at the top of {stored[:300]!r}")
    end = 2
    while not _endsWithDate(lines[end]):
        end += 1
        if end == len(lines) - 1 or not lines[end].startswith(b"\t"):
            raise AssertionError(f"the Received: field has no date-time in {stored[:300]!r}")
    for tag in tags:
        end += 1
        if end == len(lines) - 1 or lines[end] != tag:
            raise AssertionError(f"tag {tag!r} does not follow the Received: field in {stored[:300]!r}")
    size = sum(len(line) + 1 for line in lines[: end + 1])
    return stored[:size], stored[size:]


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
            # As a thread pool hands every exception to its Deferred.
            except BaseException:  # noqa: BLE001
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
    @ivar failUnder: If set, only calls on paths under this directory
        fail: a rename into a Maildir's C{new/}, say, and not the hook
        spool's.
    """

    def __init__(self) -> None:
        self._real = RealFileSystem()
        self.calls: list[tuple[str, str]] = []
        self.failOn: str | None = None
        self.failUnder: str | None = None
        self.failErrno = errno.ENOSPC
        self.grouped = True

    def _record(self, name: str, path: str) -> None:
        self.calls.append((name, path))
        if self.failOn == name and (
            self.failUnder is None or path == self.failUnder or path.startswith(self.failUnder + os.sep)
        ):
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

    def renameNoReplace(self, source: str, destination: str) -> None:
        self._record("renameNoReplace", destination)
        self._real.renameNoReplace(source, destination)

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

    def __init__(self, real: MessageFile, fs: RecordingFileSystem, path: str) -> None:
        self._real = real
        self._fs = fs
        self.path = path

    def write(self, data: Any) -> object:
        if self._fs.failOn == "write":
            raise OSError(self._fs.failErrno, os.strerror(self._fs.failErrno))
        return self._real.write(data)

    def fileno(self) -> int:
        return self._real.fileno()

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
        peer: str = PEER,
        limits: Limits | None = None,
        factory: HarborSMTPFactory | None = None,
        *,
        transport: type[StringTransport] = StringTransport,
        ehlo: bytes | None = None,
    ) -> None:
        """
        Connect a client from C{peer}.

        @param factory: The server's factory; by default a new one for
            C{deliverer} with C{limits}.
        @param transport: The transport class (one that can start TLS,
            say).
        @param ehlo: A name to greet with at once, its reply dropped, for
            tests about what follows the greeting.
        """
        self.clock = clock or Clock()
        if factory is None:
            factory = HarborSMTPFactory(deliverer, ServerSettings(HOSTNAME, limits or Limits()), self.clock)
        self.protocol: HarborESMTP = factory.buildProtocol(IPv4Address("TCP", peer, 40000))
        self.transport = transport(peerAddress=IPv4Address("TCP", peer, 40000))
        self.protocol.makeConnection(self.transport)
        self.banner = self.take()
        if ehlo is not None:
            self.send(b"EHLO " + ehlo + b"\r\n")

    def take(self) -> bytes:
        """
        Everything the server has written since last taken.
        """
        value: bytes = self.transport.value()
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
