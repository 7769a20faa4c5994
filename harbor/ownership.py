# -*- test-case-name: harbor.test.test_ownership -*-
"""
Directories and files made ready, as root, for the user MailHarbor runs
as once twistd has dropped privileges (C{twistd --uid}).

twistd starts the application as root (C{privilegedStartService}), then
switches to C{--uid}/C{--gid}, then calls C{startService}.  A Maildir
root that does not exist yet, under a parent only root may write, cannot
be made after the switch; the server would start and answer 451 to every
message.  So, while still root, MailHarbor makes the directories it
needs and gives them to that user, and it refuses to start, naming the
path, the user and the missing permission, when that user could not use
them: a parent it cannot search, an existing directory it cannot write,
a read-only file system, a users file or TLS key it cannot read.

The file system is reached through L{IDirectories}, so the decisions can
be tested without root; L{harbor.access} decides from the permission
bits.  Nothing here imports Twisted.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from collections.abc import Callable, Sequence

from zope.interface import Interface, implementer

from attrs import frozen

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

#: The mode of a directory made for the user: as the store makes them.
USER_MODE = 0o700

#: The mode of a missing directory above the Maildir root, made by root and
#: left to root: searchable by the user whatever the umask.
PARENT_MODE = 0o755


class AccessProblem(Exception):
    """
    The user MailHarbor runs as could not use a path; the message says
    which, as whom, and what is missing.

    @ivar path: The path at fault.
    """

    def __init__(self, path: str, message: str) -> None:
        super().__init__(message)
        self.path = path

    def __str__(self) -> str:
        return str(self.args[0])


@frozen
class Status:
    """
    What L{IDirectories.status} reports of a path: its C{st_mode} and its
    owner and group.
    """

    mode: int
    uid: int
    gid: int

    @property
    def isDirectory(self) -> bool:
        return stat.S_ISDIR(self.mode)


class IDirectories(Interface):
    """
    The file-system calls the preparation makes, for tests to fake.
    """

    def status(path: str) -> Status | None:
        """
        The mode and owner of C{path} (following symbolic links), or
        L{None} if it does not exist.
        """

    def readOnly(path: str) -> bool:
        """
        Whether C{path}, which exists, is on a file system mounted
        read-only.
        """

    def makeDirectory(path: str, mode: int) -> None:
        """
        Create the directory C{path}, whose parent exists, with exactly
        C{mode} (whatever the umask).
        """

    def changeOwner(path: str, uid: int, gid: int) -> None:
        """
        Give C{path} to C{uid} and C{gid}.
        """

    def syncDirectory(path: str) -> None:
        """
        Make the entries of the directory C{path} durable.
        """

    def userName(uid: int) -> str:
        """
        The name of the user C{uid}, or the number if it has none.
        """

    def groupName(gid: int) -> str:
        """
        The name of the group C{gid}, or the number if it has none.
        """


@implementer(IDirectories)
class RealDirectories:
    """
    L{IDirectories} on the real file system.
    """

    def status(self, path: str) -> Status | None:
        try:
            result = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        return Status(result.st_mode, result.st_uid, result.st_gid)

    def readOnly(self, path: str) -> bool:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)

    def makeDirectory(self, path: str, mode: int) -> None:
        """
        Make C{path} with exactly C{mode}, whatever the umask.  The mode is
        set through a descriptor opened without following links: root
        works here inside directories the user may write, and a directory
        swapped for a link meanwhile must not have root chmod its target.
        """
        os.mkdir(path, mode)
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            os.fchmod(fd, mode)
        finally:
            os.close(fd)

    def changeOwner(self, path: str, uid: int, gid: int) -> None:
        """
        Give C{path} to C{uid} and C{gid}, not following a link there (see
        L{makeDirectory}).
        """
        os.chown(path, uid, gid, follow_symlinks=False)

    def syncDirectory(self, path: str) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def userName(self, uid: int) -> str:
        try:
            return pwd.getpwuid(uid).pw_name
        except KeyError:
            return str(uid)

    def groupName(self, gid: int) -> str:
        try:
            return grp.getgrgid(gid).gr_name
        except KeyError:
            return str(gid)


def identityAfterDrop(
    uid: int | None, gid: int | None, effectiveUID: Callable[[], int] | None = None
) -> Identity | None:
    """
    The user twistd will run MailHarbor as, if it will switch to another
    one: with C{--uid} given and this process running as root.

    Like twistd, the group is C{--gid}, or else the user's own, and the
    supplementary groups are the user's (twistd calls C{initgroups}).

    @param effectiveUID: Returns this process's effective uid (by
        default L{os.geteuid}, looked up when called).
    @return: L{None} when no switch will happen (no C{--uid}, not root,
        or C{--uid} root): then nothing needs preparing.
    @raise ValueError: if C{uid} has no entry in the password database,
        without which twistd cannot set the groups.
    """
    if uid is None or uid == 0 or (os.geteuid if effectiveUID is None else effectiveUID)() != 0:
        return None
    try:
        entry = pwd.getpwuid(uid)
    except KeyError:
        raise ValueError(f"no user with uid {uid} in the password database") from None
    if gid is None:
        gid = entry.pw_gid
    return Identity(entry.pw_name, uid, gid, frozenset(os.getgrouplist(entry.pw_name, gid)))


def _parents(path: str) -> list[str]:
    """
    The directories above C{path}, from C{/} down.
    """
    parents = []
    parent = os.path.dirname(path)
    while True:
        parents.append(parent)
        up = os.path.dirname(parent)
        if up == parent:
            break
        parent = up
    return parents[::-1]


def _between(root: str, directory: str) -> list[str]:
    """
    C{root} and every directory from it down to C{directory}, which is
    inside it.
    """
    relative = os.path.relpath(directory, root)
    if relative == os.pardir or relative.startswith(os.pardir + os.sep):
        raise ValueError(f"{directory} is not inside {root}")
    chain = [root]
    if relative != os.curdir:
        for part in relative.split(os.sep):
            chain.append(os.path.join(chain[-1], part))
    return chain


class _Checker:
    """
    Checks paths for one user, naming owners and modes in its messages.
    """

    def __init__(self, identity: Identity, fs: IDirectories) -> None:
        self.identity = identity
        self.fs = fs

    def describe(self, status: Status) -> str:
        return describeFile(status.mode, self.fs.userName(status.uid), self.fs.groupName(status.gid))

    def lacking(self, status: Status, wanted: int) -> int:
        identity = self.identity
        return missingPermissions(
            status.mode, status.uid, status.gid, identity.uid, identity.gid, identity.groups, wanted
        )

    def reach(self, path: str) -> list[str]:
        """
        Check that the user can search every existing directory above
        C{path}.

        @return: The missing ones, from the highest down.
        """
        missing: list[str] = []
        for parent in _parents(path):
            if missing:
                missing.append(parent)
                continue
            status = self.fs.status(parent)
            if status is None:
                missing.append(parent)
            elif not status.isDirectory:
                raise AccessProblem(parent, f"{parent} is not a directory, so {path} cannot be in it")
            elif not allowed(status.mode, status.uid, status.gid, self.identity, SEARCH):
                raise AccessProblem(
                    parent,
                    f"{self.identity} could not reach {path}: no search (x) permission on "
                    f"{parent} ({self.describe(status)})",
                )
        return missing


@frozen
class Preparation:
    """
    What preparing the directories will do.

    @ivar made: The directories to create, parents first, each with
        whether it goes to the user (the Maildir root and everything in
        it) or stays root's (missing parents of the root).
    """

    made: tuple[tuple[str, bool], ...]


def planDirectories(
    root: str, directories: Sequence[str], identity: Identity, fs: IDirectories | None = None
) -> Preparation:
    """
    Decide how to make C{root} and the C{directories} in it usable by
    C{identity}, without changing anything.

    The user needs to search every directory above the root, and to
    read, write and search the root and every directory in it.  What
    exists is left as it is (its owner and mode are the operator's
    choice); what is missing will be made, the root and below for the
    user, above the root for root with mode 0755.

    @raise AccessProblem: naming the first path the user could not use.
    """
    fs = RealDirectories() if fs is None else fs
    checker = _Checker(identity, fs)
    made: dict[str, bool] = dict.fromkeys(checker.reach(root), False)
    checked: set[str] = set()
    readOnlyChecked: set[str] = set()
    for directory in [root, *directories]:
        for path in _between(root, directory):
            if path in made or path in checked:
                continue
            status = None if os.path.dirname(path) in made else fs.status(path)
            if status is None:
                _checkCreatable(path, made, fs, readOnlyChecked, identity)
                made[path] = True
                continue
            checked.add(path)
            if not status.isDirectory:
                raise AccessProblem(path, f"{path} is not a directory")
            lacking = checker.lacking(status, READ | WRITE | SEARCH)
            if lacking:
                raise AccessProblem(
                    path,
                    f"{identity} could not use {path} ({checker.describe(status)}): no "
                    f"{describePermissions(lacking)} permission",
                )
            if fs.readOnly(path):
                raise AccessProblem(path, f"{identity} could not write in {path}: it is on a read-only file system")
    return Preparation(tuple(made.items()))


def _checkCreatable(
    path: str, made: dict[str, bool], fs: IDirectories, checked: set[str], identity: Identity
) -> None:
    """
    Check that C{path} can be created: by root, so only a read-only file
    system stands in the way.  Looked at once per existing directory new
    ones are made in.
    """
    parent = os.path.dirname(path)
    while parent in made:
        parent = os.path.dirname(parent)
    if parent in checked:
        return
    checked.add(parent)
    if fs.readOnly(parent):
        raise AccessProblem(path, f"cannot create {path} for {identity}: {parent} is on a read-only file system")


def prepareDirectories(
    root: str, directories: Sequence[str], identity: Identity, fs: IDirectories | None = None
) -> list[str]:
    """
    Make C{root} and the C{directories} in it, as L{planDirectories}
    decides, giving the root and what is in it to C{identity}; make the
    new entries durable.

    @return: The directories made.
    @raise AccessProblem: if the user could not use them, or one cannot be
        made.
    """
    fs = RealDirectories() if fs is None else fs
    plan = planDirectories(root, directories, identity, fs)
    try:
        for path, forUser in plan.made:
            fs.makeDirectory(path, USER_MODE if forUser else PARENT_MODE)
            if forUser:
                fs.changeOwner(path, identity.uid, identity.gid)
        for parent in dict.fromkeys(os.path.dirname(path) for path, _ in plan.made):
            fs.syncDirectory(parent)
    except OSError as e:
        path = e.filename or root
        raise AccessProblem(path, f"cannot create {path} for {identity}: {e.strerror}") from None
    return [path for path, _ in plan.made]


def checkReadable(path: str, identity: Identity, fs: IDirectories | None = None) -> None:
    """
    Check that C{identity} can read the file C{path}: search every
    directory above it and read it.

    @raise AccessProblem: if it could not.
    """
    fs = RealDirectories() if fs is None else fs
    checker = _Checker(identity, fs)
    if checker.reach(path):
        raise AccessProblem(path, f"{path} does not exist")
    status = fs.status(path)
    if status is None:
        raise AccessProblem(path, f"{path} does not exist")
    if not allowed(status.mode, status.uid, status.gid, identity, READ):
        raise AccessProblem(
            path, f"{identity} could not read {path} ({checker.describe(status)}): no read (r) permission"
        )
