"""
The web interface: read the Maildirs in a browser, through pages, a JSON
API and live updates (issue 14).

The data path of a request, top to bottom:

  - L{harbor.web.site}: the guard at the root: the Host check, the
    security headers, the body limit, sessions, Origin and CSRF checks,
    and its own URLs (login, logout, health, metrics); it sets the
    L{harbor.web.base.Viewer} of every request it lets through.
  - L{harbor.web.login} and L{harbor.web.sessions}: the login form and
    API over C{twisted.cred} and the users file, throttled; the sessions
    behind the cookie.
  - L{harbor.web.app}: the tree below the guard: L{harbor.web.pages}
    (the index), L{harbor.web.messages} (a message's page and views),
    L{harbor.web.api} (C{/api/v1}), L{harbor.web.events} (Server-Sent
    Events from a shared poll of the Maildirs), and C{static/}.
  - L{harbor.web.base} and L{harbor.web.common}: what they share: the
    viewer, the context that reads the Maildirs in a thread, JSON.
  - L{harbor.web.render}: a stored message taken apart for the browser,
    its HTML made safe, and the HTTP headers that keep it so (pure).
  - L{harbor.web.sanitize}: HTML made safe with nh3 allow-lists (pure).
  - L{harbor.web.timeline}: the envelope and C{Received:} trace of a
    message as a timeline of hops (pure).
"""

__all__ = ["render", "sanitize", "timeline"]
