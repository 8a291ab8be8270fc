"""Benchmark of ``ociresolve enrich``, run as a user runs it, side by side with pipe floors.

    .venv/bin/python bench/enrich.py [--lines N] [--rounds N] [--samples N] [--batches N]
                                     [--no-daemon] [--only throughput|inproc|latency]

No root: a fake node on a tmpfs (the unit tests' ``FakeHost``): 100 containerd containers with
their cgroup v2 directories (a cgroup id is a directory's inode), 4,096 processes spread over
them and 200 host processes, each with its ``/proc/<pid>/cgroup``; ``ociresolve serve`` on it
for the daemon's rows. The event stream is made once per format from the same events (seeded):
80% of the lines carry the cgroup id of one of the containers (and a pid), 10% a host cgroup
id (and a host process's pid: read, as enrich reads a pid whose cgroup id names no container),
8% only a pid (3 in 4 a container's, the others the host's; a pid is read once per batch), and
2% are not events (``Attaching 1 probe...``). JSON lines (144 bytes on average), logfmt (121)
and text read with ``--regex '^(?P<pid>\\d+) (?P<cgroup_id>\\d+) '`` (bpftrace's printf, 0 for
no cgroup id: 86).

* ``throughput``: ``cat FILE | ociresolve enrich ... | this process`` until the end of the
  input: lines a second from the first byte written to the last one read (the command's start
  and its scan of the node are not counted), and the filter's CPU per line from then on (its
  exit included). Side by side, alternated, in one run: ``cat`` in enrich's place (the pipe's
  floor), a Python filter that reads 64 KiB, splits it into lines and writes them back with
  one write (the floor of a filter written in Python that reads and writes as enrich does), and
  for JSON enrich mirroring the daemon's index (``--daemon-socket``). Every run's line count,
  and enrich's counts line, are checked against the stream.
* ``inproc``: the cost per line of ``Enricher.batch`` in this process, on the stream's first
  lines in the batches a 64 KiB read gives, on a ``Resolver`` of the same fake node; next to
  its parts: the format's ``keys``, ``Lookup.fields`` and the format's ``add``, and a bare parse
  of the line (``msgspec`` decode; a split on spaces and ``=``; the regex's ``search``).
* ``latency``: one JSON line written, then read back, ``--samples`` times, alternated over
  ``cat``, the Python filter and enrich (its own index and the daemon's mirror; a line with a
  container's cgroup id, and a pid-only line, which costs a ``/proc`` read each time): median
  p90 and p99 round trips; enrich's added latency is the difference to ``cat``'s (median and
  p90: a shared VM stalls a wake-up by milliseconds now and then, whichever filter it is, which
  makes p99 the host's). This process runs on one CPU and the filters on another, so that each
  round trip wakes a filter across CPUs, as a pipeline does (unpinned, where the scheduler
  places each filter decides its median more than the filter does). Then the CPU part of the
  added latency: ``Enricher.batch`` of that one line, in this process.

Target (issue "enrich"): at least 100,000 lines/s per format on this machine kind; the added
latency per line measured.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec
from _timing import fmt, median_seconds

from ociresolve import Resolver
from ociresolve.enrich.formats import (
    Format,
    JsonFormat,
    Keys,
    LogfmtFormat,
    TextFormat,
    Unreadable,
)
from ociresolve.enrich.lookup import Lookup
from ociresolve.enrich.stream import READ_SIZE, Enricher

ROOT = Path(__file__).resolve().parents[1]
CONTAINERS = 100
PROCESSES = 4096
HOST_PROCESSES = 200
FIRST_PID = 100_000
FIRST_HOST_PID = 1_000
HOST_CGROUPS = (
    "system.slice/containerd.service",
    "system.slice/kubelet.service",
    "system.slice/systemd-journald.service",
    "system.slice/ssh.service",
    "user.slice/user-1000.slice/session-3.scope",
)
REGEX = r"^(?P<pid>\d+) (?P<cgroup_id>\d+) "
FORMATS = ("json", "logfmt", "text")
ARGS = {"json": [], "logfmt": ["--logfmt"], "text": ["--regex", REGEX]}
TARGET = 100_000
# A filter in Python with no work per line: enrich's reads, splits and writes.
PASSTHROUGH = """\
import os, sys
sys.stderr.write("ready\\n")
sys.stderr.flush()
pending = b""
while chunk := os.read(0, 65536):
    lines = (pending + chunk).split(b"\\n")
    pending = lines.pop()
    if lines:
        lines.append(b"")
        view = memoryview(b"\\n".join(lines))
        while view:
            view = view[os.write(1, view):]
