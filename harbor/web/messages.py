# -*- test-case-name: harbor.test.test_web_pages -*-
"""
C{/m/ID} and below: one message's page, its sanitized HTML, its raw
bytes, its parts, and the forms that mark it seen or unseen, delete it
and retry its dead hook jobs.

An id from the URL is looked up among the names listed in the viewer's
Maildirs (L{harbor.store.browse.findFile}), never joined into a path;
one unknown and one not granted get the same 404.
"""

from __future__ import annotations

import time
from typing import Any, BinaryIO

from twisted.internet.defer import Deferred
from twisted.web.resource import Resource
from twisted.web.server import Request
from twisted.web.template import Tag, tags

from attrs import evolve, frozen

from harbor.hooks.spool import HookSpool, HookStatus
from harbor.store.browse import findFile, findSummary, setSeen
from harbor.store.reader import MessageFile, StoreError, deleteMessage
from harbor.store.reader import markSeen as markMessageSeen
from harbor.store.summaries import Summary, isoTime, openMessage
from harbor.web.base import Viewer, WebContext, viewerOf
from harbor.web.common import answer, visibleKeys
from harbor.web.pages import errorPage, failedPage, humanSize, layout, notFound, render
from harbor.web.render import (
    MessageView,
    Part,
    downloadHeaders,
    htmlDocument,
    htmlHeaders,
    partContent,
    readHTML,
    readMessage,
)
from harbor.web.timeline import Timeline, timelineOf

__all__ = ["HIDDEN_ERROR", "MessageDetail", "MessagesResource", "opensAsReader", "readDetail", "readPart", "readRaw"]

#: What a viewer who is not an admin sees of a hook job's error.
HIDDEN_ERROR = "failed (admins see the error)"

#: The iframe's sandbox: no script, an opaque origin; links open in a new tab.
SANDBOX = "allow-popups allow-popups-to-escape-sandbox"


@frozen
class MessageDetail:
    """
    Everything a message's page or the API shows of it.
    """

    message: MessageFile
    summary: Summary
    view: MessageView
    timeline: Timeline
    hooks: tuple[HookStatus, ...]


def readDetail(context: WebContext, viewer: Viewer, identifier: str, markSeen: bool) -> MessageDetail | None:
    """
    Find, read and take apart a message the viewer may see, marking it
    seen if asked (as a mail reader does when it is opened).  Blocking.

    @return: The detail, or L{None} when there is no such message for them.
    """
    keys = visibleKeys(context.maildir, viewer)
    found = findSummary(context.maildir, identifier, keys)
    if found is None:
        return None
    message, summary = found
    if markSeen and not summary.seen:
        try:
            message = markMessageSeen(message)
        except StoreError:
            pass
    with openMessage(message.path) as f:
        view = readMessage(f)
    hooks = HookSpool(context.hookSpool).statusOf(message.name.id, context.hooks)
    if not viewer.admin:
        # A hook's error names its webhook's URL, secret token and all,
        # or a command's output: the hooks are the operator's, not the
        # mailbox owner's.
        hooks = [evolve(status, error=HIDDEN_ERROR) if status.error else status for status in hooks]
    return MessageDetail(message, summary, view, timelineOf(view.headers), tuple(hooks))


def opensAsReader(request: Request) -> bool:
    """
    Whether a request for a message's page is its reader opening it, which
    marks it seen: a C{GET} (not a C{HEAD}, which shows nothing) that no
    other site's page made (an C{<img>} of another site, C{Sec-Fetch-Site:
    cross-site}, must not mark mail read; without a login there is no
    cookie to stop it).
    """
    site = (request.getHeader(b"sec-fetch-site") or b"").lower()
    return request.method == b"GET" and site not in (b"cross-site", b"same-site")


def readRaw(context: WebContext, viewer: Viewer, identifier: str) -> bytes | None:
    """
    The stored bytes of a message the viewer may see, or L{None}.  Blocking.
    """
    f = _open(context, viewer, identifier)
    if f is None:
        return None
    with f:
        return f.read()


def readPart(context: WebContext, viewer: Viewer, identifier: str, index: int) -> tuple[Part, bytes] | None:
    """
    One leaf part of a message the viewer may see (L{partContent}), or
    L{None}.  Blocking.
    """
    f = _open(context, viewer, identifier)
    if f is None:
        return None
    with f:
        return partContent(f, index)


