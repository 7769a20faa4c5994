# -*- test-case-name: harbor.test.test_maildir -*-
"""
Maildir storage: unique names, the layout, and a streaming writer that makes
a message durable before anyone is told it was received.

A delivery writes each recipient's copy into C{tmp/} as the data arrives,
then, at the end of the message, flushes and fsyncs every copy, renames each
into C{new/} and fsyncs the C{new/} directories.  Only after that may the
SMTP server answer 250: a crash at any earlier point leaves at most a file in
C{tmp/}, which no mail reader looks at.

This module does no networking and imports no reactor; the blocking
L{PendingDelivery.commit} is meant to run in a thread of the caller's choice.
"""

from __future__ import annotations

import errno
import os
import re
import time
from collections.abc import Callable, Sequence
from typing import BinaryIO

from zope.interface import Interface, implementer

from attrs import frozen

SUBDIRECTORIES = ("tmp", "new", "cur")
_WRITE_BUFFER = 256 * 1024

# A stored file is named "<id>,S=<size>" in new/ and "<id>,S=<size>:2,<flags>"
# once a reader has moved it to cur/ (Maildir++ size and the standard info).
_NAME = re.compile(r"^(?P<id>[^,:/]+)(?P<fields>(?:,[^,:/]*)*)(?::(?P<info>.*))?$")


class StorageError(Exception):
    """
    Storing a message failed for a local reason (full disk, permissions,
    an I/O error): the sender should try again later.

    @ivar noSpace: C{True} when the disk or quota is full, which SMTP
        reports with its own code (452 4.3.1).
    """

    def __init__(self, message: str, noSpace: bool = False) -> None:
        super().__init__(message)
        self.noSpace = noSpace

    @classmethod
    def fromOSError(cls, action: str, e: OSError) -> StorageError:
        """
        Describe a failed system call without losing whether it was a full
        disk.
        """
        return cls(
            f"{action}: {e.strerror or e}",
            noSpace=e.errno in (errno.ENOSPC, errno.EDQUOT),
        )


@frozen
class StoredMessage:
    """
    A message copy that is safely in a Maildir's C{new/}.

    @ivar id: The unique part of the file name, given to the client in the
        250 reply and accepted by C{mailharbor show}.
    @ivar path: The file's path.
    @ivar size: The file's size in bytes.
    """

    id: str
    path: str
    size: int


@frozen
class MaildirName:
    """
    The parts of a stored file's name.

    @ivar id: The unique part, before the first C{,} or C{:}.
    @ivar size: The size given by a C{,S=} field, or L{None}.
    @ivar flags: The flags after C{:2,} (C{"S"} when seen), or C{""}.
    """

    id: str
    size: int | None
    flags: str


def parseName(filename: str) -> MaildirName | None:
    """
    Split a Maildir file name into its parts.

    @return: the parts, or L{None} for names that are not messages (dot
        files and the like).
    """
    if filename.startswith("."):
        return None
    match = _NAME.match(filename)
    if match is None:
        return None
    size = None
    for field in match.group("fields").split(",")[1:]:
        if field.startswith("S=") and field[2:].isdigit():
            size = int(field[2:])
    info = match.group("info") or ""
    flags = info[2:] if info.startswith("2,") else ""
    return MaildirName(match.group("id"), size, flags)


class MaildirNamer:
    """
    Makes the unique names of new messages, in the Maildir scheme:
    C{<seconds>.M<microseconds>P<pid>Q<count>.<host>}.

    The count makes names from one process unique even within a
    microsecond; pid and host keep processes and machines apart.
    """

    def __init__(
        self,
        hostname: str,
        seconds: Callable[[], float] = time.time,
        pid: int | None = None,
    ) -> None:
        """
        @param hostname: This machine's name; C{/}, C{:} and C{,}, which
            the Maildir scheme reserves, are escaped as octal.
        @param seconds: The clock, injected so tests are deterministic.
        @param pid: The process id, by default this process's.
        """
        self._host = (
            hostname.replace("/", "\\057").replace(":", "\\072").replace(",", "\\054")
        )
        self._seconds = seconds
        self._pid = os.getpid() if pid is None else pid
        self._count = 0

    def nextName(self) -> str:
        """
        Return a name no other delivery of this process has had.
        """
        self._count += 1
        now = self._seconds()
        whole = int(now)
        micro = int(round((now - whole) * 1_000_000)) % 1_000_000
        return f"{whole}.M{micro}P{self._pid}Q{self._count}.{self._host}"


