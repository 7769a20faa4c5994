"""
The web interface end to end without a browser: a real C{twistd
mailharbor} with the web interface on, mail sent to it with smtplib, and
the requests of README's curl examples made with C{http.client}; how it
starts (README's first command line, a public endpoint without users,
workers).

The tests are plain synchronous methods, as in L{tests.test_browser}:
the server is a subprocess and every client blocks, each with a timeout.
"""

from __future__ import annotations

import json
import mailbox
import os
import re
import shlex
import socket
import subprocess
import time
from typing import Any

from twisted.trial.unittest import TestCase

from tests._browser import (
    WAIT,
    WebClient,
    WebServer,
    attachmentMessage,
    dropIntoMaildir,
    startProcess,
    startWebServer,
    textMessage,
    untilLive,
    waitUntil,
)
from tests._e2e import freePort, subprocessEnvironment, venvCommand

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.rst")


def onlyMessage(server: WebServer, key: str = "example.com") -> tuple[mailbox.Maildir, str]:
    """
    The one message of a Maildir, opened as a mail reader opens it: the
    Maildir and the message's key.
    """
    md = mailbox.Maildir(server.maildir(key), factory=None, create=False)
    [found] = list(md.keys())
    return md, found


class EventStream:
    """
    A blocking reader of C{GET /api/v1/events} on a bare socket, so that
    the stream can be read as it comes, with a timeout on every read.
    """

    def __init__(self, client: WebClient) -> None:
        self.sock = socket.create_connection(("127.0.0.1", client.port), timeout=WAIT)
        request = (
            f"GET /api/v1/events HTTP/1.1\r\nHost: 127.0.0.1:{client.port}\r\n"
            f"Cookie: {client.cookie}\r\nAccept: text/event-stream\r\n\r\n"
        )
        self.sock.sendall(request.encode())
        self.buffer = b""
        while b"\r\n\r\n" not in self.buffer:
            self._read()
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        self.head = head.decode("latin-1")
        self.chunked = "transfer-encoding: chunked" in self.head.lower()
        self.text = ""

    def _read(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError("the event stream ended")
        self.buffer += chunk

    def _decode(self) -> None:
        # Turn whatever complete chunks arrived into text.
        if not self.chunked:
            self.text += self.buffer.decode()
            self.buffer = b""
            return
        while b"\r\n" in self.buffer:
            size, rest = self.buffer.split(b"\r\n", 1)
            length = int(size.split(b";")[0], 16)
            if len(rest) < length + 2:
                return
            self.text += rest[:length].decode()
            self.buffer = rest[length + 2 :]

    def events(self) -> list[tuple[str, str]]:
        """
        The complete events received so far, as (event, data).
        """
        found = []
        for block in self.text.replace("\r\n", "\n").split("\n\n")[:-1]:
            event, data = "message", []
            for line in block.split("\n"):
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].lstrip())
            if data:
                found.append((event, "\n".join(data)))
        return found

    def waitFor(self, what: str, condition: Any, limit: float = WAIT) -> Any:
        """
        Read until an event satisfies C{condition(event, data)}; return it.
        """
        deadline = time.monotonic() + limit
        while True:
            self._decode()
            for event in self.events():
                if condition(*event):
                    return event
            if time.monotonic() > deadline:
                raise AssertionError(f"no event {what} in {limit}s; got {self.text!r}")
            self.sock.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                self._read()
            except TimeoutError:
                pass

    def close(self) -> None:
        self.sock.close()


