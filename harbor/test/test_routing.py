"""
Tests for routing: mailboxes, aliases, catch-all targets, sub-addressing
and folder rules, from the configuration to the files on disk.
"""

import os

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from harbor._syntax import ConfigError
from harbor.address import parsePath
from harbor.config import Config
from harbor.routing import Accept, FolderRule, RecipientPolicy, Reject, subaddressFolder
from harbor.test._support import DeferredThreads, SMTPDriver, files, makeDeliverer

ROUTED = {
    "domain": ["example.com"],
    "domains": {
        "example.org": {
            "mailboxes": ["alice", "bob"],
            "aliases": {"info": ["alice", "bob"], "sales": "bob"},
            "catch_all": "reject",
            "subaddress_folders": True,
            "rules": [
                {"header": "List-Id", "contains": "python-dev", "folder": "Lists.python"},
                {"sender": "@bank.example", "folder": "Money"},
                {"recipient": "bob@", "folder": "Bob"},
            ],
        },
        "example.net": {"catch_all": "everyone", "subaddress_delimiter": "-"},
    },
}


class RoutingConfigTests(SynchronousTestCase):
    """
    Parsing the routing settings.
    """

    def test_parsed(self) -> None:
        """
        Mailboxes, aliases, catch-all, sub-addressing and rules are read.
        """
        config = Config.fromMapping(ROUTED)
        org = config.domains[1]
        self.assertEqual(org.mailboxes, frozenset({"alice", "bob"}))
        self.assertEqual(dict(org.aliases), {"info": ("alice", "bob"), "sales": ("bob",)})
        self.assertEqual(org.catchAll, "reject")
        self.assertTrue(org.subaddressFolders)
        self.assertEqual(org.rules[0], FolderRule("header", "List-Id", "python-dev", "Lists.python"))
        self.assertEqual(org.rules[1], FolderRule("sender", None, "@bank.example", "Money"))
        self.assertEqual(config.domains[2].mailboxPaths(), ["example.net", "example.net/everyone"])
        self.assertEqual(
            org.mailboxPaths(), ["example.org", "example.org/alice", "example.org/bob"]
        )

    def test_badNames(self) -> None:
        """
        Mailbox and folder names that could escape the Maildir, or collide
        with its own directories, are refused, naming the setting.
        """
        for table, setting in [
            ({"mailboxes": ["../x"]}, "domains.example.org.mailboxes"),
            ({"mailboxes": ["new"]}, "domains.example.org.mailboxes"),
            ({"aliases": {"a": ["Alice"]}}, "domains.example.org.aliases.a"),
            ({"aliases": {"a": []}}, "domains.example.org.aliases.a"),
            ({"catch_all": ".hidden"}, "domains.example.org.catch_all"),
            ({"rules": [{"sender": "x", "folder": "../etc"}]}, "domains.example.org.rules[0].folder"),
            ({"rules": [{"sender": "x", "header": "y", "folder": "F"}]}, "domains.example.org.rules[0]"),
            ({"rules": [{"header": "List-Id", "folder": "F"}]}, "domains.example.org.rules[0].contains"),
            ({"subaddress_delimiter": "ab"}, "domains.example.org.subaddress_delimiter"),
        ]:
            error = self.assertRaises(ConfigError, Config.fromMapping, {"domains": {"example.org": table}})
            self.assertEqual(error.setting, setting, table)


