"""
Tests for L{harbor.tap}: options and the service they build.
"""

import os
import re
from typing import cast

from twisted.application.service import IService
from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from harbor import tap
from harbor.access import Identity
from harbor.service import HarborService, ListeningService
from harbor.tap import Options, makeService
from harbor.test._support import stranger


def parse(*argv: str) -> Options:
    options = Options()
    options.parseOptions(list(argv))
    return options


class OptionsTests(SynchronousTestCase):
    """
    Tests for L{Options}.
    """

    def assertUsageError(self, argv: list[str], *fragments: str) -> None:
        error = self.assertRaises(usage.UsageError, parse, *argv)
        for fragment in fragments:
            self.assertIn(fragment, str(error))

    def test_repeatedOptions(self) -> None:
        """
        --port and --domain may be repeated; a bare number means tcp:N.
        """
        config = parse(
            "--port", "2525", "--port", "tcp6:2526", "--domain", "a.example", "-d", "b.example",
            "--hostname", "mx.example", "--maildir", "mail",
        ).config
        self.assertEqual(config.ports, ("tcp:2525", "tcp6:2526"))
        self.assertEqual([d.name for d in config.domains], ["a.example", "b.example"])
        self.assertEqual(config.maildir, os.path.abspath("mail"))
        self.assertEqual(config.hostname, "mx.example")

    def test_badValuesNameTheOption(self) -> None:
        """
        Bad values are usage errors naming the command-line option.
        """
        self.assertUsageError(["--port", "nonsense:1", "--domain", "a.example"], "--port")
        self.assertUsageError(["--domain", "bad domain"], "--domain")
        self.assertUsageError([], "--domain", "required")
        self.assertUsageError(["--domain", "a.example", "--hostname", "a b"], "--hostname")

    def test_web(self) -> None:
        """
        --web 8025 serves the web interface on loopback; it overrides the
        file's web.listen and keeps its other web settings; an endpoint
        other machines reach without users is a usage error naming --web.
        """
        self.assertIsNone(parse("--domain", "a.example").config.web)
        web = parse("--domain", "a.example", "--web", "8025").config.web
        assert web is not None
        self.assertEqual(web.listen, "tcp:8025:interface=127.0.0.1")
        path = self.writeConfig('domain = "a.example"\n[web]\nlisten = "9000"\nnames = ["mail.example"]\n')
        web = parse("--config", path, "--web", "8025").config.web
        assert web is not None
        self.assertEqual((web.listen, web.names), ("tcp:8025:interface=127.0.0.1", ("mail.example",)))
        self.assertUsageError(["--domain", "a.example", "--web", "tcp:8025"], "--web:", "users_file")
        self.assertUsageError(["--domain", "a.example", "--web", "nonsense:1"], "--web:")

    def writeConfig(self, text: str) -> str:
        path: str = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_configFile(self) -> None:
        """
        Settings come from the TOML file.
        """
        path = self.writeConfig(
            'port = ["2525"]\nhostname = "mx.example"\nmaildir = "/srv/mail"\n'
            '[domains."example.org"]\naccept = ["alice"]\n'
        )
        config = parse("--config", path).config
        self.assertEqual(config.ports, ("tcp:2525",))
        self.assertEqual(config.maildir, "/srv/mail")
        self.assertEqual(config.domains[0].accept, frozenset({"alice"}))

    def test_commandLineOverridesFile(self) -> None:
        """
        Command-line options replace the file's values, whatever the order.
        """
        path = self.writeConfig('port = ["2525"]\ndomain = ["a.example"]\nmaildir = "/srv/mail"\n')
        config = parse("--port", "2600", "--config", path, "--domain", "b.example").config
        self.assertEqual(config.ports, ("tcp:2600",))
        self.assertEqual([d.name for d in config.domains], ["b.example"])
        self.assertEqual(config.maildir, "/srv/mail")

    def test_hookSpoolOption(self) -> None:
        """
        C{--hook-spool} sets the hook spool, over the file's C{hook_spool};
        without either it follows C{--maildir}.
        """
        path = self.writeConfig('domain = ["a.example"]\nmaildir = "/srv/mail"\nhook_spool = "/srv/spool"\n')
        self.assertEqual(parse("--config", path).config.hookSpool, "/srv/spool")
        self.assertEqual(parse("--config", path, "--hook-spool", "/var/hooks").config.hookSpool, "/var/hooks")
        self.assertEqual(parse("--domain", "a.example", "--maildir", "/m").config.hookSpool, "/m/.hooks")
        self.assertUsageError(["--domain", "a.example", "--maildir", "/m", "--hook-spool", "/m"], "--hook-spool")

    def test_configErrorsNameFileAndKey(self) -> None:
        """
        An error in the file names the file and the key.
        """
        path = self.writeConfig('domain = ["a.example"]\nport = ["bogus:x"]\n')
        self.assertUsageError(["--config", path], path, "port")
        self.assertUsageError(["--config", self.mktemp()], "--config", "cannot read")


