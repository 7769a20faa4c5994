# -*- test-case-name: harbor.test.test_tap -*-
"""
C{twistd mailharbor}: command-line options and the service they build.

Options are checked completely in L{Options.postOptions}, before twistd
daemonizes or binds anything, so a mistake is reported as a usage error that
names the option.  L{makeService} only wires the pieces together; it takes
the reactor as an argument so tests can pass a fake one.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure

from harbor.config import DEFAULT_MAILDIR, Config, ConfigError, loadFile

_CLI_KEYS = ("port", "domain", "maildir", "hostname")


class Options(usage.Options):
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
    ]
    compData = usage.Completions(
        optActions={
            "maildir": usage.CompleteDirs(),
            "config": usage.CompleteFiles("*.toml"),
        }
    )

    def __init__(self) -> None:
        super().__init__()
        self["port"] = []
        self["domain"] = []

    def opt_port(self, description: str) -> None:
        """
        Listen on this port number or Twisted endpoint (tcp:2525,
        tcp6:25:interface=\\:\\:, systemd:domain=INET:index=0, ...); may be
        repeated [default: tcp:25]
        """
        self["port"].append(description)

    opt_p = opt_port

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
        mapping: dict[str, Any] = {}
        path = self["config"]
        try:
            if path is not None:
                mapping = loadFile(path)
        except ConfigError as e:
            raise usage.UsageError(f"--config: {e.problem}") from None
        fromCommandLine = set()
        for key in _CLI_KEYS:
            value = self[key]
            if value is not None and value != []:
                mapping[key] = value
                fromCommandLine.add(key)
        try:
            self.config = Config.fromMapping(mapping)
        except ConfigError as e:
            if e.setting in fromCommandLine or path is None:
                raise usage.UsageError(f"--{e.setting}: {e.problem}") from None
            raise usage.UsageError(f"{path}: {e.setting}: {e.problem}") from None


class ListeningService(Service):
    """
    Listens on one endpoint while running.

    It binds in L{privilegedStartService}, which twistd calls before it
    drops root privileges, and logs the address it actually bound (which
    matters for C{tcp:0}).
    """

    _log = Logger()

    def __init__(self, description: str, endpoint: IStreamServerEndpoint, factory: Factory) -> None:
        self._description = description
        self._endpoint = endpoint
        self._factory = factory
        self._port: IListeningPort | None = None

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
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
    MailHarbor as a whole: its listeners, and its Maildirs, which it
    creates when it starts, after twistd has dropped privileges, so they
    belong to the user mail is stored as.
    """

    _log = Logger()

    def __init__(self, config: Config, store: Any) -> None:
        super().__init__()
        self.config = config
        self._store = store

    def startService(self) -> None:
        from harbor.maildir import StorageError

        for domain in self.config.domains:
            try:
                self._store.create(domain.name)
            except StorageError as e:
                self._log.error(
                    "Cannot create the Maildir of {domain}: {error}; mail for it "
                    "will be refused with a temporary error",
                    domain=domain.name,
                    error=str(e),
                )
        self._log.info(
            "MailHarbor receiving mail for {domains} into {maildir}",
            domains=", ".join(d.name for d in self.config.domains),
            maildir=self.config.maildir,
        )
        super().startService()


def makeService(options: Options, reactor: Any = None) -> HarborService:
    """
    Build the MailHarbor service from parsed options.

    @param reactor: The reactor to listen with, time with and run blocking
        disk work in the thread pool of; the global one if L{None}.
    """
    if reactor is None:
        from twisted.internet import reactor as _reactor

        reactor = _reactor
    # Imported here, not at the top: twisted.mail.smtp imports the global
    # reactor, and twistd imports this module before it has started one.
    from harbor.delivery import Deliverer
    from harbor.maildir import MaildirNamer, MaildirStore
    from harbor.policy import RecipientPolicy
    from harbor.smtp import HarborSMTPFactory

    config: Config = options.config
    store = MaildirStore(config.maildir, MaildirNamer(config.hostname, reactor.seconds))
    deliverer = Deliverer(
        RecipientPolicy(config.domains),
        store,
        config.hostname,
        lambda f: deferToThreadPool(reactor, reactor.getThreadPool(), f),
        reactor.seconds,
    )
    factory = HarborSMTPFactory(deliverer, config.hostname, config.limits, reactor)
    service = HarborService(config, store)
    for description in config.ports:
        ListeningService(
            description, serverFromString(reactor, description), factory
        ).setServiceParent(service)
    return service

