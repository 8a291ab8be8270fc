"""containerd's CRI plugin (and Kata, which containerd drives with the same keys).

Keys: containerd ``internal/cri/annotations/annotations.go`` (``pkg/cri/annotations`` before 2.0,
``pkg/annotations`` in 1.3/1.4). The version each key appeared in is noted beside it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from ociresolve.runtimes._keys import Found, KeyTable

NAME: Final = "containerd"
KUBERNETES: Final = True
# It writes no ``io.container.manager``.
MANAGER: Final = None

KEYS: Final[KeyTable] = {
    "container_type": ("io.kubernetes.cri.container-type",),  # 1.0
    "sandbox_id": ("io.kubernetes.cri.sandbox-id",),  # 1.0
    "log_directory": ("io.kubernetes.cri.sandbox-log-directory",),  # 1.3, sandboxes only
    "container_name": ("io.kubernetes.cri.container-name",),  # 1.4
    "pod_name": ("io.kubernetes.cri.sandbox-name",),  # 1.5
    "pod_namespace": ("io.kubernetes.cri.sandbox-namespace",),  # 1.5
    "pod_uid": ("io.kubernetes.cri.sandbox-uid",),  # 1.6.11 and 1.7.0
    "image": (
        "io.kubernetes.cri.image-name",  # 1.5, containers only
        "io.kubernetes.cri.podsandbox.image-name",  # 2.0, sandboxes only
    ),
}

# The keys whose presence says "containerd's CRI plugin wrote this".
MARKERS: Final = KEYS["container_type"] + KEYS["sandbox_id"]

CONTAINER_TYPES: Final[Mapping[str, str]] = {"sandbox": "sandbox", "container": "container"}

# Keys that say "sandbox" whatever the container-type key says: none.
SANDBOX_KEYS: Final[tuple[str, ...]] = ()

# Every container it writes a bundle for runs a process.
NO_PROCESS: Final[Mapping[str, str]] = {}


def complete(annotations: Mapping[str, str], found: Found) -> None:
    """Recover the pod from the sandbox log directory: ``/var/log/pods/<ns>_<name>_<uid>``.

    Before 1.5 it is the only place a sandbox names its pod; it also gives 1.5-1.6.10 their pod UID.
    Namespace and pod names are DNS names and UIDs never hold ``_``, so three parts is unambiguous.
    """
    log_directory = found.get("log_directory")
    if not log_directory:
        return
    parts = log_directory.rstrip("/").rpartition("/")[2].split("_")
    if len(parts) != 3 or not all(parts):
        return
    for field, value in zip(("pod_namespace", "pod_name", "pod_uid"), parts, strict=True):
        found.setdefault(field, value)
