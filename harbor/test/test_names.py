"""
Tests for L{harbor.store.names}.
"""

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from harbor.store.names import MaildirName, MaildirNamer, parseName


class NamerTests(SynchronousTestCase):
    """
    Tests for L{MaildirNamer}.
    """

    def test_scheme(self) -> None:
        """
        Names follow seconds.M<usec>P<pid>Q<count>.<host>.
        """
        clock = Clock()
        clock.advance(1700000000.25)
        namer = MaildirNamer("mx.example.com", clock.seconds, pid=77)
        self.assertEqual(namer.nextName(), "1700000000.M250000P77Q1.mx.example.com")

    def test_uniqueWithinAMicrosecond(self) -> None:
        """
        Two names taken at the same instant differ.
        """
        namer = MaildirNamer("h", Clock().seconds, pid=1)
        self.assertNotEqual(namer.nextName(), namer.nextName())

    def test_reservedCharactersEscaped(self) -> None:
        """
        C{/}, C{:} and C{,} in the host name are escaped, so the name stays one
        path component and its fields stay parseable.
        """
        name = MaildirNamer("a/b:c,d", Clock().seconds, pid=1).nextName()
        self.assertEqual(name.split(".", 2)[2], "a\\057b\\072c\\054d")
        self.assertNotIn("/", name)

    def test_parseName(self) -> None:
        """
        parseName splits id, size and flags; dot files are not messages.
        """
        self.assertEqual(
            parseName("1.M2P3Q4.host,S=120:2,RS"), MaildirName("1.M2P3Q4.host", 120, "RS")
        )
        self.assertEqual(parseName("1.M2P3Q4.host"), MaildirName("1.M2P3Q4.host", None, ""))
        self.assertIsNone(parseName(".hidden"))
