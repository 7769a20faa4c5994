"""
End-to-end tests of the commit lanes: smtplib clients in several sessions
at once send to the real service over loopback, small and large messages
to two domains, and a mail reader (L{mailbox.Maildir}) finds every
message that got a 250 whole in C{new/}, and nothing else.
"""

from __future__ import annotations

import hashlib
import mailbox
import os
import smtplib

from twisted.internet.defer import DeferredList
from twisted.trial.unittest import TestCase

from tests._e2e import DOMAIN, RunningServer, inThread, startServer

OTHER = "example.org"
SESSIONS = 8
PER_SESSION = 6
CLIENT_TIMEOUT = 30


def body(session: int, n: int) -> bytes:
    """
    The body of one message: every sixth a large one (past the 64 KiB a
    message is kept in memory for), the others small; its last line names
    the digest of the lines before, so a partial file cannot pass.
    """
    lines = 3000 if n == 5 else 3
    text = b"".join(b"line %d of message %d-%d\r\n" % (i, session, n) for i in range(lines))
    return text + b"digest " + hashlib.sha256(text).hexdigest().encode() + b"\r\n"


class CommitLanesTests(TestCase):
    """
    Messages from many sessions at once, through the commit lanes.
    """

    async def assertAllStored(self, *settings: str) -> RunningServer:
        """
        With the configuration C{settings}, every message from
        L{SESSIONS} concurrent sessions gets 250, is found whole in its
        domain's C{new/}, and C{tmp/} is left empty.
        """
        config = os.path.abspath(self.mktemp())
        with open(config, "w") as f:  # noqa: ASYNC230 (a small local file)
            f.write("".join(line + "\n" for line in settings))
        server = await startServer(self, "--config", config, domains=(DOMAIN, OTHER))

        def send(session: int) -> list[tuple[str, int]]:
            replies = []
            with smtplib.SMTP("127.0.0.1", server.port, local_hostname="client.example", timeout=CLIENT_TIMEOUT) as s:
                for n in range(PER_SESSION):
                    domain = DOMAIN if (session + n) % 2 else OTHER
                    s.mail("sender@remote.example")
                    s.rcpt(f"alice@{domain}")
                    message = b"Subject: %d-%d\r\n\r\n" % (session, n) + body(session, n)
                    code, _ = s.data(message)
                    replies.append((domain, code))
            return replies

        results = await DeferredList([inThread(send, c) for c in range(SESSIONS)], fireOnOneErrback=True)
        replies = [reply for _, sessionReplies in results for reply in sessionReplies]
        self.assertEqual([code for _, code in replies], [250] * (SESSIONS * PER_SESSION))
        found = {}
        for domain in (DOMAIN, OTHER):
            box = mailbox.Maildir(server.maildirPath(domain), factory=None, create=False)
            for message in box:
                subject = message["Subject"]
                session, n = (int(part) for part in subject.split("-"))
                payload = message.get_payload()
                assert isinstance(payload, str)
                self.assertEqual(payload.encode(), body(session, n).replace(b"\r\n", b"\n"))
                found[subject] = domain
            self.assertEqual(server.listing("tmp", domain), [])
        self.assertEqual(
            found,
            {f"{s}-{n}": DOMAIN if (s + n) % 2 else OTHER for s in range(SESSIONS) for n in range(PER_SESSION)},
        )
        return server

    async def test_defaults(self) -> None:
        """
        With the default lanes, batches and C{"fsync"} mode, every message
        is stored whole.
        """
        await self.assertAllStored()

    async def test_fewLanesSmallBatches(self) -> None:
        """
        With two lanes of at most three messages, so that messages wait
        and go in several batches, every message is stored whole.
        """
        server = await self.assertAllStored("commit_lanes = 2", "commit_batch = 3")
        config = server.service.config
        self.assertEqual((config.groupCommit, config.commitLanes, config.commitBatch), ("fsync", 2, 3))

    async def test_syncfsAndOff(self) -> None:
        """
        The C{"syncfs"} opt-in and C{"off"} store every message whole too.
        """
        await self.assertAllStored('group_commit = "syncfs"')
        await self.assertAllStored('group_commit = "off"', "commit_lanes = 1")
