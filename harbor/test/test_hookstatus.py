"""
Tests for L{harbor.hooks.spool.HookSpool.statusOf}: what a message's hooks
made of it, as the web interface shows it.
"""

from __future__ import annotations

import json
import os

from twisted.trial.unittest import SynchronousTestCase

from harbor.hooks.events import Job, NewMessage, jobID
from harbor.hooks.spool import HookSpool, HookStatus

NOW = 1732314178.0
MESSAGE_ID = "1732314178.M123456P4242Q1.mx.example.com"


def event(identifier: str = MESSAGE_ID) -> NewMessage:
    """
    The event of one stored copy.
    """
    return NewMessage(
        sender="a@x.org",
        recipient="b@example.com",
        user=None,
        client="192.0.2.1",
        path=f"/nowhere/new/{identifier},S=1",
        id=identifier,
    )


def job(hook: str, identifier: str = MESSAGE_ID, attempts: int = 0, error: str | None = None) -> Job:
    """
    The job of hook C{hook} for the copy C{identifier}.
    """
    return Job(jobID(event(identifier), hook), hook, event(identifier), NOW, NOW + 60, attempts, error)


class StatusOfTests(SynchronousTestCase):
    """
    Tests for L{HookSpool.statusOf}.
    """

    def setUp(self) -> None:
        self.spool = HookSpool(os.path.abspath(self.mktemp()))
        self.spool.prepare()

    def test_pendingDeadDelivered(self) -> None:
        """
        A pending job has its attempts and next try, a dead one its error,
        and a configured hook with no job left delivered.
        """
        self.spool.add([job("archive", attempts=2, error="HTTP 500"), job("notify")])
        self.spool.bury(job("notify", attempts=8, error="exit status 1"))
        self.assertEqual(
            self.spool.statusOf(MESSAGE_ID, ["archive", "notify", "index"]),
            [
                HookStatus("archive", f"{MESSAGE_ID},archive", "pending", 2, NOW + 60, "HTTP 500"),
                HookStatus("notify", f"{MESSAGE_ID},notify", "dead", 8, None, "exit status 1"),
                HookStatus("index", f"{MESSAGE_ID},index", "delivered"),
            ],
        )

    def test_withoutHookNames(self) -> None:
        """
        Without the hooks' names, the message's jobs are found by listing,
        and those of other messages (even one whose id starts the same)
        are not.
        """
        self.spool.add([job("archive"), job("archive", MESSAGE_ID + "x"), job("notify", "1.M1")])
        self.spool.bury(job("zap", error="gone"))
        self.assertEqual(
            [(status.hook, status.state) for status in self.spool.statusOf(MESSAGE_ID)],
            [("archive", "pending"), ("zap", "dead")],
        )

    def test_onlyHooksNamed(self) -> None:
        """
        With the hooks named, only their jobs are looked up: not the job
        of a hook no longer configured, which would mean listing the spool.
        """
        self.spool.add([job("old")])
        self.assertEqual(
            [(s.hook, s.state) for s in self.spool.statusOf(MESSAGE_ID, ["new"])], [("new", "delivered")]
        )

    def test_claimDirectory(self) -> None:
        """
        A job moved to another directory of the spool while it runs (a
        claim) counts as pending.
        """
        claim = os.path.join(self.spool.directory, "claimed", "instance-1")
        os.makedirs(claim)
        with open(os.path.join(claim, f"{MESSAGE_ID},archive.json"), "w") as f:
            json.dump(job("archive", attempts=1).asJSON(), f)
        [status] = self.spool.statusOf(MESSAGE_ID, ["archive"])
        self.assertEqual((status.state, status.attempts), ("pending", 1))

    def test_unusableFileLeftAlone(self) -> None:
        """
        An unusable job file is neither shown nor set aside by looking.
        """
        path = self.spool.pendingPath(f"{MESSAGE_ID},archive")
        with open(path, "w") as f:
            f.write("not json")
        self.assertEqual(self.spool.statusOf(MESSAGE_ID), [])
        self.assertTrue(os.path.exists(path))

    def test_badMessageID(self) -> None:
        """
        An id that could not name a job file finds nothing.
        """
        self.spool.add([job("archive")])
        for identifier in ("", "../x", ".hidden", f"{MESSAGE_ID},archive", "a/b"):
            self.assertEqual(self.spool.statusOf(identifier, ["archive"]), [], identifier)

    def test_noSpool(self) -> None:
        """
        A spool that was never made has nothing pending: configured hooks
        are delivered.
        """
        spool = HookSpool(os.path.abspath(self.mktemp()))
        self.assertEqual(spool.statusOf(MESSAGE_ID), [])
        self.assertEqual([s.state for s in spool.statusOf(MESSAGE_ID, ["a"])], ["delivered"])
