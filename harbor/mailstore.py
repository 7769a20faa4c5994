# -*- test-case-name: harbor.test.test_mailstore -*-
"""
Reading, and tidying, the Maildirs MailHarbor has written.

This is the store as an operator's tools see it: find messages by their
file names, summarise them from their header blocks, take one apart into
its text and attachments, mark one seen, and delete old ones.  The server
itself never uses this module; it only writes (L{harbor.maildir}).

Everything here runs while the server delivers and while mail readers move
messages from C{new/} to C{cur/}, so a file may vanish between being found
and being opened.  Functions that meet a vanished file either look for it
again where a reader would have moved it or leave it out; none of them
treats it as a crash.

A store can hold a hundred thousand messages, so whatever can be decided
from file names (the mailbox, the delivery time at the start of the id,
the size in the C{,S=} field) is decided before any file is opened.

Nothing here imports the reactor or L{twisted.mail}: the C{mailharbor}
command must start quickly and must not affect, or be affected by, the
reactor a server would install.
"""

from __future__ import annotations

import functools
import os
import re
import unicodedata
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from email import policy
from email.feedparser import BytesFeedParser
from email.header import decode_header
from email.message import EmailMessage, Message
from html.parser import HTMLParser
from mimetypes import guess_extension
from typing import Any, BinaryIO

from attrs import field, frozen

from harbor.maildir import MaildirName, parseName

# The most of a file read to find its header block; a file without a blank
# line this early is summarised from what was read.
HEADER_LIMIT = 256 * 1024
MESSAGE_DIRECTORIES = ("new", "cur")
# The Maildir specification: a file in tmp/ untouched for 36 hours is the
# remains of a delivery that died, and may be removed.
STALE_TEMPORARY_AGE = 36 * 60 * 60
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

_HEADER_READ = 8192
# The first line of a header block that is neither a field, a continuation
# nor an mbox "From " line; the email package's parser takes it, and all
# after it, for the body.
_NOT_A_HEADER_LINE = re.compile(r"^(?![\041-\071\073-\176]*:|[ \t]|From )", re.M)
# A Maildir id, as parseName reads it, and the delivery time it starts with:
# seconds, then optionally the microseconds of MailHarbor's M field.
_ID = re.compile(r"[^,:/]+")
_DELIVERY_TIME = re.compile(r"([0-9]+)(?:\Z|\.(?:M([0-9]{1,6})(?![0-9]))?)")
# The latest time datetime can represent (9999-12-31T23:59:59Z).
_LAST_TIME = 253402300799
# Invisible characters that reorder the text around them on a terminal or
# in a file name.
_BIDI_CONTROLS = frozenset(
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)


class StoreError(Exception):
    """
    The store cannot be read or changed as asked; the message is for the
    user.
    """


@frozen
class MessageFile:
    """
    A stored message found by its file name, not yet opened.

    @ivar mailbox: The name of the Maildir it is in, relative to the root.
    @ivar path: The file's absolute path.
    @ivar filename: The file's name.
    @ivar name: The parts of that name.
    @ivar subdirectory: C{"new"} or C{"cur"}.
    @ivar seen: C{True} when it is in C{cur/} with the C{S} flag.
    """

    mailbox: str
    path: str
    filename: str
    name: MaildirName
    subdirectory: str
    seen: bool

    @property
    def maildir(self) -> str:
        """
        The path of the Maildir it is in (the parent of C{new/}).
        """
        return os.path.dirname(os.path.dirname(self.path))


@frozen
class MessageSummary:
    """
    What C{mailharbor list} shows of one message.

    @ivar id: The unique part of the file name.
    @ivar mailbox: The Maildir it is in.
    @ivar path: The file's absolute path.
    @ivar delivered: The delivery time, in seconds since the epoch.
    @ivar sender: The envelope sender from C{Return-Path:}, C{""} for the
        null sender, or L{None} when the file has no such header.
    @ivar recipient: The envelope recipient from C{Delivered-To:}, or
        L{None}.
    @ivar subject: The decoded subject, made safe for a terminal.
    @ivar size: The file's size in bytes.
    @ivar seen: C{True} when a mail reader has marked it seen.
    """

    id: str
    mailbox: str
    path: str
    delivered: float
    sender: str | None
    recipient: str | None
    subject: str
    size: int
    seen: bool

    def asJSON(self) -> dict[str, Any]:
        """
        Describe this message with plain JSON values.

        @return: A mapping with the keys C{id}, C{mailbox}, C{date} (ISO 8601,
            UTC), C{sender}, C{recipient}, C{subject}, C{size}, C{path} and
            C{seen}.
        """
        date = datetime.fromtimestamp(self.delivered, timezone.utc)
        return {
            "id": self.id,
            "mailbox": self.mailbox,
            "date": date.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "sender": self.sender,
            "recipient": self.recipient,
            "subject": self.subject,
            "size": self.size,
            "path": self.path,
            "seen": self.seen,
        }


