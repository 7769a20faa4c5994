"""
End-to-end tests of the operations listener and draining: C{/metrics}
scraped over loopback after real SMTP traffic, and a real C{twistd
mailharbor} drained with C{mailharbor drain} while a session is in the
middle of a transaction.
"""

from __future__ import annotations

import io
import mailbox
import os
import re
import signal
import smtplib
import socket
import urllib.error
import urllib.request
from typing import cast

from twisted.internet.address import IPv4Address
from twisted.trial.unittest import TestCase

from prometheus_client.parser import text_string_to_metric_families

from harbor.cli.main import main
from tests._e2e import (
    CLIENT_TIMEOUT,
    DOMAIN,
    inThread,
    pollUntil,
    sendOne,
    startServer,
    startTwistdServer,
)

MESSAGE = b"From: a@remote.example\r\nSubject: metrics\r\n\r\nHello.\r\n"
_METRICS_PORT = re.compile(rb"\(metrics\) \(127\.0\.0\.1 port (\d+)\)")


def fetch(url: str) -> tuple[int, bytes]:
    """
    GET C{url} (blocking: call it in a thread); the status and the body,
    for error statuses too.
    """
    try:
        with urllib.request.urlopen(url, timeout=CLIENT_TIMEOUT) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """
    The samples of a scrape, by name and labels.
    """
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text.decode("utf-8"))
        for sample in family.samples
    }


def writeFile(path: str, text: str) -> None:
    """
    Write a small file (a configuration) before the reactor is needed.
    """
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def refused(port: int) -> bool:
    """
    Whether a TCP connection to C{port} on loopback is refused.
    """
    try:
        socket.create_connection(("127.0.0.1", port), timeout=CLIENT_TIMEOUT).close()
    except ConnectionRefusedError:
        return True
    return False


class MetricsListenerTests(TestCase):
    """
    C{--metrics}: the metrics and health checks on their own loopback
    listener.
    """

    async def test_scrapeAfterTraffic(self) -> None:
        """
        After two messages stored and one recipient refused as relaying,
        a scrape over loopback counts exactly those; C{/healthz} and
        C{/readyz} are 200; the requests are not logged as SMTP sessions.
        """
        server = await startServer(self, "--metrics", "tcp:0:interface=127.0.0.1")
        listener = server.service.metricsListener
        assert listener is not None and listener.port is not None
        base = f"http://127.0.0.1:{cast(IPv4Address, listener.port.getHost()).port}"
        for n in range(2):
            self.assertEqual(await inThread(sendOne, server.port, f"u{n}@{DOMAIN}", MESSAGE), {})
        with self.assertRaises(smtplib.SMTPRecipientsRefused):
            await inThread(sendOne, server.port, "x@elsewhere.example", MESSAGE)
        self.assertEqual(await inThread(fetch, base + "/healthz"), (200, b"ok\n"))
        self.assertEqual(await inThread(fetch, base + "/readyz"), (200, b"ready\n"))
        status, body = await inThread(fetch, base + "/metrics")
        self.assertEqual(status, 200)
        found = samples(body)
        self.assertEqual(found[("mailharbor_transactions_total", (("result", "stored"),))], 2)
        self.assertEqual(found[("mailharbor_messages_stored_total", ())], 2)
        self.assertEqual(found[("mailharbor_stored_bytes_total", ())], 2 * len(MESSAGE))
        self.assertEqual(found[("mailharbor_refusals_total", (("reason", "relay_denied"), ("stage", "rcpt")))], 1)
        self.assertEqual(found[("mailharbor_connections_total", ())], 3)
        self.assertEqual(found[("mailharbor_ready", ())], 1)
        self.assertEqual(found[("mailharbor_commit_seconds_count", ())], 2)
        self.assertEqual(len(server.maildir()), 2)


