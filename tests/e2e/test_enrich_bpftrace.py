"""The bpftrace example (``examples/bpftrace``) on the real containerd, every generation:
Debian's bpftrace running ``containerd-connect.bt``, piped into ``python -m ociresolve enrich``,
two processes and a pipe as a user runs them, where containerd runs (``Containerd.command``).

Two pipelines run side by side: one enrich resolves through a real ``ociresolve serve``
(``--daemon-socket``), the other indexes the node itself (``--no-daemon --runtime-root``). Each
must name, from the lines alone: a container that connects to the containerd socket and exits
at once; a process exec'd into a running container through CRI ``ExecSync`` (as ``kubectl
exec``); and give no pod to a host process, nor to a line a process forges with its name.

The machine may run other tests at the same time, so other lines come too: each caller here
runs under a command name of its own (a copy of ``unixconnect``), and is found by it.
"""

from __future__ import annotations

import os
import queue
import re
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
from harness import (
    Containerd,
    ContainerSpec,
    DaemonProcess,
    HarnessError,
    Mount,
    PodFactory,
    is_alive,
)
from harness.cgroups import cgroup_mounts
from harness.daemon_process import Enter
from harness.execsync import exec_sync
from harness.image import build_unixconnect

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
PROGRAM = ROOT / "examples" / "bpftrace" / "containerd-connect.bt"
REGEX = r"^(?P<pid>\d+) (?P<cgroup_id>\d+) "  # as examples/bpftrace/README.md has it
IN_CONTAINER = "/run/containerd/containerd.sock"  # the socket's directory, bind-mounted
TOOLS_IN_CONTAINER = "/connect"
ATTACH_TIMEOUT = 60.0  # bpftrace compiles and attaches in 1-3 s on busy cores
TIMEOUT = 10.0  # for one expected line; never reached when all is well
# A line of the program, as enrich writes it: "PID CGROUP_ID COMM", then the added fields.
LINE = re.compile(r"^(\d+) (\d+) (\S+)((?: k8s_[a-z_]+=\S+)*)$")
COUNTS = re.compile(r"^ociresolve enrich: (lines=.*)$", re.MULTILINE)
TRACEFS = (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))


def _require(reason: str | None) -> None:
    if reason is None:
        return
    if os.environ.get("OCIRESOLVE_REQUIRE_E2E") == "1":
        pytest.fail(f"e2e: {reason} (OCIRESOLVE_REQUIRE_E2E=1)", pytrace=False)
    pytest.skip(f"e2e: {reason}")


def bpftrace_requirements() -> str | None:
    """Why bpftrace cannot run the example here, or None (root is the e2e marker's check)."""
    if shutil.which("bpftrace") is None:
        return "no bpftrace (Debian's bpftrace package): run scripts/install-system as root"
    if not any((d / "events/syscalls/sys_enter_connect").is_dir() for d in TRACEFS):
        return "no syscalls:sys_enter_connect tracepoint in tracefs (CONFIG_FTRACE_SYSCALLS)"
    return None


def fields(line: str) -> dict[str, str]:
    """The fields enrich added to a line of the program."""
    match = LINE.match(line)
    assert match, f"not a line of the program: {line!r}"
    return dict(pair.split("=", 1) for pair in match[4].split())


def comm_is(name: str) -> Callable[[str], bool]:
    def matches(line: str) -> bool:
        match = LINE.match(line)
        return match is not None and match[3] == name

    return matches


