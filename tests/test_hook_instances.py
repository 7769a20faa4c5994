"""
End-to-end tests of several MailHarbor processes sharing one Maildir root
and its hook spool: real C{twistd -n mailharbor} instances (and workers),
a slow command hook that appends each call's delivery id to a file, and a
backlog of mail sent quickly.  Each message must reach the hook exactly
once; a failing hook is tried exactly its C{attempts}; an instance killed
with SIGKILL loses nothing.
"""

from __future__ import annotations

import io
import json
import os
import re
import smtplib
import threading
from collections import Counter
from collections.abc import Sequence

from twisted.trial.unittest import TestCase

from tests._e2e import (
    CLIENT_TIMEOUT,
    DOMAIN,
    TwistdProcess,
    inThread,
    pollUntil,
    startTwistdServer,
)

MESSAGE = b"From: Sender <sender@remote.example>\r\nSubject: Backlog\r\n\r\nHi!\r\n"
_STORED = re.compile(rb"stored as (\S+)")

# Sleeps, then appends one line, its delivery id, with O_APPEND (>>): one
# short write, so lines of concurrent calls never mix.
SLOW_HOOK = 'sleep 0.2; printf "%s %s\\n" "$MAILHARBOR_DELIVERY_ID" "$PPID" >> "$0"'
FAILING_HOOK = 'printf "%s %s\\n" "$MAILHARBOR_DELIVERY_ID" "$PPID" >> "$0"; exit 1'


