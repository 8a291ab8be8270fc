"""The inotify watcher against a real directory tree on tmpfs: every write pattern the runtimes
use, each ending with the index equal to the truth on disk."""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fakehost import (
    CONTAINERD_CAPTURE,
    CONTAINERD_ROOT,
    CRIO_FIXTURE,
    CRIO_ROOT,
    SANDBOX_CAPTURE,
    TASKS,
    FakeHost,
    Pod,
    containerd_spec,
    crio_spec,
    encode,
    live_ids,
    new_id,
    podman_spec,
    wait_until,
    write_in_place,
)
from inotify_simple import flags

from ociresolve import Change, ContainerMeta, IndexedContainer, Resolver
from ociresolve.hostpaths import HostPaths
from ociresolve.index import Index
from ociresolve.watcher import Watcher

pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")

StartResolver = Callable[..., Resolver]
PID_FILES = {"containerd": "init.pid", "cri-o": "pidfile"}  # the runtime's pid file, per layout


@pytest.fixture
def start(host: FakeHost) -> Iterator[StartResolver]:
    """Starts Resolvers watching the fake host's containerd and cri-o roots; closes them."""
    started: list[Resolver] = []

    def start(
        *, grace_period: float = 30.0, roots: tuple[str, ...] = (CONTAINERD_ROOT, CRIO_ROOT)
    ) -> Resolver:
        resolver = Resolver(
            host_root=str(host.root), runtime_roots=list(roots), grace_period=grace_period
        )
        started.append(resolver)
        return resolver.start()

    yield start
    for resolver in started:
        resolver.close()


def watcher_of(resolver: Resolver) -> Watcher:
    assert resolver.watcher is not None
    return resolver.watcher


def converge(resolver: Resolver, host: FakeHost, expected: set[str] | None = None) -> None:
    """Wait until the live containers of the index are the Kubernetes bundles on disk."""
    wait_until(
        lambda: live_ids(resolver.containers()) == host.truth(),
        what="the index to equal the bundles on disk",
    )
    if expected is not None:
        assert live_ids(resolver.containers()) == host.truth() == expected


def settle(resolver: Resolver, host: FakeHost) -> str:
    """Wait until the watcher has handled every event queued so far; return a marker's id.

    One inotify queue holds every watch's events in order: once a bundle moved in after them is
    indexed, the events before it have been handled.
    """
    marker = new_id()
    host.move_in(host.containerd_bundle(marker), containerd_spec(marker, Pod.new("marker")))
    wait_until(lambda: resolver.container(marker) is not None, what=f"marker {marker[:12]}")
    return marker


def record_of(resolver: Resolver, container_id: str) -> IndexedContainer:
    record = resolver.container(container_id)
    assert record is not None, f"{container_id[:12]} is not indexed"
    return record


def removed_in(index: Index, container_id: str) -> bool:
    """In the index, in its grace period."""
    record = index.get(container_id)
    return record is not None and record.removed


class Changes:
    """A subscriber that records what it is told."""

    def __init__(self) -> None:
        self.seen: list[tuple[str | None, Change, bool]] = []
        self._lock = threading.Lock()

    def __call__(self, record: IndexedContainer, change: Change) -> None:
        with self._lock:
            self.seen.append((record.meta.container_id, change, record.removed))

    def of(self, container_id: str) -> list[Change]:
        with self._lock:
            return [change for cid, change, _ in self.seen if cid == container_id]


# -- the initial scan ----------------------------------------------------------------------------


def test_start_indexes_real_captured_bundles_of_both_layouts(
    host: FakeHost, start: StartResolver
) -> None:
    expected: dict[str, ContainerMeta] = {}
    for case, bundle_of in (
        (CONTAINERD_CAPTURE, host.containerd_bundle),
        (SANDBOX_CAPTURE, host.containerd_bundle),
        (CRIO_FIXTURE, host.crio_bundle),
    ):
        truth = json.loads((case / "expected.json").read_text())["expected"]
        bundle = bundle_of(truth["container_id"])
        bundle.mkdir(parents=True)
        (bundle / "config.json").write_bytes((case / "config.json").read_bytes())
        expected[truth["container_id"]] = ContainerMeta(**truth)
    resolver = start()
    # start() returns with the index full: no waiting.
    assert {r.meta.container_id: r.meta for r in resolver.containers()} == expected
    assert live_ids(resolver.containers()) == host.truth()
    assert watcher_of(resolver).bundle_errors == 0


