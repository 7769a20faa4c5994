"""
The web interface: read the Maildirs in a browser, through pages, a JSON
API and live updates (issue 14).

  - L{harbor.web.render}: a stored message taken apart for the browser,
    its HTML made safe, and the HTTP headers that keep it so (pure).
  - L{harbor.web.sanitize}: HTML made safe with nh3 allow-lists (pure).
  - L{harbor.web.timeline}: the envelope and C{Received:} trace of a
    message as a timeline of hops (pure).
"""

__all__ = ["render", "sanitize", "timeline"]
