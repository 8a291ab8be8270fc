"""Each event to its container: by the kernel's cgroup id, else by the live process (bundle,
CRI), else host or unresolved; against a real Resolver on a fake host."""

from __future__ import annotations

from collections.abc import Iterator

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
from tracerfakes import event

import ociresolve
from ociresolve.tracer.attribution import HOST, UNRESOLVED, Attribution, Attributor

APP_PID, LATE_PID, HOST_PID, FOREIGN_PID, GONE_PID = 4242, 4343, 1, 6161, 999_999


@pytest.fixture
def node(host: FakeHost) -> Iterator[tuple[FakeHost, Pod, str, int, ociresolve.Resolver]]:
    pod = Pod.new("checkout-7d4b9c", "shop")
    app = new_id()
    host.enable_cgroup2()
    spec = containerd_spec(app, pod)
    cgroup_id = host.make_cgroup(spec["linux"]["cgroupsPath"])
    host.write(host.containerd_bundle(app), spec)
    host.write_pid(host.containerd_bundle(app), APP_PID)
    host.set_proc_cgroup(APP_PID, containerd_cgroup_file(app, pod.uid))
    host.set_proc_cgroup(HOST_PID, host_cgroup_file())
    host.set_proc_cgroup(FOREIGN_PID, containerd_cgroup_file(new_id(), pod.uid))
    resolver = ociresolve.Resolver(
        host_root=str(host.root), runtime_roots=[CONTAINERD_ROOT], cri=False
    )
    with resolver:
        yield host, pod, app, cgroup_id, resolver


def test_by_cgroup_id_even_when_the_process_is_gone(node: tuple) -> None:
    _, _, app, cgroup_id, resolver = node
    who = Attributor(resolver).attribute(event(tgid=GONE_PID, cgroup_id=cgroup_id))
    assert who.source == "index" and who.container_id == app
    assert who.meta is not None
    assert (who.meta.pod_namespace, who.meta.pod_name, who.meta.container_name) == (
        "shop",
        "checkout-7d4b9c",
        "app",
    )


def test_by_the_live_process_when_the_cgroup_id_is_unknown(node: tuple) -> None:
    host, pod, app, _, resolver = node
    who = Attributor(resolver).attribute(event(tgid=APP_PID, cgroup_id=123_456_789))
    assert (who.source, who.container_id) == ("index", app)
    # A container the index has not seen yet: its bundle is read from disk.
    late = new_id()
    resolver.close()  # stop watching, so only the miss path can find it
    host.write(host.containerd_bundle(late), containerd_spec(late, pod, name="late"))
    host.set_proc_cgroup(LATE_PID, containerd_cgroup_file(late, pod.uid))
    who = Attributor(resolver).attribute(event(tgid=LATE_PID, cgroup_id=123_456_789))
    assert who.source == "bundle" and who.meta is not None
    assert who.meta.container_name == "late"


def test_host_exited_and_unknown(node: tuple) -> None:
    resolver = node[4]
    attribute = Attributor(resolver).attribute
    assert attribute(event(tgid=HOST_PID, cgroup_id=1)) == HOST
    assert attribute(event(tgid=GONE_PID, cgroup_id=987_654)) == UNRESOLVED
    # Exited host processes: in the root cgroup, or in a cgroup a live host process was seen in.
    assert attribute(event(tgid=GONE_PID, cgroup_id=1)) == HOST
    assert attribute(event(tgid=HOST_PID, cgroup_id=555)) == HOST
    assert attribute(event(tgid=GONE_PID, cgroup_id=555)) == HOST
    foreign = attribute(event(tgid=FOREIGN_PID, cgroup_id=987_654))
    assert foreign.source == "unresolved" and foreign.meta is None
    assert foreign.container_id is not None and len(foreign.container_id) == 64


class CriOnlyResolver:
    """What a Resolver answers for a container only the runtime's CRI API knows."""

    def __init__(self, meta: ociresolve.ContainerMeta) -> None:
        self.meta = meta
        self.asked: list[int] = []

    def lookup_cgroup_id(self, cgroup_id: int) -> None:
        return None

    def resolve_pid(self, pid: int) -> ociresolve.Resolution:
        self.asked.append(pid)
        return ociresolve.Resolution(meta=self.meta, source="cri")


def test_cri_answers_are_marked_cri() -> None:
    meta = ociresolve.ContainerMeta(
        runtime="cri-dockerd", container_type="container", container_id="c" * 64, pod_name="p"
    )
    fake = CriOnlyResolver(meta)
    who = Attributor(fake).attribute(event(tgid=77, cgroup_id=4242))  # type: ignore[arg-type]
    assert who == Attribution(meta, "cri", "c" * 64)
    assert fake.asked == [77]


def test_a_host_cgroup_seen_once_costs_no_proc_read_again(node: tuple) -> None:
    _, _, _, _, resolver = node
    attributor = Attributor(resolver)
    asked: list[int] = []
    resolve_pid = resolver.resolve_pid

    def counting(pid: int) -> ociresolve.Resolution | None:
        asked.append(pid)
        return resolve_pid(pid)

    resolver.resolve_pid = counting  # type: ignore[method-assign]
    system_slice = 777_001
    for _ in range(3):
        assert attributor.attribute(event(tgid=HOST_PID, cgroup_id=system_slice)) == HOST
    assert asked == [HOST_PID]


class CountingResolver:
    """A resolver that knows one container cgroup and counts what it is asked: behind it may
    be an index that rescans after a change, or the daemon's RPC."""

    def __init__(self, meta: ociresolve.ContainerMeta, cgroup_id: int) -> None:
        self.meta = meta
        self.cgroup_id = cgroup_id
        self.calls: list[tuple[str, int]] = []

    def lookup_cgroup_id(self, cgroup_id: int) -> ociresolve.ContainerMeta | None:
        self.calls.append(("lookup_cgroup_id", cgroup_id))
        return self.meta if cgroup_id == self.cgroup_id else None

    def resolve_pid(self, pid: int) -> None:
        self.calls.append(("resolve_pid", pid))
        return None  # a host process

    def cgroup_of(self, pid: int) -> None:
        self.calls.append(("cgroup_of", pid))
        return None  # in no container's cgroup


def test_known_host_cgroups_are_checked_before_the_resolver() -> None:
    meta = ociresolve.ContainerMeta(
        runtime="containerd", container_type="container", container_id="d" * 64, pod_name="p"
    )
    fake = CountingResolver(meta, cgroup_id=5000)
    attribute = Attributor(fake).attribute  # type: ignore[arg-type]
    # The root cgroup: host without asking anything.
    assert attribute(event(tgid=HOST_PID, cgroup_id=1)) == HOST
    assert fake.calls == []
    # A host cgroup seen for the first time: asked once, learned, then never asked again.
    for _ in range(3):
        assert attribute(event(tgid=HOST_PID, cgroup_id=777_002)) == HOST
    assert fake.calls == [
        ("lookup_cgroup_id", 777_002),
        ("resolve_pid", HOST_PID),
        ("cgroup_of", HOST_PID),
    ]
    # A container's cgroup still goes to the resolver every time (its index is the cache).
    fake.calls.clear()
    assert attribute(event(tgid=APP_PID, cgroup_id=5000)).meta == meta
    assert fake.calls == [("lookup_cgroup_id", 5000)]
