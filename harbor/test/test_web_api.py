"""
Tests for the JSON API under /api/v1 (L{harbor.web.api}) over a real Site
on loopback.
"""

from __future__ import annotations

import mailbox
import os
from typing import Any

from twisted.internet.defer import inlineCallbacks

from harbor.hooks.events import Job, NewMessage
from harbor.hooks.spool import HookSpool
from harbor.test._appsupport import CSRF, WebTestCase, messageBytes, messageID
from harbor.web.base import Viewer

NOW = 1732314178


class APITests(WebTestCase):
    """
    Every API call, its errors and its access control.
    """

    hooks = ("notify",)

    def setUp(self) -> None:
        super().setUp()
        self.first = messageID(NOW, 1)
        self.deliver("example.net/bob", self.first, messageBytes(subject="for bob"))
        self.secret = messageID(NOW + 1, 2)
        self.deliver("example.com", self.secret, messageBytes(subject="secret plans"))

    @inlineCallbacks
    def test_mailboxes(self) -> Any:
        """
        mailboxes lists the viewer's folders with their counts.
        """
        response, value = yield self.getJSON("/api/v1/mailboxes")
        self.assertEqual(response.headers.getRawHeaders(b"content-type"), [b"application/json"])
        self.assertEqual([(f["key"], f["total"], f["unread"]) for f in value["mailboxes"]],
                         [("example.com", 1, 1), ("example.net/bob", 1, 1)])

    @inlineCallbacks
    def test_messagesPaged(self) -> Any:
        """
        messages pages newest first with a cursor, and checks limit.
        """
        response, value = yield self.getJSON("/api/v1/messages?limit=1")
        self.assertEqual([m["id"] for m in value["messages"]], [self.secret])
        response, value = yield self.getJSON("/api/v1/messages?limit=1&cursor=" + value["cursor"])
        self.assertEqual([m["id"] for m in value["messages"]], [self.first])
        self.assertIsNone(value["cursor"])
        for bad in ("limit=0", "limit=201", "limit=x", "cursor=zzz", "q=%22open"):
            response, value = yield self.getJSON("/api/v1/messages?" + bad)
            self.assertEqual(response.code, 400, bad)
            self.assertIsInstance(value["error"], str)

    @inlineCallbacks
    def test_accessControl(self) -> Any:
        """
        Bob, granted example.net/bob, never sees example.com's mail: not
        in the tree, the list, a search, nor by id.
        """
        self.viewAs(Viewer("bob", False, ("example.net/bob",), CSRF))
        _, value = yield self.getJSON("/api/v1/mailboxes")
        self.assertEqual([f["key"] for f in value["mailboxes"]], ["example.net/bob"])
        _, value = yield self.getJSON("/api/v1/messages?q=secret")
        self.assertEqual(value["messages"], [])
        _, value = yield self.getJSON("/api/v1/messages?mailbox=example.com")
        self.assertEqual(value["messages"], [])
        for path in ("", "/raw", "/parts/0"):
            response, _ = yield self.request(f"/api/v1/messages/{self.secret}{path}")
            self.assertEqual(response.code, 404, path)
        response, _ = yield self.getJSON(f"/api/v1/messages/{self.secret}/seen", b"POST", {"seen": True})
        self.assertEqual(response.code, 404)
        response, _ = yield self.request(f"/api/v1/messages/{self.secret}", b"DELETE")
        self.assertEqual(response.code, 404)
        self.assertEqual(len(os.listdir(os.path.join(self.root, "example.com", "new"))), 1)
        _, value = yield self.getJSON("/api/v1/stats")
        self.assertEqual(value["messages"], 1)

    @inlineCallbacks
    def test_message(self) -> Any:
        """
        A message's JSON has its summary, view, timeline and hooks, and
        reading it does not mark it seen.
        """
        response, value = yield self.getJSON(f"/api/v1/messages/{self.first}")
        self.assertEqual(value["summary"]["subject"], "for bob")
        self.assertEqual(value["message"]["subject"], "for bob")
        self.assertEqual(value["timeline"]["hops"][0]["fromIP"], "192.0.2.1")
        self.assertEqual(value["hooks"][0]["state"], "delivered")
        self.assertEqual(len(os.listdir(os.path.join(self.root, "example.net/bob", "new"))), 1)
        response, body = yield self.request(f"/api/v1/messages/{self.first}/raw")
        self.assertEqual(body, messageBytes(subject="for bob"))
        self.assertEqual(response.headers.getRawHeaders(b"content-type"), [b"text/plain; charset=utf-8"])
        response, body = yield self.request(f"/api/v1/messages/{self.first}/parts/0")
        self.assertEqual(response.code, 200)

    @inlineCallbacks
    def test_seenAndDelete(self) -> Any:
        """
        seen moves the message with :2,S; DELETE removes it.
        """
        _, value = yield self.getJSON(f"/api/v1/messages/{self.first}/seen", b"POST", {"seen": True})
        self.assertEqual(value, {"id": self.first, "seen": True})
        [message] = mailbox.Maildir(os.path.join(self.root, "example.net/bob"), create=False).values()
        self.assertEqual((message.get_subdir(), message.get_flags()), ("cur", "S"))
        _response, value = yield self.getJSON(f"/api/v1/messages/{self.first}", b"DELETE")
        self.assertEqual(value, {"deleted": self.first})
        self.assertEqual(len(mailbox.Maildir(os.path.join(self.root, "example.net/bob"), create=False)), 0)

    @inlineCallbacks
    def test_bodyErrors(self) -> Any:
        """
        A POST body that is not JSON is 415, bad JSON or a wrong shape
        400, a wrong method 405, an unknown path 404.
        """
        path = f"/api/v1/messages/{self.first}/seen"
        response, _ = yield self.request(path, b"POST", b"seen=1", b"application/x-www-form-urlencoded")
        self.assertEqual(response.code, 415)
        response, _ = yield self.request(path, b"POST", b"{nope", b"application/json")
        self.assertEqual(response.code, 400)
        response, _ = yield self.getJSON(path, b"POST", {"seen": "yes"})
        self.assertEqual(response.code, 400)
        response, value = yield self.getJSON(path)
        self.assertEqual(response.code, 405)
        response, value = yield self.getJSON("/api/v1/mailboxes", b"POST", {})
        self.assertEqual((response.code, list(value)), (405, ["error"]))
        response, value = yield self.getJSON("/api/v1/nothing")
        self.assertEqual((response.code, list(value)), (404, ["error"]))

    @inlineCallbacks
    def test_retryAndStats(self) -> Any:
        """
        Retry puts a dead job back in pending; stats count it.
        """
        spool = HookSpool(self.spool)
        spool.prepare()
        event = NewMessage("s@x.org", "bob@example.net", None, "192.0.2.1", "/nowhere", self.first)
        job = Job(f"{self.first},notify", "notify", event, NOW, NOW, 5, "refused")
        spool.add([job])
        spool.bury(job)
        _, value = yield self.getJSON("/api/v1/stats")
        self.assertEqual(value, {"mailboxes": 2, "messages": 2, "unread": 2, "hooks": {"pending": 0, "dead": 1}})
        response, value = yield self.getJSON(f"/api/v1/messages/{self.first}/hooks/notify/retry", b"POST", {})
        self.assertEqual(value, {"retried": f"{self.first},notify"})
        self.assertTrue(spool.isPending(f"{self.first},notify"))
        response, value = yield self.getJSON(f"/api/v1/messages/{self.first}/hooks/notify/retry", b"POST", {})
        self.assertEqual(response.code, 404)
