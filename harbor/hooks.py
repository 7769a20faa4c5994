# -*- test-case-name: harbor.test.test_hooks -*-
"""
New-message hooks: tell other programs about each message once it is
safely stored.

A hook is a Python callable, a command or an HTTP webhook.  MailHarbor
calls it with a L{NewMessage} for every stored copy, after the copy is in
its Maildir and the client has its 250 reply.  Delivery to hooks is
at-least-once and survives restarts:

  1. In the delivery's worker thread, right after the Maildir commit and
     before the 250 reply, L{HookRunner.record} writes one job file per
     (copy, hook) into a spool next to the Maildirs and fsyncs it.  A
     crash after the 250 therefore loses no hook call.
  2. In the reactor thread, after the reply, L{HookRunner.dispatch} starts
     the jobs.  Each job runs on its own: a slow or failing hook delays
     neither the SMTP replies nor any other hook.  A job that succeeds is
     removed; one that fails is retried with exponential backoff, its
     attempt count kept in its file; one that keeps failing is parked in
     the dead letters, which C{mailharbor hooks list --dead} shows and
     C{mailharbor hooks retry} puts back.
  3. At start, L{HookRunner.start} resumes every job left in the spool,
     and the spool is looked at again every few seconds for jobs put back
     by C{mailharbor hooks retry}.

The spool is Maildir-like: C{tmp/} (files being written), C{pending/} (jobs
to run) and C{dead/} (jobs given up on); a job file is written in C{tmp/},
fsynced and renamed into place, and the directory is fsynced.

Nothing here imports the global reactor: the reactor and a way to run
blocking work in a thread are passed in, and C{mailharbor hooks} uses the
spool without any reactor at all.
"""

from __future__ import annotations

import base64
import email.policy
import importlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Callable, Mapping, Sequence
from email.message import EmailMessage
from email.parser import BytesParser
from functools import cached_property
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit

from zope.interface import Attribute, Interface, implementer

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredList,
    DeferredSemaphore,
    maybeDeferred,
    succeed,
)
from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol, Protocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from attrs import evolve, field, frozen

from harbor._syntax import ConfigError, checkTarget
from harbor.config import RESCAN_INTERVAL
from harbor.store.fs import IFileSystem, RealFileSystem, StorageError, quietly
from harbor.store.names import parseName

T = TypeVar("T")
RunInThread = Callable[[Callable[[], T]], "Deferred[T]"]

#: The spool's directory name inside the Maildir root.  It cannot clash
#: with a domain's Maildir, and having neither C{new/} nor C{cur/} it is
#: never taken for one.
SPOOL_NAME = ".hooks"
KINDS = ("python", "command", "webhook")
WEBHOOK_FORMATS = ("json", "multipart")

DEFAULT_ATTEMPTS = 8
DEFAULT_BACKOFF = 30.0
DEFAULT_MAX_BACKOFF = 3600.0
DEFAULT_TIMEOUT = 60.0
DEFAULT_MAX_IN_FLIGHT = 4
#: Seconds L{HookRunner.stop} waits for running hooks before cancelling them.
STOP_TIMEOUT = 10.0
#: Bytes of a command's output or a webhook's response kept for the log.
OUTPUT_LIMIT = 2000

_JOB_SUFFIX = ".json"
_JOB_VERSION = 1
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_ENVIRONMENT_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_ENVIRONMENT_PREFIX = "MAILHARBOR_"
_COMMON_KEYS = frozenset({"name", "kind", "attempts", "backoff", "max_backoff", "timeout", "max_in_flight"})
_KIND_KEYS = {
    "python": frozenset({"target", "thread"}),
    "command": frozenset({"command", "environment"}),
    "webhook": frozenset({"url", "format", "headers"}),
}


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
    """

    sender: str
    recipient: str
    user: str | None
    client: str
    path: str
    id: str

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
        parsed = BytesParser(policy=email.policy.default).parsebytes(self.read())
        return cast(EmailMessage, parsed)

    def asJSON(self) -> dict[str, Any]:
        """
        The envelope as plain JSON values, as job files and webhooks carry it.
        """
        return {
            "id": self.id,
            "sender": self.sender,
            "recipient": self.recipient,
            "user": self.user,
            "client": self.client,
            "path": self.path,
        }

    @classmethod
    def fromJSON(cls, value: object) -> NewMessage:
        """
        The inverse of L{asJSON}.

        @raise ValueError: if C{value} is not what L{asJSON} makes.
        """
        if not isinstance(value, Mapping):
            raise ValueError("the event is not an object")
        fields = {}
        for key in ("id", "sender", "recipient", "client", "path"):
            if not isinstance(value.get(key), str):
                raise ValueError(f"the event's {key} is not a string")
            fields[key] = value[key]
        user = value.get("user")
        if user is not None and not isinstance(user, str):
            raise ValueError("the event's user is not a string")
        return cls(user=user, **fields)


@frozen
class RetryPolicy:
    """
    How often, and how patiently, a failing hook is tried again.

    @ivar attempts: Attempts in all before the job goes to the dead letters.
    @ivar backoff: Seconds between the first and second attempts; each
        later wait is twice the one before.
    @ivar maxBackoff: The longest wait between two attempts.
    """

    attempts: int = DEFAULT_ATTEMPTS
    backoff: float = DEFAULT_BACKOFF
    maxBackoff: float = DEFAULT_MAX_BACKOFF

    def delayAfter(self, failures: int) -> float:
        """
        Seconds to wait after the C{failures}-th failed attempt (from 1).
        """
        return float(min(self.maxBackoff, self.backoff * 2 ** min(failures - 1, 64)))


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
            knows.
        """
        if not isinstance(value, Mapping) or value.get("version") != _JOB_VERSION:
            raise ValueError("not a version 1 job")
        if not isinstance(value.get("id"), str) or not isinstance(value.get("hook"), str):
            raise ValueError("the job has no id or hook")
        numbers = {}
        for key in ("created", "due", "attempts"):
            number = value.get(key)
            if isinstance(number, bool) or not isinstance(number, (int, float)):
                raise ValueError(f"the job's {key} is not a number")
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


# The last second of the year 9999: later times cannot be shown as dates.
_LATEST_TIME = 253402300799


def jobID(event: NewMessage, hookName: str) -> str:
    """
    The id of the job that tells hook C{hookName} about C{event}.

    Maildir ids have no C{,} and hook names neither, so the id splits back
    unambiguously, and it is the same every time it is made: a webhook can
    use it to ignore a repeated delivery.
    """
    return f"{event.id},{hookName}"


