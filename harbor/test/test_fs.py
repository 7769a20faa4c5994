"""
Tests for L{harbor.store.fs}: C{syncfs(2)} and the real file system under
the writer.
"""

import errno
import os
import sys

from twisted.internet.task import Clock
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from harbor.store.fs import (
    TRUSTED_FILE_SYSTEMS,
    RealFileSystem,
    StorageError,
    _kernelReportsSyncfsErrors,
    fileSystemType,
    linkThenUnlink,
    loadRenameat2,
    loadSyncfs,
)
from harbor.store.names import MaildirNamer
from harbor.store.writer import MEMORY_THRESHOLD, MaildirStore


class SyncfsTests(SynchronousTestCase):
    """
    Tests for L{loadSyncfs} and L{RealFileSystem.groupSync}.
    """

    def test_kernelVersions(self) -> None:
        """
        syncfs is trusted on Linux 5.17 and later only, where it reports
        write errors and the file system's own failures.
        """
        cases = [
            ("Linux", "5.17.0", True),
            ("Linux", "6.18.44-fc-v657", True),
            ("Linux", "6.1", True),
            ("Linux", "10.0", True),
            ("Linux", "5.16.20", False),
            ("Linux", "5.10.0-28-amd64", False),
            ("Linux", "5.8.0", False),
            ("Linux", "4.19.0-26-amd64", False),
            ("Linux", "weird", False),
            ("Darwin", "23.1.0", False),
        ]
        for system, release, expected in cases:
            self.assertEqual(_kernelReportsSyncfsErrors(system, release), expected, (system, release))

    def test_realSyncfs(self) -> None:
        """
        On a system that has it, the loaded syncfs syncs a real file's file
        system and raises OSError for a bad descriptor.
        """
        syncfs = loadSyncfs()
        if syncfs is None:
            raise SkipTest("no trustworthy syncfs here")
        path = self.mktemp()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            os.write(fd, b"x")
            syncfs(fd)
        finally:
            os.close(fd)
        error = self.assertRaises(OSError, syncfs, fd)
        self.assertEqual(error.errno, errno.EBADF)

    def test_groupHandlePerFileSystem(self) -> None:
        """
        groupSync opens one handle per file system before any file is
        written, covers the directories on it, and its sync gives that
        handle to syncfs once; a failure is every covered directory's.
        """
        calls: list[int] = []
        fs = RealFileSystem(calls.append, trusted=lambda fd: True)
        one, two = self.mktemp(), self.mktemp()
        os.makedirs(one)
        os.makedirs(two)
        missing = os.path.join(one, "missing")
        group = fs.groupSync([one, two, one, missing])
        assert group is not None
        try:
            self.assertEqual([group.covers(d) for d in (one, two, missing)], [True, True, False])
            self.assertEqual(group.sync(), {})
            self.assertEqual(len(calls), 1)
            self.assertEqual(os.path.realpath(f"/proc/self/fd/{calls[0]}"), os.path.realpath(one))
        finally:
            group.close()

        def failing(fd: int) -> None:
            raise OSError(errno.EIO, "I/O error")

        group = RealFileSystem(failing, trusted=lambda fd: True).groupSync([one, two])
        assert group is not None
        try:
            self.assertEqual({d: e.errno for d, e in group.sync().items()}, {one: errno.EIO, two: errno.EIO})
        finally:
            group.close()

    def test_untrustedFileSystemHasNoGroup(self) -> None:
        """
        On a file system whose syncfs is not trusted (FUSE, CIFS, an
        overlay...), or without syncfs, there is no group: each file will
        be fsynced.
        """
        directory = self.mktemp()
        os.makedirs(directory)
        self.assertIsNone(RealFileSystem(lambda fd: None, trusted=lambda fd: False).groupSync([directory]))
        self.assertIsNone(RealFileSystem(None).groupSync([directory]))

    def test_fileSystemType(self) -> None:
        """
        The file system's type is read from fstatfs: tmpfs, where /dev/shm
        usually is, is not one whose syncfs is trusted; ext4's magic is.
        """
        try:
            with open("/proc/mounts") as f:
                mounts = {fields[1]: fields[2] for fields in (line.split() for line in f) if len(fields) > 2}
        except OSError:
            mounts = {}
        if mounts.get("/dev/shm") != "tmpfs":
            raise SkipTest("no tmpfs on /dev/shm here")
        fd = os.open("/dev/shm", os.O_RDONLY | os.O_DIRECTORY)
        try:
            self.assertEqual(fileSystemType(fd), 0x01021994)
        finally:
            os.close(fd)
        self.assertIn(0xEF53, TRUSTED_FILE_SYSTEMS)
        self.assertNotIn(0x01021994, TRUSTED_FILE_SYSTEMS)


