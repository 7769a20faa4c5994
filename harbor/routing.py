# -*- test-case-name: harbor.test.test_routing -*-
"""
Routing, pure: the domains MailHarbor receives for, their mailboxes,
aliases, catch-alls and folder rules, read from their configuration tables,
and the L{RecipientPolicy} that accepts or refuses each RCPT and says which
Maildirs its mail goes to.

MailHarbor only receives, so anything that asks it to route mail onwards
(source routes, C{%} hacks, bang paths, address literals, other domains) is
refused here, at RCPT time, which is what keeps it from being a relay.
No I/O and no Twisted.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from attrs import frozen

from harbor._syntax import (
    ConfigError,
    asciiDomain,
    checkTable,
    normaliseDomain,
    stringList,
)
from harbor.address import (
    POSTMASTER,
    Path,
    canonicalAddress,
    canonicalLocalPart,
    splitTag,
)

# RFC 5321 Dot-string: atoms of atext joined by single dots.
_DOT_STRING = re.compile(r"^[A-Za-z0-9!#$&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$&'*+/=?^_`{|}~-]+)*$")
_DOMAIN_KEYS = frozenset(
    {"accept", "mailboxes", "aliases", "catch_all", "subaddress_delimiter", "subaddress_folders", "rules"}
)
_RULE_KEYS = frozenset({"sender", "recipient", "header", "contains", "folder"})
# A mailbox is a directory inside its domain's Maildir: never one of the
# Maildir's own, never hidden (Maildir++ folders start with a dot).
MAILBOX_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_RESERVED_MAILBOXES = frozenset({"tmp", "new", "cur"})
# A Maildir++ folder name, dot-separated for hierarchy.
FOLDER_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}(?:\.[A-Za-z0-9_-]{1,64}){0,7}$")
CATCH_ALL_REJECT = "reject"


@frozen
class FolderRule:
    """
    Files matching mail into a Maildir++ folder of its mailbox.

    @ivar field: What is matched: C{"sender"}, C{"recipient"} or
        C{"header"}.
    @ivar header: The header's name, for C{"header"}.
    @ivar contains: The text looked for, without regard to case.
    @ivar folder: The folder's name (C{Lists.python} is C{.Lists.python/}).
    """

    field: str
    header: str | None
    contains: str
    folder: str


@frozen
class DomainConfig:
    """
    One domain MailHarbor receives mail for, and where its mail goes.

    Without any routing settings every address is accepted and stored in
    the domain's own Maildir, C{<root>/<domain>/}.

    @ivar name: The domain in lower case, in its ASCII (A-label) form.
    @ivar accept: Local parts (lower case) accepted into the domain's own
        Maildir; when set, other addresses are refused unless routed below.
    @ivar mailboxes: Local parts that have a mailbox of their own,
        C{<root>/<domain>/<name>/}.
    @ivar aliases: Local part -> mailbox names it delivers to (one or
        several), as pairs.
    @ivar catchAll: Where other addresses go: L{None} for the domain's own
        Maildir (unless C{accept} restricts), C{"reject"}, or a mailbox.
    @ivar subaddressDelimiter: The separator of C{user+tag}; C{""} turns
        sub-addressing off.
    @ivar subaddressFolders: Whether C{user+tag} mail goes to the C{.tag}
        folder of C{user}'s mailbox.
    @ivar rules: Folder rules, the first match wins.
    """

    name: str
    accept: frozenset[str] | None = None
    mailboxes: frozenset[str] = frozenset()
    aliases: tuple[tuple[str, tuple[str, ...]], ...] = ()
    catchAll: str | None = None
    subaddressDelimiter: str = "+"
    subaddressFolders: bool = False
    rules: tuple[FolderRule, ...] = ()

    def mailboxPaths(self) -> list[str]:
        """
        Every Maildir this domain delivers to, relative to the root: its own
        and its mailboxes'.
        """
        names = set(self.mailboxes)
        for _, targets in self.aliases:
            names.update(targets)
        if self.catchAll not in (None, CATCH_ALL_REJECT):
            names.add(self.catchAll)
        return [self.name] + [f"{self.name}/{name}" for name in sorted(names)]


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


def domainTable(domain: DomainConfig) -> dict[str, Any]:
    """
    The C{[domains."name"]} table that L{parseDomainTable} reads as
    C{domain}, every setting spelled out.
    """
    table: dict[str, Any] = {}
    if domain.accept is not None:
        table["accept"] = sorted(domain.accept)
    table["mailboxes"] = sorted(domain.mailboxes)
    table["aliases"] = {local: list(targets) for local, targets in domain.aliases}
    if domain.catchAll is not None:
        table["catch_all"] = domain.catchAll
    table["subaddress_delimiter"] = domain.subaddressDelimiter
    table["subaddress_folders"] = domain.subaddressFolders
    table["rules"] = [_ruleTable(rule) for rule in domain.rules]
    return table


def _ruleTable(rule: FolderRule) -> dict[str, str]:
    if rule.field == "header":
        assert rule.header is not None
        return {"header": rule.header, "contains": rule.contains, "folder": rule.folder}
    return {rule.field: rule.contains, "folder": rule.folder}


def parseDomainTable(name: str, value: object, setting: str) -> DomainConfig:
    table = checkTable(value, setting, _DOMAIN_KEYS)
    accept = None
    if "accept" in table:
        accept = frozenset(_localParts(name, table["accept"], f"{setting}.accept"))
    mailboxes = frozenset(_localParts(name, table.get("mailboxes", []), f"{setting}.mailboxes"))
    for mailbox in mailboxes:
        _checkMailbox(mailbox, f"{setting}.mailboxes")
    aliases = []
    rawAliases = table.get("aliases", {})
    if not isinstance(rawAliases, Mapping):
        raise ConfigError(f"{setting}.aliases", "must be a table of address = mailbox(es)")
    for address, targets in rawAliases.items():
        where = f"{setting}.aliases.{address}"
        [local] = _localParts(name, [address], where)
        names = tuple(stringList(targets, where))
        if not names:
            raise ConfigError(where, "needs at least one mailbox")
        for target in names:
            _checkMailbox(target, where)
        aliases.append((local, names))
    catchAll = table.get("catch_all")
    if catchAll is not None:
        if not isinstance(catchAll, str):
            raise ConfigError(f"{setting}.catch_all", 'must be "reject" or a mailbox name')
        if catchAll != CATCH_ALL_REJECT:
            _checkMailbox(catchAll, f"{setting}.catch_all")
    delimiter = table.get("subaddress_delimiter", "+")
    if not isinstance(delimiter, str) or len(delimiter) > 1 or (delimiter and delimiter.isalnum()):
        raise ConfigError(f"{setting}.subaddress_delimiter", 'must be one punctuation character, or "" for none')
    folders = table.get("subaddress_folders", False)
    if not isinstance(folders, bool):
        raise ConfigError(f"{setting}.subaddress_folders", "must be true or false")
    rules = table.get("rules", [])
    if not isinstance(rules, list):
        raise ConfigError(f"{setting}.rules", "must be an array of tables")
    return DomainConfig(
        name,
        accept,
        mailboxes,
        tuple(aliases),
        catchAll,
        delimiter,
        folders,
        tuple(_rule(rule, f"{setting}.rules[{i}]") for i, rule in enumerate(rules)),
    )


def _localParts(domainName: str, entries: object, setting: str) -> list[str]:
    """
    Local parts (lower case) from a list of local parts or addresses in
    C{domainName}.
    """
    locals = []
    for entry in stringList(entries, setting):
        local, at, domain = entry.strip().rpartition("@")
        if not at:
            local = domain
        elif normaliseDomain(domain, setting) != domainName:
            raise ConfigError(setting, f"{entry!r} is not an address in {domainName}")
        if not _DOT_STRING.match(local):
            raise ConfigError(setting, f"{entry!r} is not a valid local part")
        locals.append(local.lower())
    return locals


def _checkMailbox(name: str, setting: str) -> None:
    if not MAILBOX_NAME.match(name) or name in _RESERVED_MAILBOXES:
        raise ConfigError(
            setting,
            f"{name!r} is not a mailbox name (lower-case letters, digits, _ and -, "
            "not tmp, new or cur)",
        )


def _rule(value: object, setting: str) -> FolderRule:
    table = checkTable(value, setting, _RULE_KEYS)
    matched = [key for key in ("sender", "recipient", "header") if key in table]
    if len(matched) != 1:
        raise ConfigError(setting, "needs exactly one of sender, recipient or header")
    field = matched[0]
    contains = table.get("contains", "" if field == "header" else table[field])
    header = None
    if field == "header":
        header = table["header"]
        if not isinstance(header, str) or not re.match(r"^[!-9;-~]+$", header):
            raise ConfigError(f"{setting}.header", "must be a header name")
        if "contains" not in table:
            raise ConfigError(f"{setting}.contains", "is required with header")
    elif "contains" in table:
        raise ConfigError(f"{setting}.contains", f"is not used with {field} (give the text as {field} = ...)")
    if not isinstance(contains, str) or not contains:
        raise ConfigError(f"{setting}.{'contains' if field == 'header' else field}", "must be a non-empty text")
    folder = table.get("folder")
    if not isinstance(folder, str) or not FOLDER_NAME.match(folder):
        raise ConfigError(f"{setting}.folder", "must be a folder name like Lists or Lists.python")
    return FolderRule(field, header, contains, folder)
