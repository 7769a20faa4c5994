"""
Tests for L{harbor.cli}, the C{mailharbor} command that reads the store.

Each test builds a Maildir tree the way the server writes it and runs the
command in-process, capturing its output.
"""

from __future__ import annotations

import getpass
import io
import json
import os
import sys
import time
from email.message import EmailMessage
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from harbor import cli
from harbor.cli import formatting
from harbor.config import Config
from harbor.tap import Options
from harbor.test._support import files

NOW = 1732314178
HOST = "mx.example.com"


def messageBytes(
    sender: str = "sender@x.org",
    recipient: str = "alice@example.com",
    subject: bytes = b"Hello",
    body: bytes | None = b"Hi Alice,\nhow are you?\n",
) -> bytes:
    """
    Build a stored file as the server writes it: trace headers, then the
    client's headers, a blank line and the body (none if C{body} is
    L{None}).
    """
    header = (
        f"Return-Path: <{sender}>\n"
        f"Delivered-To: {recipient}\n"
        "Received: from client.x.org (client.x.org [192.0.2.1])\n"
        f"\tby {HOST} (MailHarbor) with ESMTP\n"
        f"\tfor <{recipient}>; Fri, 22 Nov 2024 22:22:58 +0000\n"
        f"From: Sender <{sender}>\n"
    ).encode("ascii")
    header += b"Subject: " + subject + b"\nDate: Fri, 22 Nov 2024 22:22:50 +0000\n"
    if body is None:
        return header
    return header + b"\n" + body


def messageID(seconds: int, count: int = 1) -> str:
    """
    A Maildir id as L{harbor.store.names.MaildirNamer} makes them.
    """
    return f"{seconds}.M{123456 + count}P4242Q{count}.{HOST}"


class _CommandTestCase(SynchronousTestCase):
    """
    Helpers to build a store and run the command against it.
    """

    def makeRoot(self, *mailboxes: str) -> str:
        """
        Create a Maildir root with an empty Maildir for each mailbox.
        """
        root: str = os.path.abspath(self.mktemp())
        os.makedirs(root)
        for mailbox in mailboxes:
            for sub in ("tmp", "new", "cur"):
                os.makedirs(os.path.join(root, mailbox, sub))
        return root

    def deliver(
        self,
        root: str,
        mailbox: str,
        identifier: str,
        content: bytes,
        sub: str = "new",
        flags: str | None = None,
    ) -> str:
        """
        Store C{content} as a message, named as the server (or, with
        C{flags}, a mail reader) would name it.

        @return: The file's name.
        """
        filename = f"{identifier},S={len(content)}"
        if flags is not None:
            filename += f":2,{flags}"
        with open(os.path.join(root, mailbox, sub, filename), "wb") as f:
            f.write(content)
        return filename

    def runCommand(self, *argv: str, now: float = NOW + 3600) -> tuple[int, bytes, str]:
        """
        Run C{mailharbor} in-process, at the time C{now}.

        @return: The exit status, the bytes written to standard output and
            the text written to standard error.
        """
        out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", newline="\n")
        err = io.StringIO()
        status = cli.main(list(argv), stdout=out, stderr=err, now=lambda: now)
        out.flush()
        return status, out.buffer.getvalue(), err.getvalue()

    def writeConfig(self, text: str) -> str:
        """
        Write a configuration file and return its path.
        """
        path: str = os.path.abspath(self.mktemp())
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path

    def listLines(self, *argv: str) -> list[str]:
        """
        Run C{mailharbor list} successfully and return its lines after the
        heading.
        """
        status, out, err = self.runCommand("list", *argv)
        self.assertEqual((status, err), (0, ""))
        lines = out.decode("utf-8").splitlines()
        heading = ["ID", "DATE", "FROM", "TO", "SUBJECT", "SIZE"]
        self.assertEqual(lines[0].split(), heading)
        return lines[1:]

    def listJSON(self, *argv: str) -> list[dict[str, object]]:
        """
        Run C{mailharbor list --json} successfully and parse its output.
        """
        status, out, err = self.runCommand("list", "--json", *argv)
        self.assertEqual((status, err), (0, ""))
        result: list[dict[str, object]] = json.loads(out)
        return result


