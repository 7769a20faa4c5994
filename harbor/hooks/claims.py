# -*- test-case-name: harbor.test.test_hookclaims -*-
"""
Claims on hook jobs: which process runs a job, so that instances sharing
one hook spool never run the same job at once, and a job claimed by an
instance that died is taken over by a live one.

Each process (each start of C{twistd mailharbor}, each worker) is an
I{instance} with an id of its own (L{newInstanceID}: host name, process
id and a random part, so it is never reused).  Before it runs a job it
claims it: it renames the job's file from C{pending/} into its claim
directory, C{claimed/<instance>/}.  A rename is atomic, so of several
instances trying at once exactly one succeeds; the others find the file
gone and leave the job alone.  The file leaves the claim directory when
the attempt is over: removed (success), buried in C{dead/}, or put back in
C{pending/} with its attempts counted and when it is next due.

An instance shows it is alive by holding an exclusive C{flock(2)} on its
lock file, C{claimed/<instance>.lock}, for as long as it runs.  The kernel
releases the lock when the process ends, however it ends (SIGKILL and
crashes included), so another instance that can take the lock knows the
owner is gone, and moves its claimed jobs back to C{pending/}
(L{InstanceClaims.takeOver}).  On one host this is exact.  On NFS (v4, or
v3 with lockd) C{flock} becomes an NFS byte-range lock held on the server:
a crashed host's locks are released only when the server gives up on it
(NFSv4: after the lease time, 90 seconds by default), and a mount with
C{nolock} or C{local_lock=flock}/C{all} keeps locks on each host, where
they protect nothing: instances on other hosts would take over live
claims and run jobs twice.  The lock file is made under a temporary name,
locked, then renamed into place, so no other instance can ever lock it
first and take a live instance for dead.

The claim renames are not fsynced: after a power failure a claim may be
undone, and the job runs once more, which at-least-once delivery allows.

Blocking, thread-safe, no Twisted but its logger.
"""

from __future__ import annotations

import fcntl
import os
import re
import secrets
import socket
import threading
from collections.abc import Iterator

from twisted.logger import Logger

from harbor.store.fs import quietly

#: The claim directories' parent, inside the spool.
CLAIMED = "claimed"

_LOCK_SUFFIX = ".lock"
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def newInstanceID(host: str | None = None, pid: int | None = None, random: str | None = None) -> str:
    """
    An id for this process's claims, never used before: its host name and
    process id (for the operator) and a random part (for uniqueness, as
    containers share host names and process ids).
    """
    host = socket.gethostname() if host is None else host
    name = _UNSAFE.sub("_", host.split(".")[0])[:32] or "host"
    return f"{name}-{os.getpid() if pid is None else pid}-{secrets.token_hex(6) if random is None else random}"


