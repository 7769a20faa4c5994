"""
Tests for L{harbor.store.browse} and L{harbor.store.summaries}: the tree,
pages of summaries with their cursors, finding a message and its seen
flag, as the web interface uses them.

Each test builds a Maildir tree the way the server, or a mail reader,
leaves it, in a temporary directory.
"""

from __future__ import annotations

import mailbox
import os
from collections.abc import Callable, Collection
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from harbor.store import browse, reader, summaries
from harbor.store.browse import (
    Folder,
    Page,
    allowedKeys,
    listPage,
    mailboxTree,
    splitKey,
)
from harbor.store.reader import StoreError
from harbor.store.search import Budget, SearchError, parseQuery

NOW = 1732314178
HOST = "mx.example.com"
KEYS = (
    "example.com",
    "example.com/.Archive",
    "example.net/alice",
    "example.net/alice/.Lists.python",
    "example.net/bob",
    ".submitted/bob",
)


def messageID(seconds: int, micro: int = 123456, count: int = 1) -> str:
    """
    A Maildir id as L{harbor.store.names.MaildirNamer} makes them.
    """
    return f"{seconds}.M{micro}P4242Q{count}.{HOST}"


def messageBytes(
    sender: str = "sender@x.org",
    recipient: str = "alice@example.net",
    subject: str = "Hello",
    extra: str = "",
    body: str = "Hi Alice,\nhow are you?\n",
) -> bytes:
    """
    A stored file as the server writes it: trace headers, the client's
    headers (C{extra} among them), a blank line and the body.
    """
    return (
        f"Return-Path: <{sender}>\n"
        f"Delivered-To: {recipient}\n"
        "Received: from client.x.org (client.x.org [192.0.2.1])\n"
        f"\tby {HOST} (MailHarbor) with ESMTP\n"
        f"From: Sender <{sender}>\n"
        f"To: {recipient}\n"
        f"Subject: {subject}\n"
        "Date: Fri, 22 Nov 2024 22:22:50 +0000\n"
        f"{extra}\n"
        f"{body}"
    ).encode()


class StoreTestCase(SynchronousTestCase):
    """
    Helpers to build a store and watch what is opened in it.
    """

    def makeRoot(self, *keys: str) -> str:
        """
        A Maildir root with an empty Maildir for each key (L{KEYS} if none
        are given).
        """
        root: str = os.path.abspath(self.mktemp())
        os.makedirs(root)
        for key in keys or KEYS:
            for sub in ("tmp", "new", "cur"):
                os.makedirs(os.path.join(root, key, sub))
        return root

    def deliver(
        self,
        root: str,
        key: str,
        identifier: str,
        content: bytes | None = None,
        sub: str = "new",
        flags: str | None = None,
    ) -> str:
        """
        Store a message named as the server (or, with C{flags}, a mail
        reader) names it.

        @return: The file's path.
        """
        data = messageBytes() if content is None else content
        filename = f"{identifier},S={len(data)}"
        if flags is not None:
            filename += f":2,{flags}"
        path = os.path.join(root, key, sub, filename)
        with open(path, "wb") as f:
            f.write(data)
        return path

    def countOpens(self) -> list[str]:
        """
        Record the message files opened from now on.
        """
        opened: list[str] = []
        real = summaries.openMessage

        def recording(path: str) -> Any:
            opened.append(path)
            return real(path)

        self.patch(summaries, "openMessage", recording)
        self.patch(browse, "openMessage", recording)
        return opened

    def ids(self, page: Page) -> list[str]:
        """
        The ids of a page's messages, in order.
        """
        return [summary.id for summary in page.messages]

    def allPages(
        self,
        root: str,
        text: str = "",
        limit: int = 3,
        mailboxes: Collection[str] | None = None,
        budget: Budget = browse.DEFAULT_BUDGET,
        between: Callable[[], None] = lambda: None,
    ) -> list[Page]:
        """
        Every page of a listing, following the cursors to the end.
        """
        pages = []
        cursor = None
        for _ in range(100):
            page = listPage(root, mailboxes, parseQuery(text, now=NOW), cursor, limit, budget=budget)
            pages.append(page)
            cursor = page.cursor
            if cursor is None:
                return pages
            between()
        self.fail("the cursors never ended")


