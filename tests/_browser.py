"""
Helpers for the web interface's end-to-end and browser tests: a real
C{twistd -n mailharbor} with the web interface on, its users and domains;
a blocking HTTP client that logs in as the README's curl examples do; a
loopback HTTP "canary" that records every request a page makes to it; and
a headless Chromium driven through Selenium and Debian's chromedriver.

Everything here blocks: Selenium does, and so the tests using it are plain
synchronous methods, with every wait bounded by an explicit timeout.  The
server is a subprocess writing to a log file and the canary runs in its
own thread, so nothing waits for the test's reactor to turn.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import smtplib
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote

from twisted.trial.unittest import SkipTest, TestCase

from harbor.auth import setPassword
from tests._e2e import freePort, subprocessEnvironment, venvCommand

if TYPE_CHECKING:
    from selenium.webdriver.chrome.webdriver import WebDriver
    from selenium.webdriver.remote.webelement import WebElement

T = TypeVar("T")

CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM = "/usr/bin/chromium"
HOSTNAME = "mx.example.com"
#: The users of the test server and their passwords: alice is an admin,
#: bob is granted example.net/bob only.
PASSWORDS = {"alice": "alice-password", "bob": "bob-password"}
#: How long any single wait may take before the test fails.
WAIT = 20.0
_POLL = 0.05
#: Run in every document (L{Browser.onEveryDocument}): a top-level page
#: collects the messages posted to it in C{window.__harborTestMessages}.
MARKER_LISTENER = (
    "if (window === window.top && !window.__harborTestMessages) {"
    " window.__harborTestMessages = [];"
    " window.addEventListener('message', function (e) { window.__harborTestMessages.push(String(e.data)); });"
    "}"
)


def waitUntil(condition: Callable[[], T | None], what: str, limit: float = WAIT) -> T:
    """
    Poll C{condition()} until it gives a true value, and return it.

    @raise AssertionError: naming C{what} if it is still false after
        C{limit} seconds.
    """
    deadline = time.monotonic() + limit
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {limit}s waiting until {what}")
        time.sleep(_POLL)


def untilLive(deliver: Callable[[str], object], shown: Callable[[str], bool], attempts: int = 6) -> None:
    """
    Deliver warm-up messages until one is shown live.

    The event stream's poller takes its first look at the Maildirs in a
    thread once the first stream has opened; mail stored before that look
    ends is part of what it starts from, never a change.  Once a warm-up
    message has been shown, the poller is comparing, and any later mail
    is a change.

    @param deliver: Delivers a message with the given subject.
    @param shown: Whether the message with that subject has been shown.
    """
    for attempt in range(attempts):
        subject = f"Warm-up {attempt}"
        deliver(subject)
        try:
            waitUntil(lambda: shown(subject), f"{subject!r} is shown live", 4)  # noqa: B023 (called at once)
        except AssertionError:
            continue
        return
    raise AssertionError(f"none of {attempts} warm-up messages was shown live")


def artefactsDirectory() -> str:
    """
    Where tests keep what they make for people to look at afterwards:
    C{$MAILHARBOR_ARTEFACTS}, else C{tests/artefacts/} in the checkout.
    """
    directory = os.environ.get("MAILHARBOR_ARTEFACTS") or os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "artefacts"
    )
    os.makedirs(directory, exist_ok=True)
    return directory


# Messages.


def textMessage(subject: str, body: str = "Hello.\n", sender: str = "Sender <sender@remote.example>") -> bytes:
    """
    A plain text message.
    """
    message = EmailMessage()
    message["From"] = sender
    message["To"] = "someone@example.com"
    message["Subject"] = subject
    message.set_content(body)
    return bytes(message)


def htmlMessage(subject: str, html: str, text: str | None = None) -> bytes:
    """
    An HTML message, with a text alternative when C{text} is given.  The
    HTML goes in base64, so that any byte (NUL included) arrives as
    written.
    """
    message = EmailMessage()
    message["From"] = "Sender <sender@remote.example>"
    message["To"] = "someone@example.com"
    message["Subject"] = subject
    if text is not None:
        message.set_content(text)
        message.add_alternative(html, subtype="html", cte="base64")
    else:
        message.set_content(html, subtype="html", cte="base64")
    return bytes(message)


def attachmentMessage(subject: str, filename: str, data: bytes) -> bytes:
    """
    A text message with one binary attachment.
    """
    message = EmailMessage()
    message["From"] = "Sender <sender@remote.example>"
    message["To"] = "someone@example.com"
    message["Subject"] = subject
    message.set_content("See the attachment.\n")
    message.add_attachment(data, maintype="application", subtype="octet-stream", filename=filename)
    return bytes(message)


# The canary.


class Canary:
    """
    A loopback HTTP server, in a thread of its own, that records every
    request made to it and answers with a one-pixel PNG (for a path
    naming a C{.png}; anything else is a 404): a hostile message
    that got a browser to fetch, navigate or beacon anywhere here, or a
    remote image that was loaded, leaves a hit.

    @ivar hits: The paths requested, in order.
    @ivar pages: HTML pages it serves, by path, instead of counting a hit
        (for the test that proves the traces are seen).
    @ivar base: C{http://127.0.0.1:PORT}.
    """

    PIXEL = bytes.fromhex(
        "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
        "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
    )

    def __init__(self, testCase: TestCase) -> None:
        canary = self
        self.hits: list[str] = []
        self.pages: dict[str, bytes] = {}
        self._lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def _hit(self) -> None:
                with canary._lock:
                    page = canary.pages.get(self.path)
                    if page is None:
                        canary.hits.append(self.path)
                if page is not None:
                    self.send_response(200)
                    self.send_header("Content-Type", "text/html; charset=utf-8")
                    self.send_header("Content-Length", str(len(page)))
                    self.end_headers()
                    self.wfile.write(page)
                    return
                if ".png" not in self.path:
                    # Anything else is missing, so an onerror vector
                    # pointed here (src=x) still meets an error.
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(Canary.PIXEL)))
                self.send_header("Access-Control-Allow-Origin", "*")
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(Canary.PIXEL)

            do_GET = do_POST = do_HEAD = do_PUT = do_OPTIONS = _hit

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.base = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="canary", daemon=True)
        self._thread.start()
        testCase.addCleanup(self.close)

    def seen(self) -> list[str]:
        """
        The paths requested so far.
        """
        with self._lock:
            return list(self.hits)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(WAIT)


# The server.


class HTTPResponse:
    """
    One answer, read in full.
    """

    def __init__(self, status: int, headers: http.client.HTTPMessage, body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"<HTTPResponse {self.status} {self.body[:300]!r}>"


class WebClient:
    """
    A blocking HTTP client for the web interface, as curl with a cookie jar
    is in README's examples: it keeps the session cookie and the CSRF
    token, and sends C{Origin} and C{X-CSRF-Token} on changes unless told
    not to.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.origin = f"http://127.0.0.1:{port}"
        self.cookie: str | None = None
        self.csrf: str | None = None

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        origin: bool = True,
        csrf: bool = True,
    ) -> HTTPResponse:
        """
        Make one request on a fresh connection and read the answer.

        @param origin: Send C{Origin} (on changes only, as a browser does).
        @param csrf: Send the session's token as C{X-CSRF-Token} (on
            changes only).
        """
        sent = dict(headers or {})
        if self.cookie is not None:
            sent["Cookie"] = self.cookie
        if method not in ("GET", "HEAD"):
            if origin:
                sent.setdefault("Origin", self.origin)
            if csrf and self.csrf is not None:
                sent.setdefault("X-CSRF-Token", self.csrf)
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=WAIT)
        try:
            connection.request(method, path, body=body, headers=sent)
            response = connection.getresponse()
            answer = HTTPResponse(response.status, response.headers, response.read())
        finally:
            connection.close()
        for value in answer.headers.get_all("Set-Cookie") or ():
            pair = value.split(";", 1)[0]
            if pair.startswith("harbor_session="):
                self.cookie = pair
        return answer

    def get(self, path: str, **kwargs: Any) -> HTTPResponse:
        return self.request("GET", path, **kwargs)

    def postJSON(
        self, path: str, value: object, headers: Mapping[str, str] | None = None, **kwargs: Any
    ) -> HTTPResponse:
        return self.request(
            "POST", path, json.dumps(value).encode(), {"Content-Type": "application/json", **(headers or {})}, **kwargs
        )

    def delete(self, path: str, **kwargs: Any) -> HTTPResponse:
        return self.request("DELETE", path, **kwargs)

    def logIn(self, user: str, password: str | None = None) -> HTTPResponse:
        """
        C{POST /api/v1/login} as README's curl example does; keeps the
        cookie and the token.

        @raise AssertionError: if the login is refused.
        """
        answer = self.postJSON(
            "/api/v1/login", {"user": user, "password": PASSWORDS[user] if password is None else password}
        )
        if answer.status != 200:
            raise AssertionError(f"login as {user} refused: {answer!r}")
        self.csrf = answer.json()["csrf"]
        return answer

    def messages(self, query: str = "") -> list[dict[str, Any]]:
        """
        Every message the user may see (following the cursor), newest
        first, as the API's summaries.
        """
        found: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            path = "/api/v1/messages?limit=200"
            if query:
                path += "&q=" + _quote(query)
            if cursor:
                path += "&cursor=" + _quote(cursor)
            answer = self.get(path)
            if answer.status != 200:
                raise AssertionError(f"GET {path}: {answer!r}")
            page = answer.json()
            found.extend(page["messages"])
            cursor = page["cursor"]
            if not cursor:
                return found


