# -*- test-case-name: harbor.test.test_cli -*-
"""
The C{mailharbor} command: look at the mail the server has stored.

MailHarbor only receives; reading is left to any Maildir-capable mail
reader.  This command answers the questions an operator has before one is
set up, or while debugging delivery: what arrived, from whom, for whom, and
what exactly was stored.  C{mailharbor list} summarises every message from
its header block alone (the store can hold messages of many megabytes), and
C{mailharbor show} writes one stored file out byte for byte.

It runs while the server delivers and while mail readers move messages from
C{new/} to C{cur/}, so a file may vanish between being listed and being
read; such files are skipped, never reported as a crash.  Nothing here
imports the reactor or L{twisted.mail}: the command must start quickly and
must not affect, or be affected by, the reactor a server would install.
"""

from __future__ import annotations

import argparse
import codecs
import json
import os
import sys
import time
import unicodedata
from collections.abc import Iterator, Sequence
from contextlib import redirect_stderr, redirect_stdout
from datetime import datetime, timezone
from email import policy
from email.message import Message
from email.parser import BytesHeaderParser
from typing import IO, Any, BinaryIO

from attrs import frozen

from harbor.config import DEFAULT_MAILDIR, Config, ConfigError, loadFile
from harbor.maildir import MaildirName, parseName

# The most of a file read to find its header block; a file without a blank
# line this early is summarised from what was read.
HEADER_LIMIT = 256 * 1024
SUBJECT_WIDTH = 60
_COPY_CHUNK = 64 * 1024
_MESSAGE_DIRECTORIES = ("new", "cur")
# Invisible characters that reorder the text around them on a terminal.
_BIDI_CONTROLS = frozenset(
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)


class CommandError(Exception):
    """
    The command cannot do what it was asked; the message is for the user.

    @ivar status: The exit status to end the command with.
    """

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


@frozen
class MessageFile:
    """
    A stored message found by its file name, not yet opened.

    @ivar mailbox: The name of the Maildir it is in, relative to the root.
    @ivar path: The file's absolute path.
    @ivar filename: The file's name.
    @ivar name: The parts of that name.
    @ivar seen: C{True} when it is in C{cur/} with the C{S} flag.
    """

    mailbox: str
    path: str
    filename: str
    name: MaildirName
    seen: bool


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


def buildParser() -> argparse.ArgumentParser:
    """
    Describe the command line.

    @return: A parser whose result has a C{command} attribute, the function
        that runs the chosen subcommand.
    """
    source = argparse.ArgumentParser(add_help=False)
    where = source.add_mutually_exclusive_group()
    where.add_argument(
        "--maildir",
        metavar="ROOT",
        help=f"the directory holding one Maildir per domain (default: ./{DEFAULT_MAILDIR})",
    )
    where.add_argument(
        "--config",
        metavar="FILE",
        help="take the Maildir root from this MailHarbor configuration file",
    )
    source.add_argument("--json", action="store_true", help="print JSON for programs to read")

    parser = argparse.ArgumentParser(
        prog="mailharbor",
        description="Look at the mail MailHarbor has stored.",
    )
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    listing = commands.add_parser(
        "list",
        parents=[source],
        help="list every stored message, newest first",
        description="List every stored message, newest first.",
    )
    listing.set_defaults(command=_listCommand)
    showing = commands.add_parser(
        "show",
        parents=[source],
        help="write one stored message, exactly as stored",
        description="Write one stored message to standard output, exactly as stored.",
    )
    showing.add_argument("id", metavar="ID", help="the message's id, or its full file name")
    showing.set_defaults(command=_showCommand)
    return parser


def resolveRoot(maildir: str | None, config: str | None) -> str:
    """
    Decide which directory holds the Maildirs.

    @param maildir: The root given with C{--maildir}, if any.
    @param config: The configuration file given with C{--config}, if any.
    @return: The root as an absolute path; C{./Maildir} when neither is
        given, as for the server.
    @raise CommandError: with status 2 if the configuration is unusable.
    """
    if config is not None:
        try:
            mapping = loadFile(config)
        except ConfigError as e:
            raise CommandError(e.problem, status=2) from None
        try:
            # The host name is not needed here: skip its DNS lookup.
            return Config.fromMapping(mapping, fqdn=lambda: "localhost").maildir
        except ConfigError as e:
            raise CommandError(f"{config}: {e}", status=2) from None
    return os.path.abspath(DEFAULT_MAILDIR if maildir is None else maildir)


def findMailboxes(root: str) -> list[tuple[str, str]]:
    """
    Find the Maildirs directly below C{root}.

    @param root: The directory holding them.
    @return: The name and path of each subdirectory that has C{new/} and
        C{cur/}, sorted by name.
    @raise CommandError: if C{root} is not a directory or cannot be read.
    """
    if not os.path.isdir(root):
        raise CommandError(f"no Maildir at {root}")
    try:
        with os.scandir(root) as entries:
            names = sorted(entry.name for entry in entries if _isDirectory(entry))
    except OSError as e:
        raise CommandError(f"cannot read {root}: {e.strerror or e}") from None
    found = []
    for name in names:
        path = os.path.join(root, name)
        if all(os.path.isdir(os.path.join(path, sub)) for sub in _MESSAGE_DIRECTORIES):
            found.append((name, path))
    return found


