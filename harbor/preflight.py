# -*- test-case-name: harbor.test.test_preflight -*-
"""
The start-up checks that look at the world: what a L{Config} names must
exist and work before MailHarbor binds a port or daemonizes.

L{harbor.config.Config.fromMapping} only parses, so that a configuration
can be built and printed (C{mailharbor check-config} does both) by code
that reads nothing.  Whoever starts a server runs L{checkConfig} once
before building it: L{harbor.tap.Options} for C{twistd mailharbor} (and
again for each SIGHUP reload), L{harbor.api.buildService} for a program
that embeds MailHarbor.  A problem is a L{ConfigError} naming the setting
at fault, which twistd turns into a usage error naming the file or the
option.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from twisted.internet.endpoints import serverFromString

from harbor._syntax import ConfigError
from harbor.access import Identity
from harbor.auth import readUsers
from harbor.config import Config, Listener
from harbor.hooks.loading import checkHooks
from harbor.hooks.spool import SPOOL_DIRECTORIES
from harbor.ownership import (
    AccessProblem,
    IDirectories,
    checkReadable,
    planDirectories,
    prepareDirectories,
)
from harbor.policyhook import loadPolicyHook
from harbor.store.names import SUBDIRECTORIES
from harbor.tls import TLSConfigurationError, loadCertificateOptions


class Conflict(ConfigError):
    """
    Settings that are each valid but cannot be used together.

    C{setting} names the one to change; twistd reports it by its option
    (C{--workers: ...}) wherever it was set, since the fix may be in the
    file or on the command line.
    """


def checkConfig(
    config: Config,
    credCheckers: Sequence[object] = (),
    codeHooks: Sequence[object] = (),
    policy: object = None,
    runAs: Identity | None = None,
    fs: IDirectories | None = None,
) -> None:
    """
    Check, once at start, what the configuration refers to: the
    endpoints parse, the certificate and the users file can be read, the
    hooks' code and programs are there, and the settings fit together.
    Started as root to run as another user (C{twistd --uid}), also that
    this user will be able to use the Maildirs and read the files
    (L{checkForUser}).

    @param credCheckers: Ways to authenticate other than the users file
        (twistd's C{--auth}).
    @param codeHooks: New-message hooks given in code; like the
        configured ones, they need the hook spool.
    @param policy: A policy function given in code, which takes the place
        of the configuration's C{policy_hook}; that one is then not
        imported.
    @param runAs: The user twistd will switch to after binding the ports,
        if it will (L{harbor.ownership.identityAfterDrop}).
    @param fs: The file-system calls L{checkForUser} makes, for tests.
    @raise Conflict: for settings that cannot be used together.
    @raise ConfigError: naming the first other setting at fault.
    """
    for listener in config.listeners:
        checkEndpoint(listener.port, _portSetting(listener))
    if config.metrics is not None:
        checkEndpoint(config.metrics, "metrics")
    if config.web is not None:
        checkEndpoint(config.web.listen, "web.listen")
    if config.tls is not None:
        try:
            loadCertificateOptions(config.tls.certificate, config.tls.key)
        except TLSConfigurationError as e:
            raise ConfigError("tls_cert", str(e)) from None
    if config.usersFile is not None:
        try:
            readUsers(config.usersFile)
        except OSError as e:
            raise ConfigError("users_file", f"cannot read {config.usersFile}: {e.strerror}") from None
        except ValueError as e:
            raise ConfigError("users_file", str(e)) from None
    if config.limits.workers > 1 and any(port.startswith("systemd:") for port in config.ports):
        raise Conflict("workers", "systemd's sockets are adopted by one process only")
    checkHooks(config.hooks)
    if config.policyHook is not None and policy is None:
        loadPolicyHook(config.policyHook, "policy_hook")
    if (
        any(listener.submission for listener in config.listeners)
        and config.usersFile is None
        and not credCheckers
    ):
        raise Conflict("submission_port", "needs users to authenticate (--users-file, --auth, or authenticate= in code)")
    if runAs is not None:
        checkForUser(config, runAs, bool(config.hooks or codeHooks), fs)


def workingDirectories(config: Config, withSpool: bool) -> list[tuple[str, list[str]]]:
    """
    The directories MailHarbor writes in from the start, parents first,
    each with the root it is in: every domain's Maildirs (C{tmp}, C{new},
    C{cur}) in the Maildir root and, with hooks, the hook spool
    (C{hook_spool}), in the Maildir root too by default, or its own root.
    """
    directories = []
    for domain in config.domains:
        for mailbox in domain.mailboxPaths():
            maildir = os.path.join(config.maildir, mailbox)
            directories += [maildir, *(os.path.join(maildir, sub) for sub in SUBDIRECTORIES)]
    roots = [(config.maildir, directories)]
    if withSpool:
        spool = config.hookSpool
        inSpool = [spool, *(os.path.join(spool, sub) for sub in SPOOL_DIRECTORIES)]
        if spool.startswith(config.maildir + os.sep):
            directories += inSpool
        else:
            roots.append((spool, inSpool))
    return roots


def checkForUser(config: Config, identity: Identity, withSpool: bool, fs: IDirectories | None = None) -> None:
    """
    Check that C{identity}, the user twistd switches to once the ports
    are bound, will be able to use the Maildir root and what is in it
    (made for it by L{prepareForUser} if missing) and to read the users
    file and the TLS certificate and key, which are read again on SIGHUP.

    @raise ConfigError: naming the setting, the path, the user and the
        missing permission.
    """
    after = f"; MailHarbor runs as {identity.name} after twistd drops privileges"
    for root, directories in workingDirectories(config, withSpool):
        try:
            planDirectories(root, directories, identity, fs)
        except AccessProblem as e:
            setting = "maildir" if root == config.maildir else "hook_spool"
            raise ConfigError(setting, f"{e}{after}") from None
    files = [("users_file", config.usersFile)]
    if config.tls is not None:
        files += [("tls_cert", config.tls.certificate), ("tls_key", config.tls.key)]
    for setting, path in files:
        if path is not None:
            try:
                checkReadable(path, identity, fs)
            except AccessProblem as e:
                raise ConfigError(setting, f"{e}{after}") from None


def prepareForUser(config: Config, identity: Identity, withSpool: bool, fs: IDirectories | None = None) -> list[str]:
    """
    Make, as root, the directories of L{workingDirectories} that are
    missing, giving the Maildir root and what is in it to C{identity}.

    @return: The directories made.
    @raise AccessProblem: if C{identity} could not use them after all.
    """
    made = []
    for root, directories in workingDirectories(config, withSpool):
        made += prepareDirectories(root, directories, identity, fs)
    return made



def checkEndpoint(description: str, setting: str) -> None:
    """
    Parse a server endpoint description, without a reactor, so nothing
    listens: a mistake is reported now rather than when the service
    starts.

    @raise ConfigError: naming C{setting}.
    """
    try:
        serverFromString(None, description)
    except IndexError:
        raise ConfigError(
            setting,
            f"{description!r}: systemd passed no socket to this process (LISTEN_FDS and LISTEN_PID)",
        ) from None
    # Each endpoint parser raises what it likes for a bad description.
    except Exception as e:  # noqa: BLE001
        raise ConfigError(setting, f"{description!r} is not a valid endpoint: {e}") from None


def _portSetting(listener: Listener) -> str:
    """
    The setting a listener comes from.
    """
    if listener.implicitTLS:
        return "tls_port"
    if listener.submission:
        return "submission_port"
    return "port"
