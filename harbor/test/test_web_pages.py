"""
Tests for the web interface's HTML pages (L{harbor.web.pages},
L{harbor.web.messages}, L{harbor.web.app}) over a real Site on loopback.
"""

from __future__ import annotations

import importlib.metadata
import importlib.resources
import mailbox
import os
from typing import Any

from twisted.internet.defer import inlineCallbacks

from harbor.hooks.events import Job, NewMessage
from harbor.hooks.spool import HookSpool
from harbor.test._appsupport import ADMIN, CSRF, WebTestCase, messageBytes, messageID
from harbor.web.base import Viewer
from harbor.web.messages import HIDDEN_ERROR

NOW = 1732314178


class IndexPageTests(WebTestCase):
    """
    The index: the tree, the list, paging and search.
    """

    @inlineCallbacks
    def test_treeCounts(self) -> Any:
        """
        Each folder of the tree shows its new, unread and total counts.
        """
        self.deliver("example.net/alice", messageID(NOW, 1))
        self.deliver("example.net/alice", messageID(NOW, 2), sub="cur", flags="S")
        self.deliver("example.net/alice", messageID(NOW, 3), sub="cur", flags="")
        response, body = yield self.request("/")
        self.assertEqual(response.code, 200)
        self.assertIn(b'data-key="example.net/alice"', body)
        self.assertIn(b'<span class="new" title="new">1</span><span class="unread" title="unread">2</span>'
                      b'<span class="total" title="total">3</span>', body)

    @inlineCallbacks
    def test_pageLinksStylesAndScript(self) -> Any:
        """
        Every page carries the CSRF token and our own style sheet and
        script, and no other script.
        """
        _response, body = yield self.request("/")
        self.assertIn(f'<meta name="csrf-token" content="{CSRF}"'.encode(), body)
        self.assertIn(b'href="/static/app.css"', body)
        self.assertEqual(body.count(b"<script"), 1)
        self.assertIn(b'<script src="/static/app.js"', body)
        self.assertIn(b'data-live="closed"', body)

    @inlineCallbacks
    def test_pagingNewestFirst(self) -> Any:
        """
        The list is newest first, and a#next carries the cursor to older
        mail.
        """
        for n in range(60):
            self.deliver("example.com", messageID(NOW + n, n), messageBytes(subject=f"number {n}"))
        _, body = yield self.request("/")
        self.assertEqual(body.count(b'<tr class="message unread"'), 50)
        self.assertLess(body.index(b"number 59"), body.index(b"number 58"))
        self.assertNotIn(b"number 9<", body)
        start = body.index(b'href="/?cursor=') + len(b'href="')
        href = body[start:body.index(b'"', start)].decode().replace("&amp;", "&")
        self.assertIn(b'id="next"', body)
        _response, older = yield self.request(href)
        self.assertEqual(older.count(b'<tr class="message unread"'), 10)
        self.assertIn(b"number 9<", older)
        self.assertNotIn(b'id="next"', older)

    @inlineCallbacks
    def test_search(self) -> Any:
        """
        A search shows only the messages its words match.
        """
        self.deliver("example.com", messageID(NOW, 1), messageBytes(subject="invoice march"))
        self.deliver("example.com", messageID(NOW + 1, 2), messageBytes(subject="holiday"))
        _response, body = yield self.request("/?q=subject%3Ainvoice")
        self.assertIn(b"invoice march", body)
        self.assertNotIn(b"holiday", body)

    @inlineCallbacks
    def test_mailboxShown(self) -> Any:
        """
        ?mailbox= lists that Maildir and those below it only, and the
        table says which, for app.js.
        """
        self.deliver("example.net/alice", messageID(NOW, 1), messageBytes(subject="to alice"))
        self.deliver("example.net/alice/.Lists", messageID(NOW + 1, 2), messageBytes(subject="list mail"))
        self.deliver("example.com", messageID(NOW + 2, 3), messageBytes(subject="to the domain"))
        _, body = yield self.request("/?mailbox=example.net%2Falice")
        self.assertIn(b"to alice", body)
        self.assertIn(b"list mail", body)
        self.assertNotIn(b"to the domain", body)
        self.assertIn(b'<table id="messages" data-mailbox="example.net/alice">', body)
        self.assertIn(b'class="folder current" data-key="example.net/alice"', body)

    @inlineCallbacks
    def test_badQuery(self) -> Any:
        """
        A search that cannot be read is a 400 page with SearchError's text.
        """
        response, body = yield self.request("/?q=%22open")
        self.assertEqual(response.code, 400)
        self.assertIn(b'id="search-error"', body)
        self.assertIn(b"a quote is not closed", body)


