"""
MailHarbor inside an asyncio application: one event loop runs both the mail
server and the application's own work.

Twisted's asyncio reactor is installed on the application's loop before
anything imports the reactor; MailHarbor is then built with
harbor.api.buildService and given coroutines:

 - authenticate(user, password, client) decides AUTH (here: one demo user;
   the short sleep stands for a database or directory lookup);
 - a new-message hook hands each stored copy to the application through an
   asyncio.Queue and waits until the application has dealt with it, so a
   message the application never finished is handed over again (hooks run
   at least once);
 - a policy coroutine refuses mail to noreply@ at RCPT.

Coroutines run as asyncio tasks on the same loop, so they await asyncio
things (asyncio.sleep, queues, aiohttp, asyncpg); a Twisted Deferred is
awaited there as d.asFuture(loop).  Besides the server, the application
consumes the queue and prints a line per message, and prints a heartbeat.
SIGINT or SIGTERM stops it: the server finishes the messages it is
receiving, then the application's tasks end.

AUTH is offered only under TLS, as with MailHarbor's users file:

    python examples/asyncio_app.py --port 2525 --maildir ./Maildir \\
        --domain example.com --user demo --password demo \\
        --tls-cert cert.pem --tls-key key.pem

For a quick try on loopback without a certificate, --allow-plaintext-auth
sets MailHarbor's allow_plaintext_auth (never on a real network).
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import os
import signal
import sys
from typing import Any, cast


def parseArguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="MailHarbor in an asyncio application")
    parser.add_argument("--port", type=int, default=2525, help="TCP port on 127.0.0.1 (default 2525)")
    parser.add_argument("--maildir", default="Maildir", help="Maildir root (default ./Maildir)")
    parser.add_argument("--domain", default="example.com", help="domain to receive mail for")
    parser.add_argument("--user", default="demo", help="the demo user name for AUTH")
    parser.add_argument("--password", default="demo", help="the demo user's password")
    parser.add_argument("--tls-cert", help="certificate (PEM) for STARTTLS")
    parser.add_argument("--tls-key", help="its private key (PEM)")
    parser.add_argument(
        "--allow-plaintext-auth", action="store_true", help="offer AUTH without TLS (loopback tests only)"
    )
    parser.add_argument("--heartbeat", type=float, default=30, help="seconds between heartbeat lines")
    arguments = parser.parse_args(argv)
    if bool(arguments.tls_cert) != bool(arguments.tls_key):
        parser.error("--tls-cert and --tls-key go together")
    return arguments


def say(text: str) -> None:
    print(f"asyncio app: {text}", flush=True)


async def application(arguments: argparse.Namespace, reactor: Any) -> None:
    """
    Run MailHarbor and the application's own tasks until SIGINT or
    SIGTERM.
    """
    # Imported only now: the asyncio reactor is installed.
    from twisted.internet.defer import Deferred

    from harbor.api import Config, NewMessage, PolicyRequest, Refuse, buildService

    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue[tuple[NewMessage, asyncio.Future[None]]] = asyncio.Queue(maxsize=100)
    handled = 0

    async def authenticate(user: str, password: str, client: str) -> bool:
        await asyncio.sleep(0.01)
        good = hmac.compare_digest(user.encode(), arguments.user.encode()) & hmac.compare_digest(
            password.encode(), arguments.password.encode()
        )
        say(f"login {'accepted' if good else 'refused'} for {user} from {client}")
        return good

    async def policy(request: PolicyRequest) -> Refuse | None:
        if request.stage == "rcpt" and request.recipients[0].split("@")[0] == "noreply":
            return Refuse(550, "5.1.1", "This address does not receive mail")
        return None

    async def stored(message: NewMessage) -> None:
        done: asyncio.Future[None] = loop.create_future()
        await inbox.put((message, done))
        await done
        say(f"hook finished for {message.id}")

    async def consume() -> None:
        nonlocal handled
        while True:
            message, done = await inbox.get()
            subject = message.message["Subject"] or "(no subject)"
            user = f" (user {message.user})" if message.user else ""
            say(f"message for {message.recipient} from <{message.sender}>{user}: {subject}")
            handled += 1
            done.set_result(None)

    async def heartbeat() -> None:
        while True:
            await asyncio.sleep(arguments.heartbeat)
            say(f"{handled} messages handled so far")

    settings: dict[str, Any] = {
        "port": [f"tcp:{arguments.port}:interface=127.0.0.1"],
        "domain": [arguments.domain],
        "maildir": os.path.abspath(arguments.maildir),
        "hostname": "localhost",
        "allow_plaintext_auth": arguments.allow_plaintext_auth,
    }
    if arguments.tls_cert:
        settings.update(tls_cert=arguments.tls_cert, tls_key=arguments.tls_key)
    service = buildService(
        Config.fromMapping(settings), reactor, hooks=[stored], policy=policy, authenticate=authenticate
    )
    service.privilegedStartService()
    service.startService()

    stopping = asyncio.Event()
    for signalNumber in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signalNumber, stopping.set)
    tasks = [asyncio.create_task(consume()), asyncio.create_task(heartbeat())]
    say(f"receiving mail for {arguments.domain} on 127.0.0.1 port {arguments.port}")
    await stopping.wait()
    say("stopping")
    stopped: Deferred[None] = service.stopService()
    await stopped.asFuture(loop)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    say("stopped")


def main(argv: list[str]) -> int:
    arguments = parseArguments(argv)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    # Before anything imports twisted.internet.reactor.
    from twisted.internet import asyncioreactor

    asyncioreactor.install(loop)
    from twisted.internet import reactor as installed

    reactor = cast(asyncioreactor.AsyncioSelectorReactor, installed)
    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
        textFileLogObserver,
    )

    # MailHarbor's log (one line per connection and per message) to
    # standard error; the application's own lines go to standard output.
    predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)
    observer = FilteringLogObserver(textFileLogObserver(sys.stderr), [predicate])
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
    outcome: list[asyncio.Task[None]] = []

    def start() -> None:
        def ended(task: asyncio.Task[None]) -> None:
            outcome.append(task)
            reactor.stop()

        loop.create_task(application(arguments, reactor)).add_done_callback(ended)

    reactor.callWhenRunning(start)
    # The reactor runs the loop (and its thread pool, which MailHarbor's
    # disk work uses); the application handles the signals itself.
    reactor.run(installSignalHandlers=False)
    if outcome and not outcome[0].cancelled() and outcome[0].exception() is not None:
        error = outcome[0].exception()
        print(f"asyncio app: failed: {error!r}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