class SplitKeyTests(SynchronousTestCase):
    """
    Tests for L{splitKey}.
    """

    def test_shapes(self) -> None:
        """
        Each shape of Maildir key reads as its domain, mailbox and folder.
        """
        self.assertEqual(splitKey("example.com"), ("example.com", "", ""))
        self.assertEqual(splitKey("example.com/.Archive"), ("example.com", "", "Archive"))
        self.assertEqual(splitKey("example.net/alice"), ("example.net", "alice", ""))
        self.assertEqual(splitKey("example.net/alice/.Lists.python"), ("example.net", "alice", "Lists.python"))
        self.assertEqual(splitKey(".submitted/bob"), (".submitted", "bob", ""))

    def test_otherDirectories(self) -> None:
        """
        Directories that are not a domain's, mailbox's, folder's or
        submitted mail are not part of the tree.
        """
        for key in (".hooks", ".submitted", "example.net/alice/junk", "example.net/alice/.", ".x/y"):
            self.assertIsNone(splitKey(key), key)


class MailboxTreeTests(StoreTestCase):
    """
    Tests for L{mailboxTree}.
    """

    def test_treeAndCounts(self) -> None:
        """
        Every Maildir is in the tree, sorted by domain, mailbox and folder,
        with its new, unread and total counts.
        """
        root = self.makeRoot()
        self.deliver(root, "example.net/alice", messageID(NOW, count=1))
        self.deliver(root, "example.net/alice", messageID(NOW, count=2), sub="cur", flags="")
        self.deliver(root, "example.net/alice", messageID(NOW, count=3), sub="cur", flags="FS")
        self.deliver(root, ".submitted/bob", messageID(NOW, count=4), sub="cur", flags="S")
        self.assertEqual(
            mailboxTree(root),
            [
                Folder(".submitted/bob", ".submitted", "bob", "", 0, 0, 1),
                Folder("example.com", "example.com", "", "", 0, 0, 0),
                Folder("example.com/.Archive", "example.com", "", "Archive", 0, 0, 0),
                Folder("example.net/alice", "example.net", "alice", "", 1, 2, 3),
                Folder("example.net/alice/.Lists.python", "example.net", "alice", "Lists.python", 0, 0, 0),
                Folder("example.net/bob", "example.net", "bob", "", 0, 0, 0),
            ],
        )

    def test_countsFromNamesOnly(self) -> None:
        """
        The counts open no file, and names that are not messages' (hidden,
        without an id, unprintable) are not counted.
        """
        root = self.makeRoot("example.com")
        self.deliver(root, "example.com", messageID(NOW))
        for name in (".hidden", ",S=12", ":2,S", "bad\nname", "bad\x1bname"):
            with open(os.path.join(root, "example.com", "new", name), "wb") as f:
                f.write(b"x")
        opened = self.countOpens()
        [folder] = mailboxTree(root)
        self.assertEqual((folder.new, folder.total), (1, 1))
        self.assertEqual(opened, [])

    def test_onlyThoseGiven(self) -> None:
        """
        With C{mailboxes}, only those Maildirs are in the tree.
        """
        root = self.makeRoot()
        tree = mailboxTree(root, {"example.net/bob", "example.com"})
        self.assertEqual([folder.key for folder in tree], ["example.com", "example.net/bob"])

    def test_asJSON(self) -> None:
        """
        A folder's JSON form has its attributes.
        """
        folder = Folder("example.net/alice", "example.net", "alice", "", 1, 2, 3)
        self.assertEqual(
            folder.asJSON(),
            {"key": "example.net/alice", "domain": "example.net", "mailbox": "alice", "folder": "",
             "new": 1, "unread": 2, "total": 3},
        )

    def test_noRootYet(self) -> None:
        """
        A root that does not exist yet (no mail has arrived since the
        server started) is an empty tree with nothing to list, not an
        error: a new user's web interface opens before the first message.
        """
        root = os.path.abspath(self.mktemp())
        self.assertEqual(mailboxTree(root), [])
        self.assertEqual(listPage(root, None, parseQuery("")).messages, ())

    def test_rootNotADirectory(self) -> None:
        """
        A root that is not a directory is a L{StoreError}.
        """
        root = os.path.abspath(self.mktemp())
        with open(root, "w"):
            pass
        self.assertRaises(StoreError, mailboxTree, root)


