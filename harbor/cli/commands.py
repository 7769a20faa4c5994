# -*- test-case-name: harbor.test.test_cli -*-
"""
What each C{mailharbor} sub-command does, one function each.

Every command function takes the parsed arguments, the output and error
streams and the current time, and returns the exit status; it raises
L{CommandError} for a failure the user should read about.  Reading the
store is L{harbor.store.reader}'s job, laying out its results is
L{harbor.cli.formatting}'s: these functions join the two.

Twisted's service and endpoint modules (through L{harbor.tap}) and the
hook spool (L{harbor.hooks}) are imported inside the commands that need
them, so that the others start quickly and never bring in the reactor.
"""

from __future__ import annotations

import argparse
import codecs
import getpass
import json
import os
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stdout
from typing import IO, Any, BinaryIO

import attrs

from harbor._syntax import ConfigError
from harbor.cli.formatting import (
    alignColumns,
    detailsJSON,
    formatConfig,
    formatDetails,
    formatStats,
    formatTable,
    humanSize,
    localTime,
    plural,
    relativePath,
    totalStats,
    writeText,
)
from harbor.config import DEFAULT_MAILDIR, loadFile
from harbor.hooks.config import RESCAN_INTERVAL
from harbor.store.headers import cleanText
from harbor.store.mime import parseMessage, saveAttachments
from harbor.store.reader import (
    MailboxStats,
    MessageFile,
    Query,
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

__all__ = [
    "CommandError",
    "checkConfigCommand",
    "exportCommand",
    "hooksCommand",
    "listCommand",
    "passwdCommand",
    "purgeCommand",
    "readPassword",
    "resolveRoot",
    "showCommand",
    "statsCommand",
]

_COPY_CHUNK = 64 * 1024


class CommandError(Exception):
    """
    The command cannot do what it was asked; the message is for the user.

    @ivar status: The exit status to end the command with.
    """

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


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


def listCommand(arguments: argparse.Namespace, out: IO[str], err: IO[str], now: float) -> int:
    """
    C{mailharbor list}: a table, or JSON, of the matching messages.
    """
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
        writeText(out, json.dumps([s.asJSON() for s in summaries], indent=2) + "\n")
    elif summaries:
        writeText(out, formatTable(summaries))
    elif attrs.evolve(query, limit=None) == Query():
        writeText(out, f"No messages in {root}.\n")
    else:
        writeText(out, f"No matching messages in {root}.\n")
    return 0


def showCommand(arguments: argparse.Namespace, out: IO[str], err: IO[str], now: float) -> int:
    """
    C{mailharbor show}: one message's bytes as stored, or its summary.
    """
    root = resolveRoot(arguments.maildir, arguments.config)
    message, f = _openMessage(root, arguments.id)
    with f:
        try:
            if arguments.summary:
                summary = summarise(message, f)
                f.seek(0)
                details = parseMessage(f)
                if arguments.json:
                    writeText(out, json.dumps(detailsJSON(summary, details), indent=2) + "\n")
                else:
                    writeText(out, formatDetails(summary, details))
            elif arguments.json:
                description = summarise(message, f).asJSON()
                f.seek(0)
                description["message"] = f.read().decode("utf-8", "replace")
                writeText(out, json.dumps(description, indent=2) + "\n")
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


def exportCommand(arguments: argparse.Namespace, out: IO[str], err: IO[str], now: float) -> int:
    """
    C{mailharbor export}: save one message's attachments as files.
    """
    root = resolveRoot(arguments.maildir, arguments.config)
    message, f = _openMessage(root, arguments.id)
    with f:
        try:
            details = parseMessage(f)
        except OSError as e:
            raise CommandError(f"cannot read {message.path}: {e.strerror or e}") from None
    if not details.attachments:
        writeText(out, f"No attachments in {cleanText(message.name.id)}.\n")
        return 0
    paths = saveAttachments(details.attachments, arguments.directory)
    for attachment, path in zip(details.attachments, paths):
        writeText(
            out,
            f"{cleanText(path)}  {attachment.contentType}  {attachment.size} bytes\n",
        )
    return 0


def purgeCommand(arguments: argparse.Namespace, out: IO[str], err: IO[str], now: float) -> int:
    """
    C{mailharbor purge}: delete old messages and stale files in C{tmp/}.
    """
    root = resolveRoot(arguments.maildir, arguments.config)
    cutoff = arguments.older_than.resolve(now)
    dryRun = arguments.dry_run
    verb = "would delete" if dryRun else "deleted"
    status = 0
    deleted = deletedBytes = removed = 0

    def failed(path: str, e: OSError) -> None:
        nonlocal status
        status = 1
        writeText(err, f"mailharbor: cannot delete {cleanText(path)}: {e.strerror or e}\n")

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
        writeText(
            out,
            f"{verb} {relativePath(root, message.path)}  delivered {localTime(delivered)}"
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
        writeText(
            out,
            f"{verb} {relativePath(root, stale.path)}  unused since {localTime(stale.lastUsed)}"
            f"  {stale.size} bytes\n",
        )
    writeText(
        out,
        f"{verb.capitalize()} {plural(deleted, 'message')} ({humanSize(deletedBytes)})"
        f" and {plural(removed, 'stale file')} from tmp/.\n",
    )
    return status


def statsCommand(arguments: argparse.Namespace, out: IO[str], err: IO[str], now: float) -> int:
    """
    C{mailharbor stats}: messages and sizes per domain, and in all.
    """
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
            "total": entry(totalStats(stats)),
        }
        writeText(out, json.dumps(description, indent=2) + "\n")
    else:
        writeText(out, formatStats(stats))
    return 0


def checkConfigCommand(
    arguments: argparse.Namespace, out: IO[str], err: IO[str], now: float
) -> int:
    """
    C{mailharbor check-config}: the configuration C{twistd mailharbor}
    would run with, or why it would not start.
    """
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
    # In the file's own keys, so that what is printed can be written back.
    settings = options.config.asMapping()
    if asJSON:
        writeText(out, json.dumps(settings, indent=2) + "\n")
    else:
        writeText(out, formatConfig(settings))
    return 0


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


def passwdCommand(arguments: argparse.Namespace, out: IO[str], err: IO[str], now: float) -> int:
    """
    C{mailharbor passwd}: add a user to a users file, or change its
    password.
    """
    from harbor.auth import setPassword

    try:
        new = setPassword(arguments.file, arguments.user, readPassword())
    except ValueError as e:
        raise CommandError(str(e), status=2) from None
    writeText(out, f"{'Added' if new else 'Changed the password of'} {arguments.user} in {arguments.file}.\n")
    return 0


def hooksCommand(arguments: argparse.Namespace, out: IO[str], err: IO[str], now: float) -> int:
    """
    C{mailharbor hooks list} and C{mailharbor hooks retry}.
    """
    from harbor.hooks.spool import HookSpool, spoolFor

    if arguments.spool is not None:
        directory = os.path.abspath(arguments.spool)
    elif arguments.config is not None and (configured := _configuredSpool(arguments.config)) is not None:
        directory = configured
    else:
        directory = spoolFor(resolveRoot(arguments.maildir, arguments.config))
    spool = HookSpool(directory)
    if arguments.hooksAction == "list":
        unusable: list[tuple[str, str]] = []
        jobs = spool.deadJobs(unusable) if arguments.dead else spool.pendingJobs(unusable)
        for path, why in unusable:
            writeText(err, f"mailharbor: {cleanText(path)} is not a usable hook job ({cleanText(why)}); not listed\n")
        if arguments.json:
            writeText(out, json.dumps([job.asJSON() for job in jobs], indent=2) + "\n")
        elif not jobs:
            writeText(out, f"No {'dead' if arguments.dead else 'pending'} hook jobs in {cleanText(directory)}.\n")
        else:
            rows = [("JOB", "HOOK", "ATTEMPTS", "FAILED" if arguments.dead else "NEXT", "RECIPIENT", "ERROR")]
            rows += [
                (
                    cleanText(job.id),
                    cleanText(job.hook),
                    str(job.attempts),
                    localTime(job.due),
                    cleanText(job.event.recipient),
                    cleanText(job.error or "-"),
                )
                for job in jobs
            ]
            writeText(out, alignColumns(rows, set()))
        return 1 if unusable else 0
    return _retryJobs(spool, arguments, now, out, err)


def _configuredSpool(config: str) -> str | None:
    """
    The configuration file's C{hook_spool}, if it sets one: read alone,
    as L{resolveRoot} reads C{maildir}.

    @raise CommandError: with status 2 if it is unusable.
    """
    try:
        spool = loadFile(config).get("hook_spool")
    except ConfigError as e:
        raise CommandError(f"{e.problem} (--config)", status=2) from None
    if spool is None:
        return None
    if not isinstance(spool, str) or not spool:
        raise CommandError(f"{config}: hook_spool: must be the path of a directory", status=2)
    return os.path.abspath(spool)


@contextmanager
def _asOwnerOf(directory: str) -> Iterator[None]:
    """
    Run as the owner of C{directory} while root: the job files root writes
    into a spool that belongs to the server's user (twistd's C{--uid})
    must be that user's too, or the server could not read them.
    """
    try:
        info = os.stat(directory)
    except OSError:
        info = None
    if os.geteuid() != 0 or info is None or info.st_uid == 0:
        yield
        return
    gid = os.getegid()
    os.setegid(info.st_gid)
    os.seteuid(info.st_uid)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(gid)


def _retryJobs(spool: Any, arguments: argparse.Namespace, now: float, out: IO[str], err: IO[str]) -> int:
    with _asOwnerOf(spool.directory):
        return _retry(spool, arguments, now, out, err)


def _retry(spool: Any, arguments: argparse.Namespace, now: float, out: IO[str], err: IO[str]) -> int:
    jobIDs = [job.id for job in spool.deadJobs()] if arguments.all else arguments.jobs
    revived = []
    status = 0
    for jobID in jobIDs:
        try:
            revived.append(spool.revive(jobID, now))
        except KeyError:
            why = "is pending, not dead" if spool.isPending(jobID) else "is not a dead hook job"
            writeText(err, f"mailharbor: {cleanText(jobID)} {why}\n")
            status = 1
    if arguments.json:
        writeText(out, json.dumps([job.id for job in revived], indent=2) + "\n")
    elif revived:
        writeText(
            out,
            f"Requeued {plural(len(revived), 'hook job')}; a running "
            f"server starts them within {RESCAN_INTERVAL:g} seconds.\n",
        )
    elif arguments.all:
        writeText(out, "No dead hook jobs.\n")
    return status


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
