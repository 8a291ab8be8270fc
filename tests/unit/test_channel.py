"""``UnixChannel``, the one way the CRI, introspection and daemon clients call gRPC: every call
has a deadline, a failure becomes the caller's own error, grpc is imported by the first call;
and the three clients over it, against a peer that answers any method on a unix socket."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
from fakecri import socket_path

from ociresolve.api import api_pb2
from ociresolve.api.client import DaemonClient
from ociresolve.channel import Failure, UnixChannel
from ociresolve.cri.client import GrpcCriClient
from ociresolve.deprecations import (
    IntrospectionClient,
    IntrospectionError,
    RuntimeUnreachable,
    ServiceMissing,
    introspection_pb2,
)
from ociresolve.errors import CriUnavailable, DaemonUnavailable, OciresolveError

LOOKUP = "/ociresolve.v1.Resolver/Lookup"
WATCH = "/ociresolve.v1.Resolver/Watch"
SYNCED = api_pb2.WatchEvent(kind=api_pb2.WatchEvent.SYNCED).SerializeToString()


class Peer(grpc.GenericRpcHandler):
    """A gRPC server that answers any method with an empty message (every field at its
    default), recording each call's method and the time it had left; ``fail`` makes a method
    answer a status instead, ``delay`` makes it slow, ``replies`` sets a method's answer.
    Methods named ``Watch`` are streams: ``events`` events, then the stream stays open until
    the client leaves (``hold``) or ends."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.calls: list[tuple[str, float | None]] = []
        self.fail: dict[str, tuple[grpc.StatusCode, str]] = {}
        self.delay: dict[str, float] = {}
        self.replies: dict[str, bytes] = {}
        self.events = 2
        self.hold = True
        self._server = grpc.server(ThreadPoolExecutor(8), handlers=[self])
        self._server.add_insecure_port(f"unix:{path}")

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        method: str = details.method  # type: ignore[attr-defined]
        if method.endswith("/Watch"):
            return grpc.unary_stream_rpc_method_handler(lambda r, c: self._stream(method, c))
        return grpc.unary_unary_rpc_method_handler(lambda r, c: self._unary(method, c))

    def _unary(self, method: str, context: grpc.ServicerContext) -> bytes:
        self.calls.append((method, context.time_remaining()))
        time.sleep(self.delay.get(method, 0.0))
        if method in self.fail:
            context.abort(*self.fail[method])
        return self.replies.get(method, b"")

    def _stream(self, method: str, context: grpc.ServicerContext) -> Iterator[bytes]:
        self.calls.append((method, context.time_remaining()))
        if method in self.fail:
            context.abort(*self.fail[method])
        for _ in range(self.events):
            yield SYNCED
        while self.hold and context.is_active():
            time.sleep(0.01)

    def __enter__(self) -> Peer:
        self._server.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.stop(0)


class Mapped(Exception):
    def __init__(self, failed: Failure) -> None:
        super().__init__(failed.reason)
        self.failure = failed


@pytest.fixture
def peer(tmp_path: Path) -> Iterator[Peer]:
    with Peer(socket_path(tmp_path, "peer.sock")) as peer:
        yield peer


@pytest.fixture
def channel(peer: Peer) -> Iterator[UnixChannel]:
    channel = UnixChannel(peer.path, Mapped, keepalive_ms=30_000)
    yield channel
    channel.close()


def no_deadline(left: float | None) -> bool:
    """What the server's ``time_remaining()`` says of a call without a deadline: ``None``, or
    centuries."""
    return left is None or left > 1e6


def lookup(channel: UnixChannel, timeout: float = 1.0) -> api_pb2.LookupResponse:
    return channel.call(
        LOOKUP, api_pb2.LookupRequest(pid=1), api_pb2.LookupResponse, timeout=timeout
    )


# -- deadlines ---------------------------------------------------------------------------------


