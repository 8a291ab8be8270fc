"""Times (ns since the epoch, UTC) as RFC 3339 text."""

from __future__ import annotations

from datetime import UTC, datetime

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
