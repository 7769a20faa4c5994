"""
Tests for L{harbor.hooks}: the new-message hooks, their spool and runner,
their configuration and C{mailharbor hooks}.

The runner's scheduling is tested on a L{Clock} with blocking work run
synchronously; command and webhook hooks are tested for real, with
subprocesses and a loopback HTTP server on the global reactor.
"""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable
from typing import Any

from zope.interface import implementer
from zope.interface.verify import verifyObject

from twisted.application.service import IService
from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from attrs import evolve

from harbor.cli import main
from harbor.cli.parser import buildParser
from harbor._syntax import ConfigError
from harbor.hooks.config import HookConfig, RetryPolicy, parseHooks
from harbor.hooks.events import HookFailed, Job, MessageGone, NewMessage, PermanentHookFailure, jobID
from harbor.hooks.kinds import CommandHook, IHook, PythonHook, WebhookHook, loadHooks
from harbor.hooks.loading import checkHooks, defaultHookNames
from harbor.hooks.runner import HookRunner
from harbor.hooks.spool import HookSpool, spoolFor
from harbor.store.fs import StorageError
from harbor.test._support import RecordingFileSystem, pollUntil, processGone

NOW = 1_700_000_000.0
MESSAGE = (
    b"Return-Path: <sender@example.org>\n"
    b"Delivered-To: alice@example.com\n"
    b"From: Sender <sender@example.org>\n"
    b"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\n"
    b"\n"
    b"Hello Alice,\n\x00\xff binary-ish bytes survive\n"
)

# The commented [[hook]] block proposed for etc/mailharbor.toml, without
# its comment marks: it must keep parsing.
EXAMPLE_HOOKS = """
[[hook]]
name = "notify"
kind = "python"
target = "mypackage.hooks:newMessage"
thread = false

[[hook]]
name = "archive"
kind = "command"
command = ["/usr/local/bin/archive-mail", "--quiet"]
environment = { ARCHIVE_DIR = "/srv/archive" }
timeout = 60

[[hook]]
name = "crm"
kind = "webhook"
url = "https://hooks.example.com/mail"
format = "json"
headers = { Authorization = "Bearer change-me" }
timeout = 60
max_in_flight = 4
attempts = 8
backoff = 30
max_backoff = 3600
"""


def runSynchronously(f: Callable[[], Any]) -> Deferred[Any]:
    """
    A stand-in for a thread pool: run C{f} now.
    """
    return maybeDeferred(f)


def runInRealThread(f: Callable[[], Any]) -> Deferred[Any]:
    """
    The reactor's thread pool, as the server uses it.
    """
    from twisted.internet.threads import deferToThread

    return deferToThread(f)


def exampleHandler(event: NewMessage) -> None:
    """
    A python hook target for L{loadHooks} to import.
    """


NOT_CALLABLE = 42


def storeMessage(testCase: SynchronousTestCase, data: bytes = MESSAGE, count: int = 1) -> NewMessage:
    """
    Put a message in a fresh Maildir's C{new/} as the server would, and
    describe it as the delivery would.
    """
    root = os.path.abspath(testCase.mktemp())
    maildir = os.path.join(root, "example.com")
    for sub in ("tmp", "new", "cur"):
        os.makedirs(os.path.join(maildir, sub))
    messageID = f"{int(NOW)}.M{count}P4242Q{count}.mx.example.com"
    path = os.path.join(maildir, "new", f"{messageID},S={len(data)}")
    with open(path, "wb") as f:
        f.write(data)
    return NewMessage(
        sender="sender@example.org",
        recipient="alice@example.com",
        user=None,
        client="192.0.2.7",
        path=path,
        id=messageID,
    )


WAIT = object()


@implementer(IHook)
class FakeHook:
    """
    A hook whose calls are recorded and whose outcomes are scripted.

    @ivar outcomes: One per call, in order: L{None} for success, an
        exception to fail with, or L{WAIT} for a L{Deferred} the test
        fires (kept in C{waiting}).  Calls beyond the script succeed.
    """

    def __init__(
        self,
        name: str = "fake",
        outcomes: list[object] | None = None,
        retry: RetryPolicy = RetryPolicy(attempts=3, backoff=10, maxBackoff=15),
        maxInFlight: int | None = None,
    ) -> None:
        self.name = name
        self.retry = retry
        self.maxInFlight = maxInFlight
        self.outcomes = list(outcomes or [])
        self.calls: list[NewMessage] = []
        self.waiting: list[Deferred[object]] = []
        self.cancelled: list[NewMessage] = []
        self.stopped = False

    def run(self, event: NewMessage) -> Deferred[object]:
        self.calls.append(event)
        outcome = self.outcomes.pop(0) if self.outcomes else None
        if outcome is WAIT:
            d: Deferred[object] = Deferred(lambda d: self.cancelled.append(event))
            self.waiting.append(d)
            return d
        if isinstance(outcome, BaseException):
            return fail(outcome)
        return succeed(None)

    def stop(self) -> None:
        self.stopped = True


class NewMessageTests(SynchronousTestCase):
    """
    Tests for L{NewMessage} and L{Job}.
    """

    def test_messageParsedOnceOnFirstUse(self) -> None:
        """
        C{message} parses the stored file on first access, with the default
        policy (so headers are decoded), and then keeps the same object.
        """
        event = storeMessage(self)
        message = event.message
        self.assertEqual(message["Subject"], "Gr\u00fc\u00dfe")
        os.unlink(event.path)
        self.assertIs(event.message, message)

    def test_notParsedUntilAsked(self) -> None:
        """
        Making the value reads nothing: an event for a file that does not
        exist yet is fine until C{message} is asked for.
        """
        event = NewMessage("s@x.org", "a@example.com", None, "192.0.2.1", "/nonexistent/new/1,S=1", "1")
        self.assertEqual(event.recipient, "a@example.com")
        self.assertRaises(MessageGone, lambda: event.message)

    def test_locateFollowsMailReader(self) -> None:
        """
        When a mail reader has moved the file to C{cur/} and added flags,
        L{NewMessage.locate} and C{message} still find it.
        """
        event = storeMessage(self)
        maildir = os.path.dirname(os.path.dirname(event.path))
        moved = os.path.join(maildir, "cur", os.path.basename(event.path) + ":2,S")
        os.rename(event.path, moved)
        self.assertEqual(event.locate(), moved)
        self.assertEqual(event.read(), MESSAGE)

    def test_goneIsPermanent(self) -> None:
        """
        A deleted message raises L{MessageGone}, a permanent failure, so
        its jobs are not retried in vain.
        """
        event = storeMessage(self)
        os.unlink(event.path)
        error = self.assertRaises(MessageGone, event.read)
        self.assertIsInstance(error, PermanentHookFailure)

    def test_jobRoundTrip(self) -> None:
        """
        A job survives being written as JSON and read back, as it must to
        survive a restart.
        """
        event = storeMessage(self)
        job = Job(jobID(event, "h"), "h", event, created=NOW, due=NOW + 30, attempts=2, error="HTTP 500")
        self.assertEqual(Job.fromJSON(json.loads(json.dumps(job.asJSON()))), job)
        self.assertEqual(job.id, f"{event.id},h")

    def test_badJobRefused(self) -> None:
        """
        Job.fromJSON refuses what is not a job of a known version.
        """
        self.assertRaises(ValueError, Job.fromJSON, {"version": 99})
        self.assertRaises(ValueError, Job.fromJSON, [])

    def test_timesOutOfRangeRefused(self) -> None:
        """
        A hand-edited job whose times no clock can show (infinite, NaN,
        past the year 9999, negative) is refused like any unusable job,
        so listing it cannot crash.
        """
        event = storeMessage(self)
        good = Job(jobID(event, "h"), "h", event, created=NOW, due=NOW + 30, attempts=2, error=None).asJSON()
        for key, value in [("due", float("inf")), ("due", float("nan")), ("created", 1e20), ("due", -1)]:
            self.assertRaises(ValueError, Job.fromJSON, {**good, key: value})


