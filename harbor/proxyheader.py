# -*- test-case-name: harbor.test.test_proxyheader -*-
"""
The PROXY protocol header (versions 1 and 2) that a load balancer such as
HAProxy sends before the client's own bytes, read incrementally and
without I/O.

The header says who the client really is.  It is believed only from a
trusted proxy (L{harbor.smtp._proxy} checks C{trusted_proxies} before a
byte is read); this module only reads it, strictly, and says what is wrong
with one that is not a header: the reason ends up in the one log line of
a refused connection.

See U{https://www.haproxy.org/download/2.6/doc/proxy-protocol.txt}.
"""

from __future__ import annotations

import ipaddress
import struct

from attrs import frozen

V1_PREFIX = b"PROXY "
# Version 1: the longest header, with its CRLF (section 2.1).
V1_MAX_LENGTH = 107
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
# Version 2: signature, version and command, family, length.
V2_FIXED_LENGTH = 16
# The most address and TLV bytes accepted after the fixed part: HAProxy
# sends a few hundred at most (SSL and unique-id TLVs); the protocol's own
# limit of 65535 would let a proxy make us buffer 64 KiB per connection.
V2_MAX_PAYLOAD = 2048

_V2_LOCAL = 0x0
_V2_PROXY = 0x1
_V2_UNSPEC = 0x00
_V2_TCP4 = 0x11
_V2_TCP6 = 0x21
_V2_ADDRESS_LENGTHS = {_V2_TCP4: 12, _V2_TCP6: 36}


class InvalidProxyHeader(ValueError):
    """
    The bytes are not a PROXY header this server accepts; the message says
    why, for the log.
    """


@frozen
class ProxyHeader:
    """
    What a PROXY header said.

    @ivar version: 1 or 2.
    @ivar source: The client's address and port, or L{None} when the
        header does not carry one (v1 C{UNKNOWN}, v2 C{LOCAL}, as in
        the balancer's own health checks): then the connection is the
        proxy's own.
    @ivar destination: The address and port the client connected to, or
        L{None} likewise.
    """

    version: int
    source: tuple[str, int] | None = None
    destination: tuple[str, int] | None = None


