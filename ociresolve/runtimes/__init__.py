"""Runtime detection and annotation normalization.

Each runtime is one module with a key table (``KEYS``), the keys that identify it
(``MARKERS``), what it writes as ``io.container.manager`` (``MANAGER``), its container-type
values and a ``complete()`` step for what its plain keys lack. Everything here is derived from
those tables.

Who wrote a bundle is decided by evidence a tenant cannot forge, before any key it can set: the
bundle's place on disk first (``place``: the runtime its layout names, see
``hostpaths.LAYOUTS``), then keys only one runtime writes (cri-o's own keys and the kubelet pod
keys it overwrites; containerd's markers), and only then ``io.container.manager``, which any pod
annotation can set on cri-o.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import ModuleType
from typing import Final, NamedTuple, cast

import msgspec

from ociresolve.cgroup import pod_uid_from_path
from ociresolve.model import ContainerMeta, ContainerType
from ociresolve.runtimes import containerd, crio, podman
from ociresolve.runtimes._keys import KUBELET_LABELS, Found, KeyTable, pick, setdefault_str

__all__ = ["Normalized", "detect", "detect_runtime", "normalize", "normalize_at", "normalize_cri"]

RUNTIMES: Final = (crio, containerd, podman)
# ``io.container.manager`` names the manager (podman >= 1.6, cri-o >= 1.16).
MANAGER_KEY: Final = "io.container.manager"
_BY_MANAGER: Final[Mapping[str, ModuleType]] = {r.MANAGER: r for r in RUNTIMES if r.MANAGER}
# The runtimes whose bundles a layout's place may hold: podman shares cri-o's storage.
_SHARING: Final[Mapping[str, tuple[ModuleType, ...]]] = {
    containerd.NAME: (containerd,),
    crio.NAME: (crio, podman),
}
_CRIO_MARKERS: Final = frozenset(crio.MARKERS)
_CRIO_OVERWRITTEN: Final = frozenset(crio.OVERWRITTEN)
_PODMAN_CRIO_KEYS: Final = frozenset(podman.CRIO_KEYS)
_CONTAINERD_MARKERS: Final = frozenset(containerd.MARKERS)

_META_FIELDS: Final = frozenset(ContainerMeta.__struct_fields__) - {"runtime", "container_type"}


def detect(annotations: Mapping[str, str], place: str | None = None) -> ModuleType | None:
    """The runtime module that wrote these annotations, or ``None`` when none is recognised.

    ``place`` is the runtime the bundle's layout names (``Layout.runtime``): the keys then only
    tell apart the runtimes that share that place. In order: cri-o's own evidence (its kubelet
    pod keys with a marker, or a cri-o key podman never wrote), containerd's markers, then
    ``io.container.manager``, then cri-o markers that are all podman's (podman < 1.6).
    """
    among = RUNTIMES if place is None else _SHARING.get(place, ())
    crio_marked = not _CRIO_MARKERS.isdisjoint(annotations)
    if crio in among and _wrote_crio(annotations, crio_marked):
        return crio
    if containerd in among and not _CONTAINERD_MARKERS.isdisjoint(annotations):
        return containerd
    manager = annotations.get(MANAGER_KEY)
    if manager is not None:
        runtime = _BY_MANAGER.get(manager)
        return runtime if runtime in among else None
    return podman if crio_marked and podman in among else None


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
    Kubernetes container (podman, docker, no annotations at all).
    """
    return _normalize(detect(annotations), annotations, container_id, cgroups_path, False)


class Normalized(NamedTuple):
    """What ``normalize_at`` makes of a bundle found on disk."""

    meta: ContainerMeta | None  # None: not a Kubernetes container
    runtime: str  # the runtime that wrote it, Kubernetes or not
    runs: bool  # a process will run in it (false: cri-o's dropped infra container)
    # Keys whose claims the structure contradicts (an id that is not the bundle's, a container
    # type or manager the runtime's own evidence denies), each as "key=value": not trusted.
    conflicts: tuple[str, ...] = ()


