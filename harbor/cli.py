# -*- test-case-name: harbor.test.test_cli -*-
"""
The C{mailharbor} command: look at, and tidy, the mail the server has
stored, and check its configuration.

MailHarbor only receives; reading is left to any Maildir-capable mail
reader.  This command answers the questions an operator has before one is
set up, or while debugging delivery: what arrived, from whom, for whom, how
much is stored, and what exactly a message holds.  Reading the store is
L{harbor.store.reader}'s and L{harbor.store.mime}'s job; this module turns
command lines into calls to them and their results into text or JSON.

Every failure ends the command with a one-line message on standard error
and a non-zero status, never a traceback: 1 when the store or a message is
missing or unusable, 2 for bad usage or an unusable configuration.

Nothing here imports the reactor or L{twisted.mail}: the command must start
quickly and must not affect, or be affected by, the reactor a server would
install.  C{check-config} imports L{harbor.tap}, which imports neither, only
when it runs.
"""

from __future__ import annotations

import argparse
import codecs
import getpass
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import redirect_stderr, redirect_stdout
from datetime import datetime
from typing import IO, Any, BinaryIO

import attrs
from attrs import frozen

from harbor._syntax import ConfigError, normaliseDomain
from harbor.config import DEFAULT_MAILDIR, RESCAN_INTERVAL, loadFile
from harbor.store.headers import cleanText
from harbor.store.mime import MessageDetails, parseMessage, saveAttachments
from harbor.store.reader import (
    MailboxStats,
    MessageFile,
    MessageSummary,
    Query,
    StoreError,
    deleteMessage,
    deliveredAt,
    findMessage,
    findMessageFiles,
    findStaleTemporaryFiles,
    listMessages,
    mailboxStats,
    markSeen,
    messageSize,
    relocate,
    summarise,
)