def test_every_call_of_every_client_has_its_deadline(peer: Peer) -> None:
    cri = GrpcCriClient(peer.path, timeout=0.5)
    try:
        assert cri.runtime_name() == "unknown"
        assert cri.container_status("c") is None and cri.sandbox_status("s") is None
    finally:
        cri.close()
    with IntrospectionClient(peer.path, timeout=0.75) as introspection:
        assert introspection.deprecations() == []  # empty: it asks the version too
    with DaemonClient(peer.path, timeout=0.25) as daemon:
        assert daemon.lookup_pid(1).status == "error"
        daemon.lookup_batch([("pid", 1)])
        daemon.containers()
        assert daemon.deprecated_api_clients().reporting is False  # the message as it came
    timeouts = {
        "/runtime.v1.RuntimeService": 0.5,
        "/containerd.services.introspection.v1.Introspection": 0.75,
        "/containerd.services.version.v1.Version": 0.75,
        "/ociresolve.v1.Resolver": 0.25,
        "/ociresolve.v1.Deprecations": 0.25,
    }
    assert len(peer.calls) == 9
    for method, left in peer.calls:
        assert left is not None and not no_deadline(left), f"{method} without a deadline"
        assert 0 < left <= timeouts[method.rsplit("/", 1)[0]] + 0.05, method  # rounded up


@pytest.mark.parametrize("timeout", [0.0, -1.0, float("inf"), float("nan")])
def test_a_call_without_a_deadline_is_refused(
    peer: Peer, channel: UnixChannel, timeout: float
) -> None:
    with pytest.raises(ValueError, match="needs a deadline"):
        lookup(channel, timeout)
    with pytest.raises(ValueError, match="needs a deadline"):
        channel.call_or_none(
            LOOKUP,
            api_pb2.LookupRequest(),
            api_pb2.LookupResponse,
            timeout=timeout,
            none_on="NOT_FOUND",
        )
    assert peer.calls == []


def test_a_slow_peer_is_the_deadline_exceeded(peer: Peer, channel: UnixChannel) -> None:
    peer.delay[LOOKUP] = 1.0
    started = time.monotonic()
    with pytest.raises(Mapped) as caught:
        lookup(channel, 0.1)
    assert time.monotonic() - started < 0.8
    assert caught.value.failure.code == "DEADLINE_EXCEEDED"


def test_a_stream_needs_keepalive_pings(peer: Peer) -> None:
    channel = UnixChannel(peer.path, Mapped)
    try:
        with pytest.raises(ValueError, match="keepalive"):
            channel.stream(WATCH, api_pb2.WatchRequest(), api_pb2.WatchEvent)
    finally:
        channel.close()
    assert peer.calls == []


# -- errors ------------------------------------------------------------------------------------


def test_a_failure_becomes_the_callers_error(peer: Peer, channel: UnixChannel) -> None:
    peer.fail[LOOKUP] = (grpc.StatusCode.PERMISSION_DENIED, "not you")
    with pytest.raises(Mapped) as caught:
        lookup(channel)
    assert caught.value.failure == Failure(LOOKUP, "PERMISSION_DENIED", "not you")
    assert (caught.value.failure.rpc, caught.value.failure.reason) == (
        "Lookup",
        "PERMISSION_DENIED: not you",
    )
    assert isinstance(caught.value.__cause__, grpc.RpcError)


def test_a_failure_without_details_is_its_code(peer: Peer, channel: UnixChannel) -> None:
    peer.fail[LOOKUP] = (grpc.StatusCode.INTERNAL, "")
    with pytest.raises(Mapped, match=r"^INTERNAL$"):
        lookup(channel)


def test_call_or_none_answers_its_status_as_none(peer: Peer, channel: UnixChannel) -> None:
    peer.fail[LOOKUP] = (grpc.StatusCode.NOT_FOUND, "no such thing")

    def call(none_on: str) -> api_pb2.LookupResponse | None:
        return channel.call_or_none(
            LOOKUP, api_pb2.LookupRequest(), api_pb2.LookupResponse, timeout=1.0, none_on=none_on
        )

    assert call("NOT_FOUND") is None
    with pytest.raises(Mapped, match="NOT_FOUND: no such thing"):
        call("UNIMPLEMENTED")
    del peer.fail[LOOKUP]
    peer.replies[LOOKUP] = api_pb2.LookupResponse(source="index").SerializeToString()
    answer = call("NOT_FOUND")
    assert answer is not None and answer.source == "index"


