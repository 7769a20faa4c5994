# -*- test-case-name: harbor.test.test_browse -*-
"""
One line of the web interface's listings: a L{Summary} of a message read
from its header block alone, and the matching of a search's words against
its headers and, for C{body:}, its text.

Blocking (it reads files) but pure otherwise; nothing here imports
Twisted.
"""

from __future__ import annotations

import io
import os
import stat
from datetime import UTC, datetime
from typing import Any, BinaryIO

from attrs import frozen

from harbor.store.headers import cleanText, decodeHeader, headerFields, readHeaderBlock
from harbor.store.mime import parseMessage
from harbor.store.reader import MessageFile, relocate
from harbor.store.search import BODY_READ_LIMIT, Query

__all__ = ["Summary", "hasAttachment", "isoTime", "openMessage", "readSummary", "summarise"]

#: The most characters of a header a summary keeps: a line of a listing
#: stays a line, whatever a sender wrote (the message's page shows all).
MAX_FIELD = 1000
# The header fields a summary is made of.
_SUMMARY_HEADERS = (
    "Return-Path",
    "Delivered-To",
    "From",
    "To",
    "Cc",
    "Subject",
    "Date",
    "Content-Type",
    "Content-Disposition",
)


@frozen
class Summary:
    """
    One line of a listing.

    @ivar id: The message's Maildir id.
    @ivar mailbox: The key of the Maildir it is in (L{Folder.key}).
    @ivar delivered: When it was delivered, from its id (or, for a name
        without a time, the file's modification time).
    @ivar date: The C{Date:} header as the sender wrote it, or L{None}.
    @ivar sender: The envelope sender (C{Return-Path:}, without its angle
        brackets), C{""} for the null sender, L{None} without the header.
    @ivar recipient: The envelope recipient this copy was delivered for
        (C{Delivered-To:}), or L{None}.
    @ivar fromHeader: The decoded C{From:}, or C{""}.
    @ivar toHeader: The decoded C{To:}, or C{""}.
    @ivar subject: The decoded subject, or C{""}.
    @ivar size: The file's size in bytes.
    @ivar seen: Whether it has the seen flag.
    @ivar new: Whether it is still in C{new/} (no mail reader has seen it
        arrive).
    @ivar hasAttachment: Whether its top-level headers say it has
        attachments (see L{hasAttachment}).
    """

    id: str
    mailbox: str
    delivered: float
    date: str | None
    sender: str | None
    recipient: str | None
    fromHeader: str
    toHeader: str
    subject: str
    size: int
    seen: bool
    new: bool
    hasAttachment: bool

    def asJSON(self) -> dict[str, Any]:
        """
        The summary as plain JSON values: as its attributes, with
        C{from} and C{to} for the headers, C{delivered} in ISO 8601 (UTC)
        and C{timestamp} its seconds since the epoch.
        """
        return {
            "id": self.id,
            "mailbox": self.mailbox,
            "delivered": isoTime(self.delivered),
            "timestamp": self.delivered,
            "date": self.date,
            "sender": self.sender,
            "recipient": self.recipient,
            "from": self.fromHeader,
            "to": self.toHeader,
            "subject": self.subject,
            "size": self.size,
            "seen": self.seen,
            "new": self.new,
            "hasAttachment": self.hasAttachment,
        }


def summarise(message: MessageFile, f: BinaryIO, delivered: float | None = None) -> tuple[Summary, bytes]:
    """
    Describe a message from its header block.

    @param message: Where it was found.
    @param f: Its open file, at its start.
    @param delivered: Its delivery time, if known already.
    @return: The summary and the raw header block.
    @raise OSError: if the file cannot be read.
    """
    summary, block, _ = _summarise(message, f, delivered)
    return summary, block


