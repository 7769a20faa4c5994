# -*- test-case-name: harbor.test.test_web_sessions -*-
"""
The web interface's sessions, kept on the server: the cookie carries only
a random id, so that logging out (or the idle time running out) ends a
session for good, and nothing in the cookie can be forged or replayed
after that.

Each session has its own CSRF token, which every change must carry (the
guard, L{harbor.web.site}, checks it).  Time is the injected clock's, so
tests drive expiry with L{twisted.internet.task.Clock}.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from attrs import define, field

__all__ = [
    "COOKIE",
    "IDLE_TIMEOUT",
    "MAX_SESSIONS",
    "Session",
    "SessionStore",
    "clearSessionCookie",
    "sessionCookie",
    "setSessionCookie",
]

# A session unused for this long is over (twelve hours: a working day).
IDLE_TIMEOUT = 12 * 60 * 60
# The most sessions kept at once; past it the least recently used goes, so
# that clients without cookies cannot make the store grow without bound.
MAX_SESSIONS = 10_000


@define(eq=False)
class Session:
    """
    One browser's (or API client's) session.

    @ivar id: The random id its cookie carries.
    @ivar user: The user logged in, or L{None} when the interface has no
        users.
    @ivar csrf: The token its changes must carry.
    @ivar lastUsed: When it was last used, by the store's clock.
    """

    id: str
    user: str | None
    csrf: str = field(repr=False)
    lastUsed: float


class SessionStore:
    """
    The sessions, by id, least recently used first.
    """

    def __init__(
        self,
        seconds: Callable[[], float],
        idle: float = IDLE_TIMEOUT,
        maximum: int = MAX_SESSIONS,
    ) -> None:
        """
        @param seconds: The clock (L{harbor.web.base.WebContext.seconds}).
        @param idle: Seconds of disuse after which a session is over.
        @param maximum: The most sessions kept at once.
        """
        self._seconds = seconds
        self._idle = idle
        self._maximum = maximum
        self._sessions: OrderedDict[str, Session] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sessions)

    def create(self, user: str | None) -> Session:
        """
        Start a session for C{user}, with a new random id and CSRF token
        (32 random bytes each, URL-safe).
        """
        now = self._seconds()
        self._expire(now)
        while len(self._sessions) >= self._maximum:
            self._sessions.popitem(last=False)
        session = Session(secrets.token_urlsafe(32), user, secrets.token_urlsafe(32), now)
        self._sessions[session.id] = session
        return session

    def get(self, sessionID: str | None) -> Session | None:
        """
        The live session with this id, now used again; L{None} for an
        unknown id or one idle too long (which is then forgotten).
        """
        if not sessionID:
            return None
        session = self._sessions.get(sessionID)
        if session is None:
            return None
        now = self._seconds()
        if now - session.lastUsed > self._idle:
            del self._sessions[sessionID]
            return None
        session.lastUsed = now
        self._sessions.move_to_end(sessionID)
        return session

    def alive(self, sessionID: str) -> bool:
        """
        Whether the session with this id goes on, without using it: what a
        long-lived answer (an event stream) asks from time to time, which
        must not keep a session alive by itself.
        """
        session = self._sessions.get(sessionID)
        return session is not None and self._seconds() - session.lastUsed <= self._idle

    def end(self, sessionID: str | None) -> None:
        """
        End a session (logout); an unknown id is ignored.
        """
        if sessionID:
            self._sessions.pop(sessionID, None)

    def _expire(self, now: float) -> None:
        # Least recently used first: the expired ones are at the front.
        while self._sessions:
            oldest = next(iter(self._sessions.values()))
            if now - oldest.lastUsed <= self._idle:
                break
            self._sessions.popitem(last=False)


COOKIE = b"harbor_session"


def sessionCookie(request: Any) -> str | None:
    """
    The session id a request's cookie carries, if any.
    """
    value = request.getCookie(COOKIE)
    if not value:
        return None
    try:
        return value.decode("ascii")  # type: ignore[no-any-return]
    except UnicodeDecodeError:
        return None


def setSessionCookie(request: Any, session: Session, secure: bool) -> None:
    """
    Give the browser its session's cookie: script cannot read it
    (C{HttpOnly}), no other site's request carries it (C{SameSite=Strict}),
    and under TLS it never travels in clear (C{Secure}).  It has no
    expiry: the server ends the session.
    """
    request.addCookie(
        COOKIE, session.id.encode("ascii"), path=b"/", httpOnly=True, secure=secure or None, sameSite="strict"
    )


def clearSessionCookie(request: Any, secure: bool) -> None:
    """
    Tell the browser to forget its session cookie (after logout).
    """
    request.addCookie(COOKIE, b"", path=b"/", max_age=b"0", httpOnly=True, secure=secure or None, sameSite="strict")
