"""The line formats ``ociresolve enrich`` reads: where an event line keeps its pid and cgroup id,
and how the pod fields are added to it.

Each format reads the two keys from a line (``keys``) and adds fields to it (``add``). A line
it cannot read raises ``Unreadable`` (the line then passes through unchanged), with a reason
that is counted. The keys are range-checked: a pid in 1..PID_MAX, a cgroup id in 1..2^64-1 (0
is no key).

The lines come from tracers that print what tenants control (a process names itself), so a
key is taken only where the format says it is: a JSON key that occurs twice (``{"pid": 1,
"comm": "x", "pid": 2}``, which a tool that writes JSON with ``printf`` lets a process name
spell), or a logfmt key given twice, makes the line ambiguous, never enriched. A text regex is
the user's; the documented ones are anchored at the start, before any name.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Final, NamedTuple, Protocol

import msgspec

from ociresolve.entries import PID_MAX
from ociresolve.render import json_line, logfmt_line

CGROUP_ID_MAX: Final = 2**64 - 1
# A longer line is passed through unread: events are a few hundred bytes.
LINE_MAX: Final = 64 * 1024

Fields = Sequence[tuple[str, str]]


class Keys(NamedTuple):
    pid: int | None
    cgroup_id: int | None


class Unreadable(Exception):
    """The line's keys cannot be read; ``reason`` is one of ``REASONS``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# What the counts call the lines passed through unchanged.
NOT_PARSED: Final = "not_parsed"  # not JSON / not logfmt
NO_KEY: Final = "no_key"  # parsed, but neither key is there (a header line, another event)
AMBIGUOUS: Final = "ambiguous"  # a key given twice
OUT_OF_RANGE: Final = "out_of_range"  # not a pid / cgroup id
TOO_LONG: Final = "too_long"
REASONS: Final = (NOT_PARSED, NO_KEY, AMBIGUOUS, OUT_OF_RANGE, TOO_LONG)


class Format(Protocol):
    name: str

    def keys(self, line: bytes) -> Keys:
        """The line's pid and cgroup id (at least one is set); raises ``Unreadable``."""

    def add(self, line: bytes, fields: Fields) -> bytes:
        """``line`` with ``fields`` added (for a line ``keys`` read)."""


def _number(value: object, maximum: int) -> int | None:
    """A key's value as a number in 1..maximum; ``None`` when absent (JSON null, empty, or 0,
    which tools print for none: the pid of an interrupt, no cgroup)."""
    if value is None or value in ("", b"", 0, "0", b"0"):
        return None
    if isinstance(value, bool):
        raise Unreadable(OUT_OF_RANGE)
    if isinstance(value, bytes | str):
        # ASCII digits only: no sign, space or "_", and no other script's digits (int() reads
        # those too).
        if not (value.isascii() and value.isdigit()) or len(value) > 20:
            raise Unreadable(OUT_OF_RANGE)
        value = int(value)
    if not isinstance(value, int) or not 0 < value <= maximum:
        raise Unreadable(OUT_OF_RANGE)
    return value


def _keys(pid: object, cgroup_id: object) -> Keys:
    keys = Keys(_number(pid, PID_MAX), _number(cgroup_id, CGROUP_ID_MAX))
    if keys.pid is None and keys.cgroup_id is None:
        raise Unreadable(NO_KEY)
    return keys


# -- JSON lines --------------------------------------------------------------------------------

_decode = msgspec.json.Decoder().decode


class _Duplicate(Exception):
    pass


