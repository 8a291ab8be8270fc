"""A circuit breaker: while a runtime is down, lookups return at once instead of waiting."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Final, Literal

State = Literal["closed", "open", "half-open"]

FAILURES_TO_OPEN: Final = 3


class Breaker:
    """Closed: calls go through. ``failures_to_open`` failures in a row open it: calls are
    refused until the backoff has passed, then one probe is let through (half-open); its
    success closes the breaker, its failure reopens it with the backoff doubled (up to
    ``max_backoff``)."""

    def __init__(
        self,
        *,
        failures_to_open: int = FAILURES_TO_OPEN,
        backoff: float = 1.0,
        max_backoff: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.failures_to_open = failures_to_open
        self.base_backoff = backoff
        self.max_backoff = max_backoff
        self._clock = clock
        self._lock = threading.Lock()
        self._state: State = "closed"
        self._failures = 0
        self._backoff = backoff
        self._retry_at = 0.0
        self.opened = 0  # times it opened, for metrics

    @property
    def state(self) -> State:
        return self._state

    def allow(self) -> bool:
        with self._lock:
            if self._state == "closed":
                return True
            if self._state == "open" and self._clock() >= self._retry_at:
                self._state = "half-open"
                return True  # the one probe
            return False

    def success(self) -> None:
        with self._lock:
            self._state = "closed"
            self._failures = 0
            self._backoff = self.base_backoff

    def failure(self) -> None:
        with self._lock:
            self._failures += 1
            if self._state == "half-open":
                self._backoff = min(self._backoff * 2, self.max_backoff)
            elif self._failures < self.failures_to_open:
                return
            if self._state != "open":
                self.opened += 1
            self._state = "open"
            self._retry_at = self._clock() + self._backoff
