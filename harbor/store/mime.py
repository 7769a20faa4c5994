# -*- test-case-name: harbor.test.test_mime -*-
"""
A stored message taken apart for a reader: its headers, its text (from
HTML if it has no plain text) and its attachments, and those attachments
saved as files.

The message comes from anyone, so the parse is bounded against MIME bombs,
nothing the C{email} package raises hides the whole message, the text is
made safe for a terminal and an attachment's name safe for a directory.

Nothing here imports Twisted, for the C{mailharbor} command's sake (see
L{harbor.store.reader}).
"""

from __future__ import annotations

import os
import re
import unicodedata
from collections.abc import Iterable
from email import policy
from email.feedparser import BytesFeedParser
from email.message import EmailMessage, Message
from html.parser import HTMLParser
from mimetypes import guess_extension
from typing import Any, BinaryIO, cast

from attrs import field, frozen

from harbor.store.headers import BIDI_CONTROLS, cleanText, headerValues
from harbor.store.reader import StoreError

# How much of a message's MIME structure is looked at; see parseMessage.
MAX_MIME_PARTS = 1000
MAX_MIME_DEPTH = 20
# Room below the usual 255-byte limit for a " (NNN)" suffix.
MAX_FILENAME_BYTES = 200
# The headers shown by a message's summary: the trace headers the server
# adds, then those a reader looks at first.
SUMMARY_HEADERS = (
    "Return-Path",
    "Delivered-To",
    "Received",
    "From",
    "To",
    "Cc",
    "Subject",
    "Date",
    "Message-ID",
)


@frozen
class Attachment:
    """
    One attachment of a message, decoded.

    @ivar filename: The name the sender gave it, made safe for a terminal,
        or L{None}.
    @ivar contentType: Its MIME type, in lower case.
    @ivar data: Its content, with the transfer encoding undone.
    """

    filename: str | None
    contentType: str
    data: bytes = field(repr=False)

    @property
    def size(self) -> int:
        """
        The size of the decoded content in bytes.
        """
        return len(self.data)


@frozen
class MessageDetails:
    """
    A message taken apart for a reader.

    @ivar headers: The summary headers present, in L{SUMMARY_HEADERS}
        order, each value decoded and on one line.
    @ivar text: The first text part, or L{None} when there is none.
    @ivar textType: C{"text/plain"}, or C{"text/html"} when L{text} was
        converted from HTML; L{None} without text.
    @ivar attachments: The attachments, in the order they appear.
    @ivar truncated: C{True} when the message has more parts, or deeper
        nesting, than was looked at.
    """

    headers: tuple[tuple[str, str], ...]
    text: str | None
    textType: str | None
    attachments: tuple[Attachment, ...]
    truncated: bool


def parseMessage(f: BinaryIO) -> MessageDetails:
    """
    Take a message apart into its headers, its text and its attachments.

    The message is parsed with the standard C{email} package, which
    accepts anything and records what is malformed instead of raising.
    Against messages built to exhaust the reader (MIME bombs), the parse
    stops after L{MAX_MIME_PARTS} parts, which bounds the memory and time
    it takes, and parts nested deeper than L{MAX_MIME_DEPTH} multiparts are
    not looked at; either sets L{MessageDetails.truncated}.  Whatever else
    goes wrong in the C{email} package leaves out that header or part,
    never the whole message.

    The whole message is read into memory, as the C{email} package needs;
    the server's maximum message size, when one is set, bounds it.

    @param f: The message, positioned at its start.
    @return: What it is made of.
    @raise OSError: if the file cannot be read.
    """
    root, cut = parseTree(f)
    truncated = cut is not None
    headers = []
    for name in SUMMARY_HEADERS:
        for value in headerValues(root, name, allOrNone=True):
            headers.append((name, cleanText(value)))

    plain: Message | None = None
    html: Message | None = None
    attachments = []
    walked, deeper = leafParts(root)
    truncated = truncated or deeper
    for part in walked:
        contentType = contentTypeOf(part)
        if isAttachment(part, contentType):
            attachments.append(
                Attachment(partFilename(part), contentType, partData(part, contentType))
            )
        elif plain is None and (
            contentType == "text/plain" or contentType.startswith("multipart/")
        ):
            plain = part
        elif contentType == "text/html" and html is None:
            html = part

    text: str | None = None
    textType: str | None = None
    if plain is not None:
        text, textType = cleanBody(partText(plain)[0]), "text/plain"
    elif html is not None:
        text, textType = cleanBody(htmlToText(partText(html)[0])), "text/html"
    return MessageDetails(
        headers=tuple(headers),
        text=text,
        textType=textType,
        attachments=tuple(attachments),
        truncated=truncated,
    )


