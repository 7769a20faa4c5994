"""
Tests for L{harbor.api}: MailHarbor built from a L{Config} in code.
"""

from __future__ import annotations

import os
from typing import Any, cast

from twisted.internet.testing import MemoryReactorClock
from twisted.logger import ILogObserver, Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial.unittest import SynchronousTestCase

from harbor.api import (
    Config,
    ConfigError,
    NewMessage,
    PolicyRequest,
    PythonHook,
    Refuse,
    buildService,
)
from harbor.service import HarborService, ListeningService
from harbor.smtp._factory import HarborSMTPFactory
from harbor.test.certs import TestCA

HOOK = {"name": "stored", "kind": "python", "target": "harbor.test.test_hooks:exampleHandler"}


def stored(message: NewMessage) -> None:
    """
    A new-message hook that does nothing.
    """


def policy(request: PolicyRequest) -> Refuse | None:
    """
    A policy that takes all mail.
    """
    return None


class BuildServiceTests(SynchronousTestCase):
    """
    Tests for L{buildService}.
    """

    def config(self, **settings: Any) -> Config:
        """
        A configuration for a.example with the Maildirs in a fresh
        directory, and C{settings}.
        """
        return Config.fromMapping(
            {"domain": ["a.example"], "hostname": "mx.a.example", "maildir": os.path.abspath(self.mktemp()), **settings}
        )

    def tlsFiles(self) -> dict[str, str]:
        certificate, key = TestCA(self.mktemp()).issue()
        return {"tls_cert": certificate, "tls_key": key}

    def assertRefused(self, config: Config, setting: str, **kwargs: Any) -> ConfigError:
        """
        L{buildService} refuses C{config}, naming C{setting}, as twistd
        would.
        """
        error: ConfigError = self.assertRaises(ConfigError, buildService, config, MemoryReactorClock(), **kwargs)
        self.assertEqual(error.setting, setting)
        return error

    def test_listenersFollowConfig(self) -> None:
        """
        The service listens on the configured endpoints, with the listen
        backlog, when started with privileges; implicit TLS listeners speak
        TLS from the start.
        """
        reactor = MemoryReactorClock()
        config = self.config(port=["2525", "tcp:2526:interface=127.0.0.1"], tls_port=["2465"], **self.tlsFiles())
        service = buildService(config, reactor)
        self.assertIsInstance(service, HarborService)
        listeners = [s for s in service if isinstance(s, ListeningService)]
        self.assertEqual(len(listeners), 3)
        self.assertIsInstance(listeners[0]._factory, HarborSMTPFactory)
        self.assertIsInstance(listeners[2]._factory, TLSMemoryBIOFactory)
        service.privilegedStartService()
        self.assertEqual(
            [(port, backlog, interface) for port, _, backlog, interface in reactor.tcpServers],
            [(2525, 1024, ""), (2526, 1024, "127.0.0.1"), (2465, 1024, "")],
        )
        self.assertTrue(all(s.port is not None for s in listeners))
        self.assertFalse(os.path.exists(config.maildir))
        service.startService()
        self.assertTrue(os.path.isdir(os.path.join(config.maildir, "a.example", "new")))
        service.stopService()
        self.assertTrue(all(s.port is None for s in listeners))

    def test_badEndpoint(self) -> None:
        """
        An endpoint that does not parse is refused, naming its setting.
        """
        self.assertRefused(self.config(port=["nonsense:1"]), "port")

    def test_unreadableFiles(self) -> None:
        """
        A users file or certificate that cannot be read is refused, naming
        its setting.
        """
        missing = os.path.abspath(self.mktemp())
        self.assertRefused(self.config(users_file=missing), "users_file")
        self.assertRefused(self.config(**{**self.tlsFiles(), "tls_cert": missing}), "tls_cert")

    def test_workersWithHooks(self) -> None:
        """
        Worker processes with new-message hooks are refused, whether the
        hooks are configured or given in code.
        """
        self.assertRefused(self.config(workers=2, hook=[HOOK]), "workers")
        self.assertRefused(self.config(workers=2), "workers", hooks=[stored])

    def test_workersNeedTwistd(self) -> None:
        """
        Worker processes without hooks are refused too: they would be
        started as C{twistd mailharbor} without a configuration, and die.
        """
        error = self.assertRefused(self.config(workers=2), "workers")
        self.assertIn("twistd mailharbor only", error.problem)

    def test_workersWithSystemd(self) -> None:
        """
        Worker processes on systemd's sockets are refused.
        """
        from harbor import preflight

        # As if systemd had passed a socket.
        self.patch(preflight, "checkEndpoint", lambda description, setting: None)
        self.assertRefused(self.config(workers=2, port=["systemd:domain=INET:index=0"]), "workers")

    def test_hookImport(self) -> None:
        """
        A configured hook or policy hook that cannot be imported is refused,
        naming its setting; a policy in code replaces the configured one,
        which is then not imported.
        """
        self.assertRefused(self.config(hook=[{**HOOK, "target": "harbor.no_such_module:f"}]), "hook[0].target")
        config = self.config(policy_hook="harbor.no_such_module:f")
        self.assertRefused(config, "policy_hook")
        service = buildService(config, MemoryReactorClock(), policy=policy)
        [listener] = [s for s in service if isinstance(s, ListeningService)]
        factory = listener._factory
        assert isinstance(factory, HarborSMTPFactory)
        assert factory.deliverer.policyHook is not None
        self.assertIs(factory.deliverer.policyHook._function, policy)

    def test_submissionNeedsUsers(self) -> None:
        """
        A submission listener without a users file is refused.
        """
        error = self.assertRefused(self.config(submission_port=["2587"], **self.tlsFiles()), "submission_port")
        self.assertEqual(error.problem, "needs users to authenticate (--users-file, --auth, or authenticate= in code)")

    def test_authenticate(self) -> None:
        """
        An C{authenticate} callback is what AUTH asks, after the users
        file, on every listener; it counts as users for a submission port.
        """
        from harbor.auth import CallbackChecker, UsersFileChecker, setPassword

        def authenticate(user: str, password: str, client: str) -> bool:
            return False

        users = self.mktemp()
        setPassword(users, "alice", "pw")
        config = self.config(submission_port=["2587"], users_file=users, **self.tlsFiles())
        service = buildService(config, MemoryReactorClock(), authenticate=authenticate)
        listeners = [s for s in service if isinstance(s, ListeningService)]
        self.assertEqual(len(listeners), 2)
        for listener in listeners:
            factory = listener._factory
            assert isinstance(factory, HarborSMTPFactory)
            first, second = factory.settings.checkers
            self.assertIsInstance(first, UsersFileChecker)
            assert isinstance(second, CallbackChecker)
            self.assertIs(second._authenticate, authenticate)
        alone = self.config(submission_port=["2587"], **self.tlsFiles())
        buildService(alone, MemoryReactorClock(), authenticate=authenticate)

    def test_hookNamesDistinct(self) -> None:
        """
        A plain function whose name another hook already has gets a name of
        its own rather than a refusal.
        """
        def stored(event: object) -> None:
            pass

        config = Config.fromMapping({"domain": ["a.example"], "maildir": os.path.abspath(self.mktemp())})
        service = buildService(config, MemoryReactorClock(), hooks=[PythonHook(stored, "stored"), stored])
        assert service.hooks is not None
        self.assertEqual(sorted(hook.name for hook in service.hooks._hooks.values()), ["stored", "stored-0"])

    def test_hookNames(self) -> None:
        """
        A plain function is named after itself, avoiding the names of the
        configured hooks; a hook given with a name keeps it and runs after
        the configured ones.
        """
        named = PythonHook(stored, "mine")
        service = buildService(self.config(hook=[HOOK]), MemoryReactorClock(), hooks=[stored, named])
        assert service.hooks is not None
        self.assertEqual(list(service.hooks._hooks), ["stored", "stored-0", "mine"])
        self.assertIs(service.hooks._hooks["mine"], named)

    def test_noHooks(self) -> None:
        """
        Without hooks there is no hook runner.
        """
        self.assertIsNone(buildService(self.config(), MemoryReactorClock()).hooks)

    def test_reloadRefused(self) -> None:
        """
        A service built from a configuration in code has no file to reload:
        SIGHUP leaves it as it is, with a warning.
        """
        events: list[dict[str, Any]] = []
        self.patch(HarborService, "_log", Logger(observer=cast(ILogObserver, events.append)))
        service = buildService(self.config(), MemoryReactorClock())
        before = service.config
        service.reload()
        self.assertIs(service.config, before)
        self.assertIn("No configuration file to reload", events[-1]["log_format"])
