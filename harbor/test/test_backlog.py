"""
Tests for L{harbor.hooks.backlog}: the hook runner's bookkeeping of
pending jobs, on its own, without a reactor, a clock or a spool (the
runner's tests, in L{harbor.test.test_hookrunner}, prove it end to end).
"""

from __future__ import annotations

from collections.abc import Mapping

from twisted.trial.unittest import SynchronousTestCase

from attrs import evolve

from harbor.hooks.backlog import DEFER_WINDOWS, WINDOW, Backlog, HookLimits
from harbor.hooks.config import DEFAULT_MAX_PENDING
from harbor.hooks.events import Job, NewMessage, jobID

NOW = 1_700_000_000.0


def job(n: int, hook: str = "a") -> Job:
    """
    The job of hook C{hook} for the C{n}th message, in order of arrival;
    nothing is on disk.
    """
    event = NewMessage(
        sender="sender@example.org",
        recipient="alice@example.com",
        user=None,
        client="192.0.2.7",
        path=f"/nonexistent/new/{int(NOW)}.M{n:06d}P1Q1.mx.example.com",
        id=f"{int(NOW)}.M{n:06d}P1Q1.mx.example.com",
    )
    return Job(jobID(event, hook), hook, event, created=NOW, due=NOW)


def backlog(window: int = WINDOW, **limits: HookLimits) -> Backlog:
    """
    A backlog of the hooks named, by default one hook C{a} without limits.
    """
    return Backlog(limits or {"a": HookLimits(maxPending=None)}, window)


def stored(b: Backlog, *jobs: Job) -> None:
    """
    Count jobs as a delivery that was stored does: reserved, then settled.
    """
    b.reserve(jobs)
    for j in jobs:
        b.settle(j)


def scan(b: Backlog, listed: Mapping[str, int], writing: bool = False, now: float = NOW) -> None:
    """
    A scan that begins and ends with nothing happening in between, whose
    listing counted C{listed}.
    """
    b.scanned(b.beginScan(now), listed, writing)


class LimitTests(SynchronousTestCase):
    """
    Tests for C{max_pending} (L{Backlog.full}) and the window's size.
    """

    def test_fullAtMaxPending(self) -> None:
        """
        Once a hook has C{max_pending} pending jobs, it is full: a
        L{BacklogFull} naming it, its count and its limit; below, it is not.
        """
        b = backlog(a=HookLimits(maxPending=2))
        b.reserve([job(1)])
        self.assertEqual(b.full(), [])
        b.reserve([job(2)])
        [error] = b.full()
        self.assertEqual((error.hook, error.pending, error.limit), ("a", 2, 2))

    def test_firstFullHookNamed(self) -> None:
        """
        Of several hooks, the first full one, in the hooks' order, is named.
        """
        b = backlog(a=HookLimits(maxPending=5), b=HookLimits(maxPending=1), c=HookLimits(maxPending=1))
        b.reserve([job(1, "a"), job(1, "b"), job(1, "c")])
        self.assertEqual([error.hook for error in b.full()], ["b", "c"])

    def test_noLimit(self) -> None:
        """
        A hook whose C{max_pending} is L{None} never refuses.
        """
        b = backlog()
        b.reserve([job(n) for n in range(1000)])
        self.assertEqual(b.full(), [])
        self.assertEqual(b.counts, {"a": 1000})

    def test_defaultLimit(self) -> None:
        """
        Limits given without a C{maxPending} have the default cap.
        """
        self.assertEqual(HookLimits().maxPending, DEFAULT_MAX_PENDING)

    def test_windowFromMaxInFlight(self) -> None:
        """
        A hook's window is the one given, or twice its C{max_in_flight}
        if that is more, so that the window never caps its concurrency.
        """
        b = backlog(4, a=HookLimits(maxInFlight=15), b=HookLimits(maxInFlight=1), c=HookLimits())
        self.assertEqual(b.windows, {"a": 30, "b": 4, "c": 4})


