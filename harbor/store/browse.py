# -*- test-case-name: harbor.test.test_browse -*-
"""
The store as the web interface shows it: the tree of domains, mailboxes
and folders with their counts, pages of message summaries newest first,
one message found by its id, and the seen flag set or cleared.

Everything is decided from file names where it can be: the tree's counts
come from directory listings alone, and a page is ordered by the delivery
time each Maildir id starts with (L{harbor.store.reader.deliveryTime}), so
the first page of fifty out of a hundred thousand messages opens fifty
files.  Words that need headers or bodies (L{harbor.store.search}) open
more, within a L{harbor.store.search.Budget}.

A page's cursor is the place in that order of the last message looked at,
not a count: mail that arrives meanwhile is newer, so it sorts before the
cursor and never shifts the pages that follow.

Every function blocks (directory listings, file reads); the web layer
calls them in a thread.  Nothing here imports Twisted.
"""

from __future__ import annotations

import base64
import heapq
import io
import json
import math
import os
import stat
import time
from collections.abc import Callable, Collection, Iterable, Iterator
from datetime import UTC, datetime
from typing import Any, BinaryIO

from attrs import frozen

from harbor.store.headers import cleanText, decodeHeader, headerFields, readHeaderBlock
from harbor.store.mime import parseMessage
from harbor.store.names import MaildirName, parseName
from harbor.store.reader import (
    MESSAGE_DIRECTORIES,
    MessageFile,
    StoreError,
    deliveryTime,
    findMailboxes,
    markSeen,
    messageFile,
    relocate,
)
from harbor.store.search import BODY_READ_LIMIT, Budget, Query, SearchError

__all__ = [
    "SUBMITTED",
    "Folder",
    "Page",
    "Summary",
    "allowedKeys",
    "findFile",
    "findSummary",
    "listPage",
    "mailboxTree",
    "maildirs",
    "setSeen",
    "splitKey",
    "unseenFilename",
]

#: The directory, and the tree's "domain", of mail that users submitted.
SUBMITTED = ".submitted"
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
_CURSOR_VERSION = "1"
#: The bounds of a search page unless told otherwise.
DEFAULT_BUDGET = Budget()
# The longest id looked up: a file name cannot be longer.
_MAX_ID = 255


@frozen
class Folder:
    """
    One Maildir in the tree, with its counts.

    @ivar key: Its name relative to the root, as L{MessageFile.mailbox}
        has it: C{example.com}, C{example.net/alice},
        C{example.net/alice/.Lists.python}, C{.submitted/bob}.
    @ivar domain: C{example.net}; L{SUBMITTED} for submitted mail.
    @ivar mailbox: C{""} for the domain's own (catch-all) Maildir, else
        the mailbox (the user, for submitted mail).
    @ivar folder: C{""} for the inbox, else the Maildir++ folder's name
        without its dot (C{Lists.python}).
    @ivar new: Messages in C{new/}.
    @ivar unread: Messages without the seen flag (those in C{new/} and
        those in C{cur/} without C{S}).
    @ivar total: All messages.
    """

    key: str
    domain: str
    mailbox: str
    folder: str
    new: int = 0
    unread: int = 0
    total: int = 0

    def asJSON(self) -> dict[str, Any]:
        """
        The folder as plain JSON values, keyed as its attributes are.
        """
        return {
            "key": self.key,
            "domain": self.domain,
            "mailbox": self.mailbox,
            "folder": self.folder,
            "new": self.new,
            "unread": self.unread,
            "total": self.total,
        }


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
            "delivered": _isoTime(self.delivered),
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


