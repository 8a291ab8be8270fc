"""gRPC over a unix socket, one way for the three clients: the CRI (``cri.client``),
containerd's introspection and version services (``deprecations.client``) and the daemon's
own API (``api.client``).

A ``UnixChannel`` opens its gRPC channel at the first call (grpc is imported then, never by
importing this module). Every unary call has a deadline: ``timeout`` is a required argument,
and a zero, negative or infinite one is refused. A failed call becomes the caller's own error:
each client passes the function that turns a ``Failure`` (the method, the status code's name,
what the peer said) into its exception, raised ``from`` the gRPC one. Methods are named by
their path (``/runtime.v1.RuntimeService/Version``) and messages by their classes, so one
channel serves any service of its peer (containerd's warnings and version sit in two proto
packages; the daemon serves ``Resolver`` and ``Deprecations``).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Final, Generic, TypeVar

import msgspec

if TYPE_CHECKING:
    from google.protobuf.message import Message

R = TypeVar("R", bound="Message")

# The status codes that say the peer did not answer (gone, too slow, or the call was dropped
# on the way), as opposed to an answer that is an error.
UNREACHABLE: Final = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED"})
# gRPC's own cap on a reply, made explicit: a client that expects more says so.
DEFAULT_MAX_RECEIVE: Final = 4 * 1024 * 1024
# Every peer here is a local daemon that may restart (the runtime, ociresolve): one that came
# back is found within a second, however long it was gone (gRPC's own backoff starts at 1 s
# and grows to two minutes).
_RECONNECT: Final = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
)


class Failure(msgspec.Struct, frozen=True):
    """A call that failed: its ``method`` path, the status code's name (``UNKNOWN`` for an
    error that carries none) and the peer's ``details`` (possibly empty)."""

    method: str
    code: str
    details: str

    @property
    def rpc(self) -> str:
        """The method's own name: ``ContainerStatus`` of ``/runtime.v1.RuntimeService/...``."""
        return self.method.rsplit("/", 1)[-1]

    @property
    def reason(self) -> str:
        """``CODE: details``, or the code alone when the peer said nothing more."""
        return f"{self.code}: {self.details}" if self.details else self.code


ErrorFor = Callable[[Failure], Exception]


def failure(error: Exception, method: str) -> Failure:
    """What a ``grpc.RpcError`` raised by a call to ``method`` says."""
    # Errors raised by a call are also grpc.Call, with a code and details; others have neither.
    code_of, details_of = getattr(error, "code", None), getattr(error, "details", None)
    code = code_of() if callable(code_of) else None
    details = details_of() if callable(details_of) else str(error)
    return Failure(method, code.name if code is not None else "UNKNOWN", details or "")


class UnixChannel:
    """Calls to the gRPC server on the unix socket ``path``.

    ``error`` turns each failed call into the caller's exception. ``max_receive`` caps a reply
    (bytes); ``keepalive_ms`` pings an idle connection that often, which a stream needs (it
    has no deadline); ``options`` are further gRPC channel arguments. ``before_open`` runs
    before a channel is opened and may raise to refuse (no socket there, say).

    Thread-safe. ``close()`` releases the channel; a later call opens a new one.
    """

    def __init__(
        self,
        path: str,
        error: ErrorFor,
        *,
        max_receive: int = DEFAULT_MAX_RECEIVE,
        keepalive_ms: int | None = None,
        options: Sequence[tuple[str, int]] = (),
        before_open: Callable[[], None] | None = None,
    ) -> None:
        self.path = path
        self.error = error
        self.keepalive_ms = keepalive_ms
        # The gRPC channel arguments it is opened with.
        self.options: tuple[tuple[str, int], ...] = (
            ("grpc.max_receive_message_length", max_receive),
            *_RECONNECT,
            *((("grpc.keepalive_time_ms", keepalive_ms),) if keepalive_ms is not None else ()),
            *options,
        )
        self._before_open = before_open
        self._lock = threading.Lock()
        self._channel: Any = None
        self._methods: dict[str, Any] = {}  # path -> multicallable on the open channel

    def call(self, method: str, request: Message, reply: type[R], *, timeout: float) -> R:
        """``method``'s ``reply`` to ``request``, within ``timeout`` seconds. Raises the
        caller's error when the call fails (no answer in time included)."""
        import grpc

        deadline = _deadline(timeout)
        invoke = self._method(method, "unary_unary", request, reply)
        try:
            answer: R = invoke(request, timeout=deadline)
        except grpc.RpcError as exc:
            raise self.error(failure(exc, method)) from exc
        return answer

    def call_or_none(
        self, method: str, request: Message, reply: type[R], *, timeout: float, none_on: str
    ) -> R | None:
        """``call``, with a failure of status ``none_on`` answered as ``None``: the peer's way
        to say "no such thing" (``NOT_FOUND``) or "not served here" (``UNIMPLEMENTED``)."""
        import grpc

        deadline = _deadline(timeout)
        invoke = self._method(method, "unary_unary", request, reply)
        try:
            answer: R = invoke(request, timeout=deadline)
        except grpc.RpcError as exc:
            failed = failure(exc, method)
            if failed.code == none_on:
                return None
            raise self.error(failed) from exc
        return answer

    def stream(self, method: str, request: Message, reply: type[R]) -> Stream[R]:
        """Open ``method``'s server stream: the one call without a deadline, since it lasts as
        long as its reader wants; a peer that hangs is found by the keepalive pings instead,
        so a channel without ``keepalive_ms`` refuses (``ValueError``)."""
        if self.keepalive_ms is None:
            raise ValueError(f"{method}: a stream needs keepalive pings (keepalive_ms)")
        invoke = self._method(method, "unary_stream", request, reply)
        return Stream(invoke(request, wait_for_ready=False), method, self.error)

    def close(self) -> None:
        with self._lock:
            channel, self._channel, self._methods = self._channel, None, {}
        if channel is not None:
            channel.close()

    def _method(self, method: str, kind: str, request: Message, reply: type[Message]) -> Any:
        with self._lock:
            invoke = self._methods.get(method)
            if invoke is None:
                if self._channel is None:
                    if self._before_open is not None:
                        self._before_open()
                    import grpc

                    # "unix:" and a path, relative or absolute ("unix://" takes only absolute).
                    self._channel = grpc.insecure_channel(f"unix:{self.path}", options=self.options)
                invoke = getattr(self._channel, kind)(
                    method,
                    request_serializer=type(request).SerializeToString,
                    response_deserializer=reply.FromString,
                )
                self._methods[method] = invoke
            return invoke


class Stream(Generic[R]):
    """An open server stream: iterate for its replies. ``cancel()`` (from any thread) ends the
    iteration quietly; a failure raises the channel's error for it."""

    def __init__(self, call: Any, method: str, error: ErrorFor) -> None:
        self._call = call
        self._method = method
        self._error = error

    def __iter__(self) -> Iterator[R]:
        import grpc

        try:
            yield from self._call
        except grpc.RpcError as exc:
            failed = failure(exc, self._method)
            if failed.code == "CANCELLED" and self._call.cancelled():
                return
            raise self._error(failed) from exc

    @property
    def cancelled(self) -> bool:
        """Whether ``cancel()`` ended the stream (not the peer)."""
        return bool(self._call.cancelled())

    def cancel(self) -> None:
        self._call.cancel()


def _deadline(timeout: float) -> float:
    if not (timeout > 0 and math.isfinite(timeout)):
        raise ValueError(f"a call needs a deadline: a timeout of {timeout!r} s is none")
    return timeout
