# -*- test-case-name: harbor.test.test_maildir -*-
"""
Maildir storage: unique names, the layout, and a streaming writer that makes
a message durable before anyone is told it was received.

A delivery keeps a small message in memory and writes a large one into each
recipient's file in C{tmp/} as the data arrives.  At the end of the message
it writes out the copies still in memory, flushes and fsyncs every copy,
renames each into C{new/} and fsyncs the C{new/} directories.  Only after
that may the SMTP server answer 250: a crash at any earlier point leaves at
most a file in C{tmp/}, which no mail reader looks at.

This module does no networking and imports no reactor; the blocking
L{PendingDelivery.commit} is meant to run in a thread of the caller's choice.
"""

from __future__ import annotations

import errno
import os
import re
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from zope.interface import Interface, implementer

from attrs import frozen

SUBDIRECTORIES = ("tmp", "new", "cur")

# How many bytes of a message's body a delivery keeps in memory before it
# writes the copies to tmp/ (see PendingDelivery).
MEMORY_THRESHOLD = 64 * 1024

_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC

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

    def create(path: str) -> MessageFile:
        """
        Create C{path} exclusively and open it for writing.  Writes are not
        buffered (the delivery writes in large pieces), so a small message
        costs open, write, fsync and close and nothing more.
        """

    def fsync(f: MessageFile) -> None:
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


class MessageFile(Protocol):
    """
    What a delivery does with a file it writes.
    """

    def write(self, data: bytes) -> object: ...

    def flush(self) -> None: ...

    def fileno(self) -> int: ...

    def close(self) -> None: ...


class _DescriptorFile:
    """
    A file descriptor written with plain C{write(2)} calls: no buffer, and
    none of the C{fstat}/C{lseek} a Python file object makes on opening.
    """

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    def write(self, data: bytes) -> int:
        assert self._fd is not None, "write to a closed message file"
        _writeAll(self._fd, data)
        return len(data)

    def flush(self) -> None:
        pass

    def fileno(self) -> int:
        assert self._fd is not None, "fileno of a closed message file"
        return self._fd

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


