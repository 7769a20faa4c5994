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
from typing import Any, cast

from zope.interface import implementer
from zope.interface.verify import verifyObject

from twisted.application.service import IService
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, Logger, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from attrs import evolve

from harbor.hooks.config import DEFAULT_MAX_PENDING, RetryPolicy
from harbor.hooks.events import (
    BacklogFull,
    HookFailed,
    Job,
    NewMessage,
    PermanentHookFailure,
)
from harbor.hooks.kinds import IHook
from harbor.hooks.runner import HookRunner
from harbor.hooks.spool import spoolFor
from harbor.store.fs import StorageError
from harbor.test._hooksupport import NOW, WAIT, FakeHook, storeMessage
from harbor.test._support import DeferredThreads, RecordingFileSystem, runSynchronously


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

    def claimed(self, runner: HookRunner) -> list[str]:
        """
        The file names in C{runner}'s claim directory in the spool: the
        jobs it is running, or has written for deliveries.
        """
        directory = runner.spool.claims.directory
        return sorted(os.listdir(directory)) if os.path.isdir(directory) else []

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

    def test_attemptsLogAsTheRunner(self) -> None:
        """
        The lines about running jobs (a retry, a stop waiting for a running
        hook and cancelling it) are the runner's: named
        C{harbor.hooks.runner.HookRunner}, as operators filter them, with
        the runner as their source.
        """
        events: list[dict[str, Any]] = []
        observer = cast(ILogObserver, events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        hook = FakeHook(outcomes=[HookFailed("x"), WAIT], retry=RetryPolicy(attempts=5, backoff=10, maxBackoff=15))
        runner = self.runner(hook, stopTimeout=10)
        runner.dispatch(runner.record([self.event]))
        self.clock.advance(0)
        self.clock.advance(15)
        stopped = runner.stop()
        self.clock.advance(10)
        self.successResultOf(stopped)
        lines = [e for e in events if "hook job" in e["log_format"].lower() or "trying again" in e["log_format"]]
        self.assertEqual(
            [(e["log_namespace"], e["log_source"]) for e in lines],
            [("harbor.hooks.runner.HookRunner", runner)] * 3,
        )

    def test_attemptsLogThroughTheRunnersLogger(self) -> None:
        """
        A logger put on the runner's class after the runner was made gets
        the lines about its jobs too: they are read from the runner at
        each use.
        """
        hook = FakeHook(outcomes=[HookFailed("x")])
        runner = self.runner(hook)
        events: list[dict[str, Any]] = []
        self.patch(HookRunner, "_log", Logger(observer=cast(ILogObserver, events.append)))
        runner.dispatch(runner.record([self.event]))
        self.clock.advance(0)
        self.assertEqual(len([e for e in events if "trying again" in e["log_format"]]), 1)

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
        self.assertEqual(self.pending(), [])
        self.assertEqual(self.claimed(runner), sorted([f"{self.event.id},slow.json", f"{later.id},slow.json"]))

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
        self.assertEqual((len(runner.active), runner.waitingCounts), (3, {"fake": 1}))

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

        def runFirst() -> None:
            f, d = threads.pop(0)
            d.callback(f())

        hook = FakeHook(outcomes=[HookFailed("x")])
        runner = HookRunner(self.spoolDirectory, [hook], self.clock, later)
        self.addCleanup(runner.stop)
        (job,) = runner.record([self.event])
        runner.dispatch([job])
        self.clock.advance(0)
        runFirst()  # the claim
        runFirst()  # the look for the message
        self.assertEqual((len(hook.calls), len(threads)), (1, 1), "the update is under way")
        self.clock.advance(10)
        self.assertEqual(len(threads), 1, "the retry's claim waits for the update")
        runFirst()  # the update, which puts the job back in pending/
        self.assertEqual(self.pending(), [job.id + ".json"])
        runFirst()  # the retry's claim
        runFirst()
        self.assertEqual(len(hook.calls), 2)
        while threads:
            runFirst()
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


class BacklogTests(RunnerTestCase):
    """
    Tests for a hook's backlog: the window of jobs held in memory, the
    count of pending jobs, C{max_pending}, and jobs whose delivery did not
    complete.
    """

    def manyEvents(self, count: int) -> list[NewMessage]:
        """
        C{count} events for the test's stored message, with ids in order.
        """
        return [evolve(self.event, id=f"{int(NOW)}.M{n:06d}P4242Q1.mx.example.com") for n in range(count)]

    def logged(self) -> list[dict[str, Any]]:
        """
        The runner's log events from now on.
        """
        events: list[dict[str, Any]] = []
        self.patch(HookRunner, "_log", Logger(observer=cast(ILogObserver, events.append)))
        return events

    def test_windowBoundsMemoryWhileBacklogDrains(self) -> None:
        """
        With 2,013 jobs in the spool and a window of 50, the runner never
        holds more than 50 jobs, never reads more than the window's room at
        once, reads each job file once, and runs every job exactly once,
        refilling its window as it drains rather than on the rescan timer.
        """
        events = self.manyEvents(2013)
        self.runner(FakeHook()).record(events)
        self.assertEqual(len(self.pending()), 2013)
        hook = FakeHook()
        runner = self.runner(hook, window=50, rescanInterval=1e9)
        held: list[int] = []
        reads: list[int] = []
        original = hook.run

        def run(event: NewMessage) -> Deferred[object]:
            held.append(len(runner.active))
            return original(event)

        hook.run = run  # type: ignore[method-assign]
        scan = runner.spool.scan

        def counted(room: Any, skip: Any = (), **kwargs: Any) -> Any:
            found = scan(room, skip, **kwargs)
            reads.append(len(found.jobs))
            return found

        self.patch(runner.spool, "scan", counted)
        self.successResultOf(runner.start())
        self.assertEqual(runner.pendingCounts, {"fake": 2013})
        self.clock.advance(0)
        self.assertEqual(sorted(e.id for e in hook.calls), sorted(e.id for e in events))
        self.assertEqual(len(hook.calls), len({e.id for e in hook.calls}))
        self.assertLessEqual(max(held), 50)
        self.assertLessEqual(max(reads), 50)
        self.assertEqual(sum(reads), 2013)
        self.assertEqual((self.pending(), runner.pendingCounts, runner.active), ([], {"fake": 0}, {}))

    def test_windowFromMaxInFlight(self) -> None:
        """
        A hook allowed more calls at once than the window holds gets a
        window of twice its C{max_in_flight}, so the window never caps its
        concurrency.
        """
        hook = FakeHook(outcomes=[WAIT] * 30, maxInFlight=15)
        runner = self.runner(hook, window=4)
        runner.dispatch(runner.record(self.manyEvents(40)))
        self.clock.advance(0)
        self.assertEqual((len(runner.active), len(hook.calls)), (30, 15))

    def test_dispatchBeyondWindowWaitsOnDisk(self) -> None:
        """
        Jobs dispatched while the window is full stay in the spool, and
        are read from it once the window has drained.
        """
        hook = FakeHook(outcomes=[WAIT] * 10)
        runner = self.runner(hook, window=4, rescanInterval=1e9)
        runner.dispatch(runner.record(self.manyEvents(10)))
        self.clock.advance(0)
        self.assertEqual((len(runner.active), len(hook.calls), len(self.pending())), (4, 4, 6))
        self.assertEqual(len(self.claimed(runner)), 4, "those running are claimed")
        for d in list(hook.waiting):
            d.callback(None)
        self.clock.advance(0)
        self.assertEqual(len(hook.calls), 8)
        for d in hook.waiting[4:]:
            d.callback(None)
        self.clock.advance(0)
        for d in hook.waiting[8:]:
            d.callback(None)
        self.assertEqual((len(hook.calls), self.pending(), runner.active), (10, [], {}))

    def poisoned(self, poison: set[str], retry: RetryPolicy | None = None, **kwargs: Any) -> FakeHook:
        """
        A hook that fails, every time, for the messages with ids in
        C{poison} (as a webhook answering 500 for certain messages), and
        succeeds for all others.
        """
        hook = FakeHook(retry=retry or RetryPolicy(attempts=8, backoff=30, maxBackoff=3600), **kwargs)

        def run(event: NewMessage) -> Deferred[object]:
            hook.calls.append(event)
            return fail(HookFailed("500")) if event.id in poison else succeed(None)

        hook.run = run  # type: ignore[method-assign]
        return hook

    def test_retryingJobsDoNotHoldUpHealthyOnes(self) -> None:
        """
        Jobs waiting for a retry take no room in their hook's window: with
        a window of 4 and 4 jobs the hook keeps failing on, its 6 healthy
        jobs are read from the spool and run at once (not at a rescan),
        and each failing one is attempted again exactly once at each of
        its due times, until it is parked as a dead letter.
        """
        events = self.manyEvents(10)
        poison = {e.id for e in events[:4]}
        hook = self.poisoned(poison, RetryPolicy(attempts=3, backoff=30, maxBackoff=3600))
        runner = self.runner(hook, window=4, rescanInterval=1e9)
        runner.dispatch(runner.record(events))
        self.clock.advance(0)
        self.assertEqual({e.id for e in hook.calls} - poison, {e.id for e in events[4:]})
        self.assertEqual(len(hook.calls), 10)
        self.assertEqual((runner.active, runner.waitingCounts, runner.pendingCounts), ({}, {"fake": 4}, {"fake": 4}))
        self.assertEqual(len(self.pending()), 4)
        self.clock.advance(29.9)
        self.assertEqual(len(hook.calls), 10)
        self.clock.advance(0.1)
        self.assertEqual(len(hook.calls), 14)
        self.assertEqual(sorted(e.id for e in hook.calls[10:]), sorted(poison))
        self.assertEqual({j.attempts for j in runner.spool.pendingJobs()}, {2})
        self.clock.advance(59.9)
        self.assertEqual(len(hook.calls), 14)
        self.clock.advance(0.1)
        self.assertEqual(len(hook.calls), 18)
        self.assertEqual((self.pending(), len(self.dead()), runner.waitingCounts), ([], 4, {"fake": 0}))
        self.clock.advance(3600)
        self.assertEqual(len(hook.calls), 18)

    def test_jobsNotDueAtStartWaitOnDisk(self) -> None:
        """
        Jobs found at start waiting out a backoff take no room in the
        window either: the due ones run at once, the others when due.
        """
        events = self.manyEvents(10)
        poison = {e.id for e in events[:4]}
        first = self.runner(self.poisoned(poison), window=4, rescanInterval=1e9)
        first.dispatch(first.record(events[:4]))
        self.clock.advance(0)
        self.successResultOf(first.stop())
        first.record(events[4:])
        hook = self.poisoned(set())
        runner = self.runner(hook, window=4, rescanInterval=1e9)
        self.successResultOf(runner.start())
        self.clock.advance(0)
        self.assertEqual([e.id for e in hook.calls], [e.id for e in events[4:]])
        self.assertEqual((runner.active, runner.waitingCounts), ({}, {"fake": 4}))
        self.clock.advance(30)
        self.assertEqual(sorted(e.id for e in hook.calls[6:]), sorted(poison))
        self.assertEqual((self.pending(), runner.pendingCounts), ([], {"fake": 0}))

    def test_waitingBeyondCapHeldInWindow(self) -> None:
        """
        A hook remembers at most C{max_pending} jobs waiting for a retry;
        one beyond that waits in its window, as a last resort, and is
        still attempted at its due time, once.
        """
        events = self.manyEvents(3)
        self.runner(FakeHook()).record(events)
        hook = self.poisoned({e.id for e in events}, maxPending=2)
        runner = self.runner(hook, window=4, rescanInterval=1e9)
        self.successResultOf(runner.start())
        self.clock.advance(0)
        self.assertEqual((len(runner.active), runner.waitingCounts), (1, {"fake": 2}))
        self.clock.advance(30)
        self.assertEqual(sorted(e.id for e in hook.calls), sorted(2 * [e.id for e in events]))

    def test_retryKeptInMemoryIfItsFileCannotBeUpdated(self) -> None:
        """
        A job whose file could not be updated after a failure waits for
        its retry in memory (its file would have it attempted at once),
        and is attempted at its due time.
        """
        hook = FakeHook(outcomes=[HookFailed("500")])
        runner = self.runner(hook, rescanInterval=1e9)
        (job,) = runner.record([self.event])
        update = runner.spool.update

        def broken(job: Job) -> None:
            raise OSError("disk full")

        self.patch(runner.spool, "update", broken)
        runner.dispatch([job])
        self.clock.advance(0)
        self.assertEqual((list(runner.active), runner.waitingCounts), ([job.id], {"fake": 0}))
        self.patch(runner.spool, "update", update)
        self.clock.advance(9.9)
        self.assertEqual(len(hook.calls), 1)
        self.clock.advance(0.1)
        self.assertEqual((len(hook.calls), self.pending()), (2, []))
        self.flushLoggedErrors(OSError)

    def test_pendingCounts(self) -> None:
        """
        The pending jobs of each hook are counted from the spool at start,
        and kept up to date as jobs are prepared, released, run, buried
        and put back from the dead letters.
        """
        self.runner(FakeHook("a"), FakeHook("b")).record(self.manyEvents(3))
        a = FakeHook("a", outcomes=[WAIT] * 3)
        b = FakeHook("b", outcomes=[WAIT] * 4, retry=RetryPolicy(attempts=1))
        runner = self.runner(a, b, rescanInterval=30)
        self.assertEqual(runner.pendingCounts, {"a": 0, "b": 0})
        self.successResultOf(runner.start())
        self.assertEqual(runner.pendingCounts, {"a": 3, "b": 3})
        scans: list[object] = []
        scan = runner.spool.scan

        def counted(*args: Any, **kwargs: Any) -> Any:
            scans.append(args)
            return scan(*args, **kwargs)

        self.patch(runner.spool, "scan", counted)
        jobs = runner.prepare([storeMessage(self, count=9)])
        self.assertEqual(runner.pendingCounts, {"a": 4, "b": 4})
        runner.release(jobs)
        self.assertEqual(runner.pendingCounts, {"a": 3, "b": 3})
        self.clock.advance(0)
        a.waiting[0].callback(None)
        b.waiting[0].errback(HookFailed("x"))
        self.assertEqual(runner.pendingCounts, {"a": 2, "b": 2})
        self.assertEqual(scans, [], "counted as they went, without reading the spool")
        (dead,) = runner.spool.deadJobs()
        runner.spool.revive(dead.id, self.clock.seconds())
        self.assertEqual(runner.pendingCounts, {"a": 2, "b": 2})
        self.clock.advance(30)
        self.assertEqual(runner.pendingCounts, {"a": 2, "b": 3})

    def test_countsJobsBeingCommittedOnce(self) -> None:
        """
        Jobs of deliveries being committed when a scan begins (mail taken
        while the spool is read at start, say) are counted once, whether
        or not the listing saw their files, also if one delivery is stored
        before the scan ends; the count then falls to nothing, never
        below, as the jobs finish.
        """
        self.runner(FakeHook()).record(self.manyEvents(3))
        threads = DeferredThreads()
        hook = FakeHook()
        runner = HookRunner(self.spoolDirectory, [hook], self.clock, threads)
        self.addCleanup(runner.stop)
        first = runner.prepare([storeMessage(self, count=7)])
        runner.persist(first)
        second = runner.prepare([storeMessage(self, count=8)])
        runner.start()
        (scan, scanned) = threads.pending.pop(0)
        runner.persist(second)
        result = scan()
        # Counted from the listing: the three old jobs.  The two new
        # ones are counted by their reservations, not again from their
        # files (the first's written before the scan began, the second's
        # while it ran).
        self.assertEqual(result.counts, {"fake": 3})
        runner.dispatch(second)
        scanned.callback(result)
        self.assertEqual(runner.pendingCounts, {"fake": 5})
        runner.dispatch(first)
        self.clock.advance(0)
        threads.runAll()
        self.clock.advance(0)
        threads.runAll()
        self.assertEqual((len(hook.calls), self.pending(), runner.pendingCounts), (5, [], {"fake": 0}))

    def test_firstCountEstimatedThenExact(self) -> None:
        """
        If mail arrives while the spool is first counted, the count is
        off by no more than that mail's jobs, and the next scan during
        which nothing arrives or finishes makes it exact.
        """
        self.runner(FakeHook()).record(self.manyEvents(3))
        threads = DeferredThreads()
        hook = FakeHook(outcomes=[WAIT] * 4)
        runner = HookRunner(self.spoolDirectory, [hook], self.clock, threads, rescanInterval=30)
        self.addCleanup(runner.stop)
        runner.start()
        (scan, scanned) = threads.pending.pop(0)
        jobs = runner.prepare([storeMessage(self, count=7)])
        runner.persist(jobs)
        scanned.callback(scan())
        self.assertIn(runner.pendingCounts["fake"], (4, 5))
        runner.dispatch(jobs)
        self.clock.advance(0)
        threads.runAll()
        self.assertEqual(len(hook.calls), 4)
        self.clock.advance(30)
        threads.runAll()
        self.assertEqual(runner.pendingCounts, {"fake": 4})

    def test_maxPendingRefuses(self) -> None:
        """
        Once a hook has C{max_pending} pending jobs, L{HookRunner.prepare}
        raises L{BacklogFull} naming it, logged with its name, and counts
        nothing; once one of its jobs is done, mail is taken again.
        """
        events = self.logged()
        hook = FakeHook("slow", outcomes=[WAIT, WAIT], maxPending=2)
        runner = self.runner(hook, FakeHook("quick"))
        runner.dispatch(runner.record(self.manyEvents(2)))
        self.clock.advance(0)
        error = self.assertRaises(BacklogFull, runner.prepare, [storeMessage(self, count=3)])
        self.assertEqual((error.hook, error.pending, error.limit), ("slow", 2, 2))
        self.assertEqual(runner.pendingCounts, {"slow": 2, "quick": 0})
        (warning,) = [e for e in events if e.get("hook") == "slow" and "max_pending" in e["log_format"]]
        self.assertEqual(
            formatEvent(warning),
            "Hook slow has 2 pending jobs (max_pending 2): new mail is refused with 451 until they drain",
        )
        hook.waiting[0].callback(None)
        self.assertEqual(len(runner.prepare([storeMessage(self, count=3)])), 2)

    def test_backlogFullLoggedOnceAsItFillsAndDrains(self) -> None:
        """
        A hook whose backlog reaches C{max_pending} is logged once, with
        its name and cap, however many recipients are then refused, and
        once more (as taking mail again) when it drains below the cap,
        rather than once per refusal.
        """
        events = self.logged()
        hook = FakeHook("slow", outcomes=[WAIT, WAIT, WAIT], maxPending=2)
        runner = self.runner(hook, FakeHook("quick"))
        runner.dispatch(runner.record(self.manyEvents(2)))
        self.clock.advance(0)
        for n in range(50):
            self.assertRaises(BacklogFull, runner.checkBacklog)
        self.assertRaises(BacklogFull, runner.prepare, [storeMessage(self, count=3)])

        def lines() -> list[str]:
            return [formatEvent(e) for e in events if e.get("hook") == "slow" and "max_pending" in e["log_format"]]

        self.assertEqual(
            lines(),
            ["Hook slow has 2 pending jobs (max_pending 2): new mail is refused with 451 until they drain"],
        )
        hook.waiting[0].callback(None)
        drained = "Hook slow has 1 pending jobs, below max_pending 2: new mail is taken again"
        self.assertEqual(lines()[1:], [drained])
        for n in range(5):
            runner.checkBacklog()
        self.assertEqual(len(lines()), 2)
        runner.dispatch(runner.record([storeMessage(self, count=4)]))
        self.clock.advance(0)
        self.assertRaises(BacklogFull, runner.checkBacklog)
        self.assertEqual(len(lines()), 3, "full again: logged again")
        levels = [e["log_level"].name for e in events if e.get("hook") == "slow" and "max_pending" in e["log_format"]]
        self.assertEqual(levels, ["warn", "info", "warn"])

    def test_maxPendingDefault(self) -> None:
        """
        A hook without C{maxPending} gets the default cap.
        """
        runner = self.runner(FakeHook())
        self.patch(runner._backlog, "_counts", {"fake": DEFAULT_MAX_PENDING - 1})
        runner.prepare([self.event])
        self.assertRaises(BacklogFull, runner.prepare, [storeMessage(self, count=2)])

    def test_jobOfMessageNeverStoredDropped(self) -> None:
        """
        A job whose message is in neither C{new/} nor C{cur/} (its delivery
        failed after the job was written, and the server died before
        removing it) is dropped, with one log line, without calling the
        hook or parking it as a dead letter.
        """
        events = self.logged()
        os.unlink(self.event.path)
        self.runner(FakeHook()).record([self.event])
        hook = FakeHook()
        runner = self.runner(hook)
        self.successResultOf(runner.start())
        self.clock.advance(0)
        self.assertEqual((hook.calls, self.pending(), self.dead()), ([], [], []))
        self.assertEqual(runner.pendingCounts, {"fake": 0})
        (dropped,) = [e for e in events if "dropped" in e["log_format"]]
        self.assertEqual(
            formatEvent(dropped),
            f"Hook job {self.event.id},fake dropped: message {self.event.id} is not in its Maildir "
            "(its delivery failed, or it was deleted)",
        )

    def test_messageMovedToCurStillRun(self) -> None:
        """
        A message a mail reader has moved to C{cur/}, with flags, is found:
        its hook is called.
        """
        maildir = os.path.dirname(os.path.dirname(self.event.path))
        os.rename(self.event.path, os.path.join(maildir, "cur", os.path.basename(self.event.path) + ":2,S"))
        hook = FakeHook()
        runner = self.runner(hook)
        runner.dispatch(runner.record([self.event]))
        self.clock.advance(0)
        self.assertEqual((hook.calls, self.pending()), ([self.event], []))

    def test_jobsBeingCommittedNotRunByScan(self) -> None:
        """
        Jobs written for a delivery still being committed are neither read
        nor run by a scan of the spool, nor by one that began before they
        were prepared and read them: only their dispatch, after the
        commit, runs them.
        """
        threads = DeferredThreads()
        hook = FakeHook()
        runner = HookRunner(self.spoolDirectory, [hook], self.clock, threads, rescanInterval=30)
        self.addCleanup(runner.stop)
        runner.start()
        threads.runAll()
        jobs = runner.prepare([self.event])
        runner.persist(jobs)
        self.clock.advance(30)
        (scan, scanned) = threads.pending.pop(0)
        result = scan()
        self.assertEqual(result.jobs, (), "not even read")
        scanned.callback(result)
        threads.runAll()
        self.assertEqual(hook.calls, [])
        self.clock.advance(30)
        self.assertEqual((self.pending(), self.claimed(runner)), ([], [jobs[0].id + ".json"]))
        (scan, scanned) = threads.pending.pop(0)
        later = runner.prepare([storeMessage(self, count=2)])
        # Written where another instance could see them (persist claims
        # them), for this scan to read.
        runner.spool.add(later)
        result = scan()
        self.assertEqual([job.id for job in result.jobs], [later[0].id])
        scanned.callback(result)
        self.clock.advance(0)
        threads.runAll()
        self.assertEqual(hook.calls, [])
        runner.dispatch(jobs + later)
        self.clock.advance(0)
        threads.runAll()
        self.assertEqual(hook.calls, [self.event, later[0].event])

    def test_releasedJobsNeverRun(self) -> None:
        """
        Jobs of a delivery that failed are not run, even by a scan that
        read their files before they were removed.
        """
        threads = DeferredThreads()
        hook = FakeHook()
        runner = HookRunner(self.spoolDirectory, [hook], self.clock, threads, rescanInterval=30)
        self.addCleanup(runner.stop)
        runner.start()
        threads.runAll()
        self.clock.advance(30)
        # A scan begins; then a delivery's jobs are written, and the scan's
        # listing reads them, but is not heard of yet.
        (scan, scanned) = threads.pending.pop(0)
        jobs = runner.prepare([self.event])
        # Unclaimed, as persist does not write them, for the scan to read.
        runner.spool.add(jobs)
        result = scan()
        self.assertEqual([job.id for job in result.jobs], [jobs[0].id])
        runner.withdraw(jobs)
        runner.release(jobs)
        # A scan that listed the job before it went, then the job itself
        # were it admitted.
        self.patch(runner.spool, "scan", lambda room, skip=(), uncounted=(): result)
        scanned.callback(result)
        self.clock.advance(0)
        threads.runAll()
        self.assertEqual((hook.calls, self.pending(), runner.pendingCounts), ([], [], {"fake": 0}))
