"""``--dedup``: one line per (pid, container, address) per time window."""

from __future__ import annotations

from typing import Final

Key = tuple[int, str | None, str]

# Expired keys are dropped when the table grows past this (and at every summary).
_PURGE_AT: Final = 65_536


class Dedup:
    """Whether an event repeats one reported less than ``window`` seconds before.

    The window starts at the reported event: a process that keeps connecting is reported once
    per window, not once ever. Times are monotonic nanoseconds (the events' own clock).
    """

    def __init__(self, window: float) -> None:
        if window <= 0:
            raise ValueError(f"dedup window must be positive, not {window}")
        self._window_ns = int(window * 1e9)
        self._reported: dict[Key, int] = {}

    def __len__(self) -> int:
        return len(self._reported)

    def repeat(self, key: Key, now_ns: int) -> bool:
        """True to suppress the event; False to report it (and start its window)."""
        last = self._reported.get(key)
        if last is not None and now_ns - last < self._window_ns:
            return True
        if last is None and len(self._reported) >= _PURGE_AT:
            self.expire(now_ns)
        self._reported[key] = now_ns
        return False

    def expire(self, now_ns: int) -> None:
        """Forget the keys whose window has ended."""
        horizon = now_ns - self._window_ns
        self._reported = {k: t for k, t in self._reported.items() if t > horizon}
