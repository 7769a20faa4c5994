"""
MailHarbor's benchmark: MailHarbor, aiosmtpd, Postfix and smtp-sink side by
side on loopback, interleaved, several runs; prints the medians and
MailHarbor's ratio to each peer.

Run it through bench/run, which installs what it needs first.  Each
measurement starts a fresh server with an empty Maildir on its own port and
stops it afterwards; within a run the servers take turns on each workload,
in an order rotated from run to run, so drift and noise hit all alike.

  W1  1 KiB messages, 20 concurrent sessions of 10 messages, 5,000 in all:
      messages/s from first connect to last file stored; server CPU/message
  W2  the same, one message per connection (driven by smtp-source)
  W3  one client, one message at a time: latency until stored, p50 and p99
  W4  one 100 MiB message: seconds until stored; server memory growth
  W5  1,000 then 10,000 idle connections after EHLO: all served (banner,
      EHLO reply and a final NOOP answered); server memory while held
  W6  busy disk: W1 while a background writer streams big
      files, without fsync, onto the same file system (1.5 GiB a pass,
      1 MiB writes, over and over; capped at a quarter of the free space,
      removed when the workload ends): messages/s and W6/W1 per server
  W7  one slow mailbox: W1 plus one more session that sends 20 MiB messages
      to a mailbox of its own for as long as the small sessions run: the
      small messages' wait from the end of data to the 250, p50 and p99,
      against their W1 values in the same run

W6 and W7 are read against W1, which is measured too when they are chosen.
A message lost (a stored count other than the messages acknowledged) or a
connection not served fails the run (exit status 1).

Storage is, by default, the host's file system, where users keep their
Maildirs: the servers' directories (Maildirs, Postfix's queue) are made
under --workdir (default /var/tmp) and checked to be on it (--fs host).
--fs loop puts them on a fresh journaled ext4 loop-mounted from a sparse
image instead (see LoopFilesystem).  The CPU that other processes use
meanwhile is recorded, since a shared machine's noise shows there.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from types import FrameType
from typing import Any, NoReturn, Self

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import procstat
from servers import (
    SERVERS,
    SLOW_DOMAIN,
    MailHarbor,
    Server,
    ServerError,
    ServerOptions,
    find_postfix_tool,
    free_port,
)

HERE = os.path.dirname(os.path.abspath(__file__))
WORKLOADS = ("W1", "W2", "W3", "W4", "W5", "W6", "W7")
MiB = 1024 * 1024

# (key, label, better, format); "better" is None for rows without a ratio.
METRICS: list[tuple[str, str, str | None, str]] = [
    ("idle_rss_mib", "idle server RSS, MiB", "lower", "{:.1f}"),
    ("w1_rate", "W1 msgs/s (20 sessions x 10 msgs)", "higher", "{:.0f}"),
    ("w1_cpu_us", "W1 server CPU per msg, us", "lower", "{:.0f}"),
    ("w1_command_ms", "W1 MAIL/RCPT/DATA answered in, ms", "lower", "{:.2f}"),
    ("w1_eod_ms", "W1 end of data to 250, p50, ms", "lower", "{:.2f}"),
    ("w1_eod_p99_ms", "W1 end of data to 250, p99, ms", "lower", "{:.2f}"),
    ("w2_rate", "W2 msgs/s (1 msg/connection, smtp-source)", "higher", "{:.0f}"),
    ("w3_p50_ms", "W3 latency p50, ms", "lower", "{:.2f}"),
    ("w3_p99_ms", "W3 latency p99, ms", "lower", "{:.2f}"),
    ("w4_seconds", "W4 100 MiB message, s", "lower", "{:.2f}"),
    ("w4_mem_mib", "W4 peak RSS - idle RSS, MiB", "lower", "{:.1f}"),
]


# After W5's rows; labels are formatted with the options.
LATE_METRICS: list[tuple[str, str, str | None, str]] = [
    ("w6_rate", "W6 msgs/s (W1 + big files streamed meanwhile)", "higher", "{:.0f}"),
    ("w6_vs_w1", "W6/W1 msgs/s, same run", "higher", "{:.2f}"),
    ("w6_eod_ms", "W6 end of data to 250, p50, ms", "lower", "{:.2f}"),
    ("w6_eod_p99_ms", "W6 end of data to 250, p99, ms", "lower", "{:.2f}"),
    ("w6_writer_mib_s", "W6 background writer wrote, MiB/s", None, "{:.0f}"),
    ("w6_writer_cpus", "W6 background writer's CPUs", None, "{:.2f}"),
    ("w6_disk_mib_s", "W6 the device wrote, MiB/s", None, "{:.0f}"),
    ("w7_rate", "W7 small msgs/s (W1 + one {w7_mib} MiB sender)", "higher", "{:.0f}"),
    ("w7_eod_ms", "W7 small: end of data to 250, p50, ms", "lower", "{:.2f}"),
    ("w7_eod_p99_ms", "W7 small: end of data to 250, p99, ms", "lower", "{:.2f}"),
    ("w7_p50_vs_w1", "W7/W1 small p50 end-of-data wait", "lower", "{:.2f}"),
    ("w7_p99_vs_w1", "W7/W1 small p99 end-of-data wait", "lower", "{:.2f}"),
    ("w7_big_sent", "W7 {w7_mib} MiB messages acknowledged", None, "{:.0f}"),
    ("w7_big_mib_s", "W7 big session's MiB/s", "higher", "{:.0f}"),
]

# Per run and server, key = numerator / denominator (both from that run).
DERIVED = [
    ("w6_vs_w1", "w6_rate", "w1_rate"),
    ("w7_p50_vs_w1", "w7_eod_ms", "w1_eod_ms"),
    ("w7_p99_vs_w1", "w7_eod_p99_ms", "w1_eod_p99_ms"),
]


def w5_metrics(n: int) -> list[tuple[str, str, str | None, str]]:
    k = f"{n // 1000}k" if n % 1000 == 0 else str(n)
    return [
        (f"w5_{n}_served", f"W5 {k} idle conns: served", None, "{:.0f}"),
        (f"w5_{n}_greet_s", f"W5 {k}: seconds to greet all", "lower", "{:.2f}"),
        (f"w5_{n}_rss_mib", f"W5 {k}: server RSS while held, MiB", "lower", "{:.1f}"),
        (f"w5_{n}_pss_growth_mib", f"W5 {k}: PSS growth over idle, MiB", "lower", "{:.1f}"),
    ]


class Bench:
    def __init__(self, options: argparse.Namespace) -> None:
        self.options = options
        self.venv = options.venv
        self.python = os.path.join(self.venv, "bin", "python")
        self.values: dict[str, dict[str, list[float]]] = {s: {} for s in options.servers}
        # The same values by run, for ratios taken within a run.
        self.by_run: dict[tuple[str, str, int], float] = {}
        self.current_run = 0
        self.raw: list[dict[str, Any]] = []
        self.failures: list[str] = []
        self.notes: list[str] = []
        self.background: list[tuple[float, str]] = []
        self.live: list[Server] = []
        self.disk: tuple[float, float] | None = None
        self.fs = ""
        self.server_options: ServerOptions = {
            "postfix_main_extra": "\n".join(options.postfix_main),
            "mailharbor_endpoint_extra": options.mailharbor_endpoint,
            "mailharbor_workers": options.mailharbor_workers,
            "mailharbor_limit_keys": self._mailharbor_limit_keys(),
            "max_connections": max(options.w5) + 10000 if options.w5 else 20000,
        }

    # Utilities

    def log(self, message: str) -> None:
        stamp = datetime.datetime.now().strftime("%H:%M:%S")
        print(f"[{stamp}] {message}", file=sys.stderr, flush=True)

    def _mailharbor_limit_keys(self) -> list[str]:
        if not {"mailharbor", *self.options.variants} & set(self.options.servers):
            return []
        out = subprocess.run(
            [self.python, "-c", "import harbor.limits as c; print(' '.join(getattr(c, 'LIMIT_KEYS', {})))"],
            capture_output=True, text=True, timeout=60, check=False,
        )
        return out.stdout.split()

    def record(self, server: str, key: str, value: float) -> None:
        self.values[server].setdefault(key, []).append(value)
        self.by_run[(server, key, self.current_run)] = value

    def derive(self) -> None:
        """
        The ratios of one workload to another (W6/W1, W7/W1), each taken
        within a run, so the drift between runs of a noisy machine cancels.
        """
        for run in range(self.options.runs):
            for server in self.options.servers:
                for key, numerator, denominator in DERIVED:
                    a = self.by_run.get((server, numerator, run))
                    b = self.by_run.get((server, denominator, run))
                    if a is not None and b:
                        self.values[server].setdefault(key, []).append(a / b)

    def fail(self, what: str) -> None:
        self.failures.append(what)
        self.log(f"FAILED: {what}")

    def loadgen(self, args: list[str], timeout: float) -> dict[str, Any]:
        cmd = [self.python, os.path.join(HERE, "loadgen.py")] + args
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        if out.returncode != 0:
            raise RuntimeError(f"loadgen {args[0]} exited {out.returncode}: {out.stderr[-2000:]}")
        result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
        return result

    def wait_stored(self, server: Server, expected: int, timeout: float, domain: str | None = None) -> tuple[int, float]:
        """
        Wait until C{expected} files are in new/ (at once for a server that
        stores before replying; a queueing one is polled).

        @return: the count and the monotonic time it was reached.
        """
        def count() -> int:
            return server.count() if domain is None else server.count(domain)

        deadline = time.monotonic() + timeout
        n = count()
        while n < expected and server.queues and time.monotonic() < deadline:
            time.sleep(0.005)
            n = count()
        return n, time.monotonic()

    def start(self, name: str, label: str, extra: ServerOptions | None = None) -> Server:
        workdir = tempfile.mkdtemp(prefix=f"{name}-{label}-", dir=self.options.workdir)
        os.chmod(workdir, 0o755)
        options: ServerOptions = {**self.server_options, **(extra or {})}
        if name in self.options.variants:
            options["mailharbor_toml"] = self.options.variants[name]
            server: Server = MailHarbor(workdir, free_port(), self.venv, options)
            server.name = name  # its column, and its label in the log
        else:
            server = SERVERS[name](workdir, free_port(), self.venv, options)
        self.live.append(server)
        server.start()
        self.check_storage(server)
        time.sleep(self.options.settle)
        return server

    def finish(self, server: Server) -> None:
        try:
            server.stop()
        finally:
            if server in self.live:
                self.live.remove(server)
            if not self.options.keep:
                shutil.rmtree(server.workdir, ignore_errors=True)
            os.sync()

    def check_storage(self, server: Server) -> None:
        """
        Every directory the server keeps mail in is on the file system
        under test (--fs), where W6's writer writes too.
        """
        want = os.stat(self.options.workdir).st_dev
        for directory in server.storage_dirs():
            if os.stat(directory).st_dev != want:
                raise ServerError(f"{server.name}: {directory} is not on the file system of {self.options.workdir}")

    def stop_all(self) -> None:
        for server in list(self.live):
            try:
                self.finish(server)
            except Exception:  # noqa: BLE001 -- one server that fails to stop leaves no other running
                traceback.print_exc()

    # The workloads: each measures one server once.

    def burst(self, server: Server, run: int, workload: str, total: int, seconds: float = 0) -> dict[str, Any]:
        """
        W1's load (--w1-sessions sessions of --w1-per-session 1 KiB
        messages, C{total} in all, or as many sessions as start within
        C{seconds}) against C{server}; records wN_rate, wN_cpu_us,
        wN_command_ms, wN_eod_ms and wN_eod_p99_ms.

        @return: the load generator's result, with the server's CPU seconds
            and the seconds from first connect to last file stored.
        """
        o = self.options
        key = workload.lower()
        root = server.root_pid()
        cpu0 = procstat.tree_cpu(root)
        res = self.loadgen(
            ["burst", "--port", str(server.port), "--sessions", str(o.w1_sessions),
             "--per-session", str(o.w1_per_session), "--total", str(total),
             "--size", "1024", "--timeout", str(o.timeout), "--seconds", str(seconds)],
            o.timeout + 90,
        )
        end = res["end"]
        if res.get("cut_short"):
            # Bounded by time: every session begun ran to its end.
            total = min(total, res["sessions"] * o.w1_per_session)
            self.notes.append(f"run {run + 1} {workload} {server.name}: stopped opening sessions after "
                              f"{seconds:g} s, {total} messages")
        if server.stores:
            stored, end = self.wait_stored(server, res["sent"], o.timeout)
            self.check_count(server, workload, run, res["sent"], stored, total)
        elif res["sent"] != total:
            self.fail(f"run {run + 1} {workload} {server.name}: {res['sent']}/{total} acknowledged")
        cpu = procstat.tree_cpu(root) - cpu0
        if res["error_count"]:
            self.fail(f"run {run + 1} {workload} {server.name}: client errors {res['errors'][:3]}")
        res["server_cpu_s"] = cpu
        res["seconds"] = end - res["start"]
        rate = res["sent"] / res["seconds"]
        res["rate"] = rate
        self.record(server.name, f"{key}_rate", rate)
        self.record(server.name, f"{key}_cpu_us", cpu / max(res["sent"], 1) * 1e6)
        for name, step in (("command_ms", "command_ms"), ("eod_ms", "end_of_data_ms"),
                           ("eod_p99_ms", "end_of_data_p99_ms")):
            if res.get(step) is not None:
                self.record(server.name, f"{key}_{name}", res[step])
        return res

    def w1(self, server: Server, run: int) -> None:
        idle = procstat.memory(server.pids())
        self.record(server.name, "idle_rss_mib", idle["rss_kib"] / 1024)
        res = self.burst(server, run, "W1", self.options.messages)
        self.raw.append({"run": run, "workload": "W1", "server": server.name, "rate": res["rate"],
                         "server_cpu_s": res["server_cpu_s"], "client_cpu_s": res["client_cpu"],
                         "seconds": res["seconds"], "sent": res["sent"], "idle": idle,
                         "eod_p50_ms": res["end_of_data_ms"], "eod_p99_ms": res["end_of_data_p99_ms"]})
        self.log(f"  W1 {server.name}: {res['rate']:.0f} msgs/s, server CPU {res['server_cpu_s']:.2f}s, "
                 f"client CPU {res['client_cpu']:.2f}s, end of data to 250 p50 {_fmt(res['end_of_data_ms'])} "
                 f"p99 {_fmt(res['end_of_data_p99_ms'])} ms")

    def w6(self, server: Server, run: int) -> None:
        """
        W1 on a busy disk: a writer streams big files onto the same file
        system meanwhile, without fsync, as a neighbour (logs, a backup, a
        database load) would.
        """
        o = self.options
        device = block_device(o.workdir)
        with BackgroundWriter(o.workdir, o.w6_mib * MiB, o.w6_rate * MiB) as writer:
            time.sleep(o.w6_warmup)  # the writer's dirty pages are going to the disk when the load starts
            written0, cpu0, disk0, t0 = writer.written, writer.cpu, device_written(device), time.monotonic()
            res = self.burst(server, run, "W6", o.w6_messages or o.messages, o.w6_seconds)
            seconds = time.monotonic() - t0
            written, writer_cpu = writer.written - written0, writer.cpu - cpu0
            disk = device_written(device) - disk0 if device else None
        if writer.error:
            self.fail(f"run {run + 1} W6 {server.name}: background writer: {writer.error}")
        self.record(server.name, "w6_writer_mib_s", written / MiB / seconds)
        self.record(server.name, "w6_writer_cpus", writer_cpu / seconds)
        if disk is not None:
            self.record(server.name, "w6_disk_mib_s", disk / MiB / seconds)
        self.raw.append({"run": run, "workload": "W6", "server": server.name, "rate": res["rate"],
                         "server_cpu_s": res["server_cpu_s"], "client_cpu_s": res["client_cpu"],
                         "seconds": res["seconds"], "sent": res["sent"],
                         "eod_p50_ms": res["end_of_data_ms"], "eod_p99_ms": res["end_of_data_p99_ms"],
                         "writer_pass_bytes": writer.size, "writer_passes": writer.passes,
                         "writer_bytes": written, "writer_cpu_s": writer_cpu, "device": device, "device_bytes": disk})
        self.log(f"  W6 {server.name}: {res['rate']:.0f} msgs/s, server CPU {res['server_cpu_s']:.2f}s, "
                 f"end of data to 250 p50 {_fmt(res['end_of_data_ms'])} p99 {_fmt(res['end_of_data_p99_ms'])} ms; "
                 f"writer {written / MiB / seconds:.0f} MiB/s in {writer.size / MiB:.0f} MiB passes, "
                 f"{writer_cpu / seconds:.2f} CPUs"
                 + (f", {device} wrote {disk / MiB / seconds:.0f} MiB/s" if disk is not None else ""))

    def w7(self, server: Server, run: int) -> None:
        """
        W1 beside one slow mailbox: one more session sends big messages to
        a domain of its own all along; the small messages' end-of-data wait
        shows whether a big commit holds up theirs.
        """
        o = self.options
        size = o.w7_mib * MiB
        cmd = [self.python, os.path.join(HERE, "loadgen.py"), "bigloop", "--port", str(server.port),
               "--size", str(size), "--recipient", f"slow@{SLOW_DOMAIN}", "--timeout", str(o.timeout)]
        slow = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            if not json.loads(_readline(slow, 60)).get("ready"):
                raise RuntimeError(f"W7's big session could not start: {slow.communicate(timeout=30)[0][-500:]}")
            time.sleep(0.1)  # its first message is under way before the small sessions start
            res = self.burst(server, run, "W7", o.w7_messages or o.messages, o.w7_seconds)
            assert slow.stdin is not None
            slow.stdin.write("stop\n")
            slow.stdin.flush()
            bigres: dict[str, Any] = json.loads(_readline(slow, o.timeout))
            slow.wait(timeout=30)
        finally:
            if slow.poll() is None:
                slow.kill()
                slow.wait()
        if bigres["error_count"]:
            self.fail(f"run {run + 1} W7 {server.name}: big session: {bigres['errors'][:3]}")
        big = bigres["sent"]
        if server.stores:
            stored, _ = self.wait_stored(server, big, o.timeout, SLOW_DOMAIN)
            if stored != big:
                self.fail(f"run {run + 1} W7 {server.name}: {big} big messages acknowledged but {stored} stored")
            short = [e.name for e in os.scandir(server.new_dir_of(SLOW_DOMAIN))
                     if not e.name.startswith(".") and e.stat().st_size < size * 0.95]
            if short:
                self.fail(f"run {run + 1} W7 {server.name}: partial big messages in new/: {short[:3]}")
        if big == 0:
            self.fail(f"run {run + 1} W7 {server.name}: no big message was acknowledged while the small ones ran")
        self.record(server.name, "w7_big_sent", big)
        self.record(server.name, "w7_big_mib_s", bigres["bytes"] / MiB / (bigres["end"] - bigres["start"]))
        self.raw.append({"run": run, "workload": "W7", "server": server.name, "rate": res["rate"],
                         "server_cpu_s": res["server_cpu_s"], "seconds": res["seconds"], "sent": res["sent"],
                         "eod_p50_ms": res["end_of_data_ms"], "eod_p99_ms": res["end_of_data_p99_ms"],
                         "eod_max_ms": res["end_of_data_max_ms"], "big_sent": big,
                         "big_eod_p50_ms": bigres["end_of_data_ms"], "big_eod_max_ms": bigres["end_of_data_max_ms"]})
        self.log(f"  W7 {server.name}: {res['rate']:.0f} small msgs/s, end of data to 250 p50 "
                 f"{_fmt(res['end_of_data_ms'])} p99 {_fmt(res['end_of_data_p99_ms'])} ms; "
                 f"{big} x {o.w7_mib} MiB stored meanwhile (their wait p50 {_fmt(bigres['end_of_data_ms'])} ms)")

    def w2(self, server: Server, run: int) -> None:
        o = self.options
        root = server.root_pid()
        cpu0 = procstat.tree_cpu(root)
        cmd = [find_postfix_tool("smtp-source"), "-s", str(o.w1_sessions), "-m", str(o.messages),
               "-l", str(o.w2_payload), "-f", "sender@example.net", "-t", "rcpt@example.com",
               "-M", "loadgen.example.net", f"127.0.0.1:{server.port}"]
        start = time.monotonic()
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=o.timeout, check=False)
        end = time.monotonic()
        if out.returncode != 0:
            self.fail(f"run {run + 1} W2 {server.name}: smtp-source exited {out.returncode}: {out.stderr.strip()[-300:]}")
        if server.stores:
            stored, end = self.wait_stored(server, o.messages, o.timeout)
            self.check_count(server, "W2", run, o.messages, stored, o.messages)
        cpu = procstat.tree_cpu(root) - cpu0
        rate = o.messages / (end - start)
        self.record(server.name, "w2_rate", rate)
        self.raw.append({"run": run, "workload": "W2", "server": server.name, "rate": rate,
                         "server_cpu_s": cpu, "seconds": end - start})
        self.log(f"  W2 {server.name}: {rate:.0f} msgs/s, server CPU {cpu:.2f}s")

    def w3(self, server: Server, run: int) -> None:
        o = self.options
        args = ["latency", "--port", str(server.port), "--total", str(o.w3_messages),
                "--size", "1024", "--timeout", str(o.timeout)]
        if server.queues:
            args += ["--count-dir", server.new_dir]
        res = self.loadgen(args, o.timeout + 30)
        if res["error_count"]:
            self.fail(f"run {run + 1} W3 {server.name}: {res['errors'][:3]}")
        if server.stores:
            stored, _ = self.wait_stored(server, res["sent"], o.timeout)
            self.check_count(server, "W3", run, res["sent"], stored, o.w3_messages)
        lat = sorted(res["stored_latencies"])
        if not lat:
            return
        p50 = percentile(lat, 50) * 1000
        p99 = percentile(lat, 99) * 1000
        self.record(server.name, "w3_p50_ms", p50)
        self.record(server.name, "w3_p99_ms", p99)
        acks = sorted(res["ack_latencies"])
        self.raw.append({"run": run, "workload": "W3", "server": server.name, "p50_ms": p50, "p99_ms": p99,
                         "ack_p50_ms": percentile(acks, 50) * 1000, "ack_p99_ms": percentile(acks, 99) * 1000,
                         "max_ms": lat[-1] * 1000})
        self.log(f"  W3 {server.name}: p50 {p50:.2f} ms, p99 {p99:.2f} ms")

    def w4(self, server: Server, run: int) -> None:
        o = self.options
        size = o.w4_mib * MiB
        pids = server.pids()
        idle = procstat.memory(pids)
        with procstat.RssSampler(server.root_pid()) as sampler:
            res = self.loadgen(["big", "--port", str(server.port), "--size", str(size),
                                "--timeout", str(o.timeout)], o.timeout + 60)
            end = res["end"] if res["ack"] is None else res["ack"]
            if server.stores and res["sent"]:
                stored, end = self.wait_stored(server, 1, o.timeout)
                self.check_count(server, "W4", run, 1, stored, 1)
        after = procstat.memory(server.pids())
        if res["error_count"]:
            self.fail(f"run {run + 1} W4 {server.name}: {res['errors'][:3]}")
            return
        if server.stores:
            sizes = [e.stat().st_size for e in os.scandir(server.new_dir)]
            if not sizes or sizes[0] < size * 0.95:
                self.fail(f"run {run + 1} W4 {server.name}: stored file sizes {sizes}, sent {size}")
        seconds = end - res["start"]
        peak = sampler.peak_kib
        if len(pids) == 1:
            peak = max(peak, after["hwm_kib"])  # exact, for a single process
        growth = (peak - idle["rss_kib"]) / 1024
        self.record(server.name, "w4_seconds", seconds)
        self.record(server.name, "w4_mem_mib", growth)
        self.raw.append({"run": run, "workload": "W4", "server": server.name, "seconds": seconds,
                         "ack_seconds": (res["ack"] or end) - res["start"], "idle": idle, "after": after,
                         "sampled_peak_rss_kib": sampler.peak_kib, "samples": sampler.samples})
        self.log(f"  W4 {server.name}: {seconds:.2f} s, RSS +{growth:.1f} MiB")

    def w5(self, server: Server, run: int, n: int, label: str | None = None, timeout: float | None = None) -> dict[str, Any]:
        o = self.options
        name = label or server.name
        # Postfix forks an smtpd per connection: ~50 a second here.
        timeout = timeout or max(o.timeout, n * 0.03)
        idle = procstat.memory(server.pids())
        cmd = [self.python, os.path.join(HERE, "loadgen.py"), "idle", "--port", str(server.port),
               "--connections", str(n), "--in-flight", str(o.w5_in_flight), "--timeout", str(timeout)]
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            ready = json.loads(_readline(proc, timeout + 30))
            time.sleep(0.5)
            held = procstat.memory(server.pids())
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
            res = json.loads(_readline(proc, timeout + 60))
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        served = res["served"]
        result = {"run": run, "workload": f"W5-{n}", "server": name, "served": served, "connections": n,
                  "greeted": ready["greeted"], "idle": idle, "held": held,
                  "seconds_to_greet_all": ready["seconds_to_greet_all"], "errors": res["errors"]}
        self.raw.append(result)
        self.log(f"  W5 {n} {name}: served {served}/{n} (greeted {ready['greeted']} in "
                 f"{ready['seconds_to_greet_all']:.1f}s), RSS {held['rss_kib'] / 1024:.1f} MiB "
                 f"in {held['processes']} processes, PSS +{(held['pss_kib'] - idle['pss_kib']) / 1024:.1f} MiB")
        if label is None:
            self.record(name, f"w5_{n}_served", served)
            if served != n:
                self.fail(f"run {run + 1} W5 {n} {name}: served {served}/{n}: {res['errors'][:3]}")
            else:
                self.record(name, f"w5_{n}_greet_s", ready["seconds_to_greet_all"])
                self.record(name, f"w5_{n}_rss_mib", held["rss_kib"] / 1024)
                self.record(name, f"w5_{n}_pss_growth_mib", (held["pss_kib"] - idle["pss_kib"]) / 1024)
        return result

    def check_count(self, server: Server, workload: str, run: int, acked: int, stored: int, wanted: int) -> None:
        if acked != wanted:
            self.fail(f"run {run + 1} {workload} {server.name}: only {acked}/{wanted} messages acknowledged")
        if stored != acked:
            self.fail(f"run {run + 1} {workload} {server.name}: {acked} acknowledged but {stored} stored")

    # Driving

    def measure(self, workload: str, name: str, run: int) -> None:
        if workload == "W5":
            for n in self.options.w5:
                extra: ServerOptions = {}
                if name == "postfix":
                    if n > self.options.postfix_w5_full and run >= self.options.postfix_w5_runs:
                        # 10,000 smtpd processes take minutes to fork and
                        # ~12 GiB: measured in the first run(s) only.
                        continue
                    # Default smtpd process limit is 100: raise it to serve n.
                    extra["postfix_smtpd_maxproc"] = n + 100
                self._measure_one(f"W5-{n}", name, run, lambda s: self.w5(s, run, n), extra)  # noqa: B023 -- called at once
            return
        method = getattr(self, workload.lower())
        self._measure_one(workload, name, run, lambda s: method(s, run), {})

    def _measure_one(self, label: str, name: str, run: int, body: Callable[[Server], object], extra: ServerOptions) -> None:
        server = None
        try:
            server = self.start(name, label, extra)
            srv = server
            with procstat.ForeignCpu(lambda: procstat.tree_cpu(srv.root_pid()) + _own_cpu()) as foreign:
                body(server)
            self.background.append((foreign.share, f"run {run + 1} {label} {name}"))
            if foreign.share > 0.5:
                self.log(f"  (other processes and kernel threads used {foreign.share:.2f} CPUs meanwhile)")
        except (ServerError, RuntimeError, subprocess.TimeoutExpired, OSError, ValueError, KeyError) as e:
            self.fail(f"run {run + 1} {label} {name}: {type(e).__name__}: {e}")
        finally:
            if server is not None:
                self.finish(server)

    def postfix_defaults_probe(self) -> None:
        """
        W5 against Postfix's default process limits, once, for the record.
        """
        n = self.options.w5[0]
        server = None
        try:
            server = self.start("postfix", "W5-defaults")
            r = self.w5(server, 0, n, label="postfix (default limits)", timeout=self.options.probe_timeout)
            self.notes.append(
                f"Postfix with its default process limits (smtpd maxproc = default_process_limit = 100): "
                f"{r['greeted']} of {n} idle connections got banner+EHLO within {self.options.probe_timeout:.0f} s "
                f"and {r['served']} answered the final NOOP; the rest wait in the listen queue for an smtpd. "
                f"W5 rows above use smtpd maxproc = connections + 100."
            )
        except (ServerError, RuntimeError, subprocess.TimeoutExpired, OSError, ValueError, KeyError) as e:
            self.notes.append(f"Postfix default-limits probe failed: {e}")
        finally:
            if server is not None:
                self.finish(server)

    def profile(self, workload: str) -> None:
        """
        One extra, uncounted W1 or W2 against MailHarbor with py-spy
        attached (wall-clock samples of every thread, idle ones included).
        """
        o = self.options
        pyspy = os.path.join(self.venv, "bin", "py-spy")
        if not os.access(pyspy, os.X_OK):
            self.notes.append("profile: py-spy is not installed in the bench venv")
            return
        os.makedirs(o.results, exist_ok=True)
        raw = os.path.join(o.results, f"mailharbor-{workload.lower()}-profile.txt")
        server = self.start("mailharbor", f"profile-{workload}")
        spy = None
        try:
            spy = subprocess.Popen([pyspy, "record", "--format", "raw", "--rate", "250", "--threads",
                                    "--idle", "-o", raw, "-p", str(server.root_pid())],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            time.sleep(1.0)
            if workload == "W1":
                res = self.loadgen(["burst", "--port", str(server.port), "--sessions", str(o.w1_sessions),
                                    "--per-session", str(o.w1_per_session), "--total", str(o.messages),
                                    "--size", "1024", "--timeout", str(o.timeout)], o.timeout + 30)
                rate = res["sent"] / (res["end"] - res["start"])
            else:
                start = time.monotonic()
                subprocess.run([find_postfix_tool("smtp-source"), "-s", str(o.w1_sessions), "-m", str(o.messages),
                                "-l", str(o.w2_payload), "-f", "sender@example.net", "-t", "rcpt@example.com",
                                "-M", "loadgen.example.net", f"127.0.0.1:{server.port}"],
                               capture_output=True, timeout=o.timeout, check=False)
                rate = o.messages / (time.monotonic() - start)
            self.log(f"  profiled {workload}: {rate:.0f} msgs/s under py-spy")
        finally:
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                try:
                    _, err = spy.communicate(timeout=60)
                except subprocess.TimeoutExpired:
                    spy.kill()
                    _, err = spy.communicate()
                if spy.returncode not in (0, -signal.SIGINT) and not os.path.exists(raw):
                    self.notes.append(f"profile: py-spy failed: {err.strip()[-300:]}")
            self.finish(server)
        if os.path.exists(raw):
            summary = os.path.join(o.results, f"mailharbor-{workload.lower()}-profile-summary.txt")
            with open(summary, "w") as f:
                f.write(summarize_profile(raw, workload))
            self.notes.append(f"profile of MailHarbor under {workload}: {raw} (py-spy raw), summary in {summary}")

    def run(self) -> None:
        o = self.options
        began = time.monotonic()
        if {"W1", "W2", "W3"} & set(o.only):
            self.disk = probe_disk(o.workdir)
            single, grouped = self.disk
            self.log(f"disk: one fsynced delivery {single:.2f} ms, eight with one syncfs {grouped:.2f} ms")
        for run in range(o.runs):
            self.current_run = run
            self.log(f"run {run + 1}/{o.runs}")
            for workload in o.only:
                shift = run % len(o.servers)
                order = o.servers[shift:] + o.servers[:shift]
                for name in order:
                    self.measure(workload, name, run)
        big = [n for n in o.w5 if n > o.postfix_w5_full]
        if "W5" in o.only and "postfix" in o.servers and big and o.runs > o.postfix_w5_runs:
            self.notes.append(
                f"Postfix W5 with {', '.join(map(str, big))} connections was measured in the first "
                f"{o.postfix_w5_runs} run(s) only (--postfix-w5-runs): forking that many smtpd "
                f"processes takes minutes and ~1.2 MiB PSS each."
            )
        if "W5" in o.only and "postfix" in o.servers and o.postfix_defaults_probe:
            self.postfix_defaults_probe()
        if o.profile:
            for workload in ("W1", "W2"):
                self.profile(workload)
        self.derive()
        self.elapsed = time.monotonic() - began

    # Reporting

    def metrics(self) -> list[tuple[str, str, str | None, str]]:
        rows: list[tuple[str, str, str | None, str]] = []
        for key, label, better, fmt in METRICS:
            workload = key.split("_")[0].upper()
            if workload in self.options.only or (key == "idle_rss_mib" and "W1" in self.options.only):
                rows.append((key, label, better, fmt))
        if "W5" in self.options.only:
            for n in self.options.w5:
                rows += w5_metrics(n)
        for key, label, better, fmt in LATE_METRICS:
            if key.split("_")[0].upper() in self.options.only:
                rows.append((key, label.format_map(vars(self.options)), better, fmt))
        return rows

    def table(self) -> str:
        servers = self.options.servers
        peers = [s for s in servers if s != "mailharbor" and s not in self.options.variants] if "mailharbor" in servers else []
        header = [f"metric (median of {self.options.runs:d} runs)"] + servers + [f"MH/{p}" for p in peers] + ["better"]
        rows = [header]
        for key, label, better, fmt in self.metrics():
            medians = {}
            row = [label]
            for s in servers:
                vals = self.values[s].get(key, [])
                if key.endswith("_served"):
                    n = int(key.split("_")[1])
                    cell = f"{min(vals):.0f}/{n}" if vals else "-"
                    if vals and min(vals) < n:
                        cell = "FAIL " + cell
                    row.append(cell)
                    continue
                if vals:
                    medians[s] = statistics.median(vals)
                    cell = fmt.format(medians[s])
                    if len(vals) < self.options.runs:
                        cell += f" ({len(vals)}/{self.options.runs})"
                else:
                    cell = "-"
                row.append(cell)
            for p in peers:
                if better and "mailharbor" in medians and p in medians and medians[p] > 0:
                    row.append(f"{medians['mailharbor'] / medians[p]:.2f}")
                else:
                    row.append("")
            row.append(better or "")
            rows.append(row)
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        lines = []
        for i, r in enumerate(rows):
            lines.append("  ".join(c.ljust(widths[0]) if j == 0 else c.rjust(widths[j]) for j, c in enumerate(r)).rstrip())
            if i == 0:
                lines.append("  ".join("-" * w for w in widths))
        return "\n".join(lines)

    def report(self) -> str:
        o = self.options
        out = [
            "",
            f"MailHarbor benchmark: {o.runs} run(s), servers interleaved, fresh server and empty Maildir per measurement",
            f"machine: {os.cpu_count()} CPUs, {platform.platform()}, Python {platform.python_version()}, {self.versions()}",
            f"storage: {'a fresh journaled ext4 (loop-mounted image) for this benchmark' if o.fs == 'loop' else 'the host file system under ' + os.path.dirname(o.workdir)}"
            + f" ({self.fs})",
        ]
        if self.disk is not None:
            single, grouped = self.disk
            out.append(
                f"disk (median of 50): a 1 KiB file written, fsynced, renamed into new/ and new/ fsynced: {single:.2f} ms; "
                f"eight such files made durable by one syncfs(2): {grouped:.2f} ms"
            )
        out += [
            "",
            self.table(),
            "",
            (
                "MH/peer = MailHarbor's median / the peer's median (W1, W2: >1 means MailHarbor is faster; "
                "other rows: <1 means MailHarbor is better)."
            ),
            (
                "W1/W2 time runs from the first connect to the last file in new/ (Postfix queues first and is polled); "
                "W3 latency is from MAIL FROM to the file being in new/ (= the 250 reply for all but Postfix)."
            ),
            (
                "W1 steps (medians over all messages, as the client saw them): a session sends its next command only "
                "after the last reply, so W1's rate is about sessions / (3 command answers + the end-of-data wait + a "
                "tenth of connect, EHLO and QUIT); the end-of-data wait holds the store's fsyncs (Postfix: its queue "
                "file's, before delivery; smtp-sink: none)."
            ),
            (
                "Memory: RSS summed over the server's processes (Postfix: master and all its children); "
                "PSS growth splits shared pages among processes, so it is comparable for Postfix's many smtpd."
            ),
        ]
        if "W6" in o.only:
            out.append(
                f"W6: W1's load ({o.w6_messages or o.messages} messages) while a writer in the harness streams a "
                f"{o.w6_mib} MiB file (at most a quarter of the free space) in 1 MiB writes, without fsync, "
                f"onto the same file system, over and over"
                + (f" at {o.w6_rate} MiB/s" if o.w6_rate else " as fast as the kernel takes it")
                + f", from {o.w6_warmup:g} s before the load to its end, then removes it; "
                "W6/W1 is each run's W6 rate over the same server's W1 rate in that run "
                "(MH/peer on that row > 1: MailHarbor loses less to the busy disk than the peer)."
            )
        if "W7" in o.only:
            out.append(
                f"W7: W1's load plus one more session (a process of its own) sending {o.w7_mib} MiB messages, one after another, to a "
                f"mailbox of its own (slow@{SLOW_DOMAIN}) until the small sessions are done; the end-of-data wait "
                "(final CRLF.CRLF written to the 250) is over the small messages only; W7/W1 compares it with "
                "the same server's W1 in the same run."
            )
        if o.verbose:
            out += ["", "per-run values:"]
            for key, label, _, fmt in self.metrics():
                for s in o.servers:
                    vals = self.values[s].get(key)
                    if vals:
                        out.append(f"  {label:45s} {s:11s} " + "  ".join(fmt.format(v) for v in vals))
        if self.background:
            shares = sorted(b for b, _ in self.background)
            noisy = [f"{what} ({share:.2f})" for share, what in self.background if share > 0.5]
            out += ["", f"other processes and kernel threads used a median {statistics.median(shares):.2f} and at most "
                        f"{shares[-1]:.2f} CPUs during the measurements (of {os.cpu_count()}"
                        + ("; ~0.4 is the loop device's own I/O threads under W1/W2" if o.fs == "loop" else "")
                        + "; more means someone else was busy)."]
            if noisy:
                out.append(f"  disturbed (> 0.5 CPUs): {len(noisy)} of {len(shares)} measurements: "
                           + ", ".join(noisy[:12]) + (" ..." if len(noisy) > 12 else ""))
        if self.notes:
            out += ["", "notes:"] + [f"  - {n}" for n in self.notes]
        if self.failures:
            out += ["", f"FAILURES ({len(self.failures)}):"] + [f"  - {f}" for f in self.failures]
        out.append(f"\ntotal time {self.elapsed:.0f} s")
        return "\n".join(out)

    def versions(self) -> str:
        parts = []
        try:
            v = subprocess.run(["postconf", "-d", "-h", "mail_version"], capture_output=True, text=True, timeout=10,
                               check=False)
            parts.append(f"Postfix {v.stdout.strip()}")
        except OSError:
            pass
        v = subprocess.run([self.python, "-c", "import twisted, aiosmtpd; print(twisted.__version__, aiosmtpd.__version__)"],
                           capture_output=True, text=True, timeout=60, check=False)
        if v.returncode == 0:
            tw, ai = v.stdout.split()
            parts += [f"Twisted {tw}", f"aiosmtpd {ai}"]
        return ", ".join(parts)


def _own_cpu() -> float:
    """
    CPU seconds of the harness and its finished children (load generators).
    """
    me = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


def _readline(proc: subprocess.Popen[str], timeout: float) -> str:
    """
    A line from a child's stdout, within C{timeout} seconds.
    """
    import selectors

    stdout = proc.stdout
    assert stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            raise subprocess.TimeoutExpired(proc.args, timeout)
    line = stdout.readline()
    if not line:
        raise RuntimeError(f"load generator exited ({proc.poll()}) without a result")
    return line


def probe_disk(parent: str, samples: int = 50) -> tuple[float, float]:
    """
    What the disk under C{parent} charges for a durable Maildir delivery, so
    the report shows the floor under every server's end-of-data wait: the
    median time to write a 1 KiB file in tmp/, fsync it, rename it into
    new/ and fsync new/; and to do so for eight files made durable together
    by one syncfs(2) (MailHarbor's group commit; the fsync-per-file time
    again where syncfs is missing).
    """
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    root = tempfile.mkdtemp(prefix="disk-probe-", dir=parent)
    tmp, new = os.path.join(root, "tmp"), os.path.join(root, "new")
    os.mkdir(tmp)
    os.mkdir(new)
    data = b"x" * 1024
    count = 0

    def deliver(files: int, syncfs: bool) -> float:
        nonlocal count
        began = time.perf_counter()
        names = []
        directory = os.open(tmp, os.O_RDONLY)
        try:
            for _ in range(files):
                count += 1
                name = str(count)
                fd = os.open(os.path.join(tmp, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                try:
                    os.write(fd, data)
                    if not syncfs:
                        os.fsync(fd)
                finally:
                    os.close(fd)
                names.append(name)
            if syncfs and libc.syncfs(directory) != 0:
                raise OSError(ctypes.get_errno(), "syncfs")
        finally:
            os.close(directory)
        for name in names:
            os.rename(os.path.join(tmp, name), os.path.join(new, name))
        directory = os.open(new, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
        return (time.perf_counter() - began) * 1000

    try:
        single = statistics.median(deliver(1, False) for _ in range(samples))
        try:
            grouped = statistics.median(deliver(8, True) for _ in range(samples))
        except (OSError, AttributeError):
            grouped = statistics.median(deliver(8, False) for _ in range(samples))
        return single, grouped
    finally:
        shutil.rmtree(root, ignore_errors=True)


class BackgroundWriter:
    """
    W6's busy neighbour: a thread that writes one file of C{size} bytes
    under C{parent} in 1 MiB writes, never fsyncing, then truncates it and
    writes it again, until stopped; the kernel's writeback makes the disk
    busy, as a log, a backup or a database load beside the Maildir would.

    Bounded: a pass is at most a quarter of the file system's free space
    (checked before every pass with the old pass truncated away, and
    smaller if the space shrinks), only one file exists at a time, and
    leaving the context (also on an exception or Ctrl-C) stops the thread
    and removes the file.  The thread is a daemon, so it dies with the
    harness whatever happens.

    @ivar written: Bytes written so far.
    @ivar cpu: CPU seconds the writing thread has used so far.
    @ivar passes: Passes completed.
    @ivar error: The OSError that stopped the writer early, if one did.
    """

    share = 0.25
    chunk = MiB

    def __init__(self, parent: str, size: int, rate: float = 0) -> None:
        self.parent = parent
        self.wanted = size
        self.rate = rate
        self.size = self._cap()
        self.written = 0
        self.cpu = 0.0
        self.passes = 0
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="w6-writer", daemon=True)
        self.directory: str | None = None
        self.path: str | None = None

    def _cap(self) -> int:
        st = os.statvfs(self.parent)
        free = st.f_bavail * st.f_frsize
        return min(self.wanted, int(free * self.share)) // self.chunk * self.chunk

    def __enter__(self) -> Self:
        if self.size < self.chunk:
            raise OSError(f"no room for W6's background writer under {self.parent}")
        self.directory = tempfile.mkdtemp(prefix="w6-writer-", dir=self.parent)
        self.path = os.path.join(self.directory, "big")
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)

    def _run(self) -> None:
        assert self.path is not None
        data = b"\xa5" * self.chunk
        began = time.monotonic()
        try:
            while not self._stop.is_set():
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
                try:
                    self.size = size = self._cap()
                    if size < self.chunk:
                        self._stop.wait(0.5)
                        continue
                    done = 0
                    while done < size and not self._stop.is_set():
                        n = os.write(fd, data)
                        done += n
                        self.written += n
                        self.cpu = time.thread_time()
                        if self.rate:
                            ahead = self.written / self.rate - (time.monotonic() - began)
                            if ahead > 0:
                                self._stop.wait(ahead)
                finally:
                    os.close(fd)
                self.passes += done >= size
        except OSError as e:
            self.error = f"{type(e).__name__}: {e}"


def block_device(path: str) -> str | None:
    """
    The block device (name in /proc/diskstats) holding C{path}'s file
    system, if it has one.
    """
    dev = os.stat(path).st_dev
    try:
        with open(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}/uevent") as f:
            for line in f:
                if line.startswith("DEVNAME="):
                    return line.strip().split("=", 1)[1]
    except OSError:
        pass
    return None


def device_written(device: str | None) -> int:
    """
    Bytes the block device has written since boot (0 if unknown).
    """
    if device is None:
        return 0
    with open("/proc/diskstats") as f:
        for line in f:
            fields = line.split()
            if fields[2] == device:
                return int(fields[9]) * 512
    return 0


def describe_fs(path: str) -> str:
    """
    The file system holding C{path}: type, device, mount point, options,
    and for ext4 whether it has a journal, which decides what an fsync and
    a syncfs cost.
    """
    dev = os.stat(path).st_dev
    best = None
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                fields, tail = left.split(), right.split()
                major, minor = (int(x) for x in fields[2].split(":"))
                if os.makedev(major, minor) == dev and (best is None or len(fields[4]) > len(best[0])):
                    best = (fields[4], tail[0], tail[1], fields[5])
    except (OSError, ValueError, IndexError):
        return "file system unknown"
    if best is None:
        return "file system unknown"
    mountpoint, fstype, source, options = best
    text = f"{fstype} on {source} mounted at {mountpoint}, {options}"
    if fstype.startswith("ext"):
        device = block_device(path)
        journal = bool(device) and any(n.startswith(f"{device}-") for n in _listdir("/proc/fs/jbd2"))
        text += ", with a journal" if journal else ", no journal"
    return text


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def percentile(sorted_values: list[float], p: float) -> float:
    """
    Nearest-rank percentile of already sorted values.
    """
    if not sorted_values:
        return float("nan")
    rank = max(1, -(-len(sorted_values) * p // 100))
    return sorted_values[int(rank) - 1]


def summarize_profile(path: str, workload: str = "W1", top: int = 25) -> str:
    """
    Summarize py-spy's raw (collapsed stack, --threads --idle) output: for
    the reactor thread and for the thread pool, how much of the wall time
    they were busy, and the functions they were in (self and inclusive), as
    a share of that thread group's samples.
    """
    groups: dict[str, dict[str, Any]] = {}
    with open(path) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not count.isdigit():
                continue
            n = int(count)
            frames = stack.split(";")
            thread = frames[0] if frames and frames[0].startswith("thread") else ""
            frames = frames[1:] if thread else frames
            kind = "reactor thread (MainThread)" if "MainThread" in thread else "thread pool (fsync etc.)"
            g = groups.setdefault(kind, {"threads": set(), "total": 0, "busy": 0, "self": {}, "incl": {}})
            g["threads"].add(thread)
            g["total"] += n
            leaf = frames[-1] if frames else ""
            idle = (
                leaf.startswith(("Condition.wait (threading.py", "EPollReactor.doPoll (twisted/internet/epollreactor.py"))
                or (leaf.startswith("Condition.__enter__") and any(fr.startswith("Queue.get") for fr in frames))
            )
            if idle or not frames:
                continue
            g["busy"] += n
            g["self"][leaf] = g["self"].get(leaf, 0) + n
            for fr in set(frames):
                g["incl"][fr] = g["incl"].get(fr, 0) + n
    out = [
        f"py-spy, wall-clock samples (blocking in a system call counts), MailHarbor under {workload}.",
        "Percentages are of each thread group's samples; 'busy' = not waiting for work.",
    ]
    for kind in sorted(groups):
        g = groups[kind]
        t = max(g["total"], 1)
        out += ["", f"== {kind}: {len(g['threads'])} thread(s), {g['total']} samples, busy {100 * g['busy'] / t:.0f}%",
                f"-- top {top} by self:"]
        for fr, n in sorted(g["self"].items(), key=lambda kv: -kv[1])[:top]:
            out.append(f"  {100 * n / t:5.1f}%  {fr}")
        out.append(f"-- top {top} by inclusive (harbor/ and Twisted's protocol/logging code):")
        skip = ("twisted/python/context.py", "twisted/python/log.py", "twisted/application", "twisted/scripts",
                "twistd:", "threading.py", "twisted/_threads", "twisted/python/threadpool.py",
                "twisted/internet/base.py", "EPollReactor.doPoll", "_PollLikeMixin")
        shown = 0
        for fr, n in sorted(g["incl"].items(), key=lambda kv: -kv[1]):
            if any(x in fr for x in skip):
                continue
            out.append(f"  {100 * n / t:5.1f}%  {fr}")
            shown += 1
            if shown >= top:
                break
    return "\n".join(out) + "\n"


def raise_fd_limit(want: int) -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        with open("/proc/sys/fs/nr_open") as f:
            ceiling = int(f.read())
    except OSError:
        ceiling = hard
    target = min(max(want, hard), ceiling)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, target))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=3, help="interleaved runs; medians are reported (default 3)")
    p.add_argument("--only", default=",".join(WORKLOADS), help="workloads, e.g. W1,W3 (default all)")
    p.add_argument("--servers", default="mailharbor,aiosmtpd,postfix,smtp-sink",
                   help="servers, in column order (default mailharbor,aiosmtpd,postfix,smtp-sink)")
    p.add_argument("--messages", type=int, default=5000, help="W1/W2 messages (default 5000)")
    p.add_argument("--w1-sessions", type=int, default=20)
    p.add_argument("--w1-per-session", type=int, default=10)
    p.add_argument("--w2-payload", type=int, default=875,
                   help="smtp-source -l: payload bytes, plus its ~125 header bytes makes ~1 KiB")
    p.add_argument("--w3-messages", type=int, default=500)
    p.add_argument("--w4-mib", type=int, default=100)
    p.add_argument("--w5", default="1000,10000", help="W5 connection counts (default 1000,10000)")
    p.add_argument("--w5-in-flight", type=int, default=100, help="W5 connections being opened at once")
    p.add_argument("--w6-messages", type=int, default=0, help="W6 messages (default: --messages)")
    p.add_argument("--w6-seconds", type=float, default=60,
                   help="W6: no new session after this many seconds, so a server slowed to a crawl ends in time "
                        "(default 60; 0: none)")
    p.add_argument("--w6-mib", type=int, default=1536,
                   help="W6: the background writer's file, MiB, rewritten every pass (default 1536; "
                        "capped at a quarter of the free space)")
    p.add_argument("--w6-rate", type=float, default=0,
                   help="W6: the writer's MiB/s (default 0: as fast as the kernel takes it)")
    p.add_argument("--w6-warmup", type=float, default=5,
                   help="W6: seconds the writer runs before the load starts (default 5)")
    p.add_argument("--w7-mib", type=int, default=20, help="W7: the slow session's message size, MiB (default 20)")
    p.add_argument("--w7-messages", type=int, default=0, help="W7 small messages (default: --messages)")
    p.add_argument("--w7-seconds", type=float, default=60, help="W7: as --w6-seconds (default 60)")
    p.add_argument("--no-postfix-defaults-probe", dest="postfix_defaults_probe", action="store_false",
                   help="skip the once-per-benchmark W5 check of Postfix's default process limits")
    p.add_argument("--probe-timeout", type=float, default=15)
    p.add_argument("--postfix-w5-runs", type=int, default=1,
                   help="runs in which Postfix does W5 counts above --postfix-w5-full (default 1: "
                        "10,000 smtpd processes take ~4 minutes and ~12 GiB)")
    p.add_argument("--postfix-w5-full", type=int, default=1000,
                   help="W5 counts up to this are measured for Postfix in every run (default 1000)")
    p.add_argument("--mailharbor-endpoint", default="", metavar="':OPTION=VALUE...'",
                   help="appended to MailHarbor's tcp:PORT:interface=127.0.0.1 endpoint, e.g. ':backlog=511'")
    p.add_argument("--mailharbor-workers", type=int, default=1, metavar="N",
                   help="run MailHarbor with --workers N (CPU and memory rows then count only the first process)")
    p.add_argument("--mailharbor-variant", action="append", default=[], metavar="NAME:KEY=VALUE,...",
                   help="a server NAME (for --servers) that is MailHarbor with these lines in its mailharbor.toml, "
                        "e.g. mh-l1:commit_lanes=1 or 'mh-syncfs:group_commit=\"syncfs\"'; repeatable; "
                        "MH/peer ratios stay those of the plain mailharbor column")
    p.add_argument("--postfix-main", action="append", default=[], metavar="'NAME = VALUE'",
                   help="extra main.cf line for the Postfix instance, repeatable (e.g. 'in_flow_delay = 0')")
    p.add_argument("--timeout", type=float, default=180, help="bound on each measurement's waits, seconds")
    p.add_argument("--settle", type=float, default=0.5, help="seconds between a server's start and its measurement")
    p.add_argument("--profile", action="store_true",
                   help="also profile MailHarbor under W1 and W2 with py-spy (extra, uncounted runs)")
    p.add_argument("--json", metavar="PATH", help="also write every value to this JSON file")
    p.add_argument("--results", default=os.path.join(HERE, "results"), help="where profiles go")
    p.add_argument("--workdir", default=None, help="parent of the servers' temporary directories (default /var/tmp)")
    p.add_argument("--fs", choices=["host", "loop"], default="host",
                   help="host (default): the Maildirs, Postfix's queue and W6's writer are directly on the "
                        "file system of --workdir, as a user's Maildir is; loop: on a fresh journaled ext4 "
                        "loop-mounted from a sparse image, which nothing else writes to")
    p.add_argument("--fs-gib", type=int, default=6, help="size of the loop file system's sparse image")
    p.add_argument("--keep", action="store_true",
                   help="keep the servers' directories (Maildirs, logs; with --fs loop, the image holding them)")
    p.add_argument("--venv", default=os.path.join(HERE, ".venv"))
    p.add_argument("-v", "--verbose", action="store_true", help="also print every run's values")
    o = p.parse_args(argv)
    o.only = [w.strip().upper() for w in o.only.split(",") if w.strip()]
    bad = [w for w in o.only if w not in WORKLOADS]
    if bad:
        p.error(f"unknown workload(s) {bad}; choose from {','.join(WORKLOADS)}")
    if {"W6", "W7"} & set(o.only) and "W1" not in o.only:
        o.only.insert(0, "W1")  # their ratios are to W1 in the same run
    o.variants = {}
    for spec in o.mailharbor_variant:
        name, sep, settings = spec.partition(":")
        name = name.strip()
        lines = [kv.strip() for kv in settings.split(",") if kv.strip()]
        if not sep or not name or name in SERVERS or name in o.variants or not all("=" in kv for kv in lines):
            p.error(f"--mailharbor-variant {spec!r}: want a new NAME:key=value,key=value")
        o.variants[name] = lines
    o.servers = [s.strip() for s in o.servers.split(",") if s.strip()]
    bad = [s for s in o.servers if s not in SERVERS and s not in o.variants]
    if bad:
        p.error(f"unknown server(s) {bad}; choose from {','.join([*SERVERS, *o.variants])}")
    o.w5 = [int(n) for n in o.w5.split(",") if n.strip()]
    if o.runs < 1:
        p.error("--runs must be at least 1")
    parent = o.workdir or "/var/tmp"
    os.makedirs(parent, exist_ok=True)
    o.workdir = tempfile.mkdtemp(prefix="mailharbor-bench-", dir=parent)
    os.chmod(o.workdir, 0o755)  # Postfix's users must reach their dirs
    return o


class LoopFilesystem:
    """
    A fresh ext4 file system (mkfs.ext4 defaults: journaled, as on a
    typical Debian install) in a sparse image, loop-mounted where the
    servers keep their Maildirs and queues.

    It isolates the measurements from the host file system's history: on
    an ext4 without a journal (this machine's root), creating a file skips
    every inode deleted in the last minutes (recently_deleted()), so a
    measurement run after another server's thousands of deleted files (the
    previous Maildir, Postfix's queue files) or other processes' churn
    pays for them, and results depend on the order of the servers.
    """

    def __init__(self, mountpoint: str, size_gib: int, keep: bool = False) -> None:
        self.keep = keep
        self.mountpoint = mountpoint
        self.image = mountpoint + ".img"
        self.size = size_gib
        self.mounted = False

    def __enter__(self) -> Self:
        with open(self.image, "wb") as f:
            f.truncate(self.size * 1024 * MiB)
        subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "mhbench", "-E", "lazy_itable_init=0,lazy_journal_init=0",
                        self.image], check=True, timeout=300, stdout=subprocess.DEVNULL)
        subprocess.run(["mount", "-o", "loop", self.image, self.mountpoint], check=True, timeout=60)
        self.mounted = True
        os.chmod(self.mountpoint, 0o755)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.mounted:
            for attempt in range(10):
                if subprocess.run(["umount", self.mountpoint], stderr=subprocess.DEVNULL, timeout=60, check=False).returncode == 0:
                    break
                time.sleep(1)
            else:
                subprocess.run(["umount", "-l", self.mountpoint], timeout=60, check=False)
            self.mounted = False
        if self.keep:
            print(f"kept the file system image {self.image} (mount -o loop to look inside)", file=sys.stderr)
            return
        try:
            os.unlink(self.image)
        except OSError:
            pass


def main(argv: list[str]) -> int:
    o = parse_args(argv)
    if os.geteuid() != 0 and "postfix" in o.servers:
        print("Postfix's private instance needs root (run bench/run as root)", file=sys.stderr)
        return 2
    raise_fd_limit(max(o.w5 or [0]) * 2 + 10000)

    def terminate(signum: int, frame: FrameType | None) -> NoReturn:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGHUP, terminate)
    bench = Bench(o)
    loop = LoopFilesystem(o.workdir, o.fs_gib, o.keep) if o.fs == "loop" else None
    try:
        if loop is not None:
            try:
                loop.__enter__()
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as e:
                bench.notes.append(f"could not loop-mount a file system ({e}): measured on the host's instead")
                bench.log(f"loop file system unavailable ({e}); using the host's")
                loop.__exit__()
                loop = None
                o.fs = "host"
        bench.fs = describe_fs(o.workdir)
        bench.log(f"servers {','.join(o.servers)}; workloads {','.join(o.only)}; {o.runs} run(s); "
                  f"work in {o.workdir} ({'fresh loop-mounted ext4' if loop else 'host file system'}: {bench.fs}); "
                  f"fd limit {resource.getrlimit(resource.RLIMIT_NOFILE)[0]}; "
                  f"MailHarbor knows the limits {bench.server_options['mailharbor_limit_keys'] or 'none known'}")
        bench.run()
    except KeyboardInterrupt:
        bench.log("interrupted: stopping the servers")
        bench.stop_all()
        return 130
    finally:
        bench.stop_all()
        if loop is not None:
            loop.__exit__()
        if not o.keep:
            shutil.rmtree(o.workdir, ignore_errors=True)
    report = bench.report()
    print(report, flush=True)
    if o.json:
        with open(o.json, "w") as f:
            json.dump({"options": {k: v for k, v in vars(o).items()}, "medians": {
                s: {k: statistics.median(v) for k, v in m.items()} for s, m in bench.values.items()},
                "values": bench.values, "raw": bench.raw, "failures": bench.failures, "notes": bench.notes,
                "background_cpus": bench.background,
                "elapsed_s": bench.elapsed}, f, indent=1, default=str)
    return 1 if bench.failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
