"""podman (libpod). Not a Kubernetes runtime: its containers are never pods, whatever their keys.

podman shares cri-o's storage layout and, before 5.0, wrote some cri-o keys (``CRIO_KEYS``), so
those keys alone do not mean cri-o. Where the bundle is says it first: podman writes its
``config.json`` only into the containers-storage graph root (``hostpaths.LAYOUTS``). From the keys
alone: ``io.container.manager: libpod`` (podman >= 1.6), or cri-o keys that are all podman's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from ociresolve.runtimes._keys import Found, KeyTable

NAME: Final = "podman"
KUBERNETES: Final = False
# What it writes as ``io.container.manager`` (podman >= 1.6).
MANAGER: Final = "libpod"

KEYS: Final[KeyTable] = {}

MARKERS: Final[tuple[str, ...]] = ()

CONTAINER_TYPES: Final[Mapping[str, str]] = {}

# Keys that say "sandbox" whatever the container-type key says: none.
SANDBOX_KEYS: Final[tuple[str, ...]] = ()

NO_PROCESS: Final[Mapping[str, str]] = {}

# The cri-o keys podman writes, all removed in 5.0 (containers/podman 1901403eda2e, 2024-03):
# a bundle whose cri-o keys are only these is podman's, even without io.container.manager.
CRIO_KEYS: Final = (
    "io.kubernetes.cri-o.ContainerType",  # 1.x: "sandbox" on every container; later pod members
    "io.kubernetes.cri-o.SandboxID",  # pod members: the pod's infra container
    "io.kubernetes.cri-o.Created",
    "io.kubernetes.cri-o.TTY",
)


def complete(annotations: Mapping[str, str], found: Found) -> None:
    """Nothing to complete: a podman container is not normalized into a pod record."""
