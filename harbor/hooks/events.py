# -*- test-case-name: harbor.test.test_hookevents -*-
"""
What hooks are told and what they may raise: L{NewMessage}, one stored copy
of a message; L{Job}, one hook to call for one copy, as its job file holds
it; and L{HookFailed} and its kinds.

These are plain values with their JSON forms.  Nothing here imports
Twisted, so a hook's own module can use them cheaply, and so can
C{mailharbor hooks}.
"""

from __future__ import annotations

import email.policy
import os
from collections.abc import Mapping
from email.message import EmailMessage
from email.parser import BytesParser
from functools import cached_property
from typing import TYPE_CHECKING, Any

from attrs import field, frozen

from harbor.store.names import parseName

if TYPE_CHECKING:
    from twisted.python.failure import Failure

_JOB_VERSION = 1
# The last second of the year 9999: later times cannot be shown as dates.
_LATEST_TIME = 253402300799


class HookFailed(Exception):
    """
    A hook did not do its job this time; it will be tried again.

    Hooks raise it for the failures they expect (a non-zero exit status,
    an HTTP 500), which are logged without a traceback.
    """


class PermanentHookFailure(HookFailed):
    """
    A hook can never succeed for this message: its job goes to the dead
    letters at once instead of being retried.

    A Python hook may raise it too, for instance for a message it cannot
    parse.
    """


class MessageGone(PermanentHookFailure):
    """
    The stored message is no longer in its Maildir: a mail reader deleted
    it before the hook got to it.
    """


class BacklogFull(Exception):
    """
    A hook has as many pending jobs as its C{max_pending} allows: new mail,
    which would add more, is refused with a temporary failure until they
    drain.

    @ivar hook: The hook's name.
    @ivar pending: Its pending jobs.
    @ivar limit: Its C{max_pending}.
    """

    def __init__(self, hook: str, pending: int, limit: int) -> None:
        super().__init__(f"hook {hook} has {pending} pending jobs (max_pending {limit})")
        self.hook = hook
        self.pending = pending
        self.limit = limit


def describe(failure: Failure) -> str:
    """
    Why an attempt failed, in one line for the log and the job file: a
    L{HookFailed}'s own text, or any other exception's type and text.
    """
    if failure.check(HookFailed):
        return str(failure.value)
    text = str(failure.value)
    name = failure.type.__name__ if failure.type is not None else "Error"
    return f"{name}: {text}" if text else name


@frozen
class NewMessage:
    """
    One stored copy of a message, as its hooks are told about it.

    @ivar sender: The envelope sender (C{MAIL FROM}), C{""} for the null
        sender of bounces.
    @ivar recipient: The envelope recipient this copy was delivered for.
    @ivar user: The name the client authenticated as, or L{None} for
        inbound mail from the Internet.
    @ivar client: The client's IP address.
    @ivar path: Where the copy was stored, in its Maildir's C{new/}.  A
        mail reader may since have moved it to C{cur/}; L{locate} finds it.
    @ivar id: The copy's Maildir id, as given in the 250 reply.
    @ivar deliveryId: When a hook is called: the id of this call's job
        (C{"<id>,<hook name>"}), the same on every retry and in every
        instance sharing the spool, so that a receiver can drop the
        repeats a crash can cause.  L{None} in the job files, which know
        it otherwise.  Not compared: it says which call, not which copy.
    """

    sender: str
    recipient: str
    user: str | None
    client: str
    path: str
    id: str
    deliveryId: str | None = field(default=None, eq=False)

    def locate(self) -> str:
        """
        Find the stored file, wherever a mail reader has moved it.

        Blocking: it may list the Maildir's C{new/} and C{cur/}.

        @return: The file's current path.
        @raise MessageGone: if it is in neither.
        """
        if os.path.exists(self.path):
            return self.path
        maildir = os.path.dirname(os.path.dirname(self.path))
        for sub in ("new", "cur"):
            directory = os.path.join(maildir, sub)
            try:
                names = os.listdir(directory)
            except OSError:
                continue
            for filename in names:
                name = parseName(filename)
                if name is not None and name.id == self.id:
                    return os.path.join(directory, filename)
        raise MessageGone(f"message {self.id} is no longer in {maildir}")

    def read(self) -> bytes:
        """
        Read the stored file, exactly as stored.  Blocking.

        @raise MessageGone: if it is no longer in its Maildir.
        """
        for _ in range(2):
            path = self.locate()
            try:
                with open(path, "rb") as f:
                    return f.read()
            except FileNotFoundError:
                # Moved to cur/ between finding and opening it: look again.
                continue
        raise MessageGone(f"message {self.id} keeps moving")

    @cached_property
    def message(self) -> EmailMessage:
        """
        The stored message, parsed on first use with L{email.policy.default}
        and kept: most hooks never look at it, and parsing a large message
        is not free.  Blocking: a hook that runs in the reactor thread and
        reads large messages should set C{thread = true}.

        @raise MessageGone: if it is no longer in its Maildir.
        """
        return BytesParser(policy=email.policy.default).parsebytes(self.read())

    def asJSON(self) -> dict[str, Any]:
        """
        The envelope as plain JSON values, as job files and webhooks carry
        it; with C{delivery_id} when it is set (for a webhook's call).
        """
        value: dict[str, Any] = {
            "id": self.id,
            "sender": self.sender,
            "recipient": self.recipient,
            "user": self.user,
            "client": self.client,
            "path": self.path,
        }
        if self.deliveryId is not None:
            value["delivery_id"] = self.deliveryId
        return value

    @classmethod
    def fromJSON(cls, value: object) -> NewMessage:
        """
        The inverse of L{asJSON}.

        @raise ValueError: if C{value} is not what L{asJSON} makes.  Not
            L{TypeError} for a value of the wrong type: a job file's
            reader catches L{ValueError} alone, as L{json.loads} raises
            it too, for whatever makes the file unusable.
        """
        if not isinstance(value, Mapping):
            raise ValueError("the event is not an object")  # noqa: TRY004
        fields = {}
        for key in ("id", "sender", "recipient", "client", "path"):
            if not isinstance(value.get(key), str):
                raise ValueError(f"the event's {key} is not a string")  # noqa: TRY004
            fields[key] = value[key]
        user = value.get("user")
        if user is not None and not isinstance(user, str):
            raise ValueError("the event's user is not a string")
        deliveryId = value.get("delivery_id")
        if deliveryId is not None and not isinstance(deliveryId, str):
            raise ValueError("the event's delivery_id is not a string")
        return cls(user=user, deliveryId=deliveryId, **fields)