@frozen
class Query:
    """
    Which messages to list.

    @ivar mailbox: Only those in this mailbox, or all when L{None}.
    @ivar since: Only those delivered at or after this time (seconds since
        the epoch), or all when L{None}.
    @ivar sender: Only those whose envelope sender contains this,
        compared without regard to case; L{None} for all.
    @ivar recipient: Likewise for the envelope recipient.
    @ivar limit: At most this many, the newest; L{None} for no limit.
    @ivar folder: Only those in Maildir++ folders of this name (C{news} is
        C{.news/}), or all when L{None}.
    """

    mailbox: str | None = None
    since: float | None = None
    sender: str | None = None
    recipient: str | None = None
    limit: int | None = None
    folder: str | None = None

    def matches(self, summary: MessageSummary) -> bool:
        """
        Does C{summary} pass the header filters?  (The others are applied
        to file names before any file is opened.)
        """
        return _contains(summary.sender, self.sender) and _contains(
            summary.recipient, self.recipient
        )


@frozen
class MailboxStats:
    """
    How much one mailbox holds.

    @ivar mailbox: Its name.
    @ivar new: Messages in C{new/}, not yet seen by a mail reader.
    @ivar cur: Messages in C{cur/}.
    @ivar size: The total size of both, in bytes.
    """

    mailbox: str
    new: int
    cur: int
    size: int

    @property
    def messages(self) -> int:
        """
        All its messages.
        """
        return self.new + self.cur


@frozen
class TemporaryFile:
    """
    A file in a Maildir's C{tmp/}.

    @ivar mailbox: The Maildir it is in.
    @ivar path: Its absolute path.
    @ivar size: Its size in bytes.
    @ivar lastUsed: The latest of its access, modification and change
        times.
    """

    mailbox: str
    path: str
    size: int
    lastUsed: float


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


def findMailboxes(root: str) -> list[tuple[str, str]]:
    """
    Find the Maildirs below C{root}: each domain's, its mailboxes'
    (C{<domain>/<mailbox>}), their Maildir++ folders (C{.../.Lists}) and
    authenticated users' (C{.submitted/<user>}).

    @param root: The directory holding them.
    @return: The name (the path relative to C{root}) and path of each
        directory that has C{new/} and C{cur/}, sorted by name.
    @raise StoreError: if C{root} is not a directory or cannot be read.
    """
    if not os.path.isdir(root):
        raise StoreError(f"no Maildir at {root}")
    found: list[tuple[str, str]] = []
    try:
        _walkMaildirs(root, "", found, _MAILDIR_DEPTH)
    except OSError as e:
        raise StoreError(f"cannot read {root}: {e.strerror or e}") from None
    return sorted(found)


# root/<domain>/<mailbox>/.<folder> is the deepest a Maildir lies.
_MAILDIR_DEPTH = 3


def _walkMaildirs(directory: str, prefix: str, found: list[tuple[str, str]], depth: int) -> None:
    with os.scandir(directory) as entries:
        names = sorted(entry.name for entry in entries if _isDirectory(entry))
    for name in names:
        if name in ("tmp", "new", "cur"):
            continue
        path = os.path.join(directory, name)
        relative = f"{prefix}{name}"
        if all(os.path.isdir(os.path.join(path, sub)) for sub in MESSAGE_DIRECTORIES):
            found.append((relative, path))
        if depth > 1:
            try:
                _walkMaildirs(path, relative + "/", found, depth - 1)
            except OSError:
                continue