class ListTests(_CommandTestCase):
    """
    Tests for C{mailharbor list}.
    """

    def test_newestFirstAcrossMailboxes(self) -> None:
        """
        Messages from every mailbox are listed together, newest delivery
        first, ties broken by id.
        """
        root = self.makeRoot("example.com", "example.org")
        oldest = messageID(NOW - 100)
        middle1 = messageID(NOW, 1)
        middle2 = messageID(NOW, 2)
        newest = messageID(NOW + 100)
        self.deliver(root, "example.com", middle1, messageBytes())
        self.deliver(root, "example.org", oldest, messageBytes())
        self.deliver(root, "example.com", newest, messageBytes())
        self.deliver(root, "example.org", middle2, messageBytes())

        ids = [line.split()[0] for line in self.listLines("--maildir", root)]

        self.assertEqual(ids, [newest, middle2, middle1, oldest])

    def test_fieldsShown(self) -> None:
        """
        Each line shows the id, the local delivery time, the envelope sender
        and recipient, the decoded subject and the size in bytes.
        """
        root = self.makeRoot("example.com")
        identifier = messageID(NOW)
        content = messageBytes(
            sender="bob@x.org",
            recipient="alice@example.com",
            subject=b"=?utf-8?q?Caf=C3=A9_au_lait?=",
        )
        self.deliver(root, "example.com", identifier, content)

        [line] = self.listLines("--maildir", root)

        date = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(NOW))
        self.assertEqual(
            line.split(),
            [
                identifier,
                *date.split(),
                "bob@x.org",
                "alice@example.com",
                "Café",
                "au",
                "lait",
                str(len(content)),
            ],
        )

    def test_columnsAligned(self) -> None:
        """
        The same column starts at the same place on every line.
        """
        root = self.makeRoot("example.com")
        short = messageBytes(sender="a@x.org", subject=b"x")
        long = messageBytes(sender="longer.name@x.org", subject=b"y")
        self.deliver(root, "example.com", messageID(NOW, 1), short)
        self.deliver(root, "example.com", messageID(NOW, 2), long)

        _, out, _ = self.runCommand("list", "--maildir", root)

        lines = out.decode("utf-8").splitlines()
        self.assertEqual(len({line.index(" alice@example.com") for line in lines[1:]}), 1)
        self.assertEqual(len({len(line) for line in lines}), 1)

    def test_nullSender(self) -> None:
        """
        The null reverse-path is shown as C{<>}, and in JSON as the empty
        string.
        """
        root = self.makeRoot("example.com")
        self.deliver(root, "example.com", messageID(NOW), messageBytes(sender=""))

        [line] = self.listLines("--maildir", root)
        [entry] = self.listJSON("--maildir", root)

        self.assertEqual(line.split()[3], "<>")
        self.assertEqual(entry["sender"], "")

    def test_curListedWithSeen(self) -> None:
        """
        Messages a reader moved to C{cur/} are listed; they are seen only
        with the C{S} flag.
        """
        root = self.makeRoot("example.com")
        fresh = messageID(NOW, 1)
        read = messageID(NOW, 2)
        moved = messageID(NOW, 3)
        self.deliver(root, "example.com", fresh, messageBytes())
        self.deliver(root, "example.com", read, messageBytes(), sub="cur", flags="RS")
        self.deliver(root, "example.com", moved, messageBytes(), sub="cur", flags="")

        seen = {entry["id"]: entry["seen"] for entry in self.listJSON("--maildir", root)}

        self.assertEqual(seen, {fresh: False, read: True, moved: False})

    def test_tmpIgnored(self) -> None:
        """
        Incomplete files in C{tmp/} are never listed.
        """
        root = self.makeRoot("example.com")
        self.deliver(root, "example.com", messageID(NOW, 1), messageBytes())
        with open(os.path.join(root, "example.com", "tmp", messageID(NOW, 2)), "wb") as f:
            f.write(messageBytes())

        ids = [line.split()[0] for line in self.listLines("--maildir", root)]

        self.assertEqual(ids, [messageID(NOW, 1)])

    def test_notMessagesIgnored(self) -> None:
        """
        Dot files, plain files in the root and directories without C{new/}
        and C{cur/} are not taken for messages or mailboxes.
        """
        root = self.makeRoot("example.com")
        self.deliver(root, "example.com", messageID(NOW), messageBytes())
        with open(os.path.join(root, "example.com", "new", ".hidden"), "wb") as f:
            f.write(messageBytes())
        with open(os.path.join(root, "stray"), "wb") as f:
            f.write(messageBytes())
        os.makedirs(os.path.join(root, "half", "new"))
        self.deliver(root, "half", messageID(NOW, 9), messageBytes())

        ids = [line.split()[0] for line in self.listLines("--maildir", root)]

        self.assertEqual(ids, [messageID(NOW)])

    def test_json(self) -> None:
        """
        C{--json} prints an array of objects with every field, the date in
        ISO 8601 UTC.
        """
        root = self.makeRoot("example.com")
        identifier = messageID(NOW)
        content = messageBytes(subject=b"=?utf-8?b?4pyTIGRvbmU=?=")
        filename = self.deliver(root, "example.com", identifier, content)

        entries = self.listJSON("--maildir", root)

        self.assertEqual(
            entries,
            [
                {
                    "id": identifier,
                    "mailbox": "example.com",
                    "date": "2024-11-22T22:22:58Z",
                    "sender": "sender@x.org",
                    "recipient": "alice@example.com",
                    "subject": "\u2713 done",
                    "size": len(content),
                    "path": os.path.join(root, "example.com", "new", filename),
                    "seen": False,
                }
            ],
        )

    def test_headerOnly(self) -> None:
        """
        A message with no blank line and no body is listed from its headers.
        """
        root = self.makeRoot("example.com")
        content = messageBytes(subject=b"No body", body=None)
        self.deliver(root, "example.com", messageID(NOW), content)

        [entry] = self.listJSON("--maildir", root)

        self.assertEqual((entry["subject"], entry["size"]), ("No body", len(content)))

    def test_undecodableSubject(self) -> None:
        """
        Subjects in an unknown charset, with raw 8-bit bytes or with control
        characters are shown as best they can be, never as a traceback.
        """
        root = self.makeRoot("example.com")
        for count, subject in enumerate(
            [b"=?x-unknown?q?abc?=", b"caf\xe9 \xff\xfe", b"ring\x07\x1b[31m red\t tab"], 1
        ):
            self.deliver(root, "example.com", messageID(NOW, count), messageBytes(subject=subject))

        subjects = [entry["subject"] for entry in self.listJSON("--maildir", root)]
        status, out, err = self.runCommand("list", "--maildir", root)

        self.assertEqual(subjects, ["ring[31m red tab", "caf\ufffd \ufffd\ufffd", "abc"])
        self.assertEqual((status, err), (0, ""))
        self.assertNotIn(b"\x07", out)
        self.assertNotIn(b"\x1b", out)

    def test_longSubjectTruncated(self) -> None:
        """
        Long subjects are cut to L{formatting.SUBJECT_WIDTH} characters with an
        ellipsis in the table, and given whole in JSON.
        """
        root = self.makeRoot("example.com")
        subject = "word " * 40
        content = messageBytes(subject=subject.encode("ascii"))
        self.deliver(root, "example.com", messageID(NOW), content)

        _, out, _ = self.runCommand("list", "--maildir", root)
        [entry] = self.listJSON("--maildir", root)

        shown = ("word " * 12).strip() + "\u2026"
        self.assertEqual(len(shown), formatting.SUBJECT_WIDTH)
        self.assertIn(f"  {shown}  ", out.decode("utf-8"))
        self.assertEqual(entry["subject"], subject.strip())

    def test_vanishedFileSkipped(self) -> None:
        """
        A file that cannot be opened while listing (it vanished) is left
        out; the others are still listed.
        """
        root = self.makeRoot("example.com")
        self.deliver(root, "example.com", messageID(NOW, 1), messageBytes())
        os.symlink(
            os.path.join(root, "nowhere"),
            os.path.join(root, "example.com", "new", f"{messageID(NOW, 2)},S=10"),
        )

        ids = [line.split()[0] for line in self.listLines("--maildir", root)]

        self.assertEqual(ids, [messageID(NOW, 1)])

    def test_missingRoot(self) -> None:
        """
        A root that does not exist is reported on standard error, status 1.
        """
        root = os.path.abspath(self.mktemp())

        status, out, err = self.runCommand("list", "--maildir", root)

        self.assertEqual((status, out, err), (1, b"", f"mailharbor: no Maildir at {root}\n"))

    def test_emptyRoot(self) -> None:
        """
        A root without messages says so, or prints an empty JSON array;
        both succeed.
        """
        root = self.makeRoot("example.com")

        self.assertEqual(
            self.runCommand("list", "--maildir", root),
            (0, f"No messages in {root}.\n".encode(), ""),
        )
        self.assertEqual(json.loads(self.runCommand("list", "--json", "--maildir", root)[1]), [])

    def test_relativeMaildir(self) -> None:
        """
        A relative C{--maildir} is reported as an absolute path.
        """
        status, out, err = self.runCommand("list", "--maildir", "does-not-exist")

        self.assertEqual((status, out), (1, b""))
        self.assertEqual(err, f"mailharbor: no Maildir at {os.path.abspath('does-not-exist')}\n")

    def test_defaultRoot(self) -> None:
        """
        Without C{--maildir} or C{--config} the root is C{Maildir} in the
        current directory.
        """
        here = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(here, "Maildir", "example.com", "new"))
        os.makedirs(os.path.join(here, "Maildir", "example.com", "cur"))
        self.deliver(os.path.join(here, "Maildir"), "example.com", messageID(NOW), messageBytes())
        self.addCleanup(os.chdir, os.getcwd())
        os.chdir(here)

        [entry] = self.listJSON()

        filename = f"{messageID(NOW)},S={len(messageBytes())}"
        self.assertEqual(
            entry["path"], os.path.join(here, "Maildir", "example.com", "new", filename)
        )

    def test_brokenPipe(self) -> None:
        """
        A reader that goes away (C{mailharbor list | head}) ends the command
        with status 1 and no traceback.
        """
        root = self.makeRoot("example.com")
        self.deliver(root, "example.com", messageID(NOW), messageBytes())

        class ClosedPipe(io.StringIO):
            def write(self, text: str) -> int:
                raise BrokenPipeError()

        err = io.StringIO()
        status = cli.main(["list", "--maildir", root], stdout=ClosedPipe(), stderr=err)

        self.assertEqual((status, err.getvalue()), (1, ""))


