"""A stand-in for containerd's introspection service, for fault injection; and the reporter's
logfmt lines.

``FakeIntrospection`` is a real ``grpc.server`` on a unix socket serving
``containerd.services.introspection.v1.Introspection/Server`` (the messages of ociresolve's own
``introspection.proto``) and ``containerd.services.version.v1.Version/Version`` as a containerd
1.7 would, and misbehaving on demand: it hangs (``hang()`` until ``release()``), answers bytes
that are no protobuf message (``garbage``), or goes away and comes back empty (``restart()``),
as a containerd does when it is restarted. ``occur(id, time_ns)`` records a call of a deprecated
API as containerd does: one entry per id, keeping only the time of the latest call.

The occurrences that the end-to-end tests attribute to clients come from the real thing, the
deprecation service of containerd 1.7; this stand-in is for what a real containerd will not do
on cue.

``parse_logfmt`` reads the logfmt lines of the reporter and the tracer.
"""

from __future__ import annotations

import os
import threading
from concurrent import futures
from typing import Any, Final

import grpc

from ociresolve.deprecations import introspection_pb2

from .startstop import StartStop

V1ALPHA2: Final = "io.containerd.deprecation/cri-api-v1alpha2"
# containerd's own message for it (pkg/deprecation in containerd 1.7).
V1ALPHA2_MESSAGE: Final = (
    "CRI API v1alpha2 is deprecated since containerd v1.7 and removed in containerd v2.0. "
    "Use CRI API v1 instead."
)
VERSION: Final = "1.7.13"
_INTROSPECTION: Final = "containerd.services.introspection.v1.Introspection"
_VERSION_SERVICE: Final = "containerd.services.version.v1.Version"
_NS: Final = 1_000_000_000
# Not a protobuf message: field 0 does not exist, and the varint never ends.
GARBAGE: Final = b"\x00\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff"


def _raw(data: bytes) -> bytes:
    return data


class FakeIntrospection(StartStop):
    """The stand-in (see the module). ``start()`` (or ``with``) serves on ``socket``;
    ``stop()`` removes the socket file. ``polls`` counts the ``Server`` calls answered."""

    def __init__(self, socket: str) -> None:
        self.socket = socket
        self.polls = 0
        self.garbage = False
        self._warnings: dict[str, introspection_pb2.DeprecationWarning] = {}
        self._lock = threading.Lock()
        self._released = threading.Event()
        self._released.set()
        self._server: grpc.Server | None = None

    def occur(self, id_: str, time_ns: int, message: str = V1ALPHA2_MESSAGE) -> None:
        """A call of deprecated API ``id_`` at ``time_ns`` (ns since the epoch)."""
        warning = introspection_pb2.DeprecationWarning(id=id_, message=message)
        warning.last_occurrence.seconds, warning.last_occurrence.nanos = divmod(time_ns, _NS)
        with self._lock:
            self._warnings[id_] = warning

    def hang(self) -> None:
        """From now on ``Server`` answers nothing (until ``release()``, or its caller's
        deadline has long passed)."""
        self._released.clear()

    def release(self) -> None:
        self._released.set()

    def start(self) -> FakeIntrospection:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        handlers = {
            _INTROSPECTION: {
                "Server": grpc.unary_unary_rpc_method_handler(
                    self._server_call, request_deserializer=_raw, response_serializer=_raw
                )
            },
            _VERSION_SERVICE: {
                "Version": grpc.unary_unary_rpc_method_handler(
                    self._version, request_deserializer=_raw, response_serializer=_raw
                )
            },
        }
        server.add_generic_rpc_handlers(
            [
                grpc.method_handlers_generic_handler(name, methods)
                for name, methods in handlers.items()
            ]
        )
        server.add_insecure_port(f"unix://{self.socket}")
        server.start()
        self._server = server
        return self

    def stop(self) -> None:
        self._released.set()  # no handler left waiting
        if self._server is not None:
            self._server.stop(grace=None).wait(5)
            self._server = None
        if os.path.exists(self.socket):
            os.unlink(self.socket)

    def restart(self, down: float = 0.0) -> None:
        """Go away (the socket too) for ``down`` seconds, then serve again with no warning,
        as a restarted containerd."""
        self.stop()
        with self._lock:
            self._warnings.clear()
        if down > 0:
            threading.Event().wait(down)
        self.start()

    def _server_call(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        remaining = context.time_remaining()
        self._released.wait(None if remaining is None else remaining + 1.0)
        with self._lock:
            self.polls += 1
            warnings = list(self._warnings.values())
            garbage = self.garbage
        if garbage:
            return GARBAGE
        response = introspection_pb2.ServerResponse(uuid="e2e", pid=os.getpid())
        response.deprecations.extend(warnings)
        return response.SerializeToString()

    def _version(self, request: bytes, context: Any) -> bytes:
        reply = introspection_pb2.VersionResponse(version=VERSION, revision="e2e")
        return reply.SerializeToString()


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