def selectMailboxes(root: str, mailbox: str | None = None) -> list[tuple[str, str]]:
    """
    Find the Maildirs to look at.

    @param root: The directory holding them.
    @param mailbox: The one wanted, with the mailboxes and folders below
        it (a domain's name gives all of its mail), or L{None} for all.
    @return: As for L{findMailboxes}.
    @raise StoreError: if C{root} cannot be read, or has no Maildir named
        C{mailbox}.
    """
    found = findMailboxes(root)
    if mailbox is None:
        return found
    chosen = [(name, path) for name, path in found if name == mailbox or name.startswith(mailbox + "/")]
    if not chosen:
        raise StoreError(f"no Maildir for {mailbox} in {root}")
    return chosen


def findMessageFiles(root: str, mailbox: str | None = None) -> Iterator[MessageFile]:
    """
    Find every complete message below C{root}: those in C{new/} and C{cur/}
    of each Maildir, never the unfinished ones in C{tmp/}.

    Only directories are read; no message file is opened.  A directory
    that cannot be read is skipped.

    @param root: The directory holding the Maildirs.
    @param mailbox: Only look in this Maildir; all when L{None}.
    @return: The messages, by mailbox, then C{new/} before C{cur/}.
    @raise StoreError: as for L{selectMailboxes}.
    """
    for name, path in selectMailboxes(root, mailbox):
        yield from _scanMaildir(name, path)


def findMessage(root: str, identifier: str) -> MessageFile | None:
    """
    Find a stored message by its id or its full file name.

    @param root: The directory holding the Maildirs.
    @param identifier: The id (as given to the SMTP client in the 250
        reply), or the complete name of the file.
    @return: The message, or L{None} if there is none.
    @raise StoreError: if C{root} is not a directory or cannot be read.
    """
    for message in findMessageFiles(root):
        if identifier in (message.name.id, message.filename):
            return message
    return None


def relocate(message: MessageFile) -> MessageFile | None:
    """
    Find a message again after its file vanished: a mail reader may have
    moved it to C{cur/} or changed its flags.

    @return: Where it is now, or L{None} if it is gone.
    """
    for found in _scanMaildir(message.mailbox, message.maildir):
        if found.name.id == message.name.id:
            return found
    return None


def deliveryTime(messageID: str) -> float | None:
    """
    Read the delivery time that starts a Maildir id.

    The microseconds in the id's C{M} field, when it has one, are included,
    so that messages delivered within one second still sort in the order
    they arrived.

    @param messageID: An id such as C{1732314178.M123456P4242Q7.mx.example.com}.
    @return: Its seconds since the epoch, or L{None} if it does not start
        with a usable time.
    """
    match = _DELIVERY_TIME.match(messageID)
    if match is None:
        return None
    seconds, micro = match.groups()
    if int(seconds) > _LAST_TIME:
        return None
    if micro is None:
        return float(seconds)
    return int(seconds) + int(micro) / 1_000_000


def deliveredAt(message: MessageFile) -> float | None:
    """
    When a message was delivered: the time its id starts with, or, for a
    name that has none (written by other software), the file's
    modification time.

    @return: Seconds since the epoch, or L{None} if the file vanished.
    """
    delivered = deliveryTime(message.name.id)
    if delivered is not None:
        return delivered
    try:
        return os.stat(message.path).st_mtime
    except OSError:
        return None


def messageSize(message: MessageFile) -> int | None:
    """
    The size of a message: from the C{,S=} field of its name, which every
    MailHarbor message has, or else from the file.

    @return: Bytes, or L{None} if the file vanished.
    """
    if message.name.size is not None:
        return message.name.size
    try:
        return os.stat(message.path).st_size
    except OSError:
        return None


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
    fields = {}
    for name in names:
        match = _fieldPattern(name).search(text)
        if match is not None:
            fields[name] = _FOLD.sub("", match.group(1)).rstrip("\r")
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
        except Exception:
            pass
    try:
        return str(_headerClass(name.lower())(name, value))
    except Exception:
        # The email package has raised on malformed headers before; one bad
        # header must not hide the message.
        return value


