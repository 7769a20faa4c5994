# -*- test-case-name: harbor.test.test_names -*-
"""
Maildir names: the layout of a Maildir and the names of the files in it.

A stored file is named C{<id>,S=<size>} in C{new/} and
C{<id>,S=<size>:2,<flags>} once a reader has moved it to C{cur/}: the
unique id MailHarbor gives each copy, the Maildir++ size and the standard
info.  Both the writer and the tools that read the store parse names here,
so this module is pure: no I/O beyond asking for the time and the pid, and
no Twisted.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable

from attrs import frozen

SUBDIRECTORIES = ("tmp", "new", "cur")

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
        micro = round((now - whole) * 1_000_000) % 1_000_000
        return f"{whole}.M{micro}P{self._pid}Q{self._count}.{self._host}"
