# -*- test-case-name: harbor.test.test_filters -*-
"""
Envelope filters: rules on the client's address, its HELO name, the sender
and the recipient, each with an action.

Pure values and functions, like L{harbor.routing}.  A filter is evaluated at
the earliest SMTP stage at which everything it looks at is known (the
client's address at connection, the HELO name at HELO, the sender at MAIL,
the recipient at RCPT), so a refusal comes before any message data does.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
from collections.abc import Sequence
from typing import Any, Protocol

from attrs import field, frozen

from harbor._syntax import ConfigError, asciiDomain, checkTable, networks
from harbor.address import IPNetwork, canonicalLocalPart, inNetworks

ACTIONS = ("accept", "reject", "tempfail", "discard", "tag")
STAGES = ("connect", "helo", "mail", "rcpt")
_FIELDS = {"client": "connect", "helo": "helo", "sender": "mail", "recipient": "rcpt"}
_KEYS = frozenset(set(_FIELDS) | {"action", "code", "enhanced", "text", "header"})
_HEADER = re.compile(r"^[!-9;-~]+: [\x20-\x7e]+$")
_ENHANCED = re.compile(r"^[45]\.\d{1,3}\.\d{1,3}$")


# An address as one string, or the forms it is matched in, or nothing yet.
Forms = str | Sequence[str] | None


def _networks(networks: Sequence[str | IPNetwork]) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(n, strict=False) for n in networks)


@frozen
class Filter:
    """
    One envelope rule.

    @ivar clients: Networks the client's address must be in (parsed once,
        here), or empty.
    @ivar helo: A glob pattern for the HELO name, or L{None}.
    @ivar sender: A glob pattern for the sender address, or L{None}.
    @ivar recipient: A glob pattern for the recipient address, or L{None}.
    @ivar action: One of L{ACTIONS}.
    @ivar code: The reply code for reject and tempfail.
    @ivar enhanced: The enhanced status code for reject and tempfail.
    @ivar text: The reply text for reject and tempfail.
    @ivar header: The header line added by tag.
    """

    clients: tuple[IPNetwork, ...] = field(converter=_networks)
    helo: str | None
    sender: str | None
    recipient: str | None
    action: str
    code: int = 0
    enhanced: str = ""
    text: str = ""
    header: str = ""

    @property
    def stage(self) -> str:
        """
        The earliest stage at which all this filter looks at is known.
        """
        used = [
            stage
            for name, stage in _FIELDS.items()
            if (self.clients if name == "client" else getattr(self, name))
        ]
        return max(used, key=STAGES.index)

    def matches(self, client: str, helo: str | None, sender: Forms, recipient: Forms) -> bool:
        """
        Whether every condition holds; patterns ignore case.  An address
        may come in several forms (L{harbor.routing.RecipientPolicy.lookupForms}):
        a pattern holds if it matches any of them.
        """
        if self.clients and not inNetworks(client, self.clients):
            return False
        for pattern, value in ((self.helo, helo), (self.sender, sender), (self.recipient, recipient)):
            if pattern is None:
                continue
            forms = (value,) if isinstance(value, str) else value or ()
            lowered = pattern.lower()
            if not any(fnmatch.fnmatchcase(form.lower(), lowered) for form in forms):
                return False
        return True


def firstMatch(
    filters: Sequence[Filter],
    stage: str,
    client: str,
    helo: str | None = None,
    sender: Forms = None,
    recipient: Forms = None,
) -> Filter | None:
    """
    The first filter of C{stage} that matches, if any.
    """
    for candidate in filters:
        if candidate.stage == stage and candidate.matches(client, helo, sender, recipient):
            return candidate
    return None


class FilterScope(Protocol):
    """
    What a filter's verdict sticks to: a session, or one transaction.
    """

    trusted: bool
    discard: bool
    tags: list[str]


def applyFirst(
    filters: Sequence[Filter],
    stage: str,
    scope: FilterScope,
    client: str,
    helo: str | None = None,
    sender: Forms = None,
    recipient: Forms = None,
) -> Filter | None:
    """
    Find the first filter of C{stage} that matches, and record in
    C{scope} what it means for later stages: accept trusts (later filters
    and blocklists are skipped), discard drops the mail, tag adds a header.
    At RCPT, accept and discard concern only that recipient, which the
    caller handles.  Nothing is applied once C{scope} is trusted.

    @return: the filter, for the caller to refuse with, or L{None}.
    """
    if scope.trusted:
        return None
    matched = firstMatch(filters, stage, client, helo, sender, recipient)
    if matched is None:
        return None
    if matched.action == "accept" and stage != "rcpt":
        scope.trusted = True
    elif matched.action == "discard" and stage != "rcpt":
        scope.discard = True
    elif matched.action == "tag":
        scope.tags.append(matched.header)
    return matched


def parseFilters(tables: object) -> tuple[Filter, ...]:
    """
    Read the C{[[filter]]} tables of the configuration.

    @raise ConfigError: naming the filter and the key at fault.
    """
    if not isinstance(tables, list):
        raise ConfigError("filter", "must be an array of tables ([[filter]])")
    return tuple(_parse(table, f"filter[{i}]") for i, table in enumerate(tables))


def _addressPattern(pattern: str, setting: str) -> str:
    """
    A sender or recipient pattern in the form addresses are matched in
    (L{harbor.address.canonicalAddress}): a quoted local part unquoted, the
    domain in A-label form, all in lower case, so that
    C{"John Smith"@b\u00fccher.example} matches what a client sends for it.

    @raise ConfigError: for an internationalised domain with wildcards,
        which has no A-label form to match.
    """
    local, at, domain = pattern.rpartition("@")
    if not at:
        return canonicalLocalPart(pattern)
    if not domain.isascii():
        if any(c in domain for c in "*?["):
            raise ConfigError(setting, "write an internationalised domain with wildcards in its xn-- form")
        try:
            domain = asciiDomain(domain)
        except UnicodeError:
            raise ConfigError(setting, f"{domain!r} is not a valid domain name") from None
    return f"{canonicalLocalPart(local)}@{domain.lower()}"


def filterTable(rule: Filter) -> dict[str, Any]:
    """
    The C{[[filter]]} table that L{parseFilters} reads as C{rule}, in the
    keys an operator writes (patterns in the form they are matched in).
    """
    table: dict[str, Any] = {}
    if rule.clients:
        table["client"] = [str(network) for network in rule.clients]
    for name in ("helo", "sender", "recipient"):
        pattern = getattr(rule, name)
        if pattern is not None:
            table[name] = pattern
    table["action"] = rule.action
    if rule.action in ("reject", "tempfail"):
        table.update(code=rule.code, enhanced=rule.enhanced, text=rule.text)
    if rule.action == "tag":
        table["header"] = rule.header
    return table


def _parse(value: object, setting: str) -> Filter:
    table = checkTable(value, setting, _KEYS)
    clients = networks(table.get("client", []), f"{setting}.client")
    patterns = {}
    for name in ("helo", "sender", "recipient"):
        value = table.get(name)
        if value is not None and (not isinstance(value, str) or not value):
            raise ConfigError(f"{setting}.{name}", "must be a pattern like *@example.com")
        if value is not None and name != "helo":
            value = _addressPattern(value, f"{setting}.{name}")
        patterns[name] = value
    if not clients and not any(patterns.values()):
        raise ConfigError(setting, "needs at least one of client, helo, sender, recipient")
    action = table.get("action")
    if action not in ACTIONS:
        raise ConfigError(f"{setting}.action", f"must be one of {', '.join(ACTIONS)}")
    code, enhanced, text, header = 0, "", "", ""
    if action in ("reject", "tempfail"):
        first = "5" if action == "reject" else "4"
        code = table.get("code", 550 if action == "reject" else 450)
        if not isinstance(code, int) or str(code)[0] != first or not 400 <= code <= 599:
            raise ConfigError(f"{setting}.code", f"must be a {first}xx reply code for {action}")
        enhanced = table.get("enhanced", f"{first}.7.1")
        if not isinstance(enhanced, str) or not _ENHANCED.match(enhanced) or enhanced[0] != first:
            raise ConfigError(f"{setting}.enhanced", f"must be an enhanced status code like {first}.7.1")
        text = table.get("text", "Access denied" if action == "reject" else "Try again later")
        if not isinstance(text, str) or not text.isprintable() or len(text) > 200:
            raise ConfigError(f"{setting}.text", "must be one line of printable text")
    if action == "tag":
        header = table.get("header", "")
        if not isinstance(header, str) or not _HEADER.match(header):
            raise ConfigError(f"{setting}.header", 'must be one header line, like "X-Tag: value"')
    return Filter(
        tuple(clients),
        patterns["helo"],
        patterns["sender"],
        patterns["recipient"],
        action,
        code,
        enhanced,
        text,
        header,
    )
