"""
MailHarbor behind a real HAProxy (Debian's C{haproxy}), on loopback: two
C{twistd mailharbor} instances with C{haproxy:} listeners, HAProxy running
the shipped C{etc/haproxy/haproxy.cfg} with the test's addresses, and
clients bound to 127.0.0.2 and 127.0.0.3 so that their addresses differ
from the balancer's (127.0.0.1).
"""

from __future__ import annotations

import mailbox
import os
import re
import smtplib
import socket
import ssl
import subprocess
from collections.abc import Sequence

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessExitedAlready
from twisted.trial.unittest import SkipTest, TestCase

from harbor.test._support import traceHeaders
from harbor.test.certs import TestCA
from tests._e2e import (
    CLIENT_TIMEOUT,
    DOMAIN,
    LOOPBACK_PORT,
    POLL_LIMIT,
    TwistdOutput,
    TwistdProcess,
    freePort,
    inThread,
    pollUntil,
    runTwistd,
    startServer,
)

HAPROXY = "/usr/sbin/haproxy"
CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "etc", "haproxy", "haproxy.cfg")
MESSAGE = b"Subject: through HAProxy\r\n\r\nHello.\r\n"
BACKLOG = 77

_LISTENING = re.compile(rb"MailHarbor listening on .*\(127\.0\.0\.1 port (\d+)\)")
# The sections of haproxy.cfg: a keyword at the start of a line.
_SECTION = re.compile(r"^(?=[a-z])", re.MULTILINE)


def testConfig(frontend: int, servers: Sequence[int], sendProxy: str = "send-proxy-v2") -> str:
    """
    The shipped HAProxy configuration, on the test's ports: its own
    C{global} section (logging to standard output, no chroot or user,
    which need root), the frontend bound to 127.0.0.1, and the servers at
    the instances' ports, with C{sendProxy}.
    """
    with open(CONFIG) as f:
        text = f.read()
    sections = [s for s in _SECTION.split(text) if s.strip()]
    kept = [s for s in sections if not s.startswith("global")]
    self_global = "global\n    log stdout format raw local0 info\n    maxconn 200\n\n"
    text = self_global + "".join(kept)
    text, binds = re.subn(r"^(\s*)bind :25$", rf"\1bind 127.0.0.1:{frontend}", text, flags=re.MULTILINE)
    assert binds == 1, "the frontend's bind line"
    ports = iter(servers)

    def server(match: re.Match[str]) -> str:
        options = match.group(3).replace("send-proxy-v2", sendProxy)
        return f"{match.group(1)}127.0.0.1:{next(ports)}{options}"

    text, count = re.subn(r"^(\s*server \S+ )(\S+)(.*)$", server, text, flags=re.MULTILINE)
    assert count == len(servers), "one server line per instance"
    return text


def connectFrom(source: str, port: int) -> smtplib.SMTP:
    """
    An smtplib session to 127.0.0.1 from C{source} (blocking).
    """
    return smtplib.SMTP(
        "127.0.0.1", port, local_hostname="client.example", timeout=CLIENT_TIMEOUT, source_address=(source, 0)
    )


def sendFrom(source: str, port: int, recipient: str = f"a@{DOMAIN}") -> dict[str, tuple[int, bytes]]:
    """
    Send one message from C{source} (blocking); the refused recipients.
    """
    with connectFrom(source, port) as s:
        return s.sendmail("sender@remote.example", [recipient], MESSAGE)


def rawFrom(source: str, port: int, data: bytes) -> bytes:
    """
    Connect from C{source}, send C{data}, and read until the server closes
    (blocking); everything it sent.  A refused connection is reset (it may
    be before the connection is even reported made, or while sending).
    """
    received = b""
    try:
        with socket.create_connection(
            ("127.0.0.1", port), timeout=CLIENT_TIMEOUT, source_address=(source, 0)
        ) as s:
            s.sendall(data)
            while chunk := s.recv(65536):
                received += chunk
    except (ConnectionResetError, BrokenPipeError):
        pass
    return received


