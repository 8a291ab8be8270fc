"""Benchmark of the node daemon's API, side by side with bare gRPC calls, in one run.

    sudo .venv/bin/python bench/daemon.py [--churn N] [--rate N] [--seconds S] [--idle S]

The first part runs a private containerd with the test harness (``tests/harness``: root,
containerd, runc, ...; without them it is skipped with the reason), one pod, and ``ociresolve
serve`` on its state directory as a process of its own; then measures (medians, interleaved):

* ``DaemonClient`` ``Lookup`` round trips by pid and by cgroup id of the pod's container, next
  to a bare gRPC unary call over a unix socket to a trivial service in another process, with
  messages of the same sizes (raw bytes, no protobuf), served by ``grpc.aio`` and by the sync
  ``grpc.server``: Python at both ends, as for the daemon;
* ``LookupBatch`` lookups per second, batches of 1, 64 and 1,024 (cgroup ids: index hits);
* ``RemoteResolver.lookup_cgroup_id``, a hit in the local copy, next to a bare ``dict.get``;
* the daemon's resident memory and CPU while idle.

The second part simulates a busy node without containerd: ``ociresolve serve`` on a tmpfs
runtime root holding ``--churn`` bundles in containerd's layout (``bench/index.py``'s), replaced
at ``--rate`` a second for ``--seconds`` (each a new bundle written, the oldest removed), with
a client watching: its RSS before and after, its CPU, and the delivery latency from a
``config.json`` closed to the ``added`` event read by the watching client.

Targets (issue "The node daemon", Performance): a lookup round trip within 1.5x of the bare
unary call (about 0.23 ms here).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import functools
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import psutil
from _timing import fmt, interleaved, row, wait_for
from index import TASKS, _config, _make_bundle, _remove_bundle

from ociresolve import DaemonClient, IndexedContainer, OciresolveError, RemoteResolver
from ociresolve.api import api_pb2, api_pb2_grpc

ROOT = Path(__file__).resolve().parents[1]
ECHO = "/bench.Echo/Call"
BATCHES = (1, 64, 1024)
MB = 1024 * 1024


# -- the bare baseline: a trivial unary service in another process -----------------------------


def _echo_handler(reply: bytes) -> grpc.GenericRpcHandler:
    def call(request: bytes, context: Any) -> bytes:
        return reply

    return grpc.method_handlers_generic_handler(
        "bench.Echo", {"Call": grpc.unary_unary_rpc_method_handler(call)}
    )


def child_echo(sock_dir: str, reply_size: int) -> int:
    """Serve the trivial service on ``<dir>/aio.sock`` (grpc.aio) and ``<dir>/sync.sock``
    (grpc.server, a thread pool), until stdin closes."""
    from concurrent.futures import ThreadPoolExecutor

    reply = b"x" * reply_size
    sync = grpc.server(ThreadPoolExecutor(4))
    sync.add_generic_rpc_handlers((_echo_handler(reply),))
    sync.add_insecure_port(f"unix:{sock_dir}/sync.sock")
    sync.start()

    async def serve_aio() -> None:
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((_echo_handler(reply),))
        server.add_insecure_port(f"unix:{sock_dir}/aio.sock")
        await server.start()
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        await server.stop(None)

    asyncio.run(serve_aio())
    sync.stop(None)
    return 0


class _Echo:
    """The trivial service's process and a sync client channel to each of its two servers."""

    def __init__(self, sock_dir: Path, request: bytes, reply_size: int) -> None:
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--child-echo", str(sock_dir), str(reply_size)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        if self.process.stdout.readline().strip() != "ready":
            raise RuntimeError("the echo service did not start")
        self.request = request
        self.channels = {
            k: grpc.insecure_channel(f"unix:{sock_dir}/{k}.sock") for k in ("aio", "sync")
        }
        self.calls = {kind: channel.unary_unary(ECHO) for kind, channel in self.channels.items()}
        for kind in self.calls:
            assert len(self.call(kind)) == reply_size

    def call(self, kind: str) -> bytes:
        reply: bytes = self.calls[kind](self.request, timeout=1.0)
        return reply

    def close(self) -> None:
        for channel in self.channels.values():
            channel.close()
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(10)


