"""
MailHarbor run as an operator runs it: a real twistd, daemonized with a
pidfile, binding a privileged port and dropping to an unprivileged user,
handed its socket by systemd, reloading on SIGHUP and stopping gracefully on
SIGTERM while a client is in the middle of DATA.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import signal
import smtplib
import socket
import tempfile
from collections.abc import Sequence
from typing import Any

from twisted.internet import reactor
from twisted.internet.error import ProcessExitedAlready
from twisted.trial.unittest import SkipTest, TestCase

from harbor.test._support import files
from tests._e2e import (
    DOMAIN,
    HOSTNAME,
    LOOPBACK_PORT,
    RawClient,
    TwistdOutput,
    TwistdProcess,
    inThread,
    pollUntil,
    processGone,
    runTwistd,
    subprocessEnvironment,
    twistdPath,
)

_LISTENING = re.compile(rb"MailHarbor listening on \S+ \(\S+ port (\d+)\)")
MESSAGE = b"Subject: hello\r\n\r\nHello.\r\n"


def send(port: int, recipient: str = "a@example.com") -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as client:
        client.sendmail("s@x.org", [recipient], MESSAGE)


async def startTwistd(
    testCase: TestCase, arguments: list[str], twistdArguments: Sequence[str] = ()
) -> tuple[TwistdProcess, int]:
    process = await runTwistd(testCase, arguments, twistdArguments)
    found: list[int] = []

    def listening() -> bool:
        match = _LISTENING.search(process.output)
        if match:
            found.append(int(match.group(1)))
            return True
        if process.exited:
            raise AssertionError(process.output.decode(errors="replace"))
        return False

    await pollUntil(listening, "twistd listens", 30)
    return process, found[0]


class SignalTests(TestCase):
    """
    SIGHUP and SIGTERM.
    """

    timeout = 120

    def writeConfig(self, path: str, domains: list[str], extra: str = "") -> None:
        with open(path, "w") as f:
            f.write(f"domain = {json.dumps(domains)}\nshutdown_grace = 20\n{extra}")

    async def test_sighupReloadsConfiguration(self) -> None:
        """
        A domain added to the file is served after SIGHUP without dropping
        an open connection; a broken file is refused and the old
        configuration stays.
        """
        root = os.path.abspath(self.mktemp())
        config = os.path.abspath(self.mktemp())
        self.writeConfig(config, ["a.example"])
        process, port = await startTwistd(
            self, ["--config", config, "--port", LOOPBACK_PORT, "--maildir", root, "--hostname", HOSTNAME]
        )
        opened = await inThread(RawClient, port)
        self.addCleanup(opened.close)
        self.assertEqual((await inThread(opened.command, b"EHLO c"))[0], 250)

        def refused() -> int:
            try:
                send(port, "x@b.example")
            except smtplib.SMTPRecipientsRefused as e:
                return e.recipients["x@b.example"][0]
            return 250

        self.assertEqual(await inThread(refused), 550)
        self.writeConfig(config, ["a.example", "b.example"])
        process.transport.signalProcess("HUP")
        await pollUntil(lambda: b"Reloaded the configuration" in process.output, "the reload", 30)
        await inThread(send, port, "x@b.example")
        self.assertEqual(len(files(root, "b.example", "new")), 1)
        self.assertEqual((await inThread(opened.command, b"NOOP"))[0], 250)

        with open(config, "w") as f:  # noqa: ASYNC230 (a small local file)
            f.write("domain = [\n")
        process.transport.signalProcess("HUP")
        await pollUntil(lambda: b"Configuration not reloaded" in process.output, "the refusal", 30)
        await inThread(send, port, "y@b.example")
        self.assertEqual(len(files(root, "b.example", "new")), 2)

    async def test_sigtermIsGraceful(self) -> None:
        """
        On SIGTERM the server stops listening, tells an idle client 421
        4.3.2, lets a client in the middle of DATA finish and get its 250,
        then exits; every 250'd message is in new/ and nothing is left in
        tmp/.
        """
        root = os.path.abspath(self.mktemp())
        config = os.path.abspath(self.mktemp())
        self.writeConfig(config, [DOMAIN])
        process, port = await startTwistd(
            self, ["--config", config, "--port", LOOPBACK_PORT, "--maildir", root, "--hostname", HOSTNAME]
        )
        await inThread(send, port)

        def startData() -> RawClient:
            client = RawClient(port)
            client.command(b"EHLO c")
            client.send(b"MAIL FROM:<s@x.org>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n")
            for _ in range(3):
                client.reply()
            # Large enough that the server has begun writing it to tmp/.
            client.send(b"Subject: in flight\r\n\r\n" + (b"x" * 998 + b"\r\n") * 200)
            return client

        busy = await inThread(startData)
        self.addCleanup(busy.close)
        idle = await inThread(RawClient, port)
        self.addCleanup(idle.close)
        await inThread(idle.command, b"EHLO c")
        await pollUntil(lambda: len(files(root, DOMAIN, "tmp")) == 1, "the message in flight is in tmp/")

        process.transport.signalProcess("TERM")
        idleReplies = await inThread(idle.repliesUntilClosed)
        self.assertTrue(idleReplies, process.output.decode(errors="replace"))
        self.assertEqual(idleReplies[0][0], 421)
        self.assertTrue(idleReplies[0][1].startswith(b"4.3.2 "), idleReplies)

        def refusedNow() -> bool:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=5).close()
            except OSError:
                return True
            return False

        self.assertTrue(await inThread(refusedNow))

        def finish() -> list[tuple[int, bytes]]:
            busy.send(b"second half\r\n.\r\n")
            return busy.repliesUntilClosed()

        replies = await inThread(finish)
        self.assertEqual([code for code, _ in replies], [250, 421])
        # twistd ends with the signal that stopped it, after a clean shutdown.
        self.assertIn(await process.wait(), (0, -signal.SIGTERM, 128 + signal.SIGTERM))
        self.assertIn(b"Server Shut Down.", process.output)
        self.assertEqual(len(files(root, DOMAIN, "new")), 2)
        self.assertEqual(files(root, DOMAIN, "tmp"), [])


class DaemonTests(TestCase):
    """
    Daemon mode, privileges and socket activation.
    """

    timeout = 120

    async def test_daemonWithPidfile(self) -> None:
        """
        Without -n, twistd detaches, writes its pidfile and log file, serves
        mail, and removes the pidfile when stopped.
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        pidfile = os.path.join(directory, "mailharbor.pid")
        logfile = os.path.join(directory, "smtp.log")
        root = os.path.join(directory, "Maildir")
        launcher = TwistdOutput()
        reactor.spawnProcess(
            launcher,
            twistdPath(),
            [twistdPath(), "--pidfile", pidfile, "--logfile", logfile, "mailharbor",
             "--port", LOOPBACK_PORT, "--domain", DOMAIN, "--maildir", root],
            env=subprocessEnvironment(),
            path=directory,
        )
        await pollUntil(lambda: launcher.exitCode is not None, "the launcher returns")
        self.assertEqual(launcher.exitCode, 0, launcher.output)
        await pollUntil(lambda: os.path.exists(pidfile), "the pidfile")
        with open(pidfile) as f:  # noqa: ASYNC230 (a small local file)
            pid = int(f.read())

        def stop() -> None:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

        self.addCleanup(stop)

        def logged() -> bytes:
            with open(logfile, "rb") as f:
                return f.read()

        await pollUntil(lambda: _LISTENING.search(logged()) is not None, "the daemon listens")
        match = _LISTENING.search(logged())
        assert match is not None
        port = int(match.group(1))
        await inThread(send, port)
        self.assertEqual(len(files(root, DOMAIN, "new")), 1)
        stop()

        await pollUntil(lambda: processGone(pid), "the daemon exits")
        self.assertFalse(os.path.exists(pidfile))
        self.assertIn(b"result=stored", logged())

    async def test_privilegeDrop(self) -> None:
        """
        Started as root on a port below 1024 with --uid/--gid, twistd binds
        first, then runs as the unprivileged user, whose mail files are.
        """
        if os.getuid() != 0:
            raise SkipTest("needs root, as CI has")
        nobody = pwd.getpwnam("nobody")
        # Somewhere the unprivileged user can reach, whatever the checkout's
        # permissions.
        directory = tempfile.mkdtemp(prefix="mailharbor-")
        self.addCleanup(shutil.rmtree, directory, True)
        os.chown(directory, nobody.pw_uid, nobody.pw_gid)
        root = os.path.join(directory, "Maildir")
        low = None
        for candidate in range(1000, 900, -1):
            probe = socket.socket()
            try:
                probe.bind(("127.0.0.1", candidate))
                low = candidate
                break
            except OSError:
                continue
            finally:
                probe.close()
        assert low is not None
        process, port = await startTwistd(
            self,
            ["--port", f"tcp:{low}:interface=127.0.0.1", "--domain", DOMAIN, "--maildir", root],
            ["--uid", "nobody", "--gid", str(nobody.pw_gid)],
        )
        self.assertEqual(port, low)
        try:
            await inThread(send, port)
        except smtplib.SMTPException as e:
            self.fail(f"{e!r}\n{process.output.decode(errors='replace')}")
        [name] = files(root, DOMAIN, "new")
        stat = os.stat(os.path.join(root, DOMAIN, "new", name))
        self.assertEqual((stat.st_uid, stat.st_gid), (nobody.pw_uid, nobody.pw_gid))
        self.assertEqual(os.stat(os.path.join(root, DOMAIN)).st_uid, nobody.pw_uid)
        with open(f"/proc/{process.transport.pid}/status") as f:  # noqa: ASYNC230 (a small local file)
            uids = next(line for line in f if line.startswith("Uid:")).split()[1:]
        self.assertEqual(set(uids), {str(nobody.pw_uid)})

    async def test_systemdSocketActivation(self) -> None:
        """
        Given a listening socket as systemd passes it (fd 3, LISTEN_FDS,
        LISTEN_FDNAMES, LISTEN_PID), twistd serves mail on it without binding
        anything.
        """
        listening = socket.socket()
        listening.bind(("127.0.0.1", 0))
        listening.listen(50)
        self.addCleanup(listening.close)
        port = listening.getsockname()[1]
        root = os.path.abspath(self.mktemp())
        collector = TwistdOutput()
        env = subprocessEnvironment()
        env["LISTEN_FDS"] = "1"
        env["LISTEN_FDNAMES"] = "mailharbor.socket"
        process = reactor.spawnProcess(
            collector,
            "/bin/sh",
            ["/bin/sh", "-c", 'export LISTEN_PID=$$; exec "$0" "$@"', twistdPath(), "-n", "--pidfile=",
             "mailharbor", "--port", "systemd:domain=INET:index=0", "--domain", DOMAIN, "--maildir", root],
            env=env,
            path=os.path.dirname(root),
            childFDs={0: "w", 1: "r", 2: "r", 3: listening.fileno()},
        )

        def stop() -> None:
            if collector.exitCode is None:
                try:
                    process.signalProcess("TERM")
                except ProcessExitedAlready:
                    pass

        self.addCleanup(stop)
        await pollUntil(
            lambda: b"MailHarbor listening on systemd" in collector.output or collector.exitCode is not None,
            "twistd adopts the socket",
            30,
        )
        self.assertIsNone(collector.exitCode, collector.output)
        await inThread(send, port)
        self.assertEqual(len(files(root, DOMAIN, "new")), 1)
        stop()
        await pollUntil(lambda: collector.exitCode is not None, "twistd stops")


