"""
Tests that the twistd plugin is installed and points at L{harbor.tap}.
"""

from typing import cast

from zope.interface.verify import verifyObject

from twisted.application.service import IServiceMaker, ServiceMaker
from twisted.plugin import IPlugin, getPlugins
from twisted.trial.unittest import SynchronousTestCase

import harbor.tap


class PluginTests(SynchronousTestCase):
    """
    Tests for the C{mailharbor} dropin.
    """

    def test_discoverable(self) -> None:
        """
        twistd finds exactly one mailharbor plugin, a valid service maker
        whose options and service come from harbor.tap.
        """
        makers = [m for m in getPlugins(IServiceMaker) if m.tapname == "mailharbor"]
        self.assertEqual(len(makers), 1)
        [maker] = makers
        self.assertTrue(verifyObject(IServiceMaker, maker))
        self.assertTrue(IPlugin.providedBy(maker))
        self.assertIs(maker.options, harbor.tap.Options)
        # The module is not part of IServiceMaker, only of the dropin's class.
        self.assertEqual(cast(ServiceMaker, maker).module, "harbor.tap")
