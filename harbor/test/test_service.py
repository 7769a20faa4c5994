"""
Tests for L{harbor.service}: the service built from a L{Config} and
keyword arguments, without twistd's options.
"""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Callable, Sequence
from typing import Any, cast
from unittest import SkipTest

from zope.interface.verify import verifyObject

from twisted.application.service import Application, IService
from twisted.cred.checkers import (
    ICredentialsChecker,
    InMemoryUsernamePasswordDatabaseDontUse,
)
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import ILogObserver, Logger, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.http_headers import Headers

from harbor.access import Identity
from harbor.auth import TextOrBytes
from harbor.config import Config
from harbor.ownership import AccessProblem
from harbor.service import HarborService, ListeningService, commitPath
from harbor.smtp._factory import HarborSMTPFactory
from harbor.store.fs import isTrustedFileSystem, loadSyncfs
from harbor.store.lanes import LARGE_COMMIT_LANES
from harbor.store.names import MaildirNamer
from harbor.store.writer import MaildirStore
from harbor.test._support import DeferredThreads, runSynchronously, stranger


class HarborServiceTests(SynchronousTestCase):
    """
    Tests for L{HarborService}.
    """

    def setUp(self) -> None:
        self.root = os.path.abspath(str(self.mktemp()))
        self.reactor = MemoryReactorClock()
        self.events: list[dict[str, Any]] = []
        self.patch(HarborService, "_log", Logger(observer=cast(ILogObserver, self.events.append)))

    def config(self, *domains: str) -> Config:
        return Config.fromMapping({"domain": list(domains), "hostname": "mx.example", "maildir": self.root})

    def factories(self, service: HarborService) -> list[HarborSMTPFactory]:
        factories = []
        for listener in service:
            if isinstance(listener, ListeningService):
                assert isinstance(listener._factory, HarborSMTPFactory)
                factories.append(listener._factory)
        return factories

    def test_credCheckers(self) -> None:
        """
        Cred checkers given besides the users file are offered by every
        listener.
        """
        checker = InMemoryUsernamePasswordDatabaseDontUse(alice=b"pw")
        service = HarborService(self.config("a.example"), self.reactor, credCheckers=[checker])
        [factory] = self.factories(service)
        [wrapped] = factory.settings.checkers
        assert isinstance(wrapped, TextOrBytes)
        self.assertIs(wrapped._checker, checker)

    def test_reload(self) -> None:
        """
        A reload uses what C{reread} returns for new connections and makes
        the new Maildirs; a C{ValueError} from it is logged and the
        configuration in use kept.
        """
        answers: list[tuple[Config, Sequence[ICredentialsChecker]] | Exception] = [
            (self.config("a.example", "b.example"), ()),
            ValueError("--domain: nope"),
        ]

        def reread() -> tuple[Config, Sequence[ICredentialsChecker]]:
            answer = answers.pop(0)
            if isinstance(answer, Exception):
                raise answer
            return answer

        service = HarborService(self.config("a.example"), self.reactor, reread=reread)
        [factory] = self.factories(service)
        before = factory.deliverer
        service.reload()
        self.assertIsNot(factory.deliverer, before)
        self.assertEqual([d.name for d in service.config.domains], ["a.example", "b.example"])
        self.assertTrue(os.path.isdir(os.path.join(self.root, "b.example", "new")))
        current = factory.deliverer
        service.reload()
        self.assertIs(factory.deliverer, current)
        self.assertEqual(self.events[-1]["error"], "--domain: nope")

    def test_jsonLog(self) -> None:
        """
        With C{logFormat="json"}, the application the service joins logs
        JSON lines to C{jsonLog}; by default its logging is left alone.
        """
        path = self.mktemp()
        application = Application("mailharbor")
        service = HarborService(self.config("a.example"), self.reactor, logFormat="json", jsonLog=path)
        service.setServiceParent(application)
        observer = application.getComponent(ILogObserver)
        self.assertIsNotNone(observer)
        observer({"log_format": "hello", "log_level": None, "log_namespace": "test", "log_time": 0.0})
        with open(path) as f:
            self.assertIn('"log_format": "hello"', f.read())
        plain = Application("mailharbor")
        HarborService(self.config("a.example"), self.reactor).setServiceParent(plain)
        self.assertIsNone(plain.getComponent(ILogObserver))

    def test_inheritedSockets(self) -> None:
        """
        A worker adopts the sockets it inherited instead of binding, and
        starts no workers of its own.
        """
        config = Config.fromMapping(
            {"domain": "a.example", "hostname": "mx.example", "maildir": self.root, "workers": 2}
        )
        service = HarborService(config, self.reactor, inheritedSockets=[(3, int(socket.AF_INET))])
        service.privilegedStartService()
        service.startService()
        self.addCleanup(service.stopService)
        [factory] = self.factories(service)
        self.assertEqual(self.reactor.adoptedPorts, [(3, socket.AF_INET, factory)])
        self.assertEqual(self.reactor.tcpServers, [])

    def test_proxyListener(self) -> None:
        """
        A C{haproxy:} listener reads the PROXY header before SMTP: the port
        under it is listened on with the listen backlog, a worker adopts it
        with the same wrapper, and a reload changes who is trusted.
        """
        from harbor.smtp._proxy import ProxyHeaderFactory

        mapping = {
            "domain": "a.example",
            "hostname": "mx.example",
            "maildir": self.root,
            "port": ["haproxy:tcp:2525:interface=127.0.0.1", "tcp:2526"],
            "listen_backlog": 77,
            "trusted_proxies": ["192.0.2.0/24"],
        }
        config = Config.fromMapping(mapping)

        def reread() -> tuple[Config, list[ICredentialsChecker]]:
            return Config.fromMapping({**mapping, "trusted_proxies": ["10.0.0.0/8"]}), []

        service = HarborService(config, self.reactor, reread=reread)
        service.privilegedStartService()
        self.addCleanup(service.stopService)
        self.assertEqual(
            [(port, backlog, interface) for port, _, backlog, interface in self.reactor.tcpServers],
            [(2525, 77, "127.0.0.1"), (2526, 77, "")],
        )
        proxied, plain = (s._factory for s in service if isinstance(s, ListeningService))
        assert isinstance(proxied, ProxyHeaderFactory)
        self.assertIsInstance(proxied.wrappedFactory, HarborSMTPFactory)
        self.assertIsInstance(plain, HarborSMTPFactory)
        self.assertEqual([str(n) for n in proxied.trusted], ["192.0.2.0/24"])
        service.reload()
        self.assertEqual([str(n) for n in proxied.trusted], ["10.0.0.0/8"])
        worker = HarborService(
            config, self.reactor, inheritedSockets=[(3, int(socket.AF_INET)), (4, int(socket.AF_INET))]
        )
        worker.privilegedStartService()
        self.addCleanup(worker.stopService)
        [first, second] = self.reactor.adoptedPorts
        self.assertEqual(first[:2], (3, socket.AF_INET))
        self.assertIsInstance(first[2], ProxyHeaderFactory)
        self.assertIsInstance(second[2], HarborSMTPFactory)

    def test_hangUpHandler(self) -> None:
        """
        A running service reloads on SIGHUP; stopping puts the handler it
        replaced back.
        """
        previous = signal.getsignal(signal.SIGHUP)
        service = HarborService(self.config("a.example"), self.reactor)
        service.startService()
        self.assertEqual(signal.getsignal(signal.SIGHUP), service._hangUp)
        service.stopService()
        self.assertEqual(signal.getsignal(signal.SIGHUP), previous)