class ShowTests(_CommandTestCase):
    """
    Tests for C{mailharbor show}.
    """

    def test_rawBytes(self) -> None:
        """
        The stored file is written unchanged, 8-bit bytes and all.
        """
        root = self.makeRoot("example.com", "example.org")
        content = messageBytes(subject=b"caf\xe9", body=b"\x00\xff\xfe binary\r\nline\n" * 5000)
        self.deliver(root, "example.com", messageID(NOW, 1), messageBytes())
        self.deliver(root, "example.org", messageID(NOW, 2), content)

        result = self.runCommand("show", "--maildir", root, messageID(NOW, 2))

        self.assertEqual(result, (0, content, ""))

    def test_byFileName(self) -> None:
        """
        A message is also found by its full file name, in C{cur/} too.
        """
        root = self.makeRoot("example.com")
        content = messageBytes()
        filename = self.deliver(root, "example.com", messageID(NOW), content, sub="cur", flags="S")

        self.assertEqual(self.runCommand("show", "--maildir", root, filename), (0, content, ""))

    def test_json(self) -> None:
        """
        C{--json} prints the list fields and the message as text.
        """
        root = self.makeRoot("example.com")
        content = messageBytes(body=b"caf\xc3\xa9 \xff\n")
        filename = self.deliver(root, "example.com", messageID(NOW), content, sub="cur", flags="S")

        status, out, err = self.runCommand("show", "--json", "--maildir", root, messageID(NOW))
        entry = json.loads(out)

        self.assertEqual((status, err), (0, ""))
        self.assertEqual(
            entry,
            {
                "id": messageID(NOW),
                "mailbox": "example.com",
                "date": "2024-11-22T22:22:58Z",
                "sender": "sender@x.org",
                "recipient": "alice@example.com",
                "subject": "Hello",
                "size": len(content),
                "path": os.path.join(root, "example.com", "cur", filename),
                "seen": True,
                "message": content.decode("utf-8", "replace"),
            },
        )

    def test_unknownID(self) -> None:
        """
        An id that matches no message is a one-line error, status 1; a file
        in C{tmp/} or a prefix of an id does not match.
        """
        root = self.makeRoot("example.com")
        self.deliver(root, "example.com", messageID(NOW, 1), messageBytes())
        with open(os.path.join(root, "example.com", "tmp", messageID(NOW, 2)), "wb") as f:
            f.write(messageBytes())

        for identifier in [messageID(NOW, 2), str(NOW), "../../etc/passwd"]:
            status, out, err = self.runCommand("show", "--maildir", root, identifier)
            self.assertEqual((status, out), (1, b""))
            self.assertEqual(err, f"mailharbor: no message {identifier!r} in {root}\n")

    def test_missingRoot(self) -> None:
        """
        C{show} with a root that does not exist reports it, status 1.
        """
        root = os.path.abspath(self.mktemp())

        result = self.runCommand("show", "--maildir", root, "x")

        self.assertEqual(result, (1, b"", f"mailharbor: no Maildir at {root}\n"))

    def test_textStream(self) -> None:
        """
        Given a stream without a byte buffer, C{show} writes the message
        decoded as UTF-8.
        """
        root = self.makeRoot("example.com")
        content = messageBytes(body=b"caf\xc3\xa9\n")
        self.deliver(root, "example.com", messageID(NOW), content)
        out = io.StringIO()

        argv = ["show", "--maildir", root, messageID(NOW)]

        status = cli.main(argv, stdout=out, stderr=io.StringIO())

        self.assertEqual((status, out.getvalue()), (0, content.decode("utf-8")))


