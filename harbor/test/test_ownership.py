"""
Tests for L{harbor.ownership}: the directories made, as root, for the user
twistd switches to, and the refusals when that user could not use them.

Most run on a fake file system, as any user; those that make and chown
real directories for another user need root and are skipped without it.
"""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import tempfile

from zope.interface import implementer
from zope.interface.verify import verifyObject

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from harbor.access import Identity
from harbor.ownership import (
    PARENT_MODE,
    USER_MODE,
    AccessProblem,
    IDirectories,
    RealDirectories,
    Status,
    checkReadable,
    identityAfterDrop,
    planDirectories,
    prepareDirectories,
)

NOBODY = Identity("nobody", 65534, 65534, frozenset({65534}))
DIRECTORY = stat.S_IFDIR
FILE = stat.S_IFREG


@implementer(IDirectories)
class FakeDirectories:
    """
    A file system in a dictionary: path -> L{Status}; records what is done
    to it.

    @ivar readOnlyBelow: Paths under which the file system is read-only.
    @ivar calls: The changing calls made, in order.
    """

    def __init__(self, paths: dict[str, Status]) -> None:
        self.paths = {"/": Status(DIRECTORY | 0o755, 0, 0), **paths}
        self.readOnlyBelow: set[str] = set()
        self.calls: list[tuple[object, ...]] = []
        self.failMaking: OSError | None = None

    def status(self, path: str) -> Status | None:
        return self.paths.get(path)

    def readOnly(self, path: str) -> bool:
        assert path in self.paths, path
        return any(path == top or path.startswith(top + "/") for top in self.readOnlyBelow)

    def makeDirectory(self, path: str, mode: int) -> None:
        assert os.path.dirname(path) in self.paths and path not in self.paths, path
        if self.failMaking is not None:
            raise self.failMaking
        self.calls.append(("mkdir", path, oct(mode)))
        self.paths[path] = Status(DIRECTORY | mode, 0, 0)

    def changeOwner(self, path: str, uid: int, gid: int) -> None:
        self.calls.append(("chown", path, uid, gid))
        self.paths[path] = Status(self.paths[path].mode, uid, gid)

    def syncDirectory(self, path: str) -> None:
        self.calls.append(("sync", path))

    def userName(self, uid: int) -> str:
        return {0: "root", 65534: "nobody"}.get(uid, str(uid))

    def groupName(self, gid: int) -> str:
        return {0: "root", 65534: "nogroup"}.get(gid, str(gid))


def directory(mode: int, uid: int = 0, gid: int = 0) -> Status:
    return Status(DIRECTORY | mode, uid, gid)


MAILDIR = ["/srv/mail/example.com", *(f"/srv/mail/example.com/{sub}" for sub in ("tmp", "new", "cur"))]


