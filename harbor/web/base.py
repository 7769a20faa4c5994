# -*- test-case-name: harbor.test.test_web_base -*-
"""
What every part of the web interface shares: who is asking (L{Viewer},
found on the request through L{IViewer}), and where the mail is and how
to read it without blocking the reactor (L{WebContext}).

The guard (L{harbor.web.site}) decides the viewer of each request, after
its Host, session and, for a change, Origin and CSRF token were checked,
and sets it on the request as its L{IViewer} component; the pages and the
API (L{harbor.web.app}) only read it.  So a resource below the guard never
sees a request that was not let in, and a test of a page can set the
viewer it wants without a login.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any, TypeVar

from zope.interface import Attribute, Interface, implementer

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool
from twisted.web.server import Request

from attrs import field, frozen

from harbor.store.browse import allowedKeys

__all__ = ["IViewer", "Viewer", "WebContext", "setViewer", "viewerOf"]

T = TypeVar("T")


class IViewer(Interface):
    """
    The person a request is made for, once the guard let it in.
    """

    name = Attribute("The user name logged in, or None when the interface has no users (loopback only).")
    admin = Attribute("Whether they see every mailbox, and /metrics.")
    grants = Attribute("The keys (domain, domain/mailbox) they were granted, each with all below it.")
    csrf = Attribute("Their session's CSRF token, which every change must carry.")
    alive = Attribute("A callable: whether their session still goes on.")

    def mailboxes(keys: Collection[str]) -> frozenset[str] | None:
        """
        The keys of C{keys} this viewer may see, or L{None} for all.
        """

    def mayRead(key: str) -> bool:
        """
        Whether this viewer may see the Maildir with this key.
        """


@implementer(IViewer)
@frozen
class Viewer:
    """
    The person a request is made for.

    @ivar name: The user logged in; L{None} when there are no users, which
        the configuration allows only on loopback: then they are admin.
    @ivar admin: Whether they see every mailbox (and C{/metrics}).
    @ivar grants: What else they may see: keys, each with all below it
        (L{harbor.store.browse.allowedKeys}).
    @ivar csrf: The CSRF token of their session.
    @ivar alive: Whether their session still goes on (not logged out, not
        expired): what an answer that lasts, such as an event stream,
        asks before it sends more.
    """

    name: str | None
    admin: bool
    grants: tuple[str, ...] = ()
    csrf: str = field(default="", repr=False)
    alive: Callable[[], bool] = field(default=lambda: True, eq=False, repr=False)

    def mailboxes(self, keys: Collection[str]) -> frozenset[str] | None:
        """
        The keys of C{keys} this viewer may see: L{None} (all of them) for
        an admin, else those their grants cover.
        """
        if self.admin:
            return None
        return allowedKeys(keys, self.grants)

    def mayRead(self, key: str) -> bool:
        """
        Whether this viewer may see the Maildir with this key.
        """
        return self.admin or bool(allowedKeys([key], self.grants))


def viewerOf(request: Request) -> Viewer:
    """
    The viewer the guard set on C{request}.

    @raise LookupError: if the request did not come through the guard: a
        resource must never serve one as if to an admin.
    """
    viewer = request.getComponent(IViewer)
    if viewer is None:
        raise LookupError("the request did not pass the web interface's guard")
    return viewer  # type: ignore[no-any-return]


def setViewer(request: Request, viewer: Viewer) -> None:
    """
    Let C{request} through as C{viewer}'s: what the guard does once it
    has checked the request.
    """
    request.setComponent(IViewer, viewer)


@frozen
class WebContext:
    """
    Where the mail is, and how to read it off the reactor's thread.

    @ivar maildir: The root of the Maildirs (L{harbor.config.Config.maildir}).
    @ivar hookSpool: The hooks' job spool, whose jobs a message page shows.
    @ivar hooks: The names of the hooks configured, in order.
    @ivar reactor: Times polls and runs the threads' results.
    @ivar threadpool: Where every Maildir read and change runs.
    @ivar seconds: The clock (for sessions, throttles and polls).
    """

    maildir: str
    hookSpool: str
    hooks: tuple[str, ...]
    reactor: Any
    threadpool: ThreadPool
    seconds: Callable[[], float]

    def inThread(self, f: Callable[..., T], *args: Any, **kwargs: Any) -> Deferred[T]:
        """
        Run C{f} in the thread pool, for its result in the reactor's thread.
        """
        return deferToThreadPool(self.reactor, self.threadpool, f, *args, **kwargs)
