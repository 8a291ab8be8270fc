"""Benchmark of per-request activity: what the ``sock:sock_send_length`` program costs.

    sudo .venv/bin/python bench/activity.py [--calls N] [--rounds N]

Builds ``tests/bpf/send_storm.c`` (1-byte write() calls in a tight loop, timed with
CLOCK_MONOTONIC) and measures ns per write(), side by side in one run (every round runs every
workload under every setting; medians over rounds, the added cost as the median of each
round's difference to the same round's run with nothing attached):

* workloads: unrelated file writes (``/dev/null``), unrelated unix socket sends (a socketpair),
  unrelated UDP sends (loopback), and sends on a followed connection to a traced unix path
  (rate-limited in the kernel: most sends return early; the ``send`` events delivered are
  counted);
* settings: nothing attached; ``ConnectProbe(lifetimes=True, activity=True)``; an empty program
  on the same attach point (the floor: ``TRACEPOINT_PROBE(sock, sock_send_length) { return 0; }``);
  an empty program on ``syscalls:sys_enter_write``, the attach point not taken, which every
  write() on the node, file or socket, would pay.

The probe's other programs (connect, close, exit) stay attached throughout: none of them fires
in the timed loops. Only the send programs are attached and detached between runs.

Targets (issue 13): unrelated file writes pay nothing; unrelated socket sends within 1.5x of the
floor's added cost.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ociresolve.tracer import _environment
from ociresolve.tracer.errors import TracerUnavailable
from ociresolve.tracer.probe import ConnectProbe

ROOT = Path(__file__).resolve().parents[1]
STORM_SOURCE = ROOT / "tests" / "bpf" / "send_storm.c"

SEND_TP = b"sock:sock_send_length"
WRITE_TP = b"syscalls:sys_enter_write"
OURS_FN = b"tracepoint__sock__sock_send_length"
EMPTY_SEND = b"TRACEPOINT_PROBE(sock, sock_send_length) { return 0; }"
EMPTY_WRITE = b"TRACEPOINT_PROBE(syscalls, sys_enter_write) { return 0; }"
EMPTY_SEND_FN = b"tracepoint__sock__sock_send_length"
EMPTY_WRITE_FN = b"tracepoint__syscalls__sys_enter_write"

FLOOR_NOISE_NS = 5.0  # an added cost below this is no cost at all on this noisy VM
SETTINGS = ("none", "ours", "empty send", "empty write")
WORKLOADS = ("file", "unix", "udp", "match")
LABELS = {
    "file": "file write (/dev/null), unrelated",
    "unix": "unix socketpair send, unrelated",
    "udp": "UDP send, unrelated",
    "match": "unix send on a followed connection",
}


def build_storm(directory: Path) -> Path:
    binary = directory / "send_storm"
    subprocess.run(["gcc", "-O2", "-static", "-o", str(binary), str(STORM_SOURCE)], check=True)
    return binary


class Switch:
    """Attaches one setting's program at a time (BCC loads each object once)."""

    def __init__(self, bcc: Any, ours: Any) -> None:
        self.programs: dict[str, tuple[Any, bytes, bytes]] = {
            "ours": (ours, SEND_TP, OURS_FN),
            "empty send": (bcc.BPF(text=EMPTY_SEND), SEND_TP, EMPTY_SEND_FN),
            "empty write": (bcc.BPF(text=EMPTY_WRITE), WRITE_TP, EMPTY_WRITE_FN),
        }
        self.attached = set(self.programs)  # BCC attaches TRACEPOINT_PROBEs as it loads them
        self.use("none")

    def use(self, setting: str) -> None:
        for name, (bpf, tp, fn) in self.programs.items():
            want = name == setting
            if want and name not in self.attached:
                bpf.attach_tracepoint(tp=tp, fn_name=fn)
                self.attached.add(name)
            elif not want and name in self.attached:
                bpf.detach_tracepoint(tp)
                self.attached.discard(name)

    def close(self) -> None:
        self.use("none")
        for name, (bpf, _, _) in self.programs.items():
            if name != "ours":
                bpf.cleanup()


