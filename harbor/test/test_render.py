"""
Tests for L{harbor.web.render}: hostile messages read without raising,
their parts, and the headers that keep what is served safe.
"""

from __future__ import annotations

import base64
import io
import json
import unicodedata

from twisted.trial.unittest import SynchronousTestCase

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harbor.store import mime
from harbor.store.headers import BIDI_CONTROLS
from harbor.test.test_sanitize import PNG, cidURL, scriptCapable
from harbor.web import render
from harbor.web.render import (
    MessageView,
    Part,
    contentDisposition,
    downloadHeaders,
    htmlHeaders,
    partContent,
    partForContentID,
    readMessage,
    sanitizeHTML,
)


class HeadersTests(SynchronousTestCase):
    """
    Tests for L{htmlHeaders} and L{downloadHeaders}.
    """

    def test_htmlHeaders(self) -> None:
        """
        The sanitized HTML is served with a policy that runs nothing and
        loads only inline and our own images, nosniff, no referrer, and no
        caching.
        """
        headers = dict(htmlHeaders(False))
        csp = headers[b"Content-Security-Policy"].decode()
        directives = {d.split()[0]: d.split()[1:] for d in csp.split("; ")}
        self.assertEqual(directives["default-src"], ["'none'"])
        self.assertEqual(directives["img-src"], ["data:", "'self'"])
        self.assertEqual(directives["style-src"], ["'unsafe-inline'"])
        self.assertEqual(directives["form-action"], ["'none'"])
        self.assertEqual(directives["base-uri"], ["'none'"])
        self.assertEqual(directives["frame-ancestors"], ["'self'"])
        self.assertNotIn("allow-scripts", directives["sandbox"])
        self.assertNotIn("allow-same-origin", directives["sandbox"])
        self.assertNotIn("script-src", directives)
        self.assertEqual(headers[b"X-Content-Type-Options"], b"nosniff")
        self.assertEqual(headers[b"Referrer-Policy"], b"no-referrer")
        self.assertEqual(headers[b"Content-Type"], b"text/html; charset=utf-8")
        self.assertEqual(headers[b"Cache-Control"], b"no-store")

    def test_htmlHeadersLoadImages(self) -> None:
        """
        Asking for images adds only C{http:} and C{https:} to C{img-src}.
        """
        without = dict(htmlHeaders(False))[b"Content-Security-Policy"].decode()
        withImages = dict(htmlHeaders(True))[b"Content-Security-Policy"].decode()
        self.assertEqual(withImages, without.replace("img-src data: 'self'", "img-src data: 'self' http: https:"))
        self.assertNotEqual(withImages, without)

    def part(self, contentType: str, inline: bool, filename: str | None = "f") -> Part:
        """
        A part of C{contentType}.
        """
        return Part(index=2, contentType=contentType, filename=filename, size=3, contentID=None, inline=inline)

    def test_downloadAttachment(self) -> None:
        """
        Anything but an inline image is an C{application/octet-stream}
        attachment, HTML and SVG included.
        """
        for contentType in ("text/html", "image/svg+xml", "application/pdf", "text/plain", "image/png"):
            headers = dict(downloadHeaders(self.part(contentType, inline=False)))
            self.assertEqual(headers[b"Content-Type"], b"application/octet-stream", contentType)
            self.assertTrue(headers[b"Content-Disposition"].startswith(b"attachment;"))
            self.assertEqual(headers[b"X-Content-Type-Options"], b"nosniff")
        headers = dict(downloadHeaders(self.part("image/svg+xml", inline=True)))
        self.assertEqual(headers[b"Content-Type"], b"application/octet-stream")

    def test_downloadInlineImage(self) -> None:
        """
        An inline raster image is served as its type, inline, nosniff.
        """
        for contentType in ("image/png", "image/jpeg", "image/gif", "image/webp"):
            headers = dict(downloadHeaders(self.part(contentType, inline=True)))
            self.assertEqual(headers[b"Content-Type"], contentType.encode())
            self.assertTrue(headers[b"Content-Disposition"].startswith(b"inline;"))
            self.assertEqual(headers[b"X-Content-Type-Options"], b"nosniff")

    def test_filenameSafe(self) -> None:
        """
        A hostile file name cannot break the header, add one, or name a
        path: quotes, line breaks, slashes and non-ASCII are encoded or
        replaced.
        """
        hostile = 'evil"; filename="x.exe\r\nSet-Cookie: a=b/../../caf\u00e9 \u202e.txt'
        value = dict(downloadHeaders(self.part("application/pdf", False, hostile)))[b"Content-Disposition"]
        self.assertNotIn(b"\r", value)
        self.assertNotIn(b"\n", value)
        self.assertNotIn(b"/", value.split(b"filename*=")[1])
        fallback = value.split(b'filename="')[1].split(b'"')[0]
        self.assertNotIn(b";", fallback)
        self.assertEqual(value.count(b'"'), 2)
        self.assertIn(b"filename*=UTF-8''caf%C3%A9%20.txt", value)

    def test_filenameMissing(self) -> None:
        """
        A part without a name is named after its position and type.
        """
        value = dict(downloadHeaders(self.part("application/pdf", False, None)))[b"Content-Disposition"]
        self.assertEqual(value, b"attachment; filename=\"attachment-3.pdf\"; filename*=UTF-8''attachment-3.pdf")

    def test_contentDisposition(self) -> None:
        """
        The plain C{filename} keeps safe ASCII and replaces the rest.
        """
        self.assertEqual(
            contentDisposition("inline", "r\u00e9sum\u00e9 (1).png"),
            "inline; filename=\"r_sum_ (1).png\"; filename*=UTF-8''r%C3%A9sum%C3%A9%20%281%29.png",
        )


