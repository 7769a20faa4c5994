"""
Tests for L{harbor.config}.
"""

import os
from collections.abc import Mapping

from twisted.trial.unittest import SynchronousTestCase

from harbor._syntax import ConfigError
from harbor.config import (
    Config,
    TLSFiles,
    isLoopbackName,
    loadFile,
    machineName,
    normalisePort,
)
from harbor.limits import Limits
from harbor.routing import DomainConfig


class ConfigTests(SynchronousTestCase):
    """
    Tests for L{Config.fromMapping}.
    """

    def assertConfigError(self, mapping: Mapping[str, object], setting: str) -> ConfigError:
        error: ConfigError = self.assertRaises(ConfigError, Config.fromMapping, mapping)
        self.assertEqual(error.setting, setting)
        return error

    def test_defaults(self) -> None:
        """
        With only a domain, MailHarbor listens on port 25 and stores under
        ./Maildir, as an absolute path.
        """
        config = Config.fromMapping({"domain": "example.com", "hostname": "mx.example.com"})
        self.assertEqual(config.ports, ("tcp:25",))
        self.assertEqual(config.maildir, os.path.abspath("Maildir"))
        self.assertEqual(config.domains, (DomainConfig("example.com"),))

    def test_trustedProxies(self) -> None:
        """
        Only a balancer on this host may send PROXY headers by default;
        trusted_proxies lists networks in their normal form, and a bad one,
        or none at all with a haproxy: listener, is an error naming it.
        """
        config = Config.fromMapping({"domain": "example.com", "hostname": "mx.example.com"})
        self.assertEqual(config.trustedProxies, ("127.0.0.0/8", "::1/128"))
        config = Config.fromMapping(
            {"domain": "example.com", "hostname": "mx.example.com", "trusted_proxies": "2001:DB8::/32"}
        )
        self.assertEqual(config.trustedProxies, ("2001:db8::/32",))
        base = {"domain": "example.com", "hostname": "mx.example.com"}
        self.assertIn("not-a-net", str(self.assertConfigError({**base, "trusted_proxies": ["not-a-net"]}, "trusted_proxies")))
        self.assertConfigError({**base, "trusted_proxies": 10}, "trusted_proxies")
        self.assertConfigError({**base, "trusted_proxies": [], "port": "haproxy:tcp:25"}, "trusted_proxies")
        self.assertEqual(Config.fromMapping({**base, "trusted_proxies": []}).trustedProxies, ())

    def test_groupCommit(self) -> None:
        """
        group_commit is "fsync" unless set to "syncfs" or "off"; the old
        booleans still work (true is "fsync", false is "off"); anything
        else is an error naming the setting.
        """
        base = {"domain": "example.com", "hostname": "mx.example.com"}
        self.assertEqual(Config.fromMapping(base).groupCommit, "fsync")
        for value, mode in (("fsync", "fsync"), ("syncfs", "syncfs"), ("off", "off"), (True, "fsync"), (False, "off")):
            self.assertEqual(Config.fromMapping({**base, "group_commit": value}).groupCommit, mode)
        for bad in ("no", "true", "SYNCFS", 1, None, ["fsync"]):
            error = self.assertConfigError({**base, "group_commit": bad}, "group_commit")
            self.assertIn("fsync, syncfs, off", str(error))

    def test_commitLanes(self) -> None:
        """
        commit_lanes and commit_batch default to 8 and 32 and take a whole
        number from 1 up to a bound; anything else is an error naming the
        setting.
        """
        base = {"domain": "example.com", "hostname": "mx.example.com"}
        config = Config.fromMapping(base)
        self.assertEqual((config.commitLanes, config.commitBatch), (8, 32))
        config = Config.fromMapping({**base, "commit_lanes": 1, "commit_batch": 1})
        self.assertEqual((config.commitLanes, config.commitBatch), (1, 1))
        config = Config.fromMapping({**base, "commit_lanes": 64, "commit_batch": 1024})
        self.assertEqual((config.commitLanes, config.commitBatch), (64, 1024))
        for key, bad in (("commit_lanes", 0), ("commit_lanes", 65), ("commit_lanes", 2.0), ("commit_lanes", True),
                         ("commit_batch", 0), ("commit_batch", 1025), ("commit_batch", "8")):
            self.assertConfigError({**base, key: bad}, key)

    def test_hostnameDefaultsToFQDN(self) -> None:
        """
        Without a hostname, the machine's name is looked up.
        """
        config = Config.fromMapping({"domain": "example.com"}, fqdn=lambda: "Host.Example.NET.")
        self.assertEqual(config.hostname, "host.example.net")

    def test_machineNameNotLocalhost(self) -> None:
        """
        Where the FQDN lookup answers localhost (the host name listed after
        localhost in /etc/hosts), the machine's host name is used instead.
        """
        self.assertEqual(machineName(lambda: "localhost", lambda: "vm"), "vm")
        self.assertEqual(machineName(lambda: "localhost.localdomain", lambda: "Box.Example.ORG"), "box.example.org")
        config = Config.fromMapping({"domain": "example.com"}, fqdn=lambda: machineName(lambda: "localhost", lambda: "vm"))
        self.assertEqual(config.hostname, "vm")

    def test_machineNamePrefersFQDN(self) -> None:
        """
        A real fully qualified name is preferred to the bare host name.
        """
        self.assertEqual(machineName(lambda: "mx.example.net.", lambda: "mx"), "mx.example.net")

    def test_machineNameFallbacks(self) -> None:
        """
        Loopback names and unusable names are skipped; with nothing better,
        the name is localhost.
        """

        def broken() -> str:
            raise OSError("no name")

        self.assertEqual(machineName(broken, lambda: "vm"), "vm")
        self.assertEqual(machineName(lambda: "ip6-localhost", lambda: "bad name"), "localhost")
        self.assertEqual(machineName(lambda: "localhost6.localdomain6", lambda: "localhost"), "localhost")
        for name in ("localhost", "LOCALHOST.", "localhost.localdomain", "ip6-loopback", "localhost4"):
            self.assertTrue(isLoopbackName(name), name)
        for name in ("mx.example.com", "localhost-mx.example.com", "vm"):
            self.assertFalse(isLoopbackName(name), name)

    def test_unusableFQDN(self) -> None:
        """
        A machine name that is not a host name is replaced by localhost.
        """
        config = Config.fromMapping({"domain": "example.com"}, fqdn=lambda: "bad name")
        self.assertEqual(config.hostname, "localhost")

    def test_barePortNumber(self) -> None:
        """
        A bare port number, as a string or an integer, means tcp:N.
        """
        config = Config.fromMapping({"domain": "example.com", "port": ["2525", 2526]})
        self.assertEqual(config.ports, ("tcp:2525", "tcp:2526"))

    def test_endpointStrings(self) -> None:
        """
        Any server endpoint string is kept as given.
        """
        ports = ["tcp:2525:interface=127.0.0.1", "tcp6:2525:interface=\\:\\:1", "unix:/tmp/s"]
        config = Config.fromMapping({"domain": "example.com", "port": ports})
        self.assertEqual(config.ports, tuple(ports))

    def test_readsNothing(self) -> None:
        """
        Building a configuration reads no file and parses no endpoint: a
        missing users file or certificate and an endpoint Twisted cannot
        parse are for the start-up checks (L{harbor.preflight}).
        """
        missing = os.path.abspath(self.mktemp())
        config = Config.fromMapping(
            {
                "domain": "example.com",
                "port": ["nonsense:1"],
                "submission_port": ["2587"],
                "users_file": missing,
                "tls_cert": missing,
                "tls_key": missing,
            }
        )
        self.assertEqual(config.ports, ("nonsense:1", "tcp:2587"))
        self.assertEqual(config.usersFile, missing)
        self.assertEqual(config.tls, TLSFiles(missing, missing))

    def test_portStripped(self) -> None:
        """
        A port is stripped of surrounding blanks before a bare number is
        made tcp:N.
        """
        self.assertEqual(normalisePort(" 2525 "), "tcp:2525")
        self.assertEqual(normalisePort(" unix:/tmp/s"), "unix:/tmp/s")

    def test_domainRequired(self) -> None:
        """
        A server with no domain would refuse all mail: it is an error.
        """
        self.assertConfigError({}, "domain")

    def test_domainNormalised(self) -> None:
        """
        Domains are lower-cased, lose a trailing dot, become A-labels and
        are de-duplicated.
        """
        config = Config.fromMapping(
            {"domain": ["Example.COM.", "example.com", "b\u00fccher.example"]}
        )
        self.assertEqual(
            [d.name for d in config.domains], ["example.com", "xn--bcher-kva.example"]
        )

    def test_badDomain(self) -> None:
        """
        Something that is not a domain name is refused, naming domain.
        """
        for domain in ["bad domain", "../etc", "a..b", "-a.example", 42]:
            self.assertConfigError({"domain": [domain]}, "domain")

    def test_domainTables(self) -> None:
        """
        A [domains] table adds its domain, with its accept list, local parts
        or whole addresses, lower-cased.
        """
        config = Config.fromMapping(
            {
                "domain": ["example.com"],
                "domains": {"Example.org": {"accept": ["Alice", "bob@EXAMPLE.org"]}},
            }
        )
        self.assertEqual(
            config.domains,
            (
                DomainConfig("example.com"),
                DomainConfig("example.org", frozenset({"alice", "bob"})),
            ),
        )

    def test_tableWithoutAcceptIsCatchAll(self) -> None:
        """
        A domain table without accept is a catch-all.
        """
        config = Config.fromMapping({"domains": {"example.org": {}}})
        self.assertEqual(config.domains, (DomainConfig("example.org", None),))

    def test_badAcceptEntries(self) -> None:
        """
        An address of another domain or a malformed local part in an accept
        list is refused, naming the list.
        """
        for entry in ["x@other.org", "a b", "", "a..b"]:
            self.assertConfigError(
                {"domains": {"example.org": {"accept": [entry]}}}, "domains.example.org.accept"
            )

    def test_unknownSettings(self) -> None:
        """
        A misspelt setting is an error naming it, not silently ignored.
        """
        self.assertConfigError({"domain": "example.com", "ports": ["25"]}, "ports")
        self.assertConfigError(
            {"domains": {"example.org": {"acept": []}}}, "domains.example.org.acept"
        )

    def test_badHostname(self) -> None:
        """
        A host name with characters that would break headers is refused.
        """
        for hostname in ["mx example", "mx\nX: y", "", 3]:
            self.assertConfigError({"domain": "example.com", "hostname": hostname}, "hostname")

    def test_badMaildir(self) -> None:
        """
        An empty or non-string maildir is refused.
        """
        self.assertConfigError({"domain": "example.com", "maildir": ""}, "maildir")
        self.assertConfigError({"domain": "example.com", "maildir": 3}, "maildir")

    def test_hookSpool(self) -> None:
        """
        The hook spool is <maildir>/.hooks unless hook_spool names another
        directory, made absolute; a Config made in code follows its
        maildir too.
        """
        config = Config.fromMapping({"domain": "example.com", "maildir": "/srv/mail"})
        self.assertEqual(config.hookSpool, "/srv/mail/.hooks")
        config = Config.fromMapping({"domain": "example.com", "maildir": "/srv/mail", "hook_spool": "spool"})
        self.assertEqual(config.hookSpool, os.path.abspath("spool"))
        inCode = Config(listeners=(), domains=(DomainConfig("example.com"),), maildir="/m", hostname="mx")
        self.assertEqual(inCode.hookSpool, "/m/.hooks")

    def test_badHookSpool(self) -> None:
        """
        A hook_spool that is not a path, is the Maildir root, or is in a
        domain's Maildir is refused, naming the setting.
        """
        base = {"domain": "example.com", "maildir": "/srv/mail"}
        for bad in ("", 3, "/srv/mail", "/srv/mail/", "/srv/mail/example.com", "/srv/mail/example.com/.hooks"):
            self.assertConfigError({**base, "hook_spool": bad}, "hook_spool")
        self.assertEqual(Config.fromMapping({**base, "hook_spool": "/srv/mail/.spool"}).hookSpool, "/srv/mail/.spool")

    def test_frozen(self) -> None:
        """
        A configuration cannot be changed once built.
        """
        config = Config.fromMapping({"domain": "example.com"})
        self.assertRaises(AttributeError, setattr, config, "maildir", "/tmp")


