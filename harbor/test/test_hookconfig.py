"""
Tests for L{harbor.hooks.config}: the C{[[hook]]} tables of the
configuration file.
"""

from __future__ import annotations

import tomllib

from twisted.trial.unittest import SynchronousTestCase

from harbor._syntax import ConfigError
from harbor.hooks.config import HookConfig, RetryPolicy, parseHooks

# The commented [[hook]] block proposed for etc/mailharbor.toml, without
# its comment marks: it must keep parsing.
EXAMPLE_HOOKS = """
[[hook]]
name = "notify"
kind = "python"
target = "mypackage.hooks:newMessage"
thread = false

[[hook]]
name = "archive"
kind = "command"
command = ["/usr/local/bin/archive-mail", "--quiet"]
environment = { ARCHIVE_DIR = "/srv/archive" }
timeout = 60

[[hook]]
name = "crm"
kind = "webhook"
url = "https://hooks.example.com/mail"
format = "json"
headers = { Authorization = "Bearer change-me" }
timeout = 60
max_in_flight = 4
max_pending = 10000
attempts = 8
backoff = 30
max_backoff = 3600
"""


class ParseHooksTests(SynchronousTestCase):
    """
    Tests for L{parseHooks}.
    """

    def assertConfigError(self, tables: object, setting: str) -> ConfigError:
        """
        Parsing C{tables} raises L{ConfigError} naming C{setting}.
        """
        error: ConfigError = self.assertRaises(ConfigError, parseHooks, tables)
        self.assertEqual(error.setting, setting, str(error))
        return error

    def test_exampleParses(self) -> None:
        """
        The example block for the configuration file gives one hook of
        each kind, with its settings.
        """
        python, command, webhook = parseHooks(tomllib.loads(EXAMPLE_HOOKS)["hook"])
        self.assertEqual(
            python, HookConfig(name="notify", kind="python", target="mypackage.hooks:newMessage")
        )
        self.assertEqual(command.argv, ("/usr/local/bin/archive-mail", "--quiet"))
        self.assertEqual(command.environment, (("ARCHIVE_DIR", "/srv/archive"),))
        self.assertEqual(webhook.url, "https://hooks.example.com/mail")
        self.assertEqual(webhook.headers, (("Authorization", "Bearer change-me"),))
        self.assertEqual(webhook.retry, RetryPolicy(8, 30.0, 3600.0))
        self.assertEqual(webhook.setting, "hook[2]")
        self.assertEqual(webhook.maxPending, 10_000)

    def test_defaults(self) -> None:
        """
        Unset settings take their documented defaults.
        """
        (config,) = parseHooks([{"name": "w", "kind": "webhook", "url": "http://127.0.0.1/x"}])
        self.assertEqual(
            (
                config.format,
                config.timeout,
                config.maxInFlight,
                config.maxPending,
                config.attempts,
                config.backoff,
                config.maxBackoff,
            ),
            ("json", 60.0, 4, 10_000, 8, 30.0, 3600.0),
        )
        self.assertEqual(parseHooks(None), ())

    def test_errorsNameTheSetting(self) -> None:
        """
        Each mistake is reported against the setting at fault, by its index
        in the array of tables.
        """
        ok = {"name": "a", "kind": "command", "command": ["/bin/true"]}
        self.assertConfigError([ok, {"name": "b", "kind": "webhook"}], "hook[1].url")
        self.assertConfigError([{"name": "w", "kind": "webhook", "url": "ftp://x/"}], "hook[0].url")
        self.assertConfigError([{"name": "a", "kind": "smtp"}], "hook[0].kind")
        self.assertConfigError([{"kind": "command", "command": ["x"]}], "hook[0].name")
        self.assertConfigError([{"name": "a b", "kind": "command", "command": ["x"]}], "hook[0].name")
        self.assertConfigError([ok, ok], "hook[1].name")
        self.assertConfigError([{**ok, "url": "http://x/"}], "hook[0].url")
        self.assertConfigError([{**ok, "command": "rm -rf /"}], "hook[0].command")
        self.assertConfigError([{**ok, "command": []}], "hook[0].command")
        self.assertConfigError([{**ok, "environment": {"MAILHARBOR_ID": "x"}}], "hook[0].environment")
        self.assertConfigError([{**ok, "attempts": 0}], "hook[0].attempts")
        self.assertConfigError([{**ok, "attempts": 2.5}], "hook[0].attempts")
        self.assertConfigError([{**ok, "timeout": "60"}], "hook[0].timeout")
        self.assertConfigError([{**ok, "max_pending": 0}], "hook[0].max_pending")
        self.assertConfigError([{**ok, "max_pending": 1.5}], "hook[0].max_pending")
        self.assertConfigError([{**ok, "backoff": 60, "max_backoff": 10}], "hook[0].max_backoff")
        self.assertConfigError([{"name": "p", "kind": "python", "target": "no colon"}], "hook[0].target")
        self.assertConfigError(
            [{"name": "w", "kind": "webhook", "url": "http://x/", "format": "xml"}], "hook[0].format"
        )
        self.assertConfigError(
            [{"name": "w", "kind": "webhook", "url": "http://x/", "headers": {"X": "a\r\nB: c"}}],
            "hook[0].headers",
        )

    def test_singleTableRefused(self) -> None:
        """
        C{[hook]} (one table) instead of C{[[hook]]} is explained.
        """
        error = self.assertConfigError({"name": "a", "kind": "python"}, "hook")
        self.assertIn("[[hook]]", error.problem)
