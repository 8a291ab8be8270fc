"""What the summary lines report."""

from __future__ import annotations

from dataclasses import dataclass, field

from ociresolve.tracer.attribution import Source


@dataclass
class Counts:
    """Totals since the tracer started.

    ``events`` = ``resolved`` + ``host`` + ``unresolved``; ``suppressed`` of them were repeats
    that ``--dedup`` kept off the output; ``excluded`` connects (not in ``events``) were host
    processes with an excluded name, dropped; ``lost`` were dropped by the kernel side before they
    could be read (the probe's own count); ``sources`` splits ``resolved`` by where the answer
    came from (``index``, ``bundle``, ``cri``).
    """

    events: int = 0
    resolved: int = 0
    host: int = 0
    unresolved: int = 0
    suppressed: int = 0
    excluded: int = 0
    lost: int = 0
    sources: dict[str, int] = field(default_factory=lambda: {"index": 0, "bundle": 0, "cri": 0})

    def add(self, source: Source) -> None:
        self.events += 1
        if source == "host":
            self.host += 1
        elif source == "unresolved":
            self.unresolved += 1
        else:
            self.resolved += 1
            self.sources[source] += 1
