# -*- test-case-name: harbor.test.test_web_pages -*-
"""
The HTML pages of the web interface: the layout every page shares, and
the index (the tree of Maildirs and a page of messages).

Pages are made of L{twisted.web.template} tags, which escape every string
by construction; no page carries an inline script or style, so the
guard's Content-Security-Policy (C{script-src 'self'}) holds.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import Request
from twisted.web.template import Tag, flattenString, tags

from harbor.health import plainText
from harbor.store.browse import Page, listPage, mailboxTree
from harbor.store.search import SearchError, parseQuery
from harbor.store.summaries import Summary, isoTime
from harbor.web.base import WebContext, viewerOf
from harbor.web.common import answer, visibleAndShown

__all__ = ["IndexPage", "errorPage", "layout", "messageRow", "render"]


def layout(request: Request, title: str, *body: Any) -> Tag:
    """
    A whole page: the CSRF token for app.js, our own style sheet and
    script, and C{body}.
    """
    return tags.html(lang="en")(
        tags.head(
            tags.meta(charset="utf-8"),
            tags.meta(name="viewport", content="width=device-width, initial-scale=1"),
            tags.meta(name="csrf-token", content=viewerOf(request).csrf),
            tags.title(title, " - MailHarbor"),
            tags.link(rel="stylesheet", href="/static/app.css"),
            tags.script(src="/static/app.js", defer="defer"),
        ),
        tags.body(**{"data-live": "closed"})(tags.header(tags.a("MailHarbor", href="/", class_="home"), _account(request)), Tag("main")(*body)),
    )


def _account(request: Request) -> Tag | str:
    """
    Who is logged in, and the button that logs them out (a POST with the
    CSRF token, as every change); nothing when there are no users.
    """
    viewer = viewerOf(request)
    if viewer.name is None:
        return ""
    return tags.form(id="logout", method="post", action="/logout")(
        tags.span(viewer.name, class_="user"),
        " ",
        tags.input(type="hidden", name="csrf", value=viewer.csrf),
        tags.button("Log out", type="submit"),
    )


def render(request: Request, tag: Tag, code: int = 200) -> Deferred[bytes]:
    """
    Flatten a page as the response to C{request}.  The doctype goes in as
    text, which the flattener escapes like any other; it is put back as
    written once, at the very start.
    """
    request.setResponseCode(code)
    request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
    return flattenString(None, tags.transparent("<!DOCTYPE html>\n", tag)).addCallback(
        lambda body: body.replace(b"&lt;!DOCTYPE html&gt;", b"<!DOCTYPE html>", 1)
    )


def errorPage(request: Request, code: int, title: str, text: str) -> Deferred[bytes]:
    """
    A page that says what went wrong, in words, never with a traceback.
    """
    return render(request, layout(request, title, tags.h1(title), tags.p(text, id="error")), code)


def failedPage(request: Request, failure: Failure) -> bytes:
    """
    The answer once a page could not be made: a plain 500, no details.
    """
    return plainText(request, 500, "The page could not be made; the server's log says why.")


def notFound(request: Request) -> object:
    """
    The 404 page: the same for an unknown message as for one not granted.
    """
    return answer(request, errorPage(request, 404, "Not found", "There is nothing here."), failedPage)


def humanSize(size: int) -> str:
    """
    A size for a reader: C{512 B}, C{3.2 KiB}, C{25.0 MiB}.
    """
    value = float(size)
    for unit in ("B", "KiB", "MiB"):
        if value < 1024 or unit == "MiB":
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def messageRow(summary: Summary) -> Tag:
    """
    One line of the list: date, from, to (the envelope recipient),
    subject (linked to the message), size and attachment mark.
    """
    classes = "message" if summary.seen else "message unread"
    return tags.tr(class_=classes, **{"data-id": summary.id, "data-mailbox": summary.mailbox})(
        tags.td(isoTime(summary.delivered).replace("T", " ")[:16], class_="date"),
        tags.td(summary.fromHeader or (summary.sender or ""), class_="from"),
        tags.td(summary.recipient or summary.toHeader, class_="to"),
        tags.td(tags.a(summary.subject or "(no subject)", href="/m/" + summary.id, class_="subject"), class_="subject"),
        tags.td(humanSize(summary.size), class_="size"),
        tags.td(tags.span("attachment", class_="attachment") if summary.hasAttachment else "", class_="attach"),
    )


class IndexPage(Resource):
    """
    C{/}: the tree of the viewer's Maildirs and a page of messages, newest
    first, with the search form.
    """

    isLeaf = True

    def __init__(self, context: WebContext) -> None:
        super().__init__()
        self._context = context

    def render_GET(self, request: Request) -> object:
        """
        Read the tree and the page in a thread, then render them.
        """
        if request.postpath not in ([], [b""]):
            return notFound(request)
        args = {key.decode("utf-8", "replace"): value[0].decode("utf-8", "replace") for key, value in request.args.items() if value}
        mailbox = args.get("mailbox", "")
        text = args.get("q", "")
        cursor = args.get("cursor") or None
        viewer = viewerOf(request)
        root = self._context.maildir

        def read() -> tuple[Any, Page | None, str | None]:
            allowed, shown = visibleAndShown(root, viewer, mailbox)
            tree = mailboxTree(root, allowed)
            try:
                query = parseQuery(text)
                page = listPage(root, shown, query, cursor)
            except SearchError as e:
                return tree, None, str(e)
            return tree, page, None

        d = self._context.inThread(read).addCallback(lambda result: self._page(request, mailbox, text, *result))
        return answer(request, d, failedPage)

    def _page(self, request: Request, mailbox: str, text: str, tree: Any, page: Page | None, error: str | None) -> Deferred[bytes]:
        folders = tags.ul(class_="folders")
        for folder in tree:
            label = folder.key if not folder.folder else folder.folder
            current = "folder current" if folder.key == mailbox else "folder"
            folders(
                tags.li(
                    tags.a(href="/?mailbox=" + _quote(folder.key), class_=current, **{"data-key": folder.key})(
                        tags.span(label, class_="name"),
                        " ",
                        tags.span(str(folder.new), class_="new", title="new"),
                        tags.span(str(folder.unread), class_="unread", title="unread"),
                        tags.span(str(folder.total), class_="total", title="total"),
                    )
                )
            )
        search = tags.form(id="search", method="get", action="/")(
            tags.input(type="hidden", name="mailbox", value=mailbox),
            tags.input(type="search", name="q", value=text, placeholder="from:alice is:unread", **{"aria-label": "Search"}),
            tags.button("Search", type="submit"),
        )
        body: list[Any] = [tags.nav(tags.h2("Mailboxes"), tags.a("All mail", href="/", class_="all"), folders, id="tree"), search]
        code = 200
        table = tags.table(id="messages", **{"data-mailbox": mailbox})(
            tags.thead(tags.tr(*[tags.th(name) for name in ("Date", "From", "To", "Subject", "Size", "")]))
        )
        rows = tags.tbody()
        if error is not None:
            code = 400
            body.append(tags.p(error, id="search-error", class_="error"))
        elif page is not None:
            for summary in page.messages:
                rows(messageRow(summary))
            if page.stoppedBecause:
                body.append(tags.p(page.stoppedBecause, id="incomplete"))
        body.append(tags.section(table(rows), class_="list"))
        if page is not None and page.cursor:
            href = "/?" + "&".join(f"{k}={_quote(v)}" for k, v in (("mailbox", mailbox), ("q", text), ("cursor", page.cursor)) if v)
            body.append(tags.p(tags.a("Older", href=href, id="next")))
        return render(request, layout(request, "Mail", *body), code)


def _quote(value: str) -> str:
    return quote(value, safe="")
