"""The daemon's API against what a hostile client or a broken node gives it: container ids that
are paths, a record that does not fit the API's fields, a change feed that fell behind."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import msgspec
import pytest
from daemonfakes import Node, record, resolver_service, serving, socket_dir
from fakehost import Pod, containerd_spec, new_id, wait_until

from ociresolve import IndexedContainer, OciresolveError, Resolver
from ociresolve.api import api_pb2, api_pb2_grpc
from ociresolve.api.client import DaemonClient, Watch
from ociresolve.api.remote import RemoteResolver
from ociresolve.daemon.server import ApiServer
from ociresolve.daemon.service import ResolverService
from ociresolve.errors import DaemonUnavailable
from ociresolve.hostpaths import HostPaths
from ociresolve.model import Change

pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")


@pytest.fixture
def stub(server: ApiServer) -> Iterator[api_pb2_grpc.ResolverStub]:
    with grpc.insecure_channel(f"unix:{server.socket_path}") as channel:
        yield api_pb2_grpc.ResolverStub(channel)


def plant(node: Node) -> tuple[str, str]:
    """The attack: a ``config.json`` outside every runtime root (anywhere the attacker can
    write), claiming the app's cgroup; returns the id that reaches it through the containerd
    layout's path, and the id its directory carries."""
    planted = new_id()
    spec = containerd_spec(planted, Pod.new("evil", "tenant"), name="evil")
    spec["linux"]["cgroupsPath"] = containerd_spec(node.app, node.pod)["linux"]["cgroupsPath"]
    directory = node.host.path(f"/evil/{planted}")
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps(spec))
    # <root>/run/containerd/io.containerd.runtime.v2.task/<namespace>/ -> <root>/
    return f"../../../../evil/{planted}", planted


BAD_IDS = [
    "../../../../evil/" + "a" * 64,
    "a" * 63 + "/",
    "..",
    "A" * 64,
    "a" * 64 + "\x00",
    "a" * 65,
    "a" * 100_000,
    "/" + "a" * 63,
    "\u202e" + "a" * 63,
]


