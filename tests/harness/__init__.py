"""A reusable real-containerd harness for end-to-end tests.

Runs a private containerd of any generation (``generations``: 1.6, 1.7, 2.x, 2.x on pure
cgroup v2; private root, state, socket, cgroup parent), imports test images built from the
host's static busybox, and runs host-network pods through CRI like kubelet::

    with Containerd(tmp_path, generation=by_id("2.x")[0]) as ctrd:
        ctrd.import_images(build_images(tmp_path / "images"))
        with ctrd.cri().pod("web", [ContainerSpec("app", ["sleep", "60"])]) as pod:
            config = ctrd.bundle_dir(pod.container_id("app")) / "config.json"

``requirements()`` says why this machine cannot run it (or None); ``tests/conftest.py`` turns
that into a skip, or a failure under ``OCIRESOLVE_REQUIRE_E2E=1``.
"""

from __future__ import annotations

from .containerd import Containerd
from .cri import ContainerSpec, CriClient, Mount, Pod, PodFactory, SecurityContext
from .daemon_process import DaemonProcess as DaemonProcess
from .errors import HarnessError
from .image import PAUSE_IMAGE, UNIXCONNECT, WORKLOAD_IMAGE, ImageSet, build_images, import_images
from .procs import is_alive
from .requirements import bpf_requirements, requirements, root_requirements
from .tracer_process import TracerProcess

__all__ = [
    "PAUSE_IMAGE",
    "UNIXCONNECT",
    "WORKLOAD_IMAGE",
    "ContainerSpec",
    "Containerd",
    "CriClient",
    "HarnessError",
    "ImageSet",
    "Mount",
    "Pod",
    "PodFactory",
    "SecurityContext",
    "TracerProcess",
    "bpf_requirements",
    "build_images",
    "import_images",
    "is_alive",
    "requirements",
    "root_requirements",
]
