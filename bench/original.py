"""Side by side with the original GKE containerd socket tracer, on one real containerd.

    sudo .venv/bin/python bench/original.py [--rounds N] [--events N] [--burst N] [--gap S]

The original (GoogleCloudPlatform/k8s-node-tools, ``containerd/socket-tracer``) is a bpftrace
program whose lines a shell loop turns into pod names, one event at a time, with a new CRI
client process per step (``crictl inspect`` over the running containers, matching the caller's
PID to a container's init PID, then the parent's, up to PID 1). It is rebuilt here from its
method, not its code: ``bench/gke-socket-tracer.bt`` (the same tracepoint and filter) piped
into ``bench/gke-socket-tracer.sh`` (the same loop; containerd's ``ctr`` is the per-step client,
this machine has no crictl). Ours is ``ociresolve trace connect`` on the same containerd.

One private containerd (the test harness, ``tests/harness``; 1.7 by default) runs three pods
whose containers reach the socket through a bind mount, and one workload for both sides:

* per-call clients: the container's main process (a shell) starts a client that connects,
  writes one request and exits at once, or holds the connection 1 s first;
* exec'd clients: the same client started by CRI ``ExecSync`` in a running container
  (``kubectl exec``), exiting at once or after 1 s;
* a long-lived client: a new container whose main process connects and holds on;
* a burst: ``--burst`` per-call clients one after the other, as fast as a shell starts them.

Phases alternate (original, ours, ours, original, ...). In each, one side runs alone, in a
cgroup of its own; it idles ``--idle`` s, then the workload fires ``--events`` clients of each
of the first four kinds ``--gap`` s apart (and one new long-lived container), then the burst.
Each client logs ``connected`` to its container's log, which containerd timestamps: that is
the connect time. Reported per side, medians over phases or over clients:

* CPU: the cgroup's ``usage_usec`` (every process of the side, the exited ones too: bpftrace,
  the shell, each ``ctr``, ``ps``, ``date``; or the one Python process) while idle, over the
  paced clients (all of it, divided by the events the side handled: the connects its filter
  let through, the workload's or not), and over the burst above its idle;
* the share of each kind's clients named correctly (the line names the client's pod and
  container) and the time from the connect to that line.

Needs root, the harness's requirements, BCC (ours) and Debian's bpftrace (the original);
without them it says why and stops (with status 1 under ``OCIRESOLVE_REQUIRE_E2E=1``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import json
import os
import re
import resource
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Literal

import grpc

from ociresolve.cri import api_pb2, api_pb2_grpc

if TYPE_CHECKING:  # the harness is importable once tests/ is on the path (main)
    from harness import Containerd, TracerProcess

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
PROGRAM = HERE / "gke-socket-tracer.bt"
PIPELINE = HERE / "gke-socket-tracer.sh"

SOCKET_IN_POD = "/run/containerd/containerd.sock"  # the socket's directory, bind-mounted
TRIGGERS_IN_POD = "/trigger"
NAMESPACE = "bench-original"
OPENED = "containerd socket connection opened"  # the message of a named line, on both sides
READY_COMM = "bench-ready"  # the original's readiness probe, a host process
START_TIMEOUT = 60.0
CRI_TIMEOUT = 30.0
# containerd timestamps a log line when it reads it, a little after the connect: a line may
# seem to come up to this much before its client's connect.
LOG_SLACK = 0.1

How = Literal["child", "exec", "container", "burst"]
Key = tuple[str, str, str]  # pod namespace, pod name, container name


@dataclasses.dataclass(frozen=True)
class Kind:
    """One kind of client: where it runs, how it is started, how long it keeps the socket."""

    label: str
    pod: str
    container: str  # for "container", a prefix: one new container per phase
    how: How
    hold: int  # seconds between the connect and the exit


KINDS = (
    Kind("per-call, exits at once", "percall", "quick", "child", 0),
    Kind("per-call, holds 1 s", "percall", "slow", "child", 1),
    Kind("exec'd, exits at once", "exec", "quick", "exec", 0),
    Kind("exec'd, holds 1 s", "exec", "slow", "exec", 1),
    Kind("long-lived container", "agent", "holder", "container", 3600),
)
PACED = tuple(k for k in KINDS if k.how in ("child", "exec"))
LONG_LIVED = KINDS[-1]
BURST = Kind("burst of per-call clients, exit at once", "percall", "burst", "burst", 0)


@dataclasses.dataclass(frozen=True)
class Line:
    at: float  # wall clock when the benchmark read it
    text: str


@dataclasses.dataclass(frozen=True)
class Named:
    """A line naming a pod and container."""

    at: float
    key: Key


@dataclasses.dataclass(frozen=True)
class Connect:
    kind: Kind
    key: Key
    at: float  # containerd's timestamp of the client's "connected" log line


# -- CPU of a process tree ---------------------------------------------------------------------


class CpuCgroup:
    """A cgroup v2 directory of our own: its ``cpu.stat`` counts every process that ran in it,
    the exited ones too, which a parent's ``/proc/<pid>/stat`` counts only once reaped."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir(parents=True)

    def command(self, argv: Sequence[str]) -> list[str]:
        """``argv`` started inside the cgroup, so that every process it forks is counted."""
        join = 'echo $$ > "$0" && exec "$@"'
        return ["sh", "-c", join, str(self.path / "cgroup.procs"), *argv]

    def cpu_seconds(self) -> float:
        for line in (self.path / "cpu.stat").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "usage_usec":
                return int(value) / 1e6
        raise RuntimeError(f"no usage_usec in {self.path / 'cpu.stat'}")


