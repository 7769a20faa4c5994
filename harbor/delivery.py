# -*- test-case-name: harbor.test.test_delivery -*-
"""
Delivery: MailHarbor's side of Twisted's L{IMessageDelivery} and L{IMessage}.

The SMTP protocol asks a L{HarborDelivery} (one per mail transaction) about
the sender and each recipient; the recipient policy decides; at DATA every
accepted recipient shares one L{HarborMessage}, which streams the body into
one Maildir file per recipient and makes them durable at the end.
"""

from __future__ import annotations

import email.policy
import email.utils
import re
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from email.message import EmailMessage
from email.parser import BytesHeaderParser
from typing import Any, TypeVar, cast

from zope.interface import implementer

from twisted.internet.defer import Deferred, fail
from twisted.logger import Logger
from twisted.mail.interfaces import IMessageDelivery, IMessageDeliveryFactory
from twisted.mail.smtp import (
    Address,
    IMessage,
    SMTPBadRcpt,
    SMTPBadSender,
    SMTPServerError,
    User,
)
from twisted.python.failure import Failure

from attrs import Factory, define, frozen

from harbor.address import AddressSyntaxError, Path, canonicalAddress, parsePath
from harbor.config import DEFAULT_SUBMISSION_MAILBOX
from harbor.dnsbl import Blocklists
from harbor.filters import Filter, FilterScope, Forms, applyFirst
from harbor.policyhook import (
    PolicyHook,
    PolicyRequest,
    Refuse,
    TransactionBudget,
    recipientsOf,
)
from harbor.routing import (
    Accept,
    FolderRule,
    RecipientPolicy,
    Reject,
    submissionMailbox,
)
from harbor.store.commits import CommitQueue
from harbor.store.headers import headerValues
from harbor.store.writer import (
    NAME_ATTEMPTS,
    Companion,
    MaildirStore,
    NameTaken,
    PendingDelivery,
    StoredMessage,
)

T = TypeVar("T")

# Filter verdicts are logged under the filters' own namespace, as operators'
# log filters know them; harbor.filters itself is pure and logs nothing.
_filterLog = Logger(namespace="harbor.filters")
RunInThread = Callable[[Callable[[], T]], "Deferred[T]"]

_UNSAFE = re.compile(r"[^\x21-\x27\x2a-\x5b\x5d-\x7e]")
_MAX_HELO_IN_HEADER = 255
_MAX_HEADER_BLOCK = 64 * 1024

# The reply, after 451, while a hook's backlog is full (max_pending).
BACKLOG_FULL = "4.3.0 Too many messages waiting to be processed; try again later"

# What validateTo gives the protocol: the recipient's message factory, at
# once or when the blocklist or policy hook has answered.
MessageFactory = Callable[[], "HarborMessage"]


class IMessageStream(IMessage):
    """
    An L{IMessage} that also takes the message in pieces rather than lines,
    so that a large body costs a few calls instead of one per line.
    """

    def dataReceived(data: bytes) -> None:
        """
        Take the next bytes of the message, LF line ends, no dot-stuffing.
        """


class PathAddress(Address):
    """
    The L{Address} that L{IMessageDelivery} expects, built from a path our
    own parser accepted, and carrying it, so the delivery does not parse
    the same bytes again.  Twisted's parser would silently drop a source
    route and refuse address literals and UTF-8; C{addrstr} keeps what the
    client sent.

    @ivar path: The parsed path.
    """

    def __init__(self, raw: bytes, path: Path) -> None:
        self.addrstr = raw
        self.local = path.local.encode("utf-8")
        self.domain = path.domain.encode("utf-8")
        self.path = path


def pathOf(address: Address, allowNull: bool = False, utf8: bool = False) -> Path:
    """
    The path of an address: the one the protocol parsed, or, for an
    L{Address} made elsewhere, its C{addrstr} parsed now.

    @raise AddressSyntaxError: if it is not a valid path.
    """
    # Twisted's User copies a PathAddress's attributes into a plain
    # Address: the path is found by attribute, not by class.
    path = getattr(address, "path", None)
    if isinstance(path, Path):
        return path
    return parsePath(address.addrstr, allowNull=allowNull, utf8=utf8)