def findMessageFiles(root: str) -> Iterator[MessageFile]:
    """
    Find every complete message below C{root}: those in C{new/} and C{cur/}
    of each Maildir, never the unfinished ones in C{tmp/}.

    A directory that cannot be read is skipped.

    @param root: The directory holding the Maildirs.
    @return: The messages, by mailbox, then C{new/} before C{cur/}.
    @raise CommandError: if C{root} is not a directory or cannot be read.
    """
    for mailbox, path in findMailboxes(root):
        for sub in _MESSAGE_DIRECTORIES:
            directory = os.path.join(path, sub)
            try:
                with os.scandir(directory) as entries:
                    filenames = sorted(entry.name for entry in entries)
            except OSError:
                continue
            for filename in filenames:
                name = parseName(filename)
                if name is None:
                    continue
                yield MessageFile(
                    mailbox=mailbox,
                    path=os.path.join(directory, filename),
                    filename=filename,
                    name=name,
                    seen=sub == "cur" and "S" in name.flags,
                )


def findMessage(root: str, identifier: str) -> MessageFile | None:
    """
    Find a stored message by its id or its full file name.

    @param root: The directory holding the Maildirs.
    @param identifier: The id (as given to the SMTP client in the 250
        reply), or the complete name of the file.
    @return: The message, or L{None} if there is none.
    @raise CommandError: if C{root} is not a directory or cannot be read.
    """
    for message in findMessageFiles(root):
        if identifier in (message.name.id, message.filename):
            return message
    return None


def readHeaderBlock(f: BinaryIO, limit: int = HEADER_LIMIT) -> bytes:
    """
    Read a message's header block and nothing of its body.

    @param f: The message, positioned at its start.
    @param limit: The most bytes to read, for a file without a blank line.
    @return: The header lines, without the blank line that ends them.
    """
    lines = []
    remaining = limit
    while remaining > 0:
        line = f.readline(remaining)
        if not line or line in (b"\n", b"\r\n"):
            break
        lines.append(line)
        remaining -= len(line)
    return b"".join(lines)


def summarise(message: MessageFile, f: BinaryIO) -> MessageSummary:
    """
    Describe a stored message from its header block.

    @param message: Where the message was found.
    @param f: The message's open file, positioned at its start.
    @return: The summary.
    @raise OSError: if the file cannot be read.
    """
    stat = os.fstat(f.fileno())
    headers = BytesHeaderParser(policy=policy.default).parsebytes(readHeaderBlock(f))
    delivered = deliveryTime(message.name.id)
    sender = _header(headers, "Return-Path")
    if sender is not None and sender.startswith("<") and sender.endswith(">"):
        sender = sender[1:-1].strip()
    return MessageSummary(
        id=message.name.id,
        mailbox=message.mailbox,
        path=message.path,
        delivered=stat.st_mtime if delivered is None else delivered,
        sender=sender,
        recipient=_header(headers, "Delivered-To"),
        subject=_header(headers, "Subject") or "",
        size=stat.st_size,
        seen=message.seen,
    )


def listMessages(root: str) -> list[MessageSummary]:
    """
    Summarise every stored message.

    A message that vanishes (a mail reader moved it) or cannot be read
    while the store is being listed is left out.

    @param root: The directory holding the Maildirs.
    @return: The summaries, newest delivery first.
    @raise CommandError: if C{root} is not a directory or cannot be read.
    """
    summaries = []
    for message in findMessageFiles(root):
        try:
            with open(message.path, "rb") as f:
                summaries.append(summarise(message, f))
        except OSError:
            continue
    summaries.sort(key=lambda s: (s.delivered, s.id), reverse=True)
    return summaries


def deliveryTime(messageID: str) -> float | None:
    """
    Read the delivery time that starts a Maildir id.

    @param messageID: An id such as C{1732314178.M123456P4242Q7.mx.example.com}.
    @return: Its seconds since the epoch, or L{None} if it does not start
        with a usable time.
    """
    seconds = messageID.split(".", 1)[0]
    if not seconds.isdigit() or not seconds.isascii():
        return None
    try:
        datetime.fromtimestamp(int(seconds), timezone.utc)
    except (OverflowError, OSError, ValueError):
        return None
    return float(seconds)


def cleanText(text: str) -> str:
    """
    Make text from a message safe to print on a terminal, on one line.

    @param text: Anything a sender could have put in a header.
    @return: C{text} with line breaks and tabs turned into single spaces,
        other control and direction-changing characters removed, and
        undecodable bytes shown as U+FFFD.
    """
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