class IHook(Interface):
    """
    Something to tell about each new message.
    """

    name = Attribute(
        "A unique name (letters, digits, C{-} and C{_}): it names the hook's "
        "job files, so renaming a hook orphans its pending jobs."
    )
    maxInFlight = Attribute(
        "How many calls of this hook may run at once, or L{None} for no limit."
    )
    retry = Attribute("The L{RetryPolicy} for this hook's failures.")

    def run(event: NewMessage) -> Deferred[object]:
        """
        Tell the hook about one stored copy.

        @return: A L{Deferred} that fires when the hook has done its job, or
            fails (with L{HookFailed} for an expected failure) if it has
            not.  Cancelling it abandons the attempt.
        """

    def stop() -> Deferred[None] | None:
        """
        Release what the hook holds between calls (connections), at
        shutdown.
        """


@implementer(IHook)
class PythonHook:
    """
    A hook that calls a Python callable with the L{NewMessage}.

    The callable may return a plain value, a L{Deferred} or a coroutine
    (an C{async def} function that awaits L{Deferred}s); it succeeds unless
    it raises or its result fails.  This is also how a program that embeds
    MailHarbor registers a handler in code::

        runner = HookRunner(spool, [PythonHook(onMessage, "notify")], reactor, runInThread)
    """

    def __init__(
        self,
        function: Callable[[NewMessage], object],
        name: str,
        *,
        retry: RetryPolicy = RetryPolicy(),
        maxInFlight: int | None = DEFAULT_MAX_IN_FLIGHT,
        timeout: float | None = None,
        reactor: Any = None,
        runInThread: RunInThread[Any] | None = None,
    ) -> None:
        """
        @param function: Called with each L{NewMessage}.
        @param name: The hook's name (see L{IHook.name}).
        @param timeout: Seconds after which a call that has not finished
            is cancelled and counts as failed; needs C{reactor}.
        @param reactor: The clock for C{timeout}.
        @param runInThread: If given, C{function} runs through it (in a
            worker thread) instead of in the reactor thread, and must then
            return a plain value: for handlers that block.
        """
        if timeout is not None and reactor is None:
            raise ValueError("a PythonHook with a timeout needs a reactor")
        self.name = _checkName(name)
        self.retry = retry
        self.maxInFlight = maxInFlight
        self._function = function
        self._timeout = timeout
        self._reactor = reactor
        self._runInThread = runInThread

    def __repr__(self) -> str:
        return f"<PythonHook {self.name} {self._function!r}>"

    def run(self, event: NewMessage) -> Deferred[object]:
        if self._runInThread is not None:
            d = self._runInThread(lambda: self._function(event))
        else:
            d = maybeDeferred(self._function, event)
        if self._timeout is not None:
            d.addTimeout(self._timeout, self._reactor)
            d.addErrback(self._timedOut)
        return d

    def _timedOut(self, failure: Failure) -> Failure:
        failure.trap(defer.TimeoutError)
        raise HookFailed(f"{self._function!r} did not finish within {self._timeout:g}s")

    def stop(self) -> None:
        return None


class _OutputCollector(ProcessProtocol):
    """
    Keeps the end of a command's output (stdout and stderr together) and
    tells when the command has ended and its pipes are closed.
    """

    def __init__(self) -> None:
        self.output = b""
        self.ended: Deferred[BaseException] = Deferred()

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        self.output = (self.output + data)[-OUTPUT_LIMIT:]

    def processEnded(self, reason: Failure) -> None:
        # A Failure given to callback() would be taken for an error.
        self.ended.callback(reason.value)


@implementer(IHook)
class CommandHook:
    """
    A hook that runs a command with the stored message on its standard
    input and the envelope in its environment.

    The command is an argument list, never given to a shell, so nothing in
    a message or its envelope can become shell syntax.  Its standard input
    is the stored file itself, so it may also seek in it or ask its size.
    Besides the server's own environment and the configured variables it
    gets C{MAILHARBOR_SENDER}, C{MAILHARBOR_RECIPIENT}, C{MAILHARBOR_USER}
    (empty without authentication), C{MAILHARBOR_CLIENT}, C{MAILHARBOR_ID}
    and C{MAILHARBOR_PATH}.  Exit status 0 is success; any other status, a
    signal, or running longer than the timeout (which kills it) is failure.
    """

    def __init__(
        self,
        argv: Sequence[str],
        name: str,
        reactor: Any,
        runInThread: RunInThread[Any],
        *,
        timeout: float = DEFAULT_TIMEOUT,
        environment: Mapping[str, str] | None = None,
        baseEnvironment: Mapping[str, str] | None = None,
        retry: RetryPolicy = RetryPolicy(),
        maxInFlight: int | None = DEFAULT_MAX_IN_FLIGHT,
    ) -> None:
        """
        @param argv: The program (a path, or a name to find on C{PATH})
            and its arguments.
        @param environment: More variables for the command.
        @param baseEnvironment: The environment to start from; this
            process's (read at each call) by default.
        """
        if not argv:
            raise ValueError("a command hook needs a program to run")
        self.name = _checkName(name)
        self.retry = retry
        self.maxInFlight = maxInFlight
        self._argv = list(argv)
        self._reactor = reactor
        self._runInThread = runInThread
        self._timeout = timeout
        self._environment = dict(environment or {})
        self._baseEnvironment = baseEnvironment

    def __repr__(self) -> str:
        return f"<CommandHook {self.name} {self._argv!r}>"

    def environmentFor(self, event: NewMessage, path: str) -> dict[str, str]:
        """
        The command's environment for one message stored at C{path}.
        """
        base = os.environ if self._baseEnvironment is None else self._baseEnvironment
        environment = dict(base)
        environment.update(self._environment)
        environment.update(
            MAILHARBOR_SENDER=event.sender,
            MAILHARBOR_RECIPIENT=event.recipient,
            MAILHARBOR_USER=event.user or "",
            MAILHARBOR_CLIENT=event.client,
            MAILHARBOR_ID=event.id,
            MAILHARBOR_PATH=path,
        )
        return environment

    def run(self, event: NewMessage) -> Deferred[object]:
        opening = self._runInThread(lambda: _openMessage(event))
        running: list[Deferred[object]] = []

        def cancel(d: Deferred[object]) -> None:
            # Before the command starts there is nothing to stop: the file
            # being opened is closed again when it arrives.
            if running:
                running[0].cancel()

        result: Deferred[object] = Deferred(cancel)

        def opened(descriptor: tuple[int, str]) -> None:
            if result.called:
                # Cancelled while the file was being opened.
                os.close(descriptor[0])
                return
            try:
                running.append(self._spawn(event, *descriptor))
            except Exception:
                result.errback(Failure())
            else:
                running[0].chainDeferred(result)

        def failed(failure: Failure) -> None:
            if not result.called:
                result.errback(failure)

        opening.addCallbacks(opened, failed)
        return result

    def _spawn(self, event: NewMessage, descriptor: int, path: str) -> Deferred[object]:
        collector = _OutputCollector()
        try:
            transport = self._reactor.spawnProcess(
                collector,
                self._argv[0],
                self._argv,
                env=self.environmentFor(event, path),
                childFDs={0: descriptor, 1: "r", 2: "r"},
            )
        finally:
            os.close(descriptor)
        outcome: list[str] = []

        def kill(why: str) -> None:
            if outcome:
                return
            outcome.append(why)
            if timer.active():
                timer.cancel()
            try:
                transport.signalProcess("KILL")
            except ProcessExitedAlready:
                pass
            # A child of the command may hold the pipes open: close our
            # ends so that the end of the process is noticed anyway.
            transport.loseConnection()

        timer = self._reactor.callLater(
            self._timeout, kill, f"timed out after {self._timeout:g}s and was killed"
        )
        result: Deferred[object] = Deferred(lambda d: kill("cancelled"))

        def ended(reason: BaseException) -> None:
            if timer.active():
                timer.cancel()
            if result.called:
                return
            if outcome:
                result.errback(HookFailed(f"{self._argv[0]} {outcome[0]}{_tail(collector.output)}"))
            elif isinstance(reason, ProcessDone):
                result.callback(None)
            elif isinstance(reason, ProcessTerminated):
                if reason.signal is not None:
                    how = f"was killed by signal {reason.signal}"
                else:
                    how = f"exited with status {reason.exitCode}"
                result.errback(HookFailed(f"{self._argv[0]} {how}{_tail(collector.output)}"))
            else:
                result.errback(reason)

        collector.ended.addCallback(ended)
        return result

    def stop(self) -> None:
        return None


