"""
Tests for L{harbor.auth}.
"""

import base64
import hashlib
import os
from typing import Any

from zope.interface.verify import verifyObject

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from harbor.auth import (
    UsersFileChecker,
    hashPassword,
    readUsers,
    setPassword,
    verifyPassword,
)
from harbor.limits import FailureTracker, Throttle
from harbor.smtp._sasl import AuthenticationError, decodeBase64, decodePlain
from harbor.test._support import DeferredThreads, runSynchronously


class PasswordTests(SynchronousTestCase):
    """
    Hashing and the users file.
    """

    def test_hash(self) -> None:
        """
        A hash verifies its password only, and is salted: the same password
        hashes differently twice.
        """
        encoded = hashPassword("s3cret")
        self.assertTrue(encoded.startswith("$scrypt$ln=14,r=8,p=1$"))
        self.assertTrue(verifyPassword(b"s3cret", encoded))
        self.assertFalse(verifyPassword(b"s3cret!", encoded))
        self.assertNotEqual(encoded, hashPassword("s3cret"))
        self.assertFalse(verifyPassword(b"x", "$md5$nonsense"))

    def test_setPassword(self) -> None:
        """
        setPassword adds and changes users in a private file.
        """
        path = self.mktemp()
        self.assertTrue(setPassword(path, "alice", "one"))
        self.assertFalse(setPassword(path, "alice", "two"))
        setPassword(path, "bob", "three")
        users = readUsers(path)
        self.assertEqual(sorted(users), ["alice", "bob"])
        self.assertTrue(verifyPassword(b"two", users["alice"]))
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)

    def test_badNames(self) -> None:
        """
        User names that could be paths or break the file are refused.
        """
        for name in ["", "../x", "a:b", "a b", ".hidden", "a/b"]:
            self.assertRaises(ValueError, setPassword, self.mktemp(), name, "pw")

    def test_malformedFile(self) -> None:
        """
        A malformed line is reported with its number.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("# comment\n\nalice:$scrypt$x\nbroken line\n")
        error = self.assertRaises(ValueError, readUsers, path)
        self.assertIn("line 4", str(error))


class CheckerTests(SynchronousTestCase):
    """
    Tests for L{UsersFileChecker}.
    """

    def setUp(self) -> None:
        self.path = self.mktemp()
        setPassword(self.path, "alice", "right")
        self.checker = UsersFileChecker(self.path, runSynchronously)

    def test_interface(self) -> None:
        """
        It is a cred checker.
        """
        self.assertTrue(verifyObject(ICredentialsChecker, self.checker))

    def test_check(self) -> None:
        """
        The right password gives the user name; a wrong one or an unknown
        user is UnauthorizedLogin.
        """
        self.assertEqual(
            self.successResultOf(self.checker.requestAvatarId(UsernamePassword(b"alice", b"right"))),
            "alice",
        )
        for user, password in [(b"alice", b"wrong"), (b"nobody", b"right")]:
            self.failureResultOf(
                self.checker.requestAvatarId(UsernamePassword(user, password)), UnauthorizedLogin
            )

    def test_hashingOnlyInTheThread(self) -> None:
        """
        Making a checker (at start and at every reload, on the reactor
        thread) computes no scrypt hash; an unknown user costs one, with
        the parameters of a password hashed today, in the thread.
        """
        calls: list[tuple[int, int, int]] = []
        real = hashlib.scrypt

        def counting(password: bytes, **kwargs: Any) -> bytes:
            calls.append((kwargs["n"], kwargs["r"], kwargs["p"]))
            return real(password, **kwargs)

        self.patch(hashlib, "scrypt", counting)
        threads = DeferredThreads()
        checker = UsersFileChecker(self.path, threads)
        d = checker.requestAvatarId(UsernamePassword(b"nobody", b"right"))
        self.assertEqual(calls, [])
        threads.runAll()
        self.failureResultOf(d, UnauthorizedLogin)
        self.assertEqual(len(calls), 1)
        d = checker.requestAvatarId(UsernamePassword(b"alice", b"wrong"))
        threads.runAll()
        self.failureResultOf(d, UnauthorizedLogin)
        self.assertEqual(calls, [(2**14, 8, 1), (2**14, 8, 1)])

    def test_fileChangesTakeEffect(self) -> None:
        """
        A password changed in the file works without a restart.
        """
        setPassword(self.path, "alice", "new password, longer")
        self.successResultOf(self.checker.requestAvatarId(UsernamePassword(b"alice", b"new password, longer")))


class SASLTests(SynchronousTestCase):
    """
    Decoding SASL responses.
    """

    def test_base64(self) -> None:
        """
        Base64 decodes, = is empty, anything else is 501 5.5.2.
        """
        self.assertEqual(decodeBase64(base64.b64encode(b"abc")), b"abc")
        self.assertEqual(decodeBase64(b"="), b"")
        error = self.assertRaises(AuthenticationError, decodeBase64, b"not base64!")
        self.assertEqual((error.code, error.enhanced), (501, "5.5.2"))

    def test_plain(self) -> None:
        """
        PLAIN is authzid NUL authcid NUL password; acting for someone else,
        or a malformed response, fails with 535 5.7.8.
        """
        self.assertEqual(decodePlain(b"\0alice\0pw"), (b"alice", b"pw"))
        self.assertEqual(decodePlain(b"alice\0alice\0pw"), (b"alice", b"pw"))
        for response in [b"", b"alice\0pw", b"bob\0alice\0pw", b"\0\0pw"]:
            error = self.assertRaises(AuthenticationError, decodePlain, response)
            self.assertEqual(error.code, 535)


class ThrottleTests(SynchronousTestCase):
    """
    Tests for L{FailureTracker}.
    """

    def test_growingDelay(self) -> None:
        """
        Repeated failures from one address wait longer each time, up to the
        cap; other addresses are not affected; success and time forget.
        """
        clock = Clock()
        tracker = FailureTracker(Throttle(delays=(0, 1, 4), forget=60), clock.seconds)
        self.assertEqual([tracker.failed("a") for _ in range(4)], [0, 1, 4, 4])
        self.assertEqual(tracker.failed("b"), 0)
        tracker.succeeded("a")
        self.assertEqual(tracker.failed("a"), 0)
        clock.advance(61)
        self.assertEqual(tracker.failed("a"), 0)

    def test_networkThrottled(self) -> None:
        """
        An IPv6 client moving through the addresses of its network is
        throttled as one address.
        """
        tracker = FailureTracker(Throttle(delays=(0, 1, 4)), Clock().seconds)
        self.assertEqual([tracker.failed(f"2001:db8::{n}") for n in range(1, 5)], [0, 1, 4, 4])
        tracker.succeeded("2001:db8::9")
        self.assertEqual(tracker.failed("2001:db8::1"), 0)


class TextOrBytesTests(SynchronousTestCase):
    """
    Tests for L{TextOrBytes}.
    """

    def test_bothKinds(self) -> None:
        """
        Checkers keyed by text and by bytes both accept the right password,
        and a wrong one is still refused.
        """
        from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse

        from harbor.auth import TextOrBytes

        for user, password in [("bob", "pw"), (b"bob", b"pw")]:
            database = InMemoryUsernamePasswordDatabaseDontUse()
            checker = TextOrBytes(database)
            # Text names and passwords, as twistd's memory: checker holds them.
            database.addUser(user, password)  # type: ignore[arg-type]
            self.assertEqual(
                self.successResultOf(checker.requestAvatarId(UsernamePassword(b"bob", b"pw"))), user
            )
            self.failureResultOf(checker.requestAvatarId(UsernamePassword(b"bob", b"no")), UnauthorizedLogin)