class Pipeline:
    """``bpftrace -B line PROGRAM | python -m ociresolve enrich --regex REGEX ARGS``, each run
    by ``enter``; enrich's stdout read line by line as it comes.

    ``stop()`` sends SIGINT to bpftrace, as Ctrl-C does: it exits, enrich reads the end of its
    input and exits after its counts line (on stderr), which ``stop()`` returns.
    """

    def __init__(self, name: str, args: Sequence[str], enter: Enter, work: Path) -> None:
        self.name = name
        self.enter = enter
        self.bpftrace_argv = ["bpftrace", "-B", "line", str(PROGRAM)]
        self.enrich_argv = [sys.executable, "-m", "ociresolve", "enrich", "--regex", REGEX, *args]
        self.bpftrace_log = work / f"{name}-bpftrace.stderr"
        self.enrich_log = work / f"{name}-enrich.stderr"
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._processes: list[subprocess.Popen[bytes]] = []
        self._reader: threading.Thread | None = None

    def start(self) -> Pipeline:
        with self.bpftrace_log.open("wb") as log:
            bpftrace = subprocess.Popen(
                self.enter(self.bpftrace_argv, ROOT),
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
            )
        self._processes.append(bpftrace)
        assert bpftrace.stdout is not None
        with self.enrich_log.open("wb") as log:
            enrich = subprocess.Popen(
                self.enter(self.enrich_argv, ROOT),
                cwd=ROOT,
                stdin=bpftrace.stdout,
                stdout=subprocess.PIPE,
                stderr=log,
            )
        self._processes.append(enrich)
        bpftrace.stdout.close()  # enrich's now: it sees the end when bpftrace exits
        self._reader = threading.Thread(target=self._read, args=(enrich,), daemon=True)
        self._reader.start()
        return self

    def _read(self, enrich: subprocess.Popen[bytes]) -> None:
        assert enrich.stdout is not None
        for raw in enrich.stdout:
            line = raw.decode(errors="backslashreplace").rstrip("\n")
            self.lines.append(line)
            self._queue.put(line)
        enrich.stdout.close()
        self._queue.put(None)

    def next_line(self, predicate: Callable[[str], bool], timeout: float = TIMEOUT) -> str | None:
        """The next line matching ``predicate`` (lines before it are consumed); None when
        none came within ``timeout``."""
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                line = self._queue.get(timeout=remaining)
            except queue.Empty:
                break
            if line is None:
                self._queue.put(None)
                raise HarnessError(self.why("enrich's output ended"))
            if predicate(line):
                return line
        return None

    def wait_for(self, predicate: Callable[[str], bool], what: str) -> str:
        line = self.next_line(predicate)
        if line is None:
            raise HarnessError(self.why(f"no line for {what} within {TIMEOUT}s"))
        return line

    def stop(self) -> str:
        """SIGINT to bpftrace, then both must exit with 0; enrich's counts line."""
        bpftrace, enrich = self._processes
        self._processes = []
        if bpftrace.poll() is None:
            bpftrace.send_signal(signal.SIGINT)
        for process in (bpftrace, enrich):
            try:
                process.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._reader is not None:
            self._reader.join(TIMEOUT)
        for process, argv in ((bpftrace, self.bpftrace_argv), (enrich, self.enrich_argv)):
            if process.returncode != 0:
                raise HarnessError(self.why(f"{' '.join(argv)} exited with {process.returncode}"))
        counts = COUNTS.search(self.enrich_log.read_text())
        if counts is None:
            raise HarnessError(self.why("no counts line from enrich"))
        return counts[1]

    def hold(self, held: bool) -> None:
        """Stop bpftrace (SIGSTOP), its events waiting in the kernel's buffer, or let it go on."""
        os.kill(self._processes[0].pid, signal.SIGSTOP if held else signal.SIGCONT)

    def kill(self) -> None:
        for process in self._processes:
            if process.poll() is None:
                process.kill()
            process.wait()
        self._processes = []

    def why(self, what: str) -> str:
        logs = "\n".join(
            f"--- {path.name} ---\n{path.read_text(errors='replace')}"
            for path in (self.bpftrace_log, self.enrich_log)
        )
        tail = "\n".join(self.lines[-20:])
        return f"{self.name}: {what}\n--- enrich's stdout (tail) ---\n{tail}\n{logs}"


