"""
Tests for L{harbor.smtp._errors}: a client's errors and junk commands
counted as Postfix does.
"""

from twisted.trial.unittest import SynchronousTestCase

from harbor.limits import Limits
from harbor.smtp._errors import JUNK_VERBS, ClientErrors


class ClientErrorsTests(SynchronousTestCase):
    """
    Tests for L{ClientErrors}.
    """

    def test_limitSinceDelivery(self) -> None:
        """
        The limit is reached at C{max_errors} errors since the last message
        stored; a stored message starts the count again, the total not.
        """
        errors = ClientErrors(Limits(maxErrors=3))
        self.assertEqual([errors.error(), errors.error()], [False, False])
        errors.delivered()
        self.assertEqual([errors.error(), errors.error(), errors.error()], [False, False, True])
        self.assertEqual(errors.total, 5)

    def test_junkPastItsLimit(self) -> None:
        """
        Junk commands are free up to C{max_junk_commands}, and each one
        past it counts; a stored message forgives them.
        """
        errors = ClientErrors(Limits(maxJunkCommands=2))
        self.assertEqual([errors.junk() for _ in range(3)], [False, False, True])
        errors.delivered()
        self.assertFalse(errors.junk())
        self.assertEqual(JUNK_VERBS, {b"NOOP", b"RSET", b"VRFY", b"HELP"})