class PlanTests(SynchronousTestCase):
    """
    Tests for L{planDirectories} and L{prepareDirectories} on a fake file
    system.
    """

    def test_fakeProvidesInterface(self) -> None:
        """
        The fake and the real file systems provide L{IDirectories}.
        """
        self.assertTrue(verifyObject(IDirectories, FakeDirectories({})))
        self.assertTrue(verifyObject(IDirectories, RealDirectories()))

    def test_missingRootMadeForUser(self) -> None:
        """
        A missing Maildir root and the Maildirs in it are made, parents
        first, with mode 0700 and given to the user; a missing parent above
        the root is made by root with mode 0755 and left to root; the new
        entries are made durable.
        """
        fs = FakeDirectories({})
        made = prepareDirectories("/srv/mail", MAILDIR, NOBODY, fs)
        self.assertEqual(made, ["/srv", "/srv/mail", *MAILDIR])
        self.assertEqual(fs.calls[:5], [
            ("mkdir", "/srv", oct(PARENT_MODE)),
            ("mkdir", "/srv/mail", oct(USER_MODE)),
            ("chown", "/srv/mail", 65534, 65534),
            ("mkdir", "/srv/mail/example.com", oct(USER_MODE)),
            ("chown", "/srv/mail/example.com", 65534, 65534),
        ])
        self.assertNotIn(("chown", "/srv", 65534, 65534), fs.calls)
        for path in MAILDIR:
            self.assertIn(("chown", path, 65534, 65534), fs.calls)
        syncs = [call[1] for call in fs.calls if call[0] == "sync"]
        self.assertEqual(syncs, ["/", "/srv", "/srv/mail", "/srv/mail/example.com"])

    def test_existingLeftAlone(self) -> None:
        """
        Directories that exist and that the user may use keep their owner
        and mode; only the missing ones are made.
        """
        fs = FakeDirectories({"/srv": directory(0o755), "/srv/mail": directory(0o770, 0, 65534)})
        made = prepareDirectories("/srv/mail", MAILDIR, NOBODY, fs)
        self.assertEqual(made, MAILDIR)
        self.assertEqual(fs.paths["/srv/mail"], directory(0o770, 0, 65534))
        self.assertFalse([call for call in fs.calls if call[1] in ("/srv", "/srv/mail") and call[0] != "sync"])

    def test_allThereMakesNothing(self) -> None:
        """
        When everything exists and is usable, nothing is changed.
        """
        paths = {"/srv": directory(0o755), "/srv/mail": directory(0o700, 65534, 65534)}
        paths.update({path: directory(0o700, 65534, 65534) for path in MAILDIR})
        fs = FakeDirectories(paths)
        self.assertEqual(prepareDirectories("/srv/mail", MAILDIR, NOBODY, fs), [])
        self.assertEqual(fs.calls, [])

    def assertProblem(self, fs: FakeDirectories, path: str, *fragments: str) -> None:
        """
        Planning for C{fs} is refused, naming C{path} and the C{fragments};
        preparing changes nothing.
        """
        problem = self.assertRaises(AccessProblem, planDirectories, "/srv/mail", MAILDIR, NOBODY, fs)
        self.assertEqual(problem.path, path)
        for fragment in (path, *fragments):
            self.assertIn(fragment, str(problem))
        self.assertRaises(AccessProblem, prepareDirectories, "/srv/mail", MAILDIR, NOBODY, fs)
        self.assertEqual(fs.calls, [])

    def test_parentNotSearchable(self) -> None:
        """
        A parent of the root the user cannot search is refused, naming it,
        the user, its owner and mode, and the missing search permission.
        """
        fs = FakeDirectories({"/srv": directory(0o700)})
        self.assertProblem(
            fs,
            "/srv",
            "nobody (uid 65534, gid 65534) could not reach /srv/mail",
            "no search (x) permission on /srv (owner root:root, mode 0700)",
        )

    def test_parentSearchableByGroup(self) -> None:
        """
        A parent searchable through one of the user's groups is fine.
        """
        fs = FakeDirectories({"/srv": directory(0o710, 0, 65534)})
        prepareDirectories("/srv/mail", MAILDIR, NOBODY, fs)
        self.assertIn("/srv/mail/example.com/new", fs.paths)

    def test_rootOwnedByAnotherUser(self) -> None:
        """
        An existing root that the user cannot write is refused, naming the
        missing write permission, and is not taken over.
        """
        fs = FakeDirectories({"/srv": directory(0o755), "/srv/mail": directory(0o755)})
        self.assertProblem(
            fs, "/srv/mail", "could not use /srv/mail (owner root:root, mode 0755): no write (w) permission"
        )

    def test_maildirInsideNotUsable(self) -> None:
        """
        An existing Maildir inside the root that the user cannot use is
        refused too.
        """
        fs = FakeDirectories({
            "/srv": directory(0o755),
            "/srv/mail": directory(0o700, 65534, 65534),
            "/srv/mail/example.com": directory(0o700, 65534, 65534),
            "/srv/mail/example.com/new": directory(0o700),
        })
        self.assertProblem(fs, "/srv/mail/example.com/new", "no read (r), write (w) and search (x) permission")

    def test_notADirectory(self) -> None:
        """
        A file where a directory must be is refused.
        """
        fs = FakeDirectories({"/srv": directory(0o755), "/srv/mail": Status(FILE | 0o644, 65534, 65534)})
        self.assertProblem(fs, "/srv/mail", "is not a directory")
        fs = FakeDirectories({"/srv": Status(FILE | 0o644, 0, 0)})
        self.assertProblem(fs, "/srv", "is not a directory")

    def test_readOnlyFileSystem(self) -> None:
        """
        A directory to make on a read-only file system, or an existing one
        to write in, is refused naming the read-only file system.
        """
        fs = FakeDirectories({"/srv": directory(0o755)})
        fs.readOnlyBelow.add("/srv")
        self.assertProblem(fs, "/srv/mail", "/srv is on a read-only file system")
        fs = FakeDirectories({"/srv": directory(0o755), "/srv/mail": directory(0o700, 65534, 65534)})
        fs.readOnlyBelow.add("/srv/mail")
        self.assertProblem(fs, "/srv/mail", "could not write in /srv/mail: it is on a read-only file system")

    def test_makingFails(self) -> None:
        """
        A directory that cannot be made after all is an L{AccessProblem}
        naming it, the user and why.
        """
        fs = FakeDirectories({"/srv": directory(0o755)})
        fs.failMaking = OSError(28, "No space left on device", "/srv/mail")
        problem = self.assertRaises(AccessProblem, prepareDirectories, "/srv/mail", MAILDIR, NOBODY, fs)
        self.assertEqual(str(problem), "cannot create /srv/mail for nobody (uid 65534, gid 65534): No space left on device")

    def test_directoriesOutsideRootRefused(self) -> None:
        """
        Only directories inside the root are prepared.
        """
        self.assertRaises(ValueError, planDirectories, "/srv/mail", ["/etc/x"], NOBODY, FakeDirectories({}))


