# -*- test-case-name: harbor.test.test_access -*-
"""
Who may read, write or search a file, decided from its mode and owner
alone, for a user this process is not yet.

Started as root with C{twistd --uid}, MailHarbor must know before it
drops privileges whether the user it becomes can use its Maildirs, its
users file and its TLS key.  L{os.access} cannot say: it answers for the
real user, root, who may do nearly anything.  So the kernel's rule for
the permission bits is written out here, as a pure function of what
C{stat} reports and of the user's ids (POSIX.1-2017, 4.5 "File Access
Permissions"): the owner's bits apply to the owner, the group's to a
member of the file's group, the others' to everyone else, and only one
class applies, so an owner denied by its own bits is denied even if the
group may.  Access control lists and read-only file systems are beyond
the bits; the caller looks at the latter itself.
"""

from __future__ import annotations

import stat
from collections.abc import Collection

from attrs import frozen

#: The permissions asked about, as in L{os.access}: read, write and search
#: (or, for a file, execute).
READ = 4
WRITE = 2
SEARCH = 1


@frozen
class Identity:
    """
    A user as the kernel sees a process running as it.

    @ivar name: The user's name, for messages.
    @ivar uid: Its user id.
    @ivar gid: Its primary group, the one twistd's C{--gid} sets.
    @ivar groups: Its supplementary groups (what C{initgroups} gives it).
    """

    name: str
    uid: int
    gid: int
    groups: frozenset[int] = frozenset()

    def __str__(self) -> str:
        return f"{self.name} (uid {self.uid}, gid {self.gid})"


def missingPermissions(
    mode: int, owner: int, group: int, uid: int, gid: int, groups: Collection[int], wanted: int
) -> int:
    """
    Which of the C{wanted} permissions a process of C{uid}, C{gid} and
    C{groups} lacks on a file of this C{mode}, C{owner} and C{group}.

    @param mode: C{st_mode}, with the file type bits (a directory is
        searchable by root whatever its bits; another file is executable
        by root only if some execute bit is set).
    @param wanted: L{READ}, L{WRITE} and L{SEARCH}, or-ed together.
    @return: The wanted bits not granted; 0 when all are.
    """
    if uid == 0:
        if wanted & SEARCH and not stat.S_ISDIR(mode) and not mode & 0o111:
            return SEARCH
        return 0
    if uid == owner:
        granted = (mode >> 6) & 0o7
    elif gid == group or group in groups:
        granted = (mode >> 3) & 0o7
    else:
        granted = mode & 0o7
    return wanted & ~granted


def allowed(mode: int, owner: int, group: int, identity: Identity, wanted: int) -> bool:
    """
    Whether C{identity} has every C{wanted} permission on a file of this
    C{mode}, C{owner} and C{group}.
    """
    return not missingPermissions(mode, owner, group, identity.uid, identity.gid, identity.groups, wanted)


def describePermissions(bits: int, directory: bool = True) -> str:
    """
    Name permissions for a message: C{"write (w) and search (x)"}.
    """
    names = []
    if bits & READ:
        names.append("read (r)")
    if bits & WRITE:
        names.append("write (w)")
    if bits & SEARCH:
        names.append("search (x)" if directory else "execute (x)")
    if len(names) > 1:
        return ", ".join(names[:-1]) + " and " + names[-1]
    return names[0] if names else "no"


def describeFile(mode: int, owner: str, group: str) -> str:
    """
    A file's owner and bits for a message: C{"owner root:root, mode 0700"}.
    """
    return f"owner {owner}:{group}, mode {stat.S_IMODE(mode):04o}"
