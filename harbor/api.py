# -*- test-case-name: harbor.test.test_api -*-
"""
MailHarbor as a library: build the whole server from a L{Config} inside
another Twisted program (or an asyncio one, on Twisted's asyncio reactor),
with new-message hooks, a policy hook and the AUTH decision given as plain
functions or coroutines.

    from harbor.api import Config, NewMessage, buildService

    def stored(message: NewMessage) -> None:
        print(message.recipient, message.message["Subject"])

    config = Config.fromMapping({"port": ["tcp:2525"], "domain": ["example.com"]})
    service = buildService(config, hooks=[stored])
    service.startService()   # or service.setServiceParent(application)

Everything twistd's C{mailharbor} does is there: the listeners, durable
Maildir delivery, TLS and AUTH if configured, limits, filters, and the hooks'
at-least-once delivery with their spool next to the Maildirs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from harbor._syntax import ConfigError
from harbor.auth import Authenticate
from harbor.config import Config
from harbor.hooks.events import NewMessage
from harbor.hooks.kinds import IHook, PythonHook
from harbor.hooks.loading import defaultHookNames
from harbor.policyhook import PolicyRequest, Refuse
from harbor.preflight import checkConfig
from harbor.service import HarborService

__all__ = [
    "Config",
    "ConfigError",
    "NewMessage",
    "PolicyRequest",
    "PythonHook",
    "Refuse",
    "buildService",
]


def buildService(
    config: Config,
    reactor: Any = None,
    hooks: Sequence[IHook | Callable[[NewMessage], object]] = (),
    policy: Callable[[PolicyRequest], Any] | None = None,
    authenticate: Authenticate | None = None,
) -> HarborService:
    """
    Build MailHarbor's service from a configuration made in code.

    @param config: The configuration, from L{Config.fromMapping}.
    @param reactor: The reactor to use; the global one by default.
    @param hooks: Called with a L{NewMessage} for each stored copy, after
        its 250: plain functions (which may return a L{Deferred} or be
        coroutines) or L{IHook} providers such as L{PythonHook}.  Delivery
        to them is at least once and survives restarts.
    @param policy: Called with a L{PolicyRequest} at RCPT and before the
        250; returns L{None} to take the mail or a L{Refuse}.
    @param authenticate: Decides AUTH logins: called as C{authenticate(user,
        password, client)}, the user name and password as the client gave
        them (text), C{client} its IP address (text, as in
        L{PolicyRequest.client}); returns C{True} or C{False}, directly, as
        a L{Deferred} or from a coroutine.  It is asked after the users
        file, if any, and the first to accept wins.  Its logins follow the
        users file's rules: offered only under TLS unless
        C{allow_plaintext_auth}, wrong passwords (C{False}) answered 535
        5.7.8 ever more slowly and a session disconnected after three;
        anything but C{True} or C{False}, an exception or a failure is
        logged (with the user name, never the password) and answered 454
        4.7.0, never logged in.  A login it accepts stores its mail as the
        user's submissions, as for the users file.
    @return: The service; start it, or give it a parent.
    @raise ConfigError: if the configuration cannot be used, as twistd
        would refuse it: a users file or certificate that cannot be read,
        an endpoint that does not parse, a hook that cannot be imported,
        a submission port without users; or worker processes, which only
        C{twistd mailharbor} can start (they run it again with the same
        command line, which an embedding program does not have).
    """
    # One rule for worker processes here, before the checks twistd shares.
    if config.limits.workers > 1:
        raise ConfigError("workers", "worker processes are started by twistd mailharbor only; embedded, use 1")
    checkConfig(config, credCheckers=() if authenticate is None else (authenticate,), codeHooks=hooks, policy=policy)
    if reactor is None:
        from twisted.internet import reactor as _reactor

        reactor = _reactor
    named = [hook.name for hook in hooks if IHook.providedBy(hook)] + [c.name for c in config.hooks]
    names = iter(defaultHookNames([hook for hook in hooks if not IHook.providedBy(hook)], named))
    built: list[IHook] = [
        hook if IHook.providedBy(hook) else PythonHook(hook, next(names))
        for hook in hooks
    ]
    return HarborService(config, reactor, extraHooks=built, policy=policy, authenticate=authenticate)
