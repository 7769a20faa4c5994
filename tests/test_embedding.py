"""
MailHarbor used as a library: the API in a test's own reactor, and the
runnable example in examples/ as a real program.
"""

from __future__ import annotations

import os
import re
import smtplib
import sys

from twisted.internet import reactor
from twisted.internet.error import ProcessExitedAlready
from twisted.trial.unittest import TestCase

from harbor.api import Config, NewMessage, PolicyRequest, Refuse, buildService
from tests._e2e import inThread, pollUntil, subprocessEnvironment

EXAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "embed.py")


class EmbeddingTests(TestCase):
    """
    The API and the example.
    """

    timeout = 120

    async def test_api(self) -> None:
        """
        A service built in code stores mail, hands each copy to the hook
        after its 250, and lets the policy refuse at RCPT and before the
        250.
        """
        received: list[NewMessage] = []
        asked: list[PolicyRequest] = []

        def policy(request: PolicyRequest) -> Refuse | None:
            asked.append(request)
            if request.stage == "rcpt" and request.recipients[0] == "closed@example.com":
                return Refuse(550, "5.1.1", "Closed")
            if request.stage == "data" and request.headers is not None and request.headers["Subject"] == "spam":
                return Refuse(554, "5.7.1", "Looks like spam")
            return None

        root = os.path.abspath(self.mktemp())
        config = Config.fromMapping(
            {"port": ["tcp:0:interface=127.0.0.1"], "domain": ["example.com"], "maildir": root}
        )
        service = buildService(config, reactor, hooks=[received.append], policy=policy)
        service.privilegedStartService()
        service.startService()
        self.addCleanup(service.stopService)
        port = next(s for s in service if hasattr(s, "port") and s.port is not None).port.getHost().port

        def send() -> tuple[dict[str, tuple[int, bytes]], int]:
            with smtplib.SMTP("127.0.0.1", port) as client:
                refused = client.sendmail("s@x.org", ["a@example.com", "closed@example.com"], b"Subject: hi\r\n\r\nx\r\n")
                try:
                    client.sendmail("s@x.org", ["a@example.com"], b"Subject: spam\r\n\r\nx\r\n")
                except smtplib.SMTPDataError as e:
                    return refused, e.smtp_code
            return refused, 250

        refused, code = await inThread(send)
        self.assertEqual(refused["closed@example.com"][0], 550)
        self.assertEqual(code, 554)
        await pollUntil(lambda: len(received) == 1, "the hook is called")
        [message] = received
        self.assertEqual((message.recipient, message.sender), ("a@example.com", "s@x.org"))
        self.assertEqual(message.message["Subject"], "hi")
        self.assertEqual(len(os.listdir(os.path.join(root, "example.com", "new"))), 1)
        self.assertEqual([r.stage for r in asked], ["rcpt", "rcpt", "data", "rcpt", "data"])

    async def test_example(self) -> None:
        """
        examples/embed.py runs, receives a message and prints what its hook
        was given; its policy refuses noreply@.
        """
        from twisted.internet.protocol import ProcessProtocol

        class Output(ProcessProtocol):
            data = b""
            ended = False

            def outReceived(self, data: bytes) -> None:
                self.data += data

            errReceived = outReceived

            def processEnded(self, reason: object) -> None:
                self.ended = True

        probe = __import__("socket").socket()
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()
        output = Output()
        cwd = os.path.abspath(self.mktemp())
        os.makedirs(cwd)
        process = reactor.spawnProcess(
            output, sys.executable, [sys.executable, EXAMPLE, str(port)], env=subprocessEnvironment(), path=cwd
        )

        async def stop() -> None:
            try:
                process.signalProcess("TERM")
            except ProcessExitedAlready:
                pass
            await pollUntil(lambda: output.ended, "the example stops")

        self.addCleanup(stop)

        def send() -> dict[str, tuple[int, bytes]]:
            for _ in range(100):
                try:
                    client = smtplib.SMTP("127.0.0.1", port, timeout=10)
                    break
                except OSError:
                    __import__("time").sleep(0.1)
            with client:
                return client.sendmail("s@x.org", ["a@example.com", "noreply@example.com"], b"Subject: hello\r\n\r\nx\r\n")

        refused = await inThread(send)
        self.assertEqual(refused["noreply@example.com"][0], 550)
        await pollUntil(lambda: b"new mail for a@example.com" in output.data, "the example's hook prints")
        self.assertRegex(output.data, re.compile(rb"new mail for a@example.com from <s@x.org>: hello"))
