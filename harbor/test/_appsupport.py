"""
Helpers for the tests of the web interface's app (its pages, API and events,
below the guard): a real L{Site} on loopback whose
guard is a stand-in that lets every request in as the viewer a test
wants, and an Agent to talk to it.
"""

from __future__ import annotations

import json
import os
from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from harbor.web.app import appResource
from harbor.web.base import Viewer, WebContext, setViewer

__all__ = ["ADMIN", "CSRF", "TestGuard", "WebTestCase"]

CSRF = "test-csrf-token"
ADMIN = Viewer(None, True, (), CSRF)
HOST = "mx.example.com"


class TestGuard(Resource):
    """
    A guard for tests: every request is let in as C{viewer}, and handed
    to the app tree.
    """

    def __init__(self, app: Resource, viewer: Viewer) -> None:
        super().__init__()
        self.app = app
        self.viewer = viewer

    def getChildWithDefault(self, path: bytes, request: Request) -> Resource:
        setViewer(request, self.viewer)
        child: Resource = self.app.getChildWithDefault(path, request)
        return child


def messageID(seconds: int, count: int = 1) -> str:
    """
    A Maildir id as the server makes them.
    """
    return f"{seconds}.M123456P4242Q{count}.{HOST}"


def messageBytes(
    sender: str = "sender@x.org", recipient: str = "alice@example.net", subject: str = "Hello",
    extra: str = "", body: str = "Hi Alice,\nhow are you?\n",
) -> bytes:
    """
    A stored file as the server writes it.
    """
    return (
        f"Return-Path: <{sender}>\nDelivered-To: {recipient}\n"
        "Received: from client.x.org (client.x.org [192.0.2.1])\n"
        f"\tby {HOST} (MailHarbor) with ESMTPS (TLSv1.3 TLS_AES_256_GCM_SHA384); Fri, 22 Nov 2024 22:22:50 +0000\n"
        f"From: Sender <{sender}>\nTo: {recipient}\nSubject: {subject}\n"
        f"Date: Fri, 22 Nov 2024 22:22:50 +0000\n{extra}\n{body}"
    ).encode()


class _Bytes:
    # A body producer of a few bytes.
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.length = len(data)

    def startProducing(self, consumer: Any) -> Deferred[None]:
        consumer.write(self.data)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


class WebTestCase(TestCase):
    """
    A Maildir root, a hook spool, and the app served on loopback.
    """

    hooks: tuple[str, ...] = ()

    def setUp(self) -> None:
        from twisted.internet import reactor as _reactor

        self.reactor = _reactor
        self.root = os.path.abspath(self.mktemp())
        os.makedirs(self.root)
        self.spool = os.path.join(self.root, ".hooks")
        self.pool = ThreadPool(minthreads=1, maxthreads=4, name="web-test")
        self.pool.start()
        self.addCleanup(self.pool.stop)
        self.context = WebContext(self.root, self.spool, self.hooks, _reactor, self.pool, _reactor.seconds)
        self.app = appResource(self.context)
        self.guard = TestGuard(self.app, ADMIN)
        self.port = _reactor.listenTCP(0, Site(self.guard), interface="127.0.0.1")  # type: ignore[arg-type]
        self.addCleanup(self.port.stopListening)
        self.connections = HTTPConnectionPool(_reactor, persistent=False)
        self.addCleanup(self.connections.closeCachedConnections)
        self.agent = Agent(_reactor, pool=self.connections)
        self.base = f"http://127.0.0.1:{self.port.getHost().port}"  # type: ignore[attr-defined]

    def maildir(self, key: str) -> str:
        """
        Make an empty Maildir for C{key}.
        """
        path = os.path.join(self.root, key)
        for sub in ("tmp", "new", "cur"):
            os.makedirs(os.path.join(path, sub), exist_ok=True)
        return path

    def deliver(self, key: str, identifier: str, content: bytes | None = None, sub: str = "new", flags: str | None = None) -> str:
        """
        Store a message as the server (or, with flags, a reader) names it.
        """
        self.maildir(key)
        data = messageBytes() if content is None else content
        filename = f"{identifier},S={len(data)}" + ("" if flags is None else f":2,{flags}")
        path = os.path.join(self.root, key, sub, filename)
        with open(path, "wb") as f:
            f.write(data)
        return path

    def viewAs(self, viewer: Viewer) -> None:
        """
        Let the following requests in as C{viewer}.
        """
        self.guard.viewer = viewer

    @inlineCallbacks
    def request(
        self,
        path: str,
        method: bytes = b"GET",
        body: bytes | None = None,
        contentType: bytes | None = None,
        extra: dict[bytes, bytes] | None = None,
    ) -> Any:
        """
        Make a request, with C{extra} headers; its response and body.
        """
        headers = Headers({})
        for name, value in (extra or {}).items():
            headers.addRawHeader(name, value)
        if contentType is not None:
            headers.addRawHeader(b"Content-Type", contentType)
        producer: IBodyProducer | None = None if body is None else _Bytes(body)  # type: ignore[assignment]
        response = yield self.agent.request(method, (self.base + path).encode("ascii"), headers, producer)
        data = yield readBody(response)
        return response, data

    @inlineCallbacks
    def getJSON(self, path: str, method: bytes = b"GET", value: Any = None) -> Any:
        """
        Make an API request, with C{value} as its JSON body; the response
        and its JSON.
        """
        body = None if value is None else json.dumps(value).encode()
        response, data = yield self.request(path, method, body, b"application/json" if body is not None else None)
        return response, json.loads(data)