SUBJECT_WIDTH = 60
_COPY_CHUNK = 64 * 1024
_WRITE_CHUNK = 16 * 1024
_AGE = re.compile(r"^\s*([0-9]+)\s*([smhdw])\s*$")
_AGE_UNITS = {"s": 1, "m": 60, "h": 60 * 60, "d": 24 * 60 * 60, "w": 7 * 24 * 60 * 60}
_MOMENT_HELP = (
    "an ISO date or time (2026-11-01, 2026-11-01T12:00; local time) or an age (30m, 2h, 7d, 2w)"
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
class Moment:
    """
    A time given on the command line: either a fixed time or an age, which
    is only turned into a time when the command runs.

    @ivar timestamp: The fixed time, in seconds since the epoch, or L{None}.
    @ivar age: The age in seconds, or L{None}.
    """

    timestamp: float | None = None
    age: float | None = None

    def resolve(self, now: float) -> float:
        """
        The time this stands for.

        @param now: The current time, for an age.
        @return: Seconds since the epoch.
        """
        if self.timestamp is not None:
            return self.timestamp
        return now - (self.age or 0)


def parseMoment(text: str) -> Moment:
    """
    Read a time as C{--since} and C{--older-than} take it.

    @param text: An ISO 8601 date (C{2026-11-01}) or date and time
        (C{2026-11-01T12:00}, in local time unless it gives an offset or
        C{Z}), or an age: a whole number followed by C{s}, C{m}, C{h}, C{d}
        or C{w} (seconds, minutes, hours, days, weeks).
    @return: The time.
    @raise ValueError: if C{text} is neither.
    """
    age = _AGE.match(text)
    if age is not None:
        return Moment(age=int(age.group(1)) * _AGE_UNITS[age.group(2)])
    try:
        return Moment(timestamp=datetime.fromisoformat(text.strip()).timestamp())
    except (ValueError, OverflowError, OSError):
        raise ValueError(f"{text!r} is not {_MOMENT_HELP}") from None


def buildParser() -> argparse.ArgumentParser:
    """
    Describe the command line.

    @return: A parser whose result has a C{command} attribute, the function
        that runs the chosen subcommand.
    """
    source = _whereOptions(spool=False)
    jsonOutput = argparse.ArgumentParser(add_help=False)
    jsonOutput.add_argument("--json", action="store_true", help="print JSON for programs to read")

    parser = argparse.ArgumentParser(
        prog="mailharbor",
        description="Look at, and tidy, the mail MailHarbor has stored.",
    )
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)

    listing = commands.add_parser(
        "list",
        parents=[source, jsonOutput],
        help="list stored messages, newest first",
        description=(
            "List stored messages, newest first.  Filters combine: a message is "
            "listed when it passes all of them."
        ),
    )
    listing.add_argument(
        "--to",
        dest="recipient",
        metavar="TEXT",
        help="only messages whose envelope recipient (Delivered-To) contains TEXT, in any case",
    )
    listing.add_argument(
        "--from",
        dest="sender",
        metavar="TEXT",
        help="only messages whose envelope sender (Return-Path) contains TEXT, in any case",
    )
    listing.add_argument(
        "--since",
        type=_momentArgument,
        metavar="WHEN",
        help=f"only messages delivered since WHEN: {_MOMENT_HELP}",
    )
    listing.add_argument(
        "--domain", type=_domainArgument, metavar="DOMAIN", help="only messages for DOMAIN"
    )
    listing.add_argument(
        "--limit", type=_positiveInteger, metavar="N", help="only the N newest matching messages"
    )
    listing.add_argument(
        "--folder",
        metavar="FOLDER",
        help="only messages filed in the Maildir++ folder FOLDER (e.g. Lists.python) of any mailbox",
    )
    listing.set_defaults(command=_listCommand)

    showing = commands.add_parser(
        "show",
        parents=[source, jsonOutput],
        help="write one stored message, exactly as stored or summarised",
        description=(
            "Write one stored message to standard output, exactly as stored, or with "
            "--summary its headers, its text and a list of its attachments."
        ),
        epilog=(
            "--mark-seen marks the message seen after it was written, as a mail reader "
            "does: new/NAME becomes cur/NAME:2,S, or S joins the flags of a name in "
            "cur/.  Dovecot and mutt then show it as read."
        ),
    )
    showing.add_argument("id", metavar="ID", help="the message's id, or its full file name")
    showing.add_argument(
        "--summary",
        action="store_true",
        help="show the main headers, the text and the attachments instead of the raw message",
    )
    showing.add_argument(
        "--mark-seen", action="store_true", help="then mark the message seen (see below)"
    )
    showing.set_defaults(command=_showCommand)

    exporting = commands.add_parser(
        "export",
        parents=[source],
        help="save a message's attachments as files",
        description=(
            "Save the attachments of one message as files in DIR, created if need be.  "
            "Names are made safe (no directories, no leading dots, no control "
            "characters) and an existing file is never overwritten: a taken name gets "
            '" (2)", " (3)"... before its extension.'
        ),
    )
    exporting.add_argument("id", metavar="ID", help="the message's id, or its full file name")
    exporting.add_argument("directory", metavar="DIR", help="where to save the attachments")
    exporting.set_defaults(command=_exportCommand)

    purging = commands.add_parser(
        "purge",
        parents=[source],
        help="delete messages delivered before a given age",
        description=(
            "Delete the messages (in new/ and cur/) delivered before AGE ago, as their ids "
            "record it, and the files in tmp/ unused for 36 hours, which the Maildir "
            "specification says are left over from failed deliveries."
        ),
    )
    purging.add_argument(
        "--older-than",
        type=_momentArgument,
        required=True,
        metavar="AGE",
        help=f"delete messages delivered before AGE: {_MOMENT_HELP}",
    )
    purging.add_argument("--dry-run", action="store_true", help="only say what would be deleted")
    purging.add_argument(
        "--domain", type=_domainArgument, metavar="DOMAIN", help="only purge DOMAIN's Maildir"
    )
    purging.set_defaults(command=_purgeCommand)

    statistics = commands.add_parser(
        "stats",
        parents=[source, jsonOutput],
        help="count the stored messages and their size, per domain",
        description=(
            "Count the stored messages and add up their sizes per domain, with the number "
            "not yet seen by a mail reader (in new/) and the number in cur/."
        ),
    )
    statistics.set_defaults(command=_statsCommand)

    checking = commands.add_parser(
        "check-config",
        parents=[jsonOutput],
        help="check a configuration file and print the configuration in effect",
        usage="mailharbor check-config [-h] [--json] FILE [SERVER OPTION ...]",
        description=(
            "Check a configuration file as 'twistd mailharbor --config FILE' would, with "
            "any server options after FILE (--port, --domain, --maildir, --hostname, ...) "
            "overriding it the same way, and print the configuration that results.  "
            "--json may also come after FILE."
        ),
    )
    checking.add_argument("file", metavar="FILE", help="the TOML configuration file")
    checking.add_argument(
        "serverOptions",
        nargs=argparse.REMAINDER,
        metavar="SERVER OPTION",
        help="options of 'twistd mailharbor', which override the file",
    )
    checking.set_defaults(command=_checkConfigCommand)

    password = commands.add_parser(
        "passwd",
        help="add a user to a users file for AUTH, or change a user's password",
        description=(
            "Add USER to the users file FILE (created if missing, mode 0600), or change "
            "its password.  The password is read from the terminal without echo, twice; "
            "when standard input is not a terminal, its first line is the password.  "
            "The server re-reads the file when it changes."
        ),
    )
    password.add_argument("file", metavar="FILE", help="the users file (users_file in the configuration)")
    password.add_argument("user", metavar="USER", help="the user name")
    password.set_defaults(command=_passwdCommand)


    hooks = commands.add_parser(
        "hooks",
        help="show the new-message hooks' pending and dead jobs, and retry dead ones",
        description=(
            "Show the jobs of the new-message hooks: those waiting to run "
            "(pending) and those given up on after too many failures "
            "(dead), and put dead ones back to run again."
        ),
    )
    hooks.set_defaults(command=_hooksCommand)
    hookSource = _whereOptions(spool=True)
    actions = hooks.add_subparsers(title="actions", metavar="ACTION", required=True)
    listingJobs = actions.add_parser(
        "list",
        parents=[hookSource, jsonOutput],
        help="list pending jobs, or dead ones with --dead",
        description="List the pending hook jobs, oldest first, or the dead ones with --dead.",
    )
    listingJobs.add_argument("--dead", action="store_true", help="list the dead letters instead")
    listingJobs.set_defaults(hooksAction="list")
    retrying = actions.add_parser(
        "retry",
        parents=[hookSource, jsonOutput],
        help="put dead jobs back to run again",
        description=(
            "Put dead hook jobs back in the queue with their attempts reset.  "
            "A running server picks them up within "
            f"{RESCAN_INTERVAL:g} seconds, a stopped one when it starts."
        ),
    )
    which = retrying.add_mutually_exclusive_group(required=True)
    which.add_argument("jobs", metavar="JOB", nargs="*", default=[], help="a dead job's id")
    which.add_argument("--all", action="store_true", help="every dead job")
    retrying.set_defaults(hooksAction="retry")
    return parser


