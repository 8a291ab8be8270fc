"""The tracer's output: one line per connection, plus start-up and summary lines.

``LogfmtOutput`` writes the original containerd socket tracer's fields (``time``, ``level``,
``msg``, ``node``, ``pod``, ``container``, ``comm``, ``pid``, ``container_id``) plus ``family``,
``address`` and ``source``; ``JsonOutput`` writes one JSON object per line. Every line is
flushed as it is written. Untrusted values cannot forge a line or a field: every line is
rendered by ``ociresolve.render`` (logfmt values escaped; JSON in printable ASCII, every other
character a ``\\u`` escape, so not even a U+2028 reaches a reader that splits lines on it).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Final, TextIO

from ociresolve import render
from ociresolve.tracer.attribution import Attribution
from ociresolve.tracer.counts import Counts
from ociresolve.tracer.events import ConnectEvent

CONNECTION_MSG: Final = "containerd socket connection opened"
STARTED_MSG: Final = "containerd socket tracer started"
SUMMARY_MSG: Final = "containerd socket tracer summary"
STOPPED_MSG: Final = "containerd socket tracer stopped"

Setting = tuple[str, str | int | float | bool | Sequence[str] | None]


class WallClock:
    """Event times (``bpf_ktime_get_ns()``: CLOCK_MONOTONIC) as RFC 3339 UTC text."""

    def __init__(self, offset_ns: int | None = None) -> None:
        # wall = monotonic + offset, measured once (a later clock step shifts the times).
        self.offset_ns = time.time_ns() - time.monotonic_ns() if offset_ns is None else offset_ns

    def now_ns(self) -> int:
        """Now, on the events' clock."""
        return time.monotonic_ns()

    def text(self, monotonic_ns: int) -> str:
        return render.rfc3339_milli(monotonic_ns + self.offset_ns)


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
                    ("container_id", render.short_id(who.container_id)),
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
        self._write(render.json_line(row))

    def connection(self, event: ConnectEvent, who: Attribution) -> None:
        meta = who.meta
        self._write(
            render.json_line(
                {
                    "time": self.clock.text(event.time_ns),
                    "msg": CONNECTION_MSG,
                    "node": self.node,
                    "pod_namespace": meta.pod_namespace if meta else None,
                    "pod_name": meta.pod_name if meta else None,
                    "container": meta.container_name if meta else None,
                    "container_id": render.short_id(who.container_id),
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
        self._write(render.json_line(row))


Output = LogfmtOutput | JsonOutput


def _count_fields(counts: Counts) -> list[tuple[str, int]]:
    return [
        ("events", counts.events),
        ("resolved", counts.resolved),
        ("host", counts.host),
        ("unresolved", counts.unresolved),
        ("lost", counts.lost),
        ("suppressed", counts.suppressed),
        ("excluded", counts.excluded),
        *((f"source_{source}", n) for source, n in counts.sources.items()),
    ]


def _setting_value(item: str | int | float | bool | Sequence[str] | None) -> object:
    return item if item is None or isinstance(item, str | int | float) else list(item)


def _setting_text(item: str | int | float | bool | Sequence[str] | None) -> object:
    if isinstance(item, list | tuple):
        return ",".join(item)
    if isinstance(item, float):
        return f"{item:g}"
    return item
