"""What containerd >= 1.7 records of the deprecated APIs it serves, for a node that runs 1.6.

``FakeIntrospection`` is a real ``grpc.server`` on a unix socket serving containerd's
``containerd.services.introspection.v1.Introspection/Server`` (the servicer generated from
ociresolve's own ``introspection.proto``) and ``containerd.services.version.v1.Version/Version``.
``occur(id, time_ns)`` records a call of a deprecated API as containerd does: one entry per id,
keeping only the time of the latest call. The end-to-end tests feed it the times of real calls
made by real containers to the real containerd 1.6, whose own introspection service has no
deprecation warnings.

``parse_logfmt`` reads the logfmt lines of the reporter and the tracer.
"""

from __future__ import annotations

import os
import threading
from concurrent import futures
from typing import Any, Final

import grpc
from google.protobuf import empty_pb2

from ociresolve.deprecations import introspection_pb2, introspection_pb2_grpc

V1ALPHA2: Final = "io.containerd.deprecation/cri-api-v1alpha2"
# containerd's own message for it (pkg/deprecation in containerd 1.7).
V1ALPHA2_MESSAGE: Final = (
    "CRI API v1alpha2 is deprecated since containerd v1.7 and removed in containerd v2.0. "
    "Use CRI API v1 instead."
)
VERSION: Final = "1.7.13"
_VERSION_SERVICE: Final = "containerd.services.version.v1.Version"
_NS: Final = 1_000_000_000


class FakeIntrospection(introspection_pb2_grpc.IntrospectionServicer):
    """A containerd >= 1.7 answering ``Server`` with its deprecation warnings (see the module).

    ``start()`` (or ``with``) serves on ``socket``; ``stop()`` removes the socket file.
    """

    def __init__(self, socket: str) -> None:
        self.socket = socket
        self.polls = 0
        self._warnings: dict[str, introspection_pb2.DeprecationWarning] = {}
        self._lock = threading.Lock()
        self._server: grpc.Server | None = None

    def occur(self, id_: str, time_ns: int, message: str = V1ALPHA2_MESSAGE) -> None:
        """A call of deprecated API ``id_`` at ``time_ns`` (ns since the epoch)."""
        warning = introspection_pb2.DeprecationWarning(id=id_, message=message)
        warning.last_occurrence.seconds, warning.last_occurrence.nanos = divmod(time_ns, _NS)
        with self._lock:
            self._warnings[id_] = warning

    def start(self) -> FakeIntrospection:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        introspection_pb2_grpc.add_IntrospectionServicer_to_server(self, server)
        version = grpc.unary_unary_rpc_method_handler(
            self._version,
            request_deserializer=empty_pb2.Empty.FromString,
            response_serializer=introspection_pb2.VersionResponse.SerializeToString,
        )
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(_VERSION_SERVICE, {"Version": version}),)
        )
        server.add_insecure_port(f"unix://{self.socket}")
        server.start()
        self._server = server
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(grace=None).wait(5)
            self._server = None
        if os.path.exists(self.socket):
            os.unlink(self.socket)

    def __enter__(self) -> FakeIntrospection:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def Server(
        self, request: empty_pb2.Empty, context: grpc.ServicerContext
    ) -> introspection_pb2.ServerResponse:
        with self._lock:
            self.polls += 1
            warnings = list(self._warnings.values())
        response = introspection_pb2.ServerResponse(uuid="e2e", pid=os.getpid())
        response.deprecations.extend(warnings)
        return response

    def _version(self, request: empty_pb2.Empty, context: Any) -> Any:
        return introspection_pb2.VersionResponse(version=VERSION, revision="e2e")


_UNESCAPE: Final = {"n": "\n", "r": "\r", "t": "\t", '"': '"', "\\": "\\"}


def parse_logfmt(line: str) -> dict[str, str]:
    """The fields of one logfmt line (quoted values unescaped); ``{}`` if it is not one."""
    fields: dict[str, str] = {}
    i, end = 0, len(line)
    while i < end:
        eq = line.find("=", i)
        if eq < 0:
            return {}
        key = line[i:eq]
        if not key or " " in key or '"' in key:
            return {}
        i = eq + 1
        if line[i : i + 1] == '"':
            i += 1
            chars: list[str] = []
            while i < end and line[i] != '"':
                if line[i] == "\\" and i + 1 < end:
                    chars.append(_UNESCAPE.get(line[i + 1], line[i + 1]))
                    i += 2
                else:
                    chars.append(line[i])
                    i += 1
            i += 2  # the closing quote and the space
            fields[key] = "".join(chars)
        else:
            stop = line.find(" ", i)
            stop = end if stop < 0 else stop
            fields[key] = line[i:stop]
            i = stop + 1
    return fields
