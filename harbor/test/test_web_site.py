"""
Tests for L{harbor.web.site}: the guard in front of the web interface,
over a real L{Site} on loopback.
"""

from __future__ import annotations

import json

from harbor.config import WebConfig
from harbor.test._websupport import WebTestCase, cookieOf, setCookie
from harbor.test.certs import TestCA
from harbor.web.site import CSP, SECURITY_HEADERS


class HostTests(WebTestCase):
    """
    The C{Host} check that keeps DNS rebinding out.
    """

    async def test_foreignHostRefused(self) -> None:
        """
        A Host the interface is not known by, such as a rebinding
        attacker's name pointed at 127.0.0.1, gets 421, whatever the port.
        """
        self.serve()
        for host in (f"evil.example:{self.port}", "evil.example", "localhost.evil.example",
                     "[::1]evil.example", "[::1]:80:80", "localhost:abc", ":8025", "[localhost]"):
            response, _body = await self.fetch("/healthz", headers={"Host": host})
            self.assertEqual(response.code, 421, host)
            self.assertEqual(response.headers.getRawHeaders("Content-Type"), ["text/plain; charset=utf-8"])

    async def test_knownHostsAccepted(self) -> None:
        """
        Loopback names, configured names (any case, any port) and the
        address connected to are accepted.
        """
        self.serve(WebConfig("tcp:0:interface=127.0.0.1", names=("mail.example.com", "2001:db8::5")))
        for host in ("localhost:8025", "127.0.0.1", "[::1]:8025", "Mail.Example.COM:443", "mail.example.com.",
                     "[2001:DB8:0::5]:8025", f"127.0.0.1:{self.port}"):
            response, _ = await self.fetch("/healthz", headers={"Host": host})
            self.assertEqual(response.code, 200, host)


class HeaderTests(WebTestCase):
    """
    The security headers every response has.
    """

    def assertSecurityHeaders(self, response: object) -> None:
        for name, value in SECURITY_HEADERS:
            self.assertEqual(response.headers.getRawHeaders(name.decode()), [value.decode()], name)  # type: ignore[attr-defined]

    async def test_everyResponse(self) -> None:
        """
        A page, a 404, an application error, a refused Host, a login
        redirect and the health check all carry every security header.
        """
        self.serve(users=False)
        for path, code, headers in [
            ("/", 200, {}),
            ("/missing", 404, {}),
            ("/boom", 500, {}),
            ("/healthz", 421, {"Host": "evil.example"}),
        ]:
            response, _ = await self.fetch(path, headers=headers)
            self.assertEqual(response.code, code, path)
            self.assertSecurityHeaders(response)
        self.flushLoggedErrors(RuntimeError)
        self.serve()
        response, _ = await self.fetch("/")
        self.assertEqual(response.code, 303)
        self.assertSecurityHeaders(response)

    def test_policy(self) -> None:
        """
        The Content-Security-Policy allows only this site's scripts and
        styles, and no framing by others.
        """
        self.assertIn("default-src 'none'", CSP)
        self.assertIn("script-src 'self'", CSP)
        self.assertIn("frame-ancestors 'none'", CSP)


class CookieTests(WebTestCase):
    """
    The session cookie's attributes.
    """

    async def test_plainHTTP(self) -> None:
        """
        Over plain HTTP the cookie is HttpOnly, SameSite=Strict, Path=/
        and not Secure.
        """
        self.serve(users=False)
        response, _ = await self.fetch("/")
        header = setCookie(response)
        attributes = [part.strip().lower() for part in header.split(";")[1:]]
        self.assertIn("httponly", attributes)
        self.assertIn("samesite=strict", attributes)
        self.assertIn("path=/", attributes)
        self.assertNotIn("secure", attributes)

    async def test_secureUnderTLS(self) -> None:
        """
        Over TLS the cookie is Secure too.
        """
        ca = TestCA(self.mktemp())
        certificate, key = ca.issue()
        self.serve(users=False, tls=(ca.certificatePath, certificate, key))
        response, _ = await self.fetch("/")
        self.assertEqual(response.code, 200)
        attributes = [part.strip().lower() for part in setCookie(response).split(";")[1:]]
        self.assertIn("secure", attributes)
        self.assertIn("httponly", attributes)


