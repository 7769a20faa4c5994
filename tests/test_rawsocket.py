"""
End-to-end tests on a bare socket: what a well-behaved client library will
not send (pipelined bursts, a dropped connection, bare line ends, hostile
addresses, overlong lines) sent to the real MailHarbor service on loopback.
"""

from __future__ import annotations

import os
import select
import time

from twisted.trial.unittest import TestCase

from harbor.test._support import traceHeaders
from tests._e2e import inThread, pollUntil, startServer

SENDER = b"sender@remote.example"


def codes(replies: list[tuple[int, bytes]]) -> list[int]:
    return [code for code, _ in replies]


class RawSocketTests(TestCase):
    """
    Raw SMTP sessions against MailHarbor on loopback.
    """

    timeout = 120

    async def test_pipelinedCommands(self) -> None:
        """
        Commands sent in one write get exactly one reply each, in order,
        a refused recipient among them.
        """
        server = await startServer(self)

        def session() -> list[tuple[int, bytes]]:
            client = server.rawSocket()
            try:
                self.assertEqual(client.command(b"EHLO client.example")[0], 250)
                client.send(
                    b"MAIL FROM:<sender@remote.example>\r\n"
                    b"RCPT TO:<alice@example.com>\r\n"
                    b"RCPT TO:<x@other.org>\r\n"
                    b"RCPT TO:<bob@example.com>\r\n"
                    b"DATA\r\n"
                )
                replies = [client.reply() for _ in range(5)]
                client.send(b"Subject: pipelined\r\n\r\nbody\r\n.\r\nQUIT\r\n")
                return replies + client.repliesUntilClosed()
            finally:
                client.close()

        replies = await inThread(session)
        self.assertEqual(codes(replies), [250, 250, 550, 250, 354, 250, 221], replies)
        self.assertTrue(replies[2][1].startswith(b"5.7.1 "), replies[2])
        self.assertTrue(replies[5][1].endswith(b"(+1 more copies)"), replies[5])
        self.assertEqual(len(server.listing("new")), 2)

    async def test_disconnectDuringData(self) -> None:
        """
        A client that goes away in the middle of DATA leaves no message in
        new/ and, once the server has noticed, nothing in tmp/.
        """
        server = await startServer(self)

        def session() -> list[str]:
            client = server.rawSocket()
            try:
                client.command(b"EHLO client.example")
                self.assertEqual(client.command(b"MAIL FROM:<" + SENDER + b">")[0], 250)
                self.assertEqual(client.command(b"RCPT TO:<alice@example.com>")[0], 250)
                self.assertEqual(client.command(b"DATA")[0], 354)
                # More than a small message kept in memory: the copy is being
                # written in tmp/.
                client.send(b"Subject: cut short\r\n\r\n" + b"partial line\r\n" * 20000)
                for _ in range(100):
                    if server.listing("tmp"):
                        break
                    time.sleep(0.05)
                return server.listing("tmp")
            finally:
                client.close()

        inTmp = await inThread(session)
        self.assertEqual(len(inTmp), 1)
        await pollUntil(lambda: not server.listing("tmp"), "tmp/ is empty")
        self.assertEqual(server.listing("new"), [])
        self.assertEqual(list(server.maildir().keys()), [])

    async def test_heloHeaderInjection(self) -> None:
        """
        A bare LF in the EHLO name cannot add a header line to the stored
        message: the name is refused with 501 and never reaches a header.
        """
        server = await startServer(self)

        def session() -> list[tuple[int, bytes]]:
            client = server.rawSocket()
            try:
                code, _ = client.command(b"EHLO foo\nX-Injected: yes")
                self.assertEqual(code, 501)
                client.command(b"EHLO client.example")
                client.send(
                    b"MAIL FROM:<" + SENDER + b">\r\n"
                    b"RCPT TO:<alice@example.com>\r\n"
                    b"DATA\r\n"
                )
                replies = [client.reply() for _ in range(3)]
                client.send(b"Subject: injected?\r\n\r\nbody\r\n.\r\nQUIT\r\n")
                return replies + client.repliesUntilClosed()
            finally:
                client.close()

        replies = await inThread(session)
        self.assertEqual(codes(replies), [250, 250, 354, 250, 221], replies)
        [data] = server.storedFiles().values()
        trace, rest = traceHeaders(data)
        self.assertEqual(rest, b"Subject: injected?\n\nbody\n")
        for line in data.split(b"\n"):
            self.assertFalse(line.lower().startswith(b"x-injected"), data)
        self.assertEqual(trace.count(b"\n"), 5, trace)
        self.assertTrue(trace.split(b"\n")[2].startswith(b"Received: from client.example "), trace)

    async def test_smugglingSequencesDoNotEndData(self) -> None:
        """
        <LF>.<CRLF>, <LF>.<LF> and <CR>.<CRLF> inside a body do not end it:
        one message is stored, with those bytes in it, and the commands
        hidden after them are not run.
        """
        server = await startServer(self)
        body = (
            b"Subject: smuggling\r\n\r\n"
            b"start\n.\r\n"
            b"MAIL FROM:<evil@attacker.example>\r\n"
            b"RCPT TO:<victim@example.com>\r\n"
            b"DATA\r\n"
            b"smuggled one\r\n"
            b"middle\n.\n"
            b"smuggled two\r\n"
            b"late\r.\r\n"
            b"smuggled three\r\n"
        )

        def session() -> list[tuple[int, bytes]]:
            client = server.rawSocket()
            try:
                client.command(b"EHLO client.example")
                client.send(
                    b"MAIL FROM:<" + SENDER + b">\r\n"
                    b"RCPT TO:<alice@example.com>\r\n"
                    b"DATA\r\n"
                )
                replies = [client.reply() for _ in range(3)]
                client.send(body + b".\r\nQUIT\r\n")
                return replies + client.repliesUntilClosed()
            finally:
                client.close()

        replies = await inThread(session)
        self.assertEqual(codes(replies), [250, 250, 354, 250, 221], replies)
        files = server.storedFiles()
        self.assertEqual(len(files), 1, list(files))
        [data] = files.values()
        self.assertEqual(
            traceHeaders(data)[1],
            b"Subject: smuggling\n\n"
            b"start\n.\n"
            b"MAIL FROM:<evil@attacker.example>\n"
            b"RCPT TO:<victim@example.com>\n"
            b"DATA\n"
            b"smuggled one\n"
            b"middle\n.\n"
            b"smuggled two\n"
            b"late\r.\n"
            b"smuggled three\n",
        )

    async def test_routingAddressesRefused(self) -> None:
        """
        A source route, a percent hack and an address literal are refused
        as relaying with 550 5.7.1, and nothing is stored.
        """
        server = await startServer(self)
        recipients = [
            b"<@relay.example:x@example.com>",
            b"<x%other.org@example.com>",
            b"<x@[127.0.0.1]>",
        ]

        def session() -> list[tuple[int, bytes]]:
            client = server.rawSocket()
            try:
                client.command(b"EHLO client.example")
                self.assertEqual(client.command(b"MAIL FROM:<" + SENDER + b">")[0], 250)
                replies = [client.command(b"RCPT TO:" + r) for r in recipients]
                replies.append(client.command(b"DATA"))
                client.send(b"QUIT\r\n")
                return replies + client.repliesUntilClosed()
            finally:
                client.close()

        replies = await inThread(session)
        for recipient, (code, text) in zip(recipients, replies):
            self.assertEqual(code, 550, (recipient, text))
            self.assertTrue(text.startswith(b"5.7.1 "), (recipient, text))
        self.assertEqual(codes(replies[3:]), [554, 221])
        self.assertEqual(sorted(os.listdir(server.root)), ["example.com"])
        self.assertEqual(server.listing("new"), [])
        self.assertEqual(server.listing("tmp"), [])

    async def test_overlongCommandLine(self) -> None:
        """
        A command line over the limit gets 500 5.5.2 and the connection
        stays usable.
        """
        server = await startServer(self)

        def session() -> list[tuple[int, bytes]]:
            client = server.rawSocket()
            try:
                client.command(b"EHLO client.example")
                replies = [client.command(b"NOOP " + b"x" * 10000)]
                replies.append(client.command(b"NOOP"))
                replies.append(client.command(b"QUIT"))
                return replies + client.repliesUntilClosed()
            finally:
                client.close()

        replies = await inThread(session)
        self.assertEqual(codes(replies), [500, 250, 221], replies)
        self.assertTrue(replies[0][1].startswith(b"5.5.2 "), replies[0])

    async def test_tricklingClientCutOff(self) -> None:
        """
        A client that trickles a command line a byte every 0.3 s, each well
        within the 1 s command timeout, gets 421 4.4.2 about a second after
        its first byte, and the connection is closed: the timeout is a
        deadline for the line, not restarted by each byte.
        """
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:  # noqa: ASYNC230 (a small local file)
            f.write("command_timeout = 1\ndata_timeout = 1\n")
        server = await startServer(self, "--config", path)
        line = b"MAIL FROM:<" + SENDER + b">\r\n"

        def session() -> tuple[int, float, list[tuple[int, bytes]]]:
            client = server.rawSocket()
            try:
                self.assertEqual(client.command(b"EHLO client.example")[0], 250)
                started = time.monotonic()
                sent = 0
                for byte in line:
                    client.send(bytes([byte]))
                    sent += 1
                    if select.select([client.sock], [], [], 0.3)[0]:
                        break
                replies = client.repliesUntilClosed()
                return sent, time.monotonic() - started, replies
            finally:
                client.close()

        sent, elapsed, replies = await inThread(session)
        self.assertEqual(replies, [(421, b"4.4.2 mx.example.com Error: command deadline exceeded")])
        self.assertLess(sent, len(line))
        self.assertTrue(0.9 < elapsed < 5, elapsed)

    async def test_tricklingDataCutOff(self) -> None:
        """
        A client that trickles its message a byte every 0.2 s, far below
        min_data_rate, gets 421 4.4.2 "data rate too low" about
        data_timeout after the 354, the connection is closed, and nothing
        is stored.
        """
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:  # noqa: ASYNC230 (a small local file)
            f.write("command_timeout = 5\ndata_timeout = 1\nmin_data_rate = 500\n")
        server = await startServer(self, "--config", path)
        body = b"Subject: slow\r\n\r\n" + b"x" * 100 + b"\r\n.\r\n"

        def session() -> tuple[float, list[tuple[int, bytes]]]:
            client = server.rawSocket()
            try:
                self.assertEqual(client.command(b"EHLO client.example")[0], 250)
                self.assertEqual(client.command(b"MAIL FROM:<" + SENDER + b">")[0], 250)
                self.assertEqual(client.command(b"RCPT TO:<alice@example.com>")[0], 250)
                self.assertEqual(client.command(b"DATA")[0], 354)
                started = time.monotonic()
                for byte in body:
                    client.send(bytes([byte]))
                    if select.select([client.sock], [], [], 0.2)[0]:
                        break
                return time.monotonic() - started, client.repliesUntilClosed()
            finally:
                client.close()

        elapsed, replies = await inThread(session)
        self.assertEqual(replies, [(421, b"4.4.2 mx.example.com Error: data rate too low")])
        self.assertTrue(0.9 < elapsed < 5, elapsed)
        self.assertEqual(len(server.maildir()), 0)
