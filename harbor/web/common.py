# -*- test-case-name: harbor.test.test_web_pages -*-
"""
What the pages and the API share: the Maildirs a viewer may see, a
message looked up for them, and the answer to a Deferred rendering.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from harbor.store.browse import maildirs
from harbor.web.base import Viewer

__all__ = ["Answer", "answer", "jsonBody", "visibleAndShown", "visibleKeys", "writeJSON"]

_log = Logger()


def visibleKeys(root: str, viewer: Viewer, mailbox: str | None = None) -> frozenset[str] | None:
    """
    The keys of the Maildirs C{viewer} may see (L{None}: all), narrowed to
    C{mailbox} and those below it when one is asked for.  Blocking.
    """
    return visibleAndShown(root, viewer, mailbox)[1]


def visibleAndShown(
    root: str, viewer: Viewer, mailbox: str | None
) -> tuple[frozenset[str] | None, frozenset[str] | None]:
    """
    The keys C{viewer} may see, and of those the ones C{mailbox} shows (it
    and those below it; all of them without one), from one listing of the
    tree: a page needs both, for its tree and for its list.  Blocking.
    """
    keys = [folder.key for folder, _ in maildirs(root)]
    allowed = viewer.mailboxes(keys)
    if not mailbox:
        return allowed, allowed
    base = frozenset(keys) if allowed is None else allowed
    return allowed, frozenset(key for key in base if key == mailbox or key.startswith(mailbox + "/"))


def writeJSON(request: Request, value: Any, code: int = 200) -> bytes:
    """
    Answer C{request} with C{value} as JSON: the status and type set, the
    body returned as bytes, for a resource to return or L{answer} to write.
    """
    request.setResponseCode(code)
    request.setHeader(b"Content-Type", b"application/json")
    return json.dumps(value).encode("utf-8")


def jsonBody(request: Request) -> tuple[Any, bytes | None]:
    """
    The JSON value of a request's body, or the error answer (415 for a
    body that says it is not JSON, 400 for one that does not parse).
    """
    kind = (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
    if kind != b"application/json":
        return None, writeJSON(request, {"error": "the request body must be application/json"}, 415)
    content = request.content
    if content is None:
        return None, writeJSON(request, {"error": "the request has no body"}, 400)
    content.seek(0)
    try:
        return json.loads(content.read().decode("utf-8")), None
    except (ValueError, UnicodeDecodeError):
        return None, writeJSON(request, {"error": "the request body is not valid JSON"}, 400)


def answer(
    request: Request,
    d: Deferred[bytes],
    failed: Callable[[Request, Failure], bytes],
) -> object:
    """
    Write what C{d} gives as the response, or what C{failed} makes of its
    failure (logged, never shown: no traceback reaches the browser), and
    stop writing if the client went away meanwhile.
    """
    gone: list[bool] = []
    request.notifyFinish().addErrback(lambda _: gone.append(True))

    def fail(failure: Failure) -> bytes:
        _log.failure("rendering {uri} failed", failure, uri=request.uri)
        return failed(request, failure)

    def write(body: bytes) -> None:
        if not gone:
            request.write(body)
            request.finish()

    d.addErrback(fail).addCallback(write)
    return NOT_DONE_YET


class Answer(Resource):
    """
    A leaf that answers any method, whatever path is left, with what a
    function of the request returns (bytes, or L{NOT_DONE_YET}): the
    guard's refusals and own URLs, and the 404s of the app's trees.
    """

    isLeaf = True

    def __init__(self, respond: Callable[[Request], Any]) -> None:
        super().__init__()
        self._respond = respond

    def render(self, request: Request) -> Any:
        return self._respond(request)