# -- the two sides -----------------------------------------------------------------------------


class Side:
    """A tracer under test: started and stopped once per phase, its lines timestamped as read."""

    name: str
    # Quiet seconds that show the side is done once it has printed its last event line.
    trailing = 0.0

    def __init__(self, cgroup: CpuCgroup) -> None:
        self.cgroup = cgroup
        self.lines: list[Line] = []
        self._lock = threading.Lock()

    def _read(self, line: str) -> None:
        with self._lock:
            self.lines.append(Line(time.time(), line))

    def between(self, start: float, end: float) -> list[Line]:
        with self._lock:
            return [line for line in self.lines if start <= line.at <= end]

    def last_line_at(self) -> float:
        with self._lock:
            return self.lines[-1].at if self.lines else 0.0

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def seen(self, lines: Sequence[Line]) -> int:
        """The events among ``lines``: connects the side's filter let through."""
        raise NotImplementedError

    def named(self, lines: Sequence[Line]) -> list[Named]:
        raise NotImplementedError


# The original writes the caller's command name unescaped, last: the fields are read in their
# order, so that a name holding 'pod="..."' cannot stand in for them.
_ORIGINAL_LINE = re.compile(
    r'^time="[^"]*" msg="containerd socket connection opened" node="[^"]*" '
    r'pod="([^"/]*)/([^"]*)" container="([^"]*)" comm='
)