class ListFilterTests(_CommandTestCase):
    """
    Tests for the filters of C{mailharbor list}: C{--limit}, C{--since},
    C{--domain}, C{--to} and C{--from}.
    """

    def setUp(self) -> None:
        self.root = self.makeRoot("example.com", "example.org")
        # One message an hour, oldest first, alternating between domains.
        self.ids = []
        for hour in range(6):
            mailbox = ("example.com", "example.org")[hour % 2]
            identifier = messageID(NOW + hour * 3600, hour)
            content = messageBytes(
                sender=f"Bob{hour}@Sender.example", recipient=f"user{hour}@{mailbox}"
            )
            self.deliver(self.root, mailbox, identifier, content)
            self.ids.append(identifier)
        self.now = NOW + 6 * 3600

    def listIDs(self, *argv: str) -> list[str]:
        """
        Run C{mailharbor list --json} on the store at C{self.now} and return
        the ids listed.
        """
        status, out, err = self.runCommand(
            "list", "--json", "--maildir", self.root, *argv, now=self.now
        )
        self.assertEqual((status, err), (0, ""))
        return [entry["id"] for entry in json.loads(out)]

    def test_limit(self) -> None:
        """
        C{--limit N} lists the N newest messages.
        """
        self.assertEqual(self.listIDs("--limit", "2"), [self.ids[5], self.ids[4]])
        self.assertEqual(len(self.listIDs("--limit", "100")), 6)

    def test_sinceAge(self) -> None:
        """
        C{--since} with an age lists what arrived since then, counted back
        from now; the units are minutes, hours, days and weeks.
        """
        self.assertEqual(self.listIDs("--since", "200m"), [self.ids[5], self.ids[4], self.ids[3]])
        self.assertEqual(self.listIDs("--since", "2h"), [self.ids[5], self.ids[4]])
        self.assertEqual(len(self.listIDs("--since", "1d")), 6)
        self.assertEqual(len(self.listIDs("--since", "1w")), 6)
        self.assertEqual(self.listIDs("--since", "0s"), [])

    def test_sinceTime(self) -> None:
        """
        C{--since} with an ISO time includes a message delivered exactly
        then; one without an offset is local time.
        """
        utc = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(NOW + 3 * 3600))
        local = time.strftime("%Y-%m-%dT%H:%M", time.localtime(NOW + 4 * 3600 - 60))
        day = time.strftime("%Y-%m-%d", time.localtime(NOW + 8 * 86400))

        self.assertEqual(self.listIDs("--since", utc), [self.ids[5], self.ids[4], self.ids[3]])
        self.assertEqual(self.listIDs("--since", local), [self.ids[5], self.ids[4]])
        self.assertEqual(self.listIDs("--since", day), [])

    def test_sinceAndLimit(self) -> None:
        """
        C{--since} and C{--limit} together give the newest messages of
        those since then, however few.
        """
        self.assertEqual(self.listIDs("--since", "4h", "--limit", "2"), [self.ids[5], self.ids[4]])
        self.assertEqual(self.listIDs("--since", "90m", "--limit", "5"), [self.ids[5]])

    def test_domain(self) -> None:
        """
        C{--domain} lists one domain's messages; its name is compared as
        the configuration writes it, in lower case without a final dot.
        """
        self.assertEqual(
            self.listIDs("--domain", "EXAMPLE.org."), [self.ids[5], self.ids[3], self.ids[1]]
        )

    def test_unknownDomain(self) -> None:
        """
        A domain without a Maildir is a one-line error, status 1.
        """
        status, out, err = self.runCommand(
            "list", "--maildir", self.root, "--domain", "example.net"
        )

        self.assertEqual(
            (status, out, err), (1, b"", f"mailharbor: no Maildir for example.net in {self.root}\n")
        )

    def test_invalidDomain(self) -> None:
        """
        A C{--domain} that is not a domain name (a path, say) is a usage
        error, status 2.
        """
        status, out, err = self.runCommand("list", "--maildir", self.root, "--domain", "../etc")

        self.assertEqual((status, out), (2, b""))
        self.assertIn("argument --domain: '../etc' is not a valid domain name", err)

    def test_recipientAndSender(self) -> None:
        """
        C{--to} and C{--from} match substrings of the envelope addresses,
        in any case.
        """
        self.assertEqual(self.listIDs("--to", "USER2@"), [self.ids[2]])
        self.assertEqual(self.listIDs("--from", "bob1@sender"), [self.ids[1]])
        self.assertEqual(
            self.listIDs("--to", "example.COM", "--from", "BOB4", "--limit", "3"), [self.ids[4]]
        )
        self.assertEqual(self.listIDs("--from", "nobody"), [])

    def test_noMatch(self) -> None:
        """
        With filters that match nothing the table says so.
        """
        result = self.runCommand("list", "--maildir", self.root, "--to", "nobody")

        self.assertEqual(result, (0, f"No matching messages in {self.root}.\n".encode(), ""))

    def test_badSince(self) -> None:
        """
        A C{--since} that is neither a time nor an age is a usage error,
        status 2, saying what is accepted.
        """
        for value in ["yesterday", "3x", "-2h", "2026-13-01", ""]:
            status, out, err = self.runCommand("list", "--maildir", self.root, f"--since={value}")
            self.assertEqual((status, out), (2, b""))
            self.assertIn(f"argument --since: {value!r} is not an ISO date", err)

    def test_badLimit(self) -> None:
        """
        A C{--limit} below 1, or not a number, is a usage error, status 2.
        """
        for value in ["0", "-1", "ten"]:
            status, out, err = self.runCommand("list", "--maildir", self.root, "--limit", value)
            self.assertEqual((status, out), (2, b""))
            self.assertIn("argument --limit:", err)


def attachmentMessage(*attachments: tuple[str | None, bytes]) -> bytes:
    """
    A stored message with a text part and the given attachments (name and
    content; a name of L{None} gives none).
    """
    message = EmailMessage()
    message["Return-Path"] = "<bob@x.org>"
    message["Delivered-To"] = "alice@example.com"
    message["From"] = "Bob <bob@x.org>"
    message["To"] = "Alice <alice@example.com>"
    message["Cc"] = "Carol <carol@example.com>"
    message["Subject"] = "=?utf-8?q?Caf=C3=A9?="
    message["Date"] = "Fri, 22 Nov 2024 22:22:50 +0000"
    message["Message-ID"] = "<1@x.org>"
    message.set_content("Hello Alice,\n\nthe files.\n")
    for filename, data in attachments:
        message.add_attachment(
            data, maintype="application", subtype="octet-stream", filename=filename
        )
    return bytes(message)


