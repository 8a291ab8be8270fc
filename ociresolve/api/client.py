"""A client of the daemon's API (``ociresolve.v1.Resolver``), blocking, every call with a
deadline; and the daemon's socket path from the environment.

grpc is imported by the first call, not by importing this module.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Final, Literal

import msgspec

from ociresolve.errors import DaemonUnavailable, OciresolveError
from ociresolve.model import IndexedContainer, Step

if TYPE_CHECKING:
    from ociresolve.api import api_pb2, api_pb2_grpc

DEFAULT_SOCKET: Final = "/run/ociresolve/ociresolve.sock"
SOCKET_ENV: Final = "OCIRESOLVE_SOCKET"
DEFAULT_TIMEOUT: Final = 1.0
_MAX_MESSAGE: Final = 256 * 1024 * 1024

Status = Literal["found", "host", "not_found", "no_such_process", "error"]
WatchKind = Literal["added", "updated", "removed", "synced"]
# A lookup key: ("pid", 1234), ("cgroup_id", 5678) or ("container_id", "abc...").
Key = tuple[Literal["pid", "cgroup_id", "container_id"], int | str]

_STATUS: Final[dict[int, Status]] = {1: "found", 2: "host", 3: "not_found", 4: "no_such_process"}
_KINDS: Final[dict[int, WatchKind]] = {1: "added", 2: "updated", 3: "removed", 4: "synced"}
_UNAVAILABLE: Final = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED")


def daemon_socket(path: str | None = None) -> str:
    """``path``, else ``$OCIRESOLVE_SOCKET``, else the default socket."""
    return path or os.environ.get(SOCKET_ENV) or DEFAULT_SOCKET


class LookupResult(msgspec.Struct, frozen=True, kw_only=True):
    """The daemon's answer. ``record`` is set when ``status == "found"`` (its ``bundle`` is
    empty for an answer from the CRI); ``container_id`` may name the container of a process
    even when nobody knows it; ``steps`` only with ``explain``."""

    status: Status
    record: IndexedContainer | None = None
    source: str | None = None
    container_id: str | None = None
    error: str | None = None
    steps: list[Step] = msgspec.field(default_factory=list)


class DaemonClient:
    """Talks to ``ociresolve serve`` over its unix socket.

    Every call raises ``DaemonUnavailable`` when the daemon does not answer within
    ``timeout`` seconds, and ``OciresolveError`` when it refuses a request.
    """

    def __init__(self, socket: str | None = None, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.socket = daemon_socket(socket)
        self.timeout = timeout
        self._lock = threading.Lock()
        self._channel: Any = None
        self._stub: api_pb2_grpc.ResolverStub | None = None

    def close(self) -> None:
        with self._lock:
            channel, self._channel, self._stub = self._channel, None, None
        if channel is not None:
            channel.close()

    def __enter__(self) -> DaemonClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- calls ---------------------------------------------------------------------------------

    def lookup(self, key: Key, *, explain: bool = False) -> LookupResult:

        request = _request(key, explain)
        reply: api_pb2.LookupResponse = self._call(lambda stub: stub.Lookup(request, **self._kw))
        return _result(reply)

    def lookup_pid(self, pid: int, *, explain: bool = False) -> LookupResult:
        return self.lookup(("pid", pid), explain=explain)

    def lookup_cgroup_id(self, cgroup_id: int) -> LookupResult:
        return self.lookup(("cgroup_id", cgroup_id))

    def lookup_container(self, container_id: str) -> LookupResult:
        return self.lookup(("container_id", container_id))

    def lookup_batch(self, keys: Sequence[Key]) -> list[LookupResult]:
        """Up to 4096 lookups in one call, answered in order."""
        from ociresolve.api import api_pb2

        request = api_pb2.LookupBatchRequest(lookups=[_request(k, False) for k in keys])
        reply = self._call(lambda stub: stub.LookupBatch(request, **self._kw))
        return [_result(one) for one in reply.results]

    def containers(self) -> list[IndexedContainer]:
        from ociresolve.api import api_pb2
        from ociresolve.api.convert import to_record

        reply = self._call(lambda stub: stub.List(api_pb2.ListRequest(), **self._kw))
        return [to_record(message) for message in reply.containers]

    def deprecated_api_clients(self) -> api_pb2.DeprecatedApiClientsResponse:
        """What ``serve --report-deprecations`` attributed so far (the message as it is)."""
        from ociresolve.api import api_pb2

        request = api_pb2.DeprecatedApiClientsRequest()
        reply: api_pb2.DeprecatedApiClientsResponse = self._call(
            lambda stub: stub.DeprecatedApiClients(request, **self._kw)
        )
        return reply

    def watch(self) -> Watch:
        """The current set as ``added``/``removed`` events, one ``synced``, then each change.

        Iterate the returned ``Watch``; ``cancel()`` it (from any thread) to stop. Iterating
        raises ``DaemonUnavailable`` when the daemon goes away: watch again to resume.
        """
        from ociresolve.api import api_pb2

        stub = self._stub_or_connect()
        # No deadline on the stream itself: the connection is kept alive by pings.
        call = stub.Watch(api_pb2.WatchRequest(), wait_for_ready=False)
        return Watch(call, self.socket)

    # -- plumbing ------------------------------------------------------------------------------

    @property
    def _kw(self) -> dict[str, Any]:
        return {"timeout": self.timeout}

    def _stub_or_connect(self) -> api_pb2_grpc.ResolverStub:
        with self._lock:
            if self._stub is None:
                if not os.path.exists(self.socket):
                    raise DaemonUnavailable(self.socket, "no such socket (is it running?)")
                import grpc

                from ociresolve.api import api_pb2_grpc

                self._channel = grpc.insecure_channel(
                    f"unix:{self.socket}",
                    options=[
                        ("grpc.max_receive_message_length", _MAX_MESSAGE),
                        ("grpc.enable_retries", 0),
                        ("grpc.keepalive_time_ms", 30_000),
                        # A restarted daemon is found within a second, however long it was
                        # gone (gRPC's own backoff grows to two minutes).
                        ("grpc.initial_reconnect_backoff_ms", 100),
                        ("grpc.min_reconnect_backoff_ms", 100),
                        ("grpc.max_reconnect_backoff_ms", 1000),
                    ],
                )
                self._stub = api_pb2_grpc.ResolverStub(self._channel)
            return self._stub

    def _call(self, call: Any) -> Any:
        import grpc

        stub = self._stub_or_connect()
        try:
            return call(stub)
        except grpc.RpcError as exc:
            raise _error(exc, self.socket) from None


class Watch:
    """An open watch stream: iterate for ``(kind, record)``; ``record`` is ``None`` for
    ``synced``."""

    def __init__(self, call: Any, socket: str) -> None:
        self._call = call
        self._socket = socket

    def __iter__(self) -> Iterator[tuple[WatchKind, IndexedContainer | None]]:
        import grpc

        from ociresolve.api.convert import to_record

        try:
            for event in self._call:
                kind = _KINDS.get(event.kind)
                if kind is None:
                    continue  # a kind newer than this client
                record = None if kind == "synced" else to_record(event.container)
                yield kind, record
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.CANCELLED and self._call.cancelled():
                return
            raise _error(exc, self._socket) from None
        raise DaemonUnavailable(self._socket, "the watch stream ended (daemon stopping?)")

    def cancel(self) -> None:
        self._call.cancel()


def _request(key: Key, explain: bool) -> api_pb2.LookupRequest:
    from ociresolve.api import api_pb2

    kind, value = key
    if kind == "container_id":
        return api_pb2.LookupRequest(container_id=str(value), explain=explain)
    if not isinstance(value, int) or value < 0:
        raise ValueError(f"{kind} must be a non-negative integer, not {value!r}")
    if kind == "pid":
        return api_pb2.LookupRequest(pid=value, explain=explain)
    return api_pb2.LookupRequest(cgroup_id=value, explain=explain)


def _result(reply: api_pb2.LookupResponse) -> LookupResult:
    from ociresolve.api.convert import to_record

    status = _STATUS.get(reply.status, "error")
    return LookupResult(
        status=status,
        record=to_record(reply.container) if status == "found" else None,
        source=reply.source or None,
        container_id=reply.container_id or None,
        error=reply.error or None,
        steps=[Step(step=s.step, result=s.result, seconds=s.seconds) for s in reply.steps],
    )


def _error(exc: Any, socket: str) -> OciresolveError:
    code = exc.code().name if exc.code() is not None else "UNKNOWN"
    details = exc.details() or code
    if code in _UNAVAILABLE:
        return DaemonUnavailable(socket, f"{code}: {details}")
    return OciresolveError(f"ociresolve daemon at {socket}: {code}: {details}")