def backlogOf(port: int) -> int:
    """
    The listen backlog of the socket listening on C{port}, as C{ss -ltn}
    shows it (its Send-Q column).
    """
    output = subprocess.run(
        ["ss", "-ltnH", f"sport = :{port}"], check=True, capture_output=True, text=True
    ).stdout
    (line,) = output.splitlines()
    return int(line.split()[2])


class Instance:
    """
    One C{twistd mailharbor} with a C{haproxy:} listener on loopback.
    """

    def __init__(self, process: TwistdProcess, port: int, root: str) -> None:
        self.process = process
        self.port = port
        self.root = root

    @property
    def log(self) -> str:
        return self.process.output.decode("utf-8", "replace")

    def messages(self) -> list[mailbox.MaildirMessage]:
        path = os.path.join(self.root, DOMAIN)
        if not os.path.isdir(path):
            return []
        return list(mailbox.Maildir(path, create=False))


class HAProxy:
    """
    A C{haproxy -db} process, stopped on cleanup.
    """

    def __init__(self, testCase: TestCase, config: str) -> None:
        path = os.path.join(os.path.abspath(testCase.mktemp()) + ".cfg")
        with open(path, "w") as f:
            f.write(config)
        self.protocol = TwistdOutput()
        self.transport = reactor.spawnProcess(
            self.protocol, HAPROXY, [HAPROXY, "-f", path, "-db"], env={"PATH": "/usr/sbin:/usr/bin:/bin"}
        )
        testCase.addCleanup(self.stop)

    async def stop(self) -> None:
        if self.protocol.exitCode is not None:
            return
        try:
            self.transport.signalProcess("TERM")
        except ProcessExitedAlready:
            return
        await pollUntil(lambda: self.protocol.exitCode is not None, "haproxy has stopped")


