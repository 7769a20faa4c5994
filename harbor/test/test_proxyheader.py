"""
Tests for L{harbor.proxyheader}: PROXY protocol v1 and v2 headers, read
incrementally, without I/O.
"""

from __future__ import annotations

import socket
import struct

from twisted.trial.unittest import SynchronousTestCase

from harbor.proxyheader import (
    V2_SIGNATURE,
    InvalidProxyHeader,
    ProxyHeader,
    ProxyHeaderParser,
)

V1 = b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 25\r\n"


def v2(
    command: int = 1, family: int = 0x11, addresses: bytes | None = None, tlvs: bytes = b"", version: int = 2
) -> bytes:
    """
    A version 2 header, by default PROXY TCP4 from 192.0.2.7:40000 to
    198.51.100.1:25.
    """
    if addresses is None:
        addresses = (
            socket.inet_pton(socket.AF_INET, "192.0.2.7")
            + socket.inet_pton(socket.AF_INET, "198.51.100.1")
            + struct.pack("!HH", 40000, 25)
        )
    payload = addresses + tlvs
    return V2_SIGNATURE + bytes([version << 4 | command, family]) + struct.pack("!H", len(payload)) + payload


def feedAll(data: bytes, step: int = 0) -> tuple[ProxyHeader, bytes] | None:
    """
    Feed C{data} to a new parser, in pieces of C{step} bytes (all at once
    for 0), and return what the last piece gave.
    """
    parser = ProxyHeaderParser()
    if not step:
        return parser.feed(data)
    result = None
    for i in range(0, len(data), step):
        result = parser.feed(data[i : i + step])
        if result is not None:
            rest = data[i + step :]
            return result[0], result[1] + rest
    return result


TCP4 = ProxyHeader(1, ("192.0.2.7", 40000), ("198.51.100.1", 25))


class V1Tests(SynchronousTestCase):
    """
    The human-readable header of version 1.
    """

    def test_tcp4(self) -> None:
        """
        A TCP4 header gives both addresses, and the bytes after it are the
        client's.
        """
        self.assertEqual(feedAll(V1 + b"EHLO x\r\n"), (TCP4, b"EHLO x\r\n"))

    def test_byteByByte(self) -> None:
        """
        A header split into single bytes is read once it is complete.
        """
        self.assertEqual(feedAll(V1 + b"QUIT\r\n", 1), (TCP4, b"QUIT\r\n"))

    def test_incomplete(self) -> None:
        """
        Nothing is decided before the CRLF.
        """
        self.assertIsNone(feedAll(V1[:-2]))

    def test_tcp6(self) -> None:
        """
        A TCP6 header gives IPv6 addresses in their normal form.
        """
        header = b"PROXY TCP6 2001:DB8::7 2001:db8::1 40000 25\r\n"
        self.assertEqual(
            feedAll(header), (ProxyHeader(1, ("2001:db8::7", 40000), ("2001:db8::1", 25)), b"")
        )

    def test_unknown(self) -> None:
        """
        UNKNOWN carries no address: the connection is the proxy's own.
        """
        self.assertEqual(feedAll(b"PROXY UNKNOWN\r\n"), (ProxyHeader(1), b""))
        self.assertEqual(feedAll(b"PROXY UNKNOWN ff:: ::1 1 2\r\n"), (ProxyHeader(1), b""))

    def test_malformed(self) -> None:
        """
        Wrong protocols, addresses, families, ports and field counts are
        refused, saying what is wrong.
        """
        for header, reason in [
            (b"PROXY TCP5 192.0.2.7 198.51.100.1 40000 25\r\n", "unknown protocol"),
            (b"PROXY TCP4 192.0.2.700 198.51.100.1 40000 25\r\n", "bad address"),
            (b"PROXY TCP4 2001:db8::7 198.51.100.1 40000 25\r\n", "does not match"),
            (b"PROXY TCP4 192.0.2.7 198.51.100.1 65536 25\r\n", "bad port"),
            (b"PROXY TCP4 192.0.2.7 198.51.100.1 040000 25\r\n", "bad port"),
            (b"PROXY TCP4 192.0.2.7 198.51.100.1 -1 25\r\n", "bad port"),
            (b"PROXY TCP4 192.0.2.7 198.51.100.1 40000\r\n", "malformed"),
            (b"PROXY  TCP4 192.0.2.7 198.51.100.1 40000 25\r\n", "malformed"),
        ]:
            with self.assertRaises(InvalidProxyHeader) as caught:
                feedAll(header)
            self.assertIn(reason, str(caught.exception), header)

    def test_tooLong(self) -> None:
        """
        A line with no CRLF in 107 bytes is refused without waiting for
        more.
        """
        with self.assertRaises(InvalidProxyHeader) as caught:
            feedAll(b"PROXY TCP4 " + b"1" * 96)
        self.assertIn("107 bytes", str(caught.exception))
        self.assertIsNone(feedAll(b"PROXY TCP4 " + b"1" * 95))

    def test_bareLF(self) -> None:
        """
        A header ended by a bare LF is refused.
        """
        with self.assertRaises(InvalidProxyHeader):
            feedAll(V1[:-2] + b"\n")


