# -*- test-case-name: harbor.test.test_config -*-
"""
Limits, pure: how much MailHarbor takes from a client before it says no
(L{Limits}, read from the configuration), and the counters that enforce the
ones that span connections: connections in all and per client, and password
guesses per client (with an injected clock).

No I/O and no Twisted.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from attrs import frozen

from harbor._syntax import ConfigError, choice, networks
from harbor.address import clientGroup, inNetworks

BARE_NEWLINE_ACTIONS = ("normalize", "reject")


@frozen
class Limits:
    """
    How much MailHarbor takes from a client before it says no.

    Defaults follow Postfix's where the issue or the RFCs do not say
    otherwise.

    @ivar maxMessageSize: Largest message in octets, advertised with SIZE
        (RFC 1870); 0 means no limit.
    @ivar maxRecipients: Recipients accepted per message; RFC 5321 section
        4.5.3.1.8 requires at least 100.
    @ivar commandTimeout: Seconds a client has to send each command line
        (a SASL response too), counted from the line's first byte to its
        CRLF, however steadily the bytes come (Postfix's
        C{smtpd_per_request_deadline}); and seconds it may be silent before
        starting the line, counted from the reply to the one before.
    @ivar dataTimeout: Seconds a client may be silent while sending message
        data (a DATA body, from the 354 reply, or one BDAT chunk, from its
        command), and the most time the data rate can earn it.
    @ivar minDataRate: Bytes per second a client must keep up in message
        data, as Postfix's C{smtpd_min_data_rate}: the data starts with
        C{dataTimeout} seconds in hand; time passing uses them up, each
        byte received adds C{1 / minDataRate} seconds, and what is in hand
        never exceeds C{dataTimeout}.  When none is left, the client gets
        421 4.4.2.  So a client at the rate or faster never runs out,
        whatever the message's size (25 MiB at 1 KB/s is fine), a fast start
        buys no later trickle, and a client slower than the rate is cut off
        once the shortfall reaches C{dataTimeout} (a byte every 20 s: after
        about C{dataTimeout}).  0 leaves only the silence bound.  For
        both timeouts and the rate, only the client's time counts: while
        MailHarbor is busy with its request (a policy hook, a password
        check, storing a message), its clock is stopped.
    @ivar maxErrors: Error replies (4xx and 5xx) without a message stored
        after which the client is disconnected (Postfix's
        C{smtpd_hard_error_limit}).
    @ivar maxJunkCommands: NOOP, RSET, VRFY and HELP commands (and BDAT
        chunks thrown away after a refused one) without a message stored
        after which each more counts as an error (Postfix's
        C{smtpd_junk_command_limit}).
    @ivar maxConnections: Simultaneous connections in all.
    @ivar maxConnectionsPerClient: Simultaneous connections from one IP
        address.
    @ivar connectionLimitExceptions: Networks exempt from the per-client
        limit (by default the loopback ones, as Postfix exempts
        C{$mynetworks}).
    @ivar bareNewline: What a bare LF in message data gets: C{"normalize"}
        stores it as a line end, as Postfix 3.9 does by default;
        C{"reject"} refuses the message with 550 5.5.2.
    @ivar shutdownGrace: Seconds a stopping server gives messages being
        received to finish, and a draining one its open sessions.
    @ivar drainDelay: Seconds between a drain failing C{/readyz} and the
        SMTP ports closing, so that a balancer's health check notices
        first (HAProxy's defaults, C{inter 2s} and C{fall 3}, take up to
        6 s).
    @ivar dnsblTimeout: Seconds to wait for DNS blocklist answers; no
        answer in time means not listed.
    @ivar pregreetWait: Seconds the banner is held back to catch clients
        that talk first (Postfix postscreen's pregreet test); 0 is off.
    @ivar listenBacklog: The listen queue of TCP listeners that do not set
        C{backlog=} themselves; Twisted's default of 50 drops connections
        when many clients arrive at once.
    @ivar policyHookTimeout: Seconds a policy hook may take before its
        default applies.
    @ivar policyHookTransactionTimeout: Seconds one mail transaction (MAIL
        to the end of its data, or to RSET) may spend waiting for the policy
        hook in all; once they are used up, its remaining questions get the
        default at once, so a silent hook cannot hold a connection for
        C{policyHookTimeout} per recipient.
    @ivar authTimeout: Seconds a login may take to be decided (the users
        file, a C{twisted.cred} checker, an C{authenticate} function); a
        login not decided by then is C{454 4.7.0}, so a checker that never
        answers cannot hold connections.
    @ivar workers: Processes sharing the listening sockets (the first one
        binds them and starts the others).
    """

    maxMessageSize: int = 25 * 1024 * 1024
    maxRecipients: int = 1000
    commandTimeout: float = 300
    dataTimeout: float = 180
    maxErrors: int = 10
    maxConnections: int = 10000
    maxConnectionsPerClient: int = 50
    connectionLimitExceptions: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    bareNewline: str = "normalize"
    shutdownGrace: float = 30
    drainDelay: float = 7
    dnsblTimeout: float = 5
    pregreetWait: float = 0
    listenBacklog: int = 1024
    policyHookTimeout: float = 10
    workers: int = 1
    maxJunkCommands: int = 100
    minDataRate: int = 500
    policyHookTransactionTimeout: float = 30
    authTimeout: float = 30


# TOML key -> (Limits field, smallest allowed value, kind)
LIMIT_KEYS: dict[str, tuple[str, float, type]] = {
    "max_message_size": ("maxMessageSize", 0, int),
    "max_recipients": ("maxRecipients", 100, int),
    "command_timeout": ("commandTimeout", 1, float),
    "data_timeout": ("dataTimeout", 1, float),
    "min_data_rate": ("minDataRate", 0, int),
    "max_errors": ("maxErrors", 1, int),
    "max_junk_commands": ("maxJunkCommands", 0, int),
    "max_connections": ("maxConnections", 1, int),
    "max_connections_per_client": ("maxConnectionsPerClient", 1, int),
    "shutdown_grace": ("shutdownGrace", 0, float),
    "drain_delay": ("drainDelay", 0, float),
    "dnsbl_timeout": ("dnsblTimeout", 0.1, float),
    "pregreet_wait": ("pregreetWait", 0, float),
    "listen_backlog": ("listenBacklog", 1, int),
    "policy_hook_timeout": ("policyHookTimeout", 0.1, float),
    "policy_hook_transaction_timeout": ("policyHookTransactionTimeout", 0.1, float),
    "auth_timeout": ("authTimeout", 0.1, float),
    "workers": ("workers", 1, int),
}


def limitsMapping(limits: Limits) -> dict[str, Any]:
    """
    The top-level settings that L{parseLimits} reads as C{limits}.
    """
    mapping: dict[str, Any] = {key: getattr(limits, field) for key, (field, _, _) in LIMIT_KEYS.items()}
    mapping["bare_newline"] = limits.bareNewline
    mapping["connection_limit_exceptions"] = list(limits.connectionLimitExceptions)
    return mapping


def parseLimits(mapping: Mapping[str, Any]) -> Limits:
    values: dict[str, Any] = {}
    for key, (field, minimum, kind) in LIMIT_KEYS.items():
        if key not in mapping:
            continue
        value = mapping[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (
            kind is int and not isinstance(value, int)
        ):
            raise ConfigError(key, f"must be {'a whole number' if kind is int else 'a number'}")
        if value < minimum:
            raise ConfigError(key, f"must be at least {minimum:g}")
        values[field] = kind(value)
    if "bare_newline" in mapping:
        values["bareNewline"] = choice(mapping, "bare_newline", BARE_NEWLINE_ACTIONS)
    if "connection_limit_exceptions" in mapping:
        values["connectionLimitExceptions"] = networks(
            mapping["connection_limit_exceptions"], "connection_limit_exceptions"
        )
    return Limits(**values)


class ConnectionCounter:
    """
    Counts open connections in all and per client address, to refuse the
    ones over the limits before they cost anything more.
    """

    def __init__(
        self, maxConnections: int, maxPerClient: int, exceptions: Iterable[str] = ()
    ) -> None:
        """
        @param exceptions: Networks (CIDR) whose clients only count towards
            the total, like Postfix's C{$mynetworks}.
        """
        self.setLimits(maxConnections, maxPerClient, exceptions)
        self._total = 0
        self._perClient: dict[str, int] = {}
        # Exempt clients' connections, by exact address: they count towards
        # the total only, not against their neighbours' group.
        self._exempt: dict[str, int] = {}

    def setLimits(self, maxConnections: int, maxPerClient: int, exceptions: Iterable[str] = ()) -> None:
        """
        Change the limits (on a configuration reload); open connections
        stay counted.
        """
        self._max = maxConnections
        self._maxPerClient = maxPerClient
        self._exceptions = [ipaddress.ip_network(n) for n in exceptions]

    def admit(self, client: str) -> str | None:
        """
        Count a new connection from C{client}, unless it is over a limit.

        @return: L{None} if admitted (call L{release} when it closes), or
            why it is refused.
        """
        if self._total >= self._max:
            return "too many connections"
        if inNetworks(client, self._exceptions):
            self._total += 1
            self._exempt[client] = self._exempt.get(client, 0) + 1
            return None
        group = clientGroup(client)
        count = self._perClient.get(group, 0)
        if count >= self._maxPerClient:
            return "too many connections from your address"
        self._total += 1
        self._perClient[group] = count + 1
        return None

    def release(self, client: str) -> None:
        """
        Forget an admitted connection that has closed (as it was counted,
        whatever a reload has since made of the exemptions).
        """
        self._total -= 1
        exempt = self._exempt.pop(client, 0)
        if exempt:
            if exempt > 1:
                self._exempt[client] = exempt - 1
            return
        group = clientGroup(client)
        count = self._perClient.pop(group, 1) - 1
        if count:
            self._perClient[group] = count


@frozen
class Throttle:
    """
    How MailHarbor slows down password guessing.

    @ivar delays: Seconds to wait before answering the Nth failure from one
        client address in a row (the last applies to all later ones).
    @ivar perSession: Failures after which a session is disconnected.
    @ivar forget: Seconds after which an address's failures are forgotten.
    """

    delays: tuple[float, ...] = (0, 1, 2, 4, 8, 16)
    perSession: int = 3
    forget: float = 900


class FailureTracker:
    """
    Counts authentication failures per client address, an IPv6 client's
    per network (L{harbor.address.clientGroup}).
    """

    def __init__(self, throttle: Throttle, seconds: Callable[[], float]) -> None:
        self._throttle = throttle
        self._seconds = seconds
        self._failures: dict[str, tuple[int, float]] = {}

    def failed(self, client: str) -> float:
        """
        Record a failure.

        @return: how long to wait before telling the client.
        """
        now = self._seconds()
        self._expire(now)
        group = clientGroup(client)
        count = self._failures.get(group, (0, now))[0] + 1
        self._failures[group] = (count, now)
        delays = self._throttle.delays
        return delays[min(count, len(delays)) - 1]

    def succeeded(self, client: str) -> None:
        """
        Forget the failures of an address (and its network, see
        L{harbor.address.clientGroup}) that has logged in.
        """
        self._failures.pop(clientGroup(client), None)

    def _expire(self, now: float) -> None:
        if len(self._failures) > 10000 or any(
            now - last > self._throttle.forget for _, last in self._failures.values()
        ):
            self._failures = {
                client: entry
                for client, entry in self._failures.items()
                if now - entry[1] <= self._throttle.forget
            }
