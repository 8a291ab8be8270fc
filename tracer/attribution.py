"""Which pod and container made a connect() call: the cgroup id the kernel captured, then the
process's live cgroup (which falls back to the bundle on disk and the CRI).

Only the public ``ociresolve`` API is used.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import ociresolve
from ociresolve.tracer.events import ConnectEvent

# ``index``/``bundle``/``cri``: where the answer came from (``ociresolve.Resolution.source``);
# ``host``: a process in no container (if it exited before its event was read: one in the root
# cgroup or in a cgroup where a live host process was seen); ``unresolved``: a container no
# runtime root nor the CRI knows, or an exited process whose cgroup id is not known.
Source = Literal["index", "bundle", "cri", "host", "unresolved"]


class Attribution(NamedTuple):
    """Who made a call: ``meta`` for a resolved container, ``None`` otherwise.

    ``container_id`` is known for a resolved container, and for an unresolved one whose live
    cgroup named it.
    """

    meta: ociresolve.ContainerMeta | None
    source: Source
    container_id: str | None = None


HOST = Attribution(None, "host")
UNRESOLVED = Attribution(None, "unresolved")

# bpf_get_current_cgroup_id() of the cgroup v2 root: where host processes outside any slice
# run. Other host cgroups are learned from the live processes seen in them.
ROOT_CGROUP_ID = 1
_HOST_CGROUPS_MAX = 4096


class Attributor:
    """Resolves events to containers with a started ``ociresolve.Resolver``, or any
    ``ociresolve.Resolving`` (a ``RemoteResolver`` that asks the node's daemon)."""

    def __init__(self, resolver: ociresolve.Resolving) -> None:
        self._resolver = resolver
        # Cgroup ids of live host processes seen so far (cgroup v2 ids are not reused), so a
        # host process that exits before its event is read is still known as host.
        self._host_cgroups: set[int] = {ROOT_CGROUP_ID}

    def attribute(self, event: ConnectEvent) -> Attribution:
        # A host cgroup seen before stays one (cgroup v2 ids are not reused): checked first, so
        # the node's own callers pay neither a lookup that after an index change may scan, or
        # through the daemon costs an RPC, nor a /proc read.
        if event.cgroup_id in self._host_cgroups:
            return HOST
        resolver = self._resolver
        # The kernel's cgroup id: right even when the process has exited since (its container
        # stays in the index for the resolver's grace period), and ~0.1 µs.
        meta = resolver.lookup_cgroup_id(event.cgroup_id)
        if meta is not None:
            return Attribution(meta, "index", meta.container_id)
        try:
            answer = resolver.resolve_pid(event.tgid)
            if answer is not None:
                return Attribution(answer.meta, answer.source, answer.meta.container_id)
            # resolve_pid says None for a host process and for a container nobody knows.
            ref = resolver.cgroup_of(event.tgid)
        except ociresolve.ProcessNotFound:
            # Exited: its cgroup id is none of a known container's.
            return HOST if event.cgroup_id in self._host_cgroups else UNRESOLVED
        except ociresolve.OciresolveError:
            return UNRESOLVED  # /proc/<pid>/cgroup unreadable
        if ref is None:
            if len(self._host_cgroups) < _HOST_CGROUPS_MAX:
                self._host_cgroups.add(event.cgroup_id)
            return HOST
        return Attribution(None, "unresolved", ref.container_id)
