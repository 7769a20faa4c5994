# -*- test-case-name: harbor.test.test_hookrunner,harbor.test.test_hookcli -*-
"""
The hook spool: the durable job files, one per (stored copy, hook), that
make hook calls at-least-once and survive restarts.

The spool is Maildir-like: C{tmp/} (files being written), C{pending/} (jobs
to run), C{claimed/} (jobs being run, one directory per instance: see
L{harbor.hooks.claims}) and C{dead/} (jobs given up on); a job file is
written in C{tmp/}, fsynced and renamed into place, and the directory is
fsynced.  It lives next to the Maildirs (L{spoolFor}) unless C{hook_spool}
says otherwise, and several instances may share it.  The runner uses it
from worker threads, and C{mailharbor hooks} directly, without any
reactor.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Container, Iterable, Mapping, Sequence
from typing import Literal

from twisted.logger import Logger

from attrs import evolve, frozen

from harbor.hooks.claims import CLAIMED, InstanceClaims, newInstanceID
from harbor.hooks.config import SPOOL_NAME
from harbor.hooks.events import Job, isJobID
from harbor.store.fs import IFileSystem, RealFileSystem, StorageError, quietly

__all__ = ["SPOOL_DIRECTORIES", "SPOOL_NAME", "Claim", "HookSpool", "PendingScan", "hookOf", "spoolFor"]

#: The spool's directories: files being written, jobs to run, jobs being
#: run (by instance), jobs given up on.
SPOOL_DIRECTORIES = ("tmp", "pending", CLAIMED, "dead")

_JOB_SUFFIX = ".json"


@frozen
class PendingScan:
    """
    What one look at C{pending/} found (L{HookSpool.scan}).

    @ivar jobs: The jobs read, oldest first: no more per hook than asked.
    @ivar counts: How many jobs each hook has in C{pending/}, by hook name,
        read and unread alike (unusable files, and those the caller said
        not to count, left out).
    """

    jobs: tuple[Job, ...]
    counts: Mapping[str, int]
    elsewhere: Mapping[str, int] = {}


@frozen
class Claim:
    """
    A job this instance has claimed (L{HookSpool.claim}), as its file
    says now.

    @ivar job: The job.
    @ivar due: Whether it is due: if not, its claim was given up again at
        once (another instance tried it meanwhile, and its retry is not
        due yet).
    """

    job: Job
    due: bool


@frozen
class HookStatus:
    """
    Where one hook's job for one message stands (L{HookSpool.statusOf}).

    @ivar hook: The hook's name.
    @ivar jobID: The job's id (what L{HookSpool.revive} takes).
    @ivar state: C{"pending"} (waiting for an attempt, or being run),
        C{"dead"} (given up on) or C{"delivered"} (the hook is configured
        and no job is left for the message: it succeeded).
    @ivar attempts: Attempts made and failed so far.
    @ivar nextAttempt: When a pending job is next tried, seconds since the
        epoch; L{None} otherwise.
    @ivar error: Why the last attempt failed, if one did.
    """

    hook: str
    jobID: str
    state: Literal["pending", "dead", "delivered"]
    attempts: int = 0
    nextAttempt: float | None = None
    error: str | None = None


def hookOf(jobID: str) -> str:
    """
    The name of the hook a job is for, from its id (see
    L{harbor.hooks.events.jobID}), without reading its file.
    """
    return jobID.rpartition(",")[2]


def spoolFor(maildirRoot: str) -> str:
    """
    The hook spool of the Maildirs under C{maildirRoot}.
    """
    return os.path.join(maildirRoot, SPOOL_NAME)


class HookSpool:
    """
    The job files: C{tmp/}, C{pending/} and C{dead/} under one directory.

    Every method is blocking; the runner calls them in a worker thread and
    C{mailharbor hooks} calls them directly.  Files are replaced, never
    rewritten in place, so a reader sees either the old job or the new one.
    """

    _log = Logger()

    def __init__(self, directory: str, fs: IFileSystem | None = None, instance: str | None = None) -> None:
        """
        @param fs: The file-system calls that make files durable, for tests
            to record or break.
        @param instance: This instance's id for its claims; a new one
            (L{newInstanceID}) by default.
        """
        self.directory = directory
        self._fs: IFileSystem = RealFileSystem() if fs is None else fs
        self._tmp, self._pending, self._claimed, self._dead = (
            os.path.join(directory, name) for name in SPOOL_DIRECTORIES
        )
        self.claims = InstanceClaims(directory, self._pending, newInstanceID() if instance is None else instance)
        self._prepared = False

    def isPending(self, jobID: str) -> bool:
        """
        Whether C{jobID} names a job waiting to run or being run.
        """
        if not isJobID(jobID):
            return False
        name = jobID + _JOB_SUFFIX
        return os.path.exists(self.pendingPath(jobID)) or any(
            found == name for _, found in self.claims.claimedNames()
        )

    def pendingPath(self, jobID: str) -> str:
        """
        The file of a job waiting to run.
        """
        return os.path.join(self._pending, jobID + _JOB_SUFFIX)

    def deadPath(self, jobID: str) -> str:
        """
        The file of a job given up on.
        """
        return os.path.join(self._dead, jobID + _JOB_SUFFIX)

    def prepare(self) -> None:
        """
        Create the spool's directories if need be.

        @raise StorageError: if they cannot be created.
        """
        try:
            for directory in (self._tmp, self._pending, self._claimed, self._dead):
                self._fs.makeDirectories(directory)
        except OSError as e:
            raise StorageError.fromOSError("creating the hook spool", e) from e
        self._prepared = True

    def add(self, jobs: Sequence[Job], claimed: bool = False) -> None:
        """
        Make new jobs durable in C{pending/}, or claimed by this instance:
        all of them or, on failure, none.

        @param claimed: Whether to write them as claimed by this instance,
            where no other instance looks: for the jobs of a message not
            yet in its Maildir, which another instance would find missing
            and drop.  The runner runs them or releases them
            (L{unclaim}) once the message is stored.
        @raise StorageError: if they could not be written.
        """
        if not self._prepared:
            self.prepare()
        written: list[str] = []
        try:
            if claimed:
                self.claims.register()
            for job in jobs:
                written.append(self._write(job, self._placeOf(job.id, claimed)))
            self._fs.syncDirectory(self.claims.directory if claimed else self._pending)
        except OSError as e:
            for path in written:
                quietly(self._fs.unlink, path)
            raise StorageError.fromOSError("recording the message for its hooks", e) from e

    def _placeOf(self, jobID: str, claimed: bool) -> str:
        return self.claims.path(jobID + _JOB_SUFFIX) if claimed else self.pendingPath(jobID)

    def claim(self, jobID: str, now: float) -> Claim | None:
        """
        Claim a job for an attempt: move its file from C{pending/} into
        this instance's claim directory (L{harbor.hooks.claims}), unless it
        is there already, and read it again, as another instance may have
        tried it since this one read it.  A job whose retry is not due yet
        is put back at once.

        @param now: The time, to tell whether the job is due.
        @return: The claim, or L{None} if the job is neither pending nor
            claimed by this instance (another instance has it, or it is
            over).
        """
        name = jobID + _JOB_SUFFIX
        if not self.claims.claim(name):
            return None
        job = self._load(self.claims.path(name))
        if job is None:
            return None
        if job.due > now:
            self.claims.release(name)
            return Claim(job, due=False)
        return Claim(job, due=True)

    def unclaim(self, jobIDs: Sequence[str]) -> None:
        """
        Put jobs this instance has claimed back in C{pending/}, for any
        instance to run; those not claimed by it are left alone.
        """
        for jobID in jobIDs:
            self.claims.release(jobID + _JOB_SUFFIX)

    def releaseAll(self) -> int:
        """
        At shutdown: put back every job this instance has claimed (see
        L{harbor.hooks.claims.InstanceClaims.releaseAll}).
        """
        return self.claims.releaseAll()

    def takeOver(self) -> int:
        """
        Put back the jobs claimed by instances that have ended (see
        L{harbor.hooks.claims.InstanceClaims.takeOver}).
        """
        return self.claims.takeOver()

    def update(self, job: Job) -> None:
        """
        Replace a job's file after a failed attempt, and give up its claim:
        the new file, with the attempt counted and when the job is next
        due, is made durable in the claim directory, then put back in
        C{pending/}, so that a crash in between leaves it to be taken
        over, never with its old count.
        """
        claimed = os.path.exists(self._placeOf(job.id, True))
        self._write(job, self._placeOf(job.id, claimed))
        if claimed:
            self._fs.rename(self._placeOf(job.id, True), self.pendingPath(job.id))
        self._fs.syncDirectory(self._pending)

    def remove(self, job: Job) -> None:
        """
        Forget a job that succeeded: its claimed file, or its pending one.

        The directory is not fsynced: after a crash the job would run once
        more, which at-least-once delivery allows, and it saves a disk
        flush per message.
        """
        for claimed in (True, False):
            try:
                self._fs.unlink(self._placeOf(job.id, claimed))
            except FileNotFoundError:
                continue
            return

    def discard(self, jobs: Sequence[Job]) -> None:
        """
        Remove jobs whose message was not stored after all (its delivery
        failed once they were written), so that none of them runs.

        A file that cannot be removed stays: the runner drops the job when
        it finds its message missing.
        """
        for job in jobs:
            quietly(self.remove, job)

    def bury(self, job: Job) -> None:
        """
        Move a job to the dead letters, with its last error.
        """
        self._write(job, self.deadPath(job.id))
        self._fs.syncDirectory(self._dead)
        self.remove(job)

    def revive(self, jobID: str, now: float) -> Job:
        """
        Put a dead job back in C{pending/}, with its attempts reset, to run
        at once.

        The pending copy is made durable before the dead one is removed,
        so a crash in between leaves the job in both lists rather than in
        neither.

        @raise KeyError: if there is no such dead job.
        """
        if not isJobID(jobID):
            raise KeyError(jobID)
        job = self._load(self.deadPath(jobID))
        if job is None:
            raise KeyError(jobID)
        job = evolve(job, attempts=0, due=now, error=None)
        self._write(job, self.pendingPath(jobID))
        self._fs.syncDirectory(self._pending)
        try:
            self._fs.unlink(self.deadPath(jobID))
        except FileNotFoundError:
            pass
        self._fs.syncDirectory(self._dead)
        return job

    def pendingJobs(self, unusable: list[tuple[str, str]] | None = None) -> list[Job]:
        """
        Every job waiting to run or being run (claimed by an instance),
        oldest first.

        @param unusable: If given, a job file that cannot be read as a job
            is added to it, with why, and left where it is (for a command
            that only looks); otherwise it is logged and set aside as
            C{.bad}, as the server does.
        """
        jobs = self._jobs(self._pending, unusable)
        seen = {job.id for job in jobs}
        for instance, name in sorted(self.claims.claimedNames()):
            if name.endswith(_JOB_SUFFIX) and name[: -len(_JOB_SUFFIX)] not in seen:
                job = self._load(os.path.join(self._claimed, instance, name), unusable)
                if job is not None:
                    jobs.append(job)
        jobs.sort(key=lambda job: (job.created, job.id))
        return jobs

    def scan(
        self, room: Mapping[str, int], skip: Container[str] = (), uncounted: Container[str] = ()
    ) -> PendingScan:
        """
        Count each hook's pending jobs, and read the oldest few of them.

        The directory is listed name by name and only the chosen files are
        read, so that a backlog of any size costs the memory of the jobs
        asked for, plus a few names.  Job ids start with their message's
        Maildir id, which starts with its time, so the order of names is
        the order of arrival, near enough.

        @param room: How many jobs to read for each hook; hooks not named
            get none read (they are only counted).
        @param skip: Ids of jobs not to read (those the caller holds).
        @param uncounted: Ids of jobs not to count either (those the
            caller counts otherwise).

        Jobs claimed by instances (being run) are counted, not read; those
        of other instances are counted in L{PendingScan.elsewhere} too.
        """
        counts: dict[str, int] = {}
        chosen: dict[str, list[str]] = {}
        try:
            with os.scandir(self._pending) as entries:
                for entry in entries:
                    name = entry.name
                    jobID = _jobIDOf(name)
                    if jobID is None or jobID in uncounted:
                        continue
                    hook = hookOf(jobID)
                    counts[hook] = counts.get(hook, 0) + 1
                    limit = room.get(hook, 0)
                    if limit <= 0 or jobID in skip:
                        continue
                    names = chosen.setdefault(hook, [])
                    names.append(name)
                    # Keep the oldest, trimming now and then: at most
                    # twice the room is ever held.
                    if len(names) >= 2 * limit:
                        names.sort()
                        del names[limit:]
        except FileNotFoundError:
            return PendingScan((), {})
        # Jobs being run, by this instance and the others, are pending
        # too: the backlog that max_pending bounds is the spool's.
        elsewhere: dict[str, int] = {}
        for instance, name in self.claims.claimedNames():
            jobID = _jobIDOf(name)
            if jobID is None or jobID in uncounted:
                continue
            hook = hookOf(jobID)
            counts[hook] = counts.get(hook, 0) + 1
            if instance != self.claims.instance:
                elsewhere[hook] = elsewhere.get(hook, 0) + 1
        jobs = []
        for hook, names in chosen.items():
            names.sort()
            for name in names[: room[hook]]:
                job = self._load(os.path.join(self._pending, name))
                if job is None:
                    # Gone since it was listed, or unusable and set aside.
                    counts[hook] -= 1
                else:
                    jobs.append(job)
        jobs.sort(key=lambda job: (job.created, job.id))
        return PendingScan(tuple(jobs), counts, elsewhere)

    def deadJobs(self, unusable: list[tuple[str, str]] | None = None) -> list[Job]:
        """
        Every job given up on, oldest first.

        @param unusable: As for L{pendingJobs}.
        """
        return self._jobs(self._dead, unusable)

    def _jobs(self, directory: str, unusable: list[tuple[str, str]] | None = None) -> list[Job]:
        try:
            names = sorted(os.listdir(directory))
        except FileNotFoundError:
            return []
        jobs = []
        for name in names:
            if name.endswith(_JOB_SUFFIX):
                job = self._load(os.path.join(directory, name), unusable)
                if job is not None:
                    jobs.append(job)
        jobs.sort(key=lambda job: (job.created, job.id))
        return jobs

    def _load(self, path: str, unusable: list[tuple[str, str]] | None = None) -> Job | None:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return None
        try:
            return Job.fromJSON(json.loads(data))
        except ValueError as e:
            if unusable is not None:
                unusable.append((path, str(e)))
                return None
            # Set aside, so it is reported once and not on every look.
            self._log.error(
                "Hook job file {path} is unusable ({error}); renamed to {path}.bad",
                path=path,
                error=str(e),
            )
            quietly(os.rename, path, path + ".bad")
            return None

    def _write(self, job: Job, destination: str) -> str:
        data = json.dumps(job.asJSON(), indent=1).encode("utf-8") + b"\n"
        temporary = os.path.join(self._tmp, f"{job.id}.{uuid.uuid4().hex}")
        f = self._fs.create(temporary)
        try:
            try:
                f.write(data)
                self._fs.fsync(f)
            finally:
                f.close()
            self._fs.rename(temporary, destination)
        except BaseException:
            quietly(self._fs.unlink, temporary)
            raise
        return destination

    def statusOf(self, messageID: str, hooks: Iterable[str] = ()) -> list[HookStatus]:
        """
        The hook jobs of one stored message, for a reader to see what its
        hooks made of it.

        Job files are named C{<message id>,<hook>.json}; with the hooks
        named, each is looked up by its path (in C{pending/}, C{dead/} and
        any other directory of the spool that jobs are moved to while they
        run), so that a backlog of any size is never listed.  Without,
        C{pending/} and C{dead/} are listed for the message's jobs.

        @param messageID: The message's Maildir id.
        @param hooks: The names of the hooks configured: one found in no
            directory is C{"delivered"}.
        @return: One status per hook named, in that order; without names,
            one per job found, by hook name.
        """
        if not isJobID(messageID) or "," in messageID:
            return []
        hooks = tuple(hooks)
        found: dict[str, HookStatus] = {}
        for state, directory in self._jobDirectories():
            if hooks:
                names = [f"{messageID},{hook}{_JOB_SUFFIX}" for hook in hooks]
            else:
                try:
                    names = sorted(os.listdir(directory))
                except OSError:
                    continue
            for name in names:
                jobID = name[: -len(_JOB_SUFFIX)]
                if not name.endswith(_JOB_SUFFIX) or jobID.rpartition(",")[0] != messageID:
                    continue
                hook = hookOf(jobID)
                if hook in found:
                    continue
                job = self._peek(os.path.join(directory, name))
                if job is not None:
                    pending = state == "pending"
                    found[hook] = HookStatus(
                        hook, jobID, state, job.attempts, job.due if pending else None, job.error
                    )
        statuses = [
            found.pop(hook) if hook in found else HookStatus(hook, f"{messageID},{hook}", "delivered")
            for hook in hooks
        ]
        return statuses + [found[hook] for hook in sorted(found)]

    def _jobDirectories(self) -> list[tuple[Literal["pending", "dead"], str]]:
        # pending/ and dead/, then any other directory of the spool, and
        # those directly below it, that a job may be moved to while it is
        # being run (counted as pending).
        directories: list[tuple[Literal["pending", "dead"], str]] = [
            ("pending", self._pending),
            ("dead", self._dead),
        ]
        known = {self._tmp, self._pending, self._dead}
        try:
            with os.scandir(self.directory) as entries:
                others = sorted(e.path for e in entries if e.is_dir(follow_symlinks=False) and e.path not in known)
        except OSError:
            return directories
        for other in others:
            directories.append(("pending", other))
            try:
                with os.scandir(other) as entries:
                    directories.extend(
                        ("pending", e.path) for e in sorted(entries, key=lambda e: e.name)
                        if e.is_dir(follow_symlinks=False)
                    )
            except OSError:
                continue
        return directories

    def _peek(self, path: str) -> Job | None:
        # Read a job file without setting it aside when unusable: looking
        # is not the server's business of running it.
        try:
            with open(path, "rb") as f:
                return Job.fromJSON(json.loads(f.read()))
        except (OSError, ValueError):
            return None


def _jobIDOf(name: str) -> str | None:
    """
    The id of the job a spool file holds, or L{None} for a file that is not
    a job's.
    """
    if not name.endswith(_JOB_SUFFIX):
        return None
    return name[: -len(_JOB_SUFFIX)]