class RealFileSystemTests(SynchronousTestCase):
    """
    A message that ends in memory, on the real file system, is written
    with plain system calls: the same promise, checked on those calls.
    """

    def setUp(self) -> None:
        self.root = self.mktemp()
        self.calls: list[tuple[str, str]] = []
        self.paths: dict[int, str] = {}
        realSyncfs = loadSyncfs() or os.fsync

        def recordSyncfs(fd: int) -> None:
            self.calls.append(("syncfs", self.paths.get(fd, "?")))
            realSyncfs(fd)

        self.syncfs = recordSyncfs
        realRename = loadRenameat2() or linkThenUnlink

        def recordRename(source: str, destination: str) -> None:
            self.calls.append(("rename", destination))
            realRename(source, destination)

        self.recordRename = recordRename
        self.store = MaildirStore(
            self.root,
            MaildirNamer("h", Clock().seconds, pid=1),
            RealFileSystem(recordSyncfs, trusted=lambda fd: True, renameat2=recordRename),
        )
        self.store.create("example.com")
        self.maildir = os.path.join(self.root, "example.com")
        realOpen, realFsync = os.open, os.fsync

        def recordOpen(path: str, flags: int, mode: int = 0o777) -> int:
            fd = realOpen(path, flags, mode)
            self.paths[fd] = path
            self.calls.append(("open", path))
            return fd

        def recordFsync(fd: int) -> None:
            self.calls.append(("fsync", self.paths.get(fd, "?")))
            realFsync(fd)

        self.patch(os, "open", recordOpen)
        self.patch(os, "fsync", recordFsync)

    def listing(self, sub: str) -> list[str]:
        return sorted(os.listdir(os.path.join(self.maildir, sub)))

    def assertNothingLeft(self) -> None:
        self.assertEqual((self.listing("tmp"), self.listing("new")), ([], []))

    def test_durabilityOrder(self) -> None:
        """
        A handle on tmp/ is opened, each copy is created and closed, then
        the file system is synced once (given that handle) before any copy
        is renamed into new/; new/ is fsynced after the renames; the files
        hold header and body.
        """
        pending = self.store.begin([("example.com", lambda id: b"A\n"), ("example.com", lambda id: b"B\n")])
        pending.write(b"body\n")
        self.assertEqual(self.calls, [])
        first, second = pending.commit()
        tmp = os.path.join(self.maildir, "tmp")
        new = os.path.join(self.maildir, "new")
        self.assertEqual(
            self.calls,
            [
                ("open", tmp),
                ("open", os.path.join(tmp, first.id)),
                ("open", os.path.join(tmp, second.id)),
                ("syncfs", tmp),
                ("rename", first.path),
                ("rename", second.path),
                ("open", new),
                ("fsync", new),
            ],
        )
        for stored, header in ((first, b"A\n"), (second, b"B\n")):
            with open(stored.path, "rb") as f:
                self.assertEqual(f.read(), header + b"body\n")
            self.assertEqual(stored.size, 7)
        self.assertEqual(self.listing("tmp"), [])

    def test_spilledMessage(self) -> None:
        """
        A spilled message on the real file system streams into tmp/ and
        is fsynced before it is renamed.
        """
        pending = self.store.begin([("example.com", lambda id: b"A\n")])
        pending.write(b"x" * (MEMORY_THRESHOLD + 1))
        self.assertEqual([name for name, _ in self.calls], ["open"])
        pending.write(b"y" * 10)
        [stored] = pending.commit()
        self.assertEqual([name for name, _ in self.calls], ["open", "fsync", "rename", "open", "fsync"])
        with open(stored.path, "rb") as f:
            self.assertEqual(f.read(), b"A\n" + b"x" * (MEMORY_THRESHOLD + 1) + b"y" * 10)

    def test_partialWrites(self) -> None:
        """
        A write that takes several system calls is completed.
        """
        realWrite = os.write
        self.patch(os, "write", lambda fd, data: realWrite(fd, bytes(data[:3])))
        pending = self.store.begin([("example.com", lambda id: b"Header: 1\n")])
        pending.write(b"a body of some length\n")
        [stored] = pending.commit()
        with open(stored.path, "rb") as f:
            self.assertEqual(f.read(), b"Header: 1\na body of some length\n")

    def test_missingMaildir(self) -> None:
        """
        A Maildir that has disappeared fails the commit with a StorageError
        that says what failed, and leaves nothing in the Maildirs that
        exist.
        """
        pending = self.store.begin([("example.com", lambda id: b""), ("gone.example", lambda id: b"")])
        pending.write(b"data")
        error = self.assertRaises(StorageError, pending.commit)
        self.assertIn("creating the message file", str(error))
        self.assertFalse(error.noSpace)
        self.assertNothingLeft()

    def test_diskFull(self) -> None:
        """
        A write that fails like a full disk is a StorageError marked
        noSpace, and the file is removed.
        """

        def full(fd: int, data: bytes) -> int:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        self.patch(os, "write", full)
        pending = self.store.begin([("example.com", lambda id: b"")])
        pending.write(b"data")
        error = self.assertRaises(StorageError, pending.commit)
        self.assertTrue(error.noSpace)
        self.assertIn("writing the message", str(error))
        self.assertNothingLeft()

    def test_oneFileIsFsynced(self) -> None:
        """
        A single file is fsynced, not its whole file system.
        """
        pending = self.store.begin([("example.com", lambda id: b"A\n")])
        pending.write(b"body\n")
        [stored] = pending.commit()
        self.assertEqual(
            [name for name, _ in self.calls], ["open", "fsync", "rename", "open", "fsync"]
        )
        self.assertEqual(self.calls[1][1], os.path.join(self.maildir, "tmp", stored.id))

    def test_withoutSyncfs(self) -> None:
        """
        Without syncfs every file is created and fsynced on its own, all
        before the first rename.
        """
        store = MaildirStore(self.root, MaildirNamer("h", Clock().seconds, pid=2), RealFileSystem(None, renameat2=self.recordRename))
        pending = store.begin([("example.com", lambda id: b"A\n"), ("example.com", lambda id: b"B\n")])
        pending.write(b"body\n")
        first, second = pending.commit()
        tmp = os.path.join(self.maildir, "tmp")
        self.assertEqual(
            self.calls[:5],
            [
                ("open", os.path.join(tmp, first.id)),
                ("fsync", os.path.join(tmp, first.id)),
                ("open", os.path.join(tmp, second.id)),
                ("fsync", os.path.join(tmp, second.id)),
                ("rename", first.path),
            ],
        )

    def test_syncfsFailure(self) -> None:
        """
        A failing syncfs fails every delivery whose files it was to sync,
        and removes their files.
        """

        def failing(fd: int) -> None:
            raise OSError(errno.EIO, os.strerror(errno.EIO))

        store = MaildirStore(self.root, MaildirNamer("h", Clock().seconds, pid=2), RealFileSystem(failing, trusted=lambda fd: True, renameat2=self.recordRename))
        one = store.begin([("example.com", lambda id: b"")])
        two = store.begin([("example.com", lambda id: b"")])
        one.write(b"1")
        two.write(b"2")
        results = store.commitMany([(one, None), (two, None)])
        self.assertEqual([type(r) for r in results], [StorageError, StorageError])
        self.assertIn("syncing the message to disk", str(results[0]))
        self.assertNothingLeft()

    def test_fsyncFailure(self) -> None:
        """
        Without syncfs, a failing fsync of the second copy removes both
        files.
        """
        realFsync = os.fsync
        count = [0]

        def failSecond(fd: int) -> None:
            count[0] += 1
            if count[0] == 2:
                raise OSError(errno.EIO, os.strerror(errno.EIO))
            realFsync(fd)

        self.patch(os, "fsync", failSecond)
        self.store = MaildirStore(self.root, MaildirNamer("h", Clock().seconds, pid=2), RealFileSystem(None))
        pending = self.store.begin([("example.com", lambda id: b""), ("example.com", lambda id: b"")])
        pending.write(b"data")
        error = self.assertRaises(StorageError, pending.commit)
        self.assertIn("syncing the message to disk", str(error))
        self.assertFalse(error.noSpace)
        self.assertNothingLeft()


