"""The CRI client: the few RuntimeService calls the fallback needs, each with a deadline.

``CriClient`` is the protocol the resolver talks to (tests inject faults through it);
``GrpcCriClient`` speaks CRI ``runtime.v1`` over the runtime's unix socket. grpc is imported
only when the first call is made.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol

import msgspec

from ociresolve.errors import CriUnavailable

if TYPE_CHECKING:
    from ociresolve.cri import api_pb2_grpc

DEFAULT_TIMEOUT: Final = 0.25
# A verbose status holds the whole OCI spec: allow well over a large one.
_MAX_MESSAGE: Final = 16 * 1024 * 1024


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
    """CRI ``runtime.v1`` over a unix socket; every call has a deadline of ``timeout`` s."""

    def __init__(self, socket_path: str, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.endpoint = socket_path
        self.timeout = timeout
        self._lock = threading.Lock()
        self._channel: Any = None
        self._stub: api_pb2_grpc.RuntimeServiceStub | None = None

    def runtime_name(self) -> str:
        from ociresolve.cri import api_pb2

        response = self._call("Version", api_pb2.VersionRequest(version="v1"))
        return str(response.runtime_name) or "unknown"

    def container_status(self, container_id: str) -> StatusReply | None:
        from ociresolve.cri import api_pb2

        request = api_pb2.ContainerStatusRequest(container_id=container_id, verbose=True)
        response = self._call("ContainerStatus", request, not_found_ok=True)
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

        request = api_pb2.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id, verbose=True)
        response = self._call("PodSandboxStatus", request, not_found_ok=True)
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
        with self._lock:
            channel, self._channel, self._stub = self._channel, None, None
        if channel is not None:
            channel.close()

    def _call(self, method: str, request: Any, *, not_found_ok: bool = False) -> Any:
        import grpc

        try:
            return getattr(self._runtime_service(), method)(request, timeout=self.timeout)
        except grpc.RpcError as exc:
            # Errors raised by a call are also grpc.Call, with a code and details.
            code_of, details_of = getattr(exc, "code", None), getattr(exc, "details", None)
            code = code_of() if callable(code_of) else grpc.StatusCode.UNKNOWN
            if not_found_ok and code == grpc.StatusCode.NOT_FOUND:
                return None
            details = details_of() if callable(details_of) else str(exc)
            raise CriUnavailable(
                self.endpoint, f"{method}: {code.name}: {details}", code=code.name
            ) from exc

    def _runtime_service(self) -> api_pb2_grpc.RuntimeServiceStub:
        with self._lock:
            if self._stub is None:
                import grpc

                from ociresolve.cri import api_pb2_grpc

                self._channel = grpc.insecure_channel(
                    f"unix://{self.endpoint}",
                    options=[
                        ("grpc.max_receive_message_length", _MAX_MESSAGE),
                        # Fail fast while the runtime is down; the breaker does the waiting.
                        ("grpc.initial_reconnect_backoff_ms", 100),
                        ("grpc.max_reconnect_backoff_ms", 1000),
                    ],
                )
                self._stub = api_pb2_grpc.RuntimeServiceStub(self._channel)
            return self._stub
