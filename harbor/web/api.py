# -*- test-case-name: harbor.test.test_web_api -*-
"""
The JSON API under C{/api/v1}: everything the pages show, for scripts
and for app.js.  Errors are C{{"error": text}} with their status.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import Request

from harbor.store.browse import PAGE_SIZE, listPage, mailboxTree
from harbor.store.search import SearchError, parseQuery
from harbor.web.base import WebContext, viewerOf
from harbor.web.common import Answer, answer, jsonBody, visibleKeys, writeJSON
from harbor.web.events import EventsResource, Poller
from harbor.web.messages import (
    changeSeen,
    rawHeaders,
    readDetail,
    readPart,
    readRaw,
    removeMessage,
    retryHook,
)
from harbor.web.render import Part, downloadHeaders

__all__ = ["apiResource"]

MAX_LIMIT = 200
DEFAULT_LIMIT = PAGE_SIZE


def _failed(request: Request, failure: Failure) -> bytes:
    return writeJSON(request, {"error": "the server could not answer; its log says why"}, 500)


def _notFound(request: Request) -> bytes:
    return writeJSON(request, {"error": "not found"}, 404)


def _arg(request: Request, name: str) -> str | None:
    values = request.args.get(name.encode("ascii"))
    return None if not values else values[0].decode("utf-8", "replace")


class _JSONResource(Resource):
    # A leaf answering with JSON; unknown methods get a JSON 405.
    isLeaf = True

    def __init__(self, context: WebContext) -> None:
        super().__init__()
        self._context = context

    def render(self, request: Request) -> object:
        handler = getattr(self, "json_" + request.method.decode("ascii", "replace"), None)
        if handler is None:
            return writeJSON(request, {"error": "method not allowed"}, 405)
        return handler(request)


class _Mailboxes(_JSONResource):
    def json_GET(self, request: Request) -> object:
        viewer = viewerOf(request)
        root = self._context.maildir
        d = self._context.inThread(lambda: mailboxTree(root, visibleKeys(root, viewer)))
        return answer(request, d.addCallback(lambda tree: writeJSON(request, {"mailboxes": [f.asJSON() for f in tree]})), _failed)


class _Stats(_JSONResource):
    def json_GET(self, request: Request) -> object:
        viewer = viewerOf(request)
        context = self._context

        def read() -> dict[str, Any]:
            tree = mailboxTree(context.maildir, visibleKeys(context.maildir, viewer))
            hooks = {"pending": 0, "dead": 0}
            if viewer.admin:
                for state in hooks:
                    try:
                        hooks[state] = sum(1 for n in os.listdir(os.path.join(context.hookSpool, state)) if n.endswith(".json"))
                    except OSError:
                        pass
            return {
                "mailboxes": len(tree),
                "messages": sum(f.total for f in tree),
                "unread": sum(f.unread for f in tree),
                "hooks": hooks,
            }

        return answer(request, context.inThread(read).addCallback(lambda v: writeJSON(request, v)), _failed)


class _Messages(_JSONResource):
    isLeaf = True

    def render(self, request: Request) -> object:
        rest = [part.decode("utf-8", "replace") for part in request.postpath or []]
        if rest in ([], [""]):
            return super().render(request)
        identifier, rest = rest[0], rest[1:]
        method = request.method
        if not rest and method == b"GET":
            return self._message(request, identifier)
        if not rest and method == b"DELETE":
            return self._delete(request, identifier)
        if rest == ["raw"] and method == b"GET":
            return self._raw(request, identifier)
        if len(rest) == 2 and rest[0] == "parts" and rest[1].isdigit() and method == b"GET":
            return self._part(request, identifier, int(rest[1]))
        if rest == ["seen"] and method == b"POST":
            return self._seen(request, identifier)
        if len(rest) == 3 and rest[0] == "hooks" and rest[2] == "retry" and method == b"POST":
            return self._retry(request, identifier, rest[1])
        known = (not rest) or rest[0] in ("raw", "seen") or (rest[0] in ("parts", "hooks") and len(rest) in (2, 3))
        if known:
            return writeJSON(request, {"error": "method not allowed"}, 405)
        return _notFound(request)

    def json_GET(self, request: Request) -> object:
        limitText = _arg(request, "limit")
        try:
            limit = DEFAULT_LIMIT if limitText is None else int(limitText)
        except ValueError:
            limit = 0
        if not 1 <= limit <= MAX_LIMIT:
            return writeJSON(request, {"error": f"limit must be a whole number from 1 to {MAX_LIMIT}"}, 400)
        viewer = viewerOf(request)
        root = self._context.maildir
        mailbox, text, cursor = _arg(request, "mailbox"), _arg(request, "q") or "", _arg(request, "cursor") or None

        def read() -> tuple[int, dict[str, Any]]:
            try:
                query = parseQuery(text)
                page = listPage(root, visibleKeys(root, viewer, mailbox), query, cursor, limit)
            except SearchError as e:
                return 400, {"error": str(e)}
            return 200, page.asJSON()

        d = self._context.inThread(read)
        return answer(request, d.addCallback(lambda result: writeJSON(request, result[1], result[0])), _failed)

    def _message(self, request: Request, identifier: str) -> object:
        d = self._context.inThread(readDetail, self._context, viewerOf(request), identifier, False)

        def show(detail: Any) -> bytes:
            if detail is None:
                return _notFound(request)
            return writeJSON(request, {
                "summary": detail.summary.asJSON(),
                "message": detail.view.asJSON(),
                "timeline": detail.timeline.asJSON(),
                "hooks": [
                    {"hook": s.hook, "jobID": s.jobID, "state": s.state, "attempts": s.attempts,
                     "nextAttempt": s.nextAttempt, "error": s.error}
                    for s in detail.hooks
                ],
            })

        return answer(request, d.addCallback(show), _failed)

    def _raw(self, request: Request, identifier: str) -> object:
        d = self._context.inThread(readRaw, self._context, viewerOf(request), identifier)

        def show(data: bytes | None) -> bytes:
            if data is None:
                return _notFound(request)
            rawHeaders(request)
            return data

        return answer(request, d.addCallback(show), _failed)

    def _part(self, request: Request, identifier: str, index: int) -> object:
        d = self._context.inThread(readPart, self._context, viewerOf(request), identifier, index)

        def show(found: tuple[Part, bytes] | None) -> bytes:
            if found is None:
                return _notFound(request)
            part, data = found
            for name, value in downloadHeaders(part):
                request.setHeader(name, value)
            return bytes(data)

        return answer(request, d.addCallback(show), _failed)

    def _seen(self, request: Request, identifier: str) -> object:
        value, error = jsonBody(request)
        if error is not None:
            return error
        if not isinstance(value, dict) or not isinstance(value.get("seen"), bool):
            return writeJSON(request, {"error": 'the body must be {"seen": true} or {"seen": false}'}, 400)
        seen = value["seen"]
        d = self._context.inThread(changeSeen, self._context, viewerOf(request), identifier, seen)
        return answer(request, d.addCallback(
            lambda m: _notFound(request) if m is None else writeJSON(request, {"id": m.name.id, "seen": m.seen})
        ), _failed)

    def _delete(self, request: Request, identifier: str) -> object:
        d = self._context.inThread(removeMessage, self._context, viewerOf(request), identifier)
        return answer(request, d.addCallback(
            lambda i: _notFound(request) if i is None else writeJSON(request, {"deleted": i})
        ), _failed)

    def _retry(self, request: Request, identifier: str, hook: str) -> object:
        d = self._context.inThread(retryHook, self._context, viewerOf(request), identifier, hook)
        return answer(request, d.addCallback(
            lambda j: _notFound(request) if j is None else writeJSON(request, {"retried": j})
        ), _failed)


class _API(Resource):
    def getChild(self, path: bytes, request: Request) -> Resource:
        return Answer(_notFound)

    def render(self, request: Request) -> bytes:
        return _notFound(request)


def apiResource(context: WebContext, poller: Poller | None = None) -> Resource:
    """
    The resource of C{/api}, with C{v1} below it.
    """
    v1 = _API()
    v1.putChild(b"mailboxes", _Mailboxes(context))
    v1.putChild(b"messages", _Messages(context))
    v1.putChild(b"stats", _Stats(context))
    v1.putChild(b"events", EventsResource(context, poller or Poller(context)))
    api = _API()
    api.putChild(b"v1", v1)
    return api
