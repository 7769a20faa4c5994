# -*- test-case-name: harbor.test.test_web_pages -*-
"""
The web interface's pages, API and static files, as one resource tree
that the guard (L{harbor.web.site}) hands every request it let in.
"""

from __future__ import annotations

import os

from twisted.web.resource import Resource
from twisted.web.server import Request
from twisted.web.static import Data

from harbor.web.api import apiResource
from harbor.web.base import WebContext
from harbor.web.common import Answer
from harbor.web.messages import MessagesResource
from harbor.web.pages import IndexPage, notFound

__all__ = ["STATIC", "STATIC_FILES", "appResource"]

#: The directory of app.js and app.css, next to this module.
STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")


class _Root(Resource):
    # "" is the index; anything unknown is our 404 page.
    def getChild(self, path: bytes, request: Request) -> Resource:
        return Answer(notFound)


#: The static files and their types: all there is under C{/static/}.
STATIC_FILES = {
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
}


def _static() -> Resource:
    """
    C{/static/}: the files of L{STATIC_FILES}, read once, as the tree is
    built at start, so that serving them never touches the disk from the
    reactor's thread; any other name is our 404.
    """
    static = _Root()
    for name, kind in STATIC_FILES.items():
        with open(os.path.join(STATIC, name), "rb") as f:
            static.putChild(name.encode("ascii"), Data(f.read(), kind))
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
