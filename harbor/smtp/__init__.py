"""
The SMTP server: MailHarbor's side of the wire.

Without I/O, testable without a reactor (no Twisted imports):

 - L{harbor.smtp._session}: the SMTP conversation, bytes in, events and
   reply bytes out, as h11 is for HTTP; its events are in
   L{harbor.smtp._events};
 - L{harbor.smtp._framing}: command lines, DATA and BDAT bodies;
 - L{harbor.smtp._parse}: the arguments and ESMTP parameters of commands;
 - L{harbor.smtp._sasl}: the AUTH PLAIN and LOGIN exchanges;
 - L{harbor.smtp._replies}: the replies and how they are written.

On Twisted:

 - L{harbor.smtp._driver}: the session on a transport: input, events
   answered in order, flow control, timeouts;
 - L{harbor.smtp._protocol}: C{HarborESMTP}, which answers the events
   from L{harbor.delivery}, and does STARTTLS, admission and filters;
 - L{harbor.smtp._transaction}: a MAIL transaction's message streams,
   outcome and log line;
 - L{harbor.smtp._auth}: logins through L{twisted.cred};
 - L{harbor.smtp._factory}: the factory, listener settings and the
   registry of open connections that a shutdown drains;
 - L{harbor.smtp._proxy}: C{haproxy:} listeners, which read the PROXY
   header (L{harbor.proxyheader}) from trusted proxies before the session
   starts.
"""

__all__: list[str] = []
