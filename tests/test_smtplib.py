"""
End-to-end tests with Python's own SMTP client: smtplib talks to the real
MailHarbor service over loopback, and what was stored is read back with
L{mailbox.Maildir}, as a mail reader would.
"""

from __future__ import annotations

import email
import hashlib
import os
import random
import re

from twisted.trial.unittest import TestCase

from harbor.test._support import traceHeaders
from tests._e2e import DOMAIN, HOSTNAME, RunningServer, inThread, startServer

SENDER = "sender@remote.example"
MESSAGE = (
    b"From: Sender <sender@remote.example>\r\n"
    b"To: Alice <alice@example.com>\r\n"
    b"Subject: Hello\r\n"
    b"\r\n"
    b"Hello Alice,\r\n"
    b"\r\n"
    b"this is the body.\r\n"
)


def stored(message: bytes) -> bytes:
    """
    What MailHarbor stores for message data smtplib sent: LF line ends.
    """
    return message.replace(b"\r\n", b"\n")


def header(data: bytes, name: str) -> list[str]:
    """
    The values of one header field of a stored message.
    """
    return email.message_from_bytes(data).get_all(name, [])



def sendToAlice(server: RunningServer) -> tuple[int, bytes]:
    """
    Send MESSAGE to alice@example.com with smtplib, EHLO first; the reply
    to the end of the data.  Blocking: call it in a thread.
    """
    return sendTo(server, ["alice@example.com"], MESSAGE)


def sendTo(server: RunningServer, recipients: list[str], message: bytes) -> tuple[int, bytes]:
    """
    Send C{message} to C{recipients} with smtplib, EHLO first, each
    recipient accepted; the reply to the end of the data.  Blocking.
    """
    with server.connect() as s:
        s.ehlo()
        s.mail(SENDER)
        for recipient in recipients:
            code, reply = s.rcpt(recipient)
            if code != 250:
                raise AssertionError(f"RCPT {recipient}: {code} {reply!r}")
        return s.data(message)

