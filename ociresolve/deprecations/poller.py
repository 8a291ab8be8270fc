"""Polls containerd's deprecation warnings and yields each new occurrence once.

containerd keeps one entry per deprecation id, with the time of its *last* occurrence: a new
occurrence is an id not seen before, or one whose ``last_occurrence`` changed since the previous
poll. The first successful poll reports the warnings already there, once, marked ``existing``
(they may be older than whoever reads them). The runtime being down, or too old, is logged once
(again when the kind of error changes, and when it answers again) and retried with a backoff that
doubles up to ``backoff_max``; ``stop`` ends the loop between polls. The clock and the wait are
injectable, so tests run without sleeping.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Final, NamedTuple, Protocol

from ociresolve.deprecations.client import Deprecation
from ociresolve.deprecations.errors import IntrospectionError

log = logging.getLogger(__name__)

DEFAULT_INTERVAL: Final = 5.0
DEFAULT_BACKOFF_MAX: Final = 60.0


class Source(Protocol):
    """What the poller reads: an ``IntrospectionClient``, or a fake."""

    endpoint: str

    def deprecations(self) -> list[Deprecation]: ...


class Occurrence(NamedTuple):
    """A new occurrence of a deprecation; ``existing``: already there at the first poll."""

    deprecation: Deprecation
    existing: bool = False


class Poller:
    """Reads ``source`` every ``interval`` seconds until ``stop`` is set.

    ``clock`` is a monotonic clock in seconds; ``wait(seconds)`` waits and says whether to
    stop (by default ``stop.wait``).
    """

    def __init__(
        self,
        source: Source,
        *,
        interval: float = DEFAULT_INTERVAL,
        backoff_max: float = DEFAULT_BACKOFF_MAX,
        stop: threading.Event | None = None,
        clock: Callable[[], float] = time.monotonic,
        wait: Callable[[float], bool] | None = None,
    ) -> None:
        if interval <= 0 or backoff_max < interval:
            raise ValueError("interval must be positive and at most backoff_max")
        self.source = source
        self.interval = interval
        self.backoff_max = backoff_max
        self.stop = stop or threading.Event()
        self._clock = clock
        self._wait = wait or self.stop.wait
        # id -> last_occurrence_ns of the previous successful poll; None before the first one.
        self._last: dict[str, int | None] | None = None
        self.polls = 0
        self.failures = 0

    def poll(self) -> list[Occurrence]:
        """One read: the occurrences that are new since the previous one.

        Raises ``IntrospectionError`` (``ServiceMissing``, ``RuntimeUnreachable``).
        """
        warnings = self.source.deprecations()
        first = self._last is None
        previous = self._last or {}
        current: dict[str, int | None] = {}
        found: list[Occurrence] = []
        for warning in warnings:
            if warning.id in current:
                continue  # containerd keeps one entry per id; never report one twice
            current[warning.id] = warning.last_occurrence_ns
            if first:
                found.append(Occurrence(warning, existing=True))
            elif warning.id not in previous or previous[warning.id] != warning.last_occurrence_ns:
                found.append(Occurrence(warning))
        # Only the ids containerd still reports are kept: a restarted containerd starts empty,
        # and what it reports afterwards is new.
        self._last = current
        self.polls += 1
        return found

    def __iter__(self) -> Iterator[Occurrence]:
        return self.run()

    def run(self) -> Iterator[Occurrence]:
        """Poll until ``stop``, yielding each new occurrence as it is found."""
        failing: tuple[str, str | None] | None = None  # the current streak's kind of error
        backoff = self.interval
        due = self._clock()
        while not self.stop.is_set():
            try:
                found = self.poll()
            except IntrospectionError as exc:
                self.failures += 1
                kind = (type(exc).__name__, exc.code)
                if kind != failing:
                    log.warning(
                        "cannot read containerd's deprecation warnings; retrying",
                        extra={"fields": {"socket": self.source.endpoint, "error": str(exc)}},
                    )
                    failing = kind
                if self._wait(backoff):
                    return
                backoff = min(backoff * 2, self.backoff_max)
                due = self._clock()
                continue
            if failing is not None:
                log.info(
                    "reading containerd's deprecation warnings again",
                    extra={"fields": {"socket": self.source.endpoint}},
                )
                failing, backoff = None, self.interval
            yield from found
            now = self._clock()
            due = max(due + self.interval, now)  # a fixed cadence; no burst after a stall
            if self._wait(due - now):
                return
