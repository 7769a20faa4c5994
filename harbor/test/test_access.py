"""
Tests for L{harbor.access}: the permission decision for a user this
process is not, from the mode and owner alone.
"""

from __future__ import annotations

import os
import stat

from twisted.trial.unittest import SynchronousTestCase

from hypothesis import given
from hypothesis import strategies as st

from harbor.access import (
    READ,
    SEARCH,
    WRITE,
    Identity,
    allowed,
    describeFile,
    describePermissions,
    missingPermissions,
)

NOBODY = Identity("nobody", 65534, 65534, frozenset({65534, 100}))
ROOT = 0
DIRECTORY = stat.S_IFDIR
FILE = stat.S_IFREG
ALL = READ | WRITE | SEARCH


class MissingPermissionsTests(SynchronousTestCase):
    """
    Tests for L{missingPermissions} and L{allowed}.
    """

    def missing(self, mode: int, owner: int, group: int, wanted: int, who: Identity = NOBODY) -> int:
        return missingPermissions(mode, owner, group, who.uid, who.gid, who.groups, wanted)

    def test_ownerBits(self) -> None:
        """
        The owner gets the owner's bits, whatever the others' say.
        """
        self.assertEqual(self.missing(DIRECTORY | 0o700, 65534, ROOT, ALL), 0)
        self.assertEqual(self.missing(DIRECTORY | 0o500, 65534, ROOT, ALL), WRITE)
        self.assertEqual(self.missing(FILE | 0o077, 65534, 65534, READ), READ)

    def test_groupBits(self) -> None:
        """
        A member of the file's group, by its primary group or a
        supplementary one, gets the group's bits and not the others'.
        """
        self.assertEqual(self.missing(DIRECTORY | 0o070, ROOT, 65534, ALL), 0)
        self.assertEqual(self.missing(DIRECTORY | 0o050, ROOT, 100, ALL), WRITE)
        self.assertEqual(self.missing(FILE | 0o007, ROOT, 100, READ), READ)
        self.assertEqual(self.missing(FILE | 0o040, ROOT, 7, READ), READ)

    def test_otherBits(self) -> None:
        """
        Anyone else gets the others' bits.
        """
        self.assertEqual(self.missing(DIRECTORY | 0o755, ROOT, ROOT, SEARCH), 0)
        self.assertEqual(self.missing(DIRECTORY | 0o755, ROOT, ROOT, ALL), WRITE)
        self.assertEqual(self.missing(DIRECTORY | 0o700, ROOT, ROOT, SEARCH), SEARCH)
        self.assertEqual(self.missing(FILE | 0o600, ROOT, ROOT, READ), READ)
        self.assertEqual(self.missing(FILE | 0o644, ROOT, ROOT, READ), 0)

    def test_root(self) -> None:
        """
        Root may read and write anything and search any directory, but
        execute a file only if some execute bit is set.
        """
        root = Identity("root", 0, 0)
        self.assertEqual(self.missing(DIRECTORY | 0o000, 5, 5, ALL, root), 0)
        self.assertEqual(self.missing(FILE | 0o000, 5, 5, READ | WRITE, root), 0)
        self.assertEqual(self.missing(FILE | 0o600, 5, 5, SEARCH, root), SEARCH)
        self.assertEqual(self.missing(FILE | 0o001, 5, 5, SEARCH, root), 0)

    def test_allowed(self) -> None:
        """
        L{allowed} is true exactly when nothing wanted is missing.
        """
        self.assertTrue(allowed(DIRECTORY | 0o711, ROOT, ROOT, NOBODY, SEARCH))
        self.assertFalse(allowed(DIRECTORY | 0o711, ROOT, ROOT, NOBODY, READ | SEARCH))

    @given(mode=st.integers(0, 0o777), owner=st.sampled_from([0, 65534, 1000]), group=st.sampled_from([0, 65534, 100, 7]))
    def test_agreesWithTheKernelRule(self, mode: int, owner: int, group: int) -> None:
        """
        For any mode, owner and group, a non-root user is granted exactly the
        bits of the one class it falls in (owner, then group, then others).
        """
        if owner == NOBODY.uid:
            shift = 6
        elif group in (NOBODY.gid, *NOBODY.groups):
            shift = 3
        else:
            shift = 0
        for wanted in range(8):
            expected = wanted & ~(mode >> shift) & 0o7
            self.assertEqual(self.missing(FILE | mode, owner, group, wanted), expected)

    def test_matchesOsAccessForThisUser(self) -> None:
        """
        For the user this process is, the decision agrees with
        L{os.access} on real files of every owner-bit combination (not as
        root, whom os.access lets through).
        """
        if os.geteuid() == 0:
            self.skipTest("os.access lets root through; the rule for root is tested above")
        me = Identity("me", os.getuid(), os.getgid(), frozenset(os.getgroups()))
        base = os.path.abspath(self.mktemp())
        os.mkdir(base)
        for bits in range(8):
            path = os.path.join(base, str(bits))
            with open(path, "w"):
                pass
            os.chmod(path, bits << 6)
            result = os.stat(path)
            for wanted in (READ, WRITE):
                self.assertEqual(
                    allowed(result.st_mode, result.st_uid, result.st_gid, me, wanted),
                    os.access(path, wanted),
                    (bits, wanted),
                )


class DescribeTests(SynchronousTestCase):
    """
    Tests for the message helpers.
    """

    def test_describePermissions(self) -> None:
        """
        Permissions are named with their letters, search for a directory and
        execute for a file.
        """
        self.assertEqual(describePermissions(SEARCH), "search (x)")
        self.assertEqual(describePermissions(SEARCH, directory=False), "execute (x)")
        self.assertEqual(describePermissions(WRITE | SEARCH), "write (w) and search (x)")
        self.assertEqual(describePermissions(ALL), "read (r), write (w) and search (x)")

    def test_describeFile(self) -> None:
        """
        A file is described by its owner, group and permission bits.
        """
        self.assertEqual(describeFile(DIRECTORY | 0o700, "root", "wheel"), "owner root:wheel, mode 0700")

    def test_identity(self) -> None:
        """
        A user is named with its ids.
        """
        self.assertEqual(str(NOBODY), "nobody (uid 65534, gid 65534)")