class DefaultHookNamesTests(SynchronousTestCase):
    """
    Tests for L{defaultHookNames}, the names of hooks given in code.
    """

    def test_validAndDistinct(self) -> None:
        """
        Lambdas, private functions and nameless callables get valid hook
        names, distinct from each other, so each can be a PythonHook.
        """

        def _private(event: NewMessage) -> None:
            pass

        functions = [lambda e: None, lambda e: None, _private, object()]
        names = defaultHookNames(functions)
        self.assertEqual(names, ["lambda-", "lambda--1", "private", "hook"])
        for function, name in zip(functions, names):
            self.assertEqual(PythonHook(function, name).name, name)  # type: ignore[arg-type]

    def test_namesTakenElsewhere(self) -> None:
        """
        A default name steers clear of the names hooks already have (given
        in code or in the configuration file).
        """

        def stored(event: NewMessage) -> None:
            pass

        self.assertEqual(defaultHookNames([stored, stored], ["stored", "stored-0"]), ["stored-1", "stored-2"])


class ParseHooksTests(SynchronousTestCase):
    """
    Tests for L{parseHooks}.
    """

    def assertConfigError(self, tables: object, setting: str) -> ConfigError:
        """
        Parsing C{tables} raises L{ConfigError} naming C{setting}.
        """
        error = self.assertRaises(ConfigError, parseHooks, tables)
        self.assertEqual(error.setting, setting, str(error))
        return error

    def test_exampleParses(self) -> None:
        """
        The example block for the configuration file gives one hook of
        each kind, with its settings.
        """
        python, command, webhook = parseHooks(tomllib.loads(EXAMPLE_HOOKS)["hook"])
        self.assertEqual(
            python, HookConfig(name="notify", kind="python", target="mypackage.hooks:newMessage")
        )
        self.assertEqual(command.argv, ("/usr/local/bin/archive-mail", "--quiet"))
        self.assertEqual(command.environment, (("ARCHIVE_DIR", "/srv/archive"),))
        self.assertEqual(webhook.url, "https://hooks.example.com/mail")
        self.assertEqual(webhook.headers, (("Authorization", "Bearer change-me"),))
        self.assertEqual(webhook.retry, RetryPolicy(8, 30.0, 3600.0))
        self.assertEqual(webhook.setting, "hook[2]")

    def test_defaults(self) -> None:
        """
        Unset settings take their documented defaults.
        """
        (config,) = parseHooks([{"name": "w", "kind": "webhook", "url": "http://127.0.0.1/x"}])
        self.assertEqual(
            (config.format, config.timeout, config.maxInFlight, config.attempts, config.backoff, config.maxBackoff),
            ("json", 60.0, 4, 8, 30.0, 3600.0),
        )
        self.assertEqual(parseHooks(None), ())

    def test_errorsNameTheSetting(self) -> None:
        """
        Each mistake is reported against the setting at fault, by its index
        in the array of tables.
        """
        ok = {"name": "a", "kind": "command", "command": ["/bin/true"]}
        self.assertConfigError([ok, {"name": "b", "kind": "webhook"}], "hook[1].url")
        self.assertConfigError([{"name": "w", "kind": "webhook", "url": "ftp://x/"}], "hook[0].url")
        self.assertConfigError([{"name": "a", "kind": "smtp"}], "hook[0].kind")
        self.assertConfigError([{"kind": "command", "command": ["x"]}], "hook[0].name")
        self.assertConfigError([{"name": "a b", "kind": "command", "command": ["x"]}], "hook[0].name")
        self.assertConfigError([ok, ok], "hook[1].name")
        self.assertConfigError([{**ok, "url": "http://x/"}], "hook[0].url")
        self.assertConfigError([{**ok, "command": "rm -rf /"}], "hook[0].command")
        self.assertConfigError([{**ok, "command": []}], "hook[0].command")
        self.assertConfigError([{**ok, "environment": {"MAILHARBOR_ID": "x"}}], "hook[0].environment")
        self.assertConfigError([{**ok, "attempts": 0}], "hook[0].attempts")
        self.assertConfigError([{**ok, "attempts": 2.5}], "hook[0].attempts")
        self.assertConfigError([{**ok, "timeout": "60"}], "hook[0].timeout")
        self.assertConfigError([{**ok, "backoff": 60, "max_backoff": 10}], "hook[0].max_backoff")
        self.assertConfigError([{"name": "p", "kind": "python", "target": "no colon"}], "hook[0].target")
        self.assertConfigError(
            [{"name": "w", "kind": "webhook", "url": "http://x/", "format": "xml"}], "hook[0].format"
        )
        self.assertConfigError(
            [{"name": "w", "kind": "webhook", "url": "http://x/", "headers": {"X": "a\r\nB: c"}}],
            "hook[0].headers",
        )

    def test_singleTableRefused(self) -> None:
        """
        C{[hook]} (one table) instead of C{[[hook]]} is explained.
        """
        error = self.assertConfigError({"name": "a", "kind": "python"}, "hook")
        self.assertIn("[[hook]]", error.problem)


class LoadHooksTests(SynchronousTestCase):
    """
    Tests for L{loadHooks} and L{checkHooks}.
    """

    def test_buildsEachKind(self) -> None:
        """
        Each configured kind becomes its hook, importing python targets and
        finding command programs; every hook provides L{IHook}.
        """
        self.patch(os, "environ", {**os.environ, "PATH": os.path.dirname(sys.executable)})
        configs = parseHooks(
            [
                {"name": "p", "kind": "python", "target": "harbor.test.test_hooks:exampleHandler"},
                {"name": "c", "kind": "command", "command": [os.path.basename(sys.executable), "-c", ""]},
                {"name": "w", "kind": "webhook", "url": "http://127.0.0.1:9/", "max_in_flight": 2},
            ]
        )
        hooks = loadHooks(configs, Clock(), runSynchronously)
        self.assertEqual([type(h) for h in hooks], [PythonHook, CommandHook, WebhookHook])
        self.assertEqual([h.name for h in hooks], ["p", "c", "w"])
        self.assertEqual(hooks[2].maxInFlight, 2)
        for hook in hooks:
            self.assertTrue(verifyObject(IHook, hook))

    def test_importErrorNamesTarget(self) -> None:
        """
        A python target that cannot be imported is a L{ConfigError} naming
        C{hook[N].target}, whether the module is missing, lacks the
        function, or what it names is not callable.
        """
        for target in (
            "harbor.no_such_module:handler",
            "harbor.test.test_hooks:noSuchHandler",
            "harbor.test.test_hooks:NOT_CALLABLE",
        ):
            configs = parseHooks(
                [
                    {"name": "ok", "kind": "python", "target": "harbor.test.test_hooks:exampleHandler"},
                    {"name": "bad", "kind": "python", "target": target},
                ]
            )
            error = self.assertRaises(ConfigError, loadHooks, configs, Clock(), runSynchronously)
            self.assertEqual(error.setting, "hook[1].target")
            error = self.assertRaises(ConfigError, checkHooks, configs)
            self.assertEqual(error.setting, "hook[1].target")

    def test_missingProgramNamesCommand(self) -> None:
        """
        A command whose program does not exist stops the start with a
        L{ConfigError} naming C{hook[N].command}.
        """
        configs = parseHooks([{"name": "c", "kind": "command", "command": ["no-such-program-xyz"]}])
        error = self.assertRaises(ConfigError, checkHooks, configs)
        self.assertEqual(error.setting, "hook[0].command")
        configs = parseHooks([{"name": "c", "kind": "command", "command": ["/nonexistent/prog"]}])
        error = self.assertRaises(ConfigError, loadHooks, configs, Clock(), runSynchronously)
        self.assertEqual(error.setting, "hook[0].command")

    def test_badHookName(self) -> None:
        """
        Hooks built in code need a name that can name a file.
        """
        self.assertRaises(ValueError, PythonHook, exampleHandler, "../etc")