def _whereOptions(spool: bool) -> argparse.ArgumentParser:
    """
    The options that say where the Maildirs are (and, for C{hooks}, the
    spool), one at most.
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
    if spool:
        where.add_argument("--spool", metavar="DIRECTORY", help="the hook spool itself")
    return source


def readPassword(stdin: IO[str] | None = None) -> str:
    """
    Read a new password: from the terminal without echo, asked twice, or
    from the first line of a non-terminal standard input (for scripts).

    @raise CommandError: if it is empty, not given (end of input at the
        prompt), or the two entries differ.
    """
    stdin = sys.stdin if stdin is None else stdin
    if stdin.isatty():
        try:
            first = getpass.getpass("New password: ")
            again = getpass.getpass("Repeat it: ")
        except EOFError:
            raise CommandError("no password given", status=1) from None
        if again != first:
            raise CommandError("the passwords do not match", status=1)
    else:
        first = stdin.readline().rstrip("\r\n")
    if not first:
        raise CommandError("the password is empty", status=1)
    return first


def _passwdCommand(arguments: argparse.Namespace, out: IO[str], err: IO[str], now: float) -> int:
    from harbor.auth import setPassword

    try:
        new = setPassword(arguments.file, arguments.user, readPassword())
    except ValueError as e:
        raise CommandError(str(e), status=2) from None
    _writeText(out, f"{'Added' if new else 'Changed the password of'} {arguments.user} in {arguments.file}.\n")
    return 0


def resolveRoot(maildir: str | None, config: str | None) -> str:
    """
    Decide which directory holds the Maildirs.

    @param maildir: The root given with C{--maildir}, if any.
    @param config: The configuration file given with C{--config}, if any.
    @return: The root as an absolute path; C{./Maildir} when neither is
        given, as for the server.
    @raise CommandError: with status 2 if the configuration is unusable.

    Only the file's C{maildir} setting is read: reading mail must work for
    a user who may not read the server's other files (its users file, its
    key), and while another setting is being fixed.
    """
    if config is not None:
        try:
            maildir = loadFile(config).get("maildir", DEFAULT_MAILDIR)
        except ConfigError as e:
            raise CommandError(f"{e.problem} (--config)", status=2) from None
        if not isinstance(maildir, str) or not maildir:
            raise CommandError(f"{config}: maildir: must be a non-empty path", status=2)
    return os.path.abspath(DEFAULT_MAILDIR if maildir is None else maildir)


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
                _localTime(summary.delivered),
                sender,
                cleanText(summary.recipient or "") or "-",
                _truncate(summary.subject, SUBJECT_WIDTH),
                str(summary.size),
            )
        )
    return _alignColumns(rows, rightAligned={len(rows[0]) - 1})


def formatDetails(summary: MessageSummary, details: MessageDetails) -> str:
    """
    Lay out a message's summary for C{show --summary}: its headers, its
    text and its attachments.

    @param summary: The message as C{list} describes it.
    @param details: What it is made of.
    @return: The lines, each ending in a newline.
    """
    lines = [f"Id: {cleanText(summary.id)}", f"Mailbox: {cleanText(summary.mailbox)}"]
    lines.append(f"Delivered: {_localTime(summary.delivered)}")
    lines.extend(f"{name}: {value}" for name, value in details.headers)
    lines.append("")
    if details.text is None:
        lines.append("(no text part)")
    else:
        if details.textType == "text/html":
            lines.append("(converted from HTML)")
        lines.append(details.text.rstrip("\n"))
    lines.append("")
    if details.attachments:
        lines.append(f"Attachments ({len(details.attachments)}):")
        rows = [
            (
                f"  {index}.",
                attachment.filename or "(no name)",
                attachment.contentType,
                f"{attachment.size} bytes",
            )
            for index, attachment in enumerate(details.attachments, 1)
        ]
        lines.append(_alignColumns(rows, rightAligned={3}).rstrip("\n"))
    else:
        lines.append("No attachments.")
    if details.truncated:
        lines.append(
            "(Only part of this message's MIME structure was read: it has too many parts "
            "or is nested too deeply.)"
        )
    return "\n".join(lines) + "\n"


def formatStats(stats: Sequence[MailboxStats]) -> str:
    """
    Lay out C{mailharbor stats}: one line per mailbox and a total.

    @param stats: The mailboxes, in the order to show them.
    @return: The lines, each ending in a newline.
    """
    rows = [("MAILBOX", "MESSAGES", "NEW", "CUR", "SIZE")]
    for entry in [*stats, _total(stats)]:
        rows.append(
            (
                cleanText(entry.mailbox),
                str(entry.messages),
                str(entry.new),
                str(entry.cur),
                _humanSize(entry.size),
            )
        )
    return _alignColumns(rows, rightAligned={1, 2, 3, 4})


def formatConfig(value: Any) -> str:
    """
    Describe a configuration (any attrs instance) in readable text, one
    field a line, nested values indented under their field.

    Fields are found with L{attrs.fields}, so settings added to L{Config}
    later are shown without changes here.

    @param value: The configuration.
    @return: The lines, each ending in a newline.
    """
    return "".join(line + "\n" for line in _textLines(plainValue(value), 0))


def plainValue(value: Any) -> Any:
    """
    Turn a value made of attrs instances and collections into plain JSON
    values.

    @param value: An attrs instance, a collection, or a scalar.
    @return: Attrs instances as mappings of their fields, tuples and lists
        as lists, sets sorted, scalars unchanged (others as strings).
    """
    if attrs.has(type(value)):
        return {f.name: plainValue(getattr(value, f.name)) for f in attrs.fields(type(value))}
    if isinstance(value, (set, frozenset)):
        return sorted((plainValue(v) for v in value), key=str)
    if isinstance(value, (list, tuple)):
        return [plainValue(v) for v in value]
    if isinstance(value, dict):
        return {str(k): plainValue(v) for k, v in value.items()}
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def main(
    argv: Sequence[str] | None = None,
    stdout: IO[str] | None = None,
    stderr: IO[str] | None = None,
    now: Callable[[], float] = time.time,
) -> int:
    """
    Run the C{mailharbor} command.

    @param argv: The arguments, without the program name; by default
        C{sys.argv[1:]}.
    @param stdout: Where output goes; C{show} writes the stored bytes to its
        C{buffer} when it has one.  By default L{sys.stdout}.
    @param stderr: Where errors go; by default L{sys.stderr}.
    @param now: The clock that ages (C{--since 7d}) count back from,
        injected so tests are deterministic.
    @return: The exit status: 0 on success, 1 when the store or the message
        is not there or cannot be read or changed, 2 for bad usage or an
        unusable configuration file.
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
        status: int = arguments.command(arguments, out, err, now())
        out.flush()
        return status
    except (CommandError, StoreError) as e:
        _writeText(err, f"mailharbor: {e}\n")
        return e.status if isinstance(e, CommandError) else 1
    except BrokenPipeError:
        _discardOutput(out)
        return 1
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        _writeText(err, f"mailharbor: {where}{e.strerror or e}\n")
        return 1
    except KeyboardInterrupt:
        return 130


