"""Benchmark: a well-behaved client of the node daemon, alone and next to abusive ones, in one
run.

    .venv/bin/python bench/abuse.py [--abusers 8] [--batch 4096] [--samples 2000]
                                    [--tricklers 3000] [--seconds 8]

``ociresolve serve`` runs as a process of its own on a fake host root on a tmpfs (the unit
tests' ``FakeHost``): 100 containerd containers, and a ``/proc/<pid>/cgroup`` for each of
4,096 processes spread over them; with its metrics server.

* The API: a client's ``Lookup`` round trips by pid (a ``/proc`` read and an index hit, as the
  tracer asks), one after another; median and p99 alone, then while ``--abusers`` processes
  loop ``LookupBatch`` of ``--batch`` such pids, then alone again.
  Also the batches' lookups a second and the batches refused (RESOURCE_EXHAUSTED).
* The metrics server: ``--tricklers`` connections each sending a request a byte a second; the
  daemon's threads and RSS before, meanwhile and after, a ``/healthz`` answer's time
  meanwhile, and how many trickling connections the server had closed after ``--seconds``.

Target (issue "Hostile tenants and sick nodes", item 7): the good client's p99 under abuse
within 10 ms; threads and memory bounded whatever the slow clients do.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import multiprocessing
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
from _timing import fmt

from ociresolve import DaemonClient, OciresolveError
from ociresolve.api.client import Key

ROOT = Path(__file__).resolve().parents[1]
MB = 1024 * 1024
CONTAINERS = 100
PROCESSES = 4096
FIRST_PID = 100_000


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _fake_node(root: Path) -> list[str]:
    """The fake host's containers and processes; the ``serve`` options that find them."""
    from fakehost import (
        CONTAINERD_ROOT,
        FakeHost,
        Pod,
        containerd_cgroup_file,
        containerd_spec,
        new_id,
    )

    host = FakeHost(root)
    host.enable_cgroup2()
    host.make_roots()
    pods = [Pod.new(f"web-{n}") for n in range(CONTAINERS)]
    ids = [new_id() for _ in pods]
    for container_id, pod in zip(ids, pods, strict=True):
        spec = containerd_spec(container_id, pod)
        host.make_cgroup(spec["linux"]["cgroupsPath"])
        host.write(host.containerd_bundle(container_id), spec)
    for n in range(PROCESSES):
        host.set_proc_cgroup(
            FIRST_PID + n, containerd_cgroup_file(ids[n % CONTAINERS], pods[n % CONTAINERS].uid)
        )
    return ["--host-root", str(root), "--runtime-root", CONTAINERD_ROOT]


# -- the API -----------------------------------------------------------------------------------


def _abuse(path: str, size: int, stop: Any, counts: Any) -> None:
    """One abusive client: ``LookupBatch`` of ``size`` pids, in a loop, until ``stop``."""
    keys: list[Key] = [("pid", FIRST_PID + n % PROCESSES) for n in range(size)]
    done = refused = 0
    with DaemonClient(path, timeout=30.0) as client:
        while not stop.is_set():
            try:
                done += len(client.lookup_batch(keys))
            except OciresolveError:
                refused += 1
                time.sleep(0.01)
    counts.put((done, refused))


def _round_trips(client: DaemonClient, samples: int) -> tuple[float, float, str]:
    pid = FIRST_PID
    times: list[float] = []
    status = ""
    for _ in range(samples):
        started = time.perf_counter()
        status = client.lookup_pid(pid).status
        times.append(time.perf_counter() - started)
    cuts = statistics.quantiles(times, n=100, method="inclusive")
    return statistics.median(times), cuts[98], status