if pending:
    os.write(1, pending)
"""


# -- the fake node and its events --------------------------------------------------------------


@dataclasses.dataclass
class Node:
    root: Path
    container_cgroups: list[int]
    host_cgroups: list[int]
    container_pids: list[int]
    host_pids: list[int]

    def args(self) -> list[str]:
        from fakehost import CONTAINERD_ROOT

        return ["--host-root", str(self.root), "--runtime-root", CONTAINERD_ROOT]


def make_node(root: Path) -> Node:
    from fakehost import (
        FakeHost,
        Pod,
        containerd_cgroup_file,
        containerd_spec,
        host_cgroup_file,
        new_id,
    )

    host = FakeHost(root)
    host.enable_cgroup2()
    host.make_roots()
    pods = [Pod.new(f"web-{n}", namespace=f"team-{n % 7}") for n in range(CONTAINERS)]
    ids = [new_id() for _ in pods]
    cgroups = []
    for container_id, pod in zip(ids, pods, strict=True):
        spec = containerd_spec(container_id, pod)
        cgroups.append(host.make_cgroup(spec["linux"]["cgroupsPath"]))
        host.write(host.containerd_bundle(container_id), spec)
    pids = [FIRST_PID + n for n in range(PROCESSES)]
    for n, pid in enumerate(pids):
        container = n % CONTAINERS
        host.set_proc_cgroup(pid, containerd_cgroup_file(ids[container], pods[container].uid))
    host_pids = [FIRST_HOST_PID + n for n in range(HOST_PROCESSES)]
    for pid in host_pids:
        host.set_proc_cgroup(pid, host_cgroup_file())
    host_cgroups = []
    for path in HOST_CGROUPS:
        directory = host.cgroup / path
        directory.mkdir(parents=True)
        host_cgroups.append(os.stat(directory).st_ino)
    return Node(root, cgroups, host_cgroups, pids, host_pids)


@dataclasses.dataclass(frozen=True)
class Event:
    pid: int
    cgroup_id: int  # 0: none on the line
    comm: str
    kind: str
    daddr: str
    dport: int
    latency_ns: int
    junk: bool = False


@dataclasses.dataclass
class Expected:
    lines: int = 0
    enriched: int = 0
    unresolved: int = 0
    passed: int = 0


COMMS = ("curl", "nginx", "python3", "java", "envoy", "node", "postgres", "redis-server")
KINDS = ("connect", "accept", "close", "sendmsg")
JUNK = "Attaching 1 probe..."


def make_events(node: Node, count: int) -> tuple[list[Event], Expected]:
    """The stream's events (seeded), and the counts enrich must report for them."""
    rng = random.Random(1)
    events = []
    expected = Expected(lines=count)
    for _ in range(count):
        draw = rng.random()
        pid = rng.choice(node.container_pids)
        cgroup_id = 0
        if draw < 0.80:
            cgroup_id = rng.choice(node.container_cgroups)
            expected.enriched += 1
        elif draw < 0.90:
            pid, cgroup_id = rng.choice(node.host_pids), rng.choice(node.host_cgroups)
            expected.unresolved += 1
        elif draw < 0.98:
            if rng.random() < 0.75:
                expected.enriched += 1
            else:
                pid = rng.choice(node.host_pids)
                expected.unresolved += 1
        else:
            events.append(Event(0, 0, "", "", "", 0, 0, junk=True))
            expected.passed += 1
            continue
        events.append(
            Event(
                pid=pid,
                cgroup_id=cgroup_id,
                comm=rng.choice(COMMS),
                kind=rng.choice(KINDS),
                daddr=f"10.{rng.randrange(96, 256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}",
                dport=rng.choice((53, 80, 443, 5432, 6379, 8080, 9090)),
                latency_ns=rng.randrange(1_000, 5_000_000),
            )
        )
    return events, expected