def _openMessage(event: NewMessage) -> tuple[int, str]:
    for _ in range(2):
        path = event.locate()
        try:
            return os.open(path, os.O_RDONLY | os.O_CLOEXEC), path
        except FileNotFoundError:
            continue
    raise MessageGone(f"message {event.id} keeps moving")


class _BoundedBody(Protocol):
    """
    Reads a response body, keeping only its start (for the log): a
    receiver's error page must not use up memory.
    """

    def __init__(self, finished: Deferred[bytes]) -> None:
        self._finished = finished
        self._data = b""

    def dataReceived(self, data: bytes) -> None:
        if len(self._data) < OUTPUT_LIMIT:
            self._data = (self._data + data)[:OUTPUT_LIMIT]

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        # Whether the body ended cleanly does not matter: the status is in.
        self._finished.callback(self._data)


@implementer(IHook)
class WebhookHook:
    """
    A hook that POSTs each message to a URL.

    The body is either JSON, the envelope's fields (as L{NewMessage.asJSON})
    plus C{size} and C{message}, the stored bytes in base64; or
    C{multipart/form-data} with a C{metadata} part (that JSON, without
    C{message}) and a C{message} part (C{message/rfc822}, the stored
    bytes).  Each request carries an C{Idempotency-Key} header, the job id,
    the same on every retry, so a receiver can drop repeats.  A 2xx status
    is success; any other status, a connection failure or running past the
    timeout is failure.  Redirects are not followed.
    """

    def __init__(
        self,
        url: str,
        name: str,
        reactor: Any,
        runInThread: RunInThread[Any],
        *,
        format: str = "json",
        timeout: float = DEFAULT_TIMEOUT,
        headers: Mapping[str, str] | None = None,
        retry: RetryPolicy = RetryPolicy(),
        maxInFlight: int | None = DEFAULT_MAX_IN_FLIGHT,
        agent: Any = None,
    ) -> None:
        """
        @param format: C{"json"} or C{"multipart"}.
        @param headers: More request headers (C{Authorization}, say).
        @param agent: The L{twisted.web.iweb.IAgent} to send with; by
            default an L{Agent} with a pool of persistent connections.
        """
        if format not in WEBHOOK_FORMATS:
            raise ValueError(f"format must be one of {', '.join(WEBHOOK_FORMATS)}")
        self.name = _checkName(name)
        self.retry = retry
        self.maxInFlight = maxInFlight
        self._url = url.encode("ascii")
        self._format = format
        self._timeout = timeout
        self._extraHeaders = dict(headers or {})
        self._reactor = reactor
        self._runInThread = runInThread
        self._pool: Any = None
        if agent is None:
            # Imported here: twisted.web.client takes a quarter of a second
            # to import, which C{mailharbor hooks} should not pay.
            from twisted.web.client import Agent, HTTPConnectionPool

            self._pool = HTTPConnectionPool(reactor, persistent=True)
            if maxInFlight is not None:
                self._pool.maxPersistentPerHost = maxInFlight
            agent = Agent(reactor, connectTimeout=timeout, pool=self._pool)
        self._agent = agent

    def __repr__(self) -> str:
        return f"<WebhookHook {self.name} {self._url.decode('ascii')}>"

    def body(self, event: NewMessage, raw: bytes) -> tuple[str, bytes]:
        """
        The request body for one message.

        @param raw: The stored bytes.
        @return: The content type and the body.
        """
        metadata = event.asJSON()
        metadata["size"] = len(raw)
        if self._format == "json":
            metadata["message"] = base64.b64encode(raw).decode("ascii")
            return "application/json", json.dumps(metadata).encode("utf-8")
        boundary = uuid.uuid4().hex
        while boundary.encode("ascii") in raw:
            boundary = uuid.uuid4().hex
        parts = [
            f"--{boundary}\r\n"
            'Content-Disposition: form-data; name="metadata"\r\n'
            "Content-Type: application/json\r\n\r\n".encode("ascii"),
            json.dumps(metadata).encode("utf-8"),
            f"\r\n--{boundary}\r\n"
            'Content-Disposition: form-data; name="message"; filename="message.eml"\r\n'
            "Content-Type: message/rfc822\r\n\r\n".encode("ascii"),
            raw,
            f"\r\n--{boundary}--\r\n".encode("ascii"),
        ]
        return f"multipart/form-data; boundary={boundary}", b"".join(parts)

    def run(self, event: NewMessage) -> Deferred[object]:
        # Reading and encoding a large message blocks: not in the reactor.
        building = self._runInThread(lambda: self.body(event, event.read()))
        building.addCallback(lambda built: self._post(event, *built))
        building.addErrback(self._explain)
        return building

    def _explain(self, failure: Failure) -> Failure:
        """
        Turn a failure to get a response into L{HookFailed}, whose text
        the log shows without a traceback.
        """
        if failure.check(HookFailed, CancelledError):
            return failure
        reasons = getattr(failure.value, "reasons", None)
        if reasons:
            # ResponseNeverReceived and friends wrap the real reasons.
            failure = reasons[0]
            if failure.check(CancelledError):
                # Cancelled from outside (at shutdown), not failed.
                raise CancelledError()
        raise HookFailed(f"POST {self._url.decode('ascii')}: {_describe(failure)}")

    def _post(self, event: NewMessage, contentType: str, body: bytes) -> Deferred[object]:
        from io import BytesIO

        from twisted.web.client import FileBodyProducer
        from twisted.web.http_headers import Headers

        headers = Headers(
            {
                "Content-Type": [contentType],
                "User-Agent": ["MailHarbor"],
                "Idempotency-Key": [jobID(event, self.name)],
            }
        )
        for key, value in self._extraHeaders.items():
            headers.setRawHeaders(key, [value])
        d = self._agent.request(b"POST", self._url, headers, FileBodyProducer(BytesIO(body)))

        def received(response: Any) -> Deferred[object]:
            finished: Deferred[bytes] = Deferred()
            response.deliverBody(_BoundedBody(finished))

            def check(text: bytes) -> None:
                if not 200 <= response.code < 300:
                    phrase = response.phrase.decode("latin-1", "replace")
                    raise HookFailed(f"HTTP {response.code} {phrase}{_tail(text)}")

            return finished.addCallback(check)

        def noResponse(result: object, timeout: float) -> object:
            raise HookFailed(f"no response from {self._url.decode('ascii')} within {timeout:g}s")

        d.addCallback(received)
        # The whole exchange, the response's body included, within the time.
        d.addTimeout(self._timeout, self._reactor, onTimeoutCancel=noResponse)
        return d

    def stop(self) -> Deferred[None] | None:
        if self._pool is None:
            return None
        return self._pool.closeCachedConnections()  # type: ignore[no-any-return]


