"""
The benchmark's own SMTP client, for the workloads smtp-source cannot drive.

Each mode prints one JSON object on stdout (the idle mode prints two, see
below); times are time.monotonic(), which is the same clock in every process
on Linux, so the harness can compare them with its own.  Commands are sent
in lock step (no pipelining), as smtp-source does.

  burst    W1, W6, W7: --sessions lanes in parallel, each opening sessions
           of --per-session messages until --total messages were sent; also
           reports the median time a command (MAIL, RCPT, DATA) took to be
           answered, and the p50 and p99 wait from the end of data (the
           final CRLF.CRLF written) to its 250.  With --seconds, no session
           is opened after that many seconds (the result says cut_short).
  bigloop  W7's slow mailbox: one session sending messages of --size bytes
           to --recipient, one after another, from {"ready": ...} until a
           line on stdin; then prints the result.
  latency  W3: one connection, one message at a time; per-message latency
           until the 250 reply, and, with --count-dir, until the file is in
           that directory (for a server that queues before storing).
  big      W4: one connection, one message of --size bytes.
  idle     W5: --connections connections, each greeted and EHLOed; prints
           {"ready": ...} once all are up, waits for a line on stdin, then
           sends NOOP on each, QUITs, and prints the result.

Every wait is bounded by --timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import resource
import sys
import time
from collections.abc import Iterable
from typing import TypedDict

SENDER = b"sender@example.net"
RECIPIENT = b"rcpt@example.com"
HELO = b"loadgen.example.net"
MiB = 1024 * 1024


class SMTPError(Exception):
    pass


class _BurstState(TypedDict):
    """
    What burst's lanes share: the next session to open, the messages
    acknowledged, and the errors met (the first ten in full).
    """

    next: int
    ok: int
    errors: list[str]
    error_count: int


class Client(asyncio.Protocol):
    """
    A minimal lock-step SMTP client on asyncio's Protocol API (cheaper than
    streams, so the load generator takes less of the CPU it shares with the
    server).
    """

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._lines: list[bytes] = []
        self._replies: collections.deque[tuple[int, bytes]] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self._closed: BaseException | None = None
        self._drain: asyncio.Future[None] | None = None
        self._paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buf = self._buffer
        buf += data
        start = 0
        while True:
            end = buf.find(b"\r\n", start)
            if end < 0:
                break
            line = bytes(buf[start:end])
            start = end + 2
            if len(line) >= 4 and line[3] == 0x2D:  # "-": more lines follow
                self._lines.append(line)
                continue
            if self._lines:
                self._lines.append(line)
                text = b"\n".join(self._lines)
                self._lines = []
            else:
                text = line
            code = int(line[:3]) if line[:3].isdigit() else 0
            self._replies.append((code, text))
        if start:
            del buf[:start]
        if self._replies:
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._closed = exc or ConnectionError("connection closed by the server")
        self._wake()
        if self._drain is not None and not self._drain.done():
            self._drain.set_exception(self._closed)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    async def drain(self) -> None:
        if self._paused:
            self._drain = self.loop.create_future()
            await self._drain

    async def reply(self) -> tuple[int, bytes]:
        while not self._replies:
            if self._closed is not None:
                raise ConnectionError(str(self._closed))
            self._waiter = self.loop.create_future()
            await self._waiter
        return self._replies.popleft()

    async def expect(self, code: int, what: str) -> bytes:
        got, text = await self.reply()
        if got != code:
            raise SMTPError(f"{what}: expected {code}, got {text[:200]!r}")
        return text

    async def command(self, line: bytes, code: int) -> bytes:
        assert self.transport is not None
        self.transport.write(line)
        return await self.expect(code, line.split(b" ", 1)[0].strip().decode("ascii", "replace"))

    async def greet(self) -> None:
        await self.expect(220, "banner")
        await self.command(b"EHLO " + HELO + b"\r\n", 250)

    async def send(self, message: bytes, steps: list[float] | None = None, recipient: bytes = RECIPIENT) -> bytes:
        """
        One transaction; C{message} is already dot-stuffed with CRLF line
        ends and ends with CRLF.  With C{steps}, appends how long MAIL,
        RCPT and DATA took to be answered, then the wait from the end of
        data (the message and its final ".\\r\\n" handed to the socket)
        to the 250.
        """
        now = time.monotonic
        t0 = now()
        await self.command(b"MAIL FROM:<" + SENDER + b">\r\n", 250)
        t1 = now()
        await self.command(b"RCPT TO:<" + recipient + b">\r\n", 250)
        t2 = now()
        await self.command(b"DATA\r\n", 354)
        t3 = now()
        assert self.transport is not None
        self.transport.write(message)
        self.transport.write(b".\r\n")
        await self.drain()
        t4 = now()
        reply = await self.expect(250, "end of data")
        if steps is not None:
            steps += (t1 - t0, t2 - t1, t3 - t2, now() - t4)
        return reply

    async def send_big(self, chunks: Iterable[bytes | memoryview], recipient: bytes = RECIPIENT) -> tuple[bytes, float]:
        """
        One transaction of a message given in chunks, each written once the
        last has drained; returns the 250 reply and the wait from the end
        of data to it.
        """
        await self.command(b"MAIL FROM:<" + SENDER + b">\r\n", 250)
        await self.command(b"RCPT TO:<" + recipient + b">\r\n", 250)
        await self.command(b"DATA\r\n", 354)
        assert self.transport is not None
        for chunk in chunks:
            self.transport.write(chunk)
            await self.drain()
        self.transport.write(b".\r\n")
        await self.drain()
        t = time.monotonic()
        reply = await self.expect(250, "end of data")
        return reply, time.monotonic() - t

    async def quit(self) -> None:
        assert self.transport is not None
        try:
            await asyncio.wait_for(self.command(b"QUIT\r\n", 221), 10)
        finally:
            self.transport.close()


async def connect(host: str, port: int) -> Client:
    loop = asyncio.get_running_loop()
    _, client = await loop.create_connection(Client, host, port)
    return client


def make_message(size: int, seq: int) -> bytes:
    """
    A message of exactly C{size} bytes (CRLF line ends), unique by C{seq}.
    """
    header = (
        f"From: <{SENDER.decode()}>\r\nTo: <{RECIPIENT.decode()}>\r\n"
        f"Subject: bench message {seq:09d}\r\n"
        f"Message-ID: <{seq:09d}.{os.getpid()}@loadgen.example.net>\r\n\r\n"
    ).encode("ascii")
    remaining = max(size - len(header), 2)
    line = b"abcdefghijklmnopqrstuvwxyz0123456789" * 2 + b"ABCD\r\n"  # 78 bytes
    body = line * (remaining // len(line))
    tail = remaining - len(body)
    if tail >= 2:
        body += b"x" * (tail - 2) + b"\r\n"
    elif tail == 1:  # lengthen the last line by one byte
        body = body[:-2] + b"x\r\n"
    return header + body


def count_files(directory: str) -> int:
    try:
        return sum(1 for e in os.scandir(directory) if not e.name.startswith("."))
    except FileNotFoundError:
        return 0


def percentile(sorted_values: list[float], p: float) -> float | None:
    """
    Nearest-rank percentile of already sorted values (as the harness's).
    """
    if not sorted_values:
        return None
    rank = max(1, -(-len(sorted_values) * p // 100))
    return sorted_values[int(rank) - 1]


def _ms(value: float | None) -> float | None:
    return None if value is None else value * 1000


async def burst(options: argparse.Namespace) -> dict[str, object]:
    total = options.total
    per = options.per_session
    sessions = -(-total // per)
    template = [make_message(options.size, i) for i in range(min(total, 64))]
    state: _BurstState = {"next": 0, "ok": 0, "errors": [], "error_count": 0}
    steps: list[float] = []

    async def session(index: int) -> None:
        first = index * per
        count = min(per, total - first)
        client = await connect(options.host, options.port)
        try:
            await client.greet()
            for i in range(first, first + count):
                await client.send(template[i % len(template)], steps)
                state["ok"] += 1
            await client.quit()
        finally:
            if client.transport is not None:
                client.transport.close()

    async def lane() -> None:
        while state["next"] < sessions and not (options.seconds and time.monotonic() - start > options.seconds):
            index = state["next"]
            state["next"] += 1
            try:
                await session(index)
            except (TimeoutError, OSError, SMTPError) as e:
                state["error_count"] += 1
                if len(state["errors"]) < 10:
                    state["errors"].append(f"session {index}: {type(e).__name__}: {e}")

    start = time.monotonic()
    lanes = [asyncio.create_task(lane()) for _ in range(options.sessions)]
    _done, pending = await asyncio.wait(lanes, timeout=options.timeout)
    for task in pending:
        task.cancel()
    end = time.monotonic()
    cut = state["next"] < sessions and not pending
    if pending:
        state["errors"].append(f"timed out after {options.timeout}s")
        state["error_count"] += 1
    commands = sorted(steps[i] for i in range(len(steps)) if i % 4 != 3)
    ends = sorted(steps[3::4])
    return {
        "start": start,
        "end": end,
        "sent": state["ok"],
        "command_ms": _ms(percentile(commands, 50)),
        "end_of_data_ms": _ms(percentile(ends, 50)),
        "end_of_data_p99_ms": _ms(percentile(ends, 99)),
        "end_of_data_max_ms": _ms(ends[-1] if ends else None),
        "sessions": state["next"],
        "cut_short": cut,
        "error_count": state["error_count"],
        "errors": state["errors"],
    }


async def bigloop(options: argparse.Namespace) -> dict[str, object]:
    """
    W7's slow mailbox: one session sending messages of --size bytes to
    --recipient, one after another, from the moment it prints
    {"ready": ...} until a line (or end of file) on stdin; the message in
    flight then is finished, so what was acknowledged is whole.  A process
    of its own, so its copying does not delay the small sessions' client.
    """
    message = make_message(options.size, 10**8)
    view = memoryview(message)
    chunks = [view[i : i + MiB] for i in range(0, len(message), MiB)]
    recipient = options.recipient.encode("ascii")
    loop = asyncio.get_running_loop()
    waits: list[float] = []
    errors: list[str] = []
    stop = loop.run_in_executor(None, sys.stdin.readline)
    start = time.monotonic()
    ready = False
    try:
        client = await asyncio.wait_for(connect(options.host, options.port), options.timeout)
        try:
            await asyncio.wait_for(client.greet(), options.timeout)
            print(json.dumps({"ready": True}), flush=True)
            ready = True
            while not stop.done():
                _, wait = await asyncio.wait_for(client.send_big(chunks, recipient), options.timeout)
                waits.append(wait)
            await client.quit()
        finally:
            if client.transport is not None:
                client.transport.close()
    except (TimeoutError, OSError, SMTPError) as e:
        errors.append(f"{type(e).__name__}: {e}")
        if not ready:
            print(json.dumps({"ready": False}), flush=True)
    end = time.monotonic()
    await stop  # the harness's line (or end of file) comes before the result
    waits.sort()
    return {
        "start": start,
        "end": end,
        "sent": len(waits),
        "bytes": len(message) * len(waits),
        "end_of_data_ms": _ms(percentile(waits, 50)),
        "end_of_data_max_ms": _ms(waits[-1] if waits else None),
        "error_count": len(errors),
        "errors": errors,
    }


async def latency(options: argparse.Namespace) -> dict[str, object]:
    message = make_message(options.size, 0)
    acks: list[float] = []
    stored: list[float] = []
    errors: list[str] = []
    deadline = time.monotonic() + options.timeout
    start = time.monotonic()
    base = count_files(options.count_dir) if options.count_dir else 0
    client = await asyncio.wait_for(connect(options.host, options.port), options.timeout)
    try:
        await asyncio.wait_for(client.greet(), options.timeout)
        for i in range(options.total):
            if time.monotonic() > deadline:
                errors.append(f"timed out after {i} messages")
                break
            t0 = time.monotonic()
            await asyncio.wait_for(client.send(message), options.timeout)
            t1 = time.monotonic()
            acks.append(t1 - t0)
            if options.count_dir:
                # Not in the timing unless the file is not there yet (a
                # queueing server): then poll until it is.
                want = base + i + 1
                if count_files(options.count_dir) < want:
                    while count_files(options.count_dir) < want:
                        if time.monotonic() > deadline:
                            raise SMTPError(f"message {i} never reached {options.count_dir}")
                        time.sleep(0.0002)  # noqa: ASYNC251 -- nothing else is on the loop; a blocking 0.2 ms poll times the file finely
                    t1 = time.monotonic()
            stored.append(t1 - t0)
        await client.quit()
    except (TimeoutError, OSError, SMTPError) as e:
        errors.append(f"{type(e).__name__}: {e}")
    finally:
        if client.transport is not None:
            client.transport.close()
    return {
        "start": start,
        "end": time.monotonic(),
        "sent": len(acks),
        "ack_latencies": acks,
        "stored_latencies": stored,
        "error_count": len(errors),
        "errors": errors,
    }


async def big(options: argparse.Namespace) -> dict[str, object]:
    message = make_message(options.size, 0)
    chunk = 1024 * 1024
    view = memoryview(message)
    chunks = [view[i : i + chunk] for i in range(0, len(message), chunk)]
    errors: list[str] = []
    start = time.monotonic()
    ack = None
    try:
        client = await asyncio.wait_for(connect(options.host, options.port), options.timeout)
        try:
            await asyncio.wait_for(client.greet(), options.timeout)
            await asyncio.wait_for(client.send_big(chunks), options.timeout)
            ack = time.monotonic()
            await client.quit()
        finally:
            if client.transport is not None:
                client.transport.close()
    except (TimeoutError, OSError, SMTPError) as e:
        errors.append(f"{type(e).__name__}: {e}")
    return {
        "start": start,
        "ack": ack,
        "end": time.monotonic(),
        "sent": 1 if ack is not None else 0,
        "bytes": len(message),
        "error_count": len(errors),
        "errors": errors,
    }


async def idle(options: argparse.Namespace) -> dict[str, object]:
    n = options.connections
    gate = asyncio.Semaphore(options.in_flight)
    errors: collections.Counter[str] = collections.Counter()

    async def open_one() -> Client:
        async with gate:
            client = await connect(options.host, options.port)
            try:
                await client.greet()
            except BaseException:
                if client.transport is not None:
                    client.transport.close()
                raise
            return client

    start = time.monotonic()
    tasks = [asyncio.create_task(open_one()) for _ in range(n)]
    done, pending = await asyncio.wait(tasks, timeout=options.timeout)
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending, timeout=10)
    clients: list[Client] = []
    for task in done:
        if task.exception() is None:
            clients.append(task.result())
        else:
            e = task.exception()
            errors[f"{type(e).__name__}: {str(e)[:100]}"] += 1
    if pending:
        errors[f"no banner+EHLO reply within {options.timeout}s"] += len(pending)
    established = time.monotonic()
    ready = {
        "ready": True,
        "connections": n,
        "greeted": len(clients),
        "seconds_to_greet_all": established - start,
    }
    print(json.dumps(ready), flush=True)
    loop = asyncio.get_running_loop()
    try:
        await asyncio.wait_for(loop.run_in_executor(None, sys.stdin.readline), options.timeout)
    except TimeoutError:
        errors["harness never said go"] += 1

    async def noop(client: Client) -> bool:
        try:
            await client.command(b"NOOP\r\n", 250)
            return True
        except (OSError, SMTPError) as e:
            errors[f"NOOP: {type(e).__name__}: {str(e)[:100]}"] += 1
            return False

    noop_start = time.monotonic()
    results = []
    if clients:
        try:
            results = await asyncio.wait_for(
                asyncio.gather(*(noop(c) for c in clients)), options.timeout
            )
        except TimeoutError:
            errors[f"NOOPs not all answered within {options.timeout}s"] += 1
    noop_seconds = time.monotonic() - noop_start
    answered = sum(1 for r in results if r)
    for client in clients:
        if client.transport is not None and not client.transport.is_closing():
            client.transport.write(b"QUIT\r\n")
    await asyncio.sleep(0.2)
    for client in clients:
        if client.transport is not None:
            client.transport.close()
    await asyncio.sleep(0.1)
    return {
        "connections": n,
        "greeted": len(clients),
        "noop_answered": answered,
        "served": answered,
        "seconds_to_greet_all": established - start,
        "noop_seconds": noop_seconds,
        "error_count": sum(errors.values()),
        "errors": [f"{count} x {what}" for what, count in errors.most_common(10)],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["burst", "latency", "big", "idle", "bigloop"])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--sessions", type=int, default=20, help="parallel sessions (burst)")
    parser.add_argument("--per-session", type=int, default=10, help="messages per session (burst)")
    parser.add_argument("--total", type=int, default=5000, help="messages in all (burst, latency)")
    parser.add_argument("--size", type=int, default=1024, help="message size in bytes")
    parser.add_argument("--seconds", type=float, default=0,
                        help="burst: open no new session after this many seconds (0: until --total are sent)")
    parser.add_argument("--count-dir", help="latency: wait until each message is a file here")
    parser.add_argument("--recipient", default="slow@slow.example.com", help="bigloop: RCPT TO")
    parser.add_argument("--connections", type=int, default=1000, help="idle connections")
    parser.add_argument("--in-flight", type=int, default=100, help="idle: connections being opened at once")
    parser.add_argument("--timeout", type=float, default=120, help="bound on every wait, seconds")
    options = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    cpu0 = time.process_time()
    mode = {"burst": burst, "latency": latency, "big": big, "idle": idle, "bigloop": bigloop}[options.mode]
    result = asyncio.run(mode(options))
    result["client_cpu"] = time.process_time() - cpu0
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
