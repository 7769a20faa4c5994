# -*- test-case-name: harbor.test.test_drain -*-
"""
Draining: leaving a balancer's pool without failing a session, for a
rolling restart (C{SIGUSR2}, C{mailharbor drain}).

 1. C{/readyz} fails at once, so the balancer's health check takes this
    instance out of its pool; for C{drain_delay} seconds it still serves
    new connections in full, while the balancer notices.
 2. Then the SMTP ports stop listening, and every open session is asked
    to drain: one in a transaction (MAIL given, a message arriving or
    being stored) finishes it and gets its reply, then C{421 4.3.2}; one
    with none gets C{421 4.3.2} at once, or after the reply to its
    current command.
 3. Once every session has ended (and every worker process has, which
    drain themselves), or C{shutdown_grace} seconds after the ports
    closed, the process stops as on SIGTERM.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from harbor._logging import PublishedLogger
from harbor.health import Readiness

# The signal that starts a drain: SIGUSR1 is twistd's (it rotates a log
# file), SIGUSR2 only pdb's under twistd --debug.
DRAIN_SIGNAL = signal.SIGUSR2


class Sessions(Protocol):
    """
    The open SMTP sessions, as a drain needs them.
    """

    def __len__(self) -> int: ...

    def drain(self) -> None:
        """
        Ask every session to finish its transaction and end.
        """

    def whenEmpty(self) -> Deferred[None]:
        """
        Fire once no session is open.
        """


class Drain:
    """
    One process's drain, from C{/readyz} failing to the process stopping.

    @ivar started: Whether the drain has begun.
    @ivar done: Fires when the drain has ended and C{stop} was called.
    """

    _log = PublishedLogger("harbor.tap.HarborService")

    def __init__(
        self,
        readiness: Readiness,
        clock: IReactorTime,
        sessions: Sessions,
        stopListening: Callable[[], Deferred[Any]],
        stop: Callable[[], None],
        delay: float,
        grace: float,
        others: Callable[[], Deferred[Any]] = lambda: succeed(None),
    ) -> None:
        """
        @param stopListening: Stops the SMTP listeners (not the metrics
            one, which keeps reporting the drain).
        @param stop: Stops the process (C{reactor.stop}).
        @param delay: Seconds between C{/readyz} failing and the ports
            closing (C{drain_delay}).
        @param grace: Seconds the open sessions have to end once the ports
            are closed (C{shutdown_grace}).
        @param others: Fires when the other processes (workers) have
            ended.
        """
        self._readiness = readiness
        self._clock = clock
        self._sessions = sessions
        self._stopListening = stopListening
        self._stop = stop
        self._delay = delay
        self._grace = grace
        self._others = others
        self._timer: IDelayedCall | None = None
        self.started = False
        self.done: Deferred[None] = Deferred()

    def start(self) -> None:
        """
        Begin draining; a second request changes nothing.
        """
        if self.started:
            self._log.info("Already draining")
            return
        self.started = True
        self._readiness.draining()
        self._log.info(
            "Draining: /readyz fails now; the SMTP ports close in {delay:g}s, then open sessions "
            "finish (up to {grace:g}s) and MailHarbor stops",
            delay=self._delay,
            grace=self._grace,
        )
        self._timer = self._clock.callLater(self._delay, self._close)

    def cancel(self) -> None:
        """
        The service stops by other means (SIGTERM): forget the timers.
        """
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _close(self) -> None:
        self._timer = None
        self._stopListening().addBoth(self._listeningStopped)

    def _listeningStopped(self, ignored: object) -> None:
        self._log.info(
            "Draining: stopped listening; waiting for {count} sessions to finish",
            count=len(self._sessions),
        )
        self._sessions.drain()
        sessions = self._sessions.whenEmpty()
        self._timer = self._clock.callLater(self._grace, self._graceOver, sessions)
        DeferredList([sessions, self._others()]).addCallback(lambda _: self._finished("every session has ended"))

    def _graceOver(self, sessions: Deferred[None]) -> None:
        self._timer = None
        self._finished(f"shutdown_grace over with {len(self._sessions)} sessions open")

    def _finished(self, why: str) -> None:
        if self.done.called:
            return
        self.cancel()
        self._log.info("Drained ({why}): stopping", why=why)
        self._stop()
        self.done.callback(None)