class RenameNoReplaceTests(SynchronousTestCase):
    """
    Tests for L{RealFileSystem.renameNoReplace}: a rename that never takes
    the place of an existing file, by whichever means the file system has.
    """

    def setUp(self) -> None:
        self.directory = self.mktemp()
        os.makedirs(self.directory)
        self.source = self.write("source", b"mine")
        self.destination = os.path.join(self.directory, "destination")

    def write(self, name: str, data: bytes) -> str:
        path = os.path.join(self.directory, name)
        with open(path, "wb") as f:
            f.write(data)
        return path

    def read(self, path: str) -> bytes:
        with open(path, "rb") as f:
            return f.read()

    def assertRefused(self, fs: RealFileSystem) -> None:
        """
        With the destination taken, C{fs} raises FileExistsError and both
        files are as they were.
        """
        self.write("destination", b"theirs")
        self.assertRaises(FileExistsError, fs.renameNoReplace, self.source, self.destination)
        self.assertEqual((self.read(self.source), self.read(self.destination)), (b"mine", b"theirs"))

    def assertRenamed(self, fs: RealFileSystem) -> None:
        fs.renameNoReplace(self.source, self.destination)
        self.assertFalse(os.path.exists(self.source))
        self.assertEqual(self.read(self.destination), b"mine")

    def test_renameat2(self) -> None:
        """
        On Linux the C library's renameat2 is found, and refuses to
        replace a file.
        """
        if not sys.platform.startswith("linux"):
            raise SkipTest("renameat2 is Linux's")
        renameat2 = loadRenameat2()
        if renameat2 is None:
            raise SkipTest("this C library has no renameat2")
        self.write("destination", b"theirs")
        self.assertRaises(FileExistsError, renameat2, self.source, self.destination)
        self.assertEqual(self.read(self.destination), b"theirs")
        os.unlink(self.destination)
        renameat2(self.source, self.destination)
        self.assertEqual(self.read(self.destination), b"mine")

    def test_default(self) -> None:
        """
        The default file system renames, and refuses to replace.
        """
        self.assertRefused(RealFileSystem())
        os.unlink(self.destination)
        self.assertRenamed(RealFileSystem())

    def test_linkWhereRenameat2Refused(self) -> None:
        """
        Where renameat2 fails with EINVAL (NFS, CephFS), a hard link is
        made instead, and renameat2 is not tried again in that directory.
        """
        tried: list[str] = []

        def refused(source: str, destination: str) -> None:
            tried.append(destination)
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))

        fs = RealFileSystem(renameat2=refused)
        self.assertRefused(fs)
        os.unlink(self.destination)
        self.assertRenamed(fs)
        self.assertEqual(tried, [self.destination])

    def test_otherErrorsRaised(self) -> None:
        """
        Another failure of renameat2 (a full disk, say) is raised, not
        papered over by a link.
        """

        def full(source: str, destination: str) -> None:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        error = self.assertRaises(OSError, RealFileSystem(renameat2=full).renameNoReplace, self.source, self.destination)
        self.assertEqual(error.errno, errno.ENOSPC)
        self.assertFalse(os.path.exists(self.destination))

    def test_withoutRenameat2(self) -> None:
        """
        Without renameat2 at all, the link is made at once.
        """
        self.assertRefused(RealFileSystem(renameat2=None))
        os.unlink(self.destination)
        self.assertRenamed(RealFileSystem(renameat2=None))

    def test_withoutLinks(self) -> None:
        """
        On a file system without hard links either, the destination is
        looked for before a plain rename.
        """
        calls: list[str] = []

        def noLinks(source: str, destination: str) -> None:
            calls.append(destination)
            raise OSError(errno.EPERM, os.strerror(errno.EPERM))

        self.patch(os, "link", noLinks)
        fs = RealFileSystem(renameat2=None)
        self.assertRefused(fs)
        os.unlink(self.destination)
        self.assertRenamed(fs)
        self.assertEqual(calls, [self.destination])

    def test_linkAlreadyMade(self) -> None:
        """
        An EEXIST for a link that is the source itself (an NFS LINK sent
        again after its reply was lost) counts as done.
        """
        os.link(self.source, self.destination)
        linkThenUnlink(self.source, self.destination)
        self.assertFalse(os.path.exists(self.source))
        self.assertEqual(self.read(self.destination), b"mine")
