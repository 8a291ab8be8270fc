"""The resolver as a chain of sources: the walk, its order, explain and resolve agreeing, a
source added to the chain; reading a process's cgroup; the public ``Resolving`` protocol."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import pytest
from fakehost import (
    CONTAINERD_ROOT,
    FakeHost,
    Pod,
    containerd_cgroup_file,
    containerd_spec,
    host_cgroup_file,
    new_id,
)

import ociresolve
from ociresolve import ContainerMeta, OciresolveError, ProcessNotFound, Resolution, Resolver
from ociresolve.cri.client import CriClient, StatusReply
from ociresolve.hostpaths import HostPaths
from ociresolve.proc import read_cgroup

APP_PID, FOREIGN_PID, HOST_PID, MISSING_PID = 4242, 6161, 1, 999_999


class Kubelet:
    """A source a future version may add (kubelet's pod API), knowing what it is told."""

    # A real source adds its name to ``model.Source``, the names ``Resolution.source`` has.
    name: Final = "kubelet"

    def __init__(self, known: dict[str, ContainerMeta]) -> None:
        self.known = known
        self.asked: list[str] = []

    def find(
        self, container_id: str, explain: bool = False
    ) -> tuple[ContainerMeta | None, str | None]:
        self.asked.append(container_id)
        meta = self.known.get(container_id)
        return meta, "found" if meta else "unknown pod"


class StubCri:
    """A ``CriClient`` that knows one container and counts its calls."""

    endpoint = "stub"
    timeout = 0.5

    def __init__(self, container_id: str) -> None:
        self.container_id = container_id
        self.calls = 0

    def runtime_name(self) -> str:
        return "containerd"

    def container_status(self, container_id: str) -> StatusReply | None:
        self.calls += 1
        if container_id != self.container_id:
            return None
        return StatusReply(kind="container", id=container_id, name="stub-app")

    def sandbox_status(self, sandbox_id: str) -> StatusReply | None:
        self.calls += 1
        return None

    def close(self) -> None:
        pass


@dataclass
class Node:
    """A pod on containerd (its app's bundle on disk), a host process, and a process in a
    container no runtime root holds (``foreign``)."""

    host: FakeHost
    pod: Pod
    app: str
    foreign: str

    def resolver(self, *, cri_client: CriClient | None = None) -> Resolver:
        """The CRI only when ``cri_client`` is given."""
        return Resolver(
            host_root=str(self.host.root),
            runtime_roots=[CONTAINERD_ROOT],
            cri=cri_client is not None,
            cri_client=cri_client,
        )


@pytest.fixture
def node(host: FakeHost) -> Node:
    pod, app, foreign = Pod.new(), new_id(), new_id()
    host.make_roots()
    host.write(host.containerd_bundle(app), containerd_spec(app, pod))
    host.write_pid(host.containerd_bundle(app), APP_PID)
    host.set_proc_cgroup(APP_PID, containerd_cgroup_file(app, pod.uid))
    host.set_proc_cgroup(FOREIGN_PID, containerd_cgroup_file(foreign, pod.uid))
    host.set_proc_cgroup(HOST_PID, host_cgroup_file())
    return Node(host=host, pod=pod, app=app, foreign=foreign)


def foreign_meta(node: Node) -> ContainerMeta:
    return ContainerMeta(
        runtime="kubelet-test",
        container_type="container",
        container_id=node.foreign,
        pod_name=node.pod.name,
    )


# -- the chain -----------------------------------------------------------------------------------


def test_the_chain_is_index_cri_cache_bundle_cri(node: Node) -> None:
    resolver = node.resolver()
    assert [source.name for source in resolver.sources] == ["index", "cri", "bundle", "cri"]


def test_a_source_added_to_the_chain_is_asked_after_the_others(node: Node) -> None:
    kubelet = Kubelet({node.foreign: foreign_meta(node)})
    resolver = node.resolver()
    resolver.sources = (*resolver.sources, kubelet)  # type: ignore[arg-type]
    # What a bundle (then the index) knows never reaches it.
    bundle = resolver.resolve_pid(APP_PID)
    assert bundle is not None and bundle.source == "bundle"
    assert resolver.lookup_pid(APP_PID) == bundle.meta
    assert kubelet.asked == []
    # What the others do not know does.
    found = Resolution(meta=foreign_meta(node), source="kubelet")  # type: ignore[arg-type]
    assert resolver.resolve_pid(FOREIGN_PID) == found
    assert resolver.lookup_pid(FOREIGN_PID) == found.meta
    assert resolver.lookup_container(node.foreign) == found.meta
    assert resolver.resolve_container(node.foreign) == found
    explanation = resolver.explain_pid(FOREIGN_PID)
    assert explanation.resolution == found
    assert [(s.step, s.result) for s in explanation.steps] == [
        ("cgroup", node.foreign),
        ("index", "miss"),
        ("bundle", "none under the runtime roots"),
        ("cri", "off"),
        ("kubelet", "found"),
    ]
    assert kubelet.asked == [node.foreign] * 5
    resolver.close()


def test_a_source_that_finds_nothing_is_an_explain_step_and_a_miss(node: Node) -> None:
    kubelet = Kubelet({})
    resolver = node.resolver()
    resolver.sources = (*resolver.sources, kubelet)  # type: ignore[arg-type]
    explanation = resolver.explain_pid(FOREIGN_PID)
    assert explanation.resolution is None
    assert explanation.steps[-1].step == "kubelet"
    assert explanation.steps[-1].result == "unknown pod"
    assert resolver.resolve_pid(FOREIGN_PID) is None
    assert resolver.lookup_pid(FOREIGN_PID) is None


def test_the_first_answer_wins(node: Node) -> None:
    """A source placed first answers before the bundle is read."""
    shadow = ContainerMeta(runtime="shadow", container_type="container", container_id=node.app)
    kubelet = Kubelet({node.app: shadow})
    resolver = node.resolver()
    resolver.sources = (kubelet, *resolver.sources)  # type: ignore[arg-type]
    answer = resolver.resolve_container(node.app)
    assert answer == Resolution(meta=shadow, source="kubelet")  # type: ignore[arg-type]
    assert resolver.container(node.app) is None  # the bundle was not read
    assert kubelet.asked == [node.app]


# -- explain and resolve agree ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pid", "started", "source"),
    [
        (APP_PID, True, "index"),
        (APP_PID, False, "bundle"),
        (FOREIGN_PID, True, None),
        (FOREIGN_PID, False, None),
        (HOST_PID, True, None),
    ],
)
def test_explain_and_resolve_agree(node: Node, pid: int, started: bool, source: str | None) -> None:
    """Two resolvers in the same state: one explains, the other resolves."""
    explaining, resolving = node.resolver(), node.resolver()
    try:
        if started:
            explaining.start()
            resolving.start()
        explanation = explaining.explain_pid(pid)
        resolution = resolving.resolve_pid(pid)
        assert explanation.resolution == resolution
        assert (resolution and resolution.source) == source
        if resolution is not None:
            assert explanation.steps[-1].step == resolution.source
            assert resolving.lookup_pid(pid) == resolution.meta
        assert all(step.seconds >= 0 for step in explanation.steps)
    finally:
        explaining.close()
        resolving.close()


