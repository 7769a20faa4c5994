"""
A real web interface site on a loopback port, and an HTTP client for it
(L{twisted.web.client.Agent}), for the tests of the guard and the logins.

The app behind the guard is a stand-in: it answers with the viewer the
guard set, as JSON, so a test sees who the guard let in.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from io import BytesIO
from typing import Any

from zope.interface import implementer

from twisted.internet import reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.protocol import Factory
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer, IPolicyForHTTPS, IResponse
from twisted.web.resource import NoResource, Resource
from twisted.web.server import Request

from harbor.auth import UsersFileChecker, hashPassword
from harbor.config import WebConfig
from harbor.health import Readiness
from harbor.metrics import Metrics, MetricsResource
from harbor.web.base import WebContext, viewerOf
from harbor.web.site import WebSite, webSite

PASSWORD = "correct horse"


class EchoViewer(Resource):
    """
    The stand-in app: C{/boom} raises, C{/missing} is a 404, anything else
    answers with the viewer, the method and the path as JSON.
    """

    isLeaf = True

    def render(self, request: Request) -> bytes:
        path = request.path.decode()
        if path == "/boom":
            raise RuntimeError("the app broke")
        if path == "/missing":
            return NoResource().render(request)  # type: ignore[no-any-return]
        viewer = viewerOf(request)
        request.setHeader(b"Content-Type", b"application/json")
        return json.dumps(
            {
                "name": viewer.name,
                "admin": viewer.admin,
                "grants": list(viewer.grants),
                "csrf": viewer.csrf,
                "method": request.method.decode(),
                "path": path,
            }
        ).encode()


class EchoApp(Resource):
    def getChild(self, path: bytes, request: Request) -> Resource:
        return EchoViewer()


@implementer(IBodyProducer)
class ChunkedBody:
    """
    A body of unknown length, so that the Agent sends it chunked.
    """

    length = UNKNOWN_LENGTH

    def __init__(self, data: bytes, size: int = 8192) -> None:
        self._chunks = [data[i : i + size] for i in range(0, len(data), size)]

    def startProducing(self, consumer: Any) -> Deferred[None]:
        for chunk in self._chunks:
            consumer.write(chunk)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


@implementer(IPolicyForHTTPS)
class TrustCA:
    """
    Trust only the test CA's certificates.
    """

    def __init__(self, caPath: str) -> None:
        with open(caPath, "rb") as f:
            self._ca = Certificate.loadPEM(f.read())

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        return optionsForClientTLS(hostname.decode(), trustRoot=self._ca)


class WebTestCase(TestCase):
    """
    A test case that serves the guard on loopback.
    """

    def serve(
        self,
        web: WebConfig | None = None,
        users: bool = True,
        clock: Clock | None = None,
        tls: tuple[str, str, str] | None = None,
    ) -> WebSite:
        """
        Serve a site; C{self.base} is its URL, C{self.agent} a client.

        @param users: Whether there is a users file (alice, bob and carol,
            all with L{PASSWORD}).
        @param tls: The CA, certificate and key paths, to serve TLS.
        """
        web = web or WebConfig("tcp:0:interface=127.0.0.1", admins=("alice",), access=(("bob", ("example.net/bob",)),))
        root = os.path.abspath(self.mktemp())
        os.makedirs(root)
        self.clock = clock or Clock()
        context = WebContext(root, os.path.join(root, ".hooks"), (), reactor, reactor.getThreadPool(), self.clock.seconds)  # type: ignore[attr-defined]
        checker = None
        if users:
            path = os.path.join(root, "users")
            hashed = hashPassword(PASSWORD)
            with open(path, "w") as f:
                f.write("".join(f"{name}:{hashed}\n" for name in ("alice", "bob", "carol")))
            checker = UsersFileChecker(path, context.inThread)
        self.metrics = Metrics()
        self.readiness = Readiness()
        site = webSite(web, context, EchoApp(), self.readiness, MetricsResource(self.metrics), checker, tls is not None)
        factory: Factory = site  # type: ignore[assignment]
        scheme = "http"
        contextFactory: Any = None
        if tls is not None:
            from twisted.protocols.tls import TLSMemoryBIOFactory

            from harbor.tls import loadCertificateOptions

            factory = TLSMemoryBIOFactory(loadCertificateOptions(tls[1], tls[2]), False, site)  # type: ignore[assignment]
            scheme = "https"
            contextFactory = TrustCA(tls[0])
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[arg-type]
        self.addCleanup(port.stopListening)
        self.port: int = port.getHost().port  # type: ignore[attr-defined]
        self.base = f"{scheme}://127.0.0.1:{self.port}"
        self.origin = self.base
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(pool.closeCachedConnections)
        if contextFactory is not None:
            self.agent = Agent(reactor, contextFactory=contextFactory, pool=pool)
        else:
            self.agent = Agent(reactor, pool=pool)
        self.site = site
        return site

    async def fetch(
        self,
        path: str,
        method: bytes = b"GET",
        headers: Mapping[str, str | list[str]] | None = None,
        body: bytes | None = None,
        chunked: bool = False,
        base: str | None = None,
    ) -> tuple[IResponse, bytes]:
        """
        Make a request and read its whole answer.
        """
        raw = Headers()
        for name, value in (headers or {}).items():
            raw.setRawHeaders(name, value if isinstance(value, list) else [value])
        producer: Any = None
        if body is not None:
            producer = ChunkedBody(body) if chunked else FileBodyProducer(BytesIO(body))
        response = await self.agent.request(method, ((base or self.base) + path).encode(), raw, producer)
        data = await readBody(response)
        return response, data

    async def logIn(self, user: str = "alice", password: str = PASSWORD) -> tuple[str, str]:
        """
        Log in through the API.

        @return: The session cookie (C{harbor_session=...}) and CSRF token.
        """
        response, data = await self.fetch(
            "/api/v1/login",
            b"POST",
            {"Origin": self.origin, "Content-Type": "application/json"},
            json.dumps({"user": user, "password": password}).encode(),
        )
        self.assertEqual(response.code, 200, data)
        return cookieOf(response), json.loads(data)["csrf"]


def cookieOf(response: IResponse) -> str:
    """
    The C{name=value} of the session cookie a response sets.
    """
    for header in response.headers.getRawHeaders("Set-Cookie", []):
        if header.startswith("harbor_session="):
            return str(header.split(";")[0])
    raise AssertionError("no session cookie set")


def setCookie(response: IResponse) -> str:
    """
    The whole C{Set-Cookie} header of the session cookie.
    """
    for header in response.headers.getRawHeaders("Set-Cookie", []):
        if header.startswith("harbor_session="):
            return str(header)
    raise AssertionError("no session cookie set")