def summarise(message: MessageFile, f: BinaryIO) -> MessageSummary:
    """
    Describe a stored message from its header block.

    @param message: Where the message was found.
    @param f: The message's open file, positioned at its start.
    @return: The summary.
    @raise OSError: if the file cannot be read.
    """
    stat = os.fstat(f.fileno())
    fields = headerFields(readHeaderBlock(f), _LISTED_HEADERS)
    delivered = deliveryTime(message.name.id)

    def header(name: str) -> str | None:
        value = fields.get(name)
        if value is None:
            return None
        return cleanText(decodeHeader(name, value))

    sender = header("Return-Path")
    if sender is not None and sender.startswith("<") and sender.endswith(">"):
        sender = sender[1:-1].strip()
    return MessageSummary(
        id=message.name.id,
        mailbox=message.mailbox,
        path=message.path,
        delivered=stat.st_mtime if delivered is None else delivered,
        sender=sender,
        recipient=header("Delivered-To"),
        subject=header("Subject") or "",
        size=stat.st_size,
        seen=message.seen,
    )


def listMessages(root: str, query: Query = Query()) -> list[MessageSummary]:
    """
    Summarise the stored messages a query asks for, newest first.

    The mailbox and the delivery time are decided from names alone, and
    the candidates sorted by delivery time before any file is opened; then
    files are opened newest first until the limit is reached.  Without
    header filters that opens exactly C{query.limit} files.

    A message that vanishes (a mail reader moved it) or cannot be read
    while the store is being listed is left out.

    @param root: The directory holding the Maildirs.
    @param query: Which messages to list.
    @return: The summaries, newest delivery first, ties broken by id.
    @raise StoreError: as for L{selectMailboxes}.
    """
    # Only the id is taken from each name here; the rest of it is parsed
    # for the files opened, which may be few.
    candidates = []
    for mailbox, path in selectMailboxes(root, query.mailbox):
        if query.folder is not None and not mailbox.endswith("/." + query.folder):
            continue
        for sub in MESSAGE_DIRECTORIES:
            directory = os.path.join(path, sub)
            for filename in _listDirectory(directory):
                identifier = _ID.match(filename)
                if identifier is None or filename.startswith("."):
                    continue
                delivered = deliveryTime(identifier.group())
                if delivered is None:
                    try:
                        delivered = os.stat(os.path.join(directory, filename)).st_mtime
                    except OSError:
                        continue
                if query.since is not None and delivered < query.since:
                    continue
                candidates.append((delivered, identifier.group(), mailbox, directory, filename))
    candidates.sort(key=lambda candidate: candidate[:2], reverse=True)

    summaries: list[MessageSummary] = []
    for _, _, mailbox, directory, filename in candidates:
        if query.limit is not None and len(summaries) >= query.limit:
            break
        message = _messageFile(mailbox, directory, filename)
        if message is None:
            continue
        try:
            with open(message.path, "rb") as f:
                summary = summarise(message, f)
        except OSError:
            continue
        if query.matches(summary):
            summaries.append(summary)
    return summaries


def mailboxStats(root: str) -> list[MailboxStats]:
    """
    Count the messages of every Maildir and add up their sizes, from file
    names alone (a file is only looked at when its name has no size).

    @param root: The directory holding the Maildirs.
    @return: One entry per Maildir, by name.
    @raise StoreError: as for L{findMailboxes}.
    """
    stats = []
    for mailbox, path in findMailboxes(root):
        counts = {sub: 0 for sub in MESSAGE_DIRECTORIES}
        size = 0
        for message in _scanMaildir(mailbox, path):
            messageBytes = messageSize(message)
            if messageBytes is None:
                continue
            counts[message.subdirectory] += 1
            size += messageBytes
        stats.append(MailboxStats(mailbox, counts["new"], counts["cur"], size))
    return stats


def seenFilename(filename: str) -> str:
    """
    The name a message's file has once it is marked seen, as the Maildir
    specification describes: the info C{:2,} and its flags, C{S} among
    them, in ASCII order.

    A name whose info is not C{2,} (the experimental C{1,} and the like)
    is given C{2,S} in its place.

    @param filename: The file's current name.
    @return: The new name; C{filename} itself when it is already seen.
    """
    base, colon, info = filename.partition(":")
    flags = info[2:] if colon and info.startswith("2,") else ""
    return f"{base}:2,{''.join(sorted(set(flags) | {'S'}))}"