class InstanceClaims:
    """
    One instance's claims in the C{claimed/} directory of a spool.
    """

    _log = Logger()

    def __init__(self, spool: str, pending: str, instance: str) -> None:
        """
        @param spool: The spool's directory.
        @param pending: Its C{pending/} directory, where released and
            taken-over jobs go.
        @param instance: This instance's id (L{newInstanceID}).
        """
        self.instance = instance
        self._parent = os.path.join(spool, CLAIMED)
        self._pending = pending
        self.directory = os.path.join(self._parent, instance)
        self._lockPath = self.directory + _LOCK_SUFFIX
        self._lockFD: int | None = None
        self._registering = threading.Lock()

    @property
    def registered(self) -> bool:
        """
        Whether this instance holds its lock (and so may have claims).
        """
        return self._lockFD is not None

    def path(self, name: str) -> str:
        """
        Where the job file C{name} is while this instance has it claimed.
        """
        return os.path.join(self.directory, name)

    def register(self) -> None:
        """
        Take this instance's lock and make its claim directory, unless that
        is done already.  Called before every claim: the spool appears
        with its first job, not when a server starts.

        @raise OSError: if they cannot be made.
        """
        with self._registering:
            if self._lockFD is not None:
                return
            os.makedirs(self._parent, exist_ok=True)
            temporary = os.path.join(self._parent, f".{self.instance}.{secrets.token_hex(4)}")
            fd = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
                os.rename(temporary, self._lockPath)
                os.makedirs(self.directory, exist_ok=True)
            except BaseException:
                quietly(os.unlink, temporary)
                os.close(fd)
                raise
            self._lockFD = fd

    def claim(self, name: str) -> bool:
        """
        Claim the job file C{name} in C{pending/}.

        @return: Whether this instance now has it claimed: C{True} too if
            it had already; C{False} if it is not in C{pending/} (another
            instance has it, or it is over).
        """
        self.register()
        try:
            os.rename(os.path.join(self._pending, name), self.path(name))
        except FileNotFoundError:
            return os.path.exists(self.path(name))
        return True

    def release(self, name: str) -> bool:
        """
        Put a claimed job file back in C{pending/}, for any instance to run.

        @return: Whether it was claimed by this instance.
        """
        try:
            os.rename(self.path(name), os.path.join(self._pending, name))
        except FileNotFoundError:
            return False
        return True

    def releaseAll(self) -> int:
        """
        At shutdown: put every job this instance has claimed back in
        C{pending/}, and remove its claim directory and lock.  If a claim
        is made meanwhile (the directory is not empty), the lock is kept,
        so the job waits for this process to end to be taken over.

        @return: How many jobs were put back.
        """
        with self._registering:
            if self._lockFD is None:
                return 0
            moved = _moveAll(self.directory, self._pending)
            try:
                os.rmdir(self.directory)
            except FileNotFoundError:
                pass
            except OSError:
                return moved
            quietly(os.unlink, self._lockPath)
            os.close(self._lockFD)
            self._lockFD = None
            return moved

    def takeOver(self) -> int:
        """
        Move the jobs claimed by instances that have ended back to
        C{pending/}, and remove what is left of them.

        @return: How many jobs were moved.
        """
        moved = 0
        for other in self._others():
            lock = os.path.join(self._parent, other + _LOCK_SUFFIX)
            fd: int | None
            try:
                fd = os.open(lock, os.O_RDWR | os.O_CLOEXEC)
            except FileNotFoundError:
                # No lock at all: its owner had released it (and crashed
                # before removing the directory).
                fd = None
            except OSError:
                continue
            try:
                if fd is not None:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        continue
                directory = os.path.join(self._parent, other)
                count = _moveAll(directory, self._pending)
                quietly(os.rmdir, directory)
                if fd is not None:
                    quietly(os.unlink, lock)
            finally:
                if fd is not None:
                    os.close(fd)
            if count:
                self._log.warn(
                    "Took over {count} hook jobs claimed by instance {other}, which has ended; "
                    "they run again",
                    count=count,
                    other=other,
                )
            moved += count
        return moved

    def claimedNames(self) -> Iterator[tuple[str, str]]:
        """
        Every claimed job file, of every instance: its instance and name.
        """
        try:
            instances = os.listdir(self._parent)
        except FileNotFoundError:
            return
        for instance in instances:
            if instance.startswith(".") or instance.endswith(_LOCK_SUFFIX):
                continue
            try:
                names = os.listdir(os.path.join(self._parent, instance))
            except (FileNotFoundError, NotADirectoryError):
                continue
            for name in names:
                yield instance, name

    def _others(self) -> list[str]:
        try:
            entries = os.listdir(self._parent)
        except FileNotFoundError:
            return []
        return [
            entry
            for entry in entries
            if entry != self.instance
            and not entry.startswith(".")
            and not entry.endswith(_LOCK_SUFFIX)
            and os.path.isdir(os.path.join(self._parent, entry))
        ]


def _moveAll(source: str, destination: str) -> int:
    """
    Rename every file in C{source} into C{destination}.
    """
    try:
        names = os.listdir(source)
    except (FileNotFoundError, NotADirectoryError):
        return 0
    moved = 0
    for name in names:
        try:
            os.rename(os.path.join(source, name), os.path.join(destination, name))
        except FileNotFoundError:
            continue
        moved += 1
    return moved
