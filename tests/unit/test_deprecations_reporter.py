"""The deprecation reporter: a line per new occurrence (the original reporter's words for CRI
v1alpha2, every id handled alike), a line per attributed client, nothing attributed to the
warnings already there at start; and its standings through the daemon's
``Deprecations.DeprecatedApiClients`` RPC, over a real API server (which serves that service only
with a reporter, as ``serve`` does)."""

from __future__ import annotations

import contextlib
import io
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from daemonfakes import Node, serving, socket_dir
from fakeintrospection import V1ALPHA2
from tracerfakes import parse_logfmt

from ociresolve import Resolver
from ociresolve.api import api_pb2
from ociresolve.api.client import DaemonClient
from ociresolve.daemon.server import ApiServer
from ociresolve.deprecations import Deprecation
from ociresolve.deprecations.correlate import Connection, Correlator
from ociresolve.deprecations.lines import CLIENT_MSG, OCCURRENCE_MSG, V1ALPHA2_MSG
from ociresolve.deprecations.poller import Occurrence
from ociresolve.deprecations.reporter import Reporter

S = 1_000_000_000
MS = 1_000_000
T0 = 1_750_000_000 * S
NOW = T0 + 100 * S  # the reporter's wall clock in these tests
PULL = "io.containerd.deprecation/pull-schema-1-image"
NODE = "node-1"


def dep(id_: str, at: int | None) -> Deprecation:
    return Deprecation(id=id_, message=f"{id_} is deprecated", last_occurrence_ns=at)


class Snapshots:
    """A source answering one snapshot per poll; after the last one it sets ``stop``."""

    endpoint = "/run/containerd/containerd.sock"

    def __init__(self, snapshots: list[list[Deprecation]], stop: threading.Event) -> None:
        self.snapshots = snapshots
        self.stop = stop
        self.polls = 0
        self.closed = False

    def deprecations(self) -> list[Deprecation]:
        snapshot = self.snapshots[min(self.polls, len(self.snapshots) - 1)]
        self.polls += 1
        if self.polls >= len(self.snapshots):
            self.stop.set()
        return list(snapshot)

    def close(self) -> None:
        self.closed = True


def conn(pod: str | None, at: int, *, comm: str = "client", pid: int = 7) -> Connection:
    namespace, name = pod.split("/") if pod else (None, None)
    return Connection(
        connect_ns=at,
        pid=pid,
        comm=comm,
        pod_namespace=namespace,
        pod_name=name,
        container="main" if pod else None,
        container_id=f"{pid:064x}" if pod else None,
    )


def reporter(
    source: Snapshots | None = None, *, correlator: Correlator | None = None
) -> tuple[Reporter, io.StringIO]:
    stream = io.StringIO()
    made = Reporter(
        source or Snapshots([[]], threading.Event()),
        node=NODE,
        stream=stream,
        interval=0.001,
        correlator=correlator,
        clock=lambda: NOW,
        settle=0.0,  # the fixed clock: no occurrence is recent (tests/unit/test_reporter_hooks)
    )
    return made, stream


def lines(stream: io.StringIO) -> list[dict[str, str]]:
    return [dict(parse_logfmt(line)) for line in stream.getvalue().splitlines()]


def run(snapshots: list[list[Deprecation]], correlator: Correlator | None = None) -> Reporter:
    stop = threading.Event()
    made, _ = reporter(Snapshots(snapshots, stop), correlator=correlator)
    made.run(stop)
    return made


# -- occurrence lines --------------------------------------------------------------------------


def test_a_line_per_new_occurrence() -> None:
    stop = threading.Event()
    source = Snapshots(
        [
            [dep(V1ALPHA2, T0)],  # already there: existing
            [dep(V1ALPHA2, T0)],  # no change
            [dep(V1ALPHA2, T0 + 10 * S)],
            [dep(V1ALPHA2, T0 + 10 * S), dep(PULL, T0 + 12 * S)],
            [dep(V1ALPHA2, T0 + 20 * S), dep(PULL, T0 + 12 * S)],
        ],
        stop,
    )
    made, stream = reporter(source)
    made.run(stop)
    assert stream.getvalue().splitlines()[0] == (
        'time=2025-06-15T15:08:20.000Z level=info msg="found CRI v1alpha2 API deprecation '
        'warning" node=node-1 deprecation=io.containerd.deprecation/cri-api-v1alpha2 '
        "lastOccurrence=2025-06-15T15:06:40Z existing=true"
    )
    got = [
        (r["msg"], r["deprecation"], r["lastOccurrence"], r.get("existing")) for r in lines(stream)
    ]
    assert got == [
        (V1ALPHA2_MSG, V1ALPHA2, "2025-06-15T15:06:40Z", "true"),
        (V1ALPHA2_MSG, V1ALPHA2, "2025-06-15T15:06:50Z", None),
        (OCCURRENCE_MSG, PULL, "2025-06-15T15:06:52Z", None),
        (V1ALPHA2_MSG, V1ALPHA2, "2025-06-15T15:07:00Z", None),
    ]
    assert all(r["node"] == NODE and r["level"] == "info" for r in lines(stream))
    assert made.occurrences == 4
    assert made.clients() == []  # no correlator: nothing attributed


