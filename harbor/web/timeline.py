# -*- test-case-name: harbor.test.test_timeline -*-
"""
The envelope and the C{Received:} trace of a message, as a timeline.

Each relay that handles a message adds a C{Received:} header on top, so
read from the bottom they tell where it came from, through which hosts,
over what protocol and TLS, and how long each hop took.  The C{for}
clauses and C{Delivered-To} show whom it was delivered for, which no
C{To:} or C{Cc:} has to admit (a BCC), and the first hop shows the
address it really came from, which no C{From:} has to tell.

The headers' format (RFC 5321 section 4.4) is loose and each server
writes its own comments; this reads the common forms: Postfix, Exim,
Sendmail, Google, Microsoft, qmail and MailHarbor's own
(L{harbor.delivery.HarborDelivery.traceHeaders}).  Every header is from
whoever wrote it, so nothing here is trusted or raises: a part that cannot
be read is L{None}.

Pure: no Twisted, no I/O.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Any

from attrs import evolve, frozen

# The most Received headers read; a message with more is looping or
# built to make us work.
MAX_HOPS = 100
# A header longer than this is cut before it is read.
_MAX_HEADER = 4096
_KEYWORDS = frozenset({"from", "by", "via", "with", "id", "for"})


@frozen
class Hop:
    """
    One relay of a message: one C{Received:} header.

    @ivar byHost: The host that received it (C{by}), or L{None}.
    @ivar fromHost: The name the sending host gave (C{from}: its HELO, or
        the name its address resolves to), or L{None}.
    @ivar fromIP: The sending host's address (IPv4 or IPv6), or L{None}.
    @ivar protocol: The C{with} clause: C{ESMTPS}, C{SMTP}, C{esmtpsa},
        C{Microsoft SMTP Server}..., or L{None}.
    @ivar tlsVersion: The TLS protocol, as C{TLSv1.3}, or L{None} when the
        header names none (which does not prove there was none).
    @ivar cipher: The TLS cipher, or L{None}.
    @ivar time: When it was received, in seconds since the epoch, or
        L{None} when the date is missing or unreadable.
    @ivar delay: Seconds since the hop before, or L{None} for the first hop
        and when either date is unknown.  Kept as is when negative: that
        says a clock is wrong (or a header forged), which the reader
        should see rather than a made-up zero.
    @ivar forAddress: The recipient the hop names (C{for}), or L{None}.
    @ivar id: The queue or message id the receiving host gave, or L{None}.
    @ivar raw: The header as it was, on one line.
    """

    byHost: str | None
    fromHost: str | None
    fromIP: str | None
    protocol: str | None
    tlsVersion: str | None
    cipher: str | None
    time: float | None
    delay: float | None
    forAddress: str | None = None
    id: str | None = None
    raw: str = ""

    def asJSON(self) -> dict[str, Any]:
        """
        Describe this hop with plain JSON values, for the API.

        @return: A mapping of the attributes by their names; C{time} and
            C{delay} in seconds.
        """
        return {
            "byHost": self.byHost,
            "fromHost": self.fromHost,
            "fromIP": self.fromIP,
            "protocol": self.protocol,
            "tlsVersion": self.tlsVersion,
            "cipher": self.cipher,
            "time": self.time,
            "delay": self.delay,
            "forAddress": self.forAddress,
            "id": self.id,
            "raw": self.raw,
        }


@frozen
class Timeline:
    """
    A message's envelope and its trace.

    @ivar returnPath: The topmost C{Return-Path}, the envelope sender as
        our server saw it, as written (C{<>} for a bounce), or L{None}.
    @ivar deliveredTo: The topmost C{Delivered-To}, the recipient it was
        delivered for, or L{None}.
    @ivar hops: Its hops, oldest first.
    @ivar deliveredToAll: Every C{Delivered-To}, topmost first: more than
        one shows the message was forwarded.
    """

    returnPath: str | None
    deliveredTo: str | None
    hops: tuple[Hop, ...]
    deliveredToAll: tuple[str, ...] = ()

    def asJSON(self) -> dict[str, Any]:
        """
        Describe this timeline with plain JSON values, for the API.

        @return: A mapping with C{returnPath}, C{deliveredTo},
            C{deliveredToAll} and C{hops} (oldest first).
        """
        return {
            "returnPath": self.returnPath,
            "deliveredTo": self.deliveredTo,
            "deliveredToAll": list(self.deliveredToAll),
            "hops": [hop.asJSON() for hop in self.hops],
        }


def timelineOf(headers: Sequence[tuple[str, str]]) -> Timeline:
    """
    Read the envelope and the trace of a message from its headers.

    @param headers: The message's headers in order, decoded, as
        L{harbor.web.render.MessageView.headers}.
    @return: Its timeline.
    """
    returnPath: str | None = None
    delivered: list[str] = []
    received: list[str] = []
    for name, value in headers:
        lowered = name.lower()
        if lowered == "return-path" and returnPath is None:
            returnPath = value.strip()
        elif lowered == "delivered-to":
            delivered.append(value.strip())
        elif lowered == "received" and len(received) < MAX_HOPS:
            received.append(value)
    hops = []
    previous: float | None = None
    for value in reversed(received):
        hop = parseReceived(value)
        delay = None if hop.time is None or previous is None else hop.time - previous
        hops.append(evolve(hop, delay=delay))
        previous = hop.time
    return Timeline(
        returnPath=returnPath,
        deliveredTo=delivered[0] if delivered else None,
        hops=tuple(hops),
        deliveredToAll=tuple(delivered),
    )


def parseReceived(value: str) -> Hop:
    """
    Read one C{Received:} header.

    @param value: Its value, unfolded.
    @return: The hop it describes, without a delay.
    """
    raw = " ".join(value.split())
    text = raw[:_MAX_HEADER]
    clauses, date = text, None
    semicolon = text.rfind(";")
    if semicolon >= 0:
        clauses, date = text[:semicolon], text[semicolon + 1 :]
    found = _clauses(clauses)
    fromText = found.get("from")
    tlsVersion, cipher = _tls(clauses)
    return Hop(
        byHost=_firstWord(found.get("by")),
        fromHost=_sender(fromText),
        fromIP=None if fromText is None else _address(fromText),
        protocol=_protocol(found.get("with")),
        tlsVersion=tlsVersion,
        cipher=cipher,
        time=_time(date),
        delay=None,
        forAddress=_recipient(found.get("for")),
        id=_firstWord(found.get("id")),
        raw=raw,
    )


def _clauses(text: str) -> dict[str, str]:
    # Split the header into its clauses (from, by, via, with, id, for),
    # each with the words and comments that follow it up to the next
    # clause.  Comments nest, and a keyword inside one (Postfix's "using
    # TLSv1.3 with cipher") is not a clause.
    found: dict[str, str] = {}
    current: str | None = None
    for token in _tokens(text):
        if not token.startswith("(") and token.lower() in _KEYWORDS:
            current = token.lower()
            if current in found:
                # A second "from" or "by" (some servers repeat "id"):
                # the first one stands.
                current = None
            else:
                found[current] = ""
        elif current is not None:
            found[current] = (found[current] + " " + token).strip()
    return found


def _tokens(text: str) -> list[str]:
    # Words and (nested) comments, in order; an unclosed comment runs to
    # the end.
    tokens = []
    index = 0
    while index < len(text):
        character = text[index]
        if character.isspace():
            index += 1
        elif character == "(":
            depth, start = 0, index
            while index < len(text):
                if text[index] == "(":
                    depth += 1
                elif text[index] == ")":
                    depth -= 1
                    if depth == 0:
                        break
                index += 1
            tokens.append(text[start : index + 1])
            index += 1
        else:
            start = index
            while index < len(text) and not text[index].isspace() and text[index] != "(":
                index += 1
            tokens.append(text[start:index])
    return tokens


def _firstWord(clause: str | None) -> str | None:
    if not clause:
        return None
    word = clause.split()[0]
    return None if word.startswith("(") else word.rstrip(".").rstrip(",") or None


def _protocol(clause: str | None) -> str | None:
    # The words of the "with" clause before its first comment: "ESMTPS",
    # "Microsoft SMTP Server", and Exim's "esmtps" without the "tls
    # CIPHER" it writes after its "(TLS1.3)".
    if not clause:
        return None
    words = []
    for token in _tokens(clause):
        if token.startswith("("):
            break
        words.append(token)
    return " ".join(words) or None


def _sender(clause: str | None) -> str | None:
    # The name after "from"; for a bare address literal, the HELO name
    # the comment gives (Exim's "helo=x", qmail's "HELO x").
    word = _firstWord(clause)
    if clause is not None and (word is None or word.startswith("[") or word == "unknown"):
        helo = re.search(r"\bhelo[= ]([^\s()\[\]]+)", clause, re.IGNORECASE)
        if helo is not None:
            return helo.group(1).rstrip(".")
    return word


_BRACKETED = re.compile(r"\[(?:IPv6:)?([0-9A-Fa-f:.]+)\]", re.IGNORECASE)
_BARE = re.compile(r"(?<![\w.:-])((?:\d{1,3}\.){3}\d{1,3}|[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7})(?![\w.:-])")


def _address(clause: str) -> str | None:
    # The sending host's address: the bracketed one ("[192.0.2.1]",
    # "[IPv6:2001:db8::1]") that Postfix, Exim, Sendmail, Google and we
    # write, else a bare one in a comment (Microsoft's "(2603:10b6::30)",
    # qmail's "(192.0.2.1)").
    for pattern in (_BRACKETED, _BARE):
        for match in pattern.finditer(clause):
            try:
                return str(ipaddress.ip_address(match.group(1)))
            except ValueError:
                continue
    return None


def _recipient(clause: str | None) -> str | None:
    # "for <alice@example.com>" or "for alice@example.com"
    word = _firstWord(clause)
    if word is None:
        return None
    return word.strip("<>;") or None


# Postfix and MailHarbor: "(using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384
# (256/256 bits))".
_USING = re.compile(r"using\s+((?:TLS|SSL)v?[\d.]+)\s+with\s+cipher\s+([\w-]+)", re.IGNORECASE)
# Microsoft, Google and Sendmail: "version=TLS1_2, cipher=TLS_ECDHE_..." and
# "version=TLSv1.3 cipher=TLS_AES_256_GCM_SHA384 bits=256".
_VERSION = re.compile(r"version=((?:TLS|SSL)v?[\d._]+)", re.IGNORECASE)
_CIPHER = re.compile(r"cipher=([\w-]+)", re.IGNORECASE)
# Exim 4.9x: "with esmtps (TLS1.3) tls TLS_AES_256_GCM_SHA384"; older Exim:
# "with esmtps (TLS1.2:ECDHE-RSA-AES256-GCM-SHA384:256)".
_EXIM = re.compile(r"\(((?:TLS|SSL)v?[\d._]+)\)\s+tls\s+([\w-]+)", re.IGNORECASE)
_EXIM_OLD = re.compile(r"\(((?:TLS|SSL)v?[\d._]+):([\w-]+)(?::\d+)?\)", re.IGNORECASE)


def _tls(text: str) -> tuple[str | None, str | None]:
    for pattern in (_USING, _EXIM, _EXIM_OLD):
        match = pattern.search(text)
        if match is not None:
            return _version(match.group(1)), match.group(2)
    version = _VERSION.search(text)
    cipher = _CIPHER.search(text)
    return (
        None if version is None else _version(version.group(1)),
        None if cipher is None else cipher.group(1),
    )


def _version(name: str) -> str:
    # "TLS1_2", "TLS1.2", "TLSv1.2" all become "TLSv1.2".
    match = re.fullmatch(r"(TLS|SSL)v?(\d+)(?:[._](\d+))?", name, re.IGNORECASE)
    if match is None:
        return name
    family, major, minor = match.groups()
    return f"{family.upper()}v{major}" + (f".{minor}" if minor is not None else "")


def _time(date: str | None) -> float | None:
    if date is None or not date.strip():
        return None
    try:
        when = parsedate_to_datetime(date.strip())
        if when.tzinfo is None:
            # "-0000": the time is UTC, its zone unknown (RFC 5322 3.3).
            when = when.replace(tzinfo=UTC)
        return when.timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
