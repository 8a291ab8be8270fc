"""Potential clients: the containers that mount a runtime socket and were not seen calling.

The reporter names a client once it calls a deprecated API while the tracer watches; a job that
runs weekly is named only in the week it runs. A container that mounts the runtime's socket (or
a directory holding it) can call it at any time, and its bundle says so before it does
(``IndexedContainer.sockets``, ``ociresolve.mounts``): those not attributed already are listed
beside the attributed clients, as "mounts the socket, not seen calling".
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from typing import Final

import msgspec

from ociresolve.deprecations.correlate import Attribution
from ociresolve.model import IndexedContainer

# Listed at most (the rest is counted): a node runs a few hundred containers at most, and few
# of them mount a runtime socket.
MAX_POTENTIAL: Final = 1000

Workload = Callable[[str | None], str | None]


class PotentialClient(msgspec.Struct, frozen=True, kw_only=True):
    """A container whose bind mounts reach ``sockets`` (host paths), and its pod's workload
    when known."""

    pod_namespace: str | None
    pod_name: str | None
    container: str | None
    container_id: str
    sockets: tuple[str, ...]
    workload: str | None = None


def socket_mounts(
    records: Iterable[IndexedContainer], *, exclude: Collection[str] = ()
) -> list[IndexedContainer]:
    """The live containers (not sandboxes, not in their grace period) that mount a runtime
    socket, but those whose id is in ``exclude`` (the daemon's own), by pod and name."""
    found = [
        record
        for record in records
        if record.sockets
        and not record.removed
        and record.meta.container_type == "container"
        and record.meta.container_id not in exclude
    ]
    found.sort(key=_order)
    return found


def potential_clients(
    records: Iterable[IndexedContainer],
    attributed: Iterable[Attribution],
    *,
    workloads: Workload | None = None,
    exclude: Collection[str] = (),
    limit: int = MAX_POTENTIAL,
) -> tuple[list[PotentialClient], int]:
    """The containers of ``socket_mounts`` that no attribution names (by container id, or by
    pod and container: a restarted container has a new id), with their workloads; at most
    ``limit`` of them, and how many were left out."""
    ids: set[str] = set()
    names: set[tuple[str | None, str | None, str | None]] = set()
    for row in attributed:
        if row.container_id:
            ids.add(row.container_id)
        who = row.identity
        if who.pod_name is not None:
            names.add((who.pod_namespace, who.pod_name, who.container))
    rows = [
        record
        for record in socket_mounts(records, exclude=exclude)
        if record.meta.container_id not in ids
        and (record.meta.pod_namespace, record.meta.pod_name, record.meta.container_name)
        not in names
    ]
    listed = [_client(record, workloads) for record in rows[:limit]]
    return listed, len(rows) - len(listed)


def _client(record: IndexedContainer, workloads: Workload | None) -> PotentialClient:
    meta = record.meta
    return PotentialClient(
        pod_namespace=meta.pod_namespace,
        pod_name=meta.pod_name,
        container=meta.container_name,
        container_id=meta.container_id or "",
        sockets=record.sockets,
        workload=workloads(meta.container_id) if workloads is not None else None,
    )


def _order(record: IndexedContainer) -> tuple[str, str, str, str]:
    meta = record.meta
    return (
        meta.pod_namespace or "",
        meta.pod_name or "",
        meta.container_name or "",
        meta.container_id or "",
    )
