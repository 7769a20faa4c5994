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
class _Listing:
    # One directory's message names, and the modification time (ns) and
    # the time it was listed at, for reuse by the next snapshot.
    names: frozenset[str]
    mtime: int
    listedAt: float


@frozen
class Snapshot:
    """
    The messages of some Maildirs at one moment.

    @ivar messages: By (Maildir key, message id), where each file is.
    """

    messages: Mapping[tuple[str, str], Entry]
    _listings: Mapping[str, _Listing] = field(factory=dict, repr=False, eq=False, alias="listings")

    def __len__(self) -> int:
        return len(self.messages)


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
        directories that have not changed since.
    @param clock: The wall clock, compared with directories' times.
    @raise harbor.store.reader.StoreError: if C{root} cannot be read.
    """
    old = {} if previous is None else previous._listings
    listings: dict[str, _Listing] = {}
    messages: dict[tuple[str, str], Entry] = {}
    for folder, path in maildirs(root, keys):
        for sub in MESSAGE_DIRECTORIES:
            directory = os.path.join(path, sub)
            listing = _list(directory, old.get(directory), clock)
            if listing is None:
                continue
            listings[directory] = listing
            for filename in listing.names:
                name = parseName(filename)
                if name is None:
                    continue
                seen = sub == "cur" and "S" in name.flags
                where = (folder.key, name.id)
                # A file in both new/ and cur/ (a reader's copy before its
                # unlink) counts where it is going: cur/.
                if where not in messages or sub == "cur":
                    messages[where] = Entry(sub, filename, seen)
    return Snapshot(messages, listings)


def diff(old: Snapshot, new: Snapshot) -> list[Change]:
    """
    The changes from one snapshot to a later one.

    @return: The changes, deletions first, then by mailbox and id.
    """
    changes = []
    for where, entry in old.messages.items():
        if where not in new.messages:
            changes.append(Change("deleted", where[0], where[1], False))
    for where, entry in new.messages.items():
        before = old.messages.get(where)
        if before is None:
            changes.append(Change("new", where[0], where[1], entry.seen))
        elif before != entry:
            kind: ChangeKind = "seen" if entry.seen and not before.seen else "moved"
            changes.append(Change(kind, where[0], where[1], entry.seen))
    order = {"deleted": 0, "new": 1, "seen": 1, "moved": 1}
    changes.sort(key=lambda change: (order[change.kind], change.mailbox, change.id))
    return changes


def _list(directory: str, previous: _Listing | None, clock: Callable[[], float]) -> _Listing | None:
    try:
        mtime = os.stat(directory).st_mtime_ns
    except OSError:
        return None
    if (
        previous is not None
        and previous.mtime == mtime
        and previous.listedAt - mtime / 1e9 > RACY_SECONDS
    ):
        return previous
    listedAt = clock()
    try:
        names = frozenset(name for name in os.listdir(directory) if name.isprintable())
    except OSError:
        return None
    return _Listing(names, mtime, listedAt)
