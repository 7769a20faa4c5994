"""
End-to-end tests of what C{mailharbor hooks} and the light modules of
L{harbor.hooks} bring in: each imports them in a new interpreter.

They were in L{harbor.test.test_hooks}; they start real processes, so
they live here, out of the unit tests that ship in the wheel.
"""

from __future__ import annotations

import os
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

from harbor.test.test_hookcli import SpoolTestCase


class CommandLineTests(SpoolTestCase):
    """
    Tests for what C{mailharbor hooks} imports.
    """

    def test_noReactor(self) -> None:
        """
        The command imports no reactor (nor twisted.web), so it starts
        quickly and cannot disturb a server's.
        """
        script = (
            "import sys\n"
            "from harbor.cli import main\n"
            f"status = main(['hooks', 'list', '--spool', {self.spool.directory!r}])\n"
            "assert 'twisted.internet.reactor' not in sys.modules, 'reactor'\n"
            "assert 'twisted.web.client' not in sys.modules, 'web'\n"
            "sys.exit(status)\n"
        )
        environment = dict(os.environ)
        environment["PYTHONPATH"] = os.pathsep.join(sys.path)
        result = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, env=environment, timeout=60, check=False
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn(self.pendingJob.id.encode("ascii"), result.stdout)


class PackageTests(SynchronousTestCase):
    """
    Tests for what importing the light modules of L{harbor.hooks} costs.
    """

    def test_lightModulesImportNoTwisted(self) -> None:
        """
        Importing C{harbor.hooks}, L{harbor.hooks.config} and
        L{harbor.hooks.loading} imports no Twisted module, so that
        L{harbor.config} and L{harbor.policyhook} can import them at
        their top.
        """
        script = (
            "import sys\n"
            "import harbor.hooks, harbor.hooks.config, harbor.hooks.loading\n"
            "found = sorted(m for m in sys.modules if m.split('.')[0] == 'twisted')\n"
            "assert not found, found\n"
        )
        environment = dict(os.environ)
        environment["PYTHONPATH"] = os.pathsep.join(sys.path)
        result = subprocess.run(
            [sys.executable, "-c", script],
            capture_output=True,
            env=environment,
            timeout=60,
            check=False,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
