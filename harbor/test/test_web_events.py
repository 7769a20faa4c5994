"""
Tests for the live updates (L{harbor.web.events}): one shared poll of the
Maildirs, filtered per viewer, as Server-Sent Events.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock, deferLater
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers
from twisted.web.test.requesthelper import DummyRequest

from harbor.test._appsupport import ADMIN, CSRF, WebTestCase, messageBytes, messageID
from harbor.web.base import Viewer, WebContext
from harbor.web.events import KEEPALIVE_SECONDS, Poller

NOW = 1732314178


class _Reactor(Clock):
    # A clock whose threads' results arrive at once.
    def callFromThread(self, f: Any, *args: Any, **kwargs: Any) -> None:
        f(*args, **kwargs)


class _SynchronousPool:
    # A thread pool that runs each call at once, or, when held, keeps it.
    def __init__(self) -> None:
        self.held: list[Any] = []
        self.hold = False
        self.calls = 0

    def callInThreadWithCallback(self, onResult: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        self.calls += 1
        if self.hold:
            self.held.append((onResult, f, args, kwargs))
            return
        try:
            result = f(*args, **kwargs)
        except BaseException:  # noqa: BLE001
            onResult(False, Failure())
        else:
            onResult(True, result)

    def release(self) -> None:
        # Run the calls held, as the threads would finish them.
        held, self.held = self.held, []
        for onResult, f, args, kwargs in held:
            onResult(True, f(*args, **kwargs))


def _request() -> Any:
    # A request as the poller sees one (DummyRequest is not a Request).
    return DummyRequest([b""])


def _changes(request: DummyRequest) -> list[bytes]:
    # What the stream carried besides "ready" and keepalives.
    return [chunk for chunk in request.written if chunk.startswith(b"event: change")]


class PollerTests(SynchronousTestCase):
    """
    The poller, driven by a fake clock and a synchronous thread pool.
    """

    def setUp(self) -> None:
        self.root = os.path.abspath(self.mktemp())
        for key in ("example.com", "example.net/bob"):
            for sub in ("tmp", "new", "cur"):
                os.makedirs(os.path.join(self.root, key, sub))
        self.clock = _Reactor()
        self.pool = _SynchronousPool()
        context = WebContext(self.root, "", (), self.clock, self.pool, self.clock.seconds)  # type: ignore[arg-type]
        self.poller = Poller(context)

    def drop(self, key: str, identifier: str) -> None:
        with open(os.path.join(self.root, key, "new", identifier), "wb") as f:
            f.write(messageBytes())

    def test_newMessageFilteredPerViewer(self) -> None:
        """
        A message dropped into new/ reaches the admin and not a viewer
        granted another mailbox.
        """
        admin, bob = _request(), _request()
        self.poller.subscribe(admin, ADMIN)
        self.poller.subscribe(bob, Viewer("bob", False, ("example.net/bob",), CSRF))
        self.drop("example.com", messageID(NOW, 1))
        self.clock.advance(1)
        self.assertEqual(len(_changes(admin)), 1)
        self.assertIn(b'"kind": "new"', _changes(admin)[0])
        self.assertTrue(_changes(admin)[0].startswith(b"event: change\ndata: "))
        self.assertEqual(_changes(bob), [])
        self.drop("example.net/bob", messageID(NOW, 2))
        self.clock.advance(1)
        self.assertEqual(len(_changes(bob)), 1)

    def test_readyOnceAfterALook(self) -> None:
        """
        A subscriber is told C{ready} once, when the first poll that began
        after it came has looked: so what arrived before that look is for
        it to fetch, and everything after reaches it as changes.
        """
        first = _request()
        self.pool.hold = True
        self.poller.subscribe(first, ADMIN)
        self.assertEqual(first.written, [])
        self.pool.release()
        self.assertEqual(first.written, [b"event: ready\ndata: {}\n\n"])
        second = _request()
        self.poller.subscribe(second, ADMIN)
        self.assertEqual(second.written, [])
        self.clock.advance(1)
        self.pool.release()
        self.assertEqual(second.written, [b"event: ready\ndata: {}\n\n"])
        self.drop("example.com", messageID(NOW, 1))
        self.clock.advance(1)
        self.pool.release()
        for request in (first, second):
            self.assertEqual(request.written.count(b"event: ready\ndata: {}\n\n"), 1)
            self.assertEqual(len(_changes(request)), 1)

    def test_keepaliveAndRemoval(self) -> None:
        """
        Subscribers get a keepalive comment every 15 s; when the last one
        goes, polling stops.
        """
        request = _request()
        self.poller.subscribe(request, ADMIN)
        self.assertTrue(self.poller.running)
        self.clock.advance(KEEPALIVE_SECONDS)
        self.assertIn(b": keepalive\n\n", request.written)
        request.processingFailed(Failure(ConnectionError("gone")))
        self.assertFalse(self.poller.running)
        calls = self.pool.calls
        self.clock.advance(10)
        self.assertEqual(self.pool.calls, calls)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_endsWithTheSession(self) -> None:
        """
        Once a viewer's session is over (logged out, expired), its stream
        is told nothing more and is finished, at the next change or
        keepalive, while another viewer's goes on.
        """
        going = [True]
        request, other = _request(), _request()
        self.poller.subscribe(request, Viewer("bob", False, ("example.net/bob",), CSRF, alive=lambda: going[0]))
        self.poller.subscribe(other, ADMIN)
        self.clock.advance(1)
        going[0] = False
        self.drop("example.net/bob", messageID(NOW, 1))
        self.clock.advance(1)
        self.assertEqual(_changes(request), [])
        self.assertEqual(request.finished, 1)
        self.assertEqual(len(_changes(other)), 1)
        self.assertTrue(self.poller.running)
        written = list(request.written)
        self.clock.advance(KEEPALIVE_SECONDS)
        self.assertIn(b": keepalive\n\n", other.written)
        self.assertEqual(request.written, written)

    def test_pollsNeverOverlap(self) -> None:
        """
        While one poll is running, the next is not started.
        """
        self.pool.hold = True
        self.poller.subscribe(_request(), ADMIN)
        self.clock.advance(1)
        self.clock.advance(1)
        self.clock.advance(1)
        self.assertEqual(len(self.pool.held), 1)

    def test_restartWhilePolling(self) -> None:
        """
        A poll still running when the last subscriber left does not make
        a second loop once another subscriber comes.
        """
        self.pool.hold = True
        first = _request()
        self.poller.subscribe(first, ADMIN)
        first.processingFailed(Failure(ConnectionError("gone")))
        self.poller.subscribe(_request(), ADMIN)
        self.assertEqual(len(self.pool.held), 2)
        self.pool.hold = False
        for onResult, f, args, kwargs in self.pool.held:
            onResult(True, f(*args, **kwargs))
        calls = self.pool.calls
        self.clock.advance(1)
        self.assertEqual(self.pool.calls, calls + 1)


class _Collect(Protocol):
    # Gathers a stream's bytes and says when something is in them.
    def __init__(self) -> None:
        self.data = b""
        self.waiting: list[tuple[bytes, Deferred[None]]] = []

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        for item in list(self.waiting):
            if item[0] in self.data:
                self.waiting.remove(item)
                item[1].callback(None)

    def waitFor(self, text: bytes) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        if text in self.data:
            d.callback(None)
        else:
            self.waiting.append((text, d))
        return d


class EventStreamTests(WebTestCase):
    """
    The stream over a real Site, read as it arrives.
    """

    @inlineCallbacks
    def test_stream(self) -> Any:
        """
        A message dropped into new/ by plain file operations shows as a
        "new" event, its rename into cur/ with :2,S as "seen".
        """
        self.maildir("example.com")
        response = yield self.agent.request(b"GET", (self.base + "/api/v1/events").encode(), Headers({}))
        self.assertEqual(response.headers.getRawHeaders(b"content-type"), [b"text/event-stream; charset=utf-8"])
        stream = _Collect()
        response.deliverBody(stream)
        self.addCleanup(lambda: stream.transport.stopProducing() if stream.transport else None)  # type: ignore[attr-defined]
        yield stream.waitFor(b"retry: 2000\n\n")
        # One poll made the baseline before the message arrives.
        yield deferLater(self.reactor, 1.5, lambda: None)
        identifier = messageID(NOW, 1)
        new = os.path.join(self.root, "example.com", "new", identifier)
        temporary = os.path.join(self.root, "example.com", "tmp", identifier)
        with open(temporary, "wb") as f:
            f.write(messageBytes())
        os.rename(temporary, new)
        yield stream.waitFor(b'"kind": "new", "mailbox": "example.com", "id": "' + identifier.encode())
        os.rename(new, os.path.join(self.root, "example.com", "cur", identifier + ":2,S"))
        yield stream.waitFor(b'"kind": "seen"')
