"""The live index on a real containerd + runc, every generation: a ``Resolver`` started before
the pods are made, fed by inotify alone, answers for every container without ever asking the
CRI.

Every test starts its own ``Resolver`` on the session containerd's state directory (the
runtime root, with ``host_root`` ``/``), subscribed to its changes, *then* creates pods through
the CRI exactly as kubelet does (RunPodSandbox, CreateContainer, StartContainer). In the pure
cgroup v2 view the resolver in this process reads the same v2 hierarchy where this machine
mounts it (``/sys/fs/cgroup/unified`` on a hybrid one); the CLI runs in containerd's namespace,
where it is ``/sys/fs/cgroup``.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from harness import Containerd, ContainerSpec, Mount, Pod, PodFactory
from harness.cgroups import cgroup_mounts
from real_pods import TIMEOUT, cli, expected_meta, fork_boottime, init_pid, members, poll

from ociresolve import Change, ContainerMeta, IndexedContainer, Resolver

pytestmark = pytest.mark.e2e

SLEEP = ["sleep", "3600"]


# -- helpers -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Seen:
    """One change the resolver published, and ``CLOCK_BOOTTIME`` when the subscriber got it."""

    record: IndexedContainer
    change: Change
    boottime: float


class Changes:
    """A resolver subscriber that keeps every change, and waits for the ones a test expects."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.seen: list[Seen] = []

    def __call__(self, record: IndexedContainer, change: Change) -> None:
        boottime = time.clock_gettime(time.CLOCK_BOOTTIME)
        with self._cond:
            self.seen.append(Seen(record, change, boottime))
            self._cond.notify_all()

    def wait(self, container_id: str, change: Change, timeout: float = TIMEOUT) -> Seen:
        """The first ``change`` of ``container_id``, waiting for it to be published if need be."""
        with self._cond:
            self._cond.wait_for(lambda: self._first_locked(container_id, change), timeout)
            seen = self._first_locked(container_id, change)
        assert seen is not None, f"{container_id[:12]}: no {change!r} within {timeout}s"
        return seen

    def _first_locked(self, container_id: str, change: Change) -> Seen | None:
        for s in self.seen:
            if s.change == change and s.record.meta.container_id == container_id:
                return s
        return None


@dataclass(frozen=True)
class Live:
    resolver: Resolver
    changes: Changes


@pytest.fixture
def live(containerd: Containerd) -> Iterator[Callable[[float], Live]]:
    """Starts a subscribed ``Resolver`` on the containerd state dir; closes it at the end."""
    started: list[Resolver] = []

    def start(grace_period: float) -> Live:
        resolver = Resolver(runtime_roots=[str(containerd.state_dir)], grace_period=grace_period)
        changes = Changes()
        resolver.subscribe(changes)
        started.append(resolver)
        resolver.start()
        return Live(resolver, changes)

    yield start
    for resolver in started:
        resolver.close()


def cgroup2_mount() -> Path:
    """The cgroup v2 mount, from the mount table (not from the library under test)."""
    mounts = [m.path for m in cgroup_mounts() if m.version == 2]
    assert mounts, "no cgroup2 mount on this host"
    return mounts[0]


def spec_of(containerd: Containerd, container_id: str) -> dict[str, object]:
    spec = json.loads((containerd.bundle_dir(container_id) / "config.json").read_bytes())
    assert isinstance(spec, dict)
    return spec


def cgroup_dir(containerd: Containerd, container_id: str) -> Path:
    """``<cgroup2 mount>/<linux.cgroupsPath>`` of a container, from its ``config.json``."""
    linux = spec_of(containerd, container_id)["linux"]
    assert isinstance(linux, dict)
    return cgroup2_mount() / str(linux["cgroupsPath"]).lstrip("/")


def assert_is(meta: ContainerMeta | None, pod: Pod, container_id: str, name: str | None) -> None:
    assert meta is not None, f"{container_id[:12]} ({name or 'sandbox'}) did not resolve"
    got = {key: getattr(meta, key) for key in expected_meta(pod, container_id, name)}
    assert got == expected_meta(pod, container_id, name)