@frozen
class Page:
    """
    One page of a listing or a search.

    @ivar messages: The summaries, newest first.
    @ivar cursor: Where the next page starts, opaque; L{None} when there
        are no older messages to look at.
    @ivar searched: How many files were opened to make the page.
    @ivar complete: C{False} when a bound of the search stopped it before
        the page was full (and older mail is still to be searched, from
        L{cursor}).
    @ivar stoppedBecause: Why it stopped early, for the user; L{None} when
        it did not.
    """

    messages: tuple[Summary, ...]
    cursor: str | None
    searched: int
    complete: bool = True
    stoppedBecause: str | None = None

    def asJSON(self) -> dict[str, Any]:
        """
        The page as plain JSON values.
        """
        return {
            "messages": [summary.asJSON() for summary in self.messages],
            "cursor": self.cursor,
            "searched": self.searched,
            "complete": self.complete,
            "stoppedBecause": self.stoppedBecause,
        }


def splitKey(key: str) -> tuple[str, str, str] | None:
    """
    Read a Maildir's key as domain, mailbox and folder.

    @return: The three parts (see L{Folder}), or L{None} for a directory
        that is neither a domain's, a mailbox's, one of their Maildir++
        folders nor a user's submitted mail.
    """
    parts = key.split("/")
    if parts[0].startswith(".") and parts[0] != SUBMITTED:
        return None
    if parts[0] == SUBMITTED and len(parts) < 2:
        return None
    domain = parts[0]
    mailbox = ""
    folder = ""
    rest = parts[1:]
    if rest and not rest[0].startswith("."):
        mailbox = rest.pop(0)
    if rest:
        if len(rest) > 1 or not rest[0].startswith(".") or len(rest[0]) < 2:
            return None
        folder = rest[0][1:]
    return domain, mailbox, folder


def maildirs(root: str, mailboxes: Collection[str] | None = None) -> list[tuple[Folder, str]]:
    """
    The Maildirs of the tree, not yet counted, with their paths.

    @param mailboxes: Only those with these keys, or all when L{None}.
    @raise StoreError: if C{root} cannot be read.
    """
    found = []
    for key, path in findMailboxes(root):
        if mailboxes is not None and key not in mailboxes:
            continue
        parts = splitKey(key)
        if parts is not None:
            found.append((Folder(key, *parts), path))
    found.sort(key=lambda item: (item[0].domain, item[0].mailbox, item[0].folder))
    return found


def mailboxTree(root: str, mailboxes: Collection[str] | None = None) -> list[Folder]:
    """
    Every Maildir under C{root} with its counts, from file names alone.

    @param mailboxes: Only those with these keys, or all when L{None}.
    @return: The folders sorted by domain, mailbox and folder.
    @raise StoreError: if C{root} cannot be read.
    """
    tree = []
    for folder, path in maildirs(root, mailboxes):
        new = unread = total = 0
        for sub in MESSAGE_DIRECTORIES:
            for filename in _messageNames(os.path.join(path, sub)):
                name = parseName(filename)
                if name is None:
                    continue
                total += 1
                if sub == "new":
                    new += 1
                    unread += 1
                elif "S" not in name.flags:
                    unread += 1
        tree.append(Folder(folder.key, folder.domain, folder.mailbox, folder.folder, new, unread, total))
    return tree


def allowedKeys(keys: Iterable[str], grants: Iterable[str]) -> frozenset[str]:
    """
    The keys a user may see, given what they were granted: a grant names a
    key and everything below it (C{example.com} is the domain with all its
    mailboxes and folders, C{example.net/bob} his inbox and folders).

    @param keys: The keys of the tree (L{Folder.key}).
    @param grants: The user's grants.
    """
    grants = tuple(grant.rstrip("/") for grant in grants if grant.strip("/"))
    return frozenset(
        key for key in keys if any(key == grant or key.startswith(grant + "/") for grant in grants)
    )