@define(eq=False)
class Session:
    """
    What the SMTP protocol knows of one client connection, shared with the
    deliveries it starts so their trace headers can tell the truth.

    @ivar clientAddress: The client's IP address.
    @ivar helo: The name the client gave in HELO or EHLO, if any yet.
    @ivar esmtp: Whether the client greeted with EHLO.
    @ivar utf8: Whether the current transaction uses SMTPUTF8.
    @ivar tls: The TLS protocol and cipher in use (C{"TLSv1.3
        TLS_AES_256_GCM_SHA384"}), or L{None} on a plain connection.
    @ivar user: The name the client authenticated as, or L{None}.
    @ivar trusted: Whether a filter accepted the client: later filters
        and blocklists are skipped.
    @ivar discard: Whether a filter said to drop this client's mail.
    @ivar tags: Header lines filters add to this client's mail.
    @ivar blocklist: The pending DNS blocklist result
        (L{harbor.dnsbl.SharedResult}), if one was asked for.
    """

    clientAddress: str
    helo: str | None = None
    esmtp: bool = False
    utf8: bool = False
    tls: str | None = None
    user: str | None = None
    trusted: bool = False
    discard: bool = False
    tags: list[str] = Factory(list)
    blocklist: Any = None

    @property
    def protocolName(self) -> str:
        """
        The C{with} keyword of a C{Received:} header for this session
        (RFC 3848, RFC 6531 section 4.3): ESMTP, ESMTPS, ESMTPSA,
        UTF8SMTPS...
        """
        if self.utf8:
            base = "UTF8SMTP"
        else:
            base = "ESMTP" if self.esmtp else "SMTP"
        return base + ("S" if self.tls else "") + ("A" if self.user else "")


@frozen
class Recipient:
    """
    An accepted recipient of the current transaction.

    @ivar path: The path as the client sent it.
    @ivar accept: The policy's decision for it.
    """

    path: Path
    accept: Accept


_E = TypeVar("_E", bound=Exception)


def refusal(error: _E, reason: str) -> _E:
    """
    Mark a refusal with why it was made (C{"filter"}, C{"dnsbl"},
    C{"unknown_recipient"}, ...), for the log event of its reply and the
    metrics counted from it.
    """
    error.refusal = reason  # type: ignore[attr-defined]
    return error


def refusalOf(error: BaseException | None) -> str | None:
    """
    Why C{error} was raised, if L{refusal} marked it.
    """
    return getattr(error, "refusal", None)


def applyFilters(
    filters: Sequence[Filter],
    stage: str,
    scope: FilterScope,
    client: str,
    helo: str | None = None,
    sender: Forms = None,
    recipient: Forms = None,
) -> Filter | None:
    """
    L{harbor.filters.applyFirst}, and a log line for the filter that
    matched: the SMTP session (connect and HELO) and the transaction (MAIL
    and RCPT) both decide through here.
    """
    matched = applyFirst(filters, stage, scope, client, helo, sender, recipient)
    if matched is not None:
        _filterLog.info(
            "client={client} filter {action} at {stage}: {filter}",
            harbor_event="filter",
            client=client,
            action=matched.action,
            stage=stage,
            filter=matched,
        )
    return matched


def headerSafe(text: str, limit: int = _MAX_HELO_IN_HEADER) -> str:
    """
    Make client-supplied text safe inside a header comment: no line
    breaks, controls, parentheses or backslashes, and bounded in length.
    """
    return _UNSAFE.sub("?", text[:limit]) or "unknown"


