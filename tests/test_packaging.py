"""
Tests of the installed distribution: the files the wheel put in
site-packages, the twistd plugin it provides and its console script.

These guard the packaging pitfalls a build can fall into silently: a
C{twisted/__init__.py} that would shadow Twisted itself, a dropin left out
because C{twisted/plugins} is not a package, and a generic top-level
C{tests} package shipped into site-packages.
"""

from __future__ import annotations

import importlib.metadata
import os
import sys

from zope.interface.verify import verifyObject

from twisted.application.service import IServiceMaker
from twisted.plugin import getPlugins
from twisted.trial.unittest import SynchronousTestCase

import harbor.tap


def installedDistribution() -> importlib.metadata.Distribution:
    """
    The installed C{mailharbor} distribution.

    Not simply C{importlib.metadata.files("mailharbor")}: run from the
    repository root, that finds the C{mailharbor.egg-info} a build leaves
    in the checkout first, whose file list is the source tree's.  Only an
    installed distribution has a C{RECORD}.
    """
    installed = {
        str(d.locate_file("")): d
        for d in importlib.metadata.distributions(name="mailharbor")
        if d.read_text("RECORD") is not None
    }
    assert len(installed) == 1, f"expected one installed mailharbor, found {sorted(installed)}"
    return next(iter(installed.values()))


def installedFiles() -> list[str]:
    files = installedDistribution().files
    assert files is not None, "mailharbor is installed without a RECORD"
    return [f.as_posix() for f in files]


class DistributionTests(SynchronousTestCase):
    """
    The files of the installed C{mailharbor} distribution.
    """

    def test_pluginInstalled(self) -> None:
        """
        The twistd dropin twisted/plugins/mailharbor.py is installed.
        """
        self.assertIn("twisted/plugins/mailharbor.py", installedFiles())

    def test_noTwistedPackageFiles(self) -> None:
        """
        The distribution installs neither twisted/__init__.py nor
        twisted/plugins/__init__.py, which would shadow Twisted's own.
        """
        files = installedFiles()
        self.assertNotIn("twisted/__init__.py", files)
        self.assertNotIn("twisted/plugins/__init__.py", files)
        self.assertEqual([f for f in files if f.startswith("twisted/") and f.endswith("__init__.py")], [])

    def test_noTopLevelTests(self) -> None:
        """
        The top-level tests package is not installed.
        """
        self.assertEqual([f for f in installedFiles() if f.split("/")[0] == "tests"], [])
        self.assertIn("harbor/tap.py", installedFiles())


class PluginTests(SynchronousTestCase):
    """
    The twistd plugin, as Twisted's plugin system finds it.
    """

    def test_pluginFound(self) -> None:
        """
        getPlugins(IServiceMaker) finds one mailharbor service maker, a
        valid IServiceMaker whose options are harbor.tap.Options.
        """
        makers = [p for p in getPlugins(IServiceMaker) if p.tapname == "mailharbor"]
        self.assertEqual(len(makers), 1)
        [maker] = makers
        self.assertTrue(verifyObject(IServiceMaker, maker))
        self.assertIs(maker.options, harbor.tap.Options)


class ConsoleScriptTests(SynchronousTestCase):
    """
    The console script the distribution declares.
    """

    def test_consoleScriptInstalled(self) -> None:
        """
        An executable mailharbor script is installed next to the Python
        running the tests, for the declared entry point.
        """
        script = os.path.join(os.path.dirname(sys.executable), "mailharbor")
        self.assertTrue(os.path.isfile(script), script)
        self.assertTrue(os.access(script, os.X_OK), script)
        [entryPoint] = installedDistribution().entry_points.select(group="console_scripts", name="mailharbor")
        self.assertEqual(entryPoint.value, "harbor.cli:main")