def test_no_socket_is_an_unavailable_failure(tmp_path: Path) -> None:
    channel = UnixChannel(str(tmp_path / "nobody.sock"), Mapped)
    try:
        with pytest.raises(Mapped) as caught:
            lookup(channel, 0.5)
    finally:
        channel.close()
    assert caught.value.failure.code == "UNAVAILABLE"


@pytest.mark.parametrize(
    ("method", "code", "expected"),
    [
        ("Version", grpc.StatusCode.UNAVAILABLE, CriUnavailable),
        ("Version", grpc.StatusCode.NOT_FOUND, CriUnavailable),
        ("ContainerStatus", grpc.StatusCode.NOT_FOUND, None),
        ("ContainerStatus", grpc.StatusCode.INTERNAL, CriUnavailable),
        ("PodSandboxStatus", grpc.StatusCode.NOT_FOUND, None),
    ],
)
def test_the_cri_clients_errors(
    peer: Peer, method: str, code: grpc.StatusCode, expected: type[Exception] | None
) -> None:
    peer.fail[f"/runtime.v1.RuntimeService/{method}"] = (code, "said the runtime")
    calls: dict[str, Callable[[GrpcCriClient], object]] = {
        "Version": lambda c: c.runtime_name(),
        "ContainerStatus": lambda c: c.container_status("c"),
        "PodSandboxStatus": lambda c: c.sandbox_status("s"),
    }
    client = GrpcCriClient(peer.path)
    try:
        if expected is None:
            assert calls[method](client) is None
            return
        with pytest.raises(expected) as caught:
            calls[method](client)
    finally:
        client.close()
    assert isinstance(caught.value, CriUnavailable)
    assert caught.value.code == code.name
    assert str(caught.value) == f"CRI {peer.path}: {method}: {code.name}: said the runtime"


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (grpc.StatusCode.UNAVAILABLE, RuntimeUnreachable),
        (grpc.StatusCode.DEADLINE_EXCEEDED, RuntimeUnreachable),
        (grpc.StatusCode.INTERNAL, IntrospectionError),
        (grpc.StatusCode.UNIMPLEMENTED, ServiceMissing),
    ],
)
def test_the_introspection_clients_errors(
    peer: Peer, code: grpc.StatusCode, expected: type[IntrospectionError]
) -> None:
    peer.fail["/containerd.services.introspection.v1.Introspection/Server"] = (code, "no")
    version = introspection_pb2.VersionResponse(version="1.6.20")
    peer.replies["/containerd.services.version.v1.Version/Version"] = version.SerializeToString()
    with IntrospectionClient(peer.path) as client, pytest.raises(IntrospectionError) as caught:
        client.deprecations()
    assert type(caught.value) is expected and caught.value.code == code.name
    if expected is ServiceMissing:
        assert isinstance(caught.value, ServiceMissing) and caught.value.version == "1.6.20"
    else:
        assert f"Introspection/Server: {code.name}: no" in str(caught.value)


@pytest.mark.parametrize(
    ("code", "unavailable"),
    [
        (grpc.StatusCode.UNAVAILABLE, True),
        (grpc.StatusCode.DEADLINE_EXCEEDED, True),
        (grpc.StatusCode.CANCELLED, True),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, False),
        (grpc.StatusCode.UNIMPLEMENTED, False),
    ],
)
def test_the_daemon_clients_errors(peer: Peer, code: grpc.StatusCode, unavailable: bool) -> None:
    peer.fail[LOOKUP] = (code, "said the daemon")
    with DaemonClient(peer.path) as client, pytest.raises(OciresolveError) as caught:
        client.lookup_pid(1)
    assert isinstance(caught.value, DaemonUnavailable) is unavailable
    assert str(caught.value) == f"ociresolve daemon at {peer.path}: {code.name}: said the daemon"


def test_a_daemon_without_the_deprecations_service_is_not_reporting(peer: Peer) -> None:
    peer.fail["/ociresolve.v1.Deprecations/DeprecatedApiClients"] = (
        grpc.StatusCode.UNIMPLEMENTED,
        "Method not found!",
    )
    with DaemonClient(peer.path) as client:
        reply = client.deprecated_api_clients()
    assert not reply.reporting and not reply.clients


