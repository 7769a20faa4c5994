"""
End-to-end tests of the installed C{twistd mailharbor}: a real twistd
subprocess, started from the environment's C{bin/} in a directory outside
the checkout, so only the installed package and its plugin can serve it.
"""

from __future__ import annotations

import mailbox
import os
import smtplib

from twisted.internet.defer import DeferredList
from twisted.trial.unittest import TestCase

from harbor.test._support import files
from tests._e2e import (
    CLIENT_TIMEOUT,
    DOMAIN,
    LOOPBACK_PORT,
    TwistdProcess,
    inThread,
    pollUntil,
    runTwistd,
    sendOne,
    startTwistdServer,
    twistdPath,
)

MESSAGE = b"Subject: from twistd\r\n\r\nHello over a real twistd.\r\n"



class TwistdTests(TestCase):
    """
    C{twistd -n mailharbor} in a subprocess.
    """

    timeout = 120

    async def test_helpListsPlugin(self) -> None:
        """
        C{twistd --help} lists the mailharbor command from the installed
        plugin.
        """
        cwd = os.path.abspath(self.mktemp())
        os.makedirs(cwd)
        process = TwistdProcess([twistdPath(), "--help"], cwd)
        self.addCleanup(process.stop)
        code = await process.wait()
        self.assertEqual(code, 0, process.output)
        commands = [line.split() for line in process.output.splitlines()]
        self.assertIn(b"mailharbor", [words[0] for words in commands if words], process.output)

    async def test_receivesMail(self) -> None:
        """
        The subprocess server accepts a message over SMTP and stores it in
        the domain's Maildir.
        """
        root = os.path.abspath(self.mktemp())
        process, port = await startTwistdServer(self, root)
        self.assertEqual(await inThread(sendOne, port, "alice@example.com", MESSAGE), {})
        [name] = files(root, DOMAIN, "new")
        with open(os.path.join(root, DOMAIN, "new", name), "rb") as f:  # noqa: ASYNC230 (a small local file)
            data = f.read()
        self.assertTrue(data.startswith(b"Return-Path: <sender@remote.example>\n"), data[:200])
        self.assertTrue(data.endswith(MESSAGE.replace(b"\r\n", b"\n")), data)
        await process.stop()

    async def assertManyClientsStored(self, serviceArguments: list[str]) -> None:
        """
        Sixteen smtplib clients sending five messages each at the same time
        all get 250, and a mail reader finds every message whole in new/
        and nothing left in tmp/.
        """
        root = os.path.abspath(self.mktemp())
        process, port = await startTwistdServer(self, root, serviceArguments=serviceArguments)

        def sendFive(client: int) -> list[tuple[int, bytes]]:
            replies = []
            with smtplib.SMTP("127.0.0.1", port, local_hostname="client.example", timeout=CLIENT_TIMEOUT) as s:
                for n in range(5):
                    s.mail("sender@remote.example")
                    s.rcpt("alice@example.com")
                    replies.append(s.data(b"Subject: %d-%d\r\n\r\nbody %d-%d\r\n" % (client, n, client, n)))
            return replies

        results = await DeferredList([inThread(sendFive, c) for c in range(16)], fireOnOneErrback=True)
        codes = [code for _, replies in results for code, _ in replies]
        self.assertEqual(codes, [250] * 80)
        box = mailbox.Maildir(os.path.join(root, DOMAIN), factory=None, create=False)
        subjects = sorted(m["Subject"] for m in box)
        self.assertEqual(subjects, sorted(f"{c}-{n}" for c in range(16) for n in range(5)))
        for m in box:
            self.assertEqual(m.get_payload(), f"body {m['Subject']}\n")
        self.assertEqual(os.listdir(os.path.join(root, DOMAIN, "tmp")), [])
        await process.stop()

    async def test_manyClientsAtOnce(self) -> None:
        """
        Messages ending together are committed in parallel lanes, in
        batches (the default, each file fsynced), and every one is stored
        whole.
        """
        await self.assertManyClientsStored([])

    async def test_manyClientsWithoutGroupCommit(self) -> None:
        """
        With group_commit = false, the boolean of old configuration files
        (now "off": each message committed on its own), every message is
        still stored whole.
        """
        config = os.path.abspath(self.mktemp())
        with open(config, "w") as f:  # noqa: ASYNC230 (a small local file)
            f.write("group_commit = false\n")
        await self.assertManyClientsStored(["--config", config])

    async def assertUsageError(self, arguments: list[str], option: bytes) -> None:
        """
        twistd with these mailharbor arguments exits non-zero without
        listening, and its output names C{option}.
        """
        process = await runTwistd(self, arguments)
        code = await process.wait()
        self.assertNotEqual(code, 0, process.output)
        self.assertIn(option + b":", process.output)
        self.assertNotIn(b"MailHarbor listening on", process.output)

    async def test_badPort(self) -> None:
        """
        An invalid --port fails before anything listens, naming --port.
        """
        root = os.path.abspath(self.mktemp())
        await self.assertUsageError(
            ["--port", "nonsense:1", "--domain", DOMAIN, "--maildir", root], b"--port"
        )
        self.assertFalse(os.path.exists(root))

    async def test_badDomain(self) -> None:
        """
        An invalid --domain fails before anything listens, naming --domain.
        """
        root = os.path.abspath(self.mktemp())
        await self.assertUsageError(
            ["--port", LOOPBACK_PORT, "--domain", "bad domain", "--maildir", root], b"--domain"
        )
        self.assertFalse(os.path.exists(root))

    async def test_missingDomain(self) -> None:
        """
        Without any --domain, twistd fails before anything listens, naming
        --domain.
        """
        root = os.path.abspath(self.mktemp())
        await self.assertUsageError(["--port", LOOPBACK_PORT, "--maildir", root], b"--domain")
        self.assertFalse(os.path.exists(root))

    async def test_logfile(self) -> None:
        """
        With --logfile, the transaction log line of a stored message is
        written to that file.
        """
        root = os.path.abspath(self.mktemp())
        logDirectory = os.path.abspath(self.mktemp())
        os.makedirs(logDirectory)
        logfile = os.path.join(logDirectory, "smtp.log")
        process, port = await startTwistdServer(self, root, logfile=logfile)
        self.assertEqual(await inThread(sendOne, port, "alice@example.com", MESSAGE), {})

        def transactionLines() -> list[bytes]:
            with open(logfile, "rb") as f:
                return [
                    line
                    for line in f.read().splitlines()
                    if b"from=<" in line and b"result=stored" in line
                ]

        await pollUntil(transactionLines, "the transaction is logged")
        [line] = transactionLines()
        self.assertIn(b"from=<sender@remote.example>", line)
        self.assertIn(b"alice@example.com", line)
        [name] = files(root, DOMAIN, "new")
        self.assertIn(name.split(",")[0].encode(), line)
        await process.stop()
