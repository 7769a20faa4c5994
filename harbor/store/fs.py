# -*- test-case-name: harbor.test.test_fs -*-
"""
The file-system calls a Maildir delivery makes, behind L{IFileSystem}.

L{RealFileSystem} makes them on the operating system: unbuffered writes,
C{copy_file_range(2)} where it works, and C{syncfs(2)} (reached through
ctypes) for making many files durable in one wait, on the kernels and file
systems where that is as good as an fsync of each file, and
C{renameat2(2)} with C{RENAME_NOREPLACE} (or a hard link) for moving a
message into C{new/} without ever replacing another.  Tests put a
recording or failing file system in its place.

L{makeMaildir} creates a Maildir durably through either, and
L{StorageError} is how every failure here reaches the SMTP reply.

This module does no networking and imports no reactor; its calls block and
are meant to run in a thread of the caller's choice.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import platform
import re
import sys
from collections.abc import Callable, Sequence
from typing import Protocol

from zope.interface import Interface, implementer

from harbor.store.names import SUBDIRECTORIES

_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC


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
        Atomically rename C{source} to C{destination}, replacing it if it
        exists.
        """

    def renameNoReplace(source: str, destination: str) -> None:
        """
        Atomically rename C{source} to C{destination}, unless C{destination}
        exists: a message moved into C{new/} must never take the place of
        another one that happens to have its name.

        @raise FileExistsError: if C{destination} exists; C{source} is
            left where it is.
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


# renameat2(2)'s flag, and the "current directory" for its descriptors.
RENAME_NOREPLACE = 1
_AT_FDCWD = -100


def loadRenameat2() -> Callable[[str, str], None] | None:
    """
    C{renameat2(2)} with C{RENAME_NOREPLACE} as a function of two paths
    that raises L{OSError} (L{FileExistsError} if the destination exists),
    or L{None} where the C library has no C{renameat2} (before glibc 2.28,
    or not Linux).

    A file system that cannot rename without replacing (NFS, CephFS, FUSE
    without it) fails it with C{EINVAL}; the caller then links instead.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = _libc().renameat2
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int

    def renameat2(source: str, destination: str) -> None:
        if function(_AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(destination), RENAME_NOREPLACE) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code), source, None, destination)

    return renameat2


# What renameat2 fails with where the kernel or the file system cannot
# rename without replacing: then link(2) does it.
_NO_RENAMEAT2 = frozenset({errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP})
# What link(2) fails with where the file system has no hard links.
_NO_LINKS = frozenset({errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS})


def linkThenUnlink(source: str, destination: str) -> None:
    """
    Rename C{source} to C{destination} without replacing it, by making a
    hard link (which fails if C{destination} exists, atomically, also on
    an NFS or CephFS server) and removing C{source}.

    On NFS a link whose reply was lost is sent again and then fails with
    C{EEXIST}, although the first one made the link: a destination that is
    the very file of C{source} counts as done.  A C{source} that cannot be
    removed is left behind: the message is in its place already, and a
    stray link in C{tmp/} is harmless.

    @raise FileExistsError: if another file has the name C{destination}.
    """
    try:
        os.link(source, destination)
    except FileExistsError:
        if not _sameFile(source, destination):
            raise
    quietly(os.unlink, source)


def _sameFile(first: str, second: str) -> bool:
    try:
        return os.path.samestat(os.stat(first), os.stat(second))
    except OSError:
        return False


def checkThenRename(source: str, destination: str) -> None:
    """
    The last resort of L{RealFileSystem.renameNoReplace} on a file system
    with neither C{renameat2(2)} flags nor hard links: rename, having
    looked for C{destination} first.  Not atomic: another writer could take
    the name between the look and the rename, which the random part of
    every name (see L{harbor.store.names.MaildirNamer}) leaves to chance.

    @raise FileExistsError: if C{destination} exists.
    """
    if os.path.lexists(destination):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), destination)
    os.rename(source, destination)


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
        renameat2: Callable[[str, str], None] | None | object = _DEFAULT,
    ) -> None:
        """
        @param syncfs: Forces a whole file system to stable storage, given
            a descriptor of something on it (see L{loadSyncfs}, the
            default); L{None} fsyncs every file on its own.
        @param trusted: Whether C{syncfs} may stand for an fsync of each
            file on the file system of a descriptor (see
            L{isTrustedFileSystem}, the default).
        @param renameat2: Renames without replacing (see L{loadRenameat2},
            the default); L{None} links instead (see L{linkThenUnlink}).
        """
        self._syncfs: Callable[[int], None] | None = (
            loadSyncfs() if syncfs is _DEFAULT else syncfs  # type: ignore[assignment]
        )
        self._trusted = trusted
        self._renameat2: Callable[[str, str], None] | None = (
            loadRenameat2() if renameat2 is _DEFAULT else renameat2  # type: ignore[assignment]
        )
        # The directories whose file systems refused renameat2's flag, or
        # hard links: they are not asked again.
        self._noRenameat2: set[str] = set()
        self._noLinks: set[str] = set()

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

    def renameNoReplace(self, source: str, destination: str) -> None:
        """
        By C{renameat2(2)} with C{RENAME_NOREPLACE} where the kernel and
        the file system have it (ext4, XFS, Btrfs, tmpfs, overlayfs); else
        by L{linkThenUnlink} (NFS, CephFS); else, on a file system without
        hard links either, by L{checkThenRename}.  What a directory's file
        system cannot do is remembered, so it costs one failed call once.
        """
        directory = os.path.dirname(destination)
        if self._renameat2 is not None and directory not in self._noRenameat2:
            try:
                self._renameat2(source, destination)
                return
            except OSError as e:
                if e.errno not in _NO_RENAMEAT2:
                    raise
                self._noRenameat2.add(directory)
        if directory not in self._noLinks:
            try:
                linkThenUnlink(source, destination)
                return
            except OSError as e:
                if e.errno not in _NO_LINKS:
                    raise
                self._noLinks.add(directory)
        checkThenRename(source, destination)

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