class CheckReadableTests(SynchronousTestCase):
    """
    Tests for L{checkReadable}.
    """

    def test_readable(self) -> None:
        """
        A file the user may read, in directories it may search, passes.
        """
        fs = FakeDirectories({"/etc": directory(0o755), "/etc/users": Status(FILE | 0o640, 0, 65534)})
        checkReadable("/etc/users", NOBODY, fs)

    def test_unreadable(self) -> None:
        """
        A file the user may not read is refused, naming the file, the user,
        its owner and mode, and the read permission.
        """
        fs = FakeDirectories({"/etc": directory(0o755), "/etc/users": Status(FILE | 0o600, 0, 0)})
        problem = self.assertRaises(AccessProblem, checkReadable, "/etc/users", NOBODY, fs)
        self.assertEqual(
            str(problem),
            "nobody (uid 65534, gid 65534) could not read /etc/users (owner root:root, mode 0600): "
            "no read (r) permission",
        )

    def test_directoryNotSearchable(self) -> None:
        """
        A readable file in a directory the user cannot search is refused,
        naming that directory.
        """
        fs = FakeDirectories({"/etc": directory(0o700), "/etc/key": Status(FILE | 0o644, 0, 0)})
        problem = self.assertRaises(AccessProblem, checkReadable, "/etc/key", NOBODY, fs)
        self.assertEqual(problem.path, "/etc")
        self.assertIn("no search (x) permission on /etc (owner root:root, mode 0700)", str(problem))

    def test_missing(self) -> None:
        """
        A missing file is refused as missing.
        """
        problem = self.assertRaises(AccessProblem, checkReadable, "/etc/key", NOBODY, FakeDirectories({}))
        self.assertIn("does not exist", str(problem))


class IdentityAfterDropTests(SynchronousTestCase):
    """
    Tests for L{identityAfterDrop}: the user twistd switches to.
    """

    def test_noSwitch(self) -> None:
        """
        Without C{--uid}, not as root, or to root, there is no other user.
        """
        self.assertIsNone(identityAfterDrop(None, 65534, lambda: 0))
        self.assertIsNone(identityAfterDrop(65534, 65534, lambda: 1000))
        self.assertIsNone(identityAfterDrop(0, 0, lambda: 0))

    def test_userAndGroups(self) -> None:
        """
        As root, C{--uid} gives the user with C{--gid}, or else its own
        group, and its supplementary groups, as twistd's initgroups does.
        """
        entry = pwd.getpwnam("nobody")
        identity = identityAfterDrop(entry.pw_uid, None, lambda: 0)
        self.assertEqual(
            identity,
            Identity(
                "nobody", entry.pw_uid, entry.pw_gid, frozenset(os.getgrouplist("nobody", entry.pw_gid))
            ),
        )
        other = identityAfterDrop(entry.pw_uid, 4321, lambda: 0)
        assert other is not None
        self.assertEqual(other.gid, 4321)
        self.assertIn(4321, other.groups)

    def test_unknownUser(self) -> None:
        """
        A uid with no password entry, for which twistd could not set the
        groups, is a L{ValueError} naming it.
        """
        unknown = next(uid for uid in range(54321, 60000) if not _hasEntry(uid))
        error = self.assertRaises(ValueError, identityAfterDrop, unknown, None, lambda: 0)
        self.assertIn(str(unknown), str(error))

    def test_defaultIsThisProcess(self) -> None:
        """
        By default the effective uid is this process's, looked up when
        called.
        """
        self.patch(os, "geteuid", lambda: 1000)
        self.assertIsNone(identityAfterDrop(65534, None))
        self.patch(os, "geteuid", lambda: 0)
        self.assertIsNotNone(identityAfterDrop(65534, None))


