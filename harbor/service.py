# -*- test-case-name: harbor.test.test_service -*-
"""
The MailHarbor service: its listeners, its connections and its Maildirs,
built from a L{Config}, reloaded on SIGHUP and stopped gracefully.

It is what C{twistd mailharbor} runs (L{harbor.tap.makeService}) and what
a program embedding MailHarbor gets (L{harbor.api.buildService}); both
check the configuration first with L{harbor.preflight.checkConfig}.
Nothing here reads options: what twistd's command line adds to the
configuration (C{--auth} checkers, the log format, the sockets a worker
inherits) comes as keyword arguments.
"""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, cast

from twisted.application.service import IProcess, MultiService, Service
from twisted.cred.checkers import ICredentialsChecker
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.threads import deferToThreadPool
from twisted.logger import ILogObserver, globalLogPublisher, jsonFileLogObserver
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from harbor._logging import PublishedLogger
from harbor._workers import Workers
from harbor.access import Identity
from harbor.auth import Authenticate, CallbackChecker, TextOrBytes, UsersFileChecker
from harbor.config import Config, withBacklog
from harbor.drain import DRAIN_SIGNAL, Drain
from harbor.health import Readiness, operationsSite
from harbor.hooks.kinds import IHook, loadHooks
from harbor.hooks.runner import HookRunner
from harbor.limits import ConnectionCounter, FailureTracker, Throttle
from harbor.metrics import Metrics, MetricsResource
from harbor.ownership import AccessProblem, identityAfterDrop
from harbor.policyhook import PolicyHook, PolicyRequest, loadPolicyHook
from harbor.preflight import prepareForUser
from harbor.routing import RecipientPolicy
from harbor.store.commits import CommitQueue, RunInThread
from harbor.store.fs import RealFileSystem, StorageError
from harbor.store.names import MaildirNamer
from harbor.store.writer import GroupCommit, MaildirStore
from harbor.tls import ReloadableTLS, TLSConfigurationError

# Reads the configuration again for a reload: the new configuration and
# the cred checkers besides its users file; raises ValueError (a
# ConfigError is one) saying what is wrong, for the log.
Reread = Callable[[], tuple[Config, Sequence[ICredentialsChecker]]]