class Deliverer:
    """
    Everything deliveries share across connections: the policy, the store,
    this server's name, the clock and a way to run blocking work.
    """

    def __init__(
        self,
        policy: RecipientPolicy,
        store: MaildirStore,
        hostname: str,
        runInThread: RunInThread[Any],
        seconds: Callable[[], float] = time.time,
        submissionMailbox: str = DEFAULT_SUBMISSION_MAILBOX,
        filters: Sequence[Filter] = (),
        blocklists: Blocklists | None = None,
        hooks: Any = None,
        policyHook: PolicyHook | None = None,
        commits: CommitQueue | None = None,
    ) -> None:
        """
        @param runInThread: Runs a blocking function off the reactor thread
            and returns a L{Deferred} of its result (C{deferToThreadPool}
            in production, a synchronous stand-in in tests).
        @param commits: Makes finished messages durable, in the commit
            lanes (L{harbor.store.commits.CommitQueue}); the service shares
            one across reloads.  By default, one with the default lanes
            and batch size on C{runInThread}.
        @param submissionMailbox: Where authenticated users' mail goes,
            relative to the root, with C{{user}} for the user name.
        @param filters: The envelope filters.
        @param blocklists: The DNS blocklists to check clients against.
        @param hooks: The L{harbor.hooks.runner.HookRunner} told of each stored
            copy, or L{None}.
        @param policyHook: The user's policy hook, asked at RCPT and before
            the 250, or L{None}.
        """
        self.policy = policy
        self.store = store
        self.hostname = hostname
        self.seconds = seconds
        self.submissionMailbox = submissionMailbox
        self.filters = tuple(filters)
        self.blocklists = blocklists
        self.hooks = hooks
        self.policyHook = policyHook
        self.commits = CommitQueue(runInThread, store.commitMany) if commits is None else commits
        self._date: tuple[int, str] = (-1, "")

    def dateHeader(self, when: float) -> str:
        """
        The RFC 5322 date of C{when}, in local time, for C{Received:}
        headers; computed once per second, not once per message.
        """
        second = int(when)
        if self._date[0] != second:
            self._date = (second, email.utils.format_datetime(datetime.fromtimestamp(second).astimezone()))
        return self._date[1]

    def factoryFor(self, session: Session) -> HarborDeliveryFactory:
        """
        The delivery factory for one connection.
        """
        return HarborDeliveryFactory(self, session)


@implementer(IMessageDeliveryFactory)
class HarborDeliveryFactory:
    """
    Gives each mail transaction of one connection its own L{HarborDelivery},
    so no state leaks from one message to the next.
    """

    def __init__(self, deliverer: Deliverer, session: Session) -> None:
        self._deliverer = deliverer
        self._session = session

    def getMessageDelivery(self) -> HarborDelivery:
        return HarborDelivery(self._deliverer, self._session)


