"""A client of containerd's deprecation warnings: ``Introspection.Server`` over the containerd
socket, every call with a deadline (a ``UnixChannel``: grpc is imported by the first call, not
by this module).

containerd reports its warnings from 1.7 on. containerd 1.5 and 1.6 serve ``Server`` too, but
without the field, so an empty list from them is no answer: the client then asks containerd's
version service and raises ``ServiceMissing`` for a release older than 1.7 (and for a runtime
without ``Server`` at all). ``Server`` needs no namespace (containerd's warnings are the whole
daemon's), so no ``containerd-namespace`` header is sent.
"""

from __future__ import annotations

import os
import re
import stat
import threading
from datetime import UTC, datetime
from types import TracebackType
from typing import TYPE_CHECKING, Final

import msgspec

from ociresolve.channel import UNREACHABLE, Failure, R, UnixChannel
from ociresolve.deprecations.errors import (
    IntrospectionError,
    RuntimeUnreachable,
    ServiceMissing,
)
from ociresolve.hostpaths import DEFAULT_CRI_SOCKETS, HostPaths

if TYPE_CHECKING:
    from ociresolve.deprecations import introspection_pb2

DEFAULT_TIMEOUT: Final = 2.0
# containerd's own sockets among the CRI endpoints (containerd, k3s/RKE2), in that order.
CONTAINERD_SOCKETS: Final = tuple(
    path for path in DEFAULT_CRI_SOCKETS if os.path.basename(path) == "containerd.sock"
)
V1ALPHA2: Final = "io.containerd.deprecation/cri-api-v1alpha2"

_SERVER: Final = "/containerd.services.introspection.v1.Introspection/Server"
_VERSION: Final = "/containerd.services.version.v1.Version/Version"
# The first release with deprecation warnings; releases before it say nothing of them.
_FIRST: Final = (1, 7)
_VERSION_NUMBER: Final = re.compile(r"v?(\d+)\.(\d+)")
# google.protobuf.Timestamp's valid range: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z.
_SECONDS_MIN: Final = -62_135_596_800
_SECONDS_MAX: Final = 253_402_300_799
_NS: Final = 1_000_000_000


class Deprecation(msgspec.Struct, frozen=True, kw_only=True):
    """One warning: ``id`` (such as ``io.containerd.deprecation/cri-api-v1alpha2``),
    containerd's ``message``, and when it last happened (ns since the epoch; ``None`` when
    containerd sent no valid time)."""

    id: str
    message: str
    last_occurrence_ns: int | None = None

    @property
    def last_occurrence(self) -> datetime | None:
        """``last_occurrence_ns`` as an aware UTC datetime (to the microsecond)."""
        if self.last_occurrence_ns is None:
            return None
        seconds, nanoseconds = divmod(self.last_occurrence_ns, _NS)
        return datetime.fromtimestamp(seconds, UTC).replace(microsecond=nanoseconds // 1000)


def containerd_socket(paths: HostPaths, explicit: str | None = None) -> str | None:
    """The containerd socket to ask, as seen from here: ``explicit`` (a host path) if given,
    else the first of containerd's default sockets that is a socket now; ``None`` if none is."""
    return paths.cri_socket(explicit, CONTAINERD_SOCKETS)


def parse_version(version: str) -> tuple[int, int] | None:
    """``(major, minor)`` of a containerd version (``1.7.13``, ``v2.0.0``, ``1.6.20~ds1``,
    ``v1.7.11-k3s2``); ``None`` when it does not start with one."""
    found = _VERSION_NUMBER.match(version.strip())
    return (int(found.group(1)), int(found.group(2))) if found else None


class IntrospectionClient:
    """containerd's introspection service on ``socket_path``; each call has a deadline of
    ``timeout`` seconds. Thread-safe; ``close()`` (or ``with``) releases the channel."""

    def __init__(self, socket_path: str, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.endpoint = socket_path
        self.timeout = timeout
        # Replies are small (gRPC's default cap), the calls short: no keepalive.
        self._channel = UnixChannel(socket_path, self._error)
        self._lock = threading.Lock()  # guards the version asked
        self._version: str | None = None
        self._version_asked = False

    def __enter__(self) -> IntrospectionClient:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def deprecations(self) -> list[Deprecation]:
        """The runtime's deprecation warnings, in its order (possibly none).

        Raises ``ServiceMissing`` when the runtime has no deprecation warnings (containerd
        before 1.7), ``RuntimeUnreachable`` when it does not answer in time, and
        ``IntrospectionError`` when it answers with another error.
        """
        from ociresolve.deprecations import introspection_pb2

        response = self._call(_SERVER, introspection_pb2.ServerResponse)
        warnings = [_deprecation(warning) for warning in response.deprecations]
        if not warnings:
            version = self.version()
            number = parse_version(version) if version else None
            if number is not None and number < _FIRST:
                raise ServiceMissing(self.endpoint, version)
        return warnings

    def version(self) -> str | None:
        """containerd's version (``1.7.13``), asked once; ``None`` when it does not say."""
        from ociresolve.deprecations import introspection_pb2

        with self._lock:
            if self._version_asked:
                return self._version
        try:
            response = self._call(_VERSION, introspection_pb2.VersionResponse)
        except IntrospectionError:
            return None  # asked again next time: the runtime may be restarting
        with self._lock:
            self._version, self._version_asked = response.version or None, True
            return self._version

    def close(self) -> None:
        self._channel.close()

    def _call(self, method: str, reply: type[R]) -> R:
        from google.protobuf import empty_pb2

        # Asked at each call: a containerd that went away is said so at once, by its path.
        try:
            mode = os.stat(self.endpoint).st_mode
        except OSError as exc:
            raise RuntimeUnreachable(self.endpoint, exc.strerror or str(exc)) from exc
        if not stat.S_ISSOCK(mode):
            raise RuntimeUnreachable(self.endpoint, "not a socket")
        return self._channel.call(method, empty_pb2.Empty(), reply, timeout=self.timeout)

    def _error(self, failed: Failure) -> IntrospectionError:
        if failed.code == "UNIMPLEMENTED":
            # Which containerd lacks the service, if its version service says.
            found = self.version() if failed.method != _VERSION else None
            return ServiceMissing(self.endpoint, found, code=failed.code)
        kind = RuntimeUnreachable if failed.code in UNREACHABLE else IntrospectionError
        name = failed.method.rsplit(".", 1)[-1]  # Introspection/Server
        return kind(self.endpoint, f"{name}: {failed.reason}", code=failed.code)


def _deprecation(warning: introspection_pb2.DeprecationWarning) -> Deprecation:
    last: int | None = None
    if warning.HasField("last_occurrence"):
        stamp = warning.last_occurrence
        if _SECONDS_MIN <= stamp.seconds <= _SECONDS_MAX and 0 <= stamp.nanos < _NS:
            last = stamp.seconds * _NS + stamp.nanos
    return Deprecation(id=warning.id, message=warning.message, last_occurrence_ns=last)