class ClusterTestCase(TestCase):
    """
    Two instances behind HAProxy sending PROXY headers (C{sendProxy}),
    each of C{workers} processes.
    """

    timeout = 120
    sendProxy = "send-proxy-v2"
    workers = 1

    def writeConfig(self, name: str) -> tuple[str, str]:
        """
        The configuration of instance C{name}: a haproxy: listener that
        trusts HAProxy at 127.0.0.1 only, which is exempt from the limit of
        one connection per client, while its clients are not; and a filter
        that refuses one recipient from 127.0.0.3 only.

        @return: its root directory and configuration file.
        """
        root = os.path.abspath(self.mktemp())
        os.makedirs(root)
        configPath = os.path.join(root, "mailharbor.toml")
        with open(configPath, "w") as f:
            f.write(
                f"""\
domain = ["{DOMAIN}"]
maildir = "{root}/Maildir"
hostname = "{name}.example.com"
port = ["haproxy:tcp:0:interface=127.0.0.1"]
trusted_proxies = ["127.0.0.1/32"]
connection_limit_exceptions = ["127.0.0.1/32"]
max_connections_per_client = 1
listen_backlog = {BACKLOG}
workers = {self.workers}

[[filter]]
client = "127.0.0.3"
recipient = "filtered@{DOMAIN}"
action = "reject"
text = "Not from 127.0.0.3"
"""
            )
        return root, configPath

    async def startInstance(self, name: str) -> Instance:
        root, configPath = self.writeConfig(name)
        process = await runTwistd(self, ["--config", configPath])
        found: list[int] = []

        def listening() -> bool:
            match = _LISTENING.search(process.output)
            if match:
                found.append(int(match.group(1)))
                return True
            if process.exited:
                raise AssertionError(f"twistd exited before listening:\n{process.output.decode(errors='replace')}")
            return False

        await pollUntil(listening, "twistd logs the port it listens on", POLL_LIMIT * 2)
        if self.workers > 1:
            await pollUntil(
                lambda: b"worker 1: " in process.output and b"MailHarbor receiving mail" in process.output.split(
                    b"Started worker 1", 1
                )[-1],
                "the worker is up",
                POLL_LIMIT * 2,
            )
        return Instance(process, found[0], os.path.join(root, "Maildir"))

    def setUp(self) -> Deferred[None]:  # type: ignore[override]
        if not os.path.exists(HAPROXY):
            raise SkipTest(f"{HAPROXY} is not installed (Debian package haproxy)")
        return Deferred.fromCoroutine(self.startCluster())

    async def startCluster(self) -> None:
        self.instances = [await self.startInstance("mx1"), await self.startInstance("mx2")]
        self.port = freePort()
        self.haproxy = HAProxy(self, testConfig(self.port, [i.port for i in self.instances], self.sendProxy))
        await pollUntil(self.frontendUp, "haproxy listens", POLL_LIMIT * 2)

    def frontendUp(self) -> bool:
        if self.haproxy.protocol.exitCode is not None:
            raise AssertionError(f"haproxy exited:\n{self.haproxy.protocol.output.decode(errors='replace')}")
        listening = subprocess.run(["ss", "-ltnH", f"sport = :{self.port}"], check=True, capture_output=True, text=True)
        return listening.stdout != ""

    def logs(self) -> str:
        return "".join(instance.log for instance in self.instances)

    def messages(self) -> list[mailbox.MaildirMessage]:
        return [m for instance in self.instances for m in instance.messages()]

    def receivedFrom(self) -> list[str]:
        """
        The client address of each stored message's C{Received:} header.
        """
        found = []
        for message in self.messages():
            match = re.match(r"from \S+ \((\[[^]]+\])\)", message["Received"])
            assert match is not None, message["Received"]
            found.append(match.group(1))
        return sorted(found)

    async def assertRealAddress(self) -> None:
        """
        The client's own address, not HAProxy's, is in the log line, the
        Received: header and a filter's verdict.
        """
        self.assertEqual(await inThread(sendFrom, "127.0.0.2", self.port), {})
        self.assertEqual(await inThread(sendFrom, "127.0.0.3", self.port), {})
        # The filter refuses filtered@ from 127.0.0.3 only.
        self.assertEqual(await inThread(sendFrom, "127.0.0.2", self.port, f"filtered@{DOMAIN}"), {})
        with self.assertRaises(smtplib.SMTPRecipientsRefused) as refused:
            await inThread(sendFrom, "127.0.0.3", self.port, f"filtered@{DOMAIN}")
        self.assertEqual(refused.exception.recipients[f"filtered@{DOMAIN}"], (550, b"5.7.1 Not from 127.0.0.3"))
        self.assertEqual(self.receivedFrom(), ["[127.0.0.2]", "[127.0.0.2]", "[127.0.0.3]"])
        await pollUntil(lambda: self.logs().count("result=stored") == 3, "the transactions are logged")
        logs = self.logs()
        self.assertEqual(len(re.findall(r"client=127\.0\.0\.2 helo=client\.example .* result=stored", logs)), 2)
        self.assertEqual(len(re.findall(r"client=127\.0\.0\.3 helo=client\.example .* result=stored", logs)), 1)
        self.assertIn("client=127.0.0.3 RCPT refused: 550 5.7.1 Not from 127.0.0.3", logs)
        self.assertNotIn("client=127.0.0.1 helo=client.example", logs)

    async def assertWorkerServes(self) -> None:
        """
        Mail through a worker is stored with the client's address, every
        reply in step (no header read as a command).
        """

        def sendUntilAWorkerServes() -> int:
            for attempt in range(200):
                source = ("127.0.0.2", "127.0.0.3")[attempt % 2]
                self.assertEqual(sendFrom(source, self.port), {})
                if re.search(r"worker 1: .*client=127\.0\.0\.[23] helo=client\.example .* result=stored", self.logs()):
                    return attempt + 1
            return 0

        sent = await inThread(sendUntilAWorkerServes)
        self.assertNotEqual(sent, 0, self.logs())
        await pollUntil(lambda: len(self.messages()) == sent, "every message is stored")
        self.assertLessEqual(set(self.receivedFrom()), {"[127.0.0.2]", "[127.0.0.3]"})
        self.assertNotIn("client=127.0.0.1 helo=client.example", self.logs())


