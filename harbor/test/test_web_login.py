"""
Tests for L{harbor.web.login} through the guard: the login form, its
JSON twin, logout and the throttling of failures.
"""

from __future__ import annotations

import json
from urllib.parse import urlencode

from zope.interface.verify import verifyObject

from twisted.cred.portal import IRealm
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from harbor.config import WebConfig
from harbor.test._websupport import PASSWORD, WebTestCase, cookieOf
from harbor.web.base import IViewer, Viewer
from harbor.web.login import LoginThrottle, WebRealm, loginPage, safeNext, viewerFor

FORM = "application/x-www-form-urlencoded"


class LoginFormTests(WebTestCase):
    """
    C{/login}, C{/logout}.
    """

    async def post(self, **fields: str) -> tuple[object, bytes]:
        return await self.fetch(
            "/login", b"POST", {"Origin": self.origin, "Content-Type": FORM}, urlencode(fields).encode()
        )

    async def test_form(self) -> None:
        """
        GET /login is the form, linking /static/app.css, with no inline
        script or style, the next page kept in it (escaped).
        """
        self.serve()
        response, body = await self.fetch('/login?next=/m/a%22b')
        self.assertEqual(response.code, 200)
        self.assertIn(b'<link rel="stylesheet" href="/static/app.css"', body)
        self.assertIn(b'name="next" value="/m/a&quot;b"', body)
        self.assertNotIn(b"<script", body)
        self.assertNotIn(b"style=", body)
        self.assertNotIn(b"<style", body)

    async def test_success(self) -> None:
        """
        The right password sets the session cookie and redirects to the
        next page asked for; the session is alice's.
        """
        self.serve()
        response, _ = await self.post(user="alice", password=PASSWORD, next="/m/abc?images=1")
        self.assertEqual(response.code, 303)  # type: ignore[attr-defined]
        self.assertEqual(response.headers.getRawHeaders("Location"), ["/m/abc?images=1"])  # type: ignore[attr-defined]
        cookie = cookieOf(response)  # type: ignore[arg-type]
        _, body = await self.fetch("/", headers={"Cookie": cookie})
        self.assertEqual(json.loads(body)["name"], "alice")

    async def test_openRedirect(self) -> None:
        """
        A next page on another site (//evil.com, https://evil.com, /\\evil.com)
        redirects to / instead.
        """
        self.serve()
        for target in ("//evil.com", "https://evil.com", "/\\evil.com", "evil.com"):
            response, _ = await self.post(user="alice", password=PASSWORD, next=target)
            self.assertEqual(response.headers.getRawHeaders("Location"), ["/"], target)  # type: ignore[attr-defined]

    async def test_wrongPassword(self) -> None:
        """
        A wrong password (or unknown user) is 401 with the form and the
        error again, and no session.
        """
        self.serve()
        for user in ("alice", "nobody"):
            self.clock.advance(100)
            response, body = await self.post(user=user, password="wrong", next="/")
            self.assertEqual(response.code, 401)  # type: ignore[attr-defined]
            self.assertIn(b'id="login-error"', body)
            self.assertIsNone(response.headers.getRawHeaders("Set-Cookie"))  # type: ignore[attr-defined]

    async def test_throttled(self) -> None:
        """
        After failures, logins from the address wait: 429 with
        Retry-After, even with the right password, until the delay is
        over; then the right password works.
        """
        self.serve()
        await self.post(user="alice", password="wrong")
        await self.post(user="alice", password="wrong")
        response, _ = await self.post(user="alice", password=PASSWORD)
        self.assertEqual(response.code, 429)  # type: ignore[attr-defined]
        self.assertEqual(response.headers.getRawHeaders("Retry-After"), ["1"])  # type: ignore[attr-defined]
        response, body = await self.fetch(
            "/api/v1/login", b"POST", {"Origin": self.origin, "Content-Type": "application/json"},
            json.dumps({"user": "alice", "password": PASSWORD}).encode(),
        )
        self.assertEqual(response.code, 429)
        self.assertIn("error", json.loads(body))
        self.clock.advance(1)
        response, _ = await self.post(user="alice", password=PASSWORD)
        self.assertEqual(response.code, 303)  # type: ignore[attr-defined]

    async def test_loginNeedsOrigin(self) -> None:
        """
        A login posted from another origin is refused, the password unchecked.
        """
        self.serve()
        response, _ = await self.fetch(
            "/login", b"POST", {"Origin": "http://evil.example", "Content-Type": FORM},
            urlencode({"user": "alice", "password": PASSWORD}).encode(),
        )
        self.assertEqual(response.code, 403)

    async def test_logout(self) -> None:
        """
        POST /logout with the token ends the session: its cookie no longer
        lets anyone in.
        """
        self.serve()
        cookie, csrf = await self.logIn()
        response, _ = await self.fetch(
            "/logout", b"POST", {"Cookie": cookie, "Origin": self.origin, "Content-Type": FORM}, f"csrf={csrf}".encode()
        )
        self.assertEqual(response.code, 303)
        self.assertEqual(response.headers.getRawHeaders("Location"), ["/login"])
        response, _ = await self.fetch("/", headers={"Cookie": cookie})
        self.assertEqual(response.code, 303)

    async def test_newSessionAtLogin(self) -> None:
        """
        Logging in again gives a new session id and ends the old one.
        """
        self.serve()
        first, _ = await self.logIn()
        response, _ = await self.fetch(
            "/api/v1/login", b"POST", {"Cookie": first, "Origin": self.origin, "Content-Type": "application/json"},
            json.dumps({"user": "bob", "password": PASSWORD}).encode(),
        )
        second = cookieOf(response)
        self.assertNotEqual(first, second)
        response, _ = await self.fetch("/api/v1/session", headers={"Cookie": first})
        self.assertEqual(response.code, 401)


