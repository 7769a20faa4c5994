"""
Tests for L{harbor.policyhook}: the time limit and the default that keep a
slow or broken policy hook from hanging a session or losing mail, the ways
a hook may answer, and loading one by name.
"""

from __future__ import annotations

import os
from typing import Any, cast

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import ILogObserver, Logger, LogLevel, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from harbor._syntax import ConfigError
from harbor.api import Config, buildService
from harbor.policyhook import (
    PolicyHook,
    PolicyRequest,
    Refuse,
    loadPolicyHook,
    recipientsOf,
)
from harbor.smtp._factory import HarborSMTPFactory
from harbor.test._support import SMTPDriver, files, makeDeliverer

REQUEST = PolicyRequest("rcpt", "192.0.2.7", "client.example", None, "s@x.org", ("a@example.com",))
REFUSE = Refuse(550, "5.7.1", "Not here")
# What the tempfail default answers, as etc/mailharbor.toml documents it.
TEMPFAIL = Refuse(451, "4.7.1", "Error: policy check unavailable, try again later")
TEMPFAIL_REPLY = b"451 4.7.1 Error: policy check unavailable, try again later"
ENVELOPE = b"EHLO c\r\nMAIL FROM:<s@x.org>\r\nRCPT TO:<a@example.com>\r\n"

NOT_CALLABLE = 42


def neverAnswers(request: PolicyRequest) -> Deferred[Refuse | None]:
    """
    A policy hook that never answers, for loading by name.
    """
    return Deferred()


