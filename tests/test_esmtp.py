"""
End-to-end tests of the ESMTP extensions over loopback: SIZE with smtplib,
oversized streamed messages, BDAT chunks and SMTPUTF8 on a raw socket.
"""

from __future__ import annotations

import smtplib

from twisted.trial.unittest import TestCase

from harbor.test._support import traceHeaders
from tests._e2e import RunningServer, inThread, startServer

MESSAGE = b"Subject: test\r\n\r\nHello.\r\n"


async def startLimited(testCase: TestCase, *settings: str) -> RunningServer:
    path = testCase.mktemp()
    with open(path, "w") as f:  # noqa: ASYNC230 (a small local file)
        f.write("\n".join(settings) + "\n")
    return await startServer(testCase, "--config", path)


class ESMTPEndToEndTests(TestCase):
    """
    Extensions as real clients use them.
    """

    timeout = 120

    async def test_sizeDeclaredBySmtplib(self) -> None:
        """
        smtplib sees the SIZE limit and its oversized message is refused at
        MAIL with 552 5.3.4; a message within it is stored.
        """
        server = await startLimited(self, "max_message_size = 2000")

        def send() -> tuple[str, tuple[int, bytes]]:
            with server.connect() as client:
                client.ehlo()
                limit = client.esmtp_features["size"]
                try:
                    client.sendmail("s@x.org", ["a@example.com"], MESSAGE + b"x" * 3000 + b"\r\n")
                except smtplib.SMTPSenderRefused as e:
                    refused = (e.smtp_code, e.smtp_error)
                client.sendmail("s@x.org", ["a@example.com"], MESSAGE)
                return limit, refused

        limit, refused = await inThread(send)
        self.assertEqual(limit, "2000")
        self.assertEqual(refused[0], 552)
        self.assertTrue(refused[1].startswith(b"5.3.4 "), refused)
        self.assertEqual(len(server.storedFiles()), 1)

    async def test_oversizedWhileStreaming(self) -> None:
        """
        An undeclared oversized message is read to its end, refused with
        552 5.3.4, leaves nothing, and the session goes on.
        """
        server = await startLimited(self, "max_message_size = 2000")

        def session() -> list[tuple[int, bytes]]:
            client = server.rawSocket()
            try:
                client.command(b"EHLO c")
                client.send(b"MAIL FROM:<s@x.org>\r\nRCPT TO:<a@example.com>\r\nDATA\r\n")
                replies = [client.reply() for _ in range(3)]
                client.send((b"x" * 998 + b"\r\n") * 500 + b".\r\n")
                replies.append(client.reply())
                client.send(b"MAIL FROM:<s@x.org>\r\nRCPT TO:<a@example.com>\r\nDATA\r\n")
                replies += [client.reply() for _ in range(3)]
                client.send(MESSAGE + b".\r\nQUIT\r\n")
                return replies + client.repliesUntilClosed()
            finally:
                client.close()

        replies = await inThread(session)
        self.assertEqual([c for c, _ in replies], [250, 250, 354, 552, 250, 250, 354, 250, 221])
        self.assertTrue(replies[3][1].startswith(b"5.3.4 "))
        [stored] = server.storedFiles().values()
        self.assertEqual(traceHeaders(stored)[1], b"Subject: test\n\nHello.\n")
        self.assertEqual(server.listing("tmp"), [])

    async def test_bdatChunks(self) -> None:
        """
        Pipelined BDAT chunks with bytes DATA would have to escape are
        stored exactly (line ends as LF).
        """
        server = await startServer(self)
        parts = [b"Subject: chunks\r\n\r\n.leading dot\r\n", b"\x00\xff bytes\r", b"\n.\r\nlast"]

        def session() -> list[tuple[int, bytes]]:
            client = server.rawSocket()
            try:
                ehlo = client.command(b"EHLO c")
                self.assertIn(b"CHUNKING", ehlo[1])
                wire = b"MAIL FROM:<s@x.org>\r\nRCPT TO:<a@example.com>\r\n"
                for i, part in enumerate(parts):
                    last = b" LAST" if i == len(parts) - 1 else b""
                    wire += b"BDAT %d%s\r\n" % (len(part), last) + part
                client.send(wire + b"QUIT\r\n")
                return client.repliesUntilClosed()
            finally:
                client.close()

        replies = await inThread(session)
        self.assertEqual([c for c, _ in replies], [250, 250, 250, 250, 250, 221])
        [stored] = server.storedFiles().values()
        self.assertEqual(
            traceHeaders(stored)[1], b"Subject: chunks\n\n.leading dot\n\x00\xff bytes\n.\nlast"
        )

    async def test_smtputf8WithSmtplib(self) -> None:
        """
        smtplib's SMTPUTF8 support delivers to a UTF-8 address.
        """
        server = await startServer(self)

        def send() -> None:
            with server.connect() as client:
                client.sendmail(
                    "j\u00f6rg@x.org",
                    ["\u00fcser@example.com"],
                    "Subject: gr\u00fc\u00dfe\r\n\r\nHall\u00f6\r\n".encode(),
                    mail_options=["SMTPUTF8", "BODY=8BITMIME"],
                )

        await inThread(send)
        [stored] = server.storedFiles().values()
        trace, body = traceHeaders(stored)
        self.assertIn("Delivered-To: \u00fcser@example.com\n".encode(), trace)
        self.assertIn(b" with UTF8SMTP id ", trace)
        self.assertEqual(body, "Subject: gr\u00fc\u00dfe\n\nHall\u00f6\n".encode())
