# -*- test-case-name: harbor.test.test_health -*-
"""
Health checks for a load balancer or an orchestrator: C{/healthz} (the
process is alive) and C{/readyz} (it accepts mail now), and the small web
site that serves them with C{/metrics} on the C{metrics} listener.

Readiness is what a balancer needs for a rolling restart: C{/readyz}
fails (503) before the SMTP ports listen and from the moment a drain
begins, so the balancer sends new sessions elsewhere while the ones
already here finish (L{harbor.drain}).  Health checks come every second or
two from every balancer, so they are not logged.
"""

from __future__ import annotations

import enum

from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import Request, Site


class State(enum.Enum):
    """
    Where a MailHarbor process is in its life.
    """

    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"
    STOPPING = "stopping"


class Readiness:
    """
    Whether this process accepts mail: the state C{/readyz} reports.
    """

    def __init__(self) -> None:
        self.state = State.STARTING

    @property
    def ready(self) -> bool:
        """
        Whether new SMTP sessions are welcome here.
        """
        return self.state is State.READY

    def listening(self) -> None:
        """
        The SMTP ports listen: ready, unless a drain or a stop has begun.
        """
        if self.state is State.STARTING:
            self.state = State.READY

    def draining(self) -> None:
        """
        A drain has begun: no longer ready, for good.
        """
        if self.state is not State.STOPPING:
            self.state = State.DRAINING

    def stopping(self) -> None:
        """
        The service is stopping.
        """
        self.state = State.STOPPING


def plainText(request: Request, code: int, text: str) -> bytes:
    """
    Answer C{request} with one line of text and C{code}, never cached: what
    a balancer reads, and what the web interface says where it has no page
    to show (a refused host, a body too big, a page that failed).
    """
    request.setResponseCode(code)
    request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
    request.setHeader(b"Cache-Control", b"no-store")
    return (text + "\n").encode("utf-8")


class HealthResource(Resource):
    """
    C{/healthz}: 200 while the process runs and answers.
    """

    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        return plainText(request, 200, "ok")

    render_HEAD = render_GET


class ReadyResource(Resource):
    """
    C{/readyz}: 200 while accepting mail, 503 before the SMTP ports listen
    and while draining or stopping; the body names the state.
    """

    isLeaf = True

    def __init__(self, readiness: Readiness) -> None:
        super().__init__()
        self._readiness = readiness

    def render_GET(self, request: Request) -> bytes:
        state = self._readiness.state
        return plainText(request, 200 if state is State.READY else 503, state.value)

    render_HEAD = render_GET


class QuietSite(Site):
    """
    A L{Site} that logs no requests: a balancer's health check every
    second would drown the mail log.
    """

    noisy = False

    def log(self, request: http.Request) -> None:
        """
        Log nothing per request.
        """


def operationsSite(readiness: Readiness, metrics: Resource | None = None) -> Site:
    """
    The site of the C{metrics} listener: C{/healthz}, C{/readyz} and, if
    given, C{/metrics}; no authentication (bind it where only the scraper
    and the balancer reach).
    """
    root = Resource()
    root.putChild(b"healthz", HealthResource())
    root.putChild(b"readyz", ReadyResource(readiness))
    if metrics is not None:
        root.putChild(b"metrics", metrics)
    return QuietSite(root)