@implementer(IFileSystem)
class RealFileSystem:
    """
    L{IFileSystem} on the operating system's calls.
    """

    def create(self, path: str) -> MessageFile:
        return _DescriptorFile(os.open(path, _CREATE_FLAGS, 0o600))

    def fsync(self, f: MessageFile) -> None:
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
    One recipient's copy: its name, its Maildir, its own header block and,
    while a spilled message is being written, its open file in C{tmp/}.

    @ivar created: Whether this delivery created the copy's file in
        C{tmp/} (and so must remove it if the delivery fails).
    """

    def __init__(self, name: str, directory: str, header: bytes) -> None:
        self.name = name
        self.directory = directory
        self.header = header
        self.file: MessageFile | None = None
        self.created = False

    @property
    def temporaryPath(self) -> str:
        return os.path.join(self.directory, "tmp", self.name)


class PendingDelivery:
    """
    The copies of one message, one per recipient, while the message is
    being received.

    A small message is kept in memory: one buffer of the body, shared by
    all copies (each copy is its own header block plus that body), so
    receiving it costs the caller's thread no system call at all.  Only
    when the body grows past C{threshold} bytes are the files created in
    C{tmp/}, on the caller's thread, and everything from then on is
    appended to them as it arrives: the memory a delivery holds is bounded
    by the threshold, whatever the size of the message.  A message that
    ends in memory is written out by L{commit}, in the thread that runs it.

    After a failure the delivery is spoiled: later writes are ignored and
    L{commit} raises.
    """

    def __init__(
        self,
        fs: IFileSystem,
        copies: Sequence[_Copy],
        threshold: int = MEMORY_THRESHOLD,
    ) -> None:
        """
        @param copies: The copies, none of them on disk yet.
        @param threshold: How many bytes of body to keep in memory before
            writing the copies to C{tmp/}.
        """
        self._fs = fs
        self._copies = list(copies)
        self._threshold = threshold
        # The body while it is in memory; None once spilled (or finished).
        self._buffer: bytearray | None = bytearray()
        self._bodySize = 0
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
        Append C{data} to every copy: to the shared buffer while the body
        is small, to the files in C{tmp/} once it is not.

        A failing write (a full disk, say) is remembered, not raised: the
        SMTP client is still sending and must be answered only at the end.
        """
        if self._failure is not None or self._finished or not data:
            return
        self._bodySize += len(data)
        buffer = self._buffer
        if buffer is not None:
            buffer += data
            if len(buffer) > self._threshold:
                self._buffer = None
                self._spill(buffer)
            return
        try:
            for copy in self._copies:
                copy.file.write(data)  # type: ignore[union-attr]
        except OSError as e:
            self._fail(StorageError.fromOSError("writing the message", e))

    def _spill(self, body: bytes | bytearray) -> None:
        """
        Create every copy's file in C{tmp/} with what has arrived so far.
        """
        try:
            for copy in self._copies:
                self._createFile(copy, body)
        except StorageError as e:
            self._fail(e)

    def _createFile(self, copy: _Copy, body: bytes | bytearray) -> None:
        """
        Create C{copy}'s file in C{tmp/} and write its header and C{body}
        in one write.

        @raise StorageError: if that fails; a file that was created is
            marked in C{copy.created} for L{_discard} to remove.
        """
        try:
            copy.file = self._fs.create(copy.temporaryPath)
        except OSError as e:
            raise StorageError.fromOSError("creating the message file", e) from e
        copy.created = True
        try:
            copy.file.write(copy.header + body)
        except OSError as e:
            raise StorageError.fromOSError("writing the message", e) from e

    def _storeCopy(self, copy: _Copy, data: bytes) -> None:
        """
        Create C{copy}'s file in C{tmp/} with C{data} (a message that ended
        in memory), fsync and close it.

        On the real file system this is four system calls: open, write,
        fsync, close.

        @raise StorageError: if that fails; a file that was created is
            marked in C{copy.created} for L{_discard} to remove.
        """
        path = copy.temporaryPath
        action = "creating the message file"
        try:
            f = self._fs.create(path)
            copy.created = True
            try:
                action = "writing the message"
                f.write(data)
                action = "syncing the message to disk"
                self._fs.fsync(f)
            except OSError:
                _quietly(f.close)
                raise
            f.close()
        except OSError as e:
            raise StorageError.fromOSError(action, e) from e

    def commit(self, folders: Sequence[str | None] | None = None) -> list[StoredMessage]:
        """
        Make every copy durable and visible, or none of them.

        Blocking: create and fsync the files of a message that ended in
        memory, or flush and fsync those of a spilled one; only then rename
        each into C{new/} (of a Maildir++ folder, created on first use, if
        one is given for it), then fsync each C{new/} directory.  On any
        failure the copies already renamed are removed again and the rest
        deleted, so the sender can retry without duplicates.

        @param folders: For each copy, the name of the folder it goes to
            (C{Lists.python} is C{.Lists.python/}), or L{None} for the
            inbox.  The names must already be safe.
        @raise StorageError: if the message could not be stored.
        """
        if self._failure is not None:
            self._discard()
            raise self._failure
        if self._finished:
            raise StorageError("the delivery is already over")
        if folders is None:
            folders = [None] * len(self._copies)
        body = self._buffer
        if body is not None:
            self._buffer = None
            try:
                for copy in self._copies:
                    self._storeCopy(copy, copy.header + body)
            except StorageError as e:
                self._fail(e)
                raise
        else:
            try:
                for copy in self._copies:
                    assert copy.file is not None
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
                size = len(copy.header) + self._bodySize
                final = os.path.join(destination, "new", f"{copy.name},S={size}")
                self._fs.rename(copy.temporaryPath, final)
                stored.append(StoredMessage(copy.name, final, size))
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
        Give up: forget the message and remove every copy from C{tmp/}.
        Safe to call more than once, and after L{commit} (when it does
        nothing).
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
        self._buffer = None
        for copy in self._copies:
            if copy.file is not None:
                _quietly(copy.file.close)
            if copy.created:
                _quietly(self._fs.unlink, copy.temporaryPath)


class MaildirStore:
    """
    The Maildirs under one root: creates them and starts deliveries.
    """

    def __init__(
        self,
        root: str,
        namer: MaildirNamer,
        fs: IFileSystem | None = None,
        memoryThreshold: int = MEMORY_THRESHOLD,
    ) -> None:
        """
        @param memoryThreshold: How many bytes of a message's body to keep
            in memory before writing its copies to C{tmp/}.
        """
        self._root = root
        self._namer = namer
        self._fs: IFileSystem = RealFileSystem() if fs is None else fs
        self._threshold = memoryThreshold

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
        Start a delivery: give each copy its unique name and its own header
        block.

        Nothing is written yet (see L{PendingDelivery}): a small message
        touches the disk only when it is committed, so a Maildir that is
        missing or not writable is reported by L{PendingDelivery.commit},
        or by L{PendingDelivery.failure} once a large message has spilled.

        @param copies: For each copy, the mailbox it goes to and a function
            that, given the copy's id, returns the bytes that start it (its
            trace headers, which name the id).
        @raise StorageError: never for now; callers should still expect it.
        """
        started = []
        for mailbox, makeHeader in copies:
            name = self._namer.nextName()
            started.append(_Copy(name, self.directoryFor(mailbox), makeHeader(name)))
        return PendingDelivery(self._fs, started, self._threshold)


def _writeAll(fd: int, data: bytes) -> None:
    """
    Write all of C{data} to C{fd}, however many calls it takes.
    """
    written = os.write(fd, data)
    if written < len(data):
        view = memoryview(data)[written:]
        while view:
            view = view[os.write(fd, view) :]


def _quietly(f: Callable[..., object], *args: object) -> None:
    try:
        f(*args)
    except OSError:
        pass
