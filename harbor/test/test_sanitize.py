"""
Tests for L{harbor.web.sanitize}: no known XSS vector survives, and a
newsletter keeps its formatting.
"""

from __future__ import annotations

import base64
import re
from html.parser import HTMLParser

from twisted.trial.unittest import SynchronousTestCase

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harbor.test.xssvectors import XSS_VECTORS
from harbor.web import sanitize
from harbor.web.sanitize import htmlDocument, sanitizeHTML

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
        HTML longer than L{sanitize.MAX_HTML_CHARS} is cut, not refused.
        """
        safe = sanitizeHTML("<p>" + "x" * (sanitize.MAX_HTML_CHARS + 10), False, cidURL)
        self.assertLessEqual(len(safe.html), sanitize.MAX_HTML_CHARS + 10)
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
    Random documents against L{sanitizeHTML}.
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


class NestingTests(SynchronousTestCase):
    """
    Tests for L{sanitize.boundNesting}, which keeps html5ever's quadratic
    cost in the nesting depth bounded.
    """

    def depth(self, html: str) -> int:
        """
        The deepest nesting of C{html}'s elements, as L{html.parser} reads
        them (every start tag opens, every end tag closes).
        """
        deepest = current = 0
        for match in re.finditer(r"<(/?)[a-z]", html):
            current += -1 if match.group(1) else 1
            deepest = max(deepest, current)
        return deepest

    def test_deepNestingFlattened(self) -> None:
        """
        Elements nested deeper than L{sanitize.MAX_HTML_DEPTH} lose their
        tags but not their text, and the problem is said.
        """
        safe = sanitizeHTML("<div>" * 100000 + "bottom" + "</div>" * 100000, False, cidURL)
        self.assertEqual(self.depth(safe.html), sanitize.MAX_HTML_DEPTH)
        self.assertIn("bottom", safe.html)
        self.assertEqual(
            safe.problems,
            (f"the HTML nests elements deeper than {sanitize.MAX_HTML_DEPTH} levels; the deeper tags are left out",),
        )

    def test_unmatchedEndTagsDoNotHide(self) -> None:
        """
        End tags of elements that are not open close nothing, so they
        cannot make deep nesting look shallow.
        """
        html, flattened = sanitize.boundNesting("<div></span>" * 1000, 10)
        self.assertTrue(flattened)
        self.assertEqual(html.count("<div>"), 10)

    def test_siblingsAndVoidsAddNoDepth(self) -> None:
        """
        Void elements and those a sibling closes (C{<p>}, C{<li>},
        C{<td>}) are not counted, so long plain documents are untouched.
        """
        html = "<table>" + "<tr><td>x<br><img src=cid:a><p>y" * 5000 + "</table>" + "<ul>" + "<li>z" * 5000
        self.assertEqual(sanitize.boundNesting(html, 10), (html, False))
        self.assertEqual(sanitizeHTML(NEWSLETTER, False, cidURL).problems, ())

    def test_longHTMLSaid(self) -> None:
        """
        HTML cut for its length says so.
        """
        self.patch(sanitize, "MAX_HTML_CHARS", 10)
        safe = sanitizeHTML("<p>" + "x" * 20, False, cidURL)
        self.assertEqual(safe.html, "<p>xxxxxxx</p>")
        self.assertEqual(safe.problems, ("the HTML is longer than 10 characters; the rest is not shown",))