@implementer(IMessageDelivery)
class HarborDelivery:
    """
    One mail transaction: its sender, its accepted recipients and, from
    DATA on, its message.
    """

    _log = Logger()

    def __init__(self, deliverer: Deliverer, session: Session) -> None:
        self._deliverer = deliverer
        self._session = session
        self.sender: Path | None = None
        # The sender in the forms filters match (see L{_filter}).
        self._senderForms: tuple[str, ...] = ()
        self.recipients: list[Recipient] = []
        # The recipients' Accept.key values, to find the same mailbox again
        # in one lookup rather than a scan of every recipient so far.
        self._keys: set[tuple[str, str]] = set()
        self._message: HarborMessage | None = None
        # What filters decided, starting from what they decided for the
        # session (see L{harbor.filters.FilterScope}).
        self.trusted = session.trusted
        self.discard = session.discard
        self.tags = list(session.tags)
        # The time this transaction may still wait on the policy hook.
        self._policyBudget: TransactionBudget | None = None

    def validateFrom(self, helo: tuple[bytes | None, bytes], origin: Address) -> Address:
        """
        Accept any syntactically valid sender, the null sender included:
        a receiver that refused bounces would break mail.
        """
        self.sender = pathOf(origin, allowNull=True, utf8=self._session.utf8)
        self._senderForms = self._deliverer.policy.lookupForms(self.sender) if self._deliverer.filters else ()
        matched = self._filter("mail")
        if matched is not None and matched.action in ("reject", "tempfail"):
            raise refusal(SMTPBadSender(origin, matched.code, f"{matched.enhanced} {matched.text}"), "filter")
        return origin

    def _filter(self, stage: str, recipient: Path | None = None) -> Filter | None:
        """
        Apply the first matching filter of C{stage} to this transaction,
        unless an earlier filter accepted the client or it authenticated.
        Addresses are matched in the forms routing looks them up by, so
        quoting, case or a sub-address tag do not get past a filter.
        """
        if self._session.user is not None or self.trusted or not self._deliverer.filters:
            return None
        return applyFilters(
            self._deliverer.filters,
            stage,
            self,
            self._session.clientAddress,
            self._session.helo,
            self._senderForms,
            None if recipient is None else self._deliverer.policy.lookupForms(recipient),
        )

    def validateTo(self, user: User) -> MessageFactory | Deferred[MessageFactory]:
        """
        Ask the policy about one recipient.

        @raise SMTPBadRcpt: with the policy's code; the response text starts
            with the enhanced status code.
        """
        try:
            path = pathOf(user.dest, utf8=self._session.utf8)
        except AddressSyntaxError as e:
            raise refusal(SMTPBadRcpt(user, 501, f"5.1.3 Bad recipient address syntax: {e}"), "bad_address") from None
        filtered = self._filter("rcpt", path)
        if filtered is not None and filtered.action in ("reject", "tempfail"):
            raise refusal(SMTPBadRcpt(user, filtered.code, f"{filtered.enhanced} {filtered.text}"), "filter")
        if filtered is not None and filtered.action == "discard":
            return self.message
        blocklist = self._session.blocklist
        # An accept filter for this recipient skips the blocklist; a tag
        # filter only adds its header.
        accepted = filtered is not None and filtered.action == "accept"
        if blocklist is not None and not self.trusted and not accepted:
            later: Deferred[MessageFactory | Deferred[MessageFactory]]
            later = blocklist.wait().addCallback(self._blocklisted, user, path)
            return cast("Deferred[MessageFactory]", later)
        return self._route(user, path)

    def _blocklisted(
        self, listed: str | None, user: User, path: Path
    ) -> MessageFactory | Deferred[MessageFactory]:
        if listed is not None:
            client = self._session.clientAddress
            raise refusal(
                SMTPBadRcpt(user, 554, f"5.7.1 Service unavailable; client [{client}] blocked using {listed}"),
                "dnsbl",
            )
        return self._route(user, path)

    def _route(self, user: User, path: Path) -> MessageFactory | Deferred[MessageFactory]:
        """
        Where an accepted recipient's mail goes.
        """
        if self._session.user is not None:
            # Submission: an authenticated user may address anyone; the
            # message is stored for the user, never relayed.
            decision: tuple[Accept, ...] | Reject = (
                Accept(
                    submissionMailbox(self._deliverer.submissionMailbox, self._session.user),
                    path.mailbox,
                ),
            )
        else:
            decision = self._deliverer.policy.decide(path)
        if isinstance(decision, Reject):
            reason = "relay_denied" if decision.enhanced == "5.7.1" else "unknown_recipient"
            raise refusal(SMTPBadRcpt(user, decision.code, f"{decision.enhanced} {decision.text}"), reason)
        accepts = decision
        self._checkBacklog(user)
        policy = self._deliverer.policyHook
        if policy is None:
            return self._add(path, accepts)

        def decided(refuse: Refuse | None) -> Callable[[], HarborMessage]:
            if refuse is not None:
                raise refusal(SMTPBadRcpt(user, refuse.code, f"{refuse.enhanced} {refuse.text}"), "policy_hook")
            return self._add(path, accepts)

        request = self.request("rcpt", (canonicalAddress(path),))
        checked: Deferred[MessageFactory] = policy.check(request, self.policyBudget(policy)).addCallback(decided)
        return checked

    def policyBudget(self, policy: PolicyHook) -> TransactionBudget:
        """
        The time this transaction may still spend waiting on C{policy}, at
        RCPT and after the data together.
        """
        if self._policyBudget is None:
            self._policyBudget = policy.transaction()
        return self._policyBudget

    def _checkBacklog(self, user: User) -> None:
        """
        Refuse a recipient, for now, while a hook has too many pending
        jobs (its C{max_pending}): the sender retries later, and does not
        send a body only to be refused at its end.

        @raise SMTPBadRcpt: C{451 4.3.0}.
        """
        hooks = self._deliverer.hooks
        if hooks is None:
            return
        from harbor.hooks.events import BacklogFull

        try:
            hooks.checkBacklog()
        except BacklogFull:
            raise refusal(SMTPBadRcpt(user, 451, BACKLOG_FULL), "hook_backlog") from None

    def _add(self, path: Path, accepts: tuple[Accept, ...]) -> Callable[[], HarborMessage]:
        for accept in accepts:
            # The same mailbox named twice gets one copy, as with Postfix.
            key = accept.key
            if key not in self._keys:
                self._keys.add(key)
                self.recipients.append(Recipient(path, accept))
        return self.message

    def request(
        self, stage: str, recipients: tuple[str, ...], headers: EmailMessage | None = None, size: int = 0
    ) -> PolicyRequest:
        """
        What the policy hook is asked at C{stage}.
        """
        assert self.sender is not None
        return PolicyRequest(
            stage,
            self._session.clientAddress,
            self._session.helo,
            self._session.user,
            canonicalAddress(self.sender),
            recipients,
            headers,
            size,
        )

    def message(self) -> HarborMessage:
        """
        The transaction's one message, opened on first use (at DATA): every
        accepted recipient gets this same object.

        @raise harbor.store.fs.StorageError: if the files cannot be created.
        """
        if self._message is None:
            assert self.sender is not None
            received = self._deliverer.seconds()
            if self.discard:
                self._log.info(
                    "client={client} message from <{sender}> discarded by a filter",
                    client=self._session.clientAddress,
                    sender=self.sender.mailbox,
                )
                self.recipients = []
            pending = self._deliverer.store.begin(
                [(r.accept.mailbox, self._headersFor(r, received)) for r in self.recipients],
                # A submission mailbox is made on its user's first message.
                create=self._session.user is not None,
            )
            rules = [self._rulesFor(r) for r in self.recipients]
            policy = self._deliverer.policyHook
            check: Callable[[EmailMessage | None, int], Deferred[Refuse | None]] | None = None
            if policy is not None and self.recipients:
                # <postmaster> alone is asked about as the address it reaches.
                recipients = recipientsOf(
                    [canonicalAddress(r.path) if r.path.domain else r.accept.address for r in self.recipients]
                )

                budget = self.policyBudget(policy)

                def askPolicy(headers: EmailMessage | None, size: int) -> Deferred[Refuse | None]:
                    return policy.check(self.request("data", recipients, headers, size), budget)

                check = askPolicy

            self._message = HarborMessage(
                pending,
                self._deliverer.commits,
                lambda headers: self.folders(rules, headers),
                wantsHeaders=check is not None
                or any(rule.field == "header" for ruleset in rules for rule in ruleset),
                policy=check,
                hooks=self._deliverer.hooks,
                events=self.events,
            )
        return self._message

    def events(self, stored: Sequence[StoredMessage]) -> list[Any]:
        """
        What the hooks are told of each stored copy (in recipient order).
        """
        from harbor.hooks.events import NewMessage

        assert self.sender is not None
        return [
            NewMessage(
                self.sender.mailbox,
                recipient.accept.address,
                self._session.user,
                self._session.clientAddress,
                copy.path,
                copy.id,
            )
            for recipient, copy in zip(self.recipients, stored)
        ]

    def _rulesFor(self, recipient: Recipient) -> tuple[FolderRule, ...]:
        domain = self._deliverer.policy.domain(recipient.accept.mailbox.split("/")[0])
        return domain.rules if domain is not None else ()

    def folders(
        self, rules: list[tuple[FolderRule, ...]], headers: EmailMessage | None
    ) -> list[str | None]:
        """
        The folder of each copy: the sub-address tag's if the address chose
        one, otherwise the first folder rule of its domain that matches the
        sender, the recipient or a header, otherwise the inbox.
        """
        assert self.sender is not None
        result: list[str | None] = []
        # Each header decoded once per message, however many copies and
        # rules look at it.
        decoded: dict[str, list[str]] = {}
        for recipient, ruleset in zip(self.recipients, rules):
            folder = recipient.accept.folder
            for rule in ruleset if folder is None else ():
                if rule.field == "sender":
                    values = [self.sender.mailbox]
                elif rule.field == "recipient":
                    values = [recipient.accept.address]
                elif headers is None:
                    values = []
                else:
                    name = (rule.header or "").lower()
                    if name not in decoded:
                        decoded[name] = headerValues(headers, name)
                    values = decoded[name]
                if any(rule.contains.lower() in value.lower() for value in values):
                    folder = rule.folder
                    break
            result.append(folder)
        return result

    def _headersFor(self, recipient: Recipient, received: float) -> Callable[[str], bytes]:
        """
        The header block of C{recipient}'s copy, once the store has named it.
        """
        return lambda id: self.traceHeaders(recipient, id, received)

    def traceHeaders(self, recipient: Recipient, id: str, received: float) -> bytes:
        """
        The C{Return-Path:}, C{Delivered-To:} and C{Received:} lines that
        start one recipient's copy.

        Addresses come from the parser, which admits no control characters;
        the HELO name is made safe here, so nothing a client sends can add
        a header line.
        """
        assert self.sender is not None
        session = self._session
        client = session.clientAddress
        literal = f"IPv6:{client}" if ":" in client else client
        helo = headerSafe(session.helo or "")
        date = self._deliverer.dateHeader(received)
        tls = f"\n\t(using {session.tls})" if session.tls else ""
        return (
            f"Return-Path: <{self.sender.mailbox}>\n"
            f"Delivered-To: {recipient.accept.address}\n"
            f"Received: from {helo} ([{literal}]){tls}\n"
            f"\tby {self._deliverer.hostname} (MailHarbor) with {session.protocolName} id {id}\n"
            f"\tfor <{recipient.path.mailbox}>; {date}\n"
            + "".join(f"{tag}\n" for tag in self.tags)
        ).encode("utf-8")

    def receivedHeader(
        self, helo: tuple[bytes | None, bytes], origin: Address, recipients: list[User]
    ) -> None:
        """
        L{IMessageDelivery} asks for one C{Received:} header for all copies;
        MailHarbor writes its own per copy in L{traceHeaders}, so there is
        nothing for the protocol to add.
        """


