"""
Tests for L{harbor.web.sessions}: server-side sessions with idle expiry.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from harbor.web.sessions import IDLE_TIMEOUT, SessionStore


class SessionStoreTests(SynchronousTestCase):
    """
    Tests for L{SessionStore}.
    """

    def test_idleExpiry(self) -> None:
        """
        A session is found while used within 12 hours of its last use,
        and is gone once it has been idle longer.
        """
        clock = Clock()
        store = SessionStore(clock.seconds)
        session = store.create("alice")
        clock.advance(IDLE_TIMEOUT - 1)
        self.assertIs(store.get(session.id), session)
        clock.advance(IDLE_TIMEOUT - 1)
        self.assertIs(store.get(session.id), session)
        clock.advance(IDLE_TIMEOUT + 1)
        self.assertIsNone(store.get(session.id))
        self.assertEqual(len(store), 0)
        self.assertEqual(IDLE_TIMEOUT, 12 * 60 * 60)

    def test_aliveDoesNotUse(self) -> None:
        """
        Asking whether a session goes on does not use it: a session only
        asked about (by an open event stream) still expires when idle, and
        one ended is not alive.
        """
        clock = Clock()
        store = SessionStore(clock.seconds, idle=100)
        session = store.create("alice")
        ended = store.create("bob")
        store.end(ended.id)
        self.assertFalse(store.alive(ended.id))
        for _ in range(3):
            clock.advance(40)
            self.assertEqual(store.alive(session.id), clock.seconds() <= 100)
        self.assertIsNone(store.get(session.id))

    def test_tokensDistinct(self) -> None:
        """
        Every session has its own random id and CSRF token, of 32 random
        bytes (43 URL-safe characters), the token unlike the id.
        """
        store = SessionStore(Clock().seconds)
        sessions = [store.create(None) for _ in range(50)]
        values = {s.id for s in sessions} | {s.csrf for s in sessions}
        self.assertEqual(len(values), 100)
        self.assertEqual({len(s.id) for s in sessions} | {len(s.csrf) for s in sessions}, {43})

    def test_end(self) -> None:
        """
        A session ended (logout) is not found again; unknown and empty
        ids are nobody's.
        """
        store = SessionStore(Clock().seconds)
        session = store.create("alice")
        store.end(session.id)
        self.assertIsNone(store.get(session.id))
        store.end("unknown")
        self.assertIsNone(store.get(""))
        self.assertIsNone(store.get(None))

    def test_bounded(self) -> None:
        """
        Past its maximum the store forgets the least recently used
        session, not one just used.
        """
        clock = Clock()
        store = SessionStore(clock.seconds, maximum=3)
        first, second, third = (store.create(None) for _ in range(3))
        clock.advance(1)
        store.get(first.id)
        fourth = store.create(None)
        self.assertEqual(len(store), 3)
        self.assertIsNone(store.get(second.id))
        for session in (first, third, fourth):
            self.assertIs(store.get(session.id), session)

    def test_expiredPurgedOnCreate(self) -> None:
        """
        Sessions idle too long are dropped when a new one is made, so they
        do not take room.
        """
        clock = Clock()
        store = SessionStore(clock.seconds, idle=10)
        store.create(None)
        store.create(None)
        clock.advance(11)
        store.create(None)
        self.assertEqual(len(store), 1)