def formatTable(summaries: Sequence[MessageSummary]) -> str:
    """
    Lay summaries out in aligned columns under a heading.

    @param summaries: The messages, in the order to show them.
    @return: The lines, each ending in a newline.
    """
    rows = [("ID", "DATE", "FROM", "TO", "SUBJECT", "SIZE")]
    for summary in summaries:
        if summary.sender is None:
            sender = "-"
        else:
            sender = cleanText(summary.sender) or "<>"
        rows.append(
            (
                cleanText(summary.id),
                time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(summary.delivered)),
                sender,
                cleanText(summary.recipient or "") or "-",
                _truncate(summary.subject, SUBJECT_WIDTH),
                str(summary.size),
            )
        )
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row[:-1], widths)]
        cells.append(row[-1].rjust(widths[-1]))
        lines.append("  ".join(cells) + "\n")
    return "".join(lines)


def main(
    argv: Sequence[str] | None = None,
    stdout: IO[str] | None = None,
    stderr: IO[str] | None = None,
) -> int:
    """
    Run the C{mailharbor} command.

    @param argv: The arguments, without the program name; by default
        C{sys.argv[1:]}.
    @param stdout: Where output goes; C{show} writes the stored bytes to its
        C{buffer} when it has one.  By default L{sys.stdout}.
    @param stderr: Where errors go; by default L{sys.stderr}.
    @return: The exit status: 0 on success, 1 when the store or the message
        is not there or cannot be read, 2 for bad usage or an unusable
        configuration file.
    """
    out = sys.stdout if stdout is None else stdout
    err = sys.stderr if stderr is None else stderr
    parser = buildParser()
    try:
        with redirect_stdout(out), redirect_stderr(err):
            arguments = parser.parse_args(argv)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 2
    try:
        status: int = arguments.command(arguments, out)
        out.flush()
        return status
    except CommandError as e:
        _writeText(err, f"mailharbor: {e}\n")
        return e.status
    except BrokenPipeError:
        _discardOutput(out)
        return 1
    except KeyboardInterrupt:
        return 130


def _listCommand(arguments: argparse.Namespace, out: IO[str]) -> int:
    root = resolveRoot(arguments.maildir, arguments.config)
    summaries = listMessages(root)
    if arguments.json:
        _writeText(out, json.dumps([s.asJSON() for s in summaries], indent=2) + "\n")
    elif not summaries:
        _writeText(out, f"No messages in {root}.\n")
    else:
        _writeText(out, formatTable(summaries))
    return 0


def _showCommand(arguments: argparse.Namespace, out: IO[str]) -> int:
    root = resolveRoot(arguments.maildir, arguments.config)
    message, f = _openMessage(root, arguments.id)
    with f:
        try:
            if arguments.json:
                description = summarise(message, f).asJSON()
                f.seek(0)
                description["message"] = f.read().decode("utf-8", "replace")
                _writeText(out, json.dumps(description, indent=2) + "\n")
            else:
                _copyBytes(f, out)
        except BrokenPipeError:
            raise
        except OSError as e:
            raise CommandError(f"cannot read {message.path}: {e.strerror or e}") from None
    return 0


def _openMessage(root: str, identifier: str) -> tuple[MessageFile, BinaryIO]:
    # Looked for twice: a mail reader may move the file from new/ to cur/
    # between finding and opening it.
    for _ in range(2):
        message = findMessage(root, identifier)
        if message is None:
            break
        try:
            return message, open(message.path, "rb")
        except FileNotFoundError:
            continue
        except OSError as e:
            raise CommandError(f"cannot read {message.path}: {e.strerror or e}") from None
    raise CommandError(f"no message {cleanText(identifier)!r} in {root}")


def _copyBytes(f: BinaryIO, out: IO[str]) -> None:
    buffer = getattr(out, "buffer", None)
    out.flush()
    if buffer is None:
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        while chunk := f.read(_COPY_CHUNK):
            out.write(decoder.decode(chunk))
        out.write(decoder.decode(b"", final=True))
        return
    while chunk := f.read(_COPY_CHUNK):
        buffer.write(chunk)
    buffer.flush()


def _header(headers: Message, name: str) -> str | None:
    try:
        value = headers[name]
    except Exception:
        # The email package has raised on malformed headers before; one bad
        # header must not hide the message, so show it undecoded.
        raw = [v for k, v in headers.raw_items() if k.lower() == name.lower()]
        value = raw[0] if raw else None
    if value is None:
        return None
    return cleanText(str(value))


def _truncate(text: str, width: int) -> str:
    if len(text) <= width:
        return text
    return text[: width - 1].rstrip() + "\u2026"


def _isDirectory(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def _writeText(stream: IO[str], text: str) -> None:
    try:
        stream.write(text)
    except UnicodeEncodeError:
        encoding = getattr(stream, "encoding", None) or "ascii"
        stream.write(text.encode(encoding, "replace").decode(encoding))


def _discardOutput(stream: IO[str]) -> None:
    # The reader went away (mailharbor list | head): send whatever is still
    # buffered to /dev/null so that flushing at exit does not fail again.
    try:
        descriptor = stream.fileno()
    except (OSError, ValueError):
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, descriptor)
    finally:
        os.close(devnull)


if __name__ == "__main__":
    sys.exit(main())
