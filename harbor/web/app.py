# -*- test-case-name: harbor.test.test_web_pages -*-
"""
The web interface's pages, API and static files, as one resource tree
that the guard (L{harbor.web.site}) hands every request it let in.
"""

from __future__ import annotations

import os

from twisted.web.resource import Resource
from twisted.web.server import Request
from twisted.web.static import File

from harbor.web.api import apiResource
from harbor.web.base import WebContext
from harbor.web.messages import MessagesResource
from harbor.web.pages import IndexPage, notFound

__all__ = ["STATIC", "appResource"]

#: The directory of app.js and app.css, next to this module.
STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")


class _Root(Resource):
    # "" is the index; anything unknown is our 404 page.
    def getChild(self, path: bytes, request: Request) -> Resource:
        return _NotFound()


class _NotFound(Resource):
    isLeaf = True

    def render(self, request: Request) -> object:
        return notFound(request)


def _static() -> File:
    static = File(STATIC, defaultType="application/octet-stream")
    static.contentTypes = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}
    static.childNotFound = _NotFound()  # type: ignore[assignment]
    static.directoryListing = lambda: _NotFound()  # type: ignore[method-assign]
    return static


def appResource(context: WebContext) -> Resource:
    """
    The tree: C{""} (the index), C{m} (messages), C{api} (C{v1} below it)
    and C{static}.
    """
    root = _Root()
    root.putChild(b"", IndexPage(context))
    root.putChild(b"m", MessagesResource(context))
    root.putChild(b"api", apiResource(context))
    root.putChild(b"static", _static())
    return root
