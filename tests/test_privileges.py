"""
A real C{twistd --uid nobody --gid nogroup mailharbor}, started as root as
an operator would on a fresh machine: the Maildir root does not exist yet,
and MailHarbor makes it for nobody before twistd drops privileges, or
refuses to start, saying which path nobody could not use and why.

These need root (CI runs as root) and are skipped otherwise.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import stat
import tempfile

from twisted.trial.unittest import SkipTest, TestCase

from harbor.auth import setPassword
from harbor.test._support import files
from harbor.test.certs import TestCA
from tests._e2e import (
    DOMAIN,
    LOOPBACK_PORT,
    inThread,
    runTwistd,
    sendOne,
    startTwistdServer,
)

MESSAGE = b"Subject: first\r\n\r\nThe first message on a fresh machine.\r\n"



class RunAsNobodyTests(TestCase):
    """
    C{twistd -n --uid nobody --gid nogroup mailharbor} started as root.
    """

    timeout = 120

    def setUp(self) -> None:
        if os.getuid() != 0:
            raise SkipTest("needs root to start twistd with --uid, as CI has")
        try:
            self.nobody = pwd.getpwnam("nobody")
        except KeyError:
            raise SkipTest("needs the user nobody") from None
        self.group = grp.getgrgid(self.nobody.pw_gid).gr_name
        # In /tmp, which nobody may search whatever the checkout's
        # permissions (trial's own temporary directories are private).
        self.top = tempfile.mkdtemp(prefix="mailharbor-uid-")
        self.addCleanup(shutil.rmtree, self.top, True)
        os.chmod(self.top, 0o755)

    def asNobody(self) -> list[str]:
        return ["--uid", "nobody", "--gid", self.group]

    async def refused(self, serviceArguments: list[str]) -> str:
        """
        Start twistd as root for nobody with C{serviceArguments}; it must
        exit non-zero without a traceback.

        @return: its output.
        """
        process = await runTwistd(
            self, ["--port", LOOPBACK_PORT, "--domain", DOMAIN, *serviceArguments], self.asNobody()
        )
        code = await process.wait()
        output = process.output.decode(errors="replace")
        self.assertNotEqual(code, 0, output)
        self.assertNotIn("Traceback", output)
        self.assertNotIn("listening on", output)
        return output

    async def test_makesMaildirRootForNobody(self) -> None:
        """
        A Maildir root that does not exist yet, in a directory only root may
        write, is made before the drop and given to nobody; the first
        message gets 250 and its file in new/ belongs to nobody.
        """
        root = os.path.join(self.top, "srv", "mail")
        process, port = await startTwistdServer(self, root, self.asNobody())
        self.assertEqual(await inThread(sendOne, port, f"alice@{DOMAIN}", MESSAGE), {}, process.output)
        [name] = files(root, DOMAIN, "new")
        for path in (root, os.path.join(root, DOMAIN), os.path.join(root, DOMAIN, "new", name)):
            result = os.stat(path)
            self.assertEqual((result.st_uid, result.st_gid), (self.nobody.pw_uid, self.nobody.pw_gid), path)
        parent = os.stat(os.path.join(self.top, "srv"))
        self.assertEqual((parent.st_uid, stat.S_IMODE(parent.st_mode)), (0, 0o755))
        self.assertIn(f"Prepared {root} for nobody, who MailHarbor runs as: created {self.top}/srv, {root},".encode(), process.output)
        await process.stop()

    async def test_refusedUnderPrivateParent(self) -> None:
        """
        A Maildir root under a directory only root may search is refused
        at start, naming the option, the directory, the user and the
        missing permission; nothing is made.
        """
        private = os.path.join(self.top, "private")
        os.mkdir(private, 0o700)
        root = os.path.join(private, "srv", "mail")
        output = await self.refused(["--maildir", root])
        self.assertIn(
            f"--maildir: nobody (uid {self.nobody.pw_uid}, gid {self.nobody.pw_gid}) could not reach {root}: "
            f"no search (x) permission on {private} (owner root:root, mode 0700)",
            output,
        )
        self.assertEqual(os.listdir(private), [])

    async def test_refusedExistingRootOfRoot(self) -> None:
        """
        An existing Maildir root owned by root that nobody may not write is
        refused, and not taken over.
        """
        root = os.path.join(self.top, "mail")
        os.mkdir(root, 0o755)
        output = await self.refused(["--maildir", root])
        self.assertIn(f"could not use {root} (owner root:root, mode 0755): no write (w) permission", output)
        self.assertEqual((os.stat(root).st_uid, os.listdir(root)), (0, []))

    async def test_refusedUnreadableUsersFile(self) -> None:
        """
        A users file only root may read is refused at start, naming
        --users-file, the file, the user and read permission.
        """
        users = os.path.join(self.top, "users")
        setPassword(users, "alice", "secret")
        output = await self.refused(["--maildir", os.path.join(self.top, "mail"), "--users-file", users])
        self.assertIn(
            f"--users-file: nobody (uid {self.nobody.pw_uid}, gid {self.nobody.pw_gid}) could not read {users} "
            "(owner root:root, mode 0600): no read (r) permission",
            output,
        )

    async def test_refusedUnreadableTLSKey(self) -> None:
        """
        A TLS key only root may read is refused at start, naming --tls-key.
        """
        certificate, key = TestCA(os.path.join(self.top, "ca")).issue()
        os.chmod(os.path.dirname(certificate), 0o755)
        os.chmod(certificate, 0o644)
        os.chmod(key, 0o600)
        output = await self.refused(
            ["--maildir", os.path.join(self.top, "mail"), "--tls-cert", certificate, "--tls-key", key]
        )
        self.assertIn(f"--tls-key: nobody (uid {self.nobody.pw_uid}", output)
        self.assertIn(f"could not read {key} (owner root:root, mode 0600): no read (r) permission", output)
