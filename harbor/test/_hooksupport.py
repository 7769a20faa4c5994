# -*- test-case-name: harbor.test.test_hookevents -*-
"""
Test helpers shared by the tests of L{harbor.hooks}, here and in the
top-level C{tests/}: a stored message and its L{NewMessage}, as the
delivery would describe it.
"""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from harbor.hooks.events import NewMessage

NOW = 1_700_000_000.0
MESSAGE = (
    b"Return-Path: <sender@example.org>\n"
    b"Delivered-To: alice@example.com\n"
    b"From: Sender <sender@example.org>\n"
    b"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\n"
    b"\n"
    b"Hello Alice,\n\x00\xff binary-ish bytes survive\n"
)


def storeMessage(testCase: SynchronousTestCase, data: bytes = MESSAGE, count: int = 1) -> NewMessage:
    """
    Put a message in a fresh Maildir's C{new/} as the server would, and
    describe it as the delivery would.
    """
    root = os.path.abspath(testCase.mktemp())
    maildir = os.path.join(root, "example.com")
    for sub in ("tmp", "new", "cur"):
        os.makedirs(os.path.join(maildir, sub))
    messageID = f"{int(NOW)}.M{count}P4242Q{count}.mx.example.com"
    path = os.path.join(maildir, "new", f"{messageID},S={len(data)}")
    with open(path, "wb") as f:
        f.write(data)
    return NewMessage(
        sender="sender@example.org",
        recipient="alice@example.com",
        user=None,
        client="192.0.2.7",
        path=path,
        id=messageID,
    )