# -- part 1: a real containerd -----------------------------------------------------------------


def bench_real(base: Path, idle: float) -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    from harness import (
        Containerd,
        ContainerSpec,
        DaemonProcess,
        build_images,
        import_images,
        requirements,
    )

    reason = requirements()
    if reason is not None:
        print(f"real containerd: skipped ({reason})")
        return
    app = [ContainerSpec("app", ["sleep", "3600"])]
    sock_dir = Path(tempfile.mkdtemp(prefix="ociresolve-bench-api-"))  # short socket paths
    try:
        with Containerd(base / "ctrd") as ctrd:
            import_images(ctrd.socket, build_images(base / "images"))
            cri = ctrd.cri()
            serve = [
                "--runtime-root",
                str(ctrd.state_dir),
                "--cri-socket",
                str(ctrd.socket),
            ]
            with (
                cri.pod("bench-daemon-1f6a", app, namespace="bench") as pod,
                DaemonProcess(sock_dir / "ociresolve.sock", serve) as daemon,
                DaemonClient(str(daemon.socket)) as client,
            ):
                container_id = pod.container_id("app")
                record = wait_for(
                    lambda: _mapped(client.lookup_container(container_id).record),
                    "the container in the daemon's index",
                )
                assert record.pid is not None and record.cgroup_id is not None
                version = cri.version().runtime_version
                print(
                    f"a real containerd {version} container, pid {record.pid}; the daemon "
                    f"(pid {daemon.pid}) indexes {len(client.containers())} containers"
                )
                _bench_round_trips(client, record, sock_dir)
                _bench_batches(client, record)
                _bench_remote(str(daemon.socket), record)
                _bench_idle(daemon.pid, idle, "the daemon on the real containerd")
    finally:
        shutil.rmtree(sock_dir, ignore_errors=True)


def _bench_round_trips(client: DaemonClient, record: IndexedContainer, sock_dir: Path) -> None:
    pid, cgroup_id = record.pid, record.cgroup_id
    assert pid is not None and cgroup_id is not None
    by_pid = functools.partial(client.lookup_pid, pid)
    by_cgroup = functools.partial(client.lookup_cgroup_id, cgroup_id)
    for lookup in (by_pid, by_cgroup):
        result = lookup()
        assert result.status == "found" and result.source == "index", result
        assert result.record is not None and result.record.meta == record.meta
    # The bare call carries messages of the daemon's sizes: a LookupRequest, a LookupResponse.
    request = api_pb2.LookupRequest(pid=pid).SerializeToString()
    with grpc.insecure_channel(f"unix:{client.socket}") as channel:
        stub = api_pb2_grpc.ResolverStub(channel)
        reply_size = stub.Lookup(api_pb2.LookupRequest(pid=pid), timeout=1.0).ByteSize()
    echo = _Echo(sock_dir, request, reply_size)
    try:
        aio, sync, pid_rtt, cgroup_rtt = interleaved(
            functools.partial(echo.call, "aio"),
            functools.partial(echo.call, "sync"),
            by_pid,
            by_cgroup,
            rounds=7,
        )
    finally:
        echo.close()
    print(f"API round trips over a unix socket ({len(request)} B request, {reply_size} B reply)")
    print(row("bare unary call, grpc.aio server (baseline)", aio, aio))
    print(row("bare unary call, sync grpc.server", sync, aio))
    print(row("DaemonClient.lookup_pid(pid)", pid_rtt, aio, "target <= 1.5x"))
    print(row("DaemonClient.lookup_cgroup_id(cgroup_id)", cgroup_rtt, aio, "target <= 1.5x"))
    print(
        f"  {'-> lookup_pid / the sync server baseline':<58} {pid_rtt / sync:8.2f}x\n"
        f"  {'-> lookup_cgroup_id / the sync server baseline':<58} {cgroup_rtt / sync:8.2f}x"
    )