class LoggingTests(TestCase):
    """
    JSON logs and IPv6.
    """

    timeout = 120

    async def test_jsonLog(self) -> None:
        """
        With --log-format json, every log line is a JSON object, and the
        transaction's is there with its fields.
        """
        root = os.path.abspath(self.mktemp())
        process = await runTwistd(
            self, ["--log-format", "json", "--port", LOOPBACK_PORT, "--domain", DOMAIN, "--maildir", root]
        )

        def events() -> list[dict[str, Any]]:
            return [json.loads(line) for line in process.output.splitlines() if line.startswith(b"{")]

        def bound() -> bool:
            return any("port" in e and e.get("description") == LOOPBACK_PORT for e in events())

        await pollUntil(bound, "twistd logs its port")
        [port] = [e["port"] for e in events() if e.get("description") == LOOPBACK_PORT]
        self.assertTrue(all(line.startswith(b"{") for line in process.output.splitlines()), process.output)
        await inThread(send, port)
        await pollUntil(lambda: b'"result": "stored"' in process.output, "the transaction is logged")
        [transaction] = [e for e in events() if e.get("result") == "stored"]
        self.assertEqual(transaction["sender"], "s@x.org")
        self.assertEqual(transaction["recipients"], "a@example.com")
        self.assertEqual(transaction["code"], 250)

    async def test_ipv6(self) -> None:
        """
        A tcp6 listener on ::1 receives mail.
        """
        root = os.path.abspath(self.mktemp())
        _, port = await startTwistd(
            self, ["--port", "tcp6:0:interface=\\:\\:1", "--domain", DOMAIN, "--maildir", root]
        )

        def sendV6() -> None:
            with smtplib.SMTP("::1", port, timeout=20) as client:
                client.sendmail("s@x.org", ["a@example.com"], MESSAGE)

        await inThread(sendV6)
        [name] = files(root, DOMAIN, "new")
        with open(os.path.join(root, DOMAIN, "new", name), "rb") as f:  # noqa: ASYNC230 (a small local file)
            self.assertIn(b"([IPv6:::1])", f.read())


class WorkersTests(TestCase):
    """
    Several processes sharing the listening socket.
    """

    timeout = 120

    async def test_workersShareThePort(self) -> None:
        """
        With --workers 2 a second process adopts the listening socket and
        serves mail too; stopping the first stops both.
        """
        root = os.path.abspath(self.mktemp())
        process, port = await startTwistd(
            self, ["--workers", "2", "--port", LOOPBACK_PORT, "--domain", DOMAIN, "--maildir", root]
        )
        await pollUntil(lambda: re.search(rb"Started worker 1 \(pid (\d+)\)", process.output), "the worker starts")
        started = re.search(rb"Started worker 1 \(pid (\d+)\)", process.output)
        assert started is not None
        worker = int(started.group(1))

        def sendUntilWorkerServes() -> int:
            for attempt in range(300):
                send(port)
                if any(f"P{worker}R" in name for name in files(root, DOMAIN, "new")):
                    return attempt + 1
            return 0

        self.assertNotEqual(await inThread(sendUntilWorkerServes), 0)
        process.transport.signalProcess("TERM")
        await process.wait()

        await pollUntil(lambda: processGone(worker), "the worker exits")
