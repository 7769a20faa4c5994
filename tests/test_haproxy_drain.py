"""
A rolling restart behind Debian's HAProxy: two real C{twistd mailharbor}
instances share a Maildir behind a round-robin HAProxy whose health check
asks each one's C{/readyz}.  Clients send sessions continuously while
each instance in turn is drained, exits by itself and is started again;
no session may fail, since HAProxy could send every new one to the
instance that stays.
"""

from __future__ import annotations

import mailbox
import os
import shutil
import signal
import smtplib
import socket
import threading
import time
from collections.abc import Sequence

from twisted.internet import reactor
from twisted.internet.defer import DeferredList
from twisted.trial.unittest import SkipTest, TestCase

from tests._e2e import (
    CLIENT_TIMEOUT,
    DOMAIN,
    HOSTNAME,
    TwistdOutput,
    TwistdProcess,
    inThread,
    pollUntil,
    twistdPath,
)
from tests.test_operations import fetch, writeFile

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
CLIENTS = 4
MESSAGE = b"From: a@remote.example\r\nSubject: rolling\r\n\r\nHello.\r\n"

ETC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "etc")
FRAGMENT = os.path.join(ETC, "haproxy", "readyz-check.cfg")

# The balancer around the backend lines of etc/haproxy/readyz-check.cfg
# (its check, retries and redispatch), with the test's own servers,
# checked every 200 ms: one failure takes a server out, one success back.
CONFIG = """\
global
    maxconn 1000

defaults
    mode tcp
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    timeout check 1s

frontend smtp
    bind 127.0.0.1:{front}
    default_backend mailharbor

backend mailharbor
    balance roundrobin
{backend}
    default-server inter 200ms fall 1 rise 1
{servers}
"""


def fragmentLines() -> str:
    """
    The backend settings of the shipped fragment, but its servers.
    """
    with open(FRAGMENT, encoding="utf-8") as f:
        lines = f.read().split("backend mailharbor\n", 1)[1].splitlines()
    kept = [line for line in lines if line.strip() and not line.strip().startswith(("#", "server "))]
    assert any("httpchk GET /readyz" in line for line in kept), kept
    return "\n".join(kept)


def freePorts(count: int) -> list[int]:
    """
    Loopback ports nothing listens on now, all different.
    """
    probes = []
    for _ in range(count):
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        probes.append(probe)
    ports = [probe.getsockname()[1] for probe in probes]
    for probe in probes:
        probe.close()
    return ports


