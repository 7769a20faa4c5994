"""
Helpers for the end-to-end tests: the real MailHarbor service listening on
loopback, blocking clients run in threads, a real C{twistd mailharbor}
subprocess, bounded polling for what other processes do, and a loopback
HTTP server for the webhooks to call.

The in-process server is built exactly as C{twistd mailharbor} builds it
(L{harbor.tap.Options} then L{harbor.tap.makeService} with the global
reactor), so what is tested is the wiring, not a hand-made factory.  Its
cleanup stops listening and then waits until the server side of every
connection accepted on its port has closed, so trial finds a clean reactor.
"""

from __future__ import annotations

import mailbox
import os
import re
import smtplib
import socket
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar, cast

from twisted.internet import reactor, task
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.tcp import Server
from twisted.internet.threads import deferToThread
from twisted.protocols.policies import WrappingFactory
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from harbor.service import ListeningService
from harbor.tap import Options, makeService
from harbor.test._support import files

T = TypeVar("T")

DOMAIN = "example.com"
HOSTNAME = "mx.example.com"
LOOPBACK_PORT = "tcp:0:interface=127.0.0.1"
CLIENT_TIMEOUT = 30.0
# How long cleanup and polling loops wait before giving up.
POLL_LIMIT = 15.0
POLL_INTERVAL = 0.02

_LISTENING = re.compile(rb"MailHarbor listening on .*\(127\.0\.0\.1 port (\d+)\)")


def pause(seconds: float = POLL_INTERVAL) -> Deferred[None]:
    """
    Let the reactor turn for a moment; only for bounded polling loops.
    """
    return task.deferLater(reactor, seconds, lambda: None)


def inThread(f: Callable[..., T], *args: Any, **kwargs: Any) -> Deferred[T]:
    """
    Run a blocking client off the reactor thread, so the server can answer.
    """
    return deferToThread(f, *args, **kwargs)


def sendOne(port: int, recipient: str, message: bytes) -> dict[str, tuple[int, bytes]]:
    """
    Send one message to C{recipient} on the server at C{port} with smtplib
    (blocking: call it in a thread); the refused recipients, as smtplib
    gives them.
    """
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.example", timeout=CLIENT_TIMEOUT) as s:
        return s.sendmail("sender@remote.example", [recipient], message)


def runInRealThread(f: Callable[[], Any]) -> Deferred[Any]:
    """
    The reactor's thread pool, as the server uses it.
    """
    return deferToThread(f)


async def pollUntil(condition: Callable[[], object], what: str, limit: float = POLL_LIMIT) -> None:
    """
    Let the reactor run until C{condition()} is true; only for bounded
    waits on other processes.

    @raise AssertionError: naming C{what} if it is still false after
        C{limit} seconds.
    """
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {limit}s waiting until {what}")
        await pause()