def parseTree(f: BinaryIO) -> tuple[EmailMessage, str | None]:
    """
    Parse a message into the C{email} package's tree, bounded against
    messages built to exhaust the reader (MIME bombs).

    The parse stops after L{MAX_MIME_PARTS} parts, which bounds the memory
    and time it takes; nesting deep enough to exhaust the parser's
    recursion, or a bug in the C{email} package, also stops it.  What was
    parsed until then is kept.  The whole message is read into memory, as
    the C{email} package needs; the server's maximum message size, when
    one is set, bounds it.

    @param f: The message, positioned at its start.
    @return: The root of the tree, and why the parse stopped early, or
        L{None} when it did not.
    @raise OSError: if the file cannot be read.
    """
    factory = _BoundedMessageFactory(MAX_MIME_PARTS)
    parser = BytesFeedParser(_factory=factory, policy=policy.default)
    factory.arm()
    try:
        while chunk := f.read(64 * 1024):
            parser.feed(chunk)
        return parser.close(), None
    except OSError:
        raise
    except _TooManyParts:
        cut = f"the message has more than {MAX_MIME_PARTS} parts; the rest are not shown"
    except RecursionError:
        cut = "the message's parts are nested too deep to read; the deeper ones are not shown"
    except Exception as e:  # noqa: BLE001
        cut = f"the message could not be read to its end ({type(e).__name__}); the rest is not shown"
    return (factory.root if factory.root is not None else EmailMessage()), cut


def htmlToText(html: str) -> str:
    """
    Turn HTML into text, crudely: drop the tags, scripts and styles, break
    lines at block elements, and decode entities.

    @param html: An HTML document or fragment, well formed or not.
    @return: Its text, with runs of blank lines reduced to one.
    """
    extractor = _TextExtractor()
    try:
        extractor.feed(html)
        extractor.close()
    except Exception:  # noqa: BLE001, S110
        # HTMLParser is lenient, but its input here comes from anyone.
        pass
    lines = [" ".join(line.split()) for line in "".join(extractor.pieces).split("\n")]
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(lines))
    return text.strip("\n") + "\n" if text.strip() else ""


def safeFilename(name: str | None, index: int, contentType: str) -> str:
    """
    Make a name a sender gave an attachment safe to create in a directory.

    Only the last component of a path, Unix or Windows, is kept
    (C{../../x} becomes C{x}); control and text-direction
    characters are removed, undecodable bytes become U+FFFD, leading dots
    and surrounding spaces are stripped, and the result is cut to
    L{MAX_FILENAME_BYTES} bytes of UTF-8, keeping a short extension.
    Nothing is left that could name another directory or a hidden file.

    @param name: The name from the message, or L{None}.
    @param index: The attachment's position, from 1, to name one without a
        usable name.
    @param contentType: Its MIME type, to give such a name an extension.
    @return: A non-empty file name.
    """
    candidate = ""
    if name is not None:
        candidate = re.split(r"[/\\]", name)[-1]
        candidate = "".join(
            "\ufffd" if unicodedata.category(c) == "Cs" else c
            for c in candidate
            if unicodedata.category(c) != "Cc" and c not in BIDI_CONTROLS
        )
        candidate = candidate.strip().lstrip(".").strip()
    if not candidate:
        candidate = f"attachment-{index}{guess_extension(contentType) or '.bin'}"
    return _boundFilename(candidate, MAX_FILENAME_BYTES)


