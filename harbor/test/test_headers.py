"""
Tests for L{harbor.store.headers}: header blocks and values, decoded
tolerantly.
"""

from __future__ import annotations

import email.policy
import io
from email.message import EmailMessage
from email.parser import BytesHeaderParser

from twisted.trial.unittest import SynchronousTestCase

from harbor.store.headers import (
    cleanText,
    decodeHeader,
    headerFields,
    headerValues,
    readHeaderBlock,
)
from harbor.store.mime import cleanBody
from harbor.test.test_cli import messageBytes


class ReadHeaderBlockTests(SynchronousTestCase):
    """
    Tests for L{readHeaderBlock}.
    """

    def test_stopsAtBlankLine(self) -> None:
        """
        The header block ends at the first blank line; of a large body no
        more than one read's worth is read.
        """
        headers = messageBytes(body=None)
        f = io.BytesIO(headers + b"\n" + b"x" * (4 * 1024 * 1024))

        block = readHeaderBlock(f)

        self.assertEqual(block, headers)
        self.assertLessEqual(f.tell(), 8192)

    def test_crlf(self) -> None:
        """
        A CRLF blank line ends the block too.
        """
        f = io.BytesIO(b"Subject: a\r\nX: b\r\n\r\nbody\n\nmore\n")

        self.assertEqual(readHeaderBlock(f), b"Subject: a\r\nX: b\r\n")

    def test_blankLineAcrossReads(self) -> None:
        """
        A blank line split between two reads is found.
        """
        headers = b"X: " + b"y" * 8188 + b"\n"
        self.assertEqual(len(headers), 8192)

        self.assertEqual(readHeaderBlock(io.BytesIO(headers + b"\nbody")), headers)

    def test_noHeaders(self) -> None:
        """
        A message starting with a blank line has an empty header block.
        """
        self.assertEqual(readHeaderBlock(io.BytesIO(b"\nbody\n")), b"")

    def test_limit(self) -> None:
        """
        A file without a blank line is read no further than the limit.
        """
        f = io.BytesIO(b"X-Long: " + b"y" * 10000)

        block = readHeaderBlock(f, limit=1000)

        self.assertEqual((len(block), f.tell()), (1000, 1000))


class HeaderFieldsTests(SynchronousTestCase):
    """
    Tests for L{headerFields} and L{decodeHeader}.
    """

    def test_firstUnfolded(self) -> None:
        """
        The first occurrence of each wanted field is returned, unfolded,
        whatever the case of its name; others are not.
        """
        block = (
            b"delivered-to: a@example.com\n"
            b"Subject: one\n\ttwo\r\n"
            b"Delivered-To: b@example.com\n"
            b"X-Other: x\n"
        )

        fields = headerFields(block, ["Delivered-To", "Subject", "Return-Path"])

        self.assertEqual(fields, {"Delivered-To": "a@example.com", "Subject": "one\ttwo"})

    def test_continuationIsNotAField(self) -> None:
        """
        A continuation line that looks like a field belongs to the field
        before it; an mbox C{From } line is no field.
        """
        block = b"From sender Fri Nov 22\nX-Note: a\n Subject: fake\nSubject: real\nFrom: me\n"

        fields = headerFields(block, ["subject", "From"])

        self.assertEqual(fields, {"subject": "real", "From": "me"})

    def test_stopsAtNonHeaderLine(self) -> None:
        """
        Like the C{email} package, the first line that is not a header ends
        the headers.
        """
        fields = headerFields(b"X: 1\nnot a header\nSubject: hidden\n", ["Subject"])

        self.assertEqual(fields, {})

    def test_undecodableBytes(self) -> None:
        """
        Bytes that are not UTF-8 are kept as surrogate escapes; UTF-8 is
        decoded.
        """
        fields = headerFields(
            "Subject: caf\u00e9 \xff\n".encode("utf-8").replace(b"\xc3\xbf", b"\xff"), ["Subject"]
        )

        self.assertEqual(fields, {"Subject": "caf\u00e9 \udcff"})

    def test_decodeEncodedWords(self) -> None:
        """
        Encoded words are decoded as the C{email} package decodes them:
        adjacent ones joined, an unknown charset read as ASCII.
        """
        cases = {
            "=?utf-8?q?a?= =?utf-8?b?w6k=?= x": "a\u00e9 x",
            "=?x-unknown?q?abc?=": "abc",
            "plain": "plain",
            "back\\slash =?utf-8?q?\\u0041?=": "back\\slash \\u0041",
        }
        for raw, decoded in cases.items():
            self.assertEqual(decodeHeader("Subject", raw), decoded, raw)

    def test_decodeMalformed(self) -> None:
        """
        Malformed encoded words never raise; bad bytes become U+FFFD once
        cleaned.
        """
        for raw in ["=?utf-8?b?!!!?=", "=?utf-8?q?=FF?=", "=?", "=?utf-8?q?", "=??="]:
            cleanText(decodeHeader("Subject", raw))
        self.assertEqual(cleanText(decodeHeader("Subject", "=?utf-8?q?=FF?=")), "\ufffd")


class CleanTextTests(SynchronousTestCase):
    """
    Tests for L{cleanText} and L{cleanBody}.
    """

    def test_cleanText(self) -> None:
        """
        Control and direction characters go, white space becomes single
        spaces, surrogate escapes become U+FFFD.
        """
        self.assertEqual(
            cleanText("a\tb\r\n c\x1b[0m\u202eevil \udcff\u00a0end "), "a b c[0mevil \ufffd end"
        )

    def test_cleanBody(self) -> None:
        """
        Line ends are kept (CRLF and CR made LF) and so are tabs; other
        control characters go.
        """
        self.assertEqual(cleanBody("a\r\nb\rc\n\td\x07\x1b\u202e\udcff"), "a\nb\nc\n\td\ufffd")


class HeaderValuesTests(SynchronousTestCase):
    """
    Tests for L{headerValues}, which the server's folder rules and
    C{mailharbor show} both read headers with.
    """

    def headers(self, block: bytes) -> EmailMessage:
        """
        Parse C{block} as the server parses a message's header block.
        """
        return BytesHeaderParser(policy=email.policy.default).parsebytes(block)

    def test_decoded(self) -> None:
        """
        Every value of the field, in any case, is decoded in order.
        """
        headers = self.headers(b"To: =?utf-8?q?caf=C3=A9?= <a@b>\nSubject: x\nto: c@d\n\n")
        self.assertEqual(headerValues(headers, "TO"), ["caf\u00e9 <a@b>", "c@d"])
        self.assertEqual(headerValues(headers, "Cc"), [])

    def test_unparseableKeptAsReceived(self) -> None:
        """
        A value the parser raises on (C{From: <}) is given as received.
        """
        headers = self.headers(b"From: <\n\n")
        self.assertEqual(headerValues(headers, "From"), ["<"])
        self.assertEqual(headerValues(headers, "From", allOrNone=True), ["<"])

    def test_allOrNone(self) -> None:
        """
        By default only the value the parser raises on is left as received;
        with C{allOrNone} every value of that field is.
        """
        headers = self.headers(b"From: <\nFrom: =?utf-8?q?caf=C3=A9?= <a@b>\n\n")
        self.assertEqual(headerValues(headers, "From"), ["<", "caf\u00e9 <a@b>"])
        self.assertEqual(
            headerValues(headers, "From", allOrNone=True), ["<", "=?utf-8?q?caf=C3=A9?= <a@b>"]
        )