def _tail(output: bytes) -> str:
    text = " ".join(output.decode("utf-8", "replace").split())
    return f": {text}" if text else ""


def defaultHookNames(functions: Sequence[object], taken: Sequence[str] = ()) -> list[str]:
    """
    Names for hooks given in code without one: each function's name, made
    into a valid hook name (C{<lambda>} is C{lambda-}), and numbered where
    it would be the same as another's or one of C{taken} (the hooks that
    have names), since a name keys the hook's jobs.
    """
    used = set(taken)
    names: list[str] = []
    for index, function in enumerate(functions):
        name = re.sub(r"[^A-Za-z0-9_-]", "-", getattr(function, "__name__", "")).lstrip("-_")[:60]
        if not _NAME.match(name):
            name = "hook"
        candidate, number = name, index
        while candidate in used:
            candidate = f"{name}-{number}"
            number += 1
        used.add(candidate)
        names.append(candidate)
    return names


def _checkName(name: str) -> str:
    if not _NAME.match(name):
        raise ValueError(f"{name!r} is not a hook name: use letters, digits, - and _")
    return name


class HookSpool:
    """
    The job files: C{tmp/}, C{pending/} and C{dead/} under one directory.

    Every method is blocking; the runner calls them in a worker thread and
    C{mailharbor hooks} calls them directly.  Files are replaced, never
    rewritten in place, so a reader sees either the old job or the new one.
    """

    _log = Logger()

    def __init__(self, directory: str, fs: IFileSystem | None = None) -> None:
        """
        @param fs: The file-system calls that make files durable, for tests
            to record or break.
        """
        self.directory = directory
        self._fs: IFileSystem = RealFileSystem() if fs is None else fs
        self._tmp = os.path.join(directory, "tmp")
        self._pending = os.path.join(directory, "pending")
        self._dead = os.path.join(directory, "dead")
        self._prepared = False

    def isPending(self, jobID: str) -> bool:
        """
        Whether C{jobID} names a job waiting to run.
        """
        return _isJobID(jobID) and os.path.exists(self.pendingPath(jobID))

    def pendingPath(self, jobID: str) -> str:
        """
        The file of a job waiting to run.
        """
        return os.path.join(self._pending, jobID + _JOB_SUFFIX)

    def deadPath(self, jobID: str) -> str:
        """
        The file of a job given up on.
        """
        return os.path.join(self._dead, jobID + _JOB_SUFFIX)

    def prepare(self) -> None:
        """
        Create the spool's directories if need be.

        @raise StorageError: if they cannot be created.
        """
        try:
            for directory in (self._tmp, self._pending, self._dead):
                self._fs.makeDirectories(directory)
        except OSError as e:
            raise StorageError.fromOSError("creating the hook spool", e) from e
        self._prepared = True

    def add(self, jobs: Sequence[Job]) -> None:
        """
        Make new jobs durable in C{pending/}: all of them or, on failure,
        none.

        @raise StorageError: if they could not be written.
        """
        if not self._prepared:
            self.prepare()
        written: list[str] = []
        try:
            for job in jobs:
                written.append(self._write(job, self.pendingPath(job.id)))
            self._fs.syncDirectory(self._pending)
        except OSError as e:
            for path in written:
                quietly(self._fs.unlink, path)
            raise StorageError.fromOSError("recording the message for its hooks", e) from e

    def update(self, job: Job) -> None:
        """
        Replace a pending job's file, after a failed attempt.
        """
        self._write(job, self.pendingPath(job.id))
        self._fs.syncDirectory(self._pending)

    def remove(self, job: Job) -> None:
        """
        Forget a job that succeeded.

        The directory is not fsynced: after a crash the job would run once
        more, which at-least-once delivery allows, and it saves a disk
        flush per message.
        """
        try:
            self._fs.unlink(self.pendingPath(job.id))
        except FileNotFoundError:
            pass

    def bury(self, job: Job) -> None:
        """
        Move a job to the dead letters, with its last error.
        """
        self._write(job, self.deadPath(job.id))
        self._fs.syncDirectory(self._dead)
        self.remove(job)

    def revive(self, jobID: str, now: float) -> Job:
        """
        Put a dead job back in C{pending/}, with its attempts reset, to run
        at once.

        The pending copy is made durable before the dead one is removed,
        so a crash in between leaves the job in both lists rather than in
        neither.

        @raise KeyError: if there is no such dead job.
        """
        if not _isJobID(jobID):
            raise KeyError(jobID)
        job = self._load(self.deadPath(jobID))
        if job is None:
            raise KeyError(jobID)
        job = evolve(job, attempts=0, due=now, error=None)
        self._write(job, self.pendingPath(jobID))
        self._fs.syncDirectory(self._pending)
        try:
            self._fs.unlink(self.deadPath(jobID))
        except FileNotFoundError:
            pass
        self._fs.syncDirectory(self._dead)
        return job

    def pendingJobs(self, unusable: list[tuple[str, str]] | None = None) -> list[Job]:
        """
        Every job waiting to run, oldest first.

        @param unusable: If given, a job file that cannot be read as a job
            is added to it, with why, and left where it is (for a command
            that only looks); otherwise it is logged and set aside as
            C{.bad}, as the server does.
        """
        return self._jobs(self._pending, unusable)

    def deadJobs(self, unusable: list[tuple[str, str]] | None = None) -> list[Job]:
        """
        Every job given up on, oldest first.

        @param unusable: As for L{pendingJobs}.
        """
        return self._jobs(self._dead, unusable)

    def _jobs(self, directory: str, unusable: list[tuple[str, str]] | None = None) -> list[Job]:
        try:
            names = sorted(os.listdir(directory))
        except FileNotFoundError:
            return []
        jobs = []
        for name in names:
            if name.endswith(_JOB_SUFFIX):
                job = self._load(os.path.join(directory, name), unusable)
                if job is not None:
                    jobs.append(job)
        jobs.sort(key=lambda job: (job.created, job.id))
        return jobs

    def _load(self, path: str, unusable: list[tuple[str, str]] | None = None) -> Job | None:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return None
        try:
            return Job.fromJSON(json.loads(data))
        except ValueError as e:
            if unusable is not None:
                unusable.append((path, str(e)))
                return None
            # Set aside, so it is reported once and not on every look.
            self._log.error(
                "Hook job file {path} is unusable ({error}); renamed to {path}.bad",
                path=path,
                error=str(e),
            )
            quietly(os.rename, path, path + ".bad")
            return None

    def _write(self, job: Job, destination: str) -> str:
        data = json.dumps(job.asJSON(), indent=1).encode("utf-8") + b"\n"
        temporary = os.path.join(self._tmp, f"{job.id}.{uuid.uuid4().hex}")
        f = self._fs.create(temporary)
        try:
            try:
                f.write(data)
                self._fs.fsync(f)
            finally:
                f.close()
            self._fs.rename(temporary, destination)
        except BaseException:
            quietly(self._fs.unlink, temporary)
            raise
        return destination


