"""Every output path's rendering: logfmt lines, JSON lines, aligned tables, RFC 3339 times and
short ids.

Values come from containers and processes (a process names itself; annotations are written by
whoever creates the pod), so no value may end a line, start a field, close a quote or steer a
terminal.

logfmt follows go-logfmt's rules, which log pipelines (Loki, Vector, Grafana) parse: a value is
written bare when it is non-empty and holds only printable characters other than space, ``=``,
``"`` and backslash; otherwise it is quoted, with ``\\``, ``"``, ``\\n``, ``\\r``, ``\\t``
escaped and every other non-printable character (controls, line and paragraph separators,
bidirectional overrides, unpaired surrogates from undecodable bytes) written as ``\\uXXXX``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final

import msgspec

from ociresolve.ids import SHORT_ID_LENGTH

# -- logfmt --------------------------------------------------------------------------------

# Anything that forces quotes: not printable ASCII, or space, '=', '"', backslash. Printable
# non-ASCII text is checked with str.isprintable() below.
_NEEDS_QUOTES: Final = re.compile(r"[^!#-<>-\[\]-~]")
_NEEDS_ESCAPE: Final = re.compile(r'["\\]|[^ -~]')
_ESCAPES: Final = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    escaped = _ESCAPES.get(char)
    if escaped is not None:
        return escaped
    if char.isprintable():
        return char
    code = ord(char)
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def logfmt_value(text: str) -> str:
    """``text`` as one logfmt value: bare when that is unambiguous, else quoted and escaped."""
    if text and _NEEDS_QUOTES.search(text) is None:
        return text
    if text and text.isprintable() and not any(c in text for c in ' ="\\'):
        return text  # printable non-ASCII (a pod name in another script) needs no quotes
    return '"' + _NEEDS_ESCAPE.sub(_escape, text) + '"'


def logfmt_line(fields: Iterable[tuple[str, object]]) -> str:
    """One logfmt line (no newline) of ``key=value`` pairs; ``None`` values are left out.

    Keys are the caller's own constants; values are formatted with ``str()`` and escaped.
    """
    return " ".join(
        f"{key}={logfmt_value(item if isinstance(item, str) else str(item))}"
        for key, item in fields
        if item is not None
    )


# -- tables and JSON lines ------------------------------------------------------------

_encoder = msgspec.json.Encoder()


def printable(value: object) -> str:
    """``value`` as one line of printable text; ``-`` for unknown."""
    if value is None:
        return "-"
    text = str(value)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def short_id(container_id: str | None) -> str | None:
    return container_id[:SHORT_ID_LENGTH] if container_id else container_id


def json_line(record: Mapping[str, Any]) -> str:
    return _encoder.encode(record).decode()


def table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    cells = [list(header)] + [[printable(value) for value in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in cells
    )


# -- times --------------------------------------------------------------------------------

_NS = 1_000_000_000


def rfc3339_nano(time_ns: int) -> str:
    """Go's ``time.RFC3339Nano`` in UTC, as ``ctr deprecations list`` prints it: nanoseconds
    with their trailing zeros dropped (``2025-06-16T18:21:30.95955Z``, ``...:30Z``)."""
    seconds, nanoseconds = divmod(time_ns, _NS)
    text = _seconds(seconds)
    fraction = f"{nanoseconds:09d}".rstrip("0")
    return f"{text}.{fraction}Z" if fraction else f"{text}Z"


def rfc3339_milli(time_ns: int) -> str:
    """Milliseconds, as the tracer's ``time`` field: ``2026-11-23T02:07:05.384Z``."""
    seconds, nanoseconds = divmod(time_ns, _NS)
    text = _seconds(seconds)
    return f"{text}.{nanoseconds // 1_000_000:03d}Z"


def _seconds(seconds: int) -> str:
    # Not strftime: its %Y has no leading zeros before the year 1000 on glibc.
    t = datetime.fromtimestamp(seconds, UTC)
    return f"{t.year:04d}-{t.month:02d}-{t.day:02d}T{t.hour:02d}:{t.minute:02d}:{t.second:02d}"
