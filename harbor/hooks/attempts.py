# -*- test-case-name: harbor.test.test_hookrunner -*-
"""
Running the hook jobs the runner holds in memory: each attempt, what its
outcome does to the job's file in the spool, and the retries.

L{harbor.hooks.runner.HookRunner} decides which jobs to hold (its window,
read from the spool) and when the service starts and stops;
L{JobAttempts} takes each job it is given from there: it waits until the
job is due, claims it in the spool (so that no other instance sharing
the spool runs it meanwhile; one that has it, or has since tried it and
made it wait for a retry, wins, and the job is let go of here), calls
the hook within the hook's C{max_in_flight} with the job's delivery id,
and then removes the job's file, buries it as a dead letter, or updates
it (giving up the claim) and tries again later.  Once the updated file says when the job is next due,
it lets go of the job and hands it back to the runner, which leaves it
on disk until then (so jobs waiting for a retry do not fill the window);
if the file could not be updated, the job waits in memory instead.
Changes to one job's file are made in order, in a worker thread.  It
tells the runner when it lets go of a job and when a job is over, so the
runner can keep its count and refill its window.

It logs under the runner's namespace (operators filter the runner's log
by it), through the runner's own logger.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, cast

from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredList,
    DeferredSemaphore,
    maybeDeferred,
    succeed,
)
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from attrs import evolve

from harbor.hooks.events import (
    HookFailed,
    Job,
    MessageGone,
    PermanentHookFailure,
    describe,
)
from harbor.hooks.kinds import IHook, RunInThread
from harbor.hooks.spool import Claim, HookSpool


class _NeverStored(Exception):
    """
    A job's message is in neither C{new/} nor C{cur/} of its Maildir when
    the job comes to run: its delivery failed after the job was written
    (or a mail reader deleted it since).
    """


class _TakenElsewhere(Exception):
    """
    A job's file was not in C{pending/} when it came to be claimed: another
    instance sharing the spool has it, or has finished it.
    """


class _NotDue(Exception):
    """
    A job, read again as it was claimed, is waiting for a retry that is
    not due yet: another instance tried it since this one read it.

    @ivar job: The job as its file now says.
    """

    def __init__(self, job: Job) -> None:
        super().__init__(job.id)
        self.job = job


class _Entry:
    """
    What is known of one job while it is scheduled or running.

    @ivar call: The delayed call of its next attempt, while one is waiting.
    @ivar running: The attempt in progress, if one is.
    @ivar writing: The last spool write for it; writes for one job happen
        in order, so an old update can never undo a later removal.
    """

    def __init__(self, job: Job) -> None:
        self.job = job
        self.call: Any = None
        self.running: Deferred[object] | None = None
        self.writing: Deferred[bool] | None = None


class JobAttempts:
    """
    Runs each job it is given until it succeeds, is given up on, or is
    left in the spool by L{stop}; see the module docstring.
    """

    def __init__(
        self,
        hooks: Mapping[str, IHook],
        spool: HookSpool,
        reactor: Any,
        runInThread: RunInThread[Any],
        log: Callable[[], Logger],
        *,
        forgotten: Callable[[Job], None],
        finished: Callable[[Job, bool], None],
        waiting: Callable[[Job], None],
    ) -> None:
        """
        @param hooks: The hooks, by name; every job given is for one of them.
        @param spool: Where the jobs' files are changed as they end or fail.
        @param reactor: Schedules attempts and retries.
        @param runInThread: Runs blocking work (locating a message, changing
            a job's file) off the reactor thread.
        @param log: Returns the runner's logger, read at each use so that
            these lines keep its namespace and source.
        @param forgotten: Called with each job let go of, whether it is
            over or left in the spool.
        @param finished: Called, after C{forgotten}, with a job that is
            over and whether its file left C{pending/}.
        @param waiting: Called, after C{forgotten}, with a job let go of
            once its file says when its retry is due; the runner gives it
            again (L{schedule}) when it is to be attempted, or at once, to
            wait in memory.
        """
        self._hooks = hooks
        self._limits = {
            hook.name: DeferredSemaphore(hook.maxInFlight)
            for hook in hooks.values()
            if hook.maxInFlight is not None
        }
        self._spool = spool
        self._reactor = reactor
        self._runInThread = runInThread
        self._log = log
        self._forgotten = forgotten
        self._finished = finished
        self._waiting = waiting
        self._entries: dict[str, _Entry] = {}
        self._writes: set[Deferred[bool]] = set()
        self._stopping = False

    @property
    def active(self) -> dict[str, Job]:
        """
        The jobs scheduled or running, by id.
        """
        return {key: entry.job for key, entry in self._entries.items()}

    @property
    def writing(self) -> bool:
        """
        Whether a change to a job's file is under way.
        """
        return bool(self._writes)

    @property
    def stopping(self) -> bool:
        """
        Whether L{stop} was called since the last L{start}: no job is to be
        given then.
        """
        return self._stopping

    def start(self) -> None:
        """
        Take jobs again after L{stop}.
        """
        self._stopping = False

    def schedule(self, job: Job) -> None:
        """
        Hold a job and attempt it when it is due.  The runner gives each
        job once until it is forgotten.
        """
        entry = self._entries[job.id] = _Entry(job)
        self._schedule(entry, job.due - self._reactor.seconds())

    def stop(self, timeout: float) -> Deferred[None]:
        """
        Start no more attempts, wait up to C{timeout} seconds for running
        ones, then cancel those still running, and wait for the changes to
        job files under way.  Jobs not finished stay in the spool, without
        an attempt counted, and are forgotten.

        @return: A L{Deferred} that fires when nothing is left running or
            being written; it never fails.
        """
        return Deferred.fromCoroutine(self._stop(timeout))

    async def _stop(self, timeout: float) -> None:
        self._stopping = True
        for entry in list(self._entries.values()):
            if entry.call is not None:
                entry.call.cancel()
                entry.call = None
            if entry.running is None:
                self._forget(entry)
        running = [entry.running for entry in self._entries.values() if entry.running is not None]
        if running:
            self._log().info("Waiting for {count} running hook jobs", count=len(running))

            def cancel() -> None:
                self._log().warn(
                    "Hook jobs still running after {seconds}s; cancelling them",
                    seconds=timeout,
                )
                for d in running:
                    d.cancel()

            timer = self._reactor.callLater(timeout, cancel)
            await DeferredList(running, consumeErrors=True)
            if timer.active():
                timer.cancel()
        while self._writes:
            await DeferredList(list(self._writes), consumeErrors=True)
        for entry in list(self._entries.values()):
            self._forget(entry)

    def _forget(self, entry: _Entry) -> None:
        """
        Let go of a job held in memory (it is over, or left in the spool).
        """
        if self._entries.get(entry.job.id) is entry:
            del self._entries[entry.job.id]
            self._forgotten(entry.job)

    def _schedule(self, entry: _Entry, delay: float) -> None:
        entry.call = self._reactor.callLater(max(0.0, delay), self._attempt, entry)

    def _attempt(self, entry: _Entry) -> None:
        entry.call = None
        hook = self._hooks[entry.job.hook]
        limit = self._limits.get(hook.name)

        def missing(failure: Failure) -> Failure:
            # The message was not found before the hook was called: it
            # never appeared (its delivery failed after the job was
            # written), so there is nobody to tell.
            if failure.check(MessageGone):
                return Failure(_NeverStored(str(failure.value)))
            return failure

        def claimed(claim: Claim | None) -> Deferred[object]:
            if claim is None:
                raise _TakenElsewhere(entry.job.id)
            if not claim.due:
                raise _NotDue(claim.job)
            # The file's job, not the one read earlier: another instance
            # may have tried it since, and its attempts are the count.
            entry.job = claim.job
            delivery = evolve(claim.job.event, deliveryId=claim.job.id)
            d: Deferred[Any] = self._runInThread(delivery.locate)
            d.addErrback(missing)
            d.addCallback(lambda path: hook.run(delivery))
            return d

        def attempt() -> Deferred[object]:
            # Blocking: claiming the job reads its file, and locating the
            # message may list its Maildir.  Done within the hook's limit,
            # so that no more of these wait for a thread than the hook has
            # calls running, and no job is claimed before it can run.
            jobID = entry.job.id

            def claim(ignored: object) -> Deferred[Claim | None]:
                now = self._reactor.seconds()
                return self._runInThread(lambda: self._spool.claim(jobID, now))

            # Not before this job's earlier file changes are done: the
            # update of a failed attempt gives up its claim, which must
            # not undo this one.
            d: Deferred[Any] = self._afterWrites(entry)
            d.addCallback(claim)
            d.addCallback(claimed)
            return d

        d = maybeDeferred(attempt) if limit is None else limit.run(attempt)
        entry.running = d
        d.addCallbacks(
            self._succeeded, self._failed, callbackArgs=(entry,), errbackArgs=(entry, hook)
        )
        d.addErrback(
            lambda f: self._log().failure(
                "Error handling the outcome of hook job {job}", f, job=entry.job.id
            )
        )

    def _succeeded(self, result: object, entry: _Entry) -> None:
        entry.running = None
        self._log().debug(
            "Hook {hook} done for {id}", hook=entry.job.hook, id=entry.job.event.id, harbor_event="hook_delivered"
        )
        job = entry.job
        self._finish(entry, lambda: self._spool.remove(job), "remove")

    def _failed(self, failure: Failure, entry: _Entry, hook: IHook) -> None:
        entry.running = None
        job = entry.job
        if self._stopping and failure.check(CancelledError):
            # Interrupted by shutdown, not failed: left as it is on disk.
            self._forget(entry)
            return
        if failure.check(_TakenElsewhere):
            # Never attempted here: its file stays where it is, counted.
            self._log().debug("Hook job {job} is run by another instance", job=job.id)
            self._forget(entry)
            self._finished(job, False)
            return
        if failure.check(_NotDue):
            entry.job = cast(_NotDue, failure.value).job
            self._forget(entry)
            self._waiting(entry.job)
            return
        if failure.check(_NeverStored):
            self._log().info(
                "Hook job {job} dropped: message {id} is not in its Maildir "
                "(its delivery failed, or it was deleted)",
                job=job.id,
                id=job.event.id,
                hook=job.hook,
            )
            self._finish(entry, lambda: self._spool.remove(job), "remove")
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
            self._log().failure(
                "Hook {hook} raised for {id} to {recipient} (attempt {attempt} of {attempts})",
                failure,
                LogLevel.warn,
                **fields,
            )
        if attempts >= hook.retry.attempts or failure.check(PermanentHookFailure):
            self._log().error(
                "Hook {hook} gave up on {id} to {recipient} after {attempt} attempts: {error}; "
                "parked as dead letter {job} (mailharbor hooks retry {job})",
                job=job.id,
                harbor_event="hook_dead",
                **fields,
            )
            dead = evolve(job, attempts=attempts, due=self._reactor.seconds(), error=error)
            self._finish(entry, lambda: self._spool.bury(dead), "bury")
            return
        delay = hook.retry.delayAfter(attempts)
        entry.job = evolve(job, attempts=attempts, due=self._reactor.seconds() + delay, error=error)
        self._log().warn(
            "Hook {hook} failed for {id} to {recipient} (attempt {attempt} of {attempts}): "
            "{error}; trying again in {delay:g}s",
            delay=delay,
            **fields,
        )
        updated = entry.job
        written = self._write(entry, lambda: self._spool.update(updated), "update")
        if self._stopping:
            self._forget(entry)
        else:
            self._schedule(entry, delay)
            written.addCallback(self._retryWritten, entry)

    def _retryWritten(self, changed: bool, entry: _Entry) -> None:
        """
        A job's file now says when its retry is due: let go of the job, so
        that it does not wait in its hook's window, and hand it back to
        the runner.  Not if the change failed (the file would have it
        attempted at once, with its old count), or if the job is no longer
        waiting here (stopped, or already attempted again).
        """
        if not changed or self._stopping or entry.call is None or self._entries.get(entry.job.id) is not entry:
            return
        entry.call.cancel()
        entry.call = None
        self._forget(entry)
        self._waiting(entry.job)

    def _finish(self, entry: _Entry, operation: Callable[[], None], what: str) -> None:
        """
        The job is over: change its file, and forget it once that is done,
        telling the runner, which makes room in its hook's window for a job
        waiting in the spool.
        """
        def forget(changed: bool) -> None:
            self._forget(entry)
            self._finished(entry.job, changed)

        self._write(entry, operation, what).addCallback(forget)

    def _afterWrites(self, entry: _Entry) -> Deferred[None]:
        """
        A L{Deferred} that fires once the changes to a job's file under way
        are done, leaving their results alone.
        """
        previous = entry.writing
        if previous is None:
            return succeed(None)
        done: Deferred[None] = Deferred()

        def passOn(result: object) -> object:
            done.callback(None)
            return result

        previous.addBoth(passOn)
        return done

    def _write(self, entry: _Entry, operation: Callable[[], None], what: str) -> Deferred[bool]:
        """
        Change a job's file in a worker thread, after any earlier change
        to it.  A failure is logged: the job then stays as it was on disk.

        @return: A L{Deferred} that fires with whether the change was made;
            it never fails.
        """
        done: Deferred[bool] = Deferred()
        previous = entry.writing
        entry.writing = done
        self._writes.add(done)

        def begin(ignored: object = None) -> None:
            d = maybeDeferred(self._runInThread, operation)
            d.addCallbacks(lambda ignored: True, failed)
            d.addCallback(done.callback)

        def failed(failure: Failure) -> bool:
            self._log().failure(
                "Cannot {what} hook job {job} in the spool", failure, what=what, job=entry.job.id
            )
            return False

        def written(changed: bool) -> bool:
            self._writes.discard(done)
            return changed

        done.addCallback(written)
        if previous is None:
            begin()
        else:
            previous.addBoth(begin)
        return done