@contextmanager
def frozen(containerd: Containerd) -> Iterator[None]:
    """containerd (ours, by the PID we started it with) stopped: no CRI call can be answered."""
    pid = containerd.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


# -- tests -------------------------------------------------------------------------------------


def test_every_container_is_indexed_before_its_first_process_starts(
    containerd: Containerd, pod_factory: PodFactory, live: Callable[[float], Live]
) -> None:
    """The sandbox and each container are ``added`` before the kernel forked their process.

    Method, with no timing assumption: the subscriber reads ``CLOCK_BOOTTIME`` when it is
    handed the ``added`` change, which is after the index put. The process in ``init.pid`` is
    the one runc forks in ``runc create`` and that later execs the container's command; its
    ``starttime`` in ``/proc/<pid>/stat`` is its fork time on the same boot clock, truncated to
    whole clock ticks (``nsec_to_clock_t`` floors). So ``added_boottime < starttime_ticks /
    CLK_TCK`` proves put < callback < fork: the container was resolvable before its process
    existed. The bound is conservative by the subscriber's thread hop and up to one tick;
    measured here, the callback still came 18-66 ms before the fork (3 ms at worst with three
    CPU hogs on the two cores), so a failure means the index (or its subscriber) was late.
    """
    watch = live(30.0)
    pod = pod_factory(
        "ordered-5f7c9",
        [ContainerSpec("app", SLEEP), ContainerSpec("sidecar", SLEEP)],
        namespace="live",
    )
    for container_id, name in members(pod):
        added = watch.changes.wait(container_id, "added")
        assert_is(added.record.meta, pod, container_id, name)
        pid = init_pid(containerd, container_id)
        forked_at = fork_boottime(pid)
        assert added.boottime < forked_at, (
            f"{name or 'sandbox'}: added at boottime {added.boottime:.3f}s, "
            f"its process {pid} forked at {forked_at:.2f}s"
        )
        # The first record came from config.json alone: no process, hence no pid, yet.
        assert added.record.pid is None
        assert added.record.bundle == str(containerd.bundle_dir(container_id))


def test_lookup_pid_answers_from_the_index_without_containerd(
    containerd: Containerd, pod_factory: PodFactory, live: Callable[[float], Live]
) -> None:
    """Every process of the pod resolves from the index, with containerd stopped (SIGSTOP).

    The resolver never talks CRI; stopping the daemon proves no lookup depends on it.
    """
    watch = live(30.0)
    pod = pod_factory(
        "lookup-8b2d1",
        [
            # Two processes: the shell and its background child, both in the container's cgroup.
            ContainerSpec("app", ["sh", "-c", "sleep 3600 & exec sleep 3601"]),
            ContainerSpec("sidecar", SLEEP),
        ],
        namespace="live",
    )
    cri = containerd.cri()
    pids: dict[str, list[int]] = {}
    for container_id, name in members(pod):
        pid = init_pid(containerd, container_id)
        if name is not None:
            assert cri.container_pid(container_id) == pid
        procs = cgroup_dir(containerd, container_id) / "cgroup.procs"
        poll(
            lambda procs=procs, name=name: (
                len(procs.read_text().split()) == (2 if name == "app" else 1)
            ),
            f"the processes of {name or 'sandbox'}",
        )
        pids[container_id] = [int(p) for p in procs.read_text().split()]
        assert pid in pids[container_id]
        poll(lambda cid=container_id: watch.resolver.container(cid), f"{name or 'sandbox'} indexed")

    with frozen(containerd):
        for container_id, name in members(pod):
            for pid in pids[container_id]:
                resolution = watch.resolver.resolve_pid(pid)
                assert resolution is not None and resolution.source == "index"
                assert_is(resolution.meta, pod, container_id, name)
                assert watch.resolver.lookup_pid(pid) is resolution.meta
    assert watch.resolver.lookup_pid(os.getpid()) is None  # this test: a host process


