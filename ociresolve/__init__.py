"""ociresolve: which Kubernetes pod and container a PID or cgroup belongs to, from the node alone.

The public API is what ``__all__`` lists; every other module is private. Importing this
package starts no thread, opens no file and no socket.
"""

from __future__ import annotations

from ociresolve.bundle import Bundle, find_bundles, load_bundle, read_bundle
from ociresolve.cgroup import parse_cgroup
from ociresolve.errors import BundleError, OciresolveError
from ociresolve.model import CgroupRef, ContainerMeta
from ociresolve.runtimes import detect_runtime, normalize

__all__ = [
    "Bundle",
    "BundleError",
    "CgroupRef",
    "ContainerMeta",
    "OciresolveError",
    "detect_runtime",
    "find_bundles",
    "load_bundle",
    "normalize",
    "parse_cgroup",
    "read_bundle",
]