class ShowSummaryTests(_CommandTestCase):
    """
    Tests for C{mailharbor show --summary} and C{--mark-seen}.
    """

    def test_summary(self) -> None:
        """
        C{--summary} shows the trace and main headers, the text and the
        attachments with their types and sizes.
        """
        root = self.makeRoot("example.com")
        self.deliver(
            root,
            "example.com",
            messageID(NOW),
            attachmentMessage(("report.pdf", b"12345"), (None, b"xy")),
        )

        status, out, err = self.runCommand("show", "--summary", "--maildir", root, messageID(NOW))

        self.assertEqual((status, err), (0, ""))
        text = out.decode("utf-8")
        for line in [
            f"Id: {messageID(NOW)}",
            "Mailbox: example.com",
            "Return-Path: <bob@x.org>",
            "Delivered-To: alice@example.com",
            "From: Bob <bob@x.org>",
            "To: Alice <alice@example.com>",
            "Cc: Carol <carol@example.com>",
            "Subject: Caf\u00e9",
            "Date: Fri, 22 Nov 2024 22:22:50 +0000",
            "Message-ID: <1@x.org>",
            "Hello Alice,\n\nthe files.\n",
            "Attachments (2):",
        ]:
            self.assertIn(line, text)
        attachments = [line.split() for line in text.split("Attachments (2):\n")[1].splitlines()]
        self.assertEqual(
            attachments,
            [
                ["1.", "report.pdf", "application/octet-stream", "5", "bytes"],
                ["2.", "(no", "name)", "application/octet-stream", "2", "bytes"],
            ],
        )

    def test_summaryJSON(self) -> None:
        """
        C{--summary --json} gives the list fields, the headers, the text and
        the attachments.
        """
        root = self.makeRoot("example.com")
        self.deliver(root, "example.com", messageID(NOW), attachmentMessage(("a.bin", b"123")))

        status, out, err = self.runCommand(
            "show", "--summary", "--json", "--maildir", root, messageID(NOW)
        )
        entry = json.loads(out)

        self.assertEqual((status, err), (0, ""))
        self.assertEqual(
            (entry["id"], entry["subject"], entry["seen"]), (messageID(NOW), "Caf\u00e9", False)
        )
        self.assertIn(["From", "Bob <bob@x.org>"], entry["headers"])
        self.assertEqual(
            (entry["text"], entry["textType"]), ("Hello Alice,\n\nthe files.\n", "text/plain")
        )
        self.assertEqual(
            entry["attachments"],
            [{"filename": "a.bin", "contentType": "application/octet-stream", "size": 3}],
        )
        self.assertFalse(entry["truncated"])

    def test_summaryMalformed(self) -> None:
        """
        A malformed message is summarised as far as it goes, status 0, no
        traceback.
        """
        root = self.makeRoot("example.com")
        content = (
            b"Subject: =?utf-8?b?!!!?=\nFrom: <<<\nContent-Type: multipart/mixed; boundary=z\n\n"
            b"--z\nContent-Type: text/plain; charset=no-such-charset\n\n\xff\xfe text\n"
            b"--z\nContent-Type: application/pdf\nContent-Transfer-Encoding: base64\n\n@@@\n"
        )
        self.deliver(root, "example.com", messageID(NOW), content)

        status, out, err = self.runCommand("show", "--summary", "--maildir", root, messageID(NOW))

        self.assertEqual((status, err), (0, ""))
        # The unknown charset's bytes are read as Windows-1252.
        self.assertIn("\xff\xfe text", out.decode("utf-8"))
        self.assertIn("Attachments (1):", out.decode("utf-8"))

    def test_summaryNoText(self) -> None:
        """
        A message without a text part says so.
        """
        root = self.makeRoot("example.com")
        self.deliver(root, "example.com", messageID(NOW), b"Content-Type: image/png\n\nPNG")

        status, out, err = self.runCommand("show", "--summary", "--maildir", root, messageID(NOW))

        self.assertEqual((status, err), (0, ""))
        self.assertIn("(no text part)", out.decode("utf-8"))

    def test_markSeenFromNew(self) -> None:
        """
        C{--mark-seen} writes the message, then moves it to C{cur/} with
        the flags C{:2,S}.
        """
        root = self.makeRoot("example.com")
        content = messageBytes()
        filename = self.deliver(root, "example.com", messageID(NOW), content)

        result = self.runCommand("show", "--mark-seen", "--maildir", root, messageID(NOW))

        self.assertEqual(result, (0, content, ""))
        self.assertEqual(os.listdir(os.path.join(root, "example.com", "new")), [])
        self.assertEqual(os.listdir(os.path.join(root, "example.com", "cur")), [filename + ":2,S"])
        [entry] = self.listJSON("--maildir", root)
        self.assertTrue(entry["seen"])

    def test_markSeenKeepsFlags(self) -> None:
        """
        In C{cur/}, C{S} joins the other flags in ASCII order; a message
        already seen keeps its name.
        """
        root = self.makeRoot("example.com")
        flagged = self.deliver(
            root, "example.com", messageID(NOW, 1), messageBytes(), sub="cur", flags="RT"
        )
        seen = self.deliver(
            root, "example.com", messageID(NOW, 2), messageBytes(), sub="cur", flags="FS"
        )

        for identifier in (messageID(NOW, 1), messageID(NOW, 2)):
            status, _, err = self.runCommand(
                "show", "--summary", "--mark-seen", "--maildir", root, identifier
            )
            self.assertEqual((status, err), (0, ""))

        cur = sorted(os.listdir(os.path.join(root, "example.com", "cur")))
        self.assertEqual(cur, [flagged[: -len("RT")] + "RST", seen])

    def test_notMarkedWhenReaderGone(self) -> None:
        """
        A message whose output did not reach its reader is not marked seen.
        """
        root = self.makeRoot("example.com")
        filename = self.deliver(root, "example.com", messageID(NOW), messageBytes())

        class ClosedPipe(io.StringIO):
            def write(self, text: str) -> int:
                raise BrokenPipeError()

        status = cli.main(
            ["show", "--mark-seen", "--maildir", root, messageID(NOW)],
            stdout=ClosedPipe(),
            stderr=io.StringIO(),
        )

        self.assertEqual(status, 1)
        self.assertEqual(os.listdir(os.path.join(root, "example.com", "new")), [filename])

    def test_helpDescribesMarkSeen(self) -> None:
        """
        C{show --help} says what C{--mark-seen} does to the file.
        """
        status, out, err = self.runCommand("show", "--help")

        self.assertEqual((status, err), (0, ""))
        self.assertIn(b"new/NAME becomes cur/NAME:2,S", out)


class ExportTests(_CommandTestCase):
    """
    Tests for C{mailharbor export}.
    """

    def setUp(self) -> None:
        self.root = self.makeRoot("example.com")
        self.parent = os.path.abspath(self.mktemp())
        os.makedirs(self.parent)
        self.target = os.path.join(self.parent, "out")

    def filesUnder(self, directory: str) -> dict[str, bytes]:
        """
        Every file below C{directory}, by path relative to it.
        """
        found = {}
        for name in files(directory):
            with open(os.path.join(directory, name), "rb") as f:
                found[name] = f.read()
        return found

    def test_traversalNames(self) -> None:
        """
        Attachments named to escape the directory are written inside it
        under safe names, and nowhere else; each written file is listed.
        """
        content = attachmentMessage(
            ("../../x", b"1"),
            ("/etc/passwd", b"2"),
            ("..", b"3"),
            ("", b"4"),
            (".profile", b"5"),
            ("x", b"6"),
        )
        self.deliver(self.root, "example.com", messageID(NOW), content)

        status, out, err = self.runCommand(
            "export", "--maildir", self.root, messageID(NOW), self.target
        )

        names = ["x", "passwd", "attachment-3.bin", "attachment-4.bin", "profile", "x (2)"]
        self.assertEqual((status, err), (0, ""))
        self.assertEqual(
            self.filesUnder(self.parent),
            {os.path.join("out", n): str(i).encode() for i, n in enumerate(names, 1)},
        )
        self.assertEqual(
            out.decode("utf-8").splitlines(),
            [f"{os.path.join(self.target, n)}  application/octet-stream  1 bytes" for n in names],
        )

    def test_neverOverwrites(self) -> None:
        """
        Exporting twice keeps the first files and numbers the second ones.
        """
        self.deliver(self.root, "example.com", messageID(NOW), attachmentMessage(("a.pdf", b"new")))
        os.makedirs(self.target)
        with open(os.path.join(self.target, "a.pdf"), "wb") as f:
            f.write(b"old")

        for _ in range(2):
            self.assertEqual(
                self.runCommand("export", "--maildir", self.root, messageID(NOW), self.target)[0], 0
            )

        self.assertEqual(
            self.filesUnder(self.target),
            {"a.pdf": b"old", "a (2).pdf": b"new", "a (3).pdf": b"new"},
        )

    def test_noAttachments(self) -> None:
        """
        A message without attachments says so and creates nothing.
        """
        self.deliver(self.root, "example.com", messageID(NOW), messageBytes())

        result = self.runCommand("export", "--maildir", self.root, messageID(NOW), self.target)

        self.assertEqual(result, (0, f"No attachments in {messageID(NOW)}.\n".encode(), ""))
        self.assertFalse(os.path.exists(self.target))

    def test_targetIsAFile(self) -> None:
        """
        A target that is a file is a one-line error, status 1.
        """
        self.deliver(self.root, "example.com", messageID(NOW), attachmentMessage(("a", b"1")))
        with open(self.target, "wb"):
            pass

        status, out, err = self.runCommand(
            "export", "--maildir", self.root, messageID(NOW), self.target
        )

        self.assertEqual((status, out), (1, b""))
        self.assertTrue(err.startswith(f"mailharbor: cannot use {self.target}: "), err)
        self.assertEqual(err.count("\n"), 1)

    def test_unknownID(self) -> None:
        """
        An unknown id is a one-line error, status 1.
        """
        result = self.runCommand("export", "--maildir", self.root, "nope", self.target)

        self.assertEqual(result, (1, b"", f"mailharbor: no message 'nope' in {self.root}\n"))


