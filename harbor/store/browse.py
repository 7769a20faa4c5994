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
import json
import math
import os
import re
import time
from collections.abc import Callable, Collection, Iterable, Iterator
from typing import Any

from attrs import frozen

from harbor.store.reader import (
    LAST_TIME,
    MESSAGE_DIRECTORIES,
    MessageFile,
    StoreError,
    deliveryTime,
    findMailboxes,
    markSeen,
    markUnseen,
    messageFile,
    relocate,
)
from harbor.store.search import Budget, Query, SearchError
from harbor.store.summaries import Summary, isoTime, openMessage, readSummary, summarise

__all__ = [
    "PAGE_SIZE",
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
    "summarise",
]

#: The directory, and the tree's "domain", of mail that users submitted.
SUBMITTED = ".submitted"
# The first characters of names that are not messages': hidden files, and
# names without an id.
_NOT_AN_ID = frozenset({"", ".", ",", ":"})
# The common name: a delivery time (seconds, then maybe MailHarbor's
# microseconds), the rest of the id, then its fields or info; read as
# harbor.store.reader.deliveryTime reads an id.
_TIMED_NAME = re.compile(r"([0-9]{1,12})(?:\.(?:M([0-9]{1,6})(?![0-9]))?[^,:]*)?(?=[,:]|\Z)")
_CURSOR_VERSION = "1"
#: The bounds of a search page unless told otherwise.
DEFAULT_BUDGET = Budget()
#: How many messages a page holds unless told otherwise (the web
#: interface's pages, and its API's default C{limit}).
PAGE_SIZE = 50
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
    @return: Nothing for a root that does not exist yet: no mail has arrived
        since the server started (it makes each domain's Maildir as its
        first message comes).
    @raise StoreError: if C{root} cannot be read.
    """
    if not os.path.lexists(root):
        return []
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
            names = _messageNames(os.path.join(path, sub))
            total += len(names)
            if sub == "new":
                new += len(names)
                unread += len(names)
            else:
                unread += sum(1 for filename in names if "S" not in _flags(filename))
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
    limit: int = PAGE_SIZE,
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
        # The first candidate is always read, so that every page makes
        # progress, however busy the machine.
        if searching and searched:
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
        summary = readSummary(message, delivered, query)
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
        stoppedBecause=f"{stopped}; mail delivered before {isoTime(last[0])} is not searched yet: "
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
            with openMessage(message.path) as f:
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


def _candidates(
    key: str, path: str, query: Query, position: tuple[float, str, str] | None
) -> list[tuple[float, str, str, str, str]]:
    # The messages of one Maildir that the words about names let in, after
    # the cursor, as (delivered, id, key, directory, filename).  This runs
    # for every message of the store, so the common name is read with one
    # regular expression and no function call.
    found = []
    timed = _TIMED_NAME.match
    unread = query.unread
    dated = query.after is not None or query.before is not None
    for sub in MESSAGE_DIRECTORIES:
        directory = os.path.join(path, sub)
        for filename in _messageNames(directory):
            match = timed(filename)
            if match is not None:
                text, micro = match.groups()
                seconds = int(text)
                delivered = seconds + int(micro) / 1_000_000 if micro else float(seconds)
            if match is not None and seconds <= LAST_TIME:
                identifier = match.group()
            else:
                identifier = filename.partition(",")[0].partition(":")[0]
                try:
                    delivered = os.stat(os.path.join(directory, filename), follow_symlinks=False).st_mtime
                except OSError:
                    continue
            if unread is not None and not query.admitsSeen(sub == "cur" and "S" in _flags(filename)):
                continue
            if dated and not query.admitsTime(delivered):
                continue
            if position is not None and (
                delivered > position[0] or (delivered == position[0] and (identifier, key) >= position[1:])
            ):
                continue
            found.append((delivered, identifier, key, directory, filename))
    return found


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


def _messageNames(directory: str) -> list[str]:
    # The names in new/ or cur/ that can be messages' (as parseName reads
    # them: not hidden, with an id before any , or :), and printable.  Only
    # names are read: a directory or link among them is refused when it is
    # opened (openMessage).  A directory that cannot be read has none.
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    return [name for name in names if name[:1] not in _NOT_AN_ID and name.isprintable()]


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
