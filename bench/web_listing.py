"""
The web interface's reading of a large store: how long the first page, a
search and the tree take on a generated Maildir of 100,000 messages.

    python bench/web_listing.py [--messages N] [--dir DIR] [--runs N] [--keep]

It writes (without fsync) a store under --dir (by default /var/tmp, the
host's file system, where users keep their Maildirs): most messages in
one mailbox's inbox, the rest spread over a few other mailboxes, a
Maildir++ folder and submitted mail, named as MailHarbor names them
(C{<seconds>.M<usec>P<pid>Q<n>.<host>,S=<size>}, a third of them moved
to C{cur/} with C{:2,S} as a mail reader leaves them), each with a small
header block and body.  Then it times, each the median of --runs runs
with the page cache warm:

  (a) listPage: the first page of the newest 50, and the third page
      through the cursors;
  (b) a from: search that matches one message in ten (one page of 50),
      and one that matches nothing (stopped by the budget of one page);
  (c) mailboxTree, the tree with its counts;
  (d) changes.snapshot, the first and a repeated one, and findSummary;
  (e) the same first page, search and message through the web interface,
      as a browser gets them: C{twistd mailharbor --web} is started on the
      store and asked over HTTP on loopback (the index page with its
      tree, C{/api/v1/messages}, a message's page), each figure beside
      the store call it wraps, with their ratio (what HTTP, JSON or the
      page, and the thread hand-off add).

It prints the figures and the number of files each opened.  The store is
removed afterwards unless --keep is given (--reuse DIR times an existing
one).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from harbor.store import browse, changes, summaries
from harbor.store.search import Query, parseQuery

HOST = "mx.example.com"
START = 1_764_000_000
MAILBOXES = (
    ("example.com/alice", 0.90),
    ("example.com/bob", 0.04),
    ("example.com", 0.02),
    ("example.net/carol", 0.02),
    ("example.net/carol/.Lists.python", 0.01),
    (".submitted/alice", 0.01),
)
SENDERS = ("news@shop.example", "friend@mail.example", "bank@bank.example", "list@lists.example")


def generate(root: str, count: int, seed: int = 14) -> None:
    """
    Write C{count} messages below C{root}, as described above.
    """
    rng = random.Random(seed)
    for key, _ in MAILBOXES:
        for sub in ("tmp", "new", "cur"):
            os.makedirs(os.path.join(root, key, sub), exist_ok=True)
    keys = [key for key, _ in MAILBOXES]
    weights = [weight for _, weight in MAILBOXES]
    when = float(START)
    for n in range(count):
        # About two messages a minute, several within one second now and then.
        when += rng.expovariate(1 / 30)
        seconds = int(when)
        key = rng.choices(keys, weights)[0]
        sender = SENDERS[3] if n % 10 else SENDERS[2]
        if n % 10 and rng.random() < 0.5:
            sender = rng.choice(SENDERS[:2])
        user = key.split("/")[1] if "/" in key else "postmaster"
        body = b"Hello,\n\nthis is message %d.\n" % n + b"Some text of a line or two.\n" * rng.randint(1, 20)
        header = (
            f"Return-Path: <{sender}>\n"
            f"Delivered-To: {user}@example.com\n"
            f"Received: from client.example (client.example [192.0.2.{n % 250 + 1}])\n"
            f"\tby {HOST} (MailHarbor) with ESMTPS id {seconds}.M{n % 1_000_000}P4242Q{n}\n"
            f"\tfor <{user}@example.com>; Wed, 2 Dec 2026 08:00:00 +0000\n"
            f"From: Sender {n % 97} <{sender}>\n"
            f"To: {user}@example.com\n"
            f"Subject: Message number {n} about {rng.choice(('invoices', 'lunch', 'the release', 'news'))}\n"
            "Date: Wed, 2 Dec 2026 08:00:00 +0000\n"
            f"Message-ID: <{n}@sender.example>\n"
            "MIME-Version: 1.0\n"
            "Content-Type: text/plain; charset=utf-8\n\n"
        ).encode()
        data = header + body
        name = f"{seconds}.M{rng.randrange(1_000_000)}P4242Q{n + 1}.{HOST},S={len(data)}"
        sub = "new"
        if rng.random() < 1 / 3:
            sub, name = "cur", name + ":2,S"
        path = os.path.join(root, key, sub, name)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)


def timed(runs: int, action: Callable[[], Any]) -> tuple[float, Any]:
    """
    The median of C{runs} timings of C{action}, in seconds, and its last
    result.
    """
    times = []
    result = None
    for _ in range(runs):
        began = time.perf_counter()
        result = action()
        times.append(time.perf_counter() - began)
    return statistics.median(times), result


def countOpens() -> list[str]:
    """
    Record the message files the listing opens from now on.
    """
    opened: list[str] = []
    real = summaries.openMessage

    def recording(path: str) -> Any:
        opened.append(path)
        return real(path)

    summaries.openMessage = recording
    browse.openMessage = recording  # type: ignore[attr-defined]
    return opened


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--dir", default="/var/tmp")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--keep", action="store_true", help="leave the generated store in place")
    parser.add_argument("--reuse", metavar="ROOT", help="time an existing store instead of generating one")
    options = parser.parse_args()

    if options.reuse:
        root = options.reuse
    else:
        root = tempfile.mkdtemp(prefix="mailharbor-web-bench-", dir=options.dir)
        began = time.perf_counter()
        generate(root, options.messages)
        print(f"generated {options.messages:,} messages in {root} in {time.perf_counter() - began:.1f} s")
    try:
        report(root, options.runs)
        overHTTP(root, options.runs)
    finally:
        if not options.reuse and not options.keep:
            shutil.rmtree(root)


def report(root: str, runs: int) -> None:
    """
    Time the listings of the store at C{root} and print the figures.
    """
    opened = countOpens()
    everything = parseQuery("")

    def line(label: str, seconds: float, detail: str) -> None:
        print(f"{label:<44} {seconds * 1000:9.1f} ms   {detail}")

    del opened[:]
    seconds, page = timed(runs, lambda: browse.listPage(root, None, everything))
    line("(a) first page, newest 50", seconds, f"{len(opened) // runs} files opened, {len(page.messages)} shown")

    def third() -> browse.Page:
        cursor = None
        for _ in range(3):
            page = browse.listPage(root, None, everything, cursor)
            cursor = page.cursor
        return page

    seconds, page = timed(runs, third)
    line("(a) pages 1 to 3 through the cursors", seconds, f"{len(page.messages)} shown on page 3")

    one = browse.listPage(root, ["example.com/bob"], everything)
    seconds, page = timed(runs, lambda: browse.listPage(root, ["example.com/bob"], everything))
    line("(a) first page of a small mailbox (4 %)", seconds, f"{len(one.messages)} shown")

    for label, text in (
        ("(b) search from:bank (1 in 10), one page", "from:bank"),
        ("(b) search from:nobody, one page (bounded)", "from:nobody"),
        ("(b) search free text 'release', one page", "release"),
        ("(b) search is:unread, one page", "is:unread"),
        ("(b) search body:\"message 99999\", one page", 'body:"message 99999"'),
    ):
        query = parseQuery(text)

        def search(query: Query = query) -> browse.Page:
            return browse.listPage(root, None, query)

        seconds, page = timed(runs, search)
        state = "complete" if page.complete else f"stopped: {page.stoppedBecause}"
        line(label, seconds, f"{len(page.messages)} found, {page.searched:,} read, {state}")

    seconds, tree = timed(runs, lambda: browse.mailboxTree(root))
    total = sum(folder.total for folder in tree)
    line("(c) mailboxTree", seconds, f"{len(tree)} folders, {total:,} messages counted")

    # The store was written moments ago: a clock ten seconds ahead lets
    # the repeated snapshot trust its directories' times, as it would a
    # few seconds after the last delivery.
    later = lambda: time.time() + 10
    seconds, first = timed(runs, lambda: changes.snapshot(root, clock=later))
    line("(d) changes.snapshot, from nothing", seconds, f"{len(first):,} messages")
    seconds, again = timed(runs, lambda: changes.snapshot(root, previous=first, clock=later))
    line("(d) changes.snapshot, nothing changed", seconds, f"{len(changes.diff(first, again))} changes")
    newest = browse.listPage(root, None, everything, limit=1).messages[0].id
    seconds, _ = timed(runs, lambda: browse.findSummary(root, newest, None))
    line("(d) findSummary of one message by id", seconds, "")


def _freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def overHTTP(root: str, runs: int) -> None:
    """
    Time the reads of L{report} again through a running web interface, and
    print each beside the store call it wraps.
    """
    web = _freePort()
    base = f"http://127.0.0.1:{web}"
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    with tempfile.TemporaryDirectory(prefix="mailharbor-web-bench-run-") as run:
        server = subprocess.Popen(
            [twistd, "-n", "--pidfile=", "mailharbor", "--port", f"tcp:{_freePort()}:interface=127.0.0.1",
             "--domain", "example.com", "--domain", "example.net", "--maildir", root, "--web", str(web)],
            cwd=run, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    urllib.request.urlopen(base + "/healthz", timeout=2).read()
                    break
                except OSError:
                    if time.monotonic() > deadline or server.poll() is not None:
                        raise SystemExit("the web interface did not start") from None
                    time.sleep(0.2)

            def get(path: str) -> bytes:
                with urllib.request.urlopen(base + path, timeout=60) as response:
                    body: bytes = response.read()
                    return body

            everything = parseQuery("")
            newest = browse.listPage(root, None, everything, limit=1).messages[0].id
            bank = parseQuery("from:bank")
            for label, path, direct in (
                ("(e) GET / (tree and newest 50)", "/",
                 lambda: (browse.mailboxTree(root), browse.listPage(root, None, everything))),
                ("(e) GET /api/v1/messages (newest 50)", "/api/v1/messages",
                 lambda: browse.listPage(root, None, everything)),
                ("(e) GET /api/v1/messages?q=from:bank", "/api/v1/messages?" + urllib.parse.urlencode({"q": "from:bank"}),
                 lambda: browse.listPage(root, None, bank)),
                ("(e) GET /m/ID (a message's page)", "/m/" + newest,
                 lambda: browse.findSummary(root, newest, None)),
            ):
                get(path)
                def fetch(path: str = path) -> bytes:
                    return get(path)

                seconds, body = timed(runs, fetch)
                alone, _ = timed(runs, direct)
                print(
                    f"{label:<44} {seconds * 1000:9.1f} ms   store call alone {alone * 1000:.1f} ms, "
                    f"ratio {seconds / alone:.2f}; {len(body):,} bytes"
                )
        finally:
            server.terminate()
            server.wait(30)


if __name__ == "__main__":
    main()