def _quote(text: str) -> str:
    return quote(text, safe="")


class WebServer:
    """
    A C{twistd -n mailharbor} subprocess with the web interface on.

    @ivar root: The Maildir root.
    @ivar smtpPort: Its SMTP port on 127.0.0.1.
    @ivar webPort: Its web port on 127.0.0.1.
    @ivar base: C{http://127.0.0.1:WEBPORT}.
    @ivar log: The path of its log (its standard output and error).
    """

    def __init__(
        self, root: str, smtpPort: int, webPort: int, process: subprocess.Popen[bytes], log: str
    ) -> None:
        self.root = root
        self.smtpPort = smtpPort
        self.webPort = webPort
        self.base = f"http://127.0.0.1:{webPort}"
        self.process = process
        self.log = log

    def output(self) -> str:
        """
        What it has logged so far.
        """
        with open(self.log, "rb") as f:
            return f.read().decode(errors="replace")

    def client(self, user: str | None = None) -> WebClient:
        """
        A client, logged in as C{user} unless it is L{None}.
        """
        client = WebClient(self.webPort)
        if user is not None:
            client.logIn(user)
        return client

    def send(self, recipients: str | Sequence[str], *messages: bytes) -> None:
        """
        Send messages over one SMTP session, each to C{recipients}.

        @raise AssertionError: if a recipient is refused.
        """
        if isinstance(recipients, str):
            recipients = [recipients]
        with smtplib.SMTP("127.0.0.1", self.smtpPort, local_hostname="client.example", timeout=WAIT) as s:
            for message in messages:
                refused = s.sendmail("sender@remote.example", list(recipients), message)
                if refused:
                    raise AssertionError(f"refused: {refused!r}")

    def maildir(self, key: str) -> str:
        """
        The path of the Maildir with this key (C{example.com},
        C{example.net/bob}).
        """
        return os.path.join(self.root, *key.split("/"))


