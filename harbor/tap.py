# -*- test-case-name: harbor.test.test_tap -*-
"""
C{twistd mailharbor}: command-line options and the service they build.

Options are checked completely in L{Options.postOptions}, before twistd
daemonizes or binds anything, so a mistake is reported as a usage error that
names the option.  L{makeService} only wires the pieces together; it takes
the reactor as an argument so tests can pass a fake one.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from typing import Any

from twisted.application.service import MultiService, Service
from twisted.cred import strcred
from twisted.cred.credentials import IUsernamePassword
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.internet.protocol import Factory, ProcessProtocol
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure

from harbor._syntax import ConfigError
from harbor.config import Config, DEFAULT_MAILDIR, loadFile, withBacklog

# Command-line options that override the configuration file key of the same
# name (with - for _).
_CLI_KEYS = (
    "workers",
    "port",
    "tls_port",
    "submission_port",
    "domain",
    "maildir",
    "hostname",
    "tls_cert",
    "tls_key",
    "users_file",
    "require_tls",
    "allow_plaintext_auth",
)


def optionName(setting: str) -> str:
    """
    The command-line option for a configuration setting.
    """
    return "--" + setting.replace("_", "-")


class Options(usage.Options, strcred.AuthOptionMixin):
    """
    The options of C{twistd mailharbor}.

    @ivar config: The validated L{Config}, once L{postOptions} has run.
    """

    synopsis = "[--port PORT]... --domain DOMAIN... [options]"
    longdesc = (
        "Receive mail for your domains over SMTP and store it in Maildirs, "
        "one per domain under the Maildir root.  MailHarbor never relays: "
        "recipients in other domains are refused."
    )
    optParameters = [
        ["maildir", "m", None, f"Root directory of the Maildirs [default: ./{DEFAULT_MAILDIR}]"],
        ["hostname", None, None, "Name of this server in the banner and Received: headers [default: the FQDN]"],
        ["config", "c", None, "TOML configuration file; command-line options override it"],
        ["tls-cert", None, None, "PEM certificate (with its chain) for STARTTLS and implicit TLS"],
        ["tls-key", None, None, "PEM private key of --tls-cert"],
        ["users-file", None, None, "Users file for AUTH (see `mailharbor passwd`)"],
        ["log-format", None, "text", "text, or json for one JSON object per line (for log shippers)"],
        ["workers", None, None, "Processes sharing the listening sockets [default: 1]", int],
        ["inherit-fds", None, None, "(internal) listening sockets handed to a worker: FD:FAMILY,..."],
        ["json-log", None, "-", "With --log-format json: the file to append to, or - for standard output"],
    ]
    optFlags = [
        ["require-tls", None, "Refuse MAIL on --port listeners until the client has used STARTTLS"],
        ["allow-plaintext-auth", None, "Offer AUTH without TLS (for tests on loopback only)"],
    ]
    supportedInterfaces = [IUsernamePassword]
    compData = usage.Completions(
        optActions={
            "maildir": usage.CompleteDirs(),
            "config": usage.CompleteFiles("*.toml"),
        }
    )

    def __init__(self) -> None:
        super().__init__()
        self["port"] = []
        self["tls_port"] = []
        self["submission_port"] = []
        self["domain"] = []

    arguments: list[str] | None = None

    def parseOptions(self, options: Any = None) -> None:
        """
        Parse, remembering the arguments so that SIGHUP can parse them again
        with the configuration file as it is then.
        """
        self.arguments = list(sys.argv[1:] if options is None else options)
        super().parseOptions(options)

    def opt_port(self, description: str) -> None:
        """
        Listen on this port number or Twisted endpoint (tcp:2525,
        tcp6:25:interface=\\:\\:, systemd:domain=INET:index=0, ...); may be
        repeated [default: tcp:25]
        """
        self["port"].append(description)

    opt_p = opt_port

    def opt_tls_port(self, description: str) -> None:
        """
        Listen with implicit TLS (port 465, RFC 8314) on this port number or
        endpoint; needs --tls-cert; may be repeated
        """
        self["tls_port"].append(description)

    def opt_submission_port(self, description: str) -> None:
        """
        Listen for authenticated submission (port 587 style: STARTTLS, then
        AUTH before MAIL) on this port number or endpoint; may be repeated
        """
        self["submission_port"].append(description)

    def opt_domain(self, domain: str) -> None:
        """
        Receive mail for every address in this domain; may be repeated
        """
        self["domain"].append(domain)

    opt_d = opt_domain

    def postOptions(self) -> None:
        """
        Merge the configuration file and the command line (which wins) and
        validate the result.
        """
        if self["log-format"] not in ("text", "json"):
            raise usage.UsageError("--log-format: must be text or json")
        mapping: dict[str, Any] = {}
        path = self["config"]
        try:
            if path is not None:
                mapping = loadFile(path)
        except ConfigError as e:
            raise usage.UsageError(f"--config: {e.problem}") from None
        fromCommandLine = set()
        for key in _CLI_KEYS:
            value = self.get(key, self.get(key.replace("_", "-")))
            if value is not None and value != [] and value != 0:
                mapping[key] = bool(value) if key in ("require_tls", "allow_plaintext_auth") else value
                fromCommandLine.add(key)
        try:
            self.config = Config.fromMapping(mapping)
        except ConfigError as e:
            if e.setting in fromCommandLine or path is None:
                raise usage.UsageError(f"{optionName(e.setting)}: {e.problem}") from None
            raise usage.UsageError(f"{path}: {e.setting}: {e.problem}") from None
        if self.config.limits.workers > 1 and any(
            port.startswith("systemd:") for port in self.config.ports
        ):
            raise usage.UsageError("--workers: systemd's sockets are adopted by one process only")
        if self.config.limits.workers > 1 and self.config.hooks:
            raise usage.UsageError(
                "--workers: new-message hooks run in one process only; use one worker with [[hook]]"
            )
        from harbor.hooks import checkHooks
        from harbor.policyhook import loadPolicyHook

        try:
            checkHooks(self.config.hooks)
            if self.config.policyHook is not None:
                loadPolicyHook(self.config.policyHook, "policy_hook")
        except ConfigError as e:
            raise usage.UsageError(f"{path or 'configuration'}: {e.setting}: {e.problem}") from None
        if (
            any(listener.submission for listener in self.config.listeners)
            and self.config.usersFile is None
            and not self.get("credCheckers")
        ):
            raise usage.UsageError(
                "--submission-port: needs users to authenticate (--users-file or --auth)"
            )


class ListeningService(Service):
    """
    Listens on one endpoint while running.

    It binds in L{privilegedStartService}, which twistd calls before it
    drops root privileges, and logs the address it actually bound (which
    matters for C{tcp:0}).
    """

    _log = Logger()

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
            return port.stopListening()  # type: ignore[no-any-return]
        return None


class HarborService(MultiService):
    """
    MailHarbor as a whole: its listeners, its connections and its
    Maildirs.

    The Maildirs are created when it starts, after twistd has dropped
    privileges, so they belong to the user mail is stored as.  SIGHUP
    reloads the configuration; stopping lets messages being received
    finish first.

    @ivar config: The configuration in effect.
    """

    _log = Logger()

    def __init__(
        self, options: Options, reactor: Any, extraHooks: Any = (), policy: Any = None
    ) -> None:
        # Imported here, not at the top: twisted.mail.smtp imports the global
        # reactor, and twistd imports this module before it has started one.
        from twisted.protocols.tls import TLSMemoryBIOFactory

        from harbor.limits import FailureTracker, Throttle
        from harbor.limits import ConnectionCounter
        from harbor.smtp._factory import HarborSMTPFactory, SessionRegistry
        from harbor.tls import ReloadableTLS

        super().__init__()
        self.options = options
        self.config: Config = options.config
        self._reactor = reactor
        config = self.config
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
        self._policy = policy
        # The DNS blocklists and their resolver, kept across reloads that
        # do not change them: a resolver reads resolv.conf on the reactor
        # thread and then every minute, for as long as it lives.
        self._blocklists: tuple[Any, Any] | None = None
        deliverer, settings = self._build(config, options)
        self._store = deliverer.store
        inherited = [
            (int(fd), int(family))
            for fd, family in (item.split(":") for item in (options.get("inherit-fds") or "").split(",") if item)
        ]
        self._worker = bool(inherited)
        self._workers: list[Any] = []
        self._factories: list[HarborSMTPFactory] = []
        for listener, listenerSettings in zip(config.listeners, settings):
            factory = HarborSMTPFactory(
                deliverer, listenerSettings, reactor, self._connections, self._failures, self._registry
            )
            self._factories.append(factory)
            wrapped: Factory = factory
            if listener.implicitTLS:
                wrapped = TLSMemoryBIOFactory(self._tls, False, factory)
            endpoint = serverFromString(reactor, withBacklog(listener.port, limits.listenBacklog))
            adopt = None
            if inherited:
                fd, family = inherited[len(self._factories) - 1]
                adopt = (reactor, fd, family)
            ListeningService(listener.port, endpoint, wrapped, adopt).setServiceParent(self)

    def _runInThread(self, f: Any) -> Deferred[Any]:
        """
        Run blocking work (fsync, password hashes, hook spool) in the
        reactor's thread pool.
        """
        return deferToThreadPool(self._reactor, self._reactor.getThreadPool(), f)

    def _hookRunner(self, config: Config, extraHooks: Any) -> Any:
        """
        The new-message hooks of the configuration and those given in code,
        as a child service, or L{None} if there are none.
        """
        from harbor.hooks import HookRunner, loadHooks, spoolFor

        reactor = self._reactor
        runInThread = self._runInThread
        hooks = loadHooks(config.hooks, reactor, runInThread) + list(extraHooks)
        if not hooks:
            return None
        runner = HookRunner(spoolFor(config.maildir), hooks, reactor, runInThread)
        runner.setServiceParent(self)
        return runner

    def _policyHook(self, config: Config) -> Any:
        """
        The policy hook given in code, or else the configuration's, with
        its time limit and default.
        """
        from harbor.policyhook import PolicyHook, loadPolicyHook

        function = self._policy
        if function is None and config.policyHook is not None:
            function = loadPolicyHook(config.policyHook, "policy_hook")
        if function is None:
            return None
        return PolicyHook(
            function, self._reactor, config.limits.policyHookTimeout, config.policyHookDefault
        )

    def _build(self, config: Config, options: Options) -> tuple[Any, list[Any]]:
        """
        The parts that follow the configuration: the deliverer and each
        listener's settings.
        """
        from harbor.auth import TextOrBytes, UsersFileChecker
        from harbor.delivery import Deliverer
        from harbor.maildir import MaildirNamer, MaildirStore, RealFileSystem
        from harbor.routing import RecipientPolicy
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
                RealFileSystem() if config.groupCommit else RealFileSystem(syncfs=None),
            ),
            config.hostname,
            runInThread,
            reactor.seconds,
            config.submissionMailbox,
            config.filters,
            blocklists,
            self.hooks,
            policyHook=self._policyHook(config),
            groupCommit=config.groupCommit,
        )
        checkers: list[Any] = [TextOrBytes(c) for c in options.get("credCheckers", [])]
        if config.usersFile is not None:
            checkers.append(UsersFileChecker(config.usersFile, runInThread))
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
        Join the application; with C{--log-format json}, make twistd log
        JSON lines (an application's log observer is what twistd uses).
        """
        if self.options.get("log-format") == "json" and hasattr(parent, "setComponent"):
            from twisted.logger import ILogObserver

            parent.setComponent(ILogObserver, jsonLogObserver(self.options.get("json-log", "-")))
        super().setServiceParent(parent)

    def reload(self) -> None:
        """
        Read the configuration again and use it for new connections:
        domains, recipients, limits, users and the TLS certificate.  Open
        connections keep the configuration they started with.  A
        configuration with an error is logged and not used; listener changes
        need a restart.
        """
        from harbor.tls import TLSConfigurationError

        if self.options.arguments is None:
            self._log.warn("No configuration file to reload: MailHarbor was built from a Config in code")
            return
        fresh = Options()
        try:
            fresh.parseOptions(self.options.arguments)
        except usage.UsageError as e:
            self._log.error("Configuration not reloaded, keeping the one in use: {error}", error=str(e))
            return
        config: Config = fresh.config
        if config.tls is not None and self._tls is not None:
            try:
                self._tls.reload(config.tls.certificate, config.tls.key)
            except TLSConfigurationError as e:
                self._log.error("Configuration not reloaded, keeping the one in use: {error}", error=str(e))
                return
        elif config.tls is not None:
            from harbor.tls import ReloadableTLS

            self._tls = ReloadableTLS(config.tls.certificate, config.tls.key)
        if config.listeners != self.config.listeners:
            self._log.warn("Listener changes in the configuration take effect after a restart")
        deliverer, settings = self._build(config, fresh)
        self._store = deliverer.store
        self.config, self.options = config, fresh
        self._createMaildirs()
        limits = config.limits
        self._connections.setLimits(
            limits.maxConnections, limits.maxConnectionsPerClient, limits.connectionLimitExceptions
        )
        for factory, listenerSettings in zip(self._factories, settings):
            factory.deliverer = deliverer
            factory.settings = listenerSettings
        self._log.info(
            "Reloaded the configuration: receiving mail for {domains}",
            domains=", ".join(d.name for d in config.domains),
        )
        if self._tls is not None:
            self._log.info("Reloaded the TLS certificate {path}", path=self._tls.certificatePath)

    def _hangUp(self, signalNumber: int, frame: Any) -> None:
        self._reactor.callFromThread(self.reload)
        for worker in self._workers:
            self._reactor.callFromThread(worker.signal, "HUP")

    def _createMaildirs(self) -> None:
        from harbor.maildir import StorageError

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
        self._createMaildirs()
        self._log.info(
            "MailHarbor receiving mail for {domains} into {maildir}",
            domains=", ".join(d.name for d in self.config.domains),
            maildir=self.config.maildir,
        )
        self._previousHandler = signal.signal(signal.SIGHUP, self._hangUp)
        super().startService()
        if not self._worker:
            for number in range(1, self.config.limits.workers):
                self._startWorker(number)

    def _startWorker(self, number: int) -> None:
        """
        Start another process serving the same listening sockets: it runs
        this same configuration as this user (privileges are already
        dropped), adopts the sockets instead of binding, and its log lines
        come back through us.
        """
        listeners = [s for s in self if isinstance(s, ListeningService)]
        childFDs: dict[int, Any] = {0: "w", 1: "r", 2: "r"}
        inherit = []
        for index, listener in enumerate(listeners):
            port = listener.port
            target = 3 + index
            childFDs[target] = port.fileno()  # type: ignore[union-attr]
            family = socket.AF_INET6 if ":" in str(getattr(port.getHost(), "host", "")) else socket.AF_INET  # type: ignore[union-attr]
            inherit.append(f"{target}:{int(family)}")
        arguments = [
            sys.executable,
            "-c",
            "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()",
            "-n",
            "--pidfile=",
            "mailharbor",
            *(self.options.arguments or []),
            "--inherit-fds",
            ",".join(inherit),
        ]
        worker = _Worker(number, self._log)
        worker.transport = self._reactor.spawnProcess(
            worker, sys.executable, arguments, env=os.environ.copy(), childFDs=childFDs
        )
        self._workers.append(worker)
        self._log.info("Started worker {number} (pid {pid})", number=number, pid=worker.transport.pid)

    def stopService(self) -> Deferred[None]:
        """
        Stop listening at once, then let messages being received finish (for
        up to C{shutdown_grace} seconds) while every other session is told
        421 4.3.2 and closed.
        """
        if self._previousHandler is not None:
            signal.signal(signal.SIGHUP, self._previousHandler)
            self._previousHandler = None
        grace = self.config.limits.shutdownGrace
        for worker in self._workers:
            worker.signal("TERM")
        stopped: Deferred[Any] = super().stopService()

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
            return DeferredList([worker.ended for worker in self._workers])

        return stopped.addCallback(closeSessions).addCallback(workersEnded)


