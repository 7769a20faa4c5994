# -*- test-case-name: harbor.test.test_cli -*-
"""
How C{mailharbor} shows things: the tables, summaries and configuration
listings it prints, the small column, size and time helpers they share,
and the one way every command writes text.

Everything here turns values into text and does no I/O of its own except
L{writeText}, which only writes to the stream it is given; keeping the
layout apart from the commands lets the commands read as what they do.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import IO, Any

import attrs

from harbor.store.headers import cleanText
from harbor.store.mime import MessageDetails
from harbor.store.reader import MailboxStats, MessageSummary

__all__ = [
    "SUBJECT_WIDTH",
    "alignColumns",
    "detailsJSON",
    "formatConfig",
    "formatDetails",
    "formatStats",
    "formatTable",
    "humanSize",
    "localTime",
    "plainValue",
    "plural",
    "relativePath",
    "totalStats",
    "writeText",
]

SUBJECT_WIDTH = 60
_WRITE_CHUNK = 16 * 1024


def formatTable(summaries: Sequence[MessageSummary]) -> str:
    """
    Lay summaries out in aligned columns under a heading.

    @param summaries: The messages, in the order to show them.
    @return: The lines, each ending in a newline.
    """
    rows = [("ID", "DATE", "FROM", "TO", "SUBJECT", "SIZE")]
    for summary in summaries:
        if summary.sender is None:
            sender = "-"
        else:
            sender = cleanText(summary.sender) or "<>"
        rows.append(
            (
                cleanText(summary.id),
                localTime(summary.delivered),
                sender,
                cleanText(summary.recipient or "") or "-",
                _truncate(summary.subject, SUBJECT_WIDTH),
                str(summary.size),
            )
        )
    return alignColumns(rows, rightAligned={len(rows[0]) - 1})


def formatDetails(summary: MessageSummary, details: MessageDetails) -> str:
    """
    Lay out a message's summary for C{show --summary}: its headers, its
    text and its attachments.

    @param summary: The message as C{list} describes it.
    @param details: What it is made of.
    @return: The lines, each ending in a newline.
    """
    lines = [f"Id: {cleanText(summary.id)}", f"Mailbox: {cleanText(summary.mailbox)}"]
    lines.append(f"Delivered: {localTime(summary.delivered)}")
    lines.extend(f"{name}: {value}" for name, value in details.headers)
    lines.append("")
    if details.text is None:
        lines.append("(no text part)")
    else:
        if details.textType == "text/html":
            lines.append("(converted from HTML)")
        lines.append(details.text.rstrip("\n"))
    lines.append("")
    if details.attachments:
        lines.append(f"Attachments ({len(details.attachments)}):")
        rows = [
            (
                f"  {index}.",
                attachment.filename or "(no name)",
                attachment.contentType,
                f"{attachment.size} bytes",
            )
            for index, attachment in enumerate(details.attachments, 1)
        ]
        lines.append(alignColumns(rows, rightAligned={3}).rstrip("\n"))
    else:
        lines.append("No attachments.")
    if details.truncated:
        lines.append(
            "(Only part of this message's MIME structure was read: it has too many parts "
            "or is nested too deeply.)"
        )
    return "\n".join(lines) + "\n"


def detailsJSON(summary: MessageSummary, details: MessageDetails) -> dict[str, Any]:
    """
    Describe a message for C{show --summary --json}: what C{list --json}
    says of it, and its headers, text and attachments.

    @param summary: The message as C{list} describes it.
    @param details: What it is made of.
    @return: A mapping of plain JSON values.
    """
    description = summary.asJSON()
    description.update(
        headers=[[name, value] for name, value in details.headers],
        text=details.text,
        textType=details.textType,
        attachments=[
            {"filename": a.filename, "contentType": a.contentType, "size": a.size}
            for a in details.attachments
        ],
        truncated=details.truncated,
    )
    return description


def formatStats(stats: Sequence[MailboxStats]) -> str:
    """
    Lay out C{mailharbor stats}: one line per mailbox and a total.

    @param stats: The mailboxes, in the order to show them.
    @return: The lines, each ending in a newline.
    """
    rows = [("MAILBOX", "MESSAGES", "NEW", "CUR", "SIZE")]
    for entry in [*stats, totalStats(stats)]:
        rows.append(
            (
                cleanText(entry.mailbox),
                str(entry.messages),
                str(entry.new),
                str(entry.cur),
                humanSize(entry.size),
            )
        )
    return alignColumns(rows, rightAligned={1, 2, 3, 4})


def totalStats(stats: Sequence[MailboxStats]) -> MailboxStats:
    """
    Add up mailboxes' counts, for the C{TOTAL} line of C{stats}.

    @param stats: The mailboxes.
    @return: Their sums, as a mailbox named C{TOTAL}.
    """
    return MailboxStats(
        mailbox="TOTAL",
        new=sum(s.new for s in stats),
        cur=sum(s.cur for s in stats),
        size=sum(s.size for s in stats),
    )


def formatConfig(value: Any) -> str:
    """
    Describe a configuration (any attrs instance) in readable text, one
    field a line, nested values indented under their field.

    Fields are found with L{attrs.fields}, so settings added to
    L{harbor.config.Config} later are shown without changes here.

    @param value: The configuration.
    @return: The lines, each ending in a newline.
    """
    return "".join(line + "\n" for line in _textLines(plainValue(value), 0))


def plainValue(value: Any) -> Any:
    """
    Turn a value made of attrs instances and collections into plain JSON
    values.

    @param value: An attrs instance, a collection, or a scalar.
    @return: Attrs instances as mappings of their fields, tuples and lists
        as lists, sets sorted, scalars unchanged (others as strings).
    """
    if attrs.has(type(value)):
        return {f.name: plainValue(getattr(value, f.name)) for f in attrs.fields(type(value))}
    if isinstance(value, (set, frozenset)):
        return sorted((plainValue(v) for v in value), key=str)
    if isinstance(value, (list, tuple)):
        return [plainValue(v) for v in value]
    if isinstance(value, dict):
        return {str(k): plainValue(v) for k, v in value.items()}
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def _textLines(value: Any, indent: int) -> list[str]:
    # The lines of a mapping of plain values, in a YAML-like layout.
    pad = "  " * indent
    lines = []
    for key, item in value.items():
        if isinstance(item, (dict, list)) and not item:
            lines.append(f"{pad}{key}: (none)")
        elif isinstance(item, dict):
            lines.append(f"{pad}{key}:")
            lines.extend(_textLines(item, indent + 1))
        elif isinstance(item, list):
            lines.append(f"{pad}{key}:")
            for element in item:
                if isinstance(element, dict) and element:
                    nested = _textLines(element, indent + 2)
                    lines.append(f"{pad}  - {nested[0].lstrip()}")
                    lines.extend(nested[1:])
                else:
                    lines.append(f"{pad}  - {_scalarText(element)}")
        else:
            lines.append(f"{pad}{key}: {_scalarText(item)}")
    return lines


def _scalarText(value: Any) -> str:
    if value is None:
        return "(not set)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, str):
        return cleanText(value) if value else '""'
    return cleanText(str(value))


def alignColumns(rows: Sequence[Sequence[str]], rightAligned: set[int]) -> str:
    """
    Lay rows of cells out in columns as wide as their widest cell, two
    spaces apart, with no trailing spaces.

    @param rows: The rows, the heading first; all as long as the first.
    @param rightAligned: The indexes of the columns to align right
        (numbers); the others align left.
    @return: The lines, each ending in a newline.
    """
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [
            cell.rjust(width) if column in rightAligned else cell.ljust(width)
            for column, (cell, width) in enumerate(zip(row, widths))
        ]
        lines.append("  ".join(cells).rstrip() + "\n")
    return "".join(lines)


def humanSize(size: int) -> str:
    """
    Write a size in bytes for people: C{512 B}, C{1.5 KiB}, C{2.0 MiB}.
    """
    if size < 1024:
        return f"{size} B"
    value = float(size)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024:
            break
    return f"{value:.1f} {unit}"


def plural(count: int, noun: str) -> str:
    """
    Count a noun in English: C{1 message}, C{2 messages}.
    """
    return f"{count} {noun}{'' if count == 1 else 's'}"


def relativePath(root: str, path: str) -> str:
    """
    Name a file under the Maildir root relative to it, safe to print.
    """
    return cleanText(os.path.relpath(path, root))


def localTime(seconds: float) -> str:
    """
    Write a time in the local time zone, to the second.
    """
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))


def _truncate(text: str, width: int) -> str:
    if len(text) <= width:
        return text
    return text[: width - 1].rstrip() + "\u2026"


def writeText(stream: IO[str], text: str) -> None:
    """
    Write text the way every command does: in pieces, and with
    characters the stream cannot encode replaced rather than fatal.

    Written in pieces: CPython loses the EPIPE of a reader that goes away
    (C{mailharbor list | head}) during one large write, and the command
    would not know to stop.

    @param stream: Where to write.
    @param text: What to write.
    """
    for start in range(0, len(text), _WRITE_CHUNK):
        piece = text[start : start + _WRITE_CHUNK]
        try:
            stream.write(piece)
        except UnicodeEncodeError:
            encoding = getattr(stream, "encoding", None) or "ascii"
            stream.write(piece.encode(encoding, "replace").decode(encoding))
