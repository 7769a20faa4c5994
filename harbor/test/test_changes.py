"""
Tests for L{harbor.store.changes}: snapshots of the Maildirs' listings and
what changed between two of them, as live updates report it.
"""

from __future__ import annotations

import os
import time
from typing import Any

from harbor.store import browse
from harbor.store.changes import RACY_SECONDS, Change, diff, snapshot
from harbor.test.test_browse import NOW, StoreTestCase, messageID


class ChangesTests(StoreTestCase):
    """
    Tests for L{snapshot} and L{diff}.
    """

    def setUp(self) -> None:
        self.root = self.makeRoot("example.com", "example.net/bob")
        self.first = self.deliver(self.root, "example.com", messageID(NOW, count=1))
        self.second = self.deliver(self.root, "example.net/bob", messageID(NOW + 1, count=2))
        self.before = snapshot(self.root)

    def test_nothing(self) -> None:
        """
        Two snapshots of an unchanged store differ in nothing.
        """
        self.assertEqual(diff(self.before, snapshot(self.root)), [])
        self.assertEqual(len(self.before), 2)

    def test_new(self) -> None:
        """
        A message delivered since is new, in its Maildir.
        """
        self.deliver(self.root, "example.net/bob", messageID(NOW + 2, count=3))
        self.assertEqual(
            diff(self.before, snapshot(self.root)), [Change("new", "example.net/bob", messageID(NOW + 2, count=3))]
        )

    def test_seenMove(self) -> None:
        """
        A mail reader's move from C{new/} to C{cur/} with C{:2,S} is one
        change, C{seen}, not a deletion and a new message.
        """
        browse.setSeen(self.root, messageID(NOW, count=1), True)
        self.assertEqual(
            diff(self.before, snapshot(self.root)), [Change("seen", "example.com", messageID(NOW, count=1), True)]
        )

    def test_movedAndUnseen(self) -> None:
        """
        A move to C{cur/} without the seen flag, and the flag cleared, are
        C{moved}.
        """
        os.rename(self.first, self.first.replace("/new/", "/cur/") + ":2,")
        middle = snapshot(self.root)
        self.assertEqual(diff(self.before, middle), [Change("moved", "example.com", messageID(NOW, count=1), False)])
        browse.setSeen(self.root, messageID(NOW, count=1), True)
        seen = snapshot(self.root)
        browse.setSeen(self.root, messageID(NOW, count=1), False)
        self.assertEqual(
            diff(seen, snapshot(self.root)), [Change("moved", "example.com", messageID(NOW, count=1), False)]
        )

    def test_deleted(self) -> None:
        """
        A message removed is deleted; deletions come first.
        """
        os.unlink(self.second)
        self.deliver(self.root, "example.com", messageID(NOW + 3, count=4))
        self.assertEqual(
            diff(self.before, snapshot(self.root)),
            [
                Change("deleted", "example.net/bob", messageID(NOW + 1, count=2)),
                Change("new", "example.com", messageID(NOW + 3, count=4)),
            ],
        )

    def test_onlyGivenKeys(self) -> None:
        """
        A snapshot of some Maildirs sees nothing of the others.
        """
        before = snapshot(self.root, {"example.com"})
        self.deliver(self.root, "example.net/bob", messageID(NOW + 2, count=3))
        self.assertEqual(diff(before, snapshot(self.root, {"example.com"})), [])
        self.assertEqual(len(before), 1)

    def test_maildirGone(self) -> None:
        """
        A Maildir that disappears has its messages deleted.
        """
        for sub in ("new", "cur", "tmp"):
            directory = os.path.join(self.root, "example.net/bob", sub)
            for name in os.listdir(directory):
                os.unlink(os.path.join(directory, name))
            os.rmdir(directory)
        self.assertEqual(
            diff(self.before, snapshot(self.root)), [Change("deleted", "example.net/bob", messageID(NOW + 1, count=2))]
        )

    def test_notMessagesIgnored(self) -> None:
        """
        Hidden, id-less and unprintable names are no messages.
        """
        for name in (".x", ",S=1", "bad\nname"):
            with open(os.path.join(self.root, "example.com", "new", name), "wb"):
                pass
        self.assertEqual(diff(self.before, snapshot(self.root)), [])

    def test_asJSON(self) -> None:
        """
        A change's JSON form has its kind, mailbox, id and flag.
        """
        self.assertEqual(
            Change("seen", "example.com", "1.M1", True).asJSON(),
            {"kind": "seen", "mailbox": "example.com", "id": "1.M1", "seen": True},
        )


class ReuseTests(StoreTestCase):
    """
    Tests for the reuse of unchanged listings by L{snapshot}.
    """

    def setUp(self) -> None:
        self.root = self.makeRoot("example.com")
        self.deliver(self.root, "example.com", messageID(NOW, count=1))
        self.listed: list[str] = []
        real = os.listdir

        def counting(path: Any = ".") -> list[str]:
            self.listed.append(str(path))
            return real(path)

        self.patch(os, "listdir", counting)

    def settle(self, seconds: float) -> None:
        """
        Give the Maildir's directories a modification time C{seconds} ago.
        """
        when = time.time() - seconds
        for sub in ("new", "cur"):
            os.utime(os.path.join(self.root, "example.com", sub), (when, when))

    def messageListings(self) -> list[str]:
        """
        The listings of C{new/} and C{cur/} made so far.
        """
        return [path for path in self.listed if path.endswith(("/new", "/cur"))]

    def test_quietMaildirNotListedAgain(self) -> None:
        """
        A Maildir whose directories have not changed for a while is not
        listed again, and its messages are still there.
        """
        self.settle(RACY_SECONDS * 5)
        first = snapshot(self.root)
        del self.listed[:]
        second = snapshot(self.root, previous=first)
        self.assertEqual(self.messageListings(), [])
        self.assertEqual(len(second), 1)
        self.assertEqual(diff(first, second), [])

    def test_changedMaildirListed(self) -> None:
        """
        A Maildir whose directory changed is listed again.
        """
        self.settle(RACY_SECONDS * 5)
        first = snapshot(self.root)
        self.deliver(self.root, "example.com", messageID(NOW + 1, count=2))
        second = snapshot(self.root, previous=first)
        self.assertEqual(diff(first, second), [Change("new", "example.com", messageID(NOW + 1, count=2))])

    def test_racyListingNotTrusted(self) -> None:
        """
        A listing made within moments of its directory's last change is
        made again, so that a change in the same clock tick, which leaves
        the time as it was, is not missed.
        """
        self.settle(0)
        first = snapshot(self.root)
        mtimes = first._maildirs["example.com"].mtimes
        self.deliver(self.root, "example.com", messageID(NOW + 1, count=2))
        # As if the delivery happened in the same clock tick: the times
        # are those the first snapshot saw.
        for sub, mtime in zip(("new", "cur"), mtimes):
            os.utime(os.path.join(self.root, "example.com", sub), ns=(mtime, mtime))
        second = snapshot(self.root, previous=first)
        self.assertEqual(diff(first, second), [Change("new", "example.com", messageID(NOW + 1, count=2))])