def _isJobID(text: str) -> bool:
    return bool(text) and "/" not in text and not text.startswith(".") and "\0" not in text


class _Entry:
    """
    What the runner knows of one job while it is scheduled or running.

    @ivar call: The delayed call of its next attempt, while one is waiting.
    @ivar running: The attempt in progress, if one is.
    @ivar writing: The last spool write for it; writes for one job happen
        in order, so an old update can never undo a later removal.
    """

    def __init__(self, job: Job) -> None:
        self.job = job
        self.call: Any = None
        self.running: Deferred[None] | None = None
        self.writing: Deferred[None] | None = None


class HookRunner(Service):
    """
    Runs the hooks for each stored message, at least once each, retrying
    failures and surviving restarts; see the module docstring.

    It is a service: L{startService} resumes what the spool holds and
    L{stopService} waits (boundedly) for running hooks.  L{record} and
    L{dispatch} are called by the delivery for each message.
    """

    _log = Logger()

    def __init__(
        self,
        spoolDirectory: str,
        hooks: Sequence[IHook],
        reactor: Any,
        runInThread: RunInThread[Any],
        *,
        fs: IFileSystem | None = None,
        rescanInterval: float = RESCAN_INTERVAL,
        stopTimeout: float = STOP_TIMEOUT,
    ) -> None:
        """
        @param spoolDirectory: Where job files are kept, usually
            L{spoolFor} the Maildir root.
        @param hooks: The hooks to call, each with a distinct name.
        @param reactor: Schedules retries and runs the hooks.
        @param runInThread: Runs blocking spool work off the reactor thread
            and returns a L{Deferred} of its result.
        @param rescanInterval: Seconds between looks at the spool for jobs
            put back with C{mailharbor hooks retry}.
        @param stopTimeout: Seconds L{stop} waits for running hooks before
            cancelling them.
        """
        names = [hook.name for hook in hooks]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"two hooks are named {duplicates[0]!r}")
        self.spool = HookSpool(spoolDirectory, fs)
        self._hooks = {hook.name: hook for hook in hooks}
        self._limits = {
            hook.name: DeferredSemaphore(hook.maxInFlight)
            for hook in hooks
            if hook.maxInFlight is not None
        }
        self._reactor = reactor
        self._runInThread = runInThread
        self._rescanInterval = rescanInterval
        self._stopTimeout = stopTimeout
        self._entries: dict[str, _Entry] = {}
        # When each job id last finished (its file gone), so that a scan
        # that listed the file before it went does not run the job again.
        self._finished: dict[str, float] = {}
        self._writes: set[Deferred[None]] = set()
        self._unknownHooks: set[str] = set()
        self._stopping = False
        self._scanning = False
        self._loop: LoopingCall | None = None

    @property
    def hooks(self) -> tuple[IHook, ...]:
        """
        The hooks, in the order given.
        """
        return tuple(self._hooks.values())

    @property
    def active(self) -> dict[str, Job]:
        """
        The jobs this runner has scheduled or is running, by id.
        """
        return {jobID: entry.job for jobID, entry in self._entries.items()}

    def record(self, events: Sequence[NewMessage]) -> list[Job]:
        """
        Make one job per (event, hook) durable.

        Blocking: call it in the delivery's worker thread, after the Maildir
        commit and before the 250 reply, so that no hook call is lost if
        the server dies after replying.  It touches no state the reactor
        thread uses, and with no hooks it does nothing at all.

        @return: The jobs, to pass to L{dispatch} once the reply is sent.
        @raise StorageError: if the jobs could not be written; none are
            left behind.
        """
        if not self._hooks or not events:
            return []
        now = self._reactor.seconds()
        jobs = []
        for event in events:
            if not _isJobID(event.id) or "," in event.id:
                raise StorageError(f"{event.id!r} cannot name a hook job")
            for name in self._hooks:
                jobs.append(Job(jobID(event, name), name, event, created=now, due=now))
        self.spool.add(jobs)
        return jobs

    def dispatch(self, jobs: Sequence[Job]) -> None:
        """
        Start jobs that L{record} wrote.  Call it in the reactor thread; it
        returns at once and never raises.

        Each job runs on the next turn of the reactor, on its own.  After
        L{stop}, jobs stay in the spool for the next start.
        """
        for job in jobs:
            try:
                self._admit(job)
            except Exception:
                self._log.failure("Cannot start hook job {job}", job=getattr(job, "id", job))

    def startService(self) -> None:
        super().startService()
        self.start()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return self.stop()

    def start(self) -> Deferred[None]:
        """
        Resume every job found in the spool, and look at it again every
        C{rescanInterval} seconds.  Without hooks, do nothing: pending jobs
        stay for when their hooks are configured again.

        @return: A L{Deferred} that fires once the spool has been read; it
            never fails (problems are logged).
        """
        self._stopping = False
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        if not self._hooks:
            return succeed(None)
        loop = self._loop = LoopingCall(self._rescan, resuming=False)
        loop.clock = self._reactor
        d = self._rescan(resuming=True)
        loop.start(self._rescanInterval, now=False)
        return d

    def stop(self) -> Deferred[None]:
        """
        Stop starting jobs, wait up to C{stopTimeout} seconds for running
        ones, then cancel those still running.  Jobs not finished stay in
        the spool, without an attempt counted, for the next start.

        @return: A L{Deferred} that fires when nothing is left running; it
            never fails.
        """
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        self._stopping = True
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        for jobID, entry in list(self._entries.items()):
            if entry.call is not None:
                entry.call.cancel()
                entry.call = None
            if entry.running is None:
                del self._entries[jobID]
        running = [entry.running for entry in self._entries.values() if entry.running is not None]
        if running:
            self._log.info("Waiting for {count} running hook jobs", count=len(running))

            def cancel() -> None:
                self._log.warn(
                    "Hook jobs still running after {seconds}s; cancelling them",
                    seconds=self._stopTimeout,
                )
                for d in running:
                    d.cancel()

            timer = self._reactor.callLater(self._stopTimeout, cancel)
            await DeferredList(running, consumeErrors=True)
            if timer.active():
                timer.cancel()
        while self._writes:
            await DeferredList(list(self._writes), consumeErrors=True)
        self._entries.clear()
        closing = []
        for hook in self._hooks.values():
            closing.append(maybeDeferred(hook.stop))
        for outcome in await DeferredList(closing, consumeErrors=True):
            if not outcome[0]:
                self._log.failure("Error stopping a hook", outcome[1])

    def _rescan(self, resuming: bool) -> Deferred[None]:
        if self._scanning:
            return succeed(None)
        self._scanning = True
        started = self._reactor.seconds()

        def read() -> list[Job]:
            # Nothing is created here: the spool appears with the first
            # job, so a server without hooks leaves no trace on disk.
            return self.spool.pendingJobs()

        def found(jobs: list[Job]) -> None:
            # A job whose file went before this scan started cannot be in
            # its listing, so only later ones need remembering: a job that
            # finished after the scan started may be listed and must not
            # run again.
            self._finished = {k: t for k, t in self._finished.items() if t >= started}
            admitted = 0
            for job in jobs:
                try:
                    admitted += self._admit(job)
                except Exception:
                    self._log.failure("Cannot start hook job {job}", job=job.id)
            if admitted:
                self._log.info(
                    "{what} {count} pending hook jobs",
                    what="Resuming" if resuming else "Found",
                    count=admitted,
                )

        def failed(failure: Failure) -> None:
            self._log.failure(
                "Cannot read the hook spool {directory}", failure, directory=self.spool.directory
            )

        def done(ignored: object) -> None:
            self._scanning = False

        d = self._runInThread(read)
        d.addCallbacks(found, failed)
        d.addBoth(done)
        return d

    def _admit(self, job: Job) -> bool:
        """
        Schedule a job unless it is already scheduled, running or just
        finished.

        @return: whether it was scheduled.
        """
        if self._stopping or job.id in self._entries or job.id in self._finished:
            return False
        if job.hook not in self._hooks:
            if job.hook not in self._unknownHooks:
                self._unknownHooks.add(job.hook)
                self._log.warn(
                    "Hook jobs for {hook}, which is not configured, are kept in "
                    "the spool until it is again",
                    hook=job.hook,
                )
            return False
        entry = self._entries[job.id] = _Entry(job)
        self._schedule(entry, job.due - self._reactor.seconds())
        return True

    def _schedule(self, entry: _Entry, delay: float) -> None:
        entry.call = self._reactor.callLater(max(0.0, delay), self._attempt, entry)

    def _attempt(self, entry: _Entry) -> None:
        entry.call = None
        hook = self._hooks[entry.job.hook]
        limit = self._limits.get(hook.name)
        if limit is None:
            d = maybeDeferred(hook.run, entry.job.event)
        else:
            d = limit.run(hook.run, entry.job.event)
        entry.running = d
        d.addCallbacks(self._succeeded, self._failed, (entry,), None, (entry, hook))
        d.addErrback(
            lambda f: self._log.failure(
                "Error handling the outcome of hook job {job}", f, job=entry.job.id
            )
        )

    def _succeeded(self, result: object, entry: _Entry) -> None:
        entry.running = None
        self._log.debug("Hook {hook} done for {id}", hook=entry.job.hook, id=entry.job.event.id)
        job = entry.job
        self._finish(entry, lambda: self.spool.remove(job), "remove")

    def _failed(self, failure: Failure, entry: _Entry, hook: IHook) -> None:
        entry.running = None
        job = entry.job
        if self._stopping and failure.check(CancelledError):
            # Interrupted by shutdown, not failed: left as it is on disk.
            self._entries.pop(job.id, None)
            return
        attempts = job.attempts + 1
        error = _describe(failure)
        fields = dict(
            hook=job.hook,
            id=job.event.id,
            recipient=job.event.recipient,
            attempt=attempts,
            attempts=hook.retry.attempts,
            error=error,
        )
        if not failure.check(HookFailed):
            self._log.failure(
                "Hook {hook} raised for {id} to {recipient} (attempt {attempt} of {attempts})",
                failure,
                LogLevel.warn,
                **fields,
            )
        if attempts >= hook.retry.attempts or failure.check(PermanentHookFailure):
            self._log.error(
                "Hook {hook} gave up on {id} to {recipient} after {attempt} attempts: {error}; "
                "parked as dead letter {job} (mailharbor hooks retry {job})",
                job=job.id,
                **fields,
            )
            dead = evolve(job, attempts=attempts, due=self._reactor.seconds(), error=error)
            self._finish(entry, lambda: self.spool.bury(dead), "bury")
            return
        delay = hook.retry.delayAfter(attempts)
        entry.job = evolve(job, attempts=attempts, due=self._reactor.seconds() + delay, error=error)
        self._log.warn(
            "Hook {hook} failed for {id} to {recipient} (attempt {attempt} of {attempts}): "
            "{error}; trying again in {delay:g}s",
            delay=delay,
            **fields,
        )
        updated = entry.job
        self._write(entry, lambda: self.spool.update(updated), "update")
        if self._stopping:
            self._entries.pop(job.id, None)
        else:
            self._schedule(entry, delay)

    def _finish(self, entry: _Entry, operation: Callable[[], None], what: str) -> None:
        """
        The job is over: change its file, and forget it once that is done.
        """
        def forget(ignored: object) -> None:
            if self._entries.get(entry.job.id) is entry:
                del self._entries[entry.job.id]
            self._finished[entry.job.id] = self._reactor.seconds()

        self._write(entry, operation, what).addCallback(forget)

    def _write(self, entry: _Entry, operation: Callable[[], None], what: str) -> Deferred[None]:
        """
        Change a job's file in a worker thread, after any earlier change
        to it.  A failure is logged: the job then stays as it was on disk.
        """
        done: Deferred[None] = Deferred()
        previous = entry.writing
        entry.writing = done
        self._writes.add(done)

        def begin(ignored: object = None) -> None:
            d = maybeDeferred(self._runInThread, operation)
            d.addErrback(
                lambda f: self._log.failure(
                    "Cannot {what} hook job {job} in the spool", f, what=what, job=entry.job.id
                )
            )
            d.addBoth(lambda ignored: done.callback(None))

        done.addBoth(lambda result: (self._writes.discard(done), result)[1])
        if previous is None:
            begin()
        else:
            previous.addBoth(begin)
        return done


