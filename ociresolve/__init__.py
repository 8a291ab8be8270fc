"""ociresolve: which Kubernetes pod and container a PID or cgroup belongs to, from the node alone.

The public API is what ``__all__`` lists; every other module is private. Importing this
package starts no thread, opens no file and no socket; a ``Resolver`` does so only once started.
"""

from __future__ import annotations

from ociresolve.api.client import DaemonClient, LookupResult
from ociresolve.api.remote import RemoteResolver
from ociresolve.bundle import Bundle, find_bundles, load_bundle, read_bundle
from ociresolve.cgroup import parse_cgroup
from ociresolve.errors import (
    BundleError,
    DaemonUnavailable,
    InotifyLimitReached,
    OciresolveError,
    ProcessNotFound,
)
from ociresolve.inspection import InspectedBundle, inspect_bundles
from ociresolve.model import CgroupRef, Change, ContainerMeta, IndexedContainer, Resolution
from ociresolve.node import Node, NodeContainers, PidAnswer
from ociresolve.resolver import Resolver
from ociresolve.runtimes import detect_runtime, normalize
from ociresolve.sources import Resolving

__all__ = [
    "Bundle",
    "BundleError",
    "CgroupRef",
    "Change",
    "ContainerMeta",
    "DaemonClient",
    "DaemonUnavailable",
    "IndexedContainer",
    "InotifyLimitReached",
    "InspectedBundle",
    "LookupResult",
    "Node",
    "NodeContainers",
    "OciresolveError",
    "PidAnswer",
    "ProcessNotFound",
    "RemoteResolver",
    "Resolution",
    "Resolver",
    "Resolving",
    "detect_runtime",
    "find_bundles",
    "inspect_bundles",
    "load_bundle",
    "normalize",
    "parse_cgroup",
    "read_bundle",
]
