"""Fakes for the tracer's unit tests: a probe that replays batches, events, a logfmt parser."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ociresolve.tracer.errors import TracerUnavailable
from ociresolve.tracer.events import ConnectEvent, Family

SOCKET = "/run/containerd/containerd.sock"
DEFAULT_SOCKETS = (SOCKET, "/run/k3s/containerd/containerd.sock")
DEFAULT_EXCLUDED_COMMS = ("kubelet", "containerd", "ctr")


def event(
    *,
    tgid: int = 4242,
    cgroup_id: int = 1,
    comm: str = "client",
    address: str = SOCKET,
    family: Family = "unix",
    time_ns: int = 1_000_000_000,
    port: int | None = None,
) -> ConnectEvent:
    return ConnectEvent(time_ns, tgid, tgid, cgroup_id, comm, family, address, port)


class FakeProbe:
    """Replays ``batches`` (one per poll), then stops the loop: by setting ``stop``, or by
    sending this process SIGTERM as a user would (``signal_when_done``)."""

    def __init__(
        self,
        batches: Sequence[Sequence[ConnectEvent]] = (),
        *,
        stop: threading.Event | None = None,
        signal_when_done: bool = False,
        lost: int = 0,
        fail_start: str | None = None,
        options: dict[str, Any] | None = None,
    ) -> None:
        self.batches = [list(b) for b in batches]
        self.stop = stop
        self.signal_when_done = signal_when_done
        self._lost = lost
        self.fail_start = fail_start
        self.options = options or {}
        self.polls: list[int] = []
        self.started = self.closed = False

    def start(self) -> FakeProbe:
        if self.fail_start is not None:
            raise TracerUnavailable(self.fail_start)
        self.started = True
        return self

    def poll(self, timeout_ms: int) -> list[ConnectEvent]:
        assert self.started and not self.closed
        self.polls.append(timeout_ms)
        if self.batches:
            return self.batches.pop(0)
        if self.stop is not None:
            self.stop.set()
        elif self.signal_when_done:
            self.signal_when_done = False
            os.kill(os.getpid(), signal.SIGTERM)
        return []

    @property
    def lost(self) -> int:
        return self._lost

    def close(self) -> None:
        self.closed = True


@dataclass
class FakeProbeKind:
    """Stands for the ``tracer.probe`` module: records every probe it makes."""

    batches: list[list[ConnectEvent]] = field(default_factory=list)
    lost: int = 0
    fail_start: str | None = None
    made: list[FakeProbe] = field(default_factory=list)
    DEFAULT_SOCKETS: tuple[str, ...] = DEFAULT_SOCKETS
    DEFAULT_EXCLUDED_COMMS: tuple[str, ...] = DEFAULT_EXCLUDED_COMMS

    def ConnectProbe(self, **options: Any) -> FakeProbe:
        probe = FakeProbe(
            self.batches,
            signal_when_done=True,
            lost=self.lost,
            fail_start=self.fail_start,
            options=options,
        )
        self.made.append(probe)
        return probe


_UNESCAPE = {"n": "\n", "r": "\r", "t": "\t", '"': '"', "\\": "\\"}


def parse_logfmt(line: str) -> list[tuple[str, str]]:
    """A strict logfmt reader (go-logfmt's rules), independent of ``ociresolve.render``."""
    assert "\n" not in line
    pairs: list[tuple[str, str]] = []
    i = 0
    while i < len(line):
        eq = line.index("=", i)
        key = line[i:eq]
        assert key and " " not in key and '"' not in key, (key, line)
        i = eq + 1
        if line[i : i + 1] == '"':
            i += 1
            chars: list[str] = []
            while line[i] != '"':
                if line[i] == "\\":
                    code = line[i + 1]
                    if code in "uU":
                        width = 4 if code == "u" else 8
                        chars.append(chr(int(line[i + 2 : i + 2 + width], 16)))
                        i += 2 + width
                    else:
                        chars.append(_UNESCAPE[code])
                        i += 2
                else:
                    chars.append(line[i])
                    i += 1
            i += 1
            value = "".join(chars)
        else:
            end = line.find(" ", i)
            end = len(line) if end < 0 else end
            value = line[i:end]
            assert value and "=" not in value and '"' not in value, (value, line)
            i = end
        pairs.append((key, value))
        if i < len(line):
            assert line[i] == " ", line
            i += 1
    return pairs