class _Worker(ProcessProtocol):
    """
    A worker process started by L{HarborService}: its output lines are
    logged here, marked with its number.
    """

    def __init__(self, number: int, log: Logger) -> None:
        self.number = number
        self._log = log
        self._partial = b""
        self.ended: Deferred[None] = Deferred()
        self.transport: Any = None

    def outReceived(self, data: bytes) -> None:
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            self._log.info("worker {number}: {line}", number=self.number, line=line.decode("utf-8", "replace"))

    errReceived = outReceived

    def signal(self, name: str) -> None:
        try:
            self.transport.signalProcess(name)
        except ProcessExitedAlready:
            pass

    def processEnded(self, reason: Failure) -> None:
        self._log.info("Worker {number} ended: {reason}", number=self.number, reason=reason.getErrorMessage())
        self.ended.callback(None)


def jsonLogObserver(path: str) -> Any:
    """
    A log observer writing one JSON object per line, for log shippers:
    to standard output for C{-}, otherwise appending to C{path}.
    """
    from twisted.logger import jsonFileLogObserver

    out = sys.stdout if path == "-" else open(path, "a", encoding="utf-8")
    return jsonFileLogObserver(out, recordSeparator="")


def makeService(options: Options, reactor: Any = None) -> HarborService:
    """
    Build the MailHarbor service from parsed options.

    @param reactor: The reactor to listen with, time with and run blocking
        disk work in the thread pool of; the global one if L{None}.
    """
    if reactor is None:
        from twisted.internet import reactor as _reactor

        reactor = _reactor
    return HarborService(options, reactor)