class PurgeTests(_CommandTestCase):
    """
    Tests for C{mailharbor purge}.
    """

    def setUp(self) -> None:
        self.now = int(time.time()) + 40 * 3600
        self.root = self.makeRoot("example.com", "example.org")
        day = 24 * 3600

        def deliver(
            mailbox: str, age: int, count: int, sub: str = "new", flags: str | None = None
        ) -> str:
            identifier = messageID(self.now - age, count)
            filename = self.deliver(
                self.root, mailbox, identifier, messageBytes(), sub=sub, flags=flags
            )
            return os.path.join(self.root, mailbox, sub, filename)

        self.old = {
            "new": deliver("example.com", 31 * day, 1),
            "cur": deliver("example.com", 40 * day, 2, sub="cur", flags="S"),
            "org": deliver("example.org", 60 * day, 3),
        }
        self.recent = deliver("example.com", 29 * day, 4)
        # Created now: unused for 40 hours by the command's clock.
        self.stale = os.path.join(self.root, "example.com", "tmp", "stale")
        self.busy = os.path.join(self.root, "example.com", "tmp", "busy")
        for path in (self.stale, self.busy):
            with open(path, "wb") as f:
                f.write(b"partial")
        os.utime(self.busy, (self.now - 3600, self.now - 3600))

    def purge(self, *argv: str) -> tuple[int, bytes, str]:
        """
        Run C{mailharbor purge} on the store at C{self.now}.
        """
        return self.runCommand("purge", "--maildir", self.root, *argv, now=self.now)

    def expectedLines(self, verb: str, *paths: str) -> list[str]:
        """
        The lines C{purge} prints for deleting the messages at C{paths}.
        """
        lines = []
        for path in paths:
            delivered = time.strftime(
                "%Y-%m-%d %H:%M:%S", time.localtime(int(os.path.basename(path).split(".")[0]))
            )
            relative = os.path.relpath(path, self.root)
            lines.append(f"{verb} {relative}  delivered {delivered}  {len(messageBytes())} bytes")
        return lines

    def test_purge(self) -> None:
        """
        Messages in C{new/} and C{cur/} delivered before the age are
        deleted, and stale files in C{tmp/}; each is listed, then a total.
        """
        status, out, err = self.purge("--older-than", "30d")

        self.assertEqual((status, err), (0, ""))
        self.assertEqual(
            files(self.root),
            [os.path.relpath(p, self.root) for p in (self.recent, self.busy)],
        )
        lines = out.decode("utf-8").splitlines()
        self.assertEqual(
            lines[:3],
            self.expectedLines("deleted", self.old["new"], self.old["cur"], self.old["org"]),
        )
        self.assertTrue(
            lines[3].startswith("deleted example.com/tmp/stale  unused since "), lines[3]
        )
        size = 3 * len(messageBytes())
        self.assertLess(size, 1024)
        self.assertEqual(lines[4:], [f"Deleted 3 messages ({size} B) and 1 stale file from tmp/."])

    def test_dryRun(self) -> None:
        """
        C{--dry-run} lists what would be deleted and deletes nothing.
        """
        before = files(self.root)

        status, out, err = self.purge("--older-than", "30d", "--dry-run")

        self.assertEqual((status, err), (0, ""))
        self.assertEqual(files(self.root), before)
        lines = out.decode("utf-8").splitlines()
        self.assertEqual(
            lines[:3],
            self.expectedLines("would delete", self.old["new"], self.old["cur"], self.old["org"]),
        )
        self.assertTrue(lines[3].startswith("would delete example.com/tmp/stale  "), lines[3])
        self.assertTrue(lines[4].startswith("Would delete 3 messages ("), lines[4])

    def test_domain(self) -> None:
        """
        C{--domain} purges only that domain's Maildir, C{tmp/} included.
        """
        status, out, err = self.purge("--older-than", "30d", "--domain", "example.org")

        self.assertEqual((status, err), (0, ""))
        self.assertNotIn(os.path.relpath(self.old["org"], self.root), files(self.root))
        self.assertEqual(len(files(self.root)), 5)
        total = f"Deleted 1 message ({len(messageBytes())} B) and 0 stale files from tmp/.\n"
        self.assertTrue(out.decode("utf-8").endswith(total), out)

    def test_absoluteTime(self) -> None:
        """
        C{--older-than} also takes an ISO time.
        """
        cutoff = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.now - 50 * 24 * 3600))

        status, out, err = self.purge("--older-than", cutoff, "--dry-run")

        self.assertEqual((status, err), (0, ""))
        self.assertEqual(
            out.decode("utf-8").splitlines()[:1],
            self.expectedLines("would delete", self.old["org"]),
        )

    def test_undeletable(self) -> None:
        """
        A message that cannot be deleted is reported in one line; the
        others are deleted and the status is 1.
        """
        os.unlink(self.old["new"])
        os.makedirs(os.path.join(self.old["new"], "blocker"))

        status, out, err = self.purge("--older-than", "30d")

        self.assertEqual(status, 1)
        self.assertTrue(err.startswith(f"mailharbor: cannot delete {self.old['new']}: "), err)
        self.assertEqual(err.count("\n"), 1)
        self.assertFalse(os.path.exists(self.old["cur"]))
        self.assertIn(b"Deleted 2 messages", out)

    def test_requiresAge(self) -> None:
        """
        C{purge} without C{--older-than}, or with a bad one, is a usage
        error, status 2, and deletes nothing.
        """
        before = files(self.root)
        for argv in [(), ("--older-than", "soon")]:
            status, out, err = self.purge(*argv)
            self.assertEqual((status, out), (2, b""))
            self.assertIn("usage: mailharbor purge", err)
        self.assertEqual(files(self.root), before)


