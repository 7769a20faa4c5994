"""
Tests for L{harbor.store.names}.
"""

import threading

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from harbor.store.names import (
    RANDOM_BYTES,
    MaildirName,
    MaildirNamer,
    hostPart,
    parseName,
)
from harbor.store.reader import deliveryTime


class Counting:
    """
    A stand-in for C{os.urandom}: the bytes of 1, 2, 3..., and how many
    were asked for each time.
    """

    def __init__(self) -> None:
        self.asked: list[int] = []

    def __call__(self, n: int) -> bytes:
        self.asked.append(n)
        return len(self.asked).to_bytes(n, "big")


class NamerTests(SynchronousTestCase):
    """
    Tests for L{MaildirNamer}.
    """

    def test_scheme(self) -> None:
        """
        Names follow <seconds>.M<usec>P<pid>R<random hex>Q<count>.<host>,
        with 64 random bits freshly drawn for each name.
        """
        clock = Clock()
        clock.advance(1700000000.25)
        random = Counting()
        namer = MaildirNamer("mx.example.com", clock.seconds, pid=77, random=random)
        self.assertEqual(namer.nextName(), "1700000000.M250000P77R0000000000000001Q1.mx.example.com")
        self.assertEqual(namer.nextName(), "1700000000.M250000P77R0000000000000002Q2.mx.example.com")
        self.assertEqual(random.asked, [RANDOM_BYTES, RANDOM_BYTES])
        self.assertEqual(RANDOM_BYTES, 8)

    def test_realRandomness(self) -> None:
        """
        By default the random part comes from the operating system: two
        namers with the same pid, host and a frozen clock give different
        names.
        """
        clock = Clock()
        first = MaildirNamer("mx.example.com", clock.seconds, pid=1)
        second = MaildirNamer("mx.example.com", clock.seconds, pid=1)
        names = [first.nextName(), second.nextName()]
        self.assertNotEqual(*names)
        for name in names:
            self.assertRegex(name, r"^0\.M0P1R[0-9a-f]{16}Q1\.mx\.example\.com$")

    def test_uniqueWithinAMicrosecond(self) -> None:
        """
        Two names taken at the same instant differ, even with the same
        random bytes: the count tells them apart.
        """
        namer = MaildirNamer("h", Clock().seconds, pid=1, random=bytes)
        self.assertNotEqual(namer.nextName(), namer.nextName())

    def test_uniqueAcrossThreads(self) -> None:
        """
        Threads naming at once never get the same count.
        """
        namer = MaildirNamer("h", Clock().seconds, pid=1, random=bytes)
        names: list[str] = []

        def name() -> None:
            names.extend(namer.nextName() for _ in range(2000))

        threads = [threading.Thread(target=name) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        self.assertEqual(len(set(names)), 8000)

    def test_timeFirst(self) -> None:
        """
        The delivery time starts the name, so that names sort by it and the
        reader finds it (L{deliveryTime}), microseconds and all.
        """
        clock = Clock()
        clock.advance(1732314178.123456)
        name = MaildirNamer("mx.example.com", clock.seconds, pid=1).nextName()
        self.assertEqual(deliveryTime(name), 1732314178.123456)

    def test_reservedCharactersEscaped(self) -> None:
        """
        C{/}, C{:} and C{,} in the host name are escaped, so the name stays one
        path component and its fields stay parseable.
        """
        name = MaildirNamer("a/b:c,d", Clock().seconds, pid=1).nextName()
        self.assertEqual(name.split(".", 2)[2], "a\\057b\\072c\\054d")
        self.assertNotIn("/", name)
        self.assertNotIn(":", name)
        self.assertNotIn(",", name)

    def test_hostPart(self) -> None:
        """
        hostPart escapes as the Maildir scheme says, and leaves an ordinary
        host name alone.
        """
        self.assertEqual(hostPart("mx.example.com"), "mx.example.com")
        self.assertEqual(hostPart("x/y"), "x\\057y")
        self.assertEqual(hostPart("x:y"), "x\\072y")
        self.assertEqual(hostPart("x,y"), "x\\054y")

    def test_parseNameRoundTrip(self) -> None:
        """
        A name the namer makes is the id parseName finds again, in new/
        (with its size) and in cur/ (with flags), even for an escaped host.
        """
        for host in ("mx.example.com", "a/b:c,d"):
            id = MaildirNamer(host, Clock().seconds, pid=3).nextName()
            self.assertEqual(parseName(f"{id},S=120"), MaildirName(id, 120, ""))
            self.assertEqual(parseName(f"{id},S=120:2,RS"), MaildirName(id, 120, "RS"))

    def test_parseName(self) -> None:
        """
        parseName splits id, size and flags; dot files are not messages.
        """
        self.assertEqual(
            parseName("1.M2P3Q4.host,S=120:2,RS"), MaildirName("1.M2P3Q4.host", 120, "RS")
        )
        self.assertEqual(parseName("1.M2P3Q4.host"), MaildirName("1.M2P3Q4.host", None, ""))
        self.assertIsNone(parseName(".hidden"))
