"""
Tests for L{harbor.hooks.kinds}: the python hook, on a L{Clock}.

The command and webhook hooks start processes and open sockets, so their
tests are in the top-level C{tests/test_hook_kinds.py}.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from harbor.hooks.events import HookFailed, NewMessage
from harbor.hooks.kinds import PythonHook
from harbor.test._hooksupport import storeMessage


class PythonHookTests(SynchronousTestCase):
    """
    Tests for L{PythonHook}.
    """

    def setUp(self) -> None:
        self.event = storeMessage(self)

    def test_plainValue(self) -> None:
        """
        A function returning a plain value succeeds and is given the event.
        """
        seen: list[NewMessage] = []
        hook = PythonHook(seen.append, "p")
        self.successResultOf(hook.run(self.event))
        self.assertEqual(seen, [self.event])

    def test_deferred(self) -> None:
        """
        A function returning a L{Deferred} succeeds or fails with it.
        """
        d: Deferred[None] = Deferred()
        result = PythonHook(lambda event: d, "p").run(self.event)
        self.assertNoResult(result)
        d.errback(HookFailed("no"))
        self.failureResultOf(result, HookFailed)

    def test_coroutine(self) -> None:
        """
        An C{async def} function is run as a coroutine awaiting
        L{Deferred}s.
        """
        gate: Deferred[str] = Deferred()
        seen = []

        async def handler(event: NewMessage) -> None:
            seen.append(await gate)

        result = PythonHook(handler, "p").run(self.event)
        self.assertNoResult(result)
        gate.callback("opened")
        self.successResultOf(result)
        self.assertEqual(seen, ["opened"])

    def test_raising(self) -> None:
        """
        A function that raises fails the call; nothing propagates.
        """
        def handler(event: NewMessage) -> None:
            raise ZeroDivisionError()

        self.failureResultOf(PythonHook(handler, "p").run(self.event), ZeroDivisionError)

    def test_timeout(self) -> None:
        """
        A call running past the timeout is cancelled and fails as
        L{HookFailed}.
        """
        clock = Clock()
        cancelled: list[Deferred[object]] = []
        hook = PythonHook(
            lambda event: Deferred(cancelled.append), "p", timeout=5, reactor=clock
        )
        result = hook.run(self.event)
        clock.advance(4.9)
        self.assertNoResult(result)
        clock.advance(0.1)
        self.assertIn("within 5s", str(self.failureResultOf(result, HookFailed).value))
        self.assertEqual(len(cancelled), 1)

    def test_inThread(self) -> None:
        """
        With C{runInThread} the function goes through it, off the reactor
        thread.
        """
        ran = []

        def runInThread(f: Callable[[], Any]) -> Deferred[Any]:
            ran.append(f)
            return maybeDeferred(f)

        seen: list[NewMessage] = []
        self.successResultOf(PythonHook(seen.append, "p", runInThread=runInThread).run(self.event))
        self.assertEqual((len(ran), seen), (1, [self.event]))
