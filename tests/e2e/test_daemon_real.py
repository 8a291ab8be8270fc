"""The node daemon (``ociresolve serve``) on a real containerd + runc, every generation, as its
clients use it.

One daemon per test, run as its own process on the session containerd's state directory (the
runtime root) and CRI socket, where containerd runs (``Containerd.command``: in the pure cgroup
v2 view's namespace, for that one); its clients are other processes (tracers, the CLI, run
there too) and this one (``DaemonClient``, ``RemoteResolver``). Pods are made through the CRI,
as kubelet makes them.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from harness import (
    UNIXCONNECT,
    Containerd,
    ContainerSpec,
    DaemonProcess,
    Mount,
    Pod,
    PodFactory,
    TracerProcess,
)
from real_pods import TIMEOUT, cli, expected_meta, fork_boottime, init_pid, members, poll

from ociresolve import DaemonClient, IndexedContainer, RemoteResolver

pytestmark = pytest.mark.e2e

SLEEP = ["sleep", "3600"]
IN_CONTAINER = "/run/containerd/containerd.sock"  # the socket dir, bind-mounted
OPENED = "containerd socket connection opened"
STOPPED = "containerd socket tracer stopped"
INOTIFY = "anon_inode:inotify"
META_FIELDS = (
    "runtime",
    "container_type",
    "container_id",
    "sandbox_id",
    "pod_name",
    "pod_namespace",
    "pod_uid",
    "container_name",
)


# -- helpers -----------------------------------------------------------------------------------


def boottime() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def meta_of(record: IndexedContainer) -> dict[str, object]:
    return {key: getattr(record.meta, key) for key in META_FIELDS}


def inotify_instances(pid: int) -> int:
    """How many inotify instances the process holds (an index that watches the node has one)."""
    fd_dir = Path(f"/proc/{pid}/fd")
    count = 0
    for fd in fd_dir.iterdir():
        try:
            count += os.readlink(fd) == INOTIFY
        except OSError:
            continue  # closed meanwhile
    return count


def children_with_args(*args: str) -> list[int]:
    """PIDs of this process's children whose command line has ``args`` in a row."""
    wanted = [a.encode() for a in args]
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid != os.getpid():
            continue
        if any(argv[i : i + len(wanted)] == wanted for i in range(len(argv))):
            found.append(int(entry.name))
    return sorted(found)