def bench_api(path: str, abusers: int, batch: int, samples: int) -> None:
    print(f"the API: Lookup by pid, {samples} round trips, one after another")
    with DaemonClient(path) as client:
        _round_trips(client, 200)  # warm
        alone = _round_trips(client, samples)
        context = multiprocessing.get_context("spawn")
        stop = context.Event()
        counts = context.Queue()
        crowd = [
            context.Process(target=_abuse, args=(path, batch, stop, counts)) for _ in range(abusers)
        ]
        for process in crowd:
            process.start()
        time.sleep(2.0)  # every abuser connected and looping
        started = time.monotonic()
        abused = _round_trips(client, samples)
        elapsed = time.monotonic() - started
        stop.set()
        totals = [counts.get(timeout=60) for _ in crowd]
        for process in crowd:
            process.join(60)
        again = _round_trips(client, samples)
    done = sum(d for d, _ in totals)
    refused = sum(r for _, r in totals)
    print(f"  {'':<44} {'median':>11} {'p99':>11}   (answer: {alone[2]})")
    for name, (median, p99, _) in (
        ("alone", alone),
        (f"next to {abusers} clients looping LookupBatch({batch})", abused),
        ("alone again", again),
    ):
        print(f"  {name:<44} {fmt(median)} {fmt(p99)}")
    print(
        f"  the abusers' lookups answered: {done / (elapsed + 2.0):,.0f}/s; "
        f"batches refused: {refused}"
    )


# -- the metrics server ------------------------------------------------------------------------


def _healthz_seconds(port: int) -> float:
    started = time.perf_counter()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10.0)
    try:
        connection.request("GET", "/healthz")
        connection.getresponse().read()
    finally:
        connection.close()
    return time.perf_counter() - started


def _is_closed(client: socket.socket) -> bool:
    try:
        return not client.recv(4096, socket.MSG_PEEK)
    except BlockingIOError:  # nothing to read: open
        return False
    except OSError:
        return True


def bench_http(port: int, pid: int, tricklers: int, seconds: float) -> None:
    daemon = psutil.Process(pid)
    print(f"the metrics server: {tricklers} clients sending a request a byte a second")

    def state() -> str:
        return f"{daemon.num_threads():5d} threads, RSS {daemon.memory_info().rss / MB:6.1f} MB"

    print(f"  {'before':<44} {state()}")
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: " + b"a" * 200
    clients: list[socket.socket] = []
    for _ in range(tricklers):
        try:
            client = socket.create_connection(("127.0.0.1", port), timeout=5.0)
        except OSError:
            break
        client.setblocking(False)
        clients.append(client)
    probes: list[float] = []
    started = time.monotonic()
    sent = 0
    while time.monotonic() - started < seconds:
        for client in clients:
            with contextlib.suppress(OSError):  # closed by the daemon
                client.send(request[sent : sent + 1])
        sent += 1
        probes.append(_healthz_seconds(port))
        if sent == 3:
            print(
                f"  {'trickling connections closed after 3 s':<44} "
                f"{sum(_is_closed(c) for c in clients)} of {len(clients)}"
            )
        time.sleep(max(0.0, started + sent - time.monotonic()))
    during = state()
    closed = sum(_is_closed(c) for c in clients)
    print(f"  {f'after {seconds:.0f} s of trickling':<44} {during}")
    print(f"  {'trickling connections closed by the daemon':<44} {closed} of {len(clients)}")
    print(
        f"  {'/healthz meanwhile (median, worst)':<44} {fmt(statistics.median(probes))} "
        f"{fmt(max(probes))}"
    )
    for client in clients:
        client.close()
    time.sleep(2.0)
    print(f"  {'2 s after they left':<44} {state()}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--abusers", type=int, default=8)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--tricklers", type=int, default=3000)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--only", choices=("api", "http"), action="append")
    args = parser.parse_args()
    sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "unit")]
    from harness import DaemonProcess

    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpus")
    shm = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None  # a tmpfs, like /run
    base = Path(tempfile.mkdtemp(prefix="ociresolve-bench-", dir=shm))
    try:
        port = _free_port()
        serve = [
            *_fake_node(base / "host"),
            "--no-cri",
            "--metrics-address",
            f"127.0.0.1:{port}",
        ]
        with DaemonProcess(base / "api.sock", serve) as daemon:
            parts = args.only or ["api", "http"]
            if "api" in parts:
                bench_api(str(daemon.socket), args.abusers, args.batch, args.samples)
            if "http" in parts:
                bench_http(port, daemon.pid, args.tricklers, args.seconds)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
