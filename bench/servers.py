"""
The servers under test, each started fresh on a loopback port with an empty
Maildir, and stopped (with everything it started) afterwards.

  mailharbor  twistd -n mailharbor, from the bench venv (pip-installed copy
              of the current tree)
  aiosmtpd    aiosmtpd_server.py: aiosmtpd + a Maildir handler that fsyncs
              like MailHarbor before answering 250
  postfix     a private Postfix instance (own config, queue and data
              directories) delivering with virtual(8) to a Maildir
  smtp-sink   Postfix's smtp-sink: reads and discards (the no-storage
              ceiling)
  NAME        a MailHarbor variant (--mailharbor-variant NAME:key=value,...):
              mailharbor with those lines added to its mailharbor.toml
"""

from __future__ import annotations

import ctypes
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from typing import TypedDict

import procstat

HERE = os.path.dirname(os.path.abspath(__file__))
DOMAIN = "example.com"
# W7's slow mailbox: a domain of its own, so its big messages land in a
# Maildir (and a new/ to fsync) apart from the small ones.
SLOW_DOMAIN = "slow.example.com"
MAX_MESSAGE = 128 * 1024 * 1024  # every server is set to take W4's 100 MiB


class ServerError(Exception):
    pass


class ServerOptions(TypedDict, total=False):
    """
    What the harness tells the servers beyond their port and directory;
    each server reads the keys it knows, with its own default.
    """

    postfix_main_extra: str
    postfix_smtpd_maxproc: int
    mailharbor_endpoint_extra: str
    mailharbor_workers: int
    mailharbor_limit_keys: list[str]
    mailharbor_toml: list[str]
    max_connections: int


