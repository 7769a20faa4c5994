# -*- test-case-name: harbor.test.test_delivery -*-
"""
The commit queue: finished messages made durable off the reactor thread,
several at a time, each sender's L{Deferred} fired once its copies are in
C{new/}.

It is the asynchronous side of L{harbor.store.writer.GroupCommit}, which
does the blocking work in the thread.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from harbor.store.fs import StorageError
from harbor.store.writer import Folders, PendingDelivery, StoredMessage

T = TypeVar("T")
RunInThread = Callable[[Callable[[], T]], "Deferred[T]"]


class CommitQueue:
    """
    Makes finished messages durable, several at a time.

    While one group of messages is being committed in a thread, the
    messages that finish meanwhile wait, and go together in the next group
    (L{harbor.store.writer.GroupCommit}): under load many messages share each
    wait for the disk and each trip to the thread, and a lone message waits
    for nothing but its own commit.  A message too large to be kept in
    memory is committed on its own at once, so that its long fsync does not
    hold up the small ones.

    What must be durable with a message besides its copies (its hooks'
    jobs) is attached to it (L{PendingDelivery.accompany}) and written in
    the same thread, before the copies are renamed into C{new/}.
    """

    def __init__(
        self,
        runInThread: RunInThread[Any],
        commitMany: Callable[[Sequence[tuple[PendingDelivery, Folders]]], list[Any]],
        grouped: bool = True,
    ) -> None:
        """
        @param runInThread: Runs the blocking commits off the reactor thread.
        @param commitMany: Commits a group (L{MaildirStore.commitMany}).
        @param grouped: L{False} commits every message on its own, as soon
            as it ends (the C{group_commit = false} setting).
        """
        self._runInThread = runInThread
        self._commitMany = commitMany
        self._grouped = grouped
        self._waiting: list[tuple[PendingDelivery, Folders, Deferred[list[StoredMessage]]]] = []
        self._busy = False

    def commit(self, pending: PendingDelivery, folders: Folders) -> Deferred[list[StoredMessage]]:
        """
        Make C{pending} durable, with its companion if it has one.

        @return: a L{Deferred} firing with the stored copies, or failing
            with L{StorageError}.
        """
        d: Deferred[list[StoredMessage]] = Deferred()
        entry = (pending, folders, d)
        if not self._grouped or not pending.inMemory:
            self._run([entry], grouped=False)
            return d
        self._waiting.append(entry)
        if not self._busy:
            self._next()
        return d

    def _next(self) -> None:
        group, self._waiting = self._waiting, []
        self._busy = True
        self._run(group, grouped=True)

    def _run(
        self,
        group: list[tuple[PendingDelivery, Folders, Deferred[list[StoredMessage]]]],
        grouped: bool,
    ) -> None:
        commitMany = self._commitMany

        def work() -> list[Any]:
            return commitMany([(pending, folders) for pending, folders, _ in group])

        def done(outcomes: list[Any] | Failure) -> None:
            if grouped:
                self._busy = False
            for index, (_, _, d) in enumerate(group):
                outcome = outcomes if isinstance(outcomes, Failure) else outcomes[index]
                if isinstance(outcome, StorageError):
                    d.errback(Failure(outcome))
                elif isinstance(outcome, Failure):
                    d.errback(outcome)
                else:
                    d.callback(outcome)
            if grouped and self._waiting and not self._busy:
                self._next()

        self._runInThread(work).addBoth(done)