def wait_attached(pipelines: Sequence[Pipeline], ready: Path) -> None:
    """Until each pipeline shows a connect of ``ready`` (a host process) to a "containerd.sock"
    path (there is none: the connect fails): bpftrace prints its header before it attaches,
    and this line came through both processes."""
    target = str(ready.parent / "nothing-here" / "containerd.sock")
    waiting = list(pipelines)
    deadline = time.monotonic() + ATTACH_TIMEOUT
    while waiting:
        if time.monotonic() > deadline:
            raise HarnessError(waiting[0].why(f"not attached within {ATTACH_TIMEOUT}s"))
        subprocess.run([str(ready), target], capture_output=True, check=False, timeout=TIMEOUT)
        waiting = [p for p in waiting if p.next_line(comm_is(ready.name), timeout=0.3) is None]


def cgroup_id(pid: int) -> int:
    """The cgroup v2 id of a running process: its cgroup directory's inode, where the host
    mounts the v2 hierarchy."""
    v2 = next(m.path for m in cgroup_mounts() if m.version == 2)
    for entry in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        if entry.startswith("0::"):
            return (v2 / entry[3:].lstrip("/")).stat().st_ino
    raise AssertionError(f"process {pid} is in no cgroup v2")


# -- the test ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def callers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The unixconnect helper under command names no other test uses: the container's two
    callers in a directory of their own (mounted into the pods), the host's two beside it."""
    _require(bpftrace_requirements())
    work = tmp_path_factory.mktemp("callers")
    built = build_unixconnect(work / "unixconnect")
    (work / "pod").mkdir()
    tag = secrets.token_hex(2)
    names = {
        "client": work / "pod" / f"client-{tag}",
        "exec": work / "pod" / f"exec-{tag}",
        "host": work / f"host-{tag}",
        "ready": work / f"ready-{tag}",
    }
    for path in names.values():
        shutil.copy(built, path)
    return names


@pytest.fixture
def pipelines(
    containerd: Containerd, callers: dict[str, Path], socket_dir: Path, tmp_path: Path
) -> Iterator[list[Pipeline]]:
    """The two pipelines, attached; the daemon behind the first one."""
    daemon = DaemonProcess(
        socket_dir / "ociresolve.sock",
        ["--runtime-root", str(containerd.state_dir), "--cri-socket", str(containerd.socket)],
        enter=containerd.command,
    )
    ways = {
        "daemon": ["--daemon-socket", str(daemon.socket)],
        "own-index": [
            *("--no-daemon", "--runtime-root", str(containerd.state_dir)),
            *("--cri-socket", str(containerd.socket)),
        ],
    }
    with daemon:
        started = [Pipeline(n, a, containerd.command, tmp_path) for n, a in ways.items()]
        try:
            for pipeline in started:
                pipeline.start()
            wait_attached(started, callers["ready"])
            yield started
        finally:
            for pipeline in started:
                pipeline.kill()  # those the test did not stop


