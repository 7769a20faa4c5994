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

    Each message's own step after its commit (recording its hook jobs)
    runs in the same thread, before any reply is sent.
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
        self._waiting: list[tuple[PendingDelivery, Folders, Callable[[list[StoredMessage]], Any], Deferred[Any]]] = []
        self._busy = False

    def commit(
        self,
        pending: PendingDelivery,
        folders: Folders,
        after: Callable[[list[StoredMessage]], T],
    ) -> Deferred[tuple[list[StoredMessage], T]]:
        """
        Make C{pending} durable, then run C{after} on its stored copies, in
        the commit's thread.

        @return: a L{Deferred} firing with the stored copies and what
            C{after} returned, or failing with L{StorageError} (or what
            C{after} raised).
        """
        d: Deferred[tuple[list[StoredMessage], T]] = Deferred()
        entry = (pending, folders, after, d)
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
        group: list[tuple[PendingDelivery, Folders, Callable[[list[StoredMessage]], Any], Deferred[Any]]],
        grouped: bool,
    ) -> None:
        commitMany = self._commitMany

        def work() -> list[Any]:
            outcomes: list[Any] = []
            results = commitMany([(pending, folders) for pending, folders, _, _ in group])
            for (_, _, after, _), result in zip(group, results, strict=True):
                if isinstance(result, StorageError):
                    outcomes.append(Failure(result))
                    continue
                try:
                    outcomes.append((result, after(result)))
                # A bug in one message's follow-up must not leave the other
                # senders of the group unanswered: it becomes that message's 451.
                except Exception:  # noqa: BLE001
                    outcomes.append(Failure())
            return outcomes

        def done(outcomes: list[Any] | Failure) -> None:
            if grouped:
                self._busy = False
            for index, (_, _, _, d) in enumerate(group):
                outcome = outcomes if isinstance(outcomes, Failure) else outcomes[index]
                if isinstance(outcome, Failure):
                    d.errback(outcome)
                else:
                    d.callback(outcome)
            if grouped and self._waiting and not self._busy:
                self._next()

        self._runInThread(work).addBoth(done)