def _hasEntry(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
    except KeyError:
        return False
    return True


class RealDirectoriesTests(SynchronousTestCase):
    """
    Tests for L{RealDirectories}, and for preparing real directories for
    another user (as root).
    """

    def test_status(self) -> None:
        """
        The status of a path is its mode and owner, or L{None} if missing.
        """
        path = os.path.abspath(self.mktemp())
        fs = RealDirectories()
        self.assertIsNone(fs.status(path))
        os.mkdir(path)
        result = os.stat(path)
        self.assertEqual(fs.status(path), Status(result.st_mode, result.st_uid, result.st_gid))
        self.assertIsNone(fs.status(os.path.join(path, "missing", "deeper")))
        self.assertFalse(fs.readOnly(path))

    def test_ownerChangeFollowsNoLink(self) -> None:
        """
        A link where a directory was made is not followed: what it points
        to keeps its owner.
        """
        if os.geteuid() != 0:
            raise SkipTest("only root can give a file to another user")
        base = os.path.abspath(self.mktemp())
        os.mkdir(base)
        target = os.path.join(base, "precious")
        with open(target, "w"):
            pass
        link = os.path.join(base, "link")
        os.symlink(target, link)
        RealDirectories().changeOwner(link, 65534, 65534)
        self.assertEqual((os.stat(target).st_uid, os.lstat(link).st_uid), (0, 65534))

    def test_modeExactWhateverUmask(self) -> None:
        """
        A directory is made with exactly the mode asked for, even under a
        umask that would take bits away.
        """
        path = os.path.abspath(self.mktemp())
        old = os.umask(0o077)
        try:
            RealDirectories().makeDirectory(path, 0o755)
        finally:
            os.umask(old)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o755)

    def test_names(self) -> None:
        """
        Users and groups are named, or numbered if they have no name.
        """
        fs = RealDirectories()
        self.assertEqual(fs.userName(0), "root")
        unknown = next(uid for uid in range(54321, 60000) if not _hasEntry(uid))
        self.assertEqual(fs.userName(unknown), str(unknown))
        self.assertEqual(fs.groupName(os.getgid()), _groupName(os.getgid()))

    def test_preparesForThisUser(self) -> None:
        """
        For the user this process is (no root needed), the missing Maildirs
        are made, with mode 0700, and owned by it.
        """
        me = Identity("me", os.getuid(), os.getgid(), frozenset(os.getgroups()))
        root = os.path.join(os.path.abspath(self.mktemp()), "mail")
        maildir = os.path.join(root, "example.com")
        made = prepareDirectories(root, [maildir, os.path.join(maildir, "new")], me)
        self.assertEqual(made[-3:], [root, maildir, os.path.join(maildir, "new")])
        result = os.stat(os.path.join(maildir, "new"))
        self.assertEqual((result.st_uid, stat.S_IMODE(result.st_mode)), (os.getuid(), 0o700))

    def nobodyDirectory(self, mode: int) -> str:
        """
        A fresh directory in C{/tmp} with C{mode}, owned by root, removed
        after the test; skips the test unless running as root.
        """
        if os.getuid() != 0:
            self.skipTest("needs root to make directories for another user (CI runs as root)")
        top = tempfile.mkdtemp(prefix="mailharbor-ownership-")
        self.addCleanup(shutil.rmtree, top, True)
        os.chmod(top, mode)
        return top

    def test_asRootForNobody(self) -> None:
        """
        As root, a missing root and Maildir under a directory nobody may
        search are made and given to nobody, who can then write in them.
        """
        top = self.nobodyDirectory(0o755)
        entry = pwd.getpwnam("nobody")
        nobody = identityAfterDrop(entry.pw_uid, None)
        assert nobody is not None
        root = os.path.join(top, "srv", "mail")
        new = os.path.join(root, "example.com", "new")
        prepareDirectories(root, [os.path.join(root, "example.com"), new], nobody)
        self.assertEqual(os.stat(os.path.join(top, "srv")).st_uid, 0)
        self.assertEqual(stat.S_IMODE(os.stat(os.path.join(top, "srv")).st_mode), 0o755)
        for path in (root, new):
            result = os.stat(path)
            self.assertEqual((result.st_uid, result.st_gid), (entry.pw_uid, entry.pw_gid))
        checkReadable(new, nobody)

    def test_asRootRefusedUnderPrivateParent(self) -> None:
        """
        As root, a root under a directory only root may search is refused
        and nothing is made.
        """
        top = self.nobodyDirectory(0o700)
        nobody = identityAfterDrop(pwd.getpwnam("nobody").pw_uid, None)
        assert nobody is not None
        root = os.path.join(top, "mail")
        problem = self.assertRaises(AccessProblem, prepareDirectories, root, [], nobody)
        self.assertEqual(problem.path, top)
        self.assertIn("nobody", str(problem))
        self.assertFalse(os.path.exists(root))


def _groupName(gid: int) -> str:
    import grp

    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)