# -- streams -----------------------------------------------------------------------------------


def test_a_stream_cancelled_ends_quietly(peer: Peer, channel: UnixChannel) -> None:
    stream = channel.stream(WATCH, api_pb2.WatchRequest(), api_pb2.WatchEvent)
    events = iter(stream)
    assert next(events).kind == api_pb2.WatchEvent.SYNCED
    assert next(events).kind == api_pb2.WatchEvent.SYNCED
    ((method, left),) = peer.calls
    assert method == WATCH and no_deadline(left)
    threading.Timer(0.1, stream.cancel).start()
    assert list(events) == []
    assert stream.cancelled


def test_a_stream_the_peer_ends_is_not_cancelled(peer: Peer, channel: UnixChannel) -> None:
    peer.hold = False
    stream = channel.stream(WATCH, api_pb2.WatchRequest(), api_pb2.WatchEvent)
    assert len(list(stream)) == 2
    assert not stream.cancelled


def test_a_stream_that_fails_raises_the_callers_error(peer: Peer, channel: UnixChannel) -> None:
    peer.fail[WATCH] = (grpc.StatusCode.RESOURCE_EXHAUSTED, "too slow")
    stream = channel.stream(WATCH, api_pb2.WatchRequest(), api_pb2.WatchEvent)
    with pytest.raises(Mapped, match="RESOURCE_EXHAUSTED: too slow"):
        list(stream)


# -- the channel's life ------------------------------------------------------------------------


def test_one_channel_for_many_threads_and_a_new_one_after_close(peer: Peer) -> None:
    opened: list[int] = []
    channel = UnixChannel(peer.path, Mapped, before_open=lambda: opened.append(1))
    try:
        with ThreadPoolExecutor(16) as pool:
            replies = list(pool.map(lambda _: lookup(channel), range(200)))
        assert len(replies) == 200 and len(opened) == 1
        channel.close()
        channel.close()  # twice is harmless
        lookup(channel)
        assert len(opened) == 2
    finally:
        channel.close()


def test_before_open_may_refuse(peer: Peer) -> None:
    def refuse() -> None:
        raise DaemonUnavailable(peer.path, "no")

    channel = UnixChannel(peer.path, Mapped, before_open=refuse)
    with pytest.raises(DaemonUnavailable):
        lookup(channel)
    assert peer.calls == []


def test_the_clients_share_the_reconnect_settings_and_keep_their_own_caps() -> None:
    """The backoff is the same for every peer; the reply caps differ with what each sends."""
    channels: dict[str, Any] = {
        "cri": GrpcCriClient("cri.sock")._channel,
        "introspection": IntrospectionClient("containerd.sock")._channel,
        "daemon": DaemonClient("ociresolve.sock")._channel,
    }
    options = {name: dict(channel.options) for name, channel in channels.items()}
    for found in options.values():
        assert found["grpc.initial_reconnect_backoff_ms"] == 100
        assert found["grpc.max_reconnect_backoff_ms"] == 1000
    assert options["cri"]["grpc.max_receive_message_length"] == 16 * 1024 * 1024
    assert options["introspection"]["grpc.max_receive_message_length"] == 4 * 1024 * 1024
    assert options["daemon"]["grpc.max_receive_message_length"] == 256 * 1024 * 1024
    assert "grpc.keepalive_time_ms" in options["daemon"]  # its watch streams have no deadline


# -- grpc, imported late -----------------------------------------------------------------------


def test_grpc_is_imported_by_the_first_call_not_before(peer: Peer) -> None:
    probe = textwrap.dedent(
        f"""
        import sys
        from ociresolve.api.client import DaemonClient
        from ociresolve.channel import UnixChannel
        from ociresolve.cri.client import GrpcCriClient
        from ociresolve.deprecations.client import IntrospectionClient
        clients = [GrpcCriClient({peer.path!r}), IntrospectionClient({peer.path!r}),
                   DaemonClient({peer.path!r}), UnixChannel({peer.path!r}, Exception)]
        for client in clients:
            client.close()
        assert "grpc" not in sys.modules, "imported before any call"
        assert GrpcCriClient({peer.path!r}).runtime_name() == "unknown"
        assert "grpc" in sys.modules
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
