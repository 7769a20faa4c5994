"""
Tests for L{harbor.store.search}: the search words, parsed and applied by
L{harbor.store.browse.listPage}, and the bounds that stop a search and
say so.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from twisted.trial.unittest import SynchronousTestCase

from harbor.store.browse import listPage
from harbor.store.search import (
    BODY_READ_LIMIT,
    MAX_BODY_SCANNED,
    MAX_SCANNED,
    SEARCH_SECONDS,
    SYNTAX,
    Budget,
    Query,
    SearchError,
    Term,
    parseQuery,
)
from harbor.test.test_browse import NOW, StoreTestCase, messageBytes, messageID

DAY = 24 * 60 * 60


class ParseQueryTests(SynchronousTestCase):
    """
    Tests for L{parseQuery}.
    """

    def test_empty(self) -> None:
        """
        An empty or blank query asks for everything, and reads no file.
        """
        for text in ("", "   ", '""'):
            query = parseQuery(text)
            self.assertEqual(query, Query())
            self.assertFalse(query.readsHeaders or query.readsBodies)

    def test_headerWords(self) -> None:
        """
        C{from:}, C{to:}, C{subject:}, C{body:} and free text become terms,
        case-folded; case does not matter in the word either.
        """
        query = parseQuery("From:Alice TO:bob subject:Invoice body:Paid Hello")
        self.assertEqual(
            query.terms,
            (
                Term("from", "alice"),
                Term("to", "bob"),
                Term("subject", "invoice"),
                Term("body", "paid"),
                Term("text", "hello"),
            ),
        )
        self.assertTrue(query.readsHeaders)
        self.assertTrue(query.readsBodies)

    def test_quotesAndNegation(self) -> None:
        """
        Quotes keep words together, with or without a field; a C{-}
        negates.
        """
        query = parseQuery('subject:"two words" "an exact: phrase" -from:bank -spam')
        self.assertEqual(
            query.terms,
            (
                Term("subject", "two words"),
                Term("text", "an exact: phrase"),
                Term("from", "bank", negated=True),
                Term("text", "spam", negated=True),
            ),
        )

    def test_bodyOnlyReadsBodies(self) -> None:
        """
        A query of C{body:} words alone needs no header match.
        """
        query = parseQuery("body:x")
        self.assertFalse(query.readsHeaders)
        self.assertTrue(query.readsBodies)

    def test_flags(self) -> None:
        """
        C{is:unread}, C{is:read} and C{has:attachment}, and their
        negations.
        """
        self.assertIs(parseQuery("is:unread").unread, True)
        self.assertIs(parseQuery("is:read").unread, False)
        self.assertIs(parseQuery("-is:unread").unread, False)
        self.assertIs(parseQuery("-is:read").unread, True)
        self.assertIs(parseQuery("has:attachment").hasAttachment, True)
        self.assertIs(parseQuery("-has:attachment").hasAttachment, False)
        self.assertFalse(parseQuery("is:unread").readsHeaders)
        self.assertTrue(parseQuery("has:attachment").readsHeaders)

    def test_mailboxAndFolder(self) -> None:
        """
        C{mailbox:} and C{folder:} are kept, case-folded; C{folder:inbox}
        is the inbox and a leading dot is dropped.
        """
        query = parseQuery("mailbox:Example.net/Alice -mailbox:bob folder:.Lists -folder:INBOX")
        self.assertEqual(query.mailboxes, ("example.net/alice",))
        self.assertEqual(query.notMailboxes, ("bob",))
        self.assertEqual(query.folders, ("lists",))
        self.assertEqual(query.notFolders, ("",))
        self.assertFalse(query.readsHeaders)

    def test_dates(self) -> None:
        """
        C{after:} and C{before:} take a date (its midnight, in the given
        zone), a time, with or without a zone, or an age.
        """
        plus2 = timezone(timedelta(hours=2))
        self.assertEqual(
            parseQuery("after:2026-11-01", tz=UTC).after, datetime(2026, 11, 1, tzinfo=UTC).timestamp()
        )
        self.assertEqual(
            parseQuery("before:2026-11-01", tz=plus2).before, datetime(2026, 11, 1, tzinfo=plus2).timestamp()
        )
        self.assertEqual(
            parseQuery("after:2026-11-01T12:30z").after, datetime(2026, 11, 1, 12, 30, tzinfo=UTC).timestamp()
        )
        self.assertEqual(
            parseQuery("after:2026-11-01T12:30+02:00", tz=UTC).after,
            datetime(2026, 11, 1, 10, 30, tzinfo=UTC).timestamp(),
        )
        self.assertEqual(parseQuery("after:7d", now=NOW).after, NOW - 7 * DAY)
        self.assertEqual(parseQuery("before:2w", now=NOW).before, NOW - 14 * DAY)
        self.assertEqual(parseQuery("after:30m", now=NOW).after, NOW - 30 * 60)
        self.assertEqual(parseQuery("after:2h", clock=lambda: NOW).after, NOW - 2 * 60 * 60)

    def test_narrowestDates(self) -> None:
        """
        Two C{after:} words keep the later, two C{before:} the earlier.
        """
        query = parseQuery("after:3d after:1d before:5d before:2d", now=NOW)
        self.assertEqual((query.after, query.before), (NOW - DAY, NOW - 5 * DAY))

    def test_keepsText(self) -> None:
        """
        The query remembers its text, which does not change its equality.
        """
        self.assertEqual(parseQuery("from:a").text, "from:a")
        self.assertEqual(parseQuery("from:a"), parseQuery("FROM:A"))

    def assertSearchError(self, text: str, *fragments: str) -> None:
        """
        Parsing C{text} fails with a message that contains C{fragments}.
        """
        error = self.assertRaises(SearchError, parseQuery, text, NOW)
        for fragment in fragments:
            self.assertIn(fragment, str(error))

    def test_errors(self) -> None:
        """
        Each mistake gets a message that says what is wrong and what to
        write instead.
        """
        self.assertSearchError("frm:alice", "frm: is not a search word", "from:", 'quotes', '"frm:alice"')
        self.assertSearchError("from:", "from: needs a value", "from:alice@example.com")
        self.assertSearchError('subject:""', "subject: needs a value")
        self.assertSearchError('subject:"unclosed', "a quote is not closed")
        self.assertSearchError("is:starred", "is: takes unread or read", "'starred'")
        self.assertSearchError("has:picture", "has: takes attachment")
        self.assertSearchError("after:yesterday", "after: takes a date", "'yesterday'")
        self.assertSearchError("before:2026-13-01", "before: takes a date")
        self.assertSearchError("-before:2026-11-01", "-before: cannot be negated", "after:")
        self.assertSearchError("- alone", "a - must be followed by a word")
        self.assertSearchError("x " * 21, "too many words")
        self.assertSearchError("x" * 1001, "too long")

    def test_syntaxDocumentsEveryWord(self) -> None:
        """
        The user's documentation names every word the parser takes.
        """
        for word in ("from:", "to:", "subject:", "mailbox:", "folder:", "before:", "after:",
                     "is:unread", "is:read", "has:attachment", "body:", '"', "-"):
            self.assertIn(word, SYNTAX)

    def test_syntaxStatesTheBounds(self) -> None:
        """
        The bounds the documentation gives are those the code applies.
        """
        self.assertIn(f"no more\nthan {MAX_SCANNED:,} messages, or {SEARCH_SECONDS:g} seconds", SYNTAX)
        self.assertIn(f"no more than\n{MAX_BODY_SCANNED:,} messages", SYNTAX)
        self.assertIn(f"first {BODY_READ_LIMIT // 1024 // 1024} MiB", SYNTAX)


class QueryMatchTests(SynchronousTestCase):
    """
    Tests for L{Query}'s predicates.
    """

    def test_admitsFolder(self) -> None:
        """
        A mailbox is named by its key (and everything below), an address,
        its mailbox or its domain; a folder by its name or a parent's.
        """
        def admits(text: str, key: str, domain: str, mailbox: str, folder: str) -> bool:
            return parseQuery(text).admitsFolder(key, domain, mailbox, folder)

        alice = ("example.net/alice", "example.net", "alice", "")
        lists = ("example.net/alice/.Lists.python", "example.net", "alice", "Lists.python")
        self.assertTrue(admits("mailbox:example.net/alice", *alice))
        self.assertTrue(admits("mailbox:example.net/alice", *lists))
        self.assertFalse(admits("mailbox:example.net/ali", *alice))
        self.assertTrue(admits("mailbox:alice@example.net", *alice))
        self.assertTrue(admits("mailbox:ALICE", *alice))
        self.assertTrue(admits("mailbox:example.net", *alice))
        self.assertFalse(admits("mailbox:example.com", *alice))
        self.assertTrue(admits("mailbox:bob mailbox:alice", *alice))
        self.assertFalse(admits("-mailbox:alice", *alice))
        self.assertTrue(admits("folder:lists", *lists))
        self.assertTrue(admits("folder:lists.python", *lists))
        self.assertFalse(admits("folder:list", *lists))
        self.assertFalse(admits("folder:inbox", *lists))
        self.assertTrue(admits("folder:inbox", *alice))
        self.assertFalse(admits("-folder:inbox", *alice))

    def test_matchesHeaders(self) -> None:
        """
        Terms look in their field, free text in the whole header text,
        negated terms must not be found.
        """
        fields = {"from": "alice <alice@x.org>", "to": "bob@y.org", "subject": "your invoice"}
        query = parseQuery("from:alice subject:invoice -to:carol")
        self.assertTrue(query.matchesHeaders(fields, "", False))
        self.assertFalse(parseQuery("from:bob").matchesHeaders(fields, "from: bob", False))
        self.assertTrue(parseQuery("x-mailer").matchesHeaders(fields, "x-mailer: thing", False))
        self.assertFalse(parseQuery("-thing").matchesHeaders(fields, "x-mailer: thing", False))
        self.assertFalse(parseQuery("has:attachment").matchesHeaders(fields, "", False))
        self.assertTrue(parseQuery("-has:attachment").matchesHeaders(fields, "", False))


class SearchPageTests(StoreTestCase):
    """
    Tests for searches through L{listPage}.
    """

    def setUp(self) -> None:
        self.root = self.makeRoot("example.com", "example.net/bob")
        self.deliver(
            self.root, "example.com", messageID(NOW, count=1),
            messageBytes(sender="bank@bank.example", subject="Your statement", body="Balance: 12 EUR\n"),
        )
        self.deliver(
            self.root, "example.net/bob", messageID(NOW + 1, count=2),
            messageBytes(recipient="bob@example.net", subject="=?utf-8?q?Caf=C3=A9?=",
                         extra="Cc: carol@example.org\nX-Mailer: Frobnicator\n"
                         "Content-Type: multipart/mixed; boundary=b",
                         body="--b\nContent-Type: text/plain\n\nsee the attached invoice\n--b--\n"),
        )
        self.deliver(
            self.root, "example.com", messageID(NOW + 2, count=3),
            messageBytes(sender="friend@mail.example", subject="Lunch?",
                         extra="Content-Transfer-Encoding: base64",
                         body="bHVuY2ggYXQgbm9vbiBvbiBmcmlkYXk=\n"),
        )

    def search(self, text: str) -> list[str]:
        """
        The ids a one-page search finds, newest first.
        """
        page = listPage(self.root, None, parseQuery(text, now=NOW))
        self.assertTrue(page.complete)
        return self.ids(page)

    def test_fields(self) -> None:
        """
        Each word finds what it is about, and nothing else.
        """
        first, second, third = (messageID(NOW + n, count=n + 1) for n in range(3))
        self.assertEqual(self.search("from:bank"), [first])
        self.assertEqual(self.search("from:bank.example"), [first])
        self.assertEqual(self.search("to:bob"), [second])
        self.assertEqual(self.search("to:carol"), [second])
        self.assertEqual(self.search("subject:café"), [second])
        self.assertEqual(self.search("subject:CAFÉ"), [second])
        self.assertEqual(self.search("frobnicator"), [second])
        self.assertEqual(self.search("has:attachment"), [second])
        self.assertEqual(self.search("-has:attachment"), [third, first])
        self.assertEqual(self.search("-from:bank"), [third, second])
        self.assertEqual(self.search('subject:"your statement"'), [first])
        self.assertEqual(self.search('subject:"statement your"'), [])

    def test_body(self) -> None:
        """
        C{body:} looks in the decoded text, not in headers.
        """
        self.assertEqual(self.search("body:balance"), [messageID(NOW, count=1)])
        self.assertEqual(self.search('body:"attached invoice"'), [messageID(NOW + 1, count=2)])
        self.assertEqual(self.search("body:friday"), [messageID(NOW + 2, count=3)])
        self.assertEqual(self.search("body:statement"), [])

    def test_stoppedByCount(self) -> None:
        """
        A search that reads as many files as its budget allows stops, says
        why, and its cursors go on from there until every message was
        searched, each once.
        """
        for n in range(3, 10):
            self.deliver(self.root, "example.com", messageID(NOW + n, count=n + 1))
        pages = self.allPages(self.root, "from:bank", limit=5, budget=Budget(maxScanned=4))
        self.assertEqual([page.complete for page in pages], [False, False, True])
        self.assertEqual([page.searched for page in pages], [4, 4, 2])
        self.assertEqual([self.ids(page) for page in pages], [[], [], [messageID(NOW, count=1)]])
        reason = pages[0].stoppedBecause
        assert reason is not None
        self.assertIn("Stopped after searching 4 messages", reason)
        self.assertIn("go on to the next page", reason)
        self.assertIsNone(pages[2].stoppedBecause)

    def test_fullPageIsComplete(self) -> None:
        """
        A page filled before the budget ran out is complete, with a cursor.
        """
        page = listPage(self.root, None, parseQuery("-from:nobody"), limit=2, budget=Budget(maxScanned=2))
        self.assertEqual((len(page.messages), page.complete), (2, True))
        self.assertIsNotNone(page.cursor)

    def test_stoppedByTime(self) -> None:
        """
        A search stops when its time is up, by the clock given.
        """
        ticks = iter(range(100))
        page = listPage(
            self.root, None, parseQuery("from:nobody"), clock=lambda: float(next(ticks)), budget=Budget(seconds=1.5)
        )
        # The clock reads 0 when the page starts, then 1 and 2 before the
        # second and third messages.
        self.assertFalse(page.complete)
        self.assertEqual(page.searched, 2)
        self.assertIn("for 1.5 seconds", page.stoppedBecause or "")
        self.assertIsNotNone(page.cursor)

    def test_alwaysProgress(self) -> None:
        """
        A page reads at least one message whatever its budget, so that
        following the cursors always ends.
        """
        pages = self.allPages(self.root, "from:bank", budget=Budget(maxScanned=0, seconds=0))
        self.assertEqual([page.searched for page in pages], [1, 1, 1])
        self.assertEqual([page.complete for page in pages], [False, False, True])
        self.assertEqual([self.ids(page) for page in pages], [[], [], [messageID(NOW, count=1)]])

    def test_stoppedByBodies(self) -> None:
        """
        A C{body:} search stops after its own, smaller, count.
        """
        page = listPage(self.root, None, parseQuery("body:nothing"), budget=Budget(maxBodyScanned=2))
        self.assertFalse(page.complete)
        self.assertEqual(page.searched, 2)
        self.assertIn("the text of 2 messages", page.stoppedBecause or "")

    def test_plainListingUnbounded(self) -> None:
        """
        A listing without words about headers or bodies is never stopped:
        it reads only what it shows.
        """
        page = listPage(self.root, None, parseQuery("is:unread"), budget=Budget(maxScanned=0, seconds=0))
        self.assertEqual((len(page.messages), page.complete), (3, True))