def test_a_warning_without_a_time_is_reported_not_attributed() -> None:
    correlator = Correlator(since_ns=T0)
    made, stream = reporter(correlator=correlator)
    made.connected(conn("legacy/app", T0 + 1 * S))
    made.handle(Occurrence(dep(V1ALPHA2, None)))
    (row,) = lines(stream)
    assert row["msg"] == V1ALPHA2_MSG and "lastOccurrence" not in row
    assert made.clients() == []
    assert correlator.counted(V1ALPHA2) == 0


# -- client lines ------------------------------------------------------------------------------


def test_client_lines_for_the_candidates_and_growing_confidence() -> None:
    correlator = Correlator(since_ns=T0)
    made, stream = reporter(correlator=correlator)
    confidences = []
    for k in range(8):
        at = T0 + k * 10 * S
        made.connected(conn("legacy/collector-5d9f", at, comm="legacy", pid=10))
        made.connected(conn("shop/web-1", at + 3 * S, comm="web", pid=20))  # far from it
        made.connected(conn("shop/near-2", at - 150 * MS, comm="near", pid=30))  # close, less so
        before = len(stream.getvalue().splitlines())
        made.handle(Occurrence(dep(V1ALPHA2, at + 4 * MS)))
        new = lines(stream)[before:]
        assert new[0]["msg"] == V1ALPHA2_MSG
        clients = [r for r in new if r["msg"] == CLIENT_MSG]
        # Only the candidates with a real share get a line: the legacy pod alone.
        assert [r["pod"] for r in clients] == ["legacy/collector-5d9f"], new
        (line,) = clients
        assert (line["container"], line["comm"], line["occurrences"]) == (
            "main",
            "legacy",
            str(k + 1),
        )
        assert line["deprecation"] == V1ALPHA2 and line["node"] == NODE
        confidences.append(float(line["confidence"]))
    assert confidences == sorted(confidences) and confidences[-1] >= 0.85
    top, *others = made.clients()
    assert top.identity.pod == "legacy/collector-5d9f" and top.confidence >= 0.85
    assert top.pid == 10 and top.container_id == f"{10:064x}"
    assert all(other.confidence < 0.1 for other in others)


def test_a_host_process_line_has_no_pod() -> None:
    made, stream = reporter(correlator=Correlator(since_ns=T0))
    made.connected(conn(None, T0 + 1 * S, comm="crictl", pid=99))
    made.handle(Occurrence(dep(PULL, T0 + 1 * S + 3 * MS)))
    occurrence, client = lines(stream)
    assert occurrence["msg"] == OCCURRENCE_MSG
    assert client["msg"] == CLIENT_MSG and client["comm"] == "crictl"
    assert "pod" not in client and "container" not in client
    assert client["confidence"] == "0.50" and client["occurrences"] == "1"


def test_existing_warnings_are_not_attributed() -> None:
    correlator = Correlator(since_ns=T0)
    stop = threading.Event()
    made, stream = reporter(
        Snapshots([[dep(V1ALPHA2, T0 + 5 * S)], [dep(V1ALPHA2, T0 + 5 * S)]], stop),
        correlator=correlator,
    )
    # A connection that would explain it perfectly, had it been new.
    made.connected(conn("legacy/app", T0 + 5 * S - 2 * MS))
    made.run(stop)
    (row,) = lines(stream)
    assert row["existing"] == "true"
    assert made.clients() == []
    assert correlator.counted(V1ALPHA2) == 0


def test_each_id_is_scored_apart() -> None:
    correlator = Correlator(since_ns=T0)
    made, stream = reporter(correlator=correlator)
    for k in range(4):
        at = T0 + k * 10 * S
        made.connected(conn("legacy/old-cri", at, comm="old", pid=1))
        made.connected(conn("build/puller", at + 5 * S, comm="pull", pid=2))
        made.handle(Occurrence(dep(V1ALPHA2, at + 2 * MS)))
        made.handle(Occurrence(dep(PULL, at + 5 * S + 2 * MS)))
    by_id = {(a.deprecation, a.identity.pod): a for a in made.clients()}
    assert by_id[(V1ALPHA2, "legacy/old-cri")].confidence >= 0.75
    assert by_id[(PULL, "build/puller")].confidence >= 0.75
    assert (V1ALPHA2, "build/puller") not in by_id and (PULL, "legacy/old-cri") not in by_id
    pairs = {(r["deprecation"], r["pod"]) for r in lines(stream) if r["msg"] == CLIENT_MSG}
    assert pairs == {(V1ALPHA2, "legacy/old-cri"), (PULL, "build/puller")}


