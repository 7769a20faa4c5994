# -*- test-case-name: harbor.test.test_session -*-
"""
SMTP replies: the value, the fixed replies MailHarbor sends, and how a reply
becomes bytes on the wire.

No I/O and no Twisted, so that L{harbor.smtp._session} can decide and render
replies without a reactor.
"""

from __future__ import annotations

import re

from attrs import frozen

_ENHANCED = re.compile(r"^[245]\.\d{1,3}\.\d{1,3} ")


@frozen
class Reply:
    """
    An SMTP reply.

    @ivar code: The three-digit reply code.
    @ivar enhanced: The RFC 3463 code, sent to EHLO clients only.
    @ivar text: The text; a C{"\\n"} in it makes a multi-line reply.
    """

    code: int
    enhanced: str | None
    text: str


def render(reply: Reply, enhanced: bool) -> bytes:
    """
    The bytes of C{reply}: each line of a multi-line one carries the code
    and, if C{enhanced} (the client greeted with EHLO, RFC 2034), the
    enhanced status code.
    """
    lines = reply.text.split("\n")
    extra = f"{reply.enhanced} " if reply.enhanced and enhanced else ""
    last = len(lines) - 1
    return "".join(
        f"{reply.code}{'-' if i < last else ' '}{extra}{line}\r\n" for i, line in enumerate(lines)
    ).encode("utf-8", "replace")


def errorReply(code: int, resp: object, default: str) -> Reply:
    """
    The reply for an SMTP error's code and text, as Twisted's
    C{SMTPServerError} carries them (its callers put bytes or str in
    C{resp}).  Its enhanced code is the one the text starts with, if that
    is of the reply's class (2, 4 or 5), or else C{default} moved into that
    class: a 451 never carries a 5.x.x.
    """
    text = resp.decode("utf-8", "replace") if isinstance(resp, bytes) else str(resp)
    text = text.replace("\r", " ").replace("\n", " ")
    kind = str(code)[0]
    enhanced = kind + default[1:]
    if _ENHANCED.match(text) and text[0] == kind:
        enhanced, text = text.split(" ", 1)
    return Reply(code, enhanced, text)


def storageReply(noSpace: bool) -> Reply:
    """
    The reply to a message that could not be stored for a local reason: a
    temporary failure, so the sender retries; 452 for a full disk.
    """
    return NO_SPACE if noSpace else LOCAL_ERROR


SIZE_EXCEEDED = Reply(552, "5.3.4", "Error: message size exceeds fixed maximum message size")
BARE_NEWLINE = Reply(550, "5.5.2", "Error: bare <LF> received")
LOCAL_ERROR = Reply(451, "4.3.0", "Error: local error in processing, try again later")
NO_SPACE = Reply(452, "4.3.1", "Error: insufficient system storage")
AUTH_FAILED = Reply(535, "5.7.8", "Error: authentication failed")