def _listCommand(arguments: argparse.Namespace, out: IO[str], err: IO[str], now: float) -> int:
    root = resolveRoot(arguments.maildir, arguments.config)
    query = Query(
        mailbox=arguments.domain,
        since=None if arguments.since is None else arguments.since.resolve(now),
        sender=arguments.sender,
        recipient=arguments.recipient,
        limit=arguments.limit,
        folder=arguments.folder,
    )
    summaries = listMessages(root, query)
    if arguments.json:
        _writeText(out, json.dumps([s.asJSON() for s in summaries], indent=2) + "\n")
    elif summaries:
        _writeText(out, formatTable(summaries))
    elif attrs.evolve(query, limit=None) == Query():
        _writeText(out, f"No messages in {root}.\n")
    else:
        _writeText(out, f"No matching messages in {root}.\n")
    return 0


def _showCommand(arguments: argparse.Namespace, out: IO[str], err: IO[str], now: float) -> int:
    root = resolveRoot(arguments.maildir, arguments.config)
    message, f = _openMessage(root, arguments.id)
    with f:
        try:
            if arguments.summary:
                summary = summarise(message, f)
                f.seek(0)
                details = parseMessage(f)
                if arguments.json:
                    _writeText(out, json.dumps(_detailsJSON(summary, details), indent=2) + "\n")
                else:
                    _writeText(out, formatDetails(summary, details))
            elif arguments.json:
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
    out.flush()
    if arguments.mark_seen:
        markSeen(message)
    return 0


