"""
The aiosmtpd peer: an aiosmtpd server that stores each message like
MailHarbor does before answering 250 -- trace headers, LF line ends, written
to tmp/, fsynced, renamed into new/ as <id>,S=<size>, new/ fsynced -- in a
thread pool of the same size as Twisted's default (10), so the event loop
keeps serving other clients meanwhile.  It logs one line per message, as
MailHarbor and Postfix do.

    python aiosmtpd_server.py --port 2525 --maildir DIR --domain example.com
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import email.utils
import itertools
import logging
import os
import signal
import socket
import time

# Installed in the benchmark's own venv (bench/run), which has its types;
# elsewhere mypy may not find it.
from aiosmtpd.smtp import SMTP, Envelope, Session  # type: ignore[import-not-found, unused-ignore]

log = logging.getLogger("bench.aiosmtpd")


class MaildirHandler:
    def __init__(self, root: str, domains: list[str], hostname: str, threads: int) -> None:
        self.root = root
        self.domains = {d.lower() for d in domains}
        self.hostname = hostname
        self.executor = concurrent.futures.ThreadPoolExecutor(max_workers=threads)
        self.counter = itertools.count(1)
        self.pid = os.getpid()
        for domain in self.domains:
            for sub in ("tmp", "new", "cur"):
                os.makedirs(os.path.join(root, domain, sub), mode=0o700, exist_ok=True)

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        domain = address.rpartition("@")[2].lower()
        if domain not in self.domains:
            return "550 5.7.1 Relay access denied"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    def _name(self) -> str:
        now = time.time()
        return f"{int(now)}.M{int(now % 1 * 1e6)}P{self.pid}Q{next(self.counter)}.{self.hostname}"

    def _store(self, sender: str, recipients: list[str], helo: str, peer: str, content: bytes) -> list[str]:
        body = content.replace(b"\r\n", b"\n")
        date = email.utils.formatdate(localtime=True)
        stored = []
        dirs = set()
        for rcpt in recipients:
            domain = rcpt.rpartition("@")[2].lower()
            directory = os.path.join(self.root, domain)
            name = self._name()
            header = (
                f"Return-Path: <{sender}>\n"
                f"Delivered-To: {rcpt}\n"
                f"Received: from {helo} ([{peer}])\n"
                f"\tby {self.hostname} (aiosmtpd) with ESMTP id {name}\n"
                f"\tfor <{rcpt}>; {date}\n"
            ).encode("ascii", "replace")
            tmp = os.path.join(directory, "tmp", name)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                with os.fdopen(fd, "wb", buffering=256 * 1024) as f:
                    f.write(header)
                    f.write(body)
                    f.flush()
                    os.fsync(f.fileno())
                size = len(header) + len(body)
                os.rename(tmp, os.path.join(directory, "new", f"{name},S={size}"))
            except BaseException:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
                raise
            dirs.add(directory)
            stored.append(name)
        for directory in dirs:
            dfd = os.open(os.path.join(directory, "new"), os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        return stored

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        loop = asyncio.get_running_loop()
        peer = session.peer[0] if isinstance(session.peer, tuple) else str(session.peer)
        try:
            ids = await loop.run_in_executor(
                self.executor,
                self._store,
                envelope.mail_from or "",
                list(envelope.rcpt_tos),
                session.host_name or "unknown",
                peer,
                envelope.original_content or b"",
            )
        except OSError as e:
            log.error("storage failure: %s", e)
            return "451 4.3.0 Error: local error in processing"
        log.info(
            "client=%s helo=%s from=<%s> to=%s size=%d result=stored id=%s",
            peer, session.host_name, envelope.mail_from, ",".join(envelope.rcpt_tos),
            len(envelope.original_content or b""), ",".join(ids),
        )
        return f"250 2.0.0 Ok: stored as {ids[0]}"


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--maildir", required=True)
    parser.add_argument("--domain", action="append", default=[])
    parser.add_argument("--hostname", default="aiosmtpd.bench.localdomain")
    parser.add_argument("--threads", type=int, default=10)
    parser.add_argument("--max-size", type=int, default=128 * 1024 * 1024)
    parser.add_argument("--backlog", type=int, default=100)
    options = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    handler = MaildirHandler(options.maildir, options.domain or ["example.com"], options.hostname, options.threads)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(
            handler,
            hostname=options.hostname,
            data_size_limit=options.max_size,
            ident="aiosmtpd",
        ),
        host=options.host,
        port=options.port,
        family=socket.AF_INET,
        backlog=options.backlog,
    )
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("aiosmtpd listening on %s:%d", options.host, options.port)
    async with server:
        await stop.wait()
    handler.executor.shutdown(wait=False, cancel_futures=True)


if __name__ == "__main__":
    asyncio.run(main())