def _describe(failure: Failure) -> str:
    if failure.check(HookFailed):
        return str(failure.value)
    text = str(failure.value)
    name = failure.type.__name__ if failure.type is not None else "Error"
    return f"{name}: {text}" if text else name


def spoolFor(maildirRoot: str) -> str:
    """
    The hook spool of the Maildirs under C{maildirRoot}.
    """
    return os.path.join(maildirRoot, SPOOL_NAME)


@frozen
class HookConfig:
    """
    One C{[[hook]]} table of the configuration file, checked.

    @ivar name: The hook's unique name.
    @ivar kind: C{"python"}, C{"command"} or C{"webhook"}.
    @ivar target: For C{python}: C{"package.module:function"}.
    @ivar thread: For C{python}: call the function in a worker thread.
    @ivar argv: For C{command}: the program and its arguments.
    @ivar environment: For C{command}: more environment variables.
    @ivar url: For C{webhook}: the http or https URL to POST to.
    @ivar format: For C{webhook}: C{"json"} or C{"multipart"}.
    @ivar headers: For C{webhook}: more request headers.
    @ivar timeout: Seconds an attempt may take.
    @ivar maxInFlight: Calls of this hook that may run at once.
    @ivar attempts: Attempts before the job is parked as a dead letter.
    @ivar backoff: Seconds before the first retry; doubled each time.
    @ivar maxBackoff: The longest wait between attempts.
    """

    name: str
    kind: str
    target: str | None = None
    thread: bool = False
    argv: tuple[str, ...] = ()
    environment: tuple[tuple[str, str], ...] = ()
    url: str | None = None
    format: str = "json"
    headers: tuple[tuple[str, str], ...] = ()
    timeout: float = DEFAULT_TIMEOUT
    maxInFlight: int = DEFAULT_MAX_IN_FLIGHT
    attempts: int = DEFAULT_ATTEMPTS
    backoff: float = DEFAULT_BACKOFF
    maxBackoff: float = DEFAULT_MAX_BACKOFF
    setting: str = field(default="hook", eq=False)

    @property
    def retry(self) -> RetryPolicy:
        """
        The hook's retry policy.
        """
        return RetryPolicy(self.attempts, self.backoff, self.maxBackoff)


