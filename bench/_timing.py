"""Side-by-side timing: medians over repeats, in one process, so ratios survive a noisy host."""

from __future__ import annotations

import statistics
import time
import timeit
from collections.abc import Callable
from typing import Any, TypeVar

_T = TypeVar("_T")


def median_seconds(fn: Callable[[], Any], *, repeat: int = 15, min_time: float = 0.02) -> float:
    """Median seconds per call of ``fn`` over ``repeat`` batches of at least ``min_time`` each."""
    timer = timeit.Timer(fn)
    number, _ = timer.autorange()
    number = max(1, int(number * min_time / 0.2)) if number > 1 else 1
    return statistics.median(t / number for t in timer.repeat(repeat=repeat, number=number))


def fmt(seconds: float) -> str:
    if seconds < 1e-6:
        return f"{seconds * 1e9:8.0f} ns"
    if seconds < 1e-3:
        return f"{seconds * 1e6:8.2f} us"
    if seconds < 1:
        return f"{seconds * 1e3:8.2f} ms"
    return f"{seconds:8.2f} s "


def row(name: str, seconds: float, baseline: float | None = None, target: str = "") -> str:
    ratio = f"{seconds / baseline:6.2f}x" if baseline else "       "
    return f"  {name:<58} {fmt(seconds)}  {ratio}  {target}"


def interleaved(*fns: Callable[[], Any], rounds: int = 5, repeat: int = 5) -> list[float]:
    """Medians of ``fns`` measured in alternation, so that a noisy moment hits all of them."""
    samples: list[list[float]] = [[] for _ in fns]
    for _ in range(rounds):
        for fn, times in zip(fns, samples, strict=True):
            times.append(median_seconds(fn, repeat=repeat))
    return [statistics.median(times) for times in samples]


def wait_for(fn: Callable[[], _T | None], what: str, timeout: float = 10.0) -> _T:
    """Poll ``fn`` until it returns something; after ``timeout``, a ``TimeoutError``."""
    deadline = time.monotonic() + timeout
    while (value := fn()) is None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} never happened")
        time.sleep(0.005)
    return value
