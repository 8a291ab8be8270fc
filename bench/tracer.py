"""Benchmark of the tracer's kernel side and raw event stream (``tracer/probe.py``).

    sudo .venv/bin/python bench/tracer.py [--calls N] [--rounds N]

Builds ``tests/bpf/connect_storm.c`` (connect() in a tight loop, timed with CLOCK_MONOTONIC)
and measures, side by side in one run (medians over rounds):

* per-connect overhead on a traced workload: ns per connect() with no probe loaded (the
  baseline, measured before the probe is loaded and after it is closed) and with the probe
  attached, for connects the in-kernel filters drop (a unix path or a UDP port that is not
  traced; a UDP connect while only the containerd sockets are traced, which the addrlen
  pre-filter drops before reading the address) and for matching ones (every call an event,
  drained meanwhile by this process);
* events/s drained and decoded into ``ConnectEvent``s while a storm of matching UDP connects
  runs, the loss (kernel-side count of events the ring buffer had no room for), and the CPU
  time this process (the consumer) spends per event.

Targets (issue "containerd socket tracer"): overhead under 0.5 us per matching connect and
under 0.2 us per filtered-out connect; 500,000 events/s with under 0.1% loss.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from ociresolve.tracer import _environment
from ociresolve.tracer.errors import TracerUnavailable
from ociresolve.tracer.probe import ConnectProbe

ROOT = Path(__file__).resolve().parents[1]
STORM_SOURCE = ROOT / "tests" / "bpf" / "connect_storm.c"


def build_storm(directory: Path) -> Path:
    binary = directory / "connect_storm"
    subprocess.run(["gcc", "-O2", "-static", "-o", str(binary), str(STORM_SOURCE)], check=True)
    return binary


def parse(out: str) -> dict[str, float]:
    return {k: float(v) for k, v in (field.split("=") for field in out.split())}


def run_storm(
    storm: Path, args: list[str], drain: Callable[[], int] | None = None
) -> dict[str, float]:
    """Runs the storm; with ``drain``, calls it until the storm ends and a bit after."""
    proc = subprocess.Popen([str(storm), *args], stdout=subprocess.PIPE, text=True)
    events = 0
    cpu0, wall0 = time.process_time(), time.perf_counter()
    if drain is not None:
        while proc.poll() is None:
            events += drain()
        for _ in range(20):
            events += drain()
    out, _ = proc.communicate()
    result = parse(out)
    result["events"] = events
    result["cpu"] = time.process_time() - cpu0
    result["wall"] = time.perf_counter() - wall0
    return result


def per_call_ns(
    storm: Path, args: list[str], rounds: int, drain: Callable[[], int] | None = None
) -> float:
    return statistics.median(run_storm(storm, args, drain)["ns_per_call"] for _ in range(rounds))


def overhead(
    storm: Path, name: str, args: list[str], probe: ConnectProbe, rounds: int, target: float
) -> None:
    """Baseline before loading and after closing the probe; attached in between."""
    before = per_call_ns(storm, args, rounds)
    probe.start()
    try:
        attached = per_call_ns(storm, args, rounds, lambda: len(probe.poll(2)))
        lost, matched = probe.lost, probe.matched
    finally:
        probe.close()
    after = per_call_ns(storm, args, rounds)
    baseline = statistics.median([before, after])
    delta = attached - baseline
    verdict = "ok" if delta < target else "OVER TARGET"
    print(
        f"  {name:<44} detached {baseline:7.1f} ns  attached {attached:7.1f} ns  "
        f"overhead {delta:+7.1f} ns  (target < {target:.0f} ns: {verdict})"
        + (f"  events lost {lost}/{matched}" if matched else "")
    )


def throughput(storm: Path, calls: int, rounds: int) -> None:
    port = "47011"
    rates, cpus, losses = [], [], []
    with ConnectProbe(families=("inet",), ports=[int(port)]) as probe:
        for _ in range(rounds):
            lost0, matched0 = probe.lost, probe.matched
            r = run_storm(storm, ["inet", port, port, str(calls), "1"], lambda: len(probe.poll(2)))
            matched = probe.matched - matched0
            lost = probe.lost - lost0
            produced_s = r["ns"] / 1e9
            rates.append(r["events"] / produced_s)
            cpus.append(r["cpu"] / max(1, r["events"]))
            losses.append(100.0 * lost / max(1, matched))
            assert r["events"] + lost == matched, (r, lost, matched)
    rate, cpu, loss = statistics.median(rates), statistics.median(cpus), max(losses)
    print(
        f"  {'matching UDP storm, drained + decoded':<44} {rate:10,.0f} events/s  "
        f"loss {loss:.4f}% (worst round)  consumer CPU {cpu * 1e6:.2f} us/event "
        f"(capacity {1 / cpu:,.0f} events/s)"
    )
    ok = rate >= 500_000 and loss < 0.1
    print(f"  {'target: >= 500,000 events/s, < 0.1% loss':<44} {'ok' if ok else 'NOT MET'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=400_000, help="connect() calls per run")
    parser.add_argument("--rounds", type=int, default=5, help="runs per measurement")
    opts = parser.parse_args()
    try:
        _environment.check_all()
    except TracerUnavailable as exc:
        print(f"tracer bench: skipped ({exc})")
        return
    with tempfile.TemporaryDirectory(prefix="ocibench-") as tmp:
        storm = build_storm(Path(tmp))
        n = str(opts.calls)
        noise, match = f"{tmp}/noise.sock", f"{tmp}/match.sock"
        print(f"per-connect overhead ({opts.calls:,} connect() per run, median of {opts.rounds}):")
        overhead(
            storm,
            "unix connect, path filtered out",
            ["unix", noise, noise, n, "0"],
            ConnectProbe(unix_paths=[match, "/run/containerd/*"]),
            opts.rounds,
            200,
        )
        overhead(
            storm,
            "UDP connect, port filtered out",
            ["inet", "47010", "47010", n, "0"],
            ConnectProbe(families=("unix", "inet", "inet6"), ports=[47011]),
            opts.rounds,
            200,
        )
        overhead(
            storm,
            "UDP connect, only unix traced (pre-filtered)",
            ["inet", "47010", "47010", n, "0"],
            ConnectProbe(),
            opts.rounds,
            200,
        )
        overhead(
            storm,
            "unix connect, matching (every call an event)",
            ["unix", match, match, n, "1"],
            ConnectProbe(unix_paths=[match]),
            opts.rounds,
            500,
        )
        overhead(
            storm,
            "UDP connect, matching (every call an event)",
            ["inet", "47011", "47011", n, "1"],
            ConnectProbe(families=("inet",), ports=[47011]),
            opts.rounds,
            500,
        )
        print(
            f"events drained ({opts.calls * 2:,} matching connect() per run, {opts.rounds} runs):"
        )
        throughput(storm, opts.calls * 2, opts.rounds)


if __name__ == "__main__":
    main()
