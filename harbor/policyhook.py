# -*- test-case-name: harbor.test.test_policyhook -*-
"""
Policy hooks: the user's code deciding, before the reply, whether a
recipient (at RCPT) or a message (after its data, before the 250) is taken.

A policy hook is a callable given a L{PolicyRequest}; it returns L{None}
(take it) or a L{Refuse}, directly, as a L{Deferred} or from a coroutine
(run as L{harbor._awaitable} says: an asyncio task under the asyncio
reactor).  It has a time limit: past it, or if the hook fails, the configured default
applies (take the mail, or answer 451 so the sender retries), so a slow or
broken hook can neither hang a session nor lose mail.  Each mail
transaction also has a budget for the time it spends waiting on the hook
(L{TransactionBudget}): once it is used up, the transaction's remaining
questions get the default without the hook being asked, so a silent hook
costs a transaction to a thousand recipients seconds, not hours.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from email.message import EmailMessage
from typing import Any

from twisted.internet.defer import Deferred, TimeoutError, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from attrs import frozen

from harbor._awaitable import callUserCode
from harbor.config import POLICY_HOOK_DEFAULTS
from harbor.hooks.loading import importTarget

DEFAULTS = POLICY_HOOK_DEFAULTS


@frozen
class PolicyRequest:
    """
    What a policy hook is asked about.

    @ivar stage: C{"rcpt"} for one recipient, C{"data"} for the whole
        message once its data is in.
    @ivar client: The client's IP address.
    @ivar helo: Its HELO name, if given.
    @ivar user: The authenticated user, if any.
    @ivar sender: The envelope sender (C{""} for bounces).
    @ivar recipients: The recipients (at RCPT, the one asked about).
        Addresses are in the form routing reads them
        (L{harbor.address.canonicalAddress}): the local part unquoted and in
        lower case, the domain in lower-case A-label form, a sub-address
        tag kept.
    @ivar headers: The message's headers, at C{"data"}.
    @ivar size: The message's size in octets, at C{"data"}.
    """

    stage: str
    client: str
    helo: str | None
    user: str | None
    sender: str
    recipients: tuple[str, ...]
    headers: EmailMessage | None = None
    size: int = 0


@frozen
class Refuse:
    """
    A policy hook's refusal.

    @ivar code: A 4xx (try again later) or 5xx (permanent) reply code.
    @ivar enhanced: The RFC 3463 code, of the same class.
    @ivar text: One line of text for the client.
    """

    code: int
    enhanced: str
    text: str

    def __attrs_post_init__(self) -> None:
        if not (400 <= self.code <= 599) or self.enhanced[:1] != str(self.code)[0]:
            raise ValueError(f"not a refusal: {self.code} {self.enhanced}")


TEMPORARY = Refuse(451, "4.7.1", "Error: policy check unavailable, try again later")


class TransactionBudget:
    """
    The time one mail transaction may still spend waiting on the policy
    hook, over all its questions (L{PolicyHook.check}).
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.spent = 0.0

    @property
    def remaining(self) -> float:
        """
        Seconds left for the hook in this transaction.
        """
        return self.seconds - self.spent


class PolicyHook:
    """
    Calls a policy function with a time limit and a default.
    """

    _log = Logger()

    def __init__(
        self,
        function: Callable[[PolicyRequest], Any],
        clock: IReactorTime,
        timeout: float = 10,
        default: str = "accept",
        transactionTimeout: float = 30,
    ) -> None:
        """
        @param timeout: Seconds one call may take.
        @param default: C{"accept"} or C{"tempfail"}: what happens when the
            function fails or runs out of time.
        @param transactionTimeout: Seconds the calls of one transaction (see
            L{transaction}) may take in all.
        """
        if default not in DEFAULTS:
            raise ValueError(f"default must be one of {DEFAULTS}")
        self._function = function
        self._clock = clock
        self._timeout = timeout
        self._defaultName = default
        self._default = None if default == "accept" else TEMPORARY
        self._transactionTimeout = transactionTimeout

    def transaction(self) -> TransactionBudget:
        """
        A new budget, for the questions of one mail transaction.
        """
        return TransactionBudget(self._transactionTimeout)

    def check(self, request: PolicyRequest, budget: TransactionBudget | None = None) -> Deferred[Refuse | None]:
        """
        Ask the function.

        @param budget: The transaction's budget: the call gets no more than
            what is left of it, and none at all, the default answering at
            once, when it is used up.
        @return: a L{Deferred} firing with its L{Refuse} or L{None}; it never
            fails.
        """
        timeout = self._timeout
        if budget is not None:
            if budget.remaining <= 0:
                return succeed(self._default)
            timeout = min(timeout, budget.remaining)

        started = self._clock.seconds()
        d = callUserCode(self._function, request)
        d.addTimeout(timeout, self._clock)

        def decided(result: object) -> Refuse | None:
            if result is None or isinstance(result, Refuse):
                return result
            raise TypeError(f"a policy hook returned {result!r}, not None or a Refuse")

        def failed(failure: Failure) -> Refuse | None:
            if failure.check(TimeoutError):
                self._log.warn(
                    "Policy hook timed out at {stage}; applying the default", stage=request.stage
                )
            else:
                self._log.failure("Policy hook failed at {stage}; applying the default", failure, stage=request.stage)
            return self._default

        def spent(result: Refuse | None) -> Refuse | None:
            if budget is not None:
                self._spend(budget, self._clock.seconds() - started, request)
            return result

        return d.addCallback(decided).addErrback(failed).addCallback(spent)

    def _spend(self, budget: TransactionBudget, seconds: float, request: PolicyRequest) -> None:
        """
        Count a call's time against its transaction's budget; say so, once,
        when the budget is used up.
        """
        before = budget.remaining
        budget.spent += seconds
        # A call is made only while some budget is left, so this is the one
        # call that uses it up.
        if before > 0 >= budget.remaining:
            self._log.warn(
                "client={client} policy hook used up the {seconds:g}s of this transaction at "
                "{stage}; its remaining questions get the default ({default}) without asking it",
                client=request.client,
                seconds=budget.seconds,
                stage=request.stage,
                default=self._defaultName,
            )


def loadPolicyHook(target: str, setting: str) -> Callable[[PolicyRequest], Any]:
    """
    Import C{package.module:function}.

    @raise harbor._syntax.ConfigError: naming C{setting} if it cannot be.
    """
    return importTarget(target, setting)  # type: ignore[return-value]


def recipientsOf(addresses: Sequence[str]) -> tuple[str, ...]:
    """
    The recipients of a request, without duplicates, in order.
    """
    return tuple(dict.fromkeys(addresses))