def saveAttachments(attachments: Iterable[Attachment], directory: str) -> list[str]:
    """
    Write attachments as files into a directory, never anywhere else and
    never over an existing file.

    Each file is created relative to the directory (opened once), with
    C{O_EXCL} and C{O_NOFOLLOW}, under its L{safeFilename}; when that name
    is taken, by an earlier attachment or a file already there, C{" (2)"},
    C{" (3)"} and so on are added before the extension.

    @param attachments: What to write.
    @param directory: Where; created if it does not exist.
    @return: The paths written, in order.
    @raise StoreError: if the directory or a file cannot be made or written;
        the file being written is removed.
    """
    try:
        os.makedirs(directory, exist_ok=True)
        directoryFD = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise StoreError(f"cannot use {directory}: {e.strerror or e}") from None
    written = []
    try:
        for index, attachment in enumerate(attachments, 1):
            base = safeFilename(attachment.filename, index, attachment.contentType)
            filename, fd = _createUnique(directoryFD, directory, base)
            path = os.path.join(directory, filename)
            try:
                with os.fdopen(fd, "wb") as out:
                    out.write(attachment.data)
            except OSError as e:
                try:
                    os.unlink(filename, dir_fd=directoryFD)
                except OSError:
                    pass
                raise StoreError(f"cannot write {path}: {e.strerror or e}") from None
            written.append(path)
    finally:
        os.close(directoryFD)
    return written


def cleanBody(text: str) -> str:
    """
    Make a message's text safe to print on a terminal, keeping its lines.

    @param text: The decoded text of a part.
    @return: C{text} with line ends made C{\\n}, tabs kept, other control
        and direction-changing characters removed, and undecodable bytes
        shown as U+FFFD.
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    kept = []
    for character in text:
        if character in "\n\t":
            kept.append(character)
            continue
        category = unicodedata.category(character)
        if category == "Cs":
            kept.append("\ufffd")
        elif category != "Cc" and character not in BIDI_CONTROLS:
            kept.append(character)
    return "".join(kept)


class _BoundedMessageFactory:
    """
    Makes the C{email} parser's message objects and refuses to make more
    than a limit, which stops the parse of a message with too many parts.

    @ivar root: The first message made once armed: the message itself.
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._armed = False
        self._made = 0
        self.root: EmailMessage | None = None

    def arm(self) -> None:
        """
        Start counting; the parser makes one object on creation to probe
        the factory, which must not count.
        """
        self._armed = True

    def __call__(self, **keywords: Any) -> EmailMessage:
        """
        Make a message object, as the parser asks with a C{policy}
        keyword.

        @raise _TooManyParts: when the limit is reached.
        """
        if self._armed:
            if self._made >= self._limit:
                raise _TooManyParts()
            self._made += 1
        message = EmailMessage(**keywords)
        if self._armed and self.root is None:
            self.root = message
        return message


class _TooManyParts(Exception):
    """
    The message has more than L{MAX_MIME_PARTS} parts.
    """