def listPage(
    root: str,
    mailboxes: Collection[str] | None,
    query: Query,
    cursor: str | None = None,
    limit: int = 50,
    clock: Callable[[], float] = time.monotonic,
    budget: Budget = DEFAULT_BUDGET,
) -> Page:
    """
    One page of the messages C{query} asks for, newest first.

    The candidates are found and ordered by their names (delivery time,
    then id, then mailbox); then files are opened in that order: just
    those shown, when the query asks nothing of headers or bodies, or as
    many as C{budget} allows, when it does.  A message that vanishes
    meanwhile (a mail reader moved it) is looked for again where it may
    have gone, and left out if it is gone.

    @param root: The directory holding the Maildirs.
    @param mailboxes: The keys the user may see, or L{None} for all.
    @param query: What to list (L{harbor.store.search.parseQuery}).
    @param cursor: A previous page's L{Page.cursor}, to go on after it.
    @param limit: The most messages on the page.
    @param clock: Measures the time C{budget} allows.
    @param budget: How much a search may read for one page.
    @raise SearchError: if C{cursor} is not one this module made.
    @raise StoreError: if C{root} cannot be read.
    """
    if limit < 1:
        raise ValueError("a page holds at least one message")
    position = _decodeCursor(cursor) if cursor else None
    candidates: list[tuple[float, str, str, str, str]] = []
    for folder, path in maildirs(root, mailboxes):
        if query.admitsFolder(folder.key, folder.domain, folder.mailbox, folder.folder):
            candidates.extend(_candidates(folder.key, path, query, position))
    searching = query.readsHeaders or query.readsBodies
    deadline = clock() + budget.seconds
    messages: list[Summary] = []
    searched = bodies = 0
    last: tuple[float, str, str] | None = None
    stopped = None
    for delivered, identifier, key, directory, filename in _newestFirst(candidates, limit + 1):
        if len(messages) >= limit:
            break
        if searching:
            stopped = _overBudget(budget, searched, bodies, query.readsBodies, clock() > deadline)
            if stopped is not None:
                break
        last = (delivered, identifier, key)
        message = messageFile(key, directory, filename)
        if message is None:
            continue
        searched += 1
        if query.readsBodies:
            bodies += 1
        summary = _readSummary(message, delivered, query)
        if summary is not None:
            messages.append(summary)
    else:
        # Every candidate was looked at: nothing older is left.
        last = None
    if last is None:
        return Page(tuple(messages), None, searched)
    if stopped is None:
        return Page(tuple(messages), _encodeCursor(last), searched)
    return Page(
        tuple(messages),
        _encodeCursor(last),
        searched,
        complete=False,
        stoppedBecause=f"{stopped}; mail delivered before {_isoTime(last[0])} is not searched yet: "
        "go on to the next page to search it",
    )


def findFile(root: str, identifier: str, mailboxes: Collection[str] | None = None) -> MessageFile | None:
    """
    Find a message by its id (or its whole file name) in the Maildirs a
    user may see: the id is compared with the names listed, never made
    into a path.

    @param mailboxes: The keys the user may see, or L{None} for all.
    @return: The message, or L{None} if there is none.
    @raise StoreError: if C{root} cannot be read.
    """
    if not _plausibleID(identifier):
        return None
    prefixes = (identifier + ",", identifier + ":")
    for folder, path in maildirs(root, mailboxes):
        for sub in MESSAGE_DIRECTORIES:
            directory = os.path.join(path, sub)
            for filename in _messageNames(directory):
                if filename == identifier or filename.startswith(prefixes):
                    message = messageFile(folder.key, directory, filename)
                    if message is not None:
                        return message
    return None


def findSummary(
    root: str, identifier: str, mailboxes: Collection[str] | None
) -> tuple[MessageFile, Summary] | None:
    """
    Find a message by its id, as L{findFile}, and summarise it.

    @return: Where it is and its summary, or L{None} if there is none (or
        it vanished while being read).
    @raise StoreError: if C{root} cannot be read.
    """
    message = findFile(root, identifier, mailboxes)
    if message is None:
        return None
    delivered = deliveryTime(message.name.id)
    for _ in range(2):
        try:
            with _open(message.path) as f:
                summary, _ = summarise(message, f, delivered)
        except FileNotFoundError:
            found = relocate(message)
            if found is None:
                return None
            message = found
            continue
        except OSError:
            return None
        return message, summary
    return None