def test_connections_from_another_thread_while_it_runs() -> None:
    correlator = Correlator(since_ns=T0)
    stop = threading.Event()
    snapshots: list[list[Deprecation]] = [[]] + [
        [dep(V1ALPHA2, T0 + k * S + 3 * MS)] for k in range(1, 200)
    ]
    made, _ = reporter(Snapshots(snapshots, stop), correlator=correlator)

    def feed() -> None:
        for k in range(1, 200):
            made.connected(conn("legacy/app", T0 + k * S))
            made.clients()

    feeder = threading.Thread(target=feed)
    feeder.start()
    made.run(stop)
    feeder.join()
    assert made.occurrences == 199


def test_close_closes_the_source() -> None:
    source = Snapshots([[]], threading.Event())
    made, _ = reporter(source)
    made.close()
    assert source.closed


# -- the DeprecatedApiClients RPC --------------------------------------------------------------

ServeApi = Callable[[Reporter | None], ApiServer]


@pytest.fixture
def serve_api(node: Node, tmp_path: Path) -> Iterator[ServeApi]:
    """Starts the API server over the node, with the deprecations service when given a
    reporter."""
    with (
        contextlib.ExitStack() as stack,
        socket_dir(tmp_path) as directory,
        Resolver(host_root=str(node.host.root), runtime_roots=node.roots, cri=False) as resolver,
    ):

        def start(made: Reporter | None) -> ApiServer:
            return stack.enter_context(serving(resolver, directory / "api.sock", reporter=made))

        yield start


def attributed_reporter() -> Reporter:
    made, _ = reporter(correlator=Correlator(since_ns=T0))
    for k in range(5):
        at = T0 + k * 10 * S
        made.connected(conn("legacy/collector-5d9f", at, comm="legacy", pid=4242))
        made.connected(conn(None, at + 4 * S, comm="crictl", pid=1))
        made.handle(Occurrence(dep(V1ALPHA2, at + 3 * MS)))
    return made


def test_the_rpc_without_a_reporter(serve_api: ServeApi) -> None:
    """The service is not served: UNIMPLEMENTED on the wire, "not reporting" to the client."""
    api = serve_api(None)
    with DaemonClient(api.socket_path) as client:
        reply = client.deprecated_api_clients()
    assert not reply.reporting and not reply.correlating and not reply.clients
    with grpc.insecure_channel(f"unix:{api.socket_path}") as channel:
        call = channel.unary_unary(
            "/ociresolve.v1.Deprecations/DeprecatedApiClients",
            request_serializer=api_pb2.DeprecatedApiClientsRequest.SerializeToString,
            response_deserializer=api_pb2.DeprecatedApiClientsResponse.FromString,
        )
        with pytest.raises(grpc.RpcError) as refused:
            call(api_pb2.DeprecatedApiClientsRequest(), timeout=1.0)
    assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED  # type: ignore[attr-defined]


def test_the_rpc_with_a_reporter_but_no_tracer(serve_api: ServeApi) -> None:
    made, _ = reporter()
    api = serve_api(made)
    with DaemonClient(api.socket_path) as client:
        reply = client.deprecated_api_clients()
    assert reply.reporting and not reply.correlating and not reply.clients


def test_the_rpc_gives_the_standings(serve_api: ServeApi) -> None:
    made = attributed_reporter()
    api = serve_api(made)
    with DaemonClient(api.socket_path) as client:
        reply = client.deprecated_api_clients()
    assert reply.reporting and reply.correlating
    (top,) = reply.clients
    expected = made.clients()[0]
    assert (top.deprecation, top.pod_namespace, top.pod_name, top.container, top.comm) == (
        V1ALPHA2,
        "legacy",
        "collector-5d9f",
        "main",
        "legacy",
    )
    assert top.confidence == pytest.approx(expected.confidence) and top.confidence > 0.8
    assert (top.occurrences, top.considered) == (5, 5)
    assert top.last_seen_unix_nano == T0 + 40 * S + 3 * MS
    assert (top.container_id, top.pid) == (f"{4242:064x}", 4242)
