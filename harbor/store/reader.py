# -*- test-case-name: harbor.test.test_reader -*-
"""
Reading, and tidying, the Maildirs MailHarbor has written.

This is the store as an operator's tools see it: find messages by their
file names, summarise them from their header blocks, mark one seen, and
delete old ones (L{harbor.store.mime} takes one apart into its text and
attachments).  The server itself never uses this module; it only writes
(L{harbor.store.writer}).

Everything here runs while the server delivers and while mail readers move
messages from C{new/} to C{cur/}, so a file may vanish between being found
and being opened.  Functions that meet a vanished file either look for it
again where a reader would have moved it or leave it out; none of them
treats it as a crash.

A store can hold a hundred thousand messages, so whatever can be decided
from file names (the mailbox, the delivery time at the start of the id,
the size in the C{,S=} field) is decided before any file is opened.

Nothing here imports Twisted: the C{mailharbor} command must start quickly
and must not affect, or be affected by, the reactor a server would
install.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any, BinaryIO

from attrs import frozen

from harbor.store.headers import cleanText, decodeHeader, headerFields, readHeaderBlock
from harbor.store.names import MaildirName, parseName

MESSAGE_DIRECTORIES = ("new", "cur")
# The Maildir specification: a file in tmp/ untouched for 36 hours is the
# remains of a delivery that died, and may be removed.
STALE_TEMPORARY_AGE = 36 * 60 * 60
# A Maildir id, as parseName reads it, and the delivery time it starts with:
# seconds, then optionally the microseconds of MailHarbor's M field.
_ID = re.compile(r"[^,:/]+")
_DELIVERY_TIME = re.compile(r"([0-9]+)(?:\Z|\.(?:M([0-9]{1,6})(?![0-9]))?)")
# The latest time datetime can represent (9999-12-31T23:59:59Z).
LAST_TIME = 253402300799


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
        date = datetime.fromtimestamp(self.delivered, UTC)
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
    if int(seconds) > LAST_TIME:
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
        message = messageFile(mailbox, directory, filename)
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
    return _flagged(message, seenFilename, seen=True, what="seen")


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
    return _flagged(message, unseenFilename, seen=False, what="unread")


def _flagged(message: MessageFile, rename: Callable[[str], str], seen: bool, what: str) -> MessageFile:
    """
    Rename a message into C{cur/} under the name C{rename} gives its file,
    following it once if a mail reader moves it meanwhile.

    @raise StoreError: if it vanished, a file has the new name already, or
        the rename fails.
    """
    for _ in range(2):
        target = rename(message.filename)
        if target == message.filename and (message.subdirectory == "cur" or not seen):
            # Flagged so already (an unseen one may still be in new/).
            return message
        destination = os.path.join(message.maildir, "cur", target)
        if os.path.lexists(destination):
            raise StoreError(f"cannot mark {message.name.id} {what}: {destination} exists")
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
            raise StoreError(f"cannot mark {message.name.id} {what}: {e.strerror or e}") from None
        return MessageFile(
            mailbox=message.mailbox,
            path=destination,
            filename=target,
            name=MaildirName(message.name.id, message.name.size, target.partition(":2,")[2]),
            subdirectory="cur",
            seen=seen,
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


def _scanMaildir(mailbox: str, path: str) -> Iterator[MessageFile]:
    for sub in MESSAGE_DIRECTORIES:
        directory = os.path.join(path, sub)
        for filename in sorted(_listDirectory(directory)):
            message = messageFile(mailbox, directory, filename)
            if message is not None:
                yield message


def messageFile(mailbox: str, directory: str, filename: str) -> MessageFile | None:
    """
    Describe the file C{filename} in C{directory} (a Maildir's C{new/} or
    C{cur/}) from its name alone.

    @param mailbox: The name of the Maildir, relative to the root.
    @return: The message, or L{None} if the name is not a message's.
    """
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


_LISTED_HEADERS = ("Return-Path", "Delivered-To", "Subject")


def _contains(value: str | None, wanted: str | None) -> bool:
    if wanted is None:
        return True
    return value is not None and wanted.casefold() in value.casefold()


def _isDirectory(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False