class IFileSystem(Interface):
    """
    The few file-system calls a delivery makes, in one place so tests can
    record their order or make them fail like a full disk would.
    """

    def create(path: str) -> BinaryIO:
        """
        Create C{path} exclusively and open it for buffered binary writing.
        """

    def fsync(f: BinaryIO) -> None:
        """
        Flush C{f} and force its contents to stable storage.
        """

    def rename(source: str, destination: str) -> None:
        """
        Atomically rename C{source} to C{destination}.
        """

    def unlink(path: str) -> None:
        """
        Remove C{path}.
        """

    def syncDirectory(path: str) -> None:
        """
        Force the directory entries of C{path} to stable storage.
        """

    def makeDirectories(path: str) -> None:
        """
        Create C{path} and its parents if they do not exist (mode 0700).
        """


@implementer(IFileSystem)
class RealFileSystem:
    """
    L{IFileSystem} on the operating system's calls.
    """

    def create(self, path: str) -> BinaryIO:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        return os.fdopen(fd, "wb", buffering=_WRITE_BUFFER)

    def fsync(self, f: BinaryIO) -> None:
        f.flush()
        os.fsync(f.fileno())

    def rename(self, source: str, destination: str) -> None:
        os.rename(source, destination)

    def unlink(self, path: str) -> None:
        os.unlink(path)

    def syncDirectory(self, path: str) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def makeDirectories(self, path: str) -> None:
        os.makedirs(path, mode=0o700, exist_ok=True)


class _Copy:
    """
    One recipient's copy while it is written in C{tmp/}.
    """

    def __init__(self, name: str, directory: str, file: BinaryIO) -> None:
        self.name = name
        self.directory = directory
        self.file = file
        self.size = 0