def test_what_the_cri_named_is_not_looked_for_on_disk_again(node: Node) -> None:
    """The CRI's cached answer comes before the bundle read, and is told apart in explain."""
    cri = StubCri(node.foreign)
    with node.resolver(cri_client=cri) as resolver:
        first = resolver.explain_pid(FOREIGN_PID)
        second = resolver.explain_pid(FOREIGN_PID)
        assert resolver.resolve_pid(FOREIGN_PID) == second.resolution
    assert first.resolution is not None and first.resolution.source == "cri"
    assert first.resolution.meta.container_name == "stub-app"
    assert [(s.step, s.result) for s in first.steps[1:]] == [
        ("index", "miss"),
        ("bundle", "none under the runtime roots"),
        ("cri", "stub: found"),
    ]
    assert second.resolution == first.resolution
    assert [(s.step, s.result) for s in second.steps[1:]] == [
        ("index", "miss"),
        ("cri", "stub: cached"),
    ]
    assert cri.calls == 1


def test_a_cri_miss_says_whether_the_runtime_answered(node: Node) -> None:
    cri = StubCri(new_id())
    with node.resolver(cri_client=cri) as resolver:
        first = resolver.explain_pid(FOREIGN_PID).steps[-1]
        second = resolver.explain_pid(FOREIGN_PID).steps[-1]  # the negative cache: no call
    assert first.result == second.result == "stub: not found (breaker closed)"
    assert cri.calls == 2  # ContainerStatus, then PodSandboxStatus: once


