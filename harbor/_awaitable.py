# -*- test-case-name: harbor.test.test_awaitable -*-
"""
What the user's code returns, as something MailHarbor can wait on.

A hook, a policy hook or an C{authenticate} callback may answer directly,
with a L{Deferred}, or with an awaitable (a coroutine, most often).  How an
awaitable runs depends on the program around MailHarbor:

 - under Twisted's asyncio reactor (an asyncio program embedding
   MailHarbor, C{examples/asyncio_app.py}), an asyncio event loop is running
   on the reactor's thread, and the code awaits asyncio things
   (C{asyncio.sleep}, queues, aiohttp): it runs as an asyncio task on that
   loop.  A L{Deferred} is awaited there as C{d.asFuture(loop)}.
 - under any other reactor, no asyncio loop runs, and a coroutine awaits
   L{Deferred}s: it runs with L{Deferred.fromCoroutine}.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn, TypeVar

from twisted.internet.defer import CancelledError, Deferred, maybeDeferred
from twisted.python.failure import Failure

T = TypeVar("T")


def _runningLoop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


async def _await(awaitable: Awaitable[T]) -> T:
    return await awaitable


def _cancelled(failure: Failure) -> NoReturn:
    """
    A cancelled task is a cancelled L{Deferred}, so that a time limit
    (L{Deferred.addTimeout}) reads it as a timeout, as for Twisted code.
    """
    failure.trap(asyncio.CancelledError)
    raise CancelledError()


def deferredFrom(result: object) -> object:
    """
    C{result}, with an awaitable made a L{Deferred} of its outcome (see the
    module's description for how it runs); anything else, a L{Deferred}
    included, as it is.
    """
    if isinstance(result, Deferred) or not inspect.isawaitable(result):
        return result
    loop = _runningLoop()
    if loop is not None:
        return Deferred.fromFuture(asyncio.ensure_future(result, loop=loop)).addErrback(_cancelled)
    coroutine = result if inspect.iscoroutine(result) else _await(result)
    return Deferred.fromCoroutine(coroutine)


def callUserCode(function: Callable[..., Any], *args: Any) -> Deferred[Any]:
    """
    Call the user's C{function}: its result, raised exception, L{Deferred}
    or awaitable, as a L{Deferred}.
    """
    return maybeDeferred(lambda: deferredFrom(function(*args)))