def test_bpftrace_piped_into_enrich_names_each_caller(
    containerd: Containerd,
    pod_factory: PodFactory,
    callers: dict[str, Path],
    pipelines: list[Pipeline],
) -> None:
    tools = Mount(str(callers["client"].parent), TOOLS_IN_CONTAINER, readonly=True)
    reach = [containerd.socket_mount("/run/containerd"), tools]
    in_pod = {name: f"{TOOLS_IN_CONTAINER}/{callers[name].name}" for name in ("client", "exec")}

    # (a) A container that connects and exits at once. bpftrace is held until then: the
    # client's PID is gone before its line is even printed.
    for pipeline in pipelines:
        pipeline.hold(True)
    client = pod_factory(
        "cri-client-7d4b9c",
        [ContainerSpec("client", [in_pod["client"], IN_CONTAINER], mounts=reach)],
        namespace="shop",
    )
    client_id = client.container_id("client")
    assert containerd.cri().wait_container_exit(client_id).exit_code == 0
    for pipeline in pipelines:
        pipeline.hold(False)
    client_lines = [p.wait_for(comm_is(callers["client"].name), "the client") for p in pipelines]

    # (b) kubectl exec: a process started later in a running container, through the CRI.
    operator = pod_factory(
        "operator-5d9f7",
        [ContainerSpec("manager", ["sleep", "3600"], mounts=reach)],
        namespace="ops",
    )
    manager_id = operator.container_id("manager")
    manager_pid = containerd.cri().container_pid(manager_id)
    assert exec_sync(containerd.socket, manager_id, [in_pod["exec"], IN_CONTAINER]) == 0
    exec_lines = [p.wait_for(comm_is(callers["exec"].name), "the exec") for p in pipelines]

    # (c) A host process, on the socket's host path.
    host = subprocess.run(
        [str(callers["host"]), str(containerd.socket)], capture_output=True, timeout=TIMEOUT
    )
    assert host.returncode == 0, host.stderr
    host_lines = [p.wait_for(comm_is(callers["host"].name), "the host process") for p in pipelines]

    # (d) A host process whose name holds a newline, to make a line of its own naming the
    # manager's cgroup: the program prints such a name escaped, on the process's own line.
    manager_cgroup = cgroup_id(manager_pid)
    forged = f"1 {manager_cgroup} "
    forger = subprocess.run(
        [sys.executable, "-c", FORGER, f"x\n{forged}", str(containerd.socket)],
        capture_output=True,
        timeout=TIMEOUT,
    )
    assert forger.returncode == 0, forger.stderr
    forger_pid = int(forger.stdout)
    forger_lines = [
        p.wait_for(lambda line: line.startswith(f"{forger_pid} "), "the forger") for p in pipelines
    ]

    counts = [p.stop() for p in pipelines]
    for pipeline in pipelines:  # shown with -s, or when an assertion below fails
        print(f"--- {pipeline.name}: bpftrace | enrich ---", *pipeline.lines, sep="\n")
        print(pipeline.enrich_log.read_text(), end="")

    for pipeline, line in zip(pipelines, client_lines, strict=True):
        assert fields(line) == {
            "k8s_namespace": "shop",
            "k8s_pod": "cri-client-7d4b9c",
            "k8s_container": "client",
            "k8s_container_id": client_id[:12],
        }, pipeline.name
        assert not is_alive(int(line.split()[0]))  # named by its cgroup id alone
    for pipeline, line in zip(pipelines, exec_lines, strict=True):
        assert fields(line) == {
            "k8s_namespace": "ops",
            "k8s_pod": "operator-5d9f7",
            "k8s_container": "manager",
            "k8s_container_id": manager_id[:12],
        }, pipeline.name
        pid, cgroup = (int(x) for x in line.split()[:2])
        assert pid != manager_pid and cgroup == manager_cgroup  # another process, same cgroup
    for pipeline, line in zip(pipelines, host_lines, strict=True):
        assert fields(line) == {}, pipeline.name
    for pipeline, line in zip(pipelines, forger_lines, strict=True):
        assert not any(x.startswith(forged) for x in pipeline.lines), pipeline.name
        assert "\\x0a" in line and "k8s_" not in line, pipeline.name
    # "Attaching 1 probe..." passes through as it is; of the lines, only (a) and (b) are pods'.
    for pipeline, count in zip(pipelines, counts, strict=True):
        assert pipeline.lines[0] == "Attaching 1 probe...", pipeline.name
        numbers = {k: int(v) for k, v in (pair.split("=") for pair in count.split())}
        assert numbers["lines"] == len(pipeline.lines), (pipeline.name, count)
        assert numbers["enriched"] == 2 and numbers["unresolved"] >= 3, (pipeline.name, count)
    assert "resolving through the daemon" in pipelines[0].enrich_log.read_text()
    assert "indexed the node here" in pipelines[1].enrich_log.read_text()


# Names itself argv[1] (PR_SET_NAME, 15 bytes at most), connects to argv[2], prints its pid.
FORGER = """
import ctypes, os, socket, sys
name = sys.argv[1].encode()
assert len(name) <= 15, name
ctypes.CDLL(None, use_errno=True).prctl(15, name, 0, 0, 0)
with socket.socket(socket.AF_UNIX) as s:
    s.connect(sys.argv[2])
print(os.getpid())
"""