def run_storm(storm: Path, args: list[str], drain: Callable[[], int]) -> tuple[float, int, int]:
    """ns per write(), the storm's pid and the ``send`` events drained meanwhile."""
    proc = subprocess.Popen([str(storm), *args], stdout=subprocess.PIPE, text=True)
    sends = 0
    while proc.poll() is None:
        sends += drain()
    for _ in range(10):
        sends += drain()
    out, _ = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"send_storm {args} failed: {proc.returncode}")
    fields = dict(field.split("=") for field in out.split())
    return float(fields["ns_per_call"]), proc.pid, sends


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=300_000, help="write() calls per run")
    parser.add_argument("--rounds", type=int, default=11, help="rounds (every run once each)")
    opts = parser.parse_args()
    try:
        bcc = _environment.check_all()
    except TracerUnavailable as exc:
        print(f"activity bench: skipped ({exc})")
        return
    with tempfile.TemporaryDirectory(prefix="ocibench-") as tmp:
        storm = build_storm(Path(tmp))
        traced = f"{tmp}/match.sock"
        probe = ConnectProbe(unix_paths=[traced], exclude_comms=(), lifetimes=True, activity=True)
        probe.start()
        if not probe.activity:
            print(f"activity bench: skipped ({probe.activity_unavailable})")
            probe.close()
            return
        switch = Switch(bcc, probe._bpf)
        ns: dict[tuple[str, str], list[float]] = {}
        sends: list[tuple[int, float]] = []  # (events, run seconds) of the followed sends

        def drain() -> int:
            return sum(1 for e in probe.poll(2) if e.kind == "send")

        try:
            for _ in range(opts.rounds):
                for workload in WORKLOADS:
                    args = [workload, str(opts.calls)] + ([traced] if workload == "match" else [])
                    for setting in SETTINGS:
                        switch.use(setting)
                        per_call, _, events = run_storm(storm, args, drain)
                        ns.setdefault((workload, setting), []).append(per_call)
                        if (workload, setting) == ("match", "ours"):
                            sends.append((events, per_call * opts.calls / 1e9))
            lost = probe.lost
        finally:
            switch.close()
            probe.close()
    report(ns, sends, lost, opts)


def report(
    ns: dict[tuple[str, str], list[float]],
    sends: list[tuple[int, float]],
    lost: int,
    opts: argparse.Namespace,
) -> None:
    def median(workload: str, setting: str) -> float:
        return statistics.median(ns[workload, setting])

    def added(workload: str, setting: str) -> float:
        pairs = zip(ns[workload, setting], ns[workload, "none"], strict=True)
        return statistics.median(a - b for a, b in pairs)

    print(
        f"ns per write() ({opts.calls:,} per run, median of {opts.rounds} rounds; "
        "added: median of each round's difference to nothing attached)"
    )
    header = (
        f"  {'workload':<38} {'none':>7} {'ours':>7} {'added':>7}"
        f" {'floor':>7} {'added':>7} {'write tp':>8} {'added':>7} {'ours/floor':>10}"
    )
    print(header)
    for workload in WORKLOADS:
        ours, floor, write = (added(workload, s) for s in ("ours", "empty send", "empty write"))
        # The floor of a file write is 0 (the tracepoint does not fire): no ratio.
        ratio = f"{ours / floor:10.2f}" if floor > FLOOR_NOISE_NS else f"{'-':>10}"
        print(
            f"  {LABELS[workload]:<38} {median(workload, 'none'):7.1f}"
            f" {median(workload, 'ours'):7.1f} {ours:+7.1f}"
            f" {median(workload, 'empty send'):7.1f} {floor:+7.1f}"
            f" {median(workload, 'empty write'):8.1f} {write:+7.1f} {ratio}"
        )
    events = statistics.median(e for e, _ in sends)
    rate = statistics.median(e / s for e, s in sends)
    print(
        f"  followed sends: {events:.0f} send events per run of {opts.calls:,} sends "
        f"(median; {rate:.0f}/s, the 5 ms limit allows 200/s); lost {lost}"
    )
    file_added = added("file", "ours")
    print(f"  target: unrelated file writes pay nothing: {file_added:+.1f} ns (noise)")
    for workload in ("unix", "udp"):
        ours, floor = added(workload, "ours"), added(workload, "empty send")
        verdict = "met" if ours <= 1.5 * max(floor, 0.0) else "NOT MET"
        print(
            f"  target: {LABELS[workload]} within 1.5x of the floor: "
            f"{ours:+.1f} vs {floor:+.1f} ns: {verdict}"
        )


if __name__ == "__main__":
    main()