class PythonHookTests(SynchronousTestCase):
    """
    Tests for L{PythonHook}.
    """

    def setUp(self) -> None:
        self.event = storeMessage(self)

    def test_plainValue(self) -> None:
        """
        A function returning a plain value succeeds and is given the event.
        """
        seen = []
        hook = PythonHook(seen.append, "p")
        self.successResultOf(hook.run(self.event))
        self.assertEqual(seen, [self.event])

    def test_deferred(self) -> None:
        """
        A function returning a L{Deferred} succeeds or fails with it.
        """
        d: Deferred[None] = Deferred()
        result = PythonHook(lambda event: d, "p").run(self.event)
        self.assertNoResult(result)
        d.errback(HookFailed("no"))
        self.failureResultOf(result, HookFailed)

    def test_coroutine(self) -> None:
        """
        An C{async def} function is run as a coroutine awaiting
        L{Deferred}s.
        """
        gate: Deferred[str] = Deferred()
        seen = []

        async def handler(event: NewMessage) -> None:
            seen.append(await gate)

        result = PythonHook(handler, "p").run(self.event)
        self.assertNoResult(result)
        gate.callback("opened")
        self.successResultOf(result)
        self.assertEqual(seen, ["opened"])

    def test_raising(self) -> None:
        """
        A function that raises fails the call; nothing propagates.
        """
        def handler(event: NewMessage) -> None:
            raise ZeroDivisionError()

        self.failureResultOf(PythonHook(handler, "p").run(self.event), ZeroDivisionError)

    def test_timeout(self) -> None:
        """
        A call running past the timeout is cancelled and fails as
        L{HookFailed}.
        """
        clock = Clock()
        cancelled = []
        hook = PythonHook(
            lambda event: Deferred(cancelled.append), "p", timeout=5, reactor=clock
        )
        result = hook.run(self.event)
        clock.advance(4.9)
        self.assertNoResult(result)
        clock.advance(0.1)
        self.assertIn("within 5s", str(self.failureResultOf(result, HookFailed).value))
        self.assertEqual(len(cancelled), 1)

    def test_inThread(self) -> None:
        """
        With C{runInThread} the function goes through it, off the reactor
        thread.
        """
        ran = []

        def runInThread(f: Callable[[], Any]) -> Deferred[Any]:
            ran.append(f)
            return maybeDeferred(f)

        seen = []
        self.successResultOf(PythonHook(seen.append, "p", runInThread=runInThread).run(self.event))
        self.assertEqual((len(ran), seen), (1, [self.event]))