def processGone(pid: int) -> bool:
    """
    Whether process C{pid} has exited (and been reaped).
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _serverConnections(portNumber: int) -> list[Server]:
    """
    The server-side TCP connections the reactor still watches on a port.
    """
    selectables = list(reactor.getReaders()) + list(reactor.getWriters())
    found = []
    for s in dict.fromkeys(selectables):
        if isinstance(s, Server):
            try:
                if s.getHost().port == portNumber:
                    found.append(s)
            except OSError:
                found.append(s)
    return found


class RunningServer:
    """
    A MailHarbor service running in this process.

    @ivar root: The Maildir root.
    @ivar port: The TCP port it listens on, on 127.0.0.1.
    @ivar ports: Every TCP port it listens on, C{port} first.
    @ivar service: The L{harbor.service.HarborService}.
    """

    def __init__(self, root: str, port: int, service: Any, ports: Sequence[int] = ()) -> None:
        self.root = root
        self.port = port
        self.ports = list(ports) or [port]
        self.service = service

    def maildirPath(self, domain: str = DOMAIN) -> str:
        """
        The Maildir a domain's mail is stored in.
        """
        return os.path.join(self.root, domain)

    def maildir(self, domain: str = DOMAIN) -> mailbox.Maildir:
        """
        The domain's Maildir opened as a mail reader opens it.
        """
        return mailbox.Maildir(self.maildirPath(domain), factory=None, create=False)

    def listing(self, sub: str, domain: str = DOMAIN) -> list[str]:
        """
        The file names in C{tmp}, C{new} or C{cur} of a domain's Maildir.
        """
        return files(self.maildirPath(domain), sub)

    def storedFiles(self, domain: str = DOMAIN) -> dict[str, bytes]:
        """
        Every message stored for a domain, by Maildir key, as bytes.
        """
        md = self.maildir(domain)
        return {key: md.get_bytes(key) for key in md.iterkeys()}

    def connect(self) -> smtplib.SMTP:
        """
        Open an smtplib session (blocking: call it in a thread).
        """
        return smtplib.SMTP("127.0.0.1", self.port, local_hostname="client.example", timeout=CLIENT_TIMEOUT)

    def rawSocket(self) -> RawClient:
        """
        Open a raw socket session (blocking: call it in a thread).
        """
        return RawClient(self.port)


async def startServer(
    testCase: TestCase, *extraArguments: str, domains: Sequence[str] = (DOMAIN,)
) -> RunningServer:
    """
    Start MailHarbor as C{twistd mailharbor} would, on a free loopback port,
    with the Maildir root in a fresh temporary directory.  Cleanup stops
    it and waits until its connections have closed.

    @param extraArguments: More command-line options (C{--config}, ...).
    """
    root = os.path.abspath(testCase.mktemp())
    arguments = ["--port", LOOPBACK_PORT, "--maildir", root, "--hostname", HOSTNAME]
    for domain in domains:
        arguments += ["--domain", domain]
    options = Options()
    options.parseOptions(arguments + list(extraArguments))
    service = makeService(options, reactor)
    service.privilegedStartService()
    service.startService()
    listeners = [s for s in service if isinstance(s, ListeningService)]
    testCase.assertTrue(listeners)
    portNumbers = []
    for listener in listeners:
        testCase.assertIsNotNone(listener.port)
        assert listener.port is not None
        portNumbers.append(cast(IPv4Address, listener.port.getHost()).port)
    portNumber = portNumbers[0]

    async def stop() -> None:
        await service.stopService()
        def remaining() -> list[Server]:
            return [c for number in portNumbers for c in _serverConnections(number)]

        try:
            await pollUntil(lambda: not remaining(), "the server has closed its connections")
        except AssertionError:
            # Leave a clean reactor for the next test, and fail this one.
            for connection in remaining():
                connection.abortConnection()
            await pause(0.1)
            raise

    testCase.addCleanup(stop)
    return RunningServer(root, portNumber, service, portNumbers)


class RawClient:
    """
    A blocking SMTP client on a bare socket, for what smtplib will not send.
    Every operation has a timeout, so a server that stops answering fails
    the test instead of hanging it.
    """

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=CLIENT_TIMEOUT)
        self._buffer = b""
        self.greeting = self.reply()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _line(self) -> bytes | None:
        while b"\r\n" not in self._buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\r\n", 1)
        return line

    def reply(self) -> tuple[int, bytes]:
        """
        Read one (possibly multi-line) reply.

        @return: its code and its text, lines joined by LF.
        @raise EOFError: if the connection closes first.
        """
        texts: list[bytes] = []
        while True:
            line = self._line()
            if line is None:
                raise EOFError(f"connection closed; partial reply {texts!r}")
            if len(line) < 3 or not line[:3].isdigit() or line[3:4] not in (b" ", b"-", b""):
                raise ValueError(f"not an SMTP reply line: {line!r}")
            texts.append(line[4:])
            if line[3:4] != b"-":
                return int(line[:3]), b"\n".join(texts)

    def command(self, line: bytes) -> tuple[int, bytes]:
        """
        Send one command line (CRLF added) and read its reply.
        """
        self.send(line + b"\r\n")
        return self.reply()

    def repliesUntilClosed(self) -> list[tuple[int, bytes]]:
        """
        Read replies until the server closes the connection.
        """
        replies = []
        while True:
            try:
                replies.append(self.reply())
            except EOFError:
                if self._buffer:
                    raise
                return replies

    def close(self) -> None:
        self.sock.close()


def venvCommand(name: str) -> str:
    """
    A console script of the environment the tests run in (C{twistd},
    C{mailharbor}).
    """
    return os.path.join(os.path.dirname(sys.executable), name)


def twistdPath() -> str:
    """
    The C{twistd} of the environment the tests run in.
    """
    return venvCommand("twistd")


def freePort() -> int:
    """
    A TCP port on 127.0.0.1 that nothing listens on now, for a program
    started next to listen on.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def subprocessEnvironment() -> dict[str, str]:
    """
    The environment for a C{twistd} subprocess: this one, without anything
    that would put the checkout ahead of the installed package.
    """
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