class ChangeTests(WebTestCase):
    """
    Changes need this site's origin and the session's CSRF token.
    """

    async def test_origin(self) -> None:
        """
        A change without Origin or Referer, or from another origin, is
        refused with 403, even with the right token; from this origin (or
        Referer) with the token it passes.
        """
        self.serve()
        cookie, csrf = await self.logIn()
        for headers in (
            {},
            {"Origin": "http://evil.example"},
            {"Origin": "null"},
            {"Origin": f"http://127.0.0.1:{self.port + 1}"},
            {"Referer": "http://evil.example/page"},
        ):
            response, body = await self.fetch("/m/x/seen", b"POST", {"Cookie": cookie, "X-CSRF-Token": csrf, **headers})
            self.assertEqual(response.code, 403, headers)
        for headers in ({"Origin": self.origin}, {"Referer": self.origin + "/m/x"}):
            response, body = await self.fetch("/m/x/seen", b"POST", {"Cookie": cookie, "X-CSRF-Token": csrf, **headers})
            self.assertEqual(response.code, 200, headers)
            self.assertEqual(json.loads(body)["method"], "POST")

    async def test_csrf(self) -> None:
        """
        A change without the token or with a wrong one is refused; the
        token as a header or as the form field C{csrf} passes.
        """
        self.serve()
        cookie, csrf = await self.logIn()
        base = {"Cookie": cookie, "Origin": self.origin}
        response, _ = await self.fetch("/m/x/delete", b"POST", base)
        self.assertEqual(response.code, 403)
        response, _ = await self.fetch("/api/v1/messages/x", b"DELETE", {**base, "X-CSRF-Token": csrf + "x"})
        self.assertEqual(response.code, 403)
        response, _ = await self.fetch("/api/v1/messages/x", b"DELETE", {**base, "X-CSRF-Token": csrf})
        self.assertEqual(response.code, 200)
        form = {**base, "Content-Type": "application/x-www-form-urlencoded"}
        response, _ = await self.fetch("/m/x/delete", b"POST", form, f"csrf={csrf}".encode())
        self.assertEqual(response.code, 200)
        response, _ = await self.fetch("/m/x/delete", b"POST", form, b"csrf=nope")
        self.assertEqual(response.code, 403)
        # The token in the URL's query (kept in histories and logs) does not count.
        response, _ = await self.fetch(f"/m/x/delete?csrf={csrf}", b"POST", form, b"")
        self.assertEqual(response.code, 403)


class BodyLimitTests(WebTestCase):
    """
    Request bodies over 64 KiB are refused.
    """

    async def test_contentLength(self) -> None:
        """
        A 70 KiB body with its Content-Length gets 413; 60 KiB passes.
        """
        self.serve(users=False)
        response, _body = await self.fetch("/x", b"POST", {"Origin": self.origin}, b"a" * 70 * 1024)
        self.assertEqual(response.code, 413)
        self.assertEqual(response.headers.getRawHeaders("X-Frame-Options"), ["DENY"])
        response, _ = await self.fetch("/x", b"POST", {"Origin": self.origin}, b"a" * 60 * 1024)
        self.assertEqual(response.code, 403)

    async def test_chunked(self) -> None:
        """
        A chunked body that adds up to over 64 KiB gets 413 too.
        """
        self.serve(users=False)
        response, _ = await self.fetch("/x", b"POST", {"Origin": self.origin}, b"a" * 70 * 1024, chunked=True)
        self.assertEqual(response.code, 413)
        response, _ = await self.fetch("/x", b"POST", {"Origin": self.origin}, b"a" * 1024, chunked=True)
        self.assertEqual(response.code, 403)