class LoadFileTests(SynchronousTestCase):
    """
    Tests for L{loadFile}.
    """

    def test_load(self) -> None:
        """
        A TOML file loads into a mapping.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write('domain = ["example.com"]\n[domains."example.org"]\naccept = ["alice"]\n')
        self.assertEqual(
            loadFile(path),
            {"domain": ["example.com"], "domains": {"example.org": {"accept": ["alice"]}}},
        )

    def test_missing(self) -> None:
        """
        A missing file is a ConfigError naming config.
        """
        error = self.assertRaises(ConfigError, loadFile, self.mktemp())
        self.assertEqual(error.setting, "config")

    def test_invalidTOML(self) -> None:
        """
        A file that is not TOML is a ConfigError naming config.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("domain = [\n")
        error = self.assertRaises(ConfigError, loadFile, path)
        self.assertIn("not valid TOML", error.problem)


class LimitsTests(SynchronousTestCase):
    """
    Tests for the limits settings.
    """

    def test_defaults(self) -> None:
        """
        Without limit settings, the documented defaults apply: 25 MiB, 1000
        recipients, 300 s and 180 s timeouts, 500 bytes/s in message data,
        10 errors, loopback exempt.
        """
        limits = Config.fromMapping({"domain": "example.com"}).limits
        self.assertEqual(
            (limits.maxMessageSize, limits.maxRecipients, limits.commandTimeout, limits.dataTimeout),
            (26214400, 1000, 300, 180),
        )
        self.assertEqual(limits.minDataRate, 500)
        self.assertEqual(limits.maxErrors, 10)
        self.assertEqual(limits.connectionLimitExceptions, ("127.0.0.0/8", "::1/128"))
        self.assertEqual(limits.bareNewline, "normalize")
        self.assertEqual((limits.policyHookTimeout, limits.policyHookTransactionTimeout), (10, 30))
        self.assertEqual(limits.authTimeout, 30)

    def test_settings(self) -> None:
        """
        Each limit is read from its key.
        """
        limits = Config.fromMapping(
            {
                "domain": "example.com",
                "max_message_size": 1000,
                "max_recipients": 100,
                "command_timeout": 30,
                "data_timeout": 2.5,
                "max_errors": 3,
                "max_connections": 7,
                "max_connections_per_client": 2,
                "connection_limit_exceptions": ["10.1.2.3/8"],
                "bare_newline": "reject",
                "min_data_rate": 0,
            }
        ).limits
        self.assertEqual(
            limits,
            Limits(1000, 100, 30.0, 2.5, 3, 7, 2, ("10.0.0.0/8",), "reject", minDataRate=0),
        )

    def test_badLimits(self) -> None:
        """
        Values of the wrong type or too small are refused, naming the key;
        fewer than 100 recipients would break RFC 5321.
        """
        for key, value in [
            ("max_message_size", -1),
            ("max_message_size", "10M"),
            ("max_recipients", 99),
            ("command_timeout", 0),
            ("min_data_rate", -1),
            ("min_data_rate", 1.5),
            ("min_data_rate", "500"),
            ("policy_hook_transaction_timeout", 0),
            ("policy_hook_transaction_timeout", "30s"),
            ("auth_timeout", 0),
            ("max_errors", True),
            ("max_errors", 2.5),
            ("bare_newline", "ignore"),
            ("connection_limit_exceptions", ["not-a-net"]),
        ]:
            error = self.assertRaises(ConfigError, Config.fromMapping, {"domain": "example.com", key: value})
            self.assertEqual(error.setting, key)