def render(event: Event, form: str, ts: float) -> str:
    if event.junk:
        return JUNK
    if form == "json":
        cgroup = f'"cgroup_id":{event.cgroup_id},' if event.cgroup_id else ""
        return (
            f'{{"ts":{ts:.6f},"pid":{event.pid},{cgroup}"comm":"{event.comm}",'
            f'"event":"{event.kind}","daddr":"{event.daddr}","dport":{event.dport},'
            f'"latency_ns":{event.latency_ns}}}'
        )
    if form == "logfmt":
        cgroup = f"cgroup_id={event.cgroup_id} " if event.cgroup_id else ""
        return (
            f"ts={ts:.6f} pid={event.pid} {cgroup}comm={event.comm} event={event.kind} "
            f"daddr={event.daddr} dport={event.dport} latency_ns={event.latency_ns}"
        )
    return (  # bpftrace's printf: the numbers first, 0 for no cgroup id
        f"{event.pid} {event.cgroup_id} {event.comm} {event.kind} {event.daddr}:{event.dport} "
        f"latency_ns={event.latency_ns} ts={ts:.6f}"
    )


def write_stream(events: list[Event], form: str, path: Path) -> int:
    ts = 1_718_031_234.0
    with path.open("w") as out:
        for n, event in enumerate(events):
            out.write(render(event, form, ts + n * 1e-5) + "\n")
    return path.stat().st_size


# -- processes ---------------------------------------------------------------------------------


def enrich_command(form: str, node: Node, daemon: str | None = None) -> list[str]:
    if daemon is None:
        where = ["--no-daemon", "--no-cri", *node.args()]
    else:
        where = ["--daemon-socket", daemon, "--host-root", str(node.root)]
    return [sys.executable, "-m", "ociresolve", "enrich", *ARGS[form], *where]


def python_floor_command() -> list[str]:
    return [sys.executable, "-c", PASSTHROUGH]


def _cpu_seconds(pid: int) -> float:
    """CPU time of the process's live threads (``schedstat``, in ns)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue  # the thread ended meanwhile
    return total / 1e9


@dataclasses.dataclass
class Run:
    seconds: float
    cpu: float  # the filter's CPU from the first byte on (its exit included)
    lines: int


def pipe_through(command: list[str], data: Path, ready: bool) -> tuple[Run, str]:
    """``cat data | command | this process``: timed from ``cat``'s start (after ``command``
    said it is ready on stderr, when ``ready``) to the end of ``command``'s output; and what
    ``command`` wrote on stderr."""
    read_end, write_end = os.pipe()
    process = subprocess.Popen(
        command, stdin=read_end, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT
    )
    os.close(read_end)
    assert process.stdout is not None and process.stderr is not None
    said = process.stderr.readline().decode() if ready else ""
    cpu = _cpu_seconds(process.pid)
    started = time.perf_counter()
    feeder = subprocess.Popen(["cat", str(data)], stdout=write_end)
    os.close(write_end)
    out = process.stdout.fileno()
    lines = 0
    while chunk := os.read(out, 1 << 20):
        lines += chunk.count(b"\n")
    elapsed = time.perf_counter() - started
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    said += process.stderr.read().decode()
    process.stdout.close()
    process.stderr.close()
    feeder.wait()
    if process.returncode != 0:
        raise RuntimeError(f"{command[:4]} exited with {process.returncode}: {said}")
    used = usage.ru_utime + usage.ru_stime - cpu
    return Run(elapsed, used, lines), said


_COUNT = re.compile(r"(\w+)=(\d+)")


def check_counts(said: str, expected: Expected) -> None:
    """enrich's counts line says what the stream holds."""
    last = said.strip().splitlines()[-1]
    counts = {key: int(value) for key, value in _COUNT.findall(last)}
    passed = sum(counts.get(reason, 0) for reason in ("not_parsed", "no_key"))
    got = (counts.get("lines"), counts.get("enriched"), counts.get("unresolved"), passed)
    want = (expected.lines, expected.enriched, expected.unresolved, expected.passed)
    if got != want:
        raise RuntimeError(f"enrich counted {got}, the stream holds {want}: {last}")


