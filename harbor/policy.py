# -*- test-case-name: harbor.test.test_policy -*-
"""
Recipient policy: which envelope addresses MailHarbor accepts, and why not.

Pure functions and values, with no I/O and no Twisted: the SMTP layer hands
in the path a client sent (C{<alice@example.com>}) and gets back a decision.
MailHarbor only receives, so anything that asks it to route mail onwards
(source routes, C{%} hacks, bang paths, address literals, other domains) is
refused here, at RCPT time, which is what keeps it from being a relay.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from collections.abc import Iterable
from typing import Union

from attrs import frozen

from harbor.config import CATCH_ALL_REJECT, FOLDER_NAME, DomainConfig, asciiDomain

POSTMASTER = "postmaster"
IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

# RFC 5321 section 4.1.2, extended by RFC 6531 section 3.3 with UTF-8
# characters; which of those are acceptable is checked in _checkUnicode.
_U = "\u0080-\U0010ffff"
_ATEXT = rf"[A-Za-z0-9!#$%&'*+/=?^_`{{|}}~{_U}-]"
_DOT_STRING = re.compile(rf"{_ATEXT}+(?:\.{_ATEXT}+)*")
_QUOTED_STRING = re.compile(rf'"(?:[\x20\x21\x23-\x5b\x5d-\x7e{_U}]|\\[\x20-\x7e{_U}])*"')
_LABEL = rf"[A-Za-z0-9{_U}](?:[A-Za-z0-9{_U}-]*[A-Za-z0-9{_U}])?"
_DOMAIN = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_ADDRESS_LITERAL = re.compile(r"\[[\x21-\x5a\x5e-\x7e]+\]")
_ROUTE = re.compile(rf"@{_DOMAIN.pattern}(?:,@{_DOMAIN.pattern})*:")
_MAX_PATH = 256


class AddressSyntaxError(ValueError):
    """
    A path is not an RFC 5321 path.
    """


class NeedsSMTPUTF8(AddressSyntaxError):
    """
    A path has non-ASCII characters but the client did not ask for
    SMTPUTF8 (RFC 6531 section 3.5: 553 5.6.7).
    """


def _checkUnicode(text: str) -> None:
    for ch in text:
        if ord(ch) >= 0x80 and unicodedata.category(ch)[0] in "CZ":
            raise AddressSyntaxError("control or separator character in address")


@frozen
class Path:
    """
    An envelope address as a client gave it in MAIL or RCPT.

    @ivar local: The local part, as sent (quotes included), or C{""} for
        the null path C{<>}.
    @ivar domain: The domain or address literal, as sent, or C{""} when
        none was given (the null path, or C{<postmaster>}).
    @ivar route: The source route (C{@a,@b:}) in front of the mailbox, or
        C{""}.  RFC 5321 lets servers ignore it; a receiver must not
        follow it.
    """

    local: str
    domain: str
    route: str = ""

    @property
    def isNull(self) -> bool:
        """
        Whether this is the null reverse-path C{<>} of bounces.
        """
        return not self.local and not self.domain

    @property
    def isLiteral(self) -> bool:
        """
        Whether the domain is an address literal such as C{[192.0.2.1]}.
        """
        return self.domain.startswith("[")

    @property
    def mailbox(self) -> str:
        """
        C{local@domain}, or C{""} for the null path: what a header may carry.
        """
        return f"{self.local}@{self.domain}" if self.domain else self.local


def parsePath(raw: bytes | str, allowNull: bool = False, utf8: bool = False) -> Path:
    """
    Parse the argument of C{MAIL FROM:} or C{RCPT TO:}.

    Accepts the angle-bracketed form and, as Postfix does, a bare address;
    accepts C{<postmaster>} without a domain (RFC 5321 section 4.1.1.3).

    @param allowNull: Whether C{<>} is acceptable (only as a sender).
    @param utf8: Whether the transaction uses SMTPUTF8, which allows UTF-8
        in local parts and domains (RFC 6531).
    @raise NeedsSMTPUTF8: for a non-ASCII path without C{utf8}.
    @raise AddressSyntaxError: if C{raw} is not a path; the message says
        why, for the client.
    """
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise AddressSyntaxError("address is not UTF-8") from None
    if not raw.isascii():
        if not utf8:
            raise NeedsSMTPUTF8("non-ASCII address without SMTPUTF8")
        _checkUnicode(raw)
    text = raw.strip()
    if len(text) > _MAX_PATH:
        raise AddressSyntaxError("address too long")
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1]
    elif "<" in text or ">" in text:
        raise AddressSyntaxError("unbalanced angle brackets")
    if not text:
        if allowNull:
            return Path("", "")
        raise AddressSyntaxError("empty address")

    route = _ROUTE.match(text)
    routeText = route.group(0) if route else ""
    text = text[len(routeText):]

    if text.startswith('"'):
        local = _QUOTED_STRING.match(text)
    else:
        local = _DOT_STRING.match(text)
    if local is None:
        raise AddressSyntaxError("bad local part")
    rest = text[local.end():]
    if not rest:
        if local.group(0).lower() == POSTMASTER and not routeText:
            return Path(local.group(0), "")
        raise AddressSyntaxError("address has no domain")
    if rest[0] != "@":
        raise AddressSyntaxError("bad local part")
    domain = rest[1:]
    if _ADDRESS_LITERAL.fullmatch(domain):
        return Path(local.group(0), domain, routeText)
    if not _DOMAIN.fullmatch(domain):
        raise AddressSyntaxError("bad domain")
    try:
        asciiDomain(domain)
    except UnicodeError:
        raise AddressSyntaxError("bad domain") from None
    return Path(local.group(0), domain, routeText)


def canonicalLocalPart(local: str) -> str:
    """
    The form of a local part used for lookups: unquoted and in lower case.

    C{"Alice"} and C{alice} name the same mailbox here, as they do in
    Postfix's table lookups.
    """
    if local.startswith('"') and local.endswith('"') and len(local) >= 2:
        local = re.sub(r"\\(.)", r"\1", local[1:-1])
    return local.lower()


def splitTag(local: str, delimiter: str) -> tuple[str, str | None]:
    """
    Split C{user+tag} into C{("user", "tag")}; a local part without the
    delimiter, or starting with it, has no tag.  C{""} is no delimiter.
    """
    if delimiter and delimiter in local and not local.startswith(delimiter):
        base, tag = local.split(delimiter, 1)
        return base, tag
    return local, None


def canonicalAddress(path: Path) -> str:
    """
    An address in the form it is looked up by: the local part unquoted and
    in lower case, the domain in lower-case A-label form, so that
    C{"Alice"@EXAMPLE.com} is C{alice@example.com} to filters and policy
    hooks as it is to routing (a domain that is not a valid name, or an
    address literal, is only lower-cased: routing refuses it anyway).
    """
    local = canonicalLocalPart(path.local)
    if not path.domain:
        return local
    try:
        domain = path.domain.lower() if path.isLiteral else asciiDomain(path.domain)
    except UnicodeError:
        domain = path.domain.lower()
    return f"{local}@{domain}"


@frozen
class Accept:
    """
    The recipient is ours.

    @ivar mailbox: The Maildir (relative to the root) its mail goes to;
        it comes from the configuration, never from the address.
    @ivar address: The recipient as it will appear in C{Delivered-To:}.
    @ivar folder: The Maildir++ folder of the mailbox, from a sanitised
        sub-address tag, or L{None} for the inbox.
    """

    mailbox: str
    address: str
    folder: str | None = None

    @property
    def key(self) -> tuple[str, str]:
        """
        What makes two acceptances the same delivery: the mailbox and the
        address, regardless of the local part's case or quoting.
        """
        local, _, domain = self.address.rpartition("@")
        return (self.mailbox, f"{canonicalLocalPart(local)}@{domain}")


@frozen
class Reject:
    """
    The recipient is refused.

    @ivar code: The SMTP reply code.
    @ivar enhanced: The RFC 3463 enhanced status code.
    @ivar text: The human-readable reason.
    """

    code: int
    enhanced: str
    text: str


class RecipientPolicy:
    """
    Decides recipients against the configured domains, and routes them to
    mailboxes.
    """

    def __init__(self, domains: Iterable[DomainConfig]) -> None:
        self._domains = {d.name: d for d in domains}
        self._first = next(iter(self._domains))
        self._aliases = {d.name: dict(d.aliases) for d in self._domains.values()}

    def domain(self, name: str) -> DomainConfig | None:
        """
        The configuration of a domain (A-label, lower case), if we serve it.
        """
        return self._domains.get(name)

    def lookupForms(self, path: Path) -> tuple[str, ...]:
        """
        The forms of an address that filters match: its canonical form
        (L{canonicalAddress}), then, if it has a sub-address tag, the
        address without it, as Postfix's access tables look up
        C{user+tag@domain} and then C{user@domain}.  The tag separator is
        the domain's own for our domains and C{+} for others.
        """
        address = canonicalAddress(path)
        local, at, domain = address.rpartition("@")
        if not at:
            return (address,)
        config = self._domains.get(domain)
        base, tag = splitTag(local, config.subaddressDelimiter if config is not None else "+")
        return (address,) if tag is None else (address, f"{base}@{domain}")

    def decide(self, path: Path) -> tuple[Accept, ...] | Reject:
        """
        Accept or refuse one RCPT path, and say where its mail goes: one
        mailbox, or several for an alias.

        Other domains, source routes, C{%}/C{!} routing in the local part
        and address literals are refused as relaying (550 5.7.1); addresses
        a domain does not route get 550 5.1.1.  The postmaster of every
        domain is always accepted (RFC 5321 section 4.5.1), and
        C{<postmaster>} alone goes to the first domain's.
        """
        shown = f"<{path.mailbox}>"
        relay = Reject(550, "5.7.1", f"{shown}: Relay access denied")
        if path.route or path.isLiteral:
            return relay
        local = canonicalLocalPart(path.local)
        if not path.domain:
            return (Accept(self._first, f"{POSTMASTER}@{self._first}"),)
        domain = self._domains.get(asciiDomain(path.domain))
        if domain is None or "%" in local or "!" in local:
            return relay
        address = f"{path.local}@{domain.name}"
        base, tag = splitTag(local, domain.subaddressDelimiter)
        folder = subaddressFolder(tag) if domain.subaddressFolders and tag else None
        aliases = self._aliases[domain.name]
        if base in aliases:
            return tuple(Accept(f"{domain.name}/{m}", address, folder) for m in aliases[base])
        if base in domain.mailboxes:
            return (Accept(f"{domain.name}/{base}", address, folder),)
        if base == POSTMASTER or (domain.accept is not None and base in domain.accept):
            return (Accept(domain.name, address, folder),)
        if domain.accept is not None or domain.catchAll == CATCH_ALL_REJECT:
            return Reject(550, "5.1.1", f"{shown}: Recipient address rejected: User unknown")
        if domain.catchAll is not None:
            return (Accept(f"{domain.name}/{domain.catchAll}", address),)
        return (Accept(domain.name, address),)


def subaddressFolder(tag: str) -> str | None:
    """
    The folder for a sub-address tag, or L{None} (the inbox) when the tag
    is not a plain folder name: a client's text never becomes a path.
    """
    return tag if FOLDER_NAME.match(tag) and ".." not in tag else None


# A user name that is safe as one path component (and in the users file).
USER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}$")


def submissionMailbox(template: str, user: str) -> str:
    """
    The mailbox (relative to the root) of an authenticated user's mail.

    User names come from the operator's users file or cred checker, but
    are still not trusted as path components: a name that is not plainly
    safe is hex-encoded.
    """
    safe = user if USER_NAME.match(user) else "=" + user.encode("utf-8").hex()[:240]
    return template.format(user=safe)


def inNetworks(client: str, networks: Iterable[IPNetwork]) -> bool:
    """
    Whether C{client} is an IP address inside one of C{networks}; a client
    that is not an IP address (a UNIX socket) is in none.  An IPv4 client
    of a dual-stack IPv6 listener (C{::ffff:192.0.2.1}) is matched as the
    IPv4 address it is, as Postfix does.
    """
    try:
        address = ipaddress.ip_address(client)
    except ValueError:
        return False
    mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
    return any(address in network or (mapped is not None and mapped in network) for network in networks)


# How much of an IPv6 client address per-client limits look at: Postfix
# 3.8's smtpd_client_ipv6_prefix_length, since one host may hold a /64.
IPV6_CLIENT_PREFIX = 84


def clientGroup(client: str) -> str:
    """
    What per-client limits count C{client} under: its IPv4 address (also
    when it reaches a dual-stack listener as C{::ffff:a.b.c.d}), or its
    IPv6 network of L{IPV6_CLIENT_PREFIX} bits, so that a client cannot
    dodge a limit by moving through the addresses its network gives it.
    """
    try:
        address = ipaddress.ip_address(client)
    except ValueError:
        return client
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/{IPV6_CLIENT_PREFIX}", strict=False))
    return client


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
