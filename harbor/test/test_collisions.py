"""
Tests for what happens when two writers sharing a Maildir make the same
name (L{harbor.store.writer.NameTaken}): no file ever replaces another,
every message is stored, and everything said about a message (the 250
reply, the log line, the trace header, the hooks' jobs) names the file it
is really stored in.
"""

from __future__ import annotations

import email
import errno
import glob
import mailbox
import os
import threading
from typing import Any, cast

from twisted.internet.task import Clock
from twisted.logger import ILogObserver, Logger
from twisted.trial.unittest import SynchronousTestCase

from harbor.delivery import HarborMessage
from harbor.hooks.runner import HookRunner
from harbor.hooks.spool import spoolFor
from harbor.routing import DomainConfig
from harbor.smtp._protocol import HarborESMTP
from harbor.store.fs import RealFileSystem, StorageError
from harbor.store.names import MaildirNamer, parseName
from harbor.store.writer import (
    MEMORY_THRESHOLD,
    NAME_ATTEMPTS,
    Companion,
    MaildirStore,
    NameTaken,
    StoredMessage,
)
from harbor.test._hooksupport import FakeHook
from harbor.test._support import (
    DeferredThreads,
    RecordingFileSystem,
    SMTPDriver,
    files,
    makeDeliverer,
)

HOST = "mx.example.com"


def frozenNamer(sameRandom: bool = True) -> MaildirNamer:
    """
    A namer with pid 1, host C{mx.example.com} and a clock that never
    moves: two of them make the same names, unless given real random bytes.
    """
    if sameRandom:
        return MaildirNamer(HOST, Clock().seconds, pid=1, random=bytes)
    return MaildirNamer(HOST, Clock().seconds, pid=1)


def header(id: str) -> bytes:
    """
    A trace header naming the copy's id, as the delivery's does.
    """
    return f"X-Id: {id}\n".encode()


def deliver(store: MaildirStore, body: bytes, mailboxes: tuple[str, ...] = ("example.com",)) -> list[StoredMessage]:
    pending = store.begin([(mailbox, header) for mailbox in mailboxes])
    pending.write(body)
    return pending.commit()