class PolicyHookTestCase(SynchronousTestCase):
    """
    A clock and the log of L{PolicyHook}.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.events: list[dict[str, Any]] = []
        self.patch(PolicyHook, "_log", Logger(observer=cast(ILogObserver, self.events.append)))

    def check(self, function: Any, **kwargs: Any) -> Deferred[Refuse | None]:
        """
        Ask C{function}, wrapped in a L{PolicyHook} on C{self.clock}, about
        L{REQUEST}.
        """
        return PolicyHook(function, self.clock, **kwargs).check(REQUEST)


class TimeoutTests(PolicyHookTestCase):
    """
    A hook that never answers gets the default after its time limit.
    """

    def test_acceptAfterTimeout(self) -> None:
        """
        With the C{accept} default, a silent hook's mail is taken once the
        time limit has passed, not before; the timeout is logged as a
        warning naming the stage.
        """
        result = self.check(lambda request: Deferred(), timeout=5)
        self.clock.advance(4.9)
        self.assertNoResult(result)
        self.clock.advance(0.1)
        self.assertIsNone(self.successResultOf(result))
        [event] = self.events
        self.assertEqual(event["log_level"], LogLevel.warn)
        self.assertEqual(formatEvent(event), "Policy hook timed out at rcpt; applying the default")

    def test_tempfailAfterTimeout(self) -> None:
        """
        With the C{tempfail} default, a silent hook's mail is refused with
        451 4.7.1 once the time limit has passed.
        """
        result = self.check(lambda request: Deferred(), timeout=5, default="tempfail")
        self.clock.advance(4.9)
        self.assertNoResult(result)
        self.clock.advance(0.1)
        self.assertEqual(self.successResultOf(result), TEMPFAIL)

    def test_defaultTimeLimit(self) -> None:
        """
        Without a time limit given, a silent hook gets 10 seconds.
        """
        result = self.check(lambda request: Deferred(), default="tempfail")
        self.clock.advance(9.9)
        self.assertNoResult(result)
        self.clock.advance(0.1)
        self.assertEqual(self.successResultOf(result), TEMPFAIL)

    def test_lateAnswerCancelled(self) -> None:
        """
        The silent hook's L{Deferred} is cancelled at the time limit, so
        its answer, if it ever comes, is dropped.
        """
        cancelled: list[Deferred[Any]] = []
        pending: Deferred[Any] = Deferred(cancelled.append)
        result = self.check(lambda request: pending, timeout=1)
        self.clock.advance(1)
        self.assertEqual(cancelled, [pending])
        self.assertIsNone(self.successResultOf(result))

    def test_silentCoroutine(self) -> None:
        """
        A coroutine that never finishes is timed out like a L{Deferred}.
        """

        async def waitForever(request: PolicyRequest) -> Refuse | None:
            await Deferred()
            return REFUSE

        result = self.check(waitForever, timeout=2, default="tempfail")
        self.clock.advance(2)
        self.assertEqual(self.successResultOf(result), TEMPFAIL)

    def test_silentAsyncioCoroutine(self) -> None:
        """
        Under an asyncio loop (Twisted's asyncio reactor), a coroutine that
        awaits asyncio things and never finishes is timed out too, logged
        as a timeout, and its task cancelled.
        """
        import asyncio

        from harbor.test.test_awaitable import insideAsyncio, settle

        cancelled: list[bool] = []

        async def waitForever(request: PolicyRequest) -> Refuse | None:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.append(True)
                raise
            return REFUSE

        async def body() -> list[Any]:
            result = self.check(waitForever, timeout=2, default="tempfail")
            await asyncio.sleep(0)
            self.clock.advance(2)
            return await settle(result)

        self.assertEqual(insideAsyncio(body), [TEMPFAIL])
        self.assertEqual(cancelled, [True])
        [event] = self.events
        self.assertEqual(formatEvent(event), "Policy hook timed out at rcpt; applying the default")

    def test_tempfailOverTheWire(self) -> None:
        """
        Through the protocol, a silent hook with the C{tempfail} default
        answers the RCPT with the documented 451 once the time limit has
        passed, and nothing before.
        """
        deliverer, _ = makeDeliverer(self.mktemp(), clock=self.clock)
        deliverer.policyHook = PolicyHook(lambda request: Deferred(), self.clock, 3, "tempfail")
        smtp = SMTPDriver(deliverer, self.clock)
        self.assertEqual(smtp.replies(ENVELOPE)[-1], b"250 2.1.0 Ok")
        self.clock.advance(2.9)
        self.assertEqual(smtp.take(), b"")
        self.clock.advance(0.1)
        self.assertEqual(smtp.replies(b""), [TEMPFAIL_REPLY])

    def test_tempfailAfterData(self) -> None:
        """
        A hook that fails when asked about the whole message, with the
        C{tempfail} default, gets the message the documented 451 instead of
        250, and nothing is stored.
        """

        def atData(request: PolicyRequest) -> None:
            if request.stage == "data":
                raise RuntimeError("down")

        root = self.mktemp()
        deliverer, _ = makeDeliverer(root, clock=self.clock)
        deliverer.policyHook = PolicyHook(atData, self.clock, 3, "tempfail")
        smtp = SMTPDriver(deliverer, self.clock)
        replies = smtp.replies(ENVELOPE + b"DATA\r\nSubject: x\r\n\r\nhi\r\n.\r\n")
        self.assertEqual(replies[-2:], [b"354 End data with <CR><LF>.<CR><LF>", TEMPFAIL_REPLY])
        self.assertEqual(files(root, "example.com", "new"), [])

    def test_settings(self) -> None:
        """
        The C{policy_hook}, C{policy_hook_timeout} and
        C{policy_hook_default} settings make the server's hook: a silent
        one loaded by name tempfails RCPT after the configured seconds.
        """
        reactor = MemoryReactorClock()
        config = Config.fromMapping(
            {
                "domain": ["example.com"],
                "maildir": os.path.abspath(self.mktemp()),
                "policy_hook": f"{__name__}:neverAnswers",
                "policy_hook_timeout": 7,
                "policy_hook_default": "tempfail",
            }
        )
        # Listening (in memory) is enough: the Maildirs made at start are
        # not needed to answer RCPT.
        buildService(config, reactor).privilegedStartService()
        [(_, factory, _, _)] = reactor.tcpServers
        assert isinstance(factory, HarborSMTPFactory)
        smtp = SMTPDriver(factory.deliverer, reactor, factory=factory)
        smtp.send(ENVELOPE)
        reactor.advance(6.9)
        self.assertEqual(smtp.take(), b"")
        reactor.advance(0.1)
        self.assertEqual(smtp.replies(b""), [TEMPFAIL_REPLY])


class TransactionBudgetTests(PolicyHookTestCase):
    """
    One transaction's calls share a time limit: once it is used up, the
    default answers at once, without the hook being asked.
    """

    def silent(self) -> tuple[list[PolicyRequest], Any]:
        """
        A hook that never answers, and the requests it was asked.
        """
        asked: list[PolicyRequest] = []

        def hook(request: PolicyRequest) -> Deferred[Refuse | None]:
            asked.append(request)
            return Deferred()

        return asked, hook

    def usedUp(self) -> list[dict[str, Any]]:
        """
        The log events saying a transaction's budget is used up.
        """
        return [e for e in self.events if "used up" in formatEvent(e)]

    def test_lastCallGetsWhatIsLeft(self) -> None:
        """
        Calls get their own time limit while the budget lasts, the last one
        only what is left of it; after that the default answers at once and
        the hook is not called.
        """
        asked, hook = self.silent()
        policy = PolicyHook(hook, self.clock, 10, "tempfail", transactionTimeout=25)
        budget = policy.transaction()
        for _ in range(2):
            result = policy.check(REQUEST, budget)
            self.clock.advance(9.9)
            self.assertNoResult(result)
            self.clock.advance(0.1)
            self.assertEqual(self.successResultOf(result), TEMPFAIL)
        third = policy.check(REQUEST, budget)
        self.clock.advance(5)
        self.assertEqual(self.successResultOf(third), TEMPFAIL)
        self.assertEqual(budget.remaining, 0)
        fourth = policy.check(REQUEST, budget)
        self.assertEqual(self.successResultOf(fourth), TEMPFAIL)
        self.assertEqual(len(asked), 3)

    def test_acceptDefault(self) -> None:
        """
        With the C{accept} default, a used-up budget takes the mail at once.
        """
        asked, hook = self.silent()
        policy = PolicyHook(hook, self.clock, 2, transactionTimeout=2)
        budget = policy.transaction()
        first = policy.check(REQUEST, budget)
        self.clock.advance(2)
        self.assertIsNone(self.successResultOf(first))
        self.assertIsNone(self.successResultOf(policy.check(REQUEST, budget)))
        self.assertEqual(len(asked), 1)

    def test_loggedOncePerTransaction(self) -> None:
        """
        A used-up budget is logged once, as a warning naming the client,
        the budget, the stage and the default, however many calls follow;
        the next transaction's is logged again.
        """
        asked, hook = self.silent()
        policy = PolicyHook(hook, self.clock, 3, "tempfail", transactionTimeout=3)
        for _ in range(2):
            budget = policy.transaction()
            policy.check(REQUEST, budget)
            self.clock.advance(3)
            for _ in range(5):
                self.successResultOf(policy.check(REQUEST, budget))
        first, second = self.usedUp()
        self.assertEqual(first["log_level"], LogLevel.warn)
        self.assertEqual(
            formatEvent(first),
            "client=192.0.2.7 policy hook used up the 3s of this transaction at rcpt; "
            "its remaining questions get the default (tempfail) without asking it",
        )
        self.assertEqual(formatEvent(second), formatEvent(first))
        self.assertEqual(len(asked), 2)

    def test_quickAnswersCountToo(self) -> None:
        """
        The time of answered calls counts as well: thirty one-second
        answers use up thirty seconds, and the thirty-first question is not
        asked.
        """
        asked: list[PolicyRequest] = []

        def slowly(request: PolicyRequest) -> Deferred[Refuse | None]:
            asked.append(request)
            d: Deferred[Refuse | None] = Deferred()
            self.clock.callLater(1, d.callback, REFUSE)
            return d

        policy = PolicyHook(slowly, self.clock, 10, "tempfail", transactionTimeout=30)
        budget = policy.transaction()
        for _ in range(30):
            result = policy.check(REQUEST, budget)
            self.clock.advance(1)
            self.assertIs(self.successResultOf(result), REFUSE)
        self.assertEqual(self.successResultOf(policy.check(REQUEST, budget)), TEMPFAIL)
        self.assertEqual(len(asked), 30)

    def test_eachTransactionItsOwn(self) -> None:
        """
        A new transaction's budget is whole, whatever the last one spent;
        calls without a budget have only their own time limit.
        """
        asked, hook = self.silent()
        policy = PolicyHook(hook, self.clock, 4, "tempfail", transactionTimeout=4)
        used = policy.transaction()
        policy.check(REQUEST, used)
        self.clock.advance(4)
        self.assertEqual(policy.transaction().remaining, 4)
        unbounded = policy.check(REQUEST)
        self.clock.advance(3.9)
        self.assertNoResult(unbounded)
        self.assertEqual(len(asked), 2)

    def recipients(self, count: int) -> bytes:
        return b"".join(b"RCPT TO:<r%d@example.com>\r\n" % i for i in range(count))

    def test_recipientsOverTheWire(self) -> None:
        """
        Through the protocol, a silent hook with the C{tempfail} default
        holds RCPTs only until the transaction's budget is used up; the
        rest get the documented 451 at once, without the hook being asked;
        RSET starts a new budget.
        """
        asked, hook = self.silent()
        deliverer, _ = makeDeliverer(self.mktemp(), clock=self.clock)
        deliverer.policyHook = PolicyHook(hook, self.clock, 3, "tempfail", transactionTimeout=5)
        smtp = SMTPDriver(deliverer, self.clock)
        smtp.send(b"EHLO c\r\nMAIL FROM:<s@x.org>\r\n" + self.recipients(5))
        self.clock.advance(3)
        self.clock.advance(2)
        self.assertEqual(smtp.replies(b"")[-5:], [TEMPFAIL_REPLY] * 5)
        self.assertEqual(len(asked), 2)
        self.assertEqual(len(self.usedUp()), 1)
        replies = smtp.replies(b"RSET\r\nMAIL FROM:<s@x.org>\r\n" + self.recipients(1))
        self.assertEqual(replies, [b"250 2.0.0 Ok", b"250 2.1.0 Ok"])
        self.clock.advance(2.9)
        self.assertEqual(smtp.take(), b"")
        self.assertEqual(len(asked), 3)

    def test_dataAfterRecipients(self) -> None:
        """
        The question after the data shares the budget of the RCPTs: with
        the C{accept} default, once the RCPTs used it up, the message is
        stored without the hook being asked about it.
        """
        asked, hook = self.silent()
        root = self.mktemp()
        deliverer, _ = makeDeliverer(root, clock=self.clock)
        deliverer.policyHook = PolicyHook(hook, self.clock, 3, "accept", transactionTimeout=3)
        smtp = SMTPDriver(deliverer, self.clock)
        smtp.send(ENVELOPE)
        self.clock.advance(3)
        replies = smtp.replies(b"DATA\r\nSubject: x\r\n\r\nhi\r\n.\r\n")
        self.assertEqual(replies[-1][:3], b"250", replies)
        self.assertEqual([r.stage for r in asked], ["rcpt"])
        self.assertEqual(len(files(root, "example.com", "new")), 1)

    def test_setting(self) -> None:
        """
        C{policy_hook_transaction_timeout} makes the server's budget: with
        one per-call limit of 7 s and a budget of 10 s, the second RCPT is
        answered after 3 s and the third at once.
        """
        reactor = MemoryReactorClock()
        config = Config.fromMapping(
            {
                "domain": ["example.com"],
                "maildir": os.path.abspath(self.mktemp()),
                "policy_hook": f"{__name__}:neverAnswers",
                "policy_hook_timeout": 7,
                "policy_hook_transaction_timeout": 10,
                "policy_hook_default": "tempfail",
            }
        )
        buildService(config, reactor).privilegedStartService()
        [(_, factory, _, _)] = reactor.tcpServers
        assert isinstance(factory, HarborSMTPFactory)
        smtp = SMTPDriver(factory.deliverer, reactor, factory=factory)
        smtp.send(b"EHLO c\r\nMAIL FROM:<s@x.org>\r\n" + self.recipients(3))
        reactor.advance(7)
        self.assertEqual(smtp.replies(b"")[-1], TEMPFAIL_REPLY)
        reactor.advance(2.9)
        self.assertEqual(smtp.take(), b"")
        reactor.advance(0.1)
        self.assertEqual(smtp.replies(b""), [TEMPFAIL_REPLY, TEMPFAIL_REPLY])


class FailureTests(PolicyHookTestCase):
    """
    A hook that fails gets the default, and the failure is logged.
    """

    def test_raisingHookAccepts(self) -> None:
        """
        With the C{accept} default (also when none is given), a hook that
        raises has its mail taken, and the exception is logged with the
        stage.
        """
        result = self.check(lambda request: 1 / 0)
        self.assertIsNone(self.successResultOf(result))
        [event] = self.events
        self.assertEqual(event["log_level"], LogLevel.critical)
        self.assertTrue(event["log_failure"].check(ZeroDivisionError))
        self.assertEqual(formatEvent(event), "Policy hook failed at rcpt; applying the default")

    def test_raisingHookTempfails(self) -> None:
        """
        With the C{tempfail} default, a hook that raises gets 451 4.7.1,
        and the exception is logged.
        """
        result = self.check(lambda request: 1 / 0, default="tempfail")
        self.assertEqual(self.successResultOf(result), TEMPFAIL)
        [event] = self.events
        self.assertTrue(event["log_failure"].check(ZeroDivisionError))

    def test_failedDeferred(self) -> None:
        """
        A L{Deferred} that fails is a failing hook too.
        """
        result = self.check(lambda request: fail(KeyError("x")), default="tempfail")
        self.assertEqual(self.successResultOf(result), TEMPFAIL)
        [event] = self.events
        self.assertTrue(event["log_failure"].check(KeyError))

    def test_raisingCoroutine(self) -> None:
        """
        A coroutine that raises is a failing hook too.
        """

        async def broken(request: PolicyRequest) -> None:
            raise LookupError("no database")

        result = self.check(broken, default="tempfail")
        self.assertEqual(self.successResultOf(result), TEMPFAIL)
        [event] = self.events
        self.assertTrue(event["log_failure"].check(LookupError))

    def test_wrongAnswer(self) -> None:
        """
        An answer that is neither L{None} nor a L{Refuse} is a failure:
        the default applies and a L{TypeError} naming the answer is
        logged.
        """
        result = self.check(lambda request: "no", default="tempfail")
        self.assertEqual(self.successResultOf(result), TEMPFAIL)
        [event] = self.events
        self.assertTrue(event["log_failure"].check(TypeError))
        self.assertIn("'no'", event["log_failure"].getErrorMessage())

    def test_unknownDefault(self) -> None:
        """
        A default other than C{accept} or C{tempfail} is refused when the
        hook is made.
        """
        error = self.assertRaises(ValueError, PolicyHook, neverAnswers, self.clock, default="reject")
        self.assertEqual(str(error), "default must be one of ('accept', 'tempfail')")


class AnswerTests(PolicyHookTestCase):
    """
    A hook answers directly, with a L{Deferred} or from a coroutine.
    """

    def test_refusePassedThrough(self) -> None:
        """
        A hook's L{Refuse} is the answer, whatever the default, and nothing
        is logged.
        """
        for default in ("accept", "tempfail"):
            self.assertIs(self.successResultOf(self.check(lambda request: REFUSE, default=default)), REFUSE)
        self.assertEqual(self.events, [])

    def test_noneAccepts(self) -> None:
        """
        A hook answering L{None} takes the mail, even with the C{tempfail}
        default.
        """
        self.assertIsNone(self.successResultOf(self.check(lambda request: None, default="tempfail")))
        self.assertEqual(self.events, [])

    def test_requestGiven(self) -> None:
        """
        The hook is called with the request, once.
        """
        asked: list[PolicyRequest] = []
        self.successResultOf(self.check(asked.append))
        self.assertEqual(asked, [REQUEST])

    def test_deferred(self) -> None:
        """
        A L{Deferred} answer is waited for, within the time limit.
        """
        pending: Deferred[Refuse | None] = Deferred()
        result = self.check(lambda request: pending, timeout=5, default="tempfail")
        self.clock.advance(4)
        self.assertNoResult(result)
        pending.callback(REFUSE)
        self.assertIs(self.successResultOf(result), REFUSE)
        self.assertIs(self.successResultOf(self.check(lambda request: succeed(None))), None)

    def test_coroutine(self) -> None:
        """
        A coroutine's answer is waited for, including what it awaits.
        """
        pending: Deferred[None] = Deferred()

        async def decide(request: PolicyRequest) -> Refuse | None:
            await pending
            return REFUSE if request.sender == "s@x.org" else None

        result = self.check(decide, timeout=5, default="tempfail")
        self.assertNoResult(result)
        pending.callback(None)
        self.assertIs(self.successResultOf(result), REFUSE)

    def test_refusalOverTheWire(self) -> None:
        """
        Through the protocol, a hook's refusal at RCPT is the reply.
        """
        deliverer, _ = makeDeliverer(self.mktemp(), clock=self.clock)
        deliverer.policyHook = PolicyHook(lambda request: REFUSE, self.clock)
        smtp = SMTPDriver(deliverer, self.clock)
        self.assertEqual(smtp.replies(ENVELOPE)[-1], b"550 5.7.1 Not here")


class RefuseTests(SynchronousTestCase):
    """
    Tests for L{Refuse}.
    """

    def test_onlyRefusals(self) -> None:
        """
        A refusal has a 4xx or 5xx code and an enhanced code of the same
        class.
        """
        for code, enhanced in ((250, "2.0.0"), (451, "5.7.1"), (550, "4.7.1"), (600, "6.0.0")):
            self.assertRaises(ValueError, Refuse, code, enhanced, "x")
        self.assertEqual(Refuse(451, "4.7.1", "later").code, 451)


class LoadPolicyHookTests(SynchronousTestCase):
    """
    Tests for L{loadPolicyHook}.
    """

    def test_loads(self) -> None:
        """
        A C{module:function} target gives that function.
        """
        self.assertIs(loadPolicyHook(f"{__name__}:neverAnswers", "policy_hook"), neverAnswers)

    def test_errorsNameTheSetting(self) -> None:
        """
        A missing module, a missing attribute or one that is not callable
        is a L{ConfigError} naming the setting given.
        """
        for target, problem in (
            ("harbor.test.no_such_module:f", "cannot import harbor.test.no_such_module"),
            (f"{__name__}:missing", "has no missing"),
            (f"{__name__}:NOT_CALLABLE", "is not callable"),
        ):
            error = self.assertRaises(ConfigError, loadPolicyHook, target, "policy_hook")
            self.assertEqual(error.setting, "policy_hook", target)
            self.assertIn(problem, error.problem)
            self.assertTrue(str(error).startswith("policy_hook: "), str(error))


class RecipientsOfTests(SynchronousTestCase):
    """
    Tests for L{recipientsOf}.
    """

    def test_order(self) -> None:
        """
        Recipients are given once each, in the order first seen.
        """
        self.assertEqual(recipientsOf(["b@x", "a@x", "b@x"]), ("b@x", "a@x"))
