# -*- test-case-name: harbor.test.test_dnsbl -*-
"""
DNS blocklists: is the client's address listed in a zone such as
C{zen.spamhaus.org}?

The lookups are asynchronous (L{twisted.names}) and bounded by a timeout,
and a DNS failure or a timeout counts as "not listed": a blocklist outage
must never cost anyone their mail.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, TimeoutError, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.names import dns
from twisted.python.failure import Failure


def queryName(client: str, zone: str) -> str | None:
    """
    The name to look up for C{client} in C{zone}: the address's octets (or
    IPv6 nibbles) reversed, then the zone.  L{None} for what is not an IP
    address.
    """
    try:
        address = ipaddress.ip_address(client)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    reversed = address.reverse_pointer.rsplit(".", 2)[0]
    return f"{reversed}.{zone}"


class Blocklists:
    """
    Looks clients up in several zones at once.
    """

    _log = Logger()

    def __init__(self, zones: Sequence[str], resolver: Any, clock: IReactorTime, timeout: float) -> None:
        """
        @param resolver: An L{twisted.internet.interfaces.IResolver}.
        """
        self._zones = tuple(zones)
        self._resolver = resolver
        self._clock = clock
        self._timeout = timeout

    def lookup(self, client: str) -> Deferred[str | None]:
        """
        @return: a L{Deferred} firing with the first zone (in configured
            order) that lists C{client}, or L{None}; it never fails.
        """
        lookups = []
        for zone in self._zones:
            name = queryName(client, zone)
            if name is None:
                return succeed(None)
            lookups.append(self._listedIn(name, zone))
        return DeferredList(lookups).addCallback(
            lambda results: next((zone for ok, zone in results if ok and zone), None)
        )

    def _listedIn(self, name: str, zone: str) -> Deferred[str | None]:
        d = self._resolver.lookupAddress(name, timeout=(self._timeout,))
        d.addTimeout(self._timeout, self._clock)

        def answered(result: tuple[list[Any], list[Any], list[Any]]) -> str | None:
            for record in result[0]:
                if record.type == dns.A and record.payload.dottedQuad().startswith("127."):
                    return zone
            return None

        def failed(failure: Failure) -> None:
            if not failure.check(dns.DomainError, dns.AuthoritativeDomainError):
                self._log.info(
                    "DNSBL {zone} did not answer for {name}: {error}",
                    zone=zone,
                    name=name,
                    error=failure.getErrorMessage() if not failure.check(TimeoutError) else "timeout",
                )

        listed: Deferred[str | None] = d.addCallbacks(answered, failed)
        return listed


class SharedResult:
    """
    One lookup's result, waited for by several recipients.
    """

    def __init__(self, result: Deferred[Any]) -> None:
        self._done = False
        self._value: Any = None
        self._waiters: list[Deferred[Any]] = []
        result.addBoth(self._fired)

    def _fired(self, value: Any) -> None:
        self._done, self._value = True, None if isinstance(value, Failure) else value
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(self._value)

    def wait(self) -> Deferred[Any]:
        """
        A new L{Deferred} of the result.
        """
        if self._done:
            return succeed(self._value)
        waiter: Deferred[Any] = Deferred()
        self._waiters.append(waiter)
        return waiter