class StatsTests(_CommandTestCase):
    """
    Tests for C{mailharbor stats}.
    """

    def setUp(self) -> None:
        self.root = self.makeRoot("example.com", "example.org")
        self.deliver(self.root, "example.com", messageID(NOW, 1), b"a" * 1000)
        self.deliver(self.root, "example.com", messageID(NOW, 2), b"b" * 2000, sub="cur", flags="S")
        self.deliver(self.root, "example.com", messageID(NOW, 3), b"c" * 3000, sub="cur", flags="")
        self.deliver(self.root, "example.org", messageID(NOW, 4), b"d" * 4)

    def test_table(self) -> None:
        """
        Each domain has a line with its message count, the numbers in
        C{new/} and C{cur/} and the total size; a total line follows.
        """
        status, out, err = self.runCommand("stats", "--maildir", self.root)

        self.assertEqual((status, err), (0, ""))
        self.assertEqual(
            [line.split() for line in out.decode("utf-8").splitlines()],
            [
                ["MAILBOX", "MESSAGES", "NEW", "CUR", "SIZE"],
                ["example.com", "3", "1", "2", "5.9", "KiB"],
                ["example.org", "1", "1", "0", "4", "B"],
                ["TOTAL", "4", "2", "2", "5.9", "KiB"],
            ],
        )

    def test_json(self) -> None:
        """
        C{--json} gives exact sizes in bytes.
        """
        status, out, err = self.runCommand("stats", "--json", "--maildir", self.root)

        self.assertEqual((status, err), (0, ""))
        self.assertEqual(
            json.loads(out),
            {
                "root": self.root,
                "mailboxes": [
                    {"mailbox": "example.com", "messages": 3, "new": 1, "cur": 2, "size": 6000},
                    {"mailbox": "example.org", "messages": 1, "new": 1, "cur": 0, "size": 4},
                ],
                "total": {"messages": 4, "new": 2, "cur": 2, "size": 6004},
            },
        )

    def test_missingRoot(self) -> None:
        """
        A root that does not exist is a one-line error, status 1.
        """
        root = os.path.abspath(self.mktemp())

        self.assertEqual(
            self.runCommand("stats", "--maildir", root),
            (1, b"", f"mailharbor: no Maildir at {root}\n"),
        )


class CheckConfigTests(_CommandTestCase):
    """
    Tests for C{mailharbor check-config}.
    """

    def setUp(self) -> None:
        self.config = self.writeConfig(
            'domain = ["example.com", "example.org"]\nmaildir = "/srv/mail"\n'
            f'hostname = "{HOST}"\n[domains."example.org"]\naccept = ["bob", "alice"]\n'
        )

    def checkJSON(self, *argv: str) -> dict[str, Any]:
        """
        Run C{check-config --json} successfully and parse its output.
        """
        status, out, err = self.runCommand("check-config", "--json", *argv)
        self.assertEqual((status, err), (0, ""))
        result: dict[str, Any] = json.loads(out)
        return result

    def test_everySetting(self) -> None:
        """
        Every setting is printed under the key the configuration file uses
        for it, one top-level line each, defaults included.
        """
        status, out, err = self.runCommand("check-config", self.config)

        self.assertEqual((status, err), (0, ""))
        text = out.decode("utf-8")
        topLevel = [line.split(":")[0] for line in text.splitlines() if not line.startswith(" ")]
        self.assertEqual(topLevel, list(self.parsed().asMapping()))
        self.assertIn("max_message_size", topLevel)
        self.assertNotIn("maxMessageSize", text)
        self.assertIn("\nmaildir: /srv/mail\n", text)
        self.assertIn(f"\nhostname: {HOST}\n", text)
        self.assertIn("\n  example.org:\n    accept:\n      - alice\n      - bob\n", text)

    def parsed(self) -> Config:
        """
        The configuration C{twistd mailharbor} builds from the file.
        """
        options = Options()
        options.parseOptions(["--config", self.config])
        config: Config = options.config
        return config

    def test_sameAsServer(self) -> None:
        """
        The configuration is the one C{twistd mailharbor} builds from the
        same file and options.
        """
        options = Options()
        options.parseOptions(
            ["--config", self.config, "--hostname", "other.example.com", "-d", "example.net"]
        )

        printed = self.checkJSON(
            self.config, "--hostname", "other.example.com", "-d", "example.net"
        )

        self.assertEqual(printed, options.config.asMapping())
        self.assertEqual(printed["hostname"], "other.example.com")
        self.assertEqual(printed["domain"], ["example.net", "example.org"])

    def test_jsonAfterFile(self) -> None:
        """
        C{--json} may also follow the file, among the server options.
        """
        status, out, err = self.runCommand(
            "check-config", self.config, "--maildir", "/elsewhere", "--json"
        )

        self.assertEqual((status, err), (0, ""))
        self.assertEqual(json.loads(out)["maildir"], "/elsewhere")

    def test_fileError(self) -> None:
        """
        A bad setting in the file is reported with the file and the
        setting, status 2.
        """
        config = self.writeConfig('domain = ["example.com"]\nhostname = "not a host!"\n')

        result = self.runCommand("check-config", config)

        self.assertEqual(
            result,
            (2, b"", f"mailharbor: {config}: hostname: 'not a host!' is not a valid host name\n"),
        )

    def test_optionError(self) -> None:
        """
        A bad server option is reported by its name, status 2.
        """
        result = self.runCommand("check-config", self.config, "--hostname", "bad host")

        self.assertEqual(
            result, (2, b"", "mailharbor: --hostname: 'bad host' is not a valid host name\n")
        )

    def test_unreadable(self) -> None:
        """
        A missing file or one that is not TOML is a one-line error, status
        2.
        """
        missing = os.path.abspath(self.mktemp())
        broken = self.writeConfig("domain = [\n")

        self.assertEqual(
            self.runCommand("check-config", missing),
            (2, b"", f"mailharbor: cannot read {missing}: No such file or directory\n"),
        )
        status, out, err = self.runCommand("check-config", broken)
        self.assertEqual((status, out), (2, b""))
        self.assertTrue(err.startswith(f"mailharbor: {broken} is not valid TOML: "), err)
        self.assertEqual(err.count("\n"), 1)

    def test_unknownOption(self) -> None:
        """
        An option C{twistd mailharbor} does not have is an error, status 2.
        """
        result = self.runCommand("check-config", self.config, "--bogus")

        self.assertEqual(result, (2, b"", "mailharbor: option --bogus not recognized\n"))


