"""
Tests for L{harbor.store.mime}, which takes a stored message apart.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from email.message import EmailMessage

from twisted.trial.unittest import SynchronousTestCase

from harbor.store import mime
from harbor.store.mime import (
    Attachment,
    htmlToText,
    parseMessage,
    safeFilename,
    saveAttachments,
)
from harbor.store.reader import StoreError


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

    def parse(self, data: bytes) -> mime.MessageDetails:
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
        The parse stops after L{mime.MAX_MIME_PARTS} parts; what came
        before is still shown.
        """
        parts = b"".join(
            b"--b\nContent-Type: application/octet-stream\n\nx\n"
            for _ in range(mime.MAX_MIME_PARTS * 3)
        )
        data = b"Subject: wide\nContent-Type: multipart/mixed; boundary=b\n\n" + parts + b"--b--\n"

        details = self.parse(data)

        self.assertTrue(details.truncated)
        self.assertEqual(details.headers, (("Subject", "wide"),))
        self.assertGreater(len(details.attachments), mime.MAX_MIME_PARTS - 10)
        self.assertLess(len(details.attachments), mime.MAX_MIME_PARTS)

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
        Parts nested deeper than L{mime.MAX_MIME_DEPTH} are not looked
        at; ones at that depth are.
        """
        shallow = self.parse(self.nested(mime.MAX_MIME_DEPTH))
        deep = self.parse(self.nested(mime.MAX_MIME_DEPTH + 1))

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
            (b"Content-Type: multipart/mixed; boundary=x\n\n--x\nContent-Type: application/pdf\n"
            b"Content-Transfer-Encoding: base64\n"
            b"Content-Disposition: attachment; filename*=bad''%%%\n\n!!!\n"),
            b"Content-Type: text/plain; charset=x-nonsense\n\ncaf\xe9\n",
            (b"From: <<<@@@>>>\nTo: ,,,;;;\nCc: =?utf-8?b?!!!?=\nMessage-ID: <\n"
            b"Date: yesterday\n\nbody\n"),
            b"",
            b"\xff\xfe\x00garbage",
        ]
        for data in samples:
            self.parse(data)
        self.assertEqual(self.parse(samples[0]).text, "just text\n")
        # An unknown charset's bytes that are not UTF-8 are read as
        # Windows-1252, as browsers read Latin-1.
        self.assertEqual(self.parse(samples[2]).text, "caf\xe9\n")

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
        Long names are cut to L{mime.MAX_FILENAME_BYTES} bytes of
        whole UTF-8 characters, keeping a short extension.
        """
        safe = safeFilename("\u00e9" * 300 + ".pdf", 1, "x/y")
        long = safeFilename("x" * 300 + "." + "e" * 40, 1, "x/y")

        self.assertLessEqual(len(safe.encode("utf-8")), mime.MAX_FILENAME_BYTES)
        self.assertTrue(safe.endswith("\u00e9.pdf"), safe)
        self.assertEqual(len(long.encode("utf-8")), mime.MAX_FILENAME_BYTES)


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