class APITests(TestCase):
    """
    README's API flow, as curl makes it.
    """

    def test_logIn(self) -> None:
        """
        POST /api/v1/login with the user's JSON gives the CSRF token and a
        session cookie (HttpOnly, SameSite=Strict) that /api/v1/session
        knows; a wrong password gets 401 and JSON.
        """
        server = startWebServer(self)
        client = WebClient(server.webPort)
        answer = client.logIn("alice")
        self.assertEqual(answer.json()["user"], "alice")
        self.assertTrue(answer.json()["csrf"])
        [cookie] = [c for c in answer.headers.get_all("Set-Cookie") or () if c.startswith("harbor_session=")]
        attributes = {part.strip().lower() for part in cookie.split(";")[1:]}
        self.assertIn("httponly", attributes)
        self.assertIn("samesite=strict", attributes)
        self.assertIn("path=/", attributes)
        session = client.get("/api/v1/session")
        self.assertEqual(session.status, 200)
        self.assertEqual(session.json(), {"user": "alice", "admin": True, "csrf": client.csrf})

        wrong = WebClient(server.webPort).postJSON("/api/v1/login", {"user": "alice", "password": "not it"})
        self.assertEqual(wrong.status, 401)
        self.assertEqual(wrong.headers.get_content_type(), "application/json")
        self.assertIn("error", wrong.json())
        self.assertEqual(WebClient(server.webPort).get("/api/v1/mailboxes").status, 401)

    def test_mailboxes(self) -> None:
        """
        GET /api/v1/mailboxes lists every mailbox for an admin and only the
        granted ones for bob, with their counts.
        """
        server = startWebServer(self)
        server.send("alice@example.com", textMessage("one"))
        server.send("bob@example.net", textMessage("two"), textMessage("three"))
        alice = {m["key"]: m for m in server.client("alice").get("/api/v1/mailboxes").json()["mailboxes"]}
        self.assertIn("example.com", alice)
        self.assertEqual(alice["example.com"]["total"], 1)
        self.assertEqual(alice["example.net/bob"]["total"], 2)
        self.assertEqual(alice["example.net/bob"]["new"], 2)
        bob = server.client("bob").get("/api/v1/mailboxes")
        self.assertEqual(bob.headers.get_content_type(), "application/json")
        self.assertEqual([m["key"] for m in bob.json()["mailboxes"]], ["example.net/bob"])

    def test_cursorPaging(self) -> None:
        """
        GET /api/v1/messages pages through 120 messages newest first with
        its cursor: 50, 50, then 20 and no cursor, each message once; a bad
        limit or cursor is 400; the stats count them.
        """
        server = startWebServer(self)
        server.send("alice@example.com", *(textMessage(f"Message {n:03d}") for n in range(120)))
        client = server.client("alice")
        sizes, seen, cursor = [], [], None
        while True:
            path = "/api/v1/messages?mailbox=example.com&limit=50" + (f"&cursor={cursor}" if cursor else "")
            answer = client.get(path)
            self.assertEqual(answer.status, 200, answer)
            page = answer.json()
            sizes.append(len(page["messages"]))
            seen.extend(page["messages"])
            cursor = page["cursor"]
            if cursor is None:
                break
            self.assertLess(len(sizes), 10, "the cursor ends")
        self.assertEqual(sizes, [50, 50, 20])
        self.assertEqual(len({m["id"] for m in seen}), 120)
        self.assertEqual(sorted(m["subject"] for m in seen), [f"Message {n:03d}" for n in range(120)])
        timestamps = [m["timestamp"] for m in seen]
        self.assertEqual(timestamps, sorted(timestamps, reverse=True))
        self.assertEqual(seen[0]["subject"], "Message 119")
        self.assertEqual(seen[0]["recipient"], "alice@example.com")
        self.assertEqual(client.get("/api/v1/messages").json()["messages"][:50], seen[:50])

        for bad in ("limit=0", "limit=201", "cursor=not-a-cursor", "q=before:yesterday-ish"):
            answer = client.get(f"/api/v1/messages?{bad}")
            self.assertEqual(answer.status, 400, bad)
            self.assertIn("error", answer.json())

        stats = client.get("/api/v1/stats").json()
        self.assertEqual(stats["messages"], 120)
        self.assertEqual(stats["unread"], 120)

    def test_messageRawAndParts(self) -> None:
        """
        GET /api/v1/messages/ID describes the message; .../raw gives the
        bytes as stored, as text/plain; .../parts/N the attachment, to be
        downloaded.
        """
        server = startWebServer(self)
        data = bytes(range(256)) * 4
        server.send("alice@example.com", attachmentMessage("With a file", "data.bin", data))
        client = server.client("alice")
        [summary] = client.messages()
        id = summary["id"]
        self.assertTrue(summary["hasAttachment"])

        answer = client.get(f"/api/v1/messages/{id}")
        self.assertEqual(answer.status, 200)
        described = answer.json()
        self.assertEqual(described["summary"]["id"], id)
        self.assertEqual(described["message"]["subject"], "With a file")
        self.assertIn("hooks", described)
        self.assertIn("timeline", described)
        [part] = [p for p in described["message"]["parts"] if p["filename"] == "data.bin"]

        md, key = onlyMessage(server)
        raw = client.get(f"/api/v1/messages/{id}/raw")
        self.assertEqual(raw.status, 200)
        self.assertEqual(raw.headers.get_content_type(), "text/plain")
        self.assertEqual(raw.body, md.get_bytes(key))

        download = client.get(f"/api/v1/messages/{id}/parts/{part['index']}")
        self.assertEqual(download.status, 200)
        self.assertEqual(download.body, data)
        self.assertEqual(download.headers.get_content_type(), "application/octet-stream")
        self.assertTrue((download.headers["Content-Disposition"] or "").startswith("attachment"))
        self.assertEqual(download.headers["X-Content-Type-Options"], "nosniff")

        self.assertEqual(client.get("/api/v1/messages/1234567890.M1P1Q1.nowhere").status, 404)
        self.assertEqual(client.get(f"/api/v1/messages/{id}/parts/99").status, 404)

    def test_seenAndDelete(self) -> None:
        """
        POST .../seen moves the file into cur/ with the S flag (and back
        without it), as Dovecot does; DELETE removes it.
        """
        server = startWebServer(self)
        server.send("alice@example.com", textMessage("Read me"))
        client = server.client("alice")
        [summary] = client.messages()
        id = summary["id"]

        answer = client.postJSON(f"/api/v1/messages/{id}/seen", {"seen": True})
        self.assertEqual(answer.status, 200, answer)
        self.assertEqual(answer.json(), {"id": id, "seen": True})
        md, key = onlyMessage(server)
        message = md.get_message(key)
        self.assertEqual(message.get_subdir(), "cur")
        self.assertIn("S", message.get_flags())
        [name] = os.listdir(os.path.join(server.maildir("example.com"), "cur"))
        self.assertTrue(name.endswith(":2,S"), name)
        self.assertTrue(client.messages()[0]["seen"])
        self.assertEqual(client.messages("is:unread"), [])

        answer = client.postJSON(f"/api/v1/messages/{id}/seen", {"seen": False})
        self.assertEqual(answer.json(), {"id": id, "seen": False})
        md, key = onlyMessage(server)
        self.assertNotIn("S", md.get_message(key).get_flags())
        self.assertEqual([m["id"] for m in client.messages("is:unread")], [id])

        answer = client.delete(f"/api/v1/messages/{id}")
        self.assertEqual(answer.status, 200, answer)
        self.assertEqual(answer.json(), {"deleted": id})
        self.assertEqual(list(mailbox.Maildir(server.maildir("example.com"), create=False).keys()), [])
        self.assertEqual(client.get(f"/api/v1/messages/{id}").status, 404)

    def test_changesNeedTokenAndOrigin(self) -> None:
        """
        A change without the CSRF token, without an Origin (or Referer), or
        from another origin is refused with 403 and changes nothing.
        """
        server = startWebServer(self)
        server.send("alice@example.com", textMessage("Leave me"))
        client = server.client("alice")
        [summary] = client.messages()
        path = f"/api/v1/messages/{summary['id']}"
        refusals = [
            client.postJSON(path + "/seen", {"seen": True}, csrf=False),
            client.postJSON(path + "/seen", {"seen": True}, origin=False),
            client.postJSON(path + "/seen", {"seen": True}, headers={"X-CSRF-Token": "forged"}),
            client.postJSON(path + "/seen", {"seen": True}, headers={"Origin": "http://evil.example"}),
            client.delete(path, csrf=False),
            client.delete(path, origin=False),
        ]
        self.assertEqual([answer.status for answer in refusals], [403] * len(refusals))
        md, key = onlyMessage(server)
        self.assertEqual(md.get_message(key).get_subdir(), "new")
        refused = WebClient(server.webPort).postJSON(
            "/api/v1/login", {"user": "alice", "password": "alice-password"}, origin=False
        )
        self.assertEqual(refused.status, 403)

    def test_eventsShowNewMail(self) -> None:
        """
        GET /api/v1/events is an event stream that tells of a new message
        (as a "change" of kind "new" with its id), and of one another
        program drops in; bob's stream does not tell him of example.com's.
        """
        server = startWebServer(self)
        alice = server.client("alice")
        bob = server.client("bob")
        stream = EventStream(alice)
        self.addCleanup(stream.close)
        bobStream = EventStream(bob)
        self.addCleanup(bobStream.close)
        self.assertIn(" 200 ", stream.head.split("\r\n")[0] + " ")
        self.assertIn("text/event-stream", stream.head.lower())

        def idOf(subject: str) -> str | None:
            return {m["subject"]: m["id"] for m in alice.messages()}.get(subject)

        def streamed(subject: str) -> bool:
            id = idOf(subject)
            try:
                stream.waitFor(f"new for {subject}", lambda event, data: id is not None and id in data, 0.5)
            except AssertionError:
                return False
            return True

        untilLive(lambda subject: server.send("alice@example.com", textMessage(subject)), streamed)
        server.send("alice@example.com", textMessage("Live"))
        server.send("bob@example.net", textMessage("For bob, live"))
        ids = {m["subject"]: m["id"] for m in alice.messages()}

        def isNew(id: str) -> Any:
            return lambda event, data: event == "change" and json.loads(data).get("id") == id

        _, data = stream.waitFor("new for Live", isNew(ids["Live"]))
        change = json.loads(data)
        self.assertEqual(change["kind"], "new")
        self.assertEqual(change["mailbox"], "example.com")
        self.assertIn("retry: 2000", stream.text)
        bobStream.waitFor("new for bob", isNew(ids["For bob, live"]))
        dropIntoMaildir(server.maildir("example.net/bob"), textMessage("Dropped for bob"))
        dropped = waitUntil(lambda: idOf("Dropped for bob"), "the dropped message is listed")
        bobStream.waitFor("new for the dropped message", isNew(dropped))
        stream.waitFor("new for the dropped message", isNew(dropped))
        self.assertNotIn(ids["Live"], bobStream.text)

    def test_metricsForAdminsOnly(self) -> None:
        """
        /metrics gives MailHarbor's metrics in Prometheus' text format to
        an admin, and 403 to other users.
        """
        server = startWebServer(self)
        server.send("alice@example.com", textMessage("Counted"))
        answer = server.client("alice").get("/metrics")
        self.assertEqual(answer.status, 200)
        self.assertTrue(answer.headers.get_content_type().startswith("text/plain"))
        text = answer.body.decode()
        for name in (
            "mailharbor_connections_total",
            'mailharbor_transactions_total{result="stored"}',
            "mailharbor_messages_stored_total",
            "mailharbor_stored_bytes_total",
            "mailharbor_refusals_total",
            "mailharbor_commit_seconds_bucket",
            "mailharbor_hook_jobs_delivered_total",
        ):
            self.assertIn(name, text)
        self.assertEqual(server.client("bob").get("/metrics").status, 403)
        self.assertIn(WebClient(server.webPort).get("/metrics").status, (401, 303, 403))


