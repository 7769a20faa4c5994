"""
Tests for L{harbor._awaitable}: the user's answers, awaitables included,
as L{Deferred}s, run by Twisted or, where an asyncio loop runs, by asyncio.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.trial.unittest import SynchronousTestCase

from harbor._awaitable import callUserCode, deferredFrom


def insideAsyncio(body: Callable[[], Awaitable[Any]]) -> Any:
    """
    Run C{body} on a fresh asyncio loop, as Twisted's asyncio reactor runs
    its callbacks, and return its result.
    """
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(body())
    finally:
        loop.close()


async def settle(d: Deferred[Any]) -> list[Any]:
    """
    Let the asyncio loop run until C{d} has a result; the result.
    """
    results: list[Any] = []
    d.addBoth(results.append)
    for _ in range(100):
        if results:
            break
        await asyncio.sleep(0)
    return results


class WithoutAsyncioTests(SynchronousTestCase):
    """
    Under a reactor that is not asyncio's, coroutines await L{Deferred}s.
    """

    def test_plainValues(self) -> None:
        """
        A value, or a L{Deferred}, is given back as it is.
        """
        d: Deferred[int] = succeed(3)
        self.assertIs(deferredFrom(d), d)
        self.assertEqual(deferredFrom(True), True)

    def test_coroutineAwaitsDeferreds(self) -> None:
        """
        A coroutine runs with L{Deferred.fromCoroutine}: what it awaits
        is a L{Deferred}.
        """
        pending: Deferred[int] = Deferred()

        async def twice() -> int:
            return 2 * await pending

        result = callUserCode(twice)
        self.assertNoResult(result)
        pending.callback(21)
        self.assertEqual(self.successResultOf(result), 42)

    def test_raising(self) -> None:
        """
        A function that raises gives a failed L{Deferred}.
        """
        self.failureResultOf(callUserCode(lambda: 1 / 0), ZeroDivisionError)


class UnderAsyncioTests(SynchronousTestCase):
    """
    Where an asyncio loop runs (Twisted's asyncio reactor), coroutines are
    asyncio tasks.
    """

    def test_awaitsAsyncio(self) -> None:
        """
        A coroutine that awaits asyncio things (a sleep, a queue) runs to
        its end, and its result is the L{Deferred}'s.
        """
        queue: asyncio.Queue[str] = asyncio.Queue()

        async def consume() -> str:
            await asyncio.sleep(0)
            return await queue.get()

        async def body() -> list[Any]:
            d = callUserCode(consume)
            await queue.put("hello")
            return await settle(d)

        self.assertEqual(insideAsyncio(body), ["hello"])

    def test_failure(self) -> None:
        """
        A coroutine that raises fails the L{Deferred} with its exception.
        """

        async def broken() -> None:
            await asyncio.sleep(0)
            raise LookupError("x")

        async def body() -> list[Any]:
            return await settle(callUserCode(broken))

        [failure] = insideAsyncio(body)
        self.assertTrue(failure.check(LookupError))

    def test_cancelled(self) -> None:
        """
        Cancelling the L{Deferred}, as a time limit does, cancels the
        asyncio task, and the L{Deferred} fails as a cancelled Twisted one
        does.
        """
        cancelled: list[bool] = []

        async def forever() -> None:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.append(True)
                raise

        async def body() -> list[Any]:
            d = callUserCode(forever)
            await asyncio.sleep(0)
            d.cancel()
            results = await settle(d)
            await asyncio.sleep(0)
            return results

        [failure] = insideAsyncio(body)
        self.assertTrue(failure.check(CancelledError), failure)
        self.assertEqual(cancelled, [True])
