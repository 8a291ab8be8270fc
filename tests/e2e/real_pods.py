"""What the end-to-end tests read of real pods on the session containerd (their members, their
processes) and what ociresolve must say of them; ``ociresolve`` run where containerd runs."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from harness import Containerd, Pod

TIMEOUT = 10.0  # seconds any one expected state may take to show; never reached when all is well
CLK_TCK = os.sysconf("SC_CLK_TCK")


def poll(condition: Callable[[], object], what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.005)


def init_pid(containerd: Containerd, container_id: str) -> int:
    return int((containerd.bundle_dir(container_id) / "init.pid").read_text())


def fork_boottime(pid: int) -> float:
    """``CLOCK_BOOTTIME`` when the process forked, in whole clock ticks: ``starttime`` of
    ``/proc/<pid>/stat`` (field 22) over ``CLK_TCK``."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[19]) / CLK_TCK  # fields 3.. follow the ")"


def members(pod: Pod) -> list[tuple[str, str | None]]:
    """(container id, container name) of the sandbox (name None) and every container."""
    return [(pod.sandbox_id, None), *((cid, name) for name, cid in pod.containers.items())]


def expected_meta(pod: Pod, container_id: str, name: str | None) -> dict[str, object]:
    """What ociresolve must say of the pod's sandbox (``name`` None) or container ``name``."""
    return {
        "runtime": "containerd",
        "container_type": "sandbox" if name is None else "container",
        "container_id": container_id,
        "sandbox_id": pod.sandbox_id,
        "pod_name": pod.name,
        "pod_namespace": pod.namespace,
        "pod_uid": pod.uid,
        "container_name": name,
    }


def cli(containerd: Containerd, *args: str) -> subprocess.CompletedProcess[str]:
    """``ociresolve ARGS``, run where containerd runs (its cgroup v2 view, if it has one)."""
    return subprocess.run(
        containerd.command([sys.executable, "-m", "ociresolve", *args]),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
