"""
MailHarbor: a receive-only SMTP server that stores mail for your own
domains in crash-safe Maildirs.

The data path reads top to bottom: L{harbor.smtp} speaks the wire protocol
and calls L{harbor.delivery}, which asks L{harbor.routing} who may receive
and streams accepted messages through L{harbor.store.writer} onto disk.
L{harbor.tap} builds the twistd service and L{harbor.cli} reads the store.
"""

__all__: list[str] = []