class SharedMaildirTests(SynchronousTestCase):
    """
    Two writers (stores with their own namers) with the same pid, host and
    a frozen clock, sharing a Maildir.
    """

    def setUp(self) -> None:
        self.root = self.mktemp()
        self.fs = RealFileSystem()
        self.maildir = os.path.join(self.root, "example.com")

    def stores(self, sameRandom: bool) -> tuple[MaildirStore, MaildirStore]:
        first = MaildirStore(self.root, frozenNamer(sameRandom), self.fs)
        second = MaildirStore(self.root, frozenNamer(sameRandom), self.fs)
        first.create("example.com")
        return first, second

    def assertAllKept(self, bodies: list[bytes], stored: list[StoredMessage]) -> None:
        """
        Every body is in the Maildir once, as read by C{mailbox}, in the
        file its stored copy names, whose header names that file's id;
        C{tmp/} is empty.
        """
        box = mailbox.Maildir(self.maildir, create=False)
        self.assertEqual(len(box), len(bodies))
        self.assertEqual(sorted(message.get_payload(decode=True) for message in box), sorted(bodies))
        self.assertEqual(len({copy.id for copy in stored}), len(bodies))
        for copy in stored:
            with open(copy.path, "rb") as f:
                parsed = email.message_from_bytes(f.read())
            name = parseName(os.path.basename(copy.path))
            assert name is not None
            self.assertEqual((parsed["X-Id"], name.id, name.size), (copy.id, copy.id, copy.size))
        self.assertEqual(os.listdir(os.path.join(self.maildir, "tmp")), [])

    def test_randomPartKeepsThemApart(self) -> None:
        """
        With the random part from the operating system, the two writers'
        names never meet: each keeps all its messages.
        """
        first, second = self.stores(sameRandom=False)
        bodies = [b"message %03d\n" % n for n in range(40)]
        stored = [copy for n, body in enumerate(bodies) for copy in deliver((first, second)[n % 2], body)]
        self.assertAllKept(bodies, stored)
        # No name was ever taken: each writer used its names in turn.
        counts = [copy.id.split("Q")[1].split(".")[0] for copy in stored]
        self.assertEqual(counts, [str(n // 2 + 1) for n in range(40)])

    def test_sameNamesBothKept(self) -> None:
        """
        Even when the two writers make exactly the same names (the same
        random bytes too, and messages of one size, so that whole file
        names meet), each takes a new name where the other's file is:
        every message is stored and none is replaced.
        """
        first, second = self.stores(sameRandom=True)
        bodies = [b"message %03d\n" % n for n in range(40)]
        stored = [copy for n, body in enumerate(bodies) for copy in deliver((first, second)[n % 2], body)]
        self.assertAllKept(bodies, stored)

    def test_concurrentWriters(self) -> None:
        """
        Two writers delivering at the same time, in threads, both keep
        every message, small and spilled.
        """
        first, second = self.stores(sameRandom=False)
        results: dict[int, list[StoredMessage]] = {}

        def run(store: MaildirStore, offset: int) -> None:
            stored = []
            for n in range(offset, offset + 150):
                body = b"message %d\n" % n
                if n % 50 == 0:
                    body += b"x" * (MEMORY_THRESHOLD + 1)
                stored.extend(deliver(store, body))
            results[offset] = stored

        threads = [threading.Thread(target=run, args=(store, offset)) for store, offset in ((first, 0), (second, 150))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        bodies = [b"message %d\n" % n + (b"x" * (MEMORY_THRESHOLD + 1) if n % 50 == 0 else b"") for n in range(300)]
        self.assertAllKept(bodies, results[0] + results[150])


class ExistingFileTests(SynchronousTestCase):
    """
    A file already in the Maildir with the very name a delivery planned is
    never replaced: the delivery is stored under another name.
    """

    def setUp(self) -> None:
        self.root = self.mktemp()
        self.store = MaildirStore(self.root, frozenNamer(), RealFileSystem())
        self.store.create("example.com")
        self.store.create("example.org")
        self.maildir = os.path.join(self.root, "example.com")

    def occupy(self, path: str) -> None:
        with open(path, "wb") as f:
            f.write(b"X-Id: someone else's\n\nprecious\n")

    def assertOccupied(self, path: str) -> None:
        with open(path, "rb") as f:
            self.assertEqual(f.read(), b"X-Id: someone else's\n\nprecious\n")

    def assertStored(self, copy: StoredMessage, body: bytes) -> None:
        with open(copy.path, "rb") as f:
            self.assertEqual(f.read(), header(copy.id) + body)
        self.assertEqual(os.path.getsize(copy.path), copy.size)

    def assertTmpEmpty(self, *mailboxes: str) -> None:
        for name in mailboxes or ("example.com",):
            self.assertEqual(os.listdir(os.path.join(self.root, name, "tmp")), [])

    def test_smallMessage(self) -> None:
        """
        A small message whose name is taken in C{new/} is stored under a
        new one, with a header that names it; the other file is intact.
        """
        pending = self.store.begin([("example.com", header)])
        pending.write(b"\nhello\n")
        [planned] = pending.planned()
        self.occupy(planned.path)
        [stored] = pending.commit()
        self.assertNotEqual(stored.id, planned.id)
        self.assertOccupied(planned.path)
        self.assertStored(stored, b"\nhello\n")
        self.assertTmpEmpty()
        self.assertEqual(len(mailbox.Maildir(self.maildir, create=False)), 2)

    def test_spilledMessage(self) -> None:
        """
        A spilled message whose name is taken is rewritten, from its old
        file, under a new name; no file is left in C{tmp/}.
        """
        body = b"\n" + b"y" * (MEMORY_THRESHOLD + 10)
        pending = self.store.begin([("example.com", header), ("example.org", header)])
        pending.write(body)
        planned = pending.planned()
        self.occupy(planned[0].path)
        stored = pending.commit()
        self.assertNotIn(planned[0].id, [copy.id for copy in stored])
        self.assertOccupied(planned[0].path)
        for copy in stored:
            self.assertStored(copy, body)
        self.assertTmpEmpty("example.com", "example.org")

    def test_laterCopyTaken(self) -> None:
        """
        When only a later copy's name is taken, the copies already in
        C{new/} are taken out again and every copy is stored under a new
        name (so that nothing recorded under the old names survives).
        """
        pending = self.store.begin([("example.com", header), ("example.org", header)])
        pending.write(b"\nhi\n")
        planned = pending.planned()
        self.occupy(planned[1].path)
        stored = pending.commit()
        self.assertEqual(len(stored), 2)
        self.assertFalse(os.path.exists(planned[0].path))
        self.assertOccupied(planned[1].path)
        self.assertTrue({copy.id for copy in stored}.isdisjoint(copy.id for copy in planned))
        for copy in stored:
            self.assertStored(copy, b"\nhi\n")
        self.assertEqual(len(mailbox.Maildir(os.path.join(self.root, "example.com"), create=False)), 1)
        self.assertTmpEmpty("example.com", "example.org")

    def test_takenInTmp(self) -> None:
        """
        A name taken in C{tmp/} (another writer's file being written) is
        given up before anything is in C{new/}; the other file is left.
        """
        pending = self.store.begin([("example.com", header)])
        pending.write(b"\nhello\n")
        [planned] = pending.planned()
        theirs = os.path.join(self.maildir, "tmp", planned.id)
        self.occupy(theirs)
        [stored] = pending.commit()
        self.assertNotEqual(stored.id, planned.id)
        self.assertStored(stored, b"\nhello\n")
        self.assertEqual(os.listdir(os.path.join(self.maildir, "tmp")), [planned.id])
        self.assertOccupied(theirs)

    def test_takenInTmpAtSpill(self) -> None:
        """
        A name taken in C{tmp/} when a large message first spills is
        replaced there and then, before anything was told the name.
        """
        pending = self.store.begin([("example.com", header)])
        [planned] = pending.planned()
        theirs = os.path.join(self.maildir, "tmp", planned.id)
        self.occupy(theirs)
        body = b"\n" + b"z" * (MEMORY_THRESHOLD + 1)
        pending.write(body)
        self.assertIsNone(pending.failure)
        [renamed] = pending.planned()
        self.assertNotEqual(renamed.id, planned.id)
        [stored] = pending.commit()
        self.assertEqual(stored, renamed)
        self.assertStored(stored, body)
        self.assertOccupied(theirs)

    def test_givesUp(self) -> None:
        """
        A namer that only ever makes taken names fails the delivery with
        NameTaken (a 451 for the client) after NAME_ATTEMPTS tries, having
        replaced nothing and left nothing behind.
        """
        namer = frozenNamer()
        taken: list[str] = []
        original = namer.nextName

        def nextName() -> str:
            name = original()
            taken.append(name)
            return name

        self.patch(namer, "nextName", nextName)
        store = MaildirStore(self.root, namer, RealFileSystem())
        rename = RealFileSystem.renameNoReplace

        def occupyThenRename(fs: RealFileSystem, source: str, destination: str) -> None:
            self.occupy(destination)
            rename(fs, source, destination)

        self.patch(RealFileSystem, "renameNoReplace", occupyThenRename)
        pending = store.begin([("example.com", header)])
        pending.write(b"\nhello\n")
        error = self.assertRaises(NameTaken, pending.commit)
        self.assertIsInstance(error, StorageError)
        self.assertEqual(len(taken), NAME_ATTEMPTS)
        self.assertTmpEmpty()
        for name in os.listdir(os.path.join(self.maildir, "new")):
            self.assertOccupied(os.path.join(self.maildir, "new", name))

    def companion(self, calls: list[str], what: str) -> Companion:
        return Companion(lambda: calls.append(what), lambda: calls.append("remove " + what), what)

    def test_companionWrittenAgain(self) -> None:
        """
        A commit that finds a name taken removes the companion written
        under the old names; after renew the copies are planned, and
        stored, under new ones, with the companion written again.
        """
        calls: list[str] = []
        pending = self.store.begin([("example.com", header)])
        pending.write(b"\nhello\n")
        [planned] = pending.planned()
        self.occupy(planned.path)
        pending.accompany(self.companion(calls, "jobs"))
        [failure] = self.store.commitMany([(pending, None)])
        self.assertIsInstance(failure, NameTaken)
        self.assertEqual(calls, ["jobs", "remove jobs"])
        pending.renew()
        [renamed] = pending.planned()
        self.assertNotEqual(renamed.id, planned.id)
        pending.accompany(self.companion(calls, "new jobs"))
        self.assertEqual(self.store.commitMany([(pending, None)]), [[renamed]])
        self.assertEqual(calls, ["jobs", "remove jobs", "new jobs"])
        self.assertStored(renamed, b"\nhello\n")
        self.assertTmpEmpty()

    def test_commitWithCompanionGivesUp(self) -> None:
        """
        PendingDelivery.commit does not retry a delivery with a companion
        (its owner must write it again under the new names): it fails with
        NameTaken, leaving nothing behind.
        """
        calls: list[str] = []
        pending = self.store.begin([("example.com", header)])
        pending.write(b"\nhello\n")
        [planned] = pending.planned()
        self.occupy(planned.path)
        pending.accompany(self.companion(calls, "jobs"))
        self.assertRaises(NameTaken, pending.commit)
        self.assertEqual(calls, ["jobs", "remove jobs"])
        self.assertTmpEmpty()
        self.assertEqual(os.listdir(os.path.join(self.maildir, "new")), [os.path.basename(planned.path)])


class TakenOnce(RecordingFileSystem):
    """
    A recording file system on which the first move into a C{new/} finds
    its name taken, as if another instance had just stored a file there.
    """

    def __init__(self) -> None:
        super().__init__()
        self.taken: list[str] = []

    def renameNoReplace(self, source: str, destination: str) -> None:
        if not self.taken and os.sep + "new" + os.sep in destination:
            self.taken.append(destination)
            self._record("renameNoReplace", destination)
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), destination)
        super().renameNoReplace(source, destination)


class FakeCollisionTests(SynchronousTestCase):
    """
    A rename into C{new/} that fails with EEXIST is tried again under a
    new name.
    """

    def test_retriedUnderNewName(self) -> None:
        """
        The second move goes to a new name; the first target was never
        created and the message is in the second.
        """
        fs = TakenOnce()
        store = MaildirStore(self.mktemp(), frozenNamer(), fs)
        store.create("example.com")
        [stored] = deliver(store, b"\nhello\n")
        moves = [path for name, path in fs.calls if name == "renameNoReplace"]
        self.assertEqual(moves, fs.taken + [stored.path])
        self.assertNotEqual(fs.taken[0], stored.path)
        self.assertFalse(os.path.exists(fs.taken[0]))
        self.assertTrue(os.path.exists(stored.path))


class DeliveryTests(SynchronousTestCase):
    """
    Through SMTP, with a hook: when the planned name turns out taken, the
    250 reply, the log line, the trace header and the hook's job all name
    the file the message is really stored in.
    """

    def setUp(self) -> None:
        self.root = self.mktemp()
        self.fs = TakenOnce()
        self.threads = DeferredThreads()
        self.clock = Clock()
        self.deliverer, self.store = makeDeliverer(
            self.root, [DomainConfig("example.com")], fs=self.fs, runInThread=self.threads, clock=self.clock
        )
        self.hook = FakeHook("notify")
        self.spool = spoolFor(self.root)
        self.runner = HookRunner(self.spool, [self.hook], self.clock, self.threads, fs=self.fs)
        self.addCleanup(self.runner.stop)
        self.deliverer.hooks = self.runner
        self.events: list[dict[str, Any]] = []
        self.patch(HarborESMTP, "_log", Logger(observer=cast(ILogObserver, self.events.append)))
        self.patch(HarborMessage, "_log", Logger(observer=cast(ILogObserver, self.events.append)))
        self.smtp = SMTPDriver(self.deliverer, self.clock)
        self.smtp.send(b"EHLO client.example\r\n")

    def test_everythingNamesTheStoredFile(self) -> None:
        """
        The reply, the log line, the header and the hook's event follow
        the name the message was stored under, not the taken one; the
        retry is logged.
        """
        self.smtp.send(b"MAIL FROM:<s@x.org>\r\nRCPT TO:<a@example.com>\r\nDATA\r\n")
        reply = self.smtp.send(b"Subject: hi\r\n\r\nHello.\r\n.\r\n")
        self.threads.runAll()
        reply += self.smtp.take()
        [name] = files(self.root, "example.com", "new")
        parsed = parseName(name)
        assert parsed is not None
        self.assertEqual(reply, b"250 2.0.0 Ok: stored as " + parsed.id.encode() + b"\r\n")
        self.assertNotEqual(os.path.basename(self.fs.taken[0]), name)
        [line] = [e for e in self.events if "result" in e]
        self.assertEqual(line["ids"], parsed.id)
        [warning] = [e for e in self.events if "storing the message under new names" in e.get("log_format", "")]
        self.assertIn(os.path.basename(self.fs.taken[0]).split(",")[0], warning["error"])
        path = os.path.join(self.root, "example.com", "new", name)
        with open(path, "rb") as f:
            self.assertIn(b" id " + parsed.id.encode() + b"\n", f.read())
        # The job waits in pending/ or, held by this instance, in its claim
        # directory; either way it names the stored file.
        jobs = [os.path.basename(job) for job in glob.glob(os.path.join(self.spool, "pending", "*"))]
        jobs += [os.path.basename(job) for job in glob.glob(os.path.join(self.spool, "claimed", "*", "*"))]
        self.assertEqual([job.split(",")[0] for job in jobs], [parsed.id])
        self.clock.advance(0)
        self.threads.runAll()
        self.assertEqual([(event.id, event.path) for event in self.hook.calls], [(parsed.id, path)])