# A configuration that sets every setting, most away from their defaults.
EVERY_SETTING: dict[str, object] = {
    "port": ["2525", "tcp6:2526:interface=\\:\\:1"],
    "tls_port": [2465],
    "submission_port": ["2587"],
    "require_tls": True,
    "tls_cert": "cert.pem",
    "tls_key": "key.pem",
    "users_file": "users",
    "allow_plaintext_auth": True,
    "submission_mailbox": "sent/{user}",
    "domain": ["B\u00fccher.example", "example.com"],
    "domains": {
        "example.com": {
            "accept": ["Bob", "alice@example.com"],
            "mailboxes": ["carol"],
            "aliases": {"sales": ["carol", "dave"]},
            "catch_all": "carol",
            "subaddress_delimiter": "-",
            "subaddress_folders": True,
            "rules": [
                {"sender": "@lists.example", "folder": "Lists"},
                {"header": "List-Id", "contains": "python", "folder": "Lists.python"},
            ],
        },
        "example.org": {"catch_all": "reject"},
    },
    "maildir": "mail",
    "hostname": "MX.example.com.",
    "max_message_size": 1000,
    "max_recipients": 200,
    "command_timeout": 60,
    "data_timeout": 90.5,
    "min_data_rate": 250,
    "max_errors": 5,
    "max_junk_commands": 7,
    "max_connections": 30,
    "max_connections_per_client": 3,
    "shutdown_grace": 2,
    "dnsbl_timeout": 1.5,
    "pregreet_wait": 1,
    "listen_backlog": 64,
    "policy_hook_timeout": 3,
    "policy_hook_transaction_timeout": 12,
    "auth_timeout": 4,
    "workers": 2,
    "bare_newline": "reject",
    "connection_limit_exceptions": ["10.0.0.1", "2001:db8::/32"],
    "filter": [
        {"client": "192.0.2.0/24", "action": "accept"},
        {"sender": '"John Smith"@B\u00fccher.example', "action": "reject", "text": "No"},
        {"helo": "*.slow.example", "action": "tempfail", "code": 421, "enhanced": "4.4.5"},
        {"recipient": "*@example.com", "action": "tag", "header": "X-Tag: yes"},
        {"recipient": "bulk@example.com", "action": "discard"},
    ],
    "dnsbl": ["zen.example"],
    "dns_servers": ["192.0.2.53", "192.0.2.54:5353", "2001:db8::53"],
    "hook": [
        {"name": "py", "kind": "python", "target": "pkg.mod:func", "thread": True, "attempts": 2},
        {"name": "cmd", "kind": "command", "command": ["/bin/true", "-x"], "environment": {"A": "1"},
         "max_pending": 50},
        {"name": "web", "kind": "webhook", "url": "https://hooks.example/in", "format": "multipart",
         "headers": {"Authorization": "Bearer x"}, "backoff": 5, "max_backoff": 50},
    ],
    "hook_spool": "/var/spool/mailharbor/hooks",
    "policy_hook": "pkg.mod:policy",
    "policy_hook_default": "tempfail",
    "group_commit": "syncfs",
    "commit_lanes": 3,
    "commit_batch": 8,
    "trusted_proxies": ["10.0.0.0/24", "fd00::1"],
    "metrics": 9025,
    "drain_delay": 3,
    "web": {
        "listen": "tcp:8025",
        "names": ["Mail.Example.com."],
        "admins": ["alice"],
        "tls": True,
        "access": {"bob": ["example.net/bob", "Example.org"]},
    },
}