class DrainTests(TestCase):
    """
    C{mailharbor drain} against a real C{twistd mailharbor}.
    """

    async def test_drainWithSessionMidTransaction(self) -> None:
        """
        A drain makes C{/readyz} 503 at once and refuses new connections
        after C{drain_delay}; a session in the middle of its transaction
        finishes with 250, its file is there, its QUIT gets 221, and the
        server then exits by itself with status 0.
        """
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        config = os.path.join(workdir, "mailharbor.toml")
        writeFile(config, "drain_delay = 1\n")
        pidfile = os.path.join(workdir, "twistd.pid")
        process, port = await startTwistdServer(
            self,
            os.path.join(workdir, "Maildir"),
            twistdArguments=["--pidfile", pidfile],
            serviceArguments=["--config", config, "--metrics", "tcp:0:interface=127.0.0.1"],
        )
        await pollUntil(lambda: _METRICS_PORT.search(process.output), "the metrics port is logged")
        match = _METRICS_PORT.search(process.output)
        assert match is not None
        readyz = f"http://127.0.0.1:{int(match.group(1))}/readyz"
        self.assertEqual((await inThread(fetch, readyz))[0], 200)

        client = await inThread(
            smtplib.SMTP, "127.0.0.1", port, local_hostname="client.example", timeout=CLIENT_TIMEOUT
        )
        self.addCleanup(client.close)
        self.assertEqual((await inThread(client.mail, "s@remote.example"))[0], 250)
        self.assertEqual((await inThread(client.rcpt, f"a@{DOMAIN}"))[0], 250)

        out = io.StringIO()
        self.assertEqual(main(["drain", "--pidfile", pidfile], out, io.StringIO()), 0)
        await pollUntil(lambda: b"Draining: /readyz fails now" in process.output, "the drain is logged")
        self.assertEqual(await inThread(fetch, readyz), (503, b"draining\n"))
        self.assertFalse(process.exited)
        await pollUntil(lambda: b"Draining: stopped listening" in process.output, "the SMTP port closes")
        self.assertTrue(await inThread(refused, port))

        code, reply = await inThread(client.data, b"Subject: drained\r\n\r\nStill here.\r\n")
        self.assertEqual(code, 250, reply)
        stored = reply.decode().rsplit(" ", 1)[-1]
        maildir = mailbox.Maildir(os.path.join(workdir, "Maildir", DOMAIN), factory=None, create=False)
        [key] = maildir.keys()
        self.assertEqual(key.split(",")[0], stored)
        self.assertIn(b"Still here.", maildir.get_bytes(key))
        self.assertEqual((await inThread(client.quit))[0], 221)
        self.assertEqual(await process.wait(), 0)
        self.assertIn(b"Drained (every session has ended)", process.output)

    async def test_workersDrainToo(self) -> None:
        """
        With C{--workers 2}, the drain signal reaches the worker, which
        drains and ends by itself; the first process then exits with 0.
        """
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        config = os.path.join(workdir, "mailharbor.toml")
        writeFile(config, "drain_delay = 0.5\n")
        process, port = await startTwistdServer(
            self, os.path.join(workdir, "Maildir"), serviceArguments=["--config", config, "--workers", "2"]
        )
        await pollUntil(lambda: b"Started worker 1" in process.output, "the worker starts")
        await pollUntil(lambda: b"worker 1: " in process.output and b"receiving mail" in process.output, "the worker runs")
        self.assertEqual(await inThread(sendOne, port, f"a@{DOMAIN}", MESSAGE), {})
        process.transport.signalProcess(signal.SIGUSR2)
        self.assertEqual(await process.wait(), 0)
        output = process.output.decode(errors="replace")
        self.assertRegex(output, r"worker 1: .*Drained \(every session has ended\)")
        lines = output.splitlines()
        ended = [n for n, line in enumerate(lines) if "Worker 1 ended" in line]
        drained = [n for n, line in enumerate(lines) if "Drained (" in line and "worker 1: " not in line]
        # The first process waited for its worker before it stopped.
        self.assertEqual(len(ended), 1)
        self.assertEqual(len(drained), 1)
        self.assertLess(ended[0], drained[0])