class CountTests(SynchronousTestCase):
    """
    Tests for the counts kept as jobs come and go, without scans.
    """

    def test_reserveCounts(self) -> None:
        """
        Reserved jobs count as pending at once, each for its hook.
        """
        b = backlog(a=HookLimits(), b=HookLimits())
        b.reserve([job(1, "a"), job(1, "b"), job(2, "a")])
        self.assertEqual(b.counts, {"a": 2, "b": 1})

    def test_settleOnce(self) -> None:
        """
        Settling a reserved job leaves it counted, and says so only the
        first time.
        """
        b = backlog()
        b.reserve([job(1)])
        self.assertEqual((b.settle(job(1)), b.settle(job(1))), (True, False))
        self.assertEqual(b.counts, {"a": 1})

    def test_releaseUncountsOnce(self) -> None:
        """
        Released jobs are no longer pending; releasing them again, or
        releasing jobs already settled, takes nothing more off.
        """
        b = backlog()
        stored(b, job(1))
        b.reserve([job(2), job(3)])
        b.release([job(2), job(3)], NOW)
        b.release([job(2), job(1)], NOW)
        self.assertEqual(b.counts, {"a": 1})

    def test_finishedUncounts(self) -> None:
        """
        A job whose file left C{pending/} is no longer counted, never
        below zero; one whose file could not be changed still is.
        """
        b = backlog()
        stored(b, job(1), job(2))
        b.finished(job(1), changed=False, now=NOW)
        self.assertEqual(b.counts, {"a": 2})
        b.finished(job(1), changed=True, now=NOW)
        b.finished(job(2), changed=True, now=NOW)
        b.finished(job(3), changed=True, now=NOW)
        self.assertEqual(b.counts, {"a": 0})

    def test_countsAreACopy(self) -> None:
        """
        Changing the counts handed out changes nothing kept.
        """
        b = backlog()
        b.counts["a"] = 7
        self.assertEqual(b.counts, {"a": 0})


class WindowTests(SynchronousTestCase):
    """
    Tests for L{Backlog.admit} and L{Backlog.forget}: which jobs are held
    in memory.
    """

    def test_windowBoundsHeld(self) -> None:
        """
        No more jobs of a hook are held than its window; forgetting one
        makes room for another.
        """
        b = backlog(2)
        stored(b, job(1), job(2), job(3))
        self.assertEqual([b.admit(job(n)) for n in (1, 2, 3)], [True, True, False])
        self.assertEqual(b.held, {"a": 2})
        b.forget(job(1))
        self.assertEqual((b.admit(job(3)), b.held), (True, {"a": 2}))

    def test_windowPerHook(self) -> None:
        """
        One hook's full window does not stop another's jobs.
        """
        b = backlog(1, a=HookLimits(), b=HookLimits())
        self.assertEqual([b.admit(job(1, "a")), b.admit(job(2, "a")), b.admit(job(1, "b"))], [True, False, True])

    def test_heldOnce(self) -> None:
        """
        A job already held is not admitted again.
        """
        b = backlog()
        self.assertEqual((b.admit(job(1)), b.admit(job(1)), b.held), (True, False, {"a": 1}))

    def test_committingNotAdmitted(self) -> None:
        """
        A job of a delivery being committed is admitted only once settled,
        and never once released.
        """
        b = backlog()
        b.reserve([job(1), job(2)])
        self.assertEqual((b.admit(job(1)), b.admit(job(2))), (False, False))
        b.settle(job(1))
        b.release([job(2)], NOW)
        self.assertEqual((b.admit(job(1)), b.admit(job(2))), (True, False))

    def test_unknownHookNotAdmitted(self) -> None:
        """
        A job of a hook the backlog does not know is not held.
        """
        b = backlog()
        self.assertEqual((b.admit(job(1, "gone")), b.held), (False, {"a": 0}))

    def test_finishedNotAdmittedUntilLaterScan(self) -> None:
        """
        A job that finished is not admitted again, until a scan begins
        after it finished (then its file, if still there, was put back).
        """
        b = backlog()
        stored(b, job(1))
        b.admit(job(1))
        b.forget(job(1))
        b.finished(job(1), changed=True, now=NOW)
        self.assertFalse(b.admit(job(1)))
        b.beginScan(NOW)
        self.assertFalse(b.admit(job(1)), "finished as the scan began: it may be listed")
        b.beginScan(NOW + 1)
        self.assertTrue(b.admit(job(1)))


