"""A fake containerd for the deprecation-warnings tests: a real ``grpc.server`` on a unix socket
serving ``containerd.services.introspection.v1.Introspection/Server`` (from our generated
servicer) and ``containerd.services.version.v1.Version/Version``.

Modes, switchable while it runs:

- ``normal``: containerd >= 1.7, answering with ``warnings``;
- ``old``: what containerd 1.6 really does (checked against 1.6.20): ``Server`` answers with the
  uuid alone, no ``deprecations`` field; the version service says ``version``;
- ``unimplemented``: a runtime without ``Server`` at all (containerd < 1.5, or not containerd):
  UNIMPLEMENTED with grpc-go's text;
- ``hang``: ``Server`` never answers before the client's deadline.

``version = None`` leaves the version service out (UNIMPLEMENTED). "No socket" is a fake that
was never started, or was stopped (its socket file is removed).
"""

from __future__ import annotations

import os
import threading
from collections import Counter
from collections.abc import Iterable
from concurrent import futures
from typing import Any, Final, Literal

import grpc
from google.protobuf import empty_pb2

from ociresolve.deprecations import introspection_pb2, introspection_pb2_grpc

Mode = Literal["normal", "old", "unimplemented", "hang"]

V1ALPHA2: Final = "io.containerd.deprecation/cri-api-v1alpha2"
# containerd's own message for it (pkg/deprecation in containerd 1.7).
V1ALPHA2_MESSAGE: Final = (
    "CRI API v1alpha2 is deprecated since containerd v1.7 and removed in containerd v2.0. "
    "Use CRI API v1 instead."
)
UUID: Final = "c40d08f0-23b3-447f-b206-ed263687ba7a"
VERSION_SERVICE: Final = "containerd.services.version.v1.Version"
HANG_MAX: Final = 10.0
_NS: Final = 1_000_000_000


def warning(
    id_: str, last_occurrence_ns: int | None, message: str = ""
) -> introspection_pb2.DeprecationWarning:
    """One ``DeprecationWarning``; ``None`` leaves ``last_occurrence`` unset."""
    result = introspection_pb2.DeprecationWarning(id=id_, message=message)
    if last_occurrence_ns is not None:
        seconds, nanos = divmod(last_occurrence_ns, _NS)
        result.last_occurrence.seconds = seconds
        result.last_occurrence.nanos = nanos
    return result


class FakeIntrospection(introspection_pb2_grpc.IntrospectionServicer):
    """See the module. ``calls`` counts the calls per method (``Server``, ``Version``)."""

    def __init__(self, socket: str, *, mode: Mode = "normal", version: str | None = "1.7.13"):
        self.socket = socket
        self.mode: Mode = mode
        self.version = version
        self.warnings: list[introspection_pb2.DeprecationWarning] = []
        self.calls: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._server: grpc.Server | None = None

    def set_warnings(self, warnings: Iterable[introspection_pb2.DeprecationWarning]) -> None:
        with self._lock:
            self.warnings = list(warnings)

    def occur(self, id_: str, time_ns: int, message: str = "") -> None:
        """A call of deprecated API ``id_`` at ``time_ns``, as containerd records it: the
        entry of that id keeps only the last occurrence."""
        with self._lock:
            kept = [w for w in self.warnings if w.id != id_]
            previous = [w for w in self.warnings if w.id == id_]
            text = message or (previous[0].message if previous else "")
            self.warnings = [*kept, warning(id_, time_ns, text)]

    def count(self, method: str) -> int:
        with self._lock:
            return self.calls[method]

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> FakeIntrospection:
        self._stopped.clear()
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        introspection_pb2_grpc.add_IntrospectionServicer_to_server(self, server)
        server.add_generic_rpc_handlers((self._version_handler(),))
        server.add_insecure_port(f"unix://{self.socket}")
        server.start()
        self._server = server
        return self

    def stop(self) -> None:
        self._stopped.set()
        if self._server is not None:
            self._server.stop(grace=None).wait(5)
            self._server = None
        if os.path.exists(self.socket):
            os.unlink(self.socket)

    # -- Introspection -------------------------------------------------------------------------

    def Server(
        self, request: empty_pb2.Empty, context: grpc.ServicerContext
    ) -> introspection_pb2.ServerResponse:
        with self._lock:
            self.calls["Server"] += 1
            mode, warnings = self.mode, list(self.warnings)
        if mode == "unimplemented":
            # grpc-go's answer (containerd) for a service it does not register.
            context.abort(
                grpc.StatusCode.UNIMPLEMENTED,
                "unknown service containerd.services.introspection.v1.Introspection",
            )
        if mode == "hang":
            released = threading.Event()
            context.add_callback(released.set)  # the client's deadline passed
            released.wait(HANG_MAX)
            context.abort(grpc.StatusCode.INTERNAL, "hung")
        response = introspection_pb2.ServerResponse(uuid=UUID)
        if mode == "normal":
            response.pid = os.getpid()
            response.pidns = 4026531836
            response.deprecations.extend(warnings)
        return response

    # -- Version -------------------------------------------------------------------------------

    def _version(self, request: empty_pb2.Empty, context: grpc.ServicerContext) -> Any:
        with self._lock:
            self.calls["Version"] += 1
            version = self.version
        if version is None:
            context.abort(grpc.StatusCode.UNIMPLEMENTED, f"unknown service {VERSION_SERVICE}")
        return introspection_pb2.VersionResponse(version=version, revision="0123456789ab")

    def _version_handler(self) -> grpc.GenericRpcHandler[Any, Any]:
        handler = grpc.unary_unary_rpc_method_handler(
            self._version,
            request_deserializer=empty_pb2.Empty.FromString,
            response_serializer=introspection_pb2.VersionResponse.SerializeToString,
        )
        return grpc.method_handlers_generic_handler(VERSION_SERVICE, {"Version": handler})