def normalize_at(
    place: str,
    annotations: Mapping[str, str],
    *,
    container_id: str | None,
    cgroups_path: str | None = None,
) -> Normalized:
    """``normalize`` for a bundle found on disk, whose place names its runtime (``place``, its
    layout's ``runtime``), and whose directory names it (``container_id``, the bundle's own id:
    it wins over any id the annotations claim, and a sandbox is its own sandbox).

    The runtime is the one the keys tell among those sharing the place, else the place's.
    """
    runtime = detect(annotations, place)
    if runtime is None:
        return Normalized(None, place, True)
    meta = _normalize(runtime, annotations, container_id, cgroups_path, True)
    no_process: Mapping[str, str] = runtime.NO_PROCESS
    runs = all(annotations.get(key) != value for key, value in no_process.items())
    conflicts = () if meta is None else _conflicts(runtime, annotations, meta)
    return Normalized(meta, cast(str, runtime.NAME), runs, conflicts)


def _conflicts(
    runtime: ModuleType, annotations: Mapping[str, str], meta: ContainerMeta
) -> tuple[str, ...]:
    """The claims of ``annotations`` that the record built from the structure contradicts."""
    keys: KeyTable = runtime.KEYS
    claims = [(key, meta.container_id) for key in keys.get("container_id", ())]
    if meta.container_type == "sandbox":
        claims += [(key, meta.sandbox_id) for key in keys.get("sandbox_id", ())]
        claims += [(key, "sandbox") for key in keys.get("container_type", ())]
    conflicts = [
        f"{key}={_shown(claimed)}"
        for key, truth in claims
        if (claimed := annotations.get(key)) is not None and claimed != truth
    ]
    manager = annotations.get(MANAGER_KEY)
    if manager is not None and manager != runtime.MANAGER:
        conflicts.append(f"{MANAGER_KEY}={_shown(manager)}")
    return tuple(conflicts)


def _shown(value: object) -> str:
    """A tenant's value for a log line: quoted, escaped, at most 64 characters of it."""
    text = value if isinstance(value, str) else str(value)
    return repr(text[:64]) + ("..." if len(text) > 64 else "")


def _normalize(
    runtime: ModuleType | None,
    annotations: Mapping[str, str],
    container_id: str | None,
    cgroups_path: str | None,
    own_id: bool,
) -> ContainerMeta | None:
    if runtime is None or not runtime.KUBERNETES:
        return None
    found: Found = {}
    pick(annotations, runtime.KEYS, found)
    sandbox_keys: tuple[str, ...] = runtime.SANDBOX_KEYS
    if any(key in annotations for key in sandbox_keys):
        found["container_type"] = "sandbox"  # the structure, over the type a tenant may set
    runtime.complete(annotations, found)

    if container_id and (own_id or "container_id" not in found):
        found["container_id"] = container_id
    container_type = _container_type(runtime.CONTAINER_TYPES, found)
    if container_type is None:
        return None
    if container_type == "sandbox":
        # A sandbox is its own sandbox; it runs no named container ("POD" in cri-o).
        sandbox_id = (container_id if own_id else None) or (
            found.get("sandbox_id") or found.get("container_id")
        )
        if sandbox_id:
            found["sandbox_id"] = found["container_id"] = sandbox_id
        found.pop("container_name", None)
    if "pod_uid" not in found and cgroups_path:
        uid = pod_uid_from_path(cgroups_path)
        if uid:
            found["pod_uid"] = uid
    fields = {name: value for name, value in found.items() if name in _META_FIELDS}
    return ContainerMeta(runtime=runtime.NAME, container_type=container_type, **fields)


def _wrote_crio(annotations: Mapping[str, str], marked: bool) -> bool:
    """cri-o's evidence, beside one of its markers (it writes them on everything it creates):
    kubelet's pod keys (the common case, a set operation), else a cri-o key podman never wrote."""
    if not marked:
        return False
    if not _CRIO_OVERWRITTEN.isdisjoint(annotations):
        return True
    prefix = crio.PREFIX
    return any(key.startswith(prefix) and key not in _PODMAN_CRIO_KEYS for key in annotations)


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