def _open(context: WebContext, viewer: Viewer, identifier: str) -> BinaryIO | None:
    """
    A message the viewer may see, opened for reading; L{None} if there is
    none, if it went since it was listed, or if it is not a message (a
    planted symbolic link, which L{openMessage} refuses to follow).
    """
    message = _find(context, viewer, identifier)
    if message is None:
        return None
    try:
        return openMessage(message.path)
    except OSError:
        return None


def _find(context: WebContext, viewer: Viewer, identifier: str) -> MessageFile | None:
    # Found by its name among the Maildirs the viewer may see; nothing is
    # opened (the callers read, rename or delete it themselves).
    return findFile(context.maildir, identifier, visibleKeys(context.maildir, viewer))


class MessagesResource(Resource):
    """
    C{/m}: one child per message id.
    """

    def __init__(self, context: WebContext) -> None:
        super().__init__()
        self._context = context

    def getChild(self, path: bytes, request: Request) -> Resource:
        """
        The message's resource; the id is only looked up, later.
        """
        try:
            identifier = path.decode("utf-8")
        except UnicodeDecodeError:
            identifier = ""
        return MessageResource(self._context, identifier)

    def render(self, request: Request) -> object:
        """
        C{/m} itself is not a page.
        """
        return notFound(request)


class MessageResource(Resource):
    """
    C{/m/ID} and what is below it.
    """

    isLeaf = True

    def __init__(self, context: WebContext, identifier: str) -> None:
        super().__init__()
        self._context = context
        self._id = identifier

    def render(self, request: Request) -> object:
        """
        Dispatch on what follows the id and the method.
        """
        rest = [part.decode("utf-8", "replace") for part in request.postpath or []]
        method = request.method
        if rest in ([], [""]) and method in (b"GET", b"HEAD"):
            return self._page(request)
        if rest == ["html"] and method in (b"GET", b"HEAD"):
            return self._html(request)
        if rest == ["raw"] and method in (b"GET", b"HEAD"):
            return self._raw(request)
        if len(rest) == 2 and rest[0] == "part" and rest[1].isdigit() and method in (b"GET", b"HEAD"):
            return self._part(request, int(rest[1]))
        if rest == ["seen"] and method == b"POST":
            return self._seen(request)
        if rest == ["delete"] and method in (b"GET", b"HEAD"):
            return self._confirmDelete(request)
        if rest == ["delete"] and method == b"POST":
            return self._delete(request)
        if rest == ["retry"] and method == b"POST":
            return self._retry(request)
        if rest and rest[0] in ("seen", "delete", "retry", "html", "raw", "part", ""):
            request.setResponseCode(405)
            return answer(request, errorPage(request, 405, "Not allowed", "That method is not allowed here."), failedPage)
        return notFound(request)

    def _arg(self, request: Request, name: str) -> str:
        values = (request.args or {}).get(name.encode("ascii")) or [b""]
        return str(values[0].decode("utf-8", "replace"))

    def _page(self, request: Request) -> object:
        viewer = viewerOf(request)
        images = self._arg(request, "images") == "1"
        d = self._context.inThread(readDetail, self._context, viewer, self._id, opensAsReader(request))

        def show(detail: MessageDetail | None) -> Deferred[bytes]:
            if detail is None:
                return errorPage(request, 404, "Not found", "There is nothing here.")
            return render(request, self._document(request, viewer, detail, images))

        return answer(request, d.addCallback(show), failedPage)

    def _document(self, request: Request, viewer: Viewer, detail: MessageDetail, images: bool) -> Tag:
        view, summary = detail.view, detail.summary
        mid = detail.message.name.id
        base = "/m/" + mid
        csrf = tags.input(type="hidden", name="csrf", value=viewer.csrf)
        seen = detail.message.seen
        actions = tags.div(class_="actions")(
            tags.form(id="seen", method="post", action=base + "/seen")(
                csrf.clone(),
                tags.input(type="hidden", name="seen", value="0" if seen else "1"),
                tags.button("Mark unread" if seen else "Mark read", type="submit"),
            ),
            tags.a("Delete", href=base + "/delete", id="delete"),
        )
        summaryList = tags.dl(class_="summary")(
            tags.dt("From"), tags.dd(view.fromHeader, class_="from"),
            tags.dt("To"), tags.dd(view.toHeader, class_="to"),
            tags.dt("Delivered to"), tags.dd(summary.recipient or "", class_="recipient"),
            tags.dt("Envelope sender"), tags.dd(summary.sender if summary.sender is not None else "", class_="sender"),
            tags.dt("Date"), tags.dd(view.date or "", class_="date"),
            tags.dt("Delivered"), tags.dd(isoTime(summary.delivered), class_="delivered"),
            tags.dt("Mailbox"), tags.dd(summary.mailbox, class_="mailbox"),
            tags.dt("Size"), tags.dd(humanSize(summary.size), class_="size"),
        )
        body: list[Any] = [tags.h1(view.subject or "(no subject)", id="subject"), summaryList, actions]
        if view.problems:
            body.append(tags.ul(id="problems")(*[tags.li(problem) for problem in view.problems]))
        if view.html is not None:
            source = base + "/html" + ("?images=1" if images else "")
            body.append(
                tags.section(id="html")(
                    tags.h2("HTML"),
                    tags.p(
                        tags.a("Images shown", href=base, id="load-images", class_="on")
                        if images
                        else tags.a("Load remote images", href=base + "?images=1", id="load-images")
                    ),
                    tags.iframe(id="html-frame", sandbox=SANDBOX, src=source, title="The message's HTML"),
                )
            )
        body.append(tags.section(tags.h2("Text"), tags.pre(view.text or ""), id="text"))
        headers = tags.table(class_="headers")(*[tags.tr(tags.th(name), tags.td(value)) for name, value in view.headers])
        body.append(tags.section(tags.h2("Headers"), headers, id="headers"))
        body.append(tags.section(tags.h2("Raw"), tags.p(tags.a("Raw message", href=base + "/raw", id="raw")), id="raw-view"))
        parts = tags.ul()
        for part in view.parts:
            if part.attachment:
                parts(
                    tags.li(
                        tags.a(part.filename or f"part {part.index + 1}", href=f"{base}/part/{part.index}", class_="part"),
                        " ", tags.span(part.contentType, class_="type"), " ", tags.span(humanSize(part.size), class_="size"),
                    )
                )
        body.append(tags.section(tags.h2("Attachments"), parts, id="attachments"))
        body.append(self._timeline(detail.timeline))
        body.append(self._hooks(base, viewer, detail.hooks))
        return layout(request, view.subject or "(no subject)", *body)

    def _timeline(self, timeline: Timeline) -> Tag:
        hops = tags.ol(class_="hops")
        for hop in timeline.hops:
            tls = " ".join(x for x in (hop.tlsVersion, hop.cipher) if x) or "no TLS named"
            hops(
                tags.li(class_="hop")(
                    tags.span(hop.fromHost or "?", class_="from-host"), " ",
                    tags.span(hop.fromIP or "", class_="ip"), " \u2192 ",
                    tags.span(hop.byHost or "?", class_="by-host"), " ",
                    tags.span(hop.protocol or "", class_="protocol"), " ",
                    tags.span(tls, class_="tls"), " ",
                    tags.span("" if hop.delay is None else f"+{hop.delay:g} s", class_="delay"),
                )
            )
        return tags.section(id="timeline")(
            tags.h2("Timeline"),
            tags.p("Return-Path: ", tags.span(timeline.returnPath or "", class_="return-path")),
            tags.p("Delivered-To: ", tags.span(", ".join(timeline.deliveredToAll) or (timeline.deliveredTo or ""), class_="delivered-to")),
            hops,
        )

    def _hooks(self, base: str, viewer: Viewer, statuses: tuple[HookStatus, ...]) -> Tag:
        items = tags.ul(class_="hooks")
        for status in statuses:
            item = tags.li(class_="hook", **{"data-hook": status.hook, "data-state": status.state})(
                tags.span(status.hook, class_="name"), " ", tags.span(status.state, class_="state"),
                " ", tags.span(f"{status.attempts} attempts", class_="attempts"),
            )
            if status.nextAttempt is not None:
                item(" ", tags.span("next try " + isoTime(status.nextAttempt), class_="next"))
            if status.error:
                item(" ", tags.span(status.error, class_="error"))
            if status.state == "dead":
                item(
                    tags.form(class_="retry", method="post", action=base + "/retry")(
                        tags.input(type="hidden", name="hook", value=status.hook),
                        tags.input(type="hidden", name="csrf", value=viewer.csrf),
                        tags.button("Retry", type="submit"),
                    )
                )
            items(item)
        return tags.section(tags.h2("Hooks"), items, id="hooks")

    def _html(self, request: Request) -> object:
        viewer = viewerOf(request)
        images = self._arg(request, "images") == "1"

        def read() -> bytes | None:
            f = _open(self._context, viewer, self._id)
            if f is None:
                return None
            with f:
                _, safe = readHTML(f, images)
            return None if safe is None else htmlDocument(safe)

        def show(document: bytes | None) -> Any:
            if document is None:
                return errorPage(request, 404, "Not found", "There is nothing here.")
            for name, value in htmlHeaders(images):
                request.setHeader(name, value)
            request.setHeader(b"X-Frame-Options", b"SAMEORIGIN")
            return document

        return answer(request, self._context.inThread(read).addCallback(show), failedPage)

    def _raw(self, request: Request) -> object:
        d = self._context.inThread(readRaw, self._context, viewerOf(request), self._id)

        def show(data: bytes | None) -> Any:
            if data is None:
                return errorPage(request, 404, "Not found", "There is nothing here.")
            rawHeaders(request)
            return data

        return answer(request, d.addCallback(show), failedPage)

    def _part(self, request: Request, index: int) -> object:
        d = self._context.inThread(readPart, self._context, viewerOf(request), self._id, index)

        def show(found: Any) -> Any:
            if found is None:
                return errorPage(request, 404, "Not found", "There is nothing here.")
            part, data = found
            for name, value in downloadHeaders(part):
                request.setHeader(name, value)
            return data

        return answer(request, d.addCallback(show), failedPage)

    def _seen(self, request: Request) -> object:
        viewer = viewerOf(request)
        seen = self._arg(request, "seen") != "0"
        d = self._context.inThread(changeSeen, self._context, viewer, self._id, seen)
        # Back to the list once unread: the message's page would mark it seen again.
        where = "/m/" + self._id if seen else "/"
        return answer(request, d.addCallback(lambda found: self._back(request, found, where)), failedPage)

    def _confirmDelete(self, request: Request) -> object:
        viewer = viewerOf(request)
        d = self._context.inThread(_find, self._context, viewer, self._id)

        def show(message: MessageFile | None) -> Deferred[bytes]:
            if message is None:
                return errorPage(request, 404, "Not found", "There is nothing here.")
            form = tags.form(id="confirm-delete", method="post", action=f"/m/{message.name.id}/delete")(
                tags.input(type="hidden", name="csrf", value=viewer.csrf),
                tags.button("Delete it", type="submit"),
            )
            return render(request, layout(request, "Delete?", tags.h1("Delete this message?"),
                                          tags.p("It is removed from its Maildir for good."), form,
                                          tags.p(tags.a("Keep it", href=f"/m/{message.name.id}"))))

        return answer(request, d.addCallback(show), failedPage)

    def _delete(self, request: Request) -> object:
        viewer = viewerOf(request)
        d = self._context.inThread(removeMessage, self._context, viewer, self._id)
        return answer(request, d.addCallback(lambda found: self._back(request, found, "/")), failedPage)

    def _retry(self, request: Request) -> object:
        viewer = viewerOf(request)
        hook = self._arg(request, "hook")
        d = self._context.inThread(retryHook, self._context, viewer, self._id, hook)
        return answer(request, d.addCallback(lambda found: self._back(request, found, "/m/" + self._id)), failedPage)

    def _back(self, request: Request, found: object, where: str) -> Any:
        if found is None:
            return errorPage(request, 404, "Not found", "There is nothing here.")
        request.setResponseCode(303)
        request.setHeader(b"Location", where.encode("utf-8"))
        return b""


