"""
Tests for L{harbor.store.reader}, which reads and tidies the Maildirs.

Each test builds a Maildir tree the way the server (or a mail reader)
leaves it, in a temporary directory.
"""

from __future__ import annotations

import os
import time
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from harbor.store import reader
from harbor.store.names import MaildirName
from harbor.store.reader import (
    MessageFile,
    Query,
    StoreError,
    deleteMessage,
    deliveryTime,
    findMessage,
    findStaleTemporaryFiles,
    listMessages,
    mailboxStats,
    markSeen,
    seenFilename,
)
from harbor.test.test_cli import NOW, _CommandTestCase, messageBytes, messageID


class _StoreTestCase(_CommandTestCase):
    """
    Helpers to build a store (those of the command's tests), with delivered
    messages given by path.
    """

    def deliver(
        self,
        root: str,
        mailbox: str,
        identifier: str,
        content: bytes = b"",
        sub: str = "new",
        flags: str | None = None,
    ) -> str:
        """
        Store C{content} (a sample message by default) named as the server
        (or, with C{flags}, a mail reader) would name it, and return its
        path.
        """
        name = super().deliver(root, mailbox, identifier, content or messageBytes(), sub, flags)
        return os.path.join(root, mailbox, sub, name)

    def countOpens(self) -> list[str]:
        """
        Record the files L{harbor.store.reader} opens from now on.

        @return: The list the opened paths are appended to.
        """
        opened: list[str] = []

        def recordingOpen(path: str, *args: Any, **kwargs: Any) -> Any:
            opened.append(path)
            return open(path, *args, **kwargs)

        # A module global shadows the builtin for the module's code.
        reader.open = recordingOpen  # type: ignore[attr-defined]
        self.addCleanup(delattr, reader, "open")
        return opened


class DeliveryTimeTests(SynchronousTestCase):
    """
    Tests for L{deliveryTime}.
    """

    def test_secondsAndMicroseconds(self) -> None:
        """
        The seconds that start an id, plus the microseconds of its C{M}
        field, are the delivery time.
        """
        self.assertEqual(deliveryTime("1732314178.M250000P7Q1.mx"), 1732314178.25)

    def test_secondsOnly(self) -> None:
        """
        An id without an C{M} field, or with only seconds, gives whole
        seconds.
        """
        self.assertEqual(deliveryTime("1732314178.P7Q1.mx"), 1732314178.0)
        self.assertEqual(deliveryTime("1732314178"), 1732314178.0)

    def test_notATime(self) -> None:
        """
        Ids that do not start with a plausible time give L{None}.
        """
        for identifier in [
            "abc.M1P1",
            "123abc.M1",
            "",
            ".M1",
            "99999999999999.M1",
            "\u0661\u0662.M1",
        ]:
            self.assertIsNone(deliveryTime(identifier), identifier)

    def test_orderWithinASecond(self) -> None:
        """
        Within one second, the microseconds order deliveries even when
        their ids would sort the other way as text.
        """
        earlier = deliveryTime(f"{NOW}.M99P1Q1.mx")
        later = deliveryTime(f"{NOW}.M100P1Q2.mx")

        self.assertEqual((earlier, later), (NOW + 0.000099, NOW + 0.0001))
        assert earlier is not None and later is not None
        self.assertLess(earlier, later)