class OperationsTests(SynchronousTestCase):
    """
    The metrics listener, readiness and the drain signal of a service.
    """

    def setUp(self) -> None:
        self.root = os.path.abspath(str(self.mktemp()))
        self.reactor = _Reactor()
        self.patch(HarborService, "_log", Logger(observer=cast(ILogObserver, lambda e: None)))

    def config(self, **settings: object) -> Config:
        return Config.fromMapping(
            {"domain": "a.example", "hostname": "mx.example", "maildir": self.root, "port": "tcp:2525", **settings}
        )

    def test_metricsListener(self) -> None:
        """
        With C{metrics}, the service listens on it too, after the SMTP
        ports; without it, only on those.
        """
        service = HarborService(self.config(), self.reactor)
        service.privilegedStartService()
        self.assertEqual([port for port, *_ in self.reactor.tcpServers], [2525])
        self.assertIsNone(service.metricsListener)
        reactor = MemoryReactorClock()
        service = HarborService(self.config(metrics="9025"), reactor)
        service.privilegedStartService()
        self.assertEqual([(port, host) for port, _, _, host in reactor.tcpServers], [(2525, ""), (9025, "127.0.0.1")])

    def test_workerServesNoMetrics(self) -> None:
        """
        A worker process does not listen on the metrics endpoint the first
        process serves.
        """
        config = self.config(metrics="9025", workers=2)
        service = HarborService(config, self.reactor, inheritedSockets=[(3, int(socket.AF_INET))])
        service.privilegedStartService()
        self.assertEqual(self.reactor.tcpServers, [])
        self.assertIsNone(service.metricsListener)

    def test_readyOnceListening(self) -> None:
        """
        Not ready before the service starts, ready once its ports listen,
        not ready once it stops.
        """
        service = HarborService(self.config(), self.reactor)
        self.assertFalse(service.readiness.ready)
        service.privilegedStartService()
        service.startService()
        self.assertTrue(service.readiness.ready)
        service.stopService()
        self.assertFalse(service.readiness.ready)

    def test_drainSignal(self) -> None:
        """
        A running service drains on SIGUSR2: not ready at once, the SMTP
        port closed after C{drain_delay} (the metrics port still open),
        and the process stopped, with no session open; stopping puts the
        handler it replaced back.
        """
        previous = signal.getsignal(signal.SIGUSR2)
        stopped: list[float] = []
        service = HarborService(
            self.config(metrics="9025", drain_delay=3), self.reactor,
            stopProcess=lambda: stopped.append(self.reactor.seconds()),
        )
        service.privilegedStartService()
        service.startService()
        self.assertEqual(signal.getsignal(signal.SIGUSR2), service._drainSignal)
        service._drainSignal(signal.SIGUSR2, None)
        self.reactor.advance(0)
        self.assertFalse(service.readiness.ready)
        self.assertEqual(service.metrics.registry.get_sample_value("mailharbor_draining"), 1)
        self.reactor.advance(2.9)
        self.assertEqual(stopped, [])
        self.reactor.advance(0.1)
        self.assertEqual(stopped, [3])
        assert service.metricsListener is not None and service.metricsListener.port is not None
        self.assertEqual([listener.port for listener in service._listeners], [None])
        self.assertIsNotNone(service.metricsListener.port)
        service.stopService()
        self.assertEqual(signal.getsignal(signal.SIGUSR2), previous)


