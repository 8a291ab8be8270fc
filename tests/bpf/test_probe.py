"""ConnectProbe on the real kernel: in-kernel filters, event fields, loss accounting, storms."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from harness.cgroups import cgroup_mounts
from probe_events import collect

from ociresolve.tracer.errors import TracerUnavailable
from ociresolve.tracer.events import ConnectEvent
from ociresolve.tracer.probe import DEFAULT_EXCLUDED_COMMS, DEFAULT_SOCKETS, ConnectProbe

bpf = pytest.mark.bpf

# Connects once to argv[1] ("@name" is abstract) after setting its comm to argv[2] (if given)
# and moving itself into the cgroup v2 directory argv[3] (if given).
_CHILD = r"""
import ctypes, os, socket, sys
path, comm, cgroup = sys.argv[1:4]
if cgroup:
    with open(os.path.join(cgroup, "cgroup.procs"), "w") as f:
        f.write(str(os.getpid()))
if comm:
    ctypes.CDLL(None).prctl(15, comm.encode(), 0, 0, 0)  # PR_SET_NAME
s = socket.socket(socket.AF_UNIX)
try:
    s.connect("\0" + path[1:] if path.startswith("@") else path)
except OSError:
    pass
"""


def connect_unix(path: str | Path) -> None:
    """One connect() from this thread; a missing socket is fine, the syscall is entered."""
    name = str(path)
    with socket.socket(socket.AF_UNIX) as s, contextlib.suppress(OSError):
        s.connect("\0" + name[1:] if name.startswith("@") else name)


def connect_inet(family: socket.AddressFamily, host: str, port: int) -> None:
    with socket.socket(family) as s, contextlib.suppress(OSError):
        s.connect((host, port))


def spawn_connect(path: str | Path, *, comm: str = "", cgroup: Path | None = None) -> int:
    """Connects from a child process, waits for it; returns its PID."""
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(path), comm, str(cgroup or "")])
    assert proc.wait(timeout=30) == 0
    return proc.pid


def with_address(address: str) -> Callable[[list[ConnectEvent]], bool]:
    return lambda events: any(e.address == address for e in events)


def cgroup2_dir_of(pid: int | str = "self") -> Path:
    """The cgroup v2 directory of a process, from its ``0::`` line."""
    (mount,) = [m.path for m in cgroup_mounts() if m.version == 2]
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        if line.startswith("0::"):
            return mount / line[3:].lstrip("/")
    raise AssertionError(f"no cgroup v2 line for {pid}")


@pytest.fixture
def cgroup_leaf() -> Iterator[Path]:
    """A fresh cgroup v2 directory, removed at the end."""
    (mount,) = [m.path for m in cgroup_mounts() if m.version == 2]
    leaf = mount / f"ocibpf-{uuid.uuid4().hex[:8]}"
    leaf.mkdir()
    try:
        yield leaf
    finally:
        deadline = time.monotonic() + 5
        while True:
            try:
                leaf.rmdir()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)


@bpf
def test_matching_unix_path_is_captured_with_its_process_fields(sock_dir: Path) -> None:
    target = sock_dir / "ctrd.sock"
    with ConnectProbe(unix_paths=[str(target)], exclude_comms=()) as probe:
        connect_unix(sock_dir / "ctrd.sock.ttrpc")  # longer: not this path
        connect_unix(sock_dir / "ctrd.so")  # shorter: not this path either
        tids: list[int] = []
        comms: list[str] = []

        def worker() -> None:
            tids.append(threading.get_native_id())
            comms.append(Path(f"/proc/self/task/{tids[0]}/comm").read_text().strip())
            connect_unix(target)

        thread = threading.Thread(target=worker, name="connector")
        thread.start()
        thread.join()
        events = collect(probe, with_address(str(target)))
        assert probe.lost == 0
    mine = [e for e in events if e.tgid == os.getpid()]
    assert len(mine) == 1, mine
    (event,) = mine
    assert event.tid == tids[0] != os.getpid()
    assert event.family == "unix"
    assert event.address == str(target)
    assert event.port is None
    assert event.comm == comms[0]
    assert event.cgroup_id == os.stat(cgroup2_dir_of()).st_ino
    assert abs(event.time_ns - time.monotonic_ns()) < 30e9


@bpf
def test_cgroup_id_is_the_inode_of_the_callers_cgroup_v2_dir(
    sock_dir: Path, cgroup_leaf: Path
) -> None:
    target = sock_dir / "c.sock"
    with ConnectProbe(unix_paths=[str(target)]) as probe:
        pid = spawn_connect(target, cgroup=cgroup_leaf)
        events = collect(probe, with_address(str(target)))
    (event,) = [e for e in events if e.tgid == pid]
    assert event.tid == pid
    assert event.cgroup_id == os.stat(cgroup_leaf).st_ino != os.stat(cgroup2_dir_of()).st_ino


@bpf
def test_prefix_and_exact_paths(sock_dir: Path) -> None:
    exact = str(sock_dir / "one.sock")
    with ConnectProbe(unix_paths=[exact, f"{sock_dir}/dir/*"]) as probe:
        for path in ("one.sock", "one.sockx", "dir/a.sock", "dir/sub/b.sock", "dirx.sock", "dir"):
            connect_unix(f"{sock_dir}/{path}")
        connect_unix(f"{sock_dir}/end")  # not matched: a marker only the set-up below sees
        events = collect(probe, with_address(f"{sock_dir}/dir/sub/b.sock"))
    seen = [e.address for e in events if e.tgid == os.getpid()]
    assert seen == [exact, f"{sock_dir}/dir/a.sock", f"{sock_dir}/dir/sub/b.sock"]


@bpf
def test_every_unix_path_with_a_star_and_other_families_not_traced(sock_dir: Path) -> None:
    with ConnectProbe(unix_paths=["*"]) as probe:
        connect_inet(socket.AF_INET, "127.0.0.1", 9)
        connect_unix(sock_dir / "any.sock")
        events = collect(probe, with_address(str(sock_dir / "any.sock")))
    mine = [e for e in events if e.tgid == os.getpid()]
    assert [e.family for e in mine] == ["unix"]


@bpf
def test_inet_and_inet6_with_a_port_filter(sock_dir: Path) -> None:
    port = 40000 + os.getpid() % 20000
    with ConnectProbe(families=("inet", "inet6"), ports=[port]) as probe:
        connect_unix(sock_dir / "x.sock")  # family not traced
        connect_inet(socket.AF_INET, "127.0.0.1", port + 1)  # port not traced
        connect_inet(socket.AF_INET, "127.0.0.1", port)  # refused: the syscall still ran
        connect_inet(socket.AF_INET6, "::1", port)
        events = collect(probe, with_address(f"[::1]:{port}"))
    mine = [e for e in events if e.tgid == os.getpid()]
    assert [(e.family, e.address, e.port) for e in mine] == [
        ("inet", f"127.0.0.1:{port}", port),
        ("inet6", f"[::1]:{port}", port),
    ]


@bpf
def test_comm_deny_list_marks_and_does_not_drop(sock_dir: Path) -> None:
    """Excluded names are reported, marked: inside a container any process may take them (user
    space drops them only for host processes)."""
    target = sock_dir / "d.sock"
    deny = ["ocibpf-denied", *DEFAULT_EXCLUDED_COMMS]
    with ConnectProbe(unix_paths=[str(target)], exclude_comms=deny) as probe:
        denied = spawn_connect(target, comm="ocibpf-denied")
        # the kernel keeps 15 bytes: "containerd-shim-runc-v2" is "containerd-shim"
        shim = spawn_connect(target, comm="containerd-shim-runc-v2")
        kubelet = spawn_connect(target, comm="kubelet")
        allowed = spawn_connect(target, comm="ocibpf-ok")
        events = collect(probe, lambda evs: any(e.tgid == allowed for e in evs))
    marks = {e.tgid: (e.comm, e.excluded) for e in events}
    assert marks[allowed] == ("ocibpf-ok", False)
    assert marks[denied] == ("ocibpf-denied", True)
    assert marks[shim] == ("containerd-shim", True)
    assert marks[kubelet] == ("kubelet", True)


@bpf
def test_comm_allow_list(sock_dir: Path) -> None:
    target = sock_dir / "a.sock"
    with ConnectProbe(
        unix_paths=[str(target)],
        include_comms=["ocibpf-allow", "ocibpf-denyall"],
        exclude_comms=["ocibpf-denyall"],
    ) as probe:
        other = spawn_connect(target, comm="ocibpf-other")
        both = spawn_connect(target, comm="ocibpf-denyall")  # allowed, and marked excluded
        allowed = spawn_connect(target, comm="ocibpf-allow")
        events = collect(probe, lambda evs: {allowed, both} <= {e.tgid for e in evs})
    marks = {e.tgid: e.excluded for e in events}
    assert marks[allowed] is False and marks[both] is True
    assert other not in marks


@bpf
def test_abstract_sockets() -> None:
    tag = f"ocibpf-{uuid.uuid4().hex[:8]}"
    with ConnectProbe(unix_paths=[f"@{tag}-exact", f"@{tag}-pre*"]) as probe:
        connect_unix(f"@{tag}-exactly")
        connect_unix(f"@{tag}-exact")
        connect_unix(f"@{tag}-prefix.1")
        connect_unix(f"/{tag}-exact")  # a path, not the abstract name
        events = collect(probe, with_address(f"@{tag}-prefix.1"))
        # sizeof(struct sockaddr_un), NUL padded, as many C programs pass it
        with socket.socket(socket.AF_UNIX) as s, contextlib.suppress(OSError):
            s.connect(f"\0{tag}-pre-padded".ljust(108, "\0"))
        events += collect(probe, with_address(f"@{tag}-pre-padded"))
    seen = [e.address for e in events if e.tgid == os.getpid()]
    assert seen == [f"@{tag}-exact", f"@{tag}-prefix.1", f"@{tag}-pre-padded"]


@bpf
def test_perf_buffer_fallback(sock_dir: Path) -> None:
    target = sock_dir / "p.sock"
    with ConnectProbe(unix_paths=[str(target)], delivery="perf") as probe:
        assert probe.delivery == "perf"
        for _ in range(3):
            connect_unix(target)
        events = collect(probe, lambda evs: len(evs) >= 3)
        assert probe.lost == 0
    assert [e.address for e in events if e.tgid == os.getpid()] == [str(target)] * 3


@bpf
def test_a_full_ring_buffer_is_counted_as_lost(sock_dir: Path) -> None:
    target = sock_dir / "l.sock"
    with ConnectProbe(unix_paths=[str(target)], ring_pages=1) as probe:
        for _ in range(500):  # 4 KiB holds about 24 events; nothing drains meanwhile
            connect_unix(target)
        delivered = len(collect(probe, lambda evs: False, timeout=0.2))
        assert probe.lost > 0
        assert delivered + probe.lost == probe.matched >= 500


def run_storm(
    probe: ConnectProbe, storm: Path, *args: str
) -> tuple[subprocess.CompletedProcess[str], list[ConnectEvent], int]:
    """Runs connect_storm while draining the probe; returns its result, events and PID."""
    proc = subprocess.Popen([str(storm), *args], stdout=subprocess.PIPE, text=True)
    events: list[ConnectEvent] = []
    while proc.poll() is None:
        events.extend(probe.poll(5))
    events.extend(collect(probe, lambda evs: False, timeout=0.1))
    out = proc.stdout.read() if proc.stdout else ""
    assert proc.returncode == 0
    return subprocess.CompletedProcess(proc.args, 0, out), events, proc.pid


@bpf
def test_storm_of_unrelated_unix_connects_loses_no_matching_event(
    sock_dir: Path, connect_storm: Path
) -> None:
    target = str(sock_dir / "ctrd.sock")
    with ConnectProbe(unix_paths=[target, *DEFAULT_SOCKETS]) as probe:
        result, events, pid = run_storm(
            probe, connect_storm, "unix", str(sock_dir / "noise.sock"), target, "1000000", "100"
        )
        assert probe.lost == 0
    assert "matching=10000 " in result.stdout
    mine = [e for e in events if e.tgid == pid]
    assert len(mine) == 10_000
    assert {e.address for e in mine} == {target}


@bpf
def test_storm_of_unrelated_udp_connects_loses_no_matching_event(connect_storm: Path) -> None:
    port = 40000 + os.getpid() % 20000
    with ConnectProbe(families=("inet",), ports=[port]) as probe:
        result, events, pid = run_storm(
            probe, connect_storm, "inet", str(port + 1), str(port), "1000000", "1000"
        )
        assert probe.lost == 0
    assert "matching=1000 " in result.stdout
    assert len([e for e in events if e.tgid == pid and e.port == port]) == 1000


@bpf
def test_missing_or_broken_source_is_tracer_unavailable(tmp_path: Path) -> None:
    with pytest.raises(TracerUnavailable, match="not found"):
        ConnectProbe(bpf_dir=tmp_path).start()
    (tmp_path / "connect.bpf.c").write_text("this is not C;\n")
    probe = ConnectProbe(bpf_dir=tmp_path)
    with pytest.raises(TracerUnavailable, match="cannot compile or load"):
        probe.start()
    with pytest.raises(RuntimeError, match="not started"):
        probe.poll(0)
