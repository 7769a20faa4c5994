"""
MailHarbor embedded in your own Twisted program: every message received for
example.com is stored in ./Maildir and then handed to your function, and a
policy function decides who may receive.

Run it with:  python examples/embed.py [PORT]    (default 2525)
"""

import sys

from twisted.internet import reactor

from harbor.api import Config, NewMessage, PolicyRequest, Refuse, buildService


def received(message: NewMessage) -> None:
    """Called after each stored copy's 250 reply, at least once."""
    print(f"new mail for {message.recipient} from <{message.sender}>: {message.message['Subject']}", flush=True)


def policy(request: PolicyRequest) -> Refuse | None:
    """Asked at RCPT and before the 250; None takes the mail."""
    if request.stage == "rcpt" and request.recipients[0].split("@")[0].split("+")[0] == "noreply":
        return Refuse(550, "5.1.1", "This address does not receive mail")
    return None


port = sys.argv[1] if len(sys.argv) > 1 else "2525"
config = Config.fromMapping(
    {"port": [f"tcp:{port}:interface=127.0.0.1"], "domain": ["example.com"], "hostname": "localhost"}
)
service = buildService(config, hooks=[received], policy=policy)
service.privilegedStartService()
service.startService()
reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
reactor.run()