def _v1Address(text: bytes, family: type[ipaddress.IPv4Address | ipaddress.IPv6Address]) -> str:
    try:
        address = ipaddress.ip_address(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise InvalidProxyHeader(f"bad address {text[:45]!r}") from None
    if not isinstance(address, family):
        raise InvalidProxyHeader(f"address {text[:45]!r} does not match the protocol")
    return str(address)


def _v1Port(text: bytes) -> int:
    # Decimal without a sign or leading zeros (section 2.1).
    if not text.isdigit() or (len(text) > 1 and text.startswith(b"0")) or int(text) > 65535:
        raise InvalidProxyHeader(f"bad port {text[:8]!r}")
    return int(text)


def parseV1(line: bytes) -> ProxyHeader:
    """
    Read a version 1 header line, without its CRLF.

    @raise InvalidProxyHeader: for anything but C{PROXY TCP4|TCP6 src dst
        sport dport} or C{PROXY UNKNOWN ...}.
    """
    fields = line.split(b" ")
    if len(fields) >= 2 and fields[1] == b"UNKNOWN":
        return ProxyHeader(1)
    if len(fields) != 6 or fields[0] != b"PROXY":
        raise InvalidProxyHeader("malformed version 1 header")
    family: type[ipaddress.IPv4Address | ipaddress.IPv6Address]
    if fields[1] == b"TCP4":
        family = ipaddress.IPv4Address
    elif fields[1] == b"TCP6":
        family = ipaddress.IPv6Address
    else:
        raise InvalidProxyHeader(f"unknown protocol {fields[1][:8]!r}")
    source = (_v1Address(fields[2], family), _v1Port(fields[4]))
    destination = (_v1Address(fields[3], family), _v1Port(fields[5]))
    return ProxyHeader(1, source, destination)


def parseV2(header: bytes) -> ProxyHeader:
    """
    Read a complete version 2 header: the fixed part and its payload.
    TLVs after the addresses are skipped.

    @raise InvalidProxyHeader: for a version other than 2, a command other
        than C{LOCAL} and C{PROXY}, a C{PROXY} over anything but TCP (or
        C{UNSPEC}), or addresses shorter than their family's.
    """
    versionCommand, family, length = struct.unpack("!BBH", header[12:16])
    if versionCommand >> 4 != 2:
        raise InvalidProxyHeader(f"unknown version {versionCommand >> 4}")
    command = versionCommand & 0x0F
    if command == _V2_LOCAL:
        return ProxyHeader(2)
    if command != _V2_PROXY:
        raise InvalidProxyHeader(f"unknown command {command}")
    if family == _V2_UNSPEC:
        return ProxyHeader(2)
    needed = _V2_ADDRESS_LENGTHS.get(family)
    if needed is None:
        raise InvalidProxyHeader(f"not a TCP connection (family 0x{family:02x})")
    if length < needed:
        raise InvalidProxyHeader("addresses cut short")
    payload = header[16 : 16 + needed]
    size = 4 if family == _V2_TCP4 else 16
    source = ipaddress.ip_address(payload[:size])
    destination = ipaddress.ip_address(payload[size : 2 * size])
    sourcePort, destinationPort = struct.unpack("!HH", payload[2 * size : 2 * size + 4])
    return ProxyHeader(2, (str(source), sourcePort), (str(destination), destinationPort))


class ProxyHeaderParser:
    """
    Reads one PROXY header, v1 or v2 (told apart by their first bytes),
    from bytes as they arrive, however they are split.

    A stream that cannot be the start of a header is refused as soon as
    that is certain, without waiting for more.
    """

    def __init__(self) -> None:
        self._buffer = b""

    @property
    def received(self) -> int:
        """
        How many bytes are buffered, waiting for the rest of the header.
        """
        return len(self._buffer)

    def feed(self, data: bytes) -> tuple[ProxyHeader, bytes] | None:
        """
        Take more bytes.

        @return: L{None} while the header is incomplete; then the header
            and the bytes that followed it, which are the client's own.
        @raise InvalidProxyHeader: as soon as the bytes cannot be a header.
        """
        buffer = self._buffer = self._buffer + data
        if buffer[:1] == V2_SIGNATURE[:1]:
            return self._feedV2(buffer)
        if buffer[:1] == V1_PREFIX[:1]:
            return self._feedV1(buffer)
        if not buffer:
            return None
        raise InvalidProxyHeader(f"no PROXY header: the stream starts {buffer[:16]!r}")

    def _feedV1(self, buffer: bytes) -> tuple[ProxyHeader, bytes] | None:
        start = buffer[: len(V1_PREFIX)]
        if not V1_PREFIX.startswith(start):
            raise InvalidProxyHeader(f"no PROXY header: the stream starts {buffer[:16]!r}")
        end = buffer.find(b"\r\n", 0, V1_MAX_LENGTH)
        if end < 0:
            if len(buffer) >= V1_MAX_LENGTH or b"\n" in buffer:
                raise InvalidProxyHeader("version 1 header without its CRLF in 107 bytes")
            return None
        self._buffer = b""
        return parseV1(buffer[:end]), buffer[end + 2 :]

    def _feedV2(self, buffer: bytes) -> tuple[ProxyHeader, bytes] | None:
        if not buffer.startswith(V2_SIGNATURE[: len(buffer)]):
            raise InvalidProxyHeader(f"no PROXY header: the stream starts {buffer[:16]!r}")
        if len(buffer) < V2_FIXED_LENGTH:
            return None
        (length,) = struct.unpack("!H", buffer[14:16])
        if length > V2_MAX_PAYLOAD:
            raise InvalidProxyHeader(f"version 2 header of {length} bytes, over {V2_MAX_PAYLOAD}")
        end = V2_FIXED_LENGTH + length
        if len(buffer) < end:
            # The version is known now: refuse a wrong one without waiting.
            if buffer[12] >> 4 != 2:
                raise InvalidProxyHeader(f"unknown version {buffer[12] >> 4}")
            return None
        self._buffer = b""
        return parseV2(buffer[:end]), buffer[end:]