@contextmanager
def frozen(pid: int) -> Iterator[None]:
    """The process (ours, by PID) stopped: it answers nothing until the block ends."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def is_connection(**fields: object) -> Callable[[str], bool]:
    def match(line: str) -> bool:
        row = json.loads(line)
        return row.get("msg") == OPENED and all(row.get(k) == v for k, v in fields.items())

    return match


@dataclass(frozen=True)
class Seen:
    kind: str
    record: IndexedContainer | None
    boottime: float


def id_of(seen: Seen) -> str | None:
    return seen.record.meta.container_id if seen.record is not None else None


class Watching:
    """``DaemonClient.watch()`` iterated in a thread: every event, with ``CLOCK_BOOTTIME`` when
    it was handed over; ``error`` is what ended the iteration."""

    def __init__(self, client: DaemonClient) -> None:
        self.watch = client.watch()
        self.seen: list[Seen] = []
        self.error: BaseException | None = None
        self.ended = threading.Event()
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="watching", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for kind, record in self.watch:
                with self._cond:
                    self.seen.append(Seen(kind, record, boottime()))
                    self._cond.notify_all()
        except BaseException as exc:
            self.error = exc
        finally:
            self.ended.set()
            with self._cond:
                self._cond.notify_all()

    def wait(self, container_id: str | None, kind: str, timeout: float = TIMEOUT) -> Seen:
        """The first ``kind`` event of ``container_id`` (``None``: of no container)."""

        def first() -> Seen | None:
            for s in self.seen:
                if s.kind == kind and id_of(s) == container_id:
                    return s
            return None

        with self._cond:
            self._cond.wait_for(lambda: first() is not None or self.ended.is_set(), timeout)
            seen = first()
        assert seen is not None, f"{container_id}: no {kind!r} within {timeout}s ({self.error!r})"
        return seen

    def close(self) -> None:
        self.watch.cancel()
        self._thread.join(TIMEOUT)

    def __enter__(self) -> Watching:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class FirstSeen:
    """When each container first shows in a ``RemoteResolver``'s copy (``CLOCK_BOOTTIME``),
    polled every millisecond: a time read after the copy had it, never before."""

    def __init__(self, remote: RemoteResolver) -> None:
        self.remote = remote
        self.at: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="first-seen", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.001):
            now = boottime()
            for record in self.remote.containers():
                cid = record.meta.container_id
                if cid is not None and cid not in self.at:
                    self.at[cid] = now

    def close(self) -> None:
        self._stop.set()
        self._thread.join(TIMEOUT)


# -- two tracers, one daemon -------------------------------------------------------------------


@pytest.mark.bpf
def test_two_tracers_in_two_processes_share_one_daemon(
    containerd: Containerd, pod_factory: PodFactory, daemon: DaemonProcess, tmp_path: Path
) -> None:
    """Two ``trace connect --daemon-socket`` processes name the pod of a connecting container
    from their local copies of the daemon's index, and neither indexes the node itself.

    "From their local copies": the daemon is stopped (SIGSTOP) when the container connects,
    so no lookup can reach it. "Neither indexes the node": an index that watches the node holds
    an inotify instance, as the daemon does; the tracers hold none.
    """
    trigger = tmp_path / "trigger"
    trigger.mkdir()
    wait_then_connect = (
        f"until [ -e /trigger/go ]; do sleep 0.02; done; exec {UNIXCONNECT} {IN_CONTAINER}"
    )
    tracer_args = [
        "--daemon-socket",
        str(daemon.socket),
        "--socket",
        IN_CONTAINER,
        "--output",
        "json",
        "--summary-interval",
        "0",
    ]
    with ExitStack() as stack:
        tracers = [
            stack.enter_context(TracerProcess(tracer_args, enter=containerd.command))
            for _ in range(2)
        ]
        remote = stack.enter_context(RemoteResolver(str(daemon.socket)))

        tracer_pids = children_with_args("--daemon-socket", str(daemon.socket))
        assert len(tracer_pids) == 2, tracer_pids
        assert inotify_instances(daemon.pid) >= 1  # the observable works: the daemon watches
        for pid in tracer_pids:
            assert inotify_instances(pid) == 0, f"tracer {pid} watches the node itself"

        pod = pod_factory(
            "shared-daemon-7c2e",
            [
                ContainerSpec(
                    "client",
                    ["sh", "-c", wait_then_connect],
                    mounts=[containerd.socket_mount(), Mount(str(trigger), "/trigger")],
                )
            ],
            namespace="tracing",
        )
        container_id = pod.container_id("client")
        # The daemon has told its watchers the container's cgroup id (this process's copy is
        # one of them; the tracers' copies are fed by the same fan-out).
        poll(
            lambda: (r := remote.container(container_id)) is not None and r.cgroup_id,
            "the container's cgroup id in a copy",
        )
        with frozen(daemon.pid):
            (trigger / "go").touch()
            rows = [
                json.loads(t.wait_for(is_connection(pod_name=pod.name), timeout=TIMEOUT))
                for t in tracers
            ]
        status = containerd.cri().wait_container_exit(container_id)
        assert status.exit_code == 0, pod.log_path("client").read_text()
        for row in rows:
            assert row["source"] == "index"
            assert (row["pod_namespace"], row["container"]) == ("tracing", "client")
            assert row["container_id"] == container_id[:12]
            assert (row["comm"], row["address"]) == ("unixconnect", IN_CONTAINER)
        for pid in tracer_pids:
            assert inotify_instances(pid) == 0
        for tracer in tracers:
            summary = json.loads(tracer.stop()[-1])
            assert summary["msg"] == STOPPED
            assert summary["resolved"] >= 1 and summary["lost"] == 0
            assert summary.get("source_cri", 0) == 0 and summary.get("source_bundle", 0) == 0


@pytest.mark.bpf
def test_a_tracer_on_the_daemon_says_so_in_its_start_up_line(
    containerd: Containerd, daemon: DaemonProcess
) -> None:
    """The start-up line records how the tracer resolves: through the daemon's socket, making
    no CRI call of its own (not ``"cri": "auto"``, which it never uses then)."""
    args = ["--daemon-socket", str(daemon.socket), "--output", "json", "--summary-interval", "0"]
    with TracerProcess(args, enter=containerd.command) as tracer:
        started = json.loads(tracer.lines[0])
    assert started.get("daemon_socket") == str(daemon.socket), started
    assert started["cri"] != "auto", started


# -- watch -------------------------------------------------------------------------------------


def test_watchers_see_a_container_before_its_first_process_and_see_it_go(
    containerd: Containerd, daemon: DaemonProcess
) -> None:
    """A raw ``Watch`` and a ``RemoteResolver`` hear of a sandbox and a container created
    through the CRI before the kernel forked their first process, and of the container's
    removal after ``RemoveContainer``.

    containerd (every generation) makes the task, hence the bundle, in ``StartContainer``,
    not in ``CreateContainer``: there is nothing to see before the start. So the proof is the
    clocks, as for the live index: the event is stamped (``CLOCK_BOOTTIME``) when this process
    got it, after the daemon indexed the bundle and sent it; the container's first process is
    the one in ``init.pid``, and its ``starttime`` is its fork on the same clock, floored to a
    tick. ``got < forked`` is then conservative by the hops and up to one tick.
    """
    cri = containerd.cri()
    socket = str(daemon.socket)
    with ExitStack() as stack:
        client = stack.enter_context(DaemonClient(socket))
        events = stack.enter_context(Watching(client))
        events.wait(None, "synced")
        remote = stack.enter_context(RemoteResolver(socket))
        first_seen = FirstSeen(remote)
        stack.callback(first_seen.close)

        config = cri.pod_config("watched-3d8f", "watch")
        sandbox_id = cri.run_pod_sandbox(config)
        stack.callback(cri.teardown_pod, sandbox_id)
        container_id = cri.create_container(sandbox_id, "app", command=SLEEP)
        assert not containerd.bundle_dir(container_id).exists()  # no task yet: see above
        cri.start_container(container_id)
        pod = Pod(
            sandbox_id=sandbox_id,
            name="watched-3d8f",
            namespace="watch",
            uid=config.metadata.uid,
            config=config,
            containers={"app": container_id},
        )
        for cid, name in members(pod):
            added = events.wait(cid, "added")
            assert added.record is not None
            assert meta_of(added.record) == expected_meta(pod, cid, name)
            assert added.record.pid is None  # from config.json alone: no process yet
            forked_at = fork_boottime(init_pid(containerd, cid))
            assert added.boottime < forked_at, (
                f"{name or 'sandbox'}: the watch got 'added' at {added.boottime:.3f}s, "
                f"its first process forked at {forked_at:.2f}s"
            )
            poll(lambda cid=cid: cid in first_seen.at, f"{name or 'sandbox'} in the copy")
            assert first_seen.at[cid] < forked_at, (
                f"{name or 'sandbox'}: in the copy at {first_seen.at[cid]:.3f}s, "
                f"its first process forked at {forked_at:.2f}s"
            )

        # Once started, the copy answers by cgroup id from memory.
        poll(
            lambda: (r := remote.container(container_id)) is not None and r.cgroup_id,
            "the container's cgroup id in the copy",
        )
        record = remote.container(container_id)
        assert record is not None and record.cgroup_id is not None
        meta = remote.lookup_cgroup_id(record.cgroup_id)
        assert meta is not None and meta.container_id == container_id
        assert events.wait(container_id, "updated").record is not None

        cri.stop_container(container_id)
        cri.remove_container(container_id)
        removed = events.wait(container_id, "removed")
        assert removed.record is not None and removed.record.removed
        assert meta_of(removed.record) == expected_meta(pod, container_id, "app")
        poll(
            lambda: (r := remote.container(container_id)) is not None and r.removed,
            "the removal in the copy",
        )
        # Still resolvable for the grace period, as in the daemon.
        assert remote.lookup_cgroup_id(record.cgroup_id) is not None
        kinds = {cid: [s.kind for s in events.seen if id_of(s) == cid] for cid, _ in members(pod)}
        assert kinds[container_id][0] == "added" and kinds[container_id][-1] == "removed", kinds
        assert "removed" not in kinds[sandbox_id], kinds  # the pod itself still runs
        assert events.error is None


# -- the CLI -----------------------------------------------------------------------------------


def test_the_cli_through_the_daemon_and_without_it_gives_the_same_answers(
    containerd: Containerd, pod_factory: PodFactory, daemon: DaemonProcess
) -> None:
    """``lookup --json`` and ``list --json``, asking the daemon and scanning once: the same
    records; only where the answer came from differs (the daemon's index, the bundle)."""
    pod = pod_factory(
        "cli-daemon-5b1e",
        [ContainerSpec("app", SLEEP), ContainerSpec("sidecar", ["sh", "-c", "exec sleep 3601"])],
        namespace="cli",
    )
    socket = str(daemon.socket)
    root = str(containerd.state_dir)
    with DaemonClient(socket) as client:
        for cid, name in members(pod):
            poll(
                lambda cid=cid: (r := client.lookup_container(cid).record) and r.cgroup_id,
                f"{name or 'sandbox'} indexed with its cgroup id",
            )
    for cid, name in members(pod):
        pid = init_pid(containerd, cid)
        via_daemon = cli(containerd, "lookup", "--json", str(pid), "--daemon-socket", socket)
        one_shot = cli(
            containerd, "lookup", "--json", str(pid), "--no-daemon", "--runtime-root", root
        )
        assert via_daemon.returncode == 0, via_daemon.stderr
        assert one_shot.returncode == 0, one_shot.stderr
        daemon_row, scan_row = json.loads(via_daemon.stdout), json.loads(one_shot.stdout)
        assert {k: daemon_row[k] for k in META_FIELDS} == expected_meta(pod, cid, name)
        assert (daemon_row.pop("source"), scan_row.pop("source")) == ("index", "bundle")
        assert daemon_row == scan_row
        assert daemon_row["pid"] == pid

    # --explain says which: the daemon answered.
    pid = init_pid(containerd, pod.container_id("app"))
    explained = cli(
        containerd, "lookup", "--json", "--explain", str(pid), "--daemon-socket", socket
    )
    assert explained.returncode == 0, explained.stderr
    steps = json.loads(explained.stdout)["explain"]
    assert steps[0]["step"] == "daemon" and "answered" in steps[0]["result"], steps

    # A host process: "not in a container" both ways.
    for how in (["--daemon-socket", socket], ["--no-daemon", "--runtime-root", root]):
        host = cli(containerd, "lookup", "--json", str(os.getpid()), *how)
        assert host.returncode == 1, (how, host.stdout, host.stderr)
        assert "not in a container" in host.stderr

    via_daemon = cli(containerd, "list", "--json", "--daemon-socket", socket)
    one_shot = cli(containerd, "list", "--json", "--no-daemon", "--runtime-root", root)
    assert via_daemon.returncode == 0, via_daemon.stderr
    assert one_shot.returncode == 0, one_shot.stderr
    daemon_rows = sorted(via_daemon.stdout.splitlines())
    scan_rows = sorted(one_shot.stdout.splitlines())
    assert daemon_rows == scan_rows
    listed = {json.loads(line)["container_id"] for line in daemon_rows}
    assert {cid for cid, _ in members(pod)} <= listed
