"""The CRI client: the few RuntimeService calls the fallback needs, each with a deadline.

``CriClient`` is the protocol the resolver talks to (tests inject faults through it);
``GrpcCriClient`` speaks CRI ``runtime.v1`` over the runtime's unix socket (a
``UnixChannel``: grpc is imported only when the first call is made).
"""

from __future__ import annotations

from typing import Final, Literal, Protocol

import msgspec

from ociresolve.channel import Failure, UnixChannel
from ociresolve.errors import CriUnavailable

DEFAULT_TIMEOUT: Final = 0.25
# A verbose status holds the whole OCI spec: allow well over a large one.
_MAX_MESSAGE: Final = 16 * 1024 * 1024
_SERVICE: Final = "/runtime.v1.RuntimeService/"


class StatusReply(msgspec.Struct, frozen=True, kw_only=True):
    """What ``ContainerStatus``/``PodSandboxStatus`` (verbose) said about one id.

    ``name`` is the container's name, or the sandbox's pod name; ``namespace`` and ``uid`` are
    the pod's, set for sandboxes only. ``info`` is the verbose map of JSON documents.
    """

    kind: Literal["container", "sandbox"]
    id: str
    name: str | None = None
    namespace: str | None = None
    uid: str | None = None
    image: str | None = None
    labels: dict[str, str] = msgspec.field(default_factory=dict)
    annotations: dict[str, str] = msgspec.field(default_factory=dict)
    info: dict[str, str] = msgspec.field(default_factory=dict)


class CriClient(Protocol):
    """Each call raises ``CriUnavailable`` when the runtime does not answer in time or fails;
    a status of an id the runtime does not know is ``None``."""

    endpoint: str

    def runtime_name(self) -> str: ...

    def container_status(self, container_id: str) -> StatusReply | None: ...

    def sandbox_status(self, sandbox_id: str) -> StatusReply | None: ...

    def close(self) -> None: ...


class GrpcCriClient:
    """CRI ``runtime.v1`` over a unix socket; every call has a deadline of ``timeout`` s.
    Thread-safe; ``close()`` releases the channel (a later call opens another)."""

    def __init__(self, socket_path: str, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.endpoint = socket_path
        self.timeout = timeout
        # No keepalive, retries as gRPC's default, no check of the path first: the calls are
        # short, and while the runtime is down the breaker does the waiting.
        self._channel = UnixChannel(socket_path, self._error, max_receive=_MAX_MESSAGE)

    def runtime_name(self) -> str:
        from ociresolve.cri import api_pb2

        response = self._channel.call(
            _SERVICE + "Version",
            api_pb2.VersionRequest(version="v1"),
            api_pb2.VersionResponse,
            timeout=self.timeout,
        )
        return str(response.runtime_name) or "unknown"

    def container_status(self, container_id: str) -> StatusReply | None:
        from ociresolve.cri import api_pb2

        response = self._channel.call_or_none(
            _SERVICE + "ContainerStatus",
            api_pb2.ContainerStatusRequest(container_id=container_id, verbose=True),
            api_pb2.ContainerStatusResponse,
            timeout=self.timeout,
            none_on="NOT_FOUND",
        )
        if response is None or not response.HasField("status"):
            return None
        status = response.status
        return StatusReply(
            kind="container",
            id=status.id or container_id,
            name=status.metadata.name or None,
            image=status.image.image or None,
            labels=dict(status.labels),
            annotations=dict(status.annotations),
            info=dict(response.info),
        )

    def sandbox_status(self, sandbox_id: str) -> StatusReply | None:
        from ociresolve.cri import api_pb2

        response = self._channel.call_or_none(
            _SERVICE + "PodSandboxStatus",
            api_pb2.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id, verbose=True),
            api_pb2.PodSandboxStatusResponse,
            timeout=self.timeout,
            none_on="NOT_FOUND",
        )
        if response is None or not response.HasField("status"):
            return None
        status = response.status
        return StatusReply(
            kind="sandbox",
            id=status.id or sandbox_id,
            name=status.metadata.name or None,
            namespace=status.metadata.namespace or None,
            uid=status.metadata.uid or None,
            labels=dict(status.labels),
            annotations=dict(status.annotations),
            info=dict(response.info),
        )

    def close(self) -> None:
        self._channel.close()

    def _error(self, failed: Failure) -> CriUnavailable:
        return CriUnavailable(self.endpoint, f"{failed.rpc}: {failed.reason}", code=failed.code)
