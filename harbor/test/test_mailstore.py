"""
Tests for L{harbor.mailstore}, which reads and tidies the Maildirs.

Each test builds a Maildir tree the way the server (or a mail reader)
leaves it, in a temporary directory.
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Callable
from email.message import EmailMessage
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from harbor import mailstore
from harbor.maildir import MaildirName
from harbor.mailstore import (
    Attachment,
    MessageFile,
    Query,
    StoreError,
    cleanBody,
    cleanText,
    decodeHeader,
    deleteMessage,
    deliveryTime,
    findMessage,
    findStaleTemporaryFiles,
    headerFields,
    htmlToText,
    listMessages,
    mailboxStats,
    markSeen,
    parseMessage,
    readHeaderBlock,
    safeFilename,
    saveAttachments,
    seenFilename,
)
from harbor.test.test_cli import NOW, _CommandTestCase, messageBytes, messageID


class _StoreTestCase(_CommandTestCase):
    """
    Helpers to build a store (those of the command's tests), with delivered
    messages given by path.
    """

    def deliver(  # type: ignore[override]
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
        Record the files L{harbor.mailstore} opens from now on.

        @return: The list the opened paths are appended to.
        """
        opened: list[str] = []

        def recordingOpen(path: str, *args: Any, **kwargs: Any) -> Any:
            opened.append(path)
            return open(path, *args, **kwargs)

        # A module global shadows the builtin for the module's code.
        mailstore.open = recordingOpen  # type: ignore[attr-defined]
        self.addCleanup(delattr, mailstore, "open")
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


class ReadHeaderBlockTests(SynchronousTestCase):
    """
    Tests for L{readHeaderBlock}.
    """

    def test_stopsAtBlankLine(self) -> None:
        """
        The header block ends at the first blank line; of a large body no
        more than one read's worth is read.
        """
        headers = messageBytes(body=None)
        f = io.BytesIO(headers + b"\n" + b"x" * (4 * 1024 * 1024))

        block = readHeaderBlock(f)

        self.assertEqual(block, headers)
        self.assertLessEqual(f.tell(), 8192)

    def test_crlf(self) -> None:
        """
        A CRLF blank line ends the block too.
        """
        f = io.BytesIO(b"Subject: a\r\nX: b\r\n\r\nbody\n\nmore\n")

        self.assertEqual(readHeaderBlock(f), b"Subject: a\r\nX: b\r\n")

    def test_blankLineAcrossReads(self) -> None:
        """
        A blank line split between two reads is found.
        """
        headers = b"X: " + b"y" * 8188 + b"\n"
        self.assertEqual(len(headers), 8192)

        self.assertEqual(readHeaderBlock(io.BytesIO(headers + b"\nbody")), headers)

    def test_noHeaders(self) -> None:
        """
        A message starting with a blank line has an empty header block.
        """
        self.assertEqual(readHeaderBlock(io.BytesIO(b"\nbody\n")), b"")

    def test_limit(self) -> None:
        """
        A file without a blank line is read no further than the limit.
        """
        f = io.BytesIO(b"X-Long: " + b"y" * 10000)

        block = readHeaderBlock(f, limit=1000)

        self.assertEqual((len(block), f.tell()), (1000, 1000))


class HeaderFieldsTests(SynchronousTestCase):
    """
    Tests for L{headerFields} and L{decodeHeader}.
    """

    def test_firstUnfolded(self) -> None:
        """
        The first occurrence of each wanted field is returned, unfolded,
        whatever the case of its name; others are not.
        """
        block = (
            b"delivered-to: a@example.com\n"
            b"Subject: one\n\ttwo\r\n"
            b"Delivered-To: b@example.com\n"
            b"X-Other: x\n"
        )

        fields = headerFields(block, ["Delivered-To", "Subject", "Return-Path"])

        self.assertEqual(fields, {"Delivered-To": "a@example.com", "Subject": "one\ttwo"})

    def test_stopsAtNonHeaderLine(self) -> None:
        """
        Like the C{email} package, the first line that is not a header ends
        the headers.
        """
        fields = headerFields(b"X: 1\nnot a header\nSubject: hidden\n", ["Subject"])

        self.assertEqual(fields, {})

    def test_undecodableBytes(self) -> None:
        """
        Bytes that are not UTF-8 are kept as surrogate escapes; UTF-8 is
        decoded.
        """
        fields = headerFields(
            "Subject: caf\u00e9 \xff\n".encode("utf-8").replace(b"\xc3\xbf", b"\xff"), ["Subject"]
        )

        self.assertEqual(fields, {"Subject": "caf\u00e9 \udcff"})

    def test_decodeEncodedWords(self) -> None:
        """
        Encoded words are decoded as the C{email} package decodes them:
        adjacent ones joined, an unknown charset read as ASCII.
        """
        cases = {
            "=?utf-8?q?a?= =?utf-8?b?w6k=?= x": "a\u00e9 x",
            "=?x-unknown?q?abc?=": "abc",
            "plain": "plain",
            "back\\slash =?utf-8?q?\\u0041?=": "back\\slash \\u0041",
        }
        for raw, decoded in cases.items():
            self.assertEqual(decodeHeader("Subject", raw), decoded, raw)

    def test_decodeMalformed(self) -> None:
        """
        Malformed encoded words never raise; bad bytes become U+FFFD once
        cleaned.
        """
        for raw in ["=?utf-8?b?!!!?=", "=?utf-8?q?=FF?=", "=?", "=?utf-8?q?", "=??="]:
            cleanText(decodeHeader("Subject", raw))
        self.assertEqual(cleanText(decodeHeader("Subject", "=?utf-8?q?=FF?=")), "\ufffd")


class CleanTextTests(SynchronousTestCase):
    """
    Tests for L{cleanText} and L{cleanBody}.
    """

    def test_cleanText(self) -> None:
        """
        Control and direction characters go, white space becomes single
        spaces, surrogate escapes become U+FFFD.
        """
        self.assertEqual(
            cleanText("a\tb\r\n c\x1b[0m\u202eevil \udcff\u00a0end "), "a b c[0mevil \ufffd end"
        )

    def test_cleanBody(self) -> None:
        """
        Line ends are kept (CRLF and CR made LF) and so are tabs; other
        control characters go.
        """
        self.assertEqual(cleanBody("a\r\nb\rc\n\td\x07\x1b\u202e\udcff"), "a\nb\nc\n\td\ufffd")


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


def mimeMessage(build: Callable[[EmailMessage], None] | None = None) -> bytes:
    """
    A message with a text part, an HTML alternative and two attachments,
    changed by C{build} if given.
    """
    message = EmailMessage()
    message["Return-Path"] = "<bob@x.org>"
    message["Delivered-To"] = "alice@example.com"
    message["From"] = "Bob <bob@x.org>"
    message["To"] = "Alice <alice@example.com>"
    message["Subject"] = "Report \u2713"
    message.set_content("Hello Alice,\n\nthe report.\n")
    message.add_alternative("<p>Hello <b>Alice</b></p>", subtype="html")
    message.add_attachment(
        b"%PDF-1.4\x00\xff", maintype="application", subtype="pdf", filename="report.pdf"
    )
    message.add_attachment(b"notes\n", maintype="text", subtype="plain", filename="notes.txt")
    if build is not None:
        build(message)
    return bytes(message)


class ParseMessageTests(SynchronousTestCase):
    """
    Tests for L{parseMessage}.
    """

    def parse(self, data: bytes) -> mailstore.MessageDetails:
        """
        Parse C{data} as a stored message.
        """
        return parseMessage(io.BytesIO(data))

    def test_parts(self) -> None:
        """
        The summary headers, the plain text (not its HTML alternative) and
        every attachment, decoded, are found.
        """
        details = self.parse(b"Received: from a\n\tby b\n" + mimeMessage())

        self.assertEqual(
            details.headers,
            (
                ("Return-Path", "<bob@x.org>"),
                ("Delivered-To", "alice@example.com"),
                ("Received", "from a by b"),
                ("From", "Bob <bob@x.org>"),
                ("To", "Alice <alice@example.com>"),
                ("Subject", "Report \u2713"),
            ),
        )
        self.assertEqual(
            (details.text, details.textType), ("Hello Alice,\n\nthe report.\n", "text/plain")
        )
        self.assertEqual(
            details.attachments,
            (
                Attachment("report.pdf", "application/pdf", b"%PDF-1.4\x00\xff"),
                Attachment("notes.txt", "text/plain", b"notes\n"),
            ),
        )
        self.assertFalse(details.truncated)

    def test_htmlOnly(self) -> None:
        """
        Without a plain text part the first HTML part is shown as text.
        """
        message = EmailMessage()
        message["Subject"] = "html"
        message.set_content(
            "<html><head><style>p {color: red}</style><title>T</title></head><body>"
            "<p>One &amp; two</p><script>alert(1)</script><ul><li>a</li><li>b</li></ul>x<br>y"
            "</body></html>",
            subtype="html",
        )

        details = self.parse(bytes(message))

        self.assertEqual(
            (details.text, details.textType), ("One & two\n\n* a\n\n* b\n\nx\ny\n", "text/html")
        )

    def test_encapsulatedMessage(self) -> None:
        """
        A forwarded message is one attachment, its text not taken for the
        message's own.
        """
        inner = EmailMessage()
        inner["Subject"] = "inner"
        inner.set_content("inner text\n")

        def attach(message: EmailMessage) -> None:
            message.add_attachment(inner)

        details = self.parse(mimeMessage(attach))

        [forwarded] = details.attachments[2:]
        self.assertEqual(forwarded.contentType, "message/rfc822")
        self.assertIn(b"inner text", forwarded.data)
        self.assertEqual(details.text, "Hello Alice,\n\nthe report.\n")

    def test_tooManyParts(self) -> None:
        """
        The parse stops after L{mailstore.MAX_MIME_PARTS} parts; what came
        before is still shown.
        """
        parts = b"".join(
            b"--b\nContent-Type: application/octet-stream\n\nx\n"
            for _ in range(mailstore.MAX_MIME_PARTS * 3)
        )
        data = b"Subject: wide\nContent-Type: multipart/mixed; boundary=b\n\n" + parts + b"--b--\n"

        details = self.parse(data)

        self.assertTrue(details.truncated)
        self.assertEqual(details.headers, (("Subject", "wide"),))
        self.assertGreater(len(details.attachments), mailstore.MAX_MIME_PARTS - 10)
        self.assertLess(len(details.attachments), mailstore.MAX_MIME_PARTS)

    def nested(self, depth: int) -> bytes:
        """
        A message of C{depth} nested multiparts around one text part.
        """
        head = b"Subject: deep\n"
        tail = b""
        for level in range(depth):
            head += b"Content-Type: multipart/mixed; boundary=b%d\n\n--b%d\n" % (level, level)
            tail = b"\n--b%d--\n" % level + tail
        return head + b"Content-Type: text/plain\n\ndeepest\n" + tail

    def test_depthLimit(self) -> None:
        """
        Parts nested deeper than L{mailstore.MAX_MIME_DEPTH} are not looked
        at; ones at that depth are.
        """
        shallow = self.parse(self.nested(mailstore.MAX_MIME_DEPTH))
        deep = self.parse(self.nested(mailstore.MAX_MIME_DEPTH + 1))

        self.assertEqual((shallow.text, shallow.truncated), ("deepest\n", False))
        self.assertEqual((deep.text, deep.truncated), (None, True))

    def test_recursionBomb(self) -> None:
        """
        Nesting deep enough to exhaust the C{email} parser's recursion
        gives a truncated result, not an exception.
        """
        details = self.parse(self.nested(5000))

        self.assertTrue(details.truncated)
        self.assertEqual(details.headers, (("Subject", "deep"),))

    def test_malformed(self) -> None:
        """
        Malformed messages are described as far as they can be, never
        raising: no boundary, bad base64, an unknown charset, broken
        headers, an empty file.
        """
        samples = [
            b"Content-Type: multipart/mixed\n\njust text\n",
            b"Content-Type: multipart/mixed; boundary=x\n\n--x\nContent-Type: application/pdf\n"
            b"Content-Transfer-Encoding: base64\n"
            b"Content-Disposition: attachment; filename*=bad''%%%\n\n!!!\n",
            b"Content-Type: text/plain; charset=x-nonsense\n\ncaf\xe9\n",
            b"From: <<<@@@>>>\nTo: ,,,;;;\nCc: =?utf-8?b?!!!?=\nMessage-ID: <\n"
            b"Date: yesterday\n\nbody\n",
            b"",
            b"\xff\xfe\x00garbage",
        ]
        for data in samples:
            self.parse(data)
        self.assertEqual(self.parse(samples[0]).text, "just text\n")
        self.assertEqual(self.parse(samples[2]).text, "caf\ufffd\n")

    def test_controlCharactersInText(self) -> None:
        """
        The text is made safe for a terminal.
        """
        details = self.parse(b"Subject: x\n\nred\x1b[31m\r\nbell\x07\n")

        self.assertEqual(details.text, "red[31m\nbell\n")


class HTMLToTextTests(SynchronousTestCase):
    """
    Tests for L{htmlToText}.
    """

    def test_unclosed(self) -> None:
        """
        Unclosed and stray tags do not lose the text around them.
        """
        self.assertEqual(htmlToText("<div>a<p>b</span>c &lt;d&gt; <b>e"), "a\nbc <d> e\n")

    def test_empty(self) -> None:
        """
        HTML without text gives the empty string.
        """
        self.assertEqual(htmlToText("<style>x</style><br><br>"), "")


class SafeFilenameTests(SynchronousTestCase):
    """
    Tests for L{safeFilename}.
    """

    def test_traversal(self) -> None:
        """
        Names that would leave the directory, or name a hidden file, keep
        only a harmless last component, or get a made-up name.
        """
        cases = {
            "../../x": "x",
            "/etc/passwd": "passwd",
            "..": "attachment-3.pdf",
            ".": "attachment-3.pdf",
            "": "attachment-3.pdf",
            "   ": "attachment-3.pdf",
            "dir/": "attachment-3.pdf",
            "C:\\Users\\bob\\report.pdf": "report.pdf",
            "..\\..\\windows\\x.dll": "x.dll",
            ".bashrc": "bashrc",
            "...hidden": "hidden",
            " . x": "x",
        }
        for name, safe in cases.items():
            self.assertEqual(safeFilename(name, 3, "application/pdf"), safe, name)
        self.assertEqual(safeFilename(None, 1, "application/x-unknown-type"), "attachment-1.bin")

    def test_controlCharacters(self) -> None:
        """
        Control and text-direction characters are removed; undecodable
        bytes become U+FFFD.
        """
        self.assertEqual(
            safeFilename("a\x00b\x1b\n\u202eexe.pdf\udcff", 1, "x/y"), "abexe.pdf\ufffd"
        )

    def test_length(self) -> None:
        """
        Long names are cut to L{mailstore.MAX_FILENAME_BYTES} bytes of
        whole UTF-8 characters, keeping a short extension.
        """
        safe = safeFilename("\u00e9" * 300 + ".pdf", 1, "x/y")
        long = safeFilename("x" * 300 + "." + "e" * 40, 1, "x/y")

        self.assertLessEqual(len(safe.encode("utf-8")), mailstore.MAX_FILENAME_BYTES)
        self.assertTrue(safe.endswith("\u00e9.pdf"), safe)
        self.assertEqual(len(long.encode("utf-8")), mailstore.MAX_FILENAME_BYTES)


class SaveAttachmentsTests(SynchronousTestCase):
    """
    Tests for L{saveAttachments}.
    """

    def setUp(self) -> None:
        self.parent = os.path.abspath(self.mktemp())
        os.makedirs(self.parent)
        self.directory = os.path.join(self.parent, "out", "deeper")

    def allFiles(self) -> dict[str, bytes]:
        """
        Every file below the test's parent directory, by relative path.
        """
        found = {}
        for path, _, files in os.walk(self.parent):
            for name in files:
                full = os.path.join(path, name)
                with open(full, "rb") as f:
                    found[os.path.relpath(full, self.parent)] = f.read()
        return found

    def test_writesInsideDirectory(self) -> None:
        """
        Attachments are written under safe names into the directory, which
        is created; nothing is written anywhere else.
        """
        attachments = [
            Attachment("../../x", "text/plain", b"1"),
            Attachment("/etc/passwd", "text/plain", b"2"),
            Attachment("..", "application/pdf", b"3"),
            Attachment(None, "image/png", b"4"),
            Attachment("", "application/octet-stream", b"5"),
        ]

        paths = saveAttachments(attachments, self.directory)

        names = ["x", "passwd", "attachment-3.pdf", "attachment-4.png", "attachment-5.bin"]
        self.assertEqual(paths, [os.path.join(self.directory, n) for n in names])
        self.assertEqual(
            self.allFiles(),
            {os.path.join("out", "deeper", n): str(i).encode() for i, n in enumerate(names, 1)},
        )

    def test_duplicatesAndExisting(self) -> None:
        """
        A name already taken, by an earlier attachment or by a file that
        was there, gets a numbered suffix; existing files are untouched.
        """
        os.makedirs(self.directory)
        with open(os.path.join(self.directory, "a.txt"), "wb") as f:
            f.write(b"precious")
        attachments = [
            Attachment("a.txt", "text/plain", b"1"),
            Attachment("a.txt", "text/plain", b"2"),
            Attachment("b", "text/plain", b"3"),
            Attachment("b", "text/plain", b"4"),
        ]

        paths = saveAttachments(attachments, self.directory)

        self.assertEqual(
            [os.path.basename(p) for p in paths], ["a (2).txt", "a (3).txt", "b", "b (2)"]
        )
        files = self.allFiles()
        self.assertEqual(files[os.path.join("out", "deeper", "a.txt")], b"precious")
        self.assertEqual(files[os.path.join("out", "deeper", "a (3).txt")], b"2")

    def test_symlinkNotFollowed(self) -> None:
        """
        A symbolic link with the attachment's name, even a dangling one,
        is neither followed nor replaced.
        """
        os.makedirs(self.directory)
        outside = os.path.join(self.parent, "outside")
        os.symlink(outside, os.path.join(self.directory, "a.txt"))

        [path] = saveAttachments([Attachment("a.txt", "text/plain", b"1")], self.directory)

        self.assertEqual(os.path.basename(path), "a (2).txt")
        self.assertFalse(os.path.lexists(outside))
        self.assertTrue(os.path.islink(os.path.join(self.directory, "a.txt")))

    def test_directoryIsAFile(self) -> None:
        """
        A directory that is a file is an error naming it.
        """
        with open(os.path.join(self.parent, "file"), "wb"):
            pass
        target = os.path.join(self.parent, "file")

        error = self.assertRaises(
            StoreError, saveAttachments, [Attachment("a", "text/plain", b"")], target
        )

        self.assertTrue(str(error).startswith(f"cannot use {target}: "), str(error))


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
        from harbor.mailstore import Query, listMessages

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
