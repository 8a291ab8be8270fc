"""The filter: event lines in, the same lines with pod fields out, in order.

Lines are read as they come (whatever one read of the input returns) and each batch is
written, with one write, as soon as it is enriched: no line waits for the next one, and a burst
costs one write, not one per line. A line that cannot be read, or whose keys name no
container, is written unchanged; a line longer than ``LINE_MAX`` is passed through as it comes,
unread. Bytes are bytes: a line that is not UTF-8 passes through as it is.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Callable
from typing import Final

from ociresolve.enrich.formats import LINE_MAX, TOO_LONG, Format, Unreadable
from ociresolve.enrich.lookup import Lookup

READ_SIZE: Final = 64 * 1024


class Counts:
    """What happened to the lines so far."""

    def __init__(self) -> None:
        self.lines = 0
        self.enriched = 0
        self.unresolved = 0  # read, but no Kubernetes container (a host process, exited)
        self.passed: collections.Counter[str] = collections.Counter()  # unread, by reason

    def fields(self) -> list[tuple[str, object]]:
        passed = ((reason, self.passed[reason]) for reason in sorted(self.passed))
        return [
            ("lines", self.lines),
            ("enriched", self.enriched),
            ("unresolved", self.unresolved),
            *passed,
        ]


class Enricher:
    """Enrich lines of ``form`` with ``lookup``'s fields."""

    def __init__(self, form: Format, lookup: Lookup) -> None:
        self.format = form
        self.lookup = lookup
        self.counts = Counts()

    def line(self, line: bytes) -> bytes:
        """One line (without its newline), enriched or as it was."""
        self.counts.lines += 1
        body, cr = (line[:-1], b"\r") if line.endswith(b"\r") else (line, b"")
        if len(body) > LINE_MAX:
            self.counts.passed[TOO_LONG] += 1
            return line
        try:
            keys = self.format.keys(body)
        except Unreadable as exc:
            self.counts.passed[exc.reason] += 1
            return line
        fields = self.lookup.fields(keys.pid, keys.cgroup_id)
        if not fields:
            self.counts.unresolved += 1
            return line
        self.counts.enriched += 1
        return self.format.add(body, fields) + cr

    def batch(self, lines: list[bytes]) -> bytes:
        """Complete lines, read together, as the bytes to write (each with its newline)."""
        self.lookup.new_batch()
        out = [self.line(line) for line in lines]
        out.append(b"")
        return b"\n".join(out)

    def run(self, read: Callable[[int], bytes], write: Callable[[bytes], None]) -> None:
        """Until ``read`` returns ``b""`` (the end of the input)."""
        pending = b""
        skipping = False  # in a line longer than LINE_MAX: passed through as it comes
        while chunk := read(READ_SIZE):
            if skipping:
                end = chunk.find(b"\n")
                if end < 0:
                    write(chunk)
                    continue
                write(chunk[: end + 1])
                chunk, skipping = chunk[end + 1 :], False
            lines = (pending + chunk).split(b"\n")
            pending = lines.pop()
            if len(pending) > LINE_MAX:
                self.counts.lines += 1
                self.counts.passed[TOO_LONG] += 1
                tail, pending, skipping = pending, b"", True
                write((self.batch(lines) if lines else b"") + tail)
            elif lines:
                write(self.batch(lines))
        if pending:  # a last line without a newline keeps having none
            self.lookup.new_batch()
            write(self.line(pending))


def fd_reader(fd: int) -> Callable[[int], bytes]:
    def read(size: int) -> bytes:
        return os.read(fd, size)

    return read


def fd_writer(fd: int) -> Callable[[bytes], None]:
    """Write everything (a pipe may take part of it)."""

    def write(data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]

    return write
