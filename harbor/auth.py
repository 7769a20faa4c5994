# -*- test-case-name: harbor.test.test_auth -*-
"""
Authentication: the users file, its password hashes and the L{twisted.cred}
checker over it; the checker over an embedding program's C{authenticate}
callback (L{CallbackChecker}), which needs the client's address and so gets
L{ClientCredentials}; and L{FirstOf}, which asks several checkers in turn.
The SASL PLAIN and LOGIN exchanges that carry the password (RFC 4616,
RFC 4954) are in L{harbor.smtp._sasl}.

Passwords are hashed with scrypt from the standard library, each with its
own random salt, so a stolen users file is expensive to attack.  Checking a
password is deliberately slow, so it runs in a thread, never on the reactor.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import stat
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from zope.interface import Attribute, implementer

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword, UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import Deferred, fail, maybeDeferred

from harbor._awaitable import callUserCode
from harbor.routing import USER_NAME

# An embedding program's decision on a login: called with the user name,
# the password and the client's IP address, all text; answers True or
# False, directly, as a Deferred or from a coroutine.
Authenticate = Callable[[str, str, str], bool | Deferred[bool] | Awaitable[bool]]

_SCRYPT_N = 2**14
_SCRYPT_R = 8
_SCRYPT_P = 1
_PREFIX = "$scrypt$"


def hashPassword(password: str, salt: bytes | None = None) -> str:
    """
    Hash a password for the users file: C{$scrypt$ln=14,r=8,p=1$salt$hash}.
    """
    salt = os.urandom(16) if salt is None else salt
    digest = _scrypt(password.encode("utf-8"), salt)
    return (
        f"{_PREFIX}ln={_SCRYPT_N.bit_length() - 1},r={_SCRYPT_R},p={_SCRYPT_P}$"
        f"{base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"
    )


def _scrypt(password: bytes, salt: bytes) -> bytes:
    """
    The digest L{hashPassword} stores, with today's parameters.
    """
    return hashlib.scrypt(password, salt=salt, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P, dklen=32)


def verifyPassword(password: bytes, encoded: str) -> bool:
    """
    Whether C{password} matches a hash made by L{hashPassword}, compared in
    constant time.
    """
    try:
        prefix, parameters, salt, digest = encoded.rsplit("$", 3)
        if prefix + "$" != _PREFIX:
            return False
        settings = dict(item.split("=", 1) for item in parameters.split(","))
        n = 2 ** int(settings["ln"])
        expected = base64.b64decode(digest)
        actual = hashlib.scrypt(
            password,
            salt=base64.b64decode(salt),
            n=n,
            r=int(settings["r"]),
            p=int(settings["p"]),
            dklen=len(expected),
            maxmem=256 * n * int(settings["r"]) + 2**20,
        )
    except (ValueError, KeyError, binascii.Error):
        return False
    return hmac.compare_digest(actual, expected)


def readUsers(path: str) -> dict[str, str]:
    """
    Read a users file: one C{name:hash} per line; blank lines and lines
    starting with C{#} are ignored.

    @raise OSError: if it cannot be read.
    @raise ValueError: naming the line that is not C{name:hash}.
    """
    users: dict[str, str] = {}
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            name, colon, encoded = line.partition(":")
            if not colon or not USER_NAME.match(name) or not encoded.startswith(_PREFIX):
                raise ValueError(f"{path}, line {number}: not a user name and scrypt hash")
            users[name] = encoded
    return users


def setPassword(path: str, user: str, password: str) -> bool:
    """
    Add C{user} to the users file, or change its password, replacing the
    file atomically.  A new file is private (mode 0600); a file that is
    replaced keeps its mode and, when root replaces it, its owner and
    group: C{mailharbor passwd} run as root must not leave a file that
    the server, running as another user after twistd's C{--uid}, can no
    longer read.

    @return: whether the user was new.
    @raise ValueError: if the user name is not acceptable.
    """
    if not USER_NAME.match(user):
        raise ValueError(
            f"{user!r} is not a valid user name (letters, digits and . _ @ + -, "
            "not starting with a punctuation mark)"
        )
    try:
        previous: os.stat_result | None = os.stat(path)
    except FileNotFoundError:
        previous = None
    users = {} if previous is None else readUsers(path)
    new = user not in users
    users[user] = hashPassword(password)
    directory = os.path.dirname(os.path.abspath(path))
    fd, temporary = tempfile.mkstemp(prefix=".users-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("# MailHarbor users: name:scrypt hash. Edit with `mailharbor passwd`.\n")
            for name, encoded in users.items():
                f.write(f"{name}:{encoded}\n")
            f.flush()
            os.fsync(f.fileno())
        if previous is None:
            os.chmod(temporary, 0o600)
        else:
            os.chmod(temporary, stat.S_IMODE(previous.st_mode))
            if os.geteuid() == 0:
                os.chown(temporary, previous.st_uid, previous.st_gid)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise
    return new


@implementer(ICredentialsChecker)
class UsersFileChecker:
    """
    Checks user names and passwords against a users file, re-read when it
    changes, so C{mailharbor passwd} takes effect without a restart.
    """

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self, path: str, runInThread: Callable[[Callable[[], Any]], Deferred[Any]]) -> None:
        """
        @raise OSError: if the file cannot be read.
        @raise ValueError: if it is malformed.
        """
        self._path = path
        self._runInThread = runInThread
        self._stamp: tuple[float, int] | None = None
        self._users: dict[str, str] = {}
        self._refresh()

    def _refresh(self) -> None:
        stat = os.stat(self._path)
        stamp = (stat.st_mtime, stat.st_size)
        if stamp != self._stamp:
            self._users = readUsers(self._path)
            self._stamp = stamp

    # The avatar ids are user names as text (the realm stores mail under
    # them), which Twisted's annotation of the interface, bytes, does not
    # foresee.
    def requestAvatarId(self, credentials: IUsernamePassword) -> Deferred[str]:  # type: ignore[override]
        """
        Check a password, slowly and off the reactor thread.  An unknown
        user costs as much time as a wrong password, so user names cannot be
        probed.
        """
        try:
            self._refresh()
        except (OSError, ValueError):
            pass
        username = credentials.username
        name = username.decode("utf-8", "replace") if isinstance(username, bytes) else str(username)
        password = credentials.password
        if isinstance(password, str):
            password = password.encode("utf-8")
        encoded = self._users.get(name)

        def check() -> str:
            if encoded is None:
                # As slow as checking a password hashed today, here in the
                # thread rather than once on the reactor thread at every
                # start and reload.
                _scrypt(password, os.urandom(16))
                raise UnauthorizedLogin()
            if not verifyPassword(password, encoded):
                raise UnauthorizedLogin()
            return name

        return self._runInThread(check)


@implementer(ICredentialsChecker)
class TextOrBytes:
    """
    Adapts a checker from twistd's C{--auth}: Twisted's own checkers
    disagree on whether user names and passwords are text (C{memory:},
    C{unix}) or bytes (C{file:}), so the credentials are offered as text
    first, then as bytes.
    """

    def __init__(self, checker: ICredentialsChecker) -> None:
        self._checker = checker
        self.credentialInterfaces = checker.credentialInterfaces

    def requestAvatarId(self, credentials: IUsernamePassword) -> Deferred[Any]:
        def text(value: bytes | str) -> str:
            return value.decode("utf-8", "replace") if isinstance(value, bytes) else value

        def octets(value: bytes | str) -> bytes:
            return value.encode("utf-8") if isinstance(value, str) else value

        # Text is what the memory: and unix checkers compare, whatever
        # UsernamePassword's annotation says.
        asText = UsernamePassword(text(credentials.username), text(credentials.password))  # type: ignore[arg-type]
        asBytes = UsernamePassword(octets(credentials.username), octets(credentials.password))

        def asOctets(failure: Any) -> Any:
            failure.trap(UnauthorizedLogin)
            return self._checker.requestAvatarId(asBytes)

        return maybeDeferred(self._checker.requestAvatarId, asText).addErrback(asOctets)



class IClientCredentials(IUsernamePassword):
    """
    A user name and password, with the address of the client that gave
    them (which L{twisted.cred}'s C{requestAvatarId} is not otherwise told).
    """

    client = Attribute("The client's IP address, as text (C{192.0.2.7}, C{2001:db8::7}).")


@implementer(IClientCredentials)
class ClientCredentials(UsernamePassword):
    """
    What AUTH gives the checkers: a user name and password from the SASL
    exchange, and the client's address.
    """

    def __init__(self, username: bytes, password: bytes, client: str) -> None:
        super().__init__(username, password)
        self.client = client


@implementer(ICredentialsChecker)
class CallbackChecker:
    """
    Checks logins with an embedding program's C{authenticate} function
    (L{harbor.api.buildService}).

    Only C{True} logs in and only C{False} is a wrong password; anything
    else, an exception or a failed L{Deferred} or coroutine is an error
    (the client gets 454 4.7.0 and may try again later), so a broken
    callback never lets anyone in.  A user name or password that is not
    UTF-8 is refused without asking it.
    """

    credentialInterfaces = (IClientCredentials,)

    def __init__(self, authenticate: Authenticate) -> None:
        self._authenticate = authenticate

    def requestAvatarId(self, credentials: IClientCredentials) -> Deferred[str]:  # type: ignore[override]
        try:
            user = _text(credentials.username)
            password = _text(credentials.password)
        except UnicodeDecodeError:
            return fail(UnauthorizedLogin())

        def decided(answer: object) -> str:
            if answer is True:
                return user
            if answer is False:
                raise UnauthorizedLogin()
            raise TypeError(f"authenticate returned {answer!r}, not True or False")

        d: Deferred[str] = callUserCode(self._authenticate, user, password, credentials.client)
        return d.addCallback(decided)


def _text(value: bytes | str) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


@implementer(ICredentialsChecker)
class FirstOf:
    """
    Asks checkers in turn, as L{twisted.cred.portal.Portal} does not (it
    keeps one checker per credentials interface): the first that accepts
    the login wins, a wrong password (L{UnauthorizedLogin}) passes it to the
    next, and any other error ends the login with that error, so a broken
    checker fails closed.  Each checker is asked only about credentials of
    an interface it declares.
    """

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self, checkers: Sequence[ICredentialsChecker]) -> None:
        self._checkers = tuple(checkers)

    def requestAvatarId(self, credentials: IUsernamePassword) -> Deferred[Any]:
        candidates = [
            checker
            for checker in self._checkers
            if any(interface.providedBy(credentials) for interface in checker.credentialInterfaces)
        ]

        def ask(index: int) -> Deferred[Any]:
            if index == len(candidates):
                return fail(UnauthorizedLogin())

            def wrong(failure: Any) -> Deferred[Any]:
                failure.trap(UnauthorizedLogin)
                return ask(index + 1)

            return maybeDeferred(candidates[index].requestAvatarId, credentials).addErrback(wrong)

        return ask(0)
