"""
Tests for L{harbor.cli}, the C{mailharbor} command that reads the store.

Each test builds a Maildir tree the way the server writes it and runs the
command in-process, capturing its output.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time

from twisted.trial.unittest import SynchronousTestCase

import harbor
from harbor import cli

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
    A Maildir id as L{harbor.maildir.MaildirNamer} makes them.
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
        root = os.path.abspath(self.mktemp())
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

    def runCommand(self, *argv: str) -> tuple[int, bytes, str]:
        """
        Run C{mailharbor} in-process.

        @return: The exit status, the bytes written to standard output and
            the text written to standard error.
        """
        out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", newline="\n")
        err = io.StringIO()
        status = cli.main(list(argv), stdout=out, stderr=err)
        out.flush()
        return status, out.buffer.getvalue(), err.getvalue()

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
                *"Café au lait".split(),
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

        status, out, err = self.runCommand("list", "--maildir", root)

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
        Long subjects are cut to L{cli.SUBJECT_WIDTH} characters with an
        ellipsis in the table, and given whole in JSON.
        """
        root = self.makeRoot("example.com")
        subject = "word " * 40
        content = messageBytes(subject=subject.encode("ascii"))
        self.deliver(root, "example.com", messageID(NOW), content)

        status, out, err = self.runCommand("list", "--maildir", root)
        [entry] = self.listJSON("--maildir", root)

        shown = ("word " * 12).strip() + "\u2026"
        self.assertEqual(len(shown), cli.SUBJECT_WIDTH)
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


class ReadHeaderBlockTests(SynchronousTestCase):
    """
    Tests for L{cli.readHeaderBlock}.
    """

    def test_stopsAtBlankLine(self) -> None:
        """
        Only the header block is read: the file is left just after the blank
        line, the body unread.
        """
        headers = messageBytes(body=None)
        f = io.BytesIO(headers + b"\n" + b"x" * (4 * 1024 * 1024))

        block = cli.readHeaderBlock(f)

        self.assertEqual((block, f.tell()), (headers, len(headers) + 1))

    def test_limit(self) -> None:
        """
        A file without a blank line is read no further than the limit.
        """
        f = io.BytesIO(b"X-Long: " + b"y" * 10000)

        cli.readHeaderBlock(f, limit=1000)

        self.assertEqual(f.tell(), 1000)


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


class ConfigTests(_CommandTestCase):
    """
    Tests for choosing the root with C{--config}, and for usage errors.
    """

    def writeConfig(self, text: str) -> str:
        """
        Write a configuration file and return its path.
        """
        path = os.path.abspath(self.mktemp())
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path

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


class ImportTests(SynchronousTestCase):
    """
    Tests for what importing L{harbor.cli} brings in.
    """

    def test_noReactor(self) -> None:
        """
        Importing L{harbor.cli} imports neither the reactor nor
        L{twisted.mail.smtp}.
        """
        parent = os.path.dirname(os.path.dirname(os.path.abspath(harbor.__file__)))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [parent, env.get("PYTHONPATH")]))
        code = (
            "import harbor.cli, sys; "
            "assert harbor.cli.__file__.startswith(sys.argv[1]), harbor.cli.__file__; "
            "assert 'twisted.internet.reactor' not in sys.modules; "
            "assert 'twisted.mail.smtp' not in sys.modules"
        )

        result = subprocess.run(
            [sys.executable, "-c", code, parent],
            env=env,
            capture_output=True,
            text=True,
        )

        self.assertEqual((result.returncode, result.stderr), (0, ""))
