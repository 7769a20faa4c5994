"""
End-to-end tests of the new-message hooks: the real MailHarbor service,
configured with C{[[hook]]} tables, receives mail from smtplib over
loopback and calls its hooks.

None is ever skipped: a configuration that rejects the C{hook} key is a
regression, and fails.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import sys

from twisted.trial.unittest import TestCase

from harbor.config import Config
from harbor.hooks.events import NewMessage
from tests._e2e import (
    Receiver,
    RunningServer,
    TwistdOutput,
    inThread,
    pollUntil,
    startServer,
)

SENDER = "sender@remote.example"
MESSAGE = b"From: Sender <sender@remote.example>\r\nSubject: Hello hooks\r\n\r\nHi!\r\n"

# Writes <directory>/<MAILHARBOR_ID>.json with the environment and stdin;
# with a gate file named, first waits (at most 30s) until it exists.
HOOK_SCRIPT = """
import json, os, sys, time
if len(sys.argv) > 2:
    deadline = time.monotonic() + 30
    while not os.path.exists(sys.argv[2]) and time.monotonic() < deadline:
        time.sleep(0.02)
data = sys.stdin.buffer.read()
env = {k: v for k, v in os.environ.items() if k.startswith("MAILHARBOR_")}
path = os.path.join(sys.argv[1], env["MAILHARBOR_ID"] + ".json")
with open(path + ".tmp", "w") as f:
    json.dump({"env": env, "stdin": data.decode("latin-1")}, f)