class HAProxyTests(ClusterTestCase):
    """
    Two instances behind HAProxy sending PROXY v2 headers.
    """

    async def test_realAddress(self) -> None:
        """
        The client's own address, not HAProxy's, is in the log line, the
        Received: header and a filter's verdict.
        """
        await self.assertRealAddress()

    async def test_perClientLimit(self) -> None:
        """
        With one connection per client, a second from 127.0.0.2 is refused
        while one is open (HAProxy on loopback is exempt, its clients are
        not), and one from 127.0.0.3 is still let in.
        """
        first = await inThread(connectFrom, "127.0.0.2", self.port)
        self.addCleanup(first.close)
        self.assertEqual((await inThread(first.ehlo))[0], 250)
        with self.assertRaises((smtplib.SMTPConnectError, smtplib.SMTPServerDisconnected)) as caught:
            await inThread(connectFrom, "127.0.0.2", self.port)
        if isinstance(caught.exception, smtplib.SMTPConnectError):
            self.assertEqual(caught.exception.smtp_code, 421)
        other = await inThread(connectFrom, "127.0.0.3", self.port)
        self.addCleanup(other.close)
        self.assertEqual((await inThread(other.ehlo))[0], 250)
        await pollUntil(
            lambda: "client=127.0.0.2 refused: too many connections from your address" in self.logs(),
            "the refusal is logged",
        )
        self.assertNotIn("client=127.0.0.3 refused", self.logs())

    async def test_noHeader(self) -> None:
        """
        A client talking SMTP straight to a haproxy: port, even from a
        trusted address, gets no banner and is logged; one from elsewhere
        is cut off at once.
        """
        instance = self.instances[0]
        self.assertEqual(await inThread(rawFrom, "127.0.0.1", instance.port, b"EHLO client.example\r\n"), b"")
        self.assertEqual(await inThread(rawFrom, "127.0.0.2", instance.port, b"EHLO client.example\r\n"), b"")
        await pollUntil(lambda: instance.log.count("refused:") == 2, "the refusals are logged")
        self.assertIn(
            "proxy=127.0.0.1 refused: invalid PROXY header: no PROXY header: the stream starts "
            "b'EHLO client.exam'",
            instance.log,
        )
        self.assertIn("proxy=127.0.0.2 refused: not in trusted_proxies", instance.log)

    async def test_forgedHeader(self) -> None:
        """
        A PROXY header sent straight to the port from an untrusted address
        is not believed: the connection is closed and nothing is stored.
        """
        instance = self.instances[0]
        forged = (
            b"PROXY TCP4 198.51.100.7 127.0.0.1 40000 25\r\n"
            b"EHLO client.example\r\nMAIL FROM:<s@remote.example>\r\nRCPT TO:<a@example.com>\r\nDATA\r\n"
            + MESSAGE
            + b".\r\nQUIT\r\n"
        )
        self.assertEqual(await inThread(rawFrom, "127.0.0.2", instance.port, forged), b"")
        await pollUntil(lambda: "refused:" in instance.log, "the refusal is logged")
        self.assertIn("proxy=127.0.0.2 refused: not in trusted_proxies", instance.log)
        self.assertNotIn("198.51.100.7", instance.log)
        self.assertEqual(instance.messages(), [])

    def test_backlog(self) -> None:
        """
        listen_backlog applies to haproxy: listeners.
        """
        self.assertEqual([backlogOf(instance.port) for instance in self.instances], [BACKLOG, BACKLOG])


class HAProxyV1Tests(ClusterTestCase):
    """
    Two instances behind HAProxy sending PROXY v1 headers (C{send-proxy}).
    """

    sendProxy = "send-proxy"

    async def test_realAddress(self) -> None:
        """
        The client's own address, from a v1 header, is in the log line,
        the Received: header and a filter's verdict.
        """
        await self.assertRealAddress()


class HAProxyWorkersTests(ClusterTestCase):
    """
    C{--workers 2} with a haproxy: listener: the worker adopts the port
    and reads the PROXY v2 header as the first process does.
    """

    workers = 2

    async def test_workerServes(self) -> None:
        """
        Mail through a worker is stored with the client's address.
        """
        await self.assertWorkerServes()


