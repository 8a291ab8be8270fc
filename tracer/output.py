"""The tracer's output: one line per connection, plus start-up and summary lines.

``LogfmtOutput`` writes the original containerd socket tracer's fields (``time``, ``level``,
``msg``, ``node``, ``pod``, ``container``, ``comm``, ``pid``, ``container_id``) plus ``family``,
``address`` and ``source``; ``JsonOutput`` writes one JSON object per line. Every line is
flushed as it is written. Untrusted values cannot forge a line or a field: logfmt values are
escaped by ``tracer.logfmt``, JSON by construction (with non-ASCII text as ``\\u`` escapes, so
not even a U+2028 reaches a reader that splits lines on it).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Final, TextIO

import msgspec

from ociresolve import render
from ociresolve.tracer.attribution import Attribution
from ociresolve.tracer.counts import Counts
from ociresolve.tracer.events import ConnectEvent

CONNECTION_MSG: Final = "containerd socket connection opened"
STARTED_MSG: Final = "containerd socket tracer started"
SUMMARY_MSG: Final = "containerd socket tracer summary"
STOPPED_MSG: Final = "containerd socket tracer stopped"

SHORT_ID: Final = 12

Setting = tuple[str, str | int | float | bool | Sequence[str] | None]

_encode = msgspec.json.Encoder().encode


class WallClock:
    """Event times (``bpf_ktime_get_ns()``: CLOCK_MONOTONIC) as RFC 3339 UTC text."""

    def __init__(self, offset_ns: int | None = None) -> None:
        # wall = monotonic + offset, measured once (a later clock step shifts the times).
        self.offset_ns = time.time_ns() - time.monotonic_ns() if offset_ns is None else offset_ns

    def now_ns(self) -> int:
        """Now, on the events' clock."""
        return time.monotonic_ns()

    def text(self, monotonic_ns: int) -> str:
        seconds, nanoseconds = divmod(monotonic_ns + self.offset_ns, 1_000_000_000)
        wall = datetime.fromtimestamp(seconds, UTC)
        return wall.strftime("%Y-%m-%dT%H:%M:%S.") + f"{nanoseconds // 1_000_000:03d}Z"


def _short(container_id: str | None) -> str | None:
    return container_id[:SHORT_ID] if container_id else None


class _Output:
    def __init__(self, stream: TextIO, node: str, clock: WallClock | None = None) -> None:
        self.stream = stream
        self.node = node
        self.clock = clock or WallClock()

    def _write(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()


class LogfmtOutput(_Output):
    """logfmt lines, the original tool's fields first."""

    def started(self, settings: Sequence[Setting]) -> None:
        self._write(
            render.logfmt_line(
                [
                    ("time", self.clock.text(self.clock.now_ns())),
                    ("level", "info"),
                    ("msg", STARTED_MSG),
                    ("node", self.node),
                    *((key, _setting_text(item)) for key, item in settings),
                ]
            )
        )

    def connection(self, event: ConnectEvent, who: Attribution) -> None:
        meta = who.meta
        pod = container = None
        if meta is not None:
            if meta.pod_namespace is not None or meta.pod_name is not None:
                pod = f"{meta.pod_namespace or ''}/{meta.pod_name or ''}"
            container = meta.container_name
        self._write(
            render.logfmt_line(
                (
                    ("time", self.clock.text(event.time_ns)),
                    ("level", "info"),
                    ("msg", CONNECTION_MSG),
                    ("node", self.node),
                    ("pod", pod),
                    ("container", container),
                    ("comm", event.comm),
                    ("pid", event.tgid),
                    ("container_id", _short(who.container_id)),
                    ("family", event.family),
                    ("address", event.address),
                    ("source", who.source),
                )
            )
        )

    def summary(self, counts: Counts, *, final: bool = False) -> None:
        self._write(
            render.logfmt_line(
                [
                    ("time", self.clock.text(self.clock.now_ns())),
                    ("level", "info"),
                    ("msg", STOPPED_MSG if final else SUMMARY_MSG),
                    ("node", self.node),
                    *_count_fields(counts),
                ]
            )
        )


class JsonOutput(_Output):
    """One JSON object per line; ``msg`` tells connections from start-up and summary lines."""

    def started(self, settings: Sequence[Setting]) -> None:
        row: dict[str, object] = {
            "time": self.clock.text(self.clock.now_ns()),
            "msg": STARTED_MSG,
            "node": self.node,
        }
        row.update((key, _setting_value(item)) for key, item in settings)
        self._write(_json(row))

    def connection(self, event: ConnectEvent, who: Attribution) -> None:
        meta = who.meta
        self._write(
            _json(
                {
                    "time": self.clock.text(event.time_ns),
                    "msg": CONNECTION_MSG,
                    "node": self.node,
                    "pod_namespace": meta.pod_namespace if meta else None,
                    "pod_name": meta.pod_name if meta else None,
                    "container": meta.container_name if meta else None,
                    "container_id": _short(who.container_id),
                    "comm": event.comm,
                    "pid": event.tgid,
                    "family": event.family,
                    "address": event.address,
                    "source": who.source,
                }
            )
        )

    def summary(self, counts: Counts, *, final: bool = False) -> None:
        row: dict[str, object] = {
            "time": self.clock.text(self.clock.now_ns()),
            "msg": STOPPED_MSG if final else SUMMARY_MSG,
            "node": self.node,
        }
        row.update(_count_fields(counts))
        self._write(_json(row))


Output = LogfmtOutput | JsonOutput


def _count_fields(counts: Counts) -> list[tuple[str, int]]:
    return [
        ("events", counts.events),
        ("resolved", counts.resolved),
        ("host", counts.host),
        ("unresolved", counts.unresolved),
        ("lost", counts.lost),
        ("suppressed", counts.suppressed),
        *((f"source_{source}", n) for source, n in counts.sources.items()),
    ]


def _setting_value(item: str | int | float | bool | Sequence[str] | None) -> object:
    return item if item is None or isinstance(item, str | int | float) else list(item)


def _setting_text(item: str | int | float | bool | Sequence[str] | None) -> str | None:
    if item is None:
        return None
    if isinstance(item, bool):
        return "true" if item else "false"
    if isinstance(item, (list, tuple)):
        return ",".join(item)
    if isinstance(item, float):
        return f"{item:g}"
    return str(item)


def _ascii(item: object) -> bool:
    if isinstance(item, str):
        return item.isascii()
    if isinstance(item, list):
        return all(_ascii(i) for i in item)
    return True


def _json(row: dict[str, object]) -> str:
    """One JSON object; plain ASCII through msgspec, anything else with every non-ASCII
    character escaped (unpaired surrogates from undecodable bytes included)."""
    if all(_ascii(v) for v in row.values()):
        return _encode(row).decode()
    return json.dumps(row, ensure_ascii=True, separators=(",", ":"))
