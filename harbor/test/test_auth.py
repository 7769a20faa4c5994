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
from twisted.trial.unittest import SkipTest, SynchronousTestCase

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

    def test_replacedFileKeepsItsMode(self) -> None:
        """
        Changing a password keeps the mode the operator gave the file.
        """
        path = self.mktemp()
        setPassword(path, "alice", "one")
        os.chmod(path, 0o640)
        setPassword(path, "alice", "two")
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o640)

    def test_replacedFileKeepsItsOwner(self) -> None:
        """
        Root changing a password leaves the file owned as it was, so a
        server running as another user still reads it.
        """
        if os.geteuid() != 0:
            raise SkipTest("only root can give a file to another user")
        path = self.mktemp()
        setPassword(path, "alice", "one")
        os.chown(path, 65534, 65534)
        setPassword(path, "alice", "two")
        info = os.stat(path)
        self.assertEqual((info.st_uid, info.st_gid, info.st_mode & 0o777), (65534, 65534, 0o600))

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


class ClientCredentialsTests(SynchronousTestCase):
    """
    Tests for L{ClientCredentials}.
    """

    def test_interface(self) -> None:
        """
        The credentials are a user name and password, with the client's
        address, so the users file's checker takes them as before.
        """
        from twisted.cred.credentials import IUsernamePassword

        from harbor.auth import ClientCredentials, IClientCredentials

        credentials = ClientCredentials(b"alice", b"pw", "192.0.2.7")
        self.assertTrue(verifyObject(IClientCredentials, credentials))
        self.assertTrue(IUsernamePassword.providedBy(credentials))
        self.assertEqual(credentials.client, "192.0.2.7")
        self.assertTrue(credentials.checkPassword(b"pw"))


class CallbackCheckerTests(SynchronousTestCase):
    """
    Tests for L{CallbackChecker}: an embedding program's C{authenticate}.
    """

    def credentials(self, user: bytes = b"alice", password: bytes = b"pw") -> Any:
        from harbor.auth import ClientCredentials

        return ClientCredentials(user, password, "192.0.2.7")

    def test_interface(self) -> None:
        """
        The checker provides L{ICredentialsChecker} and takes only
        credentials that carry the client's address.
        """
        from harbor.auth import CallbackChecker, IClientCredentials

        checker = CallbackChecker(lambda user, password, client: True)
        self.assertTrue(verifyObject(ICredentialsChecker, checker))
        self.assertEqual(checker.credentialInterfaces, (IClientCredentials,))

    def test_arguments(self) -> None:
        """
        The callback gets the user name and password as text and the
        client's IP address; C{True} logs the user in under that name.
        """
        from harbor.auth import CallbackChecker

        calls: list[tuple[str, str, str]] = []

        def authenticate(user: str, password: str, client: str) -> bool:
            calls.append((user, password, client))
            return True

        checker = CallbackChecker(authenticate)
        self.assertEqual(self.successResultOf(checker.requestAvatarId(self.credentials(b"\xc3\xa9l", b"p\xc3\xa9"))), "él")
        self.assertEqual(calls, [("él", "pé", "192.0.2.7")])

    def test_answers(self) -> None:
        """
        C{True} and C{False} are taken directly, from a L{Deferred} or from
        a coroutine; C{False} is a wrong password.
        """
        from twisted.internet.defer import succeed

        from harbor.auth import CallbackChecker

        async def coroutine(answer: bool) -> bool:
            return answer

        for answer in (True, False):
            for function in (
                lambda user, password, client, answer=answer: answer,
                lambda user, password, client, answer=answer: succeed(answer),
                lambda user, password, client, answer=answer: coroutine(answer),
            ):
                result = CallbackChecker(function).requestAvatarId(self.credentials())
                if answer:
                    self.assertEqual(self.successResultOf(result), "alice")
                else:
                    self.failureResultOf(result, UnauthorizedLogin)

    def test_errorsAreNotLogins(self) -> None:
        """
        An exception, a failed L{Deferred} or coroutine, or an answer that
        is not C{True} or C{False} is an error, never a login, and not a
        wrong password either.
        """
        from twisted.internet.defer import fail

        from harbor.auth import CallbackChecker

        async def broken(user: str, password: str, client: str) -> bool:
            raise ConnectionError("directory down")

        cases: list[tuple[Any, type[BaseException]]] = [
            (lambda user, password, client: 1 / 0, ZeroDivisionError),
            (lambda user, password, client: fail(KeyError(user)), KeyError),
            (broken, ConnectionError),
            (lambda user, password, client: "yes", TypeError),
            (lambda user, password, client: None, TypeError),
            (lambda user, password, client: 1, TypeError),
        ]
        for function, error in cases:
            self.failureResultOf(CallbackChecker(function).requestAvatarId(self.credentials()), error)

    def test_notUTF8(self) -> None:
        """
        A user name or password that is not UTF-8 is a wrong login, and the
        callback is not asked.
        """
        from harbor.auth import CallbackChecker

        calls: list[object] = []

        def authenticate(*arguments: str) -> bool:
            calls.append(arguments)
            return True

        checker = CallbackChecker(authenticate)
        for user, password in ((b"\xff", b"pw"), (b"alice", b"\xff")):
            self.failureResultOf(checker.requestAvatarId(self.credentials(user, password)), UnauthorizedLogin)
        self.assertEqual(calls, [])


