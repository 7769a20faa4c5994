# -*- test-case-name: harbor.test.test_session -*-
"""
The arguments of HELO, MAIL, RCPT and BDAT, and the ESMTP parameters of
MAIL (RFC 1870 SIZE, RFC 6152 BODY, RFC 6531 SMTPUTF8, RFC 4954 AUTH).

Each function gives the parsed argument, or the reply that refuses it;
L{harbor.smtp._session} decides whether the command may come at all.  No
I/O and no Twisted.
"""

from __future__ import annotations

import re

from harbor.address import AddressSyntaxError, NeedsSMTPUTF8, parsePath
from harbor.smtp._events import MailFrom, RcptTo, RecipientRefused
from harbor.smtp._replies import (
    BAD_BODY,
    BAD_SIZE,
    MAIL_SYNTAX,
    NEEDS_SMTPUTF8,
    RCPT_SYNTAX,
    SIZE_EXCEEDED,
    SMTPUTF8_VALUE,
    UNSUPPORTED_MAIL_PARAMETER,
    UNSUPPORTED_RCPT_PARAMETER,
    Reply,
)

_MAIL = re.compile(rb"^FROM:\s*(<[^>]*>|[^\s<>]+)(?:\s+(.*))?$", re.IGNORECASE | re.DOTALL)
_RCPT = re.compile(rb"^TO:\s*(<[^>]*>|[^\s<>]+)(?:\s+(.*))?$", re.IGNORECASE | re.DOTALL)
_BDAT = re.compile(rb"^(\d{1,15})(?:\s+(LAST))?\s*$", re.IGNORECASE)
# A host name or address literal: printable, no spaces or controls.
_HELO = re.compile(rb"^[\x21-\x7e\x80-\xff]{1,255}$")
_BODY_TYPES = frozenset({b"7BIT", b"8BITMIME"})


def heloName(argument: bytes) -> bytes | None:
    """
    The name a HELO or EHLO argument gives, if it is one.
    """
    name = argument.strip()
    return name if name and _HELO.match(name) else None


def mailFrom(argument: bytes, maxMessageSize: int) -> MailFrom | Reply:
    """
    Parse C{MAIL FROM:<path> [parameters]}.

    @param maxMessageSize: The size limit a SIZE parameter is held to (0
        for none).
    """
    match = _MAIL.match(argument)
    if match is None:
        return MAIL_SYNTAX
    address = match.group(1)
    parameters = _mailParameters(match.group(2) or b"", maxMessageSize)
    if isinstance(parameters, Reply):
        return parameters
    utf8 = b"SMTPUTF8" in parameters
    try:
        path = parsePath(address, allowNull=True, utf8=utf8)
    except NeedsSMTPUTF8:
        return NEEDS_SMTPUTF8
    except AddressSyntaxError as e:
        return Reply(501, "5.1.7", f"Bad sender address syntax: {e}")
    return MailFrom(address, path, tuple(parameters.items()), utf8)


def _mailParameters(text: bytes, maxMessageSize: int) -> dict[bytes, bytes] | Reply:
    """
    Parse and check the ESMTP parameters of MAIL FROM.

    @return: the parameters by upper-case keyword, or the reply that
        refuses them.
    """
    parameters: dict[bytes, bytes] = {}
    for parameter in text.split():
        keyword, _, value = parameter.partition(b"=")
        keyword = keyword.upper()
        if keyword in parameters:
            return Reply(501, "5.5.4", f"Error: duplicate {keyword.decode('ascii', 'replace')} parameter")
        if keyword == b"BODY":
            if value.upper() not in _BODY_TYPES:
                return BAD_BODY
        elif keyword == b"SIZE":
            if not value.isdigit() or len(value) > 20:
                return BAD_SIZE
            if maxMessageSize and int(value) > maxMessageSize:
                return SIZE_EXCEEDED
        elif keyword == b"AUTH":
            # RFC 4954 section 5: accepted, and not trusted for anything.
            pass
        elif keyword == b"SMTPUTF8":
            if value or b"=" in parameter:
                return SMTPUTF8_VALUE
        else:
            return UNSUPPORTED_MAIL_PARAMETER
        parameters[keyword] = value
    return parameters


def rcptAddress(argument: bytes) -> bytes | Reply:
    """
    The path of C{RCPT TO:<path>} as sent; RCPT takes no parameters.
    """
    match = _RCPT.match(argument)
    if match is None:
        return RCPT_SYNTAX
    if (match.group(2) or b"").strip():
        return UNSUPPORTED_RCPT_PARAMETER
    return match.group(1)


def rcptTo(address: bytes, utf8: bool) -> RcptTo | RecipientRefused:
    """
    Parse a recipient's path.

    @param utf8: Whether the transaction uses SMTPUTF8.
    """
    try:
        path = parsePath(address, utf8=utf8)
    except NeedsSMTPUTF8:
        return RecipientRefused(address, NEEDS_SMTPUTF8)
    except AddressSyntaxError as e:
        return RecipientRefused(address, Reply(501, "5.1.3", f"Bad recipient address syntax: {e}"))
    return RcptTo(address, path)


def chunkSize(argument: bytes) -> tuple[int, bool] | None:
    """
    The size of C{BDAT size [LAST]} and whether it is the last chunk, if
    the argument is well formed.
    """
    match = _BDAT.match(argument)
    if match is None:
        return None
    return int(match.group(1)), match.group(2) is not None
