# -*- test-case-name: harbor.test.test_names -*-
"""
Maildir names: the layout of a Maildir and the names of the files in it.

A stored file is named C{<id>,S=<size>} in C{new/} and
C{<id>,S=<size>:2,<flags>} once a reader has moved it to C{cur/}: the
unique id MailHarbor gives each copy, the Maildir++ size and the standard
info.  Both the writer and the tools that read the store parse names here,
so this module is pure: no I/O beyond asking for the time, the pid and
random bytes, and no Twisted.
"""

from __future__ import annotations

import itertools
import os
import re
import time
from collections.abc import Callable

from attrs import frozen

SUBDIRECTORIES = ("tmp", "new", "cur")

# How many random bytes each name carries (the R field, in hex).
RANDOM_BYTES = 8

# The id, the comma-separated fields (S=<size> among them) and the info.
_NAME = re.compile(r"^(?P<id>[^,:/]+)(?P<fields>(?:,[^,:/]*)*)(?::(?P<info>.*))?$")


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


def hostPart(hostname: str) -> str:
    """
    C{hostname} made safe as the last part of a Maildir name: C{/} and
    C{:}, which the Maildir scheme reserves, and C{,}, which starts the
    Maildir++ fields (C{,S=<size>}), are written as octal escapes, as the
    scheme says (C{\\057}, C{\\072}, C{\\054}).
    """
    return hostname.replace("/", "\\057").replace(":", "\\072").replace(",", "\\054")


class MaildirNamer:
    """
    Makes the unique names of new messages, in the Maildir scheme:
    C{<seconds>.M<microseconds>P<pid>R<random>Q<count>.<host>}.

    The time comes first, so names sort by delivery time.  The count makes
    the names of one namer unique even within a microsecond.  Pid and host
    alone do not keep writers apart: two containers sharing a Maildir are
    both PID 1 and are told to use the same host name, and a restarted
    process can have an earlier one's pid.  Nor would a boot id (the same
    for every container on a host) or a machine id (often copied into every
    container of an image).  So each name also carries C{R} and 64 bits
    from C{os.urandom}, drawn for every name: two writers' names can then
    only meet with a chance of 2**-64 even at the same microsecond, with
    the same pid, host and count, and a writer forked or restored from a
    snapshot draws new ones.  The writer still never lets one name replace
    another's file (see L{harbor.store.fs.IFileSystem.publish}): it takes
    a new name instead.

    L{nextName} may be called from any thread.
    """

    def __init__(
        self,
        hostname: str,
        seconds: Callable[[], float] = time.time,
        pid: int | None = None,
        random: Callable[[int], bytes] = os.urandom,
    ) -> None:
        """
        @param hostname: This machine's name (see L{hostPart}).
        @param seconds: The clock, injected so tests are deterministic.
        @param pid: The process id, by default this process's.
        @param random: Gives C{n} random bytes (L{os.urandom}); tests give
            two namers the same to make their names collide.
        """
        self._host = hostPart(hostname)
        self._seconds = seconds
        self._pid = os.getpid() if pid is None else pid
        self._random = random
        # next() of a count is atomic, so threads never share a count.
        self._counts = itertools.count(1)

    def nextName(self) -> str:
        """
        Return a name no other delivery has had.
        """
        count = next(self._counts)
        now = self._seconds()
        whole = int(now)
        micro = round((now - whole) * 1_000_000) % 1_000_000
        random = self._random(RANDOM_BYTES).hex()
        return f"{whole}.M{micro}P{self._pid}R{random}Q{count}.{self._host}"
