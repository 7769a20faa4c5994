"""
MailHarbor used as a library: the API in a test's own reactor, and the
runnable example in examples/ as a real program.
"""

from __future__ import annotations

import os
import re
import smtplib
import sys
from typing import Any

from twisted.internet import reactor
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.protocol import ProcessProtocol
from twisted.trial.unittest import TestCase

from harbor.api import Config, NewMessage, PolicyRequest, Refuse, buildService
from tests._e2e import freePort, inThread, pollUntil, subprocessEnvironment

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")
EXAMPLE = os.path.join(EXAMPLES, "embed.py")
ASYNCIO_EXAMPLE = os.path.join(EXAMPLES, "asyncio_app.py")


class ExampleOutput(ProcessProtocol):
    """
    What an example program wrote (standard output and error together),
    and how it ended.
    """

    data = b""
    exitCode: int | None = None
    ended = False
    process: Any = None

    def outReceived(self, data: bytes) -> None:
        self.data += data

    errReceived = outReceived

    def processEnded(self, reason: Any) -> None:
        self.exitCode = reason.value.exitCode
        self.ended = True


class EmbeddingTests(TestCase):
    """
    The API and the example.
    """

    timeout = 120

    def runExample(self, arguments: list[str], stopWith: str, path: str | None = None) -> ExampleOutput:
        """
        Run an example program with this Python, stopped with the signal
        C{stopWith} when the test ends if it has not ended by then.
        """
        output = ExampleOutput()
        output.process = reactor.spawnProcess(
            output, sys.executable, [sys.executable, *arguments], env=subprocessEnvironment(), path=path
        )

        async def stop() -> None:
            try:
                output.process.signalProcess(stopWith)
            except ProcessExitedAlready:
                pass
            await pollUntil(lambda: output.ended, "the example stops")

        self.addCleanup(stop)
        return output

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
        port = freePort()
        cwd = os.path.abspath(self.mktemp())
        os.makedirs(cwd)
        output = self.runExample([EXAMPLE, str(port)], stopWith="TERM", path=cwd)

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

    async def test_asyncioExample(self) -> None:
        """
        examples/asyncio_app.py runs MailHarbor on Twisted's asyncio
        reactor beside its own asyncio tasks: AUTH, only after STARTTLS, is
        decided by its coroutine (535 for a wrong password, 235 for the
        right one); a message is stored and its coroutine hook awaits the
        application's queue consumer, which prints it; its heartbeat task
        runs; SIGTERM stops it cleanly.
        """
        import base64
        import ssl

        from harbor.test.certs import TestCA

        ca = TestCA(self.mktemp())
        certificate, key = ca.issue()
        port = freePort()
        root = os.path.abspath(self.mktemp())
        arguments = [
            ASYNCIO_EXAMPLE, "--port", str(port), "--maildir", root, "--domain", "example.com",
            "--user", "demo", "--password", "s3cret", "--tls-cert", certificate, "--tls-key", key,
            "--heartbeat", "0.2",
        ]
        output = self.runExample(arguments, stopWith="KILL")

        def plain(password: bytes) -> str:
            return "PLAIN " + base64.b64encode(b"\0demo\0" + password).decode()

        def session() -> dict[str, Any]:
            for _ in range(150):
                try:
                    client = smtplib.SMTP("127.0.0.1", port, timeout=10)
                    break
                except OSError:
                    __import__("time").sleep(0.1)
            seen: dict[str, Any] = {}
            with client:
                client.ehlo()
                seen["authBeforeTLS"] = client.has_extn("auth")
                client.starttls(context=ssl.create_default_context(cafile=ca.certificatePath))
                client.ehlo()
                seen["wrong"] = client.docmd("AUTH", plain(b"guess"))[0]
                seen["right"] = client.docmd("AUTH", plain(b"s3cret"))[0]
                seen["refused"] = client.sendmail(
                    "s@x.org", ["a@example.com", "noreply@example.com"], b"Subject: hello\r\n\r\nx\r\n"
                )
            return seen

        seen = await inThread(session)
        self.assertEqual((seen["authBeforeTLS"], seen["wrong"], seen["right"]), (False, 535, 235))
        self.assertEqual(seen["refused"]["noreply@example.com"][0], 550)
        handled = b"asyncio app: message for a@example.com from <s@x.org> (user demo): hello"
        await pollUntil(lambda: handled in output.data, "the hook hands the message to the application")
        # The hook awaited an asyncio future that the consumer resolved.
        await pollUntil(lambda: b"asyncio app: hook finished for " in output.data, "the hook finishes")
        self.assertIn(b"asyncio app: login refused for demo from 127.0.0.1", output.data)
        self.assertIn(b"asyncio app: login accepted for demo from 127.0.0.1", output.data)
        self.assertEqual(len(os.listdir(os.path.join(root, ".submitted", "demo", "new"))), 1)
        await pollUntil(lambda: b"1 messages handled so far" in output.data, "the heartbeat task runs")
        output.process.signalProcess("TERM")
        await pollUntil(lambda: output.ended, "the example stops on SIGTERM")
        self.assertIn(b"asyncio app: stopped", output.data)
        self.assertEqual(output.exitCode, 0, output.data.decode(errors="replace"))
