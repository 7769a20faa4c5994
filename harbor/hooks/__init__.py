# -*- test-case-name: harbor.test.test_hooks -*-
"""
New-message hooks: tell other programs about each message once it is
safely stored.

A hook is a Python callable, a command or an HTTP webhook.  MailHarbor
calls it with a L{NewMessage} for every stored copy, after the copy is in
its Maildir and the client has its 250 reply.  Delivery to hooks is
at-least-once and survives restarts.  One module per job:

  - L{harbor.hooks.events}: what hooks are told (L{NewMessage}), the job
    files' values, and the failures a hook may raise;
  - L{harbor.hooks.config}: the C{[[hook]]} tables, checked (no Twisted);
  - L{harbor.hooks.loading}: finding the functions and programs hooks name
    (no Twisted);
  - L{harbor.hooks.kinds}: L{IHook} and the python, command and webhook
    hooks;
  - L{harbor.hooks.spool}: the durable job files;
  - L{harbor.hooks.backlog}: counting each hook's pending jobs and
    bounding those held in memory (no Twisted);
  - L{harbor.hooks.attempts}: running each job held in memory, retrying
    it, and recording its outcome in the spool;
  - L{harbor.hooks.runner}: the service that feeds them the jobs, reads
    the spool to resume them, and starts and stops.

C{harbor.hooks} itself is a public import path: the functions users write
as python hooks, and programs that embed MailHarbor (as
C{examples/embedded.py} does), import the names in C{__all__} from here.
They are imported from their modules on first use, not when this package
is: every import of L{harbor.hooks.config} runs this file first, and
L{harbor.config} and C{mailharbor} must not pay for Twisted.  MailHarbor's
own modules import each name from its module.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from harbor.hooks.config import RetryPolicy
    from harbor.hooks.events import (
        HookFailed,
        MessageGone,
        NewMessage,
        PermanentHookFailure,
    )
    from harbor.hooks.kinds import CommandHook, IHook, PythonHook, WebhookHook

__all__ = [
    "CommandHook",
    "HookFailed",
    "IHook",
    "MessageGone",
    "NewMessage",
    "PermanentHookFailure",
    "PythonHook",
    "RetryPolicy",
    "WebhookHook",
]

_HOMES = {
    "CommandHook": "harbor.hooks.kinds",
    "HookFailed": "harbor.hooks.events",
    "IHook": "harbor.hooks.kinds",
    "MessageGone": "harbor.hooks.events",
    "NewMessage": "harbor.hooks.events",
    "PermanentHookFailure": "harbor.hooks.events",
    "PythonHook": "harbor.hooks.kinds",
    "RetryPolicy": "harbor.hooks.config",
    "WebhookHook": "harbor.hooks.kinds",
}


def __getattr__(name: str) -> object:
    """
    Import a public name from its module when it is first asked for.
    """
    try:
        home = _HOMES[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value
