"""
Tests for L{harbor.smtp._framing}.
"""

from twisted.trial.unittest import SynchronousTestCase

from hypothesis import given
from hypothesis import strategies as st

from harbor.smtp._framing import ChunkDecoder, DataDecoder, InputBuffer, LineTooLong


def decodeAll(pieces: list[bytes]) -> tuple[bytes, bytes, bool]:
    """
    Feed C{pieces} to a new decoder; return what it stored, what followed
    the end of data, and whether it saw the end.
    """
    decoder = DataDecoder()
    out = []
    rest = b""
    for piece in pieces:
        if decoder.done:
            rest += piece
            continue
        body, after = decoder.feed(piece)
        out.append(body)
        rest += after
    return b"".join(out), rest, decoder.done


def dotStuff(body: bytes) -> bytes:
    """
    Encode C{body} (CRLF lines) for DATA, as RFC 5321 section 4.5.2 says.
    """
    lines = body.split(b"\r\n")
    return b"\r\n".join(b"." + line if line.startswith(b".") else line for line in lines)


class InputBufferTests(SynchronousTestCase):
    """
    Tests for L{InputBuffer}.
    """

    def test_lines(self) -> None:
        """
        Lines come out one at a time without their CRLF; a partial line waits.
        """
        buffer = InputBuffer(512)
        buffer.feed(b"EHLO a\r\nNOOP\r\nQU")
        self.assertEqual(buffer.nextLine(), b"EHLO a")
        self.assertEqual(buffer.nextLine(), b"NOOP")
        self.assertIsNone(buffer.nextLine())
        buffer.feed(b"IT\r\n")
        self.assertEqual(buffer.nextLine(), b"QUIT")

    def test_bareLFIsNotALineEnd(self) -> None:
        """
        Only CRLF ends a command line.
        """
        buffer = InputBuffer(512)
        buffer.feed(b"NOOP\nRSET\r\n")
        self.assertEqual(buffer.nextLine(), b"NOOP\nRSET")

    def test_tooLongWithCRLF(self) -> None:
        """
        A complete line over the limit is reported once and dropped; the next
        line is intact.
        """
        buffer = InputBuffer(10)
        buffer.feed(b"x" * 20 + b"\r\nNOOP\r\n")
        self.assertEqual(buffer.nextLine(), LineTooLong())
        self.assertEqual(buffer.nextLine(), b"NOOP")

    def test_tooLongUnterminatedStaysBounded(self) -> None:
        """
        Endless bytes without CRLF are reported once and thrown away as they
        come: the buffer never grows past the limit.
        """
        buffer = InputBuffer(10)
        reports = []
        for i in range(100):
            buffer.feed(b"y" * 7)
            reports.append(buffer.nextLine())
            self.assertLessEqual(len(buffer), 10)
        self.assertEqual([r for r in reports if r is not None], [LineTooLong()])
        buffer.feed(b"tail\r\nNOOP\r\n")
        self.assertEqual(buffer.nextLine(), b"NOOP")

    def test_tooLongSplitCRLF(self) -> None:
        """
        A CR kept at the cut still pairs with the LF that comes next.
        """
        buffer = InputBuffer(6)
        buffer.feed(b"abcdefg\r")
        self.assertEqual(buffer.nextLine(), LineTooLong())
        buffer.feed(b"\nNOOP\r\n")
        self.assertEqual(buffer.nextLine(), b"NOOP")

    def test_takeAllAndDiscard(self) -> None:
        """
        takeAll and discard empty the buffer.
        """
        buffer = InputBuffer(512)
        buffer.feed(b"abc")
        self.assertEqual(buffer.takeAll(), b"abc")
        buffer.feed(b"de")
        self.assertEqual(buffer.discard(), 2)
        self.assertEqual(len(buffer), 0)


