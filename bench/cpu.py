"""
CPU per message of MailHarbor's own code, without sockets: a steadier
yardstick than the loopback workloads while optimising.

    python bench/cpu.py [--messages N] [--per-session N] [--dir DIR] [--profile [--top N]]

It drives the SMTP protocol, the delivery and the Maildir writer with W1's
traffic (1 KiB messages, 10 per session, EHLO/MAIL/RCPT/DATA/QUIT), on a
Twisted test transport instead of a socket, and stores every message for
real (written, fsynced, renamed into new/, new/ fsynced), one at a time, in
a Maildir under --dir (by default /dev/shm, where fsync costs nothing, so
the disk is left out); the transaction log lines go through twisted.logger's
text observer to a file, as under twistd.
It prints the process CPU time per message.  On a busy or virtual machine
the loopback rates in bench/run drift by 10-20 % from minute to minute; this
figure moves by a few per cent, so a change that saves 5 % shows here.

The reactor, socket reads and writes, and the commit thread are not in it:
bench/run measures those.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from twisted.internet.task import Clock
from twisted.logger import globalLogBeginner, textFileLogObserver

from harbor.store.fs import RealFileSystem
from harbor.test._support import SMTPDriver, makeDeliverer

LINE = b"abcdefghijklmnopqrstuvwxyz0123456789" * 2 + b"ABCD\r\n"
MESSAGE = (
    b"From: <sender@example.net>\r\nTo: <rcpt@example.com>\r\nSubject: bench message\r\n"
    b"Message-ID: <1@loadgen.example.net>\r\n\r\n" + LINE * 11
)


def drive(deliverer: object, clock: Clock, messages: int, perSession: int) -> None:
    """
    Send C{messages} messages in sessions of C{perSession}, checking every
    reply to the end of data is a 250.
    """
    sent = 0
    while sent < messages:
        smtp = SMTPDriver(deliverer, clock, peer="127.0.0.1")  # type: ignore[arg-type]
        smtp.send(b"EHLO loadgen.example.net\r\n")
        for _ in range(min(perSession, messages - sent)):
            smtp.send(b"MAIL FROM:<sender@example.net>\r\n")
            smtp.send(b"RCPT TO:<rcpt@example.com>\r\n")
            smtp.send(b"DATA\r\n")
            reply = smtp.send(MESSAGE + b".\r\n")
            if not reply.startswith(b"250 "):
                raise SystemExit(f"bench/cpu.py: the message was not stored: {reply!r}")
            sent += 1
        smtp.send(b"QUIT\r\n")
        smtp.protocol.connectionLost(None)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--per-session", type=int, default=10)
    parser.add_argument("--profile", action="store_true", help="print cProfile's busiest functions instead")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--dir", default="/dev/shm" if os.path.isdir("/dev/shm") else None,
                        help="where the Maildir goes (default /dev/shm)")
    options = parser.parse_args()
    work = tempfile.mkdtemp(prefix="mailharbor-cpu-", dir=options.dir)
    try:
        with open(os.path.join(work, "log.txt"), "w") as log:
            globalLogBeginner.beginLoggingTo([textFileLogObserver(log)], redirectStandardIO=False)
            clock = Clock()
            clock.advance(time.time())
            deliverer, _ = makeDeliverer(os.path.join(work, "Maildir"), fs=RealFileSystem(), clock=clock)
            drive(deliverer, clock, min(500, options.messages), options.per_session)
            if options.profile:
                profile = cProfile.Profile()
                profile.runcall(drive, deliverer, clock, options.messages, options.per_session)
                pstats.Stats(profile).sort_stats("cumulative").print_stats(options.top)
                return 0
            began = time.process_time()
            drive(deliverer, clock, options.messages, options.per_session)
            spent = time.process_time() - began
        print(f"{spent / options.messages * 1e6:.0f} us of CPU per message ({options.messages} messages, "
              f"{options.per_session} per session, Maildir on {work})")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