class RunnerTestCase(SynchronousTestCase):
    """
    A runner on a L{Clock}, with a spool in a temporary directory and
    blocking work done synchronously.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.spoolDirectory = os.path.abspath(self.mktemp())
        self.fs = RecordingFileSystem()
        self.event = storeMessage(self)

    def runner(self, *hooks: IHook, **kwargs: Any) -> HookRunner:
        """
        A runner on the test's spool and clock, stopped at cleanup.
        """
        runner = HookRunner(self.spoolDirectory, hooks, self.clock, runSynchronously, fs=self.fs, **kwargs)
        self.addCleanup(runner.stop)
        return runner

    def pending(self) -> list[str]:
        """
        The file names in the spool's C{pending/}.
        """
        return sorted(os.listdir(os.path.join(self.spoolDirectory, "pending")))

    def dead(self) -> list[str]:
        """
        The file names in the spool's C{dead/}.
        """
        return sorted(os.listdir(os.path.join(self.spoolDirectory, "dead")))

    def onDisk(self, job: Job) -> Job:
        """
        The job as its pending file now describes it.
        """
        with open(os.path.join(self.spoolDirectory, "pending", job.id + ".json"), "rb") as f:
            return Job.fromJSON(json.load(f))


class RecordTests(RunnerTestCase):
    """
    Tests for L{HookRunner.record}.
    """

    def test_jobFilePerEventAndHook(self) -> None:
        """
        One job file per (event, hook) is written, fsynced, renamed into
        C{pending/}, and the directory is fsynced, before record returns.
        """
        other = storeMessage(self, count=2)
        runner = self.runner(FakeHook("a"), FakeHook("b"))
        jobs = runner.record([self.event, other])
        self.assertEqual(
            [job.id for job in jobs],
            [f"{self.event.id},a", f"{self.event.id},b", f"{other.id},a", f"{other.id},b"],
        )
        self.assertEqual(self.pending(), sorted(job.id + ".json" for job in jobs))
        pendingDirectory = os.path.join(self.spoolDirectory, "pending")
        durable = [(name, path) for name, path in self.fs.calls if name != "makeDirectories"]
        for index, job in enumerate(jobs):
            create, fsync, rename = durable[3 * index : 3 * index + 3]
            self.assertEqual(create[0], "create")
            self.assertTrue(create[1].startswith(os.path.join(self.spoolDirectory, "tmp", job.id)))
            self.assertEqual(fsync, ("fsync", create[1]))
            self.assertEqual(rename, ("rename", os.path.join(pendingDirectory, job.id + ".json")))
        self.assertEqual(durable[-1], ("syncDirectory", pendingDirectory))
        self.assertEqual(self.onDisk(jobs[0]), jobs[0])
        self.assertEqual(jobs[0].due, NOW)

    def test_noHooksNoDisk(self) -> None:
        """
        Without hooks, record does nothing at all: no file, no directory.
        """
        self.assertEqual(self.runner().record([self.event]), [])
        self.assertEqual(self.fs.calls, [])
        self.assertFalse(os.path.exists(self.spoolDirectory))

    def test_startCreatesNothing(self) -> None:
        """
        Starting and stopping a runner, with or without hooks, leaves no
        spool behind until a job is recorded.
        """
        for hooks in ((), (FakeHook(),)):
            runner = self.runner(*hooks)
            self.successResultOf(runner.start())
            self.clock.advance(100)
            self.successResultOf(runner.stop())
        self.assertFalse(os.path.exists(self.spoolDirectory))

    def test_failureLeavesNothing(self) -> None:
        """
        A full disk makes record raise L{StorageError}, leaving no job file
        behind (all or nothing).
        """
        runner = self.runner(FakeHook("a"), FakeHook("b"))
        runner.spool.prepare()
        self.fs.failOn = "syncDirectory"
        error = self.assertRaises(StorageError, runner.record, [self.event])
        self.assertTrue(error.noSpace)
        self.assertEqual(self.pending(), [])
        self.assertEqual(os.listdir(os.path.join(self.spoolDirectory, "tmp")), [])


class DispatchTests(RunnerTestCase):
    """
    Tests for running jobs: L{HookRunner.dispatch}, retries and dead
    letters.
    """

    def test_dispatchRunsAndRemoves(self) -> None:
        """
        A dispatched job runs on the next turn of the reactor, with the
        event; when it succeeds its file is removed.
        """
        hook = FakeHook()
        runner = self.runner(hook)
        runner.dispatch(runner.record([self.event]))
        self.assertEqual(hook.calls, [])
        self.clock.advance(0)
        self.assertEqual(hook.calls, [self.event])
        self.assertEqual(self.pending(), [])
        self.assertEqual(runner.active, {})

    def test_retryWithBackoffThenSuccess(self) -> None:
        """
        A failed attempt is counted in the job file and retried after the
        backoff, doubling each time up to the cap; success then removes the
        job.
        """
        hook = FakeHook(
            outcomes=[HookFailed("500"), HookFailed("500"), HookFailed("500")],
            retry=RetryPolicy(attempts=5, backoff=10, maxBackoff=15),
        )
        runner = self.runner(hook)
        (job,) = runner.record([self.event])
        runner.dispatch([job])
        self.clock.advance(0)
        self.assertEqual(len(hook.calls), 1)
        updated = self.onDisk(job)
        self.assertEqual((updated.attempts, updated.error, updated.due), (1, "500", NOW + 10))
        self.clock.advance(9.9)
        self.assertEqual(len(hook.calls), 1)
        self.clock.advance(0.1)
        self.assertEqual(len(hook.calls), 2)
        self.assertEqual(self.onDisk(job).attempts, 2)
        self.clock.advance(14.9)
        self.assertEqual(len(hook.calls), 2, "the second wait is capped at 15s, not 20s")
        self.clock.advance(0.1)
        self.assertEqual(len(hook.calls), 3)
        self.clock.advance(15)
        self.assertEqual(len(hook.calls), 4)
        self.assertEqual(self.pending(), [])
        self.assertEqual(self.dead(), [])

    def test_deadLetterAfterAttempts(self) -> None:
        """
        After the configured number of failed attempts the job moves to
        C{dead/} with its last error and is not tried again.
        """
        hook = FakeHook(outcomes=[HookFailed("one"), HookFailed("two"), HookFailed("three")])
        runner = self.runner(hook)
        (job,) = runner.record([self.event])
        runner.dispatch([job])
        self.clock.advance(0)
        self.clock.advance(10)
        self.clock.advance(15)
        self.assertEqual(len(hook.calls), 3)
        self.assertEqual(self.pending(), [])
        (dead,) = runner.spool.deadJobs()
        self.assertEqual((dead.id, dead.attempts, dead.error), (job.id, 3, "three"))
        self.clock.advance(10_000)
        self.assertEqual(len(hook.calls), 3)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_permanentFailureDeadAtOnce(self) -> None:
        """
        L{PermanentHookFailure} parks the job at once, without retries.
        """
        hook = FakeHook(outcomes=[PermanentHookFailure("cannot parse")])
        runner = self.runner(hook)
        runner.dispatch(runner.record([self.event]))
        self.clock.advance(0)
        self.assertEqual([job.error for job in runner.spool.deadJobs()], ["cannot parse"])
        self.assertEqual(len(hook.calls), 1)

    def test_unexpectedExceptionLoggedNotRaised(self) -> None:
        """
        A hook raising an unexpected exception (synchronously, even) is
        logged with its traceback and retried; dispatch does not raise.
        """
        @implementer(IHook)
        class Broken(FakeHook):
            def run(self, event: NewMessage) -> Deferred[object]:
                self.calls.append(event)
                raise ZeroDivisionError("oops")

        hook = Broken()
        runner = self.runner(hook)
        (job,) = runner.record([self.event])
        runner.dispatch([job])
        self.clock.advance(0)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertEqual(self.onDisk(job).error, "ZeroDivisionError: oops")

    def test_slowHookDoesNotBlockOthers(self) -> None:
        """
        A hook that never finishes holds up neither another hook's job for
        the same message nor jobs for later messages.
        """
        slow = FakeHook("slow", outcomes=[WAIT, WAIT])
        quick = FakeHook("quick")
        runner = self.runner(slow, quick)
        later = storeMessage(self, count=2)
        runner.dispatch(runner.record([self.event]))
        runner.dispatch(runner.record([later]))
        self.clock.advance(0)
        self.assertEqual(quick.calls, [self.event, later])
        self.assertEqual(self.pending(), sorted([f"{self.event.id},slow.json", f"{later.id},slow.json"]))

    def test_maxInFlight(self) -> None:
        """
        No more than C{maxInFlight} calls of a hook run at once; the others
        wait their turn and run as earlier ones finish.
        """
        hook = FakeHook(outcomes=[WAIT] * 5, maxInFlight=2)
        runner = self.runner(hook)
        events = [storeMessage(self, count=n) for n in range(5)]
        runner.dispatch(runner.record(events))
        self.clock.advance(0)
        self.assertEqual(len(hook.calls), 2)
        hook.waiting[0].callback(None)
        self.assertEqual(len(hook.calls), 3)
        hook.waiting[1].errback(HookFailed("x"))
        self.assertEqual(len(hook.calls), 4)
        self.assertEqual(len(runner.active), 4)

    def test_dispatchTwiceRunsOnce(self) -> None:
        """
        A job already scheduled is not scheduled again.
        """
        hook = FakeHook()
        runner = self.runner(hook)
        jobs = runner.record([self.event])
        runner.dispatch(jobs)
        runner.dispatch(jobs)
        self.clock.advance(0)
        self.assertEqual(len(hook.calls), 1)

    def test_dispatchNeverRaises(self) -> None:
        """
        dispatch logs, rather than raises, what it cannot handle.
        """
        runner = self.runner(FakeHook())
        runner.dispatch([object()])  # type: ignore[list-item]
        self.assertEqual(len(self.flushLoggedErrors(AttributeError)), 1)

    def test_writesForAJobInOrder(self) -> None:
        """
        The removal of a job that succeeded is not even started until the
        update of its failed attempt is on disk, so it cannot be undone.
        """
        threads: list[tuple[Callable[[], Any], Deferred[Any]]] = []

        def later(f: Callable[[], Any]) -> Deferred[Any]:
            d: Deferred[Any] = Deferred()
            threads.append((f, d))
            return d

        hook = FakeHook(outcomes=[HookFailed("x")])
        runner = HookRunner(self.spoolDirectory, [hook], self.clock, later)
        (job,) = runner.record([self.event])
        runner.dispatch([job])
        self.clock.advance(0)
        self.clock.advance(10)
        self.assertEqual(len(hook.calls), 2)
        self.assertEqual(len(threads), 1, "the removal waits for the update")
        while threads:
            f, d = threads.pop(0)
            d.callback(f())
        self.assertEqual(self.pending(), [])
        self.assertEqual(runner.active, {})


class RestartTests(RunnerTestCase):
    """
    Tests for resuming after a restart: L{HookRunner.start}, L{stop} and
    the rescans.
    """

    def test_resumesPendingExactlyOnceMore(self) -> None:
        """
        Jobs recorded by a server that died before dispatching them are run
        by the next one, once, and then are gone for the one after.
        """
        self.runner(FakeHook("a"), FakeHook("b")).record([self.event])
        hookA, hookB = FakeHook("a"), FakeHook("b")
        second = self.runner(hookA, hookB)
        self.successResultOf(second.start())
        self.clock.advance(0)
        self.assertEqual((hookA.calls, hookB.calls), ([self.event], [self.event]))
        self.assertEqual(self.pending(), [])
        hookC = FakeHook("a")
        self.successResultOf(self.runner(hookC).start())
        self.clock.advance(1000)
        self.assertEqual(hookC.calls, [])

    def test_resumeKeepsAttemptsAndDue(self) -> None:
        """
        A job that failed before the restart keeps its attempt count and
        waits out its backoff.
        """
        first = self.runner(FakeHook(outcomes=[HookFailed("x")]))
        (job,) = first.record([self.event])
        first.dispatch([job])
        self.clock.advance(0)
        self.successResultOf(first.stop())
        hook = FakeHook(outcomes=[HookFailed("y"), HookFailed("z")])
        second = self.runner(hook)
        self.successResultOf(second.start())
        self.clock.advance(9)
        self.assertEqual(hook.calls, [])
        self.clock.advance(1)
        self.assertEqual(len(hook.calls), 1)
        self.clock.advance(15)
        self.assertEqual(len(hook.calls), 2)
        self.assertEqual([j.attempts for j in second.spool.deadJobs()], [3])

    def test_unknownHookKept(self) -> None:
        """
        Jobs of a hook that is no longer configured are neither run nor
        deleted, so they resume if it comes back.
        """
        self.runner(FakeHook("gone")).record([self.event])
        other = FakeHook("other")
        self.successResultOf(self.runner(other).start())
        self.clock.advance(100)
        self.assertEqual(other.calls, [])
        self.assertEqual(self.pending(), [f"{self.event.id},gone.json"])

    def test_rescanFindsRevivedJob(self) -> None:
        """
        A dead job put back (by C{mailharbor hooks retry}) while the server
        runs is found by the next rescan and run.
        """
        hook = FakeHook(outcomes=[PermanentHookFailure("x")])
        runner = self.runner(hook, rescanInterval=30)
        self.successResultOf(runner.start())
        (job,) = runner.record([self.event])
        runner.dispatch([job])
        self.clock.advance(0)
        self.assertEqual(len(runner.spool.deadJobs()), 1)
        runner.spool.revive(job.id, self.clock.seconds())
        self.clock.advance(29)
        self.assertEqual(len(hook.calls), 1)
        self.clock.advance(1)
        self.clock.advance(0)
        self.assertEqual(len(hook.calls), 2)
        self.assertEqual((self.pending(), self.dead()), ([], []))

    def test_rescanDoesNotDuplicate(self) -> None:
        """
        A rescan does not start again a job that is running, waiting for a
        retry, or that a concurrent scan listed just before it finished.
        """
        waiting = FakeHook("waiting", outcomes=[WAIT])
        failing = FakeHook("failing", outcomes=[HookFailed("x")], retry=RetryPolicy(3, 1000, 1000))
        runner = self.runner(waiting, failing, rescanInterval=30)
        self.successResultOf(runner.start())
        runner.dispatch(runner.record([self.event]))
        self.clock.advance(0)
        self.clock.advance(30)
        self.clock.advance(30)
        self.assertEqual((len(waiting.calls), len(failing.calls)), (1, 1))

    def test_dispatchAfterFinishedRescanIgnored(self) -> None:
        """
        If a rescan ran a job before its dispatch arrives, the dispatch does
        not run it again.
        """
        hook = FakeHook()
        runner = self.runner(hook, rescanInterval=30)
        self.successResultOf(runner.start())
        jobs = runner.record([self.event])
        self.clock.advance(30)
        self.clock.advance(0)
        self.assertEqual(len(hook.calls), 1)
        runner.dispatch(jobs)
        self.clock.advance(0)
        self.assertEqual(len(hook.calls), 1)

    def test_stopWaitsThenCancels(self) -> None:
        """
        stop waits for a running hook up to its timeout, then cancels it;
        the job stays pending without an attempt counted.
        """
        hook = FakeHook(outcomes=[WAIT])
        runner = self.runner(hook, stopTimeout=10)
        self.successResultOf(runner.start())
        (job,) = runner.record([self.event])
        runner.dispatch([job])
        self.clock.advance(0)
        stopped = runner.stop()
        self.assertNoResult(stopped)
        self.clock.advance(10)
        self.successResultOf(stopped)
        self.assertEqual(hook.cancelled, [self.event])
        self.assertTrue(hook.stopped)
        self.assertEqual(self.onDisk(job).attempts, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stopLetsRunningHookFinish(self) -> None:
        """
        A hook that finishes within the stop timeout completes normally:
        its job is removed.
        """
        hook = FakeHook(outcomes=[WAIT])
        runner = self.runner(hook, stopTimeout=10)
        runner.dispatch(runner.record([self.event]))
        self.clock.advance(0)
        stopped = runner.stop()
        hook.waiting[0].callback(None)
        self.successResultOf(stopped)
        self.assertEqual((self.pending(), hook.cancelled), ([], []))

    def test_stopCancelsRetriesAndIgnoresDispatch(self) -> None:
        """
        After stop no retry is waiting on the clock, and dispatched jobs
        are left on disk for the next start.
        """
        hook = FakeHook(outcomes=[HookFailed("x")])
        runner = self.runner(hook)
        self.successResultOf(runner.start())
        runner.dispatch(runner.record([self.event]))
        self.clock.advance(0)
        self.successResultOf(runner.stop())
        self.assertEqual(self.clock.getDelayedCalls(), [])
        later = storeMessage(self, count=2)
        runner.dispatch(runner.record([later]))
        self.clock.advance(100)
        self.assertEqual(len(hook.calls), 1)
        self.assertEqual(len(self.pending()), 2)

    def test_service(self) -> None:
        """
        The runner is a service: starting it resumes the spool, stopping it
        returns a L{Deferred}.
        """
        self.runner(FakeHook()).record([self.event])
        hook = FakeHook()
        runner = self.runner(hook)
        self.assertTrue(verifyObject(IService, runner))
        runner.startService()
        self.clock.advance(0)
        self.assertEqual(len(hook.calls), 1)
        self.successResultOf(runner.stopService())

    def test_duplicateNamesRefused(self) -> None:
        """
        Two hooks with one name would share job files: refused.
        """
        self.assertRaises(ValueError, HookRunner, self.spoolDirectory, [FakeHook(), FakeHook()], self.clock, runSynchronously)

    def test_spoolNextToMaildirs(self) -> None:
        """
        The spool lives in C{.hooks} under the Maildir root.
        """
        self.assertEqual(spoolFor("/var/mail"), "/var/mail/.hooks")


COMMAND_SCRIPT = """
import json, os, sys
data = sys.stdin.buffer.read()
env = {k: v for k, v in os.environ.items() if k.startswith("MAILHARBOR_") or k == "EXTRA"}
with open(sys.argv[1], "w") as f:
    json.dump({"env": env, "stdin": data.decode("latin-1"), "argv": sys.argv[2:]}, f)