class Original(Side):
    """``gke-socket-tracer.sh``: bpftrace piped into the lookup loop, as a process group."""

    name = "original"
    trailing = 1.0  # the lookup of the last event, after its "event" line (20-100 ms)

    def __init__(self, cgroup: CpuCgroup, ctr: str, socket: Path, ready: Path, log: Path) -> None:
        super().__init__(cgroup)
        node = os.uname().nodename
        self.argv = ["sh", str(PIPELINE), str(PROGRAM), ctr, str(socket), node]
        self.ready = ready  # a unixconnect copy named READY_COMM
        self.log = log  # bpftrace's stderr
        self._process: subprocess.Popen[str] | None = None
        self._stderr: IO[str] | None = None
        self._reader: threading.Thread | None = None

    def start(self) -> None:
        self._stderr = self.log.open("a")
        self._process = subprocess.Popen(
            self.cgroup.command(self.argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            start_new_session=True,  # its own process group: stopped as one
        )
        self._reader = threading.Thread(target=self._pump, name="original-stdout", daemon=True)
        self._reader.start()
        # bpftrace prints its header before it attaches: attached once a connect of ours to a
        # "containerd.sock" path (there is none: it fails) comes out as an event.
        target = str(self.ready.parent / "ready" / "containerd.sock")
        deadline = time.monotonic() + START_TIMEOUT
        since = time.time()
        while not any(f"comm={READY_COMM}" in x.text for x in self.between(since, time.time())):
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the original tracer did not start; see {self.log}")
            subprocess.run([str(self.ready), target], capture_output=True, check=False)
            time.sleep(0.3)

    def _pump(self) -> None:
        process = self._process
        assert process is not None and process.stdout is not None
        for raw in process.stdout:
            self._read(raw.rstrip("\n"))

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        if self._reader is not None:
            self._reader.join(10)
        if self._stderr is not None:
            self._stderr.close()

    def seen(self, lines: Sequence[Line]) -> int:
        return sum(1 for x in lines if x.text.startswith("event "))

    def named(self, lines: Sequence[Line]) -> list[Named]:
        found = []
        for x in lines:
            match = _ORIGINAL_LINE.match(x.text)
            if match:
                found.append(Named(x.at, (match[1], match[2], match[3])))
        return found


class Ours(Side):
    """``ociresolve trace connect`` on the same containerd, as the harness runs it."""

    name = "ociresolve"

    def __init__(self, cgroup: CpuCgroup, args: list[str]) -> None:
        super().__init__(cgroup)
        self.args = args
        self._process: TracerProcess | None = None

    def start(self) -> None:
        from harness import TracerProcess

        process = TracerProcess(
            self.args, on_line=self._read, enter=lambda argv, _cwd: self.cgroup.command(argv)
        )
        process.start(timeout=START_TIMEOUT)
        self._process = process

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            process.stop()

    def seen(self, lines: Sequence[Line]) -> int:
        return sum(1 for row in _json_rows(lines) if row.get("msg") == OPENED)

    def named(self, lines: Sequence[Line]) -> list[Named]:
        found = []
        for x in lines:
            row = _json_row(x.text)
            if row is None or row.get("msg") != OPENED or not row.get("pod_name"):
                continue
            key = (str(row.get("pod_namespace")), str(row["pod_name"]), str(row.get("container")))
            found.append(Named(x.at, key))
        return found


def _json_row(text: str) -> dict[str, object] | None:
    try:
        row = json.loads(text)
    except ValueError:
        return None
    return row if isinstance(row, dict) else None


def _json_rows(lines: Sequence[Line]) -> Iterator[dict[str, object]]:
    for x in lines:
        row = _json_row(x.text)
        if row is not None:
            yield row


# -- the workload ------------------------------------------------------------------------------


class Workload:
    """The pods, and how each kind of client is started in them."""

    def __init__(self, ctrd: Containerd, base: Path) -> None:
        from harness import UNIXCONNECT, ContainerSpec, Mount, SecurityContext

        self.cri = ctrd.cri()
        self.triggers = base / "triggers"
        self.triggers.mkdir()
        self.mounts = [ctrd.socket_mount(str(Path(SOCKET_IN_POD).parent))]
        # Its own PID namespace: /proc/1 is the container's main process, whose stdout is the
        # container's log, where an exec'd client writes its "connected" line.
        self.security = SecurityContext()
        self.client = [UNIXCONNECT, SOCKET_IN_POD]
        client = " ".join(self.client)
        # The main process of a per-call container: a shell that starts one client (a burst:
        # N clients) per line it reads from its fifo, and waits for each, as a script would.
        loops = {
            "child": "if read -r go < {fifo}; then {client} ping {hold}; fi",
            "burst": 'if read -r n < {fifo}; then i=0; while [ "$i" -lt "$n" ]; do '
            "{client} ping 0; i=$((i + 1)); done; fi",
        }
        children = []
        for kind in (k for k in (*KINDS, BURST) if k.how in loops):
            os.mkfifo(self.triggers / kind.container, 0o600)
            fifo = f"{TRIGGERS_IN_POD}/{kind.container}"
            step = loops[kind.how].format(fifo=fifo, client=client, hold=kind.hold)
            mounts = [*self.mounts, Mount(str(self.triggers), TRIGGERS_IN_POD)]
            command = ["sh", "-c", f"while :; do {step}; done"]
            children.append(
                ContainerSpec(kind.container, command, mounts=mounts, security=self.security)
            )
        execs = [
            ContainerSpec(
                k.container, ["sleep", "3600"], mounts=self.mounts, security=self.security
            )
            for k in KINDS
            if k.how == "exec"
        ]
        self.pods = {
            "percall": self.cri.start_pod("percall", children, namespace=NAMESPACE),
            "exec": self.cri.start_pod("exec", execs, namespace=NAMESPACE),
            "agent": self.cri.start_pod("agent", [], namespace=NAMESPACE),
        }
        self._channel = grpc.insecure_channel(f"unix://{ctrd.socket}")
        stub = api_pb2_grpc.RuntimeServiceStub(self._channel)
        stub.Version(api_pb2.VersionRequest(version="v1"), timeout=CRI_TIMEOUT)  # connected now
        from harness.execsync import ExecSync

        self._exec = ExecSync(self._channel, int(CRI_TIMEOUT))
        self._pending: list[grpc.Future[bytes]] = []

    def close(self) -> None:
        self._channel.close()

    def fire(self, kind: Kind, phase: int, count: int = 1) -> str | None:
        """Start a client of ``kind`` (a burst: ``count``); the name of its container, or None
        when it could not be started (the connects read from the logs then show fewer)."""
        if kind.how in ("child", "burst"):
            if _trigger(self.triggers / kind.container, f"{count}\n"):
                return kind.container
            print(f"  a {kind.label} client could not be started: its shell never read")
            return None
        if kind.how == "exec":
            client = f"exec {' '.join(self.client)} ping {kind.hold} > /proc/1/fd/1"
            container_id = self.pods[kind.pod].container_id(kind.container)
            self._pending.append(self._exec.future(container_id, ["sh", "-c", client]))
            return kind.container
        name = f"{kind.container}-{phase}"
        command = [*self.client, "", str(kind.hold)]
        container_id = self.cri.create_container(
            self.pods[kind.pod].sandbox_id,
            name,
            command=command,
            mounts=self.mounts,
            security=self.security,
        )
        self.cri.start_container(container_id)
        return name

    def settle(self) -> None:
        """Wait for the exec'd clients; each must have exited 0."""
        pending, self._pending = self._pending, []
        for future in pending:
            exit_code = self._exec.exit_code(future.result())
            if exit_code != 0:
                raise RuntimeError(f"an exec'd client exited with {exit_code}")

    def connects(self, fired: set[tuple[Kind, str]], start: float, end: float) -> list[Connect]:
        """The clients' connects between ``start`` and ``end``, from their containers' logs."""
        found = []
        for kind, container in fired:
            log = self.pods[kind.pod].log_directory / container / "0.log"
            for at, text in _log_lines(log):
                if start <= at <= end and text.startswith("connected pid="):
                    found.append(Connect(kind, (NAMESPACE, kind.pod, container), at))
        return sorted(found, key=lambda c: c.at)


def _trigger(fifo: Path, line: str, timeout: float = 5.0) -> bool:
    """``line`` into the fifo a container's shell reads, once the shell waits on it; False if
    it never did."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as e:
            if e.errno != errno.ENXIO:
                raise
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)  # no reader: the shell is still busy with its last client
            continue
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)
        return True


_LOG_LINE = re.compile(r"^(\S+) (?:stdout|stderr) [FP] (.*)$")
_STAMP = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)")


def _log_lines(path: Path) -> Iterator[tuple[float, str]]:
    """(time, text) of each line of a CRI container log."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return
    for raw in text.splitlines():
        line = _LOG_LINE.match(raw)
        stamp = _STAMP.fullmatch(line[1]) if line else None
        if line is None or stamp is None:
            continue
        zone = "+00:00" if stamp[3] == "Z" else stamp[3]
        seconds = datetime.fromisoformat(stamp[1] + zone).timestamp()
        yield seconds + float("0." + (stamp[2] or "0")), line[2]


# -- one phase ---------------------------------------------------------------------------------


@dataclasses.dataclass
class Window:
    """One stretch of a phase: what the side spent and named in it."""

    cpu: float  # CPU seconds of the side's whole process tree
    seconds: float
    seen: int  # events the side handled
    connects: list[Connect]
    latency: dict[Connect, float]  # the named ones: seconds from the connect to the line
    wrong: int  # lines naming a pod or container that made no connect then
    span: float  # from the first connect to the side's last line


@dataclasses.dataclass
class Phase:
    side: str
    idle: float  # CPU seconds per second, the side running, no client
    paced: Window
    burst: Window


def run_phase(side: Side, workload: Workload, number: int, args: argparse.Namespace) -> Phase:
    """Start the side, measure it idle, run the workload once, stop the side."""
    side.start()
    try:
        time.sleep(0.5)  # its start-up done (the original's readiness probe looked up)
        cpu0, idle0 = side.cgroup.cpu_seconds(), time.monotonic()
        time.sleep(args.idle)
        idle = (side.cgroup.cpu_seconds() - cpu0) / (time.monotonic() - idle0)

        def paced() -> set[tuple[Kind, str]]:
            fired = set()
            for kind in (LONG_LIVED, *(k for _ in range(args.events) for k in PACED)):
                container = workload.fire(kind, number)
                if container is not None:
                    fired.add((kind, container))
                time.sleep(args.gap)
            workload.settle()
            return fired

        def burst() -> set[tuple[Kind, str]]:
            container = workload.fire(BURST, number, args.burst)
            return {(BURST, container)} if container is not None else set()

        def paced_done(start: float) -> None:
            _wait_quiet(side, args.quiet, at_least=2.0, at_most=60.0)

        def burst_done(start: float) -> None:
            _wait_handled(side, start, args.burst, at_most=60.0)

        windows = [
            _window(side, workload, paced, paced_done, latest=True),
            _window(side, workload, burst, burst_done, latest=False),
        ]
    finally:
        side.stop()
    return Phase(side.name, idle, *windows)


def _window(
    side: Side,
    workload: Workload,
    run: Callable[[], set[tuple[Kind, str]]],
    done: Callable[[float], None],
    *,
    latest: bool,
) -> Window:
    cpu0, start = side.cgroup.cpu_seconds(), time.time()
    fired = run()
    done(start)
    cpu1, end = side.cgroup.cpu_seconds(), time.time()
    lines = side.between(start, end)
    connects = workload.connects(fired, start - LOG_SLACK, end)
    latency, wrong = attribute(connects, side.named(lines), latest=latest)
    span = lines[-1].at - connects[0].at if lines and connects else float("nan")
    return Window(cpu1 - cpu0, end - start, side.seen(lines), connects, latency, wrong, span)


def _wait_quiet(side: Side, quiet: float, at_least: float, at_most: float) -> None:
    """Until the side has written nothing for ``quiet`` s (its lookups are done)."""
    begun = time.monotonic()
    time.sleep(at_least)
    while time.monotonic() - begun < at_most:
        if time.time() - side.last_line_at() >= quiet:
            return
        time.sleep(0.1)


def _wait_handled(side: Side, start: float, events: int, at_most: float) -> None:
    """Until the side has handled ``events`` events since ``start`` and its trailing work
    is done: the window is no longer than the work, so that the idle CPU in it is small."""
    deadline = time.monotonic() + at_most
    while side.seen(side.between(start, time.time())) < events:
        if time.monotonic() > deadline:
            return
        time.sleep(0.005)
    if side.trailing:
        _wait_quiet(side, side.trailing, at_least=0.0, at_most=deadline - time.monotonic())


def attribute(
    connects: Sequence[Connect], named: Sequence[Named], *, latest: bool
) -> tuple[dict[Connect, float], int]:
    """Each named line to a connect of its pod and container before it, not yet named: the
    latest one when clients are seconds apart (far more than either side's delay: a client
    the side could not name is then skipped, not blamed on the next line), the earliest one
    in a burst (both sides name events in order). A line no connect explains is wrong."""
    latency: dict[Connect, float] = {}
    wrong = 0
    for line in sorted(named, key=lambda n: n.at):
        candidates = [
            c
            for c in connects
            if c.key == line.key and c.at <= line.at + LOG_SLACK and c not in latency
        ]
        if not candidates:
            wrong += 1
            continue
        chosen = max(candidates, key=lambda c: c.at) if latest else candidates[0]
        latency[chosen] = line.at - chosen.at
    return latency, wrong


# -- the report --------------------------------------------------------------------------------


def report(phases: Sequence[Phase], sides: Sequence[str]) -> None:
    """The table of docs/benchmarks.md: one column per side."""
    columns = [[p for p in phases if p.side == side] for side in sides]

    def median_ms(values: Sequence[float]) -> str:
        return _ms(statistics.median(values)) if values else "-"

    def above_idle(p: Phase) -> float:
        return (p.burst.cpu - p.idle * p.burst.seconds) / p.burst.seen

    def named(kind: Kind, ps: Sequence[Phase]) -> str:
        windows = [p.burst if kind is BURST else p.paced for p in ps]
        made = sum(1 for w in windows for c in w.connects if c.kind == kind)
        delays = [d for w in windows for c, d in w.latency.items() if c.kind == kind]
        share = f"{len(delays)}/{made} ({100 * len(delays) / made:.0f}%)" if made else "0/0"
        return f"{share}, {median_ms(delays)}" if delays else share

    rows = [
        ("CPU while idle, per second", [median_ms([p.idle for p in ps]) for ps in columns]),
        (
            "CPU per event, paced clients: all of it / events handled",
            [median_ms([p.paced.cpu / p.paced.seen for p in ps if p.paced.seen]) for ps in columns],
        ),
        (
            "CPU per event, a burst: above idle / events handled",
            [median_ms([above_idle(p) for p in ps if p.burst.seen]) for ps in columns],
        ),
        (
            "events handled / clients started",
            [
                f"{sum(p.paced.seen + p.burst.seen for p in ps)} / "
                f"{sum(len(p.paced.connects) + len(p.burst.connects) for p in ps)}"
                for ps in columns
            ],
        ),
        *(
            (f"{k.label}: named, time to the line", [named(k, ps) for ps in columns])
            for k in (*KINDS, BURST)
        ),
        (
            "a burst: from its first connect to the side's last line",
            [median_ms([p.burst.span for p in ps if p.burst.connects]) for ps in columns],
        ),
        (
            "lines naming a wrong pod or container",
            [str(sum(p.paced.wrong + p.burst.wrong for p in ps)) for ps in columns],
        ),
    ]
    print("| | " + " | ".join(sides) + " |")
    print("|---" * (len(sides) + 1) + "|")
    for label, cells in rows:
        print(f"| {label} | " + " | ".join(cells) + " |")


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms" if abs(seconds) >= 0.01 else f"{seconds * 1e3:.2f} ms"


def calibrate(ctr: str, socket: Path, container_id: str, pid: int, empty: Path, runs: int) -> None:
    """CPU of one per-step client process: why ``ctr`` stands in for crictl (both Go gRPC
    clients), not a Python one."""
    address = ["--address", str(socket), "-n", "k8s.io"]
    lookup = ["lookup", str(pid), "--runtime-root", str(empty), "--cri-socket", str(socket)]
    commands = {
        "ctr tasks ls (every step)": [ctr, *address, "tasks", "ls"],
        "ctr containers info (a hit)": [ctr, *address, "containers", "info", container_id],
        "a Python CRI client (ociresolve lookup, CRI mode)": [
            sys.executable,
            "-m",
            "ociresolve",
            *lookup,
            "--json",
        ],
    }
    print(f"\none per-step lookup process, CPU (median of {runs}):")
    for name, argv in commands.items():
        cpus = []
        for _ in range(runs):
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            subprocess.run(argv, capture_output=True, check=True, cwd=ROOT)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpus.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
        print(f"  {name:<52} {_ms(statistics.median(cpus))}")


# -- main --------------------------------------------------------------------------------------


def missing(generation_id: str) -> str | None:
    """Why this machine cannot run the benchmark, or None."""
    from harness import bpf_requirements, requirements
    from harness.cgroups import cgroup_mounts
    from harness.generations import by_id
    from harness.requirements import generation_requirements

    reason = requirements() or bpf_requirements()
    if reason is not None:
        return reason
    for tool in ("bpftrace", "ps", "tr", "date"):
        if shutil.which(tool) is None:
            return f"no {tool} (apt-get install bpftrace procps coreutils)"
    if not any(m.version == 2 for m in cgroup_mounts()):
        return "no cgroup v2 hierarchy (each side's CPU is read from one)"
    return generation_requirements(by_id(generation_id)[0])


def bench(base: Path, args: argparse.Namespace) -> None:
    from harness import Containerd, build_images
    from harness.cgroups import cgroup_mounts, remove_subtree
    from harness.generations import by_id
    from harness.image import build_unixconnect

    cgroup2 = next(m.path for m in cgroup_mounts() if m.version == 2)
    group = f"ociresolve-bench-{secrets.token_hex(4)}"
    ready = build_unixconnect(base / READY_COMM)
    empty = base / "no-runtime-here"
    empty.mkdir()
    try:
        with Containerd(base / "ctrd", generation=by_id(args.containerd)[0]) as ctrd:
            ctrd.import_images(build_images(base / "images"))
            print(f"containerd {ctrd.version}, bpftrace {_version(['bpftrace', '--version'])}")
            workload = Workload(ctrd, base)
            try:
                original = Original(
                    CpuCgroup(cgroup2 / group / "original"),
                    ctrd.ctr,
                    ctrd.socket,
                    ready,
                    base / "original.stderr",
                )
                ours = Ours(
                    CpuCgroup(cgroup2 / group / "ours"),
                    [
                        *("--socket", str(ctrd.socket), "--socket", SOCKET_IN_POD),
                        *("--runtime-root", str(ctrd.state_dir)),
                        *("--cri-socket", str(ctrd.socket)),
                        *("--output", "json", "--summary-interval", "0"),
                    ],
                )
                phases = run_phases((original, ours), workload, args)
                print()
                report(phases, [original.name, ours.name])
                container_id = workload.pods["percall"].container_id("quick")
                pid = ctrd.cri().container_pid(container_id)
                calibrate(ctrd.ctr, ctrd.socket, container_id, pid, empty, args.calibrate)
            finally:
                workload.close()
    finally:
        remove_subtree(f"/{group}")


def run_phases(sides: Sequence[Side], workload: Workload, args: argparse.Namespace) -> list[Phase]:
    """``args.rounds`` phases per side, in the order A B B A A B ..., so that a drift of the
    machine weighs on both."""
    phases: list[Phase] = []
    for round_ in range(args.rounds):
        for side in sides if round_ % 2 == 0 else reversed(sides):
            phase = run_phase(side, workload, len(phases) + 1, args)
            phases.append(phase)
            print(
                f"  phase {len(phases)} {side.name:<10} idle {_ms(phase.idle)}/s; paced: "
                f"{phase.paced.cpu:5.2f} s CPU in {phase.paced.seconds:4.1f} s, "
                f"{phase.paced.seen} events, {len(phase.paced.latency)}/"
                f"{len(phase.paced.connects)} named; burst: {phase.burst.cpu:5.2f} s CPU in "
                f"{phase.burst.seconds:4.1f} s, {phase.burst.seen} events, "
                f"{len(phase.burst.latency)}/{len(phase.burst.connects)} named"
            )
    return phases


def _version(argv: list[str]) -> str:
    out = subprocess.run(argv, capture_output=True, text=True, check=False).stdout.split()
    return out[-1] if out else "?"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="phases per side")
    parser.add_argument("--events", type=int, default=4, help="paced clients of each kind")
    parser.add_argument("--burst", type=int, default=200, help="per-call clients in the burst")
    parser.add_argument("--gap", type=float, default=1.0, help="seconds between paced clients")
    parser.add_argument("--idle", type=float, default=3.0, help="seconds each side idles first")
    parser.add_argument("--quiet", type=float, default=1.5, help="silent seconds: done")
    parser.add_argument("--calibrate", type=int, default=10, help="runs per lookup process")
    parser.add_argument("--containerd", default="1.7", help="containerd generation (harness id)")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "tests"))
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpus; medians")
    reason = missing(args.containerd)
    if reason is not None:
        print(f"skipped: {reason}")
        return 1 if os.environ.get("OCIRESOLVE_REQUIRE_E2E") == "1" else 0
    base = Path(tempfile.mkdtemp(prefix="ociresolve-bench-"))  # containerd: not on tmpfs
    try:
        bench(base, args)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