os.rename(path + ".tmp", path)
"""

EVENTS: list[tuple[NewMessage, str]] = []
CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_LISTENING = re.compile(rb"MailHarbor listening on .*\(127\.0\.0\.1 port (\d+)\)")


def recordEvent(event: NewMessage) -> None:
    """
    A python hook target: remember the event and its parsed subject.
    """
    EVENTS.append((event, str(event.message["Subject"])))


def toml(value: object) -> str:
    """
    A string or a list of strings as TOML (JSON's escapes are TOML's).
    """
    return json.dumps(value)


class HookEndToEndTests(TestCase):
    """
    Hooks configured in the TOML file, run by the real service.
    """

    timeout = 120

    def test_configAcceptsHooks(self) -> None:
        """
        The configuration accepts the C{hook} key: the server is wired to
        its hooks, and the tests below run rather than pass vacuously.
        """
        config = Config.fromMapping(
            {"domain": ["example.com"], "hook": [{"name": "x", "kind": "python", "target": "m:f"}]},
            fqdn=lambda: "localhost",
        )
        self.assertEqual([hook.name for hook in config.hooks], ["x"])

    async def serve(self, hooks: str) -> RunningServer:
        """
        Start the service with a configuration file holding C{hooks}.
        """
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:  # noqa: ASYNC230 (a small local file)
            f.write(hooks)
        return await startServer(self, "--config", path)

    async def send(self, server: RunningServer, *recipients: str) -> int:
        """
        Send L{MESSAGE} with smtplib; the final reply code.
        """
        def send() -> int:
            with server.connect() as s:
                s.ehlo()
                s.mail(SENDER)
                for recipient in recipients:
                    s.rcpt(recipient)
                return s.data(MESSAGE)[0]

        return await inThread(send)

    async def serveGated(self, settings: str = "") -> tuple[str, str, RunningServer]:
        """
        Start the service with one command hook, C{slow} (with C{settings}
        too), that waits until its gate file exists.

        @return: the hook's output directory, the gate's path, the server.
        """
        outputs = os.path.abspath(self.mktemp())
        os.makedirs(outputs)
        gate = os.path.join(outputs, "gate")
        server = await self.serve(
            "[[hook]]\n"
            'name = "slow"\n'
            'kind = "command"\n'
            f"command = {toml([sys.executable, '-c', HOOK_SCRIPT, outputs, gate])}\n" + settings
        )
        return outputs, gate, server

    def outputs(self, directory: str) -> list[dict[str, object]]:
        """
        What the test command hook has written into C{directory}.
        """
        found = []
        for name in sorted(os.listdir(directory)):
            if name.endswith(".json"):
                with open(os.path.join(directory, name)) as f:
                    found.append(json.load(f))
        return found

    async def test_commandHookPerStoredCopy(self) -> None:
        """
        A command hook runs once per stored copy, with that copy on stdin
        and its envelope in the environment.
        """
        outputs = os.path.abspath(self.mktemp())
        os.makedirs(outputs)
        server = await self.serve(
            "[[hook]]\n"
            'name = "copy"\n'
            'kind = "command"\n'
            f"command = {toml([sys.executable, '-c', HOOK_SCRIPT, outputs])}\n"
        )
        self.assertEqual(await self.send(server, "alice@example.com", "bob@example.com"), 250)
        await pollUntil(lambda: len(self.outputs(outputs)) == 2, "the hook ran for both copies")
        stored = server.storedFiles()
        seen = {}
        for output in self.outputs(outputs):
            env = output["env"]
            assert isinstance(env, dict) and isinstance(output["stdin"], str)
            self.assertEqual(
                (env["MAILHARBOR_SENDER"], env["MAILHARBOR_CLIENT"], env["MAILHARBOR_USER"]),
                (SENDER, "127.0.0.1", ""),
            )
            seen[env["MAILHARBOR_RECIPIENT"]] = output["stdin"].encode("latin-1")
            with open(env["MAILHARBOR_PATH"], "rb") as f:  # noqa: ASYNC230 (a small local file)
                self.assertEqual(f.read(), seen[env["MAILHARBOR_RECIPIENT"]])
        self.assertEqual(sorted(seen), ["alice@example.com", "bob@example.com"])
        self.assertEqual(sorted(seen.values()), sorted(stored.values()))
        await pollUntil(
            lambda: not os.listdir(os.path.join(server.root, ".hooks", "pending")),
            "the finished jobs are removed",
        )

    async def test_slowHookDoesNotDelayReply(self) -> None:
        """
        The 250 reply comes while the hook is still blocked; the hook
        finishes afterwards.
        """
        outputs, gate, server = await self.serveGated()
        self.assertEqual(await self.send(server, "alice@example.com"), 250)
        self.assertEqual(self.outputs(outputs), [], "the hook was still waiting for its gate")
        open(gate, "w").close()  # noqa: ASYNC230 (a small local file)
        await pollUntil(lambda: self.outputs(outputs), "the hook finished")

    async def test_backlogCapRefusesWith451(self) -> None:
        """
        With a blocked hook and C{max_pending = 2}, two messages are taken
        and the third is refused with 451 4.3.0 (and not stored); once the
        hook is unblocked and its backlog drains, mail is taken again.
        """
        outputs, gate, server = await self.serveGated("max_pending = 2\n")
        self.assertEqual(await self.send(server, "alice@example.com"), 250)
        self.assertEqual(await self.send(server, "bob@example.com"), 250)

        def refused() -> tuple[int, bytes, tuple[int, bytes]]:
            with server.connect() as s:
                s.ehlo()
                s.mail(SENDER)
                code, text = s.rcpt("carol@example.com")
                # Refused at RCPT: no recipient, so no message either.
                return code, text, s.docmd("DATA")

        code, text, data = await inThread(refused)
        self.assertEqual((code, text), (451, b"4.3.0 Too many messages waiting to be processed; try again later"))
        self.assertEqual(data[0] // 100, 5)
        self.assertEqual(len(server.storedFiles()), 2)
        open(gate, "w").close()  # noqa: ASYNC230 (a small local file)
        await pollUntil(
            lambda: len(self.outputs(outputs)) == 2
            and not os.listdir(os.path.join(server.root, ".hooks", "pending")),
            "the backlog has drained",
        )
        self.assertEqual(await self.send(server, "carol@example.com"), 250)
        self.assertEqual(len(server.storedFiles()), 3)

    async def test_pythonHookAndWebhook(self) -> None:
        """
        A python hook gets the event with the parsed message, and a webhook
        gets the stored bytes in its JSON body.
        """
        receiver = Receiver(self)
        del EVENTS[:]
        server = await self.serve(
            "[[hook]]\n"
            'name = "py"\n'
            'kind = "python"\n'
            'target = "tests.test_hooks_e2e:recordEvent"\n'
            "\n"
            "[[hook]]\n"
            'name = "web"\n'
            'kind = "webhook"\n'
            f"url = {toml(receiver.url)}\n"
        )
        self.assertEqual(await self.send(server, "alice@example.com"), 250)
        await pollUntil(lambda: EVENTS and receiver.requests, "both hooks ran")
        ((event, subject),) = EVENTS
        self.assertEqual((event.sender, event.recipient, subject), (SENDER, "alice@example.com", "Hello hooks"))
        ((_, body),) = receiver.requests
        (stored,) = server.storedFiles().values()
        self.assertEqual(base64.b64decode(json.loads(body)["message"]), stored)

    async def test_deadLetterListedAndRetried(self) -> None:
        """
        A hook that fails its only attempt leaves a dead letter that
        C{mailharbor hooks list --dead} shows and C{retry} puts back.
        """
        from harbor.cli import main

        server = await self.serve(
            "[[hook]]\n"
            'name = "broken"\n'
            'kind = "command"\n'
            f"command = {toml([sys.executable, '-c', 'raise SystemExit(7)'])}\n"
            "attempts = 1\n"
        )
        self.assertEqual(await self.send(server, "alice@example.com"), 250)

        def listed(*options: str) -> list[dict[str, object]]:
            out = io.StringIO()
            self.assertEqual(main(["hooks", "list", "--json", "--maildir", server.root, *options], out), 0)
            jobs: list[dict[str, object]] = json.loads(out.getvalue())
            return jobs

        await pollUntil(lambda: listed("--dead"), "the job is a dead letter")
        (dead,) = listed("--dead")
        self.assertIn("exited with status 7", str(dead["error"]))
        self.assertEqual(main(["hooks", "retry", str(dead["id"]), "--maildir", server.root], io.StringIO()), 0)
        self.assertEqual([job["id"] for job in listed()], [dead["id"]])

    async def test_embeddingExample(self) -> None:
        """
        examples/embedded.py runs MailHarbor with a hook registered in code,
        which prints each stored copy, and stops cleanly on SIGTERM.
        """
        from twisted.internet import reactor

        root = os.path.abspath(self.mktemp())
        environment = dict(os.environ, PYTHONPATH=CHECKOUT, PYTHONUNBUFFERED="1")
        protocol = TwistdOutput()
        arguments = [
            sys.executable,
            os.path.join(CHECKOUT, "examples", "embedded.py"),
            "--port",
            "tcp:0:interface=127.0.0.1",
            "--domain",
            "example.com",
            "--maildir",
            root,
            "--hostname",
            "mx.example.com",
        ]
        process = reactor.spawnProcess(protocol, sys.executable, arguments, env=environment)

        async def stop() -> None:
            if protocol.exitCode is None:
                process.signalProcess("KILL")
                await pollUntil(lambda: protocol.exitCode is not None, "the example has died")

        self.addCleanup(stop)
        await pollUntil(lambda: _LISTENING.search(protocol.output) or protocol.exitCode is not None, "it listens")
        match = _LISTENING.search(protocol.output)
        self.assertIsNotNone(match, protocol.output.decode(errors="replace"))
        assert match is not None
        server = RunningServer(root, int(match.group(1)), None)
        self.assertEqual(await self.send(server, "alice@example.com"), 250)
        line = f"announce: {SENDER} -> alice@example.com: Hello hooks".encode()
        await pollUntil(lambda: line in protocol.output, "the hook has printed its line")
        process.signalProcess("TERM")
        await pollUntil(lambda: protocol.exitCode is not None, "the example has stopped")
        self.assertEqual(protocol.exitCode, 0, protocol.output.decode(errors="replace"))
