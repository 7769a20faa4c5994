"""
Run MailHarbor inside your own program, with a new-message hook written in
Python and registered in code rather than in the configuration file.

    python examples/embedded.py --port 2525 --domain example.com --maildir ./Maildir

takes the same options as C{twistd mailharbor} (C{--config} included),
stores mail exactly as the server does, and prints one line per stored
copy once it is safely on disk.  The hook runs at least once per copy:
if this program stops before a hook has finished, it runs again at the
next start.
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import react
from twisted.logger import globalLogBeginner, textFileLogObserver
from twisted.python import usage

from harbor.hooks import NewMessage, PythonHook


async def announce(event: NewMessage) -> None:
    """
    Print who sent what to whom.

    A hook may be a plain function, return a L{Deferred}, or, like this one,
    be a coroutine; raising makes MailHarbor retry it later.  C{message}
    reads and parses the stored file on first use.
    """
    subject = event.message["Subject"] or "(no subject)"
    print(
        f"announce: {event.sender or '<>'} -> {event.recipient}: {subject} [{event.id}]",
        flush=True,
    )


async def main(reactor: Any, *argv: str) -> None:
    """
    Start MailHarbor with the hook and run until interrupted.
    """
    from harbor.tap import Options, makeService

    options = Options()
    try:
        options.parseOptions(list(argv))
    except usage.UsageError as e:
        raise SystemExit(f"{sys.argv[0]}: {e}") from None
    service = makeService(options, reactor, extraHooks=[PythonHook(announce, "announce")])
    service.privilegedStartService()
    service.startService()
    stopped: Deferred[None] = Deferred()
    reactor.addSystemEventTrigger("before", "shutdown", lambda: service.stopService())
    reactor.addSystemEventTrigger("after", "shutdown", stopped.callback, None)
    await stopped


if __name__ == "__main__":
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])
    react(main, sys.argv[1:])
