# -*- test-case-name: harbor.test.test_web_site -*-
"""
The web interface's guard and its L{Site}: every request passes the guard
before any page or API resource (L{harbor.web.app}) sees it.

In order, for each request:
  1. a body over L{BODY_LIMIT} is refused (413) as soon as its
     C{Content-Length} or its chunks say so, before it is buffered
     (L{GuardedRequest});
  2. the security headers are set, so every response has them, a 404 or
     an error page too;
  3. the C{Host} must be one this interface is called by (loopback names,
     C{[web] names}, the address the connection came to), else 421: a page
     on another site that points its name at 127.0.0.1 (DNS rebinding)
     reaches nothing;
  4. C{/healthz} and C{/readyz} answer without a session;
  5. the session: from the cookie; without users every visitor gets one
     (for its CSRF token); with users, a page without one redirects to
     C{/login}, the API answers 401;
  6. a change (POST, PUT, PATCH, DELETE) must come from this origin
     (C{Origin}, else C{Referer}) and, but for the logins, carry the
     session's CSRF token (C{X-CSRF-Token} or the form field C{csrf});
  7. the guard's own URLs (login, logout, session, C{/metrics}) are
     answered here; everything else goes to the app with the viewer set
     (L{harbor.web.base.setViewer}).
"""

from __future__ import annotations

import hmac
import io
import ipaddress
from collections.abc import Callable
from functools import partial
from typing import Any
from urllib.parse import quote, urlsplit

from twisted.cred.checkers import ICredentialsChecker
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http, server
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from attrs import evolve

from harbor.config import WebConfig
from harbor.health import HealthResource, Readiness, ReadyResource, plainText
from harbor.web.base import Viewer, WebContext, setViewer
from harbor.web.common import Answer, jsonBody, writeJSON
from harbor.web.login import (
    OK,
    THROTTLED,
    Logins,
    LoginThrottle,
    bodyValue,
    formValue,
    loginPage,
    retryAfter,
    safeNext,
    viewerFor,
)
from harbor.web.sessions import (
    Session,
    SessionStore,
    clearSessionCookie,
    sessionCookie,
    setSessionCookie,
)

__all__ = ["BODY_LIMIT", "SECURITY_HEADERS", "Guard", "GuardedRequest", "WebSite", "webSite"]

# The largest request body taken: logins, forms and API changes are small.
BODY_LIMIT = 64 * 1024
# How much of a refused body is read and thrown away, so that the client
# can read its 413; past this the connection is closed at once.
DISCARD_LIMIT = 1024 * 1024

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = (
    (b"X-Content-Type-Options", b"nosniff"),
    (b"Referrer-Policy", b"same-origin"),
    (b"X-Frame-Options", b"DENY"),
    (b"Cache-Control", b"no-store"),
    (b"Content-Security-Policy", CSP.encode("ascii")),
)
# Host names every machine calls itself.
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
TOO_MANY_REQUESTS = 429
CHANGES = frozenset({b"POST", b"PUT", b"PATCH", b"DELETE"})
# Paths reached without a session (the app serves /static/): the guard
# answers them itself, /metrics with 403 unless the viewer is an admin.
_PUBLIC = frozenset(
    {("login",), ("logout",), ("metrics",), ("api", "v1", "login"), ("api", "v1", "session")}
)
# Changes that carry no CSRF token: there is no session to have one yet.
_LOGINS = frozenset({("login",), ("api", "v1", "login")})


def setSecurityHeaders(request: Request) -> None:
    """
    The headers every response of the interface has.
    """
    for name, value in SECURITY_HEADERS:
        request.setHeader(name, value)


class GuardedRequest(server.Request):
    """
    A request whose body is bounded: over L{BODY_LIMIT}, as its
    C{Content-Length} says or as its chunks add up, the rest is thrown
    away unbuffered and the answer is 413.
    """

    bodyTooLarge = False
    _bodyLength = 0

    def gotLength(self, length: int | None) -> None:
        if length is not None and length > BODY_LIMIT:
            self.bodyTooLarge = True
            # No "100 Continue" inviting a body that will be refused.
            self.requestHeaders.removeHeader(b"Expect")
            self.content = io.BytesIO()
            return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        self._bodyLength += len(data)
        if self.bodyTooLarge or self._bodyLength > BODY_LIMIT:
            if not self.bodyTooLarge:
                self.bodyTooLarge = True
                if self.content is not None:
                    self.content.close()
                self.content = io.BytesIO()
            if self._bodyLength > DISCARD_LIMIT:
                self.channel.loseConnection()
            return
        super().handleContentChunk(data)

    def process(self) -> None:
        setSecurityHeaders(self)
        if self.bodyTooLarge:
            self.site = self.channel.site  # type: ignore[attr-defined]
            self.channel.persistent = False
            self.setHeader(b"Connection", b"close")
            self.write(plainText(self, http.REQUEST_ENTITY_TOO_LARGE, f"request body over {BODY_LIMIT} bytes"))
            self.finish()
            return
        super().process()