def parseHooks(tables: object) -> tuple[HookConfig, ...]:
    """
    Check the C{[[hook]]} array of tables of the configuration file.

    Nothing is imported or run here; L{loadHooks} does that.

    @param tables: The value of the top-level C{hook} key, if any.
    @raise ConfigError: naming the first setting that is wrong, as
        C{hook[0].url}.
    """
    if tables is None:
        return ()
    if isinstance(tables, Mapping) or not isinstance(tables, (list, tuple)):
        raise ConfigError("hook", "must be an array of tables: write each hook as a [[hook]] table")
    configs: list[HookConfig] = []
    for index, table in enumerate(tables):
        setting = f"hook[{index}]"
        config = _parseHook(table, setting)
        if any(other.name == config.name for other in configs):
            raise ConfigError(f"{setting}.name", f"another hook is already named {config.name!r}")
        configs.append(config)
    return tuple(configs)


def _parseHook(table: object, setting: str) -> HookConfig:
    if not isinstance(table, Mapping):
        raise ConfigError(setting, "must be a table")
    kind = table.get("kind")
    if kind not in KINDS:
        raise ConfigError(f"{setting}.kind", f"must be one of {', '.join(KINDS)}")
    unknown = sorted(set(table) - _COMMON_KEYS - _KIND_KEYS[kind])
    if unknown:
        raise ConfigError(f"{setting}.{unknown[0]}", f"is not a setting of a {kind} hook")
    name = table.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(
            f"{setting}.name",
            "is required: up to 64 letters, digits, - and _, starting with a letter or digit",
        )
    values: dict[str, Any] = {"name": name, "kind": kind, "setting": setting}
    values["attempts"] = _number(table, "attempts", setting, DEFAULT_ATTEMPTS, 1, whole=True)
    values["backoff"] = _number(table, "backoff", setting, DEFAULT_BACKOFF, 0.001)
    values["maxBackoff"] = _number(table, "max_backoff", setting, DEFAULT_MAX_BACKOFF, 0.001)
    if values["maxBackoff"] < values["backoff"]:
        raise ConfigError(f"{setting}.max_backoff", "must not be less than backoff")
    values["timeout"] = _number(table, "timeout", setting, DEFAULT_TIMEOUT, 0.001)
    values["maxInFlight"] = _number(
        table, "max_in_flight", setting, DEFAULT_MAX_IN_FLIGHT, 1, whole=True
    )
    if kind == "python":
        values["target"] = checkTarget(table.get("target"), f"{setting}.target")
        thread = table.get("thread", False)
        if not isinstance(thread, bool):
            raise ConfigError(f"{setting}.thread", "must be true or false")
        values["thread"] = thread
    elif kind == "command":
        argv = table.get("command")
        if (
            not isinstance(argv, list)
            or not argv
            or not all(isinstance(a, str) and "\0" not in a for a in argv)
            or not argv[0]
        ):
            raise ConfigError(
                f"{setting}.command",
                'must be a list: the program and its arguments, as ["/usr/local/bin/x", "--y"]',
            )
        values["argv"] = tuple(argv)
        environment = _stringTable(table, "environment", setting, _ENVIRONMENT_NAME)
        for key, _ in environment:
            if key.startswith(_ENVIRONMENT_PREFIX):
                raise ConfigError(
                    f"{setting}.environment", f"{key}: MAILHARBOR_ variables are set by MailHarbor"
                )
        values["environment"] = environment
    else:
        url = table.get("url")
        if not isinstance(url, str) or not _validURL(url):
            raise ConfigError(f"{setting}.url", "must be an http:// or https:// URL (ASCII only)")
        values["url"] = url
        format = table.get("format", "json")
        if format not in WEBHOOK_FORMATS:
            raise ConfigError(f"{setting}.format", f"must be one of {', '.join(WEBHOOK_FORMATS)}")
        values["format"] = format
        values["headers"] = _stringTable(table, "headers", setting, _HEADER_NAME)
    return HookConfig(**values)


