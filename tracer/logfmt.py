"""logfmt lines (``key=value key="quoted value"``) that no value can forge.

Values come from containers and processes (a process names itself; annotations are written by
whoever creates the pod), so a value must never end a line, start a field or close a quote.
The rules are go-logfmt's, which log pipelines (Loki, Vector, Grafana) parse: a value is
written bare when it is non-empty and holds only printable characters other than space, ``=``,
``"`` and backslash; otherwise it is quoted, with ``\\``, ``"``, ``\\n``, ``\\r``, ``\\t``
escaped and every other non-printable character (controls, line and paragraph separators,
bidirectional overrides, unpaired surrogates from undecodable bytes) written as ``\\uXXXX``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final

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


def value(text: str) -> str:
    """``text`` as one logfmt value: bare when that is unambiguous, else quoted and escaped."""
    if text and _NEEDS_QUOTES.search(text) is None:
        return text
    if text and text.isprintable() and not any(c in text for c in ' ="\\'):
        return text  # printable non-ASCII (a pod name in another script) needs no quotes
    return '"' + _NEEDS_ESCAPE.sub(_escape, text) + '"'


def line(fields: Iterable[tuple[str, object]]) -> str:
    """One logfmt line (no newline) of ``key=value`` pairs; ``None`` values are left out.

    Keys are the caller's own constants; values are formatted with ``str()`` and escaped.
    """
    return " ".join(
        f"{key}={value(item if isinstance(item, str) else str(item))}"
        for key, item in fields
        if item is not None
    )
