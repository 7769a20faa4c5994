"""
Tests that the README says what the code does, where the code holds the
text: the search words of the web interface.
"""

import os

from twisted.trial.unittest import SynchronousTestCase

from harbor.store.search import SYNTAX

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.rst")


class SearchingSectionTests(SynchronousTestCase):
    """
    Tests for the README's "Searching" section.
    """

    def test_syntaxAsDocumented(self) -> None:
        """
        The section holds L{harbor.store.search.SYNTAX} word for word, so
        that the README and the interface's own help agree.
        """
        with open(README, encoding="utf-8") as f:
            text = f.read()
        start = text.index("\nSearching\n~~~~~~~~~\n")
        end = text.index("\n~~~", start + 25)
        self.assertIn(SYNTAX, text[start:end])
