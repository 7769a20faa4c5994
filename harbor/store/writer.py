# -*- test-case-name: harbor.test.test_writer,harbor.test.test_collisions -*-
"""
The Maildir writer: a streaming delivery that makes a message durable
before anyone is told it was received.

A delivery keeps a small message in memory and writes a large one into each
recipient's file in C{tmp/} as the data arrives.  At the end of the message
it writes out the copies still in memory, forces every copy to stable
storage, renames each into C{new/} and fsyncs the C{new/} directories.  Only
after that may the SMTP server answer 250: a crash at any earlier point
leaves at most a file in C{tmp/}, which no mail reader looks at.

Deliveries that end at about the same time can be committed together, in
one of the commit lanes (L{GroupCommit}, driven by
L{harbor.store.commits.CommitQueue}): their files are written and each
fsynced (or, with C{group_commit = "syncfs"} on a file system of its own,
made durable in one wait, one C{syncfs(2)} per file system where the kernel
and the file system make it as good as an fsync of each file), renamed,
and each C{new/} directory is fsynced once for all of them.  The promise is
the same for each message; the disk's work is shared.

This module does no networking and imports no reactor; the blocking
L{GroupCommit.commit} and L{PendingDelivery.commit} are meant to run in a
thread of the caller's choice.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence

from harbor.store.copies import Companion, Copy, NameTaken, StoredMessage, unpublish
from harbor.store.fs import (
    GroupSync,
    IFileSystem,
    RealFileSystem,
    StorageError,
    makeMaildir,
    quietly,
)
from harbor.store.names import MaildirNamer

# How many bytes of a message's body a delivery keeps in memory before it
# writes the copies to tmp/ (see PendingDelivery).
MEMORY_THRESHOLD = 64 * 1024

# How many names a delivery tries before it gives up with a 451: with the
# random part of every name, a second collision means a broken namer.
NAME_ATTEMPTS = 5

__all__ = [
    "MEMORY_THRESHOLD",
    "NAME_ATTEMPTS",
    "CommitResult",
    "Companion",
    "Folders",
    "GroupCommit",
    "MaildirStore",
    "NameTaken",
    "PendingDelivery",
    "StoredMessage",
]


class PendingDelivery:
    """
    The copies of one message, one per recipient, while the message is
    being received.

    A small message is kept in memory: one buffer of the body, shared by
    all copies (each copy is its own header block plus that body), so
    receiving it costs the caller's thread no system call at all.  Only
    when the body grows past C{threshold} bytes is the first copy's file
    created in C{tmp/}, on the caller's thread, and everything from then
    on is appended to it as it arrives: the memory a delivery holds is
    bounded by the threshold, whatever the size of the message, and one
    file is written however many copies there are (the others are made
    from it by the commit, in its thread).  A message that
    ends in memory is written out by L{commit}, in the thread that runs it.

    After a failure the delivery is spoiled: later writes are ignored and
    L{commit} raises.

    The steps of a commit are public for L{GroupCommit}, which runs them
    for many deliveries at once, sharing the waits between them:
    L{writeOut}, then L{writeCompanion}, then L{publish}, then L{finish};
    L{spoil} or L{retract} when a shared wait fails.

    No copy ever replaces a file of another's: a name found taken in
    C{tmp/} or C{new/} fails the commit with L{NameTaken}, and the caller
    gives the copies new names (L{renew}), records again what it recorded
    under the old ones (the hooks' jobs), and commits again.  The body is
    kept meanwhile, in memory or in one of the old files in C{tmp/}.
    """

    def __init__(
        self,
        fs: IFileSystem,
        copies: Sequence[Copy],
        threshold: int = MEMORY_THRESHOLD,
        create: bool = False,
        namer: Callable[[], str] | None = None,
    ) -> None:
        """
        @param copies: The copies, none of them on disk yet.
        @param threshold: How many bytes of body to keep in memory before
            writing the copies to C{tmp/}.
        @param create: Whether the copies' Maildirs may not exist yet and
            are to be made, durably, before the first file is written.
        @param namer: Gives a new unique name, for L{renew}.
        """
        self._fs = fs
        self._copies = list(copies)
        self._threshold = threshold
        self._create = create
        self._namer = namer
        # After a NameTaken with the body on disk: an old file in tmp/
        # that holds it (its path, and the length of the header before
        # it), and the old files to remove once the copies are rewritten.
        self._source: tuple[str, int] | None = None
        self._stale: list[str] = []
        # The body while it is in memory; None once spilled (or finished).
        self._buffer: bytearray | None = bytearray()
        self._bodySize = 0
        self._failure: StorageError | None = None
        self._finished = False
        self._companion: Companion | None = None
        self._companionWritten = False

    @property
    def failure(self) -> StorageError | None:
        """
        The local failure that spoiled this delivery, if any.
        """
        return self._failure

    def write(self, data: bytes) -> None:
        """
        Append C{data} to the message: to the shared buffer while the body
        is small, to the first copy's file in C{tmp/} once it is not (the
        other copies are made from it when the message is committed, in
        the committing thread).

        A failing write (a full disk, say) is remembered, not raised: the
        SMTP client is still sending and must be answered only at the end.
        """
        if self._failure is not None or self._finished or not data:
            return
        self._bodySize += len(data)
        buffer = self._buffer
        if buffer is not None:
            buffer += data
            if len(buffer) > self._threshold:
                self._buffer = None
                self._spill(buffer)
            return
        if not self._copies:
            return
        try:
            self._copies[0].file.write(data)  # type: ignore[union-attr]
        except OSError as e:
            self.spoil(StorageError.fromOSError("writing the message", e))

    def _spill(self, body: bytes | bytearray) -> None:
        """
        Create the first copy's file in C{tmp/} with what has arrived so
        far.  Only one file is written while the message arrives, on the
        caller's thread, however many recipients it has: a message for a
        thousand of them costs the reactor no more writes, and no more
        open files, than one for a single recipient.
        """
        if not self._copies:
            return
        first = self._copies[0]
        try:
            self._ensureMaildirs()
            for attempt in range(1, NAME_ATTEMPTS + 1):
                try:
                    first.create(self._fs, body)
                    break
                except NameTaken:
                    # Nothing has been told the name yet: take another.
                    if attempt == NAME_ATTEMPTS or self._namer is None:
                        raise
                    first.rename(self._namer())
        except StorageError as e:
            self.spoil(e)

    @property
    def inMemory(self) -> bool:
        """
        Whether the message is still only in memory, so that committing it
        creates its files (a small message) rather than finishing files
        that have been in C{tmp/} for a while (a large one).
        """
        return self._buffer is not None and self._failure is None and not self._finished

    def commit(self, folders: Sequence[str | None] | None = None) -> list[StoredMessage]:
        """
        Make every copy durable and visible, or none of them: a
        L{GroupCommit} of this delivery alone.

        @param folders: For each copy, the name of the folder it goes to
            (C{Lists.python} is C{.Lists.python/}), or L{None} for the
            inbox.  The names must already be safe.
        @raise StorageError: if the message could not be stored.
        """
        for attempt in range(1, NAME_ATTEMPTS + 1):
            [result] = GroupCommit(self._fs, [(self, folders)]).commit()
            if not isinstance(result, NameTaken):
                break
            # A companion was written under the old names; its owner must
            # write it again (see L{renew}).
            if attempt == NAME_ATTEMPTS or self._companion is not None or self._namer is None:
                self.abort()
                break
            self.renew()
        if isinstance(result, StorageError):
            raise result
        return result

    def renew(self) -> None:
        """
        Give every copy a new name (and a header that names it), after a
        commit failed with L{NameTaken}.  Anything made from the old names
        (L{planned}, a companion) must be made again before the next
        commit.  Pure: call it in any thread.
        """
        assert self._namer is not None, "a delivery without a namer cannot be renamed"
        for copy in self._copies:
            copy.rename(self._namer())

    def accompany(self, companion: Companion) -> None:
        """
        Have the commit make C{companion} durable with the message, before
        its copies are renamed into C{new/} (see L{Companion}).
        """
        self._companion = companion

    def planned(self, folders: Sequence[str | None] | None = None) -> list[StoredMessage]:
        """
        The copies as they will be once stored in C{folders} (see
        L{commit}): their ids, their paths in C{new/} and their sizes.
        Call it once the message has ended, to describe the copies before
        they exist (for the jobs of their hooks).
        """
        if folders is None:
            folders = [None] * len(self._copies)
        planned = []
        for copy, folder in zip(self._copies, folders):
            destination = copy.directory if folder is None else os.path.join(copy.directory, "." + folder)
            size = len(copy.header) + self._bodySize
            planned.append(StoredMessage(copy.name, os.path.join(destination, "new", f"{copy.name},S={size}"), size))
        return planned

    def temporaryDirectories(self) -> list[str]:
        """
        The C{tmp/} directories this delivery's copies are written in, so
        that a L{GroupCommit} can sync them together.
        """
        return [copy.temporaryDirectory for copy in self._copies]

    def writeOut(self, group: GroupSync | None = None) -> None:
        """
        The first step of a commit: write out and close every copy's file,
        each made durable now unless C{group} will do it.

        A message in memory has its files created and written; those in a
        directory C{group} covers are closed at once and left to its sync,
        the others fsynced first.  A spilled message's files are fsynced
        (a long wait, not to be shared) and closed.  So at most one of the
        message's files is open at a time.

        @raise StorageError: if that fails; the delivery is then spoiled.
        """
        if self._failure is not None:
            self._discard()
            raise self._failure
        if self._finished:
            raise StorageError("the delivery is already over")
        body = self._buffer
        self._buffer = None
        first = self._copies[0] if self._copies else None
        source = self._source
        try:
            if body is not None:
                self._ensureMaildirs()
            for copy in self._copies:
                if body is not None:
                    copy.create(self._fs, body)
                elif source is not None or (first is not None and copy is not first):
                    # A spilled message's body is in the first copy's file,
                    # after that copy's own header; a renamed one's in an
                    # old file.
                    if source is None:
                        assert first is not None
                        source = (first.temporaryPath, len(first.header))
                    copy.create(self._fs, b"")
                    assert copy.file is not None
                    self._fs.copyInto(source[0], source[1], self._bodySize, copy.file)
                assert copy.file is not None
                if group is None or body is None or not group.covers(copy.temporaryDirectory):
                    self._fs.fsync(copy.file)
                # A close can report a failed write-back (NFS) too.
                f, copy.file = copy.file, None
                f.close()
        except NameTaken as e:
            raise self._collide([], body, None, str(e)) from e
        except StorageError as e:
            raise self.spoil(e) from e
        except OSError as e:
            raise self.spoil(StorageError.fromOSError("syncing the message to disk", e)) from e
        stale, self._stale, self._source = self._stale, [], None
        for path in stale:
            quietly(self._fs.unlink, path)

    def writeCompanion(self) -> None:
        """
        The step between L{writeOut} and L{publish}: make the companion
        (L{accompany}) durable, if there is one, while the copies are still
        only in C{tmp/}.

        @raise StorageError: if that fails; the delivery is then spoiled.
        """
        companion = self._companion
        if companion is None:
            return
        if self._failure is not None:
            raise self._failure
        try:
            companion.write()
        except StorageError as e:
            raise self.spoil(e) from e
        except OSError as e:
            raise self.spoil(StorageError.fromOSError(companion.what, e)) from e
        except Exception as e:
            # A bug in the companion's writer must still mean a 451, not a
            # stored message without its jobs.
            raise self.spoil(StorageError(f"{companion.what}: {e}")) from e
        self._companionWritten = True

    def publish(self, folders: Sequence[str | None] | None) -> tuple[list[StoredMessage], list[str]]:
        """
        The step after the files are durable: rename each into C{new/} (of
        a Maildir++ folder, created on first use, if one is given for it).

        The delivery is not over yet: it is only once the C{new/}
        directories are durable too (see L{finish}).

        @return: the stored copies and the C{new/} directories that now
            need an fsync.
        @raise StorageError: if that fails; the copies already renamed are
            removed again and the delivery is spoiled.
        """
        if folders is None:
            folders = [None] * len(self._copies)
        stored: list[StoredMessage] = []
        directories: list[str] = []
        try:
            for copy, folder, final in zip(self._copies, folders, self.planned(folders)):
                new = os.path.dirname(final.path)
                if folder is not None:
                    makeMaildir(self._fs, os.path.dirname(new), folder=True)
                try:
                    self._fs.renameNoReplace(copy.temporaryPath, final.path)
                except FileExistsError as e:
                    taken = f"moving the message into new/: {copy.name} is taken"
                    raise self._collide(stored, None, copy, taken) from e
                # Its file is no longer in tmp/ to be removed on failure.
                copy.created = False
                stored.append(final)
                directories.append(new)
        except OSError as e:
            raise self.retract(stored, StorageError.fromOSError("moving the message into new/", e)) from e
        return stored, list(dict.fromkeys(directories))

    def _collide(
        self, published: Sequence[StoredMessage], body: bytearray | None, whole: Copy | None, what: str
    ) -> NameTaken:
        """
        A copy's name is taken: undo what this commit did, but keep the
        message, so that L{renew} and another commit can store it.

        The copies in C{published} are removed from C{new/} again, the
        companion is removed, and every file in C{tmp/} but one that holds
        the body is removed.

        @param body: The body, if it was in memory when the commit began.
        @param whole: A copy whose file in C{tmp/} is complete, if any
            (else the body is in memory, or in the first copy's file).
        @param what: Which name was taken where, for the error.
        @return: the failure, to raise.
        """
        unpublish(self._fs, published)
        self._removeCompanion()
        if body is not None:
            self._buffer = body
        elif self._source is None and self._copies:
            keep = whole if whole is not None else self._copies[0]
            self._source = (keep.temporaryPath, len(keep.header))
            self._stale.append(keep.temporaryPath)
            keep.created = False
        for copy in self._copies:
            copy.remove(self._fs)
        return NameTaken(what)

    def finish(self) -> None:
        """
        The last step of a commit, once the copies L{publish} renamed and
        their C{new/} directories are durable: the delivery is over, and
        L{abort} leaves its copies alone.
        """
        self._finished = True

    def retract(self, stored: Sequence[StoredMessage], failure: StorageError) -> StorageError:
        """
        Remove copies already renamed into C{new/}, make the removal
        durable, and spoil the delivery (which removes its companion, the
        hooks' jobs, too), so the sender's retry does not make duplicates:
        when a rename fails half-way, or a C{new/} directory cannot be
        made durable.

        @return: C{failure}, to raise.
        """
        unpublish(self._fs, stored)
        return self.spoil(failure)

    def spoil(self, failure: StorageError) -> StorageError:
        """
        Fail the delivery: remember C{failure}, remove every copy from
        C{tmp/}, and its companion if it was written.  A L{GroupCommit}
        does it when the sync it shares fails.

        @return: C{failure}, to raise.
        """
        self._failure = failure
        self._discard()
        return failure

    def _ensureMaildirs(self) -> None:
        """
        Make the copies' Maildirs, once, if this delivery may have to.

        @raise StorageError: if one cannot be made.
        """
        if not self._create:
            return
        self._create = False
        try:
            for directory in dict.fromkeys(copy.directory for copy in self._copies):
                makeMaildir(self._fs, directory)
        except OSError as e:
            raise StorageError.fromOSError("creating the Maildir", e) from e

    def abort(self) -> None:
        """
        Give up: forget the message and remove every copy from C{tmp/}.
        Safe to call more than once, and after L{commit} (when it does
        nothing).
        """
        if not self._finished:
            self._discard()

    def _discard(self) -> None:
        if self._finished:
            return
        self._finished = True
        self._buffer = None
        self._removeCompanion()
        for copy in self._copies:
            copy.remove(self._fs)
        stale, self._stale, self._source = self._stale, [], None
        for path in stale:
            quietly(self._fs.unlink, path)

    def _removeCompanion(self) -> None:
        """
        Remove the companion, if it was written; never raises.
        """
        if self._companionWritten:
            self._companionWritten = False
            assert self._companion is not None
            with contextlib.suppress(Exception):
                self._companion.remove()


Folders = Sequence["str | None"] | None
CommitResult = list[StoredMessage] | StorageError


class GroupCommit:
    """
    Several deliveries made durable and visible together, each one whole
    or not at all.

    Blocking.  In order: get a L{GroupSync} for the messages still in
    memory (if they have two files or more); write out every file, closing
    each at once (those the group covers) or after its own fsync (the
    rest, and spilled messages); sync the group; write each delivery's
    L{Companion} (its hooks' jobs); rename every copy into C{new/}; fsync
    each C{new/} directory once, however many copies it received.  A
    delivery that fails after its companion was written has it removed.  A delivery is stored only when all of those steps succeeded
    for every one of its copies; one delivery's failure does not fail the
    others, except where they shared the failing sync or directory.

    Each step is one of L{PendingDelivery}'s (L{PendingDelivery.writeOut},
    L{PendingDelivery.writeCompanion}, L{PendingDelivery.publish},
    L{PendingDelivery.finish}); what is shared
    between deliveries (the group sync, the directory fsyncs) happens here,
    between them.  One commit per instance: make it, call L{commit} once.
    """

    def __init__(self, fs: IFileSystem, deliveries: Sequence[tuple[PendingDelivery, Folders]]) -> None:
        """
        @param deliveries: Each delivery with its copies' folders (see
            L{PendingDelivery.commit}).
        """
        self._fs = fs
        self._deliveries = list(deliveries)
        # Each delivery's outcome, once it has one.
        self._results: list[CommitResult | None] = [None] * len(self._deliveries)
        # The deliveries renamed into new/: index, copies, new/ directories.
        self._published: list[tuple[int, list[StoredMessage], list[str]]] = []

    def commit(self) -> list[CommitResult]:
        """
        Commit the deliveries.

        @return: for each delivery, its stored copies or the L{StorageError}
            that kept it from being stored (it is then spoiled).
        """
        try:
            self._writeOut()
            self._writeCompanions()
            self._publish()
            self._syncDirectories()
        except BaseException:
            self._undo()
            raise
        # Every delivery has its result by now.
        return self._results  # type: ignore[return-value]

    def _writeOut(self) -> None:
        """
        Write out every delivery's files, and sync those the group covers
        in one wait; a delivery whose files the sync may have missed fails.
        """
        small = [index for index, (pending, _) in enumerate(self._deliveries) if pending.inMemory]
        directories = [d for index in small for d in self._deliveries[index][0].temporaryDirectories()]
        group = self._fs.groupSync(directories) if len(directories) > 1 else None
        try:
            for index, (pending, _) in enumerate(self._deliveries):
                try:
                    pending.writeOut(group)
                except StorageError as e:
                    self._results[index] = e
            unsynced = group.sync() if group is not None else {}
        finally:
            if group is not None:
                group.close()
        for index in small:
            pending = self._deliveries[index][0]
            failure = next((unsynced[d] for d in pending.temporaryDirectories() if d in unsynced), None)
            if failure is not None and self._results[index] is None:
                self._results[index] = pending.spoil(
                    StorageError.fromOSError("syncing the message to disk", failure)
                )

    def _writeCompanions(self) -> None:
        """
        Make durable what must be with each delivery still standing (its
        hooks' jobs), before any of its copies is in C{new/}.
        """
        for index, (pending, _) in enumerate(self._deliveries):
            if self._results[index] is not None:
                continue
            try:
                pending.writeCompanion()
            except StorageError as e:
                self._results[index] = e

    def _publish(self) -> None:
        """
        Rename the copies of every delivery still standing into C{new/}.
        """
        for index, (pending, folders) in enumerate(self._deliveries):
            if self._results[index] is not None:
                continue
            try:
                stored, newDirectories = pending.publish(folders)
            except StorageError as e:
                self._results[index] = e
                continue
            self._published.append((index, stored, newDirectories))

    def _syncDirectories(self) -> None:
        """
        Fsync each C{new/} directory once; a delivery with a copy in one
        that fails is taken back, the others are stored.
        """
        failedDirectories: dict[str, OSError] = {}
        for directory in dict.fromkeys(d for _, _, ds in self._published for d in ds):
            try:
                self._fs.syncDirectory(directory)
            except OSError as e:
                failedDirectories[directory] = e
        for index, stored, newDirectories in self._published:
            pending = self._deliveries[index][0]
            error = next((failedDirectories[d] for d in newDirectories if d in failedDirectories), None)
            if error is not None:
                self._results[index] = pending.retract(
                    stored, StorageError.fromOSError("moving the message into new/", error)
                )
            else:
                pending.finish()
                self._results[index] = stored

    def _undo(self) -> None:
        """
        After a bug, not a disk: leave nothing half-done behind (a copy
        left in C{new/} would be a duplicate when the sender retries).
        """
        done = {index for index, result in enumerate(self._results) if isinstance(result, list)}
        for index, stored, _ in self._published:
            if index not in done:
                with contextlib.suppress(Exception):
                    self._deliveries[index][0].retract(stored, StorageError("interrupted"))
        for index, (pending, _) in enumerate(self._deliveries):
            if index not in done:
                with contextlib.suppress(Exception):
                    pending.abort()


class MaildirStore:
    """
    The Maildirs under one root: creates them and starts deliveries.
    """

    def __init__(
        self,
        root: str,
        namer: MaildirNamer,
        fs: IFileSystem | None = None,
        memoryThreshold: int = MEMORY_THRESHOLD,
    ) -> None:
        """
        @param memoryThreshold: How many bytes of a message's body to keep
            in memory before writing its copies to C{tmp/}.
        """
        self._root = root
        self._namer = namer
        self._fs: IFileSystem = RealFileSystem() if fs is None else fs
        self._threshold = memoryThreshold

    def directoryFor(self, mailbox: str) -> str:
        """
        The Maildir of C{mailbox}, a path relative to the root that comes
        from the configuration, never from a client.
        """
        return os.path.join(self._root, mailbox)

    def create(self, mailbox: str) -> None:
        """
        Create the Maildir of C{mailbox} (C{tmp}, C{new}, C{cur}).

        @raise StorageError: if it cannot be created.
        """
        try:
            makeMaildir(self._fs, self.directoryFor(mailbox))
        except OSError as e:
            raise StorageError.fromOSError(f"creating the Maildir for {mailbox}", e) from e

    def begin(
        self, copies: Sequence[tuple[str, Callable[[str], bytes]]], create: bool = False
    ) -> PendingDelivery:
        """
        Start a delivery: give each copy its unique name and its own header
        block.

        Nothing is written yet (see L{PendingDelivery}): a small message
        touches the disk only when it is committed, so a Maildir that is
        missing or not writable is reported by L{PendingDelivery.commit},
        or by L{PendingDelivery.failure} once a large message has spilled.

        @param copies: For each copy, the mailbox it goes to and a function
            that, given the copy's id, returns the bytes that start it (its
            trace headers, which name the id).
        @param create: Whether the Maildirs may be missing and are to be
            made when the first file is written (submission mailboxes, one
            per user), in the committing thread for a small message.
        @raise StorageError: never for now; callers should still expect it.
        """
        started = [Copy(self._namer.nextName(), self.directoryFor(mailbox), makeHeader) for mailbox, makeHeader in copies]
        return PendingDelivery(self._fs, started, self._threshold, create, self._namer.nextName)

    def commitMany(self, deliveries: Sequence[tuple[PendingDelivery, Folders]]) -> list[CommitResult]:
        """
        A L{GroupCommit} of C{deliveries} on this store's file system.
        """
        return GroupCommit(self._fs, deliveries).commit()