class DataDecoderTests(SynchronousTestCase):
    """
    Tests for L{DataDecoder}.
    """

    def test_simple(self) -> None:
        """
        CRLF becomes LF and the terminator ends the data; what follows is
        returned for the command parser.
        """
        self.assertEqual(
            decodeAll([b"Subject: x\r\n\r\nbody\r\n.\r\nQUIT\r\n"]),
            (b"Subject: x\n\nbody\n", b"QUIT\r\n", True),
        )

    def test_emptyBody(self) -> None:
        """
        A terminator straight after DATA is an empty message.
        """
        self.assertEqual(decodeAll([b".\r\n"]), (b"", b"", True))

    def test_dotStuffing(self) -> None:
        """
        A leading dot is removed from each line, including the first.
        """
        self.assertEqual(
            decodeAll([b"..first\r\nmid\r\n..\r\n...x\r\n.\r\n"]),
            (b".first\nmid\n.\n..x\n", b"", True),
        )

    def test_smugglingSequencesAreContent(self) -> None:
        """
        LF.LF, LF.CRLF, CR.CRLF and CR.CR do not end the data.
        """
        body, _rest, done = decodeAll([b"a\n.\nb\n.\r\nc\r.\r\nd\r.\re\r\n.\r\n"])
        self.assertTrue(done)
        self.assertEqual(body, b"a\n.\nb\n.\nc\r.\nd\r.\re\n")

    def test_terminatorSplitAcrossPieces(self) -> None:
        """
        The terminator is found whatever the piece boundaries.
        """
        data = b"line\r\n..dot\r\n.\r\nNOOP\r\n"
        for cut in range(1, len(data)):
            self.assertEqual(
                decodeAll([data[:cut], data[cut:]]),
                (b"line\n.dot\n", b"NOOP\r\n", True),
                cut,
            )

    def test_byteAtATime(self) -> None:
        """
        Pieces of one byte decode the same as one piece.
        """
        data = b"a\r\n.b\r\n\r\n.\r\n"
        self.assertEqual(decodeAll([bytes([c]) for c in data]), (b"a\nb\n\n", b"", True))

    def test_longLineConstantMemory(self) -> None:
        """
        A line of any length passes through without being held: each piece
        comes out at once, less at most a trailing CR.
        """
        decoder = DataDecoder()
        for i in range(100):
            body, _ = decoder.feed(b"x" * 65536)
            self.assertEqual(len(body), 65536)
        body, _ = decoder.feed(b"\r")
        self.assertEqual(body, b"")
        body, _ = decoder.feed(b"\n.\r\n")
        self.assertEqual(body, b"\n")
        self.assertTrue(decoder.done)

    def test_feedAfterDone(self) -> None:
        """
        Feeding a finished decoder is a programming error.
        """
        decoder = DataDecoder()
        decoder.feed(b".\r\n")
        self.assertRaises(ValueError, decoder.feed, b"x")

    @given(
        lines=st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\r\n", b"")), max_size=30),
        cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=6),
    )
    def test_roundTrip(self, lines: list[bytes], cuts: list[int]) -> None:
        """
        Any body, dot-stuffed and cut anywhere, decodes to itself with LF
        line ends, and nothing before the terminator ends it early.
        """
        body = b"".join(line + b"\r\n" for line in lines)
        wire = dotStuff(body) + b".\r\nNEXT"
        points = sorted({min(c, len(wire)) for c in cuts})
        pieces = [wire[a:b] for a, b in zip([0] + points, points + [len(wire)])]
        self.assertEqual(decodeAll(pieces), (body.replace(b"\r\n", b"\n"), b"NEXT", True))


class ChunkDecoderTests(SynchronousTestCase):
    """
    Tests for L{ChunkDecoder}.
    """

    def test_noDotHandling(self) -> None:
        """
        Dots are data in BDAT: nothing is unstuffed or taken as an end.
        """
        decoder = ChunkDecoder()
        self.assertEqual(decoder.feed(b"..a\r\n.\r\n"), b"..a\n.\n")

    def test_crlfAcrossChunks(self) -> None:
        """
        A CR at the end of one chunk pairs with an LF at the start of the
        next; a CR at the very end is kept.
        """
        decoder = ChunkDecoder()
        self.assertEqual(decoder.feed(b"a\r"), b"a")
        self.assertEqual(decoder.feed(b"\nb\r"), b"\nb")
        self.assertEqual(decoder.finish(), b"\r")
        self.assertFalse(decoder.bareNewline)

    def test_bareNewline(self) -> None:
        """
        A bare LF is noticed, in DATA and in BDAT.
        """
        chunks = ChunkDecoder()
        chunks.feed(b"a\r\nb\n")
        self.assertTrue(chunks.bareNewline)
        data = DataDecoder()
        data.feed(b"a\r\nb\r\n")
        self.assertFalse(data.bareNewline)
        data.feed(b"c\nd\r\n")
        self.assertTrue(data.bareNewline)

    def test_bareNewlineNotLookedFor(self) -> None:
        """
        Told not to look for bare LFs (they will be stored as line ends
        anyway), the decoders decode the same and never report one.
        """
        for detect in (True, False):
            chunks = ChunkDecoder(detectBareNewline=detect)
            data = DataDecoder(detectBareNewline=detect)
            self.assertEqual(chunks.feed(b"a\r\nb\nc"), b"a\nb\nc")
            self.assertEqual(data.feed(b"a\r\nb\nc\r\n.\r\n"), (b"a\nb\nc\n", b""))
            self.assertEqual((chunks.bareNewline, data.bareNewline), (detect, detect))
