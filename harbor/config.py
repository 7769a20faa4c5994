# -*- test-case-name: harbor.test.test_config -*-
"""
MailHarbor's configuration: parsed and validated once, at start, into an
immutable L{Config}.

The TOML file and the command line share one vocabulary (the file's keys are
the long option names), so that every error can name the setting at fault and
the command line can override the file key by key.

Building a L{Config} looks at nothing outside the mapping it is given (but
for the machine's name, when no C{hostname} is set); the checks that read
files, parse endpoints or import code are L{harbor.preflight}'s.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import tomllib
from collections.abc import Callable, Mapping
from typing import Any

from attrs import field, frozen

from harbor._syntax import (
    HOSTNAME,
    ConfigError,
    boolean,
    checkTarget,
    choice,
    networks,
    normaliseDomain,
    stringList,
)
from harbor.filters import Filter, filterTable, parseFilters
from harbor.hooks.config import SPOOL_NAME, HookConfig, hookTable, parseHooks
from harbor.limits import LIMIT_KEYS, Limits, limitsMapping, parseLimits
from harbor.routing import USER_NAME, DomainConfig, domainTable, parseDomainTable
from harbor.store.browse import SUBMITTED, splitKey
from harbor.store.lanes import (
    COMMIT_MODES,
    DEFAULT_COMMIT_BATCH,
    DEFAULT_COMMIT_LANES,
    DEFAULT_COMMIT_MODE,
    MAX_COMMIT_BATCH,
    MAX_COMMIT_LANES,
)

DEFAULT_MAILDIR = "Maildir"
DEFAULT_PORT = "tcp:25"


# What a failing or slow policy hook means (policy_hook_default).
POLICY_HOOK_DEFAULTS = ("accept", "tempfail")


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
        "hook_spool",
        "policy_hook",
        "policy_hook_default",
        "group_commit",
        "commit_lanes",
        "commit_batch",
        "trusted_proxies",
        "metrics",
        "web",
    }
    | set(LIMIT_KEYS)
)
DEFAULT_SUBMISSION_MAILBOX = ".submitted/{user}"
# Who may send PROXY headers to haproxy: listeners: a balancer on this
# host.  A balancer elsewhere must be listed, so that a header forged by
# anyone who can reach the port is never believed.
DEFAULT_TRUSTED_PROXIES = ("127.0.0.0/8", "::1/128")


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


def isLoopbackName(name: str) -> bool:
    """
    Whether C{name} is one of the names of the loopback address that
    C{/etc/hosts} files give (C{localhost}, C{localhost.localdomain},
    C{ip6-localhost}, C{localhost6}, ...), which name no machine.
    """
    name = name.lower().rstrip(".")
    return name.split(".")[0] in ("localhost", "localhost4", "localhost6", "ip6-localhost", "ip6-loopback")


def machineName(
    fqdn: Callable[[], str] = socket.getfqdn, hostname: Callable[[], str] = socket.gethostname
) -> str:
    """
    This machine's name, for when no C{hostname} is set: its fully
    qualified name if it has one, else the name the kernel has for it.

    C{socket.getfqdn} looks the host name up and returns the first name of
    the address it finds; where C{/etc/hosts} lists the host name on the
    C{127.0.0.1} line after C{localhost} (as containers and many small
    machines do), that is C{localhost}, which names no machine: then the
    host name itself is the better answer.

    @return: a valid host name, or C{"localhost"} if there is none.
    """
    for candidate in (fqdn, hostname):
        try:
            name = candidate().lower().rstrip(".")
        except OSError:
            continue
        if HOSTNAME.match(name) and not isLoopbackName(name):
            return name
    return "localhost"


# The web interface's port when [web] names none: on loopback.
DEFAULT_WEB_LISTEN = "8025"
_WEB_KEYS = frozenset({"listen", "names", "admins", "tls", "access"})


@frozen
class WebConfig:
    """
    The web interface (C{web} or C{[web]}): where it listens and who sees
    what.

    @ivar listen: The endpoint description (a bare port number in the file
        means that port on 127.0.0.1).
    @ivar names: Host names (or addresses) the browser may call it by,
        besides the loopback ones: any other C{Host} is refused, so that a
        page elsewhere cannot reach it through DNS rebinding.
    @ivar admins: Users who see every mailbox, and C{/metrics}.
    @ivar access: Per user, the Maildir keys granted (each with all below
        it), as pairs in the file's order.
    @ivar tls: Whether it serves TLS, with C{tls_cert} and C{tls_key}.
    """

    listen: str
    names: tuple[str, ...] = ()
    admins: tuple[str, ...] = ()
    access: tuple[tuple[str, tuple[str, ...]], ...] = ()
    tls: bool = False

    def grantsOf(self, user: str) -> tuple[str, ...]:
        """
        The keys C{user} was granted in C{[web.access]}.
        """
        for name, keys in self.access:
            if name == user:
                return keys
        return ()

    def asTable(self) -> dict[str, Any]:
        """
        The C{[web]} table that L{parseWeb} reads as this.
        """
        return {
            "listen": self.listen,
            "names": list(self.names),
            "admins": list(self.admins),
            "tls": self.tls,
            "access": {user: list(keys) for user, keys in self.access},
        }


def parseWeb(value: object, usersFile: str | None, tls: TLSFiles | None) -> WebConfig | None:
    """
    The C{web} setting: absent or C{false} for no web interface, a port
    number or endpoint (C{web = "8025"}, short for C{[web] listen}), or the
    C{[web]} table.

    Without a users file the interface has no login and every visitor sees
    every mailbox, so it must then listen on loopback only.

    @raise ConfigError: naming C{web}, C{web.listen}, C{web.names},
        C{web.admins}, C{web.access.USER} or C{web.tls}.
    """
    if value is None or value is False or value == "":
        return None
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        value = {"listen": value}
    if not isinstance(value, Mapping):
        raise ConfigError("web", "must be a port number, an endpoint, or a [web] table")
    unknown = sorted(set(value) - _WEB_KEYS)
    if unknown:
        raise ConfigError(f"web.{unknown[0]}", "unknown setting")
    listen = value.get("listen", DEFAULT_WEB_LISTEN)
    if isinstance(listen, bool) or not isinstance(listen, (str, int)) or not str(listen).strip():
        raise ConfigError("web.listen", "must be a port number or an endpoint, e.g. 8025 or tcp:8025:interface=10.0.0.5")
    listen = loopbackEndpoint(str(listen))
    if usersFile is None and not isLocalEndpoint(listen):
        raise ConfigError(
            "web.listen",
            f"{listen!r} is reachable from other machines, and without users the web interface "
            "has no login: set users_file, or listen on loopback (a bare port number)",
        )
    names = []
    for name in stringList(value.get("names", []), "web.names"):
        name = name.strip().lower().rstrip(".")
        if name.startswith("[") and name.endswith("]"):
            # An IPv6 address as a URL writes it; the Host check compares
            # the address itself, in its one canonical spelling.
            name = name[1:-1]
        if _isAddress(name):
            name = str(ipaddress.ip_address(name))
        elif not HOSTNAME.match(name):
            raise ConfigError("web.names", f"{name!r} is not a host name or an IP address")
        names.append(name)
    admins = stringList(value.get("admins", []), "web.admins")
    for admin in admins:
        if not USER_NAME.match(admin):
            raise ConfigError("web.admins", f"{admin!r} is not a user name")
    access = value.get("access", {})
    if not isinstance(access, Mapping):
        raise ConfigError("web.access", "must be a table of user = [keys]")
    grants = []
    for user, keys in access.items():
        setting = f"web.access.{user}"
        if not USER_NAME.match(user):
            raise ConfigError(setting, f"{user!r} is not a user name")
        grants.append((user, tuple(_grantKey(key, setting) for key in stringList(keys, setting))))
    webTLS = value.get("tls", False)
    if not isinstance(webTLS, bool):
        raise ConfigError("web.tls", "must be true or false")
    if webTLS and tls is None:
        raise ConfigError("web.tls", "needs a certificate: set tls_cert and tls_key")
    return WebConfig(
        listen=listen,
        names=tuple(dict.fromkeys(names)),
        admins=tuple(dict.fromkeys(admins)),
        access=tuple(grants),
        tls=webTLS,
    )


def _isAddress(text: str) -> bool:
    try:
        ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return False
    return True


def _grantKey(key: str, setting: str) -> str:
    """
    A Maildir key granted in C{[web.access]}: a domain, C{domain/mailbox},
    a Maildir++ folder below them, or a user's submitted mail, its domain
    in its ASCII form.
    """
    parts = key.strip().strip("/").split("/")
    if parts[0] != SUBMITTED:
        parts[0] = normaliseDomain(parts[0], setting)
    normal = "/".join(parts)
    if "" in parts or ".." in parts or splitKey(normal) is None:
        raise ConfigError(setting, f"{key!r} is not a domain, domain/mailbox or folder key")
    return normal


def _endpointFields(description: str) -> list[str]:
    """
    An endpoint description split at its unescaped colons, the escapes
    undone (C{tcp6:80:interface=\\:\\:1}).
    """
    fields, current, escaped = [], "", False
    for character in description:
        if escaped:
            current += character
            escaped = False
        elif character == "\\":
            escaped = True
        elif character == ":":
            fields.append(current)
            current = ""
        else:
            current += character
    fields.append(current)
    return fields


def isLocalEndpoint(description: str) -> bool:
    """
    Whether a server endpoint description can only be reached from this
    machine: a C{tcp}, C{tcp6} or C{ssl} endpoint bound to a loopback
    address, or a UNIX socket.  Anything else (all interfaces, another
    address, systemd's sockets) might be reached from elsewhere.

    The address must be a loopback address or exactly C{localhost}: a
    name such as C{localhost.attacker.example} is resolved when the port
    is bound, to whatever its owner likes.  And an C{interface} given
    twice is not local: Twisted would bind the last, so no one of them
    can be trusted to be the one.
    """
    fields = _endpointFields(description)
    kind = fields[0].lower()
    if kind == "unix":
        return True
    if kind not in ("tcp", "tcp6", "ssl"):
        return False
    interfaces = [
        setting for name, equals, setting in (item.partition("=") for item in fields[1:]) if equals and name == "interface"
    ]
    if len(interfaces) != 1:
        return False
    if interfaces[0].lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(interfaces[0]).is_loopback
    except ValueError:
        return False


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
    @ivar hooks: The new-message hooks (L{harbor.hooks.config.HookConfig}).
    @ivar hookSpool: Absolute path of the hooks' job spool, which
        instances receiving into the same Maildirs share:
        C{<maildir>/.hooks} unless set (C{""} given means that too).
    @ivar policyHook: The policy hook, C{package.module:function}, if any.
    @ivar groupCommit: How finished messages are made durable (see
        L{harbor.store.lanes}): C{"fsync"} in batches, each file fsynced
        on its own; C{"syncfs"} in batches made durable by one
        C{syncfs(2)} per file system, for a Maildir on a file system of
        its own; C{"off"} every message on its own, as it ends.
    @ivar commitLanes: How many threads commit small messages at once.
    @ivar commitBatch: The most messages one of them commits at a time.
    @ivar policyHookDefault: What a failing or slow policy hook means:
        C{"accept"} or C{"tempfail"}.
    @ivar trustedProxies: The networks (CIDR) allowed to send a PROXY
        header to C{haproxy:} listeners; a connection from anywhere else
        is closed unread.
    @ivar metrics: The endpoint serving C{/metrics}, C{/healthz} and
        C{/readyz}, without authentication, or L{None} for none.
    @ivar web: The web interface, or L{None} for none (the default).
    """

    listeners: tuple[Listener, ...]
    domains: tuple[DomainConfig, ...]
    maildir: str
    hostname: str
    limits: Limits = field(factory=Limits)
    tls: TLSFiles | None = None
    usersFile: str | None = None
    allowPlaintextAuth: bool = False
    submissionMailbox: str = DEFAULT_SUBMISSION_MAILBOX
    filters: tuple[Filter, ...] = ()
    dnsbl: tuple[str, ...] = ()
    dnsServers: tuple[tuple[str, int], ...] = ()
    hooks: tuple[HookConfig, ...] = ()
    hookSpool: str = ""
    policyHook: str | None = None
    policyHookDefault: str = "accept"
    groupCommit: str = DEFAULT_COMMIT_MODE
    commitLanes: int = DEFAULT_COMMIT_LANES
    commitBatch: int = DEFAULT_COMMIT_BATCH
    trustedProxies: tuple[str, ...] = DEFAULT_TRUSTED_PROXIES

    metrics: str | None = None
    web: WebConfig | None = None

    def __attrs_post_init__(self) -> None:
        if not self.hookSpool:
            # Frozen: the default follows maildir, so it is set once here.
            object.__setattr__(self, "hookSpool", os.path.join(self.maildir, SPOOL_NAME))

    @property
    def ports(self) -> tuple[str, ...]:
        """
        The endpoint descriptions of all listeners.
        """
        return tuple(listener.port for listener in self.listeners)

    def asMapping(self) -> dict[str, Any]:
        """
        This configuration in the file's own vocabulary: the mapping, keyed
        as the TOML file is, that L{fromMapping} reads as this same
        configuration, every setting spelled out (defaults included), so
        that an operator sees what to write to change it.
        """
        plain = [listener for listener in self.listeners if not (listener.implicitTLS or listener.submission)]
        mapping: dict[str, Any] = {
            "port": [listener.port for listener in plain],
            "tls_port": [listener.port for listener in self.listeners if listener.implicitTLS],
            "submission_port": [listener.port for listener in self.listeners if listener.submission],
            "require_tls": any(listener.requireTLS for listener in plain),
        }
        if self.tls is not None:
            mapping.update(tls_cert=self.tls.certificate, tls_key=self.tls.key)
        if self.usersFile is not None:
            mapping["users_file"] = self.usersFile
        mapping.update(
            allow_plaintext_auth=self.allowPlaintextAuth,
            submission_mailbox=self.submissionMailbox,
            domain=[domain.name for domain in self.domains],
            domains={domain.name: domainTable(domain) for domain in self.domains},
            maildir=self.maildir,
            hostname=self.hostname,
        )
        mapping.update(limitsMapping(self.limits))
        mapping.update(
            filter=[filterTable(rule) for rule in self.filters],
            dnsbl=list(self.dnsbl),
            dns_servers=[host if ":" in host else f"{host}:{port}" for host, port in self.dnsServers],
            hook=[hookTable(hook) for hook in self.hooks],
            hook_spool=self.hookSpool,
        )
        if self.policyHook is not None:
            mapping["policy_hook"] = self.policyHook
        mapping.update(
            policy_hook_default=self.policyHookDefault,
            group_commit=self.groupCommit,
            commit_lanes=self.commitLanes,
            commit_batch=self.commitBatch,
            trusted_proxies=list(self.trustedProxies),
        )
        if self.metrics is not None:
            mapping["metrics"] = self.metrics
        if self.web is not None:
            mapping["web"] = self.web.asTable()
        return mapping

    @classmethod
    def fromMapping(cls, mapping: Mapping[str, Any], fqdn: Callable[[], str] = machineName) -> Config:
        """
        Validate a mapping shaped like the TOML file and build a L{Config}.

        Nothing is read or imported: whether the users file and the
        certificate can be read, the endpoints parsed and the hooks
        imported is for L{harbor.preflight.checkConfig}, once, at start.

        @param mapping: Keys C{port}, C{domain}, C{maildir}, C{hostname} and
            C{domains} (a table of per-domain tables); all optional but
            C{domain}/C{domains}, of which at least one domain must come.
        @param fqdn: Finds this machine's name when C{hostname} is not set
            (L{machineName} by default); callers that do not need it can
            avoid a slow DNS lookup.
        @raise ConfigError: naming the first setting that is wrong.
        """
        unknown = sorted(set(mapping) - _TOP_LEVEL_KEYS)
        if unknown:
            raise ConfigError(unknown[0], "unknown setting")

        requireTLS = boolean(mapping, "require_tls")
        listeners = tuple(
            [
                Listener(normalisePort(p), requireTLS=requireTLS)
                for p in stringList(mapping.get("port", [DEFAULT_PORT]), "port", allowInt=True)
            ]
            + [
                Listener(normalisePort(p), implicitTLS=True)
                for p in stringList(mapping.get("tls_port", []), "tls_port", allowInt=True)
            ]
            + [
                Listener(normalisePort(p), requireTLS=True, submission=True)
                for p in stringList(mapping.get("submission_port", []), "submission_port", allowInt=True)
            ]
        )
        if not listeners:
            raise ConfigError("port", "at least one listening port is required")
        trustedProxies = networks(mapping.get("trusted_proxies", DEFAULT_TRUSTED_PROXIES), "trusted_proxies")
        if not trustedProxies and any(listener.port.startswith("haproxy:") for listener in listeners):
            raise ConfigError("trusted_proxies", "haproxy: listeners need at least one trusted proxy network")
        tls = _tlsFiles(mapping)
        if tls is None:
            for key in ("tls_port", "submission_port", "require_tls"):
                if mapping.get(key):
                    raise ConfigError(key, "needs a certificate: set tls_cert and tls_key")
        usersFile = mapping.get("users_file")
        if usersFile is not None:
            if not isinstance(usersFile, str) or not usersFile:
                raise ConfigError("users_file", "must be a path")
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
            perDomain[name] = parseDomainTable(name, table, f"domains.{rawName}")

        names = [normaliseDomain(d, "domain") for d in stringList(mapping.get("domain", []), "domain")]
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
            if not HOSTNAME.match(hostname):
                hostname = "localhost"
        elif not isinstance(hostname, str) or not HOSTNAME.match(hostname.lower().rstrip(".")):
            raise ConfigError("hostname", f"{hostname!r} is not a valid host name")

        return cls(
            listeners=listeners,
            domains=domains,
            maildir=os.path.abspath(maildir),
            hostname=hostname.lower().rstrip("."),
            limits=parseLimits(mapping),
            tls=tls,
            usersFile=usersFile,
            allowPlaintextAuth=boolean(mapping, "allow_plaintext_auth"),
            submissionMailbox=submissionMailbox,
            filters=_filters(mapping),
            dnsbl=tuple(normaliseDomain(zone, "dnsbl") for zone in stringList(mapping.get("dnsbl", []), "dnsbl")),
            dnsServers=tuple(_dnsServer(s) for s in stringList(mapping.get("dns_servers", []), "dns_servers")),
            hooks=_hooks(mapping),
            hookSpool=_hookSpool(mapping, os.path.abspath(maildir), domains),
            policyHook=_policyHook(mapping),
            policyHookDefault=choice(mapping, "policy_hook_default", POLICY_HOOK_DEFAULTS),
            groupCommit=_groupCommit(mapping),
            commitLanes=_count(mapping, "commit_lanes", DEFAULT_COMMIT_LANES, MAX_COMMIT_LANES),
            commitBatch=_count(mapping, "commit_batch", DEFAULT_COMMIT_BATCH, MAX_COMMIT_BATCH),
            trustedProxies=trustedProxies,
            metrics=_metrics(mapping),
            web=parseWeb(mapping.get("web"), usersFile, tls),
        )


def _groupCommit(mapping: Mapping[str, Any]) -> str:
    """
    The C{group_commit} setting: one of L{COMMIT_MODES}, or a boolean as
    it was before there were modes (C{true} is C{"fsync"}, C{false} is
    C{"off"}), so that existing files keep working.
    """
    value = mapping.get("group_commit", DEFAULT_COMMIT_MODE)
    if value is True:
        return "fsync"
    if value is False:
        return "off"
    if not isinstance(value, str) or value not in COMMIT_MODES:
        raise ConfigError("group_commit", f"must be one of {', '.join(COMMIT_MODES)}")
    return value


def _count(mapping: Mapping[str, Any], key: str, default: int, maximum: int) -> int:
    """
    The value of C{key}, a whole number from 1 to C{maximum}.
    """
    value = mapping.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= maximum:
        raise ConfigError(key, f"must be a whole number from 1 to {maximum}")
    return value


def _metrics(mapping: Mapping[str, Any]) -> str | None:
    """
    The C{metrics} setting: an endpoint, a bare port number meaning that
    port on 127.0.0.1 (the metrics and health checks have no
    authentication), or L{None}.
    """
    value = mapping.get("metrics")
    if value is None or value is False or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ConfigError("metrics", "must be a port number or an endpoint, e.g. 9025 or tcp:9025:interface=10.0.0.5")
    return loopbackEndpoint(str(value))


def loopbackEndpoint(description: str) -> str:
    """
    A bare port number as a loopback TCP endpoint; anything else as it is
    (an endpoint string, parsed at start).
    """
    description = description.strip()
    if description.isdigit():
        return f"tcp:{description}:interface=127.0.0.1"
    return description


def _policyHook(mapping: Mapping[str, Any]) -> str | None:
    target = mapping.get("policy_hook")
    if target is None:
        return None
    return checkTarget(target, "policy_hook")


def _filters(mapping: Mapping[str, Any]) -> tuple[Filter, ...]:
    if "filter" not in mapping:
        return ()
    return parseFilters(mapping["filter"])


def _hooks(mapping: Mapping[str, Any]) -> tuple[HookConfig, ...]:
    if "hook" not in mapping:
        return ()
    return tuple(parseHooks(mapping["hook"]))


def _hookSpool(mapping: Mapping[str, Any], maildir: str, domains: tuple[DomainConfig, ...]) -> str:
    """
    The C{hook_spool} setting: a directory, by default C{<maildir>/.hooks},
    that is neither the Maildir root nor in a domain's Maildir.
    """
    value = mapping.get("hook_spool")
    if value is None:
        return os.path.join(maildir, SPOOL_NAME)
    if not isinstance(value, str) or not value or "\0" in value:
        raise ConfigError("hook_spool", "must be the path of a directory")
    spool = os.path.abspath(value)
    if spool == maildir:
        raise ConfigError("hook_spool", "must not be the Maildir root itself: use a directory of its own")
    for domain in domains:
        home = os.path.join(maildir, domain.name)
        if spool == home or spool.startswith(home + os.sep):
            raise ConfigError("hook_spool", f"must not be in the Maildir of {domain.name} ({home})")
    return spool


def _dnsServer(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":") if text.count(":") == 1 else (text, "", "53")
    try:
        ipaddress.ip_address(host.strip("[]"))
        number = int(port)
    except ValueError:
        raise ConfigError("dns_servers", f"{text!r} is not an IP address with an optional :port") from None
    return host.strip("[]"), number


def _tlsFiles(mapping: Mapping[str, Any]) -> TLSFiles | None:
    certificate, key = mapping.get("tls_cert"), mapping.get("tls_key")
    if certificate is None and key is None:
        return None
    if not isinstance(certificate, str) or not certificate:
        raise ConfigError("tls_cert", "must be the path of a PEM certificate (set with tls_key)")
    if not isinstance(key, str) or not key:
        raise ConfigError("tls_key", "must be the path of a PEM private key (set with tls_cert)")
    return TLSFiles(os.path.abspath(certificate), os.path.abspath(key))


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


def normalisePort(description: str) -> str:
    """
    Turn a C{--port} value into a Twisted endpoint description.

    A bare number means C{tcp:N}, as users of other mail servers expect;
    anything else must already be an endpoint string, which
    L{harbor.preflight.checkConfig} parses at start.
    """
    description = description.strip()
    if description.isdigit():
        description = f"tcp:{description}"
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


