"""
Tests for L{harbor.maildir}.
"""

import errno
import mailbox
import os

from zope.interface.verify import verifyObject

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from harbor.maildir import (
    IFileSystem,
    MaildirName,
    MaildirNamer,
    MaildirStore,
    RealFileSystem,
    StorageError,
    parseName,
)
from harbor.test._support import RecordingFileSystem


class NamerTests(SynchronousTestCase):
    """
    Tests for L{MaildirNamer}.
    """

    def test_scheme(self) -> None:
        """
        Names follow seconds.M<usec>P<pid>Q<count>.<host>.
        """
        clock = Clock()
        clock.advance(1700000000.25)
        namer = MaildirNamer("mx.example.com", clock.seconds, pid=77)
        self.assertEqual(namer.nextName(), "1700000000.M250000P77Q1.mx.example.com")

    def test_uniqueWithinAMicrosecond(self) -> None:
        """
        Two names taken at the same instant differ.
        """
        namer = MaildirNamer("h", Clock().seconds, pid=1)
        self.assertNotEqual(namer.nextName(), namer.nextName())

    def test_reservedCharactersEscaped(self) -> None:
        """
        C{/}, C{:} and C{,} in the host name are escaped, so the name stays one
        path component and its fields stay parseable.
        """
        name = MaildirNamer("a/b:c,d", Clock().seconds, pid=1).nextName()
        self.assertEqual(name.split(".", 2)[2], "a\\057b\\072c\\054d")
        self.assertNotIn("/", name)

    def test_parseName(self) -> None:
        """
        parseName splits id, size and flags; dot files are not messages.
        """
        self.assertEqual(
            parseName("1.M2P3Q4.host,S=120:2,RS"), MaildirName("1.M2P3Q4.host", 120, "RS")
        )
        self.assertEqual(parseName("1.M2P3Q4.host"), MaildirName("1.M2P3Q4.host", None, ""))
        self.assertIsNone(parseName(".hidden"))


class StoreTests(SynchronousTestCase):
    """
    Tests for L{MaildirStore} and L{PendingDelivery}.
    """

    def setUp(self) -> None:
        self.root = self.mktemp()
        self.fs = RecordingFileSystem()
        self.store = MaildirStore(self.root, MaildirNamer("h", Clock().seconds, pid=1), self.fs)
        self.store.create("example.com")
        self.fs.calls.clear()
        self.maildir = os.path.join(self.root, "example.com")

    def listing(self, sub: str) -> list[str]:
        return sorted(os.listdir(os.path.join(self.maildir, sub)))

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

    def test_streamsIntoTmpThenNew(self) -> None:
        """
        Data goes into tmp/ as it is written and appears in new/ only after
        commit, readable by mailbox.Maildir.
        """
        pending = self.store.begin([("example.com", lambda id: b"X-Id: " + id.encode() + b"\n")])
        pending.write(b"Subject: hi\n\nbody\n")
        self.assertEqual(len(self.listing("tmp")), 1)
        self.assertEqual(self.listing("new"), [])
        [stored] = pending.commit()
        self.assertEqual(self.listing("tmp"), [])
        self.assertEqual(self.listing("new"), [os.path.basename(stored.path)])
        messages = list(mailbox.Maildir(self.maildir, factory=None, create=False))
        self.assertEqual(messages[0]["X-Id"], stored.id)
        self.assertEqual(messages[0].get_payload(), "body\n")

    def test_durabilityOrder(self) -> None:
        """
        Every copy is fsynced before any is renamed into new/, and new/ is
        fsynced after the renames: only then may 250 be sent.
        """
        pending = self.store.begin([("example.com", lambda id: b""), ("example.com", lambda id: b"")])
        pending.write(b"x\n")
        self.fs.calls.clear()
        stored = pending.commit()
        self.assertEqual(
            [name for name, _ in self.fs.calls],
            ["fsync", "fsync", "rename", "rename", "syncDirectory"],
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

    def test_abortLeavesNothing(self) -> None:
        """
        abort removes every tmp file; nothing reaches new/.
        """
        pending = self.store.begin([("example.com", lambda id: b"a"), ("example.com", lambda id: b"b")])
        pending.write(b"data")
        pending.abort()
        pending.abort()
        self.assertEqual((self.listing("tmp"), self.listing("new")), ([], []))

    def test_beginFailureLeavesNothing(self) -> None:
        """
        If a file cannot be created, the ones already created are removed
        and a StorageError says so.
        """
        self.fs.failOn = "create"
        self.fs.failErrno = errno.EACCES
        error = self.assertRaises(StorageError, self.store.begin, [("example.com", lambda id: b"")])
        self.assertFalse(error.noSpace)
        self.assertEqual(self.listing("tmp"), [])

    def test_missingMaildir(self) -> None:
        """
        A Maildir that has disappeared is a StorageError, not a crash.
        """
        self.assertRaises(StorageError, self.store.begin, [("gone.example", lambda id: b"")])

    def test_writeFailureRemembered(self) -> None:
        """
        A write that fails like a full disk is not raised at once; commit
        raises a StorageError marked noSpace and nothing is left.
        """
        pending = self.store.begin([("example.com", lambda id: b"")])
        self.fs.failOn = "write"
        pending.write(b"more")
        self.assertIsNotNone(pending.failure)
        error = self.assertRaises(StorageError, pending.commit)
        self.assertTrue(error.noSpace)
        self.assertEqual((self.listing("tmp"), self.listing("new")), ([], []))

    def test_fsyncFailure(self) -> None:
        """
        A failing fsync fails the delivery and removes its files.
        """
        pending = self.store.begin([("example.com", lambda id: b"")])
        self.fs.failOn = "fsync"
        self.fs.failErrno = errno.EIO
        error = self.assertRaises(StorageError, pending.commit)
        self.assertFalse(error.noSpace)
        self.assertEqual((self.listing("tmp"), self.listing("new")), ([], []))

    def test_renameFailureRollsBack(self) -> None:
        """
        If the second rename fails, the first copy is taken out of new/
        again: all copies or none.
        """
        pending = self.store.begin([("example.com", lambda id: b""), ("example.com", lambda id: b"")])
        original = self.fs.rename
        calls = []

        def failSecond(source: str, destination: str) -> None:
            calls.append(destination)
            if len(calls) == 2:
                raise OSError(errno.EIO, "I/O error")
            original(source, destination)

        self.fs.rename = failSecond  # type: ignore[method-assign]
        self.assertRaises(StorageError, pending.commit)
        self.assertEqual((self.listing("tmp"), self.listing("new")), ([], []))

    def test_directorySyncFailure(self) -> None:
        """
        If new/ cannot be synced, the delivery fails and its copies go.
        """
        pending = self.store.begin([("example.com", lambda id: b"")])
        self.fs.failOn = "syncDirectory"
        self.assertRaises(StorageError, pending.commit)
        self.assertEqual(self.listing("new"), [])