class NotAHeaderTests(SynchronousTestCase):
    """
    Streams that are not a PROXY header at all.
    """

    def test_smtpFirst(self) -> None:
        """
        A client speaking SMTP at once is refused on its first byte that
        cannot start a header, quoting what it sent.
        """
        with self.assertRaises(InvalidProxyHeader) as caught:
            feedAll(b"EHLO client.example\r\n")
        self.assertIn("no PROXY header", str(caught.exception))
        self.assertIn("EHLO", str(caught.exception))
        with self.assertRaises(InvalidProxyHeader):
            feedAll(b"PROXX")
        with self.assertRaises(InvalidProxyHeader):
            feedAll(b"\r\n\r\nX")

    def test_nothing(self) -> None:
        """
        No bytes decide nothing.
        """
        self.assertIsNone(feedAll(b""))
        self.assertEqual(ProxyHeaderParser().received, 0)


class V2Tests(SynchronousTestCase):
    """
    The binary header of version 2.
    """

    def test_tcp4(self) -> None:
        """
        PROXY over TCP4 gives both addresses; the client's bytes follow.
        """
        self.assertEqual(
            feedAll(v2() + b"EHLO x\r\n"),
            (ProxyHeader(2, ("192.0.2.7", 40000), ("198.51.100.1", 25)), b"EHLO x\r\n"),
        )

    def test_byteByByte(self) -> None:
        """
        A header split into single bytes, TLVs and all, is read once
        complete.
        """
        header = v2(tlvs=b"\x04\x00\x03abc")
        self.assertEqual(feedAll(header + b"QUIT\r\n", 1)[1], b"QUIT\r\n")  # type: ignore[index]

    def test_tcp6(self) -> None:
        """
        PROXY over TCP6 gives IPv6 addresses.
        """
        addresses = (
            socket.inet_pton(socket.AF_INET6, "2001:db8::7")
            + socket.inet_pton(socket.AF_INET6, "2001:db8::1")
            + struct.pack("!HH", 40000, 25)
        )
        self.assertEqual(
            feedAll(v2(family=0x21, addresses=addresses)),
            (ProxyHeader(2, ("2001:db8::7", 40000), ("2001:db8::1", 25)), b""),
        )

    def test_local(self) -> None:
        """
        LOCAL (a health check) and PROXY over UNSPEC carry no address.
        """
        self.assertEqual(feedAll(v2(command=0, family=0, addresses=b"")), (ProxyHeader(2), b""))
        self.assertEqual(feedAll(v2(family=0, addresses=b"")), (ProxyHeader(2), b""))

    def test_refused(self) -> None:
        """
        Other versions, commands and families, short addresses and huge
        headers are refused, saying why.
        """
        for header, reason in [
            (v2(version=3), "unknown version"),
            (v2(command=2), "unknown command"),
            (v2(family=0x12), "not a TCP connection"),
            (v2(family=0x31, addresses=b"x" * 216), "not a TCP connection"),
            (v2(addresses=b"\x01\x02"), "cut short"),
            (v2(tlvs=b"x" * 3000), "over 2048"),
        ]:
            with self.assertRaises(InvalidProxyHeader) as caught:
                feedAll(header)
            self.assertIn(reason, str(caught.exception))

    def test_wrongVersionEarly(self) -> None:
        """
        A wrong version is refused from the fixed part, without waiting
        for the payload it announces.
        """
        with self.assertRaises(InvalidProxyHeader):
            feedAll(v2(version=1)[:16])
        self.assertIsNone(feedAll(v2()[:16]))
