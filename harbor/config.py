# -*- test-case-name: harbor.test.test_config -*-
"""
MailHarbor's configuration: parsed and validated once, at start, into an
immutable L{Config}.

The TOML file and the command line share one vocabulary (the file's keys are
the long option names), so that every error can name the setting at fault and
the command line can override the file key by key.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import tomllib
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import idna
from attrs import frozen

DEFAULT_MAILDIR = "Maildir"
DEFAULT_PORT = "tcp:25"

_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_HOSTNAME = re.compile(rf"^{_LABEL}(?:\.{_LABEL})*$")
# RFC 5321 Dot-string: atoms of atext joined by single dots.
_DOT_STRING = re.compile(r"^[A-Za-z0-9!#$&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$&'*+/=?^_`{|}~-]+)*$")

BARE_NEWLINE_ACTIONS = ("normalize", "reject")
# What a failing or slow policy hook means (policy_hook_default).
POLICY_HOOK_DEFAULTS = ("accept", "tempfail")
_IDENTIFIER = r"[A-Za-z_][A-Za-z0-9_]*"
# A function named as package.module:function (or module:Class.method),
# for python hooks and the policy hook.
TARGET = re.compile(rf"^{_IDENTIFIER}(?:\.{_IDENTIFIER})*:{_IDENTIFIER}(?:\.{_IDENTIFIER})*$")


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
    @ivar commandTimeout: Seconds a client may be silent between commands.
    @ivar dataTimeout: Seconds a client may be silent while sending a
        message body.
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
        received to finish.
    @ivar dnsblTimeout: Seconds to wait for DNS blocklist answers; no
        answer in time means not listed.
    @ivar pregreetWait: Seconds the banner is held back to catch clients
        that talk first (Postfix postscreen's pregreet test); 0 is off.
    @ivar listenBacklog: The listen queue of TCP listeners that do not set
        C{backlog=} themselves; Twisted's default of 50 drops connections
        when many clients arrive at once.
    @ivar policyHookTimeout: Seconds a policy hook may take before its
        default applies.
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
    dnsblTimeout: float = 5
    pregreetWait: float = 0
    listenBacklog: int = 1024
    policyHookTimeout: float = 10
    workers: int = 1
    maxJunkCommands: int = 100


# Seconds between a running server's looks at its hook spool for jobs put
# back by `mailharbor hooks retry` (the command and the server share it).
RESCAN_INTERVAL = 30.0


# TOML key -> (Limits field, smallest allowed value, kind)
_LIMIT_KEYS: dict[str, tuple[str, float, type]] = {
    "max_message_size": ("maxMessageSize", 0, int),
    "max_recipients": ("maxRecipients", 100, int),
    "command_timeout": ("commandTimeout", 1, float),
    "data_timeout": ("dataTimeout", 1, float),
    "max_errors": ("maxErrors", 1, int),
    "max_junk_commands": ("maxJunkCommands", 0, int),
    "max_connections": ("maxConnections", 1, int),
    "max_connections_per_client": ("maxConnectionsPerClient", 1, int),
    "shutdown_grace": ("shutdownGrace", 0, float),
    "dnsbl_timeout": ("dnsblTimeout", 0.1, float),
    "pregreet_wait": ("pregreetWait", 0, float),
    "listen_backlog": ("listenBacklog", 1, int),
    "policy_hook_timeout": ("policyHookTimeout", 0.1, float),
    "workers": ("workers", 1, int),
}

_TOP_LEVEL_KEYS = frozenset(
    {
        "port",
        "tls_port",
        "submission_port",
        "require_tls",
        "tls_cert",
        "tls_key",
        "users_file",
        "allow_plaintext_auth",
        "submission_mailbox",
        "domain",
        "maildir",
        "hostname",
        "domains",
        "bare_newline",
        "connection_limit_exceptions",
        "filter",
        "dnsbl",
        "dns_servers",
        "hook",
        "policy_hook",
        "policy_hook_default",
        "group_commit",
    }
    | set(_LIMIT_KEYS)
)
DEFAULT_SUBMISSION_MAILBOX = ".submitted/{user}"


@frozen
class Listener:
    """
    One place MailHarbor listens, and how it treats clients there.

    @ivar port: The Twisted server endpoint description.
    @ivar implicitTLS: Whether TLS starts at once (port 465, RFC 8314)
        rather than after STARTTLS.
    @ivar requireTLS: Whether MAIL is refused (530 5.7.0) until the
        client has started TLS.
    @ivar submission: Whether clients must authenticate before MAIL (port
        587 style); their mail is stored for them, never relayed.
    """

    port: str
    implicitTLS: bool = False
    requireTLS: bool = False
    submission: bool = False


@frozen
class TLSFiles:
    """
    The server's certificate (with its chain) and private key, PEM files.
    """

    certificate: str
    key: str
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


class ConfigError(ValueError):
    """
    A setting has a value MailHarbor cannot use.

    @ivar setting: The name of the setting at fault, as the configuration
        file spells it (C{"port"}, C{"domains.example.com.accept"}).
    @ivar problem: What is wrong with it, for a human.
    """

    def __init__(self, setting: str, problem: str) -> None:
        super().__init__(f"{setting}: {problem}")
        self.setting = setting
        self.problem = problem


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
class Config:
    """
    Everything MailHarbor needs to run, checked and normalised.

    @ivar listeners: Where to listen, and how.
    @ivar domains: The domains mail is accepted for, in configured order.
    @ivar maildir: Absolute path of the root under which each domain has
        its Maildir.
    @ivar hostname: This server's name, used in the banner and the
        C{Received:} header.
    @ivar limits: The limits on what clients may send.
    @ivar tls: The certificate files, if TLS is configured.
    @ivar usersFile: The users file for AUTH, if any.
    @ivar allowPlaintextAuth: Whether AUTH is offered without TLS (for
        tests on loopback; never on the internet).
    @ivar submissionMailbox: Where an authenticated user's mail is stored,
        relative to the root, with C{{user}} for the user name.
    @ivar filters: The envelope filters (L{harbor.filters.Filter}), in order.
    @ivar dnsbl: DNS blocklist zones the client's address is looked up in.
    @ivar dnsServers: DNS servers for those lookups, or none for the
        system's.
    @ivar hooks: The new-message hooks (L{harbor.hooks.HookConfig}).
    @ivar policyHook: The policy hook, C{package.module:function}, if any.
    @ivar groupCommit: Whether messages that end at the same time are made
        durable together, sharing the waits for the disk (see
        L{harbor.maildir.commitMany}); L{False} fsyncs every file on its
        own, as Postfix does.
    @ivar policyHookDefault: What a failing or slow policy hook means:
        C{"accept"} or C{"tempfail"}.
    """

    listeners: tuple[Listener, ...]
    domains: tuple[DomainConfig, ...]
    maildir: str
    hostname: str
    limits: Limits = Limits()
    tls: TLSFiles | None = None
    usersFile: str | None = None
    allowPlaintextAuth: bool = False
    submissionMailbox: str = DEFAULT_SUBMISSION_MAILBOX
    filters: tuple[Any, ...] = ()
    dnsbl: tuple[str, ...] = ()
    dnsServers: tuple[tuple[str, int], ...] = ()
    hooks: tuple[Any, ...] = ()
    policyHook: str | None = None
    policyHookDefault: str = "accept"
    groupCommit: bool = True

    @property
    def ports(self) -> tuple[str, ...]:
        """
        The endpoint descriptions of all listeners.
        """
        return tuple(listener.port for listener in self.listeners)
    @classmethod
    def fromMapping(
        cls, mapping: Mapping[str, Any], fqdn: Callable[[], str] = socket.getfqdn
    ) -> Config:
        """
        Validate a mapping shaped like the TOML file and build a L{Config}.

        @param mapping: Keys C{port}, C{domain}, C{maildir}, C{hostname} and
            C{domains} (a table of per-domain tables); all optional but
            C{domain}/C{domains}, of which at least one domain must come.
        @param fqdn: Finds this machine's name when C{hostname} is not set;
            callers that do not need it can avoid a slow DNS lookup.
        @raise ConfigError: naming the first setting that is wrong.
        """
        unknown = sorted(set(mapping) - _TOP_LEVEL_KEYS)
        if unknown:
            raise ConfigError(unknown[0], "unknown setting")

        requireTLS = _boolean(mapping, "require_tls")
        listeners = tuple(
            [
                Listener(normalisePort(p), requireTLS=requireTLS)
                for p in _stringList(mapping.get("port", [DEFAULT_PORT]), "port", allowInt=True)
            ]
            + [
                Listener(normalisePort(p, "tls_port"), implicitTLS=True)
                for p in _stringList(mapping.get("tls_port", []), "tls_port", allowInt=True)
            ]
            + [
                Listener(normalisePort(p, "submission_port"), requireTLS=True, submission=True)
                for p in _stringList(mapping.get("submission_port", []), "submission_port", allowInt=True)
            ]
        )
        if not listeners:
            raise ConfigError("port", "at least one listening port is required")
        tls = _tlsFiles(mapping)
        if tls is None:
            for key in ("tls_port", "submission_port", "require_tls"):
                if mapping.get(key):
                    raise ConfigError(key, "needs a certificate: set tls_cert and tls_key")
        usersFile = mapping.get("users_file")
        if usersFile is not None:
            if not isinstance(usersFile, str) or not usersFile:
                raise ConfigError("users_file", "must be a path")
            from harbor.auth import readUsers

            try:
                readUsers(usersFile)
            except OSError as e:
                raise ConfigError("users_file", f"cannot read {usersFile}: {e.strerror}") from None
            except ValueError as e:
                raise ConfigError("users_file", str(e)) from None
            usersFile = os.path.abspath(usersFile)
        submissionMailbox = mapping.get("submission_mailbox", DEFAULT_SUBMISSION_MAILBOX)
        if (
            not isinstance(submissionMailbox, str)
            or "{user}" not in submissionMailbox
            or submissionMailbox.startswith("/")
            or ".." in submissionMailbox.split("/")
        ):
            raise ConfigError(
                "submission_mailbox", "must be a relative path containing {user}, without .."
            )

        tables = mapping.get("domains", {})
        if not isinstance(tables, Mapping):
            raise ConfigError("domains", "must be a table of domain tables")
        perDomain: dict[str, DomainConfig] = {}
        for rawName, table in tables.items():
            name = normaliseDomain(rawName, f"domains.{rawName}")
            perDomain[name] = _domainTable(name, table, f"domains.{rawName}")

        names = [normaliseDomain(d, "domain") for d in _stringList(mapping.get("domain", []), "domain")]
        for name in perDomain:
            if name not in names:
                names.append(name)
        names = list(dict.fromkeys(names))
        if not names:
            raise ConfigError("domain", "at least one domain to receive mail for is required")
        domains = tuple(perDomain.get(name, DomainConfig(name)) for name in names)

        maildir = mapping.get("maildir", DEFAULT_MAILDIR)
        if not isinstance(maildir, str) or not maildir:
            raise ConfigError("maildir", "must be a non-empty path")

        hostname = mapping.get("hostname")
        if hostname is None:
            hostname = fqdn().lower().rstrip(".")
            if not _HOSTNAME.match(hostname):
                hostname = "localhost"
        elif not isinstance(hostname, str) or not _HOSTNAME.match(hostname.lower().rstrip(".")):
            raise ConfigError("hostname", f"{hostname!r} is not a valid host name")

        return cls(
            listeners=listeners,
            domains=domains,
            maildir=os.path.abspath(maildir),
            hostname=hostname.lower().rstrip("."),
            limits=_limits(mapping),
            tls=tls,
            usersFile=usersFile,
            allowPlaintextAuth=_boolean(mapping, "allow_plaintext_auth"),
            submissionMailbox=submissionMailbox,
            filters=_filters(mapping),
            dnsbl=tuple(normaliseDomain(zone, "dnsbl") for zone in _stringList(mapping.get("dnsbl", []), "dnsbl")),
            dnsServers=tuple(_dnsServer(s) for s in _stringList(mapping.get("dns_servers", []), "dns_servers")),
            hooks=_hooks(mapping),
            policyHook=_policyHook(mapping),
            policyHookDefault=_choice(mapping, "policy_hook_default", POLICY_HOOK_DEFAULTS),
            groupCommit=_boolean(mapping, "group_commit", True),
        )


def _policyHook(mapping: Mapping[str, Any]) -> str | None:
    target = mapping.get("policy_hook")
    if target is None:
        return None
    return checkTarget(target, "policy_hook")


def checkTarget(target: object, setting: str) -> str:
    """
    Check that C{target} names a function as C{package.module:function}.

    @raise ConfigError: naming C{setting} if it does not.
    """
    if not isinstance(target, str) or not TARGET.match(target):
        raise ConfigError(setting, "must name a function as package.module:function")
    return target


def _choice(mapping: Mapping[str, Any], key: str, choices: tuple[str, ...]) -> str:
    value = mapping.get(key, choices[0])
    if value not in choices:
        raise ConfigError(key, f"must be one of {', '.join(choices)}")
    return value  # type: ignore[no-any-return]


def _filters(mapping: Mapping[str, Any]) -> tuple[Any, ...]:
    if "filter" not in mapping:
        return ()
    from harbor.filters import parseFilters

    return parseFilters(mapping["filter"])


def _hooks(mapping: Mapping[str, Any]) -> tuple[Any, ...]:
    if "hook" not in mapping:
        return ()
    from harbor.hooks import parseHooks

    return tuple(parseHooks(mapping["hook"]))


def _dnsServer(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":") if text.count(":") == 1 else (text, "", "53")
    try:
        ipaddress.ip_address(host.strip("[]"))
        number = int(port)
    except ValueError:
        raise ConfigError("dns_servers", f"{text!r} is not an IP address with an optional :port") from None
    return host.strip("[]"), number


def _boolean(mapping: Mapping[str, Any], key: str, default: bool = False) -> bool:
    value = mapping.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(key, "must be true or false")
    return value


def _tlsFiles(mapping: Mapping[str, Any]) -> TLSFiles | None:
    certificate, key = mapping.get("tls_cert"), mapping.get("tls_key")
    if certificate is None and key is None:
        return None
    if not isinstance(certificate, str) or not certificate:
        raise ConfigError("tls_cert", "must be the path of a PEM certificate (set with tls_key)")
    if not isinstance(key, str) or not key:
        raise ConfigError("tls_key", "must be the path of a PEM private key (set with tls_cert)")
    from harbor.tls import TLSConfigurationError, loadCertificateOptions

    try:
        loadCertificateOptions(certificate, key)
    except TLSConfigurationError as e:
        raise ConfigError("tls_cert", str(e)) from None
    return TLSFiles(os.path.abspath(certificate), os.path.abspath(key))


def _limits(mapping: Mapping[str, Any]) -> Limits:
    values: dict[str, Any] = {}
    for key, (field, minimum, kind) in _LIMIT_KEYS.items():
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
        values["bareNewline"] = _choice(mapping, "bare_newline", BARE_NEWLINE_ACTIONS)
    if "connection_limit_exceptions" in mapping:
        values["connectionLimitExceptions"] = networks(
            mapping["connection_limit_exceptions"], "connection_limit_exceptions"
        )
    return Limits(**values)


def loadFile(path: str) -> dict[str, Any]:
    """
    Read a TOML configuration file.

    @raise ConfigError: if the file cannot be read or is not valid TOML;
        the setting named is C{config}.
    """
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise ConfigError("config", f"cannot read {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError("config", f"{path} is not valid TOML: {e}") from None


def normalisePort(description: str, setting: str = "port") -> str:
    """
    Turn a C{--port} value into a Twisted endpoint description.

    A bare number means C{tcp:N}, as users of other mail servers expect;
    anything else must already be an endpoint string. The description is
    parsed (without a reactor, so nothing listens) to reject mistakes now
    rather than when the service starts.

    @raise ConfigError: naming C{setting}.
    """
    from twisted.internet.endpoints import serverFromString

    description = description.strip()
    if description.isdigit():
        description = f"tcp:{description}"
    try:
        serverFromString(None, description)
    except IndexError:
        raise ConfigError(
            setting,
            f"{description!r}: systemd passed no socket to this process (LISTEN_FDS and LISTEN_PID)",
        ) from None
    except Exception as e:
        raise ConfigError(setting, f"{description!r} is not a valid endpoint: {e}") from None
    return description


def withBacklog(description: str, backlog: int) -> str:
    """
    Give a C{tcp:} or C{tcp6:} endpoint description a listen backlog, unless
    it has one.
    """
    kind = description.split(":", 1)[0]
    if kind in ("tcp", "tcp6") and "backlog=" not in description:
        return f"{description}:backlog={backlog}"
    return description


def asciiDomain(domain: str) -> str:
    """
    The lower-case A-label form of a domain, so that C{b\u00fccher.example}
    and C{xn--bcher-kva.example} are the same domain.

    Internationalised names are mapped as IDNA 2008 with UTS 46 says
    (C{stra\u00dfe.de} is C{xn--strae-oqa.de}, not C{strasse.de} as the
    standard library's IDNA 2003 codec would have it), by the C{idna}
    package Twisted's TLS support already brings.

    @raise UnicodeError: if C{domain} is not a valid name (a label longer
        than 63 octets, an empty label, a bad internationalised label).
    """
    name = domain.rstrip(".")
    if name.isascii():
        name = name.lower()
        if len(name) > 253 or not all(0 < len(label) <= 63 for label in name.split(".")):
            raise UnicodeError(f"{domain!r} has an empty or too long label")
        return name
    return idna.encode(name, uts46=True).decode("ascii")


def normaliseDomain(name: object, setting: str) -> str:
    """
    Lower-case a domain name and turn it into its ASCII (A-label) form.

    @raise ConfigError: if C{name} is not a host name; it names C{setting}.
    """
    if not isinstance(name, str):
        raise ConfigError(setting, "must be a string")
    try:
        candidate = asciiDomain(name.strip())
    except UnicodeError:
        raise ConfigError(setting, f"{name!r} is not a valid domain name") from None
    if not _HOSTNAME.match(candidate) or len(candidate) > 253:
        raise ConfigError(setting, f"{name!r} is not a valid domain name")
    return candidate


def _domainTable(name: str, value: object, setting: str) -> DomainConfig:
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
        names = tuple(_stringList(targets, where))
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
    for entry in _stringList(entries, setting):
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


def networks(value: object, setting: str) -> tuple[str, ...]:
    """
    Read an IP network, or a list of them (a bare address is a /32 or
    /128), in their normal written form.

    @raise ConfigError: naming C{setting}, for anything else.
    """
    found = []
    for network in _stringList(value, setting):
        try:
            found.append(str(ipaddress.ip_network(network, strict=False)))
        except ValueError:
            raise ConfigError(setting, f"{network!r} is not an IP address or network") from None
    return tuple(found)


def checkTable(value: object, setting: str, keys: frozenset[str]) -> Mapping[str, Any]:
    """
    Check that C{value} is a TOML table with no keys but C{keys}.

    @raise ConfigError: naming C{setting}, or its first unknown key.
    """
    if not isinstance(value, Mapping):
        raise ConfigError(setting, "must be a table")
    unknown = sorted(set(value) - keys)
    if unknown:
        raise ConfigError(f"{setting}.{unknown[0]}", "unknown setting")
    return value


def _stringList(value: object, setting: str, allowInt: bool = False) -> list[str]:
    kinds: tuple[type, ...] = (str, int) if allowInt else (str,)
    if isinstance(value, kinds) and not isinstance(value, bool):
        return [str(value)]
    if isinstance(value, Iterable) and not isinstance(value, (str, Mapping)):
        items = list(value)
        if all(isinstance(v, kinds) and not isinstance(v, bool) for v in items):
            return [str(v) for v in items]
    raise ConfigError(setting, "must be a string or a list of strings")