def unsafeCharacters(text: str) -> list[str]:
    """
    The characters of C{text} that could change what a page or terminal
    shows around them: controls (line breaks and tabs included),
    surrogates, line and paragraph separators, and direction controls.
    """
    return [
        c for c in text
        if unicodedata.category(c) in ("Cc", "Cs", "Zl", "Zp") or c in BIDI_CONTROLS
    ]


def message(*lines: str | bytes) -> io.BytesIO:
    """
    A message file of C{lines}, joined with CRLF as they are stored.
    """
    return io.BytesIO(b"\r\n".join(line if isinstance(line, bytes) else line.encode() for line in lines))


def newsletterMessage(png: bytes = PNG) -> io.BytesIO:
    """
    A message as mail clients write it: text and HTML alternatives, the
    HTML's logo as a related part, and an attachment.
    """
    return message(
        "Return-Path: <news@example.org>",
        "Received: from a.example ([192.0.2.1]) by mx.example.com (MailHarbor) with ESMTP id 1; Wed, 2 Dec 2026 08:00:00 +0000",
        "From: =?utf-8?q?J=C3=B6rg?= <news@example.org>",
        "To: alice@example.com",
        "Subject: =?utf-8?b?V2Vla2x5IOKAkyBuZXdz?=",
        "Date: Wed, 2 Dec 2026 08:00:00 +0000",
        "MIME-Version: 1.0",
        'Content-Type: multipart/mixed; boundary="outer"',
        "",
        "--outer",
        'Content-Type: multipart/alternative; boundary="alt"',
        "",
        "--alt",
        "Content-Type: text/plain; charset=utf-8",
        "",
        "Plain caf\u00e9",
        "--alt",
        'Content-Type: multipart/related; boundary="rel"',
        "",
        "--rel",
        "Content-Type: text/html; charset=utf-8",
        "",
        '<p>HTML caf\u00e9 <img src="cid:logo@example.org"></p>',
        "--rel",
        "Content-Type: image/png",
        "Content-ID: <logo@example.org>",
        "Content-Transfer-Encoding: base64",
        "",
        base64.b64encode(png).decode(),
        "--rel--",
        "--alt--",
        "--outer",
        "Content-Type: application/pdf",
        'Content-Disposition: attachment; filename="=?utf-8?q?r=C3=A9sum=C3=A9.pdf?="',
        "Content-Transfer-Encoding: base64",
        "",
        base64.b64encode(b"%PDF-1.4 x").decode(),
        "--outer--",
        "",
    )


