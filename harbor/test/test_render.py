"""
Tests for L{harbor.web.render}: hostile HTML made safe, the headers that
keep it so, and hostile messages read without raising.
"""

from __future__ import annotations

import base64
import io
import json
import re
from html.parser import HTMLParser

from twisted.trial.unittest import SynchronousTestCase

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harbor.store import mime
from harbor.test.xssvectors import XSS_VECTORS
from harbor.web import render
from harbor.web.render import (
    MessageView,
    Part,
    contentDisposition,
    downloadHeaders,
    htmlDocument,
    htmlHeaders,
    partContent,
    partForContentID,
    readMessage,
    sanitizeHTML,
)

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 24
# Tags that can run, load or submit something, or hide markup from a
# sanitizer: none may be in sanitized output.
DANGEROUS_TAGS = frozenset(
    {
        "script", "style", "iframe", "frame", "frameset", "object", "embed", "applet",
        "form", "input", "button", "textarea", "select", "option", "isindex", "base",
        "meta", "link", "svg", "math", "template", "noscript", "xmp", "video", "audio",
        "source", "track", "area", "map", "animate", "set", "foreignobject", "portal",
    }
)
URL_ATTRIBUTES = frozenset({"href", "src"})
FORBIDDEN_ATTRIBUTES = frozenset(
    {
        "srcset", "background", "action", "formaction", "xlink:href", "srcdoc", "data",
        "poster", "dynsrc", "lowsrc", "ping", "http-equiv", "content", "form", "id", "class",
    }
)


class _Elements(HTMLParser):
    """
    Every start tag of a document, with its attributes, entities decoded
    as a browser decodes them.
    """

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, list[tuple[str, str | None]]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, attrs))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, attrs))


def elementsOf(html: str) -> list[tuple[str, list[tuple[str, str | None]]]]:
    """
    The start tags of C{html}, parsed by L{html.parser}.
    """
    parser = _Elements()
    parser.feed(html)
    parser.close()
    return parser.elements


def scheme(url: str) -> str:
    """
    The scheme of C{url} as a browser reads it (WHATWG: surrounding C0
    controls and spaces stripped, tabs and line breaks removed), or C{""}
    for a relative URL.
    """
    url = re.sub(r"[\t\n\r]", "", url).strip("\x00- ").lower()
    match = re.match(r"([a-z][a-z0-9+.-]*):", url)
    return match.group(1) if match else ""


def scriptCapable(html: str, cidPrefix: str = "/m/1/cid/") -> list[str]:
    """
    What in sanitized HTML could run script, load something or submit a
    form: the empty list when nothing.
    """
    found = []
    if re.search(r"<\s*/?\s*script", html, re.IGNORECASE):
        found.append("a script tag in the text")
    for tag, attrs in elementsOf(html):
        if tag in DANGEROUS_TAGS or ":" in tag or "-" in tag:
            found.append(f"<{tag}>")
        for name, value in attrs:
            value = value or ""
            if name.startswith("on") or name in FORBIDDEN_ATTRIBUTES:
                found.append(f"<{tag} {name}>")
            elif name == "style" and re.search(r"url|expression|javascript|behavior|binding|\\|@", value, re.IGNORECASE):
                found.append(f"<{tag} style={value!r}>")
            elif name in URL_ATTRIBUTES:
                kind = scheme(value)
                if name == "href" and kind not in ("http", "https", "mailto", "tel"):
                    found.append(f"<{tag} href={value!r}>")
                elif name == "src" and not (
                    kind in ("http", "https")
                    or re.match(r"data:image/(png|jpeg|gif|webp)[;,]", value)
                    or (kind == "" and value.startswith(cidPrefix))
                ):
                    found.append(f"<{tag} src={value!r}>")
    return found


def cidURL(contentID: str) -> str:
    """
    The C{cidURL} of these tests: every Content-ID is known.
    """
    return "/m/1/cid/" + contentID


class XSSVectorTests(SynchronousTestCase):
    """
    Tests that no known XSS vector survives L{sanitizeHTML}.
    """

    def test_vectorsNamedOnce(self) -> None:
        """
        The collection is large and each vector has its own name, so the
        browser tests can report which one ran.
        """
        names = [name for name, _ in XSS_VECTORS]
        self.assertGreaterEqual(len(names), 30)
        self.assertEqual(len(names), len(set(names)))

    def test_checkerFindsScript(self) -> None:
        """
        The checker of these tests sees what the sanitizer must remove, so
        its silence on sanitized output means something.
        """
        for name, html in XSS_VECTORS:
            if name in ("script-in-comment", "script-conditional-comment", "script-cdata", "textarea-breakout",
                        "title-breakout", "template", "style-element-import", "form-phishing-post",
                        "script-null-byte", "attribute-quote-breakout", "link-stylesheet"):
                continue
            self.assertNotEqual(scriptCapable(html), [], name)

    def test_noVectorSurvives(self) -> None:
        """
        For every vector, the sanitized HTML has no script-capable tag,
        no event handler, no URL of a scheme that runs or loads a
        document, and no style that fetches, with images allowed or not.
        """
        for loadImages in (False, True):
            for name, html in XSS_VECTORS:
                safe = sanitizeHTML(html, loadImages, cidURL)
                self.assertEqual(scriptCapable(safe.html), [], f"{name}: {safe.html!r}")

    def test_noVectorSurvivesInContext(self) -> None:
        """
        Vectors inside a table cell, a link and a quoted attribute of a
        newsletter come out as harmless as on their own.
        """
        for name, html in XSS_VECTORS:
            for wrapped in (
                f"<table><tr><td>{html}</td></tr></table>",
                f'<a href="https://example.com/">{html}</a>',
                f"<div><p>{html}",
            ):
                self.assertEqual(scriptCapable(sanitizeHTML(wrapped, True, cidURL).html), [], name)


