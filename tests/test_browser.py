"""
The web interface in a real browser: Debian's Chromium, headless, driven
through its chromedriver by Selenium, against a real C{twistd mailharbor}
with the web interface on.

These tests skip only where C{/usr/bin/chromedriver} is absent; CI
installs it (C{.ci/run}), so they run there.  They are plain synchronous
methods: Selenium blocks, and the server is a subprocess, so nothing here
needs the reactor to turn; every wait has its own limit.
"""

from __future__ import annotations

import html
import mailbox
import os
import struct
import time
import uuid
from typing import Any

from twisted.trial.unittest import TestCase

from tests._browser import (
    MARKER_LISTENER,
    Browser,
    Canary,
    WebServer,
    dropIntoMaildir,
    htmlMessage,
    requireChromedriver,
    startWebServer,
    textMessage,
    untilLive,
    waitUntil,
)
from tests._hostile import MARK, hostileVectors

# How long a page is given, once loaded, to do anything late (a refresh,
# a focus event, a timer) before the test looks for traces.
SETTLE = 0.5
# What the message page's frame must be: scripts, same-origin, forms,
# top navigation and modals all refused.
SANDBOX = "allow-popups allow-popups-to-escape-sandbox"
# What the hostile test reads from a message page in one call.
PAGE_STATE = """
var frame = document.querySelector("section#html iframe#html-frame");
return {
  url: location.href, title: document.title, name: window.name,
  messages: window.__harborTestMessages || [],
  sandbox: frame && frame.getAttribute("sandbox"),
  src: frame && new URL(frame.getAttribute("src"), location.href).pathname
    + new URL(frame.getAttribute("src"), location.href).search
};
"""
# A phone's width in CSS pixels (an iPhone's, 375 by 812).
PHONE_WIDTH = 375


def idsBySubject(server: WebServer) -> dict[str, str]:
    """
    Every message's id by its subject, as alice (an admin) sees them
    through the API.
    """
    return {summary["subject"]: summary["id"] for summary in server.client("alice").messages()}


def luminance(colour: str) -> float:
    """
    The relative lightness, 0 to 1, of a CSS C{rgb()} or C{rgba()} colour.
    """
    inside = colour[colour.index("(") + 1 : colour.index(")")]
    parts = [float(part) for part in inside.replace("/", ",").replace(" ", ",").split(",") if part]
    red, green, blue = parts[:3]
    return (0.2126 * red + 0.7152 * green + 0.0722 * blue) / 255


def backgroundOf(browser: Browser) -> str:
    """
    The page's background colour: the body's, or the root element's where
    the body's is transparent.
    """
    colour: str = browser.script(
        "var b = getComputedStyle(document.body).backgroundColor;"
        "if (b === 'transparent' || /rgba\\(.*,\\s*0\\)$/.test(b))"
        "  b = getComputedStyle(document.documentElement).backgroundColor;"
        "return b;"
    )
    return colour


