"""
Tests for L{harbor.preflight}: the start-up checks that look at the world.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from harbor import preflight
from harbor._syntax import ConfigError
from harbor.access import Identity
from harbor.auth import setPassword
from harbor.config import Config
from harbor.ownership import Status
from harbor.preflight import (
    Conflict,
    checkConfig,
    checkEndpoint,
    prepareForUser,
    workingDirectories,
)
from harbor.test.certs import TestCA
from harbor.test.test_ownership import FILE, FakeDirectories, directory

HOOK = {"name": "notify", "kind": "python", "target": "harbor.test.test_hooks:exampleHandler"}


def check(mapping: dict[str, Any], **kwargs: Any) -> None:
    """
    Build a configuration from C{mapping} and run the start-up checks on
    it, as twistd does.
    """
    checkConfig(Config.fromMapping({"hostname": "mx.example", **mapping}), **kwargs)


class CheckConfigTests(SynchronousTestCase):
    """
    Tests for L{checkConfig}.
    """

    def assertRefused(self, mapping: dict[str, Any], setting: str, **kwargs: Any) -> ConfigError:
        error: ConfigError = self.assertRaises(ConfigError, check, mapping, **kwargs)
        self.assertEqual(error.setting, setting)
        return error

    def tlsFiles(self) -> dict[str, str]:
        certificate, key = TestCA(self.mktemp()).issue()
        return {"tls_cert": certificate, "tls_key": key}

    def usersFile(self) -> str:
        path = os.path.abspath(str(self.mktemp()))
        setPassword(path, "alice", "secret")
        return path

    def test_usable(self) -> None:
        """
        A configuration whose files can be read, endpoints parsed and hooks
        imported passes.
        """
        check(
            {
                "domain": "example.com",
                "port": ["2525"],
                "tls_port": ["2465"],
                "submission_port": ["tcp:2587:interface=127.0.0.1"],
                "users_file": self.usersFile(),
                "hook": [HOOK],
                "policy_hook": "harbor.test.test_hooks:exampleHandler",
                **self.tlsFiles(),
            }
        )

    def test_badPort(self) -> None:
        """
        An endpoint string Twisted cannot parse is refused, naming port.
        """
        for port in ["nonsense:1", "tcp:abc", "tcp:25:bogus=1", "", []]:
            self.assertRefused({"domain": "example.com", "port": port}, "port")

    def test_badPortNamesItsSetting(self) -> None:
        """
        A bad implicit TLS or submission endpoint names its own setting.
        """
        tls = self.tlsFiles()
        self.assertRefused({"domain": "example.com", "tls_port": "nonsense:1", **tls}, "tls_port")
        self.assertRefused({"domain": "example.com", "submission_port": "tcp:x", **tls}, "submission_port")

    def test_systemdWithoutSockets(self) -> None:
        """
        A systemd endpoint without sockets from systemd is refused with a
        message that says so.
        """
        self.patch(os, "environ", {})
        error = self.assertRaises(ConfigError, checkEndpoint, "systemd:domain=INET:index=0", "port")
        self.assertIn("LISTEN_FDS", error.problem)

    def test_usersFileUnreadable(self) -> None:
        """
        A users file that cannot be read is refused, naming users_file and
        the file.
        """
        missing = os.path.abspath(self.mktemp())
        error = self.assertRefused({"domain": "example.com", "users_file": missing}, "users_file")
        self.assertEqual(error.problem, f"cannot read {missing}: No such file or directory")

    def test_usersFileMalformed(self) -> None:
        """
        A users file with a line that is not a user and a hash is refused,
        naming the line.
        """
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write("alice\n")
        error = self.assertRefused({"domain": "example.com", "users_file": path}, "users_file")
        self.assertEqual(error.problem, f"{path}, line 1: not a user name and scrypt hash")

    def test_certificateUnusable(self) -> None:
        """
        A certificate that cannot be loaded is refused, naming tls_cert.
        """
        tls = self.tlsFiles()
        missing = os.path.abspath(self.mktemp())
        error = self.assertRefused({"domain": "example.com", **tls, "tls_cert": missing}, "tls_cert")
        self.assertEqual(error.problem, f"cannot read {missing}: No such file or directory")
        error = self.assertRefused({"domain": "example.com", **tls, "tls_cert": tls["tls_key"]}, "tls_cert")
        self.assertIn("no PEM certificate", error.problem)

    def test_workersWithSystemd(self) -> None:
        """
        Worker processes cannot share systemd's sockets.
        """
        # As if systemd had passed a socket: Twisted's systemd endpoint
        # parser reads the environment once, when it is first used.
        self.patch(preflight, "checkEndpoint", lambda description, setting: None)
        error = self.assertRefused(
            {"domain": "example.com", "port": "systemd:domain=INET:index=0", "workers": 2}, "workers"
        )
        self.assertIsInstance(error, Conflict)
        self.assertEqual(error.problem, "systemd's sockets are adopted by one process only")

    def test_workersWithHooks(self) -> None:
        """
        Worker processes may have new-message hooks, configured or given
        in code: they share the hook spool, each job claimed by one.
        """
        check({"domain": "example.com", "workers": 2, "hook": [HOOK]})
        check({"domain": "example.com", "workers": 2}, codeHooks=[object()])

    def test_hookImport(self) -> None:
        """
        A python hook whose function cannot be imported is refused, naming
        its target.
        """
        self.assertRefused(
            {"domain": "example.com", "hook": [{**HOOK, "target": "harbor.no_such_module:f"}]},
            "hook[0].target",
        )

    def test_policyHookImport(self) -> None:
        """
        A policy hook that cannot be imported is refused, naming
        policy_hook, unless a policy given in code takes its place.
        """
        mapping = {"domain": "example.com", "policy_hook": "harbor.no_such_module:f"}
        self.assertRefused(mapping, "policy_hook")
        check(mapping, policy=lambda request: None)

    def test_submissionNeedsUsers(self) -> None:
        """
        A submission listener needs a users file or other cred checkers.
        """
        mapping = {"domain": "example.com", "submission_port": "2587", **self.tlsFiles()}
        error = self.assertRefused(mapping, "submission_port")
        self.assertIsInstance(error, Conflict)
        self.assertEqual(error.problem, "needs users to authenticate (--users-file, --auth, or authenticate= in code)")
        check(mapping, credCheckers=[object()])
        check({**mapping, "users_file": self.usersFile()})


NOBODY = Identity("nobody", 65534, 65534, frozenset({65534}))


class CheckForUserTests(SynchronousTestCase):
    """
    Tests for the checks made, as root, for the user twistd switches to
    (L{checkConfig}'s C{runAs}), on a fake file system for the Maildirs
    and real files to read.
    """

    def setUp(self) -> None:
        self.fs = FakeDirectories({"/srv": directory(0o755)})

    def addFile(self, path: str, mode: int) -> str:
        """
        Put the real file C{path} in the fake file system, with C{mode}, in
        directories anyone may search.
        """
        parent = os.path.dirname(path)
        while parent != "/":
            self.fs.paths.setdefault(parent, directory(0o755))
            parent = os.path.dirname(parent)
        self.fs.paths[path] = Status(FILE | mode, 0, 0)
        return path

    def mapping(self, **extra: Any) -> dict[str, Any]:
        return {"hostname": "mx.example", "domain": "example.com", "maildir": "/srv/mail", **extra}

    def assertRefused(self, mapping: dict[str, Any], setting: str, *fragments: str) -> None:
        config = Config.fromMapping(mapping)
        error = self.assertRaises(ConfigError, checkConfig, config, runAs=NOBODY, fs=self.fs)
        self.assertEqual(error.setting, setting)
        for fragment in (*fragments, "nobody (uid 65534, gid 65534)", "after twistd drops privileges"):
            self.assertIn(fragment, error.problem)

    def test_usable(self) -> None:
        """
        A Maildir root nobody can be given and files nobody can read pass,
        and nothing is changed by the check.
        """
        certificate, key = TestCA(self.mktemp()).issue()
        users = os.path.abspath(self.mktemp())
        setPassword(users, "alice", "secret")
        mapping = self.mapping(
            users_file=self.addFile(users, 0o644),
            tls_cert=self.addFile(os.path.abspath(certificate), 0o644),
            tls_key=self.addFile(os.path.abspath(key), 0o644),
        )
        checkConfig(Config.fromMapping(mapping), runAs=NOBODY, fs=self.fs)
        self.assertEqual(self.fs.calls, [])

    def test_maildirParentNotSearchable(self) -> None:
        """
        A Maildir root under a directory nobody cannot search is refused,
        naming maildir, the directory, the user and search permission.
        """
        self.fs.paths["/srv"] = directory(0o700)
        self.assertRefused(self.mapping(), "maildir", "/srv (owner root:root, mode 0700)", "search (x)")

    def test_maildirInsideRootNotUsable(self) -> None:
        """
        Each domain's Maildir (and its tmp, new, cur) is checked, not only
        the root.
        """
        self.fs.paths["/srv/mail"] = directory(0o700, 65534, 65534)
        self.fs.paths["/srv/mail/example.com"] = directory(0o755)
        self.assertRefused(self.mapping(), "maildir", "/srv/mail/example.com", "write (w)")

    def test_usersFileUnreadable(self) -> None:
        """
        A users file root can read but nobody cannot is refused, naming
        users_file, the file and read permission.
        """
        users = os.path.abspath(self.mktemp())
        setPassword(users, "alice", "secret")
        self.addFile(users, 0o600)
        self.assertRefused(self.mapping(users_file=users), "users_file", users, "no read (r) permission")

    def test_tlsKeyUnreadable(self) -> None:
        """
        A TLS key nobody cannot read is refused, naming tls_key; a
        certificate, tls_cert.
        """
        certificate, key = TestCA(self.mktemp()).issue()
        certificate, key = os.path.abspath(certificate), os.path.abspath(key)
        self.addFile(certificate, 0o644)
        self.addFile(key, 0o600)
        self.assertRefused(self.mapping(tls_cert=certificate, tls_key=key), "tls_key", key, "read (r)")
        self.addFile(key, 0o644)
        self.addFile(certificate, 0o600)
        self.assertRefused(self.mapping(tls_cert=certificate, tls_key=key), "tls_cert", certificate)

    def test_hookSpoolOnlyWithHooks(self) -> None:
        """
        The hook spool is checked when there are hooks, configured or given
        in code, and not otherwise.
        """
        self.fs.paths["/srv/mail"] = directory(0o700, 65534, 65534)
        self.fs.paths["/srv/mail/.hooks"] = directory(0o700)
        checkConfig(Config.fromMapping(self.mapping()), runAs=NOBODY, fs=self.fs)
        self.assertRefused(self.mapping(hook=[HOOK]), "maildir", "/srv/mail/.hooks")
        error = self.assertRaises(
            ConfigError, checkConfig, Config.fromMapping(self.mapping()), codeHooks=[object()], runAs=NOBODY, fs=self.fs
        )
        self.assertIn("/srv/mail/.hooks", error.problem)

    def test_notCheckedWithoutUser(self) -> None:
        """
        Without a user to switch to, the Maildirs are not looked at here.
        """
        self.fs.paths["/srv"] = directory(0o700)
        checkConfig(Config.fromMapping(self.mapping()), fs=self.fs)


class WorkingDirectoriesTests(SynchronousTestCase):
    """
    Tests for L{workingDirectories} and L{prepareForUser}.
    """

    def test_everyMaildirAndTheSpool(self) -> None:
        """
        Every domain's Maildir and its mailboxes' have tmp, new and cur; the
        spool its tmp, pending and dead, with hooks only.
        """
        config = Config.fromMapping(
            {
                "hostname": "mx.example",
                "maildir": "/m",
                "domains": {"a.example": {"mailboxes": ["bob"]}, "b.example": {}},
            }
        )
        maildirs = [
            path
            for maildir in ("/m/a.example", "/m/a.example/bob", "/m/b.example")
            for path in (maildir, f"{maildir}/tmp", f"{maildir}/new", f"{maildir}/cur")
        ]
        self.assertEqual(workingDirectories(config, False), [("/m", maildirs)])
        spool = ["/m/.hooks", "/m/.hooks/tmp", "/m/.hooks/pending", "/m/.hooks/claimed", "/m/.hooks/dead"]
        self.assertEqual(workingDirectories(config, True), [("/m", [*maildirs, *spool])])

    def test_spoolElsewhere(self) -> None:
        """
        A C{hook_spool} outside the Maildir root is a root of its own, made
        for the user with its parents made for root.
        """
        fs = FakeDirectories({"/srv": directory(0o755), "/var": directory(0o755)})
        config = Config.fromMapping(
            {"hostname": "mx.example", "domain": "example.com", "maildir": "/srv/mail", "hook_spool": "/var/spool/hooks"}
        )
        ((root, _), (spoolRoot, spool)) = workingDirectories(config, True)
        self.assertEqual((root, spoolRoot), ("/srv/mail", "/var/spool/hooks"))
        self.assertEqual(spool[0], "/var/spool/hooks")
        made = prepareForUser(config, NOBODY, True, fs)
        self.assertIn("/var/spool/hooks/claimed", made)
        self.assertEqual(fs.paths["/var/spool/hooks/pending"], directory(0o700, 65534, 65534))
        self.assertEqual(fs.paths["/var/spool/hooks"], directory(0o700, 65534, 65534))
        self.assertEqual(fs.paths["/var/spool"], directory(0o755))

    def test_prepareForUser(self) -> None:
        """
        Preparing makes the working directories for the user.
        """
        fs = FakeDirectories({"/srv": directory(0o755)})
        config = Config.fromMapping({"hostname": "mx.example", "domain": "example.com", "maildir": "/srv/mail"})
        made = prepareForUser(config, NOBODY, True, fs)
        ((_, directories),) = workingDirectories(config, True)
        self.assertEqual(made, ["/srv/mail", *directories])
        self.assertEqual(fs.paths["/srv/mail/.hooks/pending"], directory(0o700, 65534, 65534))