class AllowedKeysTests(SynchronousTestCase):
    """
    Tests for L{allowedKeys}.
    """

    def test_grantsCoverWhatIsBelow(self) -> None:
        """
        A domain grants its mailboxes and folders; a mailbox its folders;
        nothing grants a neighbour whose name merely starts the same.
        """
        keys = [*KEYS, "example.network/eve", "example.net/bobby"]
        self.assertEqual(
            allowedKeys(keys, ["example.net/bob", "example.com"]),
            {"example.com", "example.com/.Archive", "example.net/bob"},
        )
        self.assertEqual(allowedKeys(keys, []), frozenset())
        self.assertEqual(allowedKeys(keys, ["/"]), frozenset())


class ListPageTests(StoreTestCase):
    """
    Tests for L{listPage} without search words.
    """

    def test_newestFirstOpeningOnlyThoseShown(self) -> None:
        """
        Messages are listed by the delivery time in their names, newest
        first across Maildirs, and only the files shown are opened.
        """
        root = self.makeRoot()
        paths = {}
        for n, key in enumerate(KEYS * 3):
            identifier = messageID(NOW + n // 2, micro=n, count=n)
            paths[identifier] = self.deliver(root, key, identifier)
        opened = self.countOpens()
        page = listPage(root, None, parseQuery(""), limit=4)
        expected = sorted(paths, key=lambda i: reader.deliveryTime(i) or 0, reverse=True)[:4]
        self.assertEqual(self.ids(page), expected)
        self.assertEqual(sorted(opened), sorted(paths[i] for i in expected))
        self.assertIsNotNone(page.cursor)
        self.assertEqual((page.searched, page.complete, page.stoppedBecause), (4, True, None))

    def test_pagesWithTies(self) -> None:
        """
        Following the cursors shows every message exactly once, in one
        order, even when many share a delivery time, across Maildirs.
        """
        root = self.makeRoot()
        delivered = []
        for n in range(11):
            # Seven delivered in the same microsecond, in two Maildirs.
            identifier = messageID(NOW, micro=5, count=n) if n < 7 else messageID(NOW - n, count=n)
            key = KEYS[n % 2]
            self.deliver(root, key, identifier, sub="cur" if n % 3 else "new", flags="S" if n % 3 else None)
            delivered.append(identifier)
        pages = self.allPages(root, limit=3)
        shown = [identifier for page in pages for identifier in self.ids(page)]
        self.assertEqual(sorted(shown), sorted(delivered))
        self.assertEqual(len(shown), len(set(shown)))
        self.assertEqual(shown, self.ids(listPage(root, None, parseQuery(""), limit=50)))
        self.assertEqual([len(page.messages) for page in pages], [3, 3, 3, 2])

    def test_sameIdInTwoMaildirs(self) -> None:
        """
        Copies with the same id in two Maildirs are both listed, one page
        apart if need be.
        """
        root = self.makeRoot()
        identifier = messageID(NOW)
        self.deliver(root, "example.com", identifier)
        self.deliver(root, "example.net/bob", identifier)
        pages = self.allPages(root, limit=1)
        self.assertEqual(
            [summary.mailbox for page in pages for summary in page.messages], ["example.net/bob", "example.com"]
        )

    def test_cursorStableWhenMailArrives(self) -> None:
        """
        Mail delivered after the first page was made does not shift the
        pages that follow it: they go on where the first one stopped.
        """
        root = self.makeRoot()
        for n in range(6):
            self.deliver(root, "example.com", messageID(NOW + n, count=n))
        first = listPage(root, None, parseQuery(""), limit=2)
        for n in range(6, 9):
            self.deliver(root, "example.com", messageID(NOW + n, count=n))
        second = listPage(root, None, parseQuery(""), first.cursor, limit=2)
        self.assertEqual(self.ids(first), [messageID(NOW + 5, count=5), messageID(NOW + 4, count=4)])
        self.assertEqual(self.ids(second), [messageID(NOW + 3, count=3), messageID(NOW + 2, count=2)])
        self.assertEqual(self.ids(listPage(root, None, parseQuery(""), limit=1)), [messageID(NOW + 8, count=8)])

    def test_cursorSurvivesSeen(self) -> None:
        """
        A message on the first page that a mail reader marks seen keeps
        its place: the next page starts after it.
        """
        root = self.makeRoot()
        for n in range(4):
            self.deliver(root, "example.com", messageID(NOW + n, count=n))
        first = listPage(root, None, parseQuery(""), limit=2)
        browse.setSeen(root, first.messages[-1].id, True)
        second = listPage(root, None, parseQuery(""), first.cursor, limit=2)
        self.assertEqual(self.ids(second), [messageID(NOW + 1, count=1), messageID(NOW, count=0)])

    def test_lastPageHasNoCursor(self) -> None:
        """
        A page that reaches the oldest message has no cursor, also when it
        is exactly full.
        """
        root = self.makeRoot()
        for n in range(4):
            self.deliver(root, "example.com", messageID(NOW + n, count=n))
        self.assertIsNone(listPage(root, None, parseQuery(""), limit=4).cursor)
        self.assertIsNone(listPage(root, None, parseQuery(""), limit=5).cursor)
        self.assertIsNotNone(listPage(root, None, parseQuery(""), limit=3).cursor)

    def test_badCursor(self) -> None:
        """
        A cursor this module did not make is a L{SearchError} that says
        to start again.
        """
        root = self.makeRoot()
        good = browse._encodeCursor((1.5, "x", "y"))
        self.assertEqual(browse._decodeCursor(good), (1.5, "x", "y"))
        for cursor in ("x", "1", "1!!!", "2" + good[1:], "1" + "A" * 3000, browse._CURSOR_VERSION + "WzFd"):
            error = self.assertRaises(SearchError, listPage, root, None, parseQuery(""), cursor)
            self.assertIn("start again", str(error))
        for value in ('[true,"a","b"]', '[1,2,"b"]', '{"a":1}', "[1e999,\"a\",\"b\"]"):
            import base64

            cursor = browse._CURSOR_VERSION + base64.urlsafe_b64encode(value.encode()).decode()
            self.assertRaises(SearchError, listPage, root, None, parseQuery(""), cursor)

    def test_badLimit(self) -> None:
        """
        A page holds at least one message.
        """
        self.assertRaises(ValueError, listPage, self.makeRoot(), None, parseQuery(""), None, 0)

    def test_onlyAllowedMailboxes(self) -> None:
        """
        With C{mailboxes}, messages in other Maildirs are neither listed
        nor opened, and a C{mailbox:} word cannot reach them.
        """
        root = self.makeRoot()
        mine = self.deliver(root, "example.net/bob", messageID(NOW, count=1))
        self.deliver(root, "example.net/alice", messageID(NOW + 1, count=2))
        self.deliver(root, "example.com", messageID(NOW + 2, count=3))
        opened = self.countOpens()
        page = listPage(root, {"example.net/bob"}, parseQuery(""))
        self.assertEqual(self.ids(page), [messageID(NOW, count=1)])
        self.assertEqual(opened, [mine])
        self.assertEqual(listPage(root, {"example.net/bob"}, parseQuery("mailbox:alice")).messages, ())
        self.assertEqual(listPage(root, set(), parseQuery("")).messages, ())

    def test_summaryFields(self) -> None:
        """
        A summary has the envelope, the decoded headers, the size and the
        flags, and its JSON form has them too.
        """
        root = self.makeRoot()
        content = messageBytes(
            sender="bank@bank.example",
            recipient="bob@example.net",
            subject="=?utf-8?q?Gr=C3=BC=C3=9Fe?=",
            extra="Content-Type: multipart/mixed; boundary=b",
        )
        self.deliver(root, "example.net/bob", messageID(NOW), content, sub="cur", flags="S")
        [summary] = listPage(root, None, parseQuery("")).messages
        self.assertEqual(summary.id, messageID(NOW))
        self.assertEqual(summary.mailbox, "example.net/bob")
        self.assertEqual(summary.delivered, NOW + 0.123456)
        self.assertEqual(summary.date, "Fri, 22 Nov 2024 22:22:50 +0000")
        self.assertEqual((summary.sender, summary.recipient), ("bank@bank.example", "bob@example.net"))
        self.assertEqual((summary.fromHeader, summary.toHeader), ("Sender <bank@bank.example>", "bob@example.net"))
        self.assertEqual(summary.subject, "Grüße")
        self.assertEqual(summary.size, len(content))
        self.assertEqual((summary.seen, summary.new, summary.hasAttachment), (True, False, True))
        self.assertEqual(
            summary.asJSON(),
            {
                "id": messageID(NOW),
                "mailbox": "example.net/bob",
                "delivered": "2024-11-22T22:22:58Z",
                "timestamp": NOW + 0.123456,
                "date": "Fri, 22 Nov 2024 22:22:50 +0000",
                "sender": "bank@bank.example",
                "recipient": "bob@example.net",
                "from": "Sender <bank@bank.example>",
                "to": "bob@example.net",
                "subject": "Grüße",
                "size": len(content),
                "seen": True,
                "new": False,
                "hasAttachment": True,
            },
        )

    def test_longHeadersCut(self) -> None:
        """
        A huge header is cut to L{summaries.MAX_FIELD} characters in a
        summary, with an ellipsis.
        """
        root = self.makeRoot()
        self.deliver(root, "example.com", messageID(NOW), messageBytes(subject="x" * 100_000))
        [summary] = listPage(root, None, parseQuery("")).messages
        self.assertEqual(summary.subject, "x" * (summaries.MAX_FIELD - 1) + "\u2026")

    def test_pageJSON(self) -> None:
        """
        A page's JSON form has its summaries, cursor and completeness.
        """
        root = self.makeRoot()
        self.deliver(root, "example.com", messageID(NOW))
        page = listPage(root, None, parseQuery(""))
        self.assertEqual(
            page.asJSON(),
            {
                "messages": [page.messages[0].asJSON()],
                "cursor": None,
                "searched": 1,
                "complete": True,
                "stoppedBecause": None,
            },
        )

    def test_hasAttachment(self) -> None:
        """
        The attachment mark follows the top-level headers: multipart/mixed,
        an attachment disposition or a single part that is not text.
        """
        self.assertTrue(summaries.hasAttachment("multipart/mixed; boundary=x", ""))
        self.assertTrue(summaries.hasAttachment("application/pdf", ""))
        self.assertTrue(summaries.hasAttachment("text/plain", "attachment; filename=a.txt"))
        self.assertFalse(summaries.hasAttachment("multipart/alternative; boundary=x", ""))
        self.assertFalse(summaries.hasAttachment("multipart/related; boundary=x", "inline"))
        self.assertFalse(summaries.hasAttachment("TEXT/HTML", ""))
        self.assertFalse(summaries.hasAttachment("", ""))

    def test_hostileNamesIgnored(self) -> None:
        """
        Files whose names are not messages', directories and symbolic
        links in a Maildir are never shown, and do not stop the listing.
        """
        root = self.makeRoot("example.com")
        self.deliver(root, "example.com", messageID(NOW))
        new = os.path.join(root, "example.com", "new")
        outside = os.path.join(root, "secret")
        with open(outside, "wb") as f:
            f.write(b"Subject: secret\n\n")
        for name in (".hidden", ",S=3", ":2,S", "bad\nname", "\u202ename"):
            with open(os.path.join(new, name), "wb") as f:
                f.write(b"Subject: junk\n\n")
        os.symlink(outside, os.path.join(new, messageID(NOW + 5, count=2)))
        os.mkdir(os.path.join(new, messageID(NOW + 6, count=3)))
        page = listPage(root, None, parseQuery(""))
        self.assertEqual(self.ids(page), [messageID(NOW)])
        self.assertIsNone(browse.findSummary(root, messageID(NOW + 5, count=2), None))

    def test_nameWithoutTime(self) -> None:
        """
        A name written by other software, without a delivery time, is
        ordered by its file's modification time.
        """
        root = self.makeRoot("example.com")
        self.deliver(root, "example.com", messageID(NOW, count=1))
        self.deliver(root, "example.com", messageID(NOW + 10, count=2))
        other = self.deliver(root, "example.com", "othersoftware-abc")
        os.utime(other, (NOW + 5, NOW + 5))
        page = listPage(root, None, parseQuery(""))
        self.assertEqual(self.ids(page), [messageID(NOW + 10, count=2), "othersoftware-abc", messageID(NOW, count=1)])
        self.assertEqual(page.messages[1].delivered, NOW + 5)

    def test_movedWhileListed(self) -> None:
        """
        A message that a mail reader moves to C{cur/} between the listing
        and its opening is shown where it went; one deleted meanwhile is
        left out and the page filled from older mail.
        """
        root = self.makeRoot("example.com")
        paths = [self.deliver(root, "example.com", messageID(NOW + n, count=n)) for n in range(5)]
        real = summaries.openMessage
        moved = set()

        def interfering(path: str) -> Any:
            if path == paths[4] and path not in moved:
                moved.add(path)
                os.rename(path, path.replace("/new/", "/cur/") + ":2,S")
            if path == paths[3] and os.path.exists(path):
                os.unlink(path)
            return real(path)

        self.patch(summaries, "openMessage", interfering)
        page = listPage(root, None, parseQuery(""), limit=3)
        self.assertEqual(self.ids(page), [messageID(NOW + n, count=n) for n in (4, 2, 1)])
        self.assertEqual([summary.seen for summary in page.messages], [True, False, False])

    def test_unreadFromNames(self) -> None:
        """
        C{is:unread} and C{is:read} are decided from the names: only the
        files shown are opened.
        """
        root = self.makeRoot("example.com")
        self.deliver(root, "example.com", messageID(NOW, count=1))
        self.deliver(root, "example.com", messageID(NOW + 1, count=2), sub="cur", flags="")
        self.deliver(root, "example.com", messageID(NOW + 2, count=3), sub="cur", flags="RS")
        opened = self.countOpens()
        unread = listPage(root, None, parseQuery("is:unread"))
        self.assertEqual(self.ids(unread), [messageID(NOW + 1, count=2), messageID(NOW, count=1)])
        self.assertEqual(len(opened), 2)
        self.assertEqual(self.ids(listPage(root, None, parseQuery("is:read"))), [messageID(NOW + 2, count=3)])

    def test_datesFromNames(self) -> None:
        """
        C{after:} and C{before:} compare the delivery time in the names.
        """
        root = self.makeRoot("example.com")
        for n in range(4):
            self.deliver(root, "example.com", messageID(NOW + n * 86400, count=n))
        opened = self.countOpens()
        page = listPage(root, None, parseQuery("after:3d before:1d", now=NOW + 4 * 86400))
        self.assertEqual(self.ids(page), [messageID(NOW + 2 * 86400, count=2), messageID(NOW + 86400, count=1)])
        self.assertEqual(len(opened), 2)

    def test_mailboxAndFolderWords(self) -> None:
        """
        C{mailbox:} and C{folder:} choose Maildirs before any file is
        opened.
        """
        root = self.makeRoot()
        for n, key in enumerate(KEYS):
            self.deliver(root, key, messageID(NOW + n, count=n))

        def keys(text: str) -> list[str]:
            return [summary.mailbox for summary in listPage(root, None, parseQuery(text)).messages]

        self.assertEqual(keys("mailbox:alice"), ["example.net/alice/.Lists.python", "example.net/alice"])
        self.assertEqual(keys("mailbox:alice folder:inbox"), ["example.net/alice"])
        self.assertEqual(keys("folder:lists"), ["example.net/alice/.Lists.python"])
        self.assertEqual(keys("mailbox:bob@example.net"), ["example.net/bob"])
        self.assertEqual(keys("mailbox:.submitted"), [".submitted/bob"])
        self.assertEqual(keys("mailbox:example.com"), ["example.com/.Archive", "example.com"])
        self.assertEqual(
            keys("-mailbox:example.net -folder:archive"), [".submitted/bob", "example.com"]
        )


class FindSummaryTests(StoreTestCase):
    """
    Tests for L{browse.findSummary} and L{browse.findFile}.
    """

    def test_byIdOrFilename(self) -> None:
        """
        A message is found by its id or its whole file name, with its
        summary.
        """
        root = self.makeRoot()
        path = self.deliver(root, "example.net/bob", messageID(NOW), sub="cur", flags="S")
        for identifier in (messageID(NOW), os.path.basename(path)):
            found = browse.findSummary(root, identifier, None)
            assert found is not None
            message, summary = found
            self.assertEqual((message.path, summary.id, summary.seen), (path, messageID(NOW), True))

    def test_notAPrefix(self) -> None:
        """
        An id that only starts another's finds nothing.
        """
        root = self.makeRoot()
        self.deliver(root, "example.com", messageID(NOW))
        self.assertIsNone(browse.findSummary(root, messageID(NOW)[:-3], None))

    def test_onlyAllowed(self) -> None:
        """
        A message outside the Maildirs a user may see is not found.
        """
        root = self.makeRoot()
        self.deliver(root, "example.net/alice", messageID(NOW))
        self.assertIsNone(browse.findSummary(root, messageID(NOW), {"example.net/bob"}))
        self.assertIsNotNone(browse.findSummary(root, messageID(NOW), {"example.net/alice"}))

    def test_implausibleIds(self) -> None:
        """
        Ids that could be paths, or hidden or unprintable names, are not
        looked up at all.
        """
        root = self.makeRoot("example.com")
        self.deliver(root, "example.com", messageID(NOW))
        for identifier in ("", "../example.com", ".", "..", "a/b", "x\n", "x" * 300):
            self.assertIsNone(browse.findSummary(root, identifier, None), identifier)

    def test_vanished(self) -> None:
        """
        A message deleted between being found and being read is not found.
        """
        root = self.makeRoot("example.com")
        path = self.deliver(root, "example.com", messageID(NOW))
        real = summaries.openMessage

        def deleting(opened: str) -> Any:
            os.unlink(path)
            return real(opened)

        self.patch(browse, "openMessage", deleting)
        self.assertIsNone(browse.findSummary(root, messageID(NOW), None))


class SetSeenTests(StoreTestCase):
    """
    Tests for L{browse.setSeen}, read back with Python's C{mailbox} module
    as a mail reader would.
    """

    def readBack(self, root: str, key: str) -> tuple[str, str]:
        """
        The subdirectory and flags of the only message in a Maildir, as
        L{mailbox.Maildir} sees them.
        """
        [message] = mailbox.Maildir(os.path.join(root, key), factory=None, create=False)
        return message.get_subdir(), message.get_flags()

    def test_roundTrip(self) -> None:
        """
        Marking seen moves a new message to C{cur/} with C{:2,S}; marking
        unseen removes the C{S} and leaves it in C{cur/}.
        """
        root = self.makeRoot()
        self.deliver(root, "example.net/bob", messageID(NOW))
        moved = browse.setSeen(root, messageID(NOW), True)
        self.assertEqual((moved.subdirectory, moved.seen), ("cur", True))
        self.assertTrue(moved.path.endswith(":2,S"))
        self.assertEqual(self.readBack(root, "example.net/bob"), ("cur", "S"))
        again = browse.setSeen(root, messageID(NOW), False)
        self.assertEqual((again.subdirectory, again.seen), ("cur", False))
        self.assertTrue(again.path.endswith(":2,"))
        self.assertEqual(self.readBack(root, "example.net/bob"), ("cur", ""))
        [summary] = listPage(root, None, parseQuery("")).messages
        self.assertEqual((summary.seen, summary.new), (False, False))

    def test_otherFlagsKept(self) -> None:
        """
        Flags other than C{S} are kept, in order, both ways.
        """
        root = self.makeRoot()
        self.deliver(root, "example.net/bob", messageID(NOW), sub="cur", flags="FR")
        browse.setSeen(root, messageID(NOW), True)
        self.assertEqual(self.readBack(root, "example.net/bob"), ("cur", "FRS"))
        browse.setSeen(root, messageID(NOW), False)
        self.assertEqual(self.readBack(root, "example.net/bob"), ("cur", "FR"))

    def test_idempotent(self) -> None:
        """
        Marking a seen message seen, or an unseen one unseen, changes
        nothing.
        """
        root = self.makeRoot()
        path = self.deliver(root, "example.net/bob", messageID(NOW))
        self.assertEqual(browse.setSeen(root, messageID(NOW), False).path, path)
        seen = browse.setSeen(root, messageID(NOW), True)
        self.assertEqual(browse.setSeen(root, messageID(NOW), True).path, seen.path)

    def test_missingOrNotAllowed(self) -> None:
        """
        A message that is not there, or not in the Maildirs given, is a
        L{StoreError}, and nothing is renamed.
        """
        root = self.makeRoot()
        path = self.deliver(root, "example.net/alice", messageID(NOW))
        self.assertRaises(StoreError, browse.setSeen, root, messageID(NOW + 1), True)
        self.assertRaises(StoreError, browse.setSeen, root, messageID(NOW), True, {"example.net/bob"})
        self.assertTrue(os.path.exists(path))

    def test_unseenVanished(self) -> None:
        """
        A message deleted before its flag is cleared is a L{StoreError}.
        """
        root = self.makeRoot()
        path = self.deliver(root, "example.net/alice", messageID(NOW), sub="cur", flags="S")
        message = browse.findFile(root, messageID(NOW))
        assert message is not None
        os.unlink(path)
        self.assertRaises(StoreError, reader.markUnseen, message)