def markSeen(message: MessageFile) -> MessageFile:
    """
    Mark a message seen the way a mail reader does, so that Dovecot, mutt
    and this command agree: move it from C{new/} to C{cur/}, or rename it
    within C{cur/}, to L{seenFilename}.

    @return: Where the message is now.
    @raise StoreError: if the message vanished, a file already has the new
        name, or the rename fails.
    """
    for _ in range(2):
        target = seenFilename(message.filename)
        if message.subdirectory == "cur" and target == message.filename:
            return message
        destination = os.path.join(message.maildir, "cur", target)
        if os.path.lexists(destination):
            raise StoreError(f"cannot mark {message.name.id} seen: {destination} exists")
        try:
            os.rename(message.path, destination)
        except FileNotFoundError:
            # A reader moved it meanwhile: mark it where it is now.
            found = relocate(message)
            if found is None:
                break
            message = found
            continue
        except OSError as e:
            raise StoreError(f"cannot mark {message.name.id} seen: {e.strerror or e}") from None
        return MessageFile(
            mailbox=message.mailbox,
            path=destination,
            filename=target,
            name=MaildirName(message.name.id, message.name.size, target.partition(":2,")[2]),
            subdirectory="cur",
            seen=True,
        )
    raise StoreError(f"message {message.name.id} vanished")


def deleteMessage(message: MessageFile) -> MessageFile | None:
    """
    Delete a stored message, wherever a mail reader has moved it.

    @return: The file deleted, or L{None} if the message is gone already.
    @raise OSError: if it cannot be deleted.
    """
    for _ in range(2):
        try:
            os.unlink(message.path)
        except FileNotFoundError:
            found = relocate(message)
            if found is None:
                return None
            message = found
            continue
        return message
    return None


