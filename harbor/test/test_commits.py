"""
Tests for L{harbor.store.lanes} (which message goes to which commit lane)
and L{harbor.store.commits} (the lanes run in real threads): the order of
durability in every lane, a slow file or file system holding only its own
lanes, and one hand-over to the reactor thread per batch.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable, Hashable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import SynchronousTestCase

from harbor.store.commits import CommitQueue
from harbor.store.lanes import LaneScheduler
from harbor.store.names import MaildirNamer
from harbor.store.writer import (
    MEMORY_THRESHOLD,
    MaildirStore,
    PendingDelivery,
    StoredMessage,
)
from harbor.test._support import DeferredThreads, RecordingFileSystem

# The longest a threaded test waits for something that should happen at
# once; only a broken lane makes a test wait that long.
WAIT = 10.0


class LaneSchedulerTests(SynchronousTestCase):
    """
    Tests for L{LaneScheduler}: batches, lanes in flight and the cap on
    the lanes one file system may hold.
    """

    def test_batchSizeCap(self) -> None:
        """
        A lane takes what is waiting for its file systems, oldest first,
        up to the batch size; the rest wait for the next lane.
        """
        lanes: LaneScheduler[int] = LaneScheduler(1, 3)
        for n in range(7):
            lanes.add(n, ["A"])
        taken = []
        while (batch := lanes.take()) is not None:
            key, entries = batch
            taken.append(entries)
            self.assertIsNone(lanes.take())
            lanes.release(key)
        self.assertEqual(taken, [[0, 1, 2], [3, 4, 5], [6]])
        self.assertTrue(lanes.idle)

    def test_lanesInParallel(self) -> None:
        """
        As many batches are in flight as there are lanes, no more; one
        file system alone may use them all.
        """
        lanes: LaneScheduler[int] = LaneScheduler(3, 32)
        inFlight = []
        for n in range(4):
            lanes.add(n, ["A"])
            taken = lanes.take()
            if taken is not None:
                inFlight.append(taken)
        self.assertEqual([entries for _, entries in inFlight], [[0], [1], [2]])
        self.assertEqual(lanes.cap, 3)
        lanes.release(inFlight[0][0])
        self.assertEqual(lanes.take(), (frozenset({"A"}), [3]))

    def test_perFileSystemCap(self) -> None:
        """
        Once several file systems have been seen, one may hold only one
        lane fewer than there are, so another always gets one.
        """
        lanes: LaneScheduler[str] = LaneScheduler(3, 32)
        lanes.add("b0", ["B"])
        key, _ = lanes.take()  # type: ignore[misc]
        lanes.release(key)
        for n in range(3):
            lanes.add(f"a{n}", ["A"])
            if n < 2:
                self.assertEqual(lanes.take(), (frozenset({"A"}), [f"a{n}"]))
        self.assertEqual(lanes.cap, 2)
        self.assertIsNone(lanes.take())
        lanes.add("b1", ["B"])
        self.assertEqual(lanes.take(), (frozenset({"B"}), ["b1"]))

    def test_capAtLeastOne(self) -> None:
        """
        With a single lane, a file system may still hold it.
        """
        lanes: LaneScheduler[str] = LaneScheduler(1, 32)
        lanes.add("a", ["A"])
        lanes.add("b", ["B"])
        self.assertEqual(lanes.cap, 1)
        self.assertEqual(lanes.take(), (frozenset({"A"}), ["a"]))

    def test_messageOnTwoFileSystemsHoldsBoth(self) -> None:
        """
        A message with copies on two file systems holds a lane of each, and
        waits while either is at its cap.
        """
        lanes: LaneScheduler[str] = LaneScheduler(3, 32)
        for n in range(2):
            lanes.add(f"a{n}", ["A"])
            lanes.take()
        lanes.add("ab", ["A", "B"])
        lanes.add("b", ["B"])
        self.assertEqual(lanes.take(), (frozenset({"B"}), ["b"]))
        self.assertIsNone(lanes.take())

    def test_roundRobin(self) -> None:
        """
        File systems take turns: after a batch for one, the next lane goes
        to another that is waiting, even if the first has more.
        """
        lanes: LaneScheduler[str] = LaneScheduler(1, 2)
        for name in ("a0", "a1", "a2", "b0"):
            lanes.add(name, [name[0]])
        order = []
        while (taken := lanes.take()) is not None:
            order.append(taken[1])
            lanes.release(taken[0])
        self.assertEqual(order, [["a0", "a1"], ["b0"], ["a2"]])

    def test_learnedReplacesProvisional(self) -> None:
        """
        A Maildir counted as a file system of its own until its device was
        learned is counted as that device afterwards: two Maildirs found
        to be on one file system leave it every lane.
        """
        lanes: LaneScheduler[str] = LaneScheduler(3, 32)
        lanes.add("x", [("directory", "/m/x/tmp")])
        lanes.add("y", [("directory", "/m/y/tmp")])
        self.assertEqual(lanes.cap, 2)
        lanes.learned(("directory", "/m/x/tmp"), 7)
        lanes.learned(("directory", "/m/y/tmp"), 7)
        self.assertEqual(lanes.cap, 3)


class LoggingFileSystem(RecordingFileSystem):
    """
    A L{RecordingFileSystem} that also logs the thread of each call, in
    one list with the replies (see L{LaneFixture.reply}), and can hold
    the fsync of files in one Maildir until told to go on.

    @ivar log: C{(name, path, thread)} in the order the calls happened.
    @ivar holdUnder: Files under this directory have their fsync wait for
        L{release}.
    @ivar held: Counts the fsyncs that have started waiting.
    @ivar barrier: If set, each fsync waits there first, so the test sees
        that that many lanes are fsyncing at once.
    """

    def __init__(self) -> None:
        super().__init__()
        self.grouped = False
        self.log: list[tuple[str, str, int]] = []
        self.holdUnder: str | None = None
        self.release = threading.Event()
        self.held = threading.Semaphore(0)
        self.heldCount = 0
        self.barrier: threading.Barrier | None = None

    def _record(self, name: str, path: str) -> None:
        self.log.append((name, path, threading.get_ident()))
        super()._record(name, path)

    def fsync(self, f: Any) -> None:
        path = getattr(f, "path", "")
        barrier = self.barrier
        if barrier is not None:
            barrier.wait(WAIT)
        if self.holdUnder is not None and path.startswith(self.holdUnder + os.sep):
            self.heldCount += 1
            self.held.release()
            if not self.release.wait(WAIT):
                raise AssertionError("the held fsync was never released")
        super().fsync(f)


class ThreadedReactor:
    """
    Just enough reactor for C{deferToThreadPool}: what the threads hand to
    the reactor thread waits in a queue until the test runs it, on the
    test's thread, which stands for the reactor's.

    @ivar handOvers: How many times a thread handed something over.
    """

    def __init__(self) -> None:
        self._calls: queue.Queue[Callable[[], Any]] = queue.Queue()
        self.handOvers = 0
        self._lock = threading.Lock()

    def callFromThread(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        with self._lock:
            self.handOvers += 1
        self._calls.put(lambda: f(*args, **kwargs))

    def runUntil(self, condition: Callable[[], bool], what: str) -> None:
        """
        Run what the threads hand over until C{condition} holds; fail if it
        does not within L{WAIT} seconds.
        """
        deadline = time.monotonic() + WAIT
        while not condition():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out waiting for {what}")
            try:
                call = self._calls.get(timeout=remaining)
            except queue.Empty:
                continue
            call()


class LaneFixture(SynchronousTestCase):
    """
    A store with Maildirs C{fast.example} and C{slow.example} on a
    L{LoggingFileSystem}, and commit lanes on a real thread pool.
    """

    def setUp(self) -> None:
        self.root = os.path.abspath(self.mktemp())
        self.fs = LoggingFileSystem()
        self.store = MaildirStore(self.root, MaildirNamer("h", Clock().seconds, pid=1), self.fs)
        for mailbox in ("fast.example", "slow.example"):
            self.store.create(mailbox)
        self.reactor = ThreadedReactor()
        self.batches: list[int] = []
        self.replies: dict[int, list[StoredMessage]] = {}

    def lanes(self, lanes: int, batch: int = 32, **kwargs: Any) -> CommitQueue:
        pool = ThreadPool(minthreads=0, maxthreads=lanes + 2, name="test-commit")
        pool.start()
        self.addCleanup(pool.stop)
        self.addCleanup(self.fs.release.set)

        def commitMany(deliveries: Any) -> list[Any]:
            self.batches.append(len(deliveries))
            return self.store.commitMany(deliveries)

        def runInThread(f: Callable[[], Any]) -> Deferred[Any]:
            return deferToThreadPool(self.reactor, pool, f)  # type: ignore[arg-type]

        return CommitQueue(runInThread, commitMany, lanes=lanes, batch=batch, **kwargs)

    def pending(self, mailbox: str = "fast.example", size: int = 10) -> PendingDelivery:
        pending = self.store.begin([(mailbox, lambda id: b"H\n")])
        pending.write(b"x" * size)
        return pending

    def commit(self, commits: CommitQueue, n: int, mailbox: str = "fast.example", size: int = 10) -> None:
        """
        Commit message C{n}; its reply is logged in the file system's log
        and kept in L{replies} when it comes.
        """

        def reply(stored: list[StoredMessage]) -> None:
            self.fs.log.append(("reply", stored[0].id, threading.get_ident()))
            self.replies[n] = stored

        commits.commit(self.pending(mailbox, size), None).addCallback(reply)

    def waitForHeld(self, count: int) -> None:
        for _ in range(count):
            self.assertTrue(self.fs.held.acquire(timeout=WAIT), "an fsync to hold never started")


class CommitLaneTests(LaneFixture):
    """
    Tests for L{CommitQueue}'s lanes in real threads.
    """

    def test_orderInEveryLane(self) -> None:
        """
        With four lanes fsyncing at once and later messages in batches, in
        every lane each file is fsynced before its rename, the rename comes
        before the fsync of its new/, and that comes before the 250.
        """
        commits = self.lanes(4)
        self.fs.barrier = threading.Barrier(4)
        for n in range(4):
            self.commit(commits, n)
        # Each of the four waits at the barrier until all four fsync.
        self.reactor.runUntil(lambda: len(self.replies) == 4, "four lanes fsyncing at once")
        self.fs.barrier = None
        for n in range(4, 20):
            self.commit(commits, n)
        self.reactor.runUntil(lambda: len(self.replies) == 20, "every reply")
        log = self.fs.log
        fsyncThreads = {thread for name, _, thread in log if name == "fsync"}
        self.assertGreaterEqual(len(fsyncThreads), 4)
        main = threading.get_ident()
        self.assertNotIn(main, fsyncThreads)
        for stored in self.replies.values():
            [copy] = stored
            new = os.path.dirname(copy.path)
            tmp = os.path.join(os.path.dirname(new), "tmp", copy.id)
            fsync = next(i for i, (name, path, _) in enumerate(log) if name == "fsync" and path == tmp)
            rename = next(i for i, (name, path, _) in enumerate(log) if name == "renameNoReplace" and path == copy.path)
            lane = log[rename][2]
            self.assertEqual(log[fsync][2], lane)
            directory = next(
                i for i, (name, path, thread) in enumerate(log)
                if i > rename and name == "syncDirectory" and path == new and thread == lane
            )
            reply = next(i for i, (name, path, _) in enumerate(log) if name == "reply" and path == copy.id)
            self.assertLess(fsync, rename)
            self.assertLess(rename, directory)
            self.assertLess(directory, reply)
            self.assertEqual(log[reply][2], main)
        self.assertEqual(len(os.listdir(os.path.join(self.root, "fast.example", "new"))), 20)
        self.assertEqual(sum(self.batches), 20)

    def test_newDirectoryFsyncedOncePerBatch(self) -> None:
        """
        A lane fsyncs each new/ directory once for its whole batch.
        """
        commits = self.lanes(1)
        self.fs.holdUnder = os.path.join(self.root, "fast.example")
        self.commit(commits, 0)
        self.waitForHeld(1)
        self.fs.holdUnder = None
        for n in range(1, 6):
            self.commit(commits, n)
        del self.fs.log[:]
        self.fs.release.set()
        self.reactor.runUntil(lambda: len(self.replies) == 6, "every reply")
        names = [name for name, _, _ in self.fs.log if name != "reply"]
        self.assertEqual(self.batches, [1, 5])
        self.assertEqual(
            names,
            ["fsync", "renameNoReplace", "syncDirectory"] + ["create", "fsync"] * 5 + ["renameNoReplace"] * 5 + ["syncDirectory"],
        )

    def test_slowFileDoesNotDelayOthers(self) -> None:
        """
        While one message's fsync is stuck, another message gets its 250;
        the stuck one gets its own once the fsync returns.
        """
        commits = self.lanes(4)
        self.fs.holdUnder = os.path.join(self.root, "slow.example")
        self.commit(commits, 0, "slow.example")
        self.waitForHeld(1)
        self.commit(commits, 1, "fast.example")
        self.reactor.runUntil(lambda: 1 in self.replies, "the fast message's reply")
        self.assertNotIn(0, self.replies)
        self.fs.release.set()
        self.reactor.runUntil(lambda: 0 in self.replies, "the slow message's reply")

    def test_slowFileSystemHoldsOnlyItsLanes(self) -> None:
        """
        A file system whose fsyncs hang takes at most one lane fewer than
        there are once another has been seen: its third message waits, and
        the other file system's messages still get their 250 in the lane
        left.
        """
        commits = self.lanes(3, fileSystemOf=lambda d: "slow" if "slow.example" in d else "fast")
        self.commit(commits, 0, "fast.example")
        self.reactor.runUntil(lambda: 0 in self.replies, "the first fast reply")
        self.fs.holdUnder = os.path.join(self.root, "slow.example")
        for n in (1, 2):
            self.commit(commits, n, "slow.example")
            self.waitForHeld(1)
        self.commit(commits, 3, "slow.example")
        for n in (4, 5):
            self.commit(commits, n, "fast.example")
            self.reactor.runUntil(lambda: n in self.replies, "a fast reply")  # noqa: B023
        self.assertEqual(self.fs.heldCount, 2)
        self.assertFalse({1, 2, 3} & set(self.replies))
        self.fs.release.set()
        self.reactor.runUntil(lambda: len(self.replies) == 6, "every reply")

    def test_oneHandOverPerBatch(self) -> None:
        """
        A batch's commits come back to the reactor thread in one hand-over,
        which fires every one of its senders' L{Deferred}s.
        """
        commits = self.lanes(1)
        self.fs.holdUnder = os.path.join(self.root, "fast.example")
        self.commit(commits, 0)
        self.waitForHeld(1)
        self.fs.holdUnder = None
        for n in range(1, 11):
            self.commit(commits, n)
        self.fs.release.set()
        self.reactor.runUntil(lambda: len(self.replies) == 11, "every reply")
        self.assertEqual((self.batches, self.reactor.handOvers), ([1, 10], 2))

    def test_fileSystemLearnedInLane(self) -> None:
        """
        The file system of a Maildir is found in a lane, never on the
        reactor thread, once per Maildir.
        """
        asked: list[tuple[str, int]] = []

        def fileSystemOf(directory: str) -> Hashable:
            asked.append((directory, threading.get_ident()))
            return os.stat(directory).st_dev

        commits = self.lanes(2, fileSystemOf=fileSystemOf)
        for n in range(3):
            self.commit(commits, n)
            self.reactor.runUntil(lambda: n in self.replies, "a reply")  # noqa: B023
        self.assertEqual([d for d, _ in asked], [os.path.join(self.root, "fast.example", "tmp")])
        self.assertNotIn(threading.get_ident(), [t for _, t in asked])


class LargeLaneTests(SynchronousTestCase):
    """
    Tests for the large messages' lanes and for L{CommitQueue.whenIdle},
    with threads that run when told to.
    """

    def setUp(self) -> None:
        self.root = self.mktemp()
        self.threads = DeferredThreads()
        self.store = MaildirStore(self.root, MaildirNamer("h", Clock().seconds, pid=1), RecordingFileSystem())
        self.store.create("example.com")

    def pending(self, size: int) -> PendingDelivery:
        pending = self.store.begin([("example.com", lambda id: b"H\n")])
        pending.write(b"x" * size)
        return pending

    def test_largeMessagesHaveTheirOwnLanes(self) -> None:
        """
        Large messages are committed one at a time in lanes of their own,
        beside the busy small messages' lane, as many at once as there are
        large lanes.
        """
        commits = CommitQueue(self.threads, self.store.commitMany, lanes=1, largeLanes=2)
        small = [commits.commit(self.pending(10), None) for _ in range(2)]
        large = [commits.commit(self.pending(MEMORY_THRESHOLD + 1), None) for _ in range(3)]
        self.assertEqual(len(self.threads.pending), 3)
        self.assertEqual(commits.threadsNeeded, 3)
        self.threads.runAll()
        for d in small + large:
            self.assertEqual(len(self.successResultOf(d)), 1)

    def test_whenIdle(self) -> None:
        """
        whenIdle fires at once when nothing is being committed, and
        otherwise only after the last commit, its senders answered first.
        """
        commits = CommitQueue(self.threads, self.store.commitMany, lanes=1)
        self.successResultOf(commits.whenIdle())
        order: list[str] = []
        commits.commit(self.pending(10), None).addCallback(lambda _: order.append("first"))
        commits.commit(self.pending(10), None).addCallback(lambda _: order.append("second"))
        idle = commits.whenIdle().addCallback(lambda _: order.append("idle"))
        self.assertNoResult(idle)
        self.threads.runAll()
        self.assertEqual(order, ["first", "second", "idle"])