# -- read_cgroup -----------------------------------------------------------------------------------


def test_read_cgroup(node: Node) -> None:
    paths = HostPaths(str(node.host.root))
    app = read_cgroup(paths, APP_PID)
    assert app is not None and (app.container_id, app.pod_uid) == (node.app, node.pod.uid)
    assert read_cgroup(paths, HOST_PID) is None
    with pytest.raises(ProcessNotFound) as caught:
        read_cgroup(paths, MISSING_PID)
    assert caught.value.pid == MISSING_PID
    with pytest.raises(ProcessNotFound):
        read_cgroup(paths, os.getpid())  # this process is on the real host, not on this one


def test_read_cgroup_of_an_unreadable_entry_is_an_ociresolve_error(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "77").write_text("not a directory")
    with pytest.raises(OciresolveError, match="pid 77: cannot read") as caught:
        read_cgroup(HostPaths(str(tmp_path)), 77)
    assert not isinstance(caught.value, ProcessNotFound)


@pytest.mark.parametrize("name", ["host%d", "100%", "%s%%x", "{pid}"])
def test_a_host_root_with_format_characters(tmp_path: Path, name: str) -> None:
    host = FakeHost(tmp_path / name)
    container_id, uid = new_id(), Pod.new().uid
    host.set_proc_cgroup(APP_PID, containerd_cgroup_file(container_id, uid))
    ref = read_cgroup(HostPaths(str(host.root)), APP_PID)
    assert ref is not None and ref.container_id == container_id
    resolver = Resolver(host_root=str(host.root), runtime_roots=(), cri=False)
    assert resolver.cgroup_of(APP_PID) == ref
    assert resolver.lookup_pid(APP_PID) is None  # no runtime root: known nowhere
    remote = ociresolve.RemoteResolver(str(tmp_path / "none.sock"), host_root=str(host.root))
    try:
        assert remote.cgroup_of(APP_PID) == ref
    finally:
        remote.close()


# -- Resolving -------------------------------------------------------------------------------------


@pytest.fixture
def resolvers(node: Node, tmp_path: Path) -> Iterator[tuple[Resolver, ociresolve.RemoteResolver]]:
    local = node.resolver()
    remote = ociresolve.RemoteResolver(str(tmp_path / "none.sock"), host_root=str(node.host.root))
    try:
        yield local, remote
    finally:
        local.close()
        remote.close()


def test_both_resolvers_are_resolving(
    node: Node, resolvers: tuple[Resolver, ociresolve.RemoteResolver]
) -> None:
    # The assignments are what mypy checks; at run time, both answer the protocol's calls.
    local: ociresolve.Resolving = resolvers[0]
    remote: ociresolve.Resolving = resolvers[1]
    for resolving in (local, remote):
        ref = resolving.cgroup_of(APP_PID)
        assert ref is not None and ref.container_id == node.app
        assert resolving.lookup_cgroup_id(123_456_789) is None
    resolution = local.resolve_pid(APP_PID)
    assert resolution is not None and resolution.source == "bundle"
    assert "Resolving" in ociresolve.__all__