def findStaleTemporaryFiles(
    root: str, now: float, mailbox: str | None = None, age: float = STALE_TEMPORARY_AGE
) -> Iterator[TemporaryFile]:
    """
    Find the files in C{tmp/} that no delivery is writing any more.

    A file counts as used when it was last read, written or had its
    metadata changed; all three must be older than C{age}, so a slow
    delivery still being written is never taken for a dead one.

    @param root: The directory holding the Maildirs.
    @param now: The current time, seconds since the epoch.
    @param mailbox: Only look in this Maildir; all when L{None}.
    @param age: How long unused a file must be, in seconds.
    @return: The stale regular files, by mailbox and name.
    @raise StoreError: as for L{selectMailboxes}.
    """
    for name, path in selectMailboxes(root, mailbox):
        directory = os.path.join(path, "tmp")
        try:
            with os.scandir(directory) as scanned:
                entries = sorted(scanned, key=lambda entry: entry.name)
        except OSError:
            continue
        for entry in entries:
            try:
                if not entry.is_file(follow_symlinks=False):
                    continue
                stat = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            lastUsed = max(stat.st_atime, stat.st_mtime, stat.st_ctime)
            if now - lastUsed > age:
                yield TemporaryFile(name, entry.path, stat.st_size, lastUsed)


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
    factory = _BoundedMessageFactory(MAX_MIME_PARTS)
    parser = BytesFeedParser(_factory=factory, policy=policy.default)
    factory.arm()
    truncated = False
    try:
        while chunk := f.read(64 * 1024):
            parser.feed(chunk)
        root = parser.close()
    except OSError:
        raise
    except Exception:
        # Too many parts (the factory refused one), nesting deep enough to
        # exhaust the parser's recursion, or a bug in the email package:
        # keep what was parsed until then.
        truncated = True
        root = factory.root if factory.root is not None else EmailMessage()

    headers = []
    for name in SUMMARY_HEADERS:
        for value in _headerValues(root, name):
            headers.append((name, value))

    plain: Message | None = None
    html: Message | None = None
    attachments = []
    walked, deeper = _walk(root)
    truncated = truncated or deeper
    for part in walked:
        contentType = _contentType(part)
        if _isAttachment(part, contentType):
            attachments.append(
                Attachment(_filename(part), contentType, _attachmentContent(part, contentType))
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
        text, textType = cleanBody(_textContent(plain)), "text/plain"
    elif html is not None:
        text, textType = cleanBody(htmlToText(_textContent(html))), "text/html"
    return MessageDetails(
        headers=tuple(headers),
        text=text,
        textType=textType,
        attachments=tuple(attachments),
        truncated=truncated,
    )


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
    except Exception:
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
            if unicodedata.category(c) != "Cc" and c not in _BIDI_CONTROLS
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
        elif category != "Cc" and character not in _BIDI_CONTROLS:
            kept.append(character)
    return " ".join("".join(kept).split())


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
        elif category != "Cc" and character not in _BIDI_CONTROLS:
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
        "address article aside blockquote br dd div dl dt fieldset figcaption figure "
        "footer form h1 h2 h3 h4 h5 h6 header hr li main nav ol p pre section table "
        "tbody td th thead tr ul".split()
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


def _scanMaildir(mailbox: str, path: str) -> Iterator[MessageFile]:
    for sub in MESSAGE_DIRECTORIES:
        directory = os.path.join(path, sub)
        for filename in sorted(_listDirectory(directory)):
            message = _messageFile(mailbox, directory, filename)
            if message is not None:
                yield message


def _messageFile(mailbox: str, directory: str, filename: str) -> MessageFile | None:
    name = parseName(filename)
    if name is None:
        return None
    sub = os.path.basename(directory)
    return MessageFile(
        mailbox=mailbox,
        path=os.path.join(directory, filename),
        filename=filename,
        name=name,
        subdirectory=sub,
        seen=sub == "cur" and "S" in name.flags,
    )


def _listDirectory(directory: str) -> list[str]:
    # A directory that cannot be read (removed, no permission) holds
    # nothing the command can show.
    try:
        return os.listdir(directory)
    except OSError:
        return []


@functools.lru_cache(maxsize=None)
def _fieldPattern(name: str) -> re.Pattern[str]:
    return re.compile(rf"^{re.escape(name)}:[ \t]*(.*(?:\n[ \t].*)*)", re.M | re.I)


@functools.lru_cache(maxsize=None)
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
_LISTED_HEADERS = ("Return-Path", "Delivered-To", "Subject")


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


def _contains(value: str | None, wanted: str | None) -> bool:
    if wanted is None:
        return True
    return value is not None and wanted.casefold() in value.casefold()


def _headerValues(message: Message, name: str) -> list[str]:
    try:
        values = [str(value) for value in message.get_all(name, [])]
    except Exception:
        # Show a header the email package cannot parse undecoded.
        values = [str(v) for k, v in message.raw_items() if k.lower() == name.lower()]
    return [cleanText(value) for value in values]


def _walk(root: Message) -> tuple[list[Message], bool]:
    # The leaf parts of a message, in order, no deeper than MAX_MIME_DEPTH;
    # an encapsulated message (message/*) is a leaf, and so is a multipart
    # the parser could not split (it has no boundary).  Iterative, so no
    # structure exhausts the stack.  Returns the parts and whether some
    # were too deep.
    leaves = []
    deeper = False
    stack: list[tuple[Message, int]] = [(root, 0)]
    while stack:
        part, depth = stack.pop()
        children = part.get_payload() if _contentType(part).startswith("multipart/") else None
        if isinstance(children, list):
            if depth >= MAX_MIME_DEPTH:
                deeper = deeper or bool(children)
                continue
            stack.extend((child, depth + 1) for child in reversed(children))
        else:
            leaves.append(part)
    return leaves, deeper


def _contentType(part: Message) -> str:
    try:
        return part.get_content_type()
    except Exception:
        return "application/octet-stream"


def _isAttachment(part: Message, contentType: str) -> bool:
    if contentType.startswith("multipart/"):
        # One the parser could not split: its body is shown as text.
        return False
    if not contentType.startswith("text/"):
        return True
    try:
        return part.get_content_disposition() == "attachment" or part.get_filename() is not None
    except Exception:
        return False


def _filename(part: Message) -> str | None:
    try:
        name = part.get_filename()
    except Exception:
        return None
    return None if name is None else cleanText(str(name))


def _attachmentContent(part: Message, contentType: str) -> bytes:
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
    except Exception:
        return b""
    return data if isinstance(data, bytes) else b""


def _textContent(part: Message) -> str:
    try:
        content = part.get_content()  # type: ignore[attr-defined]
        if isinstance(content, str):
            return content
    except Exception:
        # An unknown charset, most often.
        pass
    try:
        data = part.get_payload(decode=True)
    except Exception:
        return ""
    return data.decode("utf-8", "replace") if isinstance(data, bytes) else ""


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


def _isDirectory(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False
