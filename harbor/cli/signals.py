# -*- test-case-name: harbor.test.test_drain -*-
"""
C{mailharbor drain}: tell a running server, found by its pidfile, to
drain (SIGUSR2), and optionally wait until it has stopped.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from typing import IO

from harbor.cli.commands import CommandError
from harbor.drain import DRAIN_SIGNAL


def readPidfile(path: str) -> int:
    """
    The process id in a twistd pidfile.

    @raise CommandError: saying what is wrong with it.
    """
    try:
        with open(path, encoding="ascii") as f:
            text = f.read().strip()
    except FileNotFoundError:
        raise CommandError(f"{path}: no such pidfile; is MailHarbor running (twistd --pidfile)?") from None
    except OSError as e:
        raise CommandError(f"{path}: cannot read the pidfile: {e.strerror}") from None
    if not text.isdigit() or int(text) <= 0:
        raise CommandError(f"{path}: not a pidfile (it holds {text[:40]!r})")
    return int(text)


def alive(pid: int) -> bool:
    """
    Whether process C{pid} exists (whoever owns it).
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def drainCommand(
    arguments: argparse.Namespace,
    out: IO[str],
    err: IO[str],
    now: float,
    kill: Callable[[int, int], None] = os.kill,
    isAlive: Callable[[int], bool] = alive,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> int:
    """
    C{mailharbor drain}: send the drain signal to the process of the
    pidfile; with C{--wait}, wait until it has exited.
    """
    pid = readPidfile(arguments.pidfile)
    try:
        kill(pid, DRAIN_SIGNAL)
    except ProcessLookupError:
        raise CommandError(f"{arguments.pidfile}: process {pid} is not running (a stale pidfile?)") from None
    except PermissionError:
        raise CommandError(f"process {pid}: not allowed to signal it (run as its user or root)") from None
    out.write(f"Draining MailHarbor (pid {pid})\n")
    if arguments.wait is None:
        return 0
    deadline = clock() + arguments.wait
    while isAlive(pid):
        if clock() >= deadline:
            raise CommandError(f"process {pid} still running after {arguments.wait:g}s", status=3)
        sleep(0.1)
    out.write(f"MailHarbor (pid {pid}) has stopped\n")
    return 0


def addDrain(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """
    Add C{mailharbor drain}.
    """
    draining = commands.add_parser(
        "drain",
        help="make a running server leave its balancer's pool and stop once its sessions end",
        description=(
            "Send SIGUSR2 to the server whose pid is in PIDFILE: /readyz fails at once, the "
            "SMTP ports close drain_delay seconds later, the open sessions finish, and the "
            "server stops (for a rolling restart)."
        ),
    )
    draining.add_argument(
        "--pidfile", default="twistd.pid", help="the pidfile twistd wrote (twistd --pidfile) [default: twistd.pid]"
    )
    draining.add_argument(
        "--wait",
        type=float,
        nargs="?",
        const=120.0,
        default=None,
        metavar="SECONDS",
        help="wait until the server has stopped, for up to SECONDS (120 if not given); exit 3 if it has not",
    )
    draining.set_defaults(command=drainCommand)
