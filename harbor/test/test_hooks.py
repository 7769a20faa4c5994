"""
Tests for the L{harbor.hooks} package as a whole: its public names, and
turning configured hooks into hook objects (L{harbor.hooks.loading},
L{harbor.hooks.kinds.loadHooks}).

Each module's own tests are in C{test_hookevents}, C{test_hookconfig},
C{test_hookkinds}, C{test_hookrunner} and C{test_hookcli}; the command
and webhook hooks, and what importing the package costs, are tested with
real processes and sockets in the top-level C{tests/}.
"""

from __future__ import annotations

import os
import sys

from zope.interface.verify import verifyObject

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from harbor._syntax import ConfigError
from harbor.hooks.config import RetryPolicy, parseHooks
from harbor.hooks.events import (
    HookFailed,
    MessageGone,
    NewMessage,
    PermanentHookFailure,
)
from harbor.hooks.kinds import CommandHook, IHook, PythonHook, WebhookHook, loadHooks
from harbor.hooks.loading import checkHooks, defaultHookNames
from harbor.test._support import runSynchronously


def exampleHandler(event: NewMessage) -> None:
    """
    A python hook target for L{loadHooks} to import.
    """


NOT_CALLABLE = 42


class DefaultHookNamesTests(SynchronousTestCase):
    """
    Tests for L{defaultHookNames}, the names of hooks given in code.
    """

    def test_validAndDistinct(self) -> None:
        """
        Lambdas, private functions and nameless callables get valid hook
        names, distinct from each other, so each can be a PythonHook.
        """

        def _private(event: NewMessage) -> None:
            pass

        functions = [lambda e: None, lambda e: None, _private, object()]
        names = defaultHookNames(functions)
        self.assertEqual(names, ["lambda-", "lambda--1", "private", "hook"])
        for function, name in zip(functions, names):
            # object() stands for a nameless callable: only its name matters here.
            self.assertEqual(PythonHook(function, name).name, name)  # type: ignore[arg-type]

    def test_namesTakenElsewhere(self) -> None:
        """
        A default name steers clear of the names hooks already have (given
        in code or in the configuration file).
        """

        def stored(event: NewMessage) -> None:
            pass

        self.assertEqual(defaultHookNames([stored, stored], ["stored", "stored-0"]), ["stored-1", "stored-2"])


class LoadHooksTests(SynchronousTestCase):
    """
    Tests for L{loadHooks} and L{checkHooks}.
    """

    def test_buildsEachKind(self) -> None:
        """
        Each configured kind becomes its hook, importing python targets and
        finding command programs; every hook provides L{IHook}.
        """
        self.patch(os, "environ", {**os.environ, "PATH": os.path.dirname(sys.executable)})
        configs = parseHooks(
            [
                {"name": "p", "kind": "python", "target": "harbor.test.test_hooks:exampleHandler"},
                {"name": "c", "kind": "command", "command": [os.path.basename(sys.executable), "-c", ""]},
                {"name": "w", "kind": "webhook", "url": "http://127.0.0.1:9/", "max_in_flight": 2},
            ]
        )
        hooks = loadHooks(configs, Clock(), runSynchronously)
        self.assertEqual([type(h) for h in hooks], [PythonHook, CommandHook, WebhookHook])
        self.assertEqual([h.name for h in hooks], ["p", "c", "w"])
        self.assertEqual(hooks[2].maxInFlight, 2)
        for hook in hooks:
            self.assertTrue(verifyObject(IHook, hook))

    def test_importErrorNamesTarget(self) -> None:
        """
        A python target that cannot be imported is a L{ConfigError} naming
        C{hook[N].target}, whether the module is missing, lacks the
        function, or what it names is not callable.
        """
        for target in (
            "harbor.no_such_module:handler",
            "harbor.test.test_hooks:noSuchHandler",
            "harbor.test.test_hooks:NOT_CALLABLE",
        ):
            configs = parseHooks(
                [
                    {"name": "ok", "kind": "python", "target": "harbor.test.test_hooks:exampleHandler"},
                    {"name": "bad", "kind": "python", "target": target},
                ]
            )
            error = self.assertRaises(ConfigError, loadHooks, configs, Clock(), runSynchronously)
            self.assertEqual(error.setting, "hook[1].target")
            error = self.assertRaises(ConfigError, checkHooks, configs)
            self.assertEqual(error.setting, "hook[1].target")

    def test_missingProgramNamesCommand(self) -> None:
        """
        A command whose program does not exist stops the start with a
        L{ConfigError} naming C{hook[N].command}.
        """
        configs = parseHooks([{"name": "c", "kind": "command", "command": ["no-such-program-xyz"]}])
        error = self.assertRaises(ConfigError, checkHooks, configs)
        self.assertEqual(error.setting, "hook[0].command")
        configs = parseHooks([{"name": "c", "kind": "command", "command": ["/nonexistent/prog"]}])
        error = self.assertRaises(ConfigError, loadHooks, configs, Clock(), runSynchronously)
        self.assertEqual(error.setting, "hook[0].command")

    def test_badHookName(self) -> None:
        """
        Hooks built in code need a name that can name a file.
        """
        self.assertRaises(ValueError, PythonHook, exampleHandler, "../etc")


class PackageTests(SynchronousTestCase):
    """
    Tests for the L{harbor.hooks} package itself: its public names.  What
    importing its light modules costs is tested in a new interpreter, in
    the top-level C{tests/test_hook_imports.py}.
    """

    def test_publicNames(self) -> None:
        """
        Each name in C{harbor.hooks.__all__} can be imported from
        C{harbor.hooks}, and is the object its own module defines.
        """
        import harbor.hooks

        homes = {
            "CommandHook": CommandHook,
            "HookFailed": HookFailed,
            "IHook": IHook,
            "MessageGone": MessageGone,
            "NewMessage": NewMessage,
            "PermanentHookFailure": PermanentHookFailure,
            "PythonHook": PythonHook,
            "RetryPolicy": RetryPolicy,
            "WebhookHook": WebhookHook,
        }
        self.assertEqual(sorted(harbor.hooks.__all__), sorted(homes))
        for name, value in homes.items():
            self.assertIs(getattr(harbor.hooks, name), value)

    def test_unknownName(self) -> None:
        """
        A name C{harbor.hooks} does not offer raises L{AttributeError}, as
        for any module.
        """
        import harbor.hooks

        self.assertRaises(AttributeError, getattr, harbor.hooks, "HookSpool")
