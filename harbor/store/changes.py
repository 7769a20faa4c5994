# -*- test-case-name: harbor.test.test_changes -*-
"""
What changed in the Maildirs between two looks, from directory listings
alone: for live updates of the web interface that show mail moved by
Dovecot or mutt as well as our own deliveries.

A L{Snapshot} is the names in C{new/} and C{cur/} of some Maildirs;
L{diff} compares two by message id, so a message a mail reader moved from
C{new/} to C{cur/}, or whose flags it changed, is reported as C{"seen"} or
C{"moved"}, never as one deleted and another new.

A directory whose modification time has not changed since the previous
snapshot is not listed again, unless that time is so recent that a change
in the same clock tick could hide behind it (the "racy" entries Git
guards against): so a poll of a hundred thousand quiet messages costs a
few C{stat} calls.

L{snapshot} blocks (it lists directories); L{diff} is pure.  Nothing here
imports Twisted.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Collection, Mapping
from typing import Any, Literal

from attrs import field, frozen

from harbor.store.browse import maildirs
from harbor.store.names import parseName
from harbor.store.reader import MESSAGE_DIRECTORIES

__all__ = ["Change", "Entry", "Snapshot", "diff", "snapshot"]

#: Seconds a directory's modification time must lie before the listing
#: made of it, for the listing to be trusted while that time stays put.
RACY_SECONDS = 2.0

ChangeKind = Literal["new", "seen", "moved", "deleted"]


@frozen
class Entry:
    """
    Where one message's file is.

    @ivar subdirectory: C{"new"} or C{"cur"}.
    @ivar filename: Its name.
    @ivar seen: Whether it has the seen flag.
    """

    subdirectory: str
    filename: str
    seen: bool


@frozen
class Change:
    """
    One message that changed between two snapshots.

    @ivar kind: C{"new"} (it appeared), C{"seen"} (it gained the seen
        flag), C{"moved"} (any other change of its name: from C{new/} to
        C{cur/} unseen, other flags, the seen flag cleared) or
        C{"deleted"} (it is gone).
    @ivar mailbox: The key of its Maildir.
    @ivar id: Its Maildir id.
    @ivar seen: Whether it has the seen flag now (C{False} once deleted).
    """

    kind: ChangeKind
    mailbox: str
    id: str
    seen: bool = False

    def asJSON(self) -> dict[str, Any]:
        """
        The change as plain JSON values.
        """
        return {"kind": self.kind, "mailbox": self.mailbox, "id": self.id, "seen": self.seen}


@frozen
class _Maildir:
    # One Maildir's messages by id, and, to tell whether the next snapshot
    # can reuse them, the modification times (ns) of its new/ and cur/ and
    # when they were listed.
    messages: Mapping[str, Entry]
    mtimes: tuple[int, int]
    listedAt: float


@frozen
class Snapshot:
    """
    The messages of some Maildirs at one moment.

    @ivar maildirs: By Maildir key, its messages by id.
    """

    _maildirs: Mapping[str, _Maildir] = field(alias="maildirs")

    @property
    def messages(self) -> dict[tuple[str, str], Entry]:
        """
        Every message, by Maildir key and message id.
        """
        return {
            (key, identifier): entry
            for key, maildir in self._maildirs.items()
            for identifier, entry in maildir.messages.items()
        }

    def __len__(self) -> int:
        return sum(len(maildir.messages) for maildir in self._maildirs.values())


def snapshot(
    root: str,
    keys: Collection[str] | None = None,
    previous: Snapshot | None = None,
    clock: Callable[[], float] = time.time,
) -> Snapshot:
    """
    Look at the Maildirs' C{new/} and C{cur/}, by name only.

    @param root: The directory holding the Maildirs.
    @param keys: The keys of the Maildirs to look at (L{Folder.key}), or
        L{None} for all of them.
    @param previous: An earlier snapshot, whose listings are reused for the
        Maildirs that have not changed since.
    @param clock: The wall clock, compared with directories' times.
    @raise harbor.store.reader.StoreError: if C{root} cannot be read.
    """
    old = {} if previous is None else previous._maildirs
    found: dict[str, _Maildir] = {}
    for folder, path in maildirs(root, keys):
        listed = _look(path, old.get(folder.key), clock)
        if listed is not None:
            found[folder.key] = listed
    return Snapshot(found)


def diff(old: Snapshot, new: Snapshot) -> list[Change]:
    """
    The changes from one snapshot to a later one.

    @return: The changes, deletions first, then by mailbox and id.
    """
    changes = []
    empty: Mapping[str, Entry] = {}
    for key in sorted(old._maildirs.keys() | new._maildirs.keys()):
        before = old._maildirs.get(key)
        after = new._maildirs.get(key)
        if before is not None and after is not None and before.messages is after.messages:
            continue
        earlier = empty if before is None else before.messages
        later = empty if after is None else after.messages
        for identifier in earlier.keys() - later.keys():
            changes.append(Change("deleted", key, identifier, False))
        for identifier, entry in later.items():
            was = earlier.get(identifier)
            if was is None:
                changes.append(Change("new", key, identifier, entry.seen))
            elif was != entry:
                kind: ChangeKind = "seen" if entry.seen and not was.seen else "moved"
                changes.append(Change(kind, key, identifier, entry.seen))
    order = {"deleted": 0, "new": 1, "seen": 1, "moved": 1}
    changes.sort(key=lambda change: (order[change.kind], change.mailbox, change.id))
    return changes


def _look(path: str, previous: _Maildir | None, clock: Callable[[], float]) -> _Maildir | None:
    # One Maildir's messages: those of the previous look if neither of its
    # directories changed since (and the look was not racy), else listed
    # anew.  None if it cannot be read.
    try:
        mtimes = tuple(os.stat(os.path.join(path, sub)).st_mtime_ns for sub in MESSAGE_DIRECTORIES)
    except OSError:
        return None
    if (
        previous is not None
        and previous.mtimes == mtimes
        and previous.listedAt - max(mtimes) / 1e9 > RACY_SECONDS
    ):
        return previous
    listedAt = clock()
    messages: dict[str, Entry] = {}
    for sub in MESSAGE_DIRECTORIES:
        try:
            names = os.listdir(os.path.join(path, sub))
        except OSError:
            return None
        for filename in names:
            if not filename.isprintable():
                continue
            name = parseName(filename)
            if name is None:
                continue
            # A file in both new/ and cur/ (a reader's copy before its
            # unlink) counts where it is going: cur/, listed second.
            messages[name.id] = Entry(sub, filename, sub == "cur" and "S" in name.flags)
    return _Maildir(messages, (mtimes[0], mtimes[1]), listedAt)
