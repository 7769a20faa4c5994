# -*- test-case-name: harbor.test.test_cli -*-
"""
C{mailharbor}'s command line: the argparse parser, one small function per
sub-command, and the argument types its options share (times, domains,
counts).

Each sub-command's parser sets C{command} to the function in
L{harbor.cli.commands} that runs it, so that L{harbor.cli.main.main} only
has to call it.
"""

from __future__ import annotations

import argparse
import re
from datetime import datetime

from attrs import frozen

from harbor._syntax import ConfigError, normaliseDomain
from harbor.cli.commands import (
    checkConfigCommand,
    exportCommand,
    hooksCommand,
    listCommand,
    passwdCommand,
    purgeCommand,
    showCommand,
    statsCommand,
)
from harbor.cli.signals import addDrain
from harbor.config import DEFAULT_MAILDIR
from harbor.hooks.config import RESCAN_INTERVAL

__all__ = ["Moment", "buildParser", "parseMoment"]

_AGE = re.compile(r"^\s*([0-9]+)\s*([smhdw])\s*$")
_AGE_UNITS = {"s": 1, "m": 60, "h": 60 * 60, "d": 24 * 60 * 60, "w": 7 * 24 * 60 * 60}
_MOMENT_HELP = (
    "an ISO date or time (2026-11-01, 2026-11-01T12:00; local time) or an age (30m, 2h, 7d, 2w)"
)


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
    # The order of these calls is the order of the commands in --help.
    _addList(commands, source, jsonOutput)
    _addShow(commands, source, jsonOutput)
    _addExport(commands, source)
    _addPurge(commands, source)
    _addStats(commands, source, jsonOutput)
    _addCheckConfig(commands, jsonOutput)
    _addPasswd(commands)
    _addHooks(commands, jsonOutput)
    addDrain(commands)
    return parser


def _addList(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    source: argparse.ArgumentParser,
    jsonOutput: argparse.ArgumentParser,
) -> None:
    """
    Add C{mailharbor list} and its filters.
    """
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
    listing.set_defaults(command=listCommand)


def _addShow(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    source: argparse.ArgumentParser,
    jsonOutput: argparse.ArgumentParser,
) -> None:
    """
    Add C{mailharbor show}.
    """
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
    showing.set_defaults(command=showCommand)


def _addExport(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    source: argparse.ArgumentParser,
) -> None:
    """
    Add C{mailharbor export}.
    """
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
    exporting.set_defaults(command=exportCommand)


def _addPurge(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    source: argparse.ArgumentParser,
) -> None:
    """
    Add C{mailharbor purge}.
    """
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
    purging.set_defaults(command=purgeCommand)


def _addStats(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    source: argparse.ArgumentParser,
    jsonOutput: argparse.ArgumentParser,
) -> None:
    """
    Add C{mailharbor stats}.
    """
    statistics = commands.add_parser(
        "stats",
        parents=[source, jsonOutput],
        help="count the stored messages and their size, per domain",
        description=(
            "Count the stored messages and add up their sizes per domain, with the number "
            "not yet seen by a mail reader (in new/) and the number in cur/."
        ),
    )
    statistics.set_defaults(command=statsCommand)


def _addCheckConfig(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    jsonOutput: argparse.ArgumentParser,
) -> None:
    """
    Add C{mailharbor check-config}, which passes the options after its
    file on to the server's own option parser.
    """
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
    checking.set_defaults(command=checkConfigCommand)


def _addPasswd(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """
    Add C{mailharbor passwd}.
    """
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
    password.set_defaults(command=passwdCommand)


def _addHooks(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    jsonOutput: argparse.ArgumentParser,
) -> None:
    """
    Add C{mailharbor hooks} and its actions, C{list} and C{retry}, which
    L{harbor.cli.commands.hooksCommand} tells apart by C{hooksAction}.
    """
    hooks = commands.add_parser(
        "hooks",
        help="show the new-message hooks' pending and dead jobs, and retry dead ones",
        description=(
            "Show the jobs of the new-message hooks: those waiting to run "
            "(pending) and those given up on after too many failures "
            "(dead), and put dead ones back to run again."
        ),
    )
    hooks.set_defaults(command=hooksCommand)
    hookSource = _whereOptions(spool=True)
    actions = hooks.add_subparsers(title="actions", metavar="ACTION", required=True)
    _addHooksList(actions, hookSource, jsonOutput)
    _addHooksRetry(actions, hookSource, jsonOutput)


def _addHooksList(
    actions: argparse._SubParsersAction[argparse.ArgumentParser],
    hookSource: argparse.ArgumentParser,
    jsonOutput: argparse.ArgumentParser,
) -> None:
    """
    Add C{mailharbor hooks list}.
    """
    listingJobs = actions.add_parser(
        "list",
        parents=[hookSource, jsonOutput],
        help="list pending jobs, or dead ones with --dead",
        description="List the pending hook jobs, oldest first, or the dead ones with --dead.",
    )
    listingJobs.add_argument("--dead", action="store_true", help="list the dead letters instead")
    listingJobs.set_defaults(hooksAction="list")


def _addHooksRetry(
    actions: argparse._SubParsersAction[argparse.ArgumentParser],
    hookSource: argparse.ArgumentParser,
    jsonOutput: argparse.ArgumentParser,
) -> None:
    """
    Add C{mailharbor hooks retry}: some dead jobs, or C{--all}.
    """
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
        help="take the Maildir root "
        + ("(and hook_spool, if set) " if spool else "")
        + "from this MailHarbor configuration file",
    )
    if spool:
        where.add_argument("--spool", metavar="DIRECTORY", help="the hook spool itself")
    return source


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
