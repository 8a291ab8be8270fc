"""Reading a started ``ConnectProbe`` in the BPF tests: poll until the events wanted arrived,
or for a while to see that none comes."""

from __future__ import annotations

import time
from collections.abc import Callable

from ociresolve.tracer.events import ConnectEvent
from ociresolve.tracer.probe import ConnectProbe


def collect(
    probe: ConnectProbe, until: Callable[[list[ConnectEvent]], bool], timeout: float = 5.0
) -> list[ConnectEvent]:
    """Polls until ``until(events)`` holds (or the timeout); every event seen."""
    events: list[ConnectEvent] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        events.extend(probe.poll(5))
        if until(events):
            break
    return events


def settle(probe: ConnectProbe, seconds: float = 0.3) -> list[ConnectEvent]:
    """Every event that arrives within ``seconds`` (for checking that none comes)."""
    return collect(probe, lambda _events: False, timeout=seconds)
