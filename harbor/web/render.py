# -*- test-case-name: harbor.test.test_render -*-
"""
A stored message taken apart for the browser, its HTML made safe to show,
and the HTTP headers that keep it safe once shown.

Hostile mail is the normal case here: every byte of a message comes from
whoever sent it.  So:

  - L{readMessage} never raises on what is in the message: a parse bounded
    against MIME bombs (L{harbor.store.mime.parseTree}), every header
    decoded tolerantly, and whatever was wrong said in
    L{MessageView.problems} rather than hidden.
  - L{sanitizeHTML} (from L{harbor.web.sanitize}) passes HTML through
    nh3 (Ammonia) with explicit allow-lists of tags, attributes and URL
    schemes, so no script, form,
    frame, plug-in, C{on*} handler, C{javascript:} URL, C{<base>} or
    C{<meta>} survives, and remote images are removed unless asked for.
  - L{htmlHeaders} gives the sanitized document a Content-Security-Policy
    that would stop script even if the sanitizer let some through, and
    L{downloadHeaders} makes every attachment a download but a few raster
    image types.

Pure: no Twisted and no I/O but reading the file object it is given, so it
runs in a thread and is tested without a reactor.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Sequence
from email.message import Message
from typing import Any, BinaryIO
from urllib.parse import quote

from attrs import field, frozen

from harbor.store.headers import cleanText, decodeHeader
from harbor.store.mime import (
    MAX_MIME_DEPTH,
    cleanBody,
    contentTypeOf,
    htmlToText,
    isAttachment,
    leafParts,
    parseTree,
    partData,
    partFilename,
    partText,
    safeFilename,
)
from harbor.web.sanitize import SafeHTML, bareContentID, htmlDocument, sanitizeHTML

__all__ = [
    "INLINE_IMAGE_TYPES",
    "MAX_BODY_CHARS",
    "MAX_HEADERS",
    "MAX_HEADER_CHARS",
    "MAX_INLINE_IMAGES",
    "MAX_PROBLEMS",
    "MessageView",
    "Part",
    "SafeHTML",
    "cidDataURLs",
    "contentDisposition",
    "contentSecurityPolicy",
    "downloadHeaders",
    "htmlDocument",
    "htmlHeaders",
    "partContent",
    "partForContentID",
    "readHTML",
    "readMessage",
    "sanitizeHTML",
]

# Bounds on what one message can make the reader hold or do.
MAX_HEADERS = 1000
# A header value is cut at this many characters before it is decoded.
MAX_HEADER_CHARS = 16 * 1024
MAX_PROBLEMS = 50
# The text and HTML views are cut at this many characters: a browser
# would choke on more, and no one reads it.
MAX_BODY_CHARS = 4 * 1024 * 1024
# The most bytes of images L{cidDataURLs} puts into one document.
MAX_INLINE_IMAGES = 8 * 1024 * 1024

# Raster image types a browser may show inline, with the bytes each file
# starts with: a part is shown only if its content agrees with its type,
# so an HTML page labelled image/png is still a download.  SVG is an XML
# document that can carry script: never inline.
INLINE_IMAGE_TYPES: dict[str, tuple[bytes, ...]] = {
    "image/png": (b"\x89PNG\r\n\x1a\n",),
    "image/jpeg": (b"\xff\xd8\xff",),
    "image/gif": (b"GIF87a", b"GIF89a"),
    "image/webp": (b"RIFF",),
}

_FOLD = re.compile(r"\r?\n")


@frozen
class Part:
    """
    One leaf part of a message: its text, its HTML, an attachment, an
    image it shows.

    @ivar index: Its position among the message's leaf parts, from 0; what
        L{partContent} takes.
    @ivar contentType: Its declared MIME type, in lower case.
    @ivar filename: The name the sender gave it, made safe for display, or
        L{None}.
    @ivar size: The size of its content in bytes, transfer encoding undone.
    @ivar contentID: Its C{Content-ID} without the angle brackets, or
        L{None}: what a C{cid:} URL in the HTML names.
    @ivar inline: Whether a browser may show it inline: an allow-listed
        raster image whose content starts as its type says.
    @ivar attachment: Whether it is an attachment, rather than the text or
        HTML the views show.
    """

    index: int
    contentType: str
    filename: str | None
    size: int
    contentID: str | None
    inline: bool
    attachment: bool = True

    def asJSON(self) -> dict[str, Any]:
        """
        Describe this part with plain JSON values, for the API.

        @return: A mapping of the attributes by their names.
        """
        return {
            "index": self.index,
            "contentType": self.contentType,
            "filename": self.filename,
            "size": self.size,
            "contentID": self.contentID,
            "inline": self.inline,
            "attachment": self.attachment,
        }


@frozen
class MessageView:
    """
    A message taken apart for the browser.

    @ivar headers: Every header, in order, decoded (RFC 2047) and on one
        line, with no control character.
    @ivar subject: The first C{Subject}, decoded; C{""} without one.
    @ivar fromHeader: The first C{From}, decoded; C{""} without one.
    @ivar toHeader: The first C{To}, decoded; C{""} without one.
    @ivar date: The first C{Date} as written, or L{None}.
    @ivar text: The text view: the first text/plain part, or text made
        from the HTML when there is none; L{None} without either.
    @ivar html: The first text/html part, B{raw and unsanitized}: only
        L{sanitizeHTML} may make it a page.  L{None} without one.
    @ivar parts: Every leaf part, in order.
    @ivar problems: What was wrong with the message, in words for its
        reader: malformed structure, unknown charsets, parts left out.
    """

    headers: tuple[tuple[str, str], ...]
    subject: str
    fromHeader: str
    toHeader: str
    date: str | None
    text: str | None
    html: str | None = field(repr=False)
    parts: tuple[Part, ...]
    problems: tuple[str, ...]

    def asJSON(self) -> dict[str, Any]:
        """
        Describe this message with plain JSON values, for the API.

        The raw HTML is left out: an API client that put it in a page
        would run what the sanitizer exists to remove.  C{hasHTML} says
        whether there is some to fetch, sanitized, from its own URL.

        @return: A mapping with C{headers} (a list of name and value
            pairs), C{subject}, C{from}, C{to}, C{date}, C{text},
            C{hasHTML}, C{parts} and C{problems}.
        """
        return {
            "headers": [[name, value] for name, value in self.headers],
            "subject": self.subject,
            "from": self.fromHeader,
            "to": self.toHeader,
            "date": self.date,
            "text": self.text,
            "hasHTML": self.html is not None,
            "parts": [part.asJSON() for part in self.parts],
            "problems": list(self.problems),
        }


def readMessage(f: BinaryIO) -> MessageView:
    """
    Take a message apart into its headers, its text and HTML, and its
    parts.

    Nothing in the message makes this raise: the parse is bounded
    (L{harbor.store.mime.MAX_MIME_PARTS} parts, L{MAX_MIME_DEPTH} levels of
    nesting, L{MAX_HEADERS} headers of L{MAX_HEADER_CHARS} characters each,
    L{MAX_BODY_CHARS} characters of text
    and of HTML), and what was wrong or left out is said in
    L{MessageView.problems}.  The parts' contents are decoded one at a
    time, to measure them, and not kept: a 25 MiB attachment costs its
    decoding once, and L{partContent} reads it again when it is asked for.

    @param f: The message, positioned at its start.
    @return: What the message is made of.
    @raise OSError: if the file cannot be read.
    """
    return _read(f, 0)[0]


def readHTML(f: BinaryIO, loadImages: bool, imageLimit: int = MAX_INLINE_IMAGES) -> tuple[MessageView, SafeHTML | None]:
    """
    Read a message and make its HTML safe to show, in one parse: what
    C{/m/ID/html} needs.

    The HTML's C{cid:} images are inlined as C{data:} URLs (see
    L{cidDataURLs}), so the sanitized document needs no request of its
    own.

    @param f: The message, positioned at its start.
    @param loadImages: Whether remote images stay (L{sanitizeHTML}).
    @param imageLimit: The most bytes of images to inline.
    @return: The message, and its safe HTML or L{None} when it has no
        HTML; what was cut from the HTML to bound the work is in
        L{SafeHTML.problems}.
    @raise OSError: if the file cannot be read.
    """
    view, urls = _read(f, imageLimit)
    if view.html is None:
        return view, None
    return view, sanitizeHTML(view.html, loadImages, _resolver(view.parts, urls))


def _read(f: BinaryIO, imageLimit: int) -> tuple[MessageView, dict[str, str]]:
    # readMessage, keeping the data: URLs of the first inline images with
    # a Content-ID, up to imageLimit bytes in all.
    problems = _Problems()
    try:
        root, cut = parseTree(f)
    except OSError:
        raise
    except Exception as e:  # noqa: BLE001
        # parseTree keeps what it can; this is for a bug, not a message.
        return _unreadable(f"the message could not be read ({type(e).__name__})"), {}
    if cut is not None:
        problems.add(cut)
    headers = _headers(root, problems)
    plain: tuple[Message, int] | None = None
    html: tuple[Message, int] | None = None
    parts = []
    leaves, deeper = leafParts(root)
    if deeper:
        problems.add(f"parts nested deeper than {MAX_MIME_DEPTH} levels are not shown")
    urls: dict[str, str] = {}
    imageBytes = 0
    for index, leaf in enumerate(leaves):
        try:
            part, data = _describe(index, leaf)
        except Exception:  # noqa: BLE001
            # Kept in its place, so that parts[i].index == i.
            problems.add(f"part {index + 1} could not be read")
            parts.append(Part(index, "application/octet-stream", None, 0, None, False))
            continue
        if part.inline and part.contentID is not None and part.contentID not in urls:
            imageBytes += part.size
            if imageBytes <= imageLimit:
                urls[part.contentID] = _dataURL(part.contentType, data)
        del data
        if leaf is not root:
            problems.defects(f"part {index + 1}", leaf)
        if not part.attachment:
            if plain is None and (part.contentType == "text/plain" or part.contentType.startswith("multipart/")):
                plain = (leaf, index)
            elif html is None and part.contentType == "text/html":
                html = (leaf, index)
        parts.append(part)
    problems.defects("the message", root)

    htmlText = None if html is None else _bodyText(*html, problems)
    text: str | None = None
    if plain is not None:
        text = cleanBody(_bodyText(*plain, problems))
    elif htmlText is not None:
        text = cleanBody(htmlToText(htmlText))
    first: dict[str, str] = {}
    for name, value in headers:
        first.setdefault(name.lower(), value)
    view = MessageView(
        headers=tuple(headers),
        subject=first.get("subject", ""),
        fromHeader=first.get("from", ""),
        toHeader=first.get("to", ""),
        date=first.get("date"),
        text=text,
        html=htmlText,
        parts=tuple(parts),
        problems=problems.all(),
    )
    return view, urls


def partContent(f: BinaryIO, index: int) -> tuple[Part, bytes] | None:
    """
    One part of a message and its content, for a download or an inline
    image.

    @param f: The message, positioned at its start.
    @param index: The part's L{Part.index}.
    @return: The part and its content with the transfer encoding undone,
        or L{None} when the message has no such part (or it cannot be
        read).
    @raise OSError: if the file cannot be read.
    """
    if index < 0:
        return None
    try:
        root, _ = parseTree(f)
        leaves, _ = leafParts(root)
        if index >= len(leaves):
            return None
        return _describe(index, leaves[index])
    except OSError:
        raise
    except Exception:  # noqa: BLE001
        return None


def cidDataURLs(f: BinaryIO, limit: int = MAX_INLINE_IMAGES) -> Callable[[str], str | None]:
    """
    The C{cidURL} for L{sanitizeHTML} that inlines a message's images as
    C{data:} URLs, so that the sanitized document needs no request of its
    own (which its opaque origin would make without the session cookie;
    see L{contentSecurityPolicy}).

    Only inline images (L{Part.inline}: a raster type whose bytes agree)
    with a Content-ID are inlined, in order, until their total size
    reaches C{limit}; a C{cid:} URL naming another part, or one past the
    limit, is removed.

    @param f: The message, positioned at its start.
    @param limit: The most bytes of images to inline.
    @return: Gives the C{data:} URL for a Content-ID, or L{None}.
    @raise OSError: if the file cannot be read.
    """
    view, urls = _read(f, limit)
    return _resolver(view.parts, urls)


def _resolver(parts: Sequence[Part], urls: dict[str, str]) -> Callable[[str], str | None]:
    def cidURL(contentID: str) -> str | None:
        part = partForContentID(parts, contentID)
        return None if part is None or part.contentID is None else urls.get(part.contentID)

    return cidURL


def _dataURL(contentType: str, data: bytes) -> str:
    return f"data:{contentType};base64," + base64.b64encode(data).decode("ascii")


def partForContentID(parts: Sequence[Part], contentID: str) -> Part | None:
    """
    The part a C{cid:} URL names.

    @param parts: The message's parts.
    @param contentID: The Content-ID, with or without angle brackets, as
        L{sanitizeHTML} gives it to C{cidURL} (URL-decoded).
    @return: The first part with that Content-ID (exactly, else ignoring
        case, as some senders change it), or L{None}.
    """
    wanted = bareContentID(contentID)
    if not wanted:
        return None
    for part in parts:
        if part.contentID == wanted:
            return part
    folded = wanted.casefold()
    for part in parts:
        if part.contentID is not None and part.contentID.casefold() == folded:
            return part
    return None


def contentSecurityPolicy(loadImages: bool) -> str:
    """
    The Content-Security-Policy of a sanitized message, the second of its
    three layers (after nh3, before the C{<iframe sandbox>} of the page).

      - C{default-src 'none'}: no script, frame, font, plug-in, fetch or
        style sheet loads, whatever the sanitizer let through;
        C{form-action 'none'} and C{base-uri 'none'}, which
        C{default-src} does not cover, likewise.
      - C{sandbox allow-popups allow-popups-to-escape-sandbox}: the
        document runs no script and gets an opaque origin, so it can read
        no cookie and call no API of ours even when opened outside its
        frame.  Popups are allowed so that a link the reader clicks opens
        (in a new tab, without opener: no script can open one, since none
        runs); the page's C{<iframe sandbox>} must allow them too.
      - C{img-src data: 'self'}: inline images and our own C{cid:}
        rewrites (C{/m/ID/cid/CID}).  CSP cannot name a path for every
        message, and C{'self'} is the right source: CSP 3 matches it
        against the origin of the document's URL, not the opaque origin
        C{sandbox} gives the document.  Tried in Debian's Chromium: an
        image at C{/m/1/cid/x} loads, one on another host does not.  But
        the image request comes from an opaque origin, so the browser
        calls it cross-site (C{Sec-Fetch-Site: cross-site}) and sends no
        C{SameSite=Strict} (nor C{Lax}) cookie with it: behind a login,
        a C{cid:} URL must carry its own proof, or the image must be
        inlined as a C{data:} URL (L{cidDataURLs}).
        C{http: https:} are added only when the reader asked for images.
      - C{style-src 'unsafe-inline'}: the C{style} attributes the
        sanitizer kept.  Inline style cannot run script, the sandbox has
        none to run, and the sanitizer removed any C{url()} from it, so
        it fetches nothing either; without it most newsletters lose their
        layout.
      - C{frame-ancestors 'self'}: only our own pages frame a message.

    @param loadImages: Whether remote images may load.
    """
    images = "data: 'self'" + (" http: https:" if loadImages else "")
    return (
        "default-src 'none'; "
        f"img-src {images}; "
        "style-src 'unsafe-inline'; "
        "form-action 'none'; "
        "base-uri 'none'; "
        "frame-ancestors 'self'; "
        "sandbox allow-popups allow-popups-to-escape-sandbox"
    )


def htmlHeaders(loadImages: bool) -> list[tuple[bytes, bytes]]:
    """
    The HTTP headers of a sanitized message (L{htmlDocument}).

    @param loadImages: Whether remote images may load (see
        L{contentSecurityPolicy}).
    @return: Header names and values.
    """
    return [
        (b"Content-Type", b"text/html; charset=utf-8"),
        (b"Content-Security-Policy", contentSecurityPolicy(loadImages).encode("ascii")),
        (b"X-Content-Type-Options", b"nosniff"),
        (b"Referrer-Policy", b"no-referrer"),
        (b"Cache-Control", b"no-store"),
    ]


def downloadHeaders(part: Part) -> list[tuple[bytes, bytes]]:
    """
    The HTTP headers of a part served on its own.

    Every part is a download (C{attachment}) of type
    C{application/octet-stream}, which no browser renders, but an inline
    image (L{Part.inline}: PNG, JPEG, GIF or WebP whose bytes agree),
    which is served as such.  SVG is never inline: it is a document that
    can run script.  Both get C{nosniff}, so the type is not guessed from
    the content, and a policy that runs nothing should a browser render
    it anyway.

    @param part: The part.
    @return: Header names and values.
    """
    name = safeFilename(part.filename, part.index + 1, part.contentType)
    if part.inline and part.contentType in INLINE_IMAGE_TYPES:
        contentType, disposition = part.contentType, "inline"
    else:
        contentType, disposition = "application/octet-stream", "attachment"
    return [
        (b"Content-Type", contentType.encode("ascii")),
        (b"Content-Disposition", contentDisposition(disposition, name).encode("ascii")),
        (b"X-Content-Type-Options", b"nosniff"),
        (b"Content-Security-Policy", b"default-src 'none'; sandbox"),
        (b"Referrer-Policy", b"no-referrer"),
        (b"Cache-Control", b"no-store"),
    ]


def contentDisposition(disposition: str, filename: str) -> str:
    """
    A C{Content-Disposition} value naming a file, in ASCII.

    The name goes twice: as C{filename*} in UTF-8, percent-encoded (RFC
    6266, RFC 8187), which browsers prefer, and as a plain C{filename}
    with everything but safe ASCII made C{_}, for the rest.  No quote,
    backslash, semicolon or line break of the sender's gets through
    either way.

    @param disposition: C{attachment} or C{inline}.
    @param filename: The name, already made safe for a directory
        (L{safeFilename}).
    """
    fallback = re.sub(r"[^A-Za-z0-9 !#$&+,.=@^_`{}~()\[\]-]", "_", filename).strip() or "attachment"
    encoded = quote(filename, safe="!#$&+-.^_`|~")
    return f"{disposition}; filename=\"{fallback}\"; filename*=UTF-8''{encoded}"


def _describe(index: int, leaf: Message) -> tuple[Part, bytes]:
    contentType = contentTypeOf(leaf)
    data = partData(leaf, contentType)
    magic = INLINE_IMAGE_TYPES.get(contentType)
    inline = magic is not None and data.startswith(magic)
    if contentType == "image/webp":
        inline = inline and data[8:12] == b"WEBP"
    part = Part(
        index=index,
        contentType=cleanText(contentType),
        filename=partFilename(leaf),
        size=len(data),
        contentID=_contentID(leaf),
        inline=inline,
        attachment=isAttachment(leaf, contentType),
    )
    return part, data


def _contentID(leaf: Message) -> str | None:
    try:
        raw = leaf.get("Content-ID")
    except Exception:  # noqa: BLE001
        return None
    if raw is None:
        return None
    return bareContentID(cleanText(str(raw))) or None


def _bodyText(leaf: Message, index: int, problems: _Problems) -> str:
    text, problem = partText(leaf)
    if problem is not None:
        problems.add(f"part {index + 1}: {problem}")
    if len(text) > MAX_BODY_CHARS:
        problems.add(f"part {index + 1} is longer than {MAX_BODY_CHARS} characters; the rest is not shown")
        text = text[:MAX_BODY_CHARS]
    return text


def _headers(root: Message, problems: _Problems) -> list[tuple[str, str]]:
    headers = []
    try:
        items = root.raw_items()
    except Exception:  # noqa: BLE001
        problems.add("the message's headers could not be read")
        return []
    for count, (name, raw) in enumerate(items):
        if count >= MAX_HEADERS:
            problems.add(f"the message has more than {MAX_HEADERS} headers; the rest are not shown")
            break
        value = _FOLD.sub("", str(raw))
        if len(value) > MAX_HEADER_CHARS:
            # Decoding encoded words costs more than linear time: 4 MB of
            # them took a minute.
            problems.add(f"the {cleanText(str(name))[:40]} header is longer than {MAX_HEADER_CHARS} characters; it is cut")
            value = value[:MAX_HEADER_CHARS]
        headers.append((cleanText(str(name)), cleanText(decodeHeader(str(name), _eightBit(value)))))
    return headers


def _eightBit(value: str) -> str:
    # The parser keeps bytes that are not ASCII as surrogate escapes;
    # headers in UTF-8 (RFC 6532) are read as such, anything else is left
    # for cleanText to show as U+FFFD.
    try:
        return value.encode("ascii", "surrogateescape").decode("utf-8", "surrogateescape")
    except UnicodeError:
        return value


def _unreadable(problem: str) -> MessageView:
    return MessageView(
        headers=(), subject="", fromHeader="", toHeader="", date=None,
        text=None, html=None, parts=(), problems=(problem,),
    )


# What the email package's defects mean, for a reader.
_DEFECTS = {
    "NoBoundaryInMultipartDefect": "is multipart but names no boundary; shown as one part",
    "StartBoundaryNotFoundDefect": "is multipart but its boundary never appears; shown as one part",
    "CloseBoundaryNotFoundDefect": "has no closing boundary; it may have been cut short",
    "FirstHeaderLineIsContinuationDefect": "starts with a continuation line",
    "MisplacedEnvelopeHeaderDefect": 'has a "From " line among its headers',
    "MissingHeaderBodySeparatorDefect": "has a malformed header line; what follows was taken for the body",
    "MultipartInvariantViolationDefect": "is multipart but has no parts",
    "InvalidMultipartContentTransferEncodingDefect": "is multipart with a transfer encoding",
    "InvalidBase64PaddingDefect": "has base64 with bad padding",
    "InvalidBase64CharactersDefect": "has characters that are not base64 in its base64",
    "InvalidBase64LengthDefect": "has base64 of an impossible length",
    "UndecodableBytesDefect": "has bytes that are not ASCII in a header",
}


class _Problems:
    """
    What was wrong with a message, each said once, at most
    L{MAX_PROBLEMS}.
    """

    def __init__(self) -> None:
        self._seen: dict[str, None] = {}

    def add(self, problem: str) -> None:
        if len(self._seen) < MAX_PROBLEMS:
            self._seen[problem] = None

    def defects(self, where: str, part: Message) -> None:
        for defect in getattr(part, "defects", ()):
            kind = type(defect).__name__
            self.add(f"{where} {_DEFECTS.get(kind, 'is malformed (' + kind + ')')}")

    def all(self) -> tuple[str, ...]:
        return tuple(self._seen)