class AsMappingTests(SynchronousTestCase):
    """
    Tests for L{Config.asMapping}, the configuration in the file's keys.
    """

    def test_roundTrip(self) -> None:
        """
        What asMapping gives is read back as the same configuration, for a
        configuration that sets every setting and for the defaults.
        """
        for mapping in (EVERY_SETTING, {"domain": "example.com"}):
            config = Config.fromMapping(mapping, fqdn=lambda: "mx.example.net")
            self.assertEqual(Config.fromMapping(config.asMapping()), config)

    def test_metricsEndpoint(self) -> None:
        """
        C{metrics} is off by default; a bare port number means that port on
        loopback, an endpoint string is kept, anything else names the
        setting.
        """
        base = {"domain": "example.com", "hostname": "mx.example.com"}
        self.assertIsNone(Config.fromMapping(base).metrics)
        self.assertEqual(Config.fromMapping({**base, "metrics": "9100"}).metrics, "tcp:9100:interface=127.0.0.1")
        self.assertEqual(
            Config.fromMapping({**base, "metrics": "tcp:9100:interface=10.0.0.5"}).metrics,
            "tcp:9100:interface=10.0.0.5",
        )
        e = self.assertRaises(ConfigError, Config.fromMapping, {**base, "metrics": ["9100"]})
        self.assertEqual(e.setting, "metrics")
        self.assertEqual(Config.fromMapping(base).limits.drainDelay, 7)

    def test_fileKeys(self) -> None:
        """
        Every key is one the file knows, and with every setting set, every
        key the file knows is there.
        """
        from harbor.config import _TOP_LEVEL_KEYS

        full = Config.fromMapping(EVERY_SETTING).asMapping()
        self.assertEqual(set(full), set(_TOP_LEVEL_KEYS))
        self.assertEqual(full["max_message_size"], 1000)
        self.assertEqual(full["min_data_rate"], 250)
        self.assertEqual(full["policy_hook_transaction_timeout"], 12)
        self.assertEqual(full["auth_timeout"], 4)
        self.assertEqual(full["domain"], ["xn--bcher-kva.example", "example.com", "example.org"])
        self.assertEqual(full["domains"]["example.com"]["accept"], ["alice", "bob"])
        self.assertEqual(full["hook"][1]["command"], ["/bin/true", "-x"])
        self.assertEqual((full["hook"][0]["max_pending"], full["hook"][1]["max_pending"]), (10_000, 50))
        self.assertEqual(full["dns_servers"], ["192.0.2.53:53", "192.0.2.54:5353", "2001:db8::53"])
        self.assertEqual((full["group_commit"], full["commit_lanes"], full["commit_batch"]), ("syncfs", 3, 8))
        self.assertEqual(full["trusted_proxies"], ["10.0.0.0/24", "fd00::1/128"])
        self.assertEqual(full["hook_spool"], "/var/spool/mailharbor/hooks")
        self.assertEqual((full["metrics"], full["drain_delay"]), ("tcp:9025:interface=127.0.0.1", 3))
        plain = Config.fromMapping({"domain": "example.com"}, fqdn=lambda: "mx.example.net").asMapping()
        self.assertEqual(plain["hook_spool"], os.path.join(plain["maildir"], ".hooks"))
        self.assertLessEqual(set(plain), set(_TOP_LEVEL_KEYS))
        self.assertNotIn("tls_cert", plain)
        self.assertEqual(plain["port"], ["tcp:25"])


