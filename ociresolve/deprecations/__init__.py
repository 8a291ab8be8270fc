"""containerd's deprecation warnings, and which clients cause them.

``client`` reads the warnings (containerd's introspection service, containerd >= 1.7);
``poller`` turns repeated reads into new occurrences; ``correlate`` matches occurrences with the
connections the containerd socket tracer saw, and says how sure it is. Importing this package
imports no grpc and opens nothing.
"""

from __future__ import annotations

from ociresolve.deprecations.client import (
    DEFAULT_TIMEOUT,
    Deprecation,
    IntrospectionClient,
    containerd_socket,
)
from ociresolve.deprecations.errors import (
    IntrospectionError,
    RuntimeUnreachable,
    ServiceMissing,
)

__all__ = [
    "DEFAULT_TIMEOUT",
    "Deprecation",
    "IntrospectionClient",
    "IntrospectionError",
    "RuntimeUnreachable",
    "ServiceMissing",
    "containerd_socket",
]