NEWSLETTER = """
<html><head><title>Weekly</title><style>p { color: red }</style></head>
<body bgcolor="#ffffff">
<table width="600" cellpadding="4" cellspacing="0" border="0" align="center">
  <tr><td bgcolor="#003366" style="color: #ffffff; font-family: Arial, sans-serif; padding: 8px">
    <h1 style="margin: 0; font-size: 24px">News <b>this week</b></h1></td></tr>
  <tr><td colspan="2" style="background: url(https://tracker.example/bg.gif) #eee; border: 1px solid rgb(0, 0, 0)">
    <p>Read <a href="https://example.com/article?id=1&amp;utm=x" title="Article">the article</a>
       or <a href="mailto:editor@example.com">write to us</a>.</p>
    <img src="cid:logo@example.com" alt="Logo" width="120" height="40">
    <img src="https://tracker.example/open.gif?u=alice" width="1" height="1">
    <img src="http://images.example.com/hero.jpg" alt="Hero">
    <ul><li>one</li><li>two</li></ul>
  </td></tr>
</table>
</body></html>
"""


class SanitizeTests(SynchronousTestCase):
    """
    Tests that L{sanitizeHTML} keeps a newsletter's formatting, rewrites
    its inline images and blocks its remote ones.
    """

    def test_keepsFormatting(self) -> None:
        """
        Tables, their layout attributes, headings, lists, links and safe
        inline styles survive.
        """
        html = sanitizeHTML(NEWSLETTER, False, cidURL).html
        tags = [tag for tag, _ in elementsOf(html)]
        for tag in ("table", "tr", "td", "h1", "b", "p", "a", "ul", "li", "img"):
            self.assertIn(tag, tags)
        self.assertIn('cellpadding="4"', html)
        self.assertIn('bgcolor="#003366"', html)
        self.assertIn('colspan="2"', html)
        self.assertIn("font-family: Arial, sans-serif", html)
        self.assertIn("border: 1px solid rgb(0, 0, 0)", html)
        self.assertIn('href="https://example.com/article?id=1&amp;utm=x"', html)
        self.assertIn('href="mailto:editor@example.com"', html)
        self.assertNotIn("Weekly", html)
        self.assertNotIn("color: red", html)

    def test_linksOpenWithoutOpener(self) -> None:
        """
        Links open in a new browsing context with neither opener nor
        referrer.
        """
        for tag, attrs in elementsOf(sanitizeHTML(NEWSLETTER, False, cidURL).html):
            if tag == "a":
                self.assertEqual(dict(attrs).get("target"), "_blank")
                self.assertEqual(dict(attrs).get("rel"), "noopener noreferrer")

    def test_remoteImagesBlocked(self) -> None:
        """
        Remote images lose their URL by default and are counted; a CSS
        url() goes whatever is chosen, with the rest of its style kept.
        """
        safe = sanitizeHTML(NEWSLETTER, False, cidURL)
        self.assertEqual(safe.remoteImages, 2)
        self.assertNotIn("tracker.example", safe.html)
        self.assertNotIn("images.example.com", safe.html)
        self.assertIn('alt="Hero"', safe.html)

    def test_remoteImagesLoaded(self) -> None:
        """
        With images asked for, remote images keep their URL and are still
        counted; a CSS url() is removed all the same.
        """
        safe = sanitizeHTML(NEWSLETTER, True, cidURL)
        self.assertEqual(safe.remoteImages, 2)
        self.assertIn('src="https://tracker.example/open.gif?u=alice"', safe.html)
        self.assertIn('src="http://images.example.com/hero.jpg"', safe.html)
        self.assertNotIn("bg.gif", safe.html)

    def test_cidRewritten(self) -> None:
        """
        A C{cid:} image's URL is what C{cidURL} gives for its Content-ID,
        URL-decoded; an unknown one loses its URL.
        """
        asked = []

        def known(contentID: str) -> str | None:
            asked.append(contentID)
            return "/m/7/cid/logo%40example.com" if contentID == "logo@example.com" else None

        safe = sanitizeHTML('<img src="cid:logo%40example.com"><img src="CID:other">', False, known)
        self.assertEqual(asked, ["logo@example.com", "other"])
        self.assertEqual(safe.html, '<img src="/m/7/cid/logo%40example.com"><img>')
        self.assertEqual(safe.remoteImages, 0)

    def test_relativeURLsRemoved(self) -> None:
        """
        Relative URLs, which would point into this server, are removed,
        even one that looks like a cid: rewrite.
        """
        safe = sanitizeHTML('<a href="/m/1/delete">x</a><img src="/m/2/cid/a"><img src="//evil.example/t">', True, cidURL)
        self.assertEqual(scriptCapable(safe.html, cidPrefix="/nothing/"), [])
        self.assertNotIn("/m/", safe.html)
        self.assertNotIn("evil", safe.html)

    def test_dataImages(self) -> None:
        """
        C{data:} images of a raster type stay; SVG ones do not.
        """
        png = "data:image/png;base64," + base64.b64encode(PNG).decode()
        safe = sanitizeHTML(f'<img src="{png}"><img src="data:image/svg+xml,<svg/>">', False, cidURL)
        self.assertEqual(safe.html, f'<img src="{png}"><img>')

    def test_styleFunctions(self) -> None:
        """
        Inline styles keep declarations without functions or with colour
        and arithmetic ones, and lose any other function, escapes and
        comments.
        """
        cases = {
            "color: red; width: calc(100% - 2px)": "color: red; width: calc(100% - 2px)",
            "color: red; background-image: image-set('x.png' 1x)": "color: red",
            "color: red; background: URL(x)": "color: red",
            "background: u\\72l(x)": None,
            "color: red /* x */": None,
            "font-family: 'Arial'; @import 'x'": "font-family: 'Arial'",
            "junk": None,
        }
        for style, expected in cases.items():
            html = sanitizeHTML(f'<p style="{style}">x</p>', True, cidURL).html
            attrs = dict(elementsOf(html)[0][1])
            self.assertEqual(attrs.get("style"), expected, style)

    def test_hugeHTML(self) -> None:
        """
        HTML longer than L{render.MAX_BODY_CHARS} is cut, not refused.
        """
        safe = sanitizeHTML("<p>" + "x" * (render.MAX_BODY_CHARS + 10), False, cidURL)
        self.assertLessEqual(len(safe.html), render.MAX_BODY_CHARS + 10)
        self.assertTrue(safe.html.startswith("<p>xxx"))

    def test_document(self) -> None:
        """
        The served document declares UTF-8 and no referrer, around the
        sanitized fragment.
        """
        page = htmlDocument(sanitizeHTML("<p>caf\u00e9</p>", False, cidURL))
        self.assertIn(b'<meta charset="utf-8">', page)
        self.assertIn(b'<meta name="referrer" content="no-referrer">', page)
        self.assertIn("<p>caf\u00e9</p>".encode(), page)


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
            self.assertTrue(value.isprintable(), value)

    def test_headersBounded(self) -> None:
        """
        No more than L{render.MAX_HEADERS} headers are kept, and the rest
        are said to be left out.
        """
        self.patch(render, "MAX_HEADERS", 3)
        view = readMessage(message(*[f"X-{n}: v" for n in range(10)], "", "x"))
        self.assertEqual(len(view.headers), 3)
        self.assertIn("the message has more than 3 headers; the rest are not shown", view.problems)

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