class FirstOfTests(SynchronousTestCase):
    """
    Tests for L{FirstOf}: several checkers asked in turn.
    """

    def setUp(self) -> None:
        from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse

        from harbor.auth import CallbackChecker, ClientCredentials

        self.file = InMemoryUsernamePasswordDatabaseDontUse(alice=b"a", broken=b"a")
        self.asked: list[str] = []

        def authenticate(user: str, password: str, client: str) -> bool:
            self.asked.append(user)
            if user == "broken":
                raise RuntimeError("down")
            return (user, password) == ("bob", "b")

        self.callback = CallbackChecker(authenticate)
        self.credentials = ClientCredentials

    def check(self, *checkers: Any, user: bytes, password: bytes) -> Any:
        from harbor.auth import FirstOf

        return FirstOf(checkers).requestAvatarId(self.credentials(user, password, "192.0.2.7"))

    def test_interface(self) -> None:
        """
        L{FirstOf} provides L{ICredentialsChecker}.
        """
        from harbor.auth import FirstOf

        self.assertTrue(verifyObject(ICredentialsChecker, FirstOf([])))

    def test_eachChecker(self) -> None:
        """
        A user known to either checker logs in; the second is asked only
        when the first does not know the login.
        """
        self.assertEqual(self.successResultOf(self.check(self.file, self.callback, user=b"alice", password=b"a")), b"alice")
        self.assertEqual(self.asked, [])
        self.assertEqual(self.successResultOf(self.check(self.file, self.callback, user=b"bob", password=b"b")), "bob")
        self.failureResultOf(self.check(self.file, self.callback, user=b"bob", password=b"x"), UnauthorizedLogin)
        self.failureResultOf(self.check(user=b"bob", password=b"b"), UnauthorizedLogin)

    def test_errorFailsClosed(self) -> None:
        """
        A checker's error ends the login with that error: the checkers
        after it, one of which knows the login, are not asked.
        """
        self.failureResultOf(self.check(self.callback, self.file, user=b"broken", password=b"a"), RuntimeError)

    def test_onlyTheirCredentials(self) -> None:
        """
        A checker is not asked about credentials of an interface it does
        not declare: plain user names and passwords, without the client's
        address, never reach the callback.
        """
        from harbor.auth import FirstOf

        result = FirstOf([self.callback]).requestAvatarId(UsernamePassword(b"bob", b"b"))
        self.failureResultOf(result, UnauthorizedLogin)
        self.assertEqual(self.asked, [])