def _exportCommand(arguments: argparse.Namespace, out: IO[str], err: IO[str], now: float) -> int:
    root = resolveRoot(arguments.maildir, arguments.config)
    message, f = _openMessage(root, arguments.id)
    with f:
        try:
            details = parseMessage(f)
        except OSError as e:
            raise CommandError(f"cannot read {message.path}: {e.strerror or e}") from None
    if not details.attachments:
        _writeText(out, f"No attachments in {cleanText(message.name.id)}.\n")
        return 0
    paths = saveAttachments(details.attachments, arguments.directory)
    for attachment, path in zip(details.attachments, paths):
        _writeText(
            out,
            f"{cleanText(path)}  {attachment.contentType}  {attachment.size} bytes\n",
        )
    return 0


def _purgeCommand(arguments: argparse.Namespace, out: IO[str], err: IO[str], now: float) -> int:
    root = resolveRoot(arguments.maildir, arguments.config)
    cutoff = arguments.older_than.resolve(now)
    dryRun = arguments.dry_run
    verb = "would delete" if dryRun else "deleted"
    status = 0
    deleted = deletedBytes = removed = 0

    def failed(path: str, e: OSError) -> None:
        nonlocal status
        status = 1
        _writeText(err, f"mailharbor: cannot delete {cleanText(path)}: {e.strerror or e}\n")

    for message in list(findMessageFiles(root, arguments.domain)):
        delivered = deliveredAt(message)
        if delivered is None or delivered >= cutoff:
            continue
        size = messageSize(message) or 0
        if not dryRun:
            try:
                gone = deleteMessage(message)
            except OSError as e:
                failed(message.path, e)
                continue
            if gone is None:
                continue
            message = gone
        deleted += 1
        deletedBytes += size
        _writeText(
            out,
            f"{verb} {_relative(root, message.path)}  delivered {_localTime(delivered)}"
            f"  {size} bytes\n",
        )
    for stale in list(findStaleTemporaryFiles(root, now, arguments.domain)):
        if not dryRun:
            try:
                os.unlink(stale.path)
            except FileNotFoundError:
                continue
            except OSError as e:
                failed(stale.path, e)
                continue
        removed += 1
        _writeText(
            out,
            f"{verb} {_relative(root, stale.path)}  unused since {_localTime(stale.lastUsed)}"
            f"  {stale.size} bytes\n",
        )
    _writeText(
        out,
        f"{verb.capitalize()} {_plural(deleted, 'message')} ({_humanSize(deletedBytes)})"
        f" and {_plural(removed, 'stale file')} from tmp/.\n",
    )
    return status