def rawHeaders(request: Request) -> None:
    """
    The headers of a raw message: text, never sniffed, shown inline.
    """
    request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
    request.setHeader(b"X-Content-Type-Options", b"nosniff")
    request.setHeader(b"Content-Disposition", b"inline")


def changeSeen(context: WebContext, viewer: Viewer, identifier: str, seen: bool) -> MessageFile | None:
    """
    Mark a message the viewer may see seen or unseen.  Blocking.

    @return: Where it is now, or L{None} if there is no such message.
    """
    try:
        return setSeen(context.maildir, identifier, seen, visibleKeys(context.maildir, viewer))
    except StoreError:
        return None


def removeMessage(context: WebContext, viewer: Viewer, identifier: str) -> str | None:
    """
    Delete a message the viewer may see.  Blocking.

    @return: Its id, or L{None} if there is no such message.
    """
    message = _find(context, viewer, identifier)
    if message is None:
        return None
    deleteMessage(message)
    return message.name.id


def retryHook(context: WebContext, viewer: Viewer, identifier: str, hook: str) -> str | None:
    """
    Put a message's dead job for C{hook} back in the queue.  Blocking.

    @return: The job's id, or L{None} if there is no such message or dead
        job.
    """
    message = _find(context, viewer, identifier)
    if message is None:
        return None
    jobID = f"{message.name.id},{hook}"
    try:
        HookSpool(context.hookSpool).revive(jobID, time.time())
    except (KeyError, OSError):
        return None
    return jobID