class ScanTests(SynchronousTestCase):
    """
    Tests for L{Backlog.beginScan} and L{Backlog.scanned}: what a scan
    reads, and how its listing sets the counts.
    """

    def test_planReadsRoomSkipsKnownJobs(self) -> None:
        """
        A scan may read each hook's window's room, and skips the jobs held,
        just finished and being committed; only the last are not counted.
        """
        b = backlog(4, a=HookLimits(), b=HookLimits())
        stored(b, job(1), job(2), job(3))
        b.admit(job(1))
        b.admit(job(2))
        b.forget(job(2))
        b.finished(job(2), changed=True, now=NOW)
        b.reserve([job(4)])
        plan = b.beginScan(NOW)
        self.assertEqual(plan.room, {"a": 3, "b": 4})
        self.assertEqual(plan.skip, {job(n).id for n in (1, 2, 4)})
        self.assertEqual(plan.uncounted, {job(4).id})

    def test_countsFromListing(self) -> None:
        """
        A quiet scan sets the counts to what the listing found, so jobs
        put back or removed by hand are counted.
        """
        b = backlog(a=HookLimits(), b=HookLimits())
        stored(b, job(1))
        scan(b, {"a": 5})
        self.assertEqual(b.counts, {"a": 5, "b": 0})

    def test_unknownHooksNotCounted(self) -> None:
        """
        Jobs of hooks not configured, as listed, are not counted.
        """
        b = backlog()
        scan(b, {"a": 1, "gone": 3})
        self.assertEqual(b.counts, {"a": 1})

    def test_committingCountedOnce(self) -> None:
        """
        Jobs being committed when a scan begins count by their
        reservations, once, whether settled or released before it ends.
        """
        b = backlog()
        b.reserve([job(1), job(2)])
        plan = b.beginScan(NOW)
        b.settle(job(1))
        b.release([job(2)], NOW)
        b.scanned(plan, {"a": 3}, writing=False)
        self.assertEqual(b.counts, {"a": 4})

    def test_knownCountsKeptWhenInexact(self) -> None:
        """
        Once a scan has counted exactly, a scan during which jobs arrived,
        finished, or were being written leaves the counts kept as jobs
        came and went.
        """
        b = backlog()
        scan(b, {"a": 2})
        for change in ("arrived", "finished", "writing"):
            plan = b.beginScan(NOW)
            if change == "arrived":
                stored(b, job(1))
            elif change == "finished":
                b.finished(job(1), changed=True, now=NOW)
            before = b.counts
            b.scanned(plan, {"a": 9}, writing=change == "writing")
            self.assertEqual(b.counts, before, change)

    def test_firstCountEstimatedThenExact(self) -> None:
        """
        If the first scan is not exact, its listing serves as an estimate
        (off by no more than the jobs that arrived meanwhile), until a
        quiet scan counts exactly.
        """
        b = backlog()
        plan = b.beginScan(NOW)
        stored(b, job(1))
        b.scanned(plan, {"a": 4}, writing=False)
        self.assertEqual(b.counts, {"a": 5}, "its file listed, and counted as it arrived")
        plan = b.beginScan(NOW)
        b.scanned(plan, {"a": 3}, writing=True)
        self.assertEqual(b.counts, {"a": 3}, "still an estimate")
        scan(b, {"a": 4})
        plan = b.beginScan(NOW)
        stored(b, job(2))
        b.scanned(plan, {"a": 1}, writing=False)
        self.assertEqual(b.counts, {"a": 5}, "exact once: kept from then on")

    def test_estimateNeverBelowZero(self) -> None:
        """
        An estimate that would be negative (a job finished as the listing
        missed its file) is zero.
        """
        b = backlog()
        stored(b, job(1))
        plan = b.beginScan(NOW)
        b.finished(job(1), changed=True, now=NOW)
        b.scanned(plan, {}, writing=False)
        self.assertEqual(b.counts, {"a": 0})