class MakeServiceTests(SynchronousTestCase):
    """
    Tests for L{makeService}.
    """

    def test_listensOnEveryPort(self) -> None:
        """
        The service listens on each configured endpoint when started with
        privileges, and stops listening when stopped.
        """
        reactor = MemoryReactorClock()
        root = self.mktemp()
        service = makeService(
            parse("--port", "2525", "--port", "tcp:2526:interface=127.0.0.1", "-d", "a.example", "-m", root),
            reactor,
        )
        self.assertTrue(IService.providedBy(service))
        service.privilegedStartService()
        self.assertEqual(
            [(port, backlog, interface) for port, _, backlog, interface in reactor.tcpServers],
            [(2525, 1024, ""), (2526, 1024, "127.0.0.1")],
        )
        self.assertFalse(os.path.exists(root))
        service.startService()
        self.assertTrue(os.path.isdir(os.path.join(root, "a.example", "new")))
        listeners = [s for s in service if isinstance(s, ListeningService)]
        self.assertTrue(all(s.port is not None for s in listeners))
        service.stopService()
        self.assertTrue(all(s.port is None for s in listeners))

    def test_maildirProblemLoggedNotFatal(self) -> None:
        """
        A Maildir that cannot be created is logged at start; the server still
        runs (and answers 4xx for that domain).
        """
        root = self.mktemp()
        with open(root, "w"):
            pass
        service = makeService(parse("-d", "a.example", "-m", root), MemoryReactorClock())
        self.assertIsInstance(service, HarborService)
        from twisted.logger import ILogObserver, LogEvent, Logger

        events: list[LogEvent] = []
        self.patch(HarborService, "_log", Logger(observer=cast(ILogObserver, events.append)))
        service.startService()
        self.assertTrue(any("Cannot create" in e["log_format"] for e in events))
        self.assertTrue(service.running)


class RunAsTests(SynchronousTestCase):
    """
    Tests for the user twistd's C{--uid} and C{--gid} switch to, read from
    twistd's own options, the parent of these.
    """

    def twistd(self, *argv: str) -> Options:
        """
        Parse a twistd command line, as twistd does, and return the
        mailharbor command's options.
        """
        # What twistd.ServerOptions is on POSIX, where --uid exists.
        from twisted.scripts._twistd_unix import ServerOptions

        config = ServerOptions()
        config.parseOptions(list(argv))
        options = config.subOptions
        assert isinstance(options, Options)
        return options

    def test_userFromTwistdOptions(self) -> None:
        """
        twistd's C{--uid} and C{--gid} reach the checks and the service as
        the user to run as.
        """
        me = Identity("me", os.getuid(), os.getgid())
        seen = []

        def identityAfterDrop(uid: int | None, gid: int | None) -> Identity:
            seen.append((uid, gid))
            return me

        self.patch(tap, "identityAfterDrop", identityAfterDrop)
        root = os.path.abspath(self.mktemp())
        options = self.twistd("--uid", "65534", "--gid", "65533", "mailharbor", "-d", "a.example", "-m", root)
        self.assertEqual(seen, [(65534, 65533)])
        self.assertEqual(options.runAs, me)
        service = makeService(options, MemoryReactorClock())
        self.assertEqual(service._runAs, me)
        service.privilegedStartService()
        self.assertTrue(os.path.isdir(os.path.join(root, "a.example", "new")))

    def test_refusalNamesMaildir(self) -> None:
        """
        A Maildir root the user could not reach is a usage error naming
        --maildir, the directory, the user and the permission.
        """
        other = stranger()
        self.patch(tap, "identityAfterDrop", lambda uid, gid: other)
        private = os.path.abspath(self.mktemp())
        os.mkdir(private, 0o700)
        error = self.assertRaises(
            usage.UsageError,
            self.twistd,
            "--uid", str(other.uid), "mailharbor", "-d", "a.example", "-m", os.path.join(private, "mail"),
        )
        self.assertTrue(str(error).startswith(f"--maildir: {other} could not reach"), error)
        # The private directory, or one above it that is private too.
        [refused] = re.findall(r"no search \(x\) permission on (\S+) \(owner", str(error))
        self.assertTrue((private + "/").startswith(refused + "/"), refused)

    def test_unknownUser(self) -> None:
        """
        As root, a --uid with no password entry is a usage error naming
        --uid.
        """
        self.patch(os, "geteuid", lambda: 0)
        import pwd

        unknown = 54321
        while True:
            try:
                pwd.getpwuid(unknown)
            except KeyError:
                break
            unknown += 1
        error = self.assertRaises(usage.UsageError, self.twistd, "--uid", str(unknown), "mailharbor", "-d", "a.example")
        self.assertEqual(str(error), f"--uid: no user with uid {unknown} in the password database")

    def test_noUserWithoutTwistd(self) -> None:
        """
        Options parsed on their own (a reload, a test) have no user to run
        as.
        """
        self.assertIsNone(parse("-d", "a.example").runAs)


