# -*- test-case-name: harbor.test.test_web_login -*-
"""
Logging in to the web interface: the login form, its JSON twin, logout,
and who a logged-in user is (L{viewerFor}).

Passwords are checked through L{twisted.cred} against the users file SMTP
AUTH uses (L{harbor.auth.UsersFileChecker}, scrypt in the thread pool),
once per login: the session cookie stands for the user afterwards, so the
50 ms of scrypt are never paid per request as HTTP basic auth would.
Failed logins are throttled as SMTP AUTH's are (L{harbor.limits.Throttle}),
per client address and per user name: while an address or a name waits,
its logins get 429 with C{Retry-After}, without a password being checked.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

from zope.interface import implementer

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import Request
from twisted.web.template import Tag, flattenString, tags

from harbor.address import clientGroup
from harbor.config import WebConfig
from harbor.limits import FailureTracker, Throttle
from harbor.web.base import IViewer, Viewer
from harbor.web.sessions import Session, SessionStore

__all__ = [
    "LoginThrottle",
    "Logins",
    "WebRealm",
    "loginPage",
    "safeNext",
    "viewerFor",
]

_log = Logger()

# What the outcome of a login attempt is called in the log and the code.
OK = "ok"
WRONG = "failed"
THROTTLED = "throttled"


def viewerFor(web: WebConfig, user: str | None, csrf: str) -> Viewer:
    """
    The viewer a session's user is: every mailbox for an admin (and for
    everyone when there are no users, C{user} being L{None}), else what
    C{[web.access]} grants them.
    """
    if user is None:
        return Viewer(None, admin=True, csrf=csrf)
    return Viewer(user, admin=user in web.admins, grants=web.grantsOf(user), csrf=csrf)


@implementer(IRealm)
class WebRealm:
    """
    Turns a checked user name into the L{Viewer} it is (without a session's
    token: the session adds it).
    """

    def __init__(self, web: WebConfig) -> None:
        self._web = web

    def requestAvatar(self, avatarId: Any, mind: Any, *interfaces: Any) -> tuple[Any, Any, Callable[[], None]]:
        if IViewer not in interfaces:
            raise NotImplementedError("the web realm only knows viewers")
        name = avatarId.decode("utf-8") if isinstance(avatarId, bytes) else str(avatarId)
        return IViewer, viewerFor(self._web, name, ""), lambda: None


class LoginThrottle:
    """
    Failed logins per client address (an IPv6 client's per network) and
    per user name, and how long each must wait before trying again:
    L{Throttle}'s delays, as SMTP AUTH has them.
    """

    def __init__(self, seconds: Callable[[], float], throttle: Throttle | None = None) -> None:
        throttle = Throttle() if throttle is None else throttle
        self._seconds = seconds
        self._forget = throttle.forget
        self._clients = FailureTracker(throttle, seconds)
        self._users = FailureTracker(throttle, seconds)
        # "client " + group or "user " + name -> when it may try again.
        self._until: dict[str, float] = {}

    def _keys(self, client: str, user: str) -> tuple[str, str]:
        return "client " + clientGroup(client), "user " + user

    def retryAfter(self, client: str, user: str) -> float:
        """
        Seconds before C{client} may try again, or as C{user}; 0 if now.
        """
        now = self._seconds()
        return max(0.0, *(self._until.get(key, now) - now for key in self._keys(client, user)))

    def failed(self, client: str, user: str) -> float:
        """
        Count a failed login.

        @return: The seconds both must now wait.
        """
        now = self._seconds()
        delay = max(self._clients.failed(client), self._users.failed(user))
        if delay > 0:
            if len(self._until) > 10_000:
                self._until = {key: until for key, until in self._until.items() if until > now}
            for key in self._keys(client, user):
                self._until[key] = max(self._until.get(key, now), now + delay)
        return delay

    def succeeded(self, client: str, user: str) -> None:
        """
        Forget the failures of a client, and of the user, that logged in.
        """
        self._clients.succeeded(client)
        self._users.succeeded(user)
        for key in self._keys(client, user):
            self._until.pop(key, None)


class Logins:
    """
    Decides logins and makes their sessions.
    """

    def __init__(
        self,
        web: WebConfig,
        checker: ICredentialsChecker,
        sessions: SessionStore,
        throttle: LoginThrottle,
    ) -> None:
        self._portal = Portal(WebRealm(web), [checker])
        self._sessions = sessions
        self.throttle = throttle

    def logIn(self, client: str, user: str, password: str, previous: Session | None) -> Deferred[tuple[str, Any]]:
        """
        Check a login from C{client}.

        @param previous: The session the request came with, ended on
            success: a login always gets a new id, so an id planted
            before it is worth nothing after.
        @return: A L{Deferred} firing with C{(OK, session)},
            C{(WRONG, None)} or C{(THROTTLED, seconds to wait)}; failing on
            any other error (a checker that broke).
        """
        wait = self.throttle.retryAfter(client, user)
        if wait > 0:
            _log.info("web login client={client} user={user} result=throttled", client=client, user=user)
            return succeed((THROTTLED, wait))
        credentials = UsernamePassword(user.encode("utf-8"), password.encode("utf-8"))
        result = self._portal.login(credentials, None, IViewer)

        def succeeded(outcome: tuple[Any, Viewer, Any]) -> tuple[str, Any]:
            self.throttle.succeeded(client, user)
            if previous is not None:
                self._sessions.end(previous.id)
            session = self._sessions.create(outcome[1].name)
            _log.info("web login client={client} user={user} result=ok", client=client, user=user)
            return OK, session

        def refused(failure: Failure) -> tuple[str, Any]:
            failure.trap(UnauthorizedLogin)
            self.throttle.failed(client, user)
            _log.info("web login client={client} user={user} result=failed", client=client, user=user)
            return WRONG, None

        return result.addCallbacks(succeeded, refused)


def safeNext(value: object) -> str:
    """
    Where to go after logging in: C{value} if it is a path on this site
    (starting with one C{/}, not C{//} or C{/\\}, which browsers read as
    another host), else C{/}, so that a login link cannot redirect to a
    page elsewhere.
    """
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if (
        not isinstance(value, str)
        or not value.startswith("/")
        or value[1:2] in ("/", "\\")
        or any(ord(c) < 0x21 or c == "\x7f" for c in value)
    ):
        return "/"
    return value


def _flatten(tag: Tag) -> bytes:
    # A tree of plain tags flattens at once; escaping is flatten's.
    out: list[bytes] = []
    flattenString(None, tag).addCallback(out.append)
    return b"<!DOCTYPE html>\n" + out[0]


def loginPage(next: str, error: str | None = None) -> bytes:
    """
    The login form: user, password and where to go next; no script and no
    inline style, so the guard's Content-Security-Policy holds.

    @param error: What went wrong with the last attempt, shown above it.
    """
    problem = [] if error is None else [tags.p(error, id="login-error", role="alert")]
    return _flatten(
        tags.html(lang="en")(
            tags.head(
                tags.meta(charset="utf-8"),
                tags.meta(name="viewport", content="width=device-width, initial-scale=1"),
                tags.title("Log in \N{MIDDLE DOT} MailHarbor"),
                tags.link(rel="stylesheet", href="/static/app.css"),
            ),
            tags.body(**{"class": "login"})(
                Tag("main")(
                    tags.h1("MailHarbor"),
                    *problem,
                    tags.form(id="login", method="post", action="/login")(
                        tags.label("User", tags.input(name="user", type="text", autocomplete="username", required="")),
                        tags.label(
                            "Password",
                            tags.input(name="password", type="password", autocomplete="current-password", required=""),
                        ),
                        tags.input(type="hidden", name="next", value=next),
                        tags.button("Log in", type="submit"),
                    ),
                ),
            ),
        )
    )


def formValue(request: Request, name: str) -> str:
    """
    A form field of a request, as text (empty when absent).
    """
    values = (request.args or {}).get(name.encode("ascii"), [b""])
    return values[0].decode("utf-8", "replace") if values else ""


def bodyValue(request: Request, name: str) -> str:
    """
    A field of a form posted in the request's body (empty when absent):
    never one from the URL's query, where a CSRF token or a password
    would be kept in histories, logs and C{Referer} headers.
    """
    kind = (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
    content = request.content
    if kind != b"application/x-www-form-urlencoded" or content is None:
        return ""
    content.seek(0)
    fields: dict[bytes, list[bytes]] = parse_qs(content.read(), keep_blank_values=True)
    content.seek(0)
    value: bytes = fields.get(name.encode("ascii"), [b""])[0]
    return value.decode("utf-8", "replace")


def retryAfter(seconds: float) -> bytes:
    """
    A C{Retry-After} value: whole seconds, at least one.
    """
    return str(max(1, math.ceil(seconds))).encode("ascii")
