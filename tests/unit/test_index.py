"""The in-memory index: records, tombstones with a grace period and a cap, subscribers, and the
pod UID that containerd < 1.6.11 containers get from their sandbox."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from fakehost import live_ids, new_id, new_uid, wait_until
from msgspec.structs import replace

from ociresolve import Change, ContainerMeta, IndexedContainer
from ociresolve.index import MAX_TOMBSTONES, SUBSCRIBER_QUEUE, Index

pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def index(clock: FakeClock) -> Iterator[Index]:
    index = Index(grace_period=5.0, clock=clock)
    yield index
    index.close()


def container(
    container_id: str | None = None,
    *,
    sandbox_id: str | None = None,
    pod_uid: str | None = "0f5a4b3c-1d2e-4f60-8a9b-0c1d2e3f4a5b",
    name: str = "app",
    cgroup_id: int | None = None,
    pid: int | None = None,
) -> IndexedContainer:
    container_id = container_id or new_id()
    meta = ContainerMeta(
        runtime="containerd",
        container_type="container",
        container_id=container_id,
        sandbox_id=sandbox_id or new_id(),
        pod_name="web-5d9f7",
        pod_namespace="shop",
        pod_uid=pod_uid,
        container_name=name,
        image="registry/app:1",
    )
    return IndexedContainer(
        meta=meta,
        bundle=f"/run/containerd/io.containerd.runtime.v2.task/k8s.io/{container_id}",
        cgroups_path=f"/kubepods/besteffort/pod{pod_uid}/{container_id}",
        pid=pid,
        cgroup_id=cgroup_id,
    )


def sandbox(sandbox_id: str, pod_uid: str | None) -> IndexedContainer:
    meta = ContainerMeta(
        runtime="containerd",
        container_type="sandbox",
        container_id=sandbox_id,
        sandbox_id=sandbox_id,
        pod_name="web-5d9f7",
        pod_namespace="shop",
        pod_uid=pod_uid,
    )
    return IndexedContainer(
        meta=meta, bundle=f"/run/containerd/io.containerd.runtime.v2.task/k8s.io/{sandbox_id}"
    )


class Recorder:
    """A subscriber that records what it is told, from its own thread."""

    def __init__(self) -> None:
        self.seen: list[tuple[IndexedContainer, Change]] = []
        self._lock = threading.Lock()

    def __call__(self, record: IndexedContainer, change: Change) -> None:
        with self._lock:
            self.seen.append((record, change))

    def changes(self) -> list[tuple[str | None, Change]]:
        with self._lock:
            return [(record.meta.container_id, change) for record, change in self.seen]


# -- records -------------------------------------------------------------------------------------


def test_put_makes_a_container_resolvable_by_id_bundle_and_cgroup(index: Index) -> None:
    record = container(cgroup_id=4711, pid=42)
    container_id = record.meta.container_id
    assert container_id is not None
    generation = index.generation
    index.put(record)
    assert index.get(container_id) == record
    assert index.by_bundle(record.bundle) == record
    assert index.meta_by_id[container_id] == record.meta
    assert index.meta_by_cgroup[4711] == record.meta
    assert index.records() == [record]
    assert index.generation > generation
    generation = index.generation
    index.put(record)  # the same record again changes nothing
    assert index.generation == generation


def test_a_new_cgroup_id_replaces_the_old_one(index: Index) -> None:
    record = container(cgroup_id=1)
    index.put(record)
    index.put(replace(record, cgroup_id=2))
    assert 1 not in index.meta_by_cgroup
    assert index.meta_by_cgroup[2] == record.meta


def test_unmapped_lists_live_containers_without_a_cgroup_id(index: Index) -> None:
    mapped, unmapped, removed = container(cgroup_id=7), container(), container()
    for record in (mapped, unmapped, removed):
        index.put(record)
    index.remove_bundle(removed.bundle)
    assert index.unmapped() == [unmapped]


def test_a_record_without_a_container_id_is_ignored(index: Index) -> None:
    record = container()
    index.put(
        IndexedContainer(
            meta=ContainerMeta(runtime="containerd", container_type="container"),
            bundle=record.bundle,
        )
    )
    assert len(index) == 0


# -- tombstones ----------------------------------------------------------------------------------


def test_a_removed_container_stays_resolvable_until_its_grace_period_ends(
    index: Index, clock: FakeClock
) -> None:
    record = container(cgroup_id=99)
    container_id = record.meta.container_id
    assert container_id is not None
    index.put(record)
    index.remove_bundle(record.bundle)
    removed = index.get(container_id)
    assert removed is not None and removed.removed
    assert index.meta_by_id[container_id] == record.meta
    assert index.meta_by_cgroup[99] == record.meta
    clock.now += 4.9
    assert index.expire() == 0
    assert index.get(container_id) is not None
    clock.now += 0.2
    assert index.expire() == 1
    assert index.get(container_id) is None
    assert container_id not in index.meta_by_id
    assert 99 not in index.meta_by_cgroup
    assert index.by_bundle(record.bundle) is None
    assert len(index) == 0


def test_tombstones_expire_in_the_order_containers_were_removed(
    index: Index, clock: FakeClock
) -> None:
    records = [container() for _ in range(3)]
    for record in records:
        index.put(record)
    for record in records:
        index.remove_bundle(record.bundle)
        clock.now += 2.0
    # removed at t, t+2, t+4; now t+6: the first two are past the 5 s grace period.
    assert index.expire() == 1
    clock.now += 1.0
    assert index.expire() == 1
    assert live_ids(index.records()) == set()
    assert [r.meta.container_id for r in index.records()] == [records[2].meta.container_id]


def test_removing_twice_keeps_the_first_removal_time(index: Index, clock: FakeClock) -> None:
    record = container()
    index.put(record)
    index.remove_bundle(record.bundle)
    clock.now += 4.0
    index.remove_bundle(record.bundle)
    clock.now += 1.5
    assert index.expire() == 1


def test_a_container_that_comes_back_loses_its_tombstone(index: Index, clock: FakeClock) -> None:
    record = container()
    container_id = record.meta.container_id
    assert container_id is not None
    index.put(record)
    index.remove_bundle(record.bundle)
    index.put(record)
    clock.now += 60
    assert index.expire() == 0
    assert index.get(container_id) == record


def test_remove_below_removes_every_bundle_under_a_directory(index: Index) -> None:
    inside = [container() for _ in range(3)]
    outside = replace(container(), bundle="/run/containerd-other/x")
    for record in (*inside, outside):
        index.put(record)
    index.remove_below("/run/containerd/io.containerd.runtime.v2.task/k8s.io/")
    assert live_ids(index.records()) == {outside.meta.container_id}


def test_the_tombstone_cap_keeps_memory_bounded_under_endless_churn(clock: FakeClock) -> None:
    index = Index(grace_period=3600.0, clock=clock)
    live = container()
    index.put(live)
    for n in range(50_000):
        record = container(pid=n)
        index.put(record)
        index.remove_bundle(record.bundle)
        clock.now += 0.001
    assert len(index) <= MAX_TOMBSTONES + 1
    assert len(index.meta_by_id) <= MAX_TOMBSTONES + 1
    assert len(index.bundles()) == 1
    assert index.get(live.meta.container_id or "") == live  # the live one is never dropped
    index.close()


def test_the_oldest_tombstones_go_first_when_over_the_cap(clock: FakeClock) -> None:
    index = Index(grace_period=3600.0, max_tombstones=3, clock=clock)
    records = [container() for _ in range(5)]
    for record in records:
        index.put(record)
        index.remove_bundle(record.bundle)
    assert [r.meta.container_id for r in index.records()] == [
        r.meta.container_id for r in records[2:]
    ]


# -- subscribers ---------------------------------------------------------------------------------


def test_subscribers_are_told_added_updated_removed_in_order(index: Index) -> None:
    recorder = Recorder()
    unsubscribe = index.subscribe(recorder)
    record = container()
    container_id = record.meta.container_id
    index.put(record)
    index.put(replace(record, pid=1234))
    index.remove_bundle(record.bundle)
    index.put(record)  # back again: added
    expected = [
        (container_id, "added"),
        (container_id, "updated"),
        (container_id, "removed"),
        (container_id, "added"),
    ]
    wait_until(lambda: recorder.changes() == expected)
    assert recorder.seen[1][0].pid == 1234
    assert recorder.seen[2][0].removed
    unsubscribe()
    index.put(container())
    index.close()
    assert len(recorder.changes()) == 4


def test_a_slow_subscriber_never_blocks_put(index: Index) -> None:
    release = threading.Event()
    calls = 0

    def stuck(record: IndexedContainer, change: Change) -> None:
        nonlocal calls
        calls += 1
        release.wait(timeout=30)

    recorder = Recorder()
    index.subscribe(stuck)
    index.subscribe(recorder)
    count = SUBSCRIBER_QUEUE + 500  # more than the stuck subscriber's queue holds
    records = [container() for _ in range(count)]

    def writer() -> None:
        for record in records:
            index.put(record)

    thread = threading.Thread(target=writer)
    thread.start()
    thread.join(timeout=60)
    blocked = thread.is_alive()
    release.set()
    assert not blocked, "put() waited for a stuck subscriber"
    assert len(index) == count
    wait_until(lambda: len(recorder.changes()) > 0)
    assert calls <= count


def test_a_raising_subscriber_does_not_break_the_others(index: Index) -> None:
    raised = 0

    def broken(record: IndexedContainer, change: Change) -> None:
        nonlocal raised
        raised += 1
        raise RuntimeError("subscriber bug")

    recorder = Recorder()
    index.subscribe(broken)
    index.subscribe(recorder)
    records = [container() for _ in range(20)]
    for record in records:
        index.put(record)
    wait_until(lambda: len(recorder.changes()) == 20)
    wait_until(lambda: raised == 20)  # its thread survives its own exceptions
    assert [cid for cid, _ in recorder.changes()] == [r.meta.container_id for r in records]


# -- the pod UID of containerd < 1.6.11 containers -----------------------------------------------


def test_a_container_without_a_pod_uid_gets_it_from_its_sandbox_indexed_first(
    index: Index,
) -> None:
    uid, sandbox_id = new_uid(), new_id()
    index.put(sandbox(sandbox_id, uid))
    record = container(sandbox_id=sandbox_id, pod_uid=None, cgroup_id=5)
    index.put(record)
    container_id = record.meta.container_id or ""
    joined = index.get(container_id)
    assert joined is not None and joined.meta.pod_uid == uid
    assert index.meta_by_id[container_id].pod_uid == uid
    assert index.meta_by_cgroup[5].pod_uid == uid


def test_a_container_without_a_pod_uid_gets_it_from_its_sandbox_indexed_later(
    index: Index,
) -> None:
    recorder = Recorder()
    index.subscribe(recorder)
    uid, sandbox_id = new_uid(), new_id()
    record = container(sandbox_id=sandbox_id, pod_uid=None, cgroup_id=6)
    container_id = record.meta.container_id or ""
    index.put(record)
    assert index.meta_by_id[container_id].pod_uid is None
    index.put(sandbox(sandbox_id, uid))
    joined = index.get(container_id)
    assert joined is not None and joined.meta.pod_uid == uid
    assert index.meta_by_id[container_id].pod_uid == uid
    assert index.meta_by_cgroup[6].pod_uid == uid
    # Subscribers learn it too.
    wait_until(lambda: (container_id, "updated") in recorder.changes())
    last = [r for r, _ in recorder.seen if r.meta.container_id == container_id][-1]
    assert last.meta.pod_uid == uid


def test_a_sandbox_without_a_uid_gives_nothing(index: Index) -> None:
    sandbox_id = new_id()
    index.put(sandbox(sandbox_id, None))
    record = container(sandbox_id=sandbox_id, pod_uid=None)
    index.put(record)
    assert index.meta_by_id[record.meta.container_id or ""].pod_uid is None


def test_forgotten_containers_stop_waiting_for_their_sandbox(clock: FakeClock) -> None:
    """Containers whose sandbox never comes do not pile up once they are gone."""
    index = Index(grace_period=1.0, max_tombstones=10, clock=clock)
    for _ in range(1000):
        record = container(pod_uid=None)
        index.put(record)
        index.remove_bundle(record.bundle)
    clock.now += 2
    index.expire()
    assert len(index) == 0
    assert not index._waiting_for_uid  # white-box: nothing left behind
    index.close()
