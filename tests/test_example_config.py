"""
The shipped example configuration, C{etc/mailharbor.toml}, is valid and
says what the README says.
"""

import os

from twisted.trial.unittest import SynchronousTestCase

from harbor.config import Config, loadFile
from harbor.routing import DomainConfig

ETC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "etc")


class ExampleConfigTests(SynchronousTestCase):
    """
    Tests for C{etc/mailharbor.toml}.
    """

    def test_parses(self) -> None:
        """
        The example loads into a valid configuration with the documented
        values: port 25, a catch-all domain and one with an accept list.
        """
        config = Config.fromMapping(loadFile(os.path.join(ETC, "mailharbor.toml")))
        self.assertEqual(config.ports, ("tcp:25",))
        self.assertEqual(config.maildir, "/var/lib/mailharbor/Maildir")
        self.assertEqual(config.hostname, "mx.example.com")
        self.assertEqual(config.domains[:2], (DomainConfig("example.com"), DomainConfig("example.org", frozenset({"alice", "bob"}))))
        net = config.domains[2]
        self.assertEqual(net.mailboxPaths(), ["example.net", "example.net/alice", "example.net/bob"])
        self.assertEqual(len(net.rules), 2)
        self.assertEqual([f.action for f in config.filters], ["accept", "reject", "reject", "tag"])

    def test_checkConfigRoundTrip(self) -> None:
        """
        What C{mailharbor check-config} prints for the example, in the
        file's own keys, reads back as the same configuration.
        """
        config = Config.fromMapping(loadFile(os.path.join(ETC, "mailharbor.toml")))
        self.assertEqual(Config.fromMapping(config.asMapping()), config)

    def test_everySettingDocumented(self) -> None:
        """
        Every top-level setting MailHarbor knows appears in the example, set
        or (for those that need files of the operator's) as a commented line.
        """
        import re

        from harbor.config import _TOP_LEVEL_KEYS

        with open(os.path.join(ETC, "mailharbor.toml")) as f:
            text = f.read()
        for key in _TOP_LEVEL_KEYS:
            if key == "domains":
                pattern = r"^\[domains\."
            elif key in ("filter", "hook"):
                pattern = rf"^(#\s*)?\[\[{key}\]\]"
            else:
                pattern = rf"^(#\s+)?{key} = "
            self.assertRegex(text, re.compile(pattern, re.MULTILINE), key)

    def test_systemdUnitRunsThePlugin(self) -> None:
        """
        The systemd unit starts the plugin in the foreground with the
        example's path.
        """
        with open(os.path.join(ETC, "systemd", "mailharbor.service")) as f:
            text = f.read()
        self.assertIn("--nodaemon --pidfile= mailharbor --config /etc/mailharbor/mailharbor.toml", text)
        self.assertIn("User=mailharbor", text)
        self.assertIn("ReadWritePaths=/var/lib/mailharbor", text)

    def test_socketMatchesService(self) -> None:
        """
        The socket unit binds as many sockets as the service adopts, IPv4
        first and IPv6 second, matching the systemd endpoints' domains.
        """
        import re

        with open(os.path.join(ETC, "systemd", "mailharbor.socket")) as f:
            sockets = re.findall(r"^ListenStream=(.+)$", f.read(), re.MULTILINE)
        with open(os.path.join(ETC, "systemd", "mailharbor.service")) as f:
            endpoints = re.findall(r"--port systemd:domain=(\w+):index=(\d)", f.read())
        self.assertEqual(sockets, ["0.0.0.0:25", "[::]:25"])
        self.assertEqual(endpoints, [("INET", "0"), ("INET6", "1")])
