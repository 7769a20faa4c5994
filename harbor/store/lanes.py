# -*- test-case-name: harbor.test.test_commits -*-
"""
Commit lanes, pure: which finished messages go to which commit thread
next, and the defaults of the settings that shape them.

A lane is one commit thread.  Each takes a batch of the messages waiting
(up to C{commit_batch} of them) and makes them durable one file at a time
(L{harbor.store.writer.GroupCommit}): each file fsynced, renamed into
C{new/}, and each C{new/} directory fsynced once for the whole batch.
Several lanes run at once, so several fsyncs are in flight and the kernel
merges them into shared journal commits, and a slow file holds up only its
own lane.

Batches are formed per file system (messages whose Maildirs are on the
same ones), and one file system may hold only so many lanes at once
(L{LaneScheduler.cap}): as long as a single file system has been seen, all
the lanes; once several have, one lane fewer than there are, so a file
system that hangs (an NFS server gone, a failing disk, a throttled cgroup)
can never take every lane, and the others always keep one.

No I/O and no Twisted: L{harbor.store.commits.CommitQueue} drives it from
the reactor thread.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Iterable
from typing import Generic, TypeVar

# The group_commit setting: "fsync" batches messages, each file fsynced on
# its own; "syncfs" makes a batch's files durable with one syncfs(2) per
# file system (for a Maildir on a file system of its own); "off" commits
# every message on its own, as it ends.
COMMIT_MODES = ("fsync", "syncfs", "off")
DEFAULT_COMMIT_MODE = "fsync"

# How many commit threads serve small messages (commit_lanes).  8, not 4:
# on a journaled ext4 with a busy neighbour more fsyncs share each journal
# commit (README, Benchmark: W6 284 against 184 messages a second), for
# about a tenth less W1 on a quiet disk of a 2-CPU machine.
DEFAULT_COMMIT_LANES = 8
MAX_COMMIT_LANES = 64

# The most messages one lane commits at a time (commit_batch).
DEFAULT_COMMIT_BATCH = 32
MAX_COMMIT_BATCH = 1024

# Threads for large messages (spilled to tmp/ as they arrived), which are
# committed one at a time, beside the small messages' lanes and never in
# them: their long fsync must not hold up the small ones.
LARGE_COMMIT_LANES = 2

E = TypeVar("E")
FileSystem = Hashable
Key = frozenset[FileSystem]


class LaneScheduler(Generic[E]):
    """
    The messages waiting for a lane, by the file systems they are on, and
    the lanes in flight.

    The caller L{add}s each message with the file systems its copies are
    on, L{take}s the next batch while it returns one (each a lane started),
    and L{release}s a lane when its batch is committed.
    """

    def __init__(self, lanes: int, batch: int) -> None:
        """
        @param lanes: How many batches may be in flight at once.
        @param batch: The most messages in one batch.
        """
        self._lanes = lanes
        self._batch = batch
        # Waiting messages by the file systems they are on, the key whose
        # oldest message has waited longest first.
        self._waiting: dict[Key, deque[E]] = {}
        # Lanes in flight, in all and holding each file system.
        self._busy = 0
        self._held: dict[FileSystem, int] = {}
        # The file systems messages have been seen on.
        self._seen: set[FileSystem] = set()

    @property
    def cap(self) -> int:
        """
        How many lanes one file system may hold at once: all of them while
        only one file system has been seen, one fewer once several have
        (but at least one).
        """
        if len(self._seen) <= 1:
            return self._lanes
        return max(1, self._lanes - 1)

    @property
    def idle(self) -> bool:
        """
        Whether nothing is waiting and no lane is in flight.
        """
        return not self._waiting and not self._busy

    def add(self, entry: E, fileSystems: Iterable[FileSystem]) -> None:
        """
        Have C{entry} wait for a lane, with the file systems it is on.
        """
        key = frozenset(fileSystems)
        self._seen.update(key)
        queue = self._waiting.get(key)
        if queue is None:
            self._waiting[key] = queue = deque()
        queue.append(entry)

    def learned(self, provisional: FileSystem, actual: FileSystem) -> None:
        """
        What was counted as the file system C{provisional} (a Maildir whose
        file system was not known yet) is C{actual}.
        """
        if provisional in self._seen:
            self._seen.discard(provisional)
            self._seen.add(actual)

    def take(self) -> tuple[Key, list[E]] | None:
        """
        Start a lane with the next batch, if a lane is free and some
        waiting message's file systems are all under L{cap}: the messages
        of the longest-waiting such key, oldest first, up to the batch
        size.

        @return: the batch's key (for L{release}) and its messages, or
            L{None} if no lane may start now.
        """
        if self._busy >= self._lanes:
            return None
        cap = self.cap
        held = self._held
        for key, queue in self._waiting.items():
            if all(held.get(fs, 0) < cap for fs in key):
                break
        else:
            return None
        count = min(self._batch, len(queue))
        batch = [queue.popleft() for _ in range(count)]
        # Whatever is left goes behind the other keys: round robin.
        del self._waiting[key]
        if queue:
            self._waiting[key] = queue
        self._busy += 1
        for fs in key:
            held[fs] = held.get(fs, 0) + 1
        return key, batch

    def release(self, key: Key) -> None:
        """
        The lane that took C{key}'s batch is done.
        """
        self._busy -= 1
        held = self._held
        for fs in key:
            count = held[fs] - 1
            if count:
                held[fs] = count
            else:
                del held[fs]