class ListMessagesTests(_StoreTestCase):
    """
    Tests for L{listMessages}: what it lists and which files it opens.
    """

    def setUp(self) -> None:
        self.root = self.makeRoot("example.com", "example.org")
        self.paths = {}
        for offset in range(6):
            mailbox = ("example.com", "example.org")[offset % 2]
            recipient = f"user{offset}@{mailbox}"
            sub, flags = ("cur", "S") if offset % 3 == 0 else ("new", None)
            identifier = messageID(NOW + offset * 100, offset)
            self.paths[identifier] = self.deliver(
                self.root,
                mailbox,
                identifier,
                messageBytes(sender=f"Sender{offset}@X.org", recipient=recipient),
                sub=sub,
                flags=flags,
            )
        self.ids = sorted(self.paths, reverse=True)

    def test_limitOpensOnlyThatMany(self) -> None:
        """
        With a limit and no header filter, only the newest messages' files
        are opened.
        """
        opened = self.countOpens()

        summaries = listMessages(self.root, Query(limit=2))

        self.assertEqual([s.id for s in summaries], self.ids[:2])
        self.assertEqual(sorted(opened), sorted(self.paths[i] for i in self.ids[:2]))

    def test_sinceFromNames(self) -> None:
        """
        Messages delivered before C{since} are left out without being
        opened; one delivered exactly then is listed.
        """
        opened = self.countOpens()

        summaries = listMessages(self.root, Query(since=NOW + 300))

        self.assertEqual([s.id for s in summaries], self.ids[:3])
        self.assertEqual(len(opened), 3)

    def test_mailboxFromDirectories(self) -> None:
        """
        A mailbox filter lists that Maildir only, opening no other.
        """
        opened = self.countOpens()

        summaries = listMessages(self.root, Query(mailbox="example.org"))

        self.assertEqual({s.mailbox for s in summaries}, {"example.org"})
        self.assertEqual(len(summaries), 3)
        self.assertTrue(all("/example.org/" in path for path in opened))

    def test_unknownMailbox(self) -> None:
        """
        A mailbox the root does not have is an error naming it.
        """
        error = self.assertRaises(StoreError, listMessages, self.root, Query(mailbox="example.net"))

        self.assertEqual(str(error), f"no Maildir for example.net in {self.root}")

    def test_headerFilterStopsAtLimit(self) -> None:
        """
        With a header filter and a limit, files are opened newest first
        until enough match, and no further.
        """
        opened = self.countOpens()

        summaries = listMessages(self.root, Query(recipient="@EXAMPLE.COM", limit=2))

        # Messages 4 and 2 are the newest for example.com; 5 and 3 were
        # opened on the way.
        self.assertEqual([s.id for s in summaries], [self.ids[1], self.ids[3]])
        self.assertEqual(len(opened), 4)

    def test_senderFilter(self) -> None:
        """
        The sender filter matches a substring of the envelope sender,
        without regard to case.
        """
        summaries = listMessages(self.root, Query(sender="sender3@x"))

        self.assertEqual([s.sender for s in summaries], ["Sender3@X.org"])

    def test_filtersCombine(self) -> None:
        """
        Every filter must pass: since, mailbox, recipient and limit
        together.
        """
        query = Query(mailbox="example.com", since=NOW + 100, recipient="user", limit=5)

        summaries = listMessages(self.root, query)

        self.assertEqual(
            [s.recipient for s in summaries], ["user4@example.com", "user2@example.com"]
        )

    def test_noReturnPath(self) -> None:
        """
        A message without a C{Return-Path:} never matches a sender filter,
        not even an empty one.
        """
        root = self.makeRoot("example.com")
        self.deliver(root, "example.com", messageID(NOW), b"Subject: x\n\nbody\n")

        self.assertEqual(listMessages(root, Query(sender="")), [])
        self.assertEqual(len(listMessages(root, Query())), 1)

    def test_nameWithoutTime(self) -> None:
        """
        A file whose id has no time (written by other software) is placed
        by its modification time.
        """
        root = self.makeRoot("example.com")
        path = self.deliver(root, "example.com", "no-time-here")
        os.utime(path, (NOW + 50, NOW + 50))
        self.deliver(root, "example.com", messageID(NOW, 1))
        self.deliver(root, "example.com", messageID(NOW + 100, 2))

        summaries = listMessages(root, Query(since=NOW + 10))

        self.assertEqual(
            [(s.id, s.delivered) for s in summaries],
            [(messageID(NOW + 100, 2), NOW + 100 + 0.123458), ("no-time-here", NOW + 50)],
        )


