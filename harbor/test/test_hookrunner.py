"""
Tests for L{harbor.hooks.runner} and the spool it keeps
(L{harbor.hooks.spool}): recording jobs, running them, retries, dead
letters and resuming after a restart.

The runner's scheduling is tested on a L{Clock} with blocking work run
synchronously.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

from zope.interface import implementer
from zope.interface.verify import verifyObject

from twisted.application.service import IService
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from harbor.hooks.config import RetryPolicy
from harbor.hooks.events import HookFailed, Job, NewMessage, PermanentHookFailure
from harbor.hooks.kinds import IHook
from harbor.hooks.runner import HookRunner
from harbor.hooks.spool import spoolFor
from harbor.store.fs import StorageError
from harbor.test._hooksupport import NOW, storeMessage
from harbor.test._support import RecordingFileSystem, runSynchronously

WAIT = object()
# A FakeHook's retry policy unless a test gives one.
FAKE_RETRY = RetryPolicy(attempts=3, backoff=10, maxBackoff=15)


@implementer(IHook)
class FakeHook:
    """
    A hook whose calls are recorded and whose outcomes are scripted.

    @ivar outcomes: One per call, in order: L{None} for success, an
        exception to fail with, or L{WAIT} for a L{Deferred} the test
        fires (kept in C{waiting}).  Calls beyond the script succeed.
    """

    def __init__(
        self,
        name: str = "fake",
        outcomes: list[object] | None = None,
        retry: RetryPolicy = FAKE_RETRY,
        maxInFlight: int | None = None,
    ) -> None:
        self.name = name
        self.retry = retry
        self.maxInFlight = maxInFlight
        self.outcomes = list(outcomes or [])
        self.calls: list[NewMessage] = []
        self.waiting: list[Deferred[object]] = []
        self.cancelled: list[NewMessage] = []
        self.stopped = False

    def run(self, event: NewMessage) -> Deferred[object]:
        self.calls.append(event)
        outcome = self.outcomes.pop(0) if self.outcomes else None
        if outcome is WAIT:
            d: Deferred[object] = Deferred(lambda d: self.cancelled.append(event))
            self.waiting.append(d)
            return d
        if isinstance(outcome, BaseException):
            return fail(outcome)
        return succeed(None)

    def stop(self) -> None:
        self.stopped = True


class RunnerTestCase(SynchronousTestCase):
    """
    A runner on a L{Clock}, with a spool in a temporary directory and
    blocking work done synchronously.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.spoolDirectory = os.path.abspath(self.mktemp())
        self.fs = RecordingFileSystem()
        self.event = storeMessage(self)

    def runner(self, *hooks: IHook, **kwargs: Any) -> HookRunner:
        """
        A runner on the test's spool and clock, stopped at cleanup.
        """
        runner = HookRunner(self.spoolDirectory, hooks, self.clock, runSynchronously, fs=self.fs, **kwargs)
        self.addCleanup(runner.stop)
        return runner

    def pending(self) -> list[str]:
        """
        The file names in the spool's C{pending/}.
        """
        return sorted(os.listdir(os.path.join(self.spoolDirectory, "pending")))

    def dead(self) -> list[str]:
        """
        The file names in the spool's C{dead/}.
        """
        return sorted(os.listdir(os.path.join(self.spoolDirectory, "dead")))

    def onDisk(self, job: Job) -> Job:
        """
        The job as its pending file now describes it.
        """
        with open(os.path.join(self.spoolDirectory, "pending", job.id + ".json"), "rb") as f:
            return Job.fromJSON(json.load(f))


