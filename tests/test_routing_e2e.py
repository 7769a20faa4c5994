"""
Routing and filters over real loopback sockets, with a real DNS server on
loopback serving a blocklist zone.
"""

from __future__ import annotations

import os
import smtplib
from collections.abc import Set as AbstractSet
from typing import cast

from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import fail, succeed
from twisted.internet.interfaces import IReactorUDP
from twisted.names import dns, server
from twisted.names.error import DomainError
from twisted.trial.unittest import TestCase

from tests._e2e import RunningServer, inThread, startServer

CONFIG = """
domain = ["example.com"]
dnsbl = ["bl.example"]
dns_servers = ["127.0.0.1:{dnsPort}"]
dnsbl_timeout = 2

[[filter]]
helo = "*.evil.example"
action = "reject"
text = "Bad HELO"

[[filter]]
sender = "*@spam.example"
action = "reject"
text = "No spam"

[[filter]]
recipient = "closed@example.net"
action = "reject"
enhanced = "5.1.6"
text = "Moved away"

[domains."example.net"]
mailboxes = ["alice", "bob"]
aliases = {{ info = ["alice", "bob"] }}
catch_all = "reject"
subaddress_folders = true

[[domains."example.net".rules]]
header = "List-Id"
contains = "announce"
folder = "Lists"
"""


class _Blocklist:
    """
    A resolver answering A queries for one listed address.
    """

    def __init__(self, listed: AbstractSet[str]) -> None:
        self.listed = listed

    def query(self, query: dns.Query, timeout: object = None) -> object:
        name = query.name.name.decode()
        if query.type == dns.A and name in self.listed:
            answer = dns.RRHeader(name, dns.A, payload=dns.Record_A("127.0.0.2"))
            return succeed(([answer], [], []))
        return fail(DomainError(name))


class RoutingEndToEndTests(TestCase):
    """
    Routing and every filter stage, with smtplib.
    """

    timeout = 120

    async def start(self, listed: AbstractSet[str] = frozenset()) -> RunningServer:
        factory = server.DNSServerFactory(clients=[_Blocklist(listed)])
        # IReactorUDP declares no default packet size; 8192 is the reactor's.
        udp = cast(IReactorUDP, reactor).listenUDP(
            0, dns.DNSDatagramProtocol(factory), interface="127.0.0.1", maxPacketSize=8192
        )
        self.addCleanup(udp.stopListening)
        path = self.mktemp()
        with open(path, "w") as f:  # noqa: ASYNC230 (a small local file)
            f.write(CONFIG.format(dnsPort=cast(IPv4Address, udp.getHost()).port))
        return await startServer(self, "--config", path)

    async def test_routing(self) -> None:
        """
        An alias reaches both mailboxes, a +tag its folder, a List-Id rule
        its folder; an unknown address is refused.
        """
        server = await self.start()

        def send() -> dict[str, tuple[int, bytes]]:
            with server.connect() as client:
                client.sendmail("s@x.org", ["info@example.net"], b"Subject: all\r\n\r\nhi\r\n")
                client.sendmail("s@x.org", ["alice+news@example.net"], b"Subject: tagged\r\n\r\nhi\r\n")
                client.sendmail("s@x.org", ["bob@example.net"], b"List-Id: <announce.x.org>\r\n\r\nhi\r\n")
                try:
                    client.sendmail("s@x.org", ["nobody@example.net"], b"Subject: x\r\n\r\nhi\r\n")
                except smtplib.SMTPRecipientsRefused as e:
                    return e.recipients
            return {}

        refused = await inThread(send)
        self.assertEqual(refused["nobody@example.net"][0], 550)

        def count(*path: str) -> int:
            return len(os.listdir(os.path.join(server.root, "example.net", *path, "new")))

        self.assertEqual(
            (count("alice"), count("bob"), count("alice", ".news"), count("bob", ".Lists")), (1, 1, 1, 1)
        )

    async def test_filterStages(self) -> None:
        """
        HELO, sender and recipient filters refuse at their own stage with
        their own replies, and a clean message goes through.
        """
        server = await self.start()

        def session() -> list[tuple[int, bytes]]:
            client = server.rawSocket()
            try:
                replies = [client.command(b"EHLO mx.evil.example"), client.command(b"EHLO good.example")]
                replies.append(client.command(b"MAIL FROM:<a@spam.example>"))
                replies.append(client.command(b"MAIL FROM:<a@x.org>"))
                replies.append(client.command(b"RCPT TO:<closed@example.net>"))
                replies.append(client.command(b"RCPT TO:<a@example.com>"))
                return replies
            finally:
                client.close()

        replies = await inThread(session)
        self.assertEqual(
            [(code, text.split(b"\n")[0]) for code, text in replies],
            [
                (550, b"5.7.1 Bad HELO"),
                (250, b"mx.example.com"),
                (550, b"5.7.1 No spam"),
                (250, b"2.1.0 Ok"),
                (550, b"5.1.6 Moved away"),
                (250, b"2.1.5 Ok"),
            ],
        )

    async def test_refusedGreetingNotIgnored(self) -> None:
        """
        smtplib carrying on after its EHLO was refused by a HELO filter is
        refused again at MAIL, and nothing is stored.
        """
        server = await self.start()

        def session() -> tuple[int, int, str]:
            with smtplib.SMTP("127.0.0.1", server.port, local_hostname="mx.evil.example", timeout=10) as client:
                greeted = client.ehlo()[0]
                try:
                    client.sendmail("a@x.org", ["a@example.com"], b"Subject: x\r\n\r\nhi\r\n")
                except smtplib.SMTPSenderRefused as e:
                    return greeted, e.smtp_code, e.smtp_error.decode()
                return greeted, 250, "sent"

        self.assertEqual(await inThread(session), (550, 550, "Bad HELO"))
        self.assertEqual(server.storedFiles(), {})

    async def test_blocklistedClient(self) -> None:
        """
        A client listed in the blocklist zone (served by a real DNS server
        on loopback) is refused at RCPT with 554 5.7.1 naming the zone.
        """
        server = await self.start(listed={"1.0.0.127.bl.example"})

        def send() -> tuple[int, bytes]:
            with server.connect() as client:
                try:
                    client.sendmail("s@x.org", ["a@example.com"], b"Subject: x\r\n\r\nhi\r\n")
                except smtplib.SMTPRecipientsRefused as e:
                    return e.recipients["a@example.com"]
            return (250, b"")

        code, text = await inThread(send)
        self.assertEqual(code, 554)
        self.assertIn(b"blocked using bl.example", text)
