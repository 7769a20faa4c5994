# -*- test-case-name: harbor.test.test_session,harbor.test.test_auth -*-
"""
The SASL exchanges of SMTP AUTH (RFC 4954): PLAIN (RFC 4616) and LOGIN,
from the first challenge to a user name and password.

Checking the password is not done here: L{harbor.smtp._protocol} hands the
credentials to L{twisted.cred}.  No I/O and no Twisted, like the session.
"""

from __future__ import annotations

import base64
import binascii

from harbor.smtp._events import Answer, Login, MalformedLogin
from harbor.smtp._replies import (
    AUTH_CANCELLED,
    PASSWORD_CHALLENGE,
    PLAIN_CHALLENGE,
    USERNAME_CHALLENGE,
    Reply,
)

MECHANISMS = (b"PLAIN", b"LOGIN")


class AuthenticationError(Exception):
    """
    A client's SASL exchange is malformed.

    @ivar code: The SMTP reply code.
    @ivar enhanced: The enhanced status code.
    @ivar text: The reply text.
    """

    def __init__(self, code: int, enhanced: str, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.enhanced = enhanced
        self.text = text


def decodeBase64(data: bytes) -> bytes:
    """
    Decode a SASL response; C{=} is the empty response (RFC 4954).

    @raise AuthenticationError: 501 5.5.2 if it is not base64.
    """
    data = data.strip()
    if data == b"=":
        return b""
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise AuthenticationError(501, "5.5.2", "Error: invalid base64 data") from None


def decodePlain(response: bytes) -> tuple[bytes, bytes]:
    """
    Split a decoded PLAIN response (RFC 4616) into user name and password.
    Acting as another user (an authorisation identity other than the
    authentication one) is not supported.

    @raise AuthenticationError: 535 5.7.8 if it is malformed.
    """
    parts = response.split(b"\0")
    if len(parts) != 3 or not parts[1] or parts[0] not in (b"", parts[1]):
        raise AuthenticationError(535, "5.7.8", "Error: authentication failed")
    return parts[1], parts[2]


class SASLExchange:
    """
    One AUTH exchange, from the command to the credentials.

    @ivar mechanism: C{PLAIN} or C{LOGIN}.
    @ivar done: Whether the exchange is over: the next line is a command.
    """

    def __init__(self, mechanism: bytes) -> None:
        self.mechanism = mechanism
        self.done = False
        self._username: bytes | None = None

    def challenge(self) -> Answer:
        """
        The first challenge, for an AUTH command without an initial
        response.
        """
        return Answer(PLAIN_CHALLENGE if self.mechanism == b"PLAIN" else USERNAME_CHALLENGE)

    def respond(self, line: bytes) -> Answer | Login | MalformedLogin:
        """
        Take the client's answer to a challenge, or its initial response.

        @return: the next challenge; the credentials; a malformed login
            (counted as a failed one); or the refusal of a cancelled or
            undecodable exchange.
        """
        if line.strip() == b"*":
            self.done = True
            return Answer(AUTH_CANCELLED)
        try:
            response = decodeBase64(line)
            if self.mechanism == b"PLAIN":
                self.done = True
                username, password = decodePlain(response)
            elif self._username is None:
                self._username = response
                return Answer(PASSWORD_CHALLENGE)
            else:
                self.done = True
                username, password = self._username, response
        except AuthenticationError as e:
            self.done = True
            if e.code == 535:
                return MalformedLogin(self.mechanism)
            return Answer(Reply(e.code, e.enhanced, e.text))
        return Login(self.mechanism, username, password)