class AccessTests(WebTestCase):
    """
    A viewer sees only what they were granted, and ids never become paths.
    """

    def setUp(self) -> None:
        super().setUp()
        self.secret = messageID(NOW, 1)
        self.deliver("example.com", self.secret, messageBytes(subject="secret plans"))
        self.deliver("example.net/bob", messageID(NOW + 1, 2), messageBytes(subject="for bob"))
        self.viewAs(Viewer("bob", False, ("example.net/bob",), CSRF))

    @inlineCallbacks
    def test_treeAndListGranted(self) -> Any:
        """
        Bob's tree and list hold only his own mailbox.
        """
        _, body = yield self.request("/")
        self.assertIn(b"for bob", body)
        self.assertNotIn(b'data-key="example.com', body)
        self.assertNotIn(b"secret plans", body)
        _, body = yield self.request("/?mailbox=example.com")
        self.assertNotIn(b"secret plans", body)
        _response, body = yield self.request("/?q=secret")
        self.assertNotIn(b"secret plans", body)

    @inlineCallbacks
    def test_logoutButton(self) -> Any:
        """
        A logged-in user's pages name them and carry a logout form that
        posts the CSRF token; without users (no name) there is none.
        """
        _, body = yield self.request("/")
        self.assertIn(b'<form id="logout" method="post" action="/logout"><span class="user">bob</span>', body)
        self.assertIn(f'<input type="hidden" name="csrf" value="{CSRF}" /><button type="submit">Log out'.encode(), body)
        self.viewAs(ADMIN)
        _, body = yield self.request("/")
        self.assertNotIn(b'id="logout"', body)

    @inlineCallbacks
    def test_messageNotGrantedIsNotFound(self) -> Any:
        """
        A message outside the grants is a 404, as an unknown one, in every
        view, and is not marked seen.
        """
        for suffix in ("", "/html", "/raw", "/part/0", "/delete"):
            response, body = yield self.request("/m/" + self.secret + suffix)
            self.assertEqual(response.code, 404, suffix)
            self.assertNotIn(b"secret", body)
        response, _ = yield self.request("/m/no-such-id")
        self.assertEqual(response.code, 404)
        self.assertEqual(len(os.listdir(os.path.join(self.root, "example.com", "new"))), 1)

    @inlineCallbacks
    def test_traversal(self) -> Any:
        """
        Paths that try to climb out are 404s.
        """
        for path in ("/m/..%2F..%2Fetc%2Fpasswd", "/m/../config", "/m/%2e%2e", "/m/a%2Fb",
                     "/static/../config", "/static/..%2F..%2Fsetup.cfg", "/static/", "/nothing"):
            response, body = yield self.request(path)
            self.assertEqual(response.code, 404, path)
            self.assertNotIn(b"root:", body)

    @inlineCallbacks
    def test_plantedLink(self) -> Any:
        """
        A symbolic link planted in a Maildir under a message's name shows
        nothing of what it points to, in any view.
        """
        self.viewAs(Viewer(None, True, (), CSRF))
        identifier = messageID(NOW + 5, 9)
        os.symlink("/etc/passwd", os.path.join(self.root, "example.com", "new", identifier + ",S=10"))
        for suffix in ("", "/raw", "/html", "/part/0"):
            response, body = yield self.request("/m/" + identifier + suffix)
            self.assertEqual(response.code, 404, suffix)
            self.assertNotIn(b"root:", body)
            self.assertNotIn(b"Traceback", body)


