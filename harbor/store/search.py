# -*- test-case-name: harbor.test.test_search -*-
"""
The search words of the web interface: a small, documented subset of
Mailpit's, parsed into a L{Query} that L{harbor.store.browse.listPage}
applies.

Words that the file names answer (C{mailbox:}, C{folder:}, C{before:},
C{after:}, C{is:unread}) cost nothing per message.  Words about headers
open each candidate's header block, and C{body:} reads and parses up to
L{BODY_READ_LIMIT} of each message: so both are bounded per page by a
L{Budget}, and a page that a bound cut short says so
(L{harbor.store.browse.Page.complete} is C{False}) and carries a cursor
to go on from where it stopped.

Pure: no I/O, no Twisted.  L{SYNTAX} is the user's documentation, as the
README shows it.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from datetime import datetime, tzinfo

from attrs import field, frozen

__all__ = [
    "BODY_READ_LIMIT",
    "MAX_BODY_SCANNED",
    "MAX_SCANNED",
    "SEARCH_SECONDS",
    "SYNTAX",
    "Budget",
    "Query",
    "SearchError",
    "Term",
    "parseQuery",
]

SYNTAX = """\
Words are separated by spaces and must all match; case does not matter.

``from:WORD``
    the ``From:`` header or the envelope sender (``Return-Path:``) contains WORD
``to:WORD``
    the ``To:`` or ``Cc:`` header, or the envelope recipient the copy was
    delivered for (``Delivered-To:``), contains WORD
``subject:WORD``
    the subject contains WORD
``mailbox:NAME``
    in that mailbox: ``example.net/alice`` (with her folders), a whole
    domain ``example.net``, ``alice@example.net``, just ``alice`` (in any
    domain), or ``.submitted/bob`` for mail bob submitted
``folder:NAME``
    in that Maildir++ folder (``Lists`` also finds ``Lists.python``);
    ``folder:inbox`` is the inbox itself