def test_lookup_of_a_path_is_invalid_and_indexes_nothing(
    node: Node, resolver: Resolver, stub: api_pb2_grpc.ResolverStub
) -> None:
    bad, planted = plant(node)
    with pytest.raises(grpc.RpcError) as caught:
        stub.Lookup(api_pb2.LookupRequest(container_id=bad), timeout=5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a container id" in (caught.value.details() or "")
    assert resolver.container(planted) is None
    mapped = resolver.lookup_cgroup_id(node.app_cgroup_id)
    assert mapped is not None and mapped.container_id == node.app


@pytest.mark.parametrize("bad", BAD_IDS)
def test_every_id_that_is_not_a_runtime_id_is_invalid(
    stub: api_pb2_grpc.ResolverStub, bad: str
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        stub.Lookup(api_pb2.LookupRequest(container_id=bad), timeout=5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_batch_with_one_bad_id_is_invalid(
    node: Node, resolver: Resolver, stub: api_pb2_grpc.ResolverStub
) -> None:
    bad, planted = plant(node)
    lookups = [
        api_pb2.LookupRequest(container_id=node.app),
        api_pb2.LookupRequest(container_id=bad),
    ]
    with pytest.raises(grpc.RpcError) as caught:
        stub.LookupBatch(api_pb2.LookupBatchRequest(lookups=lookups), timeout=5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "lookups[1]" in (caught.value.details() or "")
    assert resolver.container(planted) is None


def test_the_library_never_reads_a_path_given_as_an_id(node: Node) -> None:
    bad, planted = plant(node)
    resolver = node.resolver()  # not started: every miss reads the disk
    assert resolver.lookup_container(bad) is None
    assert resolver.resolve_container(bad) is None
    assert resolver.container(planted) is None
    assert resolver.index.meta_by_cgroup == {}
    paths = HostPaths(str(node.host.root), node.roots)
    assert list(paths.bundle_candidates(bad)) == []
    assert list(paths.bundle_candidates(planted))  # a runtime id still has its places
    found = resolver.lookup_container(node.app)
    assert found is not None and resolver.lookup_cgroup_id(node.app_cgroup_id) == found


# -- a record the API's fields cannot hold ------------------------------------------------------


def bad_record() -> IndexedContainer:
    return record(pid=99_999_999_999, pod_name="broken", bundles="/nowhere")


def test_one_record_out_of_range_breaks_no_list_and_no_watch(
    node: Node, resolver: Resolver, server: ApiServer
) -> None:
    """Put in the index behind the readers' back: the converter's own defence."""
    with DaemonClient(server.socket_path, timeout=5.0) as client:
        events = iter(client.watch())
        first = next(events)
        broken = bad_record()
        resolver.index.put(broken)
        listed = {r.meta.container_id for r in client.containers()}
        assert listed == {node.app, node.crio, node.pod.sandbox_id}
        late = msgspec_copy(bad_record(), pid=4343)
        resolver.index.put(late)  # the change after it still reaches the stream
        seen = [first]
        for event in events:
            seen.append(event)
            if event[1] is not None and event[1].meta.container_id == late.meta.container_id:
                break
        assert broken.meta.container_id not in {r.meta.container_id for _, r in seen if r}
        again = client.watch()
        initial = []
        for kind, one in again:
            if kind == "synced":
                break
            initial.append(one)
        again.cancel()
        assert len(initial) == 4  # the three containers and `late`, not `broken`
        result = client.lookup_container(broken.meta.container_id or "")
        assert result.status == "error" and "cannot be encoded" in (result.error or "")
    assert resolver_service(server).unencodable >= 3


def msgspec_copy(one: IndexedContainer, *, pid: int) -> IndexedContainer:
    return msgspec.structs.replace(one, pid=pid)


# -- a change feed that fell behind -------------------------------------------------------------


def test_watch_streams_end_when_the_daemons_feed_fell_behind(
    node: Node, resolver: Resolver, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The service's one subscription to the index overflows: every stream ends with ABORTED
    (the client re-syncs), none drifts from the index unnoticed; a RemoteResolver re-syncs by
    itself, counts it, and its copy is the index's again."""
    monkeypatch.setattr("ociresolve.index.SUBSCRIBER_QUEUE", 4)
    gate = threading.Event()
    gate.set()
    original = ResolverService._on_change

    def stalled(self: ResolverService, one: IndexedContainer, change: Change) -> None:
        gate.wait(10)
        original(self, one, change)

    # Stall the service's subscription thread at will: changes then overflow its queue.
    monkeypatch.setattr(ResolverService, "_on_change", stalled)
    with socket_dir(tmp_path) as directory, serving(resolver, directory / "api.sock") as server:
        service = resolver_service(server)
        remote = RemoteResolver(server.socket_path, grace_period=60).start()
        try:
            with DaemonClient(server.socket_path, timeout=5.0) as client:
                reader = Reader(client.watch())
                wait_until(lambda: service.watchers == 2, 5.0, "both streams to open")
                gate.clear()
                for n in range(20):
                    resolver.index.put(msgspec_copy(bad_record(), pid=n + 100))
                gate.set()
                assert reader.ended.wait(10.0), "the stream drifted on, never ended"
                assert isinstance(reader.error, OciresolveError)
                assert not isinstance(reader.error, DaemonUnavailable)
                assert "ABORTED" in str(reader.error) and "fell behind" in str(reader.error)
            wait_until(lambda: remote.fell_behind >= 1, 10.0, "the remote copy to be cut off")
            truth = {r.meta.container_id for r in resolver.containers()}
            wait_until(
                lambda: {r.meta.container_id for r in remote.containers()} == truth,
                10.0,
                "the remote copy to re-sync",
            )
            assert remote.resyncs >= 1
            assert service.feed_losses == 1
        finally:
            remote.close()


class Reader:
    """A watch stream read to its end by a thread of its own."""

    def __init__(self, watch: Watch) -> None:
        self.watch = watch
        self.error: BaseException | None = None
        self.ended = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            for _ in self.watch:
                pass
        except BaseException as exc:
            self.error = exc
        finally:
            self.ended.set()
