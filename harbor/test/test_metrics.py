"""
Tests for L{harbor.metrics}: counters fed by the log events of real SMTP
sessions over L{StringTransport}, the commit latency from the commit
queue with a L{Clock}, the states read when scraped, and the text served.
"""

from __future__ import annotations

from typing import Any, ClassVar, cast

from zope.interface.verify import verifyObject

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, Logger
from twisted.trial.unittest import SynchronousTestCase

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from harbor import delivery
from harbor.filters import parseFilters
from harbor.health import Readiness, operationsSite
from harbor.limits import Limits
from harbor.metrics import Metrics, MetricsResource, refusalReason, transactionResult
from harbor.routing import DomainConfig
from harbor.smtp._factory import HarborSMTPFactory, ServerSettings
from harbor.smtp._protocol import HarborESMTP
from harbor.store.commits import CommitQueue
from harbor.test._support import HOSTNAME, DeferredThreads, SMTPDriver, makeDeliverer
from harbor.test.test_health import get

MESSAGE = b"DATA\r\nSubject: x\r\n\r\nbody\r\n.\r\n"


def value(metrics: Metrics, name: str, **labels: str) -> float | None:
    """
    One sample of the registry, as a scraper would read it.
    """
    return metrics.registry.get_sample_value(name, labels)


class MetricsFromSessionsTests(SynchronousTestCase):
    """
    What real sessions' log events count.
    """

    domains: ClassVar[list[DomainConfig]] = [
        DomainConfig("example.com"),
        DomainConfig("example.org", frozenset({"alice"})),
    ]

    def setUp(self) -> None:
        self.metrics = Metrics()
        observer = cast(ILogObserver, self.metrics)
        self.patch(HarborESMTP, "_log", Logger(namespace="harbor.smtp.HarborESMTP", observer=observer))
        self.patch(delivery, "_filterLog", Logger(observer=observer))
        self.root = self.mktemp()
        self.threads = DeferredThreads()
        self.clock = Clock()
        self.deliverer, _ = makeDeliverer(self.root, self.domains, runInThread=self.threads, clock=self.clock)
        self.factory = HarborSMTPFactory(self.deliverer, ServerSettings(HOSTNAME, Limits(maxMessageSize=100)), self.clock)
        self.metrics.readStateFrom(connections=lambda: (self.factory.registry.opened, len(self.factory.registry)))

    def connect(self) -> SMTPDriver:
        return SMTPDriver(self.deliverer, self.clock, factory=self.factory, ehlo=b"client.example")

    def test_provides(self) -> None:
        """
        L{Metrics} is a log observer, with a registry of its own.
        """
        self.assertTrue(verifyObject(ILogObserver, self.metrics))
        self.assertIsInstance(self.metrics.registry, CollectorRegistry)
        self.assertIsNot(self.metrics.registry, REGISTRY)

    def test_storedMessages(self) -> None:
        """
        Two messages stored count two transactions stored, two messages,
        their bytes and copies; connections count when made and open.
        """
        smtp = self.connect()
        for rcpt in (b"a@example.com", b"alice@example.org"):
            smtp.send(b"MAIL FROM:<s@x.org>\r\nRCPT TO:<" + rcpt + b">\r\n" + MESSAGE)
            self.threads.runAll()
        self.assertEqual(value(self.metrics, "mailharbor_transactions_total", result="stored"), 2)
        self.assertEqual(value(self.metrics, "mailharbor_messages_stored_total"), 2)
        self.assertEqual(value(self.metrics, "mailharbor_message_copies_stored_total"), 2)
        self.assertEqual(value(self.metrics, "mailharbor_stored_bytes_total"), 2 * len(b"Subject: x\r\n\r\nbody\r\n"))
        self.assertEqual(value(self.metrics, "mailharbor_connections_total"), 1)
        self.assertEqual(value(self.metrics, "mailharbor_connections_open"), 1)
        smtp.close()
        self.assertEqual(value(self.metrics, "mailharbor_connections_open"), 0)
        self.assertEqual(value(self.metrics, "mailharbor_sessions_ended_total"), 1)

    def test_refusalsByReason(self) -> None:
        """
        Relaying, an unknown user, a bad command and a message too big are
        counted under their own reasons and stages.
        """
        smtp = self.connect()
        smtp.send(b"MAIL FROM:<s@x.org>\r\nRCPT TO:<a@elsewhere.example>\r\nRCPT TO:<bob@example.org>\r\n")
        smtp.send(b"RSET\r\nFOO\r\n")
        smtp.send(b"MAIL FROM:<s@x.org>\r\nRCPT TO:<a@example.com>\r\nDATA\r\n" + b"x" * 200 + b"\r\n.\r\n")
        self.threads.runAll()
        smtp.close()
        self.assertEqual(value(self.metrics, "mailharbor_refusals_total", stage="rcpt", reason="relay_denied"), 1)
        self.assertEqual(value(self.metrics, "mailharbor_refusals_total", stage="rcpt", reason="unknown_recipient"), 1)
        self.assertEqual(value(self.metrics, "mailharbor_refusals_total", stage="other", reason="bad_command"), 1)
        self.assertEqual(value(self.metrics, "mailharbor_refusals_total", stage="data", reason="message_too_big"), 1)
        self.assertEqual(value(self.metrics, "mailharbor_transactions_total", result="failed"), 1)
        self.assertEqual(value(self.metrics, "mailharbor_transactions_total", result="abandoned"), 1)

    def test_filterRefusals(self) -> None:
        """
        A filter's refusal at RCPT counts once, as a filter's, whatever
        the reply it chose.
        """
        filters = parseFilters([{"recipient": "a@example.com", "action": "reject", "code": 550, "text": "No"}])
        self.deliverer.filters = filters
        smtp = self.connect()
        smtp.send(b"MAIL FROM:<s@x.org>\r\nRCPT TO:<a@example.com>\r\n")
        smtp.close()
        self.assertEqual(value(self.metrics, "mailharbor_refusals_total", stage="rcpt", reason="filter"), 1)
        family = [f for f in text_string_to_metric_families(self.metrics.text().decode()) if f.name == "mailharbor_refusals"]
        self.assertEqual(sum(s.value for s in family[0].samples if s.name.endswith("_total")), 1)