def _statsCommand(arguments: argparse.Namespace, out: IO[str], err: IO[str], now: float) -> int:
    root = resolveRoot(arguments.maildir, arguments.config)
    stats = mailboxStats(root)
    if arguments.json:

        def entry(stat: MailboxStats) -> dict[str, Any]:
            return {
                "messages": stat.messages,
                "new": stat.new,
                "cur": stat.cur,
                "size": stat.size,
            }

        description = {
            "root": root,
            "mailboxes": [{"mailbox": s.mailbox, **entry(s)} for s in stats],
            "total": entry(_total(stats)),
        }
        _writeText(out, json.dumps(description, indent=2) + "\n")
    else:
        _writeText(out, formatStats(stats))
    return 0


def _checkConfigCommand(
    arguments: argparse.Namespace, out: IO[str], err: IO[str], now: float
) -> int:
    # Imported here: the other commands do not need Twisted's service and
    # endpoint modules, which harbor.tap brings in.
    from twisted.python.usage import UsageError

    from harbor.tap import Options

    serverOptions = [a for a in arguments.serverOptions if a != "--json"]
    asJSON = arguments.json or len(serverOptions) != len(arguments.serverOptions)
    options = Options()
    try:
        with redirect_stdout(out):
            options.parseOptions([f"--config={arguments.file}", *serverOptions])
    except UsageError as e:
        # harbor.tap names the file's own problems (unreadable, not TOML)
        # after its --config option, which is FILE here.
        raise CommandError(str(e).removeprefix("--config: "), status=2) from None
    except SystemExit as e:
        # --help or --version among the server options.
        return e.code if isinstance(e.code, int) else 0
    if asJSON:
        _writeText(out, json.dumps(plainValue(options.config), indent=2) + "\n")
    else:
        _writeText(out, formatConfig(options.config))
    return 0


def _detailsJSON(summary: MessageSummary, details: MessageDetails) -> dict[str, Any]:
    description = summary.asJSON()
    description.update(
        headers=[[name, value] for name, value in details.headers],
        text=details.text,
        textType=details.textType,
        attachments=[
            {"filename": a.filename, "contentType": a.contentType, "size": a.size}
            for a in details.attachments
        ],
        truncated=details.truncated,
    )
    return description


def _openMessage(root: str, identifier: str) -> tuple[MessageFile, BinaryIO]:
    message = findMessage(root, identifier)
    # Opened twice at most: a mail reader may move the file from new/ to
    # cur/ between finding and opening it.
    for _ in range(2):
        if message is None:
            break
        try:
            return message, open(message.path, "rb")
        except FileNotFoundError:
            message = relocate(message)
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
    shutil.copyfileobj(f, buffer, _COPY_CHUNK)
    buffer.flush()


def _textLines(value: Any, indent: int) -> list[str]:
    # The lines of a mapping of plain values, in a YAML-like layout.
    pad = "  " * indent
    lines = []
    for key, item in value.items():
        if isinstance(item, (dict, list)) and not item:
            lines.append(f"{pad}{key}: (none)")
        elif isinstance(item, dict):
            lines.append(f"{pad}{key}:")
            lines.extend(_textLines(item, indent + 1))
        elif isinstance(item, list):
            lines.append(f"{pad}{key}:")
            for element in item:
                if isinstance(element, dict) and element:
                    nested = _textLines(element, indent + 2)
                    lines.append(f"{pad}  - {nested[0].lstrip()}")
                    lines.extend(nested[1:])
                else:
                    lines.append(f"{pad}  - {_scalarText(element)}")
        else:
            lines.append(f"{pad}{key}: {_scalarText(item)}")
    return lines


def _scalarText(value: Any) -> str:
    if value is None:
        return "(not set)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, str):
        return cleanText(value) if value else '""'
    return cleanText(str(value))