def test_lookup_cgroup_id_by_the_cgroup_v2_inode(
    containerd: Containerd, pod_factory: PodFactory, live: Callable[[float], Live]
) -> None:
    """``os.stat(<cgroup2>/<cgroupsPath>).st_ino`` (BPF's cgroup id) resolves to the container,
    and the index learned the cgroup id and the PID when the pid file appeared."""
    watch = live(30.0)
    pod = pod_factory("cgroup-id-3e9a0", [ContainerSpec("app", SLEEP)], namespace="live")
    for container_id, name in members(pod):
        cgroup_id = os.stat(cgroup_dir(containerd, container_id)).st_ino
        pid = init_pid(containerd, container_id)
        poll(
            lambda cid=container_id: (r := watch.resolver.container(cid)) and r.pid,
            f"the pid of {name or 'sandbox'} indexed",
        )
        record = watch.resolver.container(container_id)
        assert record is not None
        assert (record.pid, record.cgroup_id) == (pid, cgroup_id)
        # A plain dict hit, not the miss path that stats cgroup directories.
        assert watch.resolver.index.meta_by_cgroup.get(cgroup_id) is record.meta
        assert_is(watch.resolver.lookup_cgroup_id(cgroup_id), pod, container_id, name)
    assert watch.resolver.lookup_cgroup_id(os.stat(cgroup2_mount()).st_ino) is None  # the root


def test_a_container_that_exits_at_once_still_resolves(
    containerd: Containerd, pod_factory: PodFactory, live: Callable[[float], Live]
) -> None:
    """Two containers whose only process does one thing and exits at once.

    ``quick`` runs ``true``. ``self-id`` reports its own cgroup id, as a BPF probe would read
    it with ``bpf_get_current_cgroup_id()``, then exits: ``stat -c %i`` of its cgroup v2
    directory. With cgroup v1 controllers there is no cgroup namespace: that is its ``0::``
    path in a read-only bind mount of the host's cgroup2 mount. On cgroup v2 alone, containerd
    gives each container a cgroup namespace of its own and runc mounts the container's cgroup
    at ``/sys/fs/cgroup``.

    What holds once CRI says EXITED: containerd has already deleted the task, so the bundle
    directory and the cgroup are gone. The index keeps the removed record for the grace period
    (30 s here), so both the container id and the cgroup id still resolve, from memory. The
    cgroup id is known because the index stats the cgroup when ``init.pid`` appears; runc made
    the cgroup before writing that file and removes it only after the process exited and
    containerd handled the exit (tens of ms later). Were the watcher slower than that, only the
    container id would resolve; after the grace period neither does (see the eviction test).
    """
    watch = live(30.0)
    cgroup2 = cgroup2_mount()
    if containerd.cgroup_mode == "unified":
        report, mounts = "stat -c %i /sys/fs/cgroup", []
    else:
        report = "stat -c %i /hostcg$(sed -n 's/^0:://p' /proc/self/cgroup)"
        mounts = [Mount(str(containerd.cgroup2_mount), "/hostcg", readonly=True)]
    pod = pod_factory(
        "short-lived-1c4f2",
        [
            ContainerSpec("quick", ["true"]),
            ContainerSpec("self-id", ["sh", "-c", report], mounts=mounts),
        ],
        namespace="live",
    )
    cri = containerd.cri()
    for name in ("quick", "self-id"):
        container_id = pod.container_id(name)
        status = cri.wait_container_exit(container_id)
        assert status.exit_code == 0, pod.log_path(name).read_text()
        assert not containerd.bundle_dir(container_id).exists()
        removed = watch.changes.wait(container_id, "removed")
        record = watch.resolver.container(container_id)
        assert record is not None and record.removed
        assert record.pid is not None and record.cgroup_id is not None, record
        assert removed.record.cgroup_id == record.cgroup_id
        assert_is(watch.resolver.lookup_container(container_id), pod, container_id, name)
        assert_is(watch.resolver.lookup_cgroup_id(record.cgroup_id), pod, container_id, name)
        # From memory: the container's cgroup directory no longer exists.
        assert not (cgroup2 / pod.cgroup_parent.lstrip("/") / container_id).exists()

    # The process's own view of its cgroup id is the one the index learned.
    log = pod.log_path("self-id")
    poll(lambda: " stdout F " in log.read_text(), "the self-id container's log line")
    reported = int(log.read_text().split(" stdout F ", 1)[1].split()[0])
    record = watch.resolver.container(pod.container_id("self-id"))
    assert record is not None and record.cgroup_id == reported