def sendMany(port: int, count: int, connections: int = 4) -> list[str]:
    """
    Send C{count} messages to the server at C{port} over a few sessions at
    once, several transactions each (blocking: call it in a thread).

    @return: The ids of the stored messages, from the 250 replies.
    """
    stored: list[str] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def session(share: int) -> None:
        try:
            with smtplib.SMTP("127.0.0.1", port, local_hostname="client.example", timeout=CLIENT_TIMEOUT) as s:
                for _ in range(share):
                    s.mail("sender@remote.example")
                    s.rcpt(f"alice@{DOMAIN}")
                    code, text = s.data(MESSAGE)
                    match = _STORED.search(text)
                    if code != 250 or match is None:
                        raise AssertionError(f"not stored: {code} {text!r}")
                    with lock:
                        stored.append(match.group(1).decode("ascii"))
        except BaseException as e:  # noqa: BLE001 -- reported below, in the test's thread
            errors.append(e)

    shares = [count // connections + (1 if n < count % connections else 0) for n in range(connections)]
    threads = [threading.Thread(target=session, args=(share,)) for share in shares]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return stored


class SharedSpoolTests(TestCase):
    """
    Real instances, one Maildir root and one hook spool.
    """

    timeout = 120

    def setUp(self) -> None:
        self.root = os.path.abspath(self.mktemp())
        self.calls = os.path.abspath(self.mktemp())
        self.spool = os.path.join(self.root, ".hooks")

    def config(self, script: str, settings: str = "") -> str:
        """
        A configuration file with one command hook, C{h}, running
        C{script} with the calls file as C{$0}.
        """
        path: str = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write(
                "[[hook]]\n"
                'name = "h"\n'
                'kind = "command"\n'
                f"command = {json.dumps(['/bin/sh', '-c', script, self.calls])}\n" + settings
            )
        return path

    async def instance(self, config: str, *options: str) -> tuple[TwistdProcess, int]:
        """
        Start a real C{twistd mailharbor} on the shared root.
        """
        return await startTwistdServer(self, self.root, serviceArguments=["--config", config, *options])

    def delivered(self) -> list[tuple[str, str]]:
        """
        Each hook call so far: its delivery id and the pid that ran it.
        """
        try:
            with open(self.calls) as f:
                lines = f.read().splitlines()
        except FileNotFoundError:
            return []
        calls = []
        for line in lines:
            deliveryID, pid = line.split()
            calls.append((deliveryID, pid))
        return calls

    def spoolEmpty(self) -> bool:
        """
        Whether no job is pending or claimed.
        """
        pending = os.listdir(os.path.join(self.spool, "pending"))
        claimed = os.path.join(self.spool, "claimed")
        held = [name for entry in os.listdir(claimed) if os.path.isdir(os.path.join(claimed, entry))
                for name in os.listdir(os.path.join(claimed, entry))]
        return not pending and not held

    def assertEachOnce(self, stored: Sequence[str]) -> None:
        """
        Every stored message reached the hook, each exactly once.
        """
        counts = Counter(deliveryID for deliveryID, _ in self.delivered())
        self.assertEqual(sorted(counts), sorted(f"{id},h" for id in stored))
        self.assertEqual({n for n in counts.values()}, {1}, [k for k, n in counts.items() if n > 1][:5])

    async def test_backlogOncePerMessage(self) -> None:
        """
        Two instances, each sent more mail than one window holds, share
        the backlog: every message reaches the hook exactly once, by its
        delivery id, and both instances ran the hook.
        """
        config = self.config(SLOW_HOOK, "max_in_flight = 8\n")
        (_, firstPort), (_, secondPort) = [await self.instance(config) for _ in range(2)]
        sent = await inThread(lambda: sendMany(firstPort, 300) + sendMany(secondPort, 300))
        self.assertEqual(len(sent), 600)
        await pollUntil(lambda: len(self.delivered()) >= 600 and self.spoolEmpty(), "the backlog drains", 90)
        self.assertEachOnce(sent)
        self.assertEqual(len({pid for _, pid in self.delivered()}), 2)

    async def test_attemptsExact(self) -> None:
        """
        A hook that always fails is tried exactly its C{attempts} for each
        message, between two instances; C{hooks retry --all} gives each
        exactly its C{attempts} again.
        """
        from harbor.cli import main

        config = self.config(FAILING_HOOK, "attempts = 3\nbackoff = 0.2\nmax_backoff = 0.2\n")
        (_, firstPort), (_, secondPort) = [await self.instance(config) for _ in range(2)]
        sent = await inThread(lambda: sendMany(firstPort, 5, 1) + sendMany(secondPort, 5, 1))
        dead = os.path.join(self.spool, "dead")

        def allDead(attempts: int) -> bool:
            return len(os.listdir(dead)) == len(sent) and len(self.delivered()) >= attempts * len(sent)

        await pollUntil(lambda: allDead(3), "every job is a dead letter")
        self.assertEqual(Counter(Counter(i for i, _ in self.delivered()).values()), {3: len(sent)})
        self.assertEqual(main(["hooks", "retry", "--all", "--maildir", self.root], io.StringIO()), 0)
        # A running server looks at the spool again within 30 seconds.
        await pollUntil(lambda: allDead(6), "every job is a dead letter again", 45)
        self.assertEqual(Counter(Counter(i for i, _ in self.delivered()).values()), {6: len(sent)})

    async def test_killedInstanceTakenOver(self) -> None:
        """
        An instance killed with SIGKILL in the middle of its backlog loses
        nothing: the other takes over its claims, and every message is
        handed to the hook, more than once only if its call was running
        when the first died.
        """
        config = self.config(SLOW_HOOK, "max_in_flight = 4\n")
        (first, firstPort), (second, _) = [await self.instance(config) for _ in range(2)]
        sent = await inThread(sendMany, firstPort, 200)
        await pollUntil(lambda: len(self.delivered()) >= 20, "the first instance is under way")
        first.transport.signalProcess("KILL")
        await first.protocol.ended
        # The second takes over at its next look at the spool (every 30 s).
        await pollUntil(lambda: self.spoolEmpty() and len({i for i, _ in self.delivered()}) >= 200, "all are handed over", 60)
        counts = Counter(i for i, _ in self.delivered())
        self.assertEqual(sorted(counts), sorted(f"{id},h" for id in sent))
        self.assertLessEqual(sum(n - 1 for n in counts.values()), 4, "only the calls in flight at the kill")
        self.assertIn(str(second.transport.pid), {pid for _, pid in self.delivered()})

    async def test_workers(self) -> None:
        """
        With C{--workers 2} and a hook, both processes take mail and run
        hooks from the one spool: every message reaches the hook once.
        """
        config = self.config(SLOW_HOOK, "max_in_flight = 8\n")
        _, port = await self.instance(config, "--workers", "2")
        sent = await inThread(sendMany, port, 300, 8)
        await pollUntil(lambda: len(self.delivered()) >= 300 and self.spoolEmpty(), "the backlog drains", 60)
        self.assertEachOnce(sent)