@frozen
class Job:
    """
    One hook to call for one stored copy; what a job file holds.

    @ivar id: C{"<message id>,<hook name>"}, unique in the spool, and the
        name C{mailharbor hooks retry} takes.
    @ivar hook: The hook's name.
    @ivar event: What the hook is told.
    @ivar created: When the job was recorded, in seconds since the epoch.
    @ivar due: When it is next to be tried.
    @ivar attempts: Attempts already made and failed.
    @ivar error: Why the last attempt failed, if one did.
    """

    id: str
    hook: str
    event: NewMessage
    created: float
    due: float
    attempts: int = 0
    error: str | None = None

    def asJSON(self) -> dict[str, Any]:
        """
        The job as plain JSON values.
        """
        return {
            "version": _JOB_VERSION,
            "id": self.id,
            "hook": self.hook,
            "created": self.created,
            "due": self.due,
            "attempts": self.attempts,
            "error": self.error,
            "event": self.event.asJSON(),
        }

    @classmethod
    def fromJSON(cls, value: object) -> Job:
        """
        The inverse of L{asJSON}.

        @raise ValueError: if C{value} is not a job of a version this code
            knows (never L{TypeError}: see L{NewMessage.fromJSON}).
        """
        if not isinstance(value, Mapping) or value.get("version") != _JOB_VERSION:
            raise ValueError("not a version 1 job")
        if not isinstance(value.get("id"), str) or not isinstance(value.get("hook"), str):
            raise ValueError("the job has no id or hook")  # noqa: TRY004
        numbers = {}
        for key in ("created", "due", "attempts"):
            number = value.get(key)
            if isinstance(number, bool) or not isinstance(number, (int, float)):
                raise ValueError(f"the job's {key} is not a number")  # noqa: TRY004
            if not 0 <= number <= _LATEST_TIME:
                # Also refuses NaN and infinities, which no clock shows.
                raise ValueError(f"the job's {key} is out of range")
            numbers[key] = number
        error = value.get("error")
        if error is not None and not isinstance(error, str):
            raise ValueError("the job's error is not a string")
        return cls(
            id=value["id"],
            hook=value["hook"],
            event=NewMessage.fromJSON(value.get("event")),
            created=float(numbers["created"]),
            due=float(numbers["due"]),
            attempts=int(numbers["attempts"]),
            error=error,
        )


def jobID(event: NewMessage, hookName: str) -> str:
    """
    The id of the job that tells hook C{hookName} about C{event}.

    Maildir ids have no C{,} and hook names neither, so the id splits back
    unambiguously, and it is the same every time it is made: a webhook can
    use it to ignore a repeated delivery.
    """
    return f"{event.id},{hookName}"


def isJobID(text: str) -> bool:
    """
    Whether C{text} can name a job file: not empty, no C{/} or NUL, and
    not hidden, so that it stays one file inside the spool's directories.
    """
    return bool(text) and "/" not in text and not text.startswith(".") and "\0" not in text