class AuthOptionsTests(SynchronousTestCase):
    """
    AUTH and TLS options.
    """

    def test_credCheckersFromAuthOption(self) -> None:
        """
        twistd's --auth adds a cred checker that the listeners use, and a
        submission listener is then allowed.
        """
        from harbor.auth import TextOrBytes
        from harbor.smtp._factory import HarborSMTPFactory

        options = parse("-d", "a.example", "--auth", "memory:alice:pw", "--allow-plaintext-auth")
        self.assertEqual(len(options["credCheckers"]), 1)
        service = makeService(options, MemoryReactorClock())
        [listener] = [s for s in service if isinstance(s, ListeningService)]
        factory = cast(HarborSMTPFactory, listener._factory)
        self.assertIsInstance(factory, HarborSMTPFactory)
        [checker] = factory.settings.checkers
        self.assertIs(cast(TextOrBytes, checker)._checker, options["credCheckers"][0])
        self.assertTrue(factory.settings.allowPlaintextAuth)

    def test_authenticateInCode(self) -> None:
        """
        makeService takes an C{authenticate} callback, asked after the
        --auth checkers.
        """
        from harbor.auth import CallbackChecker
        from harbor.smtp._factory import HarborSMTPFactory

        def authenticate(user: str, password: str, client: str) -> bool:
            return True

        options = parse("-d", "a.example", "--auth", "memory:alice:pw")
        service = makeService(options, MemoryReactorClock(), authenticate=authenticate)
        [listener] = [s for s in service if isinstance(s, ListeningService)]
        factory = cast(HarborSMTPFactory, listener._factory)
        _, callback = factory.settings.checkers
        self.assertIs(cast(CallbackChecker, callback)._authenticate, authenticate)

    def test_submissionNeedsUsers(self) -> None:
        """
        A submission listener without any way to authenticate is refused.
        """
        from harbor.test.certs import TestCA

        certificate, key = TestCA(self.mktemp()).issue()
        error = self.assertRaises(
            usage.UsageError,
            parse,
            "-d", "a.example", "--submission-port", "2587", "--tls-cert", certificate, "--tls-key", key,
        )
        self.assertIn("--submission-port", str(error))

    def test_tlsListenersNeedCertificate(self) -> None:
        """
        Implicit TLS without a certificate is refused, naming the option.
        """
        error = self.assertRaises(usage.UsageError, parse, "-d", "a.example", "--tls-port", "2465")
        self.assertIn("--tls-port", str(error))

    def test_implicitTLSListenerWrapped(self) -> None:
        """
        A --tls-port listener speaks TLS from the start.
        """
        from twisted.protocols.tls import TLSMemoryBIOFactory

        from harbor.test.certs import TestCA

        certificate, key = TestCA(self.mktemp()).issue()
        service = makeService(
            parse("-d", "a.example", "--tls-port", "2465", "--tls-cert", certificate, "--tls-key", key),
            MemoryReactorClock(),
        )
        factories = [s._factory for s in service if isinstance(s, ListeningService)]
        self.assertNotIsInstance(factories[0], TLSMemoryBIOFactory)
        self.assertIsInstance(factories[1], TLSMemoryBIOFactory)


