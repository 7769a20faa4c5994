# -*- test-case-name: harbor.test.test_hookrunner -*-
"""
The hook runner: calls every hook for every stored copy at least once,
retrying failures and surviving restarts.

  1. At the end of the data, in the reactor thread, L{HookRunner.prepare}
     makes one job per (copy, hook), counting it as pending at once; a
     hook that already has C{max_pending} pending jobs refuses the message
     instead (L{BacklogFull}, a C{451 4.3.0} for the sender to retry).
  2. In the delivery's worker thread, once the copies are durable in
     C{tmp/} and before they are renamed into C{new/},
     L{HookRunner.persist} writes the job files into the spool
     (L{harbor.hooks.spool}) and fsyncs them.  A 250 reply therefore means
     both the message and its jobs are durable.  If the delivery fails
     after that, L{HookRunner.withdraw} removes them again; if the server
     dies in between, the next one finds the jobs of a message that never
     appeared, and drops each when it comes to run it.
  3. In the reactor thread, once the commit has succeeded (never before),
     L{HookRunner.dispatch} starts the jobs, or L{HookRunner.release}
     forgets them if it failed.  Each job runs on its own: a slow or
     failing hook delays neither the SMTP replies nor any other hook.  A
     job that succeeds is removed; one that fails is retried with
     exponential backoff, its attempt count kept in its file; one that
     keeps failing is parked in the dead letters, which C{mailharbor hooks
     list --dead} shows and C{mailharbor hooks retry} puts back.
  4. Only a window of each hook's jobs (L{WINDOW}) is held in memory; the
     rest wait in the spool, and are read from it, a window's worth at a
     time, as the window drains.  At start, L{HookRunner.start} counts the
     pending jobs and resumes the oldest, and the spool is looked at again
     every few seconds for jobs put back by C{mailharbor hooks retry}.
  5. A job waiting for a retry is not held in the window: once its file
     says when it is due, only its id and due time are kept, and the
     spool is read again when it is due, so jobs a hook keeps failing on
     never keep its other jobs waiting on disk.
  6. Several instances (processes) may share the spool: each attempt
     first claims its job (L{harbor.hooks.claims}), so no job is ever run
     by two at once and each retry count holds.  A delivery's jobs are
     written claimed by the instance that stored the message, which runs
     them, or puts them back in C{pending/} for any instance if its
     window is full; a failed attempt puts its job back with the attempt
     counted.  Each scan first takes over the claims of instances that
     have ended, and the counts that C{max_pending} bounds are the whole
     spool's, set by each scan (see L{harbor.hooks.backlog}).

The counting (pending jobs, the window, jobs being committed, what a scan
may read) is L{harbor.hooks.backlog.Backlog}'s; running each job held in
memory (its attempts, retries and the changes to its file) is
L{harbor.hooks.attempts.JobAttempts}'s; this module wires them to the
delivery, reads the spool to fill the window, and starts and stops the
service.

Nothing here imports the global reactor: the reactor and a way to run
blocking work in a thread are passed in.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from harbor.hooks.attempts import JobAttempts
from harbor.hooks.backlog import WINDOW, Backlog, HookLimits
from harbor.hooks.config import DEFAULT_MAX_PENDING, RESCAN_INTERVAL
from harbor.hooks.events import BacklogFull, Job, NewMessage, isJobID, jobID
from harbor.hooks.kinds import IHook, RunInThread
from harbor.hooks.spool import HookSpool, PendingScan
from harbor.store.fs import IFileSystem, StorageError

#: Seconds L{HookRunner.stop} waits for running hooks before cancelling them.
STOP_TIMEOUT = 10.0


class HookRunner(Service):
    """
    Runs the hooks for each stored message, at least once each, retrying
    failures and surviving restarts; see the module docstring.

    It is a service: L{startService} resumes what the spool holds and
    L{stopService} waits (boundedly) for running hooks.  L{record} and
    L{dispatch} are called by the delivery for each message.
    """

    _log = Logger()

    def __init__(
        self,
        spoolDirectory: str,
        hooks: Sequence[IHook],
        reactor: Any,
        runInThread: RunInThread[Any],
        *,
        fs: IFileSystem | None = None,
        rescanInterval: float = RESCAN_INTERVAL,
        stopTimeout: float = STOP_TIMEOUT,
        window: int = WINDOW,
        instance: str | None = None,
    ) -> None:
        """
        @param spoolDirectory: Where job files are kept, usually
            L{harbor.hooks.spool.spoolFor} the Maildir root.
        @param hooks: The hooks to call, each with a distinct name.
        @param reactor: Schedules retries and runs the hooks.
        @param runInThread: Runs blocking spool work off the reactor thread
            and returns a L{Deferred} of its result.
        @param rescanInterval: Seconds between looks at the spool for jobs
            put back with C{mailharbor hooks retry}.
        @param stopTimeout: Seconds L{stop} waits for running hooks before
            cancelling them.
        @param window: Jobs of one hook held in memory at most (see
            L{WINDOW}).
        @param instance: This runner's id for its claims in the spool
            (L{harbor.hooks.claims}); a new one by default.
        """
        names = [hook.name for hook in hooks]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"two hooks are named {duplicates[0]!r}")
        self.spool = HookSpool(spoolDirectory, fs, instance)
        self._hooks = {hook.name: hook for hook in hooks}
        self._reactor = reactor
        self._runInThread = runInThread
        self._rescanInterval = rescanInterval
        self._stopTimeout = stopTimeout
        self._backlog = Backlog(
            {
                # Hooks written before max_pending have no maxPending.
                hook.name: HookLimits(hook.maxInFlight, getattr(hook, "maxPending", DEFAULT_MAX_PENDING))
                for hook in hooks
            },
            window,
        )
        # The jobs held in memory, the same jobs as the backlog holds, are
        # run there.  Their log lines are the runner's: its logger is read
        # from it at each use (tests replace it on the class).
        self._attempts = JobAttempts(
            self._hooks,
            self.spool,
            reactor,
            runInThread,
            lambda: self._log,
            forgotten=self._backlog.forget,
            finished=self._jobFinished,
            waiting=self._jobWaiting,
        )
        # The delayed call that reads the spool when the first job waiting
        # for a retry is due, and when.
        self._wakeCall: Any = None
        self._wakeAt = 0.0
        # The hooks whose backlog was full when last looked at, logged
        # once as they fill and once as they drain.
        self._full: dict[str, BacklogFull] = {}
        self._scanAgain = False
        self._unknownHooks: set[str] = set()
        self._scanning = False
        self._loop: LoopingCall | None = None

    @property
    def hooks(self) -> tuple[IHook, ...]:
        """
        The hooks, in the order given.
        """
        return tuple(self._hooks.values())

    @property
    def active(self) -> dict[str, Job]:
        """
        The jobs this runner has scheduled or is running, by id: not those
        waiting in the spool for a retry (L{waitingCounts}).
        """
        return self._attempts.active

    @property
    def pendingCounts(self) -> dict[str, int]:
        """
        Each hook's pending jobs, by name: those in the spool's C{pending/}
        and those prepared for deliveries being committed.  Known without
        reading the spool.
        """
        return self._backlog.counts

    @property
    def waitingCounts(self) -> dict[str, int]:
        """
        Each hook's jobs waiting in the spool for a retry that is not due
        yet, by name: counted as pending, not held in memory.
        """
        return self._backlog.deferred

    def checkBacklog(self) -> None:
        """
        Refuse new mail while a hook has C{max_pending} pending jobs: at
        RCPT, so the client need not send the body, and again by
        L{prepare} at the end of the data.  Call it in the reactor thread.

        @raise BacklogFull: naming the first such hook (logged once as
            the hook fills, not at each refusal; see L{_noteBacklog}).
        """
        for full in self._noteBacklog().values():
            raise full

    def _noteBacklog(self) -> dict[str, BacklogFull]:
        """
        Log each hook whose backlog has just reached its C{max_pending}
        (one warning: mail is refused from now on), and each that has
        drained below it since (one line: mail is taken again): once per
        change, not per refused recipient, which under load would flood
        the log.

        @return: The hooks that are full, by name.
        """
        full = {state.hook: state for state in self._backlog.full()}
        for name, state in full.items():
            if name not in self._full:
                self._log.warn(
                    "Hook {hook} has {pending} pending jobs (max_pending {limit}): "
                    "new mail is refused with 451 until they drain",
                    hook=name,
                    pending=state.pending,
                    limit=state.limit,
                )
        counts = self._backlog.counts
        for name, state in self._full.items():
            if name not in full:
                self._log.info(
                    "Hook {hook} has {pending} pending jobs, below max_pending {limit}: "
                    "new mail is taken again",
                    hook=name,
                    pending=counts[name],
                    limit=state.limit,
                )
        self._full = full
        return full

    def prepare(self, events: Sequence[NewMessage]) -> list[Job]:
        """
        Make one job per (event, hook), and count them as pending, for a
        delivery about to be committed; nothing is written yet (see
        L{persist}).

        Call it in the reactor thread, once the message has ended.  With
        no hooks it does nothing at all.

        @return: The jobs, to pass to L{persist}, then to L{dispatch} if
            the delivery is stored or to L{release} if it is not.
        @raise BacklogFull: if a hook already has C{max_pending} pending
            jobs (logged, with the hook's name); nothing is counted.
        @raise StorageError: if an event's id cannot name a job file.
        """
        if not self._hooks or not events:
            return []
        self.checkBacklog()
        now = self._reactor.seconds()
        jobs = []
        for event in events:
            if not isJobID(event.id) or "," in event.id:
                raise StorageError(f"{event.id!r} cannot name a hook job")
            for name in self._hooks:
                jobs.append(Job(jobID(event, name), name, event, created=now, due=now))
        self._backlog.reserve(jobs)
        self._noteBacklog()
        return jobs

    def persist(self, jobs: Sequence[Job]) -> None:
        """
        Make jobs that L{prepare} made durable in the spool.

        Blocking: call it in the delivery's worker thread, once the
        message's files are durable and before they are renamed into
        C{new/}, so that no hook call is lost if the server dies after the
        250 reply.  It touches no state the reactor thread uses.

        @raise StorageError: if the jobs could not be written; none are
            left behind.
        """
        if jobs:
            # Claimed by this instance until the commit has succeeded: the
            # message is not in its Maildir yet, and another instance
            # sharing the spool would find it missing and drop the job.
            self.spool.add(jobs, claimed=True)

    def withdraw(self, jobs: Sequence[Job]) -> None:
        """
        Remove the files of jobs that L{persist} wrote for a delivery that
        then failed.  Blocking, like L{persist}; it never raises.
        """
        self.spool.discard(jobs)

    def release(self, jobs: Sequence[Job]) -> None:
        """
        Forget jobs that L{prepare} made for a delivery that was not stored:
        they are no longer pending, and are never run, even if a scan of
        the spool read one before L{withdraw} removed it.  Call it in the
        reactor thread.
        """
        self._backlog.release(jobs, self._reactor.seconds())
        self._noteBacklog()

    def record(self, events: Sequence[NewMessage]) -> list[Job]:
        """
        L{prepare} and L{persist} at once, in the calling (reactor)
        thread, for messages already stored: for tools and tests that
        record jobs without a delivery.  The jobs may be run from then on.

        @return: The jobs, to pass to L{dispatch}.
        @raise StorageError: if the jobs could not be written; none are
            left behind, and none is counted.
        """
        jobs = self.prepare(events)
        try:
            if jobs:
                # Already stored: pending at once, for any instance.
                self.spool.add(jobs)
        except BaseException:
            self.release(jobs)
            raise
        for job in jobs:
            self._backlog.settle(job)
        return jobs

    def dispatch(self, jobs: Sequence[Job]) -> None:
        """
        Start jobs that L{persist} wrote, once their delivery is stored and
        answered.  Call it in the reactor thread; it returns at once and
        never raises.

        Each job runs on the next turn of the reactor, on its own; those
        beyond the hook's window wait in the spool for their turn.  After
        L{stop}, jobs stay in the spool for the next start.
        """
        unclaim = []
        for job in jobs:
            try:
                self._backlog.settle(job)
                if not self._admit(job):
                    unclaim.append(job.id)
            except Exception:  # noqa: BLE001 -- logged: dispatch never raises
                self._log.failure("Cannot start hook job {job}", job=getattr(job, "id", job))
        if unclaim:
            # Written as claimed (see persist), and not run here now: left
            # for any instance, this one included, to read from pending/.
            self._inThread(lambda: self.spool.unclaim(unclaim), "put back hook jobs")

    def startService(self) -> None:
        super().startService()
        self.start()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return self.stop()

    def start(self) -> Deferred[None]:
        """
        Resume every job found in the spool, and look at it again every
        C{rescanInterval} seconds.  Without hooks, do nothing: pending jobs
        stay for when their hooks are configured again.

        @return: A L{Deferred} that fires once the spool has been read; it
            never fails (problems are logged).
        """
        self._attempts.start()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        if not self._hooks:
            return succeed(None)
        loop = self._loop = LoopingCall(self._rescan, resuming=False)
        loop.clock = self._reactor
        d = self._rescan(resuming=True)
        loop.start(self._rescanInterval, now=False)
        return d

    def stop(self) -> Deferred[None]:
        """
        Stop starting jobs, wait up to C{stopTimeout} seconds for running
        ones, then cancel those still running.  Jobs not finished stay in
        the spool, without an attempt counted, for the next start.

        @return: A L{Deferred} that fires when nothing is left running; it
            never fails.
        """
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        # No job is admitted from here on: the attempts' stop says so
        # before it first waits.
        stopped = self._attempts.stop(self._stopTimeout)
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        await stopped
        if self._wakeCall is not None and self._wakeCall.active():
            self._wakeCall.cancel()
        self._wakeCall = None
        closing = []
        for hook in self._hooks.values():
            closing.append(maybeDeferred(hook.stop))
        for outcome in await DeferredList(closing, consumeErrors=True):
            if not outcome[0]:
                self._log.failure("Error stopping a hook", cast(Failure, outcome[1]))
        # Jobs whose attempts were cancelled are still claimed: any
        # instance may run them now.
        await self._inThread(self.spool.releaseAll, "put back the claimed hook jobs")

    def _inThread(self, work: Any, what: str) -> Deferred[None]:
        """
        Do blocking spool work in a thread, logging (not raising) a
        failure.
        """
        d: Deferred[Any] = maybeDeferred(self._runInThread, work)

        def failed(failure: Failure) -> None:
            self._log.failure("Cannot {what} in the spool {directory}", failure, what=what, directory=self.spool.directory)

        d.addCallbacks(lambda ignored: None, failed)
        return d

    def _rescan(self, resuming: bool) -> Deferred[None]:
        """
        Count the spool's pending jobs, and read and schedule as many of
        the oldest as each hook's window has room for.
        """
        if self._scanning:
            # Looked at again once this scan is over: what it reads was
            # chosen before the window had room for more.
            self._scanAgain = True
            return succeed(None)
        self._scanning = True
        self._scanAgain = False
        plan = self._backlog.beginScan(self._reactor.seconds())

        def read() -> PendingScan:
            # Nothing is created here: the spool appears with the first
            # job, so a server without hooks leaves no trace on disk.
            # Jobs claimed by instances that have ended are pending again.
            self.spool.takeOver()
            return self.spool.scan(plan.room, plan.skip, uncounted=plan.uncounted)

        def found(scan: PendingScan) -> None:
            # A spool write under way may have changed a file the listing
            # saw, or not: then the counts are not set from it.
            self._backlog.scanned(plan, scan.counts, writing=self._attempts.writing, elsewhere=scan.elsewhere)
            for name in scan.counts:
                if name not in self._hooks:
                    self._unknownHook(name)
            self._noteBacklog()
            admitted = 0
            waiting = self._backlog.deferred
            for job in scan.jobs:
                try:
                    # A retry coming due is not news: its failure was
                    # logged with when it would be tried again.
                    admitted += self._admit(job) and (resuming or not job.attempts)
                except Exception:  # noqa: BLE001 -- logged: one bad job stops no others
                    self._log.failure("Cannot start hook job {job}", job=job.id)
            if self._backlog.deferred != waiting:
                # Jobs read that wait for a retry took no room: read on,
                # past them, for jobs that are due.
                self._scanAgain = True
            if admitted:
                self._log.info(
                    "{what} {count} pending hook jobs",
                    what="Resuming" if resuming else "Found",
                    count=admitted,
                )

        def failed(failure: Failure) -> None:
            self._log.failure(
                "Cannot read the hook spool {directory}", failure, directory=self.spool.directory
            )

        def done(ignored: object) -> None:
            self._scanning = False
            self._wake()
            if self._scanAgain:
                self._scanAgain = False
                self._refill()

        d = self._runInThread(read)
        d.addCallbacks(found, failed)
        d.addBoth(done)
        return d

    def _refill(self) -> None:
        """
        Read more jobs from the spool if a hook's window has drained to
        half while more of its jobs wait there: so the backlog drains as
        fast as the hook works, not one window per rescan interval.
        """
        if not self._attempts.stopping and self._backlog.wantsRefill():
            self._rescan(resuming=False)

    def _admit(self, job: Job) -> bool:
        """
        Schedule a job unless it is already scheduled, running, waiting
        for a retry, just finished or being committed, or its hook's
        window is full (it then waits in the spool).  A job not due yet is
        left in the spool until it is, remembered by id and due time,
        taking no room in the window (unless its hook has too many such
        jobs: then it waits in the window).

        @return: whether it was scheduled.
        """
        if self._attempts.stopping:
            return False
        if job.hook not in self._hooks:
            self._unknownHook(job.hook)
            return False
        if job.due > self._reactor.seconds() and self._backlog.defer(job):
            self._wake(job.due)
            return False
        if not self._backlog.admit(job):
            return False
        self._attempts.schedule(job)
        return True

    def _unknownHook(self, name: str) -> None:
        """
        Warn, once per hook, of jobs in the spool for a hook that is not
        configured.
        """
        if name not in self._unknownHooks:
            self._unknownHooks.add(name)
            self._log.warn(
                "Hook jobs for {hook}, which is not configured, are kept in "
                "the spool until it is again",
                hook=name,
            )

    def _jobFinished(self, job: Job, changed: bool) -> None:
        """
        A job is over and forgotten: uncount it if its file left
        C{pending/}, and make room in its hook's window for a job waiting
        in the spool.
        """
        self._backlog.finished(job, changed, self._reactor.seconds())
        self._noteBacklog()
        self._refill()

    def _jobWaiting(self, job: Job) -> None:
        """
        A job that failed was let go of once its file said when its retry
        is due: leave it in the spool until then, taking no room in its
        hook's window, which is refilled from the spool.
        """
        try:
            self._admit(job)
        except Exception:  # noqa: BLE001 -- logged: the job stays in the spool for a scan
            self._log.failure("Cannot schedule the retry of hook job {job}", job=job.id)
        self._refill()

    def _wake(self, due: float | None = None) -> None:
        """
        Read the spool again when the first job waiting for a retry is
        due, so that it is attempted then, not at the next rescan.

        @param due: When a job just left waiting is due; without it, the
            first due of all those waiting is looked up.
        """
        if due is None:
            due = self._backlog.nextDue
        if due is None or self._attempts.stopping:
            return
        if self._wakeCall is not None and self._wakeCall.active():
            if self._wakeAt <= due:
                return
            self._wakeCall.cancel()
        self._wakeAt = due
        self._wakeCall = self._reactor.callLater(max(0.0, due - self._reactor.seconds()), self._retriesDue)

    def _retriesDue(self) -> None:
        """
        A job waiting for a retry is due: read it (and any other due) from
        the spool.
        """
        self._wakeCall = None
        if not self._attempts.stopping:
            self._rescan(resuming=False)