class MetricsFromEventsTests(SynchronousTestCase):
    """
    The observer and the pure helpers, event by event.
    """

    def setUp(self) -> None:
        self.metrics = Metrics()

    def test_ignoresOtherEvents(self) -> None:
        """
        Events without C{harbor_event}, or with one it does not know, count
        nothing.
        """
        before = self.metrics.text()
        self.metrics({"log_format": "hello", "result": "stored"})
        self.metrics({"harbor_event": "unknown"})
        self.assertEqual(self.metrics.text(), before)

    def test_hookJobs(self) -> None:
        """
        Hook jobs delivered and dead count per hook; pending is read when
        scraped.
        """
        for kind, hook in [("hook_delivered", "a"), ("hook_delivered", "a"), ("hook_dead", "b")]:
            self.metrics({"harbor_event": kind, "hook": hook})
        self.metrics.readStateFrom(pendingJobs=lambda: {"a": 3, "b": 0}, ready=lambda: True)
        self.assertEqual(value(self.metrics, "mailharbor_hook_jobs_delivered_total", hook="a"), 2)
        self.assertEqual(value(self.metrics, "mailharbor_hook_jobs_dead_total", hook="b"), 1)
        self.assertEqual(value(self.metrics, "mailharbor_hook_jobs_pending", hook="a"), 3)
        self.assertEqual(value(self.metrics, "mailharbor_ready"), 1)

    def test_connectRefusals(self) -> None:
        """
        A connection refused for a limit and a connect filter's refusal
        count at the connect stage.
        """
        self.metrics({"harbor_event": "refusal", "verb": "CONNECT", "refusal": "connection_limit"})
        self.metrics({"harbor_event": "filter", "stage": "connect", "action": "reject"})
        self.metrics({"harbor_event": "filter", "stage": "rcpt", "action": "reject"})
        self.metrics({"harbor_event": "filter", "stage": "connect", "action": "tag"})
        self.assertEqual(value(self.metrics, "mailharbor_refusals_total", stage="connect", reason="connection_limit"), 1)
        self.assertEqual(value(self.metrics, "mailharbor_refusals_total", stage="connect", reason="filter"), 1)
        self.assertIsNone(value(self.metrics, "mailharbor_refusals_total", stage="rcpt", reason="filter"))

    def test_labels(self) -> None:
        """
        Free-text results and replies become a small set of labels.
        """
        self.assertEqual(transactionResult("failed: No space left"), "failed")
        self.assertEqual(transactionResult("timed out: data_timeout"), "timed_out")
        self.assertEqual(transactionResult("something new"), "other")
        self.assertEqual(refusalReason({"enhanced": "5.7.8"}), "auth_failed")
        self.assertEqual(refusalReason({"enhanced": "4.5.3"}), "too_many_recipients")
        self.assertEqual(refusalReason({"enhanced": "5.7.1", "refusal": "dnsbl"}), "dnsbl")
        self.assertEqual(refusalReason({"enhanced": ""}), "other")


class CommitLatencyTests(SynchronousTestCase):
    """
    The commit latency histogram, from the commit queue's observer.
    """

    def test_latencyObserved(self) -> None:
        """
        The time from a message's commit request to its Deferred firing, on
        the queue's clock, lands in the histogram's buckets.
        """
        metrics = Metrics()
        clock = Clock()
        pending: list[Deferred[Any]] = []

        def runInThread(f: Any) -> Deferred[Any]:
            d: Deferred[Any] = Deferred()
            pending.append(d)
            d.addCallback(lambda _: f())
            return d

        queue = CommitQueue(
            runInThread, lambda batch: [[] for _ in batch], lanes=1, batch=4,
            fileSystemOf=lambda d: d, observe=metrics.observeCommit, clock=clock.seconds,
        )

        class Pending:
            inMemory = True

            def temporaryDirectories(self) -> list[str]:
                return ["/tmp"]

        queue.commit(Pending(), None)  # type: ignore[arg-type]
        clock.advance(0.02)
        pending.pop().callback(None)
        self.assertEqual(value(metrics, "mailharbor_commit_seconds_count"), 1)
        self.assertEqual(value(metrics, "mailharbor_commit_seconds_bucket", le="0.01"), 0)
        self.assertEqual(value(metrics, "mailharbor_commit_seconds_bucket", le="0.025"), 1)
        self.assertAlmostEqual(value(metrics, "mailharbor_commit_seconds_sum") or 0, 0.02)


class MetricsResourceTests(SynchronousTestCase):
    """
    C{/metrics} over HTTP.
    """

    def test_textFormat(self) -> None:
        """
        C{/metrics} is the registry in the Prometheus text format, with its
        content type.
        """
        metrics = Metrics()
        metrics({"harbor_event": "transaction", "result": "stored", "size": 10, "ids": "a,b"})
        status, headers, body = get(operationsSite(Readiness(), MetricsResource(metrics)), b"/metrics")
        self.assertEqual(status, 200)
        self.assertEqual(headers[b"content-type"], CONTENT_TYPE_LATEST.encode())
        self.assertIn(b'mailharbor_transactions_total{result="stored"} 1.0', body)
        self.assertIn(b"mailharbor_message_copies_stored_total 2.0", body)