class _TextExtractor(HTMLParser):
    """
    Collects the text of an HTML document for L{htmlToText}.
    """

    _BLOCKS = frozenset(
        {
            "address", "article", "aside", "blockquote", "br", "dd", "div", "dl", "dt",
            "fieldset", "figcaption", "figure", "footer", "form", "h1", "h2", "h3", "h4",
            "h5", "h6", "header", "hr", "li", "main", "nav", "ol", "p", "pre", "section",
            "table", "tbody", "td", "th", "thead", "tr", "ul"
        }
    )
    _HIDDEN = frozenset({"script", "style", "template", "title"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.pieces: list[str] = []
        self._hidden = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._HIDDEN:
            self._hidden += 1
        elif tag in self._BLOCKS:
            self.pieces.append("\n")
            if tag == "li":
                self.pieces.append("* ")
        elif tag == "td" or tag == "th":
            self.pieces.append(" ")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in self._HIDDEN:
            self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag: str) -> None:
        if tag in self._HIDDEN:
            self._hidden = max(0, self._hidden - 1)
        elif tag in self._BLOCKS:
            self.pieces.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._hidden:
            self.pieces.append(data)


def leafParts(root: Message) -> tuple[list[Message], bool]:
    """
    The leaf parts of a message, in order, no deeper than
    L{MAX_MIME_DEPTH}.

    An encapsulated message (C{message/*}) is a leaf, and so is a
    multipart the parser could not split (it has no boundary).  The walk
    is iterative, so no structure exhausts the stack.

    @param root: The parsed message.
    @return: The parts, and whether some were too deep to be looked at.
    """
    leaves = []
    deeper = False
    stack: list[tuple[Message, int]] = [(root, 0)]
    while stack:
        part, depth = stack.pop()
        children = part.get_payload() if contentTypeOf(part).startswith("multipart/") else None
        if isinstance(children, list):
            if depth >= MAX_MIME_DEPTH:
                deeper = deeper or bool(children)
                continue
            # The parser makes a multipart's payload a list of messages.
            stack.extend((child, depth + 1) for child in reversed(cast("list[Message]", children)))
        else:
            leaves.append(part)
    return leaves, deeper


def contentTypeOf(part: Message) -> str:
    """
    A part's MIME type in lower case, C{application/octet-stream} when its
    C{Content-Type} cannot be read.
    """
    try:
        return part.get_content_type()
    except Exception:  # noqa: BLE001
        return "application/octet-stream"


def isAttachment(part: Message, contentType: str) -> bool:
    """
    Whether a leaf part is an attachment rather than the message's text:
    anything but text, and text with a file name or an C{attachment}
    disposition.
    """
    if contentType.startswith("multipart/"):
        # One the parser could not split: its body is shown as text.
        return False
    if not contentType.startswith("text/"):
        return True
    try:
        return part.get_content_disposition() == "attachment" or part.get_filename() is not None
    except Exception:  # noqa: BLE001
        return False


def partFilename(part: Message) -> str | None:
    """
    The file name a sender gave a part, made safe for a terminal, or
    L{None}.
    """
    try:
        name = part.get_filename()
    except Exception:  # noqa: BLE001
        return None
    return None if name is None else cleanText(str(name))


def partData(part: Message, contentType: str) -> bytes:
    """
    A leaf part's content with its transfer encoding undone; an
    encapsulated message as its bytes; C{b""} when it cannot be decoded.
    """
    try:
        if contentType.startswith("message/"):
            payload = part.get_payload()
            if isinstance(payload, list):
                return b"".join(
                    sub.as_bytes(policy=policy.compat32)
                    for sub in payload
                    if isinstance(sub, Message)
                )
        data = part.get_payload(decode=True)
    except Exception:  # noqa: BLE001
        return b""
    return data if isinstance(data, bytes) else b""


def partText(part: Message) -> tuple[str, str | None]:
    """
    A text part's content as text, decoded with its charset.

    A charset Python does not know, or none at all for bytes that are not
    ASCII, is not a reason to hide the text: it is decoded as UTF-8 if it
    is that, else as Windows-1252 (what browsers make of Latin-1), and the
    fallback is said.

    @return: The text, and what was wrong with its charset or L{None}.
    """
    unknown = False
    try:
        content = part.get_content()  # type: ignore[attr-defined]
        if isinstance(content, str):
            return content, None
    except KeyError:
        # No content manager for the type: a multipart the parser could
        # not split.
        pass
    except LookupError:
        unknown = True
    except Exception:  # noqa: BLE001, S110
        # A multipart the parser could not split, a bug in the email
        # package: read the bytes below.
        pass
    try:
        data = part.get_payload(decode=True)
    except Exception:  # noqa: BLE001
        return "", "its content could not be decoded"
    if not isinstance(data, bytes):
        return "", None
    named = None
    if unknown:
        charset = cleanText(str(part.get_param("charset", "") or ""))[:40]
        named = f"its charset {charset!r} is unknown"
    try:
        return data.decode("utf-8"), named and f"{named}; shown as UTF-8"
    except UnicodeDecodeError:
        return data.decode("windows-1252", "replace"), f"{named or 'it is not UTF-8'}; shown as Windows-1252"


def _boundFilename(name: str, limit: int) -> str:
    if len(name.encode("utf-8")) <= limit:
        return name
    stem, extension = os.path.splitext(name)
    if len(extension.encode("utf-8")) > 16:
        stem, extension = name, ""
    room = limit - len(extension.encode("utf-8"))
    cut = stem.encode("utf-8")[:room].decode("utf-8", "ignore").rstrip()
    return cut + extension


def _createUnique(directoryFD: int, directory: str, base: str) -> tuple[str, int]:
    stem, extension = os.path.splitext(base)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for count in range(1, 10000):
        filename = base if count == 1 else f"{stem} ({count}){extension}"
        try:
            return filename, os.open(filename, flags, 0o666, dir_fd=directoryFD)
        except FileExistsError:
            continue
        except OSError as e:
            raise StoreError(
                f"cannot create {os.path.join(directory, filename)}: {e.strerror or e}"
            ) from None
    raise StoreError(f"cannot find a free name for {base} in {directory}")
