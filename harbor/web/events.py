# -*- test-case-name: harbor.test.test_web_events -*-
"""
C{/api/v1/events}: live updates as Server-Sent Events.

One L{Poller} looks at the Maildirs (L{harbor.store.changes.snapshot}, in
the thread pool) every second while anyone is listening, so mail moved by
Dovecot or mutt shows as well as our own deliveries; each subscriber gets
only the changes of the Maildirs its viewer may read.

A new subscriber is sent C{event: ready} once a poll has looked after it
came: from then on every change reaches it, and what arrived between its
page and that look, it fetches (app.js asks for the first page again).
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from harbor.store.changes import Change, Snapshot, diff, snapshot
from harbor.web.base import Viewer, WebContext, viewerOf

__all__ = ["KEEPALIVE_SECONDS", "POLL_SECONDS", "EventsResource", "Poller"]

POLL_SECONDS = 1.0
KEEPALIVE_SECONDS = 15.0


class Poller:
    """
    The one poll of the Maildirs shared by every subscriber.

    It runs only while there are subscribers; L{LoopingCall} waits for the
    Deferred of one poll before it schedules the next, so polls never
    overlap.
    """

    _log = Logger()

    def __init__(self, context: WebContext) -> None:
        self._context = context
        self._subscribers: dict[Request, Viewer] = {}
        # Those not yet told that the poll has looked since they came.
        self._waiting: set[Request] = set()
        self._previous: Snapshot | None = None
        # Each start of polling is a new generation, with new loops: a poll
        # still running from before the last subscriber left is ignored
        # when it ends, so it never makes two loops at once.
        self._generation = 0
        self._poll, self._keepalive = self._loops()

    def _loops(self) -> tuple[LoopingCall, LoopingCall]:
        poll = LoopingCall(self._look, self._generation)
        poll.clock = self._context.reactor
        keepalive = LoopingCall(self._ping)
        keepalive.clock = self._context.reactor
        return poll, keepalive

    @property
    def running(self) -> bool:
        """
        Whether it is polling.
        """
        return self._poll.running

    def subscribe(self, request: Request, viewer: Viewer) -> None:
        """
        Send C{request} the changes C{viewer} may read, until it finishes.
        """
        self._subscribers[request] = viewer
        self._waiting.add(request)
        request.notifyFinish().addBoth(lambda _: self.unsubscribe(request))
        if not self._poll.running:
            self._previous = None
            self._generation += 1
            self._poll, self._keepalive = self._loops()
            self._poll.start(POLL_SECONDS, now=True).addErrback(lambda f: self._log.failure("polling failed", f))
            self._keepalive.start(KEEPALIVE_SECONDS, now=False)

    def unsubscribe(self, request: Request) -> None:
        """
        Stop sending to C{request}; stop polling when no one listens.
        """
        self._subscribers.pop(request, None)
        self._waiting.discard(request)
        if not self._subscribers and self._poll.running:
            self._poll.stop()
            self._keepalive.stop()
            self._previous = None

    def _look(self, generation: int) -> Deferred[None]:
        """
        One poll: a snapshot in the thread pool, then its changes sent.  A
        poll of an earlier generation (begun before the last subscriber
        left and polling stopped, ending after it started again) is
        dropped, so that a late result never becomes the new baseline.
        """
        previous = self._previous
        d = self._context.inThread(snapshot, self._context.maildir, None, previous)

        def compare(now: Snapshot) -> None:
            if generation != self._generation:
                return
            self._previous = now
            if previous is not None:
                self.publish(diff(previous, now))
            self._ready()

        def failed(failure: Any) -> None:
            self._log.failure("looking at the Maildirs failed", failure)

        return d.addCallback(compare).addErrback(failed)

    def publish(self, changes: list[Change]) -> None:
        """
        Send each subscriber the changes its viewer may read.
        """
        for request, viewer in list(self._subscribers.items()):
            if self._ended(request, viewer):
                continue
            chunk = b"".join(
                b"event: change\ndata: " + json.dumps(change.asJSON()).encode("utf-8") + b"\n\n"
                for change in changes
                if viewer.mayRead(change.mailbox)
            )
            if chunk:
                request.write(chunk)

    def _ready(self) -> None:
        """
        Tell those who came since the poll before this one that it has
        looked: every change from now on reaches them, so what arrived
        before (after their page was made, before the poll's first look)
        is for them to fetch, once (C{event: ready}).
        """
        waiting, self._waiting = self._waiting, set()
        for request in waiting:
            viewer = self._subscribers.get(request)
            if viewer is not None and not self._ended(request, viewer):
                request.write(b"event: ready\ndata: {}\n\n")

    def _ping(self) -> None:
        for request, viewer in list(self._subscribers.items()):
            if not self._ended(request, viewer):
                request.write(b": keepalive\n\n")

    def _ended(self, request: Request, viewer: Viewer) -> bool:
        """
        End the stream of a viewer whose session is over (logged out or
        expired): it is told nothing more, and the browser's reconnection
        meets the login.  So a stream ends within L{KEEPALIVE_SECONDS} of
        its session, and before any change is sent after it.
        """
        if viewer.alive():
            return False
        self.unsubscribe(request)
        request.finish()
        return True


class EventsResource(Resource):
    """
    The event stream of one subscriber.
    """

    isLeaf = True

    def __init__(self, context: WebContext, poller: Poller) -> None:
        super().__init__()
        self._poller = poller

    def render_GET(self, request: Request) -> object:
        """
        Start the stream and subscribe it.
        """
        request.setHeader(b"Content-Type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"Cache-Control", b"no-store")
        request.write(b"retry: 2000\n\n")
        self._poller.subscribe(request, viewerOf(request))
        return NOT_DONE_YET
