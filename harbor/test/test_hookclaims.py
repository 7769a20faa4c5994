"""
Tests for L{harbor.hooks.claims} and for instances sharing one hook spool:
two L{HookSpool}s, or two L{HookRunner}s, on one directory, as two
processes would have them, on one L{Clock}.

A process that dies is played by closing its lock's descriptor, which is
what the kernel does when a process ends, however it ends.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from attrs import evolve

from harbor.hooks.claims import newInstanceID
from harbor.hooks.config import RetryPolicy
from harbor.hooks.events import HookFailed, Job, NewMessage, jobID
from harbor.hooks.runner import HookRunner
from harbor.hooks.spool import HookSpool
from harbor.test._hooksupport import NOW, WAIT, FakeHook, storeMessage
from harbor.test._support import runSynchronously


def crash(spool: HookSpool) -> None:
    """
    Let go of a spool's lock as the kernel does when its process dies,
    leaving its claims where they are.
    """
    claims = spool.claims
    assert claims._lockFD is not None
    os.close(claims._lockFD)
    claims._lockFD = None


class InstanceIDTests(SynchronousTestCase):
    """
    Tests for L{newInstanceID}.
    """

    def test_uniqueAndReadable(self) -> None:
        """
        An instance id names the host and process, and differs at each
        call even for the same host and process (a restarted container).
        """
        first = newInstanceID("mx1.example.com", 1)
        self.assertTrue(first.startswith("mx1-1-"))
        self.assertNotEqual(first, newInstanceID("mx1.example.com", 1))
        self.assertEqual(newInstanceID("a/b c", 7, "ff"), "a_b_c-7-ff")


class SpoolClaimTests(SynchronousTestCase):
    """
    Tests for L{HookSpool.claim} and the takeover of claims, with two
    spools (two instances) on one directory.
    """

    def setUp(self) -> None:
        self.directory = os.path.abspath(self.mktemp())
        self.event = storeMessage(self)
        self.job = Job(jobID(self.event, "h"), "h", self.event, NOW, NOW)
        self.first = self.spool("first")
        self.second = self.spool("second")
        self.first.add([self.job])

    def spool(self, instance: str) -> HookSpool:
        spool = HookSpool(self.directory, instance=instance)
        self.addCleanup(lambda: spool.claims.registered and spool.releaseAll())
        return spool

    def pending(self) -> list[str]:
        return sorted(os.listdir(os.path.join(self.directory, "pending")))

    def test_oneClaimant(self) -> None:
        """
        Of two instances, only the first to claim a job has it; the other's
        claim finds nothing.  Once put back, the other can claim it.
        """
        claim = self.first.claim(self.job.id, NOW)
        assert claim is not None
        self.assertEqual((claim.job, claim.due), (self.job, True))
        self.assertIsNone(self.second.claim(self.job.id, NOW))
        self.assertEqual(self.pending(), [])
        self.assertEqual(os.listdir(self.first.claims.directory), [self.job.id + ".json"])
        self.assertIsNotNone(self.first.claim(self.job.id, NOW), "claimed already: still ours")
        self.first.unclaim([self.job.id])
        self.assertEqual(self.pending(), [self.job.id + ".json"])
        self.assertIsNotNone(self.second.claim(self.job.id, NOW))

    def test_claimReadsTheFileAgain(self) -> None:
        """
        A claim gives the job as its file says now; one whose retry is not
        due is put back at once, and said not to be due.
        """
        later = evolve(self.job, attempts=1, due=NOW + 30, error="500")
        self.first.add([later])
        claim = self.second.claim(self.job.id, NOW)
        assert claim is not None
        self.assertEqual((claim.job, claim.due), (later, False))
        self.assertEqual(self.pending(), [self.job.id + ".json"])

    def test_updateGivesUpTheClaim(self) -> None:
        """
        The update after a failed attempt puts the job back in C{pending/}
        with its new count, for any instance.
        """
        self.first.claim(self.job.id, NOW)
        failed = evolve(self.job, attempts=1, due=NOW + 30)
        self.first.update(failed)
        self.assertEqual((self.pending(), os.listdir(self.first.claims.directory)), ([self.job.id + ".json"], []))
        claim = self.second.claim(self.job.id, NOW + 30)
        assert claim is not None
        self.assertEqual(claim.job, failed)

    def test_liveClaimsKept(self) -> None:
        """
        The claims of an instance that is alive (holds its lock) are left
        alone by another's takeover.
        """
        self.first.claim(self.job.id, NOW)
        self.second.claim("other,h", NOW)
        self.assertEqual(self.second.takeOver(), 0)
        self.assertEqual(self.pending(), [])
        self.assertEqual(os.listdir(self.first.claims.directory), [self.job.id + ".json"])

    def test_deadClaimsTakenOver(self) -> None:
        """
        Once an instance has died (its lock released by the kernel), its
        claims are put back in C{pending/} by the next takeover, and what
        is left of it (claim directory, lock) is removed.
        """
        self.first.claim(self.job.id, NOW)
        directory = self.first.claims.directory
        crash(self.first)
        self.assertEqual(self.second.takeOver(), 1)
        self.assertEqual(self.pending(), [self.job.id + ".json"])
        self.assertFalse(os.path.exists(directory))
        self.assertEqual(sorted(os.listdir(os.path.join(self.directory, "claimed"))), [])
        claim = self.second.claim(self.job.id, NOW)
        assert claim is not None
        self.assertEqual(claim.job, self.job)

    def test_releaseAllAtStop(self) -> None:
        """
        At shutdown an instance puts back everything it has claimed and
        removes its claim directory and lock; it may claim again later.
        """
        self.first.claim(self.job.id, NOW)
        self.assertEqual(self.first.releaseAll(), 1)
        self.assertEqual(self.pending(), [self.job.id + ".json"])
        self.assertEqual(os.listdir(os.path.join(self.directory, "claimed")), [])
        self.assertIsNotNone(self.first.claim(self.job.id, NOW))

    def test_claimedCounted(self) -> None:
        """
        A scan counts claimed jobs as pending, those of other instances
        also as elsewhere, and reads none of them.
        """
        other = evolve(self.job, id=jobID(evolve(self.event, id="2"), "h"))
        self.first.add([other])
        self.first.claim(self.job.id, NOW)
        scan = self.second.scan({"h": 10})
        self.assertEqual((scan.counts, scan.elsewhere), ({"h": 2}, {"h": 1}))
        self.assertEqual([job.id for job in scan.jobs], [other.id])


class SharedRunnerTests(SynchronousTestCase):
    """
    Two runners (two instances) on one spool directory and one clock.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.directory = os.path.abspath(self.mktemp())
        self.event = storeMessage(self)

    def runner(self, hook: FakeHook, instance: str, **kwargs: Any) -> HookRunner:
        runner = HookRunner(self.directory, [hook], self.clock, runSynchronously, instance=instance, **kwargs)
        self.addCleanup(runner.stop)
        return runner

    def events(self, count: int) -> list[NewMessage]:
        return [evolve(self.event, id=f"{int(NOW)}.M{n:06d}P4242Q1.mx.example.com") for n in range(count)]

    def pending(self) -> list[str]:
        return sorted(os.listdir(os.path.join(self.directory, "pending")))

    def test_eachJobOnce(self) -> None:
        """
        Two runners reading the same backlog from the spool call the hook
        once per job between them, each call with the job's delivery id.
        """
        firstHook = FakeHook(outcomes=[WAIT] * 100)
        secondHook = FakeHook(outcomes=[WAIT] * 100)
        first = self.runner(firstHook, "first", window=8, rescanInterval=5)
        second = self.runner(secondHook, "second", window=8, rescanInterval=5)
        jobs = first.record(self.events(40))
        first.start()
        second.start()
        self.clock.advance(0)
        while firstHook.waiting or secondHook.waiting:
            for hook in (firstHook, secondHook):
                while hook.waiting:
                    hook.waiting.pop(0).callback(None)
            self.clock.advance(5)
        calls = firstHook.calls + secondHook.calls
        self.assertEqual(sorted(event.id for event in calls), sorted(job.event.id for job in jobs))
        self.assertTrue(firstHook.calls and secondHook.calls, "both took part")
        self.assertEqual({event.deliveryId for event in calls}, {job.id for job in jobs})
        self.assertEqual(self.pending(), [])

    def test_claimsMatchRunningJobs(self) -> None:
        """
        What a runner has claimed in the spool is what it is running: the
        jobs waiting in its window stay in C{pending/} for any instance.
        """
        hook = FakeHook(outcomes=[WAIT] * 10, maxInFlight=2)
        runner = self.runner(hook, "first")
        runner.dispatch(runner.record(self.events(5)))
        self.clock.advance(0)
        running = sorted(f"{event.id},fake.json" for event in hook.calls)
        self.assertEqual(len(running), 2)
        self.assertEqual(sorted(os.listdir(runner.spool.claims.directory)), running)
        self.assertEqual(len(self.pending()), 3)
        self.assertEqual(len(runner.active), 5)

    def test_retryCountsExact(self) -> None:
        """
        A job that always fails is tried exactly C{attempts} times between
        two runners, which both hold it, then is dead; put back with
        C{hooks retry}, exactly C{attempts} times again.
        """
        retry = RetryPolicy(attempts=3, backoff=1, maxBackoff=1)
        hooks = [FakeHook(outcomes=[HookFailed("500")] * 10, retry=retry) for _ in range(2)]
        first = self.runner(hooks[0], "first", rescanInterval=0.5)
        second = self.runner(hooks[1], "second", rescanInterval=0.5)
        (job,) = first.record([self.event])
        first.start()
        second.start()
        for _ in range(40):
            self.clock.advance(0.25)
        self.assertEqual(len(hooks[0].calls) + len(hooks[1].calls), 3)
        (dead,) = first.spool.deadJobs()
        self.assertEqual(dead.attempts, 3)
        first.spool.revive(job.id, self.clock.seconds())
        for _ in range(40):
            self.clock.advance(0.25)
        self.assertEqual(len(hooks[0].calls) + len(hooks[1].calls), 6)
        self.assertEqual(first.spool.deadJobs()[0].attempts, 3)

    def test_staleCopyNotRunEarly(self) -> None:
        """
        A runner holding a job it read before another runner tried it and
        failed does not run it before its retry is due, nor with its old
        count: its claim reads the file again.
        """
        retry = RetryPolicy(attempts=2, backoff=60, maxBackoff=60)
        firstHook = FakeHook(outcomes=[HookFailed("500")] * 2, retry=retry)
        secondHook = FakeHook(outcomes=[HookFailed("500")] * 2, retry=retry)
        first = self.runner(firstHook, "first", rescanInterval=1e9)
        second = self.runner(secondHook, "second", rescanInterval=1e9)
        (job,) = first.record([self.event])
        first.dispatch([job])
        # The second has it in its window too, read before the first tried.
        second._admit(job)
        self.clock.advance(0)
        self.assertEqual((len(firstHook.calls), len(secondHook.calls)), (1, 0))
        self.assertEqual(second.waitingCounts, {"fake": 1}, "waiting for its retry, like the first")
        self.clock.advance(60)
        first._rescan(resuming=False)
        second._rescan(resuming=False)
        self.clock.advance(0)
        self.assertEqual(len(firstHook.calls) + len(secondHook.calls), 2)
        (dead,) = first.spool.deadJobs()
        self.assertEqual(dead.attempts, 2)

    def test_deadInstanceTakenOver(self) -> None:
        """
        A job claimed by a runner whose process died mid-call is taken over
        by the other runner's next scan and run there, once.
        """
        firstHook = FakeHook(outcomes=[WAIT])
        secondHook = FakeHook()
        first = self.runner(firstHook, "first", rescanInterval=1e9)
        second = self.runner(secondHook, "second", rescanInterval=5)
        (job,) = first.record([self.event])
        first.dispatch([job])
        self.clock.advance(0)
        self.assertEqual(len(firstHook.calls), 1)
        second.start()
        self.clock.advance(0)
        self.assertEqual(secondHook.calls, [], "claimed by a live instance")
        self.assertEqual(second.pendingCounts, {"fake": 1})
        crash(first.spool)
        self.clock.advance(5)
        self.clock.advance(0)
        self.assertEqual([event.deliveryId for event in secondHook.calls], [job.id])
        self.assertEqual((self.pending(), second.pendingCounts), ([], {"fake": 0}))

    def test_deliveryJobsHiddenUntilStored(self) -> None:
        """
        The jobs a delivery writes are claimed by its runner until the
        delivery is stored, so another runner never finds their message
        missing; a window too full to run them puts them back for any.
        """
        firstHook = FakeHook(outcomes=[WAIT] * 5)
        first = self.runner(firstHook, "first", window=1)
        secondHook = FakeHook()
        second = self.runner(secondHook, "second", rescanInterval=5)
        second.start()
        jobs = first.prepare(self.events(3))
        first.persist(jobs)
        self.assertEqual(self.pending(), [])
        self.clock.advance(5)
        self.assertEqual(secondHook.calls, [])
        first.dispatch(jobs)
        self.assertEqual(len(self.pending()), 2, "beyond the window: put back")
        self.clock.advance(0)
        self.assertEqual(len(firstHook.calls), 1)
        self.clock.advance(5)
        self.clock.advance(0)
        self.assertEqual(len(secondHook.calls), 2)
        self.assertEqual(
            sorted(e.id for e in firstHook.calls + secondHook.calls), sorted(j.event.id for j in jobs)
        )