class MessagePageTests(WebTestCase):
    """
    One message's page and its views.
    """

    hooks = ("archive", "notify", "slack")

    def html(self) -> bytes:
        return messageBytes(
            subject="hostile",
            extra="MIME-Version: 1.0\nContent-Type: text/html; charset=utf-8\n",
            body='<p>hi</p><script>alert(1)</script><img src="http://127.0.0.1:9/t.png" onerror="alert(2)">\n',
        )

    @inlineCallbacks
    def test_textMessage(self) -> Any:
        """
        A text message shows its subject, text, headers, timeline and
        actions with the CSRF token, and opening it marks it seen.
        """
        identifier = messageID(NOW, 1)
        self.deliver("example.net/alice", identifier)
        response, body = yield self.request("/m/" + identifier)
        self.assertEqual(response.code, 200)
        self.assertIn(b'<h1 id="subject">Hello</h1>', body)
        self.assertIn(b"how are you?", body)
        self.assertIn(b'<section id="headers">', body)
        self.assertIn(b'<li class="hop">', body)
        self.assertIn(b'<span class="ip">192.0.2.1</span>', body)
        self.assertIn(b'<form id="seen" method="post" action="/m/' + identifier.encode() + b'/seen">', body)
        self.assertIn(f'name="csrf" value="{CSRF}"'.encode(), body)
        self.assertIn(b'id="delete"', body)
        self.assertNotIn(b'id="html-frame"', body)
        box = mailbox.Maildir(os.path.join(self.root, "example.net/alice"), create=False)
        [(_key, message)] = box.items()
        self.assertEqual(message.get_subdir(), "cur")
        self.assertIn("S", message.get_flags())

    @inlineCallbacks
    def test_notSeenUnlessOpened(self) -> Any:
        """
        A C{HEAD}, and a C{GET} another site's page made (an C{<img>} of
        it: C{Sec-Fetch-Site: cross-site} or C{same-site}), do not mark the
        message seen; a C{GET} typed in or followed from our own pages does.
        """
        identifier = messageID(NOW, 1)
        self.deliver("example.net/alice", identifier)
        box = mailbox.Maildir(os.path.join(self.root, "example.net/alice"), create=False)
        response, _ = yield self.request("/m/" + identifier, b"HEAD")
        self.assertEqual(response.code, 200)
        for site in (b"cross-site", b"same-site"):
            response, _ = yield self.request("/m/" + identifier, extra={b"Sec-Fetch-Site": site})
            self.assertEqual(response.code, 200)
        [(_key, message)] = box.items()
        self.assertEqual(message.get_subdir(), "new")
        response, _ = yield self.request("/m/" + identifier, extra={b"Sec-Fetch-Site": b"same-origin"})
        [(_key, message)] = box.items()
        self.assertEqual(message.get_subdir(), "cur")

    @inlineCallbacks
    def test_hostileHTML(self) -> Any:
        """
        An HTML message is framed in a sandbox from its own URL, and the
        page holds no script of the message's.
        """
        identifier = messageID(NOW, 1)
        self.deliver("example.com", identifier, self.html())
        _, body = yield self.request("/m/" + identifier)
        self.assertIn(b'<iframe id="html-frame" sandbox="allow-popups allow-popups-to-escape-sandbox" src="/m/'
                      + identifier.encode() + b'/html"', body)
        self.assertEqual(body.count(b"<script"), 1)
        self.assertNotIn(b"alert(", body)
        self.assertIn(b'id="load-images" href="/m/' + identifier.encode() + b'?images=1"'
                      if b'id="load-images" href' in body else b'href="/m/' + identifier.encode() + b'?images=1" id="load-images"', body)
        _response, body = yield self.request("/m/" + identifier + "?images=1")
        self.assertIn(b'src="/m/' + identifier.encode() + b'/html?images=1"', body)

    @inlineCallbacks
    def test_htmlView(self) -> Any:
        """
        The HTML view has the message's CSP with sandbox, SAMEORIGIN, and
        no script.
        """
        identifier = messageID(NOW, 1)
        self.deliver("example.com", identifier, self.html())
        response, body = yield self.request("/m/" + identifier + "/html")
        self.assertEqual(response.code, 200)
        csp = response.headers.getRawHeaders(b"content-security-policy")[0]
        self.assertIn(b"sandbox allow-popups", csp)
        self.assertNotIn(b"http:", csp)
        self.assertEqual(response.headers.getRawHeaders(b"x-frame-options"), [b"SAMEORIGIN"])
        self.assertNotIn(b"<script", body)
        self.assertNotIn(b"127.0.0.1:9", body)
        response, body = yield self.request("/m/" + identifier + "/html?images=1")
        self.assertIn(b"http:", response.headers.getRawHeaders(b"content-security-policy")[0])

    @inlineCallbacks
    def test_rawAndPart(self) -> Any:
        """
        Raw is text/plain with nosniff, as stored; a part downloads as
        application/octet-stream attachment.
        """
        identifier = messageID(NOW, 1)
        content = messageBytes(
            extra='MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary="b"\n',
            body="--b\nContent-Type: text/plain\n\nhello\n--b\nContent-Type: text/html; name=\"x.html\"\n"
            "Content-Disposition: attachment; filename=\"x.html\"\n\n<script>alert(1)</script>\n--b--\n",
        )
        self.deliver("example.com", identifier, content)
        response, body = yield self.request("/m/" + identifier + "/raw")
        self.assertEqual(body, content)
        self.assertEqual(response.headers.getRawHeaders(b"content-type"), [b"text/plain; charset=utf-8"])
        self.assertEqual(response.headers.getRawHeaders(b"x-content-type-options"), [b"nosniff"])
        response, body = yield self.request("/m/" + identifier + "/part/1")
        self.assertEqual(response.headers.getRawHeaders(b"content-type"), [b"application/octet-stream"])
        self.assertTrue(response.headers.getRawHeaders(b"content-disposition")[0].startswith(b"attachment"))
        self.assertIn(b"<script>", body)
        response, page = yield self.request("/m/" + identifier)
        self.assertIn(b'class="part"', page)
        response, body = yield self.request("/m/" + identifier + "/part/9")
        self.assertEqual(response.code, 404)

    @inlineCallbacks
    def test_seenAndUnseen(self) -> Any:
        """
        The seen form moves the message to cur/ with :2,S, and back to
        unseen.
        """
        identifier = messageID(NOW, 1)
        self.deliver("example.net/alice", identifier)
        form = f"seen=1&csrf={CSRF}".encode()
        response, _ = yield self.request(f"/m/{identifier}/seen", b"POST", form, b"application/x-www-form-urlencoded")
        self.assertEqual(response.code, 303)
        [message] = mailbox.Maildir(os.path.join(self.root, "example.net/alice"), create=False).values()
        self.assertEqual((message.get_subdir(), message.get_flags()), ("cur", "S"))
        form = f"seen=0&csrf={CSRF}".encode()
        yield self.request(f"/m/{identifier}/seen", b"POST", form, b"application/x-www-form-urlencoded")
        [message] = mailbox.Maildir(os.path.join(self.root, "example.net/alice"), create=False).values()
        self.assertEqual((message.get_subdir(), message.get_flags()), ("cur", ""))

    @inlineCallbacks
    def test_delete(self) -> Any:
        """
        Delete asks first, with a CSRF form, then removes the message and
        goes back to the list.
        """
        identifier = messageID(NOW, 1)
        self.deliver("example.com", identifier)
        response, body = yield self.request(f"/m/{identifier}/delete")
        self.assertIn(b'<form id="confirm-delete" method="post"', body)
        self.assertIn(f'value="{CSRF}"'.encode(), body)
        self.assertEqual(len(mailbox.Maildir(os.path.join(self.root, "example.com"), create=False)), 1)
        response, _ = yield self.request(f"/m/{identifier}/delete", b"POST", f"csrf={CSRF}".encode(),
                                         b"application/x-www-form-urlencoded")
        self.assertEqual((response.code, response.headers.getRawHeaders(b"location")), (303, [b"/"]))
        self.assertEqual(len(mailbox.Maildir(os.path.join(self.root, "example.com"), create=False)), 0)

    @inlineCallbacks
    def test_hooks(self) -> Any:
        """
        Hook states come from the spool, and retry moves a dead job back
        to pending.
        """
        identifier = messageID(NOW, 1)
        self.deliver("example.com", identifier)
        spool = HookSpool(self.spool)
        spool.prepare()
        event = NewMessage("sender@x.org", "alice@example.net", None, "192.0.2.1", "/nowhere", identifier)
        pending = Job(f"{identifier},archive", "archive", event, NOW, NOW + 60, 2, "timed out")
        dead = Job(f"{identifier},notify", "notify", event, NOW, NOW + 60, 9, "connection refused")
        spool.add([pending, dead])
        spool.bury(dead)
        response, body = yield self.request("/m/" + identifier)
        self.assertIn(b'data-hook="archive" data-state="pending"', body)
        self.assertIn(b'data-hook="notify" data-state="dead"', body)
        self.assertIn(b'data-hook="slack" data-state="delivered"', body)
        self.assertIn(b'<form class="retry" method="post"', body)
        self.assertIn(b"connection refused", body)
        # Not an admin: a hook's error may name a webhook's secret URL.
        self.viewAs(Viewer("bob", False, ("example.com",), CSRF))
        response, shown = yield self.request("/m/" + identifier)
        self.assertIn(b'data-hook="notify" data-state="dead"', shown)
        self.assertNotIn(b"connection refused", shown)
        self.assertNotIn(b"timed out", shown)
        self.assertIn(HIDDEN_ERROR.encode(), shown)
        response, detail = yield self.getJSON("/api/v1/messages/" + identifier)
        self.assertEqual({hook["error"] for hook in detail["hooks"]}, {HIDDEN_ERROR, None})
        self.viewAs(ADMIN)
        response, _ = yield self.request(f"/m/{identifier}/retry", b"POST", f"hook=notify&csrf={CSRF}".encode(),
                                         b"application/x-www-form-urlencoded")
        self.assertEqual(response.code, 303)
        self.assertTrue(spool.isPending(f"{identifier},notify"))

    @inlineCallbacks
    def test_deepAndHuge(self) -> Any:
        """
        A deeply nested message and one with a 25 MiB attachment render,
        with their problems listed rather than a traceback.
        """
        deep = "MIME-Version: 1.0\n" + "".join(
            f'Content-Type: multipart/mixed; boundary="b{n}"\n\n--b{n}\n' for n in range(120)
        ) + "Content-Type: text/plain\n\ndeep down\n"
        self.deliver("example.com", messageID(NOW, 1), messageBytes(subject="deep", extra=deep.split("\n", 1)[0] + "\n" + deep.split("\n", 1)[1].split("\n\n", 1)[0], body=deep.split("\n\n", 1)[1]))
        import base64

        blob = base64.encodebytes(os.urandom(25 * 1024 * 1024)).decode()
        huge = messageBytes(
            subject="huge",
            extra='MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary="b"\n',
            body="--b\nContent-Type: text/plain\n\nsee attached\n--b\nContent-Type: application/zip\n"
            f"Content-Transfer-Encoding: base64\nContent-Disposition: attachment; filename=big.zip\n\n{blob}--b--\n",
        )
        self.deliver("example.com", messageID(NOW + 1, 2), huge)
        response, body = yield self.request("/m/" + messageID(NOW, 1))
        self.assertEqual(response.code, 200)
        self.assertIn(b'id="problems"', body)
        response, body = yield self.request("/m/" + messageID(NOW + 1, 2))
        self.assertEqual(response.code, 200)
        self.assertIn(b"big.zip", body)
        self.assertIn(b"25.0 MiB", body)


