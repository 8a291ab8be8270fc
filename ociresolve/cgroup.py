"""cgroup paths -> the container (and pod) they belong to.

Accepts a whole ``/proc/<pid>/cgroup`` file, one of its lines (``hierarchy:controllers:path``),
or one cgroup path (a spec's ``cgroupsPath``, or a directory under a cgroup mount). The path
shapes, innermost component first:

======================================================  =================================
``cri-containerd-<id>.scope`` ``crio-<id>.scope``       systemd driver (containerd, cri-o,
``docker-<id>.scope`` ``libpod-<id>.scope``             docker, podman)
``<slice>:<prefix>:<id>``                               systemd-driver ``cgroupsPath``, also
                                                        found as a literal directory name
``<id>`` (64 hex)                                       cgroupfs driver (``/kubepods/...``,
                                                        ``/docker/<id>``, ``/ecs/...``)
``crio-<id>`` ``libpod-<id>``                           cgroupfs driver (cri-o, podman)
``libpod-payload-<id>``                                 podman ``--cgroups=split`` (quadlet)
``<task>-<n>`` below ``/ecs/``                          AWS ECS, Fargate (32 hex, digits)
``<8>-<4>-<4>-<4>-<4>`` below ``garden/``               Cloud Foundry garden (hex groups)
``crio-conmon-<id>.scope`` ``libpod-conmon-<id>.scope``  runtime helpers: not containers
======================================================  =================================

Components below the container's (``<id>/kube-proxy``, ``libpod-<id>.scope/container``) are
skipped; the innermost container wins (kind/minikube nodes, docker-in-docker). The pod is the
``pod<uid>`` (cgroupfs) or ``kubepods[-<qos>]-pod<uid_with_underscores>.slice`` (systemd)
component nearest above the container, and the QoS class comes from the same level
(kubelet ``pkg/kubelet/cm/cgroup_manager_linux.go``, ``qos_container_manager_linux.go``).
kubelet's cgroupfs driver may use the systemd-style names without the ``.slice`` suffix
(``/kubepods/kubepods-besteffort/kubepods-besteffort-pod<uid_>/<id>``): the same pod.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Final

from ociresolve.ids import is_runtime_id
from ociresolve.model import CgroupRef, QosClass

__all__ = ["cgroup_dir", "parse_cgroup", "pod_uid_from_path"]

# The prefix of a systemd scope (``<prefix>-<id>.scope``) or of the middle part of a
# ``<slice>:<prefix>:<id>`` cgroupsPath -> the runtime it reveals. ``None``: a runtime helper
# process, not a container.
_SCOPE_PREFIXES: Final[dict[str, str | None]] = {
    "cri-containerd": "containerd",
    "crio": "cri-o",
    "docker": "docker",
    "libpod": "podman",
    "libpod-payload": "podman",  # podman --cgroups=split (quadlet's default): <own cgroup>/...
    "crio-conmon": None,
    "libpod-conmon": None,
}
# The parent directory of a bare id under the cgroupfs driver -> runtime.
_BARE_ID_PARENTS: Final[dict[str, str]] = {"docker": "docker"}

# Platforms whose container ids are not runtime ids, recognised only below the directory the
# platform puts them in: that directory's name -> (the id's shape, the runtime it reveals).
_PLATFORM_IDS: Final[dict[str, tuple[re.Pattern[str], str | None]]] = {
    # AWS ECS and Fargate: /ecs/<task id>/<task id>-<number>, or /ecs/<task id>-<number>
    "ecs": (re.compile(r"[0-9a-f]{32}-[0-9]{1,10}"), None),
    # Cloud Foundry (garden, runc): /garden/<id> or /system.slice/garden.service/garden/<id>
    "garden": (re.compile(r"[0-9a-f]{8}(?:-[0-9a-f]{4}){4}"), "garden"),
}

_QOS: Final[dict[str, QosClass]] = {"burstable": "burstable", "besteffort": "besteffort"}
_KUBEPODS: Final = frozenset({"kubepods", "kubepods.slice"})
# A pod UID: a UUID (underscored in systemd slice names) or a static pod's 32-hex hash.
_UID: Final = r"[0-9a-fA-F]{8}[-_]?(?:[0-9a-fA-F]{4}[-_]?){3}[0-9a-fA-F]{12}"
_CGROUPFS_POD: Final = re.compile(rf"pod({_UID})")
# The systemd driver's slice; kubelet's cgroupfs driver may use the same name without ".slice".
_SYSTEMD_POD: Final = re.compile(rf"kubepods(?:-(burstable|besteffort))?-pod({_UID})(?:\.slice)?")

_CACHE_SIZE: Final = 4096
_CACHE_MAX_PATH: Final = 1024


def parse_cgroup(text: str) -> CgroupRef | None:
    """The innermost container a cgroup file, line or path points to; ``None`` for the host."""
    if "\n" in text.strip():
        return _parse_file(text)
    line = text.strip()
    hierarchy, sep, rest = line.partition(":")
    if sep and hierarchy.isdigit():
        line = rest.partition(":")[2]
    return _parse_path(line)


def pod_uid_from_path(path: str) -> str | None:
    """The pod UID (canonical, dashed) carried by any component of a cgroup path."""
    components = _components(path)
    for index in range(len(components) - 1, -1, -1):
        pod = _pod(components, index)
        if pod is not None:
            return pod[0]
    return None


def cgroup_dir(cgroups_path: str) -> str:
    """The directory, relative to a cgroup mount, that an OCI ``linux.cgroupsPath`` names.

    The systemd driver's ``<slice>:<prefix>:<name>`` is the scope ``<prefix>-<name>.scope``
    inside the slice's nested directories (``a-b.slice`` lives in ``a.slice/a-b.slice``,
    systemd.slice(5)); a cgroupfs path is already a directory path.
    """
    if cgroups_path.startswith("/") or cgroups_path.count(":") != 2:
        return cgroups_path.strip("/")
    slice_name, prefix, name = cgroups_path.split(":")
    parts: list[str] = []
    if slice_name.endswith(".slice") and slice_name != "-.slice":
        words = slice_name[: -len(".slice")].split("-")
        parts = ["-".join(words[: n + 1]) + ".slice" for n in range(len(words))]
    scope = f"{prefix}-{name}.scope" if prefix else name
    return "/".join([*parts, scope])


def _parse_file(text: str) -> CgroupRef | None:
    # The unified (v2) line first: it is the one BPF's cgroup id refers to, and on this
    # hot path (lookup by pid) one str.rfind beats splitting a dozen v1 lines. The kernel
    # prints it last (its root is registered first, roots are listed newest first), so
    # rfind finds it at once where find scanned every v1 line (1 us of a 1.5 KB file).
    if text.startswith("0::"):
        start = 3
    else:
        start = text.rfind("\n0::")
        start = start + 4 if start >= 0 else -1
    if start >= 0:
        end = text.find("\n", start)
        ref = _parse_path(text[start:] if end < 0 else text[start:end])
        if ref is not None:
            return ref
    # cgroup v1, or a v2 line that points elsewhere ("/" or a session scope).
    for line in text.splitlines():
        hierarchy, sep, rest = line.strip().partition(":")
        if not sep or not hierarchy.isdigit():
            continue
        controllers, sep, path = rest.partition(":")
        if sep and (hierarchy != "0" or controllers):
            ref = _parse_path(path)
            if ref is not None:
                return ref
    return None


def _parse_path(path: str) -> CgroupRef | None:
    if len(path) > _CACHE_MAX_PATH:
        return _parse_path_uncached(path)
    return _parse_path_cached(path)


def _parse_path_uncached(path: str) -> CgroupRef | None:
    components = _components(path)
    anchors = _anchors(components)
    for index in range(len(components) - 1, -1, -1):
        found = _container(components, index, anchors)
        if found is None:
            continue
        container_id, runtime = found
        if not container_id:
            return None  # a runtime helper (conmon) is not a container
        for pod_index in range(index, -1, -1):
            if pod_index < index and _container(components, pod_index, anchors) is not None:
                break  # an outer container: the pod above it is not this container's
            pod = _pod(components, pod_index)
            if pod is not None:
                return CgroupRef(
                    container_id=container_id, pod_uid=pod[0], qos=pod[1], runtime=runtime
                )
        return CgroupRef(container_id=container_id, runtime=runtime)
    return None


_parse_path_cached = lru_cache(maxsize=_CACHE_SIZE)(_parse_path_uncached)


def _components(path: str) -> list[str]:
    return [c for c in path.strip().split("/") if c]


def _anchors(components: Sequence[str]) -> dict[str, int]:
    """Where each platform's directory (``_PLATFORM_IDS``) first occurs in the path: found once
    per path, not once per component (a path of n components would cost n squared)."""
    return {anchor: components.index(anchor) for anchor in _PLATFORM_IDS if anchor in components}


def _container(
    components: Sequence[str], index: int, anchors: Mapping[str, int]
) -> tuple[str, str | None] | None:
    """(id, runtime) if this component names a container; ("", None) for a runtime helper.
    ``anchors``: ``_anchors(components)``."""
    component = components[index]
    if ":" in component:
        parts = component.split(":")
        if len(parts) == 3 and parts[1] in _SCOPE_PREFIXES and is_runtime_id(parts[2]):
            runtime = _SCOPE_PREFIXES[parts[1]]
            return (parts[2], runtime) if runtime else ("", None)
        return None
    if is_runtime_id(component):
        parent = components[index - 1] if index else ""
        return component, _BARE_ID_PARENTS.get(parent)
    # <prefix>-<id>.scope (systemd driver) or <prefix>-<id> (cgroupfs driver: cri-o, podman)
    name = component[:-6] if component.endswith(".scope") else component
    prefix, _, container_id = name.rpartition("-")
    if prefix in _SCOPE_PREFIXES and is_runtime_id(container_id):
        runtime = _SCOPE_PREFIXES[prefix]
        return (container_id, runtime) if runtime else ("", None)
    for anchor, first in anchors.items():
        shape, platform = _PLATFORM_IDS[anchor]
        if first < index and shape.fullmatch(component):
            return component, platform
    return None


def _pod(components: Sequence[str], index: int) -> tuple[str, QosClass | None] | None:
    """(uid, qos) if this component is a pod's cgroup."""
    component = components[index]
    if ":" in component:  # <slice>:<prefix>:<id>: the pod is the slice
        component = component.partition(":")[0]
    if component.startswith("kubepods-"):
        match = _SYSTEMD_POD.fullmatch(component)
        if match is None:
            return None
        qos: QosClass | None = _QOS[match[1]] if match[1] else "guaranteed"
        return match[2].replace("_", "-"), qos
    match = _CGROUPFS_POD.fullmatch(component)
    if match is None:
        return None
    parent = components[index - 1] if index else ""
    qos = "guaranteed" if parent in _KUBEPODS else _QOS.get(parent)
    return match[1], qos