def setSeen(
    root: str, identifier: str, seen: bool, mailboxes: Collection[str] | None = None
) -> MessageFile:
    """
    Mark a message seen as a mail reader does (from C{new/} to C{cur/},
    with the C{S} flag of C{:2,S}; see L{harbor.store.reader.markSeen}),
    or unseen (the C{S} flag removed; it stays in C{cur/}, as Dovecot
    leaves it).

    @param mailboxes: The keys the user may see, or L{None} for all.
    @return: Where the message is now.
    @raise StoreError: if there is no such message, it vanished, or it
        cannot be renamed.
    """
    message = findFile(root, identifier, mailboxes)
    if message is None:
        raise StoreError(f"no message {identifier}")
    if seen:
        return markSeen(message)
    return markUnseen(message)


def unseenFilename(filename: str) -> str:
    """
    The name a message's file has once its seen flag is cleared: its other
    flags kept, the C{:2,} kept even with none left (as Dovecot does).
    """
    base, colon, info = filename.partition(":")
    if not colon or not info.startswith("2,"):
        return filename
    return f"{base}:2,{info[2:].replace('S', '')}"


def markUnseen(message: MessageFile) -> MessageFile:
    """
    Clear a message's seen flag by renaming it within C{cur/}; one in
    C{new/} is unseen already.

    @return: Where the message is now.
    @raise StoreError: if it vanished, a file has the new name already, or
        the rename fails.
    """
    for _ in range(2):
        target = unseenFilename(message.filename)
        if message.subdirectory != "cur" or target == message.filename:
            return message
        destination = os.path.join(message.maildir, "cur", target)
        if os.path.lexists(destination):
            raise StoreError(f"cannot mark {message.name.id} unread: {destination} exists")
        try:
            os.rename(message.path, destination)
        except FileNotFoundError:
            found = relocate(message)
            if found is None:
                break
            message = found
            continue
        except OSError as e:
            raise StoreError(f"cannot mark {message.name.id} unread: {e.strerror or e}") from None
        return MessageFile(
            mailbox=message.mailbox,
            path=destination,
            filename=target,
            name=MaildirName(message.name.id, message.name.size, target.partition(":2,")[2]),
            subdirectory="cur",
            seen=False,
        )
    raise StoreError(f"message {message.name.id} vanished")


def summarise(message: MessageFile, f: BinaryIO, delivered: float | None = None) -> tuple[Summary, bytes]:
    """
    Describe a message from its header block.

    @param message: Where it was found.
    @param f: Its open file, at its start.
    @param delivered: Its delivery time, if known already.
    @return: The summary and the raw header block.
    @raise OSError: if the file cannot be read.
    """
    status = os.fstat(f.fileno())
    block = readHeaderBlock(f)
    fields = headerFields(block, _SUMMARY_HEADERS)

    def header(name: str) -> str | None:
        value = fields.get(name)
        return None if value is None else cleanText(decodeHeader(name, value))

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
    return summary, block


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


def _candidates(
    key: str, path: str, query: Query, position: tuple[float, str, str] | None
) -> Iterator[tuple[float, str, str, str, str]]:
    # The messages of one Maildir that the words about names let in, after
    # the cursor, as (delivered, id, key, directory, filename).
    for sub in MESSAGE_DIRECTORIES:
        directory = os.path.join(path, sub)
        for filename in _messageNames(directory):
            end = len(filename)
            for separator in (",", ":"):
                found = filename.find(separator, 0, end)
                if found >= 0:
                    end = found
            identifier = filename[:end]
            if not identifier:
                continue
            if query.unread is not None:
                seen = sub == "cur" and "S" in _flags(filename)
                if not query.admitsSeen(seen):
                    continue
            delivered = deliveryTime(identifier)
            if delivered is None:
                try:
                    delivered = os.stat(os.path.join(directory, filename), follow_symlinks=False).st_mtime
                except OSError:
                    continue
            if not query.admitsTime(delivered):
                continue
            if position is not None and (delivered, identifier, key) >= position:
                continue
            yield delivered, identifier, key, directory, filename


