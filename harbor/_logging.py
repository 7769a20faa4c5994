# -*- test-case-name: harbor.test.test_service -*-
"""
Loggers whose namespace operators rely on.

A L{twisted.logger.Logger} on a class names its events after the module
that defines the class.  Operators filter MailHarbor's log by those names
(C{[harbor.smtp.HarborESMTP#info]}, C{[harbor.tap.HarborService#info]}), so
a class moved to another module keeps the name its events always had.
"""

from __future__ import annotations

from twisted.logger import Logger


class PublishedLogger(Logger):
    """
    A class's logger with a fixed namespace rather than the defining
    module's.
    """

    def __get__(self, instance: object, owner: type | None = None) -> Logger:
        # Read from the class, it is itself: so that saving and restoring
        # the attribute (as tests that patch it do) puts it back unchanged.
        if instance is None:
            return self
        return Logger(self.namespace, instance, observer=self.observer)