class BrowserTests(TestCase):
    """
    A person with a browser, and hostile mail.
    """

    def setUp(self) -> None:
        requireChromedriver()

    def test_tracesAreSeen(self) -> None:
        """
        The traces the hostile vectors are armed with are seen when nothing
        protects the page: served as they are from a page without a
        sanitizer, policy or sandbox, a script, an event handler, an
        entity-encoded handler, a remote image and a meta refresh all hit
        the canary, and a script in a frame that may run scripts posts a
        message the test's listener sees.
        So the hostile test's zero hits mean the protections held, not
        that the traces were broken.
        """
        canary = Canary(self)
        vectors = dict(hostileVectors(canary.base))
        browser = Browser(self, canary.base)
        browser.onEveryDocument(MARKER_LISTENER)
        for name in ("script", "img-onerror", "onerror-entity-encoded", "svg-onload", "img-remote", "meta-refresh-remote"):
            canary.pages[f"/page/{name}"] = f"<!doctype html><title>control</title>{vectors[name]}".encode()
            browser.get(f"/page/{name}")
            waitUntil(lambda: any(f"/{name}/" in hit for hit in canary.seen()), f"{name} hits the canary", 10)  # noqa: B023 (called at once)
        frame = html.escape(vectors["img-onerror"], quote=True)
        canary.pages["/page/framed"] = f'<!doctype html><iframe sandbox="allow-scripts" srcdoc="{frame}"></iframe>'.encode()
        browser.get("/page/framed")
        waitUntil(
            lambda: f"{MARK}img-onerror" in browser.script("return window.__harborTestMessages || [];"),
            "the framed script's message reaches the page",
            10,
        )

    def test_logInBrowseOpenAndLiveUpdate(self) -> None:
        """
        A new user logs in through the form, sees the tree and the list,
        opens a message, and then sees a message sent by SMTP appear in the
        list without a reload.
        """
        server = startWebServer(self)
        server.send("alice@example.com", textMessage("The first message"))
        browser = Browser(self, server.base)
        browser.get("/")
        self.assertIn("/login", browser.driver.current_url)
        browser.logIn("alice")

        keys = {a.get_attribute("data-key") for a in browser.findAll("nav#tree a.folder")}
        self.assertIn("example.com", keys)
        self.assertIn("example.net/bob", keys)
        link = browser.waitFor("table#messages tr.message a.subject")
        self.assertEqual(link.text, "The first message")
        [id] = idsBySubject(server).values()
        self.assertTrue((link.get_attribute("href") or "").endswith(f"/m/{id}"))
        link.click()
        self.assertEqual(browser.waitFor("h1#subject").text, "The first message")
        self.assertTrue(browser.driver.current_url.endswith(f"/m/{id}"))

        browser.get("/")
        browser.waitFor('body[data-live="open"]')
        browser.script("window.harborTestNotReloaded = true;")
        untilLive(
            lambda subject: server.send("alice@example.com", textMessage(subject)),
            lambda subject: subject in [a.text for a in browser.findAll("table#messages tr.message a.subject")],
        )
        server.send("alice@example.com", textMessage("Arrived while you looked"))
        waitUntil(
            lambda: "Arrived while you looked" in [a.text for a in browser.findAll("table#messages tr.message a.subject")],
            "the new message appears in the list",
        )
        self.assertTrue(browser.script("return window.harborTestNotReloaded === true;"))
        subjects = [a.text for a in browser.findAll("table#messages tr.message a.subject")]
        self.assertEqual(subjects[0], "Arrived while you looked")

        # And logs out with the button every page has: the session is over.
        self.assertEqual(browser.waitFor("form#logout span.user").text, "alice")
        browser.waitFor("form#logout button").click()
        waitUntil(lambda: "/login" in browser.driver.current_url, "the logout leads to the login page")
        self.assertEqual(browser.fetchStatus("/api/v1/session"), 401)
        browser.get("/")
        self.assertIn("/login", browser.driver.current_url)

    def test_liveUpdateFromAnotherProgram(self) -> None:
        """
        A message another program drops into a Maildir's new/ with plain
        file writes appears in the open list without a reload.
        """
        server = startWebServer(self)
        server.send("alice@example.com", textMessage("Delivered by MailHarbor"))
        browser = Browser(self, server.base)
        browser.logIn("alice")
        browser.waitFor("table#messages tr.message")
        browser.waitFor('body[data-live="open"]')
        browser.script("window.harborTestNotReloaded = true;")
        untilLive(
            lambda subject: dropIntoMaildir(server.maildir("example.com"), textMessage(subject)),
            lambda subject: subject in [a.text for a in browser.findAll("table#messages tr.message a.subject")],
        )
        dropIntoMaildir(server.maildir("example.com"), textMessage("Dropped in by another program"))
        waitUntil(
            lambda: "Dropped in by another program"
            in [a.text for a in browser.findAll("table#messages tr.message a.subject")],
            "the dropped message appears in the list",
        )
        self.assertTrue(browser.script("return window.harborTestNotReloaded === true;"))

    def test_markAndDeleteThroughTheForms(self) -> None:
        """
        The message page's forms work in a browser (its Origin and CSRF
        token pass the guard): opening a message marks it seen, "Mark
        unread" clears the flag and goes back to the list, where it stays
        unread, and delete, once confirmed, removes the file and goes back
        to the list.
        """
        server = startWebServer(self)
        server.send("alice@example.com", textMessage("Handle me"))
        [id] = idsBySubject(server).values()
        maildir = server.maildir("example.com")

        def flags() -> list[str]:
            md = mailbox.Maildir(maildir, factory=None, create=False)
            return [md.get_message(key).get_subdir() + ":" + md.get_message(key).get_flags() for key in md.iterkeys()]

        browser = Browser(self, server.base)
        browser.logIn("alice")
        browser.get(f"/m/{id}")
        browser.waitFor("h1#subject")
        self.assertEqual(flags(), ["cur:S"])

        browser.waitFor("form#seen button, form#seen input[type=submit]").click()
        browser.waitFor("table#messages tr.message.unread")
        self.assertEqual(flags(), ["cur:"])

        browser.get(f"/m/{id}")
        browser.waitFor("a#delete").click()
        browser.waitFor("form#confirm-delete button, form#confirm-delete input[type=submit]").click()
        waitUntil(lambda: flags() == [], "the message is deleted")
        browser.waitFor("table#messages")
        self.assertEqual(browser.driver.current_url, f"{server.base}/")
        self.assertEqual(browser.findAll("table#messages tr.message"), [])

    def test_hostileMessagesRunNoScript(self) -> None:
        """
        Each hostile vector, delivered in a message of its own and opened
        in the message page, runs no script and loads nothing: the canary
        gets no hit, no dialog opens, no message is posted to the page, the
        title, the window's name, its location and its windows stay as
        they were, and the console shows no trace.
        """
        canary = Canary(self)
        vectors = hostileVectors(canary.base)
        self.assertGreaterEqual(len(vectors), 100)
        server = startWebServer(self)
        server.send(
            "alice@example.com",
            *(htmlMessage(f"hostile {name}", f"<p>Vector {name}:</p>{html}<p>end</p>") for name, html in vectors),
        )
        ids = idsBySubject(server)
        browser = Browser(self, server.base)
        browser.onEveryDocument(MARKER_LISTENER)
        browser.logIn("alice")
        for name, _ in vectors:
            id = ids[f"hostile {name}"]
            browser.get(f"/m/{id}")
            self.assertIsNone(browser.alertText(), name)
            state: dict[str, Any] = browser.script(PAGE_STATE)
            self.assertNotIn("XSS", state.pop("title"), name)
            self.assertEqual(
                state,
                {
                    "url": f"{server.base}/m/{id}",
                    "name": "",
                    "messages": [],
                    "sandbox": SANDBOX,
                    "src": f"/m/{id}/html",
                },
                name,
            )
            self.assertEqual(len(browser.driver.window_handles), 1, name)
            # The message was rendered, so nothing ran because the
            # protections held, not because the frame stayed empty.
            self.assertIn(f"Vector {name}:", browser.frameText("section#html iframe#html-frame"), name)
        time.sleep(SETTLE)
        self.assertIsNone(browser.alertText())
        self.assertEqual(len(browser.driver.window_handles), 1)
        self.assertEqual(canary.seen(), [])
        traces = [entry for entry in browser.consoleLog() if MARK in entry.get("message", "")]
        self.assertEqual(traces, [])

    def test_remoteImagesWaitForLoadImages(self) -> None:
        """
        A remote image gets no request when the message is opened, and is
        loaded once "load images" is chosen.
        """
        tracker = Canary(self)
        token = uuid.uuid4().hex
        pixel = f"{tracker.base}/pixel.png?id={token}"
        server = startWebServer(self)
        server.send(
            "alice@example.com",
            htmlMessage("Tracked", f'<p>A newsletter.</p><img src="{pixel}" width=1 height=1>', "A newsletter."),
        )
        [id] = idsBySubject(server).values()
        browser = Browser(self, server.base)
        browser.logIn("alice")
        browser.get(f"/m/{id}")
        browser.waitFor("section#html iframe#html-frame")
        time.sleep(SETTLE)
        self.assertEqual(tracker.seen(), [])

        browser.waitFor("a#load-images").click()
        waitUntil(lambda: tracker.seen(), "the image is loaded", 10)
        self.assertIn(f"/pixel.png?id={token}", tracker.seen())
        frame = browser.waitFor("section#html iframe#html-frame")
        self.assertTrue((frame.get_attribute("src") or "").endswith(f"/m/{id}/html?images=1"))

    def test_grantsLimitWhatBobSees(self) -> None:
        """
        bob, granted example.net/bob only, sees only that mailbox in the
        tree and its mail in the list, and a message of example.com is
        "not found" for him, as an unknown one is.
        """
        server = startWebServer(self)
        server.send("alice@example.com", textMessage("For example.com"))
        server.send("bob@example.net", textMessage("For bob"))
        ids = idsBySubject(server)
        browser = Browser(self, server.base)
        browser.logIn("bob")
        keys = [a.get_attribute("data-key") for a in browser.findAll("nav#tree a.folder")]
        self.assertEqual(keys, ["example.net/bob"])
        browser.waitFor("table#messages tr.message")
        subjects = [a.text for a in browser.findAll("table#messages tr.message a.subject")]
        self.assertEqual(subjects, ["For bob"])
        self.assertEqual(browser.fetchStatus(f"/m/{ids['For example.com']}"), 404)
        self.assertEqual(browser.fetchStatus("/m/1234567890.M1P1Q1.nowhere"), 404)
        self.assertEqual(browser.fetchStatus(f"/m/{ids['For bob']}"), 200)
        browser.get(f"/m/{ids['For example.com']}")
        self.assertNotIn("For example.com", browser.driver.page_source)

    def test_screenshotOfTheMessagePage(self) -> None:
        """
        A screenshot of a message page is kept among the test artefacts,
        a PNG of the window's size.
        """
        server = startWebServer(self)
        server.send(
            "alice@example.com",
            htmlMessage(
                "A message to look at",
                "<h2>Hello</h2><p>This is <b>HTML</b> mail with a <a href='https://example.org/'>link</a>.</p>"
                "<ul><li>one</li><li>two</li></ul>",
                "Hello\n\nThis is HTML mail with a link.\n",
            ),
        )
        [id] = idsBySubject(server).values()
        browser = Browser(self, server.base)
        browser.logIn("alice")
        browser.get(f"/m/{id}")
        browser.waitFor("h1#subject")
        path = browser.screenshot("message-page.png")
        with open(path, "rb") as f:
            png = f.read()
        self.assertEqual(png[:8], b"\x89PNG\r\n\x1a\n")
        width, height = struct.unpack(">II", png[16:24])
        size = browser.driver.get_window_size()
        self.assertGreaterEqual(width, size["width"] // 2)
        self.assertGreaterEqual(height, 300)
        self.assertGreater(len(png), 5000)
        self.assertGreater(os.path.getmtime(path), time.time() - 600)

    def test_phoneWidthAndDarkMode(self) -> None:
        """
        At a phone's width (375 by 812) neither the message list nor a
        message page scrolls sideways, even with a long unbroken subject
        and address, and the page follows the system's
        colour scheme: light when it is light, dark when it is dark.
        """
        server = startWebServer(self)
        long = "A-rather-long-subject-without-spaces-" * 3 + "Unbroken" * 12
        server.send(
            "alice@example.com",
            textMessage("A short one"),
            textMessage(long, sender="Somebody With A Long Name <a.very.long.address.indeed@subdomain.remote.example>"),
        )
        ids = idsBySubject(server)
        browser = Browser(self, server.base)
        browser.logIn("alice")
        browser.cdp(
            "Emulation.setDeviceMetricsOverride",
            {"width": PHONE_WIDTH, "height": 812, "deviceScaleFactor": 2, "mobile": True},
        )
        for path, picture in (("/", "phone-list.png"), (f"/m/{ids[long]}", "phone-message.png")):
            browser.get(path)
            browser.waitFor("table#messages tr.message" if path == "/" else "h1#subject")
            # Not innerWidth: on a phone the layout viewport grows to fit
            # content that is too wide, and innerWidth with it.
            width = browser.script("return document.documentElement.scrollWidth;")
            self.assertLessEqual(width, PHONE_WIDTH, f"{path} scrolls sideways at {PHONE_WIDTH} px: {width} px wide")
            browser.screenshot(picture)

        browser.cdp("Emulation.setEmulatedMedia", {"features": [{"name": "prefers-color-scheme", "value": "light"}]})
        browser.get("/")
        browser.waitFor("table#messages")
        self.assertGreater(luminance(backgroundOf(browser)), 0.6, backgroundOf(browser))
        browser.cdp("Emulation.setEmulatedMedia", {"features": [{"name": "prefers-color-scheme", "value": "dark"}]})
        browser.get("/")
        browser.waitFor("table#messages")
        self.assertLess(luminance(backgroundOf(browser)), 0.3, backgroundOf(browser))
        browser.screenshot("phone-dark.png")