class SMTPLibTests(TestCase):
    """
    Sessions of smtplib against MailHarbor on loopback.
    """

    timeout = 120

    async def test_oneMessage(self) -> None:
        """
        A message is stored once, byte for byte after its trace headers,
        which give the envelope sender, the recipient and a Received line.
        """
        server = await startServer(self)

        code, _ = await inThread(sendToAlice, server)
        self.assertEqual(code, 250)
        files = server.storedFiles()
        self.assertEqual(len(files), 1)
        [(key, data)] = files.items()
        trace, rest = traceHeaders(data)
        self.assertEqual(rest, stored(MESSAGE))
        lines = trace.split(b"\n")
        self.assertEqual(lines[0], b"Return-Path: <sender@remote.example>")
        self.assertEqual(lines[1], b"Delivered-To: alice@example.com")
        self.assertEqual(lines[2], b"Received: from client.example ([127.0.0.1])")
        storedId = key.split(",")[0]
        self.assertEqual(lines[3], f"\tby {HOSTNAME} (MailHarbor) with ESMTP id {storedId}".encode())
        self.assertTrue(lines[4].startswith(b"\tfor <alice@example.com>; "), lines[4])
        self.assertEqual(server.listing("tmp"), [])

    async def test_dataReplyNamesStoredId(self) -> None:
        """
        The 250 reply to the end of DATA names the id of the stored file,
        which is the start of its Maildir key.
        """
        server = await startServer(self)

        code, reply = await inThread(sendToAlice, server)
        self.assertEqual(code, 250)
        match = re.fullmatch(rb"2\.0\.0 Ok: stored as (\S+)", reply)
        self.assertIsNotNone(match, reply)
        assert match is not None
        storedId = match.group(1).decode("ascii")
        keys = list(server.maildir().keys())
        self.assertEqual(len(keys), 1)
        self.assertTrue(keys[0] == storedId or keys[0].startswith(storedId + ","), (keys, storedId))
        self.assertTrue(any(name.startswith(storedId + ",") for name in server.listing("new")))

    async def test_severalMessagesOneConnection(self) -> None:
        """
        Several transactions on one connection each store their own message.
        """
        server = await startServer(self)
        count = 5

        def send() -> list[dict[str, tuple[int, bytes]]]:
            results = []
            with server.connect() as s:
                for i in range(count):
                    body = MESSAGE + f"message number {i}\r\n".encode()
                    results.append(s.sendmail(SENDER, [f"user{i}@example.com"], body))
            return results

        results = await inThread(send)
        self.assertEqual(results, [{}] * count)
        files = server.storedFiles()
        self.assertEqual(len(files), count)
        bodies = sorted(traceHeaders(data)[1] for data in files.values())
        self.assertEqual(
            bodies, sorted(stored(MESSAGE + f"message number {i}\r\n".encode()) for i in range(count))
        )
        recipients = sorted(header(data, "Delivered-To")[0] for data in files.values())
        self.assertEqual(recipients, sorted(f"user{i}@example.com" for i in range(count)))

    async def test_severalRecipients(self) -> None:
        """
        Each recipient of one message gets its own file with its own
        Delivered-To, and the reply counts the extra copies.
        """
        server = await startServer(self)
        recipients = ["alice@example.com", "bob@example.com", "carol@example.com"]
        code, reply = await inThread(sendTo, server, recipients, MESSAGE)
        self.assertEqual(code, 250)
        match = re.fullmatch(rb"2\.0\.0 Ok: stored as (\S+) \(\+2 more copies\)", reply)
        self.assertIsNotNone(match, reply)
        assert match is not None
        files = server.storedFiles()
        self.assertEqual(len(files), 3)
        self.assertTrue(any(key.startswith(match.group(1).decode() + ",") for key in files))
        deliveredTo = sorted(v for data in files.values() for v in header(data, "Delivered-To"))
        self.assertEqual(deliveredTo, recipients)
        for data in files.values():
            self.assertEqual(traceHeaders(data)[1], stored(MESSAGE))
        ids = {key.split(",")[0] for key in files}
        self.assertEqual(len(ids), 3)

    async def test_largeMessageSeveralRecipients(self) -> None:
        """
        A message too large to keep in memory, for three recipients, is
        stored whole for each, each copy with its own trace headers (the
        first copy's file is streamed, the others are made from it at the
        end), and read back with the mailbox module.
        """
        server = await startServer(self)
        recipients = ["alice@example.com", "bob@example.com", "carol@example.com"]
        message = b"Subject: big and shared\r\n\r\n" + b"".join(b"line %07d\r\n" % i for i in range(40000))
        code, reply = await inThread(sendTo, server, recipients, message)
        self.assertEqual(code, 250, reply)
        copies = list(server.maildir())
        self.assertEqual(sorted(m["Delivered-To"] for m in copies), recipients)
        for copy in copies:
            self.assertEqual(copy["Subject"], "big and shared")
            self.assertEqual(copy.get_payload(decode=True), stored(message).split(b"\n\n", 1)[1])
        self.assertEqual(server.listing("tmp"), [])

    async def test_recipientsInTwoDomains(self) -> None:
        """
        One message to recipients in two served domains is stored once in
        each domain's own Maildir.
        """
        server = await startServer(self, domains=(DOMAIN, "example.org"))

        def send() -> dict[str, tuple[int, bytes]]:
            with server.connect() as s:
                return s.sendmail(SENDER, ["alice@example.com", "bob@example.org"], MESSAGE)

        self.assertEqual(await inThread(send), {})
        [com] = server.storedFiles(DOMAIN).values()
        [org] = server.storedFiles("example.org").values()
        self.assertEqual(header(com, "Delivered-To"), ["alice@example.com"])
        self.assertEqual(header(org, "Delivered-To"), ["bob@example.org"])
        self.assertEqual(traceHeaders(org)[1], stored(MESSAGE))

    async def test_dotStuffing(self) -> None:
        """
        Body lines starting with a dot, which the client doubles, are stored
        with the one dot they had, including a line that is just a dot.
        """
        server = await startServer(self)
        message = (
            b"Subject: dots\r\n\r\n"
            b"first\r\n"
            b".leading dot\r\n"
            b"..two dots\r\n"
            b".\r\n"
            b"...\r\n"
            b"last\r\n"
        )

        def send() -> dict[str, tuple[int, bytes]]:
            with server.connect() as s:
                return s.sendmail(SENDER, ["alice@example.com"], message)

        self.assertEqual(await inThread(send), {})
        [data] = server.storedFiles().values()
        self.assertEqual(
            traceHeaders(data)[1],
            b"Subject: dots\n\nfirst\n.leading dot\n..two dots\n.\n...\nlast\n",
        )

    async def test_eightBitBody(self) -> None:
        """
        Every byte from 0x80 to 0xff sent with BODY=8BITMIME is stored
        verbatim.
        """
        server = await startServer(self)
        high = bytes(range(0x80, 0x100))
        message = b"Subject: 8bit\r\nContent-Transfer-Encoding: 8bit\r\n\r\n" + high + b"\r\n" + high[::-1] + b"\r\n"

        def send() -> dict[str, tuple[int, bytes]]:
            with server.connect() as s:
                s.ehlo()
                self.assertTrue(s.has_extn("8bitmime"))
                return s.sendmail(SENDER, ["alice@example.com"], message, mail_options=["BODY=8BITMIME"])

        self.assertEqual(await inThread(send), {})
        [data] = server.storedFiles().values()
        self.assertEqual(traceHeaders(data)[1], stored(message))
        self.assertIn(high, data)

    async def test_largeMessage(self) -> None:
        """
        A 20 MiB message is stored byte for byte, and the S= size in its
        file name is the file's size.
        """
        server = await startServer(self)
        rng = random.Random(20)
        lines = []
        size = 0
        i = 0
        while size < 20 * 1024 * 1024:
            if i % 997 == 0:
                line = b"." + rng.randbytes(30).hex().encode()
            else:
                line = rng.randbytes(38).hex().encode()
            lines.append(line)
            size += len(line) + 2
            i += 1
        message = b"Subject: big\r\n\r\n" + b"\r\n".join(lines) + b"\r\n"
        expected = stored(message)
        expectedDigest = hashlib.sha256(expected).hexdigest()

        def send() -> tuple[int, bytes]:
            with server.connect() as s:
                s.ehlo()
                s.mail(SENDER)
                s.rcpt("alice@example.com")
                return s.data(message)

        code, reply = await inThread(send)
        self.assertEqual(code, 250, reply)
        [name] = server.listing("new")
        path = os.path.join(server.maildirPath(), "new", name)
        fileSize = os.path.getsize(path)
        self.assertTrue(name.endswith(f",S={fileSize}"), name)
        with open(path, "rb") as f:  # noqa: ASYNC230 (a small local file)
            data = f.read()
        trace, rest = traceHeaders(data)
        self.assertTrue(trace.startswith(b"Return-Path: <sender@remote.example>\n"))
        self.assertEqual(len(rest), len(expected))
        self.assertEqual(hashlib.sha256(rest).hexdigest(), expectedDigest)

    async def test_rejectedDomain(self) -> None:
        """
        A recipient in a domain MailHarbor does not serve is refused as
        relaying (550 5.7.1) and nothing is stored.
        """
        server = await startServer(self)

        def send() -> tuple[tuple[int, bytes], tuple[int, bytes]]:
            with server.connect() as s:
                s.ehlo()
                s.mail(SENDER)
                rcpt = s.rcpt("x@other.org")
                return rcpt, s.docmd("DATA")

        (code, reply), (dataCode, _) = await inThread(send)
        self.assertEqual(code, 550)
        self.assertIn(b"5.7.1", reply)
        self.assertEqual(dataCode, 554)
        self.assertEqual(server.listing("new"), [])
        self.assertEqual(server.listing("tmp"), [])
        self.assertEqual(sorted(os.listdir(server.root)), [DOMAIN])

    async def test_acceptList(self) -> None:
        """
        A domain with an accept list refuses unlisted local parts with
        550 5.1.1, and accepts the listed ones and postmaster.
        """
        configPath = os.path.abspath(self.mktemp())
        with open(configPath, "w") as f:  # noqa: ASYNC230 (a small local file)
            f.write('[domains."example.com"]\naccept = ["alice"]\n')
        server = await startServer(self, "--config", configPath)

        def send() -> tuple[list[tuple[int, bytes]], tuple[int, bytes]]:
            with server.connect() as s:
                s.ehlo()
                s.mail(SENDER)
                replies = [s.rcpt(r) for r in ["bob@example.com", "alice@example.com", "postmaster@example.com"]]
                return replies, s.data(MESSAGE)

        (bob, alice, postmaster), (dataCode, dataReply) = await inThread(send)
        self.assertEqual(bob[0], 550)
        self.assertIn(b"5.1.1", bob[1])
        self.assertEqual(alice[0], 250)
        self.assertEqual(postmaster[0], 250)
        self.assertEqual(dataCode, 250, dataReply)
        files = server.storedFiles()
        deliveredTo = sorted(v for data in files.values() for v in header(data, "Delivered-To"))
        self.assertEqual(deliveredTo, ["alice@example.com", "postmaster@example.com"])

    async def test_domainCaseInsensitive(self) -> None:
        """
        A recipient whose domain is written in capitals is stored in the
        domain's Maildir.
        """
        server = await startServer(self)

        def send() -> dict[str, tuple[int, bytes]]:
            with server.connect() as s:
                return s.sendmail(SENDER, ["X@EXAMPLE.COM"], MESSAGE)

        self.assertEqual(await inThread(send), {})
        [data] = server.storedFiles().values()
        self.assertEqual([v.lower() for v in header(data, "Delivered-To")], ["x@example.com"])
        self.assertEqual(sorted(os.listdir(server.root)), [DOMAIN])

    async def test_nullSender(self) -> None:
        """
        A bounce, with the null sender <>, is accepted and stored with
        Return-Path: <>.
        """
        server = await startServer(self)

        def send() -> dict[str, tuple[int, bytes]]:
            with server.connect() as s:
                return s.sendmail("", ["alice@example.com"], MESSAGE)

        self.assertEqual(await inThread(send), {})
        [data] = server.storedFiles().values()
        self.assertTrue(data.startswith(b"Return-Path: <>\n"), data[:100])
        self.assertEqual(traceHeaders(data)[1], stored(MESSAGE))

    async def test_resetBeforeData(self) -> None:
        """
        A transaction reset before DATA stores nothing, and the connection
        goes on to store the next one.
        """
        server = await startServer(self)

        def send() -> tuple[tuple[int, bytes], dict[str, tuple[int, bytes]]]:
            with server.connect() as s:
                s.ehlo()
                s.mail(SENDER)
                s.rcpt("alice@example.com")
                reset = s.rset()
                return reset, s.sendmail(SENDER, ["bob@example.com"], MESSAGE)

        (resetCode, _), refused = await inThread(send)
        self.assertEqual(resetCode, 250)
        self.assertEqual(refused, {})
        [data] = server.storedFiles().values()
        self.assertEqual(header(data, "Delivered-To"), ["bob@example.com"])