class JsonFormat:
    """One JSON object per line; the keys at dotted paths (``event.pid``; ``""``: none).

    The fields are added at the top level, after the line's own, without rewriting it; a line
    that already has one of them is rewritten with the new values.
    """

    name = "json"

    def __init__(self, pid_path: str = "pid", cgroup_path: str = "cgroup_id") -> None:
        self.paths = tuple(tuple(p.split(".")) if p else () for p in (pid_path, cgroup_path))
        names = {name for path in self.paths for name in path}
        # A key name on a path, as its JSON string: seen once in the raw line, it is there
        # once (a string value holding it has its quotes escaped); seen more, check properly.
        self._quoted = tuple(json.dumps(name).encode() for name in sorted(names))
        self._names = frozenset(names)

    def keys(self, line: bytes) -> Keys:
        try:
            event = _decode(line)
        except (msgspec.DecodeError, RecursionError):
            raise Unreadable(NOT_PARSED) from None
        if not isinstance(event, dict):
            raise Unreadable(NOT_PARSED)
        if any(line.count(quoted) > 1 for quoted in self._quoted):
            self._check_unique(line)
        return _keys(*(_at(event, path) for path in self.paths))

    def _check_unique(self, line: bytes) -> None:
        names = self._names

        def pairs(items: list[tuple[str, object]]) -> dict[str, object]:
            seen = [key for key, _ in items if key in names]
            if len(seen) != len(set(seen)):
                raise _Duplicate
            return dict(items)

        try:
            json.loads(line, object_pairs_hook=pairs)
        except _Duplicate:
            raise Unreadable(AMBIGUOUS) from None
        except (ValueError, RecursionError):
            raise Unreadable(NOT_PARSED) from None

    def add(self, line: bytes, fields: Fields) -> bytes:
        if not fields:
            return line
        if any(b'"' + name.encode() + b'"' in line for name, _ in fields):
            event = _decode(line)
            event.update(fields)
            return json_line(event).encode()
        body = line.rstrip()[:-1].rstrip()  # up to the closing brace
        added = json_line(dict(fields))[1:]  # '"name":"value",...}'
        return body + (b"" if body.endswith(b"{") else b",") + added.encode()


def _at(event: dict[str, object], path: tuple[str, ...]) -> object:
    value: object = event
    for name in path:
        if not isinstance(value, dict):
            return None
        value = value.get(name)
    return None if not path else value


# -- logfmt ------------------------------------------------------------------------------------

# One key=value pair (or a bare key) after optional spaces: a value is bare (no space, no
# quote) or quoted with backslash escapes.
_PAIR: Final = re.compile(rb'[ \t]*([^\s="]+)(?:=("(?:[^"\\]|\\.)*"|[^\s"]*))?[ \t]*')


class LogfmtFormat:
    """``key=value`` pairs; the keys by name (``""``: none). The fields are appended."""

    name = "logfmt"

    def __init__(self, pid_key: str = "pid", cgroup_key: str = "cgroup_id") -> None:
        self.wanted = tuple(key.encode() for key in (pid_key, cgroup_key))
        self._probes = tuple(key + b"=" for key in self.wanted if key)

    def keys(self, line: bytes) -> Keys:
        if not any(probe in line for probe in self._probes):
            raise Unreadable(NO_KEY)
        found: dict[bytes, bytes] = {}
        position, end = 0, len(line)
        while position < end:
            match = _PAIR.match(line, position)
            if match is None or match.end() == position:
                raise Unreadable(NOT_PARSED)
            key = match.group(1)
            if key in self.wanted and key:
                if key in found:
                    raise Unreadable(AMBIGUOUS)
                found[key] = _unquote(match.group(2) or b"")
            position = match.end()
        pid_key, cgroup_key = self.wanted
        return _keys(found.get(pid_key), found.get(cgroup_key))

    def add(self, line: bytes, fields: Fields) -> bytes:
        if not fields:
            return line
        return line + b" " + logfmt_line(fields).encode()


def _unquote(value: bytes) -> bytes:
    # A number never needs escapes: a quoted one is just quoted.
    if len(value) >= 2 and value.startswith(b'"') and value.endswith(b'"'):
        return value[1:-1]
    return value


# -- text --------------------------------------------------------------------------------------


class TextFormat:
    """Any text: a regular expression's named groups ``pid`` and/or ``cgroup_id`` hold the
    keys (its first match in the line). The fields are appended as logfmt pairs."""

    name = "text"

    def __init__(self, pattern: str) -> None:
        try:
            self.regex = re.compile(pattern.encode())
        except re.error as exc:
            raise ValueError(f"--regex {pattern!r}: {exc}") from None
        groups = set(self.regex.groupindex)
        if not groups & {"pid", "cgroup_id"}:
            raise ValueError(
                f"--regex {pattern!r} names no group pid or cgroup_id, e.g. ^(?P<pid>\\d+) "
            )
        self._pid = "pid" in groups
        self._cgroup = "cgroup_id" in groups

    def keys(self, line: bytes) -> Keys:
        match = self.regex.search(line)
        if match is None:
            raise Unreadable(NO_KEY)
        return _keys(
            match.group("pid") if self._pid else None,
            match.group("cgroup_id") if self._cgroup else None,
        )

    def add(self, line: bytes, fields: Fields) -> bytes:
        if not fields:
            return line
        return line + b" " + logfmt_line(fields).encode()
