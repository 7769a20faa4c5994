# -*- test-case-name: harbor.test.test_metrics -*-
"""
Prometheus metrics: what a MailHarbor process has done, in the text format
a scraper reads from C{/metrics}.

The SMTP code knows nothing of metrics.  It logs what it does, with
structured fields (L{twisted.logger}), and the events an operator's log
already holds are what L{Metrics.observe}, a log observer, counts: each
carries a C{harbor_event} field naming what it is (C{"transaction"},
C{"session"}, C{"refusal"}, C{"filter"}, C{"hook_delivered"},
C{"hook_dead"}).  What is a state rather than an event (connections open,
hook jobs pending, readiness) is read when scraped, through callables the
service hands over.  Commit latency comes from the commit queue's
observer (L{Metrics.observeCommit}).

Every metric lives in a L{CollectorRegistry} of the L{Metrics} object, not
prometheus_client's global one, so that two services (or two tests) count
apart.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from zope.interface import implementer

from twisted.logger import ILogObserver
from twisted.web.resource import Resource
from twisted.web.server import Request

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

# The field that names what a log event is, for the observer (and for
# anyone filtering JSON logs).
EVENT_KEY = "harbor_event"

# Buckets of the commit latency, in seconds: an fsync on an SSD is well
# under a millisecond, a batch on a busy disk tens of milliseconds, a
# hung NFS server seconds.
COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# The results of a transaction, from the start of its log line's result.
TRANSACTION_RESULTS = (
    ("stored", "stored"),
    ("accepted and discarded", "discarded"),
    ("failed", "failed"),
    ("refused", "refused"),
    ("abandoned", "abandoned"),
    ("disconnected", "disconnected"),
    ("timed out", "timed_out"),
    ("too many errors", "too_many_errors"),
)

# Refusals the session decides itself (syntax, sequence, limits), by their
# enhanced status code: the first prefix that matches.
_BY_ENHANCED = (
    ("5.7.8", "auth_failed"),
    ("4.7.0", "auth_unavailable"),
    ("5.7.11", "tls_required"),
    ("5.7.0", "tls_or_auth_required"),
    ("4.5.3", "too_many_recipients"),
    ("5.3.4", "message_too_big"),
    ("5.5.2", "bad_command"),
    ("5.1.3", "bad_address"),
    ("5.1.7", "bad_address"),
    ("5.6.7", "bad_address"),
    ("5.1.1", "unknown_recipient"),
    ("5.5.", "bad_command"),
    ("5.0.0", "bad_command"),
    ("4.3.", "local_error"),
)


def transactionResult(result: str) -> str:
    """
    The bounded label for a transaction's free-text result
    (C{"failed: disk full"} is C{"failed"}).
    """
    for prefix, label in TRANSACTION_RESULTS:
        if result.startswith(prefix):
            return label
    return "other"


def refusalReason(event: Mapping[str, Any]) -> str:
    """
    Why a refusal event was a refusal: the C{refusal} field set where the
    reason is known (the deliverer's filters, blocklists, routing, policy
    hook, backlog; connection limits), or else one read from the reply's
    enhanced status code.
    """
    reason = event.get("refusal")
    if reason:
        return str(reason)
    enhanced = str(event.get("enhanced") or "")
    for prefix, label in _BY_ENHANCED:
        if enhanced.startswith(prefix):
            return label
    return "other"


def _stage(event: Mapping[str, Any]) -> str:
    verb = str(event.get("verb") or "").lower()
    if verb in ("ehlo", "helo"):
        return "helo"
    if verb in ("mail", "rcpt", "data", "bdat", "auth", "connect", "starttls"):
        return verb
    return "other"


class _StateCollector(Collector):
    """
    What is read when scraped: connections open and ever opened, hook
    jobs pending, readiness.
    """

    def __init__(self) -> None:
        self.connections: Callable[[], tuple[int, int]] | None = None
        self.pendingJobs: Callable[[], Mapping[str, int]] | None = None
        self.ready: Callable[[], bool] | None = None

    def collect(self) -> Iterable[Metric]:
        if self.connections is not None:
            opened, open_ = self.connections()
            yield CounterMetricFamily(
                "mailharbor_connections", "SMTP connections accepted (admitted)", value=opened
            )
            yield GaugeMetricFamily("mailharbor_connections_open", "SMTP connections open now", value=open_)
        if self.pendingJobs is not None:
            pending = GaugeMetricFamily(
                "mailharbor_hook_jobs_pending", "Hook jobs waiting in the spool or running", labels=["hook"]
            )
            for hook, count in sorted(self.pendingJobs().items()):
                pending.add_metric([hook], count)
            yield pending
        if self.ready is not None:
            yield GaugeMetricFamily(
                "mailharbor_ready", "1 while accepting mail, 0 while starting or draining", value=int(self.ready())
            )


@implementer(ILogObserver)
class Metrics:
    """
    One service's metrics, fed by its log events and read by scrapers.

    @ivar registry: The registry holding them all.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self._state = _StateCollector()
        registry.register(self._state)
        self.transactions = Counter(
            "mailharbor_transactions",
            "Mail transactions ended, by result",
            ["result"],
            registry=registry,
        )
        self.messages = Counter(
            "mailharbor_messages_stored", "Messages stored (answered 250)", registry=registry
        )
        self.copies = Counter(
            "mailharbor_message_copies_stored",
            "Copies stored, one per Maildir a message went to",
            registry=registry,
        )
        self.bytes = Counter(
            "mailharbor_stored_bytes", "Bytes of the messages stored (once per message)", registry=registry
        )
        self.refusals = Counter(
            "mailharbor_refusals",
            "Commands and connections refused, by stage and reason",
            ["stage", "reason"],
            registry=registry,
        )
        self.commitLatency = Histogram(
            "mailharbor_commit_seconds",
            "Time from a message's end to its copies being durable in new/",
            buckets=COMMIT_BUCKETS,
            registry=registry,
        )
        self.hooksDelivered = Counter(
            "mailharbor_hook_jobs_delivered", "Hook jobs that succeeded", ["hook"], registry=registry
        )
        self.hooksDead = Counter(
            "mailharbor_hook_jobs_dead", "Hook jobs given up on and parked as dead letters", ["hook"],
            registry=registry,
        )
        self.sessions = Counter(
            "mailharbor_sessions_ended", "SMTP sessions ended", registry=registry
        )
        self.draining = Gauge(
            "mailharbor_draining", "1 once a drain has begun", registry=registry
        )
        self._handlers: dict[str, Callable[[Mapping[str, Any]], None]] = {
            "transaction": self._transaction,
            "session": self._session,
            "refusal": self._refusal,
            "filter": self._filter,
            "hook_delivered": self._hookDelivered,
            "hook_dead": self._hookDead,
        }

    def readStateFrom(
        self,
        connections: Callable[[], tuple[int, int]] | None = None,
        pendingJobs: Callable[[], Mapping[str, int]] | None = None,
        ready: Callable[[], bool] | None = None,
    ) -> None:
        """
        Say where the states read at each scrape come from.

        @param connections: The connections ever admitted and open now.
        @param pendingJobs: Each hook's pending jobs.
        @param ready: Whether the service accepts mail.
        """
        self._state.connections = connections
        self._state.pendingJobs = pendingJobs
        self._state.ready = ready

    def observe(self, event: Mapping[str, Any]) -> None:
        """
        A log observer: count the events that say what MailHarbor did.
        """
        kind = event.get(EVENT_KEY)
        if kind is None:
            return
        handler = self._handlers.get(kind)
        if handler is not None:
            handler(event)

    __call__ = observe

    def observeCommit(self, seconds: float) -> None:
        """
        One message was made durable C{seconds} after it ended.
        """
        self.commitLatency.observe(seconds)

    def _transaction(self, event: Mapping[str, Any]) -> None:
        result = transactionResult(str(event.get("result", "")))
        self.transactions.labels(result).inc()
        if result == "stored":
            self.messages.inc()
            self.bytes.inc(int(event.get("size") or 0))
            ids = str(event.get("ids") or "-")
            self.copies.inc(0 if ids == "-" else ids.count(",") + 1)

    def _session(self, event: Mapping[str, Any]) -> None:
        self.sessions.inc()

    def _refusal(self, event: Mapping[str, Any]) -> None:
        self.refusals.labels(_stage(event), refusalReason(event)).inc()

    def _filter(self, event: Mapping[str, Any]) -> None:
        # Filters at MAIL, RCPT and HELO refuse through a reply, counted
        # there; a connect filter's refusal is the greeting.
        if event.get("stage") == "connect" and event.get("action") in ("reject", "tempfail"):
            self.refusals.labels("connect", "filter").inc()

    def _hookDelivered(self, event: Mapping[str, Any]) -> None:
        self.hooksDelivered.labels(str(event.get("hook", ""))).inc()

    def _hookDead(self, event: Mapping[str, Any]) -> None:
        self.hooksDead.labels(str(event.get("hook", ""))).inc()

    def text(self) -> bytes:
        """
        Every metric, in the Prometheus text format.
        """
        return generate_latest(self.registry)


class MetricsResource(Resource):
    """
    C{/metrics}: the metrics in the Prometheus text format.
    """

    isLeaf = True

    def __init__(self, metrics: Metrics) -> None:
        super().__init__()
        self._metrics = metrics

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"Content-Type", CONTENT_TYPE_LATEST.encode("ascii"))
        request.setHeader(b"Cache-Control", b"no-store")
        return self._metrics.text()

    render_HEAD = render_GET