ME = Identity("me", os.getuid(), os.getgid(), frozenset(os.getgroups()))
HOOK = {"name": "notify", "kind": "python", "target": "harbor.test.test_hooks:exampleHandler"}


class RunAsTests(SynchronousTestCase):
    """
    Tests for L{HarborService} started as root to run as another user: the
    Maildirs are made before the privileged start binds the ports.
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.events: list[dict[str, Any]] = []
        self.patch(HarborService, "_log", Logger(observer=cast(ILogObserver, self.events.append)))

    def config(self, root: str, **extra: Any) -> Config:
        return Config.fromMapping({"domain": "a.example", "hostname": "mx.example", "maildir": root, **extra})

    def test_preparedBeforeListening(self) -> None:
        """
        With a user to run as, the privileged start makes the Maildir root,
        the domain's Maildir and (with hooks) the hook spool, owned by that
        user, logs it, and binds the ports.
        """
        root = os.path.join(os.path.abspath(self.mktemp()), "mail")
        service = HarborService(self.config(root, hook=[HOOK]), self.reactor, runAs=ME)
        service.privilegedStartService()
        for path in ("a.example/new", "a.example/cur", "a.example/tmp", ".hooks/pending"):
            result = os.stat(os.path.join(root, path))
            self.assertEqual((result.st_uid, result.st_gid), (ME.uid, ME.gid), path)
        self.assertEqual(len(self.reactor.tcpServers), 1)
        [created] = [e for e in self.events if e["log_format"].startswith("Prepared")]
        self.assertEqual((created["maildir"], created["user"]), (root, "me"))
        self.assertIn(os.path.join(root, "a.example", "new"), created["paths"])

    def test_refusedBeforeListening(self) -> None:
        """
        A Maildir root the user could not use fails the privileged start,
        logged critically, before any port is bound and with nothing made.
        """
        private = os.path.abspath(self.mktemp())
        os.mkdir(private, 0o700)
        root = os.path.join(private, "mail")
        other = stranger()
        service = HarborService(self.config(root), self.reactor, runAs=other)
        problem = self.assertRaises(AccessProblem, service.privilegedStartService)
        # The private directory, or one above it that is private too.
        self.assertTrue((private + "/").startswith(problem.path + "/"), problem.path)
        self.assertIn(f"{other} could not reach {root}", str(problem))
        self.assertEqual(self.reactor.tcpServers, [])
        self.assertFalse(os.path.exists(root))
        self.assertEqual([e["log_level"].name for e in self.events if "Cannot start" in e["log_format"]], ["critical"])

    def test_userFromApplication(self) -> None:
        """
        Without C{runAs}, the user of the application the service joins
        (C{Application(name, uid, gid)}) is the one prepared for, when
        running as root.
        """
        self.patch(os, "geteuid", lambda: 0)
        private = os.path.abspath(self.mktemp())
        os.mkdir(private, 0o700)
        other = stranger()
        application = Application("mailharbor", uid=other.uid, gid=other.gid)
        service = HarborService(self.config(os.path.join(private, "mail")), self.reactor)
        service.setServiceParent(application)
        problem = self.assertRaises(AccessProblem, service.privilegedStartService)
        self.assertIn(f"{other.name} (uid {other.uid}, gid {other.gid})", str(problem))

    def test_nothingMadeWithoutUser(self) -> None:
        """
        Without a user to run as, the privileged start makes nothing: the
        Maildirs are made by startService, as the user the process is.
        """
        root = os.path.abspath(self.mktemp())
        service = HarborService(self.config(root), self.reactor)
        service.setServiceParent(Application("mailharbor"))
        service.privilegedStartService()
        self.assertFalse(os.path.exists(root))
        service.startService()
        self.addCleanup(service.stopService)
        self.assertTrue(os.path.isdir(os.path.join(root, "a.example", "new")))


class NamespaceTests(SynchronousTestCase):
    """
    The service's log lines keep the namespaces operators filter by.
    """

    def test_publishedNamespaces(self) -> None:
        """
        The service's and the listeners' events are named as they were
        when both lived in L{harbor.tap}, although they are defined in
        L{harbor.service}.
        """
        events: list[dict[str, Any]] = []
        observer = cast(ILogObserver, events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        root = os.path.abspath(str(self.mktemp()))
        config = Config.fromMapping({"domain": ["a.example"], "port": ["tcp:0"], "maildir": root})
        service = HarborService(config, MemoryReactorClock())
        service.privilegedStartService()
        service.startService()
        self.addCleanup(service.stopService)
        namespaces = {e["log_namespace"] for e in events}
        self.assertIn("harbor.tap.HarborService", namespaces)
        self.assertIn("harbor.tap.ListeningService", namespaces)
        self.assertFalse(any(n.startswith("harbor.service") for n in namespaces))

    def test_patchingRestoresLogger(self) -> None:
        """
        The class's logger read from the class is the logger itself, so a
        test that patches it and restores it leaves the namespace intact.
        """
        self.assertIs(HarborService._log, HarborService.__dict__["_log"])
        self.assertEqual(HarborService._log.namespace, "harbor.tap.HarborService")


class _Threads:
    """
    A stand-in for the commit thread pool: it records the work it is
    given, which the test then runs, on its own thread.
    """

    def __init__(self) -> None:
        self.started = False
        self.stops = 0
        self.work: list[tuple[Callable[..., None], Callable[[], Any]]] = []

    def start(self) -> None:
        self.started = True

    def stop(self) -> None:
        self.started = False
        self.stops += 1

    def callInThreadWithCallback(self, onResult: Callable[..., None], f: Callable[[], Any]) -> None:
        self.work.append((onResult, f))

    def runAll(self) -> None:
        while self.work:
            onResult, f = self.work.pop(0)
            onResult(True, f())


class _Reactor(MemoryReactorClock):
    """
    A memory reactor whose hand-over from a thread runs at once.
    """

    def callFromThread(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        f(*args, **kwargs)


class CommitPathTests(SynchronousTestCase):
    """
    Tests for how the service makes messages durable: L{commitPath} from
    the configuration, and the commit threads of its own.
    """

    def config(self, **extra: Any) -> Config:
        self.root = os.path.abspath(str(self.mktemp()))
        return Config.fromMapping({"domain": "a.example", "hostname": "mx.example", "maildir": self.root, **extra})

    def test_syncfsOnlyWhenAskedFor(self) -> None:
        """
        Only C{group_commit = "syncfs"} makes a batch durable by syncing the
        file system; C{"fsync"}, the default, and C{"off"} fsync each file.
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        for extra in ({}, {"group_commit": "fsync"}, {"group_commit": "off"}):
            fs, _ = commitPath(self.config(**extra), runSynchronously)
            self.assertIsNone(fs.groupSync([directory, directory]))
        fs, _ = commitPath(self.config(group_commit="syncfs"), runSynchronously)
        fd = os.open(directory, os.O_RDONLY)
        try:
            trusted = isTrustedFileSystem(fd)
        finally:
            os.close(fd)
        if loadSyncfs() is None or not trusted:
            raise SkipTest("no trustworthy syncfs for this directory here")
        group = fs.groupSync([directory, directory])
        self.assertIsNotNone(group)
        assert group is not None
        self.assertTrue(group.covers(directory))
        group.close()

    def test_offCommitsOneAtATime(self) -> None:
        """
        With C{group_commit = "off"} every message is a commit of its own;
        with C{"fsync"} those that wait share a batch.
        """
        threads = DeferredThreads()
        calls = [0]

        def counting(f: Callable[[], Any]) -> Deferred[Any]:
            calls[0] += 1
            return threads(f)

        for mode, expected in (("off", 3), ("fsync", 2)):
            calls[0] = 0
            fs, commits = commitPath(self.config(commit_lanes=1, group_commit=mode), counting)
            store = MaildirStore(self.root, MaildirNamer("h", Clock().seconds, pid=1), fs)
            store.create("a.example")
            deferreds = []
            for _ in range(3):
                pending = store.begin([("a.example", lambda id: b"H\n")])
                pending.write(b"x")
                deferreds.append(commits.commit(pending, None))
            threads.runAll()
            for d in deferreds:
                self.assertEqual(len(self.successResultOf(d)), 1)
            self.assertEqual(calls[0], expected, mode)

    def test_threadsForTheLanes(self) -> None:
        """
        The lanes need as many threads as C{commit_lanes}, and the large
        messages' lanes besides.
        """
        _, commits = commitPath(self.config(commit_lanes=6), runSynchronously)
        self.assertEqual(commits.threadsNeeded, 6 + LARGE_COMMIT_LANES)

    def test_commitsInTheServicesOwnThreads(self) -> None:
        """
        The service commits in its own thread pool, not the reactor's; it
        starts the pool when it starts, and when it stops, stops the pool
        only once the commit in progress is done and its sender answered.
        """
        threads = _Threads()
        reactor = _Reactor()
        service = HarborService(self.config(), reactor, commitThreads=cast(Any, threads))
        service.startService()
        self.assertTrue(threads.started)
        pending = service._store.begin([("a.example", lambda id: b"H\n")])
        pending.write(b"x")
        committed = service.commits.commit(pending, None)
        self.assertEqual(len(threads.work), 1)
        stopped = service.stopService()
        self.assertNoResult(stopped)
        self.assertEqual(threads.stops, 0)
        threads.runAll()
        self.assertEqual(len(self.successResultOf(committed)), 1)
        self.successResultOf(stopped)
        self.assertEqual(threads.stops, 1)

    def test_defaultPoolSizedToTheLanes(self) -> None:
        """
        By default the service makes a pool of as many threads as its lanes
        need, and stops it with the service.
        """
        service = HarborService(self.config(commit_lanes=3), MemoryReactorClock())
        self.assertEqual(service._commitThreads.max, 3 + LARGE_COMMIT_LANES)
        service.startService()
        self.assertTrue(service._commitThreads.started)
        self.successResultOf(service.stopService())
        self.assertFalse(service._commitThreads.started)

    def test_reloadKeepsTheLanes(self) -> None:
        """
        A reload keeps the commit lanes (sessions opened before it still
        commit through them) and warns that their settings need a restart.
        """
        events: list[dict[str, Any]] = []
        self.patch(HarborService, "_log", Logger(observer=cast(ILogObserver, events.append)))
        config = self.config()
        changed = Config.fromMapping({**config.asMapping(), "commit_lanes": 2})
        service = HarborService(config, MemoryReactorClock(), reread=lambda: (changed, []))
        commits = service.commits
        service.reload()
        self.assertIs(service.commits, commits)
        self.assertTrue(any("commit_lanes" in e.get("log_format", "") for e in events))