def writeUsers(path: str, users: Iterable[str] = PASSWORDS) -> None:
    """
    Write a users file, as C{mailharbor passwd} does.
    """
    for user in users:
        setPassword(path, user, PASSWORDS[user])


def webConfig(root: str, usersFile: str | None, webListen: str, extra: str = "") -> str:
    """
    The test server's configuration: example.com a catch-all, example.net
    with the mailbox bob, the web interface on C{webListen} with alice as
    an admin and bob granted example.net/bob.
    """
    lines = [
        'domain = ["example.com"]',
        f"maildir = {json.dumps(root)}",
        f"hostname = {json.dumps(HOSTNAME)}",
    ]
    if usersFile is not None:
        lines.append(f"users_file = {json.dumps(usersFile)}")
    lines += [
        extra,
        "",
        "[web]",
        f"listen = {json.dumps(webListen)}",
        'admins = ["alice"]',
        "",
        "[web.access]",
        'bob = ["example.net/bob"]',
        "",
        '[domains."example.net"]',
        'mailboxes = ["bob"]',
        'catch_all = "reject"',
        "",
    ]
    return "\n".join(lines)


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _healthy(port: int) -> bool:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        connection.request("GET", "/healthz")
        return connection.getresponse().status == 200
    except OSError:
        return False
    finally:
        connection.close()


