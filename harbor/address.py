# -*- test-case-name: harbor.test.test_policy -*-
"""
Addresses, pure: envelope paths as clients send them in MAIL and RCPT, the
canonical forms routing, filters and policy hooks look them up by, and the
client IP addresses and networks that connection rules and limits match.

No I/O and no Twisted.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from collections.abc import Iterable

from attrs import frozen

from harbor._syntax import asciiDomain

POSTMASTER = "postmaster"
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

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