def _bench_batches(client: DaemonClient, record: IndexedContainer) -> None:
    cgroup_id = record.cgroup_id
    assert cgroup_id is not None
    calls = []
    for size in BATCHES:
        keys = [("cgroup_id", cgroup_id)] * size
        answers = client.lookup_batch(keys)
        assert len(answers) == size and all(a.status == "found" for a in answers)
        calls.append(functools.partial(client.lookup_batch, keys))
    times = interleaved(*calls, rounds=3, repeat=5)
    print("LookupBatch, cgroup ids of the container (index hits)")
    for size, seconds in zip(BATCHES, times, strict=True):
        name = f"batch of {size:>4}: {size / seconds:>10,.0f} lookups/s"
        print(row(name, seconds / size, times[0]))


def _bench_remote(socket: str, record: IndexedContainer) -> None:
    cgroup_id = record.cgroup_id
    assert cgroup_id is not None
    with RemoteResolver(socket) as remote:
        meta = wait_for(lambda: remote.lookup_cgroup_id(cgroup_id), "the container in the copy")
        assert meta == record.meta
        bare = {cgroup_id: meta}
        dict_hit, hit = interleaved(
            functools.partial(bare.get, cgroup_id),
            functools.partial(remote.lookup_cgroup_id, cgroup_id),
        )
    print("RemoteResolver, the daemon's index mirrored in this process")
    print(row("dict.get(cgroup_id), a bare dict (baseline)", dict_hit, dict_hit))
    print(row("RemoteResolver.lookup_cgroup_id(cgroup_id), hit", hit, dict_hit))


def _bench_idle(pid: int, seconds: float, what: str) -> None:
    process = psutil.Process(pid)
    rss = process.memory_info().rss
    cpu = _cpu_seconds(process)
    time.sleep(seconds)
    used = _cpu_seconds(process) - cpu
    print(f"{what}, idle")
    print(f"  {'resident memory (RSS)':<58} {rss / MB:8.1f} MB")
    print(f"  {f'CPU over {seconds:.0f} s':<58} {used * 1e3:8.1f} ms  ({used / seconds:.3%})")


