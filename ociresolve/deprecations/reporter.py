"""The deprecation reporter: polls containerd's warnings, writes a line per new occurrence and,
when the connect tracer feeds it the connections to the containerd socket, one line per client
that the occurrence is attributed to, with its confidence so far.

The lines (logfmt, or JSON objects with the same fields, on the reporter's stream)::

    msg="found CRI v1alpha2 API deprecation warning" node=... deprecation=... lastOccurrence=...
    msg="deprecated API client" node=... deprecation=... pod=<ns>/<pod> container=... comm=...
        confidence=0.91 occurrences=10

Occurrences already there when polling starts are reported (``existing=true``) but not
attributed: the connections that caused them may predate the tracer.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Final, TextIO

from ociresolve.deprecations.correlate import Attribution, Connection, Correlator
from ociresolve.deprecations.lines import Format, client_fields, occurrence_fields, render
from ociresolve.deprecations.poller import DEFAULT_INTERVAL, Occurrence, Poller, Source

log = logging.getLogger(__name__)

# A client line is written for each candidate with at least this share of an occurrence.
MIN_SHARE: Final = 0.05


class Reporter:
    """``run(stop)`` polls ``source`` every ``interval`` seconds until ``stop`` is set.

    ``connected`` may be called from any thread (the tracer's); without it, only occurrences are
    reported. ``clock`` gives the wall time of the lines, in ns.
    """

    def __init__(
        self,
        source: Source,
        *,
        node: str,
        stream: TextIO,
        interval: float = DEFAULT_INTERVAL,
        correlator: Correlator | None = None,
        clock: Callable[[], int] = time.time_ns,
        output: Format = "logfmt",
    ) -> None:
        self.source = source
        self.node = node
        self.stream = stream
        self.interval = interval
        self.correlator = correlator
        self.clock = clock
        self.output = output
        self.occurrences = 0
        self._lock = threading.Lock()

    def connected(self, connection: Connection) -> int | None:
        """A connection to the containerd socket, as the tracer saw it; the handle is for
        ``closed`` (``None`` when nothing is correlated)."""
        if self.correlator is None:
            return None
        with self._lock:
            return self.correlator.connected(connection)

    def closed(self, handle: int, close_ns: int) -> None:
        """The connection ``handle`` ended at ``close_ns`` (ns since the epoch)."""
        if self.correlator is not None:
            with self._lock:
                self.correlator.closed(handle, close_ns)

    def clients(self) -> list[Attribution]:
        """Every attributed client so far, most confident first."""
        if self.correlator is None:
            return []
        with self._lock:
            return self.correlator.attributions()

    def close(self) -> None:
        close = getattr(self.source, "close", None)
        if close is not None:
            close()

    def run(self, stop: threading.Event) -> None:
        for occurrence in Poller(self.source, interval=self.interval, stop=stop).run():
            self.handle(occurrence)

    def handle(self, occurrence: Occurrence) -> None:
        warning = occurrence.deprecation
        self.occurrences += 1
        now = self.clock()
        lines = [
            occurrence_fields(
                time_ns=now,
                node=self.node,
                deprecation=warning.id,
                last_occurrence_ns=warning.last_occurrence_ns,
                existing=occurrence.existing,
            )
        ]
        if (
            self.correlator is not None
            and not occurrence.existing
            and warning.last_occurrence_ns is not None
        ):
            with self._lock:
                evidence = self.correlator.occurred(warning.id, warning.last_occurrence_ns)
                standings = {a.identity: a for a in self.correlator.attributions(warning.id)}
            for candidate in evidence.candidates:
                standing = standings.get(candidate.identity)
                if candidate.share >= MIN_SHARE and standing is not None:
                    lines.append(client_fields(standing, time_ns=now, node=self.node))
        self.stream.write("".join(render(line, self.output) + "\n" for line in lines))
        self.stream.flush()
