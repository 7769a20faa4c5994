"""
The SMTP server: MailHarbor's side of the wire.

 - L{harbor.smtp._session}: the SMTP conversation without I/O, bytes in,
   events and reply bytes out (as h11 is for HTTP);
 - L{harbor.smtp._framing}: command lines, DATA and BDAT bodies;
 - L{harbor.smtp._replies}: the replies and how they are written;
 - L{harbor.smtp._protocol}: the Twisted protocol that feeds the session,
   answers its events from L{harbor.delivery} and L{twisted.cred}, and owns
   the timers, TLS and flow control;
 - L{harbor.smtp._factory}: the factory, listener settings and the registry
   of open sessions that a shutdown drains.
"""

__all__: list[str] = []
