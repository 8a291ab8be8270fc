"""podman (libpod). Not a Kubernetes runtime: its containers are never pods.

podman shares cri-o's storage layout and, before 5.0, wrote some ``io.kubernetes.cri-o.*`` keys
(``Created``, ``TTY``, and for pod members ``ContainerType``/``SandboxID``), so those keys alone
do not mean cri-o. ``io.container.manager: libpod`` (podman >= 1.6) decides.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from ociresolve.runtimes._keys import Found, KeyTable

NAME: Final = "podman"
KUBERNETES: Final = False

KEYS: Final[KeyTable] = {}

MARKERS: Final[tuple[str, ...]] = ()

CONTAINER_TYPES: Final[Mapping[str, str]] = {}


def complete(annotations: Mapping[str, str], found: Found) -> None:
    """Nothing to complete: a podman container is not normalized into a pod record."""
