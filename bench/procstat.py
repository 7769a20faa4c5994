"""
Reading /proc: a server's process tree, its CPU time and its memory.

A server is one process (MailHarbor, aiosmtpd, smtp-sink) or a tree of them
(Postfix: master and its children).  CPU time of children that already
exited is in their parent's cutime/cstime once reaped, so summing
utime+stime+cutime+cstime over the living tree never loses time.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Self

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode("ascii", "replace")
    except OSError:
        return None
    # The command name is in parentheses and may contain spaces.
    return raw[raw.rindex(")") + 2 :].split()


def parent_map() -> dict[int, int]:
    """
    pid -> ppid of every process.
    """
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields is not None:
            parents[int(entry)] = int(fields[1])
    return parents


def tree(root: int) -> list[int]:
    """
    C{root} and all its living descendants.
    """
    children: dict[int, list[int]] = {}
    for pid, ppid in parent_map().items():
        children.setdefault(ppid, []).append(pid)
    result: list[int] = []
    todo = [root]
    seen: set[int] = set()
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        if os.path.exists(f"/proc/{pid}"):
            result.append(pid)
            todo.extend(children.get(pid, ()))
    return result


def identity(pid: int) -> tuple[int, int] | None:
    """
    (pid, start time): unlike a bare pid, never names a later process that
    reused the number.
    """
    fields = _stat_fields(pid)
    if fields is None:
        return None
    return (pid, int(fields[19]))


def cpu_seconds(pids: list[int]) -> float:
    """
    User + system CPU seconds of these processes and their reaped children.
    """
    total = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is None:
            continue
        # Fields after the command: state(0) ppid(1) ... utime(11) stime(12)
        # cutime(13) cstime(14).
        if fields[0] == "Z":
            continue  # a zombie's time is counted once its parent reaps it
        total += int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
    return total / CLOCK_TICKS


def tree_cpu(root: int) -> float:
    return cpu_seconds(tree(root))


def status_kib(pid: int, key: str) -> int:
    """
    A field of /proc/PID/status in KiB (VmRSS, VmHWM), 0 if gone.
    """
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(key.encode() + b":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def pss_kib(pid: int) -> int:
    """
    Proportional set size: shared pages divided among their sharers, so
    summing it over many processes (Postfix's smtpd) does not count the
    shared libraries once per process.
    """
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
            for line in f:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def memory(pids: list[int]) -> dict[str, int]:
    """
    Summed VmRSS, VmHWM and Pss (KiB) of these processes.
    """
    rss = hwm = pss = 0
    for pid in pids:
        rss += status_kib(pid, "VmRSS")
        hwm += status_kib(pid, "VmHWM")
        pss += pss_kib(pid)
    return {"rss_kib": rss, "hwm_kib": hwm, "pss_kib": pss, "processes": len(pids)}


class RssSampler:
    """
    Samples the summed VmRSS of a process tree in a thread, for the peak of
    a multi-process server whose processes peak at different moments.
    """

    def __init__(self, root: int, interval: float = 0.02, max_seconds: float = 900) -> None:
        self._root = root
        self._interval = interval
        self._deadline = time.monotonic() + max_seconds
        self._stop = threading.Event()
        self.peak_kib = 0
        self.samples = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        pids = tree(self._root)
        refreshed = time.monotonic()
        while not self._stop.is_set() and time.monotonic() < self._deadline:
            now = time.monotonic()
            if now - refreshed > 0.5:
                pids = tree(self._root)
                refreshed = now
            total = sum(status_kib(pid, "VmRSS") for pid in pids)
            self.peak_kib = max(self.peak_kib, total)
            self.samples += 1
            self._stop.wait(self._interval)


def machine_busy_seconds() -> float:
    """
    CPU seconds the whole machine spent busy (all CPUs, since boot).
    """
    with open("/proc/stat") as f:
        fields = f.readline().split()
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[1:9])
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


class ForeignCpu:
    """
    CPU the machine spent during a measurement outside the server, the load
    generator and the harness: other people's work on a shared machine (and
    kernel threads), which makes a measurement noisy.

    @param ours: Returns the cumulative CPU seconds of our own processes.
    """

    def __init__(self, ours: Callable[[], float]) -> None:
        self._ours = ours

    def __enter__(self) -> Self:
        self._start = time.monotonic()
        self._busy = machine_busy_seconds()
        self._mine = self._ours()
        self.seconds = 0.0
        self.share = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        busy = machine_busy_seconds() - self._busy
        mine = self._ours() - self._mine
        wall = time.monotonic() - self._start
        self.seconds = min(max(busy - mine, 0.0), wall * (os.cpu_count() or 1))
        self.share = self.seconds / wall if wall > 0 else 0.0