class APITests(WebTestCase):
    """
    C{/api/v1/login}, C{/api/v1/session}, C{/api/v1/logout}.
    """

    async def test_loginSessionLogout(self) -> None:
        """
        Logging in answers the user and token; the session says who, with
        the token; logging out (with the token) ends it.
        """
        self.serve()
        response, body = await self.fetch(
            "/api/v1/login", b"POST", {"Origin": self.origin, "Content-Type": "application/json"},
            json.dumps({"user": "alice", "password": PASSWORD}).encode(),
        )
        self.assertEqual(json.loads(body), {"user": "alice", "admin": True, "csrf": json.loads(body)["csrf"]})
        cookie, csrf = await self.logIn("bob")
        response, body = await self.fetch("/api/v1/session", headers={"Cookie": cookie})
        self.assertEqual(json.loads(body), {"user": "bob", "admin": False, "csrf": csrf})
        response, body = await self.fetch("/api/v1/logout", b"POST", {"Cookie": cookie, "Origin": self.origin})
        self.assertEqual(response.code, 403)
        response, body = await self.fetch(
            "/api/v1/logout", b"POST", {"Cookie": cookie, "Origin": self.origin, "X-CSRF-Token": csrf}
        )
        self.assertEqual((response.code, json.loads(body)), (200, {"logged_out": True}))
        response, body = await self.fetch("/api/v1/session", headers={"Cookie": cookie})
        self.assertEqual((response.code, json.loads(body)), (401, {"error": "not logged in"}))

    async def test_failure(self) -> None:
        """
        A wrong password is 401 JSON; a body that is not the object asked
        for is 400, and one not sent as JSON 415.
        """
        self.serve()
        response, body = await self.fetch(
            "/api/v1/login", b"POST", {"Origin": self.origin, "Content-Type": "application/json"},
            json.dumps({"user": "alice", "password": "x"}).encode(),
        )
        self.assertEqual((response.code, json.loads(body)), (401, {"error": "wrong user name or password"}))
        self.clock.advance(100)
        headers = {"Origin": self.origin, "Content-Type": "application/json"}
        response, body = await self.fetch("/api/v1/login", b"POST", headers, b"[1]")
        self.assertEqual(response.code, 400)
        # Not JSON by its type (what a form on another site could post): 415.
        plain = {"Origin": self.origin, "Content-Type": "text/plain"}
        response, body = await self.fetch("/api/v1/login", b"POST", plain, b'{"user": "alice", "password": "x"}')
        self.assertEqual(response.code, 415)


class PureTests(SynchronousTestCase):
    """
    The parts of the login that need no server.
    """

    def test_safeNext(self) -> None:
        """
        Only paths on this site are kept.
        """
        self.assertEqual(safeNext("/m/x?y=1"), "/m/x?y=1")
        for bad in ("//evil.com", "https://evil.com", "/\\evil", "", None, "/a\nb", "javascript:alert(1)"):
            self.assertEqual(safeNext(bad), "/", bad)

    def test_throttle(self) -> None:
        """
        Failures count per address and per user: a user failing from many
        addresses must wait, and so must an address trying many users;
        success forgets them.
        """
        clock = Clock()
        throttle = LoginThrottle(clock.seconds)
        throttle.failed("192.0.2.1", "alice")
        self.assertEqual(throttle.retryAfter("192.0.2.1", "alice"), 0)
        throttle.failed("192.0.2.2", "alice")
        self.assertEqual(throttle.retryAfter("192.0.2.3", "alice"), 1)
        throttle.failed("192.0.2.2", "bob")
        self.assertEqual(throttle.retryAfter("192.0.2.2", "carol"), 1)
        clock.advance(1)
        self.assertEqual(throttle.retryAfter("192.0.2.2", "carol"), 0)
        throttle.succeeded("192.0.2.2", "alice")
        throttle.failed("192.0.2.2", "alice")
        self.assertEqual(throttle.retryAfter("192.0.2.2", "alice"), 0)

    def test_realm(self) -> None:
        """
        The realm provides IRealm and makes the checked user's viewer.
        """
        realm = WebRealm(WebConfig("8025", admins=("alice",)))
        self.assertTrue(verifyObject(IRealm, realm))
        _interface, viewer, _logout = realm.requestAvatar("alice", None, IViewer)
        self.assertEqual(viewer, Viewer("alice", admin=True))

    def test_viewerFor(self) -> None:
        """
        Admins see all, others their grants, no user is an admin.
        """
        web = WebConfig("8025", admins=("alice",), access=(("bob", ("example.org",)),))
        self.assertEqual(viewerFor(web, "bob", "t"), Viewer("bob", admin=False, grants=("example.org",), csrf="t"))
        self.assertEqual(viewerFor(web, "carol", "t").grants, ())
        self.assertTrue(viewerFor(web, None, "t").admin)
        self.assertTrue(verifyObject(IViewer, viewerFor(web, None, "t")))

    def test_pageEscapes(self) -> None:
        """
        The error and next page are escaped by the template.
        """
        page = loginPage('/"><script>', "<b>")
        self.assertNotIn(b"<script>", page)
        self.assertIn(b"&lt;b&gt;", page)