``after:WHEN`` and ``before:WHEN``
    delivered at or after, or before, WHEN: a date ``2026-11-01`` (its
    midnight, in the server's time zone), a time ``2026-11-01T12:00``
    (``Z`` or ``+01:00`` for another zone) or an age ``30m``, ``2h``,
    ``7d``, ``2w`` (that long ago)
``is:unread`` and ``is:read``
    not yet seen, or seen, by a mail reader (the ``S`` flag)
``has:attachment``
    the message has attachments (``multipart/mixed``, or a single part
    that is not text), judged from its top-level headers
``body:WORD``
    the text of the message (its first 1 MiB) contains WORD
any other WORD
    one of the headers contains WORD

Put quotes around words that belong together: ``subject:"two words"`` or
``"exact phrase"``.  A ``-`` before a word negates it: ``-from:bank``,
``-is:unread``, ``-has:attachment``.

Searching reads header blocks, newest first; one page looks at no more
than 10,000 messages, or 2 seconds, and a ``body:`` search at no more than
500 messages.  When a page stops early it says so and offers to go on with
older mail.
"""

#: Messages whose header blocks one page of a header search may read.
MAX_SCANNED = 10_000
#: Messages whose bodies one page of a C{body:} search may read.
MAX_BODY_SCANNED = 500
#: Seconds one page of a search may take, reading files.
SEARCH_SECONDS = 2.0
#: How much of a message a C{body:} search reads.
BODY_READ_LIMIT = 1024 * 1024

#: The longest query taken, and the most words.
MAX_QUERY_LENGTH = 1000
MAX_TERMS = 20

# Fields whose words are matched against headers or bodies.
TEXT_FIELDS = ("from", "to", "subject", "text", "body")
_FIELDS = frozenset({"from", "to", "subject", "mailbox", "folder", "before", "after", "is", "has", "body"})
_KNOWN = "from: to: subject: mailbox: folder: before: after: is: has: body:"
# A word, a -word, a field:value, either with a "quoted value".
_TOKEN = re.compile(r'\s*(-?)(?:([A-Za-z]+):)?(?:"([^"]*)"|([^\s"]+)|("[^"]*))?')
_AGE = re.compile(r"^([0-9]{1,6})([mhdw])$")
_AGE_UNITS = {"m": 60, "h": 60 * 60, "d": 24 * 60 * 60, "w": 7 * 24 * 60 * 60}
_DATE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")


class SearchError(ValueError):
    """
    A query, or a cursor, cannot be used; the message says why, for the
    user.
    """


@frozen
class Term:
    """
    One word of a query that is matched against a message's text.

    @ivar field: C{"from"}, C{"to"}, C{"subject"}, C{"text"} (any header)
        or C{"body"}.
    @ivar value: What must be contained, case-folded.
    @ivar negated: Whether it must I{not} be contained.
    """

    field: str
    value: str
    negated: bool = False


@frozen
class Budget:
    """
    How much one page of a search may read before it stops and says so.

    @ivar maxScanned: Header blocks read.
    @ivar maxBodyScanned: Bodies read, for a C{body:} word.
    @ivar seconds: Time spent, by the clock given to the listing.
    """

    maxScanned: int = MAX_SCANNED
    maxBodyScanned: int = MAX_BODY_SCANNED
    seconds: float = SEARCH_SECONDS


@frozen
class Query:
    """
    What to list: every field is a condition, and all must hold.

    @ivar terms: Words to find in headers or bodies.
    @ivar mailboxes: C{mailbox:} values: the message is in one of them
        (none: in any).
    @ivar notMailboxes: C{-mailbox:} values: in none of them.
    @ivar folders: C{folder:} values, likewise (C{""} for the inbox).
    @ivar notFolders: C{-folder:} values.
    @ivar after: Delivered at or after this time (seconds since the
        epoch), or L{None}.
    @ivar before: Delivered before this time, or L{None}.
    @ivar unread: C{True} for unread only, C{False} for read only, L{None}
        for both.
    @ivar hasAttachment: C{True} for messages with attachments only,
        C{False} for those without, L{None} for both.
    @ivar text: The query as it was typed.
    """

    terms: tuple[Term, ...] = ()
    mailboxes: tuple[str, ...] = ()
    notMailboxes: tuple[str, ...] = ()
    folders: tuple[str, ...] = ()
    notFolders: tuple[str, ...] = ()
    after: float | None = None
    before: float | None = None
    unread: bool | None = None
    hasAttachment: bool | None = None
    text: str = field(default="", eq=False)

    @property
    def readsHeaders(self) -> bool:
        """
        Whether matching needs each candidate's header block: when it does
        not, a page opens only the files it shows.
        """
        return self.hasAttachment is not None or any(t.field != "body" for t in self.terms)

    @property
    def readsAnyHeader(self) -> bool:
        """
        Whether matching needs the text of every header (for free text),
        not only the few a summary has.
        """
        return any(t.field == "text" for t in self.terms)

    @property
    def readsBodies(self) -> bool:
        """
        Whether matching reads each candidate's body.
        """
        return any(t.field == "body" for t in self.terms)

    def admitsFolder(self, key: str, domain: str, mailbox: str, folder: str) -> bool:
        """
        Whether the C{mailbox:} and C{folder:} words let a Maildir in.

        @param key: The Maildir's key (L{harbor.store.browse.Folder.key}).
        @param domain: Its domain (C{.submitted} for submitted mail).
        @param mailbox: Its mailbox, or C{""} for the domain's own.
        @param folder: Its folder, or C{""} for the inbox.
        """
        if self.mailboxes and not any(_inMailbox(m, key, domain, mailbox) for m in self.mailboxes):
            return False
        if any(_inMailbox(m, key, domain, mailbox) for m in self.notMailboxes):
            return False
        if self.folders and not any(_inFolder(f, folder) for f in self.folders):
            return False
        return not any(_inFolder(f, folder) for f in self.notFolders)

    def admitsTime(self, delivered: float) -> bool:
        """
        Whether the C{before:} and C{after:} words let in a message
        delivered at C{delivered}.
        """
        if self.after is not None and delivered < self.after:
            return False
        return self.before is None or delivered < self.before

    def admitsSeen(self, seen: bool) -> bool:
        """
        Whether C{is:unread} or C{is:read} lets in a message C{seen} or not.
        """
        return self.unread is None or self.unread is not seen

    def matchesHeaders(self, fields: dict[str, str], headerText: str, hasAttachment: bool) -> bool:
        """
        Whether the header words hold for a message.

        @param fields: The decoded values of C{from}, C{to} and
            C{subject}, each possibly several values joined, case-folded.
        @param headerText: The whole header block, decoded as far as it
            cheaply can be, case-folded: for free text.
        @param hasAttachment: Whether the message has attachments.
        """
        if self.hasAttachment is not None and self.hasAttachment is not hasAttachment:
            return False
        for term in self.terms:
            if term.field == "body":
                continue
            haystack = headerText if term.field == "text" else fields.get(term.field, "")
            if (term.value in haystack) is term.negated:
                return False
        return True

    def matchesBody(self, text: str) -> bool:
        """
        Whether the C{body:} words hold for a message's text (case-folded).
        """
        return all((t.value in text) is not t.negated for t in self.terms if t.field == "body")


def parseQuery(
    text: str, now: float | None = None, tz: tzinfo | None = None, clock: Callable[[], float] = time.time
) -> Query:
    """
    Read a search as the user typed it (see L{SYNTAX}).

    @param text: The query; empty for everything.
    @param now: The time ages (C{7d}) count back from; by default C{clock()}.
    @param tz: The time zone of dates without one; the server's local time
        by default.
    @param clock: The clock read when C{now} is not given.
    @return: The query.
    @raise SearchError: with a message for the user, if the query cannot
        be read.
    """
    if len(text) > MAX_QUERY_LENGTH:
        raise SearchError(f"the search is too long: at most {MAX_QUERY_LENGTH} characters")
    values: dict[str, list[str]] = {}
    terms: list[Term] = []
    unread: bool | None = None
    hasAttachment: bool | None = None
    after: float | None = None
    before: float | None = None
    position = 0
    count = 0
    stripped = text.strip()
    while position < len(stripped):
        match = _TOKEN.match(stripped, position)
        if match is None or match.end() == position:
            raise SearchError(f"cannot read the search at {stripped[position:position + 20]!r}")
        position = match.end()
        minus, name, quoted, bare, unclosed = match.groups()
        if unclosed is not None:
            raise SearchError(f"a quote is not closed: {unclosed[:20]!r}")
        value = quoted if quoted is not None else bare
        if name is None and value is None:
            if minus:
                raise SearchError("a - must be followed by a word, as in -from:bank")
            continue
        count += 1
        if count > MAX_TERMS:
            raise SearchError(f"too many words: at most {MAX_TERMS}")
        negated = bool(minus)
        if name is not None and name.lower() not in _FIELDS:
            raise SearchError(
                f"{name}: is not a search word (they are {_KNOWN}); "
                f'put quotes around text with a colon, as in "{name}:{value or ""}"'
            )
        word = None if name is None else name.lower()
        if value is None or value.strip() == "":
            if word is None:
                continue
            raise SearchError(f"{word}: needs a value, as in {word}:{_EXAMPLES[word]}")
        value = value.strip()
        if word is None or word in ("from", "to", "subject", "body"):
            terms.append(Term(word or "text", value.casefold(), negated))
        elif word in ("mailbox", "folder"):
            key = ("not" if negated else "") + word
            values.setdefault(key, []).append(value.casefold())
        elif word == "is":
            if value.lower() not in ("unread", "read"):
                raise SearchError(f"is: takes unread or read, not {value!r}")
            unread = (value.lower() == "unread") is not negated
        elif word == "has":
            if value.lower() not in ("attachment", "attachments"):
                raise SearchError(f"has: takes attachment, not {value!r}")
            hasAttachment = not negated
        else:
            if negated:
                raise SearchError(f"-{word}: cannot be negated; use {'after' if word == 'before' else 'before'}:")
            moment = _moment(word, value, clock() if now is None else now, tz)
            if word == "after":
                after = moment if after is None else max(after, moment)
            else:
                before = moment if before is None else min(before, moment)
    return Query(
        terms=tuple(terms),
        mailboxes=tuple(values.get("mailbox", ())),
        notMailboxes=tuple(values.get("notmailbox", ())),
        folders=tuple(_folderName(f) for f in values.get("folder", ())),
        notFolders=tuple(_folderName(f) for f in values.get("notfolder", ())),
        after=after,
        before=before,
        unread=unread,
        hasAttachment=hasAttachment,
        text=text,
    )


_EXAMPLES = {
    "from": "alice@example.com",
    "to": "bob",
    "subject": '"two words"',
    "body": "invoice",
    "mailbox": "example.net/alice",
    "folder": "Lists",
    "before": "2026-11-01",
    "after": "7d",
    "is": "unread",
    "has": "attachment",
}


def _moment(word: str, value: str, now: float, tz: tzinfo | None) -> float:
    age = _AGE.match(value.lower())
    if age is not None:
        return now - int(age.group(1)) * _AGE_UNITS[age.group(2)]
    try:
        if _DATE.match(value):
            moment = datetime.fromisoformat(value)
        else:
            moment = datetime.fromisoformat(value.upper() if value.endswith("z") else value)
        if moment.tzinfo is None and tz is not None:
            moment = moment.replace(tzinfo=tz)
        return moment.timestamp()
    except (ValueError, OverflowError, OSError):
        raise SearchError(
            f"{word}: takes a date (2026-11-01), a time (2026-11-01T12:00) "
            f"or an age (30m, 2h, 7d, 2w), not {value!r}"
        ) from None


def _folderName(value: str) -> str:
    value = value.lstrip(".")
    return "" if value == "inbox" else value


def _inMailbox(wanted: str, key: str, domain: str, mailbox: str) -> bool:
    key = key.casefold()
    if "@" in wanted:
        local, _, host = wanted.rpartition("@")
        wanted = f"{host}/{local}"
    if key == wanted or key.startswith(wanted + "/"):
        return True
    return "/" not in wanted and wanted in (mailbox.casefold(), domain.casefold())


def _inFolder(wanted: str, folder: str) -> bool:
    folder = folder.casefold()
    if wanted == "":
        return folder == ""
    return folder == wanted or folder.startswith(wanted + ".")