def commitPath(
    config: Config,
    runInThread: RunInThread[Any],
    observe: Callable[[float], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> tuple[RealFileSystem, CommitQueue]:
    """
    The file system the Maildirs are written through and the commit lanes,
    as C{group_commit}, C{commit_lanes} and C{commit_batch} say.

    Only C{"syncfs"} lets a batch be made durable by syncing whole file
    systems; C{"fsync"} and C{"off"} fsync each file, C{"off"} one message
    per commit.

    @param runInThread: Runs one batch in a commit thread (the service's
        own pool, of L{CommitQueue.threadsNeeded} threads).
    @param observe: Told each message's commit latency, read with C{clock}
        (the metrics' histogram).
    """
    mode = config.groupCommit
    fs = RealFileSystem() if mode == "syncfs" else RealFileSystem(syncfs=None)

    def commitMany(deliveries: Any) -> list[Any]:
        return GroupCommit(fs, deliveries).commit()

    queue = CommitQueue(
        runInThread,
        commitMany,
        lanes=config.commitLanes,
        batch=1 if mode == "off" else config.commitBatch,
        observe=observe,
        clock=clock,
    )
    return fs, queue


class ListeningService(Service):
    """
    Listens on one endpoint while running.

    It binds in L{privilegedStartService}, which twistd calls before it
    drops root privileges, and logs the address it actually bound (which
    matters for C{tcp:0}).
    """

    _log = PublishedLogger("harbor.tap.ListeningService")

    def __init__(
        self,
        description: str,
        endpoint: IStreamServerEndpoint,
        factory: Factory,
        adopt: tuple[Any, int, int] | None = None,
    ) -> None:
        """
        @param adopt: For a worker: the reactor, file descriptor and address
            family of a socket already listening, to use instead of binding.
        """
        self._description = description
        self._endpoint = endpoint
        self._factory = factory
        self._adopt = adopt
        self._port: IListeningPort | None = None

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        if self._adopt is not None:
            reactor, fd, family = self._adopt
            self._listening(reactor.adoptStreamPort(fd, family, self._factory))
            return
        outcome: list[object] = []
        self._endpoint.listen(self._factory).addBoth(outcome.append)
        if outcome and isinstance(outcome[0], Failure):
            # Fail the start-up, as twistd does for its own listeners.
            outcome[0].raiseException()
        if outcome:
            self._listening(outcome[0])  # type: ignore[arg-type]

    def _listening(self, port: IListeningPort) -> None:
        self._port = port
        address = port.getHost()
        self._log.info(
            "MailHarbor listening on {description} ({host} port {port})",
            description=self._description,
            host=getattr(address, "host", address),
            port=getattr(address, "port", ""),
        )

    @property
    def port(self) -> IListeningPort | None:
        """
        The port listened on, once listening.
        """
        return self._port

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        port, self._port = self._port, None
        if port is not None:
            return port.stopListening()
        return None


#: The threads of the web interface (L{WebInterface.threadpool}).
WEB_THREADS = 4


class WebInterface(ListeningService):
    """
    The web interface's listener (L{harbor.web.site.webSite}), in the
    first process only.

    @ivar site: The site it serves.
    @ivar threadpool: Its own threads, which read the Maildirs and check
        passwords for it: a browser downloading big attachments never
        holds up an SMTP login's password check, nor a hook.
    """

    def __init__(
        self, description: str, endpoint: IStreamServerEndpoint, site: Any, factory: Factory, threadpool: ThreadPool
    ) -> None:
        super().__init__(f"{description} (web)", endpoint, factory)
        self.site = site
        self.threadpool = threadpool

    def startService(self) -> None:
        super().startService()
        self.threadpool.start()

    def stopService(self) -> Deferred[None] | None:
        stopped = super().stopService()
        if self.threadpool.started:
            self.threadpool.stop()
        return stopped


def webInterface(
    config: Config,
    reactor: Any,
    readiness: Readiness,
    metrics: Metrics,
    hooks: Sequence[str],
    tls: ReloadableTLS | None,
) -> WebInterface:
    """
    The web interface of C{config.web}: its site, behind TLS with the
    service's certificate when C{web.tls}, on C{web.listen}.

    Maildir reads and password checks run in a pool of L{WEB_THREADS}
    threads of its own, which bounds what the interface's readers can
    make the machine do at once (the memory of big messages read, disk
    reads) and keeps them out of the reactor's pool; the host names it answers to are C{web.names}, the loopback ones and
    the server's C{hostname}.
    """
    # Imported here: the pages come from harbor.web.app, which the
    # service needs only when the interface is on.
    from attrs import evolve

    from harbor.web.app import appResource
    from harbor.web.base import WebContext
    from harbor.web.site import webSite

    web = config.web
    assert web is not None
    threadpool = ThreadPool(0, WEB_THREADS, "mailharbor-web")
    context = WebContext(config.maildir, config.hookSpool, tuple(hooks), reactor, threadpool, reactor.seconds)
    checker = None if config.usersFile is None else UsersFileChecker(config.usersFile, context.inThread)
    names = evolve(web, names=tuple(dict.fromkeys((*web.names, config.hostname))))
    site = webSite(names, context, appResource(context), readiness, MetricsResource(metrics), checker, web.tls)
    factory: Factory = cast(Factory, site)
    if web.tls:
        from twisted.protocols.tls import TLSMemoryBIOFactory

        assert tls is not None
        factory = TLSMemoryBIOFactory(tls, False, site)  # type: ignore[assignment]
    return WebInterface(web.listen, serverFromString(reactor, web.listen), site, factory, threadpool)


class HarborService(MultiService):
    """
    MailHarbor as a whole: its listeners, its connections and its
    Maildirs.

    Started as root to run as another user (C{twistd --uid}), it makes
    the Maildirs and the hook spool before twistd drops privileges, and
    gives them to that user; otherwise it makes them when it starts.
    SIGHUP reloads the configuration; stopping lets messages being
    received finish first.

    @ivar config: The configuration in effect.
    @ivar hooks: The new-message hooks' runner, a child service, or
        L{None} if there are no hooks.
    """

    _log = PublishedLogger("harbor.tap.HarborService")

    def __init__(
        self,
        config: Config,
        reactor: Any,
        *,
        credCheckers: Sequence[ICredentialsChecker] = (),
        extraHooks: Sequence[IHook] = (),
        policy: Callable[[PolicyRequest], Any] | None = None,
        authenticate: Authenticate | None = None,
        logFormat: str = "text",
        jsonLog: str = "-",
        inheritedSockets: Sequence[tuple[int, int]] = (),
        arguments: Sequence[str] = (),
        reread: Reread | None = None,
        runAs: Identity | None = None,
        commitThreads: ThreadPool | None = None,
        stopProcess: Callable[[], None] | None = None,
    ) -> None:
        """
        @param config: The configuration, already checked by
            L{harbor.preflight.checkConfig}.
        @param reactor: Listens, times, spawns workers and runs blocking
            work in its thread pool.
        @param credCheckers: Ways to authenticate besides the users file
            (twistd's C{--auth}).
        @param extraHooks: New-message hooks given in code, run after the
            configuration's.
        @param policy: A policy function given in code, used instead of
            the configuration's C{policy_hook}.
        @param authenticate: A function given in code that decides logins
            (see L{harbor.api.buildService}), asked after the users file
            and C{credCheckers}.
        @param logFormat: C{"json"} to make the application this service
            joins log one JSON object per line, to C{jsonLog} (a path, or
            C{-} for standard output); C{"text"} leaves its logging alone.
        @param inheritedSockets: For a worker process: the file descriptor
            and address family of each listener's socket, already
            listening, in the order of the configuration's listeners.
        @param arguments: The C{twistd mailharbor} arguments, for worker
            processes to run the same.
        @param reread: Reads the configuration again for L{reload}; without
            it, a reload is refused with a warning.
        @param runAs: The user twistd will switch to after
            L{privilegedStartService} (L{harbor.ownership.identityAfterDrop}
            of its C{--uid} and C{--gid}); without it, the user the
            application it joins names, if any (C{Application(name, uid,
            gid)}).
        @param commitThreads: The threads that make messages durable, the
            commit lanes' own (not the reactor's, which hooks and password
            checks share); started and stopped with the service.  By
            default a pool of as many threads as the lanes need.
        @param stopProcess: Ends the process once a drain is over; by
            default C{reactor.stop}.
        """
        # Imported here, not at the top: twisted.mail.smtp imports the global
        # reactor, and twistd imports this module before it has started one.
        from twisted.protocols.tls import TLSMemoryBIOFactory

        from harbor.smtp._factory import HarborSMTPFactory, SessionRegistry
        from harbor.smtp._proxy import ProxyHeaderFactory, splitProxy

        super().__init__()
        self.config = config
        self._reactor = reactor
        self._logFormat = logFormat
        self._jsonLog = jsonLog
        self._reread = reread
        self._runAs = runAs
        limits = config.limits
        self._tls = ReloadableTLS(config.tls.certificate, config.tls.key) if config.tls else None
        self._connections = ConnectionCounter(
            limits.maxConnections, limits.maxConnectionsPerClient, limits.connectionLimitExceptions
        )
        self._throttle = Throttle()
        self._failures = FailureTracker(self._throttle, reactor.seconds)
        self._registry = SessionRegistry()
        self._previousHandler: Any = None
        self.hooks = self._hookRunner(config, extraHooks)
        # The [[hook]] tables the running hooks were made from: a reload
        # cannot swap a hook whose jobs are in flight, so it says so instead.
        self._hookConfigs = config.hooks
        self._hookSpool = config.hookSpool
        self._policy = policy
        self._authenticate = None if authenticate is None else CallbackChecker(authenticate)
        # The DNS blocklists and their resolver, kept across reloads that
        # do not change them: a resolver reads resolv.conf on the reactor
        # thread and then every minute, for as long as it lives.
        self._blocklists: tuple[Any, Any] | None = None
        # The commit lanes and their threads live as long as the service:
        # sessions opened before a reload still commit through them.
        self.readiness = Readiness()
        self.metrics = Metrics()
        self._fs, self.commits = commitPath(
            config, self._commitInThread, self.metrics.observeCommit, reactor.seconds
        )
        self._commitSettings = (config.groupCommit, config.commitLanes, config.commitBatch)
        self._commitThreads = commitThreads or ThreadPool(
            minthreads=0, maxthreads=self.commits.threadsNeeded, name="mailharbor-commit"
        )
        deliverer, settings = self._build(config, credCheckers)
        self._store = deliverer.store
        self._worker = bool(inheritedSockets)
        self._workers = Workers(reactor, arguments, self._log)
        self._previousDrainHandler: Any = None
        self._factories: list[HarborSMTPFactory] = []
        self._proxies: list[ProxyHeaderFactory] = []
        self._listeners: list[ListeningService] = []
        for listener, listenerSettings in zip(config.listeners, settings):
            factory = HarborSMTPFactory(
                deliverer, listenerSettings, reactor, self._connections, self._failures, self._registry
            )
            self._factories.append(factory)
            wrapped: Factory = factory
            if listener.implicitTLS:
                wrapped = TLSMemoryBIOFactory(self._tls, False, factory)  # type: ignore[arg-type, assignment]
            # The PROXY header comes first, before TLS and SMTP; the port
            # under it is listened on (and adopted by workers) as any other.
            proxied, description = splitProxy(listener.port)
            if proxied:
                proxy = ProxyHeaderFactory(wrapped, config.trustedProxies, limits.commandTimeout, reactor)
                self._proxies.append(proxy)
                wrapped = proxy  # type: ignore[assignment]
            endpoint = serverFromString(reactor, withBacklog(description, limits.listenBacklog))
            adopt = None
            if inheritedSockets:
                fd, family = inheritedSockets[len(self._factories) - 1]
                adopt = (reactor, fd, family)
            smtpListener = ListeningService(listener.port, endpoint, wrapped, adopt)
            smtpListener.setServiceParent(self)
            self._listeners.append(smtpListener)
        self._serveMetrics(config)
        self.webListener: WebInterface | None = None
        if config.web is not None and not self._worker:
            names = () if self.hooks is None else tuple(hook.name for hook in self.hooks.hooks)
            self.webListener = webInterface(config, reactor, self.readiness, self.metrics, names, self._tls)
            self.webListener.setServiceParent(self)
        self._drain = Drain(
            self.readiness,
            reactor,
            self._registry,
            self._stopListening,
            stopProcess or reactor.stop,
            limits.drainDelay,
            limits.shutdownGrace,
            self._workers.ended,
        )

    def _serveMetrics(self, config: Config) -> None:
        """
        Serve C{/metrics}, C{/healthz} and C{/readyz} on the C{metrics}
        endpoint, if there is one: in the first process only (a worker has
        no listener of its own, and counts for itself).
        """
        registry = self._registry
        self.metrics.readStateFrom(
            connections=lambda: (registry.opened, len(registry)),
            pendingJobs=None if self.hooks is None else (lambda: self.hooks.pendingCounts),  # type: ignore[union-attr]
            ready=lambda: self.readiness.ready,
        )
        self.metricsListener: ListeningService | None = None
        if config.metrics is None or self._worker:
            return
        site = operationsSite(self.readiness, MetricsResource(self.metrics))
        self.metricsListener = ListeningService(
            f"{config.metrics} (metrics)", serverFromString(self._reactor, config.metrics), cast(Factory, site)
        )
        self.metricsListener.setServiceParent(self)

    def _stopListening(self) -> Deferred[Any]:
        """
        Stop listening on the SMTP ports (not the metrics one).
        """
        return DeferredList([maybeDeferred(listener.stopService) for listener in self._listeners])

    def drain(self) -> None:
        """
        Leave the balancer's pool and stop once the open sessions have
        ended (L{harbor.drain.Drain}); the workers drain too.
        """
        if not self._drain.started:
            self._workers.signal("USR2")
            self.metrics.draining.set(1)
        self._drain.start()

    def _runInThread(self, f: Any) -> Deferred[Any]:
        """
        Run blocking work (fsync, password hashes, hook spool) in the
        reactor's thread pool.
        """
        return deferToThreadPool(self._reactor, self._reactor.getThreadPool(), f)

    def _commitInThread(self, f: Any) -> Deferred[Any]:
        """
        Run one batch of commits in a commit thread; its result comes back
        to the reactor thread in one hand-over.
        """
        return deferToThreadPool(self._reactor, self._commitThreads, f)

    def _hookRunner(self, config: Config, extraHooks: Sequence[IHook]) -> HookRunner | None:
        """
        The new-message hooks of the configuration and those given in code,
        as a child service, or L{None} if there are none.
        """
        reactor = self._reactor
        runInThread = self._runInThread
        hooks = loadHooks(config.hooks, reactor, runInThread) + list(extraHooks)
        if not hooks:
            return None
        runner = HookRunner(config.hookSpool, hooks, reactor, runInThread)
        runner.setServiceParent(self)
        return runner

    def _policyHook(self, config: Config) -> PolicyHook | None:
        """
        The policy hook given in code, or else the configuration's, with
        its time limit and default.
        """
        function = self._policy
        if function is None and config.policyHook is not None:
            function = loadPolicyHook(config.policyHook, "policy_hook")
        if function is None:
            return None
        return PolicyHook(
            function,
            self._reactor,
            config.limits.policyHookTimeout,
            config.policyHookDefault,
            config.limits.policyHookTransactionTimeout,
        )

    def _build(self, config: Config, credCheckers: Sequence[ICredentialsChecker]) -> tuple[Any, list[Any]]:
        """
        The parts that follow the configuration: the deliverer and each
        listener's settings.
        """
        from harbor.delivery import Deliverer
        from harbor.smtp._factory import ServerSettings

        reactor = self._reactor
        runInThread = self._runInThread
        blocklists = None
        key = (config.dnsbl, config.dnsServers, config.limits.dnsblTimeout)
        if config.dnsbl and self._blocklists is not None and self._blocklists[0] == key:
            blocklists = self._blocklists[1]
        elif config.dnsbl:
            from twisted.names import client

            from harbor.dnsbl import Blocklists

            if config.dnsServers:
                resolver = client.Resolver(servers=list(config.dnsServers), reactor=reactor)
            else:
                resolver = client.Resolver(resolv="/etc/resolv.conf", reactor=reactor)
            blocklists = Blocklists(config.dnsbl, resolver, reactor, config.limits.dnsblTimeout)
            self._blocklists = (key, blocklists)
        deliverer = Deliverer(
            RecipientPolicy(config.domains),
            MaildirStore(
                config.maildir,
                MaildirNamer(config.hostname, reactor.seconds),
                self._fs,
            ),
            config.hostname,
            runInThread,
            reactor.seconds,
            config.submissionMailbox,
            config.filters,
            blocklists,
            self.hooks,
            policyHook=self._policyHook(config),
            commits=self.commits,
        )
        checkers: list[Any] = [TextOrBytes(c) for c in credCheckers]
        if config.usersFile is not None:
            checkers.append(UsersFileChecker(config.usersFile, runInThread))
        if self._authenticate is not None:
            checkers.append(self._authenticate)
        settings = [
            ServerSettings(
                config.hostname,
                config.limits,
                listener,
                self._tls if config.tls else None,
                tuple(checkers),
                config.allowPlaintextAuth,
                self._throttle,
            )
            for listener in config.listeners
        ]
        return deliverer, settings

    def setServiceParent(self, parent: Any) -> None:
        """
        Join the application; with C{logFormat="json"}, make twistd log
        JSON lines (an application's log observer is what twistd uses).
        """
        if self._logFormat == "json" and hasattr(parent, "setComponent"):
            parent.setComponent(ILogObserver, jsonLogObserver(self._jsonLog))
        process = IProcess(parent, None)
        if self._runAs is None and process is not None:
            self._runAs = identityAfterDrop(process.uid, process.gid)
        super().setServiceParent(parent)

    def privilegedStartService(self) -> None:
        """
        Before twistd drops privileges: make the Maildirs and the hook
        spool for the user it switches to, then bind the ports.

        @raise AccessProblem: if that user could not use them.
        """
        if self._runAs is not None:
            try:
                made = prepareForUser(self.config, self._runAs, self.hooks is not None)
            except AccessProblem as e:
                self._log.critical("Cannot start: {error}", error=str(e))
                raise
            if made:
                self._log.info(
                    "Prepared {maildir} for {user}, who MailHarbor runs as: created {created}",
                    maildir=self.config.maildir,
                    user=self._runAs.name,
                    created=", ".join(made),
                    paths=made,
                )
        super().privilegedStartService()

    def reload(self) -> None:
        """
        Read the configuration again and use it for new connections:
        domains, recipients, limits, users and the TLS certificate.  Open
        connections keep the configuration they started with.  A
        configuration with an error is logged and not used; listener changes
        need a restart.
        """
        if self._reread is None:
            self._log.warn("No configuration file to reload: MailHarbor was built from a Config in code")
            return
        try:
            config, credCheckers = self._reread()
        except ValueError as e:
            self._log.error("Configuration not reloaded, keeping the one in use: {error}", error=str(e))
            return
        if config.tls is not None and self._tls is not None:
            try:
                self._tls.reload(config.tls.certificate, config.tls.key)
            except TLSConfigurationError as e:
                self._log.error("Configuration not reloaded, keeping the one in use: {error}", error=str(e))
                return
        elif config.tls is not None:
            self._tls = ReloadableTLS(config.tls.certificate, config.tls.key)
        if config.listeners != self.config.listeners:
            self._log.warn("Listener changes in the configuration take effect after a restart")
        if (config.groupCommit, config.commitLanes, config.commitBatch) != self._commitSettings:
            self._log.warn(
                "group_commit, commit_lanes and commit_batch changes in the configuration "
                "take effect after a restart"
            )
        if config.web != self.config.web:
            self._log.warn("web changes in the configuration take effect after a restart")
        if config.hookSpool != self._hookSpool:
            self._log.warn("hook_spool changes in the configuration take effect after a restart")
        if config.hooks != self._hookConfigs:
            self._log.warn(
                "[[hook]] changes in the configuration take effect after a restart; "
                "the hooks in use are kept"
            )
        deliverer, settings = self._build(config, credCheckers)
        self._store = deliverer.store
        self.config = config
        self._createMaildirs()
        limits = config.limits
        self._connections.setLimits(
            limits.maxConnections, limits.maxConnectionsPerClient, limits.connectionLimitExceptions
        )
        for factory, listenerSettings in zip(self._factories, settings):
            factory.deliverer = deliverer
            factory.settings = listenerSettings
        for proxy in self._proxies:
            proxy.configure(config.trustedProxies, limits.commandTimeout)
        self._log.info(
            "Reloaded the configuration: receiving mail for {domains}",
            domains=", ".join(d.name for d in config.domains),
        )
        if self._tls is not None:
            self._log.info("Reloaded the TLS certificate {path}", path=self._tls.certificatePath)

    def _hangUp(self, signalNumber: int, frame: Any) -> None:
        self._reactor.callFromThread(self.reload)
        self._reactor.callFromThread(self._workers.signal, "HUP")

    def _drainSignal(self, signalNumber: int, frame: Any) -> None:
        self._reactor.callFromThread(self.drain)

    def _createMaildirs(self) -> None:
        for domain in self.config.domains:
            for mailbox in domain.mailboxPaths():
                try:
                    self._store.create(mailbox)
                except StorageError as e:
                    self._log.error(
                        "Cannot create the Maildir {mailbox}: {error}; mail for it "
                        "will be refused with a temporary error",
                        mailbox=mailbox,
                        error=str(e),
                    )

    def startService(self) -> None:
        threads = self._commitThreads
        if not threads.started:
            threads.start()
            # Should the reactor stop without stopping the service first.
            self._reactor.addSystemEventTrigger("during", "shutdown", self._stopCommitThreads)
        self._createMaildirs()
        self._log.info(
            "MailHarbor receiving mail for {domains} into {maildir}",
            domains=", ".join(d.name for d in self.config.domains),
            maildir=self.config.maildir,
        )
        self._previousHandler = signal.signal(signal.SIGHUP, self._hangUp)
        self._previousDrainHandler = signal.signal(DRAIN_SIGNAL, self._drainSignal)
        globalLogPublisher.addObserver(self.metrics)
        super().startService()
        # Every listener has its port: privilegedStartService has run.
        ports = [s.port for s in self._listeners if s.port is not None]
        if not self._worker:
            self._workers.start(self.config.limits.workers, ports)
        if len(ports) == len(self._listeners):
            self.readiness.listening()

    def stopService(self) -> Deferred[None]:
        """
        Stop listening at once, then let messages being received finish (for
        up to C{shutdown_grace} seconds) while every other session is told
        421 4.3.2 and closed.
        """
        if self._previousHandler is not None:
            signal.signal(signal.SIGHUP, self._previousHandler)
            self._previousHandler = None
        if self._previousDrainHandler is not None:
            signal.signal(DRAIN_SIGNAL, self._previousDrainHandler)
            self._previousDrainHandler = None
        self.readiness.stopping()
        self._drain.cancel()
        globalLogPublisher.removeObserver(self.metrics)
        grace = self.config.limits.shutdownGrace
        self._workers.signal("TERM")
        stopped: Deferred[Any] = super().stopService()
        for proxy in self._proxies:
            proxy.stopWaiting()

        def closeSessions(ignored: object) -> Deferred[None]:
            if len(self._registry):
                self._log.info(
                    "Stopping: closing {count} sessions, waiting up to {grace:g}s for messages "
                    "being received",
                    count=len(self._registry),
                    grace=grace,
                )
            return self._registry.shutdown(grace, self._reactor)

        def workersEnded(ignored: object) -> Deferred[Any]:
            return self._workers.ended()

        def commitsDone(ignored: object) -> Deferred[None]:
            # Every message whose sender waits for its reply is committed
            # before the threads go.
            return self.commits.whenIdle().addCallback(lambda _: self._stopCommitThreads())

        return stopped.addCallback(closeSessions).addCallback(workersEnded).addCallback(commitsDone)

    def _stopCommitThreads(self) -> None:
        """
        Stop the commit threads, if they run; they are idle by now.
        """
        if self._commitThreads.started:
            self._commitThreads.stop()


def jsonLogObserver(path: str) -> ILogObserver:
    """
    A log observer writing one JSON object per line, for log shippers:
    to standard output for C{-}, otherwise appending to C{path}.
    """
    # The file stays open for as long as the process logs.
    out = sys.stdout if path == "-" else open(path, "a", encoding="utf-8")  # noqa: SIM115
    return jsonFileLogObserver(out, recordSeparator="")
