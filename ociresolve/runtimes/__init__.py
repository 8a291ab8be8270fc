"""Runtime detection and annotation normalization.

Each runtime is one module with a key table (``KEYS``), the keys that identify it
(``MARKERS``), its container-type values and a ``complete()`` step for what its
plain keys lack. Everything here is derived from those tables.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import ModuleType
from typing import Final, cast

import msgspec

from ociresolve.cgroup import pod_uid_from_path
from ociresolve.model import ContainerMeta, ContainerType
from ociresolve.runtimes import containerd, crio, podman
from ociresolve.runtimes._keys import KUBELET_LABELS, Found, pick, setdefault_str

__all__ = ["detect", "detect_runtime", "normalize", "normalize_cri"]

# ``io.container.manager`` names the manager outright (podman >= 1.6, cri-o >= 1.16).
MANAGER_KEY: Final = "io.container.manager"
_BY_MANAGER: Final[Mapping[str, ModuleType]] = {"libpod": podman, "cri-o": crio}
# Otherwise the first runtime one of whose marker keys is present.
_BY_MARKER: Final = tuple((runtime, frozenset(runtime.MARKERS)) for runtime in (crio, containerd))

_META_FIELDS: Final = frozenset(ContainerMeta.__struct_fields__) - {"runtime", "container_type"}


def detect(annotations: Mapping[str, str]) -> ModuleType | None:
    """The runtime module that wrote these annotations, or ``None`` when none is recognised."""
    manager = annotations.get(MANAGER_KEY)
    if manager is not None:
        return _BY_MANAGER.get(manager)
    for runtime, markers in _BY_MARKER:
        if not markers.isdisjoint(annotations):
            return runtime
    return None


def detect_runtime(annotations: Mapping[str, str]) -> str | None:
    """The name of the runtime that wrote these annotations ("containerd", "cri-o", "podman"),
    whether or not the container belongs to Kubernetes; ``None`` when unrecognised."""
    runtime = detect(annotations)
    return None if runtime is None else cast(str, runtime.NAME)


def normalize(
    annotations: Mapping[str, str],
    *,
    container_id: str | None = None,
    cgroups_path: str | None = None,
) -> ContainerMeta | None:
    """Turn a bundle's (or a CRI runtime spec's) annotations into a ``ContainerMeta``.

    ``container_id`` is the id the runtime gave the bundle outside its annotations
    (containerd's bundle directory name); ``cgroups_path`` is the spec's ``linux.cgroupsPath``,
    which may carry the pod UID. Returns ``None`` when the annotations are not those of a
    Kubernetes container (plain podman, docker, no annotations at all).
    """
    runtime = detect(annotations)
    if runtime is None or not runtime.KUBERNETES:
        return None
    found: Found = {}
    pick(annotations, runtime.KEYS, found)
    runtime.complete(annotations, found)

    if container_id and "container_id" not in found:
        found["container_id"] = container_id
    container_type = _container_type(runtime.CONTAINER_TYPES, found)
    if container_type is None:
        return None
    if container_type == "sandbox":
        # A sandbox is its own sandbox; it runs no named container ("POD" in cri-o).
        sandbox_id = found.get("sandbox_id") or found.get("container_id")
        if sandbox_id:
            found["sandbox_id"] = found["container_id"] = sandbox_id
        found.pop("container_name", None)
    if "pod_uid" not in found and cgroups_path:
        uid = pod_uid_from_path(cgroups_path)
        if uid:
            found["pod_uid"] = uid
    fields = {name: value for name, value in found.items() if name in _META_FIELDS}
    return ContainerMeta(runtime=runtime.NAME, container_type=container_type, **fields)


def normalize_cri(
    *,
    runtime: str,
    container_type: ContainerType,
    container_id: str,
    annotations: Mapping[str, str],
    cgroups_path: str | None = None,
    labels: Mapping[str, str] | None = None,
    name: str | None = None,
    namespace: str | None = None,
    uid: str | None = None,
    sandbox_id: str | None = None,
    image: str | None = None,
) -> ContainerMeta:
    """A record from a CRI status: its runtime spec's annotations first (the same
    ``normalize`` as bundles), then kubelet's labels, then the status's own metadata.

    ``runtime`` is the runtime that answered; ``name``/``namespace``/``uid`` are the status's
    metadata (a container's name, or a sandbox's pod name, namespace and UID).
    """
    meta = normalize(annotations, container_id=container_id, cgroups_path=cgroups_path)
    found: Found = {}
    if meta is not None and meta.container_type == container_type:
        found = {k: v for k, v in msgspec.structs.asdict(meta).items() if isinstance(v, str)}
    pick(labels or {}, KUBELET_LABELS, found)
    if container_type == "sandbox":
        for field, value in (("pod_name", name), ("pod_namespace", namespace), ("pod_uid", uid)):
            setdefault_str(found, field, value)
        found.pop("container_name", None)
        sandbox_id = container_id
    else:
        setdefault_str(found, "container_name", name)
    setdefault_str(found, "sandbox_id", sandbox_id)
    setdefault_str(found, "image", image)
    found["container_id"] = container_id
    if "pod_uid" not in found and cgroups_path:
        setdefault_str(found, "pod_uid", pod_uid_from_path(cgroups_path))
    fields = {key: value for key, value in found.items() if key in _META_FIELDS}
    return ContainerMeta(runtime=runtime, container_type=container_type, **fields)


def _container_type(values: Mapping[str, str], found: Found) -> ContainerType | None:
    raw = found.get("container_type")
    if raw is not None and raw in values:
        return cast(ContainerType, values[raw])
    # Missing or unknown value: the ids still tell a sandbox (its own sandbox) from a container.
    container_id, sandbox_id = found.get("container_id"), found.get("sandbox_id")
    if container_id and sandbox_id:
        return "sandbox" if container_id == sandbox_id else "container"
    return None
