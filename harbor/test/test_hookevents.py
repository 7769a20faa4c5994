"""
Tests for L{harbor.hooks.events}: the event a hook is given and the job
that carries it through the spool.
"""

from __future__ import annotations

import json
import os

from twisted.trial.unittest import SynchronousTestCase

from attrs import evolve

from harbor.hooks.events import (
    Job,
    MessageGone,
    NewMessage,
    PermanentHookFailure,
    jobID,
)
from harbor.test._hooksupport import MESSAGE, NOW, storeMessage


class NewMessageTests(SynchronousTestCase):
    """
    Tests for L{NewMessage} and L{Job}.
    """

    def test_messageParsedOnceOnFirstUse(self) -> None:
        """
        C{message} parses the stored file on first access, with the default
        policy (so headers are decoded), and then keeps the same object.
        """
        event = storeMessage(self)
        message = event.message
        self.assertEqual(message["Subject"], "Gr\u00fc\u00dfe")
        os.unlink(event.path)
        self.assertIs(event.message, message)

    def test_notParsedUntilAsked(self) -> None:
        """
        Making the value reads nothing: an event for a file that does not
        exist yet is fine until C{message} is asked for.
        """
        event = NewMessage("s@x.org", "a@example.com", None, "192.0.2.1", "/nonexistent/new/1,S=1", "1")
        self.assertEqual(event.recipient, "a@example.com")
        self.assertRaises(MessageGone, lambda: event.message)

    def test_locateFollowsMailReader(self) -> None:
        """
        When a mail reader has moved the file to C{cur/} and added flags,
        L{NewMessage.locate} and C{message} still find it.
        """
        event = storeMessage(self)
        maildir = os.path.dirname(os.path.dirname(event.path))
        moved = os.path.join(maildir, "cur", os.path.basename(event.path) + ":2,S")
        os.rename(event.path, moved)
        self.assertEqual(event.locate(), moved)
        self.assertEqual(event.read(), MESSAGE)

    def test_goneIsPermanent(self) -> None:
        """
        A deleted message raises L{MessageGone}, a permanent failure, so
        its jobs are not retried in vain.
        """
        event = storeMessage(self)
        os.unlink(event.path)
        error = self.assertRaises(MessageGone, event.read)
        self.assertIsInstance(error, PermanentHookFailure)

    def test_jobRoundTrip(self) -> None:
        """
        A job survives being written as JSON and read back, as it must to
        survive a restart.
        """
        event = storeMessage(self)
        job = Job(jobID(event, "h"), "h", event, created=NOW, due=NOW + 30, attempts=2, error="HTTP 500")
        self.assertEqual(Job.fromJSON(json.loads(json.dumps(job.asJSON()))), job)
        self.assertEqual(job.id, f"{event.id},h")

    def test_badJobRefused(self) -> None:
        """
        Job.fromJSON refuses what is not a job of a known version.
        """
        self.assertRaises(ValueError, Job.fromJSON, {"version": 99})
        self.assertRaises(ValueError, Job.fromJSON, [])

    def test_timesOutOfRangeRefused(self) -> None:
        """
        A hand-edited job whose times no clock can show (infinite, NaN,
        past the year 9999, negative) is refused like any unusable job,
        so listing it cannot crash.
        """
        event = storeMessage(self)
        good = Job(jobID(event, "h"), "h", event, created=NOW, due=NOW + 30, attempts=2, error=None).asJSON()
        for key, value in [("due", float("inf")), ("due", float("nan")), ("created", 1e20), ("due", -1)]:
            self.assertRaises(ValueError, Job.fromJSON, {**good, key: value})


class DeliveryIdTests(SynchronousTestCase):
    """
    Tests for L{NewMessage.deliveryId}, which a call of a hook carries.
    """

    def test_notCompared(self) -> None:
        """
        The delivery id says which call, not which copy: events that
        differ only in it are equal, and it is in the JSON form (as a
        webhook gets it) only when set, read back from it.
        """
        event = NewMessage("s@x", "r@y", None, "192.0.2.1", "/m/new/1", "1")
        called = evolve(event, deliveryId="1,web")
        self.assertEqual(called, event)
        self.assertNotIn("delivery_id", event.asJSON())
        self.assertEqual(called.asJSON()["delivery_id"], "1,web")
        self.assertEqual(NewMessage.fromJSON(called.asJSON()).deliveryId, "1,web")
        self.assertRaises(ValueError, NewMessage.fromJSON, {**called.asJSON(), "delivery_id": 3})