"""


class CommandHookTests(TestCase):
    """
    Tests for L{CommandHook}, with real processes.
    """

    timeout = 30

    def setUp(self) -> None:
        from twisted.internet import reactor

        self.reactor = reactor
        self.event = storeMessage(self)
        self.output = os.path.abspath(self.mktemp())

    def hook(self, argv: list[str], **kwargs: Any) -> CommandHook:
        """
        A command hook on the global reactor and its thread pool.
        """
        return CommandHook(argv, "cmd", self.reactor, runInRealThread, **kwargs)

    async def test_environmentAndStdin(self) -> None:
        """
        The command gets the stored message on stdin, the envelope in
        C{MAILHARBOR_*} variables plus the configured ones, and its
        arguments verbatim, with no shell to interpret them.
        """
        event = NewMessage(
            "s\u00e9nder@example.org", "alice@example.com", "alice", "2001:db8::1", self.event.path, self.event.id
        )
        hook = self.hook(
            [sys.executable, "-c", COMMAND_SCRIPT, self.output, "$(touch pwned)", "a b;c"],
            environment={"EXTRA": "yes"},
        )
        self.assertTrue(verifyObject(IHook, hook))
        await hook.run(event)
        with open(self.output) as f:
            seen = json.load(f)
        self.assertEqual(seen["stdin"].encode("latin-1"), MESSAGE)
        self.assertEqual(seen["argv"], ["$(touch pwned)", "a b;c"])
        self.assertFalse(os.path.exists("pwned"))
        self.assertEqual(
            seen["env"],
            {
                "MAILHARBOR_SENDER": "s\u00e9nder@example.org",
                "MAILHARBOR_RECIPIENT": "alice@example.com",
                "MAILHARBOR_USER": "alice",
                "MAILHARBOR_CLIENT": "2001:db8::1",
                "MAILHARBOR_ID": self.event.id,
                "MAILHARBOR_PATH": self.event.path,
                "EXTRA": "yes",
            },
        )

    async def test_userEmptyWithoutAuthentication(self) -> None:
        """
        For inbound mail (no authenticated user) C{MAILHARBOR_USER} is
        empty.
        """
        await self.hook([sys.executable, "-c", COMMAND_SCRIPT, self.output]).run(self.event)
        with open(self.output) as f:
            self.assertEqual(json.load(f)["env"]["MAILHARBOR_USER"], "")

    async def test_nonZeroExitFails(self) -> None:
        """
        A non-zero exit status fails the call, with the status and the end
        of the command's output in the error.
        """
        hook = self.hook([sys.executable, "-c", "import sys; print('disk full', file=sys.stderr); sys.exit(3)"])
        error = await self.assertFailure(hook.run(self.event), HookFailed)
        self.assertIn("exited with status 3: disk full", str(error))

    async def test_timeoutKills(self) -> None:
        """
        A command running past its timeout is killed and the call fails.
        """
        script = "import os, sys, time\nopen(sys.argv[1], 'w').write(str(os.getpid()))\ntime.sleep(60)"
        hook = self.hook([sys.executable, "-c", script, self.output], timeout=2)
        started = time.monotonic()
        error = await self.assertFailure(hook.run(self.event), HookFailed)
        self.assertIn("timed out after 2s", str(error))
        self.assertLess(time.monotonic() - started, 20)
        with open(self.output) as f:
            pid = int(f.read())
        self.assertRaises(ProcessLookupError, os.kill, pid, 0)

    async def test_cancelKills(self) -> None:
        """
        Cancelling a call (at shutdown) kills the command.
        """
        script = "import os, sys, time\nopen(sys.argv[1], 'w').write(str(os.getpid()))\ntime.sleep(60)"
        hook = self.hook([sys.executable, "-c", script, self.output], timeout=30)
        d = hook.run(self.event)
        await pollUntil(lambda: os.path.exists(self.output) and os.path.getsize(self.output), "the command started")
        with open(self.output) as f:
            pid = int(f.read())
        d.cancel()
        self.failureResultOf(d)

        await pollUntil(lambda: processGone(pid), "the cancelled command has been killed and reaped")

    async def test_messageGone(self) -> None:
        """
        When the message was deleted before the hook ran, the call fails
        permanently without starting the command.
        """
        os.unlink(self.event.path)
        hook = self.hook([sys.executable, "-c", COMMAND_SCRIPT, self.output])
        try:
            await hook.run(self.event)
        except MessageGone:
            pass
        else:
            self.fail("a hook for a deleted message succeeded")
        self.assertFalse(os.path.exists(self.output))


class Receiver:
    """
    A loopback HTTP server that records POSTs and answers with scripted
    status codes, optionally holding requests until released.
    """

    def __init__(self, testCase: TestCase) -> None:
        from twisted.internet import reactor
        from twisted.protocols.policies import WrappingFactory
        from twisted.web.resource import Resource
        from twisted.web.server import NOT_DONE_YET, Site

        receiver = self
        self.requests: list[tuple[dict[bytes, bytes], bytes]] = []
        self.codes: list[int] = []
        self.hold = False
        self.held: list[tuple[Any, int]] = []
        self.open = 0
        self.maxOpen = 0

        class Endpoint(Resource):
            isLeaf = True

            def render_POST(self, request: Any) -> Any:
                receiver.requests.append((dict(request.getAllHeaders()), request.content.read()))
                code = receiver.codes.pop(0) if receiver.codes else 200
                if not receiver.hold:
                    request.setResponseCode(code)
                    return b"ok" if code < 300 else b"server sad"
                receiver.open += 1
                receiver.maxOpen = max(receiver.maxOpen, receiver.open)
                entry = (request, code)
                receiver.held.append(entry)

                def over(ignored: object) -> None:
                    receiver.open -= 1
                    if entry in receiver.held:
                        receiver.held.remove(entry)

                request.notifyFinish().addBoth(over)
                return NOT_DONE_YET

        self.factory = WrappingFactory(Site(Endpoint()))
        self.port = reactor.listenTCP(0, self.factory, interface="127.0.0.1")
        self.url = f"http://127.0.0.1:{self.port.getHost().port}/hook"
        testCase.addCleanup(self.close)

    def release(self) -> None:
        """
        Answer the oldest held request.
        """
        request, code = self.held.pop(0)
        request.setResponseCode(code)
        request.write(b"ok")
        request.finish()

    async def close(self) -> None:
        while self.held:
            self.release()
        await maybeDeferred(self.port.stopListening)
        await pollUntil(lambda: not self.factory.protocols, "the server's connections have closed")


class WebhookTests(TestCase):
    """
    Tests for L{WebhookHook}, against a loopback HTTP server.
    """

    timeout = 30

    def setUp(self) -> None:
        from twisted.internet import reactor

        self.reactor = reactor
        self.receiver = Receiver(self)
        self.event = storeMessage(self)

    def hook(self, **kwargs: Any) -> WebhookHook:
        """
        A webhook to the test's receiver, its connections closed at cleanup.
        """
        hook = WebhookHook(self.receiver.url, "web", self.reactor, runInRealThread, **kwargs)
        # Added after the receiver's cleanup, so it runs first.
        self.addCleanup(hook.stop)
        return hook

    async def test_json(self) -> None:
        """
        The JSON body carries the envelope, the size and the raw message in
        base64; configured headers and an Idempotency-Key are sent.
        """
        hook = self.hook(headers={"Authorization": "Bearer t"})
        self.assertTrue(verifyObject(IHook, hook))
        await hook.run(self.event)
        ((headers, body),) = self.receiver.requests
        self.assertEqual(headers[b"content-type"], b"application/json")
        self.assertEqual(headers[b"authorization"], b"Bearer t")
        self.assertEqual(headers[b"idempotency-key"], jobID(self.event, "web").encode("ascii"))
        document = json.loads(body)
        self.assertEqual(base64.b64decode(document.pop("message")), MESSAGE)
        self.assertEqual(
            document,
            {
                "id": self.event.id,
                "sender": "sender@example.org",
                "recipient": "alice@example.com",
                "user": None,
                "client": "192.0.2.7",
                "path": self.event.path,
                "size": len(MESSAGE),
            },
        )

    async def test_multipart(self) -> None:
        """
        The multipart body has a JSON metadata part and the raw message as
        a message/rfc822 part, byte for byte.
        """
        await self.hook(format="multipart").run(self.event)
        ((headers, body),) = self.receiver.requests
        contentType = headers[b"content-type"].decode("ascii")
        self.assertTrue(contentType.startswith("multipart/form-data; boundary="), contentType)
        boundary = contentType.split("boundary=", 1)[1].encode("ascii")
        preamble, metadata, message, epilogue = body.split(b"--" + boundary)
        self.assertEqual((preamble, epilogue), (b"", b"--\r\n"))
        metaHeaders, metaBody = metadata.split(b"\r\n\r\n", 1)
        self.assertIn(b'Content-Disposition: form-data; name="metadata"', metaHeaders)
        self.assertEqual(json.loads(metaBody)["recipient"], "alice@example.com")
        self.assertNotIn("message", json.loads(metaBody))
        messageHeaders, raw = message.split(b"\r\n\r\n", 1)
        self.assertIn(b'name="message"', messageHeaders)
        self.assertIn(b"Content-Type: message/rfc822", messageHeaders)
        self.assertEqual(raw, MESSAGE + b"\r\n")

    async def test_errorStatusFails(self) -> None:
        """
        A non-2xx status fails the call, naming the status.
        """
        self.receiver.codes = [500]
        error = await self.assertFailure(self.hook().run(self.event), HookFailed)
        self.assertIn("HTTP 500", str(error))
        self.assertIn("server sad", str(error))

    async def test_noResponseTimesOut(self) -> None:
        """
        A receiver that does not answer within the timeout fails the call.
        """
        self.receiver.hold = True
        error = await self.assertFailure(self.hook(timeout=0.5).run(self.event), HookFailed)
        self.assertIn("no response", str(error))

    async def test_connectionRefused(self) -> None:
        """
        A receiver that is down fails the call with a readable reason.
        """
        await self.receiver.port.stopListening()
        error = await self.assertFailure(self.hook().run(self.event), HookFailed)
        self.assertIn("POST http://127.0.0.1:", str(error))

    async def test_retriedUntil2xxByRunner(self) -> None:
        """
        Through the runner, a 500 is retried after the backoff and the job
        is removed once the receiver answers 200.
        """
        self.receiver.codes = [500, 503]
        hook = self.hook(retry=RetryPolicy(attempts=5, backoff=0.05, maxBackoff=0.1))
        spool = os.path.abspath(self.mktemp())
        runner = HookRunner(spool, [hook], self.reactor, runInRealThread)
        self.addCleanup(runner.stop)
        runner.dispatch(runner.record([self.event]))
        await pollUntil(lambda: not runner.active, "the job is done")
        self.assertEqual(len(self.receiver.requests), 3)
        self.assertEqual(runner.spool.pendingJobs(), [])
        self.assertEqual(runner.spool.deadJobs(), [])
        keys = {headers[b"idempotency-key"] for headers, _ in self.receiver.requests}
        self.assertEqual(len(keys), 1, "every retry carries the same idempotency key")

    async def test_maxInFlight(self) -> None:
        """
        The receiver never sees more than C{maxInFlight} requests at once.
        """
        self.receiver.hold = True
        hook = self.hook(maxInFlight=2)
        runner = HookRunner(os.path.abspath(self.mktemp()), [hook], self.reactor, runInRealThread)
        self.addCleanup(runner.stop)
        runner.dispatch(runner.record([storeMessage(self, count=n) for n in range(5)]))
        for answered in range(5):
            await pollUntil(lambda: len(self.receiver.held) == min(2, 5 - answered), "requests arrive")
            self.receiver.release()
        await pollUntil(lambda: not runner.active, "every job is done")
        self.assertEqual((len(self.receiver.requests), self.receiver.maxOpen), (5, 2))


class CommandLineTests(SynchronousTestCase):
    """
    Tests for C{mailharbor hooks}, run through L{harbor.cli.main}.
    """

    def setUp(self) -> None:
        self.root = os.path.abspath(self.mktemp())
        self.spool = HookSpool(spoolFor(self.root))
        self.event = storeMessage(self)
        self.pendingJob = Job(jobID(self.event, "web"), "web", self.event, NOW, NOW + 60, 2, "HTTP 500")
        self.deadJob = Job(jobID(self.event, "cmd"), "cmd", self.event, NOW, NOW + 99, 8, "exited with status 1")
        self.spool.add([self.pendingJob])
        self.spool.add([self.deadJob])
        self.spool.bury(self.deadJob)

    def invoke(self, *arguments: str) -> tuple[int, str, str]:
        """
        Run C{mailharbor hooks} with C{arguments}: its status and output.
        """
        out, err = io.StringIO(), io.StringIO()
        status = main(["hooks", *arguments], out, err)
        return status, out.getvalue(), err.getvalue()

    def test_listPending(self) -> None:
        """
        C{hooks list} shows each pending job with its hook, attempts and
        last error.
        """
        status, out, err = self.invoke("list", "--maildir", self.root)
        self.assertEqual((status, err), (0, ""))
        header, row = out.splitlines()
        self.assertEqual(header.split(), ["JOB", "HOOK", "ATTEMPTS", "NEXT", "RECIPIENT", "ERROR"])
        self.assertEqual(row.split()[:3], [self.pendingJob.id, "web", "2"])
        self.assertTrue(row.endswith("HTTP 500"))

    def test_listOnAnASCIITerminal(self) -> None:
        """
        A recipient the terminal's encoding cannot show is replaced, not a
        traceback.
        """
        event = evolve(self.event, recipient="jos\u00e9@example.com")
        self.spool.add([Job(jobID(event, "web2"), "web2", event, NOW, NOW + 60, 1, None)])
        out = io.TextIOWrapper(io.BytesIO(), encoding="ascii")
        err = io.StringIO()
        self.assertEqual(main(["hooks", "list", "--maildir", self.root], out, err), 0, err.getvalue())
        out.flush()
        self.assertIn(b"jos?@example.com", out.buffer.getvalue())

    def test_listDeadJSON(self) -> None:
        """
        C{hooks list --dead --json} gives the dead jobs as JSON.
        """
        status, out, err = self.invoke("list", "--dead", "--json", "--spool", self.spool.directory)
        self.assertEqual(status, 0)
        self.assertEqual([Job.fromJSON(j) for j in json.loads(out)], [self.deadJob])

    def test_listReportsUnusableJobFile(self) -> None:
        """
        C{hooks list} names a job file it cannot read on standard error,
        exits 1, still lists the others, and leaves the file where it is
        for the server to set aside.
        """
        broken = self.spool.pendingPath("broken")
        with open(broken, "w") as f:
            f.write("{not json")
        status, out, err = self.invoke("list", "--maildir", self.root)
        self.assertEqual(status, 1)
        self.assertIn(self.pendingJob.id, out)
        self.assertTrue(err.startswith(f"mailharbor: {broken} is not a usable hook job ("), err)
        self.assertEqual((os.path.exists(broken), os.path.exists(broken + ".bad")), (True, False))

    def test_listEmpty(self) -> None:
        """
        An empty or missing spool is not an error.
        """
        status, out, err = self.invoke("list", "--maildir", os.path.abspath(self.mktemp()))
        self.assertEqual(status, 0)
        self.assertIn("No pending hook jobs", out)

    def test_retryOne(self) -> None:
        """
        C{hooks retry JOB} moves a dead job back to pending, attempts reset
        and due now.
        """
        before = time.time()
        status, out, err = self.invoke("retry", self.deadJob.id, "--maildir", self.root)
        self.assertEqual((status, err), (0, ""))
        self.assertIn("Requeued 1 hook job", out)
        self.assertEqual(self.spool.deadJobs(), [])
        revived = [job for job in self.spool.pendingJobs() if job.id == self.deadJob.id][0]
        self.assertEqual((revived.attempts, revived.error), (0, None))
        self.assertGreaterEqual(revived.due, before)

    def test_retryAll(self) -> None:
        """
        C{hooks retry --all} puts back every dead job.
        """
        self.assertEqual(self.invoke("retry", "--all", "--maildir", self.root)[0], 0)
        self.assertEqual(len(self.spool.pendingJobs()), 2)

    def test_retryUnknown(self) -> None:
        """
        Retrying a job that is not dead fails with status 1 and says why.
        """
        status, out, err = self.invoke("retry", "nope", self.pendingJob.id, "--maildir", self.root)
        self.assertEqual(status, 1)
        self.assertIn("nope is not a dead hook job", err)
        self.assertIn(f"{self.pendingJob.id} is pending, not dead", err)

    def test_usage(self) -> None:
        """
        retry needs jobs or --all, not both; bad usage is status 2.
        """
        self.assertEqual(self.invoke("retry", "--maildir", self.root)[0], 2)
        self.assertEqual(self.invoke("retry", "x", "--all")[0], 2)

    def test_wiredIntoAParser(self) -> None:
        """
        C{hooks} is part of C{mailharbor}'s parser, whose C{command} is
        then called as C{harbor.cli.main} calls it.
        """
        parser = buildParser()
        arguments = parser.parse_args(["hooks", "list", "--dead", "--maildir", self.root])
        out = io.StringIO()
        self.assertEqual(arguments.command(arguments, out, io.StringIO(), NOW), 0)
        self.assertIn(self.deadJob.id, out.getvalue())
        arguments = parser.parse_args(["hooks", "retry", "--all", "--maildir", self.root])
        self.assertEqual(arguments.command(arguments, io.StringIO(), io.StringIO(), NOW + 5), 0)
        self.assertEqual(sorted(job.due for job in self.spool.pendingJobs()), [NOW + 5, NOW + 60])

    def test_spoolFromConfig(self) -> None:
        """
        With C{--config} the spool is found under the file's C{maildir};
        an unreadable file is status 2.
        """
        config = os.path.abspath(self.mktemp())
        with open(config, "w") as f:
            f.write(f"maildir = {json.dumps(self.root)}\n")
        status, out, err = self.invoke("list", "--config", config)
        self.assertEqual(status, 0, err)
        self.assertIn(self.pendingJob.id, out)
        status, out, err = self.invoke("list", "--config", config + ".missing")
        self.assertEqual(status, 2)
        self.assertIn("config", err)

    def test_noReactor(self) -> None:
        """
        The command imports no reactor (nor twisted.web), so it starts
        quickly and cannot disturb a server's.
        """
        script = (
            "import sys\n"
            "from harbor.cli import main\n"
            f"status = main(['hooks', 'list', '--spool', {self.spool.directory!r}])\n"
            "assert 'twisted.internet.reactor' not in sys.modules, 'reactor'\n"
            "assert 'twisted.web.client' not in sys.modules, 'web'\n"
            "sys.exit(status)\n"
        )
        environment = dict(os.environ)
        environment["PYTHONPATH"] = os.pathsep.join(sys.path)
        result = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, env=environment, timeout=60
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn(self.pendingJob.id.encode("ascii"), result.stdout)


class PackageTests(SynchronousTestCase):
    """
    Tests for the L{harbor.hooks} package itself: its public names, and
    what importing its light modules costs.
    """

    def test_publicNames(self) -> None:
        """
        Each name in C{harbor.hooks.__all__} can be imported from
        C{harbor.hooks}, and is the object its own module defines.
        """
        import harbor.hooks

        homes = {
            "CommandHook": CommandHook,
            "HookFailed": HookFailed,
            "IHook": IHook,
            "MessageGone": MessageGone,
            "NewMessage": NewMessage,
            "PermanentHookFailure": PermanentHookFailure,
            "PythonHook": PythonHook,
            "RetryPolicy": RetryPolicy,
            "WebhookHook": WebhookHook,
        }
        self.assertEqual(sorted(harbor.hooks.__all__), sorted(homes))
        for name, value in homes.items():
            self.assertIs(getattr(harbor.hooks, name), value)

    def test_unknownName(self) -> None:
        """
        A name C{harbor.hooks} does not offer raises L{AttributeError}, as
        for any module.
        """
        import harbor.hooks

        self.assertRaises(AttributeError, getattr, harbor.hooks, "HookSpool")

    def test_lightModulesImportNoTwisted(self) -> None:
        """
        Importing C{harbor.hooks}, L{harbor.hooks.config} and
        L{harbor.hooks.loading} imports no Twisted module, so that
        L{harbor.config} and L{harbor.policyhook} can import them at
        their top.
        """
        script = (
            "import sys\n"
            "import harbor.hooks, harbor.hooks.config, harbor.hooks.loading\n"
            "found = sorted(m for m in sys.modules if m.split('.')[0] == 'twisted')\n"
            "assert not found, found\n"
        )
        environment = dict(os.environ)
        environment["PYTHONPATH"] = os.pathsep.join(sys.path)
        result = subprocess.run(
            [sys.executable, "-c", script],
            capture_output=True,
            env=environment,
            timeout=60,
            check=False,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