class MarkSeenTests(_StoreTestCase):
    """
    Tests for L{seenFilename} and L{markSeen}.
    """

    def test_seenFilename(self) -> None:
        """
        C{S} joins the flags, which stay in ASCII order without
        duplicates; a name without standard info gets C{:2,S}.
        """
        cases = {
            "1.M1P1Q1.mx,S=10": "1.M1P1Q1.mx,S=10:2,S",
            "1.M1P1Q1.mx,S=10:2,": "1.M1P1Q1.mx,S=10:2,S",
            "1.M1P1Q1.mx,S=10:2,RF": "1.M1P1Q1.mx,S=10:2,FRS",
            "1.M1P1Q1.mx,S=10:2,S": "1.M1P1Q1.mx,S=10:2,S",
            "1.M1P1Q1.mx,S=10:2,Tab": "1.M1P1Q1.mx,S=10:2,STab",
            "1.M1P1Q1.mx,S=10:1,experimental": "1.M1P1Q1.mx,S=10:2,S",
        }
        for before, after in cases.items():
            self.assertEqual(seenFilename(before), after, before)

    def find(self, root: str, identifier: str) -> MessageFile:
        """
        Find a message that must exist.
        """
        message = findMessage(root, identifier)
        assert message is not None
        return message

    def test_fromNew(self) -> None:
        """
        A message in C{new/} moves to C{cur/} with C{:2,S}, its content
        unchanged.
        """
        root = self.makeRoot("example.com")
        path = self.deliver(root, "example.com", messageID(NOW))

        moved = markSeen(self.find(root, messageID(NOW)))

        self.assertEqual(
            moved.path, os.path.join(root, "example.com", "cur", os.path.basename(path) + ":2,S")
        )
        self.assertEqual((moved.seen, moved.subdirectory, moved.name.flags), (True, "cur", "S"))
        self.assertEqual(os.listdir(os.path.join(root, "example.com", "new")), [])
        with open(moved.path, "rb") as f:
            self.assertEqual(f.read(), messageBytes())

    def test_inCur(self) -> None:
        """
        A message already in C{cur/} gets C{S} added to its flags.
        """
        root = self.makeRoot("example.com")
        path = self.deliver(root, "example.com", messageID(NOW), sub="cur", flags="R")

        moved = markSeen(self.find(root, messageID(NOW)))

        self.assertEqual(os.path.basename(moved.path), os.path.basename(path)[: -len("R")] + "RS")
        self.assertFalse(os.path.exists(path))

    def test_alreadySeen(self) -> None:
        """
        A message already seen is left alone.
        """
        root = self.makeRoot("example.com")
        path = self.deliver(root, "example.com", messageID(NOW), sub="cur", flags="FS")

        self.assertEqual(markSeen(self.find(root, messageID(NOW))).path, path)
        self.assertTrue(os.path.exists(path))

    def test_movedMeanwhile(self) -> None:
        """
        A message a reader moved after it was found is marked where it is
        now, keeping the reader's flags.
        """
        root = self.makeRoot("example.com")
        path = self.deliver(root, "example.com", messageID(NOW))
        message = self.find(root, messageID(NOW))
        os.rename(path, os.path.join(root, "example.com", "cur", os.path.basename(path) + ":2,R"))

        moved = markSeen(message)

        self.assertEqual(moved.name.flags, "RS")
        self.assertEqual(
            os.listdir(os.path.join(root, "example.com", "cur")), [os.path.basename(moved.path)]
        )

    def test_vanished(self) -> None:
        """
        A message deleted after it was found is an error.
        """
        root = self.makeRoot("example.com")
        path = self.deliver(root, "example.com", messageID(NOW))
        message = self.find(root, messageID(NOW))
        os.unlink(path)

        self.assertRaises(StoreError, markSeen, message)

    def test_destinationTaken(self) -> None:
        """
        A file already named as the seen message would be is never
        replaced.
        """
        root = self.makeRoot("example.com")
        path = self.deliver(root, "example.com", messageID(NOW))
        taken = os.path.join(root, "example.com", "cur", os.path.basename(path) + ":2,S")
        with open(taken, "wb") as f:
            f.write(b"other")

        self.assertRaises(StoreError, markSeen, self.find(root, messageID(NOW)))
        with open(taken, "rb") as f:
            self.assertEqual(f.read(), b"other")
        self.assertTrue(os.path.exists(path))


