"""The daemon's API (``ociresolve.v1.Resolver``) end to end: a real API server on a unix socket
over a resolver of a fake node, asked through ``DaemonClient``."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from daemonfakes import (
    APP_PID,
    CRIO_PID,
    FOREIGN_PID,
    HOST_PID,
    MISSING_PID,
    Node,
    api_server,
    resolver_service,
    serving,
    socket_dir,
)
from fakehost import Pod, containerd_spec, new_id, wait_until

from ociresolve import ContainerMeta, IndexedContainer, OciresolveError, Resolver
from ociresolve.api import api_pb2, api_pb2_grpc
from ociresolve.api.client import DaemonClient, Watch, WatchKind
from ociresolve.daemon.server import ApiServer
from ociresolve.daemon.service import MAX_BATCH
from ociresolve.errors import DaemonUnavailable

pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")

Event = tuple[WatchKind, IndexedContainer | None]


@pytest.fixture
def client(server: ApiServer) -> Iterator[DaemonClient]:
    with DaemonClient(server.socket_path) as client:
        yield client


class Watcher:
    """A watch stream read by a thread of its own into a queue."""

    def __init__(self, watch: Watch) -> None:
        self.watch = watch
        self.events: queue.Queue[Event] = queue.Queue()
        self.error: BaseException | None = None
        self.ended = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for event in self.watch:
                self.events.put(event)
        except BaseException as exc:
            self.error = exc
        finally:
            self.ended.set()

    def next(self, timeout: float = 5.0) -> Event:
        return self.events.get(timeout=timeout)

    def until_synced(self) -> list[Event]:
        events: list[Event] = []
        while True:
            event = self.next()
            if event[0] == "synced":
                return events
            events.append(event)

    def stop(self) -> None:
        self.watch.cancel()
        assert self.ended.wait(5.0)


def container_id(record: IndexedContainer | None) -> str | None:
    assert record is not None
    return record.meta.container_id


# -- Lookup --------------------------------------------------------------------------------------


def test_lookup_pid_of_a_container(node: Node, client: DaemonClient) -> None:
    result = client.lookup_pid(APP_PID)
    assert result.status == "found"
    assert result.source == "index"
    assert result.container_id == node.app
    assert result.steps == []
    record = result.record
    assert record is not None
    assert record.meta == node.resolver().lookup_container(node.app)
    assert record.meta.pod_uid == node.pod.uid
    assert (record.pid, record.cgroup_id) == (APP_PID, node.app_cgroup_id)
    assert record.bundle == str(node.host.containerd_bundle(node.app))
    assert not record.removed


def test_lookup_pid_of_a_cri_o_container(node: Node, client: DaemonClient) -> None:
    result = client.lookup_pid(CRIO_PID)
    assert result.status == "found" and result.record is not None
    assert (result.record.meta.runtime, result.record.meta.container_id) == ("cri-o", node.crio)


def test_lookup_pid_of_a_host_process(client: DaemonClient) -> None:
    result = client.lookup_pid(HOST_PID)
    assert (result.status, result.record, result.container_id) == ("host", None, None)


def test_lookup_pid_of_no_process(client: DaemonClient) -> None:
    result = client.lookup_pid(MISSING_PID)
    assert result.status == "no_such_process"
    assert result.record is None
    assert result.error is not None and str(MISSING_PID) in result.error


def test_lookup_pid_of_a_container_nobody_knows(node: Node, client: DaemonClient) -> None:
    result = client.lookup_pid(FOREIGN_PID)
    assert (result.status, result.record) == ("not_found", None)
    assert result.container_id == node.foreign


def test_lookup_cgroup_id(node: Node, client: DaemonClient) -> None:
    result = client.lookup_cgroup_id(node.app_cgroup_id)
    assert result.status == "found" and result.record is not None
    assert result.record.meta.container_id == node.app
    assert result.source == "index"
    assert client.lookup_cgroup_id(node.app_cgroup_id + 10**9).status == "not_found"


def test_lookup_container_id(node: Node, client: DaemonClient) -> None:
    sandbox = client.lookup_container(node.pod.sandbox_id)
    assert sandbox.status == "found" and sandbox.record is not None
    assert sandbox.record.meta.container_type == "sandbox"
    unknown = new_id()
    missing = client.lookup_container(unknown)
    assert (missing.status, missing.container_id) == ("not_found", unknown)
    empty = client.lookup_container("")
    assert empty.status == "error" and empty.error == "empty container id"


def test_a_miss_is_read_from_the_bundle_then_indexed(node: Node, tmp_path: Path) -> None:
    """Over a resolver that was never started (no watcher), the first lookup reads the bundle
    (off the event loop), the next one is an index hit."""
    resolver = node.resolver()
    try:
        with socket_dir(tmp_path) as directory, serving(resolver, directory / "api.sock") as api:
            with DaemonClient(api.socket_path) as client:
                first = client.lookup_pid(APP_PID)
                second = client.lookup_pid(APP_PID)
                explained = client.lookup_container(node.pod.sandbox_id)
            assert (first.status, first.source) == ("found", "bundle")
            assert (second.status, second.source) == ("found", "index")
            assert first.record == second.record
            assert (explained.status, explained.source) == ("found", "bundle")
            assert resolver_service(api).lookups == {("bundle", "found"): 2, ("index", "found"): 1}
    finally:
        resolver.close()


def test_explain_steps(node: Node, client: DaemonClient) -> None:
    found = client.lookup_pid(APP_PID, explain=True)
    assert found.status == "found"
    assert [s.step for s in found.steps] == ["cgroup", "index"]
    assert found.steps[0].result == node.app
    assert found.steps[1].result == "hit"
    assert all(s.seconds >= 0 for s in found.steps)
    host = client.lookup_pid(HOST_PID, explain=True)
    assert host.status == "host" and [s.step for s in host.steps] == ["cgroup"]
    foreign = client.lookup_pid(FOREIGN_PID, explain=True)
    assert foreign.status == "not_found" and foreign.container_id == node.foreign
    assert [s.step for s in foreign.steps] == ["cgroup", "index", "bundle", "cri"]
    assert foreign.steps[-1].result == "off"
    assert client.lookup_pid(MISSING_PID, explain=True).status == "no_such_process"


def test_a_request_without_a_key_is_an_error(server: ApiServer) -> None:
    with grpc.insecure_channel(f"unix:{server.socket_path}") as channel:
        stub = api_pb2_grpc.ResolverStub(channel)
        reply = stub.Lookup(api_pb2.LookupRequest(), timeout=1.0)
    assert reply.status == api_pb2.LookupResponse.ERROR
    assert "no pid" in reply.error


def test_bad_keys_are_refused_by_the_client(client: DaemonClient) -> None:
    with pytest.raises(ValueError, match="non-negative"):
        client.lookup_pid(-1)
    with pytest.raises(ValueError, match="non-negative"):
        client.lookup(("cgroup_id", "12"))


# -- LookupBatch ---------------------------------------------------------------------------------


def test_batch_answers_in_order(node: Node, client: DaemonClient) -> None:
    unknown = new_id()
    results = client.lookup_batch(
        [
            ("pid", HOST_PID),
            ("container_id", node.crio),
            ("pid", APP_PID),
            ("pid", MISSING_PID),
            ("cgroup_id", node.app_cgroup_id),
            ("container_id", unknown),
            ("pid", FOREIGN_PID),
        ]
    )
    assert [r.status for r in results] == [
        "host",
        "found",
        "found",
        "no_such_process",
        "found",
        "not_found",
        "not_found",
    ]
    assert [r.container_id for r in results] == [
        None,
        node.crio,
        node.app,
        None,
        node.app,
        unknown,
        node.foreign,
    ]
    assert client.lookup_batch([]) == []


def test_a_full_batch_is_answered(node: Node, client: DaemonClient) -> None:
    results = client.lookup_batch([("pid", APP_PID)] * MAX_BATCH)
    assert len(results) == MAX_BATCH
    assert {r.container_id for r in results} == {node.app}


def test_a_batch_too_large_is_invalid_not_unavailable(
    server: ApiServer, client: DaemonClient
) -> None:
    with pytest.raises(OciresolveError, match="INVALID_ARGUMENT") as caught:
        client.lookup_batch([("pid", APP_PID)] * (MAX_BATCH + 1))
    assert not isinstance(caught.value, DaemonUnavailable)
    assert f"at most {MAX_BATCH}" in str(caught.value)
    assert client.lookup_pid(APP_PID).status == "found"  # the connection is still good


# -- List ----------------------------------------------------------------------------------------


def test_list(node: Node, resolver: Resolver, client: DaemonClient) -> None:
    records = client.containers()
    assert {r.meta.container_id for r in records} == {node.app, node.crio, node.pod.sandbox_id}
    assert sorted(records, key=lambda r: r.bundle) == sorted(
        resolver.containers(), key=lambda r: r.bundle
    )


def test_unavailable_when_there_is_no_daemon(tmp_path: Path) -> None:
    with DaemonClient(str(tmp_path / "none.sock")) as client:
        with pytest.raises(DaemonUnavailable, match="no such socket"):
            client.containers()
        with pytest.raises(DaemonUnavailable):
            client.watch()


# -- Watch ---------------------------------------------------------------------------------------


def test_watch_starts_with_the_current_set_then_follows_changes(
    node: Node, client: DaemonClient
) -> None:
    watcher = Watcher(client.watch())
    try:
        initial = watcher.until_synced()
        assert {kind for kind, _ in initial} == {"added"}
        assert {container_id(r) for _, r in initial} == {node.app, node.crio, node.pod.sandbox_id}

        late, pod = new_id(), Pod.new("late", "shop")
        bundle = node.host.write(
            node.host.containerd_bundle(late), containerd_spec(late, pod, name="late")
        )
        kind, record = watcher.next()
        while kind == "updated":
            kind, record = watcher.next()
        assert (kind, container_id(record)) == ("added", late)
        assert record is not None and record.meta.pod_name == "late"

        node.host.tear_down(bundle)
        kind, record = watcher.next()
        while kind == "updated":
            kind, record = watcher.next()
        assert (kind, container_id(record)) == ("removed", late)
        assert record is not None and record.removed
    finally:
        watcher.stop()
    assert watcher.error is None


def test_cancel_ends_a_watch_cleanly(server: ApiServer, client: DaemonClient) -> None:
    watcher = Watcher(client.watch())
    watcher.until_synced()
    wait_until(lambda: resolver_service(server).watchers == 1, 5.0, "the stream to open")
    watcher.stop()
    assert watcher.error is None
    wait_until(lambda: resolver_service(server).watchers == 0, 5.0, "the stream to close")


def test_a_watch_ends_with_unavailable_when_the_daemon_stops(
    resolver: Resolver, tmp_path: Path
) -> None:
    with socket_dir(tmp_path) as directory:
        server = api_server(resolver, directory / "api.sock").start()
        try:
            with DaemonClient(server.socket_path) as client:
                watcher = Watcher(client.watch())
                watcher.until_synced()
                server.stop(0.5)
                assert watcher.ended.wait(5.0)
                assert isinstance(watcher.error, DaemonUnavailable)
        finally:
            server.stop(0.1)


def test_the_number_of_watchers_is_capped(server: ApiServer, client: DaemonClient) -> None:
    resolver_service(server).max_watchers = 2
    first, second = Watcher(client.watch()), Watcher(client.watch())
    try:
        first.until_synced()
        second.until_synced()
        refused = Watcher(client.watch())
        assert refused.ended.wait(5.0)
        assert isinstance(refused.error, OciresolveError)
        assert not isinstance(refused.error, DaemonUnavailable)
        assert "RESOURCE_EXHAUSTED" in str(refused.error)
        assert "at most 2" in str(refused.error)
        first.stop()
        wait_until(lambda: resolver_service(server).watchers < 2, 5.0, "a watcher to leave")
        third = Watcher(client.watch())
        third.until_synced()
        third.stop()
    finally:
        first.stop()
        second.stop()


def test_a_slow_watcher_is_cut_off_and_others_keep_working(
    node: Node, resolver: Resolver, server: ApiServer
) -> None:
    """A watcher that stops reading: the server's writes to it wait on flow control, its queue
    fills, and its stream ends with RESOURCE_EXHAUSTED; the daemon's memory does not grow with
    the changes, and lookups go on being answered meanwhile."""
    resolver_service(server).watch_queue = 8
    churn = 6000
    with (
        DaemonClient(server.socket_path) as slow_client,
        DaemonClient(server.socket_path) as client,
    ):
        events = iter(slow_client.watch())
        assert next(events)[0] == "added"  # the stream is open; now stop reading
        wait_until(lambda: resolver_service(server).watchers == 1, 5.0, "the stream to open")
        pod = Pod.new("churn", "shop")
        for n in range(churn):
            cid = new_id()
            meta = ContainerMeta(
                runtime="containerd",
                container_type="container",
                container_id=cid,
                sandbox_id=pod.sandbox_id,
                pod_name=pod.name,
                pod_namespace=pod.namespace,
                pod_uid=pod.uid,
                container_name=f"c{n}-" + "x" * 200,
            )
            resolver.index.put(IndexedContainer(meta=meta, bundle=f"/nowhere/{cid}"))
            if n % 1000 == 0:
                started = time.monotonic()
                assert client.lookup_pid(APP_PID).status == "found"
                assert time.monotonic() - started < 1.0
        with pytest.raises(OciresolveError, match="RESOURCE_EXHAUSTED") as caught:
            for _ in events:
                pass
        assert not isinstance(caught.value, DaemonUnavailable)
        assert "too slow" in str(caught.value)
        assert resolver_service(server).watch_overflows == 1
        wait_until(lambda: resolver_service(server).watchers == 0, 5.0, "the slow stream to go")
        assert client.lookup_pid(APP_PID).status == "found"
        again = Watcher(client.watch())
        assert len(again.until_synced()) == churn + 3
        again.stop()
