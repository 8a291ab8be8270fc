"""The poll loop: drain the probe, resolve each event, write its line, summarize."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Protocol

from ociresolve.tracer.attribution import Attribution, Attributor
from ociresolve.tracer.counts import Counts
from ociresolve.tracer.dedup import Dedup
from ociresolve.tracer.events import ConnectEvent
from ociresolve.tracer.output import Output

POLL_MS = 5

# observer(event, attribution) for every connect event that is reported, repeats included
# (deprecation correlation); lifetime(event) for every other event (close, failed, exit with
# lifetimes; send with activity), in the probe's order.
Observer = Callable[[ConnectEvent, Attribution], None]
LifetimeObserver = Callable[[ConnectEvent], None]


class Probe(Protocol):
    """What the loop needs of ``tracer.probe.ConnectProbe`` (and of the tests' fakes)."""

    def poll(self, timeout_ms: int) -> list[ConnectEvent]: ...

    @property
    def lost(self) -> int: ...


class TraceLoop:
    """Reads batches from a started probe until ``stop`` is set.

    Each event is resolved and written (and flushed) before the next; ``--dedup`` repeats are
    counted, not written. A connect the kernel marked ``excluded`` (its thread name is on the
    exclude list) is dropped, and counted, only when its caller is a host process: the
    exclusions name the node's own components, and inside a container any process may take
    their names. A summary line every ``summary_interval`` seconds (0: none), and a
    last one when the loop stops, after the events already buffered are drained.
    """

    def __init__(
        self,
        probe: Probe,
        attributor: Attributor,
        output: Output,
        *,
        dedup: Dedup | None = None,
        summary_interval: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        observer: Observer | None = None,
        lifetime: LifetimeObserver | None = None,
    ) -> None:
        self.probe = probe
        self.observer = observer
        self.lifetime = lifetime
        self.attributor = attributor
        self.output = output
        self.dedup = dedup
        self.summary_interval = summary_interval
        self.clock = clock
        self.counts = Counts()

    def run(self, stop: threading.Event) -> Counts:
        interval = self.summary_interval
        next_summary = self.clock() + interval
        while not stop.is_set():
            self.handle(self.probe.poll(POLL_MS))
            if interval > 0 and self.clock() >= next_summary:
                self.summarize()
                next_summary = self.clock() + interval
        self.handle(self.probe.poll(0))  # what was already buffered when asked to stop
        self.summarize(final=True)
        return self.counts

    def handle(self, events: list[ConnectEvent]) -> None:
        attribute = self.attributor.attribute
        counts = self.counts
        dedup = self.dedup
        connection = self.output.connection
        observer = self.observer
        lifetime = self.lifetime
        for event in events:
            if event.kind != "connect":
                if lifetime is not None:
                    lifetime(event)
                continue
            who = attribute(event)
            if event.excluded and who.source == "host":
                counts.excluded += 1
                continue
            counts.add(who.source)
            if observer is not None:
                observer(event, who)
            if dedup is not None and dedup.repeat(
                (event.tgid, who.container_id, event.address), event.time_ns
            ):
                counts.suppressed += 1
                continue
            connection(event, who)

    def summarize(self, *, final: bool = False) -> None:
        self.counts.lost = self.probe.lost
        if self.dedup is not None:
            self.dedup.expire(self.output.clock.now_ns())
        self.output.summary(self.counts, final=final)
