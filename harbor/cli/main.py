# -*- test-case-name: harbor.test.test_cli -*-
"""
Run the C{mailharbor} command: parse the command line, call the chosen
sub-command, and turn whatever goes wrong into a one-line message and an
exit status.

Every failure ends the command with a one-line message on standard error
and a non-zero status, never a traceback: 1 when the store or a message is
missing or unusable, 2 for bad usage or an unusable configuration, 130
when interrupted.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import redirect_stderr, redirect_stdout
from typing import IO

from harbor.cli.commands import CommandError
from harbor.cli.formatting import writeText
from harbor.cli.parser import buildParser
from harbor.store.reader import StoreError

__all__ = ["main"]


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
        writeText(err, f"mailharbor: {e}\n")
        return e.status if isinstance(e, CommandError) else 1
    except BrokenPipeError:
        _discardOutput(out)
        return 1
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        writeText(err, f"mailharbor: {where}{e.strerror or e}\n")
        return 1
    except KeyboardInterrupt:
        return 130


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
