"""cri-o.

Keys: cri-o ``pkg/annotations/annotations.go`` (``io.kubernetes.cri-o.*``) and the kubelet labels
it copies into annotations (``io.kubernetes.pod.*``, absent for pods not made by kubelet).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from ociresolve.runtimes._keys import (
    KUBELET_LABELS,
    Found,
    KeyTable,
    json_object,
    pick,
    setdefault_str,
)

NAME: Final = "cri-o"
KUBERNETES: Final = True
# What it writes as ``io.container.manager`` (cri-o >= 1.16).
MANAGER: Final = "cri-o"
# Every key of its own starts so; podman borrowed a few (see podman.CRIO_KEYS).
PREFIX: Final = "io.kubernetes.cri-o."

KEYS: Final[KeyTable] = {
    "container_type": ("io.kubernetes.cri-o.ContainerType",),
    "container_id": ("io.kubernetes.cri-o.ContainerID",),
    "sandbox_id": ("io.kubernetes.cri-o.SandboxID",),
    # KubeName and Namespace: sandboxes only.
    "pod_name": KUBELET_LABELS["pod_name"] + ("io.kubernetes.cri-o.KubeName",),
    "pod_namespace": KUBELET_LABELS["pod_namespace"] + ("io.kubernetes.cri-o.Namespace",),
    "pod_uid": KUBELET_LABELS["pod_uid"],
    "container_name": KUBELET_LABELS["container_name"],
    "image": ("io.kubernetes.cri-o.ImageName", "io.kubernetes.cri-o.Image"),
    # JSON blobs and composite names, decoded by complete() when the plain keys are missing.
    "labels": ("io.kubernetes.cri-o.Labels",),
    # Sandbox {"Name","UID","Namespace","Attempt"} in old releases, lower-case keys in newer ones;
    # a container's holds its own {"name", "attempt"}.
    "metadata": ("io.kubernetes.cri-o.Metadata",),
    # k8s_<pod>_<namespace>_<uid>_<attempt>
    "sandbox_name": ("io.kubernetes.cri-o.SandboxName",),
    # A container's k8s_<container>_<pod>_<namespace>_<uid>_<attempt>;
    # a sandbox's is its SandboxName.
    "name": ("io.kubernetes.cri-o.Name",),
    # "true" on an infra container cri-o never starts (dropped infra): it is the sandbox.
    "spoofed": ("io.kubernetes.cri-o.Spoofed",),
}

MARKERS: Final = KEYS["container_type"] + KEYS["sandbox_id"] + KEYS["container_id"]

# Kubelet's pod keys: cri-o writes them on every sandbox over whatever a pod annotation said
# (a tenant cannot change or remove them), and on every container kubelet creates. podman never
# writes them (``podman kube play`` included), so with a marker they say cri-o.
OVERWRITTEN: Final = (
    KUBELET_LABELS["pod_name"] + KUBELET_LABELS["pod_namespace"] + KUBELET_LABELS["pod_uid"]
)

CONTAINER_TYPES: Final[Mapping[str, str]] = {"sandbox": "sandbox", "container": "container"}

# Keys cri-o writes on every sandbox (all releases since 1.0) and never on a container. A pod
# annotation can change their values but not remove them, and none reaches a container's spec
# (kubelet gives containers no pod annotations): with one of them, a bundle is a sandbox,
# whatever its ``ContainerType`` says (a pod annotation can set that too).
SANDBOX_KEYS: Final = (
    "io.kubernetes.cri-o.KubeName",
    "io.kubernetes.cri-o.ShmPath",
    "io.kubernetes.cri-o.HostNetwork",
)

# Values that say no process will ever run: the infra container cri-o drops (drop_infra_ctr,
# default since 1.22) is written with a config.json but never started, so it never has a pid.
NO_PROCESS: Final[Mapping[str, str]] = {KEYS["spoofed"][0]: "true"}

_POD_NAME_FIELDS: Final = ("pod_name", "pod_namespace", "pod_uid")


def complete(annotations: Mapping[str, str], found: Found) -> None:
    """Fill what the plain keys lacked: labels blob, then metadata blob, then composite names.

    Kubelet-made pods have every plain key, so the blobs are decoded only when one is missing.
    """
    if found.get("spoofed") == "true":
        found.setdefault("container_type", "sandbox")
    is_sandbox = found.get("container_type") == "sandbox"
    wanted = _POD_NAME_FIELDS if is_sandbox else ("container_name", *_POD_NAME_FIELDS)
    if all(field in found for field in wanted):
        return
    pick(json_object(found.get("labels")), KUBELET_LABELS, found)

    metadata = {str(k).lower(): v for k, v in json_object(found.get("metadata")).items()}
    if is_sandbox:
        for field, key in zip(_POD_NAME_FIELDS, ("name", "namespace", "uid"), strict=True):
            setdefault_str(found, field, metadata.get(key))
    else:
        setdefault_str(found, "container_name", metadata.get("name"))

    _from_k8s_name(found.get("sandbox_name"), _POD_NAME_FIELDS, found)
    _from_k8s_name(found.get("name"), wanted, found)


def _from_k8s_name(name: str | None, fields: tuple[str, ...], found: Found) -> None:
    # Kubelet's names join DNS names and a UID, none of which may hold "_".
    if not name or not name.startswith("k8s_"):
        return
    parts = name.split("_")[1:]
    if len(parts) != len(fields) + 1 or not all(parts):
        return
    for field, value in zip(fields, parts, strict=False):
        found.setdefault(field, value)