class ConfigTests(_CommandTestCase):
    """
    Tests for choosing the root with C{--config}, and for usage errors.
    """

    def test_configSelectsRoot(self) -> None:
        """
        C{--config} takes the root from the file's C{maildir} setting.
        """
        root = self.makeRoot("example.com")
        self.deliver(root, "example.com", messageID(NOW), messageBytes())
        config = self.writeConfig(
            f'domain = ["example.com"]\nmaildir = {json.dumps(root)}\nhostname = "{HOST}"\n'
        )

        ids = [line.split()[0] for line in self.listLines("--config", config)]

        self.assertEqual(ids, [messageID(NOW)])

    def test_otherSettingsNotRead(self) -> None:
        """
        Only the file's maildir is read: a users file this user may not
        read, or another setting being fixed, does not stop reading mail.
        """
        root = self.makeRoot("example.com")
        self.deliver(root, "example.com", messageID(NOW), messageBytes())
        config = self.writeConfig(
            f'maildir = {json.dumps(root)}\nusers_file = "/nonexistent/users"\nport = "nonsense:::"\n'
        )
        ids = [line.split()[0] for line in self.listLines("--config", config)]
        self.assertEqual(ids, [messageID(NOW)])

    def test_badConfig(self) -> None:
        """
        A configuration file with a wrong setting is reported with its name
        and the setting, status 2.
        """
        config = self.writeConfig('domain = ["example.com"]\nmaildir = 42\n')

        status, out, err = self.runCommand("list", "--config", config)

        self.assertEqual((status, out), (2, b""))
        self.assertEqual(err, f"mailharbor: {config}: maildir: must be a non-empty path\n")

    def test_invalidTOML(self) -> None:
        """
        A configuration file that is not TOML is reported, status 2.
        """
        config = self.writeConfig("domain = [\n")

        status, out, err = self.runCommand("show", "--config", config, "x")

        self.assertEqual((status, out), (2, b""))
        self.assertTrue(err.startswith(f"mailharbor: {config} is not valid TOML: "), err)
        self.assertEqual(err.count("\n"), 1)

    def test_missingConfig(self) -> None:
        """
        A configuration file that does not exist is reported, status 2.
        """
        config = os.path.abspath(self.mktemp())

        status, out, err = self.runCommand("list", "--config", config)

        self.assertEqual((status, out), (2, b""))
        self.assertTrue(err.startswith(f"mailharbor: cannot read {config}: "), err)

    def test_maildirWithConfig(self) -> None:
        """
        C{--maildir} and C{--config} together are a usage error, status 2.
        """
        status, out, err = self.runCommand("list", "--maildir", "a", "--config", "b")

        self.assertEqual((status, out), (2, b""))
        self.assertIn("usage: mailharbor list", err)
        self.assertIn("not allowed with argument", err)

    def test_noCommand(self) -> None:
        """
        Running without a subcommand is a usage error, status 2.
        """
        status, out, err = self.runCommand()

        self.assertEqual((status, out), (2, b""))
        self.assertIn("usage: mailharbor", err)

    def test_showWithoutID(self) -> None:
        """
        C{show} without an id is a usage error, status 2.
        """
        status, out, err = self.runCommand("show")

        self.assertEqual((status, out), (2, b""))
        self.assertIn("usage: mailharbor show", err)

    def test_help(self) -> None:
        """
        C{--help} describes the command on standard output and succeeds.
        """
        status, out, err = self.runCommand("--help")

        self.assertEqual((status, err), (0, ""))
        self.assertIn(b"usage: mailharbor", out)


class PasswdTests(SynchronousTestCase):
    """
    Tests for C{mailharbor passwd}.
    """

    def passwd(self, *argv: str, password: str = "s3cret\n") -> tuple[int, str, str]:
        self.patch(sys, "stdin", io.StringIO(password))
        out, err = io.StringIO(), io.StringIO()
        return cli.main(list(argv), out, err), out.getvalue(), err.getvalue()

    def test_addAndChange(self) -> None:
        """
        passwd adds a user, then changes its password, reading it from a
        non-terminal standard input; the file holds only a hash.
        """
        from harbor.auth import readUsers, verifyPassword

        path = self.mktemp()
        self.assertEqual(self.passwd("passwd", path, "alice")[:2], (0, f"Added alice in {path}.\n"))
        _, out, _ = self.passwd("passwd", path, "alice", password="other\n")
        self.assertEqual(out, f"Changed the password of alice in {path}.\n")
        encoded = readUsers(path)["alice"]
        self.assertTrue(verifyPassword(b"other", encoded))
        with open(path) as f:
            self.assertNotIn("other", f.read())

    def test_refusals(self) -> None:
        """
        An empty password or a bad user name is a one-line error.
        """
        path = self.mktemp()
        self.assertEqual(self.passwd("passwd", path, "alice", password="\n")[::2], (1, "mailharbor: the password is empty\n"))
        status, _, err = self.passwd("passwd", path, "../evil")
        self.assertEqual(status, 2)
        self.assertTrue(err.startswith("mailharbor: '../evil' is not a valid user name"), err)


    def test_endOfInputAtThePrompt(self) -> None:
        """
        Ctrl-D at the terminal's password prompt is a one-line error, not
        a traceback, and the file is not written.
        """

        class Terminal(io.StringIO):
            def isatty(self) -> bool:
                return True

        def eof(prompt: str = "") -> str:
            raise EOFError()

        self.patch(getpass, "getpass", eof)
        self.patch(sys, "stdin", Terminal())
        path = self.mktemp()
        err = io.StringIO()
        self.assertEqual(cli.main(["passwd", path, "alice"], io.StringIO(), err), 1)
        self.assertEqual(err.getvalue(), "mailharbor: no password given\n")
        self.assertFalse(os.path.exists(path))


class HooksCommandTests(SynchronousTestCase):
    """
    C{mailharbor hooks} is part of the command.
    """

    def test_listsEmptySpool(self) -> None:
        """
        mailharbor hooks list reads the spool next to the Maildir.
        """
        out, err = io.StringIO(), io.StringIO()
        root = os.path.abspath(self.mktemp())
        self.assertEqual(cli.main(["hooks", "list", "--maildir", root], out, err), 0)
        self.assertEqual(out.getvalue(), f"No pending hook jobs in {root}/.hooks.\n")