@dataclasses.dataclass
class Case:
    name: str
    command: list[str]
    data: Path
    ready: bool
    enrich: bool
    runs: list[Run] = dataclasses.field(default_factory=list)

    def median(self, field: str) -> float:
        return float(statistics.median(getattr(run, field) for run in self.runs))


def bench_throughput(
    node: Node,
    streams: dict[str, Path],
    expected: Expected,
    rounds: int,
    daemon: str | None,
) -> None:
    cases: dict[str, list[Case]] = {}
    for form in FORMATS:
        data = streams[form]
        cases[form] = [
            Case("cat (the pipe's floor)", ["cat"], data, False, False),
            Case("Python: read, split, join, write", python_floor_command(), data, True, False),
            Case("ociresolve enrich, its own index", enrich_command(form, node), data, True, True),
        ]
        if daemon is not None and form == "json":
            command = enrich_command(form, node, daemon)
            cases[form].append(
                Case("ociresolve enrich, the daemon's mirror", command, data, True, True)
            )
    for _ in range(rounds):
        for group in cases.values():
            for case in group:
                run, said = pipe_through(case.command, case.data, case.ready)
                if run.lines != expected.lines:
                    raise RuntimeError(f"{case.name}: {run.lines} lines out of {expected.lines}")
                if case.enrich:
                    check_counts(said, expected)
                case.runs.append(run)
    print(
        f"throughput: {expected.lines:,} lines through `cat FILE | FILTER | reader`, medians of "
        f"{rounds} runs each, alternated"
    )
    print(
        f"  {'format':<7} {'filter':<40} {'lines/s':>11} {'vs cat':>7} {'vs Py':>7}"
        f" {'CPU/line':>11}   target"
    )
    for form, group in cases.items():
        size = streams[form].stat().st_size / expected.lines
        floor, python = (expected.lines / group[n].median("seconds") for n in (0, 1))
        for case in group:
            rate = expected.lines / case.median("seconds")
            cpu = case.median("cpu") / expected.lines
            target = ""
            if case.enrich:
                target = f"{'met' if rate >= TARGET else 'MISSED'} (>= {TARGET:,}/s)"
            print(
                f"  {form:<7} {case.name:<40} {rate:>11,.0f} {rate / floor:>6.3f}x"
                f" {rate / python:>6.3f}x {fmt(cpu)}   {target}".rstrip()
            )
        print(f"  {'':<7} ({size:.0f} bytes a line on average)")


# -- in process --------------------------------------------------------------------------------


def read_batches(data: bytes) -> list[list[bytes]]:
    """The lines as ``Enricher.run`` gets them from 64 KiB reads."""
    batches = []
    pending = b""
    for offset in range(0, len(data), READ_SIZE):
        lines = (pending + data[offset : offset + READ_SIZE]).split(b"\n")
        pending = lines.pop()
        batches.append(lines)
    return batches


def _bare_parse(form: str) -> Callable[[bytes], object]:
    if form == "json":
        return msgspec.json.decode
    if form == "logfmt":
        return lambda line: [pair.partition(b"=") for pair in line.split()]
    return re.compile(REGEX.encode()).search


