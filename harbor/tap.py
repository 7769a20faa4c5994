# -*- test-case-name: harbor.test.test_tap -*-
"""
C{twistd mailharbor}: command-line options and the service they build.

Options are checked completely in L{Options.postOptions}, before twistd
daemonizes or binds anything: parsed into a L{Config}, then checked against
the world by L{harbor.preflight.checkConfig}, so a mistake is reported as a
usage error that names the option (or the file and its setting).
L{makeService} only hands the result to L{HarborService}; it takes the
reactor as an argument so tests can pass a fake one.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from twisted.cred import strcred
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.python import usage

from harbor._syntax import ConfigError
from harbor._workers import inheritedSockets
from harbor.access import Identity
from harbor.auth import Authenticate
from harbor.config import DEFAULT_MAILDIR, Config, loadFile
from harbor.hooks.kinds import IHook
from harbor.ownership import identityAfterDrop
from harbor.preflight import Conflict, checkConfig
from harbor.service import HarborService

# Command-line options that override the configuration file key of the same
# name (with - for _).
_CLI_KEYS = (
    "workers",
    "port",
    "tls_port",
    "submission_port",
    "domain",
    "maildir",
    "hostname",
    "tls_cert",
    "tls_key",
    "users_file",
    "require_tls",
    "allow_plaintext_auth",
    "hook_spool",
    "metrics",
)

# The settings naming files that the start-up checks read.
_FILE_KEYS = ("users_file", "tls_cert", "tls_key")


def optionName(setting: str) -> str:
    """
    The command-line option for a configuration setting.
    """
    if setting == "web.listen":
        return "--web"
    return "--" + setting.replace("_", "-")


class Options(usage.Options, strcred.AuthOptionMixin):
    """
    The options of C{twistd mailharbor}.

    @ivar config: The validated and checked L{Config}, once L{postOptions}
        has run.
    @ivar runAs: The user twistd will switch to once the ports are bound
        (its C{--uid} and C{--gid}, when started as root), or L{None}.
    """

    runAs: Identity | None = None

    synopsis = "[--port PORT]... --domain DOMAIN... [options]"
    longdesc = (
        "Receive mail for your domains over SMTP and store it in Maildirs, "
        "one per domain under the Maildir root.  MailHarbor never relays: "
        "recipients in other domains are refused."
    )
    optParameters: ClassVar[list[list[Any]]] = [
        ["maildir", "m", None, f"Root directory of the Maildirs [default: ./{DEFAULT_MAILDIR}]"],
        ["hostname", None, None, "Name of this server in the banner, Received: headers and Maildir names [default: the FQDN, or the host name]"],
        ["config", "c", None, "TOML configuration file; command-line options override it"],
        ["tls-cert", None, None, "PEM certificate (with its chain) for STARTTLS and implicit TLS"],
        ["tls-key", None, None, "PEM private key of --tls-cert"],
        ["users-file", None, None, "Users file for AUTH (see `mailharbor passwd`)"],
        ["log-format", None, "text", "text, or json for one JSON object per line (for log shippers)"],
        ["workers", None, None, "Processes sharing the listening sockets [default: 1]", int],
        ["hook-spool", None, None, "Directory of the new-message hooks' jobs [default: MAILDIR/.hooks]"],
        ["inherit-fds", None, None, "(internal) listening sockets handed to a worker: FD:FAMILY,..."],
        ["json-log", None, "-", "With --log-format json: the file to append to, or - for standard output"],
        [
            "metrics",
            None,
            None,
            (
                "Serve /metrics, /healthz and /readyz, without authentication, on this port "
                "(on 127.0.0.1) or endpoint [default: off]"
            ),
        ],
        [
            "web",
            None,
            None,
            (
                "Serve the web interface on this port (on 127.0.0.1) or endpoint; overrides "
                "the file's web.listen; another machine's reach needs --users-file [default: off]"
            ),
        ],
    ]
    optFlags: ClassVar[list[list[Any]]] = [
        ["require-tls", None, "Refuse MAIL on --port listeners until the client has used STARTTLS"],
        ["allow-plaintext-auth", None, "Offer AUTH without TLS (for tests on loopback only)"],
    ]
    supportedInterfaces = (IUsernamePassword,)
    compData = usage.Completions(
        optActions={
            "maildir": usage.CompleteDirs(),
            "config": usage.CompleteFiles("*.toml"),
        }
    )

    def __init__(self) -> None:
        super().__init__()
        self["port"] = []
        self["tls_port"] = []
        self["submission_port"] = []
        self["domain"] = []

    arguments: list[str] | None = None

    def parseOptions(self, options: Any = None) -> None:
        """
        Parse, remembering the arguments so that SIGHUP can parse them again
        with the configuration file as it is then.
        """
        self.arguments = list(sys.argv[1:] if options is None else options)
        super().parseOptions(options)

    def opt_port(self, description: str) -> None:
        """
        Listen on this port number or Twisted endpoint (tcp:2525,
        tcp6:25:interface=\\:\\:, systemd:domain=INET:index=0, ...); may be
        repeated [default: tcp:25]
        """
        self["port"].append(description)

    opt_p = opt_port

    def opt_tls_port(self, description: str) -> None:
        """
        Listen with implicit TLS (port 465, RFC 8314) on this port number or
        endpoint; needs --tls-cert; may be repeated
        """
        self["tls_port"].append(description)

    def opt_submission_port(self, description: str) -> None:
        """
        Listen for authenticated submission (port 587 style: STARTTLS, then
        AUTH before MAIL) on this port number or endpoint; may be repeated
        """
        self["submission_port"].append(description)

    def opt_domain(self, domain: str) -> None:
        """
        Receive mail for every address in this domain; may be repeated
        """
        self["domain"].append(domain)

    opt_d = opt_domain

    def postOptions(self) -> None:
        """
        Merge the configuration file and the command line (which wins) and
        validate the result.
        """
        if self["log-format"] not in ("text", "json"):
            raise usage.UsageError("--log-format: must be text or json")
        mapping: dict[str, Any] = {}
        path = self["config"]
        try:
            if path is not None:
                mapping = loadFile(path)
        except ConfigError as e:
            raise usage.UsageError(f"--config: {e.problem}") from None
        fromCommandLine = set()
        for key in _CLI_KEYS:
            value = self.get(key, self.get(key.replace("_", "-")))
            if value is not None and value != [] and value != 0:
                mapping[key] = bool(value) if key in ("require_tls", "allow_plaintext_auth") else value
                fromCommandLine.add(key)
        if self.get("web") is not None:
            # --web is the [web] table's listen: the file's other web
            # settings stay.
            table = mapping.get("web")
            mapping["web"] = {**table, "listen": self["web"]} if isinstance(table, Mapping) else self["web"]
            fromCommandLine.update({"web", "web.listen"})
        runAs = self._runAs()
        try:
            config = Config.fromMapping(mapping)
            checkConfig(config, credCheckers=self.get("credCheckers", ()), runAs=runAs)
        except Conflict as e:
            raise usage.UsageError(f"{optionName(e.setting)}: {e.problem}") from None
        except ConfigError as e:
            problem = _asWritten(e.problem, mapping)
            if e.setting in fromCommandLine or path is None:
                raise usage.UsageError(f"{optionName(e.setting)}: {problem}") from None
            raise usage.UsageError(f"{path}: {e.setting}: {problem}") from None
        self.config = config
        self.runAs = runAs

    def _runAs(self) -> Identity | None:
        """
        The user twistd will switch to: its C{--uid} and C{--gid} are
        twistd's own options, which are parsed before the command's, so
        they are on the parent options when these are checked.
        """
        parent = self.parent
        if parent is None:
            return None
        try:
            return identityAfterDrop(parent.get("uid"), parent.get("gid"))
        except ValueError as e:
            raise usage.UsageError(f"--uid: {e}") from None


def _asWritten(problem: str, mapping: Mapping[str, Any]) -> str:
    """
    Name the files in a problem as the operator wrote them.

    A L{Config} holds absolute paths, so the start-up checks name the users
    file and the certificate that way; twistd says what the command line
    or the file said.  One pass, longest path first, so that a path which
    begins another is not replaced inside it.
    """
    written = {
        os.path.abspath(value): value
        for key in _FILE_KEYS
        if isinstance(value := mapping.get(key), str) and value
    }
    if not written:
        return problem
    pattern = "|".join(re.escape(path) for path in sorted(written, key=len, reverse=True))
    return re.sub(pattern, lambda match: written[match.group(0)], problem)


def makeService(
    options: Options,
    reactor: Any = None,
    extraHooks: Sequence[IHook] = (),
    authenticate: Authenticate | None = None,
) -> HarborService:
    """
    Build the MailHarbor service from parsed options.

    @param reactor: The reactor to listen with, time with and run blocking
        disk work in the thread pool of; the global one if L{None}.
    @param extraHooks: New-message hooks given in code, for a program that
        takes C{twistd mailharbor}'s options (C{examples/embedded.py}).
    @param authenticate: A function given in code that decides logins, as
        for L{harbor.api.buildService}.  The options were checked without
        it, so a submission port still needs a users file or C{--auth}.
    """
    if reactor is None:
        from twisted.internet import reactor as _reactor

        reactor = _reactor
    arguments = options.arguments

    def reread() -> tuple[Config, Sequence[ICredentialsChecker]]:
        """
        Parse the same command line again, with the configuration file as
        it is now.
        """
        fresh = Options()
        try:
            fresh.parseOptions(arguments)
        except usage.UsageError as e:
            raise ValueError(str(e)) from None
        return fresh.config, fresh.get("credCheckers", [])

    return HarborService(
        options.config,
        reactor,
        credCheckers=options.get("credCheckers", []),
        extraHooks=extraHooks,
        authenticate=authenticate,
        logFormat=options["log-format"],
        jsonLog=options.get("json-log", "-"),
        inheritedSockets=inheritedSockets(options.get("inherit-fds")),
        runAs=options.runAs,
        arguments=arguments or (),
        reread=None if arguments is None else reread,
    )
