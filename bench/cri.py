"""Benchmark of the CRI fallback next to the index it backs up, on a private real containerd.

    sudo .venv/bin/python bench/cri.py [--spawns N]

Runs a private containerd with the test harness (``tests/harness``: root, containerd, runc,
...; without them it is skipped with the reason) and one pod, then measures, side by side in
one run (medians):

* the index's hits: ``lookup_cgroup_id`` and ``lookup_pid``;
* ``lookup_container`` answered by the CRI fallback on a cache miss (a resolver whose only
  runtime root is empty, its positive cache turned off): ``ContainerStatus(verbose=True)``,
  parse of the verbose info, normalize; the same answered by the fallback's positive cache;
* one bare CRI ``ContainerStatus(verbose=True)`` round trip to the same containerd (the
  baseline);
* the per-event cost of the containerd-socket tracer's original method, a ``crictl
  inspect``-style lookup that spawns a process making two CRI calls per event: our own CLI in
  CRI mode, ``python -m ociresolve lookup PID --runtime-root <empty> --cri-socket <socket>
  --json`` (``Version`` + ``ContainerStatus``), as a subprocess.

Targets (issue "CRI fallback"): one CRI round trip costs at least 1,000 index hits.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from _timing import fmt, interleaved, row, wait_for

from ociresolve import IndexedContainer, Resolver
from ociresolve.cri.client import GrpcCriClient

ROOT = Path(__file__).resolve().parents[1]
# Generous for a benchmark: a timed-out call would be a failure, not a data point.
CRI_TIMEOUT = 5.0


def bench(base: Path, spawns: int) -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    from harness import Containerd, ContainerSpec, build_images, import_images, requirements

    reason = requirements()
    if reason is not None:
        print(f"real containerd: skipped ({reason})")
        return
    empty = base / "no-runtime-here"
    empty.mkdir()
    app = [ContainerSpec("app", ["sleep", "3600"])]
    with Containerd(base / "ctrd") as ctrd:
        import_images(ctrd.socket, build_images(base / "images"))
        cri = ctrd.cri()
        socket = str(ctrd.socket)
        with (
            Resolver(runtime_roots=[str(ctrd.state_dir)]) as indexed,
            cri.pod("bench-cri-7e3a", app, namespace="bench") as pod,
            # The index off: every container is a miss only the CRI answers.
            Resolver(
                runtime_roots=[str(empty)], cri_client=GrpcCriClient(socket, timeout=CRI_TIMEOUT)
            ) as uncached,
            Resolver(
                runtime_roots=[str(empty)], cri_client=GrpcCriClient(socket, timeout=CRI_TIMEOUT)
            ) as cached,
        ):
            container_id = pod.container_id("app")
            record = wait_for(
                lambda: _mapped(indexed.container(container_id)), "the container in the index"
            )
            assert record.cgroup_id is not None and record.pid is not None
            cgroup_id, pid = record.cgroup_id, record.pid
            version = cri.version().runtime_version
            print(
                f"a real containerd {version} container ({len(indexed.index)} in the index), "
                f"pid {pid}"
            )
            # The answers are right, and each lookup below takes the path it is named for.
            resolution = indexed.resolve_pid(pid)
            assert resolution is not None and resolution.source == "index"
            assert indexed.lookup_cgroup_id(cgroup_id) is record.meta
            fallback = uncached.cri
            assert fallback is not None and cached.cri is not None
            fallback.positive_ttl = 0.0  # every lookup_container is a cache miss: a CRI call
            for resolver in (uncached, cached):
                resolution = resolver.resolve_pid(pid)
                assert resolution is not None and resolution.source == "cri"
                assert resolution.meta == record.meta, (resolution.meta, record.meta)
            calls = sum(fallback.calls.values())
            assert uncached.lookup_container(container_id) == record.meta
            assert sum(fallback.calls.values()) == calls + 1  # one ContainerStatus, no more
            calls = sum(cached.cri.calls.values())
            assert cached.lookup_container(container_id) == record.meta
            assert sum(cached.cri.calls.values()) == calls  # the cache: no call
            status = functools.partial(cri.container_status, container_id, verbose=True)
            assert status().info["info"]
            spawned = _spawned(pid, str(empty), socket, record, spawns)
            _report(indexed, uncached, cached, cgroup_id, pid, container_id, status, spawned)
            failed = {k: n for k, n in fallback.calls.items() if k[1] not in ("ok", "not_found")}
            assert not failed, f"CRI calls failed while timed: {failed}"


def _report(
    indexed: Resolver,
    uncached: Resolver,
    cached: Resolver,
    cgroup_id: int,
    pid: int,
    container_id: str,
    status: Callable[[], Any],
    spawned: _Spawned,
) -> None:
    assert cached.cri is not None
    hit, pid_hit, cache_hit, resolve_hit = interleaved(
        functools.partial(indexed.lookup_cgroup_id, cgroup_id),
        functools.partial(indexed.lookup_pid, pid),
        functools.partial(cached.lookup_container, container_id),
        functools.partial(cached.cri.resolve, container_id),
    )
    rtt, miss = interleaved(
        status, functools.partial(uncached.lookup_container, container_id), repeat=7
    )
    spawn = statistics.median(spawned.lookups)
    startup = statistics.median(spawned.startups)
    print("from the index (ratios: to the lookup_cgroup_id hit)")
    print(row("resolver.lookup_cgroup_id(cgroup_id), index hit", hit, hit, "target < 0.3 us"))
    print(row("resolver.lookup_pid(pid), index hit", pid_hit, hit))
    print("over CRI (ratios: to the bare round trip)")
    print(row("CRI ContainerStatus(verbose=True) round trip (baseline)", rtt, rtt))
    print(row("lookup_container, CRI fallback, cache miss", miss, rtt))
    print(row("lookup_container, CRI fallback, positive cache", cache_hit, rtt))
    print(row("  of which CriFallback.resolve(id), the cache hit alone", resolve_hit, rtt))
    runs = len(spawned.lookups)
    print(row(f"spawned `ociresolve lookup` in CRI mode ({runs} runs)", spawn, rtt))
    low, high = (fmt(_cut(spawned.lookups, p)).strip() for p in (10, 90))
    print(f"  {'  (a process, Version + ContainerStatus, per event)':<58} p10 {low}, p90 {high}")
    print(row("  of which the process alone: python + the same imports", startup, rtt))
    print(f"  {'-> CRI round trip / index hit':<58} {rtt / hit:10,.0f}x           target >= 1000x")
    print(f"  {'-> fallback cache miss / CRI round trip':<58} {miss / rtt:10.2f}x")
    print(f"  {'-> spawned lookup / index hit':<58} {spawn / hit:10,.0f}x")
    print(f"  {'-> spawned lookup / fallback cache miss':<58} {spawn / miss:10,.0f}x")


class _Spawned(NamedTuple):
    lookups: list[float]  # seconds of each `ociresolve lookup` process
    startups: list[float]  # seconds of each process importing the same modules, doing nothing


_IMPORTS = "import grpc, ociresolve.cli, ociresolve.cri.api_pb2_grpc"


def _spawned(pid: int, empty: str, socket: str, record: IndexedContainer, runs: int) -> _Spawned:
    """Wall time of ``ociresolve lookup`` in CRI mode run as its own process, alternated with
    a process that only imports what it imports (its startup floor)."""
    command = [
        sys.executable,
        "-m",
        "ociresolve",
        "lookup",
        str(pid),
        "--runtime-root",
        empty,
        "--cri-socket",
        socket,
        "--json",
    ]
    spawned = _Spawned([], [])
    for _ in range(runs):
        started = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        spawned.lookups.append(time.perf_counter() - started)
        assert result.returncode == 0, result.stderr
        answer = json.loads(result.stdout)
        assert answer["source"] == "cri", answer
        assert answer["container_id"] == record.meta.container_id, answer
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", _IMPORTS], check=True)
        spawned.startups.append(time.perf_counter() - started)
    return spawned


def _cut(values: list[float], percent: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[percent - 1]


def _mapped(record: IndexedContainer | None) -> IndexedContainer | None:
    return record if record is not None and record.cgroup_id and record.pid else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spawns", type=int, default=20, help="spawned CLI lookups timed")
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpus; medians")
    base = Path(tempfile.mkdtemp(prefix="ociresolve-bench-"))  # containerd: not on tmpfs
    try:
        bench(base, args.spawns)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
