"""Who an event's pid and cgroup id belong to, for ``ociresolve enrich``.

The cgroup id is what the kernel said when the event happened: it is asked first, and it still
names a container whose processes have all exited (the index keeps a removed container for its
grace period). The pid is read from ``/proc`` now, after the event: it names the process that
has that pid now. So it is asked only when the cgroup id is not on the line or names no
container (a cgroup v1 node), and its answer is dropped when the line's cgroup id says the
event came from another container's cgroup (the pid was reused meanwhile).

A pid is read once per batch of lines (``new_batch``: the lines read together), not once per
line: a burst of events of one process costs one read of its cgroup.
"""

from __future__ import annotations

from typing import Final, Protocol

from ociresolve.errors import OciresolveError
from ociresolve.model import CgroupRef, ContainerMeta, IndexedContainer, Resolution
from ociresolve.render import short_id

# The fields added to an enriched line, after the prefix.
FIELDS: Final = ("namespace", "pod", "container", "container_id")
_CACHED: Final = 4096  # fields kept, per container record seen

Fields = tuple[tuple[str, str], ...]


class Resolving(Protocol):
    """What enrich needs of a resolver: ``Resolver`` (this process's index) or
    ``RemoteResolver`` (the daemon's, mirrored)."""

    def lookup_cgroup_id(self, cgroup_id: int) -> ContainerMeta | None: ...

    def cgroup_of(self, pid: int) -> CgroupRef | None: ...

    def resolve_container(self, container_id: str) -> Resolution | None: ...

    def container(self, container_id: str) -> IndexedContainer | None: ...


class Lookup:
    """``fields(pid, cgroup_id)``: the pod fields of an event, empty when it is not in a
    Kubernetes container (a host process, an exited process with no cgroup id on its line)."""

    def __init__(self, resolver: Resolving, prefix: str = "k8s_") -> None:
        self.resolver = resolver
        self.names = tuple(prefix + name for name in FIELDS)
        self.mismatches = 0  # a pid now in another container than the line's cgroup id
        self._pids: dict[tuple[int, int | None], ContainerMeta | None] = {}
        # id(record) -> (the record, held so that its id is not reused; its fields)
        self._fields: dict[int, tuple[ContainerMeta, Fields]] = {}

    def new_batch(self) -> None:
        self._pids.clear()

    def fields(self, pid: int | None, cgroup_id: int | None) -> Fields:
        meta = None if cgroup_id is None else self.resolver.lookup_cgroup_id(cgroup_id)
        if meta is None and pid is not None:
            meta = self._by_pid(pid, cgroup_id)
        if meta is None:
            return ()
        cached = self._fields.get(id(meta))
        if cached is not None and cached[0] is meta:
            return cached[1]
        values = (
            meta.pod_namespace,
            meta.pod_name,
            meta.container_name,
            short_id(meta.container_id),
        )
        fields = tuple(
            (name, value) for name, value in zip(self.names, values, strict=True) if value
        )
        if len(self._fields) > _CACHED:
            self._fields.clear()
        self._fields[id(meta)] = (meta, fields)
        return fields

    def _by_pid(self, pid: int, cgroup_id: int | None) -> ContainerMeta | None:
        key = (pid, cgroup_id)
        if key in self._pids:
            return self._pids[key]
        meta = self._pids[key] = self._read(pid, cgroup_id)
        return meta

    def _read(self, pid: int, cgroup_id: int | None) -> ContainerMeta | None:
        try:
            ref = self.resolver.cgroup_of(pid)
        except OciresolveError:  # exited, or its cgroup unreadable: the line stays as it is
            return None
        if ref is None:
            return None
        found = self.resolver.resolve_container(ref.container_id)
        if found is None:
            return None
        if cgroup_id is not None:
            record = self.resolver.container(ref.container_id)
            if record is not None and record.cgroup_id not in (None, cgroup_id):
                self.mismatches += 1
                return None
        return found.meta