def make_format(form: str) -> Format:
    if form == "json":
        return JsonFormat()
    if form == "logfmt":
        return LogfmtFormat()
    return TextFormat(REGEX)


def _inproc_per_line(
    form: str, batches: list[list[bytes]], resolver: Resolver, rounds: int
) -> list[float]:
    """Seconds per line: the bare parse, ``keys``, ``fields``, ``add``, ``Enricher.batch``."""
    lines = [line for batch in batches for line in batch]
    reader = make_format(form)
    lookup = Lookup(resolver)
    enricher = Enricher(reader, Lookup(resolver))
    parse = _bare_parse(form)
    keyed: list[list[Keys]] = []  # per batch, the keys of the lines keys() reads
    for batch in batches:
        found = []
        for line in batch:
            with contextlib.suppress(Unreadable):
                found.append(reader.keys(line))
        keyed.append(found)
    added = []  # the lines that name a container, and their fields
    for line in lines:
        with contextlib.suppress(Unreadable):
            keys = reader.keys(line)
            if fields := lookup.fields(keys.pid, keys.cgroup_id):
                added.append((line, fields))

    def bare() -> None:
        for line in lines:
            with contextlib.suppress(ValueError):  # msgspec.DecodeError is one
                parse(line)

    def keys_only() -> None:
        for line in lines:
            with contextlib.suppress(Unreadable):
                reader.keys(line)

    def fields_only() -> None:
        for batch in keyed:
            lookup.new_batch()
            for keys in batch:
                lookup.fields(keys.pid, keys.cgroup_id)

    def add_only() -> None:
        for line, fields in added:
            reader.add(line, fields)

    def whole() -> None:
        for batch in batches:
            enricher.batch(batch)

    times = _interleaved_calls(bare, keys_only, fields_only, add_only, whole, rounds=rounds)
    return [seconds / len(lines) for seconds in times]


def _interleaved_calls(*fns: Callable[[], object], rounds: int) -> list[float]:
    """Median seconds of one call of each of ``fns`` (each some ms long), called in turn."""
    samples: list[list[float]] = [[] for _ in fns]
    for fn in fns:  # warm
        fn()
    for _ in range(rounds):
        for fn, times in zip(fns, samples, strict=True):
            started = time.perf_counter()
            fn()
            times.append(time.perf_counter() - started)
    return [statistics.median(times) for times in samples]


def bench_inproc(node: Node, streams: dict[str, Path], batches_wanted: int) -> None:
    from fakehost import CONTAINERD_ROOT

    print(
        "in process: per line, on the stream's first lines in the batches a 64 KiB read gives "
        "(medians, alternated)"
    )
    print(
        f"  {'format':<7} {'bare parse':>11} {'keys()':>11} {'fields()':>11} {'add()':>11}"
        f" {'batch()':>11} {'= lines/s':>11} {'vs parse':>9}"
    )
    with Resolver(host_root=str(node.root), runtime_roots=[CONTAINERD_ROOT], cri=False) as res:
        for form in FORMATS:
            batches = read_batches(streams[form].read_bytes())[:batches_wanted]
            per_line = _inproc_per_line(form, batches, res, rounds=15)
            print(
                f"  {form:<7} {''.join(fmt(t) + ' ' for t in per_line)}"
                f"{1 / per_line[-1]:>11,.0f} {per_line[-1] / per_line[0]:>8.2f}x"
            )
    print(
        "  (fields() and add() per line of the whole stream: they run for the lines keys() "
        "reads / that name a container)"
    )


# -- latency -----------------------------------------------------------------------------------