class ReloadTests(SynchronousTestCase):
    """
    Tests for L{HarborService.reload}.
    """

    def test_reloadAppliesToNewConnections(self) -> None:
        """
        A reload picks up new domains and limits for new connections and
        creates the new Maildirs; a broken file is refused and the old
        configuration stays.
        """
        from harbor.address import parsePath
        from harbor.routing import Accept
        from harbor.smtp._factory import HarborSMTPFactory

        config = self.mktemp()
        root = self.mktemp()
        with open(config, "w") as f:
            f.write('domain = ["a.example"]\n')
        service = makeService(parse("--config", config, "-m", root), MemoryReactorClock())
        service.startService()
        self.addCleanup(service.stopService)
        [listener] = [s for s in service if isinstance(s, ListeningService)]
        factory = cast(HarborSMTPFactory, listener._factory)
        before = factory.deliverer
        with open(config, "w") as f:
            f.write('domain = ["a.example", "b.example"]\nmax_recipients = 200\n')
        service.reload()
        self.assertIsNot(factory.deliverer, before)
        decision = factory.deliverer.policy.decide(parsePath(b"<x@b.example>"))
        assert isinstance(decision, tuple), decision
        self.assertIsInstance(decision[0], Accept)
        self.assertEqual(factory.settings.limits.maxRecipients, 200)
        self.assertTrue(os.path.isdir(os.path.join(root, "b.example", "new")))
        current = factory.deliverer
        with open(config, "w") as f:
            f.write("domain = [\n")
        service.reload()
        self.assertIs(factory.deliverer, current)
        self.assertEqual([d.name for d in service.config.domains], ["a.example", "b.example"])

    def test_reloadSaysHookChangesNeedRestart(self) -> None:
        """
        A reload that changes the [[hook]] tables keeps the hooks in use and
        says plainly, at every reload until the restart, that the change
        needs one; a reload that leaves them alone says nothing of hooks.
        """
        from twisted.logger import ILogObserver, LogEvent, Logger

        config = self.mktemp()
        hook = '[[hook]]\nname = "{name}"\nkind = "python"\ntarget = "harbor.test.test_hooks:exampleHandler"\n'

        def write(*names: str) -> None:
            with open(config, "w") as f:
                f.write('domain = ["a.example"]\n' + "".join(hook.format(name=n) for n in names))

        write("first")
        service = makeService(parse("--config", config, "-m", self.mktemp()), MemoryReactorClock())
        running = service.hooks
        events: list[LogEvent] = []
        self.patch(HarborService, "_log", Logger(observer=cast(ILogObserver, events.append)))

        def hookWarnings() -> int:
            return sum("[[hook]] changes" in e["log_format"] for e in events)

        service.reload()
        self.assertEqual(hookWarnings(), 0)
        write("first", "second")
        service.reload()
        self.assertEqual(hookWarnings(), 1)
        service.reload()
        self.assertEqual(hookWarnings(), 2)
        self.assertIs(service.hooks, running)
        write("first")
        service.reload()
        self.assertEqual(hookWarnings(), 2)

    def test_reloadKeepsBlocklistResolver(self) -> None:
        """
        A reload that leaves the DNS blocklist settings alone keeps their
        resolver (each new one would read resolv.conf on the reactor thread
        and then every minute for ever); one that changes them gets a new
        one.
        """
        from harbor.smtp._factory import HarborSMTPFactory

        config = self.mktemp()
        reactor = MemoryReactorClock()

        def write(timeout: int) -> None:
            with open(config, "w") as f:
                f.write(f'domain = ["a.example"]\ndnsbl = ["bl.example"]\ndnsbl_timeout = {timeout}\n')

        write(5)
        service = makeService(parse("--config", config, "-m", self.mktemp()), reactor)
        [listener] = [s for s in service if isinstance(s, ListeningService)]
        factory = cast(HarborSMTPFactory, listener._factory)
        first = factory.deliverer.blocklists
        pending = len(reactor.getDelayedCalls())
        for _ in range(3):
            service.reload()
        self.assertIs(factory.deliverer.blocklists, first)
        self.assertEqual(len(reactor.getDelayedCalls()), pending)
        write(7)
        service.reload()
        self.assertIsNot(factory.deliverer.blocklists, first)
