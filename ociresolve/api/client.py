"""A client of the daemon's API (``ociresolve.v1.Resolver`` and ``ociresolve.v1.Deprecations``),
blocking, every call with a deadline; and the daemon's socket path from the environment.

grpc is imported by the first call, not by importing this module (a ``UnixChannel``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Final, Literal

import msgspec

from ociresolve.channel import UNREACHABLE, Failure, Stream, UnixChannel
from ociresolve.errors import DaemonUnavailable, OciresolveError
from ociresolve.model import IndexedContainer, Step

if TYPE_CHECKING:
    from ociresolve.api import api_pb2

DEFAULT_SOCKET: Final = "/run/ociresolve/ociresolve.sock"
SOCKET_ENV: Final = "OCIRESOLVE_SOCKET"
DEFAULT_TIMEOUT: Final = 1.0
# As much as the daemon sends at most: the List of a very large node.
_MAX_MESSAGE: Final = 256 * 1024 * 1024
# Watch streams have no deadline: pings find a daemon that hangs.
_KEEPALIVE_MS: Final = 30_000
_OPTIONS: Final = (
    # No transparent retries (nor the buffering of each call they need): a lookup that fails
    # is the caller's to retry.
    ("grpc.enable_retries", 0),
    # gRPC's minimum connect timeout despite the name (20 s by default): a stalled attempt on
    # the daemon's socket is given up as soon as the backoff allows. This client's only: a
    # busy runtime may well take longer to accept.
    ("grpc.min_reconnect_backoff_ms", 100),
)
# How the daemon ends a watch stream whose changes it cannot deliver.
_LOST: Final = frozenset({"RESOURCE_EXHAUSTED", "ABORTED"})
_RESOLVER: Final = "/ociresolve.v1.Resolver/"
_DEPRECATIONS: Final = "/ociresolve.v1.Deprecations/"

Status = Literal["found", "host", "not_found", "no_such_process", "error"]
WatchKind = Literal["added", "updated", "removed", "synced"]
# A lookup key: ("pid", 1234), ("cgroup_id", 5678) or ("container_id", "abc...").
Key = tuple[Literal["pid", "cgroup_id", "container_id"], int | str]

_STATUS: Final[dict[int, Status]] = {1: "found", 2: "host", 3: "not_found", 4: "no_such_process"}
_KINDS: Final[dict[int, WatchKind]] = {1: "added", 2: "updated", 3: "removed", 4: "synced"}


class WatchLost(OciresolveError):
    """The daemon ended a watch stream whose changes it could no longer deliver (the client,
    or the daemon's own feed, fell behind: RESOURCE_EXHAUSTED, ABORTED). Nothing is lost as
    long as the client watches again: it gets the current set anew."""

    def __init__(self, socket: str, reason: str) -> None:
        super().__init__(f"ociresolve daemon at {socket}: {reason}")
        self.socket = socket
        self.reason = reason


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
        self._channel = UnixChannel(
            self.socket,
            self._error,
            max_receive=_MAX_MESSAGE,
            keepalive_ms=_KEEPALIVE_MS,
            options=_OPTIONS,
            before_open=self._check_socket,
        )

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> DaemonClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- calls ---------------------------------------------------------------------------------

    def lookup(self, key: Key, *, explain: bool = False) -> LookupResult:
        from ociresolve.api import api_pb2

        reply = self._channel.call(
            _RESOLVER + "Lookup",
            _request(key, explain),
            api_pb2.LookupResponse,
            timeout=self.timeout,
        )
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

        reply = self._channel.call(
            _RESOLVER + "LookupBatch",
            api_pb2.LookupBatchRequest(lookups=[_request(k, False) for k in keys]),
            api_pb2.LookupBatchResponse,
            timeout=self.timeout,
        )
        return [_result(one) for one in reply.results]

    def containers(self) -> list[IndexedContainer]:
        from ociresolve.api import api_pb2
        from ociresolve.api.convert import to_record

        reply = self._channel.call(
            _RESOLVER + "List", api_pb2.ListRequest(), api_pb2.ListResponse, timeout=self.timeout
        )
        return [to_record(message) for message in reply.containers]

    def deprecated_api_clients(self) -> api_pb2.DeprecatedApiClientsResponse:
        """What ``serve --report-deprecations`` attributed so far, and the containers that mount
        a runtime socket without being seen calling (the message as it is).

        A daemon that does not report deprecations does not serve ``Deprecations``: its
        UNIMPLEMENTED is answered as ``reporting`` false, and nothing else.
        """
        from ociresolve.api import api_pb2

        reply = self._channel.call_or_none(
            _DEPRECATIONS + "DeprecatedApiClients",
            api_pb2.DeprecatedApiClientsRequest(),
            api_pb2.DeprecatedApiClientsResponse,
            timeout=self.timeout,
            none_on="UNIMPLEMENTED",
        )
        return reply if reply is not None else api_pb2.DeprecatedApiClientsResponse(reporting=False)

    def watch(self) -> Watch:
        """The current set as ``added``/``removed`` events, one ``synced``, then each change.

        Iterate the returned ``Watch``; ``cancel()`` it (from any thread) to stop. Iterating
        raises ``DaemonUnavailable`` when the daemon goes away, ``WatchLost`` when it ended the
        stream because changes could not be delivered: watch again to resume (and re-sync).
        """
        from ociresolve.api import api_pb2

        stream = self._channel.stream(
            _RESOLVER + "Watch", api_pb2.WatchRequest(), api_pb2.WatchEvent
        )
        return Watch(stream, self.socket)

    # -- plumbing ------------------------------------------------------------------------------

    def _check_socket(self) -> None:
        if not os.path.exists(self.socket):
            raise DaemonUnavailable(self.socket, "no such socket (is it running?)")

    def _error(self, failed: Failure) -> OciresolveError:
        if failed.code in UNREACHABLE:
            return DaemonUnavailable(self.socket, failed.reason)
        if failed.rpc == "Watch" and failed.code in _LOST:
            return WatchLost(self.socket, failed.reason)
        return OciresolveError(f"ociresolve daemon at {self.socket}: {failed.reason}")


class Watch:
    """An open watch stream: iterate for ``(kind, record)``; ``record`` is ``None`` for
    ``synced``."""

    def __init__(self, stream: Stream[api_pb2.WatchEvent], socket: str) -> None:
        self._stream = stream
        self._socket = socket

    def __iter__(self) -> Iterator[tuple[WatchKind, IndexedContainer | None]]:
        from ociresolve.api.convert import to_record

        for event in self._stream:
            kind = _KINDS.get(event.kind)
            if kind is None:
                continue  # a kind newer than this client
            record = None if kind == "synced" else to_record(event.container)
            yield kind, record
        if not self._stream.cancelled:
            raise DaemonUnavailable(self._socket, "the watch stream ended (daemon stopping?)")

    def cancel(self) -> None:
        self._stream.cancel()


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