class RoutingPolicyTests(SynchronousTestCase):
    """
    Where L{RecipientPolicy} sends each address.
    """

    def setUp(self) -> None:
        self.policy = RecipientPolicy(Config.fromMapping(ROUTED).domains)

    def decide(self, address: str) -> tuple[Accept, ...] | Reject:
        return self.policy.decide(parsePath(f"<{address}>"))

    def accepted(self, address: str) -> tuple[Accept, ...]:
        """
        The decision for C{address}, which must accept it.
        """
        decision = self.decide(address)
        assert isinstance(decision, tuple), decision
        return decision

    def refused(self, address: str) -> Reject:
        """
        The decision for C{address}, which must refuse it.
        """
        decision = self.decide(address)
        assert isinstance(decision, Reject), decision
        return decision

    def test_mailboxAndAlias(self) -> None:
        """
        A mailbox address goes to its mailbox; an alias to each of its
        mailboxes.
        """
        self.assertEqual(self.decide("Alice@example.org"), (Accept("example.org/alice", "Alice@example.org"),))
        self.assertEqual(
            [a.mailbox for a in self.accepted("info@example.org")],
            ["example.org/alice", "example.org/bob"],
        )

    def test_catchAllTargets(self) -> None:
        """
        catch_all = "reject" refuses unrouted addresses with 550 5.1.1 (but
        not postmaster); a mailbox catch-all collects them.
        """
        self.assertEqual(self.refused("nobody@example.org").code, 550)
        self.assertEqual(self.accepted("postmaster@example.org")[0].mailbox, "example.org")
        self.assertEqual(
            self.decide("whoever@example.net"), (Accept("example.net/everyone", "whoever@example.net"),)
        )

    def test_subaddress(self) -> None:
        """
        user+tag reaches user's mailbox, into the tag's folder when enabled;
        the delimiter is configurable.
        """
        self.assertEqual(
            self.decide("bob+news@example.org"), (Accept("example.org/bob", "bob+news@example.org", "news"),)
        )
        self.assertEqual(self.accepted("sales+x@example.org")[0].mailbox, "example.org/bob")
        self.assertEqual(self.accepted("x-y@example.net")[0].folder, None)

    def test_badTagsFallBackToInbox(self) -> None:
        """
        A tag that is not a plain folder name (traversal, dots, length)
        leaves the mail in the inbox.
        """
        for tag in ["..", ".hidden", "a..b", "a/b", "x" * 65, "a.b.c.d.e.f.g.h.i"]:
            self.assertIsNone(subaddressFolder(tag), tag)
        for local in ['"bob+.."', '"bob+../../etc"', '"bob+x."', '"bob+a b"', '"bob+a/b"']:
            [accept] = self.accepted(f"{local}@example.org")
            self.assertEqual(accept.mailbox, "example.org/bob")
            self.assertIsNone(accept.folder, local)


class RoutedDeliveryTests(SynchronousTestCase):
    """
    Routed mail on disk, through the protocol.
    """

    def setUp(self) -> None:
        self.root = self.mktemp()
        self.threads = DeferredThreads()
        self.deliverer, self.store = makeDeliverer(
            self.root, list(Config.fromMapping(ROUTED).domains), runInThread=self.threads, clock=Clock()
        )
        for domain in Config.fromMapping(ROUTED).domains:
            for mailbox in domain.mailboxPaths():
                self.store.create(mailbox)
        self.smtp = SMTPDriver(self.deliverer)
        self.smtp.send(b"EHLO c\r\n")

    def send(self, sender: bytes, recipients: list[bytes], body: bytes) -> bytes:
        commands = b"MAIL FROM:<" + sender + b">\r\n"
        commands += b"".join(b"RCPT TO:<" + r + b">\r\n" for r in recipients)
        self.smtp.send(commands + b"DATA\r\n" + body + b".\r\n")
        self.threads.runAll()
        return self.smtp.take()

    def test_aliasFansOut(self) -> None:
        """
        Mail to an alias is stored in each of its mailboxes.
        """
        self.send(b"s@x.org", [b"info@example.org"], b"Subject: hi\r\n\r\nx\r\n")
        self.assertEqual(
            (len(files(self.root, "example.org", "alice", "new")), len(files(self.root, "example.org", "bob", "new"))),
            (1, 1),
        )

    def test_headerRuleWhileStreaming(self) -> None:
        """
        A List-Id rule files the message into its Maildir++ folder, made on
        first use with the maildirfolder marker; other mail stays in the
        inbox.
        """
        self.send(b"s@x.org", [b"alice@example.org"], b"List-Id: <python-dev.python.org>\r\nSubject: s\r\n\r\nbody\r\n")
        self.send(b"s@x.org", [b"alice@example.org"], b"Subject: plain\r\n\r\nbody\r\n")
        folder = os.path.join(self.root, "example.org", "alice", ".Lists.python")
        self.assertEqual(len(files(self.root, "example.org", "alice", ".Lists.python", "new")), 1)
        self.assertTrue(os.path.exists(os.path.join(folder, "maildirfolder")))
        self.assertEqual(len(files(self.root, "example.org", "alice", "new")), 1)

    def test_senderAndRecipientRules(self) -> None:
        """
        Sender and recipient rules choose folders per copy.
        """
        self.send(b"alerts@bank.example", [b"alice@example.org"], b"Subject: s\r\n\r\nb\r\n")
        self.send(b"s@x.org", [b"bob@example.org"], b"Subject: s\r\n\r\nb\r\n")
        self.assertEqual(len(files(self.root, "example.org", "alice", ".Money", "new")), 1)
        self.assertEqual(len(files(self.root, "example.org", "bob", ".Bob", "new")), 1)

    def test_tagFolder(self) -> None:
        """
        user+tag mail lands in the tag's folder.
        """
        self.send(b"s@x.org", [b"bob+news@example.org"], b"Subject: s\r\n\r\nb\r\n")
        self.assertEqual(len(files(self.root, "example.org", "bob", ".news", "new")), 1)