class SessionTests(WebTestCase):
    """
    Who the guard lets in, and as whom.
    """

    async def test_unauthenticated(self) -> None:
        """
        With users, a page without a session redirects to the login with
        the page to come back to; the API answers 401 in JSON.
        """
        self.serve()
        response, _ = await self.fetch("/m/abc?images=1")
        self.assertEqual(response.code, 303)
        self.assertEqual(response.headers.getRawHeaders("Location"), ["/login?next=/m/abc%3Fimages%3D1"])
        response, body = await self.fetch("/api/v1/messages")
        self.assertEqual(response.code, 401)
        self.assertEqual(response.headers.getRawHeaders("Content-Type"), ["application/json"])
        self.assertEqual(json.loads(body), {"error": "not logged in"})

    async def test_viewers(self) -> None:
        """
        A logged-in user is the app's viewer: an admin, or with the grants
        of C{[web.access]}, and their session's token.
        """
        self.serve()
        cookie, csrf = await self.logIn("alice")
        _, body = await self.fetch("/", headers={"Cookie": cookie})
        self.assertEqual(json.loads(body)["name"], "alice")
        self.assertTrue(json.loads(body)["admin"])
        self.assertEqual(json.loads(body)["csrf"], csrf)
        cookie, _ = await self.logIn("bob")
        _response, body = await self.fetch("/", headers={"Cookie": cookie})
        self.assertEqual((json.loads(body)["admin"], json.loads(body)["grants"]), (False, ["example.net/bob"]))

    async def test_noUsers(self) -> None:
        """
        Without users every visitor is an admin with no name, and gets a
        session (for its CSRF token) at once, kept while its cookie is.
        """
        self.serve(users=False)
        response, body = await self.fetch("/")
        viewer = json.loads(body)
        self.assertEqual((viewer["name"], viewer["admin"]), (None, True))
        self.assertTrue(viewer["csrf"])
        cookie = cookieOf(response)
        response, body = await self.fetch("/", headers={"Cookie": cookie})
        self.assertEqual(json.loads(body)["csrf"], viewer["csrf"])
        self.assertEqual(response.headers.getRawHeaders("Set-Cookie"), None)
        response, body = await self.fetch("/api/v1/session", headers={"Cookie": cookie})
        self.assertEqual(json.loads(body), {"user": None, "admin": True, "csrf": viewer["csrf"]})

    async def test_metrics(self) -> None:
        """
        C{/metrics} is for admins only (403 otherwise, 403 without a
        session), in the Prometheus text format.
        """
        self.serve()
        response, _ = await self.fetch("/metrics")
        self.assertEqual(response.code, 403)
        cookie, _ = await self.logIn("bob")
        response, _ = await self.fetch("/metrics", headers={"Cookie": cookie})
        self.assertEqual(response.code, 403)
        cookie, _ = await self.logIn("alice")
        response, body = await self.fetch("/metrics", headers={"Cookie": cookie})
        self.assertEqual(response.code, 200)
        self.assertTrue(response.headers.getRawHeaders("Content-Type")[0].startswith("text/plain"))
        self.assertIn(b"# TYPE", body)

    async def test_health(self) -> None:
        """
        C{/healthz} and C{/readyz} answer without a login, and make no
        session.
        """
        self.serve()
        response, body = await self.fetch("/healthz")
        self.assertEqual((response.code, body), (200, b"ok\n"))
        response, body = await self.fetch("/readyz")
        self.assertEqual((response.code, body), (503, b"starting\n"))
        self.readiness.listening()
        response, body = await self.fetch("/readyz")
        self.assertEqual((response.code, body), (200, b"ready\n"))
        self.assertEqual(response.headers.getRawHeaders("Set-Cookie"), None)
        self.assertEqual(len(self.site.guard.sessions), 0)

    async def test_staticWithoutLogin(self) -> None:
        """
        C{/static/} reaches the app without a login, as a viewer who may
        read nothing.
        """
        self.serve()
        response, body = await self.fetch("/static/app.css")
        self.assertEqual(response.code, 200)
        self.assertEqual((json.loads(body)["name"], json.loads(body)["admin"]), (None, False))