class WebInterfaceTests(TestCase):
    """
    The web interface of a service with C{web}.
    """

    def config(self, **settings: object) -> Config:
        root = os.path.abspath(str(self.mktemp()))
        return Config.fromMapping(
            {"domain": "a.example", "hostname": "mx.example", "maildir": root, "port": "tcp:0:interface=127.0.0.1",
             **settings}
        )

    async def test_listensAndAnswers(self) -> None:
        """
        With C{web}, the first process serves the web interface: its
        /healthz answers, and its /readyz is the service's readiness.
        """
        from twisted.internet import reactor
        from twisted.web.client import Agent, HTTPConnectionPool, readBody

        service = HarborService(self.config(web={"listen": "tcp:0:interface=127.0.0.1"}), reactor)
        listener = service.webListener
        assert listener is not None
        self.assertTrue(verifyObject(IService, listener))
        listener.privilegedStartService()
        listener.startService()
        self.addCleanup(listener.stopService)
        assert listener.port is not None
        port = listener.port.getHost().port  # type: ignore[attr-defined]
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(pool.closeCachedConnections)
        agent = Agent(reactor, pool=pool)
        response = await agent.request(b"GET", f"http://127.0.0.1:{port}/healthz".encode())
        self.assertEqual((response.code, await readBody(response)), (200, b"ok\n"))
        service.readiness.listening()
        response = await agent.request(b"GET", f"http://127.0.0.1:{port}/readyz".encode())
        self.assertEqual((response.code, await readBody(response)), (200, b"ready\n"))
        response = await agent.request(b"GET", f"http://127.0.0.1:{port}/".encode(), Headers({"Host": ["mx.example"]}))
        await readBody(response)
        # The server's hostname is one of the names it answers to: the
        # app answers, not the guard's 421.
        self.assertNotEqual(response.code, 421)
        self.assertIn(b"harbor_session=", response.headers.getRawHeaders(b"Set-Cookie", [b""])[0])
        # No mail yet (no Maildir root): the index is an empty tree.
        self.assertEqual(response.code, 200)
        # Its reads run in threads of its own, which stop with it.
        self.assertIsNot(listener.threadpool, reactor.getThreadPool())  # type: ignore[attr-defined]
        self.assertTrue(listener.threadpool.started)
        stopped = listener.stopService()
        assert stopped is not None
        await stopped
        self.assertFalse(listener.threadpool.started)

    def test_workerServesNoWeb(self) -> None:
        """
        A worker process does not serve the web interface, nor does a
        service without C{web}.
        """
        reactor = MemoryReactorClock()
        config = self.config(web="8025", workers=2)
        service = HarborService(config, reactor, inheritedSockets=[(3, int(socket.AF_INET))])
        service.privilegedStartService()
        self.assertIsNone(service.webListener)
        self.assertEqual(reactor.tcpServers, [])
        self.assertIsNone(HarborService(self.config(), reactor).webListener)
