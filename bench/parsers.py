"""Benchmark of the pure parsers, printed side by side with the baselines they are judged by.

    python bench/parsers.py [--bundles N]

Targets (issue "Foundation"): parse_cgroup within 3x of a bare str.split of the same line;
read_bundle on a 20 KB config.json faster than json.loads of it; a scan of 5,000 bundles
under 0.2 s.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _timing import median_seconds, row

import ociresolve
from ociresolve import cgroup

ROOT = Path(__file__).resolve().parents[1]
# A real containerd 1.6.20 container config.json (compact, as containerd writes it), grown to a
# realistic 20 KB with the service environment variables kubelet injects (FOO_SERVICE_HOST, ...,
# 7 per Service: 40 Services in a namespace is common).
CAPTURE = ROOT / "fixtures/bundles/containerd/1.6.20-container-e2e-capture/config.json"
# A real 19 KB config.json from cri-o (IBM Cloud), pretty-printed as crictl showed it.
CRIO_CONFIG = ROOT / "fixtures/bundles/cri-o/2022-01-sandbox-iks-core-dump-handler/config.json"
TARGET_BYTES = 20 * 1024
# A real /proc/<pid>/cgroup line (containerd 1.6, systemd driver, cgroup v2).
LINE = (
    "0::/kubepods.slice/kubepods-besteffort.slice/"
    "kubepods-besteffort-pod9493223b_520e_4a97_a45f_359dcf967006.slice/"
    "cri-containerd-25d057a4c6c9c1f1e5fd1d8d4e0b7a8b1cc18bbb4b3ed1a1ff66f4b1b0e2b1d5.scope"
)


def bench_cgroup() -> None:
    print("parse_cgroup, one real /proc/<pid>/cgroup line")
    fresh = [LINE[:-1] + LINE[-1] for _ in range(1)]  # a distinct object, as a fresh read gives
    split = median_seconds(lambda: fresh[0].split(":"))
    hot = median_seconds(lambda: ociresolve.parse_cgroup(fresh[0]))

    def cold() -> None:
        cgroup._parse_path_cached.cache_clear()
        ociresolve.parse_cgroup(fresh[0])

    clear = median_seconds(cgroup._parse_path_cached.cache_clear)
    miss = median_seconds(cold) - clear
    print(row("str.split(':') of the line (baseline)", split, split))
    print(row("parse_cgroup(line), path seen before (the usual case)", hot, split, "target <= 3x"))
    print(row("parse_cgroup(line), first sight of the path", miss, split))


def realistic_spec() -> dict[str, object]:
    spec: dict[str, Any] = json.loads(CAPTURE.read_bytes())
    env = spec["process"]["env"]
    service = 0
    while len(json.dumps(spec, separators=(",", ":"))) < TARGET_BYTES:
        name = f"CHECKOUT_BACKEND_{service}"
        port = 8000 + service
        env += [
            f"{name}_SERVICE_HOST=10.96.{service}.17",
            f"{name}_SERVICE_PORT={port}",
            f"{name}_PORT=tcp://10.96.{service}.17:{port}",
            f"{name}_PORT_{port}_TCP=tcp://10.96.{service}.17:{port}",
            f"{name}_PORT_{port}_TCP_PROTO=tcp",
            f"{name}_PORT_{port}_TCP_PORT={port}",
            f"{name}_PORT_{port}_TCP_ADDR=10.96.{service}.17",
        ]
        service += 1
    return spec


def bench_bundle(directory: Path) -> None:
    for label, config in (
        ("containerd 1.6.20, compact", directory / "config.json"),
        ("cri-o, pretty-printed", CRIO_CONFIG),
    ):
        data = config.read_bytes()
        print(f"read_bundle, a {len(data) / 1024:.0f} KB config.json ({label})")
        loads = median_seconds(lambda data=data: json.loads(data))
        load_file = median_seconds(lambda config=config: json.loads(config.read_bytes()))
        read = median_seconds(lambda config=config: ociresolve.read_bundle(config))
        print(row("json.loads(bytes already in memory) (baseline)", loads, loads))
        print(row("json.loads(path.read_bytes())", load_file, loads))
        print(row("read_bundle(path): read + decode + normalize", read, loads, "target < 1x"))


def bench_scan(base: Path, count: int) -> None:
    spec: dict[str, Any] = realistic_spec()
    annotations = spec["annotations"]
    tree = base / "io.containerd.runtime.v2.task" / "k8s.io"
    for n in range(count):
        cid = f"{n:064x}"
        bundle = tree / cid
        bundle.mkdir(parents=True)
        annotations["io.kubernetes.cri.sandbox-id"] = f"{n // 2:064x}"
        (bundle / "config.json").write_text(json.dumps(spec, separators=(",", ":")))
        (bundle / "rootfs").mkdir()
    size = (bundle / "config.json").stat().st_size
    print(f"scan of {count} containerd bundles of {size / 1024:.0f} KB (files in the page cache)")
    paths = list(ociresolve.find_bundles(base))
    assert len(paths) == count

    def scan() -> int:
        return sum(ociresolve.read_bundle(p) is not None for p in ociresolve.find_bundles(base))

    def parse_only() -> None:
        for p in paths:
            ociresolve.read_bundle(p)

    walk = _median_wall(lambda: list(ociresolve.find_bundles(base)))
    parse = _median_wall(parse_only)
    total = _median_wall(scan)
    print(row("find_bundles (directory walk alone)", walk))
    print(row("read_bundle of every bundle (parsing alone)", parse))
    print(row("find_bundles + read_bundle (full scan)", total, None, "target < 0.2 s"))


def _median_wall(fn: object, runs: int = 5) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - start)
    return sorted(times)[runs // 2]


def _fast_tmp() -> str | None:
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundles", type=int, default=5000)
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpus; medians")
    base = Path(tempfile.mkdtemp(prefix="ociresolve-bench-", dir=_fast_tmp()))
    try:
        (base / "config.json").write_text(json.dumps(realistic_spec(), separators=(",", ":")))
        bench_cgroup()
        bench_bundle(base)
        bench_scan(base / "scan", args.bundles)
    finally:
        shutil.rmtree(base)
    return 0


if __name__ == "__main__":
    sys.exit(main())