class WebConfigTests(SynchronousTestCase):
    """
    Tests for the C{web} setting (L{harbor.config.WebConfig}).
    """

    def parse(self, **settings: object) -> Config:
        return Config.fromMapping({"domain": "example.com", "hostname": "mx.example.com", **settings})

    def assertRefused(self, setting: str, **settings: object) -> ConfigError:
        error: ConfigError = self.assertRaises(ConfigError, self.parse, **settings)
        self.assertEqual(error.setting, setting)
        return error

    def test_offByDefault(self) -> None:
        """
        There is no web interface unless C{web} is set; C{false} is off too.
        """
        self.assertIsNone(self.parse().web)
        self.assertIsNone(self.parse(web=False).web)

    def test_shorthand(self) -> None:
        """
        C{web = "8025"} (or 8025) is the [web] table with that listen: a
        bare port number on 127.0.0.1.
        """
        for value in ("8025", 8025, {"listen": 8025}):
            web = self.parse(web=value).web
            assert web is not None
            self.assertEqual(web.listen, "tcp:8025:interface=127.0.0.1")
            self.assertEqual((web.names, web.admins, web.access, web.tls), ((), (), (), False))

    def test_table(self) -> None:
        """
        The table's names are lower-cased, the grants' domains too, each
        user's grants kept in order.
        """
        web = Config.fromMapping(EVERY_SETTING).web
        assert web is not None
        self.assertEqual(web.listen, "tcp:8025")
        self.assertEqual(web.names, ("mail.example.com",))
        self.assertEqual(web.admins, ("alice",))
        self.assertEqual(web.access, (("bob", ("example.net/bob", "example.org")),))
        self.assertEqual(web.grantsOf("bob"), ("example.net/bob", "example.org"))
        self.assertEqual(web.grantsOf("carol"), ())
        self.assertTrue(web.tls)

    def test_notLoopbackWithoutUsers(self) -> None:
        """
        Without a users file, an endpoint other machines may reach is
        refused, naming web.listen and users_file; loopback and UNIX
        sockets are fine, and with users anything is.
        """
        for listen in ("tcp:8025", "tcp:8025:interface=0.0.0.0", "tcp6:8025", "systemd:domain=INET:index=0",
                       "tcp:8025:interface=10.0.0.5", "tcp:8025:interface=127.0.0.1:interface=0.0.0.0",
                       "tcp:8025:interface=localhost.attacker.example", "ssl:8025:interface=localhost6.example"):
            error = self.assertRefused("web.listen", web={"listen": listen})
            self.assertIn("users_file", error.problem)
        for listen in ("tcp:8025:interface=127.0.0.1", "tcp6:8025:interface=\\:\\:1", "unix:/run/web.sock",
                       "tcp:8025:interface=localhost"):
            self.assertIsNotNone(self.parse(web={"listen": listen}).web, listen)
        self.assertIsNotNone(self.parse(users_file="users", web="tcp:8025").web)

    def test_namesNormalised(self) -> None:
        """
        An IPv6 address in web.names is kept as the Host check compares it:
        without its brackets, in its canonical spelling.
        """
        web = self.parse(web={"listen": "8025", "names": ["[2001:DB8:0::5]", "Mail.Example.COM."]}).web
        assert web is not None
        self.assertEqual(web.names, ("2001:db8::5", "mail.example.com"))

    def test_errorsNameTheSetting(self) -> None:
        """
        Each mistake names its setting.
        """
        self.assertRefused("web", web=["8025"])
        self.assertRefused("web.listen", web={"listen": True})
        self.assertRefused("web.names", web={"names": ["not a name"]})
        self.assertRefused("web.admins", web={"admins": ["bad user!"]})
        self.assertRefused("web.access.bob", web={"access": {"bob": ["../etc"]}})
        self.assertRefused("web.access.bob", web={"access": {"bob": [".hidden"]}})
        self.assertRefused("web.access", web={"access": ["bob"]})
        self.assertRefused("web.tls", web={"tls": True})
        self.assertRefused("web.tls", web={"tls": "yes"})
        self.assertRefused("web.port", web={"port": 1})
