# -*- test-case-name: harbor.test.test_commits,harbor.test.test_delivery -*-
"""
The commit queue: finished messages made durable off the reactor thread,
in parallel lanes, each sender's L{Deferred} fired once its copies are in
C{new/}.

It is the asynchronous side of L{harbor.store.writer.GroupCommit}, which
does the blocking work in a lane's thread, and of
L{harbor.store.lanes.LaneScheduler}, which decides which messages go to
which lane.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Hashable, Sequence
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, succeed
from twisted.python.failure import Failure

from harbor.store.fs import StorageError
from harbor.store.lanes import (
    DEFAULT_COMMIT_BATCH,
    DEFAULT_COMMIT_LANES,
    LARGE_COMMIT_LANES,
    Key,
    LaneScheduler,
)
from harbor.store.writer import Folders, PendingDelivery, StoredMessage

T = TypeVar("T")
RunInThread = Callable[[Callable[[], T]], "Deferred[T]"]
_Entry = tuple[PendingDelivery, Folders, "Deferred[list[StoredMessage]]", float]


def deviceOf(directory: str) -> Hashable:
    """
    The file system holding C{directory}: its device number.  Blocking; a
    lane calls it, never the reactor.
    """
    return os.stat(directory).st_dev


def _provisional(directory: str) -> Hashable:
    """
    What stands for the file system of C{directory} until a lane has
    learned it: the directory itself.
    """
    return ("directory", directory)


class CommitQueue:
    """
    Makes finished messages durable in parallel lanes.

    A small message (one still in memory when it ends) waits for a lane of
    the small messages' L{LaneScheduler}; a lane takes the messages
    waiting for the same file systems, up to C{batch} of them, and
    commits them together in one trip to a thread
    (L{harbor.store.writer.GroupCommit}): each file fsynced before its
    rename, each C{new/} directory fsynced once after the renames.  When
    the batch is done, one hand-over to the reactor thread (one
    L{Deferred} of C{runInThread}) fires all its senders' L{Deferred}s, so
    the reactor's cost per message stays small however the batches fall.

    A large message (spilled to C{tmp/} while it arrived) is committed on
    its own, in lanes of its own (L{LARGE_COMMIT_LANES}), so that its long
    fsync holds up none of the small ones.

    The file system of each Maildir (the device of its C{tmp/}) is learned
    in a lane, after the first commit to it, and cached; until then the
    Maildir counts as a file system of its own.  So the reactor thread
    makes no system call here, even for a Maildir on a server that hangs.

    What must be durable with a message besides its copies (its hooks'
    jobs) is attached to it (L{PendingDelivery.accompany}) and written in
    the same thread, before the copies are renamed into C{new/}.
    """

    def __init__(
        self,
        runInThread: RunInThread[Any],
        commitMany: Callable[[Sequence[tuple[PendingDelivery, Folders]]], list[Any]],
        lanes: int = DEFAULT_COMMIT_LANES,
        batch: int = DEFAULT_COMMIT_BATCH,
        largeLanes: int = LARGE_COMMIT_LANES,
        fileSystemOf: Callable[[str], Hashable] = deviceOf,
        observe: Callable[[float], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """
        @param runInThread: Runs one batch's blocking commit in a thread
            and hands its result back to the reactor thread; it must run
            C{lanes + largeLanes} of them at once (a thread pool that
            size, see L{threadsNeeded}).
        @param commitMany: Commits a batch (L{MaildirStore.commitMany}).
        @param lanes: How many batches of small messages may be committed
            at once (the C{commit_lanes} setting).
        @param batch: The most messages in one batch (the C{commit_batch}
            setting); 1 commits every message on its own, as it ends
            (C{group_commit = "off"}).
        @param largeLanes: How many large messages may be committed at once.
        @param fileSystemOf: The file system of a C{tmp/} directory
            (blocking, called in a lane; L{deviceOf} by default).
        @param observe: Told, for each message committed, the seconds from
            L{commit} to its copies being durable (the commit latency the
            metrics show); read with C{clock}.
        """
        self._runInThread = runInThread
        self._commitMany = commitMany
        self._small: LaneScheduler[_Entry] = LaneScheduler(lanes, batch)
        self._large: LaneScheduler[_Entry] = LaneScheduler(largeLanes, 1)
        self._fileSystemOf = fileSystemOf
        # tmp/ directory -> its file system, as the lanes learned them.
        self._fileSystems: dict[str, Hashable] = {}
        self._idleWaiters: list[Deferred[None]] = []
        self.threadsNeeded = lanes + largeLanes
        self._observe = observe
        self._clock = clock

    def commit(self, pending: PendingDelivery, folders: Folders) -> Deferred[list[StoredMessage]]:
        """
        Make C{pending} durable, with its companion if it has one.

        @return: a L{Deferred} firing with the stored copies, or failing
            with L{StorageError}.
        """
        d: Deferred[list[StoredMessage]] = Deferred()
        known = self._fileSystems
        fileSystems = [
            known[directory] if directory in known else _provisional(directory)
            for directory in pending.temporaryDirectories()
        ]
        lanes = self._small if pending.inMemory else self._large
        lanes.add((pending, folders, d, self._clock() if self._observe is not None else 0.0), fileSystems)
        self._start(lanes)
        return d

    def whenIdle(self) -> Deferred[None]:
        """
        A L{Deferred} that fires once no message is waiting or being
        committed: for stopping the commit threads only after every
        commit in progress has finished.
        """
        if self._small.idle and self._large.idle:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._idleWaiters.append(d)
        return d

    def _start(self, lanes: LaneScheduler[_Entry]) -> None:
        """
        Start every lane of C{lanes} that may start now.
        """
        while True:
            taken = lanes.take()
            if taken is None:
                return
            self._run(lanes, *taken)

    def _run(self, lanes: LaneScheduler[_Entry], key: Key, batch: list[_Entry]) -> None:
        commitMany = self._commitMany
        fileSystemOf = self._fileSystemOf
        known = self._fileSystems
        unknown = list(
            dict.fromkeys(
                directory
                for pending, _, _, _ in batch
                for directory in pending.temporaryDirectories()
                if directory not in known
            )
        )

        def work() -> tuple[list[Any], dict[str, Hashable]]:
            outcomes = commitMany([(pending, folders) for pending, folders, _, _ in batch])
            learned: dict[str, Hashable] = {}
            for directory in unknown:
                try:
                    learned[directory] = fileSystemOf(directory)
                except OSError:
                    pass
            return outcomes, learned

        def done(result: tuple[list[Any], dict[str, Hashable]] | Failure) -> None:
            lanes.release(key)
            if not isinstance(result, Failure):
                for directory, fileSystem in result[1].items():
                    known[directory] = fileSystem
                    self._small.learned(_provisional(directory), fileSystem)
                    self._large.learned(_provisional(directory), fileSystem)
            # The next batch first, so the disk is not left idle while
            # this one's senders are answered.
            self._start(lanes)
            observe = self._observe
            now = self._clock() if observe is not None else 0.0
            for index, (_, _, d, began) in enumerate(batch):
                outcome = result if isinstance(result, Failure) else result[0][index]
                if isinstance(outcome, StorageError):
                    d.errback(Failure(outcome))
                elif isinstance(outcome, Failure):
                    d.errback(outcome)
                else:
                    if observe is not None:
                        observe(now - began)
                    d.callback(outcome)
            if self._idleWaiters and self._small.idle and self._large.idle:
                waiters, self._idleWaiters = self._idleWaiters, []
                for waiter in waiters:
                    waiter.callback(None)

        self._runInThread(work).addBoth(done)