def startProcess(testCase: TestCase, arguments: Sequence[str], name: str = "twistd") -> tuple[subprocess.Popen[bytes], str]:
    """
    Start C{twistd -n --pidfile= ARGUMENTS} of the environment the tests
    run in, in a fresh working directory, its output going to a log file
    there; cleanup kills it if it is still running.

    @return: the process and its log's path.
    """
    cwd = os.path.abspath(testCase.mktemp())
    os.makedirs(cwd)
    log = os.path.join(cwd, f"{name}.log")
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [venvCommand("twistd"), "-n", "--pidfile=", *arguments],
            cwd=cwd,
            env=subprocessEnvironment(),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )

    def kill() -> None:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(WAIT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(WAIT)

    testCase.addCleanup(kill)
    return process, log


def startWebServer(
    testCase: TestCase,
    users: bool = True,
    extraConfig: str = "",
    serviceArguments: Sequence[str] = (),
    twistdArguments: Sequence[str] = (),
) -> WebServer:
    """
    Write the test configuration (L{webConfig}) and the users file, start
    C{twistd -n mailharbor --config FILE --port tcp:PORT:interface=127.0.0.1}
    on free loopback ports, and wait until both SMTP and the web interface
    answer.  Cleanup stops it.

    @param users: Whether there is a users file (alice and bob).
    """
    home = os.path.abspath(testCase.mktemp())
    os.makedirs(home)
    root = os.path.join(home, "Maildir")
    usersFile = None
    if users:
        usersFile = os.path.join(home, "users")
        writeUsers(usersFile)
    smtpPort, webPort = freePort(), freePort()
    configFile = os.path.join(home, "mailharbor.toml")
    with open(configFile, "w") as f:
        f.write(webConfig(root, usersFile, f"tcp:{webPort}:interface=127.0.0.1", extraConfig))
    process, log = startProcess(
        testCase,
        [
            *twistdArguments,
            "mailharbor",
            "--config",
            configFile,
            "--port",
            f"tcp:{smtpPort}:interface=127.0.0.1",
            *serviceArguments,
        ],
    )
    server = WebServer(root, smtpPort, webPort, process, log)

    def up() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"twistd exited with {process.returncode}:\n{server.output()}")
        return _accepts(smtpPort) and _healthy(webPort)

    waitUntil(up, "twistd mailharbor answers on SMTP and the web", WAIT * 2)
    return server


def dropIntoMaildir(maildir: str, message: bytes, host: str = "other.example") -> str:
    """
    Deliver a message as another program would, with plain file writes:
    into C{tmp/}, then renamed into C{new/}, under a name of the usual
    time-first shape.

    @return: the file name in C{new/}.
    """
    now = time.time()
    name = f"{int(now)}.M{int(now % 1 * 1_000_000)}P{os.getpid()}Q{threading.get_ident() % 1000}.{host}"
    os.makedirs(os.path.join(maildir, "tmp"), exist_ok=True)
    temporary = os.path.join(maildir, "tmp", name)
    with open(temporary, "wb") as f:
        f.write(message)
    os.rename(temporary, os.path.join(maildir, "new", name))
    return name


# The browser.


def requireChromedriver() -> None:
    """
    @raise SkipTest: where Debian's chromedriver is not installed (CI
        installs it, so these tests run there).
    """
    if not os.path.exists(CHROMEDRIVER):
        raise SkipTest(f"{CHROMEDRIVER} is absent: apt-get install chromium chromium-driver")