class PendingDelivery:
    """
    The copies of one message, one per recipient, while they are being
    written in C{tmp/}.

    Data is written to every copy as it arrives, so the message is read
    from the network once and never held in memory.  After a failure the
    delivery is spoiled: later writes are ignored and L{commit} raises.
    """

    def __init__(self, fs: IFileSystem, copies: Sequence[_Copy]) -> None:
        self._fs = fs
        self._copies = list(copies)
        self._failure: StorageError | None = None
        self._finished = False

    @property
    def failure(self) -> StorageError | None:
        """
        The local failure that spoiled this delivery, if any.
        """
        return self._failure

    def write(self, data: bytes) -> None:
        """
        Append C{data} to every copy.

        A failing write (a full disk, say) is remembered, not raised: the
        SMTP client is still sending and must be answered only at the end.
        """
        if self._failure is not None or not data:
            return
        try:
            for copy in self._copies:
                copy.file.write(data)
                copy.size += len(data)
        except OSError as e:
            self._fail(StorageError.fromOSError("writing the message", e))

    def commit(self, folders: Sequence[str | None] | None = None) -> list[StoredMessage]:
        """
        Make every copy durable and visible, or none of them.

        Blocking: flush and fsync each file, rename each into C{new/} (of a
        Maildir++ folder, created on first use, if one is given for it),
        then fsync each C{new/} directory.  On any failure the copies
        already renamed are removed again and the rest deleted, so the
        sender can retry without duplicates.

        @param folders: For each copy, the name of the folder it goes to
            (C{Lists.python} is C{.Lists.python/}), or L{None} for the
            inbox.  The names must already be safe.
        @raise StorageError: if the message could not be stored.
        """
        if self._failure is not None:
            self._discard()
            raise self._failure
        if folders is None:
            folders = [None] * len(self._copies)
        try:
            for copy in self._copies:
                self._fs.fsync(copy.file)
                copy.file.close()
        except OSError as e:
            self._fail(StorageError.fromOSError("syncing the message to disk", e))
            raise self._failure from e  # type: ignore[misc]

        stored: list[StoredMessage] = []
        try:
            destinations = []
            for copy, folder in zip(self._copies, folders):
                destination = copy.directory
                if folder is not None:
                    destination = os.path.join(copy.directory, "." + folder)
                    self._makeFolder(destination)
                destinations.append(destination)
                final = os.path.join(destination, "new", f"{copy.name},S={copy.size}")
                self._fs.rename(os.path.join(copy.directory, "tmp", copy.name), final)
                stored.append(StoredMessage(copy.name, final, copy.size))
            for directory in dict.fromkeys(destinations):
                self._fs.syncDirectory(os.path.join(directory, "new"))
        except OSError as e:
            for message in stored:
                _quietly(self._fs.unlink, message.path)
            self._fail(StorageError.fromOSError("moving the message into new/", e))
            raise self._failure from e  # type: ignore[misc]
        self._finished = True
        return stored

    def _makeFolder(self, path: str) -> None:
        """
        Create a Maildir++ folder, with the C{maildirfolder} marker that
        Dovecot and Courier look for, unless it exists.
        """
        if os.path.isdir(os.path.join(path, "new")):
            return
        for sub in SUBDIRECTORIES:
            self._fs.makeDirectories(os.path.join(path, sub))
        marker = os.path.join(path, "maildirfolder")
        if not os.path.exists(marker):
            self._fs.create(marker).close()

    def abort(self) -> None:
        """
        Give up: remove every copy from C{tmp/}.  Safe to call more than
        once, and after L{commit} (when it does nothing).
        """
        if not self._finished:
            self._discard()

    def _fail(self, failure: StorageError) -> None:
        self._failure = failure
        self._discard()

    def _discard(self) -> None:
        if self._finished:
            return
        self._finished = True
        for copy in self._copies:
            _quietly(copy.file.close)
            _quietly(self._fs.unlink, os.path.join(copy.directory, "tmp", copy.name))


class MaildirStore:
    """
    The Maildirs under one root: creates them and starts deliveries.
    """

    def __init__(
        self,
        root: str,
        namer: MaildirNamer,
        fs: IFileSystem | None = None,
    ) -> None:
        self._root = root
        self._namer = namer
        self._fs: IFileSystem = RealFileSystem() if fs is None else fs

    def directoryFor(self, mailbox: str) -> str:
        """
        The Maildir of C{mailbox}, a path relative to the root that comes
        from the configuration, never from a client.
        """
        return os.path.join(self._root, mailbox)

    def create(self, mailbox: str) -> None:
        """
        Create the Maildir of C{mailbox} (C{tmp}, C{new}, C{cur}).

        @raise StorageError: if it cannot be created.
        """
        try:
            for sub in SUBDIRECTORIES:
                self._fs.makeDirectories(os.path.join(self.directoryFor(mailbox), sub))
        except OSError as e:
            raise StorageError.fromOSError(f"creating the Maildir for {mailbox}", e) from e

    def begin(self, copies: Sequence[tuple[str, Callable[[str], bytes]]]) -> PendingDelivery:
        """
        Open one file in C{tmp/} per copy and write its own header block.

        @param copies: For each copy, the mailbox it goes to and a function
            that, given the copy's id, returns the bytes that start it (its
            trace headers, which name the id).
        @raise StorageError: if a file cannot be created; nothing is left.
        """
        opened: list[_Copy] = []
        try:
            for mailbox, makeHeader in copies:
                directory = self.directoryFor(mailbox)
                name = self._namer.nextName()
                f = self._fs.create(os.path.join(directory, "tmp", name))
                copy = _Copy(name, directory, f)
                opened.append(copy)
                header = makeHeader(name)
                f.write(header)
                copy.size = len(header)
        except OSError as e:
            PendingDelivery(self._fs, opened).abort()
            raise StorageError.fromOSError("creating the message file", e) from e
        return PendingDelivery(self._fs, opened)


def _quietly(f: Callable[..., object], *args: object) -> None:
    try:
        f(*args)
    except OSError:
        pass
