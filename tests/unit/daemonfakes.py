"""Helpers of the daemon tests: a fake node with a few containers, an API server over it on a
short unix socket path (its services built as ``serve`` builds them), raw HTTP/2 bytes for
clients that misbehave on the wire, and the tracer's feed into a reporter that records."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import struct
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from fakehost import (
    CONTAINERD_ROOT,
    CRIO_ROOT,
    FakeHost,
    Pod,
    containerd_cgroup_file,
    containerd_spec,
    crio_cgroup_file,
    crio_spec,
    host_cgroup_file,
    new_id,
)

from ociresolve import ContainerMeta, IndexedContainer, Resolver
from ociresolve.daemon.deprecations_service import DeprecationsService
from ociresolve.daemon.feed import ReporterFeed
from ociresolve.daemon.server import ApiServer, Service
from ociresolve.daemon.service import ResolverService
from ociresolve.hostpaths import HostPaths

if TYPE_CHECKING:
    from ociresolve.deprecations.correlate import Connection
    from ociresolve.deprecations.reporter import Reporter

APP_PID, CRIO_PID, HOST_PID, FOREIGN_PID, MISSING_PID = 4242, 5151, 1, 6161, 999_999
# sockaddr_un.sun_path is 108 bytes.
_SOCKET_PATH_MAX: Final = 100


@dataclass
class Node:
    """A fake host: a pod on containerd (sandbox + app, with a cgroup v2 directory), a cri-o
    container, a host process and a process of a container no runtime root knows."""

    host: FakeHost
    pod: Pod
    app: str
    crio: str
    foreign: str
    app_cgroup_id: int

    @property
    def roots(self) -> list[str]:
        return [CONTAINERD_ROOT, CRIO_ROOT]

    def resolver(self, **options: object) -> Resolver:
        return Resolver(
            host_root=str(self.host.root),
            runtime_roots=self.roots,
            cri=False,
            **options,  # type: ignore[arg-type]
        )

    def node_args(self) -> list[str]:
        """The node options of ``lookup``, ``list`` and ``serve``."""
        args = ["--host-root", str(self.host.root)]
        for root in self.roots:
            args += ["--runtime-root", root]
        return args


def make_node(host: FakeHost) -> Node:
    pod = Pod.new()
    app, crio, foreign = new_id(), new_id(), new_id()
    host.enable_cgroup2()
    app_spec = containerd_spec(app, pod)
    app_cgroup_id = host.make_cgroup(app_spec["linux"]["cgroupsPath"])
    host.make_roots()
    host.write(
        host.containerd_bundle(pod.sandbox_id), containerd_spec(pod.sandbox_id, pod, name=None)
    )
    host.write(host.containerd_bundle(app), app_spec)
    host.write(host.crio_bundle(crio), crio_spec(crio, Pod.new("dns", "kube-system")))
    host.write_pid(host.containerd_bundle(app), APP_PID)
    host.set_proc_cgroup(APP_PID, containerd_cgroup_file(app, pod.uid))
    host.set_proc_cgroup(CRIO_PID, crio_cgroup_file(crio, new_id()[:32]))
    host.set_proc_cgroup(HOST_PID, host_cgroup_file())
    host.set_proc_cgroup(FOREIGN_PID, containerd_cgroup_file(foreign, pod.uid))
    return Node(host, pod, app, crio, foreign, app_cgroup_id)


def record(
    cgroup_id: int | None = None,
    *,
    pid: int | None = None,
    pod_name: str = "web",
    bundles: str = "/bundles",
) -> IndexedContainer:
    """A record of a new container ``app`` of pod ``shop/<pod_name>``, on no node: for the
    index itself (its bundle in ``bundles``, its cgroup id and PID as given)."""
    cid = new_id()
    meta = ContainerMeta(
        runtime="containerd",
        container_type="container",
        container_id=cid,
        sandbox_id=new_id(),
        pod_name=pod_name,
        pod_namespace="shop",
        pod_uid="uid",
        container_name="app",
    )
    return IndexedContainer(meta=meta, bundle=f"{bundles}/{cid}", cgroup_id=cgroup_id, pid=pid)


@contextlib.contextmanager
def socket_dir(preferred: Path) -> Iterator[Path]:
    """``preferred``, or a short directory of its own when a socket path in it would be too
    long for ``sockaddr_un``."""
    if len(str(preferred / "ociresolve.sock")) <= _SOCKET_PATH_MAX:
        yield preferred
        return
    directory = Path(tempfile.mkdtemp(prefix="ocr-"))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def api_server(
    resolver: Resolver,
    path: Path | str,
    *,
    reporter: Reporter | None = None,
    mode: int = 0o600,
    owner: tuple[int, int] | None = None,
    **options: object,
) -> ApiServer:
    """An API server (not started) over ``resolver``, with the ``ResolverService`` ``options``,
    and the deprecations service when given a ``reporter``."""
    services: list[Service] = [ResolverService(resolver, **options)]  # type: ignore[arg-type]
    if reporter is not None:
        services.append(DeprecationsService(reporter))
    return ApiServer(services, str(path), mode=mode, owner=owner)


def resolver_service(server: ApiServer) -> ResolverService:
    (service,) = (s for s in server.services if isinstance(s, ResolverService))
    return service


@contextlib.contextmanager
def serving(
    resolver: Resolver, path: Path, *, reporter: Reporter | None = None, **options: object
) -> Iterator[ApiServer]:
    server = api_server(resolver, path, reporter=reporter, **options)
    server.start()
    try:
        yield server
    finally:
        server.stop(0.2)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def unix_connect(path: Path | str, timeout: float = 2.0) -> socket.socket:
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.settimeout(timeout)
    client.connect(str(path))
    return client


def closed_by_peer(client: socket.socket, within: float) -> bool:
    """Whether the other end closes ``client`` within ``within`` seconds (what it sends is
    read and dropped)."""
    client.settimeout(within)
    try:
        while client.recv(65536):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True
    return True


# -- raw HTTP/2 ----------------------------------------------------------------------------------

PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, SETTINGS, CONTINUATION = 0x0, 0x1, 0x4, 0x9
ACK, END_STREAM, END_HEADERS = 0x1, 0x1, 0x4


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return (
        struct.pack(">I", len(payload))[1:]
        + bytes([kind, flags])
        + struct.pack(">I", stream)
        + payload
    )


def _hpack_string(text: str) -> bytes:
    data = text.encode()
    assert len(data) < 127
    return bytes([len(data)]) + data


def hpack(headers: Sequence[tuple[str, str]]) -> bytes:
    """Literal header fields without indexing, no Huffman coding (RFC 7541 6.2.2)."""
    return b"".join(b"\x00" + _hpack_string(k) + _hpack_string(v) for k, v in headers)


def grpc_headers(method: str = "/ociresolve.v1.Resolver/Lookup") -> bytes:
    return hpack(
        [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", method),
            (":authority", "localhost"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ]
    )


def open_streams(path: Path | str, count: int, first: int = 1) -> socket.socket:
    """A connection with ``count`` Lookup calls whose request never comes: the headers of each
    stream, then nothing (no DATA, no END_STREAM)."""
    client = unix_connect(path)
    payload = PREFACE + frame(SETTINGS, 0, 0) + frame(SETTINGS, ACK, 0)  # as a real client does
    headers = grpc_headers()
    for n in range(count):
        payload += frame(HEADERS, END_HEADERS, first + 2 * n, headers)
    client.sendall(payload)
    return client


def random_bytes(size: int) -> bytes:
    return os.urandom(size)


# -- the tracer's feed -------------------------------------------------------------------------

FEED_OFFSET: Final = 1_750_000_000 * 1_000_000_000  # the wall clock at monotonic 0, in ns


def wall(monotonic_ns: int) -> int:
    """The feed's wall clock: ``monotonic_ns`` + ``FEED_OFFSET``."""
    return monotonic_ns + FEED_OFFSET


class FakeReporter:
    """Records what the feed tells the reporter; handles are 100, 101, ..."""

    def __init__(self) -> None:
        self.connections: list[Connection] = []
        self.sends: list[tuple[int, int]] = []
        self.closes: list[tuple[int, int]] = []

    def connected(self, connection: Connection) -> int | None:
        self.connections.append(connection)
        return 100 + len(self.connections) - 1

    def sent(self, handle: int, time_ns: int) -> None:
        self.sends.append((handle, time_ns))

    def closed(self, handle: int, close_ns: int) -> None:
        self.closes.append((handle, close_ns))


def fake_feed(host: Path, **options: Any) -> tuple[ReporterFeed, FakeReporter]:
    """A feed reading ``<host>/proc`` on the ``wall`` clock, with the ``ReporterFeed``
    ``options``, into a ``FakeReporter``."""
    reporter = FakeReporter()
    paths = HostPaths(str(host))
    return ReporterFeed(reporter, wall, paths, **options), reporter  # type: ignore[arg-type]
