"""
Tests for the command and webhook hooks (L{harbor.hooks.kinds}), for
real: subprocesses and a loopback HTTP server on the global reactor.

They were in L{harbor.test.test_hooks}; they start real processes and
listen on sockets, so they live here, out of the unit tests that ship in
the wheel.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import time
from typing import Any

from zope.interface.verify import verifyObject

from twisted.internet.defer import maybeDeferred
from twisted.trial.unittest import TestCase

from attrs import evolve

from harbor.hooks.config import RetryPolicy
from harbor.hooks.events import HookFailed, MessageGone, NewMessage, jobID
from harbor.hooks.kinds import CommandHook, IHook, WebhookHook
from harbor.hooks.runner import HookRunner
from harbor.test._hooksupport import MESSAGE, storeMessage
from tests._e2e import Receiver, pollUntil, processGone, runInRealThread

COMMAND_SCRIPT = """
import json, os, sys
data = sys.stdin.buffer.read()
env = {k: v for k, v in os.environ.items() if k.startswith("MAILHARBOR_") or k == "EXTRA"}
with open(sys.argv[1], "w") as f:
    json.dump({"env": env, "stdin": data.decode("latin-1"), "argv": sys.argv[2:]}, f)
"""


class CommandHookTests(TestCase):
    """
    Tests for L{CommandHook}, with real processes.
    """

    timeout = 30

    def setUp(self) -> None:
        from twisted.internet import reactor

        self.reactor = reactor
        self.event = storeMessage(self)
        self.output = os.path.abspath(self.mktemp())

    def hook(self, argv: list[str], **kwargs: Any) -> CommandHook:
        """
        A command hook on the global reactor and its thread pool.
        """
        return CommandHook(argv, "cmd", self.reactor, runInRealThread, **kwargs)

    async def test_environmentAndStdin(self) -> None:
        """
        The command gets the stored message on stdin, the envelope in
        C{MAILHARBOR_*} variables plus the configured ones, and its
        arguments verbatim, with no shell to interpret them.
        """
        event = NewMessage(
            "s\u00e9nder@example.org", "alice@example.com", "alice", "2001:db8::1", self.event.path, self.event.id
        )
        hook = self.hook(
            [sys.executable, "-c", COMMAND_SCRIPT, self.output, "$(touch pwned)", "a b;c"],
            environment={"EXTRA": "yes"},
        )
        self.assertTrue(verifyObject(IHook, hook))
        await hook.run(event)
        with open(self.output) as f:  # noqa: ASYNC230 (a small local file)
            seen = json.load(f)
        self.assertEqual(seen["stdin"].encode("latin-1"), MESSAGE)
        self.assertEqual(seen["argv"], ["$(touch pwned)", "a b;c"])
        self.assertFalse(os.path.exists("pwned"))
        self.assertEqual(
            seen["env"],
            {
                "MAILHARBOR_SENDER": "s\u00e9nder@example.org",
                "MAILHARBOR_RECIPIENT": "alice@example.com",
                "MAILHARBOR_USER": "alice",
                "MAILHARBOR_CLIENT": "2001:db8::1",
                "MAILHARBOR_ID": self.event.id,
                "MAILHARBOR_PATH": self.event.path,
                "MAILHARBOR_DELIVERY_ID": jobID(event, "cmd"),
                "EXTRA": "yes",
            },
        )

    async def test_userEmptyWithoutAuthentication(self) -> None:
        """
        For inbound mail (no authenticated user) C{MAILHARBOR_USER} is
        empty.
        """
        await self.hook([sys.executable, "-c", COMMAND_SCRIPT, self.output]).run(self.event)
        with open(self.output) as f:  # noqa: ASYNC230 (a small local file)
            self.assertEqual(json.load(f)["env"]["MAILHARBOR_USER"], "")

    async def test_nonZeroExitFails(self) -> None:
        """
        A non-zero exit status fails the call, with the status and the end
        of the command's output in the error.
        """
        hook = self.hook([sys.executable, "-c", "import sys; print('disk full', file=sys.stderr); sys.exit(3)"])
        error = await self.assertFailure(hook.run(self.event), HookFailed)
        self.assertIn("exited with status 3: disk full", str(error))

    async def test_timeoutKills(self) -> None:
        """
        A command running past its timeout is killed and the call fails.
        """
        script = "import os, sys, time\nopen(sys.argv[1], 'w').write(str(os.getpid()))\ntime.sleep(60)"
        hook = self.hook([sys.executable, "-c", script, self.output], timeout=2)
        started = time.monotonic()
        error = await self.assertFailure(hook.run(self.event), HookFailed)
        self.assertIn("timed out after 2s", str(error))
        self.assertLess(time.monotonic() - started, 20)
        with open(self.output) as f:  # noqa: ASYNC230 (a small local file)
            pid = int(f.read())
        self.assertRaises(ProcessLookupError, os.kill, pid, 0)

    async def test_cancelKills(self) -> None:
        """
        Cancelling a call (at shutdown) kills the command.
        """
        script = "import os, sys, time\nopen(sys.argv[1], 'w').write(str(os.getpid()))\ntime.sleep(60)"
        hook = self.hook([sys.executable, "-c", script, self.output], timeout=30)
        d = hook.run(self.event)
        await pollUntil(lambda: os.path.exists(self.output) and os.path.getsize(self.output), "the command started")
        with open(self.output) as f:  # noqa: ASYNC230 (a small local file)
            pid = int(f.read())
        d.cancel()
        self.failureResultOf(d)

        await pollUntil(lambda: processGone(pid), "the cancelled command has been killed and reaped")

    async def test_messageGone(self) -> None:
        """
        When the message was deleted before the hook ran, the call fails
        permanently without starting the command.
        """
        os.unlink(self.event.path)
        hook = self.hook([sys.executable, "-c", COMMAND_SCRIPT, self.output])
        try:
            await hook.run(self.event)
        except MessageGone:
            pass
        else:
            self.fail("a hook for a deleted message succeeded")
        self.assertFalse(os.path.exists(self.output))


class WebhookTests(TestCase):
    """
    Tests for L{WebhookHook}, against a loopback HTTP server.
    """

    timeout = 30

    def setUp(self) -> None:
        from twisted.internet import reactor

        self.reactor = reactor
        self.receiver = Receiver(self)
        self.event = storeMessage(self)

    def hook(self, **kwargs: Any) -> WebhookHook:
        """
        A webhook to the test's receiver, its connections closed at cleanup.
        """
        hook = WebhookHook(self.receiver.url, "web", self.reactor, runInRealThread, **kwargs)
        # Added after the receiver's cleanup, so it runs first.
        self.addCleanup(hook.stop)
        return hook

    async def test_json(self) -> None:
        """
        The JSON body carries the envelope, the size and the raw message in
        base64; configured headers and an Idempotency-Key are sent.
        """
        hook = self.hook(headers={"Authorization": "Bearer t"})
        self.assertTrue(verifyObject(IHook, hook))
        await hook.run(self.event)
        ((headers, body),) = self.receiver.requests
        self.assertEqual(headers[b"content-type"], b"application/json")
        self.assertEqual(headers[b"authorization"], b"Bearer t")
        self.assertEqual(headers[b"idempotency-key"], jobID(self.event, "web").encode("ascii"))
        self.assertEqual(headers[b"mailharbor-delivery-id"], jobID(self.event, "web").encode("ascii"))
        document = json.loads(body)
        self.assertEqual(base64.b64decode(document.pop("message")), MESSAGE)
        self.assertEqual(
            document,
            {
                "id": self.event.id,
                "sender": "sender@example.org",
                "recipient": "alice@example.com",
                "user": None,
                "client": "192.0.2.7",
                "path": self.event.path,
                "size": len(MESSAGE),
            },
        )

    async def test_deliveryIdOfTheCall(self) -> None:
        """
        A call given its delivery id (as the runner gives it) carries that
        id in both headers and the JSON body.
        """
        await self.hook().run(evolve(self.event, deliveryId="abc,web"))
        ((headers, body),) = self.receiver.requests
        self.assertEqual((headers[b"idempotency-key"], headers[b"mailharbor-delivery-id"]), (b"abc,web", b"abc,web"))
        self.assertEqual(json.loads(body)["delivery_id"], "abc,web")

    async def test_multipart(self) -> None:
        """
        The multipart body has a JSON metadata part and the raw message as
        a message/rfc822 part, byte for byte.
        """
        await self.hook(format="multipart").run(self.event)
        ((headers, body),) = self.receiver.requests
        contentType = headers[b"content-type"].decode("ascii")
        self.assertTrue(contentType.startswith("multipart/form-data; boundary="), contentType)
        boundary = contentType.split("boundary=", 1)[1].encode("ascii")
        preamble, metadata, message, epilogue = body.split(b"--" + boundary)
        self.assertEqual((preamble, epilogue), (b"", b"--\r\n"))
        metaHeaders, metaBody = metadata.split(b"\r\n\r\n", 1)
        self.assertIn(b'Content-Disposition: form-data; name="metadata"', metaHeaders)
        self.assertEqual(json.loads(metaBody)["recipient"], "alice@example.com")
        self.assertNotIn("message", json.loads(metaBody))
        messageHeaders, raw = message.split(b"\r\n\r\n", 1)
        self.assertIn(b'name="message"', messageHeaders)
        self.assertIn(b"Content-Type: message/rfc822", messageHeaders)
        self.assertEqual(raw, MESSAGE + b"\r\n")

    async def test_errorStatusFails(self) -> None:
        """
        A non-2xx status fails the call, naming the status.
        """
        self.receiver.codes = [500]
        error = await self.assertFailure(self.hook().run(self.event), HookFailed)
        self.assertIn("HTTP 500", str(error))
        self.assertIn("server sad", str(error))

    async def test_noResponseTimesOut(self) -> None:
        """
        A receiver that does not answer within the timeout fails the call.
        """
        self.receiver.hold = True
        error = await self.assertFailure(self.hook(timeout=0.5).run(self.event), HookFailed)
        self.assertIn("no response", str(error))

    async def test_connectionRefused(self) -> None:
        """
        A receiver that is down fails the call with a readable reason.
        """
        await maybeDeferred(self.receiver.port.stopListening)
        error = await self.assertFailure(self.hook().run(self.event), HookFailed)
        self.assertIn("POST http://127.0.0.1:", str(error))

    async def test_retriedUntil2xxByRunner(self) -> None:
        """
        Through the runner, a 500 is retried after the backoff and the job
        is removed once the receiver answers 200.
        """
        self.receiver.codes = [500, 503]
        hook = self.hook(retry=RetryPolicy(attempts=5, backoff=0.05, maxBackoff=0.1))
        spool = os.path.abspath(self.mktemp())
        runner = HookRunner(spool, [hook], self.reactor, runInRealThread)
        self.addCleanup(runner.stop)
        runner.dispatch(runner.record([self.event]))
        # A job waiting for its retry is not active: it is done once it
        # is no longer pending either.
        await pollUntil(lambda: not runner.active and not any(runner.pendingCounts.values()), "the job is done")
        self.assertEqual(len(self.receiver.requests), 3)
        self.assertEqual(runner.spool.pendingJobs(), [])
        self.assertEqual(runner.spool.deadJobs(), [])
        keys = {headers[b"idempotency-key"] for headers, _ in self.receiver.requests}
        self.assertEqual(len(keys), 1, "every retry carries the same idempotency key")

    async def test_maxInFlight(self) -> None:
        """
        The receiver never sees more than C{maxInFlight} requests at once.
        """
        self.receiver.hold = True
        hook = self.hook(maxInFlight=2)
        runner = HookRunner(os.path.abspath(self.mktemp()), [hook], self.reactor, runInRealThread)
        self.addCleanup(runner.stop)
        runner.dispatch(runner.record([storeMessage(self, count=n) for n in range(5)]))
        for answered in range(5):
            # The condition is only called while this iteration awaits it.
            await pollUntil(lambda: len(self.receiver.held) == min(2, 5 - answered), "requests arrive")  # noqa: B023
            self.receiver.release()
        await pollUntil(lambda: not runner.active, "every job is done")
        self.assertEqual((len(self.receiver.requests), self.receiver.maxOpen), (5, 2))