def test_teardown_evicts_after_the_grace_period(
    containerd: Containerd, pod_factory: PodFactory, live: Callable[[float], Live]
) -> None:
    """CRI teardown marks each container ``removed``; it resolves until the grace period ends,
    then not at all (the bundle is gone too, so a miss finds nothing on disk either).

    Timing-proof bounds: every removal happens after ``torn_down_at``; a record cannot expire
    before ``removed_at + grace``, so a lookup made within ``grace`` of ``torn_down_at`` must
    still answer, and the first ``None`` cannot come before ``torn_down_at + grace``.
    """
    grace = 1.0
    watch = live(grace)
    pod = pod_factory("evicted-9d0e3", [ContainerSpec("app", SLEEP)], namespace="live")
    ids = members(pod)
    cgroup_ids: dict[str, int] = {}
    for container_id, name in ids:
        cgroup_ids[container_id] = os.stat(cgroup_dir(containerd, container_id)).st_ino
        poll(
            lambda cid=container_id: (r := watch.resolver.container(cid)) and r.cgroup_id,
            f"{name or 'sandbox'} indexed with its cgroup id",
        )

    torn_down_at = time.monotonic()
    containerd.cri().teardown_pod(pod.sandbox_id)
    for container_id, name in ids:
        removed = watch.changes.wait(container_id, "removed")
        assert removed.record.removed
        record = watch.resolver.container(container_id)
        meta = watch.resolver.lookup_container(container_id)
        by_cgroup = watch.resolver.lookup_cgroup_id(cgroup_ids[container_id])
        elapsed = time.monotonic() - torn_down_at
        # Teardown takes about 80 ms here: a machine 12 times slower cannot check this.
        assert elapsed < grace, f"teardown took {elapsed:.2f}s, more than the grace period"
        assert record is not None and record.removed
        assert_is(meta, pod, container_id, name)
        assert_is(by_cgroup, pod, container_id, name)
        assert not containerd.bundle_dir(container_id).exists()

    for container_id, name in ids:
        poll(
            lambda cid=container_id: watch.resolver.lookup_container(cid) is None,
            f"{name or 'sandbox'} evicted",
            timeout=grace + TIMEOUT,
        )
        assert time.monotonic() - torn_down_at >= grace
        assert watch.resolver.container(container_id) is None
        assert watch.resolver.lookup_cgroup_id(cgroup_ids[container_id]) is None
        assert container_id not in watch.resolver.index.meta_by_id


def test_cli_lookup_and_list(containerd: Containerd, pod_factory: PodFactory) -> None:
    """The one-shot commands read the bundles on demand (``"source": "bundle"``)."""
    pod = pod_factory(
        "cli-4a7b6",
        [ContainerSpec("app", SLEEP), ContainerSpec("sidecar", SLEEP)],
        namespace="live",
    )
    root = str(containerd.state_dir)
    pids = {cid: init_pid(containerd, cid) for cid, _ in members(pod)}
    for container_id, name in members(pod):
        result = cli(
            containerd, "lookup", str(pids[container_id]), "--runtime-root", root, "--json"
        )
        assert result.returncode == 0, result.stderr
        row = json.loads(result.stdout)
        assert {k: row[k] for k in expected_meta(pod, container_id, name)} == expected_meta(
            pod, container_id, name
        )
        assert (row["pid"], row["source"]) == (pids[container_id], "bundle")

    result = cli(containerd, "list", "--runtime-root", root)
    assert result.returncode == 0, result.stderr
    header, *lines = result.stdout.splitlines()
    assert header.split() == ["NAMESPACE", "POD", "CONTAINER", "TYPE", "RUNTIME", "ID", "PID"]
    rows = {line.split()[5]: line.split() for line in lines}
    for container_id, name in members(pod):
        kind = "sandbox" if name is None else "container"
        assert rows[container_id[:12]] == [
            pod.namespace,
            pod.name,
            name or "-",
            kind,
            "containerd",
            container_id[:12],
            str(pids[container_id]),
        ]

    result = cli(containerd, "lookup", str(os.getpid()), "--runtime-root", root)
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "not in a container" in result.stderr