def nested(depth: int) -> io.BytesIO:
    """
    A message of C{depth} multiparts, each in the one before.
    """
    lines = ["Subject: deep"]
    for level in range(depth):
        lines += [f'Content-Type: multipart/mixed; boundary="b{level}"', "", f"--b{level}"]
    lines += ["Content-Type: text/plain", "", "bottom"]
    for level in reversed(range(depth)):
        lines += [f"--b{level}--"]
    return message(*lines)


class ReadMessageTests(SynchronousTestCase):
    """
    Tests for L{readMessage}, L{partContent} and the C{cid:} helpers.
    """

    def test_views(self) -> None:
        """
        A multipart message gives its decoded headers in order, its text
        and raw HTML, and every leaf part with what the views need.
        """
        view = readMessage(newsletterMessage())
        self.assertIsInstance(view, MessageView)
        self.assertEqual([name for name, _ in view.headers][:5], ["Return-Path", "Received", "From", "To", "Subject"])
        self.assertEqual(view.subject, "Weekly \u2013 news")
        self.assertEqual(view.fromHeader, "J\u00f6rg <news@example.org>")
        self.assertEqual(view.toHeader, "alice@example.com")
        self.assertEqual(view.date, "Wed, 2 Dec 2026 08:00:00 +0000")
        self.assertEqual(view.text, "Plain caf\u00e9")
        self.assertEqual(view.html, '<p>HTML caf\u00e9 <img src="cid:logo@example.org"></p>')
        assert view.html is not None
        self.assertEqual(
            view.parts,
            (
                Part(0, "text/plain", None, len("Plain caf\u00e9".encode()), None, False, attachment=False),
                Part(1, "text/html", None, len(view.html.encode()), None, False, attachment=False),
                Part(2, "image/png", None, len(PNG), "logo@example.org", True),
                Part(3, "application/pdf", "r\u00e9sum\u00e9.pdf", 10, None, False),
            ),
        )
        self.assertEqual(view.problems, ())

    def test_textFromHTML(self) -> None:
        """
        Without a text/plain part, the text view is made from the HTML.
        """
        view = readMessage(message("Content-Type: text/html", "", "<p>One</p><p>Two &amp; <b>three</b></p>"))
        self.assertEqual(view.text, "One\n\nTwo & three\n")
        self.assertEqual(view.html, "<p>One</p><p>Two &amp; <b>three</b></p>")

    def test_noBody(self) -> None:
        """
        A message of headers only has empty text and no HTML.
        """
        view = readMessage(message("Subject: s", "", ""))
        self.assertEqual((view.text, view.html, view.subject), ("", None, "s"))

    def test_headersSafe(self) -> None:
        """
        Headers are decoded (RFC 2047 and raw UTF-8) and have no control
        or direction character, whatever the encoded words hide.
        """
        view = readMessage(
            message(
                "Subject: =?utf-8?q?a=0D=0Ab=07c=E2=80=AEd?=",
                b"X-Raw: caf\xc3\xa9 \xff",
                "X-Tab: a\tb",
                "",
                "x",
            )
        )
        self.assertEqual(view.headers, (("Subject", "a bcd"), ("X-Raw", "caf\u00e9 \ufffd"), ("X-Tab", "a b")))
        for _, value in view.headers:
            self.assertEqual(unsafeCharacters(value), [], value)

    def test_headersBounded(self) -> None:
        """
        No more than L{render.MAX_HEADERS} headers are kept, and the rest
        are said to be left out.
        """
        self.patch(render, "MAX_HEADERS", 3)
        view = readMessage(message(*[f"X-{n}: v" for n in range(10)], "", "x"))
        self.assertEqual(len(view.headers), 3)
        self.assertIn("the message has more than 3 headers; the rest are not shown", view.problems)

    def test_longHeaderCut(self) -> None:
        """
        A header longer than L{render.MAX_HEADER_CHARS} is cut before its
        encoded words are decoded (which costs more than linear time), and
        the problem is said.
        """
        self.patch(render, "MAX_HEADER_CHARS", 28)
        view = readMessage(message("Subject: " + "=?utf-8?q?a?= " * 10, "", "x"))
        self.assertEqual(view.subject, "aa")
        self.assertEqual(view.problems, ("the Subject header is longer than 28 characters; it is cut",))

    def test_unknownCharset(self) -> None:
        """
        Text in a charset Python does not know is shown as UTF-8 if it is
        that, else as Windows-1252, and the problem says so.
        """
        latin = readMessage(message("Content-Type: text/plain; charset=x-klingon", "", b"caf\xe9"))
        self.assertEqual(latin.text, "caf\u00e9")
        self.assertEqual(latin.problems, ("part 1: its charset 'x-klingon' is unknown; shown as Windows-1252",))
        utf8 = readMessage(message("Content-Type: text/plain; charset=x-klingon", "", b"caf\xc3\xa9"))
        self.assertEqual(utf8.text, "caf\u00e9")
        self.assertEqual(utf8.problems, ("part 1: its charset 'x-klingon' is unknown; shown as UTF-8",))

    def test_missingBoundary(self) -> None:
        """
        A multipart whose boundary never comes is shown as one text, and
        the problem says what was wrong.
        """
        view = readMessage(message("Content-Type: multipart/mixed; boundary=nowhere", "", "just text"))
        self.assertEqual(view.text, "just text")
        self.assertIn("the message is multipart but its boundary never appears; shown as one part", view.problems)
        unnamed = readMessage(message("Content-Type: multipart/mixed", "", "text"))
        self.assertIn("the message is multipart but names no boundary; shown as one part", unnamed.problems)

    def test_unclosedAndBadBase64(self) -> None:
        """
        A multipart cut short and an attachment of broken base64 are read
        as far as they go, and said.
        """
        view = readMessage(
            message(
                "Content-Type: multipart/mixed; boundary=b", "", "--b", "Content-Type: text/plain", "", "hello",
                "--b", "Content-Type: application/pdf", "Content-Transfer-Encoding: base64", "", "QUJD=x!!",
            )
        )
        self.assertEqual(view.text, "hello")
        self.assertEqual(view.parts[1].contentType, "application/pdf")
        self.assertIn("the message has no closing boundary; it may have been cut short", view.problems)
        self.assertTrue(any("base64" in problem for problem in view.problems), view.problems)

    def test_deepNesting(self) -> None:
        """
        Parts nested deeper than the bound are left out, and said; a
        nesting deep enough to exhaust the parser's recursion is read as
        far as it got.
        """
        shallow = readMessage(nested(mime.MAX_MIME_DEPTH))
        self.assertEqual(shallow.text, "bottom")
        self.assertEqual(shallow.problems, ())
        deep = readMessage(nested(mime.MAX_MIME_DEPTH + 1))
        self.assertIsNone(deep.text)
        self.assertIn(f"parts nested deeper than {mime.MAX_MIME_DEPTH} levels are not shown", deep.problems)
        bomb = readMessage(nested(5000))
        self.assertEqual(bomb.subject, "deep")
        self.assertTrue(bomb.problems)

    def test_tooManyParts(self) -> None:
        """
        The parse stops after L{mime.MAX_MIME_PARTS} parts, and says so.
        """
        lines = ["Content-Type: multipart/mixed; boundary=b", ""]
        for _ in range(mime.MAX_MIME_PARTS + 50):
            lines += ["--b", "Content-Type: application/octet-stream", "", "x"]
        view = readMessage(message(*lines, "--b--"))
        self.assertLess(len(view.parts), mime.MAX_MIME_PARTS)
        self.assertIn(
            f"the message has more than {mime.MAX_MIME_PARTS} parts; the rest are not shown", view.problems
        )

    def test_hostileNeverRaises(self) -> None:
        """
        Malformed messages of every kind are read without raising.
        """
        samples = [
            b"",
            b"\xff\xfe\x00garbage",
            b"no colon line\r\n\r\nbody",
            b" continuation first\r\nSubject: x\r\n\r\nb",
            b"Content-Type: ;;;\r\n\r\nb",
            b"Content-Type: text/plain; charset=\"\r\n\r\nb",
            b"Content-Type: multipart/mixed; boundary=\"\"\r\n\r\n--\r\n\r\n",
            b"Content-Transfer-Encoding: quoted-printable\r\n\r\n=ZZ=\r\n",
            b"Content-Type: message/rfc822\r\n\r\nSubject: inner\r\n\r\nx",
            b"Content-Type: image/png\r\nContent-Transfer-Encoding: base64\r\nContent-ID: <\r\n\r\n!!!!",
            b"Subject: =?x-unknown?q?abc?= =?utf-8?b?!!!?=\r\nFrom: <<<@@@>>>\r\n\r\n",
            b"Content-Type: text/html; charset=utf-8\r\n\r\n<p" + b"<" * 10000,
        ]
        for data in samples:
            view = readMessage(io.BytesIO(data))
            self.assertIsInstance(view, MessageView, data[:40])
            if view.html is not None:
                sanitizeHTML(view.html, False, cidURL)

    def test_bodyBounded(self) -> None:
        """
        Text longer than L{render.MAX_BODY_CHARS} is cut, and said.
        """
        self.patch(render, "MAX_BODY_CHARS", 100)
        view = readMessage(message("Content-Type: text/plain", "", "x" * 500))
        self.assertEqual(view.text, "x" * 100)
        self.assertIn("part 1 is longer than 100 characters; the rest is not shown", view.problems)

    def test_largeAttachment(self) -> None:
        """
        A 25 MiB attachment is measured, not kept in the view, and read
        whole by L{partContent}.
        """
        data = bytes(range(256)) * (25 * 4096)
        f = message(
            "Content-Type: multipart/mixed; boundary=b", "", "--b", "Content-Type: text/plain", "", "see attached",
            "--b", "Content-Type: application/zip", 'Content-Disposition: attachment; filename="big.zip"',
            "Content-Transfer-Encoding: base64", "", base64.encodebytes(data).decode(), "--b--",
        )
        view = readMessage(f)
        self.assertEqual(view.parts[1].size, len(data))
        self.assertEqual(view.problems, ())
        f.seek(0)
        found = partContent(f, 1)
        assert found is not None
        self.assertEqual(found[0], view.parts[1])
        self.assertTrue(found[1] == data)

    def test_partContent(self) -> None:
        """
        L{partContent} gives a part as L{readMessage} describes it, with
        its decoded content; L{None} for a part the message lacks.
        """
        view = readMessage(newsletterMessage())
        for part in view.parts:
            found = partContent(newsletterMessage(), part.index)
            assert found is not None
            self.assertEqual(found[0], part)
            self.assertEqual(len(found[1]), part.size)
        self.assertEqual(partContent(newsletterMessage(), 2)[1], PNG)  # type: ignore[index]
        self.assertIsNone(partContent(newsletterMessage(), 4))
        self.assertIsNone(partContent(newsletterMessage(), -1))

    def test_inlineOnlyWhenContentAgrees(self) -> None:
        """
        An image is inline only if its bytes are of the type it claims:
        an HTML page labelled image/png is a download.
        """
        fake = readMessage(newsletterMessage(png=b"<script>alert(1)</script>"))
        self.assertFalse(fake.parts[2].inline)
        self.assertEqual(dict(downloadHeaders(fake.parts[2]))[b"Content-Type"], b"application/octet-stream")
        svg = readMessage(message("Content-Type: image/svg+xml", "", "<svg onload=alert(1)/>"))
        self.assertFalse(svg.parts[0].inline)

    def test_partForContentID(self) -> None:
        """
        A Content-ID finds its part with or without angle brackets, and
        ignoring case only when nothing matches exactly.
        """
        parts = readMessage(newsletterMessage()).parts
        self.assertEqual(partForContentID(parts, "logo@example.org"), parts[2])
        self.assertEqual(partForContentID(parts, "<logo@example.org>"), parts[2])
        self.assertEqual(partForContentID(parts, "LOGO@example.org"), parts[2])
        self.assertIsNone(partForContentID(parts, "other@example.org"))
        self.assertIsNone(partForContentID(parts, "<>"))

    def test_cidDataURLs(self) -> None:
        """
        L{cidDataURLs} inlines a message's images by Content-ID, within
        its byte limit, so the sanitized document needs no request.
        """
        view = readMessage(newsletterMessage())
        assert view.html is not None
        safe = sanitizeHTML(view.html, False, render.cidDataURLs(newsletterMessage()))
        png = "data:image/png;base64," + base64.b64encode(PNG).decode()
        self.assertIn(f'<img src="{png}">', safe.html)
        self.assertEqual(scriptCapable(safe.html), [])
        limited = render.cidDataURLs(newsletterMessage(), limit=len(PNG) - 1)
        self.assertIsNone(limited("logo@example.org"))

    def test_readHTML(self) -> None:
        """
        L{render.readHTML} gives the view and the safe HTML with its
        images inlined, from one parse; L{None} for a message without
        HTML.
        """
        view, safe = render.readHTML(newsletterMessage(), loadImages=False)
        self.assertEqual(view, readMessage(newsletterMessage()))
        assert safe is not None
        png = "data:image/png;base64," + base64.b64encode(PNG).decode()
        self.assertEqual(safe.html, f'<p>HTML caf\u00e9 <img src="{png}"></p>')
        _, none = render.readHTML(message("Subject: x", "", "text"), loadImages=True)
        self.assertIsNone(none)

    def test_asJSON(self) -> None:
        """
        The view's JSON form has what the API shows, and no raw HTML.
        """
        view = readMessage(newsletterMessage())
        described = view.asJSON()
        self.assertEqual(json.loads(json.dumps(described)), described)
        self.assertEqual(described["subject"], "Weekly \u2013 news")
        self.assertEqual(described["from"], view.fromHeader)
        self.assertTrue(described["hasHTML"])
        self.assertNotIn("html", described)
        self.assertEqual(described["headers"][0], ["Return-Path", "<news@example.org>"])
        self.assertEqual(
            described["parts"][2],
            {"index": 2, "contentType": "image/png", "filename": None, "size": len(PNG),
             "contentID": "logo@example.org", "inline": True, "attachment": True},
        )


class MessagePropertyTests(SynchronousTestCase):
    """
    Random messages against L{readMessage}.
    """

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(data=st.binary(max_size=2000), cut=st.integers(min_value=0, max_value=3000))
    def test_readMessageNeverRaises(self, data: bytes, cut: int) -> None:
        """
        Random bytes, and a real message cut short or with random bytes
        spliced in, are read without raising, headers clean.
        """
        real = newsletterMessage().getvalue()
        for sample in (data, real[:cut], real[:cut] + data + real[cut:]):
            view = readMessage(io.BytesIO(sample))
            for name, value in view.headers:
                self.assertEqual(unsafeCharacters(name + value), [], repr(value))
            self.assertEqual([part.index for part in view.parts], list(range(len(view.parts))))