class StartingTests(TestCase):
    """
    How the web interface starts.
    """

    def test_publicWithoutUsersRefused(self) -> None:
        """
        C{--web tcp:PORT} (every interface) without a users file stops
        twistd at start with an error naming web.listen.
        """
        cwd = os.path.abspath(self.mktemp())
        os.makedirs(cwd)
        result = subprocess.run(
            [
                venvCommand("twistd"),
                "-n",
                "--pidfile=",
                "mailharbor",
                "--port",
                f"tcp:{freePort()}:interface=127.0.0.1",
                "--domain",
                "example.com",
                "--web",
                f"tcp:{freePort()}",
            ],
            check=False,
            cwd=cwd,
            env=subprocessEnvironment(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=WAIT * 2,
        )
        output = result.stdout.decode(errors="replace")
        self.assertNotEqual(result.returncode, 0, output)
        self.assertIn("web.listen", output)
        self.assertIn("users_file", output)

    def test_readmeFirstCommand(self) -> None:
        """
        README's first command line starts the web interface on loopback,
        where it answers without a login: GET / from 127.0.0.1 is the
        index page.
        """
        with open(README) as f:
            commands = [line for line in f if "twistd -n mailharbor" in line]
        self.assertTrue(commands, "README has a twistd command line")
        arguments = shlex.split(commands[0][commands[0].index("twistd -n mailharbor") :])
        self.assertIn("--web", arguments, f"README's first command line starts the web interface: {commands[0]}")
        smtpPort, webPort = freePort(), freePort()
        arguments[arguments.index("--web") + 1] = str(webPort)
        if "--port" in arguments:
            arguments[arguments.index("--port") + 1] = f"tcp:{smtpPort}:interface=127.0.0.1"
        process, log = startProcess(self, arguments[2:])

        def answers() -> bool:
            if process.poll() is not None:
                with open(log) as f:
                    raise AssertionError(f"twistd exited with {process.returncode}:\n{f.read()}")
            try:
                with socket.create_connection(("127.0.0.1", webPort), timeout=1):
                    return True
            except OSError:
                return False

        waitUntil(answers, "the web interface listens", WAIT * 2)
        client = WebClient(webPort)
        answer = client.get("/")
        self.assertEqual(answer.status, 200, answer)
        self.assertIn(b'id="tree"', answer.body)
        self.assertEqual(client.get("/api/v1/session").json()["admin"], True)
        address, _ = _listening(webPort)
        self.assertEqual(address, "127.0.0.1", "loopback only")

    def test_workersServeTheWebOnce(self) -> None:
        """
        With --workers 2 only the first process listens on the web port,
        while both hold the SMTP socket.
        """
        server = startWebServer(self, serviceArguments=["--workers", "2"])
        worker = int(
            waitUntil(
                lambda: re.search(r"Started worker 1 \(pid (\d+)\)", server.output()), "the worker starts"
            ).group(1)
        )
        waitUntil(lambda: _socketInodes(worker), "the worker holds its sockets")
        _, web = _listening(server.webPort)
        _, smtp = _listening(server.smtpPort)
        first = _socketInodes(server.process.pid)
        others = _socketInodes(worker)
        self.assertIn(smtp, first)
        self.assertIn(smtp, others)
        self.assertIn(web, first)
        self.assertNotIn(web, others)
        self.assertEqual(WebClient(server.webPort).get("/healthz").status, 200)


def _listening(port: int) -> tuple[str, str]:
    """
    The IPv4 address and the inode of the socket listening at C{port},
    from C{/proc/net/tcp}.
    """
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            address, _, number = local.partition(":")
            if state == "0A" and int(number, 16) == port:
                return socket.inet_ntoa(bytes.fromhex(address)[::-1]), inode
    raise AssertionError(f"nothing listens on port {port}")


def _socketInodes(pid: int) -> set[str]:
    """
    The inodes of the sockets process C{pid} holds open.
    """
    found = set()
    directory = f"/proc/{pid}/fd"
    for fd in os.listdir(directory):
        try:
            target = os.readlink(os.path.join(directory, fd))
        except OSError:
            continue
        if target.startswith("socket:["):
            found.add(target[8:-1])
    return found
