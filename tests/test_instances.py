"""
Two real C{twistd mailharbor} instances sharing one Maildir, each the
first process (PID 1) of a PID namespace of its own and both with the same
C{--hostname}, as two containers would be: every message answered C{250}
is in the Maildir, under the id the reply gave.

Needs root and C{unshare(1)} (util-linux); skipped without them.
"""

from __future__ import annotations

import mailbox
import os
import shutil
import signal
import smtplib
import subprocess
import threading
from typing import cast

from twisted.internet.defer import DeferredList
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, TestCase

from harbor.store.names import parseName
from tests._e2e import (
    CLIENT_TIMEOUT,
    DOMAIN,
    HOSTNAME,
    TwistdProcess,
    inThread,
    pollUntil,
    startTwistdServer,
)

# Messages per client connection, and connections per instance: 3,000 in
# all, a few seconds' work.
PER_CONNECTION = 750
CONNECTIONS = 2
UNSHARE = ("unshare", "--pid", "--fork", "--kill-child")
STORED = b"2.0.0 Ok: stored as "


def _namespacesUsable() -> str | None:
    """
    Why PID namespaces cannot be used here, or L{None} if they can.
    """
    if os.geteuid() != 0:
        return "needs root, for unshare --pid"
    if shutil.which("unshare") is None:
        return "needs unshare(1) from util-linux"
    try:
        probe = subprocess.run([*UNSHARE, "true"], check=False, capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unshare --pid does not work here: {e}"
    if probe.returncode != 0:
        return f"unshare --pid does not work here: {probe.stderr.decode(errors='replace').strip()}"
    return None


def childrenOf(pid: int) -> list[int]:
    """
    The processes whose parent is C{pid}, by their pids as seen from here.
    """
    children = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name, in parentheses, may hold spaces.
        fields = stat[stat.rindex(b")") + 2 :].split()
        if int(fields[1]) == pid:
            children.append(int(entry))
    return children


async def stopInstance(process: TwistdProcess) -> None:
    """
    Stop an instance cleanly: C{unshare} does not pass signals on, so
    SIGTERM goes to twistd itself, and C{unshare} exits with it.
    """
    if process.exited:
        return
    for child in childrenOf(process.transport.pid):
        try:
            os.kill(child, signal.SIGTERM)
        except ProcessLookupError:
            pass
    try:
        await pollUntil(lambda: process.exited, "the instance has stopped after SIGTERM")
    except AssertionError:
        # Then --kill-child passes the end on.
        process.transport.signalProcess("KILL")
        raise


def sendMany(port: int, count: int, tag: str) -> list[bytes]:
    """
    Send C{count} messages over one connection (blocking: call it in a
    thread), and return the id each C{250} reply named.
    """
    ids = []
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.example", timeout=CLIENT_TIMEOUT) as s:
        s.ehlo()
        for n in range(count):
            s.mail("sender@remote.example")
            s.rcpt(f"user@{DOMAIN}")
            code, text = s.data(f"Subject: {tag} {n}\r\n\r\nmessage {tag} {n}\r\n".encode())
            if code != 250 or not text.startswith(STORED):
                raise AssertionError(f"message {tag} {n}: {code} {text!r}")
            ids.append(text[len(STORED) :])
    return ids


class InstancesTests(TestCase):
    """
    Two instances in PID namespaces sharing a Maildir.
    """

    timeout = 180

    def setUp(self) -> None:
        reason = _namespacesUsable()
        if reason is not None:
            raise SkipTest(reason)

    async def test_everyReplyHasItsFile(self) -> None:
        """
        With both instances PID 1 and named alike, thousands of messages
        sent to both at once are all stored: each C{250} reply's id has its
        own file, and C{mailbox} counts one message per reply.
        """
        root = os.path.abspath(self.mktemp())
        instances = []
        for _ in range(2):
            process, port = await startTwistdServer(self, root, wrapper=UNSHARE)
            self.addCleanup(stopInstance, process)
            instances.append((process, port))
        lock = threading.Lock()
        replied: list[bytes] = []

        def client(port: int, tag: str) -> None:
            ids = sendMany(port, PER_CONNECTION, tag)
            with lock:
                replied.extend(ids)

        results = await DeferredList(
            [
                inThread(client, port, f"{index}.{connection}")
                for index, (_, port) in enumerate(instances)
                for connection in range(CONNECTIONS)
            ],
            consumeErrors=True,
        )
        for succeeded, outcome in results:
            if not succeeded:
                cast(Failure, outcome).raiseException()
        total = 2 * CONNECTIONS * PER_CONNECTION
        self.assertEqual(len(replied), total)
        self.assertEqual(len(set(replied)), total, "an id was given twice")

        box = mailbox.Maildir(os.path.join(root, DOMAIN), create=False)
        self.assertEqual(len(box), total)
        stored = {}
        for key in box.iterkeys():
            name = parseName(key)
            assert name is not None
            stored[name.id.encode()] = key
        self.assertEqual(set(stored), set(replied))
        # Both instances were PID 1 and named the same.
        pids = {id.split(b"P", 1)[1].split(b"R", 1)[0] for id in replied}
        hosts = {id.split(b"Q", 1)[1].split(b".", 1)[1] for id in replied}
        self.assertEqual((pids, hosts), ({b"1"}, {HOSTNAME.encode()}))
        bodies = sorted(str(message.get_payload()) for message in box)
        expected = sorted(
            f"message {index}.{connection} {n}\n"
            for index in range(2)
            for connection in range(CONNECTIONS)
            for n in range(PER_CONNECTION)
        )
        self.assertEqual(bodies, expected)
        self.assertEqual(os.listdir(os.path.join(root, DOMAIN, "tmp")), [])