class Filter:
    """A filter process fed one line at a time over pipes."""

    def __init__(self, name: str, command: list[str], line: bytes, ready: bool) -> None:
        self.name = name
        self.line = line
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=ROOT,
        )
        assert self.process.stdin and self.process.stdout and self.process.stderr
        if ready:
            self.said = self.process.stderr.readline().decode()
        self.input = self.process.stdin.fileno()
        self.output = self.process.stdout.fileno()
        self.times: list[float] = []
        self.answer = b""

    def round_trip(self) -> None:
        started = time.perf_counter()
        os.write(self.input, self.line)
        data = os.read(self.output, 65536)
        while not data.endswith(b"\n"):
            more = os.read(self.output, 65536)
            if not more:
                raise RuntimeError(f"{self.name} ended")
            data += more
        self.times.append(time.perf_counter() - started)
        self.answer = data

    def close(self) -> None:
        self.process.communicate(timeout=30)


def bench_latency(node: Node, samples: int, daemon: str | None) -> None:
    cgroup_line = (
        f'{{"ts":1718031234.000001,"pid":{node.container_pids[0]},'
        f'"cgroup_id":{node.container_cgroups[0]},"comm":"curl","event":"connect",'
        f'"daddr":"10.96.0.10","dport":53,"latency_ns":18234}}\n'
    ).encode()
    pid_line = (
        f'{{"ts":1718031234.000001,"pid":{node.container_pids[1]},"comm":"curl",'
        f'"event":"connect","daddr":"10.96.0.10","dport":53,"latency_ns":18234}}\n'
    ).encode()
    own = enrich_command("json", node)
    specs = [
        ("cat (the floor)", ["cat"], cgroup_line, False),
        ("Python: read, split, join, write", python_floor_command(), cgroup_line, True),
        ("enrich, its own index: a cgroup id", own, cgroup_line, True),
        ("enrich, its own index: a pid only", own, pid_line, True),
    ]
    if daemon is not None:
        mirror = enrich_command("json", node, daemon)
        specs += [
            ("enrich, the daemon's mirror: a cgroup id", mirror, cgroup_line, True),
            ("enrich, the daemon's mirror: a pid only", mirror, pid_line, True),
        ]
    filters: list[Filter] = []
    cpus = sorted(os.sched_getaffinity(0))
    try:
        for spec in specs:
            filters.append(Filter(*spec))
        if len(cpus) > 1:  # this process on one CPU, the filters on another: each round trip
            os.sched_setaffinity(0, cpus[:1])  # wakes a filter across CPUs, as in a pipeline
            for one in filters:
                os.sched_setaffinity(one.process.pid, cpus[1:2])
        for _ in range(samples // 10):  # warm
            for one in filters:
                one.round_trip()
        for one in filters:
            one.times.clear()
        for _ in range(samples):
            for one in filters:
                one.round_trip()
        for one in filters[2:]:
            if b'"k8s_pod":"web-' not in one.answer:
                raise RuntimeError(f"{one.name}: not enriched: {one.answer!r}")
    finally:
        os.sched_setaffinity(0, cpus)
        for one in filters:
            one.close()
    print(
        f"latency: one JSON line written, the line read back; {samples} round trips each, "
        "alternated (the added latency: the difference to cat's)"
    )
    print(
        f"  {'filter':<44} {'median':>11} {'p90':>11} {'p99':>11} {'added: median':>14} {'p90':>11}"
    )
    floor = _quantiles(filters[0].times)
    for one in filters:
        cuts = _quantiles(one.times)
        added = ""
        if one is not filters[0]:
            added = f"{_signed(cuts[0] - floor[0]):>14} {_signed(cuts[1] - floor[1]):>11}"
        print(f"  {one.name:<44} {''.join(fmt(t) + ' ' for t in cuts)}{added}".rstrip())
    slow = [sum(t > 1e-3 for t in one.times) / len(one.times) for one in filters]
    print(
        f"  (round trips over 1 ms, the host's stalls: {min(slow):.1%} to {max(slow):.1%} of "
        "each filter's, cat's included)"
    )
    _bench_one_line(node, cgroup_line.rstrip(b"\n"), pid_line.rstrip(b"\n"))


def _bench_one_line(node: Node, cgroup_line: bytes, pid_line: bytes) -> None:
    """The CPU part of the added latency: ``Enricher.batch`` of one line, in this process."""
    from fakehost import CONTAINERD_ROOT

    with Resolver(host_root=str(node.root), runtime_roots=[CONTAINERD_ROOT], cri=False) as res:
        enricher = Enricher(JsonFormat(), Lookup(res))
        proc = node.root / "proc" / str(node.container_pids[1]) / "cgroup"

        def bare_read() -> bytes:
            fd = os.open(proc, os.O_RDONLY)
            try:
                return os.read(fd, 4096)
            finally:
                os.close(fd)

        read, by_cgroup, by_pid = (
            median_seconds(fn)
            for fn in (
                bare_read,
                functools.partial(enricher.batch, [cgroup_line]),
                functools.partial(enricher.batch, [pid_line]),
            )
        )
    print("  in process, Enricher.batch of that one line (its own index):")
    print(f"  {'  a cgroup id (an index hit)':<44} {fmt(by_cgroup)}")
    print(f"  {'  a pid only (a /proc read each time)':<44} {fmt(by_pid)}")
    print(f"  {'  (the bare open/read/close of that /proc file)':<44} {fmt(read)}")


def _signed(seconds: float) -> str:
    return ("-" if seconds < 0 else "+") + fmt(abs(seconds)).strip()


def _quantiles(times: list[float]) -> tuple[float, float, float]:
    """Median, p90, p99."""
    cuts = statistics.quantiles(times, n=100, method="inclusive")
    return cuts[49], cuts[89], cuts[98]


# -- main --------------------------------------------------------------------------------------


@contextlib.contextmanager
def _daemon(node: Node, socket: Path, wanted: bool) -> Iterator[str | None]:
    """``ociresolve serve`` over the fake node, when ``wanted``: its socket."""
    if not wanted:
        yield None
        return
    from harness import DaemonProcess

    with DaemonProcess(socket, [*node.args(), "--no-cri"]) as daemon:
        yield str(daemon.socket)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=300_000, help="lines in the stream")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each filter")
    parser.add_argument("--samples", type=int, default=2000, help="latency round trips")
    parser.add_argument("--batches", type=int, default=40, help="in-process 64 KiB batches")
    parser.add_argument("--no-daemon", action="store_true", help="leave the daemon's mirror out")
    parser.add_argument("--only", choices=("throughput", "inproc", "latency"), action="append")
    args = parser.parse_args()
    sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "unit")]  # the fake host, harness
    parts = args.only or ["throughput", "inproc", "latency"]
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpus")
    shm = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None  # a tmpfs, like /proc
    base = Path(tempfile.mkdtemp(prefix="ociresolve-bench-", dir=shm))
    try:
        node = make_node(base / "host")
        events, expected = make_events(node, args.lines)
        streams = {form: base / f"events.{form}" for form in FORMATS}
        sizes = {form: write_stream(events, form, path) for form, path in streams.items()}
        average = ", ".join(f"{form} {sizes[form] / args.lines:.0f} B" for form in FORMATS)
        print(
            f"a fake node: {CONTAINERS} containers, {PROCESSES} container processes, "
            f"{HOST_PROCESSES} host processes; {args.lines:,} lines a stream ({average} a line): "
            f"{expected.enriched:,} to enrich, {expected.unresolved:,} host, "
            f"{expected.passed:,} no event"
        )
        daemon_wanted = not args.no_daemon and bool({"throughput", "latency"} & set(parts))
        with _daemon(node, base / "api.sock", daemon_wanted) as socket:
            if "throughput" in parts:
                bench_throughput(node, streams, expected, args.rounds, socket)
            if "inproc" in parts:
                bench_inproc(node, streams, args.batches)
            if "latency" in parts:
                bench_latency(node, args.samples, socket)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