# Pieces of hostile and ordinary HTML, shuffled into documents nobody
# wrote, to look for what the fixed vectors miss.
_PIECES = [html for _, html in XSS_VECTORS] + [
    "<", ">", "</", "<a", "<img", " src=", " href=", "'", '"', "=", "javascript:", "cid:x", "&#", "&#x",
    ";", "<!--", "-->", "<![CDATA[", "]]>", "<svg>", "<math>", "<table>", "<td>", "<p>", "</p>",
    "<style>", "</style>", "<noscript>", "</noscript>", "<template>", "<select>", "<option>",
    "onerror=alert(1)", "\x00", "\t", "\n", "style=background:url(x)", "<b>", "text",
]


class SanitizePropertyTests(SynchronousTestCase):
    """
    Random documents against L{sanitizeHTML} and random messages against
    L{readMessage}.
    """

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(pieces=st.lists(st.sampled_from(_PIECES), max_size=25), loadImages=st.booleans())
    def test_noScriptFromShuffledPieces(self, pieces: list[str], loadImages: bool) -> None:
        """
        Whatever order the pieces come in, the output has nothing that
        could run, load or submit, and sanitizing it again changes
        nothing that matters.
        """
        safe = sanitizeHTML("".join(pieces), loadImages, cidURL)
        self.assertEqual(scriptCapable(safe.html), [], safe.html)
        self.assertEqual(scriptCapable(sanitizeHTML(safe.html, loadImages, cidURL).html), [])

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
                self.assertTrue((name + value).isprintable() or not (name + value), repr(value))
            self.assertEqual([part.index for part in view.parts], list(range(len(view.parts))))
