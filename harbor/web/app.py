# -*- test-case-name: harbor.test.test_web_site -*-
"""
PLACEHOLDER for the APP piece of issue 14, so that the CORE branch's
service wiring can be tested: the lead takes APP's harbor/web/app.py over
this one on merge.

It serves nothing but what the guard lets through, as 404s.
"""

from __future__ import annotations

from twisted.web.resource import NoResource, Resource

from harbor.web.base import WebContext


def appResource(context: WebContext) -> Resource:
    """
    PLACEHOLDER: a tree with no pages (every path 404).
    """
    root = Resource()
    root.putChild(b"", NoResource())
    return root
