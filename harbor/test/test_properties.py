"""
Property-based tests of the SMTP protocol: whatever a client sends, the
server never raises, answers every command exactly once, and stores a body
exactly as it was sent.
"""

import os
import re

from hypothesis import HealthCheck, given, settings, strategies as st

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from harbor.limits import Limits
from harbor.routing import DomainConfig
from harbor.smtp._factory import HarborSMTPFactory, ServerSettings
from harbor.test._support import HOSTNAME, SMTPDriver, makeDeliverer

_FINAL = re.compile(rb"^\d{3} ", re.MULTILINE)

garbage = st.binary(max_size=600).filter(
    lambda b: b"\r\n" not in b
    and not b.endswith(b"\r")
    and not b.lstrip().upper().startswith((b"QUIT", b"DATA", b"BDAT"))
)
local = st.from_regex(r"\A[A-Za-z0-9._%+-]{1,20}\Z").filter(lambda s: ".." not in s)
command = st.one_of(
    st.sampled_from(
        [b"EHLO client.example", b"HELO c", b"RSET", b"NOOP", b"HELP", b"VRFY x", b"EXPN x",
         b"MAIL FROM:<>", b"MAIL FROM:<s@x.org> SIZE=10 BODY=8BITMIME", b"MAIL FROM:<s@x.org> XX=1",
         b"RCPT TO:<Postmaster>", b"RCPT TO:<@r.example:a@example.com>", b"EHLO", b"STARTTLS"]
    ),
    local.map(lambda l: b"RCPT TO:<" + l.encode() + b"@example.com>"),
    local.map(lambda l: b"RCPT TO:<" + l.encode() + b"@other.org>"),
    local.map(lambda l: b"MAIL FROM:<" + l.encode() + b"@x.org>"),
    garbage,
)
bodyLine = st.binary(max_size=200).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))


def replyCount(data: bytes) -> int:
    """
    How many replies C{data} holds: each ends with a line whose code is
    followed by a space.
    """
    return len(_FINAL.findall(data))


class ProtocolPropertyTests(SynchronousTestCase):
    """
    Random sessions against a catch-all example.com.
    """

    def connect(self) -> tuple[SMTPDriver, str]:
        root = self.mktemp()
        clock = Clock()
        deliverer, _ = makeDeliverer(root, [DomainConfig("example.com")], clock=clock)
        factory = HarborSMTPFactory(deliverer, ServerSettings(HOSTNAME, Limits(maxErrors=10**9)), clock)
        return SMTPDriver(deliverer, clock, factory=factory), root

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(commands=st.lists(command, max_size=40))
    def test_pipelinedCommandsEachAnsweredOnce(self, commands: list[bytes]) -> None:
        """
        Any batch of commands sent in one write gets exactly one reply per
        command, and nothing raises.
        """
        smtp, _ = self.connect()
        output = smtp.send(b"".join(c + b"\r\n" for c in commands))
        self.assertEqual(replyCount(output), len(commands))
        self.assertFalse(smtp.transport.disconnecting)
        smtp.close()

    @settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(
        before=st.lists(command, max_size=8),
        lines=st.lists(bodyLine, max_size=30),
        cuts=st.lists(st.integers(min_value=1, max_value=4000), max_size=5),
    )
    def test_storedBodyIsBodySent(self, before: list[bytes], lines: list[bytes], cuts: list[int]) -> None:
        """
        After any commands, a message sent with DATA in arbitrary pieces is
        stored exactly (line ends as LF), and every command is answered once.
        """
        smtp, root = self.connect()
        for c in before:
            self.assertEqual(replyCount(smtp.send(c + b"\r\n")), 1, c)
        smtp.send(b"EHLO c\r\nMAIL FROM:<s@x.org>\r\nRCPT TO:<a@example.com>\r\n")
        self.assertTrue(smtp.send(b"DATA\r\n").startswith(b"354 "))
        body = b"".join(line + b"\r\n" for line in lines)
        stuffed = b"\r\n".join(b"." + l if l.startswith(b".") else l for l in body.split(b"\r\n"))
        wire = stuffed + b".\r\n"
        points = sorted({min(c, len(wire)) for c in cuts})
        output = b""
        for a, b in zip([0] + points, points + [len(wire)]):
            output += smtp.send(wire[a:b])
        self.assertEqual(replyCount(output), 1)
        self.assertTrue(output.startswith(b"250 2.0.0 Ok: stored as "), output)
        new = os.path.join(root, "example.com", "new")
        [name] = os.listdir(new)
        with open(os.path.join(new, name), "rb") as f:
            stored = f.read().split(b"\n", 5)[5]
        self.assertEqual(stored, body.replace(b"\r\n", b"\n"))
        smtp.close()
