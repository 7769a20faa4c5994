# -*- test-case-name: harbor.test.test_maildir -*-
"""
Maildir storage: unique names, the layout, and a streaming writer that makes
a message durable before anyone is told it was received.

A delivery keeps a small message in memory and writes a large one into each
recipient's file in C{tmp/} as the data arrives.  At the end of the message
it writes out the copies still in memory, forces every copy to stable
storage, renames each into C{new/} and fsyncs the C{new/} directories.  Only
after that may the SMTP server answer 250: a crash at any earlier point
leaves at most a file in C{tmp/}, which no mail reader looks at.

Deliveries that end at about the same time can be committed together
(L{commitMany}): their files are written, then made durable in one wait
(one C{syncfs(2)} per file system where the system has a trustworthy one,
instead of one C{fsync(2)} and one journal commit per file), renamed, and
each C{new/} directory is fsynced once for all of them.  The promise is the
same for each message; the disk's work is shared.

This module does no networking and imports no reactor; the blocking
L{commitMany} and L{PendingDelivery.commit} are meant to run in a thread of
the caller's choice.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import re
import sys
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

    def syncMany(files: Sequence[MessageFile]) -> list[OSError | None]:
        """
        Force the contents of all of C{files}, in the order they were
        created, to stable storage, in as few waits for the disk as the
        system allows.

        @return: for each file, the error that may have kept it from
            stable storage, or L{None}.
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


def _kernelReportsSyncfsErrors(system: str, release: str) -> bool:
    """
    Whether C{syncfs(2)} on this kernel says when data could not be
    written: Linux does from 5.8 on; before, it always returned success,
    which would make a failed write look durable.
    """
    if system != "Linux":
        return False
    match = re.match(r"(\d+)\.(\d+)", release)
    return match is not None and (int(match.group(1)), int(match.group(2))) >= (5, 8)


def loadSyncfs() -> Callable[[int], None] | None:
    """
    C{syncfs(2)} as a function of a file descriptor that raises L{OSError},
    or L{None} where the system has no trustworthy one.
    """
    if not sys.platform.startswith("linux") or not _kernelReportsSyncfsErrors(
        platform.system(), platform.release()
    ):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        function = libc.syncfs
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int]
    function.restype = ctypes.c_int

    def syncfs(fd: int) -> None:
        # ctypes lets go of the GIL while the disk works.
        if function(fd) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))

    return syncfs


_DEFAULT = object()


@implementer(IFileSystem)
class RealFileSystem:
    """
    L{IFileSystem} on the operating system's calls.
    """

    def __init__(self, syncfs: Callable[[int], None] | None | object = _DEFAULT) -> None:
        """
        @param syncfs: Forces a whole file system to stable storage, given
            a descriptor of a file on it (see L{loadSyncfs}, the default);
            L{None} fsyncs every file on its own.
        """
        self._syncfs: Callable[[int], None] | None = (
            loadSyncfs() if syncfs is _DEFAULT else syncfs  # type: ignore[assignment]
        )

    def create(self, path: str) -> MessageFile:
        return _DescriptorFile(os.open(path, _CREATE_FLAGS, 0o600))

    def fsync(self, f: MessageFile) -> None:
        f.flush()
        os.fsync(f.fileno())

    def syncMany(self, files: Sequence[MessageFile]) -> list[OSError | None]:
        """
        One C{syncfs(2)} per file system for two files or more, else
        C{fsync(2)} for each.

        C{syncfs} writes out all of the file system's dirty data and
        commits its journal once, where an fsync for each file would
        commit it once per file.  It reports a write error that happened
        after the descriptor it is given was opened, so it is given each
        file system's first-created file: every other file was opened
        later, and an error on any of them is reported.
        """
        errors: list[OSError | None] = [None] * len(files)
        if self._syncfs is None or len(files) < 2:
            for index, f in enumerate(files):
                try:
                    self.fsync(f)
                except OSError as e:
                    errors[index] = e
            return errors
        byDevice: dict[int, list[int]] = {}
        for index, f in enumerate(files):
            try:
                f.flush()
                byDevice.setdefault(os.fstat(f.fileno()).st_dev, []).append(index)
            except OSError as e:
                errors[index] = e
        for indexes in byDevice.values():
            try:
                self._syncfs(files[indexes[0]].fileno())
            except OSError as e:
                for index in indexes:
                    errors[index] = e
        return errors

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

    @property
    def inMemory(self) -> bool:
        """
        Whether the message is still only in memory, so that committing it
        creates its files (a small message) rather than finishing files
        that have been in C{tmp/} for a while (a large one).
        """
        return self._buffer is not None and self._failure is None and not self._finished

    def commit(self, folders: Sequence[str | None] | None = None) -> list[StoredMessage]:
        """
        Make every copy durable and visible, or none of them: L{commitMany}
        for this delivery alone.

        @param folders: For each copy, the name of the folder it goes to
            (C{Lists.python} is C{.Lists.python/}), or L{None} for the
            inbox.  The names must already be safe.
        @raise StorageError: if the message could not be stored.
        """
        [result] = commitMany(self._fs, [(self, folders)])
        if isinstance(result, StorageError):
            raise result
        return result

    def _writeOut(self) -> list[MessageFile]:
        """
        The first step of a commit: write out the copies of a message in
        memory (not yet synced), or flush those of a spilled one.

        @return: every copy's open file.
        @raise StorageError: if that fails; the delivery is then spoiled.
        """
        if self._failure is not None:
            self._discard()
            raise self._failure
        if self._finished:
            raise StorageError("the delivery is already over")
        body = self._buffer
        self._buffer = None
        try:
            for copy in self._copies:
                if body is not None:
                    self._createFile(copy, body)
                else:
                    assert copy.file is not None
                    copy.file.flush()
        except StorageError as e:
            raise self._failed(e) from e
        except OSError as e:
            raise self._failed(StorageError.fromOSError("writing the message", e)) from e
        return [copy.file for copy in self._copies]  # type: ignore[misc]

    def _publish(self, folders: Sequence[str | None] | None) -> tuple[list[StoredMessage], list[str]]:
        """
        The step after the files are durable: close them and rename each
        into C{new/} (of a Maildir++ folder, created on first use, if one
        is given for it).

        @return: the stored copies and the C{new/} directories that now
            need an fsync.
        @raise StorageError: if that fails; the copies already renamed are
            removed again and the delivery is spoiled.
        """
        if folders is None:
            folders = [None] * len(self._copies)
        try:
            for copy in self._copies:
                assert copy.file is not None
                copy.file.close()
        except OSError as e:
            raise self._failed(StorageError.fromOSError("syncing the message to disk", e)) from e
        stored: list[StoredMessage] = []
        directories: list[str] = []
        try:
            for copy, folder in zip(self._copies, folders):
                destination = copy.directory
                if folder is not None:
                    destination = os.path.join(copy.directory, "." + folder)
                    self._makeFolder(destination)
                size = len(copy.header) + self._bodySize
                final = os.path.join(destination, "new", f"{copy.name},S={size}")
                self._fs.rename(copy.temporaryPath, final)
                stored.append(StoredMessage(copy.name, final, size))
                directories.append(os.path.join(destination, "new"))
        except OSError as e:
            raise self._retract(stored, StorageError.fromOSError("moving the message into new/", e)) from e
        return stored, list(dict.fromkeys(directories))

    def _retract(self, stored: Sequence[StoredMessage], failure: StorageError) -> StorageError:
        """
        Remove copies already renamed into C{new/} and spoil the delivery,
        so the sender's retry does not make duplicates.
        """
        for message in stored:
            _quietly(self._fs.unlink, message.path)
        return self._failed(failure)

    def _failed(self, failure: StorageError) -> StorageError:
        self._fail(failure)
        return failure

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


