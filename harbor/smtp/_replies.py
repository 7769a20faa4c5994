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
    extra = f"{reply.enhanced} " if reply.enhanced and enhanced else ""
    if "\n" not in reply.text:
        # Nearly every reply: one line.
        return f"{reply.code} {extra}{reply.text}\r\n".encode("utf-8", "replace")
    lines = reply.text.split("\n")
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


# The replies whose text never changes, by what they answer.  Those that
# name the server (the greeting, 421s) are made where they are sent.

# Any command.
LINE_TOO_LONG = Reply(500, "5.5.2", "Error: line too long")
UNRECOGNIZED = Reply(500, "5.5.2", "Error: command not recognized")
# RFC 5321 section 3.1: after a 554 greeting, everything but QUIT.
NO_SERVICE = Reply(503, "5.5.1", "Error: no SMTP service here")
PROCESSING_ERROR = Reply(451, "4.3.0", "Error: local error in processing")
TALKED_TOO_SOON = Reply(554, "5.5.1", "Error: talking before the greeting")

# The commands that move no mail.
OK = Reply(250, "2.0.0", "Ok")
HELP = Reply(214, "2.0.0", "Commands: HELO EHLO STARTTLS AUTH MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP")
VRFY_SYNTAX = Reply(501, "5.5.4", "Syntax: VRFY address")
CANNOT_VERIFY = Reply(252, "2.0.0", "Send some mail, I will try my best")
EXPN_UNSUPPORTED = Reply(502, "5.5.1", "Error: EXPN is not supported")
BYE = Reply(221, "2.0.0", "Bye")

# STARTTLS (RFC 3207).
STARTTLS_SYNTAX = Reply(501, "5.5.4", "Syntax: STARTTLS")
TLS_ACTIVE = Reply(503, "5.5.1", "Error: TLS already active")
TLS_UNAVAILABLE = Reply(454, "4.7.0", "Error: TLS not available")
TLS_READY = Reply(220, "2.0.0", "Ready to start TLS")

# AUTH (RFC 4954).
AUTH_NOT_ENABLED = Reply(503, "5.5.1", "Error: authentication not enabled")
AUTH_NEEDS_TLS = Reply(538, "5.7.11", "Error: authentication requires TLS (STARTTLS first)")
EHLO_FIRST = Reply(503, "5.5.1", "Error: send EHLO first")
ALREADY_AUTHENTICATED = Reply(503, "5.5.1", "Error: already authenticated")
AUTH_IN_TRANSACTION = Reply(503, "5.5.1", "Error: MAIL transaction in progress")
AUTH_SYNTAX = Reply(501, "5.5.4", "Syntax: AUTH mechanism [initial-response]")
UNSUPPORTED_MECHANISM = Reply(504, "5.5.4", "Error: unsupported authentication mechanism")
# An empty challenge for PLAIN; LOGIN's ask, in base64, for "Username:"
# and "Password:".
PLAIN_CHALLENGE = Reply(334, None, "")
USERNAME_CHALLENGE = Reply(334, None, "VXNlcm5hbWU6")
PASSWORD_CHALLENGE = Reply(334, None, "UGFzc3dvcmQ6")
AUTH_CANCELLED = Reply(501, "5.0.0", "Error: authentication cancelled")
AUTH_OK = Reply(235, "2.7.0", "Authentication successful")
AUTH_FAILED = Reply(535, "5.7.8", "Error: authentication failed")
AUTH_UNAVAILABLE = Reply(454, "4.7.0", "Error: temporary authentication failure")

# MAIL.
NESTED_MAIL = Reply(503, "5.5.1", "Error: nested MAIL command")
TLS_REQUIRED = Reply(530, "5.7.0", "Must issue a STARTTLS command first")
AUTH_REQUIRED = Reply(530, "5.7.0", "Error: authentication required")
MAIL_SYNTAX = Reply(501, "5.5.4", "Syntax: MAIL FROM:<address>")
BAD_BODY = Reply(501, "5.5.4", "Error: BODY must be 7BIT or 8BITMIME")
BAD_SIZE = Reply(501, "5.5.4", "Error: bad SIZE parameter")
SMTPUTF8_VALUE = Reply(501, "5.5.4", "Error: SMTPUTF8 takes no value")
UNSUPPORTED_MAIL_PARAMETER = Reply(555, "5.5.4", "Error: unsupported MAIL parameter")
NEEDS_SMTPUTF8 = Reply(553, "5.6.7", "Error: non-ASCII address requires SMTPUTF8")
SENDER_OK = Reply(250, "2.1.0", "Ok")

# RCPT.
NEED_MAIL = Reply(503, "5.5.1", "Error: need MAIL command")
RCPT_AFTER_BDAT = Reply(503, "5.5.1", "Error: RCPT not allowed after BDAT")
RCPT_SYNTAX = Reply(501, "5.5.4", "Syntax: RCPT TO:<address>")
UNSUPPORTED_RCPT_PARAMETER = Reply(555, "5.5.4", "Error: unsupported RCPT parameter")
TOO_MANY_RECIPIENTS = Reply(452, "4.5.3", "Error: too many recipients")
RECIPIENT_OK = Reply(250, "2.1.5", "Ok")

# DATA and BDAT.
NO_VALID_RECIPIENTS = Reply(554, "5.5.1", "Error: no valid recipients")
DATA_AFTER_BDAT = Reply(503, "5.5.1", "Error: DATA not allowed after BDAT")
DATA_SYNTAX = Reply(501, "5.5.4", "Syntax: DATA")
START_DATA = Reply(354, None, "End data with <CR><LF>.<CR><LF>")
BDAT_SYNTAX = Reply(501, "5.5.4", "Syntax: BDAT count [LAST]")
SIZE_EXCEEDED = Reply(552, "5.3.4", "Error: message size exceeds fixed maximum message size")
BARE_NEWLINE = Reply(550, "5.5.2", "Error: bare <LF> received")

# A message that could not be stored here: temporary, so the sender retries.
LOCAL_ERROR = Reply(451, "4.3.0", "Error: local error in processing, try again later")
NO_SPACE = Reply(452, "4.3.1", "Error: insufficient system storage")