class Load:
    """
    Clients sending one message per session, continuously, through the
    balancer, until stopped; each session's outcome is kept.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.stopping = threading.Event()
        self.stored: list[str] = []
        self.failures: list[str] = []
        self._lock = threading.Lock()

    def client(self, number: int) -> None:
        sent = 0
        while not self.stopping.is_set():
            sent += 1
            try:
                with smtplib.SMTP("127.0.0.1", self.port, local_hostname="client.example", timeout=CLIENT_TIMEOUT) as s:
                    s.ehlo()
                    s.mail("s@remote.example")
                    code, reply = s.rcpt(f"c{number}-{sent}@{DOMAIN}")
                    if code != 250:
                        raise smtplib.SMTPResponseException(code, reply)
                    code, reply = s.data(MESSAGE)
                    if code != 250:
                        raise smtplib.SMTPResponseException(code, reply)
                with self._lock:
                    self.stored.append(reply.decode().rsplit(" ", 1)[-1])
            except Exception as e:  # noqa: BLE001 -- every failure is what the test counts
                with self._lock:
                    self.failures.append(f"client {number} session {sent}: {e!r}")

    def count(self) -> int:
        with self._lock:
            return len(self.stored)


class Instance:
    """
    One MailHarbor instance behind the balancer, started again on the
    same ports after each drain.
    """

    def __init__(self, testCase: TestCase, name: str, root: str, smtp: int, metrics: int, config: str) -> None:
        self.name = name
        self.smtp = smtp
        self.metrics = metrics
        self.arguments = [
            twistdPath(), "-n", "--pidfile=", "mailharbor",
            "--port", f"tcp:{smtp}:interface=127.0.0.1", "--domain", DOMAIN, "--maildir", root,
            "--hostname", HOSTNAME, "--config", config, "--metrics", f"tcp:{metrics}:interface=127.0.0.1",
        ]
        self.cwd = os.path.abspath(testCase.mktemp())
        os.makedirs(self.cwd)
        self.runs: list[TwistdProcess] = []
        testCase.addCleanup(self.stop)

    @property
    def process(self) -> TwistdProcess:
        return self.runs[-1]

    async def start(self) -> None:
        self.runs.append(TwistdProcess(self.arguments, self.cwd))

        def ready() -> bool:
            if self.process.exited:
                raise AssertionError(f"{self.name} exited:\n{self.process.output.decode(errors='replace')}")
            try:
                return fetch(f"http://127.0.0.1:{self.metrics}/readyz")[0] == 200
            except OSError:
                return False

        await pollUntil(ready, f"{self.name} is ready", 30)

    def served(self) -> int:
        """
        Sessions with a stored message in this instance's current run.
        """
        return self.process.output.count(b"result=stored")

    async def stop(self) -> None:
        for run in self.runs:
            await run.stop()


class RollingRestartTests(TestCase):
    """
    Draining one instance at a time behind HAProxy's health check.
    """

    def setUp(self) -> None:
        if not os.path.exists(HAPROXY):
            raise SkipTest("haproxy is not installed (Debian's haproxy package)")

    async def startBalancer(self, front: int, instances: Sequence[Instance]) -> None:
        servers = "\n".join(
            f"    server {i.name} 127.0.0.1:{i.smtp} check port {i.metrics}" for i in instances
        )
        path = os.path.abspath(self.mktemp())
        writeFile(path, CONFIG.format(front=front, backend=fragmentLines(), servers=servers))
        output = TwistdOutput()
        transport = reactor.spawnProcess(output, HAPROXY, [HAPROXY, "-db", "-f", path], env={})

        async def stop() -> None:
            if output.exitCode is None:
                transport.signalProcess("TERM")
            await pollUntil(lambda: output.exitCode is not None, "haproxy has stopped")

        self.addCleanup(stop)

        def accepting() -> bool:
            if output.exitCode is not None:
                raise AssertionError(f"haproxy exited: {output.output.decode(errors='replace')}")
            try:
                socket.create_connection(("127.0.0.1", front), timeout=1).close()
            except OSError:
                return False
            return True

        await pollUntil(accepting, "haproxy listens")

    async def test_noSessionFails(self) -> None:
        """
        While clients send continuously through HAProxy, each instance is
        drained (SIGUSR2), exits by itself, and is started again: every
        session gets its 250, every 250 has its file, and each instance
        served sessions again after its restart.
        """
        root = os.path.abspath(self.mktemp())
        config = os.path.abspath(self.mktemp())
        writeFile(config, "drain_delay = 1.5\nshutdown_grace = 10\n")
        front, *ports = freePorts(5)
        instances = [
            Instance(self, "a", root, ports[0], ports[1], config),
            Instance(self, "b", root, ports[2], ports[3], config),
        ]
        for instance in instances:
            await instance.start()
        await self.startBalancer(front, instances)

        load = Load(front)
        clients = DeferredList([inThread(load.client, n) for n in range(CLIENTS)])
        try:
            await pollUntil(lambda: load.count() >= 20, "sessions go through the balancer")
            for instance in instances:
                before = load.count()
                began = time.monotonic()
                instance.process.transport.signalProcess(signal.SIGUSR2)
                code = await instance.process.wait(30)
                self.assertEqual(code, 0, instance.process.output.decode(errors="replace"))
                self.assertIn(b"Drained (every session has ended)", instance.process.output)
                # The other instance took the sessions meanwhile.
                self.assertGreater(load.count(), before, f"no session while {instance.name} drained")
                self.assertGreaterEqual(time.monotonic() - began, 1.5)
                await instance.start()
                await pollUntil(
                    lambda instance=instance: instance.served() >= 5,  # type: ignore[misc]
                    f"{instance.name} serves again after its restart",
                )
        finally:
            load.stopping.set()
            await clients
        self.assertEqual(load.failures, [])
        stored = mailbox.Maildir(os.path.join(root, DOMAIN), factory=None, create=False)
        names = {key.split(",")[0] for key in stored.iterkeys()}
        self.assertEqual(len(stored), len(load.stored))
        self.assertEqual(names, set(load.stored))