class RecordTests(RunnerTestCase):
    """
    Tests for L{HookRunner.record}.
    """

    def test_jobFilePerEventAndHook(self) -> None:
        """
        One job file per (event, hook) is written, fsynced, renamed into
        C{pending/}, and the directory is fsynced, before record returns.
        """
        other = storeMessage(self, count=2)
        runner = self.runner(FakeHook("a"), FakeHook("b"))
        jobs = runner.record([self.event, other])
        self.assertEqual(
            [job.id for job in jobs],
            [f"{self.event.id},a", f"{self.event.id},b", f"{other.id},a", f"{other.id},b"],
        )
        self.assertEqual(self.pending(), sorted(job.id + ".json" for job in jobs))
        pendingDirectory = os.path.join(self.spoolDirectory, "pending")
        durable = [(name, path) for name, path in self.fs.calls if name != "makeDirectories"]
        for index, job in enumerate(jobs):
            create, fsync, rename = durable[3 * index : 3 * index + 3]
            self.assertEqual(create[0], "create")
            self.assertTrue(create[1].startswith(os.path.join(self.spoolDirectory, "tmp", job.id)))
            self.assertEqual(fsync, ("fsync", create[1]))
            self.assertEqual(rename, ("rename", os.path.join(pendingDirectory, job.id + ".json")))
        self.assertEqual(durable[-1], ("syncDirectory", pendingDirectory))
        self.assertEqual(self.onDisk(jobs[0]), jobs[0])
        self.assertEqual(jobs[0].due, NOW)

    def test_noHooksNoDisk(self) -> None:
        """
        Without hooks, record does nothing at all: no file, no directory.
        """
        self.assertEqual(self.runner().record([self.event]), [])
        self.assertEqual(self.fs.calls, [])
        self.assertFalse(os.path.exists(self.spoolDirectory))

    def test_startCreatesNothing(self) -> None:
        """
        Starting and stopping a runner, with or without hooks, leaves no
        spool behind until a job is recorded.
        """
        for hooks in ((), (FakeHook(),)):
            runner = self.runner(*hooks)
            self.successResultOf(runner.start())
            self.clock.advance(100)
            self.successResultOf(runner.stop())
        self.assertFalse(os.path.exists(self.spoolDirectory))

    def test_failureLeavesNothing(self) -> None:
        """
        A full disk makes record raise L{StorageError}, leaving no job file
        behind (all or nothing).
        """
        runner = self.runner(FakeHook("a"), FakeHook("b"))
        runner.spool.prepare()
        self.fs.failOn = "syncDirectory"
        error = self.assertRaises(StorageError, runner.record, [self.event])
        self.assertTrue(error.noSpace)
        self.assertEqual(self.pending(), [])
        self.assertEqual(os.listdir(os.path.join(self.spoolDirectory, "tmp")), [])