class TwistdOutput(ProcessProtocol):
    def __init__(self) -> None:
        self.output = b""
        self.ended: Deferred[int] = Deferred()
        self.exitCode: int | None = None

    def outReceived(self, data: bytes) -> None:
        self.output += data

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        if reason.check(ProcessDone):
            self.exitCode = 0
        elif reason.check(ProcessTerminated):
            value = cast(ProcessTerminated, reason.value)
            self.exitCode = value.exitCode if value.exitCode is not None else -(value.signal or 0)
        else:
            self.exitCode = -1
        self.ended.callback(self.exitCode)


class TwistdProcess:
    """
    A C{twistd -n mailharbor} subprocess.

    @ivar protocol: Collects its output (stdout and stderr together) and
        fires C{ended} with its exit code.
    """

    def __init__(self, arguments: Sequence[str], cwd: str) -> None:
        self.arguments = list(arguments)
        self.protocol = TwistdOutput()
        self.transport = reactor.spawnProcess(
            self.protocol,
            self.arguments[0],
            self.arguments,
            env=subprocessEnvironment(),
            path=cwd,
        )

    @property
    def output(self) -> bytes:
        return self.protocol.output

    @property
    def exited(self) -> bool:
        return self.protocol.exitCode is not None

    async def wait(self, limit: float = POLL_LIMIT * 2) -> int:
        """
        Wait until it exits by itself; kill it and fail if it does not.
        """
        try:
            await pollUntil(lambda: self.exited, "twistd has exited", limit)
        except AssertionError:
            await self.stop()
            raise AssertionError(f"twistd did not exit; output:\n{self.output.decode(errors='replace')}")
        assert self.protocol.exitCode is not None
        return self.protocol.exitCode

    async def stop(self) -> None:
        """
        Terminate it (SIGTERM, then SIGKILL if it lingers) and reap it.
        """
        if self.exited:
            return
        self.transport.signalProcess("TERM")
        try:
            await pollUntil(lambda: self.exited, "twistd has stopped after SIGTERM")
        except AssertionError:
            if not self.exited:
                self.transport.signalProcess("KILL")
            await pollUntil(lambda: self.exited, "twistd has died after SIGKILL")
            raise


async def runTwistd(
    testCase: TestCase,
    serviceArguments: Sequence[str],
    twistdArguments: Sequence[str] = (),
    wrapper: Sequence[str] = (),
) -> TwistdProcess:
    """
    Start C{twistd -n --pidfile= [twistdArguments] mailharbor
    [serviceArguments]} from the installed package, in a temporary working
    directory; cleanup terminates it and waits for it.

    @param wrapper: A command that runs twistd, such as C{unshare --pid
        --fork}, put before it.
    """
    cwd = os.path.abspath(testCase.mktemp())
    os.makedirs(cwd)
    process = TwistdProcess(
        [*wrapper, twistdPath(), "-n", "--pidfile=", *twistdArguments, "mailharbor", *serviceArguments], cwd
    )
    testCase.addCleanup(process.stop)
    return process