def _newestFirst(candidates: list[Any], first: int) -> Iterator[Any]:
    # The candidates in descending order.  Most pages need only the first
    # few, which heapq finds without sorting them all; the rest are sorted
    # only if they are asked for.
    top = heapq.nlargest(first, candidates)
    yield from top
    if len(top) < len(candidates):
        yield from sorted(candidates, reverse=True)[len(top):]


def _overBudget(budget: Budget, searched: int, bodies: int, readsBodies: bool, late: bool) -> str | None:
    if readsBodies and bodies >= budget.maxBodyScanned:
        return f"Stopped after searching the text of {bodies:,} messages, the most one page searches"
    if searched >= budget.maxScanned:
        return f"Stopped after searching {searched:,} messages, the most one page searches"
    if late:
        return f"Stopped after searching for {budget.seconds:g} seconds ({searched:,} messages)"
    return None


def _readSummary(message: MessageFile, delivered: float, query: Query) -> Summary | None:
    # The summary of a candidate if it matches the query; None if it does
    # not, or vanished, or cannot be read.
    for _ in range(2):
        try:
            with _open(message.path) as f:
                summary, block = summarise(message, f, delivered)
                if not query.readsHeaders and not query.readsBodies:
                    return summary
                if not query.matchesHeaders(
                    _searchFields(summary, block), _headerText(summary, block), summary.hasAttachment
                ):
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


def _searchFields(summary: Summary, block: bytes) -> dict[str, str]:
    cc = headerFields(block, ("Cc",)).get("Cc", "")
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


def _open(path: str) -> BinaryIO:
    # Never through a symbolic link: a Maildir holds files, and a link
    # planted in one must not show what it points to.
    descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    try:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            raise IsADirectoryError(path)
        return os.fdopen(descriptor, "rb")
    except BaseException:
        os.close(descriptor)
        raise


def _messageNames(directory: str) -> list[str]:
    # The names in new/ or cur/ that can be messages: regular files (or,
    # where the file system does not say, anything) whose names are
    # printable and not hidden.  A directory that cannot be read has none.
    try:
        with os.scandir(directory) as entries:
            return [
                entry.name
                for entry in entries
                if not entry.name.startswith(".") and entry.name.isprintable() and _isFile(entry)
            ]
    except OSError:
        return []


def _isFile(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_file(follow_symlinks=False)
    except OSError:
        return False


def _flags(filename: str) -> str:
    _, colon, info = filename.partition(":")
    return info[2:] if colon and info.startswith("2,") else ""


def _plausibleID(identifier: str) -> bool:
    return (
        0 < len(identifier) <= _MAX_ID
        and identifier.isprintable()
        and "/" not in identifier
        and not identifier.startswith(".")
    )


def _encodeCursor(position: tuple[float, str, str]) -> str:
    data = json.dumps([position[0], position[1], position[2]], separators=(",", ":")).encode("utf-8")
    return _CURSOR_VERSION + base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _decodeCursor(cursor: str) -> tuple[float, str, str]:
    problem = SearchError("that page is no longer available (its cursor is not valid): start again from the first page")
    if not cursor.startswith(_CURSOR_VERSION) or len(cursor) > 2048:
        raise problem
    body = cursor[len(_CURSOR_VERSION):]
    try:
        value = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    except (ValueError, TypeError):
        raise problem from None
    if (
        not isinstance(value, list)
        or len(value) != 3
        or isinstance(value[0], bool)
        or not isinstance(value[0], (int, float))
        or not math.isfinite(value[0])
        or not all(isinstance(part, str) for part in value[1:])
    ):
        raise problem
    return float(value[0]), value[1], value[2]


def _isoTime(when: float) -> str:
    try:
        return datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (ValueError, OverflowError, OSError):
        return "?"
