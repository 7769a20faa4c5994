# -*- test-case-name: harbor.test.test_session -*-
"""
Counting a client's errors as Postfix does, so that a client cannot hold a
connection with failing or idle commands for ever.

An error is a 4xx or 5xx reply that is the client's doing.  Past
C{max_errors} of them without a message stored (Postfix's
C{smtpd_hard_error_limit}) the client is told goodbye; past
C{max_junk_commands} commands that move no mail (NOOP, RSET, VRFY, HELP;
Postfix's C{smtpd_junk_command_limit}) each more is an error too.

No I/O and no Twisted.
"""

from __future__ import annotations

from harbor.limits import Limits

#: Commands that move no mail, counted against the junk limit.
JUNK_VERBS = frozenset({b"NOOP", b"RSET", b"VRFY", b"HELP"})


class ClientErrors:
    """
    One connection's errors and junk commands.

    @ivar total: Every error of the connection, for its log line.
    """

    def __init__(self, limits: Limits) -> None:
        self._maxErrors = limits.maxErrors
        self._maxJunk = limits.maxJunkCommands
        self.total = 0
        self._sinceDelivery = 0
        self._junk = 0

    def error(self) -> bool:
        """
        Count one error.

        @return: whether the errors since the last message stored have
            reached the limit.
        """
        self.total += 1
        self._sinceDelivery += 1
        return self._sinceDelivery >= self._maxErrors

    def junk(self) -> bool:
        """
        Count a command that moves no mail.

        @return: whether it is past the junk limit, and so an error too.
        """
        self._junk += 1
        return self._junk > self._maxJunk

    def delivered(self) -> None:
        """
        A message was stored: as Postfix, both limits count "without
        delivering mail".
        """
        self._sinceDelivery = self._junk = 0