def _summarise(
    message: MessageFile, f: BinaryIO, delivered: float | None
) -> tuple[Summary, bytes, dict[str, str]]:
    # summarise, and the raw fields it read.
    status = os.fstat(f.fileno())
    block = readHeaderBlock(f)
    fields = headerFields(block, _SUMMARY_HEADERS)

    def header(name: str) -> str | None:
        value = fields.get(name)
        if value is None:
            return None
        text = cleanText(decodeHeader(name, value[: 4 * MAX_FIELD]))
        return text if len(text) <= MAX_FIELD else text[: MAX_FIELD - 1] + "\u2026"

    sender = header("Return-Path")
    if sender is not None and sender.startswith("<") and sender.endswith(">"):
        sender = sender[1:-1].strip()
    summary = Summary(
        id=message.name.id,
        mailbox=message.mailbox,
        delivered=status.st_mtime if delivered is None else delivered,
        date=header("Date"),
        sender=sender,
        recipient=header("Delivered-To"),
        fromHeader=header("From") or "",
        toHeader=header("To") or "",
        subject=header("Subject") or "",
        size=status.st_size,
        seen=message.seen,
        new=message.subdirectory == "new",
        hasAttachment=hasAttachment(fields.get("Content-Type", ""), fields.get("Content-Disposition", "")),
    )
    return summary, block, fields


def hasAttachment(contentType: str, disposition: str) -> bool:
    """
    Whether a message has attachments, judged from its top-level headers
    alone, as mail readers mark a list: a C{multipart/mixed} message, one
    whose whole body is an attachment, or one whose single part is not
    text.  (C{multipart/alternative} and C{multipart/related}, text and
    HTML with inline images, have none.)
    """
    if disposition.partition(";")[0].strip().lower() == "attachment":
        return True
    kind = contentType.partition(";")[0].strip().lower()
    if kind == "multipart/mixed":
        return True
    return bool(kind) and not kind.startswith(("text/", "multipart/", "message/"))


def readSummary(message: MessageFile, delivered: float, query: Query) -> Summary | None:
    """
    Summarise a message if it matches a query's words about headers and
    bodies; a message that vanished is looked for again where a mail
    reader may have moved it.

    @param message: Where it was found.
    @param delivered: Its delivery time.
    @param query: The words to match.
    @return: Its summary, or L{None} if it does not match, is gone or
        cannot be read.
    """
    for _ in range(2):
        try:
            with openMessage(message.path) as f:
                summary, block, fields = _summarise(message, f, delivered)
                if not query.readsHeaders and not query.readsBodies:
                    return summary
                text = _headerText(summary, block) if query.readsAnyHeader else ""
                if not query.matchesHeaders(_searchFields(summary, fields), text, summary.hasAttachment):
                    return None
                if query.readsBodies:
                    f.seek(0)
                    details = parseMessage(io.BytesIO(f.read(BODY_READ_LIMIT)))
                    if not query.matchesBody((details.text or "").casefold()):
                        return None
                return summary
        except FileNotFoundError:
            found = relocate(message)
            if found is None:
                return None
            message = found
        except OSError:
            return None
    return None


def _searchFields(summary: Summary, fields: dict[str, str]) -> dict[str, str]:
    cc = fields.get("Cc", "")
    return {
        "from": f"{summary.fromHeader}\n{summary.sender or ''}".casefold(),
        "to": f"{summary.toHeader}\n{cleanText(decodeHeader('Cc', cc))}\n{summary.recipient or ''}".casefold(),
        "subject": summary.subject.casefold(),
    }


def _headerText(summary: Summary, block: bytes) -> str:
    # The raw block, for any header, and the decoded values, for encoded
    # words in the common ones.
    decoded = (summary.fromHeader, summary.toHeader, summary.subject)
    return "\n".join((block.decode("utf-8", "replace"), *decoded)).casefold()


def openMessage(path: str) -> BinaryIO:
    """
    Open a message's file to read it, but never through a symbolic link
    nor anything but a regular file: a Maildir holds files, and a link
    planted in one must not show what it points to.

    @raise OSError: if it cannot be opened, or is not a regular file.
    """
    descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    try:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            raise IsADirectoryError(path)
        return os.fdopen(descriptor, "rb")
    except BaseException:
        os.close(descriptor)
        raise


def isoTime(when: float) -> str:
    """
    A time as ISO 8601 in UTC, or C{?} if it cannot be shown.
    """
    try:
        return datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (ValueError, OverflowError, OSError):
        return "?"