class DeleteAndStatsTests(_StoreTestCase):
    """
    Tests for L{deleteMessage}, L{findStaleTemporaryFiles} and
    L{mailboxStats}.
    """

    def test_deleteMoved(self) -> None:
        """
        A message moved to C{cur/} after it was found is deleted there.
        """
        root = self.makeRoot("example.com")
        path = self.deliver(root, "example.com", messageID(NOW))
        message = findMessage(root, messageID(NOW))
        assert message is not None
        moved = os.path.join(root, "example.com", "cur", os.path.basename(path) + ":2,S")
        os.rename(path, moved)

        deleted = deleteMessage(message)

        self.assertEqual(deleted.path if deleted else None, moved)
        self.assertFalse(os.path.exists(moved))

    def test_deleteGone(self) -> None:
        """
        Deleting a message that is gone already gives L{None}.
        """
        root = self.makeRoot("example.com")
        path = self.deliver(root, "example.com", messageID(NOW))
        message = findMessage(root, messageID(NOW))
        assert message is not None
        os.unlink(path)

        self.assertIsNone(deleteMessage(message))

    def test_staleTemporaryFiles(self) -> None:
        """
        A file in C{tmp/} is stale once it has been neither read, written
        nor changed for 36 hours; directories are never taken.
        """
        root = self.makeRoot("example.com", "example.org")
        tmp = os.path.join(root, "example.com", "tmp")
        for name in ("old", "written", "read"):
            with open(os.path.join(tmp, name), "wb") as f:
                f.write(b"partial")
        os.mkdir(os.path.join(tmp, "directory"))
        now = time.time() + 40 * 60 * 60
        os.utime(os.path.join(tmp, "written"), (0, now - 60))
        os.utime(os.path.join(tmp, "read"), (now - 60, 0))

        stale = list(findStaleTemporaryFiles(root, now))

        self.assertEqual(
            [(s.mailbox, s.path, s.size) for s in stale],
            [("example.com", os.path.join(tmp, "old"), 7)],
        )
        self.assertEqual(list(findStaleTemporaryFiles(root, time.time())), [])
        self.assertEqual(list(findStaleTemporaryFiles(root, now, "example.org")), [])

    def test_stats(self) -> None:
        """
        Messages are counted per mailbox, by directory, their sizes taken
        from their names, or from the file for a name without one.
        """
        root = self.makeRoot("example.com", "example.org")
        self.deliver(root, "example.com", messageID(NOW, 1), b"x" * 10)
        self.deliver(root, "example.com", messageID(NOW, 2), b"y" * 20, sub="cur", flags="S")
        self.deliver(root, "example.com", messageID(NOW, 3), b"z" * 30, sub="cur", flags="")
        with open(os.path.join(root, "example.org", "new", "unsized"), "wb") as f:
            f.write(b"w" * 7)
        with open(os.path.join(root, "example.org", "tmp", messageID(NOW, 4)), "wb") as f:
            f.write(b"in progress")

        stats = mailboxStats(root)

        self.assertEqual(
            [(s.mailbox, s.messages, s.new, s.cur, s.size) for s in stats],
            [("example.com", 3, 1, 2, 60), ("example.org", 1, 1, 0, 7)],
        )


class MessageFileTests(SynchronousTestCase):
    """
    Tests for L{MessageFile}.
    """

    def test_maildir(self) -> None:
        """
        A message's Maildir is the parent of its C{new/} or C{cur/}.
        """
        message = MessageFile(
            mailbox="example.com",
            path="/r/example.com/cur/1.M1,S=1:2,S",
            filename="1.M1,S=1:2,S",
            name=MaildirName("1.M1", 1, "S"),
            subdirectory="cur",
            seen=True,
        )

        self.assertEqual(message.maildir, "/r/example.com")


class NestedMailboxTests(SynchronousTestCase):
    """
    Mailboxes and Maildir++ folders below a domain's Maildir.
    """

    def test_foundAndFiltered(self) -> None:
        """
        Messages in mailboxes, folders and users' submissions are listed;
        --domain takes a domain's whole tree, --folder one folder.
        """
        from harbor.store.reader import Query, listMessages

        root = self.mktemp()
        for relative in ["example.org", "example.org/alice", "example.org/alice/.Lists.python", ".submitted/bob"]:
            for sub in ("tmp", "new", "cur"):
                os.makedirs(os.path.join(root, relative, sub))
        for i, relative in enumerate(["example.org", "example.org/alice", "example.org/alice/.Lists.python", ".submitted/bob"]):
            with open(os.path.join(root, relative, "new", f"{1700000000 + i}.M1P1Q{i}.h,S=10"), "wb") as f:
                f.write(b"Return-Path: <s@x.org>\nDelivered-To: a@example.org\nSubject: m\n\nbody\n")
        mailboxes = sorted(s.mailbox for s in listMessages(root, Query()))
        self.assertEqual(
            mailboxes, [".submitted/bob", "example.org", "example.org/alice", "example.org/alice/.Lists.python"]
        )
        self.assertEqual(len(listMessages(root, Query(mailbox="example.org"))), 3)
        [filed] = listMessages(root, Query(folder="Lists.python"))
        self.assertEqual(filed.mailbox, "example.org/alice/.Lists.python")
