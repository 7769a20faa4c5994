"""
End-to-end tests of what running L{harbor.cli} brings in: each runs the
command, or just imports it, in a new interpreter.

They were in L{harbor.test.test_cli}; they start real processes, so they
live here, out of the unit tests that ship in the wheel.
"""

from __future__ import annotations

import os
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

import harbor
from harbor.test.test_cli import HOST, NOW, messageBytes, messageID


class ImportTests(SynchronousTestCase):
    """
    Tests for what running L{harbor.cli} brings in.
    """

    def runPython(self, code: str, *arguments: str) -> subprocess.CompletedProcess[str]:
        """
        Run C{code} in a new interpreter that imports L{harbor} from this
        checkout; C{sys.argv[1]} is the checkout's directory.
        """
        parent = os.path.dirname(os.path.dirname(os.path.abspath(harbor.__file__)))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [parent, env.get("PYTHONPATH")]))
        return subprocess.run(
            [sys.executable, "-c", code, parent, *arguments],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )

    def test_noReactor(self) -> None:
        """
        Importing L{harbor.cli} imports neither the reactor nor
        L{twisted.mail.smtp}.
        """
        code = (
            "import harbor.cli, sys; "
            "assert harbor.cli.__file__.startswith(sys.argv[1]), harbor.cli.__file__; "
            "assert 'twisted.internet.reactor' not in sys.modules; "
            "assert 'twisted.mail.smtp' not in sys.modules"
        )

        result = self.runPython(code)

        self.assertEqual((result.returncode, result.stderr), (0, ""))

    def test_checkConfigNoReactor(self) -> None:
        """
        C{check-config}, which uses L{harbor.tap}, imports neither the
        reactor nor L{twisted.mail.smtp} either.
        """
        config = os.path.abspath(self.mktemp())
        with open(config, "w") as f:
            f.write(f'domain = ["example.com"]\nhostname = "{HOST}"\nmaildir = "/srv/Maildir"\n')
        code = (
            "import harbor.cli, io, sys; "
            "status = harbor.cli.main(['check-config', sys.argv[2]], stdout=io.StringIO()); "
            "assert status == 0, status; "
            "assert 'harbor.tap' in sys.modules; "
            "assert 'twisted.internet.reactor' not in sys.modules; "
            "assert 'twisted.mail.smtp' not in sys.modules"
        )

        result = self.runPython(code, config)

        self.assertEqual((result.returncode, result.stderr), (0, ""))

    def test_brokenPipe(self) -> None:
        """
        C{mailharbor list | head -1} ends quietly: no traceback, no
        C{BrokenPipeError} when the interpreter flushes at exit.
        """
        root = os.path.abspath(self.mktemp())
        for sub in ("tmp", "new", "cur"):
            os.makedirs(os.path.join(root, "example.com", sub))
        for count in range(1500):
            content = messageBytes(subject=b"x" * 60)
            filename = f"{messageID(NOW + count, count)},S={len(content)}"
            with open(os.path.join(root, "example.com", "new", filename), "wb") as f:
                f.write(content)
        parent = os.path.dirname(os.path.dirname(os.path.abspath(harbor.__file__)))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [parent, env.get("PYTHONPATH")]))

        process = subprocess.Popen(
            [sys.executable, "-m", "harbor.cli", "list", "--maildir", root],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert process.stdout is not None and process.stderr is not None
        heading = process.stdout.readline()
        process.stdout.close()
        status = process.wait(timeout=60)
        errors = process.stderr.read()
        process.stderr.close()

        self.assertTrue(heading.startswith(b"ID "), heading)
        self.assertEqual((status, errors), (1, b""))