def _hooksCommand(arguments: argparse.Namespace, out: IO[str], err: IO[str], now: float) -> int:
    """
    C{mailharbor hooks list} and C{mailharbor hooks retry}.
    """
    from harbor.hooks import HookSpool, spoolFor

    if arguments.spool is not None:
        directory = os.path.abspath(arguments.spool)
    else:
        directory = spoolFor(resolveRoot(arguments.maildir, arguments.config))
    spool = HookSpool(directory)
    if arguments.hooksAction == "list":
        unusable: list[tuple[str, str]] = []
        jobs = spool.deadJobs(unusable) if arguments.dead else spool.pendingJobs(unusable)
        for path, why in unusable:
            _writeText(err, f"mailharbor: {cleanText(path)} is not a usable hook job ({cleanText(why)}); not listed\n")
        if arguments.json:
            _writeText(out, json.dumps([job.asJSON() for job in jobs], indent=2) + "\n")
        elif not jobs:
            _writeText(out, f"No {'dead' if arguments.dead else 'pending'} hook jobs in {cleanText(directory)}.\n")
        else:
            rows = [("JOB", "HOOK", "ATTEMPTS", "FAILED" if arguments.dead else "NEXT", "RECIPIENT", "ERROR")]
            rows += [
                (
                    cleanText(job.id),
                    cleanText(job.hook),
                    str(job.attempts),
                    _localTime(job.due),
                    cleanText(job.event.recipient),
                    cleanText(job.error or "-"),
                )
                for job in jobs
            ]
            _writeText(out, _alignColumns(rows, set()))
        return 1 if unusable else 0
    return _retryJobs(spool, arguments, now, out, err)


def _retryJobs(spool: Any, arguments: argparse.Namespace, now: float, out: IO[str], err: IO[str]) -> int:

    jobIDs = [job.id for job in spool.deadJobs()] if arguments.all else arguments.jobs
    revived = []
    status = 0
    for jobID in jobIDs:
        try:
            revived.append(spool.revive(jobID, now))
        except KeyError:
            why = "is pending, not dead" if spool.isPending(jobID) else "is not a dead hook job"
            _writeText(err, f"mailharbor: {cleanText(jobID)} {why}\n")
            status = 1
    if arguments.json:
        _writeText(out, json.dumps([job.id for job in revived], indent=2) + "\n")
    elif revived:
        _writeText(
            out,
            f"Requeued {_plural(len(revived), 'hook job')}; a running "
            f"server starts them within {RESCAN_INTERVAL:g} seconds.\n",
        )
    elif arguments.all:
        _writeText(out, "No dead hook jobs.\n")
    return status


def _alignColumns(rows: Sequence[Sequence[str]], rightAligned: set[int]) -> str:
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [
            cell.rjust(width) if column in rightAligned else cell.ljust(width)
            for column, (cell, width) in enumerate(zip(row, widths))
        ]
        lines.append("  ".join(cells).rstrip() + "\n")
    return "".join(lines)


def _total(stats: Sequence[MailboxStats]) -> MailboxStats:
    return MailboxStats(
        mailbox="TOTAL",
        new=sum(s.new for s in stats),
        cur=sum(s.cur for s in stats),
        size=sum(s.size for s in stats),
    )


def _humanSize(size: int) -> str:
    if size < 1024:
        return f"{size} B"
    value = float(size)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024:
            break
    return f"{value:.1f} {unit}"


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _relative(root: str, path: str) -> str:
    return cleanText(os.path.relpath(path, root))


def _localTime(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))


def _truncate(text: str, width: int) -> str:
    if len(text) <= width:
        return text
    return text[: width - 1].rstrip() + "\u2026"


def _momentArgument(text: str) -> Moment:
    try:
        return parseMoment(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _domainArgument(text: str) -> str:
    try:
        return normaliseDomain(text, "--domain")
    except ConfigError as e:
        raise argparse.ArgumentTypeError(e.problem) from None


def _positiveInteger(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return int(text)


def _writeText(stream: IO[str], text: str) -> None:
    # Written in pieces: CPython loses the EPIPE of a reader that goes away
    # (mailharbor list | head) during one large write, and the command
    # would not know to stop.
    for start in range(0, len(text), _WRITE_CHUNK):
        piece = text[start : start + _WRITE_CHUNK]
        try:
            stream.write(piece)
        except UnicodeEncodeError:
            encoding = getattr(stream, "encoding", None) or "ascii"
            stream.write(piece.encode(encoding, "replace").decode(encoding))


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