class DispatchTests(RunnerTestCase):
    """
    Tests for running jobs: L{HookRunner.dispatch}, retries and dead
    letters.
    """

    def test_dispatchRunsAndRemoves(self) -> None:
        """
        A dispatched job runs on the next turn of the reactor, with the
        event; when it succeeds its file is removed.
        """
        hook = FakeHook()
        runner = self.runner(hook)
        runner.dispatch(runner.record([self.event]))
        self.assertEqual(hook.calls, [])
        self.clock.advance(0)
        self.assertEqual(hook.calls, [self.event])
        self.assertEqual(self.pending(), [])
        self.assertEqual(runner.active, {})

    def test_retryWithBackoffThenSuccess(self) -> None:
        """
        A failed attempt is counted in the job file and retried after the
        backoff, doubling each time up to the cap; success then removes the
        job.
        """
        hook = FakeHook(
            outcomes=[HookFailed("500"), HookFailed("500"), HookFailed("500")],
            retry=RetryPolicy(attempts=5, backoff=10, maxBackoff=15),
        )
        runner = self.runner(hook)
        (job,) = runner.record([self.event])
        runner.dispatch([job])
        self.clock.advance(0)
        self.assertEqual(len(hook.calls), 1)
        updated = self.onDisk(job)
        self.assertEqual((updated.attempts, updated.error, updated.due), (1, "500", NOW + 10))
        self.clock.advance(9.9)
        self.assertEqual(len(hook.calls), 1)
        self.clock.advance(0.1)
        self.assertEqual(len(hook.calls), 2)
        self.assertEqual(self.onDisk(job).attempts, 2)
        self.clock.advance(14.9)
        self.assertEqual(len(hook.calls), 2, "the second wait is capped at 15s, not 20s")
        self.clock.advance(0.1)
        self.assertEqual(len(hook.calls), 3)
        self.clock.advance(15)
        self.assertEqual(len(hook.calls), 4)
        self.assertEqual(self.pending(), [])
        self.assertEqual(self.dead(), [])

    def test_deadLetterAfterAttempts(self) -> None:
        """
        After the configured number of failed attempts the job moves to
        C{dead/} with its last error and is not tried again.
        """
        hook = FakeHook(outcomes=[HookFailed("one"), HookFailed("two"), HookFailed("three")])
        runner = self.runner(hook)
        (job,) = runner.record([self.event])
        runner.dispatch([job])
        self.clock.advance(0)
        self.clock.advance(10)
        self.clock.advance(15)
        self.assertEqual(len(hook.calls), 3)
        self.assertEqual(self.pending(), [])
        (dead,) = runner.spool.deadJobs()
        self.assertEqual((dead.id, dead.attempts, dead.error), (job.id, 3, "three"))
        self.clock.advance(10_000)
        self.assertEqual(len(hook.calls), 3)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_permanentFailureDeadAtOnce(self) -> None:
        """
        L{PermanentHookFailure} parks the job at once, without retries.
        """
        hook = FakeHook(outcomes=[PermanentHookFailure("cannot parse")])
        runner = self.runner(hook)
        runner.dispatch(runner.record([self.event]))
        self.clock.advance(0)
        self.assertEqual([job.error for job in runner.spool.deadJobs()], ["cannot parse"])
        self.assertEqual(len(hook.calls), 1)

    def test_unexpectedExceptionLoggedNotRaised(self) -> None:
        """
        A hook raising an unexpected exception (synchronously, even) is
        logged with its traceback and retried; dispatch does not raise.
        """
        @implementer(IHook)
        class Broken(FakeHook):
            def run(self, event: NewMessage) -> Deferred[object]:
                self.calls.append(event)
                raise ZeroDivisionError("oops")

        hook = Broken()
        runner = self.runner(hook)
        (job,) = runner.record([self.event])
        runner.dispatch([job])
        self.clock.advance(0)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertEqual(self.onDisk(job).error, "ZeroDivisionError: oops")

    def test_slowHookDoesNotBlockOthers(self) -> None:
        """
        A hook that never finishes holds up neither another hook's job for
        the same message nor jobs for later messages.
        """
        slow = FakeHook("slow", outcomes=[WAIT, WAIT])
        quick = FakeHook("quick")
        runner = self.runner(slow, quick)
        later = storeMessage(self, count=2)
        runner.dispatch(runner.record([self.event]))
        runner.dispatch(runner.record([later]))
        self.clock.advance(0)
        self.assertEqual(quick.calls, [self.event, later])
        self.assertEqual(self.pending(), sorted([f"{self.event.id},slow.json", f"{later.id},slow.json"]))

    def test_maxInFlight(self) -> None:
        """
        No more than C{maxInFlight} calls of a hook run at once; the others
        wait their turn and run as earlier ones finish.
        """
        hook = FakeHook(outcomes=[WAIT] * 5, maxInFlight=2)
        runner = self.runner(hook)
        events = [storeMessage(self, count=n) for n in range(5)]
        runner.dispatch(runner.record(events))
        self.clock.advance(0)
        self.assertEqual(len(hook.calls), 2)
        hook.waiting[0].callback(None)
        self.assertEqual(len(hook.calls), 3)
        hook.waiting[1].errback(HookFailed("x"))
        self.assertEqual(len(hook.calls), 4)
        self.assertEqual(len(runner.active), 4)

    def test_dispatchTwiceRunsOnce(self) -> None:
        """
        A job already scheduled is not scheduled again.
        """
        hook = FakeHook()
        runner = self.runner(hook)
        jobs = runner.record([self.event])
        runner.dispatch(jobs)
        runner.dispatch(jobs)
        self.clock.advance(0)
        self.assertEqual(len(hook.calls), 1)

    def test_dispatchNeverRaises(self) -> None:
        """
        dispatch logs, rather than raises, what it cannot handle.
        """
        runner = self.runner(FakeHook())
        runner.dispatch([object()])  # type: ignore[list-item]  # deliberately not a job
        self.assertEqual(len(self.flushLoggedErrors(AttributeError)), 1)

    def test_writesForAJobInOrder(self) -> None:
        """
        The removal of a job that succeeded is not even started until the
        update of its failed attempt is on disk, so it cannot be undone.
        """
        threads: list[tuple[Callable[[], Any], Deferred[Any]]] = []

        def later(f: Callable[[], Any]) -> Deferred[Any]:
            d: Deferred[Any] = Deferred()
            threads.append((f, d))
            return d

        hook = FakeHook(outcomes=[HookFailed("x")])
        runner = HookRunner(self.spoolDirectory, [hook], self.clock, later)
        (job,) = runner.record([self.event])
        runner.dispatch([job])
        self.clock.advance(0)
        self.clock.advance(10)
        self.assertEqual(len(hook.calls), 2)
        self.assertEqual(len(threads), 1, "the removal waits for the update")
        while threads:
            f, d = threads.pop(0)
            d.callback(f())
        self.assertEqual(self.pending(), [])
        self.assertEqual(runner.active, {})


