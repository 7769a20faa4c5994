"""
Tests for C{mailharbor hooks}, which lists and retries the jobs in the
hook spool (L{harbor.cli.commands.hooksCommand}, L{harbor.hooks.spool}).

What the command imports is tested in a new interpreter, in the
top-level C{tests/test_hook_imports.py}.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
import time

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from attrs import evolve

from harbor.cli import main
from harbor.cli.parser import buildParser
from harbor.hooks.events import Job, jobID
from harbor.hooks.spool import HookSpool, spoolFor
from harbor.test._hooksupport import NOW, storeMessage


class SpoolTestCase(SynchronousTestCase):
    """
    A hook spool under a fresh Maildir root, with one pending job and one
    dead job.
    """

    def setUp(self) -> None:
        self.root = os.path.abspath(self.mktemp())
        self.spool = HookSpool(spoolFor(self.root))
        self.event = storeMessage(self)
        self.pendingJob = Job(jobID(self.event, "web"), "web", self.event, NOW, NOW + 60, 2, "HTTP 500")
        self.deadJob = Job(jobID(self.event, "cmd"), "cmd", self.event, NOW, NOW + 99, 8, "exited with status 1")
        self.spool.add([self.pendingJob])
        self.spool.add([self.deadJob])
        self.spool.bury(self.deadJob)


class CommandLineTests(SpoolTestCase):
    """
    Tests for C{mailharbor hooks}, run through L{harbor.cli.main}.
    """

    def invoke(self, *arguments: str) -> tuple[int, str, str]:
        """
        Run C{mailharbor hooks} with C{arguments}: its status and output.
        """
        out, err = io.StringIO(), io.StringIO()
        status = main(["hooks", *arguments], out, err)
        return status, out.getvalue(), err.getvalue()

    def test_listPending(self) -> None:
        """
        C{hooks list} shows each pending job with its hook, attempts and
        last error.
        """
        status, out, err = self.invoke("list", "--maildir", self.root)
        self.assertEqual((status, err), (0, ""))
        header, row = out.splitlines()
        self.assertEqual(header.split(), ["JOB", "HOOK", "ATTEMPTS", "NEXT", "RECIPIENT", "ERROR"])
        self.assertEqual(row.split()[:3], [self.pendingJob.id, "web", "2"])
        self.assertTrue(row.endswith("HTTP 500"))

    def test_listOnAnASCIITerminal(self) -> None:
        """
        A recipient the terminal's encoding cannot show is replaced, not a
        traceback.
        """
        event = evolve(self.event, recipient="jos\u00e9@example.com")
        self.spool.add([Job(jobID(event, "web2"), "web2", event, NOW, NOW + 60, 1, None)])
        out = io.TextIOWrapper(io.BytesIO(), encoding="ascii")
        err = io.StringIO()
        self.assertEqual(main(["hooks", "list", "--maildir", self.root], out, err), 0, err.getvalue())
        out.flush()
        self.assertIn(b"jos?@example.com", out.buffer.getvalue())

    def test_listDeadJSON(self) -> None:
        """
        C{hooks list --dead --json} gives the dead jobs as JSON.
        """
        status, out, _ = self.invoke("list", "--dead", "--json", "--spool", self.spool.directory)
        self.assertEqual(status, 0)
        self.assertEqual([Job.fromJSON(j) for j in json.loads(out)], [self.deadJob])

    def test_listReportsUnusableJobFile(self) -> None:
        """
        C{hooks list} names a job file it cannot read on standard error,
        exits 1, still lists the others, and leaves the file where it is
        for the server to set aside.
        """
        broken = self.spool.pendingPath("broken")
        with open(broken, "w") as f:
            f.write("{not json")
        status, out, err = self.invoke("list", "--maildir", self.root)
        self.assertEqual(status, 1)
        self.assertIn(self.pendingJob.id, out)
        self.assertTrue(err.startswith(f"mailharbor: {broken} is not a usable hook job ("), err)
        self.assertEqual((os.path.exists(broken), os.path.exists(broken + ".bad")), (True, False))

    def test_listEmpty(self) -> None:
        """
        An empty or missing spool is not an error.
        """
        status, out, _ = self.invoke("list", "--maildir", os.path.abspath(self.mktemp()))
        self.assertEqual(status, 0)
        self.assertIn("No pending hook jobs", out)

    def test_retryOne(self) -> None:
        """
        C{hooks retry JOB} moves a dead job back to pending, attempts reset
        and due now.
        """
        before = time.time()
        status, out, err = self.invoke("retry", self.deadJob.id, "--maildir", self.root)
        self.assertEqual((status, err), (0, ""))
        self.assertIn("Requeued 1 hook job", out)
        self.assertEqual(self.spool.deadJobs(), [])
        revived = next(job for job in self.spool.pendingJobs() if job.id == self.deadJob.id)
        self.assertEqual((revived.attempts, revived.error), (0, None))
        self.assertGreaterEqual(revived.due, before)

    def test_retryAsRootKeepsTheSpoolsOwner(self) -> None:
        """
        Root retrying a job in a spool that belongs to the server's user
        (twistd's C{--uid}) leaves a job file that user owns, and is root
        again afterwards.
        """
        if os.geteuid() != 0:
            raise SkipTest("only root can give the spool to another user")
        # Somewhere the server's user can reach, as it must its spool.
        parent = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, parent)
        os.chmod(parent, 0o755)
        root = os.path.join(parent, "Maildir")
        shutil.copytree(self.root, root)
        for directory, _, names in os.walk(root):
            os.chown(directory, 65534, 65534)
            for name in names:
                os.chown(os.path.join(directory, name), 65534, 65534)
        status, _out, err = self.invoke("retry", self.deadJob.id, "--maildir", root)
        self.assertEqual((status, err), (0, ""))
        info = os.stat(HookSpool(spoolFor(root)).pendingPath(self.deadJob.id))
        self.assertEqual((info.st_uid, info.st_gid), (65534, 65534))
        self.assertEqual((os.geteuid(), os.getegid()), (0, 0))

    def test_retryAll(self) -> None:
        """
        C{hooks retry --all} puts back every dead job.
        """
        self.assertEqual(self.invoke("retry", "--all", "--maildir", self.root)[0], 0)
        self.assertEqual(len(self.spool.pendingJobs()), 2)

    def test_retryUnknown(self) -> None:
        """
        Retrying a job that is not dead fails with status 1 and says why.
        """
        status, _, err = self.invoke("retry", "nope", self.pendingJob.id, "--maildir", self.root)
        self.assertEqual(status, 1)
        self.assertIn("nope is not a dead hook job", err)
        self.assertIn(f"{self.pendingJob.id} is pending, not dead", err)

    def test_usage(self) -> None:
        """
        retry needs jobs or --all, not both; bad usage is status 2.
        """
        self.assertEqual(self.invoke("retry", "--maildir", self.root)[0], 2)
        self.assertEqual(self.invoke("retry", "x", "--all")[0], 2)

    def test_wiredIntoAParser(self) -> None:
        """
        C{hooks} is part of C{mailharbor}'s parser, whose C{command} is
        then called as C{harbor.cli.main} calls it.
        """
        parser = buildParser()
        arguments = parser.parse_args(["hooks", "list", "--dead", "--maildir", self.root])
        out = io.StringIO()
        self.assertEqual(arguments.command(arguments, out, io.StringIO(), NOW), 0)
        self.assertIn(self.deadJob.id, out.getvalue())
        arguments = parser.parse_args(["hooks", "retry", "--all", "--maildir", self.root])
        self.assertEqual(arguments.command(arguments, io.StringIO(), io.StringIO(), NOW + 5), 0)
        self.assertEqual(sorted(job.due for job in self.spool.pendingJobs()), [NOW + 5, NOW + 60])

    def test_spoolFromConfig(self) -> None:
        """
        With C{--config} the spool is found under the file's C{maildir};
        an unreadable file is status 2.
        """
        config = os.path.abspath(self.mktemp())
        with open(config, "w") as f:
            f.write(f"maildir = {json.dumps(self.root)}\n")
        status, out, err = self.invoke("list", "--config", config)
        self.assertEqual(status, 0, err)
        self.assertIn(self.pendingJob.id, out)
        status, out, err = self.invoke("list", "--config", config + ".missing")
        self.assertEqual(status, 2)
        self.assertIn("config", err)

    def test_configuredSpoolFromConfig(self) -> None:
        """
        With C{--config} the spool is the file's C{hook_spool} when it sets
        one, whatever its C{maildir}; a C{hook_spool} that is not a path
        is status 2.
        """
        elsewhere = os.path.abspath(self.mktemp())
        spool = HookSpool(elsewhere)
        job = Job(jobID(self.event, "other"), "other", self.event, NOW, NOW, 0, None)
        spool.add([job])
        config = os.path.abspath(self.mktemp())
        with open(config, "w") as f:
            f.write(f"maildir = {json.dumps(self.root)}\nhook_spool = {json.dumps(elsewhere)}\n")
        status, out, err = self.invoke("list", "--config", config)
        self.assertEqual(status, 0, err)
        self.assertIn(job.id, out)
        self.assertNotIn(self.pendingJob.id, out)
        with open(config, "w") as f:
            f.write("hook_spool = 7\n")
        status, out, err = self.invoke("list", "--config", config)
        self.assertEqual(status, 2)
        self.assertIn("hook_spool", err)

    def test_claimedJobsListedAsPending(self) -> None:
        """
        A job an instance has claimed (being run) is listed as pending, and
        is pending, not dead, to C{hooks retry}.
        """
        claim = self.spool.claim(self.pendingJob.id, NOW + 60)
        self.assertIsNotNone(claim)
        self.assertEqual(os.listdir(os.path.join(self.spool.directory, "pending")), [])
        status, out, err = self.invoke("list", "--maildir", self.root)
        self.assertEqual((status, err), (0, ""))
        self.assertIn(self.pendingJob.id, out)
        status, _, err = self.invoke("retry", self.pendingJob.id, "--maildir", self.root)
        self.assertIn(f"{self.pendingJob.id} is pending, not dead", err)
        self.spool.releaseAll()
