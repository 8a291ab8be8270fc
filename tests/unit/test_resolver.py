"""Resolver and the ``lookup`` / ``list`` commands against a fake host: /proc, the runtimes'
state dirs and the cgroup v2 tree all below ``host_root``, so nothing of the real host is read."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from contract import META_FIELDS
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
    wait_until,
)

from ociresolve import ContainerMeta, OciresolveError, ProcessNotFound, Resolver
from ociresolve.cli import main

pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")

APP_PID, CRIO_PID, HOST_PID, FOREIGN_PID, MISSING_PID = 4242, 5151, 1, 6161, 999_999


@dataclass
class Node:
    """The fake host: a pod on containerd (sandbox + app), a cri-o container, a host process."""

    host: FakeHost
    pod: Pod
    app: str
    crio: str

    def resolver(self, **options: float) -> Resolver:
        return Resolver(
            host_root=str(self.host.root), runtime_roots=[CONTAINERD_ROOT, CRIO_ROOT], **options
        )

    def cli(self, *args: str) -> list[str]:
        return [
            *args,
            "--host-root",
            str(self.host.root),
            "--runtime-root",
            CONTAINERD_ROOT,
            "--runtime-root",
            CRIO_ROOT,
        ]


@pytest.fixture
def node(host: FakeHost) -> Node:
    pod = Pod.new()
    app, crio = new_id(), new_id()
    host.write(
        host.containerd_bundle(pod.sandbox_id), containerd_spec(pod.sandbox_id, pod, name=None)
    )
    host.write(host.containerd_bundle(app), containerd_spec(app, pod))
    host.write(host.crio_bundle(crio), crio_spec(crio, Pod.new("dns", "kube-system")))
    host.write_pid(host.containerd_bundle(app), APP_PID)
    host.set_proc_cgroup(APP_PID, containerd_cgroup_file(app, pod.uid))
    host.set_proc_cgroup(CRIO_PID, crio_cgroup_file(crio, new_id()[:32]))
    host.set_proc_cgroup(HOST_PID, host_cgroup_file())
    # A container of this node's kubelet that no watched runtime knows (docker, another root).
    host.set_proc_cgroup(FOREIGN_PID, containerd_cgroup_file(new_id(), pod.uid))
    return Node(host=host, pod=pod, app=app, crio=crio)


@pytest.fixture
def resolver(node: Node) -> Iterator[Resolver]:
    resolver = node.resolver()
    yield resolver
    resolver.close()


# -- lookups -------------------------------------------------------------------------------------


def test_lookup_pid_of_a_container_process(node: Node, resolver: Resolver) -> None:
    resolver.start()
    meta = resolver.lookup_pid(APP_PID)
    assert meta == ContainerMeta(
        runtime="containerd",
        container_type="container",
        container_id=node.app,
        sandbox_id=node.pod.sandbox_id,
        pod_name=node.pod.name,
        pod_namespace=node.pod.namespace,
        pod_uid=node.pod.uid,
        container_name="app",
        image="localhost/ociresolve-e2e/busybox:1",
    )
    resolution = resolver.resolve_pid(APP_PID)
    assert resolution is not None and resolution.source == "index"
    record = resolver.container(node.app)
    assert record is not None and record.pid == APP_PID


def test_lookup_pid_of_a_cri_o_container_process(node: Node, resolver: Resolver) -> None:
    meta = resolver.lookup_pid(CRIO_PID)
    assert meta is not None
    assert (meta.runtime, meta.container_id, meta.pod_name, meta.pod_namespace) == (
        "cri-o",
        node.crio,
        "dns",
        "kube-system",
    )


def test_lookup_pid_of_a_host_process_is_none(resolver: Resolver) -> None:
    resolver.start()
    assert resolver.lookup_pid(HOST_PID) is None
    assert resolver.resolve_pid(HOST_PID) is None


def test_lookup_pid_of_a_container_no_runtime_here_knows_is_none(resolver: Resolver) -> None:
    assert resolver.lookup_pid(FOREIGN_PID) is None


def test_a_missing_pid_raises_process_not_found(resolver: Resolver) -> None:
    with pytest.raises(ProcessNotFound) as caught:
        resolver.lookup_pid(MISSING_PID)
    assert caught.value.pid == MISSING_PID
    assert isinstance(caught.value, OciresolveError)
    assert str(MISSING_PID) in str(caught.value)


def test_the_real_proc_is_never_read(resolver: Resolver) -> None:
    """Our own PID exists on the real host, not on the fake one."""
    with pytest.raises(ProcessNotFound):
        resolver.lookup_pid(os.getpid())


def test_a_miss_reads_the_bundle_then_the_index_answers(node: Node, resolver: Resolver) -> None:
    """Without start() (or before the watcher gets to it) the bundle is read on the miss."""
    assert resolver.containers() == []
    first = resolver.resolve_pid(APP_PID)
    assert first is not None and first.source == "bundle"
    second = resolver.resolve_pid(APP_PID)
    assert second is not None and second.source == "index"
    assert first.meta == second.meta
    assert [r.meta.container_id for r in resolver.containers()] == [node.app]


def test_a_container_created_after_start_resolves_before_the_watcher_sees_it(
    node: Node, resolver: Resolver
) -> None:
    resolver.start()
    late, pid = new_id(), 7000
    node.host.write(node.host.containerd_bundle(late), containerd_spec(late, node.pod, name="late"))
    node.host.set_proc_cgroup(pid, containerd_cgroup_file(late, node.pod.uid))
    meta = resolver.lookup_pid(pid)  # from the index or from the bundle: either way, no miss
    assert meta is not None and meta.container_name == "late"


def test_a_reused_pid_resolves_to_the_container_it_is_in_now(
    node: Node, resolver: Resolver
) -> None:
    resolver.start()
    assert resolver.lookup_pid(APP_PID) == resolver.lookup_container(node.app)
    # The app exited and its PID now runs in another container: the cgroup is read every time.
    other = new_id()
    node.host.write(
        node.host.containerd_bundle(other), containerd_spec(other, node.pod, name="other")
    )
    node.host.set_proc_cgroup(APP_PID, containerd_cgroup_file(other, node.pod.uid))
    meta = resolver.lookup_pid(APP_PID)
    assert meta is not None and (meta.container_id, meta.container_name) == (other, "other")
    node.host.set_proc_cgroup(APP_PID, host_cgroup_file())
    assert resolver.lookup_pid(APP_PID) is None


def test_lookup_container(node: Node, resolver: Resolver) -> None:
    sandbox = resolver.lookup_container(node.pod.sandbox_id)  # a miss: read from disk
    assert sandbox is not None
    assert (sandbox.container_type, sandbox.pod_uid) == ("sandbox", node.pod.uid)
    resolver.start()
    assert resolver.lookup_container(node.app) == resolver.lookup_pid(APP_PID)
    assert resolver.lookup_container(new_id()) is None
    assert resolver.lookup_container("not-an-id") is None


def test_lookup_cgroup_id_with_the_host_cgroup_tree(node: Node) -> None:
    node.host.enable_cgroup2()
    spec = containerd_spec(node.app, node.pod)
    cgroup_id = node.host.make_cgroup(spec["linux"]["cgroupsPath"])
    with node.resolver() as resolver:
        assert resolver.lookup_cgroup_id(cgroup_id) == resolver.lookup_container(node.app)
        assert resolver.lookup_cgroup_id(os.stat(node.host.cgroup).st_ino) is None


def test_hostile_bundles_read_on_a_miss_raise_nothing(node: Node, resolver: Resolver) -> None:
    """A lookup reads untrusted files: at worst it is a miss, never an unexpected exception."""
    node.host.enable_cgroup2()
    bad_utf8, nul_cgroup, pid = new_id(), new_id(), 7100
    bundle = node.host.containerd_bundle(bad_utf8)
    bundle.mkdir()
    (bundle / "config.json").write_bytes(
        b'{"annotations": {"io.kubernetes.cri.sandbox-id": "\xff"}}'
    )
    spec = containerd_spec(nul_cgroup, node.pod)
    spec["linux"]["cgroupsPath"] = "/kubepods/\x00/x"
    node.host.write(node.host.containerd_bundle(nul_cgroup), spec)
    assert resolver.lookup_container(bad_utf8) is None
    meta = resolver.lookup_container(nul_cgroup)
    assert meta is not None and meta.container_id == nul_cgroup
    node.host.set_proc_cgroup(pid, containerd_cgroup_file(bad_utf8, node.pod.uid))
    assert resolver.lookup_pid(pid) is None


def test_subscribers_see_what_the_watcher_sees(node: Node, resolver: Resolver) -> None:
    seen: list[tuple[str | None, str]] = []
    resolver.subscribe(lambda record, change: seen.append((record.meta.container_id, change)))
    resolver.start()
    wait_until(lambda: len(seen) == 3)
    assert {change for _, change in seen} == {"added"}
    assert {cid for cid, _ in seen} == {node.app, node.pod.sandbox_id, node.crio}


# -- the command line ----------------------------------------------------------------------------


def test_cli_lookup_json(node: Node, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(node.cli("lookup", str(APP_PID), "--json")) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1
    record = json.loads(out[0])
    assert set(record) == META_FIELDS | {"pid", "source"}
    assert record["container_id"] == node.app
    assert record["pod_uid"] == node.pod.uid
    assert (record["pid"], record["source"]) == (APP_PID, "bundle")


def test_cli_lookup_table(node: Node, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(node.cli("lookup", str(APP_PID))) == 0
    rows = dict(line.split(None, 1) for line in capsys.readouterr().out.splitlines())
    assert rows["pod_name"] == node.pod.name
    assert rows["container_name"] == "app"
    assert rows["init_pid"] == str(APP_PID)


def test_cli_lookup_of_a_host_process_exits_1(
    node: Node, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(node.cli("lookup", str(HOST_PID), "--json")) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert f"pid {HOST_PID} is not in a container" in captured.err


def test_cli_lookup_of_a_missing_process_exits_2(
    node: Node, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(node.cli("lookup", str(MISSING_PID))) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert f"no such process: pid {MISSING_PID}" in captured.err


def test_cli_list_json(node: Node, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(node.cli("list", "--json")) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {r["container_id"] for r in records} == {node.app, node.pod.sandbox_id, node.crio}
    for record in records:
        assert set(record) == META_FIELDS | {"pid", "cgroup_id", "bundle"}
        assert record["bundle"].startswith(str(node.host.root))
    app = next(r for r in records if r["container_id"] == node.app)
    assert app["pid"] == APP_PID


def test_cli_list_table(node: Node, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(node.cli("list")) == 0
    header, *rows = capsys.readouterr().out.splitlines()
    assert header.split() == ["NAMESPACE", "POD", "CONTAINER", "TYPE", "RUNTIME", "ID", "PID"]
    assert len(rows) == 3
    app = next(row.split() for row in rows if node.app[:12] in row)
    assert app == [
        node.pod.namespace,
        node.pod.name,
        "app",
        "container",
        "containerd",
        node.app[:12],
        str(APP_PID),
    ]


def test_cli_list_of_an_empty_host(host: FakeHost, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list", "--json", "--host-root", str(host.root)]) == 0
    assert capsys.readouterr().out == ""