def _hostOf(header: str) -> str:
    """
    The name in a C{Host} header (or an origin's authority), without its
    port, lower case.

    Anything but C{name}, C{name:port}, C{[address]} or C{[address]:port}
    is C{""}, which names nothing: no lenient reading of a malformed
    header may find an allowed name inside it.  An IPv6 address comes in
    its canonical spelling, as L{harbor.config.WebConfig.names} has it.
    """
    header = header.strip().lower()
    if header.startswith("["):
        inside, closed, rest = header[1:].partition("]")
        if not closed or (rest and not (rest.startswith(":") and rest[1:].isdigit())):
            return ""
        try:
            return str(ipaddress.IPv6Address(inside))
        except ValueError:
            return ""
    name, colon, port = header.partition(":")
    if (colon and not port.isdigit()) or not name:
        return ""
    return name.rstrip(".")


def _origin(url: str) -> tuple[str, str, int] | None:
    """
    An origin as scheme, host and port (the scheme's default filled in).
    """
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    return parts.scheme, parts.hostname.rstrip("."), port or (443 if parts.scheme == "https" else 80)


class Guard(Resource):
    """
    The root of the web interface: checks every request, answers its own
    URLs, and hands the rest to the app with the viewer set.
    """

    _log = Logger()

    def __init__(
        self,
        web: WebConfig,
        context: WebContext,
        app: Resource,
        readiness: Readiness,
        metricsResource: Resource,
        checker: ICredentialsChecker | None,
        secure: bool,
    ) -> None:
        super().__init__()
        self._web = web
        self._app = app
        self._secure = secure
        self._names = LOOPBACK_NAMES | frozenset(web.names)
        self.sessions = SessionStore(context.seconds)
        self.throttle = LoginThrottle(context.seconds)
        self._logins = None if checker is None else Logins(web, checker, self.sessions, self.throttle)
        self._health = HealthResource()
        self._ready = ReadyResource(readiness)
        self._metrics = metricsResource

    def render(self, request: Request) -> Any:
        # A request for no path at all ("" rather than "/").
        return self._route(request, ()).render(request)

    def getChildWithDefault(self, path: bytes, request: Request) -> Resource:
        walked = [*(request.prepath or []), *(request.postpath or [])]
        segments = tuple(s.decode("utf-8", "replace") for s in walked)
        child = self._route(request, segments)
        if child is self._app:
            found: Resource = self._app.getChildWithDefault(path, request)
            return found
        return child

    def _secureRequest(self, request: Request) -> bool:
        return self._secure or bool(request.isSecure())

    def _hostAllowed(self, request: Request) -> bool:
        header = request.getHeader(b"host")
        if not header:
            return False
        name = _hostOf(header.decode("latin-1"))
        if not name:
            return False
        if name in self._names:
            return True
        local = getattr(request.getHost(), "host", None)
        try:
            return local is not None and name == str(ipaddress.ip_address(local))
        except ValueError:
            return False

    def _sameOrigin(self, request: Request) -> bool:
        """
        Whether a change comes from a page of this site: its C{Origin}
        (else its C{Referer}'s) is the request's own.
        """
        header = request.getHeader(b"origin") or request.getHeader(b"referer")
        host = request.getHeader(b"host")
        if not header or not host:
            return False
        scheme = "https" if self._secureRequest(request) else "http"
        own = _origin(f"{scheme}://{host.decode('latin-1')}")
        return own is not None and _origin(header.decode("latin-1")) == own

    def _route(self, request: Request, segments: tuple[str, ...]) -> Resource:
        if not self._hostAllowed(request):
            return Answer(lambda r: plainText(r, 421, "this web interface is not known by that host name"))
        if segments in (("healthz",), ("readyz",)):
            return self._health if segments == ("healthz",) else self._ready
        session = self.sessions.get(sessionCookie(request))
        if session is None and self._logins is None:
            session = self.sessions.create(None)
            setSessionCookie(request, session, self._secureRequest(request))
        api = segments[:1] == ("api",)
        change = request.method in CHANGES
        if change and not self._sameOrigin(request):
            return Answer(lambda r: self._refuse(r, api, 403, "cross-origin request refused"))
        public = segments in _PUBLIC or segments[:1] == ("static",)
        if session is None and not public:
            if api:
                return Answer(lambda r: writeJSON(r, {"error": "not logged in"}, 401))
            return Answer(self._toLogin)
        if change and segments not in _LOGINS:
            token = request.getHeader(b"x-csrf-token")
            given = token.decode("latin-1") if token else bodyValue(request, "csrf")
            if session is None or not given or not hmac.compare_digest(given, session.csrf):
                return Answer(lambda r: self._refuse(r, api, 403, "missing or wrong CSRF token"))
        if session is None:
            setViewer(request, Viewer(None, admin=False))
        else:
            viewer = viewerFor(self._web, session.user, session.csrf)
            setViewer(request, evolve(viewer, alive=partial(self.sessions.alive, session.id)))
        own = self._own(segments, session)
        if own is not None:
            return own
        return self._app

    def _own(self, segments: tuple[str, ...], session: Session | None) -> Resource | None:
        """
        The guard's own resource for these segments, if it is one.
        """
        if segments == ("metrics",):
            viewer = None if session is None else viewerFor(self._web, session.user, session.csrf)
            if viewer is None or not viewer.admin:
                return Answer(lambda r: plainText(r, 403, "/metrics is for admins"))
            return self._metrics
        if segments == ("login",):
            return Answer(lambda r: self._loginPage(r, session))
        if segments == ("logout",):
            return Answer(lambda r: self._logout(r, session, api=False))
        if segments == ("api", "v1", "login"):
            return Answer(lambda r: self._apiLogin(r, session))
        if segments == ("api", "v1", "logout"):
            return Answer(lambda r: self._logout(r, session, api=True))
        if segments == ("api", "v1", "session"):
            return Answer(lambda r: self._apiSession(r, session))
        return None

    def _refuse(self, request: Request, api: bool, code: int, text: str) -> bytes:
        if api:
            return writeJSON(request, {"error": text}, code)
        return plainText(request, code, text)

    def _toLogin(self, request: Request) -> bytes:
        target = b"/login"
        if request.method in (b"GET", b"HEAD"):
            target += b"?next=" + quote(request.uri.decode("latin-1"), safe="/").encode("ascii")
        request.redirect(target)
        request.setResponseCode(http.SEE_OTHER)
        return b""

    def _loginPage(self, request: Request, session: Session | None) -> Any:
        nextPath = safeNext(formValue(request, "next"))
        if self._logins is None:
            request.redirect(nextPath.encode("utf-8"))
            request.setResponseCode(http.SEE_OTHER)
            return b""
        if request.method in (b"GET", b"HEAD"):
            request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
            return loginPage(nextPath)
        if request.method != b"POST":
            request.setHeader(b"Allow", b"GET, HEAD, POST")
            return plainText(request, http.NOT_ALLOWED, "GET or POST only")

        def answered(outcome: tuple[str, Any]) -> bytes:
            kind, value = outcome
            if kind == OK:
                setSessionCookie(request, value, self._secureRequest(request))
                request.redirect(nextPath.encode("utf-8"))
                request.setResponseCode(http.SEE_OTHER)
                return b""
            request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
            if kind == THROTTLED:
                request.setResponseCode(TOO_MANY_REQUESTS)
                request.setHeader(b"Retry-After", retryAfter(value))
                return loginPage(nextPath, "Too many failed logins: wait a little, then try again.")
            request.setResponseCode(http.UNAUTHORIZED)
            return loginPage(nextPath, "Wrong user name or password.")

        return self._checkLogin(request, bodyValue(request, "user"), bodyValue(request, "password"), session, answered)

    def _apiLogin(self, request: Request, session: Session | None) -> Any:
        if self._logins is None:
            return writeJSON(request, {"error": "this web interface has no users: no login is needed"}, 404)
        if request.method != b"POST":
            request.setHeader(b"Allow", b"POST")
            return writeJSON(request, {"error": "POST only"}, http.NOT_ALLOWED)
        body, refused = jsonBody(request)
        if refused is not None:
            # Not application/json (what a cross-site form could send): 415.
            return refused
        if not isinstance(body, dict) or not isinstance(body.get("user"), str) or not isinstance(body.get("password"), str):
            return writeJSON(request, {"error": 'send {"user": ..., "password": ...}'}, 400)

        def answered(outcome: tuple[str, Any]) -> bytes:
            kind, value = outcome
            if kind == OK:
                setSessionCookie(request, value, self._secureRequest(request))
                viewer = viewerFor(self._web, value.user, value.csrf)
                return writeJSON(request, {"user": viewer.name, "admin": viewer.admin, "csrf": viewer.csrf}, 200)
            if kind == THROTTLED:
                request.setHeader(b"Retry-After", retryAfter(value))
                return writeJSON(request, {"error": "too many failed logins: try again later"}, TOO_MANY_REQUESTS)
            return writeJSON(request, {"error": "wrong user name or password"}, 401)

        return self._checkLogin(request, body["user"], body["password"], session, answered)

    def _checkLogin(
        self,
        request: Request,
        user: str,
        password: str,
        session: Session | None,
        answered: Callable[[tuple[str, Any]], bytes],
    ) -> Any:
        assert self._logins is not None
        client = str(getattr(request.getClientAddress(), "host", ""))
        gone: list[Failure] = []
        request.notifyFinish().addErrback(gone.append)
        result: Deferred[Any] = self._logins.logIn(client, user, password, session)

        def broken(failure: Failure) -> bytes:
            self._log.failure("web login client={client} user={user} could not be checked", failure, client=client, user=user)
            return plainText(request, http.SERVICE_UNAVAILABLE, "logins cannot be checked now; try again later")

        def finish(body: bytes) -> None:
            if not gone:
                request.write(body)
                request.finish()

        result.addCallback(answered).addErrback(broken).addCallback(finish)
        return NOT_DONE_YET

    def _logout(self, request: Request, session: Session | None, api: bool) -> bytes:
        if request.method != b"POST":
            request.setHeader(b"Allow", b"POST")
            return self._refuse(request, api, http.NOT_ALLOWED, "POST only")
        if session is not None:
            self.sessions.end(session.id)
        clearSessionCookie(request, self._secureRequest(request))
        if api:
            return writeJSON(request, {"logged_out": True}, 200)
        request.redirect(b"/login" if self._logins is not None else b"/")
        request.setResponseCode(http.SEE_OTHER)
        return b""

    def _apiSession(self, request: Request, session: Session | None) -> bytes:
        if session is None:
            return writeJSON(request, {"error": "not logged in"}, 401)
        viewer = viewerFor(self._web, session.user, session.csrf)
        return writeJSON(request, {"user": viewer.name, "admin": viewer.admin, "csrf": viewer.csrf}, 200)


