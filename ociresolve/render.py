"""The one place every output path renders through: logfmt lines, JSON lines, aligned tables,
RFC 3339 times and short container ids. The tracer, the daemon's logs, the deprecation
reporter and the command line all write with these functions, so they share one escaping
policy and one time format.

Values come from containers and processes (a process names itself; annotations are written by
whoever creates the pod), so no value may end a line, start a field, close a quote or steer a
terminal. Each form has one escaping rule:

- **logfmt** follows go-logfmt's rules, which log pipelines (Loki, Vector, Grafana) parse: a
  value is written bare when it is non-empty and holds only printable characters other than
  space, ``=``, ``"`` and backslash; otherwise it is quoted, with ``\\``, ``"``, ``\\n``,
  ``\\r``, ``\\t`` escaped and every other non-printable character (controls, line and
  paragraph separators, bidirectional overrides, unpaired surrogates from undecodable bytes)
  written as ``\\uXXXX``. Printable text in any script (``café``) stays as it is. ``None``
  leaves the field out; ``True``/``False`` are ``true``/``false``; anything else is ``str()``.
- **JSON** is printable ASCII only: every character outside it (all non-ASCII text, U+2028
  and U+2029, bidirectional overrides, DEL, unpaired surrogates) is a ``\\uXXXX`` escape, so
  no line reader can split a line and no terminal or log viewer can reorder one, and the line
  still reads back as the same text. A value JSON has no type for (a path, an exception) is
  written as its ``str()``.
- **Tables** (for people) keep printable text and write anything else as Python's escape.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Final

import msgspec

from ociresolve.ids import SHORT_ID_LENGTH

__all__ = [
    "json_line",
    "logfmt_line",
    "logfmt_value",
    "printable",
    "rfc3339_milli",
    "rfc3339_nano",
    "short_id",
    "table",
]

# -- logfmt --------------------------------------------------------------------------------

# Anything that forces quotes: not printable ASCII, or space, '=', '"', backslash. Printable
# non-ASCII text is checked with str.isprintable() below.
_NEEDS_QUOTES: Final = re.compile(r"[^!#-<>-\[\]-~]")
_QUOTES_ASCII: Final = re.compile(r'[ ="\\]')
_NEEDS_ESCAPE: Final = re.compile(r"[^ !#-\[\]-~]")  # '"', backslash, not printable ASCII
_ESCAPES: Final = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _logfmt_escape(match: re.Match[str]) -> str:
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
    if text and not text.isascii() and text.isprintable() and _QUOTES_ASCII.search(text) is None:
        return text  # printable non-ASCII (a pod name in another script) needs no quotes
    return '"' + _NEEDS_ESCAPE.sub(_logfmt_escape, text) + '"'


def logfmt_line(fields: Iterable[tuple[str, object]]) -> str:
    """One logfmt line (no newline) of ``key=value`` pairs; ``None`` values are left out.

    Keys are the caller's own constants; values are escaped (see the module's docstring).
    """
    return " ".join(
        f"{key}={logfmt_value(item if isinstance(item, str) else _logfmt_text(item))}"
        for key, item in fields
        if item is not None
    )


def _logfmt_text(item: object) -> str:
    if isinstance(item, bool):
        return "true" if item else "false"
    return str(item)


# -- JSON ----------------------------------------------------------------------------------

_encode: Final = msgspec.json.Encoder(enc_hook=str).encode
# What is left to escape in msgspec's output (which escapes controls itself): non-ASCII, DEL.
_NOT_PRINTABLE_ASCII: Final = re.compile(r"[^ -~]")


def json_line(record: Mapping[str, object]) -> str:
    """``record`` as one JSON object (no newline) in printable ASCII (see the module's
    docstring); a value JSON has no type for is written as its ``str()``."""
    try:
        data = _encode(record)
    except UnicodeEncodeError:  # an unpaired surrogate, which UTF-8 cannot hold
        return _json_with_surrogates(record)
    if data.isascii() and b"\x7f" not in data:  # the usual case: nothing left to escape
        return data.decode()
    return _NOT_PRINTABLE_ASCII.sub(_json_escape, data.decode())


def _json_escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    code -= 0x10000  # beyond the BMP: JSON's surrogate pair
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


def _json_with_surrogates(record: Mapping[str, object]) -> str:
    # The standard library writes an unpaired surrogate as \udcXX, which reads back as the
    # same text; msgspec's conversion first, so every other value is written as msgspec would
    # (a non-finite float as null, bytes as base64, a path as text). Rare and slower.
    tree = _finite(msgspec.to_builtins(record, enc_hook=str, str_keys=True))
    text = json.dumps(tree, ensure_ascii=True, separators=(",", ":"))
    return text.replace("\x7f", "\\u007f")


def _finite(value: object) -> object:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


# -- tables --------------------------------------------------------------------------------


def printable(value: object) -> str:
    """``value`` as one line of printable text; ``-`` for unknown."""
    if value is None:
        return "-"
    text = str(value)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """Columns aligned with two spaces between them, every cell through ``printable``."""
    cells = [list(header)] + [[printable(value) for value in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in cells
    )


# -- times ---------------------------------------------------------------------------------

_NS: Final = 1_000_000_000


def rfc3339_nano(time_ns: int) -> str:
    """Go's ``time.RFC3339Nano`` in UTC, as ``ctr deprecations list`` prints it: nanoseconds
    with their trailing zeros dropped (``2025-06-16T18:21:30.95955Z``, ``...:30Z``)."""
    seconds, nanoseconds = divmod(time_ns, _NS)
    text = _seconds(seconds)
    fraction = f"{nanoseconds:09d}".rstrip("0")
    return f"{text}.{fraction}Z" if fraction else f"{text}Z"


def rfc3339_milli(time_ns: int) -> str:
    """UTC to the millisecond (truncated), as every log line's ``time`` field:
    ``2026-11-23T02:07:05.384Z``."""
    seconds, nanoseconds = divmod(time_ns, _NS)
    return f"{_seconds(seconds)}.{nanoseconds // 1_000_000:03d}Z"


@functools.lru_cache(maxsize=64)  # log lines come in bursts within the same second
def _seconds(seconds: int) -> str:
    # Not strftime: its %Y has no leading zeros before the year 1000 on glibc.
    t = datetime.fromtimestamp(seconds, UTC)
    return f"{t.year:04d}-{t.month:02d}-{t.day:02d}T{t.hour:02d}:{t.minute:02d}:{t.second:02d}"


# -- ids -----------------------------------------------------------------------------------


def short_id(container_id: str | None) -> str | None:
    """The first 12 characters of a container id, as ``crictl``/``docker`` show it; ``None``
    for no id (``None`` or empty)."""
    return container_id[:SHORT_ID_LENGTH] if container_id else None
