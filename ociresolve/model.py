"""The records ociresolve hands out: small, frozen, typed."""

from __future__ import annotations

import time
from typing import Literal

import msgspec

ContainerType = Literal["container", "sandbox"]


class ContainerMeta(msgspec.Struct, frozen=True, kw_only=True):
    """Who a container is, as far as the node knows. Unknown values are ``None``.

    ``runtime`` is the runtime that wrote the record ("containerd", "cri-o", ...).
    For a sandbox (the pod's pause/infra container) ``container_id == sandbox_id`` and
    ``container_name`` is ``None``.
    """

    runtime: str
    container_type: ContainerType
    container_id: str | None = None
    sandbox_id: str | None = None
    pod_name: str | None = None
    pod_namespace: str | None = None
    pod_uid: str | None = None
    container_name: str | None = None
    image: str | None = None


QosClass = Literal["guaranteed", "burstable", "besteffort"]


class CgroupRef(msgspec.Struct, frozen=True, kw_only=True):
    """What a cgroup path says about the container it belongs to.

    ``runtime`` is only a hint from the path's shape (``cri-containerd-``, ``crio-``, ...);
    a bare id under ``kubepods`` does not tell containerd from dockershim, so it is ``None``.
    """

    container_id: str
    pod_uid: str | None = None
    qos: QosClass | None = None
    runtime: str | None = None


Change = Literal["added", "updated", "removed"]


class IndexedContainer(msgspec.Struct, frozen=True, kw_only=True):
    """A container as the live index knows it.

    ``bundle`` is its bundle directory, ``cgroups_path`` its spec's ``linux.cgroupsPath``.
    ``pid`` is the init process's PID from the runtime's pid file, ``cgroup_id`` the inode of
    its cgroup v2 directory (what BPF's ``bpf_get_current_cgroup_id()`` returns), each ``None``
    until known. ``removed`` is true during the grace period after the container went away.
    ``sockets`` are the host paths of the runtime sockets its bind mounts reach
    (``ociresolve.mounts``): it can call that runtime's APIs.
    """

    meta: ContainerMeta
    bundle: str
    cgroups_path: str | None = None
    pid: int | None = None
    cgroup_id: int | None = None
    removed: bool = False
    sockets: tuple[str, ...] = ()


class StandaloneContainer(msgspec.Struct, frozen=True, kw_only=True):
    """A container the node runs that is not a Kubernetes one (podman's, or one of containerd
    outside CRI): no pod to report, only what it is.

    ``runtime`` is the runtime that runs it ("podman", "containerd", ...), as the bundle's place
    on disk says; ``bundle`` is the directory the runtime keeps its state in (the one with its
    pid file), ``config`` the ``config.json`` that describes it when found (podman keeps it in
    its graph root, away from the pid file), ``pid`` its init process when known.
    """

    runtime: str
    container_id: str
    bundle: str
    config: str | None = None
    pid: int | None = None


Source = Literal["index", "bundle", "cri"]


class Resolution(msgspec.Struct, frozen=True, kw_only=True):
    """An answer and where it came from: the live ``index``, a ``bundle`` read on a miss, or
    the runtime's ``cri`` API."""

    meta: ContainerMeta
    source: Source


class Step(msgspec.Struct, frozen=True, kw_only=True):
    """One step of a resolution: what was tried, what it gave, how long it took."""

    step: str
    result: str
    seconds: float

    @classmethod
    def since(cls, step: str, result: str, started: float) -> Step:
        """The step that began at ``started`` (a ``time.perf_counter()``) and ends now."""
        return cls(step=step, result=result, seconds=time.perf_counter() - started)


class Explanation(msgspec.Struct, frozen=True, kw_only=True):
    """How a PID was resolved, step by step (``ociresolve lookup --explain``).

    ``standalone`` is set instead of ``resolution`` when the process runs in a container that
    is not a Kubernetes one (a podman container)."""

    pid: int
    container_id: str | None
    resolution: Resolution | None
    steps: list[Step]
    standalone: StandaloneContainer | None = None