async def startTwistdServer(
    testCase: TestCase,
    root: str,
    twistdArguments: Sequence[str] = (),
    logfile: str | None = None,
    serviceArguments: Sequence[str] = (),
    wrapper: Sequence[str] = (),
) -> tuple[TwistdProcess, int]:
    """
    Start a real C{twistd mailharbor} on a free loopback port and wait until
    it logs the port it bound (on its output, or in C{logfile}).

    @param serviceArguments: More options for C{mailharbor} itself.
    @param wrapper: A command to run twistd with (see L{runTwistd}).

    @return: the process and the port.
    """
    twistdArguments = list(twistdArguments)
    if logfile is not None:
        twistdArguments += ["--logfile", logfile]
    process = await runTwistd(
        testCase,
        ["--port", LOOPBACK_PORT, "--domain", DOMAIN, "--maildir", root, "--hostname", HOSTNAME, *serviceArguments],
        twistdArguments,
        wrapper,
    )

    def logged() -> bytes:
        if logfile is None:
            return process.output
        try:
            with open(logfile, "rb") as f:
                return f.read()
        except FileNotFoundError:
            return b""

    found: list[int] = []

    def listening() -> bool:
        match = _LISTENING.search(logged())
        if match:
            found.append(int(match.group(1)))
            return True
        if process.exited:
            raise AssertionError(
                f"twistd exited with {process.protocol.exitCode} before listening:\n"
                f"{process.output.decode(errors='replace')}{logged().decode(errors='replace')}"
            )
        return False

    await pollUntil(listening, "twistd logs the port it listens on", POLL_LIMIT * 2)
    return process, found[0]


class Receiver:
    """
    A loopback HTTP server that records POSTs and answers with scripted
    status codes, optionally holding requests until released.
    """

    def __init__(self, testCase: TestCase) -> None:
        receiver = self
        self.requests: list[tuple[dict[bytes, bytes], bytes]] = []
        self.codes: list[int] = []
        self.hold = False
        self.held: list[tuple[Any, int]] = []
        self.open = 0
        self.maxOpen = 0

        class Endpoint(Resource):
            isLeaf = True

            def render_POST(self, request: Any) -> Any:
                receiver.requests.append((dict(request.getAllHeaders()), request.content.read()))
                code = receiver.codes.pop(0) if receiver.codes else 200
                if not receiver.hold:
                    request.setResponseCode(code)
                    return b"ok" if code < 300 else b"server sad"
                receiver.open += 1
                receiver.maxOpen = max(receiver.maxOpen, receiver.open)
                entry = (request, code)
                receiver.held.append(entry)

                def over(ignored: object) -> None:
                    receiver.open -= 1
                    if entry in receiver.held:
                        receiver.held.remove(entry)

                request.notifyFinish().addBoth(over)
                return NOT_DONE_YET

        self.factory = WrappingFactory(Site(Endpoint()))
        # WrappingFactory is typed as a ClientFactory, but it wraps servers too.
        self.port = reactor.listenTCP(0, self.factory, interface="127.0.0.1")  # type: ignore[arg-type]
        self.url = f"http://127.0.0.1:{cast(IPv4Address, self.port.getHost()).port}/hook"
        testCase.addCleanup(self.close)

    def release(self) -> None:
        """
        Answer the oldest held request.
        """
        request, code = self.held.pop(0)
        request.setResponseCode(code)
        request.write(b"ok")
        request.finish()

    async def close(self) -> None:
        while self.held:
            self.release()
        await maybeDeferred(self.port.stopListening)
        await pollUntil(lambda: not self.factory.protocols, "the server's connections have closed")
