# -*- test-case-name: harbor.test.test_sanitize -*-
"""
A message's HTML made safe to show: the first of its three layers (the
Content-Security-Policy of L{harbor.web.render.htmlHeaders} and the
page's C{<iframe sandbox>} are the others).

nh3 (Ammonia, on html5ever) parses the HTML as a browser would and
writes back only what explicit allow-lists name; an attribute filter then
decides each URL by where it is, rewrites C{cid:} images, counts remote
ones and filters inline styles.  Every list here is an allow-list: what a
new browser feature adds is removed until it is named.

Pure: no Twisted, no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from urllib.parse import unquote

import nh3
from attrs import field, frozen

# HTML longer than this is cut before it is sanitized: a browser would
# choke on more, and no one reads it.
MAX_HTML_CHARS = 4 * 1024 * 1024


@frozen
class SafeHTML:
    """
    HTML made safe to serve with L{htmlHeaders}.

    @ivar html: The sanitized fragment.
    @ivar remoteImages: How many remote (C{http:}, C{https:}) images the
        HTML has: removed unless images were asked for, kept if they were.
    @ivar problems: What was cut from the HTML to bound the work, in words
        for its reader.
    """

    html: str = field(repr=False)
    remoteImages: int
    problems: tuple[str, ...] = ()


# The deepest nesting of elements sanitized (Chromium's parser stops
# nesting at 512), and what boundNesting reads as tags.
MAX_HTML_DEPTH = 256
_TAG = re.compile(r"<(/?)([A-Za-z][^\s/>]*)[^>]*>?")
_VOID = frozenset(
    {"area", "base", "br", "col", "embed", "hr", "img", "input", "keygen", "link", "meta", "param", "source", "track", "wbr"}
)
_SIBLING_CLOSED = frozenset(
    {"p", "li", "dt", "dd", "td", "th", "tr", "option", "optgroup", "rt", "rp", "thead", "tbody", "tfoot", "colgroup"}
)

# The HTML a message may keep.  Everything else is removed, keeping its
# text (a <form>'s labels, a <button>'s words) unless it is in _DROPPED.
_TAGS = frozenset(
    {
        "a", "abbr", "acronym", "address", "article", "aside", "b", "bdi", "bdo",
        "big", "blockquote", "br", "caption", "center", "cite", "code", "col",
        "colgroup", "dd", "del", "details", "dfn", "div", "dl", "dt", "em",
        "figcaption", "figure", "font", "footer", "h1", "h2", "h3", "h4", "h5",
        "h6", "header", "hgroup", "hr", "i", "img", "ins", "kbd", "li", "main",
        "mark", "nav", "ol", "p", "pre", "q", "rp", "rt", "ruby", "s", "samp",
        "section", "small", "span", "strike", "strong", "sub", "summary", "sup",
        "table", "tbody", "td", "tfoot", "th", "thead", "time", "tr", "tt", "u",
        "ul", "var", "wbr",
    }
)
# Removed with everything in them: code (script, style, template), what is
# never shown (title, head matter), documents of other languages that can
# carry script (svg, math), frames and plug-ins, and noscript, whose
# content a browser without script would show but a sanitizer parses
# another way.  Style sheets go too: their url()s and selectors are more
# than a filter should try to read, and mail that is meant to be read
# everywhere has its styles inline.
_DROPPED = frozenset(
    {
        "script", "style", "template", "title", "svg", "math", "iframe", "frame",
        "frameset", "object", "embed", "applet", "noscript", "noembed", "noframes",
        "xmp", "plaintext", "textarea", "select",
    }
)
_CELL = {"align", "valign", "bgcolor", "width", "height", "colspan", "rowspan", "nowrap", "scope", "headers"}
# Presentation attributes only: no id or class (no style sheet is kept for
# them to match), no event handler, no URL but a link's and an image's.
_ATTRIBUTES: dict[str, set[str]] = {
    "*": {"title", "lang", "dir", "style", "align"},
    "a": {"href", "name"},
    "img": {"src", "alt", "width", "height", "border", "hspace", "vspace", "align"},
    "table": {"width", "height", "border", "cellpadding", "cellspacing", "bgcolor", "align", "summary"},
    "tr": {"align", "valign", "bgcolor", "height"},
    "td": _CELL,
    "th": _CELL,
    "col": {"span", "width", "align", "valign"},
    "colgroup": {"span", "width", "align", "valign"},
    "font": {"color", "face", "size"},
    "hr": {"width", "size", "noshade", "color"},
    "ol": {"start", "type", "reversed"},
    "ul": {"type"},
    "li": {"value", "type"},
    "time": {"datetime"},
    "details": {"open"},
    "bdo": {"dir"},
}
# Checked by nh3 on every URL attribute; relative URLs are removed too (they
# would point into this server), but for our cid: rewrites.  Which scheme fits which attribute is
# decided in _Filter.
_URL_SCHEMES = frozenset({"http", "https", "mailto", "tel", "cid", "data"})
_LINK_SCHEMES = ("http:", "https:", "mailto:", "tel:")
_DATA_IMAGE = re.compile(r"data:image/(png|jpeg|gif|webp)[;,]", re.IGNORECASE)
# CSS functions a style attribute may use: colours and arithmetic.  url(),
# image-set(), expression() and the rest would fetch or run something.
_STYLE_FUNCTIONS = frozenset({"rgb", "rgba", "hsl", "hsla", "calc", "min", "max", "clamp"})
_CSS_FUNCTION = re.compile(r"([a-z0-9_-]*)\s*\(")
_CSS_PROPERTY = re.compile(r"-?[a-z][a-z0-9-]*")
_CSS_FORBIDDEN = re.compile(r"behavior|binding|expression|javascript|vbscript|@", re.IGNORECASE)


def sanitizeHTML(html: str, loadImages: bool, cidURL: Callable[[str], str | None]) -> SafeHTML:
    """
    Make a message's HTML safe to show.

    nh3 parses it as a browser would (html5ever) and writes back only what
    the allow-lists name: formatting, tables, links and images.  What no
    allow-list names is gone: C{<script>}, C{<style>}, C{<form>} and its
    controls, frames, C{<object>}, C{<embed>}, C{<svg>}, C{<math>},
    C{<base>}, C{<meta>}, C{<link>}, comments (and with them Outlook's
    conditional comments), every C{on*} handler, C{srcset}, C{background}
    and relative URLs.  Then:

      - a link keeps an C{http:}, C{https:}, C{mailto:} or C{tel:} URL,
        and opens in a new browsing context without opener or referrer
        (C{target="_blank" rel="noopener noreferrer"});
      - an image keeps a C{data:} URL of a raster type; its C{cid:} URL
        becomes C{cidURL(contentID)} (removed when that is L{None}); its
        remote URL is counted, and kept only when C{loadImages};
      - a C{style} attribute keeps its declarations that use no CSS
        function but colours and arithmetic: no C{url()} fetches, even
        when images are allowed, and no C{expression()} runs in old
        browsers.

    @param html: The message's HTML, as L{MessageView.html}.
    @param loadImages: Whether remote images stay.
    @param cidURL: Gives our URL for an image by Content-ID (URL-decoded,
        without angle brackets), or L{None} for an unknown one.
    @return: The safe HTML, and how many remote images it had.
    """
    problems = []
    if len(html) > MAX_HTML_CHARS:
        html = html[:MAX_HTML_CHARS]
        problems.append(f"the HTML is longer than {MAX_HTML_CHARS} characters; the rest is not shown")
    html, flattened = boundNesting(html, MAX_HTML_DEPTH)
    if flattened:
        problems.append(f"the HTML nests elements deeper than {MAX_HTML_DEPTH} levels; the deeper tags are left out")
    attributeFilter = _Filter(loadImages, cidURL)
    try:
        cleaned = nh3.clean(
            html,
            tags=set(_TAGS),
            clean_content_tags=set(_DROPPED),
            attributes={tag: set(names) for tag, names in _ATTRIBUTES.items()},
            attribute_filter=attributeFilter,
            strip_comments=True,
            link_rel="noopener noreferrer",
            set_tag_attribute_values={"a": {"target": "_blank"}},
            url_schemes=set(_URL_SCHEMES),
            # nh3 checks URLs after the filter: the only relative ones to
            # keep are the cid: rewrites it made (it removed the message's).
            url_relative=attributeFilter.keepRelative,
        )
    except BaseException as e:
        # nh3 reports a bug of its own as a PanicException, which derives
        # from BaseException; a message must not be the end of the thread.
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        return SafeHTML("", 0, ("the HTML could not be sanitized",))
    return SafeHTML(cleaned, attributeFilter.remoteImages, tuple(problems))


def boundNesting(html: str, limit: int) -> tuple[str, bool]:
    """
    Leave out the start and end tags of elements nested deeper than
    C{limit}, keeping their text.

    html5ever takes time quadratic in the depth of nesting (100,000
    nested C{<div>}s, 500 kB of mail, cost 23 seconds of a thread), so
    the depth is bounded before nh3 sees the HTML.  The nesting is
    followed roughly, as a browser would build it: void elements
    (C{<br>}) and those a sibling closes (C{<p>}, C{<li>}, C{<td>}...)
    add no depth, and an end tag closes only an element that is open.
    Only the depth is at stake here, not safety: whatever this leaves,
    nh3 sanitizes.

    @param html: The HTML.
    @param limit: The deepest nesting kept.
    @return: The HTML with the deeper tags left out, and whether any were.
    """
    open_: list[str] = []
    # How many of each element were left out and not yet closed.
    dropped: dict[str, int] = {}
    pieces: list[str] = []
    kept = 0
    flattened = False
    for match in _TAG.finditer(html):
        closing, name = match.group(1) == "/", match.group(2).lower()
        if name in _VOID or name in _SIBLING_CLOSED:
            continue
        if not closing:
            if len(open_) < limit:
                open_.append(name)
                continue
            dropped[name] = dropped.get(name, 0) + 1
        elif dropped.get(name):
            dropped[name] -= 1
        elif name in open_:
            del open_[len(open_) - 1 - open_[::-1].index(name) :]
            continue
        else:
            continue
        flattened = True
        pieces.append(html[kept : match.start()])
        kept = match.end()
    if not flattened:
        return html, False
    pieces.append(html[kept:])
    return "".join(pieces), True


def htmlDocument(safe: SafeHTML) -> bytes:
    """
    The page that shows sanitized HTML, served with L{htmlHeaders}.

    @param safe: What L{sanitizeHTML} made.
    @return: A complete UTF-8 HTML document around it.
    """
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
        '<meta name="referrer" content="no-referrer"></head>\n<body>'
        + safe.html
        + "</body></html>\n"
    ).encode("utf-8")


class _Filter:
    """
    The nh3 C{attribute_filter} of L{sanitizeHTML}: decides each URL by the
    attribute it is in, rewrites C{cid:} images, counts remote ones and
    filters inline styles.

    @ivar remoteImages: The remote images seen so far.
    """

    def __init__(self, loadImages: bool, cidURL: Callable[[str], str | None]) -> None:
        self._loadImages = loadImages
        self._cidURL = cidURL
        self.remoteImages = 0
        self._rewritten: set[str] = set()

    def keepRelative(self, url: str) -> str | None:
        """
        nh3's C{url_relative}: keep a relative URL only if it is one of
        our C{cid:} rewrites.
        """
        return url if url in self._rewritten else None

    def __call__(self, tag: str, attribute: str, value: str) -> str | None:
        if attribute == "style":
            return _filterStyle(value)
        if tag == "a" and attribute == "href":
            return value if _normalURL(value).startswith(_LINK_SCHEMES) else None
        if tag == "img" and attribute == "src":
            return self._image(value)
        return value

    def _image(self, value: str) -> str | None:
        url = _normalURL(value)
        if url.startswith("cid:"):
            try:
                rewritten = self._cidURL(bareContentID(unquote(value.strip()[4:])))
            except Exception:  # noqa: BLE001
                return None
            if rewritten is not None:
                self._rewritten.add(rewritten)
            return rewritten
        if url.startswith(("http:", "https:")):
            self.remoteImages += 1
            return value if self._loadImages else None
        if _DATA_IMAGE.match(url):
            return value
        return None


def _normalURL(value: str) -> str:
    # A URL as a browser reads its scheme: surrounding spaces and control
    # characters stripped, tabs and line breaks anywhere removed (WHATWG
    # URL), in lower case.
    return re.sub(r"[\t\n\r]", "", value).strip("\x00- ").lower()


def _filterStyle(value: str) -> str | None:
    # Escapes and comments can spell "url(" without those letters in a
    # row: a style with either is dropped whole.
    if "\\" in value or "/*" in value or "<" in value:
        return None
    kept = []
    for declaration in value.split(";"):
        name, colon, setting = declaration.partition(":")
        name = name.strip().lower()
        if not colon or not _CSS_PROPERTY.fullmatch(name) or _CSS_FORBIDDEN.search(declaration):
            continue
        functions = _CSS_FUNCTION.findall(setting.lower())
        if any(function not in _STYLE_FUNCTIONS for function in functions):
            continue
        kept.append(f"{name}: {setting.strip()}")
    return "; ".join(kept) or None


def bareContentID(value: str) -> str:
    """
    A Content-ID without its angle brackets and surrounding spaces.
    """
    value = value.strip()
    if value.startswith("<") and value.endswith(">"):
        value = value[1:-1].strip()
    return value
