# -*- test-case-name: harbor.test.test_hookkinds,harbor.test.test_hooks -*-
"""
The kinds of hook: L{IHook}, what the runner calls, and its three
providers, L{PythonHook} (a function), L{CommandHook} (a program, given the
message on its standard input) and L{WebhookHook} (an HTTP POST); and
L{loadHooks}, which builds them from the configuration.

Each call of a hook is one attempt for one stored copy; retrying, limits
on calls at once and durability are the runner's
(L{harbor.hooks.runner.HookRunner}).  Nothing here imports the global
reactor: each hook is given the reactor and a way to run blocking work in
a thread.
"""

from __future__ import annotations

import base64
import json
import os
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar, cast

from zope.interface import Attribute, Interface, implementer

from twisted.internet import defer
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol, Protocol
from twisted.python.failure import Failure

from harbor._awaitable import callUserCode
from harbor.hooks.config import (
    DEFAULT_MAX_IN_FLIGHT,
    DEFAULT_MAX_PENDING,
    DEFAULT_RETRY,
    DEFAULT_TIMEOUT,
    WEBHOOK_FORMATS,
    HookConfig,
    RetryPolicy,
    checkName,
)
from harbor.hooks.events import HookFailed, MessageGone, NewMessage, describe, jobID
from harbor.hooks.loading import findProgram, importTarget

T = TypeVar("T")
#: How blocking work is run off the reactor thread: given a function, a
#: L{Deferred} of its result.
RunInThread = Callable[[Callable[[], T]], "Deferred[T]"]

#: Bytes of a command's output or a webhook's response kept for the log.
OUTPUT_LIMIT = 2000


class IHook(Interface):
    """
    Something to tell about each new message.

    A provider may also have C{maxPending}: how many of its jobs may be
    pending before new mail is refused with C{451 4.3.0}, or L{None} for
    no limit.  It is optional, so hooks written before it still provide
    this interface; the runner takes
    L{harbor.hooks.config.DEFAULT_MAX_PENDING} for a hook without it.
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
    (an C{async def} function that awaits L{Deferred}s, or asyncio things
    under Twisted's asyncio reactor: see L{harbor._awaitable}); it succeeds
    unless it raises or its result fails.  This is also how a program that embeds
    MailHarbor registers a handler in code::

        runner = HookRunner(spool, [PythonHook(onMessage, "notify")], reactor, runInThread)
    """

    def __init__(
        self,
        function: Callable[[NewMessage], object],
        name: str,
        *,
        retry: RetryPolicy = DEFAULT_RETRY,
        maxInFlight: int | None = DEFAULT_MAX_IN_FLIGHT,
        maxPending: int | None = DEFAULT_MAX_PENDING,
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
        self.name = checkName(name)
        self.retry = retry
        self.maxInFlight = maxInFlight
        self.maxPending = maxPending
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
            d = callUserCode(self._function, event)
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
        self.ended.callback(cast(BaseException, reason.value))


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
    (empty without authentication), C{MAILHARBOR_CLIENT}, C{MAILHARBOR_ID},
    C{MAILHARBOR_PATH} and C{MAILHARBOR_DELIVERY_ID} (the job's id, the
    same on every retry: see L{NewMessage.deliveryId}).  Exit status 0 is success; any other status, a
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
        retry: RetryPolicy = DEFAULT_RETRY,
        maxInFlight: int | None = DEFAULT_MAX_IN_FLIGHT,
        maxPending: int | None = DEFAULT_MAX_PENDING,
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
        self.name = checkName(name)
        self.retry = retry
        self.maxInFlight = maxInFlight
        self.maxPending = maxPending
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
            MAILHARBOR_DELIVERY_ID=deliveryID(event, self.name),
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
            except Exception:  # noqa: BLE001 -- whatever spawning raises fails this attempt
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
    bytes).  Each request carries the job's id, the same on every retry
    and in every instance, in C{MailHarbor-Delivery-Id} and
    C{Idempotency-Key} headers (and as C{delivery_id} in the JSON), so a
    receiver can drop repeats.  A 2xx status
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
        retry: RetryPolicy = DEFAULT_RETRY,
        maxInFlight: int | None = DEFAULT_MAX_IN_FLIGHT,
        maxPending: int | None = DEFAULT_MAX_PENDING,
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
        self.name = checkName(name)
        self.retry = retry
        self.maxInFlight = maxInFlight
        self.maxPending = maxPending
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
        raise HookFailed(f"POST {self._url.decode('ascii')}: {describe(failure)}")

    def _post(self, event: NewMessage, contentType: str, body: bytes) -> Deferred[object]:
        from io import BytesIO

        from twisted.web.client import FileBodyProducer
        from twisted.web.http_headers import Headers

        headers = Headers(
            {
                "Content-Type": [contentType],
                "User-Agent": ["MailHarbor"],
                "Idempotency-Key": [deliveryID(event, self.name)],
                "MailHarbor-Delivery-Id": [deliveryID(event, self.name)],
            }
        )
        for key, value in self._extraHeaders.items():
            headers.setRawHeaders(key, [value])
        d: Deferred[object] = self._agent.request(b"POST", self._url, headers, FileBodyProducer(BytesIO(body)))

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


def deliveryID(event: NewMessage, hookName: str) -> str:
    """
    The delivery id of a call of hook C{hookName} for C{event}: the one
    the runner set (L{NewMessage.deliveryId}), or else the job's id, which
    it always is, for a hook called outside the runner.
    """
    return event.deliveryId if event.deliveryId is not None else jobID(event, hookName)


def _tail(output: bytes) -> str:
    text = " ".join(output.decode("utf-8", "replace").split())
    return f": {text}" if text else ""


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
        common: dict[str, Any] = {
            "retry": config.retry,
            "maxInFlight": config.maxInFlight,
            "maxPending": config.maxPending,
        }
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