def commitMany(
    fs: IFileSystem,
    deliveries: Sequence[tuple[PendingDelivery, Sequence[str | None] | None]],
) -> list[list[StoredMessage] | StorageError]:
    """
    Make several deliveries durable and visible together, each one whole
    or not at all.

    Blocking.  In order: write out the messages still in memory; force all
    files to stable storage (those just written in one
    L{IFileSystem.syncMany}, spilled ones each with its own fsync); rename
    every copy into C{new/}; fsync each C{new/} directory once, however
    many copies it received.  A delivery is stored only when all of those
    steps succeeded for every one of its copies; one delivery's failure
    does not fail the others, except where they shared the failing
    C{syncfs} or directory.

    @param deliveries: Each delivery with its copies' folders (see
        L{PendingDelivery.commit}).
    @return: for each delivery, its stored copies or the L{StorageError}
        that kept it from being stored (it is then spoiled).
    """
    results: list[list[StoredMessage] | StorageError | None] = [None] * len(deliveries)
    fresh: list[tuple[int, MessageFile]] = []
    for index, (pending, _) in enumerate(deliveries):
        small = pending.inMemory
        try:
            files = pending._writeOut()
        except StorageError as e:
            results[index] = e
            continue
        if small:
            fresh.extend((index, f) for f in files)
            continue
        for f in files:
            try:
                fs.fsync(f)
            except OSError as e:
                results[index] = pending._failed(StorageError.fromOSError("syncing the message to disk", e))
                break
    errors = fs.syncMany([f for _, f in fresh]) if fresh else []
    for (index, _), error in zip(fresh, errors):
        if error is not None and results[index] is None:
            pending = deliveries[index][0]
            results[index] = pending._failed(StorageError.fromOSError("syncing the message to disk", error))

    published: list[tuple[int, list[StoredMessage], list[str]]] = []
    for index, (pending, folders) in enumerate(deliveries):
        if results[index] is not None:
            continue
        try:
            stored, directories = pending._publish(folders)
        except StorageError as e:
            results[index] = e
            continue
        published.append((index, stored, directories))

    unsynced: dict[str, OSError] = {}
    for directory in dict.fromkeys(d for _, _, directories in published for d in directories):
        try:
            fs.syncDirectory(directory)
        except OSError as e:
            unsynced[directory] = e
    for index, stored, directories in published:
        pending = deliveries[index][0]
        failure = next((unsynced[d] for d in directories if d in unsynced), None)
        if failure is not None:
            results[index] = pending._retract(stored, StorageError.fromOSError("moving the message into new/", failure))
        else:
            pending._finished = True
            results[index] = stored
    return results  # type: ignore[return-value]


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

    def commitMany(
        self, deliveries: Sequence[tuple[PendingDelivery, Sequence[str | None] | None]]
    ) -> list[list[StoredMessage] | StorageError]:
        """
        L{commitMany} on this store's file system.
        """
        return commitMany(self._fs, deliveries)


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