class Browser:
    """
    A headless Chromium, driven through Debian's chromedriver (never
    Selenium Manager, which would go to the network), with a fresh
    profile in the test's temporary directory.

    Alerts are left open (unhandled prompts are ignored), so that
    L{alertText} can tell whether a page raised one, and the console is
    kept (L{consoleLog}).
    """

    def __init__(self, testCase: TestCase, base: str, width: int = 1280, height: int = 900) -> None:
        requireChromedriver()
        from selenium import webdriver
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service

        self.base = base
        profile = os.path.abspath(testCase.mktemp())
        os.makedirs(profile)
        options = Options()
        if os.path.exists(CHROMIUM):
            options.binary_location = CHROMIUM
        for argument in (
            "--headless=new",
            "--disable-dev-shm-usage",
            "--disable-gpu",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--metrics-recording-only",
            f"--user-data-dir={profile}",
            f"--window-size={width},{height}",
        ):
            options.add_argument(argument)
        if os.geteuid() == 0:
            options.add_argument("--no-sandbox")
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        options.unhandled_prompt_behavior = "ignore"
        service = Service(CHROMEDRIVER, log_output=os.path.join(profile, "chromedriver.log"))
        self.driver: WebDriver = webdriver.Chrome(service=service, options=options)
        testCase.addCleanup(self.quit)
        self.driver.set_page_load_timeout(WAIT)
        self.driver.set_script_timeout(WAIT)
        self._console: list[dict[str, Any]] = []

    def quit(self) -> None:
        self.driver.quit()

    def get(self, path: str) -> None:
        """
        Open a path of the server and wait for the page (and its frames)
        to have loaded.
        """
        self.driver.get(self.base + path)

    def findAll(self, css: str) -> list[WebElement]:
        """
        Every element C{css} selects now.
        """
        from selenium.webdriver.common.by import By

        return list(self.driver.find_elements(By.CSS_SELECTOR, css))

    def waitFor(self, css: str, limit: float = WAIT) -> WebElement:
        """
        Wait until C{css} selects an element; return it.
        """
        from selenium.webdriver.common.by import By

        def found() -> WebElement | None:
            elements = self.driver.find_elements(By.CSS_SELECTOR, css)
            return elements[0] if elements else None

        return waitUntil(found, f"{css!r} is on {self.driver.current_url}", limit)

    def frameText(self, css: str) -> str:
        """
        The text of the body of the frame C{css} selects (read by the
        driver, which needs no script of the frame's own).
        """
        from selenium.webdriver.common.by import By

        self.driver.switch_to.frame(self.waitFor(css))
        try:
            return self.driver.find_element(By.TAG_NAME, "body").text
        finally:
            self.driver.switch_to.default_content()

    def script(self, source: str, *arguments: Any) -> Any:
        return self.driver.execute_script(source, *arguments)

    def fetchStatus(self, path: str) -> int:
        """
        The status the server answers C{path} with, fetched from the page
        with its cookie (as the page's own script would).
        """
        return int(
            self.driver.execute_async_script(
                "var done = arguments[arguments.length - 1];"
                "fetch(arguments[0], {credentials: 'same-origin', redirect: 'manual'})"
                ".then(function (r) { done(r.status); }, function () { done(-1); });",
                path,
            )
        )

    def logIn(self, user: str, password: str | None = None) -> None:
        """
        Log in through the form, as a person does: open C{/}, be sent to
        the login page, fill in the form and submit it; wait for the tree.
        """
        from selenium.webdriver.common.by import By

        self.get("/")
        form = self.waitFor("form#login")
        form.find_element(By.NAME, "user").send_keys(user)
        form.find_element(By.NAME, "password").send_keys(PASSWORDS[user] if password is None else password)
        form.find_element(By.CSS_SELECTOR, "button[type=submit], input[type=submit]").click()
        self.waitFor("nav#tree")

    def alertText(self) -> str | None:
        """
        The text of an open alert, confirm or prompt dialog, or L{None}.
        """
        from selenium.common.exceptions import NoAlertPresentException

        try:
            return self.driver.switch_to.alert.text
        except NoAlertPresentException:
            return None

    def consoleLog(self) -> list[dict[str, Any]]:
        """
        Every console message and browser-reported error so far.
        """
        self._console.extend(self.driver.get_log("browser"))
        return list(self._console)

    def cdp(self, command: str, parameters: Mapping[str, Any]) -> Any:
        """
        Send a Chrome DevTools Protocol command.
        """
        return self.driver.execute_cdp_cmd(command, dict(parameters))

    def onEveryDocument(self, source: str) -> None:
        """
        Run C{source} in every document the browser opens from now on,
        before the page's own scripts (for the tests' listeners).
        """
        self.cdp("Page.addScriptToEvaluateOnNewDocument", {"source": source})

    def screenshot(self, name: str) -> str:
        """
        Save a PNG of the viewport among the artefacts.

        @return: its path.
        """
        path = os.path.join(artefactsDirectory(), name)
        if not self.driver.save_screenshot(path):
            raise AssertionError(f"no screenshot saved at {path}")
        return path