class DeferTests(SynchronousTestCase):
    """
    Tests for L{Backlog.defer}: jobs waiting for a retry, remembered by id
    and due time, not held.
    """

    def test_deferredTakesNoRoom(self) -> None:
        """
        A held job let go of for its retry (and another read not due yet)
        takes no room in the window, and is not admitted while it waits.
        """
        b = backlog(2)
        stored(b, *(job(n) for n in range(4)))
        b.admit(job(0))
        b.admit(job(1))
        b.forget(job(0))
        self.assertTrue(b.defer(evolve(job(0), due=NOW + 30)))
        self.assertTrue(b.defer(evolve(job(3), due=NOW + 60)))
        self.assertFalse(b.admit(job(0)))
        self.assertEqual([b.admit(job(2)), b.admit(job(3))], [True, False])
        self.assertEqual((b.held, b.deferred, b.counts), ({"a": 2}, {"a": 2}, {"a": 4}))

    def test_notDeferredTwiceOrWhileHeld(self) -> None:
        """
        A job already waiting, held, being committed or just finished is
        not deferred.
        """
        b = backlog()
        stored(b, job(1), job(2))
        b.reserve([job(3)])
        b.admit(job(1))
        b.forget(job(2))
        b.finished(job(2), changed=False, now=NOW)
        stored(b, job(4))
        self.assertTrue(b.defer(job(4)))
        self.assertEqual([b.defer(job(n)) for n in (1, 2, 3, 4)], [False, False, False, False])
        self.assertEqual(b.deferred, {"a": 1})

    def test_scanSkipsUntilDue(self) -> None:
        """
        Scans skip a waiting job's file until one begins at or after its
        due time, which reads it again like any.
        """
        b = backlog()
        stored(b, job(1), job(2))
        b.defer(evolve(job(1), due=NOW + 30))
        b.defer(evolve(job(2), due=NOW + 60))
        self.assertEqual(b.nextDue, NOW + 30)
        self.assertEqual(b.beginScan(NOW + 29.9).skip, {job(1).id, job(2).id})
        self.assertEqual(b.beginScan(NOW + 30).skip, {job(2).id})
        self.assertEqual((b.deferred, b.nextDue), ({"a": 1}, NOW + 60))
        self.assertTrue(b.admit(job(1)))
        b.beginScan(NOW + 60)
        self.assertEqual((b.deferred, b.nextDue), ({"a": 0}, None))

    def test_deferLimitIsMaxPending(self) -> None:
        """
        A hook remembers at most its C{max_pending} waiting jobs (a hook
        without one, L{DEFER_WINDOWS} windows' worth); beyond that a job
        is not deferred, and may be held instead.
        """
        b = backlog(4, a=HookLimits(maxPending=2), b=HookLimits(maxPending=None))
        self.assertEqual(b.deferLimits, {"a": 2, "b": DEFER_WINDOWS * 4})
        stored(b, *(job(n) for n in range(3)))
        self.assertEqual([b.defer(job(n)) for n in range(3)], [True, True, False])
        self.assertTrue(b.admit(job(2)))

    def test_waitingJobsNeedNoRefill(self) -> None:
        """
        Jobs waiting for a retry do not make an empty window read the
        spool: there is nothing there to run until they are due.
        """
        b = backlog(4)
        stored(b, job(1), job(2))
        b.defer(job(1))
        self.assertTrue(b.wantsRefill())
        b.defer(job(2))
        self.assertFalse(b.wantsRefill())


class RefillTests(SynchronousTestCase):
    """
    Tests for L{Backlog.wantsRefill}: when a scan should read more.
    """

    def test_refillAtHalfWindowWhileJobsWait(self) -> None:
        """
        More is read once a hook's window has drained to half while more of
        its jobs wait in the spool, not before.
        """
        b = backlog(4)
        stored(b, *(job(n) for n in range(6)))
        for n in range(4):
            b.admit(job(n))
        self.assertFalse(b.wantsRefill())
        b.forget(job(0))
        b.finished(job(0), changed=True, now=NOW)
        self.assertFalse(b.wantsRefill())
        b.forget(job(1))
        b.finished(job(1), changed=True, now=NOW)
        self.assertTrue(b.wantsRefill())

    def test_noRefillWithNothingWaiting(self) -> None:
        """
        An empty window with nothing else pending reads nothing.
        """
        b = backlog(4)
        stored(b, job(1))
        b.admit(job(1))
        self.assertFalse(b.wantsRefill())
        b.forget(job(1))
        b.finished(job(1), changed=True, now=NOW)
        self.assertFalse(b.wantsRefill())

    def test_committingJobsAreNotWaiting(self) -> None:
        """
        Jobs of deliveries being committed are not read by a refill: they
        start by their dispatch.
        """
        b = backlog(4)
        b.reserve([job(1), job(2)])
        self.assertFalse(b.wantsRefill())
        b.settle(job(1))
        self.assertTrue(b.wantsRefill())

    def test_claimedElsewhereAreNotWaiting(self) -> None:
        """
        Jobs another instance has claimed count as pending (for
        max_pending) but do not make an empty window read the spool:
        they are not there for this instance to run.
        """
        b = backlog(4, a=HookLimits(maxPending=3))
        plan = b.beginScan(NOW)
        b.scanned(plan, {"a": 3}, writing=False, elsewhere={"a": 3})
        self.assertEqual((b.counts, [full.hook for full in b.full()]), ({"a": 3}, ["a"]))
        self.assertFalse(b.wantsRefill())
        b.scanned(b.beginScan(NOW), {"a": 4}, writing=False, elsewhere={"a": 3})
        self.assertTrue(b.wantsRefill())