class WebSite(Site):
    """
    The web interface's L{Site}: guarded requests, no tracebacks shown,
    and no log line per request (a browser makes dozens per page; failed
    logins are logged by the guard).
    """

    noisy = False
    displayTracebacks = False
    requestFactory = GuardedRequest

    def __init__(self, guard: Guard, reactor: Any = None) -> None:
        super().__init__(guard, reactor=reactor)
        self.guard = guard

    def log(self, request: http.Request) -> None:
        """
        Log nothing per request.
        """


def webSite(
    webConfig: WebConfig,
    context: WebContext,
    app: Resource,
    readiness: Readiness,
    metricsResource: Resource,
    checker: ICredentialsChecker | None,
    secure: bool,
) -> WebSite:
    """
    The web interface's site: L{Guard} in front of C{app}.

    @param webConfig: The C{[web]} settings (its C{names} are the Host
        names accepted besides the loopback ones).
    @param context: The Maildirs and the clock (sessions and throttling
        use C{context.seconds}).
    @param app: The pages and API (L{harbor.web.app.appResource}).
    @param readiness: What C{/readyz} reports.
    @param metricsResource: C{/metrics}, for admins.
    @param checker: Checks logins (L{harbor.auth.UsersFileChecker}), or
        L{None} for an interface without users, every visitor an admin.
    @param secure: Whether it is served over TLS (cookies get C{Secure}
        whatever the request says).
    """
    guard = Guard(webConfig, context, app, readiness, metricsResource, checker, secure)
    return WebSite(guard, reactor=context.reactor)
