# -*- test-case-name: harbor.test.test_framing -*-
"""
SMTP framing without I/O: splitting what a client sends into command lines
and message data.

Twisted's C{LineOnlyReceiver} cannot pause, buffers a line without bound and
hands DATA to the application one line at a time.  L{InputBuffer} holds the
bytes the protocol has not consumed yet, so command processing can stop while
a reply is pending (pipelining) and carry on later, and it never holds more
than one command line's worth of garbage.  L{DataDecoder} turns a DATA body
into the bytes to store in large pieces: it finds the C{<CRLF>.<CRLF>}
terminator, undoes dot-stuffing and converts line ends to the LF a Maildir
file has, in constant memory for lines of any length.
"""

from __future__ import annotations

from attrs import frozen

CRLF = b"\r\n"

# RFC 5321 section 4.5.3.1.4, raised for MAIL by the parameters we take:
# SIZE (RFC 1870: 26), BODY=8BITMIME (14), SMTPUTF8 (RFC 6531: 10).
MAX_COMMAND_LINE = 512
# AUTH= (RFC 4954: 500) too; an AUTH command line may be 12288 octets.
LINE_LIMITS = {b"MAIL": MAX_COMMAND_LINE + 26 + 14 + 10 + 500, b"AUTH": 12288 + 2}
# Nothing longer is ever buffered as one command line.
MAX_BUFFERED_LINE = 12288 + 2
_TERMINATOR = b".\r\n"


@frozen
class LineTooLong:
    """
    A command line was longer than allowed; its bytes were thrown away up
    to and including its CRLF.
    """


class InputBuffer:
    """
    Bytes received and not yet consumed by the protocol.
    """

    def __init__(self, maxLineLength: int) -> None:
        """
        @param maxLineLength: The longest command line, CRLF included, that
            L{nextLine} returns; longer ones become L{LineTooLong}.
        """
        self._buffer = bytearray()
        self._maxLineLength = maxLineLength
        self._discarding = False

    def __len__(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> None:
        """
        Append received bytes.
        """
        self._buffer += data

    def nextLine(self) -> bytes | LineTooLong | None:
        """
        Take the next command line, without its CRLF.

        @return: the line; L{LineTooLong} once for a line over the limit
            (which is then skipped up to its CRLF, however long it is); or
            L{None} if no whole line is buffered yet.
        """
        end = self._buffer.find(CRLF)
        if end == -1:
            if len(self._buffer) >= self._maxLineLength:
                # Keep a trailing CR: it may be the first half of the CRLF.
                keep = self._buffer.endswith(b"\r")
                del self._buffer[: len(self._buffer) - keep]
                if not self._discarding:
                    self._discarding = True
                    return LineTooLong()
            return None
        line = bytes(self._buffer[:end])
        del self._buffer[: end + 2]
        if self._discarding:
            # The tail of a line already reported as too long.
            self._discarding = False
            return self.nextLine()
        if end + 2 > self._maxLineLength:
            return LineTooLong()
        return line

    def take(self, count: int) -> bytes:
        """
        Take at most C{count} buffered bytes, for a BDAT chunk.
        """
        data = bytes(self._buffer[:count])
        del self._buffer[:count]
        return data

    def takeAll(self) -> bytes:
        """
        Take every buffered byte, for the message data that follows DATA.
        """
        data = bytes(self._buffer)
        self._buffer.clear()
        return data

    def discard(self) -> int:
        """
        Throw away every buffered byte, as after STARTTLS.

        @return: how many bytes were thrown away.
        """
        count = len(self._buffer)
        self._buffer.clear()
        return count


class DataDecoder:
    """
    Decodes one DATA body, fed in arbitrary pieces.

    Only a line consisting of a single dot ends the body: C{<LF>.<LF>},
    C{<CR>.<CR><LF>} and the like are content (RFC 5321 section 4.1.1.4,
    the SMTP smuggling class of CVE-2023-51764).
    """

    def __init__(self, detectBareNewline: bool = True) -> None:
        """
        @param detectBareNewline: Whether to look for bare LFs (see
            L{bareNewline}); a server that stores them as line ends anyway
            need not pay for the search.
        """
        self._pending = b""
        self._atLineStart = True
        self._detect = detectBareNewline
        self.done = False
        self.bareNewline = False

    def feed(self, data: bytes) -> tuple[bytes, bytes]:
        """
        Decode the next piece of the body.

        @return: the message bytes to store (dot-stuffing removed, CRLF
            turned into LF), and the bytes after the terminator (the next
            commands), which is C{b""} until L{done} is true.
        """
        if self.done:
            raise ValueError("feed after the end of the data")
        buf = self._pending + data
        self._pending = b""
        out: list[bytes] = []
        pos = 0
        end = len(buf)
        while pos < end:
            if self._atLineStart and buf[pos] == 0x2E:  # "."
                head = buf[pos : pos + 3]
                if head == _TERMINATOR:
                    self.done = True
                    return b"".join(out), buf[pos + 3 :]
                if _TERMINATOR.startswith(head):
                    # "." or ".\r" at the end of this piece: wait for more.
                    self._pending = head
                    break
                pos += 1  # undo dot-stuffing
                self._atLineStart = False
                continue
            dotLine = buf.find(b"\r\n.", pos)
            if dotLine == -1:
                stop = end - 1 if buf.endswith(b"\r") else end
                if stop > pos:
                    chunk = buf[pos:stop]
                    out.append(self._toLF(chunk))
                    self._atLineStart = chunk.endswith(CRLF)
                self._pending = buf[stop:]
                break
            out.append(self._toLF(buf[pos:dotLine]) + b"\n")
            pos = dotLine + 2
            self._atLineStart = True
        return b"".join(out), b""

    def _toLF(self, chunk: bytes) -> bytes:
        converted, bare = _toLF(chunk, self._detect and not self.bareNewline)
        self.bareNewline |= bare
        return converted


class ChunkDecoder:
    """
    Decodes the chunks of one BDAT transaction (RFC 3030): no dot-stuffing
    and no terminator, just CRLF turned into LF, including a CRLF split
    across two chunks.
    """

    def __init__(self, detectBareNewline: bool = True) -> None:
        """
        @param detectBareNewline: As for L{DataDecoder}.
        """
        self._pendingCR = False
        self._detect = detectBareNewline
        self.bareNewline = False

    def feed(self, data: bytes) -> bytes:
        """
        Decode the next bytes of the message.
        """
        if self._pendingCR:
            data = b"\r" + data
            self._pendingCR = False
        if data.endswith(b"\r"):
            data = data[:-1]
            self._pendingCR = True
        converted, bare = _toLF(data, self._detect and not self.bareNewline)
        self.bareNewline |= bare
        return converted

    def finish(self) -> bytes:
        """
        The end of the last chunk: a CR held back is content after all.
        """
        if self._pendingCR:
            self._pendingCR = False
            return b"\r"
        return b""


def _toLF(data: bytes, detect: bool) -> tuple[bytes, bool]:
    """
    C{data} with each CRLF turned into LF, and, if asked, whether it has a
    bare LF: one that was not part of a CRLF, which is exactly when the
    number of LFs exceeds the number of CRLFs replaced.
    """
    converted = data.replace(CRLF, b"\n")
    if not detect:
        return converted, False
    return converted, converted.count(b"\n") != len(data) - len(converted)