@implementer(IMessageStream)
class HarborMessage:
    """
    The body of one transaction, streamed into every recipient's copy.
    """

    _log = Logger()

    def __init__(
        self,
        pending: PendingDelivery,
        commits: CommitQueue,
        folders: Callable[[EmailMessage | None], list[str | None]] = lambda headers: [],
        wantsHeaders: bool = False,
        hooks: Any = None,
        events: Callable[[Sequence[StoredMessage]], list[Any]] = lambda stored: [],
        policy: Callable[[EmailMessage | None, int], Deferred[Refuse | None]] | None = None,
    ) -> None:
        """
        @param folders: Given the message's headers (when C{wantsHeaders}),
            the folder of each copy.
        @param wantsHeaders: Whether to keep the header block as it streams
            by (at most 64 KiB of it), for folder rules on headers.
        @param hooks: The L{harbor.hooks.runner.HookRunner}, or L{None}.
        @param events: Describes the stored copies for the hooks.
        @param policy: Asks the policy hook about the whole message before
            it is made durable, or L{None}.
        """
        self._pending = pending
        self._commits = commits
        self._folders = folders
        self._hooks = hooks
        self._events = events
        self._policy = policy
        self._headers: bytearray | None = bytearray() if wantsHeaders else None
        self._collecting = wantsHeaders
        self.size = 0
        # Commits that found a name taken (see _store).
        self._attempts = 0

    def dataReceived(self, data: bytes) -> None:
        self.size += len(data)
        if self._collecting:
            headers = self._headers
            assert headers is not None
            # Look for the blank line only in what is new (and the byte
            # before it), and stop once it, or the limit, is reached.
            start = max(len(headers) - 1, 0)
            headers += data[: _MAX_HEADER_BLOCK - len(headers)]
            if b"\n\n" in headers[start:] or len(headers) >= _MAX_HEADER_BLOCK:
                self._collecting = False
        self._pending.write(data)

    def lineReceived(self, line: bytes) -> None:
        self.dataReceived(line + b"\n")

    def eomReceived(self) -> Deferred[list[StoredMessage]]:
        """
        Make every copy durable, in a thread so other clients are served
        meanwhile.

        @return: a L{Deferred} firing with the stored copies, or failing
            with L{harbor.store.fs.StorageError}.
        """
        try:
            headers = None
            if self._headers is not None:
                block = bytes(self._headers).split(b"\n\n", 1)[0] + b"\n\n"
                headers = BytesHeaderParser(policy=email.policy.default).parsebytes(block)
            folders = self._folders(headers) or None
        except BaseException:
            # A bug, not the client's message: leave nothing in tmp/.
            self._pending.abort()
            raise
        if self._policy is not None:
            return self._policy(headers, self.size).addCallback(self._afterPolicy, folders)
        return self._store(folders)

    def _afterPolicy(self, refuse: Refuse | None, folders: list[str | None] | None) -> Deferred[list[StoredMessage]]:
        if refuse is not None:
            self._pending.abort()
            raise SMTPServerError(refuse.code, f"{refuse.enhanced} {refuse.text}")
        return self._store(folders)

    def _store(self, folders: list[str | None] | None) -> Deferred[list[StoredMessage]]:
        hooks = self._hooks
        jobs: list[Any] = []
        if hooks is not None:
            from harbor.hooks.events import BacklogFull

            try:
                # Counted as pending from now on, so that concurrent
                # messages see one another against max_pending.
                jobs = hooks.prepare(self._events(self._pending.planned(folders)))
            except BacklogFull:
                # Logged with the hook's name by the runner.  Nothing is
                # stored: the sender tries again later.
                self._pending.abort()
                return fail(SMTPServerError(451, BACKLOG_FULL))
            except Exception:  # noqa: BLE001 -- becomes this message's 451, not a traceback
                self._pending.abort()
                return fail()
        if jobs:
            # The jobs are on disk before the copies are in new/, so a 250
            # means both are; if the delivery fails after they were
            # written, they are removed with it.
            self._pending.accompany(
                Companion(
                    lambda: hooks.persist(jobs),
                    lambda: hooks.withdraw(jobs),
                    "recording the message for its hooks",
                )
            )

        def stored(copies: list[StoredMessage]) -> list[StoredMessage]:
            if jobs:
                # Only now that the copies are stored; they start on the
                # reactor's next turn, after the reply.
                hooks.dispatch(jobs)
            return copies

        def failed(failure: Failure) -> Failure | Deferred[list[StoredMessage]]:
            if jobs:
                hooks.release(jobs)
            if failure.check(NameTaken):
                # Nothing was replaced and nothing is in new/: store it
                # again under new names, its jobs made for those.
                self._attempts += 1
                if self._attempts < NAME_ATTEMPTS:
                    self._log.warn("{error}; storing the message under new names", error=failure.getErrorMessage())
                    self._pending.renew()
                    return self._store(folders)
                self._pending.abort()
            return failure

        return self._commits.commit(self._pending, folders).addCallbacks(stored, failed)

    def connectionLost(self) -> None:
        """
        The client went away or the transaction failed: leave nothing.
        """
        self._pending.abort()
