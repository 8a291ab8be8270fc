"""``ociresolve deprecations``: the runtime's deprecation warnings, like ``ctr deprecations list``
(a table: ID, LAST OCCURRENCE, MESSAGE) or one JSON object per line."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final, TextIO

from ociresolve.deprecations.client import (
    CONTAINERD_SOCKETS,
    Deprecation,
    IntrospectionClient,
    containerd_socket,
)
from ociresolve.deprecations.errors import RuntimeUnreachable
from ociresolve.hostpaths import HostPaths
from ociresolve.render import json_line, rfc3339_nano, table

COLUMNS: Final = ("ID", "LAST OCCURRENCE", "MESSAGE")


def fetch(host_root: str, socket: str | None, *, timeout: float) -> list[Deprecation]:
    """The warnings of the containerd at ``socket`` (a host path), else at the first of
    containerd's default sockets that exists below ``host_root``.

    Raises ``ServiceMissing`` (containerd older than 1.7) and ``RuntimeUnreachable``.
    """
    paths = HostPaths(host_root)
    path = containerd_socket(paths, socket)
    if path is None:
        first, *others = map(paths.host, CONTAINERD_SOCKETS)
        elsewhere = f", nor at {', '.join(others)}" if others else ""
        raise RuntimeUnreachable(first, f"no socket there{elsewhere} (see --containerd-socket)")
    with IntrospectionClient(path, timeout=timeout) as client:
        return client.deprecations()


def row(warning: Deprecation) -> dict[str, Any]:
    """The JSON object of one warning; ``last_occurrence`` is RFC 3339 UTC text, or null."""
    last = warning.last_occurrence_ns
    return {
        "id": warning.id,
        "message": warning.message,
        "last_occurrence": None if last is None else rfc3339_nano(last),
    }


def write(warnings: Sequence[Deprecation], stream: TextIO, *, as_json: bool) -> None:
    """A table (its header even when there is no warning), or JSON Lines (nothing for none)."""
    if as_json:
        for warning in warnings:
            print(json_line(row(warning)), file=stream)
        return
    rows = ((r["id"], r["last_occurrence"], r["message"]) for r in (row(w) for w in warnings))
    print(table(COLUMNS, rows), file=stream)