class HAProxyWorkersV1Tests(ClusterTestCase):
    """
    The same with PROXY v1 headers.
    """

    workers = 2
    sendProxy = "send-proxy"

    async def test_workerServes(self) -> None:
        """
        Mail through a worker, from a v1 header, is stored with the
        client's address.
        """
        await self.assertWorkerServes()


class ShippedConfigTests(TestCase):
    """
    C{etc/haproxy/haproxy.cfg} as shipped.
    """

    def test_valid(self) -> None:
        """
        HAProxy finds the shipped file valid as it is (C{haproxy -c}).
        """
        if not os.path.exists(HAPROXY):
            raise SkipTest(f"{HAPROXY} is not installed (Debian package haproxy)")
        result = subprocess.run([HAPROXY, "-c", "-f", CONFIG], check=False, capture_output=True, text=True)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertIn("Configuration file is valid", result.stdout + result.stderr)


def proxiedSMTP(port: int, header: bytes) -> smtplib.SMTP:
    """
    An smtplib session on a socket that has sent C{header} first, as a
    balancer does (blocking).
    """
    sock = socket.create_connection(("127.0.0.1", port), timeout=CLIENT_TIMEOUT)
    sock.sendall(header)
    client = smtplib.SMTP(local_hostname="client.example", timeout=CLIENT_TIMEOUT)
    client.sock = sock
    code, banner = client.getreply()
    assert code == 220, banner
    client._host = "localhost"  # type: ignore[attr-defined]  # the name STARTTLS checks the certificate for
    return client


class ProxiedTLSTests(TestCase):
    """
    TLS on haproxy: listeners, in process, with the header sent by hand:
    the PROXY header comes first, then TLS.
    """

    timeout = 60

    def setUp(self) -> None:
        self.ca = TestCA(self.mktemp())
        self.certificate, self.key = self.ca.issue()
        self.context = ssl.create_default_context(cafile=self.ca.certificatePath)

    async def test_starttls(self) -> None:
        """
        STARTTLS after a PROXY header: the handshake is seen (the stored
        copy says TLS) and the client is the header's.
        """
        server = await startServer(
            self, "--tls-cert", self.certificate, "--tls-key", self.key, "--port", f"haproxy:{LOOPBACK_PORT}"
        )

        def send() -> None:
            with proxiedSMTP(server.ports[1], b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 25\r\n") as client:
                client.ehlo()
                client.starttls(context=self.context)
                client.sendmail("s@remote.example", [f"a@{DOMAIN}"], MESSAGE)

        await inThread(send)
        [stored] = server.storedFiles().values()
        trace, _ = traceHeaders(stored)
        self.assertIn(b"([192.0.2.7])", trace)
        self.assertRegex(trace, rb"\(using TLSv1\.[23] with cipher \S+\)")

    async def test_implicitTLS(self) -> None:
        """
        A haproxy: tls_port reads the header, then speaks TLS at once.
        """
        server = await startServer(
            self, "--tls-cert", self.certificate, "--tls-key", self.key, "--tls-port", f"haproxy:{LOOPBACK_PORT}"
        )

        def send() -> None:
            sock = socket.create_connection(("127.0.0.1", server.ports[1]), timeout=CLIENT_TIMEOUT)
            sock.sendall(b"PROXY TCP6 2001:db8::7 ::1 40000 465\r\n")
            secure = self.context.wrap_socket(sock, server_hostname="localhost")
            client = smtplib.SMTP(local_hostname="client.example", timeout=CLIENT_TIMEOUT)
            client.sock = secure
            client.getreply()
            with client:
                client.sendmail("s@remote.example", [f"a@{DOMAIN}"], MESSAGE)

        await inThread(send)
        [stored] = server.storedFiles().values()
        self.assertIn(b"([IPv6:2001:db8::7])", traceHeaders(stored)[0])
        self.assertIn(b" with ESMTPS id ", stored)
