# -*- test-case-name: harbor.test.test_backlog -*-
"""
The hook runner's bookkeeping of pending jobs: how many each hook has,
which are held in memory (its window), which belong to deliveries still
being committed, which just finished, and so what a scan of the spool may
read and how its listing corrects the counts.

This is plain state, changed by the runner
(L{harbor.hooks.runner.HookRunner}) as jobs come and go, with no I/O, no
clock and no Twisted: the runner passes in the time and the scans'
results.  A job goes through it like this::

    reserve (prepared) -> settle (committed) -> admit (held) -> forget
                                                              -> finished
                                             -> defer (waiting) -> admit
                       -> release (not stored)

A job is I{pending} from L{Backlog.reserve} until its file leaves
C{pending/} (L{Backlog.finished} with C{changed}) or its delivery fails
(L{Backlog.release}); a scan (L{Backlog.beginScan}, L{Backlog.scanned})
sets the counts again from what the directory holds.

With several instances sharing the spool, the counts are the whole
spool's: each scan counts C{pending/} and every instance's claims, and
between scans only this instance's own changes are seen, so C{max_pending}
refuses mail a little late (or stops refusing it a little late) by what
the others did meanwhile.  The jobs other instances have claimed are
remembered apart, as not for this one to read, so that they never make
it scan again for more (L{Backlog.wantsRefill}).

A job waiting for a retry (its file says when it is due, after a failed
attempt or at start) is not held: it is L{Backlog.defer}red, remembered
by its id and due time only, skipped by scans until it is due and then
read again, oldest first, like any job.  So jobs a hook keeps failing on
never fill its window and keep its other jobs on disk; a hook has at
most C{max_pending} of them remembered (L{Backlog.deferLimits}), and one
beyond that is held in its window, waiting there, as a last resort.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from attrs import frozen

from harbor.hooks.config import DEFAULT_MAX_PENDING
from harbor.hooks.events import BacklogFull, Job

#: Jobs of one hook held in memory at most (due, or running), or twice
#: the hook's C{max_in_flight} if that is more; the rest of its backlog
#: waits on disk.  Each costs a few KiB.  Jobs waiting for a retry are not
#: held (see L{Backlog.defer}).
WINDOW = 256

#: Jobs waiting for a retry remembered for a hook without C{max_pending},
#: in windows: a hook with a cap remembers as many as its cap.
DEFER_WINDOWS = 64


@frozen
class HookLimits:
    """
    What bounds one hook's backlog.

    @ivar maxInFlight: Its calls allowed at once, or L{None} for no limit;
        its window is at least twice this, so it never caps them.
    @ivar maxPending: Its pending jobs at which new mail is refused, or
        L{None} for no limit.
    """

    maxInFlight: int | None = None
    maxPending: int | None = DEFAULT_MAX_PENDING


@frozen
class ScanPlan:
    """
    What one scan of the spool may read, and the bookkeeping as it was
    when the scan began, for L{Backlog.scanned} to settle against.

    @ivar room: How many job files to read for each hook: its window's
        room.
    @ivar skip: Ids of jobs not to read: those held, waiting for a retry
        not yet due, just finished or being committed.
    @ivar uncounted: Ids of jobs not to count either: those being
        committed, counted by their reservations instead.
    @ivar counts: Each hook's pending jobs when the scan began.
    @ivar reserved: Each hook's jobs being committed when the scan began.
    @ivar arrivals: How many deliveries' jobs had been reserved by then.
    @ivar departures: How many jobs' files had left C{pending/} by then.
    """

    room: Mapping[str, int]
    skip: frozenset[str]
    uncounted: frozenset[str]
    counts: Mapping[str, int]
    reserved: Mapping[str, int]
    arrivals: int
    departures: int


class Backlog:
    """
    Each hook's pending jobs, its window of jobs held in memory, and the
    jobs of deliveries being committed; see the module docstring.

    Not thread-safe: the runner uses it in the reactor thread only.
    """

    def __init__(self, limits: Mapping[str, HookLimits], window: int = WINDOW) -> None:
        """
        @param limits: Each hook's bounds, by name, in the hooks' order.
        @param window: Jobs of one hook held in memory at most (see
            L{WINDOW}).
        """
        self._maxPending = {name: limit.maxPending for name, limit in limits.items()}
        self._window = {
            name: max(window, 2 * (limit.maxInFlight or 0)) for name, limit in limits.items()
        }
        self._deferLimit = {
            name: DEFER_WINDOWS * self._window[name] if limit.maxPending is None else limit.maxPending
            for name, limit in limits.items()
        }
        # Each hook's pending jobs: on disk in pending/, or prepared for a
        # delivery still being committed.  Kept up to date as jobs come
        # and go, and set again by each scan of the spool (which also
        # counts jobs put back by mailharbor hooks retry).
        self._counts = dict.fromkeys(limits, 0)
        # Each hook's jobs held in memory, by id.
        self._held: dict[str, set[str]] = {name: set() for name in limits}
        # Each hook's jobs waiting for a retry, not held: their due times
        # by id.  Their files are in pending/ (and counted), not read
        # until they are due.
        self._deferred: dict[str, dict[str, float]] = {name: {} for name in limits}
        # Jobs prepared for deliveries not yet committed, by id, with each
        # hook's count: neither dispatched nor read from the spool until
        # the commit has succeeded.
        self._committing: dict[str, str] = {}
        self._reserved = dict.fromkeys(limits, 0)
        # How many times jobs were prepared, and finished, so that a scan
        # can tell whether its listing could have missed or double-counted
        # a job; and whether a scan has yet counted the spool exactly.
        self._arrivals = 0
        self._departures = 0
        self._countsKnown = False
        # When each job id last finished (its file gone), so that a scan
        # that listed the file before it went does not run the job again.
        self._finished: dict[str, float] = {}
        # Each hook's jobs claimed by other instances sharing the spool,
        # as the last scan found them.
        self._elsewhere: dict[str, int] = {}

    @property
    def counts(self) -> dict[str, int]:
        """
        Each hook's pending jobs, by name: those in the spool's C{pending/}
        and those prepared for deliveries being committed.
        """
        return dict(self._counts)

    @property
    def held(self) -> dict[str, int]:
        """
        Each hook's jobs held in memory, by name.
        """
        return {name: len(ids) for name, ids in self._held.items()}

    @property
    def deferred(self) -> dict[str, int]:
        """
        Each hook's jobs waiting for a retry without being held, by name.
        """
        return {name: len(ids) for name, ids in self._deferred.items()}

    @property
    def deferLimits(self) -> dict[str, int]:
        """
        Each hook's jobs waiting for a retry remembered at most, by name:
        its C{max_pending}, or L{DEFER_WINDOWS} windows without one.
        """
        return dict(self._deferLimit)

    @property
    def nextDue(self) -> float | None:
        """
        When the first job waiting for a retry is due (it may be already),
        or L{None} if none is waiting: a scan then should read it.
        """
        return min((min(ids.values()) for ids in self._deferred.values() if ids), default=None)

    @property
    def windows(self) -> dict[str, int]:
        """
        Each hook's window: its jobs held in memory at most, by name.
        """
        return dict(self._window)

    def full(self) -> list[BacklogFull]:
        """
        Each hook that has C{max_pending} pending jobs, in the hooks' order:
        more jobs for it are refused (the runner raises the first).
        """
        return [
            BacklogFull(name, self._counts[name], limit)
            for name, limit in self._maxPending.items()
            if limit is not None and self._counts[name] >= limit
        ]

    def reserve(self, jobs: Sequence[Job]) -> None:
        """
        Count one delivery's jobs as pending, and as being committed:
        until L{settle} or L{release}, they are neither admitted nor read
        by a scan.
        """
        for job in jobs:
            self._committing[job.id] = job.hook
            self._reserved[job.hook] += 1
            self._counts[job.hook] += 1
        self._arrivals += 1

    def settle(self, job: Job) -> bool:
        """
        The delivery a job was reserved for is stored: it may be admitted,
        and read from the spool, from now on.

        @return: Whether it was being committed.
        """
        hook = self._committing.pop(job.id, None)
        if hook is None:
            return False
        self._reserved[hook] -= 1
        return True

    def release(self, jobs: Iterable[Job], now: float) -> None:
        """
        The delivery the jobs were reserved for was not stored: they are
        no longer pending, and are not admitted even if a scan that began
        earlier read their files.
        """
        for job in jobs:
            if self.settle(job):
                self._counts[job.hook] = max(0, self._counts[job.hook] - 1)
            self._finished[job.id] = now

    def admit(self, job: Job) -> bool:
        """
        Hold a job in memory, unless its hook is unknown, it is already
        held, just finished or being committed, or its hook's window is
        full (it then waits in the spool).

        @return: Whether it is now held.
        """
        held = self._held.get(job.hook)
        if held is None or self._tracked(job) or len(held) >= self._window[job.hook]:
            return False
        held.add(job.id)
        return True

    def _tracked(self, job: Job) -> bool:
        """
        Whether C{job} (of a known hook) is held, waiting for a retry, just
        finished or being committed.
        """
        return (
            job.id in self._held[job.hook]
            or job.id in self._deferred[job.hook]
            or job.id in self._finished
            or job.id in self._committing
        )

    def defer(self, job: Job) -> bool:
        """
        Remember a job that is not held and waits for a retry, by its id
        and due time only, so that it does not take room in its hook's
        window: scans skip its file until a scan begins at or after its
        C{due}, which then reads it again (L{nextDue} says when).

        Not for a job that is held, already waiting, just finished or
        being committed, or whose hook has L{deferLimits} jobs waiting: it
        is then held, if at all, by L{admit}.

        @return: Whether it is now remembered as waiting.
        """
        deferred = self._deferred.get(job.hook)
        if deferred is None or self._tracked(job) or len(deferred) >= self._deferLimit[job.hook]:
            return False
        deferred[job.id] = job.due
        return True

    def forget(self, job: Job) -> None:
        """
        Let go of a held job (it is over, or left in the spool), making
        room in its hook's window.
        """
        held = self._held.get(job.hook)
        if held is not None:
            held.discard(job.id)

    def finished(self, job: Job, changed: bool, now: float) -> None:
        """
        A job is over, and L{forget}ed if it was held.

        @param changed: Whether its file left C{pending/}; one that could
            not be changed stays there, counted, for a later scan.
        @param now: When: a scan that began before may have listed its
            file, and does not admit it.
        """
        if changed:
            self._counts[job.hook] = max(0, self._counts[job.hook] - 1)
            self._departures += 1
        self._finished[job.id] = now

    def beginScan(self, now: float) -> ScanPlan:
        """
        What a scan of the spool beginning now may read: each hook's
        window's room, none of the jobs held, waiting for a retry not yet
        due, just finished or being committed (so the memory a scan takes
        is bounded by the room).  Jobs waiting for a retry that are due
        now are no longer remembered: their files are read like any.
        """
        # A job whose file went before this scan started cannot be in its
        # listing, so only later ones need remembering (and skipping): a
        # job that finishes while the scan runs may be listed and must not
        # run again.  A job put back since it finished is read again.
        self._finished = {k: t for k, t in self._finished.items() if t >= now}
        committing = frozenset(self._committing)
        held = frozenset().union(*self._held.values())
        waiting: set[str] = set()
        for name, deferred in self._deferred.items():
            self._deferred[name] = deferred = {k: due for k, due in deferred.items() if due > now}
            waiting.update(deferred)
        return ScanPlan(
            room={name: self._window[name] - len(ids) for name, ids in self._held.items()},
            skip=held.union(waiting, self._finished, committing),
            uncounted=committing,
            counts=dict(self._counts),
            reserved=dict(self._reserved),
            arrivals=self._arrivals,
            departures=self._departures,
        )

    def scanned(
        self, plan: ScanPlan, counts: Mapping[str, int], writing: bool, elsewhere: Mapping[str, int] | None = None
    ) -> None:
        """
        Set the counts from what a scan's listing found.

        @param plan: What L{beginScan} returned for the scan.
        @param counts: Each hook's jobs the listing counted (all but
            L{ScanPlan.uncounted}), by name; unknown hooks are ignored.
        @param writing: Whether changes to job files are under way, which
            the listing may or may not have seen.
        @param elsewhere: Of C{counts}, each hook's jobs claimed by other
            instances sharing the spool (being run there): pending, but
            not for this instance to read.
        """
        self._elsewhere = dict(elsewhere or {})
        # The count is what the directory holds (jobs put back from the
        # dead letters and files removed by hand included), plus the jobs
        # being committed when the scan began (counted by their
        # reservations, whether or not their files were listed), plus what
        # changed since (those settled).  That is exact unless jobs were
        # prepared or finished while the directory was listed, or are
        # being changed: the listing may or may not have seen their files.
        # Then the count kept as jobs came and went stays, unless there is
        # none yet (mail arrived during the first scan): then this
        # estimate, off by no more than those jobs, serves until a later
        # scan (drain-driven or periodic) counts exactly.
        exact = (
            plan.arrivals == self._arrivals and plan.departures == self._departures and not writing
        )
        if exact or not self._countsKnown:
            for name in self._counts:
                moved = self._counts[name] - plan.counts[name]
                self._counts[name] = max(0, counts.get(name, 0) + plan.reserved[name] + moved)
        self._countsKnown = self._countsKnown or exact

    def wantsRefill(self) -> bool:
        """
        Whether a hook's window has drained to half while more of its jobs
        wait in the spool (other than those waiting for a retry): then a
        scan should read more, so the backlog drains as fast as the hook
        works, not one window per rescan.
        """
        for name, held in self._held.items():
            waiting = (
                self._counts[name]
                - len(held)
                - self._reserved[name]
                - len(self._deferred[name])
                - self._elsewhere.get(name, 0)
            )
            if waiting > 0 and len(held) <= self._window[name] // 2:
                return True
        return False