# -- write patterns ------------------------------------------------------------------------------


@pytest.mark.parametrize("partial", ["empty", "half"])
def test_in_place_write_with_an_empty_or_partial_window(
    host: FakeHost, start: StartResolver, partial: str
) -> None:
    host.make_roots()
    resolver = start()
    container_id = new_id()
    bundle = host.containerd_bundle(container_id)
    data = encode(containerd_spec(container_id, Pod.new()))
    bundle.mkdir()
    settle(resolver, host)  # the bundle directory is watched
    # containerd: open(O_CREAT|O_TRUNC), close (a 0-byte file for a while), open, write, close.
    write_in_place(bundle / "config.json", b"" if partial == "empty" else data[: len(data) // 2])
    settle(resolver, host)  # its close has been handled
    assert resolver.container(container_id) is None
    assert watcher_of(resolver).bundle_errors == 0  # retried on the next close, not an error
    write_in_place(bundle / "config.json", data)
    wait_until(lambda: resolver.container(container_id) is not None)
    converge(resolver, host)
    assert watcher_of(resolver).bundle_errors == 0


@pytest.mark.parametrize("layout", ["containerd", "cri-o"])
def test_config_renamed_into_place(host: FakeHost, start: StartResolver, layout: str) -> None:
    host.make_roots()
    resolver = start()
    container_id = new_id()
    bundle, spec = host.bundle(layout, container_id, Pod.new())
    bundle.mkdir(parents=True)
    settle(resolver, host)
    host.write(bundle, spec, by_rename=True)  # one IN_MOVED_TO, no close in the bundle
    wait_until(lambda: resolver.container(container_id) is not None)
    assert record_of(resolver, container_id).bundle == str(bundle)
    converge(resolver, host)


@pytest.mark.parametrize("layout", ["containerd", "cri-o"])
def test_bundle_directory_renamed_in_with_its_config_inside(
    host: FakeHost, start: StartResolver, layout: str
) -> None:
    host.make_roots()
    resolver = start()
    ids = [new_id() for _ in range(20)]
    for container_id in ids:
        host.move_in(*host.bundle(layout, container_id, Pod.new()))
    converge(resolver, host, set(ids))


def test_namespace_and_task_directories_created_after_start(
    host: FakeHost, start: StartResolver
) -> None:
    host.containerd.mkdir(parents=True)
    resolver = start()
    assert resolver.containers() == []
    expected = set()
    for namespace in ("k8s.io", "moby", "k8s.io-2"):
        for _ in range(3):
            container_id = new_id()
            host.write(
                host.containerd_bundle(container_id, namespace),
                containerd_spec(container_id, Pod.new()),
            )
            expected.add(container_id)
    converge(resolver, host, expected)


def test_runtime_root_that_appears_later_nested_below_an_existing_directory(
    host: FakeHost, start: StartResolver
) -> None:
    root = "/var/lib/rancher/k3s/agent/run/containerd"
    resolver = start(roots=(root,))  # the host root is all there is
    assert resolver.containers() == []
    container_id = new_id()
    bundle = host.path(root) / TASKS / "k8s.io" / container_id
    host.write(bundle, containerd_spec(container_id, Pod.new()))
    wait_until(lambda: live_ids(resolver.containers()) == {container_id})


def test_runtime_root_created_level_by_level(host: FakeHost, start: StartResolver) -> None:
    root = "/a/b/c/d/containerd"
    resolver = start(roots=(root,))
    path = host.root
    for name in root.strip("/").split("/"):
        path /= name
        path.mkdir()
    container_id = new_id()
    host.write(path / TASKS / "k8s.io" / container_id, containerd_spec(container_id, Pod.new()))
    wait_until(lambda: live_ids(resolver.containers()) == {container_id})


def test_runtime_root_removed_then_recreated(host: FakeHost, start: StartResolver) -> None:
    """The bundle's removal is handled before the root's IN_IGNORED: the root comes back in
    between, before the watcher knows it was gone."""
    first, second = new_id(), new_id()
    host.write(host.containerd_bundle(first), containerd_spec(first, Pod.new()))
    resolver = start(roots=(CONTAINERD_ROOT,))
    assert live_ids(resolver.containers()) == {first}
    shutil.rmtree(host.containerd)
    wait_until(lambda: live_ids(resolver.containers()) == set())
    assert record_of(resolver, first).removed  # still resolvable for the grace period
    host.write(host.containerd_bundle(second), containerd_spec(second, Pod.new()))
    wait_until(lambda: live_ids(resolver.containers()) == {second})


def test_runtime_root_created_between_its_check_and_the_watch_on_its_parent(
    host: FakeHost, start: StartResolver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The watch on the nearest existing parent comes after the check: what was created in
    between sends no event, so the watcher must look again once its watch is in place."""
    root = "/a/b/containerd"
    container_id = new_id()
    isdir = os.path.isdir

    def racing_isdir(path: str | os.PathLike[str]) -> bool:
        answer = isdir(path)
        if os.fspath(path) == str(host.root) and not isdir(host.path(root)):
            # The runtime starts right after the watcher found its nearest existing parent.
            host.write(
                host.path(root) / TASKS / "k8s.io" / container_id,
                containerd_spec(container_id, Pod.new()),
            )
        return answer

    with monkeypatch.context() as patch:
        patch.setattr(os.path, "isdir", racing_isdir)
        resolver = start(roots=(root,))
    wait_until(lambda: live_ids(resolver.containers()) == {container_id})


def test_runtime_root_removed_and_recreated_repeatedly(
    host: FakeHost, start: StartResolver
) -> None:
    """The root's IN_IGNORED may come after it exists again: it must be watched anew."""
    first = new_id()
    host.write(host.containerd_bundle(first), containerd_spec(first, Pod.new()))
    resolver = start(roots=(CONTAINERD_ROOT,))
    for _ in range(5):
        shutil.rmtree(host.containerd)
        again = new_id()
        host.write(host.containerd_bundle(again), containerd_spec(again, Pod.new()))
        converge(resolver, host, {again})


# -- bursts --------------------------------------------------------------------------------------


def test_a_burst_of_2000_bundles_created_then_deleted(host: FakeHost, start: StartResolver) -> None:
    host.make_roots()
    resolver = start()
    pod = Pod.new()
    bundles: list[Path] = []
    for n in range(2000):
        container_id = new_id()
        if n % 4 == 0:
            bundle = host.move_in(host.crio_bundle(container_id), crio_spec(container_id, pod))
        elif n % 4 == 1:
            bundle = host.move_in(
                host.containerd_bundle(container_id), containerd_spec(container_id, pod)
            )
        else:
            bundle = host.write(
                host.containerd_bundle(container_id),
                containerd_spec(container_id, pod),
                by_rename=n % 4 == 3,
            )
        bundles.append(bundle)
    converge(resolver, host)
    assert len(live_ids(resolver.containers())) == 2000
    for bundle in bundles:
        if bundle.name == "userdata":
            shutil.rmtree(bundle.parent)
        else:
            host.tear_down(bundle)
    converge(resolver, host, set())
    assert all(r.removed for r in resolver.containers())


def test_bundles_deleted_while_the_watcher_is_still_adding_them(
    host: FakeHost, start: StartResolver
) -> None:
    """Each bundle is torn down right after it is written: most are gone before the watcher
    gets to them; every 10th stays."""
    host.make_roots()
    resolver = start()
    pod = Pod.new()
    kept = set()
    for n in range(2000):
        container_id = new_id()
        bundle = host.write(
            host.containerd_bundle(container_id), containerd_spec(container_id, pod)
        )
        if n % 10:
            host.tear_down(bundle)
        else:
            kept.add(container_id)
    converge(resolver, host, kept)


# -- teardown and the grace period ---------------------------------------------------------------


def test_torn_down_container_stays_resolvable_for_the_grace_period(
    host: FakeHost, start: StartResolver
) -> None:
    host.enable_cgroup2()
    pod = Pod.new()
    container_id = new_id()
    spec = containerd_spec(container_id, pod)
    cgroup_id = host.make_cgroup(spec["linux"]["cgroupsPath"])
    bundle = host.write(host.containerd_bundle(container_id), spec)
    resolver = start(grace_period=30.0)
    meta = record_of(resolver, container_id).meta
    host.tear_down(bundle)  # <id> -> .<id>, then deleted
    wait_until(lambda: record_of(resolver, container_id).removed)
    converge(resolver, host, set())
    # Late events of the container still resolve.
    assert resolver.lookup_container(container_id) == meta
    assert resolver.lookup_cgroup_id(cgroup_id) == meta


def test_torn_down_container_is_gone_after_a_short_grace_period(
    host: FakeHost, start: StartResolver
) -> None:
    container_id = new_id()
    bundle = host.write(
        host.containerd_bundle(container_id), containerd_spec(container_id, Pod.new())
    )
    resolver = start(grace_period=0.2)
    changes = Changes()
    resolver.subscribe(changes)
    host.tear_down(bundle)
    wait_until(lambda: changes.of(container_id) == ["removed"])
    wait_until(lambda: resolver.container(container_id) is None, what="the tombstone to expire")
    assert resolver.lookup_container(container_id) is None  # not on disk either
    assert resolver.containers() == []


def test_a_bundle_that_comes_back_in_its_grace_period_is_live_again(
    host: FakeHost, start: StartResolver
) -> None:
    container_id = new_id()
    spec = containerd_spec(container_id, Pod.new())
    bundle = host.write(host.containerd_bundle(container_id), spec)
    resolver = start()
    shutil.rmtree(bundle)
    wait_until(lambda: record_of(resolver, container_id).removed)
    host.write(bundle, spec)
    converge(resolver, host, {container_id})


# -- updates of a bundle -------------------------------------------------------------------------


def test_a_rewritten_config_updates_the_record(host: FakeHost, start: StartResolver) -> None:
    pod = Pod.new()
    container_id = new_id()
    bundle = host.write(host.containerd_bundle(container_id), containerd_spec(container_id, pod))
    resolver = start()
    changes = Changes()
    resolver.subscribe(changes)
    assert record_of(resolver, container_id).meta.image == "localhost/ociresolve-e2e/busybox:1"
    host.write(bundle, containerd_spec(container_id, pod, name="app2", image="registry/app:2"))
    wait_until(lambda: record_of(resolver, container_id).meta.image == "registry/app:2")
    assert record_of(resolver, container_id).meta.container_name == "app2"
    wait_until(lambda: changes.of(container_id) == ["updated"])
    converge(resolver, host, {container_id})


@pytest.mark.parametrize("layout", ["containerd", "cri-o"])
def test_the_pid_file_renamed_in_sets_the_pid(
    host: FakeHost, start: StartResolver, layout: str
) -> None:
    container_id = new_id()
    bundle = host.write(*host.bundle(layout, container_id, Pod.new()))
    resolver = start()
    assert record_of(resolver, container_id).pid is None
    host.write_pid(bundle, 4242, PID_FILES[layout])  # runc: a temporary file renamed in
    wait_until(lambda: record_of(resolver, container_id).pid == 4242)


def test_a_pid_file_written_before_the_config_is_read_with_it(
    host: FakeHost, start: StartResolver
) -> None:
    host.make_roots()
    resolver = start()
    container_id = new_id()
    bundle = host.containerd_bundle(container_id)
    bundle.mkdir()
    host.write_pid(bundle, 777)
    host.write(bundle, containerd_spec(container_id, Pod.new()))
    wait_until(lambda: resolver.container(container_id) is not None)
    assert record_of(resolver, container_id).pid == 777


@pytest.mark.parametrize("layout", ["containerd", "cri-o"])
def test_the_cgroup_v2_directory_gives_the_cgroup_id(
    host: FakeHost, start: StartResolver, layout: str
) -> None:
    host.enable_cgroup2()
    host.make_roots()
    resolver = start()
    container_id = new_id()
    bundle, spec = host.bundle(layout, container_id, Pod.new())
    # The runtime creates the cgroup when it starts the container, then writes the pid file.
    host.write(bundle, spec)
    wait_until(lambda: resolver.container(container_id) is not None)
    cgroup_id = host.make_cgroup(spec["linux"]["cgroupsPath"])
    host.write_pid(bundle, 4242, PID_FILES[layout])
    wait_until(lambda: record_of(resolver, container_id).cgroup_id == cgroup_id)
    assert resolver.lookup_cgroup_id(cgroup_id) == record_of(resolver, container_id).meta


def test_a_cgroup_created_after_the_config_is_found_on_a_lookup_miss(
    host: FakeHost, start: StartResolver
) -> None:
    host.enable_cgroup2()
    host_cgroup = host.make_cgroup("/system.slice/sshd.service")
    container_id = new_id()
    spec = containerd_spec(container_id, Pod.new())
    host.write(host.containerd_bundle(container_id), spec)
    resolver = start()
    assert record_of(resolver, container_id).cgroup_id is None
    assert resolver.lookup_cgroup_id(host_cgroup) is None
    cgroup_id = host.make_cgroup(spec["linux"]["cgroupsPath"])  # no event: nobody watches it
    meta = resolver.lookup_cgroup_id(cgroup_id)
    assert meta is not None and meta.container_id == container_id
    assert record_of(resolver, container_id).cgroup_id == cgroup_id
    assert resolver.lookup_cgroup_id(host_cgroup) is None


# -- overflow ------------------------------------------------------------------------------------


def test_an_overflow_rescans_adds_the_new_and_removes_the_gone(host: FakeHost) -> None:
    """A Watcher that is never started has no thread: the test feeds it events itself."""
    pod = Pod.new()
    old = [new_id() for _ in range(5)]
    for container_id in old:
        host.write(host.containerd_bundle(container_id), containerd_spec(container_id, pod))
    index = Index(grace_period=30.0)
    watcher = Watcher(HostPaths(str(host.root), [CONTAINERD_ROOT, CRIO_ROOT]), index)
    watcher.scan()
    assert live_ids(index.records()) == set(old)
    # Behind the watcher's back, as if the events had been lost:
    for container_id in old[:2]:
        host.tear_down(host.containerd_bundle(container_id))
    new = [new_id() for _ in range(3)]
    host.write(host.containerd_bundle(new[0]), containerd_spec(new[0], pod))
    host.move_in(host.containerd_bundle(new[1], "other"), containerd_spec(new[1], pod))
    host.write(host.crio_bundle(new[2]), crio_spec(new[2], pod))
    watcher.handle([(-1, flags.Q_OVERFLOW, 0, "")])
    assert (watcher.overflows, watcher.rescans) == (1, 1)
    assert live_ids(index.records()) == host.truth() == set(old[2:]) | set(new)
    assert all(removed_in(index, container_id) for container_id in old[:2])
    watcher.close()


class GatedIndex(Index):
    """An Index whose ``put`` waits while the gate is shut: it stalls the watcher's thread."""

    def __init__(self, *, grace_period: float) -> None:
        super().__init__(grace_period=grace_period)
        self.gate = threading.Event()
        self.gate.set()
        self.stalled = threading.Event()

    def put(self, record: IndexedContainer, *, only_if_live: bool = False) -> None:
        if not self.gate.is_set():
            self.stalled.set()
            assert self.gate.wait(timeout=30)
        super().put(record, only_if_live=only_if_live)


def _max_queued_events() -> int | None:
    try:
        with open("/proc/sys/fs/inotify/max_queued_events") as file:  # read, never written
            return int(file.read())
    except (OSError, ValueError):
        return None


def test_a_real_queue_overflow_rescans_and_loses_nothing(host: FakeHost) -> None:
    limit = _max_queued_events()
    if limit is None or limit > 200_000:
        pytest.skip(f"fs.inotify.max_queued_events is {limit}: too large to overflow quickly")
    pod = Pod.new()
    kept, gone = new_id(), new_id()
    for container_id in (kept, gone):
        host.write(host.containerd_bundle(container_id), containerd_spec(container_id, pod))
    index = GatedIndex(grace_period=30.0)
    watcher = Watcher(HostPaths(str(host.root), [CONTAINERD_ROOT]), index, tick=0.05)
    watcher.start()
    try:
        assert live_ids(index.records()) == {kept, gone}
        # Stall the watcher's thread in put(), then queue more events than the kernel keeps.
        index.gate.clear()
        stalling = new_id()
        host.move_in(host.containerd_bundle(stalling), containerd_spec(stalling, pod))
        assert index.stalled.wait(timeout=10)
        namespace = host.containerd_bundle(stalling).parent
        for n in range(limit // 2 + 100):
            noise = namespace / f".noise-{n}"  # hidden names: not bundles, still events
            noise.mkdir()
            noise.rmdir()
        host.tear_down(host.containerd_bundle(gone))
        late = new_id()
        host.move_in(host.containerd_bundle(late), containerd_spec(late, pod))
        index.gate.set()
        wait_until(lambda: watcher.overflows >= 1, what="the overflow")
        wait_until(lambda: live_ids(index.records()) == host.truth() == {kept, stalling, late})
        assert watcher.rescans >= 1
        assert removed_in(index, gone)
    finally:
        index.gate.set()
        watcher.close()


# -- hostile files -------------------------------------------------------------------------------


def _hostile_bundles() -> dict[str, Callable[[Path], None]]:
    big = b'{"annotations": {"x": "' + b"y" * (4 * 1024 * 1024) + b'"}}'
    pod = Pod.new()

    def spec_with(**changes: object) -> Callable[[Path], None]:
        def write(bundle: Path) -> None:
            spec = containerd_spec(bundle.name, pod)
            spec.update(changes)
            write_in_place(bundle / "config.json", encode(spec))

        return write

    def raw(data: bytes) -> Callable[[Path], None]:
        return lambda bundle: write_in_place(bundle / "config.json", data)

    def nul_cgroup(bundle: Path) -> None:
        spec = containerd_spec(bundle.name, pod)
        spec["linux"]["cgroupsPath"] = "/kubepods/besteffort/pod\x00/x"
        write_in_place(bundle / "config.json", encode(spec))

    def dotdot_cgroup(bundle: Path) -> None:
        spec = containerd_spec(bundle.name, pod)
        spec["linux"]["cgroupsPath"] = "/" + "../" * 40 + "nonexistent" * 30
        write_in_place(bundle / "config.json", encode(spec))

    return {
        "garbage": raw(b"\x00\xff garbage \x80" * 100),
        "json array": raw(b"[1, 2, 3]"),
        "json string": raw(b'"config"'),
        "annotations not a map": spec_with(annotations=["a", "b"]),
        "annotation values not strings": spec_with(annotations={"io.kubernetes.cri.sandbox-id": 1}),
        "linux not an object": spec_with(linux="linux"),
        "truncated forever": raw(encode(containerd_spec("x", pod))[:100]),
        "over 4 MiB": raw(big),
        "podman, not kubernetes": raw(encode(podman_spec())),
        "no annotations": raw(b'{"ociVersion": "1.0.2"}'),
        "half the containerd keys": raw(
            b'{"annotations": {"io.kubernetes.cri.container-type": "container"}}'
        ),
        "invalid utf-8 in a value": raw(b'{"annotations": {"a": "\xff\xfe"}}'),
        "nul in cgroupsPath": nul_cgroup,
        "cgroupsPath escaping the host": dotdot_cgroup,
        "fifo": lambda bundle: os.mkfifo(bundle / "config.json"),
        "directory": lambda bundle: (bundle / "config.json").mkdir(),
        "dangling symlink": lambda bundle: os.symlink(bundle / "nowhere", bundle / "config.json"),
    }


def test_hostile_config_files_never_stop_the_watcher(host: FakeHost, start: StartResolver) -> None:
    host.enable_cgroup2()
    pod = Pod.new()
    before = new_id()
    host.write(host.containerd_bundle(before), containerd_spec(before, pod))
    resolver = start()
    assert live_ids(resolver.containers()) == {before}
    for write in _hostile_bundles().values():
        bundle = host.containerd_bundle(new_id())
        bundle.mkdir()
        write(bundle)
    after = new_id()
    host.write(host.containerd_bundle(after), containerd_spec(after, pod))
    wait_until(lambda: resolver.container(after) is not None)
    # Still alive: the next bundle is indexed too, and nothing indexed before was lost.
    settle(resolver, host)
    live = live_ids(resolver.containers())
    assert {before, after} <= live
    assert live == host.truth()
    assert watcher_of(resolver).bundle_errors >= 5
