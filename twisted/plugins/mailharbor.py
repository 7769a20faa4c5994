"""
The twistd dropin for MailHarbor: C{twistd mailharbor}.

Nothing but a lazy L{ServiceMaker}: importing L{harbor.tap} here would
import L{twisted.mail.smtp} and with it the global reactor, before twistd
has had the chance to install the one the user asked for.
"""

from twisted.application.service import ServiceMaker

mailharbor = ServiceMaker(
    "MailHarbor",
    "harbor.tap",
    "Receive-only SMTP server that delivers into Maildirs.",
    "mailharbor",
)