def _number(
    table: Mapping[str, Any],
    key: str,
    setting: str,
    default: float,
    minimum: float,
    whole: bool = False,
) -> Any:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int if whole else (int, float)):
        raise ConfigError(f"{setting}.{key}", f"must be {'a whole number' if whole else 'a number'}")
    if value < minimum:
        raise ConfigError(f"{setting}.{key}", f"must be at least {minimum:g}")
    return value if whole else float(value)


def _stringTable(
    table: Mapping[str, Any], key: str, setting: str, names: re.Pattern[str]
) -> tuple[tuple[str, str], ...]:
    value = table.get(key, {})
    if not isinstance(value, Mapping):
        raise ConfigError(f"{setting}.{key}", "must be a table of strings")
    pairs = []
    for name, text in value.items():
        if not names.match(name):
            raise ConfigError(f"{setting}.{key}", f"{name!r} is not a valid name")
        if not isinstance(text, str) or any(c in text for c in "\r\n\0"):
            raise ConfigError(f"{setting}.{key}", f"{name}: must be a one-line string")
        pairs.append((name, text))
    return tuple(pairs)


def _validURL(url: str) -> bool:
    if not url.isascii() or any(c.isspace() for c in url):
        return False
    try:
        parts = urlsplit(url)
        parts.port
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def importTarget(target: str, setting: str) -> Callable[[NewMessage], object]:
    """
    Import the function a C{python} hook names.

    @param target: C{"package.module:function"}; the part after the colon
        may be dotted (C{"module:Class.method"}).
    @param setting: The setting to name in errors.
    @raise ConfigError: if the module cannot be imported (for whatever
        reason: it is missing, or raised while being imported), has no
        such attribute, or it is not callable.
    """
    moduleName, _, attributes = target.partition(":")
    try:
        found: Any = importlib.import_module(moduleName)
    except Exception as e:
        raise ConfigError(setting, f"cannot import {moduleName}: {type(e).__name__}: {e}") from e
    for attribute in attributes.split("."):
        try:
            found = getattr(found, attribute)
        except AttributeError:
            raise ConfigError(setting, f"{target}: {moduleName} has no {attributes}") from None
    if not callable(found):
        raise ConfigError(setting, f"{target} is not callable")
    return cast(Callable[[NewMessage], object], found)


def findProgram(program: str, setting: str) -> str:
    """
    Find a command hook's program now, so a typo stops the server from
    starting instead of failing every message later.

    @return: The program's absolute path.
    @raise ConfigError: if it is not an executable file.
    """
    if os.sep in program:
        path = os.path.abspath(program)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
        raise ConfigError(setting, f"{program} is not an executable file")
    found = shutil.which(program)
    if found is None:
        raise ConfigError(setting, f"{program} is not found on PATH")
    return os.path.abspath(found)


def checkHooks(configs: Sequence[HookConfig]) -> None:
    """
    Import every python hook's function and find every command hook's
    program, without building anything: for start-up checks that must not
    need a reactor (C{Options.postOptions}).

    @raise ConfigError: naming the setting at fault.
    """
    for config in configs:
        if config.kind == "python":
            importTarget(config.target or "", f"{config.setting}.target")
        elif config.kind == "command":
            findProgram(config.argv[0], f"{config.setting}.command")


def loadHooks(
    configs: Sequence[HookConfig], reactor: Any, runInThread: RunInThread[Any]
) -> list[IHook]:
    """
    Build the hooks the configuration describes, importing python hooks'
    functions now so that a missing module stops the server at start-up.

    @param reactor: Runs commands, sends requests and times them out.
    @param runInThread: Runs blocking work (reading messages, blocking
        python hooks) in a worker thread.
    @raise ConfigError: naming the setting at fault, as C{hook[0].target}.
    """
    hooks: list[IHook] = []
    for config in configs:
        common: dict[str, Any] = dict(retry=config.retry, maxInFlight=config.maxInFlight)
        if config.kind == "python":
            function = importTarget(config.target or "", f"{config.setting}.target")
            hooks.append(
                PythonHook(
                    function,
                    config.name,
                    timeout=config.timeout,
                    reactor=reactor,
                    runInThread=runInThread if config.thread else None,
                    **common,
                )
            )
        elif config.kind == "command":
            program = findProgram(config.argv[0], f"{config.setting}.command")
            hooks.append(
                CommandHook(
                    (program,) + config.argv[1:],
                    config.name,
                    reactor,
                    runInThread,
                    timeout=config.timeout,
                    environment=dict(config.environment),
                    **common,
                )
            )
        else:
            assert config.url is not None
            hooks.append(
                WebhookHook(
                    config.url,
                    config.name,
                    reactor,
                    runInThread,
                    format=config.format,
                    timeout=config.timeout,
                    headers=dict(config.headers),
                    **common,
                )
            )
    return hooks