def _cpu_seconds(process: psutil.Process) -> float:
    """CPU time of the process's live threads, in ns from ``schedstat`` (``cpu_times()``
    counts 10 ms ticks: too coarse for an idle daemon)."""
    total = 0
    for task in Path(f"/proc/{process.pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue  # the thread ended meanwhile
    return total / 1e9


def _mapped(record: IndexedContainer | None) -> IndexedContainer | None:
    return record if record is not None and record.cgroup_id and record.pid else None


# -- part 2: churn -----------------------------------------------------------------------------


class _Arrivals:
    """A raw watch in a thread: ``perf_counter_ns()`` when each ``added`` event was read."""

    def __init__(self, client: DaemonClient, prefix: str) -> None:
        self.watch = client.watch()
        self.prefix = prefix
        self.added: dict[str, int] = {}
        self.synced = threading.Event()
        self.events = 0
        self._thread = threading.Thread(target=self._run, name="arrivals", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for kind, record in self.watch:
                now = time.perf_counter_ns()
                self.events += 1
                if kind == "synced":
                    self.synced.set()
                elif kind == "added" and record is not None:
                    container_id = record.meta.container_id or ""
                    if container_id.startswith(self.prefix):
                        self.added[container_id] = now
        except OciresolveError as exc:  # a cancelled watch just ends
            print(f"  the watch ended: {exc}")

    def close(self) -> None:
        self.watch.cancel()
        self._thread.join(10)


def bench_churn(base: Path, count: int, rate: float, seconds: float, idle: float) -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    from harness import DaemonProcess

    root = base / "root"
    tree = root / TASKS
    tree.mkdir(parents=True)
    config = _config(0)
    for n in range(count):
        _make_bundle(tree, f"c{n:063x}", config)
    sock_dir = Path(tempfile.mkdtemp(prefix="ociresolve-bench-api-"))
    serve = ["--runtime-root", str(root), "--no-cri", "--grace-period", "1"]
    print(
        f"a simulated node: {count} bundles of {len(config) / 1024:.0f} KB (tmpfs), "
        f"replaced at {rate:.0f}/s for {seconds:.0f} s, one client watching"
    )
    try:
        with (
            DaemonProcess(sock_dir / "ociresolve.sock", serve) as daemon,
            DaemonClient(str(daemon.socket)) as client,
        ):
            assert len(client.containers()) == count
            _bench_idle(daemon.pid, idle, f"the daemon with {count} containers")
            process = psutil.Process(daemon.pid)
            arrivals = _Arrivals(client, "c")
            try:
                if not arrivals.synced.wait(10):
                    raise TimeoutError("the watch never synced")
                rss_before = process.memory_info().rss
                cpu = _cpu_seconds(process)
                started = time.monotonic()
                closed = _churn(tree, count, config, rate, seconds)
                elapsed = time.monotonic() - started
                used = _cpu_seconds(process) - cpu
                last = max(closed, key=closed.__getitem__)
                wait_for(lambda: arrivals.added.get(last), "the last churned bundle's event")
                rss_after = process.memory_info().rss
                indexed = len(client.containers())
            finally:
                arrivals.close()
            latencies = [arrivals.added[c] - t for c, t in closed.items() if c in arrivals.added]
        print(f"under churn: {len(closed)} bundles replaced in {elapsed:.1f} s")
        print(f"  {'RSS before the churn':<58} {rss_before / MB:8.1f} MB")
        print(f"  {'RSS after the churn':<58} {rss_after / MB:8.1f} MB")
        print(f"  {'CPU during the churn':<58} {used:8.2f} s   ({used / elapsed:.1%} of a core)")
        print(f"  {'containers indexed after (removed ones: 1 s grace)':<58} {indexed:8d}")
        print(f"  {'events the watching client read':<58} {arrivals.events:8d}")
        if latencies:
            cuts = statistics.quantiles(latencies, n=100, method="inclusive")
            p50, p90, p99 = cuts[49] / 1e9, cuts[89] / 1e9, cuts[98] / 1e9
            name = f"config.json closed -> 'added' read by the client ({len(latencies)})"
            print(f"  {name:<58} p50 {fmt(p50)}  p90 {fmt(p90)}  p99 {fmt(p99)}")
        missed = len(closed) - len(latencies)
        if missed:
            print(f"  ({missed} bundles never reached the client as 'added')")
    finally:
        shutil.rmtree(sock_dir, ignore_errors=True)


def _churn(tree: Path, count: int, config: bytes, rate: float, seconds: float) -> dict[str, int]:
    """Replace the oldest bundle by a new one ``rate`` times a second for ``seconds``; the
    ``perf_counter_ns()`` of each new ``config.json``'s close, by container id."""
    live = collections.deque(f"c{n:063x}" for n in range(count))
    closed: dict[str, int] = {}
    n = count
    next_at = time.monotonic()
    end = next_at + seconds
    while next_at < end:
        container_id = f"c{n:063x}"
        closed[container_id] = _make_bundle(tree, container_id, config)
        live.append(container_id)
        _remove_bundle(tree, live.popleft())
        n += 1
        next_at += 1 / rate
        time.sleep(max(0.0, next_at - time.monotonic()))
    return closed


# -- main --------------------------------------------------------------------------------------


def _fast_tmp() -> str | None:
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--churn", type=int, default=1000, help="bundles on the simulated node")
    parser.add_argument("--rate", type=float, default=100.0, help="bundles replaced a second")
    parser.add_argument("--seconds", type=float, default=15.0, help="how long the churn lasts")
    parser.add_argument("--idle", type=float, default=10.0, help="seconds of idle CPU measured")
    parser.add_argument("--only", choices=("real", "churn"), action="append")
    parser.add_argument("--child-echo", nargs=2, metavar=("DIR", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_echo:
        return child_echo(args.child_echo[0], int(args.child_echo[1]))
    print(
        f"python {sys.version.split()[0]}, grpc {grpc.__version__}, {os.cpu_count()} cpus; medians"
    )
    parts = args.only or ["real", "churn"]
    if "real" in parts:
        base = Path(tempfile.mkdtemp(prefix="ociresolve-bench-"))  # containerd: not on tmpfs
        try:
            bench_real(base, args.idle)
        finally:
            shutil.rmtree(base, ignore_errors=True)
    if "churn" in parts:
        base = Path(tempfile.mkdtemp(prefix="ociresolve-bench-", dir=_fast_tmp()))
        try:
            bench_churn(base, args.churn, args.rate, args.seconds, args.idle)
        finally:
            shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
