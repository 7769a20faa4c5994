"""
Tests for L{harbor.store.writer}.
"""

import errno
import mailbox
import os
import re
from collections.abc import Sequence

from zope.interface.verify import verifyObject

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from harbor.store.fs import IFileSystem, RealFileSystem, StorageError
from harbor.store.names import MaildirNamer
from harbor.store.writer import (
    MEMORY_THRESHOLD,
    CommitResult,
    Companion,
    MaildirStore,
    PendingDelivery,
)
from harbor.test._support import RecordingFileSystem


def storedCounts(results: Sequence[CommitResult]) -> list[int | StorageError]:
    """
    How many copies each delivery of a group commit stored, or the error
    it failed with (shown as such where a count was expected).
    """
    return [result if isinstance(result, StorageError) else len(result) for result in results]


class StoreFixture(SynchronousTestCase):
    """
    A store on a recording file system, and ways to look at its Maildir.
    """

    def setUp(self) -> None:
        self.root = self.mktemp()
        self.fs = RecordingFileSystem()
        self.store = MaildirStore(self.root, MaildirNamer("h", Clock().seconds, pid=1), self.fs)
        self.store.create("example.com")
        self.fs.calls.clear()
        self.maildir = os.path.join(self.root, "example.com")

    def listing(self, sub: str, maildir: str | None = None) -> list[str]:
        return sorted(os.listdir(os.path.join(maildir or self.maildir, sub)))

    def assertNothingLeft(self) -> None:
        self.assertEqual((self.listing("tmp"), self.listing("new")), ([], []))

    def callNames(self) -> list[str]:
        return [name for name, _ in self.fs.calls]

    def failNth(self, method: str, n: int, code: int = errno.EIO) -> None:
        """
        Make the C{n}th later call of the file system's C{method} fail.
        """
        original = getattr(self.fs, method)
        count = [0]

        def failing(*args: object) -> object:
            count[0] += 1
            if count[0] == n:
                raise OSError(code, os.strerror(code))
            return original(*args)

        setattr(self.fs, method, failing)


