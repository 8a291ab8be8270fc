"""The setup of the deprecation tests on a real containerd, and what they read back: the daemon
that reports (``serve --report-deprecations --trace-connect``), pods of CRI callers on one clock,
the daemon's lines, and ``ociresolve deprecations``' answers.
"""

from __future__ import annotations

import calendar
import dataclasses
import json
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cri_callers import (
    IN_CONTAINER,
    VERSION_PATHS,
    caller,
    calls_of,
    log_of,
    persistent_caller,
    wait,
    wait_for_calls,
)
from harness import Containerd, ContainerSpec, DaemonProcess, Pod, PodFactory
from harness.introspection import parse_logfmt
from harness.ociresolve_image import REPO

# The daemon's messages.
OPENED = "containerd socket connection opened"
OCCURRENCE = "found CRI v1alpha2 API deprecation warning"
CLIENT = "deprecated API client"
RETRYING = "cannot read containerd's deprecation warnings; retrying"
NEEDS_1_7 = "has no deprecation warnings; they need containerd >= 1.7"


# -- the pods ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CallerPods:
    """Pods of one container calling the runtime's ``Version``, all on one schedule's clock:
    the k-th call at ``start_ns`` + ``phase`` + k * ``period`` (CLOCK_REALTIME, shared with the
    containers)."""

    containerd: Containerd
    pod_factory: PodFactory
    image: str
    start_ns: int

    def spec(
        self, container: str, *, api: str, period: float, calls: int, phase: float = 0.0
    ) -> ContainerSpec:
        """A ``caller`` making ``calls`` calls on CRI API ``api`` (``v1alpha2`` or ``v1``)."""
        return caller(
            self.containerd,
            self.image,
            container,
            path=VERSION_PATHS[api],
            version=api,
            start_ns=self.start_ns,
            period=period,
            phase=phase,
            calls=calls,
        )

    def pod(
        self,
        namespace: str,
        name: str,
        container: str = "app",
        *,
        api: str,
        period: float,
        calls: int,
        phase: float = 0.0,
        open_phase: float | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> Pod:
        """A pod whose ``container`` calls as ``spec`` says: on a new connection per call, or
        given ``open_phase``, on one opened at ``start_ns`` + ``open_phase`` and kept."""
        spec = self.spec(container, api=api, period=period, calls=calls, phase=phase)
        if open_phase is not None:
            spec = persistent_caller(spec, open_phase=open_phase)
        return self.pod_factory(name, [spec], namespace=namespace, labels=labels)


def call_once(
    containerd: Containerd, pod_factory: PodFactory, image: str, namespace: str, name: str
) -> tuple[Pod, dict[str, object]]:
    """A pod whose container ``client`` calls CRI v1alpha2 once, now; the pod and its call,
    once the container exited with 0."""
    pods = CallerPods(containerd, pod_factory, image, time.time_ns())
    pod = pods.pod(namespace, name, "client", api="v1alpha2", period=1.0, calls=1)
    status = containerd.cri().wait_container_exit(pod.container_id("client"), timeout=60)
    assert status.exit_code == 0, log_of(pod, "client")
    (call,) = calls_of(pod, "client")
    return pod, call


# -- the daemon --------------------------------------------------------------------------------


def reporting_daemon(
    containerd: Containerd, socket_dir: Path, introspection: str | None = None
) -> DaemonProcess:
    """``serve --report-deprecations --trace-connect``, the occurrences read from containerd's
    own deprecation service (or from ``introspection``, a stand-in's socket)."""
    return DaemonProcess(
        socket_dir / "ociresolve.sock",
        [
            "--runtime-root",
            str(containerd.state_dir),
            "--cri-socket",
            str(containerd.socket),
            "--trace-connect",
            "--trace-socket",
            str(containerd.socket),
            "--trace-socket",
            IN_CONTAINER,
            "--trace-summary-interval",
            "0",
            "--report-deprecations",
            "--containerd-socket",
            introspection or str(containerd.socket),
            "--deprecations-interval",
            "0.5",
        ],
        enter=containerd.command,
    )


def logged(daemon: DaemonProcess, msg: str) -> list[dict[str, str]]:
    """The daemon's stdout lines so far whose ``msg`` is ``msg``, parsed."""
    rows = [parse_logfmt(line) for line in list(daemon.lines)]
    return [r for r in rows if r.get("msg") == msg]


def new_occurrences(daemon: DaemonProcess) -> list[dict[str, str]]:
    """The daemon's occurrence lines so far, without the one for a warning already there when
    it started (earlier tests' calls on the same containerd)."""
    return [r for r in logged(daemon, OCCURRENCE) if "existing" not in r]


def wait_for_occurrences(
    containerd: Containerd, daemon: DaemonProcess, pod: Pod, container: str, calls: int
) -> list[dict[str, Any]]:
    """The v1alpha2 caller's ``calls`` calls, once the daemon reported an occurrence for each."""
    made = wait_for_calls(containerd, pod, container, calls)
    assert all(call.get("api") == "v1alpha2" for call in made), made
    wait(lambda: len(new_occurrences(daemon)) >= calls, "a line per occurrence")
    return made


def print_untraced(daemon: DaemonProcess) -> None:
    """The daemon's lines but the connections it traced, for the output of a failed test."""
    print("\n".join(line for line in daemon.lines if OPENED not in line))


def rfc3339_ns(text: str) -> int:
    """ns since the epoch of an RFC 3339 UTC time with up to 9 decimals (Go's RFC3339Nano)."""
    whole, _, fraction = text.rstrip("Z").partition(".")
    seconds = calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S"))
    return seconds * 1_000_000_000 + int(fraction.ljust(9, "0") or 0)


def assert_recorded(occurrences: list[dict[str, str]], calls: list[dict[str, Any]]) -> None:
    """Each occurrence the daemon reported carries containerd's own lastOccurrence: the moment
    containerd got one of the client's calls, between the call's start and its answer."""
    assert len(occurrences) == len(calls), (occurrences, calls)
    for occurrence, call in zip(occurrences, calls, strict=True):
        seen = rfc3339_ns(occurrence["lastOccurrence"])
        assert call["before"] <= seen <= call["after"], (occurrence, call)


# -- ociresolve deprecations -------------------------------------------------------------------


def ociresolve(
    containerd: Containerd, *args: str, timeout: float = 30.0
) -> subprocess.CompletedProcess[str]:
    """``ociresolve ARGS``, run where containerd runs."""
    return subprocess.run(
        containerd.command([sys.executable, "-m", "ociresolve", *args], REPO),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def clients_json(containerd: Containerd, daemon_socket: Path) -> list[dict[str, Any]]:
    """``deprecations --clients --json`` from the daemon: its rows, once it exited with 0 and
    said nothing on stderr."""
    result = ociresolve(
        containerd, "deprecations", "--clients", "--json", "--daemon-socket", str(daemon_socket)
    )
    assert (result.returncode, result.stderr) == (0, ""), result
    return [json.loads(line) for line in result.stdout.splitlines()]


def clients_table(containerd: Containerd, daemon_socket: Path) -> subprocess.CompletedProcess[str]:
    """``deprecations --clients`` from the daemon: the table."""
    return ociresolve(
        containerd, "deprecations", "--clients", "--daemon-socket", str(daemon_socket)
    )
