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
(one C{syncfs(2)} per file system where the kernel and the file system
make it as good as an fsync of each file, instead of one C{fsync(2)} and
one journal commit per file), renamed, and
each C{new/} directory is fsynced once for all of them.  The promise is the
same for each message; the disk's work is shared.

This module does no networking and imports no reactor; the blocking
L{commitMany} and L{PendingDelivery.commit} are meant to run in a thread of
the caller's choice.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
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

    def groupSync(directories: Sequence[str]) -> GroupSync | None:
        """
        Get ready to make the files about to be created in C{directories}
        durable together, with one wait for the disk per file system.

        Called before the files are created, so that a write error on any
        of them is reported by L{GroupSync.sync}.

        @return: the group, or L{None} where one wait cannot be trusted to
            cover them all (then each file is fsynced).
        """

    def copyInto(source: str, offset: int, length: int, destination: MessageFile) -> None:
        """
        Append C{length} bytes of the file C{source}, from C{offset}, to
        C{destination}.
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


class GroupSync(Protocol):
    """
    Files being written in some directories, to be made durable together
    (see L{IFileSystem.groupSync}).
    """

    def covers(self, directory: str) -> bool:
        """
        Whether L{sync} makes files created in C{directory} durable; those
        in other directories must be fsynced one by one.
        """

    def sync(self) -> dict[str, OSError]:
        """
        Force every file created so far in the covered directories to
        stable storage.

        @return: the covered directories whose files may not be on stable
            storage, each with its error.
        """

    def close(self) -> None:
        """
        Let go of what the group holds open.
        """


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


def _copyByReading(fd: int, offset: int, length: int, destination: MessageFile) -> int:
    """
    Copy C{length} bytes from C{fd} at C{offset} to C{destination} in
    pieces, where C{copy_file_range(2)} does not work.

    @return: how many bytes were copied.
    """
    copied = 0
    while copied < length:
        piece = os.pread(fd, min(length - copied, 1 << 20), offset + copied)
        if not piece:
            break
        destination.write(piece)
        copied += len(piece)
    return copied


def _kernelReportsSyncfsErrors(system: str, release: str) -> bool:
    """
    Whether C{syncfs(2)} on this kernel says when data could not be made
    durable.  Linux reports write-back errors to it from 5.8 on, and the
    file system's own failures (a journal commit, a cache flush) only from
    5.17 on; before, a failure could look like success.
    """
    if system != "Linux":
        return False
    match = re.match(r"(\d+)\.(\d+)", release)
    return match is not None and (int(match.group(1)), int(match.group(2))) >= (5, 17)


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


# The local file systems whose syncfs(2) writes out every dirty file and
# commits the journal (or transaction) with a cache flush, as fsync(2)
# would for each file: ext2/3/4, XFS, Btrfs, F2FS.  Others fall back to an
# fsync per file: FUSE passes syncfs to its server only for virtiofs, CIFS
# has no sync_fs, and an overlay's write errors land on its upper file
# system, not on the overlay's.
TRUSTED_FILE_SYSTEMS = frozenset({0xEF53, 0x58465342, 0x9123683E, 0xF2F52010})


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
        function = _libc().syncfs
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


def fileSystemType(fd: int) -> int | None:
    """
    The magic number of the file system holding C{fd} (C{f_type} of
    C{fstatfs(2)}), or L{None} if it cannot be told.
    """
    try:
        function = _libc().fstatfs
    except (OSError, AttributeError):
        return None
    # struct statfs begins with f_type, a native word on Linux; the buffer
    # is larger than the structure on any architecture.
    buffer = ctypes.create_string_buffer(512)
    if function(ctypes.c_int(fd), buffer) != 0:
        return None
    return ctypes.c_ulong.from_buffer(buffer).value & 0xFFFFFFFF


def isTrustedFileSystem(fd: int) -> bool:
    """
    Whether C{syncfs(2)} on the file system holding C{fd} is as good as an
    fsync of each of its files (see L{TRUSTED_FILE_SYSTEMS}).
    """
    return fileSystemType(fd) in TRUSTED_FILE_SYSTEMS


class _SyncfsGroup:
    """
    L{GroupSync} by C{syncfs(2)}: one descriptor, opened before any of the
    files, per file system.

    C{syncfs} reports a write error that happened after the descriptor it
    is given was opened; every file of the group is created after these
    descriptors, so an error on any of them is reported.
    """

    def __init__(self, syncfs: Callable[[int], None], handles: dict[int, int], devices: dict[str, int]) -> None:
        self._syncfs = syncfs
        self._handles = handles
        self._devices = devices

    def covers(self, directory: str) -> bool:
        return directory in self._devices

    def sync(self) -> dict[str, OSError]:
        failed: dict[int, OSError] = {}
        for device, fd in self._handles.items():
            try:
                self._syncfs(fd)
            except OSError as e:
                failed[device] = e
        return {d: failed[device] for d, device in self._devices.items() if device in failed}

    def close(self) -> None:
        handles, self._handles = self._handles, {}
        for fd in handles.values():
            quietly(os.close, fd)


_DEFAULT = object()


@implementer(IFileSystem)
class RealFileSystem:
    """
    L{IFileSystem} on the operating system's calls.
    """

    def __init__(
        self,
        syncfs: Callable[[int], None] | None | object = _DEFAULT,
        trusted: Callable[[int], bool] = isTrustedFileSystem,
    ) -> None:
        """
        @param syncfs: Forces a whole file system to stable storage, given
            a descriptor of something on it (see L{loadSyncfs}, the
            default); L{None} fsyncs every file on its own.
        @param trusted: Whether C{syncfs} may stand for an fsync of each
            file on the file system of a descriptor (see
            L{isTrustedFileSystem}, the default).
        """
        self._syncfs: Callable[[int], None] | None = (
            loadSyncfs() if syncfs is _DEFAULT else syncfs  # type: ignore[assignment]
        )
        self._trusted = trusted

    def create(self, path: str) -> MessageFile:
        return _DescriptorFile(os.open(path, _CREATE_FLAGS, 0o600))

    def copyInto(self, source: str, offset: int, length: int, destination: MessageFile) -> None:
        """
        In the kernel where it can (C{copy_file_range(2)}), through a
        buffer where it cannot.
        """
        fd = os.open(source, os.O_RDONLY)
        try:
            target = destination.fileno()
            # Not on every platform; and a file system may refuse it, or
            # copy nothing, where reading still works.
            kernel = getattr(os, "copy_file_range", None)
            while length > 0:
                done = 0
                if kernel is not None:
                    try:
                        done = kernel(fd, target, min(length, 1 << 30), offset)
                    except OSError as e:
                        if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                            raise
                    if done == 0:
                        kernel = None
                if kernel is None:
                    done = _copyByReading(fd, offset, length, destination)
                    if done < length:
                        raise OSError(errno.EIO, "the message file is shorter than written", source)
                offset += done
                length -= done
        finally:
            os.close(fd)

    def fsync(self, f: MessageFile) -> None:
        f.flush()
        os.fsync(f.fileno())

    def groupSync(self, directories: Sequence[str]) -> GroupSync | None:
        """
        A descriptor of each directory's file system, opened now, for one
        C{syncfs(2)} per file system later; directories on file systems
        that are not trusted (or cannot be opened) are left out.
        """
        if self._syncfs is None:
            return None
        handles: dict[int, int] = {}
        devices: dict[str, int] = {}
        untrusted: set[int] = set()
        try:
            for directory in dict.fromkeys(directories):
                try:
                    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                except OSError:
                    continue
                keep = False
                try:
                    device = os.fstat(fd).st_dev
                    if device not in handles and device not in untrusted:
                        if self._trusted(fd):
                            handles[device] = fd
                            keep = True
                        else:
                            untrusted.add(device)
                    if device in handles:
                        devices[directory] = device
                finally:
                    if not keep:
                        os.close(fd)
        except BaseException:
            for fd in handles.values():
                quietly(os.close, fd)
            raise
        if not handles:
            return None
        return _SyncfsGroup(self._syncfs, handles, devices)

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
        self.temporaryDirectory = os.path.join(directory, "tmp")
        self.temporaryPath = os.path.join(self.temporaryDirectory, name)
        self.file: MessageFile | None = None
        self.created = False


def makeMaildir(fs: IFileSystem, path: str, folder: bool = False) -> None:
    """
    Create a Maildir (C{tmp}, C{new}, C{cur}) and any missing parent
    unless it exists; for a Maildir++ folder also the C{maildirfolder}
    marker that Dovecot and Courier look for.  Then make every new
    directory entry durable, so a crash cannot take the Maildir, and a
    message renamed into it, away.  Another thread may be creating the
    same Maildir at the same time.

    @raise OSError: if that fails.
    """
    if os.path.isdir(os.path.join(path, "new")):
        return
    created = []
    existing = path
    while not os.path.isdir(existing):
        created.append(existing)
        existing = os.path.dirname(existing)
    for sub in SUBDIRECTORIES:
        fs.makeDirectories(os.path.join(path, sub))
    if folder:
        try:
            fs.create(os.path.join(path, "maildirfolder")).close()
        except FileExistsError:
            pass
    for directory in dict.fromkeys([path, *created, existing]):
        fs.syncDirectory(directory)


class PendingDelivery:
    """
    The copies of one message, one per recipient, while the message is
    being received.

    A small message is kept in memory: one buffer of the body, shared by
    all copies (each copy is its own header block plus that body), so
    receiving it costs the caller's thread no system call at all.  Only
    when the body grows past C{threshold} bytes is the first copy's file
    created in C{tmp/}, on the caller's thread, and everything from then
    on is appended to it as it arrives: the memory a delivery holds is
    bounded by the threshold, whatever the size of the message, and one
    file is written however many copies there are (the others are made
    from it by the commit, in its thread).  A message that
    ends in memory is written out by L{commit}, in the thread that runs it.

    After a failure the delivery is spoiled: later writes are ignored and
    L{commit} raises.
    """

    def __init__(
        self,
        fs: IFileSystem,
        copies: Sequence[_Copy],
        threshold: int = MEMORY_THRESHOLD,
        create: bool = False,
    ) -> None:
        """
        @param copies: The copies, none of them on disk yet.
        @param threshold: How many bytes of body to keep in memory before
            writing the copies to C{tmp/}.
        @param create: Whether the copies' Maildirs may not exist yet and
            are to be made, durably, before the first file is written.
        """
        self._fs = fs
        self._copies = list(copies)
        self._threshold = threshold
        self._create = create
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
        Append C{data} to the message: to the shared buffer while the body
        is small, to the first copy's file in C{tmp/} once it is not (the
        other copies are made from it when the message is committed, in
        the committing thread).

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
        if not self._copies:
            return
        try:
            self._copies[0].file.write(data)  # type: ignore[union-attr]
        except OSError as e:
            self._fail(StorageError.fromOSError("writing the message", e))

    def _spill(self, body: bytes | bytearray) -> None:
        """
        Create the first copy's file in C{tmp/} with what has arrived so
        far.  Only one file is written while the message arrives, on the
        caller's thread, however many recipients it has: a message for a
        thousand of them costs the reactor no more writes, and no more
        open files, than one for a single recipient.
        """
        if not self._copies:
            return
        try:
            self._ensureMaildirs()
            self._createFile(self._copies[0], body)
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

    def _writeOut(self, group: GroupSync | None = None) -> None:
        """
        The first step of a commit: write out and close every copy's file,
        each made durable now unless C{group} will do it.

        A message in memory has its files created and written; those in a
        directory C{group} covers are closed at once and left to its sync,
        the others fsynced first.  A spilled message's files are fsynced
        (a long wait, not to be shared) and closed.  So at most one of the
        message's files is open at a time.

        @raise StorageError: if that fails; the delivery is then spoiled.
        """
        if self._failure is not None:
            self._discard()
            raise self._failure
        if self._finished:
            raise StorageError("the delivery is already over")
        body = self._buffer
        self._buffer = None
        first = self._copies[0] if self._copies else None
        try:
            if body is not None:
                self._ensureMaildirs()
            for copy in self._copies:
                if body is not None:
                    self._createFile(copy, body)
                elif first is not None and copy is not first:
                    # A spilled message's body is in the first copy's file,
                    # after that copy's own header.
                    self._createFile(copy, b"")
                    self._fs.copyInto(first.temporaryPath, len(first.header), self._bodySize, copy.file)
                assert copy.file is not None
                if group is None or body is None or not group.covers(copy.temporaryDirectory):
                    self._fs.fsync(copy.file)
                # A close can report a failed write-back (NFS) too.
                f, copy.file = copy.file, None
                f.close()
        except StorageError as e:
            raise self._failed(e) from e
        except OSError as e:
            raise self._failed(StorageError.fromOSError("syncing the message to disk", e)) from e

    def _temporaryDirectories(self) -> list[str]:
        """
        The C{tmp/} directories this delivery's copies are written in.
        """
        return [copy.temporaryDirectory for copy in self._copies]

    def _publish(self, folders: Sequence[str | None] | None) -> tuple[list[StoredMessage], list[str]]:
        """
        The step after the files are durable: rename each into C{new/} (of a Maildir++ folder, created on first use, if one
        is given for it).

        @return: the stored copies and the C{new/} directories that now
            need an fsync.
        @raise StorageError: if that fails; the copies already renamed are
            removed again and the delivery is spoiled.
        """
        if folders is None:
            folders = [None] * len(self._copies)
        stored: list[StoredMessage] = []
        directories: list[str] = []
        try:
            for copy, folder in zip(self._copies, folders):
                destination = copy.directory
                if folder is not None:
                    destination = os.path.join(copy.directory, "." + folder)
                    makeMaildir(self._fs, destination, folder=True)
                size = len(copy.header) + self._bodySize
                final = os.path.join(destination, "new", f"{copy.name},S={size}")
                self._fs.rename(copy.temporaryPath, final)
                stored.append(StoredMessage(copy.name, final, size))
                directories.append(os.path.join(destination, "new"))
        except OSError as e:
            raise self._retract(stored, StorageError.fromOSError("moving the message into new/", e)) from e
        return stored, list(dict.fromkeys(directories))

    def retract(self, stored: Sequence[StoredMessage], failure: StorageError) -> StorageError:
        """
        Take back the copies of a committed delivery, durably, when a step
        after the commit that its 250 depends on has failed (recording its
        hook jobs), so the sender's retry does not make duplicates.

        @return: C{failure}, to raise.
        """
        return self._retract(stored, failure)

    def _retract(self, stored: Sequence[StoredMessage], failure: StorageError) -> StorageError:
        """
        Remove copies already renamed into C{new/}, and make the removal
        durable, and spoil the delivery, so the sender's retry does not
        make duplicates.
        """
        for message in stored:
            quietly(self._fs.unlink, message.path)
        for directory in dict.fromkeys(os.path.dirname(message.path) for message in stored):
            quietly(self._fs.syncDirectory, directory)
        return self._failed(failure)

    def _failed(self, failure: StorageError) -> StorageError:
        self._fail(failure)
        return failure

    def _ensureMaildirs(self) -> None:
        """
        Make the copies' Maildirs, once, if this delivery may have to.

        @raise StorageError: if one cannot be made.
        """
        if not self._create:
            return
        self._create = False
        try:
            for directory in dict.fromkeys(copy.directory for copy in self._copies):
                makeMaildir(self._fs, directory)
        except OSError as e:
            raise StorageError.fromOSError("creating the Maildir", e) from e

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
                quietly(copy.file.close)
            if copy.created:
                quietly(self._fs.unlink, copy.temporaryPath)


def commitMany(
    fs: IFileSystem,
    deliveries: Sequence[tuple[PendingDelivery, Sequence[str | None] | None]],
) -> list[list[StoredMessage] | StorageError]:
    """
    Make several deliveries durable and visible together, each one whole
    or not at all.

    Blocking.  In order: get a L{GroupSync} for the messages still in
    memory (if they have two files or more); write out every file, closing
    each at once (those the group covers) or after its own fsync (the
    rest, and spilled messages); sync the group; rename every copy into
    C{new/}; fsync each C{new/} directory once, however many copies it
    received.  A delivery is stored only when all of those steps succeeded
    for every one of its copies; one delivery's failure does not fail the
    others, except where they shared the failing sync or directory.

    @param deliveries: Each delivery with its copies' folders (see
        L{PendingDelivery.commit}).
    @return: for each delivery, its stored copies or the L{StorageError}
        that kept it from being stored (it is then spoiled).
    """
    results: list[list[StoredMessage] | StorageError | None] = [None] * len(deliveries)
    published: list[tuple[int, list[StoredMessage], list[str]]] = []
    try:
        small = [index for index, (pending, _) in enumerate(deliveries) if pending.inMemory]
        directories = [d for index in small for d in deliveries[index][0]._temporaryDirectories()]
        group = fs.groupSync(directories) if len(directories) > 1 else None
        try:
            for index, (pending, _) in enumerate(deliveries):
                try:
                    pending._writeOut(group)
                except StorageError as e:
                    results[index] = e
            unsynced = group.sync() if group is not None else {}
        finally:
            if group is not None:
                group.close()
        for index in small:
            pending = deliveries[index][0]
            failure = next((unsynced[d] for d in pending._temporaryDirectories() if d in unsynced), None)
            if failure is not None and results[index] is None:
                results[index] = pending._failed(StorageError.fromOSError("syncing the message to disk", failure))

        for index, (pending, folders) in enumerate(deliveries):
            if results[index] is not None:
                continue
            try:
                stored, newDirectories = pending._publish(folders)
            except StorageError as e:
                results[index] = e
                continue
            published.append((index, stored, newDirectories))

        failedDirectories: dict[str, OSError] = {}
        for directory in dict.fromkeys(d for _, _, ds in published for d in ds):
            try:
                fs.syncDirectory(directory)
            except OSError as e:
                failedDirectories[directory] = e
        for index, stored, newDirectories in published:
            pending = deliveries[index][0]
            error = next((failedDirectories[d] for d in newDirectories if d in failedDirectories), None)
            if error is not None:
                results[index] = pending._retract(stored, StorageError.fromOSError("moving the message into new/", error))
            else:
                pending._finished = True
                results[index] = stored
    except BaseException:
        # A bug, not a disk: leave nothing half-done behind (a copy left in
        # new/ would be a duplicate when the sender retries).
        done = {index for index, result in enumerate(results) if isinstance(result, list)}
        for index, stored, _ in published:
            if index not in done:
                with contextlib.suppress(Exception):
                    deliveries[index][0]._retract(stored, StorageError("interrupted"))
        for index, (pending, _) in enumerate(deliveries):
            if index not in done:
                with contextlib.suppress(Exception):
                    pending.abort()
        raise
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
            makeMaildir(self._fs, self.directoryFor(mailbox))
        except OSError as e:
            raise StorageError.fromOSError(f"creating the Maildir for {mailbox}", e) from e

    def begin(
        self, copies: Sequence[tuple[str, Callable[[str], bytes]]], create: bool = False
    ) -> PendingDelivery:
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
        @param create: Whether the Maildirs may be missing and are to be
            made when the first file is written (submission mailboxes, one
            per user), in the committing thread for a small message.
        @raise StorageError: never for now; callers should still expect it.
        """
        started = []
        for mailbox, makeHeader in copies:
            name = self._namer.nextName()
            started.append(_Copy(name, self.directoryFor(mailbox), makeHeader(name)))
        return PendingDelivery(self._fs, started, self._threshold, create)

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


def quietly(f: Callable[..., object], *args: object) -> None:
    """
    Call C{f}, ignoring the L{OSError} it may raise: for cleaning up after
    a failure that is already being reported.
    """
    try:
        f(*args)
    except OSError:
        pass