class StoreTests(StoreFixture, SynchronousTestCase):
    """
    Tests for L{MaildirStore} and L{PendingDelivery}.
    """

    def test_fileSystemInterface(self) -> None:
        """
        The real and recording file systems provide IFileSystem.
        """
        self.assertTrue(verifyObject(IFileSystem, RealFileSystem()))
        self.assertTrue(verifyObject(IFileSystem, self.fs))

    def test_createLayout(self) -> None:
        """
        create makes tmp, new and cur, private to the owner.
        """
        self.assertEqual(sorted(os.listdir(self.maildir)), ["cur", "new", "tmp"])
        other = MaildirStore(self.mktemp(), MaildirNamer("h"))
        other.create("x.example")
        mode = os.stat(other.directoryFor("x.example") + "/new").st_mode & 0o777
        self.assertEqual(mode & 0o077, 0)

    def test_createIsDurable(self) -> None:
        """
        create makes the new Maildir's directory entries durable (the
        Maildir, then its parent), as a Maildir made at delivery is, and
        does nothing for one that exists.
        """
        self.store.create("new.example")
        path = self.store.directoryFor("new.example")
        self.assertEqual(
            [c for c in self.fs.calls if c[0] == "syncDirectory"],
            [("syncDirectory", path), ("syncDirectory", self.root)],
        )
        self.fs.calls.clear()
        self.store.create("new.example")
        self.assertEqual(self.fs.calls, [])

    def test_beginTouchesNothing(self) -> None:
        """
        begin names each copy and asks for its header block with that name
        (the trace header carries the id), but makes no file-system call.
        """
        asked = []

        def header(id: str) -> bytes:
            asked.append(id)
            return b"X-Id: " + id.encode() + b"\n"

        self.store.begin([("example.com", header), ("example.com", header)])
        self.assertEqual(len(asked), 2)
        self.assertTrue(all(re.fullmatch(r"0\.M0P1R[0-9a-f]{16}Q[12]\.h", name) for name in asked), asked)
        self.assertNotEqual(*asked)
        self.assertEqual(self.fs.calls, [])

    def test_smallMessageInMemoryUntilCommit(self) -> None:
        """
        A message below the threshold creates nothing in tmp/ while it is
        written; commit creates, fills, syncs and renames the file, readable
        by mailbox.Maildir.
        """
        pending = self.store.begin([("example.com", lambda id: b"X-Id: " + id.encode() + b"\n")])
        pending.write(b"Subject: hi\n\n")
        pending.write(b"body\n")
        self.assertEqual(self.fs.calls, [])
        self.assertEqual(self.listing("tmp"), [])
        [stored] = pending.commit()
        self.assertEqual(self.listing("tmp"), [])
        self.assertEqual(self.listing("new"), [os.path.basename(stored.path)])
        messages = list(mailbox.Maildir(self.maildir, factory=None, create=False))
        self.assertEqual(messages[0]["X-Id"], stored.id)
        self.assertEqual(messages[0].get_payload(), "body\n")

    def test_bodyAtThresholdStaysInMemory(self) -> None:
        """
        A body of exactly the threshold is still kept in memory.
        """
        pending = self.store.begin([("example.com", lambda id: b"H: 1\n")])
        pending.write(b"x" * (MEMORY_THRESHOLD - 1))
        pending.write(b"x")
        self.assertEqual(self.listing("tmp"), [])
        [stored] = pending.commit()
        self.assertEqual(stored.size, 5 + MEMORY_THRESHOLD)
        self.assertEqual(os.path.getsize(stored.path), stored.size)

    def test_largeMessageSpillsToTmp(self) -> None:
        """
        When the body grows past the threshold, the first copy's file is
        created in tmp/ with its header and the body so far, and later data
        streams into it alone; commit makes the other copies from it, each
        with its own header, and moves them all into new/.
        """
        pending = self.store.begin(
            [("example.com", lambda id: b"A: " + id.encode() + b"\n"), ("example.com", lambda id: b"B: 2\n")]
        )
        pending.write(b"x" * MEMORY_THRESHOLD)
        self.assertEqual(self.listing("tmp"), [])
        pending.write(b"y")
        self.assertEqual(self.callNames(), ["create"])
        self.assertEqual(len(self.listing("tmp")), 1)
        for i in range(64):
            pending.write(b"z" * 4096)
        self.assertEqual(self.callNames(), ["create"])
        stored = pending.commit()
        self.assertEqual(self.listing("tmp"), [])
        body = b"x" * MEMORY_THRESHOLD + b"y" + b"z" * 4096 * 64
        expected = [b"A: " + stored[0].id.encode() + b"\n" + body, b"B: 2\n" + body]
        for message, content in zip(stored, expected):
            with open(message.path, "rb") as f:
                self.assertEqual(f.read(), content)
            self.assertEqual(message.size, len(content))
            self.assertTrue(message.path.endswith(f",S={len(content)}"))

    def test_largeMessageStreamsToDisk(self) -> None:
        """
        After the spill the data goes to the file as it arrives: a delivery
        holds no more than its buffers in memory, whatever the size.
        """
        pending = self.store.begin([("example.com", lambda id: b"")])
        for i in range(256):
            pending.write(b"z" * 4096)
        [name] = self.listing("tmp")
        size = os.path.getsize(os.path.join(self.maildir, "tmp", name))
        self.assertGreaterEqual(size, 256 * 4096 - MEMORY_THRESHOLD)
        [stored] = pending.commit()
        self.assertEqual(os.path.getsize(stored.path), 256 * 4096)

    def test_thresholdConfigurable(self) -> None:
        """
        The store's memoryThreshold sets where a message spills.
        """
        store = MaildirStore(self.root, MaildirNamer("h", Clock().seconds, pid=1), self.fs, memoryThreshold=4)
        pending = store.begin([("example.com", lambda id: b"H\n")])
        pending.write(b"1234")
        self.assertEqual(self.listing("tmp"), [])
        pending.write(b"5")
        self.assertEqual(len(self.listing("tmp")), 1)
        [stored] = pending.commit()
        with open(stored.path, "rb") as f:
            self.assertEqual(f.read(), b"H\n12345")

    def test_durabilityOrderSmall(self) -> None:
        """
        For a message in memory, commit gets ready to sync tmp/'s file
        system, creates every copy, syncs them all before any is renamed
        into new/, and fsyncs new/ after the renames: only then may 250 be
        sent.
        """
        pending = self.store.begin([("example.com", lambda id: b""), ("example.com", lambda id: b"")])
        pending.write(b"x\n")
        self.assertEqual(self.fs.calls, [])
        stored = pending.commit()
        self.assertEqual(
            self.callNames(),
            ["groupSync", "create", "create", "syncfs", "closeGroup", "renameNoReplace", "renameNoReplace", "syncDirectory"],
        )
        self.assertEqual(self.fs.calls[0][1], os.path.join(self.maildir, "tmp"))
        self.assertEqual(self.fs.calls[-1][1], os.path.join(self.maildir, "new"))
        self.assertEqual([c[1] for c in self.fs.calls if c[0] == "renameNoReplace"], [s.path for s in stored])
        self.assertEqual(len(stored), 2)

    def test_durabilityOrderLarge(self) -> None:
        """
        For a message spilled to tmp/, commit fsyncs the first copy, makes
        and fsyncs each other copy from it, before any is renamed into
        new/, and fsyncs new/ after the renames.
        """
        pending = self.store.begin([("example.com", lambda id: b""), ("example.com", lambda id: b"")])
        pending.write(b"x" * (MEMORY_THRESHOLD + 1))
        self.assertEqual(self.callNames(), ["create"])
        self.fs.calls.clear()
        stored = pending.commit()
        self.assertEqual(
            self.callNames(),
            ["fsync", "create", "copyInto", "fsync", "renameNoReplace", "renameNoReplace", "syncDirectory"],
        )
        self.assertEqual(self.fs.calls[-1][1], os.path.join(self.maildir, "new"))
        self.assertEqual(len(stored), 2)

    def test_sizeInName(self) -> None:
        """
        The stored name carries the file's size, as Maildir++ readers expect.
        """
        pending = self.store.begin([("example.com", lambda id: b"H: 1\n")])
        pending.write(b"12345")
        [stored] = pending.commit()
        self.assertEqual(stored.size, 10)
        self.assertTrue(stored.path.endswith(",S=10"))
        self.assertEqual(os.path.getsize(stored.path), 10)

    def test_noCopies(self) -> None:
        """
        A delivery with no copies (a discarded message) stores nothing and
        touches nothing, however large.
        """
        pending = self.store.begin([])
        pending.write(b"x" * (MEMORY_THRESHOLD * 2))
        self.assertEqual(pending.commit(), [])
        self.assertEqual(self.fs.calls, [])

    def test_abortBeforeSpill(self) -> None:
        """
        abort of a message still in memory leaves nothing and touches
        nothing; later writes are ignored.
        """
        pending = self.store.begin([("example.com", lambda id: b"a"), ("example.com", lambda id: b"b")])
        pending.write(b"data")
        pending.abort()
        pending.abort()
        pending.write(b"x" * (MEMORY_THRESHOLD + 1))
        self.assertEqual(self.fs.calls, [])
        self.assertNothingLeft()

    def test_abortAfterSpill(self) -> None:
        """
        abort removes every tmp file; nothing reaches new/.
        """
        pending = self.store.begin([("example.com", lambda id: b"a"), ("example.com", lambda id: b"b")])
        pending.write(b"x" * (MEMORY_THRESHOLD + 1))
        self.assertEqual(len(self.listing("tmp")), 1)
        pending.abort()
        pending.abort()
        self.assertNothingLeft()

    def test_commitAfterAbort(self) -> None:
        """
        A delivery given up cannot be committed.
        """
        pending = self.store.begin([("example.com", lambda id: b"a")])
        pending.write(b"data")
        pending.abort()
        self.assertRaises(StorageError, pending.commit)
        self.assertNothingLeft()

    def test_abortAfterCommit(self) -> None:
        """
        abort after a successful commit leaves the message in new/.
        """
        pending = self.store.begin([("example.com", lambda id: b"a")])
        pending.write(b"data")
        [stored] = pending.commit()
        pending.abort()
        self.assertEqual(self.listing("new"), [os.path.basename(stored.path)])

    def test_createFailureAtCommitLeavesNothing(self) -> None:
        """
        If the second copy's file cannot be created at commit, the first is
        removed and a StorageError says so.
        """
        pending = self.store.begin([("example.com", lambda id: b"a"), ("example.com", lambda id: b"b")])
        pending.write(b"data")
        self.failNth("create", 2, errno.EACCES)
        error = self.assertRaises(StorageError, pending.commit)
        self.assertFalse(error.noSpace)
        self.assertIn("creating the message file", str(error))
        self.assertIs(pending.failure, error)
        self.assertNothingLeft()

    def test_notWritableMaildir(self) -> None:
        """
        A Maildir we may not write into: begin succeeds, commit raises a
        StorageError and leaves nothing.
        """
        pending = self.store.begin([("example.com", lambda id: b"")])
        pending.write(b"data")
        self.fs.failOn = "create"
        self.fs.failErrno = errno.EACCES
        error = self.assertRaises(StorageError, pending.commit)
        self.assertFalse(error.noSpace)
        self.assertNothingLeft()

    def test_missingMaildir(self) -> None:
        """
        A Maildir that has disappeared is a StorageError at commit, not a
        crash, and the copy for a Maildir that exists is not stored either.
        """
        pending = self.store.begin([("example.com", lambda id: b""), ("gone.example", lambda id: b"")])
        pending.write(b"data")
        self.assertRaises(StorageError, pending.commit)
        self.assertNothingLeft()
        self.assertFalse(os.path.exists(os.path.join(self.root, "gone.example")))

    def test_missingMaildirAtSpill(self) -> None:
        """
        A Maildir that has disappeared, found when a large message spills,
        spoils the delivery: later writes are ignored, commit raises and
        nothing is left.
        """
        pending = self.store.begin([("gone.example", lambda id: b""), ("example.com", lambda id: b"")])
        pending.write(b"x" * (MEMORY_THRESHOLD + 1))
        self.assertIsNotNone(pending.failure)
        self.assertNothingLeft()
        pending.write(b"more")
        self.assertRaises(StorageError, pending.commit)
        self.assertNothingLeft()

    def test_missingMaildirOfALaterCopy(self) -> None:
        """
        A later copy's Maildir that has disappeared is found when that copy
        is made, at commit: commit raises and nothing is left, not even
        the first copy's file.
        """
        pending = self.store.begin([("example.com", lambda id: b""), ("gone.example", lambda id: b"")])
        pending.write(b"x" * (MEMORY_THRESHOLD + 1))
        self.assertRaises(StorageError, pending.commit)
        self.assertNothingLeft()

    def test_createFailureAtSpill(self) -> None:
        """
        A full disk when the first file is created at the spill, or another
        copy at commit, is remembered, marked noSpace, and leaves nothing.
        """
        for nth in (1, 2):
            self.fs.calls.clear()
            pending = self.store.begin([("example.com", lambda id: b""), ("example.com", lambda id: b"")])
            self.failNth("create", nth, errno.ENOSPC)
            pending.write(b"x" * (MEMORY_THRESHOLD + 1))
            error = self.assertRaises(StorageError, pending.commit)
            self.assertTrue(error.noSpace)
            self.assertNothingLeft()

    def test_copyWithoutKernelHelp(self) -> None:
        """
        Where copy_file_range is missing, refused, or copies nothing, the
        other copies of a spilled message are made by reading and writing,
        byte for byte the same.
        """
        real = getattr(os, "copy_file_range", None)

        def refused(*args: object) -> int:
            raise OSError(errno.EXDEV, "cross-device")

        for variant in ("missing", refused, lambda *args: 0):
            if variant == "missing":
                if real is not None:
                    del os.copy_file_range
            else:
                # Stand-ins for the kernel's, which take fewer or looser arguments.
                os.copy_file_range = variant  # type: ignore[assignment]
            try:
                pending = self.store.begin([("example.com", lambda id: b"A: 1\n"), ("example.com", lambda id: b"B\n")])
                body = bytes(range(256)) * (MEMORY_THRESHOLD // 256 + 3)
                pending.write(body)
                stored = pending.commit()
            finally:
                if real is not None:
                    os.copy_file_range = real
                elif hasattr(os, "copy_file_range"):
                    del os.copy_file_range
            for message, header in zip(stored, [b"A: 1\n", b"B\n"]):
                with open(message.path, "rb") as f:
                    self.assertEqual(f.read(), header + body, variant)

    def test_copyFailureAtCommit(self) -> None:
        """
        A full disk while a spilled message's body is copied into another
        recipient's file fails the delivery with noSpace; nothing is left.
        """
        pending = self.store.begin([("example.com", lambda id: b"a"), ("example.com", lambda id: b"b")])
        pending.write(b"x" * (MEMORY_THRESHOLD + 1))
        self.fs.failOn = "copyInto"
        error = self.assertRaises(StorageError, pending.commit)
        self.assertTrue(error.noSpace)
        self.assertNothingLeft()

    def test_writeFailureAtSpill(self) -> None:
        """
        A write that fails like a full disk as the message spills is not
        raised at once; commit raises a StorageError marked noSpace and
        nothing is left.
        """
        pending = self.store.begin([("example.com", lambda id: b"")])
        pending.write(b"x" * 100)
        self.fs.failOn = "write"
        pending.write(b"x" * MEMORY_THRESHOLD)
        self.assertIsNotNone(pending.failure)
        self.assertNothingLeft()
        error = self.assertRaises(StorageError, pending.commit)
        self.assertTrue(error.noSpace)
        self.assertNothingLeft()

    def test_writeFailureAfterSpill(self) -> None:
        """
        A write that fails like a full disk while a spilled message streams
        is remembered; commit raises a StorageError marked noSpace and
        nothing is left.
        """
        pending = self.store.begin([("example.com", lambda id: b"")])
        pending.write(b"x" * (MEMORY_THRESHOLD + 1))
        self.fs.failOn = "write"
        pending.write(b"more")
        self.assertIsNotNone(pending.failure)
        self.fs.failOn = None
        pending.write(b"ignored")
        error = self.assertRaises(StorageError, pending.commit)
        self.assertTrue(error.noSpace)
        self.assertNothingLeft()

    def test_writeFailureAtCommit(self) -> None:
        """
        A message in memory whose file cannot be written at commit (a full
        disk) is a StorageError marked noSpace, and nothing is left.
        """
        pending = self.store.begin([("example.com", lambda id: b"")])
        pending.write(b"more")
        self.fs.failOn = "write"
        error = self.assertRaises(StorageError, pending.commit)
        self.assertTrue(error.noSpace)
        self.assertNothingLeft()

    def test_fsyncFailure(self) -> None:
        """
        A failing sync fails the delivery and removes its files, whether
        the message was in memory (synced together) or spilled (each
        fsynced).
        """
        for size, call in ((10, "syncfs"), (MEMORY_THRESHOLD + 1, "fsync")):
            pending = self.store.begin([("example.com", lambda id: b""), ("example.com", lambda id: b"")])
            pending.write(b"x" * size)
            self.fs.failOn = call
            self.fs.failErrno = errno.EIO
            error = self.assertRaises(StorageError, pending.commit)
            self.assertIn("syncing the message to disk", str(error))
            self.assertFalse(error.noSpace)
            self.assertNothingLeft()

    def test_renameFailureRollsBack(self) -> None:
        """
        If the second rename fails, the first copy is taken out of new/
        again: all copies or none.
        """
        for size in (10, MEMORY_THRESHOLD + 1):
            pending = self.store.begin([("example.com", lambda id: b""), ("example.com", lambda id: b"")])
            pending.write(b"x" * size)
            self.failNth("renameNoReplace", 2)
            self.assertRaises(StorageError, pending.commit)
            self.assertNothingLeft()
            del self.fs.renameNoReplace

    def test_directorySyncFailure(self) -> None:
        """
        If new/ cannot be synced, the delivery fails and its copies go.
        """
        pending = self.store.begin([("example.com", lambda id: b"")])
        pending.write(b"x")
        self.fs.failOn = "syncDirectory"
        self.assertRaises(StorageError, pending.commit)
        self.assertNothingLeft()

    def test_folders(self) -> None:
        """
        commit(folders=...) creates a Maildir++ folder (tmp, new, cur and
        the maildirfolder marker) on first use, syncing its entries, and
        renames the copy into its new/, then syncs each new/ directory; a
        message in memory and a spilled one alike.
        """
        folder = os.path.join(self.maildir, ".Lists.python")
        for size in (10, MEMORY_THRESHOLD + 1):
            pending = self.store.begin([("example.com", lambda id: b"a"), ("example.com", lambda id: b"b")])
            pending.write(b"x" * size)
            self.fs.calls.clear()
            inbox, listed = pending.commit(folders=[None, "Lists.python"])
            self.assertEqual(sorted(os.listdir(folder)), ["cur", "maildirfolder", "new", "tmp"])
            self.assertEqual(os.path.dirname(listed.path), os.path.join(folder, "new"))
            self.assertEqual(os.path.dirname(inbox.path), os.path.join(self.maildir, "new"))
            with open(listed.path, "rb") as f:
                self.assertEqual(f.read(), b"b" + b"x" * size)
            names = self.callNames()
            lastFsync = max(i for i, name in enumerate(names) if name in ("fsync", "syncfs"))
            lastRename = max(i for i, name in enumerate(names) if name == "renameNoReplace")
            self.assertLess(lastFsync, names.index("renameNoReplace"))
            newSyncs = [
                i for i, c in enumerate(self.fs.calls) if c[0] == "syncDirectory" and c[1].endswith("new")
            ]
            self.assertLess(lastRename, newSyncs[0])
            self.assertEqual(
                [self.fs.calls[i] for i in newSyncs],
                [
                    ("syncDirectory", os.path.join(self.maildir, "new")),
                    ("syncDirectory", os.path.join(folder, "new")),
                ],
            )
            made = [c for c in self.fs.calls if c[0] == "syncDirectory" and not c[1].endswith("new")]
            # The folder's own entries and its entry in the Maildir are made
            # durable once, when it is created.
            self.assertEqual(made, [("syncDirectory", folder), ("syncDirectory", self.maildir)] if size == 10 else [])
            self.assertEqual(self.listing("tmp"), [])
            self.assertEqual(self.listing("tmp", folder), [])
        self.assertEqual(len(self.listing("new", folder)), 2)
        self.assertEqual(len(self.listing("new")), 2)


class CompanionTests(StoreFixture, SynchronousTestCase):
    """
    Tests for a delivery's L{Companion} (its hooks' jobs): written after
    the copies are durable and before any is renamed into C{new/}, and
    removed if the delivery fails after that.
    """

    def companion(self, fail: Exception | None = None) -> Companion:
        """
        A companion whose writing and removal are recorded among the file
        system's calls, as C{companion} and C{uncompanion}.
        """

        def write() -> None:
            self.fs.calls.append(("companion", ""))
            if fail is not None:
                raise fail

        return Companion(write, lambda: self.fs.calls.append(("uncompanion", "")), "recording the jobs")

    def test_writtenAfterSyncBeforeRename(self) -> None:
        """
        The companion is written once the copies are durable in tmp/ and
        before the first rename into new/, for a message in memory and a
        spilled one; it is not removed when the delivery succeeds.
        """
        for size, before in ((10, ["groupSync", "create", "create", "syncfs", "closeGroup"]),
                             (MEMORY_THRESHOLD + 1, ["fsync", "create", "copyInto", "fsync"])):
            pending = self.store.begin([("example.com", lambda id: b""), ("example.com", lambda id: b"")])
            pending.write(b"x" * size)
            pending.accompany(self.companion())
            self.fs.calls.clear()
            pending.commit()
            self.assertEqual(self.callNames(), before + ["companion", "renameNoReplace", "renameNoReplace", "syncDirectory"])

    def test_failureStopsTheRename(self) -> None:
        """
        A companion that cannot be written fails the delivery with a
        L{StorageError} (a full disk kept as such, a bug named) before any
        copy is renamed: nothing is stored.
        """
        for error, check in (
            (OSError(errno.ENOSPC, "No space left on device"), lambda e: e.noSpace),
            (StorageError("recording: full", noSpace=True), lambda e: e.noSpace),
            (RuntimeError("bug"), lambda e: "recording the jobs: bug" in str(e)),
        ):
            pending = self.store.begin([("example.com", lambda id: b"")])
            pending.write(b"x")
            pending.accompany(self.companion(error))
            self.fs.calls.clear()
            raised = self.assertRaises(StorageError, pending.commit)
            self.assertTrue(check(raised), raised)
            self.assertNotIn("renameNoReplace", self.callNames())
            self.assertNotIn("uncompanion", self.callNames())
            self.assertNothingLeft()

    def test_removedWhenRenameFails(self) -> None:
        """
        If a rename into new/ fails, or new/ cannot be fsynced, the copies
        are taken out of new/ and then the companion is removed.
        """
        for failing in ("renameNoReplace", "syncDirectory"):
            pending = self.store.begin([("example.com", lambda id: b""), ("example.com", lambda id: b"")])
            pending.write(b"x")
            pending.accompany(self.companion())
            self.fs.calls.clear()
            if failing == "renameNoReplace":
                self.failNth("renameNoReplace", 2)
            else:
                self.fs.failOn = "syncDirectory"
            self.assertRaises(StorageError, pending.commit)
            names = self.callNames()
            lastDirectorySync = max(i for i, name in enumerate(names) if name == "syncDirectory")
            # After the copies are out of new/ and that is durable.
            self.assertEqual(names.count("uncompanion"), 1)
            self.assertLess(lastDirectorySync, names.index("uncompanion"), names)
            self.assertLess(names.index("companion"), names.index("renameNoReplace"))
            self.assertNothingLeft()
            self.fs.failOn = None
            if "renameNoReplace" in self.fs.__dict__:
                del self.fs.renameNoReplace

    def test_plannedIsPublished(self) -> None:
        """
        The copies as planned before the commit, in the inbox and in a
        folder, are the copies it stores: same ids, paths and sizes.
        """
        pending = self.store.begin([("example.com", lambda id: b"a"), ("example.com", lambda id: b"bb")])
        pending.write(b"body\n")
        folders = [None, "Lists.python"]
        planned = pending.planned(folders)
        self.assertEqual(pending.commit(folders), planned)


class CreateOnFirstUseTests(StoreFixture, SynchronousTestCase):
    """
    A delivery told to create its Maildirs (a user's submission mailbox).
    """

    def test_madeDurablyBeforeTheFirstFile(self) -> None:
        """
        The missing Maildir and its missing parent are made, and their
        entries synced up to the first directory that existed, before the
        message's file is created; nothing touches the disk at begin.
        """
        pending = self.store.begin([(".submitted/alice", lambda id: b"H\n")], create=True)
        pending.write(b"x")
        self.assertEqual(self.fs.calls, [])
        [stored] = pending.commit()
        maildir = os.path.join(self.root, ".submitted", "alice")
        names = self.callNames()
        self.assertEqual(names[:3], ["makeDirectories"] * 3)
        self.assertEqual(
            [path for name, path in self.fs.calls[3:6]],
            [maildir, os.path.dirname(maildir), self.root],
        )
        self.assertEqual(names[6], "create")
        self.assertEqual(os.path.dirname(stored.path), os.path.join(maildir, "new"))

    def test_existingMaildirUntouched(self) -> None:
        """
        A Maildir that exists costs one look, no directory call.
        """
        pending = self.store.begin([("example.com", lambda id: b"H\n")], create=True)
        pending.write(b"x")
        pending.commit()
        self.assertNotIn("makeDirectories", self.callNames())

    def test_largeMessageMakesItAtSpill(self) -> None:
        """
        A message that spills to tmp/ makes its Maildir first.
        """
        pending = self.store.begin([(".submitted/bob", lambda id: b"")], create=True)
        pending.write(b"x" * (MEMORY_THRESHOLD + 1))
        self.assertIsNone(pending.failure)
        self.assertEqual(len(pending.commit()), 1)


class FolderRaceTests(StoreFixture, SynchronousTestCase):
    """
    Two threads may create the same Maildir++ folder at once.
    """

    def test_markerMadeByAnother(self) -> None:
        """
        If the maildirfolder marker appears between the check and the
        create (another thread made it), the delivery still succeeds.
        """
        real = self.fs.create

        def raced(path: str) -> object:
            if path.endswith("maildirfolder"):
                real(path).close()
                raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), path)
            return real(path)

        self.patch(self.fs, "create", raced)
        pending = self.store.begin([("example.com", lambda id: b"")])
        pending.write(b"x")
        [stored] = pending.commit(folders=["Lists.python"])
        self.assertTrue(os.path.exists(stored.path))


