# -*- test-case-name: harbor.test.test_hookrunner -*-
"""
The hook runner: calls every hook for every stored copy at least once,
retrying failures and surviving restarts.

  1. In the delivery's worker thread, right after the Maildir commit and
     before the 250 reply, L{HookRunner.record} writes one job file per
     (copy, hook) into the spool (L{harbor.hooks.spool}) and fsyncs it.  A
     crash after the 250 therefore loses no hook call.
  2. In the reactor thread, after the reply, L{HookRunner.dispatch} starts
     the jobs.  Each job runs on its own: a slow or failing hook delays
     neither the SMTP replies nor any other hook.  A job that succeeds is
     removed; one that fails is retried with exponential backoff, its
     attempt count kept in its file; one that keeps failing is parked in
     the dead letters, which C{mailharbor hooks list --dead} shows and
     C{mailharbor hooks retry} puts back.
  3. At start, L{HookRunner.start} resumes every job left in the spool,
     and the spool is looked at again every few seconds for jobs put back
     by C{mailharbor hooks retry}.

Nothing here imports the global reactor: the reactor and a way to run
blocking work in a thread are passed in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, cast

from twisted.application.service import Service
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredList,
    DeferredSemaphore,
    maybeDeferred,
    succeed,
)
from twisted.internet.task import LoopingCall
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from attrs import evolve

from harbor.hooks.config import RESCAN_INTERVAL
from harbor.hooks.events import (
    HookFailed,
    Job,
    NewMessage,
    PermanentHookFailure,
    describe,
    isJobID,
    jobID,
)
from harbor.hooks.kinds import IHook, RunInThread
from harbor.hooks.spool import HookSpool
from harbor.store.fs import IFileSystem, StorageError

#: Seconds L{HookRunner.stop} waits for running hooks before cancelling them.
STOP_TIMEOUT = 10.0


class _Entry:
    """
    What the runner knows of one job while it is scheduled or running.

    @ivar call: The delayed call of its next attempt, while one is waiting.
    @ivar running: The attempt in progress, if one is.
    @ivar writing: The last spool write for it; writes for one job happen
        in order, so an old update can never undo a later removal.
    """

    def __init__(self, job: Job) -> None:
        self.job = job
        self.call: Any = None
        self.running: Deferred[object] | None = None
        self.writing: Deferred[None] | None = None


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
        """
        names = [hook.name for hook in hooks]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"two hooks are named {duplicates[0]!r}")
        self.spool = HookSpool(spoolDirectory, fs)
        self._hooks = {hook.name: hook for hook in hooks}
        self._limits = {
            hook.name: DeferredSemaphore(hook.maxInFlight)
            for hook in hooks
            if hook.maxInFlight is not None
        }
        self._reactor = reactor
        self._runInThread = runInThread
        self._rescanInterval = rescanInterval
        self._stopTimeout = stopTimeout
        self._entries: dict[str, _Entry] = {}
        # When each job id last finished (its file gone), so that a scan
        # that listed the file before it went does not run the job again.
        self._finished: dict[str, float] = {}
        self._writes: set[Deferred[None]] = set()
        self._unknownHooks: set[str] = set()
        self._stopping = False
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
        The jobs this runner has scheduled or is running, by id.
        """
        return {key: entry.job for key, entry in self._entries.items()}

    def record(self, events: Sequence[NewMessage]) -> list[Job]:
        """
        Make one job per (event, hook) durable.

        Blocking: call it in the delivery's worker thread, after the Maildir
        commit and before the 250 reply, so that no hook call is lost if
        the server dies after replying.  It touches no state the reactor
        thread uses, and with no hooks it does nothing at all.

        @return: The jobs, to pass to L{dispatch} once the reply is sent.
        @raise StorageError: if the jobs could not be written; none are
            left behind.
        """
        if not self._hooks or not events:
            return []
        now = self._reactor.seconds()
        jobs = []
        for event in events:
            if not isJobID(event.id) or "," in event.id:
                raise StorageError(f"{event.id!r} cannot name a hook job")
            for name in self._hooks:
                jobs.append(Job(jobID(event, name), name, event, created=now, due=now))
        self.spool.add(jobs)
        return jobs

    def dispatch(self, jobs: Sequence[Job]) -> None:
        """
        Start jobs that L{record} wrote.  Call it in the reactor thread; it
        returns at once and never raises.

        Each job runs on the next turn of the reactor, on its own.  After
        L{stop}, jobs stay in the spool for the next start.
        """
        for job in jobs:
            try:
                self._admit(job)
            except Exception:  # noqa: BLE001 -- logged: dispatch never raises
                self._log.failure("Cannot start hook job {job}", job=getattr(job, "id", job))

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
        self._stopping = False
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
        self._stopping = True
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        for key, entry in list(self._entries.items()):
            if entry.call is not None:
                entry.call.cancel()
                entry.call = None
            if entry.running is None:
                del self._entries[key]
        running = [entry.running for entry in self._entries.values() if entry.running is not None]
        if running:
            self._log.info("Waiting for {count} running hook jobs", count=len(running))

            def cancel() -> None:
                self._log.warn(
                    "Hook jobs still running after {seconds}s; cancelling them",
                    seconds=self._stopTimeout,
                )
                for d in running:
                    d.cancel()

            timer = self._reactor.callLater(self._stopTimeout, cancel)
            await DeferredList(running, consumeErrors=True)
            if timer.active():
                timer.cancel()
        while self._writes:
            await DeferredList(list(self._writes), consumeErrors=True)
        self._entries.clear()
        closing = []
        for hook in self._hooks.values():
            closing.append(maybeDeferred(hook.stop))
        for outcome in await DeferredList(closing, consumeErrors=True):
            if not outcome[0]:
                self._log.failure("Error stopping a hook", cast(Failure, outcome[1]))

    def _rescan(self, resuming: bool) -> Deferred[None]:
        if self._scanning:
            return succeed(None)
        self._scanning = True
        started = self._reactor.seconds()

        def read() -> list[Job]:
            # Nothing is created here: the spool appears with the first
            # job, so a server without hooks leaves no trace on disk.
            return self.spool.pendingJobs()

        def found(jobs: list[Job]) -> None:
            # A job whose file went before this scan started cannot be in
            # its listing, so only later ones need remembering: a job that
            # finished after the scan started may be listed and must not
            # run again.
            self._finished = {k: t for k, t in self._finished.items() if t >= started}
            admitted = 0
            for job in jobs:
                try:
                    admitted += self._admit(job)
                except Exception:  # noqa: BLE001 -- logged: one bad job stops no others
                    self._log.failure("Cannot start hook job {job}", job=job.id)
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

        d = self._runInThread(read)
        d.addCallbacks(found, failed)
        d.addBoth(done)
        return d

    def _admit(self, job: Job) -> bool:
        """
        Schedule a job unless it is already scheduled, running or just
        finished.

        @return: whether it was scheduled.
        """
        if self._stopping or job.id in self._entries or job.id in self._finished:
            return False
        if job.hook not in self._hooks:
            if job.hook not in self._unknownHooks:
                self._unknownHooks.add(job.hook)
                self._log.warn(
                    "Hook jobs for {hook}, which is not configured, are kept in "
                    "the spool until it is again",
                    hook=job.hook,
                )
            return False
        entry = self._entries[job.id] = _Entry(job)
        self._schedule(entry, job.due - self._reactor.seconds())
        return True

    def _schedule(self, entry: _Entry, delay: float) -> None:
        entry.call = self._reactor.callLater(max(0.0, delay), self._attempt, entry)

    def _attempt(self, entry: _Entry) -> None:
        entry.call = None
        hook = self._hooks[entry.job.hook]
        limit = self._limits.get(hook.name)
        if limit is None:
            d = maybeDeferred(hook.run, entry.job.event)
        else:
            d = limit.run(hook.run, entry.job.event)
        entry.running = d
        d.addCallbacks(
            self._succeeded, self._failed, callbackArgs=(entry,), errbackArgs=(entry, hook)
        )
        d.addErrback(
            lambda f: self._log.failure(
                "Error handling the outcome of hook job {job}", f, job=entry.job.id
            )
        )

    def _succeeded(self, result: object, entry: _Entry) -> None:
        entry.running = None
        self._log.debug("Hook {hook} done for {id}", hook=entry.job.hook, id=entry.job.event.id)
        job = entry.job
        self._finish(entry, lambda: self.spool.remove(job), "remove")

    def _failed(self, failure: Failure, entry: _Entry, hook: IHook) -> None:
        entry.running = None
        job = entry.job
        if self._stopping and failure.check(CancelledError):
            # Interrupted by shutdown, not failed: left as it is on disk.
            self._entries.pop(job.id, None)
            return
        attempts = job.attempts + 1
        error = describe(failure)
        fields = {
            "hook": job.hook,
            "id": job.event.id,
            "recipient": job.event.recipient,
            "attempt": attempts,
            "attempts": hook.retry.attempts,
            "error": error,
        }
        if not failure.check(HookFailed):
            self._log.failure(
                "Hook {hook} raised for {id} to {recipient} (attempt {attempt} of {attempts})",
                failure,
                LogLevel.warn,
                **fields,
            )
        if attempts >= hook.retry.attempts or failure.check(PermanentHookFailure):
            self._log.error(
                "Hook {hook} gave up on {id} to {recipient} after {attempt} attempts: {error}; "
                "parked as dead letter {job} (mailharbor hooks retry {job})",
                job=job.id,
                **fields,
            )
            dead = evolve(job, attempts=attempts, due=self._reactor.seconds(), error=error)
            self._finish(entry, lambda: self.spool.bury(dead), "bury")
            return
        delay = hook.retry.delayAfter(attempts)
        entry.job = evolve(job, attempts=attempts, due=self._reactor.seconds() + delay, error=error)
        self._log.warn(
            "Hook {hook} failed for {id} to {recipient} (attempt {attempt} of {attempts}): "
            "{error}; trying again in {delay:g}s",
            delay=delay,
            **fields,
        )
        updated = entry.job
        self._write(entry, lambda: self.spool.update(updated), "update")
        if self._stopping:
            self._entries.pop(job.id, None)
        else:
            self._schedule(entry, delay)

    def _finish(self, entry: _Entry, operation: Callable[[], None], what: str) -> None:
        """
        The job is over: change its file, and forget it once that is done.
        """
        def forget(ignored: object) -> None:
            if self._entries.get(entry.job.id) is entry:
                del self._entries[entry.job.id]
            self._finished[entry.job.id] = self._reactor.seconds()

        self._write(entry, operation, what).addCallback(forget)

    def _write(self, entry: _Entry, operation: Callable[[], None], what: str) -> Deferred[None]:
        """
        Change a job's file in a worker thread, after any earlier change
        to it.  A failure is logged: the job then stays as it was on disk.
        """
        done: Deferred[None] = Deferred()
        previous = entry.writing
        entry.writing = done
        self._writes.add(done)

        def begin(ignored: object = None) -> None:
            d = maybeDeferred(self._runInThread, operation)
            d.addErrback(
                lambda f: self._log.failure(
                    "Cannot {what} hook job {job} in the spool", f, what=what, job=entry.job.id
                )
            )
            d.addBoth(lambda ignored: done.callback(None))

        def written(result: None) -> None:
            self._writes.discard(done)
            return result

        done.addBoth(written)
        if previous is None:
            begin()
        else:
            previous.addBoth(begin)
        return done

