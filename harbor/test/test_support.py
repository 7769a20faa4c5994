"""
Tests for the shared test helpers in L{harbor.test._support} that other
tests' assertions rest on: the trace block parser and the file listing.
"""

import os

from twisted.trial.unittest import SynchronousTestCase

from harbor.test._support import files, traceHeaders

TRACE = (
    b"Return-Path: <s@x.org>\n"
    b"Delivered-To: a@example.com\n"
    b"Received: from client.example ([192.0.2.7])\n"
    b"\tby mx.example.com (MailHarbor) with ESMTP id 1700000000.M1P4242Q1.mx.example.com\n"
    b"\tfor <a@example.com>; Tue, 14 Nov 2023 22:13:20 +0000\n"
)
TLS_TRACE = TRACE.replace(
    b"([192.0.2.7])\n", b"([192.0.2.7])\n\t(using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384)\n"
)


class TraceHeadersTests(SynchronousTestCase):
    """
    Tests for L{traceHeaders}.
    """

    def test_plain(self) -> None:
        """
        The five lines MailHarbor writes without TLS are the block; the
        client's message is the rest.
        """
        self.assertEqual(traceHeaders(TRACE + b"Subject: x\n\nbody\n"), (TRACE, b"Subject: x\n\nbody\n"))

    def test_tls(self) -> None:
        """
        The TLS comment is one more continuation line of the C{Received:}
        field, and still part of the block.
        """
        self.assertEqual(traceHeaders(TLS_TRACE + b"Subject: x\n\nbody\n"), (TLS_TRACE, b"Subject: x\n\nbody\n"))

    def test_tags(self) -> None:
        """
        Tag lines named by the caller follow the C{Received:} field and
        belong to the block; a tag that is not there is an error.
        """
        stored = TRACE + b"X-Tag: yes\nSubject: x\n\nbody\n"
        self.assertEqual(traceHeaders(stored, [b"X-Tag: yes"]), (TRACE + b"X-Tag: yes\n", b"Subject: x\n\nbody\n"))
        self.assertEqual(traceHeaders(stored), (TRACE, b"X-Tag: yes\nSubject: x\n\nbody\n"))
        self.assertRaises(AssertionError, traceHeaders, stored, [b"X-Other: no"])

    def test_messageStartingWithWhiteSpace(self) -> None:
        """
        A message whose first line starts with white space, as a
        continuation line would, stays out of the block.
        """
        self.assertEqual(traceHeaders(TRACE + b"\tindented\n"), (TRACE, b"\tindented\n"))
        self.assertEqual(traceHeaders(TRACE + b" x; Tue, 14 Nov 2023 22:13:20 +0000\n")[0], TRACE)

    def test_emptyAndUnterminatedMessages(self) -> None:
        """
        An empty message leaves nothing; a last line without a line end is
        kept as it is.
        """
        self.assertEqual(traceHeaders(TRACE), (TRACE, b""))
        self.assertEqual(traceHeaders(TRACE + b"abcd"), (TRACE, b"abcd"))

    def test_notATraceBlock(self) -> None:
        """
        A copy that does not start with MailHarbor's block, or whose
        C{Received:} field never ends with a date, is an error, not a
        split at a guess.
        """
        self.assertRaises(AssertionError, traceHeaders, b"Subject: x\n\nbody\n")
        self.assertRaises(AssertionError, traceHeaders, TRACE.split(b";")[0] + b"\nSubject: x\n\n")
        self.assertRaises(AssertionError, traceHeaders, TRACE.rstrip(b"\n"))


class FilesTests(SynchronousTestCase):
    """
    Tests for L{files}.
    """

    def test_files(self) -> None:
        """
        Every file below the directory is listed by relative path, sorted;
        directories themselves are not.
        """
        root = self.mktemp()
        os.makedirs(os.path.join(root, "a", "new"))
        os.makedirs(os.path.join(root, "a", "tmp"))
        for path in (("a", "new", "2"), ("a", "new", "1"), ("b",)):
            with open(os.path.join(root, *path), "wb"):
                pass
        self.assertEqual(files(root), [os.path.join("a", "new", "1"), os.path.join("a", "new", "2"), "b"])
        self.assertEqual(files(root, "a", "new"), ["1", "2"])
        self.assertEqual(files(root, "a", "tmp"), [])

    def test_missing(self) -> None:
        """
        A directory that does not exist holds no files.
        """
        self.assertEqual(files(self.mktemp(), "new"), [])