class GroupCommitTests(StoreFixture, SynchronousTestCase):
    """
    Tests for L{MaildirStore.commitMany}: several deliveries made durable
    together, each whole or not at all.
    """

    def deliveries(self, *mailboxes: str, size: int = 10) -> list[PendingDelivery]:
        started = []
        for name in mailboxes:
            pending = self.store.begin([(name, lambda id: b"H\n")])
            pending.write(b"x" * size)
            started.append(pending)
        return started

    def test_oneWaitForAll(self) -> None:
        """
        Three small messages are written, synced in one syncfs, renamed,
        and new/ is fsynced once: all before any result is returned.
        """
        deliveries = self.deliveries("example.com", "example.com", "example.com")
        results = self.store.commitMany([(d, None) for d in deliveries])
        self.assertEqual(
            self.callNames(),
            ["groupSync"] + ["create"] * 3 + ["syncfs", "closeGroup"] + ["renameNoReplace"] * 3 + ["syncDirectory"],
        )
        self.assertEqual(storedCounts(results), [1, 1, 1])
        self.assertEqual(len(self.listing("new")), 3)
        self.assertEqual(self.listing("tmp"), [])

    def test_spilledFsyncedOnItsOwn(self) -> None:
        """
        A spilled message's file is fsynced on its own; the small messages
        beside it are synced together; all before the first rename.
        """
        [large] = self.deliveries("example.com", size=MEMORY_THRESHOLD + 1)
        small = self.deliveries("example.com", "example.com")
        self.fs.calls.clear()
        results = self.store.commitMany([(large, None)] + [(d, None) for d in small])
        self.assertEqual(
            self.callNames(),
            ["groupSync", "fsync", "create", "create", "syncfs", "closeGroup"] + ["renameNoReplace"] * 3 + ["syncDirectory"],
        )
        self.assertEqual(storedCounts(results), [1, 1, 1])

    def test_oneFailureSparesTheOthers(self) -> None:
        """
        A delivery to a missing Maildir fails alone: the others are stored.
        """
        deliveries = self.deliveries("example.com", "gone.example", "example.com")
        results = self.store.commitMany([(d, None) for d in deliveries])
        self.assertIsInstance(results[1], StorageError)
        self.assertEqual(storedCounts([results[0], results[2]]), [1, 1])
        self.assertEqual(len(self.listing("new")), 2)
        self.assertEqual(self.listing("tmp"), [])

    def test_directorySyncFailureFailsThatDirectory(self) -> None:
        """
        A new/ that cannot be fsynced fails the deliveries that renamed
        into it, and their copies go; a delivery elsewhere is stored.
        """
        self.store.create("other.example")
        other = os.path.join(self.root, "other.example")
        deliveries = self.deliveries("example.com", "other.example", "example.com")
        self.fs.calls.clear()
        real = self.fs.syncDirectory

        def failing(path: str) -> None:
            if path.startswith(other):
                raise OSError(errno.EIO, os.strerror(errno.EIO))
            real(path)

        self.patch(self.fs, "syncDirectory", failing)
        results = self.store.commitMany([(d, None) for d in deliveries])
        self.assertIsInstance(results[1], StorageError)
        self.assertEqual(storedCounts([results[0], results[2]]), [1, 1])
        self.assertEqual(os.listdir(os.path.join(other, "new")), [])
        self.assertEqual(len(self.listing("new")), 2)

    def test_noGroupMeansEachFileFsynced(self) -> None:
        """
        Where the file system offers no group sync, every file is created,
        fsynced and closed in turn, all before the first rename.
        """
        self.fs.grouped = False
        deliveries = self.deliveries("example.com", "example.com")
        self.store.commitMany([(d, None) for d in deliveries])
        self.assertEqual(
            self.callNames(),
            ["create", "fsync", "create", "fsync", "renameNoReplace", "renameNoReplace", "syncDirectory"],
        )

    def test_fewOpenFiles(self) -> None:
        """
        A message for many recipients holds one file open at a time, not
        one per copy: the group's sync needs none of them.
        """
        opened: list[int] = []
        real = self.fs.create

        def counting(path: str) -> object:
            f = real(path)
            opened.append(sum(1 for name in os.listdir("/proc/self/fd")))
            return f

        self.patch(self.fs, "create", counting)
        pending = self.store.begin([("example.com", lambda id: b"")] * 50)
        pending.write(b"x")
        self.assertEqual(len(pending.commit()), 50)
        self.assertLessEqual(max(opened) - min(opened), 1)

    def test_unexpectedErrorLeavesNothing(self) -> None:
        """
        Should committing break on something other than the disk, no copy
        is left in new/ or tmp/ (a sender's retry would duplicate it).
        """
        deliveries = self.deliveries("example.com", "example.com")
        real = self.fs.syncDirectory

        def broken(path: str) -> None:
            real(path)
            raise RuntimeError("bug")

        self.patch(self.fs, "syncDirectory", broken)
        self.assertRaises(RuntimeError, self.store.commitMany, [(d, None) for d in deliveries])
        self.assertNothingLeft()

    def test_retractionIsSynced(self) -> None:
        """
        When one of a delivery's new/ directories cannot be synced, its
        copies in the others are removed and those directories synced
        again, so a crash cannot bring the copies back.
        """
        self.store.create("other.example")
        other = os.path.join(self.root, "other.example", "new")
        pending = self.store.begin([("example.com", lambda id: b""), ("other.example", lambda id: b"")])
        pending.write(b"x")
        real = self.fs.syncDirectory

        def failing(path: str) -> None:
            real(path)
            if path == other:
                raise OSError(errno.EIO, os.strerror(errno.EIO))

        self.patch(self.fs, "syncDirectory", failing)
        self.fs.calls.clear()
        self.assertRaises(StorageError, pending.commit)
        new = os.path.join(self.maildir, "new")
        unlinked = [i for i, (name, path) in enumerate(self.fs.calls) if name == "unlink" and path.startswith(new)]
        self.assertEqual(len(unlinked), 1)
        self.assertIn(("syncDirectory", new), self.fs.calls[unlinked[0]:])
        self.assertEqual(self.listing("new"), [])

    def test_readableAsMaildir(self) -> None:
        """
        Messages committed together are read back whole by Python's
        mailbox module.
        """
        deliveries = []
        for n in range(5):
            pending = self.store.begin([("example.com", lambda id: b"Subject: %d\n" % n)])  # noqa: B023 (called at once)
            pending.write(b"\nbody %d\n" % n)
            deliveries.append(pending)
        self.store.commitMany([(d, None) for d in deliveries])
        box = mailbox.Maildir(self.maildir, create=False)
        self.assertEqual(
            sorted(m["Subject"] for m in box), [str(n) for n in range(5)]
        )