class StaticTests(WebTestCase):
    """
    app.js and app.css are served, and installed with the package.
    """

    @inlineCallbacks
    def test_served(self) -> Any:
        """
        /static/app.js and /static/app.css are served with their types.
        """
        response, body = yield self.request("/static/app.js")
        self.assertEqual(response.code, 200)
        self.assertIn(b"EventSource", body)
        self.assertTrue(response.headers.getRawHeaders(b"content-type")[0].startswith(b"text/javascript"))
        response, body = yield self.request("/static/app.css")
        self.assertTrue(response.headers.getRawHeaders(b"content-type")[0].startswith(b"text/css"))
        self.assertIn(b"prefers-color-scheme: dark", body)

    def test_packageData(self) -> None:
        """
        The package carries its static files, and setup.cfg lists them.
        """
        static = importlib.resources.files("harbor.web") / "static"
        self.assertTrue((static / "app.js").is_file())
        self.assertTrue((static / "app.css").is_file())
        try:
            installed = [str(path) for path in importlib.metadata.files("mailharbor") or ()]
        except importlib.metadata.PackageNotFoundError:
            installed = []
        if installed:
            self.assertIn("harbor/web/static/app.js", installed)
            self.assertIn("harbor/web/static/app.css", installed)
        setup = os.path.join(os.path.dirname(__file__), "..", "..", "setup.cfg")
        if os.path.exists(setup):
            with open(setup) as f:
                self.assertIn("harbor.web = static/*.js, static/*.css", f.read())