def _die_with_parent() -> None:
    """
    preexec_fn: SIGTERM this child if the harness dies, so a killed harness
    leaves no server behind (prctl PR_SET_PDEATHSIG).
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)
    except OSError:
        pass


def free_port() -> int:
    """
    A free loopback port below the ephemeral range, so the load generator's
    own source ports never collide with it.
    """
    for _ in range(200):
        port = 20000 + int.from_bytes(os.urandom(2), "big") % 10000
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise ServerError("no free port")


def wait_for_banner(port: int, timeout: float, alive: Callable[[], bool] = lambda: True) -> None:
    """
    Connect until the server sends a 220 banner, then QUIT.
    """
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if not alive():
            raise ServerError("the server exited while starting")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                data = b""
                while b"\r\n" not in data:
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                if data.startswith(b"220"):
                    s.sendall(b"QUIT\r\n")
                    try:
                        s.recv(4096)
                    except OSError:
                        pass
                    return
                last = ServerError(f"unexpected banner {data[:100]!r}")
        except OSError as e:
            last = e
        time.sleep(0.05)
    raise ServerError(f"no banner on port {port} within {timeout}s: {last}")


class Server:
    """
    One server instance in its own directory.

    @ivar stores: Whether it stores messages as files (all but smtp-sink).
    @ivar queues: Whether files may appear after the 250 reply (Postfix).
    """

    name = "?"
    stores = True
    queues = False

    def __init__(self, workdir: str, port: int, venv: str, options: ServerOptions) -> None:
        self.workdir = workdir
        self.port = port
        self.venv = venv
        self.options = options
        self.maildir = os.path.join(workdir, "Maildir")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def new_dir(self) -> str:
        return self.new_dir_of(DOMAIN)

    def new_dir_of(self, domain: str) -> str:
        return os.path.join(self.maildir, domain, "new")

    def count(self, domain: str = DOMAIN) -> int:
        try:
            return sum(1 for e in os.scandir(self.new_dir_of(domain)) if not e.name.startswith("."))
        except FileNotFoundError:
            return 0

    def storage_dirs(self) -> list[str]:
        """
        The directories the server writes mail to (its Maildir; Postfix: its
        queue too), which must all be on the file system under test.
        """
        return [self.maildir]

    def root_pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def pids(self) -> list[int]:
        return procstat.tree(self.root_pid())

    def command(self) -> list[str]:
        raise NotImplementedError

    def prepare(self) -> None:
        os.makedirs(self.maildir, exist_ok=True)

    def start(self) -> None:
        self.prepare()
        # The child writes to its own copy of the descriptor; ours is not
        # needed once it runs.
        with open(os.path.join(self.workdir, "server.log"), "ab") as log:
            process = self.process = subprocess.Popen(
                self.command(),
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,  # noqa: PLW1509 -- PR_SET_PDEATHSIG is set in the child; no thread runs then
            )
        try:
            wait_for_banner(self.port, 60, lambda: process.poll() is None)
        except ServerError as e:
            raise ServerError(f"{self.name}: {e}\n{self.log_tail()}") from None

    # The file, in the server's work directory, whose end explains a failure.
    log_name = "server.log"

    def log_tail(self, lines: int = 15) -> str:
        try:
            with open(os.path.join(self.workdir, self.log_name), "rb") as f:
                return b"".join(f.readlines()[-lines:]).decode("utf-8", "replace")
        except OSError:
            return ""

    def stop(self) -> None:
        if self.process is None:
            return
        process, self.process = self.process, None
        pids = _identities(procstat.tree(process.pid))
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        _kill_leftovers(pids)


def _identities(pids: list[int]) -> list[tuple[int, int]]:
    return [i for i in map(procstat.identity, pids) if i is not None]


def _kill_leftovers(identities: list[tuple[int, int]]) -> None:
    """
    SIGKILL those of these processes (started by this server) still alive,
    by pid, checking the start time so a reused pid is never hit.
    """
    for pid, started in identities:
        if procstat.identity(pid) == (pid, started):
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


class MailHarbor(Server):
    name = "mailharbor"

    def prepare(self) -> None:
        super().prepare()
        # Limits the installed version knows (the tree evolves): raise the
        # message size for W4 and the connection cap for W5, nothing else.
        known = self.options.get("mailharbor_limit_keys", [])
        lines = []
        if "max_message_size" in known:
            lines.append(f"max_message_size = {MAX_MESSAGE}")
        if "max_connections" in known:
            lines.append(f"max_connections = {self.options.get('max_connections', 20000)}")
        workers = self.options.get("mailharbor_workers", 1)
        if workers > 1 and "workers" in known:
            lines.append(f"workers = {workers}")
        # A variant's own settings (--mailharbor-variant), last so they win.
        lines += self.options.get("mailharbor_toml", [])
        self.config = None
        if lines:
            self.config = os.path.join(self.workdir, "mailharbor.toml")
            with open(self.config, "w") as f:
                f.write("\n".join(lines) + "\n")

    def command(self) -> list[str]:
        cmd = [
            os.path.join(self.venv, "bin", "twistd"),
            "-n",
            "--pidfile=",
            "mailharbor",
            "--port", f"tcp:{self.port}:interface=127.0.0.1" + self.options.get("mailharbor_endpoint_extra", ""),
            "--domain", DOMAIN,
            "--domain", SLOW_DOMAIN,
            "--maildir", self.maildir,
            "--hostname", "mailharbor.bench.localdomain",
        ]
        if self.config:
            cmd += ["--config", self.config]
        return cmd


class Aiosmtpd(Server):
    name = "aiosmtpd"

    def command(self) -> list[str]:
        return [
            os.path.join(self.venv, "bin", "python"),
            os.path.join(HERE, "aiosmtpd_server.py"),
            "--port", str(self.port),
            "--maildir", self.maildir,
            "--domain", DOMAIN,
            "--domain", SLOW_DOMAIN,
            "--max-size", str(MAX_MESSAGE),
        ]


class SmtpSink(Server):
    name = "smtp-sink"
    stores = False

    def command(self) -> list[str]:
        return [
            find_postfix_tool("smtp-sink"),
            "-u", "nobody",
            "-h", "smtp-sink.bench.localdomain",
            "-m", str(self.options.get("max_connections", 20000)),
            "-t", "300",
            f"127.0.0.1:{self.port}",
            "100",
        ]


def find_postfix_tool(name: str) -> str:
    for candidate in (f"/usr/sbin/{name}", f"/usr/lib/postfix/{name}", f"/usr/lib/postfix/sbin/{name}"):
        if os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which(name)
    if found:
        return found
    raise ServerError(f"{name} not found (is Debian's postfix package installed?)")


_MASTER_CF = """\
# service type  private unpriv  chroot  wakeup  maxproc command
127.0.0.1:{port} inet n - n - {smtpd_maxproc} smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""

