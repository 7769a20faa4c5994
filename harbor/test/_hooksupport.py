# -*- test-case-name: harbor.test.test_hookevents -*-
"""
Test helpers shared by the tests of L{harbor.hooks}, here and in the
top-level C{tests/}: a stored message and its L{NewMessage}, as the
delivery would describe it, and a hook whose outcomes a test scripts.
"""

from __future__ import annotations

import os

from zope.interface import implementer

from twisted.internet.defer import Deferred, fail, succeed
from twisted.trial.unittest import SynchronousTestCase

from harbor.hooks.config import RetryPolicy
from harbor.hooks.events import NewMessage
from harbor.hooks.kinds import IHook

NOW = 1_700_000_000.0
MESSAGE = (
    b"Return-Path: <sender@example.org>\n"
    b"Delivered-To: alice@example.com\n"
    b"From: Sender <sender@example.org>\n"
    b"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\n"
    b"\n"
    b"Hello Alice,\n\x00\xff binary-ish bytes survive\n"
)


def storeMessage(testCase: SynchronousTestCase, data: bytes = MESSAGE, count: int = 1) -> NewMessage:
    """
    Put a message in a fresh Maildir's C{new/} as the server would, and
    describe it as the delivery would.
    """
    root = os.path.abspath(testCase.mktemp())
    maildir = os.path.join(root, "example.com")
    for sub in ("tmp", "new", "cur"):
        os.makedirs(os.path.join(maildir, sub))
    messageID = f"{int(NOW)}.M{count}P4242Q{count}.mx.example.com"
    path = os.path.join(maildir, "new", f"{messageID},S={len(data)}")
    with open(path, "wb") as f:
        f.write(data)
    return NewMessage(
        sender="sender@example.org",
        recipient="alice@example.com",
        user=None,
        client="192.0.2.7",
        path=path,
        id=messageID,
    )


WAIT = object()
# A FakeHook's retry policy unless a test gives one.
FAKE_RETRY = RetryPolicy(attempts=3, backoff=10, maxBackoff=15)


@implementer(IHook)
class FakeHook:
    """
    A hook whose calls are recorded and whose outcomes are scripted.

    @ivar outcomes: One per call, in order: L{None} for success, an
        exception to fail with, or L{WAIT} for a L{Deferred} the test
        fires (kept in C{waiting}).  Calls beyond the script succeed.
    """

    def __init__(
        self,
        name: str = "fake",
        outcomes: list[object] | None = None,
        retry: RetryPolicy = FAKE_RETRY,
        maxInFlight: int | None = None,
        maxPending: int | None = None,
    ) -> None:
        """
        @param maxPending: If given, the hook's C{maxPending}; without it
            the hook has none, as hooks written before it.
        """
        self.name = name
        self.retry = retry
        self.maxInFlight = maxInFlight
        if maxPending is not None:
            self.maxPending = maxPending
        self.outcomes = list(outcomes or [])
        self.calls: list[NewMessage] = []
        self.waiting: list[Deferred[object]] = []
        self.cancelled: list[NewMessage] = []
        self.stopped = False

    def run(self, event: NewMessage) -> Deferred[object]:
        self.calls.append(event)
        outcome = self.outcomes.pop(0) if self.outcomes else None
        if outcome is WAIT:
            d: Deferred[object] = Deferred(lambda d: self.cancelled.append(event))
            self.waiting.append(d)
            return d
        if isinstance(outcome, BaseException):
            return fail(outcome)
        return succeed(None)

    def stop(self) -> None:
        self.stopped = True
