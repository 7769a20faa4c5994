# -*- test-case-name: harbor.test.test_headers -*-
"""
Header blocks and header values, read cheaply and decoded tolerantly.

Whatever a sender put in a header is decoded here without ever raising:
for the server, which reads a header to choose a folder and must not make
a message undeliverable over a malformed one, and for the C{mailharbor}
command, which shows headers on a terminal (L{cleanText} makes them safe
for it).

Pure: no I/O but reading a file it is given, and no Twisted.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Iterable
from email import policy
from email.header import decode_header
from email.message import Message
from typing import Any, BinaryIO

# The most of a file read to find its header block; a file without a blank
# line this early is summarised from what was read.
HEADER_LIMIT = 256 * 1024
_HEADER_READ = 8192
# The first line of a header block that is neither a field, a continuation
# nor an mbox "From " line; the email package's parser takes it, and all
# after it, for the body.
_NOT_A_HEADER_LINE = re.compile(r"^(?![\041-\071\073-\176]*:|[ \t]|From )", re.MULTILINE)
# Invisible characters that reorder the text around them on a terminal or
# in a file name.
BIDI_CONTROLS = frozenset(
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)


def readHeaderBlock(f: BinaryIO, limit: int = HEADER_LIMIT) -> bytes:
    """
    Read a message's header block and as little of its body as possible.

    The file is read in blocks of a few kilobytes, so a message of any
    size costs one or two reads.

    @param f: The message, positioned at its start.
    @param limit: The most bytes to read, for a file without a blank line.
    @return: The header lines, without the blank line that ends them.
    """
    data = b""
    while len(data) < limit:
        chunk = f.read(min(_HEADER_READ, limit - len(data)))
        if not chunk:
            break
        searchFrom = max(0, len(data) - 2)
        data += chunk
        end = _endOfHeaders(data, searchFrom)
        if end is not None:
            return data[:end]
    return data


def headerFields(block: bytes, names: Iterable[str]) -> dict[str, str]:
    """
    Find a few fields in a header block without the cost of the C{email}
    package, which matters when listing a hundred thousand messages.

    Lines are read as the C{email} package reads them: a line starting with
    white space continues the field before it, and the first line that is
    neither a field nor a continuation ends the block.  Bytes that are not
    UTF-8 are kept as surrogate escapes, as L{cleanText} expects.

    @param block: The header block.
    @param names: The fields wanted.
    @return: The first value of each field found, by its name as given,
        unfolded but otherwise raw (encoded words are not decoded).
    """
    text = block.decode("utf-8", "surrogateescape")
    end = _NOT_A_HEADER_LINE.search(text)
    if end is not None:
        text = text[: end.start()]
    wanted = {name.lower(): name for name in names}
    fields: dict[str, str] = {}
    # One pass over the block, whatever the number of fields wanted.
    for match in _FIELD_LINE.finditer(text):
        name = wanted.get(match.group(1).lower())
        if name is not None and name not in fields:
            fields[name] = _FOLD.sub("", match.group(2)).rstrip("\r")
            if len(fields) == len(wanted):
                break
    return fields


def decodeHeader(name: str, value: str) -> str:
    """
    Decode the RFC 2047 encoded words of an unstructured header value.

    L{email.header.decode_header} does it several times faster than the
    header classes of L{email.policy.default}, with the same result once
    L{cleanText} has replaced undecodable bytes; they are used for a value
    with a backslash, which C{decode_header} would take for an escape, or
    one it cannot decode.

    @param name: The field's name, which decides how the C{email} package
        parses it.
    @param value: The raw, unfolded value.
    @return: The decoded text, undecodable bytes as surrogate escapes, or
        C{value} itself when it has no encoded word or cannot be decoded.
    """
    if "=?" not in value:
        return value
    if "\\" not in value:
        try:
            return "".join(_decodeWord(data, charset) for data, charset in decode_header(value))
        except Exception:  # noqa: BLE001, S110
            pass
    try:
        return str(_headerClass(name.lower())(name, value))
    except Exception:  # noqa: BLE001
        # The email package has raised on malformed headers before; one bad
        # header must not hide the message.
        return value


def headerValues(message: Message, name: str, allOrNone: bool = False) -> list[str]:
    """
    The values of every header C{name}, decoded (RFC 2047 words and all)
    where the parser can, and as received where it cannot: a malformed
    C{From: <} must not make the message undeliverable, nor hide it from
    a reader (the parser raises on some such values).

    @param message: The parsed message, or its header block.
    @param name: The field's name, in any case.
    @param allOrNone: Whether one value the parser cannot take leaves every
        value of the field as received (what C{mailharbor show} has always
        shown), rather than only that one (what folder rules have always
        matched).
    @return: The values, in order; raw values keep their bytes as
        surrogate escapes, as L{cleanText} expects.
    """
    wanted = name.lower()
    fields = [(key, raw) for key, raw in message.raw_items() if key.lower() == wanted]
    values = []
    for key, raw in fields:
        try:
            values.append(str(message.policy.header_fetch_parse(key, raw)))
        except Exception:  # noqa: BLE001
            if allOrNone:
                return [str(raw) for _, raw in fields]
            values.append(raw)
    return values


def cleanText(text: str) -> str:
    """
    Make text from a message safe to print on a terminal, on one line.

    @param text: Anything a sender could have put in a header.
    @return: C{text} with line breaks and tabs turned into single spaces,
        other control and direction-changing characters removed, and
        undecodable bytes shown as U+FFFD.
    """
    if text.isprintable():
        # No control, format (bidi), surrogate or separator character but
        # the ASCII space: nothing to remove.
        return " ".join(text.split())
    kept = []
    for character in text:
        category = unicodedata.category(character)
        if character.isspace():
            kept.append(" ")
        elif category == "Cs":
            kept.append("\ufffd")
        elif category != "Cc" and character not in BIDI_CONTROLS:
            kept.append(character)
    return " ".join("".join(kept).split())


# A field: its name, and its value with any continuation lines.
_FIELD_LINE = re.compile(r"^([\041-\071\073-\176]+):[ \t]*(.*(?:\n[ \t].*)*)", re.MULTILINE)


@functools.cache
def _headerClass(name: str) -> Any:
    # The email package makes a new class each time it is asked for one,
    # which costs more than parsing a short header: ask once per name.
    registry: Any = policy.default.header_factory
    return registry[name]


def _endOfHeaders(data: bytes, start: int) -> int | None:
    # Where the header block in data ends (before its blank line), if it
    # does: a blank line at the very start, or a line end followed by one.
    if data.startswith((b"\n", b"\r\n")):
        return 0
    blank = data.find(b"\n\n", start)
    # A CRLF blank line counts only before the first LF one.
    crlf = data.find(b"\n\r\n", start, blank + 2 if blank >= 0 else len(data))
    if crlf >= 0:
        return crlf + 1
    return blank + 1 if blank >= 0 else None


_FOLD = re.compile(r"\r?\n")


def _decodeWord(data: bytes | str, charset: str | None) -> str:
    if isinstance(data, str):
        return data
    if charset is None:
        # decode_header's encoding of the text between encoded words.
        return data.decode("raw-unicode-escape")
    try:
        return data.decode(charset, "surrogateescape")
    except LookupError:
        # An unknown charset: keep what is ASCII, as the email package does.
        return data.decode("ascii", "surrogateescape")