_MAIN_CF = """\
# A private Postfix instance for the MailHarbor benchmark.  Defaults
# everywhere except what a receive-only virtual-Maildir setup and W4/W5 need.
compatibility_level = 3.6
queue_directory = {queue}
data_directory = {data}
mail_owner = postfix
setgid_group = postdrop
myhostname = postfix.bench.localdomain
mydomain = bench.localdomain
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
alias_maps =
alias_database =
local_recipient_maps =
biff = no
maillog_file = {workdir}/maillog
virtual_mailbox_domains = {domain}, {slow_domain}
virtual_mailbox_base = {maildir}
virtual_mailbox_maps = texthash:{config}/vmailbox
virtual_uid_maps = static:{uid}
virtual_gid_maps = static:{gid}
message_size_limit = {max_message}
virtual_mailbox_limit = 0
mailbox_size_limit = 0
{extra}
"""


class Postfix(Server):
    """
    A private Postfix: postfix -c DIR/etc start, with main.cf and master.cf
    generated here.  The maildir belongs to nobody, the user virtual(8)
    delivers as.

    options["postfix_smtpd_maxproc"]: smtpd's process limit in master.cf
    ("-" = default_process_limit, 100).
    """

    log_name = "maillog"

    name = "postfix"
    queues = True

    def __init__(self, workdir: str, port: int, venv: str, options: ServerOptions) -> None:
        super().__init__(workdir, port, venv, options)
        self.config = os.path.join(workdir, "etc")
        self.master_pid: int | None = None

    def prepare(self) -> None:
        nobody = pwd.getpwnam("nobody")
        postfix = pwd.getpwnam("postfix")
        queue = os.path.join(self.workdir, "queue")
        data = os.path.join(self.workdir, "data")
        for d in (self.config, queue, data, self.maildir):
            os.makedirs(d, exist_ok=True)
        os.chown(data, postfix.pw_uid, postfix.pw_gid)
        os.chown(self.maildir, nobody.pw_uid, nobody.pw_gid)
        extra = self.options.get("postfix_main_extra", "")
        with open(os.path.join(self.config, "main.cf"), "w") as f:
            f.write(
                _MAIN_CF.format(
                    queue=queue,
                    data=data,
                    workdir=self.workdir,
                    domain=DOMAIN,
                    slow_domain=SLOW_DOMAIN,
                    maildir=self.maildir,
                    config=self.config,
                    uid=nobody.pw_uid,
                    gid=nobody.pw_gid,
                    max_message=MAX_MESSAGE,
                    extra=extra,
                )
            )
        with open(os.path.join(self.config, "master.cf"), "w") as f:
            f.write(
                _MASTER_CF.format(
                    port=self.port,
                    smtpd_maxproc=self.options.get("postfix_smtpd_maxproc", "-"),
                )
            )
        with open(os.path.join(self.config, "vmailbox"), "w") as f:
            # The trailing slash makes it a Maildir.
            f.write(f"@{DOMAIN} {DOMAIN}/\n@{SLOW_DOMAIN} {SLOW_DOMAIN}/\n")

    def storage_dirs(self) -> list[str]:
        return [self.maildir, os.path.join(self.workdir, "queue"), os.path.join(self.workdir, "data")]

    def start(self) -> None:
        self.prepare()
        result = subprocess.run(
            ["postfix", "-c", self.config, "start"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=60,
            check=False,
        )
        pidfile = os.path.join(self.workdir, "queue", "pid", "master.pid")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and self.master_pid is None:
            try:
                with open(pidfile) as f:
                    self.master_pid = int(f.read().split()[0])
            except (OSError, ValueError, IndexError):
                time.sleep(0.05)
        if result.returncode != 0 or self.master_pid is None:
            self.stop()
            raise ServerError(
                f"postfix start failed ({result.returncode}): "
                f"{result.stdout.decode('utf-8', 'replace')}\n{self.log_tail()}"
            )

        def alive() -> bool:
            return self.master_pid is not None and _alive(self.master_pid)

        try:
            wait_for_banner(self.port, 60, alive)
        except ServerError as e:
            self.stop()
            raise ServerError(f"postfix: {e}\n{self.log_tail()}") from None

    def root_pid(self) -> int:
        assert self.master_pid is not None
        return self.master_pid

    def stop(self) -> None:
        master, self.master_pid = self.master_pid, None
        pids = _identities(procstat.tree(master)) if master is not None else []
        subprocess.run(
            ["postfix", "-c", self.config, "stop"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=60,
            check=False,
        )
        deadline = time.monotonic() + 20
        while master is not None and _alive(master) and time.monotonic() < deadline:
            time.sleep(0.05)
        _kill_leftovers(pids)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rindex(b")") + 2 : stat.rindex(b")") + 3] != b"Z"


SERVERS = {cls.name: cls for cls in (MailHarbor, Aiosmtpd, Postfix, SmtpSink)}