class RestartTests(RunnerTestCase):
    """
    Tests for resuming after a restart: L{HookRunner.start}, L{stop} and
    the rescans.
    """

    def test_resumesPendingExactlyOnceMore(self) -> None:
        """
        Jobs recorded by a server that died before dispatching them are run
        by the next one, once, and then are gone for the one after.
        """
        self.runner(FakeHook("a"), FakeHook("b")).record([self.event])
        hookA, hookB = FakeHook("a"), FakeHook("b")
        second = self.runner(hookA, hookB)
        self.successResultOf(second.start())
        self.clock.advance(0)
        self.assertEqual((hookA.calls, hookB.calls), ([self.event], [self.event]))
        self.assertEqual(self.pending(), [])
        hookC = FakeHook("a")
        self.successResultOf(self.runner(hookC).start())
        self.clock.advance(1000)
        self.assertEqual(hookC.calls, [])

    def test_resumeKeepsAttemptsAndDue(self) -> None:
        """
        A job that failed before the restart keeps its attempt count and
        waits out its backoff.
        """
        first = self.runner(FakeHook(outcomes=[HookFailed("x")]))
        (job,) = first.record([self.event])
        first.dispatch([job])
        self.clock.advance(0)
        self.successResultOf(first.stop())
        hook = FakeHook(outcomes=[HookFailed("y"), HookFailed("z")])
        second = self.runner(hook)
        self.successResultOf(second.start())
        self.clock.advance(9)
        self.assertEqual(hook.calls, [])
        self.clock.advance(1)
        self.assertEqual(len(hook.calls), 1)
        self.clock.advance(15)
        self.assertEqual(len(hook.calls), 2)
        self.assertEqual([j.attempts for j in second.spool.deadJobs()], [3])

    def test_unknownHookKept(self) -> None:
        """
        Jobs of a hook that is no longer configured are neither run nor
        deleted, so they resume if it comes back.
        """
        self.runner(FakeHook("gone")).record([self.event])
        other = FakeHook("other")
        self.successResultOf(self.runner(other).start())
        self.clock.advance(100)
        self.assertEqual(other.calls, [])
        self.assertEqual(self.pending(), [f"{self.event.id},gone.json"])

    def test_rescanFindsRevivedJob(self) -> None:
        """
        A dead job put back (by C{mailharbor hooks retry}) while the server
        runs is found by the next rescan and run.
        """
        hook = FakeHook(outcomes=[PermanentHookFailure("x")])
        runner = self.runner(hook, rescanInterval=30)
        self.successResultOf(runner.start())
        (job,) = runner.record([self.event])
        runner.dispatch([job])
        self.clock.advance(0)
        self.assertEqual(len(runner.spool.deadJobs()), 1)
        runner.spool.revive(job.id, self.clock.seconds())
        self.clock.advance(29)
        self.assertEqual(len(hook.calls), 1)
        self.clock.advance(1)
        self.clock.advance(0)
        self.assertEqual(len(hook.calls), 2)
        self.assertEqual((self.pending(), self.dead()), ([], []))

    def test_rescanDoesNotDuplicate(self) -> None:
        """
        A rescan does not start again a job that is running, waiting for a
        retry, or that a concurrent scan listed just before it finished.
        """
        waiting = FakeHook("waiting", outcomes=[WAIT])
        failing = FakeHook("failing", outcomes=[HookFailed("x")], retry=RetryPolicy(3, 1000, 1000))
        runner = self.runner(waiting, failing, rescanInterval=30)
        self.successResultOf(runner.start())
        runner.dispatch(runner.record([self.event]))
        self.clock.advance(0)
        self.clock.advance(30)
        self.clock.advance(30)
        self.assertEqual((len(waiting.calls), len(failing.calls)), (1, 1))

    def test_dispatchAfterFinishedRescanIgnored(self) -> None:
        """
        If a rescan ran a job before its dispatch arrives, the dispatch does
        not run it again.
        """
        hook = FakeHook()
        runner = self.runner(hook, rescanInterval=30)
        self.successResultOf(runner.start())
        jobs = runner.record([self.event])
        self.clock.advance(30)
        self.clock.advance(0)
        self.assertEqual(len(hook.calls), 1)
        runner.dispatch(jobs)
        self.clock.advance(0)
        self.assertEqual(len(hook.calls), 1)

    def test_stopWaitsThenCancels(self) -> None:
        """
        stop waits for a running hook up to its timeout, then cancels it;
        the job stays pending without an attempt counted.
        """
        hook = FakeHook(outcomes=[WAIT])
        runner = self.runner(hook, stopTimeout=10)
        self.successResultOf(runner.start())
        (job,) = runner.record([self.event])
        runner.dispatch([job])
        self.clock.advance(0)
        stopped = runner.stop()
        self.assertNoResult(stopped)
        self.clock.advance(10)
        self.successResultOf(stopped)
        self.assertEqual(hook.cancelled, [self.event])
        self.assertTrue(hook.stopped)
        self.assertEqual(self.onDisk(job).attempts, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stopLetsRunningHookFinish(self) -> None:
        """
        A hook that finishes within the stop timeout completes normally:
        its job is removed.
        """
        hook = FakeHook(outcomes=[WAIT])
        runner = self.runner(hook, stopTimeout=10)
        runner.dispatch(runner.record([self.event]))
        self.clock.advance(0)
        stopped = runner.stop()
        hook.waiting[0].callback(None)
        self.successResultOf(stopped)
        self.assertEqual((self.pending(), hook.cancelled), ([], []))

    def test_stopCancelsRetriesAndIgnoresDispatch(self) -> None:
        """
        After stop no retry is waiting on the clock, and dispatched jobs
        are left on disk for the next start.
        """
        hook = FakeHook(outcomes=[HookFailed("x")])
        runner = self.runner(hook)
        self.successResultOf(runner.start())
        runner.dispatch(runner.record([self.event]))
        self.clock.advance(0)
        self.successResultOf(runner.stop())
        self.assertEqual(self.clock.getDelayedCalls(), [])
        later = storeMessage(self, count=2)
        runner.dispatch(runner.record([later]))
        self.clock.advance(100)
        self.assertEqual(len(hook.calls), 1)
        self.assertEqual(len(self.pending()), 2)

    def test_service(self) -> None:
        """
        The runner is a service: starting it resumes the spool, stopping it
        returns a L{Deferred}.
        """
        self.runner(FakeHook()).record([self.event])
        hook = FakeHook()
        runner = self.runner(hook)
        self.assertTrue(verifyObject(IService, runner))
        runner.startService()
        self.clock.advance(0)
        self.assertEqual(len(hook.calls), 1)
        self.successResultOf(runner.stopService())

    def test_duplicateNamesRefused(self) -> None:
        """
        Two hooks with one name would share job files: refused.
        """
        self.assertRaises(ValueError, HookRunner, self.spoolDirectory, [FakeHook(), FakeHook()], self.clock, runSynchronously)

    def test_spoolNextToMaildirs(self) -> None:
        """
        The spool lives in C{.hooks} under the Maildir root.
        """
        self.assertEqual(spoolFor("/var/mail"), "/var/mail/.hooks")
