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

import functools
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
# Rendered fields kept (one entry per container seen; cleared beyond).
_CACHED: Final = 4096

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
    if type(value) is int:  # the usual case (JSON): no bool, no string
        if 0 < value <= maximum:
            return value
        if value == 0:
            return None
        raise Unreadable(OUT_OF_RANGE)
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
        # once (a string value holding it has its quotes escaped); seen more, or a line with a
        # \u escape (which can spell a key another way: "p\u0069d"), check properly.
        self._quoted = tuple(
            json.dumps(name, ensure_ascii=False).encode() for name in sorted(names)
        )
        self._names = frozenset(names)
        # Keys at the top level (the usual case): one dict.get each.
        self._flat = all(len(path) <= 1 for path in self.paths)
        self._top = tuple(path[0] if path else "" for path in self.paths)
        # Per fields added: their names as JSON strings, and the bytes that add them.
        self._suffixes: dict[Fields, tuple[tuple[bytes, ...], bytes]] = {}

    def keys(self, line: bytes) -> Keys:
        try:
            event = _decode(line)
        except (msgspec.DecodeError, RecursionError):
            raise Unreadable(NOT_PARSED) from None
        if not isinstance(event, dict):
            raise Unreadable(NOT_PARSED)
        if b"\\u" in line:
            self._check_unique(line)
        else:
            for quoted in self._quoted:
                if line.count(quoted) > 1:
                    self._check_unique(line)
                    break
        if self._flat:
            pid_key, cgroup_key = self._top
            return _keys(
                event.get(pid_key) if pid_key else None,
                event.get(cgroup_key) if cgroup_key else None,
            )
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
        key = fields if isinstance(fields, tuple) else tuple(fields)
        cached = self._suffixes.get(key)
        if cached is None:
            if len(self._suffixes) > _CACHED:
                self._suffixes.clear()
            names = tuple(json.dumps(name).encode() for name, _ in fields)
            added = json_line(dict(fields))[1:].encode()  # '"name":"value",...}'
            cached = self._suffixes[key] = (names, added)
        names, added = cached
        for name in names:
            if name in line:  # a key of the line's own, or text in a value: look properly
                event = _decode(line)
                if any(field in event for field, _ in fields):
                    event.update(fields)
                    return json_line(event).encode()
                break
        body = line.rstrip()[:-1].rstrip()  # up to the closing brace
        return body + (b"" if body.endswith(b"{") else b",") + added


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
# What only the full parse reads right: a quote, or whitespace other than space and tab.
_QUOTE_OR_BREAK: Final = re.compile(rb'["\r\n\v\f]')


class LogfmtFormat:
    """``key=value`` pairs; the keys by name (``""``: none). The fields are appended."""

    name = "logfmt"

    def __init__(self, pid_key: str = "pid", cgroup_key: str = "cgroup_id") -> None:
        self.wanted = tuple(key.encode() for key in (pid_key, cgroup_key))
        self._probes = tuple(key + b"=" for key in self.wanted if key)
        # In a line padded with spaces (the plain lines' fast path): how each key starts a pair
        # with a value (None: no such key), and how one stands alone.
        self._given = tuple(b" " + key + b"=" if key else None for key in self.wanted)
        self._alone = tuple(b" " + key + b" " for key in self.wanted if key)

    def keys(self, line: bytes) -> Keys:
        if not any(probe in line for probe in self._probes):
            raise Unreadable(NO_KEY)
        if _QUOTE_OR_BREAK.search(line) is None:
            padded = b" " + line.replace(b"\t", b" ") + b" "
            if not any(alone in padded for alone in self._alone):
                return self._plain_keys(padded)
        return self._parsed_keys(line)

    def _plain_keys(self, padded: bytes) -> Keys:
        """A line with no quote and no whitespace but spaces (tabs made spaces), in which no
        wanted key stands alone: every pair is a run of bytes between spaces, so a key is where
        " key=" is (what the full parse reads, found with bytes methods)."""
        if b" =" in padded:  # a pair with no key
            raise Unreadable(NOT_PARSED)
        values: list[bytes | None] = []
        for given in self._given:
            count = 0 if given is None else padded.count(given)
            if count > 1:
                raise Unreadable(AMBIGUOUS)
            if given is not None and count:
                start = padded.index(given) + len(given)
                values.append(padded[start : padded.index(b" ", start)])
            else:
                values.append(None)
        return _keys(*values)

    def _parsed_keys(self, line: bytes) -> Keys:
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
        return line + _logfmt_pairs(fields if isinstance(fields, tuple) else tuple(fields))


@functools.lru_cache(maxsize=_CACHED)
def _logfmt_pairs(fields: tuple[tuple[str, str], ...]) -> bytes:
    """`` key=value ...``: the pairs appended to a logfmt or text line."""
    return b" " + logfmt_line(fields).encode()


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
        return line + _logfmt_pairs(fields if isinstance(fields, tuple) else tuple(fields))
